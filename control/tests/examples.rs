//! deploy/examples/ loads cleanly (but for the Ingress) and compiles into the
//! tables node-a of DESIGN §5 must have.
//!
//! ```text
//!  node-a 192.168.50.1 (10.244.1.0/24)          node-b 192.168.50.2 (10.244.2.0/24)
//!    web-1 .1.2  demo-1 .1.3  backend .1.4        web-2 .2.2  frontend .2.3
//!    db .1.5                                      coredns .2.4 (kube-system)
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;

use kxdp_control::compile::{compile, CompileOptions, NodeEnvironment};
use kxdp_control::manifests::load_path;
use kxdp_dataplane::tables::{FrontendKind, IpProto, MacAddr, TableSet};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn compiled(node: &str) -> (TableSet, Vec<String>) {
    let report = load_path(&examples()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let env = NodeEnvironment::synthetic(&report.state, node);
    let out = compile(&report.state, &env, &CompileOptions::new(node), 1).unwrap();
    (
        out.tables,
        out.warnings.iter().map(ToString::to_string).collect(),
    )
}

/// (backend ip:port, local) of the cluster set behind a frontend.
fn backends(t: &TableSet, vip: &str, port: u16, proto: IpProto) -> Vec<(String, bool)> {
    let f = t
        .services
        .lookup(ip(vip), port, proto, false)
        .unwrap_or_else(|| panic!("no frontend {vip}:{port}"));
    let sp = t.services.port(f.service_port).unwrap();
    sp.cluster
        .backends
        .iter()
        .map(|b| (format!("{}:{}", b.ip, b.port), b.local))
        .collect()
}

#[test]
fn examples_load_with_only_the_ingress_warning() {
    let report = load_path(&examples()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert_eq!(w.kind.as_deref(), Some("Ingress"));
    assert_eq!(w.name.as_deref(), Some("example-ingress"));
    assert!(w.origin.file.ends_with("60-ingress.yaml"));
    let s = &report.state;
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.namespaces.len(), 2);
    assert_eq!(s.pods.len(), 7);
    assert_eq!(s.services.len(), 5);
    assert_eq!(s.endpoint_slices.len(), 1);
    assert_eq!(s.network_policies.len(), 1);
}

#[test]
fn node_a_tables() {
    let (t, warnings) = compiled("node-a");
    assert!(warnings.is_empty(), "{warnings:?}");

    // Node config from node-a's Node object.
    assert_eq!(t.node.node_ips, vec![ip("192.168.50.1")]);
    assert_eq!(t.node.vtep_ip, ip("192.168.50.1"));
    assert_eq!(
        t.node.vtep_mac,
        "0e:6b:78:00:01:01".parse::<MacAddr>().unwrap()
    );
    assert_eq!(t.node.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
    assert_eq!(t.node.gateway_ip, Some(ip("10.244.1.1")));
    let cidrs: Vec<String> = t
        .node
        .cluster_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, vec!["10.244.1.0/24", "10.244.2.0/24"]);

    // The route to node-b's pods goes through its VTEP.
    let remote = t.routes.lookup(ip("10.244.2.2")).unwrap();
    assert_eq!(&*remote.name, "node-b");
    assert_eq!(remote.vtep_ip, ip("192.168.50.2"));
    assert_eq!(
        remote.vtep_mac,
        "0e:6b:78:00:02:01".parse::<MacAddr>().unwrap()
    );
    assert!(t.routes.lookup(ip("10.244.1.2")).is_none());
    assert_eq!(t.routes.nodes().len(), 1);

    // Local pods: the four on node-a, each with a synthetic veth.
    let pods: Vec<(String, String)> = t.pods.iter().map(|p| (p.key(), p.ip.to_string())).collect();
    assert_eq!(
        pods,
        vec![
            ("default/backend".to_string(), "10.244.1.4".to_string()),
            ("default/db".to_string(), "10.244.1.5".to_string()),
            ("default/demo-1".to_string(), "10.244.1.3".to_string()),
            ("default/web-1".to_string(), "10.244.1.2".to_string()),
        ]
    );
    for (i, p) in t.pods.iter().enumerate() {
        assert_eq!(p.policy_slot as usize, i);
        let iface = p.interface.as_ref().unwrap();
        assert!(iface.name.starts_with("veth") && iface.name.len() == 12);
        assert_eq!(t.pods.by_ifindex(iface.ifindex).unwrap().ip, p.ip);
    }

    // my-web-service (explicit EndpointSlice): both web pods, web-1 local.
    assert_eq!(
        backends(&t, "10.96.0.10", 80, IpProto::Tcp),
        vec![
            ("10.244.1.2:8080".to_string(), true),
            ("10.244.2.2:8080".to_string(), false)
        ]
    );
    // example-nodeport: derived endpoints, ClusterIP and NodePort 30080.
    assert_eq!(
        backends(&t, "10.96.0.20", 80, IpProto::Tcp),
        vec![("10.244.1.3:8080".to_string(), true)]
    );
    let np = t
        .services
        .lookup(ip("192.168.50.1"), 30080, IpProto::Tcp, true)
        .unwrap();
    assert_eq!(np.kind, FrontendKind::NodePort);
    assert_eq!(
        &*t.services.port(np.service_port).unwrap().name,
        "example-nodeport"
    );
    // NodePorts answer only on node addresses.
    assert!(t
        .services
        .lookup(ip("10.96.0.20"), 30080, IpProto::Tcp, false)
        .is_none());
    // db: named targetPort "postgres".
    assert_eq!(
        backends(&t, "10.96.0.30", 5432, IpProto::Tcp),
        vec![("10.244.1.5:5432".to_string(), true)]
    );
    // kube-dns: UDP and TCP 53 on the remote CoreDNS pod.
    for proto in [IpProto::Udp, IpProto::Tcp] {
        assert_eq!(
            backends(&t, "10.96.0.53", 53, proto),
            vec![("10.244.2.4:53".to_string(), false)]
        );
    }
    // empty-service: a frontend without endpoints (reject).
    let f = t
        .services
        .lookup(ip("10.96.0.40"), 80, IpProto::Tcp, false)
        .unwrap();
    let sp = t.services.port(f.service_port).unwrap();
    assert!(sp.cluster.is_empty());
    assert!(!sp.has_endpoints);
    // Nothing else: 6 ClusterIP frontends plus one NodePort.
    assert_eq!(t.services.frontend_count(), 7);
    assert!(t
        .services
        .lookup(ip("10.96.0.10"), 8080, IpProto::Tcp, false)
        .is_none());
}

#[test]
fn node_b_sees_the_mirror_image() {
    let (t, warnings) = compiled("node-b");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        t.node.vtep_mac,
        "0e:6b:78:00:02:01".parse::<MacAddr>().unwrap()
    );
    assert_eq!(&*t.routes.lookup(ip("10.244.1.5")).unwrap().name, "node-a");
    assert_eq!(t.pods.len(), 3);
    assert_eq!(
        backends(&t, "10.96.0.10", 80, IpProto::Tcp),
        vec![
            ("10.244.1.2:8080".to_string(), false),
            ("10.244.2.2:8080".to_string(), true)
        ]
    );
    // The two synthetic environments agree on each other's uplink MACs.
    let report = load_path(&examples()).unwrap();
    let env_a = NodeEnvironment::synthetic(&report.state, "node-a");
    let env_b = NodeEnvironment::synthetic(&report.state, "node-b");
    assert_eq!(
        env_b.neighbours.lookup(ip("192.168.50.1")),
        Some(env_a.uplink_mac)
    );
    assert_eq!(
        env_a.neighbours.lookup(ip("192.168.50.2")),
        Some(env_b.uplink_mac)
    );
}
