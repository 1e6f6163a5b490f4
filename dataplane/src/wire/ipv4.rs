//! IPv4 headers (RFC 791).
//!
//! `Ipv4Packet::new_checked` validates: the buffer holds 20 bytes, version
//! is 4, IHL >= 5, the header (with options) fits the buffer, and
//! `header_len <= total_len <= buffer length`. Bytes after `total_len` are
//! allowed (Ethernet pads short frames to 60 bytes) and are not part of
//! [`Ipv4Packet::payload`]. After that no accessor can panic.
//!
//! The `*_incremental` setters keep the header checksum correct with the
//! RFC 1624 update instead of recomputing it; if the checksum was wrong
//! before, it stays wrong by the same amount (the router behaviour RFC 1624
//! section 5 recommends: never "fix" a corrupted packet).

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, put16, Field, WireError};

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const HEADER_LEN: usize = 20;

    /// Wraps `buffer` without validation; accessors may panic on a short or
    /// inconsistent buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after the checks listed in the module documentation.
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
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::BadVersion);
        }
        let hl = self.header_len();
        if hl < Self::HEADER_LEN || hl > b.len() {
            return Err(WireError::BadHeaderLen);
        }
        let tl = usize::from(self.total_len());
        if tl < hl || tl > b.len() {
            return Err(WireError::BadTotalLen);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 after `new_checked`).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte (the former TOS).
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length field: header plus payload.
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TOTAL_LEN.start)
    }

    /// Identification field.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    fn flags_frag(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG.start)
    }

    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }

    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.flags_frag() & FRAG_OFFSET_MASK) << 3
    }

    /// True for any fragment: MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol number (see [`super::ip_proto`]).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// Options bytes (empty when IHL is 5).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..self.header_len()]
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// True if the header checksum verifies (RFC 791 section 3.1).
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header())) == 0
    }

    /// The payload: `header_len..total_len` (trailing padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    /// The packet: `0..total_len` (trailing padding excluded).
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.total_len())]
    }
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        let ihl = ((header_len / 4) & 0x0f) as u8;
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ihl;
    }

    /// Sets the DSCP/ECN byte.
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    /// Sets the total length field (checksum not updated).
    pub fn set_total_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::TOTAL_LEN.start, len);
    }

    /// Sets the identification field (checksum not updated).
    pub fn set_ident(&mut self, ident: u16) {
        put16(self.buffer.as_mut(), field::IDENT.start, ident);
    }

    /// Sets flags and fragment offset: DF, MF, offset in bytes (a multiple
    /// of 8; the low 3 bits are dropped). Checksum not updated.
    pub fn set_flags_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        put16(self.buffer.as_mut(), field::FLAGS_FRAG.start, v);
    }

    /// Sets the TTL (checksum not updated).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol (checksum not updated).
    pub fn set_protocol(&mut self, proto: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = proto;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, csum: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, csum);
    }

    /// Sets the source address (checksum not updated).
    pub fn set_src(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&ip.octets());
    }

    /// Sets the destination address (checksum not updated).
    pub fn set_dst(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&ip.octets());
    }

    /// Sets the source address and updates the header checksum (RFC 1624).
    /// Transport checksums cover the address too: update them separately.
    pub fn set_src_incremental(&mut self, ip: Ipv4Addr) {
        let c = checksum::update_addr(self.checksum(), self.src(), ip);
        self.set_src(ip);
        self.set_checksum(c);
    }

    /// Sets the destination address and updates the header checksum
    /// (RFC 1624). Transport checksums must be updated separately.
    pub fn set_dst_incremental(&mut self, ip: Ipv4Addr) {
        let c = checksum::update_addr(self.checksum(), self.dst(), ip);
        self.set_dst(ip);
        self.set_checksum(c);
    }

    /// Sets the TTL and updates the header checksum (RFC 1624 section 4;
    /// TTL shares its 16-bit word with the protocol byte).
    pub fn set_ttl_incremental(&mut self, ttl: u8) {
        let proto = u16::from(self.protocol());
        let old = u16::from(self.ttl()) << 8 | proto;
        let new = u16::from(ttl) << 8 | proto;
        let c = checksum::update_u16(self.checksum(), old, new);
        self.set_ttl(ttl);
        self.set_checksum(c);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::fold(checksum::sum(&self.buffer.as_ref()[..hl]));
        self.set_checksum(c);
    }

    /// Options bytes, mutable.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[Self::HEADER_LEN..hl]
    }

    /// The payload (`header_len..total_len`), mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let tl = usize::from(self.total_len());
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// High-level form of an IPv4 header without options, for builders.
///
/// Emitted headers have DSCP/ECN 0, no options, fragment offset 0 and MF
/// clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// Payload length (total length minus the 20-byte header).
    pub payload_len: usize,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Length of the emitted header.
    pub const HEADER_LEN: usize = 20;

    /// Reads a checked packet. Fails with [`WireError::BadChecksum`] if the
    /// header checksum does not verify. Options are skipped.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self, WireError> {
        if !p.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        Ok(Ipv4Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// Header bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        Self::HEADER_LEN
    }

    /// Header plus payload.
    pub const fn total_len(&self) -> usize {
        Self::HEADER_LEN + self.payload_len
    }

    /// Writes the header, checksum included, into the first 20 bytes of
    /// `buf`. Fails if `buf` is shorter than 20 bytes or the total length
    /// does not fit 16 bits; the payload is not touched.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let total = u16::try_from(self.total_len()).map_err(|_| WireError::Overflow)?;
        if buf.len() < Self::HEADER_LEN {
            return Err(WireError::BufferTooSmall);
        }
        let mut p = Ipv4Packet::new_unchecked(buf);
        p.set_version_and_header_len(Self::HEADER_LEN);
        p.set_dscp_ecn(0);
        p.set_total_len(total);
        p.set_ident(self.ident);
        p.set_flags_frag(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src(self.src);
        p.set_dst(self.dst);
        p.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn udp_packet(payload: &[u8]) -> Vec<u8> {
        let b =
            etherparse::PacketBuilder::ipv4([10, 244, 1, 5], [10, 96, 0, 10], 63).udp(40000, 53);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn etherparse_checksum_ok(buf: &[u8]) -> bool {
        let (h, _) = etherparse::Ipv4Header::from_slice(buf).unwrap();
        h.calc_header_checksum() == h.header_checksum
    }

    #[test]
    fn parse_etherparse_packet() {
        let mut buf = udp_packet(b"query");
        buf.extend_from_slice(&[0; 7]); // Ethernet padding
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 20 + 8 + 5);
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 96, 0, 10));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 13);
        assert!(p.options().is_empty());
        assert!(!p.is_fragment());
        assert!(p.dont_frag()); // etherparse sets DF by default
    }

    #[test]
    fn validation() {
        let good = udp_packet(b"x");
        let mut bad = good.clone();
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadVersion
        );
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadHeaderLen
        );
        bad[0] = 0x4f; // 60-byte header, buffer is 29
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadHeaderLen
        );
        let mut bad = good.clone();
        bad[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadTotalLen
        );
        bad[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::BadTotalLen
        );
        assert_eq!(
            Ipv4Packet::new_checked(&good[..19]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn fragments() {
        let mut buf = udp_packet(b"12345678");
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_flags_frag(false, true, 0);
        assert!(p.is_fragment() && p.more_frags() && p.frag_offset() == 0);
        p.set_flags_frag(false, false, 1480);
        assert!(p.is_fragment() && !p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        p.set_flags_frag(true, false, 0);
        assert!(!p.is_fragment() && p.dont_frag());
    }

    #[test]
    fn options_are_exposed() {
        let mut buf = [0u8; 28];
        buf[0] = 0x46; // IHL 6
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload().len(), 4);
    }

    #[test]
    fn emit_golden() {
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(192, 168, 0, 1),
            dst: Ipv4Addr::new(192, 168, 0, 199),
            protocol: 17,
            payload_len: 0x73 - 20,
            ttl: 64,
            ident: 0,
            dont_frag: true,
        };
        let mut buf = [0xa5u8; 22];
        repr.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [
                0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
                0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7, 0xa5, 0xa5
            ]
        );
        let mut full = buf.to_vec();
        full.resize(0x73, 0);
        let p = Ipv4Packet::new_checked(&full[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr);
        assert_eq!(repr.emit(&mut [0u8; 19]), Err(WireError::BufferTooSmall));
        let huge = Ipv4Repr {
            payload_len: 65516,
            ..repr
        };
        assert_eq!(huge.emit(&mut [0u8; 20]), Err(WireError::Overflow));
    }

    proptest! {
        #[test]
        fn incremental_setters_match_etherparse(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<u32>(), dst in any::<u32>(), ttl in any::<u8>(),
        ) {
            let mut buf = udp_packet(&payload);
            let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            p.set_src_incremental(Ipv4Addr::from(src));
            p.set_dst_incremental(Ipv4Addr::from(dst));
            p.set_ttl_incremental(ttl);
            prop_assert!(p.verify_checksum());
            let c = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(c, p.checksum());
            prop_assert!(etherparse_checksum_ok(&buf));
            let (h, _) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
            prop_assert_eq!(h.source, Ipv4Addr::from(src).octets());
            prop_assert_eq!(h.destination, Ipv4Addr::from(dst).octets());
            prop_assert_eq!(h.time_to_live, ttl);
        }
    }
}
