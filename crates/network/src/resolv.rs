//! `/etc/resolv.conf` from the DNS servers the leases carry, written atomically.

use crate::{Error, Result};
use std::net::IpAddr;
use std::path::Path;

/// Renders resolv.conf text: at most three servers (the resolver's limit), no duplicates.
pub fn render(servers: &[IpAddr]) -> String {
    let mut out = String::from("# written by gridos-network\n");
    let mut seen = Vec::new();
    for s in servers {
        if !seen.contains(s) && seen.len() < 3 {
            seen.push(*s);
            out.push_str(&format!("nameserver {s}\n"));
        }
    }
    out
}

/// Writes `text` to `path` (mode 0644) so readers never see half a file, creating the
/// directory if needed.
pub fn write_atomic(path: &Path, text: &[u8]) -> Result<()> {
    let err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    atomicfile::write(path, text, 0o644).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_writes() {
        let a: IpAddr = "10.0.0.53".parse().unwrap();
        let b: IpAddr = "1.1.1.1".parse().unwrap();
        let c: IpAddr = "2001:db8::1".parse().unwrap();
        let d: IpAddr = "9.9.9.9".parse().unwrap();
        let t = render(&[a, b, a, c, d]);
        assert_eq!(
            t,
            "# written by gridos-network\nnameserver 10.0.0.53\nnameserver 1.1.1.1\nnameserver 2001:db8::1\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/resolv.conf");
        write_atomic(&p, t.as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), t);
    }
}
