//! End-to-end: Service features and daemon restarts through `kxdp run` on
//! node-a of the standard topology (node-b a plain Linux node with
//! Flannel's kernel VXLAN wiring), asserted with real kernel sockets.
//!
//! ```text
//!   pod a1 (10.244.1.2)  pod a2 (10.244.1.3)          pod b1 (10.244.2.2)
//!   node-a: kxdp run (eth0 192.168.50.1)             node-b: Linux + flannel.1
//!   ------------- underlay br0 ------------- external client 192.168.50.100
//! ```
//!
//! - traceroute-style TTL expiry: TTL 1 expires at node-a (kxdp answers
//!   with ICMP time exceeded, RFC 792 type 11 code 0), TTL 2 at node-b,
//!   TTL 3 reaches b1;
//! - `sessionAffinity: ClientIP` over a local and a remote backend;
//! - `externalTrafficPolicy: Local` NodePorts: a local endpoint sees the
//!   client's own address; without a local endpoint node-a drops;
//! - a LoadBalancer ingress IP routed to node-a by the external client, and
//!   `loadBalancerSourceRanges` that exclude the client;
//! - UDP conntrack entries of a removed endpoint are flushed: a client
//!   that keeps one source port moves to the new endpoint;
//! - takeover: after SIGKILL the steering programs stay attached (fail
//!   closed), and a new `kxdp run` replaces them and serves traffic.
//!
//! Endpoints are explicit EndpointSlices (Services without selectors), so
//! each test says exactly which pods back which Service, on which node.
//!
//! Run as root (prints SKIP otherwise). Every wait is bounded; kxdp, the
//! servers and the namespaces are torn down on drop, also on failure.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::kxdp::{
    manifests, ping, replace_file, tcp_echo_client, tcp_echo_server, KxdpCluster, KxdpProcess,
    TempDir,
};
use common::topology::{skip_if_unsupported, Netns, TopoResult, EXTERNAL_IP};
use common::whoami::{tcp_whoami, NameServer};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Port every test server listens on (the EndpointSlices' port).
const SERVER_PORT: u16 = 8080;

const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);
const VIP_LOCAL_NP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 20);
const VIP_REMOTE_NP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 21);
const NP_LOCAL: u16 = 30081;
const NP_REMOTE_ONLY: u16 = 30082;
const VIP_LB: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 30);
const VIP_LB_DENIED: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 31);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 10);
const LB_IP_DENIED: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 11);
const VIP_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 53);

/// One endpoint of an EndpointSlice: pod IP and its node.
#[derive(Clone, Copy)]
struct Ep<'a> {
    ip: Ipv4Addr,
    node: &'a str,
}

/// A Service without selector. `spec_extra` and `status` are YAML lines
/// already indented for `spec:` (2 spaces) and the document root.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per manifest field keeps each test's Service readable"
)]
fn service(
    name: &str,
    ty: &str,
    ip: Ipv4Addr,
    port: u16,
    proto: &str,
    node_port: Option<u16>,
    spec_extra: &str,
    status: &str,
) -> String {
    let node_port = node_port
        .map(|p| format!("    nodePort: {p}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: {ty}\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n{spec_extra}\
         \x20 ports:\n  - name: http\n    protocol: {proto}\n    port: {port}\n    targetPort: {SERVER_PORT}\n{node_port}{status}"
    )
}

/// The EndpointSlice of Service `svc` (port `http`, [`SERVER_PORT`]).
fn endpoint_slice(svc: &str, proto: &str, eps: &[Ep<'_>]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-x\n  namespace: default\n\
         \x20 labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\n\
         ports:\n- name: http\n  protocol: {proto}\n  port: {SERVER_PORT}\nendpoints:\n"
    );
    if eps.is_empty() {
        s.push_str("[]\n");
    }
    for e in eps {
        s.push_str(&format!(
            "- addresses:\n  - {}\n  conditions:\n    ready: true\n  nodeName: {}\n",
            e.ip, e.node
        ));
    }
    s
}

/// The topology with kxdp running on node-a. Field order is drop order:
/// servers, kxdp, the namespaces, the scratch directory.
struct Cluster {
    servers: Vec<NameServer>,
    inner: KxdpCluster,
}

impl std::ops::Deref for Cluster {
    type Target = KxdpCluster;
    fn deref(&self) -> &KxdpCluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut KxdpCluster {
        &mut self.inner
    }
}

impl Cluster {
    fn start(tag: &str, services: &[String], extra_args: &[&str]) -> TopoResult<Self> {
        let inner = KxdpCluster::start(tag, services, extra_args)?;
        Ok(Cluster {
            servers: Vec::new(),
            inner,
        })
    }

    /// Starts a TCP name server in pod `name` (see [`NameServer::tcp`]).
    fn serve_tcp(&mut self, name: &str) {
        let s = NameServer::tcp(&self.pod(name).ns, name, SERVER_PORT);
        let s = self.check(&format!("TCP server in {name}"), s);
        self.servers.push(s);
    }

    /// Starts a UDP name server in pod `name` (see [`NameServer::udp`]).
    fn serve_udp(&mut self, name: &str) {
        let s = NameServer::udp(&self.pod(name).ns, name, SERVER_PORT);
        let s = self.check(&format!("UDP server in {name}"), s);
        self.servers.push(s);
    }

    fn rewrite(&mut self, services: &[String]) {
        let r = manifests(&self.topo, services).and_then(|t| replace_file(&self.manifests, &t));
        self.check("rewriting the manifests", r);
    }
}

fn cluster(test: &str, services: &[String], extra_args: &[&str]) -> Option<Cluster> {
    if skip_if_unsupported(test) {
        return None;
    }
    match Cluster::start(test, services, extra_args) {
        Ok(c) => Some(c),
        Err(e) => panic!("{test}: setting up: {e}"),
    }
}

/// A TCP connect from `ns` that is expected to go unanswered: Ok(true)
/// when it timed out (dropped), Ok(false) when it connected or was
/// refused.
fn tcp_dropped(ns: &Netns, dst: Ipv4Addr, port: u16, timeout: Duration) -> TopoResult<bool> {
    ns.run_in(move || {
        Ok(
            match TcpStream::connect_timeout(&SocketAddr::from((dst, port)), timeout) {
                Err(e) => e.kind() == std::io::ErrorKind::TimedOut,
                Ok(_) => false,
            },
        )
    })
}

// ---------------------------------------------------------------------------
// (a) TTL expiry

/// What a UDP probe with a given TTL produced.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// ICMP time exceeded (type 11 code 0) quoting our probe, from this hop.
    Expired(Ipv4Addr),
    /// The UDP echo of the probe came back.
    Reached,
    Nothing,
}

/// Sends UDP probes from `ns` (source port `sport`) to `dst:dport` with
/// `ttl`, up to 3 tries of 1 s; reads ICMP through a raw socket.
fn udp_probe(ns: &Netns, dst: Ipv4Addr, dport: u16, sport: u16, ttl: u32) -> TopoResult<Probe> {
    ns.run_in(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map_err(|e| format!("raw socket: {e}"))?;
        raw.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let udp = UdpSocket::bind(("0.0.0.0", sport)).map_err(|e| format!("bind :{sport}: {e}"))?;
        udp.set_ttl(ttl).map_err(|e| e.to_string())?;
        udp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let payload = format!("kxdp-ttl-{ttl}");
        for _ in 0..3 {
            udp.send_to(payload.as_bytes(), (dst, dport))
                .map_err(|e| format!("send probe: {e}"))?;
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                let mut buf = [0u8; 1500];
                if let Ok(n) = udp.recv(&mut buf) {
                    if buf.get(..n) == Some(payload.as_bytes()) {
                        return Ok(Probe::Reached);
                    }
                }
                let Ok(n) = (&raw).read(&mut buf) else {
                    continue;
                };
                if let Some(hop) = time_exceeded_for(buf.get(..n).unwrap_or(&[]), dst, sport, dport)
                {
                    return Ok(Probe::Expired(hop));
                }
            }
        }
        Ok(Probe::Nothing)
    })
}

/// When `pkt` (an IPv4 packet as a raw socket reads it) is ICMP time
/// exceeded in transit quoting a UDP datagram `sport -> dst:dport`, its
/// sender.
fn time_exceeded_for(pkt: &[u8], dst: Ipv4Addr, sport: u16, dport: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let src = pkt.get(12..16)?;
    let icmp = pkt.get(ihl..)?;
    if icmp.first() != Some(&11) || icmp.get(1) != Some(&0) {
        return None;
    }
    // RFC 792: the quote is the original IP header + 64 bits of data.
    let inner = icmp.get(8..)?;
    let inner_ihl = usize::from(inner.first()? & 0x0f) * 4;
    let ok = inner.get(9) == Some(&17)
        && inner.get(16..20) == Some(&dst.octets()[..])
        && inner.get(inner_ihl..inner_ihl + 2) == Some(&sport.to_be_bytes()[..])
        && inner.get(inner_ihl + 2..inner_ihl + 4) == Some(&dport.to_be_bytes()[..]);
    ok.then(|| Ipv4Addr::new(src[0], src[1], src[2], src[3]))
}

#[test]
fn e2e_ttl_expiry_traceroute_through_kxdp() {
    let Some(mut c) = cluster("e2e_ttl_expiry", &[], &[]) else {
        return;
    };
    let b1 = c.pod("b1").ip;
    let (gw_a, node_a_ip) = (c.node_a().gateway, c.node_a().ip);
    // b1 echoes UDP on 33434.
    let echo = c.pod("b1").ns.spawn(move || {
        let s = UdpSocket::bind(("0.0.0.0", 33434)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        // Answers until the TTL-3 probe arrived (or the timeout).
        loop {
            let (n, peer) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
            let _ = s.send_to(buf.get(..n).unwrap_or(&[]), peer);
            if buf.get(..n) == Some(&b"kxdp-ttl-3"[..]) {
                return Ok(());
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));

    let p1 = udp_probe(&c.pod("a1").ns, b1, 33434, 40001, 1);
    let p1 = c.check("probe TTL 1", p1);
    let Probe::Expired(hop1) = p1 else {
        panic!(
            "TTL 1: {p1:?}, expected time exceeded from node-a\n{}",
            c.kxdp.log_text()
        );
    };
    assert!(
        hop1 == gw_a || hop1 == node_a_ip,
        "TTL 1 expired at {hop1}, expected node-a ({gw_a} or {node_a_ip})"
    );

    let p2 = udp_probe(&c.pod("a1").ns, b1, 33434, 40002, 2);
    let p2 = c.check("probe TTL 2", p2);
    let Probe::Expired(hop2) = p2 else {
        panic!("TTL 2: {p2:?}, expected time exceeded from node-b");
    };
    // node-b's kernel answers from an address of its own (flannel.1's
    // 10.244.2.0, the gateway or its underlay IP), never node-a's or b1's.
    assert!(
        hop2 != hop1
            && hop2 != b1
            && (hop2.octets()[..3] == [10, 244, 2] || hop2 == Ipv4Addr::new(192, 168, 50, 2)),
        "TTL 2 expired at {hop2}, expected node-b"
    );

    let p3 = udp_probe(&c.pod("a1").ns, b1, 33434, 40003, 3);
    let p3 = c.check("probe TTL 3", p3);
    assert_eq!(p3, Probe::Reached, "TTL 3 reaches b1");
    let r = echo
        .join()
        .map_err(|_| "echo panicked".to_string())
        .and_then(|r| r);
    c.check("b1 echo", r);
}

// ---------------------------------------------------------------------------
// (b) session affinity

#[test]
fn e2e_session_affinity_client_ip() {
    let svcs = [
        service(
            "svc-affinity",
            "ClusterIP",
            VIP_AFFINITY,
            80,
            "TCP",
            None,
            "  sessionAffinity: ClientIP\n",
            "",
        ),
        endpoint_slice(
            "svc-affinity",
            "TCP",
            &[
                Ep {
                    ip: Ipv4Addr::new(10, 244, 1, 3),
                    node: "node-a",
                },
                Ep {
                    ip: Ipv4Addr::new(10, 244, 2, 2),
                    node: "node-b",
                },
            ],
        ),
    ];
    let Some(mut c) = cluster("e2e_affinity", &svcs, &[]) else {
        return;
    };
    c.serve_tcp("a2");
    c.serve_tcp("b1");
    let mut seen = Vec::new();
    for i in 0..20 {
        let r = tcp_whoami(&c.pod("a1").ns, VIP_AFFINITY, 80, IO_TIMEOUT);
        let line = c.check(&format!("connection {i} to svc-affinity"), r);
        seen.push(line.split_whitespace().next().unwrap_or("").to_owned());
    }
    let first = seen.first().cloned().unwrap_or_default();
    assert!(first == "a2" || first == "b1", "backends answered {seen:?}");
    assert!(
        seen.iter().all(|s| *s == first),
        "ClientIP affinity: all 20 connections on one backend, got {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// (c) externalTrafficPolicy Local

#[test]
fn e2e_node_port_external_traffic_policy_local() {
    let a2 = Ep {
        ip: Ipv4Addr::new(10, 244, 1, 3),
        node: "node-a",
    };
    let b1 = Ep {
        ip: Ipv4Addr::new(10, 244, 2, 2),
        node: "node-b",
    };
    let local = "  externalTrafficPolicy: Local\n";
    let svcs = [
        service(
            "svc-np-local",
            "NodePort",
            VIP_LOCAL_NP,
            80,
            "TCP",
            Some(NP_LOCAL),
            local,
            "",
        ),
        endpoint_slice("svc-np-local", "TCP", &[a2]),
        service(
            "svc-np-remote",
            "NodePort",
            VIP_REMOTE_NP,
            80,
            "TCP",
            Some(NP_REMOTE_ONLY),
            local,
            "",
        ),
        endpoint_slice("svc-np-remote", "TCP", &[b1]),
    ];
    let Some(mut c) = cluster("e2e_etp_local", &svcs, &[]) else {
        return;
    };
    c.serve_tcp("a2");
    c.serve_tcp("b1");
    let node_a_ip = c.node_a().ip;
    // eTP Local with a local endpoint: served, no SNAT, the client's own
    // address reaches the pod.
    let r = tcp_whoami(&c.topo.external, node_a_ip, NP_LOCAL, IO_TIMEOUT);
    let line = c.check("external -> node-a NodePort (eTP Local, local endpoint)", r);
    assert_eq!(
        line,
        format!("a2 {EXTERNAL_IP}"),
        "served by a2, client IP kept"
    );
    // eTP Local, the only endpoint on node-b: node-a drops (kube-proxy:
    // has endpoints, none local), so the connect times out.
    let r = tcp_dropped(
        &c.topo.external,
        node_a_ip,
        NP_REMOTE_ONLY,
        Duration::from_secs(3),
    );
    let dropped = c.check(
        "external -> node-a NodePort (eTP Local, remote endpoint)",
        r,
    );
    assert!(
        dropped,
        "a NodePort without local endpoint must be dropped on node-a"
    );
    // The same Service still works inside the cluster (ClusterIP ignores eTP).
    let r = tcp_whoami(&c.pod("a1").ns, VIP_REMOTE_NP, 80, IO_TIMEOUT);
    let line = c.check("a1 -> svc-np-remote ClusterIP", r);
    assert!(line.starts_with("b1 "), "{line}");
}

// ---------------------------------------------------------------------------
// (d) LoadBalancer IP and source ranges

fn lb_status(ip: Ipv4Addr) -> String {
    format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {ip}\n")
}

#[test]
fn e2e_load_balancer_ip_and_source_ranges() {
    let a2 = Ep {
        ip: Ipv4Addr::new(10, 244, 1, 3),
        node: "node-a",
    };
    let svcs = [
        service(
            "svc-lb",
            "LoadBalancer",
            VIP_LB,
            80,
            "TCP",
            Some(30090),
            "",
            &lb_status(LB_IP),
        ),
        endpoint_slice("svc-lb", "TCP", &[a2]),
        service(
            "svc-lb-denied",
            "LoadBalancer",
            VIP_LB_DENIED,
            80,
            "TCP",
            Some(30091),
            "  loadBalancerSourceRanges:\n  - 10.0.0.0/8\n",
            &lb_status(LB_IP_DENIED),
        ),
        endpoint_slice("svc-lb-denied", "TCP", &[a2]),
    ];
    let Some(mut c) = cluster("e2e_lb", &svcs, &[]) else {
        return;
    };
    c.serve_tcp("a2");
    let node_a_ip = c.node_a().ip.to_string();
    for lb in [LB_IP, LB_IP_DENIED] {
        let r = c
            .topo
            .external
            .ip(&["route", "add", &format!("{lb}/32"), "via", &node_a_ip])
            .map(|_| ());
        c.check("route to the LB IP", r);
    }
    let r = tcp_whoami(&c.topo.external, LB_IP, 80, IO_TIMEOUT);
    let line = c.check("external -> LB IP", r);
    assert!(line.starts_with("a2 "), "served by a2: {line}");
    let r = tcp_dropped(&c.topo.external, LB_IP_DENIED, 80, Duration::from_secs(3));
    let dropped = c.check("external -> LB IP outside its source ranges", r);
    assert!(
        dropped,
        "loadBalancerSourceRanges excluding the client must drop"
    );
}

// ---------------------------------------------------------------------------
// (e) UDP conntrack flush on endpoint removal

fn dns_services(ep: Ep<'_>) -> [String; 2] {
    [
        service("svc-dns", "ClusterIP", VIP_DNS, 53, "UDP", None, "", ""),
        endpoint_slice("svc-dns", "UDP", &[ep]),
    ]
}

#[test]
fn e2e_udp_conntrack_flushed_when_endpoint_removed() {
    let a2 = Ep {
        ip: Ipv4Addr::new(10, 244, 1, 3),
        node: "node-a",
    };
    let b1 = Ep {
        ip: Ipv4Addr::new(10, 244, 2, 2),
        node: "node-b",
    };
    let Some(mut c) = cluster("e2e_udp_flush", &dns_services(a2), &[]) else {
        return;
    };
    c.serve_udp("a2");
    c.serve_udp("b1");
    // The client: one socket, one source port, a query every 100 ms;
    // reports every answer's server name, in order, until it has heard
    // from b1 five times in a row (or 20 s).
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let client = c.pod("a1").ns.spawn(move || {
        let s = UdpSocket::bind(("0.0.0.0", 40053)).map_err(|e| e.to_string())?;
        s.connect((VIP_DNS, 53)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut answers: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut told = false;
        while Instant::now() < deadline {
            let _ = s.send(b"query");
            let mut buf = [0u8; 512];
            if let Ok(n) = s.recv(&mut buf) {
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned();
                answers.push(text.split_whitespace().next().unwrap_or("").to_owned());
                if !told && answers.len() >= 3 {
                    let _ = started_tx.send(());
                    told = true;
                }
                if answers.len() >= 5 && answers.iter().rev().take(5).all(|a| a == "b1") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(answers)
    });
    let started = started_rx.recv_timeout(Duration::from_secs(10));
    if started.is_err() {
        let r = client.join();
        panic!(
            "the UDP client got no answers: {r:?}\n{}",
            c.kxdp.log_text()
        );
    }
    // The endpoint in use goes away, another comes.
    c.rewrite(&dns_services(b1));
    let answers = client
        .join()
        .map_err(|_| "client panicked".to_string())
        .and_then(|r| r);
    let answers = c.check("UDP client", answers);
    assert_eq!(
        answers.first().map(String::as_str),
        Some("a2"),
        "{answers:?}"
    );
    let tail: Vec<&String> = answers.iter().rev().take(5).collect();
    assert!(
        answers.len() >= 8 && tail.iter().all(|a| *a == "b1"),
        "the flow kept the removed endpoint (stale conntrack entry): {answers:?}\n{}",
        c.kxdp.log_text()
    );
    // Once moved, never back to the removed endpoint.
    let first_b1 = answers.iter().position(|a| a == "b1").unwrap_or(0);
    assert!(
        answers.iter().skip(first_b1).all(|a| a == "b1"),
        "answers after the switch: {answers:?}"
    );
}

// ---------------------------------------------------------------------------
// Takeover of programs a killed kxdp left attached

fn xdp_links(ns: &Netns) -> String {
    ns.ip(&["-d", "link", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn e2e_restart_after_sigkill_takes_over_attached_programs() {
    if skip_if_unsupported("e2e_restart_after_sigkill") {
        return;
    }
    // No --pin-dir here: `ip netns exec` mounts a fresh /sys, so bpffs
    // is not at /sys/fs/bpf inside; the loader's pin takeover is
    // unit-tested in kxdp-ffi.
    let mut c = match Cluster::start("e2e_takeover", &[], &[]) {
        Ok(c) => c,
        Err(e) => panic!("setting up: {e}"),
    };
    let (a2, b1) = (c.pod("a2").ip, c.pod("b1").ip);
    let r = ping(&c.pod("a1").ns, a2, 3);
    c.check("ping a1 -> a2 (first kxdp)", r);

    // SIGKILL: no cleanup runs. The ready file holds the daemon's pid.
    let pid = std::fs::read_to_string(&c.kxdp.ready_file).unwrap_or_default();
    let pid = pid.trim().to_owned();
    assert!(pid.parse::<u32>().is_ok(), "pid in the ready file: {pid:?}");
    let killed = common::topology::run("kill", &["-KILL", &pid]).map(|_| ());
    c.check("SIGKILL kxdp", killed);
    // Wait for the zombie (not reaped yet, so the pid stays ours), then
    // reap it.
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(5);
    let zombie = || {
        std::fs::read_to_string(&stat)
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true)
    };
    while !zombie() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(zombie(), "kxdp survived SIGKILL");
    assert_eq!(c.kxdp.stop(), None, "killed by a signal");
    // Fail closed: programs stay, pods cannot talk without kxdp.
    let links = xdp_links(&c.node_a().ns);
    assert_eq!(
        links.matches("prog/xdp").count(),
        3,
        "left attached:\n{links}"
    );
    assert!(
        ping(&c.pod("a1").ns, a2, 1).is_err(),
        "a1 reached a2 with kxdp dead"
    );

    // A new kxdp on the same node (fresh ready file) takes over.
    let dir2 = c.check("scratch dir", TempDir::new("e2e_takeover2"));
    let node_a = c.topo.node("node-a").expect("node-a");
    let second = KxdpProcess::start(
        node_a,
        &c.manifests,
        &dir2.path,
        &[],
        Duration::from_secs(30),
    );
    let second = match second {
        Ok(k) => k,
        Err(e) => panic!(
            "second kxdp: {e}\n--- first kxdp log ---\n{}",
            c.kxdp.log_text()
        ),
    };
    c.kxdp = second;
    let _dir2 = dir2;
    let r = ping(&c.pod("a1").ns, a2, 5);
    c.check("ping a1 -> a2 (after takeover)", r);
    let srv = tcp_echo_server(&c.pod("b1").ns, 8080, IO_TIMEOUT);
    let srv = c.check("server in b1", srv);
    let r = tcp_echo_client(&c.pod("a1").ns, b1, 8080, 64 * 1024, IO_TIMEOUT);
    c.check("TCP a1 -> b1 (after takeover)", r);
    let r = srv
        .join()
        .map_err(|_| "server panicked".to_string())
        .and_then(|r| r);
    c.check("b1 server", r);
    let links = xdp_links(&c.node_a().ns);
    assert_eq!(
        links.matches("prog/xdp").count(),
        3,
        "one program per interface:\n{links}"
    );
    assert_eq!(c.kxdp.stop(), Some(0), "clean exit:\n{}", c.kxdp.log_text());
    let links = xdp_links(&c.node_a().ns);
    assert!(!links.contains("prog/xdp"), "detached at exit:\n{links}");
    let _ = &c.dir;
}
