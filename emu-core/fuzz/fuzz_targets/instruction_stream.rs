//! Arbitrary bytes as guest code, with arbitrary register values: whatever the guest
//! does, the host must not panic, hang or touch memory outside guest RAM.
//!
//! Run with `cargo fuzz run instruction_stream` from `emu-core/` (cargo-fuzz needs the
//! sanitizer flags of a nightly compiler; `RUSTC_BOOTSTRAP=1` enables them on stable).

#![no_main]

use emu_core::{Emulator, Register, RunOptions};
use libfuzzer_sys::fuzz_target;

const CODE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (regs, code) = data.split_at(64);
    let mut emu = Emulator::new();
    emu.map_memory(0, 0x10_0000).unwrap();
    emu.write_memory(CODE, &code[..code.len().min(0x4000)]).unwrap();
    let gprs = [
        Register::RAX,
        Register::RBX,
        Register::RCX,
        Register::RDX,
        Register::RSI,
        Register::RDI,
        Register::RBP,
        Register::RSP,
    ];
    for (r, chunk) in gprs.iter().zip(regs.chunks(8)) {
        let v = u64::from_le_bytes(chunk.try_into().unwrap());
        // Keep some registers inside RAM so memory operands often hit it.
        let v = if *r == Register::RSP || *r == Register::RSI || *r == Register::RDI { v & 0xf_ffff } else { v };
        emu.set_reg(*r, v).unwrap();
    }
    let cpu = emu.cpu_mut();
    for (i, x) in cpu.xmm.iter_mut().enumerate() {
        *x = u128::from_le_bytes([regs[i * 4 % 64]; 16]) ^ (i as u128);
    }
    emu.run(CODE, &RunOptions { max_instructions: Some(20_000), ..Default::default() });
});
