//! Fault tests: the API server goes away and comes back; node registration.

mod fake_apiserver;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::harness::{
    assert_log_consistent, fast_runner, fast_source, http_get, Harness, NODE,
};
use fake_apiserver::{self as fake, FakeApiServer};
use kxdp_control::admin::{start_admin, AdminState};
use kxdp_control::metrics::Metrics;
use kxdp_control::source::kube::{
    register_node, start_kube_source, KubeConnect, KubeSourceConfig, NodeRegistration, WatchBackoff,
};
use kxdp_control::source::{self, Kind, Object, SourceEvent};

const T: Duration = Duration::from_secs(10);

fn seed(fake: &FakeApiServer, n: usize) {
    fake.apply("namespaces", fake::namespace("default"));
    fake.apply("nodes", fake::node(NODE, "192.168.50.1", "10.244.1.0/24"));
    fake.apply("networkpolicies", fake::deny_all_policy("default", "deny"));
    for i in 0..n {
        add_service(fake, i);
    }
}

fn add_service(fake: &FakeApiServer, i: usize) {
    let name = format!("s{i}");
    fake.apply(
        "services",
        fake::service("default", &name, &format!("10.96.0.{}", 10 + i), 80),
    );
    fake.apply(
        "endpointslices",
        fake::endpoint_slice(
            "default",
            &name,
            &[&format!("10.244.1.{}", 10 + i)],
            NODE,
            None,
        ),
    );
}

fn services(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("default/s{i}")).collect()
}

/// ```text
///  fake API server ──list/watch──> kube source ─> runner ─> TableSlot
///        │ stop()                                   │
///        │ (history compacted while away)           └─> /healthz (admin)
///        └ start() ─> 410 on resume ─> whole relist ─> new generation
/// ```
#[test]
fn api_server_outage_keeps_tables_and_reports_staleness_then_resyncs() {
    let mut fake = FakeApiServer::start_new();
    seed(&fake, 6);
    let runner = fast_runner(); // max interval 400 ms -> stale after 800 ms
    let h = Harness::start(&fake, runner, fast_source());
    let admin = start_admin(
        "127.0.0.1:0".parse().unwrap(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        AdminState {
            status: h.status.clone(),
            metrics: h.metrics.clone(),
            tables: h.slot.clone(),
        },
    )
    .expect("admin");
    let addr = admin.local_addr();
    h.wait_for(T, "initial publish", |p| p.state_services == services(0..6));
    Harness::wait_until(T, "ready", || http_get(addr, "/readyz").0 == 200);
    // Periodic resyncs keep /healthz fresh while the API server is there.
    std::thread::sleep(Duration::from_millis(1000));
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let reader = h.slot.reader().expect("published");
    let generation_before = reader.load().generation;
    assert!(generation_before >= 2, "periodic full resyncs expected");

    // The API server goes away; while it is away the cluster changes and
    // its history is compacted, so the watch cannot simply resume.
    fake.stop();
    for i in 0..3 {
        fake.delete("services", "default", &format!("s{i}"));
        fake.delete("endpointslices", "default", &format!("s{i}-abc"));
    }
    for i in 10..13 {
        add_service(&fake, i);
    }
    fake.compact();
    Harness::wait_until(T, "healthz stale", || http_get(addr, "/healthz").0 == 503);
    let (_, body) = http_get(addr, "/healthz");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["lastUpdated"].is_string() && v["currentTime"].is_string(),
        "{v}"
    );
    // The last tables keep serving, unchanged.
    let during = reader.load();
    assert_eq!(during.services.ports.len(), 6);
    let frozen_gen = during.generation;
    drop(during);
    let published_while_down = h.published().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.published().len(),
        published_while_down,
        "nothing may be published from a stale view"
    );
    assert_eq!(reader.load().generation, frozen_gen);
    let r = h.status.readiness();
    assert_eq!(r.unhealthy_sources, vec!["kubernetes"]);
    assert!(h.metrics.watch_errors(kxdp_control::source::Kind::Service) > 0);

    // It comes back: 410 on resume, relist, the right tables.
    fake.start();
    let mut want = services(3..6);
    want.extend(services(10..13));
    h.wait_for(T, "resynced", |p| p.state_services == want);
    Harness::wait_until(T, "healthz fresh", || http_get(addr, "/healthz").0 == 200);
    let log = h.published();
    assert_log_consistent(&log);
    // No half state: every generation is the old set or the new set.
    for p in &log {
        assert!(
            p.state_services == services(0..6) || p.state_services == want,
            "half state published: {p:#?}"
        );
    }
    admin.stop();
}

#[test]
fn register_node_patches_flannel_annotations() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 1);
    let reg = NodeRegistration {
        node_name: NODE.into(),
        public_ip: Ipv4Addr::new(192, 168, 50, 1),
        vtep_mac: "0a:bb:cc:dd:ee:01".parse().unwrap(),
        vni: 1,
    };
    // Through the source (--register-node), with the watcher seeing it.
    let src = KubeSourceConfig {
        register: Some(reg.clone()),
        ..fast_source()
    };
    let h = Harness::start(&fake, fast_runner(), src);
    Harness::wait_until(T, "node annotated", || {
        fake.get("nodes", "", NODE).is_some_and(|n| {
            n["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        })
    });
    let node = fake.get("nodes", "", NODE).unwrap();
    let ann = &node["metadata"]["annotations"];
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-data"],
        r#"{"VNI":1,"VtepMAC":"0a:bb:cc:dd:ee:01"}"#
    );
    assert_eq!(ann["flannel.alpha.coreos.com/public-ip"], "192.168.50.1");
    assert_eq!(ann["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
    // Other annotations survive the merge patch.
    assert_eq!(ann["node.alpha.kubernetes.io/ttl"], "0");
    // The tables pick the VTEP MAC up from the watched Node.
    Harness::wait_until(T, "vtep mac in tables", || {
        h.slot
            .current()
            .is_some_and(|t| t.node.vtep_mac.to_string() == "0a:bb:cc:dd:ee:01")
    });
    drop(h);

    // The plain function, against a missing node: an error naming it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let client = kube::Client::try_from(fake.kube_config()).unwrap();
        let missing = NodeRegistration {
            node_name: "ghost".into(),
            ..reg
        };
        register_node(client, &missing).await.unwrap_err()
    });
    assert!(err.to_string().contains("ghost"), "{err}");
}

/// Found by `tests/e2e_kube_source.rs`: after an outage the `/version`
/// probe used to mark the source healthy as soon as the API server
/// answered, while the watchers still sat in their backoff before the relist
/// that brings their view up to date; in that window the runner's periodic
/// resync could re-stamp `/healthz` as fresh from the pre-outage state.
/// Health must come back only once every watcher that failed has re-listed.
///
/// Observed on the source's own event stream (no runner): after the API
/// server is back, the `Health { healthy: true }` report must come after a
/// complete list (`Relisted`) of every kind, the Services' one holding the
/// change made while away.
#[test]
fn health_returns_only_after_every_watcher_recovered() {
    let mut fake = FakeApiServer::start_new();
    seed(&fake, 3);
    let src = KubeSourceConfig {
        // Backoff grows while the API server is away (as the default
        // does, 800 ms .. 30 s); the probe is quick.
        backoff: WatchBackoff::Exponential {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(3),
        },
        probe_interval: Duration::from_millis(100),
        ..fast_source()
    };
    let (tx, rx) = source::channel();
    let _source = start_kube_source(
        KubeConnect::Config(Box::new(fake.kube_config())),
        src,
        tx,
        Arc::new(Metrics::new()),
    )
    .expect("kube source");
    let next = |what: &str, deadline: Instant| -> SourceEvent {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
    };
    let deadline = Instant::now() + T;
    let mut synced = BTreeSet::new();
    while synced.len() < Kind::ALL.len() {
        if let SourceEvent::Relisted { kind, .. } = next("initial lists", deadline) {
            synced.insert(kind);
        }
    }

    fake.stop();
    let deadline = Instant::now() + T;
    loop {
        match next("unhealthy", deadline) {
            SourceEvent::Health { healthy: false, .. } => break,
            SourceEvent::Health { healthy: true, .. } => panic!("healthy while away"),
            _ => {}
        }
    }
    // Long enough for the watchers' backoff to reach seconds; every one
    // fails to resume its watch meanwhile.
    std::thread::sleep(Duration::from_millis(2500));
    add_service(&fake, 7);
    fake.compact();
    // Nothing was listed while away.
    for ev in rx.try_iter() {
        assert!(
            !matches!(
                ev,
                SourceEvent::Relisted { .. } | SourceEvent::Health { .. }
            ),
            "while away: {ev:?}"
        );
    }

    fake.start();
    let deadline = Instant::now() + T;
    let mut relisted = BTreeSet::new();
    let mut listed_services = BTreeSet::new();
    loop {
        match next("healthy again", deadline) {
            SourceEvent::Health { healthy: true, .. } => break,
            SourceEvent::Health { healthy: false, .. } => {}
            SourceEvent::Relisted { kind, objects } => {
                relisted.insert(kind);
                if kind == Kind::Service {
                    listed_services = objects
                        .iter()
                        .map(|o| match o {
                            Object::Service(svc) => format!(
                                "{}/{}",
                                svc.metadata.namespace.as_deref().unwrap_or_default(),
                                svc.metadata.name.as_deref().unwrap_or_default()
                            ),
                            other => panic!("not a Service: {other:?}"),
                        })
                        .collect();
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        relisted,
        Kind::ALL.into_iter().collect::<BTreeSet<_>>(),
        "healthy again before every watcher relisted"
    );
    let mut want = services(0..3);
    want.insert("default/s7".to_string());
    assert_eq!(listed_services, want);
}
