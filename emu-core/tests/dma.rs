//! Code that a device rewrites behind the CPU's back (DMA into guest RAM) runs in its new
//! form once the device reports the write, in the interpreter and in compiled blocks.

use emu_core::{Emulator, Register, RunOptions, StopReason};
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x1000;

/// `mov eax, imm32` followed by a NOP at which the run stops.
fn mov_eax(imm: u32) -> Vec<u8> {
    let mut v = vec![0xb8];
    v.extend_from_slice(&imm.to_le_bytes());
    v.push(0x90);
    v
}

fn run_once(emu: &mut Emulator) -> u64 {
    let options = RunOptions {
        until: Some(CODE + 5),
        ..RunOptions::default()
    };
    assert_eq!(emu.run(CODE, &options), StopReason::ReachedEnd);
    emu.reg(Register::RAX).unwrap()
}

#[test]
fn device_writes_to_translated_code_take_effect_once_reported() {
    let mut emu = Emulator::new();
    emu.map_memory(0, 0x10_0000).unwrap();
    emu.write_memory(CODE, &mov_eax(1)).unwrap();
    // Enough runs for the block to be translated (and compiled, where that is on).
    for _ in 0..300 {
        assert_eq!(run_once(&mut emu), 1);
    }
    // The "device" writes guest RAM directly, as VirtIO devices do through vm-memory.
    let ram = emu.cpu().mmu.ram().memory().unwrap().clone();
    ram.write_slice(&mov_eax(2), GuestAddress(CODE)).unwrap();
    emu.cpu().mmu.dma_writes().wrote(CODE, 6);
    assert_eq!(run_once(&mut emu), 2);
}
