#!/usr/bin/env python3
"""Side-by-side whole-system figures: quetzal against QEMU's TCG on the same kernel and
initramfs, measured in one run (so the ratio is meaningful even on a noisy host).

For each emulator it boots the test image with a script that prints markers around a
CPU workload (sha256sum of 32 MiB), and timestamps every console line on the host:

  boot      host seconds from launch to the initramfs' QUETZAL-INIT-OK marker
  workload  host seconds between the WORK-START and WORK-END markers
  total     host seconds until the emulator exits (the guest powers off)

Usage: benches/scripts/compare-qemu.py [--flavour cloud|generic] [--runs N]
Needs: test-images/build.sh (run first), a release build of quetzal, and
qemu-system-x86_64 (apt-get install qemu-system-x86; brew install qemu).
"""

import argparse
import base64
import os
import shutil
import subprocess
import sys
import time

SCRIPT = """echo WORK-START
dd if=/dev/zero bs=1M count=32 2>/dev/null | sha256sum
echo WORK-END
"""


def cache_dir():
    return os.environ.get("QUETZAL_CACHE") or os.path.expanduser("~/.cache/quetzal")


def run(cmd):
    """Runs `cmd`, returning the host time at which each marker first appeared."""
    start = time.monotonic()
    marks = {}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        now = time.monotonic() - start
        for m in ("QUETZAL-INIT-OK", "WORK-START", "WORK-END", "QUETZAL-DONE"):
            if m in line and m not in marks:
                marks[m] = now
        if "  -" in line and len(line.split()[0]) == 64:
            marks["hash"] = line.split()[0]
    proc.wait()
    marks["exit"] = time.monotonic() - start
    marks["rc"] = proc.returncode
    return marks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", default="cloud")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quetzal", default="target/release/quetzal")
    args = ap.parse_args()
    images = os.path.join(cache_dir(), "images", args.flavour)
    kernel = os.path.join(images, "vmlinuz")
    initrd = os.path.join(images, "initramfs.cpio")
    for f in (kernel, initrd, args.quetzal):
        if not os.path.exists(f):
            sys.exit(f"missing {f} (run test-images/build.sh and cargo build --release)")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    cmd64 = base64.b64encode(SCRIPT.encode()).decode()
    append = f"console=ttyS0 quetzal.cmd={cmd64}"
    common = ["-kernel", kernel, "-initrd", initrd, "-append", append, "-m", "512",
              "-nographic", "-no-reboot"]
    emulators = {
        "quetzal": [args.quetzal] + common,
        "qemu-tcg": [qemu, "-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg", "-cpu", "max",
                     "-nodefaults", "-serial", "stdio", "-display", "none",
                     "-kernel", kernel, "-initrd", initrd,
                     "-append", append, "-m", "512", "-no-reboot"],
    }
    print(f"kernel {kernel} ({args.flavour}), {args.runs} run(s) each, interleaved")
    results = {name: [] for name in emulators}
    for _ in range(args.runs):
        for name, cmd in emulators.items():
            results[name].append(run(cmd))
    print(f"{'':10} {'boot (s)':>9} {'sha256 32 MiB (s)':>18} {'total (s)':>10}  rc  hash")
    best = {}
    for name, runs in results.items():
        for r in runs:
            boot = r.get("QUETZAL-INIT-OK")
            work = (r["WORK-END"] - r["WORK-START"]) if "WORK-END" in r and "WORK-START" in r else None
            fmt = lambda v: f"{v:9.2f}" if v is not None else "        -"
            print(f"{name:10} {fmt(boot)} {fmt(work):>18} {r['exit']:10.2f}  {r['rc']:2}  {r.get('hash', '-')[:16]}")
            if boot is not None and work is not None:
                b = best.setdefault(name, [boot, work])
                best[name] = [min(b[0], boot), min(b[1], work)]
    if "quetzal" in best and "qemu-tcg" in best:
        q, t = best["quetzal"], best["qemu-tcg"]
        print(f"ratio quetzal/qemu (best of runs): boot {q[0] / t[0]:.2f}x, workload {q[1] / t[1]:.2f}x"
              " (below 1 = quetzal faster)")


if __name__ == "__main__":
    main()
