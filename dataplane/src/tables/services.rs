//! Service frontends and their backends.
//!
//! A frontend is what a client addresses: `(ip, port, proto)` for ClusterIPs,
//! externalIPs and LoadBalancer ingress IPs, or `(port, proto)` on any node
//! address for NodePorts. Each leads to one [`ServicePort`], whose backend
//! sets carry precomputed Maglev tables.

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
#[derive(Clone, Debug, Default, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
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

/// All Service frontends of one generation.
#[derive(Debug, Default, Serialize)]
pub struct ServiceTable {
    pub ports: Vec<ServicePort>,
    #[serde(skip)]
    frontends: FxHashMap<FrontendKey, Frontend>,
    #[serde(skip)]
    node_ports: FxHashMap<(u16, IpProto), u32>,
    /// Every virtual IP (ClusterIP, external, LB): traffic to one of them on
    /// a port no Service uses is rejected rather than routed.
    #[serde(skip)]
    virtual_ips: rustc_hash::FxHashSet<Ipv4Addr>,
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
}

impl ServiceTable {
    /// Start an empty table.
    pub fn new() -> Self {
        ServiceTable::default()
    }

    /// Add a Service port; returns its index.
    pub fn add_port(&mut self, port: ServicePort) -> u32 {
        self.ports.push(port);
        (self.ports.len() - 1) as u32
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
        self.frontends.insert(
            key,
            Frontend {
                service_port: idx,
                kind,
            },
        );
        self.virtual_ips.insert(key.ip);
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
        self.node_ports.insert((port, proto), idx);
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
