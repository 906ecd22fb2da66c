//! `grid`: one CLI for farmers (keys, farms), twins (registration) and auditors (nodes, stats,
//! units). Answers are read as `gridapi` types; `--json` prints them as the registry sent them
//! (plus what the CLI checked itself, such as each report's signature).

mod audit;
mod client;
mod commands;
/// App files (`grid deploy`): YAML or JSON with sizes in units; the lab writes them too.
pub mod deploy;
mod keyfile;
mod ledger;
mod logs;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::{Client, ClientError, MAX_RESPONSE_BYTES};

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
    /// Reserve capacity on a node (as a twin), list and cancel reservations.
    #[command(subcommand)]
    Contracts(ContractsCmd),
    /// Run an app file's workloads under a contract: sealed to the node, relayed by the
    /// registry, which cannot read them.
    Deploy(DeployArgs),
    /// Follow (`show`) and remove (`delete`) what runs under a contract.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// A workload's newest output (stdout and stderr), asked of the node and sealed to you.
    Logs(LogsArgs),
    /// Check a node's or farm's figures without trusting the registry: every signature is
    /// verified and units, uptime, rewards and payments are computed again.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// TFT balances and histories, and the minting periods that paid farmers.
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
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
    /// Build the image of image/profile.yaml into out/ (see docs/image.md); with `--farm`,
    /// the farm and `--registry` are baked into its command line. `--format pxe|usb|iso`
    /// makes boot media of it (docs/boot-media.md).
    Build(ImageBuildArgs),
}

#[derive(Args)]
struct ImageBuildArgs {
    #[command(flatten)]
    build: imager::cli::BuildArgs,
    /// `release`: kernel, initramfs and command line in the `--out` folder; `pxe`: the same
    /// folder plus the iPXE script `boot.ipxe` and a dnsmasq recipe, served as it is by TFTP
    /// or HTTP; `usb`: a disk image file to write to a stick (UEFI and BIOS), `--out` naming
    /// the file (or a folder, to get node.img in it); `iso`: a hybrid ISO file (node.iso).
    #[arg(long, value_enum, default_value_t = ImageFormat::Release)]
    format: ImageFormat,
    /// Secure Boot: sign the UEFI kernel image of a usb or iso with this private key (PEM,
    /// with --sign-cert).
    #[arg(long, requires = "sign_cert")]
    sign_key: Option<std::path::PathBuf>,
    /// Secure Boot: the certificate (PEM) that goes with --sign-key.
    #[arg(long, requires = "sign_key")]
    sign_cert: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ImageFormat {
    Release,
    Pxe,
    Usb,
    Iso,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// One node.
    Node {
        /// Node id.
        id: u64,
    },
    /// Every node of a farm.
    Farm {
        /// Farm id.
        id: u64,
    },
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

#[derive(Subcommand)]
enum ContractsCmd {
    /// Reserve capacity on a node; prints the contract id.
    Create(ContractArgs),
    /// List contracts, optionally of one twin or node.
    List {
        /// Only this twin's contracts.
        #[arg(long)]
        twin: Option<u64>,
        /// Only contracts on this node.
        #[arg(long)]
        node: Option<u64>,
        /// Only active or only cancelled ones.
        #[arg(long, value_enum)]
        state: Option<ContractStateArg>,
        /// Follow pages until the end.
        #[arg(long)]
        all: bool,
    },
    /// One contract.
    Show {
        /// Contract id.
        id: u64,
    },
    /// End a contract of yours: the node frees the capacity and tears its workloads down.
    Cancel {
        /// Contract id.
        id: u64,
    },
}

#[derive(Args)]
struct DeployArgs {
    /// App file (YAML or JSON): `workloads:`, a list of containers and volumes
    /// (docs/deployments.md).
    file: PathBuf,
    /// The contract to run them under (`grid contracts create`).
    #[arg(long)]
    contract: u64,
}

#[derive(Args)]
struct LogsArgs {
    /// Contract id.
    contract: u64,
    /// The workload's name in the app file.
    workload: String,
    /// At most this many bytes, from the end of the output.
    #[arg(long, default_value_t = gridtypes::mailbox::MAX_LOG_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(1..=gridtypes::mailbox::MAX_LOG_BYTES as i64))]
    tail: u32,
    /// How long to wait for the node's answer, in seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

#[derive(Subcommand)]
enum DeploymentsCmd {
    /// The node's latest word on a contract's deployment, checked against its signature and
    /// opened with your key.
    Show {
        /// Contract id.
        id: u64,
    },
    /// Remove every workload of a contract (a new version with none); the contract and its
    /// capacity stay until `grid contracts cancel`.
    Delete {
        /// Contract id.
        id: u64,
    },
}

#[derive(Args)]
struct ContractArgs {
    /// The node to reserve on (`grid nodes list --min-cru …` finds one).
    #[arg(long)]
    node: u64,
    /// Cores.
    #[arg(long, default_value_t = 0)]
    cru: u64,
    /// Memory, e.g. 256MiB or 2GiB (plain numbers are bytes).
    #[arg(long, value_parser = size, default_value = "0")]
    mru: u64,
    /// SSD, e.g. 2GiB.
    #[arg(long, value_parser = size, default_value = "0")]
    sru: u64,
    /// HDD, e.g. 1TB.
    #[arg(long, value_parser = size, default_value = "0")]
    hru: u64,
    /// Public IPv4 addresses.
    #[arg(long, default_value_t = 0)]
    ipv4: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ContractStateArg {
    /// Still reserved.
    Active,
    /// Ended.
    Cancelled,
}

/// A size with an optional binary (KiB, MiB, GiB, TiB) or decimal (KB, MB, GB, TB) unit.
fn size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s)
        .map_err(|e| format!("{s:?} is not a size ({e}): use e.g. 256MiB, 2GiB or 1TB"))
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

/// The program's entry: `args` is its whole command line, program name first. Errors are
/// printed as `grid: …` and give exit status 1.
pub fn run<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::run(cli)));
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grid: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
