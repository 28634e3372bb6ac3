//! Helpers shared by the bare-metal test targets (`system_isa`, `non_differential`).

#![allow(dead_code)] // each test target uses its own subset

use emu_core::{Emulator, Register};
use iced_x86::code_asm::*;

/// Where test programs are loaded.
pub const CODE: u64 = 0x1000;

/// A fresh emulator on the tier this test target checks: the `*_compiled` targets compile
/// every block the first time it runs whole (on the test's thread, so runs are
/// deterministic), the others interpret only.
pub fn emulator() -> Emulator {
    let mut emu = Emulator::new();
    emu.set_jit_config(emu_core::jit::JitConfig {
        enabled: env!("CARGO_CRATE_NAME").ends_with("_compiled"),
        threshold: 1,
        background: false,
        ..Default::default()
    });
    emu
}

/// A bare 64-bit CPU with 1 MiB of RAM, `build`'s program at [`CODE`] and RSP at 0x80000.
pub fn machine(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Emulator {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    let code = a.assemble(CODE).unwrap();
    let mut emu = emulator();
    emu.map_memory(0, 0x10_0000).unwrap();
    emu.write_memory(CODE, &code).unwrap();
    emu.set_reg(Register::RSP, 0x8_0000).unwrap();
    emu
}

/// A register's value.
pub fn reg(emu: &Emulator, r: Register) -> u64 {
    emu.reg(r).unwrap()
}

/// The debug port test programs report through (port 0xE9, as Bochs' and QEMU's debugcon).
pub const DEBUG_PORT: u16 = 0xe9;

/// A debug-port device: records every value written to it, as a little-endian number of
/// the access width (so `out dx, eax` records one 32-bit value).
#[derive(Default)]
pub struct DebugPort {
    /// Values in the order the guest wrote them.
    pub values: Vec<u64>,
}

impl emu_mmu::BusDevice for DebugPort {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        self.values.push(u64::from_le_bytes(bytes));
    }
}

/// Attaches a [`DebugPort`] at [`DEBUG_PORT`] and returns it for inspection.
pub fn attach_debug_port(emu: &mut Emulator) -> std::sync::Arc<std::sync::Mutex<DebugPort>> {
    let port = std::sync::Arc::new(std::sync::Mutex::new(DebugPort::default()));
    // Four ports wide so that word and dword OUTs land in it whole.
    emu.add_io_device(DEBUG_PORT, 4, port.clone()).unwrap();
    port
}

/// What the guest wrote to the debug port so far.
pub fn reported(port: &std::sync::Mutex<DebugPort>) -> Vec<u64> {
    port.lock().unwrap().values.clone()
}
