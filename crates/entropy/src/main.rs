//! `gridos-entropy`: the `entropy` service; exits 0 once the kernel's CRNG is ready.

pub fn main() -> anyhow::Result<()> {
    svclog::init("info");
    gridentropy::run();
    Ok(())
}
