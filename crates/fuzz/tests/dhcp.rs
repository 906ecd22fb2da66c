//! DHCP replies (`network::dhcp::parse_reply`): any host on the link can answer a DISCOVER,
//! so every byte of an OFFER or ACK is outside input.
//!
//! IPv6 router advertisements are not parsed by gridos (the kernel's `accept_ra` reads them),
//! so they have no target here.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use fuzz::{config, mutated, watch};
use network::dhcp::{parse_reply, request_offer, Lease, Reply};
use proptest::prelude::*;

const XID: u32 = 0x1234_5678;
const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

/// What a lease promises the renewal loop: an address it can configure, a prefix that fits,
/// and renew ≤ rebind ≤ expiry.
fn check_lease(l: &Lease) -> Result<(), TestCaseError> {
    prop_assert!(!l.addr.is_unspecified() && !l.addr.is_broadcast() && !l.addr.is_multicast());
    prop_assert!(l.prefix <= 32);
    prop_assert!(l.t1_secs <= l.t2_secs, "{:?}", l);
    prop_assert!(l.t2_secs <= l.lease_secs, "{:?}", l);
    // An accepted offer can be requested.
    let req = request_offer(XID, &MAC, l).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let m =
        Message::decode(&mut Decoder::new(&req)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(m.xid(), XID);
    Ok(())
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _w = watch("network::dhcp::parse_reply", bytes);
    let ours = parse_reply(bytes, XID, &MAC);
    match &ours {
        Ok(Some(Reply::Offer(l) | Reply::Ack(l))) => check_lease(l)?,
        Ok(Some(Reply::Nak) | None) => {}
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    if let Ok(Some(_)) = ours {
        // Only our transaction: a reply to us is not also a reply to another xid or MAC.
        prop_assert!(matches!(parse_reply(bytes, XID ^ 1, &MAC), Ok(None)));
        prop_assert!(matches!(parse_reply(bytes, XID, &[9; 6]), Ok(None)));
    }
    Ok(())
}

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
        proptest::sample::select(vec![
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(255, 255, 255, 0),
            Ipv4Addr::new(255, 0, 255, 0),
        ]),
    ]
}

fn secs() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        proptest::sample::select(vec![0, 1, 2, 7, 8, 60, 86_400, u32::MAX - 1, u32::MAX]),
    ]
}

/// An OFFER, ACK or NAK for our transaction, with options of every value.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let kind = proptest::sample::select(vec![
        MessageType::Offer,
        MessageType::Ack,
        MessageType::Nak,
        MessageType::Discover,
        MessageType::Request,
        MessageType::Decline,
    ]);
    (
        kind,
        addr(),
        addr(),
        proptest::option::of(addr()),
        proptest::collection::vec(addr(), 0..4),
        proptest::collection::vec(addr(), 0..4),
        proptest::option::of(addr()),
        proptest::option::of(secs()),
        (proptest::option::of(secs()), proptest::option::of(secs())),
        any::<bool>(),
    )
        .prop_map(
            |(kind, yiaddr, siaddr, mask, routers, dns, server, lease, (t1, t2), boot_reply)| {
                let mut m = Message::new_with_id(
                    XID,
                    Ipv4Addr::UNSPECIFIED,
                    yiaddr,
                    siaddr,
                    Ipv4Addr::UNSPECIFIED,
                    &MAC,
                );
                if boot_reply {
                    m.set_opcode(Opcode::BootReply);
                }
                let o = m.opts_mut();
                o.insert(DhcpOption::MessageType(kind));
                if let Some(mask) = mask {
                    o.insert(DhcpOption::SubnetMask(mask));
                }
                o.insert(DhcpOption::Router(routers));
                o.insert(DhcpOption::DomainNameServer(dns));
                if let Some(s) = server {
                    o.insert(DhcpOption::ServerIdentifier(s));
                }
                if let Some(t) = lease {
                    o.insert(DhcpOption::AddressLeaseTime(t));
                }
                if let Some(t) = t1 {
                    o.insert(DhcpOption::Renewal(t));
                }
                if let Some(t) = t2 {
                    o.insert(DhcpOption::Rebinding(t));
                }
                let mut buf = Vec::new();
                // A message built from valid parts always encodes; an empty one is still input.
                let _ = m.encode(&mut Encoder::new(&mut buf));
                buf
            },
        )
}

/// A valid fixed header for our transaction (through the magic cookie), then any option bytes.
fn header_then_options() -> impl Strategy<Value = Vec<u8>> {
    (
        reply(),
        proptest::collection::vec(
            prop_oneof![
                Just(0u8),
                Just(255u8),
                Just(1u8),
                Just(3u8),
                Just(4u8),
                Just(51u8),
                Just(52u8),
                Just(53u8),
                any::<u8>(),
            ],
            0..400,
        ),
    )
        .prop_map(|(valid, options)| {
            let mut b = valid;
            b.truncate(240);
            b.extend(options);
            b
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(b in fuzz::bytes(1500)) {
        check(&b)?;
    }

    #[test]
    fn replies_with_random_options(b in reply()) {
        check(&b)?;
    }

    #[test]
    fn valid_header_random_option_bytes(b in header_then_options()) {
        check(&b)?;
    }

    #[test]
    fn mutated_replies(b in mutated(reply())) {
        check(&b)?;
    }
}
