//! The `build` arguments shared by `gridos-imager build` and `grid image build`.

use std::path::PathBuf;

use crate::{Options, Report};

/// Command-line arguments of an image build.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The image profile.
    #[arg(long, default_value = "image/profile.yaml")]
    pub profile: PathBuf,
    /// Output folder.
    #[arg(short = 'o', long, default_value = "out")]
    pub out: PathBuf,
    /// Folder holding the static gridos binaries
    /// [default: $CARGO_TARGET_DIR or target, then image-bin, where `make init` gathers them].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Kernel package download cache.
    #[arg(long, default_value = "build/image-cache")]
    pub cache: PathBuf,
    /// Extracted kernel tree (boot/vmlinuz-V, lib/modules/V) instead of the profile's kernel.
    #[arg(long, env = "GRIDOS_KERNEL_ROOT")]
    pub kernel_root: Option<PathBuf>,
    /// mtime of every archive entry.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    pub source_date_epoch: u32,
    /// Bake `gridos.farm=ID` into the default command line.
    #[arg(long)]
    pub farm: Option<u64>,
    /// More kernel command-line words after the profile's (repeatable).
    #[arg(long = "append")]
    pub append: Vec<String>,
    /// Extra folder copied into the image root after the profile's files (repeatable).
    #[arg(long)]
    pub overlay: Vec<PathBuf>,
    /// Fail on any missing binary or helper, not only required ones.
    #[arg(long)]
    pub strict: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The release key's public half (64 hex digits, as `gridos-imager release-key` prints
    /// it): the image trusts system extensions (the VM runtime) signed with it.
    #[arg(long, env = "GRIDOS_RELEASE_PUB")]
    pub release_pub: Option<String>,
}

impl BuildArgs {
    /// The build options these arguments describe.
    pub fn options(&self) -> Options {
        let bin_dir = self.bin_dir.clone().unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("image-bin")
        });
        let mut cmdline_append: Vec<String> = self
            .farm
            .map(|f| format!("gridos.farm={f}"))
            .into_iter()
            .collect();
        cmdline_append.extend(self.append.iter().cloned());
        Options {
            profile: self.profile.clone(),
            out: self.out.clone(),
            bin_dir,
            cache: self.cache.clone(),
            kernel_root: self
                .kernel_root
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            source_date_epoch: self.source_date_epoch,
            overlays: self.overlay.clone(),
            cmdline_append,
            strict: self.strict,
            quiet: self.quiet,
            release_pub: self.release_pub.clone().filter(|k| !k.trim().is_empty()),
        }
    }
}

/// A human summary of a build: sizes, kernel package, skipped binaries.
pub fn summary(r: &Report, out: &std::path::Path) -> String {
    let mb = |n: u64| n as f64 / 1e6;
    let mut s = format!(
        "kernel {} ({} {}): {:.2} MB\ninitramfs: {:.2} MB, {} entries, {} modules\n\
         gridos binaries: {:.2} MB\nkernel + initramfs: {:.2} MB\ncmdline: {}\nwritten to {}\n",
        r.kernel.release,
        r.kernel.package.as_deref().unwrap_or("local tree"),
        r.kernel.package_version.as_deref().unwrap_or(""),
        mb(r.kernel_bytes),
        mb(r.initramfs_bytes),
        r.entries,
        r.modules.len(),
        mb(r.gridos_binaries_bytes),
        mb(r.kernel_bytes + r.initramfs_bytes),
        r.cmdline,
        out.display()
    );
    if !r.skipped.is_empty() {
        s += &format!("skipped (missing): {}\n", r.skipped.join(", "));
    }
    s
}
