//! Control-plane scale benchmark (issue 5): compile and publish a large
//! cluster, then measure how long one endpoint change takes to reach a
//! reader of the published tables.
//!
//! ```text
//! compile_scale [SHAPE] all      # default: --runs fresh `initial` processes, then `changes`
//! compile_scale [SHAPE] initial  # one process: time + peak memory of the first compile
//! compile_scale [SHAPE] changes  # N endpoint changes -> generation seen by a reader thread
//! compile_scale [SHAPE] changes --full  # the same, each change a full `compile` (the old path)
//! SHAPE: --services 30000 --endpoints 10 --pods 10000 --policies 1000 --nodes 100 --namespaces 100
//! ```
//!
//! What is measured, exactly:
//! - `initial`: in a fresh process, [`SyntheticCluster::state`] is built
//!   (not timed as part of the compile: in the daemon the watchers fill it),
//!   then `kxdp_control::compile::compile` for node-0 (Services, EndpointSlices,
//!   pods, routes, NetworkPolicy) and `publication` of the result. Peak
//!   memory is the process's `VmHWM` — it includes the `ClusterState` (the
//!   watchers' object cache, which the daemon holds too) and is also given
//!   for the state alone.
//! - `changes`: the daemon's path. The synthetic state goes to the sync
//!   runner (`spawn_runner`) as one snapshot; its compile callback is the
//!   incremental [`Compiler`]. Then, per change, one EndpointSlice of a
//!   different Service gets one endpoint not ready, and after that the
//!   endpoint is made ready again (two one-endpoint changes per Service,
//!   both measured). The clock starts when the `SourceEvent::Apply` is sent
//!   to the runner (the object is built before) and stops when a reader
//!   thread (standing in for a worker, polling `TableReader::load` like a
//!   worker does once per batch) sees the new generation: change tracking,
//!   the compile, the publish. The runner's `min_interval` is set to 0
//!   (the coalescing delay is configuration, not work) and `max_interval`
//!   to an hour, so no periodic full resync falls into the run.
//! - `changes --full`: the path before the incremental compiler: the
//!   benchmark edits the state itself and runs a full `compile` and a
//!   `publish` per change (the not-ready change only; the restore is not
//!   compiled on its own).
//!
//! Each subcommand prints one JSON line; `all` aggregates them (median of
//! the runs) and prints a Markdown table.

use std::process::Command;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kxdp_bench::stats::{median, percentile, self_status_kib, ProcStatusError};
use kxdp_control::compile::{
    compile, CompileError, CompileOptions, CompileStats, Compiler, NodeEnvironment,
};
use kxdp_control::endpoints::derive_endpoint_slices;
use kxdp_control::metrics::Metrics;
use kxdp_control::policy::compile_policies;
use kxdp_control::runner::{spawn_runner, CompileInput, RunnerConfig, Shared, Status, TableSlot};
use kxdp_control::source::{self, Kind, Object, SourceEvent};
use kxdp_control::testing::{SyntheticCluster, SyntheticError};
use kxdp_dataplane::tables::{publication, IpProto, TableSet};
use serde::{Deserialize, Serialize};

const NODE: &str = "node-0";

#[derive(Parser)]
#[command(about = "kxdp control-plane scale benchmark (compile, publish, one change)")]
struct Cli {
    #[command(flatten)]
    shape: Shape,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Clone, Copy, Debug)]
struct Shape {
    #[arg(long, default_value_t = 30_000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
}

impl Shape {
    fn cluster(&self) -> SyntheticCluster {
        SyntheticCluster {
            nodes: self.nodes,
            namespaces: self.namespaces,
            pods: self.pods,
            services: self.services,
            endpoints_per_service: self.endpoints,
            policies: self.policies,
        }
    }

    fn args(&self) -> Vec<String> {
        [
            ("--services", self.services),
            ("--endpoints", self.endpoints),
            ("--pods", self.pods),
            ("--policies", self.policies),
            ("--nodes", self.nodes),
            ("--namespaces", self.namespaces),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

#[derive(Subcommand, Clone, Copy, Debug)]
enum Cmd {
    /// Fresh processes: `runs` x initial, then one `changes` run.
    All {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        changes: usize,
    },
    /// Time and peak memory of the first compile + publish.
    Initial,
    /// Endpoint change -> new generation seen by a reader.
    Changes {
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// What each change edits (runner path): one endpoint's readiness,
        /// a Service's externalIPs (new frontends: the maps are patched),
        /// a pod's labels, a pod created and deleted, or a Namespace's
        /// labels (the last three run the NetworkPolicy compiler).
        #[arg(long, value_enum, default_value_t = What::Endpoint)]
        what: What,
        /// A full `compile` per change, no runner (the old path).
        #[arg(long)]
        full: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Endpoint,
    Service,
    /// A pod on another node gets a new label (a new identity), then loses
    /// it.
    Pod,
    /// A pod is created on another node (a copy of an existing one under a
    /// new name and address), then deleted.
    PodAdd,
    /// A Namespace's `team` label changes (what the policies'
    /// namespaceSelectors look at), then changes back.
    Namespace,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("synthetic cluster: {0}")]
    Synthetic(#[from] SyntheticError),
    #[error("compile: {0}")]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Proc(#[from] ProcStatusError),
    #[error("running {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Child {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{what} printed no result line: {source}")]
    Output {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("check failed: {0}")]
    Check(String),
}

#[derive(Serialize, Deserialize, Debug)]
struct InitialResult {
    state_build_s: f64,
    compile_s: f64,
    publish_s: f64,
    /// compile + publish
    total_s: f64,
    /// VmHWM after the state was built (before compiling).
    hwm_state_kib: u64,
    /// VmHWM after compile + publish: the peak of the whole run.
    hwm_kib: u64,
    rss_kib: u64,
    /// The NetworkPolicy part alone (`compile_policies`), timed apart
    /// after the main measurement.
    policy_s: f64,
    /// Deriving EndpointSlices for selector Services without any, apart.
    derive_s: f64,
    warnings: usize,
    frontends: usize,
    local_pods: usize,
    policy_slots: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct ChangesResult {
    /// "runner" (incremental, through the sync runner) or "full".
    path: String,
    changes: usize,
    /// Runner path: compiles that were partial and kept the frontend maps
    /// (the fast path), out of `changes`.
    fast_path: usize,
    /// Runner path: snapshot sent -> first generation readable (tracking
    /// every object, the full compile, the publish).
    initial_s: Option<f64>,
    /// Runner path: the first (full) compile alone.
    initial_compile_s: Option<f64>,
    /// VmHWM right after the first publish.
    hwm_initial_kib: u64,
    /// Edit -> `compile` returned.
    compile_p50_ms: f64,
    compile_p99_ms: f64,
    /// Edit -> reader saw the generation.
    visible_p50_ms: f64,
    visible_p99_ms: f64,
    visible_max_ms: f64,
    /// `compile` returned -> reader saw the generation (the atomic store
    /// and the reader's next poll).
    handover_p50_us: f64,
    handover_p99_us: f64,
    /// The `publish` call itself: the store plus dropping the previous
    /// generation when no reader holds it any more.
    publish_call_p50_ms: Option<f64>,
    publish_call_p99_ms: Option<f64>,
    hwm_kib: u64,
    /// Runner path: NetworkPolicy work per change (max over the changes):
    /// policies compiled from scratch, policies with patched peers.
    #[serde(default)]
    policies_recompiled_max: usize,
    #[serde(default)]
    policies_patched_max: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn initial(shape: &Shape) -> Result<InitialResult, BenchError> {
    let cluster = shape.cluster();
    let t = Instant::now();
    let state = cluster.state()?;
    let env = NodeEnvironment::synthetic(&state, NODE);
    let state_build = t.elapsed();
    let hwm_state_kib = self_status_kib("VmHWM")?;

    let opts = CompileOptions::new(NODE);
    let t0 = Instant::now();
    let out = compile(&state, &env, &opts, 1)?;
    let compiled = t0.elapsed();
    let warnings = out.warnings.len();
    let (publisher, reader) = publication(out.tables);
    let total = t0.elapsed();
    let hwm_kib = self_status_kib("VmHWM")?;
    let rss_kib = self_status_kib("VmRSS")?;

    // Breakdown, after the peak was read: the policy compiler and the
    // endpoint derivation on their own (the rest of `compile` is Services,
    // pods, routes and node config).
    let locals: Vec<_> = reader.load().pods.iter().cloned().collect();
    let owned = [SyntheticCluster::node_ip(0)];
    let t1 = Instant::now();
    let policy = compile_policies(&state, NODE, &owned, &locals);
    let policy_s = t1.elapsed().as_secs_f64();
    drop(policy);
    let t2 = Instant::now();
    let derived = derive_endpoint_slices(&state);
    let derive_s = t2.elapsed().as_secs_f64();
    drop(derived);

    let tables = reader.load();
    if tables.generation != 1 {
        return Err(BenchError::Check(format!(
            "reader sees generation {}",
            tables.generation
        )));
    }
    let result = InitialResult {
        state_build_s: state_build.as_secs_f64(),
        compile_s: compiled.as_secs_f64(),
        publish_s: (total - compiled).as_secs_f64(),
        total_s: total.as_secs_f64(),
        hwm_state_kib,
        hwm_kib,
        rss_kib,
        policy_s,
        derive_s,
        warnings,
        frontends: tables.services.frontend_count(),
        local_pods: tables.pods.len(),
        policy_slots: tables.policy.slots().len(),
    };
    drop(tables);
    drop(publisher);
    Ok(result)
}

fn changes_full(shape: &Shape, n: usize) -> Result<ChangesResult, BenchError> {
    let cluster = shape.cluster();
    if cluster.services == 0 || cluster.endpoints_per_service < 2 {
        return Err(BenchError::Check(
            "changes need Services with at least 2 endpoints".into(),
        ));
    }
    let mut state = cluster.state()?;
    let env = NodeEnvironment::synthetic(&state, NODE);
    let opts = CompileOptions::new(NODE);
    let first = compile(&state, &env, &opts, 1)?;
    let (publisher, reader) = publication(first.tables);

    // The reader: what a worker does between batches.
    let (tx, rx) = mpsc::channel::<(u64, Instant)>();
    let last_generation = n as u64 + 1;
    let watcher = thread::spawn(move || {
        let mut seen = 1;
        while seen < last_generation {
            let g = reader.load().generation;
            if g != seen {
                seen = g;
                if tx.send((g, Instant::now())).is_err() {
                    return;
                }
            } else {
                thread::yield_now();
            }
        }
    });

    let mut compile_times = Vec::with_capacity(n);
    let mut visible = Vec::with_capacity(n);
    let mut handover = Vec::with_capacity(n);
    let mut publish_calls = Vec::with_capacity(n);
    for k in 1..=n {
        // A different Service each time, spread over the namespaces.
        let s = (k * 7919) % cluster.services;
        let e = k % cluster.endpoints_per_service;
        let slice = cluster.endpoint_slice_with(s, Some(e));
        let (ns, name) = cluster.service_key(s);
        let generation = k as u64 + 1;

        let t0 = Instant::now();
        state
            .endpoint_slices
            .insert((ns, format!("{name}-0")), slice);
        let out = compile(&state, &env, &opts, generation)?;
        let compiled = Instant::now();
        compile_times.push(compiled - t0);
        publisher.publish(out.tables);
        publish_calls.push(compiled.elapsed());
        let (g, at) = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|e| BenchError::Check(format!("reader did not report: {e}")))?;
        if g != generation {
            return Err(BenchError::Check(format!(
                "reader saw generation {g}, expected {generation}"
            )));
        }
        visible.push(at.duration_since(t0));
        handover.push(at.saturating_duration_since(compiled));

        // The change is in the published tables: one backend fewer.
        let tables = publisher.current();
        let backends = tables
            .services
            .lookup(SyntheticCluster::service_ip(s), 80, IpProto::Tcp, false)
            .and_then(|f| tables.services.port(f.service_port))
            .map(|p| p.cluster.backends.len());
        if backends != Some(cluster.endpoints_per_service - 1) {
            return Err(BenchError::Check(format!(
                "Service {s}: {backends:?} backends after the change"
            )));
        }
        // Restore it (outside the clock), so each change is one endpoint
        // of an otherwise unchanged cluster; a full compile picks the
        // restore up with the next change.
        let (ns, name) = cluster.service_key(s);
        state.endpoint_slices.insert(
            (ns, format!("{name}-0")),
            cluster.endpoint_slice_with(s, None),
        );
    }
    watcher
        .join()
        .map_err(|_| BenchError::Check("reader thread panicked".into()))?;
    let p = |v: &[Duration], q| percentile(v, q).map(ms).unwrap_or(f64::NAN);
    Ok(ChangesResult {
        path: "full".into(),
        changes: n,
        fast_path: 0,
        initial_s: None,
        initial_compile_s: None,
        hwm_initial_kib: 0,
        compile_p50_ms: p(&compile_times, 50.0),
        compile_p99_ms: p(&compile_times, 99.0),
        visible_p50_ms: p(&visible, 50.0),
        visible_p99_ms: p(&visible, 99.0),
        visible_max_ms: p(&visible, 100.0),
        handover_p50_us: p(&handover, 50.0) * 1e3,
        handover_p99_us: p(&handover, 99.0) * 1e3,
        publish_call_p50_ms: Some(p(&publish_calls, 50.0)),
        publish_call_p99_ms: Some(p(&publish_calls, 99.0)),
        hwm_kib: self_status_kib("VmHWM")?,
        // A full compile recompiles every policy; not counted here.
        policies_recompiled_max: 0,
        policies_patched_max: 0,
    })
}

/// One compile, as the runner's callback saw it.
struct CompileRecord {
    generation: u64,
    took: Duration,
    done: Instant,
    stats: CompileStats,
}

fn changes_runner(shape: &Shape, n: usize, what: What) -> Result<ChangesResult, BenchError> {
    let cluster = shape.cluster();
    if cluster.services == 0 || cluster.endpoints_per_service < 2 {
        return Err(BenchError::Check(
            "changes need Services with at least 2 endpoints".into(),
        ));
    }
    let state = cluster.state()?;
    // The objects the changes start from (Service and pod changes).
    let services: Vec<_> = (1..=n)
        .filter_map(|k| {
            state
                .services
                .get(&cluster.service_key((k * 7919) % cluster.services))
        })
        .cloned()
        .collect();
    let pods: Vec<_> = (1..=n)
        .filter_map(|k| {
            state
                .pods
                .get(&cluster.pod_key((k * 7919) % cluster.pods.max(1)))
        })
        .cloned()
        .collect();
    let namespaces: Vec<_> = (1..=n)
        .filter_map(|k| {
            state
                .namespaces
                .get(&SyntheticCluster::namespace(k % cluster.namespaces.max(1)))
        })
        .cloned()
        .collect();
    let env = NodeEnvironment::synthetic(&state, NODE);
    let opts = CompileOptions::new(NODE);
    let config = RunnerConfig {
        min_interval: Duration::ZERO,
        max_interval: Duration::from_secs(3600),
        ..RunnerConfig::default()
    };
    let slot = Arc::new(TableSlot::new());
    let records: Arc<Mutex<Vec<CompileRecord>>> = Arc::default();
    let (tx, rx) = source::channel();
    let mut compiler = Compiler::new();
    let log = records.clone();
    let runner = spawn_runner(
        config.clone(),
        rx,
        move |input: &CompileInput<'_>| -> Result<TableSet, CompileError> {
            let t = Instant::now();
            let out = compiler.compile_input(input, &env, &opts)?;
            let done = Instant::now();
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(CompileRecord {
                    generation: input.generation,
                    took: done - t,
                    done,
                    stats: out.stats,
                });
            Ok(out.tables)
        },
        Shared {
            tables: slot.clone(),
            status: Arc::new(Status::new(&config)),
            metrics: Arc::new(Metrics::new()),
            hooks: Vec::new(),
        },
    )
    .map_err(|source| BenchError::Spawn {
        what: "the sync runner".into(),
        source,
    })?;
    let send = |ev: SourceEvent| {
        tx.send(ev)
            .map_err(|_| BenchError::Check("the runner stopped".into()))
    };
    let t_initial = Instant::now();
    send(SourceEvent::Snapshot(Box::new(state)))?;
    let reader = slot
        .wait_reader(Duration::from_secs(120))
        .ok_or_else(|| BenchError::Check("no first publish".into()))?;
    let initial_s = t_initial.elapsed().as_secs_f64();
    let hwm_initial_kib = self_status_kib("VmHWM")?;

    let total = 2 * n;
    let (seen_tx, seen_rx) = mpsc::channel::<(u64, Instant)>();
    let last_generation = total as u64 + 1;
    let watcher = thread::spawn(move || {
        let mut seen = 1;
        while seen < last_generation {
            let g = reader.load().generation;
            if g != seen {
                seen = g;
                if seen_tx.send((g, Instant::now())).is_err() {
                    return;
                }
            } else {
                thread::yield_now();
            }
        }
    });

    let mut visible = Vec::with_capacity(total);
    let mut sent_at = Vec::with_capacity(total);
    let mut generation = 1u64;
    for k in 1..=n {
        // A different object each time, spread over the namespaces; each
        // changed one way, then back.
        let s = (k * 7919) % cluster.services;
        let e = k % cluster.endpoints_per_service;
        let (there, back): (SourceEvent, SourceEvent) = match what {
            What::Endpoint => (
                SourceEvent::Apply(Object::EndpointSlice(
                    cluster.endpoint_slice_with(s, Some(e)),
                )),
                SourceEvent::Apply(Object::EndpointSlice(cluster.endpoint_slice_with(s, None))),
            ),
            What::Service => {
                let svc = services
                    .get(k - 1)
                    .cloned()
                    .ok_or_else(|| BenchError::Check("no Service to change".into()))?;
                let mut changed = svc.clone();
                if let Some(spec) = changed.spec.as_mut() {
                    spec.external_ips = Some(vec![format!("203.0.113.{}", k % 250 + 1)]);
                }
                (
                    SourceEvent::Apply(Object::Service(changed)),
                    SourceEvent::Apply(Object::Service(svc)),
                )
            }
            What::Pod => {
                let pod = pods
                    .get(k - 1)
                    .cloned()
                    .ok_or_else(|| BenchError::Check("no pod to change".into()))?;
                let mut changed = pod.clone();
                changed
                    .metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("kxdp-bench".into(), "changed".into());
                (
                    SourceEvent::Apply(Object::Pod(changed)),
                    SourceEvent::Apply(Object::Pod(pod)),
                )
            }
            What::PodAdd => {
                let mut pod = pods
                    .get(k - 1)
                    .cloned()
                    .ok_or_else(|| BenchError::Check("no pod to copy".into()))?;
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = format!("kxdp-bench-{k}");
                pod.metadata.name = Some(name.clone());
                if let Some(status) = pod.status.as_mut() {
                    // Outside every node's pod range (.2 ..), unique per k.
                    let ip = format!("10.245.{}.{}", k / 250, k % 250 + 1);
                    status.pod_ip = Some(ip);
                    status.pod_ips = None;
                }
                (
                    SourceEvent::Apply(Object::Pod(pod)),
                    SourceEvent::Delete {
                        kind: Kind::Pod,
                        key: (ns, name),
                    },
                )
            }
            What::Namespace => {
                let ns = namespaces
                    .get(k - 1)
                    .cloned()
                    .ok_or_else(|| BenchError::Check("no namespace to change".into()))?;
                let mut changed = ns.clone();
                if let Some(team) = changed
                    .metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .get_mut("team")
                {
                    team.push('x');
                }
                (
                    SourceEvent::Apply(Object::Namespace(changed)),
                    SourceEvent::Apply(Object::Namespace(ns)),
                )
            }
        };
        for (ev, not_ready) in [(there, true), (back, false)] {
            generation += 1;
            let t0 = Instant::now();
            send(ev)?;
            let (g, at) = seen_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|e| BenchError::Check(format!("reader did not report: {e}")))?;
            if g != generation {
                return Err(BenchError::Check(format!(
                    "reader saw generation {g}, expected {generation}"
                )));
            }
            visible.push(at.duration_since(t0));
            sent_at.push((generation, at));
            if what != What::Endpoint {
                continue;
            }
            // The change is in the published tables.
            let want = cluster.endpoints_per_service - usize::from(not_ready);
            let tables = slot
                .current()
                .ok_or_else(|| BenchError::Check("nothing published".into()))?;
            let backends = tables
                .services
                .lookup(SyntheticCluster::service_ip(s), 80, IpProto::Tcp, false)
                .and_then(|f| tables.services.port(f.service_port))
                .map(|p| p.cluster.backends.len());
            if backends != Some(want) {
                return Err(BenchError::Check(format!(
                    "Service {s}: {backends:?} backends after the change, expected {want}"
                )));
            }
        }
    }
    watcher
        .join()
        .map_err(|_| BenchError::Check("reader thread panicked".into()))?;
    drop(tx);
    runner.stop();

    let records = std::mem::take(&mut *records.lock().unwrap_or_else(PoisonError::into_inner));
    let mut compile_times = Vec::new();
    let mut handover = Vec::new();
    let mut fast_path = 0;
    let (mut recompiled_max, mut patched_max) = (0, 0);
    for (generation, at) in &sent_at {
        let Some(r) = records.iter().find(|r| r.generation == *generation) else {
            return Err(BenchError::Check(format!(
                "no compile record for generation {generation}"
            )));
        };
        if r.stats.full {
            return Err(BenchError::Check(format!(
                "generation {generation} was a full compile"
            )));
        }
        fast_path += usize::from(!r.stats.services_reassembled);
        recompiled_max = recompiled_max.max(r.stats.policy.policies_recompiled);
        patched_max = patched_max.max(r.stats.policy.policies_patched);
        compile_times.push(r.took);
        handover.push(at.saturating_duration_since(r.done));
    }
    let p = |v: &[Duration], q| percentile(v, q).map(ms).unwrap_or(f64::NAN);
    Ok(ChangesResult {
        path: format!("runner:{what:?}").to_lowercase(),
        changes: total,
        fast_path,
        initial_s: Some(initial_s),
        initial_compile_s: records
            .iter()
            .find(|r| r.generation == 1)
            .map(|r| r.took.as_secs_f64()),
        hwm_initial_kib,
        compile_p50_ms: p(&compile_times, 50.0),
        compile_p99_ms: p(&compile_times, 99.0),
        visible_p50_ms: p(&visible, 50.0),
        visible_p99_ms: p(&visible, 99.0),
        visible_max_ms: p(&visible, 100.0),
        handover_p50_us: p(&handover, 50.0) * 1e3,
        handover_p99_us: p(&handover, 99.0) * 1e3,
        // The runner's publish hands the old generation to the reclaim
        // thread: it is inside `visible`, not timed apart.
        publish_call_p50_ms: None,
        publish_call_p99_ms: None,
        hwm_kib: self_status_kib("VmHWM")?,
        policies_recompiled_max: recompiled_max,
        policies_patched_max: patched_max,
    })
}

/// Run this binary again with `args` and parse its last stdout line.
fn child<T: for<'de> Deserialize<'de>>(shape: &Shape, args: &[&str]) -> Result<T, BenchError> {
    let what = format!("compile_scale {}", args.join(" "));
    let exe = std::env::current_exe().map_err(|source| BenchError::Spawn {
        what: what.clone(),
        source,
    })?;
    let out = Command::new(exe)
        .args(shape.args())
        .args(args)
        .output()
        .map_err(|source| BenchError::Spawn {
            what: what.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Child {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|source| BenchError::Output { what, source })
}

fn all(shape: &Shape, runs: usize, n: usize) -> Result<(), BenchError> {
    let mut initials = Vec::new();
    for i in 0..runs.max(1) {
        let r: InitialResult = child(shape, &["initial"])?;
        eprintln!(
            "initial run {}: compile+publish {:.3} s, VmHWM {} MiB",
            i + 1,
            r.total_s,
            r.hwm_kib / 1024
        );
        initials.push(r);
    }
    let ch: ChangesResult = child(shape, &["changes", "--changes", &n.to_string()])?;
    // Other kinds of change, fewer of them: for the record, not a target.
    let few = (n / 2).max(1).to_string();
    let svc: ChangesResult = child(shape, &["changes", "--what", "service", "--changes", &few])?;
    let pod: ChangesResult = child(shape, &["changes", "--what", "pod", "--changes", &few])?;
    let pod_add: ChangesResult =
        child(shape, &["changes", "--what", "pod-add", "--changes", &few])?;
    let ns: ChangesResult = child(
        shape,
        &["changes", "--what", "namespace", "--changes", &few],
    )?;
    let med = |f: &dyn Fn(&InitialResult) -> f64| {
        median(&initials.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let mib = |kib: f64| kib / 1024.0;
    let first = &initials[0];
    println!(
        "shape: {} Services x {} endpoints, {} pods on {} nodes, {} policies; node-0: {} frontends, {} local pods, {} warnings",
        shape.services,
        shape.endpoints,
        shape.pods,
        shape.nodes,
        shape.policies,
        first.frontends,
        first.local_pods,
        first.warnings
    );
    println!();
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!(
        "| initial compile + publish (median of {}) | {:.3} s (min {:.3}, max {:.3}) | <= 2 s |",
        initials.len(),
        med(&|r| r.total_s),
        initials
            .iter()
            .map(|r| r.total_s)
            .fold(f64::INFINITY, f64::min),
        initials.iter().map(|r| r.total_s).fold(0.0, f64::max),
    );
    println!(
        "| of which NetworkPolicy (`compile_policies`, timed apart) | {:.3} s | - |",
        med(&|r| r.policy_s)
    );
    println!(
        "| of which EndpointSlice derivation (timed apart) | {:.3} s | - |",
        med(&|r| r.derive_s)
    );
    println!(
        "| building the synthetic state (not in the target) | {:.3} s | - |",
        med(&|r| r.state_build_s)
    );
    println!(
        "| peak memory VmHWM, whole process (median) | {:.0} MiB | <= 1024 MiB |",
        mib(med(&|r| r.hwm_kib as f64))
    );
    println!(
        "| of which ClusterState alone (VmHWM before compiling) | {:.0} MiB | - |",
        mib(med(&|r| r.hwm_state_kib as f64))
    );
    println!(
        "| one endpoint change ({} changes through the sync runner, {} on the fast path) -> compile done, p50 / p99 | {:.2} / {:.2} ms | - |",
        ch.changes, ch.fast_path, ch.compile_p50_ms, ch.compile_p99_ms
    );
    println!(
        "| one endpoint change -> visible to a reader, p50 / p99 / max | {:.2} / {:.2} / {:.2} ms | p99 <= 10 ms |",
        ch.visible_p50_ms, ch.visible_p99_ms, ch.visible_max_ms
    );
    println!(
        "| of which compile returned -> reader saw it, p50 / p99 | {:.1} / {:.1} us | - |",
        ch.handover_p50_us, ch.handover_p99_us
    );
    println!(
        "| one Service change (externalIP added/removed: frontend maps patched; {} changes, {} without a rebuild) -> visible, p50 / p99 | {:.2} / {:.2} ms | - |",
        svc.changes, svc.fast_path, svc.visible_p50_ms, svc.visible_p99_ms
    );
    for (what, r) in [
        ("one pod label change", &pod),
        ("one pod created / deleted", &pod_add),
        ("one Namespace label change", &ns),
    ] {
        println!(
            "| {what} (NetworkPolicy update; {} changes; at most {} policies recompiled, {} patched) -> compile done p50 / p99; visible p50 / p99 | {:.2} / {:.2} ms; {:.2} / {:.2} ms | - |",
            r.changes,
            r.policies_recompiled_max,
            r.policies_patched_max,
            r.compile_p50_ms,
            r.compile_p99_ms,
            r.visible_p50_ms,
            r.visible_p99_ms
        );
    }
    if let (Some(p50), Some(p99)) = (ch.publish_call_p50_ms, ch.publish_call_p99_ms) {
        println!(
            "| `publish` call incl. dropping the old generation, p50 / p99 | {p50:.1} / {p99:.1} ms | - |"
        );
    }
    if let (Some(total), Some(compile)) = (ch.initial_s, ch.initial_compile_s) {
        println!(
            "| sync runner: snapshot of the whole cluster -> first generation readable | {total:.3} s | - |"
        );
        println!("| of which the first (full) `Compiler` compile | {compile:.3} s | - |");
    }
    println!(
        "| sync runner: VmHWM after the first publish (state + tracker + compile cache + tables) | {:.0} MiB | <= 1024 MiB |",
        mib(ch.hwm_initial_kib as f64)
    );
    println!(
        "| peak memory VmHWM during the changes run | {:.0} MiB | <= 1024 MiB |",
        mib(ch.hwm_kib as f64)
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cmd = cli.cmd.unwrap_or(Cmd::All {
        runs: 5,
        changes: 50,
    });
    let result = match cmd {
        Cmd::All { runs, changes: n } => all(&cli.shape, runs, n),
        Cmd::Initial => initial(&cli.shape).and_then(|r| print_json(&r)),
        Cmd::Changes {
            changes: n,
            full,
            what,
        } => if full {
            changes_full(&cli.shape, n)
        } else {
            changes_runner(&cli.shape, n, what)
        }
        .and_then(|r| print_json(&r)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compile_scale: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_json<T: Serialize>(r: &T) -> Result<(), BenchError> {
    let line = serde_json::to_string(r).map_err(|source| BenchError::Output {
        what: "serialising the result".into(),
        source,
    })?;
    println!("{line}");
    Ok(())
}
