//! The NetworkPolicy compiler: NetworkPolicies, Pods and Namespaces ->
//! [`PolicyTable`] (per local pod, per direction, constant-cost lookups).
//!
//! # Semantics (Kubernetes `networking.k8s.io/v1`, types.go and defaults.go)
//! * A pod is isolated for a direction once any policy whose policyTypes
//!   include that direction selects it (`podSelector` in the policy's
//!   namespace; `{}` = every pod of the namespace). policyTypes default to
//!   Ingress, plus Egress when the `egress` list is non-empty (upstream
//!   `SetDefaults_NetworkPolicy` tests `len(spec.Egress) != 0`).
//! * Allowed = union of every rule of every selecting policy. A connection
//!   needs the source pod's egress and the destination pod's ingress; each
//!   side is checked by the node hosting that pod.
//! * `ingress: []` / omitted (with Ingress in policyTypes) = no rule = deny
//!   all. In a rule, `from`/`to` omitted or `[]` = every peer, `ports`
//!   omitted or `[]` = every port and protocol (ICMP included); a rule with
//!   ports never matches ICMP. (DESIGN §6 says "empty from/to = nobody"; the
//!   upstream API comments say "If this field is empty or missing, this rule
//!   matches all sources" and upstream wins — a rule `{}` allows everybody,
//!   `ingress: []` allows nobody.)
//! * Peers: `podSelector` (policy namespace), `namespaceSelector` (every pod
//!   of matching namespaces; `{}` = all namespaces), both in one peer = AND,
//!   `ipBlock` = cidr minus every except. Every namespace carries the
//!   `kubernetes.io/metadata.name` label the API server sets.
//! * **ipBlock and pod IPs.** The upstream docs say ipBlocks "should be
//!   cluster-external IPs" since pod IPs are ephemeral, but do not forbid
//!   matching pods, and the upstream e2e tests ("should allow egress access
//!   to server in CIDR block", "...except clause...") require that a pod's
//!   IP inside an ipBlock matches. kxdp matches ipBlocks against the peer
//!   address whatever it is (pod, node or external), like Calico and Cilium.
//! * Ports: number, range (`endPort`), or name. A named port in an ingress
//!   rule is resolved against the destination (the local pod's)
//!   `containers[].ports` with the same name *and protocol*; in an egress
//!   rule against the destination peer pod's ports at lookup time, and a
//!   non-pod peer never matches a named port.
//! * Traffic between a pod and an address of its own node is always allowed
//!   ([`NODE_RULE`]). hostNetwork pods are never selected; as peers they have
//!   their node's address, so only ipBlocks (or rules with no peer list)
//!   match them. Pods in phase Succeeded/Failed do not hold their IP.
//!
//! # Invalid policies
//! The API server rejects invalid policies; manifests may still contain
//! them. kxdp reports each problem as a [`PolicyWarning`] and never lets an
//! invalid part grant anything: an invalid peer matches no peer, an invalid
//! port entry matches no port (an invalid entry is *replaced*, never
//! dropped, so a list never becomes "empty = everything"), and an invalid
//! `spec.podSelector` makes the policy isolate every pod of its namespace in
//! its directions while allowing nothing (fail closed).
//!
//! # Compiled form
//! See [`kxdp_dataplane::tables::policy`]: identities per (namespace,
//! labels), a per-(pod, direction) identity -> merged port set map, ipBlock
//! segments for a binary search, and port sets of disjoint ranges.
//!
//! # Updates
//! [`PolicyCompiler`] keeps stable identity and rule ids and the per-(pod,
//! direction) tables keyed by their inputs (the selecting policies' compiled
//! versions, and for ingress with named ports the pod's container ports), so
//! a change rebuilds only the tables it affects; the rest are shared via
//! `Arc` with the previous generation. It also keeps the universe (which
//! pods hold which identity and address) and re-evaluates only the policy
//! selections a changed pod or namespace affects
//! ([`PolicyCompiler::update_changed`]). [`PolicyChanges`] lists what changed
//! so conntrack entries that a new generation would deny can be dropped
//! ([`PolicyTable::would_allow`]).

mod compiler;
pub mod selector;
mod spec;

use std::net::Ipv4Addr;

pub use compiler::{
    PolicyChanges, PolicyCompileStats, PolicyCompiler, PolicyInputChanges, PolicyUpdate,
};
pub use kxdp_dataplane::tables::policy::{
    PolicyDirection, PolicyExplanation, PolicyTable, PolicyVerdict, NODE_RULE,
};

use kxdp_dataplane::tables::LocalPod;

use crate::model::ClusterState;

/// A problem found while compiling; compilation always completes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyWarning {
    #[error("NetworkPolicy {policy}: {field}: {reason}; {effect}")]
    InvalidPolicy {
        policy: String,
        field: String,
        reason: String,
        effect: &'static str,
    },
    #[error("local pod {pod}: no Pod object in the cluster state; it is treated as having no labels and no ports")]
    UnknownLocalPod { pod: String },
    #[error("local pod {pod} has policy_slot {slot} but is at index {index}; the index is used")]
    SlotMismatch { pod: String, slot: u32, index: u32 },
    #[error("local pod {pod} is scheduled on {scheduled}, not on this node {node}")]
    ForeignLocalPod {
        pod: String,
        scheduled: String,
        node: String,
    },
    #[error("pod IP {ip} is claimed by {kept} and {ignored}; {kept} keeps it for policy peers")]
    DuplicatePodIp {
        ip: Ipv4Addr,
        kept: String,
        ignored: String,
    },
    #[error("NetworkPolicy {policy}: internal error while building the table for {pod}: {reason}; the pod is isolated with no rules")]
    Internal {
        policy: String,
        pod: String,
        reason: String,
    },
}

/// The result of a one-shot compile.
#[derive(Debug)]
pub struct PolicyCompileOutput {
    pub table: PolicyTable,
    pub warnings: Vec<PolicyWarning>,
}

/// Compile the policy table for `node_name` from scratch. `local_pods[i]`
/// is the pod with `policy_slot == i`; `node_ips` are this node's addresses.
pub fn compile_policies(
    state: &ClusterState,
    node_name: &str,
    node_ips: &[Ipv4Addr],
    local_pods: &[LocalPod],
) -> PolicyCompileOutput {
    let update = PolicyCompiler::new().update(state, node_name, node_ips, local_pods);
    PolicyCompileOutput {
        table: update.table,
        warnings: update.warnings,
    }
}
