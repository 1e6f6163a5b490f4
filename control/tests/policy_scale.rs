//! Scale: 10k pods x 1k policies compile, and one
//! label change recompiles only what it affects.

use std::net::Ipv4Addr;
use std::time::Instant;

use kxdp_control::policy::{PolicyCompiler, PolicyDirection, PolicyVerdict};
use kxdp_control::testing::SyntheticCluster;
use kxdp_dataplane::tables::{IpProto, LocalPod};

#[test]
fn ten_thousand_pods_one_thousand_policies() {
    let (pods, policies) = (10_000, 1_000);
    let shape = SyntheticCluster::policies(pods, policies);
    let st = shape.state().expect("valid shape");
    // The pods of node-0.
    let locals: Vec<LocalPod> = shape.local_pods(0);
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
    let key = shape.pod_key(7);
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
    assert_eq!(inc.changes.peer_ips, vec![shape.pod_ip(7)]);
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
