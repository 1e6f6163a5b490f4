//! The lock-free, fixed-capacity slot table under [`Conntrack`] and
//! [`AffinityTable`].
//!
//! [`Conntrack`]: super::Conntrack
//! [`AffinityTable`]: super::AffinityTable
//!
//! A `SlotTable<W>` is an open-addressing hash table of `2^n` slots with
//! linear probing inside a bounded window of [`PROBE_WINDOW`] slots. It is
//! allocated once and never grows. Each slot has
//!
//! - a **control word** (`AtomicU64`, kept in its own dense array so that a
//!   probe reads 8 slots per cache line):
//!
//!   ```text
//!    63                           24 23            8 7      3 2     0
//!   +-------------------------------+---------------+--------+-------+
//!   |        version (40 bits)      | hash tag (16) | kind(5)| state |
//!   +-------------------------------+---------------+--------+-------+
//!   ```
//!
//! - `W` **data words** (`AtomicU64`, one 64-byte aligned block per slot).
//!   Words 0 and 1 are the key; the rest belong to the user of the table.
//!
//! The control word is the slot's seqlock. Its `version` is bumped exactly
//! when a writer claims an empty slot, i.e. before any data word of the slot
//! changes, so "same version before and after reading the data" proves the
//! data words read belong together (see the module doc of
//! [`conntrack`](super) for the full ordering argument).
//!
//! Slot life cycle (only the owner of a `CLAIMED`, `PENDING` or `LOCKED`
//! slot moves it further; every move is one atomic CAS/store):
//!
//! ```text
//!          claim: CAS, version+1          publish              no rival
//!   EMPTY -----------------------> CLAIMED -------> PENDING ------------> OCCUPIED
//!     ^  ^                            |                |                   |    ^
//!     |  +---- abort -----------------+                |       lock: CAS   |    | restore
//!     |  +---- rival seen: back off -------------------+                   v    |
//!     +------------------------------- free -------------------------- LOCKED --+
//! ```
//!
//! Readers see `OCCUPIED` and `LOCKED` slots as live entries, skip the rest
//! and never write the control word. Writers never wait for one another: a
//! failed CAS means "somebody else owns this slot", and the writer moves on to
//! the next slot or reports that it is busy.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Slots probed for one key, starting at its home slot. Lookups of absent
/// keys read exactly this many control words (4 cache lines).
pub(crate) const PROBE_WINDOW: usize = 32;

/// Re-reads of one slot whose data changed under a reader before the reader
/// gives up on that slot (and treats it as a miss).
const READ_RETRIES: usize = 4;

/// The largest number of slots a table may have: slot indices are stored in
/// 32-bit fields.
pub(crate) const MAX_SLOTS: usize = 1 << 31;

/// Where a slot is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Free.
    Empty = 0,
    /// Owned by a writer that is filling the data words.
    Claimed = 1,
    /// Data complete; the owner is checking that no other slot holds the key.
    /// Invisible to lookups, visible to other inserters of the same key.
    Pending = 2,
    /// A live entry.
    Occupied = 3,
    /// A live entry owned by one writer that is examining, updating or
    /// removing it. Readers still see it.
    Locked = 4,
}

/// A decoded control word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ctrl(u64);

impl Ctrl {
    const STATE_MASK: u64 = 0b111;
    const KIND_SHIFT: u32 = 3;
    const KIND_MASK: u64 = 0b1_1111;
    const TAG_SHIFT: u32 = 8;
    const VERSION_SHIFT: u32 = 24;

    fn new(state: SlotState, kind: u8, tag: u16, version: u64) -> Ctrl {
        Ctrl(
            (state as u64)
                | ((u64::from(kind) & Self::KIND_MASK) << Self::KIND_SHIFT)
                | (u64::from(tag) << Self::TAG_SHIFT)
                | (version << Self::VERSION_SHIFT),
        )
    }

    pub(crate) fn state(self) -> SlotState {
        match self.0 & Self::STATE_MASK {
            1 => SlotState::Claimed,
            2 => SlotState::Pending,
            3 => SlotState::Occupied,
            4 => SlotState::Locked,
            // Only the five values above are ever stored.
            _ => SlotState::Empty,
        }
    }

    /// The user-defined kind of entry (conntrack: original or reply tuple).
    pub(crate) fn kind(self) -> u8 {
        ((self.0 >> Self::KIND_SHIFT) & Self::KIND_MASK) as u8
    }

    fn tag(self) -> u16 {
        (self.0 >> Self::TAG_SHIFT) as u16
    }

    /// Bumped on every claim; identifies one occupancy of the slot.
    pub(crate) fn version(self) -> u64 {
        self.0 >> Self::VERSION_SHIFT
    }

    /// The low 32 bits of the version, stored in entries that refer to this
    /// occupancy of the slot.
    pub(crate) fn generation(self) -> u32 {
        self.version() as u32
    }

    /// A live entry: lookups may return it.
    pub(crate) fn is_live(self) -> bool {
        matches!(self.state(), SlotState::Occupied | SlotState::Locked)
    }

    /// Data complete and stable: pending or live.
    pub(crate) fn is_settled(self) -> bool {
        matches!(
            self.state(),
            SlotState::Pending | SlotState::Occupied | SlotState::Locked
        )
    }

    fn with_state(self, state: SlotState) -> Ctrl {
        Ctrl((self.0 & !Self::STATE_MASK) | state as u64)
    }
}

/// The hash of a key: home slot and tag.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHash(u64);

impl KeyHash {
    fn tag(self) -> u16 {
        (self.0 >> 48) as u16
    }
}

/// A consistent copy of a slot's words, taken under its seqlock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot<const W: usize> {
    pub(crate) ctrl: Ctrl,
    pub(crate) words: [u64; W],
}

impl<const W: usize> Snapshot<W> {
    fn has_key(&self, key: [u64; 2]) -> bool {
        self.words.first() == Some(&key[0]) && self.words.get(1) == Some(&key[1])
    }
}

/// One slot's data words, on its own cache line(s).
#[repr(C, align(64))]
struct Data<const W: usize>([AtomicU64; W]);

/// Result of looking for another slot that holds a key being inserted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rival<const W: usize> {
    None,
    /// Another slot holds the key (pending or live); its snapshot.
    Found(Snapshot<W>),
    /// Another slot may hold the key but kept changing while read.
    Unreadable,
}

/// See the module documentation.
pub(crate) struct SlotTable<const W: usize> {
    ctrl: Box<[AtomicU64]>,
    data: Box<[Data<W>]>,
    mask: usize,
    seed: [u64; 3],
    /// Slots examined by all GC calls so far; the sweep position.
    gc_cursor: AtomicU64,
}

/// A range of slots handed to one GC call.
pub(crate) struct GcRange {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) pass_complete: bool,
}

impl<const W: usize> SlotTable<W> {
    /// A table of at least `min_slots` slots (rounded up to a power of two,
    /// at least [`PROBE_WINDOW`], at most [`MAX_SLOTS`]). `seed` keys the
    /// hash; `None` picks a random one so that remote peers cannot aim many
    /// flows at one probe window.
    pub(crate) fn new(min_slots: usize, seed: Option<u64>) -> Self {
        const { assert!(W >= 2, "words 0 and 1 are the key") };
        let slots = min_slots
            .clamp(PROBE_WINDOW, MAX_SLOTS)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SLOTS)
            .min(MAX_SLOTS);
        let seed = seed.unwrap_or_else(|| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(0x6b78_6470_6374);
            h.finish()
        });
        SlotTable {
            ctrl: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            data: (0..slots)
                .map(|_| Data(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            mask: slots - 1,
            seed: [
                splitmix(seed),
                splitmix(seed ^ 0x9e37_79b9_7f4a_7c15),
                splitmix(seed ^ 0xbf58_476d_1ce4_e5b9),
            ],
            gc_cursor: AtomicU64::new(0),
        }
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.mask + 1
    }

    /// Keyed hash of a two-word key (two folded 64x64->128 multiplies).
    pub(crate) fn hash(&self, key: [u64; 2]) -> KeyHash {
        let [s0, s1, s2] = self.seed;
        let h = fold_mul(key[0] ^ s0, 0x9e37_79b9_7f4a_7c15);
        let h = fold_mul(h ^ key[1] ^ s1, 0xd6e8_feb8_6659_fd93);
        KeyHash(fold_mul(h ^ s2, 0xa076_1d64_78bd_642f))
    }

    /// The probe window of a hash: `PROBE_WINDOW` consecutive slots,
    /// wrapping around.
    fn window(&self, h: KeyHash) -> impl Iterator<Item = usize> {
        let home = h.0 as usize;
        let mask = self.mask;
        (0..PROBE_WINDOW).map(move |i| home.wrapping_add(i) & mask)
    }

    /// The first slot of a hash's probe window.
    #[cfg(test)]
    pub(crate) fn home(&self, h: KeyHash) -> usize {
        h.0 as usize & self.mask
    }

    fn ctrl_at(&self, idx: usize) -> Option<&AtomicU64> {
        self.ctrl.get(idx)
    }

    /// Data word `i` of slot `idx`, for the single-word in-place updates an
    /// entry's user does outside the seqlock (timestamps, state bits).
    pub(crate) fn word(&self, idx: usize, i: usize) -> Option<&AtomicU64> {
        self.data.get(idx).and_then(|d| d.0.get(i))
    }

    /// The control word of slot `idx` (Acquire).
    pub(crate) fn ctrl(&self, idx: usize) -> Option<Ctrl> {
        self.ctrl_at(idx).map(|c| Ctrl(c.load(Ordering::Acquire)))
    }

    /// Seqlock read of slot `idx`, accepting it only while `accept` holds
    /// for its control word. `first` is a control word the caller has just
    /// loaded (Acquire or stronger), saving one load on the hot path.
    /// `None` when the slot is not acceptable or kept changing under us.
    fn read_from(
        &self,
        idx: usize,
        mut first: Ctrl,
        accept: impl Fn(Ctrl) -> bool,
    ) -> Option<Snapshot<W>> {
        let ctrl = self.ctrl_at(idx)?;
        let data = self.data.get(idx)?;
        for _ in 0..READ_RETRIES {
            if !accept(first) {
                return None;
            }
            let words: [u64; W] = std::array::from_fn(|i| data.0[i].load(Ordering::Relaxed));
            // Pairs with the Release fence in `write`: if any word above came
            // from a writer that claimed the slot after `first`, the re-read
            // below sees that claim's version.
            fence(Ordering::Acquire);
            let again = Ctrl(ctrl.load(Ordering::Relaxed));
            if again.version() == first.version() {
                return Some(Snapshot { ctrl: first, words });
            }
            first = Ctrl(ctrl.load(Ordering::Acquire));
        }
        None
    }

    /// The second half of a seqlock read the caller did by hand: after
    /// loading data words of slot `idx` (Relaxed) under the control word
    /// `first` (loaded Acquire), true when no claim happened since, i.e.
    /// the words belong to `first`'s occupancy.
    #[inline]
    pub(crate) fn still(&self, idx: usize, first: Ctrl) -> bool {
        // Pairs with the Release fence in `write`, as in `read_from`.
        fence(Ordering::Acquire);
        self.ctrl_at(idx)
            .is_some_and(|c| Ctrl(c.load(Ordering::Relaxed)).version() == first.version())
    }

    /// Seqlock read of slot `idx` if it holds a live entry.
    pub(crate) fn read_live(&self, idx: usize) -> Option<Snapshot<W>> {
        let first = self.ctrl(idx)?;
        self.read_from(idx, first, Ctrl::is_live)
    }

    /// Live entries whose key is `key`, in probe order, as (slot, snapshot).
    /// Slots that keep changing under the reader are skipped.
    pub(crate) fn find_live(
        &self,
        key: [u64; 2],
        h: KeyHash,
    ) -> impl Iterator<Item = (usize, Snapshot<W>)> + '_ {
        let tag = h.tag();
        self.window(h).filter_map(move |idx| {
            let c = Ctrl(self.ctrl_at(idx)?.load(Ordering::Acquire));
            if !c.is_live() || c.tag() != tag {
                return None;
            }
            let snap = self.read_from(idx, c, |c| c.is_live() && c.tag() == tag)?;
            snap.has_key(key).then_some((idx, snap))
        })
    }

    /// Claims an empty slot in the window of `h` for a new entry of `kind`.
    /// Returns the slot and its `CLAIMED` control word, or `None` when every
    /// slot of the window is taken (the table is full for this key).
    pub(crate) fn claim(&self, h: KeyHash, kind: u8) -> Option<(usize, Ctrl)> {
        let tag = h.tag();
        for idx in self.window(h) {
            let Some(ctrl) = self.ctrl_at(idx) else {
                continue;
            };
            let cur = Ctrl(ctrl.load(Ordering::Relaxed));
            if cur.state() != SlotState::Empty {
                continue;
            }
            let next = Ctrl::new(SlotState::Claimed, kind, tag, cur.version().wrapping_add(1));
            // A lost race just means another writer took this slot: try the
            // next one rather than waiting.
            if ctrl
                .compare_exchange(cur.0, next.0, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return Some((idx, next));
            }
        }
        None
    }

    /// Writes the data words of a slot the caller has claimed.
    pub(crate) fn write(&self, idx: usize, words: &[u64; W]) {
        let Some(data) = self.data.get(idx) else {
            return;
        };
        // Orders the claim (version bump) before every data store: a reader
        // that sees one of these stores and then fences (Acquire) must see
        // the new version. Seqlock writer side.
        fence(Ordering::Release);
        for (slot, w) in data.0.iter().zip(words) {
            slot.store(*w, Ordering::Relaxed);
        }
    }

    /// Moves slot `idx` from exactly `from` to `to` (SeqCst CAS). Returns
    /// the new control word, or `None` if the slot was not in `from`.
    pub(crate) fn transition(&self, idx: usize, from: Ctrl, to: SlotState) -> Option<Ctrl> {
        let ctrl = self.ctrl_at(idx)?;
        let next = if to == SlotState::Empty {
            // Keep the version so a later claim bumps it past every reader's.
            Ctrl::new(SlotState::Empty, 0, 0, from.version())
        } else {
            from.with_state(to)
        };
        ctrl.compare_exchange(from.0, next.0, Ordering::SeqCst, Ordering::Relaxed)
            .ok()
            .map(|_| next)
    }

    /// After publishing `PENDING` in slot `own` (and `other_own`), checks
    /// whether another slot holds `key` in a state that could become or is
    /// live. With every control-word write and these loads SeqCst, of two
    /// concurrent inserters of one key at least one sees the other (Dekker),
    /// so "back off when you see a rival" never lets both win.
    pub(crate) fn rival(
        &self,
        key: [u64; 2],
        h: KeyHash,
        own: usize,
        other_own: usize,
    ) -> Rival<W> {
        let tag = h.tag();
        let candidate = move |c: Ctrl| c.is_settled() && c.tag() == tag;
        for idx in self.window(h) {
            if idx == own || idx == other_own {
                continue;
            }
            let Some(ctrl) = self.ctrl_at(idx) else {
                continue;
            };
            let c = Ctrl(ctrl.load(Ordering::SeqCst));
            if !candidate(c) {
                continue;
            }
            match self.read_from(idx, c, candidate) {
                Some(snap) if snap.has_key(key) => return Rival::Found(snap),
                Some(_) => {}
                // Kept changing, or left the candidate states. Recheck the
                // state once: if it is still a candidate we cannot prove the
                // key differs, so be conservative.
                None => {
                    let c = Ctrl(ctrl.load(Ordering::SeqCst));
                    if candidate(c) {
                        match self.read_from(idx, c, candidate) {
                            Some(snap) if snap.has_key(key) => return Rival::Found(snap),
                            Some(_) => {}
                            None => return Rival::Unreadable,
                        }
                    }
                }
            }
        }
        Rival::None
    }

    /// Hands out the next `budget` slots of the incremental sweep. Disjoint
    /// between concurrent callers. `pass_complete` is true for the call whose
    /// range reaches the last slot of the table.
    pub(crate) fn gc_range(&self, budget: usize) -> GcRange {
        let slots = self.slots() as u64;
        let len = (budget as u64).min(slots);
        let start = self.gc_cursor.fetch_add(len, Ordering::Relaxed);
        let end = start.wrapping_add(len);
        GcRange {
            start: (start % slots) as usize,
            len: len as usize,
            // The range includes the table's last slot.
            pass_complete: len > 0 && end / slots != start / slots,
        }
    }

    /// Slot `start + i`, wrapping.
    pub(crate) fn wrap(&self, idx: usize) -> usize {
        idx & self.mask
    }
}

/// 64x64 -> 128 bit multiply folded to 64 bits.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// SplitMix64 finalizer: spreads one seed over independent-looking words.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_word_round_trips() {
        let c = Ctrl::new(SlotState::Locked, 17, 0xbeef, (1 << 40) - 1);
        assert_eq!(c.state(), SlotState::Locked);
        assert_eq!(c.kind(), 17);
        assert_eq!(c.tag(), 0xbeef);
        assert_eq!(c.version(), (1 << 40) - 1);
        assert_eq!(c.generation(), u32::MAX);
        assert!(c.is_live());
        assert!(!c.with_state(SlotState::Pending).is_live());
    }

    #[test]
    fn sizes_round_up_to_powers_of_two() {
        let t: SlotTable<2> = SlotTable::new(100, Some(1));
        assert_eq!(t.slots(), 128);
        let t: SlotTable<2> = SlotTable::new(0, Some(1));
        assert_eq!(t.slots(), PROBE_WINDOW);
        assert_eq!(std::mem::size_of::<Data<8>>(), 64);
    }

    #[test]
    fn claim_write_publish_find_free() {
        let t: SlotTable<3> = SlotTable::new(64, Some(7));
        let key = [0x0a00_0001_0a00_0002, 42];
        let h = t.hash(key);
        assert_eq!(t.find_live(key, h).count(), 0);
        let (idx, c) = t.claim(h, 1).expect("empty table has room");
        assert_eq!(c.state(), SlotState::Claimed);
        t.write(idx, &[key[0], key[1], 99]);
        // Claimed and pending entries are invisible to lookups.
        assert_eq!(t.find_live(key, h).count(), 0);
        let c = t.transition(idx, c, SlotState::Pending).expect("owner");
        assert_eq!(t.find_live(key, h).count(), 0);
        assert!(matches!(t.rival(key, h, idx, idx), Rival::None));
        let c = t.transition(idx, c, SlotState::Occupied).expect("owner");
        let found: Vec<_> = t.find_live(key, h).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, idx);
        assert_eq!(found[0].1.words, [key[0], key[1], 99]);
        assert_eq!(found[0].1.ctrl.kind(), 1);
        // A second inserter of the same key sees the first as a rival.
        let (idx2, c2) = t.claim(h, 1).expect("room");
        assert_ne!(idx2, idx);
        t.write(idx2, &[key[0], key[1], 5]);
        let c2 = t.transition(idx2, c2, SlotState::Pending).expect("owner");
        assert!(matches!(t.rival(key, h, idx2, idx2), Rival::Found(s) if s.words[2] == 99));
        // ... and the first, had it still been pending, would see the second.
        assert!(matches!(t.rival(key, h, idx, idx), Rival::Found(s) if s.words[2] == 5));
        t.transition(idx2, c2, SlotState::Empty).expect("owner");
        // Lock, stale-CAS refusal, free.
        let l = t.transition(idx, c, SlotState::Locked).expect("occupied");
        assert!(t.transition(idx, c, SlotState::Locked).is_none());
        assert_eq!(
            t.find_live(key, h).count(),
            1,
            "locked entries stay visible"
        );
        t.transition(idx, l, SlotState::Empty).expect("owner");
        assert_eq!(t.find_live(key, h).count(), 0);
        // Reuse bumps the version.
        let (idx3, c3) = t.claim(h, 0).expect("room");
        assert_eq!(idx3, idx);
        assert_eq!(c3.version(), c.version() + 1);
    }

    #[test]
    fn window_is_bounded() {
        let t: SlotTable<2> = SlotTable::new(1024, Some(3));
        let key = [1, 2];
        let h = t.hash(key);
        for _ in 0..PROBE_WINDOW {
            assert!(t.claim(h, 0).is_some());
        }
        assert!(t.claim(h, 0).is_none(), "no probing past the window");
    }

    #[test]
    fn gc_ranges_cover_the_table_once_per_pass() {
        let t: SlotTable<2> = SlotTable::new(64, Some(3));
        let mut seen = vec![0u32; 64];
        let mut completions = 0;
        for _ in 0..20 {
            let r = t.gc_range(10);
            for i in 0..r.len {
                seen[t.wrap(r.start + i)] += 1;
            }
            completions += usize::from(r.pass_complete);
        }
        // 200 slots handed out = 3 full passes + 8.
        assert_eq!(completions, 3);
        assert!(seen.iter().all(|&n| n == 3 || n == 4));
        assert!(t.gc_range(0).len == 0 && !t.gc_range(0).pass_complete);
    }

    #[test]
    fn hash_depends_on_both_words_and_seed() {
        let a: SlotTable<2> = SlotTable::new(64, Some(1));
        let b: SlotTable<2> = SlotTable::new(64, Some(2));
        let h = |t: &SlotTable<2>, k| t.hash(k).0;
        assert_ne!(h(&a, [1, 2]), h(&a, [1, 3]));
        assert_ne!(h(&a, [1, 2]), h(&a, [2, 2]));
        assert_ne!(h(&a, [1, 2]), h(&b, [1, 2]));
        assert_ne!(h(&a, [0, 0]), 0);
    }
}
