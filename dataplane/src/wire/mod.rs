//! Zero-copy header views, builders and checksums.
//!
//! # Contract
//!
//! Every header has a view `XxxPacket<T: AsRef<[u8]>>` over borrowed or
//! owned bytes. `XxxPacket::new_checked(buf)` validates every length the
//! accessors depend on (fixed header size, length fields against the buffer),
//! so **no accessor of a view built with `new_checked` can panic**, whatever
//! the bytes are. `new_unchecked` skips that validation; it exists for code
//! that has just written the header itself, and its accessors may panic on a
//! short buffer. Setters exist only where `T: AsMut<[u8]>`; a setter never
//! changes a length field behind the view's back unless documented.
//!
//! `XxxRepr` structs are the high-level form used by builders: `parse` reads
//! one from a checked view, `emit` writes it into a view, `buffer_len` is the
//! number of bytes `emit` needs.
//!
//! Checksums: [`checksum`] has the RFC 1071 sum and the RFC 1624 incremental
//! update; the per-protocol `*_incremental` setters use it so a NAT rewrite
//! never touches the payload.
//!
//! Nothing in this module allocates or panics on packet data.

pub mod arp;
pub mod checksum;
pub mod ethernet;
mod exercise;
pub mod flow;
pub mod icmp;
pub mod ipv4;
pub mod sctp;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use arp::{write_arp_reply, ArpPacket, ArpRepr};
pub use ethernet::{
    EthernetFrame, EthernetRepr, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN,
};
#[doc(hidden)]
pub use exercise::exercise_parsers;
pub use flow::{flow_hash, flow_hash_symmetric};
pub use icmp::{echo_request_to_reply, write_icmp_error, write_icmp_error_in_place, IcmpPacket};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use sctp::SctpPacket;
pub use tcp::{write_tcp_rst, TcpPacket, TcpRstRepr};
pub use udp::{UdpPacket, UdpRepr};
pub use vxlan::{flow_source_port, write_encap_headers, VxlanPacket, VxlanRepr, OUTER_OVERHEAD};

/// A byte range of a header, in the style of smoltcp's `field` modules.
pub(crate) type Field = core::ops::Range<usize>;

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
pub mod ip_proto {
    /// Internet Control Message Protocol (RFC 792).
    pub const ICMP: u8 = 1;
    /// Transmission Control Protocol (RFC 793).
    pub const TCP: u8 = 6;
    /// User Datagram Protocol (RFC 768).
    pub const UDP: u8 = 17;
    /// Stream Control Transmission Protocol (RFC 4960).
    pub const SCTP: u8 = 132;
}

/// Why a buffer is not a valid header (or an output buffer is unusable).
///
/// `Copy` and allocation-free: parsers run on the hot path and the pipeline
/// maps each variant to a [`crate::DropReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the fixed part of the header.
    #[error("buffer shorter than the fixed header")]
    Truncated,
    /// IPv4 version field is not 4.
    #[error("IP version is not 4")]
    BadVersion,
    /// A header length field (IPv4 IHL, TCP data offset) is below the
    /// minimum or points past the end of the buffer.
    #[error("header length field out of range")]
    BadHeaderLen,
    /// IPv4 total length is smaller than the header or larger than the buffer.
    #[error("IPv4 total length out of range")]
    BadTotalLen,
    /// A transport length field (UDP length) is below the header size or
    /// larger than the buffer.
    #[error("length field out of range")]
    BadLength,
    /// A well-formed header of a kind this module does not handle (ARP for
    /// something other than Ethernet/IPv4, an ICMP type that is not an error
    /// where one is required, ...).
    #[error("unsupported header format")]
    Unsupported,
    /// A checksum that must verify does not.
    #[error("checksum does not verify")]
    BadChecksum,
    /// The output buffer is too small for what a builder must write.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A builder was asked to produce a packet the RFCs forbid (an ICMP
    /// error about an ICMP error, a RST answering a RST, ...).
    #[error("the RFCs forbid generating this packet")]
    NotAllowed,
    /// A builder input exceeds what the header can encode (a payload too
    /// long for a 16-bit length field, ...).
    #[error("value does not fit the header field")]
    Overflow,
}

/// Reads a big-endian `u16` at `at`; callers have validated the length.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian `u32` at `at`; callers have validated the length.
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes a big-endian `u16` at `at`; callers have validated the length.
#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian `u32` at `at`; callers have validated the length.
#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
