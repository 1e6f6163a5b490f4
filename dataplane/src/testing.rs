//! Test and benchmark fixtures (feature `testing`): a node-a table set at any scale, built directly (no manifests), and the
//! packets the benchmarks send through it.
//!
//! ```text
//!   pod 10.244.1.2 (ifindex 11)  -- node-a 192.168.50.1 --  node-b 192.168.50.2
//!   Services 10.96.x.y:80/UDP, 10 endpoints each: 1 local (10.244.1.3:8080),
//!   9 remote (10.244.2.z:8080)
//! ```

use std::net::Ipv4Addr;

use crate::tables::services::FrontendKey;
use crate::tables::{
    Backend, BackendSet, FrontendKind, IpProto, LocalPod, MacAddr, NeighbourTable, NodeConfig,
    PodInterface, PodTable, PolicyTable, RemoteNode, RouteTable, ServicePort, ServiceTable,
    TableSet, VxlanConfig,
};

pub const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
pub const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const SERVER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
pub const CLIENT_IF: u32 = 11;
pub const SERVER_IF: u32 = 12;
pub const UPLINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 1, 1]);
pub const VTEP_A_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 1, 1]);
pub const VTEP_B_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 2, 1]);
pub const NODE_B_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 2, 1]);
pub const CLIENT_HOST_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 2]);
pub const CLIENT_POD_MAC: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 2]);
pub const SERVER_HOST_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 3]);
pub const SERVER_POD_MAC: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 3]);

/// The ClusterIP of Service number `i` (10.96.0.0/12 has room for 1M).
pub fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i)
}

/// Tables for node-a with `services` UDP Services on port 80, each with
/// `endpoints` backends (the first local, the rest on node-b).
pub fn tables(services: u32, endpoints: u32) -> TableSet {
    let pod = |ip, name: &str, ifindex, host, podmac, slot| LocalPod {
        ip,
        namespace: "bench".into(),
        name: name.into(),
        interface: Some(PodInterface {
            name: format!("veth-{name}").into(),
            ifindex,
            host_mac: host,
            pod_mac: podmac,
        }),
        policy_slot: slot,
    };
    let (pods, _) = PodTable::new(vec![
        pod(
            CLIENT_POD,
            "client",
            CLIENT_IF,
            CLIENT_HOST_MAC,
            CLIENT_POD_MAC,
            0,
        ),
        pod(
            SERVER_POD,
            "server",
            SERVER_IF,
            SERVER_HOST_MAC,
            SERVER_POD_MAC,
            1,
        ),
    ]);
    let routes = RouteTable::new(vec![(
        "10.244.2.0/24".parse().expect("literal CIDR"),
        RemoteNode {
            name: "node-b".into(),
            vtep_ip: NODE_B,
            vtep_mac: VTEP_B_MAC,
        },
    )]);
    let mut table = ServiceTable::new();
    for i in 0..services {
        let backends: Vec<Backend> = (0..endpoints)
            .map(|e| {
                if e == 0 {
                    Backend {
                        ip: SERVER_POD,
                        port: 8080,
                        local: true,
                    }
                } else {
                    Backend {
                        ip: Ipv4Addr::new(10, 244, 2, (2 + (i + e) % 250) as u8),
                        port: 8080,
                        local: false,
                    }
                }
            })
            .collect();
        let local: Vec<Backend> = backends.iter().copied().filter(|b| b.local).collect();
        let idx = table.add_port(ServicePort {
            namespace: "bench".into(),
            name: format!("svc-{i}").into(),
            port_name: "".into(),
            proto: IpProto::Udp,
            port: 80,
            node_port: None,
            affinity_timeout_secs: None,
            internal_local: false,
            external_local: false,
            lb_source_ranges: vec![],
            has_endpoints: true,
            cluster: BackendSet::new(backends),
            local: BackendSet::new(local),
            health_check_node_port: None,
        });
        table
            .add_frontend(
                FrontendKey {
                    ip: service_ip(i),
                    port: 80,
                    proto: IpProto::Udp,
                },
                idx,
                FrontendKind::ClusterIp,
            )
            .expect("unique synthetic frontends");
    }
    let mut neighbours = NeighbourTable::default();
    neighbours.insert(NODE_B, NODE_B_MAC);
    TableSet {
        generation: 1,
        node: NodeConfig {
            node_name: "node-a".into(),
            node_ips: vec![NODE_A],
            vtep_ip: NODE_A,
            vtep_mac: VTEP_A_MAC,
            uplink_mac: UPLINK_MAC,
            pod_cidr: Some("10.244.1.0/24".parse().expect("literal CIDR")),
            gateway_ip: Some(Ipv4Addr::new(10, 244, 1, 1)),
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("literal CIDR")],
            vxlan: VxlanConfig::default(),
            uplink_mtu: 1500,
            node_port_range: (30000, 32767),
            masquerade_port_range: (32768, 60999),
        },
        services: table,
        pods,
        routes,
        policy: PolicyTable::allow_all(),
        neighbours,
    }
}

/// A UDP frame of `len` bytes on the wire (Ethernet included, >= 42).
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let payload = vec![0x42u8; len.saturating_sub(42)];
    let mut out = Vec::with_capacity(len);
    etherparse::PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, &payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// The same frame VXLAN-encapsulated by node-b toward node-a.
pub fn vxlan_from_node_b(inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(inner);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(NODE_B_MAC.0, UPLINK_MAC.0)
        .ipv4(NODE_B.octets(), NODE_A.octets(), 64)
        .udp(50000, 8472)
        .write(&mut out, &vx)
        .expect("writing to a Vec cannot fail");
    out
}
