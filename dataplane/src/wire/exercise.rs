//! Runs every parser, accessor, checksum verification and builder of
//! `wire` over arbitrary bytes. Shared by the cargo-fuzz target
//! (`dataplane/fuzz`) and the stable proptest that runs in CI, so both
//! exercise exactly the same code.
//!
//! Besides "no panic", it asserts invariants that must hold for any input:
//! an incremental rewrite of a packet whose checksum verified leaves it
//! verifying, and builders either fail cleanly or produce packets that
//! parse and verify.

use std::hint::black_box;
use std::net::Ipv4Addr;

use super::arp::{ArpPacket, ArpRepr};
use super::ethernet::{EthernetFrame, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use super::icmp::{self, IcmpPacket};
use super::ipv4::Ipv4Packet;
use super::sctp::SctpPacket;
use super::tcp::{self, TcpPacket};
use super::udp::UdpPacket;
use super::vxlan::VxlanPacket;
use super::{checksum, ip_proto};
use crate::tables::MacAddr;

const NEW_SRC: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);
const NEW_DST: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 3);

/// Parses `data` as an Ethernet frame, as an IPv4 packet, and as every
/// transport header directly, following the headers inward (including the
/// inner frame of VXLAN). Panics only if an invariant above is violated.
pub fn exercise_parsers(data: &[u8]) {
    exercise_ethernet(data, 0);
    exercise_ipv4(data, 0);
    exercise_transport(
        data,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::BROADCAST,
        data.first().copied().unwrap_or(0),
    );
    black_box(checksum::fold(checksum::sum(data)));
}

fn exercise_ethernet(data: &[u8], depth: u8) {
    let Ok(eth) = EthernetFrame::new_checked(data) else {
        return;
    };
    black_box((eth.src(), eth.dst(), eth.ethertype()));
    match eth.ethertype() {
        ETHERTYPE_ARP => exercise_arp(eth.payload()),
        ETHERTYPE_IPV4 => exercise_ipv4(eth.payload(), depth),
        _ => {}
    }
}

fn exercise_arp(data: &[u8]) {
    let Ok(arp) = ArpPacket::new_checked(data) else {
        return;
    };
    let repr = ArpRepr::parse(&arp);
    let mut out = [0u8; 64];
    let n = super::write_arp_reply(&mut out, &repr, MacAddr([2, 0, 0, 0, 0, 1]), repr.target_ip)
        .unwrap_or(0);
    let reply = ArpPacket::new_checked(out.get(14..n).unwrap_or(&[]));
    assert!(reply.is_ok(), "ARP reply does not parse");
}

fn exercise_ipv4(data: &[u8], depth: u8) {
    let Ok(ip) = Ipv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        ip.version(),
        ip.dscp_ecn(),
        ip.ident(),
        ip.dont_frag(),
        ip.more_frags(),
        ip.frag_offset(),
        ip.is_fragment(),
        ip.ttl(),
        ip.checksum(),
        ip.options(),
    ));
    let verified = ip.verify_checksum();
    let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());

    // Incremental header rewrites keep a good checksum good.
    let mut copy = ip.packet().to_vec();
    if let Ok(mut w) = Ipv4Packet::new_checked(&mut copy[..]) {
        w.set_src_incremental(NEW_SRC);
        w.set_dst_incremental(NEW_DST);
        w.set_ttl_incremental(w.ttl().wrapping_sub(1));
        assert_eq!(
            w.verify_checksum(),
            verified,
            "IPv4 incremental update changed validity"
        );
    }

    if !ip.is_fragment() || ip.frag_offset() == 0 {
        exercise_transport(ip.payload(), src, dst, proto);
    }
    exercise_builders(ip.packet());

    if depth == 0 && proto == ip_proto::UDP {
        if let Ok(udp) = UdpPacket::new_checked(ip.payload()) {
            if let Ok(vx) = VxlanPacket::new_checked(udp.payload()) {
                black_box((vx.flags(), vx.flags_valid(), vx.vni()));
                exercise_ethernet(vx.payload(), depth + 1);
            }
        }
    }
}

fn exercise_transport(l4: &[u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8) {
    if let Ok(udp) = UdpPacket::new_checked(l4) {
        black_box((udp.src_port(), udp.dst_port(), udp.len(), udp.payload()));
        let verified = udp.verify_checksum(src, dst);
        let had_checksum = udp.checksum() != 0;
        let mut copy = l4.to_vec();
        if let Ok(mut w) = UdpPacket::new_checked(&mut copy[..]) {
            w.update_checksum_for_addr(src, NEW_SRC);
            w.update_checksum_for_addr(dst, NEW_DST);
            w.set_src_port_incremental(1);
            w.set_dst_port_incremental(2);
            assert_eq!(
                w.checksum() != 0,
                had_checksum,
                "UDP zero checksum changed state"
            );
            assert_eq!(
                w.verify_checksum(NEW_SRC, NEW_DST),
                verified,
                "UDP update changed validity"
            );
            w.fill_checksum(NEW_SRC, NEW_DST);
            assert!(w.verify_checksum(NEW_SRC, NEW_DST));
        }
    }
    if let Ok(t) = TcpPacket::new_checked(l4) {
        black_box((
            t.src_port(),
            t.dst_port(),
            t.seq(),
            t.ack(),
            t.flags(),
            t.window(),
            t.urgent(),
            t.options(),
            t.payload(),
            t.seg_len(),
        ));
        let verified = t.verify_checksum(src, dst);
        let mut copy = l4.to_vec();
        if let Ok(mut w) = TcpPacket::new_checked(&mut copy[..]) {
            w.update_checksum_for_addr(src, NEW_SRC);
            w.update_checksum_for_addr(dst, NEW_DST);
            w.set_src_port_incremental(1);
            w.set_dst_port_incremental(2);
            assert_eq!(
                w.verify_checksum(NEW_SRC, NEW_DST),
                verified,
                "TCP update changed validity"
            );
            w.fill_checksum(NEW_SRC, NEW_DST);
            assert!(w.verify_checksum(NEW_SRC, NEW_DST));
        }
        if let Some(rst) = tcp::TcpRstRepr::answering(src, dst, &t) {
            let mut out = [0u8; 40];
            assert_eq!(rst.emit(&mut out, 64), Ok(40));
            let p = Ipv4Packet::new_checked(&out[..]);
            assert!(p.as_ref().is_ok_and(|p| p.verify_checksum()), "bad RST");
        }
    }
    if let Ok(s) = SctpPacket::new_checked(l4) {
        black_box((
            s.src_port(),
            s.dst_port(),
            s.verification_tag(),
            s.checksum(),
            s.payload(),
        ));
        black_box(s.verify_checksum());
    }
    if let Ok(m) = IcmpPacket::new_checked(l4) {
        black_box((
            m.msg_type(),
            m.code(),
            m.checksum(),
            m.echo_ident(),
            m.echo_seq(),
            m.next_hop_mtu(),
            m.is_error(),
            m.inner(),
            m.payload(),
        ));
        let verified = m.verify_checksum();
        let mut copy = l4.to_vec();
        if let Ok(mut w) = IcmpPacket::new_checked(&mut copy[..]) {
            w.set_echo_ident_incremental(0x4242);
            // ICMP data may be all zero after the change; only check the
            // direction that cannot hit the negative-zero ambiguity.
            if verified && copy.iter().any(|&b| b != 0) {
                assert!(
                    IcmpPacket::new_unchecked(&copy[..]).verify_checksum(),
                    "ICMP update broke checksum"
                );
            }
        }
    }
    let _ = proto;
}

fn exercise_builders(ip_packet: &[u8]) {
    let mut out = [0u8; 128];
    let me = Ipv4Addr::new(192, 168, 50, 1);
    let peer = Ipv4Addr::new(192, 168, 50, 100);
    if let Ok(n) = icmp::write_icmp_error(
        &mut out,
        icmp::DEST_UNREACH,
        icmp::FRAG_NEEDED,
        1450,
        me,
        peer,
        64,
        ip_packet,
    ) {
        let p = Ipv4Packet::new_checked(out.get(..n).unwrap_or(&[]));
        assert!(
            p.as_ref().is_ok_and(|p| p.verify_checksum()),
            "bad ICMP error IP header"
        );
        let ok = p.ok().and_then(|p| {
            IcmpPacket::new_checked(p.payload())
                .ok()
                .map(|m| m.verify_checksum())
        });
        assert_eq!(ok, Some(true), "bad ICMP error message");
        // The in-place variant produces the same bytes.
        let mut inplace = ip_packet.to_vec();
        inplace.resize(ip_packet.len().max(n), 0);
        let n2 = icmp::write_icmp_error_in_place(
            &mut inplace,
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            1450,
            me,
            peer,
            64,
        );
        assert_eq!(n2, Ok(n));
        assert_eq!(inplace.get(..n), out.get(..n));
    }
    if let Ok(n) = tcp::write_tcp_rst(&mut out, ip_packet, 64) {
        assert_eq!(n, 40);
    }
    let mut copy = ip_packet.to_vec();
    if let Ok(n) = icmp::echo_request_to_reply(&mut copy, 64) {
        assert!(n <= copy.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real packets, also the fuzzing seeds (see `seeds()`).
    pub(crate) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let mac_a = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
        let mac_b = [0xee; 6];
        let mut out = Vec::new();

        let arp = etherparse::ArpPacket::new(
            etherparse::ArpHardwareId::ETHERNET,
            etherparse::EtherType::IPV4,
            etherparse::ArpOperation::REQUEST,
            &mac_a,
            &[10, 244, 1, 5],
            &[0; 6],
            &[10, 244, 1, 1],
        )
        .unwrap();
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_a, [0xff; 6])
            .arp(arp)
            .write(&mut v)
            .unwrap();
        out.push(("arp_request", v));

        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4([10, 244, 1, 5], [10, 96, 0, 20], 64)
            .tcp(43210, 80, 0x0102_0304, 64240)
            .syn()
            .write(&mut v, &[])
            .unwrap();
        out.push(("tcp_syn", v));

        // A DNS query for kubernetes.default.svc.cluster.local, type A.
        let mut dns = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["kubernetes", "default", "svc", "cluster", "local"] {
            dns.push(label.len() as u8);
            dns.extend_from_slice(label.as_bytes());
        }
        dns.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4([10, 244, 1, 5], [10, 96, 0, 10], 64)
            .udp(40000, 53)
            .write(&mut v, &dns)
            .unwrap();
        out.push(("udp_dns_query", v));

        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4([10, 244, 1, 5], [192, 168, 50, 1], 64)
            .icmpv4_echo_request(0x1234, 1)
            .write(&mut v, b"abcdefghijklmnopqrstuvwabcdefghi")
            .unwrap();
        out.push(("icmp_echo", v));

        // The TCP SYN above, encapsulated node-a -> node-b, VNI 1, port 8472.
        let inner = out[1].1.clone();
        let mut v = vec![0u8; super::super::OUTER_OVERHEAD];
        super::super::write_encap_headers(
            &mut v,
            MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            MacAddr([0x52, 0x54, 0, 0, 0, 2]),
            Ipv4Addr::new(192, 168, 50, 1),
            Ipv4Addr::new(192, 168, 50, 2),
            50000,
            8472,
            1,
            64,
            inner.len(),
            1,
        )
        .unwrap();
        v.extend_from_slice(&inner);
        out.push(("vxlan_tcp_syn", v));
        out
    }

    /// The checked-in seeds equal what `seeds()` builds. Regenerate with
    /// `KXDP_WRITE_SEEDS=1 cargo test -p kxdp-dataplane wire::exercise`.
    #[test]
    fn fuzz_seeds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/wire_parsers");
        let write = std::env::var_os("KXDP_WRITE_SEEDS").is_some();
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in seeds() {
            let path = dir.join(format!("{name}.bin"));
            if write {
                std::fs::write(&path, &bytes).unwrap();
            }
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (regenerate with KXDP_WRITE_SEEDS=1)",
                    path.display()
                )
            });
            assert_eq!(on_disk, bytes, "{} is stale", path.display());
        }
    }

    #[test]
    fn seeds_parse_all_the_way_down() {
        for (name, bytes) in seeds() {
            exercise_parsers(&bytes);
            let eth = EthernetFrame::new_checked(&bytes[..]).unwrap();
            if eth.ethertype() == ETHERTYPE_IPV4 {
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                assert!(ip.verify_checksum(), "{name}");
            }
        }
    }

    fn arb_truncated_seed() -> impl Strategy<Value = Vec<u8>> {
        (
            0usize..5,
            any::<prop::sample::Index>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        )
            .prop_map(|(i, cut, flips)| {
                let mut s = seeds().swap_remove(i).1;
                for (at, v) in flips {
                    let at = at.index(s.len());
                    s[at] = v;
                }
                let cut = cut.index(s.len() + 1);
                s.truncate(cut);
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            exercise_parsers(&data);
        }

        #[test]
        fn mutated_and_truncated_packets_never_panic(data in arb_truncated_seed()) {
            exercise_parsers(&data);
            // Also as a bare IPv4 packet (no Ethernet header).
            exercise_parsers(data.get(14..).unwrap_or(&[]));
        }
    }
}
