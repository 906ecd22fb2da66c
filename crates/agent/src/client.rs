//! The registry client: signs payloads with the node key and sorts the answers into
//! "taken", "already taken", "refused for good" and "try again later".

use std::time::Duration;

use ed25519_dalek::SigningKey;
use gridapi::{paths, ErrorBody, ErrorCode, MailboxPage, Written};
use gridtypes::mailbox::{self, DeploymentStatus, LogAnswer};
use gridtypes::{
    now, Envelope, NodeRegistration, Payload, Report, Sealed, MAX_CLOCK_SKEW_SECS, NONCE_LEN,
};
use rand::RngCore;

use crate::queue::{same_boot, Entry};

/// How a registry answered one signed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored; the registry's id for the node or report.
    Accepted(i64),
    /// `409 replay`: the registry already holds this (signer, nonce): it was delivered before.
    Replay,
    /// A 4xx answer: this exact message can never succeed.
    Refused {
        /// HTTP status.
        status: u16,
        /// The registry's `error.code`, e.g. `unknown_farm`.
        code: ErrorCode,
        /// The registry's `error.message`.
        message: String,
    },
    /// Network error, timeout or 5xx: try again later.
    Unavailable(String),
    /// `429 Too Many Requests`: the registry asks this node to slow down. The message is
    /// kept (it stays queued) and not sent again before `retry_after`, when the registry said.
    Throttled {
        /// From the `Retry-After` header (delay in seconds); `None` when absent or a date.
        retry_after: Option<Duration>,
    },
}

/// Reads a `Retry-After` value given in seconds. An HTTP date (the other allowed form) is not
/// used by the registry and is treated as absent: the agent's own backoff applies then.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    // A day at most: a registry bug must not silence a node for months.
    Some(Duration::from_secs(secs.min(86_400)))
}

/// A queued report is signed with the time it describes when that is still inside the
/// registry's window; older ones get the oldest timestamp that is safely accepted.
/// 60 s of the 300 s window are kept for clock skew between node and registry.
pub const RESIGN_WINDOW_SECS: i64 = MAX_CLOCK_SKEW_SECS - 60;

/// Most bytes of an answer the agent reads. The registry answers a write with a few dozen
/// bytes; whatever sits at the registry's address (a proxy, a captive portal, an attacker on
/// plain HTTP) must not make the node buffer more.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Most bytes of a mailbox page the agent reads: 32 contracts with the largest sealed
/// deployment each are about 1 MiB.
pub const MAX_MAILBOX_BYTES: usize = 2 << 20;

/// The timestamp a queued report measured at `measured_at` is signed with at `now`.
pub fn sign_time(measured_at: i64, now: i64) -> i64 {
    measured_at.clamp(now.saturating_sub(RESIGN_WINDOW_SECS), now)
}

/// How a queued entry goes out.
#[derive(Debug, Clone, PartialEq)]
pub enum Signing {
    /// Sign `report` with timestamp `at`.
    Sign {
        /// The envelope's timestamp.
        at: i64,
        /// The payload, an uptime reading restated for `at`.
        report: Report,
    },
    /// An uptime reading of an earlier boot that no timestamp the registry still accepts can
    /// carry without its minting seeing a violation (see [`signing`]).
    Outdated,
}

/// How `entry` is signed at `now`, on a node whose running boot started at `boot` (`None`
/// when `/proc/uptime` is unreadable: the entry then goes as it is), after `last`, the last
/// uptime report the registry took from this agent as (signed timestamp, uptime).
///
/// The registry reads an uptime report as "up for `uptime_secs` at the signed time", and
/// the signed time of a late report is later than its reading ([`sign_time`]):
/// - a reading of the running boot is restated for the signed time (the node has been up
///   ever since, so that is what `/proc/uptime` said then). As it was, a report delivered
///   late followed by one on time would claim more uptime than time between them;
/// - a reading of an earlier boot cannot be: that boot ended at an unknown time. As it is, it
///   says the node booted at `at − uptime_secs`. If that is after the running boot started,
///   the next reports (more uptime than time since it) would be violations: this happens when
///   the registry comes back more than four minutes plus the old reading's uptime after the
///   reboot. Or it can be one itself after `last` (two readings of one earlier boot, both
///   late). Either way it is [`Signing::Outdated`]; what it alone proved (that boot's last
///   stretch) is lost, which is less than a period's reward.
///
/// Readings of the running boot are never held back: they are true as restated, and none
/// after them could do better.
pub fn signing(entry: &Entry, now: i64, boot: Option<i64>, last: Option<(i64, u64)>) -> Signing {
    let at = sign_time(entry.measured_at, now);
    let late = at.saturating_sub(entry.measured_at);
    let mut report = entry.report.clone();
    if let (Report::Uptime { uptime_secs, .. }, Some(entry_boot), Some(boot)) =
        (&mut report, entry.boot_time(), boot)
    {
        if same_boot(entry_boot, boot) {
            if late > 0 {
                *uptime_secs = uptime_secs.saturating_add(late.unsigned_abs());
            }
        } else if crate::queue::boot_time(at, *uptime_secs) > boot
            || last.is_some_and(|last| uptime_violation(last, (at, *uptime_secs)))
        {
            return Signing::Outdated;
        }
    }
    Signing::Sign { at, report }
}

/// Whether the registry's minting would call the uptime report `next` a violation after
/// `prev`, both as (signed timestamp, uptime): more uptime than time passed, beyond
/// `accounting::TOLERANCE_SECS`, and not a reboot (less uptime than before, or than time passed).
pub fn uptime_violation(prev: (i64, u64), next: (i64, u64)) -> bool {
    let sample = |(at, uptime_secs)| accounting::Sample { at, uptime_secs };
    accounting::is_violation(sample(prev), sample(next))
}

/// Talks to one registry as one node.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    key: SigningKey,
    timeout: Duration,
}

/// Sorts an HTTP answer into an [`Outcome`].
pub fn classify(status: u16, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Written>(body) {
            Ok(w) => Outcome::Accepted(w.id),
            // Stored, by the status; an answer this agent cannot read must not resend it.
            Err(_) => Outcome::Accepted(0),
        };
    }
    let (code, message) = match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (ErrorCode::Unknown, body.chars().take(200).collect()),
    };
    if status == 409 && code == ErrorCode::Replay {
        return Outcome::Replay;
    }
    if (400..500).contains(&status) {
        return Outcome::Refused {
            status,
            code,
            message,
        };
    }
    Outcome::Unavailable(format!("HTTP {status}: {message}"))
}

impl Client {
    /// A client for the registry at `base` (e.g. `http://10.0.2.2:8080`) signing with `key`.
    pub fn new(base: &str, key: SigningKey, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(gridapi::CLIENT_POOL_IDLE)
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            key,
            timeout,
        }
    }

    /// The node's public key as hex, as the registry names it.
    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Registers (or re-registers) the node.
    pub async fn register(&self, reg: &NodeRegistration) -> Outcome {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let env = Envelope::seal(&self.key, &Payload::RegisterNode(reg.clone()), now(), nonce);
        self.post(paths::NODES, env).await
    }

    /// Sends one queued report as it was queued, signed now with its own nonce.
    pub async fn report(&self, entry: &Entry) -> Outcome {
        self.send(entry, sign_time(entry.measured_at, now()), &entry.report)
            .await
    }

    /// Sends `report` for the queued `entry` (see [`signing`]), signed with timestamp `at`
    /// and the entry's nonce.
    pub async fn send(&self, entry: &Entry, at: i64, report: &Report) -> Outcome {
        let Some(nonce) = entry.nonce_bytes() else {
            return Outcome::Refused {
                status: 0,
                code: ErrorCode::Malformed,
                message: format!("queued nonce {:?} is not 32 hex digits", entry.nonce),
            };
        };
        let env = Envelope::seal(&self.key, &Payload::Report(report.clone()), at, nonce);
        self.post(paths::REPORTS, env).await
    }

    /// Asks the node's mailbox for what changed after revision `after`, letting the registry
    /// hold the request up to `wait_secs` when nothing did (long poll).
    pub async fn poll(&self, after: i64, wait_secs: u32) -> Result<MailboxPage, Outcome> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let p = Payload::PollMailbox {
            after: after.max(0) as u64,
            wait_secs,
        };
        let env = Envelope::seal(&self.key, &p, now(), nonce);
        // The registry answers after the wait; the usual timeout counts from there.
        let timeout = Duration::from_secs(wait_secs.into()) + self.timeout;
        let (status, body) = self
            .exchange(paths::MAILBOX_POLL, env, timeout, MAX_MAILBOX_BYTES)
            .await?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| {
                Outcome::Unavailable(format!("mailbox answer is not a mailbox page: {e}"))
            });
        }
        Err(classify(status, &String::from_utf8_lossy(&body)))
    }

    /// Delivers a deployment status, sealed to the twin `twin_key`.
    pub async fn post_status(&self, twin_key: &str, status: &DeploymentStatus) -> Outcome {
        let sealed = gridtypes::parse_public_key(twin_key)
            .map_err(|e| e.to_string())
            .and_then(|k| mailbox::seal_status(&k, status).map_err(|e| e.to_string()));
        self.post_sealed(
            paths::MAILBOX_STATUS,
            twin_key,
            sealed,
            (status.contract_id, status.version),
            Payload::DeploymentStatus,
        )
        .await
    }

    /// Delivers the answer to a log request, sealed to the twin `twin_key`.
    pub async fn post_logs(&self, twin_key: &str, answer: &LogAnswer) -> Outcome {
        let sealed = gridtypes::parse_public_key(twin_key)
            .map_err(|e| e.to_string())
            .and_then(|k| mailbox::seal_log_answer(&k, answer).map_err(|e| e.to_string()));
        self.post_sealed(
            paths::MAILBOX_LOGS,
            twin_key,
            sealed,
            (answer.contract_id, answer.request),
            Payload::Logs,
        )
        .await
    }

    /// Signs and posts a box sealed to the twin `twin_key` about `(contract, version)`.
    async fn post_sealed(
        &self,
        path: &str,
        twin_key: &str,
        sealed: Result<Vec<u8>, String>,
        (contract_id, version): (u64, u64),
        kind: fn(Sealed) -> Payload,
    ) -> Outcome {
        let sealed = match sealed {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Refused {
                    status: 0,
                    code: ErrorCode::Malformed,
                    message: format!("cannot seal to twin {twin_key}: {e}"),
                }
            }
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let p = kind(Sealed {
            contract_id,
            version,
            sealed,
        });
        let env = Envelope::seal(&self.key, &p, now(), nonce);
        self.post(path, env).await
    }

    async fn post(&self, path: &str, env: Envelope) -> Outcome {
        match self
            .exchange(path, env, self.timeout, MAX_ANSWER_BYTES)
            .await
        {
            Ok((status, body)) => classify(status, &String::from_utf8_lossy(&body)),
            Err(o) => o,
        }
    }

    /// Sends `env` and reads at most `max` bytes of the answer; transport failures, `429` and
    /// oversized answers come back as the [`Outcome`] they mean.
    async fn exchange(
        &self,
        path: &str,
        env: Envelope,
        timeout: Duration,
        max: usize,
    ) -> Result<(u16, Vec<u8>), Outcome> {
        let url = format!("{}{path}", self.base);
        let resp = match self
            .http
            .post(&url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .body(env.to_json())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Err(Outcome::Unavailable(format!(
                    "{url}: {}",
                    svclog::error_chain(&e)
                )))
            }
        };
        let status = resp.status().as_u16();
        if status == 429 {
            let header = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            return Err(Outcome::Throttled {
                retry_after: parse_retry_after(header),
            });
        }
        let mut resp = resp;
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= max => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Err(Outcome::Unavailable(format!(
                        "{url}: answer larger than {max} bytes: not a registry"
                    )))
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Outcome::Unavailable(format!(
                        "{url}: reading the answer: {e}"
                    )))
                }
            }
        }
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify(201, r#"{"id":7,"created":true}"#),
            Outcome::Accepted(7)
        );
        assert_eq!(
            classify(409, r#"{"error":{"code":"replay","message":"x"}}"#),
            Outcome::Replay
        );
        assert!(matches!(
            classify(
                422,
                r#"{"error":{"code":"unknown_farm","message":"farm 9"}}"#
            ),
            Outcome::Refused {
                status: 422,
                code: ErrorCode::UnknownFarm,
                ..
            }
        ));
        // A 409 that is not a replay (e.g. conflict) is a refusal.
        assert!(matches!(
            classify(409, r#"{"error":{"code":"conflict","message":""}}"#),
            Outcome::Refused { .. }
        ));
        assert!(matches!(classify(503, "busy"), Outcome::Unavailable(_)));
        assert!(matches!(classify(500, ""), Outcome::Unavailable(_)));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after(Some("7")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some(" 0 ")), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(Some("99999999")),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }

    const BOOT: i64 = 1_700_000_000;
    const EVERY: i64 = 2_400;

    /// A reading of the boot that started at `boot`, taken at `at`.
    fn reading(boot: i64, at: i64, stopping: bool) -> Entry {
        Entry::new(
            Report::Uptime {
                uptime_secs: (at - boot) as u64,
                stopping,
                warnings: Vec::new(),
            },
            at,
        )
    }

    /// (signed timestamp, uptime) of an uptime report that goes out.
    fn sample(s: &Signing) -> (i64, u64) {
        match s {
            Signing::Sign {
                at,
                report: Report::Uptime { uptime_secs, .. },
            } => (*at, *uptime_secs),
            other => panic!("not an uptime report to sign: {other:?}"),
        }
    }

    /// What the registry's minting would say about these reports, in signed-time order.
    fn violations(samples: &[(i64, u64)]) -> Vec<((i64, u64), (i64, u64))> {
        samples
            .windows(2)
            .filter(|w| uptime_violation(w[0], w[1]))
            .map(|w| (w[0], w[1]))
            .collect()
    }

    #[test]
    fn the_registry_rule_between_two_uptime_reports() {
        // As crates/accounting reads them (DESIGN.md, "Minting").
        assert!(!uptime_violation((1000, 500), (1100, 600)));
        assert!(!uptime_violation((1000, 500), (1100, 659)));
        assert!(uptime_violation((1000, 500), (1100, 661)));
        // Less uptime than time passed, or less than before: a reboot.
        assert!(!uptime_violation((1000, 500), (1100, 80)));
        assert!(!uptime_violation((1000, 5000), (1001, 4000)));
        // The burst: readings a report interval apart, signed a second apart.
        assert!(uptime_violation((1000, 5000), (1001, 5000 + EVERY as u64)));
    }

    #[test]
    fn a_reading_of_the_running_boot_is_restated_for_its_signing_time() {
        let on_time = reading(BOOT, BOOT + 5000, false);
        assert_eq!(
            signing(&on_time, BOOT + 5010, Some(BOOT), None),
            Signing::Sign {
                at: BOOT + 5000,
                report: on_time.report.clone()
            }
        );
        // Two hours late: signed 240 s ago, the uptime it had then.
        let now = BOOT + 5000 + 7200;
        assert_eq!(
            sample(&signing(&on_time, now, Some(BOOT), None)),
            (
                now - RESIGN_WINDOW_SECS,
                (now - RESIGN_WINDOW_SECS - BOOT) as u64
            )
        );
        // The boot time read again a little off is the same boot.
        assert_eq!(
            sample(&signing(&on_time, now, Some(BOOT + 40), None)),
            (
                now - RESIGN_WINDOW_SECS,
                (now - RESIGN_WINDOW_SECS - BOOT) as u64
            )
        );
        // A last report before the agent (not the node) stopped: the node was up all along.
        let stop = reading(BOOT, BOOT + 5000, true);
        match signing(&stop, now, Some(BOOT), None) {
            Signing::Sign {
                report: Report::Uptime { stopping, .. },
                ..
            } => assert!(stopping),
            other => panic!("{other:?}"),
        }
        // Unknown running boot (no /proc/uptime): as queued.
        assert_eq!(
            signing(&on_time, now, None, None),
            Signing::Sign {
                at: now - RESIGN_WINDOW_SECS,
                report: on_time.report.clone()
            }
        );
        // Other reports are never touched.
        let capacity = Entry::new(
            Report::Capacity {
                capacity: gridtypes::Resources::default(),
                warnings: Vec::new(),
            },
            BOOT + 10,
        );
        assert_eq!(
            signing(&capacity, now, Some(BOOT + 9000), None),
            Signing::Sign {
                at: now - RESIGN_WINDOW_SECS,
                report: capacity.report.clone()
            }
        );
    }

    #[test]
    fn a_reading_of_an_earlier_boot_goes_as_it_is_or_not_at_all() {
        let old = reading(BOOT, BOOT + 10_000, true);
        // Rebooted 30 s later, the registry came back at once: the reading's own time.
        let boot = BOOT + 10_030;
        assert_eq!(
            signing(&old, boot + 60, Some(boot), None),
            Signing::Sign {
                at: old.measured_at,
                report: old.report.clone()
            }
        );
        // Later: signed 240 s ago, unchanged, as long as "up 10,000 s then" implies a boot no
        // later than the running one, i.e. until this boot is 240 s longer than that one was.
        let now = boot + 10_000 + RESIGN_WINDOW_SECS;
        assert_eq!(
            sample(&signing(&old, now, Some(boot), None)),
            (now - RESIGN_WINDOW_SECS, 10_000)
        );
        assert_eq!(signing(&old, now + 1, Some(boot), None), Signing::Outdated);
    }

    #[test]
    fn a_second_late_reading_of_an_earlier_boot_is_dropped_not_a_violation() {
        // The agent (not the node) stopped, ran again for an hour, then the node rebooted;
        // the registry was away throughout and comes back soon after the reboot.
        let stop = reading(BOOT, BOOT + 10_000, true);
        let after = reading(BOOT, BOOT + 13_600, false);
        let boot = BOOT + 13_700;
        let now = boot + 200;
        let first = sample(&signing(&stop, now, Some(boot), None));
        assert_eq!(first, (now - RESIGN_WINDOW_SECS, 10_000));
        assert!(uptime_violation(first, (now - RESIGN_WINDOW_SECS, 13_600)));
        assert_eq!(
            signing(&after, now, Some(boot), Some(first)),
            Signing::Outdated
        );
        // Without the first, it goes.
        assert_eq!(
            sample(&signing(&after, now, Some(boot), None)),
            (now - RESIGN_WINDOW_SECS, 13_600)
        );
    }

    #[test]
    fn a_reading_of_the_running_boot_is_never_held_back() {
        // Whatever the registry took last (here: the clock was stepped back since), the
        // running boot's reading goes: holding it back would hold back every later one too.
        let e = reading(BOOT, BOOT + 5000, false);
        let last = Some((BOOT + 5000, 5000 + 600));
        assert!(matches!(
            signing(&e, BOOT + 5000, Some(BOOT), last),
            Signing::Sign { .. }
        ));
    }

    /// A node that reports every 40 minutes loses the registry for `outage` seconds; the
    /// agent keeps only the newest reading per boot (`Queue::supersede_uptime`). Whenever the
    /// registry comes back, what it then holds must never be a violation.
    #[test]
    fn no_outage_makes_an_honest_node_violate() {
        let mut plain_violations = 0;
        for outage in (0..4 * EVERY).step_by(97) {
            let down = BOOT + 3 * EVERY;
            let back = down + outage;
            let mut registry = vec![(down, (down - BOOT) as u64)];
            // The newest reading taken while the registry was away, if any.
            let last_tick = down + (outage / EVERY) * EVERY;
            let mut queued = Vec::new();
            if last_tick > down {
                queued.push(reading(BOOT, last_tick, false));
            }
            let mut plain = registry.clone();
            for e in &queued {
                registry.push(sample(&signing(
                    e,
                    back,
                    Some(BOOT),
                    registry.last().copied(),
                )));
                let Report::Uptime { uptime_secs, .. } = e.report else {
                    unreachable!()
                };
                plain.push((sign_time(e.measured_at, back), uptime_secs));
            }
            // The next tick, on time, and one more.
            for k in 1..=2 {
                let tick = last_tick + k * EVERY;
                let e = reading(BOOT, tick, false);
                registry.push(sample(&signing(
                    &e,
                    tick,
                    Some(BOOT),
                    registry.last().copied(),
                )));
                plain.push((tick, (tick - BOOT) as u64));
            }
            assert_eq!(violations(&registry), vec![], "outage {outage}");
            plain_violations += violations(&plain).len();
        }
        // Signed late with the uptime measured earlier, the old way violated.
        assert!(plain_violations > 0);
    }

    /// The node rebooted while the registry was away: the old boot's last reading, then
    /// the new boot's, go out together whenever the registry comes back.
    #[test]
    fn a_reboot_during_an_outage_never_violates() {
        for old_uptime in [100, 5_000, 50_000] {
            let old_boot = BOOT;
            let stop_at = old_boot + old_uptime;
            let new_boot = stop_at + 90;
            for since_boot in (1..20_000).step_by(131) {
                let back = new_boot + since_boot;
                let mut registry = vec![(old_boot + 50, 50u64)];
                // The agent reads uptime 5 s after boot, then every 40 minutes.
                let newest = new_boot + 5 + (since_boot - 5).max(0) / EVERY * EVERY;
                let queued = [
                    reading(old_boot, stop_at, true),
                    reading(new_boot, newest.min(back), false),
                ];
                for e in &queued {
                    match signing(e, back, Some(new_boot), registry.last().copied()) {
                        Signing::Outdated => {
                            assert!(
                                since_boot > old_uptime + RESIGN_WINDOW_SECS,
                                "{old_uptime} {since_boot}"
                            );
                            assert_ne!(e.boot_time(), Some(new_boot));
                        }
                        s => registry.push(sample(&s)),
                    }
                }
                let tick = back + EVERY;
                registry.push((tick, (tick - new_boot) as u64));
                assert_eq!(
                    violations(&registry),
                    vec![],
                    "old boot up {old_uptime} s, registry back {since_boot} s after the reboot"
                );
            }
        }
    }

    #[test]
    fn queued_reports_keep_their_time_while_the_registry_accepts_it() {
        assert_eq!(sign_time(1000, 1010), 1000);
        assert_eq!(sign_time(1000, 1000 + RESIGN_WINDOW_SECS), 1000);
        assert_eq!(sign_time(1000, 5000), 5000 - RESIGN_WINDOW_SECS);
        // A measurement "from the future" (clock stepped back) is signed now.
        assert_eq!(sign_time(2000, 1000), 1000);
    }
}
