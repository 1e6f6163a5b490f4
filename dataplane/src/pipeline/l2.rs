//! Layer 2 and routing: the ARP responder, VXLAN decapsulation and
//! encapsulation (RFC 7348, Flannel-compatible), and the route stage that
//! picks the egress and rewrites Ethernet headers.

use std::net::Ipv4Addr;

use crate::tables::{MacAddr, RemoteNode, TableSet};
use crate::trace_stage;
use crate::wire::{
    flow_hash, flow_source_port, ip_proto, write_encap_headers, ArpPacket, EthernetFrame,
    Ipv4Packet, UdpPacket, VxlanPacket, ETHERTYPE_IPV4, OUTER_OVERHEAD,
};
use crate::DropReason;

use super::parse::{self, Headers};
use super::reply::{self, ErrorKind};
use super::{Egress, Frame, Ingress, Origin, Pipeline, Stage, StageResult, Tracer, Verdict};

const ETH_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
/// Outer IPv4 TTL of VXLAN packets (Linux vxlan's default is inherit-less 64).
const OUTER_TTL: u8 = 64;
/// Outer UDP source ports: RFC 7348 section 5 recommends the dynamic range.
const VXLAN_SPORT_RANGE: (u16, u16) = (49152, 65535);

/// ARP on a pod veth: answer requests for any address but the pod's own
/// with the veth's host-side MAC (the pod's gateway, and proxy-ARP for
/// anything else the pod believes is on-link). ARP from the uplink belongs
/// to the kernel.
pub fn arp<T: Tracer>(
    t: &TableSet,
    frame: &mut Frame<'_>,
    ingress: Ingress,
    tr: &mut T,
) -> Verdict {
    let Ingress::Pod { ifindex } = ingress else {
        trace_stage!(tr, Stage::Arp, "ARP on the uplink: to host");
        return Verdict::ToHost;
    };
    let Some(pod) = t.pods.by_ifindex(ifindex) else {
        return Verdict::Drop(DropReason::UnknownPodInterface);
    };
    let Some(iface) = pod.interface.as_ref() else {
        return Verdict::Drop(DropReason::UnknownPodInterface);
    };
    let data = frame.data_mut();
    let Some(arp_bytes) = data.get_mut(ETH_LEN..) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Ok(mut arp) = ArpPacket::new_checked(arp_bytes) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let (sender_ip, target_ip, sender_mac) = (arp.sender_ip(), arp.target_ip(), arp.sender_mac());
    if arp.operation() != 1 || sender_ip == target_ip || target_ip == pod.ip {
        trace_stage!(
            tr,
            Stage::Arp,
            "not a request kxdp answers (op {}, {} asks for {})",
            arp.operation(),
            sender_ip,
            target_ip
        );
        return Verdict::Drop(DropReason::NotForUs);
    }
    if sender_ip != pod.ip && sender_ip != Ipv4Addr::UNSPECIFIED {
        trace_stage!(
            tr,
            Stage::Arp,
            "{} asks as {}: spoofed",
            pod.key(),
            sender_ip
        );
        return Verdict::Drop(DropReason::SourceSpoofed);
    }
    // Turn the request into the reply in place (RFC 826).
    arp.set_operation(2);
    arp.set_target_mac(sender_mac);
    arp.set_target_ip(sender_ip);
    arp.set_sender_mac(iface.host_mac);
    arp.set_sender_ip(target_ip);
    let Ok(mut eth) = EthernetFrame::new_checked(&mut data[..]) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    eth.set_dst(sender_mac);
    eth.set_src(iface.host_mac);
    trace_stage!(
        tr,
        Stage::Arp,
        "{} is-at {} (answered for {})",
        target_ip,
        iface.host_mac,
        pod.key()
    );
    Verdict::Reply(Egress::Pod { ifindex }, None)
}

/// True when `h` is VXLAN addressed to this node.
pub fn is_vxlan(t: &TableSet, h: &Headers) -> bool {
    h.proto == ip_proto::UDP
        && h.dport == t.node.vxlan.port
        && !h.fragment
        && (h.dst == t.node.vtep_ip || t.node.is_node_ip(h.dst))
}

/// Strip the outer headers of a VXLAN packet from a known node and parse the
/// inner packet. Returns the inner headers and the outer source address.
pub fn decap<T: Tracer>(
    t: &TableSet,
    frame: &mut Frame<'_>,
    outer: &Headers,
    tr: &mut T,
) -> StageResult<(Headers, Ipv4Addr)> {
    let data = frame.data();
    let udp_bytes = data
        .get(outer.l4_off..outer.ip_end)
        .ok_or(Verdict::Drop(DropReason::Malformed))?;
    let udp =
        UdpPacket::new_checked(udp_bytes).map_err(|_| Verdict::Drop(DropReason::Malformed))?;
    let udp_end = outer.l4_off + usize::from(udp.len());
    let vx = VxlanPacket::new_checked(udp.payload())
        .map_err(|_| Verdict::Drop(DropReason::Malformed))?;
    // RFC 7348 section 5: the I flag must be set for a valid VNI.
    if !vx.flags_valid() {
        return Err(Verdict::Drop(DropReason::VxlanInvalidFlags));
    }
    if vx.vni() != t.node.vxlan.vni {
        trace_stage!(
            tr,
            Stage::VxlanDecap,
            "VNI {} is not ours ({})",
            vx.vni(),
            t.node.vxlan.vni
        );
        return Err(Verdict::Drop(DropReason::VxlanWrongVni));
    }
    if !t.routes.is_vtep(outer.src) {
        trace_stage!(
            tr,
            Stage::VxlanDecap,
            "outer source {} is not a known node",
            outer.src
        );
        return Err(Verdict::Drop(DropReason::VxlanUnknownSource));
    }
    let inner_start =
        outer.l4_off + UdpPacket::<&[u8]>::HEADER_LEN + VxlanPacket::<&[u8]>::HEADER_LEN;
    if inner_start + ETH_LEN > udp_end {
        return Err(Verdict::Drop(DropReason::Malformed));
    }
    let inner_eth = parse::ethernet(
        data.get(inner_start..udp_end)
            .ok_or(Verdict::Drop(DropReason::Malformed))?,
    )
    .map_err(Verdict::Drop)?;
    if inner_eth.ethertype() != ETHERTYPE_IPV4 {
        return Err(Verdict::Drop(DropReason::UnsupportedEthertype));
    }
    frame.offset += inner_start;
    frame.len = udp_end - inner_start;
    let inner = parse::parse_ipv4(frame.data(), ETH_LEN).map_err(Verdict::Drop)?;
    trace_stage!(
        tr,
        Stage::VxlanDecap,
        "from node {} (VNI {}): inner {} -> {}",
        outer.src,
        t.node.vxlan.vni,
        inner.src,
        inner.dst
    );
    Ok((inner, outer.src))
}

/// Pick the egress for the (translated) packet and rewrite its Ethernet
/// header: a local pod's veth, a remote node through VXLAN, or the uplink.
pub fn route<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    frame: &mut Frame<'_>,
    h: &Headers,
    origin: Origin,
    tr: &mut T,
) -> StageResult<Verdict> {
    // Ethernet padding is not part of the packet any more.
    frame.len = h.ip_end;
    if let Some(pod) = t.pods.by_ip(h.dst) {
        let Some(iface) = pod.interface.as_ref() else {
            trace_stage!(
                tr,
                Stage::Route,
                "{} is pod {} but its veth is not known yet",
                h.dst,
                pod.key()
            );
            return Err(Verdict::Drop(DropReason::PodInterfaceMissing));
        };
        if !origin.generated {
            decrement_ttl(frame, h)?;
        }
        set_l2(frame, iface.host_mac, iface.pod_mac)?;
        trace_stage!(
            tr,
            Stage::Route,
            "local pod {} via {}",
            pod.key(),
            iface.name
        );
        return Ok(Verdict::Forward(Egress::Pod {
            ifindex: iface.ifindex,
        }));
    }
    if t.node.owns(h.dst) {
        trace_stage!(tr, Stage::Route, "{} is this node: to host", h.dst);
        return Ok(Verdict::ToHost);
    }
    if let Some(remote) = t.routes.lookup(h.dst) {
        return encap(p, t, frame, h, remote, origin, tr);
    }
    if t.node.pod_cidr.is_some_and(|c| c.contains(h.dst)) {
        trace_stage!(
            tr,
            Stage::Route,
            "{} is in this node's pod CIDR but no pod has it",
            h.dst
        );
        return Err(Verdict::Drop(DropReason::NoRoute));
    }
    // Out through the uplink, unencapsulated.
    if origin.ingress == Ingress::Uplink && origin.vxlan_src.is_none() && !origin.generated {
        trace_stage!(
            tr,
            Stage::Route,
            "{} came from the uplink and would leave on it",
            h.dst
        );
        return Err(Verdict::Drop(DropReason::Loop));
    }
    let (next_hop_mac, resolved) = match next_hop(t, h.dst) {
        Some(m) => (m, true),
        None if origin.generated && origin.l2_src != MacAddr::ZERO => (origin.l2_src, true),
        None => {
            trace_stage!(tr, Stage::Route, "next hop for {} not resolved", h.dst);
            // Finished with a zero MAC: see `Pipeline::take_unresolved_next_hop`.
            p.unresolved_next_hop = Some(h.dst);
            (MacAddr::ZERO, false)
        }
    };
    if !origin.generated {
        decrement_ttl(frame, h)?;
    }
    set_l2(frame, t.node.uplink_mac, next_hop_mac)?;
    if !resolved {
        return Err(Verdict::Drop(DropReason::NeighbourUnresolved));
    }
    trace_stage!(
        tr,
        Stage::Route,
        "uplink toward {} (next hop {})",
        h.dst,
        next_hop_mac
    );
    Ok(Verdict::Forward(Egress::Uplink {
        encapsulated: false,
    }))
}

/// The underlay MAC to send toward `ip`: its own if it is a known neighbour,
/// else the default gateway's.
fn next_hop(t: &TableSet, ip: Ipv4Addr) -> Option<MacAddr> {
    t.neighbours.lookup(ip).or_else(|| {
        t.neighbours
            .default_gateway
            .and_then(|gw| t.neighbours.lookup(gw))
    })
}

/// Encapsulate toward `remote` (RFC 7348 section 5): outer Ethernet, IPv4,
/// UDP (source port from the inner flow hash, checksum zero), VXLAN; inner
/// Ethernet from our VTEP MAC to the remote VTEP MAC (Flannel's wiring).
fn encap<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    frame: &mut Frame<'_>,
    h: &Headers,
    remote: &RemoteNode,
    origin: Origin,
    tr: &mut T,
) -> StageResult<Verdict> {
    // The outer IP packet is outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
    // Ethernet (14) + the inner IP packet: 50 bytes more, the same as the
    // whole outer overhead on the wire.
    let outer_ip_len = h.ip_len() + OUTER_OVERHEAD;
    if outer_ip_len > usize::from(t.node.uplink_mtu) {
        let inner_mtu = t.node.uplink_mtu.saturating_sub(OUTER_OVERHEAD as u16);
        if h.dont_frag {
            trace_stage!(
                tr,
                Stage::Encap,
                "{} bytes + VXLAN exceed MTU {}: fragmentation needed (MTU {})",
                h.ip_len(),
                t.node.uplink_mtu,
                inner_mtu
            );
            return Err(reply::icmp_error_reply(
                p,
                t,
                frame,
                h,
                origin,
                ErrorKind::FragmentationNeeded { mtu: inner_mtu },
                DropReason::FragmentationNeeded,
                tr,
            ));
        }
        return Err(Verdict::Drop(DropReason::TooBigNoFragmentation));
    }
    let (next_hop_mac, resolved) = match next_hop(t, remote.vtep_ip) {
        Some(m) => (m, true),
        None => {
            trace_stage!(
                tr,
                Stage::Encap,
                "underlay neighbour {} not resolved",
                remote.vtep_ip
            );
            // Finished with a zero MAC: see `Pipeline::take_unresolved_next_hop`.
            p.unresolved_next_hop = Some(remote.vtep_ip);
            (MacAddr::ZERO, false)
        }
    };
    if !origin.generated {
        decrement_ttl(frame, h)?;
    }
    set_l2(frame, t.node.vtep_mac, remote.vtep_mac)?;
    if frame.offset < OUTER_OVERHEAD {
        return Err(Verdict::Drop(DropReason::NoBufferRoom));
    }
    let inner_len = frame.len;
    frame.offset -= OUTER_OVERHEAD;
    frame.len += OUTER_OVERHEAD;
    let sport = flow_source_port(
        flow_hash(h.src, h.dst, h.sport, h.dport, h.proto),
        VXLAN_SPORT_RANGE,
    );
    let ident = p.next_ident();
    let out = frame
        .buf
        .get_mut(frame.offset..frame.offset + OUTER_OVERHEAD)
        .ok_or(Verdict::Drop(DropReason::NoBufferRoom))?;
    write_encap_headers(
        out,
        t.node.uplink_mac,
        next_hop_mac,
        t.node.vtep_ip,
        remote.vtep_ip,
        sport,
        t.node.vxlan.port,
        t.node.vxlan.vni,
        OUTER_TTL,
        inner_len,
        ident,
    )
    .map_err(|_| Verdict::Drop(DropReason::NoBufferRoom))?;
    if !resolved {
        return Err(Verdict::Drop(DropReason::NeighbourUnresolved));
    }
    trace_stage!(
        tr,
        Stage::Encap,
        "VXLAN VNI {} to node {} ({}), outer {} -> {} udp {} -> {}",
        t.node.vxlan.vni,
        remote.name,
        remote.vtep_mac,
        t.node.vtep_ip,
        remote.vtep_ip,
        sport,
        t.node.vxlan.port
    );
    Ok(Verdict::Forward(Egress::Uplink { encapsulated: true }))
}

/// Set Ethernet source and destination.
fn set_l2(frame: &mut Frame<'_>, src: MacAddr, dst: MacAddr) -> StageResult<()> {
    let mut eth = EthernetFrame::new_checked(frame.data_mut())
        .map_err(|_| Verdict::Drop(DropReason::Malformed))?;
    eth.set_src(src);
    eth.set_dst(dst);
    Ok(())
}

/// Forwarding decrements the TTL (RFC 1812 5.3.1); the TTL stage already
/// answered packets that would expire.
fn decrement_ttl(frame: &mut Frame<'_>, h: &Headers) -> StageResult<()> {
    let bytes = frame
        .data_mut()
        .get_mut(h.ip_off..h.ip_end)
        .ok_or(Verdict::Drop(DropReason::Malformed))?;
    let mut ip =
        Ipv4Packet::new_checked(bytes).map_err(|_| Verdict::Drop(DropReason::Malformed))?;
    let ttl = ip.ttl().saturating_sub(1);
    ip.set_ttl_incremental(ttl);
    Ok(())
}
