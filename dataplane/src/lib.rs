//! kxdp's dataplane: pure packet logic plus the I/O layer.
//!
//! - [`wire`]: zero-copy header views, builders and checksums.
//! - [`tables`]: the immutable, per-generation lookup tables (read side).
//! - [`conntrack`]: the shared, bounded connection tracker.
//! - [`pipeline`]: the per-packet stages; one function shows their order.
//! - [`io`]: ports (AF_XDP on a shared UMEM, in-memory for tests).
//! - [`worker`]: the loop from ports through the pipeline and back.
//! - [`drop_reason`]: stable drop codes shared by counters, traces and tools.
//!
//! Nothing here reads the clock or touches a socket except [`io`] and
//! [`worker`] (which reads the monotonic clock once per batch): the
//! pipeline takes `now` and a batch, and returns verdicts.

pub mod conntrack;
pub mod drop_reason;
pub mod io;
pub mod pipeline;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;
pub mod worker;

pub use drop_reason::DropReason;
