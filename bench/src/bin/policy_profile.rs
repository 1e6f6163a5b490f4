//! A fixed loop of NetworkPolicy decisions, for profilers: the policy table
//! of node-0 in [`SyntheticCluster::policies`]`(10_000, --policies)` is
//! compiled first, then `--rounds` passes over 4096 probes (the same as
//! `benches/policy.rs`) run inside [`check_loop`] (never inlined, so
//! callgrind can count only it with `--toggle-collect=*check_loop*`).
//!
//! ```text
//! policy_profile --policies 1000 --rounds 1000
//! valgrind --tool=callgrind --toggle-collect='*check_loop*' policy_profile --rounds 20
//! ```

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use kxdp_bench::policy::{probes, Probe};
use kxdp_control::policy::{PolicyCompiler, PolicyDirection, PolicyTable, PolicyVerdict};
use kxdp_control::testing::SyntheticCluster;

const PROBES: usize = 4096;

#[derive(Parser)]
#[command(about = "Loop NetworkPolicy decisions for perf / callgrind")]
struct Cli {
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    rounds: u64,
}

/// `rounds` passes over `probes`; returns the number of allowed decisions.
#[inline(never)]
fn check_loop(table: &PolicyTable, probes: &[Probe], rounds: u64) -> u64 {
    let mut allowed = 0;
    for _ in 0..rounds {
        for p in probes {
            if let PolicyVerdict::Allowed { .. } =
                black_box(table.check(PolicyDirection::Ingress, &p.pod, p.peer, p.proto, p.port))
            {
                allowed += 1;
            }
        }
    }
    allowed
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let shape = SyntheticCluster::policies(cli.pods, cli.policies);
    let state = match shape.state() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("policy_profile: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let locals = shape.local_pods(0);
    let node_ips = [SyntheticCluster::node_ip(0)];
    let update = PolicyCompiler::new().update(&state, "node-0", &node_ips, &locals);
    let probes = probes(&shape, &update.table, &locals, PROBES);
    if probes.is_empty() {
        eprintln!("policy_profile: no local pod is isolated at this scale");
        return std::process::ExitCode::FAILURE;
    }
    let t0 = Instant::now();
    let allowed = check_loop(&update.table, &probes, cli.rounds);
    let decisions = cli.rounds * probes.len() as u64;
    println!(
        "policies={} pods={} decisions={} allowed={} ns/decision={:.1}",
        cli.policies,
        cli.pods,
        decisions,
        allowed,
        t0.elapsed().as_nanos() as f64 / decisions.max(1) as f64
    );
    std::process::ExitCode::SUCCESS
}
