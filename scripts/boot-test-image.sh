#!/usr/bin/env bash
# The main job: boots Debian 12's stock kernel with Quetzal's busybox initramfs to a shell
# on this terminal (quit with Ctrl-A x; Ctrl-A h lists the other escapes).
#
#   scripts/boot-test-image.sh                         # cloud kernel, interactive shell
#   scripts/boot-test-image.sh --flavour generic       # the generic (XZ) kernel
#   scripts/boot-test-image.sh --cmd 'uname -a'        # run a script instead, then power off
#   scripts/boot-test-image.sh -m 1G                   # anything else goes to quetzal
#
# Options of this script (the rest are passed to quetzal after the defaults
# -kernel/-initrd/-append "console=ttyS0"/-m 512/-nographic, so e.g. -m 1G overrides -m 512):
#   --flavour cloud|generic   which kernel (default cloud)
#   --cmd SCRIPT              shell script for /init to run (quetzal.cmd=<base64>); the guest
#                             prints QUETZAL-DONE rc=<status> and powers off, and quetzal
#                             exits 0
#   --append ARGS             more kernel command-line arguments
#
# The images are built (or reused from the cache: $QUETZAL_CACHE, else ~/.cache/quetzal)
# by test-images/build.sh, which downloads ~100 MB from deb.debian.org the first time.
# Works the same on Linux and macOS; needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

flavour=cloud
cmd=
append="console=ttyS0"
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour)
            [ $# -ge 2 ] || { echo "boot-test-image.sh: --flavour needs a value" >&2; exit 1; }
            flavour="$2"; shift 2 ;;
        --flavour=*) flavour="${1#--flavour=}"; shift ;;
        --cmd)
            [ $# -ge 2 ] || { echo "boot-test-image.sh: --cmd needs a script" >&2; exit 1; }
            cmd="$2"; shift 2 ;;
        --append)
            [ $# -ge 2 ] || { echo "boot-test-image.sh: --append needs a value" >&2; exit 1; }
            append="$append $2"; shift 2 ;;
        *) passthrough+=("$1"); shift ;;
    esac
done
case "$flavour" in
    cloud|generic) ;;
    *) echo "boot-test-image.sh: --flavour must be cloud or generic, not '$flavour'" >&2; exit 1 ;;
esac

# The manifest is KEY='value' lines (QUETZAL_KERNEL, QUETZAL_INITRAMFS, ...).
manifest="$(test-images/build.sh --flavour "$flavour")"
eval "$manifest"

if [ -n "$cmd" ]; then
    # test-images makes the quetzal.cmd= argument (portable, unlike base64's flags).
    script_file="$(mktemp "${TMPDIR:-/tmp}/quetzal-cmd.XXXXXX")"
    trap 'rm -f "$script_file"' EXIT
    printf '%s\n' "$cmd" > "$script_file"
    append="$append $(cargo run --quiet --release -p test-images -- cmdline "$script_file")"
    rm -f "$script_file"
    trap - EXIT
fi

exec cargo run --quiet --release -p cli --bin quetzal -- \
    -kernel "$QUETZAL_KERNEL" -initrd "$QUETZAL_INITRAMFS" -append "$append" \
    -m 512 -nographic ${passthrough[@]+"${passthrough[@]}"}
