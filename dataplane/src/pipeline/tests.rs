//! Golden packet tests: input bytes -> verdict and output bytes, compared
//! byte for byte with packets built independently by etherparse.
//!
//! ```text
//!   pod a1 10.244.1.2 (veth ifindex 11)   pod a2 10.244.1.3 (veth ifindex 12)
//!              \                          /
//!               node-a: kxdp, 192.168.50.1, pod CIDR 10.244.1.0/24, gw .1
//!                    | uplink (MTU 1500)
//!   ---- underlay 192.168.50.0/24 ----------------------------------------
//!     node-b 192.168.50.2 (pods 10.244.2.0/24)   client 192.168.50.100
//! ```

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::PacketBuilder;

use super::*;
use crate::conntrack::AffinityTable;
use crate::conntrack::{Conntrack, CtConfig};
use crate::tables::services::FrontendKey;
use crate::tables::*;

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 254);
const A1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const B1: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const VIP_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const VIP_HAIRPIN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const VTEP_A_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0x01, 0x01];
const VTEP_B_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0x02, 0x01];
const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const A1_HOST_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const A1_POD_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];
const A2_HOST_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x03];
const A2_POD_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x03];
const A1_IF: u32 = 11;
const A2_IF: u32 = 12;

fn pod(
    ip: Ipv4Addr,
    name: &str,
    ifindex: u32,
    host: [u8; 6],
    podmac: [u8; 6],
    slot: u32,
) -> LocalPod {
    LocalPod {
        ip,
        namespace: "default".into(),
        name: name.into(),
        interface: Some(PodInterface {
            name: format!("veth-{name}").into(),
            ifindex,
            host_mac: MacAddr(host),
            pod_mac: MacAddr(podmac),
        }),
        policy_slot: slot,
    }
}

fn service(name: &str, proto: IpProto, port: u16, backends: Vec<Backend>) -> ServicePort {
    let local: Vec<Backend> = backends.iter().copied().filter(|b| b.local).collect();
    ServicePort {
        namespace: "default".into(),
        name: name.into(),
        port_name: "".into(),
        proto,
        port,
        node_port: None,
        affinity_timeout_secs: None,
        internal_local: false,
        external_local: false,
        lb_source_ranges: vec![],
        has_endpoints: !backends.is_empty(),
        cluster: BackendSet::new(backends),
        local: BackendSet::new(local),
        health_check_node_port: None,
    }
}

fn be(ip: Ipv4Addr, port: u16, local: bool) -> Backend {
    Backend { ip, port, local }
}

fn tables() -> TableSet {
    let (pods, rejected) = PodTable::new(vec![
        pod(A1, "a1", A1_IF, A1_HOST_MAC, A1_POD_MAC, 0),
        pod(A2, "a2", A2_IF, A2_HOST_MAC, A2_POD_MAC, 1),
    ]);
    assert!(rejected.is_empty());
    let routes = RouteTable::new(vec![(
        "10.244.2.0/24".parse().unwrap(),
        RemoteNode {
            name: "node-b".into(),
            vtep_ip: NODE_B,
            vtep_mac: MacAddr(VTEP_B_MAC),
        },
    )]);
    let mut services = ServiceTable::new();
    let mut add = |sp: ServicePort, vip: Option<Ipv4Addr>, node_port: Option<u16>| {
        let proto = sp.proto;
        let port = sp.port;
        let idx = services.add_port(sp);
        if let Some(vip) = vip {
            services
                .add_frontend(
                    FrontendKey {
                        ip: vip,
                        port,
                        proto,
                    },
                    idx,
                    FrontendKind::ClusterIp,
                )
                .unwrap();
        }
        if let Some(np) = node_port {
            services.add_node_port(np, proto, idx).unwrap();
        }
    };
    add(
        service("local", IpProto::Tcp, 80, vec![be(A2, 8080, true)]),
        Some(VIP_LOCAL),
        Some(30080),
    );
    add(
        service("local-udp", IpProto::Udp, 80, vec![be(A2, 8080, true)]),
        Some(VIP_LOCAL),
        None,
    );
    add(
        service("remote", IpProto::Udp, 53, vec![be(B1, 5353, false)]),
        Some(VIP_REMOTE),
        None,
    );
    add(
        service("hairpin", IpProto::Tcp, 80, vec![be(A1, 8080, true)]),
        Some(VIP_HAIRPIN),
        None,
    );
    let mut aff = service(
        "affinity",
        IpProto::Tcp,
        80,
        (0..8)
            .map(|i| be(Ipv4Addr::new(10, 244, 2, 10 + i), 8080, false))
            .collect(),
    );
    aff.affinity_timeout_secs = Some(10800);
    add(aff, Some(VIP_AFFINITY), None);
    add(
        service("empty", IpProto::Tcp, 80, vec![]),
        Some(VIP_EMPTY),
        None,
    );
    let mut etp_local = service("etp-local", IpProto::Tcp, 80, vec![be(B1, 8080, false)]);
    etp_local.external_local = true;
    add(etp_local, None, Some(30081));
    let mut neighbours = NeighbourTable::default();
    neighbours.insert(NODE_B, MacAddr(NODE_B_MAC));
    neighbours.insert(ROUTER, MacAddr(ROUTER_MAC));
    neighbours.insert(CLIENT, MacAddr(CLIENT_MAC));
    neighbours.default_gateway = Some(ROUTER);
    TableSet {
        generation: 1,
        node: NodeConfig {
            node_name: "node-a".into(),
            node_ips: vec![NODE_A],
            vtep_ip: NODE_A,
            vtep_mac: MacAddr(VTEP_A_MAC),
            uplink_mac: MacAddr(UPLINK_MAC),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            gateway_ip: Some(GW),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            vxlan: VxlanConfig::default(),
            uplink_mtu: 1500,
            node_port_range: (30000, 32767),
            masquerade_port_range: (32768, 60999),
        },
        services,
        pods,
        routes,
        policy: PolicyTable::allow_all(),
        neighbours,
    }
}

fn pipeline() -> Pipeline {
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 1024,
        ..CtConfig::default()
    }));
    let aff = Arc::new(AffinityTable::new(1024, None));
    Pipeline::new(ct, aff)
}

const SEC: u64 = 1_000_000_000;

/// Run one packet; returns the verdict, the output bytes and the trace.
fn run(
    p: &mut Pipeline,
    t: &TableSet,
    now: u64,
    input: &[u8],
    ingress: Ingress,
) -> (Verdict, Vec<u8>, Vec<StageRecord>) {
    let mut buf = vec![0u8; Frame::MIN_CAPACITY];
    buf[Frame::HEADROOM..Frame::HEADROOM + input.len()].copy_from_slice(input);
    let mut frame = Frame::new(&mut buf, Frame::HEADROOM, input.len()).unwrap();
    let mut log = TraceLog::default();
    let v = p.process(t, now, &mut frame, ingress, &mut log);
    (v, frame.data().to_vec(), log.records)
}

#[expect(
    clippy::too_many_arguments,
    reason = "packet fields are clearer as arguments than as a one-use struct"
)]
fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

#[expect(
    clippy::too_many_arguments,
    reason = "packet fields are clearer as arguments than as a one-use struct"
)]
fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .tcp(sport, dport, 1000, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(5000),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => b,
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn show(records: &[StageRecord]) -> String {
    records
        .iter()
        .map(|r| format!("  {}: {}\n", r.stage, r.decision))
        .collect()
}

fn assert_bytes(got: &[u8], want: &[u8], records: &[StageRecord]) {
    assert_eq!(
        got.len(),
        want.len(),
        "length differs\ntrace:\n{}",
        show(records)
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "byte {i} differs: got {g:#04x} want {w:#04x}\ngot  {got:02x?}\nwant {want:02x?}\ntrace:\n{}", show(records));
    }
}

// --- pod to pod ---------------------------------------------------------

#[test]
fn pod_to_local_pod_is_forwarded_with_ttl_decrement() {
    let (t, mut p) = (tables(), pipeline());
    let input = udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 40000, 9000, b"hello");
    let (v, out, tr) = run(&mut p, &t, SEC, &input, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A2_IF }),
        "{}",
        show(&tr)
    );
    let want = udp(A2_HOST_MAC, A2_POD_MAC, A1, A2, 63, 40000, 9000, b"hello");
    assert_bytes(&out, &want, &tr);
}

#[test]
fn spoofed_source_ip_is_dropped() {
    let (t, mut p) = (tables(), pipeline());
    let input = udp(A1_POD_MAC, A1_HOST_MAC, A2, A1, 64, 1, 2, b"x");
    let (v, _, _) = run(&mut p, &t, SEC, &input, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(v, Verdict::Drop(DropReason::SourceSpoofed));
    assert_eq!(p.stats.drops.get(DropReason::SourceSpoofed), 1);
}

#[test]
fn spoofed_source_mac_is_dropped() {
    let (t, mut p) = (tables(), pipeline());
    let input = udp(A2_POD_MAC, A1_HOST_MAC, A1, A2, 64, 1, 2, b"x");
    let (v, _, _) = run(&mut p, &t, SEC, &input, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(v, Verdict::Drop(DropReason::SourceSpoofed));
}

#[test]
fn unknown_pod_interface_is_dropped() {
    let (t, mut p) = (tables(), pipeline());
    let input = udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 1, 2, b"x");
    let (v, _, _) = run(&mut p, &t, SEC, &input, Ingress::Pod { ifindex: 99 });
    assert_eq!(v, Verdict::Drop(DropReason::UnknownPodInterface));
}

#[test]
fn ttl_one_gets_time_exceeded_from_the_gateway() {
    let (t, mut p) = (tables(), pipeline());
    let input = udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 1, 40000, 33434, b"probe");
    let (v, out, tr) = run(&mut p, &t, SEC, &input, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(
            Egress::Pod { ifindex: A1_IF },
            Some(DropReason::TtlExceeded)
        ),
        "{}",
        show(&tr)
    );
    let quoted = &input[14..14 + 20 + 8];
    let want = icmp_error(A1_HOST_MAC, A1_POD_MAC, GW, A1, 11, 0, 0, quoted, &out);
    assert_bytes(&out, &want, &tr);
}

/// Expected ICMP error bytes, built with etherparse. The IP identification
/// and DF bit are taken from `got` (implementation choices), everything else
/// is independent.
#[expect(
    clippy::too_many_arguments,
    reason = "packet fields are clearer as arguments than as a one-use struct"
)]
fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    t: u8,
    code: u8,
    mtu: u16,
    quoted: &[u8],
    got: &[u8],
) -> Vec<u8> {
    let mut bytes5to8 = [0u8; 4];
    if t == 3 && code == 4 {
        bytes5to8[2..4].copy_from_slice(&mtu.to_be_bytes());
    }
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_raw(t, code, bytes5to8);
    let mut v = Vec::new();
    b.write(&mut v, quoted).unwrap();
    // Copy identification + flags from the implementation, fix the checksum.
    if got.len() >= 22 && v.len() >= 22 {
        v[18..22].copy_from_slice(&got[18..22]);
        v[24] = 0;
        v[25] = 0;
        let c = crate::wire::checksum::fold(crate::wire::checksum::sum(&v[14..34]));
        v[24..26].copy_from_slice(&c.to_be_bytes());
    }
    v
}

// --- Services -----------------------------------------------------------

#[test]
fn cluster_ip_tcp_flow_dnat_then_reverse_nat_then_fin() {
    let (t, mut p) = (tables(), pipeline());
    // SYN a1 -> VIP:80 becomes a1 -> a2:8080.
    let syn = tcp(
        A1_POD_MAC,
        A1_HOST_MAC,
        A1,
        VIP_LOCAL,
        64,
        41000,
        80,
        "S",
        b"",
    );
    let (v, out, tr) = run(&mut p, &t, SEC, &syn, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A2_IF }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &tcp(A2_HOST_MAC, A2_POD_MAC, A1, A2, 63, 41000, 8080, "S", b""),
        &tr,
    );
    // SYN-ACK a2:8080 -> a1 becomes VIP:80 -> a1.
    let synack = tcp(A2_POD_MAC, A2_HOST_MAC, A2, A1, 64, 8080, 41000, "SA", b"");
    let (v, out, tr) = run(
        &mut p,
        &t,
        2 * SEC,
        &synack,
        Ingress::Pod { ifindex: A2_IF },
    );
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A1_IF }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &tcp(
            A1_HOST_MAC,
            A1_POD_MAC,
            VIP_LOCAL,
            A1,
            63,
            80,
            41000,
            "SA",
            b"",
        ),
        &tr,
    );
    // Data, then FIN, on the same entry.
    let data = tcp(
        A1_POD_MAC,
        A1_HOST_MAC,
        A1,
        VIP_LOCAL,
        64,
        41000,
        80,
        "A",
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let (v, out, tr) = run(&mut p, &t, 3 * SEC, &data, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(v, Verdict::Forward(Egress::Pod { ifindex: A2_IF }));
    assert_bytes(
        &out,
        &tcp(
            A2_HOST_MAC,
            A2_POD_MAC,
            A1,
            A2,
            63,
            41000,
            8080,
            "A",
            b"GET / HTTP/1.1\r\n\r\n",
        ),
        &tr,
    );
    assert!(
        tr.iter()
            .any(|r| r.stage == "conntrack" && r.decision.starts_with("hit")),
        "{}",
        show(&tr)
    );
    let fin = tcp(A2_POD_MAC, A2_HOST_MAC, A2, A1, 64, 8080, 41000, "FA", b"");
    let (v, out, tr) = run(&mut p, &t, 4 * SEC, &fin, Ingress::Pod { ifindex: A2_IF });
    assert_eq!(v, Verdict::Forward(Egress::Pod { ifindex: A1_IF }));
    assert_bytes(
        &out,
        &tcp(
            A1_HOST_MAC,
            A1_POD_MAC,
            VIP_LOCAL,
            A1,
            63,
            80,
            41000,
            "FA",
            b"",
        ),
        &tr,
    );
    assert_eq!(p.conntrack().len(), 1);
}

#[test]
fn service_without_endpoints_is_rejected_with_port_unreachable() {
    let (t, mut p) = (tables(), pipeline());
    let syn = tcp(
        A1_POD_MAC,
        A1_HOST_MAC,
        A1,
        VIP_EMPTY,
        64,
        41000,
        80,
        "S",
        b"",
    );
    let (v, out, tr) = run(&mut p, &t, SEC, &syn, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(
            Egress::Pod { ifindex: A1_IF },
            Some(DropReason::ServiceNoEndpoints)
        ),
        "{}",
        show(&tr)
    );
    let quoted = &syn[14..14 + 20 + 8];
    assert_bytes(
        &out,
        &icmp_error(
            A1_HOST_MAC,
            A1_POD_MAC,
            VIP_EMPTY,
            A1,
            3,
            3,
            0,
            quoted,
            &out,
        ),
        &tr,
    );
    assert_eq!(
        p.conntrack().len(),
        0,
        "a rejected flow leaves no conntrack entry"
    );
}

#[test]
fn service_ip_on_unknown_port_is_rejected() {
    let (t, mut p) = (tables(), pipeline());
    let syn = tcp(
        A1_POD_MAC,
        A1_HOST_MAC,
        A1,
        VIP_LOCAL,
        64,
        41000,
        81,
        "S",
        b"",
    );
    let (v, _, _) = run(&mut p, &t, SEC, &syn, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(
            Egress::Pod { ifindex: A1_IF },
            Some(DropReason::NoServicePort)
        )
    );
}

#[test]
fn cluster_ip_to_remote_backend_is_encapsulated_for_node_b() {
    let (t, mut p) = (tables(), pipeline());
    let q = udp(
        A1_POD_MAC,
        A1_HOST_MAC,
        A1,
        VIP_REMOTE,
        64,
        45000,
        53,
        b"dns?",
    );
    let (v, out, tr) = run(&mut p, &t, SEC, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Forward(Egress::Uplink { encapsulated: true }),
        "{}",
        show(&tr)
    );
    let inner = udp(VTEP_A_MAC, VTEP_B_MAC, A1, B1, 63, 45000, 5353, b"dns?");
    // Outer headers, built independently. Source port and ident are the
    // implementation's (flow hash, counter): take them from the output and
    // check the source port range separately.
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(
        sport >= 49152,
        "outer source port {sport} outside RFC 7348's recommended range"
    );
    let mut want = Vec::new();
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vxlan.extend_from_slice(&inner);
    PacketBuilder::ethernet2(UPLINK_MAC, NODE_B_MAC)
        .ipv4(NODE_A.octets(), NODE_B.octets(), 64)
        .udp(sport, 8472)
        .write(&mut want, &vxlan)
        .unwrap();
    // RFC 7348: outer UDP checksum zero is allowed; ours is zero.
    want[40] = 0;
    want[41] = 0;
    want[18..22].copy_from_slice(&out[18..22]);
    want[24] = 0;
    want[25] = 0;
    let c = crate::wire::checksum::fold(crate::wire::checksum::sum(&want[14..34]));
    want[24..26].copy_from_slice(&c.to_be_bytes());
    assert_bytes(&out, &want, &tr);
}

#[test]
fn vxlan_from_node_b_is_decapsulated_to_the_local_pod() {
    let (t, mut p) = (tables(), pipeline());
    let inner = udp(VTEP_B_MAC, VTEP_A_MAC, B1, A1, 63, 5353, 45000, b"answer");
    let outer = vxlan_packet(NODE_B, NODE_A, 1, &inner);
    let (v, out, tr) = run(&mut p, &t, SEC, &outer, Ingress::Uplink);
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A1_IF }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &udp(A1_HOST_MAC, A1_POD_MAC, B1, A1, 62, 5353, 45000, b"answer"),
        &tr,
    );
}

fn vxlan_packet(src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&(vni << 8).to_be_bytes());
    vx.extend_from_slice(inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(NODE_B_MAC, UPLINK_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(50000, 8472)
        .write(&mut v, &vx)
        .unwrap();
    v
}

#[test]
fn vxlan_with_wrong_vni_or_unknown_node_is_dropped() {
    let (t, mut p) = (tables(), pipeline());
    let inner = udp(VTEP_B_MAC, VTEP_A_MAC, B1, A1, 63, 1, 2, b"x");
    let (v, _, _) = run(
        &mut p,
        &t,
        SEC,
        &vxlan_packet(NODE_B, NODE_A, 7, &inner),
        Ingress::Uplink,
    );
    assert_eq!(v, Verdict::Drop(DropReason::VxlanWrongVni));
    let (v, _, _) = run(
        &mut p,
        &t,
        SEC,
        &vxlan_packet(CLIENT, NODE_A, 1, &inner),
        Ingress::Uplink,
    );
    assert_eq!(v, Verdict::Drop(DropReason::VxlanUnknownSource));
}

#[test]
fn node_port_from_outside_is_dnated_and_masqueraded_and_replies_return() {
    let (t, mut p) = (tables(), pipeline());
    let syn = tcp(
        CLIENT_MAC, UPLINK_MAC, CLIENT, NODE_A, 64, 50123, 30080, "S", b"",
    );
    let (v, out, tr) = run(&mut p, &t, SEC, &syn, Ingress::Uplink);
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A2_IF }),
        "{}",
        show(&tr)
    );
    // eTP=Cluster: source NATed to the pods' gateway, port kept (free).
    assert_bytes(
        &out,
        &tcp(A2_HOST_MAC, A2_POD_MAC, GW, A2, 63, 50123, 8080, "S", b""),
        &tr,
    );
    let synack = tcp(A2_POD_MAC, A2_HOST_MAC, A2, GW, 64, 8080, 50123, "SA", b"");
    let (v, out, tr) = run(
        &mut p,
        &t,
        2 * SEC,
        &synack,
        Ingress::Pod { ifindex: A2_IF },
    );
    assert_eq!(
        v,
        Verdict::Forward(Egress::Uplink {
            encapsulated: false
        }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &tcp(
            UPLINK_MAC, CLIENT_MAC, NODE_A, CLIENT, 63, 30080, 50123, "SA", b"",
        ),
        &tr,
    );
}

#[test]
fn node_port_with_local_policy_and_no_local_endpoint_drops() {
    let (t, mut p) = (tables(), pipeline());
    let syn = tcp(
        CLIENT_MAC, UPLINK_MAC, CLIENT, NODE_A, 64, 50123, 30081, "S", b"",
    );
    let (v, _, _) = run(&mut p, &t, SEC, &syn, Ingress::Uplink);
    assert_eq!(v, Verdict::Drop(DropReason::ServiceNoLocalEndpoints));
}

#[test]
fn hairpin_is_source_natted_so_the_reply_comes_back() {
    let (t, mut p) = (tables(), pipeline());
    let syn = tcp(
        A1_POD_MAC,
        A1_HOST_MAC,
        A1,
        VIP_HAIRPIN,
        64,
        42000,
        80,
        "S",
        b"",
    );
    let (v, out, tr) = run(&mut p, &t, SEC, &syn, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A1_IF }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &tcp(A1_HOST_MAC, A1_POD_MAC, GW, A1, 63, 42000, 8080, "S", b""),
        &tr,
    );
    let synack = tcp(A1_POD_MAC, A1_HOST_MAC, A1, GW, 64, 8080, 42000, "SA", b"");
    let (v, out, tr) = run(
        &mut p,
        &t,
        2 * SEC,
        &synack,
        Ingress::Pod { ifindex: A1_IF },
    );
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A1_IF }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &tcp(
            A1_HOST_MAC,
            A1_POD_MAC,
            VIP_HAIRPIN,
            A1,
            63,
            80,
            42000,
            "SA",
            b"",
        ),
        &tr,
    );
}

#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded_and_replies_return() {
    let (t, mut p) = (tables(), pipeline());
    let ext = Ipv4Addr::new(203, 0, 113, 7);
    let q = udp(A1_POD_MAC, A1_HOST_MAC, A1, ext, 64, 40001, 53, b"q");
    let (v, out, tr) = run(&mut p, &t, SEC, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Forward(Egress::Uplink {
            encapsulated: false
        }),
        "{}",
        show(&tr)
    );
    // 40001 is inside the masquerade range, so it is kept.
    assert_bytes(
        &out,
        &udp(UPLINK_MAC, ROUTER_MAC, NODE_A, ext, 63, 40001, 53, b"q"),
        &tr,
    );
    let r = udp(ROUTER_MAC, UPLINK_MAC, ext, NODE_A, 60, 53, 40001, b"a");
    let (v, out, tr) = run(&mut p, &t, 2 * SEC, &r, Ingress::Uplink);
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A1_IF }),
        "{}",
        show(&tr)
    );
    assert_bytes(
        &out,
        &udp(A1_HOST_MAC, A1_POD_MAC, ext, A1, 59, 53, 40001, b"a"),
        &tr,
    );
}

#[test]
fn masquerade_picks_another_port_when_the_reply_tuple_is_taken() {
    let (t, mut p) = (tables(), pipeline());
    let ext = Ipv4Addr::new(203, 0, 113, 7);
    // a1 and a2 use the same source port toward the same server.
    let (v1, out1, _) = run(
        &mut p,
        &t,
        SEC,
        &udp(A1_POD_MAC, A1_HOST_MAC, A1, ext, 64, 40001, 53, b"q"),
        Ingress::Pod { ifindex: A1_IF },
    );
    let (v2, out2, tr) = run(
        &mut p,
        &t,
        SEC,
        &udp(A2_POD_MAC, A2_HOST_MAC, A2, ext, 64, 40001, 53, b"q"),
        Ingress::Pod { ifindex: A2_IF },
    );
    assert_eq!(v1, v2, "{}", show(&tr));
    let port = |o: &[u8]| u16::from_be_bytes([o[34], o[35]]);
    assert_eq!(port(&out1), 40001);
    assert_ne!(port(&out2), 40001);
    assert!((32768..=60999).contains(&port(&out2)));
}

#[test]
fn uplink_traffic_for_the_node_goes_to_the_host() {
    let (t, mut p) = (tables(), pipeline());
    let ssh = tcp(
        CLIENT_MAC, UPLINK_MAC, CLIENT, NODE_A, 64, 50000, 22, "S", b"",
    );
    let (v, _, _) = run(&mut p, &t, SEC, &ssh, Ingress::Uplink);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(p.conntrack().len(), 0);
}

#[test]
fn echo_to_the_gateway_is_answered() {
    let (t, mut p) = (tables(), pipeline());
    let mut req = Vec::new();
    PacketBuilder::ethernet2(A1_POD_MAC, A1_HOST_MAC)
        .ipv4(A1.octets(), GW.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut req, b"ping")
        .unwrap();
    let (v, out, tr) = run(&mut p, &t, SEC, &req, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(Egress::Pod { ifindex: A1_IF }, None),
        "{}",
        show(&tr)
    );
    let mut want = Vec::new();
    PacketBuilder::ethernet2(A1_HOST_MAC, A1_POD_MAC)
        .ipv4(GW.octets(), A1.octets(), 64)
        .icmpv4_echo_reply(7, 1)
        .write(&mut want, b"ping")
        .unwrap();
    assert_bytes(&out, &want, &tr);
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_veth_mac() {
    let (t, mut p) = (tables(), pipeline());
    let mut req = Vec::new();
    PacketBuilder::ethernet2(A1_POD_MAC, [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &A1_POD_MAC,
                &A1.octets(),
                &[0; 6],
                &GW.octets(),
            )
            .unwrap(),
        )
        .write(&mut req)
        .unwrap();
    let (v, out, tr) = run(&mut p, &t, SEC, &req, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(Egress::Pod { ifindex: A1_IF }, None),
        "{}",
        show(&tr)
    );
    let mut want = Vec::new();
    PacketBuilder::ethernet2(A1_HOST_MAC, A1_POD_MAC)
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REPLY,
                &A1_HOST_MAC,
                &GW.octets(),
                &A1_POD_MAC,
                &A1.octets(),
            )
            .unwrap(),
        )
        .write(&mut want)
        .unwrap();
    assert_bytes(&out, &want, &tr);
}

#[test]
fn ipv6_from_a_pod_is_dropped_and_from_the_uplink_goes_to_the_host() {
    let (t, mut p) = (tables(), pipeline());
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(A1_POD_MAC, A1_HOST_MAC)
        .ipv6([1; 16], [2; 16], 64)
        .udp(1, 2)
        .write(&mut v6, b"x")
        .unwrap();
    assert_eq!(
        run(&mut p, &t, SEC, &v6, Ingress::Pod { ifindex: A1_IF }).0,
        Verdict::Drop(DropReason::Ipv6NotSupported)
    );
    assert_eq!(
        run(&mut p, &t, SEC, &v6, Ingress::Uplink).0,
        Verdict::ToHost
    );
}

#[test]
fn truncated_and_corrupt_packets_are_counted_drops() {
    let (t, mut p) = (tables(), pipeline());
    let good = udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 1, 2, b"hello");
    for cut in 0..good.len() - 5 {
        let (v, _, _) = run(
            &mut p,
            &t,
            SEC,
            &good[..cut],
            Ingress::Pod { ifindex: A1_IF },
        );
        assert!(matches!(v, Verdict::Drop(_)), "cut at {cut}: {v:?}");
    }
    let mut bad = good.clone();
    bad[24] ^= 0xff; // IP checksum
    assert_eq!(
        run(&mut p, &t, SEC, &bad, Ingress::Pod { ifindex: A1_IF }).0,
        Verdict::Drop(DropReason::BadIpChecksum)
    );
}

#[test]
fn frag_needed_when_encapsulation_would_exceed_the_mtu() {
    let (t, mut p) = (tables(), pipeline());
    let payload = vec![0x5a; 1500 - 20 - 8];
    let big = udp(A1_POD_MAC, A1_HOST_MAC, A1, B1, 64, 40000, 9000, &payload);
    let (v, out, tr) = run(&mut p, &t, SEC, &big, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(
            Egress::Pod { ifindex: A1_IF },
            Some(DropReason::FragmentationNeeded)
        ),
        "{}",
        show(&tr)
    );
    let quoted = &big[14..14 + 28];
    // The error is about the translated packet; the pod-to-pod flow has no
    // NAT, so the quote is the packet as sent. MTU = 1500 - 50.
    let mut want = icmp_error(A1_HOST_MAC, A1_POD_MAC, GW, A1, 3, 4, 1450, quoted, &out);
    // The quoted TTL is the received one.
    want.truncate(out.len());
    assert_bytes(&out, &want, &tr);
}

#[test]
fn icmp_error_from_a_backend_is_translated_back_to_the_service_address() {
    let (t, mut p) = (tables(), pipeline());
    let q = udp(A1_POD_MAC, A1_HOST_MAC, A1, VIP_LOCAL, 64, 43000, 80, b"q");
    let (_, fwd, _) = run(&mut p, &t, SEC, &q, Ingress::Pod { ifindex: A1_IF });
    // a2 answers port unreachable about the translated packet it received.
    let quoted_in = fwd[14..14 + 28].to_vec();
    let err_in = icmp_error(A2_POD_MAC, A2_HOST_MAC, A2, A1, 3, 3, 0, &quoted_in, &[]);
    let (v, out, tr) = run(
        &mut p,
        &t,
        2 * SEC,
        &err_in,
        Ingress::Pod { ifindex: A2_IF },
    );
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod { ifindex: A1_IF }),
        "{}",
        show(&tr)
    );
    // The client sees the error from the Service address, quoting its own
    // packet (to VIP:80) — with the quoted TTL as a2 received it.
    let mut quoted_out = q[14..14 + 28].to_vec();
    quoted_out[8] = 63;
    quoted_out[10] = 0;
    quoted_out[11] = 0;
    let c = crate::wire::checksum::fold(crate::wire::checksum::sum(&quoted_out[..20]));
    quoted_out[10..12].copy_from_slice(&c.to_be_bytes());
    // UDP checksum inside the quote follows the rewrite; take it from the
    // output and verify it independently below.
    quoted_out[26..28].copy_from_slice(&out[14 + 28 + 26..14 + 28 + 28]);
    let mut want = icmp_error(
        A1_HOST_MAC,
        A1_POD_MAC,
        VIP_LOCAL,
        A1,
        3,
        3,
        0,
        &quoted_out,
        &out,
    );
    want[22] = 63; // forwarded: TTL 64 -> 63
    want[24] = 0;
    want[25] = 0;
    let c = crate::wire::checksum::fold(crate::wire::checksum::sum(&want[14..34]));
    want[24..26].copy_from_slice(&c.to_be_bytes());
    assert_bytes(&out, &want, &tr);
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    let (t, mut p) = (tables(), pipeline());
    let mut seen = std::collections::HashSet::new();
    for sport in 0..32u16 {
        let syn = tcp(
            A1_POD_MAC,
            A1_HOST_MAC,
            A1,
            VIP_AFFINITY,
            64,
            44000 + sport,
            80,
            "S",
            b"",
        );
        let (v, out, tr) = run(
            &mut p,
            &t,
            SEC + u64::from(sport),
            &syn,
            Ingress::Pod { ifindex: A1_IF },
        );
        assert_eq!(
            v,
            Verdict::Forward(Egress::Uplink { encapsulated: true }),
            "{}",
            show(&tr)
        );
        // Inner IPv4 destination: outer 50 bytes + inner eth 14 + 16.
        seen.insert(out[50 + 14 + 16..50 + 14 + 20].to_vec());
    }
    assert_eq!(seen.len(), 1, "affinity must pin one backend, saw {seen:?}");
}

#[test]
fn without_affinity_flows_spread_over_backends() {
    let (mut t, mut p) = (tables(), pipeline());
    for sp in t.services.ports.iter_mut() {
        sp.affinity_timeout_secs = None;
    }
    let mut seen = std::collections::HashSet::new();
    for sport in 0..64u16 {
        let syn = tcp(
            A1_POD_MAC,
            A1_HOST_MAC,
            A1,
            VIP_AFFINITY,
            64,
            44000 + sport,
            80,
            "S",
            b"",
        );
        let (_, out, _) = run(&mut p, &t, SEC, &syn, Ingress::Pod { ifindex: A1_IF });
        seen.insert(out[50 + 14 + 16..50 + 14 + 20].to_vec());
    }
    assert!(
        seen.len() >= 4,
        "64 flows over 8 backends hit only {}",
        seen.len()
    );
}

#[test]
fn udp_entries_of_a_removed_endpoint_are_flushed() {
    let (t, mut p) = (tables(), pipeline());
    let q = udp(A1_POD_MAC, A1_HOST_MAC, A1, VIP_LOCAL, 64, 43001, 80, b"q");
    run(&mut p, &t, SEC, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(p.conntrack().len(), 1);
    let flushed = p
        .conntrack()
        .flush_matching(|e| e.reply.proto == 17 && e.reply.src == A2 && e.reply.sport == 8080);
    assert_eq!(flushed, 1);
    assert_eq!(p.conntrack().len(), 0);
}

#[test]
fn batch_processing_matches_single_packets() {
    let (t, mut p) = (tables(), pipeline());
    let inputs = [
        udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 1, 2, b"a"),
        udp(A1_POD_MAC, A1_HOST_MAC, A2, A1, 64, 1, 2, b"spoof"),
        tcp(
            CLIENT_MAC, UPLINK_MAC, CLIENT, NODE_A, 64, 50000, 22, "S", b"",
        ),
    ];
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|i| {
            let mut b = vec![0u8; Frame::MIN_CAPACITY];
            b[Frame::HEADROOM..Frame::HEADROOM + i.len()].copy_from_slice(i);
            b
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&inputs)
        .map(|(b, i)| Frame::new(b, Frame::HEADROOM, i.len()).unwrap())
        .collect();
    let ingress = [
        Ingress::Pod { ifindex: A1_IF },
        Ingress::Pod { ifindex: A1_IF },
        Ingress::Uplink,
    ];
    let mut verdicts = [Verdict::ToHost; 3];
    p.process_batch(&t, SEC, &mut frames, &ingress, &mut verdicts);
    assert_eq!(
        verdicts,
        [
            Verdict::Forward(Egress::Pod { ifindex: A2_IF }),
            Verdict::Drop(DropReason::SourceSpoofed),
            Verdict::ToHost
        ]
    );
    assert_eq!(p.stats.rx, 3);
    assert_eq!(p.stats.forwarded_pod, 1);
    assert_eq!(p.stats.to_host, 1);
}

// --- robustness -----------------------------------------------------------

/// Invariants every verdict must keep, whatever the input: the frame stays
/// inside its buffer, and a transmitted IPv4 frame has a valid header
/// checksum and a consistent length.
fn check_invariants(v: Verdict, out: &[u8]) {
    if matches!(v, Verdict::Forward(_) | Verdict::Reply(..))
        && out.len() >= 34
        && out[12..14] == [0x08, 0x00]
    {
        let ip = crate::wire::Ipv4Packet::new_checked(&out[14..]).expect("transmitted IPv4 parses");
        assert!(
            ip.verify_checksum(),
            "transmitted IPv4 header checksum must verify: {out:02x?}"
        );
        assert!(usize::from(ip.total_len()) + 14 <= out.len());
    }
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn seeds() -> Vec<(Vec<u8>, Ingress)> {
        vec![
            (
                udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 1, 2, b"hello"),
                Ingress::Pod { ifindex: A1_IF },
            ),
            (
                tcp(
                    A1_POD_MAC,
                    A1_HOST_MAC,
                    A1,
                    VIP_LOCAL,
                    64,
                    41000,
                    80,
                    "S",
                    b"",
                ),
                Ingress::Pod { ifindex: A1_IF },
            ),
            (
                udp(
                    A1_POD_MAC,
                    A1_HOST_MAC,
                    A1,
                    VIP_REMOTE,
                    64,
                    45000,
                    53,
                    b"dns?",
                ),
                Ingress::Pod { ifindex: A1_IF },
            ),
            (
                vxlan_packet(
                    NODE_B,
                    NODE_A,
                    1,
                    &udp(VTEP_B_MAC, VTEP_A_MAC, B1, A1, 63, 5353, 45000, b"a"),
                ),
                Ingress::Uplink,
            ),
            (
                tcp(
                    CLIENT_MAC, UPLINK_MAC, CLIENT, NODE_A, 64, 50123, 30080, "S", b"",
                ),
                Ingress::Uplink,
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Random bytes never panic and keep the invariants.
        #[test]
        fn random_frames_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..200), pod in any::<bool>()) {
            let (t, mut p) = (tables(), pipeline());
            let ingress = if pod { Ingress::Pod { ifindex: A1_IF } } else { Ingress::Uplink };
            let (v, out, _) = run(&mut p, &t, SEC, &bytes, ingress);
            check_invariants(v, &out);
        }

        /// Mutated and truncated real packets never panic and keep the
        /// invariants; a shared conntrack carries state between them.
        #[test]
        fn mutated_packets_are_handled(seed in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in any::<usize>()) {
            let (t, mut p) = (tables(), pipeline());
            let (mut bytes, ingress) = seeds().swap_remove(seed);
            for (pos, val) in flips {
                let i = pos % bytes.len();
                bytes[i] = val;
            }
            let keep = bytes.len() - cut % 8;
            bytes.truncate(keep);
            let (v, out, _) = run(&mut p, &t, SEC, &bytes, ingress);
            check_invariants(v, &out);
            // Untraced, three times: the fast path gets filled and used.
            for _ in 0..3 {
                let (v, out) = run_fast(&mut p, &t, SEC, &bytes, ingress);
                check_invariants(v, &out);
            }
        }
    }
}

// --- the fast path --------------------------------------------------------

/// Run `input` untraced (the fast path may answer).
fn run_fast(
    p: &mut Pipeline,
    t: &TableSet,
    now: u64,
    input: &[u8],
    ingress: Ingress,
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; Frame::MIN_CAPACITY];
    buf[Frame::HEADROOM..Frame::HEADROOM + input.len()].copy_from_slice(input);
    let mut frame = Frame::new(&mut buf, Frame::HEADROOM, input.len()).unwrap();
    let v = p.process(t, now, &mut frame, ingress, &mut NoTrace);
    (v, frame.data().to_vec())
}

/// Outer IPv4 ident and header checksum differ between runs (a per-packet
/// counter); blank them after checking the checksum verifies.
fn normalise(v: Verdict, mut out: Vec<u8>) -> Vec<u8> {
    if v == Verdict::Forward(Egress::Uplink { encapsulated: true }) {
        let ip = crate::wire::Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum(), "outer checksum");
        out[18..20].fill(0);
        out[24..26].fill(0);
    }
    out
}

#[test]
fn fast_path_forwards_exactly_like_the_full_pipeline() {
    let t = tables();
    let (mut slow, mut fast) = (pipeline(), pipeline());
    let ext = Ipv4Addr::new(203, 0, 113, 7);
    // (packet, ingress): established flows of every egress kind, replies,
    // and packets that must leave the fast path (TTL 1, TCP FIN).
    let script: Vec<(Vec<u8>, Ingress)> = vec![
        (
            tcp(
                A1_POD_MAC,
                A1_HOST_MAC,
                A1,
                VIP_LOCAL,
                64,
                41000,
                80,
                "S",
                b"",
            ),
            Ingress::Pod { ifindex: A1_IF },
        ),
        (
            tcp(A2_POD_MAC, A2_HOST_MAC, A2, A1, 64, 8080, 41000, "SA", b""),
            Ingress::Pod { ifindex: A2_IF },
        ),
        (
            udp(
                A1_POD_MAC,
                A1_HOST_MAC,
                A1,
                VIP_REMOTE,
                64,
                45000,
                53,
                b"q1",
            ),
            Ingress::Pod { ifindex: A1_IF },
        ),
        (
            udp(A1_POD_MAC, A1_HOST_MAC, A1, ext, 64, 40001, 53, b"m1"),
            Ingress::Pod { ifindex: A1_IF },
        ),
        (
            udp(ROUTER_MAC, UPLINK_MAC, ext, NODE_A, 60, 53, 40001, b"r1"),
            Ingress::Uplink,
        ),
        (
            tcp(
                CLIENT_MAC, UPLINK_MAC, CLIENT, NODE_A, 64, 50123, 30080, "S", b"",
            ),
            Ingress::Uplink,
        ),
        (
            tcp(A2_POD_MAC, A2_HOST_MAC, A2, GW, 64, 8080, 50123, "SA", b""),
            Ingress::Pod { ifindex: A2_IF },
        ),
    ];
    // A flow arriving over VXLAN from node-b (decapsulated, then cached).
    let mut script = script;
    script.push((
        vxlan_packet(
            NODE_B,
            NODE_A,
            1,
            &udp(VTEP_B_MAC, VTEP_A_MAC, B1, A1, 63, 5353, 45000, b"a"),
        ),
        Ingress::Uplink,
    ));
    for round in 0..4u64 {
        for (i, (pkt, ing)) in script.iter().enumerate() {
            let now = SEC * (10 + round) + i as u64;
            let (vs, outs, tr) = run(&mut slow, &t, now, pkt, *ing);
            let (vf, outf) = run_fast(&mut fast, &t, now, pkt, *ing);
            assert_eq!(vs, vf, "round {round} packet {i}: {}", show(&tr));
            assert_eq!(
                normalise(vs, outs),
                normalise(vf, outf),
                "round {round} packet {i}"
            );
        }
        // Data after the handshakes, with a bigger payload.
        let data = tcp(
            A1_POD_MAC,
            A1_HOST_MAC,
            A1,
            VIP_LOCAL,
            64,
            41000,
            80,
            "A",
            &[7u8; 300],
        );
        let (vs, outs, _) = run(
            &mut slow,
            &t,
            SEC * 20,
            &data,
            Ingress::Pod { ifindex: A1_IF },
        );
        let (vf, outf) = run_fast(
            &mut fast,
            &t,
            SEC * 20,
            &data,
            Ingress::Pod { ifindex: A1_IF },
        );
        assert_eq!((vs, outs), (vf, outf));
    }
    let (hits, _) = fast.fast_path_counts();
    assert!(
        hits >= 3 * 5,
        "the fast path must actually run: {hits} hits"
    );
    assert_eq!(slow.fast_path_counts().0, 0, "traced packets never take it");
}

#[test]
fn fast_path_lets_go_of_flushed_flows_and_new_generations() {
    let mut t = tables();
    let mut p = pipeline();
    let q = udp(A1_POD_MAC, A1_HOST_MAC, A1, VIP_LOCAL, 64, 43001, 80, b"q");
    // First packet commits, the second fills the cache, the third hits.
    for _ in 0..3 {
        run_fast(&mut p, &t, SEC, &q, Ingress::Pod { ifindex: A1_IF });
    }
    assert_eq!(p.fast_path_counts().0, 1);
    // The endpoint goes away: conntrack is flushed and the next packet is
    // balanced anew (here: rejected, the Service has no endpoint left).
    p.conntrack().flush_matching(|e| e.reply.src == A2);
    for sp in t.services.ports.iter_mut() {
        if &*sp.name == "local-udp" {
            sp.cluster = BackendSet::new(vec![]);
            sp.has_endpoints = false;
        }
    }
    t.generation += 1;
    let (v, _) = run_fast(&mut p, &t, 2 * SEC, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(
            Egress::Pod { ifindex: A1_IF },
            Some(DropReason::ServiceNoEndpoints)
        )
    );
    assert_eq!(p.fast_path_counts().0, 1, "no stale hit");
    // A TTL-1 packet of a cached flow still gets its time exceeded.
    let mut t2 = tables();
    t2.generation = 7;
    let mut p = pipeline();
    let d = udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 1000, 2000, b"x");
    for _ in 0..3 {
        run_fast(&mut p, &t2, SEC, &d, Ingress::Pod { ifindex: A1_IF });
    }
    assert_eq!(p.fast_path_counts().0, 1);
    let d1 = udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 1, 1000, 2000, b"x");
    let (v, _) = run_fast(&mut p, &t2, SEC, &d1, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(
        v,
        Verdict::Reply(
            Egress::Pod { ifindex: A1_IF },
            Some(DropReason::TtlExceeded)
        )
    );
}

#[test]
fn stale_udp_service_entries_are_flushed_after_a_publish_and_tcp_is_kept() {
    let (mut t, mut p) = (tables(), pipeline());
    run_fast(
        &mut p,
        &t,
        SEC,
        &udp(A1_POD_MAC, A1_HOST_MAC, A1, VIP_LOCAL, 64, 43002, 80, b"q"),
        Ingress::Pod { ifindex: A1_IF },
    );
    run_fast(
        &mut p,
        &t,
        SEC,
        &tcp(
            A1_POD_MAC,
            A1_HOST_MAC,
            A1,
            VIP_LOCAL,
            64,
            43003,
            80,
            "S",
            b"",
        ),
        Ingress::Pod { ifindex: A1_IF },
    );
    run_fast(
        &mut p,
        &t,
        SEC,
        &udp(A1_POD_MAC, A1_HOST_MAC, A1, A2, 64, 43004, 9, b"direct"),
        Ingress::Pod { ifindex: A1_IF },
    );
    assert_eq!(p.conntrack().len(), 3);
    assert_eq!(flush_stale_udp(p.conntrack(), &t), 0, "nothing changed yet");
    // a2 is no longer an endpoint of either Service.
    for sp in t
        .services
        .ports
        .iter_mut()
        .filter(|sp| sp.name.starts_with("local"))
    {
        sp.cluster = BackendSet::new(vec![be(A2, 9999, true)]);
    }
    assert_eq!(
        flush_stale_udp(p.conntrack(), &t),
        1,
        "only the UDP flow through the Service"
    );
    assert_eq!(p.conntrack().len(), 2);
}

#[test]
fn decapsulated_flows_take_the_fast_path_and_still_get_every_vxlan_check() {
    let (t, mut p) = (tables(), pipeline());
    let inner = udp(VTEP_B_MAC, VTEP_A_MAC, B1, A1, 63, 5353, 45000, b"answer");
    let outer = vxlan_packet(NODE_B, NODE_A, 1, &inner);
    let want = udp(A1_HOST_MAC, A1_POD_MAC, B1, A1, 62, 5353, 45000, b"answer");
    // Commit, record, then hit: every output is the full path's.
    for _ in 0..3 {
        let (v, out) = run_fast(&mut p, &t, SEC, &outer, Ingress::Uplink);
        assert_eq!(v, Verdict::Forward(Egress::Pod { ifindex: A1_IF }));
        assert_eq!(out, want);
    }
    assert_eq!(p.fast_path_counts().0, 1);
    // The same inner flow with a wrong VNI, or from a node that is not a
    // VTEP, or without the I flag: the per-packet checks still drop it.
    let (v, _) = run_fast(
        &mut p,
        &t,
        SEC,
        &vxlan_packet(NODE_B, NODE_A, 7, &inner),
        Ingress::Uplink,
    );
    assert_eq!(v, Verdict::Drop(DropReason::VxlanWrongVni));
    let (v, _) = run_fast(
        &mut p,
        &t,
        SEC,
        &vxlan_packet(CLIENT, NODE_A, 1, &inner),
        Ingress::Uplink,
    );
    assert_eq!(v, Verdict::Drop(DropReason::VxlanUnknownSource));
    let mut no_i = outer.clone();
    no_i[42] = 0;
    let (v, _) = run_fast(&mut p, &t, SEC, &no_i, Ingress::Uplink);
    assert_eq!(v, Verdict::Drop(DropReason::VxlanInvalidFlags));
    // The same inner packet not encapsulated, from the uplink: not the
    // cached action (no decapsulation, other cache id).
    let (v, _) = run_fast(&mut p, &t, SEC, &inner, Ingress::Uplink);
    let (vs, _, _) = run(&mut pipeline(), &t, SEC, &inner, Ingress::Uplink);
    assert_eq!(v, vs);
    assert_eq!(p.fast_path_counts().0, 1, "none of these hit");
    let (v, out) = run_fast(&mut p, &t, SEC, &outer, Ingress::Uplink);
    assert_eq!(
        (v, out),
        (Verdict::Forward(Egress::Pod { ifindex: A1_IF }), want)
    );
    assert_eq!(p.fast_path_counts().0, 2);
}

#[test]
fn fast_path_follows_conntrack_without_a_publish() {
    // Same table generation throughout: only conntrack changes.
    let t = tables();
    let mut p = pipeline();
    let q = udp(A1_POD_MAC, A1_HOST_MAC, A1, VIP_LOCAL, 64, 43011, 80, b"q");
    for _ in 0..3 {
        run_fast(&mut p, &t, SEC, &q, Ingress::Pod { ifindex: A1_IF });
    }
    assert_eq!(p.fast_path_counts().0, 1);
    // Flushed: the next packet is a new flow again (committed by the full
    // path), never the cached action.
    assert_eq!(
        p.conntrack().flush_matching(|e| e.original.sport == 43011),
        1
    );
    let (v, out) = run_fast(&mut p, &t, 2 * SEC, &q, Ingress::Pod { ifindex: A1_IF });
    let (vs, outs, _) = run(
        &mut pipeline(),
        &t,
        2 * SEC,
        &q,
        Ingress::Pod { ifindex: A1_IF },
    );
    assert_eq!((v, out), (vs, outs));
    assert_eq!(p.fast_path_counts().0, 1, "no hit on a flushed entry");
    assert_eq!(p.conntrack().len(), 1, "committed anew");
    // Expired (UDP, unreplied: 30 s): the cached action is not used either.
    run_fast(&mut p, &t, 3 * SEC, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(p.fast_path_counts().0, 1, "the full path recorded it again");
    run_fast(&mut p, &t, 4 * SEC, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(p.fast_path_counts().0, 2);
    let late = 4 * SEC + 30 * SEC;
    let before = p.conntrack().iter().next().unwrap();
    assert!(before.is_expired(late));
    run_fast(&mut p, &t, late, &q, Ingress::Pod { ifindex: A1_IF });
    assert_eq!(p.fast_path_counts().0, 2, "no hit on an expired entry");
    let after = p.conntrack().iter().next().unwrap();
    assert_eq!(after.last_seen_ns, late, "re-committed at {late}");
}
