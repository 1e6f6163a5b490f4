//! RAII network namespaces and the standard test topology (DESIGN §5),
//! shared by the end-to-end tests (`tests/`), the benchmarks (`bench/`) and
//! `kxdp demo`.
//!
//! ```text
//!   pod ns a1 (10.244.1.2)  pod ns a2 (10.244.1.3)          pod ns b1 (10.244.2.2)
//!         | veth                  | veth                           | veth
//!   node ns node-a (eth0 192.168.50.1)                       node ns node-b (eth0 192.168.50.2)
//!         |                                                        |
//!   --------------------- underlay ns: bridge br0 -------------------------------
//!         | eth0 192.168.50.100: external client ns
//! ```
//!
//! Every namespace gets a unique name (`kx<pid>x<counter>-<role>` from
//! [`Topology::standard`], `kx<suffix>-<role>` from [`Topology::nodes_only`]),
//! so concurrent runs never collide, and is deleted when its guard drops,
//! together with every interface inside it (veth pairs die with either
//! end). Processes left in a namespace (servers a test started there) are
//! killed first. Nothing is created in, or moved out of, the caller's
//! namespace: veth pairs are created inside a node namespace with the
//! peer placed straight into the other namespace.
//!
//! Every sender's `eth0` has tx checksum offload off (see
//! [`checksum_offload_off`]); the suite needs `ethtool`.
//!
//! Pods follow the CNI `ptp` convention: the pod's `eth0` has the pod IP
//! /32, a link route to the gateway (first address of the node's pod
//! CIDR) and a default route via it; the node has a /32 host route to the
//! pod IP through the host-side veth (how kxdp finds pod interfaces). On
//! a plain Linux node the host-side veth also carries the gateway address,
//! so the kernel answers the pod's ARP.
//!
//! A topology meant to outlive its builder (`kxdp demo --keep`) is released
//! with [`Topology::leak`]; [`remove_netns`] and [`netns_matching`] clean up
//! afterwards.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

/// Errors of the topology helper: the failing command and its stderr.
pub type TopoResult<T> = Result<T, String>;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique suffix for names in this process: `<pid>x<n>`.
pub fn unique_suffix() -> String {
    format!(
        "{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; Err with the command line and stderr on failure.
pub fn run(program: &str, args: &[&str]) -> TopoResult<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// Why the netns tests cannot run here, or None if they can.
pub fn skip_reason() -> Option<String> {
    // SAFETY-free check: effective uid via /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    if euid != "0" {
        return Some("not running as root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) not installed".into());
    }
    None
}

/// Prints a SKIP line and returns true when the test cannot run.
pub fn skip_if_unsupported(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

/// Makes sure bpffs is mounted at /sys/fs/bpf (pins live there).
pub fn ensure_bpffs() -> TopoResult<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]).map(|_| ())
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `kx<suffix>-<role>`.
    pub fn new(role: &str, suffix: &str) -> TopoResult<Self> {
        let name = format!("kx{suffix}-{role}");
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives up ownership: the namespace (and what runs in it) stays after
    /// this value is gone. Returns its name, for a later [`remove_netns`].
    pub fn leak(self) -> String {
        let this = std::mem::ManuallyDrop::new(self);
        this.name.clone()
    }

    /// Path of the namespace file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> TopoResult<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip netns exec NAME program args...`
    pub fn exec(&self, program: &str, args: &[&str]) -> TopoResult<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Like [`Netns::exec`], returning stdout as a string.
    pub fn exec_stdout(&self, program: &str, args: &[&str]) -> TopoResult<String> {
        self.exec(program, args)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> TopoResult<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> TopoResult<String> {
        let out = self.ip(&["-br", "link", "show", "dev", dev])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .ok_or_else(|| format!("no MAC for {dev} in {}: {text}", self.name))
    }

    /// Interface index of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> TopoResult<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", dev])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("no ifindex for {dev} in {}: {text}", self.name))
    }

    /// Runs `f` on a new thread inside this namespace (sockets, netlink
    /// and XDP attach done there act on this namespace).
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<TopoResult<T>>
    where
        F: FnOnce() -> TopoResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            kxdp_ffi::netns::enter_net_namespace(&path)
                .map_err(|e| format!("setns {}: {e}", path.display()))?;
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run_in<F, T>(&self, f: F) -> TopoResult<T>
    where
        F: FnOnce() -> TopoResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(f)
            .join()
            .map_err(|_| format!("thread in {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Kills every process in namespace `name` (SIGKILL; processes a caller
/// started there would keep it alive) and deletes it, which removes every
/// interface inside it. Best effort: errors (e.g. already gone) are ignored.
pub fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid.parse::<u32>().is_ok() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Creates a veth pair between two namespaces without touching the
/// caller's namespace: `a_dev` in `a`, `b_dev` in `b`, both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> TopoResult<()> {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

/// What runs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// The node is left for kxdp: pod veths and host routes only.
    Kxdp,
    /// A plain Linux node wired like Flannel's vxlan backend.
    LinuxFlannel,
}

/// A node namespace.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// Underlay address on `eth0`.
    pub ip: Ipv4Addr,
    /// MAC of `eth0` (the VTEP MAC).
    pub mac: String,
    /// Pod CIDR `10.244.<n>.0/24`.
    pub pod_net: Ipv4Addr,
    /// First address of the pod CIDR: the pods' gateway.
    pub gateway: Ipv4Addr,
    pub ns: Netns,
}

/// A pod namespace attached to a node.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Index into [`Topology::nodes`].
    pub node: usize,
    /// Host-side veth in the node namespace.
    pub host_veth: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    /// MAC of the pod's eth0.
    pub mac: String,
    pub ns: Netns,
}

/// Options of [`Topology::standard`].
#[derive(Clone, Copy, Debug)]
pub struct TopologyOptions {
    pub node_a: NodeKind,
    pub node_b: NodeKind,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            node_a: NodeKind::Kxdp,
            node_b: NodeKind::LinuxFlannel,
        }
    }
}

/// The standard topology. Field order is drop order: pods, then nodes,
/// then the external client and the underlay.
#[derive(Debug)]
pub struct Topology {
    pub suffix: String,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    /// The external client (`eth0` 192.168.50.100).
    pub external: Netns,
    pub underlay: Netns,
}

pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
pub const VXLAN_PORT: u16 = 8472;

impl Topology {
    /// Builds DESIGN §5: node-a (pods a1, a2), node-b (pod b1), the
    /// external client, all on bridge br0 in the underlay namespace.
    pub fn standard(opts: TopologyOptions) -> TopoResult<Self> {
        let mut topo = Self::nodes_only(opts, &unique_suffix())?;
        topo.add_pod("a1", 0, Ipv4Addr::new(10, 244, 1, 2))?;
        topo.add_pod("a2", 0, Ipv4Addr::new(10, 244, 1, 3))?;
        topo.add_pod("b1", 1, Ipv4Addr::new(10, 244, 2, 2))?;
        topo.wire_flannel()?;
        Ok(topo)
    }

    /// The underlay, the external client and both nodes of DESIGN §5
    /// (node-a 192.168.50.1 with pod CIDR 10.244.1.0/24, node-b
    /// 192.168.50.2 with 10.244.2.0/24), without pods; namespaces are named
    /// `kx<suffix>-<role>`. Add pods with [`Topology::add_pod`], then call
    /// [`Topology::wire_flannel`] when a node is [`NodeKind::LinuxFlannel`].
    pub fn nodes_only(opts: TopologyOptions, suffix: &str) -> TopoResult<Self> {
        let underlay = Netns::new("u", suffix)?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let external = Netns::new("ext", suffix)?;
        attach_to_underlay(&underlay, &external, "pext", EXTERNAL_IP)?;

        let mut topo = Topology {
            suffix: suffix.to_owned(),
            pods: Vec::new(),
            nodes: Vec::new(),
            external,
            underlay,
        };
        topo.add_node("node-a", opts.node_a, Ipv4Addr::new(192, 168, 50, 1), 1)?;
        topo.add_node("node-b", opts.node_b, Ipv4Addr::new(192, 168, 50, 2), 2)?;
        Ok(topo)
    }

    /// Releases every namespace (see [`Netns::leak`]): they stay, with
    /// whatever runs in them. Returns their names.
    pub fn leak(self) -> Vec<String> {
        let Topology {
            pods,
            nodes,
            external,
            underlay,
            ..
        } = self;
        let mut names: Vec<String> = pods.into_iter().map(|p| p.ns.leak()).collect();
        names.extend(nodes.into_iter().map(|n| n.ns.leak()));
        names.push(external.leak());
        names.push(underlay.leak());
        names
    }

    /// Adds a node namespace with `eth0` on the underlay and pod CIDR
    /// `10.244.<subnet>.0/24`.
    pub fn add_node(
        &mut self,
        name: &str,
        kind: NodeKind,
        ip: Ipv4Addr,
        subnet: u8,
    ) -> TopoResult<usize> {
        let short = name.trim_start_matches("node-");
        let ns = Netns::new(name, &self.suffix)?;
        attach_to_underlay(&self.underlay, &ns, &format!("p{short}"), ip)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let mac = ns.mac("eth0")?;
        self.nodes.push(Node {
            name: name.to_owned(),
            kind,
            ip,
            mac,
            pod_net: Ipv4Addr::new(10, 244, subnet, 0),
            gateway: Ipv4Addr::new(10, 244, subnet, 1),
            ns,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Adds a pod on `node` with `ip`, wired the CNI ptp way.
    pub fn add_pod(&mut self, name: &str, node: usize, ip: Ipv4Addr) -> TopoResult<usize> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| format!("no node {node}"))?;
        let ns = Netns::new(name, &self.suffix)?;
        let host_veth = format!("veth{name}");
        veth(&n.ns, &host_veth, &ns, "eth0")?;
        let gw = n.gateway.to_string();
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        checksum_offload_off(&ns, "eth0")?;
        ns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
        ns.ip(&[
            "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
        ])?;
        n.ns.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_veth])?;
        if n.kind == NodeKind::LinuxFlannel {
            // ptp puts the gateway on the host side so the kernel answers ARP.
            n.ns.ip(&["addr", "add", &format!("{gw}/32"), "dev", &host_veth])?;
        }
        let pod = Pod {
            name: name.to_owned(),
            ip,
            node,
            host_ifindex: n.ns.ifindex(&host_veth)?,
            host_mac: n.ns.mac(&host_veth)?,
            mac: ns.mac("eth0")?,
            host_veth,
            ns,
        };
        self.pods.push(pod);
        Ok(self.pods.len() - 1)
    }

    /// Flannel's vxlan wiring on every Linux node toward every other node
    /// (nothing to do when every node runs kxdp).
    pub fn wire_flannel(&self) -> TopoResult<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.kind != NodeKind::LinuxFlannel {
                continue;
            }
            let ns = &node.ns;
            ns.ip(&[
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "1",
                "dstport",
                &VXLAN_PORT.to_string(),
                "local",
                &node.ip.to_string(),
                "dev",
                "eth0",
                "nolearning",
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", node.pod_net),
                "dev",
                "flannel.1",
            ])?;
            ns.ip(&["link", "set", "flannel.1", "up"])?;
            for (j, peer) in self.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                // The VTEP MAC of a kxdp node is its uplink MAC; a Linux
                // peer's would be its flannel.1 MAC.
                let peer_vtep_mac = match peer.kind {
                    NodeKind::Kxdp => peer.mac.clone(),
                    NodeKind::LinuxFlannel => peer.ns.mac("flannel.1").unwrap_or_default(),
                };
                if peer_vtep_mac.is_empty() {
                    continue; // wired when the peer's turn comes
                }
                self.flannel_peer(node, peer, &peer_vtep_mac)?;
            }
        }
        // Second pass: Linux peers whose flannel.1 did not exist yet.
        for (i, node) in self.nodes.iter().enumerate() {
            if node.kind != NodeKind::LinuxFlannel {
                continue;
            }
            for (j, peer) in self.nodes.iter().enumerate() {
                if i != j && peer.kind == NodeKind::LinuxFlannel {
                    let mac = peer.ns.mac("flannel.1")?;
                    self.flannel_peer(node, peer, &mac)?;
                }
            }
        }
        Ok(())
    }

    /// On Linux `node`: route, permanent neighbour and FDB entry for `peer`.
    fn flannel_peer(&self, node: &Node, peer: &Node, vtep_mac: &str) -> TopoResult<()> {
        let ns = &node.ns;
        let net = peer.pod_net.to_string();
        ns.ip(&[
            "route",
            "replace",
            &format!("{net}/24"),
            "via",
            &net,
            "dev",
            "flannel.1",
            "onlink",
        ])?;
        ns.ip(&[
            "neigh",
            "replace",
            &net,
            "lladdr",
            vtep_mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])?;
        ns.exec(
            "bridge",
            &[
                "fdb",
                "replace",
                vtep_mac,
                "dev",
                "flannel.1",
                "dst",
                &peer.ip.to_string(),
                "self",
                "permanent",
            ],
        )?;
        Ok(())
    }

    /// Names of all namespaces of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pods.iter().map(|p| p.ns.name().to_owned()).collect();
        v.extend(self.nodes.iter().map(|n| n.ns.name().to_owned()));
        v.push(self.external.name().to_owned());
        v.push(self.underlay.name().to_owned());
        v
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// `eth0` in `ns` with `ip`/24, its peer `port` enslaved to br0.
fn attach_to_underlay(underlay: &Netns, ns: &Netns, port: &str, ip: Ipv4Addr) -> TopoResult<()> {
    veth(underlay, port, ns, "eth0")?;
    underlay.ip(&["link", "set", port, "master", "br0"])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    checksum_offload_off(ns, "eth0")
}

/// Kernel senders on a veth leave L4 checksums to offload
/// (CHECKSUM_PARTIAL); a frame that reaches an AF_XDP socket carries only
/// the bytes, so the checksum would arrive unfinished. Real NICs finish it
/// on the wire; here every sender computes it in software.
pub fn checksum_offload_off(ns: &Netns, dev: &str) -> TopoResult<()> {
    ns.exec("ethtool", &["-K", dev, "tx", "off"])
        .map(|_| ())
        .map_err(|e| format!("{e} (is ethtool installed?)"))
}

/// Namespaces currently listed by `ip netns list` whose name contains `needle`.
pub fn netns_matching(needle: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.contains(needle))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Sends one UDP datagram from `client` to `server_ip:port` where a kernel
/// socket in `server` echoes it back; Ok when the echo carries the same
/// bytes. Bounded: 3 attempts of 1 s each.
pub fn udp_echo(client: &Netns, server: &Netns, server_ip: Ipv4Addr, port: u16) -> TopoResult<()> {
    use std::net::UdpSocket;
    use std::sync::mpsc;
    use std::time::Duration;

    let (ready_tx, ready_rx) = mpsc::channel();
    let srv = server.spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("bind :{port}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(4)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("server recv on :{port}: {e}"))?;
        sock.send_to(buf.get(..n).unwrap_or(&[]), from)
            .map_err(|e| format!("server send: {e}"))?;
        Ok(())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "echo server did not start".to_string())?;
    let res = client.run_in(move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let msg = format!("kxdp-echo-{port}");
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            sock.send_to(msg.as_bytes(), (server_ip, port))
                .map_err(|e| format!("client send to {server_ip}:{port}: {e}"))?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if buf.get(..n) == Some(msg.as_bytes()) {
                    return Ok(());
                }
            }
        }
        Err(format!("no echo from {server_ip}:{port}"))
    });
    let srv_res = srv.join().map_err(|_| "echo server panicked".to_string())?;
    res.and(srv_res)
}
