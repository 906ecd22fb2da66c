//! `grid ledger`: TFT balances and account histories, and the closed minting periods that
//! paid farms, read from the registry's auditor API.

use accounting::{format_usd, Account};
use clap::Subcommand;
use gridapi::{paths, BalanceView, EntryView, Paging, PeriodFilter, PeriodView};

use crate::client::Client;
use crate::commands::{all_pages, print};

/// An account as a user writes it: `twin:7`, just `7` for a twin, `mint` or `deposits`.
fn account(s: &str) -> Result<Account, String> {
    match s.parse::<i64>() {
        Ok(id) if id > 0 && !s.starts_with(['0', '+']) => Ok(Account::Twin(id)),
        _ => s.parse::<Account>().map_err(|e| e.to_string()),
    }
}

#[derive(Subcommand)]
pub enum LedgerCmd {
    /// An account's balance.
    Balance {
        /// `twin:ID` (or just the twin id), `mint` or `deposits`.
        #[arg(value_parser = account)]
        account: Account,
    },
    /// An account's entries, oldest first.
    History {
        /// As for `balance`.
        #[arg(value_parser = account)]
        account: Account,
        /// Entries per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this entry id.
        #[arg(long)]
        after: Option<i64>,
        /// Follow pages until the end.
        #[arg(long)]
        all: bool,
    },
    /// Closed minting periods and what they earned.
    Periods {
        /// Only this node's.
        #[arg(long)]
        node: Option<i64>,
        /// Only this farm's.
        #[arg(long)]
        farm: Option<i64>,
        /// Follow pages until the end.
        #[arg(long)]
        all: bool,
    },
}

/// Runs one `grid ledger` command.
pub async fn run(client: &Client, cmd: LedgerCmd, j: bool) -> anyhow::Result<()> {
    match cmd {
        LedgerCmd::Balance { account } => {
            let b: BalanceView = client
                .get(&format!("{}/{account}", paths::LEDGER_ACCOUNTS))
                .await?;
            print(j, &b, |b| {
                format!("{}: {} TFT ({} entries)\n", b.account, b.balance, b.entries)
            });
        }
        LedgerCmd::History {
            account,
            limit,
            after,
            all,
        } => {
            let paging = Paging {
                after,
                limit: Some(limit.into()),
            };
            let path = format!("{}/{account}/entries", paths::LEDGER_ACCOUNTS);
            let entries: Vec<EntryView> = all_pages(client, &path, paging, all).await?;
            print(j, &entries, |list| {
                let mut t = format!(
                    "{:>8} {:>8}  {:<8} {:>20}  {}\n",
                    "ENTRY", "TX", "KIND", "TFT", "FOR"
                );
                for e in list {
                    t.push_str(&format!(
                        "{:>8} {:>8}  {:<8} {:>20}  {}\n",
                        e.id,
                        e.tx_id,
                        e.kind,
                        e.amount.to_string(),
                        e.reference
                    ));
                }
                t
            });
        }
        LedgerCmd::Periods { node, farm, all } => {
            let filter = PeriodFilter {
                node,
                farm,
                ..Default::default()
            };
            let list: Vec<PeriodView> = all_pages(client, paths::PERIODS, filter, all).await?;
            print(j, &list, |list| {
                let mut t = format!(
                    "{:>6} {:>6} {:>4}  {:>9} {:<11} {:>12} {:>18}\n",
                    "PERIOD", "NODE", "NR", "UPTIME %", "OUTCOME", "USD", "TFT"
                );
                for p in list {
                    let span = (p.end - p.start).max(1) as f64;
                    t.push_str(&format!(
                        "{:>6} {:>6} {:>4}  {:>9.2} {:<11} {:>12} {:>18}\n",
                        p.id,
                        p.node_id,
                        p.index,
                        p.up_secs as f64 * 100.0 / span,
                        p.outcome,
                        format_usd(p.usd),
                        p.tft.to_string()
                    ));
                }
                t
            });
        }
    }
    Ok(())
}
