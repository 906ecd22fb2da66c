//! A reproducible cpio "newc" writer (the format the kernel unpacks as an
//! initramfs) and a reader used to check what was written.
//!
//! Reproducible means: the caller hands entries in a fixed order, every
//! entry gets the same mtime, uid/gid 0 and an inode number counted from 1 in
//! write order, so the same entries always give the same bytes.

use std::io::{self, Write};

/// What a cpio entry is; the payload lives here so a writer needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
    /// A character device (major, minor), e.g. `/dev/console`.
    CharDev(u32, u32),
}

/// One entry of an archive: a path relative to the archive root, its permission bits and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/`, e.g. `usr/bin/gridctl`.
    pub path: String,
    /// Permission bits (`0o755`); the file-type bits come from `kind`.
    pub perm: u32,
    /// What the entry is.
    pub kind: Kind,
}

impl Entry {
    /// The full `st_mode` (type bits and permission bits) written in the header.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev(..) => 0o020000,
        };
        ty | (self.perm & 0o7777)
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            Kind::Dir | Kind::CharDev(..) => &[],
        }
    }
}

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// Streams entries into a newc archive with fixed ownership, mtime and inode numbering.
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// A writer stamping every entry with `mtime` (seconds since the epoch, from `SOURCE_DATE_EPOCH`).
    pub fn new(out: W, mtime: u32) -> Self {
        Writer {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    /// Appends one entry.
    pub fn append(&mut self, e: &Entry) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
        let (rmaj, rmin) = match e.kind {
            Kind::CharDev(a, b) => (a, b),
            _ => (0, 0),
        };
        self.header(&e.path, ino, e.mode(), nlink, e.data().len(), rmaj, rmin)?;
        let data = e.data();
        self.put(data)?;
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 1, 0, 0, 0)?;
        self.pad()?;
        Ok(self.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: usize,
        rmaj: u32,
        rmin: u32,
    ) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB"),
            )
        })?;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            self.mtime,
            size,
            0, // devmajor
            0, // devminor
            rmaj,
            rmin,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut h = Vec::with_capacity(110 + name.len() + 4);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        self.put(&h)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

/// An entry read back from an archive, with the header fields tests care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// The entry as it would be handed to [`Writer::append`].
    pub entry: Entry,
    /// Inode number from the header.
    pub ino: u32,
    /// Owner uid from the header.
    pub uid: u32,
    /// Owner gid from the header.
    pub gid: u32,
    /// Modification time from the header.
    pub mtime: u32,
}

/// Why an archive could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The archive ends in the middle of an entry.
    #[error("cpio archive truncated at offset {0}")]
    Truncated(usize),
    /// A header does not start with the newc magic.
    #[error("bad cpio magic at offset {0}")]
    Magic(usize),
    /// A header field is not hexadecimal.
    #[error("bad cpio header field at offset {0}")]
    Field(usize),
    /// A mode the reader does not know.
    #[error("unsupported file type {mode:o} for {path}")]
    Type {
        /// The offending mode.
        mode: u32,
        /// The entry's path.
        path: String,
    },
}

/// Reads back a newc archive (uncompressed) up to its trailer.
pub fn parse(buf: &[u8]) -> Result<Vec<ParsedEntry>, ParseError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let align = |x: usize| (x + 3) & !3;
    loop {
        let h = buf.get(off..off + 110).ok_or(ParseError::Truncated(off))?;
        if &h[..6] != MAGIC {
            return Err(ParseError::Magic(off));
        }
        let field = |i: usize| -> Result<u32, ParseError> {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])
                .map_err(|_| ParseError::Field(off))?;
            u32::from_str_radix(s, 16).map_err(|_| ParseError::Field(off))
        };
        let (ino, mode, uid, gid, mtime, size) = (
            field(0)?,
            field(1)?,
            field(2)?,
            field(3)?,
            field(5)?,
            field(6)?,
        );
        let (rmaj, rmin, namesize) = (field(9)?, field(10)?, field(11)? as usize);
        let name_end = off + 110 + namesize;
        let name = buf
            .get(off + 110..name_end - 1)
            .ok_or(ParseError::Truncated(off))?;
        let path = String::from_utf8_lossy(name).into_owned();
        let data_start = align(name_end);
        let data_end = data_start + size as usize;
        let data = buf
            .get(data_start..data_end)
            .ok_or(ParseError::Truncated(data_start))?;
        off = align(data_end);
        if path == TRAILER {
            return Ok(out);
        }
        let kind = match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o100000 => Kind::File(data.to_vec()),
            0o120000 => Kind::Symlink(String::from_utf8_lossy(data).into_owned()),
            0o020000 => Kind::CharDev(rmaj, rmin),
            _ => return Err(ParseError::Type { mode, path }),
        };
        out.push(ParsedEntry {
            entry: Entry {
                path,
                perm: mode & 0o7777,
                kind,
            },
            ino,
            uid,
            gid,
            mtime,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                path: "dev".into(),
                perm: 0o755,
                kind: Kind::Dir,
            },
            Entry {
                path: "dev/console".into(),
                perm: 0o600,
                kind: Kind::CharDev(5, 1),
            },
            Entry {
                path: "init".into(),
                perm: 0o755,
                kind: Kind::File(b"#!/bin/true\n".to_vec()),
            },
            Entry {
                path: "odd".into(),
                perm: 0o644,
                kind: Kind::File(vec![1, 2, 3, 4, 5]),
            },
            Entry {
                path: "empty".into(),
                perm: 0o644,
                kind: Kind::File(vec![]),
            },
            Entry {
                path: "sbin".into(),
                perm: 0o777,
                kind: Kind::Symlink("usr/sbin".into()),
            },
        ]
    }

    fn write(entries: &[Entry], mtime: u32) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), mtime);
        for e in entries {
            w.append(e).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_through_own_reader() {
        let bytes = write(&sample(), 1_700_000_000);
        assert_eq!(bytes.len() % 4, 0);
        let back = parse(&bytes).unwrap();
        let entries: Vec<Entry> = back.iter().map(|p| p.entry.clone()).collect();
        assert_eq!(entries, sample());
        for (i, p) in back.iter().enumerate() {
            assert_eq!(p.ino, i as u32 + 1);
            assert_eq!((p.uid, p.gid, p.mtime), (0, 0, 1_700_000_000));
        }
    }

    #[test]
    fn same_entries_same_bytes() {
        assert_eq!(write(&sample(), 5), write(&sample(), 5));
        assert_ne!(write(&sample(), 5), write(&sample(), 6));
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        let Ok(_) = test_infra::require_tool("cpio") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, write(&sample(), 86400)).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv --quiet < {}", archive.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "odd", "empty", "usr/sbin"]
        );
        assert!(listing.contains("lrwxrwxrwx"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        // Extract (no device nodes: those need privileges on some hosts) and compare contents.
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cpio -id --quiet --no-absolute-filenames init odd < {}",
                archive.display()
            ))
            .current_dir(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join("odd")).unwrap(), [1, 2, 3, 4, 5]);
        assert_eq!(std::fs::read(x.join("init")).unwrap(), b"#!/bin/true\n");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(parse(b"hello"), Err(ParseError::Truncated(0))));
        let mut bytes = write(&sample(), 0);
        bytes[0] = b'1';
        assert!(matches!(parse(&bytes), Err(ParseError::Magic(0))));
    }
}
