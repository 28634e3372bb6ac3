//! What the end-to-end tests of the `quetzal` binary share: the Debian test images
//! (built once per test binary through the `test-images` library), running the binary
//! under a deadline, booting an image with a script, and reading the console.
//!
//! Every run of the binary has a deadline after which it is killed and the test fails,
//! so a guest that hangs fails CI instead of blocking it. The deadline is far above the
//! normal boot time (tens of seconds); it is not a performance threshold.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use test_images::{Flavour, Manifest, Options};

/// How long one run of `quetzal` may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// Serialises image builds: two builds at once would download into the same cache files.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The images of `flavour`, built (or found in the cache) once per test binary.
pub fn image(flavour: Flavour) -> &'static Manifest {
    static CLOUD: OnceLock<Manifest> = OnceLock::new();
    static GENERIC: OnceLock<Manifest> = OnceLock::new();
    let cell = match flavour {
        Flavour::Cloud => &CLOUD,
        Flavour::Generic => &GENERIC,
    };
    cell.get_or_init(|| {
        let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        build_image(flavour)
    })
}

/// Builds `flavour`'s kernel and initramfs into `<cache>/images/<flavour>`, where
/// `test-images/build.sh`, `scripts/boot-test-image.sh` and emu-boot's kernel-loading tests
/// look for them (so an image built there with `--script` is replaced: use `--out` for
/// custom images). Offline first, so a warm cache needs no network and keeps the kernel
/// version it has; the initramfs is always rewritten by the current `test-images` code.
///
/// # Panics
///
/// If the image can be neither rebuilt from the cache nor downloaded.
pub fn build_image(flavour: Flavour) -> Manifest {
    let mut opts = Options::new(flavour);
    opts.offline = true;
    let offline_err = match test_images::build(&opts) {
        Ok(manifest) => return manifest,
        Err(e) => e,
    };
    eprintln!("boot tests: no cached {flavour} image ({offline_err}); downloading it");
    opts.offline = false;
    test_images::build(&opts).unwrap_or_else(|e| {
        panic!(
            "cannot obtain the {flavour} test image: the cache {} has no usable copy \
             ({offline_err}) and downloading it failed: {e}. The boot tests need \
             network access to {} ($QUETZAL_DEBIAN_MIRROR) the first time; later runs \
             work offline from the cache.",
            opts.cache.display(),
            opts.mirror
        )
    })
}

/// What one run of the binary produced.
pub struct Run {
    /// How the binary ended.
    pub status: ExitStatus,
    /// Standard output (the guest console), carriage returns removed.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Both streams, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Reads all of a child's pipe on a thread, so neither pipe can fill and stall the child.
pub fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

/// Kills the child if the test panics before reaping it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `quetzal` with `args` and stdin from /dev/null (so it never touches a terminal),
/// killing it and failing the test if it outlives [`DEADLINE`].
pub fn quetzal<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_quetzal"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the quetzal binary"),
    );
    let stdout = drain(child.0.stdout.take().expect("piped stdout"));
    let stderr = drain(child.0.stderr.take().expect("piped stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for quetzal") {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = |h: JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().expect("pipe reader")).replace('\r', "")
    };
    let (stdout, stderr) = (text(stdout), text(stderr));
    let Some(status) = status else {
        panic!(
            "quetzal {:?} did not finish within {DEADLINE:?}; killed.\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
        );
    };
    Run {
        status,
        stdout,
        stderr,
    }
}

/// Boots `image` with `script` as the guest's `quetzal.cmd`.
pub fn boot(image: &Manifest, script: &str) -> Run {
    boot_with(image, script, &[])
}

/// Boots `image` with `script` as the guest's `quetzal.cmd` and `extra` flags after the
/// usual ones (disks and devices).
pub fn boot_with(image: &Manifest, script: &str, extra: &[&OsStr]) -> Run {
    let append = format!(
        "console=ttyS0 {}",
        test_images::initramfs::cmdline_arg(script)
    );
    let mut args: Vec<&OsStr> = vec![
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-initrd".as_ref(),
        image.initramfs.as_os_str(),
        "-append".as_ref(),
        append.as_ref(),
        "-m".as_ref(),
        "512".as_ref(),
        "-nographic".as_ref(),
    ];
    args.extend_from_slice(extra);
    quetzal(&args)
}

/// The index of the first console line containing `prefix`, and the rest of that line.
/// (Not only at the start: a kernel message may share the console line.)
pub fn find_line<'a>(run: &'a Run, prefix: &str) -> (usize, &'a str) {
    run.stdout
        .lines()
        .enumerate()
        .find_map(|(i, line)| Some((i, line[line.find(prefix)? + prefix.len()..].trim())))
        .unwrap_or_else(|| panic!("no line with {prefix:?}\n{}", run.transcript()))
}

/// A scratch directory `name` for one test's files (emptied first, so a test never sees
/// files of an earlier run).
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir
}

/// Requires exit status 1 and exactly one line on stderr, starting `quetzal: ` and
/// containing `needle` (which names the cause), with no panic.
pub fn assert_one_line_error(case: &str, run: &Run, needle: &str) {
    assert_eq!(
        run.status.code(),
        Some(1),
        "{case}: want exit status 1\n{}",
        run.transcript()
    );
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("quetzal: ") && lines[0].contains(needle),
        "{case}: want one line 'quetzal: ...{needle}...' on stderr\n{}",
        run.transcript()
    );
    assert!(!run.stderr.contains("panicked"), "{case}: panicked");
}

/// `len` bytes of deterministic noise (an LCG seeded with `seed`): no two disks or
/// offsets look alike, so a block read from or written to the wrong place shows.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// A `-drive` value for `path` (QEMU doubles commas inside values) followed by `rest`.
pub fn drive(path: &Path, rest: &str) -> String {
    format!(
        "file={},format=raw,{rest}",
        path.display().to_string().replace(',', ",,")
    )
}

/// The guest ran its whole script (status 0), the machine powered off (exit status 0),
/// and the console shows none of the init script's warnings, a kernel panic, or any of
/// `also_bad` (messages a particular test knows to mean failure).
pub fn assert_clean_run(run: &Run, also_bad: &[&str]) {
    assert!(
        run.status.success(),
        "quetzal did not exit 0 after the guest powered off\n{}",
        run.transcript()
    );
    let (_, done) = find_line(run, "QUETZAL-DONE");
    assert_eq!(
        done,
        "rc=0",
        "the guest script failed\n{}",
        run.transcript()
    );
    let always = ["QUETZAL-WARN", "QUETZAL-ERROR", "Kernel panic"];
    for bad in always.iter().chain(also_bad) {
        assert!(
            !run.stdout.contains(bad),
            "{bad} on the console\n{}",
            run.transcript()
        );
    }
}
