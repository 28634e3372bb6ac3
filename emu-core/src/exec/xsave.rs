//! The XSAVE feature set for the two state components this CPU has, x87 (0) and SSE (1):
//! XGETBV, XSETBV, XSAVE, XSAVEOPT and XRSTOR on standard-format areas; and the FSGSBASE
//! instructions (RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE).
//!
//! An XSAVE area is the 512-byte FXSAVE image (the legacy region: x87 in bytes 0..24 and
//! 32..160, SSE in 24..32 and 160..416) followed by a 64-byte header whose first quadword
//! is XSTATE_BV (which components the area holds) and second XCOMP_BV (0: standard form).
//! The instructions act on the requested-feature bitmap RFBM = EDX:EAX & XCR0.
//!
//! XINUSE, the processor's "this component is not in its initial configuration" bits, is
//! computed from the registers when needed rather than tracked per instruction: the
//! architecture allows a component in its initial configuration to be reported either
//! way, and one that is not must be reported in use, which the computation guarantees.
//! XSAVEOPT is XSAVE: its init and modified optimizations are optional.

use iced_x86::Code;

use super::x87::fxsave::{self, IMAGE_LEN};
use super::x87::softfp80::MASK80;
use super::x87::state::FCW_INIT;
use super::x87::{read_mem, write_mem};
use crate::cpu::{reg, seg, Cpu};
use crate::exception::Exception;
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};
use crate::sysregs::{cr0, cr4, is_canonical, xcr0};

/// Bytes of a standard-format XSAVE area for the supported components: the legacy region
/// and the header.
pub const AREA_LEN: usize = 576;
/// Offset of the XSAVE header (XSTATE_BV) in the area.
const HEADER: u64 = 512;

/// Byte ranges of the legacy region holding the x87 component.
const X87_RANGES: [(usize, usize); 2] = [(0, 24), (32, 160)];
/// Byte ranges of the legacy region holding the SSE component (MXCSR and MXCSR_MASK,
/// then XMM0..XMM15).
const SSE_RANGES: [(usize, usize); 2] = [(24, 32), (160, IMAGE_LEN)];

const UD: Trap = Trap::Exception(Exception::InvalidOpcode);
const GP0: Trap = Trap::Exception(Exception::GeneralProtection(0));

/// `#UD` unless CR4.OSXSAVE is set: the OS has not enabled the XSAVE feature set.
fn require_osxsave(cpu: &Cpu) -> Result<(), Trap> {
    if cpu.sys.cr4 & cr4::OSXSAVE == 0 {
        return Err(UD);
    }
    Ok(())
}

/// The checks XSAVE and XRSTOR share, in the architecture's order: `#UD` without
/// CR4.OSXSAVE, `#NM` while CR0.TS is set (CR0.EM does not matter), `#GP(0)` unless the
/// area is 64-byte aligned. Returns the area's address.
fn begin_area(cpu: &Cpu, i: &Insn) -> Result<u64, Trap> {
    require_osxsave(cpu)?;
    if cpu.sys.cr0 & cr0::TS != 0 {
        return Err(Trap::Exception(Exception::DeviceNotAvailable));
    }
    let addr = i.ea(cpu);
    if addr & 63 != 0 {
        return Err(GP0);
    }
    Ok(addr)
}

/// EDX:EAX, the instruction mask of XSETBV, XSAVE and XRSTOR.
fn edx_eax(cpu: &Cpu) -> u64 {
    cpu.reg::<4>(reg::RAX) | cpu.reg::<4>(reg::RDX) << 32
}

/// Writes a 64-bit result to EDX:EAX (zeroing the upper halves of RAX and RDX).
fn set_edx_eax(cpu: &mut Cpu, value: u64) {
    cpu.set_reg::<4>(reg::RAX, value & 0xffff_ffff);
    cpu.set_reg::<4>(reg::RDX, value >> 32);
}

/// XINUSE: the components that are not in their initial configuration. x87's is FCW
/// 0x37F, every other field and register 0 and all tags empty; SSE's is XMM0..15 all zero
/// (MXCSR is not part of it).
pub fn xinuse(cpu: &Cpu) -> u64 {
    let x = &cpu.x87;
    let x87_init = x.fcw == FCW_INIT
        && x.status_word() == 0
        && x.valid == 0
        && x.fop == 0
        && x.fip == 0
        && x.fdp == 0
        && x.regs.iter().all(|r| r & MASK80 == 0);
    let sse_init = cpu.xmm.iter().all(|&v| v == 0);
    let mut inuse = 0;
    if !x87_init {
        inuse |= xcr0::X87;
    }
    if !sse_init {
        inuse |= xcr0::SSE;
    }
    inuse
}

/// XGETBV: ECX = 0 reads XCR0, ECX = 1 reads XCR0 & XINUSE (advertised in
/// CPUID.(EAX=0Dh,ECX=1):EAX bit 2). Allowed at any privilege.
fn xgetbv(cpu: &mut Cpu, _: &Insn) -> Step {
    require_osxsave(cpu)?;
    let value = match cpu.reg::<4>(reg::RCX) {
        0 => cpu.sys.xcr0,
        1 => cpu.sys.xcr0 & xinuse(cpu),
        _ => return Err(GP0.into()),
    };
    set_edx_eax(cpu, value);
    Ok(())
}

/// XSETBV: XCR[ECX] = EDX:EAX, at CPL 0 only.
fn xsetbv(cpu: &mut Cpu, _: &Insn) -> Step {
    require_osxsave(cpu)?;
    super::privileged::require_cpl0(cpu)?;
    let index = cpu.reg::<4>(reg::RCX) as u32;
    cpu.sys.xcr0 = cpu.sys.check_xcr(index, edx_eax(cpu))?;
    Ok(())
}

/// XSAVE / XSAVE64 (and XSAVEOPT / XSAVEOPT64, which may behave exactly like it) m:
/// writes the RFBM components to the legacy region and sets their XSTATE_BV bits to
/// XINUSE, leaving every other byte of the area (other XSTATE_BV bits, XCOMP_BV, the
/// reserved and software-available legacy bytes) alone. The REX.W forms store 64-bit x87
/// instruction and data pointers, as FXSAVE64 does. All or nothing.
fn xsave<const REX_W: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = begin_area(cpu, i)?;
    let rfbm = edx_eax(cpu) & cpu.sys.xcr0;
    let header = addr.wrapping_add(HEADER);
    let old_bv = cpu.mmu.read::<8>(header)?;
    let new_bv = (old_bv & !rfbm) | (xinuse(cpu) & rfbm);
    let image = fxsave::image(cpu, REX_W);
    let mut ranges = Vec::with_capacity(4);
    if rfbm & xcr0::X87 != 0 {
        ranges.extend(X87_RANGES);
    }
    if rfbm & xcr0::SSE != 0 {
        ranges.extend(SSE_RANGES);
    }
    // Check every destination before writing any, so a fault leaves memory untouched.
    cpu.mmu.check_writable(header, 8)?;
    for &(start, end) in &ranges {
        cpu.mmu
            .check_writable(addr.wrapping_add(start as u64), (end - start) as u64)?;
    }
    for &(start, end) in &ranges {
        write_mem(cpu, addr.wrapping_add(start as u64), &image[start..end])?;
    }
    cpu.mmu.write::<8>(header, new_bv)?;
    Ok(())
}

/// XRSTOR / XRSTOR64 m: for each RFBM component, loads it from the area if its XSTATE_BV
/// bit is set and puts it in its initial configuration otherwise; MXCSR is loaded from
/// the area whenever SSE is requested, whatever XSTATE_BV says (the standard form's
/// rule). `#GP(0)`, changing nothing, if XSTATE_BV sets a bit XCR0 does not, if header
/// bytes 8..23 (XCOMP_BV, so the compacted form, which this CPU lacks, and the next
/// quadword) are not zero, or if a loaded MXCSR sets a reserved bit.
fn xrstor<const REX_W: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = begin_area(cpu, i)?;
    let rfbm = edx_eax(cpu) & cpu.sys.xcr0;
    let mut header = [0u8; 24];
    read_mem(cpu, addr.wrapping_add(HEADER), &mut header)?;
    let mut bv = [0u8; 8];
    bv.copy_from_slice(&header[..8]);
    let xstate_bv = u64::from_le_bytes(bv);
    if xstate_bv & !cpu.sys.xcr0 != 0 || header[8..].iter().any(|&b| b != 0) {
        return Err(GP0.into());
    }
    if rfbm == 0 {
        return Ok(());
    }
    let mut area = [0u8; IMAGE_LEN];
    read_mem(cpu, addr, &mut area)?;
    // Build the complete FXSAVE64 image the CPU should end up with (components not
    // requested keep their current values) and load it in one step, so that an invalid
    // MXCSR leaves everything unchanged.
    let mut image = fxsave::image(cpu, true);
    if rfbm & xcr0::X87 != 0 {
        for (start, end) in X87_RANGES {
            if xstate_bv & xcr0::X87 != 0 {
                image[start..end].copy_from_slice(&area[start..end]);
            } else {
                image[start..end].fill(0);
            }
        }
        if xstate_bv & xcr0::X87 == 0 {
            image[0..2].copy_from_slice(&FCW_INIT.to_le_bytes());
        } else if !REX_W {
            // The 32-bit format has FCS and FDS (and reserved bytes) above the 32-bit
            // offsets; like FXRSTOR, the pointers become the zero-extended offsets.
            image[12..16].fill(0);
            image[20..24].fill(0);
        }
    }
    if rfbm & xcr0::SSE != 0 {
        image[24..28].copy_from_slice(&area[24..28]);
        let (start, end) = SSE_RANGES[1];
        if xstate_bv & xcr0::SSE != 0 {
            image[start..end].copy_from_slice(&area[start..end]);
        } else {
            image[start..end].fill(0);
        }
    }
    Ok(fxsave::restore(cpu, &image, true)?)
}

/// `#UD` unless CR4.FSGSBASE is set and the CPU is in 64-bit mode (EFER.LMA and CS.L).
fn require_fsgsbase(cpu: &Cpu) -> Result<(), Trap> {
    if cpu.sys.cr4 & cr4::FSGSBASE == 0 || !cpu.in_64bit_mode() {
        return Err(UD);
    }
    Ok(())
}

/// The segment an FSGSBASE instruction names.
const fn base_slot(gs: bool) -> usize {
    if gs {
        seg::GS as usize
    } else {
        seg::FS as usize
    }
}

/// RDFSBASE / RDGSBASE r32 or r64 (`N` = 4 or 8 bytes): the 32-bit forms read the low
/// half and zero-extend it.
fn rdbase<const GS: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_fsgsbase(cpu)?;
    let base = cpu.seg_base[base_slot(GS)];
    cpu.set_reg::<N>(i.dst, base);
    Ok(())
}

/// WRFSBASE / WRGSBASE r32 or r64: the 32-bit forms write the zero-extended register;
/// `#GP(0)` for a non-canonical 64-bit value.
fn wrbase<const GS: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    require_fsgsbase(cpu)?;
    let value = cpu.reg::<N>(i.dst);
    if !is_canonical(value) {
        return Err(GP0.into());
    }
    cpu.seg_base[base_slot(GS)] = value;
    Ok(())
}

/// Registers the XSAVE family and the FSGSBASE instructions.
pub(crate) fn register(t: &mut OpTable) {
    use Code::*;
    t.set(Xgetbv, OpEntry::reg(xgetbv));
    t.set(Xsetbv, OpEntry::reg(xsetbv));
    t.set(Xsave_mem, OpEntry::mem(xsave::<false>));
    t.set(Xsave64_mem, OpEntry::mem(xsave::<true>));
    t.set(Xsaveopt_mem, OpEntry::mem(xsave::<false>));
    t.set(Xsaveopt64_mem, OpEntry::mem(xsave::<true>));
    t.set(Xrstor_mem, OpEntry::mem(xrstor::<false>));
    t.set(Xrstor64_mem, OpEntry::mem(xrstor::<true>));
    t.set(Rdfsbase_r32, OpEntry::reg(rdbase::<false, 4>));
    t.set(Rdfsbase_r64, OpEntry::reg(rdbase::<false, 8>));
    t.set(Rdgsbase_r32, OpEntry::reg(rdbase::<true, 4>));
    t.set(Rdgsbase_r64, OpEntry::reg(rdbase::<true, 8>));
    t.set(Wrfsbase_r32, OpEntry::reg(wrbase::<false, 4>));
    t.set(Wrfsbase_r64, OpEntry::reg(wrbase::<false, 8>));
    t.set(Wrgsbase_r32, OpEntry::reg(wrbase::<true, 4>));
    t.set(Wrgsbase_r64, OpEntry::reg(wrbase::<true, 8>));
}
