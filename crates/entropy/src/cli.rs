//! `gridos-entropy`: the `entropy` service; exits 0 once the kernel's CRNG is ready.

use clap::Parser;

/// Says when the kernel's CRNG is not ready and feeds it jitter entropy until it is.
#[derive(Debug, Parser)]
#[command(name = "gridos-entropy", version)]
struct Args {}

/// The program's entry: `args` is its whole command line, program name first.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let Args {} = Args::parse_from(args);
    svclog::init("info");
    crate::run();
    Ok(())
}
