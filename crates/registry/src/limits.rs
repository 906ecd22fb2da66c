//! Rate limits on writes: per client address (a tower layer, before any work is done) and per
//! signing key (after the signature verified, so nobody can spend another key's quota).
//!
//! Both are token buckets from `governor`. Limits hold per registry process: several replicas
//! behind one load balancer each apply them (see docs/registry.md, "Threat model").

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, Response};
use axum::response::IntoResponse;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

use crate::error::ApiError;

/// A token bucket: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests a client may send at once after being quiet.
    pub burst: u32,
    /// Sustained requests per minute.
    pub per_minute: u32,
}

impl Rate {
    /// The interval after which one more request is allowed.
    fn period(self) -> Duration {
        Duration::from_nanos((60_000_000_000 / u64::from(self.per_minute.max(1))).max(1))
    }

    fn quota(self) -> Quota {
        let one = NonZeroU32::MIN;
        Quota::with_period(self.period())
            .unwrap_or_else(|| Quota::per_second(one))
            .allow_burst(NonZeroU32::new(self.burst).unwrap_or(one))
    }
}

/// The write limits the registry enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Signed writes from one client address (all kinds).
    pub per_ip: Rate,
    /// New twins and farms from one client address: the writes anyone can make with a fresh
    /// key, so the ones that could fill the database.
    pub new_identities_per_ip: Rate,
    /// Signed writes by one key (node or twin), counted after its signature verified.
    pub per_key: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            // A farm behind one NAT address: 1,000 nodes rebooting at once register and send
            // their first reports within a few seconds, then one report each per 40 minutes.
            per_ip: Rate {
                burst: 2000,
                per_minute: 6000,
            },
            // A person makes a twin and a farm or two; a script making thousands is an attack.
            new_identities_per_ip: Rate {
                burst: 20,
                per_minute: 30,
            },
            // A node flushing a day of queued reports after an outage (about 40) in one go.
            per_key: Rate {
                burst: 120,
                per_minute: 60,
            },
        }
    }
}

/// Keys requests by the client's address as the accept loop recorded it (never by headers a
/// client can forge, such as `X-Forwarded-For`).
#[derive(Debug, Clone, Copy)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The tower layer that limits POSTs by client address.
pub type IpLayer = GovernorLayer<PeerIp, governor::middleware::NoOpMiddleware, Body>;

/// Builds the per-address layer for `rate`, answering like every other registry error.
pub fn ip_layer(rate: Rate, what: &'static str) -> IpLayer {
    let config = GovernorConfigBuilder::default()
        .key_extractor(PeerIp)
        .period(rate.period())
        .burst_size(rate.burst.max(1))
        .methods(vec![Method::POST])
        .finish();
    // finish() refuses only a zero period or burst, which `Rate` never produces.
    let config = Arc::new(config.unwrap_or_else(|| {
        GovernorConfigBuilder::default()
            .key_extractor(PeerIp)
            .methods(vec![Method::POST])
            .finish()
            .unwrap_or_else(|| unreachable!("default governor config is valid"))
    }));
    forget_idle(Arc::downgrade(config.limiter()));
    GovernorLayer::new(config).error_handler(move |e| ip_error(e, what))
}

fn ip_error(e: GovernorError, what: &'static str) -> Response<Body> {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => ApiError::RateLimited {
            what: format!("too many {what} from this address"),
            retry_after: wait_time.max(1),
        }
        .into_response(),
        GovernorError::UnableToExtractKey => {
            ApiError::Unavailable("client address unknown".into()).into_response()
        }
        GovernorError::Other { msg, .. } => {
            ApiError::Unavailable(msg.unwrap_or_else(|| "rate limiter failed".into()))
                .into_response()
        }
    }
}

/// Every minute, forgets the keys whose buckets are full again (quiet long enough), so the
/// limiter's memory follows the active clients, not every address or key ever seen. The task
/// ends with the server that owns the limiter.
fn forget_idle<K>(limiter: std::sync::Weak<DefaultKeyedRateLimiter<K>>)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(l) = limiter.upgrade() else { return };
            l.retain_recent();
            l.shrink_to_fit();
        }
    });
}

/// Per-key limits, checked by the handlers once a signature verified.
#[derive(Debug)]
pub struct KeyLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<[u8; 32]>>,
}

impl KeyLimiter {
    /// A limiter allowing `rate` per key; forgets idle keys in the background.
    pub fn new(rate: Rate) -> KeyLimiter {
        let limiter = Arc::new(RateLimiter::keyed(rate.quota()));
        forget_idle(Arc::downgrade(&limiter));
        KeyLimiter { limiter }
    }

    /// Takes one request from `key`'s bucket, or says how long to wait.
    pub fn check(&self, key: &[u8; 32]) -> Result<(), ApiError> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                what: "too many writes signed by this key".into(),
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_limit_allows_the_burst_then_says_when() {
        let l = KeyLimiter::new(Rate {
            burst: 3,
            per_minute: 1,
        });
        let (a, b) = ([1u8; 32], [2u8; 32]);
        for _ in 0..3 {
            l.check(&a).unwrap();
        }
        match l.check(&a) {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                assert!((1..=60).contains(&retry_after), "{retry_after}")
            }
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket.
        l.check(&b).unwrap();
    }

    #[test]
    fn periods() {
        let r = Rate {
            burst: 1,
            per_minute: 6000,
        };
        assert_eq!(r.period(), Duration::from_millis(10));
        let r = Rate {
            burst: 1,
            per_minute: 30,
        };
        assert_eq!(r.period(), Duration::from_secs(2));
    }
}
