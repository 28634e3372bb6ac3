//! MUL, IMUL (one-, two- and three-operand forms), DIV, IDIV.
//!
//! Division by zero and quotients that do not fit raise #DE with no state changed.
//! After MUL/IMUL only CF and OF are defined; SF, ZF and PF are set from the low half
//! of the result and AF is cleared (the differential tests mask the undefined ones).
//! DIV/IDIV leave every flag undefined; here they keep their previous values.

use iced_x86::Code;

use crate::cpu::{mask, reg, sext, Cpu};
use crate::exception::Exception;
use crate::flags::{self, parity};
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};

fn mul_flags<const N: usize>(low: u64, overflow: bool) -> u64 {
    let mut f = if overflow { flags::CF | flags::OF } else { 0 };
    if parity(low) {
        f |= flags::PF;
    }
    if low & mask::<N>() == 0 {
        f |= flags::ZF;
    }
    if low >> (N * 8 - 1) & 1 != 0 {
        f |= flags::SF;
    }
    f
}

/// One-operand MUL/IMUL: accumulator times `src` into (R/E)DX:(R/E)AX, or AX for bytes.
fn mul1<const SIGNED: bool, const N: usize>(cpu: &mut Cpu, src: u64) {
    let bits = N as u32 * 8;
    let a = cpu.reg::<N>(reg::RAX);
    let (low, high, overflow) = if SIGNED {
        let p = (sext::<N>(a) as i64 as i128) * (sext::<N>(src) as i64 as i128);
        let low = p as u64 & mask::<N>();
        let high = (p >> bits) as u64 & mask::<N>();
        (low, high, p != sext::<N>(low) as i64 as i128)
    } else {
        let p = (a as u128) * (src as u128);
        let low = p as u64 & mask::<N>();
        let high = (p >> bits) as u64 & mask::<N>();
        (low, high, high != 0)
    };
    if N == 1 {
        cpu.set_reg::<2>(reg::RAX, low | high << 8);
    } else {
        cpu.set_reg::<N>(reg::RAX, low);
        cpu.set_reg::<N>(reg::RDX, high);
    }
    cpu.flags.set_materialized(mul_flags::<N>(low, overflow));
}

fn mul1_r<const SIGNED: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = cpu.reg::<N>(i.dst);
    mul1::<SIGNED, N>(cpu, src);
    Ok(())
}

fn mul1_m<const SIGNED: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = super::load::<N>(cpu, i)?;
    mul1::<SIGNED, N>(cpu, src);
    Ok(())
}

/// Truncating signed multiply for the two- and three-operand IMUL forms.
fn imul_trunc<const N: usize>(cpu: &mut Cpu, dst: u8, a: u64, b: u64) {
    let p = (sext::<N>(a) as i64 as i128) * (sext::<N>(b) as i64 as i128);
    let low = p as u64 & mask::<N>();
    cpu.set_reg::<N>(dst, low);
    cpu.flags
        .set_materialized(mul_flags::<N>(low, p != sext::<N>(low) as i64 as i128));
}

fn imul2_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let (a, b) = (cpu.reg::<N>(i.dst), cpu.reg::<N>(i.src));
    imul_trunc::<N>(cpu, i.dst, a, b);
    Ok(())
}

fn imul2_rm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = super::load::<N>(cpu, i)?;
    let a = cpu.reg::<N>(i.dst);
    imul_trunc::<N>(cpu, i.dst, a, b);
    Ok(())
}

fn imul3_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.src);
    imul_trunc::<N>(cpu, i.dst, a, i.imm & mask::<N>());
    Ok(())
}

fn imul3_rm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = super::load::<N>(cpu, i)?;
    imul_trunc::<N>(cpu, i.dst, a, i.imm & mask::<N>());
    Ok(())
}

/// DIV/IDIV of the double-width accumulator by `divisor`.
fn div<const SIGNED: bool, const N: usize>(cpu: &mut Cpu, divisor: u64) -> Result<(), Trap> {
    let bits = N as u32 * 8;
    if divisor == 0 {
        return Err(Exception::DivideError.into());
    }
    let (lo, hi) = if N == 1 {
        (cpu.reg::<1>(reg::RAX), cpu.reg::<1>(reg::HIGH_BYTE))
    } else {
        (cpu.reg::<N>(reg::RAX), cpu.reg::<N>(reg::RDX))
    };
    let dividend = (hi as u128) << bits | lo as u128;
    let (q, r) = if SIGNED {
        // Sign-extend the 2*bits-wide dividend to i128.
        let shift = 128 - 2 * bits;
        let n = ((dividend << shift) as i128) >> shift;
        let d = sext::<N>(divisor) as i64 as i128;
        let q = n.wrapping_div(d);
        let r = n.wrapping_rem(d);
        let min = -(1i128 << (bits - 1));
        let max = (1i128 << (bits - 1)) - 1;
        if q < min || q > max || (n == i128::MIN && d == -1) {
            return Err(Exception::DivideError.into());
        }
        (q as u64 & mask::<N>(), r as u64 & mask::<N>())
    } else {
        let q = dividend / divisor as u128;
        if q > mask::<N>() as u128 {
            return Err(Exception::DivideError.into());
        }
        (q as u64, (dividend % divisor as u128) as u64)
    };
    if N == 1 {
        cpu.set_reg::<2>(reg::RAX, q | r << 8);
    } else {
        cpu.set_reg::<N>(reg::RAX, q);
        cpu.set_reg::<N>(reg::RDX, r);
    }
    Ok(())
}

fn div_r<const SIGNED: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let d = cpu.reg::<N>(i.dst);
    Ok(div::<SIGNED, N>(cpu, d)?)
}

fn div_m<const SIGNED: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let d = super::load::<N>(cpu, i)?;
    Ok(div::<SIGNED, N>(cpu, d)?)
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(
        Code::Mul_rm8,
        OpEntry::rm(mul1_r::<false, 1>, mul1_m::<false, 1>),
    );
    t.set(
        Code::Mul_rm16,
        OpEntry::rm(mul1_r::<false, 2>, mul1_m::<false, 2>),
    );
    t.set(
        Code::Mul_rm32,
        OpEntry::rm(mul1_r::<false, 4>, mul1_m::<false, 4>),
    );
    t.set(
        Code::Mul_rm64,
        OpEntry::rm(mul1_r::<false, 8>, mul1_m::<false, 8>),
    );
    t.set(
        Code::Imul_rm8,
        OpEntry::rm(mul1_r::<true, 1>, mul1_m::<true, 1>),
    );
    t.set(
        Code::Imul_rm16,
        OpEntry::rm(mul1_r::<true, 2>, mul1_m::<true, 2>),
    );
    t.set(
        Code::Imul_rm32,
        OpEntry::rm(mul1_r::<true, 4>, mul1_m::<true, 4>),
    );
    t.set(
        Code::Imul_rm64,
        OpEntry::rm(mul1_r::<true, 8>, mul1_m::<true, 8>),
    );
    t.set(
        Code::Imul_r16_rm16,
        OpEntry::rm(imul2_rr::<2>, imul2_rm::<2>),
    );
    t.set(
        Code::Imul_r32_rm32,
        OpEntry::rm(imul2_rr::<4>, imul2_rm::<4>),
    );
    t.set(
        Code::Imul_r64_rm64,
        OpEntry::rm(imul2_rr::<8>, imul2_rm::<8>),
    );
    t.set(
        Code::Imul_r16_rm16_imm16,
        OpEntry::rm(imul3_rr::<2>, imul3_rm::<2>),
    );
    t.set(
        Code::Imul_r32_rm32_imm32,
        OpEntry::rm(imul3_rr::<4>, imul3_rm::<4>),
    );
    t.set(
        Code::Imul_r64_rm64_imm32,
        OpEntry::rm(imul3_rr::<8>, imul3_rm::<8>),
    );
    t.set(
        Code::Imul_r16_rm16_imm8,
        OpEntry::rm(imul3_rr::<2>, imul3_rm::<2>),
    );
    t.set(
        Code::Imul_r32_rm32_imm8,
        OpEntry::rm(imul3_rr::<4>, imul3_rm::<4>),
    );
    t.set(
        Code::Imul_r64_rm64_imm8,
        OpEntry::rm(imul3_rr::<8>, imul3_rm::<8>),
    );
    t.set(
        Code::Div_rm8,
        OpEntry::rm(div_r::<false, 1>, div_m::<false, 1>),
    );
    t.set(
        Code::Div_rm16,
        OpEntry::rm(div_r::<false, 2>, div_m::<false, 2>),
    );
    t.set(
        Code::Div_rm32,
        OpEntry::rm(div_r::<false, 4>, div_m::<false, 4>),
    );
    t.set(
        Code::Div_rm64,
        OpEntry::rm(div_r::<false, 8>, div_m::<false, 8>),
    );
    t.set(
        Code::Idiv_rm8,
        OpEntry::rm(div_r::<true, 1>, div_m::<true, 1>),
    );
    t.set(
        Code::Idiv_rm16,
        OpEntry::rm(div_r::<true, 2>, div_m::<true, 2>),
    );
    t.set(
        Code::Idiv_rm32,
        OpEntry::rm(div_r::<true, 4>, div_m::<true, 4>),
    );
    t.set(
        Code::Idiv_rm64,
        OpEntry::rm(div_r::<true, 8>, div_m::<true, 8>),
    );
}
