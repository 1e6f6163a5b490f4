//! This node's settings ([`NodeConfig`]) and the routes to the other nodes'
//! pod CIDRs ([`RouteTable`]), from Node objects and Flannel's annotations
//! (DESIGN §4, VXLAN).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use kxdp_dataplane::tables::{Ipv4Cidr, MacAddr, NodeConfig, RemoteNode, RouteTable};

use super::{CompileError, CompileOptions, NodeEnvironment, Warnings};
use crate::model::ClusterState;

/// Flannel: the node's underlay (VTEP) address.
pub const FLANNEL_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Flannel: backend settings, `{"VNI":1,"VtepMAC":"..."}` for vxlan.
pub const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// Flannel: backend type (`vxlan`).
pub const FLANNEL_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// IPv4 InternalIP addresses of a Node, in status order.
pub fn node_internal_ips(node: &Node) -> Vec<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The Flannel public-ip annotation, if it is an IPv4 address.
pub(crate) fn public_ip(node: &Node) -> Option<Ipv4Addr> {
    annotation(node, FLANNEL_PUBLIC_IP).and_then(|s| s.trim().parse().ok())
}

/// The address VXLAN packets to/from this node use: Flannel public-ip,
/// else the first InternalIP.
pub fn node_underlay_ip(node: &Node) -> Option<Ipv4Addr> {
    public_ip(node).or_else(|| node_internal_ips(node).first().copied())
}

/// IPv4 pod CIDRs of a Node (`spec.podCIDRs`, else `spec.podCIDR`), and the
/// entries that did not parse.
pub fn node_pod_cidrs(node: &Node) -> (Vec<Ipv4Cidr>, Vec<String>) {
    let spec = node.spec.as_ref();
    let listed: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(l) if !l.is_empty() => l.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for c in listed {
        if c.contains(':') {
            continue; // IPv6: not ours
        }
        match c.trim().parse::<Ipv4Cidr>() {
            Ok(cidr) => good.push(cidr),
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

/// VtepMAC out of Flannel's backend-data, plus the VNI if given.
fn flannel_vtep(node: &Node) -> Result<Option<(MacAddr, Option<u64>)>, String> {
    let Some(raw) = annotation(node, FLANNEL_BACKEND_DATA) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| format!("{FLANNEL_BACKEND_DATA} is not JSON: {e}"))?;
    let vni = v.get("VNI").and_then(serde_json::Value::as_u64);
    match v.get("VtepMAC").and_then(serde_json::Value::as_str) {
        None => Ok(None),
        Some(mac) => mac
            .parse::<MacAddr>()
            .map(|m| Some((m, vni)))
            .map_err(|e| format!("{FLANNEL_BACKEND_DATA}: {e}")),
    }
}

fn push_unique(v: &mut Vec<Ipv4Addr>, ip: Ipv4Addr) {
    if !v.contains(&ip) {
        v.push(ip);
    }
}

/// [`NodeConfig`] of `opts.node_name`.
pub(super) fn node_config(
    state: &ClusterState,
    env: &NodeEnvironment,
    opts: &CompileOptions,
    warnings: &mut Warnings,
) -> Result<NodeConfig, CompileError> {
    let name = &opts.node_name;
    let node = state
        .nodes
        .get(name)
        .ok_or_else(|| CompileError::NodeNotFound { node: name.clone() })?;

    // InternalIPs first (the first is the primary, the masquerade source),
    // then the VTEP address and the configured extras.
    let mut node_ips = node_internal_ips(node);
    let public = public_ip(node);
    if let Some(p) = public {
        push_unique(&mut node_ips, p);
    }
    for ip in env.extra_node_ips.iter().chain(&opts.node_port_addresses) {
        push_unique(&mut node_ips, *ip);
    }
    let vtep_ip = public
        .or_else(|| node_internal_ips(node).first().copied())
        .or_else(|| node_ips.first().copied())
        .ok_or_else(|| CompileError::NodeWithoutAddress { node: name.clone() })?;
    if annotation(node, FLANNEL_PUBLIC_IP).is_some() && public.is_none() {
        warnings.push(
            "Node",
            name.as_str(),
            format!("{FLANNEL_PUBLIC_IP} is not an IPv4 address; using {vtep_ip}"),
        );
    }

    let vtep_mac = match flannel_vtep(node) {
        Ok(Some((mac, vni))) => {
            if let Some(vni) = vni.filter(|v| *v != u64::from(opts.vxlan.vni)) {
                warnings.push(
                    "Node",
                    name.as_str(),
                    format!(
                        "Flannel VNI {vni} differs from the configured VNI {}",
                        opts.vxlan.vni
                    ),
                );
            }
            if let Some(o) = env.vtep_mac.filter(|o| *o != mac) {
                warnings.push(
                    "Node",
                    name.as_str(),
                    format!("configured VTEP MAC {o} ignored: the Node announces {mac}, which peers send to"),
                );
            }
            mac
        }
        Ok(None) => env.vtep_mac.unwrap_or(env.uplink_mac),
        Err(e) => {
            let fallback = env.vtep_mac.unwrap_or(env.uplink_mac);
            warnings.push(
                "Node",
                name.as_str(),
                format!("{e}; using VTEP MAC {fallback}"),
            );
            fallback
        }
    };

    let (cidrs, bad) = node_pod_cidrs(node);
    for b in bad {
        warnings.push("Node", name.as_str(), format!("podCIDR ignored: {b}"));
    }
    let pod_cidr = cidrs.first().copied();
    if pod_cidr.is_none() {
        warnings.push(
            "Node",
            name.as_str(),
            "no IPv4 podCIDR: local pods have no gateway",
        );
    }

    let cluster_cidrs = match &opts.cluster_cidrs {
        Some(c) => c.clone(),
        None => state
            .nodes
            .values()
            .flat_map(|n| node_pod_cidrs(n).0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };

    Ok(NodeConfig {
        node_name: name.clone(),
        node_ips,
        vtep_ip,
        vtep_mac,
        uplink_mac: env.uplink_mac,
        pod_cidr,
        gateway_ip: pod_cidr.map(|c| c.first_host()),
        cluster_cidrs,
        vxlan: opts.vxlan.clone(),
        uplink_mtu: env.uplink_mtu,
        node_port_range: opts.node_port_range,
        masquerade_port_range: opts.masquerade_port_range,
    })
}

/// Routes to every other node's pod CIDR(s) over VXLAN.
pub(super) fn route_table(
    state: &ClusterState,
    opts: &CompileOptions,
    warnings: &mut Warnings,
) -> RouteTable {
    let mut entries = Vec::new();
    for (name, node) in &state.nodes {
        if *name == opts.node_name {
            continue;
        }
        let (cidrs, bad) = node_pod_cidrs(node);
        for b in bad {
            warnings.push("Node", name.as_str(), format!("podCIDR ignored: {b}"));
        }
        if cidrs.is_empty() {
            continue; // not (yet) allocated: nothing to route
        }
        if let Some(t) = annotation(node, FLANNEL_BACKEND_TYPE).filter(|t| *t != "vxlan") {
            warnings.push(
                "Node",
                name.as_str(),
                format!("Flannel backend type {t:?} is not vxlan; no route"),
            );
            continue;
        }
        let Some(vtep_ip) = node_underlay_ip(node) else {
            warnings.push(
                "Node",
                name.as_str(),
                "no IPv4 InternalIP or public-ip; no route to its pods",
            );
            continue;
        };
        let vtep_mac = match flannel_vtep(node) {
            Ok(Some((mac, _))) => mac,
            Ok(None) => {
                warnings.push(
                    "Node",
                    name.as_str(),
                    format!("no VtepMAC in {FLANNEL_BACKEND_DATA}; no route to its pods"),
                );
                continue;
            }
            Err(e) => {
                warnings.push("Node", name.as_str(), format!("{e}; no route to its pods"));
                continue;
            }
        };
        let remote = RemoteNode {
            name: name.as_str().into(),
            vtep_ip,
            vtep_mac,
        };
        for cidr in cidrs {
            entries.push((cidr, remote.clone()));
        }
    }
    RouteTable::new(entries)
}
