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
///
/// Adding a counter: add it to [`WorkerCounters::named`] and [`merge`]
/// too (a test checks `named` covers every field).
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
    /// Frames copied to another worker that serves their egress.
    pub handoff_sent: u64,
    /// Frames other workers handed over to this one.
    pub handoff_received: u64,
    /// Frames not handed over because the lane to their worker was full
    /// (that worker is behind): dropped.
    pub handoff_full: u64,
    /// Handed-over frames dropped because this worker's store had no free
    /// frame to copy them into.
    pub handoff_no_frame: u64,
    /// Handed-over frames dropped because this worker no longer serves
    /// their egress (the interface went away meanwhile).
    pub handoff_no_port: u64,
}

impl WorkerCounters {
    /// `(name, value)` of every counter, in declaration order; the names
    /// are the field names (the keys of `/debug/stats` and the `counter`
    /// label of `/metrics`).
    pub fn named(&self) -> [(&'static str, u64); 19] {
        [
            ("iterations", self.iterations),
            ("idle_iterations", self.idle_iterations),
            ("batches", self.batches),
            ("no_egress_port", self.no_egress_port),
            ("to_host_released", self.to_host_released),
            ("frame_errors", self.frame_errors),
            ("null_forwarded", self.null_forwarded),
            ("null_no_peer", self.null_no_peer),
            ("neighbour_requests", self.neighbour_requests),
            ("neighbour_requests_full", self.neighbour_requests_full),
            ("neighbour_parked", self.neighbour_parked),
            ("neighbour_parked_sent", self.neighbour_parked_sent),
            ("neighbour_parked_expired", self.neighbour_parked_expired),
            ("neighbour_park_full", self.neighbour_park_full),
            ("handoff_sent", self.handoff_sent),
            ("handoff_received", self.handoff_received),
            ("handoff_full", self.handoff_full),
            ("handoff_no_frame", self.handoff_no_frame),
            ("handoff_no_port", self.handoff_no_port),
        ]
    }
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
        t.handoff_sent += c.handoff_sent;
        t.handoff_received += c.handoff_received;
        t.handoff_full += c.handoff_full;
        t.handoff_no_frame += c.handoff_no_frame;
        t.handoff_no_port += c.handoff_no_port;
        total.ports.extend(s.ports.iter().cloned());
        total.free_frames += s.free_frames;
        total.published_ns = total.published_ns.max(s.published_ns);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_lists_every_counter_and_merge_sums_them() {
        // Destructuring fails to compile when a field is added without
        // updating this test (and so, the reader is reminded, `named`).
        let WorkerCounters {
            iterations: _,
            idle_iterations: _,
            batches: _,
            no_egress_port: _,
            to_host_released: _,
            frame_errors: _,
            null_forwarded: _,
            null_no_peer: _,
            neighbour_requests: _,
            neighbour_requests_full: _,
            neighbour_parked: _,
            neighbour_parked_sent: _,
            neighbour_parked_expired: _,
            neighbour_park_full: _,
            handoff_sent: _,
            handoff_received: _,
            handoff_full: _,
            handoff_no_frame: _,
            handoff_no_port: _,
        } = WorkerCounters::default();
        // Distinct values per field: `named` must show each exactly once.
        let c = WorkerCounters {
            iterations: 1,
            idle_iterations: 2,
            batches: 3,
            no_egress_port: 4,
            to_host_released: 5,
            frame_errors: 6,
            null_forwarded: 7,
            null_no_peer: 8,
            neighbour_requests: 9,
            neighbour_requests_full: 10,
            neighbour_parked: 11,
            neighbour_parked_sent: 12,
            neighbour_parked_expired: 13,
            neighbour_park_full: 14,
            handoff_sent: 15,
            handoff_received: 16,
            handoff_full: 17,
            handoff_no_frame: 18,
            handoff_no_port: 19,
        };
        let values: Vec<u64> = c.named().iter().map(|(_, v)| *v).collect();
        assert_eq!(values, (1..=19).collect::<Vec<u64>>());
        let snap = |c: &WorkerCounters| {
            Arc::new(WorkerSnapshot {
                counters: c.clone(),
                ..WorkerSnapshot::default()
            })
        };
        let total = merge(&[snap(&c), snap(&c)]);
        let doubled: Vec<u64> = total.counters.named().iter().map(|(_, v)| *v).collect();
        assert_eq!(doubled, (1..=19).map(|v| 2 * v).collect::<Vec<u64>>());
    }
}
