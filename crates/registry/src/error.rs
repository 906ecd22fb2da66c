//! Errors the registry answers with: a stable code, an HTTP status and a message that names the input.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridapi::{ErrorBody, ErrorCode, ErrorDetail};
use gridtypes::{EnvelopeError, PayloadError};

/// Everything that can go wrong handling a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON of the expected shape (includes unknown fields).
    #[error("{0}")]
    Malformed(String),
    /// The body is larger than the configured limit.
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The signed payload is larger than its kind allows.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A write without `Content-Type: application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The key already has the other role (a key is a twin or a node, never both).
    #[error("{0}")]
    RoleConflict(String),
    /// Too many requests from this address or this key: come back after `retry_after` s.
    #[error("{what}: retry after {retry_after} s")]
    RateLimited {
        /// Which limit was hit.
        what: String,
        /// Seconds until the next request can succeed (the `Retry-After` header).
        retry_after: u64,
    },
    /// The writer's queue holds as many bytes as it may: come back in a second.
    #[error("the registry's write queue is full: retry after 1 s")]
    Busy,
    /// The request took longer than the request timeout (e.g. a body that never finishes).
    #[error("request not completed within {0} s")]
    Timeout(u64),
    /// The signature does not verify, or the signer is not a valid key.
    #[error("{0}")]
    BadSignature(String),
    /// The signer is not in the phonebook in the role this request needs.
    #[error("{0}")]
    UnknownSigner(String),
    /// The timestamp is outside the accepted window.
    #[error("{0}")]
    StaleTimestamp(String),
    /// The (signer, nonce) pair was already accepted.
    #[error("nonce {nonce} was already used by {signer}: replayed request refused")]
    Replay {
        /// Signer key.
        signer: String,
        /// The replayed nonce.
        nonce: String,
    },
    /// The payload names a farm that does not exist.
    #[error("farm {0} does not exist")]
    UnknownFarm(i64),
    /// The payload names a node that does not exist.
    #[error("node {0} does not exist")]
    UnknownNode(i64),
    /// The node cannot hold what a contract asks for.
    #[error("{0}")]
    InsufficientCapacity(String),
    /// The signer may not act on what it names.
    #[error("{0}")]
    Forbidden(String),
    /// A signed payload of another kind was sent to this endpoint.
    #[error("this endpoint accepts {expected} payloads, got {got}")]
    WrongKind {
        /// What the endpoint takes.
        expected: &'static str,
        /// What was sent.
        got: &'static str,
    },
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    /// A version not newer than the one stored.
    #[error("{0}")]
    StaleVersion(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The registry is shutting down or its writer stopped.
    #[error("registry is unavailable: {0}")]
    Unavailable(String),
    /// Boot media could not be built.
    #[error("{0}")]
    BuildFailed(String),
}

impl ApiError {
    /// Seconds a client should wait before trying again, for the `Retry-After` header.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::Busy | ApiError::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Malformed(_) => ErrorCode::Malformed,
            ApiError::TooLarge { .. } | ApiError::PayloadTooLarge(_) => ErrorCode::TooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::RoleConflict(_) => ErrorCode::RoleConflict,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Busy => ErrorCode::Busy,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::BadSignature(_) => ErrorCode::BadSignature,
            ApiError::UnknownSigner(_) => ErrorCode::UnknownSigner,
            ApiError::StaleTimestamp(_) => ErrorCode::StaleTimestamp,
            ApiError::Replay { .. } => ErrorCode::Replay,
            ApiError::UnknownFarm(_) => ErrorCode::UnknownFarm,
            ApiError::UnknownNode(_) => ErrorCode::UnknownNode,
            ApiError::InsufficientCapacity(_) => ErrorCode::InsufficientCapacity,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::WrongKind { .. } => ErrorCode::WrongKind,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::StaleVersion(_) => ErrorCode::StaleVersion,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Database(_) => ErrorCode::Database,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::BuildFailed(_) => ErrorCode::BuildFailed,
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) | ApiError::WrongKind { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } | ApiError::PayloadTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RoleConflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadSignature(_)
            | ApiError::UnknownSigner(_)
            | ApiError::StaleTimestamp(_) => StatusCode::UNAUTHORIZED,
            ApiError::Replay { .. } | ApiError::Conflict(_) | ApiError::StaleVersion(_) => {
                StatusCode::CONFLICT
            }
            ApiError::UnknownFarm(_) | ApiError::UnknownNode(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InsufficientCapacity(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BuildFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Payload(PayloadError::TooLarge { .. }) => {
                ApiError::PayloadTooLarge(e.to_string())
            }
            EnvelopeError::Malformed(_) | EnvelopeError::Payload(_) => {
                ApiError::Malformed(e.to_string())
            }
            EnvelopeError::BadSigner(_) | EnvelopeError::BadSignature(_) => {
                ApiError::BadSignature(e.to_string())
            }
            EnvelopeError::StaleTimestamp { .. } => ApiError::StaleTimestamp(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self {
            tracing::error!(error = e as &dyn std::error::Error, "database error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let code = self.code();
        let mut response = (self.status(), Json(body)).into_response();
        // For the rejection counter of /metrics (metrics::count_rejections).
        response.extensions_mut().insert(code);
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
