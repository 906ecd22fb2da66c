//! What travels through a node's mailbox at the registry, and the sealing that keeps the
//! registry from reading it.
//!
//! A twin's deployment is sealed to the node (an anonymous crypto_box sealed box: X25519,
//! XSalsa20-Poly1305) and the node's status answers are sealed back to the twin. Whoever
//! sealed a box is not known from the box itself: authenticity comes from the ed25519
//! envelope around it ([`crate::Payload::Deploy`], [`crate::Payload::DeploymentStatus`]),
//! which the registry stores verbatim and hands on, so the node checks the twin's own
//! signature and the twin the node's.
//!
//! The X25519 keys are the birational images of the ed25519 identity keys (libsodium's
//! `crypto_sign_ed25519_{pk,sk}_to_curve25519`): neither side keeps a second secret, and a
//! twin needs nothing published to be answered. A node still publishes its box key in its
//! signed registration ([`crate::NodeRegistration::box_key`]), so a twin seals to exactly
//! what the node announced and a later agent may move to a separate key without a protocol
//! change.

use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::deployment::{Deployment, DeploymentError, MAX_NAME, MAX_WORKLOADS};
use crate::envelope::decode_fixed;

/// Largest deployment a twin may seal: its JSON bytes. Sealed, base64'd and signed, it still
/// fits the registry's request limit with room to spare.
pub const MAX_DEPLOYMENT_BYTES: usize = 16 * 1024;
/// Largest status a node may seal: its JSON bytes.
pub const MAX_STATUS_BYTES: usize = 12 * 1024;
/// What sealing adds to a message: an ephemeral public key and a Poly1305 tag.
pub const SEAL_OVERHEAD: usize = crypto_box::SEALBYTES;
/// Longest reason a status gives for a state.
pub const MAX_REASON: usize = 512;
/// Longest address a workload reports.
pub const MAX_ADDRESS: usize = 64;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The box does not open with this key: sealed to someone else, or changed on the way.
    #[error(
        "the sealed box does not open with this key (sealed to another key, or tampered with)"
    )]
    NotForUs,
    /// The box key text is not 64 lowercase hex digits.
    #[error("box key {0:?} is not 64 lowercase hex digits")]
    BadKey(String),
    /// The message is larger than its kind allows.
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// What was sealed or opened.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The opened bytes are not a message of the expected shape.
    #[error("the opened {what} is malformed: {why}")]
    Malformed {
        /// What was expected.
        what: &'static str,
        /// serde's or validation's reason.
        why: String,
    },
    /// The random source failed while sealing.
    #[error("sealing failed: no randomness or an internal crypto error")]
    Seal,
}

/// The X25519 secret that belongs to an ed25519 identity key.
pub fn box_secret(key: &SigningKey) -> SecretKey {
    SecretKey::from(key.to_scalar_bytes())
}

/// The X25519 public key that belongs to an ed25519 public key.
pub fn box_public(key: &VerifyingKey) -> PublicKey {
    PublicKey::from(key.to_montgomery().to_bytes())
}

/// A box public key as written on the wire: 64 lowercase hex digits.
pub fn box_key_hex(key: &PublicKey) -> String {
    hex::encode(key.as_bytes())
}

/// Parses a box public key from its wire form.
pub fn parse_box_key(s: &str) -> Result<PublicKey, SealError> {
    decode_fixed::<32>(s)
        .map(PublicKey::from)
        .ok_or_else(|| SealError::BadKey(s.chars().take(80).collect()))
}

/// Seals `plaintext` so that only the holder of `to`'s secret can open it.
pub fn seal(to: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    to.seal(&mut OsRng, plaintext).map_err(|_| SealError::Seal)
}

/// Opens a box sealed to `secret`'s public key; refuses anything larger than `max` sealed
/// bytes before doing any work.
pub fn open(secret: &SecretKey, sealed: &[u8], max: usize) -> Result<Vec<u8>, SealError> {
    if sealed.len() > max + SEAL_OVERHEAD {
        return Err(SealError::TooLarge {
            what: "sealed box",
            len: sealed.len(),
            max: max + SEAL_OVERHEAD,
        });
    }
    secret.unseal(sealed).map_err(|_| SealError::NotForUs)
}

/// Seals a deployment to a node after checking it; what goes into [`crate::Sealed::sealed`]
/// of a [`crate::Payload::Deploy`].
pub fn seal_deployment(to: &PublicKey, d: &Deployment) -> Result<Vec<u8>, SealError> {
    // A deployment is plain data: it always serialises.
    let bytes = serde_json::to_vec(d).unwrap_or_default();
    if bytes.len() > MAX_DEPLOYMENT_BYTES {
        return Err(SealError::TooLarge {
            what: "deployment",
            len: bytes.len(),
            max: MAX_DEPLOYMENT_BYTES,
        });
    }
    seal(to, &bytes)
}

/// Opens and validates a deployment sealed to this node.
pub fn open_deployment(secret: &SecretKey, sealed: &[u8]) -> Result<Deployment, SealError> {
    let bytes = open(secret, sealed, MAX_DEPLOYMENT_BYTES)?;
    let malformed = |why: String| SealError::Malformed {
        what: "deployment",
        why,
    };
    let d: Deployment = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    d.validate()
        .map_err(|e: DeploymentError| malformed(e.to_string()))?;
    Ok(d)
}

/// Where a deployment, or one of its workloads, stands on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Posted by the twin; the node has not taken it up yet (never sent by a node for a
    /// whole deployment; `grid` shows it while no status answers the newest version).
    Requested,
    /// The node is pulling images and creating what the deployment asks for.
    Provisioning,
    /// Everything runs.
    Running,
    /// A container whose process ended and that its restart policy leaves ended (a
    /// finished job; a workload state only).
    Exited,
    /// The node gave up on it; the reason says why.
    Failed,
    /// Torn down: the twin removed it, or its contract ended.
    Deleted,
}

impl DeploymentState {
    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Requested => "requested",
            DeploymentState::Provisioning => "provisioning",
            DeploymentState::Running => "running",
            DeploymentState::Exited => "exited",
            DeploymentState::Failed => "failed",
            DeploymentState::Deleted => "deleted",
        }
    }
}

/// What a node tells the twin about one version of its deployment (sealed to the twin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentStatus {
    /// The contract.
    pub contract_id: u64,
    /// The deployment version this describes.
    pub version: u64,
    /// The whole deployment's state.
    pub state: DeploymentState,
    /// Why it is failed or deleted, or what provisioning is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each workload by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadStatus>,
}

/// One workload's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadStatus {
    /// The workload's name in the deployment.
    pub name: String,
    /// Its state.
    pub state: DeploymentState,
    /// Why, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A container's address on the twin's network on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What kind of workload it is, from the deployment (so a twin's tools can tell a VM,
    /// which one reaches with SSH, from a container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::deployment::WorkloadKind>,
}

impl DeploymentStatus {
    /// Range checks: a status the twin reads is bounded like everything else.
    pub fn validate(&self) -> Result<(), String> {
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(format!(
                "{} workloads, at most {MAX_WORKLOADS}",
                self.workloads.len()
            ));
        }
        let long = |s: &Option<String>, max: usize| s.as_ref().is_some_and(|s| s.len() > max);
        if long(&self.reason, MAX_REASON) {
            return Err(format!("reason longer than {MAX_REASON} bytes"));
        }
        for w in &self.workloads {
            if w.name.len() > MAX_NAME {
                return Err(format!("workload name longer than {MAX_NAME} bytes"));
            }
            if long(&w.reason, MAX_REASON) || long(&w.address, MAX_ADDRESS) {
                return Err(format!(
                    "workload {:?}: reason or address too long ({MAX_REASON} and {MAX_ADDRESS} bytes at most)",
                    w.name
                ));
            }
        }
        Ok(())
    }
}

/// Seals a status to the twin that owns the contract.
pub fn seal_status(twin: &VerifyingKey, s: &DeploymentStatus) -> Result<Vec<u8>, SealError> {
    let bytes = serde_json::to_vec(s).unwrap_or_default();
    if bytes.len() > MAX_STATUS_BYTES {
        return Err(SealError::TooLarge {
            what: "status",
            len: bytes.len(),
            max: MAX_STATUS_BYTES,
        });
    }
    seal(&box_public(twin), &bytes)
}

/// Opens a status sealed to this twin.
pub fn open_status(twin: &SigningKey, sealed: &[u8]) -> Result<DeploymentStatus, SealError> {
    let bytes = open(&box_secret(twin), sealed, MAX_STATUS_BYTES)?;
    let malformed = |why: String| SealError::Malformed {
        what: "status",
        why,
    };
    let s: DeploymentStatus =
        serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    s.validate().map_err(malformed)?;
    Ok(s)
}

/// Most log bytes one answer carries: the tail of the container's output. Base64'd inside
/// the sealed answer and again in the signed envelope, it still fits
/// [`crate::MAX_PAYLOAD_BYTES`].
pub const MAX_LOG_BYTES: usize = 16 * 1024;
/// Largest log request a twin may seal: its JSON bytes.
pub const MAX_LOG_REQUEST_BYTES: usize = 256;
/// Largest log answer a node may seal: its JSON bytes (the base64 of [`MAX_LOG_BYTES`], the
/// names and an error).
pub const MAX_LOG_ANSWER_BYTES: usize = MAX_LOG_BYTES.div_ceil(3) * 4 + 1024;

/// A twin asks the node for the newest output of one workload (sealed to the node, so the
/// registry does not even learn the workload's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRequest {
    /// The contract.
    pub contract_id: u64,
    /// The request's number: larger than every earlier request on the contract.
    pub request: u64,
    /// The workload's name in the deployment.
    pub workload: String,
    /// At most this many bytes, from the end (capped at [`MAX_LOG_BYTES`]).
    pub max_bytes: u32,
}

/// The node's answer to a [`LogRequest`] (sealed to the twin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogAnswer {
    /// The contract.
    pub contract_id: u64,
    /// The request answered.
    pub request: u64,
    /// The workload asked about.
    pub workload: String,
    /// The newest output of the workload, stdout and stderr interleaved as written.
    #[serde(with = "crate::envelope::b64")]
    pub data: Vec<u8>,
    /// Why there is no output to give (an unknown workload, a runtime error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LogRequest {
    /// Range checks.
    pub fn validate(&self) -> Result<(), String> {
        check_log_ids(self.contract_id, self.request, &self.workload)?;
        if self.max_bytes == 0 || self.max_bytes as usize > MAX_LOG_BYTES {
            return Err(format!(
                "max_bytes {} is not between 1 and {MAX_LOG_BYTES}",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

impl LogAnswer {
    /// Range checks.
    pub fn validate(&self) -> Result<(), String> {
        check_log_ids(self.contract_id, self.request, &self.workload)?;
        if self.data.len() > MAX_LOG_BYTES {
            return Err(format!(
                "{} log bytes, at most {MAX_LOG_BYTES}",
                self.data.len()
            ));
        }
        if self.error.as_ref().is_some_and(|e| e.len() > MAX_REASON) {
            return Err(format!("error longer than {MAX_REASON} bytes"));
        }
        Ok(())
    }
}

fn check_log_ids(contract: u64, request: u64, workload: &str) -> Result<(), String> {
    if contract == 0 || contract > i64::MAX as u64 {
        return Err(format!("contract_id {contract} is out of range"));
    }
    if request == 0 || request > i64::MAX as u64 {
        return Err(format!("request {request} is out of range"));
    }
    if workload.is_empty() || workload.len() > MAX_NAME {
        return Err(format!(
            "workload name of {} bytes: 1 to {MAX_NAME}",
            workload.len()
        ));
    }
    Ok(())
}

/// Seals a log request to the node that runs the contract.
pub fn seal_log_request(to: &PublicKey, r: &LogRequest) -> Result<Vec<u8>, SealError> {
    r.validate().map_err(|why| SealError::Malformed {
        what: "log request",
        why,
    })?;
    seal_json(to, r, "log request", MAX_LOG_REQUEST_BYTES)
}

/// Opens and validates a log request sealed to this node.
pub fn open_log_request(secret: &SecretKey, sealed: &[u8]) -> Result<LogRequest, SealError> {
    let r: LogRequest = open_json(secret, sealed, "log request", MAX_LOG_REQUEST_BYTES)?;
    r.validate().map_err(|why| SealError::Malformed {
        what: "log request",
        why,
    })?;
    Ok(r)
}

/// Seals a log answer to the twin that asked.
pub fn seal_log_answer(twin: &VerifyingKey, a: &LogAnswer) -> Result<Vec<u8>, SealError> {
    a.validate().map_err(|why| SealError::Malformed {
        what: "log answer",
        why,
    })?;
    seal_json(&box_public(twin), a, "log answer", MAX_LOG_ANSWER_BYTES)
}

/// Opens and validates a log answer sealed to this twin.
pub fn open_log_answer(twin: &SigningKey, sealed: &[u8]) -> Result<LogAnswer, SealError> {
    let a: LogAnswer = open_json(
        &box_secret(twin),
        sealed,
        "log answer",
        MAX_LOG_ANSWER_BYTES,
    )?;
    a.validate().map_err(|why| SealError::Malformed {
        what: "log answer",
        why,
    })?;
    Ok(a)
}

fn seal_json<T: Serialize>(
    to: &PublicKey,
    v: &T,
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, SealError> {
    // Plain data: it always serialises.
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    if bytes.len() > max {
        return Err(SealError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    seal(to, &bytes)
}

fn open_json<T: serde::de::DeserializeOwned>(
    secret: &SecretKey,
    sealed: &[u8],
    what: &'static str,
    max: usize,
) -> Result<T, SealError> {
    let bytes = open(secret, sealed, max)?;
    serde_json::from_slice(&bytes).map_err(|e| SealError::Malformed {
        what,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{Volume, Workload};
    use rand::rngs::OsRng as Rng;

    fn deployment() -> Deployment {
        Deployment {
            contract_id: 7,
            version: 1,
            workloads: vec![Workload::Volume(Volume {
                name: "data".into(),
                size: 1 << 20,
                disk: Default::default(),
            })],
        }
    }

    #[test]
    fn a_box_for_node_a_opens_on_a_only() {
        let a = SigningKey::generate(&mut Rng);
        let b = SigningKey::generate(&mut Rng);
        let sealed = seal_deployment(&box_public(&a.verifying_key()), &deployment()).unwrap();
        assert_eq!(
            open_deployment(&box_secret(&a), &sealed).unwrap(),
            deployment()
        );
        assert_eq!(
            open_deployment(&box_secret(&b), &sealed),
            Err(SealError::NotForUs)
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let a = SigningKey::generate(&mut Rng);
        let sealed = seal_deployment(&box_public(&a.verifying_key()), &deployment()).unwrap();
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut t = sealed.clone();
                t[i] ^= bit;
                assert_eq!(
                    open_deployment(&box_secret(&a), &t),
                    Err(SealError::NotForUs),
                    "byte {i}"
                );
            }
        }
        assert_eq!(
            open_deployment(&box_secret(&a), &sealed[..sealed.len() - 1]),
            Err(SealError::NotForUs)
        );
        assert_eq!(
            open_deployment(&box_secret(&a), &[]),
            Err(SealError::NotForUs)
        );
    }

    #[test]
    fn the_derived_keys_are_a_pair() {
        // The public half computed from the ed25519 public key is the one the secret half
        // (computed from the ed25519 seed) belongs to.
        let k = SigningKey::generate(&mut Rng);
        assert_eq!(
            box_secret(&k).public_key().as_bytes(),
            box_public(&k.verifying_key()).as_bytes()
        );
        let hex = box_key_hex(&box_public(&k.verifying_key()));
        assert_eq!(parse_box_key(&hex).unwrap().as_bytes().len(), 32);
        assert!(parse_box_key(&hex.to_uppercase()).is_err());
        assert!(parse_box_key(&hex[2..]).is_err());
    }

    #[test]
    fn oversized_and_invalid_contents_are_refused() {
        let a = SigningKey::generate(&mut Rng);
        let pk = box_public(&a.verifying_key());
        // Valid JSON of a deployment that does not validate is refused after opening.
        let mut bad = deployment();
        bad.version = 0;
        let sealed = seal(&pk, &serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(matches!(
            open_deployment(&box_secret(&a), &sealed),
            Err(SealError::Malformed { .. })
        ));
        // More sealed bytes than any deployment are refused before decryption.
        let big = seal(&pk, &vec![b' '; MAX_DEPLOYMENT_BYTES + 1]).unwrap();
        assert!(matches!(
            open_deployment(&box_secret(&a), &big),
            Err(SealError::TooLarge { .. })
        ));
        let mut huge = deployment();
        huge.workloads = vec![Workload::Volume(Volume {
            name: "x".repeat(MAX_DEPLOYMENT_BYTES),
            size: 1 << 20,
            disk: Default::default(),
        })];
        assert!(matches!(
            seal_deployment(&pk, &huge),
            Err(SealError::TooLarge { .. })
        ));
    }

    #[test]
    fn status_round_trips_to_the_twin_only() {
        let twin = SigningKey::generate(&mut Rng);
        let other = SigningKey::generate(&mut Rng);
        let s = DeploymentStatus {
            contract_id: 7,
            version: 2,
            state: DeploymentState::Running,
            reason: None,
            workloads: vec![WorkloadStatus {
                name: "web".into(),
                state: DeploymentState::Running,
                reason: None,
                address: Some("10.20.0.2".into()),
                kind: None,
            }],
        };
        let sealed = seal_status(&twin.verifying_key(), &s).unwrap();
        assert_eq!(open_status(&twin, &sealed).unwrap(), s);
        assert_eq!(open_status(&other, &sealed), Err(SealError::NotForUs));
        let mut long = s.clone();
        long.reason = Some("x".repeat(MAX_REASON + 1));
        let sealed = seal(
            &box_public(&twin.verifying_key()),
            &serde_json::to_vec(&long).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            open_status(&twin, &sealed),
            Err(SealError::Malformed { .. })
        ));
    }

    #[test]
    fn log_requests_open_only_on_their_node_and_answers_only_for_their_twin() {
        let node = SigningKey::generate(&mut Rng);
        let other = SigningKey::generate(&mut Rng);
        let twin = SigningKey::generate(&mut Rng);
        let req = LogRequest {
            contract_id: 7,
            request: 3,
            workload: "web".into(),
            max_bytes: 4096,
        };
        let sealed = seal_log_request(&box_public(&node.verifying_key()), &req).unwrap();
        assert_eq!(open_log_request(&box_secret(&node), &sealed).unwrap(), req);
        assert_eq!(
            open_log_request(&box_secret(&other), &sealed),
            Err(SealError::NotForUs)
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            open_log_request(&box_secret(&node), &tampered),
            Err(SealError::NotForUs)
        );

        let answer = LogAnswer {
            contract_id: 7,
            request: 3,
            workload: "web".into(),
            data: vec![0xff; MAX_LOG_BYTES],
            error: None,
        };
        let sealed = seal_log_answer(&twin.verifying_key(), &answer).unwrap();
        assert_eq!(open_log_answer(&twin, &sealed).unwrap(), answer);
        assert_eq!(open_log_answer(&other, &sealed), Err(SealError::NotForUs));
        // The largest answer still fits one payload once sealed and base64'd.
        let p = crate::Payload::Logs(crate::Sealed {
            contract_id: 7,
            version: 3,
            sealed,
        });
        assert!(serde_json::to_vec(&p).unwrap().len() <= p.max_len());
        assert!(p.max_len() <= crate::MAX_PAYLOAD_BYTES);
    }

    #[test]
    fn log_messages_out_of_range_are_refused_on_both_ends() {
        let node = SigningKey::generate(&mut Rng);
        let to = box_public(&node.verifying_key());
        let good = LogRequest {
            contract_id: 7,
            request: 1,
            workload: "web".into(),
            max_bytes: 1,
        };
        for bad in [
            LogRequest {
                max_bytes: 0,
                ..good.clone()
            },
            LogRequest {
                max_bytes: MAX_LOG_BYTES as u32 + 1,
                ..good.clone()
            },
            LogRequest {
                request: 0,
                ..good.clone()
            },
            LogRequest {
                contract_id: u64::MAX,
                ..good.clone()
            },
            LogRequest {
                workload: String::new(),
                ..good.clone()
            },
        ] {
            assert!(seal_log_request(&to, &bad).is_err(), "{bad:?}");
            // A hostile twin seals it by hand: the node refuses it on opening.
            let sealed = seal(&to, &serde_json::to_vec(&bad).unwrap()).unwrap();
            assert!(
                matches!(
                    open_log_request(&box_secret(&node), &sealed),
                    Err(SealError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        let huge = seal(&to, &vec![b' '; MAX_LOG_REQUEST_BYTES + 1]).unwrap();
        assert!(matches!(
            open_log_request(&box_secret(&node), &huge),
            Err(SealError::TooLarge { .. })
        ));
        let too_much = LogAnswer {
            contract_id: 7,
            request: 1,
            workload: "web".into(),
            data: vec![0; MAX_LOG_BYTES + 1],
            error: None,
        };
        assert!(seal_log_answer(&node.verifying_key(), &too_much).is_err());
    }
}
