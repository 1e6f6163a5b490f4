//! NetworkPolicy cost at 10 / 1k / 10k policies over 10k pods (issue 3):
//!
//! - `policy_check/{n}`: ns per `PolicyTable::check` (the pipeline's policy
//!   decision) for node-0's isolated pods against peers all over the
//!   cluster and outside it, on ports around the policies' ranges. Target:
//!   flat within 20% from 10 to 10k policies.
//! - `policy_recompile/relabel_remote/{n}`: `PolicyCompiler::update` after one pod on
//!   another node changed its `app` label (each iteration flips it back and
//!   forth, so every update is one label change against the previous one).
//! - `policy_recompile/relabel_local/{n}`: the same for one of node-0's own pods,
//!   which changes which policies select it.
//! - `policy_recompile/full/{n}`: a from-scratch compile (fresh compiler), for scale.
//!
//! The cluster is [`SyntheticCluster::policies`] (see its module doc).
//!
//! Run: `cargo bench -p kxdp-bench --bench policy`

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use kxdp_bench::policy::probes;
use kxdp_control::policy::{PolicyCompiler, PolicyDirection, PolicyVerdict};
use kxdp_control::testing::SyntheticCluster;
use kxdp_control::ClusterState;

const PODS: usize = 10_000;
const SCALES: [usize; 3] = [10, 1_000, 10_000];
const PROBES: usize = 4096;
const NODE: &str = "node-0";

fn node_ips() -> [Ipv4Addr; 1] {
    [SyntheticCluster::node_ip(0)]
}

fn relabelled(st: &ClusterState, key: &(String, String)) -> ClusterState {
    let mut st2 = st.clone();
    let labels = st2
        .pods
        .get_mut(key)
        .and_then(|p| p.metadata.labels.as_mut())
        .expect("synthetic pods carry labels");
    labels.insert("app".into(), "relabelled".into());
    st2
}

fn bench(c: &mut Criterion) {
    let mut check = c.benchmark_group("policy_check");
    check.throughput(Throughput::Elements(PROBES as u64));
    check
        .sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let mut states = Vec::new();
    for &n in &SCALES {
        let shape = SyntheticCluster::policies(PODS, n);
        let st = shape.state().expect("valid shape");
        let locals = shape.local_pods(0);
        let update = PolicyCompiler::new().update(&st, NODE, &node_ips(), &locals);
        assert!(update.warnings.is_empty(), "{:?}", update.warnings.first());
        let table = update.table;
        let probes = probes(&shape, &table, &locals, PROBES);
        assert_eq!(probes.len(), PROBES, "no isolated pod to probe");
        let (mut allowed, mut denied) = (0, 0);
        for p in &probes {
            match table.check(PolicyDirection::Ingress, &p.pod, p.peer, p.proto, p.port) {
                PolicyVerdict::Allowed { .. } => allowed += 1,
                PolicyVerdict::Denied => denied += 1,
                PolicyVerdict::NotIsolated => unreachable!("probes only isolated pods"),
            }
        }
        let isolated = table.slots().iter().filter(|s| s.ingress.is_some()).count();
        eprintln!(
            "policy_check/{n}: {isolated}/{} local pods isolated, {} identities, {} dir tables; probes: {allowed} allowed, {denied} denied",
            locals.len(),
            update.stats.identities,
            update.stats.dir_tables_built,
        );
        check.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for p in &probes {
                    black_box(table.check(
                        PolicyDirection::Ingress,
                        black_box(&p.pod),
                        black_box(p.peer),
                        p.proto,
                        p.port,
                    ));
                }
            })
        });
        states.push((n, shape, st, locals));
    }
    check.finish();

    // Recompiles: tens to hundreds of ms each, so few flat samples.
    let mut recompile = c.benchmark_group("policy_recompile");
    recompile
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (n, shape, st, locals) in &states {
        // Pod 7 runs on node-7 (a peer only); pod 0 is node-0's own.
        for (label, pod) in [("relabel_remote", 7), ("relabel_local", 0)] {
            let st2 = relabelled(st, &shape.pod_key(pod));
            let mut compiler = PolicyCompiler::new();
            compiler.update(st, NODE, &node_ips(), locals);
            let mut flip = false;
            let probe = compiler.update(&st2, NODE, &node_ips(), locals);
            eprintln!(
                "policy_recompile/{label}/{n}: {} of {} dir tables rebuilt, {} policies recompiled",
                probe.stats.dir_tables_built,
                probe.stats.dir_tables_built + probe.stats.dir_tables_reused,
                probe.stats.policies_recompiled,
            );
            recompile.bench_with_input(BenchmarkId::new(label, n), n, |b, _| {
                b.iter(|| {
                    // st2 is current after the probe above; alternate.
                    let next = if flip { &st2 } else { st };
                    flip = !flip;
                    black_box(compiler.update(next, NODE, &node_ips(), locals))
                })
            });
        }
        recompile.bench_with_input(BenchmarkId::new("full", n), n, |b, _| {
            b.iter(|| black_box(PolicyCompiler::new().update(st, NODE, &node_ips(), locals)))
        });
    }
    recompile.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
