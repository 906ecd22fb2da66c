//! The reconciler against its state directory on disk, with a provisioner and a reporter
//! that record what they are asked: what a node does with every kind of mailbox item,
//! honest or not, and what comes back after a restart.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use gridapi::{ContractState, MailboxItem, MailboxPage};
use gridtypes::deployment::{Deployment, Volume, Workload, WorkloadKind};
use gridtypes::mailbox::{self, DeploymentState, DeploymentStatus, WorkloadStatus};
use gridtypes::{Envelope, Payload, Resources, Sealed, NONCE_LEN};
use rand::rngs::OsRng;
use rand::RngCore;
use reconcile::{Provisioner, Reconciler, Reporter, Store};

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// What the runtime says when asked how workloads stand now (`None`: it cannot say).
type Now = Arc<Mutex<Option<Vec<WorkloadStatus>>>>;

/// A world's log and "now" answers, as one provisioner.
fn recording(log: &Log, now: &Now) -> Recording {
    Recording(log.clone(), now.clone())
}

/// Runs nothing, records every call; a workload named `bad` fails.
struct Recording(Log, Now);

impl Provisioner for Recording {
    async fn apply(
        &self,
        contract: i64,
        twin: &str,
        d: &Deployment,
        _: &Resources,
    ) -> Vec<WorkloadStatus> {
        assert_eq!(twin.len(), 64, "not the twin's key: {twin}");
        self.0.push(format!("apply {contract} v{}", d.version));
        d.workloads
            .iter()
            .map(|w| WorkloadStatus {
                name: w.name().to_string(),
                state: if w.name() == "bad" {
                    DeploymentState::Failed
                } else {
                    DeploymentState::Running
                },
                reason: (w.name() == "bad").then(|| "x".repeat(2000)),
                address: None,
                kind: None,
            })
            .collect()
    }

    async fn remove(&self, contract: i64) -> Result<(), String> {
        self.0.push(format!("remove {contract}"));
        Ok(())
    }

    async fn current(&self, _: i64) -> Option<Vec<WorkloadStatus>> {
        self.1.lock().unwrap().clone()
    }

    /// More output than asked for (the reconciler keeps the tail); `gone` is unknown.
    async fn logs(&self, contract: i64, name: &str, max_bytes: u32) -> Result<Vec<u8>, String> {
        self.0.push(format!("logs {contract} {name} {max_bytes}"));
        if name == "gone" {
            return Err(format!("no workload {name:?}"));
        }
        let mut out = vec![b'x'; 10];
        out.extend(std::iter::repeat_n(b'y', max_bytes as usize));
        Ok(out)
    }
}

/// Seals each status to the twin as the agent would, opens it again, and records it; can
/// be told the registry is down.
#[derive(Clone)]
struct Twin {
    key: SigningKey,
    sent: Arc<Mutex<Vec<DeploymentStatus>>>,
    answers: Arc<Mutex<Vec<mailbox::LogAnswer>>>,
    down: Arc<Mutex<bool>>,
}

impl Reporter for Twin {
    async fn send(&self, twin_key: &str, status: &DeploymentStatus) -> bool {
        if *self.down.lock().unwrap() {
            return false;
        }
        let to = gridtypes::parse_public_key(twin_key).unwrap();
        let sealed = mailbox::seal_status(&to, status).unwrap();
        let opened = mailbox::open_status(&self.key, &sealed).unwrap();
        self.sent.lock().unwrap().push(opened);
        true
    }

    async fn send_logs(&self, twin_key: &str, answer: &mailbox::LogAnswer) -> bool {
        if *self.down.lock().unwrap() {
            return false;
        }
        let to = gridtypes::parse_public_key(twin_key).unwrap();
        let sealed = mailbox::seal_log_answer(&to, answer).unwrap();
        let opened = mailbox::open_log_answer(&self.key, &sealed).unwrap();
        self.answers.lock().unwrap().push(opened);
        true
    }
}

impl Twin {
    fn sent(&self) -> Vec<(u64, DeploymentState)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
            .into_iter()
            .map(|s| (s.version, s.state))
            .collect()
    }
}

struct World {
    dir: tempfile::TempDir,
    node: SigningKey,
    twin: Twin,
    log: Log,
    now: Now,
    rev: i64,
}

const CONTRACT: i64 = 7;

fn limits() -> Resources {
    Resources {
        cru: 1,
        mru: 1 << 30,
        sru: 1 << 30,
        hru: 0,
        ipv4: 0,
    }
}

fn volumes(version: u64, names: &[&str]) -> Deployment {
    Deployment {
        contract_id: CONTRACT as u64,
        version,
        workloads: names
            .iter()
            .map(|n| {
                Workload::Volume(Volume {
                    name: n.to_string(),
                    size: 64 << 20,
                    disk: Default::default(),
                })
            })
            .collect(),
    }
}

fn signed(key: &SigningKey, p: &Payload) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    Envelope::seal(key, p, gridtypes::now(), nonce).to_json()
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            node: SigningKey::generate(&mut OsRng),
            twin: Twin {
                key: SigningKey::generate(&mut OsRng),
                sent: Default::default(),
                answers: Default::default(),
                down: Default::default(),
            },
            log: Log::default(),
            now: Now::default(),
            rev: 0,
        }
    }

    fn reconciler(&self) -> Reconciler<Recording, Twin> {
        Reconciler::open(
            Store::open(self.dir.path()).unwrap(),
            mailbox::box_secret(&self.node),
            recording(&self.log, &self.now),
            self.twin.clone(),
        )
        .unwrap()
    }

    fn item(&mut self, state: ContractState, deployment: Option<Vec<u8>>) -> MailboxPage {
        self.rev += 1;
        MailboxPage {
            items: vec![MailboxItem {
                contract_id: CONTRACT,
                rev: self.rev,
                state,
                twin_id: 1,
                twin_key: hex::encode(self.twin.key.verifying_key().as_bytes()),
                resources: limits(),
                deployment,
                log_request: None,
            }],
            rev: self.rev,
            more: false,
        }
    }

    /// The twin's deployment as the registry relays it, sealed to `to` and signed by `by`.
    fn deploy_as(&mut self, by: &SigningKey, to: &SigningKey, d: &Deployment) -> MailboxPage {
        let sealed =
            mailbox::seal_deployment(&mailbox::box_public(&to.verifying_key()), d).unwrap();
        let p = Payload::Deploy(Sealed {
            contract_id: d.contract_id,
            version: d.version,
            sealed,
        });
        let raw = signed(by, &p);
        self.item(ContractState::Active, Some(raw))
    }

    /// The twin's log request as the registry relays it, next to the contract's deployment
    /// `deployment`: sealed to `to` and signed by `by`.
    fn ask_logs_as(
        &mut self,
        by: &SigningKey,
        to: &SigningKey,
        deployment: &MailboxPage,
        r: &mailbox::LogRequest,
    ) -> MailboxPage {
        let sealed = mailbox::seal(
            &mailbox::box_public(&to.verifying_key()),
            &serde_json::to_vec(r).unwrap(),
        )
        .unwrap();
        let p = Payload::RequestLogs(Sealed {
            contract_id: r.contract_id,
            version: r.request,
            sealed,
        });
        let mut page = self.item(
            deployment.items[0].state,
            deployment.items[0].deployment.clone(),
        );
        page.items[0].log_request = Some(signed(by, &p));
        page
    }

    fn ask_logs(&mut self, deployment: &MailboxPage, r: &mailbox::LogRequest) -> MailboxPage {
        let (twin, node) = (self.twin.key.clone(), self.node.clone());
        self.ask_logs_as(&twin, &node, deployment, r)
    }

    fn deploy(&mut self, d: &Deployment) -> MailboxPage {
        let (twin, node) = (self.twin.key.clone(), self.node.clone());
        self.deploy_as(&twin, &node, d)
    }
}

#[tokio::test]
async fn a_deployment_is_provisioned_and_reported() {
    let mut w = World::new();
    let mut r = w.reconciler();
    // A new contract: remembered, nothing to run or say yet.
    r.take(&w.item(ContractState::Active, None)).await.unwrap();
    assert!(w.log.take().is_empty());
    assert!(w.twin.sent().is_empty());
    assert_eq!(r.records()[&CONTRACT].version, 0);

    let page = w.deploy(&volumes(1, &["data"]));
    r.take(&page).await.unwrap();
    assert_eq!(w.log.take(), ["apply 7 v1"]);
    assert_eq!(
        w.twin.sent(),
        [
            (1, DeploymentState::Provisioning),
            (1, DeploymentState::Running)
        ]
    );
    assert_eq!(r.cursor(), page.rev);
    assert_eq!(
        r.records()[&CONTRACT].deployment,
        Some(volumes(1, &["data"]))
    );
    // What the consumption reports carry as used.
    assert_eq!(r.reserved().sru, 64 << 20);

    // A failing workload fails the deployment, with its reason cut to the bound.
    r.take(&w.deploy(&volumes(2, &["data", "bad"])))
        .await
        .unwrap();
    assert_eq!(w.log.take(), ["apply 7 v2"]);
    let status = r.records()[&CONTRACT].status.clone().unwrap();
    assert_eq!(status.state, DeploymentState::Failed);
    assert!(status.workloads[1].reason.as_ref().unwrap().len() <= mailbox::MAX_REASON);
    // The kind comes from the deployment, whatever the runtime said (here: nothing).
    assert_eq!(status.workloads[1].kind, Some(WorkloadKind::Volume));

    // An empty version removes everything and says so.
    r.take(&w.deploy(&volumes(3, &[]))).await.unwrap();
    assert_eq!(w.log.take(), ["apply 7 v3"]);
    assert_eq!(w.twin.sent().last(), Some(&(3, DeploymentState::Deleted)));
}

/// A workload that crashes after `apply` returned: the next refresh tells the twin, with the
/// same version; nothing changed, nothing is sent; a runtime that cannot say changes nothing.
#[tokio::test]
async fn later_changes_of_workloads_reach_the_twin() {
    let mut w = World::new();
    let mut r = w.reconciler();
    r.take(&w.deploy(&volumes(1, &["data", "logs"])))
        .await
        .unwrap();
    w.twin.sent();
    r.refresh().await.unwrap();
    assert!(w.twin.sent().is_empty(), "the runtime said nothing");
    let crashed = WorkloadStatus {
        name: "logs".into(),
        state: DeploymentState::Failed,
        reason: Some("killed by signal 9".into()),
        address: None,
        kind: None,
    };
    *w.now.lock().unwrap() = Some(vec![crashed.clone()]);
    r.refresh().await.unwrap();
    assert_eq!(w.twin.sent(), [(1, DeploymentState::Failed)]);
    let status = r.records()[&CONTRACT].status.clone().unwrap();
    assert_eq!(status.workloads[0].state, DeploymentState::Running);
    assert_eq!(
        status.workloads[1],
        WorkloadStatus {
            kind: Some(WorkloadKind::Volume),
            ..crashed.clone()
        }
    );
    r.refresh().await.unwrap();
    assert!(w.twin.sent().is_empty(), "nothing changed since");
    // It runs again: running again.
    *w.now.lock().unwrap() = Some(vec![WorkloadStatus {
        state: DeploymentState::Running,
        reason: None,
        ..crashed
    }]);
    r.refresh().await.unwrap();
    assert_eq!(w.twin.sent(), [(1, DeploymentState::Running)]);
    assert!(w.log.take().iter().all(|l| l.starts_with("apply")));
}

#[tokio::test]
async fn replays_and_old_versions_change_nothing() {
    let mut w = World::new();
    let mut r = w.reconciler();
    let v2 = w.deploy(&volumes(2, &["data"]));
    let v1 = w.deploy(&volumes(1, &["old"]));
    r.take(&v2).await.unwrap();
    w.log.take();
    w.twin.sent();
    // The same version again (a re-poll, a replay), then an older one arriving late.
    for page in [&v2, &v1] {
        let mut page = page.clone();
        page.items[0].rev = 100;
        r.take(&page).await.unwrap();
    }
    assert!(w.log.take().is_empty());
    assert!(w.twin.sent().is_empty());
    assert_eq!(r.records()[&CONTRACT].version, 2);
    assert_eq!(
        r.records()[&CONTRACT].deployment,
        Some(volumes(2, &["data"]))
    );
}

#[tokio::test]
async fn forged_foreign_and_oversized_deployments_are_refused() {
    let mut w = World::new();
    let mut r = w.reconciler();
    r.take(&w.deploy(&volumes(1, &["data"]))).await.unwrap();
    w.log.take();
    w.twin.sent();

    // Signed by someone else than the contract's twin (the registry or another twin).
    let stranger = SigningKey::generate(&mut OsRng);
    let node = w.node.clone();
    r.take(&w.deploy_as(&stranger, &node, &volumes(5, &["evil"])))
        .await
        .unwrap();
    assert!(w.log.take().is_empty());
    assert!(w.twin.sent().is_empty());

    // Sealed to another node: the twin hears why, what runs stays.
    let twin = w.twin.key.clone();
    r.take(&w.deploy_as(&twin, &stranger, &volumes(2, &["data"])))
        .await
        .unwrap();
    assert!(w.log.take().is_empty());
    assert_eq!(w.twin.sent(), [(2, DeploymentState::Failed)]);
    let rec = &r.records()[&CONTRACT];
    assert!(rec
        .status
        .as_ref()
        .unwrap()
        .reason
        .as_ref()
        .unwrap()
        .contains("does not open"));
    assert_eq!(rec.deployment, Some(volumes(1, &["data"])));

    // More than the contract holds.
    let mut big = volumes(3, &["data"]);
    if let Workload::Volume(v) = &mut big.workloads[0] {
        v.size = 2 << 30;
    }
    r.take(&w.deploy(&big)).await.unwrap();
    assert!(w.log.take().is_empty());
    assert_eq!(w.twin.sent(), [(3, DeploymentState::Failed)]);

    // A box whose content names another version than its envelope.
    let sealed = mailbox::seal_deployment(
        &mailbox::box_public(&w.node.verifying_key()),
        &volumes(9, &["data"]),
    )
    .unwrap();
    let p = Payload::Deploy(Sealed {
        contract_id: CONTRACT as u64,
        version: 4,
        sealed,
    });
    let raw = signed(&w.twin.key, &p);
    r.take(&w.item(ContractState::Active, Some(raw)))
        .await
        .unwrap();
    assert!(w.log.take().is_empty());
    assert_eq!(w.twin.sent(), [(4, DeploymentState::Failed)]);

    // Bytes that are not an envelope at all.
    r.take(&w.item(ContractState::Active, Some(b"{\"x\":1}".to_vec())))
        .await
        .unwrap();
    assert!(w.log.take().is_empty());
    assert!(w.twin.sent().is_empty());
    assert_eq!(
        r.records()[&CONTRACT].deployment,
        Some(volumes(1, &["data"]))
    );
}

#[tokio::test]
async fn a_restart_brings_deployments_back_and_finishes_teardowns() {
    let mut w = World::new();
    {
        let mut r = w.reconciler();
        r.take(&w.deploy(&volumes(1, &["data"]))).await.unwrap();
    }
    w.log.take();
    w.twin.sent();
    let mut r = w.reconciler();
    assert_eq!(r.cursor(), w.rev);
    r.restore().await.unwrap();
    assert_eq!(w.log.take(), ["apply 7 v1"]);
    assert_eq!(
        w.twin.sent(),
        [
            (1, DeploymentState::Provisioning),
            (1, DeploymentState::Running)
        ]
    );

    // Cancelled while the node was off: the first poll after the restart tears it down.
    r.take(&w.item(ContractState::Cancelled, None))
        .await
        .unwrap();
    assert_eq!(w.log.take(), ["remove 7"]);
    assert_eq!(w.twin.sent(), [(1, DeploymentState::Deleted)]);
    assert_eq!(
        r.reserved(),
        Resources::default(),
        "a torn-down contract reserves nothing"
    );
    // Nothing brings a cancelled contract back, not even an old active item.
    let page = w.deploy(&volumes(2, &["data"]));
    r.take(&page).await.unwrap();
    assert!(w.log.take().is_empty());

    let mut r = w.reconciler();
    r.restore().await.unwrap();
    assert_eq!(
        w.log.take(),
        ["remove 7"],
        "a teardown is finished (again) after a restart"
    );
    assert!(w.twin.sent().is_empty());
}

#[tokio::test]
async fn statuses_wait_for_the_registry_and_only_the_newest_goes() {
    let mut w = World::new();
    let mut r = w.reconciler();
    *w.twin.down.lock().unwrap() = true;
    r.take(&w.deploy(&volumes(1, &["data"]))).await.unwrap();
    r.take(&w.deploy(&volumes(2, &["data", "more"])))
        .await
        .unwrap();
    assert_eq!(r.unsent(), 1);
    // Still unsent after a restart.
    let mut r = w.reconciler();
    assert_eq!(r.unsent(), 1);
    *w.twin.down.lock().unwrap() = false;
    r.flush().await.unwrap();
    assert_eq!(w.twin.sent(), [(2, DeploymentState::Running)]);
    assert_eq!(r.unsent(), 0);
}

#[tokio::test]
async fn an_unreadable_record_is_moved_aside_not_lost() {
    let w = World::new();
    std::fs::write(w.dir.path().join("contract-3.json"), b"{not json").unwrap();
    std::fs::write(w.dir.path().join("cursor"), b"garbage").unwrap();
    let r = w.reconciler();
    assert!(r.records().is_empty());
    assert_eq!(r.cursor(), 0);
    assert!(w.dir.path().join("contract-3.corrupt").exists());
}

fn log_request(request: u64, workload: &str, max_bytes: u32) -> mailbox::LogRequest {
    mailbox::LogRequest {
        contract_id: CONTRACT as u64,
        request,
        workload: workload.into(),
        max_bytes,
    }
}

impl Twin {
    fn answers(&self) -> Vec<(u64, String, usize, Option<String>)> {
        std::mem::take(&mut *self.answers.lock().unwrap())
            .into_iter()
            .map(|a| (a.request, a.workload, a.data.len(), a.error))
            .collect()
    }
}

/// A log request is answered once, with the tail asked for, sealed to the twin; whatever the
/// twin did not say itself is ignored, and what the twin sent unreadable is answered so.
#[tokio::test]
async fn log_requests_are_answered_once_with_the_tail() {
    let mut w = World::new();
    let mut r = w.reconciler();
    let deployed = w.deploy(&volumes(1, &["web"]));
    r.take(&deployed).await.unwrap();
    w.log.take();
    w.twin.sent();

    let ask = w.ask_logs(&deployed, &log_request(1, "web", 100));
    r.take(&ask).await.unwrap();
    // The deployment riding along is not applied again.
    assert_eq!(w.log.take(), ["logs 7 web 100"]);
    assert_eq!(w.twin.answers(), [(1, "web".into(), 100, None)]);
    assert!(w.twin.sent().is_empty());
    // The same request relayed again (a replay, or a registry that did not see the answer).
    r.take(&ask).await.unwrap();
    let old = w.ask_logs(&deployed, &log_request(1, "web", 5));
    r.take(&old).await.unwrap();
    assert!(w.log.take().is_empty());
    assert!(w.twin.answers().is_empty());

    // An unknown workload: the twin learns why.
    r.take(&w.ask_logs(&deployed, &log_request(2, "gone", 100)))
        .await
        .unwrap();
    let a = w.twin.answers();
    assert_eq!((a[0].0, a[0].2), (2, 0));
    assert!(a[0].3.as_ref().unwrap().contains("gone"), "{a:?}");
    assert_eq!(w.log.take(), ["logs 7 gone 100"]);

    // Sealed to another node: answered as unreadable; out of range inside: the same.
    let stranger = SigningKey::generate(&mut OsRng);
    let twin = w.twin.key.clone();
    r.take(&w.ask_logs_as(&twin, &stranger, &deployed, &log_request(3, "web", 100)))
        .await
        .unwrap();
    r.take(&w.ask_logs(&deployed, &log_request(4, "web", 0)))
        .await
        .unwrap();
    let a = w.twin.answers();
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a[0].3.as_ref().unwrap().contains("does not open"), "{a:?}");
    assert!(a[1].3.as_ref().unwrap().contains("max_bytes"), "{a:?}");
    // Signed by someone else: not the twin's word, nothing read, nothing said.
    let node = w.node.clone();
    r.take(&w.ask_logs_as(&stranger, &node, &deployed, &log_request(5, "web", 100)))
        .await
        .unwrap();
    assert!(w.log.take().is_empty());
    assert!(w.twin.answers().is_empty());

    // The registry is down: the answer waits, then goes.
    *w.twin.down.lock().unwrap() = true;
    r.take(&w.ask_logs(&deployed, &log_request(6, "web", 10)))
        .await
        .unwrap();
    assert_eq!(r.unsent(), 1);
    *w.twin.down.lock().unwrap() = false;
    r.flush().await.unwrap();
    assert_eq!(w.twin.answers(), [(6, "web".into(), 10, None)]);
    assert_eq!(r.unsent(), 0);

    // A contract torn down has no output to give.
    r.take(&w.item(ContractState::Cancelled, None))
        .await
        .unwrap();
    w.log.take();
    let mut gone = w.ask_logs(&deployed, &log_request(7, "web", 10));
    gone.items[0].state = ContractState::Cancelled;
    r.take(&gone).await.unwrap();
    assert!(w.log.take().is_empty());
    assert!(w.twin.answers().is_empty());
}
