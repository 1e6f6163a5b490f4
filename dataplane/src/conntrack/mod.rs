//! Connection tracking: the shared, bounded, lock-free table of connections
//! and their NAT bindings, plus the Service session-affinity table.
//!
//! # Model
//!
//! As in netfilter's `tuplehash`, a connection has an **original** tuple (the
//! first packet as it arrived) and a **reply** tuple (what the answers look
//! like after NAT). Both are indexed in one key space, so a tuple belongs to
//! at most one connection, in one direction. NAT is implied by the pair
//! ([`CtHit::rewrite`]):
//!
//! ```text
//!   packet matches original:  src := reply.dst, dst := reply.src  (= reply reversed)
//!   packet matches reply:     src := orig.dst,  dst := orig.src   (= original reversed)
//! ```
//!
//! A connection without NAT has `reply == original.reversed()`. ICMP echo
//! flows carry the echo identifier in both `sport` and `dport` (the caller
//! puts it there and writes `sport` of the rewritten tuple back as the
//! identifier); nothing else is special about them.
//!
//! # Contract
//!
//! - [`Conntrack`] is `Send + Sync` and shared by all workers through an
//!   `Arc`. Whichever worker sees a packet of either direction finds the same
//!   entry.
//! - Capacity is fixed at construction: [`CtConfig::capacity`] connections.
//!   Memory is allocated once; nothing on the packet path allocates, locks,
//!   waits for another thread, or reads the clock (`now_ns` comes in; any
//!   monotonic nanosecond clock with an arbitrary epoch works, as long as
//!   every caller uses the same one). A commit beyond capacity, or whose
//!   probe windows are full, fails with [`CommitError::Full`]: the table
//!   never grows.
//! - An entry expires after its protocol/state idle timeout ([`Timeouts`]).
//!   Expired entries are invisible to [`Conntrack::lookup`] at once and are
//!   freed by [`Conntrack::gc`] (an incremental sweep with a budget, run by
//!   whoever owns housekeeping) or reclaimed by a commit that needs the
//!   tuple.
//! - [`Conntrack::len`] counts connections (not tuples), including commits
//!   in progress; it never exceeds [`Conntrack::capacity`].
//!
//! # Layout
//!
//! A slot table (private module `slots`) of `2^n >= 4 x capacity` slots,
//! so tuples fill at most half of it, with linear probing inside a window of
//! 32 slots. A connection takes two slots:
//!
//! ```text
//!  ORIGINAL slot (the entry)                     REPLY slot (an index entry)
//!  w0 orig src|dst     w1 orig ports|proto       w0 reply src|dst
//!  w2 reply src|dst    w3 reply ports|proto      w1 reply ports|proto
//!  w4 service_port|policy_generation             w2 original slot | its generation
//!  w5 meta flags | reply slot index              w3 orig src|dst  w4 orig ports|proto
//!  w6 last seen (ns)        } updated in place,
//!  w7 generation | state bits } one atomic word each
//! ```
//!
//! # Memory ordering
//!
//! Every slot has a control word (state, kind, hash tag, 40-bit version) that
//! acts as its seqlock; the private `slots` module documents its life cycle.
//! The argument:
//!
//! 1. **Claim.** A writer takes an `EMPTY` slot with a SeqCst CAS that also
//!    bumps the version. Only the winner writes the slot's data; a loser
//!    tries the next slot. Nobody ever waits for another writer.
//! 2. **Write.** The owner issues a Release fence, then stores the data words
//!    (Relaxed). **Read.** A reader loads the control word (Acquire), the
//!    data words (Relaxed), issues an Acquire fence and reloads the control
//!    word. If a data load saw a store made after some claim, the writer's
//!    Release fence synchronizes with the reader's Acquire fence, so the
//!    reload sees that claim's version bump (write-read coherence). Equal
//!    versions therefore prove a consistent snapshot; otherwise the reader
//!    retries a few times and then treats the slot as a miss. Readers never
//!    write the control word and never wait.
//! 3. **Publish.** The owner stores `PENDING` (SeqCst, hence Release): any
//!    reader whose Acquire load sees it also sees the data.
//! 4. **Uniqueness.** Two workers may commit the same tuple at once. After
//!    publishing `PENDING`, each inserter scans the tuple's probe window for
//!    another `PENDING`/`OCCUPIED`/`LOCKED` slot with the same key (SeqCst
//!    loads) and backs off if it finds one. Each store of `PENDING` precedes
//!    that inserter's scan in the single SeqCst order, so of two racing
//!    inserters at least one sees the other (the Dekker pattern): both may
//!    back off (reported as [`CommitError::Busy`]), both can never win.
//!    A reply slot also carries a copy of its original tuple, so an
//!    inserter that finds its reply tuple taken can tell a racing commit of
//!    the same connection (`Exists`/`Busy`) from a real masquerade
//!    collision (`ReplyTupleInUse`).
//!    Only then does the owner store `OCCUPIED`: reply slot first, original
//!    slot second, so a live original always has a live reply slot.
//! 5. **Remove.** GC, `remove` and `flush_matching` lock the original slot
//!    (`OCCUPIED -> LOCKED`, a CAS on the exact control word read, version
//!    included, so a stale decision cannot hit a reused slot). A locked entry
//!    stays visible to readers and to inserters, so removal opens no window
//!    in which a duplicate can be committed. The owner frees the reply slot,
//!    then the original (`-> EMPTY`, version kept; the next claim bumps it).
//!    GC re-reads the last-seen time under the lock and restores the entry
//!    if a packet refreshed it meanwhile.
//! 6. **In-place updates** need no seqlock because each is one atomic word:
//!    last-seen is raised with `fetch_max` (at most once per millisecond per
//!    entry, to keep the line clean on the hot path); the state word holds
//!    the slot generation next to the state bits and is advanced by CAS on
//!    the whole word, so an update that races with a removal and reuse of the
//!    slot fails instead of corrupting the new connection. A `fetch_max` that
//!    lands on a reused slot can only move the new entry's last-seen to
//!    "now", which it was created at anyway.
//! 7. **Reply slots** point at their original slot by index and generation;
//!    a reader follows the pointer and accepts the original only if it is
//!    live, has that generation and holds the same reply tuple.
//!
//! The TCP state machine and the timeouts are described in [`state`].

mod affinity;
mod slots;
pub mod state;
mod tracker;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use serde::Serialize;

pub use affinity::{AffinityError, AffinityTable};
pub use state::{tcp_flags, CtState, Timeouts};
pub use tracker::Conntrack;

/// A connection's 5-tuple as seen on the wire (ICMP echo: identifier in both
/// ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl FlowKey {
    /// The tuple of a packet going the other way.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The two table words of the tuple.
    #[inline]
    pub(crate) fn to_words(self) -> [u64; 2] {
        [
            (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst)),
            (u64::from(self.sport) << 48)
                | (u64::from(self.dport) << 32)
                | (u64::from(self.proto) << 24),
        ]
    }

    #[inline]
    pub(crate) fn from_words(w0: u64, w1: u64) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from((w0 >> 32) as u32),
            dst: Ipv4Addr::from(w0 as u32),
            sport: (w1 >> 48) as u16,
            dport: (w1 >> 32) as u16,
            proto: (w1 >> 24) as u8,
        }
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{} proto {}",
            self.src, self.sport, self.dst, self.dport, self.proto
        )
    }
}

/// Which tuple of a connection a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The direction of the connection's first packet.
    Original,
    /// The answers.
    Reply,
}

/// What the pipeline remembers about a connection besides its tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CtMeta {
    /// Bit set of `CtMeta::DNAT`, `CtMeta::SNAT`, ...
    pub flags: u16,
    /// The Service port (index into the generation's `ServiceTable::ports`)
    /// the connection was load-balanced through; [`CtMeta::NO_SERVICE`] if
    /// none.
    pub service_port: u32,
    /// The table generation whose policy admitted the connection.
    pub policy_generation: u32,
}

impl CtMeta {
    /// Destination rewritten (Service backend).
    pub const DNAT: u16 = 1 << 0;
    /// Source rewritten (masquerade to a node address).
    pub const SNAT: u16 = 1 << 1;
    /// A pod reached itself through a Service; SNATed so the reply returns.
    pub const HAIRPIN: u16 = 1 << 2;
    /// The first packet came in on the uplink.
    pub const FROM_UPLINK: u16 = 1 << 3;
    /// The original direction leaves through VXLAN to another node.
    pub const REMOTE: u16 = 1 << 4;
    /// `service_port` value meaning "not through a Service".
    pub const NO_SERVICE: u32 = u32::MAX;

    /// True when every bit of `flag` is set.
    #[inline]
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag == flag
    }
}

impl Default for CtMeta {
    /// No flags, no Service, generation 0.
    fn default() -> Self {
        CtMeta {
            flags: 0,
            service_port: CtMeta::NO_SERVICE,
            policy_generation: 0,
        }
    }
}

/// A packet's match in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtHit {
    /// Which tuple the packet matched.
    pub direction: Direction,
    pub original: FlowKey,
    pub reply: FlowKey,
    pub meta: CtMeta,
    /// The state after this packet.
    pub state: CtState,
}

impl CtHit {
    /// The packet's tuple after NAT for the hit's direction: the other
    /// tuple, reversed.
    #[inline]
    pub fn rewrite(&self) -> FlowKey {
        match self.direction {
            Direction::Original => self.reply.reversed(),
            Direction::Reply => self.original.reversed(),
        }
    }

    /// The tuple the packet matched.
    #[inline]
    pub fn matched(&self) -> FlowKey {
        match self.direction {
            Direction::Original => self.original,
            Direction::Reply => self.reply,
        }
    }
}

/// Where a connection lives in the table, for a worker that caches what it
/// did with the connection's packets ([`Conntrack::lookup_handle`],
/// [`Conntrack::refresh`]).
///
/// A handle names one *occupancy* of the connection's original slot (its
/// index and the slot version of that occupancy): a slot's tuples never
/// change while the version stays, and a removal followed by any reuse
/// bumps it. So a handle that still resolves means "the same connection,
/// with the same tuples and NAT, is still tracked" without hashing or
/// probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtHandle {
    pub(crate) slot: u32,
    pub(crate) version: u64,
    pub(crate) proto: u8,
    pub(crate) direction: Direction,
}

impl CtHandle {
    /// A handle that never resolves (a placeholder for empty cache slots).
    pub const NONE: CtHandle = CtHandle {
        slot: u32::MAX,
        version: u64::MAX,
        proto: 0,
        direction: Direction::Original,
    };
}

/// A snapshot of one connection, for tools and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CtEntryView {
    pub original: FlowKey,
    pub reply: FlowKey,
    pub meta: CtMeta,
    pub state: CtState,
    /// When a packet last matched (same clock as `now_ns`).
    pub last_seen_ns: u64,
    /// The idle timeout of the current state.
    pub timeout_ns: u64,
}

impl CtEntryView {
    /// When the entry expires unless a packet matches it before.
    pub fn expires_ns(&self) -> u64 {
        self.last_seen_ns.saturating_add(self.timeout_ns)
    }

    /// True when the entry is expired at `now_ns`.
    pub fn is_expired(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) >= self.timeout_ns
    }
}

/// Configuration of a [`Conntrack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtConfig {
    /// Maximum number of connections, clamped to `1..=`[`CtConfig::MAX_CAPACITY`].
    /// The table allocates the next power of two `>= 4 x capacity` slots of
    /// 72 bytes (a 64-byte entry line plus an 8-byte control word), e.g.
    /// 37.7 MB for the 131072 connections kube-proxy allows by default.
    pub capacity: usize,
    pub timeouts: Timeouts,
    /// Keys the tuple hash. `None` (the default) draws a random key, so that
    /// remote peers cannot aim many tuples at one probe window; tests fix it
    /// for reproducibility.
    pub hash_seed: Option<u64>,
}

impl CtConfig {
    /// The largest supported capacity (2^29 connections, 2^31 slots).
    pub const MAX_CAPACITY: usize = 1 << 29;

    /// `capacity` connections with default timeouts and a random hash key.
    pub fn new(capacity: usize) -> Self {
        CtConfig {
            capacity,
            timeouts: Timeouts::default(),
            hash_seed: None,
        }
    }
}

impl Default for CtConfig {
    /// 131072 connections, the floor of kube-proxy's `conntrack.min`.
    fn default() -> Self {
        CtConfig::new(131_072)
    }
}

/// Why a commit did not create a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The table holds `capacity` connections, or the probe window of one of
    /// the tuples is full. Nothing was inserted.
    #[error("conntrack table full")]
    Full,
    /// Another live connection uses the reply tuple: pick another
    /// masquerade port and retry.
    #[error("reply tuple already used by another connection")]
    ReplyTupleInUse,
    /// The original tuple is already tracked (typically committed by another
    /// worker a moment earlier): use this hit instead. The hit was updated
    /// with this packet, as a lookup would have.
    #[error("connection already tracked ({:?} match)", .0.direction)]
    Exists(CtHit),
    /// Another worker is committing or removing a connection with one of
    /// these tuples at this instant. Nothing was inserted; the next packet
    /// of the flow will find the winner or commit again.
    #[error("a concurrent update of the same tuple is in progress")]
    Busy,
    /// The original and reply tuples are equal or differ in protocol; no
    /// packet could tell the directions apart.
    #[error("invalid tuple pair: original and reply must differ and share the protocol")]
    InvalidTuples,
}

/// The result of one [`Conntrack::gc`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcProgress {
    /// Slots looked at.
    pub examined: usize,
    /// Entries freed.
    pub freed: usize,
    /// True when this call reached the end of the table, i.e. a full sweep
    /// ended (every slot was examined at least once since the previous one).
    pub pass_complete: bool,
}
