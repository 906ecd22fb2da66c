//! The node's boot settings. A USB image carries its farm's settings twice: built into the
//! kernel command line and as plain text in `gridos.cfg` on the stick's FAT partition, which a
//! farmer can edit on any laptop. At boot, before any service that reads settings,
//! `gridos-bootcfg` finds the stick (the GPT partition named `gridos-boot`), reads the file and
//! writes `/run/gridos/cmdline`: `/proc/cmdline` with the file's settings after it, so they win
//! (`cmdline::parse` keeps the last good value of a key). See docs/boot-media.md, "Settings".

pub mod cli;

use std::path::Path;

/// The settings file at the root of the boot partition.
pub const CONFIG_FILE: &str = "gridos.cfg";
/// The GPT name of the USB image's boot partition (`bootmedia::usb::PARTITION_NAME`).
pub const PARTITION_NAME: &str = "gridos-boot";
/// The word a USB image puts on its command line: only then is there a stick to wait for.
pub const MEDIA_WORD: &str = "gridos.media=usb";
/// A settings file larger than this is not read: it is not one a farmer wrote.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// What a settings file says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Good `key=value` words, in file order.
    pub words: Vec<String>,
    /// Each line that was not used, and why (with its line number).
    pub problems: Vec<String>,
}

/// Reads a settings file: `key=value` lines, `#` comments, blank lines; Windows line ends and
/// a byte-order mark (what Notepad writes) are fine. Only known `gridos.*` settings with a
/// valid value are taken; every other line is a problem, reported, and changes nothing.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        p.problems.push(format!(
            "{CONFIG_FILE} is {} bytes, more than {MAX_CONFIG_BYTES}: not read",
            bytes.len()
        ));
        return p;
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut bad = |why: String| p.problems.push(format!("line {n}: {why}"));
        if !line
            .chars()
            .all(|c| c.is_ascii_graphic() || c == ' ' || c == '\t')
        {
            bad("not plain ASCII text".into());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bad(format!("{line:?} is not key=value"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "gridos.media" {
            bad("gridos.media is set by the medium itself".into());
            continue;
        }
        if cmdline::EARLY_KEYS.contains(&key) {
            bad(format!(
                "{key} is read by PID 1 before the stick can be; set it on the kernel command line"
            ));
            continue;
        }
        if !cmdline::KEYS.contains(&key) {
            bad(if key.starts_with("gridos.") {
                format!(
                    "{key} is not a gridos setting (known: {})",
                    cmdline::KEYS.join(", ")
                )
            } else {
                format!("{key} is not a gridos.* setting; the kernel's own settings cannot be changed here")
            });
            continue;
        }
        if value.is_empty() || value.contains(char::is_whitespace) {
            bad(format!("{key}: the value must be one word"));
            continue;
        }
        let word = format!("{key}={value}");
        let (_, warnings) = cmdline::parse(&word);
        if let Some(w) = warnings.first() {
            bad(format!("{key}={}: {}", w.value, w.reason));
            continue;
        }
        p.words.push(word);
    }
    p
}

/// The node's command line: `line` (the kernel's) with `words` after it.
pub fn merge(line: &str, words: &[String]) -> String {
    let mut out = line.trim_end().to_string();
    for w in words {
        out.push(' ');
        out.push_str(w);
    }
    out.push('\n');
    out
}

/// The block device (a partition) whose GPT name is [`PARTITION_NAME`], from the `uevent`
/// files of a `/sys/class/block`-shaped folder. First by name when there are several.
pub fn find_partition(sys_class_block: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|name| {
        std::fs::read_to_string(sys_class_block.join(name).join("uevent"))
            .is_ok_and(|u| u.lines().any(|l| l == format!("PARTNAME={PARTITION_NAME}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_win_over_the_built_in_ones_and_mistakes_change_nothing() {
        let file = "\u{feff}# farm settings\r\n\
                    gridos.farm=5\r\n\
                    \r\n\
                    gridos.registry = http://10.0.2.2:8480\r\n\
                    gridos.wipe=sometimes\r\n\
                    gridos.fram=6\r\n\
                    init=/bin/sh\r\n\
                    gridos.media=iso\r\n\
                    gridos.hostname=a b\r\n\
                    just words\r\n\
                    gridos.log=d\u{e9}bug\r\n\
                    gridos.log=debug\r\n";
        let p = parse(file.as_bytes());
        assert_eq!(
            p.words,
            ["gridos.farm=5", "gridos.registry=http://10.0.2.2:8480"]
        );
        let problems = p.problems.join("\n");
        for want in [
            "line 5: gridos.wipe=sometimes: expected none|empty|all",
            "line 6: gridos.fram is not a gridos setting",
            "line 7: init is not a gridos.* setting",
            "line 8: gridos.media is set by the medium itself",
            "line 9: gridos.hostname: the value must be one word",
            "line 10: \"just words\" is not key=value",
            "line 11: not plain ASCII text",
            "line 12: gridos.log is read by PID 1 before the stick can be",
        ] {
            assert!(problems.contains(want), "{want} in\n{problems}");
        }
        assert_eq!(p.problems.len(), 8, "{problems}");

        let line = merge("console=ttyS0 gridos.farm=3 gridos.media=usb\n", &p.words);
        assert_eq!(
            line,
            "console=ttyS0 gridos.farm=3 gridos.media=usb gridos.farm=5 gridos.registry=http://10.0.2.2:8480\n"
        );
        let (s, w) = cmdline::parse(&line);
        assert_eq!(s.farm, Some(5), "the file wins");
        assert!(w.is_empty());
    }

    #[test]
    fn a_huge_or_binary_file_is_not_read() {
        let big = vec![b'#'; MAX_CONFIG_BYTES as usize + 1];
        let p = parse(&big);
        assert!(p.words.is_empty());
        assert!(
            p.problems[0].contains("more than 65536"),
            "{:?}",
            p.problems
        );
        let p = parse(&[0xff, 0x00, 0x9c, b'\n', b'g']);
        assert!(p.words.is_empty());
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        // A value too long for the command line parser is refused, not cut.
        let long = format!("gridos.hostname={}", "a".repeat(5000));
        let p = parse(long.as_bytes());
        assert!(p.words.is_empty(), "{:?}", p.words);
    }

    #[test]
    fn the_stick_is_found_by_its_partition_name() {
        let d = tempfile::tempdir().unwrap();
        for (name, uevent) in [
            ("sda", "DEVTYPE=disk\n"),
            ("sda1", "DEVTYPE=partition\nPARTNAME=EFI System\n"),
            ("sdb", "DEVTYPE=disk\n"),
            (
                "sdb1",
                "MAJOR=8\nDEVTYPE=partition\nPARTN=1\nPARTNAME=gridos-boot\n",
            ),
            ("sdc1", "PARTNAME=gridos-boot-old\n"),
        ] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("uevent"), uevent).unwrap();
        }
        assert_eq!(find_partition(d.path()).as_deref(), Some("sdb1"));
        std::fs::write(d.path().join("sdb1/uevent"), "PARTNAME=other\n").unwrap();
        assert_eq!(find_partition(d.path()), None);
    }
}
