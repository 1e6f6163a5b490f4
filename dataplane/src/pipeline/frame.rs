//! What goes into and comes out of the pipeline for one packet.

use crate::DropReason;

/// Where a frame entered the dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// The node's uplink (underlay).
    Uplink,
    /// The host side of a pod's veth, by ifindex.
    Pod { ifindex: u32 },
}

/// Where a forwarded frame leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// The host side of a local pod's veth, by ifindex.
    Pod { ifindex: u32 },
    /// The uplink; `encapsulated` when the frame is VXLAN toward another node.
    Uplink { encapsulated: bool },
}

/// The pipeline's decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame.
    Forward(Egress),
    /// The frame was replaced in place by a generated answer (ARP reply,
    /// ICMP error, TCP RST, echo reply) to transmit on `Egress`; the
    /// original is dropped and counted with the reason, if any.
    Reply(Egress, Option<DropReason>),
    /// Not ours: hand the frame to the kernel unchanged (XDP_PASS semantics).
    ToHost,
    /// Drop, counted with this reason.
    Drop(DropReason),
}

/// One frame in a buffer with headroom.
///
/// `buf[offset..offset + len]` is the packet. The pipeline may move `offset`
/// down to prepend headers (encapsulation) and up to strip them, and may
/// rewrite the frame completely (replies) as long as it stays inside `buf`.
/// The I/O layer provides at least [`Frame::HEADROOM`] bytes before the
/// packet and [`Frame::MIN_CAPACITY`] bytes in all.
#[derive(Debug)]
pub struct Frame<'a> {
    pub buf: &'a mut [u8],
    pub offset: usize,
    pub len: usize,
}

impl<'a> Frame<'a> {
    /// Headroom the I/O layer must leave: outer Ethernet + IPv4 + UDP + VXLAN
    /// (50 bytes), rounded up.
    pub const HEADROOM: usize = 64;
    /// Smallest buffer the I/O layer may hand in (2 KiB UMEM frames).
    pub const MIN_CAPACITY: usize = 2048;

    /// A frame whose packet starts at `offset`. None if out of bounds.
    pub fn new(buf: &'a mut [u8], offset: usize, len: usize) -> Option<Self> {
        if offset.checked_add(len)? > buf.len() {
            return None;
        }
        Some(Frame { buf, offset, len })
    }

    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len]
    }

    /// The packet bytes, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}
