//! Policy-decision probes shared by `benches/policy.rs` and
//! `src/bin/policy_profile.rs`: a fixed, seedless mix of allowed and denied
//! ingress decisions for the pods a table isolates.

use std::net::Ipv4Addr;

use kxdp_control::policy::PolicyTable;
use kxdp_control::testing::SyntheticCluster;
use kxdp_dataplane::tables::{IpProto, LocalPod};

/// SplitMix64: a fixed, seedless sequence so every run probes the same.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One ingress decision to ask: may `peer` reach `pod` on `proto`/`port`?
pub struct Probe {
    pub pod: LocalPod,
    pub peer: Ipv4Addr,
    pub proto: IpProto,
    pub port: u16,
}

/// Probes for the pods `table` isolates for ingress. Half are "near":
/// a peer pod of the same namespace on TCP inside the port range the
/// namespace's policies open (8000 + ns % 50, +5), which the synthetic
/// policies allow for about a third of the peers (by `tier` or `app`).
/// The other half are "far": 7/8 pods anywhere in the cluster, 1/8
/// external addresses, ports 7995..8059 straddling every policy's range,
/// 1/8 UDP (no rule allows UDP) — nearly all denied.
///
/// Returns no probes when the table isolates no pod.
pub fn probes(
    shape: &SyntheticCluster,
    table: &PolicyTable,
    locals: &[LocalPod],
    count: usize,
) -> Vec<Probe> {
    let isolated: Vec<&LocalPod> = locals
        .iter()
        .zip(table.slots())
        .filter(|(_, s)| s.ingress.is_some())
        .map(|(l, _)| l)
        .collect();
    if isolated.is_empty() {
        return Vec::new();
    }
    (0..count as u64)
        .map(|k| {
            let r = mix(k);
            let pod = isolated[(r as usize) % isolated.len()].clone();
            if k % 2 == 0 {
                // Near: pods of namespace n are n, n + namespaces, ...
                let ns: usize = pod
                    .namespace
                    .strip_prefix("ns")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let per_ns = (shape.pods / shape.namespaces).max(1);
                let peer = ns + ((r >> 24) as usize % per_ns) * shape.namespaces;
                return Probe {
                    pod,
                    peer: shape.pod_ip(peer),
                    proto: IpProto::Tcp,
                    port: 8000 + (ns % 50) as u16 + ((r >> 48) % 6) as u16,
                };
            }
            let peer = if (r >> 16) & 7 == 0 {
                Ipv4Addr::new(203, 0, 113, (r >> 24) as u8)
            } else {
                shape.pod_ip(((r >> 24) as usize) % shape.pods)
            };
            let proto = if (r >> 40) & 7 == 0 {
                IpProto::Udp
            } else {
                IpProto::Tcp
            };
            Probe {
                pod,
                peer,
                proto,
                port: 7995 + ((r >> 48) % 65) as u16,
            }
        })
        .collect()
}
