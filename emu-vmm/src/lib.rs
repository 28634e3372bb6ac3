//! Machine assembly for Quetzal: the crate other programs embed to run a whole machine.
//!
//! A [`config::MachineConfig`] describes the machine (memory, vCPUs, kernel, initrd,
//! command line, serial backend, VirtIO devices); the machine is built from `emu-core`,
//! `emu-mmu`, `emu-devices` and `emu-boot`, runs one host thread per vCPU plus a timer
//! thread, and ends with an outcome (power-off, reset, triple fault, stop request).

pub mod config;
pub mod machine;
pub mod timers;
pub mod trace;
