//! Prints the emulator's speed on a fixed integer workload as `MIPS: <number>` (guest
//! instructions retired per host second, in millions). See `benches/programs/mips_loop.rs`
//! for the program: ALU work, loads and stores over a 64 KiB buffer, branches and calls.

#[path = "../../benches/programs/mips_loop.rs"]
mod mips_loop;

use std::time::Instant;

use emu_core::{Emulator, Register, RunOptions, StopReason};
use mips_loop::*;

/// Passes over the buffer: about 94,000 instructions each, so well over 500 million in all.
const PASSES: u32 = 5600;

fn main() {
    let mut emu = Emulator::new();
    emu.map_memory(0, RAM_SIZE).expect("map guest RAM");
    emu.write_memory(CODE_ADDR, &mips_program(PASSES))
        .expect("load program");
    emu.set_reg(Register::RSP, STACK_TOP).expect("set RSP");
    let start = Instant::now();
    let stop = emu.run(CODE_ADDR, &RunOptions::default());
    let elapsed = start.elapsed();
    assert_eq!(stop, StopReason::Halted, "the program ends with HLT");
    let retired = emu.cpu().icount;
    println!("guest instructions retired: {retired}");
    println!("host seconds: {:.3}", elapsed.as_secs_f64());
    println!("blocks translated: {}", emu.cached_blocks());
    println!("MIPS: {:.1}", retired as f64 / elapsed.as_secs_f64() / 1e6);
}
