//! Debian archive indices: the `Release` file's checksums and the `Packages` stanzas, plus
//! Debian version ordering, enough to resolve a metapackage such as
//! `linux-image-cloud-amd64` to the kernel package it currently depends on.

use std::cmp::Ordering;
use std::collections::HashMap;

/// What can go wrong interpreting an index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// The Release file does not list the wanted index file.
    #[error("the Release file has no SHA256 entry for {0}")]
    NotInRelease(String),
    /// No stanza in `Packages` has this name.
    #[error("package {0} is not in the Packages index")]
    NoSuchPackage(String),
    /// The metapackage does not depend on a package with the expected prefix.
    #[error("{package} has no dependency starting with {prefix:?} (Depends: {depends:?})")]
    NoDependency {
        /// The metapackage.
        package: String,
        /// The dependency prefix looked for.
        prefix: String,
        /// Its Depends field.
        depends: String,
    },
    /// A stanza lacks a field we need.
    #[error("package {package} has no {field} field")]
    MissingField {
        /// The package.
        package: String,
        /// The field.
        field: &'static str,
    },
}

/// An index file listed in a `Release` file's `SHA256:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    /// Lower-case hex SHA256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Parses the `SHA256:` section of a `Release` file into path → checksum.
pub fn release_sha256(release: &str) -> HashMap<String, IndexFile> {
    let mut out = HashMap::new();
    let mut in_section = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            in_section = line.trim_end() == "SHA256:";
            continue;
        }
        if !in_section {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(sha), Some(size), Some(path), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            if let Ok(size) = size.parse() {
                out.insert(
                    path.to_string(),
                    IndexFile {
                        sha256: sha.to_ascii_lowercase(),
                        size,
                    },
                );
            }
        }
    }
    out
}

/// Looks up one path in a `Release` file.
///
/// # Errors
/// [`IndexError::NotInRelease`].
pub fn release_entry(release: &str, path: &str) -> Result<IndexFile, IndexError> {
    release_sha256(release)
        .remove(path)
        .ok_or_else(|| IndexError::NotInRelease(path.to_string()))
}

/// The fields of a `Packages` stanza that the builder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Package {
    /// `Package:`.
    pub name: String,
    /// `Version:`.
    pub version: String,
    /// `Depends:` (empty if absent).
    pub depends: String,
    /// `Filename:`, relative to the mirror root.
    pub filename: String,
    /// `SHA256:` of the .deb.
    pub sha256: String,
    /// `Size:` of the .deb.
    pub size: u64,
}

/// Parses the stanzas of a `Packages` file whose names satisfy `keep` (the full index has
/// some 60,000; keeping only the interesting ones keeps this cheap).
pub fn parse_packages(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut pkg = Package::default();
        let mut wanted = None;
        for line in stanza.lines() {
            // Continuation lines (leading space) only occur in fields we ignore.
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let value = value.trim();
            match key {
                "Package" => {
                    wanted = Some(keep(value));
                    pkg.name = value.to_string();
                }
                "Version" => pkg.version = value.to_string(),
                "Depends" => pkg.depends = value.to_string(),
                "Filename" => pkg.filename = value.to_string(),
                "SHA256" => pkg.sha256 = value.to_ascii_lowercase(),
                "Size" => pkg.size = value.parse().unwrap_or(0),
                _ => {}
            }
            if wanted == Some(false) {
                break;
            }
        }
        if wanted == Some(true) {
            out.push(pkg);
        }
    }
    out
}

/// The highest version of `name` among `packages`.
///
/// # Errors
/// [`IndexError::NoSuchPackage`], or [`IndexError::MissingField`] if the stanza has no
/// `Filename` or `SHA256`.
pub fn newest<'a>(packages: &'a [Package], name: &str) -> Result<&'a Package, IndexError> {
    let best = packages
        .iter()
        .filter(|p| p.name == name)
        .max_by(|a, b| compare_versions(&a.version, &b.version))
        .ok_or_else(|| IndexError::NoSuchPackage(name.to_string()))?;
    for (field, value) in [("Filename", &best.filename), ("SHA256", &best.sha256)] {
        if value.is_empty() {
            return Err(IndexError::MissingField {
                package: name.to_string(),
                field,
            });
        }
    }
    Ok(best)
}

/// The first package named in `depends` (a `Depends:` value) that starts with `prefix`,
/// ignoring version constraints and taking the first of any alternatives.
pub fn dependency_with_prefix<'a>(depends: &'a str, prefix: &str) -> Option<&'a str> {
    depends
        .split(',')
        .filter_map(|dep| dep.split('|').next())
        .map(|dep| dep.trim().split([' ', '(', ':']).next().unwrap_or(""))
        .find(|name| name.starts_with(prefix))
}

/// Resolves a metapackage to the newest version of the package it depends on whose name
/// starts with `prefix` (e.g. `linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64`).
///
/// # Errors
/// [`IndexError`] if either package is missing or the dependency is not there.
pub fn resolve_through<'a>(
    packages: &'a [Package],
    meta: &str,
    prefix: &str,
) -> Result<&'a Package, IndexError> {
    let meta_pkg = newest(packages, meta)?;
    let dep = dependency_with_prefix(&meta_pkg.depends, prefix).ok_or_else(|| {
        IndexError::NoDependency {
            package: meta.to_string(),
            prefix: prefix.to_string(),
            depends: meta_pkg.depends.clone(),
        }
    })?;
    newest(packages, dep)
}

/// Orders two Debian version strings (`[epoch:]upstream[-revision]`) the way dpkg does.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) if e.bytes().all(|c| c.is_ascii_digit()) => {
                (e.parse().unwrap_or(0), rest)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((upstream, revision)) => (epoch, upstream, revision),
            None => (epoch, rest, ""),
        }
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// Sort weight of a character in the non-digit parts: `~` sorts before everything, even
/// the end of the string; letters sort before other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefixes, character by character.
        loop {
            let (ca, cb) = (a.first().copied(), b.first().copied());
            let a_digit = ca.is_none_or(|c| c.is_ascii_digit());
            let b_digit = cb.is_none_or(|c| c.is_ascii_digit());
            if a_digit && b_digit {
                break;
            }
            let (wa, wb) = (
                if a_digit { 0 } else { weight(ca) },
                if b_digit { 0 } else { weight(cb) },
            );
            if wa != wb {
                return wa.cmp(&wb);
            }
            a = &a[usize::from(!a_digit)..];
            b = &b[usize::from(!b_digit)..];
        }
        // Digit runs, numerically (compared as strings without leading zeros, so any
        // length works).
        let take = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (na, nb) = (take(a), take(b));
        let strip = |s: &[u8]| {
            let z = s.iter().take_while(|&&c| c == b'0').count();
            s[z..].to_vec()
        };
        let (da, db) = (strip(&a[..na]), strip(&b[..nb]));
        let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(&db));
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "\
Origin: Debian
Suite: oldstable
Codename: bookworm
MD5Sum:
 b838d31986207780a596ce3e8010f90f  8790396 main/binary-amd64/Packages.xz
SHA256:
 515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f 50060337 main/binary-amd64/Packages
 9E0B5AABB2465B3D2E7A7FE27F9913846277833F7A2826E7767ACCCFF5B588C5  8790396 main/binary-amd64/Packages.xz
";

    const PACKAGES: &str = "\
Package: busybox-static
Source: busybox (1:1.35.0-4+deb12u1)
Version: 1:1.35.0-4+deb12u1+b1
Installed-Size: 2002
Depends: libc6 (>= 2.34)
Description: Standalone rescue shell with tons of builtin utilities
 BusyBox combines tiny versions of many common UNIX utilities into a single
 Filename: this continuation line must not be taken for a field
Filename: pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb
Size: 928188
SHA256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744

Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.176+1)
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)
Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.176-1_amd64.deb
Size: 1500
SHA256: 6f32a25a6ee7b58852de01577ba261fda873c3002c736a2148bf0a6593bd93c8

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.176-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb
Size: 26000000
SHA256: 00aa

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.175-1
Filename: pool/old.deb
SHA256: 00bb

Package: linux-image-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)
Filename: pool/x.deb
SHA256: 00cc
";

    #[test]
    fn release_checksums_are_parsed_from_the_sha256_section_only() {
        let entry = release_entry(RELEASE, "main/binary-amd64/Packages.xz").unwrap();
        assert_eq!(entry.size, 8_790_396);
        assert_eq!(
            entry.sha256,
            "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5"
        );
        assert_eq!(
            release_entry(RELEASE, "main/binary-i386/Packages.xz"),
            Err(IndexError::NotInRelease(
                "main/binary-i386/Packages.xz".into()
            ))
        );
    }

    #[test]
    fn packages_stanzas_keep_the_needed_fields() {
        let pkgs = parse_packages(PACKAGES, |_| true);
        assert_eq!(pkgs.len(), 5);
        let bb = newest(&pkgs, "busybox-static").unwrap();
        assert_eq!(bb.version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(
            bb.filename,
            "pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb"
        );
        assert_eq!(bb.size, 928_188);
        assert_eq!(
            bb.sha256,
            "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"
        );
        let only = parse_packages(PACKAGES, |n| n.starts_with("linux-image-6"));
        assert_eq!(only.len(), 2);
    }

    #[test]
    fn metapackage_resolves_to_the_newest_kernel_package() {
        let pkgs = parse_packages(PACKAGES, |_| true);
        let kernel = resolve_through(&pkgs, "linux-image-cloud-amd64", "linux-image-").unwrap();
        assert_eq!(kernel.name, "linux-image-6.1.0-50-cloud-amd64");
        assert_eq!(kernel.version, "6.1.176-1");
        assert_eq!(kernel.sha256, "00aa");
        assert_eq!(
            resolve_through(&pkgs, "linux-image-amd64", "linux-image-"),
            Err(IndexError::NoSuchPackage(
                "linux-image-6.1.0-50-amd64".into()
            ))
        );
        assert!(matches!(
            resolve_through(&pkgs, "busybox-static", "linux-image-"),
            Err(IndexError::NoDependency { .. })
        ));
        assert_eq!(
            newest(&pkgs, "linux-image-rt-amd64"),
            Err(IndexError::NoSuchPackage("linux-image-rt-amd64".into()))
        );
    }

    #[test]
    fn dependencies_ignore_constraints_and_alternatives() {
        let deps = "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120) | linux-initramfs-tool";
        assert_eq!(
            dependency_with_prefix(deps, "linux-base"),
            Some("linux-base")
        );
        assert_eq!(
            dependency_with_prefix(deps, "initramfs"),
            Some("initramfs-tools")
        );
        assert_eq!(dependency_with_prefix(deps, "linux-initramfs"), None);
        assert_eq!(dependency_with_prefix("foo:any (= 1)", "foo"), Some("foo"));
    }

    #[test]
    fn versions_order_like_dpkg() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1:0.1", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0-1", "1.0-2", Less),
            ("6.1.176-1", "6.1.175-1", Greater),
            ("6.1.99-1", "6.1.100-1", Less),
            ("1.0a", "1.0+", Less),
            ("1.001", "1.1", Equal),
            ("1:1.35.0-4+deb12u1+b1", "1:1.35.0-4+deb12u1", Greater),
            ("1.0-1~bpo1", "1.0-1", Less),
            ("2.0-1.1", "2.0-1", Greater),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
