//! The admin HTTP API (default 127.0.0.1:10256, kube-proxy's healthz port)
//! and the per-Service `healthCheckNodePort` servers.
//!
//! Endpoints:
//! - `GET /healthz` — kube-proxy's contract: 200 while tables were published
//!   less than 2 × the maximum sync interval ago (before the first publish:
//!   since start), 503 otherwise. Body
//!   `{"lastUpdated": RFC 3339 | null, "currentTime": RFC 3339, "generation": N}`.
//!   Load balancers probe it to take a node whose programming stalled out of
//!   rotation.
//! - `GET /readyz` — 200 once every source reached its initial sync and the
//!   first generation is published; 503 with what is missing otherwise.
//! - `GET /metrics` — Prometheus/OpenMetrics text ([`crate::metrics`]).
//! - `GET /debug/tables` — the current generation as JSON (503 before one).
//! - `GET /debug/services` — every Service port with its frontends (which
//!   `/debug/tables` leaves out) and endpoints: `{"generation": N,
//!   "services": [{"namespace", "name", "port_name", "proto", "port",
//!   "node_port", "frontends": [{"ip", "port", "kind"}], "endpoints":
//!   [{"ip", "port", "local"}], "has_endpoints"}]}`, sorted by name.
//! - `GET /debug/policies` — every local pod's policy, per direction, as
//!   `PolicyTable::explain_all` gives it (the format `kxdp trace` prints):
//!   `{"generation": N, "policies": [PolicyExplanation, ...]}`.
//! - `GET /debug/conntrack?limit=N` — live (unexpired) conntrack entries,
//!   at most `limit` (default [`DEFAULT_CONNTRACK_LIMIT`], capped at
//!   [`MAX_CONNTRACK_LIMIT`]): `{"count": live entries, "capacity": N,
//!   "truncated": bool, "entries": [{"original": tuple, "reply": tuple,
//!   "state", "flags": [..], "service_port", "policy_generation",
//!   "expires_in_ms"}]}`; a tuple is `{"src","dst","sport","dport","proto"}`.
//! - `GET /debug/stats` — per-worker counters: `{"now_ns": N, "workers":
//!   [{"worker", "published_ns", "rx", "forwarded": {"to-pod", "vxlan",
//!   "uplink", "reply", "to-host"}, "drops": {reason name: N}, "loop":
//!   {every `WorkerCounters` field: "handoff_sent", "handoff_received",
//!   "handoff_full", "neighbour_parked", ...}, "free_frames", "ports":
//!   [{"ifindex", "ingress", counters..}]}]}`, one entry per worker.
//!   Times are on the dataplane's monotonic clock (rates come from the
//!   difference of two samples' `published_ns`).
//!
//! The last two read the live dataplane through a [`DataplaneView`] given
//! to [`start_admin_with`]; without one (or before the daemon filled it)
//! they answer 503.
//!
//! Health check node ports (eTP=Local LoadBalancer Services): after every
//! publish [`HealthChecks::sync`] opens one listener per
//! `healthCheckNodePort` and closes the ones no longer wanted. Each answers
//! any path like kube-proxy: 200 when the node has ready local endpoints for
//! the Service and the proxy itself is healthy, 503 otherwise, with body
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":bool}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use axum::extract::Query;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kxdp_dataplane::conntrack::{Conntrack, CtEntryView, CtMeta};
use kxdp_dataplane::tables::TableSet;
use kxdp_dataplane::worker::{monotonic_ns, SharedStats, WorkerSnapshot};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::endpoints::{derive_endpoint_slices, SERVICE_NAME_LABEL};
use crate::metrics::Metrics;
use crate::model::ClusterState;
use crate::runner::{PublishEvent, PublishHook, Status, TableSlot};

/// Default admin address, like kube-proxy's healthz server.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:10256";

/// Entries `/debug/conntrack` returns without `?limit=`.
pub const DEFAULT_CONNTRACK_LIMIT: usize = 1000;
/// Most entries `/debug/conntrack` returns whatever `?limit=` asks.
pub const MAX_CONNTRACK_LIMIT: usize = 100_000;

/// The live dataplane the debug endpoints read: the conntrack table and the
/// workers' statistics. Cheap to clone; the daemon fills it once its
/// dataplane exists (the admin server starts before).
#[derive(Clone, Default)]
pub struct DataplaneView {
    inner: Arc<Mutex<DataplaneParts>>,
}

#[derive(Default)]
struct DataplaneParts {
    conntrack: Option<Arc<Conntrack>>,
    workers: Vec<Arc<SharedStats>>,
}

impl std::fmt::Debug for DataplaneView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneView").finish_non_exhaustive()
    }
}

impl DataplaneView {
    /// An empty view (debug endpoints answer 503 until filled).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DataplaneParts> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The conntrack table `/debug/conntrack` lists.
    pub fn set_conntrack(&self, ct: Arc<Conntrack>) {
        self.lock().conntrack = Some(ct);
    }

    /// The workers whose snapshots `/debug/stats` reports, in worker order.
    pub fn set_workers(&self, workers: Vec<Arc<SharedStats>>) {
        self.lock().workers = workers;
    }

    fn conntrack(&self) -> Option<Arc<Conntrack>> {
        self.lock().conntrack.clone()
    }

    fn snapshots(&self) -> Vec<Arc<WorkerSnapshot>> {
        self.lock().workers.iter().map(|w| w.load()).collect()
    }
}

/// Names of the [`CtMeta`] flag bits, for JSON.
const CT_FLAGS: [(u16, &str); 5] = [
    (CtMeta::DNAT, "dnat"),
    (CtMeta::SNAT, "snat"),
    (CtMeta::HAIRPIN, "hairpin"),
    (CtMeta::FROM_UPLINK, "from-uplink"),
    (CtMeta::REMOTE, "remote"),
];

/// One conntrack entry as `/debug/conntrack` shows it.
pub fn conntrack_entry_json(e: &CtEntryView, now_ns: u64) -> serde_json::Value {
    let tuple = |k: &kxdp_dataplane::conntrack::FlowKey| {
        json!({
            "src": k.src.to_string(),
            "dst": k.dst.to_string(),
            "sport": k.sport,
            "dport": k.dport,
            "proto": k.proto,
        })
    };
    let flags: Vec<&str> = CT_FLAGS
        .iter()
        .filter(|(bit, _)| e.meta.has(*bit))
        .map(|(_, n)| *n)
        .collect();
    json!({
        "original": tuple(&e.original),
        "reply": tuple(&e.reply),
        "state": e.state.name(),
        "flags": flags,
        "service_port": (e.meta.service_port != CtMeta::NO_SERVICE).then_some(e.meta.service_port),
        "policy_generation": e.meta.policy_generation,
        "expires_in_ms": e.expires_ns().saturating_sub(now_ns) / 1_000_000,
    })
}

/// The `/debug/conntrack` body: at most `limit` live entries of `ct`.
pub fn conntrack_json(ct: &Conntrack, limit: usize, now_ns: u64) -> serde_json::Value {
    let mut entries = Vec::new();
    let mut count = 0usize;
    for e in ct.iter().filter(|e| !e.is_expired(now_ns)) {
        count += 1;
        if entries.len() < limit {
            entries.push(conntrack_entry_json(&e, now_ns));
        }
    }
    json!({
        "count": count,
        "capacity": ct.capacity(),
        "truncated": count > entries.len(),
        "entries": entries,
    })
}

/// One worker's snapshot as `/debug/stats` shows it.
pub fn worker_stats_json(s: &WorkerSnapshot) -> serde_json::Value {
    let p = &s.pipeline;
    let drops: serde_json::Map<String, serde_json::Value> = p
        .drops
        .nonzero()
        .map(|(r, n)| (r.name().to_owned(), json!(n)))
        .collect();
    let c = &s.counters;
    let ports: Vec<serde_json::Value> = s
        .ports
        .iter()
        .map(|ps| {
            let st = &ps.stats;
            json!({
                "ifindex": ps.ifindex,
                "ingress": match ps.ingress {
                    kxdp_dataplane::pipeline::Ingress::Uplink => "uplink",
                    kxdp_dataplane::pipeline::Ingress::Pod { .. } => "pod",
                },
                "rx_packets": st.rx_packets,
                "rx_bytes": st.rx_bytes,
                "tx_packets": st.tx_packets,
                "tx_bytes": st.tx_bytes,
                "tx_dropped": st.tx_dropped,
                "tx_completed": st.tx_completed,
                "rx_ring_full": st.rx_ring_full,
                "fill_ring_empty": st.fill_ring_empty,
                "rx_dropped": st.rx_dropped,
                "pool_empty": st.pool_empty,
                "wakeups": st.wakeups,
                "busy_polls": st.busy_polls,
                "busy_poll_unavailable": st.busy_poll_unavailable,
            })
        })
        .collect();
    json!({
        "worker": s.worker,
        "published_ns": s.published_ns,
        "rx": p.rx,
        "forwarded": {
            "to-pod": p.forwarded_pod,
            "vxlan": p.forwarded_vxlan,
            "uplink": p.forwarded_uplink,
            "reply": p.replies,
            "to-host": p.to_host,
        },
        "drops": drops,
        // Every loop counter by its field name (hand-offs between
        // workers, neighbour requests and parked frames included).
        "loop": c
            .named()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "free_frames": s.free_frames,
        "ports": ports,
    })
}

/// The `/debug/services` body for `t`.
pub fn services_json(t: &TableSet) -> serde_json::Value {
    let mut frontends: BTreeMap<u32, Vec<serde_json::Value>> = BTreeMap::new();
    let mut keys: Vec<_> = t.services.frontends().collect();
    keys.sort_by_key(|(k, _)| (k.ip, k.port, k.proto.name()));
    for (k, f) in keys {
        frontends.entry(f.service_port).or_default().push(json!({
            "ip": k.ip.to_string(),
            "port": k.port,
            "kind": f.kind,
        }));
    }
    let mut services: Vec<(String, serde_json::Value)> = t
        .services
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let endpoints: Vec<serde_json::Value> = p
                .cluster
                .backends
                .iter()
                .map(|b| json!({"ip": b.ip.to_string(), "port": b.port, "local": b.local}))
                .collect();
            let fe = u32::try_from(i)
                .ok()
                .and_then(|i| frontends.remove(&i))
                .unwrap_or_default();
            (
                p.display_name(),
                json!({
                    "namespace": &*p.namespace,
                    "name": &*p.name,
                    "port_name": &*p.port_name,
                    "proto": p.proto.name(),
                    "port": p.port,
                    "node_port": p.node_port,
                    "frontends": fe,
                    "endpoints": endpoints,
                    "has_endpoints": p.has_endpoints,
                }),
            )
        })
        .collect();
    services.sort_by(|a, b| a.0.cmp(&b.0));
    json!({
        "generation": t.generation,
        "services": services.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })
}

/// Errors starting the admin server or a health check server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding admin server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the admin server thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub tables: Arc<TableSlot>,
}

/// The running admin server; dropping it stops it.
pub struct AdminServer {
    local_addr: SocketAddr,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    health_checks: HealthChecks,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The health check node port servers, to drive from a publish hook.
    pub fn health_checks(&self) -> HealthChecks {
        self.health_checks.clone()
    }

    /// Stop serving and wait for the thread.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("admin server thread panicked");
            }
        }
    }

    fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Bind `addr` and serve the admin API on a new thread. Health check
/// servers (see [`AdminServer::health_checks`]) bind on `health_check_ip`
/// (kube-proxy: every node address, i.e. 0.0.0.0).
pub fn start_admin(
    addr: SocketAddr,
    health_check_ip: IpAddr,
    state: AdminState,
) -> Result<AdminServer, AdminError> {
    start_admin_with(addr, health_check_ip, state, DataplaneView::new())
}

/// [`start_admin`] with the live dataplane behind `/debug/conntrack` and
/// `/debug/stats`.
pub fn start_admin_with(
    addr: SocketAddr,
    health_check_ip: IpAddr,
    state: AdminState,
    dataplane: DataplaneView,
) -> Result<AdminServer, AdminError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AdminError::Bind { addr, source })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Thread)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let health_checks = HealthChecks {
        inner: Arc::new(Mutex::new(HcInner {
            handle: rt.handle().clone(),
            ip: health_check_ip,
            servers: HashMap::new(),
            shutdown: shutdown_rx.clone(),
        })),
        status: state.status.clone(),
    };
    let app = router(state, dataplane);
    let thread = std::thread::Builder::new()
        .name("kxdp-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener");
                        return;
                    }
                };
                let mut stop = shutdown_rx;
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "admin server failed");
                }
            });
        })
        .map_err(AdminError::Thread)?;
    tracing::info!(addr = %local_addr, "admin server listening");
    Ok(AdminServer {
        local_addr,
        shutdown: Some(shutdown_tx),
        thread: Some(thread),
        health_checks,
    })
}

fn router(state: AdminState, dataplane: DataplaneView) -> Router {
    let live = Router::new()
        .route("/debug/conntrack", get(debug_conntrack))
        .route("/debug/stats", get(debug_stats))
        .with_state(dataplane);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/tables", get(debug_tables))
        .route("/debug/policies", get(debug_policies))
        .route("/debug/services", get(debug_services))
        .with_state(state)
        .merge(live)
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

fn unavailable(what: &str) -> Response {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": format!("{what} not available yet") }),
    )
}

async fn debug_conntrack(State(dp): State<DataplaneView>, Query(q): Query<LimitQuery>) -> Response {
    let Some(ct) = dp.conntrack() else {
        return unavailable("conntrack");
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_CONNTRACK_LIMIT)
        .min(MAX_CONNTRACK_LIMIT);
    // A walk over every slot: keep it off the runtime.
    let body =
        tokio::task::spawn_blocking(move || conntrack_json(&ct, limit, monotonic_ns())).await;
    match body {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
    }
}

async fn debug_stats(State(dp): State<DataplaneView>) -> Response {
    let snaps = dp.snapshots();
    if snaps.is_empty() {
        return unavailable("worker statistics");
    }
    let workers: Vec<serde_json::Value> = snaps.iter().map(|s| worker_stats_json(s)).collect();
    json_response(
        StatusCode::OK,
        &json!({ "now_ns": monotonic_ns(), "workers": workers }),
    )
}

async fn debug_services(State(s): State<AdminState>) -> Response {
    let Some(tables) = s.tables.current() else {
        return unavailable("tables");
    };
    match tokio::task::spawn_blocking(move || services_json(&tables)).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
    }
}

async fn debug_policies(State(s): State<AdminState>) -> Response {
    let Some(tables) = s.tables.current() else {
        return unavailable("tables");
    };
    let body = serde_json::to_value(tables.policy.explain_all());
    match body {
        Ok(policies) => json_response(
            StatusCode::OK,
            &json!({ "generation": tables.generation, "policies": policies }),
        ),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
    }
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (code, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn healthz(State(s): State<AdminState>) -> Response {
    let h = s.status.health();
    let code = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        code,
        &json!({
            "lastUpdated": h.last_updated.map(rfc3339),
            "currentTime": rfc3339(h.current_time),
            "generation": h.generation,
        }),
    )
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let r = s.status.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let waiting: Vec<&str> = r.waiting_for.iter().map(|k| k.plural()).collect();
    json_response(
        code,
        &json!({
            "ready": r.ready,
            "waitingFor": waiting,
            "published": r.published,
            "unhealthySources": r.unhealthy_sources,
            "lastError": s.status.last_error(),
        }),
    )
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut resp = s.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn debug_tables(State(s): State<AdminState>) -> Response {
    let Some(tables) = s.tables.current() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "no tables published yet"}),
        );
    };
    // Serialising 300k endpoints takes a while: keep it off the runtime.
    let body = tokio::task::spawn_blocking(move || serde_json::to_string(&*tables)).await;
    match body {
        Ok(Ok(text)) => {
            let mut resp = text.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Ok(Err(e)) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
    }
}

/// Add the ready endpoints on `node` of `slice` (if it belongs to one of
/// `services`) to `local`.
fn count_local(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
    node: &str,
    services: &HashSet<(&str, &str)>,
    local: &mut HashMap<(String, String), HashSet<String>>,
    seen: &mut HashSet<(String, String)>,
) {
    let ns = slice.metadata.namespace.clone().unwrap_or_default();
    let Some(svc) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        return;
    };
    if !services.contains(&(ns.as_str(), svc.as_str())) {
        return;
    }
    let key = (ns, svc.clone());
    seen.insert(key.clone());
    let ips = local.entry(key).or_default();
    for ep in &slice.endpoints {
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if ready && ep.node_name.as_deref() == Some(node) {
            ips.extend(ep.addresses.iter().cloned());
        }
    }
}

/// One Service with a health check node port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckService {
    pub namespace: String,
    pub name: String,
    /// Distinct ready endpoint addresses of the Service on this node.
    pub local_endpoints: usize,
}

/// The health check node ports wanted by `tables`, with their local
/// endpoint counts from `state` (kube-proxy counts ready local endpoints;
/// terminating ones do not keep a load balancer sending new traffic).
pub fn health_check_services(
    state: &ClusterState,
    tables: &TableSet,
) -> BTreeMap<u16, HealthCheckService> {
    let mut wanted: BTreeMap<u16, (String, String)> = BTreeMap::new();
    for p in &tables.services.ports {
        if let Some(port) = p.health_check_node_port {
            wanted
                .entry(port)
                .or_insert_with(|| (p.namespace.to_string(), p.name.to_string()));
        }
    }
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let node = tables.node.node_name.as_str();
    let services: HashSet<(&str, &str)> = wanted
        .values()
        .map(|(ns, n)| (ns.as_str(), n.as_str()))
        .collect();
    let mut local: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for slice in state.endpoint_slices.values() {
        count_local(slice, node, &services, &mut local, &mut seen);
    }
    // Selector Services without slices (manifests): derive like the compiler.
    if wanted
        .values()
        .any(|k| !seen.contains(&(k.0.clone(), k.1.clone())))
    {
        for slice in derive_endpoint_slices(state) {
            count_local(&slice, node, &services, &mut local, &mut seen);
        }
    }
    wanted
        .into_iter()
        .map(|(port, (namespace, name))| {
            let local_endpoints = local
                .get(&(namespace.clone(), name.clone()))
                .map_or(0, HashSet::len);
            (
                port,
                HealthCheckService {
                    namespace,
                    name,
                    local_endpoints,
                },
            )
        })
        .collect()
}

struct HcServer {
    info: watch::Sender<HealthCheckService>,
    task: tokio::task::JoinHandle<()>,
}

struct HcInner {
    handle: tokio::runtime::Handle,
    ip: IpAddr,
    servers: HashMap<u16, HcServer>,
    shutdown: watch::Receiver<bool>,
}

/// The set of health check node port servers (cheap to clone).
#[derive(Clone)]
pub struct HealthChecks {
    inner: Arc<Mutex<HcInner>>,
    status: Arc<Status>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("ports", &self.ports())
            .finish()
    }
}

impl HealthChecks {
    /// Make the listening servers match `wanted`: open new ports (a port
    /// that cannot be bound is logged and retried at the next sync), update
    /// counts, close ports no longer wanted.
    pub fn sync(&self, wanted: &BTreeMap<u16, HealthCheckService>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.servers.retain(|port, server| {
            let keep = wanted.contains_key(port);
            if !keep {
                server.task.abort();
                tracing::info!(port, "health check server closed");
            }
            keep
        });
        for (port, svc) in wanted {
            if let Some(server) = inner.servers.get(port) {
                server.info.send_if_modified(|cur| {
                    let changed = cur != svc;
                    if changed {
                        *cur = svc.clone();
                    }
                    changed
                });
                continue;
            }
            let addr = SocketAddr::new(inner.ip, *port);
            let listener = match std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, service = %format!("{}/{}", svc.namespace, svc.name), "cannot bind health check port");
                    continue;
                }
            };
            let (info, info_rx) = watch::channel(svc.clone());
            let app = Router::new()
                .fallback(hc_handler)
                .with_state((info_rx, self.status.clone()));
            let mut stop = inner.shutdown.clone();
            let task = inner.handle.spawn(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "health check listener");
                        return;
                    }
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::warn!(%addr, error = %e, "health check server failed");
                }
            });
            tracing::info!(%addr, service = %format!("{}/{}", svc.namespace, svc.name), "health check server listening");
            inner.servers.insert(*port, HcServer { info, task });
        }
    }

    /// The ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ports: Vec<u16> = inner.servers.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// A runner publish hook keeping these servers in step with the tables.
    pub fn publish_hook(&self) -> PublishHook {
        let hc = self.clone();
        Box::new(move |ev: &PublishEvent<'_>| {
            hc.sync(&health_check_services(ev.state, ev.tables));
        })
    }
}

type HcState = (watch::Receiver<HealthCheckService>, Arc<Status>);

async fn hc_handler(State((info, status)): State<HcState>) -> Response {
    let svc = info.borrow().clone();
    let proxy_healthy = status.health().healthy;
    let code = if svc.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        code,
        &json!({
            "service": {"namespace": svc.namespace, "name": svc.name},
            "localEndpoints": svc.local_endpoints,
            "serviceProxyHealthy": proxy_healthy,
        }),
    )
}
