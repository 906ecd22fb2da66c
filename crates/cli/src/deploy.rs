//! `grid deploy` and `grid deployments`: a twin's workloads, sealed to the node through the
//! registry's mailbox, and the node's sealed answers opened again.

use std::path::Path;

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use gridapi::{paths, ContractState, ContractView, ErrorCode, NodeView, StatusView};
use gridtypes::deployment::{Deployment, Workload};
use gridtypes::mailbox::{self, DeploymentState, DeploymentStatus};
use gridtypes::{Envelope, Payload, Sealed};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};

/// Largest app file read: a deployment is at most 16 KiB of JSON, YAML adds little.
const MAX_APP_FILE: u64 = 256 * 1024;

/// An app file: the workloads of one deployment, sizes in bytes or with a unit
/// (`256MiB`, `2GiB`, `1TB`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    workloads: Vec<Workload>,
}

/// Keys whose values are sizes in bytes anywhere in a workload.
const SIZE_KEYS: &[&str] = &["mru", "sru", "hru", "size"];

/// Reads an app file (YAML or JSON) into workloads.
pub fn read_app(path: &Path) -> anyhow::Result<Vec<Workload>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_APP_FILE {
        bail!(
            "{} is {} bytes: an app file is at most {MAX_APP_FILE}",
            path.display(),
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_app(&text).with_context(|| format!("{} is not a valid app file", path.display()))
}

/// Parses app-file text; sizes with units become bytes first.
pub fn parse_app(text: &str) -> anyhow::Result<Vec<Workload>> {
    let yaml: serde_norway::Value = serde_norway::from_str(text)?;
    let mut json = serde_json::to_value(yaml)?;
    sizes_to_bytes(&mut json, None)?;
    let app: AppFile = serde_json::from_value(json)?;
    Ok(app.workloads)
}

fn sizes_to_bytes(v: &mut serde_json::Value, key: Option<&str>) -> anyhow::Result<()> {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                sizes_to_bytes(v, Some(k))?;
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                sizes_to_bytes(v, None)?;
            }
        }
        serde_json::Value::String(s) if key.is_some_and(|k| SIZE_KEYS.contains(&k)) => {
            let bytes = parse_size::parse_size(s.as_str()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {s:?} is not a size ({e}): use e.g. 256MiB, 2GiB or 1TB",
                    key.unwrap_or("")
                )
            })?;
            *v = serde_json::Value::from(bytes);
        }
        _ => {}
    }
    Ok(())
}

/// What `grid deploy` and `grid deployments delete` print.
#[derive(Serialize)]
pub struct Posted {
    /// The contract.
    pub contract_id: u64,
    /// Its node.
    pub node_id: i64,
    /// The version posted.
    pub version: u64,
    /// How many workloads it holds.
    pub workloads: usize,
}

/// Posts `workloads` as the next version of contract `id`'s deployment, sealed to its node.
pub async fn post(
    client: &Client,
    key: &SigningKey,
    id: u64,
    workloads: Vec<Workload>,
) -> anyhow::Result<Posted> {
    let c: ContractView = client.get(&paths::contract(id)).await?;
    if c.state != ContractState::Active {
        bail!("contract {id} is cancelled: create a new one with `grid contracts create`");
    }
    let me = hex::encode(key.verifying_key().as_bytes());
    let node: NodeView = client.get(&paths::node(c.node_id as u64)).await?;
    let Some(box_key) = node.box_key.as_deref() else {
        bail!(
            "node {} publishes no box key: its agent ({}) takes no deployments",
            node.id,
            node.agent_version.as_deref().unwrap_or("unknown version")
        );
    };
    let to = mailbox::parse_box_key(box_key)?;
    let d = Deployment {
        contract_id: id,
        version: c.deployment_version.map_or(1, |v| v as u64 + 1),
        workloads,
    };
    // Checked here too, so a mistake is reported before anything is sent.
    d.validate()?;
    d.fits(&c.resources)?;
    let payload = Payload::Deploy(Sealed {
        contract_id: id,
        version: d.version,
        sealed: mailbox::seal_deployment(&to, &d)?,
    });
    payload.validate()?;
    match client.post_signed(paths::MAILBOX, key, &payload).await {
        Ok(_) => {}
        Err(ClientError::Refused {
            code: ErrorCode::Forbidden,
            ..
        }) => bail!("contract {id} belongs to another twin (your key is {me})"),
        Err(
            e @ ClientError::Refused {
                code: ErrorCode::StaleVersion,
                ..
            },
        ) => {
            return Err(anyhow::Error::new(e)
                .context("another deploy of this contract landed first: run the command again"))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Posted {
        contract_id: id,
        node_id: c.node_id,
        version: d.version,
        workloads: d.workloads.len(),
    })
}

/// Where a contract's deployment stands, as the twin reads it.
#[derive(Serialize)]
pub struct Report {
    contract_id: i64,
    node_id: i64,
    contract_state: ContractState,
    /// The newest version the twin posted.
    deployment_version: Option<i64>,
    /// The newest version's state: `requested` until the node answers about it.
    state: Option<DeploymentState>,
    /// The node's latest status (perhaps of an older version), opened and verified.
    status: Option<DeploymentStatus>,
}

/// Reads contract `id`, and the node's latest status opened with `key` after checking the
/// node's signature on it.
pub async fn show(client: &Client, key: &SigningKey, id: u64) -> anyhow::Result<Report> {
    let c: ContractView = client.get(&paths::contract(id)).await?;
    let status = match client.get::<StatusView>(&paths::contract_status(id)).await {
        Ok(view) => Some(open_status(client, key, &c, &view).await?),
        Err(ClientError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => None,
        Err(e) => return Err(e.into()),
    };
    let state = c.deployment_version.map(|v| match &status {
        Some(s) if s.version as i64 == v => s.state,
        _ => DeploymentState::Requested,
    });
    Ok(Report {
        contract_id: c.id,
        node_id: c.node_id,
        contract_state: c.state,
        deployment_version: c.deployment_version,
        state,
        status,
    })
}

async fn open_status(
    client: &Client,
    key: &SigningKey,
    c: &ContractView,
    view: &StatusView,
) -> anyhow::Result<DeploymentStatus> {
    let node: NodeView = client.get(&paths::node(c.node_id as u64)).await?;
    let payload = signed_by_node(&view.envelope, &node, "status", c.id)?;
    let Payload::DeploymentStatus(sealed) = payload else {
        bail!("the node's status of contract {} is not a status", c.id);
    };
    let s = mailbox::open_status(key, &sealed.sealed)
        .with_context(|| format!("cannot open the status of contract {} with your key", c.id))?;
    if s.contract_id as i64 != c.id || s.version != sealed.version {
        bail!(
            "the sealed status names contract {} version {}, its envelope contract {} version {}: refused",
            s.contract_id,
            s.version,
            sealed.contract_id,
            sealed.version
        );
    }
    Ok(s)
}

/// The payload of `envelope` after checking that `node`'s own key signed it (the registry
/// relays it and could hand over anything); `what` of contract `contract` names it in errors.
pub(crate) fn signed_by_node(
    envelope: &[u8],
    node: &NodeView,
    what: &str,
    contract: i64,
) -> anyhow::Result<Payload> {
    let v = Envelope::from_json(envelope)?.open_relayed()?;
    if v.signer_hex != node.public_key {
        bail!(
            "the {what} of contract {contract} is signed by {}, not by node {} ({}): refused",
            v.signer_hex,
            node.id,
            node.public_key
        );
    }
    Ok(v.payload)
}

/// The human form of [`Report`].
pub fn report_text(r: &Report) -> String {
    let mut out = format!(
        "contract {} on node {} ({})\n",
        r.contract_id, r.node_id, r.contract_state
    );
    let Some(version) = r.deployment_version else {
        return out + "nothing deployed yet: grid deploy app.yaml --contract N\n";
    };
    let state = r.state.map_or("unknown", DeploymentState::as_str);
    out += &format!("deployment version {version}: {state}\n");
    if let Some(s) = &r.status {
        if s.version as i64 != version {
            out += &format!(
                "the node's latest answer is about version {}: {}\n",
                s.version,
                s.state.as_str()
            );
        }
        if let Some(reason) = &s.reason {
            out += &format!("reason: {reason}\n");
        }
        if !s.workloads.is_empty() {
            out += &format!(
                "{:<24} {:<13} {:<18} REASON\n",
                "WORKLOAD", "STATE", "ADDRESS"
            );
            for w in &s.workloads {
                out += &format!(
                    "{:<24} {:<13} {:<18} {}\n",
                    w.name,
                    w.state.as_str(),
                    w.address.as_deref().unwrap_or("-"),
                    w.reason.as_deref().unwrap_or("")
                );
            }
            out += &ssh_lines(&s.workloads, r.node_id);
        }
    }
    out
}

/// How to reach each running VM with SSH: its address and the key it was given. The user is
/// the image's (cloud-init's default user), which only the image knows.
fn ssh_lines(workloads: &[mailbox::WorkloadStatus], node: i64) -> String {
    let vms: Vec<(&str, &str)> = workloads
        .iter()
        .filter(|w| {
            w.kind == Some(gridtypes::deployment::WorkloadKind::Vm)
                && w.state == DeploymentState::Running
        })
        .filter_map(|w| Some((w.name.as_str(), w.address.as_deref()?)))
        .collect();
    if vms.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nSSH (with a key from the VM's ssh_keys; USER is the image's cloud-init user):\n",
    );
    for (name, address) in vms {
        out += &format!("  {name}: ssh USER@{address}\n");
    }
    out += &format!(
        "  from the twin's network on node {node}: twin networks are not reachable from \
         outside the node yet (docs/vms.md)\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_files_take_sizes_with_units() {
        let w = parse_app(
            "workloads:\n\
             - kind: container\n  name: web\n  image: 127.0.0.1:5000/hello:1\n  \
               resources: {cru: 1, mru: 256MiB, sru: 1GiB}\n\
             - kind: volume\n  name: data\n  size: 64MiB\n",
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].reserved().mru, 256 << 20);
        assert_eq!(w[1].reserved().sru, 64 << 20);
    }

    #[test]
    fn bad_app_files_say_what_is_wrong() {
        let e = parse_app("workloads:\n- kind: volume\n  name: d\n  size: lots\n").unwrap_err();
        assert!(format!("{e:#}").contains("size"), "{e:#}");
        let e = parse_app("workload: []\n").unwrap_err();
        assert!(format!("{e:#}").contains("workload"), "{e:#}");
        let e = parse_app("workloads:\n- kind: vm\n  name: x\n").unwrap_err();
        assert!(format!("{e:#}").contains("image"), "{e:#}");
        let e = parse_app("workloads:\n- kind: vmm\n  name: x\n").unwrap_err();
        assert!(format!("{e:#}").contains("vmm"), "{e:#}");
    }

    #[test]
    fn a_running_vm_gets_its_ssh_line() {
        use gridtypes::deployment::WorkloadKind;
        let w = |name: &str, kind, state, address: Option<&str>| mailbox::WorkloadStatus {
            name: name.into(),
            state,
            reason: None,
            address: address.map(str::to_string),
            kind,
        };
        let text = ssh_lines(
            &[
                w(
                    "box",
                    Some(WorkloadKind::Vm),
                    DeploymentState::Running,
                    Some("10.240.1.2"),
                ),
                w(
                    "web",
                    Some(WorkloadKind::Container),
                    DeploymentState::Running,
                    Some("10.240.1.3"),
                ),
                w(
                    "down",
                    Some(WorkloadKind::Vm),
                    DeploymentState::Failed,
                    None,
                ),
                w("old", None, DeploymentState::Running, Some("10.240.1.4")),
            ],
            5,
        );
        assert!(text.contains("  box: ssh USER@10.240.1.2\n"), "{text}");
        assert!(
            !text.contains("web") && !text.contains("down") && !text.contains("old"),
            "{text}"
        );
        assert!(text.contains("node 5"), "{text}");
        let none = ssh_lines(
            &[w(
                "web",
                Some(WorkloadKind::Container),
                DeploymentState::Running,
                Some("10.240.1.3"),
            )],
            5,
        );
        assert_eq!(none, "");
    }

    #[test]
    fn an_app_file_takes_a_vm_with_its_keys() {
        let w = parse_app(
            "workloads:\n\
             - kind: vm\n  name: box\n  image: 127.0.0.1:5000/vm:1\n  \
               ssh_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0dN0wJ8m4vD8pd0t3cLZfmhvbZlmB0wV2fQmBdpzC me\"]\n  \
               resources: {cru: 2, mru: 1GiB, sru: 10GiB}\n  volumes: [data]\n\
             - kind: volume\n  name: data\n  size: 1TB\n  disk: hdd\n",
        )
        .unwrap();
        let r = w[0].reserved();
        assert_eq!((r.cru, r.mru, r.sru), (2, 1 << 30, 10 << 30));
        assert!(matches!(&w[0], Workload::Vm(v) if v.volumes == ["data"]));
        let d = Deployment {
            contract_id: 1,
            version: 1,
            workloads: w,
        };
        d.validate().unwrap();
    }
}
