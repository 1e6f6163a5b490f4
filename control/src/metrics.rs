//! Prometheus metrics of the control plane (`/metrics`), every name
//! prefixed `kxdp_`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kxdp_sync_duration_seconds` | histogram | `mode` = `full` / `partial` |
//! | `kxdp_network_programming_duration_seconds` | histogram | — (EndpointSlice `last-change-trigger-time` -> publish) |
//! | `kxdp_objects` | gauge | `kind` |
//! | `kxdp_generation` | gauge | — (the generation the workers see) |
//! | `kxdp_last_publish_timestamp_seconds` | gauge | — |
//! | `kxdp_watch_errors_total` | counter | `kind` |
//! | `kxdp_watch_relists_total` | counter | `kind` (relists after the first list) |
//! | `kxdp_decode_errors_total` | counter | `kind` (objects that could not be decoded and were skipped) |
//! | `kxdp_sync_errors_total` | counter | — (compiles that failed; previous tables kept) |
//! | `kxdp_manifest_errors_total` | counter | — (manifest loads rejected; previous tables kept) |
//! | `kxdp_forward_packets_total` | counter | `direction` (from [`PacketCounters`]) |
//! | `kxdp_drop_packets_total` | counter | `reason` (from [`PacketCounters`]) |
//! | `kxdp_worker_rx_packets_total` | counter | `worker` |
//! | `kxdp_worker_forward_packets_total` | counter | `worker`, `direction` |
//! | `kxdp_worker_drop_packets_total` | counter | `worker`, `reason` |
//! | `kxdp_worker_events_total` | counter | `worker`, `counter` (the worker loop's own counters: `handoff_sent`, `handoff_received`, `handoff_full`, `neighbour_parked`, `no_egress_port`, ... as in `/debug/stats`) |
//!
//! The `kxdp_forward_packets_total` / `kxdp_drop_packets_total` families
//! are the sums over workers; the `kxdp_worker_*` families are the same
//! counters per worker.
//!
//! Packet counters live in the workers; the binary hands an implementation
//! of [`PacketCounters`] to [`Metrics::set_packet_counters`] and it is read
//! at every scrape.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::source::Kind;

/// Worker packet counters, summed over workers, read at scrape time.
pub trait PacketCounters: Send + Sync + 'static {
    /// `(direction, packets)` pairs, e.g. `("to-pod", 123)`.
    fn forward_packets(&self) -> Vec<(String, u64)>;
    /// `(reason, packets)` pairs, reason as the drop reason's stable name.
    fn drop_packets(&self) -> Vec<(String, u64)>;
    /// `(worker, packets received)`.
    fn worker_rx_packets(&self) -> Vec<(usize, u64)> {
        Vec::new()
    }
    /// `(worker, direction, packets)`.
    fn worker_forward_packets(&self) -> Vec<(usize, String, u64)> {
        Vec::new()
    }
    /// `(worker, reason, packets)`.
    fn worker_drop_packets(&self) -> Vec<(usize, String, u64)> {
        Vec::new()
    }
    /// `(worker, counter, value)` of the worker loop's own counters.
    fn worker_events(&self) -> Vec<(usize, String, u64)> {
        Vec::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerDirectionLabel {
    worker: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerReasonLabel {
    worker: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerCounterLabel {
    worker: String,
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn sync_histogram() -> Histogram {
    // 0.1 ms .. ~26 s: a partial sync (one endpoint change) takes about
    // 0.1-0.3 ms, a full one at 30k Services about a second; kube-proxy's
    // 1 ms first bucket would put every partial sync in one bucket.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// Every control-plane metric; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    sync_duration: HistogramFamily<ModeLabel>,
    programming_latency: Histogram,
    objects: Family<KindLabel, Gauge>,
    generation: Gauge,
    last_publish: Gauge<f64, std::sync::atomic::AtomicU64>,
    watch_errors: Family<KindLabel, Counter>,
    relists: Family<KindLabel, Counter>,
    decode_errors: Family<KindLabel, Counter>,
    sync_errors: Counter,
    manifest_errors: Counter,
    packets: Arc<PacketCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kxdp");
        let sync_duration: HistogramFamily<ModeLabel> =
            Family::new_with_constructor(sync_histogram as fn() -> Histogram);
        // 1 ms .. ~524 s: programming latency includes the controller's and
        // the watch's delays.
        let programming_latency = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let objects = Family::<KindLabel, Gauge>::default();
        let generation = Gauge::default();
        let last_publish = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let watch_errors = Family::<KindLabel, Counter>::default();
        let relists = Family::<KindLabel, Counter>::default();
        let decode_errors = Family::<KindLabel, Counter>::default();
        let sync_errors = Counter::default();
        let manifest_errors = Counter::default();
        let packets = Arc::new(PacketCollector::default());
        registry.register(
            "sync_duration_seconds",
            "Time to compile and publish one generation of tables",
            sync_duration.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time to the publish of tables containing it",
            programming_latency.clone(),
        );
        registry.register(
            "objects",
            "Objects in the desired state, per kind",
            objects.clone(),
        );
        registry.register(
            "generation",
            "Generation of the published tables",
            generation.clone(),
        );
        registry.register(
            "last_publish_timestamp_seconds",
            "Unix time of the last publish",
            last_publish.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors of the Kubernetes watch streams",
            watch_errors.clone(),
        );
        registry.register(
            "watch_relists",
            "Relists after the initial list (410 Gone, restarts)",
            relists.clone(),
        );
        registry.register(
            "decode_errors",
            "Objects that could not be decoded and were skipped",
            decode_errors.clone(),
        );
        registry.register(
            "sync_errors",
            "Compiles that failed (the previous tables stay published)",
            sync_errors.clone(),
        );
        registry.register(
            "manifest_errors",
            "Manifest loads rejected because of errors (the previous tables stay published)",
            manifest_errors.clone(),
        );
        registry.register_collector(Box::new(packets.clone()));
        for kind in Kind::ALL {
            // Present from the start, so a scrape shows every kind.
            objects.get_or_create(&kind_label(kind)).set(0);
            let _ = watch_errors.get_or_create(&kind_label(kind));
            let _ = relists.get_or_create(&kind_label(kind));
            let _ = decode_errors.get_or_create(&kind_label(kind));
        }
        Metrics {
            registry,
            sync_duration,
            programming_latency,
            objects,
            generation,
            last_publish,
            watch_errors,
            relists,
            decode_errors,
            sync_errors,
            manifest_errors,
            packets,
        }
    }

    /// Export the workers' packet counters from now on.
    pub fn set_packet_counters(&self, source: Arc<dyn PacketCounters>) {
        *self
            .packets
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would come from a
        // collector and leaves a partial but valid prefix.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }

    pub(crate) fn observe_sync(&self, full: bool, took: Duration) {
        let mode = if full { "full" } else { "partial" };
        self.sync_duration
            .get_or_create(&ModeLabel { mode })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn observe_programming_latency(&self, latency: Duration) {
        self.programming_latency.observe(latency.as_secs_f64());
    }

    pub(crate) fn set_objects(&self, kind: Kind, n: usize) {
        self.objects
            .get_or_create(&kind_label(kind))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_published(&self, generation: u64, unix_secs: f64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.last_publish.set(unix_secs);
    }

    pub(crate) fn watch_error(&self, kind: Kind) {
        self.watch_errors.get_or_create(&kind_label(kind)).inc();
    }

    pub(crate) fn relist(&self, kind: Kind) {
        self.relists.get_or_create(&kind_label(kind)).inc();
    }

    pub(crate) fn decode_error(&self, kind: Kind) {
        self.decode_errors.get_or_create(&kind_label(kind)).inc();
    }

    pub(crate) fn sync_error(&self) {
        self.sync_errors.inc();
    }

    pub(crate) fn manifest_error(&self) {
        self.manifest_errors.inc();
    }

    /// Watch errors counted so far for `kind` (tests, `kxdp get stats`).
    pub fn watch_errors(&self, kind: Kind) -> u64 {
        self.watch_errors.get_or_create(&kind_label(kind)).get()
    }

    /// Relists counted so far for `kind`.
    pub fn relists(&self, kind: Kind) -> u64 {
        self.relists.get_or_create(&kind_label(kind)).get()
    }

    /// Undecodable objects counted so far for `kind`.
    pub fn decode_errors(&self, kind: Kind) -> u64 {
        self.decode_errors.get_or_create(&kind_label(kind)).get()
    }

    /// Rejected manifest loads so far.
    pub fn manifest_errors(&self) -> u64 {
        self.manifest_errors.get()
    }

    /// Failed compiles so far.
    pub fn sync_errors(&self) -> u64 {
        self.sync_errors.get()
    }
}

fn kind_label(kind: Kind) -> KindLabel {
    KindLabel {
        kind: kind.plural(),
    }
}

/// Reads [`PacketCounters`] at scrape time.
#[derive(Default)]
struct PacketCollector {
    source: Mutex<Option<Arc<dyn PacketCounters>>>,
}

impl fmt::Debug for PacketCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketCollector").finish_non_exhaustive()
    }
}

impl Collector for PacketCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(source) = source else {
            return Ok(());
        };
        let forward = source.forward_packets();
        let mut family = encoder.encode_descriptor(
            "forward_packets",
            "Packets forwarded by the workers",
            None,
            MetricType::Counter,
        )?;
        for (direction, n) in forward {
            let labels = DirectionLabel { direction };
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let drops = source.drop_packets();
        let mut family = encoder.encode_descriptor(
            "drop_packets",
            "Packets dropped by the workers, per drop reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in drops {
            let labels = ReasonLabel { reason };
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let rx = source.worker_rx_packets();
        if !rx.is_empty() {
            let mut family = encoder.encode_descriptor(
                "worker_rx_packets",
                "Packets received, per worker",
                None,
                MetricType::Counter,
            )?;
            for (w, n) in rx {
                let labels = WorkerLabel {
                    worker: w.to_string(),
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let forward = source.worker_forward_packets();
        if !forward.is_empty() {
            let mut family = encoder.encode_descriptor(
                "worker_forward_packets",
                "Packets forwarded, per worker and direction",
                None,
                MetricType::Counter,
            )?;
            for (w, direction, n) in forward {
                let labels = WorkerDirectionLabel {
                    worker: w.to_string(),
                    direction,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let drops = source.worker_drop_packets();
        if !drops.is_empty() {
            let mut family = encoder.encode_descriptor(
                "worker_drop_packets",
                "Packets dropped, per worker and drop reason",
                None,
                MetricType::Counter,
            )?;
            for (w, reason, n) in drops {
                let labels = WorkerReasonLabel {
                    worker: w.to_string(),
                    reason,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let events = source.worker_events();
        if !events.is_empty() {
            let mut family = encoder.encode_descriptor(
                "worker_events",
                "Worker loop counters (hand-offs between workers, parked frames, \
                 neighbour requests, frames without an egress port), per worker",
                None,
                MetricType::Counter,
            )?;
            for (w, counter, n) in events {
                let labels = WorkerCounterLabel {
                    worker: w.to_string(),
                    counter,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl PacketCounters for Fixed {
        fn forward_packets(&self) -> Vec<(String, u64)> {
            vec![("to-pod".into(), 7)]
        }
        fn drop_packets(&self) -> Vec<(String, u64)> {
            vec![("policy-denied".into(), 3)]
        }
    }

    struct TwoWorkers;
    impl PacketCounters for TwoWorkers {
        fn forward_packets(&self) -> Vec<(String, u64)> {
            vec![("to-pod".into(), 5)]
        }
        fn drop_packets(&self) -> Vec<(String, u64)> {
            Vec::new()
        }
        fn worker_rx_packets(&self) -> Vec<(usize, u64)> {
            vec![(0, 4), (1, 6)]
        }
        fn worker_forward_packets(&self) -> Vec<(usize, String, u64)> {
            vec![(0, "to-pod".into(), 2), (1, "to-pod".into(), 3)]
        }
        fn worker_drop_packets(&self) -> Vec<(usize, String, u64)> {
            vec![(1, "no-route".into(), 1)]
        }
        fn worker_events(&self) -> Vec<(usize, String, u64)> {
            vec![
                (0, "handoff_received".into(), 3),
                (1, "handoff_sent".into(), 3),
                (1, "neighbour_parked".into(), 2),
            ]
        }
    }

    #[test]
    fn per_worker_families_carry_a_worker_label() {
        let m = Metrics::new();
        m.set_packet_counters(Arc::new(TwoWorkers));
        let text = m.encode();
        for needle in [
            "kxdp_forward_packets_total{direction=\"to-pod\"} 5",
            "kxdp_worker_rx_packets_total{worker=\"1\"} 6",
            "kxdp_worker_forward_packets_total{worker=\"0\",direction=\"to-pod\"} 2",
            "kxdp_worker_drop_packets_total{worker=\"1\",reason=\"no-route\"} 1",
            "kxdp_worker_events_total{worker=\"0\",counter=\"handoff_received\"} 3",
            "kxdp_worker_events_total{worker=\"1\",counter=\"handoff_sent\"} 3",
            "kxdp_worker_events_total{worker=\"1\",counter=\"neighbour_parked\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // A source without per-worker counters adds no empty families.
        m.set_packet_counters(Arc::new(Fixed));
        assert!(!m.encode().contains("kxdp_worker_"));
    }

    #[test]
    fn exposition_has_prefixed_names_and_packet_counters() {
        let m = Metrics::new();
        m.observe_sync(true, Duration::from_millis(3));
        m.watch_error(Kind::Pod);
        m.set_published(4, 1.0);
        let text = m.encode();
        assert!(!text.contains("kxdp_forward_packets_total"), "{text}");
        m.set_packet_counters(Arc::new(Fixed));
        let text = m.encode();
        for needle in [
            "kxdp_sync_duration_seconds_count{mode=\"full\"} 1",
            "kxdp_watch_errors_total{kind=\"pods\"} 1",
            "kxdp_generation 4",
            "kxdp_objects{kind=\"services\"} 0",
            "kxdp_forward_packets_total{direction=\"to-pod\"} 7",
            "kxdp_drop_packets_total{reason=\"policy-denied\"} 3",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(m.watch_errors(Kind::Pod), 1);
    }
}
