//! The XSAVE feature set (XSETBV/XGETBV, XSAVE/XSAVEOPT/XRSTOR over x87 and SSE state)
//! and FSGSBASE (RD/WRFSBASE, RD/WRGSBASE).

use super::*;
use common::{attach_debug_port, reported, DEBUG_PORT};

/// A 64-byte-aligned XSAVE area.
const AREA: u64 = 0x9000;
/// A second XSAVE area.
const AREA2: u64 = 0xa000;
/// FXSAVE images the tests compare XSAVE areas against.
const REF: u64 = 0xb000;
const REF2: u64 = 0xb400;
/// XMM0..XMM15 patterns (16 bytes each), then the MXCSR to load at +0x100.
const PATTERNS: u64 = 0xc000;
/// MXCSR of the known state: round down, all exceptions masked.
const KNOWN_MXCSR: u32 = 0x3f80;

const CR4_PAE: i32 = 1 << 5;
const CR4_FSGSBASE: i32 = 1 << 16;
const CR4_OSXSAVE: i32 = 1 << 18;

/// pi and 1.0 as 80-bit extended values.
const PI80: u128 = 0x4000_c90f_daa2_2168_c235;
const ONE80: u128 = 0x3fff_8000_0000_0000_0000;

fn xmm_pattern(k: usize) -> u128 {
    (k as u128 + 1).wrapping_mul(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f11)
}

fn xmm(k: usize) -> AsmRegisterXmm {
    [
        xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
        xmm14, xmm15,
    ][k]
}

/// Guest code: set CR4 bits `bits` (and PAE, which a CPU with EFER.LMA set, as the bare
/// machine starts, must keep).
fn set_cr4(a: &mut CodeAssembler, bits: i32) -> Result<(), IcedError> {
    a.mov(rax, cr4)?;
    a.or(rax, bits | CR4_PAE)?;
    a.mov(cr4, rax)
}

/// Guest code: set CR4.OSXSAVE and XCR0 = x87 | SSE.
fn enable_xsave(a: &mut CodeAssembler) -> Result<(), IcedError> {
    set_cr4(a, CR4_OSXSAVE)?;
    a.xor(ecx, ecx)?;
    a.xor(edx, edx)?;
    a.mov(eax, 3u32)?;
    a.xsetbv()
}

/// Guest code: the known state: ST0 = pi, ST1 = 1 (TOP = 6), MXCSR = [`KNOWN_MXCSR`],
/// XMMk = `xmm_pattern(k)`.
fn load_known_state(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.fninit()?;
    a.fld1()?;
    a.fldpi()?;
    a.mov(rsi, PATTERNS)?;
    a.ldmxcsr(dword_ptr(rsi + 0x100))?;
    for k in 0..16 {
        a.movdqu(xmm(k), xmmword_ptr(rsi + 16 * k as i32))?;
    }
    Ok(())
}

/// Guest code: EDX:EAX = `mask`.
fn mask(a: &mut CodeAssembler, mask: u64) -> Result<(), IcedError> {
    a.mov(eax, mask as u32)?;
    a.mov(edx, (mask >> 32) as u32)
}

/// Writes the patterns [`load_known_state`] loads.
fn write_patterns(emu: &mut Emulator) {
    for k in 0..16 {
        emu.write_memory(PATTERNS + 16 * k as u64, &xmm_pattern(k).to_le_bytes())
            .unwrap();
    }
    emu.write_memory(PATTERNS + 0x100, &KNOWN_MXCSR.to_le_bytes())
        .unwrap();
}

fn read(emu: &mut Emulator, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    emu.read_memory(addr, &mut b).unwrap();
    b
}

fn u64_at(b: &[u8], k: usize) -> u64 {
    u64::from_le_bytes(b[k..k + 8].try_into().unwrap())
}

fn u128_at(b: &[u8], k: usize) -> u128 {
    u128::from_le_bytes(b[k..k + 16].try_into().unwrap())
}

fn assert_exception(stop: StopReason, expected: Exception, what: &str) {
    assert!(
        matches!(stop, StopReason::Exception { exception, .. } if exception == expected),
        "{what}: expected {expected:?}, got {stop:?}"
    );
}

#[test]
fn xsetbv_sets_xcr0_and_xgetbv_reads_it_and_xinuse() {
    let mut emu = machine(|a| {
        set_cr4(a, CR4_OSXSAVE)?;
        a.mov(dx, DEBUG_PORT as u32)?;
        a.mov(r8d, edx)?;
        // XCR0 at reset: x87 only.
        a.xor(ecx, ecx)?;
        a.xgetbv()?;
        a.mov(r9d, edx)?; // EDX of XGETBV (0)
        a.mov(edx, r8d)?;
        a.out(dx, al)?;
        // XCR0 <- 3, read back.
        a.xor(ecx, ecx)?;
        a.xor(edx, edx)?;
        a.mov(eax, 3u32)?;
        a.xsetbv()?;
        a.mov(rax, -1i64)?; // XGETBV must zero the upper halves
        a.mov(rdx, -1i64)?;
        a.xgetbv()?;
        a.mov(r10, rax)?;
        a.mov(r11, rdx)?;
        a.mov(edx, r8d)?;
        a.out(dx, al)?;
        // XINUSE (ECX = 1): none right after an XRSTOR that initialises both components,
        // then x87 after FLD1, then both after a write to an XMM register.
        a.mov(rdi, AREA)?;
        mask(a, 3)?;
        a.xrstor64(ptr(rdi))?; // XSTATE_BV = 0: both components initialised
        a.mov(ecx, 1u32)?;
        a.xgetbv()?;
        a.mov(edx, r8d)?;
        a.out(dx, al)?;
        a.fld1()?;
        a.mov(ecx, 1u32)?;
        a.xgetbv()?;
        a.mov(edx, r8d)?;
        a.out(dx, al)?;
        a.mov(eax, 1u32)?;
        a.movd(xmm3, eax)?;
        a.mov(ecx, 1u32)?;
        a.xgetbv()?;
        a.mov(edx, r8d)?;
        a.out(dx, al)?;
        // CPUID reports the XSAVE leaf for this XCR0.
        a.mov(eax, 0xdu32)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.mov(r12d, eax)?;
        a.mov(r13d, ebx)?;
        a.mov(r14d, ecx)?;
        a.hlt()
    });
    let port = attach_debug_port(&mut emu);
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(
        reported(&port),
        vec![1, 3, 0, 1, 3],
        "XCR0 at reset, after XSETBV, then XINUSE: none, x87, x87 and SSE"
    );
    assert_eq!(reg(&emu, Register::R9), 0);
    assert_eq!(reg(&emu, Register::R10), 3, "upper half of RAX cleared");
    assert_eq!(reg(&emu, Register::R11), 0, "upper half of RDX cleared");
    assert_eq!(emu.cpu().sys.xcr0, 3);
    assert_eq!(reg(&emu, Register::R12), 3, "supported XCR0 bits");
    assert_eq!(reg(&emu, Register::R13), 576, "area size for XCR0");
    assert_eq!(reg(&emu, Register::R14), 576, "largest area size");
}

#[test]
fn xsetbv_and_xgetbv_reject_what_the_sdm_rejects() {
    // (ECX, EDX:EAX, XSETBV?) with CR4.OSXSAVE set, at CPL 0: each #GP(0).
    for (ecx_value, value, set) in [
        (0u32, 2u64, true),     // x87 bit clear
        (0, 0, true),           // x87 bit clear
        (0, 7, true),           // AVX is not supported
        (0, 1 << 32 | 3, true), // reserved high bit
        (1, 3, true),           // XCR1 does not exist for XSETBV
        (2, 0, false),          // XGETBV of a register that does not exist
        (0x8000_0000, 0, false),
    ] {
        let mut emu = machine(|a| {
            set_cr4(a, CR4_OSXSAVE)?;
            a.mov(ecx, ecx_value)?;
            mask(a, value)?;
            if set {
                a.xsetbv()?;
            } else {
                a.xgetbv()?;
            }
            a.hlt()
        });
        let stop = run(&mut emu);
        assert_exception(
            stop,
            Exception::GeneralProtection(0),
            &format!("XSETBV={set} ECX={ecx_value:#x} EDX:EAX={value:#x}"),
        );
        assert_eq!(emu.cpu().sys.xcr0, 1, "a faulting XSETBV leaves XCR0 alone");
    }
    // XSETBV is privileged; XGETBV is not.
    let mut emu = machine(|a| {
        a.xor(ecx, ecx)?;
        a.xgetbv()?;
        a.mov(r8, rax)?;
        mask(a, 3)?;
        a.xsetbv()?;
        a.hlt()
    });
    emu.cpu_mut().sys.cr4 |= CR4_OSXSAVE as u64;
    emu.cpu_mut().sys.cpl = 3;
    assert_exception(
        run(&mut emu),
        Exception::GeneralProtection(0),
        "XSETBV at CPL 3",
    );
    assert_eq!(reg(&emu, Register::R8), 1, "XGETBV ran at CPL 3");
    assert_eq!(emu.cpu().sys.xcr0, 1);
}

#[test]
fn xsave_family_is_undefined_until_cr4_osxsave_and_cpuid_mirrors_it() {
    let programs: [(&str, Program); 6] = [
        ("xgetbv", |a| a.xgetbv()),
        ("xsetbv", |a| a.xsetbv()),
        ("xsave", |a| a.xsave(ptr(AREA))),
        ("xsave64", |a| a.xsave64(ptr(AREA))),
        ("xsaveopt64", |a| a.xsaveopt64(ptr(AREA))),
        ("xrstor64", |a| a.xrstor64(ptr(AREA))),
    ];
    for (name, body) in programs {
        let mut emu = machine(|a| {
            a.xor(ecx, ecx)?;
            mask(a, 3)?;
            body(a)?;
            a.hlt()
        });
        assert_exception(run(&mut emu), Exception::InvalidOpcode, name);
    }
    let mut emu = machine(|a| {
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.mov(r8d, ecx)?;
        set_cr4(a, CR4_OSXSAVE)?;
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.mov(r9d, ecx)?;
        a.hlt()
    });
    assert_eq!(run(&mut emu), StopReason::Halted);
    let (before, after) = (reg(&emu, Register::R8), reg(&emu, Register::R9));
    assert_ne!(before & (1 << 26), 0, "XSAVE is advertised");
    assert_eq!(before & (1 << 27), 0, "OSXSAVE clear before CR4.OSXSAVE");
    assert_ne!(after & (1 << 27), 0, "OSXSAVE follows CR4.OSXSAVE");
}

/// XSAVE64 of a known state writes exactly the FXSAVE64 image into the legacy region,
/// XSTATE_BV = 3, and nothing else; XSAVEOPT64 writes the same; XSAVE (32-bit pointer
/// format) matches FXSAVE; a partial mask writes only its component and XSTATE_BV bit;
/// XRSTOR64 from the area brings back the state after it was clobbered.
#[test]
fn xsave_writes_the_legacy_region_and_xstate_bv_and_xrstor_restores_it() {
    const OPT: u64 = 0xd000;
    const NARROW: u64 = 0xd400;
    const NARROW_REF: u64 = 0xd800;
    let mut emu = machine(|a| {
        enable_xsave(a)?;
        load_known_state(a)?;
        mask(a, u64::MAX)?;
        a.mov(rdi, AREA)?;
        a.xsave64(ptr(rdi))?;
        a.mov(rdi, OPT)?;
        a.xsaveopt64(ptr(rdi))?;
        a.mov(rdi, NARROW)?;
        a.xsave(ptr(rdi))?;
        a.mov(rdi, AREA2)?;
        mask(a, 2)?; // SSE only
        a.xsave64(ptr(rdi))?;
        a.mov(rdi, REF)?;
        a.fxsave64(ptr(rdi))?;
        a.mov(rdi, NARROW_REF)?;
        a.fxsave(ptr(rdi))?;
        // Clobber everything, then restore from AREA.
        a.fninit()?;
        a.fldz()?;
        a.fldl2e()?;
        a.fldlg2()?;
        for k in 0..16 {
            a.pcmpeqb(xmm(k), xmm(k))?;
        }
        a.mov(rsi, PATTERNS)?;
        a.ldmxcsr(dword_ptr(rsi + 0x104))?;
        mask(a, u64::MAX)?;
        a.mov(rdi, AREA)?;
        a.xrstor64(ptr(rdi))?;
        a.mov(rdi, REF2)?;
        a.fxsave64(ptr(rdi))?;
        a.hlt()
    });
    write_patterns(&mut emu);
    emu.write_memory(PATTERNS + 0x104, &0x1f80u32.to_le_bytes())
        .unwrap();
    // Areas start filled with a marker, so unwritten bytes show; their headers have
    // XSTATE_BV = 0 (AREA2: bits 4..7 set, which a save must keep) and XCOMP_BV = 0.
    for base in [AREA, AREA2, OPT, NARROW] {
        let mut fill = vec![0xccu8; 576];
        fill[512..576].fill(0);
        if base == AREA2 {
            fill[512] = 0xf0;
        }
        emu.write_memory(base, &fill).unwrap();
    }
    assert_eq!(run(&mut emu), StopReason::Halted);

    let area = read(&mut emu, AREA, 576);
    let fx = read(&mut emu, REF, 512);
    // The known state, field by field.
    assert_eq!(u16::from_le_bytes([area[0], area[1]]), 0x037f, "FCW");
    assert_eq!(
        u16::from_le_bytes([area[2], area[3]]) & 0x3800,
        0x3000,
        "TOP = 6"
    );
    assert_eq!(area[4], 0xc0, "abridged tags: two registers valid");
    assert_eq!(
        u32::from_le_bytes(area[24..28].try_into().unwrap()),
        KNOWN_MXCSR
    );
    assert_eq!(
        u32::from_le_bytes(area[28..32].try_into().unwrap()),
        0xffff,
        "MXCSR_MASK"
    );
    assert_eq!(u128_at(&area, 32) & ((1 << 80) - 1), PI80, "ST0");
    assert_eq!(u128_at(&area, 48) & ((1 << 80) - 1), ONE80, "ST1");
    for k in 0..16 {
        assert_eq!(u128_at(&area, 160 + 16 * k), xmm_pattern(k), "XMM{k}");
    }
    // Exactly FXSAVE64's image, nothing beyond it in the legacy region, XSTATE_BV = 3,
    // the rest of the header untouched.
    assert_eq!(&area[..416], &fx[..416], "legacy region = FXSAVE64 image");
    assert!(
        area[416..512].iter().all(|&b| b == 0xcc),
        "bytes 416..511 untouched"
    );
    assert_eq!(u64_at(&area, 512), 3, "XSTATE_BV");
    assert!(
        area[520..576].iter().all(|&b| b == 0),
        "XCOMP_BV and the rest untouched"
    );
    assert_eq!(
        read(&mut emu, OPT, 576),
        area,
        "XSAVEOPT64 wrote what XSAVE64 wrote"
    );
    let narrow = read(&mut emu, NARROW, 576);
    let narrow_fx = read(&mut emu, NARROW_REF, 512);
    assert_eq!(
        &narrow[..416],
        &narrow_fx[..416],
        "XSAVE = FXSAVE in 32-bit format"
    );
    assert_eq!(u64_at(&narrow, 512), 3);

    // SSE only: the x87 bytes keep the marker, XSTATE_BV keeps bits 4..7 and gains bit 1.
    let sse = read(&mut emu, AREA2, 576);
    assert!(
        sse[0..24].iter().chain(&sse[32..160]).all(|&b| b == 0xcc),
        "x87 not written"
    );
    assert_eq!(&sse[24..32], &area[24..32], "MXCSR and MXCSR_MASK written");
    assert_eq!(&sse[160..416], &area[160..416], "XMM registers written");
    assert_eq!(
        u64_at(&sse, 512),
        0xf2,
        "XSTATE_BV: bit 1 set, bit 0 and 4..7 as they were"
    );

    // XRSTOR64 brought the whole state back.
    assert_eq!(
        &read(&mut emu, REF2, 416)[..],
        &fx[..416],
        "state after XRSTOR64"
    );
    let cpu = emu.cpu();
    assert_eq!(cpu.mxcsr, KNOWN_MXCSR);
    for k in 0..16 {
        assert_eq!(cpu.xmm[k], xmm_pattern(k));
    }
}

/// XRSTOR: a requested component whose XSTATE_BV bit is clear gets its initial
/// configuration, one not requested keeps its value, and MXCSR is loaded from the area
/// whenever SSE is requested, whatever XSTATE_BV says.
#[test]
fn xrstor_initialises_components_whose_xstate_bv_bit_is_clear() {
    const AREA_MXCSR: u32 = 0x7f80;
    // (RFBM, XSTATE_BV in the area)
    for (rfbm, xstate_bv) in [(3u64, 0u64), (1, 0), (2, 0), (3, 1), (3, 2)] {
        let mut emu = machine(|a| {
            enable_xsave(a)?;
            load_known_state(a)?;
            mask(a, 3)?;
            a.mov(rdi, AREA)?;
            a.xsave64(ptr(rdi))?;
            a.mov(qword_ptr(rdi + 512), xstate_bv as i32)?;
            a.mov(dword_ptr(rdi + 24), AREA_MXCSR)?;
            // Change the live state, so a loaded component is told apart from a kept one.
            a.fld1()?;
            for k in 0..16 {
                a.paddq(xmm(k), xmm(k))?;
            }
            mask(a, rfbm)?;
            a.xrstor64(ptr(rdi))?;
            a.mov(ecx, 1u32)?;
            a.xgetbv()?;
            a.mov(r15, rax)?;
            a.mov(rdi, REF)?;
            a.fxsave64(ptr(rdi))?;
            a.hlt()
        });
        write_patterns(&mut emu);
        assert_eq!(run(&mut emu), StopReason::Halted);
        let what = format!("RFBM {rfbm:#x}, XSTATE_BV {xstate_bv:#x}");
        let area = read(&mut emu, AREA, 512);
        let fx = read(&mut emu, REF, 512);
        let x87: Vec<u8> = fx[0..24].iter().chain(&fx[32..160]).copied().collect();
        let saved_x87: Vec<u8> = area[0..24].iter().chain(&area[32..160]).copied().collect();
        if rfbm & 1 == 0 {
            assert_eq!(
                u16::from_le_bytes([fx[2], fx[3]]) >> 11 & 7,
                5,
                "{what}: x87 kept (TOP 5)"
            );
        } else if xstate_bv & 1 == 0 {
            let mut init = vec![0u8; x87.len()];
            init[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
            assert_eq!(x87, init, "{what}: x87 initialised (registers zeroed too)");
        } else {
            assert_eq!(x87, saved_x87, "{what}: x87 loaded");
        }
        let cpu = emu.cpu();
        if rfbm & 2 == 0 {
            assert_eq!(cpu.mxcsr, KNOWN_MXCSR, "{what}: MXCSR not requested, kept");
            for k in 0..16 {
                assert_eq!(
                    cpu.xmm[k],
                    doubled_qwords(xmm_pattern(k)),
                    "{what}: XMM{k} kept"
                );
            }
        } else {
            assert_eq!(
                cpu.mxcsr, AREA_MXCSR,
                "{what}: MXCSR loaded regardless of XSTATE_BV"
            );
            for k in 0..16 {
                let expected = if xstate_bv & 2 == 0 {
                    0
                } else {
                    xmm_pattern(k)
                };
                assert_eq!(cpu.xmm[k], expected, "{what}: XMM{k}");
            }
        }
        // Right after XRSTOR, exactly the components it loaded are in use (here each
        // loaded one holds non-initial values and each initialised one is initial).
        let kept = 3 & !rfbm;
        assert_eq!(
            reg(&emu, Register::R15),
            (rfbm & xstate_bv) | kept,
            "{what}: XINUSE"
        );
    }
}

/// What PADDQ of a register with itself leaves: each quadword doubled.
fn doubled_qwords(v: u128) -> u128 {
    let lo = (v as u64).wrapping_mul(2);
    let hi = ((v >> 64) as u64).wrapping_mul(2);
    (hi as u128) << 64 | lo as u128
}

#[test]
fn misaligned_areas_bad_headers_and_cr0_ts_fault() {
    // (what, XSTATE_BV, XCOMP_BV, header byte 16, MXCSR in the area, misaligned)
    let cases: [(&str, u64, u64, u8, u32, bool); 6] = [
        ("XSTATE_BV bit 2 (AVX) not in XCR0", 4, 0, 0, 0x1f80, false),
        ("XSTATE_BV bit 63", 1 << 63, 0, 0, 0x1f80, false),
        (
            "compacted form (XCOMP_BV bit 63)",
            3,
            1 << 63,
            0,
            0x1f80,
            false,
        ),
        ("header bytes 16..23 not zero", 3, 0, 1, 0x1f80, false),
        ("reserved MXCSR bit", 3, 0, 0, 0x1_1f80, false),
        ("misaligned XRSTOR", 3, 0, 0, 0x1f80, true),
    ];
    for (what, xstate_bv, xcomp_bv, byte16, mxcsr, misaligned) in cases {
        let mut emu = machine(|a| {
            enable_xsave(a)?;
            a.fld1()?;
            a.mov(rax, 0x1234_5678u64)?;
            a.movq(xmm0, rax)?;
            mask(a, u64::MAX)?;
            a.mov(rdi, if misaligned { AREA + 16 } else { AREA })?;
            a.xrstor64(ptr(rdi))?;
            a.hlt()
        });
        let mut header = [0u8; 24];
        header[0..8].copy_from_slice(&xstate_bv.to_le_bytes());
        header[8..16].copy_from_slice(&xcomp_bv.to_le_bytes());
        header[16] = byte16;
        emu.write_memory(AREA + 512, &header).unwrap();
        emu.write_memory(AREA + 24, &mxcsr.to_le_bytes()).unwrap();
        assert_exception(run(&mut emu), Exception::GeneralProtection(0), what);
        let cpu = emu.cpu();
        assert_eq!(cpu.xmm[0], 0x1234_5678, "{what}: XMM0 unchanged");
        assert_eq!(cpu.mxcsr, 0x1f80, "{what}: MXCSR unchanged");
        assert_eq!(cpu.x87.valid, 0x80, "{what}: x87 unchanged");
    }

    // XSAVE to an area aligned to 32 but not 64 bytes: #GP(0), nothing written.
    let mut emu = machine(|a| {
        enable_xsave(a)?;
        mask(a, 3)?;
        a.mov(rdi, AREA + 32)?;
        a.xsave64(ptr(rdi))?;
        a.hlt()
    });
    assert_exception(
        run(&mut emu),
        Exception::GeneralProtection(0),
        "misaligned XSAVE",
    );
    assert!(read(&mut emu, AREA, 1024).iter().all(|&b| b == 0));

    // CR0.TS: #NM for both; CR0.EM alone does not matter to XSAVE.
    for (cr0_bits, restore, faults) in [
        (1u32 << 3, false, true),
        (1 << 3, true, true),
        (1 << 2, false, false),
    ] {
        let mut emu = machine(|a| {
            enable_xsave(a)?;
            a.fld1()?;
            a.mov(rax, cr0)?;
            a.or(eax, cr0_bits)?;
            a.mov(cr0, rax)?;
            mask(a, 3)?;
            a.mov(rdi, AREA)?;
            if restore {
                a.xrstor(ptr(rdi))?;
            } else {
                a.xsave(ptr(rdi))?;
            }
            a.hlt()
        });
        let stop = run(&mut emu);
        let what = format!("CR0 bits {cr0_bits:#x}, XRSTOR {restore}");
        if faults {
            assert_exception(stop, Exception::DeviceNotAvailable, &what);
        } else {
            assert_eq!(stop, StopReason::Halted, "{what}");
            assert_eq!(
                u64_at(&read(&mut emu, AREA, 576), 512),
                1,
                "{what}: x87 in use"
            );
        }
    }
}

#[test]
fn fsgsbase_reads_and_writes_the_segment_bases() {
    let mut emu = machine(|a| {
        set_cr4(a, CR4_FSGSBASE)?;
        a.mov(rax, 0xffff_8000_1234_5000u64)?;
        a.wrfsbase(rax)?;
        a.rdfsbase(r8)?;
        a.mov(rax, 0x0000_7fff_dead_b000u64)?;
        a.wrgsbase(rax)?;
        a.rdgsbase(r9)?;
        a.mov(r10, -1i64)?;
        a.rdgsbase(r10d)?; // low half, zero-extended
                           // RDMSR sees the base WRGSBASE wrote.
        a.mov(ecx, 0xc000_0101u32)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(r11, rax)?;
        // The 32-bit form writes the zero-extended register, and FS: operands use it.
        a.mov(rcx, 0xffff_ffff_0000_8000u64)?;
        a.wrfsbase(ecx)?;
        a.rdfsbase(r12)?;
        a.mov(r13, qword_ptr(0x10u64).fs())?;
        a.hlt()
    });
    emu.write_memory(0x8010, &0x0bad_cafe_u64.to_le_bytes())
        .unwrap();
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R8), 0xffff_8000_1234_5000);
    assert_eq!(reg(&emu, Register::R9), 0x0000_7fff_dead_b000);
    assert_eq!(reg(&emu, Register::R10), 0xdead_b000);
    assert_eq!(reg(&emu, Register::R11), 0x0000_7fff_dead_b000);
    assert_eq!(reg(&emu, Register::R12), 0x8000);
    assert_eq!(
        reg(&emu, Register::R13),
        0x0bad_cafe,
        "FS-relative load at the new base"
    );
    assert_eq!(reg(&emu, Register::GS), 0x0000_7fff_dead_b000);

    // Usable at CPL 3 once the OS has set CR4.FSGSBASE.
    let mut emu = machine(|a| {
        a.mov(rax, 0x4000u64)?;
        a.wrgsbase(rax)?;
        a.rdgsbase(rbx)?;
        a.hlt()
    });
    emu.cpu_mut().sys.cr4 |= CR4_FSGSBASE as u64;
    emu.cpu_mut().sys.cpl = 3;
    // The closing HLT is privileged, so the run ends with its #GP.
    assert_exception(
        run(&mut emu),
        Exception::GeneralProtection(0),
        "HLT at CPL 3",
    );
    assert_eq!(reg(&emu, Register::RBX), 0x4000);
}

#[test]
fn fsgsbase_is_undefined_without_cr4_fsgsbase_and_rejects_non_canonical_bases() {
    let programs: [(&str, Program); 4] = [
        ("rdfsbase", |a| a.rdfsbase(rax)),
        ("rdgsbase", |a| a.rdgsbase(eax)),
        ("wrfsbase", |a| a.wrfsbase(rax)),
        ("wrgsbase", |a| a.wrgsbase(eax)),
    ];
    for (name, body) in programs {
        let mut emu = machine(body);
        assert_exception(run(&mut emu), Exception::InvalidOpcode, name);
    }
    for value in [
        0x0000_8000_0000_0000u64,
        0xffff_7fff_ffff_f000,
        0x8000_0000_0000_0000,
    ] {
        for use_gs in [false, true] {
            let mut emu = machine(|a| {
                set_cr4(a, CR4_FSGSBASE)?;
                a.mov(rax, 0x5000u64)?;
                a.wrfsbase(rax)?;
                a.wrgsbase(rax)?;
                a.mov(rax, value)?;
                if use_gs {
                    a.wrgsbase(rax)?;
                } else {
                    a.wrfsbase(rax)?;
                }
                a.hlt()
            });
            let what = format!("{} <- {value:#x}", if use_gs { "GS" } else { "FS" });
            assert_exception(run(&mut emu), Exception::GeneralProtection(0), &what);
            assert_eq!(reg(&emu, Register::FS), 0x5000, "{what}: FS base unchanged");
            assert_eq!(reg(&emu, Register::GS), 0x5000, "{what}: GS base unchanged");
        }
    }
}
