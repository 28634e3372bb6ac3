//! The "newc" cpio format (`070701`), the one the Linux kernel unpacks as an initramfs.
//!
//! Every entry is a 110-byte ASCII header (the magic and thirteen 8-digit hex fields), the
//! NUL-terminated name padded so that header + name is a multiple of 4, then the data padded
//! to a multiple of 4. The archive ends with an entry named `TRAILER!!!`. See the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`.
//!
//! [`Writer`] produces deterministic archives (every mtime 0, inode numbers in order), and
//! [`parse`] reads them back (used by the tests and by `test-images list`).

use std::collections::BTreeSet;

/// The magic number of a newc header without checksums.
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of an entry header in bytes.
pub const HEADER_LEN: usize = 110;

/// File-type bits of `mode` (`S_IFMT`).
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// What can go wrong writing or reading a cpio archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// An entry name was empty, absolute after normalisation, contained a NUL byte or a
    /// `..` component, or was the reserved trailer name.
    #[error("invalid cpio entry name {0:?}")]
    BadName(String),
    /// The same path was added twice.
    #[error("duplicate cpio entry {0:?}")]
    Duplicate(String),
    /// A file was larger than the format's 32-bit size field.
    #[error("cpio entry {0:?} is too large (over 4 GiB)")]
    TooLarge(String),
    /// A header did not start with `070701`.
    #[error("bad cpio magic at offset {0}")]
    BadMagic(usize),
    /// A header field was not 8 hexadecimal digits.
    #[error("bad hex field in cpio header at offset {0}")]
    BadField(usize),
    /// The archive ended inside an entry or before the trailer.
    #[error("cpio archive truncated at offset {0}")]
    Truncated(usize),
}

/// One archive entry as read back by [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// Inode number.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Major number of a device node.
    pub rdev_major: u32,
    /// Minor number of a device node.
    pub rdev_minor: u32,
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

/// Builds a newc archive in memory.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
    names: BTreeSet<String>,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn normalise(path: &str) -> Result<String, CpioError> {
    let name = path.trim_start_matches('/').trim_end_matches('/');
    let bad = name.is_empty()
        || name == TRAILER
        || name.contains('\0')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CpioError::BadName(path.to_string()));
    }
    Ok(name.to_string())
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
            names: BTreeSet::new(),
        }
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let name = normalise(path)?;
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.clone()))?;
        if !self.names.insert(name.clone()) {
            return Err(CpioError::Duplicate(name));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        self.header(ino, mode, nlink, size, rdev, &name);
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
        Ok(())
    }

    fn header(&mut self, ino: u32, mode: u32, nlink: u32, size: u32, rdev: (u32, u32), name: &str) {
        let namesize = name.len() as u32 + 1;
        self.buf.extend_from_slice(MAGIC);
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        for field in [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ] {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
    }

    /// Adds a directory with permission bits `perm` (e.g. `0o755`).
    ///
    /// # Errors
    /// [`CpioError::BadName`] or [`CpioError::Duplicate`].
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(path, S_IFDIR | (perm & 0o7777), (0, 0), &[])
    }

    /// Adds a regular file.
    ///
    /// # Errors
    /// [`CpioError::BadName`], [`CpioError::Duplicate`] or [`CpioError::TooLarge`].
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// Adds a symbolic link pointing at `target`.
    ///
    /// # Errors
    /// [`CpioError::BadName`] or [`CpioError::Duplicate`].
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Adds a character device node.
    ///
    /// # Errors
    /// [`CpioError::BadName`] or [`CpioError::Duplicate`].
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(path, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, (0, 0), TRAILER);
        self.buf
    }
}

fn hex_field(buf: &[u8], at: usize) -> Result<u32, CpioError> {
    let digits = buf.get(at..at + 8).ok_or(CpioError::Truncated(at))?;
    let text = std::str::from_utf8(digits).map_err(|_| CpioError::BadField(at))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CpioError::BadField(at));
    }
    u32::from_str_radix(text, 16).map_err(|_| CpioError::BadField(at))
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Parses a whole (uncompressed) newc archive, stopping at the trailer.
///
/// # Errors
/// [`CpioError::BadMagic`], [`CpioError::BadField`] or [`CpioError::Truncated`] on malformed
/// input; never panics.
pub fn parse(buf: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let header = buf
            .get(at..at + HEADER_LEN)
            .ok_or(CpioError::Truncated(at))?;
        if &header[..6] != MAGIC {
            return Err(CpioError::BadMagic(at));
        }
        let field = |i: usize| hex_field(buf, at + 6 + 8 * i);
        let (ino, mode, uid, gid, nlink, mtime) = (
            field(0)?,
            field(1)?,
            field(2)?,
            field(3)?,
            field(4)?,
            field(5)?,
        );
        let size = field(6)? as usize;
        let (rdev_major, rdev_minor) = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_start = at + HEADER_LEN;
        let name_bytes = name_start
            .checked_add(namesize)
            .and_then(|end| buf.get(name_start..end))
            .ok_or(CpioError::Truncated(name_start))?;
        let name_bytes = name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes);
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let data_start = align4(name_start + namesize);
        let data = data_start
            .checked_add(size)
            .and_then(|end| buf.get(data_start..end))
            .ok_or(CpioError::Truncated(data_start))?;
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            rdev_major,
            rdev_minor,
            data: data.to_vec(),
        });
        at = align4(data_start + size);
    }
}

/// One line per entry in the style of `ls -l` / `cpio -itv`, for `test-images list`.
pub fn describe(entry: &Entry) -> String {
    let kind = match entry.mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFLNK => 'l',
        S_IFCHR => 'c',
        S_IFREG => '-',
        _ => '?',
    };
    let mut perms = String::new();
    for shift in [6, 3, 0] {
        let bits = (entry.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let size = match entry.mode & S_IFMT {
        S_IFCHR => format!("{}, {}", entry.rdev_major, entry.rdev_minor),
        _ => entry.data.len().to_string(),
    };
    let target = if entry.mode & S_IFMT == S_IFLNK {
        format!(" -> {}", String::from_utf8_lossy(&entry.data))
    } else {
        String::new()
    };
    format!(
        "{kind}{perms} {:>4} {:>4} {size:>10} {}{target}",
        entry.uid, entry.gid, entry.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF-ish").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.finish()
    }

    #[test]
    fn round_trips_every_entry_kind() {
        let entries = parse(&sample()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "bin/busybox",
                "bin/sh",
                "init",
                "empty"
            ]
        );
        let console = &entries[1];
        assert_eq!(console.mode, S_IFCHR | 0o600);
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[0].nlink, 2);
        assert_eq!(entries[3].data, b"\x7fELF-ish");
        assert_eq!(entries[3].mode, S_IFREG | 0o755);
        assert_eq!(entries[4].mode, S_IFLNK | 0o777);
        assert_eq!(entries[4].data, b"busybox");
        assert!(entries
            .iter()
            .all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));
        let inos: BTreeSet<_> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos.len(), entries.len(), "inode numbers are unique");
    }

    #[test]
    fn headers_are_aligned_and_archive_ends_with_trailer() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], MAGIC);
        // Walk the headers by hand: each starts on a 4-byte boundary with the magic.
        let mut at = 0;
        let mut last_name = String::new();
        while at < bytes.len() {
            assert_eq!(at % 4, 0);
            assert_eq!(&bytes[at..at + 6], MAGIC);
            let namesize = hex_field(&bytes, at + 6 + 8 * 11).unwrap() as usize;
            let size = hex_field(&bytes, at + 6 + 8 * 6).unwrap() as usize;
            let name = &bytes[at + HEADER_LEN..at + HEADER_LEN + namesize];
            assert_eq!(name.last(), Some(&0), "names are NUL-terminated");
            last_name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            at = align4(align4(at + HEADER_LEN + namesize) + size);
        }
        assert_eq!(at, bytes.len());
        assert_eq!(last_name, TRAILER);
    }

    #[test]
    fn header_fields_are_exact() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"xyz").unwrap();
        let bytes = w.finish();
        let expected = "070701\
            00000001000081a4000000000000000000000001000000000000000300000000\
            00000000000000000000000000000002\
            00000000a\0";
        assert_eq!(&bytes[..expected.len()], expected.as_bytes());
        // 110 + 2 = 112 is aligned, then "xyz" + one pad byte.
        assert_eq!(&bytes[112..116], b"xyz\0");
        assert_eq!(&bytes[116..122], MAGIC);
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        let mut w = Writer::new();
        for bad in ["", "/", "a/../b", "a//b", "./x", "TRAILER!!!", "nul\0"] {
            assert!(
                matches!(w.file(bad, 0o644, b""), Err(CpioError::BadName(_))),
                "{bad:?}"
            );
        }
        w.dir("etc", 0o755).unwrap();
        assert_eq!(
            w.dir("/etc/", 0o755),
            Err(CpioError::Duplicate("etc".into()))
        );
    }

    #[test]
    fn parse_reports_garbage_and_truncation() {
        let bytes = sample();
        assert_eq!(parse(b"not a cpio archive at all, but long enough to hold a header.....................................................").unwrap_err(), CpioError::BadMagic(0));
        for cut in [0, 5, 50, 112, 130, bytes.len() - 4] {
            assert!(
                matches!(parse(&bytes[..cut]), Err(CpioError::Truncated(_))),
                "cut at {cut}"
            );
        }
        let mut bad = bytes.clone();
        bad[10] = b'z';
        assert!(matches!(parse(&bad), Err(CpioError::BadField(_))));
        // A huge size field must not panic or allocate.
        let mut huge = bytes;
        huge[6 + 8 * 6..6 + 8 * 7].copy_from_slice(b"ffffffff");
        assert!(matches!(parse(&huge), Err(CpioError::Truncated(_))));
    }

    #[test]
    fn describe_looks_like_ls() {
        let entries = parse(&sample()).unwrap();
        assert_eq!(
            describe(&entries[1]),
            "crw-------    0    0       5, 1 dev/console"
        );
        assert!(describe(&entries[4]).ends_with("bin/sh -> busybox"));
    }
}
