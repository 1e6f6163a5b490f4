//! Property test: the incremental [`Compiler`] fed the change sets of the
//! real [`ChangeTracker`] gives, after every step of a random sequence of
//! object changes, exactly the tables and warnings a from-scratch
//! [`compile`] of the same state gives.
//!
//! Compared per step: the Service table (every port's contents including
//! backend sets and Maglev tables, every frontend, NodePort and virtual IP),
//! the pod table, routes, node settings, neighbours, every warning, and the
//! NetworkPolicy verdicts (rule ids differ between a long-lived and a fresh
//! policy compiler, so verdicts are compared by the rule they name) for
//! every local pod against every pod, node and one external address.
//!
//! The universe is small on purpose so that changes collide: Services share
//! clusterIPs, externalIPs and NodePorts (frontend conflicts), slices move
//! between Services, pods move between nodes and label sets, selector
//! Services lose and gain their own slices (derived endpoints), this node's
//! Node object changes and can vanish (a compile error).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use kxdp_control::compile::{compile, CompileOptions, Compiler, NodeEnvironment};
use kxdp_control::model::ObjectKey;
use kxdp_control::policy::{PolicyDirection, PolicyVerdict};
use kxdp_control::source::{Kind, Object};
use kxdp_control::testing::SyntheticCluster;
use kxdp_control::tracker::ChangeTracker;
use kxdp_dataplane::tables::{IpProto, TableSet};
use proptest::prelude::*;
use serde_json::{json, Value};

const NODE: &str = "node-0";
const NS: [&str; 2] = ["a", "b"];
const NODES: u8 = 3;
const SERVICES: u8 = 6;
const SLICES: u8 = 6;
const PODS: u8 = 8;
const POLICIES: u8 = 2;

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object")
}

fn node_ip(k: u8) -> String {
    format!("192.168.50.{}", k + 1)
}

fn pod_ip(p: u8, node: u8) -> String {
    format!("10.244.{node}.{}", p + 2)
}

/// One change to make. The numbers pick variants of each object.
#[derive(Clone, Debug)]
enum Op {
    Service(u8, [u8; 6]),
    DeleteService(u8),
    Slice(u8, [u8; 6]),
    DeleteSlice(u8),
    Pod(u8, [u8; 5]),
    /// One field of an existing pod: labels, phase, IP, readiness or a
    /// container port (what real pod churn looks like).
    PodTweak(u8, u8, u8),
    DeletePod(u8),
    Node(u8, u8),
    DeleteNode(u8),
    Namespace(u8, u8),
    /// Pods stay; the namespace keeps only its name label.
    DeleteNamespace(u8),
    Policy(u8, [u8; 4]),
    DeletePolicy(u8),
}

fn service(i: u8, v: [u8; 6]) -> Object {
    let ns = NS[usize::from(i % 2)];
    // Shared addresses make Services fight over frontends.
    let cluster_ip = match v[0] % 6 {
        0 => "10.96.0.100".to_string(),
        1 => "None".to_string(),
        _ => format!("10.96.0.{}", i + 1),
    };
    let ty = ["ClusterIP", "NodePort", "LoadBalancer"][usize::from(v[1] % 3)];
    let mut ports = vec![
        json!({"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                                "nodePort": 30000 + u32::from(v[2] % 3)}),
    ];
    if v[2].is_multiple_of(2) {
        ports.push(json!({"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}));
    }
    if v[2].is_multiple_of(5) {
        ports.push(json!({"name": "web", "port": 8080, "targetPort": "http", "protocol": "TCP"}));
    }
    let mut spec = json!({
        "type": ty,
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ports": ports,
    });
    if !v[3].is_multiple_of(3) {
        spec["selector"] = json!({"app": format!("a{}", v[3] % 3)});
    }
    if v[4].is_multiple_of(4) {
        spec["externalIPs"] = json!(["192.0.2.1"]);
    }
    if v[4].is_multiple_of(3) && ty != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!("Local");
        spec["healthCheckNodePort"] = json!(32000 + u32::from(i));
    }
    if v[5].is_multiple_of(3) {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    if v[5] % 4 == 1 {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    let mut svc = json!({
        "metadata": {"namespace": ns, "name": format!("s{i}")},
        "spec": spec,
    });
    if ty == "LoadBalancer" && v[5].is_multiple_of(2) {
        svc["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": format!("203.0.113.{}", v[5] % 3)}]}});
    }
    Object::Service(obj(svc))
}

fn slice(j: u8, v: [u8; 6]) -> Object {
    let ns = NS[usize::from(j % 2)];
    // Mostly a Service of the slice's namespace; sometimes another one.
    let svc = format!("s{}", (v[0] % SERVICES) & !1 | (j % 2));
    let svc = if v[0].is_multiple_of(7) {
        format!("s{}", v[0] % SERVICES)
    } else {
        svc
    };
    let mut endpoints = Vec::new();
    for p in 0..PODS {
        if (v[1] >> (p % 8)) & 1 == 0 {
            continue;
        }
        let node = p.wrapping_add(v[2]) % NODES;
        let c = (v[3].wrapping_add(p * 3)) % 5;
        let mut ep = json!({
            "addresses": [pod_ip(p, node)],
            "nodeName": format!("node-{node}"),
        });
        ep["conditions"] = match c {
            0 => json!({}),
            1 => json!({"ready": false}),
            2 => json!({"ready": false, "serving": true, "terminating": true}),
            3 => json!({"ready": true, "serving": true, "terminating": false}),
            _ => json!({"ready": false, "serving": false, "terminating": true}),
        };
        endpoints.push(ep);
    }
    let mut ports =
        vec![json!({"name": "http", "port": 8080 + u32::from(v[4] % 2), "protocol": "TCP"})];
    if v[4].is_multiple_of(3) {
        ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP"}));
    }
    let address_type = if v[5].is_multiple_of(9) {
        "IPv6"
    } else {
        "IPv4"
    };
    Object::EndpointSlice(obj(json!({
        "metadata": {"namespace": ns, "name": format!("es{j}"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    })))
}

/// Label sets pods move between: shared ones (identities held by several
/// pods), none at all, and one per pod (an identity born and dying with
/// each relabel).
fn pod_labels(p: u8, v: u8) -> Option<Value> {
    match v % 7 {
        5 => None,
        6 => Some(json!({"app": format!("a{}", v % 3), "pod": format!("p{p}")})),
        _ => {
            let mut labels = json!({"app": format!("a{}", v % 3)});
            if v.is_multiple_of(2) {
                labels["tier"] = json!("x");
            }
            Some(labels)
        }
    }
}

/// An address two pods can claim at once (the first in key order keeps it).
fn shared_ip(node: u8) -> String {
    format!("10.244.{node}.250")
}

fn pod(p: u8, v: [u8; 5]) -> Object {
    let ns = NS[usize::from(p % 2)];
    let node = v[0] % NODES;
    let labels = pod_labels(p, v[1]);
    let phase = ["Running", "Running", "Pending", "Succeeded"][usize::from(v[2] % 4)];
    let mut status = json!({"phase": phase});
    if v[3] % 10 == 7 {
        status["podIP"] = json!(shared_ip(node));
    } else if !v[3].is_multiple_of(5) {
        status["podIP"] = json!(pod_ip(p, node));
    }
    if v[3].is_multiple_of(3) {
        status["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    }
    let mut meta = json!({"namespace": ns, "name": format!("p{p}")});
    if let Some(labels) = labels {
        meta["labels"] = labels;
    }
    if v[4].is_multiple_of(6) {
        meta["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    }
    let http = 8080 + u32::from(v[4] % 2);
    let mut spec = json!({"nodeName": format!("node-{node}"), "containers": [{"name": "c", "ports": [
        {"name": "http", "containerPort": http},
        {"name": "dns", "containerPort": 5353, "protocol": "UDP"}
    ]}]});
    if v[4] % 7 == 3 {
        // Never selected; as a peer it has its node's address.
        spec["hostNetwork"] = json!(true);
        status["podIP"] = json!(node_ip(node));
    }
    Object::Pod(obj(json!({
        "metadata": meta,
        "spec": spec,
        "status": status,
    })))
}

fn node(k: u8, v: u8) -> Object {
    let ip = node_ip(k);
    let mut ann = json!({
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data":
            format!(r#"{{"VNI":1,"VtepMAC":"0e:76:00:00:00:{:02x}"}}"#, k + v % 2),
        "flannel.alpha.coreos.com/public-ip": ip,
    });
    if v % 4 == 3 {
        ann["flannel.alpha.coreos.com/public-ip"] = json!(format!("192.168.60.{}", k + 1));
    }
    Object::Node(obj(json!({
        "metadata": {"name": format!("node-{k}"), "annotations": ann},
        "spec": {"podCIDR": format!("10.244.{}.0/24", if v % 5 == 4 { k + 10 } else { k })},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    })))
}

fn namespace(n: u8, v: u8) -> Object {
    let mut meta = json!({"name": NS[usize::from(n % 2)]});
    match v % 4 {
        // Only the name label the API server adds.
        3 => {}
        2 => meta["labels"] = json!({"team": format!("t{}", v % 2), "env": "prod"}),
        _ => meta["labels"] = json!({"team": format!("t{}", v % 2)}),
    }
    Object::Namespace(obj(json!({ "metadata": meta })))
}

/// The `from` peers of a policy: pod and namespace selectors of every
/// kind (matchLabels, NotIn and DoesNotExist, which match label-less pods;
/// the name label; `{}` namespaces) so that relabelled pods and
/// namespaces enter and leave peer lists.
fn peers(v: u8) -> Value {
    match v % 6 {
        0 | 1 => json!([
            {"podSelector": {"matchLabels": {"app": format!("a{}", v % 3)}}},
            {"namespaceSelector": {"matchLabels": {"team": format!("t{}", v % 2)}}}
        ]),
        2 => json!([{"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": ["a0"]}]}}]),
        3 => json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
                     "podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}]),
        4 => json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "x"}}}]),
        _ => json!([{"namespaceSelector": {"matchExpressions": [
            {"key": "env", "operator": "Exists"}]}}]),
    }
}

fn policy(q: u8, v: [u8; 4]) -> Object {
    let ns = NS[usize::from(q % 2)];
    let port = if v[2].is_multiple_of(2) {
        json!(8080)
    } else {
        json!("http")
    };
    // Sometimes every pod of the namespace: more verdicts depend on peers.
    let selected = if v[0] % 4 == 3 {
        json!({})
    } else {
        json!({"matchLabels": {"app": format!("a{}", v[0] % 3)}})
    };
    let mut spec = json!({
        "podSelector": selected,
        "ingress": [{"from": peers(v[1]), "ports": [{"port": port}]},
                    {"from": peers(v[3])}],
    });
    if v[2].is_multiple_of(3) {
        spec["egress"] = json!([
            {"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}}]},
            {"to": peers(v[3].wrapping_add(1)), "ports": [{"port": "http"}]}
        ]);
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
    }
    Object::NetworkPolicy(obj(json!({
        "metadata": {"namespace": ns, "name": format!("np{q}")},
        "spec": spec,
    })))
}

fn key(ns: &str, name: String) -> ObjectKey {
    (ns.to_string(), name)
}

fn apply(t: &mut ChangeTracker, op: &Op) {
    match *op {
        Op::Service(i, v) => {
            t.apply(service(i % SERVICES, v));
        }
        Op::DeleteService(i) => {
            let i = i % SERVICES;
            t.delete(Kind::Service, &key(NS[usize::from(i % 2)], format!("s{i}")));
        }
        Op::Slice(j, v) => {
            t.apply(slice(j % SLICES, v));
        }
        Op::DeleteSlice(j) => {
            let j = j % SLICES;
            t.delete(
                Kind::EndpointSlice,
                &key(NS[usize::from(j % 2)], format!("es{j}")),
            );
        }
        Op::Pod(p, v) => {
            t.apply(pod(p % PODS, v));
        }
        Op::PodTweak(p, which, v) => {
            let p = p % PODS;
            let key = key(NS[usize::from(p % 2)], format!("p{p}"));
            let Some(mut pod) = t.state().pods.get(&key).cloned() else {
                t.apply(pod(p, [v; 5]));
                return;
            };
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|n| n.strip_prefix("node-"))
                .and_then(|n| n.parse::<u8>().ok())
                .unwrap_or(0);
            let status = pod.status.get_or_insert_with(Default::default);
            match which % 5 {
                0 => {
                    pod.metadata.labels =
                        pod_labels(p, v).map(|l| serde_json::from_value(l).expect("labels"));
                }
                1 => {
                    status.phase =
                        Some(["Running", "Pending", "Succeeded"][usize::from(v % 3)].into())
                }
                2 => {
                    status.pod_ip = (v % 2 == 0).then(|| pod_ip(p, node));
                }
                3 => {
                    status.conditions = Some(vec![obj(
                        json!({"type": "Ready", "status": if v % 2 == 0 { "True" } else { "False" }}),
                    )]);
                }
                _ => {
                    if let Some(c) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
                        c.ports = Some(vec![obj(
                            json!({"name": "http", "containerPort": 8080 + u32::from(v % 2)}),
                        )]);
                    }
                }
            }
            t.apply(Object::Pod(pod));
        }
        Op::DeletePod(p) => {
            let p = p % PODS;
            t.delete(Kind::Pod, &key(NS[usize::from(p % 2)], format!("p{p}")));
        }
        Op::Node(k, v) => {
            t.apply(node(k % NODES, v));
        }
        Op::DeleteNode(k) => {
            t.delete(Kind::Node, &(String::new(), format!("node-{}", k % NODES)));
        }
        Op::Namespace(n, v) => {
            t.apply(namespace(n, v));
        }
        Op::DeleteNamespace(n) => {
            t.delete(
                Kind::Namespace,
                &(String::new(), NS[usize::from(n % 2)].to_string()),
            );
        }
        Op::Policy(q, v) => {
            t.apply(policy(q % POLICIES, v));
        }
        Op::DeletePolicy(q) => {
            let q = q % POLICIES;
            t.delete(
                Kind::NetworkPolicy,
                &key(NS[usize::from(q % 2)], format!("np{q}")),
            );
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<[u8; 6]>()).prop_map(|(i, v)| Op::Service(i, v)),
        1 => any::<u8>().prop_map(Op::DeleteService),
        8 => (any::<u8>(), any::<[u8; 6]>()).prop_map(|(j, v)| Op::Slice(j, v)),
        2 => any::<u8>().prop_map(Op::DeleteSlice),
        6 => (any::<u8>(), any::<[u8; 5]>()).prop_map(|(p, v)| Op::Pod(p, v)),
        6 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(p, w, v)| Op::PodTweak(p, w, v)),
        1 => any::<u8>().prop_map(Op::DeletePod),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Node(k, v)),
        1 => any::<u8>().prop_map(Op::DeleteNode),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(n, v)| Op::Namespace(n, v)),
        1 => any::<u8>().prop_map(Op::DeleteNamespace),
        3 => (any::<u8>(), any::<[u8; 4]>()).prop_map(|(q, v)| Op::Policy(q, v)),
        1 => any::<u8>().prop_map(Op::DeletePolicy),
    ]
}

/// Every NetworkPolicy verdict that matters, with the rule named by its
/// policy rather than its id.
fn verdicts(t: &TableSet) -> Vec<String> {
    // Every address a pod can ever have, held now or not: a stale table
    // still naming a pod's old address shows there.
    let mut peers: BTreeSet<Ipv4Addr> = (0..PODS)
        .flat_map(|p| (0..NODES).map(move |n| pod_ip(p, n)))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    peers.extend((0..NODES).filter_map(|k| node_ip(k).parse::<Ipv4Addr>().ok()));
    peers.extend((0..NODES).filter_map(|k| shared_ip(k).parse::<Ipv4Addr>().ok()));
    // This node's other addresses: its VTEP (public-ip annotation), the
    // pods' gateway and the pod CIDR network address.
    peers.extend([
        Ipv4Addr::new(192, 168, 60, 1),
        Ipv4Addr::new(10, 244, 0, 1),
        Ipv4Addr::new(10, 244, 0, 0),
        Ipv4Addr::new(10, 244, 10, 1),
        Ipv4Addr::new(10, 244, 10, 0),
    ]);
    peers.insert(Ipv4Addr::new(203, 0, 113, 9));
    let mut out = Vec::new();
    for lp in t.pods.iter() {
        for d in [PolicyDirection::Ingress, PolicyDirection::Egress] {
            for peer in &peers {
                for (proto, port) in [
                    (IpProto::Tcp, 8080),
                    (IpProto::Tcp, 8081),
                    (IpProto::Udp, 53),
                ] {
                    let v = match t.policy.check(d, lp, *peer, proto, port) {
                        PolicyVerdict::Allowed { rule } => t.policy.describe_rule(rule),
                        other => format!("{other:?}"),
                    };
                    out.push(format!("{} {d:?} {peer} {proto:?}/{port}: {v}", lp.key()));
                }
            }
        }
    }
    out
}

/// Run `steps` (each a batch of changes between two syncs) and compare
/// after each. Returns how many compiles were partial.
fn check_sequence(start: &[Op], steps: &[Vec<Op>]) -> Result<usize, TestCaseError> {
    let opts = CompileOptions::new(NODE);
    let mut tracker = ChangeTracker::new();
    for k in 0..NODES {
        tracker.apply(node(k, 0));
    }
    for op in start {
        apply(&mut tracker, op);
    }
    let mut compiler = Compiler::new();
    let mut partial = 0;
    let mut full_next = true;
    for (n, step) in std::iter::once(&Vec::new()).chain(steps).enumerate() {
        for op in step {
            apply(&mut tracker, op);
        }
        let changes = tracker.take_changes();
        let state = tracker.state();
        let env = NodeEnvironment::synthetic(state, NODE);
        let generation = n as u64 + 1;
        let inc = compiler.compile(
            state,
            (!full_next).then_some(&changes),
            &env,
            &opts,
            generation,
        );
        let reference = compile(state, &env, &opts, generation);
        match (inc, reference) {
            (Ok(inc), Ok(reference)) => {
                if !full_next {
                    prop_assert!(!inc.stats.full, "step {n}: a partial compile was full");
                    partial += 1;
                }
                full_next = false;
                let (a, b) = (&inc.tables, &reference.tables);
                prop_assert_eq!(&a.services, &b.services, "step {}: Service table", n);
                prop_assert_eq!(&a.pods, &b.pods, "step {}: pod table", n);
                prop_assert_eq!(&a.routes, &b.routes, "step {}: routes", n);
                prop_assert_eq!(&a.node, &b.node, "step {}: node", n);
                prop_assert_eq!(&a.neighbours, &b.neighbours, "step {}: neighbours", n);
                prop_assert_eq!(a.generation, b.generation);
                prop_assert_eq!(&inc.warnings, &reference.warnings, "step {}: warnings", n);
                prop_assert_eq!(verdicts(a), verdicts(b), "step {}: policy verdicts", n);
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                // What the runner does after a failed compile.
                full_next = true;
            }
            (a, b) => {
                return Err(TestCaseError::fail(format!(
                    "step {n}: incremental {:?} vs full {:?}",
                    a.map(|o| o.tables.generation),
                    b.map(|o| o.tables.generation)
                )))
            }
        }
    }
    Ok(partial)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 1500 } else { 5000 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn incremental_compile_equals_full_compile(
        start in prop::collection::vec(op(), 0..24),
        steps in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..12),
    ) {
        check_sequence(&start, &steps)?;
    }
}

/// An endpoint change takes the fast path: one Service recompiled, the
/// frontend maps shared, every other port shared with the previous
/// generation (same `Arc`), and the tables equal a full compile's.
#[test]
fn endpoint_change_shares_everything_else() {
    let cluster = SyntheticCluster {
        nodes: 4,
        namespaces: 3,
        pods: 60,
        services: 30,
        endpoints_per_service: 3,
        policies: 4,
    };
    let mut tracker = ChangeTracker::new();
    tracker.replace_all(cluster.state().expect("state"));
    tracker.take_changes();
    let opts = CompileOptions::new(NODE);
    let env = NodeEnvironment::synthetic(tracker.state(), NODE);
    let mut compiler = Compiler::new();
    let first = compiler
        .compile(tracker.state(), None, &env, &opts, 1)
        .expect("full");
    assert!(first.stats.full);

    let s = 7;
    tracker.apply(Object::EndpointSlice(
        cluster.endpoint_slice_with(s, Some(1)),
    ));
    let changes = tracker.take_changes();
    let second = compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 2)
        .expect("partial");
    assert_eq!(second.stats.services_compiled, 1);
    assert!(!second.stats.services_reassembled);
    assert!(!second.stats.policy_updated);
    assert!(!second.stats.pods_rebuilt);

    let (a, b) = (&first.tables.services, &second.tables.services);
    let changed = b
        .lookup(SyntheticCluster::service_ip(s), 80, IpProto::Tcp, false)
        .expect("frontend")
        .service_port as usize;
    assert_eq!(
        b.ports.get(changed).expect("port").cluster.backends.len(),
        2
    );
    for i in 0..a.ports.len() {
        let same = Arc::ptr_eq(
            a.ports.get_shared(i).expect("port"),
            b.ports.get_shared(i).expect("port"),
        );
        assert_eq!(same, i != changed, "port {i} shared: {same}");
    }
    let reference = compile(tracker.state(), &env, &opts, 2).expect("full");
    assert_eq!(second.tables.services, reference.tables.services);
}

/// A failed compile drops the cache: the next compile is full even when
/// the caller offers a change set.
#[test]
fn failed_compile_forces_a_full_one() {
    let opts = CompileOptions::new(NODE);
    let mut tracker = ChangeTracker::new();
    tracker.apply(node(0, 0));
    tracker.apply(service(2, [2, 0, 1, 1, 1, 1]));
    let mut compiler = Compiler::new();
    let env = NodeEnvironment::synthetic(tracker.state(), NODE);
    tracker.take_changes();
    compiler
        .compile(tracker.state(), None, &env, &opts, 1)
        .expect("full");
    tracker.delete(Kind::Node, &(String::new(), NODE.to_string()));
    let changes = tracker.take_changes();
    assert!(compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 2)
        .is_err());
    tracker.apply(node(0, 0));
    let changes = tracker.take_changes();
    let out = compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 2)
        .expect("compiles again");
    assert!(out.stats.full, "the compile after an error is full");
    assert_eq!(out.tables.services.ports.len(), 1);
}

/// A peer pod's label change (not on this node) changes which peers a
/// local pod's policy admits; a readiness change does not, and skips the
/// NetworkPolicy compiler.
#[test]
fn remote_pod_label_change_reaches_policy_but_readiness_does_not() {
    let opts = CompileOptions::new(NODE);
    let mut tracker = ChangeTracker::new();
    for k in 0..NODES {
        tracker.apply(node(k, 0));
    }
    // p0 on node-0 (local, app=a0), p2 on node-1 (app=a1), both in "a".
    tracker.apply(pod(0, [0, 0, 0, 1, 1]));
    tracker.apply(pod(2, [1, 1, 0, 1, 1]));
    // np0: selects app=a0, admits app=a1 on 8080.
    tracker.apply(policy(0, [0, 1, 2, 1]));
    let mut compiler = Compiler::new();
    let env = NodeEnvironment::synthetic(tracker.state(), NODE);
    tracker.take_changes();
    let first = compiler
        .compile(tracker.state(), None, &env, &opts, 1)
        .expect("full");
    let local = first
        .tables
        .pods
        .iter()
        .next()
        .expect("p0 is local")
        .clone();
    let peer: Ipv4Addr = pod_ip(2, 1).parse().unwrap();
    let verdict = |t: &TableSet| {
        t.policy
            .check(PolicyDirection::Ingress, &local, peer, IpProto::Tcp, 8080)
    };
    assert!(matches!(
        verdict(&first.tables),
        PolicyVerdict::Allowed { .. }
    ));

    // Readiness only: no policy work, same verdict.
    tracker.apply(pod(2, [1, 1, 0, 3, 1]));
    let changes = tracker.take_changes();
    assert_eq!(changes.len(), 1);
    let second = compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 2)
        .expect("partial");
    assert!(!second.stats.policy_updated && !second.stats.pods_rebuilt);
    assert!(matches!(
        verdict(&second.tables),
        PolicyVerdict::Allowed { .. }
    ));

    // Label a1 -> a2: no longer admitted.
    tracker.apply(pod(2, [1, 2, 0, 3, 1]));
    let changes = tracker.take_changes();
    let third = compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 3)
        .expect("partial");
    assert!(third.stats.policy_updated);
    assert_eq!(verdict(&third.tables), PolicyVerdict::Denied);
}

/// A Service that gains an externalIP (new frontends, same ports, no
/// conflict) patches the frontend maps instead of rebuilding the table;
/// one that takes a frontend another Service holds makes the table be
/// rebuilt, with the same outcome as a full compile.
#[test]
fn new_frontends_patch_the_maps_and_conflicts_rebuild() {
    let cluster = SyntheticCluster {
        nodes: 4,
        namespaces: 3,
        pods: 60,
        services: 30,
        endpoints_per_service: 3,
        policies: 0,
    };
    let mut tracker = ChangeTracker::new();
    tracker.replace_all(cluster.state().expect("state"));
    tracker.take_changes();
    let opts = CompileOptions::new(NODE);
    let env = NodeEnvironment::synthetic(tracker.state(), NODE);
    let mut compiler = Compiler::new();
    compiler
        .compile(tracker.state(), None, &env, &opts, 1)
        .expect("full");

    let external = Ipv4Addr::new(192, 0, 2, 7);
    let key = cluster.service_key(4);
    let mut svc = tracker.state().services[&key].clone();
    svc.spec.as_mut().expect("spec").external_ips = Some(vec![external.to_string()]);
    tracker.apply(Object::Service(svc));
    let changes = tracker.take_changes();
    let out = compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 2)
        .expect("partial");
    assert!(out.stats.frontends_changed && !out.stats.services_reassembled);
    let f = out
        .tables
        .services
        .lookup(external, 80, IpProto::Tcp, false)
        .expect("the new frontend");
    assert_eq!(
        out.tables.services.port(f.service_port).map(|p| &*p.name),
        Some("svc4")
    );
    assert!(out.tables.services.is_virtual_ip(external));
    let reference = compile(tracker.state(), &env, &opts, 2).expect("full");
    assert_eq!(out.tables.services, reference.tables.services);

    // Another Service claims the same externalIP: a conflict, rebuilt.
    let mut other = tracker.state().services[&cluster.service_key(5)].clone();
    other.spec.as_mut().expect("spec").external_ips = Some(vec![external.to_string()]);
    tracker.apply(Object::Service(other));
    let changes = tracker.take_changes();
    let out = compiler
        .compile(tracker.state(), Some(&changes), &env, &opts, 3)
        .expect("partial");
    assert!(out.stats.services_reassembled);
    let reference = compile(tracker.state(), &env, &opts, 3).expect("full");
    assert_eq!(out.tables.services, reference.tables.services);
    assert_eq!(out.warnings, reference.warnings);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
}
