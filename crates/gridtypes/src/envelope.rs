//! The signed envelope every node and twin message travels in.
//!
//! The signature covers a fixed domain tag, the signer key, the timestamp, the nonce and the
//! exact payload bytes, so the payload is verified as sent (no canonical-JSON games) and the
//! replay-protection fields cannot be swapped without breaking the signature.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::payload::{Payload, PayloadError};

/// How far (seconds) a sender's clock may be from the receiver's before a message is refused.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Length in bytes of an envelope nonce.
pub const NONCE_LEN: usize = 16;

/// Domain separation: a signature made for gridos envelopes is useless anywhere else.
const DOMAIN: &[u8] = b"gridos-envelope-v1\0";

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The envelope itself is not valid JSON of the expected shape.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The signer field is not a valid ed25519 public key.
    #[error("signer is not an ed25519 public key: {0}")]
    BadSigner(String),
    /// The signature does not verify for this signer and these bytes.
    #[error("signature does not verify for signer {0}")]
    BadSignature(String),
    /// The timestamp is too far from the receiver's clock.
    #[error("timestamp {timestamp} is {skew} s from the registry clock {now} (allowed ±{MAX_CLOCK_SKEW_SECS} s)")]
    StaleTimestamp {
        /// The envelope's timestamp.
        timestamp: i64,
        /// The receiver's clock.
        now: i64,
        /// `timestamp - now`.
        skew: i64,
    },
    /// The payload bytes are not a valid payload.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// A payload with the signer's key, time and nonce, and an ed25519 signature over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Signer's ed25519 public key, lowercase hex.
    pub signer: String,
    /// Seconds since the Unix epoch when the signer sealed it.
    pub timestamp: i64,
    /// Random nonce, hex; a registry accepts each (signer, nonce) once.
    pub nonce: String,
    /// The exact payload bytes, base64.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// ed25519 signature, hex.
    pub signature: String,
}

/// An envelope whose signature verified, with its decoded payload.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key that signed it.
    pub signer: VerifyingKey,
    /// The signer key as lowercase hex (the phonebook's key).
    pub signer_hex: String,
    /// The decoded payload.
    pub payload: Payload,
    /// The sender's timestamp.
    pub timestamp: i64,
    /// The sender's nonce (hex).
    pub nonce: String,
}

impl Envelope {
    /// Signs `payload` as `key` at `timestamp` with `nonce`.
    pub fn seal(
        key: &SigningKey,
        payload: &Payload,
        timestamp: i64,
        nonce: [u8; NONCE_LEN],
    ) -> Envelope {
        Self::seal_bytes(key, payload.to_bytes(), timestamp, nonce)
    }

    /// Signs raw payload bytes; used by [`Envelope::seal`] and by tests that need hostile payloads.
    pub fn seal_bytes(
        key: &SigningKey,
        payload: Vec<u8>,
        timestamp: i64,
        nonce: [u8; NONCE_LEN],
    ) -> Envelope {
        let signer = key.verifying_key();
        let msg = signed_message(signer.as_bytes(), timestamp, &nonce, &payload);
        let signature = key.sign(&msg);
        Envelope {
            signer: hex::encode(signer.as_bytes()),
            timestamp,
            nonce: hex::encode(nonce),
            payload,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Parses an envelope from JSON, refusing unknown fields.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Serialises the envelope as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, integers and a byte vector cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the signature only (no clock): what an auditor does with a stored report.
    pub fn verify_signature(&self) -> Result<VerifyingKey, EnvelopeError> {
        let signer_bytes: [u8; 32] = decode_fixed(&self.signer).ok_or_else(|| {
            EnvelopeError::BadSigner(format!("{:?} is not 64 hex digits", self.signer))
        })?;
        let signer = VerifyingKey::from_bytes(&signer_bytes).map_err(|_| {
            EnvelopeError::BadSigner(format!("{} is not a curve point", self.signer))
        })?;
        let nonce: [u8; NONCE_LEN] = decode_fixed(&self.nonce).ok_or_else(|| {
            EnvelopeError::Malformed(format!("nonce must be {} hex digits", NONCE_LEN * 2))
        })?;
        let sig_bytes: [u8; 64] = decode_fixed(&self.signature)
            .ok_or_else(|| EnvelopeError::Malformed("signature must be 128 hex digits".into()))?;
        let signature = Signature::from_bytes(&sig_bytes);
        let msg = signed_message(signer.as_bytes(), self.timestamp, &nonce, &self.payload);
        signer
            .verify_strict(&msg, &signature)
            .map_err(|_| EnvelopeError::BadSignature(self.signer.clone()))?;
        Ok(signer)
    }

    /// Verifies the signature, the timestamp against `now` and decodes the payload.
    pub fn open(&self, now: i64) -> Result<Verified, EnvelopeError> {
        let signer = self.verify_signature()?;
        let skew = self.timestamp.saturating_sub(now);
        if skew.abs() > MAX_CLOCK_SKEW_SECS {
            return Err(EnvelopeError::StaleTimestamp {
                timestamp: self.timestamp,
                now,
                skew,
            });
        }
        let payload = Payload::from_bytes(&self.payload)?;
        Ok(Verified {
            signer,
            signer_hex: self.signer.clone(),
            payload,
            timestamp: self.timestamp,
            nonce: self.nonce.clone(),
        })
    }
}

/// The exact bytes an envelope signature covers.
pub fn signed_message(signer: &[u8; 32], timestamp: i64, nonce: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(DOMAIN.len() + 32 + 8 + nonce.len() + payload.len());
    msg.extend_from_slice(DOMAIN);
    msg.extend_from_slice(signer);
    msg.extend_from_slice(&timestamp.to_be_bytes());
    msg.extend_from_slice(nonce);
    msg.extend_from_slice(payload);
    msg
}

/// Decodes lowercase or uppercase hex into exactly `N` bytes.
fn decode_fixed<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parses a public key given as hex (the phonebook's format).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, EnvelopeError> {
    let bytes: [u8; 32] = decode_fixed(s)
        .ok_or_else(|| EnvelopeError::BadSigner(format!("{s:?} is not 64 hex digits")))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| EnvelopeError::BadSigner(format!("{s} is not a curve point")))
}

mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("payload is not base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Report;
    use rand::rngs::OsRng;

    fn key() -> SigningKey {
        SigningKey::generate(&mut OsRng)
    }

    fn uptime(secs: u64) -> Payload {
        Payload::Report(Report::uptime(secs))
    }

    #[test]
    fn seal_then_open_round_trips() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(42), 1000, [7; NONCE_LEN]);
        let json = env.to_json();
        let back = Envelope::from_json(&json).unwrap();
        let v = back.open(1000).unwrap();
        assert_eq!(v.payload, uptime(42));
        assert_eq!(v.signer, k.verifying_key());
        assert_eq!(v.nonce, hex::encode([7u8; NONCE_LEN]));
    }

    #[test]
    fn tampered_payload_fails() {
        let k = key();
        let mut env = Envelope::seal(&k, &uptime(42), 1000, [1; NONCE_LEN]);
        env.payload = uptime(43).to_bytes();
        assert!(matches!(
            env.open(1000),
            Err(EnvelopeError::BadSignature(_))
        ));
    }

    #[test]
    fn swapped_nonce_or_timestamp_fails() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        let mut a = env.clone();
        a.nonce = hex::encode([2u8; NONCE_LEN]);
        assert!(matches!(a.open(1000), Err(EnvelopeError::BadSignature(_))));
        let mut b = env;
        b.timestamp = 1001;
        assert!(matches!(b.open(1000), Err(EnvelopeError::BadSignature(_))));
    }

    #[test]
    fn other_signer_fails() {
        let env = Envelope::seal(&key(), &uptime(1), 1000, [1; NONCE_LEN]);
        let mut forged = env.clone();
        forged.signer = hex::encode(key().verifying_key().as_bytes());
        assert!(matches!(
            forged.open(1000),
            Err(EnvelopeError::BadSignature(_))
        ));
    }

    #[test]
    fn timestamp_window_is_inclusive_at_five_minutes() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        assert!(env.open(1000 + MAX_CLOCK_SKEW_SECS).is_ok());
        assert!(env.open(1000 - MAX_CLOCK_SKEW_SECS).is_ok());
        assert!(matches!(
            env.open(1000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(EnvelopeError::StaleTimestamp { .. })
        ));
        assert!(matches!(
            env.open(1000 - MAX_CLOCK_SKEW_SECS - 1),
            Err(EnvelopeError::StaleTimestamp { .. })
        ));
    }

    #[test]
    fn malformed_fields_are_named() {
        let k = key();
        let mut env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        env.signer = "zz".into();
        assert!(matches!(env.open(1000), Err(EnvelopeError::BadSigner(_))));
        let mut env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        env.nonce = "00".into();
        assert!(matches!(env.open(1000), Err(EnvelopeError::Malformed(_))));
        let mut env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        env.signature = "00".into();
        assert!(matches!(env.open(1000), Err(EnvelopeError::Malformed(_))));
    }

    #[test]
    fn unknown_envelope_fields_are_refused() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        let mut v: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        v["extra"] = serde_json::json!(1);
        let err = Envelope::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Malformed(ref m) if m.contains("extra")),
            "{err}"
        );
    }

    #[test]
    fn hostile_input_never_panics() {
        for junk in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"signer\":1}",
            b"{\"signer\":\"\",\"timestamp\":0,\"nonce\":\"\",\"payload\":\"!!\",\"signature\":\"\"}",
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(Envelope::from_json(junk).is_err());
        }
    }

    #[test]
    fn signed_but_garbage_payload_is_a_payload_error() {
        let k = key();
        let env = Envelope::seal_bytes(&k, b"not json".to_vec(), 1000, [1; NONCE_LEN]);
        assert!(matches!(env.open(1000), Err(EnvelopeError::Payload(_))));
    }
}
