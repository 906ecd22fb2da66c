//! Build progress: a bar on a terminal, plain lines otherwise (CI logs).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports build steps either as a progress bar or as plain `imager:` lines on stderr.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `steps` steps when stderr is a terminal and `quiet` is false; plain lines otherwise.
    pub fn new(steps: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(steps);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            ) {
                b.set_style(style);
            }
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Progress { bar }
    }

    /// A step begins.
    pub fn step(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(msg.to_string());
            }
            None => eprintln!("imager: {msg}"),
        }
    }

    /// A line that must stay visible (warnings, skipped binaries, results).
    pub fn line(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("imager: {msg}"),
        }
    }

    /// The build is over.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
