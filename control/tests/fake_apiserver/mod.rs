//! The fake API server lives in `kxdp_control::testing::fake_apiserver`
//! (shared with the root package's end-to-end tests); this module
//! re-exports it next to the in-process [`harness`].

#![allow(dead_code)]

pub mod harness;

pub use kxdp_control::testing::fake_apiserver::*;
