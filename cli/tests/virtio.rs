//! VirtIO devices end to end: the `quetzal` binary boots Debian 12's stock cloud kernel,
//! whose initramfs loads the virtio modules, and the guest finds the virtio-mmio devices
//! through the ACPI DSDT. Disks are checked byte for byte on the host: data the host wrote
//! hashes the same in the guest, and data the guest wrote and synced is in the image file
//! once the machine has powered off. The guest reads `/dev/hwrng` from virtio-rng. Bad
//! `-drive` / `-device` flags give a one-line error and exit status 1.
//!
//! The helpers (images, running the binary under a deadline, reading the console) are in
//! `common/`, shared with `boot.rs`.

mod common;

use std::ffi::OsStr;

use common::{
    assert_clean_run, assert_one_line_error, boot_with, drive, find_line, image, noise, quetzal,
    scratch,
};
use test_images::Flavour;

/// A read-only disk holding 4 MiB the host wrote is `/dev/vda` in the guest, hashes to
/// the host's SHA-256, reports itself read-only, refuses a write, and the image is
/// unchanged afterwards.
#[test]
fn the_guest_hashes_a_disk_the_host_wrote_to_the_same_sha256() {
    let image = image(Flavour::Cloud);
    let dir = scratch("virtio-read");
    let data = noise(4 << 20, 0x5eed_0001);
    let disk = dir.join("data.raw");
    std::fs::write(&disk, &data).expect("writing the disk image");
    let script = "set -e\n\
                  echo \"RO=$(cat /sys/block/vda/ro)\"\n\
                  echo \"VDA=$(sha256sum /dev/vda)\"\n\
                  if dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; \
                  then echo RO-WRITE=accepted; else echo RO-WRITE=refused; fi\n";
    let d = drive(&disk, "if=virtio,readonly=on");
    let run = boot_with(image, script, &["-drive".as_ref(), d.as_ref()]);
    assert_clean_run(&run, &[]);
    let (_, hash) = find_line(&run, "VDA=");
    assert_eq!(
        hash.split_whitespace().next(),
        Some(test_images::fetch::sha256_hex(&data).as_str()),
        "the guest's SHA-256 of /dev/vda differs from the host's\n{}",
        run.transcript()
    );
    assert_eq!(find_line(&run, "RO=").1, "1", "{}", run.transcript());
    assert_eq!(
        find_line(&run, "RO-WRITE=").1,
        "refused",
        "{}",
        run.transcript()
    );
    assert!(
        std::fs::read(&disk).expect("reading the image back") == data,
        "a read-only disk image changed"
    );
}

/// The guest copies the host's data from `/dev/vda` to 1 MiB into `/dev/vdb` (a second
/// disk given as `-drive if=none` plus `-device virtio-blk-device`) and writes a marker
/// at byte 100 (a partial-block write), with fsync, syncs and powers off; the host then
/// finds exactly those bytes in `vdb`'s image and zeros everywhere else.
#[test]
fn what_the_guest_writes_and_syncs_is_in_the_image_after_power_off() {
    const MARKER: &[u8] = b"QUETZAL-WROTE-THIS";
    const COPY_AT: usize = 1 << 20;
    let image = image(Flavour::Cloud);
    let dir = scratch("virtio-write");
    let source = noise(1 << 20, 0x5eed_0002);
    let src = dir.join("source.raw");
    std::fs::write(&src, &source).expect("writing the source image");
    let dst = dir.join("target.raw");
    std::fs::write(&dst, vec![0u8; 4 << 20]).expect("writing the target image");
    let script = format!(
        "set -e\n\
         dd if=/dev/vda of=/dev/vdb bs=64k seek={} conv=fsync 2>/dev/null\n\
         printf {} | dd of=/dev/vdb bs=1 seek=100 conv=notrunc,fsync 2>/dev/null\n\
         sync\n\
         echo WROTE\n",
        COPY_AT / (64 << 10),
        String::from_utf8_lossy(MARKER)
    );
    let a = drive(&src, "if=virtio,readonly=on");
    let b = drive(&dst, "if=none,id=scratch");
    let run = boot_with(
        image,
        &script,
        &[
            "-drive".as_ref(),
            a.as_ref(),
            "-drive".as_ref(),
            b.as_ref(),
            "-device".as_ref(),
            OsStr::new("virtio-blk-device,drive=scratch"),
        ],
    );
    assert_clean_run(&run, &[]);
    find_line(&run, "WROTE");
    let written = std::fs::read(&dst).expect("reading the target image");
    assert_eq!(written.len(), 4 << 20, "the image changed size");
    assert_eq!(
        &written[100..100 + MARKER.len()],
        MARKER,
        "the marker is not at byte 100\n{}",
        run.transcript()
    );
    assert!(
        written[COPY_AT..COPY_AT + source.len()] == source[..],
        "the copied megabyte differs from the source\n{}",
        run.transcript()
    );
    let elsewhere = written[..100]
        .iter()
        .chain(&written[100 + MARKER.len()..COPY_AT])
        .chain(&written[COPY_AT + source.len()..]);
    assert!(
        elsewhere.into_iter().all(|&b| b == 0),
        "bytes outside what the guest wrote changed"
    );
}

/// With `-device virtio-rng-device` the kernel's hw_random core uses virtio_rng, and
/// 64 bytes read from `/dev/hwrng` arrive (without the device the read fails).
#[test]
fn the_guest_reads_64_bytes_from_hwrng() {
    let image = image(Flavour::Cloud);
    let script = "set -e\n\
                  echo \"RNG=$(cat /sys/class/misc/hw_random/rng_current)\"\n\
                  head -c 64 /dev/hwrng > /tmp/r\n\
                  echo \"BYTES=$(wc -c < /tmp/r)\"\n\
                  echo \"HEX=$(od -An -tx1 -v /tmp/r | tr -d ' \\n')\"\n";
    let run = boot_with(
        image,
        script,
        &["-device".as_ref(), OsStr::new("virtio-rng-device")],
    );
    assert_clean_run(&run, &[]);
    let (_, rng) = find_line(&run, "RNG=");
    assert!(
        rng.starts_with("virtio_rng"),
        "hw_random uses {rng:?}\n{}",
        run.transcript()
    );
    assert_eq!(find_line(&run, "BYTES=").1, "64", "{}", run.transcript());
    let hex = find_line(&run, "HEX=").1;
    assert_eq!(hex.len(), 128, "{}", run.transcript());
    let mut distinct: Vec<&str> = (0..64).map(|i| &hex[2 * i..2 * i + 2]).collect();
    distinct.sort_unstable();
    distinct.dedup();
    // 64 random bytes with fewer than 16 distinct values: odds below 1e-40.
    assert!(distinct.len() >= 16, "these bytes are not random: {hex}");
}

/// Bad disk and device flags end with a one-line error naming the problem and exit
/// status 1, before any guest runs: a missing image (attached directly or through
/// `-device`), a format other than raw, an unknown device, and a `drive=` no `-drive`
/// defines.
#[test]
fn bad_virtio_flags_give_a_one_line_error_and_exit_status_1() {
    let image = image(Flavour::Cloud);
    let dir = scratch("virtio-bad-flags");
    let missing = dir.join("no-such-disk.raw");
    let kernel = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            "-kernel".as_ref(),
            image.kernel.as_os_str(),
            "-nographic".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        quetzal(&args)
    };
    let missing_name = missing.display().to_string();

    let d = drive(&missing, "if=virtio");
    let run = kernel(&["-drive", &d]);
    assert_one_line_error("missing disk image", &run, &missing_name);

    let d = drive(&missing, "if=none,id=d0");
    let run = kernel(&["-drive", &d, "-device", "virtio-blk-device,drive=d0"]);
    assert_one_line_error("missing disk image through -device", &run, &missing_name);

    let present = dir.join("disk.qcow2");
    std::fs::write(&present, vec![0u8; 4096]).expect("writing a disk image");
    let d = format!("file={},format=qcow2,if=virtio", present.display());
    let run = kernel(&["-drive", &d]);
    assert_one_line_error("format=qcow2", &run, "format=qcow2");

    let run = kernel(&["-device", "frobnicator-device"]);
    assert_one_line_error("unknown device", &run, "frobnicator-device");

    let run = kernel(&["-device", "virtio-blk-device,drive=nowhere"]);
    assert_one_line_error("dangling drive=", &run, "drive=nowhere");
}
