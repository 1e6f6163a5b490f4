//! Test harness: fake API server + the real kube source + the real runner
//! compiling real tables, with every publish recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxdp_control::compile::{compile, CompileOptions, Compiler, NodeEnvironment};
use kxdp_control::metrics::Metrics;
use kxdp_control::runner::{
    spawn_runner, Compiled, RunnerConfig, RunnerHandle, Shared, Status, TableSlot,
};
use kxdp_control::source::kube::{
    start_kube_source, KubeConnect, KubeSource, KubeSourceConfig, WatchBackoff,
};
use kxdp_control::source::{self, EventSender};

use super::FakeApiServer;

pub const NODE: &str = "node-a";

/// What one publish contained.
#[derive(Clone, Debug)]
pub struct Published {
    pub generation: u64,
    pub full: bool,
    /// `ns/name` of every Service in the state that was compiled.
    pub state_services: BTreeSet<String>,
    /// `ns/name` of every Service in the published tables.
    pub table_services: BTreeSet<String>,
    /// `ns/name` -> cluster backend IPs in the tables.
    pub backends: BTreeMap<String, BTreeSet<String>>,
    pub changes: usize,
    /// None when the tables equal a from-scratch `compile` of the same
    /// state (Services, pods, routes, node), else what differed.
    pub differs_from_full: Option<String>,
}

pub struct Harness {
    pub slot: Arc<TableSlot>,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub log: Arc<Mutex<Vec<Published>>>,
    pub runner: Option<RunnerHandle>,
    pub source: Option<KubeSource>,
    pub events: EventSender,
}

/// Fast settings for tests.
pub fn fast_runner() -> RunnerConfig {
    RunnerConfig {
        min_interval: Duration::from_millis(50),
        max_interval: Duration::from_millis(400),
        ..RunnerConfig::default()
    }
}

pub fn fast_source() -> KubeSourceConfig {
    KubeSourceConfig {
        page_size: Some(3),
        backoff: WatchBackoff::Exponential {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        probe_interval: Duration::from_millis(100),
        ..KubeSourceConfig::default()
    }
}

impl Harness {
    /// Start a runner compiling the real tables for [`NODE`], with
    /// `extra_hooks`, but no source yet.
    pub fn runner_only(config: &RunnerConfig) -> (Self, source::EventReceiver) {
        let (tx, rx) = source::channel();
        let slot = Arc::new(TableSlot::new());
        let status = Arc::new(Status::new(config));
        let metrics = Arc::new(Metrics::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = Harness {
            slot,
            status,
            metrics,
            log,
            runner: None,
            source: None,
            events: tx,
        };
        (h, rx)
    }

    pub fn start_runner(
        &mut self,
        config: RunnerConfig,
        rx: source::EventReceiver,
        mut extra_hooks: Vec<kxdp_control::runner::PublishHook>,
    ) {
        let log = self.log.clone();
        // The compile callback's comparison with a from-scratch compile,
        // picked up by the hook right after that generation's publish.
        let check: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let hook_check = check.clone();
        let mut hooks: Vec<kxdp_control::runner::PublishHook> = vec![Box::new(move |ev| {
            let state_services = ev
                .state
                .services
                .keys()
                .map(|(ns, n)| format!("{ns}/{n}"))
                .collect();
            let mut table_services = BTreeSet::new();
            let mut backends: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for p in &ev.tables.services.ports {
                let key = format!("{}/{}", p.namespace, p.name);
                table_services.insert(key.clone());
                let set = backends.entry(key).or_default();
                for b in p.cluster.backends.iter() {
                    set.insert(b.ip.to_string());
                }
            }
            log.lock().unwrap().push(Published {
                generation: ev.tables.generation,
                full: ev.full,
                state_services,
                table_services,
                backends,
                changes: ev.changes.len(),
                differs_from_full: hook_check.lock().unwrap().take(),
            });
        })];
        hooks.append(&mut extra_hooks);
        let shared = Shared {
            tables: self.slot.clone(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            hooks,
        };
        // The daemon's path: the incremental compiler, partial when the
        // runner hands over a change set. Each generation is also compiled
        // from scratch and compared.
        let mut compiler = Compiler::new();
        let compile_fn = move |input: &kxdp_control::runner::CompileInput<'_>| {
            let env = NodeEnvironment::synthetic(input.state, NODE);
            let opts = CompileOptions::new(NODE);
            let out = compiler.compile_input(input, &env, &opts)?;
            let reference = compile(input.state, &env, &opts, input.generation)?;
            let (a, b) = (&out.tables, &reference.tables);
            let mut differs = Vec::new();
            if a.services != b.services {
                differs.push("services");
            }
            if a.pods != b.pods {
                differs.push("pods");
            }
            if a.routes != b.routes {
                differs.push("routes");
            }
            if a.node != b.node {
                differs.push("node");
            }
            if out.warnings != reference.warnings {
                differs.push("warnings");
            }
            *check.lock().unwrap() = (!differs.is_empty()).then(|| differs.join(", "));
            Ok::<_, kxdp_control::compile::CompileError>(Compiled {
                tables: out.tables,
                full: out.stats.full,
            })
        };
        self.runner = Some(spawn_runner(config, rx, compile_fn, shared).expect("runner"));
    }

    /// Runner + kube source against `fake`.
    pub fn start(fake: &FakeApiServer, runner: RunnerConfig, src: KubeSourceConfig) -> Self {
        let (mut h, rx) = Self::runner_only(&runner);
        h.start_runner(runner, rx, Vec::new());
        let source = start_kube_source(
            KubeConnect::Config(Box::new(fake.kube_config())),
            src,
            h.events.clone(),
            h.metrics.clone(),
        )
        .expect("kube source");
        h.source = Some(source);
        h
    }

    pub fn published(&self) -> Vec<Published> {
        self.log.lock().unwrap().clone()
    }

    pub fn last(&self) -> Option<Published> {
        self.log.lock().unwrap().last().cloned()
    }

    /// Wait until the latest publish satisfies `pred`; panic after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Published) -> bool,
    ) -> Published {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.last() {
                if pred(&p) {
                    return p;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last publish: {:#?}",
                    self.last()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Poll `cond` until true; panic after `timeout`.
    pub fn wait_until(timeout: Duration, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.source.take() {
            s.stop();
        }
        if let Some(r) = self.runner.take() {
            r.stop();
        }
    }
}

/// `ns/name` strings.
pub fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Check the publish log: generations count up by one, and each publish's
/// tables hold exactly the Services of the state it was compiled from.
pub fn assert_log_consistent(log: &[Published]) {
    for w in log.windows(2) {
        assert_eq!(
            w[1].generation,
            w[0].generation + 1,
            "generations must count up by one: {w:#?}"
        );
    }
    for p in log {
        assert_eq!(
            p.state_services, p.table_services,
            "tables differ from their state: {p:#?}"
        );
        assert_eq!(
            p.differs_from_full, None,
            "generation {} (full: {}) differs from a from-scratch compile",
            p.generation, p.full
        );
    }
}

/// A minimal HTTP/1.1 GET; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
