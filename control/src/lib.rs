//! kxdp's control plane: sources, change tracking, the table compiler.
#![forbid(unsafe_code)]

pub mod model;

pub use model::ClusterState;
