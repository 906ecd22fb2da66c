//! An OCI distribution registry on 127.0.0.1 (Debian's `docker-registry serve`, its storage
//! in a temp dir) and images built from files and pushed to it. Errors are returned, not
//! panicked: the lab uses these too.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// A running `docker-registry`; killed when dropped.
#[derive(Debug)]
pub struct OciRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Where it keeps blobs (tests change them to play a hostile registry).
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OciRegistry {
    /// Starts `bin` (`docker-registry`) on a free loopback port and waits until it listens.
    /// The port is picked before the registry binds it, so another program may take it in
    /// between (tests run side by side): a registry that ends before it listens is started
    /// again on another port, and what it printed is in the error when that keeps happening.
    pub fn start(bin: &Path) -> io::Result<OciRegistry> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(bin)? {
                Ok(reg) => return Ok(reg),
                Err(said) => last = Some(said),
            }
        }
        Err(io::Error::other(format!(
            "docker-registry ended before it listened, three times; it said: {}",
            last.unwrap_or_default()
        )))
    }

    /// One start: `Ok(Err(what it said))` when it ended before listening.
    fn start_once(bin: &Path) -> io::Result<Result<OciRegistry, String>> {
        let dir = tempfile::tempdir()?;
        let port = crate::process::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // Owned at once, so a failed start below still kills and reaps it.
        let mut reg = OciRegistry {
            child,
            addr,
            storage,
            _dir: dir,
        };
        // Its last 2000 bytes; a character cut at the start shows as one U+FFFD.
        let said = || {
            let bytes = std::fs::read(&log_path).unwrap_or_default();
            let tail = &bytes[bytes.len().saturating_sub(2000)..];
            String::from_utf8_lossy(tail).trim().to_string()
        };
        // Generous: a loaded machine (CI boots guests beside this) starts it slowly.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(status) = reg.child.try_wait()? {
                return Ok(Err(format!("({status}) {}", said())));
            }
            if std::net::TcpStream::connect(&reg.addr).is_ok() {
                return Ok(Ok(reg));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "docker-registry did not listen on {} within 60 s; it said: {}",
            reg.addr,
            said()
        )))
    }

    /// Pushes an image of `layers` (tar.gz, lowest first) with the image config `config`
    /// as `name` (`repo:tag`); returns its reference (`127.0.0.1:PORT/repo:tag`).
    pub async fn push(
        &self,
        name: &str,
        layers: Vec<Vec<u8>>,
        config: Vec<u8>,
    ) -> Result<String, String> {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let reference = format!("{}/{name}", self.addr);
        let r: Reference = reference.parse().map_err(|e| format!("{reference}: {e}"))?;
        let layers: Vec<ImageLayer> = layers
            .into_iter()
            .map(|l| ImageLayer::new(l, IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(), None))
            .collect();
        let config = Config::new(config, IMAGE_CONFIG_MEDIA_TYPE.to_string(), None);
        let manifest = OciImageManifest::build(&layers, &config, None);
        client
            .push(
                &r,
                &layers,
                config,
                &RegistryAuth::Anonymous,
                Some(manifest),
            )
            .await
            .map_err(|e| format!("pushing {reference}: {e}"))?;
        Ok(reference)
    }

    /// Pushes `gridos/busybox:1`: one layer of the host's `busybox`, `/bin/sh` as its
    /// entrypoint, as the runtime tests run it. Returns its reference.
    pub async fn push_busybox(&self, busybox: &Path) -> Result<String, String> {
        let layer = busybox_layer(busybox).map_err(|e| format!("busybox layer: {e}"))?;
        self.push("gridos/busybox:1", vec![layer], config(&["/bin/sh"], &[]))
            .await
    }
}

/// A tar.gz layer of `(path, contents)` files; a path ending in `/` is a directory, and
/// `link:TARGET` contents make a symlink. Paths are written as given (`..` included), so
/// tests can build hostile layers.
pub fn layer(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if let Some(dir) = path.strip_suffix('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, dir, &[][..])?;
        } else if let Some(target) = data.strip_prefix(b"link:") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            let target = std::str::from_utf8(target).map_err(io::Error::other)?;
            b.append_link(&mut h, path, target)?;
        } else {
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            // Written by hand: `append_data` refuses the `..` a hostile layer carries.
            let name = path.as_bytes();
            let field = &mut h.as_old_mut().name;
            if name.len() > field.len() {
                return Err(io::Error::other(format!("path too long: {path}")));
            }
            field[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data)?;
        }
    }
    let tar = b.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    gz.finish()
}

/// Tools the busybox image links to busybox.
pub const BUSYBOX_TOOLS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "hostname", "id", "ls", "touch", "ip", "wget", "nc", "grep",
    "head", "tail", "seq", "dd", "true", "false", "ping", "httpd", "mkdir", "rm",
];

/// One layer with the static busybox at `busybox` as `/bin/busybox`, its tools linked to it,
/// and `/tmp`, `/etc`.
pub fn busybox_layer(busybox: &Path) -> io::Result<Vec<u8>> {
    let bytes = std::fs::read(busybox)?;
    let links: Vec<(String, Vec<u8>)> = BUSYBOX_TOOLS
        .iter()
        .map(|t| (format!("bin/{t}"), b"link:busybox".to_vec()))
        .collect();
    let mut files: Vec<(&str, &[u8])> = vec![
        ("bin/", b""),
        ("etc/", b""),
        ("tmp/", b""),
        ("bin/busybox", &bytes),
    ];
    files.extend(links.iter().map(|(p, d)| (p.as_str(), d.as_slice())));
    layer(&files)
}

/// An image config: `entrypoint`, `cmd`, `PATH=/bin`, working directory `/`.
pub fn config(entrypoint: &[&str], cmd: &[&str]) -> Vec<u8> {
    let list = |v: &[&str]| {
        let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(","))
    };
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":{},"Cmd":{},"Env":["PATH=/bin"],"WorkingDir":"/"}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
        list(entrypoint),
        list(cmd)
    )
    .into_bytes()
}
