//! Running `kxdp run` on a node of the standard topology, and the traffic
//! helpers the end-to-end tests assert with (real kernel sockets in pod
//! namespaces: ICMP echo, TCP echo, connect).
//!
//! [`KxdpProcess`] starts the built binary inside the node's namespace with
//! `ip netns exec` (so it only ever sees that namespace's interfaces),
//! waits for its ready file with a deadline, and on drop sends SIGTERM,
//! waits (bounded), then SIGKILL. Its log is kept in a file and printed
//! when a test fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::topology::{Netns, Node, Pod, TopoResult, Topology};

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TopoResult<Self> {
        let path = std::env::temp_dir().join(format!(
            "kxdp-e2e-{tag}-{}",
            super::topology::unique_suffix()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Manifests describing a topology: Namespace, both Nodes with Flannel
/// annotations (a kxdp node's VTEP MAC is its uplink MAC, a Linux node's
/// is its `flannel.1` MAC), every pod (Running, Ready, labelled
/// `app: <pod name>`, container port 8080 named `http`), plus `extra`
/// documents (Services ...).
pub fn manifests(topo: &Topology, extra: &[String]) -> TopoResult<String> {
    let mut docs =
        vec!["apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string()];
    for n in &topo.nodes {
        docs.push(node_yaml(n)?);
    }
    for p in &topo.pods {
        let node = topo
            .nodes
            .get(p.node)
            .ok_or_else(|| format!("pod {} on missing node", p.name))?;
        docs.push(pod_yaml(p, &node.name));
    }
    docs.extend(extra.iter().cloned());
    Ok(docs.join("---\n"))
}

fn node_yaml(n: &Node) -> TopoResult<String> {
    let vtep_mac = match n.kind {
        super::topology::NodeKind::Kxdp => n.mac.clone(),
        super::topology::NodeKind::LinuxFlannel => n.ns.mac("flannel.1")?,
    };
    Ok(format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    flannel.alpha.coreos.com/backend-data: '{{"VNI":1,"VtepMAC":"{vtep_mac}"}}'
    flannel.alpha.coreos.com/backend-type: vxlan
    flannel.alpha.coreos.com/public-ip: {ip}
spec:
  podCIDR: {net}/24
  podCIDRs:
  - {net}/24
status:
  addresses:
  - type: InternalIP
    address: {ip}
"#,
        name = n.name,
        ip = n.ip,
        net = n.pod_net,
    ))
}

fn pod_yaml(p: &Pod, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    app: {name}
spec:
  nodeName: {node}
  containers:
  - name: main
    image: example
    ports:
    - name: http
      containerPort: 8080
status:
  phase: Running
  conditions:
  - type: Ready
    status: "True"
  podIP: {ip}
  podIPs:
  - ip: {ip}
"#,
        name = p.name,
        ip = p.ip,
    )
}

/// A ClusterIP Service `name` at `ip:port` (TCP) selecting `app: <app>`
/// on target port 8080.
pub fn cluster_ip_service(name: &str, ip: Ipv4Addr, port: u16, app: &str) -> String {
    cluster_ip_service_proto(name, ip, port, app, "TCP")
}

/// Like [`cluster_ip_service`] with protocol `proto` (`TCP`, `UDP`, `SCTP`).
pub fn cluster_ip_service_proto(
    name: &str,
    ip: Ipv4Addr,
    port: u16,
    app: &str,
    proto: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {ip}
  clusterIPs:
  - {ip}
  selector:
    app: {app}
  ports:
  - name: http
    protocol: {proto}
    port: {port}
    targetPort: 8080
"#
    )
}

/// A NodePort Service `name` at `ip:port`, node port `node_port` (TCP),
/// externalTrafficPolicy Cluster, selecting `app: <app>` on target port 8080.
pub fn node_port_service(name: &str, ip: Ipv4Addr, port: u16, node_port: u16, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: NodePort
  clusterIP: {ip}
  clusterIPs:
  - {ip}
  externalTrafficPolicy: Cluster
  selector:
    app: {app}
  ports:
  - name: http
    protocol: TCP
    port: {port}
    targetPort: 8080
    nodePort: {node_port}
"#
    )
}

/// `kxdp run` in a node namespace; stopped on drop.
#[derive(Debug)]
pub struct KxdpProcess {
    child: Option<Child>,
    pub log: PathBuf,
    pub ready_file: PathBuf,
}

impl KxdpProcess {
    /// Starts `kxdp run --node NODE --uplink eth0 --manifests FILE` in
    /// `node`'s namespace with `extra` arguments and waits up to `timeout`
    /// for it to be ready.
    pub fn start(
        node: &Node,
        manifests: &Path,
        dir: &Path,
        extra: &[&str],
        timeout: Duration,
    ) -> TopoResult<Self> {
        let manifests_s = manifests.to_string_lossy().into_owned();
        let mut args = vec!["--manifests", manifests_s.as_str()];
        args.extend_from_slice(extra);
        let mut p = Self::spawn(node, dir, &args)?;
        p.wait_ready(timeout)?;
        Ok(p)
    }

    /// Starts `kxdp run --node NODE --uplink eth0 --ready-file FILE` plus
    /// `args` (the source, e.g. `--kubeconfig FILE`, and other flags) in
    /// `node`'s namespace without waiting for it to be ready; see
    /// [`KxdpProcess::wait_ready`].
    pub fn spawn(node: &Node, dir: &Path, args: &[&str]) -> TopoResult<Self> {
        let log = dir.join(format!("kxdp-{}.log", node.name));
        let ready_file = dir.join(format!("kxdp-{}.ready", node.name));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let ready_s = ready_file.to_string_lossy().into_owned();
        let mut full = vec![
            "netns",
            "exec",
            node.ns.name(),
            env!("CARGO_BIN_EXE_kxdp"),
            "run",
            "--node",
            &node.name,
            "--uplink",
            "eth0",
            "--ready-file",
            &ready_s,
        ];
        full.extend_from_slice(args);
        let child = Command::new("ip")
            .args(&full)
            .env("RUST_LOG", "info,kxdp_control=info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| format!("spawn kxdp: {e}"))?;
        Ok(KxdpProcess {
            child: Some(child),
            log,
            ready_file,
        })
    }

    /// Waits up to `timeout` for the ready file; Err (with the log) when
    /// the process exits or the deadline passes first.
    pub fn wait_ready(&mut self, timeout: Duration) -> TopoResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready_file.exists() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "kxdp exited early ({status}):\n{}",
                        self.log_text()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "kxdp not ready after {timeout:?}:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL. Returns the exit status code
    /// (None when it had to be killed).
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for KxdpProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One ICMP echo from `from` to `dst` through a raw socket; Ok when a
/// matching echo reply comes back from `dst`. Bounded: `tries` × 1 s.
pub fn ping(from: &Netns, dst: Ipv4Addr, tries: u32) -> TopoResult<()> {
    from.run_in(move || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map_err(|e| format!("raw socket: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
        for seq in 1..=tries.max(1) as u16 {
            let mut req = vec![8u8, 0, 0, 0];
            req.extend_from_slice(&id.to_be_bytes());
            req.extend_from_slice(&seq.to_be_bytes());
            req.extend_from_slice(b"kxdp-e2e-ping-payload");
            let ck = inet_checksum(&req);
            req[2..4].copy_from_slice(&ck.to_be_bytes());
            sock.send_to(&req, &SockAddr::from(SocketAddr::from((dst, 0))))
                .map_err(|e| format!("send echo to {dst}: {e}"))?;
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                // A raw IPv4 socket reads whole packets, IP header first:
                // the source address comes from the header.
                let mut buf = [0u8; 2048];
                let Ok(n) = (&sock).read(&mut buf) else {
                    continue;
                };
                let bytes = &buf[..n];
                let ihl = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
                let src = bytes
                    .get(12..16)
                    .map(|s| Ipv4Addr::new(s[0], s[1], s[2], s[3]));
                let icmp = bytes.get(ihl..).unwrap_or(&[]);
                if src == Some(dst)
                    && icmp.len() >= 8
                    && icmp[0] == 0
                    && icmp[4..6] == id.to_be_bytes()
                    && icmp[6..8] == seq.to_be_bytes()
                {
                    return Ok(());
                }
            }
        }
        Err(format!("no echo reply from {dst} after {tries} tries"))
    })
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP echo server in `ns` on `port`, serving one connection, bounded
/// by `timeout`. Returns once it listens.
pub fn tcp_echo_server(
    ns: &Netns,
    port: u16,
    timeout: Duration,
) -> TopoResult<std::thread::JoinHandle<TopoResult<usize>>> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind :{port}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = tx.send(());
        let deadline = Instant::now() + timeout;
        let (mut s, _) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(format!("no connection on :{port} within {timeout:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut total = 0;
        let mut buf = [0u8; 16384];
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("server read: {e}"))?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])
                .map_err(|e| format!("server write: {e}"))?;
            total += n;
        }
        Ok(total)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| "echo server did not start".to_string())?;
    Ok(h)
}

/// Connects from `ns` to `dst:port`, sends `len` bytes, half-closes, and
/// checks the same bytes come back. Bounded by `timeout`.
pub fn tcp_echo_client(
    ns: &Netns,
    dst: Ipv4Addr,
    port: u16,
    len: usize,
    timeout: Duration,
) -> TopoResult<()> {
    ns.run_in(move || {
        let data: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
            .collect();
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), timeout)
            .map_err(|e| format!("connect {dst}:{port}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut r = s.try_clone().map_err(|e| e.to_string())?;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::with_capacity(len);
            r.read_to_end(&mut got).map(|_| got)
        });
        s.write_all(&data)
            .map_err(|e| format!("client write: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let got = reader
            .join()
            .map_err(|_| "reader panicked".to_string())?
            .map_err(|e| format!("client read from {dst}:{port}: {e}"))?;
        if got != data {
            return Err(format!(
                "echo from {dst}:{port}: got {} bytes, sent {len}, equal prefix {}",
                got.len(),
                got.iter().zip(&data).take_while(|(a, b)| a == b).count()
            ));
        }
        Ok(())
    })
}

/// A TCP connect from `ns` to `dst:port`; the error kind and how long it
/// took.
pub fn tcp_connect_result(
    ns: &Netns,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> TopoResult<(Result<(), std::io::ErrorKind>, Duration)> {
    ns.run_in(move || {
        let t0 = Instant::now();
        let r = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), timeout)
            .map(|_| ())
            .map_err(|e| e.kind());
        Ok((r, t0.elapsed()))
    })
}

/// `GET path` on the admin API at `addr` from inside `ns` (HTTP/1.0, no
/// client library); returns the body. Bounded by 5 s.
pub fn admin_get(ns: &Netns, addr: SocketAddr, path: &str) -> TopoResult<String> {
    let path = path.to_owned();
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read {path}: {e}"))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_owned())
    })
}

/// `GET path` on the admin API at `addr` from inside `ns` (HTTP/1.0);
/// returns the status code and body whatever the status. Bounded by 5 s.
pub fn admin_request(ns: &Netns, addr: SocketAddr, path: &str) -> TopoResult<(u16, String)> {
    let path = path.to_owned();
    ns.run_in(move || http_get(addr, &path))
}

/// `GET path` at `addr` (HTTP/1.0, in the calling thread's namespace);
/// the status code and body. Bounded by 5 s.
pub fn http_get(addr: SocketAddr, path: &str) -> TopoResult<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read {path}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status line in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// The value of the Prometheus sample `name{labels}` (exact series text,
/// e.g. `kxdp_forward_packets_total{direction="to-pod"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Writes `text` to `path` by renaming a temporary file over it (what
/// editors do; the manifests watcher sees one change).
pub fn replace_file(path: &Path, text: &str) -> TopoResult<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename {}: {e}", tmp.display()))
}

/// The standard topology with node-a running `kxdp run` on a manifests file
/// written from it (plus `extra` objects): the fixture the e2e tests start
/// from. Dropping it stops kxdp and tears the topology down.
pub struct KxdpCluster {
    pub kxdp: KxdpProcess,
    pub topo: Topology,
    /// The manifests file kxdp watches (edit it to change the cluster).
    pub manifests: PathBuf,
    pub dir: TempDir,
}

impl KxdpCluster {
    /// Build the topology, write the manifests and start kxdp on node-a
    /// with `extra_args`, waiting until it is ready.
    pub fn start(tag: &str, extra: &[String], extra_args: &[&str]) -> TopoResult<Self> {
        let topo = Topology::standard(super::topology::TopologyOptions::default())?;
        Self::start_on(topo, tag, extra, extra_args)
    }

    /// [`KxdpCluster::start`] on a standard topology the caller built (and
    /// possibly changed, e.g. a multi-queue uplink).
    pub fn start_on(
        topo: Topology,
        tag: &str,
        extra: &[String],
        extra_args: &[&str],
    ) -> TopoResult<Self> {
        let dir = TempDir::new(tag)?;
        let path = dir.path.join("cluster.yaml");
        std::fs::write(&path, manifests(&topo, extra)?)
            .map_err(|e| format!("write manifests: {e}"))?;
        let node_a = topo.node("node-a").ok_or("no node-a")?;
        let kxdp = KxdpProcess::start(
            node_a,
            &path,
            &dir.path,
            extra_args,
            Duration::from_secs(30),
        )?;
        Ok(KxdpCluster {
            kxdp,
            topo,
            manifests: path,
            dir,
        })
    }

    /// A pod of the standard topology.
    pub fn pod(&self, name: &str) -> &Pod {
        self.topo.pod(name).expect("pod of the standard topology")
    }

    /// The node running kxdp.
    pub fn node_a(&self) -> &Node {
        self.topo.node("node-a").expect("node-a")
    }

    /// Turns an error into a panic message carrying kxdp's log.
    pub fn check<T>(&mut self, what: &str, r: TopoResult<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                let alive = self.kxdp.running();
                panic!(
                    "{what}: {e}\n--- kxdp (running: {alive}) log ---\n{}",
                    self.kxdp.log_text()
                )
            }
        }
    }
}
