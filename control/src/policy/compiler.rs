//! [`PolicyCompiler`]: the stateful, incremental compiler.
//!
//! Per update:
//! 1. the *universe*: identities (namespace, labels) with stable ids, the
//!    namespaces' labels, and the cluster-wide IP -> identity map;
//! 2. each policy is normalized and its rules' peers evaluated to identity
//!    lists and address intervals — reused as is when neither the policy nor
//!    the universe changed; a policy whose compiled form is unchanged keeps
//!    its version number;
//! 3. each local pod's (pod, direction) table is looked up by its inputs
//!    (the selecting policies and their versions, plus the pod's named ports
//!    for ingress when a selecting rule uses a named port) and built only
//!    when no table with those inputs exists.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use kxdp_dataplane::tables::policy::{
    DirPolicy, PeerMap, PeerNamedPort, PolicyDirection, PolicyTable, PortSet, PortSetBuilder,
    RuleInfo, SelectingPolicy, SlotPolicy,
};
use kxdp_dataplane::tables::{IpProto, LocalPod};
use rustc_hash::FxHashMap;

use super::selector::Labels;
use super::spec::{normalize, NormPeer, NormPolicy, NormPort, NsScope};
use super::PolicyWarning;
use crate::model::{ClusterState, ObjectKey};

/// The label the API server puts on every namespace.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Append-only interner with stable ids.
#[derive(Debug)]
struct Interner<K> {
    ids: FxHashMap<K, u32>,
    keys: Vec<K>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner {
            ids: FxHashMap::default(),
            keys: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn intern(&mut self, key: &K) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(key.clone());
        self.ids.insert(key.clone(), id);
        id
    }

    fn get(&self, id: u32) -> Option<&K> {
        self.keys.get(id as usize)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The peers of one rule over the current universe.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RulePeers {
    /// `from`/`to` omitted or empty.
    any: bool,
    /// Sorted, deduplicated identity ids.
    identities: Vec<u32>,
    /// Sorted, disjoint, merged inclusive intervals.
    blocks: Vec<(u32, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CompiledRule {
    id: u32,
    peers: RulePeers,
    ports: Option<Vec<NormPort>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PolicyBody {
    norm: NormPolicy,
    ingress: Vec<CompiledRule>,
    egress: Vec<CompiledRule>,
}

#[derive(Debug)]
struct CompiledPolicy {
    spec: Option<NetworkPolicySpec>,
    body: PolicyBody,
    version: u64,
    warnings: Vec<PolicyWarning>,
}

impl CompiledPolicy {
    fn rules(&self, d: PolicyDirection) -> &[CompiledRule] {
        match d {
            PolicyDirection::Ingress => &self.body.ingress,
            PolicyDirection::Egress => &self.body.egress,
        }
    }

    fn affects(&self, d: PolicyDirection) -> bool {
        self.body
            .norm
            .rules(d == PolicyDirection::Ingress)
            .is_some()
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.body
            .norm
            .pod_selector
            .as_ref()
            .is_none_or(|s| s.matches(labels))
    }

    fn uses_named_ports(&self, d: PolicyDirection) -> bool {
        self.rules(d).iter().any(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| matches!(p, NormPort::Named { .. }))
        })
    }
}

/// What a (pod, direction) table is a function of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DirKey {
    direction: PolicyDirection,
    policies: Vec<(Arc<str>, u64)>,
    /// The pod's own named ports; only for ingress tables whose rules use
    /// named ports, so that other tables are shared between pods.
    own_ports: Vec<PeerNamedPort>,
}

/// The universe of one update.
#[derive(Default)]
struct Universe {
    ns_labels: BTreeMap<String, Labels>,
    /// Live identity ids per namespace, sorted.
    by_ns: BTreeMap<String, Vec<u32>>,
    peers: PeerMap,
}

/// What changed between two generations, for conntrack revocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    /// Local pod slots (new numbering) whose ingress or egress rules differ
    /// from the previous generation's, including pods new to this node.
    pub slots: Vec<u32>,
    /// Peer addresses whose identity or named ports changed (or that
    /// appeared or disappeared): flows with these peers need re-checking on
    /// every isolated local pod.
    pub peer_ips: Vec<Ipv4Addr>,
    /// The node addresses changed: re-check everything.
    pub node_ips_changed: bool,
}

impl PolicyChanges {
    /// True when nothing needs re-checking.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.peer_ips.is_empty() && !self.node_ips_changed
    }
}

/// Work counters of one update (tests and benchmarks read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCompileStats {
    pub policies_recompiled: usize,
    pub dir_tables_built: usize,
    pub dir_tables_reused: usize,
    pub identities: usize,
}

/// The result of [`PolicyCompiler::update`].
#[derive(Debug)]
pub struct PolicyUpdate {
    pub table: PolicyTable,
    pub warnings: Vec<PolicyWarning>,
    pub changes: PolicyChanges,
    pub stats: PolicyCompileStats,
}

/// Incremental NetworkPolicy compiler; keep one per node.
#[derive(Debug, Default)]
pub struct PolicyCompiler {
    identities: Interner<(Arc<str>, Labels)>,
    port_names: Interner<String>,
    rule_ids: Interner<(Arc<str>, PolicyDirection, u32)>,
    rule_infos: Vec<RuleInfo>,
    policies: BTreeMap<ObjectKey, CompiledPolicy>,
    next_version: u64,
    prev_ns_labels: BTreeMap<String, Labels>,
    prev_live: BTreeSet<u32>,
    dir_cache: FxHashMap<DirKey, Arc<DirPolicy>>,
    prev_slots: FxHashMap<Arc<str>, SlotPolicy>,
    prev_peers: Arc<PeerMap>,
    prev_node_ips: Vec<Ipv4Addr>,
    /// False until the first update (everything is new then).
    started: bool,
}

fn proto_of(p: Option<&str>) -> Option<IpProto> {
    match p {
        None | Some("TCP") => Some(IpProto::Tcp),
        Some("UDP") => Some(IpProto::Udp),
        Some("SCTP") => Some(IpProto::Sctp),
        _ => None,
    }
}

fn pod_labels(pod: &Pod) -> Labels {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// IPv4 addresses a pod holds (none once it has terminated).
fn pod_ipv4s(pod: &Pod) -> Vec<Ipv4Addr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips: Vec<Ipv4Addr> = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|p| &p.ip))
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ips
}

impl PolicyCompiler {
    /// A compiler with no history.
    pub fn new() -> Self {
        Self::default()
    }

    fn named_ports(&mut self, pod: &Pod) -> Vec<PeerNamedPort> {
        let mut out: Vec<PeerNamedPort> = Vec::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for p in c.ports.iter().flatten() {
                let (Some(name), Some(proto), Ok(port)) = (
                    p.name.as_ref(),
                    proto_of(p.protocol.as_deref()),
                    u16::try_from(p.container_port),
                ) else {
                    continue;
                };
                out.push(PeerNamedPort {
                    name: self.port_names.intern(name),
                    proto,
                    port,
                });
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Ids and names grow append-only; forget history when most of it is
    /// dead so memory stays proportional to the live state.
    fn maybe_compact(&mut self, state: &ClusterState) {
        let live_rules: usize = self
            .policies
            .values()
            .map(|p| p.body.ingress.len() + p.body.egress.len())
            .sum();
        if self.identities.len() > 2 * state.pods.len() + 4096
            || self.rule_ids.len() > 2 * live_rules + 4096
        {
            *self = PolicyCompiler {
                prev_slots: std::mem::take(&mut self.prev_slots),
                prev_peers: std::mem::take(&mut self.prev_peers),
                prev_node_ips: std::mem::take(&mut self.prev_node_ips),
                started: self.started,
                ..PolicyCompiler::default()
            };
        }
    }

    fn universe(
        &mut self,
        state: &ClusterState,
        warnings: &mut Vec<PolicyWarning>,
    ) -> (Universe, BTreeSet<u32>) {
        let mut u = Universe::default();
        for (name, ns) in &state.namespaces {
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            u.ns_labels.insert(name.clone(), labels);
        }
        let mut live = BTreeSet::new();
        let mut owners: FxHashMap<Ipv4Addr, String> = FxHashMap::default();
        let mut ns_arcs: BTreeMap<&str, Arc<str>> = BTreeMap::new();
        for ((ns, name), pod) in &state.pods {
            u.ns_labels
                .entry(ns.clone())
                .or_insert_with(|| Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())]));
            if is_host_network(pod) {
                continue;
            }
            let ns_arc = ns_arcs
                .entry(ns)
                .or_insert_with(|| Arc::from(ns.as_str()))
                .clone();
            let id = self.identities.intern(&(ns_arc, pod_labels(pod)));
            if live.insert(id) {
                u.by_ns.entry(ns.clone()).or_default().push(id);
            }
            let ips = pod_ipv4s(pod);
            if ips.is_empty() {
                continue;
            }
            let named = self.named_ports(pod);
            for ip in ips {
                if u.peers.insert(ip, id, &named) {
                    owners.insert(ip, format!("{ns}/{name}"));
                } else {
                    warnings.push(PolicyWarning::DuplicatePodIp {
                        ip,
                        kept: owners.get(&ip).cloned().unwrap_or_default(),
                        ignored: format!("{ns}/{name}"),
                    });
                }
            }
        }
        for ids in u.by_ns.values_mut() {
            ids.sort_unstable();
        }
        (u, live)
    }

    fn eval_peers(
        &self,
        u: &Universe,
        policy_ns: &str,
        peers: &Option<Vec<NormPeer>>,
    ) -> RulePeers {
        let Some(peers) = peers else {
            return RulePeers {
                any: true,
                identities: Vec::new(),
                blocks: Vec::new(),
            };
        };
        let mut identities = Vec::new();
        let mut blocks: Vec<(u32, u32)> = Vec::new();
        let labels_of = |id: u32| self.identities.get(id).map(|k| &k.1);
        for peer in peers {
            match peer {
                NormPeer::Nothing => {}
                NormPeer::Block(iv) => blocks.extend_from_slice(iv),
                NormPeer::Pods { namespaces, pods } => {
                    let mut take = |ids: &[u32]| {
                        identities.extend(
                            ids.iter()
                                .copied()
                                .filter(|&id| labels_of(id).is_some_and(|l| pods.matches(l))),
                        );
                    };
                    match namespaces {
                        NsScope::Own => {
                            if let Some(ids) = u.by_ns.get(policy_ns) {
                                take(ids);
                            }
                        }
                        NsScope::Matching(sel) => {
                            for (ns, ids) in &u.by_ns {
                                if u.ns_labels.get(ns).is_some_and(|l| sel.matches(l)) {
                                    take(ids);
                                }
                            }
                        }
                    }
                }
            }
        }
        identities.sort_unstable();
        identities.dedup();
        RulePeers {
            any: false,
            identities,
            blocks: merge_intervals(blocks),
        }
    }

    fn compile_policy(
        &mut self,
        key: &ObjectKey,
        np: &k8s_openapi::api::networking::v1::NetworkPolicy,
        u: &Universe,
    ) -> (PolicyBody, Vec<PolicyWarning>) {
        let mut warnings = Vec::new();
        let norm = normalize(&key.0, &key.1, np, &mut warnings);
        let compile_dir = |d: PolicyDirection, this: &mut Self| -> Vec<CompiledRule> {
            norm.rules(d == PolicyDirection::Ingress)
                .unwrap_or(&[])
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let id = this.rule_ids.intern(&(norm.key.clone(), d, i as u32));
                    let info = RuleInfo {
                        policy: norm.key.clone(),
                        direction: d,
                        index: i as u32,
                        summary: r.summary.as_str().into(),
                    };
                    match this.rule_infos.get_mut(id as usize) {
                        Some(slot) => *slot = info,
                        None => this.rule_infos.push(info),
                    }
                    CompiledRule {
                        id,
                        peers: this.eval_peers(u, &norm.namespace, &r.peers),
                        ports: r.ports.clone(),
                    }
                })
                .collect()
        };
        let ingress = compile_dir(PolicyDirection::Ingress, self);
        let egress = compile_dir(PolicyDirection::Egress, self);
        (
            PolicyBody {
                norm,
                ingress,
                egress,
            },
            warnings,
        )
    }

    /// Compile a new generation from `state`. `local_pods[i]` is the pod
    /// with `policy_slot == i`.
    pub fn update(
        &mut self,
        state: &ClusterState,
        node_name: &str,
        node_ips: &[Ipv4Addr],
        local_pods: &[LocalPod],
    ) -> PolicyUpdate {
        self.maybe_compact(state);
        let mut warnings = Vec::new();
        let mut stats = PolicyCompileStats::default();
        let (u, live) = self.universe(state, &mut warnings);
        let universe_changed = u.ns_labels != self.prev_ns_labels || live != self.prev_live;
        stats.identities = live.len();

        // Policies.
        let mut old = std::mem::take(&mut self.policies);
        for (key, np) in &state.network_policies {
            let prev = match old.remove(key) {
                // Same spec over the same identities: same compiled form.
                Some(p) if !universe_changed && p.spec == np.spec => {
                    warnings.extend(p.warnings.iter().cloned());
                    self.policies.insert(key.clone(), p);
                    continue;
                }
                prev => prev,
            };
            stats.policies_recompiled += 1;
            let (body, w) = self.compile_policy(key, np, &u);
            let version = match prev {
                Some(p) if p.body == body => p.version,
                _ => {
                    self.next_version += 1;
                    self.next_version
                }
            };
            warnings.extend(w.iter().cloned());
            self.policies.insert(
                key.clone(),
                CompiledPolicy {
                    spec: np.spec.clone(),
                    body,
                    version,
                    warnings: w,
                },
            );
        }

        // Out of `self` while the local pods borrow it (interners are mutable).
        let policies = std::mem::take(&mut self.policies);
        let mut by_ns: BTreeMap<&str, Vec<&CompiledPolicy>> = BTreeMap::new();
        for ((ns, _), p) in &policies {
            by_ns.entry(ns.as_str()).or_default().push(p);
        }

        // Local pods.
        let mut cache: FxHashMap<DirKey, Arc<DirPolicy>> = FxHashMap::default();
        let mut slots = Vec::with_capacity(local_pods.len());
        let mut changes = PolicyChanges::default();
        for (index, lp) in local_pods.iter().enumerate() {
            let pod_key: Arc<str> = lp.key().into();
            if lp.policy_slot as usize != index {
                warnings.push(PolicyWarning::SlotMismatch {
                    pod: pod_key.to_string(),
                    slot: lp.policy_slot,
                    index: index as u32,
                });
            }
            let obj = state
                .pods
                .get(&(lp.namespace.to_string(), lp.name.to_string()));
            if obj.is_none() {
                warnings.push(PolicyWarning::UnknownLocalPod {
                    pod: pod_key.to_string(),
                });
            }
            if let Some(scheduled) = obj
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| *n != node_name)
            {
                warnings.push(PolicyWarning::ForeignLocalPod {
                    pod: pod_key.to_string(),
                    scheduled: scheduled.to_string(),
                    node: node_name.to_string(),
                });
            }
            let host_network = obj.is_some_and(is_host_network);
            let labels = obj.map(pod_labels).unwrap_or_default();
            let own_ports = obj.map(|p| self.named_ports(p)).unwrap_or_default();
            let mut tables = [None, None];
            for (slot_dir, d) in tables
                .iter_mut()
                .zip([PolicyDirection::Ingress, PolicyDirection::Egress])
            {
                if host_network {
                    continue;
                }
                let selecting: Vec<&CompiledPolicy> = by_ns
                    .get(&*lp.namespace)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|p| p.affects(d) && p.selects(&labels))
                    .collect();
                if selecting.is_empty() {
                    continue;
                }
                let needs_ports = d == PolicyDirection::Ingress
                    && selecting.iter().any(|p| p.uses_named_ports(d));
                let key = DirKey {
                    direction: d,
                    policies: selecting
                        .iter()
                        .map(|p| (p.body.norm.key.clone(), p.version))
                        .collect(),
                    own_ports: if needs_ports {
                        own_ports.clone()
                    } else {
                        Vec::new()
                    },
                };
                let table = if let Some(t) = cache.get(&key) {
                    stats.dir_tables_reused += 1;
                    t.clone()
                } else if let Some(t) = self.dir_cache.get(&key) {
                    stats.dir_tables_reused += 1;
                    cache.insert(key, t.clone());
                    t.clone()
                } else {
                    stats.dir_tables_built += 1;
                    let t = Arc::new(self.build_dir(
                        d,
                        &selecting,
                        &own_ports,
                        &pod_key,
                        &mut warnings,
                    ));
                    cache.insert(key, t.clone());
                    t
                };
                *slot_dir = Some(table);
            }
            let [ingress, egress] = tables;
            let slot = SlotPolicy {
                pod: pod_key.clone(),
                ip: lp.ip,
                ingress,
                egress,
            };
            let same = self.prev_slots.get(&pod_key).is_some_and(|p| {
                same_dir(&p.ingress, &slot.ingress) && same_dir(&p.egress, &slot.egress)
            });
            if !same {
                changes.slots.push(index as u32);
            }
            slots.push(slot);
        }

        // Peer map changes.
        let peers = Arc::new(u.peers);
        if self.started {
            for ip in peers.ips() {
                if self.prev_peers.get(ip) != peers.get(ip) {
                    changes.peer_ips.push(ip);
                }
            }
            for ip in self.prev_peers.ips() {
                if peers.get(ip).is_none() {
                    changes.peer_ips.push(ip);
                }
            }
            changes.peer_ips.sort_unstable();
            changes.node_ips_changed = self.prev_node_ips != node_ips;
        }

        let rules: Arc<[RuleInfo]> = self.rule_infos.clone().into();
        let table = PolicyTable::new(node_ips, peers.clone(), slots.clone(), rules);

        drop(by_ns);
        self.policies = policies;
        self.dir_cache = cache;
        self.prev_slots = slots.into_iter().map(|s| (s.pod.clone(), s)).collect();
        self.prev_peers = peers;
        self.prev_node_ips = node_ips.to_vec();
        self.prev_ns_labels = u.ns_labels;
        self.prev_live = live;
        self.started = true;
        PolicyUpdate {
            table,
            warnings,
            changes,
            stats,
        }
    }

    fn build_dir(
        &mut self,
        d: PolicyDirection,
        selecting: &[&CompiledPolicy],
        own_ports: &[PeerNamedPort],
        pod_key: &Arc<str>,
        warnings: &mut Vec<PolicyWarning>,
    ) -> DirPolicy {
        let mut selected_by = Vec::with_capacity(selecting.len());
        let mut any = PortSetBuilder::default();
        let mut per_id: FxHashMap<u32, PortSetBuilder> = FxHashMap::default();
        // (first, last, rule id, grants index)
        let mut blocks: Vec<(u32, u32, u32, usize)> = Vec::new();
        let mut grants_of: Vec<Vec<Grant>> = Vec::new();
        for p in selecting {
            let rules = p.rules(d);
            selected_by.push(SelectingPolicy {
                policy: p.body.norm.key.clone(),
                rules: rules.iter().map(|r| r.id).collect(),
            });
            for r in rules {
                let grants = self.grants(d, &r.ports, own_ports);
                if grants.is_empty() {
                    continue;
                }
                if r.peers.any {
                    apply(&mut any, &grants, r.id);
                }
                for &id in &r.peers.identities {
                    apply(per_id.entry(id).or_default(), &grants, r.id);
                }
                if !r.peers.blocks.is_empty() {
                    let gi = grants_of.len();
                    grants_of.push(grants);
                    blocks.extend(r.peers.blocks.iter().map(|&(a, b)| (a, b, r.id, gi)));
                }
            }
        }
        let segments = segment_blocks(&blocks, &grants_of);
        let identities = per_id.into_iter().map(|(id, b)| (id, b.build())).collect();
        match DirPolicy::new(selected_by.clone(), any.build(), identities, segments) {
            Ok(t) => t,
            Err(e) => {
                warnings.push(PolicyWarning::Internal {
                    policy: selected_by
                        .iter()
                        .map(|s| s.policy.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    pod: pod_key.to_string(),
                    reason: e.to_string(),
                });
                DirPolicy::isolate_only(selected_by)
            }
        }
    }

    /// A rule's ports as grants for one (pod, direction). Ingress named
    /// ports resolve against the pod itself (it is the destination); egress
    /// named ports stay names, resolved against the peer at lookup.
    fn grants(
        &mut self,
        d: PolicyDirection,
        ports: &Option<Vec<NormPort>>,
        own_ports: &[PeerNamedPort],
    ) -> Vec<Grant> {
        let Some(ports) = ports else {
            return vec![Grant::All];
        };
        let mut out = Vec::new();
        for p in ports {
            match p {
                NormPort::Nothing => {}
                NormPort::Range { proto, first, last } => {
                    out.push(Grant::Range(*proto, *first, *last));
                }
                NormPort::Named { proto, name } => {
                    let name_id = self.port_names.intern(name);
                    match d {
                        PolicyDirection::Ingress => out.extend(
                            own_ports
                                .iter()
                                .filter(|o| o.name == name_id && o.proto == *proto)
                                .map(|o| Grant::Range(o.proto, o.port, o.port)),
                        ),
                        PolicyDirection::Egress => out.push(Grant::Named(name_id, *proto)),
                    }
                }
            }
        }
        out
    }
}

fn same_dir(a: &Option<Arc<DirPolicy>>, b: &Option<Arc<DirPolicy>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
        _ => false,
    }
}

#[derive(Clone, Copy, Debug)]
enum Grant {
    All,
    Range(IpProto, u16, u16),
    Named(u32, IpProto),
}

fn apply(b: &mut PortSetBuilder, grants: &[Grant], rule: u32) {
    for g in grants {
        match *g {
            Grant::All => b.allow_all(rule),
            Grant::Range(proto, first, last) => b.allow_range(proto, first, last, rule),
            Grant::Named(name, proto) => b.allow_named(name, proto, rule),
        }
    }
}

/// Sort and merge overlapping or adjacent inclusive intervals.
fn merge_intervals(mut iv: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    iv.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(iv.len());
    for (a, b) in iv {
        match out.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Cut possibly overlapping ipBlock intervals of several rules into
/// disjoint segments, each with the merged port set of every rule covering
/// it; adjacent segments with equal sets are joined.
fn segment_blocks(
    blocks: &[(u32, u32, u32, usize)],
    grants_of: &[Vec<Grant>],
) -> Vec<(Ipv4Addr, Ipv4Addr, PortSet)> {
    if blocks.is_empty() {
        return Vec::new();
    }
    let mut cuts: Vec<u64> = blocks
        .iter()
        .flat_map(|&(a, b, _, _)| [u64::from(a), u64::from(b) + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u64, u64, PortSet)> = Vec::new();
    for w in cuts.windows(2) {
        let (Some(&start), Some(&end)) = (w.first(), w.get(1)) else {
            continue;
        };
        let last = end - 1;
        let mut b = PortSetBuilder::default();
        for &(a, z, rule, gi) in blocks {
            if u64::from(a) <= start && last <= u64::from(z) {
                if let Some(g) = grants_of.get(gi) {
                    apply(&mut b, g, rule);
                }
            }
        }
        if b.is_empty() {
            continue;
        }
        let set = b.build();
        match out.last_mut() {
            Some(prev) if prev.1 + 1 == start && prev.2 == set => prev.1 = last,
            _ => out.push((start, last, set)),
        }
    }
    out.into_iter()
        .filter_map(|(a, z, s)| {
            Some((
                Ipv4Addr::from(u32::try_from(a).ok()?),
                Ipv4Addr::from(u32::try_from(z).ok()?),
                s,
            ))
        })
        .collect()
}
