//! `gridos-bootcfg`: a thin entry over [`bootcfg::cli::run`].

fn main() -> anyhow::Result<()> {
    bootcfg::cli::run(std::env::args_os())
}
