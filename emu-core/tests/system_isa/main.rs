//! Bare-metal guest programs for the system ISA, each starting from a known state,
//! exercising one feature and reporting through registers or the debug port (0xE9,
//! `common::attach_debug_port`). Each feature area has its own module. Run with `cargo test --release --workspace --test system_isa`.

use emu_core::{Emulator, Exception, Register, RunOptions, StopReason};
use iced_x86::code_asm::*;

mod apic;
#[path = "../common/mod.rs"]
mod common;
mod firmware;
mod modes;
mod xsave;
use common::{machine, reg, CODE};
const DATA: u64 = 0x8000;

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

#[test]
fn the_tier_under_test_is_the_one_this_target_names() {
    let mut emu = machine(|a| {
        a.mov(ecx, 100u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(rax, rcx)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::RAX), 5050);
    let compiled = emu.jit_stats().map_or(0, |s| s.compiled);
    assert_eq!(
        compiled > 0,
        env!("CARGO_CRATE_NAME").ends_with("_compiled"),
        "{compiled} blocks compiled"
    );
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

/// A 64-bit machine with descriptor tables in memory, for delivery tests.
mod delivery {
    use super::*;
    use emu_core::InterruptDelivery;

    pub const GDT: u64 = 0x5000;
    pub const IDT: u64 = 0x6000;
    pub const TSS: u64 = 0x7000;
    pub const RESULTS: u64 = 0x7800;
    pub const RSP0: u64 = 0x9_0000;
    pub const IST1: u64 = 0xa_0000;
    pub const USER_STACK: u64 = 0x8_8000;
    /// Handlers, 0x40 bytes per vector: 0x1_0000..0x1_4000.
    pub const HANDLERS: u64 = 0x1_0000;
    pub const KERNEL_CS: u16 = 0x08;
    pub const KERNEL_DS: u16 = 0x10;
    pub const USER_DS: u16 = 0x1b;
    pub const USER_CS: u16 = 0x23;
    pub const TSS_SEL: u16 = 0x28;

    /// Interrupt-gate and trap-gate types.
    pub const INTERRUPT: u8 = 0xe;
    pub const TRAP: u8 = 0xf;

    /// Address of the handler for `vector`.
    pub fn handler(vector: u8) -> u64 {
        HANDLERS + vector as u64 * 0x40
    }

    fn assemble_at(
        ip: u64,
        build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        build(&mut a).unwrap();
        a.assemble(ip).unwrap()
    }

    /// Writes a 16-byte gate for `vector`.
    pub fn set_gate(emu: &mut Emulator, vector: u8, kind: u8, dpl: u8, ist: u8, present: bool) {
        let target = handler(vector);
        let lo = (target & 0xffff)
            | (KERNEL_CS as u64) << 16
            | (ist as u64) << 32
            | (kind as u64) << 40
            | (dpl as u64) << 45
            | (present as u64) << 47
            | (target & 0xffff_0000) << 32;
        let hi = target >> 32;
        let mut bytes = lo.to_le_bytes().to_vec();
        bytes.extend_from_slice(&hi.to_le_bytes());
        emu.write_memory(IDT + vector as u64 * 16, &bytes).unwrap();
    }

    /// Places handler code for `vector`.
    pub fn set_handler(
        emu: &mut Emulator,
        vector: u8,
        build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) {
        let code = assemble_at(handler(vector), build);
        assert!(code.len() <= 0x40, "handler too long");
        emu.write_memory(handler(vector), &code).unwrap();
    }

    /// A machine whose `main` program first loads GDTR, IDTR and TR, with guest delivery.
    pub fn machine(main: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Emulator {
        let mut emu = super::machine(|a| {
            a.mov(rax, 0x7f00u64)?;
            a.lgdt(ptr(rax))?;
            a.lidt(ptr(rax + 16))?;
            a.mov(ax, TSS_SEL as u32)?;
            a.ltr(ax)?;
            main(a)
        });
        let gdt: [u64; 7] = [
            0,
            0x00af_9a00_0000_ffff, // kernel code
            0x00cf_9200_0000_ffff, // kernel data
            0x00cf_f200_0000_ffff, // user data
            0x00af_fa00_0000_ffff, // user code
            // 64-bit available TSS at TSS, limit 0x67.
            0x0000_8900_0000_0067 | (TSS & 0xff_ffff) << 16 | (TSS & 0xff00_0000) << 32,
            TSS >> 32,
        ];
        let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        emu.write_memory(GDT, &gdt_bytes).unwrap();
        // Pseudo-descriptors at 0x7f00 (GDT) and 0x7f10 (IDT).
        let mut pseudo = vec![0u8; 32];
        pseudo[0..2].copy_from_slice(&(gdt_bytes.len() as u16 - 1).to_le_bytes());
        pseudo[2..10].copy_from_slice(&GDT.to_le_bytes());
        pseudo[16..18].copy_from_slice(&(256u16 * 16 - 1).to_le_bytes());
        pseudo[18..26].copy_from_slice(&IDT.to_le_bytes());
        emu.write_memory(0x7f00, &pseudo).unwrap();
        // TSS: RSP0 at offset 4, IST1 at 0x24.
        emu.write_memory(TSS + 4, &RSP0.to_le_bytes()).unwrap();
        emu.write_memory(TSS + 0x24, &IST1.to_le_bytes()).unwrap();
        let cpu = emu.cpu_mut();
        cpu.seg_sel[1] = KERNEL_CS;
        cpu.seg_sel[2] = KERNEL_DS;
        emu.set_interrupt_delivery(InterruptDelivery::Guest);
        emu
    }

    /// Guest code that IRETQs to user mode (CPL 3, IF set) at `rip` on `USER_STACK`.
    pub fn enter_user_mode(a: &mut CodeAssembler, rip: u64) -> Result<(), IcedError> {
        a.push(USER_DS as i32)?;
        a.mov(rax, USER_STACK)?;
        a.push(rax)?;
        a.push(0x202i32)?;
        a.push(USER_CS as i32)?;
        a.mov(rax, rip)?;
        a.push(rax)?;
        a.iretq()
    }

    pub fn read_u64(emu: &mut Emulator, addr: u64) -> u64 {
        let mut b = [0u8; 8];
        emu.read_memory(addr, &mut b).unwrap();
        u64::from_le_bytes(b)
    }
}

#[test]
fn int_n_goes_through_an_interrupt_gate_and_iretq_returns() {
    use delivery::*;
    let mut emu = machine(|a| {
        let mut after = a.create_label();
        a.sti()?;
        a.mov(rbx, rsp)?;
        a.lea(r14, ptr(after))?;
        a.int(0x40)?;
        a.set_label(&mut after)?;
        a.mov(r15, 1u64)?; // after IRETQ
        a.cli()?;
        a.hlt()
    });
    set_gate(&mut emu, 0x40, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x40, |a| {
        // Copy the frame: RIP, CS, RFLAGS, RSP, SS.
        a.mov(rax, RESULTS)?;
        for k in 0..5 {
            a.mov(rcx, qword_ptr(rsp + 8 * k))?;
            a.mov(qword_ptr(rax + 8 * k), rcx)?;
        }
        a.pushfq()?;
        a.pop(rcx)?;
        a.mov(qword_ptr(rax + 40), rcx)?;
        a.iretq()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R15), 1, "execution resumed after INT");
    let frame: Vec<u64> = (0..6)
        .map(|k| read_u64(&mut emu, RESULTS + 8 * k))
        .collect();
    let rsp_before = reg(&emu, Register::RBX);
    assert_eq!(
        frame[0],
        reg(&emu, Register::R14),
        "return RIP is the instruction after INT"
    );
    assert_eq!(frame[1], KERNEL_CS as u64);
    assert_ne!(frame[2] & (1 << 9), 0, "IF was set before");
    assert_eq!(frame[3], rsp_before);
    assert_eq!(frame[4], KERNEL_DS as u64);
    assert_eq!(frame[5] & (1 << 9), 0, "an interrupt gate clears IF");
    assert_eq!(reg(&emu, Register::RSP), rsp_before, "IRETQ restored RSP");
}

#[test]
fn faults_push_their_error_code_and_the_faulting_rip() {
    use delivery::*;
    let mut emu = machine(|a| {
        let mut faulting = a.create_label();
        a.lea(r14, ptr(faulting))?;
        a.mov(ecx, 0x1234u32)?;
        a.set_label(&mut faulting)?;
        a.rdmsr()?; // #GP(0): no such MSR
        a.mov(r15, 1u64)?;
        a.hlt()
    });
    set_gate(&mut emu, 13, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 13, |a| {
        a.pop(r12)?; // error code
        a.mov(r13, qword_ptr(rsp))?; // faulting RIP
        a.add(qword_ptr(rsp), 2)?; // skip the 2-byte RDMSR
        a.iretq()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R12), 0, "#GP(0)");
    assert_eq!(
        reg(&emu, Register::R13),
        reg(&emu, Register::R14),
        "RIP of the faulting instruction"
    );
    assert_eq!(reg(&emu, Register::R15), 1);
}

#[test]
fn user_code_enters_the_kernel_on_the_tss_stack_and_returns_with_iretq() {
    use delivery::*;
    // Kernel: build an IRETQ frame to CPL 3 and go.
    let mut emu = machine(|a| enter_user_mode(a, 0x2000));
    // User code at 0x2000: INT 0x80 (DPL 3 gate) works; INT 0x81 (DPL 0 gate) is #GP.
    let user = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(r8, 0x11u64).unwrap();
        a.int(0x80).unwrap();
        a.mov(r9, rsp).unwrap();
        a.int(0x81).unwrap();
        a.assemble(0x2000).unwrap()
    };
    emu.write_memory(0x2000, &user).unwrap();
    set_gate(&mut emu, 0x80, TRAP, 3, 0, true);
    set_gate(&mut emu, 0x81, INTERRUPT, 0, 0, true);
    set_gate(&mut emu, 13, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x80, |a| {
        a.mov(r10, rsp)?; // on RSP0
        a.mov(r11, qword_ptr(rsp + 8))?; // saved CS
        a.mov(r12, qword_ptr(rsp + 24))?; // saved RSP
        a.iretq()
    });
    set_handler(&mut emu, 13, |a| {
        a.pop(r13)?; // error code
        a.mov(r14, qword_ptr(rsp + 8))?; // saved CS
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R8), 0x11);
    assert_eq!(
        reg(&emu, Register::R10),
        RSP0 - 40,
        "frame of five quadwords on TSS.RSP0"
    );
    assert_eq!(reg(&emu, Register::R11), USER_CS as u64);
    assert_eq!(reg(&emu, Register::R12), USER_STACK);
    assert_eq!(
        reg(&emu, Register::R9),
        USER_STACK,
        "IRETQ restored the user stack"
    );
    assert_eq!(
        reg(&emu, Register::R13),
        0x81 * 8 + 2,
        "#GP names the IDT entry"
    );
    assert_eq!(
        reg(&emu, Register::R14),
        USER_CS as u64,
        "raised from user mode"
    );
    assert_eq!(emu.cpu().sys.cpl, 0);
}

#[test]
fn a_fault_while_delivering_a_fault_is_a_double_fault_on_its_ist_stack() {
    use delivery::*;
    let mut emu = machine(|a| {
        a.xor(ecx, ecx)?;
        a.div(ecx)?; // #DE; its gate is not present -> #NP -> #DF
        a.hlt()
    });
    set_gate(&mut emu, 0, INTERRUPT, 0, 0, false);
    set_gate(&mut emu, 11, INTERRUPT, 0, 0, false);
    set_gate(&mut emu, 8, INTERRUPT, 0, 1, true);
    set_handler(&mut emu, 8, |a| {
        a.mov(r10, rsp)?;
        a.mov(r11, qword_ptr(rsp))?; // error code (always 0)
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(
        reg(&emu, Register::R10),
        IST1 - 48,
        "#DF frame with error code on IST1"
    );
    assert_eq!(reg(&emu, Register::R11), 0);
}

#[test]
fn a_fault_while_delivering_a_double_fault_shuts_down() {
    use delivery::*;
    let mut emu = machine(|a| {
        a.ud2()?; // #UD; no gates at all: #NP, #NP again -> #DF -> #NP -> triple fault
        a.hlt()
    });
    let stop = run(&mut emu);
    assert!(matches!(stop, StopReason::TripleFault { .. }), "{stop:?}");
}

#[test]
fn ltr_marks_the_tss_busy_and_refuses_a_busy_one() {
    use delivery::*;
    let mut emu = machine(|a| {
        a.str(r8w)?;
        a.mov(ax, TSS_SEL as u32)?;
        a.ltr(ax)?; // now busy: #GP(0x28)
        a.hlt()
    });
    let stop = run(&mut emu);
    assert!(
        matches!(stop, StopReason::TripleFault { .. }),
        "no #GP gate, so the #GP escalates: {stop:?}"
    );
    assert_eq!(reg(&emu, Register::R8) & 0xffff, TSS_SEL as u64);
    let mut desc = [0u8; 8];
    emu.read_memory(GDT + TSS_SEL as u64, &mut desc).unwrap();
    assert_eq!(desc[5] & 0xf, 0xb, "type 11: busy TSS");
    let mut emu = delivery::machine(|a| {
        a.mov(ax, TSS_SEL as u32)?;
        a.ltr(ax)
    });
    emu.set_interrupt_delivery(emu_core::InterruptDelivery::Embedder);
    let stop = run(&mut emu);
    assert_eq!(
        stop,
        StopReason::Exception {
            exception: Exception::GeneralProtection(TSS_SEL as u32),
            rip: stop_rip(&stop)
        }
    );
}

fn stop_rip(stop: &StopReason) -> u64 {
    match stop {
        StopReason::Exception { rip, .. } => *rip,
        _ => 0,
    }
}

#[test]
fn syscall_enters_the_kernel_and_sysret_returns_to_user_mode() {
    use delivery::*;
    const LSTAR: u64 = 0x4000;
    let mut emu = machine(|a| {
        // STAR: SYSCALL CS = 0x08 (SS 0x10); SYSRET base 0x10 (SS 0x1b, CS 0x23).
        a.mov(ecx, 0xc000_0081u32)?;
        a.xor(eax, eax)?;
        a.mov(edx, 0x0010_0008u32)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0082u32)?;
        a.mov(eax, LSTAR as u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0084u32)?; // SFMASK: clear IF and TF
        a.mov(eax, 0x300u32)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0080u32)?; // EFER.SCE
        a.rdmsr()?;
        a.or(eax, 1)?;
        a.wrmsr()?;
        // Into user mode at 0x2000 with IF set.
        a.mov(rcx, 0x2000u64)?;
        a.mov(r11d, 0x202u32)?;
        a.sysretq()
    });
    let user = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(r8, rsp).unwrap();
        a.syscall().unwrap();
        a.mov(r9, 1u64).unwrap(); // back from the kernel
        a.hlt().unwrap(); // privileged: #GP at CPL 3
        a.assemble(0x2000).unwrap()
    };
    emu.write_memory(0x2000, &user).unwrap();
    let kernel = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(r12, rcx).unwrap(); // return address
        a.mov(r13, r11).unwrap(); // user RFLAGS
        a.pushfq().unwrap();
        a.pop(r14).unwrap(); // kernel RFLAGS
        a.sysretq().unwrap();
        a.assemble(LSTAR).unwrap()
    };
    emu.write_memory(LSTAR, &kernel).unwrap();
    emu.set_interrupt_delivery(emu_core::InterruptDelivery::Embedder);
    let stop = run(&mut emu);
    assert!(
        matches!(
            stop,
            StopReason::Exception {
                exception: Exception::GeneralProtection(0),
                ..
            }
        ),
        "the user-mode HLT faults: {stop:?}"
    );
    assert_eq!(reg(&emu, Register::R9), 1);
    assert_eq!(
        reg(&emu, Register::R12),
        0x2000 + 3 + 2,
        "RCX holds the return address"
    );
    assert_ne!(
        reg(&emu, Register::R13) & 0x200,
        0,
        "R11 holds the user RFLAGS with IF"
    );
    assert_eq!(
        reg(&emu, Register::R14) & 0x300,
        0,
        "SFMASK cleared IF and TF in the kernel"
    );
    assert_eq!(emu.cpu().sys.cpl, 3);
    assert_eq!(emu.cpu().seg_sel[1], 0x23);
    assert_eq!(emu.cpu().seg_sel[2], 0x1b);
}

#[test]
fn syscall_without_efer_sce_is_reported_bare_and_invalid_in_a_guest() {
    let mut emu = machine(|a| {
        a.syscall()?;
        a.hlt()
    });
    assert!(matches!(run(&mut emu), StopReason::Syscall { .. }));
    let mut emu = delivery::machine(|a| {
        a.syscall()?;
        a.hlt()
    });
    emu.set_interrupt_delivery(emu_core::InterruptDelivery::Guest);
    delivery::set_gate(&mut emu, 6, delivery::INTERRUPT, 0, 0, true);
    delivery::set_handler(&mut emu, 6, |a| {
        a.mov(r15, 6u64)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R15), 6, "#UD was delivered");
}

/// Four-level page tables built by the host: the first 2 MiB identity-mapped with one
/// large user page, and 4 KiB pages at `HIGH` for the tests to fill in.
mod tables {
    use super::*;

    pub const PML4: u64 = 0x2_0000;
    const PDPT_LOW: u64 = 0x2_1000;
    const PD_LOW: u64 = 0x2_2000;
    const PDPT_HIGH: u64 = 0x2_4000;
    const PD_HIGH: u64 = 0x2_5000;
    /// The page table for `HIGH..HIGH + 2 MiB`.
    pub const PT_HIGH: u64 = 0x2_6000;
    /// Base of the 4 KiB-mapped region (PML4 slot 256).
    pub const HIGH: u64 = 0xffff_8000_0000_0000;
    pub const P: u64 = 1;
    pub const RW: u64 = 2;
    pub const US: u64 = 4;
    pub const ACCESSED: u64 = 1 << 5;
    pub const DIRTY: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const NX: u64 = 1 << 63;

    fn put(emu: &mut Emulator, addr: u64, value: u64) {
        emu.write_memory(addr, &value.to_le_bytes()).unwrap();
    }

    pub fn build(emu: &mut Emulator) {
        put(emu, PML4, PDPT_LOW | P | RW | US);
        put(emu, PML4 + 256 * 8, PDPT_HIGH | P | RW | US);
        put(emu, PDPT_LOW, PD_LOW | P | RW | US);
        put(emu, PD_LOW, P | RW | US | PS);
        put(emu, PDPT_HIGH, PD_HIGH | P | RW | US);
        put(emu, PD_HIGH, PT_HIGH | P | RW | US);
    }

    /// Maps the 4 KiB page `HIGH + index * 4 KiB` to `entry` (physical address | flags).
    pub fn map(emu: &mut Emulator, index: u64, entry: u64) {
        put(emu, PT_HIGH + index * 8, entry);
    }

    /// Guest code that turns 4-level paging on with the tables at `PML4`.
    pub fn enable(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.mov(rax, cr4)?;
        a.or(eax, 0x20)?; // PAE
        a.mov(cr4, rax)?;
        a.mov(eax, PML4 as u32)?;
        a.mov(cr3, rax)?;
        a.mov(rax, cr0)?;
        a.bts(rax, 31)?; // PG
        a.mov(cr0, rax)
    }
}

#[test]
fn paging_translates_sets_accessed_and_dirty_and_faults_with_cr2() {
    use delivery::*;
    use tables::*;
    let mut emu = machine(|a| {
        tables::enable(a)?;
        a.mov(rbx, HIGH)?;
        a.mov(qword_ptr(rbx), 0x1234)?;
        a.mov(rcx, qword_ptr(rbx))?;
        a.mov(qword_ptr(rbx + 0x1000), 1)?; // not present: #PF
        a.hlt()
    });
    tables::build(&mut emu);
    tables::map(&mut emu, 0, 0x3_0000 | P | RW);
    set_gate(&mut emu, 14, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 14, |a| {
        a.mov(r12, cr2)?;
        a.pop(r13)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::RCX), 0x1234);
    assert_eq!(
        read_u64(&mut emu, 0x3_0000),
        0x1234,
        "the store reached the mapped frame"
    );
    assert_eq!(
        reg(&emu, Register::R12),
        HIGH + 0x1000,
        "CR2 holds the faulting address"
    );
    assert_eq!(
        reg(&emu, Register::R13),
        0b10,
        "error code: write to a non-present page"
    );
    let pte = read_u64(&mut emu, PT_HIGH);
    assert_eq!(pte & (ACCESSED | DIRTY), ACCESSED | DIRTY);
}

#[test]
fn no_execute_pages_fault_on_fetch_with_the_instruction_fetch_bit() {
    use delivery::*;
    use tables::*;
    let mut emu = machine(|a| {
        a.mov(ecx, 0xc000_0080u32)?; // EFER.NXE
        a.rdmsr()?;
        a.bts(eax, 11)?;
        a.wrmsr()?;
        tables::enable(a)?;
        a.mov(rax, HIGH + 0x2000)?;
        a.jmp(rax)
    });
    tables::build(&mut emu);
    tables::map(&mut emu, 2, 0x3_1000 | P | RW | NX);
    emu.write_memory(0x3_1000, &[0xf4]).unwrap(); // hlt, never reached
    set_gate(&mut emu, 14, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 14, |a| {
        a.mov(r12, cr2)?;
        a.pop(r13)?;
        a.mov(r14, qword_ptr(rsp))?; // the RIP that faulted
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R12), HIGH + 0x2000);
    assert_eq!(
        reg(&emu, Register::R13),
        0b1_0001,
        "present page, instruction fetch"
    );
    assert_eq!(reg(&emu, Register::R14), HIGH + 0x2000);
}

#[test]
fn user_mode_cannot_touch_supervisor_pages() {
    use delivery::*;
    use tables::*;
    let mut emu = machine(|a| {
        tables::enable(a)?;
        enter_user_mode(a, 0x2000)
    });
    let user = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(rbx, HIGH).unwrap();
        a.mov(rcx, qword_ptr(rbx)).unwrap(); // supervisor page: #PF
        a.assemble(0x2000).unwrap()
    };
    emu.write_memory(0x2000, &user).unwrap();
    tables::build(&mut emu);
    tables::map(&mut emu, 0, 0x3_0000 | P | RW);
    set_gate(&mut emu, 14, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 14, |a| {
        a.mov(r12, cr2)?;
        a.pop(r13)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R12), HIGH);
    assert_eq!(
        reg(&emu, Register::R13),
        0b101,
        "present page, read, user mode"
    );
}

#[test]
fn code_rewritten_through_another_mapping_is_retranslated() {
    use delivery::*;
    use tables::*;
    // The frame at 0x32000 is mapped twice: executable at HIGH + 0x3000, writable at
    // HIGH + 0x4000. The loop calls into the first and patches it through the second.
    let mut emu = machine(|a| {
        let mut top = a.create_label();
        tables::enable(a)?;
        a.mov(rsi, HIGH + 0x3000)?;
        a.mov(rdi, HIGH + 0x4000)?;
        a.xor(r8d, r8d)?;
        a.mov(ecx, 1u32)?;
        a.set_label(&mut top)?;
        a.mov(byte_ptr(rdi + 3), cl)?; // the imm8 of `add r8, imm8`
        a.call(rsi)?;
        a.inc(ecx)?;
        a.cmp(ecx, 11)?;
        a.jne(top)?;
        a.hlt()
    });
    tables::build(&mut emu);
    tables::map(&mut emu, 3, 0x3_2000 | P);
    tables::map(&mut emu, 4, 0x3_2000 | P | RW);
    emu.write_memory(0x3_2000, &[0x49, 0x83, 0xc0, 0x7f, 0xc3])
        .unwrap(); // add r8, imm8; ret
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(
        reg(&emu, Register::R8),
        55,
        "each call ran the freshly patched immediate"
    );
}

#[test]
fn a_code_page_pointed_at_another_frame_runs_the_new_frame() {
    use tables::*;
    // HIGH + 0x3000 first maps frame 0x32000, whose loop adds 1 per round; then the
    // guest points that page at frame 0x33000 (the same loop adding 100) and INVLPGs it.
    // Compiled blocks link to targets on their own page without looking at the TLB
    // again; the old frame's blocks must not be reached through the new mapping.
    let mut emu = machine(|a| {
        tables::enable(a)?;
        a.mov(rsi, HIGH + 0x3000)?;
        a.xor(r8d, r8d)?;
        a.mov(ecx, 50u32)?;
        a.call(rsi)?;
        a.mov(rax, PT_HIGH + 3 * 8)?;
        a.mov(rbx, 0x3_3000 | P)?;
        a.mov(qword_ptr(rax), rbx)?;
        a.invlpg(byte_ptr(rsi))?;
        a.mov(ecx, 50u32)?;
        a.call(rsi)?;
        a.hlt()
    });
    tables::build(&mut emu);
    tables::map(&mut emu, 3, 0x3_2000 | P);
    // top: add r8, imm8; dec ecx; jnz top; ret
    let frame = |imm: u8| [0x49, 0x83, 0xc0, imm, 0xff, 0xc9, 0x75, 0xf8, 0xc3];
    emu.write_memory(0x3_2000, &frame(1)).unwrap();
    emu.write_memory(0x3_3000, &frame(100)).unwrap();
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R8), 50 + 5000);
}

/// A device for port and MMIO tests: a byte log of writes, reads answer a counter.
#[derive(Default)]
struct Recorder {
    written: Vec<(u64, Vec<u8>)>,
    reads: u8,
}

impl emu_mmu::BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads = self.reads.wrapping_add(1);
        for (k, b) in data.iter_mut().enumerate() {
            *b = (offset as u8)
                .wrapping_add(self.reads)
                .wrapping_add(k as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.written.push((offset, data.to_vec()));
    }
}

#[test]
fn port_io_reaches_devices_and_unassigned_ports_read_all_ones() {
    use std::sync::{Arc, Mutex};
    let dev = Arc::new(Mutex::new(Recorder::default()));
    let mut emu = machine(|a| {
        a.mov(al, 0x41u32)?;
        a.out(0xf4, al)?; // port 0xf4 (the debug-exit port's usual place)
        a.mov(dx, 0xf5u32)?;
        a.mov(eax, 0x1122_3344u32)?;
        a.out(dx, eax)?;
        a.in_(al, 0xf4)?;
        a.mov(bl, al)?;
        a.mov(dx, 0x80u32)?; // nothing there
        a.mov(eax, 0u32)?;
        a.in_(eax, dx)?;
        // REP OUTSB of three bytes from memory, then REP INSB of two.
        a.mov(rsi, DATA)?;
        a.mov(dword_ptr(rsi), 0x0063_6261)?;
        a.mov(dx, 0xf4u32)?;
        a.mov(ecx, 3u32)?;
        a.rep().outsb()?;
        a.mov(rdi, DATA + 0x10)?;
        a.mov(ecx, 2u32)?;
        a.rep().insb()?;
        a.hlt()
    });
    emu.add_io_device(0xf4, 8, dev.clone()).unwrap();
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::RAX), 0xffff_ffff, "unassigned port");
    assert_eq!(
        reg(&emu, Register::RBX) & 0xff,
        1,
        "first read: offset 0 + 1 read"
    );
    let d = dev.lock().unwrap();
    assert_eq!(d.written[0], (0, vec![0x41]));
    assert_eq!(d.written[1], (1, vec![0x44, 0x33, 0x22, 0x11]));
    let bytes: Vec<u8> = d.written[2..].iter().map(|(_, v)| v[0]).collect();
    assert_eq!(bytes, b"abc");
    let mut got = [0u8; 2];
    emu.read_memory(DATA + 0x10, &mut got).unwrap();
    assert_eq!(got, [2, 3], "REP INSB stored two reads");
    assert_eq!(reg(&emu, Register::RCX), 0);
}

#[test]
fn mmio_devices_answer_guest_loads_and_stores() {
    use std::sync::{Arc, Mutex};
    let dev = Arc::new(Mutex::new(Recorder::default()));
    let mut emu = machine(|a| {
        a.mov(rbx, 0xfee0_0000u64)?;
        a.mov(dword_ptr(rbx + 0x30), 0xabcd)?;
        a.mov(eax, dword_ptr(rbx + 0x20))?;
        a.hlt()
    });
    emu.add_mmio_device(0xfee0_0000, 0x1000, dev.clone())
        .unwrap();
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(
        dev.lock().unwrap().written,
        vec![(0x30, vec![0xcd, 0xab, 0, 0])]
    );
    assert_eq!(reg(&emu, Register::RAX), 0x2423_2221);
}

#[test]
fn user_mode_port_access_follows_the_tss_io_bitmap() {
    use delivery::*;
    use std::sync::{Arc, Mutex};
    let dev = Arc::new(Mutex::new(Recorder::default()));
    let mut emu = machine(|a| enter_user_mode(a, 0x2000));
    let user = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(al, 7u32).unwrap();
        a.out(0x60, al).unwrap(); // allowed by the bitmap
        a.out(0x61, al).unwrap(); // denied: #GP(0)
        a.assemble(0x2000).unwrap()
    };
    emu.write_memory(0x2000, &user).unwrap();
    emu.add_io_device(0x60, 2, dev.clone()).unwrap();
    // A TSS with an I/O bitmap at offset 0x68: ports 0x00..0x7f, only 0x60 allowed.
    let mut bitmap = [0xffu8; 16];
    bitmap[0x60 / 8] &= !1;
    emu.write_memory(TSS + 0x66, &0x68u16.to_le_bytes())
        .unwrap();
    emu.write_memory(TSS + 0x68, &bitmap).unwrap();
    // Raise the TSS limit in its descriptor so the bitmap is inside it.
    emu.write_memory(GDT + TSS_SEL as u64, &(0x68u16 + 16).to_le_bytes())
        .unwrap();
    set_gate(&mut emu, 13, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 13, |a| {
        a.pop(r13)?;
        a.mov(r14, qword_ptr(rsp))?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(dev.lock().unwrap().written, vec![(0, vec![7])]);
    assert_eq!(reg(&emu, Register::R13), 0);
    assert_eq!(
        reg(&emu, Register::R14),
        0x2000 + 2 + 2,
        "the second OUT faulted"
    );
}

#[test]
fn sti_hlt_takes_a_pending_interrupt_after_the_halt_not_before() {
    use delivery::*;
    let mut emu = machine(|a| {
        let mut after_hlt = a.create_label();
        a.lea(r14, ptr(after_hlt))?;
        a.sti()?;
        a.hlt()?; // runs in STI's shadow, then wakes at once: the interrupt is pending
        a.set_label(&mut after_hlt)?;
        a.mov(r15, 1u64)?;
        a.cli()?;
        a.int3()
    });
    set_gate(&mut emu, 0x30, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x30, |a| {
        a.mov(r12, qword_ptr(rsp))?; // where the interrupt returns to
        a.inc(r13)?;
        a.iretq()
    });
    set_gate(&mut emu, 3, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 3, |a| a.hlt());
    emu.interrupt_line().raise(0x30);
    let stop = emu.run(
        CODE,
        &RunOptions {
            timeout: Some(std::time::Duration::from_secs(5)),
            ..Default::default()
        },
    );
    assert_eq!(
        stop,
        StopReason::Halted,
        "ends halted in the INT3 handler with IF clear"
    );
    assert_eq!(reg(&emu, Register::R13), 1, "the interrupt was taken once");
    assert_eq!(
        reg(&emu, Register::R12),
        reg(&emu, Register::R14),
        "after the HLT, not before it"
    );
    assert_eq!(reg(&emu, Register::R15), 1);
}

#[test]
fn an_interrupt_raised_by_another_thread_wakes_a_halted_cpu() {
    use delivery::*;
    let mut emu = machine(|a| {
        let mut top = a.create_label();
        a.sti()?;
        a.set_label(&mut top)?;
        a.hlt()?;
        a.cmp(r13, 3)?;
        a.jne(top)?;
        a.cli()?;
        a.int3()
    });
    set_gate(&mut emu, 0x40, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x40, |a| {
        a.inc(r13)?;
        a.iretq()
    });
    set_gate(&mut emu, 3, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 3, |a| {
        a.mov(r15, 1u64)?;
        a.hlt()
    });
    let line = emu.interrupt_line();
    let platform = std::thread::spawn(move || {
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            line.raise(0x40);
        }
    });
    let result = emu.run(
        CODE,
        &RunOptions {
            timeout: Some(std::time::Duration::from_secs(10)),
            ..Default::default()
        },
    );
    platform.join().unwrap();
    assert_eq!(
        result,
        StopReason::Halted,
        "the final HLT, with IF clear, ends the run"
    );
    assert_eq!(reg(&emu, Register::R13), 3);
    assert_eq!(reg(&emu, Register::R15), 1);
}

#[test]
fn nmi_ignores_if_and_is_held_until_iret() {
    use delivery::*;
    let mut emu = machine(|a| {
        let mut top = a.create_label();
        a.cli()?;
        a.set_label(&mut top)?;
        a.hlt()?; // with IF clear only an NMI wakes it
        a.cmp(r13, 2)?;
        a.jne(top)?;
        a.mov(r15, 1u64)?;
        a.hlt()
    });
    set_gate(&mut emu, 2, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 2, |a| {
        let mut next = a.create_label();
        let mut done = a.create_label();
        a.inc(r13)?;
        a.mov(r12, r13)?;
        a.jmp(next)?; // a block boundary, where a second NMI would be taken if not held
        a.set_label(&mut next)?;
        a.cmp(r12, r13)?;
        a.je(done)?;
        a.mov(r11, 1u64)?; // nested: the second NMI was not held
        a.set_label(&mut done)?;
        a.iretq()
    });
    let line = emu.interrupt_line();
    emu.add_code_hook(Box::new({
        let line = line.clone();
        let (mut first, mut second) = (false, false);
        move |cpu, _, _| {
            // The first NMI once the descriptor tables are loaded, the second from inside
            // the first handler.
            if cpu.sys.tr.selector != 0 && !first {
                first = true;
                line.raise_nmi();
            }
            if cpu.regs[13] == 1 && !second {
                second = true;
                line.raise_nmi();
            }
            emu_core::HookAction::Continue
        }
    }));
    let stop = emu.run(
        CODE,
        &RunOptions {
            timeout: Some(std::time::Duration::from_millis(300)),
            ..Default::default()
        },
    );
    assert_eq!(
        stop,
        StopReason::Halted,
        "the final HLT with IF clear ends the run"
    );
    assert_eq!(
        reg(&emu, Register::R13),
        2,
        "both NMIs arrived, one after the other"
    );
    assert_eq!(reg(&emu, Register::R15), 1);
    assert_eq!(
        reg(&emu, Register::R11),
        0,
        "no NMI nested inside the NMI handler"
    );
}

#[test]
fn hlt_with_interrupts_enabled_sleeps_until_a_stop_request() {
    use delivery::*;
    let mut emu = machine(|a| {
        a.sti()?;
        a.hlt()
    });
    let stop = emu.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        stop.stop();
    });
    let result = emu.run(
        CODE,
        &RunOptions {
            timeout: Some(std::time::Duration::from_secs(10)),
            ..Default::default()
        },
    );
    stopper.join().unwrap();
    assert_eq!(result, StopReason::StopRequested);
}

/// The lazy-FPU pattern: with CR0.TS set the first x87 instruction raises #NM, the handler
/// clears TS with CLTS and returns to it; then 1/3 computed in 64-bit and 53-bit precision
/// (FSTP m80) differs, proving the 80-bit format. Also: EM alone raises #NM, WAIT needs
/// both TS and MP, and FXSAVE is unavailable under TS.
#[test]
fn x87_device_not_available_clts_and_extended_precision() {
    use delivery::*;
    const THIRDS: u64 = 0x7a00;
    let mut emu = delivery::machine(|a| {
        a.xor(r15d, r15d)?;
        a.mov(rax, cr0)?;
        a.or(rax, 1 << 3)?; // TS
        a.mov(cr0, rax)?;
        a.mov(r8, THIRDS)?;
        a.mov(dword_ptr(r8 + 0x40), 3)?;
        a.mov(word_ptr(r8 + 0x44), 0x037f)?; // PC = 64 bits, round to nearest
        a.mov(word_ptr(r8 + 0x46), 0x027f)?; // PC = 53 bits
        a.fninit()?; // #NM, then retried after CLTS
        a.fldcw(word_ptr(r8 + 0x44))?;
        a.fld1()?;
        a.fidiv(dword_ptr(r8 + 0x40))?;
        a.fstp(tword_ptr(r8))?;
        a.fldcw(word_ptr(r8 + 0x46))?;
        a.fld1()?;
        a.fidiv(dword_ptr(r8 + 0x40))?;
        a.fstp(tword_ptr(r8 + 0x10))?;
        a.fnstsw(ax)?;
        a.mov(r14, rax)?;
        a.hlt()
    });
    set_gate(&mut emu, 7, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 7, |a| {
        a.inc(r15)?; // #NM has no error code: return to the faulting instruction
        a.clts()?;
        a.iretq()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R15), 1, "one #NM, then CLTS cleared TS");
    assert_eq!(emu.cpu().sys.cr0 & (1 << 3), 0);
    let mut m = [0u8; 0x20];
    emu.read_memory(THIRDS, &mut m).unwrap();
    let ext = |k: usize| {
        let mut b = [0u8; 16];
        b[..10].copy_from_slice(&m[k..k + 10]);
        u128::from_le_bytes(b)
    };
    assert_eq!(
        ext(0),
        0x3ffd_aaaa_aaaa_aaaa_aaab,
        "1/3 with a 64-bit significand"
    );
    assert_eq!(
        ext(0x10),
        0x3ffd_aaaa_aaaa_aaaa_a800,
        "1/3 rounded to 53 bits"
    );
    assert_eq!(reg(&emu, Register::R14) & 0x3f, 0x20, "only PE raised");

    // Bare reporting: EM alone makes x87 instructions unavailable; WAIT only faults with
    // TS and MP; FXSAVE faults with TS.
    for (cr0_bits, program, faults) in [
        (1u64 << 2, 0u8, true),     // EM: FLD1
        (1 << 2, 1, false),         // EM: WAIT runs
        (1 << 3, 1, false),         // TS without MP: WAIT runs
        (1 << 3 | 1 << 1, 1, true), // TS and MP: WAIT faults
        (1 << 3, 2, true),          // TS: FXSAVE
    ] {
        let mut emu = common::machine(|a| {
            a.mov(rax, cr0)?;
            a.or(rax, cr0_bits as i32)?;
            a.mov(cr0, rax)?;
            match program {
                0 => a.fld1()?,
                1 => a.wait()?,
                _ => a.fxsave(ptr(0x4000u64))?,
            }
            a.hlt()
        });
        let stop = run(&mut emu);
        if faults {
            assert!(
                matches!(
                    stop,
                    StopReason::Exception {
                        exception: Exception::DeviceNotAvailable,
                        ..
                    }
                ),
                "CR0 bits {cr0_bits:#x}, program {program}: {stop:?}"
            );
        } else {
            assert_eq!(
                stop,
                StopReason::Halted,
                "CR0 bits {cr0_bits:#x}, program {program}"
            );
        }
    }
}
