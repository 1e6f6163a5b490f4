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
pub fn rewrite(
    packet: &mut [u8],
    h: &mut Headers,
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(), DropReason> {
    if from == to {
        return Ok(());
    }
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
