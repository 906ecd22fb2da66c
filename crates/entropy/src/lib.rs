//! The `entropy` service: watching the kernel's random number generator until it is ready.
//!
//! Until the CRNG is initialised, every `getrandom()` without `GRND_NONBLOCK`/`GRND_INSECURE`
//! blocks: TLS, the node key, report nonces. On a CPU without RDRAND (QEMU's default `qemu64`,
//! older servers) and without a hardware RNG, that can take long, and a node that hangs
//! silently looks broken. This service (started by PID 1 with the first services, right after
//! coldplug) therefore says so on the console every few seconds, names the entropy sources it
//! has, and says when the CRNG becomes ready. It lives outside PID 1 to keep PID 1 small.
//!
//! The kernel's own CPU-jitter collection (run when something waits in `getrandom()`) does
//! not get the CRNG ready under QEMU's TCG with `qemu64` (measured: not within 100 s). The
//! kernel also has an SP 800-90B CPU-jitter entropy source with health tests,
//! `jitterentropy_rng` (the crypto API's seed source for its DRBG), which does work there; it
//! is reachable from user space through `AF_ALG` (`algif_rng`). While the CRNG is not ready,
//! this service reads it and adds it to the input pool with `RNDADDENTROPY`, crediting half of the
//! bits read (the same job `jitterentropy-rngd` does on distributions). Nothing is credited
//! once the CRNG is ready, and nothing of this runs on a CPU with RDRAND (ready at boot).

use std::path::Path;
use std::time::{Duration, Instant};

/// How often the console hears that the CRNG is still not ready.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Whether the kernel's CRNG is initialised: `getrandom(GRND_NONBLOCK)` for one byte, which
/// fails with `EAGAIN` exactly while it is not (and consumes nothing worth keeping).
pub fn crng_ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: the buffer is valid for writes of its length for the whole call; the flags ask
    // the kernel to fail instead of block.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    n == 1
}

/// The hardware RNGs the kernel found (`rng_available`) and the one feeding it (`rng_current`).
pub fn hw_rngs(misc: &Path) -> (String, String) {
    let read = |f: &str| {
        std::fs::read_to_string(misc.join("hw_random").join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    (read("rng_available"), read("rng_current"))
}

/// Whether the CPU offers RDRAND or RDSEED (the kernel trusts them by default on Debian).
pub fn cpu_rng(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "rdrand" || w == "rdseed"))
}

/// The console line while waiting.
pub fn waiting_line(waited: Duration, cpu_rng: bool, available: &str, current: &str) -> String {
    let hw = if current.is_empty() || current == "none" {
        "no hardware RNG in use".to_string()
    } else {
        format!("hardware RNG {current} feeding it (available: {available})")
    };
    format!(
        "ENTROPY: the kernel's random number generator is not ready after {:.0} s ({}, {hw}); \
         TLS and key generation wait for it and never use entropy that is not ready",
        waited.as_secs_f64(),
        if cpu_rng {
            "CPU has RDRAND"
        } else {
            "CPU has no RDRAND"
        },
    )
}

/// `_IOW('R', 0x03, int[2])` from `linux/random.h` (not in the `libc` crate).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Bytes read from the jitter source per round.
const JITTER_BYTES: usize = 32;

/// The kernel's CPU-jitter entropy source, read through `AF_ALG`.
struct KernelJitter {
    op: std::os::fd::OwnedFd,
    random: std::fs::File,
}

/// Why the kernel's jitter source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JitterError {
    /// A module could not be loaded.
    #[error("loading {module}")]
    Module {
        /// The module.
        module: &'static str,
        /// The cause.
        source: kmod::KmodError,
    },
    /// A socket call or `/dev/random` failed.
    #[error("{what}")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// The errno.
        source: nix::Error,
    },
}

impl KernelJitter {
    fn open() -> Result<KernelJitter, JitterError> {
        use nix::sys::socket::{accept, bind, socket, AddressFamily, AlgAddr, SockFlag, SockType};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // jitterentropy_rng hashes its samples with "sha3-256-generic" but declares no dependency
        // on it (and the kernel cannot ask modprobe here): sha3_generic goes first.
        for module in ["sha3_generic", "algif_rng", "jitterentropy_rng"] {
            kmod::load_module(module).map_err(|source| JitterError::Module { module, source })?;
        }
        let sys = |what| move |source| JitterError::Sys { what, source };
        let sock = socket(
            AddressFamily::Alg,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(sys("AF_ALG socket"))?;
        bind(sock.as_raw_fd(), &AlgAddr::new("rng", "jitterentropy_rng"))
            .map_err(sys("bind AF_ALG rng jitterentropy_rng"))?;
        let op = accept(sock.as_raw_fd()).map_err(sys("accept AF_ALG"))?;
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let op = unsafe { OwnedFd::from_raw_fd(op) };
        let random = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/random")
            .map_err(|e| JitterError::Sys {
                what: "open /dev/random",
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        Ok(KernelJitter { op, random })
    }

    /// Reads one round from the jitter source and adds it to the kernel's input pool,
    /// crediting half of its bits. Returns the bits credited.
    fn feed(&self) -> Result<u32, JitterError> {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        struct PoolInfo {
            entropy_count: libc::c_int,
            buf_size: libc::c_int,
            buf: [u8; JITTER_BYTES],
        }
        let mut info = PoolInfo {
            entropy_count: 0,
            buf_size: 0,
            buf: [0; JITTER_BYTES],
        };
        let n = nix::unistd::read(&self.op, &mut info.buf).map_err(|source| JitterError::Sys {
            what: "read jitterentropy_rng",
            source,
        })?;
        let credit = (n * 8 / 2) as u32;
        info.buf_size = n as libc::c_int;
        info.entropy_count = credit as libc::c_int;
        // SAFETY: RNDADDENTROPY reads a rand_pool_info (two ints, then buf_size bytes) from
        // `info`, which lives across the call and holds at least buf_size bytes.
        let rc = unsafe {
            libc::ioctl(
                self.random.as_raw_fd(),
                RNDADDENTROPY,
                &info as *const PoolInfo,
            )
        };
        if rc < 0 {
            return Err(JitterError::Sys {
                what: "RNDADDENTROPY",
                source: nix::Error::last(),
            });
        }
        Ok(credit)
    }
}

/// Watches until the CRNG is ready, feeding it jitter entropy and logging as it goes.
pub fn run() {
    let start = Instant::now();
    let mut next = start;
    let mut jitter = None;
    let mut credited = 0u32;
    while !crng_ready() {
        // The service starts after coldplug: RDRAND and the hardware RNG drivers had
        // their chance, so the jitter source is read at once.
        if jitter.is_none() {
            jitter = Some(KernelJitter::open().map_err(|e| {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "the kernel's jitter entropy source is unavailable"
                );
            }));
            if let Some(Ok(_)) = &jitter {
                tracing::info!("feeding the kernel's jitter entropy (jitterentropy_rng via AF_ALG) to its CRNG until it is ready");
            }
        }
        if let Some(Ok(j)) = &jitter {
            match j.feed() {
                Ok(bits) => credited += bits,
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "jitter entropy failed; waiting for other sources"
                    );
                    jitter = Some(Err(()));
                }
            }
        }
        if Instant::now() >= next {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let (available, current) = hw_rngs(Path::new("/sys/class/misc"));
            tracing::warn!(
                "{}",
                waiting_line(start.elapsed(), cpu_rng(&cpuinfo), &available, &current)
            );
            next += REPORT_EVERY;
        }
        if !matches!(jitter, Some(Ok(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    tracing::info!(
        waited_s = format!("{:.2}", start.elapsed().as_secs_f64()),
        jitter_bits_credited = credited,
        "kernel CRNG ready"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_crng_is_ready() {
        // Any machine that has been up for a while has it; this runs the real system call.
        assert!(crng_ready());
    }

    #[test]
    fn cpu_flags() {
        assert!(cpu_rng("flags\t: fpu rdrand lm\n"));
        assert!(cpu_rng("flags\t: fpu rdseed\n"));
        assert!(!cpu_rng(
            "flags\t: fpu vme de pse tsc msr pae mce cx8 apic sep\n"
        ));
        assert!(!cpu_rng(""));
    }

    #[test]
    fn the_waiting_line_names_what_is_missing() {
        let l = waiting_line(Duration::from_secs(10), false, "", "none");
        assert!(l.contains("not ready after 10 s"), "{l}");
        assert!(
            l.contains("no RDRAND") && l.contains("no hardware RNG"),
            "{l}"
        );
        let l = waiting_line(
            Duration::from_secs(5),
            false,
            "virtio_rng.0",
            "virtio_rng.0",
        );
        assert!(l.contains("hardware RNG virtio_rng.0 feeding it"), "{l}");
    }
}

pub mod cli;
