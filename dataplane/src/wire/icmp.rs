//! ICMPv4 messages (RFC 792) and error generation.
//!
//! The view covers exactly one ICMP message: build it over the IPv4 payload
//! ([`super::Ipv4Packet::payload`]); the checksum covers the whole buffer.
//! `IcmpPacket::new_checked` requires the 8-byte header; no accessor can
//! panic afterwards.
//!
//! [`write_icmp_error`] and [`write_icmp_error_in_place`] build
//! IPv4 + ICMP error messages quoting the original IP header and the first
//! 8 bytes of its payload (RFC 792), with the next-hop MTU of RFC 1191 for
//! "fragmentation needed". They refuse (with [`WireError::NotAllowed`]) the
//! cases RFC 1122 section 3.2.2 and RFC 1812 section 4.3.2.7 forbid: an
//! error about an ICMP error, about a non-first fragment, about a packet to
//! a multicast or limited-broadcast address, or about a packet whose source
//! does not name a single host.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::{be16, ip_proto, put16, Field, WireError};

/// Echo reply.
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const DEST_UNREACH: u8 = 3;
/// Source quench (deprecated by RFC 6633, still an error message).
pub const SOURCE_QUENCH: u8 = 4;
/// Redirect.
pub const REDIRECT: u8 = 5;
/// Echo request.
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded.
pub const TIME_EXCEEDED: u8 = 11;
/// Parameter problem.
pub const PARAM_PROBLEM: u8 = 12;

/// Destination unreachable: network unreachable.
pub const NET_UNREACH: u8 = 0;
/// Destination unreachable: host unreachable.
pub const HOST_UNREACH: u8 = 1;
/// Destination unreachable: protocol unreachable.
pub const PROTO_UNREACH: u8 = 2;
/// Destination unreachable: port unreachable.
pub const PORT_UNREACH: u8 = 3;
/// Destination unreachable: fragmentation needed and DF set (RFC 1191).
pub const FRAG_NEEDED: u8 = 4;
/// Destination unreachable: communication administratively prohibited
/// (RFC 1812 section 5.2.7.1).
pub const ADMIN_PROHIBITED: u8 = 13;
/// Time exceeded: TTL exceeded in transit.
pub const TTL_EXCEEDED: u8 = 0;
/// Time exceeded: fragment reassembly time exceeded.
pub const REASSEMBLY_EXCEEDED: u8 = 1;

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ: Field = 6..8;
    /// RFC 1191: the low 16 bits of the "unused" word of type 3 code 4.
    pub const NEXT_HOP_MTU: Field = 6..8;
    pub const REST: Field = 4..8;
    pub const PAYLOAD: usize = 8;
}

/// True for ICMP error message types (RFC 1122 section 3.2.2).
pub const fn is_error_type(msg_type: u8) -> bool {
    matches!(
        msg_type,
        DEST_UNREACH | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAM_PROBLEM
    )
}

/// A view of an ICMPv4 message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Length of the ICMP header (type, code, checksum, 4 bytes of rest).
    pub const HEADER_LEN: usize = field::PAYLOAD;

    /// Wraps `buffer` without validation; accessors may panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The validation of [`Self::new_checked`].
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Identifier of an echo request/reply.
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    /// Sequence number of an echo request/reply.
    pub fn echo_seq(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQ.start)
    }

    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191 section
    /// 4; 0 from routers predating it).
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buffer.as_ref(), field::NEXT_HOP_MTU.start)
    }

    /// True for error messages (types 3, 4, 5, 11, 12).
    pub fn is_error(&self) -> bool {
        is_error_type(self.msg_type())
    }

    /// Bytes after the 8-byte header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// For error messages, the quoted original datagram (its IP header and
    /// at least 8 bytes of its payload, RFC 792); `None` otherwise.
    pub fn inner(&self) -> Option<&[u8]> {
        self.is_error().then(|| self.payload())
    }

    /// True if the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the type (checksum not updated).
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[field::TYPE] = t;
    }

    /// Sets the code (checksum not updated).
    pub fn set_code(&mut self, c: u8) {
        self.buffer.as_mut()[field::CODE] = c;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, c);
    }

    /// Sets the echo identifier (checksum not updated).
    pub fn set_echo_ident(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::ECHO_IDENT.start, v);
    }

    /// Sets the echo sequence number (checksum not updated).
    pub fn set_echo_seq(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::ECHO_SEQ.start, v);
    }

    /// Sets the whole 4-byte "rest of header" word (checksum not updated).
    pub fn set_rest_of_header(&mut self, v: u32) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the next-hop MTU field (checksum not updated).
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        put16(self.buffer.as_mut(), field::NEXT_HOP_MTU.start, mtu);
    }

    /// Sets the echo identifier and updates the checksum (RFC 1624), for
    /// NAT of echo flows keyed by identifier.
    pub fn set_echo_ident_incremental(&mut self, v: u16) {
        let c = checksum::update_u16(self.checksum(), self.echo_ident(), v);
        self.set_echo_ident(v);
        self.set_checksum(c);
    }

    /// Computes and stores the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::fold(checksum::sum(self.buffer.as_ref()));
        self.set_checksum(c);
    }

    /// Bytes after the 8-byte header, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// Bytes of the original datagram an error quotes: its header plus up to 8
/// bytes of payload (RFC 792).
fn quote_len<T: AsRef<[u8]>>(orig: &Ipv4Packet<T>) -> usize {
    usize::min(orig.header_len() + 8, usize::from(orig.total_len()))
}

/// Whether RFC 1122 section 3.2.2 / RFC 1812 section 4.3.2.7 allow an ICMP
/// error about `orig` (a checked IPv4 packet).
///
/// Limited-broadcast and directed-broadcast destinations at the link layer
/// are the caller's knowledge; this checks what the IP header shows.
pub fn icmp_error_allowed<T: AsRef<[u8]>>(orig: &Ipv4Packet<T>) -> bool {
    // Not about a non-first fragment.
    if orig.frag_offset() != 0 {
        return false;
    }
    // Not to a multicast or limited-broadcast destination.
    let dst = orig.dst();
    if dst.is_multicast() || dst.is_broadcast() {
        return false;
    }
    // Not from a source that does not define a single host: unspecified,
    // loopback ("this host" class), multicast, broadcast, class E.
    let src = orig.src();
    if src.is_unspecified()
        || src.is_loopback()
        || src.is_multicast()
        || src.is_broadcast()
        || src.octets()[0] >= 240
    {
        return false;
    }
    // Not about an ICMP error message (an unreadable ICMP type counts as
    // one: never risk an error loop).
    if orig.protocol() == ip_proto::ICMP {
        return match orig.payload().first() {
            Some(&t) => !is_error_type(t),
            None => false,
        };
    }
    true
}

/// Validates the request shared by both builders; returns the quote length.
fn check_error_request(msg_type: u8, original: &[u8]) -> Result<usize, WireError> {
    if !is_error_type(msg_type) {
        return Err(WireError::Unsupported);
    }
    let orig = Ipv4Packet::new_checked(original)?;
    if !icmp_error_allowed(&orig) {
        return Err(WireError::NotAllowed);
    }
    Ok(quote_len(&orig))
}

/// Writes the IPv4 and ICMP headers in front of a quote already placed at
/// `out[28..28 + quote]`, and the ICMP checksum. `out` holds exactly the
/// message.
fn emit_error_headers(
    out: &mut [u8],
    msg_type: u8,
    code: u8,
    next_hop_mtu: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
) -> Result<(), WireError> {
    let (ip, icmp) = out
        .split_at_mut_checked(Ipv4Repr::HEADER_LEN)
        .ok_or(WireError::BufferTooSmall)?;
    Ipv4Repr {
        src,
        dst,
        protocol: ip_proto::ICMP,
        payload_len: icmp.len(),
        ttl,
        ident: 0,
        dont_frag: false,
    }
    .emit(ip)?;
    let mut m = IcmpPacket::new_checked(icmp).map_err(|_| WireError::BufferTooSmall)?;
    m.set_msg_type(msg_type);
    m.set_code(code);
    m.set_rest_of_header(0);
    if msg_type == DEST_UNREACH && code == FRAG_NEEDED {
        m.set_next_hop_mtu(next_hop_mtu);
    }
    m.fill_checksum();
    Ok(())
}

/// Length of the IPv4 + ICMP headers in front of the quote.
const ERROR_HEADERS_LEN: usize = Ipv4Repr::HEADER_LEN + IcmpPacket::<&[u8]>::HEADER_LEN;

/// Writes into `out` an IPv4 + ICMP error message (no Ethernet header) from
/// `src` to `dst` about `original_ip_packet`, and returns its length.
///
/// The IPv4 header has ident 0, DF clear and the given TTL. `next_hop_mtu`
/// is written only for [`DEST_UNREACH`]/[`FRAG_NEEDED`] (RFC 1191) and
/// ignored otherwise. The quote is the original header with options plus
/// up to 8 payload bytes.
///
/// Errors: [`WireError::Unsupported`] if `msg_type` is not an error type;
/// the original's parse error; [`WireError::NotAllowed`] (see the module
/// documentation); [`WireError::BufferTooSmall`].
#[expect(clippy::too_many_arguments, reason = "the pipeline's agreed signature")]
pub fn write_icmp_error(
    out: &mut [u8],
    msg_type: u8,
    code: u8,
    next_hop_mtu: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    original_ip_packet: &[u8],
) -> Result<usize, WireError> {
    let quote = check_error_request(msg_type, original_ip_packet)?;
    let total = ERROR_HEADERS_LEN + quote;
    let out = out.get_mut(..total).ok_or(WireError::BufferTooSmall)?;
    out[ERROR_HEADERS_LEN..].copy_from_slice(&original_ip_packet[..quote]);
    emit_error_headers(out, msg_type, code, next_hop_mtu, src, dst, ttl)?;
    Ok(total)
}

/// Like [`write_icmp_error`], but `buf` starts with the original IPv4
/// packet and is overwritten with the error message (the quote is moved
/// 28 bytes forward first). `buf` must have room for the message: 28 bytes
/// plus the quote (at most 96 bytes in all). On error `buf` is unchanged.
pub fn write_icmp_error_in_place(
    buf: &mut [u8],
    msg_type: u8,
    code: u8,
    next_hop_mtu: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
) -> Result<usize, WireError> {
    let quote = check_error_request(msg_type, buf)?;
    let total = ERROR_HEADERS_LEN + quote;
    let out = buf.get_mut(..total).ok_or(WireError::BufferTooSmall)?;
    out.copy_within(..quote, ERROR_HEADERS_LEN);
    emit_error_headers(out, msg_type, code, next_hop_mtu, src, dst, ttl)?;
    Ok(total)
}

/// Turns the IPv4 ICMP echo request in `ip_packet` into its echo reply in
/// place: swaps the addresses, sets `ttl`, changes the type to 0, and
/// updates both checksums incrementally. Returns the packet's total length.
///
/// Errors: the packet's parse errors; [`WireError::Unsupported`] if it is
/// not an unfragmented ICMP echo request.
pub fn echo_request_to_reply(ip_packet: &mut [u8], ttl: u8) -> Result<usize, WireError> {
    let mut ip = Ipv4Packet::new_checked(ip_packet)?;
    if ip.protocol() != ip_proto::ICMP || ip.is_fragment() {
        return Err(WireError::Unsupported);
    }
    {
        let icmp = IcmpPacket::new_checked(ip.payload())?;
        if icmp.msg_type() != ECHO_REQUEST || icmp.code() != 0 {
            return Err(WireError::Unsupported);
        }
    }
    // Swapping two summed words leaves the header checksum unchanged.
    let (src, dst) = (ip.src(), ip.dst());
    ip.set_src(dst);
    ip.set_dst(src);
    ip.set_ttl_incremental(ttl);
    let total = usize::from(ip.total_len());
    let mut icmp = IcmpPacket::new_unchecked(ip.payload_mut());
    // Type and code share the first word.
    let old = u16::from(ECHO_REQUEST) << 8;
    let new = u16::from(ECHO_REPLY) << 8;
    let c = checksum::update_u16(icmp.checksum(), old, new);
    icmp.set_msg_type(ECHO_REPLY);
    icmp.set_checksum(c);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

    fn echo(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(CLIENT.octets(), NODE.octets(), 64)
            .icmpv4_echo_request(0x1234, 7);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn udp_to_svc(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(CLIENT.octets(), SVC.octets(), 64).udp(5353, 53);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn oracle_icmp_ok(msg: &[u8]) -> bool {
        let s = etherparse::Icmpv4Slice::from_slice(msg).unwrap();
        s.header().icmp_type.calc_checksum(s.payload()) == s.checksum()
    }

    #[test]
    fn parse_echo() {
        let ip = echo(b"abcdefgh");
        let m = IcmpPacket::new_checked(&ip[20..]).unwrap();
        assert_eq!(m.msg_type(), ECHO_REQUEST);
        assert_eq!(m.code(), 0);
        assert_eq!(m.echo_ident(), 0x1234);
        assert_eq!(m.echo_seq(), 7);
        assert!(m.verify_checksum());
        assert!(!m.is_error());
        assert_eq!(m.inner(), None);
        assert_eq!(m.payload(), b"abcdefgh");
        assert_eq!(
            IcmpPacket::new_checked(&ip[20..27]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn port_unreachable_golden() {
        let orig = udp_to_svc(b"0123456789");
        let mut out = [0xa5u8; 64];
        let n = write_icmp_error(
            &mut out,
            DEST_UNREACH,
            PORT_UNREACH,
            1400,
            SVC,
            CLIENT,
            64,
            &orig,
        )
        .unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let mut expected = vec![
            0x45, 0x00, 0x00, 56, 0x00, 0x00, 0x00, 0x00, 64, 1, 0, 0, 10, 96, 0, 30, 192, 168, 50,
            100, // IPv4, checksum zeroed below
            3, 3, 0, 0, 0, 0, 0, 0, // ICMP: mtu ignored for code 3
        ];
        expected.extend_from_slice(&orig[..28]);
        let mut got = out;
        got[10..12].fill(0);
        got[22..24].fill(0);
        assert_eq!(&got[..n], &expected[..]);
        assert_eq!(&out[n..], &[0xa5; 8]);
        // The original as etherparse built it, and the checksums, computed
        // independently (Python, RFC 1071).
        assert_eq!(
            orig,
            [
                0x45, 0x00, 0x00, 0x26, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x3d, 0x3d, 0xc0, 0xa8,
                0x32, 0x64, 0x0a, 0x60, 0x00, 0x1e, 0x14, 0xe9, 0x00, 0x35, 0x00, 0x12, 0xe8, 0x17,
                b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', b'9'
            ]
        );
        assert_eq!(&out[10..12], &[0x7d, 0x3b]);
        assert_eq!(&out[22..24], &[0xff, 0xb4]);
        let p = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(p.verify_checksum());
        assert!(oracle_icmp_ok(p.payload()));
        let m = IcmpPacket::new_checked(p.payload()).unwrap();
        assert!(m.is_error());
        assert_eq!(m.inner(), Some(&orig[..28]));
    }

    #[test]
    fn frag_needed_carries_mtu_and_in_place_matches() {
        let orig = udp_to_svc(&[7u8; 1500]);
        let mut out = [0u8; 100];
        let n = write_icmp_error(
            &mut out,
            DEST_UNREACH,
            FRAG_NEEDED,
            1450,
            NODE,
            CLIENT,
            64,
            &orig,
        )
        .unwrap();
        let m = IcmpPacket::new_checked(&out[20..n]).unwrap();
        assert_eq!(m.next_hop_mtu(), 1450);
        assert_eq!(&out[24..28], &[0, 0, 0x05, 0xaa]);
        assert!(oracle_icmp_ok(&out[20..n]));

        let mut buf = orig.clone();
        let n2 =
            write_icmp_error_in_place(&mut buf, DEST_UNREACH, FRAG_NEEDED, 1450, NODE, CLIENT, 64)
                .unwrap();
        assert_eq!(n2, n);
        assert_eq!(&buf[..n2], &out[..n]);
    }

    #[test]
    fn quote_keeps_options_and_short_payloads() {
        // 24-byte header with options, 3-byte payload: quote is 27 bytes.
        let mut orig = vec![0u8; 27];
        orig[0] = 0x46;
        orig[2..4].copy_from_slice(&27u16.to_be_bytes());
        orig[8] = 64;
        orig[9] = 17;
        orig[12..16].copy_from_slice(&CLIENT.octets());
        orig[16..20].copy_from_slice(&SVC.octets());
        orig[20..24].copy_from_slice(&[1, 1, 1, 0]);
        let mut out = [0u8; 128];
        let n = write_icmp_error(
            &mut out,
            TIME_EXCEEDED,
            TTL_EXCEEDED,
            0,
            NODE,
            CLIENT,
            64,
            &orig,
        )
        .unwrap();
        assert_eq!(n, 28 + 27);
        assert_eq!(&out[28..n], &orig[..]);
        assert!(oracle_icmp_ok(&out[20..n]));
    }

    #[test]
    fn refused_cases() {
        let mut out = [0u8; 128];
        let orig = udp_to_svc(b"x");
        let w = |out: &mut [u8], t, o: &[u8]| write_icmp_error(out, t, 0, 0, NODE, CLIENT, 64, o);
        assert_eq!(w(&mut out, ECHO_REPLY, &orig), Err(WireError::Unsupported));
        assert_eq!(
            w(&mut out, DEST_UNREACH, &orig[..10]),
            Err(WireError::Truncated)
        );
        assert_eq!(
            w(&mut out[..50], DEST_UNREACH, &orig),
            Err(WireError::BufferTooSmall)
        );
        // About an ICMP error.
        let mut err = [0u8; 64];
        let n = w(&mut err, DEST_UNREACH, &orig).unwrap();
        assert_eq!(
            w(&mut out, DEST_UNREACH, &err[..n]),
            Err(WireError::NotAllowed)
        );
        // About an echo request: fine.
        assert!(w(&mut out, DEST_UNREACH, &echo(b"")).is_ok());
        // Non-first fragment.
        let mut frag = orig.clone();
        Ipv4Packet::new_checked(&mut frag[..])
            .unwrap()
            .set_flags_frag(false, false, 8);
        assert_eq!(w(&mut out, DEST_UNREACH, &frag), Err(WireError::NotAllowed));
        // Multicast destination, unspecified and broadcast sources.
        for (s, d) in [
            (CLIENT, Ipv4Addr::new(224, 0, 0, 251)),
            (CLIENT, Ipv4Addr::BROADCAST),
            (Ipv4Addr::UNSPECIFIED, SVC),
            (Ipv4Addr::new(127, 0, 0, 1), SVC),
            (Ipv4Addr::new(240, 0, 0, 1), SVC),
        ] {
            let mut p = orig.clone();
            let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
            ip.set_src(s);
            ip.set_dst(d);
            assert_eq!(
                w(&mut out, DEST_UNREACH, &p),
                Err(WireError::NotAllowed),
                "{s} -> {d}"
            );
        }
    }

    #[test]
    fn echo_reply_in_place() {
        let mut ip = echo(b"payload!");
        let n = echo_request_to_reply(&mut ip, 64).unwrap();
        assert_eq!(n, ip.len());
        let p = Ipv4Packet::new_checked(&ip[..]).unwrap();
        assert_eq!((p.src(), p.dst()), (NODE, CLIENT));
        assert!(p.verify_checksum());
        let m = IcmpPacket::new_checked(p.payload()).unwrap();
        assert_eq!(m.msg_type(), ECHO_REPLY);
        assert_eq!((m.echo_ident(), m.echo_seq()), (0x1234, 7));
        assert!(oracle_icmp_ok(p.payload()));
        // A reply is not a request.
        assert_eq!(
            echo_request_to_reply(&mut ip, 64),
            Err(WireError::Unsupported)
        );
    }
}
