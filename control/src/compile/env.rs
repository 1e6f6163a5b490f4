//! What the host provides at run time: uplink, pod veths, neighbours.
//!
//! `kxdp run` fills a [`NodeEnvironment`] from netlink; `kxdp trace` and the
//! tests use [`NodeEnvironment::synthetic`], which invents a consistent one
//! from the cluster state alone. Synthetic values are deterministic, and two
//! synthetic environments (one per node) agree with each other: node B's
//! neighbour entry for node A is node A's synthetic uplink MAC.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use kxdp_dataplane::tables::{MacAddr, NeighbourTable, PodInterface};

use super::node::{node_internal_ips, node_underlay_ip, public_ip};
use super::pods::is_local_pod_candidate;
use crate::endpoints::pod_ipv4;
use crate::model::ClusterState;

/// Host facts the compiler needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeEnvironment {
    /// MAC of the uplink interface (outer source MAC; VTEP MAC fallback).
    pub uplink_mac: MacAddr,
    /// MTU of the uplink interface.
    pub uplink_mtu: u16,
    /// Node addresses found on the host besides the Node object's.
    pub extra_node_ips: Vec<Ipv4Addr>,
    /// Host side of each local pod's veth, by pod IP (DESIGN §4: the
    /// interface the /32 host route to the pod IP points at).
    pub pod_interfaces: BTreeMap<Ipv4Addr, PodInterface>,
    /// Underlay neighbours (IP -> MAC) and default gateway.
    pub neighbours: NeighbourTable,
    /// Configured VTEP MAC, used when the Node has no Flannel VtepMAC.
    pub vtep_mac: Option<MacAddr>,
}

/// First octet of synthetic MACs: 0x0e is unicast (bit 0 clear) and
/// locally administered (bit 1 set), so it never collides with a vendor MAC.
const LOCAL_UNICAST: u8 = 0x0e;

fn mac_with(tag: u8, ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([LOCAL_UNICAST, tag, o[0], o[1], o[2], o[3]])
}

/// Synthetic uplink MAC of the node whose underlay address is `ip`:
/// `0e:75:<ip>` ('u').
pub fn synthetic_uplink_mac(ip: Ipv4Addr) -> MacAddr {
    mac_with(b'u', ip)
}

/// Synthetic host-side veth MAC of the pod with IP `ip`: `0e:68:<ip>`
/// ('h'). Pod IPs are unique per node, so these are too.
pub fn synthetic_host_mac(ip: Ipv4Addr) -> MacAddr {
    mac_with(b'h', ip)
}

/// Synthetic MAC inside the pod with IP `ip`: `0e:70:<ip>` ('p').
pub fn synthetic_pod_mac(ip: Ipv4Addr) -> MacAddr {
    mac_with(b'p', ip)
}

/// FNV-1a (32 bit): small, fixed, portable.
fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Host-side veth name for pod `namespace/name`: `veth` + 8 hex digits,
/// the shape the CNI `ptp` plugin's names have (15 bytes fit IFNAMSIZ).
pub fn synthetic_veth_name(namespace: &str, name: &str) -> String {
    format!(
        "veth{:08x}",
        fnv1a32(format!("{namespace}/{name}").as_bytes())
    )
}

impl NodeEnvironment {
    /// A consistent invented environment for node `node_name`:
    /// - uplink MAC [`synthetic_uplink_mac`] of the node's underlay address
    ///   (Flannel public-ip, else first InternalIP), MTU 1500;
    /// - every local pod (as the compiler selects them, in namespace/name
    ///   order) gets veth [`synthetic_veth_name`], ifindex 100 + its
    ///   position, host MAC [`synthetic_host_mac`], pod MAC
    ///   [`synthetic_pod_mac`];
    /// - a neighbour entry for every InternalIP and public-ip of every
    ///   other node, pointing at that node's synthetic uplink MAC.
    ///
    /// A node missing from `state` gets an environment with no pods; the
    /// compile then reports the missing node.
    pub fn synthetic(state: &ClusterState, node_name: &str) -> Self {
        let own_ip = state
            .nodes
            .get(node_name)
            .and_then(node_underlay_ip)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut pod_interfaces = BTreeMap::new();
        let local = state
            .pods
            .iter()
            .filter(|(_, p)| is_local_pod_candidate(p, node_name))
            .filter_map(|((ns, name), p)| pod_ipv4(p).map(|ip| (ns, name, ip)));
        for (i, (ns, name, ip)) in local.enumerate() {
            if pod_interfaces.contains_key(&ip) {
                continue;
            }
            pod_interfaces.insert(
                ip,
                PodInterface {
                    name: synthetic_veth_name(ns, name).into(),
                    ifindex: 100 + u32::try_from(i).unwrap_or(u32::MAX - 100),
                    host_mac: synthetic_host_mac(ip),
                    pod_mac: synthetic_pod_mac(ip),
                },
            );
        }
        let mut neighbours = NeighbourTable::default();
        for (name, node) in &state.nodes {
            if name == node_name {
                continue;
            }
            let Some(underlay) = node_underlay_ip(node) else {
                continue;
            };
            let mac = synthetic_uplink_mac(underlay);
            for ip in node_internal_ips(node).into_iter().chain(public_ip(node)) {
                neighbours.insert(ip, mac);
            }
        }
        NodeEnvironment {
            uplink_mac: synthetic_uplink_mac(own_ip),
            uplink_mtu: 1500,
            extra_node_ips: Vec::new(),
            pod_interfaces,
            neighbours,
            vtep_mac: None,
        }
    }
}
