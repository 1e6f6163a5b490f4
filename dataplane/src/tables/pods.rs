//! Pods running on this node: IP -> interface, MAC, identity.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::MacAddr;

/// The host side of a pod's veth, as found by the /32 host-route convention
/// (DESIGN §4). `trace` synthesizes these; at run time they come from netlink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodInterface {
    /// Host-side interface name (e.g. `veth1a2b3c4d`).
    pub name: Arc<str>,
    /// Host-side ifindex.
    pub ifindex: u32,
    /// Host-side MAC: the pods' gateway answers ARP with it.
    pub host_mac: MacAddr,
    /// The pod's own MAC (peer end), used for anti-spoofing and as the
    /// destination MAC of frames delivered to the pod.
    pub pod_mac: MacAddr,
}

/// One pod on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalPod {
    pub ip: Ipv4Addr,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// None while the pod's veth is not (yet) found.
    pub interface: Option<PodInterface>,
    /// Index into [`super::PolicyTable`]'s per-pod data.
    pub policy_slot: u32,
}

impl LocalPod {
    /// `namespace/name`
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Local pods indexed by IP and by host-side ifindex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodTable {
    pods: Vec<LocalPod>,
    #[serde(skip)]
    by_ip: FxHashMap<Ipv4Addr, u32>,
    #[serde(skip)]
    by_ifindex: FxHashMap<u32, u32>,
}

impl PodTable {
    /// Build from a list of pods. Later duplicates of an IP or ifindex are
    /// ignored and returned so the compiler can report them.
    pub fn new(pods: Vec<LocalPod>) -> (Self, Vec<LocalPod>) {
        let mut table = PodTable::default();
        let mut rejected = Vec::new();
        for pod in pods {
            if table.by_ip.contains_key(&pod.ip)
                || pod
                    .interface
                    .as_ref()
                    .is_some_and(|i| table.by_ifindex.contains_key(&i.ifindex))
            {
                rejected.push(pod);
                continue;
            }
            let idx = table.pods.len() as u32;
            table.by_ip.insert(pod.ip, idx);
            if let Some(i) = &pod.interface {
                table.by_ifindex.insert(i.ifindex, idx);
            }
            table.pods.push(pod);
        }
        (table, rejected)
    }

    /// The local pod with this IP.
    #[inline]
    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&LocalPod> {
        self.by_ip.get(&ip).and_then(|i| self.pods.get(*i as usize))
    }

    /// The local pod whose host-side veth has this ifindex.
    #[inline]
    pub fn by_ifindex(&self, ifindex: u32) -> Option<&LocalPod> {
        self.by_ifindex
            .get(&ifindex)
            .and_then(|i| self.pods.get(*i as usize))
    }

    /// All local pods.
    pub fn iter(&self) -> impl Iterator<Item = &LocalPod> {
        self.pods.iter()
    }

    /// Number of local pods.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when no pod runs here.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}
