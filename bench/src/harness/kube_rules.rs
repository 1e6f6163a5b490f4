//! Kernel Service rules as kube-proxy generates them, for the kernel
//! baselines of the veth harness (DESIGN §7).
//!
//! - [`iptables_restore`]: an `iptables-restore` file in the shape of
//!   kube-proxy's iptables mode (`KUBE-SERVICES` -> `KUBE-SVC-*` ->
//!   `KUBE-SEP-*`, endpoints picked with `-m statistic --mode random
//!   --probability 1/(n-i)`, `KUBE-MARK-MASQ` for traffic from outside the
//!   cluster CIDR and for hairpin, `KUBE-POSTROUTING` masquerade, the
//!   `KUBE-FORWARD` conntrack checks in the filter table).
//! - [`nftables`]: an `nft -f` file in the shape of kube-proxy's nftables
//!   mode (one `service-ips` verdict map keyed by `daddr . l4proto .
//!   dport`, one chain per Service choosing an endpoint with `numgen
//!   random mod n`, one chain per endpoint doing the DNAT).
//!
//! Both are loaded in one transaction (one `iptables-restore`, one
//! `nft -f`), so 10k Services take seconds, not minutes. The files are
//! only ever applied inside a namespace the harness created.
//!
//! Chain names follow kube-proxy's idea (a stable hash of the Service port
//! name, 16 base32 characters) with FNV-1a instead of SHA-256: the names
//! only need to be unique and deterministic here.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// One Service port with its endpoints (UDP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port-name`, as kube-proxy names a Service port.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Endpoint addresses and target ports.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// kube-proxy's masquerade mark bit.
const MASQ_MARK: &str = "0x4000";

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// 16 base32 characters of FNV-1a(`text`) (80 bits from two rounds).
pub fn chain_hash(text: &str) -> String {
    let fnv = |seed: u64| {
        text.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
    let mut out = String::with_capacity(16);
    for i in 0..16u32 {
        let word = if i < 8 { a } else { b };
        let idx = ((word >> ((i % 8) * 5)) & 31) as usize;
        out.push(char::from(BASE32.get(idx).copied().unwrap_or(b'A')));
    }
    out
}

fn svc_chain(svc: &ServicePort) -> String {
    format!("KUBE-SVC-{}", chain_hash(&format!("{}/udp", svc.name)))
}

fn sep_chain(svc: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&format!("{}/udp/{}:{}", svc.name, ep.0, ep.1))
    )
}

/// The `iptables-restore` input kube-proxy's iptables mode would write for
/// `services` (UDP ClusterIP only) with cluster CIDR `cluster_cidr`
/// (e.g. `10.244.0.0/16`).
pub fn iptables_restore(services: &[ServicePort], cluster_cidr: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for svc in services {
        let svc_name = svc_chain(svc);
        let _ = writeln!(chains, ":{svc_name} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {ip}/32 -p udp -m comment --comment \"{n} cluster IP\" -m udp --dport {port} -j {svc_name}",
            ip = svc.cluster_ip,
            n = svc.name,
            port = svc.port
        );
        let _ = writeln!(
            rules,
            "-A {svc_name} ! -s {cluster_cidr} -d {ip}/32 -p udp -m comment --comment \"{n} cluster IP\" -m udp --dport {port} -j KUBE-MARK-MASQ",
            ip = svc.cluster_ip,
            n = svc.name,
            port = svc.port
        );
        let n = svc.endpoints.len();
        for (i, &ep) in svc.endpoints.iter().enumerate() {
            let sep = sep_chain(svc, ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let remaining = n - i;
            if remaining > 1 {
                // Each endpoint in turn with probability 1/remaining: a
                // uniform pick over all of them.
                let _ = writeln!(
                    rules,
                    "-A {svc_name} -m comment --comment \"{sn} -> {ip}:{p}\" -m statistic --mode random --probability {prob:.10} -j {sep}",
                    sn = svc.name,
                    ip = ep.0,
                    p = ep.1,
                    prob = 1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc_name} -m comment --comment \"{sn} -> {ip}:{p}\" -j {sep}",
                    sn = svc.name,
                    ip = ep.0,
                    p = ep.1
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {ip}/32 -m comment --comment \"{sn}\" -j KUBE-MARK-MASQ",
                ip = ep.0,
                sn = svc.name
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p udp -m comment --comment \"{sn}\" -m udp -j DNAT --to-destination {ip}:{p}",
                ip = ep.0,
                p = ep.1,
                sn = svc.name
            );
        }
    }
    let mut out = String::new();
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":KUBE-FORWARD - [0:0]\n");
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n");
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    let _ = writeln!(
        out,
        "-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}"
    );
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0"
    );
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str(&rules);
    // kube-proxy appends the NodePort jump last in KUBE-SERVICES.
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str("COMMIT\n");
    out
}

/// The `nft -f` input kube-proxy's nftables mode would write (table
/// `ip kube-proxy`) for `services`. The file first creates and deletes the
/// table so it can be applied again.
pub fn nftables(services: &[ServicePort], cluster_cidr: &str) -> String {
    let mut chains = String::new();
    let mut elements = Vec::with_capacity(services.len());
    for svc in services {
        let hash = chain_hash(&format!("{}/udp", svc.name));
        let svc_chain = format!("service-{hash}");
        elements.push(format!(
            "{} . udp . {} : goto {svc_chain}",
            svc.cluster_ip, svc.port
        ));
        // Endpoint chains first: nft resolves a jump target when it reads it.
        let mut svc_text = String::new();
        let _ = writeln!(svc_text, "  chain {svc_chain} {{");
        let _ = writeln!(
            svc_text,
            "    ip daddr {} udp dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade",
            svc.cluster_ip, svc.port
        );
        let ep_chains: Vec<String> = svc
            .endpoints
            .iter()
            .map(|ep| {
                format!(
                    "endpoint-{}",
                    chain_hash(&format!("{}/udp/{}:{}", svc.name, ep.0, ep.1))
                )
            })
            .collect();
        if !ep_chains.is_empty() {
            let vmap: Vec<String> = ep_chains
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{i} : goto {c}"))
                .collect();
            let _ = writeln!(
                svc_text,
                "    numgen random mod {} vmap {{ {} }}",
                ep_chains.len(),
                vmap.join(", ")
            );
        }
        let _ = writeln!(svc_text, "  }}");
        for (ep, ep_chain) in svc.endpoints.iter().zip(&ep_chains) {
            let _ = writeln!(
                chains,
                "  chain {ep_chain} {{\n    ip saddr {ip} jump mark-for-masquerade\n    meta l4proto udp dnat to {ip}:{p}\n  }}",
                ip = ep.0,
                p = ep.1
            );
        }
        chains.push_str(&svc_text);
    }
    let mut out = String::new();
    out.push_str("table ip kube-proxy\ndelete table ip kube-proxy\n");
    out.push_str("table ip kube-proxy {\n");
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    out.push_str("  }\n");
    let _ = writeln!(
        out,
        "  chain mark-for-masquerade {{\n    mark set mark or {MASQ_MARK}\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain masquerading {{\n    meta mark & {MASQ_MARK} == 0 return\n    meta mark set meta mark xor {MASQ_MARK}\n    masquerade fully-random\n  }}"
    );
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n",
    );
    out.push_str("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n");
    out.push_str("  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n");
    out.push_str("  chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }\n");
    out.push_str("  chain filter-forward {\n    type filter hook forward priority -110; policy accept;\n    ct state invalid drop\n  }\n");
    out.push_str(&chains);
    out.push_str("}\n");
    // Elements last: their verdicts jump to the chains above.
    if !elements.is_empty() {
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} }}",
            elements.join(",\n  ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(i: u8, eps: usize) -> ServicePort {
        ServicePort {
            name: format!("default/svc-{i}:p"),
            cluster_ip: Ipv4Addr::new(10, 96, 0, i),
            port: 80,
            endpoints: (0..eps)
                .map(|e| (Ipv4Addr::new(10, 244, 2, 2 + e as u8), 8080))
                .collect(),
        }
    }

    #[test]
    fn chain_hashes_are_stable_distinct_and_base32() {
        let a = chain_hash("default/a:p/udp");
        assert_eq!(a, chain_hash("default/a:p/udp"));
        assert_ne!(a, chain_hash("default/b:p/udp"));
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| BASE32.contains(&b)));
        // 10k Service names must not collide.
        let names: std::collections::HashSet<_> = (0..10_000)
            .map(|i| chain_hash(&format!("default/svc-{i}:p/udp")))
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn iptables_picks_endpoints_uniformly_like_kube_proxy() {
        let text = iptables_restore(&[svc(1, 3)], "10.244.0.0/16");
        let svc_chain = svc_chain(&svc(1, 3));
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc_chain} ")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[0].contains("--probability 0.3333333333"));
        assert!(jumps[1].contains("--probability 0.5000000000"));
        assert!(
            !jumps[2].contains("statistic"),
            "last endpoint takes the rest"
        );
        assert_eq!(
            text.matches("-j DNAT --to-destination 10.244.2.").count(),
            3
        );
        assert_eq!(text.matches("COMMIT").count(), 2);
        // Every chain a rule jumps to is declared.
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            let chain = l.split_whitespace().nth(1).unwrap_or("");
            let builtin = ["PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD"];
            assert!(
                builtin.contains(&chain) || text.contains(&format!(":{chain} - [0:0]")),
                "undeclared chain in {l}"
            );
        }
    }

    #[test]
    fn nftables_map_has_one_element_per_service_and_balanced_braces() {
        let services: Vec<_> = (1..=5).map(|i| svc(i, 2)).collect();
        let text = nftables(&services, "10.244.0.0/16");
        assert_eq!(text.matches(" . udp . 80 : goto service-").count(), 5);
        assert_eq!(text.matches("numgen random mod 2").count(), 5);
        assert_eq!(text.matches("dnat to 10.244.2.").count(), 10);
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
