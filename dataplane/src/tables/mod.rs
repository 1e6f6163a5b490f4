//! The read side of one table generation.
//!
//! Contract: a [`TableSet`] is immutable once built. The control thread
//! compiles a new one off the hot path and publishes it with one atomic store
//! ([`TablePublisher`]); workers load the pointer once per batch
//! ([`TableReader::load`]) and never lock or allocate while reading it.

pub mod maglev;
pub mod pods;
pub mod policy;
pub mod routes;
pub mod services;

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

pub use pods::{LocalPod, PodInterface, PodTable};
pub use policy::{PolicyTable, PolicyVerdict};
pub use routes::{Ipv4Cidr, RemoteNode, RouteTable};
pub use services::{Backend, BackendSet, Frontend, FrontendKind, ServicePort, ServiceTable};

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for group (broadcast and multicast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?}: too few octets"))?;
            if p.len() != 2 {
                return Err(format!(
                    "MAC address {s:?}: octet {p:?} is not two hex digits"
                ));
            }
            *byte = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC address {s:?}: bad octet {p:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?}: too many octets"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// IP protocols the dataplane handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum IpProto {
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

impl IpProto {
    /// The protocol with this IP protocol number, if handled.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(IpProto::Icmp),
            6 => Some(IpProto::Tcp),
            17 => Some(IpProto::Udp),
            132 => Some(IpProto::Sctp),
            _ => None,
        }
    }

    /// Lowercase name as used on the CLI and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            IpProto::Icmp => "icmp",
            IpProto::Tcp => "tcp",
            IpProto::Udp => "udp",
            IpProto::Sctp => "sctp",
        }
    }
}

/// VXLAN settings (Flannel's defaults: VNI 1, UDP 8472).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig { vni: 1, port: 8472 }
    }
}

/// Per-node settings the pipeline needs, compiled with the tables so a
/// generation is self-consistent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    /// This node's Kubernetes name.
    pub node_name: String,
    /// Addresses NodePorts answer on (Node InternalIPs plus configured
    /// extras). The first is the primary: masquerade source.
    pub node_ips: Vec<Ipv4Addr>,
    /// The outer source address of VXLAN packets (Flannel `public-ip`).
    pub vtep_ip: Ipv4Addr,
    /// The inner source MAC of VXLAN packets (Flannel `VtepMAC`).
    pub vtep_mac: MacAddr,
    /// The uplink interface's MAC (outer source MAC).
    pub uplink_mac: MacAddr,
    /// This node's pod CIDR.
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The pods' default gateway: first address of `pod_cidr`. kxdp answers
    /// ARP for it on every pod veth with that veth's MAC.
    pub gateway_ip: Option<Ipv4Addr>,
    /// Every pod CIDR of the cluster; pod traffic to anything else is
    /// masqueraded to the primary node IP.
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    pub vxlan: VxlanConfig,
    /// MTU of the uplink; encapsulated packets must fit it.
    pub uplink_mtu: u16,
    /// NodePort range (inclusive), default 30000-32767.
    pub node_port_range: (u16, u16),
    /// Source port range for masquerade.
    pub masquerade_port_range: (u16, u16),
}

impl NodeConfig {
    /// The primary node address, used as masquerade source.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.node_ips.first().copied()
    }

    /// True when `ip` is one of this node's addresses.
    #[inline]
    pub fn is_node_ip(&self, ip: Ipv4Addr) -> bool {
        self.node_ips.contains(&ip)
    }

    /// Addresses the node itself owns on the pod network and the underlay:
    /// node IPs, the VTEP address, the pods' gateway and the Flannel VTEP
    /// address (pod CIDR network address). Traffic from them is node
    /// traffic, which NetworkPolicy always allows.
    #[inline]
    pub fn owns(&self, ip: Ipv4Addr) -> bool {
        self.is_node_ip(ip)
            || self.vtep_ip == ip
            || self.gateway_ip == Some(ip)
            || self.pod_cidr.is_some_and(|c| c.addr() == ip)
    }

    /// True when `ip` lies in a pod CIDR of the cluster.
    #[inline]
    pub fn in_cluster(&self, ip: Ipv4Addr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains(ip))
    }
}

/// Underlay neighbours (IP -> MAC), from the kernel's neighbour table at run
/// time or given statically (trace, tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NeighbourTable {
    entries: rustc_hash::FxHashMap<Ipv4Addr, MacAddr>,
    /// Used for destinations that are not on the underlay subnet.
    pub default_gateway: Option<Ipv4Addr>,
}

impl NeighbourTable {
    /// Add or replace one entry.
    pub fn insert(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        self.entries.insert(ip, mac);
    }

    /// The MAC of `ip`, if known.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&ip).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One immutable generation of every table the pipeline reads.
#[derive(Debug, Serialize)]
pub struct TableSet {
    /// Increases by one per publish.
    pub generation: u64,
    pub node: NodeConfig,
    pub services: ServiceTable,
    pub pods: PodTable,
    pub routes: RouteTable,
    pub policy: PolicyTable,
    pub neighbours: NeighbourTable,
}

/// The writer side: one atomic store per generation.
#[derive(Clone)]
pub struct TablePublisher {
    current: Arc<ArcSwap<TableSet>>,
}

/// The reader side: cheap to clone, one per worker.
#[derive(Clone)]
pub struct TableReader {
    current: Arc<ArcSwap<TableSet>>,
}

/// Create a publisher/reader pair holding `initial`.
pub fn publication(initial: TableSet) -> (TablePublisher, TableReader) {
    let current = Arc::new(ArcSwap::from_pointee(initial));
    (
        TablePublisher {
            current: current.clone(),
        },
        TableReader { current },
    )
}

impl TablePublisher {
    /// Make `tables` current. Readers that already loaded the previous
    /// generation keep it until they load again.
    pub fn publish(&self, tables: TableSet) {
        self.current.store(Arc::new(tables));
    }

    /// Make `tables` current and hand back the generation it replaces, so
    /// the caller decides where that one is freed (the last reader to
    /// drop a generation frees it; a caller that keeps the returned handle
    /// until readers moved on keeps that work off the workers).
    pub fn replace(&self, tables: Arc<TableSet>) -> Arc<TableSet> {
        self.current.swap(tables)
    }

    /// The generation currently published.
    pub fn current(&self) -> Arc<TableSet> {
        self.current.load_full()
    }
}

impl TableReader {
    /// The current generation; hold it for one batch. Lock-free and
    /// allocation-free (arc-swap's guard).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<TableSet>> {
        self.current.load()
    }
}
