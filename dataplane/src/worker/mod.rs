//! Workers: the loop that moves frames from ports through the pipeline and
//! back out.
//!
//! # Contract
//!
//! A [`Worker`] owns one [`FrameStore`] (for AF_XDP one UMEM) and every
//! [`Port`] opened on it; nothing else touches them. One iteration
//! ([`Worker::poll_once`]):
//!
//! ```text
//!   commands (add/remove port, null peers,   ── at most MAX_COMMANDS_PER_ITER
//!             owners of other interfaces)
//!   hand-offs from other workers (≤ batch per lane) ─► copy into own frame ─► send
//!   tables = reader.load()                   ── once per iteration
//!   for each port, round robin:
//!       now = monotonic_ns()                 ── once per rx batch
//!       recv_batch(≤ batch) ─► Frame ─► pipeline.process ─► verdict
//!       Forward / Reply  ─► send on the egress port (Pod{ifindex} by a
//!                            small map, Uplink ─► the uplink port),
//!                            or hand a copy to the worker owning it
//!       ToHost / Drop    ─► release (see below)
//!   flush every port that got frames; reap completions on every port
//!   publish a stats snapshot every `stats_interval`
//! ```
//!
//! Nothing on that path allocates, locks or makes a system call beyond the
//! ports' ring wakeups: scratch vectors are sized at construction, the
//! egress map is only rebuilt by a command, and stats are published as a
//! snapshot (one `ArcSwap` store, one small allocation) every
//! `stats_interval`, never per packet.
//!
//! # Several workers
//!
//! Each worker owns its store and the ports opened on it; workers share
//! only the tables (read), conntrack and affinity (lock-free), the
//! neighbour request set (lock-free, any number of producers) and, with
//! more than one worker, a [`HandoffMesh`] ([`WorkerConfig::handoff`]).
//! Which worker serves which `(interface, queue)` is the control side's
//! choice ([`Placement`]); it tells every worker, with
//! [`WorkerHandle::set_owner`], which worker receives frames for an
//! interface the worker has no port on. A frame's egress is then:
//!
//! 1. a port of this worker on that interface (for a multi-queue uplink,
//!    this worker's own queue): sent there, no copy;
//! 2. else the interface's owner: the bytes are copied into a slot of the
//!    lane to it and this worker's frame is released at once (counted
//!    `handoff_sent`; `handoff_full` when the lane has no free slot: the
//!    frame is dropped, never waited for);
//! 3. else dropped as `no_egress_port`.
//!
//! The owner copies the slot into a frame of its own store and sends it on
//! its port (`handoff_received`); a handed-over frame is never handed on
//! again (`handoff_no_port` when the owner no longer has the port,
//! `handoff_no_frame` when its store is empty). Parked frames and null
//! forwarding go through the same three steps. Nothing here allocates,
//! locks or makes a system call per packet: lanes are preallocated
//! lock-free queues.
//!
//! # `ToHost`
//!
//! A frame that reached an AF_XDP socket has left the kernel; there is no
//! way to give it back. The steering program only redirects on the uplink
//! what kxdp owns, so `ToHost` there is rare (e.g. a fragment for the node).
//! On pod veths the program's *host path* passes to the kernel what a pod
//! sends to its own node (ARP replies from the pod, IPv4 to an address
//! configured in the node namespace that is not a Service), so `ToHost`
//! from pods is rare too: only node-owned addresses the kernel does not
//! have (the pods' gateway when the CNI did not configure it on the host,
//! answered for pings by the pipeline; the VTEP network address). The
//! worker counts those frames (`to_host` in [`WorkerStats`]) and releases
//! them.
//!
//! # Ports
//!
//! Ports are opened *by the worker thread*, on its store, through a
//! [`PortFactory`] (AF_XDP sockets must share the worker's UMEM, which the
//! worker owns). The control side asks with [`WorkerHandle::add_port`] and
//! gets the factory's [`PortFactory::Opened`] value back (for AF_XDP, a
//! duplicate of the socket's descriptor to register in the XSKMAP; drop it
//! right after). Removing a port closes it through the factory.
//!
//! # Unresolved next hops
//!
//! A frame the pipeline drops with `neighbour-unresolved` names the next
//! hop it lacked (`Pipeline::take_unresolved_next_hop`). The worker then
//! (1) asks the control loop to resolve it through the lock-free
//! [`NeighbourRequests`] set of [`WorkerConfig::neighbour_requests`], and
//! (2) parks the frame ([`ParkedFrames`], bounded by
//! [`WorkerConfig::park`]) until a published table has the MAC; it is then
//! sent on the uplink, or released after the timeout. The pipeline counts
//! the frame as a `neighbour-unresolved` drop either way; the worker counts
//! what became of it (`neighbour_*` in [`WorkerCounters`]). Frames whose
//! neighbour is known never reach this code; an iteration with nothing
//! parked pays one length check.
//!
//! # Null forwarding
//!
//! [`Forwarding::Null`] skips the pipeline: a frame received on interface
//! `a` is sent unchanged on the peer configured with
//! [`WorkerHandle::set_null_peer`], or dropped (`no-route`) without one.
//! It measures the I/O floor (`kxdp run --null-pipeline`).

pub mod afxdp;
pub mod handoff;
pub mod neighbour;
pub mod placement;
pub mod stats;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::conntrack::{AffinityTable, Conntrack};
use crate::io::{FrameStore, PacketBuf, Port};
use crate::pipeline::{Egress, Ingress, NoTrace, Pipeline, Verdict, WorkerStats};
use crate::tables::TableReader;
use crate::DropReason;

pub use handoff::{HandoffMesh, SendError};
pub use neighbour::{NeighbourRequests, ParkedFrames, Request, Settled};
pub use placement::Placement;
pub use stats::{PortSnapshot, SharedStats, WorkerCounters, WorkerSnapshot};

/// Largest rx batch a port is asked for.
pub const MAX_BATCH: usize = 256;
/// Commands handled per loop iteration at most (bounds the work a burst
/// of pod churn can put between two batches).
const MAX_COMMANDS_PER_ITER: usize = 8;

/// Nanoseconds on the process-wide monotonic clock. Every worker and the
/// conntrack garbage collector must use this one clock (conntrack compares
/// timestamps from different threads).
pub fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Errors of the worker layer.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {worker}: opening port {spec}: {reason}")]
    Open {
        worker: usize,
        spec: String,
        reason: String,
    },
    #[error(
        "worker {worker}: interface ifindex {ifindex} already has a port with another ingress"
    )]
    DuplicatePort { worker: usize, ifindex: u32 },
    #[error("worker {worker}: no port on ifindex {ifindex}")]
    NoSuchPort { worker: usize, ifindex: u32 },
    #[error("worker {worker}: creating the frame store: {reason}")]
    Store { worker: usize, reason: String },
    #[error("worker {worker}: pinning to core {core} failed")]
    Pin { worker: usize, core: usize },
    #[error("worker {worker} is not running (stopped or failed)")]
    Gone { worker: usize },
    #[error("worker {worker} did not answer within {timeout:?}")]
    Timeout { worker: usize, timeout: Duration },
    #[error("starting worker thread {worker}: {source}")]
    Thread {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker} thread panicked")]
    Panicked { worker: usize },
}

/// Opens and closes ports on a worker's store, on the worker's thread.
pub trait PortFactory: Send + 'static {
    type Store: FrameStore;
    type Port: Port<Store = Self::Store>;
    /// What to open (interface, queue, ingress role ...).
    type Spec: fmt::Debug + Send + 'static;
    /// What the control side gets back for an opened port.
    type Opened: Send + 'static;

    /// Opens the port described by `spec` on `store`.
    fn open(
        &mut self,
        store: &mut Self::Store,
        spec: &Self::Spec,
    ) -> Result<(Self::Port, Self::Opened), String>;

    /// Closes `port`, returning its frames to `store` where possible.
    fn close(&mut self, store: &mut Self::Store, port: Self::Port);
}

/// What the worker does with a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// The full pipeline.
    #[default]
    Pipeline,
    /// No processing: forward to the configured peer interface.
    Null,
}

/// What a worker does when a loop iteration found nothing to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Empty iterations spun before sleeping.
    pub spin: u32,
    /// Sleep per empty iteration after spinning; zero busy-polls forever
    /// (benchmarks, a dedicated core).
    pub sleep: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            spin: 2000,
            sleep: Duration::from_micros(50),
        }
    }
}

/// How many frames a worker holds for unresolved next hops (the kernel's
/// `unres_qlen`-style ARP queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkConfig {
    /// Frames held in all (0: none, such frames are dropped).
    pub capacity: usize,
    /// Frames held per next hop (the kernel's ARP queue keeps about 3).
    pub per_hop: usize,
    /// How long a frame waits for its next hop.
    pub timeout: Duration,
}

impl Default for ParkConfig {
    fn default() -> Self {
        ParkConfig {
            capacity: 64,
            per_hop: 4,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Configuration of one worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Index, for names, logs and stats.
    pub id: usize,
    /// Frames received per port per iteration (1..=[`MAX_BATCH`]).
    pub batch: usize,
    /// How often the stats snapshot is published.
    pub stats_interval: Duration,
    /// Pin the thread to this CPU.
    pub core: Option<usize>,
    pub idle: IdlePolicy,
    pub forwarding: Forwarding,
    /// Where unresolved next hops are signalled (None: nowhere).
    pub neighbour_requests: Option<Arc<NeighbourRequests>>,
    /// Frames held for unresolved next hops.
    pub park: ParkConfig,
    /// Lanes to and from the other workers (None: a single worker; frames
    /// for interfaces it does not serve are dropped as `no_egress_port`).
    pub handoff: Option<Arc<HandoffMesh>>,
}

impl WorkerConfig {
    /// Defaults for worker `id`: batch 64, stats every 100 ms, unpinned.
    pub fn new(id: usize) -> Self {
        WorkerConfig {
            id,
            batch: 64,
            stats_interval: Duration::from_millis(100),
            core: None,
            idle: IdlePolicy::default(),
            forwarding: Forwarding::Pipeline,
            neighbour_requests: None,
            park: ParkConfig::default(),
            handoff: None,
        }
    }
}

/// A request to a running worker.
pub enum Command<Spec, Opened> {
    /// Open a port; the reply carries the factory's `Opened` value and the
    /// port's ifindex.
    AddPort {
        spec: Spec,
        reply: Sender<Result<(u32, Opened), WorkerError>>,
    },
    /// Close the port on `ifindex`.
    RemovePort {
        ifindex: u32,
        reply: Sender<Result<(), WorkerError>>,
    },
    /// Null forwarding: frames from `from` go out on `to` (None: removed).
    SetNullPeer { from: u32, to: Option<u32> },
    /// Frames for `ifindex` go to worker `owner` when this worker serves
    /// none of its queues (None: that interface is gone). `uplink` marks
    /// the uplink, the egress of `Egress::Uplink`.
    SetOwner {
        ifindex: u32,
        uplink: bool,
        owner: Option<usize>,
    },
}

impl<Spec: fmt::Debug, Opened> fmt::Debug for Command<Spec, Opened> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::AddPort { spec, .. } => f.debug_struct("AddPort").field("spec", spec).finish(),
            Command::RemovePort { ifindex, .. } => f
                .debug_struct("RemovePort")
                .field("ifindex", ifindex)
                .finish(),
            Command::SetNullPeer { from, to } => f
                .debug_struct("SetNullPeer")
                .field("from", from)
                .field("to", to)
                .finish(),
            Command::SetOwner {
                ifindex,
                uplink,
                owner,
            } => f
                .debug_struct("SetOwner")
                .field("ifindex", ifindex)
                .field("uplink", uplink)
                .field("owner", owner)
                .finish(),
        }
    }
}

/// One worker: a store, its ports, a pipeline. Drive it with
/// [`Worker::poll_once`] (tests) or [`Worker::run`] (its own thread, see
/// [`spawn`]).
pub struct Worker<F: PortFactory> {
    cfg: WorkerConfig,
    store: F::Store,
    factory: F,
    ports: Vec<F::Port>,
    /// ifindex -> index into `ports` of its first port (queue), the one
    /// frames to that interface are sent on; rebuilt when ports change.
    by_ifindex: FxHashMap<u32, usize>,
    /// Index of the first port with `Ingress::Uplink`.
    uplink: Option<usize>,
    /// Where frames go that leave through an interface this worker has
    /// no port on: ifindex -> owning worker, and the uplink's owner.
    remote: Remotes,
    null_peers: FxHashMap<u32, u32>,
    pipeline: Pipeline,
    tables: TableReader,
    commands: Option<Receiver<Command<F::Spec, F::Opened>>>,
    bufs: Vec<<F::Store as FrameStore>::Buf>,
    verdicts: Vec<Verdict>,
    /// (index in the batch, next hop) of this batch's frames dropped with
    /// `neighbour-unresolved`.
    unresolved: Vec<(usize, std::net::Ipv4Addr)>,
    parked: ParkedFrames<<F::Store as FrameStore>::Buf>,
    dirty: Vec<bool>,
    next_port: usize,
    counters: WorkerCounters,
    shared: Arc<SharedStats>,
    last_publish: Instant,
    idle_iters: u32,
}

impl<F: PortFactory> fmt::Debug for Worker<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.cfg.id)
            .field("ports", &self.by_ifindex.keys().collect::<Vec<_>>())
            .field("uplink", &self.uplink)
            .finish_non_exhaustive()
    }
}

impl<F: PortFactory> Worker<F> {
    /// A worker on `store` with no ports yet.
    pub fn new(
        cfg: WorkerConfig,
        store: F::Store,
        factory: F,
        tables: TableReader,
        conntrack: Arc<Conntrack>,
        affinity: Arc<AffinityTable>,
    ) -> Self {
        let batch = cfg.batch.clamp(1, MAX_BATCH);
        let shared = Arc::new(SharedStats::new(cfg.id));
        let parked = ParkedFrames::new(cfg.park.capacity, cfg.park.per_hop, cfg.park.timeout);
        Worker {
            cfg: WorkerConfig { batch, ..cfg },
            store,
            factory,
            ports: Vec::new(),
            by_ifindex: FxHashMap::default(),
            uplink: None,
            remote: Remotes::default(),
            null_peers: FxHashMap::default(),
            pipeline: Pipeline::new(conntrack, affinity),
            tables,
            commands: None,
            bufs: Vec::with_capacity(batch),
            verdicts: Vec::with_capacity(batch),
            unresolved: Vec::with_capacity(batch),
            parked,
            dirty: Vec::new(),
            next_port: 0,
            counters: WorkerCounters::default(),
            shared,
            last_publish: Instant::now(),
            idle_iters: 0,
        }
    }

    /// The stats this worker publishes.
    pub fn shared_stats(&self) -> Arc<SharedStats> {
        self.shared.clone()
    }

    /// The pipeline's counters (current, not the published snapshot).
    pub fn pipeline_stats(&self) -> &WorkerStats {
        &self.pipeline.stats
    }

    /// The worker's own counters.
    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// The frame store.
    pub fn store(&self) -> &F::Store {
        &self.store
    }

    /// The port on `ifindex`.
    pub fn port_mut(&mut self, ifindex: u32) -> Option<&mut F::Port> {
        let i = *self.by_ifindex.get(&ifindex)?;
        self.ports.get_mut(i)
    }

    /// Opens a port through the factory. Several ports (queues) of one
    /// interface are allowed if they share the ingress; frames to the
    /// interface leave through the first.
    pub fn add_port(&mut self, spec: &F::Spec) -> Result<(u32, F::Opened), WorkerError> {
        let (port, opened) =
            self.factory
                .open(&mut self.store, spec)
                .map_err(|reason| WorkerError::Open {
                    worker: self.cfg.id,
                    spec: format!("{spec:?}"),
                    reason,
                })?;
        let ifindex = port.ifindex();
        let ingress = port.ingress();
        let clash = self
            .ports
            .iter()
            .any(|p| p.ifindex() == ifindex && p.ingress() != ingress);
        if clash {
            self.factory.close(&mut self.store, port);
            return Err(WorkerError::DuplicatePort {
                worker: self.cfg.id,
                ifindex,
            });
        }
        self.ports.push(port);
        self.reindex();
        Ok((ifindex, opened))
    }

    /// Closes every port (queue) on `ifindex`.
    pub fn remove_port(&mut self, ifindex: u32) -> Result<(), WorkerError> {
        if !self.by_ifindex.contains_key(&ifindex) {
            return Err(WorkerError::NoSuchPort {
                worker: self.cfg.id,
                ifindex,
            });
        }
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ports)
            .into_iter()
            .partition(|p| p.ifindex() == ifindex);
        self.ports = kept;
        for mut port in gone {
            // Frames it queued or has in flight go back first.
            port.flush(&mut self.store);
            port.complete(&mut self.store);
            self.factory.close(&mut self.store, port);
        }
        self.null_peers.remove(&ifindex);
        self.reindex();
        Ok(())
    }

    /// Null forwarding peer of `from`.
    pub fn set_null_peer(&mut self, from: u32, to: Option<u32>) {
        match to {
            Some(to) => {
                self.null_peers.insert(from, to);
            }
            None => {
                self.null_peers.remove(&from);
            }
        }
    }

    /// Frames for `ifindex` (the uplink when `uplink`) that this worker
    /// cannot send itself go to worker `owner` (None: nowhere).
    pub fn set_owner(&mut self, ifindex: u32, uplink: bool, owner: Option<usize>) {
        if uplink {
            match owner {
                Some(o) => self.remote.uplink = Some((ifindex, o)),
                None if self.remote.uplink.is_some_and(|(i, _)| i == ifindex) => {
                    self.remote.uplink = None;
                }
                None => {}
            }
        }
        match owner {
            Some(o) => {
                self.remote.pods.insert(ifindex, o);
            }
            None => {
                self.remote.pods.remove(&ifindex);
            }
        }
    }

    fn reindex(&mut self) {
        self.by_ifindex.clear();
        self.uplink = None;
        for (i, p) in self.ports.iter().enumerate() {
            self.by_ifindex.entry(p.ifindex()).or_insert(i);
            if self.uplink.is_none() && p.ingress() == Ingress::Uplink {
                self.uplink = Some(i);
            }
        }
        self.dirty = vec![false; self.ports.len()];
        if self.next_port >= self.ports.len() {
            self.next_port = 0;
        }
    }

    fn handle_command(&mut self, cmd: Command<F::Spec, F::Opened>) {
        match cmd {
            Command::AddPort { spec, reply } => {
                let res = self.add_port(&spec);
                if let Err(e) = &res {
                    tracing::warn!(worker = self.cfg.id, error = %e, "add port failed");
                }
                // The requester may have given up waiting; nothing to do then.
                let _ = reply.send(res);
            }
            Command::RemovePort { ifindex, reply } => {
                let _ = reply.send(self.remove_port(ifindex));
            }
            Command::SetNullPeer { from, to } => self.set_null_peer(from, to),
            Command::SetOwner {
                ifindex,
                uplink,
                owner,
            } => self.set_owner(ifindex, uplink, owner),
        }
    }

    fn drain_commands(&mut self) {
        for _ in 0..MAX_COMMANDS_PER_ITER {
            let Some(rx) = &self.commands else { return };
            match rx.try_recv() {
                Ok(cmd) => self.handle_command(cmd),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.commands = None;
                    return;
                }
            }
        }
    }

    /// One loop iteration: commands, one rx batch per port, tx flush,
    /// completions, periodic stats. Returns the frames received.
    pub fn poll_once(&mut self) -> usize {
        self.drain_commands();
        let n_ports = self.ports.len();
        // Frames other workers handed over first: their slots free up
        // before this worker's own batches may hand more over.
        let mut received = self.drain_handoff();
        if n_ports > 0 {
            let tables = self.tables.load();
            if !self.parked.is_empty() {
                self.settle_parked(&tables);
            }
            for k in 0..n_ports {
                let i = (self.next_port + k) % n_ports;
                received += self.rx_batch(i, &tables);
            }
            self.next_port = (self.next_port + 1) % n_ports;
        }
        let Worker {
            ports,
            store,
            dirty,
            ..
        } = self;
        for (port, d) in ports.iter_mut().zip(dirty.iter_mut()) {
            if std::mem::take(d) {
                port.flush(store);
            }
            port.complete(store);
        }
        self.counters.iterations += 1;
        if received == 0 {
            self.counters.idle_iterations += 1;
        }
        self.maybe_publish(false);
        received
    }

    /// Receives and dispatches one batch from port `i`.
    fn rx_batch(&mut self, i: usize, tables: &crate::tables::TableSet) -> usize {
        let Some(port) = self.ports.get_mut(i) else {
            return 0;
        };
        let ingress = port.ingress();
        let in_ifindex = port.ifindex();
        self.bufs.clear();
        let n = port.recv_batch(&mut self.store, &mut self.bufs, self.cfg.batch);
        if n == 0 {
            return 0;
        }
        self.counters.batches += 1;
        let now = monotonic_ns();
        self.verdicts.clear();
        self.unresolved.clear();
        for (idx, buf) in self.bufs.iter_mut().enumerate() {
            let verdict = match self.cfg.forwarding {
                Forwarding::Pipeline => {
                    let Ok(mut frame) = self.store.frame(buf) else {
                        self.counters.frame_errors += 1;
                        self.verdicts.push(Verdict::Drop(DropReason::NoBufferRoom));
                        continue;
                    };
                    let v = self
                        .pipeline
                        .process(tables, now, &mut frame, ingress, &mut NoTrace);
                    if v == Verdict::Drop(DropReason::NeighbourUnresolved) {
                        if let Some(hop) = self.pipeline.take_unresolved_next_hop() {
                            self.unresolved.push((idx, hop));
                            request_resolution(&self.cfg, &mut self.counters, hop);
                        }
                    }
                    let (off, len) = (frame.offset, frame.len);
                    if buf.set_bounds(off, len).is_err() {
                        self.counters.frame_errors += 1;
                        Verdict::Drop(DropReason::NoBufferRoom)
                    } else {
                        v
                    }
                }
                Forwarding::Null => match self.null_peers.get(&in_ifindex) {
                    Some(&to) => {
                        self.counters.null_forwarded += 1;
                        Verdict::Forward(Egress::Pod { ifindex: to })
                    }
                    None => {
                        self.counters.null_no_peer += 1;
                        Verdict::Drop(DropReason::NoRoute)
                    }
                },
            };
            self.verdicts.push(verdict);
        }
        let Worker {
            cfg,
            ports,
            store,
            bufs,
            verdicts,
            unresolved,
            parked,
            by_ifindex,
            uplink,
            remote,
            dirty,
            counters,
            ..
        } = self;
        let mut tx = Tx {
            id: cfg.id,
            handoff: cfg.handoff.as_deref(),
            ports: ports.as_mut_slice(),
            store,
            by_ifindex,
            uplink: *uplink,
            remote,
            dirty: dirty.as_mut_slice(),
            counters,
        };
        let mut unresolved = unresolved.iter().peekable();
        for (idx, (buf, verdict)) in bufs.drain(..).zip(verdicts.iter()).enumerate() {
            let hop = unresolved.next_if(|(i, _)| *i == idx).map(|&(_, hop)| hop);
            if let (Some(hop), Verdict::Drop(DropReason::NeighbourUnresolved)) = (hop, verdict) {
                match parked.park(hop, buf, now) {
                    Ok(()) => tx.counters.neighbour_parked += 1,
                    Err(buf) => {
                        tx.counters.neighbour_park_full += 1;
                        tx.store.release(buf);
                    }
                }
                continue;
            }
            match *verdict {
                Verdict::Forward(e) | Verdict::Reply(e, _) => tx.send(e, buf),
                Verdict::ToHost => {
                    tx.counters.to_host_released += 1;
                    tx.store.release(buf);
                }
                Verdict::Drop(_) => tx.store.release(buf),
            }
        }
        n
    }

    /// Transmits the frames other workers handed over (at most a batch per
    /// lane): each is copied into a frame of this worker's store and sent
    /// on this worker's port for its egress. Returns how many arrived.
    fn drain_handoff(&mut self) -> usize {
        let Worker {
            cfg,
            ports,
            store,
            by_ifindex,
            uplink,
            remote,
            dirty,
            counters,
            ..
        } = self;
        let Some(mesh) = cfg.handoff.as_deref() else {
            return 0;
        };
        let me = cfg.id;
        let mut tx = Tx {
            id: me,
            handoff: None,
            ports: ports.as_mut_slice(),
            store,
            by_ifindex,
            uplink: *uplink,
            remote,
            dirty: dirty.as_mut_slice(),
            counters,
        };
        let mut n = 0;
        for from in (0..mesh.workers()).filter(|&w| w != me) {
            for _ in 0..cfg.batch {
                let Some(h) = mesh.recv(from, me) else { break };
                n += 1;
                tx.counters.handoff_received += 1;
                tx.deliver(&h);
                mesh.recycle(from, me, h);
            }
        }
        n
    }

    /// Sends the parked frames whose next hop `tables` now resolves (the
    /// same rule as the pipeline: the hop's own entry, else the default
    /// gateway's) and releases those that waited too long.
    fn settle_parked(&mut self, tables: &crate::tables::TableSet) {
        let now = monotonic_ns();
        let Worker {
            cfg,
            ports,
            store,
            parked,
            by_ifindex,
            uplink,
            remote,
            dirty,
            counters,
            ..
        } = self;
        let mut tx = Tx {
            id: cfg.id,
            handoff: cfg.handoff.as_deref(),
            ports: ports.as_mut_slice(),
            store,
            by_ifindex,
            uplink: *uplink,
            remote,
            dirty: dirty.as_mut_slice(),
            counters,
        };
        let lookup = |ip| {
            tables.neighbours.lookup(ip).or_else(|| {
                tables
                    .neighbours
                    .default_gateway
                    .and_then(|gw| tables.neighbours.lookup(gw))
            })
        };
        parked.settle(now, lookup, |settled| match settled {
            Settled::Send(mut buf, mac) => {
                let patched = tx
                    .store
                    .frame(&mut buf)
                    .ok()
                    .and_then(|mut f| {
                        f.data_mut()
                            .get_mut(..6)
                            .map(|dst| dst.copy_from_slice(&mac.0))
                    })
                    .is_some();
                if patched {
                    tx.counters.neighbour_parked_sent += 1;
                    // The pipeline's verdict was the uplink (a next hop on
                    // the underlay); whether encapsulated does not matter
                    // past the pipeline.
                    tx.send(
                        Egress::Uplink {
                            encapsulated: false,
                        },
                        buf,
                    );
                } else {
                    tx.counters.frame_errors += 1;
                    tx.store.release(buf);
                }
            }
            Settled::Expired(buf) => {
                tx.counters.neighbour_parked_expired += 1;
                tx.store.release(buf);
            }
        });
    }

    fn maybe_publish(&mut self, force: bool) {
        if !force && self.last_publish.elapsed() < self.cfg.stats_interval {
            return;
        }
        self.last_publish = Instant::now();
        let ports = self
            .ports
            .iter()
            .map(|p| PortSnapshot {
                ifindex: p.ifindex(),
                ingress: p.ingress(),
                stats: p.stats(),
            })
            .collect();
        self.shared.publish(WorkerSnapshot {
            worker: self.cfg.id,
            pipeline: self.pipeline.stats.clone(),
            counters: self.counters.clone(),
            ports,
            free_frames: self.store.free_frames(),
            published_ns: monotonic_ns(),
        });
    }

    /// Publishes the stats snapshot now.
    pub fn publish_stats(&mut self) {
        self.maybe_publish(true);
    }

    /// Runs until `stop` is set (checked once per iteration), then closes
    /// every port and publishes final stats.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if self.poll_once() > 0 {
                self.idle_iters = 0;
                continue;
            }
            self.idle_iters = self.idle_iters.saturating_add(1);
            if self.idle_iters > self.cfg.idle.spin && !self.cfg.idle.sleep.is_zero() {
                std::thread::sleep(self.cfg.idle.sleep);
            }
        }
        self.shutdown();
    }

    /// Closes every port (frames back to the store) and publishes stats.
    pub fn shutdown(&mut self) {
        let store = &mut self.store;
        self.parked.drain_all(|buf| store.release(buf));
        self.maybe_publish(true);
        for mut port in std::mem::take(&mut self.ports) {
            port.flush(&mut self.store);
            port.complete(&mut self.store);
            self.factory.close(&mut self.store, port);
        }
        self.reindex();
    }
}

/// Interfaces served by other workers (see [`Command::SetOwner`]).
#[derive(Debug, Default)]
struct Remotes {
    /// ifindex -> worker.
    pods: FxHashMap<u32, usize>,
    /// (uplink ifindex, worker).
    uplink: Option<(u32, usize)>,
}

/// The transmit side of one worker, borrowed for one dispatch loop.
struct Tx<'a, P: Port> {
    id: usize,
    /// None when frames must not be handed on (they came from a lane).
    handoff: Option<&'a HandoffMesh>,
    ports: &'a mut [P],
    store: &'a mut P::Store,
    by_ifindex: &'a FxHashMap<u32, usize>,
    uplink: Option<usize>,
    remote: &'a Remotes,
    dirty: &'a mut [bool],
    counters: &'a mut WorkerCounters,
}

impl<P: Port> Tx<'_, P> {
    /// This worker's port for `egress`.
    fn local(&self, egress: Egress) -> Option<usize> {
        match egress {
            Egress::Pod { ifindex } => self.by_ifindex.get(&ifindex).copied(),
            Egress::Uplink { .. } => self.uplink,
        }
    }

    /// The worker serving `egress` when this one does not.
    fn owner(&self, egress: Egress) -> Option<usize> {
        let owner = match egress {
            Egress::Pod { ifindex } => self.remote.pods.get(&ifindex).copied(),
            Egress::Uplink { .. } => self.remote.uplink.map(|(_, w)| w),
        };
        owner.filter(|&w| w != self.id)
    }

    fn send_on(&mut self, port: usize, buf: <P::Store as FrameStore>::Buf) {
        match self.ports.get_mut(port) {
            Some(p) => {
                if p.send(self.store, buf) {
                    if let Some(d) = self.dirty.get_mut(port) {
                        *d = true;
                    }
                }
            }
            None => {
                self.counters.no_egress_port += 1;
                self.store.release(buf);
            }
        }
    }

    /// Sends `buf` on this worker's port for `egress`, else hands a copy
    /// to the worker that serves it, else drops it (`no_egress_port`).
    fn send(&mut self, egress: Egress, mut buf: <P::Store as FrameStore>::Buf) {
        if let Some(port) = self.local(egress) {
            return self.send_on(port, buf);
        }
        let (Some(mesh), Some(to)) = (self.handoff, self.owner(egress)) else {
            self.counters.no_egress_port += 1;
            self.store.release(buf);
            return;
        };
        let sent = match self.store.frame(&mut buf) {
            Ok(f) => mesh.send(self.id, to, egress, f.data()),
            Err(_) => Err(SendError::TooLong),
        };
        match sent {
            Ok(()) => self.counters.handoff_sent += 1,
            Err(SendError::Full) => self.counters.handoff_full += 1,
            Err(SendError::TooLong) => self.counters.frame_errors += 1,
            Err(SendError::NoLane) => self.counters.no_egress_port += 1,
        }
        self.store.release(buf);
    }

    /// Receiving side of a hand-off: copies `h` into a frame of this
    /// worker's store and sends it on this worker's port for its egress.
    /// Never hands it on again (no ping-pong while ownership changes).
    fn deliver(&mut self, h: &handoff::Handoff) {
        let Some(port) = self.local(h.egress) else {
            self.counters.handoff_no_port += 1;
            return;
        };
        let Some(mut buf) = self.store.alloc() else {
            self.counters.handoff_no_frame += 1;
            return;
        };
        let pkt = h.packet();
        let copied = match self.store.frame(&mut buf) {
            Ok(f) => {
                let off = f.offset;
                match off
                    .checked_add(pkt.len())
                    .and_then(|end| f.buf.get_mut(off..end))
                {
                    Some(dst) => {
                        dst.copy_from_slice(pkt);
                        Some(off)
                    }
                    None => None,
                }
            }
            Err(_) => None,
        };
        match copied.map(|off| buf.set_bounds(off, pkt.len())) {
            Some(Ok(())) => self.send_on(port, buf),
            _ => {
                self.counters.frame_errors += 1;
                self.store.release(buf);
            }
        }
    }
}

/// Signals `hop` to the control loop (see the module docs).
fn request_resolution(cfg: &WorkerConfig, counters: &mut WorkerCounters, hop: std::net::Ipv4Addr) {
    let Some(req) = &cfg.neighbour_requests else {
        return;
    };
    match req.request(hop) {
        Request::Queued => counters.neighbour_requests += 1,
        Request::Full => counters.neighbour_requests_full += 1,
        Request::Duplicate | Request::Ignored => {}
    }
}

/// The control side of a worker running on its own thread.
pub struct WorkerHandle<F: PortFactory> {
    id: usize,
    stop: Arc<AtomicBool>,
    commands: Sender<Command<F::Spec, F::Opened>>,
    stats: Arc<SharedStats>,
    thread: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl<F: PortFactory> fmt::Debug for WorkerHandle<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Starts a worker thread named `kxdp-worker-<id>`: pins it if asked,
/// creates the store with `make_store` (on the thread: AF_XDP memory is
/// then local to the pinned core's node), and runs [`Worker::run`] until
/// [`WorkerHandle::stop`].
pub fn spawn<F, M>(
    cfg: WorkerConfig,
    make_store: M,
    factory: F,
    tables: TableReader,
    conntrack: Arc<Conntrack>,
    affinity: Arc<AffinityTable>,
) -> Result<WorkerHandle<F>, WorkerError>
where
    F: PortFactory,
    M: FnOnce() -> Result<F::Store, String> + Send + 'static,
{
    let id = cfg.id;
    let stop = Arc::new(AtomicBool::new(false));
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<SharedStats>, WorkerError>>();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("kxdp-worker-{id}"))
        .spawn(move || {
            if let Some(core) = cfg.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    let e = WorkerError::Pin { worker: id, core };
                    let _ = ready_tx.send(Err(WorkerError::Pin { worker: id, core }));
                    return Err(e);
                }
            }
            let store = match make_store() {
                Ok(s) => s,
                Err(reason) => {
                    let _ = ready_tx.send(Err(WorkerError::Store {
                        worker: id,
                        reason: reason.clone(),
                    }));
                    return Err(WorkerError::Store { worker: id, reason });
                }
            };
            let mut worker = Worker::new(cfg, store, factory, tables, conntrack, affinity);
            worker.commands = Some(cmd_rx);
            let _ = ready_tx.send(Ok(worker.shared_stats()));
            worker.run(&thread_stop);
            Ok(())
        })
        .map_err(|source| WorkerError::Thread { worker: id, source })?;
    let mut handle = WorkerHandle {
        id,
        stop,
        commands: cmd_tx,
        stats: Arc::new(SharedStats::new(id)),
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(stats)) => {
            handle.stats = stats;
            Ok(handle)
        }
        Ok(Err(e)) => {
            handle.join_quietly();
            Err(e)
        }
        Err(_) => Err(handle.join_error()),
    }
}

impl<F: PortFactory> WorkerHandle<F> {
    /// The worker's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The worker's published stats.
    pub fn stats(&self) -> Arc<SharedStats> {
        self.stats.clone()
    }

    /// True while the thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn request<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, WorkerError>>) -> Command<F::Spec, F::Opened>,
        timeout: Duration,
    ) -> Result<T, WorkerError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| WorkerError::Gone { worker: self.id })?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(WorkerError::Timeout {
                worker: self.id,
                timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(WorkerError::Gone { worker: self.id }),
        }
    }

    /// Opens a port on the worker; waits up to `timeout` for the result.
    pub fn add_port(
        &self,
        spec: F::Spec,
        timeout: Duration,
    ) -> Result<(u32, F::Opened), WorkerError> {
        self.request(|reply| Command::AddPort { spec, reply }, timeout)
    }

    /// Closes the port on `ifindex`; waits up to `timeout`.
    pub fn remove_port(&self, ifindex: u32, timeout: Duration) -> Result<(), WorkerError> {
        self.request(|reply| Command::RemovePort { ifindex, reply }, timeout)
    }

    /// Null forwarding: frames from `from` go out on `to`.
    pub fn set_null_peer(&self, from: u32, to: Option<u32>) -> Result<(), WorkerError> {
        self.commands
            .send(Command::SetNullPeer { from, to })
            .map_err(|_| WorkerError::Gone { worker: self.id })
    }

    /// Frames for `ifindex` (the uplink when `uplink`) that this worker
    /// serves no queue of go to worker `owner` (None: the interface is
    /// gone). Applied in order with the other commands.
    pub fn set_owner(
        &self,
        ifindex: u32,
        uplink: bool,
        owner: Option<usize>,
    ) -> Result<(), WorkerError> {
        self.commands
            .send(Command::SetOwner {
                ifindex,
                uplink,
                owner,
            })
            .map_err(|_| WorkerError::Gone { worker: self.id })
    }

    /// Asks the worker to stop (it closes its ports) and waits for it.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| WorkerError::Panicked { worker: self.id })?,
            None => Ok(()),
        }
    }

    fn join_quietly(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn join_error(&mut self) -> WorkerError {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => WorkerError::Panicked { worker: self.id },
            _ => WorkerError::Gone { worker: self.id },
        }
    }
}

impl<F: PortFactory> Drop for WorkerHandle<F> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.join_quietly();
    }
}

#[cfg(test)]
mod tests;
