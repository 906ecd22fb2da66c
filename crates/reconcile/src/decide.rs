//! What one mailbox item means for the node: checked as the node trusts nobody but the twin.
//!
//! The registry relays; it could hand over a forged, replayed or reordered item. Everything
//! here is decided from the twin's signature, the sealed box and what the node itself holds.

use crypto_box::SecretKey;
use gridapi::{ContractState, MailboxItem};
use gridtypes::deployment::Deployment;
use gridtypes::mailbox::LogRequest;
use gridtypes::{mailbox, Envelope, Payload};

use crate::store::Record;

/// What to do with one mailbox item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing new: a contract without a deployment yet, or a version already taken up.
    Unchanged,
    /// Run this deployment (a newer version, checked).
    Apply(Deployment),
    /// The contract ended: remove everything that ran under it.
    TearDown,
    /// The twin's version `version` cannot run; the twin is told why, what runs stays.
    Refuse {
        /// The version refused.
        version: u64,
        /// Why, for the twin.
        reason: String,
    },
    /// Not the twin's word (unreadable, or older than what the node took up): logged only,
    /// since the twin did not send it.
    Ignore(String),
}

/// Decides what `item` asks of the node, given what the node holds for the contract.
pub fn decide(item: &MailboxItem, current: Option<&Record>, secret: &SecretKey) -> Decision {
    let id = item.contract_id;
    if current.is_some_and(|r| r.cancelled) {
        return Decision::Ignore(format!("contract {id} was already torn down"));
    }
    if item.state == ContractState::Cancelled {
        return Decision::TearDown;
    }
    if let Some(r) = current {
        if r.twin_key != item.twin_key {
            return Decision::Ignore(format!(
                "contract {id} now names twin {} where it named {}: a contract never changes twin",
                item.twin_key, r.twin_key
            ));
        }
    }
    let Some(raw) = &item.deployment else {
        return Decision::Unchanged;
    };
    let verified = match Envelope::from_json(raw).and_then(|e| e.open_relayed()) {
        Ok(v) => v,
        Err(e) => return Decision::Ignore(format!("contract {id}: deployment envelope {e}")),
    };
    let Payload::Deploy(sealed) = verified.payload else {
        return Decision::Ignore(format!(
            "contract {id}: the mailbox holds a {} message, not a deployment",
            verified.payload.kind()
        ));
    };
    if verified.signer_hex != item.twin_key {
        return Decision::Ignore(format!(
            "contract {id}: deployment signed by {}, not by the contract's twin {}",
            verified.signer_hex, item.twin_key
        ));
    }
    let version = sealed.version;
    if sealed.contract_id as i64 != id {
        return Decision::Ignore(format!(
            "contract {id}: the twin's envelope is for contract {}",
            sealed.contract_id
        ));
    }
    if let Some(seen) = current.map(|r| r.version).filter(|v| *v > 0) {
        if version == seen {
            return Decision::Unchanged;
        }
        if version < seen {
            return Decision::Ignore(format!(
                "contract {id}: version {version} is older than version {seen} taken up: replayed or out of order"
            ));
        }
    }
    let refuse = |reason: String| Decision::Refuse { version, reason };
    let d = match mailbox::open_deployment(secret, &sealed.sealed) {
        Ok(d) => d,
        Err(e) => return refuse(e.to_string()),
    };
    if d.contract_id != sealed.contract_id || d.version != version {
        return refuse(format!(
            "the sealed deployment says contract {} version {}, its envelope contract {} version {version}",
            d.contract_id, d.version, sealed.contract_id
        ));
    }
    if let Err(e) = d.fits(&item.resources) {
        return refuse(e.to_string());
    }
    Decision::Apply(d)
}

/// What to do with the log request an item carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDecision {
    /// Read the workload's output and answer the twin.
    Answer(LogRequest),
    /// The twin asked, but the request cannot be read: answer request `request` with why.
    Refuse {
        /// The request's number.
        request: u64,
        /// Why, for the twin.
        reason: String,
    },
    /// Not the twin's word, already answered, or about a contract the node does not run:
    /// logged only.
    Ignore(String),
}

/// Decides what the log request in `item` asks, given what the node holds for the
/// contract and the last request it answered there. `None`: the item carries none.
pub fn log_request(
    item: &MailboxItem,
    current: Option<&Record>,
    answered: u64,
    secret: &SecretKey,
) -> Option<LogDecision> {
    let raw = item.log_request.as_ref()?;
    let id = item.contract_id;
    let ignore = |why: String| Some(LogDecision::Ignore(format!("contract {id}: {why}")));
    let Some(record) = current.filter(|r| !r.cancelled) else {
        return ignore("log request for a contract this node does not run".into());
    };
    let verified = match Envelope::from_json(raw).and_then(|e| e.open_relayed()) {
        Ok(v) => v,
        Err(e) => return ignore(format!("log request envelope {e}")),
    };
    let Payload::RequestLogs(sealed) = verified.payload else {
        return ignore(format!(
            "the mailbox holds a {} message, not a log request",
            verified.payload.kind()
        ));
    };
    if verified.signer_hex != record.twin_key || verified.signer_hex != item.twin_key {
        return ignore(format!(
            "log request signed by {}, not by the contract's twin {}",
            verified.signer_hex, record.twin_key
        ));
    }
    if sealed.contract_id as i64 != id {
        return ignore(format!(
            "the twin's log request is for contract {}",
            sealed.contract_id
        ));
    }
    let request = sealed.version;
    if request <= answered {
        return ignore(format!(
            "log request {request} is not newer than request {answered} answered: replayed"
        ));
    }
    let refuse = |reason: String| Some(LogDecision::Refuse { request, reason });
    let r = match mailbox::open_log_request(secret, &sealed.sealed) {
        Ok(r) => r,
        Err(e) => return refuse(e.to_string()),
    };
    if r.contract_id != sealed.contract_id || r.request != request {
        return refuse(format!(
            "the sealed request says contract {} request {}, its envelope contract {} request {request}",
            r.contract_id, r.request, sealed.contract_id
        ));
    }
    Some(LogDecision::Answer(r))
}
