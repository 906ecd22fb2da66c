//! A thread in a network namespace of its own, for the root tests that build networks: the
//! tests make their own namespaces and never touch the host's network. Included by each test
//! binary that needs it (`#[path = "support/netns.rs"] mod netns;`).

use std::process::Command;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// A thread in a network namespace of its own that runs what it is given.
pub struct Ns {
    jobs: mpsc::Sender<Job>,
    /// The thread's id: `/proc/TID/ns/net` is the namespace.
    pub tid: i32,
}

impl Ns {
    pub fn new() -> Ns {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            for job in rx {
                job();
            }
        });
        Ns {
            jobs,
            tid: tid_rx.recv().unwrap(),
        }
    }

    /// Runs `f` in the namespace and returns what it returned.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().expect("the namespace thread panicked")
    }

    /// `ip ARGS` in this namespace.
    pub fn ip(&self, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self.run(move || Command::new("ip").args(&args).output().unwrap());
        assert!(
            out.status.success(),
            "ip: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
