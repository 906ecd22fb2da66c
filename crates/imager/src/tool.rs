//! Host programs the imager runs (apt-get, dpkg-deb, mksquashfs, dpkg-query): their output,
//! or what failed said the way a person can act on (the package of a missing program, the
//! exit status and the program's own error output).

use std::process::Command;

/// A host program that could not be run or failed.
pub(crate) struct Failed {
    /// The command, as run.
    pub cmd: String,
    /// Why it failed.
    pub reason: String,
}

/// The standard output of `cmd`, when it ran and succeeded.
pub(crate) fn output(cmd: &mut Command) -> Result<String, Failed> {
    let show = format!("{cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| Failed {
        cmd: show.clone(),
        reason: hosttools::spawn_error(&program, e).to_string(),
    })?;
    if !out.status.success() {
        return Err(Failed {
            cmd: show,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
