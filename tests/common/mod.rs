//! Shared helpers of the end-to-end tests (network namespaces, the
//! standard topology). Each test binary uses a different subset.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

pub mod kxdp;
pub mod topology;
