//! In-memory ports for tests: packets are injected as byte vectors and
//! transmitted packets are collected as byte vectors.
//!
//! The behaviour mirrors AF_XDP where a worker could notice the difference:
//! a bounded frame pool shared by the ports of one [`MemStore`], frames that
//! stay in use after [`Port::flush`] until [`Port::complete`] reaps them, a
//! bounded transmit queue, and received packets placed
//! [`Frame::HEADROOM`] bytes into a [`Frame::MIN_CAPACITY`]-byte buffer.

use std::collections::VecDeque;

use super::{FrameStore, IoError, PacketBuf, Port, PortStats};
use crate::pipeline::{Frame, Ingress};

/// A frame of a [`MemStore`].
#[derive(Debug)]
pub struct MemBuf {
    data: Vec<u8>,
    offset: usize,
    len: usize,
}

impl MemBuf {
    /// The packet bytes.
    pub fn packet(&self) -> &[u8] {
        self.data
            .get(self.offset..self.offset + self.len)
            .unwrap_or(&[])
    }
}

impl PacketBuf for MemBuf {
    fn offset(&self) -> usize {
        self.offset
    }
    fn len(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        self.data.len()
    }
    fn set_bounds_unchecked(&mut self, offset: usize, len: usize) {
        self.offset = offset;
        self.len = len;
    }
}

/// A pool of `frames` heap buffers of [`Frame::MIN_CAPACITY`] bytes.
#[derive(Debug)]
pub struct MemStore {
    free: Vec<Vec<u8>>,
    total: usize,
}

impl MemStore {
    /// A store of `frames` buffers, allocated up front.
    pub fn new(frames: usize) -> Self {
        MemStore {
            free: (0..frames)
                .map(|_| vec![0u8; Frame::MIN_CAPACITY])
                .collect(),
            total: frames,
        }
    }

    /// Frames the store was created with.
    pub fn total_frames(&self) -> usize {
        self.total
    }
}

impl FrameStore for MemStore {
    type Buf = MemBuf;

    fn frame<'a>(&'a self, buf: &'a mut MemBuf) -> Result<Frame<'a>, IoError> {
        let (offset, len, capacity) = (buf.offset, buf.len, buf.data.len());
        Frame::new(&mut buf.data, offset, len).ok_or(IoError::Bounds {
            offset,
            len,
            capacity,
        })
    }

    fn alloc(&mut self) -> Option<MemBuf> {
        self.free.pop().map(|data| MemBuf {
            data,
            offset: Frame::HEADROOM,
            len: 0,
        })
    }

    fn release(&mut self, buf: MemBuf) {
        if self.free.len() < self.total {
            self.free.push(buf.data);
        }
    }

    fn free_frames(&self) -> usize {
        self.free.len()
    }
}

/// An in-memory port.
#[derive(Debug)]
pub struct MemPort {
    ingress: Ingress,
    ifindex: u32,
    rx: VecDeque<Vec<u8>>,
    pending: Vec<MemBuf>,
    in_flight: VecDeque<MemBuf>,
    sent: Vec<Vec<u8>>,
    tx_ring: usize,
    stats: PortStats,
}

impl MemPort {
    /// A port with a transmit ring of `tx_ring` frames.
    pub fn new(ingress: Ingress, ifindex: u32, tx_ring: usize) -> Self {
        MemPort {
            ingress,
            ifindex,
            rx: VecDeque::new(),
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            sent: Vec::new(),
            tx_ring,
            stats: PortStats::default(),
        }
    }

    /// Queues a packet as if it arrived on the interface.
    pub fn inject(&mut self, packet: &[u8]) {
        self.rx.push_back(packet.to_vec());
    }

    /// Packets transmitted so far (flushed), oldest first; drains them.
    pub fn take_sent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent)
    }

    /// Packets injected and not yet received.
    pub fn rx_backlog(&self) -> usize {
        self.rx.len()
    }
}

impl Port for MemPort {
    type Store = MemStore;

    fn ingress(&self) -> Ingress {
        self.ingress
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn recv_batch(&mut self, store: &mut MemStore, out: &mut Vec<MemBuf>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(pkt) = self.rx.front() else { break };
            if pkt.len() > Frame::MIN_CAPACITY - Frame::HEADROOM {
                self.rx.pop_front();
                self.stats.rx_dropped += 1;
                continue;
            }
            let Some(mut buf) = store.alloc() else {
                // As with an empty fill ring: the packet waits.
                self.stats.fill_ring_empty += 1;
                break;
            };
            let Some(pkt) = self.rx.pop_front() else {
                break;
            };
            let end = Frame::HEADROOM + pkt.len();
            if let Some(dst) = buf.data.get_mut(Frame::HEADROOM..end) {
                dst.copy_from_slice(&pkt);
            }
            buf.offset = Frame::HEADROOM;
            buf.len = pkt.len();
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += pkt.len() as u64;
            out.push(buf);
            n += 1;
        }
        n
    }

    fn send(&mut self, store: &mut MemStore, buf: MemBuf) -> bool {
        if self.pending.len() + self.in_flight.len() >= self.tx_ring {
            self.stats.tx_dropped += 1;
            store.release(buf);
            return false;
        }
        self.pending.push(buf);
        true
    }

    fn flush(&mut self, _store: &mut MemStore) -> usize {
        let n = self.pending.len();
        for buf in self.pending.drain(..) {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += buf.len as u64;
            self.sent.push(buf.packet().to_vec());
            self.in_flight.push_back(buf);
        }
        n
    }

    fn complete(&mut self, store: &mut MemStore) -> usize {
        let n = self.in_flight.len();
        for buf in self.in_flight.drain(..) {
            store.release(buf);
        }
        self.stats.tx_completed += n as u64;
        n
    }

    fn needs_wakeup(&self) -> bool {
        false
    }

    fn wakeup(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_between_ports_keeps_bytes_and_returns_frames() {
        let mut store = MemStore::new(4);
        let mut a = MemPort::new(Ingress::Uplink, 2, 8);
        let mut b = MemPort::new(Ingress::Pod { ifindex: 3 }, 3, 8);
        a.inject(b"hello");
        a.inject(b"world!");
        let mut bufs = Vec::new();
        assert_eq!(a.recv_batch(&mut store, &mut bufs, 16), 2);
        assert_eq!(store.free_frames(), 2);
        for buf in &mut bufs {
            let f = store.frame(buf).unwrap();
            assert_eq!(f.offset, Frame::HEADROOM);
            assert!(f.buf.len() >= Frame::MIN_CAPACITY);
        }
        for buf in bufs.drain(..) {
            assert!(b.send(&mut store, buf));
        }
        assert_eq!(b.flush(&mut store), 2);
        assert_eq!(store.free_frames(), 2, "in flight until completed");
        assert_eq!(b.complete(&mut store), 2);
        assert_eq!(store.free_frames(), 4);
        assert_eq!(b.take_sent(), vec![b"hello".to_vec(), b"world!".to_vec()]);
        assert_eq!(a.stats().rx_packets, 2);
        assert_eq!(b.stats().tx_bytes, 11);
    }

    #[test]
    fn pipeline_growth_is_transmitted() {
        // Encapsulation-like: prepend 4 bytes into the headroom.
        let mut store = MemStore::new(1);
        let mut p = MemPort::new(Ingress::Uplink, 2, 8);
        p.inject(&[9, 9]);
        let mut bufs = Vec::new();
        p.recv_batch(&mut store, &mut bufs, 1);
        let mut buf = bufs.pop().unwrap();
        let (off, len) = {
            let mut f = store.frame(&mut buf).unwrap();
            f.offset -= 4;
            f.len += 4;
            f.data_mut()[..4].copy_from_slice(&[1, 2, 3, 4]);
            (f.offset, f.len)
        };
        buf.set_bounds(off, len).unwrap();
        p.send(&mut store, buf);
        p.flush(&mut store);
        assert_eq!(p.take_sent(), vec![vec![1, 2, 3, 4, 9, 9]]);
    }

    #[test]
    fn empty_pool_leaves_packets_queued() {
        let mut store = MemStore::new(1);
        let mut p = MemPort::new(Ingress::Uplink, 2, 8);
        p.inject(b"a");
        p.inject(b"b");
        let mut bufs = Vec::new();
        assert_eq!(p.recv_batch(&mut store, &mut bufs, 8), 1);
        assert_eq!(p.rx_backlog(), 1);
        assert_eq!(p.stats().fill_ring_empty, 1);
        store.release(bufs.pop().unwrap());
        assert_eq!(p.recv_batch(&mut store, &mut bufs, 8), 1);
        assert_eq!(bufs[0].packet(), b"b");
    }

    #[test]
    fn full_tx_ring_drops_and_counts() {
        let mut store = MemStore::new(4);
        let mut p = MemPort::new(Ingress::Uplink, 2, 1);
        let x = store.alloc().unwrap();
        let y = store.alloc().unwrap();
        assert!(p.send(&mut store, x));
        assert!(!p.send(&mut store, y));
        assert_eq!(p.stats().tx_dropped, 1);
        assert_eq!(store.free_frames(), 3);
    }

    #[test]
    fn bad_bounds_are_refused() {
        let mut store = MemStore::new(1);
        let mut buf = store.alloc().unwrap();
        assert!(buf.set_bounds(2040, 9).is_err());
        assert!(buf.set_bounds(usize::MAX, 2).is_err());
        assert!(buf.set_bounds(0, Frame::MIN_CAPACITY).is_ok());
    }
}
