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

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kxdp_dataplane::tables::TableSet;
use serde_json::json;
use tokio::sync::watch;

use crate::endpoints::{derive_endpoint_slices, SERVICE_NAME_LABEL};
use crate::metrics::Metrics;
use crate::model::ClusterState;
use crate::runner::{PublishEvent, PublishHook, Status, TableSlot};

/// Default admin address, like kube-proxy's healthz server.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:10256";

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
    let app = router(state);
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

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/tables", get(debug_tables))
        .with_state(state)
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
