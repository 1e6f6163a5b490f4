//! VXLAN (RFC 7348) headers and the outer encapsulation builder.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! `VxlanPacket::new_checked` requires the 8-byte header; no accessor can
//! panic afterwards. Reserved bits are ignored on receipt (RFC 7348
//! section 5) and written as zero.
//!
//! [`write_encap_headers`] writes the 50 bytes in front of an inner
//! Ethernet frame: outer Ethernet, IPv4, UDP and VXLAN, in one pass.

use std::net::Ipv4Addr;

use super::ethernet::{EthernetRepr, ETHERTYPE_IPV4};
use super::ipv4::Ipv4Repr;
use super::udp::UdpPacket;
use super::{be32, ip_proto, Field, WireError};
use crate::tables::MacAddr;

/// The I flag: the VNI is valid (RFC 7348 section 5).
pub const FLAG_I: u8 = 0x08;

/// The IANA-assigned VXLAN UDP port (RFC 7348 section 5). Flannel and the
/// Linux kernel default to 8472 instead.
pub const IANA_PORT: u16 = 4789;

/// Bytes in front of the inner Ethernet frame: outer Ethernet (14) + IPv4
/// (20) + UDP (8) + VXLAN (8).
pub const OUTER_OVERHEAD: usize = 50;

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = 8;

mod field {
    use super::Field;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: usize = 8;
}

/// A view of a VXLAN header and the inner frame after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Length of the VXLAN header.
    pub const HEADER_LEN: usize = field::PAYLOAD;

    /// Wraps `buffer` without validation; accessors may panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
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

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True if the I flag is set: only then is the VNI valid (RFC 7348
    /// section 5). Other flag bits are reserved and ignored.
    pub fn flags_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN Network Identifier.
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI.start) >> 8
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI (the low 24 bits of `vni`); the reserved byte after it
    /// is left alone.
    pub fn set_vni(&mut self, vni: u32) {
        let b = (vni & 0x00ff_ffff).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes both reserved fields.
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::RESERVED2] = 0;
    }

    /// The inner Ethernet frame, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// High-level form of a VXLAN header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanRepr {
    /// VNI; only the low 24 bits are used.
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads a checked header; `None` if the I flag is clear.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Option<Self> {
        p.flags_valid().then(|| VxlanRepr { vni: p.vni() })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        VXLAN_LEN
    }

    /// Writes flags 0x08 (I), the VNI and zero reserved fields into the
    /// first 8 bytes of `buf`. Fails if the VNI needs more than 24 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        if self.vni > 0x00ff_ffff {
            return Err(WireError::Overflow);
        }
        let buf = buf.get_mut(..VXLAN_LEN).ok_or(WireError::BufferTooSmall)?;
        let mut p = VxlanPacket::new_unchecked(buf);
        p.set_flags(FLAG_I);
        p.clear_reserved();
        p.set_vni(self.vni);
        Ok(())
    }
}

/// Writes the outer headers of a VXLAN packet into `out[..50]` and returns
/// [`OUTER_OVERHEAD`]. `inner_len` is the length of the inner Ethernet frame
/// that follows.
///
/// - Ethernet: `outer_src_mac -> outer_dst_mac`, EtherType IPv4.
/// - IPv4: `outer_src_ip -> outer_dst_ip`, the given `ttl` and `ident`,
///   DSCP 0, **DF clear**: Linux vxlan's default (`df unset`), so the
///   underlay may fragment rather than black-hole oversized packets; the
///   pipeline answers "fragmentation needed" for inner packets with DF
///   before it gets here.
/// - UDP: `src_port -> dst_port`, **checksum 0**, which RFC 7348 section 5
///   allows ("SHOULD be transmitted as zero") and Linux does by default.
/// - VXLAN: I flag, `vni`.
///
/// Errors: [`WireError::BufferTooSmall`] if `out` is shorter than 50 bytes;
/// [`WireError::Overflow`] if the outer IP length exceeds 65535 or `vni`
/// 24 bits.
#[expect(clippy::too_many_arguments, reason = "the pipeline's agreed signature")]
pub fn write_encap_headers(
    out: &mut [u8],
    outer_src_mac: MacAddr,
    outer_dst_mac: MacAddr,
    outer_src_ip: Ipv4Addr,
    outer_dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    vni: u32,
    ttl: u8,
    inner_len: usize,
    ident: u16,
) -> Result<usize, WireError> {
    // The IP total length (inner + 36) must fit 16 bits.
    if inner_len > usize::from(u16::MAX) - (IP_LEN + UDP_LEN + VXLAN_LEN) {
        return Err(WireError::Overflow);
    }
    let udp_payload = inner_len + VXLAN_LEN;
    let out = out
        .get_mut(..OUTER_OVERHEAD)
        .ok_or(WireError::BufferTooSmall)?;
    let (eth, rest) = out.split_at_mut(ETH_LEN);
    let (ip, rest) = rest.split_at_mut(IP_LEN);
    let (udp, vxlan) = rest.split_at_mut(UDP_LEN);
    VxlanRepr { vni }.emit(vxlan)?;
    EthernetRepr {
        src: outer_src_mac,
        dst: outer_dst_mac,
        ethertype: ETHERTYPE_IPV4,
    }
    .emit(eth)?;
    Ipv4Repr {
        src: outer_src_ip,
        dst: outer_dst_ip,
        protocol: ip_proto::UDP,
        payload_len: UDP_LEN + udp_payload,
        ttl,
        ident,
        dont_frag: false,
    }
    .emit(ip)?;
    // Not `UdpRepr::emit`: the payload is not in `udp`, and the checksum
    // stays zero, so the header fields are written directly.
    let mut u = UdpPacket::new_unchecked(udp);
    u.set_src_port(src_port);
    u.set_dst_port(dst_port);
    // Bounded above by the 65535 check.
    u.set_len((UDP_LEN + udp_payload) as u16);
    u.set_checksum(0);
    Ok(OUTER_OVERHEAD)
}

/// The outer UDP source port for a flow with hash `hash`: maps the hash
/// uniformly onto the inclusive port range `range` with a multiply-shift
/// (the scheme of Linux's `udp_flow_src_port`), so one inner flow keeps one
/// outer port and underlay ECMP/RSS spreads different flows (RFC 7348
/// section 5 recommends the dynamic range 49152-65535). A reversed range is
/// accepted as if ordered.
pub fn flow_source_port(hash: u32, range: (u16, u16)) -> u16 {
    let (lo, hi) = if range.0 <= range.1 {
        range
    } else {
        (range.1, range.0)
    };
    let span = u64::from(hi - lo) + 1;
    // (hash * span) >> 32 < span <= 65536, so it fits and lo + it <= hi.
    lo + ((u64::from(hash) * span) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NODE_A_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
    const GW_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0xfe]);
    const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);

    #[test]
    fn header_view() {
        let buf = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0x00, 0xaa];
        let v = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert!(v.flags_valid());
        assert_eq!(v.vni(), 0x12_3456);
        assert_eq!(v.payload(), &[0xaa]);
        assert_eq!(VxlanRepr::parse(&v), Some(VxlanRepr { vni: 0x12_3456 }));
        let bad = [0x00, 0, 0, 0, 0, 0, 1, 0];
        let v = VxlanPacket::new_checked(&bad[..]).unwrap();
        assert!(!v.flags_valid());
        assert_eq!(VxlanRepr::parse(&v), None);
        assert_eq!(
            VxlanPacket::new_checked(&buf[..7]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn repr_emit_golden() {
        let mut buf = [0xa5u8; 10];
        VxlanRepr { vni: 1 }.emit(&mut buf).unwrap();
        assert_eq!(buf, [0x08, 0, 0, 0, 0, 0, 1, 0, 0xa5, 0xa5]);
        assert_eq!(
            VxlanRepr { vni: 1 << 24 }.emit(&mut buf),
            Err(WireError::Overflow)
        );
        assert_eq!(
            VxlanRepr { vni: 1 }.emit(&mut buf[..7]),
            Err(WireError::BufferTooSmall)
        );
    }

    /// An inner frame: pod 10.244.1.5 -> pod 10.244.2.9, TCP SYN.
    fn inner_frame() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([0x0a; 6], [0x0b; 6])
            .ipv4([10, 244, 1, 5], [10, 244, 2, 9], 63)
            .tcp(40000, 8080, 1, 1000)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, b"").unwrap();
        v
    }

    #[test]
    fn encap_golden_and_etherparse_parses_it() {
        let inner = inner_frame();
        let mut pkt = vec![0xa5u8; OUTER_OVERHEAD];
        pkt.extend_from_slice(&inner);
        let n = write_encap_headers(
            &mut pkt,
            NODE_A_MAC,
            GW_MAC,
            NODE_A,
            NODE_B,
            50000,
            8472,
            1,
            64,
            inner.len(),
            0x0102,
        )
        .unwrap();
        assert_eq!(n, 50);
        let ip_len = 20 + 8 + 8 + inner.len();
        let udp_len = 8 + 8 + inner.len();
        #[rustfmt::skip]
        let mut expected = vec![
            0x52, 0x54, 0x00, 0x00, 0x00, 0xfe, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
            0x45, 0x00, (ip_len >> 8) as u8, ip_len as u8, 0x01, 0x02, 0x00, 0x00, 64, 17,
            0x00, 0x00, 192, 168, 50, 1, 192, 168, 50, 2,
            0xc3, 0x50, 0x21, 0x18, (udp_len >> 8) as u8, udp_len as u8, 0x00, 0x00,
            0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
        ];
        expected.extend_from_slice(&inner);
        assert_eq!(inner.len(), 54);
        // IP checksum computed independently (Python, RFC 1071).
        expected[24..26].copy_from_slice(&[0x94, 0x3d]);
        assert_eq!(pkt, expected);

        let parsed = etherparse::SlicedPacket::from_ethernet(&pkt).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
            panic!("outer is not IPv4");
        };
        let h = ip.header().to_header();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert!(!h.dont_fragment);
        let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else {
            panic!("outer is not UDP");
        };
        assert_eq!(udp.checksum(), 0);
        assert_eq!(udp.payload().get(8..), Some(&inner[..]));
    }

    #[test]
    fn encap_errors() {
        let mut small = [0u8; 49];
        let args = |out: &mut [u8], vni, len| {
            write_encap_headers(
                out, NODE_A_MAC, GW_MAC, NODE_A, NODE_B, 1, 2, vni, 64, len, 0,
            )
        };
        assert_eq!(args(&mut small, 1, 100), Err(WireError::BufferTooSmall));
        let mut buf = [0u8; 50];
        assert_eq!(args(&mut buf, 1, 65535 - 36 + 1), Err(WireError::Overflow));
        assert_eq!(args(&mut buf, 1, 65535 - 36), Ok(50));
        assert_eq!(args(&mut buf, 1 << 24, 100), Err(WireError::Overflow));
        assert_eq!(args(&mut buf, 1, usize::MAX), Err(WireError::Overflow));
    }

    #[test]
    fn source_port_range_ends() {
        let r = (49152, 65535);
        assert_eq!(flow_source_port(0, r), 49152);
        assert_eq!(flow_source_port(u32::MAX, r), 65535);
        assert_eq!(flow_source_port(u32::MAX, (0, 65535)), 65535);
        assert_eq!(flow_source_port(12345, (7, 7)), 7);
        assert_eq!(flow_source_port(u32::MAX, (65535, 49152)), 65535);
    }

    proptest! {
        #[test]
        fn source_port_in_range(hash in any::<u32>(), a in any::<u16>(), b in any::<u16>()) {
            let p = flow_source_port(hash, (a, b));
            prop_assert!(p >= a.min(b) && p <= a.max(b));
        }

        #[test]
        fn encap_len_fields(inner_len in 14usize..9000, vni in 0u32..(1 << 24)) {
            let mut buf = [0u8; 50];
            write_encap_headers(&mut buf, NODE_A_MAC, GW_MAC, NODE_A, NODE_B, 1, 8472, vni, 64, inner_len, 7).unwrap();
            let mut pkt = buf.to_vec();
            pkt.resize(50 + inner_len, 0);
            let ip = super::super::Ipv4Packet::new_checked(&pkt[14..]).unwrap();
            prop_assert!(ip.verify_checksum());
            prop_assert_eq!(usize::from(ip.total_len()), 36 + inner_len);
            let udp = super::super::UdpPacket::new_checked(ip.payload()).unwrap();
            prop_assert_eq!(usize::from(udp.len()), 16 + inner_len);
            let vx = VxlanPacket::new_checked(udp.payload()).unwrap();
            prop_assert_eq!(vx.vni(), vni);
        }
    }
}
