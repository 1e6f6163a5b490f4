//! The sync runner: drains source events into the [`ChangeTracker`],
//! compiles and publishes table generations at a bounded frequency.
//!
//! Contract (kube-proxy's `BoundedFrequencyRunner` plus its sync rules):
//! - Nothing is compiled or published before every required kind is synced
//!   (its first whole list arrived). `/readyz` says which are missing.
//! - After a change, a sync runs as soon as `min_interval` has passed since
//!   the previous one (changes arriving meanwhile are coalesced); with no
//!   change, a full resync runs every `max_interval` — but only while every
//!   source reports itself healthy, so tables are never re-stamped as fresh
//!   from a view that may be stale. `/healthz` therefore turns 503 when no
//!   publish happened for 2 × `max_interval` (see [`Status::health`]).
//! - A sync is *full* for the first publish, after a failed compile and for
//!   the periodic resync; otherwise it is *partial* and the compile callback
//!   gets the [`ChangeSet`] (what changed, with the previous objects). The
//!   callback may still rebuild everything (its options changed, the change
//!   set is huge); it says so through [`SyncOutput`], and the sync is
//!   counted as full then. Both are timed (compile plus publish) in
//!   `kxdp_sync_duration_seconds{mode="full"|"partial"}`.
//! - A failed compile publishes nothing: the previous generation keeps
//!   serving, the error is logged and counted, and the next sync is full.
//! - [`SourceEvent::HostChanged`] asks for a full sync although no object
//!   changed (the compile callback reads inputs besides the state: the
//!   host's interfaces, pods, neighbours). It is not rate-limited by
//!   `min_interval` — a worker may hold frames parked until a next hop
//!   resolved on demand is in the tables, and kube-proxy's rate limit is
//!   about API churn, not the node's own state — only by
//!   [`HOST_CHANGE_MIN_INTERVAL`] against a flapping host. It runs whether
//!   sources are healthy or not.
//! - Each successful compile is published with one atomic store
//!   ([`TableSlot`]); generations count up by one per publish. The
//!   generation a publish replaces is freed on a reclaim thread once no
//!   reader holds it any more, so neither the runner nor a worker (the last
//!   reader to drop a generation would otherwise free it) pays for it.
//!
//! The runner is a plain thread: compiles are CPU-bound and must not stall
//! the sources' async runtime.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use kxdp_dataplane::tables::{publication, TablePublisher, TableReader, TableSet};

use crate::metrics::Metrics;
use crate::model::ClusterState;
use crate::source::{EventReceiver, Kind, SourceEvent};
use crate::tracker::{ChangeSet, ChangeTracker};

/// Longest the runner sleeps without looking at its stop flag.
const POLL: Duration = Duration::from_millis(100);
/// The shortest gap between two syncs caused by host changes alone.
pub const HOST_CHANGE_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// Timing and sync requirements.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Minimum time between two syncs (kube-proxy `minSyncPeriod`, 1 s).
    pub min_interval: Duration,
    /// Maximum time between two syncs (kube-proxy `syncPeriod`, 30 s).
    pub max_interval: Duration,
    /// Kinds that must have synced before the first publish.
    pub required: BTreeSet<Kind>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            required: Kind::ALL.into_iter().collect(),
        }
    }
}

/// What the compile callback gets.
pub struct CompileInput<'a> {
    /// The whole current desired state.
    pub state: &'a ClusterState,
    /// What changed since the previous successful or failed sync (empty for
    /// a periodic resync).
    pub changes: &'a ChangeSet,
    /// The generation number the tables must carry.
    pub generation: u64,
    /// True when the callback must rebuild everything (first publish, after
    /// an error, periodic resync); false when `changes` is the whole delta
    /// to the previously published tables.
    pub full: bool,
}

/// What publish hooks get after each publish.
pub struct PublishEvent<'a> {
    pub state: &'a ClusterState,
    pub tables: &'a Arc<TableSet>,
    pub changes: &'a ChangeSet,
    /// The tables were rebuilt from the whole state (see [`SyncOutput`]).
    pub full: bool,
}

/// A compiled generation and whether the callback rebuilt it from the
/// whole state, which a partial sync may do (an incremental compiler falls
/// back to a full compile when its options changed or it has no cache).
#[derive(Debug)]
pub struct Compiled {
    pub tables: TableSet,
    pub full: bool,
}

/// What a compile callback returns: a bare [`TableSet`] (its mode is the
/// one the runner asked for, [`CompileInput::full`]) or [`Compiled`].
pub trait SyncOutput {
    /// The tables and whether they were built from the whole state.
    fn into_parts(self, requested_full: bool) -> (TableSet, bool);
}

impl SyncOutput for TableSet {
    fn into_parts(self, requested_full: bool) -> (TableSet, bool) {
        (self, requested_full)
    }
}

impl SyncOutput for Compiled {
    /// A full compile asked for is full whatever the callback says.
    fn into_parts(self, requested_full: bool) -> (TableSet, bool) {
        (self.tables, self.full || requested_full)
    }
}

/// Called after every publish, on the runner thread (keep it short).
pub type PublishHook = Box<dyn FnMut(&PublishEvent<'_>) + Send>;

/// Where the runner publishes: created empty, it becomes a
/// [`TablePublisher`]/[`TableReader`] pair at the first publish (the
/// dataplane's publication needs an initial table set). Workers start with
/// [`TableSlot::wait_reader`].
#[derive(Default)]
pub struct TableSlot {
    inner: Mutex<Option<(TablePublisher, TableReader)>>,
    published: Condvar,
    /// Retired generations go to the reclaim thread (started at the
    /// second publish).
    reclaim: Mutex<Option<Sender<Arc<TableSet>>>>,
}

/// How often the reclaim thread looks at generations readers still hold.
const RECLAIM_POLL: Duration = Duration::from_millis(20);

/// The reclaim thread: keeps retired generations until it holds the last
/// reference, then drops them (freeing here, not on a worker). Ends when
/// the slot is dropped; what readers still hold then is freed by them.
fn reclaim_loop(rx: mpsc::Receiver<Arc<TableSet>>) {
    let mut retired: Vec<Arc<TableSet>> = Vec::new();
    loop {
        match rx.recv_timeout(RECLAIM_POLL) {
            Ok(t) => retired.push(t),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // A retired generation is no longer current, so no reader can
        // start holding it: a count of 1 means only this thread does.
        retired.retain(|t| Arc::strong_count(t) > 1);
    }
}

impl fmt::Debug for TableSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSlot")
            .field("generation", &self.current().map(|t| t.generation))
            .finish()
    }
}

impl TableSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publish `tables` (one atomic store) and return the published Arc.
    /// The replaced generation is handed to the reclaim thread.
    pub fn publish(&self, tables: TableSet) -> Arc<TableSet> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (current, retired) = match &*inner {
            Some((publisher, _)) => {
                let current = Arc::new(tables);
                let retired = publisher.replace(current.clone());
                (current, Some(retired))
            }
            None => {
                let (publisher, reader) = publication(tables);
                let current = publisher.current();
                *inner = Some((publisher, reader));
                (current, None)
            }
        };
        drop(inner);
        self.published.notify_all();
        if let Some(old) = retired {
            self.retire(old);
        }
        current
    }

    fn retire(&self, old: Arc<TableSet>) {
        let mut reclaim = self.reclaim.lock().unwrap_or_else(PoisonError::into_inner);
        if reclaim.is_none() {
            let (tx, rx) = mpsc::channel();
            match std::thread::Builder::new()
                .name("kxdp-reclaim".into())
                .spawn(move || reclaim_loop(rx))
            {
                Ok(_) => *reclaim = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no reclaim thread; old tables are freed inline");
                }
            }
        }
        match reclaim.as_ref() {
            // Only fails when the thread is gone; then `old` drops here.
            Some(tx) => {
                if let Err(mpsc::SendError(old)) = tx.send(old) {
                    *reclaim = None;
                    drop(reclaim);
                    drop(old);
                }
            }
            None => drop(old),
        }
    }

    /// The reader, once something was published.
    pub fn reader(&self) -> Option<TableReader> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, r)| r.clone())
    }

    /// Wait up to `timeout` for the first publish and return the reader.
    pub fn wait_reader(&self, timeout: Duration) -> Option<TableReader> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (inner, _) = self
            .published
            .wait_timeout_while(inner, timeout, |i| i.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        inner.as_ref().map(|(_, r)| r.clone())
    }

    /// The currently published generation, if any.
    pub fn current(&self) -> Option<Arc<TableSet>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(p, _)| p.current())
    }
}

/// `/healthz` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// Time of the last publish (None before the first).
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    pub generation: u64,
}

/// `/readyz` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Required kinds not synced yet.
    pub waiting_for: Vec<Kind>,
    /// False until the first publish.
    pub published: bool,
    /// Sources currently reporting a possibly stale view.
    pub unhealthy_sources: Vec<&'static str>,
}

#[derive(Debug)]
struct StatusInner {
    synced: BTreeSet<Kind>,
    last_publish: Option<(Instant, SystemTime)>,
    generation: u64,
    unhealthy: BTreeSet<&'static str>,
    last_error: Option<String>,
}

/// Sync and health status shared by the runner and the admin server.
#[derive(Debug)]
pub struct Status {
    started: Instant,
    max_interval: Duration,
    required: BTreeSet<Kind>,
    inner: Mutex<StatusInner>,
}

impl Status {
    /// Status for a runner with `config`.
    pub fn new(config: &RunnerConfig) -> Self {
        Status {
            started: Instant::now(),
            max_interval: config.max_interval,
            required: config.required.clone(),
            inner: Mutex::new(StatusInner {
                synced: BTreeSet::new(),
                last_publish: None,
                generation: 0,
                unhealthy: BTreeSet::new(),
                last_error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// kube-proxy's `/healthz` contract: healthy while the last publish (or,
    /// before the first, the start) is less than 2 × `max_interval` ago.
    pub fn health(&self) -> Health {
        let inner = self.lock();
        let since = inner.last_publish.map_or(self.started, |(i, _)| i);
        Health {
            healthy: since.elapsed() < self.max_interval.saturating_mul(2),
            last_updated: inner.last_publish.map(|(_, t)| t),
            current_time: SystemTime::now(),
            generation: inner.generation,
        }
    }

    /// Ready once every required kind synced and tables were published.
    pub fn readiness(&self) -> Readiness {
        let inner = self.lock();
        let waiting_for: Vec<Kind> = self
            .required
            .iter()
            .filter(|k| !inner.synced.contains(k))
            .copied()
            .collect();
        let published = inner.last_publish.is_some();
        Readiness {
            ready: waiting_for.is_empty() && published,
            waiting_for,
            published,
            unhealthy_sources: inner.unhealthy.iter().copied().collect(),
        }
    }

    /// The last compile error, cleared by the next successful publish.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// The published generation (0 before the first publish).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }
}

/// Everything the runner shares with the rest of the process.
pub struct Shared {
    pub tables: Arc<TableSlot>,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub hooks: Vec<PublishHook>,
}

/// The running runner thread.
#[derive(Debug)]
pub struct RunnerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RunnerHandle {
    /// Stop the thread and wait for it (at most one poll interval plus a
    /// compile in progress).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("sync runner thread panicked");
            }
        }
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Start the runner thread. It runs until [`RunnerHandle::stop`] or until
/// every [`crate::source::EventSender`] is dropped.
pub fn spawn_runner<C, O, E>(
    config: RunnerConfig,
    events: EventReceiver,
    compile: C,
    shared: Shared,
) -> std::io::Result<RunnerHandle>
where
    C: FnMut(&CompileInput<'_>) -> Result<O, E> + Send + 'static,
    O: SyncOutput,
    E: fmt::Display,
{
    let stop = Arc::new(AtomicBool::new(false));
    let runner = Runner {
        host_changed: false,
        config,
        tracker: ChangeTracker::new(),
        compile,
        shared,
        synced: BTreeSet::new(),
        unhealthy: BTreeSet::new(),
        last_sync: None,
        need_full: true,
        generation: 0,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("kxdp-sync".into())
        .spawn(move || runner.run(events))?;
    Ok(RunnerHandle {
        stop,
        thread: Some(thread),
    })
}

struct Runner<C> {
    config: RunnerConfig,
    tracker: ChangeTracker,
    compile: C,
    shared: Shared,
    synced: BTreeSet<Kind>,
    unhealthy: BTreeSet<&'static str>,
    last_sync: Option<Instant>,
    need_full: bool,
    generation: u64,
    stop: Arc<AtomicBool>,
    /// A [`SourceEvent::HostChanged`] arrived since the last sync started.
    host_changed: bool,
}

impl<C, O, E> Runner<C>
where
    C: FnMut(&CompileInput<'_>) -> Result<O, E>,
    O: SyncOutput,
    E: fmt::Display,
{
    fn run(mut self, events: EventReceiver) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let wait = self
                .next_sync(now)
                .map_or(POLL, |due| due.saturating_duration_since(now).min(POLL));
            match events.recv_timeout(wait) {
                Ok(ev) => {
                    self.handle(ev);
                    // Coalesce whatever else is queued.
                    while let Ok(ev) = events.try_recv() {
                        self.handle(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if self.next_sync(now).is_some_and(|due| due <= now) {
                self.sync();
            }
        }
    }

    fn all_synced(&self) -> bool {
        self.config.required.is_subset(&self.synced)
    }

    /// When the next sync is due (None: nothing to do).
    fn next_sync(&self, now: Instant) -> Option<Instant> {
        if !self.all_synced() {
            return None;
        }
        let Some(last) = self.last_sync else {
            return Some(now);
        };
        let mut due: Option<Instant> = None;
        if self.tracker.has_changes() {
            due = Some(last + self.config.min_interval);
        }
        if self.host_changed {
            let prompt = last + HOST_CHANGE_MIN_INTERVAL.min(self.config.min_interval);
            due = Some(due.map_or(prompt, |d| d.min(prompt)));
        }
        if self.unhealthy.is_empty() {
            let periodic = last + self.config.max_interval;
            due = Some(due.map_or(periodic, |d| d.min(periodic)));
        }
        due
    }

    fn handle(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Apply(obj) => {
                self.tracker.apply(obj);
            }
            SourceEvent::Delete { kind, key } => {
                self.tracker.delete(kind, &key);
            }
            SourceEvent::Relisted { kind, objects } => {
                let n = self.tracker.replace(kind, objects);
                tracing::debug!(%kind, changes = n, "relist applied");
                self.mark_synced([kind]);
            }
            SourceEvent::Snapshot(state) => {
                let n = self.tracker.replace_all(*state);
                tracing::debug!(changes = n, "snapshot applied");
                self.mark_synced(Kind::ALL);
            }
            SourceEvent::Health { source, healthy } => {
                let changed = if healthy {
                    self.unhealthy.remove(source)
                } else {
                    self.unhealthy.insert(source)
                };
                if changed {
                    if healthy {
                        tracing::info!(source, "source healthy again");
                    } else {
                        tracing::warn!(source, "source unhealthy: periodic resync paused");
                    }
                }
                self.shared.status.lock().unhealthy = self.unhealthy.clone();
            }
            SourceEvent::HostChanged => self.host_changed = true,
        }
    }

    fn mark_synced(&mut self, kinds: impl IntoIterator<Item = Kind>) {
        let mut newly = false;
        for k in kinds {
            newly |= self.synced.insert(k);
        }
        if newly {
            self.shared.status.lock().synced = self.synced.clone();
            if self.all_synced() {
                tracing::info!("every source synced");
            }
        }
    }

    fn sync(&mut self) {
        let started = Instant::now();
        let requested = std::mem::take(&mut self.host_changed);
        let periodic = !self.tracker.has_changes();
        let changes = self.tracker.take_changes();
        let full = self.need_full || periodic || requested;
        let generation = self.generation.saturating_add(1);
        for kind in Kind::ALL {
            self.shared
                .metrics
                .set_objects(kind, self.tracker.count(kind));
        }
        let input = CompileInput {
            state: self.tracker.state(),
            changes: &changes,
            generation,
            full,
        };
        let result = (self.compile)(&input).map(|o| o.into_parts(full));
        self.last_sync = Some(started);
        match result {
            Ok((tables, full)) => {
                let tables = self.shared.tables.publish(tables);
                let took = started.elapsed();
                let now = SystemTime::now();
                self.generation = generation;
                self.need_full = false;
                let m = &self.shared.metrics;
                m.observe_sync(full, took);
                m.set_published(
                    tables.generation,
                    now.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                );
                let now_ts = jiff::Timestamp::now();
                for t in &changes.trigger_times {
                    // A trigger time in the future (clock skew) counts as 0.
                    let latency = now_ts
                        .duration_since(*t)
                        .try_into()
                        .unwrap_or(Duration::ZERO);
                    m.observe_programming_latency(latency);
                }
                {
                    let mut st = self.shared.status.lock();
                    st.last_publish = Some((Instant::now(), now));
                    st.generation = tables.generation;
                    st.last_error = None;
                }
                tracing::debug!(
                    generation = tables.generation,
                    full,
                    changes = changes.len(),
                    took_ms = took.as_millis() as u64,
                    "tables published"
                );
                let event = PublishEvent {
                    state: self.tracker.state(),
                    tables: &tables,
                    changes: &changes,
                    full,
                };
                for hook in &mut self.shared.hooks {
                    hook(&event);
                }
            }
            Err(e) => {
                self.need_full = true;
                self.shared.metrics.sync_error();
                let msg = e.to_string();
                tracing::warn!(error = %msg, "compile failed; previous tables stay published");
                self.shared.status.lock().last_error = Some(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicUsize;

    use kxdp_dataplane::tables::{
        NeighbourTable, NodeConfig, PodTable, PolicyTable, RouteTable, ServiceTable, VxlanConfig,
    };

    use super::*;
    use crate::source;

    fn tables(generation: u64) -> TableSet {
        TableSet {
            generation,
            node: NodeConfig {
                node_name: "n".into(),
                node_ips: Vec::new(),
                vtep_ip: Ipv4Addr::UNSPECIFIED,
                vtep_mac: Default::default(),
                uplink_mac: Default::default(),
                pod_cidr: None,
                gateway_ip: None,
                cluster_cidrs: Vec::new(),
                vxlan: VxlanConfig::default(),
                uplink_mtu: 1500,
                node_port_range: (30000, 32767),
                masquerade_port_range: (61000, 65535),
            },
            services: ServiceTable::new(),
            pods: PodTable::default(),
            routes: RouteTable::new(Vec::new()),
            policy: PolicyTable::allow_all(),
            neighbours: NeighbourTable::default(),
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A replaced generation is freed by the reclaim thread once the last
    /// reader lets go of it, not before; the publisher never frees it.
    #[test]
    fn replaced_generations_are_reclaimed_after_their_readers() {
        let slot = TableSlot::new();
        slot.publish(tables(1));
        let reader = slot.reader().expect("reader");
        // What a worker holds during a batch.
        let held = reader.load();
        let gen1 = Arc::downgrade(&held);
        let gen2 = Arc::downgrade(&slot.publish(tables(2)));
        slot.publish(tables(3));
        assert_eq!(slot.current().map(|t| t.generation), Some(3));
        // Generation 2 had no reader: reclaimed soon.
        wait_for("generation 2 to be freed", || gen2.upgrade().is_none());
        // Generation 1 is still held by a reader.
        std::thread::sleep(RECLAIM_POLL * 3);
        assert_eq!(gen1.upgrade().map(|t| t.generation), Some(1));
        drop(held);
        wait_for("generation 1 to be freed", || gen1.upgrade().is_none());
        assert_eq!(reader.load().generation, 3);
    }

    /// A host change compiles a full generation without waiting out
    /// `min_interval` (frames may be parked until a resolved next hop is
    /// in the tables); several are merged into one sync.
    #[test]
    fn host_change_compiles_full_promptly() {
        let config = RunnerConfig {
            // Far away: a sync gated by either would time `wait_for` out.
            min_interval: Duration::from_secs(3600),
            max_interval: Duration::from_secs(3600),
            ..RunnerConfig::default()
        };
        let status = Arc::new(Status::new(&config));
        let slot = Arc::new(TableSlot::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let fulls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = source::channel();
        let (c, f) = (calls.clone(), fulls.clone());
        let handle = spawn_runner(
            config,
            rx,
            move |input: &CompileInput<'_>| -> Result<TableSet, String> {
                c.fetch_add(1, Ordering::SeqCst);
                if input.full {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                Ok(tables(input.generation))
            },
            Shared {
                tables: slot.clone(),
                status: status.clone(),
                metrics: Arc::new(Metrics::new()),
                hooks: Vec::new(),
            },
        )
        .expect("runner");
        tx.send(SourceEvent::Snapshot(Box::default()))
            .expect("send");
        wait_for("the first publish", || status.generation() == 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing changed, no sync");

        tx.send(SourceEvent::HostChanged).expect("send");
        tx.send(SourceEvent::HostChanged).expect("send");
        wait_for("the host-change sync", || status.generation() == 2);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "two changes, one sync");
        assert_eq!(
            fulls.load(Ordering::SeqCst),
            2,
            "a host-change sync is full"
        );
        assert_eq!(slot.current().map(|t| t.generation), Some(2));

        handle.stop();
    }

    fn namespace(name: &str) -> source::Object {
        source::Object::Namespace(k8s_openapi::api::core::v1::Namespace {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// A partial sync whose callback rebuilt everything (an incremental
    /// compiler without a usable cache) is counted and reported as full;
    /// a partial one as partial.
    #[test]
    fn sync_mode_is_the_one_the_compile_reports() {
        let config = RunnerConfig {
            min_interval: Duration::from_millis(10),
            max_interval: Duration::from_secs(3600),
            ..RunnerConfig::default()
        };
        let status = Arc::new(Status::new(&config));
        let metrics = Arc::new(Metrics::new());
        let modes = Arc::new(Mutex::new(Vec::new()));
        let hook_modes = modes.clone();
        let (tx, rx) = source::channel();
        let handle = spawn_runner(
            config,
            rx,
            move |input: &CompileInput<'_>| -> Result<Compiled, String> {
                Ok(Compiled {
                    tables: tables(input.generation),
                    // Generation 2 falls back to a full compile.
                    full: input.generation == 2,
                })
            },
            Shared {
                tables: Arc::new(TableSlot::new()),
                status: status.clone(),
                metrics: metrics.clone(),
                hooks: vec![Box::new(move |ev: &PublishEvent<'_>| {
                    hook_modes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((ev.tables.generation, ev.full));
                })],
            },
        )
        .expect("runner");
        tx.send(SourceEvent::Snapshot(Box::default()))
            .expect("send");
        wait_for("the first publish", || status.generation() == 1);
        tx.send(SourceEvent::Apply(namespace("a"))).expect("send");
        wait_for("the second publish", || status.generation() == 2);
        tx.send(SourceEvent::Apply(namespace("b"))).expect("send");
        wait_for("the third publish", || status.generation() == 3);
        handle.stop();
        assert_eq!(
            *modes.lock().unwrap_or_else(PoisonError::into_inner),
            vec![(1, true), (2, true), (3, false)]
        );
        let text = metrics.encode();
        for needle in [
            "kxdp_sync_duration_seconds_count{mode=\"full\"} 2",
            "kxdp_sync_duration_seconds_count{mode=\"partial\"} 1",
            // The first bucket holds sub-millisecond partial syncs.
            "kxdp_sync_duration_seconds_bucket{le=\"0.0001\",mode=\"partial\"}",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
