//! `gridos-youki-start run BUNDLE ID STATE` | `delete ID STATE`: one container made and started
//! with youki's libcontainer from an OCI bundle, the way crun is called by gridos-startbench.
//! `run` leaves the monotonic time at which it began in `BUNDLE/t0`, so the start can be timed
//! without the cost of executing this program.

use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

fn monotonic_ns() -> u128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn main() {
    let t0 = monotonic_ns();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 5 => run(t0, &args[2], &args[3], &args[4]),
        Some("delete") if args.len() == 4 => delete(&args[2], &args[3]),
        _ => Err("usage: gridos-youki-start run BUNDLE ID STATE | delete ID STATE".into()),
    };
    if let Err(e) = result {
        eprintln!("gridos-youki-start: {e}");
        std::process::exit(1);
    }
}

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn run(t0: u128, bundle: &str, id: &str, state: &str) -> Result {
    std::fs::write(PathBuf::from(bundle).join("t0"), t0.to_string())?;
    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state)?
        .validate_id()?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    container.start()?;
    Ok(())
}

fn delete(id: &str, state: &str) -> Result {
    let mut container = Container::load(PathBuf::from(state).join(id))?;
    container.delete(true)?;
    Ok(())
}
