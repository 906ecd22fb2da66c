//! `gridos-network`: a thin entry over [`network::cli::run`].

fn main() -> anyhow::Result<()> {
    network::cli::run(std::env::args_os())
}
