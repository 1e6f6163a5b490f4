//! The desired state the compiler reads: Kubernetes objects as the API
//! server (or a manifests file) describes them, keyed by namespace/name.
//!
//! Both sources (manifests, kube-rs watchers) fill a [`ClusterState`]; the
//! compiler is a pure function of it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// `(namespace, name)` of a namespaced object.
pub type ObjectKey = (String, String);

/// Every object kxdp programs from.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
}
