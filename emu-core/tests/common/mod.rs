//! Helpers shared by the bare-metal test targets (`system_isa`, `non_differential`).

#![allow(dead_code)] // each test target uses its own subset

use emu_core::{Emulator, Register};
use iced_x86::code_asm::*;

/// Where test programs are loaded.
pub const CODE: u64 = 0x1000;

/// A bare 64-bit CPU with 1 MiB of RAM, `build`'s program at [`CODE`] and RSP at 0x80000.
pub fn machine(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Emulator {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    let code = a.assemble(CODE).unwrap();
    let mut emu = Emulator::new();
    emu.map_memory(0, 0x10_0000).unwrap();
    emu.write_memory(CODE, &code).unwrap();
    emu.set_reg(Register::RSP, 0x8_0000).unwrap();
    emu
}

/// A register's value.
pub fn reg(emu: &Emulator, r: Register) -> u64 {
    emu.reg(r).unwrap()
}
