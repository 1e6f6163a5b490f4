//! A fake Kubernetes API server speaking the real HTTP list/watch protocol
//! for the six kinds kxdp watches, so tests drive kube-rs's real `Client`
//! and watchers against it: in-process (`control/tests/kube_*.rs`) or from
//! another process (`kxdp run --kubeconfig`, `tests/e2e_kube_source.rs`).
//!
//! What it implements (api-concepts "Efficient detection of changes",
//! "Retrieving large results sets in chunks"):
//! - `GET <collection>`: a list `{kind: <Kind>List, metadata:
//!   {resourceVersion, continue}, items}`; with `limit` it pages, the
//!   `continue` token pins the snapshot taken by the first page; an expired
//!   token answers HTTP 410 with a `Status` of reason `Expired`. Other list
//!   parameters (`resourceVersion=0`, `resourceVersionMatch`) are accepted
//!   and ignored: every list is the current state.
//! - `GET <collection>?watch=true&resourceVersion=N`: newline-delimited
//!   `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}` events
//!   after N; `allowWatchBookmarks=true` adds BOOKMARK events carrying the
//!   current resourceVersion; a resourceVersion older than the compacted
//!   history gets an ERROR event with a `Status` of code 410 (what the API
//!   server sends for "too old resource version").
//! - `PATCH /api/v1/nodes/<name>` with a JSON merge patch (RFC 7386), the
//!   change also delivered to Node watches.
//! - `GET /version`.
//!
//! Faults: [`FakeApiServer::inject_gone`], [`FakeApiServer::drop_watches`]
//! (connections cut mid-stream), [`FakeApiServer::expire_continue_tokens`],
//! [`FakeApiServer::fail_next_continues`], [`FakeApiServer::set_list_delay`],
//! [`FakeApiServer::hold_lists`] (lists of one kind wait until released),
//! [`FakeApiServer::stop`]/[`FakeApiServer::start`] (the server goes away —
//! connections refused, every open connection closed — and comes back on
//! the same address), and raw objects that do not fit the schema
//! ([`FakeApiServer::apply`] takes any JSON).
//!
//! # Listening from another network namespace
//!
//! Each serving period runs on its own tokio runtime, so [`FakeApiServer::stop`]
//! closes every connection, not only the listener. The listening socket is
//! made by a [`Binder`]: by default a plain bind in the caller's network
//! namespace; [`FakeApiServer::start_with_binder`] takes one that binds
//! elsewhere (a socket belongs to the namespace of the thread that created
//! it, so a binder that creates it on a thread inside a test namespace makes
//! the server reachable on that namespace's loopback, where a `kxdp run`
//! started with `ip netns exec` can reach it). The binder is called again
//! by [`FakeApiServer::start`] after a stop. [`FakeApiServer::write_kubeconfig`]
//! writes a kubeconfig pointing at the server.
//!
//! Test-only code: misuse (an object without a name, a port that stays
//! taken) panics with a message.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::channel::mpsc;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio::sync::watch;

/// The six collections: (plural, path, kind, apiVersion, namespaced).
pub const RESOURCES: [(&str, &str, &str, &str, bool); 6] = [
    ("namespaces", "/api/v1/namespaces", "Namespace", "v1", false),
    ("nodes", "/api/v1/nodes", "Node", "v1", false),
    ("pods", "/api/v1/pods", "Pod", "v1", true),
    ("services", "/api/v1/services", "Service", "v1", true),
    (
        "endpointslices",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
        true,
    ),
    (
        "networkpolicies",
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
        true,
    ),
];

fn resource_by_path(path: &str) -> Option<(&'static str, &'static str, &'static str)> {
    RESOURCES
        .iter()
        .find(|r| r.1 == path)
        .map(|r| (r.0, r.2, r.3))
}

fn kind_of(plural: &str) -> (&'static str, &'static str) {
    RESOURCES
        .iter()
        .find(|r| r.0 == plural)
        .map_or(("Unknown", "v1"), |r| (r.2, r.3))
}

#[derive(Clone, Debug)]
struct HistEvent {
    rv: u64,
    plural: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (plural, namespace, name) -> object (with resourceVersion).
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<HistEvent>,
    /// Watches from a resourceVersion below this get 410 (the revision
    /// of the last compaction).
    compacted: u64,
    /// Per plural: watches from a resourceVersion below this get 410
    /// ([`FakeApiServer::inject_gone`]).
    gone_below: BTreeMap<String, u64>,
    /// continue token id -> (list rv, snapshot items).
    lists: HashMap<u64, (u64, Vec<Value>)>,
    next_list: u64,
    /// Every request's path?query, for assertions.
    requests: Vec<String>,
    /// Fail this many upcoming `continue` requests with 410 Expired.
    fail_continues: usize,
    /// Continue requests failed so far.
    failed_continues: usize,
    /// Delay before answering each list page (slow API server).
    list_delay: Duration,
    /// Plurals whose list requests wait until released.
    held: BTreeSet<String>,
    /// List requests waiting on a hold right now.
    held_waiting: usize,
}

struct Shared {
    store: Mutex<Store>,
    /// Latest resourceVersion (wakes watches).
    changed: watch::Sender<u64>,
    /// Bumped to cut every open watch connection.
    cut: watch::Sender<u64>,
    /// Per plural: bumped to send 410 on open watches of that plural.
    gone: watch::Sender<BTreeMap<String, u64>>,
    /// Bumped when a hold is released (wakes held lists).
    released: watch::Sender<u64>,
    bookmark_every: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes the listening socket for an address (see the module docs).
pub type Binder = Arc<dyn Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync>;

/// The fake server; serves on its own runtime's thread.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    binder: Binder,
    /// The runtime of the current serving period (None while stopped).
    serving: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    /// Start on 127.0.0.1 with an ephemeral port.
    pub fn start_new() -> Self {
        let binder: Binder = Arc::new(std::net::TcpListener::bind);
        Self::start_with_binder(SocketAddr::from(([127, 0, 0, 1], 0)), binder)
    }

    /// Start on `addr` (port 0: ephemeral), with the listening socket made
    /// by `binder` (e.g. inside another network namespace).
    pub fn start_with_binder(addr: SocketAddr, binder: Binder) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Store::default()
            }),
            changed: watch::channel(100).0,
            cut: watch::channel(0).0,
            gone: watch::channel(BTreeMap::new()).0,
            released: watch::channel(0).0,
            bookmark_every: Duration::from_millis(200),
        });
        let mut s = FakeApiServer {
            shared,
            addr,
            binder,
            serving: None,
        };
        s.start();
        s
    }

    /// The address it listens on (the same across stop/start).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for a kube `Config`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client configuration pointing at this server.
    pub fn kube_config(&self) -> kube::Config {
        let mut c = kube::Config::new(self.url().parse().expect("url"));
        c.connect_timeout = Some(Duration::from_millis(500));
        c.read_timeout = None;
        c
    }

    /// A kubeconfig (current context `fake`, no credentials) pointing at
    /// this server.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    /// Write [`FakeApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// True while serving (between [`FakeApiServer::start`] and
    /// [`FakeApiServer::stop`]).
    pub fn is_serving(&self) -> bool {
        self.serving.is_some()
    }

    /// (Re)start serving on the same address.
    pub fn start(&mut self) {
        if self.serving.is_some() {
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .expect("fake apiserver runtime");
        // The port can take a moment to be free again after stop().
        let mut bound = (self.binder)(self.addr);
        for _ in 0..50 {
            if bound.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            bound = (self.binder)(self.addr);
        }
        let listener = bound.unwrap_or_else(|e| panic!("fake apiserver: bind {}: {e}", self.addr));
        listener
            .set_nonblocking(true)
            .expect("fake apiserver: nonblocking listener");
        self.addr = listener.local_addr().expect("local addr");
        let listener = {
            let _in_rt = rt.enter();
            tokio::net::TcpListener::from_std(listener).expect("fake apiserver: tokio listener")
        };
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.serving = Some(rt);
    }

    /// Go away: cut every open watch, then close the listener and every
    /// open connection (new connections are refused until
    /// [`FakeApiServer::start`]).
    pub fn stop(&mut self) {
        self.drop_watches();
        if let Some(rt) = self.serving.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Dropped inside an async context: cannot block there.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }

    /// Cut every open watch connection mid-stream (no clean end).
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Send an ERROR 410 on every open watch of `plural`, and make every
    /// later watch of `plural` from a resourceVersion up to now 410 too
    /// (also a watch about to start from a list made before this call).
    /// The resourceVersion moves on by one, as if something else changed,
    /// so a relist made after this call gets a resourceVersion it can
    /// watch from.
    pub fn inject_gone(&self, plural: &str) {
        {
            let mut st = self.shared.lock();
            st.rv += 1;
            let rv = st.rv;
            st.gone_below.insert(plural.to_string(), rv);
        }
        self.shared.gone.send_modify(|m| {
            *m.entry(plural.to_string()).or_default() += 1;
        });
    }

    /// Forget the history without telling open watches: resuming a watch
    /// from a resourceVersion older than the current one gets 410 (etcd
    /// compaction at the current revision). A watch from the current
    /// resourceVersion — what a list made after the compaction returns —
    /// misses nothing and is served.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
    }

    /// Fail the next `n` `continue` requests with 410 Expired, as if the
    /// list snapshot had been compacted between pages.
    pub fn fail_next_continues(&self, n: usize) {
        self.shared.lock().fail_continues = n;
    }

    /// Answer every list page only after `d` (a slow API server), so a
    /// runner that published pages as they come would be caught.
    pub fn set_list_delay(&self, d: Duration) {
        self.shared.lock().list_delay = d;
    }

    /// Make list requests of `plural` wait (an API server that is slow to
    /// answer one kind) until [`FakeApiServer::release_lists`].
    pub fn hold_lists(&self, plural: &str) {
        self.shared.lock().held.insert(plural.to_string());
    }

    /// Answer the held and future list requests of `plural`.
    pub fn release_lists(&self, plural: &str) {
        self.shared.lock().held.remove(plural);
        self.shared.released.send_modify(|n| *n += 1);
    }

    /// List requests currently waiting on a hold.
    pub fn held_lists(&self) -> usize {
        self.shared.lock().held_waiting
    }

    /// Continue requests failed with 410 so far.
    pub fn failed_continues(&self) -> usize {
        self.shared.lock().failed_continues
    }

    /// Make every outstanding `continue` token expire (HTTP 410).
    pub fn expire_continue_tokens(&self) {
        self.shared.lock().lists.clear();
    }

    /// Add or replace an object of `plural` (any JSON: it need not fit the
    /// schema). Returns its resourceVersion.
    pub fn apply(&self, plural: &str, mut obj: Value) -> u64 {
        let (kind, api_version) = kind_of(plural);
        let rv = {
            let mut st = self.shared.lock();
            st.rv += 1;
            let rv = st.rv;
            let meta = obj
                .as_object_mut()
                .expect("object")
                .entry("metadata")
                .or_insert_with(|| json!({}));
            meta["resourceVersion"] = json!(rv.to_string());
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = meta
                .get("name")
                .and_then(Value::as_str)
                .expect("name")
                .to_string();
            obj["kind"] = json!(kind);
            obj["apiVersion"] = json!(api_version);
            let key = (plural.to_string(), ns, name);
            let existed = st.objects.insert(key, obj.clone()).is_some();
            st.history.push(HistEvent {
                rv,
                plural: plural.to_string(),
                kind: if existed { "MODIFIED" } else { "ADDED" },
                object: obj,
            });
            rv
        };
        self.shared.changed.send_replace(rv);
        rv
    }

    /// Delete an object; true when it existed.
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) -> bool {
        let rv = {
            let mut st = self.shared.lock();
            let key = (plural.to_string(), namespace.to_string(), name.to_string());
            let Some(mut obj) = st.objects.remove(&key) else {
                return false;
            };
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.history.push(HistEvent {
                rv,
                plural: plural.to_string(),
                kind: "DELETED",
                object: obj,
            });
            rv
        };
        self.shared.changed.send_replace(rv);
        true
    }

    /// The stored object, if any.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.shared.lock();
        st.objects
            .get(&(plural.to_string(), namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request seen so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    shared.lock().requests.push(format!(
        "{method} {path}?{}",
        uri.query().unwrap_or_default()
    ));
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
            }),
        );
    }
    if method == Method::PATCH {
        if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
            return patch_node(&shared, name, &body);
        }
    }
    let Some((plural, kind, api_version)) = resource_by_path(&path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("no route {path}")),
        );
    };
    if method != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "only GET"),
        );
    }
    if q.get("watch").map(String::as_str) == Some("true") {
        return watch(shared, plural, &q);
    }
    wait_while_held(&shared, plural).await;
    let delay = shared.lock().list_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    list(&shared, plural, kind, api_version, &q)
}

/// Counts a list request waiting on a hold; uncounted when the request
/// ends, also when the client goes away meanwhile.
struct HeldGuard<'a>(&'a Shared);

impl<'a> HeldGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.lock().held_waiting += 1;
        HeldGuard(shared)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.held_waiting = st.held_waiting.saturating_sub(1);
    }
}

async fn wait_while_held(shared: &Shared, plural: &str) {
    // Subscribe before looking, so a release in between is not missed.
    let mut released = shared.released.subscribe();
    if !shared.lock().held.contains(plural) {
        return;
    }
    let _waiting = HeldGuard::new(shared);
    while shared.lock().held.contains(plural) {
        if released.changed().await.is_err() {
            return;
        }
    }
}

fn list(
    shared: &Shared,
    plural: &str,
    kind: &str,
    api_version: &str,
    q: &HashMap<String, String>,
) -> Response {
    let mut st = shared.lock();
    let (list_rv, items, offset, id) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "bad continue token"),
                );
            };
            if st.fail_continues > 0 {
                st.fail_continues -= 1;
                st.lists.remove(&id);
            }
            let Some((rv, items)) = st.lists.get(&id).cloned() else {
                st.failed_continues += 1;
                return json_response(
                    StatusCode::GONE,
                    &status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.",
                    ),
                );
            };
            (rv, items, offset, id)
        }
        None => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((p, _, _), _)| p == plural)
                .map(|(_, v)| {
                    // List items carry no apiVersion/kind, like the real thing.
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    v
                })
                .collect();
            st.next_list += 1;
            let id = st.next_list;
            let rv = st.rv;
            st.lists.insert(id, (rv, items.clone()));
            (rv, items, 0, id)
        }
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<Value> = items.iter().skip(offset).take(limit).cloned().collect();
    let next = offset.saturating_add(page.len());
    let cont = if next < items.len() {
        format!("{id}:{next}")
    } else {
        String::new()
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": list_rv.to_string(), "continue": cont},
            "items": page,
        }),
    )
}

fn line(v: &Value) -> Result<Bytes, std::io::Error> {
    let mut s = v.to_string();
    s.push('\n');
    Ok(Bytes::from(s))
}

fn watch(shared: Arc<Shared>, plural: &'static str, q: &HashMap<String, String>) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut changed = shared.changed.subscribe();
    let mut cut = shared.cut.subscribe();
    let mut gone = shared.gone.subscribe();
    let gone_at_start = gone.borrow().get(plural).copied().unwrap_or(0);
    tokio::spawn(async move {
        let (kind, api_version) = kind_of(plural);
        let too_old = {
            let st = shared.lock();
            let gone_below = st.gone_below.get(plural).copied().unwrap_or(0);
            from != 0 && (from < st.compacted || from < gone_below)
        };
        if too_old {
            let msg = format!("too old resource version: {from}");
            let _ = tx
                .send(line(
                    &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}),
                ))
                .await;
            return;
        }
        let mut sent = if from == 0 { shared.lock().rv } else { from };
        let mut tick = tokio::time::interval(shared.bookmark_every);
        tick.tick().await;
        loop {
            // Send whatever happened after `sent`.
            // One lock: every event up to `latest` is in the history.
            let (events, latest): (Vec<HistEvent>, u64) = {
                let st = shared.lock();
                let events = st
                    .history
                    .iter()
                    .filter(|e| e.rv > sent && e.plural == plural)
                    .cloned()
                    .collect();
                (events, st.rv)
            };
            for e in events {
                sent = e.rv;
                if tx
                    .send(line(&json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            sent = sent.max(latest);
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                r = cut.changed() => {
                    let _ = r;
                    // Abort the response body: the connection breaks mid-stream.
                    let _ = tx.send(Err(std::io::Error::other("connection cut"))).await;
                    return;
                }
                r = gone.changed() => {
                    if r.is_err() { return }
                    let now = gone.borrow().get(plural).copied().unwrap_or(0);
                    if now != gone_at_start {
                        let msg = format!("too old resource version: {sent}");
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": status(410, "Expired", &msg)}))).await;
                        return;
                    }
                }
                _ = tick.tick() => {
                    if bookmarks {
                        let bm = json!({"type": "BOOKMARK", "object": {
                            "kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": sent.to_string()}
                        }});
                        if tx.send(line(&bm)).await.is_err() { return }
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(rx))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch_node(shared: &Shared, name: &str, body: &[u8]) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "patch is not JSON"),
        );
    };
    let (rv, obj) = {
        let mut st = shared.lock();
        let key = ("nodes".to_string(), String::new(), name.to_string());
        let Some(mut obj) = st.objects.get(&key).cloned() else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            );
        };
        merge_patch(&mut obj, &patch);
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key, obj.clone());
        st.history.push(HistEvent {
            rv,
            plural: "nodes".into(),
            kind: "MODIFIED",
            object: obj.clone(),
        });
        (rv, obj)
    };
    shared.changed.send_replace(rv);
    json_response(StatusCode::OK, &obj)
}

// ---- object builders -------------------------------------------------

pub fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

pub fn node(name: &str, ip: &str, pod_cidr: &str) -> Value {
    json!({
        "metadata": {"name": name, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// A Node carrying Flannel's VXLAN annotations (how a Flannel node, or a
/// kxdp node after `--register-node`, looks).
pub fn flannel_node(name: &str, ip: &str, pod_cidr: &str, vtep_mac: &str) -> Value {
    let mut n = node(name, ip, pod_cidr);
    n["metadata"]["annotations"] = json!({
        "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{vtep_mac}\"}}"),
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": ip,
    });
    n
}

pub fn service(ns: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}]
        }
    })
}

pub fn lb_service_local(ns: &str, name: &str, cluster_ip: &str, port: u16, hc_port: u16) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": hc_port,
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]
        }
    })
}

/// One slice for `svc` with `ips` on `node`; `trigger` sets the
/// last-change-trigger-time annotation.
pub fn endpoint_slice(
    ns: &str,
    svc: &str,
    ips: &[&str],
    node: &str,
    trigger: Option<&str>,
) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(t) = trigger {
        annotations.insert(
            "endpoints.kubernetes.io/last-change-trigger-time".into(),
            json!(t),
        );
    }
    json!({
        "metadata": {
            "namespace": ns, "name": format!("{svc}-abc"),
            "labels": {"kubernetes.io/service-name": svc,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": annotations,
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]
        },
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({
            "addresses": [ip],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

pub fn pod(ns: &str, name: &str, ip: &str, node: &str) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx",
                  "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

pub fn deny_all_policy(ns: &str, name: &str) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    const IO: Duration = Duration::from_secs(5);

    /// Sends `GET path` on `s` (HTTP/1.1, keep-alive) and reads one
    /// response with a content length: (status, body).
    fn get(s: &mut TcpStream, path: &str) -> std::io::Result<(u16, String)> {
        write!(s, "GET {path} HTTP/1.1\r\nHost: fake\r\n\r\n")?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>())
                    })
                    .and_then(Result::ok)
                    .ok_or_else(|| std::io::Error::other(format!("no content-length: {head}")))?;
                if body.len() >= len {
                    let code = head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    return Ok((code, body[..len].to_string()));
                }
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.extend_from_slice(&buf[..n]);
        }
    }

    /// The first event line of a watch from `rv` (bookmarks on).
    fn first_watch_event(addr: SocketAddr, plural_path: &str, rv: u64) -> Value {
        let mut s = TcpStream::connect_timeout(&addr, IO).expect("connect");
        s.set_read_timeout(Some(IO)).expect("timeout");
        write!(
            s,
            "GET {plural_path}?watch=true&allowWatchBookmarks=true&resourceVersion={rv} HTTP/1.1\r\nHost: fake\r\n\r\n"
        )
        .expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&raw).to_string();
            // Chunked: the first line starting with `{` is the first event.
            if let Some(line) = text
                .split_once("\r\n\r\n")
                .and_then(|(_, body)| body.lines().find(|l| l.starts_with('{')))
            {
                return serde_json::from_str(line).expect("event json");
            }
            let n = s.read(&mut buf).expect("read watch");
            assert!(n > 0, "watch ended without an event: {text}");
            raw.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn stop_closes_open_connections_and_refuses_new_ones_until_start() {
        let mut fake = FakeApiServer::start_new();
        let addr = fake.addr();
        let mut kept = TcpStream::connect_timeout(&addr, IO).expect("connect");
        kept.set_read_timeout(Some(IO)).expect("timeout");
        assert_eq!(get(&mut kept, "/version").expect("get").0, 200);
        // The same keep-alive connection answers a second request.
        assert_eq!(get(&mut kept, "/version").expect("get").0, 200);
        fake.stop();
        assert!(!fake.is_serving());
        // An idle keep-alive connection must not outlive the server: a
        // client would otherwise still reach the "stopped" API server.
        assert!(get(&mut kept, "/version").is_err(), "answered after stop");
        let err = TcpStream::connect_timeout(&addr, IO).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        fake.start();
        assert_eq!(fake.addr(), addr, "same address after a restart");
        let mut s = TcpStream::connect_timeout(&addr, IO).expect("connect again");
        s.set_read_timeout(Some(IO)).expect("timeout");
        assert_eq!(get(&mut s, "/version").expect("get").0, 200);
    }

    #[test]
    fn watch_from_the_compaction_point_resumes_and_older_is_gone() {
        let fake = FakeApiServer::start_new();
        let before = fake.apply("services", service("default", "a", "10.96.0.1", 80));
        fake.apply("services", service("default", "b", "10.96.0.2", 80));
        fake.compact();
        let mut s = TcpStream::connect_timeout(&fake.addr(), IO).expect("connect");
        s.set_read_timeout(Some(IO)).expect("timeout");
        let (code, body) = get(&mut s, "/api/v1/services").expect("list");
        assert_eq!(code, 200, "{body}");
        let list: Value = serde_json::from_str(&body).expect("json");
        let list_rv: u64 = list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("rv");
        // A relist after compaction then a watch from its resourceVersion:
        // nothing is missing, so no 410 (else list/watch loops forever).
        let ev = first_watch_event(fake.addr(), "/api/v1/services", list_rv);
        assert_eq!(ev["type"], "BOOKMARK", "{ev}");
        // Resuming from before the compaction: 410.
        let ev = first_watch_event(fake.addr(), "/api/v1/services", before);
        assert_eq!(ev["type"], "ERROR", "{ev}");
        assert_eq!(ev["object"]["code"], 410, "{ev}");
    }

    fn list_rv(addr: SocketAddr, path: &str) -> u64 {
        let mut s = TcpStream::connect_timeout(&addr, IO).expect("connect");
        s.set_read_timeout(Some(IO)).expect("timeout");
        let (code, body) = get(&mut s, path).expect("list");
        assert_eq!(code, 200, "{body}");
        let list: Value = serde_json::from_str(&body).expect("json");
        list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("rv")
    }

    #[test]
    fn injected_gone_reaches_a_watch_that_starts_late_and_a_relist_recovers() {
        let fake = FakeApiServer::start_new();
        fake.apply("services", service("default", "a", "10.96.0.1", 80));
        let before = list_rv(fake.addr(), "/api/v1/services");
        fake.inject_gone("services");
        // A watcher that listed before the injection but opens its watch
        // only now must still see 410 (else the injection races the test).
        let ev = first_watch_event(fake.addr(), "/api/v1/services", before);
        assert_eq!(ev["object"]["code"], 410, "{ev}");
        // Other kinds are not affected.
        let ev = first_watch_event(fake.addr(), "/api/v1/pods", before);
        assert_eq!(ev["type"], "BOOKMARK", "{ev}");
        // The relist gets a resourceVersion that can be watched from.
        let after = list_rv(fake.addr(), "/api/v1/services");
        assert!(after > before);
        let ev = first_watch_event(fake.addr(), "/api/v1/services", after);
        assert_eq!(ev["type"], "BOOKMARK", "{ev}");
    }

    #[test]
    fn held_lists_wait_until_released() {
        let fake = FakeApiServer::start_new();
        fake.apply("services", service("default", "a", "10.96.0.1", 80));
        fake.hold_lists("services");
        let addr = fake.addr();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect_timeout(&addr, IO).expect("connect");
            s.set_read_timeout(Some(IO)).expect("timeout");
            let _ = tx.send(get(&mut s, "/api/v1/services"));
        });
        let deadline = std::time::Instant::now() + IO;
        while fake.held_lists() != 1 {
            assert!(std::time::Instant::now() < deadline, "list not held");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Other kinds are not held.
        let mut s = TcpStream::connect_timeout(&addr, IO).expect("connect");
        s.set_read_timeout(Some(IO)).expect("timeout");
        assert_eq!(get(&mut s, "/api/v1/pods").expect("pods").0, 200);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        fake.release_lists("services");
        let (code, body) = rx.recv_timeout(IO).expect("answered").expect("get");
        assert_eq!(code, 200);
        assert!(body.contains("10.96.0.1"), "{body}");
        assert_eq!(fake.held_lists(), 0);
        t.join().expect("client thread");
    }

    #[test]
    fn kubeconfig_points_at_the_server() {
        let fake = FakeApiServer::start_new();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        fake.write_kubeconfig(&path).expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let version = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&path).expect("parse");
            let config = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .expect("config");
            kube::Client::try_from(config)
                .expect("client")
                .apiserver_version()
                .await
                .expect("version")
        });
        assert_eq!(version.git_version, "v1.33.0-fake");
    }
}
