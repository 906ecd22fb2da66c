//! `gridos-provision`: a thin entry over [`provision::cli::run`].

fn main() -> anyhow::Result<()> {
    provision::cli::run(std::env::args_os())
}
