//! What the VM driver's tests share: the tiny guest's spec and its console.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::{Accel, Boot, Spec, Vm};

/// A twin's key, as the seed carries it.
pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0dN0wJ8m4vD8pd0t3cLZfmhvbZlmB0wV2fQmBdpzC twin@laptop";
/// Guest time under TCG on a busy 2-core machine; the guest is up in a few seconds otherwise.
pub const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// The tiny guest booting its own kernel under TCG: 1 vCPU, 256 MiB, nothing attached.
pub fn spec(guest: &test_infra::guest::Guest, name: &str, extra: &str) -> Spec {
    Spec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        boot: Boot::Kernel {
            kernel: guest.kernel.clone(),
            initrd: Some(guest.initrd.clone()),
            cmdline: format!("{} {extra}", test_infra::guest::CMDLINE),
        },
        disks: vec![],
        seed: None,
        nic: None,
        accel: Accel::Tcg,
        cgroup: None,
    }
}

/// The console as it arrives, kept whole, and copied to the test's artifacts.
#[derive(Clone)]
pub struct Console(Arc<Mutex<String>>);

impl Console {
    pub fn follow(out: ChildStdout, name: &str) -> Console {
        let text = Arc::new(Mutex::new(String::new()));
        let keep = text.clone();
        let artifacts = std::env::var_os("GRIDOS_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts")
            });
        let _ = std::fs::create_dir_all(&artifacts);
        let log = artifacts.join(format!("vm-{name}.console"));
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out);
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                keep.lock().unwrap().push_str(&line);
                line.clear();
            }
            let _ = std::fs::write(log, keep.lock().unwrap().as_bytes());
        });
        Console(text)
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    pub fn wait_for(&self, needle: &str, vm: &mut Vm) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = vm.try_wait() {
                panic!("the hypervisor ended ({status}) before {needle:?}; console:\n{text}");
            }
            assert!(
                t0.elapsed() < BOOT_LIMIT,
                "no {needle:?} within {BOOT_LIMIT:?}; console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
