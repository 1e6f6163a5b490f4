//! Service session affinity (`sessionAffinity: ClientIP`): which backend a
//! client was last sent to, per Service port.
//!
//! Same machinery and guarantees as the connection table (see the
//! [module documentation](super)): fixed capacity allocated once, lock-free
//! readers that never wait, writers that claim slots by CAS and report
//! [`AffinityError::Busy`] instead of waiting, and an incremental GC.
//!
//! Semantics follow kube-proxy: the key is `(client IP, Service port)`, an
//! entry expires when unused for the Service's timeout (default 10800 s,
//! at most 86400 s; the caller passes it in nanoseconds) and every use
//! refreshes it. The timeout given to [`AffinityTable::insert`] is stored
//! with the entry so that [`AffinityTable::gc`] can expire it without the
//! Service table; [`AffinityTable::lookup`] uses the caller's current value.
//!
//! Slot words: `[client | service port, 0, backend ip | port, last used,
//! timeout]`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::slots::{Rival, SlotState, SlotTable, Snapshot};
use super::GcProgress;

const W: usize = 5;
const W_BACKEND: usize = 2;
const W_LAST_USED: usize = 3;
const W_TIMEOUT: usize = 4;
const KIND: u8 = 0;
/// One key per entry, at most half of the slots used.
const SLOTS_PER_ENTRY: usize = 2;
/// Last-used is rewritten at most once per millisecond per entry.
const REFRESH_GRANULARITY_NS: u64 = 1_000_000;

/// Why an [`AffinityTable::insert`] did not record the binding. Either way
/// the caller can still forward the packet to the backend it chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AffinityError {
    /// The table holds its capacity of bindings, or the key's probe window
    /// is full.
    #[error("session affinity table full")]
    Full,
    /// Another thread is writing or removing this client's binding.
    #[error("session affinity entry busy")]
    Busy,
}

/// One binding, for tools and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityEntry {
    pub client: Ipv4Addr,
    pub service_port: u32,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
    pub last_used_ns: u64,
    pub timeout_ns: u64,
}

impl AffinityEntry {
    fn decode(w: &[u64; W]) -> AffinityEntry {
        let (backend, backend_port) = unpack_backend(w[W_BACKEND]);
        AffinityEntry {
            client: Ipv4Addr::from((w[0] >> 32) as u32),
            service_port: w[0] as u32,
            backend,
            backend_port,
            last_used_ns: w[W_LAST_USED],
            timeout_ns: w[W_TIMEOUT],
        }
    }

    fn expired(&self, now_ns: u64, timeout_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_used_ns) >= timeout_ns
    }
}

fn key(client: Ipv4Addr, service_port: u32) -> [u64; 2] {
    [
        (u64::from(u32::from(client)) << 32) | u64::from(service_port),
        0,
    ]
}

fn pack_backend(ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(u32::from(ip)) << 32) | (u64::from(port) << 16)
}

fn unpack_backend(w: u64) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from((w >> 32) as u32), (w >> 16) as u16)
}

/// The session-affinity table, shared by all workers.
pub struct AffinityTable {
    slots: SlotTable<W>,
    len: AtomicUsize,
    capacity: usize,
}

impl AffinityTable {
    /// A table for `capacity` bindings (clamped to `1..=2^30`); `hash_seed`
    /// as in [`CtConfig::hash_seed`](super::CtConfig::hash_seed).
    pub fn new(capacity: usize, hash_seed: Option<u64>) -> Self {
        let capacity = capacity.clamp(1, 1 << 30);
        AffinityTable {
            slots: SlotTable::new(capacity * SLOTS_PER_ENTRY, hash_seed),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Bindings stored (including inserts in progress).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no binding is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of bindings.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The backend `client` was bound to for `service_port`, unless unused
    /// for `timeout_ns` or more. A hit refreshes the binding.
    pub fn lookup(
        &self,
        client: Ipv4Addr,
        service_port: u32,
        now_ns: u64,
        timeout_ns: u64,
    ) -> Option<(Ipv4Addr, u16)> {
        let (idx, snap) = self.find(client, service_port)?;
        let entry = AffinityEntry::decode(&snap.words);
        if entry.expired(now_ns, timeout_ns) {
            return None;
        }
        if now_ns > entry.last_used_ns.saturating_add(REFRESH_GRANULARITY_NS) {
            if let Some(w) = self.slots.word(idx, W_LAST_USED) {
                w.fetch_max(now_ns, Ordering::Relaxed);
            }
        }
        Some((entry.backend, entry.backend_port))
    }

    /// Binds `client` to `backend:backend_port` for `service_port`, replacing
    /// any previous binding, as of `now_ns`, expiring after `timeout_ns` of
    /// disuse.
    pub fn insert(
        &self,
        client: Ipv4Addr,
        service_port: u32,
        backend: Ipv4Addr,
        backend_port: u16,
        now_ns: u64,
        timeout_ns: u64,
    ) -> Result<(), AffinityError> {
        let value = pack_backend(backend, backend_port);
        if let Some((idx, snap)) = self.find(client, service_port) {
            // Replace in place under the slot lock: readers keep seeing a
            // live entry, each word atomically old or new.
            let locked = self
                .slots
                .transition(idx, snap.ctrl, SlotState::Locked)
                .ok_or(AffinityError::Busy)?;
            for (w, v) in [
                (W_BACKEND, value),
                (W_LAST_USED, now_ns),
                (W_TIMEOUT, timeout_ns),
            ] {
                if let Some(word) = self.slots.word(idx, w) {
                    word.store(v, Ordering::Relaxed);
                }
            }
            self.slots.transition(idx, locked, SlotState::Occupied);
            return Ok(());
        }
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| AffinityError::Full)?;
        let result = self.insert_new(key(client, service_port), value, now_ns, timeout_ns);
        if result.is_err() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    /// Removes every binding to `backend:backend_port` (the endpoint went
    /// away) and returns how many.
    pub fn flush_backend(&self, backend: Ipv4Addr, backend_port: u16) -> usize {
        let value = pack_backend(backend, backend_port);
        (0..self.slots.slots())
            .filter(|&idx| {
                self.slots.read_live(idx).is_some_and(|snap| {
                    snap.words[W_BACKEND] == value && self.remove_at(idx, &snap, None)
                })
            })
            .count()
    }

    /// One step of the incremental sweep: examines the next `budget_slots`
    /// slots and frees the bindings unused for their stored timeout.
    pub fn gc(&self, now_ns: u64, budget_slots: usize) -> GcProgress {
        let range = self.slots.gc_range(budget_slots);
        let mut freed = 0;
        for i in 0..range.len {
            let idx = self.slots.wrap(range.start.wrapping_add(i));
            let Some(snap) = self.slots.read_live(idx) else {
                continue;
            };
            let e = AffinityEntry::decode(&snap.words);
            if e.expired(now_ns, e.timeout_ns) && self.remove_at(idx, &snap, Some(now_ns)) {
                freed += 1;
            }
        }
        GcProgress {
            examined: range.len,
            freed,
            pass_complete: range.pass_complete,
        }
    }

    /// A snapshot of each binding (expired ones included until GC frees
    /// them).
    pub fn iter(&self) -> impl Iterator<Item = AffinityEntry> + '_ {
        (0..self.slots.slots())
            .filter_map(|idx| self.slots.read_live(idx))
            .map(|snap| AffinityEntry::decode(&snap.words))
    }

    fn find(&self, client: Ipv4Addr, service_port: u32) -> Option<(usize, Snapshot<W>)> {
        let k = key(client, service_port);
        self.slots.find_live(k, self.slots.hash(k)).next()
    }

    fn insert_new(
        &self,
        k: [u64; 2],
        value: u64,
        now_ns: u64,
        timeout_ns: u64,
    ) -> Result<(), AffinityError> {
        let h = self.slots.hash(k);
        let (idx, claimed) = self.slots.claim(h, KIND).ok_or(AffinityError::Full)?;
        self.slots
            .write(idx, &[k[0], k[1], value, now_ns, timeout_ns]);
        let Some(pending) = self.slots.transition(idx, claimed, SlotState::Pending) else {
            self.slots.transition(idx, claimed, SlotState::Empty);
            return Err(AffinityError::Busy);
        };
        if !matches!(self.slots.rival(k, h, idx, idx), Rival::None) {
            self.slots.transition(idx, pending, SlotState::Empty);
            return Err(AffinityError::Busy);
        }
        self.slots.transition(idx, pending, SlotState::Occupied);
        Ok(())
    }

    /// Locks and frees slot `idx` if it still holds `snap`'s entry; with
    /// `expired_at`, only if it is still expired then.
    fn remove_at(&self, idx: usize, snap: &Snapshot<W>, expired_at: Option<u64>) -> bool {
        if snap.ctrl.state() != SlotState::Occupied {
            return false;
        }
        let Some(locked) = self.slots.transition(idx, snap.ctrl, SlotState::Locked) else {
            return false;
        };
        if let Some(now_ns) = expired_at {
            let last_used = self
                .slots
                .word(idx, W_LAST_USED)
                .map_or(0, |w| w.load(Ordering::SeqCst));
            let timeout = snap.words[W_TIMEOUT];
            if now_ns.saturating_sub(last_used) < timeout {
                self.slots.transition(idx, locked, SlotState::Occupied);
                return false;
            }
        }
        self.slots.transition(idx, locked, SlotState::Empty);
        self.len.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

impl std::fmt::Debug for AffinityTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const TIMEOUT: u64 = 10_800 * S;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    #[test]
    fn insert_lookup_refresh_expire() {
        let t = AffinityTable::new(16, Some(1));
        assert_eq!(t.lookup(ip(1), 7, 0, TIMEOUT), None);
        t.insert(ip(1), 7, ip(100), 8080, 0, TIMEOUT).expect("room");
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip(1), 7, 1, TIMEOUT), Some((ip(100), 8080)));
        // Other Service port, other client: separate keys.
        assert_eq!(t.lookup(ip(1), 8, 1, TIMEOUT), None);
        assert_eq!(t.lookup(ip(2), 7, 1, TIMEOUT), None);
        // Use just before expiry refreshes it.
        assert_eq!(
            t.lookup(ip(1), 7, TIMEOUT - 1, TIMEOUT),
            Some((ip(100), 8080))
        );
        assert_eq!(
            t.lookup(ip(1), 7, 2 * TIMEOUT - 2, TIMEOUT),
            Some((ip(100), 8080))
        );
        // Unused for the timeout: a miss, and GC frees it.
        assert_eq!(t.lookup(ip(1), 7, 3 * TIMEOUT, TIMEOUT), None);
        let p = t.gc(3 * TIMEOUT, usize::MAX);
        assert_eq!(p.freed, 1);
        assert!(p.pass_complete);
        assert!(t.is_empty());
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn lookup_timeout_is_the_callers_and_gc_uses_the_stored_one() {
        let t = AffinityTable::new(16, Some(1));
        t.insert(ip(1), 7, ip(100), 80, 0, 10 * S).expect("room");
        assert_eq!(t.lookup(ip(1), 7, 5 * S, 4 * S), None);
        assert!(t.lookup(ip(1), 7, 5 * S, 6 * S).is_some());
        // Refreshed at 5 s: alive at 14 s, freed at 15 s.
        assert_eq!(t.gc(14 * S, usize::MAX).freed, 0);
        assert_eq!(t.gc(15 * S, usize::MAX).freed, 1);
    }

    #[test]
    fn insert_replaces_the_backend() {
        let t = AffinityTable::new(16, Some(1));
        t.insert(ip(1), 7, ip(100), 80, 0, TIMEOUT).expect("room");
        t.insert(ip(1), 7, ip(101), 81, 5, TIMEOUT).expect("room");
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip(1), 7, 6, TIMEOUT), Some((ip(101), 81)));
        // An expired binding is replaced in place too.
        t.insert(ip(1), 7, ip(102), 82, 2 * TIMEOUT, TIMEOUT)
            .expect("room");
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.lookup(ip(1), 7, 2 * TIMEOUT, TIMEOUT),
            Some((ip(102), 82))
        );
    }

    #[test]
    fn flush_backend_removes_only_that_endpoint() {
        let t = AffinityTable::new(64, Some(1));
        for c in 1..=10 {
            let port = if c % 2 == 0 { 80 } else { 81 };
            t.insert(ip(c), 7, ip(100), port, 0, TIMEOUT).expect("room");
        }
        t.insert(ip(1), 9, ip(101), 80, 0, TIMEOUT).expect("room");
        assert_eq!(t.flush_backend(ip(100), 80), 5);
        assert_eq!(t.len(), 6);
        assert!(t
            .iter()
            .all(|e| (e.backend, e.backend_port) != (ip(100), 80)));
        assert_eq!(t.lookup(ip(2), 7, 1, TIMEOUT), None);
        assert_eq!(t.lookup(ip(3), 7, 1, TIMEOUT), Some((ip(100), 81)));
        assert_eq!(t.lookup(ip(1), 9, 1, TIMEOUT), Some((ip(101), 80)));
        assert_eq!(t.flush_backend(ip(100), 80), 0);
    }

    #[test]
    fn bounded() {
        let t = AffinityTable::new(100, Some(1));
        let mut full = 0;
        for c in 0..1000u32 {
            match t.insert(Ipv4Addr::from(c), 1, ip(1), 1, 0, TIMEOUT) {
                Ok(()) => {}
                Err(AffinityError::Full) => full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(t.len() <= 100);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(full, 900);
        assert_eq!(t.iter().count(), 100);
        assert_eq!(t.gc(TIMEOUT, usize::MAX).freed, 100);
        assert!(t.is_empty());
    }

    #[test]
    fn concurrent_inserts_of_one_client_keep_one_binding() {
        let t = AffinityTable::new(64, Some(1));
        std::thread::scope(|s| {
            for w in 0..4u8 {
                let t = &t;
                s.spawn(move || {
                    for round in 0..2000u64 {
                        let _ = t.insert(ip(1), 7, ip(100 + w), 80, round, TIMEOUT);
                        let got = t.lookup(ip(1), 7, round, TIMEOUT);
                        if let Some((b, _)) = got {
                            assert!((100..104).contains(&b.octets()[3]));
                        }
                    }
                });
            }
        });
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().count(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            c: u8,
            svc: u32,
            b: u8,
            timeout_s: u64,
        },
        Lookup {
            c: u8,
            svc: u32,
            timeout_s: u64,
        },
        Flush {
            b: u8,
        },
        Gc,
        Advance {
            s: u64,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..6u8, 0..2u32, 0..3u8, 5..15u64)
                .prop_map(|(c, svc, b, timeout_s)| Op::Insert { c, svc, b, timeout_s }),
            3 => (0..6u8, 0..2u32, 5..15u64)
                .prop_map(|(c, svc, timeout_s)| Op::Lookup { c, svc, timeout_s }),
            1 => (0..3u8).prop_map(|b| Op::Flush { b }),
            1 => Just(Op::Gc),
            2 => (1..12u64).prop_map(|s| Op::Advance { s }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..60)) {
            // Oracle: (client, svc) -> (backend, last used, stored timeout).
            let mut model = std::collections::HashMap::<(u8, u32), (u8, u64, u64)>::new();
            let t = AffinityTable::new(6, Some(9));
            let mut now = 100 * S;
            for op in ops {
                match op {
                    Op::Insert { c, svc, b, timeout_s } => {
                        let full = model.len() >= 6 && !model.contains_key(&(c, svc));
                        let got = t.insert(ip(c), svc, ip(100 + b), 80, now, timeout_s * S);
                        proptest::prop_assert_eq!(got.is_err(), full);
                        if !full {
                            model.insert((c, svc), (b, now, timeout_s * S));
                        }
                    }
                    Op::Lookup { c, svc, timeout_s } => {
                        let want = match model.get_mut(&(c, svc)) {
                            Some((b, last, _)) if now - *last < timeout_s * S => {
                                *last = now;
                                Some((ip(100 + *b), 80))
                            }
                            _ => None,
                        };
                        proptest::prop_assert_eq!(t.lookup(ip(c), svc, now, timeout_s * S), want);
                    }
                    Op::Flush { b } => {
                        let before = model.len();
                        model.retain(|_, v| v.0 != b);
                        proptest::prop_assert_eq!(t.flush_backend(ip(100 + b), 80), before - model.len());
                    }
                    Op::Gc => {
                        let before = model.len();
                        model.retain(|_, (_, last, timeout)| now - *last < *timeout);
                        proptest::prop_assert_eq!(t.gc(now, usize::MAX).freed, before - model.len());
                    }
                    Op::Advance { s } => now += s * S,
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                proptest::prop_assert_eq!(t.iter().count(), model.len());
            }
        }
    }
}
