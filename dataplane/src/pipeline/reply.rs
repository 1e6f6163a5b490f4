//! Answers kxdp generates and ICMP errors it translates.
//!
//! Generated: ICMP port unreachable (Service without endpoints), time
//! exceeded (TTL), fragmentation needed (VXLAN would exceed the MTU; RFC
//! 1191), echo replies from the pods' gateway. They replace the frame in
//! place and are routed like any packet, so an answer to a pod behind
//! another node is encapsulated back to it.
//!
//! Translated: an ICMP error about a tracked flow has its outer addresses
//! and its quoted inner header rewritten through the same conntrack entry
//! (what netfilter calls RELATED), so traceroute and PMTU discovery work
//! through Service NAT and masquerade. Errors generated about a packet kxdp
//! already translated go through the same translation on their way back.

use std::net::Ipv4Addr;

use crate::conntrack::FlowKey;
use crate::tables::TableSet;
use crate::trace_stage;
use crate::wire::checksum::{fold, sum, update_addr, update_u16};
use crate::wire::icmp::write_icmp_error_in_place;
use crate::wire::icmp::{
    DEST_UNREACH, ECHO_REPLY, FRAG_NEEDED, PORT_UNREACH, TIME_EXCEEDED, TTL_EXCEEDED,
};
use crate::wire::{ip_proto, EthernetFrame, IcmpPacket, Ipv4Packet, WireError, ETHERTYPE_IPV4};
use crate::DropReason;

use super::parse::{self, Headers, IcmpKind};
use super::{l2, Frame, Ingress, Origin, Pipeline, Stage, StageResult, Tracer, Verdict};

const ETH_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
/// TTL of packets kxdp originates.
const GENERATED_TTL: u8 = 64;

/// Which error to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    PortUnreachable,
    TimeExceeded,
    FragmentationNeeded { mtu: u16 },
}

/// Replace the frame with an ICMP error about the packet `h` describes, sent
/// back to its source, and route it. The original packet is counted with
/// `reason`.
#[expect(
    clippy::too_many_arguments,
    reason = "packet fields are clearer as arguments than as a one-use struct"
)]
pub fn icmp_error_reply<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    frame: &mut Frame<'_>,
    h: &Headers,
    origin: Origin,
    kind: ErrorKind,
    reason: DropReason,
    tr: &mut T,
) -> Verdict {
    // RFC 1122 3.2.2: never an error about an error.
    if matches!(h.icmp, Some(IcmpKind::Error { .. })) {
        return Verdict::Drop(DropReason::IcmpErrorAboutError);
    }
    let (msg_type, code, mtu) = match kind {
        ErrorKind::PortUnreachable => (DEST_UNREACH, PORT_UNREACH, 0),
        ErrorKind::TimeExceeded => (TIME_EXCEEDED, TTL_EXCEEDED, 0),
        ErrorKind::FragmentationNeeded { mtu } => (DEST_UNREACH, FRAG_NEEDED, mtu),
    };
    // The answer comes from the address the client talked to (port
    // unreachable) or from this hop (time exceeded, frag needed).
    let src = match kind {
        ErrorKind::PortUnreachable => Some(h.dst),
        _ => router_address(t, origin),
    };
    let Some(src) = src else {
        return Verdict::Drop(reason);
    };
    let written = {
        // The frame's packet starts with the original IP packet; the builder
        // moves the quote (RFC 792: header + 8 bytes) behind the new headers.
        let start = frame.offset + h.ip_off;
        let Some(buf) = frame.buf.get_mut(start..) else {
            return Verdict::Drop(DropReason::NoBufferRoom);
        };
        match write_icmp_error_in_place(buf, msg_type, code, mtu, src, h.src, GENERATED_TTL) {
            Ok(n) => n,
            // RFC 1122 3.2.2 forbids it (broadcast source, fragment, ...).
            Err(WireError::NotAllowed) => return Verdict::Drop(reason),
            Err(WireError::BufferTooSmall) => return Verdict::Drop(DropReason::NoBufferRoom),
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        }
    };
    frame.offset += h.ip_off - ETH_LEN;
    frame.len = ETH_LEN + written;
    if let Ok(mut eth) = EthernetFrame::new_checked(frame.data_mut()) {
        eth.set_ethertype(ETHERTYPE_IPV4);
    }
    trace_stage!(
        tr,
        Stage::Reply,
        "ICMP type {} code {} from {} to {}",
        msg_type,
        code,
        src,
        h.src
    );
    // An error about a packet kxdp already translated (frag needed after
    // DNAT) must reach the client in the client's terms.
    if let Ok(mut eh) = parse::parse_ipv4(frame.data(), ETH_LEN) {
        let now = p.now;
        if translate_error(p, now, frame, &mut eh).is_some() {
            trace_stage!(
                tr,
                Stage::Reply,
                "quoted packet translated back through conntrack: now to {}",
                eh.dst
            );
        }
    }
    finish_reply(p, t, frame, origin, Some(reason), tr)
}

/// Answer an echo request to the pods' gateway (in place).
pub fn echo_reply<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    frame: &mut Frame<'_>,
    h: &Headers,
    origin: Origin,
    tr: &mut T,
) -> Verdict {
    let data = frame.data_mut();
    let Some(ip_bytes) = data.get_mut(h.ip_off..h.ip_end) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(ip_bytes) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    ip.set_src(h.dst);
    ip.set_dst(h.src);
    ip.set_ttl(GENERATED_TTL);
    ip.fill_checksum();
    let hl = ip.header_len();
    let Some(icmp_bytes) = ip_bytes_mut(data, h, hl) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Ok(mut icmp) = IcmpPacket::new_checked(icmp_bytes) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // Type 8 -> 0 changes the first 16-bit word (type, code).
    let old_word = u16::from(icmp.msg_type()) << 8 | u16::from(icmp.code());
    let new_word = u16::from(ECHO_REPLY) << 8 | u16::from(icmp.code());
    let c = update_u16(icmp.checksum(), old_word, new_word);
    icmp.set_msg_type(ECHO_REPLY);
    icmp.set_checksum(c);
    finish_reply(p, t, frame, origin, None, tr)
}

fn ip_bytes_mut<'a>(data: &'a mut [u8], h: &Headers, hl: usize) -> Option<&'a mut [u8]> {
    data.get_mut(h.ip_off + hl..h.ip_end)
}

/// Route a generated answer back toward its destination.
fn finish_reply<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    frame: &mut Frame<'_>,
    origin: Origin,
    reason: Option<DropReason>,
    tr: &mut T,
) -> Verdict {
    let h = match parse::parse_ipv4(frame.data(), ETH_LEN) {
        Ok(h) => h,
        Err(r) => return Verdict::Drop(r),
    };
    let origin = Origin {
        generated: true,
        ..origin
    };
    match l2::route(p, t, frame, &h, origin, tr) {
        Ok(Verdict::Forward(e)) => Verdict::Reply(e, reason),
        Ok(v) | Err(v) => v,
    }
}

/// The address this hop answers from: the pods' gateway toward pods (local
/// or behind VXLAN), the primary node address toward the underlay.
fn router_address(t: &TableSet, origin: Origin) -> Option<Ipv4Addr> {
    match origin.ingress {
        Ingress::Pod { .. } => t.node.gateway_ip.or(t.node.primary_ip()),
        Ingress::Uplink if origin.vxlan_src.is_some() => t.node.gateway_ip.or(t.node.primary_ip()),
        Ingress::Uplink => t.node.primary_ip(),
    }
}

/// The quoted packet inside an ICMP error, parsed leniently: it is
/// truncated by design, so only the fields present are read.
struct Quoted {
    /// Offset of the quoted IP header in the frame's packet bytes.
    ip_off: usize,
    header_len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
}

fn quoted(data: &[u8], h: &Headers) -> Option<Quoted> {
    let ip_off = h.l4_off + 8;
    let ip = data.get(ip_off..h.ip_end)?;
    let first = *ip.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 || ip.len() < header_len + 8 {
        return None;
    }
    let proto = *ip.get(9)?;
    let src = Ipv4Addr::new(*ip.get(12)?, *ip.get(13)?, *ip.get(14)?, *ip.get(15)?);
    let dst = Ipv4Addr::new(*ip.get(16)?, *ip.get(17)?, *ip.get(18)?, *ip.get(19)?);
    let l4 = ip.get(header_len..header_len + 8)?;
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(i)?, *l4.get(i + 1)?])) };
    let (sport, dport) = match proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => (word(0)?, word(2)?),
        // Echo: identifier in both slots, as in the flow keys.
        ip_proto::ICMP => {
            let id = word(4)?;
            (id, id)
        }
        _ => return None,
    };
    Some(Quoted {
        ip_off,
        header_len,
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

/// An ICMP error arrived: translate it through the conntrack entry of the
/// flow it is about, then route it.
pub fn icmp_error<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    now: u64,
    frame: &mut Frame<'_>,
    h: &mut Headers,
    origin: Origin,
    tr: &mut T,
) -> StageResult<Verdict> {
    match translate_error(p, now, frame, h) {
        Some(()) => {
            trace_stage!(
                tr,
                Stage::Conntrack,
                "ICMP error related to a tracked flow: now {} -> {}",
                h.src,
                h.dst
            );
            l2::route(p, t, frame, h, origin, tr)
        }
        None => {
            if origin.ingress == Ingress::Uplink && origin.vxlan_src.is_none() {
                trace_stage!(
                    tr,
                    Stage::Conntrack,
                    "ICMP error about no tracked flow: to host"
                );
                return Ok(Verdict::ToHost);
            }
            trace_stage!(tr, Stage::Conntrack, "ICMP error about no tracked flow");
            Err(Verdict::Drop(DropReason::IcmpErrorNoConnection))
        }
    }
}

/// Rewrite an ICMP error (outer and quoted headers) through conntrack.
/// `None` when the quoted packet belongs to no tracked flow.
fn translate_error(
    p: &mut Pipeline,
    now: u64,
    frame: &mut Frame<'_>,
    h: &mut Headers,
) -> Option<()> {
    let data = frame.data_mut();
    let q = quoted(data, h)?;
    // The quoted packet went from q.src to q.dst; the error travels back,
    // like a packet of the opposite direction.
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
    };
    let hit = p.conntrack().lookup(&key, now, 0)?;
    let to = hit.rewrite();
    // Quoted packet becomes the mirror of the translated tuple.
    let (new_qsrc, new_qdst, new_qsport, new_qdport) = (to.dst, to.src, to.dport, to.sport);
    {
        let qip = data.get_mut(q.ip_off..q.ip_off + q.header_len)?;
        qip.get_mut(12..16)?.copy_from_slice(&new_qsrc.octets());
        qip.get_mut(16..20)?.copy_from_slice(&new_qdst.octets());
        // The quoted header is complete: recompute its checksum outright.
        qip.get_mut(10..12)?.copy_from_slice(&[0, 0]);
        let c = fold(sum(qip));
        qip.get_mut(10..12)?.copy_from_slice(&c.to_be_bytes());
    }
    {
        let l4_off = q.ip_off + q.header_len;
        let ql4 = data.get_mut(l4_off..l4_off + 8)?;
        match q.proto {
            ip_proto::UDP => {
                // UDP's checksum is inside the 8 quoted bytes: keep it valid.
                let old = u16::from_be_bytes([*ql4.get(6)?, *ql4.get(7)?]);
                ql4.get_mut(0..2)?
                    .copy_from_slice(&new_qsport.to_be_bytes());
                ql4.get_mut(2..4)?
                    .copy_from_slice(&new_qdport.to_be_bytes());
                if old != 0 {
                    let mut c = update_addr(old, q.src, new_qsrc);
                    c = update_addr(c, q.dst, new_qdst);
                    c = update_u16(c, q.sport, new_qsport);
                    c = update_u16(c, q.dport, new_qdport);
                    ql4.get_mut(6..8)?
                        .copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
                }
            }
            ip_proto::TCP | ip_proto::SCTP => {
                ql4.get_mut(0..2)?
                    .copy_from_slice(&new_qsport.to_be_bytes());
                ql4.get_mut(2..4)?
                    .copy_from_slice(&new_qdport.to_be_bytes());
            }
            ip_proto::ICMP => {
                let old = u16::from_be_bytes([*ql4.get(2)?, *ql4.get(3)?]);
                ql4.get_mut(4..6)?
                    .copy_from_slice(&new_qsport.to_be_bytes());
                let c = update_u16(old, q.sport, new_qsport);
                ql4.get_mut(2..4)?.copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
    }
    // Outer header: toward the translated destination; an error generated
    // by the flow's own endpoint also gets that endpoint's translated address.
    let new_outer_dst = to.dst;
    let new_outer_src = if h.src == key.src { to.src } else { h.src };
    {
        let ip_bytes = data.get_mut(h.ip_off..h.ip_end)?;
        let mut ip = Ipv4Packet::new_checked(ip_bytes).ok()?;
        if new_outer_src != h.src {
            ip.set_src_incremental(new_outer_src);
        }
        if new_outer_dst != h.dst {
            ip.set_dst_incremental(new_outer_dst);
        }
    }
    {
        let icmp_bytes = data.get_mut(h.l4_off..h.ip_end)?;
        let mut icmp = IcmpPacket::new_checked(icmp_bytes).ok()?;
        icmp.fill_checksum();
    }
    h.src = new_outer_src;
    h.dst = new_outer_dst;
    Some(())
}
