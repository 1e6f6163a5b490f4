//! `kxdp run`: the node daemon.
//!
//! ```text
//!  manifests (watched)
//!  or Kubernetes API ─► sync runner ─► Compiler (state, changes,  ─► TableSlot
//!                                 ▲      host env; incremental)     │ load per batch
//!  main thread, every 100 ms:     │ host changed                      ▼
//!    conntrack / affinity GC      │ (HostChanged)           --workers N threads
//!    every --rescan-ms: host scan ┘ (uplink, pod veths, neighbours)  each: one UMEM,
//!      attach/detach pod veths, open/close their sockets ──────────►  its sockets;
//!      (queues placed over the workers, owners told to every worker)  hand-off lanes
//!    after each publish: steering maps (frontends, NodePorts, pod IPs, masquerade);
//!      when policy changed: conntrack entries the new policy denies are flushed
//!    every scan: host path maps (pod veth -> pod IP, node-local addresses)
//!    SIGINT/SIGTERM: stop workers (sockets close), detach, unpin
//! ```
//!
//! Desired state comes from `--manifests PATH`, or from the Kubernetes API
//! (`--kubeconfig FILE`, or in-cluster when neither is given and
//! `KUBERNETES_SERVICE_HOST` is set) through `kxdp_control::source::kube`;
//! `--register-node` then writes this node's Flannel annotations (VTEP MAC =
//! the uplink's MAC, public IP = the uplink's primary address, VNI 1).
//!
//! # Host requirements
//!
//! - Run it in the node's network namespace (the tests use
//!   `ip netns exec NODE kxdp run ...`); it attaches XDP programs to
//!   `--uplink` and to every interface a /32 host route to a pod IP points
//!   at (DESIGN §4), and to nothing else.
//! - iproute2 (`ip`) for host discovery (see [`crate::host`]).
//! - Kernel senders on veth leave L4 checksums to offload
//!   (CHECKSUM_PARTIAL); frames redirected to AF_XDP carry only the bytes,
//!   so every sender whose traffic reaches kxdp must compute checksums in
//!   software: `ethtool -K eth0 tx off` inside each pod (and on underlay
//!   senders that are veths). Real NICs finish checksums on the wire.
//! - The masquerade port range (`--masquerade-ports`, default 61000-65535)
//!   must not overlap the node's own ephemeral ports
//!   (`net.ipv4.ip_local_port_range`, Linux default 32768-60999): replies to
//!   those ports on the uplink are steered to kxdp.
//!
//! # Workers
//!
//! `--workers N` starts N worker threads (worker `i` pinned to the `i`th
//! CPU of `--cores` when given), each with its own UMEM and the AF_XDP
//! sockets bound on it. [`Placement`] decides which worker opens which
//! `(interface, queue)` socket: queue `i` of a multi-queue interface (the
//! uplink) on worker `i mod N`, a single-queue pod veth whole on the least
//! loaded worker. After opening them, every worker is told which worker
//! receives frames for an interface it has no socket on (the one of queue
//! 0); a removed interface is announced gone first, then its sockets
//! close.
//!
//! A frame of one UMEM can only leave through that UMEM's sockets, so a
//! frame whose egress belongs to another worker is *handed over*: copied
//! into a slot of the bounded lane between the two workers
//! (`worker::handoff`, `--handoff-slots` per lane, all preallocated), then
//! by the receiving worker into a frame of its own UMEM and transmitted.
//! A full lane drops the frame and counts it (`handoff_full`), as do a
//! receiving store without free frames (`handoff_no_frame`) and an egress
//! that went away meanwhile (`handoff_no_port`). A worker with a queue of
//! the uplink transmits on its own queue's socket; a worker without one
//! hands uplink frames to the worker of queue 0. The same applies to
//! parked frames (sent once their next hop resolves) and to
//! `--null-pipeline` forwarding. All workers share the tables, conntrack,
//! affinity and one `NeighbourRequests` set (lock-free with several
//! producers; the main loop is its one consumer).
//!
//! Per-worker counters are in `/debug/stats` (one entry per worker, every
//! loop counter by name) and in `/metrics` (`kxdp_worker_*{worker=...}`);
//! `kxdp top` prints a row per worker.
//!
//! # Known limits
//!
//! - A frame crossing workers costs two copies (slot in, slot out); which
//!   worker receives a flow depends on the queue the kernel or the NIC
//!   picks, so on a single-queue uplink with N workers the uplink's worker
//!   receives all underlay traffic and hands most of it over.
//! - A pod reaches its node through the steering program's host path
//!   (`kxdp_ffi::xdp`): ARP replies from the pod and IPv4 from the pod to an
//!   address configured in the node namespace (not a Service on it) go to
//!   the kernel, which delivers them locally. Node-owned addresses the
//!   kernel does not have (the pods' gateway when the CNI did not put it on
//!   the host, the VTEP network address) stay kxdp's: it answers pings to
//!   the gateway, other `ToHost` frames from pods are counted and released.
//!
//! # NetworkPolicy and revocation
//!
//! One [`Compiler`] lives in the compile callback: each sync recompiles
//! only what its changes touched (Services, the pod table, the policy
//! selections a pod or namespace change affects), with a full rebuild on
//! the first publish, after an error, every `--sync-period-ms` and when the
//! host changed. Policy treats every address of this node as the node (node
//! IPs, VTEP, pods' gateway, pod CIDR address: `NodeConfig::owns`), so
//! traffic between the node and its pods is always allowed. When a published
//! generation changed any pod's policy (or the peers or node addresses it
//! depends on), the publish hook removes every conntrack entry that
//! generation would not admit as a new connection
//! ([`kxdp_dataplane::pipeline::flush_after_publish`], which also drops UDP
//! entries whose Service endpoint went away): an open connection that
//! lost its permission stops at its next packet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

use kxdp_control::admin::{start_admin_with, AdminServer, AdminState, DataplaneView};
use kxdp_control::compile::{CompileOptions, Compiler, NodeEnvironment};
use kxdp_control::metrics::{Metrics, PacketCounters};
use kxdp_control::runner::{
    spawn_runner, CompileInput, Compiled, PublishEvent, RunnerConfig, Shared, Status, TableSlot,
};
use kxdp_control::source;
use kxdp_control::source::files::{start_manifests_source, ManifestsConfig, ManifestsSource};
use kxdp_control::source::kube::{
    start_kube_source, KubeConnect, KubeSource, KubeSourceConfig, NodeRegistration,
};
use kxdp_dataplane::conntrack::{AffinityTable, Conntrack, CtConfig};
use kxdp_dataplane::io::afxdp::ring::CoreLimits;
use kxdp_dataplane::io::afxdp::{BindMode, BusyPoll, HugePages, PortConfig, StoreConfig, XskStore};
use kxdp_dataplane::pipeline::{flush_after_publish, Ingress};
use kxdp_dataplane::tables::{
    publication, IpProto, NeighbourTable, NodeConfig, PodTable, PolicyTable, RouteTable,
    ServiceTable, TableReader, TableSet, VxlanConfig,
};
use kxdp_dataplane::worker::afxdp::AfXdpFactory;
use kxdp_dataplane::worker::handoff::default_lane_slots;
use kxdp_dataplane::worker::stats::merge;
use kxdp_dataplane::worker::{
    self, monotonic_ns, Forwarding, HandoffMesh, IdlePolicy, NeighbourRequests, Placement,
    SharedStats, WorkerConfig, WorkerHandle,
};
use kxdp_ffi::xdp::{
    AttachMode, Interface, LoadOptions, Proto, Role, SteeringProgram, UplinkConfig,
};

use crate::host::{HostScanner, HostView, OnDemandResolver};
use crate::napi::{self, NapiSettings, SavedNapi};

/// Most worker threads `--workers` accepts.
const MAX_WORKERS: usize = 64;
/// How long a worker may take to open or close a socket.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Main loop tick: conntrack GC cadence and signal latency.
const TICK: Duration = Duration::from_millis(100);
/// How long readiness waits for other nodes' addresses to resolve.
const NEIGHBOUR_GRACE: Duration = Duration::from_secs(5);
/// Empty iterations a `--rt-priority` worker spins before its idle sleep.
const RT_IDLE_SPIN: u32 = 16;

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Generic,
}

/// AF_XDP bind mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BindArg {
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// This node's Kubernetes name.
    #[arg(long)]
    node: String,
    /// The node's underlay interface (VXLAN, Service and NodePort traffic).
    #[arg(long)]
    uplink: String,
    /// Manifests file or directory, watched for changes (instead of the
    /// Kubernetes API).
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig (its current
    /// context). Without --manifests and --kubeconfig, the in-cluster
    /// configuration is used when KUBERNETES_SERVICE_HOST is set.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Write this node's Flannel annotations (backend-data with the VTEP
    /// MAC, backend-type, public-ip) on its Node object, so Flannel nodes
    /// find it. Needs the Kubernetes API source.
    #[arg(long)]
    register_node: bool,
    /// Worker threads, each with its own UMEM and sockets (see the module
    /// docs for how interfaces and queues are spread over them).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS as i64))]
    workers: u16,
    /// CPUs to pin workers to, in worker order (e.g. `--cores 0,1`);
    /// workers past the list run unpinned.
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Frames a lane between two workers holds (each a preallocated 2 KiB
    /// slot; workers × (workers − 1) lanes). A frame for another worker
    /// finding its lane full is dropped and counted (`handoff_full`).
    /// Default: 2048 / (workers − 1), between 64 and 1024.
    #[arg(long,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    handoff_slots: Option<usize>,
    /// Admin API address (`/healthz`, `/readyz`, `/metrics`,
    /// `/debug/tables`); `off` disables it.
    #[arg(long, default_value = kxdp_control::admin::DEFAULT_ADMIN_ADDR)]
    admin: String,
    /// Forward without processing between --null-pair interfaces: the
    /// AF_XDP I/O floor.
    #[arg(long)]
    null_pipeline: bool,
    /// With --null-pipeline: two interfaces that forward to each other,
    /// `A,B` (repeatable).
    #[arg(long = "null-pair", value_parser = parse_pair)]
    null_pairs: Vec<(String, String)>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    xdp_mode: XdpModeArg,
    /// AF_XDP bind mode (veth supports copy only; auto picks).
    #[arg(long, value_enum, default_value_t = BindArg::Auto)]
    bind: BindArg,
    /// Write this file once the dataplane serves (tables published, every
    /// interface attached); removed at exit.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Minimum time between two table syncs, milliseconds (kube-proxy's
    /// minSyncPeriod): changes arriving faster are batched.
    #[arg(long, default_value_t = 1000)]
    min_sync_period_ms: u64,
    /// Maximum time between two table syncs, milliseconds (kube-proxy's
    /// syncPeriod); /healthz turns 503 when no sync succeeded for twice
    /// this long.
    #[arg(long, default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    sync_period_ms: u64,
    /// Host rescan period (pod veths, neighbours), milliseconds.
    #[arg(long, default_value_t = 1000)]
    rescan_ms: u64,
    /// Conntrack capacity (connections).
    #[arg(long, default_value_t = 65536)]
    conntrack_size: usize,
    /// Masquerade source ports (and ICMP ids), `LO-HI`; must not overlap
    /// the node's ephemeral ports.
    #[arg(long, default_value = "61000-65535", value_parser = parse_range)]
    masquerade_ports: (u16, u16),
    /// Frames of each worker's UMEM (2 KiB each).
    #[arg(long, default_value_t = 16384)]
    umem_frames: u32,
    /// Preferred busy polling: the worker runs the served interfaces'
    /// NAPI itself (SO_PREFER_BUSY_POLL on its sockets; kxdp sets
    /// napi_defer_hard_irqs and gro_flush_timeout on those interfaces and
    /// turns threaded NAPI off, restoring them at exit).
    #[arg(long)]
    busy_poll: bool,
    /// With --busy-poll: SO_BUSY_POLL, microseconds one poll may spin.
    #[arg(long, default_value_t = 20, requires = "busy_poll")]
    busy_poll_usecs: u32,
    /// With --busy-poll: SO_BUSY_POLL_BUDGET, packets per NAPI poll.
    #[arg(long, default_value_t = 64, requires = "busy_poll",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    busy_poll_budget: u16,
    /// Never sleep when idle: spin on the rings (a dedicated core).
    #[arg(long)]
    no_idle_sleep: bool,
    /// Run the worker thread at this SCHED_FIFO priority (1-99), so it
    /// preempts the kernel's packet processing on a shared core.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    rt_priority: Option<u8>,
    /// Pin the steering program and maps under this bpffs directory.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Leave the steering program attached at exit (pods stay fail-closed
    /// while kxdp is down).
    #[arg(long)]
    leave_attached: bool,
}

fn parse_pair(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once(',') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && a != b => {
            Ok((a.to_owned(), b.to_owned()))
        }
        _ => Err(format!("{s:?}: expected two different interfaces, `A,B`")),
    }
}

fn parse_range(s: &str) -> std::result::Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LO-HI"))?;
    let lo: u16 = lo.parse().map_err(|_| format!("{s:?}: bad port {lo:?}"))?;
    let hi: u16 = hi.parse().map_err(|_| format!("{s:?}: bad port {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: need 0 < LO <= HI"));
    }
    Ok((lo, hi))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests) fails harmlessly.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Entry point of `kxdp run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    init_logging();
    if args.cores.len() > usize::from(args.workers) {
        bail!(
            "--cores lists {} CPUs for {} worker(s)",
            args.cores.len(),
            args.workers
        );
    }
    if args.uplink == "lo" {
        bail!("--uplink lo: the loopback device cannot be the uplink");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let result = if args.null_pipeline {
        run_null(&args, &stop)
    } else {
        run_dataplane(&args, &stop)
    };
    if let Some(f) = &args.ready_file {
        let _ = std::fs::remove_file(f);
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn attach_mode(a: XdpModeArg) -> AttachMode {
    match a {
        XdpModeArg::Native => AttachMode::Native,
        XdpModeArg::Generic => AttachMode::Generic,
    }
}

fn bind_mode(a: BindArg) -> BindMode {
    match a {
        BindArg::Auto => BindMode::Auto,
        BindArg::Copy => BindMode::Copy,
        BindArg::ZeroCopy => BindMode::ZeroCopy,
    }
}

fn proto_of(p: IpProto) -> Option<Proto> {
    match p {
        IpProto::Tcp => Some(Proto::Tcp),
        IpProto::Udp => Some(Proto::Udp),
        IpProto::Sctp => Some(Proto::Sctp),
        IpProto::Icmp => None,
    }
}

/// The workers' counters as Prometheus families (sums and per worker).
struct WorkerPackets(Vec<Arc<SharedStats>>);

fn forward_directions(p: &kxdp_dataplane::pipeline::WorkerStats) -> [(&'static str, u64); 5] {
    [
        ("to-pod", p.forwarded_pod),
        ("vxlan", p.forwarded_vxlan),
        ("uplink", p.forwarded_uplink),
        ("reply", p.replies),
        ("to-host", p.to_host),
    ]
}

impl PacketCounters for WorkerPackets {
    fn forward_packets(&self) -> Vec<(String, u64)> {
        let s = merge(&self.0.iter().map(|s| s.load()).collect::<Vec<_>>());
        forward_directions(&s.pipeline)
            .into_iter()
            .map(|(d, n)| (d.to_owned(), n))
            .collect()
    }

    fn worker_rx_packets(&self) -> Vec<(usize, u64)> {
        self.0
            .iter()
            .map(|s| {
                let s = s.load();
                (s.worker, s.pipeline.rx)
            })
            .collect()
    }

    fn worker_forward_packets(&self) -> Vec<(usize, String, u64)> {
        self.0
            .iter()
            .flat_map(|s| {
                let s = s.load();
                forward_directions(&s.pipeline)
                    .into_iter()
                    .map(move |(d, n)| (s.worker, d.to_owned(), n))
            })
            .collect()
    }

    fn worker_drop_packets(&self) -> Vec<(usize, String, u64)> {
        self.0
            .iter()
            .flat_map(|s| {
                let s = s.load();
                let w = s.worker;
                s.pipeline
                    .drops
                    .nonzero()
                    .map(|(r, n)| (w, r.name().to_owned(), n))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn worker_events(&self) -> Vec<(usize, String, u64)> {
        self.0
            .iter()
            .flat_map(|s| {
                let s = s.load();
                s.counters
                    .named()
                    .into_iter()
                    .map(move |(k, n)| (s.worker, k.to_owned(), n))
            })
            .collect()
    }

    fn drop_packets(&self) -> Vec<(String, u64)> {
        let s = merge(&self.0.iter().map(|s| s.load()).collect::<Vec<_>>());
        s.pipeline
            .drops
            .nonzero()
            .map(|(r, n)| (r.name().to_owned(), n))
            .collect()
    }
}

/// An interface kxdp attached to and serves.
#[derive(Debug)]
struct Served {
    name: String,
    queues: u32,
    /// Pod veths: the address its host path is enabled for.
    pod_ip: Option<Ipv4Addr>,
}

/// The steering program plus the workers: attaches interfaces, spreads
/// their queues over the workers and keeps the steering maps in step with
/// the tables.
struct Dataplane {
    steering: SteeringProgram,
    /// Worker `i` at index `i`.
    workers: Vec<WorkerHandle<AfXdpFactory>>,
    /// Which worker serves which (interface, queue).
    placement: Placement,
    mode: AttachMode,
    bind: BindMode,
    served: BTreeMap<u32, Served>,
    pod_ips: BTreeSet<Ipv4Addr>,
    /// Steered frontends and NodePorts (TCP, UDP and SCTP only).
    frontends: BTreeSet<(Ipv4Addr, u16, IpProto)>,
    node_ports: BTreeSet<(u16, IpProto)>,
    uplink_cfg: Option<UplinkConfig>,
    /// Node-local addresses in the steering program's host path.
    host_addrs: BTreeSet<Ipv4Addr>,
    rings: RingSizes,
    /// `--busy-poll`: per socket, and the device settings it needs.
    busy_poll: Option<(BusyPoll, NapiSettings)>,
    /// Device NAPI settings changed per served ifindex, to restore.
    napi_saved: BTreeMap<u32, SavedNapi>,
}

/// AF_XDP ring sizes per role.
///
/// A pod port keeps `pod_fill` frames lent to the kernel even while idle;
/// they come out of the worker's one UMEM, so the target scales with
/// `--umem-frames` (1/32 of it: 512 with the default 16384 frames) instead
/// of being fixed: small enough that dozens of pods cannot starve each
/// other, large enough to absorb the bursts a veth delivers while the
/// worker is off the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingSizes {
    pod_fill: u32,
    pod_ring: u32,
    uplink_fill: u32,
    uplink_ring: u32,
}

impl RingSizes {
    fn for_umem(frames: u32) -> Self {
        let pod_fill = (frames / 32).clamp(64, 2048);
        // The fill rings themselves are 2048 long (`StoreConfig`).
        let uplink_fill = (frames / 8).clamp(256, 2048);
        // Rings hold what the fill ring can deliver in one go, rounded to
        // a power of two.
        RingSizes {
            pod_fill,
            pod_ring: (pod_fill * 2).next_power_of_two(),
            uplink_fill,
            uplink_ring: (uplink_fill * 2).next_power_of_two(),
        }
    }
}

impl Dataplane {
    /// Attaches the program for `role` to `name` (expected at `ifindex`)
    /// and opens one socket per rx queue, each on the worker
    /// [`Placement`] picks; then tells every worker which one receives
    /// frames for the interface it has no queue of. On failure nothing
    /// stays attached.
    fn attach(&mut self, name: &str, ifindex: u32, role: Role, ingress: Ingress) -> Result<()> {
        let iface = Interface::lookup(name).with_context(|| format!("interface {name}"))?;
        if iface.ifindex != ifindex {
            bail!(
                "interface {name} is ifindex {}, expected {ifindex}",
                iface.ifindex
            );
        }
        let queues = iface.rx_queues();
        // The program reserves `queues` XSKMAP slots from the interface's
        // base slot, one per queue a socket is opened for below.
        self.steering
            .attach(&iface, role, self.mode, queues)
            .with_context(|| format!("attaching XDP to {name}"))?;
        let placed = self.placement.assign(ifindex, queues);
        let opened = (0..queues).try_for_each(|q| -> Result<()> {
            let w = placed.get(q as usize).copied().unwrap_or(0);
            let worker = self
                .workers
                .get(w)
                .ok_or_else(|| anyhow!("no worker {w}"))?;
            let mut cfg = PortConfig::new(name, q, ingress);
            cfg.bind = self.bind;
            let (ring, fill) = match role {
                Role::Uplink => (self.rings.uplink_ring, self.rings.uplink_fill),
                Role::Pod => (self.rings.pod_ring, self.rings.pod_fill),
            };
            cfg.rx_ring = ring;
            cfg.tx_ring = ring;
            cfg.limits = CoreLimits {
                fill_target: fill,
                ..CoreLimits::default()
            };
            cfg.busy_poll = self.busy_poll.map(|(bp, _)| bp);
            let (_, fd) = worker.add_port(cfg, WORKER_TIMEOUT).with_context(|| {
                format!("opening AF_XDP socket on {name} queue {q} (worker {w})")
            })?;
            self.steering
                .register_socket(ifindex, q, fd.as_fd())
                .with_context(|| format!("registering the socket of {name} queue {q}"))?;
            // `fd` (a duplicate) closes here: the worker's socket is the
            // only reference left, so closing it empties the slot.
            Ok(())
        });
        if let Err(e) = opened {
            self.close_sockets(ifindex);
            let _ = self.steering.detach(ifindex);
            return Err(e);
        }
        let owner = self.placement.owner(ifindex);
        self.broadcast_owner(ifindex, role == Role::Uplink, owner);
        if let Some((_, napi)) = self.busy_poll {
            let (saved, errors) = napi::apply(name, napi);
            for e in errors {
                tracing::warn!(interface = name, error = %e, "NAPI setting for busy polling");
            }
            tracing::info!(
                interface = name,
                changed = saved.changed(),
                "NAPI settings for busy polling"
            );
            self.napi_saved.insert(ifindex, saved);
        }
        self.served.insert(
            ifindex,
            Served {
                name: name.to_owned(),
                queues,
                pod_ip: None,
            },
        );
        tracing::info!(
            interface = name,
            ifindex,
            queues,
            ?role,
            workers = ?placed,
            "serving interface"
        );
        Ok(())
    }

    /// Tells every worker where frames for `ifindex` go when it serves no
    /// queue of it (None: nowhere, the interface is going away).
    fn broadcast_owner(&self, ifindex: u32, uplink: bool, owner: Option<usize>) {
        for w in &self.workers {
            if let Err(e) = w.set_owner(ifindex, uplink, owner) {
                tracing::warn!(worker = w.id(), ifindex, error = %e, "telling the worker");
            }
        }
    }

    /// Closes the sockets of `ifindex` on every worker that has one and
    /// forgets its placement.
    fn close_sockets(&mut self, ifindex: u32) {
        let mut workers = self.placement.release(ifindex);
        workers.sort_unstable();
        workers.dedup();
        for w in workers {
            let Some(worker) = self.workers.get(w) else {
                continue;
            };
            match worker.remove_port(ifindex, WORKER_TIMEOUT) {
                Ok(()) | Err(worker::WorkerError::NoSuchPort { .. }) => {}
                Err(e) => tracing::warn!(worker = w, ifindex, error = %e, "closing sockets"),
            }
        }
    }

    /// Closes the sockets of `ifindex` and detaches from it (if it still
    /// exists).
    fn release(&mut self, ifindex: u32) {
        let Some(s) = self.served.remove(&ifindex) else {
            return;
        };
        // Other workers stop handing frames over first; what is already in
        // a lane is counted (`handoff_no_port`) by the owner.
        self.broadcast_owner(ifindex, false, None);
        self.close_sockets(ifindex);
        if let Err(e) = self.steering.detach(ifindex) {
            tracing::warn!(interface = %s.name, error = %e, "detaching XDP");
        }
        if let Some(saved) = self.napi_saved.remove(&ifindex) {
            saved.restore();
        }
        tracing::info!(interface = %s.name, ifindex, queues = s.queues, "interface released");
    }

    /// Serve exactly the pod veths of `view` (by ifindex): attach new
    /// ones, release vanished ones. Returns how many failed.
    fn sync_pods(&mut self, view: &HostView, uplink_ifindex: u32) -> usize {
        let wanted: BTreeMap<u32, (&str, Ipv4Addr)> = view
            .pods
            .iter()
            .map(|(ip, i)| (i.ifindex, (&*i.name, *ip)))
            .collect();
        let gone: Vec<u32> = self
            .served
            .keys()
            .copied()
            .filter(|i| *i != uplink_ifindex && !wanted.contains_key(i))
            .collect();
        for ifindex in gone {
            self.release(ifindex);
        }
        let mut failed = 0;
        for (ifindex, (name, ip)) in wanted {
            if !self.served.contains_key(&ifindex) {
                if let Err(e) = self.attach(name, ifindex, Role::Pod, Ingress::Pod { ifindex }) {
                    failed += 1;
                    tracing::warn!(
                        interface = name,
                        error = format!("{e:#}"),
                        "cannot serve pod interface (retrying at the next scan)"
                    );
                    continue;
                }
            }
            let Some(served) = self.served.get_mut(&ifindex) else {
                continue;
            };
            if served.pod_ip != Some(ip) {
                match self.steering.set_pod_address(ifindex, Some(ip)) {
                    Ok(()) => served.pod_ip = Some(ip),
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(interface = name, error = %e, "enabling the host path");
                    }
                }
            }
        }
        failed
    }

    /// Makes the host path's address set match `addrs` (the node's local
    /// addresses).
    fn sync_host_addrs(&mut self, addrs: &[Ipv4Addr]) {
        let wanted: BTreeSet<Ipv4Addr> = addrs
            .iter()
            .copied()
            .take(kxdp_ffi::xdp::MAX_HOST_ADDRS)
            .collect();
        for ip in self.host_addrs.difference(&wanted) {
            if let Err(e) = self.steering.remove_host_addr(*ip) {
                tracing::warn!(error = %e, "steering map");
            }
        }
        let mut synced: BTreeSet<Ipv4Addr> =
            self.host_addrs.intersection(&wanted).copied().collect();
        for ip in wanted.difference(&self.host_addrs) {
            match self.steering.add_host_addr(*ip) {
                Ok(()) => {
                    synced.insert(*ip);
                }
                Err(e) => tracing::warn!(error = %e, "steering map"),
            }
        }
        if synced != self.host_addrs {
            tracing::info!(addrs = ?synced, "host path addresses");
        }
        self.host_addrs = synced;
    }

    /// Makes the steering maps match `t`.
    fn sync_maps(&mut self, t: &TableSet) {
        let cfg = UplinkConfig {
            vxlan_port: t.node.vxlan.port,
            masq_ip: t.node.primary_ip(),
            masq_ports: t.node.masquerade_port_range,
        };
        if self.uplink_cfg != Some(cfg) {
            match self.steering.set_uplink_config(&cfg) {
                Ok(()) => self.uplink_cfg = Some(cfg),
                Err(e) => tracing::warn!(error = %e, "writing the steering configuration"),
            }
        }
        let pod_ips: BTreeSet<Ipv4Addr> = t
            .pods
            .iter()
            .filter(|p| p.interface.is_some())
            .map(|p| p.ip)
            .collect();
        for ip in self.pod_ips.difference(&pod_ips) {
            if let Err(e) = self.steering.remove_pod_ip(*ip) {
                tracing::warn!(error = %e, "steering map");
            }
        }
        for ip in pod_ips.difference(&self.pod_ips) {
            if let Err(e) = self.steering.add_pod_ip(*ip) {
                tracing::warn!(error = %e, "steering map");
            }
        }
        self.pod_ips = pod_ips;

        let frontends: BTreeSet<(Ipv4Addr, u16, IpProto)> = t
            .services
            .frontends()
            .filter(|(k, _)| proto_of(k.proto).is_some())
            .map(|(k, _)| (k.ip, k.port, k.proto))
            .collect();
        for (ip, port, proto) in self.frontends.difference(&frontends) {
            if let Some(p) = proto_of(*proto) {
                if let Err(e) = self.steering.remove_frontend(*ip, *port, p) {
                    tracing::warn!(error = %e, "steering map");
                }
            }
        }
        for (ip, port, proto) in frontends.difference(&self.frontends) {
            if let Some(p) = proto_of(*proto) {
                if let Err(e) = self.steering.add_frontend(*ip, *port, p) {
                    tracing::warn!(error = %e, "steering map");
                }
            }
        }
        self.frontends = frontends;

        let node_ports: BTreeSet<(u16, IpProto)> = t
            .services
            .node_ports()
            .filter(|((_, proto), _)| proto_of(*proto).is_some())
            .map(|(k, _)| k)
            .collect();
        for (port, proto) in self.node_ports.difference(&node_ports) {
            if let Some(p) = proto_of(*proto) {
                if let Err(e) = self.steering.remove_node_port(*port, p) {
                    tracing::warn!(error = %e, "steering map");
                }
            }
        }
        for (port, proto) in node_ports.difference(&self.node_ports) {
            if let Some(p) = proto_of(*proto) {
                if let Err(e) = self.steering.add_node_port(*port, p) {
                    tracing::warn!(error = %e, "steering map");
                }
            }
        }
        self.node_ports = node_ports;
        tracing::debug!(
            generation = t.generation,
            pods = self.pod_ips.len(),
            frontends = self.frontends.len(),
            node_ports = self.node_ports.len(),
            "steering maps synced"
        );
    }

    /// True while every worker thread runs.
    fn workers_running(&self) -> bool {
        self.workers.iter().all(WorkerHandle::is_running)
    }

    /// The workers' stats handles, in worker order.
    fn worker_stats(&self) -> Vec<Arc<SharedStats>> {
        self.workers.iter().map(WorkerHandle::stats).collect()
    }

    /// Null forwarding on every worker: frames from `from` go out on `to`.
    fn set_null_peer(&self, from: u32, to: u32) -> Result<()> {
        for w in &self.workers {
            w.set_null_peer(from, Some(to))?;
        }
        Ok(())
    }

    /// Stops the workers (their sockets close: the kernel empties their
    /// slots), then detaches everything unless told to leave it attached.
    fn shutdown(mut self, leave_attached: bool) {
        let all_stats = self.worker_stats();
        for w in std::mem::take(&mut self.workers) {
            let id = w.id();
            if let Err(e) = w.stop() {
                tracing::warn!(worker = id, error = %e, "stopping the worker");
            }
        }
        if leave_attached {
            self.steering.leave_attached();
            tracing::info!("steering program left attached (fail closed)");
        } else {
            for ifindex in self.served.keys().copied().collect::<Vec<_>>() {
                if let Err(e) = self.steering.detach(ifindex) {
                    tracing::warn!(ifindex, error = %e, "detaching XDP");
                }
            }
        }
        for saved in std::mem::take(&mut self.napi_saved).into_values() {
            saved.restore();
        }
        for stats in &all_stats {
            log_final_stats(&stats.load());
        }
        // Dropping the program unpins it.
    }
}

fn log_final_stats(s: &kxdp_dataplane::worker::WorkerSnapshot) {
    {
        tracing::info!(
            worker = s.worker,
            rx = s.pipeline.rx,
            to_pod = s.pipeline.forwarded_pod,
            vxlan = s.pipeline.forwarded_vxlan,
            uplink = s.pipeline.forwarded_uplink,
            replies = s.pipeline.replies,
            to_host = s.pipeline.to_host,
            drops = ?s.pipeline.drops.nonzero().map(|(r, n)| (r.name(), n)).collect::<Vec<_>>(),
            no_egress_port = s.counters.no_egress_port,
            handoff_sent = s.counters.handoff_sent,
            handoff_received = s.counters.handoff_received,
            handoff_full = s.counters.handoff_full,
            "final worker stats"
        );
        for p in &s.ports {
            let st = &p.stats;
            tracing::info!(
                ifindex = p.ifindex,
                rx = st.rx_packets,
                tx = st.tx_packets,
                tx_dropped = st.tx_dropped,
                fill_ring_empty = st.fill_ring_empty,
                rx_ring_full = st.rx_ring_full,
                rx_dropped = st.rx_dropped,
                pool_empty = st.pool_empty,
                wakeups = st.wakeups,
                busy_polls = st.busy_polls,
                worker = s.worker,
                "final socket stats"
            );
        }
    }
}

fn environment(view: &HostView) -> NodeEnvironment {
    NodeEnvironment {
        uplink_mac: view.uplink.mac,
        uplink_mtu: view.uplink.mtu,
        extra_node_ips: view.uplink.addrs.clone(),
        pod_interfaces: view.pods.clone(),
        neighbours: view.neighbours.clone(),
        vtep_mac: None,
    }
}

fn spawn_workers(
    args: &RunArgs,
    reader: TableReader,
    forwarding: Forwarding,
) -> Result<Vec<WorkerHandle<AfXdpFactory>>> {
    let ct = Arc::new(Conntrack::new(CtConfig::new(args.conntrack_size)));
    let aff = Arc::new(AffinityTable::new(args.conntrack_size / 4, None));
    spawn_workers_with(args, reader, forwarding, ct, aff, None)
}

/// Starts `--workers` worker threads, worker `i` pinned to `--cores[i]`
/// when given, each with its own UMEM; with more than one, joined by one
/// hand-off mesh. They share the tables, conntrack, affinity and the
/// neighbour request set (safe with several producers, see
/// `worker::neighbour`).
fn spawn_workers_with(
    args: &RunArgs,
    reader: TableReader,
    forwarding: Forwarding,
    ct: Arc<Conntrack>,
    aff: Arc<AffinityTable>,
    neighbour_requests: Option<Arc<NeighbourRequests>>,
) -> Result<Vec<WorkerHandle<AfXdpFactory>>> {
    let n = usize::from(args.workers).max(1);
    let slots = args.handoff_slots.unwrap_or_else(|| default_lane_slots(n));
    let mesh = (n > 1).then(|| Arc::new(HandoffMesh::new(n, slots)));
    let mut workers = Vec::with_capacity(n);
    for id in 0..n {
        let mut cfg = WorkerConfig::new(id);
        cfg.core = args.cores.get(id).copied();
        cfg.forwarding = forwarding;
        cfg.neighbour_requests = neighbour_requests.clone();
        cfg.handoff = mesh.clone();
        if args.no_idle_sleep {
            cfg.idle = IdlePolicy {
                spin: 0,
                sleep: Duration::ZERO,
            };
        } else if args.rt_priority.is_some() {
            // A real-time worker preempts the NAPI thread that fills its
            // rings when they share a core: spinning on empty rings then
            // only delays the packets it waits for (perf: ~30% of the core
            // in idle iterations at 2000 spins). Yield almost at once.
            cfg.idle.spin = RT_IDLE_SPIN;
        }
        let store_cfg = StoreConfig {
            frames: args.umem_frames,
            huge_pages: HugePages::Try,
            ..StoreConfig::default()
        };
        let rt_priority = args.rt_priority;
        // On failure the workers started so far stop when dropped.
        let handle = worker::spawn(
            cfg,
            // Runs on the worker thread before its loop: the place to give
            // that thread (only) its scheduling class.
            move || {
                if let Some(p) = rt_priority {
                    kxdp_ffi::sched::set_current_thread_fifo(p)
                        .map_err(|e| format!("--rt-priority {p}: {e}"))?;
                }
                XskStore::new(&store_cfg).map_err(|e| e.to_string())
            },
            AfXdpFactory::default(),
            reader.clone(),
            ct.clone(),
            aff.clone(),
        )
        .with_context(|| format!("starting worker {id}"))?;
        workers.push(handle);
    }
    tracing::info!(
        workers = n,
        cores = ?args.cores,
        handoff_slots = mesh.as_ref().map(|m| m.lane_slots()),
        handoff_mib = mesh
            .as_ref()
            .map(|m| (n * (n - 1) * m.lane_slots() * worker::handoff::HANDOFF_SLOT_BYTES) >> 20),
        "workers started"
    );
    Ok(workers)
}

/// Starts the admin API on `--admin` (None for `off`).
fn start_admin(
    args: &RunArgs,
    state: AdminState,
    view: DataplaneView,
) -> Result<Option<AdminServer>> {
    if args.admin == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = args
        .admin
        .parse()
        .with_context(|| format!("--admin {:?}", args.admin))?;
    let server = start_admin_with(addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED), state, view)
        .context("starting the admin API")?;
    tracing::info!(addr = %server.local_addr(), "admin API listening");
    Ok(Some(server))
}

fn busy_poll(args: &RunArgs) -> Option<(BusyPoll, NapiSettings)> {
    args.busy_poll.then(|| {
        (
            BusyPoll {
                usecs: args.busy_poll_usecs,
                budget: args.busy_poll_budget,
            },
            NapiSettings::default(),
        )
    })
}

fn load_steering(args: &RunArgs) -> Result<SteeringProgram> {
    SteeringProgram::load(&LoadOptions {
        pin_dir: args.pin_dir.clone(),
    })
    .context("loading the XDP steering program")
}

fn write_ready(args: &RunArgs) {
    tracing::info!("kxdp ready");
    if let Some(f) = &args.ready_file {
        if let Err(e) = std::fs::write(f, format!("{}\n", std::process::id())) {
            tracing::warn!(file = %f.display(), error = %e, "writing the ready file");
        }
    }
}

/// Host state shared by the main loop and the compile callback.
struct HostShared {
    env: Mutex<NodeEnvironment>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where desired state comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SourceChoice {
    Manifests(PathBuf),
    Kube(KubeConnectChoice),
}

/// [`KubeConnect`] without the test-only variant (comparable).
#[derive(Clone, Debug, PartialEq, Eq)]
enum KubeConnectChoice {
    InCluster,
    Kubeconfig(PathBuf),
}

/// `--manifests`, else `--kubeconfig`, else in-cluster when
/// `KUBERNETES_SERVICE_HOST` is set (`in_cluster_host`).
fn choose_source(
    manifests: Option<&PathBuf>,
    kubeconfig: Option<&PathBuf>,
    in_cluster_host: Option<&str>,
    register_node: bool,
) -> Result<SourceChoice> {
    let choice = match (manifests, kubeconfig) {
        (Some(_), Some(_)) => bail!("--manifests and --kubeconfig exclude each other"),
        (Some(m), None) => SourceChoice::Manifests(m.clone()),
        (None, Some(k)) => SourceChoice::Kube(KubeConnectChoice::Kubeconfig(k.clone())),
        (None, None) => match in_cluster_host {
            Some(h) if !h.is_empty() => SourceChoice::Kube(KubeConnectChoice::InCluster),
            _ => bail!(
                "no source of desired state: give --manifests PATH or --kubeconfig FILE, \
                 or run in a pod (KUBERNETES_SERVICE_HOST)"
            ),
        },
    };
    if register_node && matches!(choice, SourceChoice::Manifests(_)) {
        bail!("--register-node needs the Kubernetes API source (not --manifests)");
    }
    Ok(choice)
}

/// The running source of desired state.
enum StateSource {
    Manifests(ManifestsSource),
    Kube(KubeSource),
}

impl StateSource {
    fn last_error(&self) -> Option<String> {
        match self {
            StateSource::Manifests(m) => m.last_error(),
            // The Kubernetes source reports through Health events and logs.
            StateSource::Kube(_) => None,
        }
    }

    fn stop(self) {
        match self {
            StateSource::Manifests(m) => m.stop(),
            StateSource::Kube(k) => k.stop(),
        }
    }
}

/// One sync: the runner's compile callback. Incremental: only what
/// `input.changes` touched is recompiled (a Service and its backends, the
/// pod table, the policy selections a pod or namespace change affects);
/// full when the runner asks (first publish, after an error, periodic,
/// host change) or the compiler has no usable cache. An error publishes
/// nothing and drops the cache, so the next sync is full. Sets `revoke`
/// when the generation changed policy (the publish hook then sweeps
/// conntrack).
fn compile_sync(
    compiler: &mut Compiler,
    input: &CompileInput<'_>,
    env: &NodeEnvironment,
    opts: &CompileOptions,
    revoke: &AtomicBool,
) -> std::result::Result<Compiled, String> {
    let out = compiler
        .compile_input(input, env, opts)
        .map_err(|e| e.to_string())?;
    if out.stats.full {
        for w in &out.warnings {
            tracing::debug!(warning = %w, "compile");
        }
    }
    if !out.policy_changes.is_empty() {
        revoke.store(true, Ordering::Release);
    }
    let tables = out.tables;
    tracing::info!(
        generation = tables.generation,
        full = out.stats.full,
        services_compiled = out.stats.services_compiled,
        services_reassembled = out.stats.services_reassembled,
        pods_rebuilt = out.stats.pods_rebuilt,
        policy_updated = out.stats.policy_updated,
        pods = tables.pods.len(),
        frontends = tables.services.frontend_count(),
        policy_slots_changed = out.policy_changes.slots.len(),
        warnings = out.warnings.len(),
        "tables compiled"
    );
    Ok(Compiled {
        tables,
        full: out.stats.full,
    })
}

fn run_dataplane(args: &RunArgs, stop: &AtomicBool) -> Result<()> {
    let choice = choose_source(
        args.manifests.as_ref(),
        args.kubeconfig.as_ref(),
        std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
        args.register_node,
    )?;
    let mut scanner = HostScanner::new(&args.uplink);
    let mut view = scanner.scan().context("scanning the host")?;
    tracing::info!(
        uplink = %view.uplink.name,
        mac = %view.uplink.mac,
        mtu = view.uplink.mtu,
        addrs = ?view.uplink.addrs,
        pods = view.pods.len(),
        "host scanned"
    );
    let host = Arc::new(HostShared {
        env: Mutex::new(environment(&view)),
    });
    let ct = Arc::new(Conntrack::new(CtConfig::new(args.conntrack_size)));
    let aff = Arc::new(AffinityTable::new((args.conntrack_size / 4).max(1), None));

    // Control plane: manifests source -> runner -> table slot; admin API.
    if args.min_sync_period_ms > args.sync_period_ms {
        bail!(
            "--min-sync-period-ms {} is longer than --sync-period-ms {}",
            args.min_sync_period_ms,
            args.sync_period_ms
        );
    }
    let runner_cfg = RunnerConfig {
        min_interval: Duration::from_millis(args.min_sync_period_ms),
        max_interval: Duration::from_millis(args.sync_period_ms),
        ..RunnerConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(Status::new(&runner_cfg));
    let slot = Arc::new(TableSlot::new());
    let dataplane_view = DataplaneView::new();
    dataplane_view.set_conntrack(ct.clone());
    let mut hooks: Vec<kxdp_control::runner::PublishHook> = Vec::new();
    // Set by the compile callback when a generation changed policy; the
    // hook runs after that generation is published, so flows the new
    // tables deny are removed once no worker can admit them again.
    let revoke = Arc::new(AtomicBool::new(false));
    let hook_revoke = revoke.clone();
    let hook_ct = ct.clone();
    hooks.push(Box::new(move |ev: &PublishEvent<'_>| {
        // UDP through a Service whose endpoint went away: balance the next
        // datagram anew instead of sending it to the dead endpoint until
        // the entry times out (kube-proxy's conntrack cleanup).
        let policy_changed = hook_revoke.swap(false, Ordering::AcqRel);
        let t0 = Instant::now();
        let flushed = flush_after_publish(&hook_ct, ev.tables, policy_changed);
        if flushed > 0 || policy_changed {
            tracing::info!(
                generation = ev.tables.generation,
                flushed,
                policy_changed,
                took_us = t0.elapsed().as_micros() as u64,
                "stale UDP Service entries and revoked connections flushed"
            );
        }
    }));
    let admin = start_admin(
        args,
        AdminState {
            status: status.clone(),
            metrics: metrics.clone(),
            tables: slot.clone(),
        },
        dataplane_view.clone(),
    )?;
    if let Some(server) = &admin {
        hooks.push(server.health_checks().publish_hook());
    }
    let (events_tx, events_rx) = source::channel();
    let mut opts = CompileOptions::new(&args.node);
    opts.masquerade_port_range = args.masquerade_ports;
    let compile_host = host.clone();
    let mut compiler = Compiler::new();
    let compile_revoke = revoke.clone();
    let compile_fn = move |input: &CompileInput<'_>| -> std::result::Result<Compiled, String> {
        let env = lock(&compile_host.env).clone();
        compile_sync(&mut compiler, input, &env, &opts, &compile_revoke)
    };
    let runner = spawn_runner(
        runner_cfg,
        events_rx,
        compile_fn,
        Shared {
            tables: slot.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
            hooks,
        },
    )
    .context("starting the sync runner")?;
    let source = match &choice {
        SourceChoice::Manifests(path) => StateSource::Manifests(
            start_manifests_source(
                ManifestsConfig::new(path),
                events_tx.clone(),
                metrics.clone(),
            )
            .context("starting the manifests source")?,
        ),
        SourceChoice::Kube(connect) => {
            let connect = match connect {
                KubeConnectChoice::InCluster => KubeConnect::InCluster,
                KubeConnectChoice::Kubeconfig(p) => KubeConnect::Kubeconfig(p.clone()),
            };
            let mut cfg = KubeSourceConfig::default();
            if args.register_node {
                let public_ip = view
                    .uplink
                    .addrs
                    .first()
                    .copied()
                    .ok_or_else(|| anyhow!("the uplink has no IPv4 address to register"))?;
                // kxdp's VTEP is the uplink itself: its MAC is the VtepMAC.
                cfg.register = Some(NodeRegistration {
                    node_name: args.node.clone(),
                    public_ip,
                    vtep_mac: view.uplink.mac,
                    vni: 1,
                });
            }
            tracing::info!(
                ?connect,
                register = args.register_node,
                "watching the Kubernetes API"
            );
            StateSource::Kube(
                start_kube_source(connect, cfg, events_tx.clone(), metrics.clone())
                    .context("starting the Kubernetes API source")?,
            )
        }
    };

    let reader = loop {
        if let Some(r) = slot.wait_reader(TICK) {
            break r;
        }
        if stop.load(Ordering::Relaxed) {
            source.stop();
            runner.stop();
            return Ok(());
        }
        if let Some(e) = status.last_error().or_else(|| source.last_error()) {
            tracing::warn!(error = %e, "waiting for the first tables");
        }
    };

    // Next hops the worker finds missing, resolved on demand in the loop.
    let mut on_demand = OnDemandResolver::new(Arc::new(NeighbourRequests::new()));
    let workers = spawn_workers_with(
        args,
        reader,
        Forwarding::Pipeline,
        ct.clone(),
        aff.clone(),
        Some(on_demand.requests().clone()),
    )?;
    let stats: Vec<_> = workers.iter().map(WorkerHandle::stats).collect();
    metrics.set_packet_counters(Arc::new(WorkerPackets(stats.clone())));
    dataplane_view.set_workers(stats);
    let mut dp = Dataplane {
        steering: load_steering(args)?,
        placement: Placement::new(workers.len()),
        workers,
        mode: attach_mode(args.xdp_mode),
        bind: bind_mode(args.bind),
        served: BTreeMap::new(),
        pod_ips: BTreeSet::new(),
        frontends: BTreeSet::new(),
        node_ports: BTreeSet::new(),
        uplink_cfg: None,
        host_addrs: BTreeSet::new(),
        rings: RingSizes::for_umem(args.umem_frames),
        busy_poll: busy_poll(args),
        napi_saved: BTreeMap::new(),
    };
    let uplink_ifindex = view.uplink.ifindex;
    let serve = (|| -> Result<()> {
        // Maps first: once the uplink is attached, traffic to local pods
        // must already be steered to kxdp (not forwarded by the kernel).
        if let Some(t) = slot.current() {
            dp.sync_maps(&t);
        }
        dp.sync_host_addrs(&view.local_addrs);
        dp.attach(
            &view.uplink.name.clone(),
            uplink_ifindex,
            Role::Uplink,
            Ingress::Uplink,
        )?;
        Ok(())
    })();
    if let Err(e) = serve {
        dp.shutdown(false);
        source.stop();
        runner.stop();
        return Err(e);
    }
    let mut failed = dp.sync_pods(&view, uplink_ifindex);
    let mut ready = false;
    let mut synced_gen: Option<u64> = None;
    let mut last_scan = Instant::now();
    let rescan = Duration::from_millis(args.rescan_ms.max(100));
    let mut last_report = Instant::now();
    let gc_budget = (args.conntrack_size / 20).max(256);
    let started = Instant::now();

    while !stop.load(Ordering::Relaxed) {
        // The tick's sleep, serving the worker's neighbour requests; a next
        // hop that resolved meanwhile is scanned (and published) now.
        let neighbour_resolved = on_demand.serve(&scanner, &view, TICK);
        let now = monotonic_ns();
        ct.gc(now, gc_budget);
        aff.gc(now, gc_budget);
        if !dp.workers_running() {
            dp.shutdown(false);
            source.stop();
            runner.stop();
            bail!("a worker thread stopped unexpectedly");
        }
        if let Some(t) = slot.current() {
            if synced_gen != Some(t.generation) {
                dp.sync_maps(&t);
                synced_gen = Some(t.generation);
                // Next hops the dataplane will need: other nodes' VTEPs
                // and the default gateway.
                let hops = t
                    .routes
                    .nodes()
                    .iter()
                    .map(|n| n.vtep_ip)
                    .chain(t.neighbours.default_gateway);
                scanner.resolve(&view, hops);
            }
        }
        if neighbour_resolved || last_scan.elapsed() >= rescan {
            last_scan = Instant::now();
            match scanner.scan() {
                Ok(new) => {
                    if new.uplink.ifindex != uplink_ifindex {
                        tracing::error!(
                            "the uplink changed (ifindex {} -> {}); restart kxdp",
                            uplink_ifindex,
                            new.uplink.ifindex
                        );
                    }
                    dp.sync_host_addrs(&new.local_addrs);
                    failed = dp.sync_pods(&new, uplink_ifindex);
                    if let Some(t) = slot.current() {
                        let hops = t
                            .routes
                            .nodes()
                            .iter()
                            .map(|n| n.vtep_ip)
                            .chain(new.neighbours.default_gateway);
                        scanner.resolve(&new, hops);
                    }
                    if new != view {
                        *lock(&host.env) = environment(&new);
                        // Prompt: frames may be parked until a next hop
                        // resolved on demand is in the tables.
                        if events_tx.send(source::SourceEvent::HostChanged).is_err() {
                            tracing::warn!("sync runner gone: host change not compiled");
                        }
                        tracing::info!(
                            pods = new.pods.len(),
                            neighbours = new.neighbour_list.len(),
                            "host changed"
                        );
                    }
                    view = new;
                }
                Err(e) => tracing::warn!(error = %e, "host scan failed"),
            }
        }
        if !ready && failed == 0 && synced_gen.is_some() && view.pods_without_mac().count() == 0 {
            // Other nodes' VTEPs resolved too, or given up on after
            // NEIGHBOUR_GRACE (a node may be down; the rest works). Checked
            // in the published tables, not the host view: the workers read
            // the tables, and a host change takes a compile to get there
            // (ready before that meant counted `neighbour-unresolved` drops
            // for the first traffic toward other nodes).
            let unresolved: Vec<Ipv4Addr> = slot
                .current()
                .map(|t| {
                    t.routes
                        .nodes()
                        .iter()
                        .map(|n| n.vtep_ip)
                        .filter(|ip| t.neighbours.lookup(*ip).is_none())
                        .collect()
                })
                .unwrap_or_default();
            if unresolved.is_empty() || started.elapsed() >= NEIGHBOUR_GRACE {
                if !unresolved.is_empty() {
                    tracing::warn!(?unresolved, "ready with unresolved node addresses");
                }
                ready = true;
                write_ready(args);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let s = merge(
                &dp.worker_stats()
                    .iter()
                    .map(|s| s.load())
                    .collect::<Vec<_>>(),
            );
            tracing::info!(
                handoffs = s.counters.handoff_sent,
                rx = s.pipeline.rx,
                to_pod = s.pipeline.forwarded_pod,
                vxlan = s.pipeline.forwarded_vxlan,
                uplink = s.pipeline.forwarded_uplink,
                replies = s.pipeline.replies,
                to_host = s.pipeline.to_host,
                conntrack = ct.len(),
                "worker stats"
            );
        }
    }
    tracing::info!("signal received: shutting down");
    source.stop();
    runner.stop();
    if let Some(a) = admin {
        a.stop();
    }
    dp.shutdown(args.leave_attached);
    tracing::info!("kxdp stopped");
    Ok(())
}

/// Tables for `--null-pipeline`: nothing but a node config.
fn empty_tables(node: &str) -> TableSet {
    TableSet {
        generation: 1,
        node: NodeConfig {
            node_name: node.to_owned(),
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

/// `--null-pipeline`: every frame received on one interface of a
/// `--null-pair` leaves unchanged on the other.
fn run_null(args: &RunArgs, stop: &AtomicBool) -> Result<()> {
    if args.null_pairs.is_empty() {
        bail!("--null-pipeline needs at least one --null-pair A,B");
    }
    let (_publisher, reader) = publication(empty_tables(&args.node));
    let workers = spawn_workers(args, reader, Forwarding::Null)?;
    let stats: Vec<_> = workers.iter().map(WorkerHandle::stats).collect();
    // The admin API serves the worker's counters (/metrics, /debug/stats)
    // here too, so benchmarks read the same per-socket statistics in both
    // modes; no tables are compiled, so /readyz stays unready.
    let metrics = Arc::new(Metrics::new());
    metrics.set_packet_counters(Arc::new(WorkerPackets(stats.clone())));
    let view = DataplaneView::new();
    view.set_workers(stats);
    let _admin = start_admin(
        args,
        AdminState {
            status: Arc::new(Status::new(&RunnerConfig::default())),
            metrics,
            tables: Arc::new(TableSlot::new()),
        },
        view,
    )?;
    let mut dp = Dataplane {
        steering: load_steering(args)?,
        placement: Placement::new(workers.len()),
        workers,
        mode: attach_mode(args.xdp_mode),
        bind: bind_mode(args.bind),
        served: BTreeMap::new(),
        pod_ips: BTreeSet::new(),
        frontends: BTreeSet::new(),
        node_ports: BTreeSet::new(),
        uplink_cfg: None,
        host_addrs: BTreeSet::new(),
        rings: RingSizes::for_umem(args.umem_frames),
        busy_poll: busy_poll(args),
        napi_saved: BTreeMap::new(),
    };
    let setup = (|| -> Result<()> {
        for (a, b) in &args.null_pairs {
            let ia = Interface::lookup(a).with_context(|| format!("interface {a}"))?;
            let ib = Interface::lookup(b).with_context(|| format!("interface {b}"))?;
            for i in [&ia, &ib] {
                if !dp.served.contains_key(&i.ifindex) {
                    dp.attach(
                        &i.name,
                        i.ifindex,
                        Role::Pod,
                        Ingress::Pod { ifindex: i.ifindex },
                    )?;
                }
            }
            dp.set_null_peer(ia.ifindex, ib.ifindex)?;
            dp.set_null_peer(ib.ifindex, ia.ifindex)?;
        }
        Ok(())
    })();
    if let Err(e) = setup {
        dp.shutdown(false);
        return Err(e);
    }
    write_ready(args);
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if !dp.workers_running() {
            dp.shutdown(false);
            bail!("a worker thread stopped unexpectedly");
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let s = merge(
                &dp.worker_stats()
                    .iter()
                    .map(|s| s.load())
                    .collect::<Vec<_>>(),
            );
            tracing::info!(
                forwarded = s.counters.null_forwarded,
                no_peer = s.counters.null_no_peer,
                handoffs = s.counters.handoff_sent,
                "null forwarding"
            );
        }
    }
    dp.shutdown(args.leave_attached);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose VTEP (public-ip annotation) is not its InternalIP, a
    /// local pod isolated by a deny-all ingress policy, a remote pod.
    const OWNED_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  annotations:
    flannel.alpha.coreos.com/backend-type: vxlan
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"0e:76:00:00:00:01"}'
    flannel.alpha.coreos.com/public-ip: 192.168.60.1
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 192.168.50.1}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {app: db}}
spec: {nodeName: node-a, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.5}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

    /// Upstream NetworkPolicy: traffic from the node to its pods is always
    /// allowed, whatever policy isolates them. Every address of the node
    /// counts (`NodeConfig::owns`: node IPs, VTEP, the pods' gateway —
    /// the source of host-to-pod traffic through the pod's route — and the
    /// pod CIDR network address), in the daemon's sync compile as in the
    /// from-scratch `compile` (`kxdp trace`). The daemon used to give its
    /// policy compiler the node IPs only and denied the gateway and VTEP.
    #[test]
    fn sync_compile_admits_every_node_address_like_a_full_compile() {
        use kxdp_control::policy::{PolicyDirection, PolicyVerdict, NODE_RULE};
        use kxdp_control::tracker::ChangeSet;

        let report =
            kxdp_control::manifests::load_str(std::path::Path::new("owned.yaml"), OWNED_YAML);
        assert!(
            report.is_clean(),
            "{:?} {:?}",
            report.warnings,
            report.errors
        );
        let state = report.state;
        let opts = CompileOptions::new("node-a");
        let env = NodeEnvironment::synthetic(&state, "node-a");
        let changes = ChangeSet::default();
        let input = CompileInput {
            state: &state,
            changes: &changes,
            generation: 1,
            full: true,
        };
        let revoke = AtomicBool::new(false);
        let daemon = compile_sync(&mut Compiler::new(), &input, &env, &opts, &revoke)
            .expect("sync compile")
            .tables;
        let trace = kxdp_control::compile::compile(&state, &env, &opts, 1)
            .expect("full compile")
            .tables;
        let pod = daemon.pods.iter().next().expect("the local pod").clone();
        assert_eq!(pod.ip, Ipv4Addr::new(10, 244, 1, 5));
        let owned = [
            Ipv4Addr::new(192, 168, 50, 1), // InternalIP
            Ipv4Addr::new(192, 168, 60, 1), // VTEP (public-ip)
            Ipv4Addr::new(10, 244, 1, 1),   // the pods' gateway
            Ipv4Addr::new(10, 244, 1, 0),   // pod CIDR network address
        ];
        for t in [&daemon, &trace] {
            for ip in owned {
                assert!(t.node.owns(ip), "{ip}");
                assert_eq!(
                    t.policy
                        .check(PolicyDirection::Ingress, &pod, ip, IpProto::Tcp, 5432),
                    PolicyVerdict::Allowed { rule: NODE_RULE },
                    "from node address {ip}"
                );
            }
            // Another node's pod and another node's gateway are not this node.
            for ip in [Ipv4Addr::new(10, 244, 2, 5), Ipv4Addr::new(10, 244, 2, 1)] {
                assert_eq!(
                    t.policy
                        .check(PolicyDirection::Ingress, &pod, ip, IpProto::Tcp, 5432),
                    PolicyVerdict::Denied,
                    "from {ip}"
                );
            }
        }
    }

    #[test]
    fn ring_sizes_scale_with_the_umem_and_stay_powers_of_two() {
        let d = RingSizes::for_umem(16384);
        assert_eq!((d.pod_fill, d.pod_ring), (512, 1024));
        assert_eq!((d.uplink_fill, d.uplink_ring), (2048, 4096));
        // Tiny and huge UMEMs are clamped.
        assert_eq!(RingSizes::for_umem(256).pod_fill, 64);
        assert_eq!(RingSizes::for_umem(1 << 20).pod_fill, 2048);
        for frames in [100, 256, 1000, 16384, 50_000, 1 << 20] {
            let r = RingSizes::for_umem(frames);
            assert!(r.pod_ring.is_power_of_two() && r.uplink_ring.is_power_of_two());
            assert!(r.pod_ring >= r.pod_fill && r.uplink_ring >= r.uplink_fill);
        }
    }

    #[test]
    fn pairs_and_ranges_parse_and_reject_nonsense() {
        assert_eq!(parse_pair("a,b"), Ok(("a".into(), "b".into())));
        assert!(parse_pair("a").is_err());
        assert!(parse_pair("a,a").is_err());
        assert!(parse_pair(",b").is_err());
        assert_eq!(parse_range("61000-65535"), Ok((61000, 65535)));
        assert!(parse_range("65535-61000").is_err());
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("1-70000").is_err());
        assert!(parse_range("1000").is_err());
    }

    #[test]
    fn only_port_protocols_are_steered() {
        assert_eq!(proto_of(IpProto::Tcp), Some(Proto::Tcp));
        assert_eq!(proto_of(IpProto::Udp), Some(Proto::Udp));
        assert_eq!(proto_of(IpProto::Sctp), Some(Proto::Sctp));
        assert_eq!(proto_of(IpProto::Icmp), None);
    }

    #[test]
    fn source_choice_prefers_flags_then_in_cluster() {
        let m = PathBuf::from("/m.yaml");
        let k = PathBuf::from("/kubeconfig");
        assert_eq!(
            choose_source(Some(&m), None, Some("10.0.0.1"), false).unwrap(),
            SourceChoice::Manifests(m.clone())
        );
        assert_eq!(
            choose_source(None, Some(&k), Some("10.0.0.1"), true).unwrap(),
            SourceChoice::Kube(KubeConnectChoice::Kubeconfig(k.clone()))
        );
        assert_eq!(
            choose_source(None, None, Some("10.0.0.1"), true).unwrap(),
            SourceChoice::Kube(KubeConnectChoice::InCluster)
        );
        assert!(choose_source(None, None, None, false).is_err());
        assert!(choose_source(None, None, Some(""), false).is_err());
        assert!(choose_source(Some(&m), Some(&k), None, false).is_err());
        let e = choose_source(Some(&m), None, None, true).unwrap_err();
        assert!(e.to_string().contains("--register-node"), "{e}");
    }

    #[test]
    fn null_tables_are_empty_and_consistent() {
        let t = empty_tables("n");
        assert_eq!(t.node.node_name, "n");
        assert!(t.pods.is_empty());
        assert_eq!(t.services.frontend_count(), 0);
    }
}
