//! Service frontends: backend choice (session affinity, Maglev), rejects,
//! and the masquerade decision.
//!
//! Semantics follow kube-proxy: a Service with no endpoints at all rejects
//! new connections (ICMP port unreachable); a traffic policy of Local with no
//! local endpoint drops; `loadBalancerSourceRanges` filters LoadBalancer IPs.

use std::net::Ipv4Addr;

use crate::conntrack::FlowKey;
use crate::tables::{Backend, Frontend, FrontendKind, TableSet};
use crate::trace_stage;
use crate::wire::flow_hash;
use crate::DropReason;

use super::parse::Headers;
use super::{Origin, Pipeline, Stage, Tracer};

/// How many source ports a new masqueraded flow tries before giving up.
pub const SNAT_PORT_ATTEMPTS: u16 = 16;

/// A chosen backend.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    pub service_port: u32,
    pub kind: FrontendKind,
    pub backend: Backend,
}

/// Why a new flow to a Service cannot proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Tell the client: ICMP port unreachable.
    Reject(DropReason),
    /// Drop silently.
    Drop(DropReason),
}

/// Choose a backend for a new flow to `frontend`. `Ok(None)` when the
/// packet is not for a Service.
pub fn choose<T: Tracer>(
    p: &mut Pipeline,
    t: &TableSet,
    now: u64,
    h: &Headers,
    frontend: Option<Frontend>,
    tr: &mut T,
) -> Result<Option<Choice>, Refusal> {
    let Some(fe) = frontend else {
        if t.services.is_virtual_ip(h.dst) {
            // A Service IP on a port no Service uses: like kube-proxy's
            // nftables mode, refuse rather than route it anywhere.
            trace_stage!(
                tr,
                Stage::Service,
                "{} is a Service IP but port {} is not a Service port: reject",
                h.dst,
                h.dport
            );
            return Err(Refusal::Reject(DropReason::NoServicePort));
        }
        trace_stage!(tr, Stage::Service, "{} is not a Service frontend", h.dst);
        return Ok(None);
    };
    let Some(sp) = t.services.port(fe.service_port) else {
        return Err(Refusal::Drop(DropReason::NoRoute));
    };
    if fe.kind == FrontendKind::LoadBalancer
        && !sp.lb_source_ranges.is_empty()
        && !sp.lb_source_ranges.iter().any(|c| c.contains(h.src))
    {
        trace_stage!(
            tr,
            Stage::Service,
            "{} via load balancer: client {} outside loadBalancerSourceRanges",
            sp.display_name(),
            h.src
        );
        return Err(Refusal::Drop(DropReason::LoadBalancerSourceRange));
    }
    let set = sp.backends_for(fe.kind);
    let uses_local_set = if fe.kind.is_external() {
        sp.external_local
    } else {
        sp.internal_local
    };
    if set.is_empty() {
        if !sp.has_endpoints {
            trace_stage!(
                tr,
                Stage::Service,
                "{} has no endpoints: reject",
                sp.display_name()
            );
            return Err(Refusal::Reject(DropReason::ServiceNoEndpoints));
        }
        trace_stage!(
            tr,
            Stage::Service,
            "{} ({:?}) has no local endpoints and its traffic policy is Local: drop",
            sp.display_name(),
            fe.kind
        );
        return Err(Refusal::Drop(DropReason::ServiceNoLocalEndpoints));
    }
    // Session affinity: the client keeps its backend while it stays usable.
    let mut backend = None;
    let mut how = "maglev";
    if let Some(timeout) = sp.affinity_timeout_secs {
        let timeout_ns = u64::from(timeout) * 1_000_000_000;
        if let Some((ip, port)) = p.affinity().lookup(h.src, fe.service_port, now, timeout_ns) {
            if let Some(b) = set.backends.iter().find(|b| b.ip == ip && b.port == port) {
                backend = Some(*b);
                how = "session affinity";
            }
        }
    }
    let backend = match backend {
        Some(b) => b,
        None => {
            let hash = flow_hash(h.src, h.dst, h.sport, h.dport, h.proto);
            let b = *set
                .select(hash)
                .ok_or(Refusal::Reject(DropReason::ServiceNoEndpoints))?;
            if let Some(timeout) = sp.affinity_timeout_secs {
                let timeout_ns = u64::from(timeout) * 1_000_000_000;
                if p.affinity()
                    .insert(h.src, fe.service_port, b.ip, b.port, now, timeout_ns)
                    .is_err()
                {
                    // The flow still goes through; only stickiness is lost.
                    p.stats.affinity_insert_failures += 1;
                }
            }
            b
        }
    };
    trace_stage!(
        tr,
        Stage::Service,
        "{} via {:?}: backend {}:{} ({}, {} of {} usable, {})",
        sp.display_name(),
        fe.kind,
        backend.ip,
        backend.port,
        how,
        if backend.local { "local" } else { "remote" },
        set.backends.len(),
        if uses_local_set {
            "local set"
        } else {
            "cluster set"
        }
    );
    Ok(Some(Choice {
        service_port: fe.service_port,
        kind: fe.kind,
        backend,
    }))
}

/// The source address a new flow is masqueraded to, if any.
///
/// - Hairpin (a pod reaching itself through a Service): SNAT so the reply
///   comes back through kxdp instead of short-circuiting inside the pod.
/// - External traffic (not from a pod or a node) to a Service, with
///   externalTrafficPolicy Cluster (or to a ClusterIP from outside): SNAT
///   so the reply returns via this node.
/// - Pod traffic leaving the cluster's pod CIDRs: masquerade to the node IP.
///
/// The address is what the kernel path would pick as the egress
/// interface's address: the pods' gateway toward a local backend, this
/// node's Flannel VTEP address (pod CIDR network address) toward a remote
/// one, the primary node IP toward the uplink.
pub fn snat_address(
    t: &TableSet,
    h: &Headers,
    choice: Option<&Choice>,
    origin: Origin,
    post_dst: Ipv4Addr,
) -> Option<Ipv4Addr> {
    let toward = |dst: Ipv4Addr| -> Option<Ipv4Addr> {
        if t.pods.by_ip(dst).is_some() {
            t.node.gateway_ip.or(t.node.primary_ip())
        } else if t.routes.lookup(dst).is_some() {
            t.node.pod_cidr.map(|c| c.addr()).or(t.node.primary_ip())
        } else {
            t.node.primary_ip()
        }
    };
    let from_cluster = t.node.in_cluster(h.src) || t.node.is_node_ip(h.src);
    match choice {
        Some(c) => {
            if h.src == c.backend.ip {
                return toward(post_dst);
            }
            let external_local = c.kind.is_external()
                && t.services
                    .port(c.service_port)
                    .is_some_and(|sp| sp.external_local);
            if !from_cluster && !external_local {
                return toward(post_dst);
            }
            None
        }
        None => {
            let leaving = !t.node.in_cluster(post_dst) && t.pods.by_ip(post_dst).is_none();
            if origin.src_pod_ip.is_some() && leaving && !t.node.is_node_ip(post_dst) {
                return t.node.primary_ip();
            }
            None
        }
    }
}

/// The `attempt`-th candidate masquerade port for `key`: first the original
/// source port when it lies in the range (like Linux), then hashed picks.
pub fn snat_port(range: (u16, u16), key: &FlowKey, attempt: u16) -> u16 {
    let (lo, hi) = if range.0 <= range.1 {
        range
    } else {
        (range.1, range.0)
    };
    if attempt == 0 && key.sport >= lo && key.sport <= hi {
        return key.sport;
    }
    let span = u32::from(hi - lo) + 1;
    let h = flow_hash(key.src, key.dst, key.sport, key.dport, key.proto)
        .wrapping_add(u32::from(attempt).wrapping_mul(0x9e37_79b9));
    lo + (h % span) as u16
}
