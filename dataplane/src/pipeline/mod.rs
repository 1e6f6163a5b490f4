//! The packet pipeline: one frame in, one [`Verdict`] out.
//!
//! Contract: no clock (`now_ns` comes in), no sockets, no locks, no
//! allocation on the worker path ([`NoTrace`]). Every drop carries a
//! [`DropReason`] and is counted in [`WorkerStats`]. The stage order lives
//! in exactly one place, [`Pipeline::process`]:
//!
//! ```text
//!  parse ─► ARP ─► IPv4 validate ─► VXLAN decap (uplink) ─► anti-spoof (pod veth)
//!    ─► TTL ─► conntrack ──hit──► translate (DNAT/SNAT/reverse) ─────────────┐
//!                 │miss                                                       │
//!                 ├─► ICMP error? ─► inner lookup, inner+outer rewrite ───────┤
//!                 └─► Service frontend ─► backend (affinity, Maglev)          │
//!                       ─► policy egress (src pod) ─► policy ingress (dst pod)│
//!                       ─► masquerade choice ─► conntrack commit ─► translate │
//!                                                                             ▼
//!                        route: local pod veth │ remote node (VXLAN encap, MTU)
//!                               │ uplink │ host ─► L2 rewrite, TTL ─► Verdict
//! ```
//!
//! Before these stages, an untraced packet of an established flow whose
//! action the worker has cached (`fast_path`: same table generation, same
//! conntrack entry, same ingress and headers shape) is forwarded with that
//! action directly: a fixed-offset parse (VXLAN decap included), one cache
//! probe, one conntrack slot check, and the precomputed rewrite. Its output
//! is byte-identical to the stages' (the outer IPv4 identification of
//! VXLAN aside, a counter either way); anything the cache cannot vouch for
//! runs the stages.

mod fast_path;
mod frame;
mod l2;
mod nat;
mod parse;
mod reply;
mod revoke;
mod service;
mod trace;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::sync::Arc;

pub use frame::{Egress, Frame, Ingress, Verdict};
pub use parse::{Headers, IcmpKind};
pub use revoke::{flush_after_publish, flush_revoked, flush_stale_udp, still_allowed};
pub use trace::{NoTrace, Stage, StageRecord, TraceLog, Tracer};

use crate::conntrack::AffinityTable;
use crate::conntrack::{CommitError, Conntrack, CtHit, CtMeta, Direction, FlowKey};
use crate::drop_reason::DropCounters;
use crate::tables::policy::{PolicyDirection, PolicyVerdict};
use crate::tables::{LocalPod, MacAddr, TableSet};
use crate::trace_stage;
use crate::wire::{ip_proto, EthernetFrame, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::DropReason;

/// Per-worker counters. Plain integers: one worker owns them.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub rx: u64,
    pub forwarded_pod: u64,
    pub forwarded_vxlan: u64,
    pub forwarded_uplink: u64,
    pub replies: u64,
    pub to_host: u64,
    /// Session-affinity bindings that could not be stored (table full or
    /// contended): those flows were balanced without stickiness.
    pub affinity_insert_failures: u64,
    pub drops: DropCounters,
}

impl WorkerStats {
    fn account(&mut self, v: &Verdict) {
        self.rx += 1;
        match v {
            Verdict::Forward(Egress::Pod { .. }) => self.forwarded_pod += 1,
            Verdict::Forward(Egress::Uplink { encapsulated: true }) => self.forwarded_vxlan += 1,
            Verdict::Forward(Egress::Uplink {
                encapsulated: false,
            }) => self.forwarded_uplink += 1,
            Verdict::Reply(_, reason) => {
                self.replies += 1;
                if let Some(r) = reason {
                    self.drops.add(*r);
                }
            }
            Verdict::ToHost => self.to_host += 1,
            Verdict::Drop(r) => self.drops.add(*r),
        }
    }

    /// Add another worker's counters.
    pub fn merge(&mut self, o: &WorkerStats) {
        self.rx += o.rx;
        self.forwarded_pod += o.forwarded_pod;
        self.forwarded_vxlan += o.forwarded_vxlan;
        self.forwarded_uplink += o.forwarded_uplink;
        self.replies += o.replies;
        self.to_host += o.to_host;
        self.affinity_insert_failures += o.affinity_insert_failures;
        self.drops.merge(&o.drops);
    }
}

/// Where the packet came from, as far as later stages care.
#[derive(Clone, Copy, Debug)]
struct Origin {
    ingress: Ingress,
    /// Outer source of a decapsulated packet (the sending node's VTEP).
    vxlan_src: Option<Ipv4Addr>,
    /// The source pod's IP (pod ingress only, after anti-spoof).
    src_pod_ip: Option<Ipv4Addr>,
    /// Ethernet source of the frame as received: the return next hop for
    /// answers to uplink traffic when the neighbour table has none.
    l2_src: MacAddr,
    /// The frame is an answer kxdp generated (no TTL decrement, may return
    /// on the interface it came from).
    generated: bool,
}

/// Stateful per-worker pipeline. The conntrack and affinity tables are
/// shared between workers; everything else is owned.
pub struct Pipeline {
    conntrack: Arc<Conntrack>,
    affinity: Arc<AffinityTable>,
    pub stats: WorkerStats,
    /// IPv4 ident for generated packets.
    next_ident: u16,
    /// The `now` of the packet being processed.
    now: u64,
    /// Established flows' cached actions (see `fast_path`).
    flow_cache: fast_path::FlowCache,
    /// Set with every `neighbour-unresolved` drop (see
    /// [`Pipeline::take_unresolved_next_hop`]).
    unresolved_next_hop: Option<Ipv4Addr>,
}

/// Result of a stage that may end the packet's journey early.
type StageResult<T> = Result<T, Verdict>;

impl Pipeline {
    /// A pipeline using the shared `conntrack` and `affinity` tables.
    pub fn new(conntrack: Arc<Conntrack>, affinity: Arc<AffinityTable>) -> Self {
        Pipeline {
            conntrack,
            affinity,
            stats: WorkerStats::default(),
            next_ident: 1,
            now: 0,
            flow_cache: fast_path::FlowCache::default(),
            unresolved_next_hop: None,
        }
    }

    /// After a [`DropReason::NeighbourUnresolved`] verdict: the underlay
    /// next hop whose MAC was missing (the destination, or the remote VTEP
    /// for VXLAN; the default gateway stands in for either when resolved).
    /// The frame was nevertheless finished (TTL, encapsulation, Ethernet
    /// source) with an all-zero destination MAC, so the worker may hold it
    /// and send it on the uplink once the neighbour is known by writing the
    /// MAC into its first six bytes, as the kernel's ARP queue does.
    pub fn take_unresolved_next_hop(&mut self) -> Option<Ipv4Addr> {
        self.unresolved_next_hop.take()
    }

    /// Packets that took the established-flow fast path, and lookups that
    /// missed it.
    pub fn fast_path_counts(&self) -> (u64, u64) {
        (self.flow_cache.hits, self.flow_cache.misses)
    }

    /// The shared conntrack table.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.conntrack
    }

    /// Run a batch. `frames[i]` arrived on `ingress[i]`; `verdicts[i]` is
    /// set for each. Slices must have equal length (extra entries ignored).
    pub fn process_batch(
        &mut self,
        tables: &TableSet,
        now_ns: u64,
        frames: &mut [Frame<'_>],
        ingress: &[Ingress],
        verdicts: &mut [Verdict],
    ) {
        for ((frame, ing), verdict) in frames.iter_mut().zip(ingress).zip(verdicts.iter_mut()) {
            *verdict = self.process(tables, now_ns, frame, *ing, &mut NoTrace);
        }
    }

    /// Run one frame through every stage and count the verdict.
    pub fn process<T: Tracer>(
        &mut self,
        t: &TableSet,
        now_ns: u64,
        frame: &mut Frame<'_>,
        ingress: Ingress,
        tr: &mut T,
    ) -> Verdict {
        self.now = now_ns;
        // Established flows whose action is cached skip every stage (the
        // cache's contract is in `fast_path`). Traced packets never do.
        if !tr.enabled() {
            if let Some(v) = self.fast_path(t, now_ns, frame, ingress) {
                self.stats.account(&v);
                return v;
            }
        }
        let verdict = match self.stages(t, now_ns, frame, ingress, tr) {
            Ok(v) | Err(v) => v,
        };
        if let Verdict::Drop(r) = verdict {
            trace_stage!(tr, Stage::Route, "drop: {}", r.name());
        }
        self.stats.account(&verdict);
        verdict
    }

    /// The stage order. Each `?` may end the journey with a verdict.
    /// Kept out of line: the fast path in `process` then does not pay for
    /// this function's frame.
    #[inline(never)]
    fn stages<T: Tracer>(
        &mut self,
        t: &TableSet,
        now: u64,
        frame: &mut Frame<'_>,
        ingress: Ingress,
        tr: &mut T,
    ) -> StageResult<Verdict> {
        // parse: Ethernet, then ARP or IPv4.
        let eth = parse::ethernet(frame.data()).map_err(Verdict::Drop)?;
        let (ethertype, l2_src) = (eth.ethertype(), eth.src());
        match ethertype {
            ETHERTYPE_IPV4 => {}
            ETHERTYPE_ARP => return Ok(l2::arp(t, frame, ingress, tr)),
            ETHERTYPE_IPV6 => return Err(not_ours(ingress, DropReason::Ipv6NotSupported, tr)),
            _ => return Err(not_ours(ingress, DropReason::UnsupportedEthertype, tr)),
        }
        let mut h = parse::parse_ipv4(frame.data(), EthernetFrame::<&[u8]>::HEADER_LEN)
            .map_err(Verdict::Drop)?;
        trace_stage!(
            tr,
            Stage::Parse,
            "ipv4 {}:{} -> {}:{} proto {} ttl {}",
            h.src,
            h.sport,
            h.dst,
            h.dport,
            h.proto,
            h.ttl
        );

        let from_vxlan = ingress == Ingress::Uplink && l2::is_vxlan(t, &h);
        let mut origin = Origin {
            ingress,
            vxlan_src: None,
            src_pod_ip: None,
            l2_src,
            generated: false,
        };

        // VXLAN decap (uplink only).
        if from_vxlan {
            let (inner, outer_src) = l2::decap(t, frame, &h, tr)?;
            h = inner;
            origin.vxlan_src = Some(outer_src);
        }

        // Anti-spoof (pod veths only).
        if let Ingress::Pod { ifindex } = ingress {
            let pod = t
                .pods
                .by_ifindex(ifindex)
                .ok_or(Verdict::Drop(DropReason::UnknownPodInterface))?;
            // Pod veths carry no encapsulation: the Ethernet source parsed
            // above is the pod's.
            let src_mac = l2_src;
            let mac_ok = pod
                .interface
                .as_ref()
                .is_some_and(|i| i.pod_mac == src_mac || i.pod_mac == MacAddr::ZERO);
            if h.src != pod.ip || !mac_ok {
                trace_stage!(
                    tr,
                    Stage::AntiSpoof,
                    "{} on {} sent src {} mac {}: spoofed",
                    pod.key(),
                    ifindex,
                    h.src,
                    src_mac
                );
                return Err(Verdict::Drop(DropReason::SourceSpoofed));
            }
            trace_stage!(
                tr,
                Stage::AntiSpoof,
                "source {} matches pod {}",
                h.src,
                pod.key()
            );
            origin.src_pod_ip = Some(pod.ip);
        }

        // Fragments: only unfragmented packets or first fragments carry
        // ports. kxdp relies on PMTU discovery (it sends frag-needed) and
        // does not reassemble: fragments of pod traffic are dropped with a
        // reason; fragments for the node itself go to the kernel.
        if h.fragment {
            if ingress == Ingress::Uplink
                && origin.vxlan_src.is_none()
                && !self.owned_destination(t, &h)
            {
                return Ok(Verdict::ToHost);
            }
            return Err(Verdict::Drop(DropReason::FragmentNeedsReassembly));
        }

        let key = FlowKey {
            src: h.src,
            dst: h.dst,
            sport: h.sport,
            dport: h.dport,
            proto: h.proto,
        };

        // Conntrack: established flows skip Service and policy evaluation.
        if let Some(IcmpKind::Error { .. }) = h.icmp {
            return reply::icmp_error(self, t, now, frame, &mut h, origin, tr);
        }
        if let Some((hit, handle)) = self.conntrack.lookup_handle(&key, now, h.tcp_flags) {
            trace_stage!(
                tr,
                Stage::Conntrack,
                "hit ({:?} direction, {:?})",
                hit.direction,
                hit.state
            );
            self.check_ttl(t, frame, &h, origin, tr)?;
            let to = hit.rewrite();
            nat::rewrite(frame.data_mut(), &mut h, &key, &to).map_err(Verdict::Drop)?;
            if to != key {
                trace_stage!(
                    tr,
                    Stage::Nat,
                    "{} {}:{} -> {}:{}",
                    direction_word(hit.direction),
                    h.src,
                    h.sport,
                    h.dst,
                    h.dport
                );
            }
            let verdict = l2::route(self, t, frame, &h, origin, tr)?;
            if fast_path::eligible(&h) {
                let id = fast_path::FlowId::new(&key, ingress, l2_src, origin.vxlan_src);
                self.flow_cache
                    .record(t, id, handle, &key, &to, verdict, frame);
            }
            return Ok(verdict);
        }
        trace_stage!(tr, Stage::Conntrack, "miss: new flow");

        // From the uplink, anything that is not a Service frontend, a local
        // pod or a tracked reply belongs to the node.
        let dst_is_node = t.node.is_node_ip(h.dst);
        let frontend =
            proto_of(&h).and_then(|proto| t.services.lookup(h.dst, h.dport, proto, dst_is_node));
        if frontend.is_none() && t.node.owns(h.dst) {
            return Ok(self.local_delivery(t, frame, &h, origin, tr));
        }
        if ingress == Ingress::Uplink
            && origin.vxlan_src.is_none()
            && frontend.is_none()
            && t.pods.by_ip(h.dst).is_none()
        {
            trace_stage!(
                tr,
                Stage::LocalDelivery,
                "not a frontend, pod or tracked flow: to host"
            );
            return Ok(Verdict::ToHost);
        }
        self.check_ttl(t, frame, &h, origin, tr)?;

        // Service: frontend match and backend choice (DNAT target).
        let choice = match service::choose(self, t, now, &h, frontend, tr) {
            Ok(c) => c,
            Err(service::Refusal::Drop(r)) => return Err(Verdict::Drop(r)),
            Err(service::Refusal::Reject(r)) => {
                return Err(reply::icmp_error_reply(
                    self,
                    t,
                    frame,
                    &h,
                    origin,
                    reply::ErrorKind::PortUnreachable,
                    r,
                    tr,
                ));
            }
        };

        // Policy: the source pod's egress, then the destination pod's ingress.
        let (post_dst, post_dport) = choice
            .as_ref()
            .map_or((h.dst, h.dport), |c| (c.backend.ip, c.backend.port));
        if let Some(src_ip) = origin.src_pod_ip {
            if let Some(pod) = t.pods.by_ip(src_ip) {
                self.policy(
                    t,
                    PolicyDirection::Egress,
                    pod,
                    post_dst,
                    &h,
                    post_dport,
                    tr,
                )?;
            }
        }

        // Masquerade choice, then commit.
        let snat = service::snat_address(t, &h, choice.as_ref(), origin, post_dst);
        let ingress_peer = snat.unwrap_or(h.src);
        if let Some(pod) = t.pods.by_ip(post_dst) {
            self.policy(
                t,
                PolicyDirection::Ingress,
                pod,
                ingress_peer,
                &h,
                post_dport,
                tr,
            )?;
        }
        let meta = CtMeta {
            flags: choice.as_ref().map_or(0, |_| CtMeta::DNAT) | snat.map_or(0, |_| CtMeta::SNAT),
            service_port: choice.as_ref().map_or(u32::MAX, |c| c.service_port),
            policy_generation: 0,
        };
        let hit = self.commit(t, now, &key, post_dst, post_dport, snat, meta, &h, tr)?;
        let to = hit.rewrite();
        nat::rewrite(frame.data_mut(), &mut h, &key, &to).map_err(Verdict::Drop)?;
        if to != key {
            trace_stage!(
                tr,
                Stage::Nat,
                "{}:{} -> {}:{} becomes {}:{} -> {}:{}",
                key.src,
                key.sport,
                key.dst,
                key.dport,
                h.src,
                h.sport,
                h.dst,
                h.dport
            );
        }
        l2::route(self, t, frame, &h, origin, tr)
    }

    /// The established-flow fast path: `Some` with the verdict when the
    /// packet's flow has a cached action that still holds (see
    /// `fast_path`); `None` (frame untouched) to run the full pipeline.
    #[inline]
    fn fast_path(
        &mut self,
        t: &TableSet,
        now: u64,
        frame: &mut Frame<'_>,
        ingress: Ingress,
    ) -> Option<Verdict> {
        let c = fast_path::candidate(t, frame.data(), ingress)?;
        let e = self.flow_cache.get(t, &c.id)?;
        if !e.fits(frame, &c) || !self.conntrack.refresh(e.ct(), now, c.h.tcp_flags) {
            return None;
        }
        let ident = if e.encapsulates() {
            self.next_ident = self.next_ident.wrapping_add(1);
            self.next_ident
        } else {
            0
        };
        let verdict = fast_path::forward(frame, &c, e, ident);
        self.flow_cache.hits += 1;
        Some(verdict)
    }

    /// One policy check; `Err` with the drop verdict when denied.
    #[expect(
        clippy::too_many_arguments,
        reason = "packet fields are clearer as arguments than as a one-use struct"
    )]
    fn policy<T: Tracer>(
        &self,
        t: &TableSet,
        dir: PolicyDirection,
        pod: &LocalPod,
        peer: Ipv4Addr,
        h: &Headers,
        port: u16,
        tr: &mut T,
    ) -> StageResult<()> {
        let stage = if dir == PolicyDirection::Egress {
            Stage::PolicyEgress
        } else {
            Stage::PolicyIngress
        };
        if t.node.owns(peer) {
            trace_stage!(
                tr,
                stage,
                "{}: peer {} is this node: node traffic is always allowed",
                pod.key(),
                peer
            );
            return Ok(());
        }
        let proto = proto_of(h);
        let verdict = match proto {
            Some(p) => t.policy.check(dir, pod, peer, p, port),
            None => PolicyVerdict::Denied,
        };
        match verdict {
            PolicyVerdict::NotIsolated => {
                trace_stage!(
                    tr,
                    stage,
                    "{}: not isolated for {:?}: allowed",
                    pod.key(),
                    dir
                );
                Ok(())
            }
            PolicyVerdict::Allowed { rule } => {
                trace_stage!(
                    tr,
                    stage,
                    "{}: allowed by {}",
                    pod.key(),
                    t.policy.describe_rule(rule)
                );
                Ok(())
            }
            PolicyVerdict::Denied => {
                trace_stage!(
                    tr,
                    stage,
                    "{}: isolated, no rule allows {} port {}: denied",
                    pod.key(),
                    peer,
                    port
                );
                Err(Verdict::Drop(if dir == PolicyDirection::Egress {
                    DropReason::PolicyDeniedEgress
                } else {
                    DropReason::PolicyDeniedIngress
                }))
            }
        }
    }

    /// Commit a new flow toward `dst:dport`, source-translated to `snat` if
    /// set (choosing a free port), and return the entry.
    #[expect(
        clippy::too_many_arguments,
        reason = "packet fields are clearer as arguments than as a one-use struct"
    )]
    fn commit<T: Tracer>(
        &mut self,
        t: &TableSet,
        now: u64,
        key: &FlowKey,
        dst: Ipv4Addr,
        dport: u16,
        snat: Option<Ipv4Addr>,
        meta: CtMeta,
        h: &Headers,
        tr: &mut T,
    ) -> StageResult<CtHit> {
        let attempts = match snat {
            Some(_) => service::SNAT_PORT_ATTEMPTS,
            None => 1,
        };
        for attempt in 0..attempts {
            let (rsrc_port, rdst, rdst_port) = match snat {
                None => (dport, key.src, key.sport),
                Some(ip) => {
                    let port = service::snat_port(t.node.masquerade_port_range, key, attempt);
                    // ICMP echo: the identifier fills both port slots.
                    if key.proto == ip_proto::ICMP {
                        (port, ip, port)
                    } else {
                        (dport, ip, port)
                    }
                }
            };
            let rsrc_port = if key.proto == ip_proto::ICMP && snat.is_none() {
                key.sport
            } else {
                rsrc_port
            };
            let reply = FlowKey {
                src: dst,
                dst: rdst,
                sport: rsrc_port,
                dport: rdst_port,
                proto: key.proto,
            };
            match self.conntrack.commit(*key, reply, meta, now, h.tcp_flags) {
                Ok(hit) => {
                    trace_stage!(
                        tr,
                        Stage::ConntrackCommit,
                        "new entry, reply tuple {}:{} -> {}:{}",
                        reply.src,
                        reply.sport,
                        reply.dst,
                        reply.dport
                    );
                    return Ok(hit);
                }
                Err(CommitError::Exists(hit)) => return Ok(hit),
                Err(CommitError::ReplyTupleInUse) => continue,
                Err(CommitError::Full) => return Err(Verdict::Drop(DropReason::ConntrackFull)),
                Err(CommitError::Busy) => return Err(Verdict::Drop(DropReason::ConntrackBusy)),
                Err(CommitError::InvalidTuples) => {
                    return Err(Verdict::Drop(DropReason::ConntrackInvalid))
                }
            }
        }
        Err(Verdict::Drop(DropReason::NatPortsExhausted))
    }

    /// TTL check for packets kxdp forwards: at 1 or below the sender gets an
    /// ICMP time exceeded (RFC 1812 5.3.1) quoting the packet as received.
    fn check_ttl<T: Tracer>(
        &mut self,
        t: &TableSet,
        frame: &mut Frame<'_>,
        h: &Headers,
        origin: Origin,
        tr: &mut T,
    ) -> StageResult<()> {
        if h.ttl > 1 {
            return Ok(());
        }
        trace_stage!(
            tr,
            Stage::Ttl,
            "ttl {} expires here: ICMP time exceeded to {}",
            h.ttl,
            h.src
        );
        Err(reply::icmp_error_reply(
            self,
            t,
            frame,
            h,
            origin,
            reply::ErrorKind::TimeExceeded,
            DropReason::TtlExceeded,
            tr,
        ))
    }

    /// True when the dataplane (not the kernel) handles packets to `h.dst`.
    fn owned_destination(&self, t: &TableSet, h: &Headers) -> bool {
        t.pods.by_ip(h.dst).is_some() || t.services.is_virtual_ip(h.dst)
    }

    /// Packets for the node itself: pods' pings to their gateway are
    /// answered here; everything else goes to the kernel.
    fn local_delivery<T: Tracer>(
        &mut self,
        t: &TableSet,
        frame: &mut Frame<'_>,
        h: &Headers,
        origin: Origin,
        tr: &mut T,
    ) -> Verdict {
        if h.icmp == Some(IcmpKind::EchoRequest) && t.node.gateway_ip == Some(h.dst) {
            trace_stage!(
                tr,
                Stage::LocalDelivery,
                "echo request to the pods' gateway {}: answered",
                h.dst
            );
            return reply::echo_reply(self, t, frame, h, origin, tr);
        }
        trace_stage!(
            tr,
            Stage::LocalDelivery,
            "destination {} is this node: to host",
            h.dst
        );
        Verdict::ToHost
    }

    pub(crate) fn next_ident(&mut self) -> u16 {
        self.next_ident = self.next_ident.wrapping_add(1);
        self.next_ident
    }

    pub(crate) fn affinity(&self) -> &AffinityTable {
        &self.affinity
    }
}

fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::Original => "translate",
        Direction::Reply => "reverse-translate",
    }
}

/// The Service protocol of a packet, if it is one Services use.
fn proto_of(h: &Headers) -> Option<crate::tables::IpProto> {
    match h.proto {
        ip_proto::TCP => Some(crate::tables::IpProto::Tcp),
        ip_proto::UDP => Some(crate::tables::IpProto::Udp),
        ip_proto::SCTP => Some(crate::tables::IpProto::Sctp),
        ip_proto::ICMP => Some(crate::tables::IpProto::Icmp),
        _ => None,
    }
}

/// Traffic the dataplane does not handle: the node's own (uplink) goes to
/// the kernel; a pod's is dropped with `reason` (pods never bypass kxdp).
fn not_ours<T: Tracer>(ingress: Ingress, reason: DropReason, tr: &mut T) -> Verdict {
    match ingress {
        Ingress::Uplink => {
            trace_stage!(tr, Stage::Parse, "not handled by kxdp: to host");
            Verdict::ToHost
        }
        Ingress::Pod { .. } => Verdict::Drop(reason),
    }
}
