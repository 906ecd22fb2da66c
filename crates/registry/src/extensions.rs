//! System extensions for nodes (the VM runtime), served from the folder the operator names
//! with `--extensions DIR`, as `gridos-imager extension` writes it: `NAME.sqfs` and its signed
//! manifest `NAME.json`. The registry is a relay: it does not hold the release key, and a
//! node verifies the manifest and the image against the key baked into its own image.
//!
//! - `GET /api/v1/extensions/{name}`: the signed manifest.
//! - `GET /api/v1/extensions/{name}/image`: the squashfs image.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gridtypes::extension::{name_ok, SignedManifest, MAX_SIGNED_BYTES};

use crate::api::AppState;
use crate::error::ApiError;

type S = State<Arc<AppState>>;

fn folder(s: &AppState) -> Result<&PathBuf, ApiError> {
    s.config.extensions.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "this registry serves no extensions: its operator starts it with --extensions DIR"
                .into(),
        )
    })
}

fn checked(name: &str) -> Result<(), ApiError> {
    if name_ok(name) {
        Ok(())
    } else {
        Err(ApiError::Malformed(format!(
            "extension name {name:?}: 1 to 32 of a-z, 0-9 and '-'"
        )))
    }
}

/// `GET /api/v1/extensions/{name}`.
pub async fn get_manifest(
    State(s): S,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    checked(&name)?;
    let path = folder(&s)?.join(format!("{name}.json"));
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!(
                "no extension {name:?} on this registry"
            )))
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "extension manifest unreadable");
            return Err(ApiError::BuildFailed(format!(
                "the manifest of {name:?} cannot be read on the registry"
            )));
        }
    };
    // Only what a node could parse is served: a broken release folder is the operator's
    // error to see, not every node's.
    if bytes.len() > MAX_SIGNED_BYTES || SignedManifest::from_json(&bytes).is_err() {
        tracing::error!(path = %path.display(), "extension manifest is not a signed manifest");
        return Err(ApiError::BuildFailed(format!(
            "the manifest of {name:?} on this registry is malformed"
        )));
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// `GET /api/v1/extensions/{name}/image`.
pub async fn get_image(State(s): S, UrlPath(name): UrlPath<String>) -> Result<Response, ApiError> {
    checked(&name)?;
    let path = folder(&s)?.join(format!("{name}.sqfs"));
    if !path.is_file() {
        return Err(ApiError::NotFound(format!(
            "no extension {name:?} on this registry"
        )));
    }
    crate::boot::file(&path, &format!("{name}.sqfs")).await
}
