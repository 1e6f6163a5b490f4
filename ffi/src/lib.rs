//! kxdp's boundary with C.
//!
//! - [`xdp`]: the XDP steering program (`bpf/steer.c`, compiled by
//!   `build.rs`) and its loader.
//! - [`netns`]: moving a thread into a network namespace.

pub mod netns;
pub mod xdp;
