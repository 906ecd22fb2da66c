//! Device settling: wait, bounded, until the kernel has stopped finding disks.
//!
//! Drivers for disk controllers are loaded by PID 1 (coldplug and hot-plug), and a controller
//! found late (virtio-scsi loaded from a uevent, a RAID card, NVMe behind slow firmware)
//! announces its disks seconds after boot. Storage must not decide where the cache goes, nor
//! the agent what to sell, before that. "Settled" means: for `quiet`, no kernel uevent
//! arrived, no module was in the `Loading` state, and the set of block devices did not change.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Quiet period after the last sign of device activity.
pub const QUIET: Duration = Duration::from_secs(2);
/// Longest wait; a node with a device that never stops announcing itself still boots.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Time between looks.
const POLL: Duration = Duration::from_millis(100);

/// What was seen in one look.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Names under `/sys/block`, sorted.
    pub disks: Vec<String>,
    /// Modules the kernel is still initialising.
    pub loading: Vec<String>,
    /// Kernel uevents received since the previous look.
    pub events: usize,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Quiet for the whole quiet period.
    Settled(Duration),
    /// Still busy at the deadline.
    TimedOut(Duration),
}

impl Verdict {
    /// Time spent waiting.
    pub fn waited(&self) -> Duration {
        match self {
            Verdict::Settled(d) | Verdict::TimedOut(d) => *d,
        }
    }
}

/// The pure decision of settling, fed with snapshots and the time they were taken.
#[derive(Debug, Clone)]
pub struct Settler {
    quiet: Duration,
    max: Duration,
    start: Instant,
    last_change: Instant,
    disks: Option<Vec<String>>,
}

impl Settler {
    /// Starts counting at `start`.
    pub fn new(start: Instant, quiet: Duration, max: Duration) -> Settler {
        Settler {
            quiet,
            max,
            start,
            last_change: start,
            disks: None,
        }
    }

    /// Takes one look; returns the verdict once there is one.
    pub fn observe(&mut self, now: Instant, snap: &Snapshot) -> Option<Verdict> {
        let changed = self.disks.as_ref() != Some(&snap.disks);
        if changed || snap.events > 0 || !snap.loading.is_empty() {
            self.last_change = now;
        }
        self.disks = Some(snap.disks.clone());
        let waited = now.saturating_duration_since(self.start);
        if now.saturating_duration_since(self.last_change) >= self.quiet {
            return Some(Verdict::Settled(waited));
        }
        if waited >= self.max {
            return Some(Verdict::TimedOut(waited));
        }
        None
    }
}

/// Modules in the `Loading` state in `/proc/modules` text.
pub fn loading_modules(proc_modules: &str) -> Vec<String> {
    proc_modules
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"Loading")).then(|| f[0].to_string())
        })
        .collect()
}

/// One kernel uevent's fields that matter for disks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, ...
    pub action: String,
    /// `block`, `scsi`, `pci`, ...
    pub subsystem: String,
    /// `disk` or `partition` for block devices.
    pub devtype: String,
    /// Device node name, e.g. `sdb`.
    pub devname: String,
}

impl Uevent {
    /// A whole disk appeared.
    pub fn is_disk_added(&self) -> bool {
        self.action == "add" && self.subsystem == "block" && self.devtype == "disk"
    }
}

/// Parses a kernel uevent datagram (`ACTION@DEVPATH\0KEY=VALUE\0...`); `None` for others.
pub fn parse_uevent(buf: &[u8]) -> Option<Uevent> {
    let mut parts = buf.split(|&b| b == 0).filter(|p| !p.is_empty());
    std::str::from_utf8(parts.next()?).ok()?.split_once('@')?;
    let mut ev = Uevent::default();
    for p in parts {
        let Ok(kv) = std::str::from_utf8(p) else {
            continue;
        };
        match kv.split_once('=') {
            Some(("ACTION", v)) => ev.action = v.to_string(),
            Some(("SUBSYSTEM", v)) => ev.subsystem = v.to_string(),
            Some(("DEVTYPE", v)) => ev.devtype = v.to_string(),
            Some(("DEVNAME", v)) => ev.devname = v.to_string(),
            _ => {}
        }
    }
    (!ev.action.is_empty()).then_some(ev)
}

/// A listener on the kernel's uevent multicast group (needs no privilege to receive).
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    /// Opens the socket; open it before the first look so no event falls in between.
    pub fn open() -> nix::Result<UeventSocket> {
        use nix::sys::socket::{
            bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
        Ok(UeventSocket { fd })
    }

    /// Every event queued now, without waiting.
    pub fn drain(&self) -> Vec<Uevent> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Ok(n) => {
                    if let Some(ev) = buf.get(..n).and_then(parse_uevent) {
                        out.push(ev);
                    }
                }
                // ENOBUFS: events were lost; count it as activity so the wait goes on.
                Err(nix::Error::ENOBUFS) => out.push(Uevent::default()),
                Err(nix::Error::EINTR) => continue,
                Err(_) => return out,
            }
        }
    }

    /// Waits up to `timeout` for the next events (at least one unless the time runs out).
    pub fn wait(&self, timeout: Duration) -> Vec<Uevent> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        self.drain()
    }
}

/// Looks at the devices until they settle or `max` passes; logs what it waited for.
pub fn wait(
    sys_block: &Path,
    proc_modules: &Path,
    events: Option<&UeventSocket>,
    quiet: Duration,
    max: Duration,
) -> Verdict {
    let start = Instant::now();
    let mut settler = Settler::new(start, quiet, max);
    let mut last_log = start;
    loop {
        let snap = Snapshot {
            disks: crate::scan::names(sys_block),
            loading: std::fs::read_to_string(proc_modules)
                .map(|t| loading_modules(&t))
                .unwrap_or_default(),
            events: events.map(|e| e.drain().len()).unwrap_or(0),
        };
        if let Some(v) = settler.observe(Instant::now(), &snap) {
            match v {
                Verdict::Settled(d) => tracing::info!(
                    waited_ms = d.as_millis() as u64,
                    disks = ?snap.disks,
                    "devices settled"
                ),
                Verdict::TimedOut(d) => tracing::warn!(
                    waited_ms = d.as_millis() as u64,
                    disks = ?snap.disks,
                    loading = ?snap.loading,
                    "devices still busy after the longest wait; deciding with what is there"
                ),
            }
            return v;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(disks = ?snap.disks, loading = ?snap.loading, events = snap.events,
                "waiting for devices to settle");
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(disks: &[&str], loading: &[&str], events: usize) -> Snapshot {
        Snapshot {
            disks: disks.iter().map(|s| s.to_string()).collect(),
            loading: loading.iter().map(|s| s.to_string()).collect(),
            events,
        }
    }

    #[test]
    fn settles_after_a_quiet_period_and_restarts_on_activity() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = Settler::new(t0, Duration::from_secs(2), Duration::from_secs(30));
        assert_eq!(s.observe(ms(0), &snap(&["sda"], &[], 0)), None);
        assert_eq!(s.observe(ms(1500), &snap(&["sda"], &[], 0)), None);
        // A disk shows up late: the quiet period starts again.
        assert_eq!(s.observe(ms(1900), &snap(&["sda", "sdb"], &[], 0)), None);
        assert_eq!(s.observe(ms(3800), &snap(&["sda", "sdb"], &[], 0)), None);
        // A module still loading, then a uevent, each restart it.
        assert_eq!(
            s.observe(ms(3850), &snap(&["sda", "sdb"], &["virtio_scsi"], 0)),
            None
        );
        assert_eq!(s.observe(ms(5000), &snap(&["sda", "sdb"], &[], 3)), None);
        assert_eq!(s.observe(ms(6900), &snap(&["sda", "sdb"], &[], 0)), None);
        assert_eq!(
            s.observe(ms(7000), &snap(&["sda", "sdb"], &[], 0)),
            Some(Verdict::Settled(Duration::from_millis(7000)))
        );
    }

    #[test]
    fn busy_devices_give_up_at_the_deadline() {
        let t0 = Instant::now();
        let mut s = Settler::new(t0, Duration::from_secs(2), Duration::from_secs(5));
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(100 * i);
            if let Some(v) = s.observe(now, &snap(&[], &[], 1)) {
                assert_eq!(v, Verdict::TimedOut(Duration::from_secs(5)));
                return;
            }
        }
        panic!("never gave up");
    }

    #[test]
    fn proc_modules_loading_state() {
        let text = "btrfs 1200000 0 - Live 0x0000000000000000\n\
                    virtio_scsi 20480 0 - Loading 0x0000000000000000\n\
                    sd_mod 61440 2 - Live 0x0\n";
        assert_eq!(loading_modules(text), ["virtio_scsi"]);
        assert!(loading_modules("").is_empty());
    }

    #[test]
    fn uevents_are_parsed() {
        let msg = b"add@/devices/pci0000:00/virtio2/host0/target0:0:1/0:0:1:0/block/sdb\0ACTION=add\0DEVPATH=/devices/x/block/sdb\0SUBSYSTEM=block\0MAJOR=8\0MINOR=16\0DEVNAME=sdb\0DEVTYPE=disk\0SEQNUM=1234\0";
        let ev = parse_uevent(msg).unwrap();
        assert!(ev.is_disk_added());
        assert_eq!(ev.devname, "sdb");
        let part = b"add@/x/sdb1\0ACTION=add\0SUBSYSTEM=block\0DEVTYPE=partition\0DEVNAME=sdb1\0";
        assert!(!parse_uevent(part).unwrap().is_disk_added());
        assert_eq!(parse_uevent(b"libudev\0garbage"), None);
        assert_eq!(parse_uevent(b""), None);
    }
}
