//! CPU hot paths: block translation, the MIPS loop on both tiers, and TLB-hit loads and
//! stores.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use emu_core::jit::JitConfig;
use emu_core::translate::translate_block;
use emu_core::{Cpu, Emulator, Register, RunOptions, StopReason};
use emu_mmu::{GuestRam, Mmu};
use quetzal_benches::mips_loop::*;

/// Decoding and translating the MIPS program's code, block by block. Throughput is in
/// guest instructions translated.
fn translate(c: &mut Criterion) {
    let code = mips_program(1);
    let mut ram = GuestRam::new();
    ram.add_region(0, RAM_SIZE).unwrap();
    let mut cpu = Cpu::new(Mmu::new(ram));
    cpu.mmu.write_bytes(CODE_ADDR, &code).unwrap();
    // Every block start in the program: translate from each decoded instruction boundary.
    let mut starts = Vec::new();
    let mut rip = CODE_ADDR;
    while rip < CODE_ADDR + code.len() as u64 {
        starts.push(rip);
        let block = translate_block(&mut cpu, rip).unwrap();
        rip = block.insns[0].next_rip();
    }
    let insns: usize = starts
        .iter()
        .map(|&s| translate_block(&mut cpu, s).unwrap().insns.len())
        .sum();
    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Elements(insns as u64));
    group.bench_function("mips_program_all_entry_points", |b| {
        b.iter(|| {
            for &s in &starts {
                black_box(translate_block(&mut cpu, s).unwrap());
            }
        })
    });
    group.finish();
}

/// The MIPS loop itself (20 passes, about 1.9 million guest instructions per iteration),
/// on each tier: interpreted only, with every block compiled on its own (on first entry,
/// so the measured iterations run compiled code only), and compiled on third entry, by
/// when the blocks of each loop are known and compile into regions.
fn mips_loop(c: &mut Criterion) {
    const PASSES: u32 = 20;
    let mut group = c.benchmark_group("execute");
    group.sample_size(20);
    for (name, compiled, threshold) in [
        ("interpreted", false, 1),
        ("compiled", true, 1),
        ("compiled_regions", true, 3),
    ] {
        let mut emu = Emulator::new();
        emu.set_jit_config(JitConfig {
            enabled: compiled,
            threshold,
            background: false,
            ..JitConfig::default()
        });
        emu.map_memory(0, RAM_SIZE).unwrap();
        emu.write_memory(CODE_ADDR, &mips_program(PASSES)).unwrap();
        emu.set_reg(Register::RSP, STACK_TOP).unwrap();
        let before = emu.cpu().icount;
        assert_eq!(
            emu.run(CODE_ADDR, &RunOptions::default()),
            StopReason::Halted
        );
        let per_run = emu.cpu().icount - before;
        group.throughput(Throughput::Elements(per_run));
        group.bench_function(format!("mips_loop_20_passes/{name}"), |b| {
            b.iter(|| {
                emu.set_reg(Register::RSP, STACK_TOP).unwrap();
                assert_eq!(
                    emu.run(CODE_ADDR, &RunOptions::default()),
                    StopReason::Halted
                );
            })
        });
    }
    group.finish();
}

/// One 8-byte load and one store that hit the soft TLB.
fn tlb_hit(c: &mut Criterion) {
    let mut ram = GuestRam::new();
    ram.add_region(0, 0x10000).unwrap();
    let mut mmu = Mmu::new(ram);
    mmu.write::<8>(0x2000, 1).unwrap();
    mmu.read::<8>(0x2000).unwrap();
    let mut group = c.benchmark_group("tlb");
    group.throughput(Throughput::Elements(1));
    group.bench_function("load_u64_hit", |b| {
        b.iter(|| mmu.read::<8>(black_box(0x2008)).unwrap())
    });
    group.bench_function("store_u64_hit", |b| {
        b.iter(|| mmu.write::<8>(black_box(0x2010), black_box(7)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, translate, mips_loop, tlb_hit);
criterion_main!(benches);
