//! kxdp's control plane: sources, change tracking, the table compiler.
#![forbid(unsafe_code)]

pub mod admin;
pub mod compile;
pub mod endpoints;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod runner;
pub mod source;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tracker;

pub use model::ClusterState;
