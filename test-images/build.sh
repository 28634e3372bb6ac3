#!/usr/bin/env bash
# Builds Quetzal's guest test images (Debian bookworm's stock kernel and a busybox
# initramfs) and prints their manifest on stdout: KEY='value' lines that a shell can
# `eval`, e.g.  eval "$(test-images/build.sh --flavour generic)"; echo "$QUETZAL_KERNEL".
# Progress goes to stderr. Arguments are passed to `test-images build` (see --help);
# with none it builds the cloud flavour. Works the same on Linux and macOS: it needs only
# cargo and network access to deb.debian.org (or $QUETZAL_DEBIAN_MIRROR), and reuses
# the cache ($QUETZAL_CACHE, else ~/.cache/quetzal) offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
exec cargo run --quiet --release -p test-images -- build "$@"
