//! Stage-by-stage decision records for `kxdp trace` and marked packets.
//!
//! Workers run the pipeline with [`NoTrace`], whose methods are empty and
//! inline away, so tracing costs nothing on the hot path. `kxdp trace` runs
//! the same code with a [`TraceLog`], which allocates a line per stage.

use serde::Serialize;

/// The pipeline stages, in order (the order is shown in `process`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Parse,
    Arp,
    LocalDelivery,
    VxlanDecap,
    AntiSpoof,
    Ttl,
    Conntrack,
    Service,
    PolicyEgress,
    PolicyIngress,
    Nat,
    ConntrackCommit,
    Route,
    Encap,
    Reply,
}

impl Stage {
    /// The stage's name in trace output.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Arp => "arp",
            Stage::LocalDelivery => "local-delivery",
            Stage::VxlanDecap => "vxlan-decap",
            Stage::AntiSpoof => "anti-spoof",
            Stage::Ttl => "ttl",
            Stage::Conntrack => "conntrack",
            Stage::Service => "service",
            Stage::PolicyEgress => "policy-egress",
            Stage::PolicyIngress => "policy-ingress",
            Stage::Nat => "nat",
            Stage::ConntrackCommit => "conntrack-commit",
            Stage::Route => "route",
            Stage::Encap => "vxlan-encap",
            Stage::Reply => "reply",
        }
    }
}

/// Receives one record per stage decision.
pub trait Tracer {
    /// True when records are kept; callers skip formatting otherwise.
    fn enabled(&self) -> bool;
    /// Record `decision` for `stage`.
    fn record(&mut self, stage: Stage, decision: std::fmt::Arguments<'_>);
}

/// The hot-path tracer: records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn enabled(&self) -> bool {
        false
    }
    #[inline(always)]
    fn record(&mut self, _stage: Stage, _decision: std::fmt::Arguments<'_>) {}
}

/// One stage decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageRecord {
    pub stage: &'static str,
    pub decision: String,
}

/// A tracer that keeps every record.
#[derive(Clone, Debug, Default)]
pub struct TraceLog {
    pub records: Vec<StageRecord>,
}

impl Tracer for TraceLog {
    fn enabled(&self) -> bool {
        true
    }
    fn record(&mut self, stage: Stage, decision: std::fmt::Arguments<'_>) {
        self.records.push(StageRecord {
            stage: stage.name(),
            decision: decision.to_string(),
        });
    }
}

/// Record a formatted decision when the tracer is enabled; formatting is
/// skipped entirely otherwise.
#[macro_export]
macro_rules! trace_stage {
    ($tracer:expr, $stage:expr, $($fmt:tt)*) => {
        if $crate::pipeline::Tracer::enabled(&*$tracer) {
            $crate::pipeline::Tracer::record(&mut *$tracer, $stage, format_args!($($fmt)*));
        }
    };
}
