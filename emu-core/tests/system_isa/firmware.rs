//! The firmware crate's ROM, run from the architectural reset state: real mode at
//! F000:FFF0, protected mode, compatibility mode, then a 64-bit payload. This is the
//! first end-to-end user of the 16/32-bit modes and the mode transitions.

use super::*;
use ::firmware::{marker, Config, CODE64_SELECTOR, DATA_SELECTOR, ROM_BASE, ROM_SIZE};
use common::{attach_debug_port, reported};

/// RAM from 0: the page tables, the stack and the payload all live in it.
const RAM_SIZE: u64 = 16 << 20;
/// Where the payload stores what it saw (see [`probe_payload`]).
const RESULTS: u64 = 0x20_0000;
/// The byte the payload writes to the debug port when it is done.
const PAYLOAD_MARKER: u64 = b'K' as u64;

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// The L (64-bit code) bit of `SegmentState::attributes`.
const ATTR_L: u16 = 1 << 13;

/// A machine with RAM at 0, `config`'s ROM at [`ROM_BASE`], `payload` assembled at
/// `config.payload_entry`, and the debug port; reset, ready to resume.
fn boot(
    config: &Config,
    payload: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (
    Emulator,
    std::sync::Arc<std::sync::Mutex<common::DebugPort>>,
) {
    let mut emu = common::emulator();
    emu.map_memory(0, RAM_SIZE).unwrap();
    emu.map_memory(ROM_BASE, ROM_SIZE as u64).unwrap();
    emu.write_memory(ROM_BASE, &::firmware::rom(config).unwrap())
        .unwrap();
    let mut a = CodeAssembler::new(64).unwrap();
    payload(&mut a).unwrap();
    let code = a.assemble(config.payload_entry).unwrap();
    if config.payload_entry + (code.len() as u64) <= RAM_SIZE {
        emu.write_memory(config.payload_entry, &code).unwrap();
    }
    let port = attach_debug_port(&mut emu);
    emu.reset();
    (emu, port)
}

fn resume(emu: &mut Emulator) -> StopReason {
    emu.resume(&RunOptions {
        max_instructions: Some(1_000_000),
        ..Default::default()
    })
}

fn stage_markers() -> Vec<u64> {
    [marker::REAL_MODE, marker::PROTECTED_MODE, marker::LONG_MODE]
        .map(u64::from)
        .to_vec()
}

fn read_u64(emu: &mut Emulator, addr: u64) -> u64 {
    let mut bytes = [0; 8];
    emu.read_memory(addr, &mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

/// A payload that records the state it was entered with and does 64-bit-only things,
/// storing at [`RESULTS`]: +0 the OR of every general register but RSP, +8 RSP, +16 the
/// return address at [RSP], +24 CR0, +32 CR4, +40 EFER, +48 CR3, +56 the qword at
/// 0xFFFF_FFF0 read through the identity map, +64 a 64-bit sum in R15, +72 that sum
/// through XMM0 (SSE is enabled), +80 a RIP-relative LEA's result, +88 RFLAGS; then it
/// reports [`PAYLOAD_MARKER`] and halts.
fn probe_payload(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for r in [
        rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15,
    ] {
        a.or(rax, r)?;
    }
    a.mov(rbx, RESULTS)?;
    a.mov(qword_ptr(rbx), rax)?;
    a.mov(qword_ptr(rbx + 8), rsp)?;
    a.mov(rax, qword_ptr(rsp))?;
    a.mov(qword_ptr(rbx + 16), rax)?;
    a.mov(rax, cr0)?;
    a.mov(qword_ptr(rbx + 24), rax)?;
    a.mov(rax, cr4)?;
    a.mov(qword_ptr(rbx + 32), rax)?;
    a.mov(ecx, 0xc000_0080u32)?;
    a.rdmsr()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(qword_ptr(rbx + 40), rax)?;
    a.mov(rax, cr3)?;
    a.mov(qword_ptr(rbx + 48), rax)?;
    a.mov(rsi, 0xffff_fff0u64)?;
    a.mov(rax, qword_ptr(rsi))?;
    a.mov(qword_ptr(rbx + 56), rax)?;
    a.mov(r15, 0x1122_3344_5566_7788u64)?;
    a.add(r15, r15)?;
    a.mov(qword_ptr(rbx + 64), r15)?;
    a.movq(xmm0, r15)?;
    a.movq(rax, xmm0)?;
    a.mov(qword_ptr(rbx + 72), rax)?;
    let mut here = a.create_label();
    a.set_label(&mut here)?;
    a.lea(rax, ptr(here))?;
    a.mov(qword_ptr(rbx + 80), rax)?;
    a.pushfq()?;
    a.pop(rax)?;
    a.mov(qword_ptr(rbx + 88), rax)?;
    a.mov(dx, common::DEBUG_PORT as u32)?;
    a.mov(al, PAYLOAD_MARKER as u32)?;
    a.out(dx, al)?;
    a.hlt()
}

#[test]
fn firmware_takes_the_reset_vector_to_a_64_bit_payload_with_paging_on() {
    let config = Config::default();
    let (mut emu, port) = boot(&config, probe_payload);
    assert_eq!(emu.reg(Register::RIP).unwrap(), 0xfff0);
    assert_eq!(resume(&mut emu), StopReason::Halted);

    let mut expected = stage_markers();
    expected.push(PAYLOAD_MARKER);
    assert_eq!(
        reported(&port),
        expected,
        "stage markers, then the payload's"
    );

    let code_segment = emu.segment(Register::CS).unwrap();
    assert_eq!(code_segment.selector, CODE64_SELECTOR);
    assert_ne!(
        code_segment.attributes & ATTR_L,
        0,
        "64-bit code segment: {code_segment:?}"
    );
    for sreg in [Register::DS, Register::ES, Register::SS] {
        assert_eq!(emu.segment(sreg).unwrap().selector, DATA_SELECTOR);
    }
    let cr0_value = emu.reg(Register::CR0).unwrap();
    assert_eq!(
        cr0_value & (CR0_PG | CR0_PE),
        CR0_PG | CR0_PE,
        "CR0 {cr0_value:#x}"
    );
    assert_ne!(emu.reg(Register::CR4).unwrap() & CR4_PAE, 0);
    assert_eq!(
        emu.cpu().sys.efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA
    );

    // What the payload saw.
    assert_eq!(read_u64(&mut emu, RESULTS), 0, "every GPR but RSP is 0");
    assert_eq!(read_u64(&mut emu, RESULTS + 8), config.stack_top - 8);
    let ret = read_u64(&mut emu, RESULTS + 16);
    assert!(
        (ROM_BASE..ROM_BASE + ROM_SIZE as u64).contains(&ret),
        "entered by a call from the ROM: {ret:#x}"
    );
    // The contract's exact values: CR0 = PG | NE | ET | MP | PE, CR4 = PAE | OSFXSR |
    // OSXMMEXCPT, EFER = LME | LMA.
    assert_eq!(read_u64(&mut emu, RESULTS + 24), 0x8000_0033);
    assert_eq!(read_u64(&mut emu, RESULTS + 24), cr0_value);
    assert_eq!(read_u64(&mut emu, RESULTS + 32), 0x620);
    assert_eq!(read_u64(&mut emu, RESULTS + 40), EFER_LME | EFER_LMA);
    assert_eq!(
        read_u64(&mut emu, RESULTS + 48),
        u64::from(config.page_tables)
    );
    let mut top = [0; 8];
    emu.read_memory(0xffff_fff0, &mut top).unwrap();
    assert_eq!(read_u64(&mut emu, RESULTS + 56), u64::from_le_bytes(top));
    assert_eq!(read_u64(&mut emu, RESULTS + 64), 0x2244_6688_aacc_ef10);
    assert_eq!(read_u64(&mut emu, RESULTS + 72), 0x2244_6688_aacc_ef10);
    let rflags = read_u64(&mut emu, RESULTS + 88);
    assert_eq!(
        rflags & (1 << 9 | 1 << 10),
        0,
        "IF and DF clear: {rflags:#x}"
    );
    let lea = read_u64(&mut emu, RESULTS + 80);
    assert!(
        (config.payload_entry..config.payload_entry + 0x100).contains(&lea),
        "RIP-relative addressing: {lea:#x}"
    );
}

/// Runs until RIP (the offset in CS) is `rip`.
fn run_to(emu: &mut Emulator, rip: u64) {
    let stop = emu.resume(&RunOptions {
        until: Some(rip),
        max_instructions: Some(1_000_000),
        ..Default::default()
    });
    assert_eq!(stop, StopReason::ReachedEnd, "running to {rip:#x}");
}

#[test]
fn each_firmware_stage_starts_in_the_mode_it_was_assembled_for() {
    use ::firmware::{layout, CODE32_SELECTOR};
    let (mut emu, _) = boot(&Config::default(), probe_payload);
    let efer = |emu: &Emulator| emu.cpu().sys.efer;
    // D (default operand size 32) in `SegmentState::attributes`.
    let attr_d = 1 << 14;

    // Real mode, still on the reset CS: IP is the ROM offset.
    run_to(&mut emu, layout::REAL_MODE as u64);
    let code_segment = emu.segment(Register::CS).unwrap();
    assert_eq!(
        (code_segment.selector, code_segment.base),
        (0xf000, ROM_BASE)
    );
    assert_eq!(emu.reg(Register::CR0).unwrap() & CR0_PE, 0);

    // 32-bit protected mode, through the GDT loaded with its full 32-bit base.
    run_to(&mut emu, ROM_BASE + layout::PROTECTED_MODE as u64);
    let code_segment = emu.segment(Register::CS).unwrap();
    assert_eq!(code_segment.selector, CODE32_SELECTOR);
    assert_eq!((code_segment.base, code_segment.limit), (0, u32::MAX));
    assert_eq!(code_segment.attributes & (attr_d | ATTR_L), attr_d);
    let gdtr = emu.cpu().sys.gdtr;
    assert_eq!(
        (gdtr.base, gdtr.limit),
        (ROM_BASE + layout::GDT as u64, 0x1f)
    );
    assert_eq!(emu.cpu().sys.idtr.limit, 0, "the empty IDT");
    let cr0_value = emu.reg(Register::CR0).unwrap();
    assert_eq!(cr0_value & (CR0_PE | CR0_PG), CR0_PE);
    assert_eq!(cr0_value & (3 << 29), 0, "caches on: CD and NW clear");

    // Compatibility mode: long mode is active, CS is still the 32-bit segment, at the far
    // jump that ends the stage.
    let rom = ::firmware::rom(&Config::default()).unwrap();
    let stage = &rom[layout::PROTECTED_MODE..layout::LONG_MODE];
    let far_jump = iced_x86::Decoder::with_ip(
        32,
        stage,
        ROM_BASE + layout::PROTECTED_MODE as u64,
        iced_x86::DecoderOptions::NONE,
    )
    .into_iter()
    .find(|i| i.code() == iced_x86::Code::Jmp_ptr1632)
    .unwrap();
    run_to(&mut emu, far_jump.ip());
    assert_eq!(efer(&emu) & EFER_LMA, EFER_LMA);
    let code_segment = emu.segment(Register::CS).unwrap();
    assert_eq!(code_segment.selector, CODE32_SELECTOR);
    assert_eq!(code_segment.attributes & (attr_d | ATTR_L), attr_d);

    // 64-bit mode.
    run_to(&mut emu, ROM_BASE + layout::LONG_MODE as u64);
    let code_segment = emu.segment(Register::CS).unwrap();
    assert_eq!(code_segment.selector, CODE64_SELECTOR);
    assert_eq!(code_segment.attributes & (attr_d | ATTR_L), ATTR_L);
    assert_eq!(resume(&mut emu), StopReason::Halted);
}

#[test]
fn firmware_builds_the_configured_identity_map_and_stays_quiet_without_a_port() {
    let config = Config {
        payload_entry: 0x30_0000,
        stack_top: 0x6_0000,
        page_tables: 0x1_0000,
        identity_map_gib: 8,
        debug_port: None,
    };
    let (mut emu, port) = boot(&config, probe_payload);
    assert_eq!(resume(&mut emu), StopReason::Halted);
    assert_eq!(reported(&port), [PAYLOAD_MARKER], "only the payload speaks");
    assert_eq!(read_u64(&mut emu, RESULTS + 8), 0x6_0000 - 8);
    assert_eq!(read_u64(&mut emu, RESULTS + 48), 0x1_0000);

    let tables = u64::from(config.page_tables);
    let (pml4, pdpt, pd0) = (tables, tables + 0x1000, tables + 0x2000);
    let present_writable = 0b11;
    // The page walks have set accessed bits (and dirty ones in page directories) since.
    let accessed = 1 << 5;
    let entry = |emu: &mut Emulator, addr| read_u64(emu, addr) & !accessed;
    assert_eq!(entry(&mut emu, pml4), pdpt | present_writable);
    assert_eq!(read_u64(&mut emu, pml4 + 8), 0, "one PML4 entry");
    for gib in 0..8 {
        assert_eq!(
            entry(&mut emu, pdpt + gib * 8),
            (pd0 + gib * 0x1000) | present_writable
        );
    }
    assert_eq!(read_u64(&mut emu, pdpt + 8 * 8), 0, "nothing past 8 GiB");
    // The last 2 MiB page below 8 GiB, never touched: its address needs the high dword.
    let last = 8 * 512 - 1;
    assert_eq!(
        read_u64(&mut emu, pd0 + last * 8),
        (last << 21) | 0x83,
        "2 MiB page, present, writable"
    );
    assert_eq!(config.page_tables_size(), 10 * 0x1000);
}

#[test]
fn a_payload_that_returns_leaves_the_cpu_halted_in_the_firmware() {
    let (mut emu, port) = boot(&Config::default(), |a| a.ret());
    for _ in 0..3 {
        assert_eq!(resume(&mut emu), StopReason::Halted);
        let rip = emu.reg(Register::RIP).unwrap();
        assert!(
            (ROM_BASE..ROM_BASE + ROM_SIZE as u64).contains(&rip),
            "halted in the ROM: {rip:#x}"
        );
    }
    assert_eq!(reported(&port), stage_markers());
}

#[test]
fn a_payload_entry_without_ram_ends_as_a_reported_fault() {
    // Identity-mapped, but no RAM behind it: the call's fetch must stop the run with a
    // report, after every stage marker, never panic or run on.
    let config = Config {
        payload_entry: 0x4000_0000,
        ..Config::default()
    };
    let (mut emu, port) = boot(&config, |a| a.hlt());
    let stop = resume(&mut emu);
    assert!(
        matches!(
            stop,
            StopReason::Unmapped {
                rip: 0x4000_0000,
                ..
            }
        ),
        "{stop:?}"
    );
    assert_eq!(reported(&port), stage_markers());
}

#[test]
fn a_payload_entry_outside_the_identity_map_page_faults_and_the_empty_idt_shuts_down() {
    let config = Config {
        payload_entry: 64 << 30,
        ..Config::default()
    };
    // Reported to the embedder: the #PF of the fetch at the entry point.
    let (mut emu, port) = boot(&config, |a| a.hlt());
    let stop = resume(&mut emu);
    assert!(
        matches!(
            stop,
            StopReason::Exception {
                exception: Exception::PageFault { addr, .. },
                rip,
            } if addr == 64 << 30 && rip == 64 << 30
        ),
        "{stop:?}"
    );
    assert_eq!(reported(&port), stage_markers());
    // Delivered by the guest: the firmware's IDT has no entries, so #PF becomes #GP,
    // then #DF, then shutdown, rather than a jump through whatever the RAM holds.
    let (mut emu, _) = boot(&config, |a| a.hlt());
    emu.set_interrupt_delivery(emu_core::InterruptDelivery::Guest);
    let stop = resume(&mut emu);
    assert!(matches!(stop, StopReason::TripleFault { .. }), "{stop:?}");
}
