//! Parse and validate the headers the pipeline decides on, once per packet.
//!
//! Offsets are relative to the start of the frame's packet bytes. After
//! [`parse_ipv4`] succeeds, every offset it returns is inside the packet, so
//! later stages index with checked views only for the fields they rewrite.

use std::net::Ipv4Addr;

use crate::wire::{
    ip_proto, EthernetFrame, IcmpPacket, Ipv4Packet, SctpPacket, TcpPacket, UdpPacket,
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
