"""What the side-by-side scripts (compare-qemu.py, disk-throughput.py, net-throughput.py)
share: where the test images are, and how each emulator boots them.

Both emulators get the same kernel, initramfs, command line, 512 MiB and serial console
on standard output; `extra` adds devices (the same flags work for both, as quetzal
spells them as QEMU does).
"""

import os
import shutil
import sys


def cache_dir():
    return os.environ.get("QUETZAL_CACHE") or os.path.expanduser("~/.cache/quetzal")


def inputs(flavour, quetzal):
    """(kernel, initrd, qemu): the image files and QEMU's binary; exits with a message
    naming what is missing."""
    images = os.path.join(cache_dir(), "images", flavour)
    kernel = os.path.join(images, "vmlinuz")
    initrd = os.path.join(images, "initramfs.cpio")
    for f in (kernel, initrd, quetzal):
        if not os.path.exists(f):
            sys.exit(f"missing {f} (run test-images/build.sh and cargo build --release)")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    return kernel, initrd, qemu


def quetzal_cmd(quetzal, kernel, initrd, append, smp=1, extra=()):
    return [quetzal, "-smp", str(smp), "-kernel", kernel, "-initrd", initrd,
            "-append", append, "-m", "512", "-nographic", "-no-reboot", *extra]


def qemu_cmd(qemu, kernel, initrd, append, smp=1, extra=()):
    # Plain `-M microvm` hangs these kernels in TSC calibration; the legacy timers fix it.
    # Multi-threaded TCG is QEMU's default on x86-64 hosts; say so anyway with -smp > 1.
    accel = "tcg" if smp == 1 else "tcg,thread=multi"
    return [qemu, "-M", "microvm,pit=on,pic=on,rtc=on", "-accel", accel, "-cpu", "max",
            "-smp", str(smp), "-nodefaults", "-serial", "stdio", "-display", "none",
            "-kernel", kernel, "-initrd", initrd, "-append", append, "-m", "512",
            "-no-reboot", *extra]
