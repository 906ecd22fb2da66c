//! `gridos-entropy`: a thin entry over [`entropy::cli::run`].

fn main() -> anyhow::Result<()> {
    entropy::cli::run(std::env::args_os())
}
