//! kxdp's boundary with C. (Being written.)
