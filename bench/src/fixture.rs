//! The shared node-a fixture lives in the dataplane crate (feature
//! `testing`) so the fuzz targets use the same tables as the benchmarks.

pub use kxdp_dataplane::testing::*;
