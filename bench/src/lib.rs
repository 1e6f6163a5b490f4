//! kxdp benchmark harness. (Being written.)
#![forbid(unsafe_code)]
