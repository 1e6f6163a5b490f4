//! TCP headers (RFC 9293, formerly RFC 793) and RST generation.
//!
//! A TCP segment has no length field of its own: the view covers exactly the
//! segment, so build it over the IPv4 payload ([`super::Ipv4Packet::payload`]).
//! `TcpPacket::new_checked` validates that the buffer holds 20 bytes, that
//! `20 <= data offset * 4 <= buffer length`, and that the segment is at most
//! 65535 bytes (the pseudo header length is 16 bits). No accessor can panic
//! after that.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::{be16, be32, ip_proto, put16, put32, Field, WireError};

/// FIN flag.
pub const FIN: u8 = 0x01;
/// SYN flag.
pub const SYN: u8 = 0x02;
/// RST flag.
pub const RST: u8 = 0x04;
/// PSH flag.
pub const PSH: u8 = 0x08;
/// ACK flag.
pub const ACK: u8 = 0x10;
/// URG flag.
pub const URG: u8 = 0x20;
/// ECE flag (RFC 3168).
pub const ECE: u8 = 0x40;
/// CWR flag (RFC 3168).
pub const CWR: u8 = 0x80;

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ: Field = 4..8;
    pub const ACK: Field = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// A view of a TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Length of a header without options.
    pub const HEADER_LEN: usize = 20;

    /// Wraps `buffer` without validation; accessors may panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after the checks in the module documentation.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The validation of [`Self::new_checked`].
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b.len() > usize::from(u16::MAX) {
            return Err(WireError::BadLength);
        }
        let hl = self.header_len();
        if hl < Self::HEADER_LEN || hl > b.len() {
            return Err(WireError::BadHeaderLen);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ.start)
    }

    /// Acknowledgment number (meaningful when [`ACK`] is set).
    pub fn ack(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK.start)
    }

    /// Data offset field (header length in 32-bit words).
    pub fn data_offset(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_OFFSET] >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// The flags byte (CWR ECE URG ACK PSH RST SYN FIN; the NS bit of byte
    /// 12 is not included).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True if every flag in `mask` is set.
    pub fn has_flags(&self, mask: u8) -> bool {
        self.flags() & mask == mask
    }

    /// Window field.
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW.start)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// Options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..self.header_len()]
    }

    /// Payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Segment length in sequence space: payload plus one for SYN and one
    /// for FIN (RFC 9293 section 3.4).
    pub fn seg_len(&self) -> u32 {
        // The buffer is at most 65535 bytes, so this cannot overflow.
        self.payload().len() as u32
            + u32::from(self.flags() & SYN != 0)
            + u32::from(self.flags() & FIN != 0)
    }

    fn sum_with_pseudo(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let b = self.buffer.as_ref();
        // `check_len` bounded the length to 16 bits.
        let len = b.len() as u16;
        checksum::pseudo_header_v4(src, dst, ip_proto::TCP, len) + checksum::sum(b)
    }

    /// True if the checksum verifies against the IPv4 pseudo header.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::fold(self.sum_with_pseudo(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port (checksum not updated).
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    /// Sets the destination port (checksum not updated).
    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    /// Sets the sequence number (checksum not updated).
    pub fn set_seq(&mut self, seq: u32) {
        put32(self.buffer.as_mut(), field::SEQ.start, seq);
    }

    /// Sets the acknowledgment number (checksum not updated).
    pub fn set_ack(&mut self, ack: u32) {
        put32(self.buffer.as_mut(), field::ACK.start, ack);
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60); clears
    /// the reserved bits and NS.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = (((len / 4) & 0x0f) as u8) << 4;
    }

    /// Sets the flags byte (checksum not updated).
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window (checksum not updated).
    pub fn set_window(&mut self, window: u16) {
        put16(self.buffer.as_mut(), field::WINDOW.start, window);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, csum: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, csum);
    }

    /// Sets the urgent pointer (checksum not updated).
    pub fn set_urgent(&mut self, urgent: u16) {
        put16(self.buffer.as_mut(), field::URGENT.start, urgent);
    }

    /// Computes and stores the checksum over the pseudo header and the
    /// whole segment.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::fold(self.sum_with_pseudo(src, dst));
        self.set_checksum(c);
    }

    /// Sets the source port and updates the checksum (RFC 1624).
    pub fn set_src_port_incremental(&mut self, port: u16) {
        let c = checksum::update_u16(self.checksum(), self.src_port(), port);
        self.set_src_port(port);
        self.set_checksum(c);
    }

    /// Sets the destination port and updates the checksum (RFC 1624).
    pub fn set_dst_port_incremental(&mut self, port: u16) {
        let c = checksum::update_u16(self.checksum(), self.dst_port(), port);
        self.set_dst_port(port);
        self.set_checksum(c);
    }

    /// Updates the checksum for an IPv4 address of the pseudo header that
    /// changed from `old` to `new`.
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        let c = checksum::update_addr(self.checksum(), old, new);
        self.set_checksum(c);
    }

    /// Payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

/// A RST segment answering another segment (RFC 9293 section 3.10.7.1,
/// "Reset Generation", state CLOSED; RFC 793 page 36):
///
/// - if the offending segment has ACK: `<SEQ=SEG.ACK><CTL=RST>`;
/// - otherwise: `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`.
///
/// Addresses and ports are the offending segment's, swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRstRepr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    /// `Some` when the RST carries ACK.
    pub ack: Option<u32>,
}

impl TcpRstRepr {
    /// Bytes [`Self::emit`] writes: IPv4 (20) + TCP (20).
    pub const LEN: usize = Ipv4Repr::HEADER_LEN + TcpPacket::<&[u8]>::HEADER_LEN;

    /// The RST answering `seg`, which travelled from `seg_src` to
    /// `seg_dst`. `None` if `seg` is itself a RST: a RST is never answered
    /// (RFC 9293 section 3.10.7.1).
    pub fn answering<T: AsRef<[u8]>>(
        seg_src: Ipv4Addr,
        seg_dst: Ipv4Addr,
        seg: &TcpPacket<T>,
    ) -> Option<Self> {
        if seg.flags() & RST != 0 {
            return None;
        }
        let (seq, ack) = if seg.flags() & ACK != 0 {
            (seg.ack(), None)
        } else {
            (0, Some(seg.seq().wrapping_add(seg.seg_len())))
        };
        Some(TcpRstRepr {
            src: seg_dst,
            dst: seg_src,
            src_port: seg.dst_port(),
            dst_port: seg.src_port(),
            seq,
            ack,
        })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes IPv4 (DF set, ident 0) + TCP RST with correct checksums into
    /// `out[..40]`; returns 40.
    pub fn emit(&self, out: &mut [u8], ttl: u8) -> Result<usize, WireError> {
        let out = out.get_mut(..Self::LEN).ok_or(WireError::BufferTooSmall)?;
        let (ip, tcp) = out.split_at_mut(Ipv4Repr::HEADER_LEN);
        Ipv4Repr {
            src: self.src,
            dst: self.dst,
            protocol: ip_proto::TCP,
            payload_len: TcpPacket::<&[u8]>::HEADER_LEN,
            ttl,
            ident: 0,
            dont_frag: true,
        }
        .emit(ip)?;
        let mut t = TcpPacket::new_unchecked(tcp);
        t.set_src_port(self.src_port);
        t.set_dst_port(self.dst_port);
        t.set_seq(self.seq);
        t.set_ack(self.ack.unwrap_or(0));
        t.set_header_len(TcpPacket::<&[u8]>::HEADER_LEN);
        t.set_flags(if self.ack.is_some() { RST | ACK } else { RST });
        t.set_window(0);
        t.set_urgent(0);
        t.fill_checksum(self.src, self.dst);
        Ok(Self::LEN)
    }
}

/// Writes into `out` an IPv4 + TCP RST (no Ethernet header) answering the
/// IPv4 packet `original_ip_packet`, per [`TcpRstRepr`]; returns the bytes
/// written (40).
///
/// Errors: the original's own parse errors; [`WireError::Unsupported`] if it
/// is not TCP or is a non-first fragment (no TCP header to answer);
/// [`WireError::NotAllowed`] if it is a RST; [`WireError::BufferTooSmall`].
pub fn write_tcp_rst(
    out: &mut [u8],
    original_ip_packet: &[u8],
    ttl: u8,
) -> Result<usize, WireError> {
    let ip = Ipv4Packet::new_checked(original_ip_packet)?;
    if ip.protocol() != ip_proto::TCP || ip.frag_offset() != 0 {
        return Err(WireError::Unsupported);
    }
    let seg = TcpPacket::new_checked(ip.payload())?;
    let rst = TcpRstRepr::answering(ip.src(), ip.dst(), &seg).ok_or(WireError::NotAllowed)?;
    rst.emit(out, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

    fn syn(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(CLIENT.octets(), SERVICE.octets(), 64)
            .tcp(43210, 80, 0x0102_0304, 64240)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn oracle_checksum(ip: &[u8]) -> u16 {
        let (iph, rest) = etherparse::Ipv4Header::from_slice(ip).unwrap();
        let (tcph, payload) = etherparse::TcpHeader::from_slice(rest).unwrap();
        tcph.calc_checksum_ipv4(&iph, payload).unwrap()
    }

    #[test]
    fn parse_etherparse_segment() {
        let ip = syn(b"");
        let p = TcpPacket::new_checked(&ip[20..]).unwrap();
        assert_eq!(p.src_port(), 43210);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq(), 0x0102_0304);
        assert_eq!(p.flags(), SYN);
        assert!(p.has_flags(SYN));
        assert_eq!(p.window(), 64240);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.seg_len(), 1);
        assert!(p.verify_checksum(CLIENT, SERVICE));
        assert!(!p.verify_checksum(CLIENT, CLIENT));
    }

    #[test]
    fn validation() {
        let ip = syn(b"data");
        let tcp = &ip[20..];
        assert_eq!(
            TcpPacket::new_checked(&tcp[..19]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = tcp.to_vec();
        bad[12] = 0x40; // 16 bytes
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::BadHeaderLen
        );
        bad[12] = 0x70; // 28 > 24
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::BadHeaderLen
        );
        bad[12] = 0x60; // 24 <= 24: the payload becomes options
        let p = TcpPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(p.options(), b"data");
        assert!(p.payload().is_empty());
    }

    #[test]
    fn rst_for_syn_golden() {
        let ip = syn(b"");
        let mut out = [0xa5u8; 44];
        assert_eq!(write_tcp_rst(&mut out, &ip, 64).unwrap(), 40);
        #[rustfmt::skip]
        let expected: [u8; 40] = [
            // IPv4: 45 00 len 40, ident 0, DF, ttl 64, TCP, checksum
            0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00,
            10, 96, 0, 20, 10, 244, 1, 5,
            // TCP: 80 -> 43210, seq 0, ack = ISN + 1, offset 5, RST|ACK, win 0
            0x00, 0x50, 0xa8, 0xca, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x05,
            0x50, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        // Compare everything but the two checksums, then check those with
        // etherparse.
        let mut got = out;
        got[10..12].fill(0);
        got[36..38].fill(0);
        assert_eq!(&got[..40], &expected[..]);
        assert_eq!(&out[40..], &[0xa5; 4]);
        // Checksums computed independently (Python, RFC 1071).
        assert_eq!(&out[10..12], &[0x24, 0x64]);
        assert_eq!(&out[36..38], &[0xec, 0x42]);
        let (iph, _) = etherparse::Ipv4Header::from_slice(&out[..40]).unwrap();
        assert_eq!(iph.calc_header_checksum(), iph.header_checksum);
        let c = TcpPacket::new_checked(&out[20..40]).unwrap().checksum();
        assert_eq!(c, oracle_checksum(&out[..40]));
    }

    #[test]
    fn rst_for_ack_segment_uses_its_ack() {
        let b = etherparse::PacketBuilder::ipv4(CLIENT.octets(), SERVICE.octets(), 64)
            .tcp(43210, 80, 1000, 512)
            .ack(0xdead_beef)
            .psh();
        let mut ip = Vec::new();
        b.write(&mut ip, b"GET /").unwrap();
        let mut out = [0u8; 40];
        write_tcp_rst(&mut out, &ip, 63).unwrap();
        let t = TcpPacket::new_checked(&out[20..]).unwrap();
        assert_eq!(t.flags(), RST);
        assert_eq!(t.seq(), 0xdead_beef);
        assert_eq!(t.ack(), 0);
        assert!(t.verify_checksum(SERVICE, CLIENT));
        assert_eq!(out[8], 63);
    }

    #[test]
    fn rst_seq_counts_syn_fin_and_payload() {
        let b = etherparse::PacketBuilder::ipv4(CLIENT.octets(), SERVICE.octets(), 64)
            .tcp(1, 2, u32::MAX - 1, 0)
            .syn()
            .fin();
        let mut ip = Vec::new();
        b.write(&mut ip, b"abc").unwrap();
        let seg = TcpPacket::new_checked(&ip[20..]).unwrap();
        let r = TcpRstRepr::answering(CLIENT, SERVICE, &seg).unwrap();
        assert_eq!(r.ack, Some((u32::MAX - 1).wrapping_add(5)));
    }

    #[test]
    fn rst_is_never_answered_and_errors() {
        let b = etherparse::PacketBuilder::ipv4(CLIENT.octets(), SERVICE.octets(), 64)
            .tcp(1, 2, 3, 0)
            .rst();
        let mut ip = Vec::new();
        b.write(&mut ip, b"").unwrap();
        let mut out = [0u8; 40];
        assert_eq!(write_tcp_rst(&mut out, &ip, 64), Err(WireError::NotAllowed));
        let udp = etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64).udp(1, 2);
        let mut u = Vec::new();
        udp.write(&mut u, b"").unwrap();
        assert_eq!(write_tcp_rst(&mut out, &u, 64), Err(WireError::Unsupported));
        assert_eq!(
            write_tcp_rst(&mut out[..39], &syn(b""), 64),
            Err(WireError::BufferTooSmall)
        );
    }

    proptest! {
        #[test]
        fn nat_rewrite_matches_etherparse(
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            nsport in any::<u16>(), ndport in any::<u16>(),
            nsrc in any::<u32>(), ndst in any::<u32>(),
        ) {
            let mut ip = syn(&payload);
            let (nsrc, ndst) = (Ipv4Addr::from(nsrc), Ipv4Addr::from(ndst));
            let mut p = TcpPacket::new_checked(&mut ip[20..]).unwrap();
            p.update_checksum_for_addr(CLIENT, nsrc);
            p.update_checksum_for_addr(SERVICE, ndst);
            p.set_src_port_incremental(nsport);
            p.set_dst_port_incremental(ndport);
            prop_assert!(p.verify_checksum(nsrc, ndst));
            let c = p.checksum();
            let mut ipp = Ipv4Packet::new_checked(&mut ip[..]).unwrap();
            ipp.set_src_incremental(nsrc);
            ipp.set_dst_incremental(ndst);
            prop_assert_eq!(c, oracle_checksum(&ip));
        }
    }
}
