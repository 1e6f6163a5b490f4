//! The Kubernetes source end to end: kube-rs's real client and watchers
//! against the in-process fake API server, the real runner compiling real
//! tables. Every publish is recorded and checked whole.

mod fake_apiserver;

use std::collections::BTreeSet;
use std::time::Duration;

use fake_apiserver::harness::{
    assert_log_consistent, fast_runner, fast_source, names, Harness, NODE,
};
use fake_apiserver::{self as fake, FakeApiServer};
use kxdp_control::runner::RunnerConfig;
use kxdp_control::source::kube::KubeSourceConfig;
use kxdp_control::source::Kind;

const T: Duration = Duration::from_secs(10);

/// node-a (local), node-b, and Services `default/s0..s{n}` each with one
/// endpoint 10.244.1.{10+i} on node-a.
fn seed(fake: &FakeApiServer, n: usize) {
    fake.apply("namespaces", fake::namespace("default"));
    fake.apply("nodes", fake::node(NODE, "192.168.50.1", "10.244.1.0/24"));
    fake.apply(
        "nodes",
        fake::node("node-b", "192.168.50.2", "10.244.2.0/24"),
    );
    fake.apply("pods", fake::pod("default", "web-1", "10.244.1.5", NODE));
    fake.apply("networkpolicies", fake::deny_all_policy("default", "deny"));
    for i in 0..n {
        add_service(fake, i, &format!("10.244.1.{}", 10 + i));
    }
}

fn add_service(fake: &FakeApiServer, i: usize, backend: &str) {
    let name = format!("s{i}");
    fake.apply(
        "services",
        fake::service("default", &name, &format!("10.96.0.{}", 10 + i), 80),
    );
    fake.apply(
        "endpointslices",
        fake::endpoint_slice("default", &name, &[backend], NODE, None),
    );
}

fn service_names(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("default/s{i}")).collect()
}

#[test]
fn paged_initial_list_then_watch_events() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 10);
    let h = Harness::start(&fake, fast_runner(), fast_source());

    let first = h.wait_for(T, "initial publish", |p| p.generation >= 1);
    assert_eq!(first.generation, 1);
    assert!(first.full);
    assert_eq!(
        first.state_services,
        service_names(0..10),
        "first publish must hold the whole list"
    );
    assert_eq!(
        first.backends["default/s3"],
        names(&["10.244.1.13"]),
        "{first:#?}"
    );
    Harness::wait_until(T, "ready", || h.status.readiness().ready);

    // The watcher paged (limit=3 + continue) and asked for bookmarks.
    let reqs = fake.requests();
    assert!(
        reqs.iter().any(|r| r.contains("/api/v1/services?")
            && r.contains("limit=3")
            && r.contains("continue=")),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{reqs:#?}"
    );

    // Modify an endpoint, delete a Service, add one.
    fake.apply(
        "endpointslices",
        fake::endpoint_slice(
            "default",
            "s3",
            &["10.244.1.99"],
            NODE,
            Some("2024-05-01T10:00:00Z"),
        ),
    );
    h.wait_for(T, "s3 moved", |p| {
        p.backends.get("default/s3") == Some(&names(&["10.244.1.99"]))
    });
    fake.delete("services", "default", "s4");
    fake.delete("endpointslices", "default", "s4-abc");
    add_service(&fake, 10, "10.244.1.50");
    let mut want = service_names(0..11);
    want.remove("default/s4");
    let p = h.wait_for(T, "s4 gone, s10 added", |p| {
        p.state_services == want && p.backends.get("default/s10").is_some_and(|b| !b.is_empty())
    });
    assert!(!p.backends.contains_key("default/s4"));
    // The trigger-time annotation fed the programming latency histogram.
    let metrics = h.metrics.encode();
    assert!(
        metrics.contains("kxdp_network_programming_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kxdp_objects{kind=\"services\"} 10"),
        "{metrics}"
    );

    assert_log_consistent(&h.published());
}

#[test]
fn updates_that_change_nothing_we_use_publish_nothing() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 3);
    let config = RunnerConfig {
        // No periodic resync inside the observation window.
        max_interval: Duration::from_secs(60),
        ..fast_runner()
    };
    let h = Harness::start(&fake, config, fast_source());
    h.wait_for(T, "initial publish", |p| p.generation == 1);
    // A node heartbeat (status.conditions) and a managedFields-only change
    // are stripped away: no new generation.
    let mut n = fake::node(NODE, "192.168.50.1", "10.244.1.0/24");
    n["status"]["conditions"][0]["lastHeartbeatTime"] = serde_json::json!("2024-05-01T10:00:00Z");
    fake.apply("nodes", n);
    let mut s = fake::endpoint_slice("default", "s1", &["10.244.1.11"], NODE, None);
    s["metadata"]["managedFields"][0]["time"] = serde_json::json!("2024-05-01T10:00:00Z");
    fake.apply("endpointslices", s);
    // A real change after them proves the events were delivered in order.
    fake.apply(
        "services",
        fake::service("default", "later", "10.96.1.1", 80),
    );
    h.wait_for(T, "the real change", |p| {
        p.state_services.contains("default/later")
    });
    let log = h.published();
    assert_eq!(log.len(), 2, "only the real change may publish: {log:#?}");
    assert_eq!(log[1].changes, 1);
    assert!(!log[1].full);
}

#[test]
fn nothing_is_published_before_every_kind_synced() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 2);
    // The source watches everything but NetworkPolicies; the runner
    // requires all six kinds.
    let src = KubeSourceConfig {
        kinds: Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::NetworkPolicy)
            .collect(),
        ..fast_source()
    };
    let h = Harness::start(&fake, fast_runner(), src);
    Harness::wait_until(T, "five kinds synced", || {
        h.status.readiness().waiting_for == vec![Kind::NetworkPolicy]
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(h.published().is_empty());
    assert!(h.slot.current().is_none());
    let r = h.status.readiness();
    assert!(!r.ready && !r.published);
}

#[test]
fn relist_after_410_gone_is_published_whole() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 9);
    let h = Harness::start(&fake, fast_runner(), fast_source());
    h.wait_for(T, "initial publish", |p| {
        p.state_services == service_names(0..9)
    });

    // Behind the watch's back (history compacted), replace s0..s5 with
    // s100..s105, then end the watch with 410 Gone: only a relist (paged,
    // 3 per page) can see the new set.
    fake.compact();
    let before = h.published().len();
    for i in 0..6 {
        fake.delete("services", "default", &format!("s{i}"));
        fake.delete("endpointslices", "default", &format!("s{i}-abc"));
    }
    for i in 100..106 {
        add_service(&fake, i, &format!("10.244.1.{}", i + 50));
    }
    // The watch still delivers these events; force the relist path too by
    // expiring the history and sending 410 on every Service watch.
    // Pages come slowly (3 per page, 100 ms each, min sync interval 50 ms):
    // a runner publishing pages as they arrive would show a half list.
    fake.set_list_delay(Duration::from_millis(100));
    fake.inject_gone("services");
    fake.inject_gone("endpointslices");
    let mut want = service_names(6..9);
    want.extend(service_names(100..106));
    h.wait_for(T, "new set", |p| p.state_services == want);
    Harness::wait_until(T, "relist counted", || {
        h.metrics.relists(Kind::Service) >= 1
    });

    // Every publish shows either the old set, or states reachable by whole
    // watch events — never a partial page of a relist: a relist page holds
    // 3 objects, so a half list would show a set missing some of s6..s8.
    let log = h.published();
    assert_log_consistent(&log);
    for p in &log[before..] {
        for keep in service_names(6..9) {
            assert!(
                p.state_services.contains(&keep),
                "half list published: {p:#?}"
            );
        }
    }
}

#[test]
fn relist_interrupted_by_expired_continue_token_is_discarded() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 8);
    let h = Harness::start(&fake, fast_runner(), fast_source());
    h.wait_for(T, "initial publish", |p| {
        p.state_services == service_names(0..8)
    });
    let before = h.published().len();
    // The next two relists die on their second page (410 Expired on the
    // continue token); the watcher starts over; the runner must never see
    // the first page alone.
    fake.fail_next_continues(2);
    fake.inject_gone("services");
    Harness::wait_until(T, "two failed continues", || fake.failed_continues() == 2);
    Harness::wait_until(T, "three relists", || h.metrics.relists(Kind::Service) >= 3);
    add_service(&fake, 8, "10.244.1.80");
    h.wait_for(T, "s8", |p| p.state_services == service_names(0..9));
    let log = h.published();
    assert_log_consistent(&log);
    for p in &log[before..] {
        assert!(
            service_names(0..8).is_subset(&p.state_services),
            "half list published: {p:#?}"
        );
    }
}

#[test]
fn dropped_watch_connection_resumes_without_loss() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 3);
    let h = Harness::start(&fake, fast_runner(), fast_source());
    h.wait_for(T, "initial publish", |p| p.generation >= 1);
    fake.drop_watches();
    // Changes made right after the cut arrive once the watch resumes from
    // its last resourceVersion.
    add_service(&fake, 3, "10.244.1.30");
    fake.delete("services", "default", "s0");
    fake.delete("endpointslices", "default", "s0-abc");
    h.wait_for(T, "changes after reconnect", |p| {
        p.state_services == service_names(1..4)
    });
    assert_log_consistent(&h.published());
    assert_eq!(
        h.metrics.relists(Kind::Service),
        0,
        "a resumed watch must not relist"
    );
}

#[test]
fn malformed_object_is_skipped_and_the_stream_goes_on() {
    let fake = FakeApiServer::start_new();
    seed(&fake, 2);
    // Broken before the list: the list must still load.
    let mut bad = fake::service("default", "bad-list", "10.96.9.1", 80);
    bad["spec"]["ports"][0]["port"] = serde_json::json!("eighty");
    fake.apply("services", bad);
    let h = Harness::start(&fake, fast_runner(), fast_source());
    let p = h.wait_for(T, "initial publish", |p| p.generation >= 1);
    assert_eq!(p.state_services, service_names(0..2));
    assert_eq!(h.metrics.decode_errors(Kind::Service), 1);

    // Broken in a watch event, including metadata that does not fit the
    // schema: skipped, counted, later events still flow.
    let mut bad = fake::service("default", "bad-watch", "10.96.9.2", 80);
    bad["metadata"]["labels"] = serde_json::json!(["not", "a", "map"]);
    fake.apply("services", bad);
    // A good object turning bad is treated as gone.
    let mut s1 = fake::service("default", "s1", "10.96.0.11", 80);
    s1["spec"]["ports"] = serde_json::json!("none");
    fake.apply("services", s1);
    add_service(&fake, 5, "10.244.1.55");
    h.wait_for(T, "s5 after the bad ones", |p| {
        p.state_services == names(&["default/s0", "default/s5"])
    });
    assert_eq!(h.metrics.decode_errors(Kind::Service), 3);
    assert_eq!(h.metrics.relists(Kind::Service), 0);
    assert_log_consistent(&h.published());
}
