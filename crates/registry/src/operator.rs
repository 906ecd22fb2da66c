//! `grid-registry` subcommands of the registry's operator: farming policies, the TFT price,
//! deposits, and closing minting periods by hand (docs/ledger.md).

use accounting::{format_usd, parse_usd, Tft};
use clap::{Args, Subcommand};
use registry::ledger::{self, NewPolicy};
use registry::{minting, Db};

/// The database every operator command works on.
#[derive(Args)]
pub struct DbArg {
    /// Database URL, as for `serve`.
    #[arg(
        long,
        env = "GRID_REGISTRY_DB",
        default_value = "sqlite://grid-registry.db"
    )]
    db: String,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
}

/// Farming policies: what a farm's nodes earn per unit.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Make a policy (policies never change once made; farms move to a new one).
    Create {
        /// Unique name (A-Z a-z 0-9 - _ .).
        name: String,
        /// USD per CU per period, e.g. 2.4.
        #[arg(long, value_parser = parse_usd)]
        cu: u64,
        /// USD per SU per period.
        #[arg(long, value_parser = parse_usd)]
        su: u64,
        /// USD per NU (GiB of public traffic).
        #[arg(long, value_parser = parse_usd)]
        nu: u64,
        /// USD per public IPv4 address per hour up.
        #[arg(long, value_parser = parse_usd)]
        ipv4: u64,
        /// Least uptime that earns, in permill of the period (e.g. 950 for 95 %).
        #[arg(long)]
        sla: u64,
        /// The policy of every farm that has none of its own.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Give a farm its own policy, or back the default one.
    Attach {
        /// The farm.
        #[arg(long)]
        farm: i64,
        /// The policy id.
        #[arg(
            long,
            required_unless_present = "use_default",
            conflicts_with = "use_default"
        )]
        policy: Option<i64>,
        /// Use the default policy again.
        #[arg(long = "default")]
        use_default: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// List the policies.
    List {
        #[command(flatten)]
        db: DbArg,
    },
}

/// The operator's commands.
#[derive(Subcommand)]
pub enum OperatorCmd {
    /// Farming policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Set the TFT price in USD from now on (nodes earn at the price when they connected).
    Price {
        /// USD per TFT, e.g. 0.016.
        #[arg(value_parser = parse_usd)]
        usd: u64,
        #[command(flatten)]
        db: DbArg,
    },
    /// Credit a twin with TFT paid in from outside the grid; the same --reference is
    /// credited once.
    Deposit {
        /// The twin.
        #[arg(long)]
        twin: i64,
        /// TFT, e.g. 100 or 12.5.
        #[arg(long)]
        amount: Tft,
        /// The outside payment's id.
        #[arg(long)]
        reference: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Set what twins pay per hour from now on (USD per CU-hour, per SU-hour, per GiB of
    /// public traffic, per IPv4-hour).
    Pricing {
        /// USD per CU per hour, e.g. 0.01.
        #[arg(long, value_parser = parse_usd)]
        cu: u64,
        /// USD per SU per hour.
        #[arg(long, value_parser = parse_usd)]
        su: u64,
        /// USD per GiB of public traffic.
        #[arg(long, value_parser = parse_usd)]
        nu: u64,
        /// USD per public IPv4 address per hour.
        #[arg(long, value_parser = parse_usd)]
        ipv4: u64,
        #[command(flatten)]
        db: DbArg,
    },
    /// Bill every contract that is due (the server does this every --bill-every seconds).
    Bill {
        /// Seconds a contract whose twin cannot pay keeps running before it is cancelled.
        #[arg(long, default_value_t = registry::billing::BillingConfig::default().grace_secs)]
        grace: i64,
        #[command(flatten)]
        db: DbArg,
    },
    /// Close every minting period that is due and pay its reward (the server does this
    /// every --close-every seconds on its own).
    Close {
        /// Seconds after a period's end before it is closed.
        #[arg(long, default_value_t = minting::MintingConfig::default().settle_secs)]
        settle: i64,
        #[command(flatten)]
        db: DbArg,
    },
}

fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

/// Runs one operator command.
pub async fn run(cmd: OperatorCmd) -> anyhow::Result<()> {
    let now = gridtypes::now();
    match cmd {
        OperatorCmd::Policy(PolicyCmd::Create {
            name,
            cu,
            su,
            nu,
            ipv4,
            sla,
            default,
            db,
        }) => {
            let database = Db::connect(&db.db).await?;
            let p = NewPolicy {
                name,
                rates: accounting::Rates {
                    cu,
                    su,
                    nu,
                    ipv4,
                    sla_permill: sla,
                },
                default,
            };
            let id = ledger::create_policy(&database, &p, now).await?;
            print(
                db.json,
                serde_json::json!({ "id": id }),
                format!(
                    "policy {id} {:?}: {} USD per CU and {} per SU a period, {} per GiB, {} per IPv4-hour, SLA {} ‰{}",
                    p.name,
                    format_usd(cu),
                    format_usd(su),
                    format_usd(nu),
                    format_usd(ipv4),
                    sla,
                    if default { " (default)" } else { "" }
                ),
            );
        }
        OperatorCmd::Policy(PolicyCmd::Attach {
            farm, policy, db, ..
        }) => {
            let database = Db::connect(&db.db).await?;
            ledger::attach_policy(&database, farm, policy).await?;
            print(
                db.json,
                serde_json::json!({ "farm": farm, "policy": policy }),
                match policy {
                    Some(p) => format!("farm {farm} earns under policy {p}"),
                    None => format!("farm {farm} earns under the default policy"),
                },
            );
        }
        OperatorCmd::Policy(PolicyCmd::List { db }) => {
            let database = Db::connect(&db.db).await?;
            let list = ledger::policies(&database).await?;
            let mut text = format!(
                "{:>4}  {:<20} {:>10} {:>10} {:>10} {:>10} {:>6}",
                "ID", "NAME", "CU USD", "SU USD", "NU USD", "IPV4 USD/h", "SLA ‰"
            );
            for p in &list {
                text.push_str(&format!(
                    "\n{:>4}  {:<20} {:>10} {:>10} {:>10} {:>10} {:>6}{}",
                    p.policy.id,
                    p.policy.name,
                    format_usd(p.policy.rates.cu),
                    format_usd(p.policy.rates.su),
                    format_usd(p.policy.rates.nu),
                    format_usd(p.policy.rates.ipv4),
                    p.policy.rates.sla_permill,
                    if p.default { "  default" } else { "" }
                ));
            }
            print(db.json, serde_json::to_value(&list)?, text);
        }
        OperatorCmd::Price { usd, db } => {
            let database = Db::connect(&db.db).await?;
            let id = ledger::set_price(&database, usd, now).await?;
            print(
                db.json,
                serde_json::json!({ "id": id, "micro_usd": usd, "set_at": now }),
                format!("TFT price is {} USD from now on", format_usd(usd)),
            );
        }
        OperatorCmd::Deposit {
            twin,
            amount,
            reference,
            db,
        } => {
            let database = Db::connect(&db.db).await?;
            let tx = ledger::deposit(&database, twin, amount, &reference, now).await?;
            print(
                db.json,
                serde_json::json!({ "tx_id": tx, "credited": tx.is_some() }),
                match tx {
                    Some(id) => format!("twin {twin} credited {amount} TFT (transaction {id})"),
                    None => format!("deposit {reference:?} was credited before: nothing changed"),
                },
            );
        }
        OperatorCmd::Pricing {
            cu,
            su,
            nu,
            ipv4,
            db,
        } => {
            let database = Db::connect(&db.db).await?;
            let p = accounting::Pricing { cu, su, nu, ipv4 };
            let id = registry::billing::set_pricing(&database, p, now).await?;
            print(
                db.json,
                serde_json::json!({ "id": id, "pricing": p }),
                format!(
                    "twins pay {} USD per CU-hour, {} per SU-hour, {} per GiB, {} per IPv4-hour from now on",
                    format_usd(cu),
                    format_usd(su),
                    format_usd(nu),
                    format_usd(ipv4)
                ),
            );
        }
        OperatorCmd::Bill { grace, db } => {
            let database = Db::connect(&db.db).await?;
            let b = registry::billing::bill_due(&database, now, grace).await?;
            print(
                db.json,
                serde_json::to_value(b)?,
                format!(
                    "{} bills, {} TFT charged; {} contracts entered grace, {} resumed, {} cancelled unpaid",
                    b.bills, b.charged, b.graced, b.resumed, b.cancelled
                ),
            );
        }
        OperatorCmd::Close { settle, db } => {
            let database = Db::connect(&db.db).await?;
            minting::backfill_readings(&database).await?;
            let c = minting::close_due(&database, now, settle).await?;
            print(
                db.json,
                serde_json::to_value(c)?,
                format!(
                    "closed {} periods, {} paid, {} TFT minted",
                    c.periods, c.paid, c.minted
                ),
            );
        }
    }
    Ok(())
}
