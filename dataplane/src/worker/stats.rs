//! Per-worker statistics, published as snapshots.
//!
//! A worker counts in plain integers it owns ([`WorkerStats`] in the
//! pipeline, [`WorkerCounters`] here, [`PortStats`] in the ports) and every
//! `stats_interval` publishes one immutable [`WorkerSnapshot`] with a single
//! `ArcSwap` store. Readers (`/metrics`, `kxdp top`, tests) load the latest
//! snapshot without ever making the worker wait.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::io::PortStats;
use crate::pipeline::{Ingress, WorkerStats};

/// Counters of the worker loop itself (the pipeline counts verdicts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Loop iterations.
    pub iterations: u64,
    /// Iterations that received nothing.
    pub idle_iterations: u64,
    /// Non-empty rx batches.
    pub batches: u64,
    /// Frames the pipeline wanted sent to an interface this worker has no
    /// port on (a pod veth not opened yet, or no uplink port): released.
    pub no_egress_port: u64,
    /// `ToHost` frames released (see the module docs of `worker`).
    pub to_host_released: u64,
    /// Frames whose buffer view or bounds were invalid: released.
    pub frame_errors: u64,
    /// Null forwarding: frames sent to the configured peer.
    pub null_forwarded: u64,
    /// Null forwarding: frames from an interface without a peer.
    pub null_no_peer: u64,
    /// Unresolved next hops newly signalled to the control loop.
    pub neighbour_requests: u64,
    /// Signals dropped because the request set was full.
    pub neighbour_requests_full: u64,
    /// Frames held for an unresolved next hop.
    pub neighbour_parked: u64,
    /// ... of which were sent once it resolved.
    pub neighbour_parked_sent: u64,
    /// ... of which waited in vain and were released.
    pub neighbour_parked_expired: u64,
    /// Frames for an unresolved next hop not held (no room): released.
    pub neighbour_park_full: u64,
}

/// Counters of one port at snapshot time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSnapshot {
    pub ifindex: u32,
    pub ingress: Ingress,
    pub stats: PortStats,
}

/// Everything one worker publishes.
#[derive(Clone, Debug, Default)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub pipeline: WorkerStats,
    pub counters: WorkerCounters,
    pub ports: Vec<PortSnapshot>,
    /// Frames free in the worker's store.
    pub free_frames: usize,
    /// [`super::monotonic_ns`] at publication (0: never published).
    pub published_ns: u64,
}

/// The latest snapshot of one worker.
#[derive(Debug)]
pub struct SharedStats {
    current: ArcSwap<WorkerSnapshot>,
}

impl SharedStats {
    /// An empty snapshot for worker `worker`.
    pub fn new(worker: usize) -> Self {
        SharedStats {
            current: ArcSwap::from_pointee(WorkerSnapshot {
                worker,
                ..WorkerSnapshot::default()
            }),
        }
    }

    /// Replace the snapshot (worker side).
    pub fn publish(&self, snapshot: WorkerSnapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// The latest snapshot.
    pub fn load(&self) -> Arc<WorkerSnapshot> {
        self.current.load_full()
    }
}

/// Sum of several workers' snapshots (pipeline and loop counters; ports
/// are concatenated).
pub fn merge(snapshots: &[Arc<WorkerSnapshot>]) -> WorkerSnapshot {
    let mut total = WorkerSnapshot::default();
    for s in snapshots {
        total.pipeline.merge(&s.pipeline);
        let c = &s.counters;
        let t = &mut total.counters;
        t.iterations += c.iterations;
        t.idle_iterations += c.idle_iterations;
        t.batches += c.batches;
        t.no_egress_port += c.no_egress_port;
        t.to_host_released += c.to_host_released;
        t.frame_errors += c.frame_errors;
        t.null_forwarded += c.null_forwarded;
        t.null_no_peer += c.null_no_peer;
        t.neighbour_requests += c.neighbour_requests;
        t.neighbour_requests_full += c.neighbour_requests_full;
        t.neighbour_parked += c.neighbour_parked;
        t.neighbour_parked_sent += c.neighbour_parked_sent;
        t.neighbour_parked_expired += c.neighbour_parked_expired;
        t.neighbour_park_full += c.neighbour_park_full;
        total.ports.extend(s.ports.iter().cloned());
        total.free_frames += s.free_frames;
        total.published_ns = total.published_ns.max(s.published_ns);
    }
    total
}
