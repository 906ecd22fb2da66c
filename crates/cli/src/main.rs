//! `grid`: one CLI for farmers (keys, farms), twins (registration) and auditors (nodes, stats, units).

mod client;
mod keyfile;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gridtypes::{Envelope, Payload, Report, Resources, GIB};
use serde_json::{json, Value};

use client::Client;

#[derive(Parser)]
#[command(
    name = "grid",
    version,
    about = "gridos: keys, twins, farms, nodes and capacity units"
)]
struct Cli {
    /// Registry base URL.
    #[arg(
        long,
        global = true,
        env = "GRID_REGISTRY",
        default_value = "http://127.0.0.1:8480"
    )]
    registry: String,
    /// Key file (default: ~/.config/gridos/key).
    #[arg(long, global = true, env = "GRID_KEY")]
    key: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage your ed25519 identity key.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Enter the phonebook as a twin.
    #[command(subcommand)]
    Twin(TwinCmd),
    /// Create and list farms.
    #[command(subcommand)]
    Farm(FarmCmd),
    /// List and inspect nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Grid-wide totals.
    Stats,
    /// Compute CU and SU from raw resources with the grid's formulas.
    Units(UnitsArgs),
    /// Build the node image (kernel, initramfs, command line) with gridos-imager.
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the image of image/profile.yaml into out/ (see docs/image.md).
    Build(imager::cli::BuildArgs),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a new key.
    New {
        /// Replace an existing key (its identity is lost).
        #[arg(long)]
        force: bool,
    },
    /// Show the public key.
    Show,
}

#[derive(Subcommand)]
enum TwinCmd {
    /// Register your key as a twin (idempotent).
    Register,
}

#[derive(Subcommand)]
enum FarmCmd {
    /// Create a farm owned by your twin.
    Create {
        /// Unique farm name (A-Z a-z 0-9 - _ .).
        name: String,
    },
    /// List farms.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusArg {
    /// Reported within the registry's up window.
    Up,
    /// Not up (stopped ones included).
    Down,
    /// Said in its last report that it was shutting down in order.
    Stopped,
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List nodes, optionally filtered.
    List(NodeFilterArgs),
    /// One node, its units and its latest reports (signatures re-verified locally).
    Show {
        /// Node id.
        id: u64,
    },
}

#[derive(Args)]
struct NodeFilterArgs {
    /// Only nodes of this farm.
    #[arg(long)]
    farm: Option<u64>,
    /// Only nodes that are up or down.
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// At least this many free cores.
    #[arg(long)]
    min_cru: Option<u64>,
    /// At least this much free memory (GiB).
    #[arg(long)]
    min_mru: Option<f64>,
    /// At least this much free SSD (GiB).
    #[arg(long)]
    min_sru: Option<f64>,
    /// At least this much free HDD (GiB).
    #[arg(long)]
    min_hru: Option<f64>,
    /// Nodes per page.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Start after this node id.
    #[arg(long)]
    after: Option<u64>,
    /// Follow pages until the end.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct UnitsArgs {
    /// Logical cores.
    #[arg(long, default_value_t = 0)]
    cru: u64,
    /// Memory in GiB.
    #[arg(long, default_value_t = 0.0)]
    mru: f64,
    /// SSD in GiB.
    #[arg(long, default_value_t = 0.0)]
    sru: f64,
    /// HDD in GiB.
    #[arg(long, default_value_t = 0.0)]
    hru: f64,
    /// Billing units (what a reservation pays) instead of farming units (what a node offers).
    #[arg(long)]
    billing: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("grid: {e:#}");
        std::process::exit(1);
    }
}

/// The warnings a node put in a signed registration, uptime or capacity message; `None` for
/// other messages and for envelopes that do not decode.
fn message_warnings(envelope: &Value) -> Option<Vec<String>> {
    let env: Envelope = serde_json::from_value(envelope.clone()).ok()?;
    match Payload::from_bytes(&env.payload).ok()? {
        Payload::RegisterNode(reg) => Some(reg.warnings),
        Payload::Report(Report::Uptime { warnings, .. })
        | Payload::Report(Report::Capacity { warnings, .. }) => Some(warnings),
        _ => None,
    }
}

fn print(json_mode: bool, v: &Value, human: impl FnOnce(&Value) -> String) {
    if json_mode {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", human(v));
    }
}

/// A JSON scalar as plain text (`Value`'s own Display ignores width and quotes strings).
fn txt(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn gib(v: &Value) -> String {
    format!("{:.1}", v.as_f64().unwrap_or(0.0) / GIB as f64)
}

fn to_bytes(g: Option<f64>, flag: &str) -> anyhow::Result<Option<u64>> {
    match g {
        Some(g) if !(g.is_finite() && g >= 0.0) => {
            bail!("{flag} must be a non-negative number of GiB")
        }
        Some(g) => Ok(Some((g * GIB as f64).round() as u64)),
        None => Ok(None),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let key_path = cli.key.clone().unwrap_or_else(keyfile::default_path);
    let client = Client::new(&cli.registry);
    let j = cli.json;
    match cli.command {
        Command::Image(ImageCmd::Build(a)) => {
            let opts = a.options();
            let r = tokio::task::spawn_blocking(move || imager::build(&opts)).await??;
            print(j, &serde_json::to_value(&r)?, |_| {
                imager::cli::summary(&r, &a.out)
            });
        }
        Command::Key(KeyCmd::New { force }) => {
            let key = keyfile::create(&key_path, force)?;
            let v = json!({ "public_key": hex::encode(key.verifying_key().as_bytes()), "path": key_path });
            print(j, &v, |v| {
                format!(
                    "new key {} at {}\n",
                    v["public_key"].as_str().unwrap_or(""),
                    key_path.display()
                )
            });
        }
        Command::Key(KeyCmd::Show) => {
            let key = keyfile::load(&key_path)?;
            let v = json!({ "public_key": hex::encode(key.verifying_key().as_bytes()), "path": key_path });
            print(j, &v, |v| {
                format!("{}\n", v["public_key"].as_str().unwrap_or(""))
            });
        }
        Command::Twin(TwinCmd::Register) => {
            let key = keyfile::load(&key_path)?;
            let v = client
                .post_signed("/api/v1/twins", &key, &Payload::RegisterTwin {})
                .await?;
            print(j, &v, |v| {
                let verb = if v["created"] == true {
                    "registered"
                } else {
                    "already registered"
                };
                format!("twin {} {verb}\n", v["id"])
            });
        }
        Command::Farm(FarmCmd::Create { name }) => {
            let key = keyfile::load(&key_path)?;
            let payload = Payload::CreateFarm { name: name.clone() };
            payload.validate()?;
            let v = client.post_signed("/api/v1/farms", &key, &payload).await?;
            print(j, &v, |v| {
                format!(
                    "farm {} created as id {}\nboot nodes with gridos.farm={}\n",
                    name, v["id"], v["id"]
                )
            });
        }
        Command::Farm(FarmCmd::List) => {
            let items = all_pages(&client, "/api/v1/farms?", None, true).await?;
            print(j, &Value::Array(items), |v| {
                let mut out = format!(
                    "{:>6}  {:<24} {:>6}  {:>6}\n",
                    "ID", "NAME", "TWIN", "NODES"
                );
                for f in v.as_array().into_iter().flatten() {
                    out += &format!(
                        "{:>6}  {:<24} {:>6}  {:>6}\n",
                        txt(&f["id"]),
                        txt(&f["name"]),
                        txt(&f["twin_id"]),
                        txt(&f["nodes"])
                    );
                }
                out
            });
        }
        Command::Nodes(NodesCmd::List(f)) => {
            let mut q = format!("/api/v1/nodes?limit={}", f.limit);
            let mut add = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    q += &format!("&{k}={v}");
                }
            };
            add("farm", f.farm.map(|v| v.to_string()));
            add(
                "status",
                f.status.map(|s| match s {
                    StatusArg::Up => "up".to_string(),
                    StatusArg::Down => "down".to_string(),
                    StatusArg::Stopped => "stopped".to_string(),
                }),
            );
            add("min_cru", f.min_cru.map(|v| v.to_string()));
            add(
                "min_mru",
                to_bytes(f.min_mru, "--min-mru")?.map(|v| v.to_string()),
            );
            add(
                "min_sru",
                to_bytes(f.min_sru, "--min-sru")?.map(|v| v.to_string()),
            );
            add(
                "min_hru",
                to_bytes(f.min_hru, "--min-hru")?.map(|v| v.to_string()),
            );
            q.push('&');
            let items = all_pages(&client, &q, f.after.map(|a| a as i64), f.all).await?;
            print(j, &Value::Array(items), |v| {
                let mut out = format!(
                    "{:>6} {:>5} {:<7} {:>4} {:>8} {:>9} {:>9} {:>8} {:>8}\n",
                    "ID", "FARM", "STATE", "CRU", "MRU GiB", "SRU GiB", "HRU GiB", "CU", "SU"
                );
                for n in v.as_array().into_iter().flatten() {
                    let c = &n["capacity"];
                    out += &format!(
                        "{:>6} {:>5} {:<7} {:>4} {:>8} {:>9} {:>9} {:>8.2} {:>8.2}\n",
                        txt(&n["id"]),
                        txt(&n["farm_id"]),
                        txt(&n["status"]),
                        txt(&c["cru"]),
                        gib(&c["mru"]),
                        gib(&c["sru"]),
                        gib(&c["hru"]),
                        n["units"]["cu"].as_f64().unwrap_or(0.0),
                        n["units"]["su"].as_f64().unwrap_or(0.0)
                    );
                }
                out
            });
        }
        Command::Nodes(NodesCmd::Show { id }) => {
            let mut v = client.get(&format!("/api/v1/nodes/{id}")).await?;
            let key = v["public_key"].as_str().unwrap_or("").to_string();
            // Compared as key bytes, never as text: a registry that answered another spelling
            // of the key must not make a valid report look forged, or the reverse.
            let node_key = gridtypes::parse_public_key(&key).ok();
            // Auditors should not have to trust the registry: check every signature here.
            let mut bad = 0;
            let mut current = None;
            if let Some(reports) = v["reports"].as_array_mut() {
                for r in reports.iter_mut() {
                    let ok = serde_json::from_value::<Envelope>(r["envelope"].clone())
                        .ok()
                        .and_then(|e| e.verify_signature().ok())
                        .is_some_and(|k| Some(k) == node_key);
                    if !ok {
                        bad += 1;
                    }
                    r["verified"] = json!(ok);
                }
                // The node repeats its warnings in every message: the newest verified one says
                // what holds now.
                current = reports
                    .iter()
                    .filter(|r| r["verified"] == true)
                    .find_map(|r| message_warnings(&r["envelope"]));
            }
            v["warnings"] = json!(current.unwrap_or_default());
            print(j, &v, |n| {
                let c = &n["capacity"];
                let f = &n["free"];
                let mut out = format!(
                    "node {} (farm {}), {}\nkey        {}\nserial     {}\nvirtual    {}\ncapacity   {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD, {} IPv4\nfree       {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD\nunits      CU {:.3}  SU {:.3}\nuptime     {} s, last seen {}\nreports (newest first):\n",
                    n["id"], n["farm_id"], n["status"].as_str().unwrap_or(""), key,
                    n["serial"].as_str().unwrap_or("-"), n["virtualized"],
                    c["cru"], gib(&c["mru"]), gib(&c["sru"]), gib(&c["hru"]), c["ipv4"],
                    f["cru"], gib(&f["mru"]), gib(&f["sru"]), gib(&f["hru"]),
                    n["units"]["cu"].as_f64().unwrap_or(0.0), n["units"]["su"].as_f64().unwrap_or(0.0),
                    n["uptime_secs"], n["last_seen"],
                );
                let warnings = n["warnings"].as_array().cloned().unwrap_or_default();
                if !warnings.is_empty() {
                    let mut head = String::new();
                    for w in warnings {
                        head += &format!("WARNING    {}\n", w.as_str().unwrap_or(""));
                    }
                    out = head + &out;
                }
                for r in n["reports"].as_array().into_iter().flatten() {
                    out += &format!(
                        "  #{:<8} {:<12} signed {} {}\n",
                        txt(&r["id"]),
                        txt(&r["kind"]),
                        txt(&r["signed_at"]),
                        if r["verified"] == true {
                            "signature ok"
                        } else {
                            "SIGNATURE INVALID"
                        }
                    );
                }
                out
            });
            if bad > 0 {
                bail!("{bad} report(s) of node {id} do not verify against its key");
            }
        }
        Command::Stats => {
            let v = client.get("/api/v1/stats").await?;
            print(j, &v, |s| {
                let line = |t: &Value| {
                    let c = &t["capacity"];
                    format!(
                        "{} nodes, {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD, CU {:.2}, SU {:.2}",
                        t["nodes"], c["cru"], gib(&c["mru"]), gib(&c["sru"]), gib(&c["hru"]),
                        t["units"]["cu"].as_f64().unwrap_or(0.0), t["units"]["su"].as_f64().unwrap_or(0.0)
                    )
                };
                format!(
                    "twins {}, farms {}, reports {}\nup   {}\nall  {}\n",
                    s["twins"],
                    s["farms"],
                    s["reports"],
                    line(&s["up"]),
                    line(&s["all"])
                )
            });
        }
        Command::Units(u) => {
            for (flag, g) in [("--mru", u.mru), ("--sru", u.sru), ("--hru", u.hru)] {
                if !(g.is_finite() && g >= 0.0) {
                    bail!("{flag} must be a non-negative number of GiB");
                }
            }
            let r = Resources::from_gib(u.cru, u.mru, u.sru, u.hru);
            let units = if u.billing {
                r.billing_units()
            } else {
                r.farming_units()
            };
            let v = json!({ "cu": units.cu, "su": units.su });
            print(j, &v, |_| {
                let kind = if u.billing { "billing" } else { "farming" };
                format!("{kind} units: CU {} SU {}\n", units.cu, units.su)
            });
        }
    }
    Ok(())
}

/// Fetches one page, or every page when `all`, of a list endpoint (`path` ends in `?` or `&`),
/// starting after the id `after`.
async fn all_pages(
    client: &Client,
    path: &str,
    mut after: Option<i64>,
    all: bool,
) -> anyhow::Result<Vec<Value>> {
    let mut items = vec![];
    loop {
        let url = match after {
            Some(a) => format!("{path}after={a}"),
            None => path.trim_end_matches(['?', '&']).to_string(),
        };
        let page = client.get(&url).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_i64() {
            Some(n) if all => after = Some(n),
            _ => return Ok(items),
        }
    }
}
