//! Service frontends and their backends.
//!
//! A frontend is what a client addresses: `(ip, port, proto)` for ClusterIPs,
//! externalIPs and LoadBalancer ingress IPs, or `(port, proto)` on any node
//! address for NodePorts. Each leads to one [`ServicePort`], whose backend
//! sets carry precomputed Maglev tables.
//!
//! # Sharing between generations
//! A generation's table is immutable, but most of it is shared with the
//! next one: every [`ServicePort`] sits behind its own `Arc` (see
//! [`ServicePorts`]), and the frontend, NodePort and virtual-IP maps are each
//! behind one `Arc`. [`ServiceTable::with_replaced_ports`] derives the next
//! generation when only some Service ports' contents changed (the common
//! case: an endpoint change) in O(ports) pointer copies, without touching a
//! Maglev table or a map. Lookups are unchanged: one hash probe, no lock, no
//! allocation (the `Arc`s add one pointer dereference).

use std::collections::hash_map::Entry;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::maglev;
use super::{IpProto, Ipv4Cidr};

/// How the client reached the Service; decides which traffic policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl FrontendKind {
    /// externalTrafficPolicy applies to these; internalTrafficPolicy to ClusterIP.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// A matched frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    /// Index into [`ServiceTable::ports`].
    pub service_port: u32,
    pub kind: FrontendKind,
}

/// One endpoint address of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Runs on this node.
    pub local: bool,
}

/// A set of usable backends with its Maglev lookup table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackendSet {
    pub backends: Box<[Backend]>,
    /// Maglev permutation table: slot -> index into `backends`. Empty when
    /// `backends` is.
    #[serde(skip)]
    pub maglev: Box<[u32]>,
}

impl BackendSet {
    /// Build the set and its Maglev table.
    pub fn new(backends: Vec<Backend>) -> Self {
        let maglev = maglev::build_table(&backends);
        BackendSet {
            backends: backends.into_boxed_slice(),
            maglev,
        }
    }

    /// True when there is no backend to choose.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The backend for a flow hash (consistent: Maglev).
    #[inline]
    pub fn select(&self, flow_hash: u32) -> Option<&Backend> {
        if self.maglev.is_empty() {
            return None;
        }
        let slot = (flow_hash as usize) % self.maglev.len();
        self.maglev
            .get(slot)
            .and_then(|i| self.backends.get(*i as usize))
    }

    /// True when `ip:port` is a member.
    pub fn contains(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.backends.iter().any(|b| b.ip == ip && b.port == port)
    }
}

/// One port of one Service, with everything backend selection needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The ServicePort's name (may be empty).
    pub port_name: Arc<str>,
    pub proto: IpProto,
    /// The Service port (ClusterIP/LB/external side).
    pub port: u16,
    /// The NodePort, if allocated.
    pub node_port: Option<u16>,
    /// sessionAffinity ClientIP timeout in seconds; None = no affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// loadBalancerSourceRanges (empty = everyone); filters LB IPs only.
    pub lb_source_ranges: Vec<Ipv4Cidr>,
    /// Usable endpoints cluster-wide (ready, else serving+terminating).
    pub cluster: BackendSet,
    /// Usable endpoints on this node (ready, else serving+terminating).
    pub local: BackendSet,
    /// True when some endpoint anywhere is usable (ready, or serving and
    /// terminating) — kube-proxy's `hasAnyEndpoints`. Without one, new
    /// connections are rejected; with one but none allowed by a Local
    /// traffic policy, they are dropped.
    pub has_endpoints: bool,
    /// healthCheckNodePort for eTP=Local LoadBalancer Services.
    pub health_check_node_port: Option<u16>,
}

impl ServicePort {
    /// `namespace/name:port_name` (or `:port` when unnamed).
    pub fn display_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}:{}", self.namespace, self.name, self.port)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// The backend set that applies to traffic arriving through `kind`.
    pub fn backends_for(&self, kind: FrontendKind) -> &BackendSet {
        let local = if kind.is_external() {
            self.external_local
        } else {
            self.internal_local
        };
        if local {
            &self.local
        } else {
            &self.cluster
        }
    }
}

/// Key of an address-specific frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: IpProto,
}

/// Ports per chunk of [`ServicePorts`].
const CHUNK: usize = 64;

/// The Service ports of one generation, each behind its own `Arc` so that
/// consecutive generations share the ports that did not change.
///
/// Layout: full chunks of [`CHUNK`] port handles, each chunk behind one
/// `Arc`, then a partial tail chunk. Cloning copies one pointer per chunk,
/// and replacing a port copies one chunk: the next generation after an
/// endpoint change touches a few hundred pointers, not one per Service.
/// Reads cost two more dependent loads than a flat vector and look like
/// one (`len`, `get`, `iter`, `for p in &ports`).
/// [`ServicePorts::iter_mut`] is copy-on-write: a port (or chunk) still
/// shared with another generation is cloned before it is handed out, so
/// mutating one table never changes another.
#[derive(Clone, Default)]
pub struct ServicePorts {
    chunks: Vec<Arc<[Arc<ServicePort>]>>,
    tail: Vec<Arc<ServicePort>>,
}

impl ServicePorts {
    /// Number of ports.
    #[inline]
    pub fn len(&self) -> usize {
        self.chunks.len() * CHUNK + self.tail.len()
    }

    /// True when there is no port.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    /// The port at `idx`.
    #[inline]
    pub fn get(&self, idx: usize) -> Option<&ServicePort> {
        self.get_shared(idx).map(|p| &**p)
    }

    /// The shared handle of the port at `idx` (compare generations with
    /// `Arc::ptr_eq`).
    #[inline]
    pub fn get_shared(&self, idx: usize) -> Option<&Arc<ServicePort>> {
        let (c, i) = (idx / CHUNK, idx % CHUNK);
        match self.chunks.get(c) {
            Some(chunk) => chunk.get(i),
            None if c == self.chunks.len() => self.tail.get(i),
            None => None,
        }
    }

    /// Every port, in index order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            ports: self,
            next: 0,
            end: self.len(),
        }
    }

    /// Every port, mutably; ports shared with another generation are
    /// cloned first (copy-on-write).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut ServicePort> + '_ {
        for chunk in &mut self.chunks {
            if Arc::get_mut(chunk).is_none() {
                *chunk = Arc::from(chunk.to_vec());
            }
        }
        self.chunks
            .iter_mut()
            .filter_map(Arc::get_mut)
            .flat_map(|c| c.iter_mut())
            .chain(self.tail.iter_mut())
            .map(Arc::make_mut)
    }

    fn push(&mut self, port: Arc<ServicePort>) -> u32 {
        let idx = self.len();
        self.tail.push(port);
        if self.tail.len() == CHUNK {
            let full = std::mem::take(&mut self.tail);
            self.chunks.push(Arc::from(full));
        }
        u32::try_from(idx).unwrap_or(u32::MAX)
    }

    /// Put `port` at `idx` (copying the chunk it lives in); false when
    /// `idx` is out of range.
    fn replace(&mut self, idx: usize, port: Arc<ServicePort>) -> bool {
        let (c, i) = (idx / CHUNK, idx % CHUNK);
        if let Some(chunk) = self.chunks.get_mut(c) {
            let mut copy = chunk.to_vec();
            match copy.get_mut(i) {
                Some(slot) => *slot = port,
                None => return false,
            }
            *chunk = Arc::from(copy);
            return true;
        }
        match self.tail.get_mut(i).filter(|_| c == self.chunks.len()) {
            Some(slot) => {
                *slot = port;
                true
            }
            None => false,
        }
    }
}

/// Iterator over [`ServicePorts`].
#[derive(Clone)]
pub struct Iter<'a> {
    ports: &'a ServicePorts,
    next: usize,
    end: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a ServicePort;
    fn next(&mut self) -> Option<&'a ServicePort> {
        if self.next >= self.end {
            return None;
        }
        self.next += 1;
        self.ports.get(self.next - 1)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end.saturating_sub(self.next);
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        self.end -= 1;
        self.ports.get(self.end)
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a ServicePorts {
    type Item = &'a ServicePort;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl PartialEq for ServicePorts {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ServicePorts {}

impl std::fmt::Debug for ServicePorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for ServicePorts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// All Service frontends of one generation.
///
/// Equality (`==`) compares what lookups see: every port's contents, every
/// frontend, NodePort and virtual IP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceTable {
    pub ports: ServicePorts,
    #[serde(skip)]
    frontends: Arc<FxHashMap<FrontendKey, Frontend>>,
    #[serde(skip)]
    node_ports: Arc<FxHashMap<(u16, IpProto), u32>>,
    /// Every virtual IP (ClusterIP, external, LB): traffic to one of them on
    /// a port no Service uses is rejected rather than routed.
    #[serde(skip)]
    virtual_ips: Arc<rustc_hash::FxHashSet<Ipv4Addr>>,
}

/// Frontend claims that changed between two generations (see
/// [`ServiceTable::with_frontend_delta`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendDelta {
    /// Claims to drop: (frontend, the port index that held it).
    pub removed: Vec<(FrontendKey, u32)>,
    /// Claims to add, in the order a full build would add them.
    pub added: Vec<(FrontendKey, Frontend)>,
    /// NodePorts to drop: ((port, proto), the port index that held it).
    pub node_ports_removed: Vec<((u16, IpProto), u32)>,
    /// NodePorts to add, in order.
    pub node_ports_added: Vec<((u16, IpProto), u32)>,
}

impl FrontendDelta {
    /// True when no claim changes.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.added.is_empty()
            && self.node_ports_removed.is_empty()
            && self.node_ports_added.is_empty()
    }
}

/// Error building a [`ServiceTable`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceTableError {
    #[error("frontend {ip}:{port}/{proto:?} is claimed by both {first} and {second}")]
    DuplicateFrontend {
        ip: Ipv4Addr,
        port: u16,
        proto: IpProto,
        first: String,
        second: String,
    },
    #[error("NodePort {port}/{proto:?} is claimed by both {first} and {second}")]
    DuplicateNodePort {
        port: u16,
        proto: IpProto,
        first: String,
        second: String,
    },
    #[error("service port index {index} is out of range (the table has {len})")]
    NoSuchPort { index: u32, len: usize },
}

impl ServiceTable {
    /// Start an empty table.
    pub fn new() -> Self {
        ServiceTable::default()
    }

    /// Add a Service port; returns its index.
    pub fn add_port(&mut self, port: ServicePort) -> u32 {
        self.ports.push(Arc::new(port))
    }

    /// Add a Service port that may be shared with another generation;
    /// returns its index.
    pub fn add_shared_port(&mut self, port: Arc<ServicePort>) -> u32 {
        self.ports.push(port)
    }

    /// The next generation of this table when only the *contents* of some
    /// ports changed (backends, affinity...), not which frontends lead to
    /// them: the maps are shared, the port list is copied (pointer copies)
    /// and `replacements` (`(index, port)`) are put in. Every port not
    /// replaced stays shared with `self`. An index out of range is an
    /// error and nothing is built.
    pub fn with_replaced_ports(
        &self,
        replacements: impl IntoIterator<Item = (u32, Arc<ServicePort>)>,
    ) -> Result<ServiceTable, ServiceTableError> {
        let mut next = self.clone();
        for (idx, port) in replacements {
            if !next.ports.replace(idx as usize, port) {
                return Err(ServiceTableError::NoSuchPort {
                    index: idx,
                    len: next.ports.len(),
                });
            }
        }
        Ok(next)
    }

    /// The next generation when some Services changed which frontends they
    /// claim but kept their ports (same count, same indices): the ports in
    /// `replacements` are swapped in, then `delta`'s claims are removed and
    /// its new ones added, in order. None when a new claim meets a frontend
    /// or NodePort another port holds — the caller then rebuilds the table,
    /// since who keeps a contested frontend depends on every Service. The
    /// caller also guarantees that no claim it removes was contested.
    pub fn with_frontend_delta(
        &self,
        replacements: impl IntoIterator<Item = (u32, Arc<ServicePort>)>,
        delta: &FrontendDelta,
    ) -> Option<ServiceTable> {
        let mut next = self.with_replaced_ports(replacements).ok()?;
        if delta.is_empty() {
            return Some(next);
        }
        let frontends = Arc::make_mut(&mut next.frontends);
        for (key, idx) in &delta.removed {
            if frontends.get(key).is_some_and(|f| f.service_port == *idx) {
                frontends.remove(key);
            }
        }
        for (key, frontend) in &delta.added {
            match frontends.entry(*key) {
                // The same port claiming it twice: the first kind stays.
                Entry::Occupied(e) if e.get().service_port == frontend.service_port => {}
                Entry::Occupied(_) => return None,
                Entry::Vacant(e) => {
                    e.insert(*frontend);
                }
            }
        }
        let ips: rustc_hash::FxHashSet<Ipv4Addr> = frontends.keys().map(|k| k.ip).collect();
        next.virtual_ips = Arc::new(ips);
        if !delta.node_ports_removed.is_empty() || !delta.node_ports_added.is_empty() {
            let node_ports = Arc::make_mut(&mut next.node_ports);
            for (key, idx) in &delta.node_ports_removed {
                if node_ports.get(key) == Some(idx) {
                    node_ports.remove(key);
                }
            }
            for (key, idx) in &delta.node_ports_added {
                match node_ports.entry(*key) {
                    Entry::Occupied(e) if e.get() == idx => {}
                    Entry::Occupied(_) => return None,
                    Entry::Vacant(e) => {
                        e.insert(*idx);
                    }
                }
            }
        }
        Some(next)
    }

    /// Route `ip:port/proto` to service port `idx`. A frontend already
    /// claimed by another Service is an error (the first one keeps it).
    pub fn add_frontend(
        &mut self,
        key: FrontendKey,
        idx: u32,
        kind: FrontendKind,
    ) -> Result<(), ServiceTableError> {
        if let Some(existing) = self.frontends.get(&key) {
            if existing.service_port != idx {
                return Err(ServiceTableError::DuplicateFrontend {
                    ip: key.ip,
                    port: key.port,
                    proto: key.proto,
                    first: self.name_of(existing.service_port),
                    second: self.name_of(idx),
                });
            }
            return Ok(());
        }
        // While building, the maps are not shared yet: no copy.
        Arc::make_mut(&mut self.frontends).insert(
            key,
            Frontend {
                service_port: idx,
                kind,
            },
        );
        Arc::make_mut(&mut self.virtual_ips).insert(key.ip);
        Ok(())
    }

    /// Route NodePort `port/proto` (on every node address) to `idx`.
    pub fn add_node_port(
        &mut self,
        port: u16,
        proto: IpProto,
        idx: u32,
    ) -> Result<(), ServiceTableError> {
        if let Some(existing) = self.node_ports.get(&(port, proto)) {
            if *existing != idx {
                return Err(ServiceTableError::DuplicateNodePort {
                    port,
                    proto,
                    first: self.name_of(*existing),
                    second: self.name_of(idx),
                });
            }
            return Ok(());
        }
        Arc::make_mut(&mut self.node_ports).insert((port, proto), idx);
        Ok(())
    }

    fn name_of(&self, idx: u32) -> String {
        self.ports
            .get(idx as usize)
            .map(|p| p.display_name())
            .unwrap_or_default()
    }

    /// The frontend addressed by a packet. `dst_is_node` says whether the
    /// destination is one of this node's addresses (NodePorts answer there).
    #[inline]
    pub fn lookup(
        &self,
        dst: Ipv4Addr,
        port: u16,
        proto: IpProto,
        dst_is_node: bool,
    ) -> Option<Frontend> {
        if let Some(f) = self.frontends.get(&FrontendKey {
            ip: dst,
            port,
            proto,
        }) {
            return Some(*f);
        }
        if dst_is_node {
            if let Some(idx) = self.node_ports.get(&(port, proto)) {
                return Some(Frontend {
                    service_port: *idx,
                    kind: FrontendKind::NodePort,
                });
            }
        }
        None
    }

    /// True when `ip` is a Service virtual IP of any port.
    #[inline]
    pub fn is_virtual_ip(&self, ip: Ipv4Addr) -> bool {
        self.virtual_ips.contains(&ip)
    }

    /// The service port at `idx`.
    #[inline]
    pub fn port(&self, idx: u32) -> Option<&ServicePort> {
        self.ports.get(idx as usize)
    }

    /// Number of frontends (address-specific plus NodePorts).
    pub fn frontend_count(&self) -> usize {
        self.frontends.len() + self.node_ports.len()
    }

    /// Every address-specific frontend.
    pub fn frontends(&self) -> impl Iterator<Item = (&FrontendKey, &Frontend)> {
        self.frontends.iter()
    }

    /// Every NodePort.
    pub fn node_ports(&self) -> impl Iterator<Item = ((u16, IpProto), u32)> + '_ {
        self.node_ports.iter().map(|(k, v)| (*k, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: u16) -> ServicePort {
        ServicePort {
            namespace: "ns".into(),
            name: format!("s{n}").into(),
            port_name: "".into(),
            proto: IpProto::Tcp,
            port: n,
            node_port: None,
            affinity_timeout_secs: None,
            internal_local: false,
            external_local: false,
            lb_source_ranges: Vec::new(),
            cluster: BackendSet::new(vec![Backend {
                ip: Ipv4Addr::new(10, 244, 0, 2),
                port: n,
                local: false,
            }]),
            local: BackendSet::default(),
            has_endpoints: true,
            health_check_node_port: None,
        }
    }

    /// A table of `n` ports, port `i` (number `i + 1`) on 10.96.0.1.
    fn table(n: u16) -> ServiceTable {
        let mut t = ServiceTable::new();
        for i in 0..n {
            let idx = t.add_port(port(i + 1));
            assert_eq!(idx, u32::from(i));
            let key = FrontendKey {
                ip: Ipv4Addr::new(10, 96, 0, 1),
                port: i + 1,
                proto: IpProto::Tcp,
            };
            t.add_frontend(key, idx, FrontendKind::ClusterIp).unwrap();
        }
        t
    }

    #[test]
    fn ports_read_like_a_vector_across_chunks() {
        let n = (2 * CHUNK + 5) as u16;
        let t = table(n);
        assert_eq!(t.ports.len(), usize::from(n));
        let numbers: Vec<u16> = t.ports.iter().map(|p| p.port).collect();
        assert_eq!(numbers, (1..=n).collect::<Vec<_>>());
        let back: Vec<u16> = t.ports.iter().rev().map(|p| p.port).collect();
        assert_eq!(back, (1..=n).rev().collect::<Vec<_>>());
        for i in [0, CHUNK - 1, CHUNK, 2 * CHUNK, 2 * CHUNK + 4] {
            assert_eq!(t.port(i as u32).map(|p| p.port), Some(i as u16 + 1));
        }
        assert!(t.port(u32::from(n)).is_none());
        assert!(t.ports.get(10 * CHUNK).is_none());
        assert_eq!((&t.ports).into_iter().len(), usize::from(n));
    }

    #[test]
    fn replaced_ports_share_the_rest_and_leave_the_old_table_alone() {
        let n = (CHUNK + 3) as u16;
        let old = table(n);
        let mut changed = port(1000);
        changed.cluster = BackendSet::default();
        let a = CHUNK as u32 - 1; // in a full chunk
        let b = CHUNK as u32 + 2; // in the tail
        let new = old
            .with_replaced_ports([(a, Arc::new(changed.clone())), (b, Arc::new(changed))])
            .unwrap();
        for i in 0..usize::from(n) {
            let same = Arc::ptr_eq(
                old.ports.get_shared(i).unwrap(),
                new.ports.get_shared(i).unwrap(),
            );
            assert_eq!(same, i != a as usize && i != b as usize, "port {i}");
        }
        assert_eq!(new.port(a).unwrap().port, 1000);
        assert_eq!(old.port(a).unwrap().port, u16::try_from(a).unwrap() + 1);
        // Lookups go through the shared maps to the new contents.
        let f = new
            .lookup(
                Ipv4Addr::new(10, 96, 0, 1),
                CHUNK as u16,
                IpProto::Tcp,
                false,
            )
            .unwrap();
        assert_eq!(f.service_port, a);
        assert!(new.port(f.service_port).unwrap().cluster.is_empty());
        assert_ne!(old, new);
        assert_eq!(
            old.with_replaced_ports([(u32::from(n), Arc::new(port(1)))]),
            Err(ServiceTableError::NoSuchPort {
                index: u32::from(n),
                len: usize::from(n)
            })
        );
    }

    #[test]
    fn iter_mut_copies_shared_ports_first() {
        let n = (CHUNK + 1) as u16;
        let old = table(n);
        let mut new = old.clone();
        for p in new.ports.iter_mut() {
            p.cluster = BackendSet::default();
        }
        assert!(old.ports.iter().all(|p| !p.cluster.is_empty()));
        assert!(new.ports.iter().all(|p| p.cluster.is_empty()));
        assert_eq!(new.ports.len(), usize::from(n));
    }

    #[test]
    fn frontend_delta_moves_claims_and_refuses_conflicts() {
        let old = table(3);
        let vip = |last| Ipv4Addr::new(10, 96, 0, last);
        let key = |ip, port| FrontendKey {
            ip,
            port,
            proto: IpProto::Tcp,
        };
        let claim = |idx| Frontend {
            service_port: idx,
            kind: FrontendKind::ExternalIp,
        };
        // Port 1 moves from 10.96.0.1:2 to 10.96.0.9:2 and gains NodePort
        // 30001.
        let delta = FrontendDelta {
            removed: vec![(key(vip(1), 2), 1)],
            added: vec![(key(vip(9), 2), claim(1))],
            node_ports_removed: vec![],
            node_ports_added: vec![((30001, IpProto::Tcp), 1)],
        };
        let new = old.with_frontend_delta([], &delta).expect("no conflict");
        assert_eq!(new.lookup(vip(1), 2, IpProto::Tcp, false), None);
        assert_eq!(new.lookup(vip(9), 2, IpProto::Tcp, false), Some(claim(1)));
        assert!(new.is_virtual_ip(vip(9)) && new.is_virtual_ip(vip(1)));
        assert_eq!(
            new.lookup(vip(5), 30001, IpProto::Tcp, true)
                .map(|f| f.service_port),
            Some(1)
        );
        // The old generation is untouched.
        assert_eq!(old.lookup(vip(9), 2, IpProto::Tcp, false), None);
        assert_eq!(old.frontend_count(), 3);
        // Every frontend of 10.96.0.1 gone: no longer a virtual IP.
        let all_gone = FrontendDelta {
            removed: (1..=3)
                .map(|p| (key(vip(1), p), u32::from(p) - 1))
                .collect(),
            ..FrontendDelta::default()
        };
        assert!(!old
            .with_frontend_delta([], &all_gone)
            .expect("no conflict")
            .is_virtual_ip(vip(1)));
        // Claiming what port 0 holds: refused.
        let conflict = FrontendDelta {
            added: vec![(key(vip(1), 1), claim(2))],
            ..FrontendDelta::default()
        };
        assert!(old.with_frontend_delta([], &conflict).is_none());
    }

    #[test]
    fn equality_is_by_contents() {
        let a = table(70);
        let b = table(70);
        assert_eq!(a, b);
        assert_ne!(a, table(69));
    }
}
