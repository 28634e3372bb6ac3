//! Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR (by 1, CL, imm8) and
//! SHLD/SHRD (by CL, imm8). Flags are computed eagerly.
//!
//! A masked count of zero leaves flags and destination untouched (except that a 32-bit
//! register destination is still written, so its upper half is cleared, as on hardware). Flags the manual calls
//! undefined (OF for counts above 1, AF, CF for SHL/SHR counts of at least the width) get
//! the values common Intel parts produce where cheap; the differential tests mask them.

use iced_x86::Code;

use crate::cpu::{mask, reg, sext, Cpu};
use crate::flags::{self, parity};
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// Shift/rotate kinds, in opcode-group-2 order (`/0` .. `/7`, SAL aliased to SHL).
const ROL: u8 = 0;
const ROR: u8 = 1;
const RCL: u8 = 2;
const RCR: u8 = 3;
const SHL: u8 = 4;
const SHR: u8 = 5;
const SAR: u8 = 7;

/// Where the count comes from.
const BY_ONE: u8 = 0;
const BY_CL: u8 = 1;
const BY_IMM: u8 = 2;

fn result_flags<const N: usize>(r: u64, cf: bool, of: bool) -> u64 {
    let mut f = 0;
    if cf {
        f |= flags::CF;
    }
    if of {
        f |= flags::OF;
    }
    if parity(r) {
        f |= flags::PF;
    }
    if r & mask::<N>() == 0 {
        f |= flags::ZF;
    }
    if r >> (N * 8 - 1) & 1 != 0 {
        f |= flags::SF;
    }
    f
}

/// Computes `op a, count` for an `N`-byte operand. Returns the result and the new
/// arithmetic flags, or `None` when the count leaves everything unchanged.
fn shift<const OP: u8, const N: usize>(cpu: &Cpu, a: u64, count: u64) -> Option<(u64, u64)> {
    let bits = (N * 8) as u64;
    let count = count & if N == 8 { 63 } else { 31 };
    if count == 0 {
        return None;
    }
    let msb = |v: u64| v >> (bits - 1) & 1 != 0;
    // Only the rotates keep (or read) flags from before; the shifts set all of them, so
    // they must not pay for materializing the old ones.
    let old = || cpu.flags.compute();
    match OP {
        SHL => {
            let r = if count < bits { a << count } else { 0 } & mask::<N>();
            let cf = count <= bits && (a >> (bits - count)) & 1 != 0;
            Some((r, result_flags::<N>(r, cf, msb(r) ^ cf)))
        }
        SHR => {
            let r = if count < bits { a >> count } else { 0 };
            let cf = count <= bits && (a >> (count - 1)) & 1 != 0;
            Some((r, result_flags::<N>(r, cf, msb(a))))
        }
        SAR => {
            let s = sext::<N>(a) as i64;
            let r = (s >> count.min(63)) as u64 & mask::<N>();
            let cf = (s >> (count - 1).min(63)) & 1 != 0;
            Some((r, result_flags::<N>(r, cf, false)))
        }
        ROL | ROR => {
            let rot = count % bits;
            let r = if OP == ROL {
                ((a << rot) | (a >> ((bits - rot) % bits))) & mask::<N>()
            } else {
                ((a >> rot) | (a << ((bits - rot) % bits))) & mask::<N>()
            };
            let (cf, of) = if OP == ROL {
                (r & 1 != 0, msb(r) ^ (r & 1 != 0))
            } else {
                (msb(r), msb(r) ^ (r >> (bits - 2) & 1 != 0))
            };
            let mut f = old() & !(flags::CF | flags::OF);
            f |= if cf { flags::CF } else { 0 } | if of { flags::OF } else { 0 };
            Some((r, f))
        }
        _ => {
            let old = old();
            let old_cf = old & flags::CF != 0;
            // RCL/RCR rotate through CF: a (bits + 1)-bit rotation.
            let width = bits + 1;
            let rot = match N {
                1 => count % 9,
                2 => count % 17,
                _ => count,
            };
            let wide = (a as u128) | (old_cf as u128) << bits;
            let full = (1u128 << width) - 1;
            let rotated = if rot == 0 {
                wide
            } else if OP == RCL {
                ((wide << rot) | (wide >> (width - rot))) & full
            } else {
                ((wide >> rot) | (wide << (width - rot))) & full
            };
            let r = rotated as u64 & mask::<N>();
            let cf = (rotated >> bits) & 1 != 0;
            let of = if OP == RCL {
                msb(r) ^ cf
            } else {
                msb(a) ^ old_cf
            };
            let mut f = old & !(flags::CF | flags::OF);
            f |= if cf { flags::CF } else { 0 } | if of { flags::OF } else { 0 };
            Some((r, f))
        }
    }
}

#[inline(always)]
fn count_of<const BY: u8>(cpu: &Cpu, i: &Insn) -> u64 {
    match BY {
        BY_ONE => 1,
        BY_CL => cpu.reg::<1>(reg::RCX),
        _ => i.imm,
    }
}

fn shift_reg<const OP: u8, const N: usize, const BY: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    if let Some((r, f)) = shift::<OP, N>(cpu, a, count_of::<BY>(cpu, i)) {
        cpu.set_reg::<N>(i.dst, r);
        cpu.flags.set_materialized(f);
    } else if N == 4 {
        // A zero count still writes a 32-bit register, which zero-extends it.
        cpu.set_reg::<N>(i.dst, a);
    }
    Ok(())
}

fn shift_mem<const OP: u8, const N: usize, const BY: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let a = cpu.mmu.read::<N>(addr)?;
    if let Some((r, f)) = shift::<OP, N>(cpu, a, count_of::<BY>(cpu, i)) {
        cpu.mmu.write::<N>(addr, r)?;
        cpu.flags.set_materialized(f);
    }
    Ok(())
}

/// SHLD (`LEFT`) / SHRD: shift `a`, filling from `b`.
fn double_shift<const LEFT: bool, const N: usize>(
    a: u64,
    b: u64,
    count: u64,
) -> Option<(u64, u64)> {
    let bits = (N * 8) as u32;
    let count = (count & if N == 8 { 63 } else { 31 }) as u32;
    if count == 0 {
        return None;
    }
    // Work on the concatenation in 128 bits; 16-bit counts above 16 wrap through the
    // pair again, which is what Intel parts do for this undefined case.
    let (r, cf) = if LEFT {
        let cat = ((a as u128) << bits) | b as u128;
        let cat = if N == 2 {
            cat | ((a as u128) << 32)
        } else {
            cat
        };
        let shifted = cat << count;
        // CF is the last bit shifted out of `a` (undefined for counts above the width).
        let cf = count <= bits && (a >> (bits - count)) & 1 != 0;
        (((shifted >> bits) as u64) & mask::<N>(), cf)
    } else {
        let cat = ((b as u128) << bits) | a as u128;
        let cat = if N == 2 {
            cat | ((b as u128) << 32)
        } else {
            cat
        };
        let cf = (cat >> (count - 1)) & 1 != 0;
        ((cat >> count) as u64 & mask::<N>(), cf)
    };
    let sign_changed = (r ^ a) >> (bits - 1) & 1 != 0;
    Some((r, result_flags::<N>(r, cf, sign_changed)))
}

fn dshift_reg<const LEFT: bool, const N: usize, const BY: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    let b = cpu.reg::<N>(i.src);
    if let Some((r, f)) = double_shift::<LEFT, N>(a, b, count_of::<BY>(cpu, i)) {
        cpu.set_reg::<N>(i.dst, r);
        cpu.flags.set_materialized(f);
    } else if N == 4 {
        // A zero count still writes a 32-bit register, which zero-extends it.
        cpu.set_reg::<N>(i.dst, a);
    }
    Ok(())
}

fn dshift_mem<const LEFT: bool, const N: usize, const BY: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let a = cpu.mmu.read::<N>(addr)?;
    let b = cpu.reg::<N>(i.dst);
    if let Some((r, f)) = double_shift::<LEFT, N>(a, b, count_of::<BY>(cpu, i)) {
        cpu.mmu.write::<N>(addr, r)?;
        cpu.flags.set_materialized(f);
    }
    Ok(())
}

fn register_shift<const OP: u8>(t: &mut OpTable, c: [Code; 12]) {
    t.set(
        c[0],
        OpEntry::rm(shift_reg::<OP, 1, BY_ONE>, shift_mem::<OP, 1, BY_ONE>),
    );
    t.set(
        c[1],
        OpEntry::rm(shift_reg::<OP, 2, BY_ONE>, shift_mem::<OP, 2, BY_ONE>),
    );
    t.set(
        c[2],
        OpEntry::rm(shift_reg::<OP, 4, BY_ONE>, shift_mem::<OP, 4, BY_ONE>),
    );
    t.set(
        c[3],
        OpEntry::rm(shift_reg::<OP, 8, BY_ONE>, shift_mem::<OP, 8, BY_ONE>),
    );
    t.set(
        c[4],
        OpEntry::rm(shift_reg::<OP, 1, BY_CL>, shift_mem::<OP, 1, BY_CL>),
    );
    t.set(
        c[5],
        OpEntry::rm(shift_reg::<OP, 2, BY_CL>, shift_mem::<OP, 2, BY_CL>),
    );
    t.set(
        c[6],
        OpEntry::rm(shift_reg::<OP, 4, BY_CL>, shift_mem::<OP, 4, BY_CL>),
    );
    t.set(
        c[7],
        OpEntry::rm(shift_reg::<OP, 8, BY_CL>, shift_mem::<OP, 8, BY_CL>),
    );
    t.set(
        c[8],
        OpEntry::rm(shift_reg::<OP, 1, BY_IMM>, shift_mem::<OP, 1, BY_IMM>),
    );
    t.set(
        c[9],
        OpEntry::rm(shift_reg::<OP, 2, BY_IMM>, shift_mem::<OP, 2, BY_IMM>),
    );
    t.set(
        c[10],
        OpEntry::rm(shift_reg::<OP, 4, BY_IMM>, shift_mem::<OP, 4, BY_IMM>),
    );
    t.set(
        c[11],
        OpEntry::rm(shift_reg::<OP, 8, BY_IMM>, shift_mem::<OP, 8, BY_IMM>),
    );
}

pub(crate) fn register(t: &mut OpTable) {
    register_shift::<ROL>(
        t,
        [
            Code::Rol_rm8_1,
            Code::Rol_rm16_1,
            Code::Rol_rm32_1,
            Code::Rol_rm64_1,
            Code::Rol_rm8_CL,
            Code::Rol_rm16_CL,
            Code::Rol_rm32_CL,
            Code::Rol_rm64_CL,
            Code::Rol_rm8_imm8,
            Code::Rol_rm16_imm8,
            Code::Rol_rm32_imm8,
            Code::Rol_rm64_imm8,
        ],
    );
    register_shift::<ROR>(
        t,
        [
            Code::Ror_rm8_1,
            Code::Ror_rm16_1,
            Code::Ror_rm32_1,
            Code::Ror_rm64_1,
            Code::Ror_rm8_CL,
            Code::Ror_rm16_CL,
            Code::Ror_rm32_CL,
            Code::Ror_rm64_CL,
            Code::Ror_rm8_imm8,
            Code::Ror_rm16_imm8,
            Code::Ror_rm32_imm8,
            Code::Ror_rm64_imm8,
        ],
    );
    register_shift::<RCL>(
        t,
        [
            Code::Rcl_rm8_1,
            Code::Rcl_rm16_1,
            Code::Rcl_rm32_1,
            Code::Rcl_rm64_1,
            Code::Rcl_rm8_CL,
            Code::Rcl_rm16_CL,
            Code::Rcl_rm32_CL,
            Code::Rcl_rm64_CL,
            Code::Rcl_rm8_imm8,
            Code::Rcl_rm16_imm8,
            Code::Rcl_rm32_imm8,
            Code::Rcl_rm64_imm8,
        ],
    );
    register_shift::<RCR>(
        t,
        [
            Code::Rcr_rm8_1,
            Code::Rcr_rm16_1,
            Code::Rcr_rm32_1,
            Code::Rcr_rm64_1,
            Code::Rcr_rm8_CL,
            Code::Rcr_rm16_CL,
            Code::Rcr_rm32_CL,
            Code::Rcr_rm64_CL,
            Code::Rcr_rm8_imm8,
            Code::Rcr_rm16_imm8,
            Code::Rcr_rm32_imm8,
            Code::Rcr_rm64_imm8,
        ],
    );
    register_shift::<SHL>(
        t,
        [
            Code::Shl_rm8_1,
            Code::Shl_rm16_1,
            Code::Shl_rm32_1,
            Code::Shl_rm64_1,
            Code::Shl_rm8_CL,
            Code::Shl_rm16_CL,
            Code::Shl_rm32_CL,
            Code::Shl_rm64_CL,
            Code::Shl_rm8_imm8,
            Code::Shl_rm16_imm8,
            Code::Shl_rm32_imm8,
            Code::Shl_rm64_imm8,
        ],
    );
    register_shift::<SHR>(
        t,
        [
            Code::Shr_rm8_1,
            Code::Shr_rm16_1,
            Code::Shr_rm32_1,
            Code::Shr_rm64_1,
            Code::Shr_rm8_CL,
            Code::Shr_rm16_CL,
            Code::Shr_rm32_CL,
            Code::Shr_rm64_CL,
            Code::Shr_rm8_imm8,
            Code::Shr_rm16_imm8,
            Code::Shr_rm32_imm8,
            Code::Shr_rm64_imm8,
        ],
    );
    register_shift::<SAR>(
        t,
        [
            Code::Sar_rm8_1,
            Code::Sar_rm16_1,
            Code::Sar_rm32_1,
            Code::Sar_rm64_1,
            Code::Sar_rm8_CL,
            Code::Sar_rm16_CL,
            Code::Sar_rm32_CL,
            Code::Sar_rm64_CL,
            Code::Sar_rm8_imm8,
            Code::Sar_rm16_imm8,
            Code::Sar_rm32_imm8,
            Code::Sar_rm64_imm8,
        ],
    );
    register_shift::<SHL>(
        t,
        [
            Code::Sal_rm8_1,
            Code::Sal_rm16_1,
            Code::Sal_rm32_1,
            Code::Sal_rm64_1,
            Code::Sal_rm8_CL,
            Code::Sal_rm16_CL,
            Code::Sal_rm32_CL,
            Code::Sal_rm64_CL,
            Code::Sal_rm8_imm8,
            Code::Sal_rm16_imm8,
            Code::Sal_rm32_imm8,
            Code::Sal_rm64_imm8,
        ],
    );
    t.set(
        Code::Shld_rm16_r16_CL,
        OpEntry::rm(dshift_reg::<true, 2, BY_CL>, dshift_mem::<true, 2, BY_CL>),
    );
    t.set(
        Code::Shld_rm16_r16_imm8,
        OpEntry::rm(dshift_reg::<true, 2, BY_IMM>, dshift_mem::<true, 2, BY_IMM>),
    );
    t.set(
        Code::Shld_rm32_r32_CL,
        OpEntry::rm(dshift_reg::<true, 4, BY_CL>, dshift_mem::<true, 4, BY_CL>),
    );
    t.set(
        Code::Shld_rm32_r32_imm8,
        OpEntry::rm(dshift_reg::<true, 4, BY_IMM>, dshift_mem::<true, 4, BY_IMM>),
    );
    t.set(
        Code::Shld_rm64_r64_CL,
        OpEntry::rm(dshift_reg::<true, 8, BY_CL>, dshift_mem::<true, 8, BY_CL>),
    );
    t.set(
        Code::Shld_rm64_r64_imm8,
        OpEntry::rm(dshift_reg::<true, 8, BY_IMM>, dshift_mem::<true, 8, BY_IMM>),
    );
    t.set(
        Code::Shrd_rm16_r16_CL,
        OpEntry::rm(dshift_reg::<false, 2, BY_CL>, dshift_mem::<false, 2, BY_CL>),
    );
    t.set(
        Code::Shrd_rm16_r16_imm8,
        OpEntry::rm(
            dshift_reg::<false, 2, BY_IMM>,
            dshift_mem::<false, 2, BY_IMM>,
        ),
    );
    t.set(
        Code::Shrd_rm32_r32_CL,
        OpEntry::rm(dshift_reg::<false, 4, BY_CL>, dshift_mem::<false, 4, BY_CL>),
    );
    t.set(
        Code::Shrd_rm32_r32_imm8,
        OpEntry::rm(
            dshift_reg::<false, 4, BY_IMM>,
            dshift_mem::<false, 4, BY_IMM>,
        ),
    );
    t.set(
        Code::Shrd_rm64_r64_CL,
        OpEntry::rm(dshift_reg::<false, 8, BY_CL>, dshift_mem::<false, 8, BY_CL>),
    );
    t.set(
        Code::Shrd_rm64_r64_imm8,
        OpEntry::rm(
            dshift_reg::<false, 8, BY_IMM>,
            dshift_mem::<false, 8, BY_IMM>,
        ),
    );
}
