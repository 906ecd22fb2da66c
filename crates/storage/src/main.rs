//! `gridos-storage`: a thin entry over [`storage::cli::run`].

fn main() -> anyhow::Result<()> {
    storage::cli::run(std::env::args_os())
}
