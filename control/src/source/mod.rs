//! Sources of desired state: the Kubernetes API ([`kube`]) and a manifests
//! file or directory ([`files`]). Both feed one [`SourceEvent`] channel that
//! the sync runner ([`crate::runner`]) drains into its change tracker.
//!
//! Contract every source keeps:
//! - A kind's first [`SourceEvent::Relisted`] (or a [`SourceEvent::Snapshot`],
//!   which covers every kind) marks that kind as synced. The runner publishes
//!   nothing before every required kind is synced.
//! - A relist is delivered whole: a source buffers a list (kube-runtime's
//!   `Init` .. `InitApply`* .. `InitDone`) and sends it as one `Relisted`
//!   event, so the runner never sees half a list. An interrupted relist (an
//!   error or 410 Gone half-way through the pages) is discarded.
//! - Objects are stripped of everything the dataplane does not read before
//!   they are sent (see [`kube`]); an object that cannot be decoded is
//!   reported and treated as absent, the stream goes on.
//! - [`SourceEvent::Health`] reports whether the source currently believes
//!   its view is fresh. The runner's periodic resync only publishes while
//!   every source is healthy, so `/healthz` goes stale when a source is cut
//!   off (the last tables keep serving).

pub mod files;
pub mod kube;

use std::fmt;
use std::sync::mpsc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{ClusterState, ObjectKey};

/// The kinds kxdp programs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];

    /// The Kubernetes kind name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Lowercase plural, as in API paths and metric labels.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    /// True for namespaced kinds.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One object of a kind kxdp programs from.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "transient on the way into ClusterState, which stores them unboxed"
)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    /// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
    pub fn key(&self) -> ObjectKey {
        object_key(self.kind(), self.metadata())
    }
}

/// The key of an object of `kind` with metadata `meta`.
pub fn object_key(kind: Kind, meta: &ObjectMeta) -> ObjectKey {
    let ns = if kind.namespaced() {
        meta.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    (ns, meta.name.clone().unwrap_or_default())
}

/// What a source tells the runner.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "events are moved once through a channel; boxing would add an allocation per object"
)]
pub enum SourceEvent {
    /// An object was added or modified.
    Apply(Object),
    /// An object is gone (deleted, or no longer decodable).
    Delete { kind: Kind, key: ObjectKey },
    /// The complete current list of one kind; replaces what was known of it.
    /// The first one of a kind marks the kind synced.
    Relisted { kind: Kind, objects: Vec<Object> },
    /// The complete state of every kind (the manifests source); marks every
    /// kind synced.
    Snapshot(Box<ClusterState>),
    /// The source's view became fresh (`true`) or possibly stale (`false`).
    Health { source: &'static str, healthy: bool },
    /// An input of the compile besides the cluster state changed: the
    /// node's interfaces, its pods' veths, its neighbours (sent by `kxdp
    /// run`'s host scanner, not by a cluster source). The runner compiles
    /// a full generation promptly, without waiting out `min_interval`:
    /// frames may be parked in a worker waiting for a next hop that was
    /// just resolved.
    HostChanged,
}

/// The sending side handed to sources.
pub type EventSender = mpsc::Sender<SourceEvent>;
/// The receiving side the runner drains.
pub type EventReceiver = mpsc::Receiver<SourceEvent>;

/// A channel from sources to the runner.
pub fn channel() -> (EventSender, EventReceiver) {
    mpsc::channel()
}
