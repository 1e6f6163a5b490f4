//! UDP headers (RFC 768).
//!
//! `UdpPacket::new_checked` validates that the buffer holds the 8-byte
//! header and that `8 <= length <= buffer length`; the view's payload is
//! `8..length`, so trailing bytes are ignored. No accessor can panic after
//! that.
//!
//! Checksums over IPv4: a transmitted checksum of zero means "none"
//! (RFC 768), and a computed checksum of zero is therefore sent as `0xffff`.
//! The incremental helpers keep a zero checksum zero (a NAT must not invent
//! one, RFC 3022 section 4.1 only asks it to adjust an existing one).

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, ip_proto, put16, Field, WireError};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// A view of a UDP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Length of the UDP header.
    pub const HEADER_LEN: usize = field::PAYLOAD;

    /// Wraps `buffer` without validation; accessors may panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
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
        let len = usize::from(self.len());
        if len < Self::HEADER_LEN || len > b.len() {
            return Err(WireError::BadLength);
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

    /// Length field: header plus payload.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a header field, not a container"
    )]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Checksum field (0 = none).
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Payload: `8..length`.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.len())]
    }

    /// The full checksum computation over the pseudo header and
    /// `0..length`, with whatever the checksum field holds.
    fn sum_with_pseudo(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let len = self.len();
        checksum::pseudo_header_v4(src, dst, ip_proto::UDP, len)
            + checksum::sum(&self.buffer.as_ref()[..usize::from(len)])
    }

    /// True if the checksum is absent (0) or verifies against the IPv4
    /// pseudo header of `src` and `dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::fold(self.sum_with_pseudo(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port (checksum not updated).
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    /// Sets the destination port (checksum not updated).
    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    /// Sets the length field (checksum not updated). The caller keeps it
    /// within the buffer.
    pub fn set_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::LENGTH.start, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, csum: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, csum);
    }

    /// Computes and stores the checksum over the pseudo header, header and
    /// payload (`0..length`). A computed zero is stored as `0xffff`.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::fold(self.sum_with_pseudo(src, dst));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// Applies an incremental update unless the checksum is absent.
    fn adjust(&mut self, update: impl FnOnce(u16) -> u16) {
        let old = self.checksum();
        if old == 0 {
            return;
        }
        let c = update(old);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// Sets the source port and updates a present checksum (RFC 1624).
    pub fn set_src_port_incremental(&mut self, port: u16) {
        let old = self.src_port();
        self.adjust(|c| checksum::update_u16(c, old, port));
        self.set_src_port(port);
    }

    /// Sets the destination port and updates a present checksum (RFC 1624).
    pub fn set_dst_port_incremental(&mut self, port: u16) {
        let old = self.dst_port();
        self.adjust(|c| checksum::update_u16(c, old, port));
        self.set_dst_port(port);
    }

    /// Updates a present checksum for an IPv4 address of the pseudo header
    /// that changed from `old` to `new` (the IP header is rewritten by the
    /// caller, e.g. with [`super::Ipv4Packet::set_src_incremental`]).
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.adjust(|c| checksum::update_addr(c, old, new));
    }

    /// Payload (`8..length`), mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        &mut self.buffer.as_mut()[field::PAYLOAD..len]
    }
}

/// High-level form of a UDP header, for builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Payload length (the length field minus 8).
    pub payload_len: usize,
}

impl UdpRepr {
    /// Reads a checked datagram (checksum not verified: it needs the IP
    /// addresses, see [`UdpPacket::verify_checksum`]).
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>) -> Self {
        UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.payload().len(),
        }
    }

    /// Header bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        field::PAYLOAD
    }

    /// Writes the header into `buf`, whose bytes `8..8 + payload_len` must
    /// already hold the payload. With `checksum: Some((src, dst))` the
    /// checksum is computed over that payload; with `None` it is 0 (allowed
    /// over IPv4, RFC 768).
    pub fn emit(
        &self,
        buf: &mut [u8],
        checksum: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<(), WireError> {
        let total = self
            .payload_len
            .checked_add(field::PAYLOAD)
            .ok_or(WireError::Overflow)?;
        let len = u16::try_from(total).map_err(|_| WireError::Overflow)?;
        if buf.len() < total {
            return Err(WireError::BufferTooSmall);
        }
        let mut p = UdpPacket::new_unchecked(buf);
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len(len);
        match checksum {
            Some((src, dst)) => p.fill_checksum(src, dst),
            None => p.set_checksum(0),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    /// IPv4+UDP from etherparse; returns the whole IP packet.
    fn build(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 64).udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// etherparse's own verdict on the UDP checksum of an IP packet.
    fn oracle_checksum(ip: &[u8]) -> u16 {
        let (iph, rest) = etherparse::Ipv4Header::from_slice(ip).unwrap();
        let (udph, payload) = etherparse::UdpHeader::from_slice(rest).unwrap();
        udph.calc_checksum_ipv4(&iph, payload).unwrap()
    }

    #[test]
    fn parse_etherparse_datagram() {
        let ip = build(40000, 53, b"dns?");
        let p = UdpPacket::new_checked(&ip[20..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 12);
        assert_eq!(p.payload(), b"dns?");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(10, 96, 0, 11)));
    }

    #[test]
    fn validation() {
        let ip = build(1, 2, b"abc");
        let udp = &ip[20..];
        assert_eq!(
            UdpPacket::new_checked(&udp[..7]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&udp[..10]).unwrap_err(),
            WireError::BadLength
        );
        let mut bad = udp.to_vec();
        bad[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::BadLength
        );
        bad.extend_from_slice(&[0; 4]);
        bad[4..6].copy_from_slice(&11u16.to_be_bytes());
        let p = UdpPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(p.payload(), b"abc");
    }

    #[test]
    fn zero_checksum_means_none_and_stays_none() {
        let mut ip = build(1, 2, b"abc");
        let mut p = UdpPacket::new_checked(&mut ip[20..]).unwrap();
        p.set_checksum(0);
        assert!(p.verify_checksum(SRC, Ipv4Addr::BROADCAST));
        p.set_src_port_incremental(9);
        p.set_dst_port_incremental(10);
        p.update_checksum_for_addr(SRC, DST);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.src_port(), 9);
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Find a payload word that makes the full sum 0xffff.
        let mut ip = build(1000, 2000, &[0, 0]);
        let mut p = UdpPacket::new_checked(&mut ip[20..]).unwrap();
        p.set_checksum(0);
        let rest = checksum::pseudo_header_v4(SRC, DST, 17, 10) + checksum::sum(&p.buffer[..10]);
        let fill = checksum::fold(rest); // == !folded(rest)
        p.payload_mut().copy_from_slice(&fill.to_be_bytes());
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(SRC, DST));
        // The same corner case reached incrementally.
        p.set_dst_port_incremental(2001);
        p.set_dst_port_incremental(2000);
        assert_eq!(p.checksum(), 0xffff);
    }

    #[test]
    fn emit_golden() {
        let mut buf = [0xa5u8; 14];
        buf[8..12].copy_from_slice(b"ping");
        let repr = UdpRepr {
            src_port: 0x1234,
            dst_port: 53,
            payload_len: 4,
        };
        repr.emit(&mut buf, None).unwrap();
        assert_eq!(
            buf,
            [0x12, 0x34, 0, 53, 0, 12, 0, 0, b'p', b'i', b'n', b'g', 0xa5, 0xa5]
        );
        repr.emit(&mut buf, Some((SRC, DST))).unwrap();
        let oracle = build(0x1234, 53, b"ping");
        assert_eq!(&buf[..12], &oracle[20..]);
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_checked(&buf[..]).unwrap()),
            repr
        );
        assert_eq!(
            repr.emit(&mut [0u8; 11], None),
            Err(WireError::BufferTooSmall)
        );
    }

    proptest! {
        #[test]
        fn nat_rewrite_matches_etherparse(
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            sport in any::<u16>(), dport in any::<u16>(),
            nsport in any::<u16>(), ndport in any::<u16>(),
            nsrc in any::<u32>(), ndst in any::<u32>(),
        ) {
            let mut ip = build(sport, dport, &payload);
            let (nsrc, ndst) = (Ipv4Addr::from(nsrc), Ipv4Addr::from(ndst));
            {
                let mut ipp = super::super::Ipv4Packet::new_checked(&mut ip[..]).unwrap();
                ipp.set_src_incremental(nsrc);
                ipp.set_dst_incremental(ndst);
            }
            let mut p = UdpPacket::new_checked(&mut ip[20..]).unwrap();
            p.update_checksum_for_addr(SRC, nsrc);
            p.update_checksum_for_addr(DST, ndst);
            p.set_src_port_incremental(nsport);
            p.set_dst_port_incremental(ndport);
            prop_assert!(p.verify_checksum(nsrc, ndst));
            let c = p.checksum();
            prop_assert_ne!(c, 0);
            let expected = oracle_checksum(&ip);
            prop_assert_eq!(c, expected);
        }
    }
}
