//! SSE, SSE2, SSE3, SSSE3, SSE4.1 and SSE4.2 (legacy, non-VEX encodings).
//!
//! * `softfp.rs`: IEEE arithmetic in software with x86 MXCSR semantics (rounding control,
//!   the six sticky flags, DAZ, FTZ, x86 NaN rules). Host floating point is never used,
//!   so results are the same on x86-64 and aarch64 hosts.
//! * `moves.rs`: loads, stores and register moves, MOVD/MOVQ, MOVMSK*, MASKMOVDQU,
//!   LDMXCSR/STMXCSR, fences, prefetches and CLFLUSH.
//! * `int.rs`: packed integer arithmetic, compares, logic and shifts.
//! * `float.rs`: packed and scalar floating-point arithmetic, compares, MIN/MAX, SQRT,
//!   RCP/RSQRT, COMIS/UCOMIS, horizontal operations, DPPS/DPPD, ROUND*.
//! * `convert.rs`: every conversion between integers, singles and doubles.
//! * `shuffle.rs`: shuffles, unpacks, packs, blends, inserts and extracts, sign and zero
//!   extension.
//! * `text.rs`: the SSE4.2 string compares (PCMPESTRI/M, PCMPISTRI/M) and CRC32.
//!
//! Operand conventions follow [`crate::insn::Insn`]: the first register operand is in
//! `dst`, the second in `src`; with a memory operand, the register operand is in `dst`.
//!
//! Exceptions: a legacy-SSE 16-byte memory operand must be 16-byte aligned (#GP(0))
//! except for the explicitly unaligned instructions (MOVUPS, MOVDQU, LDDQU, ...).
//! Floating-point exceptions are computed into temporaries; when one is unmasked the
//! flags are updated as the hardware does and #XM is raised with the destination
//! untouched.

pub mod softfp;

mod convert;
mod float;
mod int;
mod moves;
mod shuffle;
mod text;

use crate::cpu::Cpu;
use crate::exception::Exception;
use crate::insn::{Insn, OpTable, Trap};

use softfp::{Format, ALL_FLAGS, DE, IE, MASK_SHIFT, ZE};

/// Registers every SSE-family instruction.
pub(crate) fn register(t: &mut OpTable) {
    moves::register(t);
    int::register(t);
    float::register(t);
    convert::register(t);
    shuffle::register(t);
    text::register(t);
}

/// XMM register `r`.
#[inline(always)]
pub(crate) fn xmm(cpu: &Cpu, r: u8) -> u128 {
    cpu.xmm[r as usize & 15]
}

/// Writes XMM register `r`.
#[inline(always)]
pub(crate) fn set_xmm(cpu: &mut Cpu, r: u8, v: u128) {
    cpu.xmm[r as usize & 15] = v;
}

/// #GP(0), for misaligned operands and reserved MXCSR bits.
#[inline]
pub(crate) fn gp0() -> Trap {
    Trap::Exception(Exception::GeneralProtection(0))
}

/// Reads the 16-byte memory operand; with `ALIGNED`, a misaligned address is #GP(0).
#[inline(always)]
pub(crate) fn load128<const ALIGNED: bool>(cpu: &mut Cpu, i: &Insn) -> Result<u128, Trap> {
    let addr = i.ea(cpu);
    if ALIGNED && addr & 15 != 0 {
        return Err(gp0());
    }
    Ok(cpu.mmu.read_u128(addr)?)
}

/// Writes the 16-byte memory operand; with `ALIGNED`, a misaligned address is #GP(0).
#[inline(always)]
pub(crate) fn store128<const ALIGNED: bool>(cpu: &mut Cpu, i: &Insn, v: u128) -> Result<(), Trap> {
    let addr = i.ea(cpu);
    if ALIGNED && addr & 15 != 0 {
        return Err(gp0());
    }
    Ok(cpu.mmu.write_u128(addr, v)?)
}

/// The second operand of a full-width operation: XMM `src`, or the (aligned) 16-byte
/// memory operand.
#[inline(always)]
pub(crate) fn src128<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Result<u128, Trap> {
    if MEM {
        load128::<true>(cpu, i)
    } else {
        Ok(xmm(cpu, i.src))
    }
}

/// The second operand of an operation that reads only the low `N` bytes (1, 2, 4 or 8)
/// of it: XMM `src` whole, or `N` bytes of memory zero-extended (no alignment rule).
#[inline(always)]
pub(crate) fn src_low<const MEM: bool, const N: usize>(
    cpu: &mut Cpu,
    i: &Insn,
) -> Result<u128, Trap> {
    if MEM {
        Ok(super::load::<N>(cpu, i)? as u128)
    } else {
        Ok(xmm(cpu, i.src))
    }
}

/// The scalar second operand of format `F`: the low lane of XMM `src` or memory.
#[inline(always)]
pub(crate) fn src_scalar<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Result<u64, Trap> {
    let v = if F::BITS == 32 {
        src_low::<MEM, 4>(cpu, i)?
    } else {
        src_low::<MEM, 8>(cpu, i)?
    };
    Ok(lane::<F>(v, 0))
}

/// Mask of one lane of format `F`.
#[inline(always)]
pub(crate) const fn lane_mask<F: Format>() -> u64 {
    if F::BITS >= 64 {
        u64::MAX
    } else {
        (1u64 << F::BITS) - 1
    }
}

/// Lane `k` of a vector of `F` values.
#[inline(always)]
pub(crate) fn lane<F: Format>(v: u128, k: usize) -> u64 {
    (v >> (k as u32 * F::BITS)) as u64 & lane_mask::<F>()
}

/// `v` with lane `k` replaced by `x`.
#[inline(always)]
pub(crate) fn with_lane<F: Format>(v: u128, k: usize, x: u64) -> u128 {
    let shift = k as u32 * F::BITS;
    let m = (lane_mask::<F>() as u128) << shift;
    (v & !m) | (((x & lane_mask::<F>()) as u128) << shift)
}

/// Number of `F` lanes in an XMM register.
#[inline(always)]
pub(crate) const fn lanes<F: Format>() -> usize {
    (128 / F::BITS) as usize
}

/// Records the floating-point exceptions an instruction detected and decides whether it
/// completes. Returns #XM if any is unmasked; the caller then writes no result.
///
/// The hardware checks the pre-computation exceptions (IE, DE, ZE) of every lane first:
/// if one of those is unmasked, only they are recorded. Otherwise the post-computation
/// ones (OE, UE, PE) are recorded too, and any unmasked exception faults.
#[inline]
pub(crate) fn commit_fp(cpu: &mut Cpu, flags: u32) -> Result<(), Trap> {
    let flags = flags & ALL_FLAGS;
    if flags == 0 {
        return Ok(());
    }
    let unmasked = flags & !(cpu.mxcsr >> MASK_SHIFT);
    let pre = flags & (IE | DE | ZE);
    if pre & unmasked != 0 {
        cpu.mxcsr |= pre;
        return Err(Trap::Exception(Exception::SimdFloatingPoint));
    }
    cpu.mxcsr |= flags;
    if unmasked != 0 {
        return Err(Trap::Exception(Exception::SimdFloatingPoint));
    }
    Ok(())
}

/// Lane views of a 128-bit value, little-endian lane order.
pub(crate) mod lanes {
    /// The 16 bytes.
    #[inline(always)]
    pub fn u8s(v: u128) -> [u8; 16] {
        v.to_le_bytes()
    }

    /// From 16 bytes.
    #[inline(always)]
    pub fn from_u8s(b: [u8; 16]) -> u128 {
        u128::from_le_bytes(b)
    }

    /// The 8 words.
    #[inline(always)]
    pub fn u16s(v: u128) -> [u16; 8] {
        std::array::from_fn(|k| (v >> (16 * k)) as u16)
    }

    /// From 8 words.
    #[inline(always)]
    pub fn from_u16s(w: [u16; 8]) -> u128 {
        w.iter()
            .enumerate()
            .fold(0, |acc, (k, &x)| acc | (x as u128) << (16 * k))
    }

    /// The 4 doublewords.
    #[inline(always)]
    pub fn u32s(v: u128) -> [u32; 4] {
        std::array::from_fn(|k| (v >> (32 * k)) as u32)
    }

    /// From 4 doublewords.
    #[inline(always)]
    pub fn from_u32s(d: [u32; 4]) -> u128 {
        d.iter()
            .enumerate()
            .fold(0, |acc, (k, &x)| acc | (x as u128) << (32 * k))
    }

    /// The 2 quadwords.
    #[inline(always)]
    pub fn u64s(v: u128) -> [u64; 2] {
        [v as u64, (v >> 64) as u64]
    }

    /// From 2 quadwords.
    #[inline(always)]
    pub fn from_u64s(q: [u64; 2]) -> u128 {
        q[0] as u128 | (q[1] as u128) << 64
    }
}

/// Helpers for the handler tests of this module's files.
#[cfg(test)]
pub(crate) mod test_util {
    use emu_mmu::Mmu;

    use crate::cpu::Cpu;
    use crate::insn::{Handler, Insn};

    /// Where test memory operands live (16-byte aligned).
    pub const MEM: u64 = 0x1000;

    /// A CPU with 64 KiB of RAM at address 0.
    pub fn cpu() -> Cpu {
        let mut cpu = Cpu::new(Mmu::default());
        cpu.mmu.add_ram(0, 0x10000).expect("map test RAM");
        cpu
    }

    /// A record running `exec` with registers `dst`, `src`, immediate `imm` and a
    /// memory operand at absolute address `addr`.
    pub fn insn(exec: Handler, dst: u8, src: u8, imm: u64, addr: u64) -> Insn {
        Insn {
            disp: addr,
            imm,
            dst,
            src,
            ..Insn::new(exec, 0, 4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::softfp::{OE, PE, UE};
    use super::*;

    #[test]
    fn unmasked_precomputation_exceptions_hide_the_postcomputation_ones() {
        let mut cpu = test_util::cpu();
        // IE unmasked and raised, PE masked: only IE is recorded, and #XM.
        cpu.mxcsr = 0x1f80 & !(IE << MASK_SHIFT);
        let r = commit_fp(&mut cpu, IE | PE);
        assert_eq!(r, Err(Trap::Exception(Exception::SimdFloatingPoint)));
        assert_eq!(cpu.mxcsr & ALL_FLAGS, IE);
        // DE masked, OE unmasked: everything is recorded, then #XM.
        cpu.mxcsr = 0x1f80 & !(OE << MASK_SHIFT);
        let r = commit_fp(&mut cpu, DE | OE | PE);
        assert!(r.is_err());
        assert_eq!(cpu.mxcsr & ALL_FLAGS, DE | OE | PE);
        // All masked: recorded, no fault.
        cpu.mxcsr = 0x1f80;
        assert_eq!(commit_fp(&mut cpu, UE | PE), Ok(()));
        assert_eq!(cpu.mxcsr, 0x1f80 | UE | PE);
    }

    #[test]
    fn lanes_round_trip() {
        let v = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128;
        assert_eq!(lanes::from_u8s(lanes::u8s(v)), v);
        assert_eq!(lanes::from_u16s(lanes::u16s(v)), v);
        assert_eq!(lanes::from_u32s(lanes::u32s(v)), v);
        assert_eq!(lanes::from_u64s(lanes::u64s(v)), v);
        assert_eq!(lane::<softfp::F32>(v, 3), 0x0011_2233);
        assert_eq!(with_lane::<softfp::F64>(v, 1, 5) >> 64, 5);
    }
}
