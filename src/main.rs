//! The `kxdp` binary: one entry point for the daemon, the demo and the tools.
#![forbid(unsafe_code)]

mod host;
mod run;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kxdp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
