//! Shared helpers of the end-to-end tests (network namespaces, the
//! standard topology). Each test binary uses a different subset.
//!
//! The topology helper itself lives in the `kxdp-topology` crate
//! (`tests/topology/`) so `bench/` and `kxdp demo` reuse it; it is
//! re-exported here as `common::topology`.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

pub mod kxdp;
pub mod whoami;
pub use kxdp_topology as topology;
