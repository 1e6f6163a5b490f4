//! [`Compiler`]: the incremental compiler the sync runner drives.
//!
//! Contract: for the same state, environment and options, a partial
//! compile gives exactly the tables and warnings of a full [`compile`]
//! (the NetworkPolicy part: the same verdicts; its ids may differ, as with
//! any [`PolicyCompiler`] history). `control/tests/incremental_equivalence.rs`
//! checks this over random change sequences.
//!
//! What is kept between generations (all owned by the control thread; the
//! published [`TableSet`] only shares immutable parts of it):
//! - per Service, its [`CompiledService`] (ports with their backend sets and
//!   Maglev tables behind `Arc`, the frontends they claim, warnings) and
//!   where it landed in the table ([`Placement`]);
//! - the EndpointSlice names per Service, so a changed Service finds its
//!   slices without scanning all of them;
//! - the last [`ServiceTable`], pod table, policy table and their warnings.
//!
//! A partial compile gets the [`ChangeSet`] since the previous compile and
//! recompiles only the *dirty* Services:
//! - a changed Service;
//! - the Services a changed EndpointSlice names, before and after the
//!   change (`kubernetes.io/service-name`);
//! - for a changed Pod, the selector Services of its namespace without an
//!   EndpointSlice of their own (their endpoints are derived from pods,
//!   see [`crate::endpoints`]) whose selector matches the pod's labels
//!   before or after the change.
//!
//! Nodes and Namespaces change no Service (a Service depends on the node
//! only through its name, which is an option). Then, from cheapest:
//! - every dirty Service keeps its [layout](CompiledService::same_layout)
//!   (same frontends, same number of ports): the next table is the previous
//!   one with those ports swapped in ([`ServiceTable::with_replaced_ports`]);
//!   an endpoint change costs one Service's compile plus copying one chunk
//!   of port pointers;
//! - some keep their number of ports but claim other frontends or
//!   NodePorts, and none of their old claims was contested (claimed by two
//!   Services in the last assembly): their old claims are removed and the
//!   new ones added to copies of the maps
//!   ([`ServiceTable::with_frontend_delta`]); a new claim that meets one
//!   held by another port falls through to
//! - reassembling the table from the cached Services (a Service with ports
//!   appeared or went away, changed its number of ports, or a conflict is
//!   involved): frontend conflicts are resolved in namespace/name order as
//!   in a full compile, and no Maglev table is rebuilt.
//!
//! The pod table is rebuilt when a pod scheduled on this node or the
//! environment changed; node settings and routes (a few entries per node)
//! every time. The NetworkPolicy compiler runs when a NetworkPolicy or
//! Namespace changed, the local pods or node addresses did, or a pod field
//! it reads (labels, IPs, phase, nodeName, hostNetwork, container ports);
//! a readiness change alone does not run it. It gets the changed pods,
//! namespaces and policies ([`PolicyInputChanges`]), so a pod change costs
//! the policy selections that pod affects, not a pass over every pod and
//! policy (see [`PolicyCompiler::update_changed`]).
//!
//! A full compile rebuilds everything from the state and replaces the
//! cache. It runs when the caller asks (first publish, periodic resync,
//! after a failed compile), when the options changed, when there is no
//! cache (the previous compile failed: the cache is dropped on any error),
//! and when a change set is so large ([`FULL_COMPILE_CHANGES`]) that
//! tracking it would cost more than rebuilding.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kxdp_dataplane::tables::services::FrontendDelta;
use kxdp_dataplane::tables::{LocalPod, PodTable, PolicyTable, ServiceTable, TableSet};
use rustc_hash::FxHashMap;

use super::node::{node_config, route_table};
use super::pods::pod_table;
use super::services::{
    assemble, compile_service, slices_by_service, CompiledService, Contested, Placement,
};
use super::{
    policy_owned_ips, CompileError, CompileOptions, CompileWarning, NodeEnvironment, Warnings,
};
use crate::endpoints::{
    derive_endpoint_slices, derive_for_service, selector_matches, service_selector,
    SERVICE_NAME_LABEL,
};
use crate::model::{ClusterState, ObjectKey};
use crate::policy::{PolicyChanges, PolicyCompileStats, PolicyCompiler, PolicyInputChanges};
use crate::runner::CompileInput;
use crate::source::{Kind, Object};
use crate::tracker::ChangeSet;

#[cfg(doc)]
use super::compile;

/// A change set with more objects than this is compiled in full.
pub const FULL_COMPILE_CHANGES: usize = 5000;

/// What one compile did (logs, tests, benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Everything was rebuilt from the state.
    pub full: bool,
    /// Services compiled (all of them in a full compile).
    pub services_compiled: usize,
    /// Partial compile: the table was rebuilt from the cached Services (a
    /// Service with ports appeared or went away, changed its number of
    /// ports, or a frontend conflict was involved).
    pub services_reassembled: bool,
    /// Partial compile: some Service changed its frontends and the maps
    /// were patched (no conflict involved).
    pub frontends_changed: bool,
    /// The local pod table was rebuilt (a pod scheduled here changed, or
    /// the environment did).
    pub pods_rebuilt: bool,
    /// The NetworkPolicy compiler ran.
    pub policy_updated: bool,
    /// What it did (zero when it did not run).
    pub policy: PolicyCompileStats,
}

/// One generation from [`Compiler`].
#[derive(Debug)]
pub struct IncrementalOutput {
    pub tables: TableSet,
    /// Every warning of this generation (also those of unchanged objects),
    /// in the order [`compile`] reports them.
    pub warnings: Vec<CompileWarning>,
    /// What the NetworkPolicy part changed (empty when it did not run), for
    /// revoking conntrack entries.
    pub policy_changes: PolicyChanges,
    pub stats: CompileStats,
}

/// The incremental compiler; keep one per node on the control thread.
#[derive(Debug, Default)]
pub struct Compiler {
    /// None: the next compile is full.
    cache: Option<Cache>,
    policy: PolicyCompiler,
}

#[derive(Debug)]
struct CachedService {
    compiled: CompiledService,
    placement: Placement,
}

#[derive(Debug)]
struct Cache {
    opts: CompileOptions,
    env: NodeEnvironment,
    services: BTreeMap<ObjectKey, CachedService>,
    /// Services with warnings, so the list is rebuilt without walking all.
    noisy: BTreeSet<ObjectKey>,
    /// Names of the state's EndpointSlices per Service `(namespace,
    /// service)`, sorted (the order a full compile takes them in).
    slices: FxHashMap<ObjectKey, Vec<String>>,
    table: ServiceTable,
    /// Claims contested in the last assembly.
    contested: Contested,
    pods: PodTable,
    pod_warnings: Vec<CompileWarning>,
    policy: PolicyTable,
    policy_warnings: Vec<CompileWarning>,
    /// The node addresses the policy table was compiled with.
    owned: Vec<Ipv4Addr>,
}

fn service_label(slice: &EndpointSlice) -> Option<&String> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)
}

impl Compiler {
    /// A compiler with no history: its first compile is full.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compile what the sync runner hands over: full when `input.full`,
    /// else from `input.changes`.
    pub fn compile_input(
        &mut self,
        input: &CompileInput<'_>,
        env: &NodeEnvironment,
        opts: &CompileOptions,
    ) -> Result<IncrementalOutput, CompileError> {
        let changes = (!input.full).then_some(input.changes);
        self.compile(input.state, changes, env, opts, input.generation)
    }

    /// Compile `state`. `changes` is everything that changed since this
    /// compiler's previous call (None: rebuild everything). A partial
    /// compile with an incomplete change set gives stale tables: the runner
    /// hands over every change exactly once, and asks for a full compile
    /// after a failure.
    pub fn compile(
        &mut self,
        state: &ClusterState,
        changes: Option<&ChangeSet>,
        env: &NodeEnvironment,
        opts: &CompileOptions,
        generation: u64,
    ) -> Result<IncrementalOutput, CompileError> {
        // Out of `self` while compiling: an error leaves no cache behind,
        // so the compile after a failure is full.
        let cache = self.cache.take();
        let (out, cache) = match (cache, changes) {
            (Some(c), Some(ch)) if c.opts == *opts && ch.len() <= FULL_COMPILE_CHANGES => {
                self.partial(c, state, ch, env, opts, generation)?
            }
            _ => self.full(state, env, opts, generation)?,
        };
        self.cache = Some(cache);
        Ok(out)
    }

    fn full(
        &mut self,
        state: &ClusterState,
        env: &NodeEnvironment,
        opts: &CompileOptions,
        generation: u64,
    ) -> Result<(IncrementalOutput, Cache), CompileError> {
        let mut node_warnings = Warnings::default();
        let node = node_config(state, env, opts, &mut node_warnings)?;
        let routes = route_table(state, opts, &mut node_warnings);
        let mut pod_warnings = Warnings::default();
        let pods = pod_table(state, env, opts, &mut pod_warnings);

        let derived = derive_endpoint_slices(state);
        let index = slices_by_service(state, &derived);
        let mut services: BTreeMap<ObjectKey, CachedService> = state
            .services
            .iter()
            .map(|(key, svc)| {
                let slices = index
                    .get(&(key.0.as_str(), key.1.as_str()))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let compiled = compile_service(&key.0, &key.1, svc, slices, &opts.node_name, opts);
                (
                    key.clone(),
                    CachedService {
                        compiled,
                        placement: Placement::default(),
                    },
                )
            })
            .collect();
        drop(index);
        drop(derived);
        let (table, placements, contested) = assemble(services.values().map(|s| &s.compiled));
        for (s, p) in services.values_mut().zip(placements) {
            s.placement = p;
        }
        let noisy = noisy_services(&services);

        let mut slices: FxHashMap<ObjectKey, Vec<String>> = FxHashMap::default();
        for ((ns, name), s) in &state.endpoint_slices {
            if let Some(svc) = service_label(s) {
                // Key order: names arrive sorted per Service.
                slices
                    .entry((ns.clone(), svc.clone()))
                    .or_default()
                    .push(name.clone());
            }
        }

        let owned = policy_owned_ips(&node);
        let local: Vec<LocalPod> = pods.iter().cloned().collect();
        let update = self.policy.update(state, &opts.node_name, &owned, &local);
        let mut pw = Warnings::default();
        pw.extend_policy(&update.warnings);

        let cache = Cache {
            opts: opts.clone(),
            env: env.clone(),
            services,
            noisy,
            slices,
            table,
            contested,
            pods,
            pod_warnings: pod_warnings.0,
            policy: update.table,
            policy_warnings: pw.0,
            owned,
        };
        let stats = CompileStats {
            full: true,
            services_compiled: state.services.len(),
            services_reassembled: true,
            frontends_changed: true,
            pods_rebuilt: true,
            policy_updated: true,
            policy: update.stats,
        };
        let out = cache.output(
            node,
            routes,
            node_warnings,
            env,
            generation,
            update.changes,
            stats,
        );
        Ok((out, cache))
    }

    fn partial(
        &mut self,
        mut c: Cache,
        state: &ClusterState,
        changes: &ChangeSet,
        env: &NodeEnvironment,
        opts: &CompileOptions,
        generation: u64,
    ) -> Result<(IncrementalOutput, Cache), CompileError> {
        let mut stats = CompileStats::default();
        // Node settings and routes: a few entries per node, always rebuilt.
        let mut node_warnings = Warnings::default();
        let node = node_config(state, env, opts, &mut node_warnings)?;
        let routes = route_table(state, opts, &mut node_warnings);

        let kinds = changes.kinds();
        // Changed pods: (before, after).
        let changed_pods: Vec<(Option<&Pod>, Option<&Pod>)> = changes
            .previous
            .iter()
            .filter(|((kind, _), _)| *kind == Kind::Pod)
            .map(|((_, key), previous)| {
                let before = match previous.as_deref() {
                    Some(Object::Pod(p)) => Some(p),
                    _ => None,
                };
                (before, state.pods.get(key))
            })
            .collect();
        let here = |p: Option<&Pod>| {
            p.and_then(|p| p.spec.as_ref())
                .and_then(|s| s.node_name.as_deref())
                == Some(opts.node_name.as_str())
        };
        // The pod table holds pods scheduled here only.
        let mut pods_changed = false;
        if c.env != *env || changed_pods.iter().any(|(a, b)| here(*a) || here(*b)) {
            let mut w = Warnings::default();
            let pods = pod_table(state, env, opts, &mut w);
            stats.pods_rebuilt = true;
            pods_changed = pods != c.pods;
            c.pods = pods;
            c.pod_warnings = w.0;
            if c.env != *env {
                c.env = env.clone();
            }
        }

        let dirty = c.dirty_services(state, changes);
        stats.services_compiled = dirty.len();
        let mut replacements = Vec::new();
        let mut delta = FrontendDelta::default();
        // New claims are added after every old one is removed, in
        // namespace/name order (as an assembly would).
        let mut added: Vec<(u32, &ObjectKey)> = Vec::new();
        let mut structural = false;
        for key in &dirty {
            let new = state
                .services
                .get(key)
                .map(|svc| c.compile_one(state, key, svc, opts));
            match (c.services.get_mut(key), new) {
                (Some(old), Some(new)) => {
                    let same_ports = old.compiled.ports().count() == new.ports().count();
                    if structural || !same_ports {
                        structural = true;
                    } else if old.compiled.same_layout(&new) {
                        // Same claims: only the contents change.
                    } else if c.contested.untouched_by(&old.compiled) {
                        // Other claims, no conflict so far: a delta.
                        for (j, p) in old.compiled.ports().enumerate() {
                            let idx = old.placement.base.saturating_add(j as u32);
                            delta
                                .removed
                                .extend(p.claims(idx).map(|(k, f)| (k, f.service_port)));
                            if let Some(np) = p.node_port_claim() {
                                delta.node_ports_removed.push((np, idx));
                            }
                        }
                        added.push((old.placement.base, key));
                    } else {
                        structural = true;
                    }
                    if !structural {
                        for (j, p) in new.ports().enumerate() {
                            let idx = old.placement.base.saturating_add(j as u32);
                            replacements.push((idx, p.port.clone()));
                        }
                    }
                    old.compiled = new;
                }
                (None, Some(new)) => {
                    structural |= new.ports().next().is_some();
                    c.services.insert(
                        key.clone(),
                        CachedService {
                            compiled: new,
                            placement: Placement::default(),
                        },
                    );
                }
                (Some(_), None) => {
                    if let Some(old) = c.services.remove(key) {
                        structural |= old.compiled.ports().next().is_some();
                    }
                }
                (None, None) => {}
            }
            // A Service that kept its ports keeps its placement; its
            // conflicts were none or unchanged.
            match c.services.get(key) {
                Some(s) if !s.compiled.is_quiet(&s.placement) => {
                    c.noisy.insert(key.clone());
                }
                _ => {
                    c.noisy.remove(key);
                }
            }
        }
        if !structural {
            for (base, key) in &added {
                for (j, p) in c
                    .services
                    .get(*key)
                    .into_iter()
                    .flat_map(|s| s.compiled.ports())
                    .enumerate()
                {
                    let idx = base.saturating_add(j as u32);
                    delta.added.extend(p.claims(idx));
                    if let Some(np) = p.node_port_claim() {
                        delta.node_ports_added.push((np, idx));
                    }
                }
            }
        }
        let fast = if structural {
            None
        } else {
            c.table.with_frontend_delta(replacements, &delta)
        };
        match fast {
            Some(table) => {
                c.table = table;
                stats.frontends_changed = !delta.is_empty();
            }
            None => {
                let (table, placements, contested) =
                    assemble(c.services.values().map(|s| &s.compiled));
                for (s, p) in c.services.values_mut().zip(placements) {
                    s.placement = p;
                }
                c.noisy = noisy_services(&c.services);
                c.table = table;
                c.contested = contested;
                stats.services_reassembled = true;
            }
        }

        let owned = policy_owned_ips(&node);
        let mut policy_changes = PolicyChanges::default();
        if pods_changed
            || owned != c.owned
            || kinds.contains(&Kind::Namespace)
            || kinds.contains(&Kind::NetworkPolicy)
            || changed_pods.iter().any(|(a, b)| !same_for_policy(*a, *b))
        {
            let local: Vec<LocalPod> = c.pods.iter().cloned().collect();
            // Every pod, namespace and policy that changed since the policy
            // compiler's previous update: it ran at the previous compile, or
            // what changed in between was nothing it reads (the condition
            // above), and a full compile runs it over everything.
            let mut input = PolicyInputChanges::default();
            for (kind, key) in changes.previous.keys() {
                match kind {
                    Kind::Pod => input.pods.push(key.clone()),
                    Kind::Namespace => input.namespaces.push(key.1.clone()),
                    Kind::NetworkPolicy => input.policies.push(key.clone()),
                    Kind::Service | Kind::EndpointSlice | Kind::Node => {}
                }
            }
            let update =
                self.policy
                    .update_changed(state, &opts.node_name, &owned, &local, Some(&input));
            let mut pw = Warnings::default();
            pw.extend_policy(&update.warnings);
            c.policy = update.table;
            c.policy_warnings = pw.0;
            c.owned = owned;
            policy_changes = update.changes;
            stats.policy_updated = true;
            stats.policy = update.stats;
        }

        let out = c.output(
            node,
            routes,
            node_warnings,
            env,
            generation,
            policy_changes,
            stats,
        );
        Ok((out, c))
    }
}

/// True when the NetworkPolicy compiler sees no difference between the two
/// versions of a pod. It reads a pod's labels, hostNetwork, nodeName,
/// container ports (named ports), phase and IPs (see
/// `crate::policy::compiler`); this must list every field it reads. A
/// readiness or condition change — most pod churn — is not among them.
fn same_for_policy(a: Option<&Pod>, b: Option<&Pod>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return a.is_none() && b.is_none();
    };
    let ports = |p: &Pod| {
        p.spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.ports.clone()))
            .collect::<Vec<_>>()
    };
    let spec = |p: &Pod| {
        p.spec
            .as_ref()
            .map(|s| (s.host_network, s.node_name.clone()))
    };
    let status = |p: &Pod| {
        p.status
            .as_ref()
            .map(|s| (s.phase.clone(), s.pod_ip.clone(), s.pod_ips.clone()))
    };
    a.metadata.labels == b.metadata.labels
        && a.metadata.namespace == b.metadata.namespace
        && spec(a) == spec(b)
        && status(a) == status(b)
        && ports(a) == ports(b)
}

fn noisy_services(services: &BTreeMap<ObjectKey, CachedService>) -> BTreeSet<ObjectKey> {
    services
        .iter()
        .filter(|(_, s)| !s.compiled.is_quiet(&s.placement))
        .map(|(k, _)| k.clone())
        .collect()
}

impl Cache {
    /// The Services `changes` may have changed (see the module doc), after
    /// bringing the EndpointSlice index up to date.
    fn dirty_services(&mut self, state: &ClusterState, changes: &ChangeSet) -> BTreeSet<ObjectKey> {
        let mut dirty = BTreeSet::new();
        let mut pods = Vec::new();
        for ((kind, key), previous) in &changes.previous {
            match kind {
                Kind::Service => {
                    dirty.insert(key.clone());
                }
                Kind::EndpointSlice => {
                    let (ns, slice) = key;
                    let before = match previous.as_deref() {
                        Some(Object::EndpointSlice(s)) => service_label(s),
                        _ => None,
                    };
                    let after = state.endpoint_slices.get(key).and_then(service_label);
                    if let Some(svc) = before {
                        let k = (ns.clone(), svc.clone());
                        if let Some(names) = self.slices.get_mut(&k) {
                            if let Ok(i) = names.binary_search(slice) {
                                names.remove(i);
                            }
                            if names.is_empty() {
                                self.slices.remove(&k);
                            }
                        }
                        dirty.insert(k);
                    }
                    if let Some(svc) = after {
                        let k = (ns.clone(), svc.clone());
                        let names = self.slices.entry(k.clone()).or_default();
                        if let Err(i) = names.binary_search(slice) {
                            names.insert(i, slice.clone());
                        }
                        dirty.insert(k);
                    }
                }
                Kind::Pod => pods.push((key, previous)),
                Kind::Node | Kind::Namespace | Kind::NetworkPolicy => {}
            }
        }
        // Pods feed only the derived endpoints of selector Services without
        // slices of their own (the index above is current now).
        for (key, previous) in pods {
            let before = match previous.as_deref() {
                Some(Object::Pod(p)) => p.metadata.labels.as_ref(),
                _ => None,
            };
            let after = state.pods.get(key).and_then(|p| p.metadata.labels.as_ref());
            if before.is_none() && after.is_none() {
                continue; // no labels: no selector matches it
            }
            let ns = &key.0;
            let in_ns = state
                .services
                .range((ns.clone(), String::new())..)
                .take_while(|((sns, _), _)| sns == ns);
            for (skey, svc) in in_ns {
                let Some(selector) = service_selector(svc) else {
                    continue;
                };
                if (selector_matches(selector, before) || selector_matches(selector, after))
                    && !self.slices.contains_key(skey)
                {
                    dirty.insert(skey.clone());
                }
            }
        }
        dirty
    }

    /// Compile one Service over its slices (or its derived ones).
    fn compile_one(
        &self,
        state: &ClusterState,
        key: &ObjectKey,
        svc: &Service,
        opts: &CompileOptions,
    ) -> CompiledService {
        let (ns, name) = key;
        let derived;
        let slices: Vec<&EndpointSlice> = match self.slices.get(key) {
            Some(names) => names
                .iter()
                .filter_map(|n| state.endpoint_slices.get(&(ns.clone(), n.clone())))
                .collect(),
            None => {
                derived = derive_for_service(state, ns, name, svc);
                derived.iter().collect()
            }
        };
        compile_service(ns, name, svc, &slices, &opts.node_name, opts)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one generation; two call sites"
    )]
    fn output(
        &self,
        node: kxdp_dataplane::tables::NodeConfig,
        routes: kxdp_dataplane::tables::RouteTable,
        node_warnings: Warnings,
        env: &NodeEnvironment,
        generation: u64,
        policy_changes: PolicyChanges,
        stats: CompileStats,
    ) -> IncrementalOutput {
        let mut warnings = node_warnings.0;
        warnings.extend(self.pod_warnings.iter().cloned());
        for key in &self.noisy {
            if let Some(s) = self.services.get(key) {
                warnings.extend(s.compiled.warnings(&s.placement));
            }
        }
        warnings.extend(self.policy_warnings.iter().cloned());
        IncrementalOutput {
            tables: TableSet {
                generation,
                node,
                services: self.table.clone(),
                pods: self.pods.clone(),
                routes,
                policy: self.policy.clone(),
                neighbours: env.neighbours.clone(),
            },
            warnings,
            policy_changes,
            stats,
        }
    }
}
