//! DHCPv4 packets (built and read with `dhcproto`) and the lease they carry.

use crate::{Error, Result};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::Ipv4Addr;

/// What a DHCP server granted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// Our address.
    pub addr: Ipv4Addr,
    /// Prefix length from the subnet mask.
    pub prefix: u8,
    /// Default gateway, if offered.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// Renewal time T1 in seconds (default: half the lease).
    pub t1_secs: u32,
    /// Rebinding time T2 in seconds (default: 7/8 of the lease).
    pub t2_secs: u32,
}

/// A reply that belongs to our transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER.
    Offer(Lease),
    /// DHCPACK.
    Ack(Lease),
    /// DHCPNAK: start over.
    Nak,
}

fn params() -> DhcpOption {
    DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
    ])
}

fn encode(msg: &Message) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| Error::Packet(e.to_string()))?;
    Ok(buf)
}

fn base(xid: u32, mac: &[u8; 6], ciaddr: Ipv4Addr, broadcast: bool) -> Message {
    let mut m = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    if broadcast {
        // We have no address yet: ask the server to broadcast its reply.
        m.set_flags(Flags::default().set_broadcast());
    }
    let mut id = vec![1u8];
    id.extend_from_slice(mac);
    m.opts_mut().insert(DhcpOption::ClientIdentifier(id));
    m.opts_mut().insert(params());
    m
}

/// DHCPDISCOVER, broadcast.
pub fn discover(xid: u32, mac: &[u8; 6]) -> Result<Vec<u8>> {
    let mut m = base(xid, mac, Ipv4Addr::UNSPECIFIED, true);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    encode(&m)
}

/// DHCPREQUEST selecting an offer (broadcast, with requested address and server id).
pub fn request_offer(xid: u32, mac: &[u8; 6], offer: &Lease) -> Result<Vec<u8>> {
    let mut m = base(xid, mac, Ipv4Addr::UNSPECIFIED, true);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.addr));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(offer.server));
    encode(&m)
}

/// DHCPREQUEST renewing (unicast to the server at T1) or rebinding (broadcast at T2):
/// `ciaddr` is our address, no server id.
pub fn request_renew(xid: u32, mac: &[u8; 6], addr: Ipv4Addr) -> Result<Vec<u8>> {
    let mut m = base(xid, mac, addr, false);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    encode(&m)
}

fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.count_ones() == ones).then_some(ones as u8)
}

/// Reads a lease out of an OFFER or ACK.
pub fn lease_of(m: &Message) -> Result<Lease> {
    let server_s = m.siaddr().to_string();
    let bad = |reason| Error::BadLease {
        server: server_s.clone(),
        reason,
    };
    let opts = m.opts();
    let addr = m.yiaddr();
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(bad("no usable address offered"));
    }
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            prefix_of(*mask).ok_or_else(|| bad("subnet mask is not contiguous"))?
        }
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => m.siaddr(),
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => return Err(bad("no lease time")),
    };
    let t1_secs = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) if *t < lease_secs => *t,
        _ => lease_secs / 2,
    };
    let t2_secs = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) if *t < lease_secs && *t >= t1_secs => *t,
        _ => (lease_secs / 8).saturating_mul(7).max(t1_secs),
    };
    Ok(Lease {
        addr,
        prefix,
        router,
        dns,
        server,
        lease_secs,
        t1_secs,
        t2_secs,
    })
}

/// Where the options start: after the 236-byte fixed header and the 4-byte magic cookie.
const OPTIONS_AT: usize = 240;

/// Whether dhcproto's decoder takes option `code` with a value of `len` bytes without a
/// `debug_assert!` or an unchecked `len - n` (panics in debug builds, wrapped lengths in
/// release). None of these options means anything in a reply to a client.
fn decodable_length(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,        // Rapid Commit
        81 => len >= 3,        // Client FQDN
        94 => len == 3,        // Client Network Interface
        151 => len >= 1,       // Bulk Leasequery status code
        152..=155 => len == 4, // Bulk Leasequery times
        _ => true,
    }
}

/// Refuses a packet whose options dhcproto would panic on, walking them as it does:
/// consecutive instances of one code are joined (RFC 3396) and decoded as one; pad (0) ends
/// a run; end (255) or a truncated option ends the walk.
fn check_option_lengths(bytes: &[u8]) -> Result<()> {
    let check = |run: Option<(u8, usize)>| match run {
        Some((code, len)) if !decodable_length(code, len) => Err(Error::Packet(format!(
            "option {code} has a {len}-byte value, a length it never has"
        ))),
        _ => Ok(()),
    };
    let mut rest = bytes.get(OPTIONS_AT..).unwrap_or_default();
    let mut run: Option<(u8, usize)> = None;
    while let Some(&code) = rest.first() {
        if code == 0 || code == 255 {
            check(run.take())?;
            if code == 255 {
                break;
            }
            rest = &rest[1..];
            continue;
        }
        let Some(&len) = rest.get(1) else { break };
        let len = usize::from(len);
        let Some(tail) = rest.get(2 + len..) else {
            break;
        };
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            other => {
                check(other)?;
                Some((code, len))
            }
        };
        rest = tail;
    }
    check(run)
}

/// Decodes a packet; `Ok(None)` when it is not a reply to our `xid` and `mac`.
pub fn parse_reply(bytes: &[u8], xid: u32, mac: &[u8; 6]) -> Result<Option<Reply>> {
    check_option_lengths(bytes)?;
    let m = Message::decode(&mut Decoder::new(bytes)).map_err(|e| Error::Packet(e.to_string()))?;
    // `chaddr()` slices the 16-byte field by the sender's `hlen`: a larger one would panic.
    if m.opcode() != Opcode::BootReply
        || m.xid() != xid
        || m.hlen() > 16
        || m.chaddr().get(..6) != Some(&mac[..])
    {
        return Ok(None);
    }
    Ok(match m.opts().msg_type() {
        Some(MessageType::Offer) => Some(Reply::Offer(lease_of(&m)?)),
        Some(MessageType::Ack) => Some(Reply::Ack(lease_of(&m)?)),
        Some(MessageType::Nak) => Some(Reply::Nak),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    fn reply(kind: MessageType, xid: u32, t1: Option<u32>) -> Vec<u8> {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        o.insert(DhcpOption::DomainNameServer(vec![
            Ipv4Addr::new(10, 0, 2, 3),
            Ipv4Addr::new(1, 1, 1, 1),
        ]));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        o.insert(DhcpOption::AddressLeaseTime(86400));
        if let Some(t) = t1 {
            o.insert(DhcpOption::Renewal(t));
        }
        encode(&m).unwrap()
    }

    #[test]
    fn offer_becomes_a_lease() {
        let r = parse_reply(&reply(MessageType::Offer, 7, None), 7, &MAC).unwrap();
        let Some(Reply::Offer(l)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(l.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.prefix, 24);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns.len(), 2);
        assert_eq!(l.server, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (86400, 43200, 75600));
    }

    #[test]
    fn explicit_t1_is_kept() {
        let r = parse_reply(&reply(MessageType::Ack, 9, Some(600)), 9, &MAC).unwrap();
        let Some(Reply::Ack(l)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(l.t1_secs, 600);
    }

    #[test]
    fn foreign_replies_are_ignored() {
        assert_eq!(
            parse_reply(&reply(MessageType::Offer, 7, None), 8, &MAC).unwrap(),
            None
        );
        assert_eq!(
            parse_reply(&reply(MessageType::Offer, 7, None), 7, &[9; 6]).unwrap(),
            None
        );
        assert!(parse_reply(&[1, 2, 3], 7, &MAC).is_err());
    }

    #[test]
    fn requests_round_trip() {
        let d = discover(5, &MAC).unwrap();
        let m = Message::decode(&mut Decoder::new(&d)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert!(m.flags().broadcast());
        let lease = Lease {
            addr: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            router: None,
            dns: vec![],
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_secs: 100,
            t1_secs: 50,
            t2_secs: 87,
        };
        let r = request_offer(5, &MAC, &lease).unwrap();
        let m = Message::decode(&mut Decoder::new(&r)).unwrap();
        assert_eq!(
            m.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(lease.addr))
        );
        let n = request_renew(6, &MAC, lease.addr).unwrap();
        let m = Message::decode(&mut Decoder::new(&n)).unwrap();
        assert_eq!(m.ciaddr(), lease.addr);
        assert!(m.opts().get(OptionCode::ServerIdentifier).is_none());
    }

    /// Found by `make fuzz`: a reply for our xid with `hlen` above 16 made dhcproto's
    /// `chaddr()` slice past its 16-byte array, so one packet from any host on the link
    /// stopped gridos-network with a panic, in release builds too.
    #[test]
    fn fuzz_hardware_address_length_above_16_is_ignored() {
        for hlen in [17u8, 22, 255] {
            let mut b = reply(MessageType::Offer, 7, None);
            b[2] = hlen;
            assert_eq!(parse_reply(&b, 7, &MAC).unwrap(), None, "hlen {hlen}");
        }
    }

    /// Found by `make fuzz`: options whose length dhcproto's decoder `debug_assert!`s (or
    /// subtracts from unchecked) panicked in debug builds; they are refused with their code.
    #[test]
    fn fuzz_option_lengths_dhcproto_cannot_decode_are_refused() {
        let with = |opts: &[u8]| {
            let mut b = reply(MessageType::Ack, 7, None);
            assert_eq!(b.pop(), Some(255), "the encoder ends with the End option");
            b.extend_from_slice(opts);
            b.push(255);
            parse_reply(&b, 7, &MAC)
        };
        for (code, value) in [
            (80u8, &[1u8][..]),
            (81, &[0, 0][..]),
            (94, &[1, 2][..]),
            (151, &[][..]),
            (152, &[0, 0, 0][..]),
            (155, &[0; 5][..]),
        ] {
            let mut opt = vec![code, value.len() as u8];
            opt.extend_from_slice(value);
            let err = with(&opt).unwrap_err().to_string();
            assert!(err.contains(&format!("option {code} ")), "{err}");
        }
        // Split over two instances (RFC 3396) the lengths add up: 2 + 2 is a valid 4, and
        // 4 + 4 is not.
        assert!(matches!(
            with(&[152, 2, 0, 0, 152, 2, 0, 1]),
            Ok(Some(Reply::Ack(_)))
        ));
        assert!(with(&[152, 4, 0, 0, 0, 0, 152, 4, 0, 0, 0, 1]).is_err());
        // A pad between them makes two options: each is checked alone.
        assert!(with(&[152, 2, 0, 0, 0, 152, 2, 0, 1]).is_err());
        assert!(matches!(with(&[80, 0]), Ok(Some(Reply::Ack(_)))));
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 0, 255)), None);
        assert_eq!(prefix_of(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
    }
}
