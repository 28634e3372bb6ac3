//! Arbitrary bytes as guest code, with arbitrary register values, in 64-bit mode, real
//! mode or 32-bit protected mode over a GDT and IDT of arbitrary bytes (exceptions go
//! through the guest's tables): whatever the guest does, the host must not panic, hang or
//! touch memory outside guest RAM.
//!
//! Run with `cargo fuzz run instruction_stream` from `emu-core/` (cargo-fuzz needs the
//! sanitizer flags of a nightly compiler; `RUSTC_BOOTSTRAP=1` enables them on stable).

#![no_main]

use emu_core::{Emulator, InterruptDelivery, Register, RunOptions};
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
    // The first register byte picks the mode; the code doubles as descriptor tables.
    match regs[0] % 3 {
        1 => {
            // Real mode from the power-on state, with CS moved to segment 0.
            emu.set_interrupt_delivery(InterruptDelivery::Guest);
            emu.reset();
            let cpu = emu.cpu_mut();
            cpu.seg_sel[1] = 0;
            cpu.seg_base[1] = 0;
            cpu.update_mode();
        }
        2 => {
            // 32-bit protected mode with flat CS/SS and the tables inside the code.
            emu.set_interrupt_delivery(InterruptDelivery::Guest);
            emu.reset();
            let cpu = emu.cpu_mut();
            cpu.sys.cr0 |= 1;
            cpu.seg_sel = [0x10, 0x08, 0x10, 0x10, 0x10, 0x10];
            cpu.seg_base = [0; 8];
            cpu.seg_attr = [0xc093, 0xc09b, 0xc093, 0xc093, 0xc093, 0xc093];
            cpu.sys.gdtr.base = CODE;
            cpu.sys.gdtr.limit = 0xff;
            cpu.sys.idtr.base = CODE + 0x100;
            cpu.sys.idtr.limit = 0x1ff;
            cpu.update_mode();
        }
        _ => {}
    }
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
    emu.run(
        CODE,
        &RunOptions {
            max_instructions: Some(20_000),
            timeout: Some(std::time::Duration::from_millis(100)),
            ..Default::default()
        },
    );
});
