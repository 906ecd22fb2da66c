//! `gridos-perf`: the benchmarks behind BENCHMARKS.md, each a named test with a JSON result.
//!
//! The registry runs as its own process (`grid-registry serve`, next to this binary), and
//! clients talk to it over 127.0.0.1 only.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use gridapi::{paths, NodeView, Page, ReportView, Stats, Written};
use gridtypes::{now, Envelope, NodeRegistration, Payload, Report, Resources, GIB};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use serde_json::{json, Value};
use sqlx::Connection;
use test_infra::{nonce, RegistryCommand, RegistryProcess};

mod extension;
mod ledger;
mod vm;

#[derive(Parser)]
#[command(
    name = "gridos-perf",
    about = "gridos benchmarks (registry ingest, verify ceiling, node list latency)"
)]
struct Cli {
    /// Write the JSON report here as well as to stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The `grid-registry` to measure (default: the one next to this binary).
    #[arg(long, global = true)]
    registry_bin: Option<std::path::PathBuf>,
    #[command(subcommand)]
    test: Test,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Subcommand)]
enum Test {
    /// ed25519 verifications per second on all cores (the machine's ceiling for ingest).
    VerifyCeiling {
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Signed reports per second stored by the registry, many concurrent clients.
    Ingest {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: DbKind,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 60_000)]
        reports: usize,
    },
    /// p50/p99 latency of filtered node lists with many nodes seeded.
    NodeList {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: DbKind,
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
    },
    /// Ingest with two registry binaries, interleaved run by run: `--baseline-bin` (e.g. an
    /// older commit's build) against `--registry-bin`; medians and their ratio.
    IngestCompare {
        #[arg(long)]
        baseline_bin: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "sqlite")]
        db: DbKind,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 60_000)]
        reports: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Peak registry RSS while `clients` readers page through 1,000 stored 47 KB reports at
    /// once (what a node could store before per-kind payload limits).
    ReadsRss {
        #[arg(long, default_value_t = 30)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// `/healthz` latency while the registry holds more and more idle connections.
    IdleConns {
        /// Idle connections held at each step.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,2000,4000,8000,8191,9000"
        )]
        steps: Vec<usize>,
        /// `/healthz` requests per step, each on a new connection.
        #[arg(long, default_value_t = 200)]
        probes: usize,
    },
    /// Closing one month of minting periods for grids of each size (fresh database each).
    ClosePeriods {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: DbKind,
        #[arg(long, value_delimiter = ',', default_value = "1000,3000,10000")]
        nodes: Vec<usize>,
    },
    /// `grid audit farm` over 100 nodes with a closed month each, against the verify ceiling.
    Audit {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: DbKind,
        /// The `grid` binary (default: the one next to this binary).
        #[arg(long)]
        grid_bin: Option<std::path::PathBuf>,
    },
    /// Time to first byte of the web pages with many nodes registered.
    WebTtfb {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: DbKind,
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        #[arg(long, default_value_t = 50)]
        requests: usize,
    },
    /// VM start to the guest's ready line: the vmm driver against the bare QEMU command line.
    VmStart {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// The VM-runtime extension's size and its download+verify+mount time (root).
    ExtensionFetch {
        #[arg(long, default_value = "image/extensions/vm.yaml")]
        profile: std::path::PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Everything, in the order BENCHMARKS.md reports it.
    All {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 60_000)]
        reports: usize,
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
    },
}

/// Verifications per second with `threads` threads, the same crate and call the registry uses.
fn verify_ceiling(secs: f64) -> Value {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let run = |threads: usize| {
        let total = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let total = total.clone();
                std::thread::spawn(move || {
                    let key = SigningKey::generate(&mut OsRng);
                    let env =
                        Envelope::seal(&key, &Payload::Report(Report::uptime(1)), now(), nonce());
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            if env.verify_signature().is_ok() {
                                n += 1;
                            }
                        }
                    }
                    total.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        total.load(Ordering::Relaxed) as f64 / secs
    };
    let one = run(1);
    let all = run(threads);
    json!({
        "test": "verify-ceiling",
        "threads": threads,
        "verify_per_sec_one_core": one.round(),
        "verify_per_sec_all_cores": all.round(),
    })
}

/// The registry binary chosen with `--registry-bin`, or the one next to this binary.
static REGISTRY_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn registry_bin() -> anyhow::Result<std::path::PathBuf> {
    match REGISTRY_BIN.get() {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("grid-registry")),
    }
}

/// Flags that lift the registry's write rate limits, when the binary has them: the load
/// comes from one address and a few keys, and the limiter's cost is still paid per request.
fn unlimited_rates(exe: &std::path::Path) -> Vec<String> {
    let help = Command::new(exe)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !help.contains("--ip-writes-per-min") {
        return Vec::new();
    }
    let big = "1000000000".to_string();
    [
        "--ip-writes-per-min",
        "--ip-write-burst",
        "--key-writes-per-min",
        "--key-write-burst",
    ]
    .iter()
    .flat_map(|f| [f.to_string(), big.clone()])
    .collect()
}

/// `exe serve` on 127.0.0.1 with a fresh database: a SQLite file of its own, or a database on
/// the PostgreSQL server `GRIDOS_TEST_POSTGRES_URL` names (else a throwaway one started here).
async fn start_registry(
    kind: DbKind,
    up_window: i64,
    exe: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<RegistryProcess> {
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p registry`",
            exe.display()
        );
    }
    let mut cmd = RegistryCommand::new(exe)
        .args(["--up-window", &up_window.to_string()])
        .args(unlimited_rates(exe))
        .args(extra)
        .env("RUST_LOG", "warn");
    if kind == DbKind::Postgres {
        cmd = cmd.database(test_infra::postgres::fresh_database().await?);
    }
    Ok(cmd.start().await?)
}

/// The registry's process id, for reading its CPU time and memory from /proc.
fn registry_pid(reg: &RegistryProcess) -> anyhow::Result<u32> {
    reg.pid().context("the registry is not running")
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> anyhow::Result<Written> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let body = r.bytes().await?;
    if !status.is_success() {
        bail!("{url}: {status} {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{url}: not a write's answer"))
}

/// Registers a twin and a farm of a fresh name; returns the farm id.
async fn farm(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let twin = SigningKey::generate(&mut OsRng);
    let env = Envelope::seal(&twin, &Payload::RegisterTwin {}, now(), nonce());
    post(http, &format!("{url}{}", paths::TWINS), env.to_json()).await?;
    let name = format!("perf-{:x}", OsRng.next_u32());
    let env = Envelope::seal(&twin, &Payload::CreateFarm { name }, now(), nonce());
    let w = post(http, &format!("{url}{}", paths::FARMS), env.to_json()).await?;
    Ok(w.id as u64)
}

fn random_capacity(rng: &mut impl Rng) -> Resources {
    Resources::from_gib(
        rng.gen_range(1..=128),
        rng.gen_range(2..=1024) as f64,
        rng.gen_range(0..=8000) as f64,
        rng.gen_range(0..=64_000) as f64,
    )
}

/// Sends every body to `path` with `clients` concurrent connections; returns seconds taken.
async fn blast(url: &str, path: &str, bodies: Vec<Vec<u8>>, clients: usize) -> anyhow::Result<f64> {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..clients {
        let queue = queue.clone();
        let http = http.clone();
        let target = format!("{url}{path}");
        tasks.push(tokio::spawn(async move {
            loop {
                let body = match queue.lock() {
                    Ok(mut q) => q.pop(),
                    Err(_) => None,
                };
                let Some(body) = body else {
                    return Ok::<_, anyhow::Error>(());
                };
                post(&http, &target, body).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Registers `n` nodes with random capacity through the API; returns their keys.
async fn seed_nodes(
    url: &str,
    farm: u64,
    n: usize,
    clients: usize,
) -> anyhow::Result<(Vec<SigningKey>, f64)> {
    let mut rng = rand::thread_rng();
    let mut keys = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        let key = SigningKey::generate(&mut rng);
        let reg = Payload::RegisterNode(NodeRegistration {
            farm_id: farm,
            capacity: random_capacity(&mut rng),
            serial: None,
            virtualized: false,
            interfaces: vec![],
            agent_version: None,
            box_key: None,
            warnings: Vec::new(),
        });
        bodies.push(Envelope::seal(&key, &reg, now(), nonce()).to_json());
        keys.push(key);
    }
    let secs = blast(url, paths::NODES, bodies, clients).await?;
    Ok((keys, secs))
}

async fn ingest(kind: DbKind, clients: usize, reports: usize) -> anyhow::Result<Value> {
    ingest_with(&registry_bin()?, kind, clients, reports).await
}

async fn ingest_with(
    exe: &std::path::Path,
    kind: DbKind,
    clients: usize,
    reports: usize,
) -> anyhow::Result<Value> {
    let reg = start_registry(kind, 4800, exe, &[]).await?;
    let http = reqwest::Client::new();
    let farm = farm(&http, &reg.url()).await?;
    let (keys, _) = seed_nodes(&reg.url(), farm, 1000, clients).await?;
    // Sign everything up front: the clients' own signing must not eat the server's CPU.
    let bodies: Vec<Vec<u8>> = (0..reports)
        .map(|i| {
            let key = &keys[i % keys.len()];
            let p = Payload::Report(Report::uptime(i as u64));
            Envelope::seal(key, &p, now(), nonce()).to_json()
        })
        .collect();
    let stored_before = stored_reports(&http, &reg.url()).await?;
    let cpu0 = cpu_secs(registry_pid(&reg)?);
    let client0 = cpu_secs(std::process::id());
    let secs = blast(&reg.url(), paths::REPORTS, bodies, clients).await?;
    let server_cpu = cpu_secs(registry_pid(&reg)?) - cpu0;
    let client_cpu = cpu_secs(std::process::id()) - client0;
    let stored = stored_reports(&http, &reg.url()).await? - stored_before;
    if stored != reports as u64 {
        bail!("{stored} reports stored, {reports} sent");
    }
    Ok(json!({
        "test": "ingest",
        "db": format!("{kind:?}").to_lowercase(),
        "clients": clients,
        "reports": reports,
        "seconds": secs,
        "reports_per_sec": (reports as f64 / secs).round(),
        "server_cpu_us_per_report": (server_cpu * 1e6 / reports as f64).round(),
        "client_cpu_us_per_report": (client_cpu * 1e6 / reports as f64).round(),
    }))
}

/// Runs ingest `rounds` times with each binary, alternating, and compares the medians.
async fn ingest_compare(
    baseline: std::path::PathBuf,
    db: DbKind,
    clients: usize,
    reports: usize,
    rounds: usize,
) -> anyhow::Result<Value> {
    let current = registry_bin()?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut runs = json!({"baseline": [], "current": []});
    let (mut rate, mut cpu) = ([vec![], vec![]], [vec![], vec![]]);
    for round in 0..rounds {
        for (i, (name, bin)) in [("baseline", &baseline), ("current", &current)]
            .into_iter()
            .enumerate()
        {
            let r = ingest_with(bin, db, clients, reports).await?;
            eprintln!("round {round} {name}: {r}");
            rate[i].push(r["reports_per_sec"].as_f64().unwrap_or(0.0));
            cpu[i].push(r["server_cpu_us_per_report"].as_f64().unwrap_or(0.0));
            if let Some(a) = runs[name].as_array_mut() {
                a.push(r);
            }
        }
    }
    let [rb, rc] = rate.map(median);
    let [cb, cc] = cpu.map(median);
    Ok(json!({
        "test": "ingest-compare",
        "db": format!("{db:?}").to_lowercase(),
        "baseline_bin": baseline.display().to_string(),
        "current_bin": current.display().to_string(),
        "median_reports_per_sec": {"baseline": rb, "current": rc, "ratio": rc / rb.max(1.0)},
        "median_server_cpu_us_per_report": {"baseline": cb, "current": cc, "ratio": cc / cb.max(1.0)},
        "runs": runs,
    }))
}

/// A `/proc/PID/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn reads_rss(clients: usize, secs: f64) -> anyhow::Result<Value> {
    let exe = registry_bin()?;
    let reg = start_registry(DbKind::Sqlite, 4800, &exe, &[]).await?;
    let http = reqwest::Client::new();
    let farm = farm(&http, &reg.url()).await?;
    let (keys, _) = seed_nodes(&reg.url(), farm, 1, 1).await?;
    let env = Envelope::seal(
        &keys[0],
        &Payload::Report(Report::uptime(1)),
        now(),
        nonce(),
    );
    post(
        &http,
        &format!("{}{}", reg.url(), paths::REPORTS),
        env.to_json(),
    )
    .await?;
    // The stored envelopes are planted in the database: the same rows for any registry
    // version, including one that still accepts 47 KB payloads over the API.
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(reg.db_url()).await?;
    sqlx::raw_sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
         INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope) \
         SELECT 1, 'uptime', 0, 0, 'pad' || i, \
                CAST('{\"pad\":\"' || hex(randomblob(23500)) || '\"}' AS BLOB) FROM n",
    )
    .execute(&mut conn)
    .await?;
    drop(conn);
    let pid = registry_pid(&reg)?;
    let rss_before = status_kb(pid, "VmRSS:");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let pages = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..clients {
        let (http, url, pages, bytes) = (http.clone(), reg.url(), pages.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut after = 0i64;
            while Instant::now() < deadline {
                let r = http
                    .get(format!(
                        "{url}{}?limit=1000&after={after}",
                        paths::node_reports(1)
                    ))
                    .send()
                    .await?;
                let body = r.bytes().await?;
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                pages.fetch_add(1, Ordering::Relaxed);
                let page: Page<ReportView> = serde_json::from_slice(&body)?;
                after = page.next.unwrap_or(0);
            }
            anyhow::Ok(())
        }));
    }
    let mut rss_max = 0;
    while Instant::now() < deadline {
        rss_max = rss_max.max(status_kb(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await??;
    }
    let pages = pages.load(Ordering::Relaxed);
    Ok(json!({
        "test": "reads-rss",
        "registry": exe.display().to_string(),
        "clients": clients,
        "stored_reports_bytes": 1000 * 47_000,
        "pages": pages,
        "mean_page_bytes": bytes.load(Ordering::Relaxed) / pages.max(1),
        "rss_before_mib": rss_before as f64 / 1024.0,
        "rss_sampled_max_mib": rss_max as f64 / 1024.0,
        "peak_rss_mib": status_kb(pid, "VmHWM:") as f64 / 1024.0,
    }))
}

/// One `/healthz` on a fresh connection; its round trip, or None past `timeout`.
async fn healthz_once(addr: &str, timeout: Duration) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        out.starts_with(b"HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(timeout, probe).await.ok().flatten()?;
    Some(t.elapsed())
}

async fn idle_conns(steps: &[usize], probes: usize) -> anyhow::Result<Value> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let exe = registry_bin()?;
    // Idle connections are closed after --idle-timeout; a long one measures capacity.
    // (A registry without the flag keeps idle connections forever anyway.)
    let help = Command::new(&exe).args(["serve", "--help"]).output()?;
    let extra: &[&str] = if String::from_utf8_lossy(&help.stdout).contains("--idle-timeout") {
        &["--idle-timeout", "600"]
    } else {
        &[]
    };
    let reg = start_registry(DbKind::Sqlite, 4800, &exe, extra).await?;
    let addr = reg.url().trim_start_matches("http://").to_string();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", registry_pid(&reg)?))?;
    let fd_limit = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        .unwrap_or_default();
    let mut held = Vec::new();
    let mut rows = vec![];
    for &target in steps {
        while held.len() < target {
            held.push(tokio::net::TcpStream::connect(&addr).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut lat = vec![];
        let mut failed = 0;
        for _ in 0..probes {
            match healthz_once(&addr, Duration::from_secs(2)).await {
                Some(d) => lat.push(d.as_secs_f64() * 1000.0),
                None => failed += 1,
            }
        }
        lat.sort_by(f64::total_cmp);
        let row = json!({
            "idle_connections": target,
            "healthz_ok": lat.len(),
            "healthz_failed_2s": failed,
            "p50_ms": percentile(&lat, 0.5),
            "p99_ms": percentile(&lat, 0.99),
            "server_rss_mib": status_kb(registry_pid(&reg)?, "VmRSS:") as f64 / 1024.0,
        });
        eprintln!("{row}");
        rows.push(row);
    }
    Ok(json!({
        "test": "idle-conns",
        "registry": exe.display().to_string(),
        "server_fd_limit": fd_limit,
        "steps": rows,
    }))
}

/// Signed messages the registry has stored so far.
async fn stored_reports(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let stats: Stats = http
        .get(format!("{url}{}", paths::STATS))
        .send()
        .await?
        .json()
        .await?;
    Ok(stats.reports as u64)
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn node_list(kind: DbKind, nodes: usize, queries: usize) -> anyhow::Result<Value> {
    let reg = start_registry(kind, 4800, &registry_bin()?, &[]).await?;
    let http = reqwest::Client::new();
    let mut farms = vec![];
    for _ in 0..10 {
        farms.push(farm(&http, &reg.url()).await?);
    }
    let per_farm = nodes / farms.len();
    let mut seed_secs = 0.0;
    for f in &farms {
        seed_secs += seed_nodes(&reg.url(), *f, per_farm, 64).await?.1;
    }
    let mut rng = rand::thread_rng();
    let mut lat = Vec::with_capacity(queries);
    for i in 0..queries {
        let q = match i % 5 {
            0 => "/api/v1/nodes?limit=50".to_string(),
            1 => format!(
                "/api/v1/nodes?farm={}&status=up&limit=50",
                farms[rng.gen_range(0..farms.len())]
            ),
            2 => format!(
                "/api/v1/nodes?min_cru={}&min_mru={}&limit=50",
                rng.gen_range(1..64),
                rng.gen_range(1..512) * GIB
            ),
            3 => format!(
                "/api/v1/nodes?status=up&min_sru={}&min_hru={}&limit=50",
                rng.gen_range(0..7000) * GIB,
                rng.gen_range(0..60_000) * GIB
            ),
            _ => format!(
                "/api/v1/nodes?after={}&min_cru=100&min_mru={}&limit=50",
                rng.gen_range(0..nodes),
                900 * GIB
            ),
        };
        let t = Instant::now();
        let r = http.get(format!("{}{q}", reg.url())).send().await?;
        if !r.status().is_success() {
            bail!("{q}: {}", r.status());
        }
        let _: Page<NodeView> = r.json().await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(json!({
        "test": "node-list",
        "db": format!("{kind:?}").to_lowercase(),
        "nodes": per_farm * farms.len(),
        "seed_registrations_per_sec": ((per_farm * farms.len()) as f64 / seed_secs).round(),
        "queries": queries,
        "p50_ms": (percentile(&lat, 0.50) * 100.0).round() / 100.0,
        "p99_ms": (percentile(&lat, 0.99) * 100.0).round() / 100.0,
        "max_ms": (percentile(&lat, 1.0) * 100.0).round() / 100.0,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(bin) = cli.registry_bin.clone() {
        let _ = REGISTRY_BIN.set(bin);
    }
    let results = match cli.test {
        Test::IngestCompare {
            baseline_bin,
            db,
            clients,
            reports,
            rounds,
        } => vec![ingest_compare(baseline_bin, db, clients, reports, rounds).await?],
        Test::VerifyCeiling { secs } => vec![verify_ceiling(secs)],
        Test::VmStart { runs } => vec![vm::vm_start(runs)?],
        Test::ExtensionFetch { profile, runs } => {
            vec![extension::extension_fetch(&profile, runs).await?]
        }
        Test::ClosePeriods { db, nodes } => vec![ledger::close_periods(db, &nodes).await?],
        Test::Audit { db, grid_bin } => {
            let bin = match grid_bin {
                Some(b) => b,
                None => std::env::current_exe()?.with_file_name("grid"),
            };
            let ceiling = verify_ceiling(5.0);
            let mut r = ledger::audit(db, &bin).await?;
            let max = ceiling["verify_per_sec_all_cores"].as_f64().unwrap_or(1.0);
            r["ratio_to_ceiling"] = json!(
                ((r["verified_per_sec"].as_f64().unwrap_or(0.0) / max) * 1000.0).round() / 1000.0
            );
            vec![ceiling, r]
        }
        Test::WebTtfb {
            db,
            nodes,
            requests,
        } => vec![ledger::web_ttfb(db, nodes, requests).await?],
        Test::ReadsRss { clients, secs } => vec![reads_rss(clients, secs).await?],
        Test::IdleConns { steps, probes } => vec![idle_conns(&steps, probes).await?],
        Test::Ingest {
            db,
            clients,
            reports,
        } => vec![ingest(db, clients, reports).await?],
        Test::NodeList { db, nodes, queries } => vec![node_list(db, nodes, queries).await?],
        Test::All {
            clients,
            reports,
            nodes,
        } => {
            let mut out = vec![];
            let ceiling = verify_ceiling(5.0);
            eprintln!("{ceiling}");
            let max = ceiling["verify_per_sec_all_cores"].as_f64().unwrap_or(1.0);
            out.push(ceiling);
            for db in [DbKind::Sqlite, DbKind::Postgres] {
                let mut r = ingest(db, clients, reports).await?;
                r["ratio_to_ceiling"] = json!(
                    ((r["reports_per_sec"].as_f64().unwrap_or(0.0) / max) * 1000.0).round()
                        / 1000.0
                );
                eprintln!("{r}");
                out.push(r);
            }
            for db in [DbKind::Sqlite, DbKind::Postgres] {
                let r = node_list(db, nodes, 2000).await?;
                eprintln!("{r}");
                out.push(r);
            }
            out
        }
    };
    let report = json!({ "results": results });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = cli.out {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
