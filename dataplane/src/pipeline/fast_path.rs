//! The established-flow fast path: a per-worker, direct-mapped cache of
//! what the full pipeline decided for a flow's packets.
//!
//! Contract: a cached action is used only when it is certainly what the
//! full pipeline would do again —
//! - same table generation (any publish invalidates every entry: routes,
//!   neighbours, pods and policy are all in the `TableSet`);
//! - same ingress, 5-tuple and Ethernet source (anti-spoof passed for them);
//! - conntrack still holds the connection and translates it to the same
//!   tuple (a flushed, expired or revoked entry misses; a re-created one
//!   with other NAT does not match);
//! - the packet is an unfragmented TCP/UDP packet with TTL > 1, and fits
//!   the MTU after encapsulation.
//!
//! Anything else takes the full path, which refills the entry. Traced
//! packets always take the full path so every stage is recorded.

use crate::conntrack::FlowKey;
use crate::tables::{MacAddr, TableSet};
use crate::wire::checksum::update_u16;
use crate::wire::{ip_proto, EthernetFrame, OUTER_OVERHEAD};
use crate::DropReason;

use super::parse::Headers;
use super::{nat, Egress, Frame, Ingress, Verdict};

const ETH_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
/// Entries per worker (a power of two).
const SLOTS: usize = 4096;

/// What identifies a flow's packets to the cache.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowId {
    /// The 5-tuple as received.
    pub key: FlowKey,
    pub ingress: Ingress,
    /// Ethernet source as received (anti-spoof passed for it).
    pub l2_src: MacAddr,
}

/// One cached action.
#[derive(Clone, Copy)]
pub struct Entry {
    generation: u64,
    id: FlowId,
    /// The tuple after translation (checked against conntrack's).
    to: FlowKey,
    /// Checksum deltas of that translation (constant for the flow).
    deltas: nat::Deltas,
    egress: Egress,
    /// Ethernet header written before the IP packet (dst, src).
    l2_dst: MacAddr,
    l2_src: MacAddr,
    /// For VXLAN: the 50 outer bytes as the full path wrote them.
    outer: Option<[u8; OUTER_OVERHEAD]>,
}

/// The per-worker cache.
pub struct FlowCache {
    entries: Box<[Option<Entry>]>,
    pub hits: u64,
    pub misses: u64,
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache {
            entries: vec![None; SLOTS].into_boxed_slice(),
            hits: 0,
            misses: 0,
        }
    }
}

fn slot(id: &FlowId) -> usize {
    let key = &id.key;
    let i = match id.ingress {
        Ingress::Uplink => 0,
        Ingress::Pod { ifindex } => ifindex,
    };
    let h = crate::wire::flow_hash(key.src, key.dst, key.sport, key.dport, key.proto)
        ^ i.wrapping_mul(0x9e37_79b9);
    h as usize & (SLOTS - 1)
}

/// Whether a packet may use the cache at all.
pub fn eligible(h: &Headers) -> bool {
    matches!(h.proto, ip_proto::TCP | ip_proto::UDP) && !h.fragment && h.ttl > 1
}

impl FlowCache {
    /// The cached action for this packet, if still valid for `t` and the
    /// packet still fits the egress MTU. The caller confirms it against
    /// conntrack ([`Entry::confirmed_by`]) before [`forward`].
    #[inline]
    pub fn lookup(&mut self, t: &TableSet, id: &FlowId, h: &Headers) -> Option<&Entry> {
        let found = self
            .entries
            .get(slot(id))
            .and_then(|e| e.as_ref())
            .filter(|e| e.generation == t.generation && e.id == *id);
        let Some(e) = found else {
            self.misses += 1;
            return None;
        };
        if e.outer.is_some() && h.ip_len() + OUTER_OVERHEAD > usize::from(t.node.uplink_mtu) {
            return None;
        }
        Some(e)
    }

    /// Count a packet the fast path forwarded.
    #[inline]
    pub fn count_hit(&mut self) {
        self.hits += 1;
    }

    /// Remember what the full path did with an established packet: `frame`
    /// is the packet as it leaves.
    pub fn record(
        &mut self,
        t: &TableSet,
        id: FlowId,
        to: FlowKey,
        verdict: Verdict,
        frame: &Frame<'_>,
    ) {
        let Verdict::Forward(egress) = verdict else {
            return;
        };
        let data = frame.data();
        let (outer, inner) = match egress {
            Egress::Uplink { encapsulated: true } => {
                let Some(o) = data
                    .get(..OUTER_OVERHEAD)
                    .and_then(|o| <[u8; OUTER_OVERHEAD]>::try_from(o).ok())
                else {
                    return;
                };
                (Some(o), &data[OUTER_OVERHEAD..])
            }
            _ => (None, data),
        };
        let Ok(eth) = EthernetFrame::new_checked(inner) else {
            return;
        };
        let entry = Entry {
            generation: t.generation,
            id,
            to,
            deltas: nat::deltas(&id.key, &to),
            egress,
            l2_dst: eth.dst(),
            l2_src: eth.src(),
            outer,
        };
        if let Some(s) = self.entries.get_mut(slot(&id)) {
            *s = Some(entry);
        }
    }
}

impl Entry {
    /// True when conntrack's current translation of the flow is the one
    /// this entry was recorded with.
    #[inline]
    pub fn confirmed_by(&self, hit: &crate::conntrack::CtHit) -> bool {
        hit.rewrite() == self.to
    }
}

/// Rewrite, decrement the TTL, write L2 and (for VXLAN) the outer headers.
pub fn forward(
    frame: &mut Frame<'_>,
    h: &mut Headers,
    e: &Entry,
    ident: u16,
) -> Result<Verdict, DropReason> {
    frame.len = h.ip_end;
    {
        // TTL - 1 (TTL > 1 was checked) folds into the translation's IPv4
        // checksum delta: one checksum update per header.
        let data = frame.data_mut();
        let ttl = data.get_mut(h.ip_off + 8).ok_or(DropReason::Malformed)?;
        *ttl = ttl.wrapping_sub(1);
        if e.to == e.id.key {
            // No translation (pod to pod): only the TTL word changes.
            nat::apply_ip_delta(data, h, nat::TTL_DECREMENT_DELTA)?;
        } else {
            nat::apply(data, h, &e.to, e.deltas, nat::TTL_DECREMENT_DELTA)?;
        }
        let eth = data.get_mut(..12).ok_or(DropReason::Malformed)?;
        eth[..6].copy_from_slice(&e.l2_dst.0);
        eth[6..12].copy_from_slice(&e.l2_src.0);
    }
    if let Some(outer) = &e.outer {
        if frame.offset < OUTER_OVERHEAD {
            return Err(DropReason::NoBufferRoom);
        }
        let inner_len = frame.len;
        frame.offset -= OUTER_OVERHEAD;
        frame.len += OUTER_OVERHEAD;
        let out = frame
            .buf
            .get_mut(frame.offset..frame.offset + OUTER_OVERHEAD)
            .ok_or(DropReason::NoBufferRoom)?;
        out.copy_from_slice(outer);
        // Outer IPv4 total length, ident and UDP length change per packet;
        // the header checksum follows both (RFC 1624). A fresh ident per
        // packet matters: the outer header has DF clear (RFC 6864).
        let total = u16::try_from(inner_len + OUTER_OVERHEAD - ETH_LEN)
            .map_err(|_| DropReason::NoBufferRoom)?;
        let old_total = u16::from_be_bytes([out[16], out[17]]);
        let old_ident = u16::from_be_bytes([out[18], out[19]]);
        out[16..18].copy_from_slice(&total.to_be_bytes());
        out[18..20].copy_from_slice(&ident.to_be_bytes());
        let c = update_u16(u16::from_be_bytes([out[24], out[25]]), old_total, total);
        let c = update_u16(c, old_ident, ident);
        out[24..26].copy_from_slice(&c.to_be_bytes());
        let udp_len = total - 20;
        out[38..40].copy_from_slice(&udp_len.to_be_bytes());
    }
    Ok(Verdict::Forward(e.egress))
}
