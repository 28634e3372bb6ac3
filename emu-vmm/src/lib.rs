//! Machine assembly for Quetzal: the crate other programs embed to run a whole machine.
//!
//! Nothing lives here yet. It will build a `Machine` from a typed configuration (memory,
//! vCPUs, devices, kernel, initrd, command line) out of `emu-core`, `emu-mmu`,
//! `emu-devices` and `emu-boot`, run one host thread per vCPU, and own the VM lifecycle
//! and snapshots. Until then, bare-CPU embedding goes through `emu_core::Emulator`.
