//! Results of a `kxdp-bench` invocation: JSON (everything, per run) and a
//! Markdown table (median Mpps per case and the ratios DESIGN §7 asks
//! for).

use std::fmt::Write as _;
use std::process::Command;

use serde::Serialize;

use super::gen::{third_party, GenReport, ThirdParty};
use super::latency::LatencyResult;
use super::testbed::Counters;
use super::{BenchConfig, Mode};

/// Where and how the numbers were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub command: String,
    pub config: BenchConfig,
    pub third_party_generators: Vec<ThirdParty>,
    /// Pinning and setup facts, and anything that did not work.
    pub notes: Vec<String>,
}

fn cmd_stdout(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Meta {
    pub fn collect(cfg: &BenchConfig, command: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Meta {
            date: cmd_stdout("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            kernel: cmd_stdout("uname", &["-r"]),
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            command: command.to_owned(),
            config: cfg.clone(),
            third_party_generators: third_party(),
            notes: Vec::new(),
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub sent: u64,
    pub gen_tx_dropped: u64,
    pub secs: f64,
    /// Packets received by the sink interfaces.
    pub delivered: u64,
    /// Datagrams that reached the sinks' UDP layer.
    pub udp_delivered: u64,
    pub dut_in: u64,
    pub dut_out: u64,
    /// Kernel drop counters on the generator veth and node-a.
    pub kernel_drops: u64,
    /// Delivered packets per second, in millions.
    pub mpps: f64,
    /// Fraction of the DUT core that was busy during the run (anything it
    /// ran: the dataplane, softirqs, and on a shared machine other work).
    pub dut_busy: f64,
    /// DUT core busy time per delivered packet, ns.
    pub dut_ns_per_packet: f64,
    /// `mpps / dut_busy`: what one fully busy DUT core would deliver at
    /// this cost per packet. Compares paths whose throughput is bounded by
    /// the generator, not by the DUT.
    pub mpps_per_dut_core: f64,
}

impl RunResult {
    pub fn from_counters(g: &GenReport, before: &Counters, after: &Counters) -> Self {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let delivered = d(after.sink_rx, before.sink_rx);
        let mpps = if g.secs > 0.0 {
            delivered as f64 / g.secs / 1e6
        } else {
            0.0
        };
        let busy_ticks = d(after.dut_busy_ticks, before.dut_busy_ticks);
        let total_ticks = d(after.dut_total_ticks, before.dut_total_ticks);
        let dut_busy = if total_ticks > 0 {
            busy_ticks as f64 / total_ticks as f64
        } else {
            0.0
        };
        // /proc/stat counts in USER_HZ (100 on Linux) ticks.
        let busy_ns = busy_ticks as f64 * 1e7;
        RunResult {
            sent: g.sent,
            gen_tx_dropped: g.tx_dropped,
            secs: g.secs,
            delivered,
            udp_delivered: d(after.sink_udp, before.sink_udp),
            dut_in: d(after.dut_in, before.dut_in),
            dut_out: d(after.dut_out, before.dut_out),
            kernel_drops: d(after.drops, before.drops),
            mpps,
            dut_busy,
            dut_ns_per_packet: if delivered > 0 {
                busy_ns / delivered as f64
            } else {
                0.0
            },
            mpps_per_dut_core: if dut_busy > 0.0 { mpps / dut_busy } else { 0.0 },
        }
    }
}

/// One (mode, Services, flows) case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub mode: Mode,
    /// 0 for modes that do not use Services.
    pub services: usize,
    pub flows: usize,
    pub frame_len: usize,
    pub generator: String,
    pub runs: Vec<RunResult>,
    pub median_mpps: Option<f64>,
    /// Median of the runs' `mpps_per_dut_core`.
    pub median_mpps_per_dut_core: Option<f64>,
    /// kxdp's non-zero drop/forward counters after the case.
    pub dut_drops: Option<String>,
    /// The latency run (`latency_pps`), if any.
    pub latency: Option<LatencyResult>,
    pub error: Option<String>,
}

impl CaseResult {
    pub fn new(cfg: &BenchConfig, mode: Mode, services: usize, flows: usize) -> Self {
        CaseResult {
            mode,
            services,
            flows,
            frame_len: cfg.frame_len,
            generator: String::new(),
            runs: Vec::new(),
            median_mpps: None,
            median_mpps_per_dut_core: None,
            dut_drops: None,
            latency: None,
            error: None,
        }
    }

    pub fn failed(
        cfg: &BenchConfig,
        mode: Mode,
        services: usize,
        flows: usize,
        error: String,
    ) -> Self {
        CaseResult {
            error: Some(error),
            ..CaseResult::new(cfg, mode, services, flows)
        }
    }

    /// Computes the median over the runs.
    pub fn finish(&mut self) {
        self.median_mpps = median(self.runs.iter().map(|r| r.mpps).collect());
        self.median_mpps_per_dut_core =
            median(self.runs.iter().map(|r| r.mpps_per_dut_core).collect());
    }

    /// Smoke criterion: ran without error and every run delivered packets.
    pub fn delivered_packets(&self) -> bool {
        self.error.is_none()
            && !self.runs.is_empty()
            && self.runs.iter().all(|r| r.delivered > 0)
            && self.latency.as_ref().is_none_or(|l| l.samples > 0)
    }
}

/// Median (mean of the middle two for an even count); None when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// The whole result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub cases: Vec<CaseResult>,
}

impl Report {
    fn case(&self, mode: Mode, services: usize, flows: usize) -> Option<&CaseResult> {
        self.cases
            .iter()
            .find(|c| c.mode == mode && c.services == services && c.flows == flows)
    }

    fn mpps(&self, mode: Mode, services: usize, flows: usize) -> Option<f64> {
        self.case(mode, services, flows)?.median_mpps
    }

    fn per_core(&self, mode: Mode, services: usize, flows: usize) -> Option<f64> {
        self.case(mode, services, flows)?.median_mpps_per_dut_core
    }

    /// The in-kernel XDP redirect ceiling against kxdp, per flows (and
    /// Services for `kxdp`): empty without `xdp-redirect` cases.
    fn ceiling_table(&self) -> String {
        let mut out = String::new();
        let mut flows: Vec<usize> = self
            .cases
            .iter()
            .filter(|c| c.mode == Mode::XdpRedirect)
            .map(|c| c.flows)
            .collect();
        flows.sort_unstable();
        flows.dedup();
        if flows.is_empty() {
            return out;
        }
        let mut services: Vec<usize> = self
            .cases
            .iter()
            .filter(|c| c.mode == Mode::Kxdp)
            .map(|c| c.services)
            .collect();
        services.sort_unstable();
        services.dedup();
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        out.push_str("\nAgainst the in-kernel XDP redirect ceiling (`xdp-redirect`: MAC rewrite + `bpf_redirect_map`, no DNAT, no encapsulation, no conntrack):\n\n| flows | xdp-redirect Mpps | xdp-redirect Mpps per DUT core | xdp-redirect / direct | kxdp-null / xdp-redirect | per DUT core: kxdp-null / xdp-redirect |");
        for n in &services {
            let _ = write!(
                out,
                " kxdp (N={n}) / xdp-redirect | per DUT core: kxdp (N={n}) / xdp-redirect |"
            );
        }
        out.push_str("\n|---:|---:|---:|---:|---:|---:|");
        out.push_str(&"---:|---:|".repeat(services.len()));
        out.push('\n');
        for f in flows {
            let (x, xc) = (
                self.mpps(Mode::XdpRedirect, 0, f),
                self.per_core(Mode::XdpRedirect, 0, f),
            );
            let _ = write!(
                out,
                "| {f} | {} | {} | {} | {} | {} |",
                num(x),
                num(xc),
                ratio(x, self.mpps(Mode::Direct, 0, f)),
                ratio(self.mpps(Mode::KxdpNull, 0, f), x),
                ratio(self.per_core(Mode::KxdpNull, 0, f), xc),
            );
            for &n in &services {
                let _ = write!(
                    out,
                    " {} | {} |",
                    ratio(self.mpps(Mode::Kxdp, n, f), x),
                    ratio(self.per_core(Mode::Kxdp, n, f), xc),
                );
            }
            out.push('\n');
        }
        out
    }

    /// Markdown: environment, one row per case, then the ratios per
    /// (Services, flows).
    pub fn markdown(&self) -> String {
        let m = &self.meta;
        let mut out = String::new();
        let _ = writeln!(out, "- Date: {}", m.date);
        let _ = writeln!(out, "- Kernel: {}", m.kernel);
        let _ = writeln!(out, "- CPU: {} ({} CPUs)", m.cpu, m.cpus);
        let _ = writeln!(out, "- Command: `{}`", m.command);
        let _ = writeln!(
            out,
            "- Dataplane core {}, generator + sink core {}; {} runs of {} s per case, median; frames {} B + FCS",
            m.config.dut_core, m.config.gen_core, m.config.runs, m.config.duration, m.config.frame_len
        );
        for t in &m.third_party_generators {
            let _ = writeln!(out, "- Generator {}: {}", t.name, t.status);
        }
        for n in &m.notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push_str("\n| mode | Services | flows | Mpps (median) | runs (Mpps) | generator | sent/s (M) | delivered/sent | DUT core busy | ns/pkt on DUT core | Mpps per DUT core (median) |\n");
        out.push_str("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|\n");
        for c in &self.cases {
            let runs: Vec<String> = c.runs.iter().map(|r| format!("{:.3}", r.mpps)).collect();
            let (sent, deliv, secs) = c.runs.iter().fold((0u64, 0u64, 0f64), |a, r| {
                (a.0 + r.sent, a.1 + r.delivered, a.2 + r.secs)
            });
            let services = if c.mode.uses_services() {
                c.services.to_string()
            } else {
                "-".into()
            };
            let mpps = match (&c.error, c.median_mpps) {
                (Some(e), _) => format!("error: {}", e.lines().next().unwrap_or("")),
                (None, Some(v)) => format!("{v:.3}"),
                (None, None) => "-".into(),
            };
            let busy = median(c.runs.iter().map(|r| r.dut_busy).collect());
            let ns = median(c.runs.iter().map(|r| r.dut_ns_per_packet).collect());
            let per_core = c.median_mpps_per_dut_core;
            let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
            let _ = writeln!(
                out,
                "| {} | {services} | {} | {mpps} | {} | {} | {} | {} | {} | {} | {} |",
                c.mode.name(),
                c.flows,
                runs.join(", "),
                c.generator,
                if secs > 0.0 {
                    format!("{:.3}", sent as f64 / secs / 1e6)
                } else {
                    "-".into()
                },
                if sent > 0 {
                    format!("{:.2}", deliv as f64 / sent as f64)
                } else {
                    "-".into()
                },
                opt(busy, &|b| format!("{:.0}%", b * 100.0)),
                opt(ns, &|n| format!("{n:.0}")),
                opt(per_core, &|m| format!("{m:.3}")),
            );
        }
        if self.cases.iter().any(|c| c.latency.is_some()) {
            out.push_str("\nOne-way latency, generator to sink socket, paced (µs):\n\n| mode | Services | flows | pps | p50 | p90 | p99 | p99.9 | max | timed / sent |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for c in &self.cases {
                let Some(l) = &c.latency else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {}/{} |",
                    c.mode.name(),
                    if c.mode.uses_services() {
                        c.services.to_string()
                    } else {
                        "-".into()
                    },
                    c.flows,
                    l.pps,
                    l.p50_us,
                    l.p90_us,
                    l.p99_us,
                    l.p999_us,
                    l.max_us,
                    l.samples,
                    l.sent
                );
            }
        }
        let mut keys: Vec<(usize, usize)> = self
            .cases
            .iter()
            .filter(|c| c.mode.uses_services())
            .map(|c| (c.services, c.flows))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if !keys.is_empty() {
            out.push_str("\n| Services | flows | kxdp / kernel-iptables | kxdp / kernel-nftables | kxdp / kxdp-null | kxdp-null / direct | per DUT core: kxdp / kernel-iptables | kxdp / kernel-nftables |\n");
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            for (n, f) in keys {
                let kxdp = self.mpps(Mode::Kxdp, n, f);
                let kxdp_core = self.per_core(Mode::Kxdp, n, f);
                let _ = writeln!(
                    out,
                    "| {n} | {f} | {} | {} | {} | {} | {} | {} |",
                    ratio(kxdp, self.mpps(Mode::KernelIptables, n, f)),
                    ratio(kxdp, self.mpps(Mode::KernelNftables, n, f)),
                    ratio(kxdp, self.mpps(Mode::KxdpNull, 0, f)),
                    ratio(
                        self.mpps(Mode::KxdpNull, 0, f),
                        self.mpps(Mode::Direct, 0, f)
                    ),
                    ratio(kxdp_core, self.per_core(Mode::KernelIptables, n, f)),
                    ratio(kxdp_core, self.per_core(Mode::KernelNftables, n, f)),
                );
            }
        }
        out.push_str(&self.ceiling_table());
        let drops: Vec<&CaseResult> = self
            .cases
            .iter()
            .filter(|c| c.dut_drops.is_some())
            .collect();
        if !drops.is_empty() {
            out.push_str(
                "\nDUT counters after each case (kxdp: non-zero `kxdp_drop*`/`kxdp_forward*`; xdp-redirect: the program's counters; both: non-zero veth XDP/drop counters):\n\n```\n",
            );
            for c in drops {
                let _ = writeln!(
                    out,
                    "# {} Services={} flows={}\n{}",
                    c.mode.name(),
                    c.services,
                    c.flows,
                    c.dut_drops.as_deref().unwrap_or("")
                );
            }
            out.push_str("```\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn dut_core_cost_comes_from_the_busy_ticks_of_the_run() {
        let g = GenReport {
            generator: "afxdp-copy".into(),
            sent: 200_000,
            tx_dropped: 0,
            secs: 2.0,
        };
        let before = Counters {
            dut_busy_ticks: 1000,
            dut_total_ticks: 5000,
            ..Counters::default()
        };
        // 100 of 200 ticks busy (1 s of CPU at USER_HZ 100), 200k delivered.
        let after = Counters {
            sink_rx: 200_000,
            dut_busy_ticks: 1100,
            dut_total_ticks: 5200,
            ..Counters::default()
        };
        let r = RunResult::from_counters(&g, &before, &after);
        assert!((r.mpps - 0.1).abs() < 1e-9);
        assert!((r.dut_busy - 0.5).abs() < 1e-9);
        assert!((r.dut_ns_per_packet - 5000.0).abs() < 1e-6);
        assert!((r.mpps_per_dut_core - 0.2).abs() < 1e-9);
    }

    #[test]
    fn markdown_has_a_row_per_case_and_the_ratios() {
        let cfg = BenchConfig::default();
        let run = |mpps: f64, busy: f64| RunResult {
            sent: 1_000_000,
            gen_tx_dropped: 0,
            secs: 1.0,
            delivered: (mpps * 1e6) as u64,
            udp_delivered: 0,
            dut_in: 0,
            dut_out: 0,
            kernel_drops: 0,
            mpps,
            dut_busy: busy,
            dut_ns_per_packet: busy * 1e9 / (mpps * 1e6),
            mpps_per_dut_core: mpps / busy,
        };
        let case = |mode, services, mpps| {
            let mut c = CaseResult::new(&cfg, mode, services, 1);
            // The kernel path leaves half its core idle here.
            let busy = if mode == Mode::KernelIptables {
                0.5
            } else {
                1.0
            };
            c.runs.push(run(mpps, busy));
            c.finish();
            c
        };
        let report = Report {
            meta: Meta::collect(&cfg, "kxdp-bench"),
            cases: vec![
                case(Mode::Direct, 0, 1.0),
                case(Mode::KxdpNull, 0, 0.6),
                case(Mode::KernelIptables, 100, 0.3),
                case(Mode::Kxdp, 100, 0.45),
            ],
        };
        let md = report.markdown();
        assert!(md.contains("| kxdp | 100 | 1 | 0.450 |"), "{md}");
        assert!(
            md.contains("| 100 | 1 | 1.50x | - | 0.75x | 0.60x | 0.75x | - |"),
            "{md}"
        );
        assert!(report.cases.iter().all(CaseResult::delivered_packets));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["cases"][3]["mode"], "kxdp");
    }

    #[test]
    fn ceiling_table_compares_kxdp_with_xdp_redirect() {
        let cfg = BenchConfig::default();
        let case = |mode, services, mpps: f64, busy: f64| {
            let mut c = CaseResult::new(&cfg, mode, services, 1);
            c.runs.push(RunResult {
                sent: 1_000_000,
                gen_tx_dropped: 0,
                secs: 1.0,
                delivered: (mpps * 1e6) as u64,
                udp_delivered: 0,
                dut_in: 0,
                dut_out: 0,
                kernel_drops: 0,
                mpps,
                dut_busy: busy,
                dut_ns_per_packet: busy * 1e9 / (mpps * 1e6),
                mpps_per_dut_core: mpps / busy,
            });
            c.finish();
            c
        };
        let mut report = Report {
            meta: Meta::collect(&cfg, "kxdp-bench"),
            cases: vec![
                case(Mode::Direct, 0, 1.0, 1.0),
                // The redirect leaves half the DUT core idle.
                case(Mode::XdpRedirect, 0, 0.8, 0.5),
                case(Mode::KxdpNull, 0, 0.6, 1.0),
                case(Mode::Kxdp, 100, 0.45, 1.0),
            ],
        };
        let md = report.markdown();
        assert!(md.contains("| xdp-redirect | - | 1 | 0.800 |"), "{md}");
        assert!(
            md.contains("kxdp (N=100) / xdp-redirect | per DUT core: kxdp (N=100) / xdp-redirect |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 0.800 | 1.600 | 0.80x | 0.75x | 0.37x | 0.56x | 0.28x |"),
            "{md}"
        );
        // Without the ceiling mode there is no ceiling table.
        report.cases.remove(1);
        assert!(!report.markdown().contains("xdp-redirect"));
    }
}
