//! Address and port translation with incremental checksums (RFC 1624).
//!
//! [`rewrite`] turns a packet whose tuple is `from` into one whose tuple is
//! `to`: IPv4 addresses, transport ports (or the ICMP echo identifier), and
//! every checksum they feed — the IPv4 header checksum, the TCP/UDP checksum
//! through the pseudo header, the ICMP checksum over the identifier. UDP's
//! "no checksum" (zero) stays zero (RFC 768). SCTP's CRC32c covers no
//! pseudo header, so only a port change forces its recomputation.

use std::net::Ipv4Addr;

use crate::conntrack::FlowKey;
use crate::wire::checksum::{update_addr, update_u16};
use crate::wire::{ip_proto, IcmpPacket, Ipv4Packet, SctpPacket, TcpPacket, UdpPacket};
use crate::DropReason;

use super::parse::Headers;

/// Rewrite the packet described by `h` from tuple `from` to tuple `to`.
/// `h` is updated to the new addresses and ports.
///
/// The hot path: one bounds check, then the changed words are written and
/// every checksum is adjusted by the same accumulated RFC 1624 delta
/// (`sum(~m + m')` over the changed 16-bit words): the IPv4 header sees the
/// address words, the TCP/UDP checksum the address words (pseudo header)
/// plus the port words. SCTP (CRC32c) and ICMP take the general path.
pub fn rewrite(
    packet: &mut [u8],
    h: &mut Headers,
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(), DropReason> {
    if from == to {
        return Ok(());
    }
    let l4_present = h.l4_off < h.ip_end && !h.fragment;
    let fast = matches!(h.proto, ip_proto::TCP | ip_proto::UDP) || !l4_present;
    if !fast {
        return rewrite_general(packet, h, from, to);
    }
    apply(packet, h, to, deltas(from, to), 0)
}

/// The RFC 1624 checksum deltas (`sum(~m + m')` over the changed 16-bit
/// words) of a translation: `ip` for the IPv4 header (addresses), `l4` for
/// the TCP/UDP checksum (addresses through the pseudo header, plus ports).
/// They depend only on the two tuples, so a flow's are computed once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deltas {
    pub ip: u32,
    pub l4: u32,
}

/// The deltas of translating `from` into `to`.
pub fn deltas(from: &FlowKey, to: &FlowKey) -> Deltas {
    let addr = addr_delta(from.src, to.src) + addr_delta(from.dst, to.dst);
    let ports = port_delta(from.sport, to.sport) + port_delta(from.dport, to.dport);
    Deltas {
        ip: addr,
        l4: addr + ports,
    }
}

/// The IPv4 checksum delta of decrementing the TTL: the (TTL, protocol)
/// word drops by 0x0100, and `~m + m'` of that is 0xfeff.
pub const TTL_DECREMENT_DELTA: u32 = 0xfeff;

/// Write `to`'s addresses and ports into the TCP/UDP packet `h` describes
/// and adjust its checksums by `d` (plus `extra_ip` for the IPv4 header,
/// e.g. [`TTL_DECREMENT_DELTA`] after the caller decremented the TTL).
pub fn apply(
    packet: &mut [u8],
    h: &mut Headers,
    to: &FlowKey,
    d: Deltas,
    extra_ip: u32,
) -> Result<(), DropReason> {
    let l4_present = h.l4_off < h.ip_end && !h.fragment;
    let ip = packet
        .get_mut(h.ip_off..h.ip_end)
        .ok_or(DropReason::Malformed)?;
    let l4_rel = h.l4_off - h.ip_off;
    // Parse guaranteed a full transport header for unfragmented TCP/UDP.
    let csum_at = match h.proto {
        ip_proto::TCP => l4_rel + 16,
        _ => l4_rel + 6,
    };
    if ip.len() < 20 || (l4_present && (ip.len() < csum_at + 2 || ip.len() < l4_rel + 4)) {
        return Err(DropReason::Malformed);
    }
    ip[12..16].copy_from_slice(&to.src.octets());
    ip[16..20].copy_from_slice(&to.dst.octets());
    let ip_csum = u16::from_be_bytes([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&apply_delta(ip_csum, d.ip + extra_ip).to_be_bytes());
    if l4_present {
        ip[l4_rel..l4_rel + 2].copy_from_slice(&to.sport.to_be_bytes());
        ip[l4_rel + 2..l4_rel + 4].copy_from_slice(&to.dport.to_be_bytes());
        let old = u16::from_be_bytes([ip[csum_at], ip[csum_at + 1]]);
        let new = match h.proto {
            // RFC 768: zero means "no checksum" and stays zero; a computed
            // zero is sent as all ones.
            ip_proto::UDP if old == 0 => 0,
            ip_proto::UDP => match apply_delta(old, d.l4) {
                0 => 0xffff,
                c => c,
            },
            _ => apply_delta(old, d.l4),
        };
        ip[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
    }
    h.src = to.src;
    h.dst = to.dst;
    h.sport = to.sport;
    h.dport = to.dport;
    Ok(())
}

/// Adjust only the IPv4 header checksum of `h`'s packet by `delta` (for a
/// header change the caller already wrote, such as the TTL).
pub fn apply_ip_delta(packet: &mut [u8], h: &Headers, delta: u32) -> Result<(), DropReason> {
    let csum = packet
        .get_mut(h.ip_off + 10..h.ip_off + 12)
        .ok_or(DropReason::Malformed)?;
    let old = u16::from_be_bytes([csum[0], csum[1]]);
    csum.copy_from_slice(&apply_delta(old, delta).to_be_bytes());
    Ok(())
}

/// `~m + m'` over both 16-bit words of an address change (0 if unchanged).
#[inline]
fn addr_delta(old: Ipv4Addr, new: Ipv4Addr) -> u32 {
    if old == new {
        return 0;
    }
    let (o, n) = (u32::from(old), u32::from(new));
    (!(o >> 16) & 0xffff) + (n >> 16) + (!o & 0xffff) + (n & 0xffff)
}

/// `~m + m'` of a port change (0 if unchanged).
#[inline]
fn port_delta(old: u16, new: u16) -> u32 {
    if old == new {
        return 0;
    }
    u32::from(!old) + u32::from(new)
}

/// `HC' = ~(~HC + delta)` (RFC 1624 eqn 3), folded.
#[inline]
fn apply_delta(csum: u16, delta: u32) -> u16 {
    if delta == 0 {
        return csum;
    }
    let mut sum = u64::from(!csum) + u64::from(delta);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The general rewrite: checked views, any protocol.
fn rewrite_general(
    packet: &mut [u8],
    h: &mut Headers,
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(), DropReason> {
    let (old_src, old_dst, new_src, new_dst) = (from.src, from.dst, to.src, to.dst);
    {
        let ip_bytes = packet
            .get_mut(h.ip_off..h.ip_end)
            .ok_or(DropReason::Malformed)?;
        let mut ip = Ipv4Packet::new_checked(ip_bytes).map_err(|_| DropReason::Malformed)?;
        if old_src != new_src {
            ip.set_src_incremental(new_src);
        }
        if old_dst != new_dst {
            ip.set_dst_incremental(new_dst);
        }
    }
    if !h.fragment || h.l4_off < h.ip_end {
        let l4 = packet
            .get_mut(h.l4_off..h.ip_end)
            .ok_or(DropReason::Malformed)?;
        rewrite_l4(
            l4,
            h.proto,
            (old_src, old_dst),
            (new_src, new_dst),
            from,
            to,
        )?;
    }
    h.src = new_src;
    h.dst = new_dst;
    h.sport = to.sport;
    h.dport = to.dport;
    Ok(())
}

/// Rewrite ports and the transport checksum of `l4` (a transport header and
/// whatever of its payload is present).
pub fn rewrite_l4(
    l4: &mut [u8],
    proto: u8,
    (old_src, old_dst): (Ipv4Addr, Ipv4Addr),
    (new_src, new_dst): (Ipv4Addr, Ipv4Addr),
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(), DropReason> {
    match proto {
        ip_proto::TCP => {
            let mut tcp = TcpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            let mut c = tcp.checksum();
            c = pseudo_update(c, old_src, old_dst, new_src, new_dst);
            if from.sport != to.sport {
                c = update_u16(c, from.sport, to.sport);
                tcp.set_src_port(to.sport);
            }
            if from.dport != to.dport {
                c = update_u16(c, from.dport, to.dport);
                tcp.set_dst_port(to.dport);
            }
            tcp.set_checksum(c);
        }
        ip_proto::UDP => {
            let mut udp = UdpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            let old = udp.checksum();
            if from.sport != to.sport {
                udp.set_src_port(to.sport);
            }
            if from.dport != to.dport {
                udp.set_dst_port(to.dport);
            }
            // RFC 768: zero means "no checksum" and must stay zero.
            if old != 0 {
                let mut c = pseudo_update(old, old_src, old_dst, new_src, new_dst);
                c = update_u16(c, from.sport, to.sport);
                c = update_u16(c, from.dport, to.dport);
                // A computed zero is transmitted as all ones.
                udp.set_checksum(if c == 0 { 0xffff } else { c });
            }
        }
        ip_proto::SCTP => {
            let mut sctp = SctpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            if from.sport != to.sport || from.dport != to.dport {
                sctp.set_src_port(to.sport);
                sctp.set_dst_port(to.dport);
                sctp.fill_checksum();
            }
        }
        ip_proto::ICMP => {
            let mut icmp = IcmpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            // Echo identifier rides in the port slots; ICMPv4 has no pseudo header.
            if from.sport != to.sport && !icmp.is_error() {
                let c = update_u16(icmp.checksum(), from.sport, to.sport);
                icmp.set_echo_ident(to.sport);
                icmp.set_checksum(c);
            }
        }
        _ => {}
    }
    Ok(())
}

fn pseudo_update(
    c: u16,
    old_src: Ipv4Addr,
    old_dst: Ipv4Addr,
    new_src: Ipv4Addr,
    new_dst: Ipv4Addr,
) -> u16 {
    let mut c = c;
    if old_src != new_src {
        c = update_addr(c, old_src, new_src);
    }
    if old_dst != new_dst {
        c = update_addr(c, old_dst, new_dst);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse::parse_ipv4;
    use crate::wire::{Ipv4Packet, TcpPacket, UdpPacket};
    use proptest::prelude::*;

    fn build(
        tcp: bool,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4(src, dst, 64);
        let mut v = Vec::new();
        if tcp {
            b.tcp(sport, dport, 7, 1000)
                .ack(9)
                .write(&mut v, payload)
                .unwrap();
        } else {
            b.udp(sport, dport).write(&mut v, payload).unwrap();
        }
        v
    }

    proptest! {
        /// The delta-based rewrite leaves checksums that an independent
        /// full recomputation accepts, and the exact bytes a from-scratch
        /// build of the translated packet has.
        #[test]
        fn rewrite_matches_a_packet_built_with_the_new_tuple(
            tcp in any::<bool>(),
            a in any::<[[u8; 4]; 4]>(),
            ports in any::<[u16; 4]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut pkt = build(tcp, a[0], a[1], ports[0], ports[1], &payload);
            let mut h = parse_ipv4(&pkt, 14).unwrap();
            let from = FlowKey { src: a[0].into(), dst: a[1].into(), sport: ports[0], dport: ports[1], proto: h.proto };
            let to = FlowKey { src: a[2].into(), dst: a[3].into(), sport: ports[2], dport: ports[3], proto: h.proto };
            rewrite(&mut pkt, &mut h, &from, &to).unwrap();
            let ip = Ipv4Packet::new_checked(&pkt[14..]).unwrap();
            prop_assert!(ip.verify_checksum());
            if tcp {
                prop_assert!(TcpPacket::new_checked(ip.payload()).unwrap().verify_checksum(to.src, to.dst));
            } else {
                prop_assert!(UdpPacket::new_checked(ip.payload()).unwrap().verify_checksum(to.src, to.dst));
            }
            let mut want = build(tcp, a[2], a[3], ports[2], ports[3], &payload);
            // A UDP checksum that computes to 0 is sent as 0xffff by both.
            if !tcp && want[40..42] == [0, 0] {
                want[40..42].copy_from_slice(&[0xff, 0xff]);
            }
            prop_assert_eq!(pkt, want);
        }
    }
}
