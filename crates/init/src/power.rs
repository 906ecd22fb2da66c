//! The end of PID 1: kill what is left, sync, unmount in reverse, `reboot(2)`.

use std::time::Duration;

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::control::PowerAction;
use crate::reaper::Reaper;

/// Mount points from `/proc/self/mounts` text, in mount order.
pub fn mount_points(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(unescape)
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/mounts`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kills every remaining process (TERM, then KILL after `grace`), reaping as it goes.
pub async fn kill_all(reaper: &Reaper, grace: Duration) {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        reaper.reap();
        if matches!(
            nix::sys::wait::waitpid(
                Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG)
            ),
            Err(nix::Error::ECHILD)
        ) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(100)).await;
    reaper.reap();
}

/// Syncs and unmounts everything but the root in reverse order; remounts read-only what stays busy.
///
/// Returns how many mounts were unmounted and how many were remounted read-only.
pub fn unmount_all() -> (usize, usize) {
    nix::unistd::sync();
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mut unmounted, mut read_only) = (0, 0);
    for target in mount_points(&text).into_iter().rev() {
        if target == "/" {
            continue;
        }
        match umount2(target.as_str(), MntFlags::empty()) {
            Ok(()) => unmounted += 1,
            Err(e) => {
                let ro = nix::mount::mount(
                    None::<&str>,
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                if ro.is_ok() {
                    read_only += 1;
                }
                tracing::debug!(target = %target, error = &e as &dyn std::error::Error, remounted_ro = ro.is_ok(), "busy");
            }
        }
    }
    nix::unistd::sync();
    (unmounted, read_only)
}

/// Calls `reboot(2)`; returns only if the kernel refused.
pub fn finish(action: PowerAction) -> nix::Error {
    let mode = match action {
        PowerAction::Poweroff => RebootMode::RB_POWER_OFF,
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        PowerAction::Halt => RebootMode::RB_HALT_SYSTEM,
    };
    tracing::info!(?action, "calling reboot(2)");
    match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}
