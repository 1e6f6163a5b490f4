//! One mode's topology: namespaces, rules, kxdp or the XDP redirect
//! program, pinning, sinks and the counters a run reads. Dropped in field
//! order: kxdp, the XDP redirect program (detached while its namespaces
//! still exist), sinks, topology (namespaces and everything in them),
//! scratch directory.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kxdp_dataplane::worker::monotonic_ns;
use kxdp_ffi::redirect::{FwdMacs, RedirectProgram};
use kxdp_ffi::xdp::{AttachMode, Interface};
use kxdp_topology::{
    unique_suffix, veth, Netns, NodeKind, TopoResult, Topology, TopologyOptions, VXLAN_PORT,
};

use super::extgen;
use super::gen::{self, FlowAddr, GenReport, VxlanOuter};
use super::kube_rules::{self, ServicePort};
use super::latency::{LatencyRecorder, LatencyResult};
use super::{
    service_ip, BenchConfig, GeneratorKind, HarnessError, Mode, SERVICE_PORT, SRC_PORT_BASE,
    TARGET_PORT,
};

const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SINK_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 2, 2), Ipv4Addr::new(10, 244, 2, 3)];
const DIRECT_GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const DIRECT_SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The underlay bridge's port facing node-a's uplink (the peer of node-a's
/// `eth0`).
const UPLINK_PEER: &str = "pa";
/// Longest a sink socket is held (every run ends far earlier).
const SINK_MAX_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// Longest kxdp may take to become ready (10k+ Services compile).
const KXDP_READY_TIMEOUT: Duration = Duration::from_secs(120);

fn topo_err(e: String) -> HarnessError {
    HarnessError::Topology(e)
}

/// Counters read before and after a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Packets received by the sink interfaces.
    pub sink_rx: u64,
    /// UDP datagrams that reached the sinks' UDP layer (InDatagrams +
    /// RcvbufErrors): proof the packets were well-formed.
    pub sink_udp: u64,
    /// Packets node-a received on the generator's host veth.
    pub dut_in: u64,
    /// Packets node-a sent on its uplink.
    pub dut_out: u64,
    /// Drops the kernel counted on the generator's veth and node-a.
    pub drops: u64,
    /// The DUT core's busy and total time in clock ticks (`/proc/stat`):
    /// everything it ran, user, system, softirq and irq alike.
    pub dut_busy_ticks: u64,
    pub dut_total_ticks: u64,
}

/// `(busy, total)` clock ticks of `cpu` from `/proc/stat` text: busy is
/// user + nice + system + irq + softirq + steal; total adds idle and
/// iowait.
pub fn cpu_ticks(proc_stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{cpu}");
    let line = proc_stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = f(0) + f(1) + f(2) + f(5) + f(6) + f(7);
    Some((busy, busy + f(3) + f(4)))
}

/// UDP sockets on port 8080 in the sink pods, so the sink's kernel neither
/// answers with ICMP port unreachable nor needs a reader: datagrams beyond
/// the receive buffer are counted in `RcvbufErrors` and dropped.
///
/// During a latency run (`latency` recording) the sinks read every
/// datagram and time it; otherwise they never read, so throughput runs
/// cost the sink core nothing beyond the kernel's receive path.
struct Sinks {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<TopoResult<()>>>,
    latency: Arc<LatencyRecorder>,
}

impl Sinks {
    fn start(namespaces: &[&Netns]) -> Result<Self, HarnessError> {
        let stop = Arc::new(AtomicBool::new(false));
        let latency = Arc::new(LatencyRecorder::default());
        let mut threads = Vec::new();
        let mut sinks = Sinks {
            stop: stop.clone(),
            threads: Vec::new(),
            latency: latency.clone(),
        };
        for ns in namespaces {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let latency = latency.clone();
            threads.push(ns.spawn(move || {
                let sock = UdpSocket::bind(("0.0.0.0", TARGET_PORT)).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(20)))
                        .map(|()| s)
                });
                let _ = tx.send(sock.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                let Ok(sock) = sock else {
                    return Ok(());
                };
                let until = Instant::now() + SINK_MAX_LIFETIME;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    if !latency.recording() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    if let Ok(n) = sock.recv(&mut buf) {
                        latency.record(buf.get(..n).unwrap_or(&[]), monotonic_ns());
                    }
                }
                drop(sock);
                Ok(())
            }));
            let bound = rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| topo_err("sink socket did not start".into()))
                .and_then(|r| r.map_err(|e| topo_err(format!("sink bind: {e}"))));
            sinks.threads.append(&mut threads);
            bound?;
        }
        Ok(sinks)
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `kxdp run` in node-a, pinned to the DUT core; SIGTERM then SIGKILL on
/// drop.
struct KxdpChild {
    child: Child,
    log: PathBuf,
}

impl KxdpChild {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for KxdpChild {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory (manifests, kxdp's log) removed on drop, unless
/// `KXDP_BENCH_KEEP` is set in the environment (to read kxdp's log after
/// a run).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("KXDP_BENCH_KEEP").is_some() {
            eprintln!("kxdp-bench: kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The topology of one mode, ready to measure.
pub struct Testbed {
    kxdp: Option<KxdpChild>,
    /// `xdp-redirect`: the program on node-a's pod veth and on the
    /// underlay's peer of node-a's uplink.
    xdp: Option<RedirectProgram>,
    sinks: Sinks,
    topo: Topology,
    dir: ScratchDir,
    gen_core: usize,
    dut_core: usize,
    generator: GeneratorKind,
    frame_len: usize,
    endpoints: usize,
    /// Pinning and setup facts worth reporting.
    pub notes: Vec<String>,
}

impl Testbed {
    /// Builds the topology for `mode` with `services` Services.
    pub fn build(cfg: &BenchConfig, mode: Mode, services: usize) -> Result<Self, HarnessError> {
        let suffix = format!("b{}", unique_suffix());
        let dir = std::env::temp_dir().join(format!("kxdp-bench-{suffix}"));
        std::fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
            what: format!("mkdir {}", dir.display()),
            source,
        })?;
        let dir = ScratchDir(dir);
        let opts = TopologyOptions {
            // xdp-redirect: node-a's kernel needs no VXLAN device either
            // (the frames arrive encapsulated), and node-b's VTEP entry for
            // node-a is then its uplink MAC, as for kxdp-null.
            node_a: if mode.runs_kxdp() || mode == Mode::XdpRedirect {
                NodeKind::Kxdp
            } else {
                NodeKind::LinuxFlannel
            },
            node_b: NodeKind::LinuxFlannel,
        };
        let mut topo = Topology::nodes_only(opts, &suffix).map_err(topo_err)?;
        topo.add_pod("g", 0, GEN_IP).map_err(topo_err)?;
        for (i, ip) in SINK_IPS.iter().enumerate().take(cfg.endpoints) {
            topo.add_pod(&format!("s{}", i + 1), 1, *ip)
                .map_err(topo_err)?;
        }
        topo.wire_flannel().map_err(topo_err)?;
        let mut notes = Vec::new();
        let (g, s1) = (pod_ns(&topo, "g")?, pod_ns(&topo, "s1")?);
        if mode == Mode::Direct {
            veth(g, "bd0", s1, "bd1").map_err(topo_err)?;
            s1.ip(&["addr", "add", &format!("{DIRECT_SINK_IP}/30"), "dev", "bd1"])
                .map_err(topo_err)?;
            g.ip(&["addr", "add", &format!("{DIRECT_GEN_IP}/30"), "dev", "bd0"])
                .map_err(topo_err)?;
        }
        let sink_ns: Vec<&Netns> = topo
            .pods
            .iter()
            .filter(|p| p.node == 1)
            .map(|p| &p.ns)
            .collect();
        let sinks = Sinks::start(&sink_ns)?;
        let mut bed = Testbed {
            kxdp: None,
            xdp: None,
            sinks,
            topo,
            dir,
            gen_core: cfg.gen_core,
            dut_core: cfg.dut_core,
            generator: cfg.generator,
            frame_len: cfg.frame_len,
            endpoints: cfg.endpoints,
            notes: Vec::new(),
        };
        let svc = service_ports(services, cfg.endpoints);
        match mode {
            Mode::KernelIptables => {
                let path = bed.dir.0.join("kube-proxy.iptables");
                write(&path, &kube_rules::iptables_restore(&svc, CLUSTER_CIDR))?;
                let t0 = Instant::now();
                bed.node_a()?
                    .exec("iptables-restore", &[&path.to_string_lossy()])
                    .map_err(topo_err)?;
                notes.push(format!(
                    "kernel-iptables: {} ({services} Services loaded in {:.1} s with one iptables-restore)",
                    iptables_version(),
                    t0.elapsed().as_secs_f64()
                ));
            }
            Mode::KernelNftables => {
                let path = bed.dir.0.join("kube-proxy.nft");
                write(&path, &kube_rules::nftables(&svc, CLUSTER_CIDR))?;
                let t0 = Instant::now();
                bed.node_a()?
                    .exec("nft", &["-f", &path.to_string_lossy()])
                    .map_err(topo_err)?;
                notes.push(format!(
                    "kernel-nftables: {services} Services loaded in {:.1} s with one nft -f",
                    t0.elapsed().as_secs_f64()
                ));
            }
            Mode::Kxdp | Mode::KxdpNull => {
                let child = bed.start_kxdp(cfg, mode, services)?;
                bed.kxdp = Some(child);
            }
            Mode::XdpRedirect => {
                let (prog, note) = bed.start_xdp_redirect()?;
                bed.xdp = Some(prog);
                notes.push(note);
            }
            Mode::Direct | Mode::KernelFwd => {}
        }
        notes.extend(bed.pin(cfg, mode));
        if cfg.all_new && !mode.sends_vxlan() {
            notes.push(format!(
                "{}: all-new flows: every packet a new source port, {} distinct 5-tuples per flow template before one repeats",
                mode.name(),
                gen::new_flow_budget(1)
            ));
        }
        bed.notes = notes;
        Ok(bed)
    }

    fn node(&self, name: &str) -> Result<&kxdp_topology::Node, HarnessError> {
        self.topo
            .node(name)
            .ok_or_else(|| topo_err(format!("no {name}")))
    }

    fn node_a(&self) -> Result<&Netns, HarnessError> {
        self.node("node-a").map(|n| &n.ns)
    }

    /// `xdp-redirect`: node-a's kernel stops forwarding (so whatever is
    /// delivered went through the XDP redirect), `redirect_fwd` goes on
    /// node-a's pod veth (MACs: node-a's uplink -> node-b's uplink; egress:
    /// node-a's `eth0`) and `redirect_pass` on `pa`, the underlay's end of
    /// node-a's uplink: without a program (or GRO) there, veth drops every
    /// frame redirected into `eth0` (ffi `redirect` module docs).
    fn start_xdp_redirect(&self) -> Result<(RedirectProgram, String), HarnessError> {
        let (a, b) = (self.node("node-a")?, self.node("node-b")?);
        let host_veth = self
            .topo
            .pod("g")
            .ok_or_else(|| topo_err("no pod g".into()))?
            .host_veth
            .clone();
        let mac = |s: &str| gen::parse_mac(s).ok_or_else(|| topo_err(format!("bad MAC {s:?}")));
        let macs = FwdMacs {
            src: mac(&a.mac)?,
            dst: mac(&b.mac)?,
        };
        a.ns.sysctl("net.ipv4.ip_forward", "0").map_err(topo_err)?;
        let hv = host_veth.clone();
        let prog =
            a.ns.run_in(move || {
                let mut prog = RedirectProgram::load().map_err(|e| e.to_string())?;
                let ingress = Interface::lookup(&hv).map_err(|e| e.to_string())?;
                let egress = Interface::lookup("eth0").map_err(|e| e.to_string())?;
                prog.forward(&ingress, &egress, macs, AttachMode::Native)
                    .map_err(|e| e.to_string())?;
                Ok(prog)
            })
            .map_err(|e| topo_err(format!("xdp-redirect on node-a: {e}")))?;
        let prog = self
            .topo
            .underlay
            .run_in(move || {
                let mut prog = prog;
                let peer = Interface::lookup(UPLINK_PEER).map_err(|e| e.to_string())?;
                prog.attach_pass(&peer, AttachMode::Native)
                    .map_err(|e| e.to_string())?;
                Ok(prog)
            })
            .map_err(|e| topo_err(format!("xdp-redirect pass program on {UPLINK_PEER}: {e}")))?;
        Ok((
            prog,
            format!(
                "xdp-redirect: node-a ip_forward=0; XDP redirect_fwd (native) on {host_veth}: MACs {} -> {}, bpf_redirect_map to eth0; XDP_PASS program on the underlay's {UPLINK_PEER} (veth needs NAPI on the peer of a redirect target)",
                a.mac, b.mac
            ),
        ))
    }

    fn start_kxdp(
        &self,
        cfg: &BenchConfig,
        mode: Mode,
        services: usize,
    ) -> Result<KxdpChild, HarnessError> {
        let bin = match &cfg.kxdp {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("kxdp")))
                .ok_or_else(|| HarnessError::Kxdp("cannot locate the kxdp binary".into()))?,
        };
        if !bin.is_file() {
            return Err(HarnessError::Kxdp(format!(
                "{} not found (build it: cargo build --release -p kxdp, or pass --kxdp)",
                bin.display()
            )));
        }
        let node = self.node("node-a")?;
        let gen_pod = self
            .topo
            .pod("g")
            .ok_or_else(|| topo_err("no pod g".into()))?;
        let manifests = self.dir.0.join("cluster.yaml");
        write(&manifests, &self.manifests(services)?)?;
        let ready = self.dir.0.join("kxdp.ready");
        let log = self.dir.0.join("kxdp.log");
        let out = std::fs::File::create(&log).map_err(|source| HarnessError::Io {
            what: format!("create {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| HarnessError::Io {
            what: "dup log".into(),
            source,
        })?;
        let core = cfg.dut_core.to_string();
        let mut args: Vec<String> = vec![
            "-c".into(),
            core.clone(),
            "ip".into(),
            "netns".into(),
            "exec".into(),
            node.ns.name().into(),
            bin.to_string_lossy().into_owned(),
            "run".into(),
            "--node".into(),
            node.name.clone(),
            "--uplink".into(),
            "eth0".into(),
            "--cores".into(),
            core,
            "--ready-file".into(),
            ready.to_string_lossy().into_owned(),
        ];
        if mode == Mode::KxdpNull {
            args.extend([
                "--null-pipeline".into(),
                "--null-pair".into(),
                format!("{},eth0", gen_pod.host_veth),
            ]);
        } else {
            args.extend([
                "--manifests".into(),
                manifests.to_string_lossy().into_owned(),
            ]);
        }
        if cfg.busy_poll {
            args.push("--busy-poll".into());
        }
        if let Some(p) = cfg.rt_priority {
            args.extend(["--rt-priority".into(), p.to_string()]);
        }
        args.extend(cfg.kxdp_args.iter().cloned());
        let child = Command::new("taskset")
            .args(&args)
            // Info: the log ends with kxdp's per-socket statistics.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| HarnessError::Kxdp(format!("spawn taskset/kxdp: {e}")))?;
        let mut child = KxdpChild { child, log };
        let deadline = Instant::now() + KXDP_READY_TIMEOUT;
        while !ready.exists() {
            if let Ok(Some(status)) = child.child.try_wait() {
                return Err(HarnessError::Kxdp(format!(
                    "exited early ({status}):\n{}",
                    child.log_tail()
                )));
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Kxdp(format!(
                    "not ready after {KXDP_READY_TIMEOUT:?}:\n{}",
                    child.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }

    /// Manifests for kxdp: both nodes with Flannel annotations, the pods,
    /// and `services` UDP ClusterIP Services selecting the sink pods.
    fn manifests(&self, services: usize) -> Result<String, HarnessError> {
        let mut docs =
            vec!["apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string()];
        for n in &self.topo.nodes {
            let vtep = match n.kind {
                NodeKind::Kxdp => n.mac.clone(),
                NodeKind::LinuxFlannel => n.ns.mac("flannel.1").map_err(topo_err)?,
            };
            docs.push(format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    flannel.alpha.coreos.com/backend-data: '{{\"VNI\":1,\"VtepMAC\":\"{vtep}\"}}'\n    flannel.alpha.coreos.com/backend-type: vxlan\n    flannel.alpha.coreos.com/public-ip: {ip}\nspec:\n  podCIDR: {net}/24\n  podCIDRs:\n  - {net}/24\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n",
                name = n.name,
                ip = n.ip,
                net = n.pod_net
            ));
        }
        for p in &self.topo.pods {
            let node = self
                .topo
                .nodes
                .get(p.node)
                .ok_or_else(|| topo_err(format!("pod {} without node", p.name)))?;
            let app = if p.name == "g" { "gen" } else { "sink" };
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: example\n    ports:\n    - name: p\n      containerPort: {TARGET_PORT}\n      protocol: UDP\nstatus:\n  phase: Running\n  conditions:\n  - type: Ready\n    status: \"True\"\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
                name = p.name,
                node = node.name,
                ip = p.ip
            ));
        }
        for i in 0..services {
            docs.push(format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: default\nspec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n  selector:\n    app: sink\n  ports:\n  - name: p\n    protocol: UDP\n    port: {SERVICE_PORT}\n    targetPort: {TARGET_PORT}\n",
                ip = service_ip(i)
            ));
        }
        Ok(docs.join("---\n"))
    }

    /// Pins the DUT's packet processing to `dut_core` and the sink side to
    /// `gen_core`; returns what was done, for the report.
    fn pin(&self, cfg: &BenchConfig, mode: Mode) -> Vec<String> {
        let mut notes = Vec::new();
        let (dut, genc) = (cfg.dut_core, cfg.gen_core);
        let Ok(node_a) = self.node_a() else {
            return notes;
        };
        let Some(g) = self.topo.pod("g") else {
            return notes;
        };
        // What node-a sends on its uplink is processed by the underlay
        // bridge and node-b: steer it to the sink core with RPS.
        let port = UPLINK_PEER;
        match set_rps(&self.topo.underlay, port, genc) {
            Ok(()) => notes.push(format!(
                "underlay port {port} (node-a's uplink peer): RPS to CPU {genc}, so bridge, node-b and sinks run on the generator/sink core"
            )),
            Err(e) => notes.push(format!("RPS on underlay {port}: {e}")),
        }
        match mode {
            Mode::Direct => {}
            Mode::KernelFwd | Mode::KernelIptables | Mode::KernelNftables => {
                // veth without XDP/GRO has no NAPI: the receive side runs
                // from the backlog of the sending CPU unless RPS moves it.
                match set_rps(node_a, &g.host_veth, dut) {
                    Ok(()) => notes.push(format!(
                        "kernel modes: node-a's pod veth RPS to CPU {dut} (the kernel DUT's forwarding runs in NET_RX softirq there)"
                    )),
                    Err(e) => notes.push(format!("RPS on node-a {}: {e}", g.host_veth)),
                }
            }
            Mode::XdpRedirect => {
                // The XDP_PASS program gives `pa` a NAPI instance. The
                // redirect schedules it on the DUT core, where its poll
                // (xdp_frame -> skb for the bridge) runs in softirq and is
                // counted as DUT time, as kxdp-null's transmit pays for
                // the skb it hands `pa`; RPS on `pa` (above) then moves
                // the bridge, node-b and the sinks to the sink core in
                // both modes alike. (A threaded NAPI kthread on the sink
                // core instead competes there with the generator under
                // CFS where softirq would preempt it: measured, it lost
                // ~40% of the frames at `pa`'s ring.)
                notes.push(format!(
                    "xdp-redirect: underlay {port}'s NAPI (XDP_PASS) runs in softirq where node-a's redirect schedules it: CPU {dut}"
                ));
                notes.extend(pin_dut_napi(node_a, &g.host_veth, dut, cfg.threaded_napi, mode));
            }
            Mode::KxdpNull | Mode::Kxdp if cfg.busy_poll => notes.push(format!(
                "kxdp modes: kxdp --busy-poll: its worker (CPU {dut}) runs the pod veth's NAPI; kxdp set threaded NAPI off, napi_defer_hard_irqs and gro_flush_timeout on the interfaces it serves"
            )),
            Mode::KxdpNull | Mode::Kxdp if !cfg.threaded_napi => notes.push(format!(
                "kxdp modes: threaded NAPI off (config): the pod veth's NAPI runs on the generator core; kxdp process and worker pinned to CPU {dut}"
            )),
            Mode::KxdpNull | Mode::Kxdp => {
                notes.extend(pin_dut_napi(node_a, &g.host_veth, dut, true, mode));
            }
        }
        notes
    }

    /// One frame per flow for `mode`.
    pub fn frames(
        &self,
        mode: Mode,
        services: usize,
        flows: usize,
    ) -> Result<Vec<Vec<u8>>, HarnessError> {
        let g = self
            .topo
            .pod("g")
            .ok_or_else(|| topo_err("no pod g".into()))?;
        let mac = |s: &str| gen::parse_mac(s).ok_or_else(|| topo_err(format!("bad MAC {s:?}")));
        let sinks: Vec<Ipv4Addr> = self
            .topo
            .pods
            .iter()
            .filter(|p| p.node == 1)
            .map(|p| p.ip)
            .collect();
        let frame_len = self.frame_len;
        let mut out = Vec::with_capacity(flows);
        for i in 0..flows {
            let src_port = SRC_PORT_BASE.wrapping_add(i as u16);
            let sink = sinks
                .get(i % sinks.len().max(1))
                .copied()
                .unwrap_or(SINK_IPS[0]);
            let frame = match mode {
                Mode::Direct => {
                    let s1 = pod_ns(&self.topo, "s1")?;
                    let f = FlowAddr {
                        src_mac: mac(&g.ns.mac("bd0").map_err(topo_err)?)?,
                        dst_mac: mac(&s1.mac("bd1").map_err(topo_err)?)?,
                        src_ip: DIRECT_GEN_IP,
                        dst_ip: DIRECT_SINK_IP,
                        src_port,
                        dst_port: TARGET_PORT,
                    };
                    gen::plain_frame(&f, 64, frame_len)?
                }
                Mode::KernelFwd => gen::plain_frame(
                    &FlowAddr {
                        src_mac: mac(&g.mac)?,
                        dst_mac: mac(&g.host_mac)?,
                        src_ip: g.ip,
                        dst_ip: sink,
                        src_port,
                        dst_port: TARGET_PORT,
                    },
                    64,
                    frame_len,
                )?,
                Mode::KernelIptables | Mode::KernelNftables | Mode::Kxdp => gen::plain_frame(
                    &FlowAddr {
                        src_mac: mac(&g.mac)?,
                        dst_mac: mac(&g.host_mac)?,
                        src_ip: g.ip,
                        dst_ip: service_ip(i % services.max(1)),
                        src_port,
                        dst_port: SERVICE_PORT,
                    },
                    64,
                    frame_len,
                )?,
                Mode::KxdpNull | Mode::XdpRedirect => {
                    // What node-a's full pipeline emits for this flow.
                    // xdp-redirect: addressed to node-a's pod veth (its
                    // program writes the uplink MACs); kxdp-null forwards
                    // frames unchanged, so they carry them already.
                    let (a, b) = (self.node("node-a")?, self.node("node-b")?);
                    let inner = gen::plain_frame(
                        &FlowAddr {
                            src_mac: mac(&a.mac)?,
                            dst_mac: mac(&b.ns.mac("flannel.1").map_err(topo_err)?)?,
                            src_ip: g.ip,
                            dst_ip: sink,
                            src_port,
                            dst_port: TARGET_PORT,
                        },
                        63,
                        frame_len,
                    )?;
                    let (src_mac, dst_mac) = if mode == Mode::XdpRedirect {
                        (mac(&g.mac)?, mac(&g.host_mac)?)
                    } else {
                        (mac(&a.mac)?, mac(&b.mac)?)
                    };
                    let outer = VxlanOuter {
                        src_mac,
                        dst_mac,
                        src_ip: a.ip,
                        dst_ip: b.ip,
                        dst_port: VXLAN_PORT,
                        vni: 1,
                    };
                    gen::vxlan_frame(&outer, &inner, src_port)?
                }
            };
            out.push(frame);
        }
        Ok(out)
    }

    /// Destinations for the UDP-socket fallback generator.
    pub fn udp_targets(&self, mode: Mode, services: usize, flows: usize) -> Vec<(Ipv4Addr, u16)> {
        let n = flows.min(gen::UDP_MAX_SOCKETS);
        (0..n)
            .map(|i| match mode {
                Mode::Direct => (DIRECT_SINK_IP, TARGET_PORT),
                Mode::KernelFwd | Mode::KxdpNull | Mode::XdpRedirect => (
                    SINK_IPS
                        .get(i % self.endpoints)
                        .copied()
                        .unwrap_or(SINK_IPS[0]),
                    TARGET_PORT,
                ),
                _ => (service_ip(i % services.max(1)), SERVICE_PORT),
            })
            .collect()
    }

    /// Sends `frames` from the generator pod for `duration` on a thread
    /// pinned to the generator core: the AF_XDP generator, or kernel UDP
    /// sockets to `udp_targets` when configured or when AF_XDP fails
    /// (never for `kxdp-null` and `xdp-redirect`, whose frames only AF_XDP
    /// can send).
    pub fn generate(
        &self,
        mode: Mode,
        frames: &[Vec<u8>],
        udp_targets: &[(Ipv4Addr, u16)],
        duration: Duration,
        cfg: &BenchConfig,
    ) -> Result<GenReport, HarnessError> {
        self.generate_paced(mode, frames, udp_targets, duration, cfg, None)
    }

    /// A latency run: `pps` packets/s, each timed from the generator to a
    /// sink socket. AF_XDP generator only.
    pub fn latency_run(
        &self,
        mode: Mode,
        frames: &[Vec<u8>],
        duration: Duration,
        cfg: &BenchConfig,
        pps: u64,
    ) -> Result<LatencyResult, HarnessError> {
        let paced = gen::Paced {
            pps,
            payload_len: cfg.frame_len.saturating_sub(42),
            vxlan: mode.sends_vxlan(),
        };
        let rec = &self.sinks.latency;
        rec.start();
        let g = self.generate_paced(mode, frames, &[], duration, cfg, Some(paced));
        std::thread::sleep(Duration::from_millis(150));
        let h = rec.stop();
        let g = g?;
        if !g.generator.starts_with("afxdp") {
            return Err(HarnessError::Gen(gen::GenError::AfXdp {
                ifname: "eth0".into(),
                reason: format!(
                    "latency runs need the AF_XDP generator, got {}",
                    g.generator
                ),
            }));
        }
        Ok(LatencyResult::from_histogram(&h, pps, g.sent))
    }

    fn generate_paced(
        &self,
        mode: Mode,
        frames: &[Vec<u8>],
        udp_targets: &[(Ipv4Addr, u16)],
        duration: Duration,
        cfg: &BenchConfig,
        paced: Option<gen::Paced>,
    ) -> Result<GenReport, HarnessError> {
        if self.generator.is_external() && paced.is_none() {
            return self.generate_external(mode, frames, duration, cfg);
        }
        let g = pod_ns(&self.topo, "g")?;
        let frames = frames.to_vec();
        let targets = udp_targets.to_vec();
        let core = self.gen_core;
        let (ifname, src_ip) = if mode == Mode::Direct {
            ("bd0", DIRECT_GEN_IP)
        } else {
            ("eth0", GEN_IP)
        };
        let max = cfg.max_packets;
        let udp_first =
            self.generator == GeneratorKind::Udp && !mode.sends_vxlan() && paced.is_none();
        let allow_udp = !mode.sends_vxlan() && paced.is_none();
        let payload = cfg.frame_len.saturating_sub(42);
        let rate = cfg.rate_pps;
        let flows = frames.len();
        // kxdp-null's and xdp-redirect's frames are VXLAN-encapsulated and
        // they keep no per-flow state: fixed flows there.
        let pattern = if cfg.all_new && !mode.sends_vxlan() {
            gen::FlowPattern::AllNew
        } else {
            gen::FlowPattern::Templates
        };
        g.run_in(move || {
            let _ = pin_current_thread(core);
            let udp = || {
                gen::udp_blast(src_ip, &targets, flows, payload, duration, max)
                    .map_err(|e| e.to_string())
            };
            if udp_first {
                return udp();
            }
            match gen::afxdp_blast(ifname, &frames, pattern, paced, rate, duration, max) {
                Ok(r) => Ok(r),
                Err(e) if allow_udp => udp().map(|mut r| {
                    r.generator = format!("{} (AF_XDP failed: {e})", r.generator);
                    r
                }),
                Err(e) => Err(e.to_string()),
            }
        })
        .map_err(|reason| {
            HarnessError::Gen(gen::GenError::AfXdp {
                ifname: ifname.into(),
                reason,
            })
        })
    }

    /// A throughput run with an external generator (`extgen`) in the
    /// generator pod, on a thread pinned to the generator core. For
    /// xdp-trafficgen, an XDP_PASS program on the peer veth while it runs
    /// unless the peer already has an XDP program (kxdp's).
    fn generate_external(
        &self,
        mode: Mode,
        frames: &[Vec<u8>],
        duration: Duration,
        cfg: &BenchConfig,
    ) -> Result<GenReport, HarnessError> {
        let g = pod_ns(&self.topo, "g")?;
        let ifname = if mode == Mode::Direct { "bd0" } else { "eth0" };
        let pattern = if cfg.all_new && mode != Mode::KxdpNull {
            gen::FlowPattern::AllNew
        } else {
            gen::FlowPattern::Templates
        };
        let run = extgen::ExtRun {
            kind: self.generator,
            ifname: ifname.into(),
            frames: frames.to_vec(),
            pattern,
            duration,
            max_packets: cfg.max_packets,
            rate_pps: cfg.rate_pps,
            core: self.gen_core,
            scratch: self.dir.0.clone(),
        };
        let _pass = if self.generator == GeneratorKind::XdpTrafficgen {
            let (ns, dev) = if mode == Mode::Direct {
                (pod_ns(&self.topo, "s1")?, "bd1".to_owned())
            } else {
                let host = self.topo.pod("g").map(|p| p.host_veth.clone());
                (self.node_a()?, host.unwrap_or_default())
            };
            if extgen::has_xdp(ns.name(), &dev) {
                None
            } else {
                Some(extgen::XdpPass::attach(ns.name(), &dev)?)
            }
        } else {
            None
        };
        let core = self.gen_core;
        g.run_in(move || {
            let _ = pin_current_thread(core);
            Ok(extgen::run_external(&run))
        })
        .map_err(|reason| {
            HarnessError::Gen(gen::GenError::External(format!(
                "{}: {reason}",
                cfg.generator.name()
            )))
        })?
        .map_err(HarnessError::Gen)
    }

    /// Current counters.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        if let Some((busy, total)) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| cpu_ticks(&t, self.dut_core))
        {
            c.dut_busy_ticks = busy;
            c.dut_total_ticks = total;
        }
        for p in self.topo.pods.iter().filter(|p| p.node == 1) {
            c.sink_rx += link_stats(&p.ns, "eth0").map(|s| s.rx_packets).unwrap_or(0);
            c.sink_udp += udp_delivered(&p.ns).unwrap_or(0);
        }
        if let Ok(s1) = pod_ns(&self.topo, "s1") {
            c.sink_rx += link_stats(s1, "bd1").map(|s| s.rx_packets).unwrap_or(0);
        }
        if let (Ok(a), Some(g)) = (self.node_a(), self.topo.pod("g")) {
            if let Some(s) = link_stats(a, &g.host_veth) {
                c.dut_in = s.rx_packets;
                c.drops += s.rx_dropped;
            }
            if let Some(s) = link_stats(a, "eth0") {
                c.dut_out = s.tx_packets;
                c.drops += s.tx_dropped;
            }
            if let Some(s) = link_stats(&g.ns, "eth0") {
                c.drops += s.tx_dropped;
            }
        }
        c
    }

    /// Where frames were lost, stage by stage, when node-a runs kxdp or
    /// the XDP redirect program (cumulative since it started, warm-up
    /// included). kxdp: its drop and forward counters (`/metrics`), its
    /// AF_XDP sockets' statistics (`/debug/stats`: fill ring empty = the
    /// kernel had no frame to receive into, rx ring full, tx drops) and
    /// the pod veth's own counters (`ethtool -S`: XDP redirect failures
    /// and ring drops). xdp-redirect: [`Testbed::xdp_redirect_counters`].
    pub fn dut_drops(&self) -> Option<String> {
        if self.xdp.is_some() {
            return Some(self.xdp_redirect_counters());
        }
        self.kxdp.as_ref()?;
        let ns = self.node_a().ok()?;
        let mut lines: Vec<String> = admin_get(ns, "/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                (l.starts_with("kxdp_drop") || l.starts_with("kxdp_forward")) && !l.ends_with(" 0")
            })
            .map(str::to_owned)
            .collect();
        if let Ok(stats) = admin_get(ns, "/debug/stats") {
            lines.extend(socket_stat_lines(&stats));
        }
        if let Some(g) = self.topo.pod("g") {
            lines.extend(veth_xdp_counters(ns, &g.host_veth));
        }
        Some(lines.join("\n"))
    }

    /// The redirect program's counters (frames redirected by
    /// `redirect_fwd`, passed by `redirect_pass` on the far side, ...)
    /// and the non-zero XDP and drop counters (`ethtool -S`) of the three
    /// veths on the path: node-a's pod veth (`xdp_redirect`; a failed
    /// redirect counts in its `rx_queue_0_drops`), node-a's `eth0`
    /// (`tx_queue_0_xdp_xmit`: frames the redirect put into its peer's
    /// ring, `_errors`: the ring was full) and the underlay's `pa` (its
    /// `xdp_packets` ran `redirect_pass`).
    pub fn xdp_redirect_counters(&self) -> String {
        let mut lines = Vec::new();
        match self.xdp.as_ref().map(RedirectProgram::stats) {
            Some(Ok(s)) => lines.push(format!(
                "redirect program: fwd_redirect={} fwd_no_port={} fwd_no_entry={} fwd_runt={} peer_pass={}",
                s.fwd_redirect, s.fwd_no_port, s.fwd_no_entry, s.fwd_runt, s.peer_pass
            )),
            Some(Err(e)) => lines.push(format!("redirect program: {e}")),
            None => {}
        }
        if let (Ok(a), Some(g)) = (self.node_a(), self.topo.pod("g")) {
            lines.extend(veth_xdp_counters(a, &g.host_veth));
            lines.extend(veth_xdp_counters(a, "eth0"));
        }
        lines.extend(veth_xdp_counters(&self.topo.underlay, UPLINK_PEER));
        lines.join("\n")
    }
}

/// The non-zero drop and XDP counters of veth `dev` in `ns`
/// (`ethtool -S`), one `veth DEV: name: value` line each.
fn veth_xdp_counters(ns: &Netns, dev: &str) -> Vec<String> {
    ns.exec_stdout("ethtool", &["-S", dev])
        .map(|text| veth_counter_lines(&text, dev))
        .unwrap_or_default()
}

fn veth_counter_lines(ethtool_s: &str, dev: &str) -> Vec<String> {
    ethtool_s
        .lines()
        .map(str::trim)
        .filter(|l| (l.contains("drops") || l.contains("xdp")) && !l.contains("bytes"))
        .filter(|l| !l.ends_with(": 0"))
        .map(|l| format!("veth {dev}: {l}"))
        .collect()
}

/// One line per AF_XDP socket from kxdp's `/debug/stats` JSON, with the
/// counters that locate a loss.
fn socket_stat_lines(json: &str) -> Vec<String> {
    const KEYS: [&str; 7] = [
        "rx_packets",
        "tx_packets",
        "fill_ring_empty",
        "rx_ring_full",
        "rx_dropped",
        "tx_dropped",
        "busy_polls",
    ];
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let workers = v.get("workers").and_then(|w| w.as_array()).cloned();
    let workers = workers.unwrap_or_else(|| vec![v.clone()]);
    let mut out = Vec::new();
    for w in &workers {
        for p in w
            .get("ports")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let ifindex = p.get("ifindex").and_then(|x| x.as_u64()).unwrap_or(0);
            let fields: Vec<String> = KEYS
                .iter()
                .map(|k| format!("{k}={}", p.get(*k).and_then(|x| x.as_u64()).unwrap_or(0)))
                .collect();
            out.push(format!("socket ifindex {ifindex}: {}", fields.join(" ")));
        }
    }
    out
}

fn pod_ns<'a>(topo: &'a Topology, name: &str) -> Result<&'a Netns, HarnessError> {
    topo.pod(name)
        .map(|p| &p.ns)
        .ok_or_else(|| topo_err(format!("no pod {name}")))
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|source| HarnessError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

fn service_ports(services: usize, endpoints: usize) -> Vec<ServicePort> {
    (0..services)
        .map(|i| ServicePort {
            name: format!("default/svc-{i}:p"),
            cluster_ip: service_ip(i),
            port: SERVICE_PORT,
            endpoints: SINK_IPS
                .iter()
                .take(endpoints)
                .map(|&ip| (ip, TARGET_PORT))
                .collect(),
        })
        .collect()
}

fn iptables_version() -> String {
    Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "iptables".into())
}

/// Interface counters from `ip -s -j link`.
#[derive(Clone, Copy, Debug, Default)]
struct LinkStats {
    rx_packets: u64,
    rx_dropped: u64,
    tx_packets: u64,
    tx_dropped: u64,
}

fn link_stats(ns: &Netns, dev: &str) -> Option<LinkStats> {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", dev]).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = v.get(0)?.get("stats64")?;
    let n = |dir: &str, key: &str| s.get(dir).and_then(|d| d.get(key)).and_then(|x| x.as_u64());
    Some(LinkStats {
        rx_packets: n("rx", "packets")?,
        rx_dropped: n("rx", "dropped").unwrap_or(0),
        tx_packets: n("tx", "packets")?,
        tx_dropped: n("tx", "dropped").unwrap_or(0),
    })
}

/// `Udp: InDatagrams + RcvbufErrors` from the namespace's /proc/net/snmp.
fn udp_delivered(ns: &Netns) -> Option<u64> {
    let text = ns.exec_stdout("cat", &["/proc/net/snmp"]).ok()?;
    parse_udp_snmp(&text)
}

fn parse_udp_snmp(text: &str) -> Option<u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (head, vals) = (udp.next()?, udp.next()?);
    let field = |name: &str| -> Option<u64> {
        let idx = head.split_whitespace().position(|h| h == name)?;
        vals.split_whitespace().nth(idx)?.parse().ok()
    };
    Some(field("InDatagrams")? + field("RcvbufErrors").unwrap_or(0))
}

/// `echo MASK > /sys/class/net/DEV/queues/rx-0/rps_cpus` inside `ns`.
fn set_rps(ns: &Netns, dev: &str, cpu: usize) -> TopoResult<()> {
    let mask = 1u64.checked_shl(cpu as u32).unwrap_or(0);
    ns.exec(
        "sh",
        &[
            "-c",
            &format!("echo {mask:x} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"),
        ],
    )
    .map(|_| ())
}

/// With XDP attached, node-a's pod veth `dev` runs NAPI; threaded NAPI
/// makes it a kthread pinned to the DUT core (next to kxdp's worker in the
/// kxdp modes). RPS on `dev` when that is not possible. Returns notes.
fn pin_dut_napi(node_a: &Netns, dev: &str, dut: usize, threaded: bool, mode: Mode) -> Vec<String> {
    let (who, also) = if mode.runs_kxdp() {
        (
            "kxdp modes".to_owned(),
            format!("; kxdp process and worker pinned to CPU {dut}"),
        )
    } else {
        (mode.name().to_owned(), String::new())
    };
    if !threaded {
        return vec![format!(
            "{who}: threaded NAPI off (config): the pod veth's NAPI runs on the generator core"
        )];
    }
    match threaded_napi(node_a, dev, dut) {
        Ok(n) if n > 0 => vec![format!(
            "{who}: node-a's pod veth threaded NAPI ({n} kthread(s) napi/{dev}-*) pinned to CPU {dut}{also}"
        )],
        Ok(_) => {
            let _ = set_rps(node_a, dev, dut);
            vec![format!(
                "{who}: threaded NAPI set but no napi kthread found; falling back to RPS"
            )]
        }
        Err(e) => {
            let _ = set_rps(node_a, dev, dut);
            vec![format!(
                "{who}: threaded NAPI not available ({e}); RPS on the pod veth instead"
            )]
        }
    }
}

/// Switches `dev`'s NAPI to a kthread and pins every `napi/DEV-*` kthread
/// to `cpu`; returns how many were pinned.
fn threaded_napi(ns: &Netns, dev: &str, cpu: usize) -> TopoResult<usize> {
    ns.exec(
        "sh",
        &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
    )?;
    std::thread::sleep(Duration::from_millis(50));
    let prefix = format!("napi/{dev}-");
    let mut pinned = 0;
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) && taskset(pid, cpu).is_ok() {
            pinned += 1;
        }
    }
    Ok(pinned)
}

fn taskset(pid: &str, cpu: usize) -> TopoResult<()> {
    kxdp_topology::run("taskset", &["-pc", &cpu.to_string(), pid]).map(|_| ())
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> TopoResult<()> {
    let link = std::fs::read_link("/proc/thread-self").map_err(|e| e.to_string())?;
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .ok_or("no thread id")?
        .to_owned();
    taskset(&tid, cpu)
}

/// Pins this process (threads started later inherit it) to `cpu`.
pub fn pin_process(cpu: usize) -> TopoResult<()> {
    pin_current_thread(cpu)
}

/// `GET path` on kxdp's admin API (127.0.0.1:10256) inside `ns`.
fn admin_get(ns: &Netns, path: &str) -> TopoResult<String> {
    use std::io::{Read, Write};
    let path = path.to_owned();
    ns.run_in(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 10256));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: kxdp\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_snmp_counts_delivered_and_buffer_overflow() {
        let text = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 1 5 0 5 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_udp_snmp(text), Some(15));
        assert_eq!(parse_udp_snmp("Ip: x\nIp: 1\n"), None);
    }

    #[test]
    fn socket_stat_lines_read_kxdp_debug_stats() {
        let json = r#"{"now_ns": 1, "workers": [{"worker": 0, "ports": [
            {"ifindex": 3, "rx_packets": 10, "tx_packets": 0, "fill_ring_empty": 7,
             "rx_ring_full": 0, "rx_dropped": 7, "tx_dropped": 0, "busy_polls": 5},
            {"ifindex": 2, "rx_packets": 0, "tx_packets": 10}]}]}"#;
        assert_eq!(
            socket_stat_lines(json),
            vec![
                "socket ifindex 3: rx_packets=10 tx_packets=0 fill_ring_empty=7 rx_ring_full=0 rx_dropped=7 tx_dropped=0 busy_polls=5",
                "socket ifindex 2: rx_packets=0 tx_packets=10 fill_ring_empty=0 rx_ring_full=0 rx_dropped=0 tx_dropped=0 busy_polls=0",
            ]
        );
        assert!(socket_stat_lines("not json").is_empty());
    }

    #[test]
    fn veth_counter_lines_keep_nonzero_xdp_and_drop_counters() {
        // `ethtool -S` of a veth on 6.18 after an XDP redirect run.
        let text = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: 120\n     rx_queue_0_xdp_bytes: 7200\n     rx_queue_0_drops: 3\n     rx_queue_0_xdp_redirect: 117\n     rx_queue_0_xdp_drops: 0\n     rx_queue_0_xdp_tx: 0\n     rx_queue_0_xdp_tx_errors: 0\n     tx_queue_0_xdp_xmit: 0\n     tx_queue_0_xdp_xmit_errors: 10\n";
        assert_eq!(
            veth_counter_lines(text, "vethg"),
            vec![
                "veth vethg: rx_queue_0_xdp_packets: 120",
                "veth vethg: rx_queue_0_drops: 3",
                "veth vethg: rx_queue_0_xdp_redirect: 117",
                "veth vethg: tx_queue_0_xdp_xmit_errors: 10",
            ]
        );
        assert!(veth_counter_lines("", "x").is_empty());
    }

    #[test]
    fn cpu_ticks_sum_busy_fields_of_the_named_cpu() {
        let stat = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 20 100 5 1 2 0 0 0\ncpu1 1 1 1 50 0 0 7 0 0 0\nintr 1\n";
        assert_eq!(cpu_ticks(stat, 0), Some((33, 138)));
        assert_eq!(cpu_ticks(stat, 1), Some((10, 60)));
        assert_eq!(cpu_ticks(stat, 2), None);
    }

    #[test]
    fn service_ports_select_the_sinks() {
        let s = service_ports(3, 2);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].cluster_ip, service_ip(2));
        assert_eq!(
            s[0].endpoints,
            vec![(SINK_IPS[0], 8080), (SINK_IPS[1], 8080)]
        );
    }
}
