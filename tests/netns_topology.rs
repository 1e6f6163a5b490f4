//! The standard topology builds, works with plain Linux nodes, and tears
//! down without leaving namespaces behind.
//!
//! ```text
//!   a1 10.244.1.2   a2 10.244.1.3            b1 10.244.2.2
//!        \           /                            |
//!     node-a 192.168.50.1  (Linux+Flannel here)  node-b 192.168.50.2 (Linux+Flannel)
//!              \___________ br0 (underlay) ________/
//!                             |
//!                        ext 192.168.50.100
//! ```
//! Run as root; prints SKIP otherwise.

mod common;

use common::topology::{netns_matching, udp_echo, NodeKind, Topology, TopologyOptions};

#[test]
fn standard_topology_builds_and_tears_down() {
    if common::topology::skip_if_unsupported("standard_topology_builds_and_tears_down") {
        return;
    }
    let names;
    let suffix;
    {
        let topo = Topology::standard(TopologyOptions::default()).expect("build topology");
        suffix = topo.suffix.clone();
        names = topo.namespace_names();
        assert_eq!(names.len(), 7, "{names:?}");
        for n in &names {
            assert!(
                netns_matching(n).contains(n),
                "namespace {n} missing while the topology lives"
            );
        }
        let a = topo.node("node-a").unwrap();
        let b = topo.node("node-b").unwrap();
        // Underlay: every node and the external client reach each other.
        udp_echo(&topo.external, &a.ns, a.ip, 7001).expect("ext -> node-a");
        udp_echo(&a.ns, &b.ns, b.ip, 7002).expect("node-a -> node-b");
        // Linux node-b: its pod reaches its gateway and the node's uplink.
        let b1 = topo.pod("b1").unwrap();
        udp_echo(&b1.ns, &b.ns, b.gateway, 7003).expect("b1 -> gateway");
        udp_echo(&b1.ns, &b.ns, b.ip, 7004).expect("b1 -> node-b");
        // kxdp node-a: the host route to each pod points at its veth.
        let routes = a.ns.ip(&["route", "show", "10.244.1.2/32"]).unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(routes.contains("dev vetha1"), "{routes}");
        // Flannel wiring on node-b points node-a's CIDR at node-a's VTEP.
        let fdb =
            b.ns.exec_stdout("bridge", &["fdb", "show", "dev", "flannel.1"])
                .unwrap();
        assert!(
            fdb.contains(&a.mac) && fdb.contains("dst 192.168.50.1"),
            "{fdb}"
        );
    }
    assert!(
        netns_matching(&format!("kx{suffix}-")).is_empty(),
        "leaked namespaces: {:?}",
        netns_matching(&format!("kx{suffix}-"))
    );
}

/// Both nodes as plain Linux Flannel nodes: pods talk across nodes
/// through the kernel's VXLAN, proving the helper's Flannel wiring.
#[test]
fn two_linux_flannel_nodes_route_pod_traffic() {
    if common::topology::skip_if_unsupported("two_linux_flannel_nodes_route_pod_traffic") {
        return;
    }
    let topo = Topology::standard(TopologyOptions {
        node_a: NodeKind::LinuxFlannel,
        node_b: NodeKind::LinuxFlannel,
    })
    .expect("build topology");
    let a1 = topo.pod("a1").unwrap();
    let a2 = topo.pod("a2").unwrap();
    let b1 = topo.pod("b1").unwrap();
    udp_echo(&a1.ns, &a2.ns, a2.ip, 7101).expect("a1 -> a2 (same node)");
    udp_echo(&a1.ns, &b1.ns, b1.ip, 7102).expect("a1 -> b1 (vxlan)");
    udp_echo(&b1.ns, &a2.ns, a2.ip, 7103).expect("b1 -> a2 (vxlan)");
}
