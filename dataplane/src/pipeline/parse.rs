//! Parse and validate the headers the pipeline decides on, once per packet.
//!
//! Offsets are relative to the start of the frame's packet bytes. After
//! [`parse_ipv4`] succeeds, every offset it returns is inside the packet, so
//! later stages index with checked views only for the fields they rewrite.

use std::net::Ipv4Addr;

use crate::wire::{
    checksum, ip_proto, EthernetFrame, IcmpPacket, Ipv4Packet, SctpPacket, TcpPacket, UdpPacket,
};
use crate::DropReason;

/// The IPv4 and transport facts of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// Offset of the IPv4 header (after Ethernet).
    pub ip_off: usize,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// End of the IP packet (Ethernet padding excluded).
    pub ip_end: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub dont_frag: bool,
    /// MF set or a non-zero offset.
    pub fragment: bool,
    /// Source port (TCP/UDP/SCTP) or ICMP echo identifier.
    pub sport: u16,
    /// Destination port (TCP/UDP/SCTP) or ICMP echo identifier.
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp: Option<IcmpKind>,
}

/// What kind of ICMP message a packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    EchoRequest,
    EchoReply,
    /// Destination unreachable, time exceeded, parameter problem, redirect.
    Error {
        msg_type: u8,
        code: u8,
    },
    Other {
        msg_type: u8,
    },
}

impl Headers {
    /// Total IP length.
    pub fn ip_len(&self) -> usize {
        self.ip_end - self.ip_off
    }

    /// True for protocols with ports we translate and track.
    pub fn has_ports(&self) -> bool {
        matches!(self.proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
    }
}

/// Parse the IPv4 header at `ip_off` and the transport header after it.
///
/// Drops: truncated or inconsistent headers (`malformed`), a header checksum
/// that does not verify (`bad-ip-checksum`). Non-first fragments carry no
/// transport header: their ports read as zero and `fragment` is set — the
/// caller decides (see the pipeline's fragment rule).
pub fn parse_ipv4(packet: &[u8], ip_off: usize) -> Result<Headers, DropReason> {
    match parse_common(packet, ip_off) {
        Some(h) => Ok(h),
        None => parse_ipv4_general(packet, ip_off),
    }
}

/// The common case of [`parse_ipv4`] read at fixed offsets: an IPv4 header
/// without options (IHL 5), not a fragment, carrying a complete UDP or TCP
/// header. `Some` only for packets [`parse_ipv4`] accepts, and then with
/// exactly the headers it returns; `None` for everything else (including
/// every packet it would drop), which then takes the general parser so that
/// the drop reason stays the same.
#[inline(always)]
pub fn parse_common(packet: &[u8], ip_off: usize) -> Option<Headers> {
    let rest = packet.get(ip_off..)?;
    let ip: &[u8; 20] = rest.get(..20)?.try_into().ok()?;
    // Version 4, IHL 5.
    if ip[0] != 0x45 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < 20 || total > rest.len() {
        return None;
    }
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    // MF or a fragment offset: the general parser's fragment rule.
    if flags_frag & 0x3fff != 0 {
        return None;
    }
    if !checksum::verify_ipv4_header(ip) {
        return None;
    }
    let proto = ip[9];
    let l4 = rest.get(20..total)?;
    let (sport, dport, tcp_flags) = match proto {
        ip_proto::UDP => {
            let udp: &[u8; 8] = l4.get(..8)?.try_into().ok()?;
            let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            if len < 8 || len > l4.len() {
                return None;
            }
            (
                u16::from_be_bytes([udp[0], udp[1]]),
                u16::from_be_bytes([udp[2], udp[3]]),
                0,
            )
        }
        ip_proto::TCP => {
            let tcp: &[u8; 20] = l4.get(..20)?.try_into().ok()?;
            let hl = usize::from(tcp[12] >> 4) * 4;
            if hl < 20 || hl > l4.len() {
                return None;
            }
            (
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
                tcp[13],
            )
        }
        _ => return None,
    };
    Some(Headers {
        ip_off,
        l4_off: ip_off + 20,
        ip_end: ip_off + total,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        proto,
        ttl: ip[8],
        dont_frag: flags_frag & 0x4000 != 0,
        fragment: false,
        sport,
        dport,
        tcp_flags,
        icmp: None,
    })
}

/// [`parse_ipv4`] for any packet: options, fragments, every protocol.
fn parse_ipv4_general(packet: &[u8], ip_off: usize) -> Result<Headers, DropReason> {
    let ip_bytes = packet.get(ip_off..).ok_or(DropReason::Malformed)?;
    let ip = Ipv4Packet::new_checked(ip_bytes).map_err(|_| DropReason::Malformed)?;
    if !ip.verify_checksum() {
        return Err(DropReason::BadIpChecksum);
    }
    let l4_off = ip_off + ip.header_len();
    let ip_end = ip_off + usize::from(ip.total_len());
    let mut h = Headers {
        ip_off,
        l4_off,
        ip_end,
        src: ip.src(),
        dst: ip.dst(),
        proto: ip.protocol(),
        ttl: ip.ttl(),
        dont_frag: ip.dont_frag(),
        fragment: ip.is_fragment(),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: None,
    };
    if ip.frag_offset() != 0 {
        // Only the first fragment carries the transport header.
        return Ok(h);
    }
    let l4 = packet.get(l4_off..ip_end).ok_or(DropReason::Malformed)?;
    match h.proto {
        ip_proto::TCP => {
            let tcp = TcpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            h.sport = tcp.src_port();
            h.dport = tcp.dst_port();
            h.tcp_flags = tcp.flags();
        }
        ip_proto::UDP => {
            let udp = UdpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            h.sport = udp.src_port();
            h.dport = udp.dst_port();
        }
        ip_proto::SCTP => {
            let sctp = SctpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            h.sport = sctp.src_port();
            h.dport = sctp.dst_port();
        }
        ip_proto::ICMP => {
            let icmp = IcmpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            let (t, c) = (icmp.msg_type(), icmp.code());
            h.icmp = Some(match t {
                crate::wire::icmp::ECHO_REQUEST | crate::wire::icmp::ECHO_REPLY => {
                    // Echo flows are tracked by identifier in both port slots.
                    h.sport = icmp.echo_ident();
                    h.dport = h.sport;
                    if t == crate::wire::icmp::ECHO_REQUEST {
                        IcmpKind::EchoRequest
                    } else {
                        IcmpKind::EchoReply
                    }
                }
                _ if icmp.is_error() => IcmpKind::Error {
                    msg_type: t,
                    code: c,
                },
                _ => IcmpKind::Other { msg_type: t },
            });
        }
        _ => {}
    }
    Ok(h)
}

/// Ethernet source and destination of a frame (checked length).
pub fn ethernet(packet: &[u8]) -> Result<EthernetFrame<&[u8]>, DropReason> {
    EthernetFrame::new_checked(packet).map_err(|_| DropReason::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Ethernet + IPv4 + TCP or UDP, built by etherparse.
    fn packet(tcp: bool, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4(
            [10, 244, 1, 2],
            [10, 96, 0, 10],
            ttl,
        );
        let mut v = Vec::new();
        if tcp {
            b.tcp(40000, 80, 7, 1000)
                .syn()
                .write(&mut v, payload)
                .unwrap();
        } else {
            b.udp(40000, 53).write(&mut v, payload).unwrap();
        }
        v
    }

    #[test]
    fn common_case_is_taken_for_plain_tcp_and_udp() {
        for tcp in [false, true] {
            let p = packet(tcp, 64, b"hello");
            let h = parse_common(&p, 14).expect("common case");
            assert_eq!(Ok(h), parse_ipv4_general(&p, 14));
            assert_eq!((h.sport, h.ttl, h.l4_off), (40000, 64, 34));
        }
    }

    proptest! {
        /// Whatever the bytes, the fixed-offset parser either declines or
        /// returns exactly what the general parser returns.
        #[test]
        fn common_case_agrees_with_the_general_parser(
            tcp in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
            edits in proptest::collection::vec((0usize..74, any::<u8>()), 0..4),
            cut in 0usize..8,
            fix_checksum in any::<bool>(),
        ) {
            let mut p = packet(tcp, 64, &payload);
            for (at, v) in edits {
                if let Some(b) = p.get_mut(at) {
                    *b = v;
                }
            }
            if fix_checksum && p.len() >= 34 {
                // Keep the header checksum right so the edits reach the
                // later checks.
                p[24] = 0;
                p[25] = 0;
                let ihl = usize::from(p[14] & 0x0f) * 4;
                if ihl >= 20 && 14 + ihl <= p.len() {
                    let c = crate::wire::checksum::fold(crate::wire::checksum::sum(&p[14..14 + ihl]));
                    p[24..26].copy_from_slice(&c.to_be_bytes());
                }
            }
            p.truncate(p.len().saturating_sub(cut));
            let general = parse_ipv4_general(&p, 14);
            if let Some(h) = parse_common(&p, 14) {
                prop_assert_eq!(Ok(h), general);
            }
            prop_assert_eq!(parse_ipv4(&p, 14), general);
        }
    }
}
