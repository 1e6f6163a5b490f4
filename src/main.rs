//! The `kxdp` binary: one entry point for the daemon, the demo and the tools.
#![forbid(unsafe_code)]

mod demo;
mod get;
mod host;
mod napi;
mod run;
mod top;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kxdp: a userspace AF_XDP packet dataplane for Kubernetes nodes.
#[derive(Parser, Debug)]
#[command(name = "kxdp", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one synthesized packet (or a batch) through the pipeline against
    /// tables compiled from manifests, and print each stage's decision.
    Trace(trace::TraceArgs),
    /// Run the node dataplane: AF_XDP workers fed by the XDP steering
    /// program, tables compiled from manifests and the host's interfaces.
    Run(run::RunArgs),
    /// The embedded default: two kxdp nodes, pods, Services, DNS and a
    /// NetworkPolicy in network namespaces on this machine, probed end to
    /// end (needs root).
    Demo(demo::DemoArgs),
    /// The demo's stand-in for a pod's containers (started by `kxdp demo`).
    #[command(name = "demo-serve", hide = true)]
    DemoServe(demo::ServeArgs),
    /// List what a running daemon serves (services, endpoints, pods,
    /// policies, nodes, conntrack, stats) through its admin API.
    Get(get::GetArgs),
    /// Live per-worker packets/s and drops by reason of a running daemon.
    Top(top::TopArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoServe(args) => demo::serve(args),
        Command::Get(args) => get::run(args),
        Command::Top(args) => top::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kxdp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
