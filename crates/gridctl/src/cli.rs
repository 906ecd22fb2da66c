//! `gridctl`: talk to the gridos init over its control socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Command line of gridctl.
#[derive(Debug, Parser)]
#[command(name = "gridctl", about = "Control the gridos init and its services")]
struct Args {
    /// Control socket of init.
    #[arg(long, env = "GRIDCTL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What to ask init.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// All services and their state.
    List,
    /// One service in detail.
    Status { name: String },
    /// Start a service.
    Start { name: String },
    /// Stop a service (waits until it is down).
    Stop { name: String },
    /// Restart a service.
    Restart { name: String },
    /// A service's log ring.
    Log {
        name: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop everything and halt.
    Shutdown,
    /// Stop everything and reboot.
    Reboot,
    /// Stop everything and power off.
    Poweroff,
}

/// The program's entry: `args` is its whole command line, program name first.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(ask(args))
}

async fn ask(args: Args) -> anyhow::Result<()> {
    let init = control::connect(&args.socket)
        .await
        .with_context(|| format!("cannot reach init at {}", args.socket.display()))?;
    match args.cmd {
        Cmd::List => {
            let rows = init.list().await?;
            if args.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(n, s, p, r)| serde_json::json!({"name": n, "state": s, "pid": p, "restarts": r}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<24} {:<10} {:>8} {:>8}",
                    "NAME", "STATE", "PID", "RESTARTS"
                );
                for (n, s, p, r) in rows {
                    println!("{n:<24} {s:<10} {p:>8} {r:>8}");
                }
            }
        }
        Cmd::Status { name } => {
            let (n, s, p, r, reason, after) = init.status(&name).await?;
            if args.json {
                let v = serde_json::json!({"name": n, "state": s, "pid": p, "restarts": r, "reason": reason, "after": after});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "name:     {n}\nstate:    {s}\npid:      {p}\nrestarts: {r}\nafter:    {}",
                    after.join(", ")
                );
                if !reason.is_empty() {
                    println!("reason:   {reason}");
                }
            }
        }
        Cmd::Start { name } => init.start(&name).await?,
        Cmd::Stop { name } => init.stop(&name).await?,
        Cmd::Restart { name } => init.restart(&name).await?,
        Cmd::Log { name, follow } => {
            let mut since = 0;
            loop {
                let (lines, next) = init.log(&name, since).await?;
                for l in lines {
                    println!("{l}");
                }
                since = next;
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Cmd::Shutdown => init.power("shutdown").await?,
        Cmd::Reboot => init.power("reboot").await?,
        Cmd::Poweroff => init.power("poweroff").await?,
    }
    Ok(())
}
