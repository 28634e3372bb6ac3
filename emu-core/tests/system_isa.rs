//! Bare-metal guest programs for the system ISA, each starting from a known state,
//! exercising one feature and reporting through registers (a debug port arrives with the
//! platform bus). Run with `cargo test --release --workspace --test system_isa`.

use emu_core::{Emulator, Exception, Register, RunOptions, StopReason};
use iced_x86::code_asm::*;

const CODE: u64 = 0x1000;
const DATA: u64 = 0x8000;

fn machine(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Emulator {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    let code = a.assemble(CODE).unwrap();
    let mut emu = Emulator::new();
    emu.map_memory(0, 0x10_0000).unwrap();
    emu.write_memory(CODE, &code).unwrap();
    emu.set_reg(Register::RSP, 0x8_0000).unwrap();
    emu
}

/// A guest program body, assembled after the test's setup.
type Program = fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn run(emu: &mut Emulator) -> StopReason {
    emu.run(
        CODE,
        &RunOptions {
            max_instructions: Some(100_000),
            ..Default::default()
        },
    )
}

fn reg(emu: &Emulator, r: Register) -> u64 {
    emu.reg(r).unwrap()
}

#[test]
fn msrs_written_with_wrmsr_read_back_with_rdmsr() {
    let mut emu = machine(|a| {
        // LSTAR <- 0xffffffff81000000
        a.mov(ecx, 0xc000_0082u32)?;
        a.mov(eax, 0x8100_0000u32)?;
        a.mov(edx, 0xffff_ffffu32)?;
        a.wrmsr()?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.rdmsr()?;
        a.mov(r8, rax)?;
        a.mov(r9, rdx)?;
        // GS_BASE through the MSR, then SWAPGS exchanges it with KERNEL_GS_BASE.
        a.mov(ecx, 0xc000_0101u32)?;
        a.mov(eax, 0x1234_5000u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.swapgs()?;
        a.mov(ecx, 0xc000_0102u32)?;
        a.rdmsr()?;
        a.mov(r10, rax)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R8), 0x8100_0000);
    assert_eq!(reg(&emu, Register::R9), 0xffff_ffff);
    assert_eq!(
        reg(&emu, Register::R10),
        0x1234_5000,
        "SWAPGS moved GS_BASE to KERNEL_GS_BASE"
    );
    assert_eq!(
        reg(&emu, Register::GS),
        0,
        "and the old kernel GS base (0) to GS"
    );
}

#[test]
fn unknown_msr_and_bad_values_raise_general_protection() {
    for (msr, lo, hi) in [
        (0x1234_5678u32, 0u32, 0u32),      // no such MSR
        (0xc000_0082, 0, 0x8000_0000),     // LSTAR not canonical
        (0xc000_0080, 1 << 1, 0),          // EFER reserved bit
        (0x277, 0x0202_0202, 0x0202_0202), // PAT with a reserved memory type
    ] {
        let mut emu = machine(|a| {
            a.mov(ecx, msr)?;
            a.mov(eax, lo)?;
            a.mov(edx, hi)?;
            a.wrmsr()?;
            a.hlt()
        });
        let stop = run(&mut emu);
        assert!(
            matches!(
                stop,
                StopReason::Exception {
                    exception: Exception::GeneralProtection(0),
                    ..
                }
            ),
            "WRMSR {msr:#x} <- {hi:#x}:{lo:#x}: {stop:?}"
        );
    }
}

#[test]
fn control_registers_validate_what_is_written() {
    // PG without PE is #GP(0); the faulting MOV leaves CR0 as it was.
    let mut emu = machine(|a| {
        a.mov(rax, cr0)?;
        a.mov(rbx, rax)?;
        a.and(eax, !1u32 as i32)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, rax)?;
        a.hlt()
    });
    let stop = run(&mut emu);
    assert!(matches!(
        stop,
        StopReason::Exception {
            exception: Exception::GeneralProtection(0),
            ..
        }
    ));
    assert_eq!(emu.cpu().sys.cr0, reg(&emu, Register::RBX));
    // CR8 takes four bits; CR2 anything; an unsupported CR4 bit (VMXE, 13) faults.
    let mut emu = machine(|a| {
        a.mov(eax, 0xau32)?;
        a.mov(cr8, rax)?;
        a.mov(rbx, cr8)?;
        a.mov(rcx, 0xdead_beefu64)?;
        a.mov(cr2, rcx)?;
        a.mov(rdx, cr2)?;
        a.mov(eax, 1u32 << 13)?;
        a.mov(cr4, rax)?;
        a.hlt()
    });
    let stop = run(&mut emu);
    assert!(matches!(
        stop,
        StopReason::Exception {
            exception: Exception::GeneralProtection(0),
            ..
        }
    ));
    assert_eq!(reg(&emu, Register::RBX), 0xa);
    assert_eq!(reg(&emu, Register::RDX), 0xdead_beef);
}

#[test]
fn descriptor_table_registers_round_trip() {
    let mut emu = machine(|a| {
        a.mov(rax, DATA)?;
        a.mov(word_ptr(rax), 0x0fffu32)?;
        a.mov(rbx, 0xffff_8000_0010_0000u64)?;
        a.mov(qword_ptr(rax + 2), rbx)?;
        a.lgdt(ptr(rax))?;
        a.mov(word_ptr(rax + 16), 0x01ffu32)?;
        a.mov(qword_ptr(rax + 18), rbx)?;
        a.lidt(ptr(rax + 16))?;
        a.sgdt(ptr(rax + 32))?;
        a.sidt(ptr(rax + 48))?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    let mut out = [0u8; 26];
    emu.read_memory(DATA + 32, &mut out).unwrap();
    assert_eq!(u16::from_le_bytes([out[0], out[1]]), 0x0fff);
    assert_eq!(
        u64::from_le_bytes(out[2..10].try_into().unwrap()),
        0xffff_8000_0010_0000
    );
    assert_eq!(u16::from_le_bytes([out[16], out[17]]), 0x01ff);
    assert_eq!(emu.cpu().sys.idtr.base, 0xffff_8000_0010_0000);
}

#[test]
fn non_canonical_table_base_faults() {
    let mut emu = machine(|a| {
        a.mov(rax, DATA)?;
        a.mov(rbx, 0x0000_8000_0000_0000u64)?;
        a.mov(qword_ptr(rax + 2), rbx)?;
        a.lidt(ptr(rax))?;
        a.hlt()
    });
    let stop = run(&mut emu);
    assert!(matches!(
        stop,
        StopReason::Exception {
            exception: Exception::GeneralProtection(0),
            ..
        }
    ));
}

#[test]
fn privileged_instructions_fault_above_cpl0_and_cli_follows_iopl() {
    let programs: [(&str, Program); 6] = [
        ("hlt", |a| a.hlt()),
        ("rdmsr", |a| a.rdmsr()),
        ("mov cr3", |a| a.mov(rax, cr3)),
        ("swapgs", |a| a.swapgs()),
        ("invlpg", |a| a.invlpg(ptr(rax))),
        ("cli", |a| a.cli()),
    ];
    for (name, body) in programs {
        let mut emu = machine(body);
        emu.cpu_mut().sys.cpl = 3;
        let stop = run(&mut emu);
        assert_eq!(
            stop,
            StopReason::Exception {
                exception: Exception::GeneralProtection(0),
                rip: CODE
            },
            "{name} at CPL 3"
        );
    }
    // With IOPL 3, CLI and STI are allowed at CPL 3.
    let mut emu = machine(|a| {
        a.cli()?;
        a.pushfq()?;
        a.pop(rbx)?;
        a.sti()?;
        a.pushfq()?;
        a.pop(rcx)?;
        a.int3()
    });
    emu.cpu_mut().sys.cpl = 3;
    emu.cpu_mut().set_rflags(3 << 12 | 1 << 9);
    assert!(matches!(
        run(&mut emu),
        StopReason::SoftwareInterrupt { vector: 3, .. }
    ));
    assert_eq!(reg(&emu, Register::RBX) & (1 << 9), 0, "CLI cleared IF");
    assert_ne!(reg(&emu, Register::RCX) & (1 << 9), 0, "STI set IF");
}

#[test]
fn debug_registers_hold_addresses_and_fixed_bits() {
    let mut emu = machine(|a| {
        a.mov(rax, 0x1234_5678u64)?;
        a.mov(dr0, rax)?;
        a.mov(rbx, dr0)?;
        a.xor(eax, eax)?;
        a.mov(dr7, rax)?;
        a.mov(rcx, dr7)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::RBX), 0x1234_5678);
    assert_eq!(reg(&emu, Register::RCX), 0x400, "DR7 bit 10 reads as one");
}

#[test]
fn tsc_msr_writes_move_rdtsc() {
    let mut emu = machine(|a| {
        a.mov(ecx, 0x10u32)?;
        a.xor(eax, eax)?;
        a.mov(edx, 0x100u32)?; // TSC <- 0x100_0000_0000
        a.wrmsr()?;
        a.rdtsc()?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    let tsc = reg(&emu, Register::RDX) << 32 | reg(&emu, Register::RAX);
    assert!(
        (0x100_0000_0000..0x100_0000_0000 + 10_000_000_000).contains(&tsc),
        "{tsc:#x}"
    );
}
