//! The pure compiler: desired state ([`ClusterState`]) plus what the host
//! provides ([`NodeEnvironment`]) and configuration ([`CompileOptions`]) ->
//! one [`TableSet`] generation.
//!
//! Contract:
//! - Pure and deterministic: no I/O, no clock, no randomness; the same
//!   inputs give the same tables (maps are walked in key order, backends are
//!   sorted before their Maglev tables are built).
//! - Never stops half-way: an object that cannot be programmed is skipped
//!   with a [`CompileWarning`] and the rest compiles. Only problems that
//!   leave no sensible table set at all — this node missing from the state,
//!   or without any address — are a [`CompileError`]; the caller then keeps
//!   publishing the previous generation.
//! - Services follow kube-proxy (see [`services`]); Endpoints come from the
//!   EndpointSlices in the state plus those [`crate::endpoints`] derives for
//!   selector Services that have none.
//! - Cost is linear in the number of objects plus endpoints (slices are
//!   indexed by Service, pods by namespace and label); 30k Services × 10
//!   endpoints compile in under a second of CPU in release builds, half of
//!   it spent building Maglev tables.
//! - NetworkPolicy is compiled here too ([`crate::policy`]), with a fresh
//!   policy compiler; every local pod's `policy_slot` is its index in the
//!   pod table, and the node's own addresses (node IPs, VTEP, gateway, pod
//!   CIDR address) are the ones policy always admits.
//! - A Service is compiled on its own (`services::compile_service`: its
//!   ports, backend sets and Maglev tables, the frontends it claims) and
//!   the table is then assembled from all of them in namespace/name order.
//!   [`Compiler`] keeps those per-Service results between generations and
//!   recompiles only what a change touched; it gives the same tables as
//!   [`compile`] (see its module doc).

mod env;
mod incremental;
mod node;
mod pods;
mod services;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::Ipv4Addr;

use kxdp_dataplane::tables::{Ipv4Cidr, LocalPod, NodeConfig, TableSet, VxlanConfig};

use crate::model::ClusterState;

pub use env::{
    synthetic_host_mac, synthetic_pod_mac, synthetic_uplink_mac, synthetic_veth_name,
    NodeEnvironment,
};
pub use incremental::{CompileStats, Compiler, IncrementalOutput};
pub use node::{
    node_internal_ips, node_pod_cidrs, node_underlay_ip, FLANNEL_BACKEND_DATA,
    FLANNEL_BACKEND_TYPE, FLANNEL_PUBLIC_IP,
};
pub use services::{
    DEFAULT_AFFINITY_TIMEOUT_SECS, MAX_AFFINITY_TIMEOUT_SECS, SERVICE_PROXY_NAME_LABEL,
};

/// Compile-time configuration (flags of `kxdp run` / `kxdp trace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// This node's Kubernetes name.
    pub node_name: String,
    /// VXLAN VNI and UDP port (Flannel defaults: 1, 8472).
    pub vxlan: VxlanConfig,
    /// Valid NodePort range, inclusive (kube-apiserver default 30000-32767).
    pub node_port_range: (u16, u16),
    /// Source ports for masquerade, inclusive. Default 61000-65535: clear
    /// of NodePorts and of Linux's ephemeral range (32768-60999), because
    /// the uplink's steering program hands replies to masquerade ports to
    /// kxdp — an overlap would steal replies to the node's own connections.
    pub masquerade_port_range: (u16, u16),
    /// Pod CIDRs of the whole cluster; None = the union of every Node's
    /// podCIDR(s).
    pub cluster_cidrs: Option<Vec<Ipv4Cidr>>,
    /// kube-proxy's `service.kubernetes.io/service-proxy-name` handling:
    /// Services carrying that label are programmed only when it equals this
    /// name; with None every labelled Service is skipped.
    pub proxy_name: Option<String>,
    /// Extra addresses NodePorts answer on, besides the Node's own.
    pub node_port_addresses: Vec<Ipv4Addr>,
}

impl CompileOptions {
    /// Defaults for node `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        CompileOptions {
            node_name: node_name.into(),
            vxlan: VxlanConfig::default(),
            node_port_range: (30000, 32767),
            masquerade_port_range: (61000, 65535),
            cluster_cidrs: None,
            proxy_name: None,
            node_port_addresses: Vec::new(),
        }
    }
}

/// An object (or part of one) that was skipped or adjusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileWarning {
    /// Kind of the object: `Service`, `Node`, `Pod`, `EndpointSlice`.
    pub kind: &'static str,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub name: String,
    pub message: String,
}

impl fmt::Display for CompileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.name, self.message)
    }
}

/// Collects warnings during one compile.
#[derive(Default)]
pub(crate) struct Warnings(pub(crate) Vec<CompileWarning>);

impl Warnings {
    pub(crate) fn push(
        &mut self,
        kind: &'static str,
        name: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(CompileWarning {
            kind,
            name: name.into(),
            message: message.into(),
        });
    }

    pub(crate) fn extend_policy(&mut self, policy: &[crate::policy::PolicyWarning]) {
        for w in policy {
            self.push("NetworkPolicy", "", w.to_string());
        }
    }
}

/// Nothing sensible can be compiled; keep the previous tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("node {node:?} is not in the cluster state (no Node object with that name)")]
    NodeNotFound { node: String },
    #[error("node {node:?} has no IPv4 address (no InternalIP, no {FLANNEL_PUBLIC_IP} annotation, no configured address)")]
    NodeWithoutAddress { node: String },
}

/// One compiled generation and what was skipped on the way.
#[derive(Debug)]
pub struct CompileOutput {
    pub tables: TableSet,
    pub warnings: Vec<CompileWarning>,
}

/// Compile `state` into the tables of node `opts.node_name`, from scratch.
/// [`Compiler`] gives the same tables for a stream of changes at a
/// fraction of the cost.
pub fn compile(
    state: &ClusterState,
    env: &NodeEnvironment,
    opts: &CompileOptions,
    generation: u64,
) -> Result<CompileOutput, CompileError> {
    let mut warnings = Warnings::default();
    let node = node::node_config(state, env, opts, &mut warnings)?;
    let routes = node::route_table(state, opts, &mut warnings);
    let pods = pods::pod_table(state, env, opts, &mut warnings);
    let derived = crate::endpoints::derive_endpoint_slices(state);
    let index = services::slices_by_service(state, &derived);
    let compiled: Vec<services::CompiledService> = state
        .services
        .iter()
        .map(|((ns, name), svc)| {
            let slices = index
                .get(&(ns.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            services::compile_service(ns, name, svc, slices, &opts.node_name, opts)
        })
        .collect();
    drop(index);
    drop(derived);
    let (services, placements, _) = services::assemble(&compiled);
    for (c, p) in compiled.iter().zip(&placements) {
        warnings.0.extend(c.warnings(p));
    }
    drop(compiled);
    // NetworkPolicy: per local pod, indexed by policy_slot (= position).
    let local_pods: Vec<LocalPod> = pods.iter().cloned().collect();
    let policy = crate::policy::compile_policies(
        state,
        &opts.node_name,
        &policy_owned_ips(&node),
        &local_pods,
    );
    warnings.extend_policy(&policy.warnings);
    Ok(CompileOutput {
        tables: TableSet {
            generation,
            node,
            services,
            pods,
            routes,
            policy: policy.table,
            neighbours: env.neighbours.clone(),
        },
        warnings: warnings.0,
    })
}

/// The addresses NetworkPolicy treats as this node's (traffic from them is
/// always allowed): node IPs, VTEP address, pods' gateway, pod CIDR
/// network address — what [`NodeConfig::owns`] says.
pub(crate) fn policy_owned_ips(node: &NodeConfig) -> Vec<Ipv4Addr> {
    let mut owned: Vec<Ipv4Addr> = node.node_ips.clone();
    owned.extend(
        [
            Some(node.vtep_ip),
            node.gateway_ip,
            node.pod_cidr.map(|c| c.addr()),
        ]
        .into_iter()
        .flatten(),
    );
    owned
}
