//! The pods running on this node ([`PodTable`]).
//!
//! A local pod is one with `spec.nodeName` = this node, an IPv4 pod IP, not
//! `hostNetwork` (those use the node's own address and stack) and not
//! terminal (Succeeded/Failed: its IP may already belong to a new pod). Its
//! interface comes from the environment by pod IP. Pods are taken in
//! namespace/name order; `policy_slot` is the position in that list.

use k8s_openapi::api::core::v1::Pod;
use kxdp_dataplane::tables::{LocalPod, PodTable};

use super::{CompileOptions, NodeEnvironment, Warnings};
use crate::endpoints::{pod_ipv4, pod_is_terminal};
use crate::model::ClusterState;

/// Scheduled here, pod network, not terminal (the IP is checked apart).
pub(crate) fn is_local_pod_candidate(pod: &Pod, node_name: &str) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref()) == Some(node_name)
        && !spec.and_then(|s| s.host_network).unwrap_or(false)
        && !pod_is_terminal(pod)
}

pub(super) fn pod_table(
    state: &ClusterState,
    env: &NodeEnvironment,
    opts: &CompileOptions,
    warnings: &mut Warnings,
) -> PodTable {
    let mut pods: Vec<LocalPod> = Vec::new();
    let mut by_ip = rustc_hash::FxHashMap::default();
    let mut by_ifindex = rustc_hash::FxHashMap::default();
    for ((ns, name), pod) in &state.pods {
        if !is_local_pod_candidate(pod, &opts.node_name) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else {
            continue; // not started yet (or IPv6-only): nothing to program
        };
        let key = format!("{ns}/{name}");
        // Duplicates are dropped here rather than by PodTable::new so that
        // policy slots stay equal to table positions.
        if let Some(first) = by_ip.get(&ip) {
            warnings.push(
                "Pod",
                key,
                format!("pod IP {ip} is already used by {first}; skipped"),
            );
            continue;
        }
        let interface = env.pod_interfaces.get(&ip).cloned();
        if let Some(i) = &interface {
            if let Some(first) = by_ifindex.get(&i.ifindex) {
                warnings.push(
                    "Pod",
                    key,
                    format!(
                        "interface {} (ifindex {}) is already used by {first}; skipped",
                        i.name, i.ifindex
                    ),
                );
                continue;
            }
            by_ifindex.insert(i.ifindex, key.clone());
        }
        by_ip.insert(ip, key);
        pods.push(LocalPod {
            ip,
            namespace: ns.as_str().into(),
            name: name.as_str().into(),
            interface,
            policy_slot: u32::try_from(pods.len()).unwrap_or(u32::MAX),
        });
    }
    let (table, rejected) = PodTable::new(pods);
    // Cannot happen after the filtering above; report rather than hide.
    for p in rejected {
        warnings.push("Pod", p.key(), "duplicate pod IP or interface; skipped");
    }
    table
}
