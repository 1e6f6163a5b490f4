//! Frame bookkeeping of one AF_XDP socket, independent of the kernel.
//!
//! Every UMEM frame is in exactly one place at a time:
//!
//! ```text
//!            FramePool (worker-wide free list, shared by all its ports)
//!      refill |  ^ completions                         ^ release (drop, ToHost)
//!             v  |                                     |
//!   fill ring -> kernel rx -> rx ring -> user (Buf) ---+--> pending tx -> tx ring
//!                                                                          |
//!                                 comp ring <- kernel tx <-----------------+
//! ```
//!
//! [`PortCore`] owns the decisions (how much to refill, how much to reap,
//! what to do when a ring is full) and the counters; the rings themselves
//! sit behind [`XskRings`], implemented by the real xsk-rs queues and, in
//! tests, by a model kernel. Frames are conserved: `pool.free() +
//! Σ fill_outstanding + Σ tx_outstanding + frames held by the user ==
//! pool.total()`, which the tests check after every step.
//!
//! A port's fill ring is stocked up to its `fill_target` only, so many
//! ports (one per pod veth) can share one pool without one of them
//! hoarding every frame.
//!
//! # Frames lent to a socket that closes
//!
//! Descriptors are opaque tokens here (xsk-rs cannot make one from an
//! address), so a frame the kernel still holds in a fill or tx ring when
//! its socket closes would be gone for good. The pool therefore keeps the
//! full descriptor list by frame number ([`FrameId`]) and, per frame, the
//! port ([`PortCore::registered`]) whose fill or tx ring it was handed to.
//! After the socket is released, [`PortCore::reclaim_in_flight`] gives
//! every frame still marked as that port's back to the free list from the
//! saved descriptors. The mark costs one store per frame on refill, rx and
//! tx; the reclaim scans the pool once per closed port.

use std::io;

/// A frame descriptor that names its UMEM frame.
pub trait FrameId: Copy + Default {
    /// The frame's number: its address divided by the frame size.
    fn frame(&self) -> usize;
}

/// [`FramePool`]'s mark of a frame that is in no port's rings.
const NOT_LENT: u32 = 0;

/// Worker-wide free list of UMEM frame descriptors.
#[derive(Debug)]
pub struct FramePool<D> {
    free: Vec<D>,
    total: usize,
    /// Every descriptor the pool was created with, by frame number: what
    /// [`FramePool::reclaim`] re-issues.
    all: Vec<Option<D>>,
    /// Per frame number: the port whose fill or tx ring holds the frame,
    /// or [`NOT_LENT`].
    lent_to: Vec<u32>,
    /// Last port id handed out by [`FramePool::register_port`].
    last_port: u32,
}

impl<D: FrameId> FramePool<D> {
    /// A pool owning `descs` (all of the UMEM's frames). Frames whose
    /// number is not below `descs.len()` (never the case for a UMEM's own
    /// list) are pooled but not tracked: they cannot be reclaimed.
    pub fn new(descs: Vec<D>) -> Self {
        let total = descs.len();
        let mut all = vec![None; total];
        for d in &descs {
            if let Some(slot) = all.get_mut(d.frame()) {
                *slot = Some(*d);
            }
        }
        FramePool {
            free: descs,
            total,
            all,
            lent_to: vec![NOT_LENT; total],
            last_port: NOT_LENT,
        }
    }

    /// A new port id for [`PortCore::registered`] (never [`NOT_LENT`]).
    pub fn register_port(&mut self) -> u32 {
        // 4 billion opens per worker before ids repeat; a repeat could only
        // reclaim frames of a port closed long ago, which are back already.
        self.last_port = self.last_port.wrapping_add(1).max(1);
        self.last_port
    }

    /// Marks `d` as handed to `port`'s fill or tx ring.
    fn lend(&mut self, d: &D, port: u32) {
        if let Some(o) = self.lent_to.get_mut(d.frame()) {
            *o = port;
        }
    }

    /// Marks `d` as back in userspace (received or completed).
    fn returned(&mut self, d: &D) {
        if let Some(o) = self.lent_to.get_mut(d.frame()) {
            *o = NOT_LENT;
        }
    }

    /// Puts every frame still marked as lent to `port` back on the free
    /// list, from the saved descriptors. Only after `port`'s socket is
    /// released: the kernel must hold none of them any more. Returns how
    /// many came back.
    pub fn reclaim(&mut self, port: u32) -> usize {
        if port == NOT_LENT {
            return 0;
        }
        let mut n = 0;
        for (owner, d) in self.lent_to.iter_mut().zip(&self.all) {
            if *owner != port {
                continue;
            }
            *owner = NOT_LENT;
            if let Some(d) = d {
                if self.free.len() < self.total {
                    self.free.push(*d);
                    n += 1;
                }
            }
        }
        n
    }

    /// Frames currently free.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Frames the pool was created with.
    pub fn total(&self) -> usize {
        self.total
    }

    /// One free frame, if any.
    pub fn alloc(&mut self) -> Option<D> {
        self.free.pop()
    }

    /// Gives a frame back.
    ///
    /// Putting back more frames than the pool was created with means a
    /// descriptor was duplicated somewhere; such extras are dropped (and
    /// reported) rather than letting two owners share a frame.
    pub fn put(&mut self, d: D) -> bool {
        if self.free.len() >= self.total {
            return false;
        }
        self.returned(&d);
        self.free.push(d);
        true
    }

    /// Moves up to `n` frames to the end of `out`; returns how many.
    pub fn take_into(&mut self, n: usize, out: &mut Vec<D>) -> usize {
        let n = n.min(self.free.len());
        let start = self.free.len() - n;
        out.extend(self.free.drain(start..));
        n
    }
}

/// The four rings of one AF_XDP socket (fill and completion rings are per
/// `(interface, queue)` context with a shared UMEM).
pub trait XskRings<D> {
    /// Frames the fill ring can take right now.
    fn fill_free(&mut self) -> u32;
    /// Hands frames to the kernel for reception; returns how many it took.
    fn fill_produce(&mut self, descs: &[D]) -> usize;
    /// Received frames, at most `descs.len()`.
    fn rx_consume(&mut self, descs: &mut [D]) -> usize;
    /// Queues frames for transmission; returns how many fit.
    fn tx_produce(&mut self, descs: &[D]) -> usize;
    /// Transmitted frames given back, at most `descs.len()`.
    fn comp_consume(&mut self, descs: &mut [D]) -> usize;
    /// Whether the kernel asks for a wakeup to process the tx ring.
    fn tx_needs_wakeup(&self) -> bool;
    /// Whether the kernel asks for a wakeup to process the fill ring.
    fn fill_needs_wakeup(&self) -> bool;
    /// Kicks the kernel's tx path (`sendto`).
    fn tx_wakeup(&mut self) -> io::Result<()>;
    /// Kicks the kernel's rx path (`poll`, non-blocking).
    fn rx_wakeup(&mut self) -> io::Result<()>;
    /// Runs the device's NAPI poll in the calling thread (`recvfrom` with
    /// `MSG_DONTWAIT` on a socket with `SO_BUSY_POLL` set): the kernel
    /// moves what the device received into the rx ring before returning.
    fn rx_busy_poll(&mut self) -> io::Result<()>;
}

/// Limits of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreLimits {
    /// Frames kept in this port's fill ring.
    pub fill_target: u32,
    /// Frames held in the pending-tx list before `flush`; more are dropped.
    pub tx_batch: usize,
    /// Completions reaped per `complete` call (bounds the work per call).
    pub comp_batch: usize,
    /// `sendto` kicks per `flush`: copy mode sends at most 32 frames per
    /// kick (the kernel's TX_BATCH_SIZE), so a large batch needs several.
    pub max_tx_kicks: u32,
    /// Drive the device's NAPI from `recv` (preferred busy polling): one
    /// [`XskRings::rx_busy_poll`] per receive. In copy mode the kernel
    /// never asks for rx wakeups, so without this the device's softirq or
    /// NAPI thread alone fills the rx ring, competing with the worker for
    /// its core.
    pub busy_poll: bool,
}

impl Default for CoreLimits {
    fn default() -> Self {
        CoreLimits {
            fill_target: 512,
            tx_batch: 256,
            comp_batch: 256,
            max_tx_kicks: 16,
            busy_poll: false,
        }
    }
}

/// Counters kept by [`PortCore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreCounters {
    pub rx_packets: u64,
    pub tx_submitted: u64,
    pub tx_completed: u64,
    /// Frames dropped on the way out: pending list or tx ring full.
    pub tx_dropped: u64,
    /// Refills that wanted frames while the shared pool was empty.
    pub pool_empty: u64,
    /// Wakeups issued (tx `sendto` and rx `poll`).
    pub wakeups: u64,
    /// Busy polls issued (`recvfrom`, with [`CoreLimits::busy_poll`]).
    pub busy_polls: u64,
    /// Wakeups that failed with an error other than the expected
    /// EAGAIN/ENOBUFS/EBUSY/ENETDOWN (those are absorbed by xsk-rs).
    pub wakeup_errors: u64,
    /// Descriptors the pool refused (would exceed its total): a bug.
    pub pool_overflow: u64,
}

/// Ring accounting and policy of one AF_XDP socket.
#[derive(Debug)]
pub struct PortCore<D> {
    limits: CoreLimits,
    /// Id in the pool's lending marks ([`FramePool::register_port`]);
    /// [`NOT_LENT`] for a port whose frames are not tracked.
    port: u32,
    /// Frames in the fill ring or being received by the kernel.
    fill_outstanding: u32,
    /// Frames in the tx ring or being sent by the kernel.
    tx_outstanding: u32,
    pending: Vec<D>,
    /// Completion reaping buffer, `comp_batch` long.
    scratch: Vec<D>,
    /// Refill staging, capacity `fill_target`.
    fill_buf: Vec<D>,
    counters: CoreCounters,
}

impl<D: FrameId> PortCore<D> {
    /// A port with nothing in flight whose frames are not tracked: what
    /// its socket holds when it closes is lost
    /// ([`PortCore::forget_in_flight`]).
    pub fn new(limits: CoreLimits) -> Self {
        Self::with_port(limits, NOT_LENT)
    }

    /// A port with nothing in flight whose frames `pool` tracks, so
    /// [`PortCore::reclaim_in_flight`] recovers them when its socket
    /// closes.
    pub fn registered(limits: CoreLimits, pool: &mut FramePool<D>) -> Self {
        Self::with_port(limits, pool.register_port())
    }

    fn with_port(limits: CoreLimits, port: u32) -> Self {
        PortCore {
            limits,
            port,
            fill_outstanding: 0,
            tx_outstanding: 0,
            pending: Vec::with_capacity(limits.tx_batch),
            scratch: vec![D::default(); limits.comp_batch.max(1)],
            fill_buf: Vec::with_capacity(limits.fill_target as usize),
            counters: CoreCounters::default(),
        }
    }

    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    /// Whether `recv` drives the device's NAPI ([`CoreLimits::busy_poll`]).
    pub fn busy_polling(&self) -> bool {
        self.limits.busy_poll
    }

    /// Stops busy polling (the device turned out not to support it).
    pub fn stop_busy_polling(&mut self) {
        self.limits.busy_poll = false;
    }

    pub fn fill_outstanding(&self) -> u32 {
        self.fill_outstanding
    }

    pub fn tx_outstanding(&self) -> u32 {
        self.tx_outstanding
    }

    /// Frames queued by `send` and not yet flushed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Tops the fill ring up to `fill_target` from `pool`.
    pub fn refill<R: XskRings<D>>(&mut self, rings: &mut R, pool: &mut FramePool<D>) -> usize {
        let want = self
            .limits
            .fill_target
            .saturating_sub(self.fill_outstanding)
            .min(rings.fill_free()) as usize;
        if want == 0 {
            return 0;
        }
        self.fill_buf.clear();
        let got = pool.take_into(want, &mut self.fill_buf);
        if got < want {
            self.counters.pool_empty += 1;
        }
        let produced = rings.fill_produce(&self.fill_buf);
        for d in self.fill_buf.iter().take(produced) {
            pool.lend(d, self.port);
        }
        // A ring that took fewer than it said it had room for: the rest
        // goes back to the pool.
        for d in self.fill_buf.drain(..).skip(produced) {
            if !pool.put(d) {
                self.counters.pool_overflow += 1;
            }
        }
        self.fill_outstanding += produced as u32;
        produced
    }

    /// Receives up to `out.len()` frames into `out`, then refills.
    pub fn recv<R: XskRings<D>>(
        &mut self,
        rings: &mut R,
        pool: &mut FramePool<D>,
        out: &mut [D],
    ) -> usize {
        if self.limits.busy_poll {
            // Refill first: the NAPI run we are about to drive can only
            // deliver into frames the fill ring holds.
            self.refill(rings, pool);
            self.counters.busy_polls += 1;
            if rings.rx_busy_poll().is_err() {
                self.counters.wakeup_errors += 1;
            }
        }
        let mut n = rings.rx_consume(out);
        if n == 0 && rings.fill_needs_wakeup() {
            self.counters.wakeups += 1;
            if rings.rx_wakeup().is_err() {
                self.counters.wakeup_errors += 1;
            }
            n = rings.rx_consume(out);
        }
        for d in out.iter().take(n) {
            pool.returned(d);
        }
        // The kernel can only hand back frames it was given.
        self.fill_outstanding = self.fill_outstanding.saturating_sub(n as u32);
        self.counters.rx_packets += n as u64;
        self.refill(rings, pool);
        n
    }

    /// Queues `d` for the next flush. When the pending list is full the
    /// frame goes back to `pool` and counts as dropped; returns false.
    pub fn send(&mut self, d: D, pool: &mut FramePool<D>) -> bool {
        if self.pending.len() >= self.limits.tx_batch {
            self.counters.tx_dropped += 1;
            if !pool.put(d) {
                self.counters.pool_overflow += 1;
            }
            return false;
        }
        self.pending.push(d);
        true
    }

    /// Submits pending frames to the tx ring; frames that do not fit are
    /// dropped back to the pool. Kicks the kernel when it asks.
    pub fn flush<R: XskRings<D>>(&mut self, rings: &mut R, pool: &mut FramePool<D>) -> usize {
        let produced = if self.pending.is_empty() {
            0
        } else {
            rings.tx_produce(&self.pending)
        };
        for d in self.pending.iter().take(produced) {
            pool.lend(d, self.port);
        }
        for d in self.pending.drain(..).skip(produced) {
            self.counters.tx_dropped += 1;
            if !pool.put(d) {
                self.counters.pool_overflow += 1;
            }
        }
        self.tx_outstanding += produced as u32;
        self.counters.tx_submitted += produced as u64;
        if self.tx_outstanding > 0 {
            // Copy mode transmits at most 32 frames per kick; kick until
            // the kernel stops asking or the budget is spent. Each kick
            // is followed by reaping so `tx_outstanding` tracks progress.
            let kicks = (self.tx_outstanding / 32 + 1).min(self.limits.max_tx_kicks.max(1));
            for _ in 0..kicks {
                if !rings.tx_needs_wakeup() {
                    break;
                }
                self.counters.wakeups += 1;
                if rings.tx_wakeup().is_err() {
                    self.counters.wakeup_errors += 1;
                    break;
                }
                if self.complete(rings, pool) == 0 {
                    break;
                }
                if self.tx_outstanding == 0 {
                    break;
                }
            }
        }
        produced
    }

    /// Reaps up to `comp_batch` completed transmissions into `pool`.
    pub fn complete<R: XskRings<D>>(&mut self, rings: &mut R, pool: &mut FramePool<D>) -> usize {
        let buf = self.scratch.as_mut_slice();
        let n = rings.comp_consume(buf);
        for d in buf.iter().take(n) {
            if !pool.put(*d) {
                self.counters.pool_overflow += 1;
            }
        }
        self.tx_outstanding = self.tx_outstanding.saturating_sub(n as u32);
        self.counters.tx_completed += n as u64;
        n
    }

    /// Takes back every frame this port has lent to the kernel (after
    /// the socket is gone: its rings are unmapped and the kernel holds
    /// nothing). Returns the descriptors that were lost with the socket:
    /// the caller re-creates them or accepts a smaller pool.
    pub fn forget_in_flight(&mut self) -> u32 {
        let lost = self.fill_outstanding + self.tx_outstanding;
        self.fill_outstanding = 0;
        self.tx_outstanding = 0;
        lost
    }

    /// Takes back every frame this port has lent to the kernel, after its
    /// socket is released (the kernel holds nothing of it any more): a
    /// [`registered`](PortCore::registered) port's frames go back to
    /// `pool` from the saved descriptors. Returns the frames that could
    /// not be recovered (all of them for an untracked port).
    pub fn reclaim_in_flight(&mut self, pool: &mut FramePool<D>) -> u32 {
        let back = pool.reclaim(self.port);
        let lent = self.forget_in_flight();
        lent.saturating_sub(u32::try_from(back).unwrap_or(u32::MAX))
    }

    /// Returns pending (never submitted) frames to the pool.
    pub fn drain_pending(&mut self, pool: &mut FramePool<D>) {
        for d in self.pending.drain(..) {
            if !pool.put(d) {
                self.counters.pool_overflow += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, VecDeque};

    /// A model of the kernel side of one socket: bounded rings, frames
    /// move fill -> rx when a packet "arrives" and tx -> comp when it is
    /// "sent".
    #[derive(Default)]
    struct ModelKernel {
        ring_size: usize,
        fill: VecDeque<u64>,
        rx: VecDeque<u64>,
        tx: VecDeque<u64>,
        comp: VecDeque<u64>,
        need_tx_wakeup: bool,
        /// Frames the kernel transmits per tx wakeup (copy mode: 32).
        tx_per_kick: usize,
        kicks: u64,
        /// Packets the device holds until NAPI runs (busy polling moves
        /// them into the rx ring).
        device_backlog: usize,
        busy_polls: u64,
    }

    impl ModelKernel {
        fn new(ring_size: usize) -> Self {
            ModelKernel {
                ring_size,
                need_tx_wakeup: true,
                tx_per_kick: 32,
                ..Default::default()
            }
        }
        fn arrive(&mut self, n: usize) -> usize {
            let mut done = 0;
            while done < n && self.rx.len() < self.ring_size {
                let Some(d) = self.fill.pop_front() else {
                    break;
                };
                self.rx.push_back(d);
                done += 1;
            }
            done
        }
        fn transmit(&mut self, n: usize) -> usize {
            let mut done = 0;
            while done < n && self.comp.len() < self.ring_size {
                let Some(d) = self.tx.pop_front() else { break };
                self.comp.push_back(d);
                done += 1;
            }
            done
        }
        fn held(&self) -> usize {
            self.fill.len() + self.rx.len() + self.tx.len() + self.comp.len()
        }
    }

    impl XskRings<u64> for ModelKernel {
        fn fill_free(&mut self) -> u32 {
            (self.ring_size - self.fill.len()) as u32
        }
        fn fill_produce(&mut self, descs: &[u64]) -> usize {
            let n = descs.len().min(self.ring_size - self.fill.len());
            self.fill.extend(&descs[..n]);
            n
        }
        fn rx_consume(&mut self, descs: &mut [u64]) -> usize {
            let n = descs.len().min(self.rx.len());
            for d in descs.iter_mut().take(n) {
                *d = self.rx.pop_front().unwrap();
            }
            n
        }
        fn tx_produce(&mut self, descs: &[u64]) -> usize {
            let n = descs.len().min(self.ring_size - self.tx.len());
            self.tx.extend(&descs[..n]);
            n
        }
        fn comp_consume(&mut self, descs: &mut [u64]) -> usize {
            let n = descs.len().min(self.comp.len());
            for d in descs.iter_mut().take(n) {
                *d = self.comp.pop_front().unwrap();
            }
            n
        }
        fn tx_needs_wakeup(&self) -> bool {
            self.need_tx_wakeup
        }
        fn fill_needs_wakeup(&self) -> bool {
            false
        }
        fn tx_wakeup(&mut self) -> io::Result<()> {
            self.kicks += 1;
            let n = self.tx_per_kick;
            self.transmit(n);
            Ok(())
        }
        fn rx_wakeup(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn rx_busy_poll(&mut self) -> io::Result<()> {
            self.busy_polls += 1;
            let waiting = std::mem::take(&mut self.device_backlog);
            let delivered = self.arrive(waiting);
            self.device_backlog = waiting - delivered;
            Ok(())
        }
    }

    impl FrameId for u64 {
        fn frame(&self) -> usize {
            (*self / 2048) as usize
        }
    }

    /// What `AfXdpPort::close` does with the model: reap completions,
    /// release the socket (the kernel's rings vanish with whatever they
    /// held), reclaim.
    fn close(c: &mut PortCore<u64>, k: &mut ModelKernel, p: &mut FramePool<u64>) -> u32 {
        c.drain_pending(p);
        while c.complete(k, p) > 0 {}
        *k = ModelKernel::new(k.ring_size);
        c.reclaim_in_flight(p)
    }

    #[test]
    fn closing_a_port_recovers_frames_in_its_fill_and_tx_rings() {
        let mut p = pool(128);
        let limits = CoreLimits {
            fill_target: 48,
            ..CoreLimits::default()
        };
        let (mut ka, mut kb) = (ModelKernel::new(64), ModelKernel::new(64));
        let mut a = PortCore::registered(limits, &mut p);
        let mut b = PortCore::registered(limits, &mut p);
        a.refill(&mut ka, &mut p);
        b.refill(&mut kb, &mut p);
        // 10 packets arrive on b and are forwarded out of a; a's tx ring
        // keeps them (the kernel sends nothing: no kick answered).
        ka.need_tx_wakeup = false;
        assert_eq!(kb.arrive(10), 10);
        let mut buf = [0u64; 16];
        let n = b.recv(&mut kb, &mut p, &mut buf);
        assert_eq!(n, 10);
        for d in &buf[..n] {
            assert!(a.send(*d, &mut p));
        }
        assert_eq!(a.flush(&mut ka, &mut p), 10);
        // 5 more arrive on a but are never received.
        assert_eq!(ka.arrive(5), 5);
        assert_eq!(a.fill_outstanding(), 48);
        assert_eq!(a.tx_outstanding(), 10);
        let free_before = p.free();
        assert_eq!(close(&mut a, &mut ka, &mut p), 0, "nothing lost");
        assert_eq!(p.free(), free_before + 58);
        // Every frame is exactly once in the pool or b's rings.
        let mut seen: BTreeSet<u64> = p.free.iter().copied().collect();
        for d in kb.fill.iter().chain(&kb.rx) {
            assert!(seen.insert(*d), "frame {d} twice");
        }
        assert_eq!(seen.len(), 128);
        // b's frames are still b's: closing b recovers them too.
        assert_eq!(close(&mut b, &mut kb, &mut p), 0);
        assert_eq!(p.free(), 128);
    }

    #[test]
    fn an_untracked_port_reports_its_frames_lost() {
        let mut p = pool(64);
        let mut k = ModelKernel::new(64);
        let mut c = PortCore::new(CoreLimits {
            fill_target: 20,
            ..CoreLimits::default()
        });
        c.refill(&mut k, &mut p);
        assert_eq!(close(&mut c, &mut k, &mut p), 20);
        assert_eq!(p.free(), 44);
    }

    #[test]
    fn reclaim_touches_only_the_closed_ports_frames() {
        let mut p = pool(32);
        let port = p.register_port();
        let other = p.register_port();
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        p.lend(&a, port);
        p.lend(&b, other);
        assert_eq!(p.reclaim(port), 1);
        assert_eq!(p.reclaim(port), 0, "a frame comes back once");
        assert_eq!(p.free(), 31);
        assert_eq!(p.free.last(), Some(&a));
        assert_eq!(p.reclaim(NOT_LENT), 0);
    }

    fn pool(n: u64) -> FramePool<u64> {
        FramePool::new((0..n).map(|i| i * 2048).collect())
    }

    #[test]
    fn refill_stops_at_target_and_shares_the_pool() {
        let mut p = pool(100);
        let limits = CoreLimits {
            fill_target: 40,
            ..CoreLimits::default()
        };
        let (mut k1, mut k2) = (ModelKernel::new(64), ModelKernel::new(64));
        let (mut c1, mut c2) = (PortCore::new(limits), PortCore::new(limits));
        assert_eq!(c1.refill(&mut k1, &mut p), 40);
        assert_eq!(c1.refill(&mut k1, &mut p), 0, "already at target");
        assert_eq!(c2.refill(&mut k2, &mut p), 40);
        assert_eq!(p.free(), 20);
        assert_eq!(k1.fill.len() + k2.fill.len(), 80);
    }

    #[test]
    fn refill_counts_an_empty_pool() {
        let mut p = pool(10);
        let mut k = ModelKernel::new(64);
        let mut c = PortCore::new(CoreLimits::default());
        assert_eq!(c.refill(&mut k, &mut p), 10);
        assert_eq!(c.counters().pool_empty, 1);
    }

    #[test]
    fn rx_forward_tx_completes_back_to_pool() {
        let mut p = pool(64);
        let (mut ka, mut kb) = (ModelKernel::new(64), ModelKernel::new(64));
        let limits = CoreLimits {
            fill_target: 32,
            ..CoreLimits::default()
        };
        let (mut a, mut b) = (PortCore::new(limits), PortCore::new(limits));
        a.refill(&mut ka, &mut p);
        b.refill(&mut kb, &mut p);
        assert_eq!(p.free(), 0);
        assert_eq!(ka.arrive(10), 10);
        let mut got = [0u64; 16];
        let n = a.recv(&mut ka, &mut p, &mut got);
        assert_eq!(n, 10);
        // Refill found an empty pool: port a has 22 frames in its ring.
        assert_eq!(a.fill_outstanding(), 22);
        // Forward all ten out of port b (frames received on a).
        for d in &got[..n] {
            assert!(b.send(*d, &mut p));
        }
        assert_eq!(b.flush(&mut kb, &mut p), 10);
        // The model transmitted on the kick and flush reaped the completions.
        assert_eq!(b.tx_outstanding(), 0);
        assert_eq!(p.free(), 10);
        assert_eq!(b.counters().tx_completed, 10);
    }

    #[test]
    fn full_tx_ring_drops_back_to_pool() {
        let mut p = pool(16);
        let mut k = ModelKernel::new(4);
        k.need_tx_wakeup = false; // nothing completes
        let mut c = PortCore::new(CoreLimits::default());
        for _ in 0..6 {
            let d = p.alloc().unwrap();
            assert!(c.send(d, &mut p));
        }
        assert_eq!(c.flush(&mut k, &mut p), 4);
        assert_eq!(c.counters().tx_dropped, 2);
        assert_eq!(p.free(), 16 - 4);
    }

    #[test]
    fn pending_list_is_bounded() {
        let mut p = pool(8);
        let mut c = PortCore::new(CoreLimits {
            tx_batch: 2,
            ..CoreLimits::default()
        });
        let d: Vec<u64> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert!(c.send(d[0], &mut p));
        assert!(c.send(d[1], &mut p));
        assert!(!c.send(d[2], &mut p));
        assert_eq!(c.counters().tx_dropped, 1);
        assert_eq!(p.free(), 6);
    }

    #[test]
    fn large_batch_takes_several_kicks_in_copy_mode() {
        let mut p = pool(256);
        let mut k = ModelKernel::new(256);
        let mut c = PortCore::new(CoreLimits::default());
        for _ in 0..100 {
            let d = p.alloc().unwrap();
            c.send(d, &mut p);
        }
        c.flush(&mut k, &mut p);
        assert_eq!(k.kicks, 4, "100 frames at 32 per kick");
        assert_eq!(c.tx_outstanding(), 0);
        assert_eq!(p.free(), 256);
    }

    #[test]
    fn busy_polling_receives_what_the_device_holds_in_the_same_call() {
        let mut p = pool(256);
        let mut buf = [0u64; 64];
        let limits = CoreLimits {
            fill_target: 32,
            ..CoreLimits::default()
        };

        // Without busy polling nothing runs the device's NAPI for us.
        let mut k = ModelKernel::new(64);
        let mut c = PortCore::new(limits);
        c.refill(&mut k, &mut p);
        k.device_backlog = 10;
        assert_eq!(c.recv(&mut k, &mut p, &mut buf), 0);
        assert_eq!(k.busy_polls, 0);

        // With it, each recv runs it first; a backlog larger than the fill
        // ring arrives over several calls, the ring refilled in between.
        let mut k = ModelKernel::new(64);
        let mut c = PortCore::new(CoreLimits {
            busy_poll: true,
            ..limits
        });
        k.device_backlog = 50;
        assert_eq!(c.recv(&mut k, &mut p, &mut buf), 32, "fill target");
        assert_eq!(c.recv(&mut k, &mut p, &mut buf), 18);
        assert_eq!(k.device_backlog, 0);
        assert_eq!(k.busy_polls, 2);
        assert_eq!(c.counters().busy_polls, 2);
        assert_eq!(c.counters().rx_packets, 50);
        assert_eq!(c.fill_outstanding(), 32, "refilled after receiving");
    }
    #[test]
    fn pool_refuses_more_than_total() {
        let mut p = pool(2);
        assert!(!p.put(7), "pool already full");
        let d = p.alloc().unwrap();
        assert!(p.put(d));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Arrive(usize, usize),
        Recv(usize, usize),
        ForwardHeld(usize, usize),
        DropHeld(usize),
        Flush(usize),
        Transmit(usize, usize),
        Complete(usize),
        Refill(usize),
        /// Closes port i (socket released) and opens a new one in its place.
        Close(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..80usize).prop_map(|(p, n)| Op::Arrive(p, n)),
            (0..3usize, 0..80usize).prop_map(|(p, n)| Op::Recv(p, n)),
            (0..3usize, 0..80usize).prop_map(|(p, n)| Op::ForwardHeld(p, n)),
            (0..80usize).prop_map(Op::DropHeld),
            (0..3usize).prop_map(Op::Flush),
            (0..3usize, 0..80usize).prop_map(|(p, n)| Op::Transmit(p, n)),
            (0..3usize).prop_map(Op::Complete),
            (0..3usize).prop_map(Op::Refill),
            (0..3usize).prop_map(Op::Close),
        ]
    }

    proptest! {
        /// Three ports sharing one pool under any interleaving of packet
        /// arrivals, receptions, forwards, drops and transmissions: no
        /// frame is lost or duplicated.
        #[test]
        fn frames_are_conserved(ops in proptest::collection::vec(op(), 1..200),
                                ring in prop_oneof![Just(8usize), Just(64), Just(256)],
                                target in 1u32..300) {
            const TOTAL: u64 = 300;
            let mut p = pool(TOTAL);
            let limits = CoreLimits { fill_target: target, tx_batch: 64, comp_batch: 32, max_tx_kicks: 4, busy_poll: false };
            let mut ks: Vec<ModelKernel> = (0..3).map(|_| ModelKernel::new(ring)).collect();
            for k in &mut ks { k.tx_per_kick = 7; }
            let mut cs: Vec<PortCore<u64>> =
                (0..3).map(|_| PortCore::registered(limits, &mut p)).collect();
            let mut held: Vec<u64> = Vec::new();
            let mut buf = vec![0u64; 80];
            for op in ops {
                match op {
                    Op::Arrive(i, n) => { ks[i].arrive(n); }
                    Op::Recv(i, n) => {
                        let got = cs[i].recv(&mut ks[i], &mut p, &mut buf[..n]);
                        held.extend_from_slice(&buf[..got]);
                    }
                    Op::ForwardHeld(i, n) => {
                        for d in held.drain(..n.min(held.len())) { cs[i].send(d, &mut p); }
                    }
                    Op::DropHeld(n) => {
                        for d in held.drain(..n.min(held.len())) { prop_assert!(p.put(d)); }
                    }
                    Op::Flush(i) => { cs[i].flush(&mut ks[i], &mut p); }
                    Op::Transmit(i, n) => { ks[i].transmit(n); }
                    Op::Complete(i) => { cs[i].complete(&mut ks[i], &mut p); }
                    Op::Refill(i) => { cs[i].refill(&mut ks[i], &mut p); }
                    Op::Close(i) => {
                        prop_assert_eq!(close(&mut cs[i], &mut ks[i], &mut p), 0);
                        cs[i] = PortCore::registered(limits, &mut p);
                        cs[i].refill(&mut ks[i], &mut p);
                    }
                }
                // Accounting matches the model kernel.
                for (c, k) in cs.iter().zip(&ks) {
                    prop_assert_eq!(c.fill_outstanding() as usize, k.fill.len() + k.rx.len());
                    prop_assert_eq!(c.tx_outstanding() as usize, k.tx.len() + k.comp.len());
                    prop_assert!(c.fill_outstanding() <= target.max(c.fill_outstanding()));
                    prop_assert_eq!(c.counters().pool_overflow, 0);
                }
                // Conservation and uniqueness.
                let mut all: BTreeSet<u64> = BTreeSet::new();
                let mut count = p.free.len() + held.len();
                all.extend(p.free.iter().copied());
                all.extend(held.iter().copied());
                for (c, k) in cs.iter().zip(&ks) {
                    count += k.held() + c.pending.len();
                    all.extend(k.fill.iter().chain(&k.rx).chain(&k.tx).chain(&k.comp).copied());
                    all.extend(c.pending.iter().copied());
                }
                prop_assert_eq!(count as u64, TOTAL);
                prop_assert_eq!(all.len() as u64, TOTAL, "a frame is in two places");
            }
        }
    }
}
