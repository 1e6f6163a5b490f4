//! [`PolicyCompiler`]: the stateful, incremental compiler.
//!
//! Per update:
//! 1. the *universe* is brought up to date: identities (namespace, labels)
//!    with stable ids and how many pods hold each, the namespaces' labels,
//!    and which pods hold which address (the first in key order keeps a
//!    contested one). It is kept between updates and changed pod by pod:
//!    only the pods and namespaces the caller says changed
//!    ([`PolicyInputChanges`]), or, without that list, every one compared
//!    with what is stored. The result: identities that appeared or went
//!    away, namespaces whose labels changed, addresses that may have;
//! 2. each policy is normalized and its rules' peers evaluated to identity
//!    lists and address intervals when it is new, its spec changed, or a
//!    namespace one of its namespaceSelectors matches (before or after)
//!    changed labels. Every other policy keeps its compiled form with the
//!    identities that went away removed from its peer lists and those that
//!    appeared and match a peer added — what evaluating it anew would give,
//!    at the cost of the change. A policy whose compiled form is unchanged
//!    keeps its version number;
//! 3. each local pod's (pod, direction) table is looked up by its inputs
//!    (the selecting policies and their versions, plus the pod's named ports
//!    for ingress when a selecting rule uses a named port) and built only
//!    when no table with those inputs exists;
//! 4. the cluster-wide peer map (address -> identity, named ports) is
//!    rebuilt only when an address changed hands, identity or named ports,
//!    and only those addresses are compared for [`PolicyChanges`].
//!
//! So a pod relabelled on another node costs its own facts, a selector
//! check per policy rule, the patched policies and a peer map rebuild
//! (O(pods) inserts, no label matching), not a normalization and
//! evaluation of every policy over every pod.

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

/// What the universe took from one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodFacts {
    namespace: Arc<str>,
    /// None for hostNetwork pods: never selected, never a pod peer.
    identity: Option<u32>,
    /// Sorted; empty for hostNetwork pods and pods without an address.
    ips: Vec<Ipv4Addr>,
    /// Only for pods with addresses (peer named ports).
    named: Vec<PeerNamedPort>,
}

/// The universe, kept between updates and changed pod by pod: identities
/// in use, namespace labels, which pod holds which address.
#[derive(Debug, Default)]
struct Universe {
    pods: FxHashMap<ObjectKey, PodFacts>,
    /// Namespace objects' labels, plus the name label.
    ns_objects: BTreeMap<String, Labels>,
    /// Pods per namespace (hostNetwork ones too): a namespace with pods but
    /// no object still has its name label.
    ns_pods: FxHashMap<Arc<str>, usize>,
    /// Effective labels of every namespace with an object or a pod.
    ns_labels: BTreeMap<String, Labels>,
    /// Live identity -> pods that have it.
    id_pods: FxHashMap<u32, usize>,
    /// Live identity ids per namespace.
    by_ns: BTreeMap<Arc<str>, BTreeSet<u32>>,
    /// Address -> pods with that address and what the peer map says.
    claims: FxHashMap<Ipv4Addr, Claim>,
    /// Addresses with more than one claim.
    contested: BTreeSet<Ipv4Addr>,
}

/// The pods claiming one address, in key order: the first keeps it (a
/// full scan in key order gives it the address). Its identity and named
/// ports are copied here so the peer map is rebuilt without looking pods
/// up.
#[derive(Debug, Default)]
struct Claim {
    holders: Vec<ObjectKey>,
    identity: Option<u32>,
    named: Vec<PeerNamedPort>,
}

/// What changed in the universe during one update.
#[derive(Debug, Default)]
struct UniverseDelta {
    /// Identities touched, with whether they were live before.
    ids: FxHashMap<u32, bool>,
    /// Addresses whose holder, identity or named ports may have changed.
    ips: BTreeSet<Ipv4Addr>,
    /// Namespaces whose pods or object changed.
    namespaces: BTreeSet<String>,
}

/// Identities that appeared and disappeared, and namespaces whose labels
/// changed (labels before, after; None: no such namespace).
#[derive(Debug, Default)]
struct UniverseChanges {
    born: Vec<u32>,
    died: Vec<u32>,
    namespaces: Vec<(String, Option<Labels>, Option<Labels>)>,
}

impl Universe {
    /// Count `facts` of pod `key` in.
    fn link(&mut self, key: &ObjectKey, facts: &PodFacts, d: &mut UniverseDelta) {
        let count = self.ns_pods.entry(facts.namespace.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            d.namespaces.insert(facts.namespace.to_string());
        }
        if let Some(id) = facts.identity {
            d.ids
                .entry(id)
                .or_insert_with(|| self.id_pods.contains_key(&id));
            let n = self.id_pods.entry(id).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.by_ns
                    .entry(facts.namespace.clone())
                    .or_default()
                    .insert(id);
            }
        }
        for &ip in &facts.ips {
            d.ips.insert(ip);
            let claim = self.claims.entry(ip).or_default();
            if let Err(i) = claim.holders.binary_search(key) {
                claim.holders.insert(i, key.clone());
            }
            if claim.holders.len() > 1 {
                self.contested.insert(ip);
            }
        }
    }

    /// Count `facts` of pod `key` out.
    fn unlink(&mut self, key: &ObjectKey, facts: &PodFacts, d: &mut UniverseDelta) {
        if let Some(count) = self.ns_pods.get_mut(&facts.namespace) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.ns_pods.remove(&facts.namespace);
                d.namespaces.insert(facts.namespace.to_string());
            }
        }
        if let Some(id) = facts.identity {
            d.ids
                .entry(id)
                .or_insert_with(|| self.id_pods.contains_key(&id));
            if let Some(n) = self.id_pods.get_mut(&id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.id_pods.remove(&id);
                    if let Some(ids) = self.by_ns.get_mut(&facts.namespace) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            self.by_ns.remove(&facts.namespace);
                        }
                    }
                }
            }
        }
        for &ip in &facts.ips {
            d.ips.insert(ip);
            if let Some(claim) = self.claims.get_mut(&ip) {
                if let Ok(i) = claim.holders.binary_search(key) {
                    claim.holders.remove(i);
                }
                if claim.holders.len() <= 1 {
                    self.contested.remove(&ip);
                }
                if claim.holders.is_empty() {
                    self.claims.remove(&ip);
                }
            }
        }
    }

    /// Copy the holder's identity and named ports into the claims of
    /// `ips` (after their holders changed).
    fn refresh_claims(&mut self, ips: &BTreeSet<Ipv4Addr>) {
        for ip in ips {
            let Some(claim) = self.claims.get_mut(ip) else {
                continue;
            };
            let facts = claim.holders.first().and_then(|k| self.pods.get(k));
            claim.identity = facts.and_then(|f| f.identity);
            match facts {
                Some(f) => claim.named.clone_from(&f.named),
                None => claim.named.clear(),
            }
        }
    }

    /// The peer map: each address to the first pod (key order) holding it.
    fn peer_map(&self) -> PeerMap {
        let mut peers = PeerMap::default();
        for (&ip, claim) in &self.claims {
            // Only pods with an identity (not hostNetwork) hold addresses.
            if let Some(id) = claim.identity {
                peers.insert(ip, id, &claim.named);
            }
        }
        peers
    }
}

/// Does a namespace label change alter which namespaces one of the
/// policy's namespaceSelectors matches (it matches the labels before or
/// after)?
fn namespace_change_affects(
    p: &CompiledPolicy,
    namespaces: &[(String, Option<Labels>, Option<Labels>)],
) -> bool {
    if namespaces.is_empty() {
        return false;
    }
    let rules = [true, false]
        .into_iter()
        .flat_map(|ingress| p.body.norm.rules(ingress).unwrap_or(&[]));
    for rule in rules {
        for peer in rule.peers.iter().flatten() {
            let NormPeer::Pods {
                namespaces: NsScope::Matching(sel),
                ..
            } = peer
            else {
                continue;
            };
            let hit = |l: &Option<Labels>| l.as_ref().is_some_and(|l| sel.matches(l));
            if namespaces.iter().any(|(_, a, b)| hit(a) || hit(b)) {
                return true;
            }
        }
    }
    false
}

impl UniverseChanges {
    fn is_empty(&self) -> bool {
        self.born.is_empty() && self.died.is_empty() && self.namespaces.is_empty()
    }
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
    /// Policies normalized and evaluated from scratch (new, changed spec,
    /// or a namespace their namespaceSelector looks at changed labels).
    pub policies_recompiled: usize,
    /// Policies whose peer identities were patched for identities that
    /// appeared or went away (a pod added, deleted or relabelled).
    pub policies_patched: usize,
    /// Pods whose facts (identity, addresses, named ports) the update
    /// looked at: every pod without a change list, else the listed ones.
    pub pods_examined: usize,
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

/// The objects that changed since a compiler's previous update, when the
/// caller knows them (the sync runner's change set does). An update given
/// this looks at these pods, namespaces and policies only instead of every
/// one in the state. It must name every object that differs from the state
/// the previous update saw in a field the compiler reads; naming unchanged
/// ones is harmless.
#[derive(Clone, Debug, Default)]
pub struct PolicyInputChanges {
    pub pods: Vec<ObjectKey>,
    /// Namespace names.
    pub namespaces: Vec<String>,
    pub policies: Vec<ObjectKey>,
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
    universe: Universe,
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
    /// True when it did: the universe is gone too and must be rebuilt from
    /// the whole state.
    fn maybe_compact(&mut self, state: &ClusterState) -> bool {
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
            return true;
        }
        false
    }

    fn ns_arc(&self, ns: &str) -> Arc<str> {
        match self.universe.ns_pods.get_key_value(ns) {
            Some((k, _)) => k.clone(),
            None => Arc::from(ns),
        }
    }

    /// What the universe takes from `pod` (interning its identity).
    fn pod_facts(&mut self, namespace: Arc<str>, pod: &Pod) -> PodFacts {
        if is_host_network(pod) {
            return PodFacts {
                namespace,
                identity: None,
                ips: Vec::new(),
                named: Vec::new(),
            };
        }
        let identity = self
            .identities
            .intern(&(namespace.clone(), pod_labels(pod)));
        let ips = pod_ipv4s(pod);
        let named = if ips.is_empty() {
            Vec::new()
        } else {
            self.named_ports(pod)
        };
        PodFacts {
            namespace,
            identity: Some(identity),
            ips,
            named,
        }
    }

    /// Bring the universe up to date with `state`: only the pods and
    /// namespaces in `changed`, or (None) every one, compared with what is
    /// stored. Returns what changed and the addresses whose peer entry may
    /// have.
    fn refresh_universe(
        &mut self,
        state: &ClusterState,
        changed: Option<&PolicyInputChanges>,
        stats: &mut PolicyCompileStats,
    ) -> (UniverseChanges, BTreeSet<Ipv4Addr>) {
        let mut d = UniverseDelta::default();
        match changed {
            Some(c) => {
                stats.pods_examined = c.pods.len();
                for key in &c.pods {
                    self.apply_pod(key, state.pods.get(key), &mut d);
                }
                for name in &c.namespaces {
                    self.apply_namespace(name, state.namespaces.get(name), &mut d);
                }
            }
            None => {
                stats.pods_examined = state.pods.len();
                let gone: Vec<ObjectKey> = self
                    .universe
                    .pods
                    .keys()
                    .filter(|k| !state.pods.contains_key(*k))
                    .cloned()
                    .collect();
                for key in &gone {
                    self.apply_pod(key, None, &mut d);
                }
                for (key, pod) in &state.pods {
                    self.apply_pod(key, Some(pod), &mut d);
                }
                let gone: Vec<String> = self
                    .universe
                    .ns_objects
                    .keys()
                    .filter(|n| !state.namespaces.contains_key(*n))
                    .cloned()
                    .collect();
                for name in &gone {
                    self.apply_namespace(name, None, &mut d);
                }
                for (name, ns) in &state.namespaces {
                    self.apply_namespace(name, Some(ns), &mut d);
                }
            }
        }
        self.universe.refresh_claims(&d.ips);
        let mut out = UniverseChanges::default();
        let u = &mut self.universe;
        for name in d.namespaces {
            let now = match u.ns_objects.get(&name) {
                Some(l) => Some(l.clone()),
                None if u.ns_pods.contains_key(name.as_str()) => Some(Labels::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    name.clone(),
                )])),
                None => None,
            };
            if u.ns_labels.get(&name) != now.as_ref() {
                let before = match &now {
                    Some(l) => u.ns_labels.insert(name.clone(), l.clone()),
                    None => u.ns_labels.remove(&name),
                };
                out.namespaces.push((name, before, now));
            }
        }
        for (id, was) in d.ids {
            match (was, u.id_pods.contains_key(&id)) {
                (false, true) => out.born.push(id),
                (true, false) => out.died.push(id),
                _ => {}
            }
        }
        out.born.sort_unstable();
        out.died.sort_unstable();
        (out, d.ips)
    }

    fn apply_namespace(
        &mut self,
        name: &str,
        ns: Option<&k8s_openapi::api::core::v1::Namespace>,
        d: &mut UniverseDelta,
    ) {
        let labels = ns.map(|ns| {
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
            labels
        });
        if self.universe.ns_objects.get(name) == labels.as_ref() {
            return;
        }
        match labels {
            Some(l) => self.universe.ns_objects.insert(name.to_string(), l),
            None => self.universe.ns_objects.remove(name),
        };
        d.namespaces.insert(name.to_string());
    }

    fn apply_pod(&mut self, key: &ObjectKey, pod: Option<&Pod>, d: &mut UniverseDelta) {
        let new = pod.map(|p| {
            let ns = self.ns_arc(&key.0);
            self.pod_facts(ns, p)
        });
        if self.universe.pods.get(key) == new.as_ref() {
            return;
        }
        if let Some(old) = self.universe.pods.remove(key) {
            self.universe.unlink(key, &old, d);
        }
        if let Some(new) = new {
            self.universe.link(key, &new, d);
            self.universe.pods.insert(key.clone(), new);
        }
    }

    fn eval_peers(&self, policy_ns: &str, peers: &Option<Vec<NormPeer>>) -> RulePeers {
        let u = &self.universe;
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
                    let mut take = |ids: &BTreeSet<u32>| {
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
                                if u.ns_labels.get(&**ns).is_some_and(|l| sel.matches(l)) {
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
                        peers: this.eval_peers(&norm.namespace, &r.peers),
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
    /// with `policy_slot == i`. Looks at every pod, namespace and policy
    /// (see [`Self::update_changed`] for the cheaper path).
    pub fn update(
        &mut self,
        state: &ClusterState,
        node_name: &str,
        node_ips: &[Ipv4Addr],
        local_pods: &[LocalPod],
    ) -> PolicyUpdate {
        self.update_changed(state, node_name, node_ips, local_pods, None)
    }

    /// [`Self::update`] when the caller knows what changed since this
    /// compiler's previous update (`changed`, see [`PolicyInputChanges`]).
    /// Cost then follows the change: the pods and namespaces named update
    /// the universe; a policy is recompiled only when its spec changed or a
    /// namespace its namespaceSelector matches (before or after) changed
    /// labels; the others get the identities that appeared or went away
    /// patched into their peer lists; the peer map is rebuilt only when an
    /// address, its identity or named ports changed. The result is the same
    /// as with `changed = None`. The first update, and the one after ids
    /// are compacted, look at everything whatever `changed` says.
    pub fn update_changed(
        &mut self,
        state: &ClusterState,
        node_name: &str,
        node_ips: &[Ipv4Addr],
        local_pods: &[LocalPod],
        changed: Option<&PolicyInputChanges>,
    ) -> PolicyUpdate {
        let compacted = self.maybe_compact(state);
        let changed = changed.filter(|_| self.started && !compacted);
        let mut warnings = Vec::new();
        let mut stats = PolicyCompileStats::default();
        let (uc, touched_ips) = self.refresh_universe(state, changed, &mut stats);
        stats.identities = self.universe.id_pods.len();
        warnings.extend(self.duplicate_ip_warnings());

        // Policies: which to compile from scratch; the rest keep their spec.
        let mut kept = std::mem::take(&mut self.policies);
        let mut to_compile: BTreeMap<ObjectKey, Option<CompiledPolicy>> = BTreeMap::new();
        match changed {
            None => {
                let mut same = BTreeMap::new();
                for (key, np) in &state.network_policies {
                    match kept.remove(key) {
                        Some(p) if p.spec == np.spec => {
                            same.insert(key.clone(), p);
                        }
                        prev => {
                            to_compile.insert(key.clone(), prev);
                        }
                    }
                }
                // What is left was deleted.
                kept = same;
            }
            Some(c) => {
                for key in &c.policies {
                    match state.network_policies.get(key) {
                        None => {
                            kept.remove(key);
                        }
                        Some(np) => {
                            if kept.get(key).is_some_and(|p| p.spec == np.spec) {
                                continue;
                            }
                            let prev = kept.remove(key);
                            to_compile.entry(key.clone()).or_insert(prev);
                        }
                    }
                }
            }
        }
        if !uc.is_empty() {
            // A namespace whose labels changed: recompile the policies that
            // look at it; patch the others' peers for identities that came
            // and went.
            let affected: Vec<ObjectKey> = kept
                .iter()
                .filter(|(_, p)| namespace_change_affects(p, &uc.namespaces))
                .map(|(k, _)| k.clone())
                .collect();
            for key in affected {
                let prev = kept.remove(&key);
                to_compile.insert(key, prev);
            }
            if !uc.born.is_empty() || !uc.died.is_empty() {
                for p in kept.values_mut() {
                    if self.patch_peers(p, &uc) {
                        stats.policies_patched += 1;
                        self.next_version += 1;
                        p.version = self.next_version;
                    }
                }
            }
        }
        for (key, prev) in to_compile {
            let Some(np) = state.network_policies.get(&key) else {
                continue;
            };
            stats.policies_recompiled += 1;
            let (body, w) = self.compile_policy(&key, np);
            let version = match prev {
                Some(p) if p.body == body => p.version,
                _ => {
                    self.next_version += 1;
                    self.next_version
                }
            };
            kept.insert(
                key,
                CompiledPolicy {
                    spec: np.spec.clone(),
                    body,
                    version,
                    warnings: w,
                },
            );
        }
        for p in kept.values() {
            warnings.extend(p.warnings.iter().cloned());
        }
        self.policies = kept;

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

        // Peer map: rebuilt when an address, its holder's identity or named
        // ports changed; the changed entries are among `touched_ips`.
        let peers = if touched_ips.is_empty() && self.started {
            self.prev_peers.clone()
        } else {
            Arc::new(self.universe.peer_map())
        };
        if self.started {
            changes.peer_ips = touched_ips
                .into_iter()
                .filter(|&ip| self.prev_peers.get(ip) != peers.get(ip))
                .collect();
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
        self.started = true;
        PolicyUpdate {
            table,
            warnings,
            changes,
            stats,
        }
    }

    /// DuplicatePodIp warnings in the order a scan of the pods in key order
    /// meets them.
    fn duplicate_ip_warnings(&self) -> Vec<PolicyWarning> {
        let u = &self.universe;
        let mut dups: Vec<(&ObjectKey, Ipv4Addr, &ObjectKey)> = Vec::new();
        for ip in &u.contested {
            let Some((kept, ignored)) = u.claims.get(ip).and_then(|c| c.holders.split_first())
            else {
                continue;
            };
            dups.extend(ignored.iter().map(|k| (k, *ip, kept)));
        }
        dups.sort_unstable();
        dups.into_iter()
            .map(
                |((ns, name), ip, (kns, kname))| PolicyWarning::DuplicatePodIp {
                    ip,
                    kept: format!("{kns}/{kname}"),
                    ignored: format!("{ns}/{name}"),
                },
            )
            .collect()
    }

    /// Does the live identity `id` match one of `peers` of a policy in
    /// `policy_ns` (what [`Self::eval_peers`] would include it for)?
    fn identity_matches(&self, id: u32, policy_ns: &str, peers: &[NormPeer]) -> bool {
        let Some((ns, labels)) = self.identities.get(id) else {
            return false;
        };
        peers.iter().any(|peer| match peer {
            NormPeer::Pods { namespaces, pods } => {
                pods.matches(labels)
                    && match namespaces {
                        NsScope::Own => **ns == *policy_ns,
                        NsScope::Matching(sel) => self
                            .universe
                            .ns_labels
                            .get(&**ns)
                            .is_some_and(|l| sel.matches(l)),
                    }
            }
            NormPeer::Block(_) | NormPeer::Nothing => false,
        })
    }

    /// Bring a policy's peer identities up to date for identities that
    /// appeared or went away, the namespaces' labels being unchanged for
    /// it. Returns true when a rule's peers changed. Equal to evaluating
    /// the peers anew: a dead identity matches nothing, the membership of
    /// every other one did not change.
    fn patch_peers(&self, p: &mut CompiledPolicy, uc: &UniverseChanges) -> bool {
        let mut changed = false;
        for d in [PolicyDirection::Ingress, PolicyDirection::Egress] {
            let norm_rules = p
                .body
                .norm
                .rules(d == PolicyDirection::Ingress)
                .unwrap_or(&[]);
            let rules = match d {
                PolicyDirection::Ingress => &mut p.body.ingress,
                PolicyDirection::Egress => &mut p.body.egress,
            };
            for (rule, norm) in rules.iter_mut().zip(norm_rules) {
                let Some(peers) = &norm.peers else {
                    continue; // every peer: no identity list
                };
                let ids = &mut rule.peers.identities;
                let before = ids.len();
                ids.retain(|id| uc.died.binary_search(id).is_err());
                let mut grew = false;
                for &id in &uc.born {
                    if self.identity_matches(id, &p.body.norm.namespace, peers) {
                        ids.push(id);
                        grew = true;
                    }
                }
                if grew {
                    ids.sort_unstable();
                    ids.dedup();
                }
                changed |= grew || ids.len() != before;
            }
        }
        changed
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::{json, Value};

    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("test object")
    }

    fn pod(ns: &str, i: u8, app: &str) -> Pod {
        obj(json!({
            "metadata": {"namespace": ns, "name": format!("p{i}"), "labels": {"app": app}},
            "spec": {"nodeName": format!("node-{}", i % 2), "containers": []},
            "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", i % 2, i + 2)},
        }))
    }

    fn namespace(name: &str, team: &str) -> Namespace {
        obj(json!({"metadata": {"name": name, "labels": {"team": team}}}))
    }

    fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
        obj(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        (ns.to_string(), name.to_string())
    }

    fn state() -> ClusterState {
        let mut st = ClusterState::default();
        for (name, team) in [("a", "t1"), ("b", "t2")] {
            st.namespaces.insert(name.into(), namespace(name, team));
        }
        for i in 0..12u8 {
            let ns = if i % 2 == 0 { "a" } else { "b" };
            st.pods.insert(
                key(ns, &format!("p{i}")),
                pod(ns, i, &format!("x{}", i % 3)),
            );
        }
        let policies = [
            policy(
                "a",
                "own",
                json!({"podSelector": {}, "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"app": "x1"}}}]}]}),
            ),
            policy(
                "a",
                "teams",
                json!({"podSelector": {"matchLabels": {"app": "x0"}}, "ingress": [{"from": [
                    {"namespaceSelector": {"matchLabels": {"team": "t2"}},
                     "podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": ["x0", "x2"]}]}}]}]}),
            ),
            policy(
                "b",
                "not-x1",
                json!({"podSelector": {}, "ingress": [{"from": [
                    {"podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "NotIn", "values": ["x1"]}]}}]}]}),
            ),
        ];
        for np in policies {
            let k = key(
                np.metadata.namespace.as_deref().unwrap_or_default(),
                np.metadata.name.as_deref().unwrap_or_default(),
            );
            st.network_policies.insert(k, np);
        }
        st
    }

    /// Every kept policy's compiled form equals evaluating it anew over
    /// the current universe (same compiler, so the same ids): patched peer
    /// lists lose dead identities and gain new ones exactly.
    fn assert_policies_fresh(c: &mut PolicyCompiler, st: &ClusterState, step: &str) {
        for (k, np) in &st.network_policies {
            let (body, _) = c.compile_policy(k, np);
            let kept = c.policies.get(k).map(|p| &p.body);
            assert_eq!(kept, Some(&body), "{step}: policy {k:?}");
        }
        assert_eq!(c.policies.len(), st.network_policies.len(), "{step}");
    }

    /// A pod relabel, delete and create, and a namespace label change, each
    /// given as a change list: only the changed pods are examined, no
    /// policy is recompiled for pod changes, a namespace label change
    /// recompiles only the policy whose namespaceSelector looks at it, and
    /// every policy ends up as a fresh evaluation would have it.
    #[test]
    fn changed_objects_only_and_policies_equal_a_fresh_evaluation() {
        let mut st = state();
        let mut c = PolicyCompiler::new();
        let first = c.update(&st, "node-0", &[], &[]);
        assert_eq!(first.stats.policies_recompiled, 3);
        assert_eq!(first.stats.pods_examined, 12);
        assert_policies_fresh(&mut c, &st, "first");

        // p3 (b, app x0) gets a label set nobody else has: a new identity
        // that `teams` admits; x0 in b had only p3 so an identity dies.
        let p3 = key("b", "p3");
        st.pods.insert(p3.clone(), pod("b", 3, "x2-only"));
        let relabel = PolicyInputChanges {
            pods: vec![p3.clone()],
            ..PolicyInputChanges::default()
        };
        let u = c.update_changed(&st, "node-0", &[], &[], Some(&relabel));
        assert_eq!(u.stats.pods_examined, 1);
        assert_eq!(u.stats.policies_recompiled, 0);
        assert!(u.stats.policies_patched >= 1, "{:?}", u.stats);
        assert_policies_fresh(&mut c, &st, "relabel");
        let ip: Ipv4Addr = "10.244.1.5".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        assert_eq!(u.changes.peer_ips, vec![ip], "only p3's address changed");

        // Delete p3, create p20 in a.
        st.pods.remove(&p3);
        let p20 = key("a", "p20");
        st.pods.insert(p20.clone(), pod("a", 20, "x1"));
        let churn = PolicyInputChanges {
            pods: vec![p3, p20],
            ..PolicyInputChanges::default()
        };
        let u = c.update_changed(&st, "node-0", &[], &[], Some(&churn));
        assert_eq!(u.stats.pods_examined, 2);
        assert_eq!(u.stats.policies_recompiled, 0);
        assert_policies_fresh(&mut c, &st, "delete and create");

        // b: team t2 -> t3: `teams` selects namespaces by team.
        st.namespaces.insert("b".into(), namespace("b", "t3"));
        let ns = PolicyInputChanges {
            namespaces: vec!["b".into()],
            ..PolicyInputChanges::default()
        };
        let u = c.update_changed(&st, "node-0", &[], &[], Some(&ns));
        assert_eq!(u.stats.pods_examined, 0);
        assert_eq!(u.stats.policies_recompiled, 1);
        assert_policies_fresh(&mut c, &st, "namespace labels");

        // The namespace object goes: b keeps its name label (its pods).
        st.namespaces.remove("b");
        let u = c.update_changed(&st, "node-0", &[], &[], Some(&ns));
        assert_eq!(u.stats.policies_recompiled, 0, "t3 matched no selector");
        assert_policies_fresh(&mut c, &st, "namespace deleted");
        assert!(c.universe.ns_labels.contains_key("b"));

        // Without a change list the same state changes nothing.
        let u = c.update(&st, "node-0", &[], &[]);
        assert_eq!(u.stats.policies_recompiled, 0);
        assert_eq!(u.stats.policies_patched, 0);
        assert!(u.changes.is_empty(), "{:?}", u.changes);
    }
}
