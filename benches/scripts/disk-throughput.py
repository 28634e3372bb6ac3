#!/usr/bin/env python3
"""In-guest sequential disk throughput: quetzal against QEMU's TCG, both with a raw image
on virtio-blk over virtio-mmio, the same kernel and initramfs, measured in one run (so the
ratio means something on a noisy host).

The host makes a raw image of N MiB (64 by default) filled with pseudo-random bytes; each
guest then times with its own clock (/proc/uptime, 10 ms resolution):

  read   dd if=/dev/vda of=/dev/null bs=1M           (the whole disk, page cache cold)
  write  dd if=/dev/zero of=/dev/vda bs=1M conv=fsync (the whole disk, flushed)

and prints the seconds; the read also prints an md5 of the disk (checked against the
host's, from a second pass that is not timed) so a fast wrong answer is no answer. The
script reports MB/s (10^6 bytes per second) and the ratio quetzal / QEMU (above 1 =
quetzal faster). Each emulator gets its own copy of the image.

Usage: benches/scripts/disk-throughput.py [--mib N] [--runs N] [--quetzal PATH]
Needs: test-images/build.sh (run first), a release build of quetzal, and
qemu-system-x86_64 (apt-get install qemu-system-x86; brew install qemu).
"""

import argparse
import base64
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile

import emulators

SCRIPT = """set -e
echo 3 > /proc/sys/vm/drop_caches
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
echo "DISK-READ $(awk "BEGIN {{ print $t1 - $t0 }}")"
echo "DISK-MD5 $(md5sum < /dev/vda | cut -d' ' -f1)"
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/dev/vda bs=1M count={mib} conv=fsync 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
echo "DISK-WRITE $(awk "BEGIN {{ print $t1 - $t0 }}")"
"""


def make_image(path, mib):
    rng = random.Random(1234)
    h = hashlib.md5()
    with open(path, "wb") as f:
        for _ in range(mib):
            block = rng.randbytes(1 << 20)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def run(cmd, timeout):
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    result = {}
    for raw in out.decode("utf-8", "replace").splitlines():
        parts = raw.strip().split()
        if len(parts) == 2 and parts[0] in ("DISK-READ", "DISK-WRITE", "DISK-MD5"):
            result[parts[0]] = parts[1]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--flavour", default="cloud")
    ap.add_argument("--quetzal", default="target/release/quetzal")
    args = ap.parse_args()
    kernel, initrd, qemu = emulators.inputs(args.flavour, args.quetzal)
    tmp = tempfile.mkdtemp(prefix="quetzal-disk-")
    master = os.path.join(tmp, "master.img")
    expected = make_image(master, args.mib)
    cmd64 = base64.b64encode(SCRIPT.format(mib=args.mib).encode()).decode()
    append = f"console=ttyS0 quetzal.cmd={cmd64}"
    results = {"quetzal": [], "qemu-tcg": []}
    try:
        for _ in range(args.runs):
            for name in results:
                disk = os.path.join(tmp, f"{name}.img")
                shutil.copyfile(master, disk)
                drive = ["-drive", f"id=d0,file={disk},format=raw,if=none",
                         "-device", "virtio-blk-device,drive=d0"]
                if name == "quetzal":
                    cmd = emulators.quetzal_cmd(args.quetzal, kernel, initrd, append,
                                                extra=drive)
                else:
                    cmd = emulators.qemu_cmd(qemu, kernel, initrd, append, extra=drive)
                results[name].append(run(cmd, timeout=300))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = args.mib * (1 << 20) / 1e6
    best = {}
    print(f"{args.mib} MiB raw image on virtio-blk, {args.runs} run(s) each, interleaved")
    print(f"{'':10} {'read MB/s':>10} {'write MB/s':>11}  md5")
    ok = True
    for name, runs in results.items():
        for r in runs:
            if "error" in r or "DISK-READ" not in r or "DISK-WRITE" not in r:
                print(f"{name:10} failed: {r}")
                ok = False
                continue
            rd = mb / max(float(r["DISK-READ"]), 0.01)
            wr = mb / max(float(r["DISK-WRITE"]), 0.01)
            good = r.get("DISK-MD5") == expected
            ok &= good
            print(f"{name:10} {rd:10.1f} {wr:11.1f}  {'ok' if good else 'WRONG'}")
            b = best.setdefault(name, [0.0, 0.0])
            best[name] = [max(b[0], rd), max(b[1], wr)]
    if "quetzal" in best and "qemu-tcg" in best:
        q, t = best["quetzal"], best["qemu-tcg"]
        print(f"ratio quetzal/qemu (best of runs, above 1 = quetzal faster): "
              f"read {q[0] / t[0]:.2f}x, write {q[1] / t[1]:.2f}x")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
