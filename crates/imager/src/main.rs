//! `gridos-imager`: the command-line front of the imager library.

use std::path::PathBuf;

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
    /// Build a system extension (a signed squashfs, e.g. the VM runtime) from its profile.
    Extension {
        /// The extension profile.
        #[arg(long, default_value = "image/extensions/vm.yaml")]
        profile: PathBuf,
        /// Output folder: NAME.sqfs and its signed manifest NAME.json.
        #[arg(short = 'o', long, default_value = "out/extensions")]
        out: PathBuf,
        /// The release key (64 hex digits) that signs it.
        #[arg(long, default_value = "build/release.key")]
        key: PathBuf,
        /// Create the release key when the file does not exist (a development key).
        #[arg(long)]
        new_key: bool,
        /// Time of every file in the image.
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: u32,
    },
    /// Print the release key's public half (what images trust), creating the key if asked.
    ReleaseKey {
        /// The key file.
        #[arg(long, default_value = "build/release.key")]
        key: PathBuf,
        /// Create it when it does not exist.
        #[arg(long)]
        new_key: bool,
    },
}

fn key(path: &std::path::Path, new: bool) -> anyhow::Result<ed25519_dalek::SigningKey> {
    if new {
        Ok(imager::extension::ensure_key(path)?)
    } else {
        Ok(imager::extension::read_key(path)
            .with_context(|| "no release key: pass --new-key to create a development key")?)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build(a) => {
            let r = imager::build(&a.options()).context("image build failed")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", summary(&r, &a.out));
            }
        }
        Cmd::Extension {
            profile,
            out,
            key: key_path,
            new_key,
            source_date_epoch,
        } => {
            let p = imager::extension::load_profile(&profile)?;
            let k = key(&key_path, new_key)?;
            let r = imager::extension::build_extension(&p, &out, &k, source_date_epoch)
                .context("extension build failed")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "extension {} ({}): {} files, {:.1} MB unpacked, {:.1} MB image {}\nsha256 {}\nsigned by {} in {}",
                    r.manifest.name,
                    r.manifest.version,
                    r.files,
                    r.unpacked_bytes as f64 / 1e6,
                    r.manifest.size as f64 / 1e6,
                    r.image.display(),
                    r.manifest.sha256,
                    r.signer,
                    r.manifest_path.display()
                );
            }
        }
        Cmd::ReleaseKey {
            key: key_path,
            new_key,
        } => {
            let k = key(&key_path, new_key)?;
            println!("{}", hex::encode(k.verifying_key().as_bytes()));
        }
    }
    Ok(())
}
