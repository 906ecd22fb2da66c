//! A small client for the registry's JSON API that turns its errors into readable messages.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use gridapi::{ErrorBody, ErrorCode, Written};
use gridtypes::{Envelope, Payload, NONCE_LEN};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest answer read from a registry. The registry's own pages stop at about 1 MiB; a
/// registry (or something posing as one) that sends more is cut off, not buffered.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry could not be reached at all.
    #[error("cannot reach the registry at {url} (is `grid-registry serve` running there? set --registry)")]
    Unreachable {
        /// URL tried.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The registry answered with an error.
    #[error("registry refused ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The registry's error code.
        code: ErrorCode,
        /// The registry's message.
        message: String,
    },
    /// The answer was larger than [`MAX_RESPONSE_BYTES`].
    #[error("registry at {url} answered with more than {MAX_RESPONSE_BYTES} bytes: not read")]
    TooLarge {
        /// URL asked.
        url: String,
    },
    /// The answer was not JSON of the shape this client expects.
    #[error(
        "registry at {url} answered {status} with something that is not the expected JSON: {body}"
    )]
    NotJson {
        /// URL asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
}

/// A registry client.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the registry at `base` (e.g. `http://127.0.0.1:8480`).
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(gridapi::CLIENT_POOL_IDLE)
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        url: String,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let mut r = r.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = r.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        let not_json = || ClientError::NotJson {
            url: url.clone(),
            status,
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        };
        if status >= 400 {
            let e: ErrorBody = serde_json::from_slice(&body).map_err(|_| not_json())?;
            return Err(ClientError::Refused {
                status,
                code: e.error.code,
                message: e.error.message,
            });
        }
        serde_json::from_slice(&body).map_err(|_| not_json())
    }

    /// GETs `path` and reads the answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.http.get(&url).send().await;
        self.finish(url, r).await
    }

    /// GETs `path` with `query` (a filter of `gridapi`) and reads the answer as `T`.
    pub async fn get_query<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.http.get(&url).query(query).send().await;
        self.finish(url, r).await
    }

    /// Signs `payload` with `key` and POSTs it to `path`.
    pub async fn post_signed(
        &self,
        path: &str,
        key: &SigningKey,
        payload: &Payload,
    ) -> Result<Written, ClientError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let env = Envelope::seal(key, payload, gridtypes::now(), nonce);
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(env.to_json())
            .send()
            .await;
        self.finish(url, r).await
    }
}
