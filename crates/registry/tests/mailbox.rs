//! Node mailboxes: a twin posts a deployment sealed to the node, the node long-polls its
//! mailbox and answers with a status sealed to the twin; the registry relays both without
//! reading them and refuses what is stale, foreign or malformed, on SQLite and PostgreSQL.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use gridapi::{paths, ContractState, ContractView, LogsView, MailboxPage, NodeView, StatusView};
use gridtypes::deployment::{Deployment, Volume, Workload};
use gridtypes::mailbox::{self, DeploymentState, DeploymentStatus};
use gridtypes::{ContractRequest, Envelope, Payload, Resources, Sealed, GIB};
use serde_json::Value;
use test_infra::client::{error_code, node_registration, seal};
use test_infra::{Engine, Registry};

test_infra::on_both_engines!(
    a_deployment_reaches_the_node_and_its_status_the_twin,
    a_waiting_poll_wakes_when_the_twin_deploys,
    stale_foreign_and_unknown_mail_is_refused,
    bad_polls_are_refused,
    cancellation_reaches_the_mailbox,
    a_long_mailbox_comes_in_pages,
    nodes_publish_their_box_key,
    a_log_request_reaches_the_node_and_its_answer_the_twin,
    bad_log_requests_and_answers_change_nothing,
);

fn capacity() -> Resources {
    Resources {
        cru: 64,
        mru: 64 * GIB,
        sru: 1000 * GIB,
        hru: 0,
        ipv4: 0,
    }
}

struct World {
    node: SigningKey,
    node_id: i64,
    twin: SigningKey,
    contract: i64,
}

async fn world(h: &Registry) -> World {
    let farm = h.farm("mail-farm").await;
    let (node, node_id) = h.node(farm, capacity()).await;
    let (twin, _) = h.twin().await;
    let contract = contract(h, &twin, node_id).await;
    World {
        node,
        node_id,
        twin,
        contract,
    }
}

async fn contract(h: &Registry, twin: &SigningKey, node: i64) -> i64 {
    let p = Payload::CreateContract(ContractRequest {
        node_id: node as u64,
        resources: Resources {
            cru: 1,
            mru: GIB,
            sru: 2 * GIB,
            hru: 0,
            ipv4: 0,
        },
    });
    let (s, v) = h.post(paths::CONTRACTS, &seal(twin, &p)).await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_i64().unwrap()
}

fn deployment(contract: i64, version: u64) -> Deployment {
    Deployment {
        contract_id: contract as u64,
        version,
        workloads: vec![Workload::Volume(Volume {
            name: "data".into(),
            size: 64 << 20,
            disk: Default::default(),
        })],
    }
}

/// What `grid deploy` does: read the node's published box key and seal to it.
async fn deploy(h: &Registry, twin: &SigningKey, node: i64, d: &Deployment) -> (u16, Value) {
    let (s, v) = h.get(&paths::node(node as u64)).await;
    assert_eq!(s, 200, "{v}");
    let n: NodeView = serde_json::from_value(v).unwrap();
    let to = mailbox::parse_box_key(n.box_key.as_deref().unwrap()).unwrap();
    let p = Payload::Deploy(Sealed {
        contract_id: d.contract_id,
        version: d.version,
        sealed: mailbox::seal_deployment(&to, d).unwrap(),
    });
    h.post(paths::MAILBOX, &seal(twin, &p)).await
}

async fn poll(h: &Registry, node: &SigningKey, after: i64, wait_secs: u32) -> MailboxPage {
    let (s, v) = poll_raw(h, node, after, wait_secs).await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn poll_raw(h: &Registry, key: &SigningKey, after: i64, wait_secs: u32) -> (u16, Value) {
    let p = Payload::PollMailbox {
        after: after as u64,
        wait_secs,
    };
    h.post(paths::MAILBOX_POLL, &seal(key, &p)).await
}

fn status(contract: i64, version: u64, state: DeploymentState) -> DeploymentStatus {
    DeploymentStatus {
        contract_id: contract as u64,
        version,
        state,
        reason: None,
        workloads: Vec::new(),
    }
}

async fn post_status(
    h: &Registry,
    node: &SigningKey,
    twin: &SigningKey,
    st: &DeploymentStatus,
) -> (u16, Value) {
    let p = Payload::DeploymentStatus(Sealed {
        contract_id: st.contract_id,
        version: st.version,
        sealed: mailbox::seal_status(&twin.verifying_key(), st).unwrap(),
    });
    h.post(paths::MAILBOX_STATUS, &seal(node, &p)).await
}

async fn contract_view(h: &Registry, id: i64) -> ContractView {
    let (s, v) = h.get(&paths::contract(id as u64)).await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

/// What the node agent does with a mailbox item: check the twin's signature over the
/// relayed envelope, then open the box with its own key.
fn open_item(item: &gridapi::MailboxItem, node: &SigningKey) -> Deployment {
    let env = Envelope::from_json(item.deployment.as_ref().unwrap()).unwrap();
    let v = env.open_relayed().unwrap();
    assert_eq!(v.signer_hex, item.twin_key);
    let Payload::Deploy(s) = v.payload else {
        panic!("not a deployment: {:?}", v.payload)
    };
    assert_eq!(s.contract_id as i64, item.contract_id);
    let d = mailbox::open_deployment(&mailbox::box_secret(node), &s.sealed).unwrap();
    assert_eq!(d.version, s.version);
    d
}

async fn a_deployment_reaches_the_node_and_its_status_the_twin(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    // The new contract is in the mailbox at once, without a deployment yet.
    let page = poll(&h, &w.node, 0, 0).await;
    assert_eq!(page.items.len(), 1);
    assert!(!page.more);
    let item = &page.items[0];
    assert_eq!(item.contract_id, w.contract);
    assert_eq!(item.state, ContractState::Active);
    assert_eq!(
        item.twin_key,
        hex::encode(w.twin.verifying_key().as_bytes())
    );
    assert!(item.deployment.is_none());
    let created = page.rev;

    let d = deployment(w.contract, 1);
    let (s, v) = deploy(&h, &w.twin, w.node_id, &d).await;
    assert_eq!(s, 201, "{v}");
    let page = poll(&h, &w.node, created, 0).await;
    assert_eq!(page.items.len(), 1);
    assert!(page.rev > created);
    assert_eq!(open_item(&page.items[0], &w.node), d);
    // Nothing new after it: an empty page that keeps the cursor.
    let empty = poll(&h, &w.node, page.rev, 0).await;
    assert!(empty.items.is_empty());
    assert_eq!(empty.rev, page.rev);
    // The twin's box does not open with another node's key.
    let stranger = test_infra::client::new_key();
    let env = Envelope::from_json(page.items[0].deployment.as_ref().unwrap()).unwrap();
    let Payload::Deploy(sealed) = env.open_relayed().unwrap().payload else {
        unreachable!()
    };
    assert!(mailbox::open_deployment(&mailbox::box_secret(&stranger), &sealed.sealed).is_err());

    // The node answers; the twin reads the node's own signature and opens the status.
    let mut st = status(w.contract, 1, DeploymentState::Running);
    st.workloads.push(mailbox::WorkloadStatus {
        name: "data".into(),
        state: DeploymentState::Running,
        reason: None,
        address: None,
        kind: None,
    });
    let (s, v) = post_status(&h, &w.node, &w.twin, &st).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h.get(&paths::contract_status(w.contract as u64)).await;
    assert_eq!(s, 200, "{v}");
    let view: StatusView = serde_json::from_value(v).unwrap();
    assert_eq!(view.node_id, w.node_id);
    let env = Envelope::from_json(&view.envelope).unwrap();
    let verified = env.open_relayed().unwrap();
    assert_eq!(verified.signer_hex, view.node_key);
    assert_eq!(
        view.node_key,
        hex::encode(w.node.verifying_key().as_bytes())
    );
    let Payload::DeploymentStatus(sealed) = verified.payload else {
        panic!("not a status")
    };
    assert_eq!(mailbox::open_status(&w.twin, &sealed.sealed).unwrap(), st);

    let c = contract_view(&h, w.contract).await;
    assert_eq!((c.deployment_version, c.status_version), (Some(1), Some(1)));
    // A node's own status is not news for its mailbox.
    assert!(poll(&h, &w.node, page.rev, 0).await.items.is_empty());
}

async fn a_waiting_poll_wakes_when_the_twin_deploys(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    let after = poll(&h, &w.node, 0, 0).await.rev;
    let client = (*h).clone();
    let node = w.node.clone();
    let waiting = tokio::spawn(async move {
        let p = Payload::PollMailbox {
            after: after as u64,
            wait_secs: 20,
        };
        client.post(paths::MAILBOX_POLL, &seal(&node, &p)).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the poll returned with nothing new");
    let d = deployment(w.contract, 1);
    let (s, v) = deploy(&h, &w.twin, w.node_id, &d).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = waiting.await.unwrap();
    assert_eq!(s, 200, "{v}");
    let page: MailboxPage = serde_json::from_value(v).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(open_item(&page.items[0], &w.node), d);
}

async fn stale_foreign_and_unknown_mail_is_refused(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract, 2)).await;
    assert_eq!(s, 201, "{v}");
    let before = (
        poll(&h, &w.node, 0, 0).await,
        contract_view(&h, w.contract).await,
    );

    // The same or an older version, even freshly signed, is stale.
    for version in [2, 1] {
        let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract, version)).await;
        assert_eq!((s, error_code(&v)), (409, "stale_version"), "{v}");
    }
    // Another twin cannot deploy under this contract.
    let (other, _) = h.twin().await;
    let (s, v) = deploy(&h, &other, w.node_id, &deployment(w.contract, 3)).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    // A node is not a twin; an unknown contract is not found.
    let p = Payload::Deploy(Sealed {
        contract_id: w.contract as u64,
        version: 3,
        sealed: vec![7; 100],
    });
    let (s, v) = h.post(paths::MAILBOX, &seal(&w.node, &p)).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");
    let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract + 1000, 1)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    // The exact envelope again is a replay whatever it carries.
    let p = Payload::Deploy(Sealed {
        contract_id: w.contract as u64,
        version: 9,
        sealed: vec![7; 100],
    });
    let env = seal(&w.twin, &p);
    let (s, v) = h.post(paths::MAILBOX, &env).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h.post(paths::MAILBOX, &env).await;
    assert_eq!(s, 409, "{v}");
    let after_nine = poll(&h, &w.node, 0, 0).await;

    // Statuses: only the contract's node, only for a posted version, never older.
    let (s, v) = post_status(
        &h,
        &w.node,
        &w.twin,
        &status(w.contract, 10, DeploymentState::Running),
    )
    .await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
    let farm = h.farm("other-farm").await;
    let (stranger, _) = h.node(farm, capacity()).await;
    let (s, v) = post_status(
        &h,
        &stranger,
        &w.twin,
        &status(w.contract, 9, DeploymentState::Running),
    )
    .await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = post_status(
        &h,
        &w.twin,
        &w.twin,
        &status(w.contract, 9, DeploymentState::Running),
    )
    .await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");
    let (s, v) = post_status(
        &h,
        &w.node,
        &w.twin,
        &status(w.contract, 9, DeploymentState::Running),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post_status(
        &h,
        &w.node,
        &w.twin,
        &status(w.contract, 2, DeploymentState::Failed),
    )
    .await;
    assert_eq!((s, error_code(&v)), (409, "stale_version"), "{v}");

    // None of the refusals changed the mailbox or the contract.
    let (page, c) = before;
    assert_eq!(page.items.len(), 1);
    let now = contract_view(&h, w.contract).await;
    assert_eq!(c.deployment_version, Some(2));
    assert_eq!(now.deployment_version, Some(9));
    assert_eq!(now.status_version, Some(9));
    assert_eq!(poll(&h, &w.node, 0, 0).await, after_nine);
}

async fn bad_polls_are_refused(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    // Only registered nodes poll.
    let (s, v) = poll_raw(&h, &w.twin, 0, 0).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");
    // A wait longer than the limit, and a cursor out of range, are malformed.
    let (s, v) = poll_raw(&h, &w.node, 0, gridtypes::MAX_POLL_WAIT_SECS + 1).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    let p = Payload::PollMailbox {
        after: u64::MAX,
        wait_secs: 0,
    };
    let (s, v) = h.post(paths::MAILBOX_POLL, &seal(&w.node, &p)).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    // A poll is not a deployment, and the other way round.
    let p = Payload::PollMailbox {
        after: 0,
        wait_secs: 0,
    };
    let (s, v) = h.post(paths::MAILBOX, &seal(&w.node, &p)).await;
    assert_eq!((s, error_code(&v)), (400, "wrong_kind"), "{v}");
    // A sealed box larger than any deployment is refused before it is stored.
    let p = Payload::Deploy(Sealed {
        contract_id: w.contract as u64,
        version: 1,
        sealed: vec![0; mailbox::MAX_DEPLOYMENT_BYTES + mailbox::SEAL_OVERHEAD + 1],
    });
    let (s, v) = h.post(paths::MAILBOX, &seal(&w.twin, &p)).await;
    assert!(s == 400 || s == 413, "{s} {v}");
    let (s, v) = h.get(&paths::contract_status(w.contract as u64)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    assert_eq!(contract_view(&h, w.contract).await.deployment_version, None);
}

async fn cancellation_reaches_the_mailbox(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract, 1)).await;
    assert_eq!(s, 201, "{v}");
    let seen = poll(&h, &w.node, 0, 0).await.rev;
    let p = Payload::CancelContract {
        contract_id: w.contract as u64,
    };
    let (s, v) = h.post(paths::CONTRACTS_CANCEL, &seal(&w.twin, &p)).await;
    assert_eq!(s, 200, "{v}");
    let page = poll(&h, &w.node, seen, 0).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].state, ContractState::Cancelled);
    // A cancelled contract takes no deployment, but the node may still say it tore down.
    let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract, 2)).await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
    let (s, v) = post_status(
        &h,
        &w.node,
        &w.twin,
        &status(w.contract, 1, DeploymentState::Deleted),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

async fn a_long_mailbox_comes_in_pages(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    let mut ids = vec![w.contract];
    for _ in 0..39 {
        ids.push(contract(&h, &w.twin, w.node_id).await);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = poll(&h, &w.node, after, 0).await;
        pages += 1;
        let revs: Vec<i64> = page.items.iter().map(|i| i.rev).collect();
        assert!(revs.windows(2).all(|p| p[0] < p[1]), "{revs:?}");
        seen.extend(page.items.iter().map(|i| i.contract_id));
        after = page.rev;
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(seen, ids);
}

async fn nodes_publish_their_box_key(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    let (s, v) = h.get(&paths::node(w.node_id as u64)).await;
    assert_eq!(s, 200, "{v}");
    let n: NodeView = serde_json::from_value(v).unwrap();
    assert_eq!(
        n.box_key.unwrap(),
        mailbox::box_key_hex(&mailbox::box_public(&w.node.verifying_key()))
    );
    // Only 64 lowercase hex digits are a box key.
    let farm = h.farm("bad-box-farm").await;
    for bad in ["AB".repeat(32), "ab".repeat(31), "zz".repeat(32)] {
        let mut reg = node_registration(farm, capacity());
        if let Payload::RegisterNode(r) = &mut reg {
            r.box_key = Some(bad);
        }
        let key = test_infra::client::new_key();
        let (s, v) = h.post(paths::NODES, &seal(&key, &reg)).await;
        assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    }
}

fn log_request(contract: i64, request: u64) -> mailbox::LogRequest {
    mailbox::LogRequest {
        contract_id: contract as u64,
        request,
        workload: "web".into(),
        max_bytes: 4096,
    }
}

/// What `grid logs` does: seal the request to the node's published box key.
async fn request_logs(
    h: &Registry,
    twin: &SigningKey,
    node: &SigningKey,
    r: &mailbox::LogRequest,
) -> (u16, Value) {
    let to = mailbox::box_public(&node.verifying_key());
    let p = Payload::RequestLogs(Sealed {
        contract_id: r.contract_id,
        version: r.request,
        sealed: mailbox::seal_log_request(&to, r).unwrap(),
    });
    h.post(paths::MAILBOX_LOG_REQUEST, &seal(twin, &p)).await
}

async fn answer_logs(
    h: &Registry,
    node: &SigningKey,
    twin: &SigningKey,
    a: &mailbox::LogAnswer,
) -> (u16, Value) {
    let p = Payload::Logs(Sealed {
        contract_id: a.contract_id,
        version: a.request,
        sealed: mailbox::seal_log_answer(&twin.verifying_key(), a).unwrap(),
    });
    h.post(paths::MAILBOX_LOGS, &seal(node, &p)).await
}

fn log_answer(contract: i64, request: u64, data: &[u8]) -> mailbox::LogAnswer {
    mailbox::LogAnswer {
        contract_id: contract as u64,
        request,
        workload: "web".into(),
        data: data.to_vec(),
        error: None,
    }
}

async fn a_log_request_reaches_the_node_and_its_answer_the_twin(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract, 1)).await;
    assert_eq!(s, 201, "{v}");
    let seen = poll(&h, &w.node, 0, 0).await;
    assert!(seen.items[0].log_request.is_none());
    let (s, v) = h.get(&paths::contract_logs(w.contract as u64)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");

    // A waiting poll wakes for the request: the twin is not kept waiting a poll round.
    let client = (*h).clone();
    let node = w.node.clone();
    let after = seen.rev;
    let waiting = tokio::spawn(async move {
        let p = Payload::PollMailbox {
            after: after as u64,
            wait_secs: 20,
        };
        client.post(paths::MAILBOX_POLL, &seal(&node, &p)).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let req = log_request(w.contract, 5);
    let (s, v) = request_logs(&h, &w.twin, &w.node, &req).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the poll did not wake for the log request")
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let page: MailboxPage = serde_json::from_value(v).unwrap();
    assert_eq!(page.items.len(), 1);
    let item = &page.items[0];
    // The deployment comes along unchanged; the node knows it already.
    assert_eq!(open_item(item, &w.node).version, 1);
    let env = Envelope::from_json(item.log_request.as_ref().unwrap()).unwrap();
    let verified = env.open_relayed().unwrap();
    assert_eq!(verified.signer_hex, item.twin_key);
    let Payload::RequestLogs(sealed) = verified.payload else {
        panic!("not a log request")
    };
    assert_eq!(
        mailbox::open_log_request(&mailbox::box_secret(&w.node), &sealed.sealed).unwrap(),
        req
    );
    assert_eq!(contract_view(&h, w.contract).await.log_request, Some(5));

    let answer = log_answer(w.contract, 5, b"hello from web\n\x1b[0m\xff");
    let (s, v) = answer_logs(&h, &w.node, &w.twin, &answer).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h.get(&paths::contract_logs(w.contract as u64)).await;
    assert_eq!(s, 200, "{v}");
    let view: LogsView = serde_json::from_value(v).unwrap();
    assert_eq!((view.request, view.node_id), (5, w.node_id));
    let verified = Envelope::from_json(&view.envelope)
        .unwrap()
        .open_relayed()
        .unwrap();
    assert_eq!(verified.signer_hex, view.node_key);
    let Payload::Logs(sealed) = verified.payload else {
        panic!("not logs")
    };
    assert_eq!(
        mailbox::open_log_answer(&w.twin, &sealed.sealed).unwrap(),
        answer
    );
    // The registry cannot read it: the box opens with the twin's key only.
    assert!(mailbox::open_log_answer(&w.node, &sealed.sealed).is_err());
    // Answered: the request no longer rides along in the mailbox.
    let all = poll(&h, &w.node, 0, 0).await;
    assert!(all.items[0].log_request.is_none());
    assert!(poll(&h, &w.node, page.rev, 0).await.items.is_empty());
    // The node may answer the same request again (after a restart); the newer answer wins.
    let again = log_answer(w.contract, 5, b"more");
    let (s, v) = answer_logs(&h, &w.node, &w.twin, &again).await;
    assert_eq!(s, 201, "{v}");
}

async fn bad_log_requests_and_answers_change_nothing(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let w = world(&h).await;
    // Nothing deployed: nothing to read.
    let (s, v) = request_logs(&h, &w.twin, &w.node, &log_request(w.contract, 1)).await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
    let (s, v) = deploy(&h, &w.twin, w.node_id, &deployment(w.contract, 1)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = request_logs(&h, &w.twin, &w.node, &log_request(w.contract, 10)).await;
    assert_eq!(s, 201, "{v}");
    let before = (
        poll(&h, &w.node, 0, 0).await,
        contract_view(&h, w.contract).await,
    );

    // The same or a lower number, freshly signed, is stale.
    for n in [10, 3] {
        let (s, v) = request_logs(&h, &w.twin, &w.node, &log_request(w.contract, n)).await;
        assert_eq!((s, error_code(&v)), (409, "stale_version"), "{v}");
    }
    // Another twin cannot read this contract's workloads; a node cannot ask at all.
    let (other, _) = h.twin().await;
    let (s, v) = request_logs(&h, &other, &w.node, &log_request(w.contract, 11)).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = request_logs(&h, &w.node, &w.node, &log_request(w.contract, 11)).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");
    let (s, v) = request_logs(&h, &w.twin, &w.node, &log_request(w.contract + 1000, 11)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    // A box larger than any request, or empty, is refused before it is stored.
    for sealed in [
        vec![1; mailbox::MAX_LOG_REQUEST_BYTES + mailbox::SEAL_OVERHEAD + 1],
        vec![],
    ] {
        let p = Payload::RequestLogs(Sealed {
            contract_id: w.contract as u64,
            version: 11,
            sealed,
        });
        let (s, v) = h.post(paths::MAILBOX_LOG_REQUEST, &seal(&w.twin, &p)).await;
        assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    }
    // A log request is not a deployment: the wrong door refuses it.
    let p = Payload::RequestLogs(Sealed {
        contract_id: w.contract as u64,
        version: 11,
        sealed: vec![1; 100],
    });
    let (s, v) = h.post(paths::MAILBOX, &seal(&w.twin, &p)).await;
    assert_eq!((s, error_code(&v)), (400, "wrong_kind"), "{v}");

    // Answers: only the contract's node, only to the request outstanding.
    let (stranger, _) = h.node(h.farm("other-farm").await, capacity()).await;
    let (s, v) = answer_logs(&h, &stranger, &w.twin, &log_answer(w.contract, 10, b"x")).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = answer_logs(&h, &w.node, &w.twin, &log_answer(w.contract, 11, b"x")).await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
    let (s, v) = answer_logs(&h, &w.node, &w.twin, &log_answer(w.contract, 9, b"x")).await;
    assert_eq!((s, error_code(&v)), (409, "stale_version"), "{v}");
    let (s, v) = answer_logs(&h, &w.twin, &w.twin, &log_answer(w.contract, 10, b"x")).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");

    let after = (
        poll(&h, &w.node, 0, 0).await,
        contract_view(&h, w.contract).await,
    );
    assert_eq!(before, after, "a refused request changed the mailbox");
    let (s, v) = h.get(&paths::contract_logs(w.contract as u64)).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");

    // The same envelope twice is a replay; a cancelled contract takes no more requests.
    let to = mailbox::box_public(&w.node.verifying_key());
    let p = Payload::RequestLogs(Sealed {
        contract_id: w.contract as u64,
        version: 12,
        sealed: mailbox::seal_log_request(&to, &log_request(w.contract, 12)).unwrap(),
    });
    let env = seal(&w.twin, &p);
    let (s, v) = h.post(paths::MAILBOX_LOG_REQUEST, &env).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h.post(paths::MAILBOX_LOG_REQUEST, &env).await;
    // Refused as stale before its nonce is even looked at.
    assert_eq!(s, 409, "{v}");
    assert_eq!(contract_view(&h, w.contract).await.log_request, Some(12));
    let p = Payload::CancelContract {
        contract_id: w.contract as u64,
    };
    let (s, v) = h.post(paths::CONTRACTS_CANCEL, &seal(&w.twin, &p)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = request_logs(&h, &w.twin, &w.node, &log_request(w.contract, 13)).await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
}
