//! [`Conntrack`]: connections on top of the generic slot table. See the
//! [module documentation](super) for the model and the ordering argument.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::slots::{Ctrl, Rival, SlotState, SlotTable, Snapshot};
use super::state::{self, TimeoutsNs};
use super::{
    CommitError, CtConfig, CtEntryView, CtHandle, CtHit, CtMeta, Direction, FlowKey, GcProgress,
};

/// Words per slot.
const W: usize = 8;

// Word indices of an original slot.
const W_REPLY0: usize = 2;
const W_REPLY1: usize = 3;
const W_META: usize = 4;
const W_FLAGS_PARTNER: usize = 5;
const W_LAST_SEEN: usize = 6;
const W_STATE: usize = 7;
// Word indices of a reply slot: pointer to its original slot, and a copy
// of the original tuple (so that a racing commit of the same connection can
// be recognized from the reply slot alone).
const W_ORIGIN: usize = 2;
const W_ORIGINAL0: usize = 3;
const W_ORIGINAL1: usize = 4;

// Slot kinds.
const KIND_ORIG: u8 = 0;
const KIND_REPLY: u8 = 1;

/// Last-seen is only rewritten when it moved by more than this: a hot flow
/// costs one shared-line write per millisecond, not one per packet.
const REFRESH_GRANULARITY_NS: u64 = 1_000_000;

/// Attempts of the CAS that advances a connection's state word before the
/// packet's update is dropped (only contended by packets of the same flow).
const STATE_CAS_ATTEMPTS: usize = 8;

/// Slots per connection at the maximum fill: two tuples, at most half full.
const SLOTS_PER_CONNECTION: usize = 4;

/// The connection tracker. See the [module documentation](super).
pub struct Conntrack {
    slots: SlotTable<W>,
    len: AtomicUsize,
    capacity: usize,
    timeouts: TimeoutsNs,
}

/// An original slot decoded.
#[derive(Clone, Copy, Debug)]
struct Entry {
    original: FlowKey,
    reply: FlowKey,
    meta: CtMeta,
    reply_slot: usize,
    last_seen: u64,
    state_word: u64,
}

impl Entry {
    fn decode(w: &[u64; W]) -> Entry {
        Entry {
            original: FlowKey::from_words(w[0], w[1]),
            reply: FlowKey::from_words(w[W_REPLY0], w[W_REPLY1]),
            meta: CtMeta {
                flags: (w[W_FLAGS_PARTNER] >> 48) as u16,
                service_port: (w[W_META] >> 32) as u32,
                policy_generation: w[W_META] as u32,
            },
            reply_slot: (w[W_FLAGS_PARTNER] as u32) as usize,
            last_seen: w[W_LAST_SEEN],
            state_word: w[W_STATE],
        }
    }

    fn bits(&self) -> u32 {
        self.state_word as u32
    }
}

fn state_word(generation: u32, bits: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(bits)
}

fn origin_word(orig_slot: usize, generation: u32) -> u64 {
    ((orig_slot as u64) << 32) | u64::from(generation)
}

/// Why [`Conntrack::insert`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InsertError {
    /// A probe window had no empty slot.
    Full,
    /// Another slot holds the original tuple.
    OriginalTaken,
    /// Another slot holds the reply tuple.
    ReplyTaken,
    /// A slot that may hold one of the tuples kept changing under us.
    Contended,
}

/// A connection found by one of its tuples.
#[derive(Clone, Copy, Debug)]
struct Found {
    orig_slot: usize,
    /// Control word of the original slot when it was read.
    ctrl: Ctrl,
    entry: Entry,
    direction: Direction,
}

impl Conntrack {
    /// An empty table for `cfg.capacity` connections. Allocates all memory
    /// now; nothing allocates later.
    pub fn new(cfg: CtConfig) -> Self {
        let capacity = cfg.capacity.clamp(1, CtConfig::MAX_CAPACITY);
        Conntrack {
            slots: SlotTable::new(capacity * SLOTS_PER_CONNECTION, cfg.hash_seed),
            len: AtomicUsize::new(0),
            capacity,
            timeouts: TimeoutsNs::from(&cfg.timeouts),
        }
    }

    /// Connections tracked, plus commits in progress. At most
    /// [`Conntrack::capacity`].
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of connections.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots allocated (each tuple takes one).
    pub fn slots(&self) -> usize {
        self.slots.slots()
    }

    /// The connection `key` belongs to, in either direction, for a packet
    /// seen at `now_ns` with TCP flags `tcp_flags` (ignored for other
    /// protocols). Refreshes the entry's idle timer and advances its state.
    /// Expired entries are misses.
    pub fn lookup(&self, key: &FlowKey, now_ns: u64, tcp_flags: u8) -> Option<CtHit> {
        self.lookup_handle(key, now_ns, tcp_flags)
            .map(|(hit, _)| hit)
    }

    /// [`Conntrack::lookup`], plus a handle that [`Conntrack::refresh`]
    /// accepts for later packets of the same flow (same tuple, so same
    /// direction).
    pub fn lookup_handle(
        &self,
        key: &FlowKey,
        now_ns: u64,
        tcp_flags: u8,
    ) -> Option<(CtHit, CtHandle)> {
        let found = self.find(key)?;
        if self.is_expired(&found.entry, now_ns) {
            return None;
        }
        let handle = CtHandle {
            slot: u32::try_from(found.orig_slot).ok()?,
            version: found.ctrl.version(),
            proto: found.entry.original.proto,
            direction: found.direction,
        };
        Some((self.touch(&found, now_ns, tcp_flags), handle))
    }

    /// What [`Conntrack::lookup`] does for a packet of the flow `handle` came
    /// from, without hashing, probing or decoding tuples: true when the
    /// connection is still live (same occupancy of its slot, so same tuples
    /// and translation as when the handle was taken) and not expired; then
    /// its idle timer is refreshed and its state advanced with `tcp_flags`
    /// exactly as a lookup would. False means "no longer known here": the
    /// caller does a full lookup.
    ///
    /// Reads the control word, then the two in-place words, then re-reads
    /// the control word (the seqlock of the module documentation): equal
    /// versions prove both words belong to this occupancy.
    #[inline]
    pub fn refresh(&self, handle: &CtHandle, now_ns: u64, tcp_flags: u8) -> bool {
        let idx = handle.slot as usize;
        let Some(ctrl) = self.slots.ctrl(idx) else {
            return false;
        };
        if !ctrl.is_live() || ctrl.version() != handle.version || ctrl.kind() != KIND_ORIG {
            return false;
        }
        let (Some(last), Some(state)) = (
            self.slots.word(idx, W_LAST_SEEN),
            self.slots.word(idx, W_STATE),
        ) else {
            return false;
        };
        let last_seen = last.load(Ordering::Relaxed);
        let state_word = state.load(Ordering::Relaxed);
        if !self.slots.still(idx, ctrl) {
            return false;
        }
        let proto = handle.proto;
        let st = state::state_of(proto, state_word as u32);
        if now_ns.saturating_sub(last_seen) >= self.timeouts.get(proto, st) {
            return false;
        }
        if now_ns > last_seen.saturating_add(REFRESH_GRANULARITY_NS) {
            last.fetch_max(now_ns, Ordering::Relaxed);
        }
        // Most packets do not change the state (UDP after the first reply,
        // TCP data): then `advance_state` would return without a write.
        let bits = state_word as u32;
        if state::advance(proto, bits, handle.direction, tcp_flags) != bits {
            advance_state(
                state,
                ctrl.generation(),
                state_word,
                proto,
                handle.direction,
                tcp_flags,
            );
        }
        true
    }

    /// Creates a connection. `original` is the tuple of the packet as it
    /// arrived, `reply` the tuple its answers will carry (after NAT). On
    /// success the returned hit has direction [`Direction::Original`].
    ///
    /// Expired connections holding either tuple are reclaimed. Fails with
    /// [`CommitError::Exists`] when `original` is already tracked (by either
    /// tuple), [`CommitError::ReplyTupleInUse`] when `reply` is,
    /// [`CommitError::Full`] at capacity or when a probe window is full,
    /// [`CommitError::Busy`] when losing a race with another writer of the
    /// same tuple.
    pub fn commit(
        &self,
        original: FlowKey,
        reply: FlowKey,
        meta: CtMeta,
        now_ns: u64,
        tcp_flags: u8,
    ) -> Result<CtHit, CommitError> {
        if original == reply || original.proto != reply.proto {
            return Err(CommitError::InvalidTuples);
        }
        if let Some(found) = self.find(&original) {
            if !self.is_expired(&found.entry, now_ns) {
                return Err(CommitError::Exists(self.touch(&found, now_ns, tcp_flags)));
            }
            self.remove_found(&found, Some(now_ns));
        }
        if let Some(found) = self.find(&reply) {
            if !self.is_expired(&found.entry, now_ns) {
                if found.entry.original == original {
                    // Committed by another worker since our first look.
                    let own = Found {
                        direction: Direction::Original,
                        ..found
                    };
                    return Err(CommitError::Exists(self.touch(&own, now_ns, tcp_flags)));
                }
                return Err(CommitError::ReplyTupleInUse);
            }
            self.remove_found(&found, Some(now_ns));
        }
        self.reserve()?;
        let result = self.insert(original, reply, meta, now_ns, tcp_flags);
        if result.is_err() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        result.map_err(|e| match e {
            InsertError::Full => CommitError::Full,
            InsertError::ReplyTaken => CommitError::ReplyTupleInUse,
            InsertError::Contended => CommitError::Busy,
            // Lost a race on the original tuple: hand back the winner if it
            // is visible already.
            InsertError::OriginalTaken => self
                .lookup(&original, now_ns, tcp_flags)
                .map_or(CommitError::Busy, CommitError::Exists),
        })
    }

    /// Removes the connection whose original tuple is `original`. False if
    /// there is none (a reply tuple does not count) or another thread is
    /// removing it at this moment.
    pub fn remove(&self, original: &FlowKey) -> bool {
        match self.find(original) {
            Some(found) if found.direction == Direction::Original => {
                self.remove_found(&found, None)
            }
            _ => false,
        }
    }

    /// One step of the incremental sweep: examines the next `budget_slots`
    /// slots (wrapping around the table) and frees the connections expired
    /// at `now_ns`. Never waits: an entry another thread holds is left for
    /// the next pass. Concurrent calls sweep disjoint ranges.
    pub fn gc(&self, now_ns: u64, budget_slots: usize) -> GcProgress {
        let range = self.slots.gc_range(budget_slots);
        let mut freed = 0;
        for i in 0..range.len {
            let idx = self.slots.wrap(range.start.wrapping_add(i));
            let Some(found) = self.read_original(idx) else {
                continue;
            };
            if self.is_expired(&found.entry, now_ns) && self.remove_found(&found, Some(now_ns)) {
                freed += 1;
            }
        }
        GcProgress {
            examined: range.len,
            freed,
            pass_complete: range.pass_complete,
        }
    }

    /// Removes every connection for which `pred` is true (e.g. UDP entries
    /// whose backend went away, connections a policy change revoked) and
    /// returns how many. Walks the whole table; meant for the control
    /// thread, not the packet path.
    pub fn flush_matching(&self, pred: impl Fn(&CtEntryView) -> bool) -> usize {
        (0..self.slots.slots())
            .filter_map(|idx| self.read_original(idx))
            .filter(|found| pred(&self.view(&found.entry)))
            .filter(|found| self.remove_found(found, None))
            .count()
    }

    /// A snapshot of each connection (each entry consistent on its own; the
    /// walk is not atomic with respect to concurrent changes). Includes
    /// expired entries GC has not freed yet; see [`CtEntryView::is_expired`].
    pub fn iter(&self) -> impl Iterator<Item = CtEntryView> + '_ {
        (0..self.slots.slots())
            .filter_map(|idx| self.read_original(idx))
            .map(|found| self.view(&found.entry))
    }

    // ---- internals -------------------------------------------------------

    fn view(&self, e: &Entry) -> CtEntryView {
        let state = state::state_of(e.original.proto, e.bits());
        CtEntryView {
            original: e.original,
            reply: e.reply,
            meta: e.meta,
            state,
            last_seen_ns: e.last_seen,
            timeout_ns: self.timeouts.get(e.original.proto, state),
        }
    }

    fn is_expired(&self, e: &Entry, now_ns: u64) -> bool {
        let state = state::state_of(e.original.proto, e.bits());
        now_ns.saturating_sub(e.last_seen) >= self.timeouts.get(e.original.proto, state)
    }

    /// Takes one unit of capacity; never lets `len` exceed it.
    fn reserve(&self) -> Result<(), CommitError> {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| CommitError::Full)
    }

    /// The live original slot `idx`, if it holds one.
    fn read_original(&self, idx: usize) -> Option<Found> {
        let snap = self.slots.read_live(idx)?;
        (snap.ctrl.kind() == KIND_ORIG).then(|| Found {
            orig_slot: idx,
            ctrl: snap.ctrl,
            entry: Entry::decode(&snap.words),
            direction: Direction::Original,
        })
    }

    /// The live connection that `key` belongs to, expired or not.
    fn find(&self, key: &FlowKey) -> Option<Found> {
        let words = key.to_words();
        let h = self.slots.hash(words);
        self.slots
            .find_live(words, h)
            .find_map(|(idx, snap)| match snap.ctrl.kind() {
                KIND_ORIG => Some(Found {
                    orig_slot: idx,
                    ctrl: snap.ctrl,
                    entry: Entry::decode(&snap.words),
                    direction: Direction::Original,
                }),
                KIND_REPLY => self.follow(&snap, words),
                _ => None,
            })
    }

    /// The connection a reply slot points at, if it is still the one that
    /// owns the reply tuple `words`.
    fn follow(&self, reply: &Snapshot<W>, words: [u64; 2]) -> Option<Found> {
        let origin = reply.words[W_ORIGIN];
        let orig_slot = (origin >> 32) as usize;
        let generation = origin as u32;
        let snap = self.slots.read_live(orig_slot)?;
        let ok = snap.ctrl.kind() == KIND_ORIG
            && snap.ctrl.generation() == generation
            && snap.words[W_REPLY0] == words[0]
            && snap.words[W_REPLY1] == words[1]
            && snap.words[0] == reply.words[W_ORIGINAL0]
            && snap.words[1] == reply.words[W_ORIGINAL1];
        ok.then(|| Found {
            orig_slot,
            ctrl: snap.ctrl,
            entry: Entry::decode(&snap.words),
            direction: Direction::Reply,
        })
    }

    /// Applies one packet to a found connection: refreshes last-seen,
    /// advances the state, and returns the hit.
    fn touch(&self, found: &Found, now_ns: u64, tcp_flags: u8) -> CtHit {
        let e = &found.entry;
        if now_ns > e.last_seen.saturating_add(REFRESH_GRANULARITY_NS) {
            if let Some(w) = self.slots.word(found.orig_slot, W_LAST_SEEN) {
                w.fetch_max(now_ns, Ordering::Relaxed);
            }
        }
        let proto = e.original.proto;
        let bits = match self.slots.word(found.orig_slot, W_STATE) {
            Some(word) => advance_state(
                word,
                found.ctrl.generation(),
                e.state_word,
                proto,
                found.direction,
                tcp_flags,
            ),
            None => e.bits(),
        };
        CtHit {
            direction: found.direction,
            original: e.original,
            reply: e.reply,
            meta: e.meta,
            state: state::state_of(proto, bits),
        }
    }

    /// Removes a found connection: locks its original slot (exact control
    /// word, so a reused slot is never touched), frees the reply slot, then
    /// the original. With `expired_at`, re-checks expiry under the lock and
    /// restores the entry if a packet refreshed it. False if the entry was
    /// not removed by this call.
    fn remove_found(&self, found: &Found, expired_at: Option<u64>) -> bool {
        if found.ctrl.state() != SlotState::Occupied {
            // Locked: its owner is removing or examining it.
            return false;
        }
        let idx = found.orig_slot;
        let Some(locked) = self.slots.transition(idx, found.ctrl, SlotState::Locked) else {
            return false;
        };
        if let Some(now_ns) = expired_at {
            let mut current = found.entry;
            current.last_seen = self
                .slots
                .word(idx, W_LAST_SEEN)
                .map_or(current.last_seen, |w| w.load(Ordering::SeqCst));
            current.state_word = self
                .slots
                .word(idx, W_STATE)
                .map_or(current.state_word, |w| w.load(Ordering::SeqCst));
            if !self.is_expired(&current, now_ns) {
                self.slots.transition(idx, locked, SlotState::Occupied);
                return false;
            }
        }
        self.free_reply_slot(idx, locked, &found.entry);
        self.slots.transition(idx, locked, SlotState::Empty);
        self.len.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Frees the reply slot of the connection in (locked) original slot
    /// `orig_slot`, after checking that it still points there.
    fn free_reply_slot(&self, orig_slot: usize, orig_ctrl: Ctrl, e: &Entry) {
        let Some(snap) = self.slots.read_live(e.reply_slot) else {
            return;
        };
        let reply = e.reply.to_words();
        let ours = snap.ctrl.kind() == KIND_REPLY
            && snap.ctrl.state() == SlotState::Occupied
            && snap.words[0] == reply[0]
            && snap.words[1] == reply[1]
            && snap.words[W_ORIGIN] == origin_word(orig_slot, orig_ctrl.generation());
        if ours {
            self.slots
                .transition(e.reply_slot, snap.ctrl, SlotState::Empty);
        }
    }

    /// Claims, fills and publishes the two slots of a new connection. The
    /// caller holds one unit of capacity.
    fn insert(
        &self,
        original: FlowKey,
        reply: FlowKey,
        meta: CtMeta,
        now_ns: u64,
        tcp_flags: u8,
    ) -> Result<CtHit, InsertError> {
        let okey = original.to_words();
        let rkey = reply.to_words();
        let oh = self.slots.hash(okey);
        let rh = self.slots.hash(rkey);
        let (oslot, octrl) = self.slots.claim(oh, KIND_ORIG).ok_or(InsertError::Full)?;
        let Some((rslot, rctrl)) = self.slots.claim(rh, KIND_REPLY) else {
            self.slots.transition(oslot, octrl, SlotState::Empty);
            return Err(InsertError::Full);
        };
        let generation = octrl.generation();
        let proto = original.proto;
        let bits = state::initial_bits(proto, tcp_flags);
        self.slots.write(
            oslot,
            &[
                okey[0],
                okey[1],
                rkey[0],
                rkey[1],
                (u64::from(meta.service_port) << 32) | u64::from(meta.policy_generation),
                (u64::from(meta.flags) << 48) | (rslot as u64 & 0xffff_ffff),
                now_ns,
                state_word(generation, bits),
            ],
        );
        self.slots.write(
            rslot,
            &[
                rkey[0],
                rkey[1],
                origin_word(oslot, generation),
                okey[0],
                okey[1],
                0,
                0,
                0,
            ],
        );
        // Only we move slots we claimed, so these CASes cannot fail; if they
        // did, the slots are released where they are and nothing leaks.
        let opend = self.slots.transition(oslot, octrl, SlotState::Pending);
        let rpend = self.slots.transition(rslot, rctrl, SlotState::Pending);
        let (Some(opend), Some(rpend)) = (opend, rpend) else {
            self.slots
                .transition(oslot, opend.unwrap_or(octrl), SlotState::Empty);
            self.slots
                .transition(rslot, rpend.unwrap_or(rctrl), SlotState::Empty);
            return Err(InsertError::OriginalTaken);
        };
        let orig_rival = self.slots.rival(okey, oh, oslot, rslot);
        let reply_rival = self.slots.rival(rkey, rh, rslot, oslot);
        let verdict = match (orig_rival, reply_rival) {
            (Rival::None, Rival::None) => None,
            (Rival::Found(_), _) => Some(InsertError::OriginalTaken),
            // The reply tuple may be taken by a concurrent commit of this
            // very connection: that is a lost race on the original tuple,
            // not a reason to pick another masquerade port.
            (_, Rival::Found(r)) if Self::rival_commits(&r, okey) => {
                Some(InsertError::OriginalTaken)
            }
            (_, Rival::Found(_)) => Some(InsertError::ReplyTaken),
            _ => Some(InsertError::Contended),
        };
        if let Some(err) = verdict {
            self.slots.transition(oslot, opend, SlotState::Empty);
            self.slots.transition(rslot, rpend, SlotState::Empty);
            return Err(err);
        }
        // Reply slot first: a live original always has a live reply slot.
        self.slots.transition(rslot, rpend, SlotState::Occupied);
        self.slots.transition(oslot, opend, SlotState::Occupied);
        Ok(CtHit {
            direction: Direction::Original,
            original,
            reply,
            meta,
            state: state::state_of(proto, bits),
        })
    }

    /// True when `reply`, a slot holding our reply tuple, is the reply slot
    /// of a connection (pending or live) whose original tuple is `okey`.
    fn rival_commits(reply: &Snapshot<W>, okey: [u64; 2]) -> bool {
        reply.ctrl.kind() == KIND_REPLY
            && reply.words[W_ORIGINAL0] == okey[0]
            && reply.words[W_ORIGINAL1] == okey[1]
    }

    /// The home slot of a tuple (tests aim tuples at one probe window).
    #[cfg(test)]
    pub(crate) fn home_slot(&self, key: &FlowKey) -> usize {
        self.slots.home(self.slots.hash(key.to_words()))
    }
}

/// Advances the state word of a connection with generation `generation`,
/// starting from the value `seen`. Returns the resulting state bits. Gives
/// up if the slot was reused, or after [`STATE_CAS_ATTEMPTS`] lost races
/// (then returning the last bits seen: another packet of the flow moved it).
#[inline]
fn advance_state(
    word: &AtomicU64,
    generation: u32,
    seen: u64,
    proto: u8,
    dir: Direction,
    tcp_flags: u8,
) -> u32 {
    let mut cur = seen;
    for _ in 0..STATE_CAS_ATTEMPTS {
        if (cur >> 32) as u32 != generation {
            // The slot was freed and reused: our connection is gone.
            return state::advance(proto, seen as u32, dir, tcp_flags);
        }
        let bits = cur as u32;
        let next = state::advance(proto, bits, dir, tcp_flags);
        if next == bits {
            return bits;
        }
        match word.compare_exchange_weak(
            cur,
            state_word(generation, next),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return next,
            Err(actual) => cur = actual,
        }
    }
    cur as u32
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("slots", &self.slots.slots())
            .finish()
    }
}

/// Compile-time check of the sharing contract.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Conntrack>();
};
