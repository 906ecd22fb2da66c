//! Spawning children and reaping every process that exits, orphans included.
//!
//! Only this module calls `waitpid`: it reaps any child (`waitpid(-1)`) and hands
//! each exit status to whoever spawned that pid. A pid nobody waits for is an
//! orphan that was reparented to us; it is reaped and logged.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a child ended, in a form that is easy to show and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// True for a clean `exit(0)`.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Pids we spawned and the channel waiting for each one's exit.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

impl Reaper {
    /// A reaper with no children yet.
    pub fn new() -> Self {
        Reaper::default()
    }

    /// Spawns `cmd` and returns its pid and a receiver for its exit.
    ///
    /// The lock is held across the spawn, so the pid is registered before any
    /// `reap` can see it exit.
    pub fn spawn(&self, mut cmd: Command) -> std::io::Result<(i32, oneshot::Receiver<Exit>)> {
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let child = cmd.spawn()?;
        // Dropping the command closes our copies of the child's pipe ends.
        drop(cmd);
        let pid = child.id() as i32;
        // The child is reaped by `reap`, never through `Child::wait`.
        drop(child);
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Reaps every exited child; returns how many orphans (unknown pids) were reaped.
    ///
    /// The lock is held across `waitpid` too: `Command::spawn` waits for a child
    /// whose `exec` failed, and must not find it already reaped.
    pub fn reap(&self) -> usize {
        let mut orphans = 0;
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => s,
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Exit::Signal(sig as i32)),
                _ => continue,
            };
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    orphans += 1;
                    tracing::debug!(pid = pid.as_raw(), %exit, "reaped orphan");
                }
            }
        }
        orphans
    }

    /// Runs forever: reaps on every SIGCHLD, and once a second in case one was missed.
    pub async fn run(self: std::sync::Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "cannot watch SIGCHLD; reaping by polling"
                );
                None
            }
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let orphans = self.reap();
            if orphans > 0 {
                tracing::info!(count = orphans, "reaped orphaned processes");
            }
        }
    }
}
