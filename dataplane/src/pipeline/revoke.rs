//! Policy revocation: when a new table generation denies what an
//! established connection was admitted under, the connection ends too.
//!
//! Stateful policy lets replies of an admitted connection pass without a
//! policy check; without this sweep, revoking access would not affect
//! connections that are already open. Cilium and Calico drop them; kxdp
//! does the same after every publish whose policy changed.

use crate::conntrack::{Conntrack, CtEntryView};
use crate::tables::policy::{PolicyDirection, PolicyVerdict};
use crate::tables::{IpProto, TableSet};

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
