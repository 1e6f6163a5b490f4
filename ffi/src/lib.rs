//! kxdp's boundary with C.
//!
//! - [`xdp`]: the XDP steering program (`bpf/steer.c`, compiled by
//!   `build.rs`) and its loader.
//! - [`redirect`]: the benchmark's in-kernel XDP redirect baseline
//!   (`bpf/redirect.c`) and its loader.
//! - [`netns`]: moving a thread into a network namespace.
//! - [`sched`]: real-time priority for the worker thread.

pub mod netns;
pub mod redirect;
pub mod sched;
pub mod xdp;
