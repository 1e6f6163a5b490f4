//! The I/O layer: ports move frames between the kernel and the pipeline.
//!
//! # Model
//!
//! A worker owns one [`FrameStore`] (the frame memory: for AF_XDP one UMEM)
//! and several [`Port`]s (one per `(interface, queue)`), all drawing from
//! and returning to that store. A frame is an owned token ([`FrameStore::Buf`],
//! not `Clone`): it comes out of [`Port::recv_batch`] (or
//! [`FrameStore::alloc`]) and goes back through exactly one of
//! [`Port::send`] or [`FrameStore::release`]. Because a frame received on
//! one port may be sent on any other port of the same store, forwarding
//! between interfaces never copies in userspace.
//!
//! ```text
//!   let n = ports[i].recv_batch(&mut store, &mut bufs, 64);
//!   for buf in &mut bufs {                       // pipeline over the batch
//!       let mut f = store.frame(buf)?;           //   Frame { buf, offset, len }
//!       verdict = pipeline(&mut f, ports[i].ingress());
//!       let (off, len) = (f.offset, f.len);
//!       buf.set_bounds(off, len)?;               //   keep what the pipeline did
//!   }
//!   for (buf, verdict) in bufs.drain(..).zip(verdicts) {
//!       match verdict {
//!           Forward(e) | Reply(e, _) => ports[port_of(e)].send(&mut store, buf),
//!           ToHost | Drop(_)         => store.release(buf),
//!       }
//!   }
//!   for p in &mut ports { p.flush(&mut store)?; p.complete(&mut store); }
//! ```
//!
//! Nothing in `recv_batch`/`send`/`flush`/`complete` allocates: buffers
//! are sized at construction and `out` is a caller-owned `Vec` reused
//! across batches.
//!
//! # `ToHost` on AF_XDP
//!
//! A frame redirected to an AF_XDP socket has left the kernel; there is no
//! `XDP_PASS` after the fact. The steering program (`kxdp-ffi`'s `xdp`
//! module) therefore only redirects on the uplink what kxdp owns (VXLAN,
//! Service frontends, NodePorts, local pod IPs, masquerade reply ports),
//! so the node's own traffic never comes up here and `ToHost` is rare on
//! the uplink. On pod veths every frame is redirected (policy must see
//! all pod traffic), so pod-to-node traffic yields `ToHost`. This layer
//! releases such frames; the worker counts them per verdict. Delivering
//! them to the host stack (a TAP device owned by kxdp, written with the
//! frame) is left to the worker layer and is not implemented here.
//!
//! # Implementations
//!
//! - [`afxdp`]: AF_XDP sockets on xsk-rs with one shared UMEM per worker.
//! - [`mem`]: in-memory queues of byte vectors, for tests.

pub mod afxdp;
pub mod mem;

use crate::pipeline::{Frame, Ingress};

/// Errors of the I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("packet bounds {offset}+{len} outside a {capacity}-byte frame")]
    Bounds {
        offset: usize,
        len: usize,
        capacity: usize,
    },
    #[error("frame does not belong to this store")]
    ForeignFrame,
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An owned frame token: one buffer of the store, with the packet at
/// `offset..offset + len`.
pub trait PacketBuf {
    /// Start of the packet in the frame buffer.
    fn offset(&self) -> usize;
    /// Packet length.
    fn len(&self) -> usize;
    /// True for an empty packet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Size of the whole frame buffer (headroom included).
    fn capacity(&self) -> usize;
    /// Adopts the packet bounds the pipeline left in its [`Frame`].
    fn set_bounds(&mut self, offset: usize, len: usize) -> Result<(), IoError> {
        let capacity = self.capacity();
        if offset.checked_add(len).is_none_or(|end| end > capacity) {
            return Err(IoError::Bounds {
                offset,
                len,
                capacity,
            });
        }
        self.set_bounds_unchecked(offset, len);
        Ok(())
    }
    /// Sets the bounds; `set_bounds` has checked them.
    #[doc(hidden)]
    fn set_bounds_unchecked(&mut self, offset: usize, len: usize);
}

/// The frame memory of one worker, shared by all its ports.
pub trait FrameStore {
    /// The frame token.
    type Buf: PacketBuf;

    /// The pipeline's view of `buf`: at least [`Frame::HEADROOM`] bytes
    /// before a received packet and [`Frame::MIN_CAPACITY`] bytes in all.
    /// Views of distinct tokens may be held at the same time (a batch).
    fn frame<'a>(&'a self, buf: &'a mut Self::Buf) -> Result<Frame<'a>, IoError>;

    /// A free frame (empty packet at the default offset), e.g. for a
    /// generator; `None` when every frame is in use.
    fn alloc(&mut self) -> Option<Self::Buf>;

    /// Gives back a frame that will not be sent (dropped, `ToHost`).
    fn release(&mut self, buf: Self::Buf);

    /// Frames currently free.
    fn free_frames(&self) -> usize;
}

/// Counters of one port. Kernel-side numbers come from `XDP_STATISTICS`
/// where the implementation has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames this layer dropped on the way out (tx ring or pending list
    /// full, packet larger than the frame).
    pub tx_dropped: u64,
    /// Transmissions completed by the kernel.
    pub tx_completed: u64,
    /// Packets moved inside their frame before transmission because the
    /// pipeline changed their start (see `afxdp` docs).
    pub tx_realigned: u64,
    /// Refills that found the shared pool empty.
    pub pool_empty: u64,
    /// Kernel wakeups issued.
    pub wakeups: u64,
    /// Busy polls issued (the worker running the device's NAPI).
    pub busy_polls: u64,
    /// Busy polling was asked for but the device gives no NAPI id, so the
    /// port stopped (see `afxdp`).
    pub busy_poll_unavailable: bool,
    /// Kernel: received packets dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Kernel: times the fill ring was found empty.
    pub fill_ring_empty: u64,
    /// Kernel: received packets dropped for other reasons.
    pub rx_dropped: u64,
    /// Kernel: invalid rx / tx descriptors.
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

/// One `(interface, queue)`: receive, transmit, reap completions.
pub trait Port {
    /// The store this port's frames live in.
    type Store: FrameStore;

    /// Where frames received here enter the pipeline.
    fn ingress(&self) -> Ingress;

    /// Interface index (in the worker's network namespace).
    fn ifindex(&self) -> u32;

    /// Appends up to `max` received frames to `out`; returns how many.
    /// Also tops up the port's fill ring from the store.
    fn recv_batch(
        &mut self,
        store: &mut Self::Store,
        out: &mut Vec<<Self::Store as FrameStore>::Buf>,
        max: usize,
    ) -> usize;

    /// Queues a frame for transmission at the next [`Port::flush`]. When
    /// the frame cannot be queued it goes back to the store and is counted
    /// in `tx_dropped`; returns false.
    fn send(&mut self, store: &mut Self::Store, buf: <Self::Store as FrameStore>::Buf) -> bool;

    /// Submits queued frames to the kernel (one ring update for the batch)
    /// and wakes it if it asks; returns how many were submitted.
    fn flush(&mut self, store: &mut Self::Store) -> usize;

    /// Reaps a bounded number of completed transmissions back into the
    /// store; returns how many.
    fn complete(&mut self, store: &mut Self::Store) -> usize;

    /// Whether the kernel asked for a wakeup (need_wakeup mode).
    fn needs_wakeup(&self) -> bool;

    /// Kicks the kernel's tx and rx processing.
    fn wakeup(&mut self) -> Result<(), IoError>;

    /// Current counters.
    fn stats(&self) -> PortStats;
}
