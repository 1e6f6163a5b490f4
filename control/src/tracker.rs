//! Per-key change tracking with no-op suppression, in the manner of
//! kube-proxy's `ServiceChangeTracker`: for every key touched since the last
//! sync the tracker remembers the object as it was at that sync
//! (`previous`); the current object lives in the [`ClusterState`]. An
//! update that leaves an object equal to its `previous` (including A -> B ->
//! A between two syncs) drops the entry, so the runner sees only real
//! changes.
//!
//! Sources strip objects before they arrive (resourceVersion, managedFields,
//! status heartbeats...), so an update that touched only such fields
//! compares equal here and costs nothing downstream.
//!
//! The tracker also collects, for EndpointSlices changed by a watch event
//! (not by a relist), the `endpoints.kubernetes.io/last-change-trigger-time`
//! annotation: the runner turns it into the network programming latency
//! metric at publish time, as kube-proxy does.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::model::{ClusterState, ObjectKey};
use crate::source::{Kind, Object};

/// Annotation the EndpointSlice controller sets to the time of the change
/// (Pod or Service update) that caused the slice update.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What changed since the last [`ChangeTracker::take_changes`].
#[derive(Debug, Default)]
pub struct ChangeSet {
    /// Changed keys with the object as it was at the previous sync (None:
    /// it did not exist). The current object is in the state. Boxed: an
    /// `Object` is kilobytes inline, and after a relist every key of the
    /// cluster is here, mostly as None.
    pub previous: BTreeMap<(Kind, ObjectKey), Option<Box<Object>>>,
    /// Trigger times of the EndpointSlice changes in this set.
    pub trigger_times: Vec<Timestamp>,
}

impl ChangeSet {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.previous.is_empty()
    }

    /// Number of changed objects.
    pub fn len(&self) -> usize {
        self.previous.len()
    }

    /// The kinds with at least one change.
    pub fn kinds(&self) -> BTreeSet<Kind> {
        self.previous.keys().map(|(k, _)| *k).collect()
    }

    /// The changed keys of `kind`.
    pub fn keys(&self, kind: Kind) -> impl Iterator<Item = &ObjectKey> {
        self.previous
            .keys()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, key)| key)
    }
}

/// The current state plus what changed since the last sync.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    state: ClusterState,
    pending: BTreeMap<(Kind, ObjectKey), Option<Box<Object>>>,
    trigger_times: BTreeMap<ObjectKey, Timestamp>,
}

impl ChangeTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// True when something changed since the last [`take_changes`](Self::take_changes).
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Number of objects of `kind` in the state.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.state.namespaces.len(),
            Kind::Node => self.state.nodes.len(),
            Kind::Pod => self.state.pods.len(),
            Kind::Service => self.state.services.len(),
            Kind::EndpointSlice => self.state.endpoint_slices.len(),
            Kind::NetworkPolicy => self.state.network_policies.len(),
        }
    }

    /// Add or update one object (a watch event). Returns true when the
    /// object differs from what the state held.
    pub fn apply(&mut self, obj: Object) -> bool {
        let key = obj.key();
        if let Object::EndpointSlice(slice) = &obj {
            if let Some(t) = trigger_time(slice) {
                self.trigger_times.insert(key.clone(), t);
            }
        }
        self.set(obj.kind(), key, Some(obj))
    }

    /// Remove one object. Returns true when it was present.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        self.set(kind, key.clone(), None)
    }

    /// Replace every object of `kind` with `objects` (a relist). Keys that
    /// are not listed are deleted. Returns the number of real changes.
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) -> usize {
        if self.count(kind) == 0 && !self.pending_of(kind) {
            return self.fill(kind, objects);
        }
        let mut listed: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        for obj in objects {
            if obj.kind() == kind {
                listed.insert(obj.key(), obj);
            }
        }
        let gone: Vec<ObjectKey> = self
            .keys_of(kind)
            .into_iter()
            .filter(|k| !listed.contains_key(k))
            .collect();
        let mut changed = 0;
        for key in gone {
            changed += usize::from(self.set(kind, key, None));
        }
        for (key, obj) in listed {
            changed += usize::from(self.set(kind, key, Some(obj)));
        }
        changed
    }

    /// True when a change of `kind` is pending.
    fn pending_of(&self, kind: Kind) -> bool {
        self.pending
            .range((kind, (String::new(), String::new()))..)
            .next()
            .is_some_and(|((k, _), _)| *k == kind)
    }

    /// [`replace`](Self::replace) into an empty kind with nothing pending
    /// (the first list): every listed object is new, so each is moved into
    /// the state once, without the comparisons and the intermediate map
    /// (objects are kilobytes each; a first list is the whole cluster).
    fn fill(&mut self, kind: Kind, objects: Vec<Object>) -> usize {
        let mut changed = 0;
        for obj in objects {
            if obj.kind() != kind {
                continue;
            }
            let key = obj.key();
            // A key listed twice: the last copy wins, as in `replace`.
            if self.store(kind, &key, Some(obj)).is_none() {
                self.pending.insert((kind, key), None);
                changed += 1;
            }
        }
        changed
    }

    /// Replace the whole state (a manifests reload). Returns the number of
    /// real changes.
    pub fn replace_all(&mut self, state: ClusterState) -> usize {
        let ClusterState {
            namespaces,
            nodes,
            pods,
            services,
            endpoint_slices,
            network_policies,
        } = state;
        let mut n = 0;
        n += self.replace(
            Kind::Namespace,
            namespaces.into_values().map(Object::Namespace).collect(),
        );
        n += self.replace(Kind::Node, nodes.into_values().map(Object::Node).collect());
        n += self.replace(Kind::Pod, pods.into_values().map(Object::Pod).collect());
        n += self.replace(
            Kind::Service,
            services.into_values().map(Object::Service).collect(),
        );
        n += self.replace(
            Kind::EndpointSlice,
            endpoint_slices
                .into_values()
                .map(Object::EndpointSlice)
                .collect(),
        );
        n += self.replace(
            Kind::NetworkPolicy,
            network_policies
                .into_values()
                .map(Object::NetworkPolicy)
                .collect(),
        );
        n
    }

    /// Hand out what changed since the last call and start a new interval.
    pub fn take_changes(&mut self) -> ChangeSet {
        let previous = std::mem::take(&mut self.pending);
        let trigger_times = std::mem::take(&mut self.trigger_times)
            .into_iter()
            .filter(|(key, _)| previous.contains_key(&(Kind::EndpointSlice, key.clone())))
            .map(|(_, t)| t)
            .collect();
        ChangeSet {
            previous,
            trigger_times,
        }
    }

    fn keys_of(&self, kind: Kind) -> Vec<ObjectKey> {
        fn cluster(m: &BTreeMap<String, impl Sized>) -> Vec<ObjectKey> {
            m.keys().map(|n| (String::new(), n.clone())).collect()
        }
        fn namespaced(m: &BTreeMap<ObjectKey, impl Sized>) -> Vec<ObjectKey> {
            m.keys().cloned().collect()
        }
        match kind {
            Kind::Namespace => cluster(&self.state.namespaces),
            Kind::Node => cluster(&self.state.nodes),
            Kind::Pod => namespaced(&self.state.pods),
            Kind::Service => namespaced(&self.state.services),
            Kind::EndpointSlice => namespaced(&self.state.endpoint_slices),
            Kind::NetworkPolicy => namespaced(&self.state.network_policies),
        }
    }

    /// Store `new` under `key`; record the change unless it is a no-op.
    /// Objects are compared in place and moved, never cloned: a relist of
    /// the whole cluster must not hold two copies of it.
    fn set(&mut self, kind: Kind, key: ObjectKey, new: Option<Object>) -> bool {
        if self.stored_equals(kind, &key, new.as_ref()) {
            return false;
        }
        let slot = (kind, key);
        match self.pending.get(&slot) {
            // Back to what the last sync saw: not a change any more.
            Some(previous) if previous.as_deref() == new.as_ref() => {
                self.pending.remove(&slot);
                self.store(kind, &slot.1, new);
            }
            Some(_) => {
                self.store(kind, &slot.1, new);
            }
            None => {
                let old = self.store(kind, &slot.1, new);
                self.pending.insert(slot, old.map(Box::new));
            }
        }
        true
    }

    /// True when the state holds exactly `obj` under `key` (both None:
    /// absent).
    fn stored_equals(&self, kind: Kind, key: &ObjectKey, obj: Option<&Object>) -> bool {
        let s = &self.state;
        match (kind, obj) {
            (Kind::Namespace, Some(Object::Namespace(o))) => s.namespaces.get(&key.1) == Some(o),
            (Kind::Namespace, None) => !s.namespaces.contains_key(&key.1),
            (Kind::Node, Some(Object::Node(o))) => s.nodes.get(&key.1) == Some(o),
            (Kind::Node, None) => !s.nodes.contains_key(&key.1),
            (Kind::Pod, Some(Object::Pod(o))) => s.pods.get(key) == Some(o),
            (Kind::Pod, None) => !s.pods.contains_key(key),
            (Kind::Service, Some(Object::Service(o))) => s.services.get(key) == Some(o),
            (Kind::Service, None) => !s.services.contains_key(key),
            (Kind::EndpointSlice, Some(Object::EndpointSlice(o))) => {
                s.endpoint_slices.get(key) == Some(o)
            }
            (Kind::EndpointSlice, None) => !s.endpoint_slices.contains_key(key),
            (Kind::NetworkPolicy, Some(Object::NetworkPolicy(o))) => {
                s.network_policies.get(key) == Some(o)
            }
            (Kind::NetworkPolicy, None) => !s.network_policies.contains_key(key),
            // An object of another kind is stored as a removal (see
            // `store`); it equals the state when the key is absent.
            (_, Some(_)) => self.stored_equals(kind, key, None),
        }
    }

    /// Put `new` into the state (or remove the key) and return what was there.
    fn store(&mut self, kind: Kind, key: &ObjectKey, new: Option<Object>) -> Option<Object> {
        let s = &mut self.state;
        let name = key.1.clone();
        match (kind, new) {
            (Kind::Namespace, Some(Object::Namespace(o))) => {
                s.namespaces.insert(name, o).map(Object::Namespace)
            }
            (Kind::Namespace, _) => s.namespaces.remove(&name).map(Object::Namespace),
            (Kind::Node, Some(Object::Node(o))) => s.nodes.insert(name, o).map(Object::Node),
            (Kind::Node, _) => s.nodes.remove(&name).map(Object::Node),
            (Kind::Pod, Some(Object::Pod(o))) => s.pods.insert(key.clone(), o).map(Object::Pod),
            (Kind::Pod, _) => s.pods.remove(key).map(Object::Pod),
            (Kind::Service, Some(Object::Service(o))) => {
                s.services.insert(key.clone(), o).map(Object::Service)
            }
            (Kind::Service, _) => s.services.remove(key).map(Object::Service),
            (Kind::EndpointSlice, Some(Object::EndpointSlice(o))) => s
                .endpoint_slices
                .insert(key.clone(), o)
                .map(Object::EndpointSlice),
            (Kind::EndpointSlice, _) => s.endpoint_slices.remove(key).map(Object::EndpointSlice),
            (Kind::NetworkPolicy, Some(Object::NetworkPolicy(o))) => s
                .network_policies
                .insert(key.clone(), o)
                .map(Object::NetworkPolicy),
            (Kind::NetworkPolicy, _) => s.network_policies.remove(key).map(Object::NetworkPolicy),
        }
    }
}

/// The slice's last-change-trigger-time, when present and valid RFC 3339.
pub fn trigger_time(slice: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Option<Timestamp> {
    slice
        .metadata
        .annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Service, ServiceSpec};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, ip: &str) -> Object {
        Object::Service(Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn key(name: &str) -> ObjectKey {
        ("default".into(), name.into())
    }

    #[test]
    fn identical_update_is_not_a_change() {
        let mut t = ChangeTracker::new();
        assert!(t.apply(svc("a", "10.96.0.1")));
        let c = t.take_changes();
        assert_eq!(c.len(), 1);
        assert!(c.previous[&(Kind::Service, key("a"))].is_none());
        assert!(!t.apply(svc("a", "10.96.0.1")));
        assert!(!t.has_changes());
    }

    #[test]
    fn change_and_change_back_cancels() {
        let mut t = ChangeTracker::new();
        t.apply(svc("a", "10.96.0.1"));
        t.take_changes();
        assert!(t.apply(svc("a", "10.96.0.2")));
        assert!(t.has_changes());
        assert!(t.apply(svc("a", "10.96.0.1")));
        assert!(!t.has_changes(), "A -> B -> A must leave no change");
        // Add then delete between two syncs: nothing either.
        t.apply(svc("b", "10.96.0.3"));
        assert!(t.delete(Kind::Service, &key("b")));
        assert!(!t.has_changes());
        assert!(!t.delete(Kind::Service, &key("b")));
    }

    #[test]
    fn previous_is_the_value_at_the_last_sync() {
        let mut t = ChangeTracker::new();
        t.apply(svc("a", "10.96.0.1"));
        t.take_changes();
        t.apply(svc("a", "10.96.0.2"));
        t.apply(svc("a", "10.96.0.3"));
        let c = t.take_changes();
        assert_eq!(
            c.previous[&(Kind::Service, key("a"))].as_deref(),
            Some(&svc("a", "10.96.0.1"))
        );
        assert_eq!(
            t.state().services[&key("a")]
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.3")
        );
    }

    #[test]
    fn replace_deletes_unlisted_and_records_only_differences() {
        let mut t = ChangeTracker::new();
        t.replace(
            Kind::Service,
            vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")],
        );
        t.take_changes();
        let n = t.replace(
            Kind::Service,
            vec![svc("a", "10.96.0.1"), svc("c", "10.96.0.3")],
        );
        assert_eq!(n, 2);
        let c = t.take_changes();
        let keys: Vec<_> = c.keys(Kind::Service).cloned().collect();
        assert_eq!(keys, vec![key("b"), key("c")]);
        assert_eq!(t.count(Kind::Service), 2);
        assert_eq!(c.kinds(), BTreeSet::from([Kind::Service]));
    }

    #[test]
    fn first_list_records_every_object_once() {
        let mut t = ChangeTracker::new();
        // A pending delete of another kind does not matter; a key listed
        // twice counts once and keeps its last copy.
        let n = t.replace(
            Kind::Service,
            vec![
                svc("a", "10.96.0.1"),
                svc("b", "10.96.0.2"),
                svc("a", "10.96.0.9"),
            ],
        );
        assert_eq!(n, 2);
        let c = t.take_changes();
        assert_eq!(c.len(), 2);
        assert!(c.previous.values().all(Option::is_none));
        assert_eq!(
            t.state().services[&key("a")]
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.9")
        );
        // The same list again: nothing changed.
        assert_eq!(
            t.replace(
                Kind::Service,
                vec![svc("a", "10.96.0.9"), svc("b", "10.96.0.2")]
            ),
            0
        );
        // Emptied with its deletes still pending: the general path, which
        // cancels delete + re-add.
        assert_eq!(t.replace(Kind::Service, vec![]), 2);
        assert_eq!(
            t.replace(
                Kind::Service,
                vec![svc("a", "10.96.0.9"), svc("b", "10.96.0.2")]
            ),
            2
        );
        assert!(!t.has_changes());
    }

    #[test]
    fn trigger_times_follow_endpoint_slice_changes() {
        let mut t = ChangeTracker::new();
        let slice = |rv: &str| {
            Object::EndpointSlice(EndpointSlice {
                metadata: ObjectMeta {
                    namespace: Some("default".into()),
                    name: Some("a-1".into()),
                    annotations: Some(
                        [(LAST_CHANGE_TRIGGER_TIME.to_string(), rv.to_string())].into(),
                    ),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: vec![],
                ports: None,
            })
        };
        t.apply(slice("2024-05-01T10:00:00Z"));
        let c = t.take_changes();
        assert_eq!(
            c.trigger_times,
            vec!["2024-05-01T10:00:00Z".parse::<Timestamp>().unwrap()]
        );
        // Unparsable annotation: a change, but no trigger time.
        t.apply(slice("yesterday"));
        let c = t.take_changes();
        assert_eq!(c.len(), 1);
        assert!(c.trigger_times.is_empty());
    }
}
