//! Typed network settings from `gridos.net=`, with a clear reason when the static form is bad.

use cmdline::NetConfig;
use std::net::Ipv4Addr;

/// A validated static IPv4 configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Static {
    /// Interface name.
    pub iface: String,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
}

/// How the network is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// DHCP on every wired link with carrier.
    Dhcp,
    /// One static address.
    Static(Static),
}

/// Parses `<iface>:<addr>/<prefix>:<gateway>` (IPv4), saying exactly what is wrong.
pub fn parse_static(v: &str) -> Result<Static, String> {
    let mut parts = v.splitn(3, ':');
    let (Some(iface), Some(cidr), Some(gw)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{v:?}: expected <iface>:<addr>/<prefix>:<gateway>"));
    };
    if iface.is_empty() || iface.len() > 15 {
        return Err(format!("{iface:?}: interface name must be 1-15 characters"));
    }
    let Some((addr, prefix)) = cidr.split_once('/') else {
        return Err(format!("{cidr:?}: expected <addr>/<prefix>"));
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?}: not an IPv4 address"))?;
    let prefix: u8 = match prefix.parse() {
        Ok(p) if (1..=32).contains(&p) => p,
        _ => return Err(format!("{prefix:?}: prefix must be 1-32")),
    };
    let gateway: Ipv4Addr = gw
        .parse()
        .map_err(|_| format!("{gw:?}: gateway is not an IPv4 address"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    if prefix < 31 && (u32::from(addr) & mask) != (u32::from(gateway) & mask) {
        return Err(format!("gateway {gateway} is not inside {addr}/{prefix}"));
    }
    Ok(Static {
        iface: iface.to_string(),
        addr,
        prefix,
        gateway,
    })
}

/// Reads the mode from the kernel command line. A bad `gridos.net` is returned as an
/// error message next to the DHCP fallback, so the caller logs it loudly.
pub fn from_cmdline(line: &str) -> (Mode, Option<String>) {
    let (settings, warnings) = cmdline::parse(line);
    if let Some(w) = warnings.iter().find(|w| w.key == "gridos.net") {
        return (Mode::Dhcp, Some(format!("bad static config: {w}")));
    }
    from_net(&settings.net)
}

/// Validates an already-parsed `gridos.net` value.
pub fn from_net(net: &NetConfig) -> (Mode, Option<String>) {
    match net {
        NetConfig::Dhcp => (Mode::Dhcp, None),
        NetConfig::Static {
            iface,
            cidr,
            gateway,
        } => match parse_static(&format!("{iface}:{cidr}:{gateway}")) {
            Ok(s) => (Mode::Static(s), None),
            Err(e) => (
                Mode::Dhcp,
                Some(format!("bad static config gridos.net: {e}; using DHCP")),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_static() {
        let s = parse_static("eth0:10.1.2.3/24:10.1.2.1").unwrap();
        assert_eq!(s.iface, "eth0");
        assert_eq!(s.addr, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(s.prefix, 24);
        assert_eq!(s.gateway, Ipv4Addr::new(10, 1, 2, 1));
    }

    #[test]
    fn bad_static_says_why() {
        assert!(parse_static("eth0").unwrap_err().contains("expected"));
        assert!(parse_static("eth0:10.1.2.3:10.1.2.1")
            .unwrap_err()
            .contains("<addr>/<prefix>"));
        assert!(parse_static("eth0:10.1.2.300/24:10.1.2.1")
            .unwrap_err()
            .contains("not an IPv4"));
        assert!(parse_static("eth0:10.1.2.3/33:10.1.2.1")
            .unwrap_err()
            .contains("1-32"));
        assert!(parse_static("eth0:10.1.2.3/24:10.9.9.1")
            .unwrap_err()
            .contains("not inside"));
        assert!(parse_static("eth0:10.1.2.3/24:fe80::1")
            .unwrap_err()
            .contains("gateway"));
    }

    #[test]
    fn cmdline_modes() {
        assert_eq!(from_cmdline("quiet").0, Mode::Dhcp);
        assert_eq!(from_cmdline("gridos.net=dhcp").0, Mode::Dhcp);
        let (m, w) = from_cmdline("gridos.net=eth1:192.168.5.9/24:192.168.5.1");
        assert!(matches!(m, Mode::Static(ref s) if s.iface == "eth1"));
        assert!(w.is_none());
        let (m, w) = from_cmdline("gridos.net=eth1:garbage");
        assert_eq!(m, Mode::Dhcp);
        assert!(w.unwrap().contains("bad static config"));
        let (m, w) = from_cmdline("gridos.net=eth1:10.0.0.2/24:10.0.1.1");
        assert_eq!(m, Mode::Dhcp);
        assert!(w.unwrap().contains("not inside"));
    }
}
