//! `gridctl`: a thin entry over [`gridctl::cli::run`].

fn main() -> anyhow::Result<()> {
    gridctl::cli::run(std::env::args_os())
}
