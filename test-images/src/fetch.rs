//! Plain-HTTP downloads (Debian's archive is served over HTTP and apt checks files against
//! the Release file's checksums, as we do) and SHA256 helpers.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// What can go wrong fetching or verifying a file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (network, DNS, HTTP status).
    #[error("fetching {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Local file I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The bytes did not hash to the checksum from the index.
    #[error("SHA256 mismatch for {what}: expected {expected}, got {actual}")]
    Sha256Mismatch {
        /// What was checked (a URL or a path).
        what: String,
        /// The checksum the index promised.
        expected: String,
        /// The checksum of what we have.
        actual: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex SHA256 of a file's contents, streamed.
///
/// # Errors
/// [`FetchError::Io`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err(path))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks `actual` against `expected` (case-insensitively).
///
/// # Errors
/// [`FetchError::Sha256Mismatch`] naming `what`.
pub fn check_sha256(what: &str, expected: &str, actual: &str) -> Result<(), FetchError> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(FetchError::Sha256Mismatch {
            what: what.to_string(),
            expected: expected.to_ascii_lowercase(),
            actual: actual.to_string(),
        })
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("quetzal-test-images/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn open(url: &str) -> Result<impl Read, FetchError> {
    if !url.starts_with("http://") {
        return Err(FetchError::Http {
            url: url.to_string(),
            message: "only plain http:// mirrors are supported (files are verified by SHA256)"
                .into(),
        });
    }
    let response = agent().get(url).call().map_err(|e| FetchError::Http {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    Ok(response.into_body().into_reader())
}

/// Downloads `url` into memory (for small files such as `Release`).
///
/// # Errors
/// [`FetchError::Http`].
pub fn get(url: &str) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    open(url)?
        .read_to_end(&mut out)
        .map_err(|e| FetchError::Http {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    Ok(out)
}

/// Downloads `url` to `dest`, checking its SHA256 against `sha256`. The file appears under
/// its final name only once complete and verified (it is written to `dest.part` first), so
/// an interrupted run never leaves a bad file in the cache.
///
/// # Errors
/// [`FetchError::Http`], [`FetchError::Io`] or [`FetchError::Sha256Mismatch`].
pub fn download(url: &str, dest: &Path, sha256: &str) -> Result<(), FetchError> {
    let part = dest.with_extension("part");
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut reader = open(url)?;
    let mut out = File::create(&part).map_err(io_err(&part))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| FetchError::Http {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(&part))?;
    }
    out.sync_all().map_err(io_err(&part))?;
    drop(out);
    if let Err(e) = check_sha256(url, sha256, &hex(&hasher.finalize())) {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    fs::rename(&part, dest).map_err(io_err(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_strings() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let path = std::env::temp_dir().join(format!("quetzal-sha-{}", std::process::id()));
        fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"abc"));
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn sha256_mismatch_is_a_clear_error() {
        let err = check_sha256("pool/x.deb", "AA", &sha256_hex(b"abc")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("SHA256 mismatch for pool/x.deb"), "{text}");
        assert!(text.contains("expected aa"), "{text}");
        assert!(text.contains("got ba7816bf"), "{text}");
        assert!(check_sha256("x", &sha256_hex(b"abc").to_uppercase(), &sha256_hex(b"abc")).is_ok());
    }

    #[test]
    fn https_and_other_schemes_are_refused_without_network() {
        let err = get("https://example.invalid/x").err().unwrap();
        assert!(err.to_string().contains("only plain http://"), "{err}");
    }

    #[test]
    fn missing_files_are_io_errors() {
        let err = sha256_file(Path::new("/nonexistent/quetzal/file")).unwrap_err();
        assert!(matches!(err, FetchError::Io { .. }));
    }
}
