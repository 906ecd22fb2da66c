//! `grid`: a thin entry over [`cli::run`].

fn main() -> std::process::ExitCode {
    cli::run(std::env::args_os())
}
