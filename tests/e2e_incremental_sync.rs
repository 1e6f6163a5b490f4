//! End-to-end: `kxdp run --manifests` compiles a small change
//! incrementally, and what it publishes equals a full rebuild of the same
//! state.
//!
//! ```text
//!   node-a netns: kxdp run --manifests cluster.yaml --sync-period-ms 4000
//!     admin API 127.0.0.1:10256: /metrics (sync counts per mode),
//!                                /debug/tables (the published TableSet)
//!   pods a1, a2 on node-a; b1 on node-b
//! ```
//!
//! 1. Ready: the first generation is full.
//! 2. One edit of the manifests file: the Service `web` selects `b1`
//!    instead of `a2`, and pod `a1` gets the label `role: client` that the
//!    NetworkPolicy protecting `a2` admits. The generation it makes is
//!    partial (`kxdp_sync_duration_seconds_count{mode="partial"}` counts
//!    it, the full count does not move) and holds the change.
//! 3. With nothing changing, the periodic resync (`--sync-period-ms`)
//!    rebuilds the same state in full: its tables equal the partial
//!    generation's, generation number and underlay neighbours (the host's
//!    ARP table, which may learn entries meanwhile) aside.
//!
//! A host change (a neighbour learned, a veth seen) also makes a full
//! sync; when one lands between the edit and the read, the edit is undone
//! and made again (at most 3 times).
//!
//! Run as root (prints SKIP otherwise). kxdp and the namespaces are torn
//! down on drop, also on failure.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::kxdp::{admin_get, cluster_ip_service, metric, replace_file, KxdpCluster};
use common::topology::skip_if_unsupported;
use serde_json::Value;

const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 10256);
const VIP_WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SYNC_PERIOD_MS: &str = "4000";
const TIMEOUT: Duration = Duration::from_secs(20);

const POLICY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a2-clients
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: a2
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: client
"#;

/// Sync counts and the generation, from `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Syncs {
    full: f64,
    partial: f64,
    generation: f64,
}

fn syncs(c: &mut KxdpCluster) -> Syncs {
    let text = admin_get(&c.node_a().ns, ADMIN, "/metrics");
    let text = c.check("GET /metrics", text);
    let count = |mode: &str| {
        metric(
            &text,
            &format!("kxdp_sync_duration_seconds_count{{mode=\"{mode}\"}}"),
        )
        .unwrap_or(0.0)
    };
    Syncs {
        full: count("full"),
        partial: count("partial"),
        generation: metric(&text, "kxdp_generation").unwrap_or(0.0),
    }
}

/// The published tables with the counts around the read: Some when no
/// sync happened while reading (the counts describe the tables).
fn tables(c: &mut KxdpCluster) -> Option<(Syncs, Value)> {
    let before = syncs(c);
    let body = admin_get(&c.node_a().ns, ADMIN, "/debug/tables");
    let body = c.check("GET /debug/tables", body);
    let after = syncs(c);
    let v: Value = serde_json::from_str(&body).expect("/debug/tables is JSON");
    (before == after && v["generation"].as_f64() == Some(after.generation)).then_some((after, v))
}

fn wait<T>(c: &mut KxdpCluster, what: &str, mut f: impl FnMut(&mut KxdpCluster) -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f(c) {
            return v;
        }
        if Instant::now() > deadline {
            let r: Result<T, String> = Err(format!("timed out after {TIMEOUT:?}"));
            return c.check(what, r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Service `name`'s cluster backends in a `/debug/tables` body.
fn backends(t: &Value, name: &str) -> Vec<String> {
    let ports = t["services"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let port = ports.iter().find(|p| p["name"] == name);
    let mut ips: Vec<String> = port
        .and_then(|p| p["cluster"]["backends"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b["ip"].as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips
}

/// Everything that must not depend on how the tables were compiled.
fn comparable(mut t: Value) -> Value {
    if let Some(o) = t.as_object_mut() {
        o.remove("generation");
        o.remove("neighbours");
    }
    t
}

#[test]
fn e2e_manifest_edit_is_a_partial_sync_equal_to_a_full_one() {
    let test = "e2e_manifest_edit_is_a_partial_sync_equal_to_a_full_one";
    if skip_if_unsupported(test) {
        return;
    }
    let extra = vec![
        cluster_ip_service("web", VIP_WEB, 80, "a2"),
        POLICY.to_string(),
    ];
    let mut c = KxdpCluster::start(
        "incsync",
        &extra,
        &[
            "--sync-period-ms",
            SYNC_PERIOD_MS,
            "--min-sync-period-ms",
            "50",
        ],
    )
    .unwrap_or_else(|e| panic!("{test}: setting up: {e}"));
    let a2 = c.pod("a2").ip.to_string();
    let b1 = c.pod("b1").ip.to_string();
    let original = std::fs::read_to_string(&c.manifests).expect("manifests");
    let edited = original
        .replace("  selector:\n    app: a2\n", "  selector:\n    app: b1\n")
        .replace(
            "  labels:\n    app: a1\n",
            "  labels:\n    app: a1\n    role: client\n",
        );
    assert_ne!(edited, original);
    assert_eq!(
        edited.matches("role: client").count(),
        2,
        "pod a1 and the policy"
    );

    // 1. The first generation is full.
    let (first, t1) = wait(&mut c, "the first generation", tables);
    assert!(first.full >= 1.0, "{first:?}");
    assert_eq!(first.partial, 0.0, "{first:?}");
    assert_eq!(backends(&t1, "web"), vec![a2.clone()]);

    // 2. One edit -> one partial generation with the change.
    let mut partial = None;
    for attempt in 0..3 {
        let before = syncs(&mut c);
        let (text, want) = if attempt % 2 == 0 {
            (&edited, &b1)
        } else {
            (&original, &a2)
        };
        let r = replace_file(&c.manifests, text);
        c.check("editing the manifests", r);
        let (s, t) = wait(&mut c, "the edit's generation", |c| {
            tables(c).filter(|(s, _)| s.partial > before.partial)
        });
        if s.full == before.full && s.generation == before.generation + 1.0 {
            assert_eq!(s.partial, before.partial + 1.0, "{before:?} -> {s:?}");
            assert_eq!(&backends(&t, "web"), &vec![want.clone()]);
            if attempt % 2 == 0 {
                partial = Some((s, t));
                break;
            }
        }
        // A full sync came in between (or the edit was undone): again.
    }
    let (p, t2) = partial.unwrap_or_else(|| {
        panic!(
            "{test}: no partial generation for the edit in 3 attempts\n{}",
            c.kxdp.log_text()
        )
    });

    // 3. The periodic full resync of the same state gives the same tables.
    let (s, t3) = wait(&mut c, "the periodic full resync", |c| {
        tables(c).filter(|(s, _)| s.full > p.full)
    });
    assert_eq!(
        s.partial, p.partial,
        "nothing changed, so no partial sync in between"
    );
    assert!(s.generation > p.generation);
    assert_eq!(
        comparable(t2),
        comparable(t3),
        "the partial generation differs from a full rebuild of the same state"
    );
}
