//! Quetzal's guest test images: Debian 12's stock kernel and a busybox initramfs.
//!
//! [`build`] resolves the current `linux-image-cloud-amd64` (LZ4-compressed bzImage) or
//! `linux-image-amd64` (XZ) kernel and `busybox-static` from Debian bookworm's index over
//! plain HTTP, downloads the `.deb` files into a cache (checked against the SHA256 sums of
//! the `Release` file and the `Packages` index), pulls `/boot/vmlinuz-*`, `/boot/config-*`
//! and `/bin/busybox` out of them, writes an uncompressed newc initramfs with our own cpio
//! writer ([`cpio`], [`initramfs`]), and writes a [`Manifest`] naming the artifacts. Every
//! step is pure Rust, so the same command works on Linux and macOS.
//!
//! # The guest side
//!
//! `/init` ([`initramfs::INIT`]) mounts proc, sysfs, devtmpfs, devpts and tmpfs, links every
//! busybox applet, prints `QUETZAL-INIT-OK <uname -r>` on the console, then runs
//! `quetzal.cmd=<base64 script>` from the kernel command line ([`initramfs::cmdline_arg`]),
//! else `/test.sh` (`--script`), printing `QUETZAL-DONE rc=<status>` afterwards; with
//! neither it prints `QUETZAL-SHELL` and starts a shell (prompt `quetzal# `). Then it runs
//! `poweroff -f`, or what `quetzal.end=reboot|halt|wait` asks for.
//!
//! # Cache
//!
//! `$QUETZAL_CACHE`, else `~/.cache/quetzal` ([`cache_dir`]).
//! Downloads are kept by file name and re-verified before reuse; the Packages index is kept
//! by its SHA256; without network the last resolution is reused.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub mod cpio;
pub mod deb;
pub mod ext4;
pub mod fetch;
pub mod index;
pub mod initramfs;

pub use ext4::{read_ext4_file, write_ext4_image};
pub use initramfs::Initramfs;

/// The default Debian mirror (plain HTTP; override with `QUETZAL_DEBIAN_MIRROR`).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The default suite (override with `QUETZAL_DEBIAN_SUITE`).
pub const DEFAULT_SUITE: &str = "bookworm";
/// The busybox package.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Everything [`build`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Downloading or verifying a file failed.
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    /// An index did not contain what we need.
    #[error(transparent)]
    Index(#[from] index::IndexError),
    /// A package could not be read.
    #[error(transparent)]
    Deb(#[from] deb::DebError),
    /// The initramfs could not be written.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// Local file I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A package lacked a file we need.
    #[error("{package} contains no {what}")]
    MissingFile {
        /// The package.
        package: String,
        /// What was looked for.
        what: &'static str,
    },
    /// The kernel modules' dependencies are not all included.
    #[error("kernel modules: {0}")]
    Modules(String),
    /// The index could not be fetched and there is no earlier resolution to fall back on.
    #[error("cannot resolve packages offline: {0}")]
    Offline(String),
    /// The Packages index could not be decompressed or was not UTF-8.
    #[error("corrupt Packages index {path}: {reason}")]
    BadIndex {
        /// The cached index file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which Debian kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `linux-image-cloud-amd64`: a small config for VMs, LZ4-compressed bzImage.
    Cloud,
    /// `linux-image-amd64`: the generic kernel, XZ-compressed bzImage.
    Generic,
}

impl Flavour {
    /// Both flavours.
    pub const ALL: [Flavour; 2] = [Flavour::Cloud, Flavour::Generic];

    /// The metapackage that tracks the current kernel of this flavour.
    pub fn metapackage(self) -> &'static str {
        match self {
            Flavour::Cloud => "linux-image-cloud-amd64",
            Flavour::Generic => "linux-image-amd64",
        }
    }

    /// Parses `cloud` or `generic`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cloud" => Some(Flavour::Cloud),
            "generic" | "amd64" => Some(Flavour::Generic),
            _ => None,
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Cloud => "cloud",
            Flavour::Generic => "generic",
        })
    }
}

/// The cache directory: `$QUETZAL_CACHE`, else `$HOME/.cache/quetzal` (also on macOS),
/// else `test-images/cache` under the current directory. Tests that look for images
/// without depending on this crate must use the same rule.
pub fn cache_dir() -> PathBuf {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("QUETZAL_CACHE") {
        return dir;
    }
    if let Some(home) = env("HOME") {
        return home.join(".cache").join("quetzal");
    }
    PathBuf::from("test-images").join("cache")
}

/// Where [`build`] writes a flavour's artifacts unless told otherwise:
/// `<cache>/images/<flavour>`.
pub fn default_out_dir(cache: &Path, flavour: Flavour) -> PathBuf {
    cache.join("images").join(flavour.to_string())
}

/// What [`build`] does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which kernel.
    pub flavour: Flavour,
    /// Cache for downloads and extracted files.
    pub cache: PathBuf,
    /// Output directory ([`default_out_dir`] if `None`).
    pub out: Option<PathBuf>,
    /// Contents of `/test.sh` in the initramfs.
    pub script: Option<Vec<u8>>,
    /// Also write `initramfs.cpio.gz`.
    pub gzip: bool,
    /// Don't touch the network; reuse the last resolution and cached files.
    pub offline: bool,
    /// Mirror root URL (plain HTTP).
    pub mirror: String,
    /// Debian suite.
    pub suite: String,
}

impl Options {
    /// Defaults for `flavour`: [`cache_dir`], the mirror and suite from
    /// `QUETZAL_DEBIAN_MIRROR` / `QUETZAL_DEBIAN_SUITE` or [`DEFAULT_MIRROR`] / [`DEFAULT_SUITE`].
    pub fn new(flavour: Flavour) -> Self {
        let env = |name, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or(default.into())
        };
        Self {
            flavour,
            cache: cache_dir(),
            out: None,
            script: None,
            gzip: false,
            offline: false,
            mirror: env("QUETZAL_DEBIAN_MIRROR", DEFAULT_MIRROR)
                .trim_end_matches('/')
                .to_string(),
            suite: env("QUETZAL_DEBIAN_SUITE", DEFAULT_SUITE),
        }
    }
}

/// The artifacts of one build, as recorded in `manifest.txt` in the output directory:
/// `KEY='value'` lines that a POSIX shell can source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Which kernel.
    pub flavour: Flavour,
    /// The bzImage.
    pub kernel: PathBuf,
    /// The uncompressed newc initramfs.
    pub initramfs: PathBuf,
    /// The kernel's `.config`.
    pub kernel_config: PathBuf,
    /// Kernel package name, e.g. `linux-image-6.1.0-50-cloud-amd64`.
    pub kernel_package: String,
    /// Kernel package version, e.g. `6.1.176-1`.
    pub kernel_version: String,
    /// Kernel release (`uname -r`), e.g. `6.1.0-50-cloud-amd64`.
    pub kernel_release: String,
    /// busybox-static package version.
    pub busybox_version: String,
}

impl Manifest {
    /// The manifest's file name inside an output directory.
    pub const FILE: &'static str = "manifest.txt";

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("QUETZAL_FLAVOUR", self.flavour.to_string()),
            ("QUETZAL_KERNEL", self.kernel.display().to_string()),
            ("QUETZAL_INITRAMFS", self.initramfs.display().to_string()),
            (
                "QUETZAL_KERNEL_CONFIG",
                self.kernel_config.display().to_string(),
            ),
            ("QUETZAL_KERNEL_PACKAGE", self.kernel_package.clone()),
            ("QUETZAL_KERNEL_VERSION", self.kernel_version.clone()),
            ("QUETZAL_KERNEL_RELEASE", self.kernel_release.clone()),
            ("QUETZAL_BUSYBOX_VERSION", self.busybox_version.clone()),
        ]
    }

    /// The manifest as shell-sourceable text.
    pub fn to_text(&self) -> String {
        self.fields()
            .into_iter()
            .map(|(key, value)| format!("{key}='{}'\n", value.replace('\'', r"'\''")))
            .collect()
    }

    /// Parses [`Manifest::to_text`]'s output.
    pub fn from_text(text: &str) -> Option<Self> {
        let get = |key: &str| {
            text.lines().find_map(|line| {
                let value = line
                    .strip_prefix(key)?
                    .strip_prefix("='")?
                    .strip_suffix('\'')?;
                Some(value.replace(r"'\''", "'"))
            })
        };
        Some(Self {
            flavour: Flavour::parse(&get("QUETZAL_FLAVOUR")?)?,
            kernel: get("QUETZAL_KERNEL")?.into(),
            initramfs: get("QUETZAL_INITRAMFS")?.into(),
            kernel_config: get("QUETZAL_KERNEL_CONFIG")?.into(),
            kernel_package: get("QUETZAL_KERNEL_PACKAGE")?,
            kernel_version: get("QUETZAL_KERNEL_VERSION")?,
            kernel_release: get("QUETZAL_KERNEL_RELEASE")?,
            busybox_version: get("QUETZAL_BUSYBOX_VERSION")?,
        })
    }

    /// Reads the manifest of an earlier build in `dir`, if there is one and its files exist.
    /// Tests use this to find images without touching the network:
    /// `Manifest::load(&default_out_dir(&cache_dir(), Flavour::Cloud))`.
    pub fn load(dir: &Path) -> Option<Self> {
        let manifest = Self::from_text(&fs::read_to_string(dir.join(Self::FILE)).ok()?)?;
        (manifest.kernel.is_file() && manifest.initramfs.is_file()).then_some(manifest)
    }
}

/// One resolved package: what to download and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    name: String,
    version: String,
    filename: String,
    sha256: String,
}

impl Resolved {
    fn line(&self) -> String {
        format!(
            "{} {} {} {}\n",
            self.name, self.version, self.filename, self.sha256
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.split_whitespace();
        let r = Self {
            name: it.next()?.into(),
            version: it.next()?.into(),
            filename: it.next()?.into(),
            sha256: it.next()?.into(),
        };
        it.next().is_none().then_some(r)
    }

    fn from_package(p: &index::Package) -> Self {
        Self {
            name: p.name.clone(),
            version: p.version.clone(),
            filename: p.filename.clone(),
            sha256: p.sha256.clone(),
        }
    }

    fn file_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }
}

fn log(message: impl fmt::Display) {
    eprintln!("test-images: {message}");
}

/// Fetches `Release` and the Packages index (reusing a cached index with the same
/// SHA256) and resolves the kernel and busybox packages.
fn resolve_online(opts: &Options, suite_dir: &Path) -> Result<(Resolved, Resolved)> {
    let dists = format!("{}/dists/{}", opts.mirror, opts.suite);
    let release = fetch::get(&format!("{dists}/Release"))?;
    let release = String::from_utf8_lossy(&release);
    let entry = index::release_entry(&release, "main/binary-amd64/Packages.xz")?;
    let cached = suite_dir.join(format!("Packages-{}.xz", entry.sha256));
    let fresh = cached.is_file() && fetch::sha256_file(&cached)? == entry.sha256;
    if !fresh {
        log(format_args!(
            "fetching {dists}/main/binary-amd64/Packages.xz ({} MB)",
            entry.size >> 20
        ));
        fetch::download(
            &format!("{dists}/main/binary-amd64/Packages.xz"),
            &cached,
            &entry.sha256,
        )?;
        // Drop older indices.
        for old in fs::read_dir(suite_dir)
            .map_err(io_err(suite_dir))?
            .flatten()
        {
            let name = old.file_name().to_string_lossy().into_owned();
            if name.starts_with("Packages-") && old.path() != cached {
                let _ = fs::remove_file(old.path());
            }
        }
    }
    let mut text = String::new();
    lzma_rust2::XzReader::new(
        io::BufReader::new(fs::File::open(&cached).map_err(io_err(&cached))?),
        true,
    )
    .read_to_string(&mut text)
    .map_err(|e| Error::BadIndex {
        path: cached.clone(),
        reason: e.to_string(),
    })?;
    let meta = opts.flavour.metapackage();
    let packages = index::parse_packages(&text, |n| {
        n == meta || n == BUSYBOX_PACKAGE || n.starts_with("linux-image-")
    });
    let kernel = index::resolve_through(&packages, meta, "linux-image-")?;
    let busybox = index::newest(&packages, BUSYBOX_PACKAGE)?;
    Ok((
        Resolved::from_package(kernel),
        Resolved::from_package(busybox),
    ))
}

/// Resolves the packages, online if possible, else from the last successful resolution.
fn resolve(opts: &Options) -> Result<(Resolved, Resolved)> {
    let suite_dir = opts.cache.join("debian").join(&opts.suite);
    fs::create_dir_all(&suite_dir).map_err(io_err(&suite_dir))?;
    let saved = suite_dir.join(format!("resolved-{}.txt", opts.flavour));
    let online = if opts.offline {
        None
    } else {
        Some(resolve_online(opts, &suite_dir))
    };
    match online {
        Some(Ok((kernel, busybox))) => {
            let text = kernel.line() + &busybox.line();
            fs::write(&saved, text).map_err(io_err(&saved))?;
            Ok((kernel, busybox))
        }
        Some(Err(e)) if saved.is_file() => {
            log(format_args!(
                "{e}; using the last resolution in {}",
                saved.display()
            ));
            read_saved(&saved)
        }
        Some(Err(e)) => Err(e),
        None => read_saved(&saved),
    }
}

fn read_saved(saved: &Path) -> Result<(Resolved, Resolved)> {
    let text = fs::read_to_string(saved)
        .map_err(|e| Error::Offline(format!("no earlier resolution ({}: {e})", saved.display())))?;
    let mut lines = text.lines().filter_map(Resolved::parse);
    match (lines.next(), lines.next()) {
        (Some(k), Some(b)) => Ok((k, b)),
        _ => Err(Error::Offline(format!("{} is malformed", saved.display()))),
    }
}

/// Returns the cached `.deb` for `pkg`, downloading it if missing or corrupt.
fn deb_file(opts: &Options, pkg: &Resolved) -> Result<PathBuf> {
    let path = opts.cache.join("debs").join(pkg.file_name());
    if path.is_file() {
        if fetch::sha256_file(&path)? == pkg.sha256 {
            return Ok(path);
        }
        log(format_args!(
            "{} is corrupt; fetching it again",
            path.display()
        ));
    }
    if opts.offline {
        return Err(Error::Offline(format!(
            "{} is not in the cache",
            pkg.file_name()
        )));
    }
    log(format_args!("fetching {}/{}", opts.mirror, pkg.filename));
    fetch::download(
        &format!("{}/{}", opts.mirror, pkg.filename),
        &path,
        &pkg.sha256,
    )?;
    Ok(path)
}

/// Extracts the files matching `wanted` from `pkg` into `<cache>/extracted/<sha256>/`
/// once, and returns their paths there (relative names as in the package).
fn extracted(
    opts: &Options,
    pkg: &Resolved,
    wanted: &[&dyn Fn(&str) -> bool],
) -> Result<Vec<PathBuf>> {
    let dir = opts.cache.join("extracted").join(&pkg.sha256);
    let list = dir.join("contents-v2.txt");
    if let Ok(text) = fs::read_to_string(&list) {
        let files: Vec<PathBuf> = text.lines().map(|l| dir.join(l)).collect();
        if files.iter().all(|f| f.is_file()) {
            return Ok(files);
        }
    }
    let deb = deb_file(opts, pkg)?;
    log(format_args!("extracting {}", deb.display()));
    let _ = fs::remove_dir_all(&dir);
    let mut names = String::new();
    let mut files = Vec::new();
    for (name, data) in deb::extract(&deb, wanted)? {
        // Base names are unique among the files we extract (vmlinuz-*, config-*, *.ko).
        let flat = name.rsplit('/').next().unwrap_or(&name).to_string();
        write_atomic(&dir.join(&flat), &data)?;
        names.push_str(&flat);
        names.push('\n');
        files.push(dir.join(flat));
    }
    write_atomic(&list, names.as_bytes())?;
    Ok(files)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The stem of a module file name (`.../virtio-rng.ko` → `virtio-rng`).
fn module_stem(path: &str) -> Option<&str> {
    path.rsplit('/').next()?.strip_suffix(".ko")
}

/// gzip-compresses `data` (for boot loaders or kernels that want a compressed initramfs).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = w.write_all(data);
    w.finish().unwrap_or_default()
}

/// Resolves, downloads (or reuses from the cache), extracts and writes the kernel,
/// its config, the initramfs and the manifest into the output directory.
///
/// # Errors
/// [`Error`] for network, checksum, archive and file-system failures; offline with no
/// cached resolution, [`Error::Offline`].
pub fn build(opts: &Options) -> Result<Manifest> {
    let (kernel_pkg, busybox_pkg) = resolve(opts)?;
    let is_kernel = |p: &str| p.starts_with("boot/vmlinuz-");
    let is_config = |p: &str| p.starts_with("boot/config-");
    let module_tests: Vec<_> = initramfs::MODULES
        .iter()
        .map(|m| move |p: &str| p.starts_with("lib/modules/") && module_stem(p) == Some(m))
        .collect();
    let mut wanted: Vec<&dyn Fn(&str) -> bool> = vec![&is_kernel, &is_config];
    wanted.extend(module_tests.iter().map(|t| t as &dyn Fn(&str) -> bool));
    let kernel_files = extracted(opts, &kernel_pkg, &wanted)?;
    let find = |files: &[PathBuf], prefix: &str, what| {
        files
            .iter()
            .find(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .cloned()
            .ok_or_else(|| Error::MissingFile {
                package: kernel_pkg.name.clone(),
                what,
            })
    };
    let vmlinuz = find(&kernel_files, "vmlinuz-", "/boot/vmlinuz-*")?;
    let config = find(&kernel_files, "config-", "/boot/config-*")?;
    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();

    let is_busybox = |p: &str| p == "bin/busybox" || p == "usr/bin/busybox";
    let busybox_files = extracted(opts, &busybox_pkg, &[&is_busybox])?;
    let busybox_path = busybox_files.first().ok_or_else(|| Error::MissingFile {
        package: busybox_pkg.name.clone(),
        what: "/bin/busybox",
    })?;
    let busybox = fs::read(busybox_path).map_err(io_err(busybox_path))?;

    let mut modules: Vec<(String, Vec<u8>)> = Vec::new();
    for file in &kernel_files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(stem) = module_stem(&name) {
            modules.push((stem.to_string(), fs::read(file).map_err(io_err(file))?));
        }
    }
    let borrowed: Vec<(String, &[u8])> = modules
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    let order = initramfs::load_order(&borrowed).map_err(Error::Modules)?;
    let ordered: Vec<(&str, &[u8])> = order
        .iter()
        .map(|&i| (modules[i].0.as_str(), modules[i].1.as_slice()))
        .collect();

    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir(&opts.cache, opts.flavour));
    fs::create_dir_all(&out).map_err(io_err(&out))?;
    let out = out.canonicalize().map_err(io_err(&out))?;
    let mut image = Initramfs::new(&busybox).modules(&release, ordered);
    if let Some(script) = &opts.script {
        image = image.script(script);
    }
    let cpio = image.build()?;
    let manifest = Manifest {
        flavour: opts.flavour,
        kernel: out.join("vmlinuz"),
        initramfs: out.join("initramfs.cpio"),
        kernel_config: out.join("config"),
        kernel_package: kernel_pkg.name.clone(),
        kernel_version: kernel_pkg.version.clone(),
        kernel_release: release,
        busybox_version: busybox_pkg.version.clone(),
    };
    let kernel = fs::read(&vmlinuz).map_err(io_err(&vmlinuz))?;
    write_atomic(&manifest.kernel, &kernel)?;
    let config_text = fs::read(&config).map_err(io_err(&config))?;
    write_atomic(&manifest.kernel_config, &config_text)?;
    write_atomic(&manifest.initramfs, &cpio)?;
    let gz = out.join("initramfs.cpio.gz");
    if opts.gzip {
        write_atomic(&gz, &gzip(&cpio))?;
    } else {
        let _ = fs::remove_file(&gz);
    }
    write_atomic(&out.join(Manifest::FILE), manifest.to_text().as_bytes())?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            flavour: Flavour::Cloud,
            kernel: "/c/images/cloud/vmlinuz".into(),
            initramfs: "/c/it's here/initramfs.cpio".into(),
            kernel_config: "/c/images/cloud/config".into(),
            kernel_package: "linux-image-6.1.0-50-cloud-amd64".into(),
            kernel_version: "6.1.176-1".into(),
            kernel_release: "6.1.0-50-cloud-amd64".into(),
            busybox_version: "1:1.35.0-4+deb12u1+b1".into(),
        }
    }

    #[test]
    fn manifest_round_trips_and_is_shell_quoted() {
        let text = manifest().to_text();
        assert!(text.contains("QUETZAL_KERNEL='/c/images/cloud/vmlinuz'\n"));
        assert!(text.contains(r"QUETZAL_INITRAMFS='/c/it'\''s here/initramfs.cpio'"));
        assert_eq!(Manifest::from_text(&text), Some(manifest()));
        assert_eq!(Manifest::from_text("QUETZAL_FLAVOUR='cloud'\n"), None);
    }

    #[test]
    fn manifest_load_needs_the_files() {
        let dir = std::env::temp_dir().join(format!("quetzal-manifest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut m = manifest();
        m.kernel = dir.join("vmlinuz");
        m.initramfs = dir.join("initramfs.cpio");
        fs::write(dir.join(Manifest::FILE), m.to_text()).unwrap();
        assert_eq!(Manifest::load(&dir), None);
        fs::write(&m.kernel, b"k").unwrap();
        fs::write(&m.initramfs, b"i").unwrap();
        assert_eq!(Manifest::load(&dir), Some(m));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flavours_name_their_metapackages() {
        assert_eq!(
            Flavour::parse("cloud").map(Flavour::metapackage),
            Some("linux-image-cloud-amd64")
        );
        assert_eq!(
            Flavour::parse("generic").map(Flavour::metapackage),
            Some("linux-image-amd64")
        );
        assert_eq!(Flavour::parse("rt"), None);
        assert_eq!(Flavour::Generic.to_string(), "generic");
    }

    #[test]
    fn resolution_lines_round_trip() {
        let r = Resolved {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            filename: "pool/main/b/busybox/busybox-static_1.35.0-4_amd64.deb".into(),
            sha256: "ab".into(),
        };
        assert_eq!(Resolved::parse(&r.line()), Some(r.clone()));
        assert_eq!(r.file_name(), "busybox-static_1.35.0-4_amd64.deb");
        assert_eq!(Resolved::parse("a b c"), None);
    }

    #[test]
    fn offline_without_a_cache_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("quetzal-offline-{}", std::process::id()));
        let mut opts = Options::new(Flavour::Cloud);
        opts.cache = dir.clone();
        opts.offline = true;
        let err = build(&opts).unwrap_err();
        assert!(matches!(err, Error::Offline(_)), "{err}");
        assert!(err.to_string().contains("no earlier resolution"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn module_stems_come_from_ko_file_names() {
        assert_eq!(
            module_stem("lib/modules/6.1.0-50-amd64/kernel/drivers/char/hw_random/virtio-rng.ko"),
            Some("virtio-rng")
        );
        assert_eq!(module_stem("virtio_pci.ko"), Some("virtio_pci"));
        assert_eq!(module_stem("boot/vmlinuz-6.1.0-50-amd64"), None);
    }

    #[test]
    fn gzip_output_is_a_gzip_stream() {
        let gz = gzip(b"hello hello hello");
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello hello hello");
    }
}
