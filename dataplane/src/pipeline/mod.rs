//! The packet pipeline. (Being written: the types below are the contract the
//! I/O layer and workers code against.)

mod frame;

pub use frame::{Egress, Frame, Ingress, Verdict};
