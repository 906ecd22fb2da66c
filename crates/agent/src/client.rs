//! The registry client: signs payloads with the node key and sorts the answers into
//! "taken", "already taken", "refused for good" and "try again later".

use std::time::Duration;

use ed25519_dalek::SigningKey;
use gridapi::{paths, ErrorBody, ErrorCode, MailboxPage, Written};
use gridtypes::mailbox::{self, DeploymentStatus, LogAnswer};
use gridtypes::{now, Envelope, NodeRegistration, Payload, Sealed, MAX_CLOCK_SKEW_SECS, NONCE_LEN};
use rand::RngCore;

use crate::queue::Entry;

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

    /// Sends one queued report, signed now with its own nonce.
    pub async fn report(&self, entry: &Entry) -> Outcome {
        let Some(nonce) = entry.nonce_bytes() else {
            return Outcome::Refused {
                status: 0,
                code: ErrorCode::Malformed,
                message: format!("queued nonce {:?} is not 32 hex digits", entry.nonce),
            };
        };
        let ts = sign_time(entry.measured_at, now());
        let env = Envelope::seal(&self.key, &Payload::Report(entry.report.clone()), ts, nonce);
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

    #[test]
    fn queued_reports_keep_their_time_while_the_registry_accepts_it() {
        assert_eq!(sign_time(1000, 1010), 1000);
        assert_eq!(sign_time(1000, 1000 + RESIGN_WINDOW_SECS), 1000);
        assert_eq!(sign_time(1000, 5000), 5000 - RESIGN_WINDOW_SECS);
        // A measurement "from the future" (clock stepped back) is signed now.
        assert_eq!(sign_time(2000, 1000), 1000);
    }
}
