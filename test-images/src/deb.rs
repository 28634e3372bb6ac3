//! Reading files out of a Debian package: an `ar` archive (`debian-binary`,
//! `control.tar.*`, `data.tar.*`) whose data member is a tar archive compressed with xz,
//! zstd or gzip (or not at all). Everything is streamed, so a 400 MB kernel package never
//! sits in memory; extraction stops as soon as every wanted file has been found.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// What can go wrong reading a `.deb`.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The package file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The outer `ar` archive is malformed (not a .deb, or truncated).
    #[error("{path} is not a valid .deb (ar archive): {reason}")]
    BadAr {
        /// The package file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// There is no `data.tar*` member, or its compression is unknown.
    #[error("{path}: {reason}")]
    NoData {
        /// The package file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Decompressing or reading the data tarball failed (corrupt or truncated).
    #[error("{path}: corrupt data archive {member}: {source}")]
    BadData {
        /// The package file.
        path: String,
        /// The ar member being read.
        member: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// One member of an `ar` archive: its name and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    /// Member name with the GNU trailing `/` removed.
    pub name: String,
    /// Offset of the member's data from the start of the archive.
    pub offset: u64,
    /// Size of the member's data.
    pub size: u64,
}

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";

/// Lists the members of an `ar` archive.
///
/// # Errors
/// A string describing the first malformation found (bad magic, bad header, member
/// running past the end of the file).
pub fn ar_members<R: Read + Seek>(reader: &mut R) -> Result<Vec<ArMember>, String> {
    let len = reader.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 8];
    reader
        .read_exact(&mut magic)
        .map_err(|_| "file too short for an ar header".to_string())?;
    if &magic != AR_MAGIC {
        return Err("missing `!<arch>` magic".into());
    }
    let mut members = Vec::new();
    let mut at = 8u64;
    while at < len {
        let mut header = [0u8; 60];
        reader
            .seek(SeekFrom::Start(at))
            .map_err(|e| e.to_string())?;
        reader
            .read_exact(&mut header)
            .map_err(|_| format!("truncated member header at offset {at}"))?;
        if &header[58..60] != b"`\n" {
            return Err(format!("bad member header terminator at offset {at}"));
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size_text = String::from_utf8_lossy(&header[48..58]).trim().to_string();
        let size: u64 = size_text
            .parse()
            .map_err(|_| format!("bad size {size_text:?} for member {name:?}"))?;
        let offset = at + 60;
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(format!(
                "member {name:?} ({size} bytes) runs past the end of the file"
            ));
        }
        members.push(ArMember { name, offset, size });
        at = offset + size + (size & 1);
    }
    Ok(members)
}

/// Wraps `inner` in the decompressor for a `data.tar` member named `member`.
///
/// # Errors
/// An unknown suffix, or a zstd frame header that does not parse.
pub fn decompressor<'a, R: Read + 'a>(member: &str, inner: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match member.rsplit_once('.').map(|(_, ext)| ext) {
        Some("tar") => Box::new(inner),
        Some("xz") => Box::new(lzma_rust2::XzReader::new(inner, true)),
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        Some("zst") => Box::new(
            ruzstd::decoding::StreamingDecoder::new(inner)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        ),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("unsupported compression for member {member:?}"),
            ))
        }
    })
}

/// Normalises a tar path: strips `./` and leading `/`.
fn clean(path: &str) -> &str {
    path.trim_start_matches("./").trim_start_matches('/')
}

/// Extracts the regular files of a `.deb` whose paths (without a leading `./` or `/`)
/// satisfy one of the `wanted` predicates. Returns `(path, contents)` pairs in archive
/// order; reading stops once every predicate has matched at least once.
///
/// # Errors
/// [`DebError`] for unreadable, malformed, truncated or corrupt packages; never panics on
/// bad input.
pub fn extract(
    path: &Path,
    wanted: &[&dyn Fn(&str) -> bool],
) -> Result<Vec<(String, Vec<u8>)>, DebError> {
    let shown = path.display().to_string();
    let io_err = |source| DebError::Io {
        path: shown.clone(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let members = ar_members(&mut file).map_err(|reason| DebError::BadAr {
        path: shown.clone(),
        reason,
    })?;
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| {
            let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
            DebError::NoData {
                path: shown.clone(),
                reason: format!("no data.tar member (members: {names:?})"),
            }
        })?;
    file.seek(SeekFrom::Start(data.offset)).map_err(io_err)?;
    let raw = BufReader::with_capacity(1 << 16, file.take(data.size));
    let bad_data = |source| DebError::BadData {
        path: shown.clone(),
        member: data.name.clone(),
        source,
    };
    let stream = decompressor(&data.name, raw).map_err(|e| match e.kind() {
        io::ErrorKind::Unsupported => DebError::NoData {
            path: shown.clone(),
            reason: e.to_string(),
        },
        _ => bad_data(e),
    })?;
    let mut archive = tar::Archive::new(stream);
    let mut found = Vec::new();
    let mut matched = vec![false; wanted.len()];
    for entry in archive.entries().map_err(bad_data)? {
        let mut entry = entry.map_err(bad_data)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = clean(&entry.path().map_err(bad_data)?.to_string_lossy()).to_string();
        let hits: Vec<usize> = (0..wanted.len()).filter(|&i| wanted[i](&name)).collect();
        if hits.is_empty() {
            continue;
        }
        let mut contents = Vec::with_capacity(entry.size().min(1 << 28) as usize);
        entry.read_to_end(&mut contents).map_err(bad_data)?;
        if contents.len() as u64 != entry.size() {
            let msg = format!(
                "{name} is truncated ({} of {} bytes)",
                contents.len(),
                entry.size()
            );
            return Err(bad_data(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
        }
        for i in hits {
            matched[i] = true;
        }
        found.push((name, contents));
        if matched.iter().all(|&m| m) {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// Builds an `ar` archive from `(name, bytes)` members the way dpkg-deb does.
    pub(crate) fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            let header = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                "100644",
                data.len()
            );
            assert_eq!(header.len(), 60);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    /// A tar with `./`-prefixed paths, a directory and a symlink, like dpkg-deb's.
    pub(crate) fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        builder
            .append_data(&mut dir, "./boot/", io::empty())
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "./vmlinuz", "boot/vmlinuz-x")
            .unwrap();
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    pub(crate) fn deb(data_name: &str, data: &[u8]) -> Vec<u8> {
        ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", b"ignored"),
            (data_name, data),
        ])
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut w =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn write_temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("quetzal-deb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn is_kernel(p: &str) -> bool {
        p.starts_with("boot/vmlinuz-")
    }
    fn is_config(p: &str) -> bool {
        p.starts_with("boot/config-")
    }

    #[test]
    fn ar_members_lists_names_offsets_and_odd_padding() {
        let bytes = ar(&[("a", b"odd"), ("b/", b"even"), ("c", b"")]);
        let members = ar_members(&mut Cursor::new(&bytes)).unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(members[0].offset, 68);
        assert_eq!(&bytes[members[1].offset as usize..][..4], b"even");
        assert_eq!(members[2].size, 0);
    }

    #[test]
    fn extracts_wanted_files_from_every_compression() {
        let payload = tar(&[
            ("./boot/config-6.1.0-test", b"CONFIG_X=y\n"),
            ("./boot/vmlinuz-6.1.0-test", b"MZ kernel bytes"),
            ("./lib/modules/6.1.0-test/kernel/x.ko", b"module"),
        ]);
        for (name, data) in [
            ("data.tar", payload.clone()),
            ("data.tar.xz", xz(&payload)),
            ("data.tar.gz", gz(&payload)),
            ("data.tar.zst", zst(&payload)),
        ] {
            let path = write_temp(&format!("{name}.deb"), &deb(name, &data));
            let files = extract(&path, &[&is_kernel, &is_config]).unwrap();
            assert_eq!(
                files,
                [
                    (
                        "boot/config-6.1.0-test".to_string(),
                        b"CONFIG_X=y\n".to_vec()
                    ),
                    (
                        "boot/vmlinuz-6.1.0-test".to_string(),
                        b"MZ kernel bytes".to_vec()
                    ),
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn missing_files_give_an_empty_result() {
        let path = write_temp(
            "nothing.deb",
            &deb("data.tar", &tar(&[("./usr/share/doc/x", b"doc")])),
        );
        assert!(extract(&path, &[&is_kernel]).unwrap().is_empty());
    }

    #[test]
    fn garbage_gives_clear_errors() {
        let path = write_temp("garbage.deb", b"this is not an ar archive at all");
        let err = extract(&path, &[&is_kernel]).unwrap_err();
        assert!(matches!(err, DebError::BadAr { .. }), "{err}");
        assert!(err.to_string().contains("not a valid .deb"), "{err}");

        let path = write_temp("nodata.deb", &ar(&[("debian-binary", b"2.0\n")]));
        assert!(matches!(
            extract(&path, &[&is_kernel]),
            Err(DebError::NoData { .. })
        ));

        let path = write_temp("bz2.deb", &deb("data.tar.bz2", b"BZh"));
        let err = extract(&path, &[&is_kernel]).unwrap_err();
        assert!(err.to_string().contains("unsupported compression"), "{err}");

        for (name, data) in [
            ("data.tar.xz", b"\xfd7zXZ\0garbage".to_vec()),
            ("data.tar.zst", b"nope".to_vec()),
        ] {
            let path = write_temp(&format!("bad-{name}.deb"), &deb(name, &data));
            let err = extract(&path, &[&is_kernel]).unwrap_err();
            assert!(matches!(err, DebError::BadData { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let payload = tar(&[("./boot/vmlinuz-6.1.0-test", &[0x5a; 5000])]);
        for (name, data) in [
            ("data.tar.xz", xz(&payload)),
            ("data.tar.gz", gz(&payload)),
            ("data.tar", payload),
        ] {
            let whole = deb(name, &data);
            // Cut inside the data member, then fix up the ar header so only the
            // compressed stream is short.
            let cut = whole.len() - data.len() / 2;
            let mut short = whole[..cut].to_vec();
            let keep = data.len() - (whole.len() - cut);
            let size_at = short.len() - keep - 60 + 48;
            short[size_at..size_at + 10].copy_from_slice(format!("{keep:<10}").as_bytes());
            let path = write_temp(&format!("short-{name}.deb"), &short);
            assert!(extract(&path, &[&is_kernel]).is_err(), "{name}");
            // And a file cut without fixing the header is a bad ar archive.
            let path = write_temp(&format!("cut-{name}.deb"), &whole[..cut]);
            assert!(
                matches!(extract(&path, &[&is_kernel]), Err(DebError::BadAr { .. })),
                "{name}"
            );
        }
    }
}
