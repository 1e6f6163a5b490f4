//! The Kubernetes API source: one kube-runtime watcher per kind
//! (Namespaces, Nodes, Pods, Services, EndpointSlices, NetworkPolicies) on
//! a tokio runtime in its own thread, plus Flannel-style node registration.
//!
//! Contract:
//! - Watchers use kube-runtime's list+watch state machine with bookmarks on
//!   and the default backoff (client-go's: 800 ms doubling to 30 s, reset
//!   after 120 s). With `page_size: None` (the default) lists are served
//!   from the API server's watch cache (`resourceVersion=0`,
//!   `resourceVersionMatch=NotOlderThan`); with a page size they are
//!   paginated with `limit`/`continue` (kube-rs then reads from etcd, which
//!   is the only way the API server paginates).
//! - A list (`Init`, `InitApply`*, `InitDone`) is buffered and sent as one
//!   [`SourceEvent::Relisted`], also after 410 Gone; an interrupted list is
//!   thrown away, so no half list reaches the runner.
//! - **Malformed objects.** kube-client decodes a list as one document and a
//!   watch event as one line; a typed watcher would fail a whole list (and
//!   retry it forever) or silently lose the event because of one bad object.
//!   So the watchers decode into [`RawObject`] (any JSON object; metadata
//!   read leniently) and convert each object on its own: a failure is
//!   logged, counted in `kxdp_decode_errors_total{kind}` and the object is
//!   treated as absent; the stream goes on.
//! - Objects are stripped before they are sent ([`strip`]): managedFields,
//!   resourceVersion and every annotation but Flannel's and the
//!   EndpointSlice trigger time; Pod spec down to nodeName, hostNetwork and
//!   containers' names and ports, Pod status down to phase, IPs and the
//!   Ready condition; Node down to podCIDR(s) and addresses; Namespace down
//!   to metadata. Heartbeat-only updates thus compare equal in the tracker.
//! - **Health** ([`SourceEvent::Health`]): the source is healthy while its
//!   view may be trusted as fresh, which is what lets the runner's periodic
//!   resync re-stamp `/healthz`. It turns unhealthy when a probe of
//!   `/version` fails (a hung or unreachable API server, noticed even when
//!   the watches are quiet) or when a watcher fails: its list fails, its
//!   watch cannot be (re)started, or the watch ends with an error event
//!   other than 410 Gone. It is healthy again only once the last probe
//!   succeeded **and every watcher that failed has completed a list
//!   (`InitDone`) since its last failure**. A probe answering is not
//!   enough: after an outage the watchers may still be waiting out their
//!   backoff (up to 30 s) with a view from before it.
//! - A failed watcher therefore always re-lists: kube-runtime would resume
//!   the watch from its last resourceVersion, but a resumed watch emits no
//!   event (bookmarks are swallowed), so its recovery could not be told
//!   from its backoff. The watcher is restarted instead, and its next
//!   `InitDone` is the proof. Not failures, health unchanged: a watch
//!   connection cut mid-stream (kube-runtime resumes it from its
//!   resourceVersion and the missed events are replayed; if the resume
//!   fails, that is a failure) and 410 Gone (kube-runtime re-lists; the
//!   relist is published whole like any other).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, Patch, PatchParams};
use kube::core::DynamicResourceScope;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, Event, ListSemantic};
use kube::{Client, Resource};
use kxdp_dataplane::tables::MacAddr;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{object_key, EventSender, Kind, Object, SourceEvent};
use crate::compile::{FLANNEL_BACKEND_DATA, FLANNEL_BACKEND_TYPE, FLANNEL_PUBLIC_IP};
use crate::metrics::Metrics;
use crate::tracker::LAST_CHANGE_TRIGGER_TIME;

/// Flannel's marker that the node's subnet comes from the Node object.
pub const FLANNEL_KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
/// Prefix of every Flannel annotation (kept when stripping).
pub const FLANNEL_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";
/// Name of this source in health reports.
pub const SOURCE_NAME: &str = "kubernetes";

/// Errors starting the Kubernetes source or registering the node.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("starting the Kubernetes source thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the Kubernetes source thread ended before it started")]
    ThreadGone,
    #[error("patching Node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// How to reach the API server.
#[derive(Clone, Debug)]
pub enum KubeConnect {
    /// The service account of the pod (`KUBERNETES_SERVICE_HOST`).
    InCluster,
    /// `--kubeconfig FILE` (its current context).
    Kubeconfig(PathBuf),
    /// A ready configuration (tests).
    Config(Box<kube::Config>),
}

/// Retry policy of the watchers.
#[derive(Clone, Debug, Default)]
pub enum WatchBackoff {
    /// kube-runtime's default (client-go's): 800 ms .. 30 s.
    #[default]
    Default,
    /// Exponential from `initial` doubling to `max` (tests).
    Exponential { initial: Duration, max: Duration },
}

/// Settings of the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// Kinds to watch (default: all six).
    pub kinds: Vec<Kind>,
    /// List page size; None lists from the watch cache unpaginated.
    pub page_size: Option<u32>,
    pub backoff: WatchBackoff,
    /// How often connectivity is probed while unhealthy or healthy.
    pub probe_interval: Duration,
    /// Patch this node's Flannel annotations at start (`--register-node`).
    pub register: Option<NodeRegistration>,
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        KubeSourceConfig {
            kinds: Kind::ALL.to_vec(),
            page_size: None,
            backoff: WatchBackoff::Default,
            probe_interval: Duration::from_secs(10),
            register: None,
        }
    }
}

/// What `--register-node` writes into the own Node's annotations, the way
/// Flannel's kube subnet manager does, so Flannel nodes and kxdp nodes find
/// each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRegistration {
    pub node_name: String,
    /// `flannel.alpha.coreos.com/public-ip`: the VTEP (underlay) address.
    pub public_ip: Ipv4Addr,
    /// `VtepMAC` in `backend-data`.
    pub vtep_mac: MacAddr,
    /// `VNI` in `backend-data` (Flannel: 1).
    pub vni: u32,
}

impl NodeRegistration {
    /// The annotations to set, as Flannel writes them.
    pub fn annotations(&self) -> Vec<(&'static str, String)> {
        let backend_data = serde_json::json!({
            "VNI": self.vni,
            "VtepMAC": self.vtep_mac.to_string(),
        });
        vec![
            (FLANNEL_BACKEND_DATA, backend_data.to_string()),
            (FLANNEL_BACKEND_TYPE, "vxlan".to_string()),
            (FLANNEL_KUBE_SUBNET_MANAGER, "true".to_string()),
            (FLANNEL_PUBLIC_IP, self.public_ip.to_string()),
        ]
    }
}

/// Merge-patch the Flannel annotations of `reg.node_name` (other annotations
/// are left alone).
pub async fn register_node(client: Client, reg: &NodeRegistration) -> Result<(), KubeError> {
    let nodes: Api<Node> = Api::all(client);
    let annotations: Map<String, Value> = reg
        .annotations()
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    nodes
        .patch(
            &reg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| KubeError::Register {
            node: reg.node_name.clone(),
            source,
        })?;
    tracing::info!(node = %reg.node_name, "node registered (Flannel annotations)");
    Ok(())
}

/// Resolve `connect` into a client configuration.
pub async fn client_config(connect: &KubeConnect) -> Result<kube::Config, KubeError> {
    match connect {
        KubeConnect::InCluster => kube::Config::incluster().map_err(KubeError::InCluster),
        KubeConnect::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })
        }
        KubeConnect::Config(c) => Ok((**c).clone()),
    }
}

/// The running source; dropping it stops the watchers.
pub struct KubeSource {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    client: Client,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

impl KubeSource {
    /// The client the watchers use.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Stop the watchers and wait for the thread.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("kubernetes source thread panicked");
            }
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Start the watchers (and the node registration, if configured) on a new
/// thread with its own tokio runtime. Returns once the client is built;
/// sync progress is reported through `events`.
pub fn start_kube_source(
    connect: KubeConnect,
    config: KubeSourceConfig,
    events: EventSender,
    metrics: Arc<Metrics>,
) -> Result<KubeSource, KubeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<Client, KubeError>>(1);
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kxdp-kube".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(KubeError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match client_config(&connect)
                    .await
                    .and_then(|c| Client::try_from(c).map_err(KubeError::Client))
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(client.clone()));
                run(client, config, events, metrics, shutdown_rx).await;
            });
        })
        .map_err(KubeError::Thread)?;
    let client = ready_rx.recv().map_err(|_| KubeError::ThreadGone)??;
    Ok(KubeSource {
        shutdown: Some(shutdown_tx),
        thread: Some(thread),
        client,
    })
}

async fn run(
    client: Client,
    config: KubeSourceConfig,
    events: EventSender,
    metrics: Arc<Metrics>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let health = Arc::new(HealthReporter::new(events.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for kind in config.kinds.iter().copied() {
        tasks.spawn(watch_kind(
            client.clone(),
            kind,
            config.clone(),
            events.clone(),
            metrics.clone(),
            health.clone(),
        ));
    }
    tasks.spawn(probe(client.clone(), config.probe_interval, health.clone()));
    if let Some(reg) = config.register.clone() {
        tasks.spawn(register_with_retry(
            client.clone(),
            reg,
            config.backoff.clone(),
        ));
    }
    // Runs until asked to stop (or the handle is dropped).
    let _ = shutdown.await;
    tasks.shutdown().await;
}

async fn register_with_retry(client: Client, reg: NodeRegistration, backoff: WatchBackoff) {
    let mut delays = make_backoff(&backoff);
    loop {
        match register_node(client.clone(), &reg).await {
            Ok(()) => return,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in = ?delay, "node registration failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Tracks whether the source's view may be stale (see the module docs).
struct HealthReporter {
    events: EventSender,
    inner: Mutex<HealthInner>,
}

struct HealthInner {
    /// What was last reported.
    healthy: bool,
    /// The last probe of `/version` failed.
    probe_failed: bool,
    /// Watchers that failed and have not completed a list since.
    relisting: BTreeSet<Kind>,
}

impl HealthReporter {
    fn new(events: EventSender) -> Self {
        HealthReporter {
            events,
            inner: Mutex::new(HealthInner {
                healthy: true,
                probe_failed: false,
                relisting: BTreeSet::new(),
            }),
        }
    }

    /// The watcher of `kind` failed; its view is stale until it re-listed.
    fn watch_failed(&self, kind: Kind) {
        self.update(|inner| {
            inner.relisting.insert(kind);
        });
    }

    /// The watcher of `kind` completed a list (and sent it).
    fn listed(&self, kind: Kind) {
        self.update(|inner| {
            inner.relisting.remove(&kind);
        });
    }

    fn probed(&self, ok: bool) {
        self.update(|inner| inner.probe_failed = !ok);
    }

    fn update(&self, change: impl FnOnce(&mut HealthInner)) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut inner);
        let healthy = !inner.probe_failed && inner.relisting.is_empty();
        if healthy != inner.healthy {
            inner.healthy = healthy;
            if !healthy {
                tracing::debug!(
                    relisting = ?inner.relisting,
                    probe_failed = inner.probe_failed,
                    "kubernetes source unhealthy"
                );
            }
            // Sent under the lock, so reports reach the runner in order.
            let _ = self.events.send(SourceEvent::Health {
                source: SOURCE_NAME,
                healthy,
            });
        }
    }
}

async fn probe(client: Client, interval: Duration, health: Arc<HealthReporter>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            client.apiserver_version(),
        )
        .await
        {
            Ok(Ok(_)) => health.probed(true),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "API server probe failed");
                health.probed(false);
            }
            Err(_) => {
                tracing::debug!("API server probe timed out");
                health.probed(false);
            }
        }
    }
}

/// A jittered exponential backoff implementing kube-runtime's [`Backoff`].
struct Exponential {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Iterator for Exponential {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next.saturating_mul(2)).min(self.max);
        Some(d)
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

fn make_backoff(b: &WatchBackoff) -> Box<dyn Backoff> {
    match b {
        WatchBackoff::Default => Box::new(DefaultBackoff::default()),
        WatchBackoff::Exponential { initial, max } => Box::new(Exponential {
            initial: *initial,
            max: *max,
            next: *initial,
        }),
    }
}

/// The API resource of `kind`.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Node => ApiResource::erase::<Node>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
    }
}

async fn watch_kind(
    client: Client,
    kind: Kind,
    config: KubeSourceConfig,
    events: EventSender,
    metrics: Arc<Metrics>,
    health: Arc<HealthReporter>,
) {
    let ar = api_resource(kind);
    let api: Api<RawObject> = Api::all_with(client, &ar);
    let mut wc = watcher::Config::default().list_semantic(ListSemantic::Any);
    wc.page_size = config.page_size;
    // kube-runtime's StreamBackoff, inlined: sleep after every error, reset
    // on every event; plus a restart (relist) after a failure.
    let mut backoff = make_backoff(&config.backoff);
    let mut buffer: Option<Vec<Object>> = None;
    let mut lists = 0u64;
    loop {
        let stream = watcher::watcher(api.clone(), wc.clone());
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if item.is_ok() {
                backoff.reset();
            }
            let sent = match item {
                Ok(Event::Init) => {
                    if lists > 0 || buffer.is_some() {
                        metrics.relist(kind);
                        tracing::info!(%kind, "relisting");
                    }
                    buffer = Some(Vec::new());
                    true
                }
                Ok(Event::InitApply(raw)) => {
                    if let Ok(obj) = decode_logged(kind, raw, &metrics) {
                        buffer.get_or_insert_with(Vec::new).push(obj);
                    }
                    true
                }
                Ok(Event::InitDone) => {
                    lists += 1;
                    let objects = buffer.take().unwrap_or_default();
                    tracing::debug!(%kind, objects = objects.len(), "list complete");
                    let sent = events.send(SourceEvent::Relisted { kind, objects }).is_ok();
                    // After the list, so the runner has it before health.
                    health.listed(kind);
                    sent
                }
                Ok(Event::Apply(raw)) => match decode_logged(kind, raw, &metrics) {
                    Ok(obj) => events.send(SourceEvent::Apply(obj)).is_ok(),
                    // Undecodable now: treat as absent.
                    Err(key) => events.send(SourceEvent::Delete { kind, key }).is_ok(),
                },
                Ok(Event::Delete(raw)) => {
                    let key = object_key(kind, &raw.metadata);
                    events.send(SourceEvent::Delete { kind, key }).is_ok()
                }
                Err(e) => {
                    metrics.watch_error(kind);
                    if is_gone(&e) {
                        tracing::info!(%kind, "watch expired (410 Gone); relisting");
                    } else if matches!(e, watcher::Error::WatchFailed(_)) {
                        tracing::info!(%kind, error = %e, "watch connection lost; resuming");
                    } else {
                        tracing::warn!(%kind, error = %e, "watch error; relisting");
                        health.watch_failed(kind);
                        // A new watcher after the backoff: Init .. InitDone,
                        // never a silent resume.
                        break;
                    }
                    tokio::time::sleep(next_delay(&mut backoff)).await;
                    true
                }
            };
            if !sent {
                // The runner is gone: nothing left to do.
                return;
            }
        }
        tokio::time::sleep(next_delay(&mut backoff)).await;
    }
}

fn next_delay(backoff: &mut Box<dyn Backoff>) -> Duration {
    backoff.next().unwrap_or(Duration::from_secs(30))
}

fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// Decode, logging and counting failures; on failure return the key.
fn decode_logged(
    kind: Kind,
    raw: RawObject,
    metrics: &Metrics,
) -> Result<Object, crate::model::ObjectKey> {
    let key = object_key(kind, &raw.metadata);
    decode(kind, raw).map_err(|e| {
        metrics.decode_error(kind);
        tracing::warn!(%kind, namespace = %key.0, name = %key.1, error = %e, "skipping undecodable object");
        key
    })
}

/// Strip and convert one raw object to its typed form.
pub fn decode(kind: Kind, raw: RawObject) -> Result<Object, serde_json::Error> {
    let mut value = raw.value;
    strip(kind, &mut value);
    if let Value::Object(m) = &mut value {
        // List items carry no apiVersion/kind; set them so the typed
        // decoder's checks see the right ones.
        let ar = api_resource(kind);
        m.insert("apiVersion".into(), Value::String(ar.api_version));
        m.insert("kind".into(), Value::String(ar.kind));
    }
    Ok(match kind {
        Kind::Namespace => Object::Namespace(serde_json::from_value(value)?),
        Kind::Node => Object::Node(serde_json::from_value(value)?),
        Kind::Pod => Object::Pod(serde_json::from_value(value)?),
        Kind::Service => Object::Service(serde_json::from_value(value)?),
        Kind::EndpointSlice => Object::EndpointSlice(serde_json::from_value(value)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(serde_json::from_value(value)?),
    })
}

/// Remove what the dataplane does not use from an object of `kind`, in its
/// JSON form (before typed decoding, so a malformed field that is stripped
/// cannot make the object undecodable).
pub fn strip(kind: Kind, value: &mut Value) {
    let Value::Object(obj) = value else {
        return;
    };
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        strip_metadata(meta);
    }
    match kind {
        Kind::Namespace => {
            obj.remove("spec");
            obj.remove("status");
        }
        Kind::Node => {
            keep_fields(obj.get_mut("spec"), &["podCIDR", "podCIDRs"]);
            keep_fields(obj.get_mut("status"), &["addresses"]);
        }
        Kind::Pod => {
            if let Some(spec) = obj.get_mut("spec") {
                keep_fields(Some(spec), &["nodeName", "hostNetwork", "containers"]);
                if let Some(Value::Array(containers)) = spec.get_mut("containers") {
                    for c in containers {
                        keep_fields(Some(c), &["name", "ports"]);
                    }
                }
            }
            if let Some(status) = obj.get_mut("status") {
                keep_fields(
                    Some(status),
                    &[
                        "phase",
                        "podIP",
                        "podIPs",
                        "hostIP",
                        "hostIPs",
                        "conditions",
                    ],
                );
                if let Some(Value::Array(conds)) = status.get_mut("conditions") {
                    conds.retain(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
                    for c in conds {
                        keep_fields(Some(c), &["type", "status"]);
                    }
                }
            }
        }
        Kind::Service | Kind::EndpointSlice | Kind::NetworkPolicy => {}
    }
}

fn strip_metadata(meta: &mut Map<String, Value>) {
    meta.retain(|k, _| {
        matches!(
            k.as_str(),
            "name" | "namespace" | "uid" | "labels" | "annotations" | "deletionTimestamp"
        )
    });
    if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
        ann.retain(|k, _| {
            k.starts_with(FLANNEL_ANNOTATION_PREFIX) || k == LAST_CHANGE_TRIGGER_TIME
        });
        if ann.is_empty() {
            meta.remove("annotations");
        }
    }
}

fn keep_fields(v: Option<&mut Value>, keep: &[&str]) {
    if let Some(Value::Object(m)) = v {
        m.retain(|k, _| keep.contains(&k.as_str()));
    }
}

/// Any Kubernetes object as JSON, with its metadata read leniently: a
/// watcher over `RawObject` never fails a list or loses an event because
/// one object does not fit its schema.
#[derive(Clone, Debug)]
pub struct RawObject {
    pub metadata: ObjectMeta,
    /// The whole object as received.
    pub value: Value,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let metadata = lenient_metadata(value.get("metadata"));
        Ok(RawObject { metadata, value })
    }
}

/// `ObjectMeta` if it decodes, else the string fields the watcher needs.
fn lenient_metadata(v: Option<&Value>) -> ObjectMeta {
    let Some(v) = v else {
        return ObjectMeta::default();
    };
    if let Ok(m) = ObjectMeta::deserialize(v) {
        return m;
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    ObjectMeta {
        name: s("name"),
        namespace: s("namespace"),
        resource_version: s("resourceVersion"),
        uid: s("uid"),
        ..ObjectMeta::default()
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_is_stripped_to_what_the_dataplane_reads() {
        let raw: RawObject = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "ns", "resourceVersion": "42",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubelet"}]
            },
            "spec": {
                "nodeName": "node-a",
                "serviceAccountName": "default",
                "volumes": [{"name": "v"}],
                "containers": [{"name": "c", "image": "nginx", "ports": [{"name": "http", "containerPort": 80}]}]
            },
            "status": {
                "phase": "Running", "podIP": "10.244.1.2", "startTime": "2024-01-01T00:00:00Z",
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"},
                    {"type": "PodScheduled", "status": "True"}
                ]
            }
        }))
        .unwrap();
        let Object::Pod(pod) = decode(Kind::Pod, raw).unwrap() else {
            panic!("not a pod");
        };
        assert_eq!(pod.metadata.resource_version, None);
        assert_eq!(pod.metadata.managed_fields, None);
        assert_eq!(pod.metadata.annotations, None);
        assert_eq!(pod.metadata.labels.unwrap()["app"], "web");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.service_account_name, None);
        assert_eq!(spec.volumes, None);
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            80
        );
        let status = pod.status.unwrap();
        assert_eq!(status.start_time, None);
        let conds = status.conditions.unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].type_, "Ready");
        assert_eq!(conds[0].last_transition_time, None);
    }

    #[test]
    fn node_keeps_flannel_annotations_and_addresses_only() {
        let raw: RawObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "annotations": {
                "flannel.alpha.coreos.com/public-ip": "192.168.50.1",
                "node.alpha.kubernetes.io/ttl": "0"
            }},
            "spec": {"podCIDR": "10.244.1.0/24", "providerID": "x"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}],
                       "images": [{"names": ["a"], "sizeBytes": 1}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let Object::Node(node) = decode(Kind::Node, raw).unwrap() else {
            panic!("not a node");
        };
        let ann = node.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 1);
        assert!(ann.contains_key(FLANNEL_PUBLIC_IP));
        assert_eq!(node.spec.unwrap().provider_id, None);
        let status = node.status.unwrap();
        assert_eq!(status.images, None);
        assert_eq!(status.conditions, None);
        assert_eq!(status.addresses.unwrap()[0].address, "192.168.50.1");
    }

    #[test]
    fn malformed_object_keeps_its_key_and_fails_alone() {
        let raw: RawObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bad", "namespace": "ns", "resourceVersion": "7", "labels": 5},
            "spec": {"ports": [{"port": "not-a-number"}]}
        }))
        .unwrap();
        assert_eq!(raw.metadata.name.as_deref(), Some("bad"));
        assert_eq!(raw.metadata.resource_version.as_deref(), Some("7"));
        assert!(decode(Kind::Service, raw).is_err());
    }

    fn health_reports(rx: &crate::source::EventReceiver) -> Vec<bool> {
        rx.try_iter()
            .map(|ev| match ev {
                SourceEvent::Health { healthy, .. } => healthy,
                other => panic!("unexpected event {other:?}"),
            })
            .collect()
    }

    #[test]
    fn health_returns_once_probe_ok_and_every_failed_watcher_listed() {
        let (tx, rx) = crate::source::channel();
        let h = HealthReporter::new(tx);
        // An outage: the probe and two watchers fail.
        h.probed(false);
        h.watch_failed(Kind::Service);
        h.watch_failed(Kind::EndpointSlice);
        assert_eq!(health_reports(&rx), vec![false]);
        // The API server answers again, the watchers are still backing off.
        h.probed(true);
        h.listed(Kind::Service);
        // A watcher that did not fail listing (a 410 relist) changes nothing.
        h.listed(Kind::Pod);
        assert_eq!(health_reports(&rx), Vec::<bool>::new());
        h.listed(Kind::EndpointSlice);
        assert_eq!(health_reports(&rx), vec![true]);
        // A watcher failing alone, while probes succeed.
        h.watch_failed(Kind::Node);
        h.probed(true);
        assert_eq!(health_reports(&rx), vec![false]);
        h.listed(Kind::Node);
        assert_eq!(health_reports(&rx), vec![true]);
        // The probe failing alone: its success is enough.
        h.probed(false);
        h.probed(true);
        assert_eq!(health_reports(&rx), vec![false, true]);
    }

    #[test]
    fn registration_annotations_match_flannel() {
        let reg = NodeRegistration {
            node_name: "node-a".into(),
            public_ip: Ipv4Addr::new(192, 168, 50, 1),
            vtep_mac: "aa:bb:cc:dd:ee:01".parse().unwrap(),
            vni: 1,
        };
        let ann = reg.annotations();
        assert!(ann.contains(&(
            FLANNEL_BACKEND_DATA,
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}"#.to_string()
        )));
        assert!(ann.contains(&(FLANNEL_BACKEND_TYPE, "vxlan".to_string())));
        assert!(ann.contains(&(FLANNEL_PUBLIC_IP, "192.168.50.1".to_string())));
        assert!(ann.contains(&(FLANNEL_KUBE_SUBNET_MANAGER, "true".to_string())));
    }
}
