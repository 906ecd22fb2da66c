//! nf_tables over netlink, as much of it as a node needs: one table of base chains whose
//! rules match interface names and connection state, and accept, drop or masquerade.
//!
//! [`replace`] swaps the whole table in one netlink batch (add, delete, add again, then its
//! chains and rules): the kernel applies a batch as one transaction, so a packet sees the old
//! ruleset or the new one, never a half-made one, and a failed batch leaves the old one.
//!
//! The messages are built here rather than through `nft` (a C program with five libraries
//! the image would have to carry) or a crate (the one pure-Rust nf_tables crate is GPL-3.0,
//! which this Apache-2.0 project cannot link). The attribute numbers are the kernel's UAPI
//! (`include/uapi/linux/netfilter/nf_tables.h`), which never changes meaning.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

/// Why a table could not be replaced.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket could not be opened or used.
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] nix::Error),
    /// The kernel refused a message of the batch (the whole batch is then undone).
    #[error("the kernel refused {what} of table {table}: {source} (are nf_tables, nft_chain_nat, nft_masq and nft_ct loaded?)")]
    Refused {
        /// The table.
        table: String,
        /// Which message: `table`, `chain NAME`, `rule N of chain NAME`.
        what: String,
        /// The kernel's errno.
        source: nix::Error,
    },
    /// The kernel did not answer every message within the timeout.
    #[error("the kernel answered {got} of {want} messages of table {table}'s batch")]
    Incomplete {
        /// The table.
        table: String,
        /// Answers received.
        got: usize,
        /// Messages sent.
        want: usize,
    },
    /// A name does not fit the kernel's limits.
    #[error("{0}")]
    Invalid(String),
}

/// The address family a table filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`ip`).
    Ipv4,
    /// IPv4 and IPv6 (`inet`); no NAT chains.
    Inet,
}

impl Family {
    fn code(self) -> u8 {
        match self {
            Family::Ipv4 => libc::NFPROTO_IPV4 as u8,
            Family::Inet => libc::NFPROTO_INET as u8,
        }
    }
}

/// Where a base chain hooks into the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets for this host.
    Input,
    /// Packets routed through this host.
    Forward,
    /// Packets leaving, after routing (source NAT).
    PostRouting,
}

impl Hook {
    fn code(self) -> u32 {
        match self {
            Hook::Input => libc::NF_INET_LOCAL_IN as u32,
            Hook::Forward => libc::NF_INET_FORWARD as u32,
            Hook::PostRouting => libc::NF_INET_POST_ROUTING as u32,
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// Accepts or drops.
    Filter,
    /// Rewrites addresses (the first packet of a connection decides for all of it).
    Nat,
}

/// What a rule does with a packet it matches, or a chain with one no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// Throw it away.
    Drop,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Accept => libc::NF_ACCEPT as u32,
            Verdict::Drop => libc::NF_DROP as u32,
        }
    }
}

/// One test or action of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The input interface's name starts with this (`iifname "gt*"`).
    InputPrefix(String),
    /// The output interface's name starts with this.
    OutputPrefix(String),
    /// The input interface is exactly this one.
    Input(String),
    /// The output interface is exactly this one.
    Output(String),
    /// The output interface's name does not start with this.
    OutputNotPrefix(String),
    /// The IPv4 source address is in this network (`ip saddr 10.240.0.0/12`).
    SourceIn(std::net::Ipv4Addr, u8),
    /// The packet belongs to a connection already seen in both directions, or is related
    /// to one (`ct state established,related`).
    Established,
}

/// One rule: every match must hold, then the action is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What must hold.
    pub matches: Vec<Match>,
    /// What happens then.
    pub action: Action,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A verdict.
    Verdict(Verdict),
    /// Source NAT to the output interface's address (in a NAT chain at post-routing).
    Masquerade,
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Filter or NAT.
    pub kind: ChainType,
    /// Where it hooks.
    pub hook: Hook,
    /// Its place among chains at the same hook (lower first; NAT at post-routing is 100).
    pub priority: i32,
    /// What happens to a packet no rule decided.
    pub policy: Verdict,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// A table: everything one owner puts in nf_tables, replaced as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its name (unique per family).
    pub name: String,
    /// Its family.
    pub family: Family,
    /// Its chains.
    pub chains: Vec<Chain>,
}

// UAPI numbers (include/uapi/linux/netfilter/nfnetlink.h and nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
/// Where the source address sits in an IPv4 header.
const IPV4_SADDR_OFFSET: u32 = 12;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
// Conntrack state bits as nf_tables sees them (NF_CT_STATE_BIT(IP_CT_ESTABLISHED) and
// NF_CT_STATE_BIT(IP_CT_RELATED)).
const CT_ESTABLISHED: u32 = 1 << 1;
const CT_RELATED: u32 = 1 << 2;
const NLA_F_NESTED: u16 = 1 << 15;
const IFNAMSIZ: usize = 16;
const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Builds netlink messages into one buffer.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// The message each acknowledged sequence number was, for errors.
    sent: Vec<(u32, String)>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: Vec::new(),
            seq: 0,
            sent: Vec::new(),
        }
    }

    /// Appends one message; `body` writes its attributes.
    fn msg(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> u32 {
        self.seq += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLMSG_HDR]);
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut self.buf);
        let len = (self.buf.len() - start) as u32;
        let hdr = &mut self.buf[start..start + NLMSG_HDR];
        hdr[0..4].copy_from_slice(&len.to_ne_bytes());
        hdr[4..6].copy_from_slice(&kind.to_ne_bytes());
        hdr[6..8].copy_from_slice(&flags.to_ne_bytes());
        hdr[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        self.seq
    }

    /// An nf_tables message that the kernel acknowledges.
    fn nft(
        &mut self,
        msg: u16,
        extra: u16,
        family: Family,
        what: String,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16 | extra;
        let seq = self.msg(kind, flags, family.code(), 0, body);
        self.sent.push((seq, what));
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad(buf);
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn attr_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    attr(buf, kind, &v);
}

fn attr_u32(buf: &mut Vec<u8>, kind: u16, v: u32) {
    attr(buf, kind, &v.to_be_bytes());
}

fn nested(buf: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn expr(buf: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nested(buf, NFTA_LIST_ELEM, |b| {
        attr_str(b, NFTA_EXPR_NAME, name);
        nested(b, NFTA_EXPR_DATA, data);
    });
}

fn data_value(buf: &mut Vec<u8>, kind: u16, v: &[u8]) {
    nested(buf, kind, |b| attr(b, NFTA_DATA_VALUE, v));
}

fn cmp(buf: &mut Vec<u8>, op: u32, v: &[u8]) {
    expr(buf, "cmp", |b| {
        attr_u32(b, NFTA_CMP_SREG, NFT_REG_1);
        attr_u32(b, NFTA_CMP_OP, op);
        data_value(b, NFTA_CMP_DATA, v);
    });
}

fn meta(buf: &mut Vec<u8>, key: u32) {
    expr(buf, "meta", |b| {
        attr_u32(b, NFTA_META_DREG, NFT_REG_1);
        attr_u32(b, NFTA_META_KEY, key);
    });
}

/// An interface name as the kernel compares it: exact names with their NUL padding to
/// IFNAMSIZ, prefixes as their bytes only (the compare then covers just those).
fn ifname(name: &str, exact: bool) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    if exact {
        v.resize(IFNAMSIZ, 0);
    }
    v
}

fn encode_match(buf: &mut Vec<u8>, m: &Match) {
    match m {
        Match::InputPrefix(p) | Match::Input(p) => {
            meta(buf, NFT_META_IIFNAME);
            cmp(buf, NFT_CMP_EQ, &ifname(p, matches!(m, Match::Input(_))));
        }
        Match::OutputPrefix(p) | Match::Output(p) => {
            meta(buf, NFT_META_OIFNAME);
            cmp(buf, NFT_CMP_EQ, &ifname(p, matches!(m, Match::Output(_))));
        }
        Match::OutputNotPrefix(p) => {
            meta(buf, NFT_META_OIFNAME);
            cmp(buf, NFT_CMP_NEQ, &ifname(p, false));
        }
        Match::SourceIn(net, len) => {
            expr(buf, "payload", |b| {
                attr_u32(b, NFTA_PAYLOAD_DREG, NFT_REG_1);
                attr_u32(b, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
                attr_u32(b, NFTA_PAYLOAD_OFFSET, IPV4_SADDR_OFFSET);
                attr_u32(b, NFTA_PAYLOAD_LEN, 4);
            });
            let mask = prefix_mask(*len);
            expr(buf, "bitwise", |b| {
                attr_u32(b, NFTA_BITWISE_SREG, NFT_REG_1);
                attr_u32(b, NFTA_BITWISE_DREG, NFT_REG_1);
                attr_u32(b, NFTA_BITWISE_LEN, 4);
                data_value(b, NFTA_BITWISE_MASK, &mask.to_be_bytes());
                data_value(b, NFTA_BITWISE_XOR, &[0; 4]);
            });
            cmp(buf, NFT_CMP_EQ, &(u32::from(*net) & mask).to_be_bytes());
        }
        Match::Established => {
            expr(buf, "ct", |b| {
                attr_u32(b, NFTA_CT_DREG, NFT_REG_1);
                attr_u32(b, NFTA_CT_KEY, NFT_CT_STATE);
            });
            // The state is a host-order bitmask in the register.
            expr(buf, "bitwise", |b| {
                attr_u32(b, NFTA_BITWISE_SREG, NFT_REG_1);
                attr_u32(b, NFTA_BITWISE_DREG, NFT_REG_1);
                attr_u32(b, NFTA_BITWISE_LEN, 4);
                data_value(
                    b,
                    NFTA_BITWISE_MASK,
                    &(CT_ESTABLISHED | CT_RELATED).to_ne_bytes(),
                );
                data_value(b, NFTA_BITWISE_XOR, &0u32.to_ne_bytes());
            });
            cmp(buf, NFT_CMP_NEQ, &0u32.to_ne_bytes());
        }
    }
}

fn prefix_mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

fn encode_action(buf: &mut Vec<u8>, a: Action) {
    match a {
        Action::Masquerade => nested(buf, NFTA_LIST_ELEM, |b| attr_str(b, NFTA_EXPR_NAME, "masq")),
        Action::Verdict(v) => expr(buf, "immediate", |b| {
            attr_u32(b, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            nested(b, NFTA_IMMEDIATE_DATA, |b| {
                nested(b, NFTA_DATA_VERDICT, |b| {
                    attr_u32(b, NFTA_VERDICT_CODE, v.code())
                });
            });
        }),
    }
}

fn check_name(what: &str, name: &str, max: usize) -> Result<(), NftError> {
    if name.is_empty() || name.len() > max || name.bytes().any(|b| b == 0) {
        return Err(NftError::Invalid(format!(
            "{what} name {name:?} must be 1 to {max} bytes without NUL"
        )));
    }
    Ok(())
}

impl Table {
    fn check(&self) -> Result<(), NftError> {
        // NFT_NAME_MAXLEN is 256 with the NUL.
        check_name("table", &self.name, 255)?;
        for c in &self.chains {
            check_name("chain", &c.name, 255)?;
            for r in &c.rules {
                for m in &r.matches {
                    if let Match::InputPrefix(n)
                    | Match::OutputPrefix(n)
                    | Match::Input(n)
                    | Match::Output(n) = m
                    {
                        check_name("interface", n, IFNAMSIZ - 1)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The batch that replaces this table: created if missing, deleted (with everything in
    /// it), created again with its chains and rules.
    fn batch(&self) -> Batch {
        let mut b = Batch::new();
        let res = NFNL_SUBSYS_NFTABLES;
        b.msg(
            NFNL_MSG_BATCH_BEGIN,
            libc::NLM_F_REQUEST as u16,
            libc::AF_UNSPEC as u8,
            res,
            |_| {},
        );
        let create = libc::NLM_F_CREATE as u16;
        let table = |buf: &mut Vec<u8>| attr_str(buf, NFTA_TABLE_NAME, &self.name);
        b.nft(NFT_MSG_NEWTABLE, create, self.family, "table".into(), table);
        b.nft(NFT_MSG_DELTABLE, 0, self.family, "old table".into(), table);
        b.nft(NFT_MSG_NEWTABLE, create, self.family, "table".into(), table);
        for c in &self.chains {
            b.nft(
                NFT_MSG_NEWCHAIN,
                create,
                self.family,
                format!("chain {}", c.name),
                |buf| {
                    attr_str(buf, NFTA_CHAIN_TABLE, &self.name);
                    attr_str(buf, NFTA_CHAIN_NAME, &c.name);
                    nested(buf, NFTA_CHAIN_HOOK, |h| {
                        attr_u32(h, NFTA_HOOK_HOOKNUM, c.hook.code());
                        attr_u32(h, NFTA_HOOK_PRIORITY, c.priority as u32);
                    });
                    attr_u32(buf, NFTA_CHAIN_POLICY, c.policy.code());
                    let kind = match c.kind {
                        ChainType::Filter => "filter",
                        ChainType::Nat => "nat",
                    };
                    attr_str(buf, NFTA_CHAIN_TYPE, kind);
                },
            );
            for (i, r) in c.rules.iter().enumerate() {
                let extra = (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16;
                let what = format!("rule {} of chain {}", i + 1, c.name);
                b.nft(NFT_MSG_NEWRULE, extra, self.family, what, |buf| {
                    attr_str(buf, NFTA_RULE_TABLE, &self.name);
                    attr_str(buf, NFTA_RULE_CHAIN, &c.name);
                    nested(buf, NFTA_RULE_EXPRESSIONS, |e| {
                        for m in &r.matches {
                            encode_match(e, m);
                        }
                        encode_action(e, r.action);
                    });
                });
            }
        }
        b.msg(
            NFNL_MSG_BATCH_END,
            libc::NLM_F_REQUEST as u16,
            libc::AF_UNSPEC as u8,
            res,
            |_| {},
        );
        b
    }
}

/// How long the kernel may take to answer a batch.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Replaces `table` in the network namespace of the calling thread, atomically.
pub fn replace(table: &Table) -> Result<(), NftError> {
    table.check()?;
    run(&table.name, &table.batch())
}

/// Deletes table `name` of `family` with everything in it, if it exists (in one batch:
/// created if missing, then deleted, so nothing there is fine).
pub fn delete(name: &str, family: Family) -> Result<(), NftError> {
    check_name("table", name, 255)?;
    let mut b = Batch::new();
    let res = NFNL_SUBSYS_NFTABLES;
    let (req, unspec) = (libc::NLM_F_REQUEST as u16, libc::AF_UNSPEC as u8);
    let table = |buf: &mut Vec<u8>| attr_str(buf, NFTA_TABLE_NAME, name);
    b.msg(NFNL_MSG_BATCH_BEGIN, req, unspec, res, |_| {});
    b.nft(
        NFT_MSG_NEWTABLE,
        libc::NLM_F_CREATE as u16,
        family,
        "table".into(),
        table,
    );
    b.nft(NFT_MSG_DELTABLE, 0, family, "table".into(), table);
    b.msg(NFNL_MSG_BATCH_END, req, unspec, res, |_| {});
    run(name, &b)
}

/// Sends `batch` and reads the kernel's answer to each of its acknowledged messages.
fn run(table: &str, batch: &Batch) -> Result<(), NftError> {
    let fd = open_socket()?;
    send(fd.as_raw_fd(), &batch.buf, MsgFlags::empty()).map_err(NftError::Socket)?;
    let want = batch.sent.len();
    let mut answered = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while answered < want {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            // The receive timeout ran out.
            Err(nix::Error::EAGAIN) => break,
            Err(e) => return Err(NftError::Socket(e)),
        };
        for (kind, seq, errno) in answers(&buf[..n]) {
            if kind == NLMSG_DONE {
                continue;
            }
            answered += 1;
            if errno != 0 {
                // The batch was undone as a whole; the other answers say nothing new.
                let what = batch
                    .sent
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map_or_else(|| format!("message {seq}"), |(_, w)| w.clone());
                return Err(NftError::Refused {
                    table: table.to_string(),
                    what,
                    source: nix::Error::from_raw(errno),
                });
            }
        }
    }
    if answered < want {
        return Err(NftError::Incomplete {
            table: table.to_string(),
            got: answered,
            want,
        });
    }
    Ok(())
}

fn open_socket() -> Result<OwnedFd, NftError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(NftError::Socket)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NftError::Socket)?;
    let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(NftError::Socket)?;
    Ok(fd)
}

/// The (type, sequence, errno) of each message in a datagram from the kernel: errno 0 for an
/// acknowledgement.
fn answers(mut buf: &[u8]) -> Vec<(u16, u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < NLMSG_HDR || len > buf.len() {
            break;
        }
        if kind == NLMSG_ERROR && len >= NLMSG_HDR + 4 {
            let e = &buf[NLMSG_HDR..NLMSG_HDR + 4];
            let err = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
            // The error message repeats the failed request's header: its sequence is ours.
            let seq = if len >= NLMSG_HDR + 4 + NLMSG_HDR {
                let h = &buf[NLMSG_HDR + 4..];
                u32::from_ne_bytes([h[8], h[9], h[10], h[11]])
            } else {
                seq
            };
            out.push((kind, seq, -err));
        } else {
            out.push((kind, seq, 0));
        }
        let step = (len + 3) & !3;
        if step >= buf.len() {
            break;
        }
        buf = &buf[step..];
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            name: "gridos".into(),
            family: Family::Ipv4,
            chains: vec![Chain {
                name: "post".into(),
                kind: ChainType::Nat,
                hook: Hook::PostRouting,
                priority: 100,
                policy: Verdict::Accept,
                rules: vec![Rule {
                    matches: vec![Match::InputPrefix("gt".into())],
                    action: Action::Masquerade,
                }],
            }],
        }
    }

    /// Walks a batch the way the kernel does: every message's length adds up to the buffer,
    /// every attribute's length stays inside its message.
    fn walk_attrs(mut b: &[u8]) -> usize {
        let mut n = 0;
        while !b.is_empty() {
            assert!(b.len() >= 4);
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let kind = u16::from_ne_bytes([b[2], b[3]]);
            assert!(
                len >= 4 && len <= b.len(),
                "attribute length {len} of {}",
                b.len()
            );
            if kind & NLA_F_NESTED != 0 {
                n += walk_attrs(&b[4..len]);
            }
            n += 1;
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        n
    }

    #[test]
    fn batches_frame_every_message_and_attribute() {
        let b = table().batch();
        let mut buf = &b.buf[..];
        let mut kinds = Vec::new();
        while !buf.is_empty() {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            kinds.push(u16::from_ne_bytes([buf[4], buf[5]]));
            walk_attrs(&buf[NLMSG_HDR + 4..len]);
            buf = &buf[len..];
        }
        let nft = |m: u16| (NFNL_SUBSYS_NFTABLES << 8) | m;
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        // Only the nf_tables messages are acknowledged.
        assert_eq!(b.sent.len(), 5);
    }

    #[test]
    fn prefixes_mask_the_host_bits() {
        assert_eq!(prefix_mask(12), 0xfff0_0000);
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(32), u32::MAX);
    }

    #[test]
    fn interface_names_compare_as_the_kernel_stores_them() {
        assert_eq!(ifname("gt", false), b"gt");
        let exact = ifname("eth0", true);
        assert_eq!(exact.len(), IFNAMSIZ);
        assert_eq!(&exact[..5], b"eth0\0");
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        let mut t = table();
        t.chains[0].rules[0].matches = vec![Match::Input("a-very-long-interface".into())];
        assert!(matches!(t.check(), Err(NftError::Invalid(_))));
        let mut t = table();
        t.name = "bad\0name".into();
        assert!(matches!(t.check(), Err(NftError::Invalid(_))));
    }

    #[test]
    fn kernel_errors_name_the_failed_message() {
        // An NLMSG_ERROR for sequence 3 with EINVAL, as the kernel sends it.
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + 4 + NLMSG_HDR) as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
        let mut inner = vec![0u8; NLMSG_HDR];
        inner[8..12].copy_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&inner);
        assert_eq!(answers(&m), [(NLMSG_ERROR, 3, libc::EINVAL)]);
    }
}
