//! The SCTP common header (RFC 4960 section 3.1) and its CRC32c checksum.
//!
//! Only the 12-byte common header is interpreted; chunks are payload. The
//! view covers exactly the SCTP packet (build it over the IPv4 payload),
//! because the checksum covers all of it. `SctpPacket::new_checked` requires
//! the 12-byte header; no accessor can panic afterwards.
//!
//! The checksum is CRC32c (Castagnoli) over the whole packet with the
//! checksum field taken as zero (RFC 4960 appendix B, RFC 3309). It is
//! transmitted least significant byte first, the byte order of RFC 4960
//! appendix B's reference code (and of Linux, which stores
//! `cpu_to_le32(~crc)`). There is no pseudo header, so address rewrites need
//! no update, but port rewrites need a full [`SctpPacket::fill_checksum`]:
//! CRCs have no RFC 1624-style incremental form that is cheaper here.

use super::{be16, be32, put16, put32, Field, WireError};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const VTAG: Field = 4..8;
    pub const CHECKSUM: Field = 8..12;
    pub const CHUNKS: usize = 12;
}

/// A view of an SCTP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SctpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SctpPacket<T> {
    /// Length of the common header.
    pub const HEADER_LEN: usize = field::CHUNKS;

    /// Wraps `buffer` without validation; accessors may panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        SctpPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds the common header.
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

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Verification tag.
    pub fn verification_tag(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VTAG.start)
    }

    /// The CRC32c value stored in the checksum field (read least
    /// significant byte first, see the module documentation).
    pub fn checksum(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Chunks: everything after the common header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::CHUNKS..]
    }

    /// CRC32c of the packet with the checksum field as zero.
    pub fn compute_checksum(&self) -> u32 {
        let b = self.buffer.as_ref();
        let crc = crc32c::crc32c(&b[..field::CHECKSUM.start]);
        let crc = crc32c::crc32c_append(crc, &[0; 4]);
        crc32c::crc32c_append(crc, &b[field::CHECKSUM.end..])
    }

    /// True if the stored checksum matches.
    pub fn verify_checksum(&self) -> bool {
        self.compute_checksum() == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SctpPacket<T> {
    /// Sets the source port (checksum not updated).
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    /// Sets the destination port (checksum not updated).
    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    /// Sets the verification tag (checksum not updated).
    pub fn set_verification_tag(&mut self, tag: u32) {
        put32(self.buffer.as_mut(), field::VTAG.start, tag);
    }

    /// Stores `crc` in the checksum field (least significant byte first).
    pub fn set_checksum(&mut self, crc: u32) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&crc.to_le_bytes());
    }

    /// Recomputes and stores the checksum over the whole packet.
    pub fn fill_checksum(&mut self) {
        let crc = self.compute_checksum();
        self.set_checksum(crc);
    }

    /// Chunks, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::CHUNKS..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built SCTP INIT chunk from port 5000 to port 80, checksum
    /// field zero.
    #[rustfmt::skip]
    const INIT: [u8; 32] = [
        0x13, 0x88, 0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x14, 0x12, 0x34, 0x56, 0x78, 0x00, 0x01, 0xa0, 0x00,
        0x00, 0x0a, 0xff, 0xff, 0x0b, 0xad, 0xca, 0xfe,
    ];

    #[test]
    fn iscsi_test_vector_byte_order() {
        // RFC 3720 appendix B.4: CRC32c of 32 zero bytes is transmitted as
        // aa 36 91 8a. Same polynomial and byte order as SCTP.
        let crc = crc32c::crc32c(&[0u8; 32]);
        assert_eq!(crc.to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
        // And 32 bytes of 0xff: 43 ab a8 62.
        assert_eq!(
            crc32c::crc32c(&[0xffu8; 32]).to_le_bytes(),
            [0x43, 0xab, 0xa8, 0x62]
        );
    }

    #[test]
    fn fill_and_verify() {
        let mut buf = INIT;
        let mut p = SctpPacket::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.src_port(), 5000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.verification_tag(), 0);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        // The stored bytes are the CRC over the packet with a zero field,
        // least significant byte first.
        let mut zeroed = INIT;
        zeroed[8..12].fill(0);
        assert_eq!(&buf[8..12], &crc32c::crc32c(&zeroed).to_le_bytes());
        // Any change breaks it; a port rewrite plus refill fixes it.
        let mut p = SctpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_dst_port(8080);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 20);
    }

    #[test]
    fn short_rejected() {
        assert_eq!(
            SctpPacket::new_checked(&INIT[..11]).unwrap_err(),
            WireError::Truncated
        );
        assert!(SctpPacket::new_checked(&INIT[..12]).is_ok());
    }
}
