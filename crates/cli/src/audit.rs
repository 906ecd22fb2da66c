//! `grid audit`: checks a node's or a farm's figures without trusting the registry.
//!
//! It downloads every signed message the registry stored for a node and verifies each
//! signature against the node's key. From the verified messages alone it computes again the
//! node's capacity and units, each closed period's uptime, and the reward of each period.
//! It then compares those figures with what the registry published and booked in its
//! ledger, and lists every difference. A report whose signature fails counts for nothing.

use std::time::Instant;

use accounting::{
    account, capacities_in, price_at, reward, Account, Period, Receipt, RewardInput, Sample, Tft,
};
use gridapi::{
    paths, FarmView, NodeFilter, NodeView, PeriodFilter, PeriodView, PolicyView, PriceView,
    ReportFilter, ReportView, TransactionView,
};
use gridtypes::{Envelope, Payload, Report, Resources};
use serde::Serialize;

use crate::client::Client;
use crate::commands::all_pages;

/// Reports asked for per page (the registry's largest page).
const PAGE: i64 = 1000;

/// A stored message that does not verify.
#[derive(Debug, Serialize)]
pub struct BadReport {
    /// Its id at the registry.
    pub id: i64,
    /// What is wrong with it.
    pub why: String,
}

/// A figure the registry published that the audit computed differently.
#[derive(Debug, Serialize)]
pub struct Difference {
    /// What it is about (`units`, `period 3 up_secs`, …).
    pub what: String,
    /// The registry's figure.
    pub registry: String,
    /// The audit's.
    pub audit: String,
}

/// What auditing one node found.
#[derive(Debug, Serialize)]
pub struct NodeAudit {
    /// The node.
    pub node_id: i64,
    /// Messages downloaded.
    pub reports: u64,
    /// Of those, messages that failed verification.
    pub bad: Vec<BadReport>,
    /// Closed periods checked.
    pub periods: u64,
    /// TFT the node's periods earned, as the audit computed it.
    pub earned: Tft,
    /// Every difference found.
    pub differences: Vec<Difference>,
    /// Seconds spent verifying signatures.
    pub verify_secs: f64,
}

impl NodeAudit {
    /// Whether the registry's figures for this node hold.
    pub fn clean(&self) -> bool {
        self.bad.is_empty() && self.differences.is_empty()
    }
}

/// What auditing a farm found.
#[derive(Debug, Serialize)]
pub struct FarmAudit {
    /// The farm.
    pub farm_id: i64,
    /// Each node's audit.
    pub nodes: Vec<NodeAudit>,
    /// Messages verified per second, over the whole farm.
    pub reports_per_sec: f64,
}

/// One verified message, as accounting reads it.
struct Verified {
    signed_at: i64,
    payload: Payload,
}

fn verify_one(r: &ReportView, key: &ed25519_dalek::VerifyingKey) -> Result<Verified, String> {
    let env: Envelope =
        serde_json::from_str(r.envelope.get()).map_err(|e| format!("not an envelope: {e}"))?;
    let signer = env
        .verify_signature()
        .map_err(|e| format!("signature: {e}"))?;
    if signer != *key {
        return Err("signed by another key than the node's".into());
    }
    if env.timestamp != r.signed_at {
        return Err(format!(
            "the registry lists it at {} but it was signed at {}",
            r.signed_at, env.timestamp
        ));
    }
    let payload = Payload::from_bytes(&env.payload).map_err(|e| e.to_string())?;
    let kind = match &payload {
        Payload::RegisterNode(_) => "registration",
        Payload::Report(rep) => rep.kind().as_str(),
        other => other.kind(),
    };
    if kind != r.kind {
        return Err(format!("listed as {} but it is a {kind}", r.kind));
    }
    Ok(Verified {
        signed_at: env.timestamp,
        payload,
    })
}

/// Verifies every message on all cores; the verified ones in the registry's order.
fn verify_all(
    reports: &[ReportView],
    key: &ed25519_dalek::VerifyingKey,
) -> (Vec<Verified>, Vec<BadReport>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = reports.len().div_ceil(threads).max(1);
    let results: Vec<Vec<Result<Verified, BadReport>>> = std::thread::scope(|s| {
        let handles: Vec<_> = reports
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|r| verify_one(r, key).map_err(|why| BadReport { id: r.id, why }))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(BadReport {
                        id: 0,
                        why: "a verifying thread failed".into(),
                    })]
                })
            })
            .collect()
    });
    let mut good = Vec::with_capacity(reports.len());
    let mut bad = Vec::new();
    for r in results.into_iter().flatten() {
        match r {
            Ok(v) => good.push(v),
            Err(b) => bad.push(b),
        }
    }
    (good, bad)
}

fn differs(out: &mut Vec<Difference>, what: String, registry: String, audit: String) {
    if registry != audit {
        out.push(Difference {
            what,
            registry,
            audit,
        });
    }
}

/// Audits node `id`.
pub async fn node(client: &Client, id: u64) -> anyhow::Result<NodeAudit> {
    let view: NodeView = client.get(&paths::node(id)).await?;
    let key = gridtypes::parse_public_key(&view.public_key)
        .map_err(|e| anyhow::anyhow!("node {id}'s key {:?}: {e}", view.public_key))?;
    let filter = ReportFilter {
        kind: None,
        after: None,
        limit: Some(PAGE),
    };
    let reports: Vec<ReportView> =
        all_pages(client, &paths::node_reports(id), filter, true).await?;
    let started = Instant::now();
    let (verified, bad) = verify_all(&reports, &key);
    let verify_secs = started.elapsed().as_secs_f64();

    let mut differences = Vec::new();
    // Capacity history, uptime samples and traffic, from verified messages only.
    let mut history: Vec<(i64, (Resources, Option<bool>))> = Vec::new();
    let mut samples = Vec::new();
    let mut traffic: Vec<(i64, u64)> = Vec::new();
    for v in &verified {
        match &v.payload {
            Payload::RegisterNode(reg) => {
                history.push((v.signed_at, (reg.capacity, Some(reg.virtualized))))
            }
            Payload::Report(Report::Capacity { capacity, .. }) => {
                history.push((v.signed_at, (*capacity, None)))
            }
            Payload::Report(Report::Uptime { uptime_secs, .. }) => samples.push(Sample {
                at: v.signed_at,
                uptime_secs: *uptime_secs,
            }),
            Payload::Report(Report::Consumption(c)) => traffic.push((v.signed_at, c.traffic_bytes)),
            _ => {}
        }
    }
    // The first registration fixes the periods and the capacity a node is ever paid for.
    let first = verified.iter().find_map(|v| match &v.payload {
        Payload::RegisterNode(reg) => Some((v.signed_at, reg.capacity)),
        _ => None,
    });
    // What the node has now: its latest capacity, in the registry's order.
    if let Some((_, (capacity, _))) = history.last() {
        differs(
            &mut differences,
            "capacity".into(),
            format!("{:?}", view.capacity),
            format!("{capacity:?}"),
        );
        let units = capacity.farming_units();
        differs(
            &mut differences,
            "units".into(),
            format!("CU {:.6} SU {:.6}", view.units.cu, view.units.su),
            format!("CU {:.6} SU {:.6}", units.cu, units.su),
        );
    }
    history.sort_by_key(|(at, _)| *at);

    let policies: Vec<PolicyView> = client.get(paths::POLICIES).await?;
    let prices: Vec<(i64, u64)> = client
        .get::<Vec<PriceView>>(paths::PRICES)
        .await?
        .iter()
        .map(|p| (p.set_at, p.micro_usd))
        .collect();
    let farm: FarmView = client.get(&paths::farm(view.farm_id.max(0) as u64)).await?;
    let filter = PeriodFilter {
        node: Some(view.id),
        limit: Some(PAGE),
        ..Default::default()
    };
    let periods: Vec<PeriodView> = all_pages(client, paths::PERIODS, filter, true).await?;
    let mut earned = Tft(0);
    for p in &periods {
        let full: PeriodView = client.get(&format!("{}/{}", paths::PERIODS, p.id)).await?;
        let Some(theirs) = full.receipt else {
            differs(
                &mut differences,
                format!("period {}", p.index),
                "no receipt".into(),
                "a receipt".into(),
            );
            continue;
        };
        let Some((connected_at, connected)) = first else {
            differs(
                &mut differences,
                format!("period {}", p.index),
                "closed".into(),
                "no verified registration to count periods from".into(),
            );
            continue;
        };
        let period = Period::nth(connected_at, p.index);
        let tag = |f: &str| format!("period {} {f}", p.index);
        // The policy the registry applied must be the one it publishes under that id.
        let policy = theirs.input.policy.clone().and_then(|used| {
            let published = policies
                .iter()
                .find(|q| q.policy.id == used.id)
                .map(|q| q.policy.clone());
            if published.as_ref() != Some(&used) {
                differences.push(Difference {
                    what: tag("policy"),
                    registry: format!("{used:?}"),
                    audit: format!("published: {published:?}"),
                });
            }
            published
        });
        let (capacities, virtualized) = capacities_in(&history, &period);
        let input = RewardInput {
            node_id: view.id,
            farm_id: p.farm_id,
            period,
            connected,
            price: price_at(&prices, connected_at),
            capacities,
            traffic_bytes: traffic
                .iter()
                .filter(|(at, _)| period.contains(*at))
                .fold(0u64, |sum, (_, b)| sum.saturating_add(*b)),
            uptime: account(&period, &samples),
            virtualized,
            policy,
        };
        let ours = reward(input);
        compare_receipts(&mut differences, p, &theirs, &ours);
        earned = Tft(earned.0.saturating_add(ours.tft.0));
        check_payment(client, &mut differences, p, &ours, farm.twin_id).await?;
    }
    Ok(NodeAudit {
        node_id: view.id,
        reports: reports.len() as u64,
        bad,
        periods: periods.len() as u64,
        earned,
        differences,
        verify_secs,
    })
}

fn compare_receipts(out: &mut Vec<Difference>, p: &PeriodView, theirs: &Receipt, ours: &Receipt) {
    let tag = |f: &str| format!("period {} {f}", p.index);
    let pairs = [
        (
            "start",
            p.start.to_string(),
            ours.input.period.start.to_string(),
        ),
        ("end", p.end.to_string(), ours.input.period.end.to_string()),
        (
            "up_secs",
            p.up_secs.to_string(),
            ours.input.uptime.up_secs.to_string(),
        ),
        (
            "uptime reports",
            p.reports.to_string(),
            ours.input.uptime.reports.to_string(),
        ),
        (
            "violation",
            format!("{:?}", theirs.input.uptime.violation),
            format!("{:?}", ours.input.uptime.violation),
        ),
        (
            "connected capacity",
            format!("{:?}", theirs.input.connected),
            format!("{:?}", ours.input.connected),
        ),
        (
            "price",
            format!("{:?}", theirs.input.price),
            format!("{:?}", ours.input.price),
        ),
        (
            "capacities",
            format!("{:?}", theirs.input.capacities),
            format!("{:?}", ours.input.capacities),
        ),
        (
            "traffic bytes",
            theirs.input.traffic_bytes.to_string(),
            ours.input.traffic_bytes.to_string(),
        ),
        (
            "virtualized",
            theirs.input.virtualized.to_string(),
            ours.input.virtualized.to_string(),
        ),
        (
            "units",
            format!("{:?}", theirs.units),
            format!("{:?}", ours.units),
        ),
        ("usd", p.usd.to_string(), ours.usd.to_string()),
        ("tft", p.tft.to_string(), ours.tft.to_string()),
        (
            "outcome",
            p.outcome.clone(),
            ours.outcome.as_str().to_string(),
        ),
    ];
    for (what, registry, audit) in pairs {
        differs(out, tag(what), registry, audit);
    }
    // The stored receipt must also agree with itself.
    if theirs.recomputed() != *theirs {
        out.push(Difference {
            what: tag("receipt"),
            registry: "its figures".into(),
            audit: "do not follow from its own inputs".into(),
        });
    }
}

/// The period's payment in the ledger: the farm's twin credited what the audit computed,
/// from the mint, in a transaction that balances.
async fn check_payment(
    client: &Client,
    out: &mut Vec<Difference>,
    p: &PeriodView,
    ours: &Receipt,
    farm_twin: i64,
) -> anyhow::Result<()> {
    let what = format!("period {} payment", p.index);
    let Some(tx) = p.tx_id else {
        if ours.tft.0 > 0 {
            out.push(Difference {
                what,
                registry: "none".into(),
                audit: format!("{} TFT", ours.tft),
            });
        }
        return Ok(());
    };
    let t: TransactionView = client
        .get(&format!("{}/{tx}", paths::LEDGER_TRANSACTIONS))
        .await?;
    let sum: i128 = t.entries.iter().map(|e| i128::from(e.amount.0)).sum();
    let credited: i64 = t
        .entries
        .iter()
        .filter(|e| e.account == Account::Twin(farm_twin))
        .map(|e| e.amount.0)
        .sum();
    let minted: i64 = t
        .entries
        .iter()
        .filter(|e| e.account == Account::Mint)
        .map(|e| e.amount.0)
        .sum();
    differs(out, format!("{what} balance"), sum.to_string(), "0".into());
    differs(
        out,
        format!("{what} to twin {farm_twin}"),
        Tft(credited).to_string(),
        ours.tft.to_string(),
    );
    differs(
        out,
        format!("{what} from the mint"),
        Tft(minted).to_string(),
        Tft(-ours.tft.0).to_string(),
    );
    Ok(())
}

/// Audits every node of farm `id`.
pub async fn farm(client: &Client, id: u64) -> anyhow::Result<FarmAudit> {
    let _: FarmView = client.get(&paths::farm(id)).await?;
    let filter = NodeFilter {
        farm: Some(id as i64),
        limit: Some(PAGE),
        ..Default::default()
    };
    let nodes: Vec<NodeView> = all_pages(client, paths::NODES, filter, true).await?;
    let mut audits = Vec::with_capacity(nodes.len());
    for n in &nodes {
        audits.push(node(client, n.id.max(0) as u64).await?);
    }
    let verified: u64 = audits.iter().map(|a| a.reports).sum();
    let secs: f64 = audits.iter().map(|a| a.verify_secs).sum();
    Ok(FarmAudit {
        farm_id: id as i64,
        nodes: audits,
        reports_per_sec: if secs > 0.0 {
            verified as f64 / secs
        } else {
            0.0
        },
    })
}

/// The human summary of one node's audit.
pub fn node_text(a: &NodeAudit) -> String {
    let rate = if a.verify_secs > 0.0 {
        a.reports as f64 / a.verify_secs
    } else {
        0.0
    };
    let mut t = format!(
        "node {}: {} signed messages, {} failed verification ({:.0} verified/s); {} closed periods, {} TFT earned\n",
        a.node_id,
        a.reports,
        a.bad.len(),
        rate,
        a.periods,
        a.earned
    );
    for b in &a.bad {
        t.push_str(&format!("  report {}: {}\n", b.id, b.why));
    }
    for d in &a.differences {
        t.push_str(&format!(
            "  DIFFERENT {}: registry says {}, audit computes {}\n",
            d.what, d.registry, d.audit
        ));
    }
    t.push_str(if a.clean() {
        "  every figure matches\n"
    } else {
        "  the registry's figures do NOT hold\n"
    });
    t
}

impl crate::commands::Paged for ReportFilter {
    fn set_after(&mut self, after: i64) {
        self.after = Some(after);
    }
}
