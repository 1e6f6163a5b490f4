//! Synthetic clusters at any scale, for scale tests and benchmarks, and a
//! fake Kubernetes API server ([`fake_apiserver`]) for the Kubernetes
//! source's tests (feature `testing`; not part of the daemon).
//!
//! [`SyntheticCluster`] describes the shape; [`SyntheticCluster::state`]
//! builds a deterministic [`ClusterState`] from it: the same description
//! always gives the same objects, so runs and machines compare.
//!
//! ```text
//!   Nodes node-0 .. node-{N-1}: InternalIP 192.168.k/256.(k%256) (+1),
//!     podCIDR 10.244.k.0/24, Flannel VXLAN annotations
//!   Pod i: namespace ns{i % namespaces}, on node-{(i / namespaces) % nodes}
//!     (so every node has pods of every namespace), IP in that node's /24,
//!     labels app=app{(i / 7) % apps}, tier=tier{i % 3}
//!   Namespace n: label team=t{n % 10}
//!   Service s: namespace ns{s % namespaces}, ClusterIP 10.96.0.0 + 1 + s,
//!     port 80/TCP -> 8080, one EndpointSlice with endpoints_per_service
//!     pods of its namespace (all ready)
//!   NetworkPolicy p: namespace ns{p % namespaces}, selects
//!     app=app{(p / namespaces) % apps}, ingress on TCP 8000+p%50 .. +5
//!     from app=app{(p+1) % apps} or (team=t{p%10} namespaces AND
//!     tier=tier{p%3} pods)
//! ```
//!
//! Limits (checked by [`SyntheticCluster::validate`]): at most 256 nodes
//! (one /24 each in 10.244.0.0/16), at most 253 pods per node, at most 1M
//! Services (10.96.0.0/12), and `endpoints_per_service` no larger than the
//! pods of one namespace (endpoints of one Service are distinct pods).

pub mod fake_apiserver;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kxdp_dataplane::tables::LocalPod;

use crate::compile::{FLANNEL_BACKEND_DATA, FLANNEL_BACKEND_TYPE, FLANNEL_PUBLIC_IP};
use crate::endpoints::SERVICE_NAME_LABEL;
use crate::model::{ClusterState, ObjectKey};

/// Distinct `app` label values.
const APPS: usize = 20;
/// First address of the Service CIDR (10.96.0.0/12).
const SERVICE_BASE: u32 = 0x0a60_0000;
/// Addresses in 10.96.0.0/12 after the network address.
const MAX_SERVICES: usize = (1 << 20) - 2;

/// The shape of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticCluster {
    pub nodes: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub policies: usize,
}

/// A shape [`SyntheticCluster::state`] cannot build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntheticError {
    #[error("{nodes} nodes: between 1 and 256 fit 10.244.0.0/16 as /24s")]
    Nodes { nodes: usize },
    #[error("{namespaces} namespaces: at least 1 is needed")]
    Namespaces { namespaces: usize },
    #[error("{pods} pods on {nodes} nodes: more than 253 per node do not fit a /24 (pods are placed in rounds of one per namespace)")]
    PodsPerNode { pods: usize, nodes: usize },
    #[error("{services} Services: at most {MAX_SERVICES} fit 10.96.0.0/12")]
    Services { services: usize },
    #[error("{endpoints} endpoints per Service, but namespace {namespace} has only {pods} pods")]
    Endpoints {
        endpoints: usize,
        namespace: usize,
        pods: usize,
    },
}

fn selector(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn meta(namespace: Option<String>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        ..Default::default()
    }
}

impl SyntheticCluster {
    /// 100 nodes, 100 namespaces, `pods` pods, `policies` policies, no
    /// Services: the shape of the NetworkPolicy scale test and benchmark.
    pub fn policies(pods: usize, policies: usize) -> Self {
        SyntheticCluster {
            nodes: 100,
            namespaces: 100,
            pods,
            services: 0,
            endpoints_per_service: 0,
            policies,
        }
    }

    /// Issue 5's target scale: 30k Services x 10 endpoints (300k), 10k
    /// pods on 100 nodes in 100 namespaces, 1k NetworkPolicies.
    pub fn large() -> Self {
        SyntheticCluster {
            nodes: 100,
            namespaces: 100,
            pods: 10_000,
            services: 30_000,
            endpoints_per_service: 10,
            policies: 1_000,
        }
    }

    /// Check the limits in the module doc.
    pub fn validate(&self) -> Result<(), SyntheticError> {
        if self.nodes == 0 || self.nodes > 256 {
            return Err(SyntheticError::Nodes { nodes: self.nodes });
        }
        if self.namespaces == 0 {
            return Err(SyntheticError::Namespaces {
                namespaces: self.namespaces,
            });
        }
        // Highest host position: the last (possibly partial) round of
        // blocks over the nodes, counted as full.
        let rounds = self.pods.div_ceil(self.namespaces).div_ceil(self.nodes);
        if self.pods > 0 && rounds * self.namespaces > 253 {
            return Err(SyntheticError::PodsPerNode {
                pods: self.pods,
                nodes: self.nodes,
            });
        }
        if self.services > MAX_SERVICES {
            return Err(SyntheticError::Services {
                services: self.services,
            });
        }
        if self.services > 0 && self.endpoints_per_service > 0 {
            // Namespaces with Services are 0 .. min(services, namespaces);
            // the smallest of them is the last one.
            let last_ns = self.services.min(self.namespaces) - 1;
            let pods = self.pods_in_namespace(last_ns);
            if self.endpoints_per_service > pods {
                return Err(SyntheticError::Endpoints {
                    endpoints: self.endpoints_per_service,
                    namespace: last_ns,
                    pods,
                });
            }
        }
        Ok(())
    }

    /// Namespace name of namespace number `n`.
    pub fn namespace(n: usize) -> String {
        format!("ns{n}")
    }

    /// Node name of node number `k`.
    pub fn node_name(k: usize) -> String {
        format!("node-{k}")
    }

    /// Underlay (InternalIP) address of node `k`.
    pub fn node_ip(k: usize) -> Ipv4Addr {
        Ipv4Addr::from(0xc0a8_0000u32 + 1 + k as u32)
    }

    /// `(namespace, name)` of pod `i`.
    pub fn pod_key(&self, i: usize) -> ObjectKey {
        (Self::namespace(i % self.namespaces), format!("pod{i}"))
    }

    /// The node pod `i` runs on: consecutive blocks of `namespaces` pods
    /// (one per namespace) go to consecutive nodes, so every node hosts
    /// pods of every namespace.
    pub fn pod_node(&self, i: usize) -> usize {
        (i / self.namespaces) % self.nodes
    }

    /// Position of pod `i` among the pods of its node.
    fn pod_host(&self, i: usize) -> usize {
        (i / self.namespaces / self.nodes) * self.namespaces + i % self.namespaces
    }

    /// IP of pod `i`: inside its node's podCIDR.
    pub fn pod_ip(&self, i: usize) -> Ipv4Addr {
        let node = self.pod_node(i) as u32;
        let host = self.pod_host(i) as u32 + 2;
        Ipv4Addr::from(0x0af4_0000u32 | (node << 8) | host)
    }

    /// ClusterIP of Service `s`.
    pub fn service_ip(s: usize) -> Ipv4Addr {
        Ipv4Addr::from(SERVICE_BASE + 1 + s as u32)
    }

    /// `(namespace, name)` of Service `s` (its EndpointSlice is named
    /// `svc{s}-0` in the same namespace).
    pub fn service_key(&self, s: usize) -> ObjectKey {
        (Self::namespace(s % self.namespaces), format!("svc{s}"))
    }

    fn pods_in_namespace(&self, n: usize) -> usize {
        // Pods n, n + namespaces, n + 2 * namespaces, ... below `pods`.
        if n >= self.pods {
            0
        } else {
            (self.pods - n).div_ceil(self.namespaces)
        }
    }

    /// Pod index backing endpoint `e` of Service `s`: distinct pods of the
    /// Service's namespace, spread so that Services share pods evenly.
    pub fn endpoint_pod(&self, s: usize, e: usize) -> usize {
        let ns = s % self.namespaces;
        let in_ns = self.pods_in_namespace(ns).max(1);
        let m = ((s / self.namespaces) * self.endpoints_per_service + e) % in_ns;
        ns + m * self.namespaces
    }

    /// The local pods of node `k` as the compiler lists them (namespace/name
    /// order, `policy_slot` = position), without interfaces: the input
    /// [`crate::policy::PolicyCompiler::update`] takes.
    pub fn local_pods(&self, k: usize) -> Vec<LocalPod> {
        let mut keys: Vec<(ObjectKey, usize)> = (0..self.pods)
            .filter(|i| self.pod_node(*i) == k)
            .map(|i| (self.pod_key(i), i))
            .collect();
        keys.sort();
        keys.into_iter()
            .enumerate()
            .map(|(slot, ((ns, name), i))| LocalPod {
                ip: self.pod_ip(i),
                namespace: ns.into(),
                name: name.into(),
                interface: None,
                policy_slot: u32::try_from(slot).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// Build the state. Fails only for shapes [`Self::validate`] rejects.
    pub fn state(&self) -> Result<ClusterState, SyntheticError> {
        self.validate()?;
        let mut st = ClusterState::default();
        for n in 0..self.namespaces {
            let name = Self::namespace(n);
            let mut m = meta(None, name.clone());
            m.labels = Some(BTreeMap::from([
                ("team".to_string(), format!("t{}", n % 10)),
                ("kubernetes.io/metadata.name".to_string(), name.clone()),
            ]));
            st.namespaces.insert(
                name,
                Namespace {
                    metadata: m,
                    ..Default::default()
                },
            );
        }
        for k in 0..self.nodes {
            let (name, node) = self.node(k);
            st.nodes.insert(name, node);
        }
        for i in 0..self.pods {
            st.pods.insert(self.pod_key(i), self.pod(i));
        }
        for s in 0..self.services {
            let key = self.service_key(s);
            let slice = self.endpoint_slice(s);
            st.endpoint_slices
                .insert((key.0.clone(), format!("{}-0", key.1)), slice);
            st.services.insert(key, self.service(s));
        }
        for p in 0..self.policies {
            let (key, np) = self.policy(p);
            st.network_policies.insert(key, np);
        }
        Ok(st)
    }

    fn node(&self, k: usize) -> (String, Node) {
        let name = Self::node_name(k);
        let ip = Self::node_ip(k);
        let o = ip.octets();
        let mut m = meta(None, name.clone());
        m.annotations = Some(BTreeMap::from([
            (FLANNEL_BACKEND_TYPE.to_string(), "vxlan".to_string()),
            (
                FLANNEL_BACKEND_DATA.to_string(),
                format!(
                    r#"{{"VNI":1,"VtepMAC":"0e:76:{:02x}:{:02x}:{:02x}:{:02x}"}}"#,
                    o[0], o[1], o[2], o[3]
                ),
            ),
            (FLANNEL_PUBLIC_IP.to_string(), ip.to_string()),
        ]));
        let node = Node {
            metadata: m,
            spec: Some(NodeSpec {
                pod_cidr: Some(format!("10.244.{k}.0/24")),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    address: ip.to_string(),
                    type_: "InternalIP".into(),
                }]),
                ..Default::default()
            }),
        };
        (name, node)
    }

    fn pod(&self, i: usize) -> Pod {
        let (ns, name) = self.pod_key(i);
        let mut m = meta(Some(ns), name);
        m.labels = Some(BTreeMap::from([
            ("app".to_string(), format!("app{}", (i / 7) % APPS)),
            ("tier".to_string(), format!("tier{}", i % 3)),
        ]));
        Pod {
            metadata: m,
            spec: Some(PodSpec {
                node_name: Some(Self::node_name(self.pod_node(i))),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(self.pod_ip(i).to_string()),
                ..Default::default()
            }),
        }
    }

    fn service(&self, s: usize) -> Service {
        let (ns, name) = self.service_key(s);
        let ip = Self::service_ip(s).to_string();
        Service {
            metadata: meta(Some(ns), name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.clone()),
                cluster_ips: Some(vec![ip]),
                selector: Some(BTreeMap::from([("svc".to_string(), format!("svc{s}"))])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The EndpointSlice of Service `s` with its endpoints ready, except
    /// endpoint `not_ready` if given (what an endpoint change toggles).
    pub fn endpoint_slice_with(&self, s: usize, not_ready: Option<usize>) -> EndpointSlice {
        let (ns, name) = self.service_key(s);
        let mut m = meta(Some(ns), format!("{name}-0"));
        m.labels = Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), name)]));
        let endpoints = (0..self.endpoints_per_service)
            .map(|e| {
                let pod = self.endpoint_pod(s, e);
                let ready = not_ready != Some(e);
                Endpoint {
                    addresses: vec![self.pod_ip(pod).to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    node_name: Some(Self::node_name(self.pod_node(pod))),
                    ..Default::default()
                }
            })
            .collect();
        EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn endpoint_slice(&self, s: usize) -> EndpointSlice {
        self.endpoint_slice_with(s, None)
    }

    fn policy(&self, p: usize) -> (ObjectKey, NetworkPolicy) {
        let ns = Self::namespace(p % self.namespaces);
        let name = format!("np{p}");
        let from = vec![
            NetworkPolicyPeer {
                pod_selector: Some(selector(&[("app", format!("app{}", (p + 1) % APPS))])),
                ..Default::default()
            },
            NetworkPolicyPeer {
                namespace_selector: Some(selector(&[("team", format!("t{}", p % 10))])),
                pod_selector: Some(selector(&[("tier", format!("tier{}", p % 3))])),
                ..Default::default()
            },
        ];
        let first = 8000 + (p % 50) as i32;
        let np = NetworkPolicy {
            metadata: meta(Some(ns.clone()), name.clone()),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(&[(
                    "app",
                    format!("app{}", (p / self.namespaces) % APPS),
                )])),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(first)),
                        end_port: Some(first + 5),
                        protocol: None,
                    }]),
                }]),
                ..Default::default()
            }),
        };
        ((ns, name), np)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions, NodeEnvironment};

    #[test]
    fn small_cluster_compiles_without_warnings() {
        let shape = SyntheticCluster {
            nodes: 4,
            namespaces: 3,
            pods: 60,
            services: 30,
            endpoints_per_service: 5,
            policies: 12,
        };
        let st = shape.state().expect("valid shape");
        assert_eq!(st.pods.len(), 60);
        assert_eq!(st.services.len(), 30);
        assert_eq!(st.endpoint_slices.len(), 30);
        assert_eq!(st.network_policies.len(), 12);
        let env = NodeEnvironment::synthetic(&st, "node-0");
        let out = compile(&st, &env, &CompileOptions::new("node-0"), 1).expect("compiles");
        assert!(out.warnings.is_empty(), "{:?}", out.warnings.first());
        // Every pod of node-0 is local, inside its podCIDR, and
        // local_pods lists them as the compiler does.
        let compiled: Vec<(Ipv4Addr, u32)> = out
            .tables
            .pods
            .iter()
            .map(|p| (p.ip, p.policy_slot))
            .collect();
        let listed: Vec<(Ipv4Addr, u32)> = shape
            .local_pods(0)
            .iter()
            .map(|p| (p.ip, p.policy_slot))
            .collect();
        assert_eq!(compiled.len(), 15);
        assert_eq!(compiled, listed);
        for (ip, _) in &compiled {
            assert_eq!(ip.octets()[..3], [10, 244, 0]);
        }
        // Endpoints of one Service are distinct pods of its namespace.
        for s in 0..shape.services {
            let mut pods: Vec<usize> = (0..5).map(|e| shape.endpoint_pod(s, e)).collect();
            assert!(pods.iter().all(|p| p % 3 == s % 3 && *p < 60));
            pods.sort_unstable();
            pods.dedup();
            assert_eq!(pods.len(), 5);
        }
    }

    #[test]
    fn limits_are_checked() {
        let mut shape = SyntheticCluster::large();
        assert_eq!(shape.validate(), Ok(()));
        shape.nodes = 257;
        assert!(matches!(shape.state(), Err(SyntheticError::Nodes { .. })));
        shape.nodes = 10;
        assert!(matches!(
            shape.validate(),
            Err(SyntheticError::PodsPerNode { .. })
        ));
        shape = SyntheticCluster::large();
        shape.endpoints_per_service = 101;
        assert!(matches!(
            shape.validate(),
            Err(SyntheticError::Endpoints { .. })
        ));
    }
}
