//! `gridos-agent`: a thin entry over [`agent::cli::run`].

fn main() -> anyhow::Result<()> {
    agent::cli::run(std::env::args_os())
}
