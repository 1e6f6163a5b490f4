//! The packet pipeline. (Being written.)
