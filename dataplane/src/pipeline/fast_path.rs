//! The established-flow fast path: a per-worker, direct-mapped cache of
//! what the full pipeline decided for a flow's packets, and the short path
//! that applies it.
//!
//! Contract: a cached action is used only when it is certainly what the
//! full pipeline would do again —
//! - same table generation (any publish invalidates every entry: routes,
//!   neighbours, pods and policy are all in the `TableSet`);
//! - same ingress, 5-tuple and Ethernet source (anti-spoof passed for
//!   them); for VXLAN from the uplink also the same outer source address
//!   (the VTEP check), and the packet passes every per-packet check of
//!   decapsulation (UDP length, I flag, VNI, inner Ethertype) again;
//! - conntrack still holds the same connection (its [`CtHandle`] resolves:
//!   same slot occupancy, hence same tuples and translation) and it has not
//!   expired; the lookup's side effects (idle timer, TCP state) happen as
//!   for a full lookup;
//! - the packet is an unfragmented TCP/UDP packet without IP options
//!   ([`parse_common`]) with TTL > 1, and fits the MTU after encapsulation
//!   and the frame's headroom.
//!
//! Anything else takes the full path, which parses the packet again and
//! refills the entry (after a conntrack hit). Traced packets always take
//! the full path so every stage is recorded. Outputs are byte-identical to
//! the full path's, except the outer IPv4 identification of VXLAN packets,
//! a per-worker counter either way.

use std::net::Ipv4Addr;

use crate::conntrack::{CtHandle, FlowKey};
use crate::tables::{MacAddr, TableSet};
use crate::wire::checksum;
use crate::wire::{ip_proto, vxlan, OUTER_OVERHEAD};
use crate::DropReason;

use super::parse::{parse_common, Headers};
use super::{l2, nat, Egress, Frame, Ingress, Verdict};

const ETH_LEN: usize = 14;
/// The IPv4 header of a packet from [`parse_common`] at `ETH_LEN`.
const IP: usize = ETH_LEN;
/// Its transport header (no IP options).
const L4: usize = IP + 20;
/// Entries per worker (a power of two).
const SLOTS: usize = 4096;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();
/// `FlowId` kinds (low bits of word 1; 0 marks an empty entry).
const KIND_POD: u64 = 1;
const KIND_UPLINK: u64 = 2;
const KIND_VXLAN: u64 = 3;

/// What identifies a flow's packets to the cache, packed into four words
/// compared at once: the 5-tuple as received, the ingress (with the pod
/// veth's ifindex or, for VXLAN, the outer source address) and the Ethernet
/// source as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowId([u64; 4]);

impl FlowId {
    /// The id of a packet with tuple `key` (for VXLAN: the inner one) that
    /// came in on `ingress` from `l2_src`, decapsulated from `vxlan_src`.
    #[inline]
    pub fn new(
        key: &FlowKey,
        ingress: Ingress,
        l2_src: MacAddr,
        vxlan_src: Option<Ipv4Addr>,
    ) -> FlowId {
        let m = l2_src.0;
        let mac = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
        FlowId::from_parts(key, ingress, mac, vxlan_src)
    }

    /// [`FlowId::new`] with the Ethernet source as a little-endian word
    /// (bytes 0..6, as loaded straight from the frame).
    #[inline(always)]
    fn from_parts(
        key: &FlowKey,
        ingress: Ingress,
        mac: u64,
        vxlan_src: Option<Ipv4Addr>,
    ) -> FlowId {
        let (kind, w3) = match (ingress, vxlan_src) {
            (Ingress::Pod { ifindex }, _) => (KIND_POD, u64::from(ifindex)),
            (Ingress::Uplink, None) => (KIND_UPLINK, 0),
            (Ingress::Uplink, Some(vtep)) => (KIND_VXLAN, u64::from(u32::from(vtep))),
        };
        let [w0, w1] = key.to_words();
        FlowId([w0, w1 | kind, mac, w3])
    }

    /// Direct-mapped slot: a multiply-shift of the folded words (the cache
    /// only ever misses on a collision, so an unkeyed hash is enough).
    #[inline]
    fn slot(&self) -> usize {
        let [w0, w1, w2, w3] = self.0;
        let x = w0 ^ w1.rotate_left(21) ^ w2.rotate_left(42) ^ w3.rotate_left(11);
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOT_BITS)) as usize
    }
}

/// The 50 outer bytes of a VXLAN flow and the ones-complement sum of the
/// outer IPv4 header words that do not change per packet.
#[derive(Clone, Copy)]
struct Outer {
    bytes: [u8; OUTER_OVERHEAD],
    /// Sum of the outer IPv4 header without total length, identification
    /// and checksum.
    ip_sum: u32,
}

/// One cached action.
#[derive(Clone, Copy)]
pub struct Entry {
    id: FlowId,
    generation: u64,
    ct: CtHandle,
    /// Largest IP packet the action is valid for (the uplink MTU minus the
    /// VXLAN overhead when encapsulating).
    max_ip_len: usize,
    /// Addresses (source, destination) and ports after translation, as
    /// written on the wire.
    addrs: [u8; 8],
    ports: [u8; 4],
    /// RFC 1624 delta of the IPv4 header checksum, translation plus TTL
    /// decrement, reduced by [`nat::fold_delta`].
    ip_delta: u32,
    /// RFC 1624 delta of the TCP/UDP checksum (pseudo header and ports),
    /// reduced the same way.
    l4_delta: u32,
    /// Ethernet destination and source written before the IP packet.
    l2: [u8; 12],
    egress: Egress,
    outer: Option<Outer>,
}

impl Entry {
    const EMPTY: Entry = Entry {
        id: FlowId([0; 4]),
        generation: 0,
        ct: CtHandle::NONE,
        max_ip_len: 0,
        addrs: [0; 8],
        ports: [0; 4],
        ip_delta: 0,
        l4_delta: 0,
        l2: [0; 12],
        egress: Egress::Uplink {
            encapsulated: false,
        },
        outer: None,
    };
}

/// The per-worker cache.
pub struct FlowCache {
    entries: Box<[Entry]>,
    pub hits: u64,
    pub misses: u64,
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache {
            entries: vec![Entry::EMPTY; SLOTS].into_boxed_slice(),
            hits: 0,
            misses: 0,
        }
    }
}

/// Whether the full path may record an action for a packet.
pub fn eligible(h: &Headers) -> bool {
    matches!(h.proto, ip_proto::TCP | ip_proto::UDP) && !h.fragment && h.ttl > 1
}

/// A packet the fast path understood: its (inner) headers, where the inner
/// frame starts (0 unless decapsulated) and its cache id.
pub struct Candidate {
    pub h: Headers,
    pub inner_start: usize,
    pub id: FlowId,
}

/// Parse `data` for the fast path: Ethernet + IPv4 + TCP/UDP at fixed
/// offsets, and from the uplink VXLAN addressed to this node with the same
/// checks [`l2::decap`] makes per packet. `None` for anything else.
#[inline]
pub fn candidate(t: &TableSet, data: &[u8], ingress: Ingress) -> Option<Candidate> {
    let eth: &[u8; ETH_LEN] = data.get(..ETH_LEN)?.try_into().ok()?;
    if eth[12..14] != [0x08, 0x00] {
        return None;
    }
    // Bytes 6..12 (the source) in the low 48 bits.
    let mac = u64::from_le_bytes([
        eth[4], eth[5], eth[6], eth[7], eth[8], eth[9], eth[10], eth[11],
    ]) >> 16;
    let outer = parse_common(data, ETH_LEN)?;
    let (h, inner_start, vxlan_src) = if ingress == Ingress::Uplink && l2::is_vxlan(t, &outer) {
        // `parse_common` checked the UDP length against the IP packet.
        let udp_end = outer.l4_off
            + usize::from(u16::from_be_bytes([
                *data.get(outer.l4_off + 4)?,
                *data.get(outer.l4_off + 5)?,
            ]));
        let vx = data.get(outer.l4_off + 8..outer.l4_off + 16)?;
        let inner_start = outer.l4_off + 16;
        if inner_start + ETH_LEN > udp_end
            || vx[0] & vxlan::FLAG_I == 0
            || u32::from_be_bytes([0, vx[4], vx[5], vx[6]]) != t.node.vxlan.vni
        {
            return None;
        }
        let inner = data.get(inner_start..udp_end)?;
        if inner.get(12..14)? != [0x08, 0x00] {
            return None;
        }
        (parse_common(inner, ETH_LEN)?, inner_start, Some(outer.src))
    } else {
        (outer, 0, None)
    };
    if h.ttl <= 1 {
        return None;
    }
    let key = FlowKey {
        src: h.src,
        dst: h.dst,
        sport: h.sport,
        dport: h.dport,
        proto: h.proto,
    };
    Some(Candidate {
        id: FlowId::from_parts(&key, ingress, mac, vxlan_src),
        h,
        inner_start,
    })
}

impl FlowCache {
    /// The cached action for `id` under `t`'s generation; counts a miss.
    #[inline]
    pub fn get(&mut self, t: &TableSet, id: &FlowId) -> Option<&Entry> {
        match self.entries.get(id.slot()) {
            Some(e) if e.id == *id && e.generation == t.generation => Some(e),
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remember what the full path did with an established packet whose
    /// tuple `from` conntrack (`ct`) translated to `to`: `frame` is the
    /// packet as it leaves.
    #[expect(
        clippy::too_many_arguments,
        reason = "the facts of one full-path decision, used once"
    )]
    pub fn record(
        &mut self,
        t: &TableSet,
        id: FlowId,
        ct: CtHandle,
        from: &FlowKey,
        to: &FlowKey,
        verdict: Verdict,
        frame: &Frame<'_>,
    ) {
        let Verdict::Forward(egress) = verdict else {
            return;
        };
        let data = frame.data();
        let (outer, max_ip_len, inner) = match egress {
            Egress::Uplink { encapsulated: true } => {
                let Some(bytes) = data
                    .get(..OUTER_OVERHEAD)
                    .and_then(|o| <[u8; OUTER_OVERHEAD]>::try_from(o).ok())
                else {
                    return;
                };
                let mut ip = [0u8; 20];
                ip.copy_from_slice(&bytes[IP..IP + 20]);
                // Total length, identification, checksum: set per packet.
                ip[2..6].fill(0);
                ip[10..12].fill(0);
                let outer = Outer {
                    bytes,
                    ip_sum: checksum::sum(&ip),
                };
                let mtu = usize::from(t.node.uplink_mtu).saturating_sub(OUTER_OVERHEAD);
                (Some(outer), mtu, &data[OUTER_OVERHEAD..])
            }
            _ => (None, usize::MAX, data),
        };
        let Some(eth) = inner.get(..12) else {
            return;
        };
        let mut l2 = [0u8; 12];
        l2.copy_from_slice(eth);
        let mut addrs = [0u8; 8];
        addrs[..4].copy_from_slice(&to.src.octets());
        addrs[4..].copy_from_slice(&to.dst.octets());
        let mut ports = [0u8; 4];
        ports[..2].copy_from_slice(&to.sport.to_be_bytes());
        ports[2..].copy_from_slice(&to.dport.to_be_bytes());
        let d = nat::deltas(from, to);
        let entry = Entry {
            id,
            generation: t.generation,
            ct,
            max_ip_len,
            addrs,
            ports,
            ip_delta: nat::fold_delta(d.ip + nat::TTL_DECREMENT_DELTA),
            l4_delta: nat::fold_delta(d.l4),
            l2,
            egress,
            outer,
        };
        if let Some(s) = self.entries.get_mut(id.slot()) {
            *s = entry;
        }
    }
}

impl Entry {
    /// True when the packet `h` (whose inner frame starts `inner_start`
    /// bytes into `frame`) fits this action: size and headroom.
    #[inline]
    pub fn fits(&self, frame: &Frame<'_>, c: &Candidate) -> bool {
        c.h.ip_len() <= self.max_ip_len
            && (self.outer.is_none() || frame.offset + c.inner_start >= OUTER_OVERHEAD)
    }

    /// The conntrack handle to confirm before [`forward`].
    #[inline]
    pub fn ct(&self) -> &CtHandle {
        &self.ct
    }

    /// True when forwarding needs a fresh outer IPv4 identification.
    #[inline]
    pub fn encapsulates(&self) -> bool {
        self.outer.is_some()
    }
}

/// Apply `e` to the candidate packet: strip the outer headers if any,
/// translate, decrement the TTL, write L2 and (for VXLAN) the outer headers
/// with identification `ident`.
#[inline]
pub fn forward(frame: &mut Frame<'_>, c: &Candidate, e: &Entry, ident: u16) -> Verdict {
    match rewrite(frame, c, e, ident) {
        Ok(()) => Verdict::Forward(e.egress),
        Err(r) => Verdict::Drop(r),
    }
}

#[inline]
fn rewrite(frame: &mut Frame<'_>, c: &Candidate, e: &Entry, ident: u16) -> Result<(), DropReason> {
    let h = &c.h;
    if h.ip_off != IP || h.l4_off != L4 {
        return Err(DropReason::Malformed);
    }
    frame.offset += c.inner_start;
    frame.len = h.ip_end;
    let csum_at = match h.proto {
        ip_proto::TCP => L4 + 16,
        _ => L4 + 6,
    };
    let p = frame
        .data_mut()
        .get_mut(..csum_at + 2)
        .ok_or(DropReason::Malformed)?;
    // TTL - 1 (TTL > 1 was checked) rides in the IPv4 checksum delta.
    p[IP + 8] = p[IP + 8].wrapping_sub(1);
    p[IP + 12..IP + 20].copy_from_slice(&e.addrs);
    let ip_csum = u16::from_be_bytes([p[IP + 10], p[IP + 11]]);
    p[IP + 10..IP + 12].copy_from_slice(&nat::apply_folded(ip_csum, e.ip_delta).to_be_bytes());
    p[L4..L4 + 4].copy_from_slice(&e.ports);
    let old = u16::from_be_bytes([p[csum_at], p[csum_at + 1]]);
    let new = nat::l4_checksum_folded(h.proto, old, e.l4_delta);
    p[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
    p[..12].copy_from_slice(&e.l2);
    if let Some(outer) = &e.outer {
        let inner_len = frame.len;
        // Outer IPv4 total length: IPv4 + UDP + VXLAN + the inner frame.
        let total = u16::try_from(inner_len + OUTER_OVERHEAD - ETH_LEN)
            .map_err(|_| DropReason::NoBufferRoom)?;
        let start = frame
            .offset
            .checked_sub(OUTER_OVERHEAD)
            .ok_or(DropReason::NoBufferRoom)?;
        let out: &mut [u8; OUTER_OVERHEAD] = frame
            .buf
            .get_mut(start..start + OUTER_OVERHEAD)
            .and_then(|o| o.try_into().ok())
            .ok_or(DropReason::NoBufferRoom)?;
        *out = outer.bytes;
        // Per packet: total length, identification (fresh: the outer
        // header has DF clear, RFC 6864), the checksum over both, and the
        // UDP length.
        out[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
        out[IP + 4..IP + 6].copy_from_slice(&ident.to_be_bytes());
        let csum = checksum::fold(outer.ip_sum + u32::from(total) + u32::from(ident));
        out[IP + 10..IP + 12].copy_from_slice(&csum.to_be_bytes());
        out[L4 + 4..L4 + 6].copy_from_slice(&(total - 20).to_be_bytes());
        frame.offset = start;
        frame.len = inner_len + OUTER_OVERHEAD;
    }
    Ok(())
}
