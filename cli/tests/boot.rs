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
//! The helpers (images, running the binary under a deadline, reading the console) are in
//! `common/`, shared with `virtio.rs`.

mod common;

use common::{assert_one_line_error, boot, find_line, image, quetzal, scratch, Run};
use test_images::{Flavour, Manifest};

/// The workload: labelled lines the test parses. `dd | sha256sum` pushes 8 MiB through a
/// pipe between two processes (page faults, copies, scheduling, SHA-256 in the guest).
const WORKLOAD: &str = "echo \"RELEASE=$(uname -r)\"\n\
                        echo \"ZEROS=$(dd if=/dev/zero bs=1M count=8 2>/dev/null | sha256sum)\"\n";

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

/// Bad input ends with a clear one-line error and exit status 1 before any guest runs:
/// a file that is no kernel, a bzImage cut to its first 4 KiB, missing files, an initrd
/// bigger than the machine's RAM, an unknown flag and more CPUs than this release runs.
#[test]
fn bad_input_gives_a_one_line_error_and_exit_status_1() {
    let image = image(Flavour::Cloud);
    let dir = scratch("boot-bad-input");

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
        "33".as_ref(),
        "-nographic".as_ref(),
    ]);
    assert_one_line_error("-smp 33", &run, "CPU");
}
