//! System extensions: read-only squashfs images of programs too big for the base image (the
//! VM runtime: QEMU and its libraries), built and signed with the release key by the imager,
//! served by the registry, verified and mounted by the node on first need.
//!
//! What is signed is a [`Manifest`] naming the image's SHA-256 and size, in its exact bytes
//! (no canonical JSON), prefixed with [`SIGNING_CONTEXT`] so an extension signature can never
//! pass for a signature on anything else. The registry is only a relay: a node trusts what
//! the release key signed, not where it came from.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::envelope::{b64, decode_fixed};

/// Prepended to the manifest bytes before signing.
pub const SIGNING_CONTEXT: &[u8] = b"gridos-extension-v1\n";
/// The largest image a node accepts.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// The largest signed manifest a node reads.
pub const MAX_SIGNED_BYTES: usize = 16 * 1024;

/// Why an extension is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// Not valid JSON of the expected shape.
    #[error("malformed extension manifest: {0}")]
    Malformed(String),
    /// Signed by another key than the release key this node trusts.
    #[error("extension signed by {signer}, not by the release key {release}")]
    WrongSigner {
        /// The key it names.
        signer: String,
        /// The key the node trusts.
        release: String,
    },
    /// The signature does not match the manifest bytes.
    #[error("bad signature on the extension manifest")]
    BadSignature,
    /// A field is out of range.
    #[error("invalid extension manifest: {0}")]
    Invalid(String),
    /// The image is not the one the manifest names.
    #[error("extension image {name}: {reason}")]
    ImageMismatch {
        /// The extension.
        name: String,
        /// What differs.
        reason: String,
    },
}

/// What the release key vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The extension's name, also where it is mounted: `[a-z0-9-]`, 1 to 32.
    pub name: String,
    /// Free text for people (`qemu 7.2+dfsg-7+deb12u18`), up to 128 printable characters.
    pub version: String,
    /// The squashfs image's SHA-256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was built, seconds since the Unix epoch.
    pub created: i64,
}

/// A name the node may use as a file and folder name.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Manifest {
    /// Checks every field's range and spelling.
    pub fn check(&self) -> Result<(), ExtensionError> {
        let bad = |m: String| Err(ExtensionError::Invalid(m));
        if !name_ok(&self.name) {
            return bad(format!("name {:?}", self.name));
        }
        if self.version.len() > 128 || self.version.chars().any(char::is_control) {
            return bad("version: up to 128 printable characters".into());
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad(format!("sha256 {:?}: 64 lowercase hex digits", self.sha256));
        }
        if self.size == 0 || self.size > MAX_IMAGE_BYTES {
            return bad(format!(
                "size {}: from 1 byte to {MAX_IMAGE_BYTES}",
                self.size
            ));
        }
        Ok(())
    }

    /// Checks an image's digest (lowercase hex) and size against this manifest.
    pub fn check_image(&self, sha256: &str, size: u64) -> Result<(), ExtensionError> {
        let mismatch = |reason: String| {
            Err(ExtensionError::ImageMismatch {
                name: self.name.clone(),
                reason,
            })
        };
        if size != self.size {
            return mismatch(format!("{size} bytes, the manifest says {}", self.size));
        }
        if sha256 != self.sha256 {
            return mismatch(format!(
                "SHA-256 {sha256}, the manifest says {}",
                self.sha256
            ));
        }
        Ok(())
    }
}

/// A manifest as signed: its exact bytes, the signer and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest's JSON bytes, base64.
    #[serde(with = "b64")]
    pub manifest: Vec<u8>,
    /// The signing key, lowercase hex.
    pub signer: String,
    /// ed25519 over [`SIGNING_CONTEXT`] and the manifest bytes, lowercase hex.
    pub signature: String,
}

fn message(manifest: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, manifest].concat()
}

impl SignedManifest {
    /// Signs `m` with `key` (the release key).
    pub fn sign(key: &SigningKey, m: &Manifest) -> Result<SignedManifest, ExtensionError> {
        m.check()?;
        let manifest =
            serde_json::to_vec(m).map_err(|e| ExtensionError::Malformed(e.to_string()))?;
        let signature = key.sign(&message(&manifest));
        Ok(SignedManifest {
            manifest,
            signer: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        })
    }

    /// Parses the JSON a registry serves, at most [`MAX_SIGNED_BYTES`].
    pub fn from_json(bytes: &[u8]) -> Result<SignedManifest, ExtensionError> {
        if bytes.len() > MAX_SIGNED_BYTES {
            return Err(ExtensionError::Malformed(format!(
                "{} bytes, at most {MAX_SIGNED_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| ExtensionError::Malformed(e.to_string()))
    }

    /// Its JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and a byte vector always serialise.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The manifest, if `release` signed exactly these bytes and every field is in range.
    pub fn verify(&self, release: &VerifyingKey) -> Result<Manifest, ExtensionError> {
        let release_hex = hex::encode(release.as_bytes());
        if self.signer != release_hex {
            return Err(ExtensionError::WrongSigner {
                signer: self.signer.clone(),
                release: release_hex,
            });
        }
        let sig: [u8; 64] = decode_fixed(&self.signature).ok_or(ExtensionError::BadSignature)?;
        release
            .verify(&message(&self.manifest), &Signature::from_bytes(&sig))
            .map_err(|_| ExtensionError::BadSignature)?;
        let m: Manifest = serde_json::from_slice(&self.manifest)
            .map_err(|e| ExtensionError::Malformed(e.to_string()))?;
        m.check()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "vm".into(),
            version: "qemu 7.2".into(),
            sha256: "ab".repeat(32),
            size: 1234,
            created: 1_700_000_000,
        }
    }

    #[test]
    fn a_signed_manifest_verifies_with_the_release_key_only() {
        let release = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let s = SignedManifest::sign(&release, &manifest()).unwrap();
        let back = SignedManifest::from_json(&s.to_json()).unwrap();
        assert_eq!(back.verify(&release.verifying_key()).unwrap(), manifest());
        assert!(matches!(
            back.verify(&other.verifying_key()),
            Err(ExtensionError::WrongSigner { .. })
        ));
        // Signed by another key that claims to be the release key.
        let mut forged = SignedManifest::sign(&other, &manifest()).unwrap();
        forged.signer = hex::encode(release.verifying_key().as_bytes());
        assert_eq!(
            forged.verify(&release.verifying_key()),
            Err(ExtensionError::BadSignature)
        );
    }

    #[test]
    fn any_change_to_the_signed_bytes_is_refused() {
        let release = SigningKey::from_bytes(&[1; 32]);
        let s = SignedManifest::sign(&release, &manifest()).unwrap();
        for i in 0..s.manifest.len() {
            let mut t = s.clone();
            t.manifest[i] ^= 0x01;
            assert!(t.verify(&release.verifying_key()).is_err(), "byte {i}");
        }
        let mut upper = s.clone();
        upper.signature = upper.signature.to_uppercase();
        assert!(upper.verify(&release.verifying_key()).is_err());
        // The same manifest signed without the context (as an envelope would be) fails.
        let mut bare = s.clone();
        bare.signature = hex::encode(release.sign(&s.manifest).to_bytes());
        assert_eq!(
            bare.verify(&release.verifying_key()),
            Err(ExtensionError::BadSignature)
        );
    }

    #[test]
    fn out_of_range_fields_are_refused_even_when_signed() {
        let release = SigningKey::from_bytes(&[1; 32]);
        let sign_raw = |m: serde_json::Value| {
            let manifest = serde_json::to_vec(&m).unwrap();
            SignedManifest {
                signature: hex::encode(release.sign(&message(&manifest)).to_bytes()),
                manifest,
                signer: hex::encode(release.verifying_key().as_bytes()),
            }
        };
        let base = serde_json::to_value(manifest()).unwrap();
        for (field, value) in [
            ("name", serde_json::json!("../etc")),
            ("name", serde_json::json!("VM")),
            ("sha256", serde_json::json!("AB".repeat(32))),
            ("size", serde_json::json!(0)),
            ("size", serde_json::json!(MAX_IMAGE_BYTES + 1)),
            ("version", serde_json::json!("a\nb")),
            ("extra", serde_json::json!(1)),
        ] {
            let mut m = base.clone();
            m[field] = value;
            assert!(
                sign_raw(m).verify(&release.verifying_key()).is_err(),
                "{field}"
            );
        }
        assert!(SignedManifest::from_json(&vec![b' '; MAX_SIGNED_BYTES + 1]).is_err());
    }

    #[test]
    fn the_image_must_match_in_size_and_digest() {
        let m = manifest();
        m.check_image(&"ab".repeat(32), 1234).unwrap();
        assert!(m.check_image(&"ab".repeat(32), 1235).is_err());
        assert!(m.check_image(&"cd".repeat(32), 1234).is_err());
    }
}
