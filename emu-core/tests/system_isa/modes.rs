//! Operating modes and the transitions between them: the power-on state, real mode,
//! 16- and 32-bit protected mode (with and without paging), long mode and compatibility
//! mode, segment loads and their faults, far transfers, legacy interrupt delivery and the
//! legacy-only instructions. Every program starts from the architectural reset state and
//! reports through the debug port.

use std::sync::{Arc, Mutex};

use emu_core::{Emulator, Exception, InterruptDelivery, Register, RunOptions, StopReason};
use iced_x86::code_asm::*;

use super::common::{attach_debug_port, reported, DebugPort};

/// Real-mode entry (CS = 0): the reset vector jumps here.
const ENTRY: u64 = 0x1000;
/// 32-bit protected-mode code.
const PM32: u64 = 0x2000;
/// 64-bit code.
const LM64: u64 = 0x3000;
/// Compatibility-mode (32-bit) code.
const COMPAT: u64 = 0x3800;
/// Ring-3 code.
const USER: u64 = 0x4000;
/// Interrupt handlers: 0x40 bytes per vector from here.
const HANDLERS: u64 = 0x1_0000;
/// A scratch data page.
const DATA: u64 = 0x6000;
/// Ring-0 stack top.
const STACK0: u64 = 0x9000;
/// Ring-3 stack top.
const STACK3: u64 = 0x8000;

const GDT: u64 = 0x800;
/// The GDT pseudo-descriptor LGDT reads.
const GDTR: u64 = 0x7f0;
/// The IDT (8-byte gates in protected mode, 16-byte in long mode) and its pseudo-descriptor.
const IDT: u64 = 0x7000;
const IDTR: u64 = 0x7e0;
const TSS: u64 = 0xa00;
/// Page tables.
const PAGING: u64 = 0x2_0000;

// GDT selectors.
const CODE32: u16 = 0x08;
const DATA32: u16 = 0x10;
const CODE16: u16 = 0x18;
const CODE64: u16 = 0x20;
/// A ring-0 data segment with base 0x1_0000 and a 64 KiB limit.
const BASED: u16 = 0x28;
const USER_CODE32: u16 = 0x30 | 3;
const USER_DATA32: u16 = 0x38 | 3;
const TSS32: u16 = 0x40;
/// A data segment that is not present.
const ABSENT: u16 = 0x50;
/// A ring-0 data segment with a 16-bit stack (B = 0).
const DATA16: u16 = 0x58;
const GDT_ENTRIES: u64 = 12;

/// An 8-byte code/data/system descriptor. `flags` are G (8), D/B (4), L (2), AVL (1).
fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | (base as u64 & 0xff_ffff) << 16
        | (access as u64) << 40
        | ((limit as u64 >> 16) & 0xf) << 48
        | (flags as u64 & 0xf) << 52
        | (base as u64 >> 24) << 56
}

fn gdt() -> [u64; GDT_ENTRIES as usize] {
    [
        0,
        descriptor(0, 0xf_ffff, 0x9a, 0xc),      // CODE32
        descriptor(0, 0xf_ffff, 0x92, 0xc),      // DATA32
        descriptor(0, 0xffff, 0x9a, 0x0),        // CODE16
        descriptor(0, 0xf_ffff, 0x9a, 0xa),      // CODE64
        descriptor(0x1_0000, 0xffff, 0x92, 0x4), // BASED
        descriptor(0, 0xf_ffff, 0xfa, 0xc),      // USER_CODE32
        descriptor(0, 0xf_ffff, 0xf2, 0xc),      // USER_DATA32
        descriptor(TSS as u32, 0x67, 0x89, 0x0), // TSS32 (available 32-bit TSS)
        descriptor(0, 0xf_ffff, 0xfa, 0xa),      // USER_CODE64
        descriptor(0, 0xf_ffff, 0x12, 0xc),      // ABSENT
        descriptor(0, 0xffff, 0x92, 0x0),        // DATA16
    ]
}

fn put(emu: &mut Emulator, addr: u64, bytes: &[u8]) {
    emu.write_memory(addr, bytes).unwrap();
}

fn put64(emu: &mut Emulator, addr: u64, v: u64) {
    put(emu, addr, &v.to_le_bytes());
}

/// Assembles `bits`-bit code for offset `at` (CS base 0, so also its linear address).
fn place(
    emu: &mut Emulator,
    bits: u32,
    at: u64,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) {
    let mut a = CodeAssembler::new(bits).unwrap();
    build(&mut a).unwrap();
    let code = a.assemble(at).unwrap();
    put(emu, at, &code);
}

/// A machine at the reset vector: 2 MiB of RAM, 64 KiB of "ROM" under 4 GiB whose reset
/// vector jumps to 0000:[`ENTRY`], the GDT, a 32-bit TSS and the debug port.
fn machine(delivery: InterruptDelivery) -> (Emulator, Arc<Mutex<DebugPort>>) {
    let mut emu = super::common::emulator();
    emu.map_memory(0, 0x20_0000).unwrap();
    emu.map_memory(0xffff_0000, 0x1_0000).unwrap();
    // JMP FAR 0000:ENTRY
    put(
        &mut emu,
        0xffff_fff0,
        &[0xea, ENTRY as u8, (ENTRY >> 8) as u8, 0, 0],
    );
    for (k, d) in gdt().iter().enumerate() {
        put64(&mut emu, GDT + 8 * k as u64, *d);
    }
    // Pseudo-descriptors: limit, then a 32-bit base.
    let mut gdtr = ((GDT_ENTRIES * 8 - 1) as u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(GDT as u32).to_le_bytes());
    put(&mut emu, GDTR, &gdtr);
    // 32-bit TSS: ESP0 at 4, SS0 at 8, I/O bitmap offset beyond the limit (no bitmap).
    put(&mut emu, TSS + 4, &(STACK0 as u32).to_le_bytes());
    put(&mut emu, TSS + 8, &(DATA32 as u32).to_le_bytes());
    put(&mut emu, TSS + 0x66, &0x68u16.to_le_bytes());
    let port = attach_debug_port(&mut emu);
    emu.set_interrupt_delivery(delivery);
    emu.reset();
    (emu, port)
}

fn go(emu: &mut Emulator) -> StopReason {
    emu.resume(&RunOptions {
        max_instructions: Some(200_000),
        timeout: Some(std::time::Duration::from_secs(10)),
        ..Default::default()
    })
}

/// Sends `value` to the debug port as a dword (any mode: DX and EAX are clobbered).
fn report(a: &mut CodeAssembler, value: u32) -> Result<(), IcedError> {
    a.mov(edx, 0xe9u32)?;
    a.mov(eax, value)?;
    a.out(dx, eax)
}

/// Sends a register to the debug port as a dword (any mode: EAX and EDX are clobbered).
fn report_reg(a: &mut CodeAssembler, r: AsmRegister32) -> Result<(), IcedError> {
    a.mov(eax, r)?;
    a.mov(edx, 0xe9u32)?;
    a.out(dx, eax)
}

/// A far JMP to `sel:offset` with a 32-bit offset (from 16- or 32-bit code).
fn far_jump(a: &mut CodeAssembler, from_bits: u32, sel: u16, offset: u32) -> Result<(), IcedError> {
    let mut bytes = if from_bits == 16 { vec![0x66] } else { vec![] };
    bytes.push(0xea);
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.extend_from_slice(&sel.to_le_bytes());
    a.db(&bytes)
}

/// 16-bit code: load the GDT, set CR0.PE and jump to 32-bit code at [`PM32`].
fn enter_protected_mode(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.cli()?;
    a.db(&[0x66])?; // a 32-bit operand: the full 32-bit base
    a.lgdt(ptr(GDTR as u32))?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?;
    a.mov(cr0, eax)?;
    far_jump(a, 16, CODE32, PM32 as u32)
}

/// 32-bit code: flat data segments and the ring-0 stack.
fn flat_segments(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(ax, DATA32 as u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(esp, STACK0 as u32)
}

#[test]
fn power_on_state_is_real_mode_at_f000_fff0_and_segments_are_base_plus_offset() {
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    assert_eq!(emu.reg(Register::CS).unwrap(), 0xf000);
    assert_eq!(emu.segment(Register::CS).unwrap().base, 0xffff_0000);
    assert_eq!(emu.reg(Register::RIP).unwrap(), 0xfff0);
    assert_eq!(emu.reg(Register::CR0).unwrap(), 0x6000_0010);
    assert_eq!(
        emu.reg(Register::EDX).unwrap() as u32,
        emu_core::cpuid::cpuid(1, 0)[0],
        "EDX holds the processor signature"
    );
    assert_eq!(emu.reg(Register::RSP).unwrap(), 0);
    put(&mut emu, 0x2_0020, &0xcafeu16.to_le_bytes());
    place(&mut emu, 16, ENTRY, |a| {
        a.mov(ax, 0x2000u32)?;
        a.mov(ds, ax)?;
        a.mov(word_ptr(0x10), 0xbeefu32)?; // linear 0x2_0010
                                           // [BX+SI] wraps at 64 KiB: 0xff0 + 0xf030 = 0x1_0020 -> offset 0x20.
        a.mov(bx, 0x0ff0u32)?;
        a.mov(si, 0xf030u32)?;
        a.movzx(ecx, word_ptr(bx + si))?;
        report_reg(a, ecx)?;
        // A 16-bit stack wraps inside its segment: SS = 0x3000, SP = 2.
        a.mov(ax, 0x3000u32)?;
        a.mov(ss, ax)?;
        a.mov(sp, 2u32)?;
        a.push(0x1111u32 as i32 as u32 as i16 as i32)?; // SP = 0: linear 0x3_0000
        a.push(0x2222u32 as i32 as u32 as i16 as i32)?; // SP = 0xfffe: linear 0x3_fffe
        a.movzx(ecx, sp)?;
        report_reg(a, ecx)?;
        a.hlt()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    assert_eq!(reported(&port), vec![0xcafe, 0xfffe]);
    let mut b = [0u8; 2];
    emu.read_memory(0x2_0010, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0xbeef, "DS base 0x20000");
    emu.read_memory(0x3_0000, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0x1111);
    emu.read_memory(0x3_fffe, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0x2222, "the push wrapped to SS:FFFE");
}

#[test]
fn real_mode_interrupts_go_through_the_vector_table_without_error_codes() {
    let (mut emu, port) = machine(InterruptDelivery::Guest);
    // IVT: INT 21h -> 0000:HANDLER_A, #DE -> 0000:HANDLER_B (offsets in segment 0).
    const HANDLER_A: u16 = 0x5000;
    const HANDLER_B: u16 = 0x5100;
    put(
        &mut emu,
        0x21 * 4,
        &[HANDLER_A as u8, (HANDLER_A >> 8) as u8, 0, 0],
    );
    put(
        &mut emu,
        0,
        &[HANDLER_B as u8, (HANDLER_B >> 8) as u8, 0, 0],
    );
    // With SS:SP = 0:0 after reset the frames land at the top of segment 0.
    place(&mut emu, 16, ENTRY, |a| {
        a.sti()?;
        a.int(0x21)?; // at ENTRY + 1; returns to ENTRY + 3
        a.div(bl)?; // at ENTRY + 3: AX = 0 / BL = 0 -> #DE
        report(a, 0xd0e)?;
        a.cli()?;
        a.hlt()
    });
    let report_frame = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.mov(bp, sp)?;
        a.movzx(ecx, word_ptr(bp))?; // IP
        report_reg(a, ecx)?;
        a.movzx(ecx, word_ptr(bp + 2))?; // CS
        report_reg(a, ecx)?;
        a.movzx(ecx, word_ptr(bp + 4))?; // FLAGS
        report_reg(a, ecx)?;
        a.pushfd()?;
        a.pop(ecx)?;
        report_reg(a, ecx) // FLAGS inside the handler
    };
    place(&mut emu, 16, HANDLER_A as u64, |a| {
        report_frame(a)?;
        a.iret()
    });
    place(&mut emu, 16, HANDLER_B as u64, |a| {
        report_frame(a)?;
        a.mov(bp, sp)?;
        a.add(word_ptr(bp), 2u32)?; // skip the 2-byte DIV
        a.iret()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    let r = reported(&port);
    assert_eq!(
        &r[..4],
        &[ENTRY + 3, 0, 0x202, 0x2],
        "INT 21h: return IP, CS, FLAGS with IF, then IF clear in the handler"
    );
    assert_eq!(
        r[4],
        ENTRY + 3,
        "#DE pushes the faulting IP and no error code"
    );
    assert_eq!(r[8], 0xd0e, "IRET resumed after the skipped DIV");
    assert_eq!(emu.reg(Register::SP).unwrap(), 0, "frames popped");
}

#[test]
fn protected_mode_uses_descriptor_bases_and_32bit_stacks() {
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        // A data segment based at 0x1_0000: [DS:0x10] is linear 0x1_0010.
        a.mov(ax, BASED as u32)?;
        a.mov(fs, ax)?;
        a.mov(dword_ptr(0x10).fs(), 0x1234_5678u32)?;
        // 32-bit near CALL/RET and PUSH/POP on the flat stack.
        let mut func = a.create_label();
        let mut after = a.create_label();
        a.call(func)?;
        a.jmp(after)?;
        a.set_label(&mut func)?;
        a.mov(ecx, esp)?;
        report_reg(a, ecx)?; // STACK0 - 4
        a.ret()?;
        a.set_label(&mut after)?;
        a.mov(ecx, esp)?;
        report_reg(a, ecx)?; // STACK0
                             // 16-bit addressing inside 32-bit code (0x67 prefix) wraps at 64 KiB.
        a.mov(ebx, 0x1_fff0u32)?;
        a.db(&[0x67, 0x8b, 0x4f, 0x20])?; // mov ecx, [bx + 0x20] -> offset 0x10 of DS
        report_reg(a, ecx)?;
        // MOV r32, Sreg.
        a.mov(ecx, fs)?;
        report_reg(a, ecx)?;
        // A stack segment with B = 0: only SP moves, and it wraps inside the segment.
        a.mov(ax, DATA16 as u32)?;
        a.mov(ss, ax)?;
        a.mov(esp, 0x1_0000u32)?;
        a.push(0x5555_5555u32 as i32)?;
        a.mov(ecx, esp)?;
        report_reg(a, ecx)?;
        a.hlt()
    });
    put(&mut emu, 0x10, &0xabcd_ef01u32.to_le_bytes());
    assert_eq!(go(&mut emu), StopReason::Halted);
    assert_eq!(
        reported(&port),
        vec![STACK0 - 4, STACK0, 0xabcd_ef01, BASED as u64, 0x1_fffc]
    );
    let mut b = [0u8; 4];
    emu.read_memory(0xfffc, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x5555_5555, "pushed at SS:FFFC");
    let mut b = [0u8; 4];
    emu.read_memory(0x1_0010, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    let code = emu.segment(Register::CS).unwrap();
    assert_eq!(
        (code.selector, code.base, code.limit),
        (CODE32, 0, u32::MAX)
    );
    assert_eq!(code.attributes & 0x4000, 0x4000, "D bit: 32-bit code");
    assert_eq!(emu.reg(Register::CR0).unwrap() & 1, 1);
}

/// Runs 32-bit protected-mode `body` after the standard entry and returns how it stopped.
fn run_protected(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> StopReason {
    let (mut emu, _) = machine(InterruptDelivery::Embedder);
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        body(a)
    });
    go(&mut emu)
}

fn exception(stop: StopReason) -> Exception {
    match stop {
        StopReason::Exception { exception, .. } => exception,
        other => panic!("expected an exception, got {other:?}"),
    }
}

#[test]
fn segment_loads_check_table_limits_types_privilege_and_presence() {
    use Exception::*;
    let load = |sel: u16, into_ss: bool| {
        exception(run_protected(move |a| {
            a.mov(ax, sel as u32)?;
            if into_ss {
                a.mov(ss, ax)?;
            } else {
                a.mov(ds, ax)?;
            }
            a.hlt()
        }))
    };
    assert_eq!(
        load(0x100, false),
        GeneralProtection(0x100),
        "beyond the GDT limit"
    );
    assert_eq!(
        load(TSS32, false),
        GeneralProtection(TSS32 as u32),
        "a system descriptor"
    );
    assert_eq!(load(ABSENT, false), SegmentNotPresent(ABSENT as u32));
    assert_eq!(load(ABSENT, true), StackFault(ABSENT as u32));
    assert_eq!(
        load(USER_DATA32, true),
        GeneralProtection(USER_DATA32 as u32 & !3),
        "RPL != CPL"
    );
    assert_eq!(
        load(CODE32, true),
        GeneralProtection(CODE32 as u32),
        "SS must be writable"
    );
    assert_eq!(
        load(0, true),
        GeneralProtection(0),
        "null SS outside 64-bit mode"
    );
    // A null DS loads; using... the load itself succeeds.
    assert_eq!(
        run_protected(|a| {
            a.xor(eax, eax)?;
            a.mov(ds, ax)?;
            a.hlt()
        }),
        StopReason::Halted
    );
    // MOV to CS does not exist.
    assert_eq!(
        exception(run_protected(|a| {
            a.db(&[0x8e, 0xc8])?; // mov cs, ax
            a.hlt()
        })),
        InvalidOpcode
    );
    // A far jump to a data segment, and to a non-conforming ring-3 code segment from ring 0.
    assert_eq!(
        exception(run_protected(|a| far_jump(a, 32, DATA32, 0))),
        GeneralProtection(DATA32 as u32)
    );
    assert_eq!(
        exception(run_protected(|a| far_jump(a, 32, USER_CODE32, USER as u32))),
        GeneralProtection(USER_CODE32 as u32 & !3)
    );
}

#[test]
fn lar_lsl_verr_verw_report_through_zf() {
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        let zf = |a: &mut CodeAssembler| -> Result<(), IcedError> {
            a.setz(cl)?;
            a.movzx(ecx, cl)?;
            report_reg(a, ecx)
        };
        a.mov(ebx, 0xdead_beefu32)?;
        a.mov(ax, BASED as u32)?;
        a.lsl(ebx, eax)?;
        zf(a)?;
        report_reg(a, ebx)?; // 0xffff (the reports clobber EAX)
        a.mov(eax, BASED as u32)?;
        a.lar(ebx, eax)?;
        report_reg(a, ebx)?; // access rights
        a.mov(ax, 0x100u32)?;
        a.lsl(ebx, eax)?; // beyond the table: ZF = 0, EBX unchanged
        zf(a)?;
        a.mov(ax, CODE32 as u32)?;
        a.verr(ax)?; // readable code
        zf(a)?;
        a.verw(ax)?; // code is never writable
        zf(a)?;
        a.mov(ax, DATA32 as u32)?;
        a.verw(ax)?;
        zf(a)?;
        a.hlt()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    let lar = (gdt()[5] >> 32) & 0x00f0_ff00;
    assert_eq!(reported(&port), vec![1, 0xffff, lar, 0, 1, 0, 1]);
}

#[test]
fn legacy_only_instructions_bcd_pusha_bound_les_and_short_inc() {
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    put(&mut emu, DATA, &[0x10, 0, 0, 0, 0x20, 0, 0, 0]); // BOUND limits 0x10..0x20
    put(
        &mut emu,
        DATA + 8,
        &[0x44, 0x33, 0x22, 0x11, BASED as u8, 0],
    ); // far pointer
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        let flags_and_eax = |a: &mut CodeAssembler| -> Result<(), IcedError> {
            a.movzx(ecx, ax)?;
            report_reg(a, ecx)?;
            a.pushfd()?;
            a.pop(ecx)?;
            a.and(ecx, 0x11u32)?; // AF, CF
            report_reg(a, ecx)
        };
        // The SDM's examples: 0x79 + 0x35 = 0xae, DAA -> 0x14, CF.
        a.mov(eax, 0x79u32)?;
        a.add(al, 0x35)?;
        a.daa()?;
        flags_and_eax(a)?;
        // 0x35 - 0x47 = 0xee, DAS -> 0x88, CF.
        a.mov(eax, 0x35u32)?;
        a.sub(al, 0x47)?;
        a.das()?;
        flags_and_eax(a)?;
        // '8' + '9' = 0x71 with AF; AAA -> AX = 0x0107, CF and AF.
        a.mov(eax, 0x38u32)?;
        a.add(al, 0x39)?;
        a.aaa()?;
        flags_and_eax(a)?;
        // AAS: AX = 0x0203 after 3 - 5 (AL = 0xfe, AF) -> AX = 0x0108.
        a.mov(eax, 0x203u32)?;
        a.sub(al, 5)?;
        a.aas()?;
        flags_and_eax(a)?;
        a.mov(eax, 63u32)?;
        a.aam(10)?; // AH = 6, AL = 3
        flags_and_eax(a)?;
        a.mov(eax, 0x0603u32)?; // the reports clobber EAX
        a.aad(10)?; // back to 63
        flags_and_eax(a)?;
        // PUSHAD/POPAD round trip, with the ESP slot ignored on the way back.
        a.mov(eax, 1u32)?;
        a.mov(ecx, 2u32)?;
        a.mov(ebx, 4u32)?;
        a.mov(ebp, 5u32)?;
        a.mov(esi, 6u32)?;
        a.mov(edi, 7u32)?;
        a.pushad()?;
        a.mov(dword_ptr(esp + 12), 0u32)?; // the saved ESP: ignored by POPAD
        a.mov(dword_ptr(esp), 70u32)?; // the saved EDI
        a.xor(eax, eax)?;
        a.xor(edi, edi)?;
        a.popad()?;
        a.mov(ecx, esp)?;
        report_reg(a, ecx)?;
        report_reg(a, edi)?; // 70 (EDX was clobbered by the reports)
                             // The one-byte INC r32 (0x40 + r) exists only here.
        a.mov(ebx, 41u32)?;
        a.db(&[0x43])?; // inc ebx
        report_reg(a, ebx)?;
        // LES and BOUND within range.
        a.les(ebx, ptr(DATA as u32 + 8))?;
        report_reg(a, ebx)?;
        a.mov(ecx, es)?;
        report_reg(a, ecx)?;
        a.mov(ecx, 0x18u32)?;
        a.bound(ecx, ptr(DATA as u32))?;
        // SALC: AL = CF ? 0xff : 0.
        a.stc()?;
        a.salc()?;
        a.movzx(ecx, al)?;
        report_reg(a, ecx)?;
        // BOUND out of range: #BR.
        a.mov(ecx, 0x21u32)?;
        a.bound(ecx, ptr(DATA as u32))?;
        a.hlt()
    });
    let stop = go(&mut emu);
    assert!(
        matches!(
            stop,
            StopReason::Exception {
                exception: Exception::BoundRange,
                ..
            }
        ),
        "{stop:?}"
    );
    let r = reported(&port);
    let pairs: Vec<(u64, u64)> = r[..12].chunks(2).map(|p| (p[0], p[1])).collect();
    assert_eq!(
        pairs,
        vec![
            (0x14, 0x11),   // DAA: CF (and AF from the low digit)
            (0x88, 0x11),   // DAS
            (0x0107, 0x11), // AAA
            (0x0108, 0x11), // AAS
            (0x0603, 0),    // AAM
            (63, 0),        // AAD
        ]
    );
    assert_eq!(&r[12..], &[STACK0, 70, 42, 0x1122_3344, BASED as u64, 0xff]);
}

/// An 8-byte protected-mode gate: `kind` 0xe (32-bit interrupt) or 0xf (trap).
fn gate32(offset: u64, sel: u16, kind: u8, dpl: u8) -> u64 {
    (offset & 0xffff)
        | (sel as u64) << 16
        | ((0x80 | dpl << 5 | kind) as u64) << 40
        | ((offset >> 16) & 0xffff) << 48
}

/// Writes `IDTR` for a table of `entries` gates of `size` bytes at [`IDT`].
fn set_idtr(emu: &mut Emulator, entries: u64, size: u64) {
    let mut idtr = ((entries * size - 1) as u16).to_le_bytes().to_vec();
    idtr.extend_from_slice(&(IDT as u32).to_le_bytes());
    put(emu, IDTR, &idtr);
}

fn handler(vector: u8) -> u64 {
    HANDLERS + vector as u64 * 0x40
}

#[test]
fn protected_mode_privilege_changes_through_retf_int_gates_and_iretd() {
    let (mut emu, port) = machine(InterruptDelivery::Guest);
    set_idtr(&mut emu, 256, 8);
    put64(
        &mut emu,
        IDT + 0x80 * 8,
        gate32(handler(0x80), CODE32, 0xe, 3),
    );
    put64(&mut emu, IDT + 13 * 8, gate32(handler(13), CODE32, 0xe, 0));
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.lidt(ptr(IDTR as u32))?;
        a.mov(ax, TSS32 as u32)?;
        a.ltr(ax)?;
        // To ring 3 with a far return: SS, ESP, CS, EIP.
        a.push(USER_DATA32 as u32)?;
        a.push(STACK3 as u32)?;
        a.push(USER_CODE32 as u32)?;
        a.push(USER as u32)?;
        a.retf()
    });
    // Ring 3 cannot use the debug port (IOPL 0, no I/O bitmap): it writes to DATA.
    place(&mut emu, 32, USER, |a| {
        a.mov(eax, ds)?; // DS (DPL 0) was nulled by the return to ring 3
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.mov(eax, cs)?;
        a.mov(dword_ptr(DATA as u32 + 4), eax)?;
        a.mov(ecx, 0x1234u32)?;
        a.int(0x80)?;
        a.mov(dword_ptr(DATA as u32 + 8), ecx)?; // the handler's answer
        a.mov(eax, esp)?;
        a.mov(dword_ptr(DATA as u32 + 12), eax)?;
        a.cli()?; // IOPL 0 < CPL 3: #GP(0)
        a.hlt()
    });
    place(&mut emu, 32, handler(0x80), |a| {
        // Frame on the TSS's ring-0 stack: EIP, CS, EFLAGS, ESP, SS.
        a.mov(ebx, esp)?;
        report_reg(a, ebx)?;
        a.mov(ebx, dword_ptr(esp + 4))?;
        report_reg(a, ebx)?;
        a.mov(ebx, dword_ptr(esp + 12))?;
        report_reg(a, ebx)?;
        a.mov(ebx, dword_ptr(esp + 16))?;
        report_reg(a, ebx)?;
        a.mov(ebx, ss)?;
        report_reg(a, ebx)?;
        a.add(ecx, 1u32)?;
        a.iretd()
    });
    place(&mut emu, 32, handler(13), |a| {
        a.mov(ebx, dword_ptr(esp))?; // error code
        report_reg(a, ebx)?;
        a.mov(ebx, dword_ptr(esp + 8))?; // CS of the faulting code
        report_reg(a, ebx)?;
        a.hlt()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    assert_eq!(
        reported(&port),
        vec![
            STACK0 - 20,
            USER_CODE32 as u64,
            STACK3,
            USER_DATA32 as u64,
            DATA32 as u64,
            0,
            USER_CODE32 as u64
        ]
    );
    let mut b = [0u8; 16];
    emu.read_memory(DATA, &mut b).unwrap();
    let words: Vec<u32> = b
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, vec![0, USER_CODE32 as u32, 0x1235, STACK3 as u32]);
}

#[test]
fn sysenter_and_sysexit_switch_between_ring_0_and_ring_3() {
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    const KERNEL_ENTRY: u64 = 0x5800;
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        for (msr, value) in [
            (0x174u32, CODE32 as u32),
            (0x175, STACK0 as u32 - 0x100),
            (0x176, KERNEL_ENTRY as u32),
        ] {
            a.mov(ecx, msr)?;
            a.mov(eax, value)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
        }
        a.mov(edx, USER as u32)?;
        a.mov(ecx, STACK3 as u32)?;
        a.sti()?;
        a.sysexit()
    });
    place(&mut emu, 32, USER, |a| {
        a.mov(eax, cs)?;
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.mov(eax, ss)?;
        a.mov(dword_ptr(DATA as u32 + 4), eax)?;
        a.mov(eax, esp)?;
        a.mov(dword_ptr(DATA as u32 + 8), eax)?;
        a.sysenter()
    });
    place(&mut emu, 32, KERNEL_ENTRY, |a| {
        a.mov(ecx, cs)?;
        report_reg(a, ecx)?;
        a.mov(ecx, ss)?;
        report_reg(a, ecx)?;
        a.mov(ecx, esp)?;
        report_reg(a, ecx)?;
        for k in 0..3u32 {
            a.mov(ecx, dword_ptr(DATA as u32 + 4 * k))?;
            report_reg(a, ecx)?;
        }
        a.pushfd()?;
        a.pop(ecx)?;
        a.and(ecx, 0x200u32)?;
        report_reg(a, ecx)?;
        a.hlt()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    let r = reported(&port);
    assert_eq!(
        r,
        vec![
            CODE32 as u64,
            DATA32 as u64,
            STACK0 - 0x100,
            (CODE32 + 16) as u64 | 3,
            (CODE32 + 24) as u64 | 3,
            STACK3,
            0, // SYSENTER cleared IF
        ]
    );
}

#[test]
fn paging_in_32bit_protected_mode_two_level_with_pse_and_pae_with_nx() {
    // Two-level paging: a 4 MiB PSE page identity-maps the low memory, and a page table
    // maps linear 0x40_0000 to physical 0x3_0000.
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    put(&mut emu, PAGING, &(0x83u32).to_le_bytes()); // PDE 0: 4 MiB, RW, P
    put(
        &mut emu,
        PAGING + 4,
        &((PAGING as u32 + 0x1000) | 3).to_le_bytes(),
    );
    put(&mut emu, PAGING + 0x1000, &(0x3_0003u32).to_le_bytes());
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.mov(eax, PAGING as u32)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x10u32)?; // PSE
        a.mov(cr4, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?;
        a.mov(dword_ptr(0x40_0000), 0xabcd_0123u32)?;
        a.mov(ecx, dword_ptr(PAGING as u32 + 0x1000))?; // the PTE, now accessed and dirty
        report_reg(a, ecx)?;
        a.mov(dword_ptr(0x40_1000), 1u32)?; // not present: #PF(write)
        a.hlt()
    });
    let stop = go(&mut emu);
    assert_eq!(
        exception(stop),
        Exception::PageFault {
            addr: 0x40_1000,
            code: 2
        }
    );
    assert_eq!(reported(&port), vec![0x3_0063]);
    let mut b = [0u8; 4];
    emu.read_memory(0x3_0000, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xabcd_0123);

    // PAE: 2 MiB pages for the low memory, and linear 0x40_0000 mapped no-execute.
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    let pdpt = PAGING + 0x2000;
    let pd = PAGING + 0x3000;
    let pt = PAGING + 0x4000;
    put64(&mut emu, pdpt, pd | 1);
    put64(&mut emu, pd, 0x83); // 2 MiB page at 0
    put64(&mut emu, pd + 16, pt | 3); // 0x40_0000..0x60_0000
    put64(&mut emu, pt, 0x3_1003 | 1 << 63); // NX
    put(&mut emu, 0x3_1000, &[0xf4]); // HLT, never fetched
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.mov(ecx, 0xc000_0080u32)?; // EFER.NXE
        a.rdmsr()?;
        a.or(eax, 0x800u32)?;
        a.wrmsr()?;
        a.mov(eax, pdpt as u32)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x20u32)?; // PAE
        a.mov(cr4, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?;
        a.mov(ecx, dword_ptr(0x40_0000))?; // readable
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.mov(ecx, eax)?;
        report_reg(a, ecx)?; // EFER: NXE, no LMA
        a.mov(eax, 0x40_0000u32)?;
        a.jmp(eax)?; // no-execute: #PF(present, fetch)
        a.hlt()
    });
    assert_eq!(
        exception(go(&mut emu)),
        Exception::PageFault {
            addr: 0x40_0000,
            code: 0x11
        }
    );
    assert_eq!(reported(&port), vec![0x800]);
}

/// A 16-byte long-mode interrupt gate to 64-bit code.
fn gate64(emu: &mut Emulator, vector: u8, offset: u64) {
    let lo =
        (offset & 0xffff) | (CODE64 as u64) << 16 | 0x8e << 40 | ((offset >> 16) & 0xffff) << 48;
    put64(emu, IDT + vector as u64 * 16, lo);
    put64(emu, IDT + vector as u64 * 16 + 8, offset >> 32);
}

#[test]
fn every_mode_in_one_trip_real_protected_long_compat_and_back_to_real() {
    const LM64_LEAVE: u64 = LM64 + 0x400;
    const PM32_AGAIN: u64 = PM32 + 0x800;
    const REAL_AGAIN: u64 = ENTRY + 0x800;
    let (mut emu, port) = machine(InterruptDelivery::Guest);
    // 4-level tables identity-mapping the first 2 MiB with one large page.
    put64(&mut emu, PAGING, (PAGING + 0x1000) | 3);
    put64(&mut emu, PAGING + 0x1000, (PAGING + 0x2000) | 3);
    put64(&mut emu, PAGING + 0x2000, 0x83);
    set_idtr(&mut emu, 0x82, 16);
    gate64(&mut emu, 0x81, handler(0x81));
    // The far pointer 64-bit code jumps through (m16:32) to reach compatibility mode.
    put(&mut emu, DATA, &(COMPAT as u32).to_le_bytes());
    put(&mut emu, DATA + 4, &CODE32.to_le_bytes());
    put(
        &mut emu,
        DATA + 8,
        &(LM64_LEAVE as u32 + 0x100).to_le_bytes(),
    );
    put(&mut emu, DATA + 12, &CODE32.to_le_bytes());

    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.lidt(ptr(IDTR as u32))?;
        a.mov(eax, PAGING as u32)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x20u32)?;
        a.mov(cr4, eax)?;
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 0x100u32)?; // LME
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?; // long mode is active: compatibility mode until CS changes
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.mov(ecx, eax)?;
        report_reg(a, ecx)?; // EFER: LME | LMA
        far_jump(a, 32, CODE64, LM64 as u32)
    });
    place(&mut emu, 64, LM64, |a| {
        // Only 64-bit code has 64-bit registers.
        a.mov(rcx, 0x1_0000_0005u64)?;
        a.shr(rcx, 32)?;
        a.add(rcx, 0x63)?;
        report_reg(a, ecx)?; // 0x64
                             // To compatibility mode through JMP FAR m16:32.
        a.jmp(fword_ptr(DATA as u32))?;
        a.hlt()
    });
    place(&mut emu, 32, COMPAT, |a| {
        // 0x40 is INC EAX here, a REX prefix in 64-bit code.
        a.mov(eax, 0x31u32)?;
        a.db(&[0x40])?;
        a.mov(ecx, eax)?;
        report_reg(a, ecx)?; // 0x32
                             // An interrupt from compatibility mode goes through the 64-bit IDT.
        a.int(0x81)?;
        report(a, 0xc0)?; // back in compatibility mode after IRETQ
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.mov(ecx, eax)?;
        report_reg(a, ecx)?;
        far_jump(a, 32, CODE64, LM64_LEAVE as u32)
    });
    place(&mut emu, 64, handler(0x81), |a| {
        a.mov(rcx, qword_ptr(rsp + 8))?; // CS of the interrupted code
        report_reg(a, ecx)?;
        a.mov(ecx, cs)?;
        report_reg(a, ecx)?;
        a.iretq()
    });
    place(&mut emu, 64, LM64_LEAVE, |a| {
        report(a, 0x64)?;
        // Leave long mode: back to compatibility code, then paging off.
        a.jmp(fword_ptr(DATA as u32 + 8))
    });
    place(&mut emu, 32, LM64_LEAVE + 0x100, |a| {
        a.mov(eax, cr0)?;
        a.and(eax, 0x7fff_ffffu32)?;
        a.mov(cr0, eax)?; // LMA clears: 32-bit protected mode
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.and(eax, !0x100u32)?; // LME off
        a.wrmsr()?;
        a.mov(ecx, eax)?;
        report_reg(a, ecx)?;
        a.jmp(PM32_AGAIN)
    });
    place(&mut emu, 32, PM32_AGAIN, |a| {
        report(a, 0x32)?;
        // To real mode: a 16-bit code segment first, then PE off and a real-mode far jump.
        far_jump(a, 32, CODE16, PM32_AGAIN as u32 + 0x100)
    });
    place(&mut emu, 16, PM32_AGAIN + 0x100, |a| {
        a.mov(eax, cr0)?;
        a.and(eax, !1u32)?;
        a.mov(cr0, eax)?;
        a.db(&[0xea, REAL_AGAIN as u8, (REAL_AGAIN >> 8) as u8, 0, 0])
    });
    place(&mut emu, 16, REAL_AGAIN, |a| {
        a.xor(ax, ax)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(sp, 0x7000u32)?;
        report(a, 0x16)?;
        a.hlt()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    assert_eq!(
        reported(&port),
        vec![
            0x500, // EFER: LME | LMA
            0x64,
            0x32,
            CODE32 as u64, // interrupted CS
            CODE64 as u64, // handler CS
            0xc0,
            0x500,
            0x64,
            0x0, // EFER after leaving: LME and LMA clear
            0x32,
            0x16,
        ]
    );
    assert_eq!(
        emu.reg(Register::CR0).unwrap() & 0x8000_0001,
        0,
        "real mode"
    );
    assert_eq!(emu.reg(Register::CS).unwrap(), 0);
}

#[test]
fn mov_ss_holds_an_interrupt_off_for_one_instruction() {
    /// A device that raises interrupt vector 0x40 when written.
    struct Doorbell(emu_core::InterruptLine);
    impl emu_mmu::BusDevice for Doorbell {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, _: &[u8]) {
            self.0.raise(0x40);
        }
    }
    let (mut emu, port) = machine(InterruptDelivery::Guest);
    let line = emu.interrupt_line();
    emu.add_io_device(0xf0, 1, Arc::new(Mutex::new(Doorbell(line))))
        .unwrap();
    set_idtr(&mut emu, 0x41, 8);
    put64(
        &mut emu,
        IDT + 0x40 * 8,
        gate32(handler(0x40), CODE32, 0xe, 0),
    );
    const AFTER: u64 = PM32 + 0x100;
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.lidt(ptr(IDTR as u32))?;
        a.sti()?;
        a.nop()?;
        a.jmp(AFTER)
    });
    place(&mut emu, 32, AFTER, |a| {
        a.out(0xf0, al)?; // 2 bytes: the interrupt is pending from here on
        a.mov(ax, DATA32 as u32)?; // 4 bytes
        a.mov(ss, ax)?; // 3 bytes (66 8E D0): held off for one more instruction
        a.mov(ecx, 7u32)?; // 5 bytes, at AFTER + 9
        a.nop()?; // the interrupt arrives before this one, at AFTER + 14
        a.cli()?;
        a.hlt()
    });
    place(&mut emu, 32, handler(0x40), |a| {
        a.mov(ebx, dword_ptr(esp))?;
        report_reg(a, ebx)?;
        report_reg(a, ecx)?;
        a.iretd()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    assert_eq!(reported(&port), vec![AFTER + 14, 7]);
}

#[test]
fn sixteen_bit_strings_wrap_their_index_registers_and_write_through_es() {
    let (mut emu, _) = machine(InterruptDelivery::Embedder);
    put(&mut emu, 0x2_fffe, &[1, 2]);
    put(&mut emu, 0x2_0000, &[3, 4]);
    place(&mut emu, 16, ENTRY, |a| {
        a.mov(ax, 0x2000u32)?;
        a.mov(ds, ax)?;
        a.mov(ax, 0x3000u32)?;
        a.mov(es, ax)?;
        a.mov(si, 0xfffeu32)?;
        a.mov(di, 0x10u32)?;
        a.mov(ecx, 0x1_0004u32)?; // only CX counts
        a.cld()?;
        a.rep().movsb()?;
        a.hlt()
    });
    assert_eq!(go(&mut emu), StopReason::Halted);
    let mut b = [0u8; 4];
    emu.read_memory(0x3_0010, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4], "DS:SI wrapped from FFFF to 0");
    assert_eq!(emu.reg(Register::SI).unwrap(), 2);
    assert_eq!(emu.reg(Register::DI).unwrap(), 0x14);
    assert_eq!(
        emu.reg(Register::ECX).unwrap(),
        0x1_0000,
        "ECX's upper half untouched"
    );
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

        /// Random code in real mode or 32-bit protected mode, over a GDT and IDT partly
        /// filled with random descriptors and gates, with exceptions delivered to the
        /// guest: every run ends with a stop reason (often a triple fault), never a host
        /// panic or hang.
        #[test]
        fn random_legacy_code_and_descriptors_never_panic_the_host(
            code in proptest::collection::vec(any::<u8>(), 1..96),
            descriptors in proptest::array::uniform8(any::<u64>()),
            gates in proptest::collection::vec(any::<u64>(), 32),
            protected in any::<bool>(),
            regs in proptest::array::uniform4(any::<u32>()),
        ) {
            let (mut emu, _) = machine(InterruptDelivery::Guest);
            // Random descriptors after the fixed ones, and random gates (8 bytes each
            // for protected mode; in real mode the same bytes are the IVT).
            for (k, d) in descriptors.iter().enumerate() {
                put64(&mut emu, GDT + 8 * (GDT_ENTRIES + k as u64), *d);
            }
            let mut gdtr = (((GDT_ENTRIES + 8) * 8 - 1) as u16).to_le_bytes().to_vec();
            gdtr.extend_from_slice(&(GDT as u32).to_le_bytes());
            put(&mut emu, GDTR, &gdtr);
            for (k, g) in gates.iter().enumerate() {
                put64(&mut emu, IDT + 8 * k as u64, *g);
                put64(&mut emu, 8 * k as u64, *g);
            }
            set_idtr(&mut emu, 32, 8);
            if protected {
                place(&mut emu, 16, ENTRY, enter_protected_mode);
                let mut prologue = CodeAssembler::new(32).unwrap();
                flat_segments(&mut prologue).unwrap();
                prologue.lidt(ptr(IDTR as u32)).unwrap();
                let mut bytes = prologue.assemble(PM32).unwrap();
                bytes.extend_from_slice(&code);
                put(&mut emu, PM32, &bytes);
            } else {
                put(&mut emu, ENTRY, &code);
            }
            for (r, v) in [Register::EAX, Register::EBX, Register::ESI, Register::EDI]
                .into_iter()
                .zip(regs)
            {
                emu.set_reg(r, v as u64).unwrap();
            }
            emu.resume(&RunOptions {
                max_instructions: Some(20_000),
                timeout: Some(std::time::Duration::from_millis(50)),
                ..Default::default()
            });
        }
    }
}

#[test]
fn lldt_makes_local_descriptors_loadable() {
    const LDT: u64 = DATA + 0x100;
    const LDT_SEL: u16 = (GDT_ENTRIES * 8) as u16;
    let (mut emu, port) = machine(InterruptDelivery::Embedder);
    // An LDT descriptor right after the fixed GDT entries, and a GDTR that covers it.
    put64(
        &mut emu,
        GDT + GDT_ENTRIES * 8,
        descriptor(LDT as u32, 0xf, 0x82, 0),
    );
    let mut gdtr = (((GDT_ENTRIES + 1) * 8 - 1) as u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(GDT as u32).to_le_bytes());
    put(&mut emu, GDTR, &gdtr);
    // LDT entry 1: data at 0x1_2000.
    put64(&mut emu, LDT + 8, descriptor(0x1_2000, 0xffff, 0x92, 0x4));
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.mov(ax, LDT_SEL as u32)?;
        a.lldt(ax)?;
        a.sldt(ecx)?;
        report_reg(a, ecx)?;
        a.mov(ax, 0x0cu32)?; // index 1, TI = 1 (LDT), RPL 0
        a.mov(ds, ax)?;
        a.mov(dword_ptr(0x4), 0x77u32)?;
        a.mov(ax, 0x14u32)?; // index 2: beyond the LDT's limit
        a.mov(es, ax)?;
        a.hlt()
    });
    assert_eq!(exception(go(&mut emu)), Exception::GeneralProtection(0x14));
    assert_eq!(reported(&port), vec![LDT_SEL as u64]);
    let mut b = [0u8; 4];
    emu.read_memory(0x1_2004, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x77);
    let accessed = {
        let mut d = [0u8; 8];
        emu.read_memory(LDT + 8, &mut d).unwrap();
        d[5] & 1
    };
    assert_eq!(accessed, 1, "loading the segment set its accessed bit");
}

#[test]
fn sysret_without_rex_w_returns_to_compatibility_mode() {
    let (mut emu, _) = machine(InterruptDelivery::Embedder);
    put64(&mut emu, PAGING, (PAGING + 0x1000) | 7);
    put64(&mut emu, PAGING + 0x1000, (PAGING + 0x2000) | 7);
    put64(&mut emu, PAGING + 0x2000, 0x87); // 2 MiB, user-accessible
    place(&mut emu, 16, ENTRY, enter_protected_mode);
    place(&mut emu, 32, PM32, |a| {
        flat_segments(a)?;
        a.mov(eax, PAGING as u32)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x20u32)?;
        a.mov(cr4, eax)?;
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 0x101u32)?; // LME, SCE
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?;
        far_jump(a, 32, CODE64, LM64 as u32)
    });
    place(&mut emu, 64, LM64, |a| {
        // STAR[63:48] = 0x30: SYSRET (32-bit) loads CS = 0x33, SS = 0x3b.
        a.mov(ecx, 0xc000_0081u32)?;
        a.xor(eax, eax)?;
        a.mov(edx, 0x0030_0008u32)?;
        a.wrmsr()?;
        a.mov(rcx, 0xffff_ffff_0000_0000u64 | USER)?; // the upper half is dropped
        a.mov(r11d, 0x2u32)?;
        a.mov(eax, 0x41u32)?;
        a.sysret()
    });
    place(&mut emu, 32, USER, |a| {
        a.db(&[0x40])?; // INC EAX: compatibility mode
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.mov(eax, cs)?;
        a.mov(dword_ptr(DATA as u32 + 4), eax)?;
        a.mov(eax, ss)?;
        a.mov(dword_ptr(DATA as u32 + 8), eax)?;
        a.syscall() // #UD outside 64-bit mode on Intel processors
    });
    let stop = go(&mut emu);
    assert!(
        matches!(
            stop,
            StopReason::Exception {
                exception: Exception::InvalidOpcode,
                ..
            }
        ),
        "{stop:?}"
    );
    let mut b = [0u8; 12];
    emu.read_memory(DATA, &mut b).unwrap();
    let words: Vec<u32> = b
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, vec![0x42, USER_CODE32 as u32, USER_DATA32 as u32]);
    let code = emu.segment(Register::CS).unwrap();
    assert_eq!(code.attributes & 0x6060, 0x4060, "D set, L clear, DPL 3");
}
