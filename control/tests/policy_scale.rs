//! Scale: 10k pods x 1k policies compile, and one
//! label change recompiles only what it affects.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kxdp_control::policy::{PolicyCompiler, PolicyDirection, PolicyVerdict};
use kxdp_control::ClusterState;
use kxdp_dataplane::tables::{IpProto, LocalPod};

const NAMESPACES: usize = 100;
const APPS: usize = 20;

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0af4_0000u32 + i as u32 + 2)
}

fn state(pods: usize, policies: usize) -> ClusterState {
    let mut st = ClusterState::default();
    for n in 0..NAMESPACES {
        let name = format!("ns{n}");
        st.namespaces.insert(
            name.clone(),
            Namespace {
                metadata: ObjectMeta {
                    name: Some(name),
                    labels: Some(BTreeMap::from([(
                        "team".to_string(),
                        format!("t{}", n % 10),
                    )])),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    }
    for i in 0..pods {
        let ns = format!("ns{}", i % NAMESPACES);
        let name = format!("pod{i}");
        let labels = BTreeMap::from([
            ("app".to_string(), format!("app{}", (i / 7) % APPS)),
            ("tier".to_string(), format!("tier{}", i % 3)),
        ]);
        st.pods.insert(
            (ns.clone(), name.clone()),
            Pod {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(format!("node-{}", (i / NAMESPACES) % 100)),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(pod_ip(i).to_string()),
                    ..Default::default()
                }),
            },
        );
    }
    for p in 0..policies {
        let ns = format!("ns{}", p % NAMESPACES);
        let name = format!("np{p}");
        let from = vec![
            NetworkPolicyPeer {
                pod_selector: Some(sel(&[("app", format!("app{}", (p + 1) % APPS))])),
                ..Default::default()
            },
            NetworkPolicyPeer {
                namespace_selector: Some(sel(&[("team", format!("t{}", p % 10))])),
                pod_selector: Some(sel(&[("tier", format!("tier{}", p % 3))])),
                ..Default::default()
            },
        ];
        st.network_policies.insert(
            (ns.clone(), name.clone()),
            NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(sel(&[("app", format!("app{}", (p / NAMESPACES) % APPS))])),
                    ingress: Some(vec![NetworkPolicyIngressRule {
                        from: Some(from),
                        ports: Some(vec![NetworkPolicyPort {
                            port: Some(IntOrString::Int(8000 + (p % 50) as i32)),
                            end_port: Some(8000 + (p % 50) as i32 + 5),
                            protocol: None,
                        }]),
                    }]),
                    ..Default::default()
                }),
            },
        );
    }
    st
}

#[test]
fn ten_thousand_pods_one_thousand_policies() {
    let (pods, policies) = (10_000, 1_000);
    let st = state(pods, policies);
    // The pods of node-0.
    let locals: Vec<LocalPod> = st
        .pods
        .iter()
        .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-0"))
        .enumerate()
        .map(|(i, ((ns, name), p))| LocalPod {
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|s| s.parse().ok())
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            namespace: ns.as_str().into(),
            name: name.as_str().into(),
            interface: None,
            policy_slot: i as u32,
        })
        .collect();
    assert!(!locals.is_empty());
    let node_ips = [Ipv4Addr::new(192, 168, 50, 1)];

    let mut c = PolicyCompiler::new();
    let t0 = Instant::now();
    let full = c.update(&st, "node-0", &node_ips, &locals);
    let full_time = t0.elapsed();
    assert!(full.warnings.is_empty(), "{:?}", full.warnings.first());
    assert_eq!(full.stats.policies_recompiled, policies);
    let isolated = full
        .table
        .slots()
        .iter()
        .filter(|s| s.ingress.is_some())
        .count();
    assert!(isolated > 0);

    // Every local pod answers, and an isolated one allows exactly its rules.
    let lp = locals
        .iter()
        .zip(full.table.slots())
        .find(|(_, s)| s.ingress.is_some())
        .map(|(l, _)| l.clone())
        .unwrap_or_else(|| locals[0].clone());
    let external = Ipv4Addr::new(203, 0, 113, 1);
    assert_eq!(
        full.table
            .check(PolicyDirection::Ingress, &lp, external, IpProto::Tcp, 8000),
        PolicyVerdict::Denied
    );

    // One pod relabelled somewhere else in the cluster.
    let mut st2 = st.clone();
    let key = ("ns7".to_string(), "pod7".to_string());
    if let Some(labels) = st2
        .pods
        .get_mut(&key)
        .and_then(|p| p.metadata.labels.as_mut())
    {
        labels.insert("app".into(), "relabelled".into());
    }
    let t1 = Instant::now();
    let inc = c.update(&st2, "node-0", &node_ips, &locals);
    let inc_time = t1.elapsed();
    assert_eq!(inc.changes.peer_ips, vec![pod_ip(7)]);
    assert!(
        inc.stats.dir_tables_built < full.stats.dir_tables_built.max(1),
        "incremental rebuilt {} of {}",
        inc.stats.dir_tables_built,
        full.stats.dir_tables_built
    );
    eprintln!(
        "{pods} pods, {policies} policies, {} local: full compile {full_time:?} ({} tables), label change {inc_time:?} ({} tables rebuilt)",
        locals.len(),
        full.stats.dir_tables_built,
        inc.stats.dir_tables_built
    );
    let budget = if cfg!(debug_assertions) { 20.0 } else { 5.0 };
    assert!(
        full_time.as_secs_f64() < budget,
        "full compile took {full_time:?}"
    );
}
