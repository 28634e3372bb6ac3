#!/usr/bin/env python3
"""In-guest network throughput: quetzal against QEMU's TCG, both on user-mode networking
(QEMU's slirp, quetzal's emu-net), the same kernel and initramfs, measured in one run (so
the ratio means something on a noisy host).

The host serves a file (64 MiB by default) over HTTP on 127.0.0.1; each guest sets eth0 to
10.0.2.15/24 with the router 10.0.2.2 (slirp's fixed addresses on both), then times
`wget -O /dev/null http://10.0.2.2:PORT/file` with its own clock (/proc/uptime, 10 ms
resolution) and prints the seconds; the script also checks the guest received the whole
file (wget's exit status) and reports MB/s (10^6 bytes per second) and quetzal / QEMU.
As a cross-check of the guest clocks it also times, on the host, the console lines the
guest prints just before and after the fetch (that figure includes the serial port's
latency, so it reads a little lower).

Usage: benches/scripts/net-throughput.py [--mib N] [--runs N] [--quetzal PATH]
Needs: test-images/build.sh (run first), a release build of quetzal, and
qemu-system-x86_64 (apt-get install qemu-system-x86; brew install qemu).
"""

import argparse
import base64
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time

import emulators

SCRIPT = """set -e
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# One small fetch first, so ARP and the first connection are not in the figure.
wget -q -O /dev/null http://10.0.2.2:{port}/small
echo NET-START
t0=$(cut -d' ' -f1 /proc/uptime)
wget -q -O /dev/null http://10.0.2.2:{port}/file
t1=$(cut -d' ' -f1 /proc/uptime)
echo NET-END
echo "NET-SECONDS $(awk "BEGIN {{ print $t1 - $t0 }}")"
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    """An HTTP server for `directory` on 127.0.0.1 in a thread; returns (server, port)."""
    handler = functools.partial(QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def run(cmd, timeout):
    """Runs an emulator; returns (guest seconds, host seconds between the guest's
    NET-START and NET-END console lines) or None, and the console tail."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines, marks = [], {}
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        for m in ("NET-START", "NET-END"):
            if line.startswith(m) and m not in marks:
                marks[m] = time.monotonic()
    proc.wait()
    timer.cancel()
    text = "".join(lines)
    if "QUETZAL-DONE rc=0" in text and len(marks) == 2:
        for line in lines:
            if line.startswith("NET-SECONDS"):
                return (float(line.split()[1]), marks["NET-END"] - marks["NET-START"]), text
    return None, text[-2000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", default="cloud")
    ap.add_argument("--mib", type=int, default=64, help="size of the file fetched")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quetzal", default="target/release/quetzal")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per boot")
    ap.add_argument("--tries", type=int, default=2,
                    help="boots per figure (QEMU's TCG occasionally hangs early in boot)")
    args = ap.parse_args()
    kernel, initrd, qemu = emulators.inputs(args.flavour, args.quetzal)

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "file"), "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(args.mib):
                f.write(chunk)
        with open(os.path.join(tmp, "small"), "wb") as f:
            f.write(b"x" * 1024)
        server, port = serve(tmp)
        cmd64 = base64.b64encode(SCRIPT.format(port=port).encode()).decode()
        append = f"console=ttyS0 quetzal.cmd={cmd64}"
        net = ["-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"]
        commands = {
            "quetzal": emulators.quetzal_cmd(args.quetzal, kernel, initrd, append, extra=net),
            "qemu-tcg": emulators.qemu_cmd(qemu, kernel, initrd, append, extra=net),
        }
        size = args.mib << 20
        best = {}
        for i in range(args.runs):
            for name, cmd in commands.items():
                for attempt in range(args.tries):
                    figures, text = run(cmd, args.timeout)
                    if figures is not None and min(figures) > 0:
                        break
                    print(f"{name}: run {i + 1} attempt {attempt + 1} failed; console tail:\n"
                          f"{text}", file=sys.stderr, flush=True)
                if figures is None or min(figures) <= 0:
                    continue
                guest, host = figures
                mbs = size / guest / 1e6
                print(f"{name:9} run {i + 1}: {args.mib} MiB in {guest:.2f} s by the guest's "
                      f"clock = {mbs:.1f} MB/s ({size / host / 1e6:.1f} MB/s by the host's, "
                      f"{host:.2f} s between the console markers)", flush=True)
                best[name] = max(best.get(name, 0.0), mbs)
        server.shutdown()
    if len(best) == 2:
        print(f"best: quetzal {best['quetzal']:.1f} MB/s, qemu-tcg {best['qemu-tcg']:.1f} MB/s, "
              f"ratio quetzal/qemu {best['quetzal'] / best['qemu-tcg']:.2f}")
    else:
        sys.exit("not every emulator produced a figure")


if __name__ == "__main__":
    main()
