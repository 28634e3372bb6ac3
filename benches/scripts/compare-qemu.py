#!/usr/bin/env python3
"""Side-by-side whole-system figures: quetzal against QEMU's TCG on the same kernel and
initramfs, measured in one run (so the ratios are meaningful even on a noisy host).

For each emulator it boots the test image with a script that runs CPU workloads between
markers, and timestamps every console line on the host:

  boot      host seconds from launch to the initramfs' QUETZAL-INIT-OK marker
  sha256    sha256sum of 32 MiB (from /dev/zero through a pipe)
  gzip      gzip -9 of 4 MiB of generated text (the text is made before, untimed)
  bzip2     bzip2 -9 of the same text
  awk       an awk loop of 500,000 iterations of integer arithmetic
  total     host seconds until the emulator exits (the guest powers off)

Each workload prints a checksum of its output; the script checks that both emulators
printed the same ones (a fast wrong answer is no answer). Runs are interleaved, and the
ratio uses the best run of each emulator.

Usage: benches/scripts/compare-qemu.py [--flavour cloud|generic] [--runs N]
                                      [--only sha256,gzip,...]
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

# name -> shell commands; each prints one "SUM <name> <checksum>" line.
WORKLOADS = {
    "sha256": "dd if=/dev/zero bs=1M count=32 2>/dev/null | sha256sum | sed 's/^/SUM sha256 /'",
    "gzip": "gzip -9 -c /tmp/text | md5sum | sed 's/^/SUM gzip /'",
    "bzip2": "bzip2 -9 -c /tmp/text | md5sum | sed 's/^/SUM bzip2 /'",
    "awk": "awk 'BEGIN { s = 0; for (i = 0; i < 500000; i++) s = (s + i * i) % 1000003; "
           "print \"SUM awk \" s }'",
}

# Makes /tmp/text: 4 MiB of varied text (numbers and words), untimed.
SETUP = ("seq 1 250000 | sed 's/\\(.*\\)\\(.\\)$/\\1 line \\2 of \\1/' | head -c 4194304 > /tmp/text")


def script(names):
    lines = [SETUP]
    for name in names:
        lines += [f"echo WORK-{name}-START", WORKLOADS[name], f"echo WORK-{name}-END"]
    return "\n".join(lines) + "\n"


def cache_dir():
    return os.environ.get("QUETZAL_CACHE") or os.path.expanduser("~/.cache/quetzal")


def run(cmd, names):
    """Runs `cmd`, returning host times of the markers and the checksums printed."""
    start = time.monotonic()
    marks, sums = {}, {}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").strip()
        now = time.monotonic() - start
        if "QUETZAL-INIT-OK" in line:
            marks.setdefault("boot", now)
        for name in names:
            if line == f"WORK-{name}-START":
                marks[name + "-start"] = now
            elif line == f"WORK-{name}-END":
                marks[name + "-end"] = now
        if line.startswith("SUM "):
            parts = line.split()
            if len(parts) >= 3:
                sums[parts[1]] = parts[2]
    proc.wait()
    result = {"boot": marks.get("boot"), "total": time.monotonic() - start,
              "rc": proc.returncode, "sums": sums}
    for name in names:
        if name + "-start" in marks and name + "-end" in marks:
            result[name] = marks[name + "-end"] - marks[name + "-start"]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", default="cloud")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quetzal", default="target/release/quetzal")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="comma-separated workloads (default: all)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in WORKLOADS:
            sys.exit(f"unknown workload {n!r} (known: {', '.join(WORKLOADS)})")
    images = os.path.join(cache_dir(), "images", args.flavour)
    kernel = os.path.join(images, "vmlinuz")
    initrd = os.path.join(images, "initramfs.cpio")
    for f in (kernel, initrd, args.quetzal):
        if not os.path.exists(f):
            sys.exit(f"missing {f} (run test-images/build.sh and cargo build --release)")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    cmd64 = base64.b64encode(script(names).encode()).decode()
    append = f"console=ttyS0 quetzal.cmd={cmd64}"
    common = ["-kernel", kernel, "-initrd", initrd, "-append", append, "-m", "512",
              "-nographic", "-no-reboot"]
    emulators = {
        "quetzal": [args.quetzal] + common,
        # Plain `-M microvm` hangs these kernels in TSC calibration; the legacy timers fix it.
        "qemu-tcg": [qemu, "-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg", "-cpu", "max",
                     "-nodefaults", "-serial", "stdio", "-display", "none",
                     "-kernel", kernel, "-initrd", initrd,
                     "-append", append, "-m", "512", "-no-reboot"],
    }
    print(f"kernel {kernel} ({args.flavour}), {args.runs} run(s) each, interleaved")
    results = {name: [] for name in emulators}
    for _ in range(args.runs):
        for name, cmd in emulators.items():
            results[name].append(run(cmd, names))
    columns = ["boot"] + names + ["total"]
    print(f"{'':10}" + "".join(f"{c:>9}" for c in columns) + "   rc")
    best = {}
    for name, runs in results.items():
        for r in runs:
            cells = "".join(f"{r[c]:9.2f}" if r.get(c) is not None else f"{'-':>9}"
                            for c in columns)
            print(f"{name:10}{cells}   {r['rc']}")
            for c in columns:
                if r.get(c) is not None:
                    best.setdefault(name, {})
                    best[name][c] = min(best[name].get(c, float("inf")), r[c])
    # Same answers from both?
    reference = results["qemu-tcg"][0]["sums"]
    ok = True
    for name, runs in results.items():
        for r in runs:
            for w in names:
                if r["sums"].get(w) != reference.get(w):
                    ok = False
                    print(f"MISMATCH: {name} printed {r['sums'].get(w)!r} for {w}, "
                          f"QEMU {reference.get(w)!r}")
    if "quetzal" in best and "qemu-tcg" in best:
        q, t = best["quetzal"], best["qemu-tcg"]
        ratios = ", ".join(f"{c} {q[c] / t[c]:.2f}x" for c in columns if c in q and c in t)
        print(f"ratio quetzal/qemu (best of runs): {ratios} (below 1 = quetzal faster)")
    print("outputs match" if ok else "OUTPUTS DIFFER")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
