//! `grid logs`: a workload's output, asked of the node through the registry's mailbox. The
//! request is sealed to the node and the answer to the twin, so the registry relays both
//! without learning the workload's name or what it printed.

use std::time::Duration;

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use gridapi::{paths, ContractState, ContractView, ErrorCode, LogsView, NodeView};
use gridtypes::mailbox::{self, LogRequest};
use gridtypes::{Payload, Sealed};
use serde::Serialize;

use crate::client::{Client, ClientError};

/// How often the registry is asked whether the node answered.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A workload's output as the node sent it, checked and opened.
#[derive(Debug, Serialize)]
pub struct Logs {
    /// The contract.
    pub contract_id: i64,
    /// The node that answered.
    pub node_id: i64,
    /// The workload.
    pub workload: String,
    /// The request's number.
    pub request: u64,
    /// The bytes, as text (invalid UTF-8 replaced) for `--json`.
    pub text: String,
    /// The bytes as the node sent them.
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// Asks the node of contract `id` for the last `tail` bytes of `workload`'s output and waits
/// up to `wait` for its answer.
pub async fn fetch(
    client: &Client,
    key: &SigningKey,
    id: u64,
    workload: &str,
    tail: u32,
    wait: Duration,
) -> anyhow::Result<Logs> {
    let c: ContractView = client.get(&paths::contract(id)).await?;
    if c.state != ContractState::Active {
        bail!("contract {id} is cancelled: nothing runs under it any more");
    }
    if c.deployment_version.is_none() {
        bail!("nothing is deployed under contract {id} yet: grid deploy app.yaml --contract {id}");
    }
    let node: NodeView = client.get(&paths::node(c.node_id as u64)).await?;
    let Some(box_key) = node.box_key.as_deref() else {
        bail!(
            "node {} publishes no box key: it runs no workloads",
            node.id
        );
    };
    let to = mailbox::parse_box_key(box_key)?;
    // Numbered by the clock so two terminals rarely collide, and above the last request so
    // a clock that went back still moves forward.
    let request = (gridtypes::now() as u64)
        .saturating_mul(1000)
        .max(c.log_request.map_or(0, |r| r as u64 + 1));
    let r = LogRequest {
        contract_id: id,
        request,
        workload: workload.to_string(),
        max_bytes: tail,
    };
    let payload = Payload::RequestLogs(Sealed {
        contract_id: id,
        version: request,
        sealed: mailbox::seal_log_request(&to, &r)?,
    });
    payload.validate()?;
    match client
        .post_signed(paths::MAILBOX_LOG_REQUEST, key, &payload)
        .await
    {
        Ok(_) => {}
        Err(ClientError::Refused {
            code: ErrorCode::Forbidden,
            ..
        }) => bail!(
            "contract {id} belongs to another twin (your key is {})",
            hex::encode(key.verifying_key().as_bytes())
        ),
        Err(e) => return Err(e.into()),
    }

    let deadline = tokio::time::Instant::now() + wait;
    let view = loop {
        match client.get::<LogsView>(&paths::contract_logs(id)).await {
            Ok(v) if v.request == request as i64 => break v,
            Ok(_)
            | Err(ClientError::Refused {
                code: ErrorCode::NotFound,
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "node {} did not answer within {} s: is it up? (grid nodes show {})",
                node.id,
                wait.as_secs(),
                node.id
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    open(key, &c, &node, &view, &r)
}

/// Checks the node's signature on its answer and opens it with the twin's key.
fn open(
    key: &SigningKey,
    c: &ContractView,
    node: &NodeView,
    view: &LogsView,
    asked: &LogRequest,
) -> anyhow::Result<Logs> {
    let payload = crate::deploy::signed_by_node(&view.envelope, node, "logs", c.id)?;
    let Payload::Logs(sealed) = payload else {
        bail!("the node's answer on contract {} is not logs", c.id);
    };
    let a = mailbox::open_log_answer(key, &sealed.sealed)
        .with_context(|| format!("cannot open the logs of contract {} with your key", c.id))?;
    if a.contract_id != asked.contract_id
        || a.request != asked.request
        || sealed.version != asked.request
    {
        bail!(
            "the node answered contract {} request {} where contract {} request {} was asked: refused",
            a.contract_id,
            a.request,
            asked.contract_id,
            asked.request
        );
    }
    if let Some(e) = a.error {
        bail!(
            "node {} has no output of {:?}: {e}",
            node.id,
            asked.workload
        );
    }
    if a.workload != asked.workload {
        bail!(
            "the node answered about workload {:?} where {:?} was asked: refused",
            a.workload,
            asked.workload
        );
    }
    Ok(Logs {
        contract_id: c.id,
        node_id: node.id,
        workload: a.workload,
        request: a.request,
        text: String::from_utf8_lossy(&a.data).into_owned(),
        data: a.data,
    })
}
