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
use crate::wire::checksum::update_u16;
use crate::wire::{ip_proto, IcmpPacket, SctpPacket};
use crate::DropReason;

use super::parse::Headers;

/// Rewrite the packet described by `h` from tuple `from` to tuple `to`.
/// `h` is updated to the new addresses and ports.
///
/// The hot path: one bounds check, then the changed words are written and
/// every checksum is adjusted by the same accumulated RFC 1624 delta
/// (`sum(~m + m')` over the changed 16-bit words): the IPv4 header sees the
/// address words, the TCP/UDP checksum the address words (pseudo header)
/// plus the port words. SCTP (CRC32c) and ICMP change their own fields.
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
    let d = deltas(from, to);
    match h.proto {
        ip_proto::SCTP | ip_proto::ICMP if l4_present => rewrite_sctp_icmp(packet, h, from, to, d),
        _ => apply(packet, h, to, d, 0),
    }
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
    write_addresses(ip, to, d.ip + extra_ip)?;
    if l4_present {
        ip[l4_rel..l4_rel + 2].copy_from_slice(&to.sport.to_be_bytes());
        ip[l4_rel + 2..l4_rel + 4].copy_from_slice(&to.dport.to_be_bytes());
        let old = u16::from_be_bytes([ip[csum_at], ip[csum_at + 1]]);
        let new = l4_checksum(h.proto, old, d.l4);
        ip[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
    }
    h.src = to.src;
    h.dst = to.dst;
    h.sport = to.sport;
    h.dport = to.dport;
    Ok(())
}

/// The TCP or UDP checksum `old` adjusted by `delta`. RFC 768: a UDP
/// checksum of zero means "no checksum" and stays zero; a computed zero is
/// sent as all ones.
#[inline]
pub fn l4_checksum(proto: u8, old: u16, delta: u32) -> u16 {
    match proto {
        ip_proto::UDP if old == 0 => 0,
        ip_proto::UDP => match apply_delta(old, delta) {
            0 => 0xffff,
            c => c,
        },
        _ => apply_delta(old, delta),
    }
}

/// `delta` reduced to at most 16 bits with end-around carries (zero stays
/// zero): [`apply_folded`] with it gives what [`apply_delta`] gives with
/// `delta`, with one fold instead of a loop. For deltas computed once per
/// flow.
pub fn fold_delta(delta: u32) -> u32 {
    let mut sum = u64::from(delta);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

/// [`apply_delta`] for a delta reduced by [`fold_delta`]. `!csum + delta`
/// is at most 0x1fffe, so one end-around carry brings it to 16 bits; the
/// result is the same representative (1..=0xffff, or the unchanged
/// checksum for a zero delta).
#[inline]
pub fn apply_folded(csum: u16, folded: u32) -> u16 {
    let sum = u32::from(!csum) + (folded & 0xffff);
    !(((sum & 0xffff) + (sum >> 16)) as u16)
}

/// [`l4_checksum`] for a delta reduced by [`fold_delta`].
#[inline]
pub fn l4_checksum_folded(proto: u8, old: u16, folded: u32) -> u16 {
    match proto {
        ip_proto::UDP if old == 0 => 0,
        ip_proto::UDP => match apply_folded(old, folded) {
            0 => 0xffff,
            c => c,
        },
        _ => apply_folded(old, folded),
    }
}

/// Write `to`'s addresses into the IPv4 header `ip` and adjust its checksum
/// by `delta`.
fn write_addresses(ip: &mut [u8], to: &FlowKey, delta: u32) -> Result<(), DropReason> {
    let hdr = ip.get_mut(..20).ok_or(DropReason::Malformed)?;
    hdr[12..16].copy_from_slice(&to.src.octets());
    hdr[16..20].copy_from_slice(&to.dst.octets());
    let csum = u16::from_be_bytes([hdr[10], hdr[11]]);
    hdr[10..12].copy_from_slice(&apply_delta(csum, delta).to_be_bytes());
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
pub fn apply_delta(csum: u16, delta: u32) -> u16 {
    if delta == 0 {
        return csum;
    }
    let mut sum = u64::from(!csum) + u64::from(delta);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// SCTP and ICMP: the IPv4 header as for TCP/UDP, then the protocol's own
/// field. SCTP's CRC32c covers no pseudo header, so only a port change
/// forces its recomputation; ICMPv4 has none either, and the echo
/// identifier rides in the port slots.
fn rewrite_sctp_icmp(
    packet: &mut [u8],
    h: &mut Headers,
    from: &FlowKey,
    to: &FlowKey,
    d: Deltas,
) -> Result<(), DropReason> {
    let ip = packet
        .get_mut(h.ip_off..h.ip_end)
        .ok_or(DropReason::Malformed)?;
    write_addresses(ip, to, d.ip)?;
    let l4 = packet
        .get_mut(h.l4_off..h.ip_end)
        .ok_or(DropReason::Malformed)?;
    match h.proto {
        ip_proto::SCTP if from.sport != to.sport || from.dport != to.dport => {
            let mut sctp = SctpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            sctp.set_src_port(to.sport);
            sctp.set_dst_port(to.dport);
            sctp.fill_checksum();
        }
        ip_proto::ICMP if from.sport != to.sport => {
            let mut icmp = IcmpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            if !icmp.is_error() {
                let c = update_u16(icmp.checksum(), from.sport, to.sport);
                icmp.set_echo_ident(to.sport);
                icmp.set_checksum(c);
            }
        }
        _ => {}
    }
    h.src = to.src;
    h.dst = to.dst;
    h.sport = to.sport;
    h.dport = to.dport;
    Ok(())
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

    proptest! {
        /// One fold of a pre-folded delta is the looped fold, for every
        /// checksum and delta (including zero and multiples of 0xffff).
        #[test]
        fn folded_deltas_give_the_same_checksums(
            csum in any::<u16>(),
            delta in prop_oneof![any::<u32>(), 0u32..0x4_0000, Just(0u32), Just(0xffff), Just(0x1fffe)],
            proto in prop_oneof![Just(ip_proto::UDP), Just(ip_proto::TCP)],
        ) {
            let folded = fold_delta(delta);
            prop_assert!(folded <= 0xffff);
            prop_assert_eq!(apply_folded(csum, folded), apply_delta(csum, delta));
            prop_assert_eq!(l4_checksum_folded(proto, csum, folded), l4_checksum(proto, csum, delta));
        }
    }

    #[test]
    fn sctp_and_icmp_echo_rewrites_keep_their_checksums_valid() {
        use crate::wire::{IcmpPacket, SctpPacket};
        // SCTP: common header + one 4-byte chunk, CRC32c filled.
        let mut sctp = vec![0u8; 16];
        sctp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        sctp[2..4].copy_from_slice(&80u16.to_be_bytes());
        sctp[12] = 1;
        sctp[14..16].copy_from_slice(&4u16.to_be_bytes());
        SctpPacket::new_checked(&mut sctp[..])
            .unwrap()
            .fill_checksum();
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 96, 0, 5], 64)
            .write(&mut pkt, 132.into(), &sctp)
            .unwrap();
        let mut h = parse_ipv4(&pkt, 14).unwrap();
        let from = FlowKey {
            src: h.src,
            dst: h.dst,
            sport: 5000,
            dport: 80,
            proto: 132,
        };
        let to = FlowKey {
            dst: [10, 244, 1, 3].into(),
            dport: 8080,
            ..from
        };
        rewrite(&mut pkt, &mut h, &from, &to).unwrap();
        let ip = Ipv4Packet::new_checked(&pkt[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst(), to.dst);
        let sctp = SctpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((sctp.src_port(), sctp.dst_port()), (5000, 8080));
        assert!(sctp.verify_checksum());

        // ICMP echo: the identifier is translated, the checksum follows.
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 1, 2], [203, 0, 113, 7], 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut pkt, b"ping")
            .unwrap();
        let mut h = parse_ipv4(&pkt, 14).unwrap();
        let from = FlowKey {
            src: h.src,
            dst: h.dst,
            sport: 7,
            dport: 7,
            proto: 1,
        };
        let to = FlowKey {
            src: [192, 168, 50, 1].into(),
            sport: 61000,
            dport: 61000,
            ..from
        };
        rewrite(&mut pkt, &mut h, &from, &to).unwrap();
        let ip = Ipv4Packet::new_checked(&pkt[14..]).unwrap();
        assert!(ip.verify_checksum());
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.echo_ident(), 61000);
        assert!(icmp.verify_checksum());
    }
}
