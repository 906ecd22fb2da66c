//! What nodes and twins say to the registry: the payloads carried inside signed envelopes.
//!
//! Each payload names its `kind`, so an endpoint refuses a message signed for another purpose.

use serde::{Deserialize, Serialize};

use crate::mailbox::{
    MAX_DEPLOYMENT_BYTES, MAX_LOG_ANSWER_BYTES, MAX_LOG_REQUEST_BYTES, MAX_STATUS_BYTES,
    SEAL_OVERHEAD,
};
use crate::units::Resources;

/// Longest farm name the registry accepts.
pub const MAX_FARM_NAME: usize = 64;
/// Most interfaces a node may describe in one registration.
pub const MAX_INTERFACES: usize = 64;
/// Longest free-text field (serial, agent version, interface name or address).
pub const MAX_TEXT: usize = 128;
/// Largest uptime a node may claim: 2^32 s, about 136 years.
pub const MAX_UPTIME_SECS: u64 = 1 << 32;
/// Most public traffic one consumption report may claim: 2^50 bytes (1 PiB; 400 Gbit/s
/// for more than five hours). The registry adds reports up saturating, never wrapping.
pub const MAX_TRAFFIC_BYTES: u64 = 1 << 50;
/// Largest payload of any kind, checked before the bytes are parsed.
pub const MAX_PAYLOAD_BYTES: usize = 32 * 1024;

/// Why payload bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Not JSON of a known payload shape (names the offending field where serde can).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// Well-formed but out of range.
    #[error("invalid payload: {0}")]
    Invalid(String),
    /// Larger than any honest message of its kind (whitespace padding included).
    #[error("{kind} payload is {len} bytes, more than the {max} bytes allowed for its kind")]
    TooLarge {
        /// The payload's kind, or `payload` when it was refused before parsing.
        kind: &'static str,
        /// Its size.
        len: usize,
        /// The limit for that kind.
        max: usize,
    },
}

/// Every message a node or twin can sign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Payload {
    /// A twin enters the phonebook with the key that signs this.
    RegisterTwin {},
    /// A twin creates a farm it owns.
    CreateFarm {
        /// Unique farm name.
        name: String,
    },
    /// A node registers (or re-registers) itself under a farm with its own key.
    RegisterNode(NodeRegistration),
    /// A node's periodic report.
    Report(Report),
    /// A twin reserves capacity on a node; what runs there comes later, sealed to the node.
    CreateContract(ContractRequest),
    /// A twin ends one of its contracts: the capacity is freed and the node tears down what
    /// ran under it.
    CancelContract {
        /// The contract to end.
        contract_id: u64,
    },
    /// A twin posts a version of a contract's deployment, sealed to the node
    /// ([`crate::mailbox`]); the registry keeps the newest and relays it.
    Deploy(Sealed),
    /// A node posts how a deployment version stands, sealed to the twin.
    DeploymentStatus(Sealed),
    /// A twin asks the node for a workload's output ([`crate::mailbox::LogRequest`], sealed
    /// to the node); `version` is the request's number, larger than the contract's last.
    RequestLogs(Sealed),
    /// A node answers the contract's outstanding log request
    /// ([`crate::mailbox::LogAnswer`], sealed to the twin); `version` is the request's number.
    Logs(Sealed),
    /// A node asks for what changed in its mailbox since `after`, waiting up to `wait_secs`
    /// for something to arrive (long poll: the node needs no inbound port).
    PollMailbox {
        /// The mailbox revision the node has already handled (0: everything).
        after: u64,
        /// How long the registry may hold the request when nothing is new.
        #[serde(default)]
        wait_secs: u32,
    },
}

/// Longest a mailbox poll may wait for news; well under every HTTP client's timeout.
pub const MAX_POLL_WAIT_SECS: u32 = 25;

/// A sealed box for one version of one contract's deployment: the registry reads the
/// numbers, never the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// The contract.
    pub contract_id: u64,
    /// The deployment version (the one it carries or the one its status describes).
    pub version: u64,
    /// The sealed box, base64.
    #[serde(with = "crate::envelope::b64")]
    pub sealed: Vec<u8>,
}

/// What a twin reserves on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractRequest {
    /// The node that will run the workloads.
    pub node_id: u64,
    /// Raw capacity reserved (bytes for memory and disks, as everywhere on the wire).
    pub resources: Resources,
}

/// A node's registration: which farm, what it has, how it can be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// The farm the node belongs to.
    pub farm_id: u64,
    /// Total raw capacity measured on the node.
    pub capacity: Resources,
    /// DMI serial number, if the firmware has one.
    #[serde(default)]
    pub serial: Option<String>,
    /// True when the node runs inside a hypervisor (such nodes earn nothing).
    #[serde(default)]
    pub virtualized: bool,
    /// Network interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Agent version that sent this.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// The X25519 key deployments are sealed to, lowercase hex ([`crate::mailbox`]). Nodes
    /// without one take no deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_key: Option<String>,
    /// Conditions the farmer and auditors must see, as in [`Report::Uptime`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A network interface of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses in CIDR notation.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// A report a node sends about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case", deny_unknown_fields)]
pub enum Report {
    /// Seconds since the node booted; the registry derives up/down time from successive ones.
    Uptime {
        /// Seconds since boot.
        uptime_secs: u64,
        /// The node's last report before an ordered shutdown or reboot: the registry shows it
        /// `stopped` at once instead of `up` until the up window runs out. Left out when false,
        /// so ordinary reports keep their bytes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stopping: bool,
        /// Conditions the farmer and auditors must see (e.g. the cache is on tmpfs: nothing
        /// the node keeps survives a reboot); repeated in every report while they last.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// The node's total capacity changed (a disk appeared or died).
    Capacity {
        /// Total raw capacity now.
        capacity: Resources,
        /// As in [`Report::Uptime`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// What workloads reserve and the public traffic they moved.
    Consumption(Consumption),
}

/// Resources reserved by workloads and traffic moved since the previous report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumption {
    /// Resources currently reserved by workloads.
    pub used: Resources,
    /// Public traffic in bytes since the previous consumption report.
    pub traffic_bytes: u64,
    /// Of that traffic, each contract's share: what the contract's twin is billed NU for.
    /// Left out when empty, so reports without contracts keep their bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contracts: Vec<ContractTraffic>,
}

/// One contract's public traffic in a consumption report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractTraffic {
    /// The contract.
    pub contract_id: u64,
    /// Its public traffic in bytes since the previous consumption report.
    pub traffic_bytes: u64,
}

/// Most contracts one consumption report may name.
pub const MAX_REPORTED_CONTRACTS: usize = 128;

impl Report {
    /// An uptime report without warnings.
    pub fn uptime(uptime_secs: u64) -> Report {
        Report::Uptime {
            uptime_secs,
            stopping: false,
            warnings: Vec::new(),
        }
    }
}

fn check_contract_id(id: u64) -> Result<(), PayloadError> {
    if id == 0 || id > i64::MAX as u64 {
        return Err(PayloadError::Invalid(format!(
            "contract_id {id} is out of range"
        )));
    }
    Ok(())
}

/// The most bytes a [`Payload::Deploy`] or [`Payload::DeploymentStatus`] takes: the base64 of
/// the largest sealed box plus room for the numbers and pretty-printing.
const MAX_SEALED_PAYLOAD: usize = sealed_payload(MAX_DEPLOYMENT_BYTES);

/// The most bytes a payload carrying a sealed box of `plain` bytes takes.
const fn sealed_payload(plain: usize) -> usize {
    (plain + SEAL_OVERHEAD).div_ceil(3) * 4 + 512
}

const _: () = assert!(sealed_payload(MAX_LOG_ANSWER_BYTES) <= MAX_PAYLOAD_BYTES);

/// At most this many warnings in one message, each at most [`MAX_TEXT`] bytes.
pub const MAX_WARNINGS: usize = 8;

fn check_warnings(warnings: &[String]) -> Result<(), PayloadError> {
    if warnings.len() > MAX_WARNINGS {
        return Err(PayloadError::Invalid(format!(
            "{} warnings, at most {MAX_WARNINGS}",
            warnings.len()
        )));
    }
    if warnings.iter().any(|w| w.len() > MAX_TEXT) {
        return Err(PayloadError::Invalid(format!(
            "warning longer than {MAX_TEXT} bytes"
        )));
    }
    Ok(())
}

/// The kind of a report, as stored and filtered by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// An uptime report.
    Uptime,
    /// A capacity report.
    Capacity,
    /// A consumption report.
    Consumption,
}

impl ReportKind {
    /// Name used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Uptime => "uptime",
            ReportKind::Capacity => "capacity",
            ReportKind::Consumption => "consumption",
        }
    }
}

impl Report {
    /// The kind of this report.
    pub fn kind(&self) -> ReportKind {
        match self {
            Report::Uptime { .. } => ReportKind::Uptime,
            Report::Capacity { .. } => ReportKind::Capacity,
            Report::Consumption(_) => ReportKind::Consumption,
        }
    }
}

impl Payload {
    /// Serialises to the bytes that get signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of integers and strings always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates payload bytes, refusing more bytes than the kind needs.
    pub fn from_bytes(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let too_large = |kind, max| PayloadError::TooLarge {
            kind,
            len: bytes.len(),
            max,
        };
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(too_large("payload", MAX_PAYLOAD_BYTES));
        }
        let p: Payload =
            serde_json::from_slice(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        let max = p.max_len();
        if bytes.len() > max {
            return Err(too_large(p.kind_name(), max));
        }
        p.validate()?;
        Ok(p)
    }

    /// The most bytes an honest message of this kind takes, with room for pretty-printing:
    /// what a stored message can cost the registry and every auditor who reads it.
    pub fn max_len(&self) -> usize {
        match self {
            Payload::RegisterTwin {}
            | Payload::CreateFarm { .. }
            | Payload::CreateContract(_)
            | Payload::CancelContract { .. }
            | Payload::PollMailbox { .. } => 512,
            // The base64 of the largest sealed deployment or status, and the numbers.
            Payload::Deploy(_) | Payload::DeploymentStatus(_) => MAX_SEALED_PAYLOAD,
            Payload::RequestLogs(_) => sealed_payload(MAX_LOG_REQUEST_BYTES),
            Payload::Logs(_) => sealed_payload(MAX_LOG_ANSWER_BYTES),
            // 8 warnings of 128 bytes even if every byte is escaped as \u00XX, plus the numbers.
            Payload::Report(Report::Uptime { .. } | Report::Capacity { .. }) => 8192,
            // The numbers, and 128 contracts of about 60 bytes each.
            Payload::Report(Report::Consumption(_)) => 1024 + MAX_REPORTED_CONTRACTS * 64,
            Payload::RegisterNode(_) => MAX_PAYLOAD_BYTES,
        }
    }

    /// The payload's kind, with the report's own kind for reports (for messages).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Payload::Report(r) => match r.kind() {
                ReportKind::Uptime => "uptime report",
                ReportKind::Capacity => "capacity report",
                ReportKind::Consumption => "consumption report",
            },
            other => other.kind(),
        }
    }

    /// The payload's kind as written on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::RegisterTwin {} => "register_twin",
            Payload::CreateFarm { .. } => "create_farm",
            Payload::RegisterNode(_) => "register_node",
            Payload::Report(_) => "report",
            Payload::CreateContract(_) => "create_contract",
            Payload::CancelContract { .. } => "cancel_contract",
            Payload::Deploy(_) => "deploy",
            Payload::DeploymentStatus(_) => "deployment_status",
            Payload::RequestLogs(_) => "request_logs",
            Payload::Logs(_) => "logs",
            Payload::PollMailbox { .. } => "poll_mailbox",
        }
    }

    /// Range checks serde cannot express.
    pub fn validate(&self) -> Result<(), PayloadError> {
        let invalid = PayloadError::Invalid;
        match self {
            Payload::RegisterTwin {} => Ok(()),
            Payload::CreateFarm { name } => {
                let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
                if name.is_empty() || name.len() > MAX_FARM_NAME || !name.chars().all(ok_char) {
                    return Err(invalid(format!(
                        "farm name {name:?} must be 1..={MAX_FARM_NAME} characters of A-Z a-z 0-9 - _ ."
                    )));
                }
                Ok(())
            }
            Payload::RegisterNode(reg) => {
                if reg.farm_id == 0 || reg.farm_id > i64::MAX as u64 {
                    return Err(invalid(format!("farm_id {} is out of range", reg.farm_id)));
                }
                reg.capacity.validate().map_err(invalid)?;
                if reg.interfaces.len() > MAX_INTERFACES {
                    return Err(invalid(format!(
                        "{} interfaces, at most {MAX_INTERFACES}",
                        reg.interfaces.len()
                    )));
                }
                let texts = reg.serial.iter().chain(reg.agent_version.iter()).chain(
                    reg.interfaces.iter().flat_map(|i| {
                        std::iter::once(&i.name)
                            .chain(i.mac.iter())
                            .chain(i.ips.iter())
                    }),
                );
                for t in texts {
                    if t.len() > MAX_TEXT {
                        return Err(invalid(format!("text field longer than {MAX_TEXT} bytes")));
                    }
                }
                if reg.interfaces.iter().any(|i| i.ips.len() > MAX_INTERFACES) {
                    return Err(invalid(format!(
                        "more than {MAX_INTERFACES} addresses on one interface"
                    )));
                }
                if let Some(k) = &reg.box_key {
                    crate::mailbox::parse_box_key(k).map_err(|e| invalid(e.to_string()))?;
                }
                check_warnings(&reg.warnings)
            }
            Payload::Report(Report::Uptime {
                uptime_secs,
                warnings,
                ..
            }) => {
                if *uptime_secs > MAX_UPTIME_SECS {
                    return Err(invalid(format!(
                        "uptime_secs = {uptime_secs} is larger than the maximum {MAX_UPTIME_SECS}"
                    )));
                }
                check_warnings(warnings)
            }
            Payload::Report(Report::Capacity { capacity, warnings }) => {
                capacity.validate().map_err(invalid)?;
                check_warnings(warnings)
            }
            Payload::CreateContract(c) => {
                if c.node_id == 0 || c.node_id > i64::MAX as u64 {
                    return Err(invalid(format!("node_id {} is out of range", c.node_id)));
                }
                c.resources.validate().map_err(invalid)?;
                let r = &c.resources;
                if r.cru == 0 && r.mru == 0 && r.sru == 0 && r.hru == 0 && r.ipv4 == 0 {
                    return Err(invalid("a contract must reserve something".into()));
                }
                Ok(())
            }
            Payload::CancelContract { contract_id } => check_contract_id(*contract_id),
            Payload::Deploy(s)
            | Payload::DeploymentStatus(s)
            | Payload::RequestLogs(s)
            | Payload::Logs(s) => {
                check_contract_id(s.contract_id)?;
                if s.version == 0 || s.version > i64::MAX as u64 {
                    return Err(invalid(format!("version {} is out of range", s.version)));
                }
                let max = match self {
                    Payload::Deploy(_) => MAX_DEPLOYMENT_BYTES,
                    Payload::RequestLogs(_) => MAX_LOG_REQUEST_BYTES,
                    Payload::Logs(_) => MAX_LOG_ANSWER_BYTES,
                    _ => MAX_STATUS_BYTES,
                } + SEAL_OVERHEAD;
                if s.sealed.len() <= SEAL_OVERHEAD || s.sealed.len() > max {
                    return Err(invalid(format!(
                        "sealed box of {} bytes: between {} and {max}",
                        s.sealed.len(),
                        SEAL_OVERHEAD + 1
                    )));
                }
                Ok(())
            }
            Payload::PollMailbox { after, wait_secs } => {
                if *after > i64::MAX as u64 {
                    return Err(invalid(format!("after {after} is out of range")));
                }
                if *wait_secs > MAX_POLL_WAIT_SECS {
                    return Err(invalid(format!(
                        "wait_secs {wait_secs} is more than {MAX_POLL_WAIT_SECS}"
                    )));
                }
                Ok(())
            }
            Payload::Report(Report::Consumption(c)) => {
                c.used.validate().map_err(invalid)?;
                if c.traffic_bytes > MAX_TRAFFIC_BYTES {
                    return Err(invalid(format!(
                        "traffic_bytes = {} is larger than the maximum {MAX_TRAFFIC_BYTES} per report",
                        c.traffic_bytes
                    )));
                }
                if c.contracts.len() > MAX_REPORTED_CONTRACTS {
                    return Err(invalid(format!(
                        "{} contracts, at most {MAX_REPORTED_CONTRACTS}",
                        c.contracts.len()
                    )));
                }
                let mut seen = std::collections::BTreeSet::new();
                let mut sum = 0u64;
                for t in &c.contracts {
                    check_contract_id(t.contract_id)?;
                    if !seen.insert(t.contract_id) {
                        return Err(invalid(format!(
                            "contract {} is named twice",
                            t.contract_id
                        )));
                    }
                    sum = sum.saturating_add(t.traffic_bytes);
                }
                // The contracts' shares are parts of the node's public traffic.
                if sum > c.traffic_bytes {
                    return Err(invalid(format!(
                        "the contracts' traffic ({sum} bytes) is more than the node's ({})",
                        c.traffic_bytes
                    )));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_by_kind() {
        let p = Payload::Report(Report::uptime(5));
        let v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(v["kind"], "report");
        assert_eq!(v["report"], "uptime");
        assert_eq!(v["uptime_secs"], 5);
        // No warnings: the field is left out, so reports read the same as before it existed.
        assert!(v.get("warnings").is_none());
        let p = Payload::CreateFarm { name: "f1".into() };
        assert_eq!(
            String::from_utf8(p.to_bytes()).unwrap(),
            r#"{"kind":"create_farm","name":"f1"}"#
        );
    }

    #[test]
    fn all_payloads_round_trip() {
        let reg = NodeRegistration {
            farm_id: 3,
            capacity: Resources::from_gib(2, 2.0, 20.0, 50.0),
            serial: Some("S1".into()),
            virtualized: true,
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                ips: vec!["10.0.2.15/24".into()],
            }],
            agent_version: Some("0.1.0".into()),
            box_key: Some("11".repeat(32)),
            warnings: Vec::new(),
        };
        for p in [
            Payload::RegisterTwin {},
            Payload::CreateFarm {
                name: "farm-1".into(),
            },
            Payload::RegisterNode(reg),
            Payload::Report(Report::uptime(1)),
            Payload::CreateContract(ContractRequest {
                node_id: 1,
                resources: Resources {
                    cru: 1,
                    mru: 256 << 20,
                    sru: 2 << 30,
                    hru: 0,
                    ipv4: 0,
                },
            }),
            Payload::CancelContract { contract_id: 7 },
            Payload::Report(Report::Capacity {
                capacity: Resources::from_gib(1, 1.0, 1.0, 1.0),
                warnings: vec!["cache on tmpfs".into()],
            }),
            Payload::Report(Report::Consumption(Consumption {
                used: Resources::from_gib(1, 1.0, 0.0, 0.0),
                traffic_bytes: 10,
                contracts: Vec::new(),
            })),
        ] {
            assert_eq!(Payload::from_bytes(&p.to_bytes()).unwrap(), p);
        }
    }

    #[test]
    fn hostile_contract_shares_are_refused() {
        let share = |contract_id, traffic_bytes| ContractTraffic {
            contract_id,
            traffic_bytes,
        };
        let report = |traffic_bytes, contracts| {
            Payload::Report(Report::Consumption(Consumption {
                used: Resources::default(),
                traffic_bytes,
                contracts,
            }))
        };
        let ok = report(100, vec![share(1, 60), share(2, 40)]);
        assert_eq!(Payload::from_bytes(&ok.to_bytes()), Ok(ok));
        let most: Vec<_> = (1..=MAX_REPORTED_CONTRACTS as u64)
            .map(|c| share(c, 1))
            .collect();
        let full = report(u64::from(MAX_REPORTED_CONTRACTS as u32), most.clone());
        assert!(
            Payload::from_bytes(&full.to_bytes()).is_ok(),
            "128 contracts fit"
        );
        let mut one_more = most;
        one_more.push(share(999, 0));
        for (bad, why) in [
            (report(1000, one_more), "129 contracts"),
            (report(10, vec![share(0, 1)]), "contract 0"),
            (report(10, vec![share(1 << 63, 1)]), "contract above i64"),
            (report(10, vec![share(u64::MAX, 1)]), "contract u64::MAX"),
            (
                report(10, vec![share(7, 1), share(7, 1)]),
                "a contract twice",
            ),
            (
                report(10, vec![share(1, 6), share(2, 5)]),
                "shares above the total",
            ),
            (
                report(
                    MAX_TRAFFIC_BYTES,
                    vec![share(1, u64::MAX), share(2, u64::MAX)],
                ),
                "shares whose sum overflows",
            ),
        ] {
            assert!(
                matches!(
                    Payload::from_bytes(&bad.to_bytes()),
                    Err(PayloadError::Invalid(_))
                ),
                "{why} was accepted"
            );
        }
        // The same bytes spelled another way (a contract written as a string, a negative
        // share) and padding beyond the kind's size are refused before any check.
        for raw in [
            r#"{"kind":"report","report":"consumption","used":{"cru":0,"mru":0,"sru":0,"hru":0},"traffic_bytes":5,"contracts":[{"contract_id":"1","traffic_bytes":1}]}"#,
            r#"{"kind":"report","report":"consumption","used":{"cru":0,"mru":0,"sru":0,"hru":0},"traffic_bytes":5,"contracts":[{"contract_id":1,"traffic_bytes":-1}]}"#,
            r#"{"kind":"report","report":"consumption","used":{"cru":0,"mru":0,"sru":0,"hru":0},"traffic_bytes":5,"contracts":[{"contract_id":1,"traffic_bytes":1,"extra":1}]}"#,
        ] {
            assert!(
                matches!(
                    Payload::from_bytes(raw.as_bytes()),
                    Err(PayloadError::Malformed(_))
                ),
                "{raw}"
            );
        }
        let padded = format!(
            r#"{{"kind":"report","report":"consumption","used":{{"cru":0,"mru":0,"sru":0,"hru":0}},"traffic_bytes":5{}}}"#,
            " ".repeat(1024 + MAX_REPORTED_CONTRACTS * 64)
        );
        assert!(matches!(
            Payload::from_bytes(padded.as_bytes()),
            Err(PayloadError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        for bad in [
            r#"{"kind":"register_twin","admin":true}"#,
            r#"{"kind":"create_farm","name":"x","owner":1}"#,
            r#"{"kind":"report","report":"uptime","uptime_secs":1,"x":1}"#,
            r#"{"kind":"steal_tft"}"#,
            r#"{"kind":"report","report":"reboot"}"#,
            r#"{"kind":"register_node","farm_id":1,"capacity":{"cru":1,"mru":1,"sru":1,"hru":1,"tpu":1}}"#,
        ] {
            let err = Payload::from_bytes(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, PayloadError::Malformed(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn range_checks() {
        let bad_name = Payload::CreateFarm {
            name: "has space".into(),
        };
        assert!(matches!(bad_name.validate(), Err(PayloadError::Invalid(_))));
        let long = Payload::CreateFarm {
            name: "a".repeat(MAX_FARM_NAME + 1),
        };
        assert!(long.validate().is_err());
        let zero_farm = Payload::RegisterNode(NodeRegistration {
            farm_id: 0,
            capacity: Resources::default(),
            serial: None,
            virtualized: false,
            interfaces: vec![],
            agent_version: None,
            box_key: None,
            warnings: Vec::new(),
        });
        assert!(zero_farm.validate().is_err());
        let many = Payload::Report(Report::Uptime {
            uptime_secs: 1,
            stopping: false,
            warnings: vec!["w".into(); MAX_WARNINGS + 1],
        });
        assert!(many.validate().is_err());
        let long = Payload::Report(Report::Uptime {
            uptime_secs: 1,
            stopping: false,
            warnings: vec!["w".repeat(MAX_TEXT + 1)],
        });
        assert!(long.validate().is_err());
        let fine = Payload::Report(Report::Uptime {
            uptime_secs: 1,
            stopping: false,
            warnings: vec!["w".repeat(MAX_TEXT); MAX_WARNINGS],
        });
        assert!(fine.validate().is_ok());
        for (what, bad) in [
            (
                "uptime",
                format!(
                    r#"{{"kind":"report","report":"uptime","uptime_secs":{}}}"#,
                    MAX_UPTIME_SECS + 1
                ),
            ),
            (
                "traffic",
                format!(
                    r#"{{"kind":"report","report":"consumption","used":{{"cru":0,"mru":0,"sru":0,"hru":0}},"traffic_bytes":{}}}"#,
                    i64::MAX
                ),
            ),
            (
                "capacity",
                format!(
                    r#"{{"kind":"report","report":"capacity","capacity":{{"cru":{},"mru":0,"sru":0,"hru":0}}}}"#,
                    i64::MAX
                ),
            ),
        ] {
            assert!(
                matches!(
                    Payload::from_bytes(bad.as_bytes()),
                    Err(PayloadError::Invalid(_))
                ),
                "{what}"
            );
        }
        let huge = r#"{"kind":"report","report":"uptime","uptime_secs":18446744073709551615}"#;
        assert!(matches!(
            Payload::from_bytes(huge.as_bytes()),
            Err(PayloadError::Invalid(_))
        ));
    }

    #[test]
    fn padding_beyond_the_kind_limit_is_refused() {
        // The same report padded with JSON whitespace: valid JSON, but no honest node sends it.
        let honest = Payload::Report(Report::uptime(5)).to_bytes();
        let mut padded = honest.clone();
        padded.splice(1..1, std::iter::repeat_n(b' ', 8192));
        assert!(Payload::from_bytes(&honest).is_ok());
        assert!(matches!(
            Payload::from_bytes(&padded),
            Err(PayloadError::TooLarge {
                kind: "uptime report",
                max: 8192,
                ..
            })
        ));
        let twin = br#"{"kind":"register_twin"}"#.to_vec();
        let mut padded = twin.clone();
        padded.splice(1..1, std::iter::repeat_n(b'\n', 600));
        assert!(matches!(
            Payload::from_bytes(&padded),
            Err(PayloadError::TooLarge {
                kind: "register_twin",
                ..
            })
        ));
        // Too large for any kind: refused before parsing.
        let junk = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            Payload::from_bytes(&junk),
            Err(PayloadError::TooLarge {
                kind: "payload",
                ..
            })
        ));
    }

    #[test]
    fn the_largest_honest_messages_fit_their_kind() {
        // Control characters: each byte is written as \u00XX, the worst case for JSON.
        let w = vec!["\u{1}".repeat(MAX_TEXT); MAX_WARNINGS];
        let full = Resources {
            cru: crate::units::MAX_CRU,
            mru: crate::units::MAX_MRU,
            sru: crate::units::MAX_DISK,
            hru: crate::units::MAX_DISK,
            ipv4: crate::units::MAX_IPV4,
        };
        for p in [
            Payload::Report(Report::Uptime {
                uptime_secs: MAX_UPTIME_SECS,
                stopping: false,
                warnings: w.clone(),
            }),
            Payload::Report(Report::Capacity {
                capacity: full,
                warnings: w.clone(),
            }),
            Payload::Report(Report::Consumption(Consumption {
                used: full,
                traffic_bytes: MAX_TRAFFIC_BYTES,
                contracts: Vec::new(),
            })),
            Payload::CreateFarm {
                name: "f".repeat(MAX_FARM_NAME),
            },
        ] {
            let bytes = p.to_bytes();
            assert!(Payload::from_bytes(&bytes).is_ok(), "{}", p.kind_name());
        }
    }

    #[test]
    fn duplicate_fields_are_refused() {
        for bad in [
            r#"{"kind":"report","report":"uptime","uptime_secs":1,"uptime_secs":2}"#,
            r#"{"kind":"create_farm","name":"a","name":"b"}"#,
        ] {
            assert!(Payload::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
