//! Arbitrary bytes as a VirtIO driver: virtio-rng, virtio-blk (on a small temporary
//! image, read-write or read-only), virtio-console and virtio-balloon behind the
//! virtio-mmio transport, over guest RAM in two regions with a hole between them, with
//! descriptor tables, available rings, register accesses and host actions all chosen by
//! the input (see `emu_devices::virtio::fuzz` for the input format). Whatever the driver
//! does, the host must not panic, hang or touch memory outside guest RAM.
//!
//! Run with `cargo fuzz run virtqueue` from `emu-devices/` (cargo-fuzz needs the
//! sanitizer flags of a nightly compiler; `RUSTC_BOOTSTRAP=1` enables them on stable).
//! The same entry point runs over seeded random programs in `cargo test -p emu-devices`
//! (`virtio::fuzz::tests`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    emu_devices::virtio::fuzz::run(data);
});
