//! ARP for Ethernet and IPv4 (RFC 826).
//!
//! `ArpPacket::new_checked` requires the 28-byte Ethernet/IPv4 form:
//! hardware type 1, protocol type 0x0800, hardware length 6, protocol
//! length 4 (anything else is [`WireError::Unsupported`]). No accessor can
//! panic afterwards.

use std::net::Ipv4Addr;

use super::ethernet::{EthernetFrame, EthernetRepr, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use super::{be16, put16, Field, WireError};
use crate::tables::MacAddr;

/// ARP request operation code.
pub const OP_REQUEST: u16 = 1;
/// ARP reply operation code.
pub const OP_REPLY: u16 = 2;

const HTYPE_ETHERNET: u16 = 1;

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
    pub const END: usize = 28;
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = field::END;

    /// Wraps `buffer` without validation; accessors may panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
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
        if b.len() < Self::LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, field::HTYPE.start) != HTYPE_ETHERNET
            || be16(b, field::PTYPE.start) != ETHERTYPE_IPV4
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Unsupported);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Operation: [`OP_REQUEST`] or [`OP_REPLY`] (others are possible).
    pub fn operation(&self) -> u16 {
        be16(self.buffer.as_ref(), field::OPER.start)
    }

    fn mac(&self, f: Field) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[f]);
        MacAddr(m)
    }

    fn ip(&self, f: Field) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[f];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Sender hardware address.
    pub fn sender_mac(&self) -> MacAddr {
        self.mac(field::SHA)
    }

    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        self.ip(field::SPA)
    }

    /// Target hardware address.
    pub fn target_mac(&self) -> MacAddr {
        self.mac(field::THA)
    }

    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        self.ip(field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes the fixed Ethernet/IPv4 fields (htype, ptype, hlen, plen).
    pub fn set_ethernet_ipv4_format(&mut self) {
        let b = self.buffer.as_mut();
        put16(b, field::HTYPE.start, HTYPE_ETHERNET);
        put16(b, field::PTYPE.start, ETHERTYPE_IPV4);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, op: u16) {
        put16(self.buffer.as_mut(), field::OPER.start, op);
    }

    /// Sets the sender hardware address.
    pub fn set_sender_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&mac.0);
    }

    /// Sets the sender protocol address.
    pub fn set_sender_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&ip.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&mac.0);
    }

    /// Sets the target protocol address.
    pub fn set_target_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&ip.octets());
    }
}

/// High-level form of an Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Reads a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Self {
        ArpRepr {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        field::END
    }

    /// Writes the packet into the first 28 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let buf = buf.get_mut(..field::END).ok_or(WireError::BufferTooSmall)?;
        let mut p = ArpPacket::new_unchecked(buf);
        p.set_ethernet_ipv4_format();
        p.set_operation(self.operation);
        p.set_sender_mac(self.sender_mac);
        p.set_sender_ip(self.sender_ip);
        p.set_target_mac(self.target_mac);
        p.set_target_ip(self.target_ip);
        Ok(())
    }

    /// The reply to this request from `our_mac`/`our_ip` (RFC 826, "swap
    /// sender and target, put the local addresses in the sender fields").
    pub fn reply(&self, our_mac: MacAddr, our_ip: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            operation: OP_REPLY,
            sender_mac: our_mac,
            sender_ip: our_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }
}

/// Length of the frame [`write_arp_reply`] writes: Ethernet (14) + ARP (28),
/// unpadded (the 60-byte minimum is the sending NIC's business; veths and
/// the kernel accept short frames).
pub const ARP_REPLY_FRAME_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN + field::END;

/// Writes into `frame` an Ethernet + ARP reply to `request`, sent from
/// `our_mac` as the owner of `our_ip`, unicast to the requester. Returns the
/// frame length ([`ARP_REPLY_FRAME_LEN`]).
///
/// Deciding whether to answer (operation, target address) is the caller's
/// job; this only builds the bytes.
pub fn write_arp_reply(
    frame: &mut [u8],
    request: &ArpRepr,
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
) -> Result<usize, WireError> {
    let frame = frame
        .get_mut(..ARP_REPLY_FRAME_LEN)
        .ok_or(WireError::BufferTooSmall)?;
    let (eth, arp) = frame.split_at_mut(EthernetFrame::<&[u8]>::HEADER_LEN);
    EthernetRepr {
        src: our_mac,
        dst: request.sender_mac,
        ethertype: ETHERTYPE_ARP,
    }
    .emit(eth)?;
    request.reply(our_mac, our_ip).emit(arp)?;
    Ok(ARP_REPLY_FRAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
    const HOST_MAC: MacAddr = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

    fn request_frame() -> Vec<u8> {
        let arp = etherparse::ArpPacket::new(
            etherparse::ArpHardwareId::ETHERNET,
            etherparse::EtherType::IPV4,
            etherparse::ArpOperation::REQUEST,
            &POD_MAC.0,
            &POD_IP.octets(),
            &[0; 6],
            &GW_IP.octets(),
        )
        .unwrap();
        let b = etherparse::PacketBuilder::ethernet2(POD_MAC.0, [0xff; 6]).arp(arp);
        let mut v = Vec::new();
        b.write(&mut v).unwrap();
        v
    }

    #[test]
    fn parse_etherparse_request() {
        let f = request_frame();
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.ethertype(), ETHERTYPE_ARP);
        let p = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(p.operation(), OP_REQUEST);
        assert_eq!(p.sender_mac(), POD_MAC);
        assert_eq!(p.sender_ip(), POD_IP);
        assert_eq!(p.target_mac(), MacAddr::ZERO);
        assert_eq!(p.target_ip(), GW_IP);
    }

    #[test]
    fn validation() {
        let f = request_frame();
        let arp = &f[14..];
        assert_eq!(
            ArpPacket::new_checked(&arp[..27]).unwrap_err(),
            WireError::Truncated
        );
        for (i, v) in [(1, 6u8), (3, 0xdd), (4, 8), (5, 16)] {
            let mut bad = arp.to_vec();
            bad[i] = v;
            assert_eq!(
                ArpPacket::new_checked(&bad[..]).unwrap_err(),
                WireError::Unsupported
            );
        }
    }

    #[test]
    fn reply_golden() {
        let f = request_frame();
        let req = ArpRepr::parse(&ArpPacket::new_checked(&f[14..]).unwrap());
        let mut out = [0xa5u8; 44];
        assert_eq!(
            write_arp_reply(&mut out, &req, HOST_MAC, GW_IP).unwrap(),
            42
        );
        #[rustfmt::skip]
        let expected: [u8; 44] = [
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, // dst: the requester
            0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // src: us
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02, // Ethernet/IPv4, reply
            0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 10, 244, 1, 1, // sender: us
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 10, 244, 1, 5, // target: requester
            0xa5, 0xa5,
        ];
        assert_eq!(out, expected);
        // etherparse reads it back the same way.
        let parsed = etherparse::SlicedPacket::from_ethernet(&out[..42]).unwrap();
        match parsed.net {
            Some(etherparse::NetSlice::Arp(a)) => {
                assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
                assert_eq!(a.sender_protocol_addr(), &GW_IP.octets());
                assert_eq!(a.target_hw_addr(), &POD_MAC.0);
            }
            other => panic!("not ARP: {other:?}"),
        }
        assert_eq!(
            write_arp_reply(&mut [0u8; 41], &req, HOST_MAC, GW_IP),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn in_place_setters_round_trip() {
        let mut f = request_frame();
        let mut p = ArpPacket::new_checked(&mut f[14..]).unwrap();
        let req = ArpRepr::parse(&p);
        let reply = req.reply(HOST_MAC, GW_IP);
        p.set_operation(reply.operation);
        p.set_sender_mac(reply.sender_mac);
        p.set_sender_ip(reply.sender_ip);
        p.set_target_mac(reply.target_mac);
        p.set_target_ip(reply.target_ip);
        assert_eq!(ArpRepr::parse(&p), reply);
        let mut emitted = [0u8; 28];
        reply.emit(&mut emitted).unwrap();
        assert_eq!(&f[14..42], &emitted[..]);
    }
}
