//! The `quetzal` binary end to end (design notes section 7, layer 4: real guests).
//!
//! Each boot test runs the real binary on one of Debian 12's stock kernels with the busybox
//! initramfs from `test-images`, passes a script as `quetzal.cmd=<base64>`, and checks what
//! the guest printed against values computed on the host: the kernel release from the
//! image's manifest and the SHA-256 of 8 MiB of zeros. The other tests feed the binary bad
//! input and require a one-line error and exit status 1, never a panic.
//!
//! The images are built by the `test-images` library, once per flavour per test binary:
//! from the cache when it has everything (no network), else over HTTP (about 100 MB the
//! first time). If neither works the tests fail: a test that skips when its inputs are
//! missing could never fail in CI.
//!
//! Every run of the binary has a deadline after which it is killed and the test fails,
//! so a guest that hangs fails CI instead of blocking it. The deadline is far above the
//! normal boot time (tens of seconds); it is not a performance threshold.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use test_images::{Flavour, Manifest, Options};

/// How long one run of `quetzal` may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(300);

/// The workload: labelled lines the test parses. `dd | sha256sum` pushes 8 MiB through a
/// pipe between two processes (page faults, copies, scheduling, SHA-256 in the guest).
const WORKLOAD: &str = "echo \"RELEASE=$(uname -r)\"\n\
                        echo \"ZEROS=$(dd if=/dev/zero bs=1M count=8 2>/dev/null | sha256sum)\"\n";

/// Serialises image builds: two builds at once would download into the same cache files.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The images of `flavour`, built (or found in the cache) once per test binary.
fn image(flavour: Flavour) -> &'static Manifest {
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
fn build_image(flavour: Flavour) -> Manifest {
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
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Both streams, for failure messages.
    fn transcript(&self) -> String {
        format!(
            "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Reads all of a child's pipe on a thread, so neither pipe can fill and stall the child.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
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
fn quetzal<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
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
fn boot(image: &Manifest, script: &str) -> Run {
    let append = format!(
        "console=ttyS0 {}",
        test_images::initramfs::cmdline_arg(script)
    );
    quetzal(&[
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-initrd".as_ref(),
        image.initramfs.as_os_str(),
        "-append".as_ref(),
        append.as_ref(),
        "-m".as_ref(),
        "512".as_ref(),
        "-nographic".as_ref(),
    ])
}

/// The index of the first console line containing `prefix`, and the rest of that line.
/// (Not only at the start: a kernel message may share the console line.)
fn find_line<'a>(run: &'a Run, prefix: &str) -> (usize, &'a str) {
    run.stdout
        .lines()
        .enumerate()
        .find_map(|(i, line)| Some((i, line[line.find(prefix)? + prefix.len()..].trim())))
        .unwrap_or_else(|| panic!("no line with {prefix:?}\n{}", run.transcript()))
}

/// Checks a boot of `image` that ran [`WORKLOAD`] and then exited with `rc`: the guest
/// reached `/init` on the right kernel, the script's output matches the host's answers,
/// the markers come in order, and the machine powered off (exit status 0).
fn check_workload_run(image: &Manifest, run: &Run, rc: i32) {
    assert!(
        run.status.success(),
        "quetzal did not exit 0 after the guest powered off\n{}",
        run.transcript()
    );
    let (init_at, init_release) = find_line(run, "QUETZAL-INIT-OK");
    assert_eq!(
        init_release, image.kernel_release,
        "/init reported another kernel release than the manifest's"
    );
    let (release_at, release) = find_line(run, "RELEASE=");
    assert_eq!(release, image.kernel_release, "uname -r in the script");
    let (zeros_at, zeros) = find_line(run, "ZEROS=");
    let host_hash = test_images::fetch::sha256_hex(&vec![0u8; 8 << 20]);
    assert_eq!(
        zeros.split_whitespace().next(),
        Some(host_hash.as_str()),
        "the guest's SHA-256 of 8 MiB of zeros differs from the host's\n{}",
        run.transcript()
    );
    let (done_at, done) = find_line(run, "QUETZAL-DONE");
    assert_eq!(done, format!("rc={rc}"), "{}", run.transcript());
    assert!(
        init_at < release_at && release_at < zeros_at && zeros_at < done_at,
        "markers and script output out of order\n{}",
        run.transcript()
    );
    for bad in ["QUETZAL-WARN", "QUETZAL-ERROR", "Kernel panic"] {
        assert!(
            !run.stdout.contains(bad),
            "{bad} on the console\n{}",
            run.transcript()
        );
    }
}

/// The cloud kernel (LZ4 payload) boots to `/init`, runs the workload with the right
/// answers, reports the script's status 0 and powers the machine off.
#[test]
fn cloud_kernel_boots_runs_a_script_and_powers_off() {
    let image = image(Flavour::Cloud);
    let run = boot(image, WORKLOAD);
    check_workload_run(image, &run, 0);
}

/// The generic kernel (XZ payload) does the same, with a script that ends in `exit 3`:
/// `QUETZAL-DONE rc=3` shows the marker reports the script's real status (the cloud test
/// sees 0), and the machine still powers off cleanly (exit status 0).
#[test]
fn generic_kernel_boots_and_reports_the_scripts_exit_status() {
    let image = image(Flavour::Generic);
    let run = boot(image, &format!("{WORKLOAD}exit 3\n"));
    check_workload_run(image, &run, 3);
}

/// A scratch directory for this test binary's bad input files.
fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-bad-input");
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir
}

/// Requires exit status 1 and exactly one line on stderr, starting `quetzal: ` and
/// containing `needle` (which names the cause), with no panic.
fn assert_one_line_error(case: &str, run: &Run, needle: &str) {
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

/// Bad input ends with a clear one-line error and exit status 1 before any guest runs:
/// a file that is no kernel, a bzImage cut to its first 4 KiB, missing files, an initrd
/// bigger than the machine's RAM, an unknown flag and more CPUs than this release runs.
#[test]
fn bad_input_gives_a_one_line_error_and_exit_status_1() {
    let image = image(Flavour::Cloud);
    let dir = scratch();

    let garbage = dir.join("garbage.bin");
    // Deterministic noise (an LCG) that matches no kernel format.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(&garbage, noise).expect("writing the garbage kernel");
    let run = quetzal(&[
        "-kernel".as_ref(),
        garbage.as_os_str(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("garbage kernel", &run, &garbage.display().to_string());

    let truncated = dir.join("truncated-bzImage");
    let kernel = std::fs::read(&image.kernel).expect("reading the cloud kernel");
    std::fs::write(&truncated, &kernel[..4096]).expect("writing the truncated kernel");
    let run = quetzal(&[
        "-kernel".as_ref(),
        truncated.as_os_str(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("truncated bzImage", &run, "truncated");

    let missing = dir.join("no-such-kernel");
    let run = quetzal(&[
        "-kernel".as_ref(),
        missing.as_os_str(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("missing kernel", &run, &missing.display().to_string());

    let missing_initrd = dir.join("no-such-initrd");
    let run = quetzal(&[
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-initrd".as_ref(),
        missing_initrd.as_os_str(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error(
        "missing initrd",
        &run,
        &missing_initrd.display().to_string(),
    );

    // The kernel alone needs its init_size above its 16 MiB load address: about 67 MiB.
    let run = quetzal(&[
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-m".as_ref(),
        "64".as_ref(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("kernel larger than RAM", &run, "kernel needs");

    // 100 MiB of (sparse) zeros: more than what is left of a 128 MiB machine above the
    // kernel.
    let big = dir.join("big-initrd");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(100 << 20))
        .expect("writing the big initrd");
    let run = quetzal(&[
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-initrd".as_ref(),
        big.as_os_str(),
        "-m".as_ref(),
        "128".as_ref(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("initrd larger than RAM", &run, "initrd");

    let run = quetzal(&[
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-frobnicate".as_ref(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("unknown flag", &run, "-frobnicate");

    let run = quetzal(&[
        "-kernel".as_ref(),
        image.kernel.as_os_str(),
        "-smp".as_ref(),
        "4".as_ref(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("-smp 4", &run, "CPU");
}
