//! Wired links from `/sys/class/net`: which ones DHCP runs on.

use std::path::Path;

/// One network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Kernel interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// ARPHRD type (1 = Ethernet).
    pub kind: u32,
    /// Has a `wireless` or `phy80211` entry.
    pub wireless: bool,
    /// Backed by hardware (`device` link present), not a bridge/veth/tunnel.
    pub physical: bool,
}

fn read(dir: &Path, f: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(f))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut it = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(mac)
}

/// Reads every interface of a `/sys/class/net`-shaped tree, sorted by name.
pub fn scan(sys_net: &Path) -> Vec<Link> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys_net) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = sys_net.join(&name);
        let Some(index) = read(&dir, "ifindex").and_then(|v| v.parse().ok()) else {
            continue;
        };
        out.push(Link {
            index,
            mac: read(&dir, "address")
                .and_then(|m| parse_mac(&m))
                .unwrap_or_default(),
            kind: read(&dir, "type").and_then(|v| v.parse().ok()).unwrap_or(0),
            wireless: dir.join("wireless").exists() || dir.join("phy80211").exists(),
            physical: dir.join("device").exists(),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether DHCP should run on this link. `only` (tests, or a farmer's choice) names the
/// links to use and lifts the "physical" rule, so a veth can be used in a namespace.
pub fn is_wired(link: &Link, only: Option<&[String]>) -> bool {
    if let Some(only) = only {
        return only.contains(&link.name);
    }
    link.kind == 1 && !link.wireless && link.physical && link.name != "lo"
}

/// Whether the link has carrier (`carrier` reads `1`; unreadable while down).
pub fn has_carrier(sys_net: &Path, name: &str) -> bool {
    read(&sys_net.join(name), "carrier").as_deref() == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake(root: &Path, name: &str, idx: u32, kind: u32, physical: bool, wireless: bool) {
        let d = root.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("ifindex"), format!("{idx}\n")).unwrap();
        fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        fs::write(d.join("address"), "52:54:00:12:34:56\n").unwrap();
        fs::write(d.join("carrier"), "1\n").unwrap();
        if physical {
            fs::create_dir_all(d.join("device")).unwrap();
        }
        if wireless {
            fs::create_dir_all(d.join("wireless")).unwrap();
        }
    }

    #[test]
    fn only_physical_ethernet() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "lo", 1, 772, false, false);
        fake(t.path(), "eth0", 2, 1, true, false);
        fake(t.path(), "wlan0", 3, 1, true, true);
        fake(t.path(), "veth1", 4, 1, false, false);
        fake(t.path(), "enp1s0", 5, 1, true, false);
        let links = scan(t.path());
        assert_eq!(links.len(), 5);
        let wired: Vec<_> = links
            .iter()
            .filter(|l| is_wired(l, None))
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(wired, ["enp1s0", "eth0"]);
        assert_eq!(links[1].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let only = vec!["veth1".to_string()];
        let wired: Vec<_> = links
            .iter()
            .filter(|l| is_wired(l, Some(&only)))
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(wired, ["veth1"]);
        assert!(has_carrier(t.path(), "eth0"));
        assert!(!has_carrier(t.path(), "nope"));
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("00:11:22:33:44:ff"),
            Some([0, 0x11, 0x22, 0x33, 0x44, 0xff])
        );
        assert_eq!(parse_mac("00:11:22:33:44"), None);
        assert_eq!(parse_mac("00:11:22:33:44:55:66"), None);
        assert_eq!(parse_mac("zz:11:22:33:44:55"), None);
    }
}
