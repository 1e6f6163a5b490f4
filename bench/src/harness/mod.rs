//! The veth harness behind `kxdp-bench` (DESIGN §7): one invocation
//! builds the same topology for every mode, pins the dataplane under test
//! to one core and generator + sink to the other, and measures packets/s
//! delivered at the sink.
//!
//! ```text
//!  pod ns g (10.244.1.2)                         pod ns s1 (10.244.2.2), s2 (10.244.2.3)
//!   eth0: generator (AF_XDP tx)                    eth0: sink (counted)
//!     | veth                                          | veth
//!  node-a: the dataplane under test (DUT core)     node-b: plain Linux, Flannel vxlan
//!     | eth0 192.168.50.1                             | eth0 192.168.50.2
//!  ------------------ underlay ns: bridge br0 ---------------------------
//!  direct mode only: veth bd0 (in g) <-> bd1 (in s1)
//! ```
//!
//! Modes ([`Mode`]): `direct` (generator -> sink over one veth: the
//! ceiling), `kernel-fwd` (node-a routes pod -> remote pod through kernel
//! VXLAN, no DNAT), `kernel-iptables` / `kernel-nftables` (pod -> ClusterIP
//! through kube-proxy-style rules for N Services, conntrack, kernel VXLAN),
//! `xdp-redirect` (the in-kernel XDP ceiling: an XDP program on node-a's
//! pod veth rewrites the MACs and `bpf_redirect_map`s every frame to the
//! uplink, no AF_XDP, no userspace; the generator sends the frames
//! `kxdp-null` sends), `kxdp-null` (`kxdp run --null-pipeline` between the
//! pod veth and the uplink; the generator sends frames already
//! VXLAN-encapsulated, so what leaves node-a is byte for byte what the full
//! pipeline would emit) and `kxdp` (the full pipeline: DNAT + VXLAN encap
//! on one worker).
//!
//! Every load loop is bounded by a packet count and a deadline; every
//! namespace, rule and process is owned by a guard and goes away on drop.
//! Rules and XDP programs are only ever installed inside namespaces this
//! harness created.

pub mod extgen;
pub mod gen;
pub mod kube_rules;
pub mod latency;
pub mod plots;
pub mod report;
pub mod testbed;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::report::{CaseResult, Meta, Report, RunResult};
use self::testbed::Testbed;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("topology: {0}")]
    Topology(String),
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Gen(#[from] gen::GenError),
    #[error("kxdp: {0}")]
    Kxdp(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What forwards between generator and sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Direct,
    KernelFwd,
    KernelIptables,
    KernelNftables,
    XdpRedirect,
    KxdpNull,
    Kxdp,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Direct,
        Mode::KernelFwd,
        Mode::KernelIptables,
        Mode::KernelNftables,
        Mode::XdpRedirect,
        Mode::KxdpNull,
        Mode::Kxdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::KernelFwd => "kernel-fwd",
            Mode::KernelIptables => "kernel-iptables",
            Mode::KernelNftables => "kernel-nftables",
            Mode::XdpRedirect => "xdp-redirect",
            Mode::KxdpNull => "kxdp-null",
            Mode::Kxdp => "kxdp",
        }
    }

    /// Whether the number of Services changes what this mode does.
    pub fn uses_services(self) -> bool {
        matches!(
            self,
            Mode::KernelIptables | Mode::KernelNftables | Mode::Kxdp
        )
    }

    /// Whether node-a runs kxdp (otherwise it is a Linux node).
    pub fn runs_kxdp(self) -> bool {
        matches!(self, Mode::KxdpNull | Mode::Kxdp)
    }

    /// Whether the generator sends the VXLAN frames node-a's full pipeline
    /// would emit, for node-a to forward unchanged but for the MACs (only
    /// the AF_XDP generator can; fixed flows even with `all_new`).
    pub fn sends_vxlan(self) -> bool {
        matches!(self, Mode::KxdpNull | Mode::XdpRedirect)
    }

    /// Whether node-a's pod veth runs NAPI (XDP attached) in a kthread the
    /// harness pins to the DUT core (see `threaded_napi`).
    pub fn dut_runs_xdp(self) -> bool {
        matches!(self, Mode::XdpRedirect | Mode::KxdpNull | Mode::Kxdp)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Mode::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode {s:?} (one of {})", names.join(", "))
            })
    }
}

/// Which generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    /// The project's AF_XDP generator (copy mode), UDP sockets if it fails.
    Afxdp,
    /// Kernel UDP sockets only (not available for `kxdp-null` and
    /// `xdp-redirect`, which need crafted VXLAN frames).
    Udp,
    /// trafgen (Debian netsniff-ng) sending the same frames
    /// ([`extgen`]).
    Trafgen,
    /// `xdp-trafficgen udp` (Debian xdp-tools): one flow ([`extgen`]).
    XdpTrafficgen,
    /// Kernel pktgen, only where `/proc/net/pktgen` exists ([`extgen`]).
    Pktgen,
}

/// A run description (also the format of `bench/configs/*.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchConfig {
    pub modes: Vec<Mode>,
    /// Numbers of Services (modes that do not use Services run once).
    pub services: Vec<usize>,
    /// Numbers of concurrent 5-tuples (distinct source ports, spread over
    /// the Services).
    pub flows: Vec<usize>,
    /// Runs per case; the report gives the median.
    pub runs: usize,
    /// Seconds per run.
    pub duration: f64,
    /// Frame size without FCS (60 = a 64-byte frame on the wire).
    pub frame_len: usize,
    /// Endpoints per Service (the sink pods, 1 or 2).
    pub endpoints: usize,
    /// CPU for the dataplane under test.
    pub dut_core: usize,
    /// CPU for generator, sink and the harness itself.
    pub gen_core: usize,
    /// Upper bound on packets per run (the deadline is the other bound).
    pub max_packets: u64,
    /// `afxdp`, `udp`, `trafgen`, `xdp-trafficgen` or `pktgen`.
    pub generator: GeneratorKind,
    /// Offered load of the throughput runs, packets/s (0: as fast as the
    /// generator goes). trafgen (`--rate`), pktgen (`ratep`) and the
    /// AF_XDP generator pace; xdp-trafficgen and the UDP fallback cannot.
    pub rate_pps: u64,
    /// The `kxdp` binary (default: next to this binary).
    pub kxdp: Option<PathBuf>,
    /// Extra arguments for `kxdp run` (e.g. `--busy-poll`).
    pub kxdp_args: Vec<String>,
    /// Warm-up before the first run of each case (ARP, conntrack), seconds.
    pub warmup: f64,
    /// kxdp and xdp-redirect modes: switch the pod veth's NAPI to a
    /// kthread pinned to the DUT core (false: NAPI runs where the
    /// generator's transmit schedules it, i.e. on the generator core).
    pub threaded_napi: bool,
    /// Every packet a new 5-tuple (source port rewritten per packet; see
    /// `gen::FlowPattern::AllNew`) instead of `flows` fixed flows: the
    /// conntrack-creation path. `kxdp-null` and `xdp-redirect` (no
    /// per-flow state) and the UDP fallback generator send the fixed flows.
    pub all_new: bool,
    /// After each case's throughput runs, a latency run of `duration`
    /// seconds at this many packets/s (0: none). Pick about half of the
    /// slowest mode's throughput to compare at equal load.
    pub latency_pps: u64,
    /// kxdp modes: run kxdp with `--busy-poll` (its worker drives the
    /// veths' NAPI; kxdp turns threaded NAPI off itself, so
    /// `threaded_napi` is not applied).
    pub busy_poll: bool,
    /// kxdp modes: run kxdp's worker at this SCHED_FIFO priority.
    pub rt_priority: Option<u8>,
    /// CI mode: assert only that every case delivered packets.
    pub smoke: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            modes: Mode::ALL.to_vec(),
            services: vec![100, 10_000],
            flows: vec![1, 10_000],
            runs: 3,
            duration: 5.0,
            frame_len: 60,
            endpoints: 2,
            dut_core: 1,
            gen_core: 0,
            max_packets: 50_000_000,
            generator: GeneratorKind::Afxdp,
            rate_pps: 0,
            kxdp: None,
            kxdp_args: Vec::new(),
            warmup: 0.5,
            threaded_napi: true,
            all_new: false,
            latency_pps: 0,
            busy_poll: false,
            rt_priority: None,
            smoke: false,
        }
    }
}

impl BenchConfig {
    /// The `--smoke` settings: every mode, 10 Services, 1 and 100 flows,
    /// one run of 1 s.
    pub fn smoke() -> Self {
        BenchConfig {
            services: vec![10],
            flows: vec![1, 100],
            runs: 1,
            duration: 1.0,
            warmup: 0.3,
            // A short latency run too, so the timing path is exercised.
            latency_pps: 2000,
            smoke: true,
            ..BenchConfig::default()
        }
    }

    /// Parses a TOML run description.
    pub fn from_toml(text: &str) -> Result<Self, HarnessError> {
        toml::from_str(text).map_err(|e| HarnessError::Config(e.to_string()))
    }

    /// Checks the limits the topology imposes.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if self.modes.is_empty() || self.services.is_empty() || self.flows.is_empty() {
            return bad("modes, services and flows must not be empty".into());
        }
        if self.runs == 0 || !(self.duration > 0.0 && self.duration <= 600.0) {
            return bad("runs >= 1 and 0 < duration <= 600 s".into());
        }
        if let Some(&n) = self.services.iter().find(|&&n| n == 0 || n > 100_000) {
            return bad(format!("{n} Services: 1..=100000"));
        }
        if let Some(&f) = self.flows.iter().find(|&&f| f == 0 || f > 50_000) {
            return bad(format!("{f} flows: 1..=50000 (one source port each)"));
        }
        if !(60..=1400).contains(&self.frame_len) {
            return bad(format!("frame_len {}: 60..=1400", self.frame_len));
        }
        if !(1..=2).contains(&self.endpoints) {
            return bad("endpoints: 1 or 2".into());
        }
        if self.dut_core == self.gen_core {
            return bad("dut_core and gen_core must differ".into());
        }
        if self.rate_pps > 0
            && matches!(
                self.generator,
                GeneratorKind::Udp | GeneratorKind::XdpTrafficgen
            )
        {
            return bad(format!(
                "rate_pps: the {} generator cannot pace",
                self.generator.name()
            ));
        }
        Ok(())
    }

    /// Cases in run order: (mode, services) testbeds, each with its flows.
    pub fn testbeds(&self) -> Vec<(Mode, usize)> {
        let mut out = Vec::new();
        for &m in &self.modes {
            if m.uses_services() {
                out.extend(self.services.iter().map(|&n| (m, n)));
            } else {
                out.push((m, 0));
            }
        }
        out
    }
}

/// The ClusterIP of Service `i` (10.96.0.16 + i, inside 10.96.0.0/12).
pub fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 16)).wrapping_add(i as u32))
}

/// Service port clients use, and the endpoints' target port.
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// First generator source port; flow `i` uses `SRC_PORT_BASE + i`.
pub const SRC_PORT_BASE: u16 = 10_000;

/// Runs every case of `cfg`; failures of one case are recorded in its
/// result and the next case runs. `progress` gets one line per step.
pub fn run_all(cfg: &BenchConfig, command: &str, progress: &mut dyn FnMut(&str)) -> Report {
    let mut meta = Meta::collect(cfg, command);
    if let Err(e) = testbed::pin_process(cfg.gen_core) {
        meta.notes.push(format!("pinning the harness: {e}"));
    }
    let mut cases = Vec::new();
    for (mode, services) in cfg.testbeds() {
        progress(&format!("{}: {services} Services: setting up", mode.name()));
        let bed = Testbed::build(cfg, mode, services);
        let mut bed = match bed {
            Ok(b) => b,
            Err(e) => {
                for &flows in &cfg.flows {
                    cases.push(CaseResult::failed(
                        cfg,
                        mode,
                        services,
                        flows,
                        e.to_string(),
                    ));
                }
                progress(&format!("{}: setup failed: {e}", mode.name()));
                continue;
            }
        };
        for note in bed.notes.drain(..) {
            if !meta.notes.contains(&note) {
                meta.notes.push(note);
            }
        }
        for &flows in &cfg.flows {
            let case = run_case(cfg, &mut bed, mode, services, flows, progress);
            cases.push(case);
        }
    }
    Report { meta, cases }
}

fn run_case(
    cfg: &BenchConfig,
    bed: &mut Testbed,
    mode: Mode,
    services: usize,
    flows: usize,
    progress: &mut dyn FnMut(&str),
) -> CaseResult {
    let mut case = CaseResult::new(cfg, mode, services, flows);
    let frames = match bed.frames(mode, services, flows) {
        Ok(f) => f,
        Err(e) => {
            case.error = Some(e.to_string());
            return case;
        }
    };
    let targets = bed.udp_targets(mode, services, flows);
    // Warm-up: neighbours resolve, conntrack entries exist.
    let warmup = Duration::from_secs_f64(cfg.warmup);
    if let Err(e) = bed.generate(mode, &frames, &targets, warmup, cfg) {
        case.error = Some(format!("warm-up: {e}"));
        return case;
    }
    std::thread::sleep(Duration::from_millis(200));
    for run in 0..cfg.runs {
        let before = bed.counters();
        let duration = Duration::from_secs_f64(cfg.duration);
        let gen = bed.generate(mode, &frames, &targets, duration, cfg);
        // Let the last frames drain through the path.
        std::thread::sleep(Duration::from_millis(150));
        let after = bed.counters();
        match gen {
            Ok(g) => {
                let r = RunResult::from_counters(&g, &before, &after);
                progress(&format!(
                    "{} N={services} flows={flows} run {}: {:.3} Mpps delivered ({} sent by {}, {} delivered)",
                    mode.name(),
                    run + 1,
                    r.mpps,
                    g.sent,
                    g.generator,
                    r.delivered
                ));
                case.generator.clone_from(&g.generator);
                case.runs.push(r);
            }
            Err(e) => {
                case.error = Some(format!("run {}: {e}", run + 1));
                return case;
            }
        }
    }
    if cfg.latency_pps > 0 {
        let duration = Duration::from_secs_f64(cfg.duration);
        match bed.latency_run(mode, &frames, duration, cfg, cfg.latency_pps) {
            Ok(l) => {
                progress(&format!(
                    "{} N={services} flows={flows} latency at {} pps: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({} of {} timed)",
                    mode.name(),
                    l.pps,
                    l.p50_us,
                    l.p99_us,
                    l.p999_us,
                    l.samples,
                    l.sent
                ));
                case.latency = Some(l);
            }
            Err(e) => case.error = Some(format!("latency run: {e}")),
        }
    }
    if let Some(log) = bed.dut_drops() {
        case.dut_drops = Some(log);
    }
    case.finish();
    case
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_validate_and_expand_into_testbeds() {
        let cfg = BenchConfig::from_toml(
            "modes = [\"direct\", \"kxdp\"]\nservices = [100, 10000]\nflows = [1]\nruns = 1\nduration = 1.0\n",
        )
        .expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(
            cfg.testbeds(),
            vec![(Mode::Direct, 0), (Mode::Kxdp, 100), (Mode::Kxdp, 10_000)]
        );
        assert!(BenchConfig::from_toml("modes = [\"warp\"]").is_err());
        assert!(BenchConfig::from_toml("bogus = 1").is_err());
        let mut bad = BenchConfig::default();
        bad.gen_core = bad.dut_core;
        assert!(bad.validate().is_err());
        BenchConfig::smoke().validate().expect("smoke is valid");
    }

    #[test]
    fn service_ips_stay_in_the_service_cidr_and_modes_round_trip() {
        assert_eq!(service_ip(0), Ipv4Addr::new(10, 96, 0, 16));
        assert_eq!(service_ip(30_000), Ipv4Addr::new(10, 96, 117, 64));
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        assert_eq!("xdp-redirect".parse::<Mode>(), Ok(Mode::XdpRedirect));
        assert!("xdp_redirect".parse::<Mode>().is_err());
        let cfg =
            BenchConfig::from_toml("modes = [\"xdp-redirect\", \"kxdp-null\"]\n").expect("parses");
        assert_eq!(
            cfg.testbeds(),
            vec![(Mode::XdpRedirect, 0), (Mode::KxdpNull, 0)]
        );
        // The default (and so --smoke) runs the ceiling too.
        assert!(BenchConfig::smoke().modes.contains(&Mode::XdpRedirect));
    }

    #[test]
    fn shipped_configs_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("bench/configs") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                let cfg = BenchConfig::from_toml(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                cfg.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no configs in {}", dir.display());
    }
}
