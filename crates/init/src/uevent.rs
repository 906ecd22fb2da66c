//! Kernel uevents over netlink: load modules for devices that appear after boot.

use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use kmod::Loader;

/// One uevent's fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `bind`, ...
    pub action: String,
    /// The device path under /sys.
    pub devpath: String,
    /// The device's modalias, if it has one.
    pub modalias: Option<String>,
}

/// Parses a kernel uevent datagram (`ACTION@DEVPATH\0KEY=VALUE\0...`); `None` for other senders' messages.
pub fn parse(buf: &[u8]) -> Option<Uevent> {
    let mut parts = buf.split(|&b| b == 0).filter(|p| !p.is_empty());
    let header = std::str::from_utf8(parts.next()?).ok()?;
    header.split_once('@')?;
    let mut ev = Uevent {
        action: String::new(),
        devpath: String::new(),
        modalias: None,
    };
    for p in parts {
        let Ok(kv) = std::str::from_utf8(p) else {
            continue;
        };
        match kv.split_once('=') {
            Some(("ACTION", v)) => ev.action = v.to_string(),
            Some(("DEVPATH", v)) => ev.devpath = v.to_string(),
            Some(("MODALIAS", v)) => ev.modalias = Some(v.to_string()),
            _ => {}
        }
    }
    if ev.action.is_empty() {
        return None;
    }
    Some(ev)
}

/// Opens the uevent socket; call before coldplug so no device is missed.
pub fn open() -> nix::Result<std::os::fd::OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, 1),
    )?;
    Ok(fd)
}

/// Listens forever on a thread of its own, loading modules for added devices.
pub fn listen(fd: std::os::fd::OwnedFd, loader: Arc<Mutex<Loader>>) {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::Error::EINTR) | Err(nix::Error::ENOBUFS) => continue,
            Err(e) => {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "uevent socket failed; hot-plug stops"
                );
                return;
            }
        };
        let Some(ev) = buf.get(..n).and_then(parse) else {
            continue;
        };
        if ev.action != "add" {
            continue;
        }
        if let Some(alias) = ev.modalias {
            let new = kmod::load_alias(&loader, &alias);
            if !new.is_empty() {
                tracing::info!(devpath = %ev.devpath, modules = ?new, "hot-plug");
            }
        }
    }
}
