//! kxdp benchmark harness: synthetic tables at scale and packet builders
//! shared by the criterion benchmarks (`benches/`), the scale binaries
//! (`src/bin/`) and the veth harness.
#![forbid(unsafe_code)]

pub mod fixture;
pub mod harness;
pub mod policy;
pub mod stats;
