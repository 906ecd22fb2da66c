//! The cloud-init NoCloud seed: a small FAT image labelled `CIDATA` holding `meta-data`,
//! `user-data` and `network-config`, the way cloud-init's NoCloud data source finds them on
//! any attached disk. Every file is JSON (YAML 1.2 is a superset of it), written by
//! `serde_json`: a twin's hostname or key can never close a quote or start a new YAML key.

use std::io::{Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::Path;

use gridtypes::deployment::{ssh_key_ok, MAX_SSH_KEYS};
use serde_json::json;

/// The FAT image's size: the three files are a few KiB, and FAT12 wants at least this.
const IMAGE_BYTES: u64 = 1 << 20;

/// Why a seed cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A field the twin gave is not acceptable.
    #[error("invalid cloud-init seed: {0}")]
    Invalid(String),
    /// Writing the image failed.
    #[error("writing the cloud-init seed {path}: {source}")]
    Io {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The guest's static address on the twin's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The card the settings are for, matched by MAC address.
    pub mac: String,
    /// Address and prefix length, e.g. `10.20.0.5/24`.
    pub address: String,
    /// The default route.
    pub gateway: IpAddr,
    /// Name servers.
    pub dns: Vec<IpAddr>,
}

/// What the guest learns on first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Changes when the VM is a new instance: cloud-init runs its first-boot steps once per id.
    pub instance_id: String,
    /// The guest's host name.
    pub hostname: String,
    /// OpenSSH public keys for the default user and root.
    pub ssh_keys: Vec<String>,
    /// Static network settings, if the VM has a card.
    pub network: Option<Network>,
}

fn hostname_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn cidr_ok(a: &str) -> bool {
    let Some((ip, len_s)) = a.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(len)) = (ip.parse::<IpAddr>(), len_s.parse::<u8>()) else {
        return false;
    };
    // One spelling only: `/024` and `/+24` are refused.
    len_s == len.to_string() && len <= if ip.is_ipv4() { 32 } else { 128 }
}

impl Seed {
    /// Refuses what cloud-init would misread or a guest could be harmed by.
    pub fn check(&self) -> Result<(), SeedError> {
        let bad = |m: String| Err(SeedError::Invalid(m));
        if self.instance_id.is_empty()
            || self.instance_id.len() > 128
            || !self
                .instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return bad(format!("instance id {:?}", self.instance_id));
        }
        if !hostname_ok(&self.hostname) {
            return bad(format!(
                "host name {:?}: 1 to 63 letters, digits and inner '-'",
                self.hostname
            ));
        }
        if self.ssh_keys.len() > MAX_SSH_KEYS {
            return bad(format!(
                "{} SSH keys: at most {MAX_SSH_KEYS}",
                self.ssh_keys.len()
            ));
        }
        if let Some(k) = self.ssh_keys.iter().find(|k| !ssh_key_ok(k)) {
            let shown: String = k.chars().take(40).collect();
            return bad(format!(
                "SSH key {shown:?}…: one line `TYPE BASE64 [COMMENT]` of printable ASCII"
            ));
        }
        if let Some(n) = &self.network {
            if !cidr_ok(&n.address) {
                return bad(format!("address {:?}: ADDRESS/PREFIX", n.address));
            }
            if n.dns.len() > 3 {
                return bad("more than 3 name servers".into());
            }
        }
        Ok(())
    }

    /// `meta-data`: the instance id and host name.
    pub fn meta_data(&self) -> String {
        pretty(&json!({
            "instance-id": self.instance_id,
            "local-hostname": self.hostname,
        }))
    }

    /// `user-data`: a `#cloud-config` with the host name and the keys.
    pub fn user_data(&self) -> String {
        format!(
            "#cloud-config\n{}",
            pretty(&json!({
                "hostname": self.hostname,
                "ssh_authorized_keys": self.ssh_keys,
                "disable_root": false,
            }))
        )
    }

    /// `network-config`: version 2, the card matched by MAC and named `eth0`.
    pub fn network_config(&self) -> Option<String> {
        let n = self.network.as_ref()?;
        Some(pretty(&json!({
            "version": 2,
            "ethernets": {
                "eth0": {
                    "match": { "macaddress": n.mac },
                    "set-name": "eth0",
                    "addresses": [n.address],
                    "routes": [{ "to": "default", "via": n.gateway.to_string() }],
                    "nameservers": { "addresses": n.dns.iter().map(ToString::to_string).collect::<Vec<_>>() },
                }
            }
        })))
    }

    /// Writes the seed image to `path` (replacing it), after [`Seed::check`].
    pub fn write(&self, path: &Path) -> Result<(), SeedError> {
        self.check()?;
        let io = |source| SeedError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        file.set_len(IMAGE_BYTES).map_err(io)?;
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
        )
        .map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(io)?;
            let mut files = vec![
                ("meta-data", self.meta_data()),
                ("user-data", self.user_data()),
            ];
            if let Some(n) = self.network_config() {
                files.push(("network-config", n));
            }
            for (name, text) in files {
                let mut f = fs.root_dir().create_file(name).map_err(io)?;
                f.truncate().map_err(io)?;
                f.write_all(text.as_bytes()).map_err(io)?;
                f.flush().map_err(io)?;
            }
            fs.unmount().map_err(io)?;
        }
        file.sync_all().map_err(io)
    }
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0dN0wJ8m4vD8pd0t3cLZfmhvbZlmB0wV2fQmBdpzC twin@laptop";

    fn seed() -> Seed {
        Seed {
            instance_id: "c7-web-1".into(),
            hostname: "web".into(),
            ssh_keys: vec![KEY.into()],
            network: Some(Network {
                mac: "52:54:00:12:34:56".into(),
                address: "10.20.0.5/24".into(),
                gateway: "10.20.0.1".parse().unwrap(),
                dns: vec!["10.20.0.1".parse().unwrap()],
            }),
        }
    }

    fn read(img: &Path, name: &str) -> String {
        let mut f = std::fs::File::open(img).unwrap();
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
        let mut s = String::new();
        fs.root_dir()
            .open_file(name)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn the_image_holds_the_three_files_under_the_cidata_label() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("seed.img");
        seed().write(&img).unwrap();
        let mut f = std::fs::File::open(&img).unwrap();
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "CIDATA");
        drop(fs);
        let meta: serde_json::Value = serde_json::from_str(&read(&img, "meta-data")).unwrap();
        assert_eq!(meta["local-hostname"], "web");
        let user = read(&img, "user-data");
        let body = user.strip_prefix("#cloud-config\n").unwrap();
        let user: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(user["ssh_authorized_keys"][0], KEY);
        let net: serde_json::Value = serde_json::from_str(&read(&img, "network-config")).unwrap();
        assert_eq!(net["ethernets"]["eth0"]["addresses"][0], "10.20.0.5/24");
        assert_eq!(net["ethernets"]["eth0"]["routes"][0]["via"], "10.20.0.1");
    }

    #[test]
    fn rewriting_a_seed_replaces_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("seed.img");
        seed().write(&img).unwrap();
        let mut s = seed();
        s.network = None;
        s.hostname = "db".into();
        s.write(&img).unwrap();
        assert!(read(&img, "meta-data").contains("\"db\""));
        let mut f = std::fs::File::open(&img).unwrap();
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
        assert!(fs.root_dir().open_file("network-config").is_err());
    }

    #[test]
    fn hostile_fields_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        type Change = Box<dyn Fn(&mut Seed)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| s.hostname = "web\nruncmd: [reboot]".into()),
                "host name",
            ),
            (Box::new(|s| s.hostname = "-web".into()), "host name"),
            (Box::new(|s| s.hostname = "a".repeat(64)), "host name"),
            (Box::new(|s| s.instance_id = "../x".into()), "instance id"),
            (
                Box::new(|s| s.ssh_keys = vec![format!("{KEY}\nruncmd: [reboot]")]),
                "SSH key",
            ),
            (
                Box::new(|s| s.ssh_keys = vec!["ssh-dss AAAA x".into()]),
                "SSH key",
            ),
            (
                Box::new(|s| s.ssh_keys = vec!["ssh-ed25519 \"x\"".into()]),
                "SSH key",
            ),
            (
                Box::new(|s| s.ssh_keys = vec![format!("ssh-rsa {}", "A".repeat(5000))]),
                "SSH key",
            ),
            (Box::new(|s| s.ssh_keys = vec![KEY.into(); 17]), "SSH keys"),
            (
                Box::new(|s| s.network.as_mut().unwrap().address = "10.0.0.5".into()),
                "address",
            ),
            (
                Box::new(|s| s.network.as_mut().unwrap().address = "10.0.0.5/33".into()),
                "address",
            ),
            (
                Box::new(|s| s.network.as_mut().unwrap().address = "10.0.0.5/024".into()),
                "address",
            ),
        ];
        for (change, want) in cases {
            let mut s = seed();
            change(&mut s);
            let img = dir.path().join("bad.img");
            let err = s.write(&img).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should name {want}");
            assert!(!img.exists(), "nothing is written for a bad seed");
        }
    }

    #[test]
    fn a_comment_with_yaml_in_it_stays_inside_its_string() {
        let mut s = seed();
        s.ssh_keys = vec![format!(
            "{} evil: \"x\" # - [a]",
            &KEY[..KEY.rfind(' ').unwrap()]
        )];
        s.check().unwrap();
        let user = s.user_data();
        let v: serde_json::Value =
            serde_json::from_str(user.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert_eq!(v["ssh_authorized_keys"][0], s.ssh_keys[0]);
    }
}
