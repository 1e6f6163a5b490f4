//! Endpoints for Services that have a selector but no EndpointSlice.
//!
//! In a cluster the EndpointSlice controller writes slices; a manifests
//! directory written by hand (`kubectl apply`-style YAML) usually has none.
//! [`derive_endpoint_slices`] plays the controller's part so the compiler
//! has one path: it returns synthetic `discovery.k8s.io/v1` EndpointSlices
//! for every Service that
//! - has a non-empty `spec.selector` (an empty or absent selector means the
//!   user manages endpoints), and
//! - has no EndpointSlice in its namespace labelled
//!   `kubernetes.io/service-name: <service>` in the state.
//!
//! Per Service, like the controller (`pkg/controller/endpointslice`):
//! - endpoints are the Pods of the Service's namespace whose labels match
//!   the selector, that have an IPv4 pod IP (`status.podIPs`, else
//!   `status.podIP`) and that are not terminal (phase Succeeded/Failed);
//! - each ServicePort resolves per pod: `targetPort` number as is, a
//!   `targetPort` name against the pod's `containers[].ports[]` with that
//!   name and protocol (a pod lacking it is left out *for that port*), the
//!   Service `port` when `targetPort` is absent. Pods that resolve the
//!   ports to different numbers land in different slices, one per distinct
//!   port list, as the controller does;
//! - conditions: `serving` = the pod is ready (phase Running and its Ready
//!   condition not False — DESIGN §4; hand-written manifests often carry no
//!   conditions) or `publishNotReadyAddresses`; `terminating` =
//!   `metadata.deletionTimestamp` set; `ready` = `publishNotReadyAddresses`
//!   or (serving and not terminating);
//! - `nodeName` from `spec.nodeName`, `targetRef` names the Pod.
//!
//! Derived slices are named `<service>-kxdp-<n>` and carry the label
//! `endpointslice.kubernetes.io/managed-by: kxdp.derived`. The cost is
//! linear in Pods plus matches: pods are indexed by namespace and label.
//! [`derive_for_service`] derives one Service's slices (what the
//! incremental compiler needs after a change) by scanning the pods of its
//! namespace only; both give the same slices.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::ClusterState;

/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the writer of an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on slices derived here.
pub const MANAGED_BY_KXDP: &str = "kxdp.derived";

/// The Services (namespace, name) that have at least one EndpointSlice.
pub fn services_with_slices(state: &ClusterState) -> FxHashSet<(&str, &str)> {
    state
        .endpoint_slices
        .iter()
        .filter_map(|((ns, _), s)| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(|svc| (ns.as_str(), svc.as_str()))
        })
        .collect()
}

/// The first IPv4 address of a pod (`status.podIPs`, else `status.podIP`).
pub fn pod_ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    let listed = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse::<Ipv4Addr>().ok())
        .next();
    listed.or_else(|| status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()))
}

/// Phase Succeeded or Failed: the pod will not run again.
pub fn pod_is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Phase Running and the Ready condition not False (DESIGN §4).
pub fn pod_is_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if status.phase.as_deref() != Some("Running") {
        return false;
    }
    !status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "False")
}

/// True when every `selector` pair is among `labels`.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Protocol with the API default (TCP).
fn protocol(p: Option<&String>) -> &str {
    p.map(String::as_str).unwrap_or("TCP")
}

/// The container port number `name`/`proto` resolves to in `pod`.
fn named_port(pod: &Pod, name: &str, proto: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && protocol(p.protocol.as_ref()) == proto)
        .map(|p| p.container_port)
}

/// The endpoint port of `sp` on `pod`, or None when the pod lacks a named
/// target port.
fn resolve_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => named_port(pod, name, protocol(sp.protocol.as_ref())),
    }
}

/// Pods of one namespace indexed by each label pair.
#[derive(Default)]
struct PodIndex<'a> {
    by_label: FxHashMap<(&'a str, &'a str, &'a str), Vec<&'a Pod>>,
}

impl<'a> PodIndex<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut by_label: FxHashMap<(&str, &str, &str), Vec<&Pod>> = FxHashMap::default();
        for ((ns, _), pod) in &state.pods {
            for (k, v) in pod.metadata.labels.iter().flatten() {
                by_label
                    .entry((ns.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        PodIndex { by_label }
    }

    /// Pods of `ns` matching `selector` (non-empty), in name order.
    fn matching(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<&'a Pod> {
        // Start from the rarest pair, then check the others.
        let mut smallest: Option<&Vec<&Pod>> = None;
        for (k, v) in selector {
            match self.by_label.get(&(ns, k.as_str(), v.as_str())) {
                None => return Vec::new(),
                Some(list) => {
                    if smallest.is_none_or(|s| list.len() < s.len()) {
                        smallest = Some(list);
                    }
                }
            }
        }
        smallest
            .into_iter()
            .flatten()
            .filter(|p| selector_matches(selector, p.metadata.labels.as_ref()))
            .copied()
            .collect()
    }
}

/// The Service's selector when it is one the controller acts on
/// (present and not empty).
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Synthetic EndpointSlices for every selector Service without one (see
/// the module doc), in Service order.
pub fn derive_endpoint_slices(state: &ClusterState) -> Vec<EndpointSlice> {
    let have = services_with_slices(state);
    let index = PodIndex::new(state);
    let mut out = Vec::new();
    for ((ns, name), svc) in &state.services {
        if have.contains(&(ns.as_str(), name.as_str())) {
            continue;
        }
        let Some(selector) = service_selector(svc) else {
            continue;
        };
        let pods = index.matching(ns, selector);
        out.extend(slices_for(ns, name, svc, &pods));
    }
    out
}

/// The derived slices of one Service `ns/name` that has no EndpointSlice
/// of its own (the caller knows; see [`services_with_slices`]): the same
/// slices [`derive_endpoint_slices`] gives for it. Cost: the pods of `ns`.
pub fn derive_for_service(
    state: &ClusterState,
    ns: &str,
    name: &str,
    svc: &Service,
) -> Vec<EndpointSlice> {
    let Some(selector) = service_selector(svc) else {
        return Vec::new();
    };
    let pods: Vec<&Pod> = pods_in_namespace(state, ns)
        .filter(|p| selector_matches(selector, p.metadata.labels.as_ref()))
        .collect();
    slices_for(ns, name, svc, &pods)
}

/// The pods of namespace `ns`, in name order.
pub fn pods_in_namespace<'a>(
    state: &'a ClusterState,
    ns: &'a str,
) -> impl Iterator<Item = &'a Pod> + 'a {
    state
        .pods
        .range((ns.to_string(), String::new())..)
        .take_while(move |((pns, _), _)| pns == ns)
        .map(|(_, p)| p)
}

fn slices_for(ns: &str, name: &str, svc: &Service, pods: &[&Pod]) -> Vec<EndpointSlice> {
    let spec = svc.spec.as_ref();
    let ports: &[ServicePort] = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
    if ports.is_empty() {
        return Vec::new();
    }
    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // Group endpoints by their resolved port list (name, protocol, number).
    type PortList = Vec<(Option<String>, String, i32)>;
    let mut groups: Vec<(PortList, Vec<Endpoint>)> = Vec::new();
    for pod in pods {
        if pod_is_terminal(pod) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let resolved: PortList = ports
            .iter()
            .filter_map(|sp| {
                resolve_port(sp, pod).map(|n| {
                    (
                        sp.name.clone(),
                        protocol(sp.protocol.as_ref()).to_string(),
                        n,
                    )
                })
            })
            .collect();
        if resolved.is_empty() {
            continue;
        }
        let serving = publish_not_ready || pod_is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_string()),
                namespace: Some(ns.to_string()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match groups.iter_mut().find(|(p, _)| *p == resolved) {
            Some((_, eps)) => eps.push(endpoint),
            None => groups.push((resolved, vec![endpoint])),
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| EndpointSlice {
            address_type: "IPv4".to_string(),
            endpoints,
            metadata: ObjectMeta {
                name: Some(format!("{name}-kxdp-{i}")),
                namespace: Some(ns.to_string()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_string(), name.to_string()),
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY_KXDP.to_string()),
                ])),
                ..Default::default()
            },
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, proto, port)| EndpointPort {
                        name,
                        protocol: Some(proto),
                        port: Some(port),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn running_pod(name: &str, labels: serde_json::Value, ip: &str, node: &str) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 5353, "protocol": "UDP"}
            ]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    fn service(name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn state(pods: Vec<Pod>, services: Vec<Service>) -> ClusterState {
        let mut s = ClusterState::default();
        for p in pods {
            let key = (
                p.metadata.namespace.clone().unwrap(),
                p.metadata.name.clone().unwrap(),
            );
            s.pods.insert(key, p);
        }
        for v in services {
            let key = (
                v.metadata.namespace.clone().unwrap(),
                v.metadata.name.clone().unwrap(),
            );
            s.services.insert(key, v);
        }
        s
    }

    /// Per slice: (port name, number) list and (address, ready, serving,
    /// terminating) list.
    type Summary = Vec<(Vec<(String, i32)>, Vec<(String, bool, bool, bool)>)>;

    fn summary(slices: &[EndpointSlice]) -> Summary {
        slices
            .iter()
            .map(|s| {
                let ports = s
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap()))
                    .collect();
                let eps = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        let c = e.conditions.clone().unwrap();
                        (
                            e.addresses[0].clone(),
                            c.ready.unwrap(),
                            c.serving.unwrap(),
                            c.terminating.unwrap(),
                        )
                    })
                    .collect();
                (ports, eps)
            })
            .collect()
    }

    #[test]
    fn selector_pods_become_endpoints_with_numeric_target_port() {
        let s = state(
            vec![
                running_pod("a", json!({"app": "web"}), "10.244.1.2", "node-a"),
                running_pod("b", json!({"app": "web", "x": "y"}), "10.244.2.2", "node-b"),
                running_pod("c", json!({"app": "db"}), "10.244.1.9", "node-a"),
            ],
            vec![service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
            )],
        );
        let slices = derive_endpoint_slices(&s);
        assert_eq!(slices.len(), 1);
        let sl = &slices[0];
        assert_eq!(sl.metadata.name.as_deref(), Some("web-kxdp-0"));
        assert_eq!(
            sl.metadata
                .labels
                .as_ref()
                .unwrap()
                .get(SERVICE_NAME_LABEL)
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(
            summary(&slices),
            vec![(
                vec![(String::new(), 8080)],
                vec![
                    ("10.244.1.2".into(), true, true, false),
                    ("10.244.2.2".into(), true, true, false)
                ]
            )]
        );
        assert_eq!(sl.endpoints[1].node_name.as_deref(), Some("node-b"));
        assert_eq!(
            sl.endpoints[0].target_ref.as_ref().unwrap().name.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn absent_target_port_uses_service_port() {
        let s = state(
            vec![running_pod("a", json!({"app": "web"}), "10.244.1.2", "n")],
            vec![service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 5432}]}),
            )],
        );
        assert_eq!(
            summary(&derive_endpoint_slices(&s))[0].0,
            vec![(String::new(), 5432)]
        );
    }

    #[test]
    fn named_target_port_resolves_per_pod_and_skips_pods_without_it() {
        let mut other = running_pod("b", json!({"app": "web"}), "10.244.1.3", "n");
        // b names its port differently: number 9090 under "http".
        other.spec.as_mut().unwrap().containers[0].ports = Some(vec![serde_json::from_value(
            json!({"name": "http", "containerPort": 9090}),
        )
        .unwrap()]);
        let mut lacking = running_pod("c", json!({"app": "web"}), "10.244.1.4", "n");
        lacking.spec.as_mut().unwrap().containers[0].ports = None;
        let s = state(
            vec![
                running_pod("a", json!({"app": "web"}), "10.244.1.2", "n"),
                other,
                lacking,
            ],
            vec![service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [
                    {"name": "web", "port": 80, "targetPort": "http"},
                    {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"},
                    {"name": "tcpdns", "port": 54, "targetPort": "dns"}
                ]}),
            )],
        );
        let got = summary(&derive_endpoint_slices(&s));
        // "tcpdns" asks for a TCP port named dns: nobody has one. "dns"
        // (UDP) only pod a has. Pod c resolves nothing and is left out.
        assert_eq!(
            got,
            vec![
                (
                    vec![("web".into(), 8080), ("dns".into(), 5353)],
                    vec![("10.244.1.2".into(), true, true, false)]
                ),
                (
                    vec![("web".into(), 9090)],
                    vec![("10.244.1.3".into(), true, true, false)]
                ),
            ]
        );
    }

    #[test]
    fn readiness_terminal_terminating_and_missing_ip() {
        let mut not_ready = running_pod("b", json!({"app": "web"}), "10.244.1.3", "n");
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let mut pending = running_pod("c", json!({"app": "web"}), "10.244.1.4", "n");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut no_conditions = running_pod("d", json!({"app": "web"}), "10.244.1.5", "n");
        no_conditions.status.as_mut().unwrap().conditions = None;
        let mut failed = running_pod("e", json!({"app": "web"}), "10.244.1.6", "n");
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut terminating = running_pod("f", json!({"app": "web"}), "10.244.1.7", "n");
        terminating.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap());
        let mut no_ip = running_pod("g", json!({"app": "web"}), "10.244.1.8", "n");
        no_ip.status.as_mut().unwrap().pod_ip = None;
        no_ip.status.as_mut().unwrap().pod_ips = None;
        let mut v6_only = running_pod("h", json!({"app": "web"}), "fd00::1", "n");
        v6_only.status.as_mut().unwrap().pod_ip = Some("fd00::1".into());
        let s = state(
            vec![
                running_pod("a", json!({"app": "web"}), "10.244.1.2", "n"),
                not_ready,
                pending,
                no_conditions,
                failed,
                terminating,
                no_ip,
                v6_only,
            ],
            vec![service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            )],
        );
        assert_eq!(
            summary(&derive_endpoint_slices(&s))[0].1,
            vec![
                ("10.244.1.2".into(), true, true, false),
                ("10.244.1.3".into(), false, false, false),
                ("10.244.1.4".into(), false, false, false),
                ("10.244.1.5".into(), true, true, false),
                ("10.244.1.7".into(), false, true, true),
            ]
        );
    }

    #[test]
    fn publish_not_ready_addresses_marks_everything_ready() {
        let mut pending = running_pod("c", json!({"app": "web"}), "10.244.1.4", "n");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let s = state(
            vec![pending],
            vec![service(
                "web",
                json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80}]}),
            )],
        );
        assert_eq!(
            summary(&derive_endpoint_slices(&s))[0].1,
            vec![("10.244.1.4".into(), true, true, false)]
        );
    }

    #[test]
    fn services_with_slices_or_without_selector_are_left_alone() {
        let mut s = state(
            vec![running_pod("a", json!({"app": "web"}), "10.244.1.2", "n")],
            vec![
                service(
                    "has-slice",
                    json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
                ),
                service("no-selector", json!({"ports": [{"port": 80}]})),
                service(
                    "empty-selector",
                    json!({"selector": {}, "ports": [{"port": 80}]}),
                ),
                service(
                    "nothing-matches",
                    json!({"selector": {"app": "none"}, "ports": [{"port": 80}]}),
                ),
                service("no-ports", json!({"selector": {"app": "web"}})),
            ],
        );
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "has-slice"}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        s.endpoint_slices
            .insert(("default".into(), "x".into()), slice);
        assert!(derive_endpoint_slices(&s).is_empty());
    }

    #[test]
    fn other_namespaces_do_not_match() {
        let mut p = running_pod("a", json!({"app": "web"}), "10.244.1.2", "n");
        p.metadata.namespace = Some("other".into());
        let s = state(
            vec![p],
            vec![service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            )],
        );
        assert!(derive_endpoint_slices(&s).is_empty());
    }
}
