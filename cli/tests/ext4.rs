//! ext4 end to end: the host writes an ext4 image with `test-images`' own pure-Rust
//! writer (no `mke2fs`, so this runs the same on Linux and macOS), attaches it as a
//! virtio-blk disk, and Debian 12's stock cloud kernel (ext4 built in) mounts it. The
//! guest hashes and prints the files the host put there; in the read-write case it also
//! writes a file, unmounts and powers off, and the host reads that file back out of the
//! image with `test-images`' ext4 reader (and, where e2fsprogs happens to be installed,
//! `e2fsck -fn` finds nothing to fix in it; the test never needs e2fsprogs).

mod common;

use std::path::Path;

use common::{assert_clean_run, boot_with, drive, find_line, image, noise, scratch};
use test_images::Flavour;

const GREETING: &str = "hello from the host's ext4 writer";

/// An ext4 image at `path` (32 MiB) holding `hello.bin` (`data`) and `greeting.txt`.
fn write_image(path: &Path, data: &[u8]) {
    let greeting = format!("{GREETING}\n");
    test_images::write_ext4_image(
        path,
        32 << 20,
        &[("hello.bin", data), ("greeting.txt", greeting.as_bytes())],
    )
    .expect("writing the ext4 image");
}

/// The guest mounts the host's ext4 image read-only and prints the SHA-256 of a 384 KiB
/// file (several extents' worth of blocks, not block-aligned) and a text file's line:
/// both match what the host wrote, and the image is unchanged afterwards.
#[test]
fn the_guest_mounts_an_ext4_image_the_host_made_and_reads_its_files() {
    let image = image(Flavour::Cloud);
    let dir = scratch("ext4-ro");
    let data = noise((384 << 10) + 123, 0x5eed_e404);
    let disk = dir.join("fs.ext4");
    write_image(&disk, &data);
    let before = std::fs::read(&disk).expect("reading the image");
    let script = "set -e\n\
                  mount -t ext4 -o ro /dev/vda /mnt\n\
                  echo \"HASH=$(sha256sum /mnt/hello.bin)\"\n\
                  echo \"TEXT=$(cat /mnt/greeting.txt)\"\n\
                  echo \"LIST=$(ls /mnt | tr '\\n' ' ')\"\n\
                  umount /mnt\n";
    let d = drive(&disk, "if=virtio,readonly=on");
    let run = boot_with(image, script, &["-drive".as_ref(), d.as_ref()]);
    assert_clean_run(&run, &["EXT4-fs error"]);
    let (_, hash) = find_line(&run, "HASH=");
    assert_eq!(
        hash.split_whitespace().next(),
        Some(test_images::fetch::sha256_hex(&data).as_str()),
        "the guest's SHA-256 of /mnt/hello.bin differs from the host's\n{}",
        run.transcript()
    );
    assert_eq!(find_line(&run, "TEXT=").1, GREETING, "{}", run.transcript());
    assert_eq!(
        find_line(&run, "LIST=").1,
        "greeting.txt hello.bin lost+found",
        "{}",
        run.transcript()
    );
    assert!(
        std::fs::read(&disk).expect("reading the image back") == before,
        "a read-only ext4 image changed"
    );
}

/// The guest mounts the image read-write, checks the host's file, writes a new file (a
/// copy of the host's data followed by a line of its own), unmounts and powers off; the
/// host then reads the new file out of the image with its own ext4 reader and finds
/// exactly those bytes, and the host's original files are intact.
#[test]
fn a_file_the_guest_writes_into_the_ext4_image_is_there_for_the_host() {
    let image = image(Flavour::Cloud);
    let dir = scratch("ext4-rw");
    let data = noise(256 << 10, 0x5eed_e405);
    let disk = dir.join("fs.ext4");
    write_image(&disk, &data);
    let script = "set -e\n\
                  mount -t ext4 /dev/vda /mnt\n\
                  echo \"HASH=$(sha256sum /mnt/hello.bin)\"\n\
                  cp /mnt/hello.bin /mnt/written.bin\n\
                  echo 'written by the guest' >> /mnt/written.bin\n\
                  echo \"WHASH=$(sha256sum /mnt/written.bin)\"\n\
                  umount /mnt\n\
                  sync\n\
                  echo UNMOUNTED\n";
    let d = drive(&disk, "if=virtio");
    let run = boot_with(image, script, &["-drive".as_ref(), d.as_ref()]);
    assert_clean_run(&run, &["EXT4-fs error"]);
    find_line(&run, "UNMOUNTED");
    let (_, hash) = find_line(&run, "HASH=");
    assert_eq!(
        hash.split_whitespace().next(),
        Some(test_images::fetch::sha256_hex(&data).as_str()),
        "{}",
        run.transcript()
    );
    let mut expected = data.clone();
    expected.extend_from_slice(b"written by the guest\n");
    let (_, whash) = find_line(&run, "WHASH=");
    assert_eq!(
        whash.split_whitespace().next(),
        Some(test_images::fetch::sha256_hex(&expected).as_str()),
        "{}",
        run.transcript()
    );
    let img = std::fs::read(&disk).expect("reading the image back");
    test_images::ext4::check_ext4_image(&img)
        .map(|_| ())
        .unwrap_or_else(|e| panic!("the image after the guest's write: {e}"));
    let written = test_images::read_ext4_file(&img, "written.bin")
        .unwrap_or_else(|e| panic!("reading /written.bin on the host: {e}"));
    assert!(
        written == expected,
        "/written.bin as the host reads it ({} bytes) differs from what the guest wrote ({} bytes)",
        written.len(),
        expected.len()
    );
    assert!(
        test_images::read_ext4_file(&img, "hello.bin").expect("reading /hello.bin") == data,
        "the host's /hello.bin changed"
    );
    e2fsck_if_installed(&disk);
}

/// Where e2fsprogs is installed (a developer's Linux machine), `e2fsck -fn` finds nothing
/// to fix in the image the guest changed. Optional: the test never needs e2fsprogs.
fn e2fsck_if_installed(disk: &Path) {
    let e2fsck = Path::new("/usr/sbin/e2fsck");
    if !e2fsck.exists() {
        return;
    }
    let out = std::process::Command::new(e2fsck)
        .arg("-fn")
        .arg(disk)
        .output()
        .expect("running e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn found problems in the image after the guest's write:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
