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
        /// `timestamp - now`, exact (it does not fit 64 bits for extreme timestamps).
        skew: i128,
    },
    /// The payload bytes are not a valid payload.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// A payload with the signer's key, time and nonce, and an ed25519 signature over all of them.
///
/// `signer`, `nonce` and `signature` must be lowercase hex: each byte string has exactly one
/// accepted spelling, so a registry that keys on the text can never see one key or nonce
/// twice under two names (upper-casing a letter was a replay and a cloned node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Signer's ed25519 public key, lowercase hex (the only spelling accepted).
    pub signer: String,
    /// Seconds since the Unix epoch when the signer sealed it.
    pub timestamp: i64,
    /// Random nonce, lowercase hex; a registry accepts each (signer, nonce) once.
    pub nonce: String,
    /// The exact payload bytes, base64.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// ed25519 signature, lowercase hex.
    pub signature: String,
}

/// An envelope whose signature verified, with its decoded payload.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key that signed it.
    pub signer: VerifyingKey,
    /// The signer key as lowercase hex (the phonebook's key), re-encoded from the key bytes.
    pub signer_hex: String,
    /// The decoded payload.
    pub payload: Payload,
    /// The sender's timestamp.
    pub timestamp: i64,
    /// The sender's nonce as lowercase hex, re-encoded from its bytes.
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
        self.verify_parts().map(|(signer, _)| signer)
    }

    /// Checks the signature; returns the signer and the nonce as bytes.
    fn verify_parts(&self) -> Result<(VerifyingKey, [u8; NONCE_LEN]), EnvelopeError> {
        // A spelling other than lowercase hex is malformed; 32 bytes that are not a curve
        // point are a bad signer.
        let signer_bytes: [u8; 32] = decode_fixed(&self.signer).ok_or_else(|| {
            EnvelopeError::Malformed("signer must be 64 lowercase hex digits".into())
        })?;
        let signer = VerifyingKey::from_bytes(&signer_bytes).map_err(|_| {
            EnvelopeError::BadSigner(format!("{} is not a curve point", self.signer))
        })?;
        let nonce: [u8; NONCE_LEN] = decode_fixed(&self.nonce).ok_or_else(|| {
            EnvelopeError::Malformed(format!(
                "nonce must be {} lowercase hex digits",
                NONCE_LEN * 2
            ))
        })?;
        let sig_bytes: [u8; 64] = decode_fixed(&self.signature).ok_or_else(|| {
            EnvelopeError::Malformed("signature must be 128 lowercase hex digits".into())
        })?;
        let signature = Signature::from_bytes(&sig_bytes);
        let msg = signed_message(signer.as_bytes(), self.timestamp, &nonce, &self.payload);
        signer
            .verify_strict(&msg, &signature)
            .map_err(|_| EnvelopeError::BadSignature(self.signer.clone()))?;
        Ok((signer, nonce))
    }

    /// Verifies the signature and decodes the payload, whatever the timestamp: for a message
    /// relayed from storage (a twin's deployment the node reads hours later, a stored
    /// report an auditor checks), where replays are refused by what it carries (versions),
    /// not by the clock.
    pub fn open_relayed(&self) -> Result<Verified, EnvelopeError> {
        self.open_checked(|| Ok(()))
    }

    /// Verifies the signature, the timestamp against `now` and decodes the payload.
    pub fn open(&self, now: i64) -> Result<Verified, EnvelopeError> {
        self.open_checked(|| check_clock(self.timestamp, now))
    }

    /// The signature first (a forger learns nothing), then `clock`, then the payload.
    fn open_checked(
        &self,
        clock: impl FnOnce() -> Result<(), EnvelopeError>,
    ) -> Result<Verified, EnvelopeError> {
        let (signer, nonce) = self.verify_parts()?;
        clock()?;
        let payload = Payload::from_bytes(&self.payload)?;
        Ok(Verified {
            signer,
            signer_hex: hex::encode(signer.as_bytes()),
            payload,
            timestamp: self.timestamp,
            nonce: hex::encode(nonce),
        })
    }
}

/// Seconds since the Unix epoch by this machine's clock: the timestamp envelopes carry and
/// [`check_clock`] compares. A clock set before 1970 reads as 0, which every receiver with a
/// set clock refuses as stale, rather than as an error the sender would have to handle.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Refuses a timestamp more than [`MAX_CLOCK_SKEW_SECS`] from `now`, for every pair of
/// `i64`s (the difference is taken in 128 bits: it cannot overflow or wrap into the window).
pub fn check_clock(timestamp: i64, now: i64) -> Result<(), EnvelopeError> {
    let skew = i128::from(timestamp) - i128::from(now);
    if skew.abs() > i128::from(MAX_CLOCK_SKEW_SECS) {
        return Err(EnvelopeError::StaleTimestamp {
            timestamp,
            now,
            skew,
        });
    }
    Ok(())
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

/// Decodes exactly `N` bytes from lowercase hex: the one spelling accepted anywhere on the
/// wire, so equal bytes are always equal text.
pub fn decode_fixed<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parses a public key given as lowercase hex (the phonebook's format).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, EnvelopeError> {
    let bytes: [u8; 32] = decode_fixed(s)
        .ok_or_else(|| EnvelopeError::BadSigner(format!("{s:?} is not 64 lowercase hex digits")))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| EnvelopeError::BadSigner(format!("{s} is not a curve point")))
}

/// Bytes as standard base64 with padding in JSON (non-canonical encodings are refused), for
/// `#[serde(with = "gridtypes::envelope::b64")]`.
pub mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// Writes `v` as a base64 string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    /// Reads a base64 string.
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
        assert!(matches!(env.open(1000), Err(EnvelopeError::Malformed(_))));
        let mut env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        env.nonce = "00".into();
        assert!(matches!(env.open(1000), Err(EnvelopeError::Malformed(_))));
        let mut env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        env.signature = "00".into();
        assert!(matches!(env.open(1000), Err(EnvelopeError::Malformed(_))));
    }

    #[test]
    fn only_lowercase_hex_is_accepted() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(1), 1000, [0xab; NONCE_LEN]);
        assert!(env.open(1000).is_ok());
        // Every other spelling of the same bytes: upper case, one letter re-cased, mixed.
        let recase = |s: &str, i: usize| {
            let mut b = s.as_bytes().to_vec();
            let j = b
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_alphabetic())
                .nth(i);
            if let Some((j, _)) = j {
                b[j] = b[j].to_ascii_uppercase();
            }
            String::from_utf8(b).unwrap()
        };
        for i in 0..3 {
            let mut e = env.clone();
            e.nonce = recase(&env.nonce, i);
            assert!(
                matches!(e.open(1000), Err(EnvelopeError::Malformed(_))),
                "nonce {i}"
            );
            let mut e = env.clone();
            e.signer = recase(&env.signer, i);
            assert!(
                matches!(e.open(1000), Err(EnvelopeError::Malformed(_))),
                "signer {i}"
            );
            let mut e = env.clone();
            e.signature = recase(&env.signature, i);
            assert!(
                matches!(e.open(1000), Err(EnvelopeError::Malformed(_))),
                "sig {i}"
            );
        }
        let mut e = env.clone();
        e.signer = env.signer.to_uppercase();
        assert!(e.open(1000).is_err());
        // Other junk that hex decoders sometimes take: prefixes, whitespace, signs.
        for bad in [
            format!("0x{}", &env.nonce[2..]),
            format!(" {}", &env.nonce[1..]),
            format!("+{}", &env.nonce[1..]),
        ] {
            let mut e = env.clone();
            e.nonce = bad.clone();
            assert!(e.open(1000).is_err(), "{bad}");
        }
        // What open() hands on is re-encoded from bytes, whatever the text was.
        let v = env.open(1000).unwrap();
        assert_eq!(v.signer_hex, hex::encode(k.verifying_key().as_bytes()));
        assert_eq!(v.nonce, "ab".repeat(NONCE_LEN));
    }

    #[test]
    fn non_canonical_base64_payload_is_refused() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        let mut v: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        let b64 = v["payload"].as_str().unwrap().to_string();
        for bad in [
            b64.trim_end_matches('=').to_string(),
            format!("{b64}="),
            b64.replace('=', "") + "==",
            format!(" {b64}"),
        ] {
            if bad == b64 {
                continue;
            }
            v["payload"] = serde_json::json!(bad);
            assert!(
                Envelope::from_json(&serde_json::to_vec(&v).unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_envelope_fields_are_refused() {
        let k = key();
        let env = Envelope::seal(&k, &uptime(1), 1000, [1; NONCE_LEN]);
        let json = String::from_utf8(env.to_json()).unwrap();
        let dup = json.replacen(
            '{',
            &format!("{{\"nonce\":\"{}\",", "00".repeat(NONCE_LEN)),
            1,
        );
        assert!(Envelope::from_json(dup.as_bytes()).is_err());
    }

    #[test]
    fn clock_check_at_the_extremes() {
        for (ts, now, ok) in [
            (i64::MIN, 1_700_000_000, false),
            (i64::MAX, 1_700_000_000, false),
            (i64::MIN, i64::MAX, false),
            (i64::MAX, i64::MIN, false),
            (i64::MIN, i64::MIN, true),
            (i64::MAX, i64::MAX - MAX_CLOCK_SKEW_SECS, true),
            (i64::MIN + MAX_CLOCK_SKEW_SECS, i64::MIN, true),
            (i64::MIN + MAX_CLOCK_SKEW_SECS + 1, i64::MIN, false),
        ] {
            assert_eq!(check_clock(ts, now).is_ok(), ok, "{ts} vs {now}");
        }
        // The signed path too: a message dated i64::MIN is refused as stale, not accepted.
        let env = Envelope::seal(&key(), &uptime(1), i64::MIN, [1; NONCE_LEN]);
        assert!(matches!(
            env.open(1_700_000_000),
            Err(EnvelopeError::StaleTimestamp { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn clock_check_matches_exact_arithmetic(ts in proptest::num::i64::ANY, now in proptest::num::i64::ANY) {
            let exact = (ts as i128 - now as i128).abs() <= MAX_CLOCK_SKEW_SECS as i128;
            proptest::prop_assert_eq!(check_clock(ts, now).is_ok(), exact);
        }

        #[test]
        fn clock_check_near_now(now in proptest::num::i64::ANY, d in -1000i64..1000) {
            let ts = now.saturating_add(d);
            let exact = (ts as i128 - now as i128).abs() <= MAX_CLOCK_SKEW_SECS as i128;
            proptest::prop_assert_eq!(check_clock(ts, now).is_ok(), exact);
        }
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
