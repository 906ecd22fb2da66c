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

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gridos-lab: FAIL: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // `run` turns Ctrl-C into an ordered shutdown of its node itself.
    let catch_ctrl_c = !matches!(cli.command, Command::Run(_));
    let r = rt.block_on(async {
        let job = async {
            match cli.command {
                Command::Run(a) => run::run(a).await,
                Command::E2e(a) => e2e::run(a).await,
                Command::BootBench(a) => bench::run(a).await,
                Command::NodeBench(a) => node_bench::run(a).await,
            }
        };
        tokio::select! {
            r = job => r,
            signal = interrupted(catch_ctrl_c) => Err(anyhow::anyhow!(
                "{signal}: stopped; the guests, registries and OCI registries it started are stopped too"
            )),
        }
    });
    // Dropping the runtime drops every task still running (the e2e runs shapes as tasks), and
    // with them their QEMU guests and registries, which are killed and reaped on drop. Exiting
    // from inside the runtime would leave them running.
    drop(rt);
    if let Err(e) = r {
        eprintln!("gridos-lab: FAIL: {e:#}");
        std::process::exit(1);
    }
}

/// Resolves on SIGTERM, and on SIGINT (Ctrl-C) when `ctrl_c`. SIGINT is caught only then:
/// a handler replaces the default action, so `run` would ignore a Ctrl-C pressed before it
/// sets up its own. The registries run in process groups of their own (a Ctrl-C must not end
/// one mid-write), so only this process can stop them.
async fn interrupted(ctrl_c: bool) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let int = async {
        // Registered only when asked for: registering alone replaces the default action.
        match ctrl_c.then(|| signal(SignalKind::interrupt())) {
            Some(Ok(mut int)) => {
                int.recv().await;
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => "SIGTERM",
        _ = int => "SIGINT",
    }
}
