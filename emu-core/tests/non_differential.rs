//! Documented behaviour of the instructions the host differential suite cannot compare
//! (`tests/host_diff/int.rs`, `EXCLUDED`): CPUID describes our CPU, not the host's; the
//! time-stamp counter is time; HLT and INT n are privileged or kernel-defined in user mode
//! on the host, while the bare emulator stops on them.

use emu_core::{InterruptEvent, Register, RunOptions, StopReason};
use iced_x86::code_asm::*;

mod common;
use common::{machine, reg, CODE};

#[test]
fn cpuid_leaf_0_names_the_vendor_and_the_highest_leaf() {
    let mut emu = machine(|a| {
        a.mov(rax, 0xdead_0000_0000_0000u64)?;
        a.mov(rcx, 0xdead_0000_0000_0000u64)?;
        a.cpuid()?;
        a.hlt()
    });
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    let mut vendor = Vec::new();
    for r in [Register::RBX, Register::RDX, Register::RCX] {
        let v = reg(&emu, r);
        assert_eq!(
            v >> 32,
            0,
            "CPUID writes 32-bit registers, zeroing the upper half"
        );
        vendor.extend_from_slice(&(v as u32).to_le_bytes());
    }
    assert_eq!(&vendor, b"GenuineIntel");
    assert!(
        reg(&emu, Register::RAX) >= 0x16,
        "frequency leaves are reachable"
    );
}

#[test]
fn cpuid_advertises_long_mode_and_the_features_with_differential_coverage() {
    let mut emu = machine(|a| {
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.mov(r8, rcx)?;
        a.mov(r9, rdx)?;
        a.mov(eax, 7u32)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.mov(r10, rbx)?;
        a.mov(eax, 0x8000_0001u32)?;
        a.cpuid()?;
        a.hlt()
    });
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    let (ecx1, edx1, ebx7, edx_ext) = (
        reg(&emu, Register::R8),
        reg(&emu, Register::R9),
        reg(&emu, Register::R10),
        reg(&emu, Register::RDX),
    );
    assert_ne!(edx_ext & 1 << 29, 0, "long mode");
    assert_ne!(edx1 & 1 << 15, 0, "CMOV");
    assert_ne!(ecx1 & 1 << 13, 0, "CMPXCHG16B");
    assert_ne!(ecx1 & 1 << 22, 0, "MOVBE");
    assert_ne!(ecx1 & 1 << 23, 0, "POPCNT");
    assert_ne!(ebx7 & 1 << 3, 0, "BMI1");
    assert_ne!(ecx1 & 1 << 31, 0, "hypervisor present");
}

#[test]
fn rdtsc_counts_up_and_zero_extends() {
    let mut emu = machine(|a| {
        a.mov(rax, u64::MAX)?;
        a.mov(rdx, u64::MAX)?;
        a.rdtsc()?;
        a.mov(r8, rax)?;
        a.mov(r9, rdx)?;
        // Some work between the reads.
        a.mov(ecx, 10_000u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.rdtsc()?;
        a.hlt()
    });
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    for r in [Register::R8, Register::R9, Register::RAX, Register::RDX] {
        assert_eq!(reg(&emu, r) >> 32, 0, "{r:?} upper half is zero");
    }
    let first = reg(&emu, Register::R9) << 32 | reg(&emu, Register::R8);
    let second = reg(&emu, Register::RDX) << 32 | reg(&emu, Register::RAX);
    assert!(second >= first, "TSC went backwards: {first} then {second}");
}

#[test]
fn rdtscp_also_returns_tsc_aux_in_ecx() {
    let mut emu = machine(|a| {
        a.mov(rcx, u64::MAX)?;
        a.rdtscp()?;
        a.hlt()
    });
    emu.cpu_mut().tsc_aux = 0x1234_5678;
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    assert_eq!(reg(&emu, Register::RCX), 0x1234_5678);
    assert_eq!(reg(&emu, Register::RDX) >> 32, 0);
}

#[test]
fn hlt_stops_the_run_after_the_instruction() {
    let mut emu = machine(|a| {
        a.nop()?;
        a.hlt()?;
        a.nop()
    });
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    assert_eq!(reg(&emu, Register::RIP), CODE + 2);
}

#[test]
fn int_n_is_a_software_interrupt_reported_after_the_instruction() {
    let mut emu = machine(|a| {
        a.int(0x80)?;
        a.hlt()
    });
    assert_eq!(
        emu.run(CODE, &RunOptions::default()),
        StopReason::SoftwareInterrupt {
            vector: 0x80,
            rip: CODE + 2
        }
    );
    // With a hook that handles it, the run goes on.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    emu.add_interrupt_hook(Box::new(move |_, event| {
        s.lock().unwrap().push(event);
        true
    }));
    assert_eq!(emu.run(CODE, &RunOptions::default()), StopReason::Halted);
    assert_eq!(*seen.lock().unwrap(), vec![InterruptEvent::Software(0x80)]);
}
