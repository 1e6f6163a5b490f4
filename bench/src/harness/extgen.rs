//! Third-party traffic generators driven by the harness (DESIGN §7): the
//! same frames the project's AF_XDP generator sends, sent by tools the
//! project did not write, so a number that depends on our generator can be
//! checked against theirs.
//!
//! - **trafgen** (Debian `netsniff-ng`): [`trafgen_config`] writes every
//!   template frame byte for byte (fixed flows), or for the all-new mode
//!   the frame's headers in trafgen's protocol syntax with the UDP source
//!   port counting `dinc(1024, 65535)` per packet (trafgen recomputes the
//!   UDP checksum of a dynamic field): the same packet sequence as
//!   [`super::gen::set_new_flow_port`]. trafgen runs in the generator's
//!   network namespace (the calling thread's) on its veth, one sending
//!   process pinned to the generator core (`cpu(N):` on every packet, N+1
//!   forks of which only fork N has packets: trafgen pins fork i to CPU i
//!   itself, overriding inherited affinity), bounded by `--num` and a
//!   SIGINT at the deadline. `--no-sock-mem` and `--notouch-irq` keep it
//!   from changing machine-wide sysctls and IRQ affinities. Known limit
//!   (trafgen 0.6.8): its non-blocking send treats EAGAIN as fatal; when
//!   frames wait in the peer's queues (RPS backlog, ptr_ring) longer than
//!   the socket's send buffer covers (208 KiB default, read-only in a
//!   non-initial namespace on 6.18), trafgen exits with "Flushing TX_RING
//!   failed: Resource temporarily unavailable". The harness then reruns
//!   it, and every later run of the process, on trafgen's `sendto` path
//!   (a rate its shaper never waits for: one blocking send per packet,
//!   so a full buffer blocks instead of failing; slower than TX_RING) and
//!   says so in the generator column. Sent count and
//!   send time are trafgen's own (its exit summary). With a rate
//!   (`--rate Npps`) trafgen runs a single process pinned to CPU 0, which
//!   the harness re-pins to the generator core once it has started.
//! - **xdp-trafficgen** (Debian `xdp-tools`): `xdp-trafficgen udp` with
//!   the MACs, addresses and ports of the first template frame (one flow:
//!   the tool varies only destination ports, which would miss the
//!   Services; no frame size option: its own UDP frame). For a VXLAN
//!   template (`kxdp-null`) the inner flow with the outer MACs: the tool
//!   cannot encapsulate. It transmits with XDP redirect into the veth,
//!   which on veth requires an XDP program on the peer: kxdp's own in the
//!   kxdp modes, otherwise [`XdpPass`] (`xdp-bench pass`, same package) on
//!   the peer, which the caller attaches. Sent = the generator veth's
//!   tx_packets delta (`/proc/thread-self/net/dev`), time = the tool's
//!   wall time including its BPF load. On kernels whose tracepoints the
//!   packaged xdp-tools cannot load (bookworm's 1.3.1 on 6.18: the
//!   `xdp_redirect_map_err` tracepoint is gone), the run fails with
//!   [`GenError::Unsupported`].
//! - **kernel pktgen**: only when `/proc/net/pktgen` exists (module
//!   `pktgen`, `CONFIG_NET_PKTGEN`); otherwise [`GenError::Unsupported`].
//!   [`pktgen_commands`] is the exact command list (the same as
//!   [`pktgen_script`]'s shell text): the generator veth on
//!   `kpktgend_<gen core>` (the per-CPU pktgen kthread, so pinning is
//!   pktgen's own), count, size, MACs, and the template frames' address and
//!   port ranges (pktgen walks each range sequentially and independently,
//!   so flows approximate the template set: the same sources, Services and
//!   ports, not the same pairing). All-new: UDP source ports 1024..=65535.
//!   The harness writes the commands to `/proc/thread-self/net/pktgen/*`
//!   (the generator namespace's pktgen), `start` on a helper thread (the
//!   write blocks until the run ends), `stop` at the deadline, and reads
//!   `pkts-sofar` and the elapsed time from the device file.
//!
//! Every child process runs in its own process group and is stopped
//! (SIGINT, then SIGKILL after 3 s) by a guard, whatever happens.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::gen::{FlowAddr, FlowPattern, GenError, GenReport};
use super::GeneratorKind;

/// The UDP port of Flannel's VXLAN (a template to that port is
/// encapsulated).
const VXLAN_PORT: u16 = 8472;

/// The all-new mode's source ports (as in [`super::gen`]).
const NEW_PORT_MIN: u16 = 1024;
const NEW_PORT_MAX: u16 = 65535;

/// Longest a tool may take to start sending (parsing a config of 50k
/// frames takes trafgen about a second).
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

impl GeneratorKind {
    pub const ALL: [GeneratorKind; 5] = [
        GeneratorKind::Afxdp,
        GeneratorKind::Udp,
        GeneratorKind::Trafgen,
        GeneratorKind::XdpTrafficgen,
        GeneratorKind::Pktgen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GeneratorKind::Afxdp => "afxdp",
            GeneratorKind::Udp => "udp",
            GeneratorKind::Trafgen => "trafgen",
            GeneratorKind::XdpTrafficgen => "xdp-trafficgen",
            GeneratorKind::Pktgen => "pktgen",
        }
    }

    /// A third-party tool (this module) rather than the project's own.
    pub fn is_external(self) -> bool {
        matches!(
            self,
            GeneratorKind::Trafgen | GeneratorKind::XdpTrafficgen | GeneratorKind::Pktgen
        )
    }
}

impl std::str::FromStr for GeneratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        GeneratorKind::ALL
            .into_iter()
            .find(|g| g.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = GeneratorKind::ALL.iter().map(|g| g.name()).collect();
                format!("unknown generator {s:?} (one of {})", names.join(", "))
            })
    }
}

/// One external generator run, from the generator's network namespace
/// (the calling thread's).
#[derive(Clone, Debug)]
pub struct ExtRun {
    pub kind: GeneratorKind,
    /// The generator's veth.
    pub ifname: String,
    /// Template frames, one per flow (as for the AF_XDP generator).
    pub frames: Vec<Vec<u8>>,
    pub pattern: FlowPattern,
    pub duration: Duration,
    pub max_packets: u64,
    /// Packets/s (0: as fast as the tool goes).
    pub rate_pps: u64,
    /// The generator core.
    pub core: usize,
    /// Where config files go.
    pub scratch: PathBuf,
}

/// Runs `run.kind` (an external generator).
pub fn run_external(run: &ExtRun) -> Result<GenReport, GenError> {
    if run.frames.is_empty() {
        return Err(GenError::NoFlows);
    }
    match run.kind {
        GeneratorKind::Trafgen => run_trafgen(run),
        GeneratorKind::XdpTrafficgen => run_xdp_trafficgen(run),
        GeneratorKind::Pktgen => run_pktgen(run),
        GeneratorKind::Afxdp | GeneratorKind::Udp => Err(GenError::External(format!(
            "{} is not an external generator",
            run.kind.name()
        ))),
    }
}

// ---------------------------------------------------------------- trafgen

/// trafgen's configuration for `frames`: one packet per template, each
/// scheduled on `cpu` (None: every CPU trafgen runs on). Fixed flows: the
/// frames' bytes. All-new: protocol syntax, source port `dinc(1024,
/// 65535)`, payload bytes as they are (plain IPv4/UDP frames with a 20-byte
/// IPv4 header only).
pub fn trafgen_config(
    frames: &[Vec<u8>],
    pattern: FlowPattern,
    cpu: Option<usize>,
) -> Result<String, GenError> {
    let mut out = String::with_capacity(frames.len() * 400);
    out.push_str("/* kxdp-bench: generated, one packet per flow */\n");
    let prefix = cpu.map(|c| format!("cpu({c}): ")).unwrap_or_default();
    for frame in frames {
        out.push_str(&prefix);
        out.push('{');
        match pattern {
            FlowPattern::Templates => push_bytes(&mut out, frame),
            FlowPattern::AllNew => push_all_new(&mut out, frame)?,
        }
        out.push_str(" }\n");
    }
    Ok(out)
}

fn push_bytes(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, " 0x{b:02x}");
    }
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn push_all_new(out: &mut String, frame: &[u8]) -> Result<(), GenError> {
    let bad = |why: &str| GenError::Build(format!("trafgen all-new template: {why}"));
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| bad(&e.to_string()))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        return Err(bad("not Ethernet II"));
    };
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (&p.net, &p.transport) else {
        return Err(bad("not IPv4/UDP"));
    };
    if udp.destination_port() == VXLAN_PORT {
        // Renumbering the outer header would not make new inner flows.
        return Err(bad(
            "VXLAN-encapsulated (the all-new mode is for plain frames)",
        ));
    }
    let h = ip.header();
    if h.ihl() != 5 || h.is_fragmenting_payload() {
        return Err(bad("IPv4 options or fragments"));
    }
    let _ = write!(
        out,
        " eth(da={}, sa={}, type=0x0800), ipv4(tos={}, id={}, {}ttl={}, sa={}, da={}), udp(sp=dinc({NEW_PORT_MIN}, {NEW_PORT_MAX}), dp={}),",
        mac_text(eth.destination()),
        mac_text(eth.source()),
        (h.dcp().value() << 2) | h.ecn().value(),
        h.identification(),
        if h.dont_fragment() { "df, " } else { "" },
        h.ttl(),
        h.source_addr(),
        h.destination_addr(),
        udp.destination_port(),
    );
    push_bytes(out, udp.payload());
    Ok(())
}

/// trafgen's exit summary: total packets sent and the longest per-CPU send
/// time (`N sec, M usec on CPUk (P packets)`: wall time of that fork's
/// send loop).
pub fn parse_trafgen_summary(text: &str) -> Option<(u64, f64)> {
    let mut sent = None;
    let mut secs: Option<f64> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_suffix("packets outgoing") {
            sent = sent.or_else(|| n.trim().parse::<u64>().ok());
        } else if l.contains("usec on CPU") {
            let mut w = l.split_whitespace();
            let s: Option<f64> = w.next().and_then(|v| v.parse().ok());
            let _ = w.next(); // "sec,"
            let us: Option<f64> = w.next().and_then(|v| v.parse().ok());
            if let (Some(s), Some(us)) = (s, us) {
                let t = s + us / 1e6;
                secs = Some(secs.map_or(t, |m| m.max(t)));
            }
        }
    }
    Some((sent?, secs?))
}

/// trafgen's arguments (config and device given).
pub fn trafgen_args(cfg: &Path, ifname: &str, core: usize, max: u64, rate_pps: u64) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--in".into(),
        cfg.display().to_string(),
        "--out".into(),
        ifname.into(),
        "--num".into(),
        max.to_string(),
        "--no-sock-mem".into(),
        "--notouch-irq".into(),
    ];
    if rate_pps > 0 {
        // Rate limiting is single-process in trafgen.
        a.extend(["--cpus".into(), "1".into(), "--rate".into()]);
        a.push(format!("{rate_pps}pps"));
    } else {
        a.extend(["--cpus".into(), (core + 1).to_string()]);
    }
    a
}

/// Set once trafgen's TX_RING path failed with EAGAIN in this process:
/// later runs go straight to the `sendto` path.
static TRAFGEN_RING_EAGAIN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A rate trafgen's shaper never waits for: selects trafgen's `sendto`
/// path (one blocking send per packet) without pacing it.
const TRAFGEN_UNPACED_RATE: u64 = 1_000_000_000;

/// trafgen's fatal message when its non-blocking TX_RING flush hits a full
/// socket send buffer.
const TRAFGEN_RING_EAGAIN_MSG: &str = "Flushing TX_RING failed: Resource temporarily unavailable";

fn run_trafgen(run: &ExtRun) -> Result<GenReport, GenError> {
    use std::sync::atomic::Ordering;
    let ring_failed = TRAFGEN_RING_EAGAIN.load(Ordering::Relaxed);
    let first = run_trafgen_once(run, ring_failed);
    match first {
        Err(GenError::External(msg)) if !ring_failed && msg.contains(TRAFGEN_RING_EAGAIN_MSG) => {
            TRAFGEN_RING_EAGAIN.store(true, Ordering::Relaxed);
            run_trafgen_once(run, true)
        }
        other => other,
    }
}

/// One trafgen process. `sendto_path`: trafgen's blocking `sendto` path
/// instead of its TX_RING (a rate, the configured one or
/// [`TRAFGEN_UNPACED_RATE`], selects it).
fn run_trafgen_once(run: &ExtRun, sendto_path: bool) -> Result<GenReport, GenError> {
    let rate = match (run.rate_pps, sendto_path) {
        (0, true) => TRAFGEN_UNPACED_RATE,
        (r, _) => r,
    };
    let cpu = (rate == 0).then_some(run.core);
    let config = trafgen_config(&run.frames, run.pattern, cpu)?;
    let path = run.scratch.join("trafgen.cfg");
    std::fs::write(&path, config)
        .map_err(|e| GenError::External(format!("write {}: {e}", path.display())))?;
    let args = trafgen_args(&path, &run.ifname, run.core, run.max_packets, rate);
    // Line-buffered stdout, so "Running!" arrives when trafgen starts.
    let mut cmd = match which("stdbuf") {
        Some(stdbuf) => {
            let mut c = Command::new(stdbuf);
            c.args(["-oL", "trafgen"]);
            c
        }
        None => Command::new("trafgen"),
    };
    cmd.args(&args);
    let repin = (rate > 0).then_some(run.core);
    let out = run_bounded(cmd, Some("Running!"), run.duration, repin)?;
    let (sent, secs) = parse_trafgen_summary(&out.stdout).ok_or_else(|| {
        GenError::External(format!(
            "trafgen printed no summary (exit {}): {}",
            out.status,
            tail(&format!("{}\n{}", out.stdout, out.stderr))
        ))
    })?;
    let path_note = match (run.rate_pps, sendto_path) {
        (0, true) => ", sendto path: TX_RING hit EAGAIN",
        (0, false) => "",
        _ => ", paced",
    };
    Ok(GenReport {
        generator: format!("trafgen ({} flows{path_note})", run.frames.len()),
        sent,
        tx_dropped: 0,
        secs,
    })
}

// --------------------------------------------------------- xdp-trafficgen

/// The flow xdp-trafficgen can send for a template frame (plain or
/// VXLAN-encapsulated IPv4/UDP): its MACs, IPv4 addresses and UDP ports;
/// for a VXLAN frame, the inner IPv4/UDP flow with the outer MACs.
pub fn tool_flow(frame: &[u8]) -> Result<FlowAddr, GenError> {
    let bad = |why: String| GenError::Build(format!("template frame: {why}"));
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| bad(e.to_string()))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        return Err(bad("not Ethernet II".into()));
    };
    let (src_mac, dst_mac) = (eth.source(), eth.destination());
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (&p.net, &p.transport) else {
        return Err(bad("not IPv4/UDP".into()));
    };
    if udp.destination_port() == VXLAN_PORT {
        let inner = udp
            .payload()
            .get(8..)
            .ok_or_else(|| bad("short VXLAN".into()))?;
        let f = tool_flow(inner)?;
        return Ok(FlowAddr {
            src_mac,
            dst_mac,
            ..f
        });
    }
    Ok(FlowAddr {
        src_mac,
        dst_mac,
        src_ip: ip.header().source_addr(),
        dst_ip: ip.header().destination_addr(),
        src_port: udp.source_port(),
        dst_port: udp.destination_port(),
    })
}

/// `xdp-trafficgen udp` arguments for `flow`.
pub fn xdp_trafficgen_args(flow: &FlowAddr, ifname: &str, max: u64) -> Vec<String> {
    vec![
        "udp".into(),
        "--dst-mac".into(),
        mac_text(flow.dst_mac),
        "--src-mac".into(),
        mac_text(flow.src_mac),
        "--dst-addr".into(),
        flow.dst_ip.to_string(),
        "--src-addr".into(),
        flow.src_ip.to_string(),
        "--dst-port".into(),
        flow.dst_port.to_string(),
        "--src-port".into(),
        flow.src_port.to_string(),
        "--num-packets".into(),
        max.to_string(),
        "--threads".into(),
        "1".into(),
        ifname.into(),
    ]
}

/// What libbpf prints when the tool's BPF object does not load on this
/// kernel (as opposed to a run that started and failed).
fn bpf_load_failure(stderr: &str) -> bool {
    stderr.contains("Error probing kernel support")
        || stderr.contains("failed to load object")
        || stderr.contains("failed to find kernel BTF type ID")
}

fn run_xdp_trafficgen(run: &ExtRun) -> Result<GenReport, GenError> {
    if run.rate_pps > 0 {
        return Err(GenError::Unsupported(
            "xdp-trafficgen has no rate option (set rate_pps = 0)".into(),
        ));
    }
    let first = run.frames.first().ok_or(GenError::NoFlows)?;
    let flow = tool_flow(first)?;
    let before = dev_tx_packets(&run.ifname)?;
    let mut cmd = Command::new("xdp-trafficgen");
    cmd.args(xdp_trafficgen_args(&flow, &run.ifname, run.max_packets));
    let out = run_bounded(cmd, None, run.duration, None)?;
    let sent = dev_tx_packets(&run.ifname)?.saturating_sub(before);
    if sent == 0 && bpf_load_failure(&out.stderr) {
        return Err(GenError::Unsupported(format!(
            "xdp-trafficgen cannot load its BPF programs on this kernel: {}",
            tail(&out.stderr)
        )));
    }
    if sent == 0 {
        return Err(GenError::External(format!(
            "xdp-trafficgen sent nothing (exit {}): {}",
            out.status,
            tail(&out.stderr)
        )));
    }
    Ok(GenReport {
        generator: "xdp-trafficgen (1 flow)".into(),
        sent,
        tx_dropped: 0,
        secs: out.secs,
    })
}

/// An XDP_PASS program on a veth the harness created (`xdp-bench pass`
/// in that namespace), so frames XDP-redirected into its peer are
/// received. Detached when dropped.
pub struct XdpPass {
    child: ChildGuard,
}

impl XdpPass {
    /// Attaches in namespace `netns` (a harness namespace) to `dev`, and
    /// waits until the device shows an XDP program (at most 5 s).
    pub fn attach(netns: &str, dev: &str) -> Result<Self, GenError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "xdp-bench", "pass", dev]);
        let mut guard = ChildGuard::spawn(cmd)?;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if has_xdp(netns, dev) {
                return Ok(XdpPass { child: guard });
            }
            if let Ok(Some(status)) = guard.child.try_wait() {
                let (_, err) = guard.take_output();
                let msg = format!("xdp-bench pass {dev} exited ({status}): {}", tail(&err));
                return Err(if bpf_load_failure(&err) {
                    GenError::Unsupported(msg)
                } else {
                    GenError::External(msg)
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(GenError::External(format!(
            "xdp-bench pass {dev}: no XDP program after 5 s"
        )))
    }

    /// Stops `xdp-bench` (detaching its program).
    pub fn detach(self) {
        drop(self.child);
    }
}

/// Whether `dev` in `netns` has an XDP program attached.
pub fn has_xdp(netns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "-d", "link", "show", "dev", dev])
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout);
            t.contains("prog/xdp") || t.contains(" xdp")
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------- kernel pktgen

/// Where pktgen's control files are, for the calling thread's namespace.
pub const PKTGEN_DIR: &str = "/proc/thread-self/net/pktgen";

/// What pktgen sends: ranges read from the template frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PktgenSpec {
    pub ifname: String,
    pub core: usize,
    pub count: u64,
    /// Frame length without FCS (pktgen's `pkt_size`).
    pub pkt_size: usize,
    pub rate_pps: u64,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: (Ipv4Addr, Ipv4Addr),
    pub dst_ip: (Ipv4Addr, Ipv4Addr),
    pub udp_src: (u16, u16),
    pub udp_dst: (u16, u16),
}

impl PktgenSpec {
    /// The ranges covering every template's (inner) flow; all-new: every
    /// source port 1024..=65535.
    pub fn from_run(run: &ExtRun) -> Result<Self, GenError> {
        let flows = run
            .frames
            .iter()
            .map(|f| tool_flow(f))
            .collect::<Result<Vec<_>, _>>()?;
        let first = *flows.first().ok_or(GenError::NoFlows)?;
        let range = |v: &dyn Fn(&FlowAddr) -> u32| {
            let lo = flows.iter().map(v).min().unwrap_or(0);
            let hi = flows.iter().map(v).max().unwrap_or(0);
            (lo, hi)
        };
        let ip = |r: (u32, u32)| (Ipv4Addr::from(r.0), Ipv4Addr::from(r.1));
        let port = |r: (u32, u32)| (r.0 as u16, r.1 as u16);
        let udp_src = match run.pattern {
            FlowPattern::AllNew => (NEW_PORT_MIN, NEW_PORT_MAX),
            FlowPattern::Templates => port(range(&|f| u32::from(f.src_port))),
        };
        // pktgen builds plain Ethernet/IPv4/UDP: a VXLAN template's inner
        // frame is what it can send (the length of that inner frame).
        let pkt_size = run.frames.first().map_or(60, |f| {
            if first_is_vxlan(f) {
                f.len().saturating_sub(50)
            } else {
                f.len()
            }
        });
        Ok(PktgenSpec {
            ifname: run.ifname.clone(),
            core: run.core,
            count: run.max_packets,
            pkt_size,
            rate_pps: run.rate_pps,
            src_mac: first.src_mac,
            dst_mac: first.dst_mac,
            src_ip: ip(range(&|f| u32::from(f.src_ip))),
            dst_ip: ip(range(&|f| u32::from(f.dst_ip))),
            udp_src,
            udp_dst: port(range(&|f| u32::from(f.dst_port))),
        })
    }
}

fn first_is_vxlan(frame: &[u8]) -> bool {
    matches!(
        SlicedPacket::from_ethernet(frame).map(|p| p.transport),
        Ok(Some(TransportSlice::Udp(u))) if u.destination_port() == VXLAN_PORT
    )
}

/// pktgen's control file a command goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PktgenFile {
    /// `kpktgend_<core>`: the per-CPU pktgen thread.
    Thread(usize),
    /// The device's file.
    Device(String),
    /// `pgctrl`.
    Control,
}

impl PktgenFile {
    pub fn name(&self) -> String {
        match self {
            PktgenFile::Thread(c) => format!("kpktgend_{c}"),
            PktgenFile::Device(d) => d.clone(),
            PktgenFile::Control => "pgctrl".into(),
        }
    }
}

/// The commands, in order, that configure pktgen for `spec` (without the
/// final `start` on `pgctrl`).
pub fn pktgen_commands(spec: &PktgenSpec) -> Vec<(PktgenFile, String)> {
    let t = PktgenFile::Thread(spec.core);
    let d = PktgenFile::Device(spec.ifname.clone());
    let mut c = vec![
        (t.clone(), "rem_device_all".to_owned()),
        (t, format!("add_device {}", spec.ifname)),
        (d.clone(), format!("count {}", spec.count)),
        // veth hands the skb to its peer: no skb reuse.
        (d.clone(), "clone_skb 0".to_owned()),
        (d.clone(), format!("pkt_size {}", spec.pkt_size)),
    ];
    if spec.rate_pps > 0 {
        c.push((d.clone(), format!("ratep {}", spec.rate_pps)));
    } else {
        c.push((d.clone(), "delay 0".to_owned()));
    }
    for cmd in [
        format!("dst_mac {}", mac_text(spec.dst_mac)),
        format!("src_mac {}", mac_text(spec.src_mac)),
        format!("src_min {}", spec.src_ip.0),
        format!("src_max {}", spec.src_ip.1),
        format!("dst_min {}", spec.dst_ip.0),
        format!("dst_max {}", spec.dst_ip.1),
        format!("udp_src_min {}", spec.udp_src.0),
        format!("udp_src_max {}", spec.udp_src.1),
        format!("udp_dst_min {}", spec.udp_dst.0),
        format!("udp_dst_max {}", spec.udp_dst.1),
    ] {
        c.push((d.clone(), cmd));
    }
    c
}

/// The same commands as a shell script (documentation, and what a user
/// runs by hand inside the generator namespace).
pub fn pktgen_script(spec: &PktgenSpec) -> String {
    let mut s = String::from("#!/bin/sh\n# kxdp-bench: kernel pktgen run (needs /proc/net/pktgen: modprobe pktgen)\nset -e\nPG=/proc/net/pktgen\n");
    for (file, cmd) in pktgen_commands(spec) {
        let _ = writeln!(s, "echo \"{cmd}\" > $PG/{}", file.name());
    }
    s.push_str("echo start > $PG/pgctrl   # blocks until count packets are sent or 'stop'\n");
    let _ = writeln!(s, "cat $PG/{}", spec.ifname);
    s
}

/// From a pktgen device file after a run: packets sent, errors and the
/// run's duration (`pkts-sofar: N  errors: M`, `Result: OK: U(...) usec`).
pub fn parse_pktgen_result(text: &str) -> Option<(u64, u64, f64)> {
    let after = |key: &str| -> Option<u64> {
        let i = text.find(key)? + key.len();
        text.get(i..)?.split_whitespace().next()?.parse().ok()
    };
    let sent = after("pkts-sofar:")?;
    let errors = after("errors:").unwrap_or(0);
    let usec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Result: OK:"))
        .and_then(|r| {
            let digits: String = r.trim().chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        });
    Some((sent, errors, usec.map_or(0.0, |u| u as f64 / 1e6)))
}

fn pktgen_write(dir: &Path, file: &PktgenFile, cmd: &str) -> Result<(), GenError> {
    let path = dir.join(file.name());
    let err = |e: String| GenError::External(format!("pktgen {}: {cmd:?}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(cmd.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    drop(f);
    if matches!(file, PktgenFile::Control) {
        return Ok(());
    }
    // pktgen reports each command's outcome in the file's "Result:" line.
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    match text.lines().find(|l| l.trim_start().starts_with("Result:")) {
        Some(r) if !r.contains("OK") => Err(err(r.trim().to_owned())),
        _ => Ok(()),
    }
}

/// Removes the device from its pktgen thread when the run ends.
struct PktgenCleanup {
    dir: PathBuf,
    core: usize,
}

impl Drop for PktgenCleanup {
    fn drop(&mut self) {
        let _ = pktgen_write(&self.dir, &PktgenFile::Thread(self.core), "rem_device_all");
    }
}

/// Checks that kernel pktgen exists for this namespace.
pub fn pktgen_available() -> Result<(), GenError> {
    if Path::new(PKTGEN_DIR).join("pgctrl").exists() {
        Ok(())
    } else {
        Err(GenError::Unsupported(
            "kernel pktgen not available: /proc/net/pktgen missing (kernel built without CONFIG_NET_PKTGEN, or `modprobe pktgen` not done)".into(),
        ))
    }
}

fn run_pktgen(run: &ExtRun) -> Result<GenReport, GenError> {
    pktgen_available()?;
    let spec = PktgenSpec::from_run(run)?;
    let dir = PathBuf::from(PKTGEN_DIR);
    // Keep the script next to the results of this run, for reproduction.
    let _ = std::fs::write(run.scratch.join("pktgen.sh"), pktgen_script(&spec));
    let cleanup = PktgenCleanup {
        dir: dir.clone(),
        core: spec.core,
    };
    for (file, cmd) in pktgen_commands(&spec) {
        pktgen_write(&dir, &file, &cmd)?;
    }
    // Opened here: the file belongs to this thread's namespace.
    let ctrl_path = dir.join("pgctrl");
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ctrl_path)
            .map_err(|e| GenError::External(format!("pktgen pgctrl: {e}")))
    };
    let mut start = open()?;
    let mut stop = open()?;
    let t0 = Instant::now();
    let runner = std::thread::spawn(move || start.write_all(b"start"));
    let deadline = t0 + run.duration;
    while !runner.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !runner.is_finished() {
        let _ = stop.write_all(b"stop");
    }
    let started = runner
        .join()
        .map_err(|_| GenError::External("pktgen start thread panicked".into()))?;
    let wall = t0.elapsed().as_secs_f64();
    if let Err(e) = started {
        // "stop" interrupts the blocking "start" with EINTR on some kernels.
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(GenError::External(format!("pktgen start: {e}")));
        }
    }
    let dev = dir.join(&spec.ifname);
    let text = std::fs::read_to_string(&dev)
        .map_err(|e| GenError::External(format!("read {}: {e}", dev.display())))?;
    drop(cleanup);
    let (sent, errors, secs) = parse_pktgen_result(&text)
        .ok_or_else(|| GenError::External(format!("pktgen result unreadable: {}", tail(&text))))?;
    Ok(GenReport {
        generator: "pktgen".into(),
        sent,
        tx_dropped: errors,
        secs: if secs > 0.0 { secs } else { wall },
    })
}

// ------------------------------------------------------------ processes

/// A child process in its own process group, interrupted and then killed
/// when dropped.
struct ChildGuard {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Option<mpsc::Receiver<()>>,
}

impl ChildGuard {
    fn spawn(cmd: Command) -> Result<Self, GenError> {
        Self::spawn_marked(cmd, None)
    }

    /// Spawns with stdout/stderr captured; `marker` on a stdout line
    /// signals the start.
    fn spawn_marked(mut cmd: Command, marker: Option<&'static str>) -> Result<Self, GenError> {
        use std::os::unix::process::CommandExt as _;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let program = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .spawn()
            .map_err(|e| GenError::External(format!("spawn {program}: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().map(|out| {
            std::thread::spawn(move || {
                let mut all = String::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if marker.is_some_and(|m| line.contains(m)) {
                        let _ = tx.send(());
                    }
                    all.push_str(&line);
                    all.push('\n');
                }
                all
            })
        });
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        });
        Ok(ChildGuard {
            child,
            stdout,
            stderr,
            started: marker.map(|_| rx),
        })
    }

    fn pgid(&self) -> Option<Pid> {
        i32::try_from(self.child.id()).ok().map(Pid::from_raw)
    }

    /// SIGINT to the group, up to 3 s to exit, then SIGKILL.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        if let Some(pg) = self.pgid() {
            let _ = killpg(pg, Signal::SIGINT);
        }
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(pg) = self.pgid() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        self.child.wait().ok()
    }

    /// Collected output (call after the child exited).
    fn take_output(&mut self) -> (String, String) {
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        (join(self.stdout.take()), join(self.stderr.take()))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

struct Bounded {
    stdout: String,
    stderr: String,
    status: String,
    /// From the start marker (or spawn) to exit.
    secs: f64,
}

/// Runs `cmd` until it exits or `duration` after it started sending
/// (`marker` seen on stdout, or spawn without one), then SIGINT. `repin`:
/// move every process of the group onto that CPU once started.
fn run_bounded(
    cmd: Command,
    marker: Option<&'static str>,
    duration: Duration,
    repin: Option<usize>,
) -> Result<Bounded, GenError> {
    let mut g = ChildGuard::spawn_marked(cmd, marker)?;
    let mut t0 = Instant::now();
    if let Some(rx) = g.started.take() {
        let until = Instant::now() + STARTUP_LIMIT;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break, // exited
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= until {
                        return Err(GenError::External(format!(
                            "no {marker:?} within {} s",
                            STARTUP_LIMIT.as_secs()
                        )));
                    }
                }
            }
        }
        t0 = Instant::now();
    }
    if let Some(core) = repin {
        repin_group(g.child.id(), core);
    }
    let deadline = t0 + duration;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = g.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = g
        .stop()
        .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    let secs = t0.elapsed().as_secs_f64();
    let (stdout, stderr) = g.take_output();
    Ok(Bounded {
        stdout,
        stderr,
        status,
        secs,
    })
}

/// Pins `pid` and its children to `core` (best effort: a process that
/// exited meanwhile is skipped).
fn repin_group(pid: u32, core: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(core).is_err() {
        return;
    }
    // trafgen forks its sender right after "Running!": give it a moment.
    std::thread::sleep(Duration::from_millis(20));
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let pids =
        std::iter::once(pid.to_string()).chain(children.split_whitespace().map(String::from));
    for p in pids {
        if let Ok(p) = p.parse::<i32>() {
            let _ = nix::sched::sched_setaffinity(Pid::from_raw(p), &set);
        }
    }
}

/// tx_packets of `dev` in the calling thread's namespace.
pub fn dev_tx_packets(dev: &str) -> Result<u64, GenError> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(|e| GenError::External(format!("/proc/thread-self/net/dev: {e}")))?;
    parse_net_dev_tx(&text, dev)
        .ok_or_else(|| GenError::External(format!("no {dev} in /proc/thread-self/net/dev")))
}

/// `/proc/net/dev`: the 10th counter after `dev:` is tx_packets.
pub fn parse_net_dev_tx(text: &str, dev: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == dev).then(|| rest.split_whitespace().nth(9)?.parse().ok())?
    })
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Last lines of a tool's output, for an error message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::gen::{plain_frame, set_new_flow_port, vxlan_frame, VxlanOuter};

    fn flow(i: u16) -> FlowAddr {
        FlowAddr {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 244, 1, 2),
            dst_ip: Ipv4Addr::new(10, 96, 0, 16 + i as u8),
            src_port: 10_000 + i,
            dst_port: 80,
        }
    }

    fn templates(n: u16) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| plain_frame(&flow(i), 64, 60).unwrap())
            .collect()
    }

    #[test]
    fn generator_kinds_parse_by_name() {
        for g in GeneratorKind::ALL {
            assert_eq!(g.name().parse::<GeneratorKind>(), Ok(g));
        }
        assert!("pktgen2".parse::<GeneratorKind>().is_err());
        assert!(GeneratorKind::Trafgen.is_external() && !GeneratorKind::Afxdp.is_external());
    }

    #[test]
    fn trafgen_fixed_flow_config_is_the_frames_bytes_on_one_cpu() {
        let frames = templates(2);
        let cfg = trafgen_config(&frames, FlowPattern::Templates, Some(1)).unwrap();
        let lines: Vec<&str> = cfg.lines().skip(1).collect();
        assert_eq!(lines.len(), 2);
        for (line, frame) in lines.iter().zip(&frames) {
            let body = line
                .strip_prefix("cpu(1): {")
                .and_then(|l| l.strip_suffix(" }"))
                .expect("cpu(1): { ... }");
            let bytes: Vec<u8> = body
                .split_whitespace()
                .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).unwrap())
                .collect();
            assert_eq!(&bytes, frame);
        }
        assert!(!trafgen_config(&frames, FlowPattern::Templates, None)
            .unwrap()
            .contains("cpu("));
    }

    #[test]
    fn trafgen_all_new_config_counts_the_source_port() {
        let frames = templates(1);
        let cfg = trafgen_config(&frames, FlowPattern::AllNew, Some(0)).unwrap();
        let want_head = "cpu(0): { eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01, type=0x0800), ipv4(tos=0, id=0, df, ttl=64, sa=10.244.1.2, da=10.96.0.16), udp(sp=dinc(1024, 65535), dp=80), 0x6b";
        let line = cfg.lines().nth(1).unwrap();
        assert!(line.starts_with(want_head), "{line}");
        assert_eq!(line.matches("0x6b").count(), 18, "payload bytes");
        // A VXLAN template is sent as it is, never renumbered.
        let outer = VxlanOuter {
            src_mac: [2, 0, 0, 0, 1, 1],
            dst_mac: [2, 0, 0, 0, 1, 2],
            src_ip: Ipv4Addr::new(192, 168, 50, 1),
            dst_ip: Ipv4Addr::new(192, 168, 50, 2),
            dst_port: 8472,
            vni: 1,
        };
        let v = vxlan_frame(&outer, &frames[0], 1).unwrap();
        assert!(trafgen_config(std::slice::from_ref(&v), FlowPattern::Templates, None).is_ok());
        assert!(trafgen_config(std::slice::from_ref(&v), FlowPattern::AllNew, None).is_err());
        let f = tool_flow(&v).unwrap();
        assert_eq!(f.dst_port, 80, "inner flow");
        assert_eq!(f.src_mac, [2, 0, 0, 0, 1, 1], "outer MACs");
    }

    /// trafgen itself (when installed, no root needed: `--out x.pcap`)
    /// must emit exactly the AF_XDP generator's packet sequence.
    #[test]
    fn trafgen_sends_the_afxdp_generators_packets() {
        if which("trafgen").is_none() {
            eprintln!("SKIP trafgen_sends_the_afxdp_generators_packets: trafgen not installed (Debian netsniff-ng)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("kxdp-trafgen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let frames = templates(3);
        for pattern in [FlowPattern::Templates, FlowPattern::AllNew] {
            let cfg = dir.join("t.cfg");
            let pcap = dir.join("t.pcap");
            std::fs::write(&cfg, trafgen_config(&frames, pattern, None).unwrap()).unwrap();
            let out = Command::new("trafgen")
                .args(["--in", &cfg.display().to_string(), "--out"])
                .arg(&pcap)
                .args([
                    "--num",
                    "9",
                    "--cpus",
                    "1",
                    "--no-sock-mem",
                    "--notouch-irq",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let summary = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                parse_trafgen_summary(&summary).map(|s| s.0),
                Some(9),
                "{summary}"
            );
            let got = read_pcap(&std::fs::read(&pcap).unwrap());
            assert_eq!(got.len(), 9);
            for (seq, pkt) in got.iter().enumerate() {
                let mut want = frames[seq % 3].clone();
                if pattern == FlowPattern::AllNew {
                    assert!(set_new_flow_port(&mut want, seq as u64, 3));
                }
                assert_eq!(pkt, &want, "{pattern:?} packet {seq}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Records of a classic little-endian pcap file.
    fn read_pcap(b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut off = 24;
        while let Some(h) = b.get(off..off + 16) {
            let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
            out.push(b[off + 16..off + 16 + len].to_vec());
            off += 16 + len;
        }
        out
    }

    #[test]
    fn trafgen_summary_and_args() {
        let text = "     1 packets to schedule\n    60 bytes in total\nRunning! Hang up with ^C!\n\n\n     3000000 packets outgoing\n   180000000 bytes outgoing\n           0 sec, 1 usec on CPU0 (0 packets)\n           4 sec, 505321 usec on CPU1 (3000000 packets)\n";
        let (sent, secs) = parse_trafgen_summary(text).unwrap();
        assert_eq!(sent, 3_000_000);
        assert!((secs - 4.505321).abs() < 1e-9);
        assert_eq!(parse_trafgen_summary("Running!\n"), None);
        let a = trafgen_args(Path::new("/t/x.cfg"), "eth0", 1, 500, 0).join(" ");
        assert_eq!(
            a,
            "--in /t/x.cfg --out eth0 --num 500 --no-sock-mem --notouch-irq --cpus 2"
        );
        let a = trafgen_args(Path::new("/t/x.cfg"), "eth0", 1, 500, 1000).join(" ");
        assert!(a.ends_with("--cpus 1 --rate 1000pps"), "{a}");
    }

    #[test]
    fn xdp_trafficgen_args_carry_the_template_flow() {
        let f = tool_flow(&templates(1)[0]).unwrap();
        assert_eq!(
            xdp_trafficgen_args(&f, "eth0", 1000).join(" "),
            "udp --dst-mac 02:00:00:00:00:02 --src-mac 02:00:00:00:00:01 --dst-addr 10.96.0.16 --src-addr 10.244.1.2 --dst-port 80 --src-port 10000 --num-packets 1000 --threads 1 eth0"
        );
        assert!(tool_flow(&[0u8; 30]).is_err());
        assert!(bpf_load_failure(
            "libbpf: failed to load object 'xdp_trafficgen'\nError probing kernel support: No such process"
        ));
    }

    #[test]
    fn pktgen_script_configures_the_generator_veth_on_its_core() {
        let run = ExtRun {
            kind: GeneratorKind::Pktgen,
            ifname: "eth0".into(),
            frames: templates(3),
            pattern: FlowPattern::Templates,
            duration: Duration::from_secs(1),
            max_packets: 1_000_000,
            rate_pps: 0,
            core: 0,
            scratch: PathBuf::from("/tmp"),
        };
        let spec = PktgenSpec::from_run(&run).unwrap();
        let want = "#!/bin/sh
# kxdp-bench: kernel pktgen run (needs /proc/net/pktgen: modprobe pktgen)
set -e
PG=/proc/net/pktgen
echo \"rem_device_all\" > $PG/kpktgend_0
echo \"add_device eth0\" > $PG/kpktgend_0
echo \"count 1000000\" > $PG/eth0
echo \"clone_skb 0\" > $PG/eth0
echo \"pkt_size 60\" > $PG/eth0
echo \"delay 0\" > $PG/eth0
echo \"dst_mac 02:00:00:00:00:02\" > $PG/eth0
echo \"src_mac 02:00:00:00:00:01\" > $PG/eth0
echo \"src_min 10.244.1.2\" > $PG/eth0
echo \"src_max 10.244.1.2\" > $PG/eth0
echo \"dst_min 10.96.0.16\" > $PG/eth0
echo \"dst_max 10.96.0.18\" > $PG/eth0
echo \"udp_src_min 10000\" > $PG/eth0
echo \"udp_src_max 10002\" > $PG/eth0
echo \"udp_dst_min 80\" > $PG/eth0
echo \"udp_dst_max 80\" > $PG/eth0
echo start > $PG/pgctrl   # blocks until count packets are sent or 'stop'
cat $PG/eth0
";
        assert_eq!(pktgen_script(&spec), want);
        // All-new and a rate.
        let spec = PktgenSpec::from_run(&ExtRun {
            pattern: FlowPattern::AllNew,
            rate_pps: 5000,
            core: 1,
            ..run
        })
        .unwrap();
        let cmds = pktgen_commands(&spec);
        assert!(cmds.contains(&(PktgenFile::Thread(1), "add_device eth0".into())));
        assert!(cmds.contains(&(PktgenFile::Device("eth0".into()), "ratep 5000".into())));
        assert!(cmds.contains(&(PktgenFile::Device("eth0".into()), "udp_src_min 1024".into())));
        assert!(cmds.contains(&(
            PktgenFile::Device("eth0".into()),
            "udp_src_max 65535".into()
        )));
    }

    #[test]
    fn pktgen_result_and_net_dev_parse() {
        // Documentation/networking/pktgen.rst's example output.
        let text = "Params: count 10000000  min_pkt_size: 60  max_pkt_size: 60
     frags: 0  delay: 0  clone_skb: 1000000  ifname: eth1
Current:
     pkts-sofar: 10000000  errors: 39664
     started: 1103053986245187us  stopped: 1103053999346329us idle: 25us
Result: OK: 13101142(c12220741+d880401) usec, 10000000 (60byte,0frags)
  763292pps 390Mb/sec (390805504bps) errors: 39664
";
        let (sent, errors, secs) = parse_pktgen_result(text).unwrap();
        assert_eq!((sent, errors), (10_000_000, 39_664));
        assert!((secs - 13.101142).abs() < 1e-9);
        assert_eq!(parse_pktgen_result("Result: Idle"), None);
        let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 1000      10    0    0    0     0          0         0   600000   10000    0    0    0     0       0          0
";
        assert_eq!(parse_net_dev_tx(dev, "eth0"), Some(10_000));
        assert_eq!(parse_net_dev_tx(dev, "lo"), Some(0));
        assert_eq!(parse_net_dev_tx(dev, "eth1"), None);
    }

    #[test]
    fn bounded_children_are_stopped_at_the_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo go; exec sleep 30"]);
        let t0 = Instant::now();
        let out = run_bounded(cmd, Some("go"), Duration::from_millis(200), None).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(out.stdout.contains("go"));
        assert!(out.secs >= 0.2 && out.secs < 4.0, "{}", out.secs);
    }
}
