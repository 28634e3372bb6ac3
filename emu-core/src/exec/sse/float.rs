//! Floating-point arithmetic: ADD/SUB/MUL/DIV/MIN/MAX/SQRT in packed and scalar forms,
//! CMPxx, COMIS/UCOMIS, RCP/RSQRT, the SSE3 horizontal and alternating operations,
//! SSE4.1 DPPS/DPPD and ROUNDxx.
//!
//! Every result comes from [`super::softfp`]; a handler evaluates all lanes into a
//! temporary and commits it only when [`super::commit_fp`] allows.

use iced_x86::Code;

use super::softfp::{self, Env, Format, Relation, Round, F32, F64, PE};
use super::{commit_fp, lane, lanes, set_xmm, src128, src_scalar, with_lane, xmm};
use crate::cpu::Cpu;
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// Operation numbers for [`arith`].
mod op {
    pub const ADD: u8 = 0;
    pub const SUB: u8 = 1;
    pub const MUL: u8 = 2;
    pub const DIV: u8 = 3;
    pub const MIN: u8 = 4;
    pub const MAX: u8 = 5;
    pub const SQRT: u8 = 6;
    pub const RCP: u8 = 7;
    pub const RSQRT: u8 = 8;
}
use op::*;

/// One lane of operation `OP` with destination lane `a` and source lane `b` (unary
/// operations read `b`).
#[inline(always)]
fn arith<F: Format, const OP: u8>(a: u64, b: u64, env: &mut Env) -> u64 {
    match OP {
        ADD => softfp::add::<F>(a, b, env),
        SUB => softfp::sub::<F>(a, b, env),
        MUL => softfp::mul::<F>(a, b, env),
        DIV => softfp::div::<F>(a, b, env),
        MIN => softfp::min::<F>(a, b, env),
        MAX => softfp::max::<F>(a, b, env),
        SQRT => softfp::sqrt::<F>(b, env),
        RCP => reciprocal(b),
        _ => reciprocal_sqrt(b),
    }
}

/// RCPPS/RCPSS on one single: an approximation of 1/x within the architectural
/// relative error of 1.5 * 2^-12. We return the correctly rounded reciprocal, which the
/// hardware's table-based value approximates (so bit patterns may differ from a given
/// CPU model's). MXCSR is neither read nor updated: denormal inputs count as zeros and
/// tiny results are flushed to zero, whatever DAZ/FTZ say.
fn reciprocal(x: u64) -> u64 {
    const ONE: u64 = 0x3f80_0000;
    if softfp::is_nan::<F32>(x) {
        return x | F32::QUIET;
    }
    let negative = x & F32::SIGN;
    if softfp::is_zero::<F32>(x) || softfp::is_denormal::<F32>(x) {
        return negative | F32::EXP_MASK;
    }
    if softfp::is_inf::<F32>(x) {
        return negative;
    }
    let mut env = Env::new(0x1f80);
    let r = softfp::div::<F32>(ONE, x, &mut env);
    flush_tiny(r)
}

/// RSQRTPS/RSQRTSS on one single: an approximation of 1/sqrt(x); see [`reciprocal`].
fn reciprocal_sqrt(x: u64) -> u64 {
    const ONE: u64 = 0x3ff0_0000_0000_0000;
    if softfp::is_nan::<F32>(x) {
        return x | F32::QUIET;
    }
    if softfp::is_zero::<F32>(x) || softfp::is_denormal::<F32>(x) {
        return (x & F32::SIGN) | F32::EXP_MASK;
    }
    if softfp::is_negative::<F32>(x) {
        return F32::DEFAULT_NAN;
    }
    if softfp::is_inf::<F32>(x) {
        return 0;
    }
    // In double precision then rounded once more: still far inside the error bound.
    let mut env = Env::new(0x1f80);
    let wide = softfp::convert::<F32, F64>(x, &mut env);
    let root = softfp::sqrt::<F64>(wide, &mut env);
    let r = softfp::div::<F64>(ONE, root, &mut env);
    flush_tiny(softfp::convert::<F64, F32>(r, &mut env))
}

fn flush_tiny(r: u64) -> u64 {
    if r & F32::EXP_MASK == 0 {
        r & F32::SIGN
    } else {
        r
    }
}

/// Packed `op xmm, xmm/m128`.
fn packed<F: Format, const OP: u8, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut env = Env::new(cpu.mxcsr);
    let mut r = 0;
    for k in 0..lanes::<F>() {
        let v = arith::<F, OP>(lane::<F>(a, k), lane::<F>(b, k), &mut env);
        r = with_lane::<F>(r, k, v);
    }
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// Scalar `op xmm, xmm/mN`: the low lane is computed, the others are kept.
fn scalar<F: Format, const OP: u8, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src_scalar::<F, MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut env = Env::new(cpu.mxcsr);
    let v = arith::<F, OP>(lane::<F>(a, 0), b, &mut env);
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, with_lane::<F>(a, 0, v));
    Ok(())
}

/// Whether compare predicate `pred` (0..7: EQ, LT, LE, UNORD, NEQ, NLT, NLE, ORD) holds.
/// LT, LE, NLT and NLE signal IE on QNaN operands too.
fn predicate<F: Format>(a: u64, b: u64, pred: u8, env: &mut Env) -> bool {
    let pred = pred & 7;
    let signalling = matches!(pred, 1 | 2 | 5 | 6);
    let rel = softfp::compare::<F>(a, b, signalling, env);
    match pred {
        0 => rel == Relation::Equal,
        1 => rel == Relation::Less,
        2 => matches!(rel, Relation::Less | Relation::Equal),
        3 => rel == Relation::Unordered,
        4 => rel != Relation::Equal,
        5 => rel != Relation::Less,
        6 => !matches!(rel, Relation::Less | Relation::Equal),
        _ => rel != Relation::Unordered,
    }
}

/// CMPPS/CMPPD: each lane becomes all ones or zero.
fn cmp_packed<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut env = Env::new(cpu.mxcsr);
    let mut r = 0;
    for k in 0..lanes::<F>() {
        if predicate::<F>(lane::<F>(a, k), lane::<F>(b, k), i.imm as u8, &mut env) {
            r = with_lane::<F>(r, k, u64::MAX);
        }
    }
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// CMPSS/CMPSD.
fn cmp_scalar<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src_scalar::<F, MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut env = Env::new(cpu.mxcsr);
    let v = if predicate::<F>(lane::<F>(a, 0), b, i.imm as u8, &mut env) {
        u64::MAX
    } else {
        0
    };
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, with_lane::<F>(a, 0, v));
    Ok(())
}

/// COMISS/COMISD (`SIGNAL`: IE on QNaN too) and UCOMISS/UCOMISD: ZF, PF, CF from the
/// comparison; OF, SF and AF cleared.
fn comis<F: Format, const SIGNAL: bool, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src_scalar::<F, MEM>(cpu, i)?;
    let a = lane::<F>(xmm(cpu, i.dst), 0);
    let mut env = Env::new(cpu.mxcsr);
    let rel = softfp::compare::<F>(a, b, SIGNAL, &mut env);
    commit_fp(cpu, env.flags)?;
    let f = match rel {
        Relation::Unordered => flags::ZF | flags::PF | flags::CF,
        Relation::Less => flags::CF,
        Relation::Equal => flags::ZF,
        Relation::Greater => 0,
    };
    cpu.flags.set_materialized(f);
    Ok(())
}

/// HADDPS/HADDPD (`SUB == false`) and HSUBPS/HSUBPD: adjacent lanes of the destination,
/// then of the source.
fn horizontal<F: Format, const SUB: bool, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut env = Env::new(cpu.mxcsr);
    let n = lanes::<F>();
    let mut r = 0;
    for k in 0..n {
        let s = if k < n / 2 { a } else { b };
        let j = (k % (n / 2)) * 2;
        let (x, y) = (lane::<F>(s, j), lane::<F>(s, j + 1));
        let v = if SUB {
            softfp::sub::<F>(x, y, &mut env)
        } else {
            softfp::add::<F>(x, y, &mut env)
        };
        r = with_lane::<F>(r, k, v);
    }
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// ADDSUBPS/ADDSUBPD: even lanes subtract, odd lanes add.
fn addsub<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut env = Env::new(cpu.mxcsr);
    let mut r = 0;
    for k in 0..lanes::<F>() {
        let (x, y) = (lane::<F>(a, k), lane::<F>(b, k));
        let v = if k % 2 == 0 {
            softfp::sub::<F>(x, y, &mut env)
        } else {
            softfp::add::<F>(x, y, &mut env)
        };
        r = with_lane::<F>(r, k, v);
    }
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// DPPS/DPPD: products of the lanes selected by imm bits 4.., summed pairwise
/// ((p0 + p1) + (p2 + p3)), written to the lanes selected by imm bits 0.. (others zero).
/// Unselected products are +0.0 and raise nothing.
///
/// The hardware runs this in stages (the products, then the pairwise sums, then the final
/// sum), each an ordinary SSE operation on the previous stage's results: a denormal
/// product is a denormal operand of the next stage, and an unmasked exception in one stage
/// stops the instruction before the next stage raises anything.
fn dot<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let imm = i.imm as u8;
    let n = lanes::<F>();
    let mut env = Env::new(cpu.mxcsr);
    let mut p = [0u64; 4];
    for (k, slot) in p.iter_mut().enumerate().take(n) {
        if imm & (0x10 << k) != 0 {
            *slot = softfp::mul::<F>(lane::<F>(a, k), lane::<F>(b, k), &mut env);
        }
    }
    commit_fp(cpu, env.flags)?;
    let mut env = Env::new(cpu.mxcsr);
    let sum = if n == 4 {
        let lo = softfp::add::<F>(p[0], p[1], &mut env);
        let hi = softfp::add::<F>(p[2], p[3], &mut env);
        commit_fp(cpu, env.flags)?;
        env = Env::new(cpu.mxcsr);
        softfp::add::<F>(lo, hi, &mut env)
    } else {
        softfp::add::<F>(p[0], p[1], &mut env)
    };
    commit_fp(cpu, env.flags)?;
    let mut r = 0;
    for k in 0..n {
        if imm & (1 << k) != 0 {
            r = with_lane::<F>(r, k, sum);
        }
    }
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// The environment of ROUNDxx: imm bits 1:0 give the rounding direction unless bit 2
/// says "use MXCSR.RC".
fn round_env(cpu: &Cpu, imm: u64) -> Env {
    let env = Env::new(cpu.mxcsr);
    if imm & 4 != 0 {
        env
    } else {
        env.with_round(Round::from_bits(imm as u32))
    }
}

/// Flags of ROUNDxx: imm bit 3 suppresses the precision exception.
fn round_flags(env: &Env, imm: u64) -> u32 {
    if imm & 8 != 0 {
        env.flags & !PE
    } else {
        env.flags
    }
}

/// ROUNDPS/ROUNDPD.
fn round_packed<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let mut env = round_env(cpu, i.imm);
    let mut r = 0;
    for k in 0..lanes::<F>() {
        let v = softfp::round_to_integral::<F>(lane::<F>(b, k), &mut env);
        r = with_lane::<F>(r, k, v);
    }
    commit_fp(cpu, round_flags(&env, i.imm))?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// ROUNDSS/ROUNDSD.
fn round_scalar<F: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src_scalar::<F, MEM>(cpu, i)?;
    let mut env = round_env(cpu, i.imm);
    let v = softfp::round_to_integral::<F>(b, &mut env);
    commit_fp(cpu, round_flags(&env, i.imm))?;
    let a = xmm(cpu, i.dst);
    set_xmm(cpu, i.dst, with_lane::<F>(a, 0, v));
    Ok(())
}

fn packed_entry<F: Format, const OP: u8>() -> OpEntry {
    OpEntry::rm(packed::<F, OP, false>, packed::<F, OP, true>)
}

fn scalar_entry<F: Format, const OP: u8>() -> OpEntry {
    OpEntry::rm(scalar::<F, OP, false>, scalar::<F, OP, true>)
}

pub(super) fn register(t: &mut OpTable) {
    t.set(Code::Addps_xmm_xmmm128, packed_entry::<F32, ADD>());
    t.set(Code::Addpd_xmm_xmmm128, packed_entry::<F64, ADD>());
    t.set(Code::Addss_xmm_xmmm32, scalar_entry::<F32, ADD>());
    t.set(Code::Addsd_xmm_xmmm64, scalar_entry::<F64, ADD>());
    t.set(Code::Subps_xmm_xmmm128, packed_entry::<F32, SUB>());
    t.set(Code::Subpd_xmm_xmmm128, packed_entry::<F64, SUB>());
    t.set(Code::Subss_xmm_xmmm32, scalar_entry::<F32, SUB>());
    t.set(Code::Subsd_xmm_xmmm64, scalar_entry::<F64, SUB>());
    t.set(Code::Mulps_xmm_xmmm128, packed_entry::<F32, MUL>());
    t.set(Code::Mulpd_xmm_xmmm128, packed_entry::<F64, MUL>());
    t.set(Code::Mulss_xmm_xmmm32, scalar_entry::<F32, MUL>());
    t.set(Code::Mulsd_xmm_xmmm64, scalar_entry::<F64, MUL>());
    t.set(Code::Divps_xmm_xmmm128, packed_entry::<F32, DIV>());
    t.set(Code::Divpd_xmm_xmmm128, packed_entry::<F64, DIV>());
    t.set(Code::Divss_xmm_xmmm32, scalar_entry::<F32, DIV>());
    t.set(Code::Divsd_xmm_xmmm64, scalar_entry::<F64, DIV>());
    t.set(Code::Minps_xmm_xmmm128, packed_entry::<F32, MIN>());
    t.set(Code::Minpd_xmm_xmmm128, packed_entry::<F64, MIN>());
    t.set(Code::Minss_xmm_xmmm32, scalar_entry::<F32, MIN>());
    t.set(Code::Minsd_xmm_xmmm64, scalar_entry::<F64, MIN>());
    t.set(Code::Maxps_xmm_xmmm128, packed_entry::<F32, MAX>());
    t.set(Code::Maxpd_xmm_xmmm128, packed_entry::<F64, MAX>());
    t.set(Code::Maxss_xmm_xmmm32, scalar_entry::<F32, MAX>());
    t.set(Code::Maxsd_xmm_xmmm64, scalar_entry::<F64, MAX>());
    t.set(Code::Sqrtps_xmm_xmmm128, packed_entry::<F32, SQRT>());
    t.set(Code::Sqrtpd_xmm_xmmm128, packed_entry::<F64, SQRT>());
    t.set(Code::Sqrtss_xmm_xmmm32, scalar_entry::<F32, SQRT>());
    t.set(Code::Sqrtsd_xmm_xmmm64, scalar_entry::<F64, SQRT>());
    t.set(Code::Rcpps_xmm_xmmm128, packed_entry::<F32, RCP>());
    t.set(Code::Rcpss_xmm_xmmm32, scalar_entry::<F32, RCP>());
    t.set(Code::Rsqrtps_xmm_xmmm128, packed_entry::<F32, RSQRT>());
    t.set(Code::Rsqrtss_xmm_xmmm32, scalar_entry::<F32, RSQRT>());

    t.set(
        Code::Cmpps_xmm_xmmm128_imm8,
        OpEntry::rm(cmp_packed::<F32, false>, cmp_packed::<F32, true>),
    );
    t.set(
        Code::Cmppd_xmm_xmmm128_imm8,
        OpEntry::rm(cmp_packed::<F64, false>, cmp_packed::<F64, true>),
    );
    t.set(
        Code::Cmpss_xmm_xmmm32_imm8,
        OpEntry::rm(cmp_scalar::<F32, false>, cmp_scalar::<F32, true>),
    );
    t.set(
        Code::Cmpsd_xmm_xmmm64_imm8,
        OpEntry::rm(cmp_scalar::<F64, false>, cmp_scalar::<F64, true>),
    );
    t.set(
        Code::Comiss_xmm_xmmm32,
        OpEntry::rm(comis::<F32, true, false>, comis::<F32, true, true>),
    );
    t.set(
        Code::Comisd_xmm_xmmm64,
        OpEntry::rm(comis::<F64, true, false>, comis::<F64, true, true>),
    );
    t.set(
        Code::Ucomiss_xmm_xmmm32,
        OpEntry::rm(comis::<F32, false, false>, comis::<F32, false, true>),
    );
    t.set(
        Code::Ucomisd_xmm_xmmm64,
        OpEntry::rm(comis::<F64, false, false>, comis::<F64, false, true>),
    );

    t.set(
        Code::Haddps_xmm_xmmm128,
        OpEntry::rm(
            horizontal::<F32, false, false>,
            horizontal::<F32, false, true>,
        ),
    );
    t.set(
        Code::Haddpd_xmm_xmmm128,
        OpEntry::rm(
            horizontal::<F64, false, false>,
            horizontal::<F64, false, true>,
        ),
    );
    t.set(
        Code::Hsubps_xmm_xmmm128,
        OpEntry::rm(
            horizontal::<F32, true, false>,
            horizontal::<F32, true, true>,
        ),
    );
    t.set(
        Code::Hsubpd_xmm_xmmm128,
        OpEntry::rm(
            horizontal::<F64, true, false>,
            horizontal::<F64, true, true>,
        ),
    );
    t.set(
        Code::Addsubps_xmm_xmmm128,
        OpEntry::rm(addsub::<F32, false>, addsub::<F32, true>),
    );
    t.set(
        Code::Addsubpd_xmm_xmmm128,
        OpEntry::rm(addsub::<F64, false>, addsub::<F64, true>),
    );

    t.set(
        Code::Dpps_xmm_xmmm128_imm8,
        OpEntry::rm(dot::<F32, false>, dot::<F32, true>),
    );
    t.set(
        Code::Dppd_xmm_xmmm128_imm8,
        OpEntry::rm(dot::<F64, false>, dot::<F64, true>),
    );
    t.set(
        Code::Roundps_xmm_xmmm128_imm8,
        OpEntry::rm(round_packed::<F32, false>, round_packed::<F32, true>),
    );
    t.set(
        Code::Roundpd_xmm_xmmm128_imm8,
        OpEntry::rm(round_packed::<F64, false>, round_packed::<F64, true>),
    );
    t.set(
        Code::Roundss_xmm_xmmm32_imm8,
        OpEntry::rm(round_scalar::<F32, false>, round_scalar::<F32, true>),
    );
    t.set(
        Code::Roundsd_xmm_xmmm64_imm8,
        OpEntry::rm(round_scalar::<F64, false>, round_scalar::<F64, true>),
    );
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{cpu, insn};
    use super::*;
    use crate::exception::Exception;
    use crate::insn::Trap;

    fn splat32(v: u32) -> u128 {
        (0..4).fold(0, |a, k| a | (v as u128) << (32 * k))
    }

    #[test]
    fn unmasked_exception_leaves_the_destination_alone() {
        let mut cpu = cpu();
        cpu.mxcsr = 0x1f80 & !(softfp::ZE << softfp::MASK_SHIFT);
        cpu.xmm[1] = splat32(0x3f80_0000);
        cpu.xmm[2] = 0x4000_0000; // lane 0 is 2.0, lanes 1..3 are zeros
        let i = insn(packed::<F32, DIV, false>, 1, 2, 0, 0);
        assert_eq!(
            (i.exec)(&mut cpu, &i),
            Err(Trap::Exception(Exception::SimdFloatingPoint).into())
        );
        assert_eq!(cpu.xmm[1], splat32(0x3f80_0000));
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, softfp::ZE);
    }

    #[test]
    fn scalar_ops_keep_the_upper_lanes() {
        let mut cpu = cpu();
        cpu.xmm[1] = splat32(0x3f80_0000);
        cpu.xmm[2] = splat32(0x4000_0000);
        let i = insn(scalar::<F32, ADD, false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("addss");
        assert_eq!(
            cpu.xmm[1],
            (splat32(0x3f80_0000) & !0xffff_ffff) | 0x4040_0000
        );
    }

    #[test]
    fn compare_predicates_cover_unordered_operands() {
        let mut env = Env::new(0x1f80);
        let nan = 0x7fc0_0000;
        let expect = [false, false, false, true, true, true, true, false];
        for (pred, want) in expect.iter().enumerate() {
            assert_eq!(
                predicate::<F32>(nan, 0, pred as u8, &mut env),
                *want,
                "{pred}"
            );
        }
        // LT/LE/NLT/NLE signal on the QNaN.
        assert_eq!(env.flags, softfp::IE);
        let mut env = Env::new(0x1f80);
        predicate::<F32>(nan, 0, 0, &mut env);
        predicate::<F32>(nan, 0, 3, &mut env);
        assert_eq!(env.flags, 0);
    }

    #[test]
    fn comiss_sets_zf_pf_cf_and_clears_the_rest() {
        let mut cpu = cpu();
        cpu.flags.set_materialized(flags::ARITH);
        cpu.xmm[1] = 0x7fc0_0000;
        let i = insn(comis::<F32, false, false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("ucomiss");
        assert_eq!(cpu.flags.compute(), flags::ZF | flags::PF | flags::CF);
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, 0, "UCOMISS is quiet on QNaN");
        let i = insn(comis::<F32, true, false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("comiss");
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, softfp::IE);
    }

    #[test]
    fn reciprocal_approximations_handle_specials_without_flags() {
        assert_eq!(reciprocal(0), 0x7f80_0000);
        assert_eq!(reciprocal(0x8000_0001), 0xff80_0000, "denormal reads as -0");
        assert_eq!(reciprocal(0xff80_0000), 0x8000_0000);
        assert_eq!(reciprocal(0x7f80_0001), 0x7fc0_0001);
        assert_eq!(reciprocal(0x7f7f_ffff), 0, "tiny results are flushed");
        assert_eq!(reciprocal_sqrt(0xbf80_0000), F32::DEFAULT_NAN);
        assert_eq!(reciprocal_sqrt(0x8000_0000), 0xff80_0000);
        assert_eq!(reciprocal_sqrt(0x4080_0000), 0x3f00_0000);
        let r = f32::from_bits(reciprocal(0x4040_0000) as u32);
        assert!((r - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn dpps_stops_after_a_faulting_stage() {
        let mut cpu = cpu();
        // Products underflow (inexact, PE unmasked): #XM after the multiply stage, so the
        // denormal product never raises DE in the sums.
        cpu.mxcsr = 0x1f80 & !(softfp::PE << softfp::MASK_SHIFT);
        cpu.xmm[1] = splat32(0x3400_0001);
        cpu.xmm[2] = splat32(0x0080_0000);
        let i = insn(dot::<F32, false>, 1, 2, 0xff, 0);
        assert!((i.exec)(&mut cpu, &i).is_err());
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, softfp::UE | softfp::PE);
        // Masked, the sums see denormal operands.
        cpu.mxcsr = 0x1f80;
        (i.exec)(&mut cpu, &i).expect("dpps");
        assert_eq!(
            cpu.mxcsr & softfp::ALL_FLAGS,
            softfp::DE | softfp::UE | softfp::PE
        );
    }

    #[test]
    fn roundss_immediate_overrides_mxcsr_and_can_suppress_pe() {
        let mut cpu = cpu();
        cpu.xmm[2] = 0x3fc0_0000; // 1.5
        let i = insn(round_scalar::<F32, false>, 1, 2, 0x0a, 0); // up, no PE
        (i.exec)(&mut cpu, &i).expect("roundss");
        assert_eq!(cpu.xmm[1] as u32, 0x4000_0000);
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, 0);
        cpu.mxcsr = 0x1f80 | 3 << softfp::RC_SHIFT;
        let i = insn(round_scalar::<F32, false>, 1, 2, 0x04, 0); // MXCSR.RC (truncate)
        (i.exec)(&mut cpu, &i).expect("roundss");
        assert_eq!(cpu.xmm[1] as u32, 0x3f80_0000);
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, softfp::PE);
    }
}
