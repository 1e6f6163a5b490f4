//! Services -> [`ServiceTable`], following kube-proxy (`pkg/proxy`:
//! `serviceport.go`, `endpointslicecache.go`, `topology.go`).
//!
//! Which Services: all types but ExternalName; headless ones (`clusterIP:
//! None`) and ones without an allocated clusterIP are skipped, as kube-proxy
//! does; a Service labelled `service.kubernetes.io/service-proxy-name` is
//! programmed only when the label equals [`CompileOptions::proxy_name`].
//!
//! Per ServicePort (TCP, UDP, SCTP):
//! - frontends: every IPv4 `clusterIPs` entry (whatever the type),
//!   `externalIPs`, and `status.loadBalancer.ingress[].ip` except entries
//!   with `ipMode: Proxy` (the load balancer proxies: traffic does not arrive
//!   addressed to the VIP); NodePort on the node addresses for types
//!   NodePort and LoadBalancer when the nodePort lies in the configured
//!   range (else a warning and no NodePort);
//! - `sessionAffinity: ClientIP`: timeout `timeoutSeconds`, default 10800,
//!   clamped into 1..=86400 with a warning;
//! - `internalTrafficPolicy: Local` applies to ClusterIP traffic;
//!   `externalTrafficPolicy: Local` only to externally accessible Services
//!   (NodePort, LoadBalancer, or with externalIPs), like kube-proxy's
//!   `ExternalPolicyLocal`;
//! - `loadBalancerSourceRanges` (whitespace-trimmed, IPv4 entries) filter
//!   the LoadBalancer VIPs. Invalid entries are dropped with a warning. When
//!   the Service lists ranges but none is valid at all, kxdp fails closed:
//!   the LoadBalancer VIPs of that Service are not programmed (kube-proxy
//!   would drop the invalid entries and so open the VIPs to everyone; the
//!   API server rejects such Services, so only hand-written manifests hit
//!   this). Valid IPv6-only ranges leave IPv4 unfiltered, as in kube-proxy;
//! - `healthCheckNodePort` for LoadBalancer Services with eTP Local.
//!
//! Endpoints: the EndpointSlices labelled `kubernetes.io/service-name` in
//! the Service's namespace (plus derived ones), `addressType: IPv4` only,
//! ports matched by ServicePort *name* and protocol, first address of each
//! endpoint. Conditions default ready = true, serving = true, terminating =
//! false. The same ip:port in several slices counts once (a ready copy
//! wins, as in kube-proxy's endpointslicecache). Then kube-proxy's `CategorizeEndpoints`: the cluster set is the
//! ready endpoints, or if none is ready the serving-and-terminating ones;
//! the local set is the same rule over endpoints on this node;
//! `has_endpoints` is true when any endpoint anywhere is usable (ready, or
//! serving and terminating) — kube-proxy's `hasAnyEndpoints`, which decides
//! between reject (none) and drop (only the traffic policy leaves none).
//! Backends are sorted by ip:port before their Maglev tables are built.
//!
//! Frontend conflicts: Services are taken in namespace/name order and the
//! first to claim an `ip:port/proto` (or a NodePort) keeps it; later
//! claimants get a warning.
//!
//! Two steps, so that unchanged Services can be reused between
//! generations: [`compile_service`] turns one Service and its slices into a
//! [`CompiledService`] (ports with their backend sets and Maglev tables
//! behind `Arc`, the frontends each port claims, the warnings in the order
//! they arose), and [`assemble`] builds the table from all of them in
//! namespace/name order, resolving frontend conflicts.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kxdp_dataplane::tables::services::{FrontendKey, ServiceTableError};
use kxdp_dataplane::tables::{
    Backend, BackendSet, Frontend, FrontendKind, IpProto, Ipv4Cidr, ServicePort, ServiceTable,
};
use rustc_hash::FxHashMap;

use super::{CompileOptions, CompileWarning, Warnings};
use crate::endpoints::SERVICE_NAME_LABEL;
use crate::model::ClusterState;

/// Label restricting a Service to the named proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// sessionAffinityConfig.clientIP.timeoutSeconds default (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;
/// Its validated maximum (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86400;

/// One endpoint address of a slice, with its conditions.
#[derive(Clone, Copy, Debug)]
struct EndpointInfo {
    ip: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// A slice reduced to what backend selection needs.
struct ParsedSlice {
    /// (port name, protocol, port)
    ports: Vec<(String, IpProto, u16)>,
    endpoints: Vec<EndpointInfo>,
}

fn parse_proto(p: Option<&str>) -> Option<IpProto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(IpProto::Tcp),
        "UDP" => Some(IpProto::Udp),
        "SCTP" => Some(IpProto::Sctp),
        _ => None,
    }
}

fn parse_slice(
    slice: &EndpointSlice,
    own_node: &str,
    warnings: &mut Warnings,
) -> Option<ParsedSlice> {
    if slice.address_type != "IPv4" {
        return None; // IPv6 / FQDN slices: not for an IPv4 dataplane
    }
    let name = || {
        format!(
            "{}/{}",
            slice.metadata.namespace.as_deref().unwrap_or_default(),
            slice.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        let Some(port) = p.port else { continue };
        let (Some(proto), Ok(port)) = (parse_proto(p.protocol.as_deref()), u16::try_from(port))
        else {
            warnings.push(
                "EndpointSlice",
                name(),
                format!("port {port}/{:?} ignored", p.protocol),
            );
            continue;
        };
        if port == 0 {
            continue;
        }
        ports.push((p.name.clone().unwrap_or_default(), proto, port));
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for ep in &slice.endpoints {
        // kube-proxy uses the first address only.
        let Some(addr) = ep.addresses.first() else {
            continue;
        };
        let Ok(ip) = addr.parse::<Ipv4Addr>() else {
            warnings.push(
                "EndpointSlice",
                name(),
                format!("address {addr:?} is not IPv4; ignored"),
            );
            continue;
        };
        let c = ep.conditions.as_ref();
        endpoints.push(EndpointInfo {
            ip,
            ready: c.and_then(|c| c.ready).unwrap_or(true),
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            local: ep.node_name.as_deref() == Some(own_node),
        });
    }
    Some(ParsedSlice { ports, endpoints })
}

/// kube-proxy's CategorizeEndpoints over deduplicated endpoints sorted by
/// ip:port: (cluster set, local set, has any usable endpoint).
fn categorize(all: &[(EndpointInfo, u16)]) -> (Vec<Backend>, Vec<Backend>, bool) {
    let pick = |pred: &dyn Fn(&EndpointInfo) -> bool| -> Vec<Backend> {
        all.iter()
            .filter(|(e, _)| pred(e))
            .map(|(e, port)| Backend {
                ip: e.ip,
                port: *port,
                local: e.local,
            })
            .collect()
    };
    let mut cluster = pick(&|e| e.ready);
    if cluster.is_empty() {
        cluster = pick(&|e| e.serving && e.terminating);
    }
    let mut local = pick(&|e| e.local && e.ready);
    if local.is_empty() {
        local = pick(&|e| e.local && e.serving && e.terminating);
    }
    let has_any = !cluster.is_empty();
    (cluster, local, has_any)
}

/// Endpoints of one ServicePort across the Service's slices, sorted by
/// ip:port and deduplicated (a ready copy wins over a not-ready one).
fn port_endpoints(
    slices: &[ParsedSlice],
    port_name: &str,
    proto: IpProto,
) -> Vec<(EndpointInfo, u16)> {
    let mut out: Vec<(EndpointInfo, u16)> = Vec::new();
    for s in slices {
        if let Some(&(_, _, port)) = s
            .ports
            .iter()
            .find(|(n, p, _)| n == port_name && *p == proto)
        {
            out.extend(s.endpoints.iter().map(|e| (*e, port)));
        }
    }
    // Stable sort: among copies of one ip:port, ready first, then slice order.
    out.sort_by_key(|(e, port)| (e.ip, *port, !e.ready));
    out.dedup_by_key(|(e, port)| (e.ip, *port));
    out
}

/// Addresses of one family out of strings: IPv4 ones, and the invalid ones.
fn ipv4s<'a>(list: impl IntoIterator<Item = &'a String>) -> (Vec<Ipv4Addr>, Vec<&'a str>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for s in list {
        match s.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => good.push(ip),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => bad.push(s.as_str()),
        }
    }
    (good, bad)
}

/// One Service compiled on its own: its ports (with their backend sets and
/// Maglev tables) and which frontends they claim, in spec order, with the
/// warnings interleaved where they arose. A function of the Service, its
/// EndpointSlices, the node name and the options only: the unit the
/// incremental compiler caches and reuses.
#[derive(Debug, Default)]
pub(crate) struct CompiledService {
    /// `namespace/name`, the name frontend-conflict warnings carry.
    display: String,
    items: Vec<Item>,
}

#[derive(Debug)]
enum Item {
    Warning(CompileWarning),
    Port(CompiledPort),
}

/// One ServicePort and the frontends it claims.
#[derive(Debug)]
pub(crate) struct CompiledPort {
    pub(crate) port: Arc<ServicePort>,
    frontends: Vec<(FrontendKey, FrontendKind)>,
    node_port: Option<u16>,
}

/// Where an assembled Service landed in the table, and the frontend
/// conflicts its ports lost (one list per port). Both depend only on the
/// [layouts](CompiledService::same_layout) of all Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Index of the Service's first port in [`ServiceTable::ports`].
    pub(crate) base: u32,
    pub(crate) conflicts: Vec<Vec<CompileWarning>>,
}

impl CompiledService {
    /// The compiled ports, in table order.
    pub(crate) fn ports(&self) -> impl Iterator<Item = &CompiledPort> {
        self.items.iter().filter_map(|i| match i {
            Item::Port(p) => Some(p),
            Item::Warning(_) => None,
        })
    }

    /// True when both claim the same frontends and NodePorts with ports of
    /// the same names, in the same order: then the frontend maps, the port
    /// numbering and the conflict outcome of a table do not change when one
    /// replaces the other.
    pub(crate) fn same_layout(&self, other: &CompiledService) -> bool {
        let (mut a, mut b) = (self.ports(), other.ports());
        loop {
            match (a.next(), b.next()) {
                (None, None) => return self.display == other.display,
                (Some(x), Some(y)) => {
                    if x.frontends != y.frontends
                        || x.node_port != y.node_port
                        || x.port.display_name() != y.port.display_name()
                    {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }

    /// This Service's warnings, with the conflicts of `placement` after
    /// the port that lost them (the order a one-pass compile reports).
    pub(crate) fn warnings(&self, placement: &Placement) -> Vec<CompileWarning> {
        let mut out = Vec::new();
        let mut port = 0;
        for item in &self.items {
            match item {
                Item::Warning(w) => out.push(w.clone()),
                Item::Port(_) => {
                    if let Some(c) = placement.conflicts.get(port) {
                        out.extend(c.iter().cloned());
                    }
                    port += 1;
                }
            }
        }
        out
    }

    /// True when compiling the Service reported nothing and none of its
    /// ports lost a frontend.
    pub(crate) fn is_quiet(&self, placement: &Placement) -> bool {
        self.items.iter().all(|i| matches!(i, Item::Port(_)))
            && placement.conflicts.iter().all(Vec::is_empty)
    }
}

/// Build the table from compiled Services taken in namespace/name order:
/// the first Service to claim a frontend keeps it.
pub(crate) fn assemble<'a>(
    services: impl IntoIterator<Item = &'a CompiledService>,
) -> (ServiceTable, Vec<Placement>, Contested) {
    let mut table = ServiceTable::new();
    let mut placements = Vec::new();
    let mut contested = Contested::default();
    for svc in services {
        let mut placement = Placement {
            base: u32::try_from(table.ports.len()).unwrap_or(u32::MAX),
            conflicts: Vec::new(),
        };
        for cp in svc.ports() {
            let mut lost = Vec::new();
            let mut warn = |e: ServiceTableError| {
                match &e {
                    ServiceTableError::DuplicateFrontend {
                        ip, port, proto, ..
                    } => {
                        contested.frontends.insert(FrontendKey {
                            ip: *ip,
                            port: *port,
                            proto: *proto,
                        });
                    }
                    ServiceTableError::DuplicateNodePort { port, proto, .. } => {
                        contested.node_ports.insert((*port, *proto));
                    }
                    ServiceTableError::NoSuchPort { .. } => {}
                }
                lost.push(CompileWarning {
                    kind: "Service",
                    name: svc.display.clone(),
                    message: format!("{e}; {} keeps it", first_claimant(&e)),
                });
            };
            let idx = table.add_shared_port(cp.port.clone());
            for (key, kind) in &cp.frontends {
                if let Err(e) = table.add_frontend(*key, idx, *kind) {
                    warn(e);
                }
            }
            if let Some(np) = cp.node_port {
                if let Err(e) = table.add_node_port(np, cp.port.proto, idx) {
                    warn(e);
                }
            }
            placement.conflicts.push(lost);
        }
        placements.push(placement);
    }
    (table, placements, contested)
}

/// The frontends and NodePorts more than one Service port claimed in the
/// last assembly (one kept each, the others lost it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Contested {
    pub(crate) frontends: rustc_hash::FxHashSet<FrontendKey>,
    pub(crate) node_ports: rustc_hash::FxHashSet<(u16, IpProto)>,
}

impl Contested {
    /// True when none of `svc`'s claims is contested.
    pub(crate) fn untouched_by(&self, svc: &CompiledService) -> bool {
        svc.ports().all(|p| {
            p.frontends.iter().all(|(k, _)| !self.frontends.contains(k))
                && p.node_port
                    .is_none_or(|np| !self.node_ports.contains(&(np, p.port.proto)))
        })
    }
}

impl CompiledPort {
    /// The frontend claims of this port as port `idx` of a table.
    pub(crate) fn claims(&self, idx: u32) -> impl Iterator<Item = (FrontendKey, Frontend)> + '_ {
        self.frontends.iter().map(move |(key, kind)| {
            (
                *key,
                Frontend {
                    service_port: idx,
                    kind: *kind,
                },
            )
        })
    }

    /// The NodePort claim of this port, if any.
    pub(crate) fn node_port_claim(&self) -> Option<(u16, IpProto)> {
        self.node_port.map(|np| (np, self.port.proto))
    }
}

/// EndpointSlices (state ones in key order, then derived ones) indexed by
/// the Service their `kubernetes.io/service-name` label names.
pub(crate) fn slices_by_service<'a>(
    state: &'a ClusterState,
    derived: &'a [EndpointSlice],
) -> FxHashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut index: FxHashMap<(&str, &str), Vec<&EndpointSlice>> = FxHashMap::default();
    let state_slices = state
        .endpoint_slices
        .iter()
        .map(|((ns, _), s)| (ns.as_str(), s));
    let derived_slices = derived
        .iter()
        .map(|s| (s.metadata.namespace.as_deref().unwrap_or_default(), s));
    for (ns, s) in state_slices.chain(derived_slices) {
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            index.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    index
}

/// Compile one Service (see the module doc) over `slices`, its
/// EndpointSlices in order, for node `node_name`.
pub(crate) fn compile_service(
    ns: &str,
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
    opts: &CompileOptions,
) -> CompiledService {
    let mut out = CompiledService {
        display: format!("{ns}/{name}"),
        items: Vec::new(),
    };
    let mut w = Warnings::default();
    compile_service_into(ns, name, svc, slices, node_name, opts, &mut out, &mut w);
    out.items.extend(w.0.into_iter().map(Item::Warning));
    out
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn compile_service_into(
    ns: &str,
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
    opts: &CompileOptions,
    out: &mut CompiledService,
    warnings: &mut Warnings,
) {
    macro_rules! warn {
        ($($arg:tt)*) => {
            warnings.push("Service", format!("{ns}/{name}"), format!($($arg)*))
        };
    }

    if let Some(proxy) = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
    {
        if opts.proxy_name.as_deref() != Some(proxy.as_str()) {
            return; // belongs to another proxy
        }
    }
    let Some(spec) = svc.spec.as_ref() else {
        warn!("no spec; skipped");
        return;
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    match svc_type {
        "ExternalName" => return,
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => {
            warn!("unknown type {other:?}; skipped");
            return;
        }
    }

    // clusterIPs[0] is clusterIP when both are set; either may be missing
    // in hand-written manifests.
    let cluster_ip_strs: Vec<&String> = match spec.cluster_ips.as_ref().filter(|l| !l.is_empty()) {
        Some(l) => l.iter().collect(),
        None => spec.cluster_ip.iter().collect(),
    };
    match cluster_ip_strs.first().map(|s| s.trim()) {
        Some("None") => return, // headless
        None | Some("") => {
            warn!("no clusterIP allocated; skipped (kube-proxy ignores such Services)");
            return;
        }
        Some(_) => {}
    }
    let (cluster_ips, bad) = ipv4s(cluster_ip_strs);
    for b in bad {
        warn!("clusterIP {b:?} is not an IP address; ignored");
    }
    if cluster_ips.is_empty() {
        return; // IPv6-only Service (or only invalid entries, reported)
    }
    let (external_ips, bad) = ipv4s(spec.external_ips.iter().flatten());
    for b in bad {
        warn!("externalIP {b:?} is not an IP address; ignored");
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let vip_strs: Vec<&String> = ingress
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref())
        .collect();
    let (mut lb_ips, bad) = ipv4s(vip_strs);
    for b in bad {
        warn!("load balancer ingress IP {b:?} is not an IP address; ignored");
    }

    // loadBalancerSourceRanges
    let mut lb_source_ranges = Vec::new();
    let ranges = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
    let mut any_valid = false;
    for r in ranges {
        let r = r.trim();
        if r.contains(':') {
            if r.parse::<ipnet::Ipv6Net>().is_ok() {
                any_valid = true;
            } else {
                warn!("loadBalancerSourceRange {r:?} is invalid; ignored");
            }
            continue;
        }
        // Ipv4Cidr::from_str accepts a bare address as /32; the API wants a
        // CIDR, and a typo should not silently narrow to one host.
        match r.contains('/').then(|| r.parse::<Ipv4Cidr>()) {
            Some(Ok(c)) => {
                any_valid = true;
                lb_source_ranges.push(c);
            }
            _ => warn!("loadBalancerSourceRange {r:?} is invalid; ignored"),
        }
    }
    if !ranges.is_empty() && !any_valid && !lb_ips.is_empty() {
        warn!("no valid loadBalancerSourceRanges: load balancer IPs not programmed (fail closed)");
        lb_ips.clear();
    }

    // Traffic policies (k8s.io/kubernetes/pkg/api/v1/service helpers).
    let externally_accessible = matches!(svc_type, "NodePort" | "LoadBalancer")
        || (svc_type == "ClusterIP" && !spec.external_ips.as_deref().unwrap_or(&[]).is_empty());
    let mut policy = |field: &str, v: Option<&str>| -> bool {
        match v {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                warn!("{field} {other:?} is not Cluster or Local; using Cluster");
                false
            }
        }
    };
    let internal_local = policy(
        "internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    );
    let external_local = policy(
        "externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    ) && externally_accessible;

    let affinity_timeout_secs = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            Some(match t {
                None => DEFAULT_AFFINITY_TIMEOUT_SECS,
                Some(t) if (1..=i64::from(MAX_AFFINITY_TIMEOUT_SECS)).contains(&i64::from(t)) => {
                    t.unsigned_abs()
                }
                Some(t) => {
                    let c = t.clamp(1, MAX_AFFINITY_TIMEOUT_SECS as i32).unsigned_abs();
                    warn!("session affinity timeout {t}s is outside 1..=86400; using {c}s");
                    c
                }
            })
        }
        Some(other) => {
            warn!("sessionAffinity {other:?} is not None or ClientIP; no affinity");
            None
        }
    };

    let health_check_node_port = if svc_type == "LoadBalancer" && external_local {
        match spec.health_check_node_port.map(u16::try_from) {
            Some(Ok(p)) if p != 0 => Some(p),
            _ => {
                warn!("LoadBalancer with externalTrafficPolicy Local has no valid healthCheckNodePort");
                None
            }
        }
    } else {
        None
    };
    let wants_node_port = matches!(svc_type, "NodePort" | "LoadBalancer");
    let node_port_optional =
        svc_type == "LoadBalancer" && spec.allocate_load_balancer_node_ports == Some(false);

    let parsed: Vec<ParsedSlice> = slices
        .iter()
        .filter_map(|s| parse_slice(s, node_name, warnings))
        .collect();

    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() {
        warn!("no ports; nothing to program");
        return;
    }
    let namespace: Arc<str> = ns.into();
    let svc_name: Arc<str> = name.into();
    for sp in ports {
        let port_name = sp.name.clone().unwrap_or_default();
        let label = if port_name.is_empty() {
            sp.port.to_string()
        } else {
            port_name.clone()
        };
        let Some(proto) = parse_proto(sp.protocol.as_deref()) else {
            warn!(
                "port {label}: protocol {:?} not supported; skipped",
                sp.protocol
            );
            continue;
        };
        let Some(port) = u16::try_from(sp.port).ok().filter(|p| *p != 0) else {
            warn!("port {label}: {} is not a valid port; skipped", sp.port);
            continue;
        };
        let node_port = match sp.node_port.filter(|p| *p != 0) {
            None => {
                if wants_node_port && !node_port_optional {
                    warn!(
                        "port {label}: type {svc_type} without a nodePort; no NodePort programmed"
                    );
                }
                None
            }
            Some(np) if !wants_node_port => {
                warn!("port {label}: nodePort {np} ignored on a {svc_type} Service");
                None
            }
            Some(np) => {
                let (lo, hi) = opts.node_port_range;
                match u16::try_from(np) {
                    Ok(p) if (lo..=hi).contains(&p) => Some(p),
                    _ => {
                        warn!(
                            "port {label}: nodePort {np} is outside the NodePort range {lo}-{hi}; no NodePort programmed"
                        );
                        None
                    }
                }
            }
        };
        let eps = port_endpoints(&parsed, &port_name, proto);
        let (cluster, local, has_endpoints) = categorize(&eps);
        let port = Arc::new(ServicePort {
            namespace: namespace.clone(),
            name: svc_name.clone(),
            port_name: port_name.as_str().into(),
            proto,
            port,
            node_port,
            affinity_timeout_secs,
            internal_local,
            external_local,
            lb_source_ranges: lb_source_ranges.clone(),
            cluster: BackendSet::new(cluster),
            local: BackendSet::new(local),
            has_endpoints,
            health_check_node_port,
        });
        let frontends = cluster_ips
            .iter()
            .map(|ip| (*ip, FrontendKind::ClusterIp))
            .chain(
                external_ips
                    .iter()
                    .map(|ip| (*ip, FrontendKind::ExternalIp)),
            )
            .chain(lb_ips.iter().map(|ip| (*ip, FrontendKind::LoadBalancer)))
            .map(|(ip, kind)| {
                (
                    FrontendKey {
                        ip,
                        port: port.port,
                        proto,
                    },
                    kind,
                )
            })
            .collect();
        // The warnings so far come before this port (and its conflicts).
        out.items.extend(
            std::mem::take(&mut warnings.0)
                .into_iter()
                .map(Item::Warning),
        );
        out.items.push(Item::Port(CompiledPort {
            port,
            frontends,
            node_port,
        }));
    }
}

fn first_claimant(e: &ServiceTableError) -> &str {
    use ServiceTableError as E;
    match e {
        E::DuplicateFrontend { first, .. } | E::DuplicateNodePort { first, .. } => first,
        E::NoSuchPort { .. } => "",
    }
}
