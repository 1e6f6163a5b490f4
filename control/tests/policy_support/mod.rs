//! Shared helpers of the policy tests: the upstream-style x/y/z model and
//! truth tables.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kxdp_control::policy::{PolicyDirection, PolicyTable, PolicyVerdict};
use kxdp_control::ClusterState;
use kxdp_dataplane::tables::{IpProto, LocalPod};
use serde_json::json;

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// 10.244.<ns index + 1>.<pod index + 10>
pub fn model_ip(ns: &str, pod: &str) -> Ipv4Addr {
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap_or(9) as u8;
    let p = PODS.iter().position(|x| *x == pod).unwrap_or(9) as u8;
    Ipv4Addr::new(10, 244, n + 1, p + 10)
}

pub fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .unwrap_or_else(|e| panic!("namespace {name}: {e}"))
}

/// A pod with `ports` = [(name, number, protocol)].
pub fn pod(
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    ip: Ipv4Addr,
    ports: &[(&str, u16, &str)],
) -> Pod {
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}
    }))
    .unwrap_or_else(|e| panic!("pod {ns}/{name}: {e}"))
}

pub fn policy(v: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("policy {v}: {e}"))
}

/// The upstream e2e model: namespaces x, y, z (label ns=<name>), pods a, b, c
/// (label pod=<name>) serving 80 and 81 over TCP, UDP and SCTP with ports
/// named serve-<port>-<proto>.
pub fn model() -> ClusterState {
    let mut st = ClusterState::default();
    let ports = [
        ("serve-80-tcp", 80, "TCP"),
        ("serve-80-udp", 80, "UDP"),
        ("serve-80-sctp", 80, "SCTP"),
        ("serve-81-tcp", 81, "TCP"),
        ("serve-81-udp", 81, "UDP"),
        ("serve-81-sctp", 81, "SCTP"),
    ];
    for ns in NAMESPACES {
        st.namespaces
            .insert(ns.into(), namespace(ns, json!({"ns": ns})));
        for p in PODS {
            st.pods.insert(
                (ns.into(), p.into()),
                pod(ns, p, json!({"pod": p}), model_ip(ns, p), &ports),
            );
        }
    }
    st
}

pub fn add_policy(st: &mut ClusterState, v: serde_json::Value) {
    let np = policy(v);
    let ns = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    st.network_policies.insert((ns, name), np);
}

/// Every model pod as a local pod (slot = index).
pub fn model_locals() -> Vec<LocalPod> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for p in PODS {
            out.push(LocalPod {
                ip: model_ip(ns, p),
                namespace: ns.into(),
                name: p.into(),
                interface: None,
                policy_slot: out.len() as u32,
            });
        }
    }
    out
}

/// One side passes when not isolated or allowed.
pub fn passes(v: PolicyVerdict) -> bool {
    v != PolicyVerdict::Denied
}

/// src -> dst: the source's egress and the destination's ingress.
pub fn reach(t: &PolicyTable, src: &LocalPod, dst: &LocalPod, proto: IpProto, port: u16) -> bool {
    passes(t.check(PolicyDirection::Egress, src, dst.ip, proto, port))
        && passes(t.check(PolicyDirection::Ingress, dst, src.ip, proto, port))
}

/// The 9x9 matrix in the notation of upstream's truth tables: one row per
/// source, `.` = connected, `X` = blocked, grouped per namespace.
pub fn matrix(t: &PolicyTable, locals: &[LocalPod], proto: IpProto, port: u16) -> String {
    let mut out = String::new();
    for src in locals {
        out.push_str(&format!("{}/{} ", src.namespace, src.name));
        for (i, dst) in locals.iter().enumerate() {
            if i % 3 == 0 {
                out.push(' ');
            }
            out.push(if reach(t, src, dst, proto, port) {
                '.'
            } else {
                'X'
            });
        }
        out.push('\n');
    }
    out
}

/// Normalize an expected table written as rows `"x/a  ... XXX ..."`.
pub fn expected(rows: &[&str]) -> String {
    rows.iter()
        .map(|r| {
            let mut it = r.split_whitespace();
            let label = it.next().unwrap_or("");
            let groups: Vec<&str> = it.collect();
            format!("{label}  {}\n", groups.join(" "))
        })
        .collect()
}

pub fn labels(v: serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(v).unwrap_or_default()
}
