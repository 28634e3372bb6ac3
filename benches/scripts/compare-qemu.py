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
  pair      two processes at once, each the awk loop (not run by default: with --smp
            1,2 it shows what a second vCPU buys)
  total     host seconds until the emulator exits (the guest powers off)

With --smp N[,M...] every emulator runs once per CPU count (QEMU with multi-threaded TCG,
`-accel tcg,thread=multi`, one host thread per vCPU as quetzal), and the speed-up of each
workload from the first count to the others is printed per emulator.

Each workload prints a checksum of its output; the script checks that both emulators
printed the same ones (a fast wrong answer is no answer). Runs are interleaved, and the
ratio uses the best run of each emulator.

Usage: benches/scripts/compare-qemu.py [--flavour cloud|generic] [--runs N]
                                      [--only sha256,gzip,...] [--smp 1,2]
Needs: test-images/build.sh (run first), a release build of quetzal, and
qemu-system-x86_64 (apt-get install qemu-system-x86; brew install qemu).
"""

import argparse
import base64
import subprocess
import sys
import threading
import time

import emulators

# name -> shell commands; each prints one "SUM <name> <checksum>" line.
WORKLOADS = {
    "sha256": "dd if=/dev/zero bs=1M count=32 2>/dev/null | sha256sum | sed 's/^/SUM sha256 /'",
    "gzip": "gzip -9 -c /tmp/text | md5sum | sed 's/^/SUM gzip /'",
    "bzip2": "bzip2 -9 -c /tmp/text | md5sum | sed 's/^/SUM bzip2 /'",
    "awk": "awk 'BEGIN { s = 0; for (i = 0; i < 500000; i++) s = (s + i * i) % 1000003; "
           "print \"SUM awk \" s }'",
    "pair": "for i in 1 2; do awk 'BEGIN { s = 0; for (i = 0; i < 500000; i++) "
            "s = (s + i * i) % 1000003; print s }' > /tmp/pair$i & done; wait; "
            "cat /tmp/pair1 /tmp/pair2 | md5sum | sed 's/^/SUM pair /'",
}
DEFAULT_WORKLOADS = ["sha256", "gzip", "bzip2", "awk"]

# Makes /tmp/text: 4 MiB of varied text (numbers and words), untimed.
SETUP = ("seq 1 250000 | sed 's/\\(.*\\)\\(.\\)$/\\1 line \\2 of \\1/' | head -c 4194304 > /tmp/text")


def script(names):
    lines = [SETUP]
    for name in names:
        lines += [f"echo WORK-{name}-START", WORKLOADS[name], f"echo WORK-{name}-END"]
    return "\n".join(lines) + "\n"


def run(cmd, names, timeout):
    """Runs `cmd`, returning host times of the markers and the checksums printed. A run
    still going after `timeout` seconds is killed (QEMU's TCG now and then hangs early in
    boot) and reports no figures."""
    start = time.monotonic()
    marks, sums = {}, {}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
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
    watchdog.cancel()
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
    ap.add_argument("--only", default=",".join(DEFAULT_WORKLOADS),
                    help="comma-separated workloads (default: all but pair)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per boot")
    ap.add_argument("--smp", default="1",
                    help="comma-separated vCPU counts to run each emulator with")
    args = ap.parse_args()
    counts = [int(c) for c in args.smp.split(",") if c]
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in WORKLOADS:
            sys.exit(f"unknown workload {n!r} (known: {', '.join(WORKLOADS)})")
    kernel, initrd, qemu = emulators.inputs(args.flavour, args.quetzal)
    cmd64 = base64.b64encode(script(names).encode()).decode()
    append = f"console=ttyS0 quetzal.cmd={cmd64}"
    commands = {}
    for n in counts:
        suffix = "" if counts == [1] else f"-smp{n}"
        commands["quetzal" + suffix] = emulators.quetzal_cmd(args.quetzal, kernel, initrd,
                                                             append, smp=n)
        commands["qemu-tcg" + suffix] = emulators.qemu_cmd(qemu, kernel, initrd, append, smp=n)
    print(f"kernel {kernel} ({args.flavour}), {args.runs} run(s) each, interleaved")
    results = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            results[name].append(run(cmd, names, args.timeout))
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
    # Same answers from all?
    reference = results[next(iter(results))][0]["sums"]
    ok = True
    for name, runs in results.items():
        for r in runs:
            for w in names:
                if r["sums"].get(w) != reference.get(w):
                    ok = False
                    print(f"MISMATCH: {name} printed {r['sums'].get(w)!r} for {w}, "
                          f"the first run {reference.get(w)!r}")
    for n in counts:
        suffix = "" if counts == [1] else f"-smp{n}"
        q, t = best.get("quetzal" + suffix), best.get("qemu-tcg" + suffix)
        if q and t:
            ratios = ", ".join(f"{c} {q[c] / t[c]:.2f}x" for c in columns if c in q and c in t)
            label = "" if not suffix else f" at -smp {n}"
            print(f"ratio quetzal/qemu{label} (best of runs): {ratios} "
                  f"(below 1 = quetzal faster)")
    for emu in ("quetzal", "qemu-tcg"):
        for n in counts[1:]:
            base, more = best.get(f"{emu}-smp{counts[0]}"), best.get(f"{emu}-smp{n}")
            if base and more:
                ups = ", ".join(f"{c} {base[c] / more[c]:.2f}x" for c in names
                                if c in base and c in more)
                print(f"speed-up of {emu} from -smp {counts[0]} to -smp {n}: {ups}")
    print("outputs match" if ok else "OUTPUTS DIFFER")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
