//! One function per command: each asks the registry (or the key file, or the imager) and
//! prints either `--json` or a table for people.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use gridapi::{paths, FarmView, NodeFilter, NodeStatus, NodeView, Page, Paging, ReportView, Stats};
use gridapi::{ContractFilter, ContractState, ContractView, Totals, Written};
use gridtypes::{ContractRequest, Envelope, Payload, Report, Resources, Units, GIB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::Client;
use crate::{
    audit, deploy, keyfile, logs, AuditCmd, Cli, Command, ContractStateArg, ContractsCmd,
    DeploymentsCmd, FarmCmd, ImageBuildArgs, ImageCmd, ImageFormat, KeyCmd, NodeFilterArgs,
    NodesCmd, StatusArg, TwinCmd, UnitsArgs,
};

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let key_path = cli.key.clone().unwrap_or_else(keyfile::default_path);
    let client = Client::new(&cli.registry);
    let j = cli.json;
    match cli.command {
        Command::Image(ImageCmd::Build(args)) => image_build(&cli.registry, j, args).await?,
        Command::Key(KeyCmd::New { force }) => {
            let key = keyfile::create(&key_path, force)?;
            let info = KeyInfo::of(&key, &key_path);
            print(j, &info, |i| {
                format!("new key {} at {}\n", i.public_key, i.path.display())
            });
        }
        Command::Key(KeyCmd::Show) => {
            let key = keyfile::load(&key_path)?;
            print(j, &KeyInfo::of(&key, &key_path), |i| {
                format!("{}\n", i.public_key)
            });
        }
        Command::Twin(TwinCmd::Register) => {
            let key = keyfile::load(&key_path)?;
            let w = client
                .post_signed(paths::TWINS, &key, &Payload::RegisterTwin {})
                .await?;
            print(j, &w, |w| {
                let verb = if w.created {
                    "registered"
                } else {
                    "already registered"
                };
                format!("twin {} {verb}\n", w.id)
            });
        }
        Command::Farm(FarmCmd::Create { name }) => {
            let key = keyfile::load(&key_path)?;
            let payload = Payload::CreateFarm { name: name.clone() };
            payload.validate()?;
            let w: Written = client.post_signed(paths::FARMS, &key, &payload).await?;
            print(j, &w, |w| {
                format!(
                    "farm {name} created as id {}\nboot nodes with gridos.farm={}\n",
                    w.id, w.id
                )
            });
        }
        Command::Farm(FarmCmd::List) => {
            let farms: Vec<FarmView> =
                all_pages(&client, paths::FARMS, Paging::default(), true).await?;
            print(j, &farms, |farms| farm_table(farms));
        }
        Command::Nodes(NodesCmd::List(f)) => {
            let filter = node_filter(&f)?;
            let nodes: Vec<NodeView> = all_pages(&client, paths::NODES, filter, f.all).await?;
            print(j, &nodes, |nodes| node_table(nodes));
        }
        Command::Nodes(NodesCmd::Show { id }) => {
            let node: NodeView = client.get(&paths::node(id)).await?;
            let audited = audit(node);
            print(j, &audited, node_details);
            if audited.bad > 0 {
                bail!(
                    "{} report(s) of node {id} do not verify against its key",
                    audited.bad
                );
            }
        }
        Command::Stats => {
            let s: Stats = client.get(paths::STATS).await?;
            print(j, &s, |s| {
                format!(
                    "twins {}, farms {}, reports {}\nup   {}\nall  {}\n",
                    s.twins,
                    s.farms,
                    s.reports,
                    totals_line(&s.up),
                    totals_line(&s.all)
                )
            });
        }
        Command::Contracts(c) => contracts(&client, &key_path, c, j).await?,
        Command::Deploy(a) => {
            let key = keyfile::load(&key_path)?;
            let workloads = deploy::read_app(&a.file)?;
            let p = deploy::post(&client, &key, a.contract, workloads).await?;
            print(j, &p, |p| {
                format!(
                    "deployment version {} of contract {} ({} workloads) sealed to node {}
                     follow it with: grid deployments show {}
",
                    p.version, p.contract_id, p.workloads, p.node_id, p.contract_id
                )
            });
        }
        Command::Deployments(DeploymentsCmd::Show { id }) => {
            let key = keyfile::load(&key_path)?;
            let r = deploy::show(&client, &key, id).await?;
            print(j, &r, deploy::report_text);
        }
        Command::Deployments(DeploymentsCmd::Delete { id }) => {
            let key = keyfile::load(&key_path)?;
            let p = deploy::post(&client, &key, id, Vec::new()).await?;
            print(j, &p, |p| {
                format!(
                    "deployment version {} of contract {} removes every workload; the contract \
                     keeps its capacity until `grid contracts cancel {}`\n",
                    p.version, p.contract_id, p.contract_id
                )
            });
        }
        Command::Logs(a) => {
            let key = keyfile::load(&key_path)?;
            let wait = std::time::Duration::from_secs(a.wait);
            let logs = logs::fetch(&client, &key, a.contract, &a.workload, a.tail, wait).await?;
            if j {
                print(j, &logs, |_| String::new());
            } else {
                // The bytes as the container wrote them: a pipe gets them unchanged.
                let mut out = std::io::stdout().lock();
                out.write_all(&logs.data)?;
                out.flush()?;
            }
        }
        Command::Units(u) => units(&u, j)?,
        Command::Ledger(c) => crate::ledger::run(&client, c, j).await?,
        Command::Audit(AuditCmd::Node { id }) => {
            let a = audit::node(&client, id).await?;
            print(j, &a, audit::node_text);
            if !a.clean() {
                bail!("node {id}: the registry's figures do not hold");
            }
        }
        Command::Audit(AuditCmd::Farm { id }) => {
            let a = audit::farm(&client, id).await?;
            print(j, &a, |a| {
                let mut t: String = a.nodes.iter().map(audit::node_text).collect();
                t.push_str(&format!(
                    "farm {}: {} nodes, {:.0} messages verified per second\n",
                    a.farm_id,
                    a.nodes.len(),
                    a.reports_per_sec
                ));
                t
            });
            let bad = a.nodes.iter().filter(|n| !n.clean()).count();
            if bad > 0 {
                bail!("farm {id}: the registry's figures do not hold for {bad} node(s)");
            }
        }
    }
    Ok(())
}

pub(crate) fn print<T: Serialize>(json_mode: bool, v: &T, human: impl FnOnce(&T) -> String) {
    if json_mode {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", human(v));
    }
}

/// What `grid key new` and `grid key show` print.
#[derive(Serialize)]
struct KeyInfo {
    public_key: String,
    path: PathBuf,
}

impl KeyInfo {
    fn of(key: &SigningKey, path: &Path) -> KeyInfo {
        KeyInfo {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            path: path.to_path_buf(),
        }
    }
}

fn gib(bytes: impl Into<u128>) -> String {
    format!("{:.1}", bytes.into() as f64 / GIB as f64)
}

fn to_bytes(g: Option<f64>, flag: &str) -> anyhow::Result<Option<i64>> {
    match g {
        Some(g) if !(g.is_finite() && g >= 0.0) => {
            bail!("{flag} must be a non-negative number of GiB")
        }
        Some(g) => Ok(Some((g * GIB as f64).round() as i64)),
        None => Ok(None),
    }
}

fn node_filter(f: &NodeFilterArgs) -> anyhow::Result<NodeFilter> {
    Ok(NodeFilter {
        farm: f.farm.map(|v| v as i64),
        status: f.status.map(|s| match s {
            StatusArg::Up => NodeStatus::Up,
            StatusArg::Down => NodeStatus::Down,
            StatusArg::Stopped => NodeStatus::Stopped,
        }),
        min_cru: f.min_cru.map(|v| v as i64),
        min_mru: to_bytes(f.min_mru, "--min-mru")?,
        min_sru: to_bytes(f.min_sru, "--min-sru")?,
        min_hru: to_bytes(f.min_hru, "--min-hru")?,
        after: f.after.map(|a| a as i64),
        limit: Some(i64::from(f.limit)),
    })
}

/// A list query that can be moved to the next page.
pub(crate) trait Paged: Serialize {
    fn set_after(&mut self, after: i64);
}

impl Paged for Paging {
    fn set_after(&mut self, after: i64) {
        self.after = Some(after);
    }
}

impl Paged for ContractFilter {
    fn set_after(&mut self, after: i64) {
        self.after = Some(after);
    }
}

impl Paged for gridapi::PeriodFilter {
    fn set_after(&mut self, after: i64) {
        self.after = Some(after);
    }
}

impl Paged for NodeFilter {
    fn set_after(&mut self, after: i64) {
        self.after = Some(after);
    }
}

/// Fetches one page, or every page when `all`, of a list endpoint.
pub(crate) async fn all_pages<T: DeserializeOwned, Q: Paged>(
    client: &Client,
    path: &str,
    mut query: Q,
    all: bool,
) -> anyhow::Result<Vec<T>> {
    let mut items = vec![];
    loop {
        let page: Page<T> = client.get_query(path, &query).await?;
        items.extend(page.items);
        match page.next {
            Some(n) if all => query.set_after(n),
            _ => return Ok(items),
        }
    }
}

fn farm_table(farms: &[FarmView]) -> String {
    let mut out = format!(
        "{:>6}  {:<24} {:>6}  {:>6}\n",
        "ID", "NAME", "TWIN", "NODES"
    );
    for f in farms {
        out += &format!(
            "{:>6}  {:<24} {:>6}  {:>6}\n",
            f.id, f.name, f.twin_id, f.nodes
        );
    }
    out
}

fn node_table(nodes: &[NodeView]) -> String {
    let mut out = format!(
        "{:>6} {:>5} {:<7} {:>4} {:>8} {:>9} {:>9} {:>8} {:>8}\n",
        "ID", "FARM", "STATE", "CRU", "MRU GiB", "SRU GiB", "HRU GiB", "CU", "SU"
    );
    for n in nodes {
        let c = &n.capacity;
        out += &format!(
            "{:>6} {:>5} {:<7} {:>4} {:>8} {:>9} {:>9} {:>8.2} {:>8.2}\n",
            n.id,
            n.farm_id,
            n.status.as_str(),
            c.cru,
            gib(c.mru),
            gib(c.sru),
            gib(c.hru),
            n.units.cu,
            n.units.su
        );
    }
    out
}

/// A report as the auditor checked it.
#[derive(Serialize)]
struct AuditedReport {
    #[serde(flatten)]
    report: ReportView,
    /// The signature verified against the node's key, here, not by the registry.
    verified: bool,
}

/// A node with every report's signature checked locally.
#[derive(Serialize)]
struct AuditedNode {
    #[serde(flatten)]
    node: NodeView,
    reports: Vec<AuditedReport>,
    /// What the newest verified message said is wrong with the node.
    warnings: Vec<String>,
    #[serde(skip)]
    bad: usize,
}

/// Auditors should not have to trust the registry: every signature is checked here.
fn audit(mut node: NodeView) -> AuditedNode {
    // Compared as key bytes, never as text: a registry that answered another spelling of the
    // key must not make a valid report look forged, or the reverse.
    let node_key = gridtypes::parse_public_key(&node.public_key).ok();
    let reports: Vec<AuditedReport> = node
        .reports
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|report| {
            let envelope = serde_json::from_str::<Envelope>(report.envelope.get()).ok();
            let verified = envelope
                .as_ref()
                .and_then(|e| e.verify_signature().ok())
                .is_some_and(|k| Some(k) == node_key);
            AuditedReport { report, verified }
        })
        .collect();
    let bad = reports.iter().filter(|r| !r.verified).count();
    // The node repeats its warnings in every message: the newest verified one says what
    // holds now.
    let warnings = reports
        .iter()
        .filter(|r| r.verified)
        .find_map(|r| message_warnings(r.report.envelope.get()))
        .unwrap_or_default();
    AuditedNode {
        node,
        reports,
        warnings,
        bad,
    }
}

/// The warnings a node put in a signed registration, uptime or capacity message; `None` for
/// other messages and for envelopes that do not decode.
fn message_warnings(envelope: &str) -> Option<Vec<String>> {
    let env: Envelope = serde_json::from_str(envelope).ok()?;
    match Payload::from_bytes(&env.payload).ok()? {
        Payload::RegisterNode(reg) => Some(reg.warnings),
        Payload::Report(Report::Uptime { warnings, .. })
        | Payload::Report(Report::Capacity { warnings, .. }) => Some(warnings),
        _ => None,
    }
}

fn node_details(a: &AuditedNode) -> String {
    let n = &a.node;
    let (c, f) = (&n.capacity, &n.free);
    let mut out = String::new();
    for w in &a.warnings {
        out += &format!("WARNING    {w}\n");
    }
    out += &format!(
        "node {} (farm {}), {}\nkey        {}\nserial     {}\nvirtual    {}\n",
        n.id,
        n.farm_id,
        n.status,
        n.public_key,
        n.serial.as_deref().unwrap_or("-"),
        n.virtualized
    );
    out += &format!(
        "capacity   {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD, {} IPv4\n",
        c.cru,
        gib(c.mru),
        gib(c.sru),
        gib(c.hru),
        c.ipv4
    );
    out += &format!(
        "free       {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD\n",
        f.cru,
        gib(f.mru),
        gib(f.sru),
        gib(f.hru)
    );
    out += &format!(
        "units      CU {:.3}  SU {:.3}\nuptime     {} s, last seen {}\nreports (newest first):\n",
        n.units.cu, n.units.su, n.uptime_secs, n.last_seen
    );
    for r in &a.reports {
        out += &format!(
            "  #{:<8} {:<12} signed {} {}\n",
            r.report.id,
            r.report.kind,
            r.report.signed_at,
            if r.verified {
                "signature ok"
            } else {
                "SIGNATURE INVALID"
            }
        );
    }
    out
}

fn totals_line(t: &Totals) -> String {
    let c = &t.capacity;
    format!(
        "{} nodes, {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD, CU {:.2}, SU {:.2}",
        t.nodes,
        c.cru,
        gib(c.mru),
        gib(c.sru),
        gib(c.hru),
        t.units.cu,
        t.units.su
    )
}

fn units(u: &UnitsArgs, j: bool) -> anyhow::Result<()> {
    for (flag, g) in [("--mru", u.mru), ("--sru", u.sru), ("--hru", u.hru)] {
        if !(g.is_finite() && g >= 0.0) {
            bail!("{flag} must be a non-negative number of GiB");
        }
    }
    let r = Resources::from_gib(u.cru, u.mru, u.sru, u.hru);
    let units: Units = if u.billing {
        r.billing_units()
    } else {
        r.farming_units()
    };
    print(j, &units, |units| {
        let kind = if u.billing { "billing" } else { "farming" };
        format!("{kind} units: CU {} SU {}\n", units.cu, units.su)
    });
    Ok(())
}

async fn contracts(
    client: &Client,
    key_path: &Path,
    cmd: ContractsCmd,
    j: bool,
) -> anyhow::Result<()> {
    match cmd {
        ContractsCmd::Create(a) => {
            let key = keyfile::load(key_path)?;
            let payload = Payload::CreateContract(ContractRequest {
                node_id: a.node,
                resources: Resources {
                    cru: a.cru,
                    mru: a.mru,
                    sru: a.sru,
                    hru: a.hru,
                    ipv4: a.ipv4,
                },
            });
            payload.validate()?;
            let w = client.post_signed(paths::CONTRACTS, &key, &payload).await?;
            print(j, &w, |w| {
                format!(
                    "contract {} reserves {} cores, {} GiB memory, {} GiB SSD, {} GiB HDD on node {}\n",
                    w.id,
                    a.cru,
                    gib(a.mru),
                    gib(a.sru),
                    gib(a.hru),
                    a.node
                )
            });
        }
        ContractsCmd::List {
            twin,
            node,
            state,
            all,
        } => {
            let filter = ContractFilter {
                twin: twin.map(|t| t as i64),
                node: node.map(|n| n as i64),
                state: state.map(|s| match s {
                    ContractStateArg::Active => ContractState::Active,
                    ContractStateArg::Cancelled => ContractState::Cancelled,
                }),
                ..ContractFilter::default()
            };
            let list: Vec<ContractView> = all_pages(client, paths::CONTRACTS, filter, all).await?;
            print(j, &list, |list| contract_table(list));
        }
        ContractsCmd::Show { id } => {
            let c: ContractView = client.get(&paths::contract(id)).await?;
            print(j, &c, |c| contract_table(std::slice::from_ref(c)));
        }
        ContractsCmd::Cancel { id } => {
            let key = keyfile::load(key_path)?;
            let payload = Payload::CancelContract { contract_id: id };
            payload.validate()?;
            let w = client
                .post_signed(paths::CONTRACTS_CANCEL, &key, &payload)
                .await?;
            print(j, &w, |w| format!("contract {} cancelled\n", w.id));
        }
    }
    Ok(())
}

fn contract_table(list: &[ContractView]) -> String {
    let mut out = format!(
        "{:>6} {:>6} {:>6} {:<9} {:>4} {:>8} {:>9} {:>9} {:>4}\n",
        "ID", "TWIN", "NODE", "STATE", "CRU", "MRU GiB", "SRU GiB", "HRU GiB", "IPV4"
    );
    for c in list {
        let r = &c.resources;
        out += &format!(
            "{:>6} {:>6} {:>6} {:<9} {:>4} {:>8} {:>9} {:>9} {:>4}\n",
            c.id,
            c.twin_id,
            c.node_id,
            if c.grace_since.is_some() {
                "grace"
            } else {
                c.state.as_str()
            },
            r.cru,
            gib(r.mru),
            gib(r.sru),
            gib(r.hru),
            r.ipv4
        );
    }
    // A contract in grace runs on unpaid: say until when, and what to do.
    for c in list.iter().filter(|c| c.state == ContractState::Active) {
        if let Some(end) = c.grace_ends {
            out += &format!(
                "contract {}: its twin's balance does not cover its bill; it is cancelled at {} (Unix time) unless the twin pays in\n",
                c.id, end
            );
        }
    }
    out
}

/// What `grid image build --json` prints.
#[derive(Serialize)]
struct ImageBuilt<'a> {
    #[serde(flatten)]
    build: &'a imager::Report,
    /// The network boot's kernel command line, with `--format pxe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pxe_cmdline: Option<&'a str>,
    /// The USB image or ISO, with `--format usb|iso`.
    #[serde(skip_serializing_if = "Option::is_none")]
    media: Option<&'a bootmedia::Built>,
}

/// `grid image build`: the release, then the boot medium `--format` asks for.
async fn image_build(registry: &str, j: bool, args: ImageBuildArgs) -> anyhow::Result<()> {
    let ImageBuildArgs {
        mut build,
        format,
        sign_key,
        sign_cert,
    } = args;
    if build.farm.is_some() {
        build
            .append
            .insert(0, format!("gridos.registry={}", node_registry(registry)?));
    } else if format == ImageFormat::Pxe {
        bail!("--format pxe needs --farm: a node booted from the network has no other way to learn its farm");
    }
    if format != ImageFormat::Release && !build.append.is_empty() {
        // Before the build: a boot script or loader configuration could not carry it.
        bootmedia::check_words(&build.append.join(" "))
            .map_err(|e| anyhow::anyhow!("--append: {e}"))?;
    }
    let signing = match (sign_key, sign_cert) {
        (Some(key), Some(cert)) => {
            if !matches!(format, ImageFormat::Usb | ImageFormat::Iso) {
                bail!("--sign-key: only a usb or iso image has a UEFI kernel image to sign");
            }
            for f in [&key, &cert] {
                std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?;
            }
            Some(bootmedia::Signing { key, cert })
        }
        _ => None,
    };
    // A usb or iso is one file: the release it is made of is built beside it and removed.
    let (file, scratch) = match format {
        ImageFormat::Usb | ImageFormat::Iso => {
            let name = if format == ImageFormat::Usb {
                "node.img"
            } else {
                "node.iso"
            };
            let file = if build.out.is_dir() {
                build.out.join(name)
            } else {
                build.out.clone()
            };
            let scratch = bootmedia::scratch_dir(bootmedia::parent_of(&file))?;
            build.out = scratch.path().to_path_buf();
            (Some(file), Some(scratch))
        }
        ImageFormat::Release | ImageFormat::Pxe => (None, None),
    };
    let quiet = build.quiet || j;
    let opts = build.options();
    let out = build.out.clone();
    let r = tokio::task::spawn_blocking(move || imager::build(&opts)).await??;
    let progress = move |step: &str| {
        if !quiet {
            eprintln!("{step}");
        }
    };
    let media_opts = bootmedia::Options {
        signing,
        progress: &progress,
        ..bootmedia::Options::default()
    };
    let (pxe, media) = match (format, &file) {
        (ImageFormat::Pxe, _) => (Some(bootmedia::pxe::write(&out, &out, &[])?), None),
        (ImageFormat::Usb, Some(f)) => (None, Some(bootmedia::usb::write(&out, f, &media_opts)?)),
        (ImageFormat::Iso, Some(f)) => (None, Some(bootmedia::iso::write(&out, f, &media_opts)?)),
        _ => (None, None),
    };
    drop(scratch);
    print(
        j,
        &ImageBuilt {
            build: &r,
            pxe_cmdline: pxe.as_ref().map(|p| p.cmdline.as_str()),
            media: media.as_ref(),
        },
        |_| {
            match &media {
            Some(m) => format!(
                "{} written: {:.1} MB, boots UEFI{} and BIOS; write it to a stick with dd, Etcher or Rufus\n\
                 command line: {}\n",
                m.path.display(),
                m.bytes as f64 / 1e6,
                if m.signed { " (signed for Secure Boot)" } else { "" },
                m.cmdline
            ),
            None => {
                let mut text = imager::cli::summary(&r, &out);
                if pxe.is_some() {
                    text += &format!(
                        "network boot: serve {} by TFTP or HTTP; boot.ipxe loads the node (dnsmasq.conf.example: a proxy-DHCP recipe)\n",
                        out.display()
                    );
                }
                text
            }
        }
        },
    );
    Ok(())
}

/// The registry URL as a node will use it: baked into the image, so it must name an address
/// the node can reach, never this machine's loopback.
fn node_registry(url: &str) -> anyhow::Result<String> {
    bootmedia::node_url(url).map_err(|e| anyhow::anyhow!("--registry {url:?}: {e}"))
}
