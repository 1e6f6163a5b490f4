//! What the host provides at run time, read through iproute2's JSON output
//! (`ip -j`), in the calling process's network namespace.
//!
//! - **Uplink**: ifindex, MAC, MTU and IPv4 addresses of `--uplink`.
//! - **Pod interfaces** (DESIGN §4): every /32 host route without a gateway
//!   whose device is not the uplink nor loopback names a local pod's
//!   host-side veth. The pod's own MAC is read from the veth's peer: the
//!   link's `link_netnsid`/`link_index` name the peer's namespace (found by
//!   id among the named namespaces, `ip netns list`, where CNIs and the
//!   tests put them) and index; failing that, from a kernel neighbour entry
//!   for the pod IP on that veth. A pod whose MAC is unknown is reported with
//!   [`MacAddr::ZERO`] (kxdp then cannot address frames to it) and retried at
//!   the next scan.
//! - **Underlay neighbours**: the kernel's neighbour table on the uplink
//!   (usable states only) and the default gateway. [`HostScanner::resolve`]
//!   asks the kernel to resolve missing next hops (`ip neigh replace IP dev
//!   UPLINK use`, i.e. `NTF_USE`: the kernel sends the ARP request and the
//!   answer lands in the table, since the steering program passes ARP on the
//!   uplink to the kernel).
//!
//! - **On demand** ([`OnDemandResolver`]): next hops the workers found
//!   missing (`neighbour-unresolved`, signalled through
//!   [`NeighbourRequests`]) are mapped to the uplink next hop the kernel
//!   would use (`ip route get`: the gateway, or the address itself when on
//!   link), resolved as above, and the uplink's neighbour table is polled
//!   every [`ON_DEMAND_POLL`] for up to [`ON_DEMAND_WAIT`] so the main loop
//!   rescans as soon as the answer is in, not at the next periodic scan.
//!
//! - **Local addresses**: every IPv4 address configured in the namespace
//!   but loopback ones, i.e. what the kernel delivers locally. Pods reach
//!   these through the steering program's host path.
//!
//! Everything here only reads, except [`HostScanner::resolve`], which only
//! starts neighbour resolution on the uplink.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxdp_dataplane::tables::{MacAddr, NeighbourTable, PodInterface};
use kxdp_dataplane::worker::NeighbourRequests;
use serde_json::Value;

/// Errors of host discovery.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("running `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("`{cmd}` printed invalid JSON: {source}")]
    Json {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("uplink {name:?} not found in this network namespace")]
    NoUplink { name: String },
    #[error("uplink {name:?} has no usable MAC address")]
    UplinkMac { name: String },
    #[error("uplink {name:?} has no IPv4 address")]
    UplinkAddress { name: String },
}

type Result<T> = std::result::Result<T, HostError>;

/// Runs `ip ARGS` and parses its JSON output (empty output = `[]`).
fn ip_json(args: &[&str]) -> Result<Value> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| HostError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|source| HostError::Json { cmd, source })
}

/// One network interface (`ip -j link show`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub link_type: String,
    /// Peer's ifindex (veth), in the namespace `link_netnsid`.
    pub link_index: Option<u32>,
    pub link_netnsid: Option<i64>,
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// Parses `ip -j link show`.
pub fn parse_links(v: &Value) -> Vec<Link> {
    let Some(arr) = v.as_array() else {
        return Vec::new();
    };
    arr.iter()
        .filter_map(|l| {
            Some(Link {
                ifindex: as_u32(l.get("ifindex")?)?,
                name: l.get("ifname")?.as_str()?.to_owned(),
                mac: l
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
                mtu: l.get("mtu").and_then(as_u32).unwrap_or(0),
                link_type: l
                    .get("link_type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                link_index: l.get("link_index").and_then(as_u32),
                link_netnsid: l.get("link_netnsid").and_then(Value::as_i64),
            })
        })
        .collect()
}

/// One IPv4 route of the main table (`ip -j -4 route show table main`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination; None for `default`.
    pub dst: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
}

/// Parses `ip -j -4 route show`. Host routes print without a prefix length.
pub fn parse_routes(v: &Value) -> Vec<Route> {
    let Some(arr) = v.as_array() else {
        return Vec::new();
    };
    arr.iter()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?;
            let dst = if dst == "default" {
                None
            } else {
                let (addr, len) = match dst.split_once('/') {
                    Some((a, l)) => (a, l.parse::<u8>().ok()?),
                    None => (dst, 32),
                };
                Some((addr.parse().ok()?, len))
            };
            Some(Route {
                dst,
                gateway: r
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok()),
                dev: r.get("dev")?.as_str()?.to_owned(),
            })
        })
        .collect()
}

/// One neighbour entry (`ip -j -4 neigh show`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub dev: Option<String>,
    pub mac: MacAddr,
}

/// Neighbour states whose MAC can be used (RFC 4861-style NUD states as
/// Linux names them; INCOMPLETE and FAILED have none that is valid).
const USABLE_NUD: [&str; 6] = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"];

/// Parses `ip -j -4 neigh show`, keeping entries with a usable MAC.
pub fn parse_neighbours(v: &Value) -> Vec<Neighbour> {
    let Some(arr) = v.as_array() else {
        return Vec::new();
    };
    arr.iter()
        .filter_map(|n| {
            let usable = n.get("state").and_then(Value::as_array).is_some_and(|s| {
                s.iter()
                    .any(|x| x.as_str().is_some_and(|x| USABLE_NUD.contains(&x)))
            });
            if !usable {
                return None;
            }
            let mac: MacAddr = n.get("lladdr")?.as_str()?.parse().ok()?;
            if mac == MacAddr::ZERO || mac.is_multicast() {
                return None;
            }
            Some(Neighbour {
                ip: n.get("dst")?.as_str()?.parse().ok()?,
                dev: n.get("dev").and_then(Value::as_str).map(str::to_owned),
                mac,
            })
        })
        .collect()
}

/// Parses `ip -j netns list`: namespace id (as seen from here) -> name.
pub fn parse_netns_ids(v: &Value) -> HashMap<i64, String> {
    let Some(arr) = v.as_array() else {
        return HashMap::new();
    };
    arr.iter()
        .filter_map(|n| Some((n.get("id")?.as_i64()?, n.get("name")?.as_str()?.to_owned())))
        .collect()
}

/// The uplink as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkInfo {
    pub name: String,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub mtu: u16,
    /// IPv4 addresses, primary first.
    pub addrs: Vec<Ipv4Addr>,
}

/// One scan of the host.
#[derive(Clone, Debug)]
pub struct HostView {
    pub uplink: UplinkInfo,
    /// Host side of each local pod's veth, by pod IP.
    pub pods: BTreeMap<Ipv4Addr, PodInterface>,
    /// Underlay neighbours on the uplink and the default gateway.
    pub neighbours: NeighbourTable,
    /// The same neighbours as a sorted list (to compare two scans).
    pub neighbour_list: Vec<(Ipv4Addr, MacAddr)>,
    /// IPv4 addresses configured on any interface of the namespace,
    /// loopback ones (127/8) excluded; sorted, unique. Not part of the
    /// compiler's input (equality ignores it).
    pub local_addrs: Vec<Ipv4Addr>,
}

impl PartialEq for HostView {
    /// Two scans are equal when everything the compiler reads is.
    fn eq(&self, o: &Self) -> bool {
        self.uplink == o.uplink
            && self.pods == o.pods
            && self.neighbour_list == o.neighbour_list
            && self.neighbours.default_gateway == o.neighbours.default_gateway
    }
}

impl HostView {
    /// Pod interfaces whose pod MAC is still unknown.
    pub fn pods_without_mac(&self) -> impl Iterator<Item = (&Ipv4Addr, &PodInterface)> {
        self.pods.iter().filter(|(_, i)| i.pod_mac == MacAddr::ZERO)
    }
}

/// The pure part of a scan: uplink, pod interfaces (pod MACs from
/// `peer_macs`, keyed by host-side ifindex, else from neighbour entries) and
/// neighbours. Unit-tested without a host.
pub fn assemble(
    uplink_name: &str,
    links: &[Link],
    uplink_addrs: Vec<Ipv4Addr>,
    routes: &[Route],
    neighbours: &[Neighbour],
    peer_macs: &HashMap<u32, MacAddr>,
) -> Result<HostView> {
    let up = links
        .iter()
        .find(|l| l.name == uplink_name)
        .ok_or_else(|| HostError::NoUplink {
            name: uplink_name.to_owned(),
        })?;
    let mac = up
        .mac
        .filter(|m| *m != MacAddr::ZERO && !m.is_multicast())
        .ok_or_else(|| HostError::UplinkMac {
            name: uplink_name.to_owned(),
        })?;
    if uplink_addrs.is_empty() {
        return Err(HostError::UplinkAddress {
            name: uplink_name.to_owned(),
        });
    }
    let uplink = UplinkInfo {
        name: up.name.clone(),
        ifindex: up.ifindex,
        mac,
        mtu: u16::try_from(up.mtu).unwrap_or(u16::MAX),
        addrs: uplink_addrs,
    };
    let by_name: HashMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut pods = BTreeMap::new();
    for r in routes {
        let Some((ip, 32)) = r.dst else { continue };
        if r.gateway.is_some() || r.dev == uplink_name || r.dev == "lo" {
            continue;
        }
        let Some(link) = by_name.get(r.dev.as_str()) else {
            continue;
        };
        let Some(host_mac) = link.mac.filter(|_| link.link_type == "ether") else {
            continue;
        };
        let pod_mac = peer_macs
            .get(&link.ifindex)
            .copied()
            .or_else(|| {
                neighbours
                    .iter()
                    .find(|n| n.ip == ip && n.dev.as_deref() == Some(r.dev.as_str()))
                    .map(|n| n.mac)
            })
            .unwrap_or(MacAddr::ZERO);
        pods.insert(
            ip,
            PodInterface {
                name: Arc::from(r.dev.as_str()),
                ifindex: link.ifindex,
                host_mac,
                pod_mac,
            },
        );
    }
    let mut table = NeighbourTable::default();
    let mut neighbour_list = Vec::new();
    for n in neighbours {
        if n.dev.as_deref().is_none_or(|d| d == uplink_name) {
            table.insert(n.ip, n.mac);
            neighbour_list.push((n.ip, n.mac));
        }
    }
    neighbour_list.sort_unstable();
    neighbour_list.dedup_by_key(|(ip, _)| *ip);
    table.default_gateway = routes
        .iter()
        .find(|r| r.dst.is_none() && r.dev == uplink_name)
        .and_then(|r| r.gateway);
    Ok(HostView {
        uplink,
        pods,
        neighbours: table,
        neighbour_list,
        local_addrs: Vec::new(),
    })
}

/// Scans the host; caches pod MACs found through the veth peer.
#[derive(Debug)]
pub struct HostScanner {
    uplink: String,
    /// (host ifindex, host MAC) -> pod MAC. The host MAC guards against a
    /// reused ifindex.
    peer_cache: HashMap<(u32, MacAddr), MacAddr>,
}

impl HostScanner {
    /// A scanner for `uplink`.
    pub fn new(uplink: &str) -> Self {
        HostScanner {
            uplink: uplink.to_owned(),
            peer_cache: HashMap::new(),
        }
    }

    /// One scan.
    pub fn scan(&mut self) -> Result<HostView> {
        let links = parse_links(&ip_json(&["-j", "-d", "link", "show"])?);
        let addrs = uplink_addrs(&ip_json(&[
            "-j",
            "-4",
            "addr",
            "show",
            "dev",
            &self.uplink,
        ])?);
        let routes = parse_routes(&ip_json(&["-j", "-4", "route", "show", "table", "main"])?);
        let neighbours = parse_neighbours(&ip_json(&["-j", "-4", "neigh", "show"])?);
        let local_addrs = local_addrs(&ip_json(&["-j", "-4", "addr", "show"])?);
        let mut peer_macs = HashMap::new();
        let mut netns: Option<HashMap<i64, String>> = None;
        for r in &routes {
            let Some((_, 32)) = r.dst else { continue };
            if r.gateway.is_some() || r.dev == self.uplink || r.dev == "lo" {
                continue;
            }
            let Some(link) = links.iter().find(|l| l.name == r.dev) else {
                continue;
            };
            let Some(host_mac) = link.mac else { continue };
            if let Some(mac) = self.peer_cache.get(&(link.ifindex, host_mac)) {
                peer_macs.insert(link.ifindex, *mac);
                continue;
            }
            let (Some(peer), Some(nsid)) = (link.link_index, link.link_netnsid) else {
                continue;
            };
            if netns.is_none() {
                netns = Some(ip_json(&["-j", "netns", "list"]).map_or_else(
                    |e| {
                        tracing::debug!(error = %e, "listing network namespaces");
                        HashMap::new()
                    },
                    |v| parse_netns_ids(&v),
                ));
            }
            let Some(ns) = netns.as_ref().and_then(|m| m.get(&nsid)) else {
                continue;
            };
            match ip_json(&["-n", ns, "-j", "link", "show"]) {
                Ok(v) => {
                    if let Some(mac) = parse_links(&v)
                        .into_iter()
                        .find(|l| l.ifindex == peer)
                        .and_then(|l| l.mac)
                    {
                        self.peer_cache.insert((link.ifindex, host_mac), mac);
                        peer_macs.insert(link.ifindex, mac);
                    }
                }
                Err(e) => tracing::debug!(error = %e, netns = %ns, "reading veth peer"),
            }
        }
        // Forget interfaces that are gone.
        self.peer_cache
            .retain(|(i, m), _| links.iter().any(|l| l.ifindex == *i && l.mac == Some(*m)));
        let mut view = assemble(
            &self.uplink,
            &links,
            addrs,
            &routes,
            &neighbours,
            &peer_macs,
        )?;
        view.local_addrs = local_addrs;
        Ok(view)
    }

    /// Starts kernel neighbour resolution on the uplink for `ips` that the
    /// view does not have yet. Errors are logged, not returned: resolution
    /// is retried at the next scan.
    pub fn resolve(&self, view: &HostView, ips: impl IntoIterator<Item = Ipv4Addr>) {
        for ip in ips {
            if view.neighbours.lookup(ip).is_some() || view.uplink.addrs.contains(&ip) {
                continue;
            }
            self.resolve_one(ip);
        }
    }

    /// Starts kernel resolution of `ip` on the uplink; true when the
    /// kernel accepted the request.
    pub fn resolve_one(&self, ip: Ipv4Addr) -> bool {
        let ip_s = ip.to_string();
        let res = Command::new("ip")
            .args(["neigh", "replace", &ip_s, "dev", &self.uplink, "use"])
            .output();
        match res {
            Ok(o) if o.status.success() => {
                tracing::debug!(%ip, "neighbour resolution started");
                true
            }
            Ok(o) => {
                tracing::debug!(
                    %ip,
                    stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                    "neighbour resolution request refused"
                );
                false
            }
            Err(e) => {
                tracing::debug!(%ip, error = %e, "running ip neigh");
                false
            }
        }
    }

    /// The uplink next hop the kernel uses toward `dst` (`ip route get`):
    /// its gateway, or `dst` itself when on link. None when the route is
    /// not through the uplink (or there is none).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        let dst_s = dst.to_string();
        let v = ip_json(&["-j", "-4", "route", "get", &dst_s])?;
        Ok(parse_route_get(&v, &self.uplink, dst))
    }

    /// The usable neighbours on the uplink (one `ip neigh show dev`).
    pub fn uplink_neighbours(&self) -> Result<Vec<Neighbour>> {
        Ok(parse_neighbours(&ip_json(&[
            "-j",
            "-4",
            "neigh",
            "show",
            "dev",
            &self.uplink,
        ])?))
    }
}

/// Parses `ip -j -4 route get DST`: the gateway, else `dst`, when the route
/// leaves through `uplink`.
pub fn parse_route_get(v: &Value, uplink: &str, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    let r = v.as_array()?.first()?;
    if r.get("dev")?.as_str()? != uplink {
        return None;
    }
    if r.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "unicast")
    {
        return None;
    }
    match r.get("gateway").and_then(Value::as_str) {
        Some(g) => g.parse().ok(),
        None => Some(dst),
    }
}

/// How often [`OnDemandResolver`] polls the uplink's neighbour table while
/// a resolution is in flight.
pub const ON_DEMAND_POLL: Duration = Duration::from_millis(5);
/// How long it polls for one next hop (the kernel keeps trying after
/// that; the next periodic scan or request picks the answer up).
pub const ON_DEMAND_WAIT: Duration = Duration::from_millis(500);
/// A destination is not resolved anew within this time (workers ask again
/// for every packet that finds no neighbour).
const ON_DEMAND_REPEAT: Duration = Duration::from_secs(1);

/// Serves the workers' neighbour requests in the main loop (see the module
/// docs). Bounded: at most [`kxdp_dataplane::worker::neighbour::SLOTS`]
/// requests per drain, each destination at most once per
/// `ON_DEMAND_REPEAT`, polling for `ON_DEMAND_WAIT`.
#[derive(Debug)]
pub struct OnDemandResolver {
    requests: Arc<NeighbourRequests>,
    /// Next hops being resolved, since when.
    in_flight: Vec<(Ipv4Addr, Instant)>,
    /// Destinations handled recently, when.
    recent: HashMap<Ipv4Addr, Instant>,
    drained: Vec<Ipv4Addr>,
    /// Next hops whose resolution was started.
    pub started: u64,
    /// ... that showed up in the neighbour table while polled.
    pub resolved: u64,
}

impl OnDemandResolver {
    /// Serves `requests`.
    pub fn new(requests: Arc<NeighbourRequests>) -> Self {
        OnDemandResolver {
            requests,
            in_flight: Vec::new(),
            recent: HashMap::new(),
            drained: Vec::new(),
            started: 0,
            resolved: 0,
        }
    }

    /// The request set the workers signal to.
    pub fn requests(&self) -> &Arc<NeighbourRequests> {
        &self.requests
    }

    /// Takes the place of the main loop's sleep: waits up to `budget`,
    /// serving requests as they come (`view` is the latest scan), and
    /// returns true as soon as a next hop being resolved has a usable
    /// neighbour entry (the caller rescans the host now).
    pub fn serve(&mut self, scanner: &HostScanner, view: &HostView, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        let mut last_poll: Option<Instant> = None;
        loop {
            if self.requests.is_pending() {
                self.start(scanner, view);
            }
            let now = Instant::now();
            if !self.in_flight.is_empty()
                && last_poll.is_none_or(|t| now.duration_since(t) >= ON_DEMAND_POLL)
            {
                last_poll = Some(now);
                if self.poll(scanner) {
                    return true;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Idle, a request is noticed within 5 ms: 200 wakeups a second
            // of this thread, nothing on the workers.
            self.requests
                .wait(ON_DEMAND_POLL.min(deadline - now), Duration::from_millis(5));
        }
    }

    /// Drains the requests and starts resolution of their next hops.
    fn start(&mut self, scanner: &HostScanner, view: &HostView) {
        self.drained.clear();
        self.requests.drain(&mut self.drained);
        let now = Instant::now();
        self.recent
            .retain(|_, t| now.duration_since(*t) < ON_DEMAND_REPEAT);
        for &dst in &self.drained {
            if self.recent.contains_key(&dst) {
                continue;
            }
            self.recent.insert(dst, now);
            let hop = match scanner.next_hop(dst) {
                Ok(Some(hop)) => hop,
                Ok(None) => {
                    tracing::debug!(%dst, "no next hop on the uplink");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%dst, error = %e, "route lookup");
                    continue;
                }
            };
            // Known to the last scan but not yet to the tables the worker
            // read: that scan already asked for the publish that brings it.
            if view.uplink.addrs.contains(&hop)
                || view.neighbours.lookup(hop).is_some()
                || self.in_flight.iter().any(|(h, _)| *h == hop)
                || !scanner.resolve_one(hop)
            {
                continue;
            }
            tracing::debug!(%dst, %hop, "resolving on demand");
            self.started += 1;
            self.in_flight.push((hop, now));
        }
    }

    /// One look at the uplink's neighbours; true when an in-flight next
    /// hop has resolved.
    fn poll(&mut self, scanner: &HostScanner) -> bool {
        let found = match scanner.uplink_neighbours() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "polling neighbours");
                Vec::new()
            }
        };
        let mut resolved = 0;
        self.in_flight.retain(|(hop, since)| {
            if found.iter().any(|n| n.ip == *hop) {
                tracing::info!(
                    %hop,
                    after_ms = since.elapsed().as_millis() as u64,
                    "next hop resolved on demand"
                );
                resolved += 1;
                return false;
            }
            let waiting = since.elapsed() < ON_DEMAND_WAIT;
            if !waiting {
                tracing::debug!(%hop, "next hop not resolved yet; left to the periodic scan");
            }
            waiting
        });
        self.resolved += resolved;
        resolved > 0
    }
}

/// IPv4 addresses of `ip -j -4 addr show dev X` (primary first, as listed).
pub fn uplink_addrs(v: &Value) -> Vec<Ipv4Addr> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
        .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .collect()
}

/// Every non-loopback IPv4 address of `ip -j -4 addr show`, sorted and
/// unique.
pub fn local_addrs(v: &Value) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = uplink_addrs(v)
        .into_iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<Link> {
        parse_links(
            &serde_json::from_str(
                r#"[
 {"ifindex":1,"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00"},
 {"ifindex":2,"link_index":2,"ifname":"eth0","mtu":1500,"link_type":"ether","address":"0e:00:00:00:01:01","link_netnsid":0},
 {"ifindex":5,"link_index":2,"ifname":"vetha1","mtu":1500,"link_type":"ether","address":"0e:aa:00:00:00:02","link_netnsid":1},
 {"ifindex":6,"link_index":2,"ifname":"vetha2","mtu":1500,"link_type":"ether","address":"0e:aa:00:00:00:03","link_netnsid":2}
]"#,
            )
            .unwrap(),
        )
    }

    fn routes() -> Vec<Route> {
        parse_routes(
            &serde_json::from_str(
                r#"[
 {"dst":"default","gateway":"192.168.50.254","dev":"eth0","flags":[]},
 {"dst":"10.244.1.2","dev":"vetha1","scope":"link","flags":[]},
 {"dst":"10.244.1.3","dev":"vetha2","scope":"link","flags":[]},
 {"dst":"10.244.9.9","gateway":"192.168.50.7","dev":"vetha2","flags":[]},
 {"dst":"10.9.0.0/16","dev":"vetha2","flags":[]},
 {"dst":"192.168.50.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.168.50.1","flags":[]}
]"#,
            )
            .unwrap(),
        )
    }

    fn neighbours() -> Vec<Neighbour> {
        parse_neighbours(
            &serde_json::from_str(
                r#"[
 {"dst":"192.168.50.2","dev":"eth0","lladdr":"0e:00:00:00:02:01","state":["REACHABLE"]},
 {"dst":"192.168.50.254","dev":"eth0","lladdr":"0e:00:00:00:00:fe","state":["STALE"]},
 {"dst":"192.168.50.9","dev":"eth0","state":["FAILED"]},
 {"dst":"192.168.50.8","dev":"eth0","lladdr":"0e:00:00:00:00:08","state":["INCOMPLETE"]},
 {"dst":"10.244.1.3","dev":"vetha2","lladdr":"0e:bb:00:00:00:03","state":["STALE"]},
 {"dst":"10.1.1.1","dev":"other","lladdr":"0e:00:00:00:00:11","state":["PERMANENT"]}
]"#,
            )
            .unwrap(),
        )
    }

    #[test]
    fn pods_are_found_by_host_route_and_macs_by_peer_or_neighbour() {
        let mut peers = HashMap::new();
        peers.insert(5, "0e:bb:00:00:00:02".parse().unwrap());
        let v = assemble(
            "eth0",
            &links(),
            vec![Ipv4Addr::new(192, 168, 50, 1)],
            &routes(),
            &neighbours(),
            &peers,
        )
        .unwrap();
        assert_eq!(v.uplink.ifindex, 2);
        assert_eq!(v.uplink.mtu, 1500);
        assert_eq!(v.uplink.mac.to_string(), "0e:00:00:00:01:01");
        assert_eq!(v.pods.len(), 2, "{:?}", v.pods);
        let a1 = &v.pods[&Ipv4Addr::new(10, 244, 1, 2)];
        assert_eq!((&*a1.name, a1.ifindex), ("vetha1", 5));
        assert_eq!(a1.host_mac.to_string(), "0e:aa:00:00:00:02");
        assert_eq!(
            a1.pod_mac.to_string(),
            "0e:bb:00:00:00:02",
            "from the veth peer"
        );
        let a2 = &v.pods[&Ipv4Addr::new(10, 244, 1, 3)];
        assert_eq!(
            a2.pod_mac.to_string(),
            "0e:bb:00:00:00:03",
            "from the neighbour table"
        );
        assert_eq!(v.pods_without_mac().count(), 0);
        // Only usable entries on the uplink.
        assert_eq!(v.neighbours.len(), 2);
        assert!(v
            .neighbours
            .lookup(Ipv4Addr::new(192, 168, 50, 8))
            .is_none());
        assert_eq!(
            v.neighbours.default_gateway,
            Some(Ipv4Addr::new(192, 168, 50, 254))
        );
    }

    #[test]
    fn unknown_pod_mac_is_zero_and_reported() {
        let v = assemble(
            "eth0",
            &links(),
            vec![Ipv4Addr::new(192, 168, 50, 1)],
            &routes(),
            &[],
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(v.pods_without_mac().count(), 2);
    }

    #[test]
    fn missing_uplink_or_address_is_an_error() {
        let r = assemble(
            "eth9",
            &links(),
            vec![Ipv4Addr::LOCALHOST],
            &[],
            &[],
            &HashMap::new(),
        );
        assert!(matches!(r, Err(HostError::NoUplink { .. })));
        let r = assemble("eth0", &links(), vec![], &[], &[], &HashMap::new());
        assert!(matches!(r, Err(HostError::UplinkAddress { .. })));
        let r = assemble(
            "lo",
            &links(),
            vec![Ipv4Addr::LOCALHOST],
            &[],
            &[],
            &HashMap::new(),
        );
        assert!(matches!(r, Err(HostError::UplinkMac { .. })));
    }

    #[test]
    fn route_get_names_the_gateway_or_the_on_link_destination() {
        let dst = Ipv4Addr::new(192, 168, 50, 100);
        let on_link = serde_json::json!([
            {"dst":"192.168.50.100","dev":"eth0","prefsrc":"192.168.50.1","flags":[],"uid":0,"cache":[]}
        ]);
        assert_eq!(parse_route_get(&on_link, "eth0", dst), Some(dst));
        let far = Ipv4Addr::new(8, 8, 8, 8);
        let via = serde_json::json!([
            {"dst":"8.8.8.8","gateway":"192.168.50.254","dev":"eth0","prefsrc":"192.168.50.1","flags":[]}
        ]);
        assert_eq!(
            parse_route_get(&via, "eth0", far),
            Some(Ipv4Addr::new(192, 168, 50, 254))
        );
        assert_eq!(parse_route_get(&via, "eth1", far), None, "not the uplink");
        let local = serde_json::json!([
            {"type":"local","dst":"192.168.50.1","dev":"lo","prefsrc":"192.168.50.1","flags":[]}
        ]);
        assert_eq!(parse_route_get(&local, "eth0", dst), None);
        assert_eq!(parse_route_get(&Value::Null, "eth0", dst), None);
    }

    #[test]
    fn netns_ids_and_uplink_addresses_parse() {
        let ids = parse_netns_ids(
            &serde_json::from_str(r#"[{"name":"a"},{"name":"b","id":3}]"#).unwrap(),
        );
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[&3], "b");
        let addrs = uplink_addrs(
            &serde_json::from_str(
                r#"[{"ifindex":2,"ifname":"eth0","addr_info":[
                    {"family":"inet","local":"192.168.50.1","prefixlen":24},
                    {"family":"inet","local":"192.168.51.1","prefixlen":24}]}]"#,
            )
            .unwrap(),
        );
        assert_eq!(
            addrs,
            vec![
                Ipv4Addr::new(192, 168, 50, 1),
                Ipv4Addr::new(192, 168, 51, 1)
            ]
        );
        let all = local_addrs(
            &serde_json::from_str(
                r#"[{"ifindex":1,"ifname":"lo","addr_info":[
                    {"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                    {"ifindex":5,"ifname":"vetha1","addr_info":[
                    {"family":"inet","local":"10.244.1.1","prefixlen":32}]},
                    {"ifindex":2,"ifname":"eth0","addr_info":[
                    {"family":"inet","local":"192.168.50.1","prefixlen":24},
                    {"family":"inet6","local":"fe80::1","prefixlen":64}]},
                    {"ifindex":6,"ifname":"vetha2","addr_info":[
                    {"family":"inet","local":"10.244.1.1","prefixlen":32}]}]"#,
            )
            .unwrap(),
        );
        assert_eq!(
            all,
            vec![Ipv4Addr::new(10, 244, 1, 1), Ipv4Addr::new(192, 168, 50, 1)],
            "loopback and IPv6 left out, duplicates merged"
        );
        assert!(parse_links(&Value::Null).is_empty());
        assert!(parse_routes(&serde_json::json!([{"dst": "bogus", "dev": "x"}])).is_empty());
    }
}
