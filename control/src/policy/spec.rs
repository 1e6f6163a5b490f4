//! One NetworkPolicy, validated and normalized: defaults applied, selectors
//! parsed, ipBlocks turned into address intervals, ports checked. Anything
//! invalid is reported and replaced by something that grants nothing (see
//! the module docs of [`super`] for why that is the conservative choice).

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kxdp_dataplane::tables::IpProto;

use super::selector::Selector;
use super::PolicyWarning;

/// Which namespaces a pod peer is looked for in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NsScope {
    /// The policy's own namespace (podSelector alone).
    Own,
    /// Every namespace whose labels match.
    Matching(Selector),
}

/// One `from`/`to` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NormPeer {
    Pods {
        namespaces: NsScope,
        pods: Selector,
    },
    /// Sorted, disjoint, inclusive address intervals (cidr minus except).
    Block(Vec<(u32, u32)>),
    /// Invalid: matches no peer.
    Nothing,
}

/// One `ports` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NormPort {
    Range {
        proto: IpProto,
        first: u16,
        last: u16,
    },
    Named {
        proto: IpProto,
        name: String,
    },
    /// Invalid: matches no port.
    Nothing,
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NormRule {
    /// None: `from`/`to` omitted or empty, every peer.
    pub peers: Option<Vec<NormPeer>>,
    /// None: `ports` omitted or empty, every port and protocol.
    pub ports: Option<Vec<NormPort>>,
    pub summary: String,
}

/// A normalized policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NormPolicy {
    /// `namespace/name`
    pub key: Arc<str>,
    pub namespace: String,
    /// None: the podSelector is invalid; the policy then isolates every pod
    /// of its namespace in its directions and allows nothing.
    pub pod_selector: Option<Selector>,
    /// None: the policy does not apply to ingress. Some(rules): it does.
    pub ingress: Option<Vec<NormRule>>,
    pub egress: Option<Vec<NormRule>>,
}

impl NormPolicy {
    /// The rules for one direction, None when the policy does not affect it.
    pub fn rules(&self, ingress: bool) -> Option<&[NormRule]> {
        if ingress {
            self.ingress.as_deref()
        } else {
            self.egress.as_deref()
        }
    }
}

struct Ctx<'a> {
    key: &'a Arc<str>,
    warnings: &'a mut Vec<PolicyWarning>,
}

impl Ctx<'_> {
    fn warn(&mut self, field: String, reason: String, effect: &'static str) {
        self.warnings.push(PolicyWarning::InvalidPolicy {
            policy: self.key.to_string(),
            field,
            reason,
            effect,
        });
    }
}

const PEER_NOTHING: &str = "this peer matches nothing";
const PORT_NOTHING: &str = "this port entry matches nothing";

/// A rule's peers and ports, either direction.
type RawRule<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// Normalize `np` (stored under `namespace`/`name`).
pub(crate) fn normalize(
    namespace: &str,
    name: &str,
    np: &NetworkPolicy,
    warnings: &mut Vec<PolicyWarning>,
) -> NormPolicy {
    let key: Arc<str> = format!("{namespace}/{name}").into();
    let mut cx = Ctx {
        key: &key,
        warnings,
    };
    let spec = np.spec.clone().unwrap_or_default();

    // policyTypes defaulting, as upstream pkg/apis/networking/v1/defaults.go
    // (SetDefaults_NetworkPolicy): when policyTypes is empty, Ingress always,
    // plus Egress when `len(spec.Egress) != 0` — so `egress: []` without
    // policyTypes does NOT make the policy an egress policy.
    let (mut wants_ingress, mut wants_egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            wants_ingress = true;
            wants_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => wants_ingress = true,
                    "Egress" => wants_egress = true,
                    other => cx.warn(
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?}"),
                        "ignored",
                    ),
                }
            }
        }
    }

    let pod_selector = match Selector::parse(&spec.pod_selector.clone().unwrap_or_default()) {
        Ok(s) => Some(s),
        Err(e) => {
            cx.warn(
                "spec.podSelector".into(),
                e.to_string(),
                "the policy isolates every pod of its namespace and allows nothing",
            );
            None
        }
    };

    let rules = |ingress: bool, cx: &mut Ctx<'_>| -> Vec<NormRule> {
        if pod_selector.is_none() {
            return Vec::new();
        }
        let (section, peer_field) = if ingress {
            ("ingress", "from")
        } else {
            ("egress", "to")
        };
        let raw: Vec<RawRule<'_>> = if ingress {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect()
        };
        raw.into_iter()
            .enumerate()
            .map(|(ri, (peers, ports))| {
                let at = format!("spec.{section}[{ri}]");
                // types.go: "If this field is empty or missing, this rule
                // matches all sources/destinations" (and likewise for ports).
                let peers = peers.filter(|p| !p.is_empty()).map(|p| {
                    p.iter()
                        .enumerate()
                        .map(|(pi, peer)| {
                            normalize_peer(peer, &format!("{at}.{peer_field}[{pi}]"), cx)
                        })
                        .collect::<Vec<_>>()
                });
                let ports = ports.filter(|p| !p.is_empty()).map(|p| {
                    p.iter()
                        .enumerate()
                        .map(|(qi, port)| normalize_port(port, &format!("{at}.ports[{qi}]"), cx))
                        .collect::<Vec<_>>()
                });
                let summary = summarize(peer_field, &peers, &ports);
                NormRule {
                    peers,
                    ports,
                    summary,
                }
            })
            .collect()
    };
    let ingress = wants_ingress.then(|| rules(true, &mut cx));
    let egress = wants_egress.then(|| rules(false, &mut cx));
    NormPolicy {
        key: key.clone(),
        namespace: namespace.to_string(),
        pod_selector,
        ingress,
        egress,
    }
}

fn normalize_peer(peer: &NetworkPolicyPeer, at: &str, cx: &mut Ctx<'_>) -> NormPeer {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            cx.warn(
                at.to_string(),
                "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
                PEER_NOTHING,
            );
            return NormPeer::Nothing;
        }
        return match block_intervals(block) {
            Ok(iv) => NormPeer::Block(iv),
            Err(reason) => {
                cx.warn(format!("{at}.ipBlock"), reason, PEER_NOTHING);
                NormPeer::Nothing
            }
        };
    }
    let parse = |sel, field: &str, cx: &mut Ctx<'_>| match Selector::parse(sel) {
        Ok(s) => Some(s),
        Err(e) => {
            cx.warn(format!("{at}.{field}"), e.to_string(), PEER_NOTHING);
            None
        }
    };
    match (&peer.pod_selector, &peer.namespace_selector) {
        (None, None) => {
            cx.warn(
                at.to_string(),
                "a peer needs podSelector, namespaceSelector or ipBlock".into(),
                PEER_NOTHING,
            );
            NormPeer::Nothing
        }
        (Some(p), None) => match parse(p, "podSelector", cx) {
            Some(pods) => NormPeer::Pods {
                namespaces: NsScope::Own,
                pods,
            },
            None => NormPeer::Nothing,
        },
        (p, Some(n)) => {
            let pods = match p {
                Some(p) => parse(p, "podSelector", cx),
                None => Some(Selector::default()),
            };
            match (parse(n, "namespaceSelector", cx), pods) {
                (Some(ns), Some(pods)) => NormPeer::Pods {
                    namespaces: NsScope::Matching(ns),
                    pods,
                },
                _ => NormPeer::Nothing,
            }
        }
    }
}

/// `cidr` minus every `except`, as sorted disjoint inclusive intervals. An
/// IPv6 block matches no IPv4 address (empty list), which is exact, not an
/// error. A malformed CIDR anywhere is an error: dropping a bad `except`
/// would widen the block.
pub(crate) fn block_intervals(block: &IPBlock) -> Result<Vec<(u32, u32)>, String> {
    let Some(cidr) = parse_cidr(&block.cidr)? else {
        return Ok(Vec::new());
    };
    let mut out = vec![cidr];
    for ex in block.except.iter().flatten() {
        let Some((lo, hi)) = parse_cidr(ex)? else {
            continue;
        };
        out = out
            .into_iter()
            .flat_map(|(a, b)| {
                let mut parts = Vec::with_capacity(2);
                if hi < a || lo > b {
                    parts.push((a, b));
                } else {
                    if lo > a {
                        parts.push((a, lo - 1));
                    }
                    if hi < b {
                        parts.push((hi + 1, b));
                    }
                }
                parts
            })
            .collect();
    }
    Ok(out)
}

/// `Ok(None)` for a valid IPv6 prefix.
fn parse_cidr(s: &str) -> Result<Option<(u32, u32)>, String> {
    if let Ok(net) = s.parse::<ipnet::Ipv4Net>() {
        let net = net.trunc();
        return Ok(Some((u32::from(net.network()), u32::from(net.broadcast()))));
    }
    if s.parse::<ipnet::Ipv6Net>().is_ok() {
        return Ok(None);
    }
    Err(format!("{s:?} is not a CIDR"))
}

fn parse_proto(p: Option<&str>) -> Result<IpProto, String> {
    match p {
        None | Some("TCP") => Ok(IpProto::Tcp),
        Some("UDP") => Ok(IpProto::Udp),
        Some("SCTP") => Ok(IpProto::Sctp),
        Some(other) => Err(format!("unknown protocol {other:?}")),
    }
}

/// IANA service name rules as the API server applies them to named ports
/// (apimachinery `IsValidPortName`).
pub(crate) fn is_valid_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn normalize_port(port: &NetworkPolicyPort, at: &str, cx: &mut Ctx<'_>) -> NormPort {
    match try_port(port) {
        Ok(p) => p,
        Err(reason) => {
            cx.warn(at.to_string(), reason, PORT_NOTHING);
            NormPort::Nothing
        }
    }
}

fn try_port(port: &NetworkPolicyPort) -> Result<NormPort, String> {
    let proto = parse_proto(port.protocol.as_deref())?;
    let valid = |n: i32| u16::try_from(n).ok().filter(|&n| n != 0);
    match (&port.port, port.end_port) {
        (None, None) => Ok(NormPort::Range {
            proto,
            first: 0,
            last: u16::MAX,
        }),
        (None, Some(_)) => Err("endPort needs a numeric port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let first = valid(*n).ok_or_else(|| format!("port {n} is not in 1-65535"))?;
            let last = match end {
                None => first,
                Some(e) => valid(e)
                    .filter(|&e| e >= first)
                    .ok_or_else(|| format!("endPort {e} is not in {first}-65535"))?,
            };
            Ok(NormPort::Range { proto, first, last })
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            Err("endPort cannot be used with a named port".into())
        }
        (Some(IntOrString::String(name)), None) => {
            if is_valid_port_name(name) {
                Ok(NormPort::Named {
                    proto,
                    name: name.clone(),
                })
            } else {
                Err(format!("{name:?} is not a valid port name"))
            }
        }
    }
}

fn summarize(
    peer_field: &str,
    peers: &Option<Vec<NormPeer>>,
    ports: &Option<Vec<NormPort>>,
) -> String {
    let peers = match peers {
        None => "<any>".to_string(),
        Some(p) => p
            .iter()
            .map(|p| match p {
                NormPeer::Pods {
                    namespaces: NsScope::Own,
                    pods,
                } => format!("pods {}", pods.describe()),
                NormPeer::Pods {
                    namespaces: NsScope::Matching(ns),
                    pods,
                } => format!("pods {} in namespaces {}", pods.describe(), ns.describe()),
                NormPeer::Block(iv) => format!(
                    "ipBlock {}",
                    iv.iter()
                        .map(|&(a, b)| if a == b {
                            Ipv4Addr::from(a).to_string()
                        } else {
                            format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                NormPeer::Nothing => "<invalid>".to_string(),
            })
            .collect::<Vec<_>>()
            .join("; "),
    };
    let ports = match ports {
        None => "<all>".to_string(),
        Some(p) => p
            .iter()
            .map(|p| match p {
                NormPort::Range {
                    proto,
                    first: 0,
                    last: u16::MAX,
                } => format!("{}/*", proto.name()),
                NormPort::Range { proto, first, last } if first == last => {
                    format!("{}/{first}", proto.name())
                }
                NormPort::Range { proto, first, last } => {
                    format!("{}/{first}-{last}", proto.name())
                }
                NormPort::Named { proto, name } => format!("{}/{name}", proto.name()),
                NormPort::Nothing => "<invalid>".to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!("{peer_field} [{peers}] ports [{ports}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> Result<Vec<(u32, u32)>, String> {
        block_intervals(&IPBlock {
            cidr: cidr.into(),
            except: (!except.is_empty()).then(|| except.iter().map(|e| e.to_string()).collect()),
        })
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn blocks_minus_nested_and_overlapping_excepts() {
        assert_eq!(block("0.0.0.0/0", &[]), Ok(vec![(0, u32::MAX)]));
        assert_eq!(
            block("10.0.0.7/32", &[]),
            Ok(vec![(ip("10.0.0.7"), ip("10.0.0.7"))])
        );
        // Host bits are cleared.
        assert_eq!(
            block("10.0.0.77/24", &[]),
            Ok(vec![(ip("10.0.0.0"), ip("10.0.0.255"))])
        );
        assert_eq!(
            block(
                "10.0.0.0/24",
                &[
                    "10.0.0.0/26",
                    "10.0.0.32/27",
                    "10.0.0.200/30",
                    "10.0.0.255/32"
                ]
            ),
            Ok(vec![
                (ip("10.0.0.64"), ip("10.0.0.199")),
                (ip("10.0.0.204"), ip("10.0.0.254"))
            ])
        );
        assert_eq!(block("0.0.0.0/0", &["0.0.0.0/0"]), Ok(vec![]));
        assert_eq!(block("fd00::/8", &[]), Ok(vec![]));
        assert!(block("10.0.0.0/33", &[]).is_err());
        assert!(block("10.0.0.0/8", &["bogus"]).is_err());
    }

    #[test]
    fn port_names() {
        assert!(is_valid_port_name("http"));
        assert!(is_valid_port_name("serve-80-tcp"));
        assert!(!is_valid_port_name("80"));
        assert!(!is_valid_port_name("-http"));
        assert!(!is_valid_port_name("a--b"));
        assert!(!is_valid_port_name("HTTP"));
        assert!(!is_valid_port_name("abcdefghijklmnop"));
    }
}
