//! `kxdp-bench`: kxdp against the kernel path on one veth topology, every
//! mode in one invocation (DESIGN §7). Needs root (namespaces, XDP,
//! AF_XDP, iptables/nft inside its own namespaces only).
//!
//! ```text
//! kxdp-bench --services 100,10000 --flows 1,10000 --runs 3 --duration 5 --out bench/out
//! kxdp-bench --smoke                     # CI: ~1 s per mode, asserts delivery only
//! kxdp-bench --config bench/configs/standard.toml --out bench/out
//! kxdp-bench --smoke-generators          # each installed external generator, ~1 s
//! kxdp-bench plot bench/out/kxdp-bench.json --out bench/out   # re-plot a result
//! ```
//!
//! Writes `<out>/kxdp-bench.json`, `<out>/kxdp-bench.md` and the SVG plots
//! (`harness::plots`). Exit status 1 when a case failed (every case, in
//! `--smoke`, must deliver packets; in `--smoke-generators` a generator
//! this machine cannot run is reported and skipped).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kxdp_bench::harness::report::Report;
use kxdp_bench::harness::{gen, plots, run_all, BenchConfig, GeneratorKind, Mode};

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Draw the SVG plots of an existing result JSON.
    Plot {
        /// A `kxdp-bench.json`.
        json: PathBuf,
        /// Output directory (default: next to the JSON).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Parser, Debug)]
#[command(
    name = "kxdp-bench",
    about = "kxdp vs the kernel path on a veth topology",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// CI: each external generator installed here (trafgen, xdp-trafficgen,
    /// pktgen) drives the kernel-fwd mode for ~1 s and must deliver packets.
    #[arg(long)]
    smoke_generators: bool,
    /// Offered load of the throughput runs, packets/s (0: unlimited).
    #[arg(long)]
    rate_pps: Option<u64>,
    /// Run description (TOML, see bench/configs/); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// CI mode: every mode ~1 s, 10 Services, 1 and 100 flows; checks only
    /// that packets were delivered.
    #[arg(long)]
    smoke: bool,
    /// Modes, comma-separated (direct, kernel-fwd, kernel-iptables,
    /// kernel-nftables, xdp-redirect, kxdp-null, kxdp).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Numbers of Services.
    #[arg(long, value_delimiter = ',')]
    services: Vec<usize>,
    /// Numbers of flows (5-tuples).
    #[arg(long, value_delimiter = ',')]
    flows: Vec<usize>,
    /// Runs per case (median reported).
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds per run.
    #[arg(long)]
    duration: Option<f64>,
    /// CPU of the dataplane under test.
    #[arg(long)]
    dut_core: Option<usize>,
    /// CPU of generator and sink.
    #[arg(long)]
    gen_core: Option<usize>,
    /// Generator: afxdp (default), udp, trafgen, xdp-trafficgen or pktgen.
    #[arg(long)]
    generator: Option<GeneratorKind>,
    /// The kxdp binary (default: next to kxdp-bench).
    #[arg(long)]
    kxdp: Option<PathBuf>,
    /// Every packet a new 5-tuple (the conntrack-creation path).
    #[arg(long)]
    all_new: bool,
    /// After each case, a latency run at this many packets/s (paced,
    /// every packet timed from generator to sink).
    #[arg(long)]
    latency_pps: Option<u64>,
    /// Frame length without FCS (60 = 64 bytes on the wire; up to 1400).
    #[arg(long)]
    frame_len: Option<usize>,
    /// kxdp modes: kxdp with preferred busy polling (`kxdp run --busy-poll`).
    #[arg(long)]
    busy_poll: bool,
    /// kxdp modes: kxdp's worker at this SCHED_FIFO priority.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    rt_priority: Option<u8>,
    /// kxdp modes: leave the pod veth's NAPI in softirq (no NAPI kthread
    /// pinned to the dataplane core).
    #[arg(long)]
    no_threaded_napi: bool,
    /// Output directory.
    #[arg(long, default_value = "kxdp-bench-out")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kxdp-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Some(Cmd::Plot { json, out }) = &cli.cmd {
        let out = out.clone().unwrap_or_else(|| {
            json.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        });
        let files = plots::plot_file(json, &out).map_err(|e| e.to_string())?;
        for f in files {
            println!("{}", f.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = match (&cli.config, cli.smoke) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("read {}: {e}", path.display()))?;
            let mut c = BenchConfig::from_toml(&text).map_err(|e| e.to_string())?;
            c.smoke |= cli.smoke;
            c
        }
        (None, true) => BenchConfig::smoke(),
        (None, false) => BenchConfig::default(),
    };
    if !cli.modes.is_empty() {
        cfg.modes = cli.modes;
    }
    if !cli.services.is_empty() {
        cfg.services = cli.services;
    }
    if !cli.flows.is_empty() {
        cfg.flows = cli.flows;
    }
    cfg.runs = cli.runs.unwrap_or(cfg.runs);
    cfg.duration = cli.duration.unwrap_or(cfg.duration);
    cfg.dut_core = cli.dut_core.unwrap_or(cfg.dut_core);
    cfg.gen_core = cli.gen_core.unwrap_or(cfg.gen_core);
    cfg.generator = cli.generator.unwrap_or(cfg.generator);
    cfg.rate_pps = cli.rate_pps.unwrap_or(cfg.rate_pps);
    if cli.kxdp.is_some() {
        cfg.kxdp = cli.kxdp;
    }
    cfg.busy_poll |= cli.busy_poll;
    cfg.all_new |= cli.all_new;
    cfg.latency_pps = cli.latency_pps.unwrap_or(cfg.latency_pps);
    cfg.frame_len = cli.frame_len.unwrap_or(cfg.frame_len);
    if cli.rt_priority.is_some() {
        cfg.rt_priority = cli.rt_priority;
    }
    if cli.no_threaded_napi {
        cfg.threaded_napi = false;
    }
    cfg.validate().map_err(|e| e.to_string())?;
    if let Some(why) = kxdp_topology::skip_reason() {
        return Err(format!("cannot run: {why}"));
    }
    kxdp_topology::ensure_bpffs()?;

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut progress = |line: &str| eprintln!("kxdp-bench: {line}");
    let mut skipped = Vec::new();
    let report = if cli.smoke_generators {
        smoke_generators(&cfg, &command, &mut skipped, &mut progress)?
    } else {
        run_all(&cfg, &command, &mut progress)
    };

    std::fs::create_dir_all(&cli.out).map_err(|e| format!("mkdir {}: {e}", cli.out.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let json_path = cli.out.join("kxdp-bench.json");
    std::fs::write(&json_path, &json).map_err(|e| format!("write {}: {e}", json_path.display()))?;
    let md = report.markdown();
    let md_path = cli.out.join("kxdp-bench.md");
    std::fs::write(&md_path, &md).map_err(|e| format!("write {}: {e}", md_path.display()))?;
    println!("{md}");
    eprintln!(
        "kxdp-bench: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    // Plots come from the JSON just written, as `kxdp-bench plot` does.
    match plots::plot_json(&json, &cli.out) {
        Ok(files) => {
            for f in files {
                eprintln!("kxdp-bench: wrote {}", f.display());
            }
        }
        Err(e) => eprintln!("kxdp-bench: plots: {e}"),
    }
    for s in &skipped {
        eprintln!("kxdp-bench: SKIPPED {s}");
    }
    let failed: Vec<String> = report
        .cases
        .iter()
        // --smoke-generators: a generator that cannot run here is skipped.
        .filter(|c| {
            let skipped = cli.smoke_generators && is_unavailable(c.error.as_deref());
            !c.delivered_packets() && !skipped
        })
        .map(|c| {
            format!(
                "{} Services={} flows={}: {}",
                c.mode.name(),
                c.services,
                c.flows,
                c.error.as_deref().unwrap_or("delivered no packets")
            )
        })
        .collect();
    if failed.is_empty() {
        if cli.smoke_generators {
            eprintln!("kxdp-bench: SMOKE OK: every runnable external generator delivered packets");
        } else if cfg.smoke {
            eprintln!("kxdp-bench: SMOKE OK: every mode delivered packets");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("kxdp-bench: FAILED cases:\n  {}", failed.join("\n  "));
        Ok(ExitCode::FAILURE)
    }
}

/// Whether a case failed only because its generator cannot run here
/// (`GenError::Unsupported`).
fn is_unavailable(error: Option<&str>) -> bool {
    error.is_some_and(|e| e.contains("generator unavailable:"))
}

/// `--smoke-generators`: the kernel-fwd mode, 1 flow, ~1 s, driven by each
/// external generator this machine has; one report with every case.
fn smoke_generators(
    base: &BenchConfig,
    command: &str,
    skipped: &mut Vec<String>,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    let present: Vec<GeneratorKind> = gen::third_party()
        .iter()
        .filter_map(|t| {
            let kind = t.name.parse::<GeneratorKind>().ok()?;
            if !t.available {
                skipped.push(format!("{}: {}", t.name, t.status));
            }
            t.available.then_some(kind)
        })
        .collect();
    let mut merged: Option<Report> = None;
    for kind in present {
        let cfg = BenchConfig {
            modes: vec![Mode::KernelFwd],
            flows: vec![1],
            runs: 1,
            duration: base.duration.min(1.0),
            warmup: 0.3,
            latency_pps: 0,
            smoke: true,
            generator: kind,
            ..base.clone()
        };
        let r = run_all(&cfg, command, progress);
        for c in &r.cases {
            if is_unavailable(c.error.as_deref()) {
                skipped.push(format!(
                    "{}: {}",
                    kind.name(),
                    c.error.as_deref().unwrap_or_default()
                ));
            }
        }
        match merged.as_mut() {
            None => merged = Some(r),
            Some(m) => m.cases.extend(r.cases),
        }
    }
    merged.ok_or_else(|| {
        format!(
            "--smoke-generators: no external generator installed ({})",
            skipped.join("; ")
        )
    })
}
