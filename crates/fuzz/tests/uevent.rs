//! Kernel uevent datagrams: PID 1's hot-plug listener (`init::uevent::parse`) and storage's
//! settle watcher (`disks::settle::parse_uevent`) read the same netlink bytes, which any
//! process on the node may also multicast (udev-style `libudev` messages included).

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fuzz::{config, mutated, text_of, watch};
use proptest::prelude::*;

fn check(buf: &[u8]) -> Result<(), TestCaseError> {
    let _w = watch("uevent parsers", buf);
    let pid1 = init::uevent::parse(buf);
    let disks = disks::settle::parse_uevent(buf);
    // Two parsers of one format: they take and refuse the same datagrams.
    prop_assert_eq!(pid1.is_some(), disks.is_some());
    if let Some(ev) = &pid1 {
        prop_assert!(!ev.action.is_empty());
        let fields = [&ev.action, &ev.devpath]
            .into_iter()
            .chain(ev.modalias.as_ref());
        for f in fields {
            prop_assert!(!f.contains('\0'));
            prop_assert!(f.len() <= buf.len());
        }
        // Only a kernel header (`ACTION@DEVPATH`) makes a message.
        let header = buf.split(|&b| b == 0).find(|p| !p.is_empty());
        prop_assert!(header.is_some_and(|h| h.contains(&b'@')));
    }
    if let (Some(a), Some(b)) = (&pid1, &disks) {
        prop_assert_eq!(&a.action, &b.action);
        prop_assert!(!b.subsystem.contains('\0') && !b.devtype.contains('\0'));
        prop_assert!(!b.devname.contains('\0'));
        if b.is_disk_added() {
            prop_assert_eq!(b.action.as_str(), "add");
        }
    }
    Ok(())
}

const KEYS: &[&str] = &[
    "ACTION",
    "DEVPATH",
    "SUBSYSTEM",
    "DEVTYPE",
    "DEVNAME",
    "MODALIAS",
    "MAJOR",
    "MINOR",
    "SEQNUM",
    "DRIVER",
];

/// A datagram as the kernel writes it: `ACTION@DEVPATH` then `KEY=VALUE` fields, NUL-separated.
fn kernel_message() -> impl Strategy<Value = Vec<u8>> {
    let action = proptest::sample::select(vec!["add", "remove", "change", "bind", "unbind", ""]);
    let devpath = prop_oneof![
        Just(
            "/devices/pci0000:00/0000:00:04.0/virtio2/host0/target0:0:1/0:0:1:0/block/sdb"
                .to_string()
        ),
        Just("/devices/pci0000:00/0000:00:03.0".to_string()),
        text_of("/devices:pci0.-", 40),
    ];
    let field = (
        prop_oneof![
            8 => proptest::sample::select(KEYS).prop_map(str::to_string),
            1 => "[A-Z_]{0,8}",
        ],
        prop_oneof![
            Just("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00".to_string()),
            Just("block".to_string()),
            Just("disk".to_string()),
            Just("sdb".to_string()),
            text_of("abc=@:/*0\u{0}\u{ff}", 24),
        ],
    );
    (
        action,
        devpath,
        proptest::collection::vec(field, 0..10),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(action, devpath, fields, libudev, trailing_nul)| {
            let mut b = if libudev {
                b"libudev\0\xfe\xed\xca\xfe".to_vec()
            } else {
                format!("{action}@{devpath}").into_bytes()
            };
            b.push(0);
            b.extend_from_slice(format!("ACTION={action}").as_bytes());
            for (k, v) in fields {
                b.push(0);
                b.extend_from_slice(format!("{k}={v}").as_bytes());
            }
            if trailing_nul {
                b.push(0);
            }
            b
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(b in fuzz::bytes(8192)) {
        check(&b)?;
    }

    #[test]
    fn arbitrary_nul_separated_fields(b in proptest::collection::vec(
        prop_oneof![Just(0u8), Just(b'@'), Just(b'='), any::<u8>()],
        0..512,
    )) {
        check(&b)?;
    }

    #[test]
    fn kernel_messages(b in kernel_message()) {
        check(&b)?;
    }

    #[test]
    fn mutated_kernel_messages(b in mutated(kernel_message())) {
        check(&b)?;
    }
}
