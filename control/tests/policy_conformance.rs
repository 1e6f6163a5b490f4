//! NetworkPolicy conformance table modelled on upstream's e2e model
//! (test/e2e/network/netpol in kubernetes/kubernetes): namespaces x, y, z;
//! pods a, b, c; servers on 80 and 81 over TCP, UDP and SCTP. Each case
//! compiles the policies with every pod local, computes the 9x9 reachability
//! matrix through the compiled tables (source egress AND destination
//! ingress) and compares it with the expected truth table: one row per
//! source, columns x/a x/b x/c | y/a y/b y/c | z/a z/b z/c, `.` connected,
//! `X` blocked.

mod policy_support;

use std::sync::Arc;

use kxdp_control::policy::{
    compile_policies, PolicyCompiler, PolicyDirection, PolicyVerdict, PolicyWarning, NODE_RULE,
};
use kxdp_control::ClusterState;
use kxdp_dataplane::tables::{IpProto, LocalPod};
use policy_support::*;
use serde_json::{json, Value};

use IpProto::{Icmp, Sctp, Tcp, Udp};

/// The same row for every source.
fn cols(row: &str) -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p} {row}")))
        .collect()
}

fn rows(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| s.to_string()).collect()
}

struct Case {
    name: &'static str,
    policies: Vec<Value>,
    /// Adjust the model before compiling (per-pod ports, labels).
    tweak: Option<fn(&mut ClusterState)>,
    probes: Vec<(IpProto, u16, Vec<String>)>,
    /// Number of warnings expected.
    warnings: usize,
}

fn case(
    name: &'static str,
    policies: Vec<Value>,
    probes: Vec<(IpProto, u16, Vec<String>)>,
) -> Case {
    Case {
        name,
        policies,
        tweak: None,
        probes,
        warnings: 0,
    }
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn run(c: &Case) -> Result<(), String> {
    let mut st = model();
    if let Some(t) = c.tweak {
        t(&mut st);
    }
    for p in &c.policies {
        add_policy(&mut st, p.clone());
    }
    let locals = model_locals();
    let out = compile_policies(&st, "node-a", &[NODE_IP], &locals);
    let mut errors = String::new();
    if out.warnings.len() != c.warnings {
        errors.push_str(&format!(
            "{}: expected {} warnings, got {:?}\n",
            c.name, c.warnings, out.warnings
        ));
    }
    for (proto, port, rows) in &c.probes {
        let got = matrix(&out.table, &locals, *proto, *port);
        let want = expected(&rows.iter().map(String::as_str).collect::<Vec<_>>());
        if got != want {
            errors.push_str(&format!(
                "{} {}/{port}:\nexpected:\n{want}got:\n{got}\n",
                c.name,
                proto.name()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[rustfmt::skip] // The truth tables read best as written.
fn cases() -> Vec<Case> {
    let all_ok = || cols("... ... ...");
    vec![
        case("no policies: everything connects", vec![], vec![
            (Tcp, 80, all_ok()), (Udp, 81, all_ok()), (Sctp, 80, all_ok()), (Icmp, 0, all_ok()),
        ]),
        case("deny all ingress in x (policyTypes defaulted, no ingress)",
            vec![np("x", "deny", json!({"podSelector": {}}))],
            vec![(Tcp, 80, cols("XXX ... ...")), (Udp, 81, cols("XXX ... ..."))]),
        case("ingress: [] denies all",
            vec![np("x", "deny", json!({"podSelector": {}, "ingress": []}))],
            vec![(Tcp, 80, cols("XXX ... ..."))]),
        case("deny all plus an empty rule {} allows everybody",
            vec![np("x", "deny", json!({"podSelector": {}})),
                 np("x", "allow", json!({"podSelector": {}, "ingress": [{}]}))],
            vec![(Tcp, 80, all_ok()), (Icmp, 0, all_ok())]),
        case("from: [] matches all sources (upstream types.go)",
            vec![np("x", "p", json!({"podSelector": {}, "ingress": [{"from": []}]}))],
            vec![(Tcp, 80, all_ok())]),
        case("deny all egress in x",
            vec![np("x", "deny", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
            vec![(Tcp, 80, rows(&[
                "x/a XXX XXX XXX", "x/b XXX XXX XXX", "x/c XXX XXX XXX",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        case("egress: [] without policyTypes is an ingress-only policy (defaults.go len(Egress) != 0)",
            vec![np("x", "p", json!({"podSelector": {}, "egress": []}))],
            vec![(Tcp, 80, cols("XXX ... ..."))]),
        case("egress rules without policyTypes isolate both directions",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a XXX ... XXX", "x/b X.. ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b X.. ... ...", "y/c X.. ... ...",
                "z/a X.. ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("policyTypes [Ingress] ignores egress rules",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))],
            vec![(Tcp, 80, cols("X.. ... ..."))]),
        case("podSelector peer: own namespace only",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b ... ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b X.. ... ...", "y/c X.. ... ...",
                "z/a X.. ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("namespaceSelector peer",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b X.. ... ...", "x/c X.. ... ...",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a X.. ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("namespaceSelector AND podSelector in one peer",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                       "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b X.. ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b ... ... ...", "y/c X.. ... ...",
                "z/a X.. ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("two peers are ORed",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                      {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b ... ... ...", "x/c X.. ... ...",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a X.. ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("namespaceSelector {} with podSelector: that pod in every namespace",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b ... ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b ... ... ...", "y/c X.. ... ...",
                "z/a X.. ... ...", "z/b ... ... ...", "z/c X.. ... ...",
            ]))]),
        case("matchExpressions In selects the policy's pods",
            vec![np("x", "p", json!({"podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "In", "values": ["a", "b"]}]}}))],
            vec![(Tcp, 80, cols("XX. ... ..."))]),
        case("namespaceSelector NotIn",
            vec![np("x", "p", json!({"podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a XXX ... ...", "x/b XXX ... ...", "x/c XXX ... ...",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        case("namespaceSelector DoesNotExist matches no labelled namespace",
            vec![np("x", "p", json!({"podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "ns", "operator": "DoesNotExist"}]}}]}]}))],
            vec![(Tcp, 80, cols("XXX ... ..."))]),
        case("podSelector Exists in every namespace",
            vec![np("x", "p", json!({"podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "Exists"}]}}]}]}))],
            vec![(Tcp, 80, all_ok())]),
        case("kubernetes.io/metadata.name is on every namespace",
            vec![np("x", "p", json!({"podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a XXX ... ...", "x/b XXX ... ...", "x/c XXX ... ...",
                "y/a XXX ... ...", "y/b XXX ... ...", "y/c XXX ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        Case { warnings: 1, ..case("invalid peer selector matches nothing but the policy still isolates",
            vec![np("x", "p", json!({"podSelector": {},
                "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "in", "values": ["b"]}]}}]}]}))],
            vec![(Tcp, 80, cols("XXX ... ..."))]) },
        Case { warnings: 1, ..case("invalid spec.podSelector isolates the namespace and allows nothing",
            vec![np("x", "p", json!({"podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "In", "values": []}]},
                "ingress": [{}]}))],
            vec![(Tcp, 80, cols("XXX ... ..."))]) },
        Case { warnings: 1, ..case("invalid port entry matches nothing (the list does not become empty)",
            vec![np("x", "p", json!({"podSelector": {},
                "ingress": [{"ports": [{"port": 81, "endPort": 80}]}]}))],
            vec![(Tcp, 80, cols("XXX ... ...")), (Tcp, 81, cols("XXX ... ..."))]) },
        case("numeric port, TCP by default",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 81}]}]}))],
            vec![(Tcp, 80, cols("X.. ... ...")), (Tcp, 81, all_ok()), (Udp, 81, cols("X.. ... ..."))]),
        case("UDP port",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 80, "protocol": "UDP"}]}]}))],
            vec![(Udp, 80, all_ok()), (Tcp, 80, cols("X.. ... ...")), (Udp, 81, cols("X.. ... ..."))]),
        case("SCTP port",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}]}))],
            vec![(Sctp, 81, all_ok()), (Sctp, 80, cols("X.. ... ...")), (Udp, 81, cols("X.. ... ..."))]),
        case("port ranges with endPort",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]})),
                 np("x", "q", json!({"podSelector": {"matchLabels": {"pod": "b"}},
                    "ingress": [{"ports": [{"port": 81, "endPort": 90, "protocol": "UDP"}]}]}))],
            vec![(Tcp, 80, cols(".X. ... ...")), (Tcp, 81, cols(".X. ... ...")),
                 (Udp, 81, cols("X.. ... ...")), (Udp, 80, cols("XX. ... ..."))]),
        case("a protocol without port: every port of that protocol",
            vec![np("x", "p", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}))],
            vec![(Udp, 80, all_ok()), (Udp, 81, all_ok()), (Tcp, 80, cols("XXX ... ..."))]),
        case("named ingress port matches name and protocol",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]},
                            {"ports": [{"port": "serve-80-udp"}]}]}))],
            vec![(Udp, 81, all_ok()), (Udp, 80, cols("X.. ... ...")),
                 (Tcp, 81, cols("X.. ... ...")), (Tcp, 80, cols("X.. ... ..."))]),
        Case { tweak: Some(http_ports), ..case(
            "named ingress port resolves per destination pod",
            vec![np("x", "p", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))],
            vec![(Tcp, 80, cols(".XX ... ...")), (Tcp, 81, cols("X.X ... ..."))]) },
        case("named egress port resolves against the destination pod",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "serve-81-tcp"}]}]}))],
            vec![(Tcp, 81, all_ok()), (Tcp, 80, rows(&[
                "x/a XXX XXX XXX", "x/b ... ... ...", "x/c ... ... ...",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        Case { tweak: Some(http_ports), ..case(
            "named egress port: same name, different numbers per destination",
            vec![np("y", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "http"}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a ... ... ...", "x/b ... ... ...", "x/c ... ... ...",
                "y/a .XX XXX XXX", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ])), (Tcp, 81, rows(&[
                "x/a ... ... ...", "x/b ... ... ...", "x/c ... ... ...",
                "y/a X.X XXX XXX", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]) },
        case("a rule with ports never matches ICMP; a rule without ports does",
            vec![np("x", "ports", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"ports": [{"port": 80}]}]})),
                 np("x", "noports", json!({"podSelector": {"matchLabels": {"pod": "b"}},
                    "ingress": [{"from": [{"podSelector": {}}]}]}))],
            vec![(Icmp, 0, rows(&[
                "x/a X.. ... ...", "x/b X.. ... ...", "x/c X.. ... ...",
                "y/a XX. ... ...", "y/b XX. ... ...", "y/c XX. ... ...",
                "z/a XX. ... ...", "z/b XX. ... ...", "z/c XX. ... ...",
            ])), (Tcp, 80, rows(&[
                "x/a ... ... ...", "x/b ... ... ...", "x/c ... ... ...",
                "y/a .X. ... ...", "y/b .X. ... ...", "y/c .X. ... ...",
                "z/a .X. ... ...", "z/b .X. ... ...", "z/c .X. ... ...",
            ]))]),
        case("egress ipBlock cidr minus a /32 except matches pod IPs",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.11/32"]}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a XXX .X. XXX", "x/b ... ... ...", "x/c ... ... ...",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        case("ipBlock with nested and overlapping excepts, /0 and /32",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [
                        {"ipBlock": {"cidr": "10.244.0.0/16",
                                     "except": ["10.244.2.0/23", "10.244.3.0/24", "10.244.1.11/32"]}},
                        {"ipBlock": {"cidr": "10.244.3.12/32"}}]}]})),
                 np("x", "q", json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]})),
                 np("x", "r", json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/0"]}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a .X. XXX XX.", "x/b ... ... ...", "x/c XXX XXX XXX",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        case("ingress ipBlock /32",
            vec![np("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.3.10/32"}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b X.. ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b X.. ... ...", "y/c X.. ... ...",
                "z/a ... ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("a connection needs the source's egress and the destination's ingress",
            vec![np("x", "eg", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})),
                 np("y", "in", json!({"podSelector": {"matchLabels": {"pod": "b"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a XXX .X. XXX", "x/b ... .X. ...", "x/c ... .X. ...",
                "y/a ... .X. ...", "y/b ... .X. ...", "y/c ... .X. ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
        case("union of several policies selecting one pod",
            vec![np("x", "p1", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})),
                 np("x", "p2", json!({"podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}], "ports": [{"port": 80}]}]}))],
            vec![(Tcp, 80, rows(&[
                "x/a X.. ... ...", "x/b ... ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b X.. ... ...", "y/c X.. ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ])), (Tcp, 81, rows(&[
                "x/a X.. ... ...", "x/b ... ... ...", "x/c X.. ... ...",
                "y/a X.. ... ...", "y/b X.. ... ...", "y/c X.. ... ...",
                "z/a X.. ... ...", "z/b X.. ... ...", "z/c X.. ... ...",
            ]))]),
        case("egress allow UDP/80 only (DNS-style)",
            vec![np("x", "p", json!({"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 80, "protocol": "UDP"}]}]}))],
            vec![(Udp, 80, all_ok()), (Tcp, 80, rows(&[
                "x/a XXX XXX XXX", "x/b XXX XXX XXX", "x/c XXX XXX XXX",
                "y/a ... ... ...", "y/b ... ... ...", "y/c ... ... ...",
                "z/a ... ... ...", "z/b ... ... ...", "z/c ... ... ...",
            ]))]),
    ]
}

/// x/a names 80/TCP "http", x/b names 81/TCP "http", x/c has no "http".
fn http_ports(st: &mut ClusterState) {
    for (name, port) in [("a", 80), ("b", 81)] {
        st.pods.insert(
            ("x".into(), name.into()),
            pod(
                "x",
                name,
                json!({"pod": name}),
                model_ip("x", name),
                &[("http", port, "TCP")],
            ),
        );
    }
}

#[test]
fn conformance_table() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| run(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- updates -------------------------------------------------------------

fn slot_of(locals: &[LocalPod], key: &str) -> u32 {
    locals
        .iter()
        .position(|p| p.key() == key)
        .map_or(u32::MAX, |i| i as u32)
}

fn allow_from_pod_b() -> Value {
    np(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )
}

#[test]
fn update_policy_edited() {
    let locals = model_locals();
    let mut st = model();
    add_policy(&mut st, allow_from_pod_b());
    add_policy(&mut st, np("z", "deny", json!({"podSelector": {}})));
    let mut c = PolicyCompiler::new();
    let first = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(
        matrix(&first.table, &locals, Tcp, 80),
        expected(
            &rows(&[
                "x/a X.. ... XXX",
                "x/b ... ... XXX",
                "x/c X.. ... XXX",
                "y/a X.. ... XXX",
                "y/b X.. ... XXX",
                "y/c X.. ... XXX",
                "z/a X.. ... XXX",
                "z/b X.. ... XXX",
                "z/c X.. ... XXX",
            ])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
        )
    );

    add_policy(
        &mut st,
        np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
        ),
    );
    let second = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(
        matrix(&second.table, &locals, Tcp, 80),
        expected(
            &rows(&[
                "x/a X.. ... XXX",
                "x/b X.. ... XXX",
                "x/c ... ... XXX",
                "y/a X.. ... XXX",
                "y/b X.. ... XXX",
                "y/c X.. ... XXX",
                "z/a X.. ... XXX",
                "z/b X.. ... XXX",
                "z/c X.. ... XXX",
            ])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
        )
    );
    // Only x/a's ingress table was rebuilt; z's tables are the same Arcs.
    assert_eq!(second.changes.slots, vec![slot_of(&locals, "x/a")]);
    assert_eq!(second.stats.dir_tables_built, 1);
    assert!(second.changes.peer_ips.is_empty());
    let za = slot_of(&locals, "z/a") as usize;
    let (old, new) = (&first.table.slots()[za], &second.table.slots()[za]);
    assert!(matches!((&old.ingress, &new.ingress), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));

    // The established x/b -> x/a flow is revoked, x/c -> x/a is not.
    let xa = &locals[slot_of(&locals, "x/a") as usize];
    let (xb, xc) = (model_ip("x", "b"), model_ip("x", "c"));
    assert!(first.table.would_allow(xa, xb, xa.ip, Tcp, 80));
    assert!(!second.table.would_allow(xa, xb, xa.ip, Tcp, 80));
    assert!(second.table.would_allow(xa, xc, xa.ip, Tcp, 80));
}

#[test]
fn update_pod_relabelled() {
    let locals = model_locals();
    let mut st = model();
    add_policy(&mut st, allow_from_pod_b());
    let mut c = PolicyCompiler::new();
    let first = c.update(&st, "node-a", &[NODE_IP], &locals);
    let xa = &locals[slot_of(&locals, "x/a") as usize];
    let xb_ip = model_ip("x", "b");
    assert!(first.table.would_allow(xa, xb_ip, xa.ip, Tcp, 80));

    let mut p = st.pods[&("x".to_string(), "b".to_string())].clone();
    p.metadata.labels = Some(labels(json!({"pod": "q"})));
    st.pods.insert(("x".into(), "b".into()), p);
    let second = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(
        matrix(&second.table, &locals, Tcp, 80),
        cols_expected("X.. ... ...")
    );
    assert!(!second.table.would_allow(xa, xb_ip, xa.ip, Tcp, 80));
    // The peer's identity changed: its address is reported for re-checking.
    assert_eq!(second.changes.peer_ips, vec![xb_ip]);
    // x/a's own table changed too (the identity set of pod=b is now empty).
    assert!(second.changes.slots.contains(&slot_of(&locals, "x/a")));
}

fn cols_expected(row: &str) -> String {
    expected(&cols(row).iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn update_namespace_relabelled() {
    let locals = model_locals();
    let mut st = model();
    add_policy(
        &mut st,
        np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
    );
    let mut c = PolicyCompiler::new();
    let first = c.update(&st, "node-a", &[NODE_IP], &locals);
    let ya = &locals[slot_of(&locals, "y/a") as usize];
    let xa = &locals[slot_of(&locals, "x/a") as usize];
    assert!(first.table.would_allow(xa, ya.ip, xa.ip, Tcp, 80));

    st.namespaces
        .insert("y".into(), namespace("y", json!({"ns": "w"})));
    let second = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(
        matrix(&second.table, &locals, Tcp, 80),
        cols_expected("X.. ... ...")
    );
    assert!(!second.table.would_allow(xa, ya.ip, xa.ip, Tcp, 80));
    assert_eq!(second.changes.slots, vec![slot_of(&locals, "x/a")]);
}

#[test]
fn update_policy_deleted() {
    let locals = model_locals();
    let mut st = model();
    add_policy(&mut st, np("x", "deny", json!({"podSelector": {}})));
    let mut c = PolicyCompiler::new();
    let first = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(
        matrix(&first.table, &locals, Tcp, 80),
        cols_expected("XXX ... ...")
    );
    st.network_policies.clear();
    let second = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(
        matrix(&second.table, &locals, Tcp, 80),
        cols_expected("... ... ...")
    );
    assert_eq!(second.changes.slots, vec![0, 1, 2]);
    // Nothing changed: nothing rebuilt, nothing reported.
    let third = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert!(third.changes.is_empty(), "{:?}", third.changes);
    assert_eq!(third.stats.policies_recompiled, 0);
}

#[test]
fn unrelated_change_rebuilds_nothing_else() {
    let locals = model_locals();
    let mut st = model();
    add_policy(&mut st, np("x", "deny", json!({"podSelector": {}})));
    add_policy(&mut st, allow_from_pod_b());
    let mut c = PolicyCompiler::new();
    let first = c.update(&st, "node-a", &[NODE_IP], &locals);
    add_policy(
        &mut st,
        np(
            "z",
            "deny",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}}),
        ),
    );
    let second = c.update(&st, "node-a", &[NODE_IP], &locals);
    assert_eq!(second.changes.slots, vec![slot_of(&locals, "z/c")]);
    assert_eq!(second.stats.dir_tables_built, 1);
    for i in 0..3 {
        let (a, b) = (&first.table.slots()[i], &second.table.slots()[i]);
        assert!(matches!((&a.ingress, &b.ingress), (Some(x), Some(y)) if Arc::ptr_eq(x, y)));
    }
}

// ---- single checks -------------------------------------------------------

#[test]
fn node_traffic_is_always_allowed() {
    let locals = model_locals();
    let mut st = model();
    add_policy(
        &mut st,
        np(
            "x",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
    );
    let out = compile_policies(&st, "node-a", &[NODE_IP], &locals);
    let xa = &locals[0];
    for d in [PolicyDirection::Ingress, PolicyDirection::Egress] {
        assert_eq!(
            out.table.check(d, xa, NODE_IP, Tcp, 10250),
            PolicyVerdict::Allowed { rule: NODE_RULE }
        );
        assert_eq!(
            out.table.check(d, xa, model_ip("y", "a"), Tcp, 80),
            PolicyVerdict::Denied
        );
    }
    assert_eq!(
        out.table.describe_rule(NODE_RULE),
        "node traffic is always allowed"
    );
}

#[test]
fn host_network_pods_are_not_selected_and_have_the_node_address() {
    let mut st = model();
    let mut hn = pod("x", "hn", json!({"pod": "b"}), NODE_IP, &[]);
    if let Some(s) = hn.spec.as_mut() {
        s.host_network = Some(true);
    }
    st.pods.insert(("x".into(), "hn".into()), hn);
    add_policy(&mut st, np("x", "deny", json!({"podSelector": {}})));
    add_policy(
        &mut st,
        np(
            "y",
            "from-b",
            json!({"podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        ),
    );
    let mut locals = model_locals();
    locals.push(LocalPod {
        ip: NODE_IP,
        namespace: "x".into(),
        name: "hn".into(),
        interface: None,
        policy_slot: locals.len() as u32,
    });
    let out = compile_policies(&st, "node-a", &[NODE_IP], &locals);
    let hn = &locals[9];
    // Not selected by x/deny although its labels match.
    assert_eq!(
        out.table
            .check(PolicyDirection::Ingress, hn, model_ip("z", "a"), Tcp, 80),
        PolicyVerdict::NotIsolated
    );
    // As a peer it has the node's address: allowed as node traffic, never via pod=b.
    let ya = &locals[3];
    assert_eq!(
        out.table
            .check(PolicyDirection::Ingress, ya, NODE_IP, Tcp, 80),
        PolicyVerdict::Allowed { rule: NODE_RULE }
    );
    let other_node = "192.168.50.2".parse().unwrap_or(NODE_IP);
    let out2 = compile_policies(&st, "node-b", &[other_node], &locals[..9]);
    assert_eq!(
        out2.table
            .check(PolicyDirection::Ingress, ya, NODE_IP, Tcp, 80),
        PolicyVerdict::Denied
    );
}

#[test]
fn egress_named_port_never_matches_non_pod_peer() {
    let locals = model_locals();
    let mut st = model();
    add_policy(
        &mut st,
        np(
            "x",
            "p",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "serve-80-tcp"}, {"port": 81}]}]}),
        ),
    );
    let out = compile_policies(&st, "node-a", &[NODE_IP], &locals);
    let external = "203.0.113.7".parse().unwrap_or(NODE_IP);
    assert_eq!(
        out.table
            .check(PolicyDirection::Egress, &locals[0], external, Tcp, 80),
        PolicyVerdict::Denied
    );
    assert!(matches!(
        out.table
            .check(PolicyDirection::Egress, &locals[0], external, Tcp, 81),
        PolicyVerdict::Allowed { .. }
    ));
    assert!(matches!(
        out.table.check(
            PolicyDirection::Egress,
            &locals[0],
            model_ip("y", "c"),
            Tcp,
            80
        ),
        PolicyVerdict::Allowed { .. }
    ));
}

#[test]
fn describe_and_explain_name_the_policy_and_rule() {
    let locals = model_locals();
    let mut st = model();
    add_policy(&mut st, np("x", "deny", json!({"podSelector": {}})));
    add_policy(
        &mut st,
        np(
            "x",
            "db-allow-backend",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]},
                    {"from": [{"ipBlock": {"cidr": "10.244.3.0/24", "except": ["10.244.3.10/32"]}}]}]}),
        ),
    );
    let out = compile_policies(&st, "node-a", &[NODE_IP], &locals);
    let xa = &locals[0];
    let PolicyVerdict::Allowed { rule } =
        out.table
            .check(PolicyDirection::Ingress, xa, model_ip("x", "b"), Tcp, 80)
    else {
        panic!("x/b -> x/a:80 should be allowed");
    };
    assert_eq!(
        out.table.describe_rule(rule),
        "x/db-allow-backend ingress rule 0"
    );
    let PolicyVerdict::Allowed { rule } =
        out.table
            .check(PolicyDirection::Ingress, xa, model_ip("z", "b"), Udp, 9)
    else {
        panic!("z/b -> x/a should be allowed by the ipBlock rule");
    };
    assert_eq!(
        out.table.describe_rule(rule),
        "x/db-allow-backend ingress rule 1"
    );

    let e = out.table.explain(0, PolicyDirection::Ingress);
    let v = serde_json::to_value(&e).unwrap_or_default();
    assert_eq!(v["pod"], "x/a");
    assert_eq!(v["isolated"], true);
    assert_eq!(v["direction"], "ingress");
    let names: Vec<&str> = e.policies.iter().map(|p| &*p.policy).collect();
    assert_eq!(names, ["x/db-allow-backend", "x/deny"]);
    assert_eq!(
        &*e.policies[0].rules[0].summary,
        "from [pods pod=b] ports [tcp/80]"
    );
    assert_eq!(
        &*e.policies[0].rules[1].summary,
        "from [ipBlock 10.244.3.0-10.244.3.9,10.244.3.11-10.244.3.255] ports [<all>]"
    );
    assert!(e.policies[1].rules.is_empty());
    let e = out.table.explain(0, PolicyDirection::Egress);
    assert!(!e.isolated && e.policies.is_empty());
}

#[test]
fn warnings_are_typed_and_name_the_field() {
    let mut st = model();
    add_policy(
        &mut st,
        np(
            "x",
            "bad",
            json!({"podSelector": {},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}],
                     "ports": [{"port": "HTTP"}, {"port": 80, "protocol": "ICMP"}]}]}),
        ),
    );
    let out = compile_policies(&st, "node-a", &[NODE_IP], &model_locals());
    let fields: Vec<String> = out
        .warnings
        .iter()
        .map(|w| match w {
            PolicyWarning::InvalidPolicy { field, .. } => field.clone(),
            other => format!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].from[0]",
            "spec.ingress[0].ports[0]",
            "spec.ingress[0].ports[1]"
        ]
    );
}
