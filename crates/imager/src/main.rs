//! `gridos-imager`: the command-line front of the imager library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use imager::cli::{summary, BuildArgs};

/// Builds the gridos initramfs, kernel and command line into an output folder.
#[derive(Parser)]
#[command(name = "gridos-imager", version)]
struct Cli {
    /// Print the build report as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the image described by a profile.
    Build(BuildArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Cmd::Build(a) = cli.cmd;
    let r = imager::build(&a.options()).context("image build failed")?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", summary(&r, &a.out));
    }
    Ok(())
}
