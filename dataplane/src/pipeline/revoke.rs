//! Sweeps after a publish: connections a new table generation no longer
//! admits end.
//!
//! - Policy revocation ([`flush_revoked`]): when a new generation denies
//!   what an established connection was admitted under, the connection ends
//!   too.
//! - Stale UDP ([`flush_stale_udp`]): a UDP "connection" through a Service
//!   whose backend is no longer an endpoint is removed, so the client's next
//!   datagram is balanced anew instead of going to a dead endpoint until the
//!   entry times out — the stale-DNS problem kube-proxy users know (kube-proxy
//!   deletes those entries with `conntrack -D`). TCP is left alone: the
//!   endpoint's RST ends it.
//!
//! Stateful policy lets replies of an admitted connection pass without a
//! policy check; without this sweep, revoking access would not affect
//! connections that are already open. Cilium and Calico drop them; kxdp
//! does the same after every publish whose policy changed.

use crate::conntrack::{Conntrack, CtEntryView, CtMeta};
use crate::tables::policy::{PolicyDirection, PolicyVerdict};
use crate::tables::{IpProto, TableSet};
use crate::wire::ip_proto;

/// Remove every conntrack entry that `tables` would no longer admit.
/// Returns how many were removed.
pub fn flush_revoked(conntrack: &Conntrack, tables: &TableSet) -> usize {
    conntrack.flush_matching(|e| !still_allowed(tables, e))
}

/// Would `tables` admit the connection of `entry` if it were new? The
/// checks mirror the pipeline's: the client pod's egress toward the
/// post-DNAT server, the server pod's ingress from the post-SNAT client;
/// peers that are this node are always allowed.
pub fn still_allowed(tables: &TableSet, entry: &CtEntryView) -> bool {
    let Some(proto) = IpProto::from_number(entry.original.proto) else {
        return true;
    };
    // Original: client -> frontend; reply: server -> (client | SNAT address).
    let client = entry.original.src;
    let server = entry.reply.src;
    let port = entry.reply.sport;
    let seen_client = entry.reply.dst;
    if let Some(pod) = tables.pods.by_ip(client) {
        if !tables.node.owns(server)
            && tables
                .policy
                .check(PolicyDirection::Egress, pod, server, proto, port)
                == PolicyVerdict::Denied
        {
            return false;
        }
    }
    if let Some(pod) = tables.pods.by_ip(server) {
        if !tables.node.owns(seen_client)
            && tables
                .policy
                .check(PolicyDirection::Ingress, pod, seen_client, proto, port)
                == PolicyVerdict::Denied
        {
            return false;
        }
    }
    true
}

/// Remove UDP entries through a Service whose backend the new `tables` no
/// longer list for that Service frontend. Returns how many were removed.
pub fn flush_stale_udp(conntrack: &Conntrack, tables: &TableSet) -> usize {
    conntrack.flush_matching(|e| is_stale_udp(tables, e))
}

/// Both sweeps in one pass over the table, as the daemon runs them after a
/// publish: stale UDP always, policy revocation when `policy_changed`.
pub fn flush_after_publish(
    conntrack: &Conntrack,
    tables: &TableSet,
    policy_changed: bool,
) -> usize {
    conntrack.flush_matching(|e| {
        is_stale_udp(tables, e) || (policy_changed && !still_allowed(tables, e))
    })
}

fn is_stale_udp(tables: &TableSet, e: &CtEntryView) -> bool {
    e.original.proto == ip_proto::UDP
        && e.meta.has(CtMeta::DNAT)
        && !backend_still_serves(tables, e)
}

/// Is the entry's backend (the reply tuple's source) still a usable backend
/// of the frontend the client addressed?
fn backend_still_serves(tables: &TableSet, e: &CtEntryView) -> bool {
    let Some(proto) = IpProto::from_number(e.original.proto) else {
        return true;
    };
    let dst_is_node = tables.node.is_node_ip(e.original.dst);
    let Some(frontend) =
        tables
            .services
            .lookup(e.original.dst, e.original.dport, proto, dst_is_node)
    else {
        return false;
    };
    let Some(port) = tables.services.port(frontend.service_port) else {
        return false;
    };
    port.backends_for(frontend.kind)
        .contains(e.reply.src, e.reply.sport)
}
