//! Property test: the compiled policy tables agree with a slow, direct
//! evaluator of the NetworkPolicy spec over random pods, labels, namespaces,
//! policies, peers and ports.
//!
//! The oracle reads the Kubernetes objects as they are, rule by rule, for
//! every single check; it shares no code with the compiler.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kxdp_control::policy::{compile_policies, PolicyCompiler, PolicyDirection, PolicyVerdict};
use kxdp_control::ClusterState;
use kxdp_dataplane::tables::{IpProto, LocalPod};
use proptest::prelude::*;
use serde_json::{json, Value};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NS: [&str; 3] = ["n0", "n1", "n2"];
const PROBE_PORTS: [u16; 5] = [53, 80, 81, 8080, 9000];
const EXTERNAL: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 1, 5), Ipv4Addr::new(203, 0, 113, 9)];

// ---- the oracle ----------------------------------------------------------

type Labels = BTreeMap<String, String>;

fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let ml_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let me_ok = sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|v| vals.contains(v)),
            "NotIn" => got.is_none_or(|v| !vals.contains(v)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    });
    ml_ok && me_ok
}

fn ns_labels(st: &ClusterState, ns: &str) -> Labels {
    let mut l = st
        .namespaces
        .get(ns)
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    l
}

fn host_network(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The (non-hostNetwork) pod owning `ip`, first in key order.
fn pod_by_ip(st: &ClusterState, ip: Ipv4Addr) -> Option<(&str, &Pod)> {
    st.pods.iter().find_map(|((ns, _), p)| {
        let has = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .is_some_and(|s| s.parse::<Ipv4Addr>().ok() == Some(ip));
        (has && !host_network(p)).then_some((ns.as_str(), p))
    })
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    cidr.parse::<ipnet::Ipv4Net>()
        .is_ok_and(|n| n.contains(&ip))
}

fn peer_matches(
    st: &ClusterState,
    policy_ns: &str,
    peer: &NetworkPolicyPeer,
    ip: Ipv4Addr,
) -> bool {
    if let Some(b) = &peer.ip_block {
        return in_cidr(ip, &b.cidr) && !b.except.iter().flatten().any(|e| in_cidr(ip, e));
    }
    let Some((ns, pod)) = pod_by_ip(st, ip) else {
        return false;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let ns_ok = match &peer.namespace_selector {
        None => ns == policy_ns,
        Some(sel) => selector_matches(sel, &ns_labels(st, ns)),
    };
    let pod_ok = peer
        .pod_selector
        .as_ref()
        .is_none_or(|sel| selector_matches(sel, &labels));
    ns_ok && pod_ok
}

fn proto_name(p: IpProto) -> &'static str {
    match p {
        IpProto::Tcp => "TCP",
        IpProto::Udp => "UDP",
        IpProto::Sctp => "SCTP",
        IpProto::Icmp => "ICMP",
    }
}

fn port_matches(port: &NetworkPolicyPort, dest: Option<&Pod>, proto: IpProto, dport: u16) -> bool {
    if port.protocol.as_deref().unwrap_or("TCP") != proto_name(proto) {
        return false;
    }
    match &port.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = port.end_port.unwrap_or(*n);
            *n <= i32::from(dport) && i32::from(dport) <= end
        }
        Some(IntOrString::String(name)) => dest.is_some_and(|d| {
            d.spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .any(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == proto_name(proto)
                        && cp.container_port == i32::from(dport)
                })
        }),
    }
}

fn applies(np: &NetworkPolicy, ingress: bool) -> bool {
    let spec = np.spec.clone().unwrap_or_default();
    match spec.policy_types.filter(|t| !t.is_empty()) {
        Some(t) => t
            .iter()
            .any(|t| t == if ingress { "Ingress" } else { "Egress" }),
        None => ingress || spec.egress.is_some_and(|e| !e.is_empty()),
    }
}

type RawRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

/// Does `pod` (namespace `ns`) pass `direction` with
/// `peer`? (pod is the destination for ingress, the source for egress.)
fn oracle(
    st: &ClusterState,
    ns: &str,
    pod: &Pod,
    d: PolicyDirection,
    peer: Ipv4Addr,
    proto: IpProto,
    dport: u16,
) -> bool {
    if host_network(pod) {
        return true;
    }
    let ingress = d == PolicyDirection::Ingress;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let selecting: Vec<&NetworkPolicy> = st
        .network_policies
        .iter()
        .filter(|((pns, _), np)| {
            pns == ns
                && applies(np, ingress)
                && selector_matches(
                    &np.spec
                        .as_ref()
                        .and_then(|s| s.pod_selector.clone())
                        .unwrap_or_default(),
                    &labels,
                )
        })
        .map(|(_, np)| np)
        .collect();
    if selecting.is_empty() || peer == NODE_IP {
        return true;
    }
    let dest: Option<&Pod> = if ingress {
        Some(pod)
    } else {
        pod_by_ip(st, peer).map(|p| p.1)
    };
    selecting.iter().any(|np| {
        let spec = np.spec.clone().unwrap_or_default();
        let rules: Vec<RawRule> = if ingress {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect()
        };
        rules.iter().any(|(peers, ports)| {
            let peer_ok = match peers {
                None => true,
                Some(p) if p.is_empty() => true,
                Some(p) => p.iter().any(|x| peer_matches(st, ns, x, peer)),
            };
            let port_ok = match ports {
                None => true,
                Some(p) if p.is_empty() => true,
                Some(p) => p.iter().any(|x| port_matches(x, dest, proto, dport)),
            };
            peer_ok && port_ok
        })
    })
}

// ---- generators ------------------------------------------------------------

fn labels_strategy(keys: &'static [&'static str]) -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(keys).prop_map(str::to_string),
        proptest::sample::select(&["a", "b"][..]).prop_map(str::to_string),
        0..=2,
    )
}

fn selector_strategy(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let expr = (
        proptest::sample::select(keys),
        proptest::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
        proptest::collection::vec(proptest::sample::select(&["a", "b", "c"][..]), 1..=2),
    )
        .prop_map(|(k, op, vals)| match op {
            "In" | "NotIn" => json!({"key": k, "operator": op, "values": vals}),
            _ => json!({"key": k, "operator": op}),
        });
    (
        labels_strategy(keys),
        proptest::collection::vec(expr, 0..=1),
    )
        .prop_map(|(ml, me)| {
            let mut v = json!({});
            if !ml.is_empty() {
                v["matchLabels"] = json!(ml);
            }
            if !me.is_empty() {
                v["matchExpressions"] = json!(me);
            }
            v
        })
}

fn peer_strategy() -> impl Strategy<Value = Value> {
    const CIDRS: [&str; 6] = [
        "10.1.0.0/24",
        "10.1.0.0/28",
        "10.1.0.4/30",
        "10.1.0.0/16",
        "0.0.0.0/0",
        "10.1.0.3/32",
    ];
    const EXCEPTS: [&str; 5] = [
        "10.1.0.0/29",
        "10.1.0.2/31",
        "10.1.0.5/32",
        "10.1.1.0/24",
        "10.1.0.0/26",
    ];
    prop_oneof![
        selector_strategy(&["app", "tier"]).prop_map(|s| json!({"podSelector": s})),
        selector_strategy(&["team", "env"]).prop_map(|s| json!({"namespaceSelector": s})),
        (
            selector_strategy(&["app", "tier"]),
            selector_strategy(&["team", "env"])
        )
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        (
            proptest::sample::select(&CIDRS[..]),
            proptest::collection::vec(proptest::sample::select(&EXCEPTS[..]), 0..=2)
        )
            .prop_map(|(c, ex)| {
                // Upstream validation: excepts lie strictly inside the cidr.
                let outer: ipnet::Ipv4Net = c.parse().unwrap_or_default();
                let ex: Vec<&str> = ex
                    .into_iter()
                    .filter(|e| {
                        e.parse::<ipnet::Ipv4Net>().is_ok_and(|n| {
                            outer.contains(&n) && n.prefix_len() > outer.prefix_len()
                        })
                    })
                    .collect();
                json!({"ipBlock": {"cidr": c, "except": ex}})
            }),
    ]
}

fn port_strategy() -> impl Strategy<Value = Value> {
    let proto = proptest::option::of(proptest::sample::select(&["TCP", "UDP", "SCTP"][..]));
    prop_oneof![
        proto.clone().prop_map(|p| json!({"protocol": p})),
        (
            proto.clone(),
            proptest::sample::select(&[53, 80, 81, 8080][..]),
            proptest::option::of(0u16..40)
        )
            .prop_map(
                |(p, n, end)| json!({"protocol": p, "port": n, "endPort": end.map(|e| n + e)})
            ),
        (
            proto,
            proptest::sample::select(&["http", "dns", "metrics"][..])
        )
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
    ]
    .prop_map(|mut v| {
        // Drop nulls (absent fields).
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
        }
        v
    })
}

fn rule_strategy(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        proptest::option::of(proptest::collection::vec(peer_strategy(), 0..=2)),
        proptest::option::of(proptest::collection::vec(port_strategy(), 0..=2)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r[peer_key] = json!(p);
            }
            if let Some(p) = ports {
                r["ports"] = json!(p);
            }
            r
        })
}

const POLICY_TYPES: [Option<&[&str]>; 4] = [
    None,
    Some(&["Ingress"]),
    Some(&["Egress"]),
    Some(&["Ingress", "Egress"]),
];

fn policy_strategy() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&NS[..]),
        selector_strategy(&["app", "tier"]),
        proptest::sample::select(&POLICY_TYPES[..]),
        proptest::option::of(proptest::collection::vec(rule_strategy("from"), 0..=2)),
        proptest::option::of(proptest::collection::vec(rule_strategy("to"), 0..=2)),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| {
            let mut spec = json!({"podSelector": sel});
            if let Some(t) = types {
                spec["policyTypes"] = json!(t);
            }
            if let Some(i) = ingress {
                spec["ingress"] = json!(i);
            }
            if let Some(e) = egress {
                spec["egress"] = json!(e);
            }
            json!({"metadata": {"namespace": ns}, "spec": spec})
        })
}

#[derive(Debug, Clone)]
struct PodGen {
    ns: &'static str,
    labels: Labels,
    ports: Vec<(&'static str, u16, &'static str)>,
    host_network: bool,
}

fn pod_strategy() -> impl Strategy<Value = PodGen> {
    let port = (
        proptest::sample::select(&["http", "dns", "metrics"][..]),
        proptest::sample::select(&[53u16, 80, 81, 8080][..]),
        proptest::sample::select(&["TCP", "UDP", "SCTP"][..]),
    );
    (
        proptest::sample::select(&NS[..]),
        labels_strategy(&["app", "tier"]),
        proptest::collection::vec(port, 0..=3),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(ns, labels, mut ports, host_network)| {
            // Container port names are unique per pod.
            ports.sort_by_key(|p| p.0);
            ports.dedup_by_key(|p| p.0);
            PodGen {
                ns,
                labels,
                ports,
                host_network,
            }
        })
}

fn build_state(pods: &[PodGen], ns_labels: &[Labels], policies: &[Value]) -> ClusterState {
    let mut st = ClusterState::default();
    for (ns, l) in NS.iter().zip(ns_labels) {
        st.namespaces.insert(
            ns.to_string(),
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": l}}))
                .unwrap_or_default(),
        );
    }
    for (i, p) in pods.iter().enumerate() {
        let ip = if p.host_network {
            NODE_IP
        } else {
            Ipv4Addr::new(10, 1, 0, i as u8 + 1)
        };
        let ports: Vec<Value> = p
            .ports
            .iter()
            .map(|(n, port, proto)| json!({"name": n, "containerPort": port, "protocol": proto}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": p.ns, "labels": p.labels},
            "spec": {"hostNetwork": p.host_network, "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip.to_string()}
        }))
        .unwrap_or_default();
        st.pods.insert((p.ns.to_string(), format!("p{i}")), pod);
    }
    for (i, v) in policies.iter().enumerate() {
        let mut np: NetworkPolicy = serde_json::from_value(v.clone()).unwrap_or_default();
        np.metadata.name = Some(format!("np{i}"));
        let ns = np.metadata.namespace.clone().unwrap_or_default();
        st.network_policies.insert((ns, format!("np{i}")), np);
    }
    st
}

fn locals_of(st: &ClusterState) -> Vec<LocalPod> {
    st.pods
        .iter()
        .filter_map(|((ns, name), p)| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            Some((ns, name, ip))
        })
        .enumerate()
        .map(|(i, (ns, name, ip))| LocalPod {
            ip,
            namespace: ns.as_str().into(),
            name: name.as_str().into(),
            interface: None,
            policy_slot: i as u32,
        })
        .collect()
}

fn compare(
    st: &ClusterState,
    table: &kxdp_control::policy::PolicyTable,
) -> Result<usize, TestCaseError> {
    let locals = locals_of(st);
    let mut peers: Vec<Ipv4Addr> = locals.iter().map(|l| l.ip).collect();
    peers.extend(EXTERNAL);
    peers.push(NODE_IP);
    let mut checks = 0;
    for lp in &locals {
        let pod = &st.pods[&(lp.namespace.to_string(), lp.name.to_string())];
        for d in [PolicyDirection::Ingress, PolicyDirection::Egress] {
            for &peer in &peers {
                for proto in [IpProto::Tcp, IpProto::Udp, IpProto::Sctp, IpProto::Icmp] {
                    for port in if proto == IpProto::Icmp {
                        &[0u16][..]
                    } else {
                        &PROBE_PORTS[..]
                    } {
                        let want = oracle(st, &lp.namespace, pod, d, peer, proto, *port);
                        let got = table.check(d, lp, peer, proto, *port) != PolicyVerdict::Denied;
                        prop_assert_eq!(
                            got,
                            want,
                            "{} {:?} peer {} {}/{}",
                            lp.key(),
                            d,
                            peer,
                            proto.name(),
                            port
                        );
                        checks += 1;
                    }
                }
            }
        }
    }
    Ok(checks)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(debug_assertions) { 400 } else { 2000 }, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_match_the_spec(
        pods in proptest::collection::vec(pod_strategy(), 1..=8),
        ns_labels in proptest::collection::vec(labels_strategy(&["team", "env"]), 3),
        policies in proptest::collection::vec(policy_strategy(), 0..=5),
    ) {
        let st = build_state(&pods, &ns_labels, &policies);
        let out = compile_policies(&st, "node-a", &[NODE_IP], &locals_of(&st));
        prop_assert!(out.warnings.is_empty(), "{:?}", out.warnings);
        compare(&st, &out.table)?;
    }

    /// The incremental path gives the same answers as a fresh compile after
    /// random edits (policies replaced, pods relabelled, namespaces relabelled).
    #[test]
    fn incremental_matches_the_spec(
        pods in proptest::collection::vec(pod_strategy(), 1..=8),
        ns_labels in proptest::collection::vec(labels_strategy(&["team", "env"]), 3),
        policies in proptest::collection::vec(policy_strategy(), 0..=4),
        pods2 in proptest::collection::vec(labels_strategy(&["app", "tier"]), 8),
        ns_labels2 in proptest::collection::vec(labels_strategy(&["team", "env"]), 3),
        policies2 in proptest::collection::vec(policy_strategy(), 0..=4),
    ) {
        let st = build_state(&pods, &ns_labels, &policies);
        let mut c = PolicyCompiler::new();
        let first = c.update(&st, "node-a", &[NODE_IP], &locals_of(&st));
        compare(&st, &first.table)?;
        // Relabel pods, namespaces, and keep half of the old policies.
        let pods_b: Vec<PodGen> = pods.iter().zip(&pods2).map(|(p, l)| PodGen { labels: l.clone(), ..p.clone() }).collect();
        let mut pol_b: Vec<Value> = policies.iter().step_by(2).cloned().collect();
        pol_b.extend(policies2);
        let st2 = build_state(&pods_b, &ns_labels2, &pol_b);
        let second = c.update(&st2, "node-a", &[NODE_IP], &locals_of(&st2));
        compare(&st2, &second.table)?;
        // Every revocation is visible in the change report.
        let locals = locals_of(&st2);
        for (i, lp) in locals.iter().enumerate() {
            let reported = second.changes.slots.contains(&(i as u32));
            for peer in locals.iter().map(|l| l.ip).chain(EXTERNAL) {
                if reported || second.changes.peer_ips.contains(&peer) {
                    continue;
                }
                for port in PROBE_PORTS {
                    prop_assert_eq!(
                        first.table.would_allow(lp, peer, lp.ip, IpProto::Tcp, port),
                        second.table.would_allow(lp, peer, lp.ip, IpProto::Tcp, port),
                        "unreported change for {} from {}", lp.key(), peer
                    );
                }
            }
        }
    }
}
