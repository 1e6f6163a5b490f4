//! End-to-end: the Kubernetes API source through the real `kxdp run`
//! binary. `kxdp run --kubeconfig FILE --register-node` runs on node-a of
//! the standard topology and watches the fake API server of
//! `kxdp_control::testing::fake_apiserver` (the real HTTP list/watch
//! protocol); what it serves is asserted through the admin API and with
//! real TCP connections through ClusterIPs.
//!
//! ```text
//!   node-a netns
//!   ├─ lo 127.0.0.1:<port>  fake API server: its listener is made in this
//!   │      ▲                netns, threads of the test process serve it
//!   │      │ list/watch, PATCH node
//!   ├─ kxdp run --kubeconfig ──► tables ──► XDP/AF_XDP on eth0 + pod veths
//!   └─ lo 127.0.0.1:10256   admin API (/readyz /healthz /metrics /debug/*)
//!   pods a1, a2 on node-a; b1 on node-b (Linux + Flannel VXLAN)
//! ```
//!
//! The fake listens on node-a's own loopback (a namespace the test
//! created), never on an address of the root namespace.
//!
//! Phases, each bounded:
//! 1. Services' list is held at the fake: `/readyz` is 503 naming
//!    `services`, no tables are served, no ready file; released -> ready.
//! 2. The API's objects are live: `/debug/services`, `/debug/tables`,
//!    `/metrics` object counts and generation (a malformed Service is
//!    skipped and counted); the Node patch of
//!    `--register-node` reached the fake; TCP through a ClusterIP reaches
//!    the EndpointSlice's backend.
//! 3. An EndpointSlice change arrives through the watch stream: the new
//!    backend serves the ClusterIP, programming latency is measured, no
//!    relist happened.
//! 4. 410 Gone on the Service and EndpointSlice watches while the cluster
//!    changes behind them: relists produce the new set. From here to the
//!    end (phase 5 included) every generation `/debug/services` shows
//!    holds one whole Service set (before, after the relist, after the
//!    outage), never a part of one.
//! 5. The fake goes away: `/readyz` names the source unhealthy, the last
//!    tables keep serving (same generation, `/healthz` `lastUpdated`
//!    frozen, traffic still flows); `/healthz` turns 503 once 2 × the sync
//!    period passed without publish when the binary lets the test shorten
//!    that period (see [`SYNC_PERIOD_FLAG`]), otherwise it is still 200
//!    with the frozen `lastUpdated` (the default period makes that 60 s).
//!    It comes back: resync to the right tables, healthy again. kxdp then
//!    exits cleanly on SIGTERM.
//!
//! Run as root (prints SKIP otherwise). kxdp, the servers, the fake and
//! the namespaces are torn down on drop, also on failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::kxdp::{admin_request, http_get, metric, KxdpProcess, TempDir};
use common::topology::{skip_if_unsupported, Netns, TopoResult, Topology, TopologyOptions};
use common::whoami::{tcp_whoami, NameServer};
use kxdp_control::testing::fake_apiserver::{self as fake, Binder, FakeApiServer};
use serde_json::{json, Value};

/// The admin API inside node-a (kxdp's default address, in node-a's netns).
const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 10256);
/// Port every backend listens on (the fake's EndpointSlices say 8080).
const SERVER_PORT: u16 = 8080;
/// A `kxdp run` flag setting the runner's max sync interval in ms (not in
/// the binary yet); when `kxdp run --help` lists it, phase 5 shortens the
/// period and asserts the `/healthz` 503.
const SYNC_PERIOD_FLAG: &str = "--sync-period-ms";
const SYNC_PERIOD_MS: u64 = 2000;
/// Bound of every wait for kxdp to react to the API.
const T: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

const VIP_WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SVC_PORT: u16 = 80;

/// ClusterIP of Service `s<i>` (`web` is i = 0).
fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 10 + i)
}

/// A [`Binder`] creating the listening socket on a thread inside `ns`:
/// the fake then listens on that namespace's loopback.
fn netns_binder(ns: &Netns) -> Binder {
    let path = ns.path();
    Arc::new(move |addr| {
        let path = path.clone();
        std::thread::spawn(move || {
            kxdp_ffi::netns::enter_net_namespace(&path)?;
            TcpListener::bind(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("binder thread panicked"))?
    })
}

/// `ns/name` -> sorted `ip:port` endpoints, from `/debug/services`.
type ServiceView = BTreeMap<String, BTreeSet<String>>;

/// (generation, Services) of a `/debug/services` body.
fn parse_services(body: &str) -> TopoResult<(u64, ServiceView)> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    let generation = v["generation"].as_u64().ok_or("no generation")?;
    let mut out = ServiceView::new();
    for s in v["services"].as_array().ok_or("no services")? {
        let key = format!(
            "{}/{}",
            s["namespace"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or("")
        );
        let eps = out.entry(key).or_default();
        for e in s["endpoints"].as_array().into_iter().flatten() {
            eps.insert(format!(
                "{}:{}",
                e["ip"].as_str().unwrap_or(""),
                e["port"].as_u64().unwrap_or(0)
            ));
        }
    }
    Ok((generation, out))
}

/// The Service -> endpoints view `expect` describes: `(name, backend ip)`.
fn view(expect: &[(&str, Option<Ipv4Addr>)]) -> ServiceView {
    expect
        .iter()
        .map(|(n, ip)| {
            (
                format!("default/{n}"),
                ip.iter().map(|ip| format!("{ip}:{SERVER_PORT}")).collect(),
            )
        })
        .collect()
}

/// What the [`Observer`] saw: one entry per generation.
type Observed = Vec<(u64, ServiceView)>;

fn names(v: &ServiceView) -> BTreeSet<String> {
    v.keys().cloned().collect()
}

/// Records every generation `/debug/services` shows, polled from a thread
/// inside node-a until stopped (at most two minutes).
struct Observer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<TopoResult<Observed>>>,
}

impl Observer {
    fn start(ns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = ns.spawn(move || {
            let mut seen = Observed::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((200, body)) = http_get(ADMIN, "/debug/services") {
                    let (g, v) = parse_services(&body)?;
                    if seen.last().is_none_or(|(last, _)| *last != g) {
                        seen.push((g, v));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(seen)
        });
        Observer {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> TopoResult<Observed> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .ok_or("observer already finished")?
            .join()
            .map_err(|_| "observer panicked".to_string())?
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Everything the test runs. Field order is drop order: kxdp first (it
/// must not outlive its namespace), then the servers, the fake, the
/// namespaces, the scratch directory.
struct Fixture {
    kxdp: KxdpProcess,
    /// Held for their RAII cleanup.
    _servers: Vec<NameServer>,
    fake: FakeApiServer,
    topo: Topology,
    _dir: TempDir,
    /// kxdp runs with [`SYNC_PERIOD_FLAG`].
    short_period: bool,
}

impl Fixture {
    fn ns_a(&self) -> &Netns {
        &self.topo.node("node-a").expect("node-a").ns
    }

    fn pod_ns(&self, name: &str) -> &Netns {
        &self.topo.pod(name).expect("pod").ns
    }

    /// Panics with kxdp's log on error.
    fn check<T>(&mut self, what: &str, r: TopoResult<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                let alive = self.kxdp.running();
                panic!(
                    "{what}: {e}\n--- kxdp (running: {alive}) log ---\n{}",
                    self.kxdp.log_text()
                )
            }
        }
    }

    fn admin(&mut self, path: &str) -> (u16, String) {
        let r = admin_request(self.ns_a(), ADMIN, path);
        self.check(&format!("GET {path}"), r)
    }

    fn admin_json(&mut self, path: &str) -> (u16, Value) {
        let (code, body) = self.admin(path);
        let v = serde_json::from_str(&body);
        (
            code,
            self.check(path, v.map_err(|e| format!("{e}: {body}"))),
        )
    }

    fn services(&mut self) -> (u64, ServiceView) {
        let (code, body) = self.admin("/debug/services");
        let r = if code == 200 {
            parse_services(&body)
        } else {
            Err(format!("/debug/services: {code} {body}"))
        };
        self.check("/debug/services", r)
    }

    fn metrics(&mut self) -> String {
        let (code, body) = self.admin("/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    fn metric(&mut self, series: &str) -> f64 {
        let text = self.metrics();
        metric(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    /// Polls `cond` every 50 ms until it returns Some; None after
    /// `timeout`.
    fn try_wait<T>(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = cond(self) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Fixture::try_wait`], panicking with kxdp's log on timeout.
    fn wait<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        cond: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let r = self
            .try_wait(timeout, cond)
            .ok_or_else(|| format!("timed out after {timeout:?}"));
        self.check(what, r)
    }

    /// Waits until `/debug/services` shows exactly `want`.
    fn wait_services(&mut self, what: &str, want: &ServiceView) -> u64 {
        let deadline = Instant::now() + T;
        let r = loop {
            let (g, v) = self.services();
            if &v == want {
                break Ok(g);
            }
            if Instant::now() >= deadline {
                break Err(format!("want {want:#?}\nlast (generation {g}) {v:#?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.check(what, r)
    }

    fn whoami(&mut self, from: &str, dst: Ipv4Addr) -> String {
        let r = tcp_whoami(self.pod_ns(from), dst, SVC_PORT, IO_TIMEOUT);
        self.check(&format!("{from} -> {dst}:{SVC_PORT}"), r)
    }
}

/// Adds Service `name` at `vip` with one endpoint (`ep.0` on node `ep.1`).
fn add_service(fake: &FakeApiServer, name: &str, vip: Ipv4Addr, ep: (Ipv4Addr, &str)) {
    fake.apply(
        "services",
        fake::service("default", name, &vip.to_string(), SVC_PORT),
    );
    fake.apply(
        "endpointslices",
        fake::endpoint_slice("default", name, &[&ep.0.to_string()], ep.1, None),
    );
}

fn remove_service(fake: &FakeApiServer, name: &str) {
    assert!(fake.delete("services", "default", name), "{name}");
    assert!(
        fake.delete("endpointslices", "default", &format!("{name}-abc")),
        "{name} slice"
    );
}

/// Whether the built binary has [`SYNC_PERIOD_FLAG`].
fn has_sync_period_flag() -> bool {
    std::process::Command::new(env!("CARGO_BIN_EXE_kxdp"))
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(SYNC_PERIOD_FLAG))
}

fn setup(test: &str) -> TopoResult<Fixture> {
    let topo = Topology::standard(TopologyOptions::default())?;
    let dir = TempDir::new(test)?;
    let node_a = topo.node("node-a").ok_or("no node-a")?;
    let node_b = topo.node("node-b").ok_or("no node-b")?;
    let fake = FakeApiServer::start_with_binder(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        netns_binder(&node_a.ns),
    );
    // node-a without Flannel annotations: --register-node writes them.
    fake.apply("namespaces", fake::namespace("default"));
    fake.apply(
        "nodes",
        fake::node(
            "node-a",
            &node_a.ip.to_string(),
            &format!("{}/24", node_a.pod_net),
        ),
    );
    fake.apply(
        "nodes",
        fake::flannel_node(
            "node-b",
            &node_b.ip.to_string(),
            &format!("{}/24", node_b.pod_net),
            &node_b.ns.mac("flannel.1")?,
        ),
    );
    for p in &topo.pods {
        let node = &topo.nodes[p.node].name;
        fake.apply(
            "pods",
            fake::pod("default", &p.name, &p.ip.to_string(), node),
        );
    }
    let a2 = topo.pod("a2").ok_or("no a2")?.ip;
    let b1 = topo.pod("b1").ok_or("no b1")?.ip;
    add_service(&fake, "web", VIP_WEB, (a2, "node-a"));
    add_service(&fake, "s1", vip(1), (a2, "node-a"));
    add_service(&fake, "s2", vip(2), (b1, "node-b"));
    // Does not fit the schema: skipped and counted, the rest still loads.
    let mut bad = fake::service("default", "bad", "10.96.0.99", SVC_PORT);
    bad["spec"]["ports"][0]["port"] = json!("eighty");
    fake.apply("services", bad);
    let kubeconfig = dir.path.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;

    // Phase 1 starts here: the Services' list waits at the fake.
    fake.hold_lists("services");
    let kc = kubeconfig.to_string_lossy().into_owned();
    let period = SYNC_PERIOD_MS.to_string();
    let mut args = vec!["--kubeconfig", kc.as_str(), "--register-node"];
    let short_period = has_sync_period_flag();
    if short_period {
        args.extend([SYNC_PERIOD_FLAG, period.as_str()]);
    }
    let kxdp = KxdpProcess::spawn(node_a, &dir.path, &args)?;
    let servers = vec![
        NameServer::tcp(&topo.pod("a2").ok_or("no a2")?.ns, "a2", SERVER_PORT)?,
        NameServer::tcp(&topo.pod("b1").ok_or("no b1")?.ns, "b1", SERVER_PORT)?,
    ];
    Ok(Fixture {
        kxdp,
        _servers: servers,
        fake,
        topo,
        _dir: dir,
        short_period,
    })
}

#[test]
fn e2e_kube_source_through_kxdp_run() {
    let test = "e2e_kube_source_through_kxdp_run";
    if skip_if_unsupported(test) {
        return;
    }
    let t0 = Instant::now();
    let mut f = setup(test).unwrap_or_else(|e| panic!("{test}: setting up: {e}"));
    let short_period = f.short_period;
    let a2 = f.topo.pod("a2").expect("a2").ip;
    let b1 = f.topo.pod("b1").expect("b1").ip;
    let a1 = f.topo.pod("a1").expect("a1").ip;
    let node_a_mac = f.topo.node("node-a").expect("node-a").mac.clone();
    let node_a_ip = f.topo.node("node-a").expect("node-a").ip;

    // ---- 1. Not ready before the initial sync of every kind. ----------
    let mut last = String::new();
    let r = f.try_wait(T, |f| {
        let (code, body) = admin_request(f.ns_a(), ADMIN, "/readyz").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        last = format!("{code} {body}");
        (v["waitingFor"] == json!(["services"])).then_some((code, v))
    });
    let r = r.ok_or_else(|| format!("last answer: {last}"));
    let (code, body) = f.check("/readyz waiting for the Services' list only", r);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["published"], false, "{body}");
    assert!(f.fake.held_lists() >= 1, "the Services' list must be held");
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = f.admin("/debug/tables");
    assert_eq!(code, 503, "no tables before the initial sync: {body}");
    let (code, _) = f.admin("/debug/services");
    assert_eq!(code, 503);
    assert_eq!(f.admin("/readyz").0, 503);
    assert!(!f.kxdp.ready_file.exists(), "ready before the initial sync");
    assert_eq!(f.metric("kxdp_generation"), 0.0);
    f.fake.release_lists("services");
    let r = f.kxdp.wait_ready(Duration::from_secs(30));
    f.check("kxdp ready after the release", r);
    let (code, body) = f.admin_json("/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["unhealthySources"], json!([]), "{body}");
    let t_ready = t0.elapsed();

    // ---- 2. The API's objects are what kxdp serves. --------------------
    let initial = view(&[("web", Some(a2)), ("s1", Some(a2)), ("s2", Some(b1))]);
    f.wait_services("initial Services", &initial);
    let (_, dbg) = f.admin_json("/debug/services");
    let web = dbg["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        web["frontends"],
        json!([{"ip": VIP_WEB.to_string(), "port": SVC_PORT, "kind": "cluster-ip"}]),
        "{web}"
    );
    assert_eq!(f.metric("kxdp_objects{kind=\"services\"}"), 3.0);
    assert_eq!(f.metric("kxdp_objects{kind=\"endpointslices\"}"), 3.0);
    assert_eq!(f.metric("kxdp_objects{kind=\"pods\"}"), 3.0);
    assert_eq!(f.metric("kxdp_objects{kind=\"nodes\"}"), 2.0);
    assert_eq!(f.metric("kxdp_objects{kind=\"namespaces\"}"), 1.0);
    assert_eq!(f.metric("kxdp_decode_errors_total{kind=\"services\"}"), 1.0);
    let gen_metric = f.metric("kxdp_generation");
    let (code, tables) = f.admin_json("/debug/tables");
    assert_eq!(code, 200);
    let gen_tables = tables["generation"].as_u64().expect("generation") as f64;
    assert!(
        gen_metric >= 1.0 && gen_tables >= gen_metric,
        "metric {gen_metric}, tables {gen_tables}"
    );
    // node-b's route and VTEP come from its Node object in the API.
    let routes = tables["routes"].to_string();
    let node_b_vtep = f.topo.node("node-b").expect("node-b").ns.mac("flannel.1");
    let node_b_vtep = f.check("node-b VTEP MAC", node_b_vtep);
    assert!(
        routes.contains("192.168.50.2") && routes.contains(&node_b_vtep),
        "{routes}"
    );
    // --register-node: the merge patch reached the API server.
    let ann = f.wait(T, "node-a registered", |f| {
        let n = f.fake.get("nodes", "", "node-a")?;
        let ann = n["metadata"]["annotations"].clone();
        ann.get("flannel.alpha.coreos.com/backend-data")
            .is_some()
            .then_some(ann)
    });
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-data"],
        format!("{{\"VNI\":1,\"VtepMAC\":\"{node_a_mac}\"}}"),
        "{ann}"
    );
    assert_eq!(ann["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(
        ann["flannel.alpha.coreos.com/public-ip"],
        node_a_ip.to_string()
    );
    assert_eq!(
        ann["node.alpha.kubernetes.io/ttl"], "0",
        "merge, not replace"
    );
    assert!(
        f.fake
            .requests()
            .iter()
            .any(|r| r.starts_with("PATCH /api/v1/nodes/node-a?")),
        "{:#?}",
        f.fake.requests()
    );
    // Real traffic through the ClusterIP to the slice's backend.
    assert_eq!(f.whoami("a1", VIP_WEB), format!("a2 {a1}"));
    assert_eq!(f.whoami("a1", vip(2)).split(' ').next(), Some("b1"));

    // ---- 3. An EndpointSlice change through the watch stream. ----------
    let (gen_before, _) = f.services();
    // Any past time: the histogram counts the publish (its value is not
    // asserted; performance is measured in benchmarks).
    let trigger = "2024-05-01T10:00:00Z";
    f.fake.apply(
        "endpointslices",
        fake::endpoint_slice(
            "default",
            "web",
            &[&b1.to_string()],
            "node-b",
            Some(trigger),
        ),
    );
    let moved = view(&[("web", Some(b1)), ("s1", Some(a2)), ("s2", Some(b1))]);
    let g = f.wait_services("web moved to b1", &moved);
    assert!(g > gen_before, "{g} > {gen_before}");
    assert_eq!(
        f.whoami("a1", VIP_WEB).split(' ').next(),
        Some("b1"),
        "the new backend serves the ClusterIP"
    );
    assert!(f.metric("kxdp_network_programming_duration_seconds_count") >= 1.0);
    assert_eq!(
        f.metric("kxdp_watch_relists_total{kind=\"endpointslices\"}"),
        0.0,
        "a watch event, not a relist"
    );

    // ---- 4. 410 Gone: relists publish whole sets. ----------------------
    let observer = Observer::start(f.ns_a());
    f.fake.hold_lists("services");
    f.fake.hold_lists("endpointslices");
    f.fake.inject_gone("services");
    f.fake.inject_gone("endpointslices");
    f.wait(T, "both relists waiting at the fake", |f| {
        (f.fake.held_lists() >= 2).then_some(())
    });
    // Behind the ended watches: s1, s2 go, s3, s4 come.
    remove_service(&f.fake, "s1");
    remove_service(&f.fake, "s2");
    add_service(&f.fake, "s3", vip(3), (a2, "node-a"));
    add_service(&f.fake, "s4", vip(4), (b1, "node-b"));
    // Slices first: a generation with the new slices and the old Services
    // is a whole state of each kind, and allowed.
    f.fake.release_lists("endpointslices");
    f.wait(T, "endpointslices relisted", |f| {
        (f.metric("kxdp_watch_relists_total{kind=\"endpointslices\"}") >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1200));
    f.fake.release_lists("services");
    let relisted = view(&[("web", Some(b1)), ("s3", Some(a2)), ("s4", Some(b1))]);
    f.wait_services("the relisted set", &relisted);
    assert!(f.metric("kxdp_watch_relists_total{kind=\"services\"}") >= 1.0);
    assert_eq!(f.whoami("a1", vip(3)), format!("a2 {a1}"));
    assert_eq!(f.whoami("a1", vip(4)).split(' ').next(), Some("b1"));

    // ---- 5. The API server goes away, then comes back. -----------------
    let (code, health) = f.admin_json("/healthz");
    assert_eq!(code, 200, "{health}");
    f.fake.stop();
    f.wait(T, "source reported unhealthy", |f| {
        let (_, v) = f.admin_json("/readyz");
        (v["unhealthySources"] == json!(["kubernetes"])).then_some(())
    });
    let (frozen_gen, frozen) = f.services();
    let (_, h) = f.admin_json("/healthz");
    let frozen_updated = h["lastUpdated"].clone();
    assert!(frozen_updated.is_string(), "{h}");
    // The cluster changes while kxdp cannot see it, and the history it
    // would resume from is compacted.
    remove_service(&f.fake, "s3");
    add_service(&f.fake, "s5", vip(5), (a2, "node-a"));
    f.fake.compact();
    let outage = if short_period {
        Duration::from_millis(2 * SYNC_PERIOD_MS + 1500)
    } else {
        Duration::from_millis(2500)
    };
    let outage_end = Instant::now() + outage;
    while Instant::now() < outage_end {
        std::thread::sleep(Duration::from_millis(250));
        let (g, v) = f.services();
        assert_eq!((g, &v), (frozen_gen, &frozen), "tables changed while away");
    }
    let (code, h) = f.admin_json("/healthz");
    assert_eq!(
        h["lastUpdated"], frozen_updated,
        "re-stamped while away: {h}"
    );
    assert_eq!(h["generation"], frozen_gen, "{h}");
    if short_period {
        assert_eq!(code, 503, "stale after 2 x the sync period: {h}");
    } else {
        // 2 x the default 30 s sync period is not over yet.
        assert_eq!(code, 200, "{h}");
    }
    // The last tables keep serving, including the Service deleted meanwhile.
    assert_eq!(f.whoami("a1", vip(3)), format!("a2 {a1}"));
    assert_eq!(f.whoami("a1", VIP_WEB).split(' ').next(), Some("b1"));

    f.fake.start();
    let recovered = view(&[("web", Some(b1)), ("s4", Some(b1)), ("s5", Some(a2))]);
    f.wait_services("resynced after the outage", &recovered);
    f.wait(Duration::from_secs(25), "source healthy again", |f| {
        let (_, v) = f.admin_json("/readyz");
        (v["unhealthySources"] == json!([])).then_some(())
    });
    let (code, h) = f.admin_json("/healthz");
    assert_eq!(code, 200, "{h}");
    assert_ne!(h["lastUpdated"], frozen_updated, "{h}");
    assert_eq!(f.whoami("a1", vip(5)), format!("a2 {a1}"));
    assert!(f.metric("kxdp_watch_errors_total{kind=\"services\"}") >= 1.0);

    // Every generation published from phase 4 on held one whole Service
    // set: the old one, the relisted one, or the resynced one.
    let seen = observer.finish();
    let seen = f.check("observer", seen);
    let allowed = [names(&moved), names(&relisted), names(&recovered)];
    for w in seen.windows(2) {
        assert!(w[1].0 > w[0].0, "generations go up: {seen:#?}");
    }
    for (g, v) in &seen {
        assert!(
            allowed.contains(&names(v)),
            "generation {g} holds a partial Service set: {v:#?}"
        );
    }
    assert!(
        seen.iter().any(|(_, v)| names(v) == names(&relisted)),
        "{seen:#?}"
    );
    // A clean exit (SIGTERM) with the API source running.
    assert_eq!(f.kxdp.stop(), Some(0), "{}", f.kxdp.log_text());
    let sets: Vec<String> = seen
        .iter()
        .map(|(g, v)| format!("{g}:{}", names(v).into_iter().collect::<Vec<_>>().join(",")))
        .collect();
    eprintln!(
        "{test}: ready after {t_ready:?}, done after {:?} (short sync period: {short_period}); \
         generations observed from the 410 on: {sets:?}",
        t0.elapsed()
    );
}
