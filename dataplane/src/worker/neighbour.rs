//! Neighbour resolution requests: workers name an underlay next hop the
//! neighbour table lacks, the control loop asks the kernel to resolve it.
//!
//! The kernel's neighbour subsystem starts ARP the moment a packet needs
//! an unresolved next hop; kxdp's tables are a snapshot of the kernel's
//! neighbour table, so without a signal a missing entry would only appear
//! at the next periodic host scan (a second later: the first SYN of a
//! connection is lost and TCP waits for its retransmit).
//!
//! # Contract
//!
//! - [`NeighbourRequests::request`] (worker side) never blocks, never
//!   allocates and makes no system call: a bounded open-addressing set of
//!   [`SLOTS`] `AtomicU32` (an address per slot, 0 = free), probed from the
//!   address's hash for at most [`PROBES`] slots. An address already queued
//!   is not queued twice ([`Request::Duplicate`]); when its probe window is
//!   full the request is dropped and counted ([`Request::Full`]) — the next
//!   packet to that next hop asks again.
//! - Any number of workers may request at once (one `compare_exchange` per
//!   slot claims it; two workers racing for one address see one
//!   [`Request::Queued`] and one [`Request::Duplicate`]). A request racing
//!   with a drain may queue an address the drain is about to return again
//!   in another slot: it is then drained twice, which the consumer's
//!   per-destination rate limit absorbs.
//! - [`NeighbourRequests::drain`] (one consumer, the control loop) empties
//!   the set. Nothing queued is lost: an address is drained exactly once per
//!   time it was queued ([`Request::Queued`]).
//! - 0.0.0.0 is never a next hop; requesting it is ignored.
//! - Workers only call this on a packet the pipeline dropped with
//!   `neighbour-unresolved`: packets whose neighbour is known never touch it.
//!
//! # Parked frames
//!
//! Like the kernel's per-neighbour `arp_queue`, a worker holds a few such
//! frames ([`ParkedFrames`]: at most `per_hop` per next hop, `capacity` in
//! all, each for at most `timeout`) and sends them once the tables name the
//! next hop's MAC, so the first packet of a connection is not lost. The
//! pipeline finished those frames with a zero destination MAC (see
//! `Pipeline::take_unresolved_next_hop`); sending writes the MAC in. The
//! storage is allocated once; parking and releasing never allocate.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots of the request set (distinct next hops pending at once).
pub const SLOTS: usize = 64;
/// Slots probed per request (bounds the worker's work on a crowded set).
pub const PROBES: usize = 8;
/// `SLOTS` is a power of two: the top bits of the hash index it.
const HASH_SHIFT: u32 = 32 - SLOTS.trailing_zeros();
const _: () = assert!(SLOTS.is_power_of_two() && PROBES <= SLOTS);

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Newly queued.
    Queued,
    /// Already queued and not drained yet.
    Duplicate,
    /// No free slot in the address's probe window: dropped and counted.
    Full,
    /// 0.0.0.0: not a next hop.
    Ignored,
}

/// The bounded set of next hops workers want resolved. Share it between
/// the workers (producers) and the control loop (the one consumer) in an
/// `Arc`.
#[derive(Debug)]
pub struct NeighbourRequests {
    slots: [AtomicU32; SLOTS],
    /// Set by a worker after queueing; lets the consumer sleep without
    /// scanning the slots.
    pending: AtomicBool,
    queued: AtomicU64,
    dropped_full: AtomicU64,
}

impl Default for NeighbourRequests {
    fn default() -> Self {
        NeighbourRequests {
            slots: std::array::from_fn(|_| AtomicU32::new(0)),
            pending: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
        }
    }
}

impl NeighbourRequests {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Worker side: ask for `ip` to be resolved. Lock-free, bounded work.
    pub fn request(&self, ip: Ipv4Addr) -> Request {
        let v = u32::from(ip);
        if v == 0 {
            return Request::Ignored;
        }
        // Fibonacci hashing spreads neighbouring addresses over the set.
        let start = (v.wrapping_mul(0x9E37_79B9) >> HASH_SHIFT) as usize;
        for k in 0..PROBES {
            let Some(slot) = self.slots.get((start + k) % SLOTS) else {
                break;
            };
            let cur = slot.load(Ordering::Relaxed);
            if cur == v {
                return Request::Duplicate;
            }
            if cur != 0 {
                continue;
            }
            match slot.compare_exchange(0, v, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    self.pending.store(true, Ordering::Release);
                    return Request::Queued;
                }
                // Another worker queued the same address meanwhile.
                Err(other) if other == v => return Request::Duplicate,
                Err(_) => {}
            }
        }
        self.dropped_full.fetch_add(1, Ordering::Relaxed);
        Request::Full
    }

    /// Consumer side: moves every queued address to `out` (appended) and
    /// returns how many.
    pub fn drain(&self, out: &mut Vec<Ipv4Addr>) -> usize {
        // Cleared first: a request racing with this drain sets it again.
        self.pending.store(false, Ordering::Release);
        let before = out.len();
        for slot in &self.slots {
            if slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let v = slot.swap(0, Ordering::AcqRel);
            if v != 0 {
                out.push(Ipv4Addr::from(v));
            }
        }
        out.len() - before
    }

    /// True when something may be queued (cheap: one load).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Consumer side: sleeps up to `timeout`, returning early (within
    /// `step`) once a request is pending. True when one is.
    pub fn wait(&self, timeout: Duration, step: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_pending() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(step.min(deadline - now).max(Duration::from_micros(100)));
        }
    }

    /// Requests queued so far (distinct while pending).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests dropped because the set was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed)
    }
}

/// A frame waiting for its next hop.
#[derive(Debug)]
struct Parked<B> {
    next_hop: Ipv4Addr,
    /// Monotonic ns after which the frame is dropped.
    deadline: u64,
    buf: B,
}

/// What [`ParkedFrames::settle`] decided for one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<B> {
    /// The next hop resolved to this MAC: send the frame.
    Send(B, crate::tables::MacAddr),
    /// Waited `timeout` in vain: release the frame.
    Expired(B),
}

/// Frames held per unresolved next hop (see the module docs).
#[derive(Debug)]
pub struct ParkedFrames<B> {
    frames: Vec<Parked<B>>,
    capacity: usize,
    per_hop: usize,
    timeout_ns: u64,
}

impl<B> ParkedFrames<B> {
    /// Room for `capacity` frames, `per_hop` per next hop, kept at most
    /// `timeout`. A zero `capacity` or `per_hop` parks nothing.
    pub fn new(capacity: usize, per_hop: usize, timeout: Duration) -> Self {
        ParkedFrames {
            frames: Vec::with_capacity(capacity),
            capacity,
            per_hop,
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is held (the worker's per-iteration check).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Holds `buf` until `next_hop` resolves; gives it back when the set or
    /// that next hop's share is full (the caller drops it).
    pub fn park(&mut self, next_hop: Ipv4Addr, buf: B, now_ns: u64) -> Result<(), B> {
        if self.frames.len() >= self.capacity
            || self
                .frames
                .iter()
                .filter(|p| p.next_hop == next_hop)
                .count()
                >= self.per_hop
        {
            return Err(buf);
        }
        self.frames.push(Parked {
            next_hop,
            deadline: now_ns.saturating_add(self.timeout_ns),
            buf,
        });
        Ok(())
    }

    /// Hands every frame whose next hop `lookup` now resolves (in the order
    /// they were parked) or whose time is up to `out`; keeps the rest.
    pub fn settle(
        &mut self,
        now_ns: u64,
        lookup: impl Fn(Ipv4Addr) -> Option<crate::tables::MacAddr>,
        mut out: impl FnMut(Settled<B>),
    ) {
        let mut i = 0;
        while i < self.frames.len() {
            let Some(p) = self.frames.get(i) else { break };
            let settled = match lookup(p.next_hop) {
                Some(mac) => Some(Some(mac)),
                None if now_ns >= p.deadline => Some(None),
                None => None,
            };
            match settled {
                None => i += 1,
                Some(mac) => {
                    // Order matters (a SYN-ACK before its data): remove,
                    // not swap_remove. At most `capacity` entries.
                    let p = self.frames.remove(i);
                    out(match mac {
                        Some(mac) => Settled::Send(p.buf, mac),
                        None => Settled::Expired(p.buf),
                    });
                }
            }
        }
    }

    /// Hands every frame to `out` (shutdown).
    pub fn drain_all(&mut self, mut out: impl FnMut(B)) {
        for p in self.frames.drain(..) {
            out(p.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;

    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(0xc0a8_0000 + n)
    }

    #[test]
    fn requests_are_deduplicated_until_drained() {
        let r = NeighbourRequests::new();
        assert!(!r.is_pending());
        assert_eq!(r.request(ip(7)), Request::Queued);
        assert_eq!(r.request(ip(7)), Request::Duplicate);
        assert_eq!(r.request(ip(8)), Request::Queued);
        assert_eq!(r.request(Ipv4Addr::UNSPECIFIED), Request::Ignored);
        assert!(r.is_pending());
        let mut out = Vec::new();
        assert_eq!(r.drain(&mut out), 2);
        out.sort();
        assert_eq!(out, vec![ip(7), ip(8)]);
        assert!(!r.is_pending());
        assert_eq!(r.drain(&mut out), 0, "drained once");
        // Asked again after the drain: queued again.
        assert_eq!(r.request(ip(7)), Request::Queued);
        assert_eq!(r.queued(), 3);
        assert_eq!(r.dropped_full(), 0);
    }

    #[test]
    fn the_set_is_bounded_and_counts_what_it_drops() {
        let r = NeighbourRequests::new();
        let mut outcomes = Vec::new();
        for n in 1..=(SLOTS as u32 * 4) {
            outcomes.push((ip(n), r.request(ip(n))));
        }
        let queued: BTreeSet<Ipv4Addr> = outcomes
            .iter()
            .filter(|(_, o)| *o == Request::Queued)
            .map(|(a, _)| *a)
            .collect();
        let full = outcomes.iter().filter(|(_, o)| *o == Request::Full).count();
        assert!(queued.len() <= SLOTS);
        assert_eq!(queued.len() + full, SLOTS * 4);
        assert_eq!(r.dropped_full(), full as u64);
        let mut out = Vec::new();
        r.drain(&mut out);
        // Exactly the queued ones come out, each once.
        assert_eq!(out.len(), queued.len());
        assert_eq!(out.into_iter().collect::<BTreeSet<_>>(), queued);
    }

    #[test]
    fn distinct_requests_under_capacity_are_never_lost() {
        // Consecutive addresses (a subnet's hosts) must fit: the hash
        // spreads them so none collides out of its probe window.
        let r = NeighbourRequests::new();
        for n in 1..=(SLOTS as u32 / 2) {
            assert_eq!(r.request(ip(n)), Request::Queued, "{}", ip(n));
        }
        let mut out = Vec::new();
        assert_eq!(r.drain(&mut out), SLOTS / 2);
        assert_eq!(r.dropped_full(), 0);
    }

    #[test]
    fn concurrent_workers_and_a_draining_consumer_lose_nothing() {
        let r = Arc::new(NeighbourRequests::new());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    // Every thread asks for the same 16 addresses, many
                    // times: dedup keeps the set small.
                    for round in 0..2000u32 {
                        let _ = r.request(ip(1 + (round + t) % 16));
                    }
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        while threads.iter().any(|t| !t.is_finished()) {
            out.clear();
            r.drain(&mut out);
            seen.extend(out.iter().copied());
        }
        for t in threads {
            t.join().unwrap();
        }
        out.clear();
        r.drain(&mut out);
        seen.extend(out.iter().copied());
        assert_eq!(seen, (1..=16).map(ip).collect::<BTreeSet<_>>());
        assert_eq!(r.dropped_full(), 0);
    }

    #[test]
    fn parked_frames_are_bounded_sent_in_order_and_expire() {
        use crate::tables::MacAddr;
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let mut p = ParkedFrames::new(4, 2, Duration::from_nanos(100));
        assert_eq!(p.park(ip(1), "a", 0), Ok(()));
        assert_eq!(p.park(ip(1), "b", 10), Ok(()));
        assert_eq!(p.park(ip(1), "c", 10), Err("c"), "per next hop");
        assert_eq!(p.park(ip(2), "d", 50), Ok(()));
        assert_eq!(p.park(ip(3), "e", 50), Ok(()));
        assert_eq!(p.park(ip(4), "f", 50), Err("f"), "in all");
        let mut out = Vec::new();
        // Nothing resolved, nothing due.
        p.settle(60, |_| None, |s| out.push(s));
        assert!(out.is_empty());
        // ip(2) resolves; ip(1)'s frames expire (parked at 0 and 10).
        p.settle(110, |a| (a == ip(2)).then_some(mac), |s| out.push(s));
        assert_eq!(
            out,
            vec![
                Settled::Expired("a"),
                Settled::Expired("b"),
                Settled::Send("d", mac)
            ]
        );
        assert_eq!(p.len(), 1);
        let mut rest = Vec::new();
        p.drain_all(|b| rest.push(b));
        assert_eq!(rest, vec!["e"]);
        assert!(p.is_empty());
        let mut off = ParkedFrames::new(0, 3, Duration::from_secs(1));
        assert_eq!(off.park(ip(1), 1, 0), Err(1));
    }

    #[test]
    fn wait_returns_early_when_a_request_arrives() {
        let r = NeighbourRequests::new();
        assert!(!r.wait(Duration::from_millis(5), Duration::from_millis(1)));
        let _ = r.request(ip(1));
        let t0 = Instant::now();
        assert!(r.wait(Duration::from_secs(10), Duration::from_millis(1)));
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
