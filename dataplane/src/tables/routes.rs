//! Remote pod CIDRs -> the node (VTEP) that owns them.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::MacAddr;

/// An IPv4 prefix. The address is stored masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// A prefix; host bits of `addr` are cleared. None if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        Some(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix_len)),
            prefix_len,
        })
    }

    #[inline]
    fn mask(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len))
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True when `ip` is inside.
    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix_len) == u32::from(self.addr)
    }

    /// The first host address (network + 1), e.g. the pods' gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("CIDR {s:?}: bad IPv4 address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("CIDR {s:?}: bad prefix length"))?;
        Ipv4Cidr::new(addr, len).ok_or_else(|| format!("CIDR {s:?}: prefix length over 32"))
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Another node of the cluster, reached over VXLAN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteNode {
    pub name: Arc<str>,
    /// Outer destination address (Flannel `public-ip`).
    pub vtep_ip: Ipv4Addr,
    /// Inner destination MAC (Flannel `VtepMAC`).
    pub vtep_mac: MacAddr,
}

/// Longest-prefix match over remote pod CIDRs: one hash map per prefix
/// length present, probed longest first. Clusters use one or two lengths, so
/// a lookup is one or two hash probes whatever the number of nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    nodes: Vec<RemoteNode>,
    routes: Vec<(Ipv4Cidr, u32)>,
    #[serde(skip)]
    by_len: Vec<(u8, FxHashMap<u32, u32>)>,
}

impl RouteTable {
    /// Build from (cidr, node) pairs. A CIDR given twice keeps the first.
    pub fn new(entries: Vec<(Ipv4Cidr, RemoteNode)>) -> Self {
        let mut t = RouteTable::default();
        for (cidr, node) in entries {
            let idx = match t.nodes.iter().position(|n| *n == node) {
                Some(i) => i as u32,
                None => {
                    t.nodes.push(node);
                    (t.nodes.len() - 1) as u32
                }
            };
            let map = match t
                .by_len
                .iter_mut()
                .position(|(l, _)| *l == cidr.prefix_len())
            {
                Some(i) => &mut t.by_len[i].1,
                None => {
                    t.by_len.push((cidr.prefix_len(), FxHashMap::default()));
                    &mut t.by_len.last_mut().expect("just pushed").1
                }
            };
            if map.contains_key(&u32::from(cidr.addr())) {
                continue;
            }
            map.insert(u32::from(cidr.addr()), idx);
            t.routes.push((cidr, idx));
        }
        t.by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        t
    }

    /// The remote node whose pod CIDR holds `ip`, longest prefix first.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<&RemoteNode> {
        let ip = u32::from(ip);
        for (len, map) in &self.by_len {
            let key = if *len == 0 {
                0
            } else {
                ip & (u32::MAX << (32 - u32::from(*len)))
            };
            if let Some(idx) = map.get(&key) {
                return self.nodes.get(*idx as usize);
            }
        }
        None
    }

    /// True when `ip` is the VTEP address of a known node.
    pub fn is_vtep(&self, ip: Ipv4Addr) -> bool {
        self.nodes.iter().any(|n| n.vtep_ip == ip)
    }

    /// All remote nodes.
    pub fn nodes(&self) -> &[RemoteNode] {
        &self.nodes
    }

    /// All (cidr, node) routes.
    pub fn routes(&self) -> impl Iterator<Item = (Ipv4Cidr, &RemoteNode)> {
        self.routes
            .iter()
            .filter_map(|(c, i)| self.nodes.get(*i as usize).map(|n| (*c, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, last: u8) -> RemoteNode {
        RemoteNode {
            name: name.into(),
            vtep_ip: Ipv4Addr::new(192, 168, 50, last),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, last]),
        }
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Ipv4Cidr = "10.244.1.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 244, 1, 1));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0/8".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::new(vec![
            ("10.244.0.0/16".parse().unwrap(), node("wide", 9)),
            ("10.244.2.0/24".parse().unwrap(), node("b", 2)),
        ]);
        assert_eq!(&*t.lookup(Ipv4Addr::new(10, 244, 2, 5)).unwrap().name, "b");
        assert_eq!(
            &*t.lookup(Ipv4Addr::new(10, 244, 3, 5)).unwrap().name,
            "wide"
        );
        assert!(t.lookup(Ipv4Addr::new(10, 245, 0, 1)).is_none());
        assert!(t.is_vtep(Ipv4Addr::new(192, 168, 50, 2)));
    }
}
