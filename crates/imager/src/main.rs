//! `gridos-imager`: the command-line front of the imager library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Builds the gridos initramfs, kernel and command line into an output folder.
#[derive(Parser)]
#[command(name = "gridos-imager", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the image described by a profile.
    Build(BuildArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The image profile.
    #[arg(long, default_value = "image/profile.yaml")]
    profile: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Folder holding the static gridos binaries.
    #[arg(long, default_value = "target/x86_64-unknown-linux-gnu/initramfs")]
    bin_dir: PathBuf,
    /// Kernel package download cache.
    #[arg(long, default_value = "build/image-cache")]
    cache: PathBuf,
    /// Extracted kernel tree (boot/vmlinuz-V, lib/modules/V) instead of the profile's kernel.
    #[arg(long, env = "GRIDOS_KERNEL_ROOT")]
    kernel_root: Option<PathBuf>,
    /// mtime of every archive entry.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u32,
    /// Extra folder copied into the image root after the profile's files (repeatable).
    #[arg(long)]
    overlay: Vec<PathBuf>,
    /// Fail on any missing binary or helper, not only required ones.
    #[arg(long)]
    strict: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the build report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let Cmd::Build(a) = Cli::parse().cmd;
    let opts = gridos_imager::Options {
        profile: a.profile,
        out: a.out.clone(),
        bin_dir: a.bin_dir,
        cache: a.cache,
        kernel_root: a.kernel_root.filter(|p| !p.as_os_str().is_empty()),
        source_date_epoch: a.source_date_epoch,
        overlays: a.overlay,
        strict: a.strict,
        quiet: a.quiet,
    };
    let r = gridos_imager::build(&opts).context("image build failed")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mb = |n: u64| n as f64 / 1e6;
        println!(
            "kernel {} ({} {}): {:.2} MB\ninitramfs: {:.2} MB, {} entries, {} modules\ngridos binaries: {:.2} MB\nkernel + initramfs: {:.2} MB\nwritten to {}",
            r.kernel.release,
            r.kernel.package.as_deref().unwrap_or("local tree"),
            r.kernel.package_version.as_deref().unwrap_or(""),
            mb(r.kernel_bytes),
            mb(r.initramfs_bytes),
            r.entries,
            r.modules.len(),
            mb(r.gridos_binaries_bytes),
            mb(r.kernel_bytes + r.initramfs_bytes),
            a.out.display()
        );
        if !r.skipped.is_empty() {
            println!("skipped (missing): {}", r.skipped.join(", "));
        }
    }
    Ok(())
}
