//! `gridos-lab`: gridos nodes in QEMU against a local registry, for people and for CI.
//! `run` is `make run`, `e2e` the end-to-end test in `make test`, `boot-bench` the boot-time
//! benchmark and `node-bench` the container benchmark in BENCHMARKS.md. Traffic stays on 127.0.0.1 and QEMU user networking.

mod bench;
mod e2e;
mod images;
mod node_bench;
mod qemu;
mod registry;
mod run;
mod shapes;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gridos-lab",
    version,
    about = "gridos nodes in QEMU against a local registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a registry, create a farm, boot one node and follow its console (make run).
    Run(run::RunArgs),
    /// The end-to-end test: register, capacity, reboot, registry outage.
    E2e(e2e::E2eArgs),
    /// Guest-clock time from PID 1 to "registered", gridos against the baseline init.
    BootBench(bench::BenchArgs),
    /// Container starts against crun inside a node, and the services' RSS with 20 containers.
    NodeBench(node_bench::NodeBenchArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Run(a) => run::run(a).await,
        Command::E2e(a) => e2e::run(a).await,
        Command::BootBench(a) => bench::run(a).await,
        Command::NodeBench(a) => node_bench::run(a).await,
    };
    if let Err(e) = r {
        eprintln!("gridos-lab: FAIL: {e:#}");
        std::process::exit(1);
    }
}
