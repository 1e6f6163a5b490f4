//! Stable drop and reject reasons.
//!
//! Contract: every value has a numeric code that never changes and is never
//! reused; a retired reason keeps its code (commented `retired`). The code is
//! what counters, traces and tools exchange; the name is what people read.
//! `kxdp trace` prints [`DropReason::name`], `/metrics` labels counters with it.

use serde::Serialize;

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal; )*) => {
        /// Why the pipeline dropped (or rejected) a packet.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum DropReason {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl DropReason {
            /// Every reason, in code order.
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];

            /// The stable kebab-case name (metrics label, trace `reason`).
            pub const fn name(self) -> &'static str {
                match self { $( DropReason::$variant => $name, )* }
            }

            /// The stable numeric code.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The reason with this code, if any.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $( $code => Some(DropReason::$variant), )* _ => None }
            }
        }
    };
}

drop_reasons! {
    /// Frame shorter than its headers claim, or a header field out of range.
    Malformed = 1, "malformed";
    /// IPv4 header checksum does not verify.
    BadIpChecksum = 2, "bad-ip-checksum";
    /// An EtherType the dataplane does not handle (VLAN tags, MPLS, ...).
    UnsupportedEthertype = 3, "unsupported-ethertype";
    /// IPv6 is recognised but not yet routed by kxdp.
    Ipv6NotSupported = 4, "ipv6-not-supported";
    /// Non-first IPv4 fragment of a flow that needs L4 translation: without
    /// ports it cannot be matched to a connection.
    FragmentNeedsReassembly = 5, "fragment-needs-reassembly";
    /// IP options present on traffic that must be translated.
    UnsupportedIpOptions = 6, "unsupported-ip-options";
    /// A pod sent a packet with an IP or MAC that is not its own.
    SourceSpoofed = 10, "source-spoofed";
    /// Traffic arrived on a pod interface the tables do not know.
    UnknownPodInterface = 11, "unknown-pod-interface";
    /// VXLAN packet with a VNI other than the configured one.
    VxlanWrongVni = 20, "vxlan-wrong-vni";
    /// VXLAN header without the I flag (RFC 7348 section 5).
    VxlanInvalidFlags = 21, "vxlan-invalid-flags";
    /// VXLAN from an address that is not a known node.
    VxlanUnknownSource = 22, "vxlan-unknown-source";
    /// Decapsulated packet is not for a pod on this node.
    VxlanNotForLocalPod = 23, "vxlan-not-for-local-pod";
    /// The Service has no endpoints at all: the client gets an ICMP
    /// port unreachable (or a TCP RST).
    ServiceNoEndpoints = 30, "service-no-endpoints";
    /// internalTrafficPolicy/externalTrafficPolicy Local, and this node has
    /// no local endpoint: dropped, like kube-proxy.
    ServiceNoLocalEndpoints = 31, "service-no-local-endpoints";
    /// The client is outside the Service's loadBalancerSourceRanges.
    LoadBalancerSourceRange = 32, "load-balancer-source-range";
    /// A Service IP addressed on a port (or protocol) no Service uses:
    /// rejected like kube-proxy's nftables mode does.
    NoServicePort = 33, "no-service-port";
    /// Egress NetworkPolicy of the source pod denies the connection.
    PolicyDeniedEgress = 40, "policy-denied-egress";
    /// Ingress NetworkPolicy of the destination pod denies the connection.
    PolicyDeniedIngress = 41, "policy-denied-ingress";
    /// Conntrack table full: new connection refused.
    ConntrackFull = 50, "conntrack-full";
    /// No free masquerade source port for this destination.
    NatPortsExhausted = 51, "nat-ports-exhausted";
    /// A non-SYN TCP packet that matches no connection, to a translated
    /// frontend (cannot be load-balanced consistently).
    ConntrackInvalid = 52, "conntrack-invalid";
    /// Another worker was committing the same flow at this instant; the
    /// next packet of the flow finds the winner.
    ConntrackBusy = 53, "conntrack-busy";
    /// TTL reached zero; an ICMP time exceeded goes back to the sender.
    TtlExceeded = 60, "ttl-exceeded";
    /// Packet too big for the egress MTU with DF set; an ICMP
    /// fragmentation-needed goes back to the sender.
    FragmentationNeeded = 61, "fragmentation-needed";
    /// Packet too big for the egress MTU without DF: kxdp does not fragment.
    TooBigNoFragmentation = 62, "too-big-no-fragmentation";
    /// No route: destination is neither local, a remote pod CIDR, nor
    /// routable via the uplink.
    NoRoute = 70, "no-route";
    /// The pod this packet is routed to has no interface on this node yet.
    PodInterfaceMissing = 71, "pod-interface-missing";
    /// Next-hop MAC on the underlay is not resolved yet.
    NeighbourUnresolved = 72, "neighbour-unresolved";
    /// A frame that would leave on the interface it came from, where that is
    /// not allowed (loops).
    Loop = 73, "loop";
    /// ICMP error whose inner packet matches no connection.
    IcmpErrorNoConnection = 80, "icmp-error-no-connection";
    /// ICMP type kxdp does not forward to pods.
    IcmpUnsupportedType = 81, "icmp-unsupported-type";
    /// Never generate an ICMP error about an ICMP error (RFC 1122 3.2.2).
    IcmpErrorAboutError = 82, "icmp-error-about-error";
    /// The frame does not fit the buffer after encapsulation or a rewrite.
    NoBufferRoom = 90, "no-buffer-room";
    /// Broadcast/multicast or an ARP request kxdp does not answer.
    NotForUs = 91, "not-for-us";
}

impl Serialize for DropReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-worker drop counters, one slot per code. Plain integers: each worker
/// owns its counters and publishes snapshots, so no atomics per packet.
#[derive(Clone, Debug)]
pub struct DropCounters {
    counts: [u64; DropCounters::SLOTS],
}

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters {
            counts: [0; DropCounters::SLOTS],
        }
    }
}

impl DropCounters {
    /// Codes are below this bound (checked by a test).
    pub const SLOTS: usize = 128;

    /// Count one drop.
    #[inline]
    pub fn add(&mut self, reason: DropReason) {
        // Codes are < SLOTS by the test below; `get_mut` keeps this panic-free.
        if let Some(slot) = self.counts.get_mut(reason.code() as usize) {
            *slot += 1;
        }
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts
            .get(reason.code() as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Non-zero counters, in code order.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }

    /// Add another worker's counters to these.
    pub fn merge(&mut self, other: &DropCounters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let mut codes = HashSet::new();
        let mut names = HashSet::new();
        for r in DropReason::ALL {
            assert!(codes.insert(r.code()), "duplicate code {}", r.code());
            assert!(names.insert(r.name()), "duplicate name {}", r.name());
            assert!((r.code() as usize) < DropCounters::SLOTS);
            assert_eq!(DropReason::from_code(r.code()), Some(*r));
        }
    }

    #[test]
    fn stable_codes_do_not_move() {
        // These codes are published (metrics, traces); changing one breaks users.
        assert_eq!(DropReason::Malformed.code(), 1);
        assert_eq!(DropReason::SourceSpoofed.code(), 10);
        assert_eq!(DropReason::ServiceNoEndpoints.code(), 30);
        assert_eq!(DropReason::PolicyDeniedEgress.code(), 40);
        assert_eq!(DropReason::PolicyDeniedIngress.code(), 41);
        assert_eq!(
            DropReason::PolicyDeniedIngress.name(),
            "policy-denied-ingress"
        );
    }

    #[test]
    fn counters_count_per_reason() {
        let mut c = DropCounters::default();
        c.add(DropReason::NoRoute);
        c.add(DropReason::NoRoute);
        c.add(DropReason::Malformed);
        assert_eq!(c.get(DropReason::NoRoute), 2);
        let v: Vec<_> = c.nonzero().collect();
        assert_eq!(
            v,
            vec![(DropReason::Malformed, 1), (DropReason::NoRoute, 2)]
        );
    }
}
