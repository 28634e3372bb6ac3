//! Several vCPUs of one machine ([`Emulator::new_vcpu`]) on their own host threads, on
//! both tiers: locked read-modify-writes add up exactly (compare-exchange path, and the
//! split-lock path that stops the other vCPUs), and code one vCPU patches is seen by
//! another that runs it (cross-modifying code).

use std::time::Duration;

use emu_core::jit::JitConfig;
use emu_core::{Emulator, Register, RunOptions, StopReason};
use iced_x86::code_asm::*;

const CODE: u64 = 0x1000;
/// A page of code only one vCPU runs.
const PATCHED: u64 = 0x3000;
const DATA: u64 = 0x10_0000;
const STACKS: u64 = 0x20_0000;

/// The tiers every test runs on: interpreted, and every block compiled at once.
fn tiers() -> [JitConfig; 2] {
    [
        JitConfig {
            enabled: false,
            ..JitConfig::default()
        },
        JitConfig {
            threshold: 1,
            background: false,
            ..JitConfig::default()
        },
    ]
}

/// `n` vCPUs over 2 MiB of RAM holding `code` at [`CODE`] (and `extra` at [`PATCHED`]),
/// each with its own stack.
fn vcpus(n: usize, jit: JitConfig, code: &[u8], extra: &[u8]) -> Vec<Emulator> {
    let mut first = Emulator::new();
    first.set_jit_config(jit);
    first.map_memory(0, 0x40_0000).unwrap();
    first.write_memory(CODE, code).unwrap();
    first.write_memory(PATCHED, extra).unwrap();
    let mut all = vec![first];
    for _ in 1..n {
        let next = all[0].new_vcpu();
        all.push(next);
    }
    for (i, emu) in all.iter_mut().enumerate() {
        emu.set_reg(Register::RSP, STACKS + 0x1_0000 * (i as u64 + 1))
            .unwrap();
    }
    all
}

fn assemble(at: u64, build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(at).unwrap()
}

/// Runs every vCPU on its own thread from `CODE` (with `setup` applied) until `end`.
fn run_all(
    mut all: Vec<Emulator>,
    end: u64,
    setup: impl Fn(usize, &mut Emulator),
) -> Vec<Emulator> {
    for (i, emu) in all.iter_mut().enumerate() {
        setup(i, emu);
    }
    let threads: Vec<_> = all
        .into_iter()
        .map(|mut emu| {
            std::thread::spawn(move || {
                let options = RunOptions {
                    until: Some(end),
                    timeout: Some(Duration::from_secs(60)),
                    ..RunOptions::default()
                };
                let stop = emu.run(CODE, &options);
                assert_eq!(stop, StopReason::ReachedEnd, "{:#x}", emu.cpu().rip);
                emu
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn read_u64(emu: &mut Emulator, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    emu.read_memory(addr, &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn locked_updates_from_four_vcpus_add_up_exactly_on_both_tiers() {
    const VCPUS: usize = 4;
    const ROUNDS: u64 = 100_000;
    const START: u64 = DATA + 0x200;
    /// Every 16th round also adds to a dword straddling a cache line (a split lock).
    const SPLIT: u64 = DATA + 0x3e;
    let code = assemble(CODE, |a| {
        let mut top = a.create_label();
        let mut retry = a.create_label();
        let mut no_split = a.create_label();
        let mut done = a.create_label();
        let mut start = a.create_label();
        // Start together: count in, wait for everyone (threads start at different times).
        a.lock().inc(qword_ptr(START))?;
        a.set_label(&mut start)?;
        a.pause()?;
        a.cmp(qword_ptr(START), VCPUS as i32)?;
        a.jne(start)?;
        a.mov(rcx, ROUNDS)?;
        a.set_label(&mut top)?;
        // LOCK XADD.
        a.mov(rbx, 1u64)?;
        a.lock().xadd(qword_ptr(DATA), rbx)?;
        // A CMPXCHG loop.
        a.set_label(&mut retry)?;
        a.mov(rax, qword_ptr(DATA + 8))?;
        a.lea(rdx, qword_ptr(rax + 1))?;
        a.lock().cmpxchg(qword_ptr(DATA + 8), rdx)?;
        a.jnz(retry)?;
        // LOCK INC of a byte inside a shared word, and XCHG-based toggling.
        a.lock().inc(byte_ptr(DATA + 0x11))?;
        a.test(ecx, 15u32)?;
        a.jnz(no_split)?;
        a.lock().add(dword_ptr(SPLIT), 1)?;
        a.set_label(&mut no_split)?;
        a.dec(rcx)?;
        a.jnz(top)?;
        a.set_label(&mut done)?;
        a.nop()
    });
    // The `done` label is the last instruction: its address is the code's end - 1.
    let end = CODE + code.len() as u64 - 1;
    for jit in tiers() {
        let mut all = run_all(vcpus(VCPUS, jit, &code, &[]), end, |_, _| {});
        let emu = &mut all[0];
        let total = VCPUS as u64 * ROUNDS;
        assert_eq!(read_u64(emu, DATA), total, "LOCK XADD ({jit:?})");
        assert_eq!(read_u64(emu, DATA + 8), total, "CMPXCHG loop ({jit:?})");
        let mut b = [0u8; 8];
        emu.read_memory(DATA + 0x10, &mut b).unwrap();
        assert_eq!(b[1], total as u8, "LOCK INC byte ({jit:?})");
        assert_eq!(b[0], 0, "the neighbouring bytes are untouched");
        let mut split = [0u8; 4];
        emu.read_memory(SPLIT, &mut split).unwrap();
        assert_eq!(
            u32::from_le_bytes(split) as u64,
            VCPUS as u64 * ROUNDS / 16,
            "split lock ({jit:?})"
        );
    }
}

#[test]
fn a_vcpu_runs_the_code_another_vcpu_patched_on_both_tiers() {
    const FLAG: u64 = DATA + 0x100;
    // vCPU 0 calls `f` (on its own page, which only it runs) until it returns 2, telling
    // vCPU 1 once it has run it; vCPU 1 waits for that, then rewrites f's immediate.
    let f = assemble(PATCHED, |a| {
        a.mov(eax, 1u32)?;
        a.ret()
    });
    let code = assemble(CODE, |a| {
        let mut runner = a.create_label();
        let mut wait = a.create_label();
        let mut done = a.create_label();
        a.cmp(rdi, 0)?;
        a.je(runner)?;
        // The patcher.
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(qword_ptr(FLAG), 0)?;
        a.je(wait)?;
        a.mov(byte_ptr(PATCHED + 1), 2u32)?;
        a.jmp(done)?;
        // The runner.
        a.set_label(&mut runner)?;
        a.mov(rax, PATCHED)?;
        a.call(rax)?;
        a.mov(qword_ptr(FLAG), 1i32)?;
        a.cmp(eax, 2)?;
        a.jne(runner)?;
        a.set_label(&mut done)?;
        a.nop()
    });
    let end = CODE + code.len() as u64 - 1;
    for jit in tiers() {
        let all = vcpus(2, jit, &code, &f);
        let mut all = run_all(all, end, |i, emu| {
            emu.set_reg(Register::RDI, i as u64).unwrap();
        });
        assert_eq!(all[0].reg(Register::RAX).unwrap(), 2, "{jit:?}");
        assert_eq!(
            read_u64(&mut all[1], PATCHED) & 0xff_ffff_ffff,
            0x02_b8,
            "{jit:?}"
        );
    }
}
