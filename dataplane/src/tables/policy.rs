//! Compiled NetworkPolicy (read side).
//!
//! The control plane (`kxdp_control::policy`) turns NetworkPolicies, Pods and
//! Namespaces into one [`PolicyTable`] per generation. This module only reads
//! it; its contract:
//!
//! * **Cost.** A [`PolicyTable::check`] is: one bounds-checked slot access,
//!   a scan of the node addresses (a handful), one hash probe of the peer IP
//!   in the cluster-wide IP -> identity map, one hash probe of that identity
//!   in the pod's per-direction map, one binary search in the pod's ipBlock
//!   segments, and a binary search in at most three merged port sets. None of
//!   it depends on how many NetworkPolicies exist: every rule that applies to
//!   a (pod, direction, peer) is merged at compile time into one [`PortSet`]
//!   of disjoint port ranges.
//! * **Identities.** Pods with the same namespace and the same labels share
//!   one identity id (namespace labels are a function of the namespace, so
//!   they fold in). hostNetwork pods have no identity: their traffic carries
//!   the node's address.
//! * **Verdicts.** [`PolicyVerdict::NotIsolated`] when no policy of that
//!   direction selects the pod; [`PolicyVerdict::Allowed`] names the lowest
//!   rule id that allows the packet ([`NODE_RULE`] for traffic with the pod's
//!   own node); [`PolicyVerdict::Denied`] otherwise. A slot the table does
//!   not know, or a slot whose address does not match the pod, is denied
//!   (fail closed) in a compiled table; [`PolicyTable::allow_all`] isolates
//!   nobody.
//! * **No panics, no allocation** on the check path.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{IpProto, LocalPod};

/// The rule id [`PolicyTable::check`] reports for traffic between a pod and
/// its own node, which NetworkPolicy always allows.
pub const NODE_RULE: u32 = u32::MAX;

/// Which side of a connection a policy check is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDirection {
    Egress,
    Ingress,
}

impl PolicyDirection {
    /// Lowercase name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            PolicyDirection::Egress => "egress",
            PolicyDirection::Ingress => "ingress",
        }
    }
}

/// The outcome of one policy check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// No policy of this direction selects the pod.
    NotIsolated,
    /// Allowed by a rule; the rule id explains which ([`PolicyTable::describe_rule`]).
    Allowed { rule: u32 },
    /// The pod is isolated and no rule allows this.
    Denied,
}

/// Inconsistent input to a table constructor: a compiler bug, reported
/// instead of building a table that would answer wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyTableError {
    #[error("ipBlock segments overlap or are unsorted: {first}..={last} after {prev_last}")]
    OverlappingSegments {
        prev_last: Ipv4Addr,
        first: Ipv4Addr,
        last: Ipv4Addr,
    },
    #[error("ipBlock segment {first}..={last} is empty")]
    EmptySegment { first: Ipv4Addr, last: Ipv4Addr },
    #[error("identity {identity} is listed twice")]
    DuplicateIdentity { identity: u32 },
}

/// Ports `first..=last` of one protocol, allowed by `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    pub rule: u32,
}

/// A named port that is resolved against the peer at lookup time (egress
/// rules: the name belongs to the destination pod, which may be remote).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NamedPortRule {
    /// Interned port name (see [`PeerNamedPort::name`]).
    pub name: u32,
    pub proto: IpProto,
    pub rule: u32,
}

/// One named container port of a pod, as a peer: `name` (interned by the
/// compiler, the same numbering as [`NamedPortRule::name`]) is `port`/`proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PeerNamedPort {
    pub name: u32,
    pub proto: IpProto,
    pub port: u16,
}

/// The ports a set of rules allows for one peer, merged: per protocol a
/// sorted list of disjoint ranges, each labelled with the lowest rule id
/// that allows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct PortSet {
    /// A rule without `ports`: every port of every protocol, ICMP included.
    all: Option<u32>,
    tcp: Box<[PortRange]>,
    udp: Box<[PortRange]>,
    sctp: Box<[PortRange]>,
    /// Sorted by (name, proto), one entry per pair.
    named: Box<[NamedPortRule]>,
}

impl PortSet {
    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.all.is_none()
            && self.tcp.is_empty()
            && self.udp.is_empty()
            && self.sctp.is_empty()
            && self.named.is_empty()
    }

    fn ranges(&self, proto: IpProto) -> &[PortRange] {
        match proto {
            IpProto::Tcp => &self.tcp,
            IpProto::Udp => &self.udp,
            IpProto::Sctp => &self.sctp,
            IpProto::Icmp => &[],
        }
    }

    /// The lowest rule that allows `proto`/`port`. `peer_named` are the
    /// destination's named ports (egress only; empty for non-pod peers).
    #[inline]
    pub fn lookup(&self, proto: IpProto, port: u16, peer_named: &[PeerNamedPort]) -> Option<u32> {
        let mut best = self.all;
        let ranges = self.ranges(proto);
        let i = ranges.partition_point(|r| r.last < port);
        if let Some(r) = ranges.get(i) {
            if r.first <= port {
                best = min_rule(best, r.rule);
            }
        }
        if !self.named.is_empty() && proto != IpProto::Icmp {
            for p in peer_named
                .iter()
                .filter(|p| p.proto == proto && p.port == port)
            {
                let key = (p.name, proto);
                if let Ok(j) = self.named.binary_search_by(|n| (n.name, n.proto).cmp(&key)) {
                    if let Some(n) = self.named.get(j) {
                        best = min_rule(best, n.rule);
                    }
                }
            }
        }
        best
    }
}

#[inline]
fn min_rule(best: Option<u32>, rule: u32) -> Option<u32> {
    Some(best.map_or(rule, |b| b.min(rule)))
}

/// Accumulates the port grants of several rules into one [`PortSet`].
#[derive(Clone, Debug, Default)]
pub struct PortSetBuilder {
    all: Option<u32>,
    ranges: Vec<(IpProto, u16, u16, u32)>,
    named: Vec<NamedPortRule>,
}

impl PortSetBuilder {
    /// Every port of every protocol (a rule without `ports`).
    pub fn allow_all(&mut self, rule: u32) {
        self.all = min_rule(self.all, rule);
    }

    /// `first..=last` of `proto`. Empty ranges and ICMP are ignored: a port
    /// rule never matches ICMP.
    pub fn allow_range(&mut self, proto: IpProto, first: u16, last: u16, rule: u32) {
        if first <= last && proto != IpProto::Icmp {
            self.ranges.push((proto, first, last, rule));
        }
    }

    /// A named port resolved against the peer at lookup time.
    pub fn allow_named(&mut self, name: u32, proto: IpProto, rule: u32) {
        if proto != IpProto::Icmp {
            self.named.push(NamedPortRule { name, proto, rule });
        }
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.ranges.is_empty() && self.named.is_empty()
    }

    /// Merge into disjoint ranges; each keeps the lowest rule id covering it.
    pub fn build(mut self) -> PortSet {
        let merge = |proto: IpProto| -> Box<[PortRange]> {
            merge_ranges(
                self.ranges
                    .iter()
                    .filter(|r| r.0 == proto)
                    .map(|&(_, first, last, rule)| (first, last, rule)),
            )
        };
        let tcp = merge(IpProto::Tcp);
        let udp = merge(IpProto::Udp);
        let sctp = merge(IpProto::Sctp);
        self.named.sort_unstable();
        // Sorted by (name, proto, rule): the first of each pair has the lowest rule.
        self.named
            .dedup_by(|later, first| later.name == first.name && later.proto == first.proto);
        PortSet {
            all: self.all,
            tcp,
            udp,
            sctp,
            named: self.named.into_boxed_slice(),
        }
    }
}

/// Sweep over range boundaries keeping the multiset of active rules; emit a
/// segment whenever the lowest active rule changes.
fn merge_ranges(ranges: impl Iterator<Item = (u16, u16, u32)>) -> Box<[PortRange]> {
    // (position, is_end, rule); ends at last+1 so u32 positions.
    let mut events: Vec<(u32, bool, u32)> = Vec::new();
    for (first, last, rule) in ranges {
        events.push((u32::from(first), false, rule));
        events.push((u32::from(last) + 1, true, rule));
    }
    if events.is_empty() {
        return Box::new([]);
    }
    events.sort_unstable();
    let mut active: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    let mut out: Vec<PortRange> = Vec::new();
    let mut i = 0;
    let mut open: Option<(u32, u32)> = None; // (start, rule)
    while let Some(&(pos, _, _)) = events.get(i) {
        while let Some(&(p, is_end, rule)) = events.get(i) {
            if p != pos {
                break;
            }
            if is_end {
                if let Some(c) = active.get_mut(&rule) {
                    *c -= 1;
                    if *c == 0 {
                        active.remove(&rule);
                    }
                }
            } else {
                *active.entry(rule).or_insert(0) += 1;
            }
            i += 1;
        }
        let now = active.keys().next().copied();
        if open.map(|o| o.1) != now {
            if let Some((start, rule)) = open.take() {
                push_range(&mut out, start, pos - 1, rule);
            }
            open = now.map(|r| (pos, r));
        }
    }
    out.into_boxed_slice()
}

fn push_range(out: &mut Vec<PortRange>, first: u32, last: u32, rule: u32) {
    let (Ok(first), Ok(last)) = (u16::try_from(first), u16::try_from(last)) else {
        return;
    };
    match out.last_mut() {
        Some(prev) if prev.rule == rule && u32::from(prev.last) + 1 == u32::from(first) => {
            prev.last = last;
        }
        _ => out.push(PortRange { first, last, rule }),
    }
}

/// A policy that selects a pod in one direction, and its rule ids of that
/// direction (empty: it only isolates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SelectingPolicy {
    /// `namespace/name`
    pub policy: Arc<str>,
    pub rules: Box<[u32]>,
}

/// Peer addresses `first..=last` (from ipBlocks) and the ports they may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IpSegment {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// Index into the direction's port sets.
    set: u32,
}

/// The compiled rules of one isolated (pod, direction). Shared (Arc) by all
/// local pods whose rules compile identically, and across generations.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct DirPolicy {
    selected_by: Box<[SelectingPolicy]>,
    /// Rules whose peer list is empty: any peer, pod or not.
    any_peer: PortSet,
    /// Peer identity -> index into `sets`.
    identities: FxHashMap<u32, u32>,
    /// Sorted, disjoint.
    segments: Box<[IpSegment]>,
    /// Deduplicated port sets.
    sets: Box<[PortSet]>,
}

impl DirPolicy {
    /// Assemble. `segments` must be sorted and disjoint, identities unique.
    pub fn new(
        selected_by: Vec<SelectingPolicy>,
        any_peer: PortSet,
        identities: Vec<(u32, PortSet)>,
        segments: Vec<(Ipv4Addr, Ipv4Addr, PortSet)>,
    ) -> Result<Self, PolicyTableError> {
        let mut sets: Vec<PortSet> = Vec::new();
        let mut index: FxHashMap<PortSet, u32> = FxHashMap::default();
        let mut intern = |set: PortSet| -> u32 {
            if let Some(&i) = index.get(&set) {
                return i;
            }
            let i = sets.len() as u32;
            sets.push(set.clone());
            index.insert(set, i);
            i
        };
        let mut ids = FxHashMap::default();
        ids.reserve(identities.len());
        for (identity, set) in identities {
            if set.is_empty() {
                continue;
            }
            if ids.insert(identity, intern(set)).is_some() {
                return Err(PolicyTableError::DuplicateIdentity { identity });
            }
        }
        let mut segs: Vec<IpSegment> = Vec::with_capacity(segments.len());
        for (first, last, set) in segments {
            if first > last {
                return Err(PolicyTableError::EmptySegment { first, last });
            }
            if let Some(prev) = segs.last() {
                if prev.last >= first {
                    return Err(PolicyTableError::OverlappingSegments {
                        prev_last: prev.last,
                        first,
                        last,
                    });
                }
            }
            if set.is_empty() {
                continue;
            }
            segs.push(IpSegment {
                first,
                last,
                set: intern(set),
            });
        }
        Ok(DirPolicy {
            selected_by: selected_by.into_boxed_slice(),
            any_peer,
            identities: ids,
            segments: segs.into_boxed_slice(),
            sets: sets.into_boxed_slice(),
        })
    }

    /// Isolation without any allow (used when a table cannot be built).
    pub fn isolate_only(selected_by: Vec<SelectingPolicy>) -> Self {
        DirPolicy {
            selected_by: selected_by.into_boxed_slice(),
            any_peer: PortSet::default(),
            identities: FxHashMap::default(),
            segments: Box::new([]),
            sets: Box::new([]),
        }
    }

    /// The policies selecting the pod in this direction.
    pub fn selected_by(&self) -> &[SelectingPolicy] {
        &self.selected_by
    }

    /// The lowest rule allowing `proto`/`port` with a peer at `ip` whose
    /// identity and named ports are `peer` (None: not a known pod).
    #[inline]
    pub fn lookup(
        &self,
        ip: Ipv4Addr,
        peer: Option<(u32, &[PeerNamedPort])>,
        proto: IpProto,
        port: u16,
    ) -> Option<u32> {
        let named = peer.map_or(&[][..], |p| p.1);
        let mut best = self.any_peer.lookup(proto, port, named);
        if let Some((identity, _)) = peer {
            if let Some(set) = self
                .identities
                .get(&identity)
                .and_then(|&i| self.sets.get(i as usize))
            {
                best = min_opt(best, set.lookup(proto, port, named));
            }
        }
        let i = self.segments.partition_point(|s| s.last < ip);
        if let Some(seg) = self.segments.get(i) {
            if seg.first <= ip {
                if let Some(set) = self.sets.get(seg.set as usize) {
                    best = min_opt(best, set.lookup(proto, port, named));
                }
            }
        }
        best
    }
}

#[inline]
fn min_opt(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Where a peer's identity is looked up: every pod of the cluster that has
/// an IPv4 address and is not hostNetwork.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerMap {
    by_ip: FxHashMap<Ipv4Addr, PeerEntry>,
    named: Vec<PeerNamedPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerEntry {
    identity: u32,
    named_start: u32,
    named_len: u32,
}

impl PeerMap {
    /// Add a pod address. Returns false (and changes nothing) when the
    /// address is already taken.
    pub fn insert(&mut self, ip: Ipv4Addr, identity: u32, named: &[PeerNamedPort]) -> bool {
        if self.by_ip.contains_key(&ip) {
            return false;
        }
        let entry = PeerEntry {
            identity,
            named_start: self.named.len() as u32,
            named_len: named.len() as u32,
        };
        self.named.extend_from_slice(named);
        self.by_ip.insert(ip, entry);
        true
    }

    /// The identity and named ports of the pod with this address.
    #[inline]
    pub fn get(&self, ip: Ipv4Addr) -> Option<(u32, &[PeerNamedPort])> {
        let e = self.by_ip.get(&ip)?;
        let start = e.named_start as usize;
        let named = self
            .named
            .get(start..start.saturating_add(e.named_len as usize))
            .unwrap_or(&[]);
        Some((e.identity, named))
    }

    /// All addresses, in no particular order.
    pub fn ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_ip.keys().copied()
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// What a rule id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    /// `namespace/name`
    pub policy: Arc<str>,
    pub direction: PolicyDirection,
    /// Index in the policy's `ingress` or `egress` list.
    pub index: u32,
    /// One line: peers and ports as written.
    pub summary: Arc<str>,
}

/// The policy state of one local pod (one slot).
#[derive(Clone, Debug, Serialize)]
pub struct SlotPolicy {
    /// `namespace/name`
    pub pod: Arc<str>,
    pub ip: Ipv4Addr,
    /// None: not isolated for ingress.
    pub ingress: Option<Arc<DirPolicy>>,
    /// None: not isolated for egress.
    pub egress: Option<Arc<DirPolicy>>,
}

impl SlotPolicy {
    /// The compiled rules for `direction`, None when not isolated.
    pub fn direction(&self, direction: PolicyDirection) -> Option<&Arc<DirPolicy>> {
        match direction {
            PolicyDirection::Ingress => self.ingress.as_ref(),
            PolicyDirection::Egress => self.egress.as_ref(),
        }
    }
}

/// Per-pod, per-direction compiled rules.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyTable {
    /// Deny slots the table does not know (compiled tables); allow_all
    /// isolates nobody.
    fail_closed: bool,
    node_ips: Box<[Ipv4Addr]>,
    #[serde(skip)]
    peers: Arc<PeerMap>,
    slots: Vec<SlotPolicy>,
    #[serde(skip)]
    rules: Arc<[RuleInfo]>,
}

/// Why a pod is (not) isolated in one direction: the shared format of
/// `kxdp trace` and `kxdp get policies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyExplanation {
    pub slot: u32,
    /// `namespace/name`, None for a slot the table does not know.
    pub pod: Option<Arc<str>>,
    pub direction: PolicyDirection,
    pub isolated: bool,
    pub policies: Vec<ExplainedPolicy>,
}

/// A policy selecting the pod, with its rules of that direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExplainedPolicy {
    pub policy: Arc<str>,
    /// Empty: the policy isolates without allowing anything.
    pub rules: Vec<ExplainedRule>,
}

/// One rule of an [`ExplainedPolicy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExplainedRule {
    pub rule: u32,
    pub index: u32,
    pub summary: Arc<str>,
}

impl PolicyTable {
    /// A table in which no pod is isolated.
    pub fn allow_all() -> Self {
        PolicyTable::default()
    }

    /// A compiled table. `slots[i]` belongs to the local pod whose
    /// `policy_slot` is `i`; `rules[id]` describes rule `id`.
    pub fn new(
        node_ips: &[Ipv4Addr],
        peers: Arc<PeerMap>,
        slots: Vec<SlotPolicy>,
        rules: Arc<[RuleInfo]>,
    ) -> Self {
        PolicyTable {
            fail_closed: true,
            node_ips: node_ips.into(),
            peers,
            slots,
            rules,
        }
    }

    /// May `pod` (local) exchange a new connection with `peer` in `direction`
    /// (egress: pod -> peer:port; ingress: peer -> pod:port)?
    #[inline]
    pub fn check(
        &self,
        direction: PolicyDirection,
        pod: &LocalPod,
        peer: Ipv4Addr,
        proto: IpProto,
        port: u16,
    ) -> PolicyVerdict {
        let Some(slot) = self.slots.get(pod.policy_slot as usize) else {
            return if self.fail_closed {
                PolicyVerdict::Denied
            } else {
                PolicyVerdict::NotIsolated
            };
        };
        if slot.ip != pod.ip {
            // The pod list and this table are from different generations.
            return PolicyVerdict::Denied;
        }
        let Some(dir) = slot.direction(direction) else {
            return PolicyVerdict::NotIsolated;
        };
        if self.node_ips.contains(&peer) {
            return PolicyVerdict::Allowed { rule: NODE_RULE };
        }
        match dir.lookup(peer, self.peers.get(peer), proto, port) {
            Some(rule) => PolicyVerdict::Allowed { rule },
            None => PolicyVerdict::Denied,
        }
    }

    /// Would an existing flow `src -> dst` (`proto`, destination port
    /// `dport`) that involves the local `pod` still be admitted by this
    /// table? Used to drop conntrack entries whose access a new generation
    /// revoked. The pod's egress is checked when it is the source, its
    /// ingress when it is the destination (both for a pod talking to itself).
    pub fn would_allow(
        &self,
        pod: &LocalPod,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProto,
        dport: u16,
    ) -> bool {
        let denied = |d, peer| self.check(d, pod, peer, proto, dport) == PolicyVerdict::Denied;
        if pod.ip == src && denied(PolicyDirection::Egress, dst) {
            return false;
        }
        if pod.ip == dst && denied(PolicyDirection::Ingress, src) {
            return false;
        }
        pod.ip == src || pod.ip == dst
    }

    /// Human explanation of a rule id: `ns/policy ingress rule N`.
    pub fn describe_rule(&self, rule: u32) -> String {
        if rule == NODE_RULE {
            return "node traffic is always allowed".to_string();
        }
        match self.rules.get(rule as usize) {
            Some(r) => format!("{} {} rule {}", r.policy, r.direction.name(), r.index),
            None => format!("unknown rule {rule}"),
        }
    }

    /// What a rule id stands for.
    pub fn rule(&self, rule: u32) -> Option<&RuleInfo> {
        self.rules.get(rule as usize)
    }

    /// The policies and rules that apply to the pod in `slot` for `direction`.
    pub fn explain(&self, slot: u32, direction: PolicyDirection) -> PolicyExplanation {
        let Some(s) = self.slots.get(slot as usize) else {
            return PolicyExplanation {
                slot,
                pod: None,
                direction,
                isolated: self.fail_closed,
                policies: Vec::new(),
            };
        };
        let dir = s.direction(direction);
        let policies = dir
            .map(|d| {
                d.selected_by()
                    .iter()
                    .map(|p| ExplainedPolicy {
                        policy: p.policy.clone(),
                        rules: p
                            .rules
                            .iter()
                            .map(|&id| {
                                let info = self.rules.get(id as usize);
                                ExplainedRule {
                                    rule: id,
                                    index: info.map_or(0, |i| i.index),
                                    summary: info
                                        .map_or_else(|| "unknown".into(), |i| i.summary.clone()),
                                }
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        PolicyExplanation {
            slot,
            pod: Some(s.pod.clone()),
            direction,
            isolated: dir.is_some(),
            policies,
        }
    }

    /// [`Self::explain`] for every slot and both directions.
    pub fn explain_all(&self) -> Vec<PolicyExplanation> {
        (0..self.slots.len() as u32)
            .flat_map(|s| {
                [PolicyDirection::Ingress, PolicyDirection::Egress].map(|d| self.explain(s, d))
            })
            .collect()
    }

    /// The per-slot state.
    pub fn slots(&self) -> &[SlotPolicy] {
        &self.slots
    }

    /// The cluster-wide peer map.
    pub fn peers(&self) -> &Arc<PeerMap> {
        &self.peers
    }

    /// The node addresses that are always allowed.
    pub fn node_ips(&self) -> &[Ipv4Addr] {
        &self.node_ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_ranges_keep_lowest_rule_and_are_disjoint() {
        let mut b = PortSetBuilder::default();
        b.allow_range(IpProto::Tcp, 80, 90, 5);
        b.allow_range(IpProto::Tcp, 85, 100, 2);
        b.allow_range(IpProto::Tcp, 101, 101, 2);
        b.allow_range(IpProto::Udp, 53, 53, 7);
        b.allow_range(IpProto::Icmp, 0, 0, 1);
        let s = b.build();
        assert_eq!(
            &*s.tcp,
            &[
                PortRange {
                    first: 80,
                    last: 84,
                    rule: 5
                },
                PortRange {
                    first: 85,
                    last: 101,
                    rule: 2
                }
            ]
        );
        assert_eq!(s.lookup(IpProto::Tcp, 79, &[]), None);
        assert_eq!(s.lookup(IpProto::Tcp, 84, &[]), Some(5));
        assert_eq!(s.lookup(IpProto::Tcp, 101, &[]), Some(2));
        assert_eq!(s.lookup(IpProto::Tcp, 102, &[]), None);
        assert_eq!(s.lookup(IpProto::Udp, 53, &[]), Some(7));
        assert_eq!(s.lookup(IpProto::Icmp, 0, &[]), None);
    }

    #[test]
    fn full_port_range_edges() {
        let mut b = PortSetBuilder::default();
        b.allow_range(IpProto::Sctp, 0, u16::MAX, 3);
        let s = b.build();
        assert_eq!(s.lookup(IpProto::Sctp, 0, &[]), Some(3));
        assert_eq!(s.lookup(IpProto::Sctp, u16::MAX, &[]), Some(3));
    }

    #[test]
    fn named_ports_resolve_against_peer() {
        let mut b = PortSetBuilder::default();
        b.allow_named(4, IpProto::Tcp, 9);
        b.allow_named(4, IpProto::Tcp, 3);
        let s = b.build();
        let peer = [PeerNamedPort {
            name: 4,
            proto: IpProto::Tcp,
            port: 8080,
        }];
        assert_eq!(s.lookup(IpProto::Tcp, 8080, &peer), Some(3));
        assert_eq!(s.lookup(IpProto::Udp, 8080, &peer), None);
        assert_eq!(s.lookup(IpProto::Tcp, 8081, &peer), None);
        assert_eq!(s.lookup(IpProto::Tcp, 8080, &[]), None);
    }

    #[test]
    fn overlapping_segments_are_rejected() {
        let mut b = PortSetBuilder::default();
        b.allow_all(0);
        let set = b.build();
        let a = Ipv4Addr::new(10, 0, 0, 0);
        let z = Ipv4Addr::new(10, 0, 0, 255);
        let err = DirPolicy::new(
            vec![],
            PortSet::default(),
            vec![],
            vec![(a, z, set.clone()), (z, z, set)],
        );
        assert!(matches!(
            err,
            Err(PolicyTableError::OverlappingSegments { .. })
        ));
    }

    #[test]
    fn allow_all_isolates_nobody_and_compiled_fails_closed() {
        let pod = LocalPod {
            ip: Ipv4Addr::new(10, 0, 0, 1),
            namespace: "x".into(),
            name: "a".into(),
            interface: None,
            policy_slot: 0,
        };
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let t = PolicyTable::allow_all();
        assert_eq!(
            t.check(PolicyDirection::Ingress, &pod, peer, IpProto::Tcp, 80),
            PolicyVerdict::NotIsolated
        );
        let t = PolicyTable::new(&[], Arc::default(), vec![], Arc::from(Vec::new()));
        assert_eq!(
            t.check(PolicyDirection::Ingress, &pod, peer, IpProto::Tcp, 80),
            PolicyVerdict::Denied
        );
        assert_eq!(t.describe_rule(NODE_RULE), "node traffic is always allowed");
    }
}
