//! x87 arithmetic, compares, FXAM and the one-operand operations.

use iced_x86::Code;

use super::begin;
use super::softfp80::{self as sf, Class, Ctx, Relation, INDEFINITE, SIGN};
use super::state::{C0, C1, C2, C3};
use super::transcendental as tr;
use crate::cpu::Cpu;
use crate::exec::sse::softfp::{DE, F32, F64, IE, ZE};
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step};

const ADD: u8 = 0;
const MUL: u8 = 1;
const SUB: u8 = 4;
const SUBR: u8 = 5;
const DIV: u8 = 6;
const DIVR: u8 = 7;

/// Memory operand kinds.
pub(crate) const M32FP: u8 = 0;
pub(crate) const M64FP: u8 = 1;
pub(crate) const M16INT: u8 = 2;
pub(crate) const M32INT: u8 = 3;

/// `a OP b` for the FADD..FDIVR operation numbers (the /r field of D8).
fn apply(op: u8, a: u128, b: u128, ctx: &mut Ctx) -> u128 {
    match op {
        ADD => sf::add(a, b, ctx),
        MUL => sf::mul(a, b, ctx),
        SUB => sf::sub(a, b, ctx),
        SUBR => sf::sub(b, a, ctx),
        DIV => sf::div(a, b, ctx),
        _ => sf::div(b, a, ctx),
    }
}

/// Writes `r` into ST(d) under the exception rules, or the indefinite on a stack
/// underflow (`None`), then pops if asked and the result was delivered.
fn finish(cpu: &mut Cpu, d: u8, r: Option<(u128, Ctx)>, pop: bool) {
    let x = &mut cpu.x87;
    let delivered = match r {
        None => {
            let masked = x.stack_fault(false);
            if masked {
                x.set_st(d, INDEFINITE);
            }
            masked
        }
        Some((v, ctx)) => {
            let ok = x.commit(&ctx, true);
            if ok {
                x.set_st(d, v);
            }
            ok
        }
    };
    if pop && delivered {
        x.pop();
    }
}

/// FADD/FMUL/FSUB/FSUBR/FDIV/FDIVR between registers: ST(dst) = ST(dst) OP ST(src).
fn arith_reg<const OP: u8, const POP: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let (a, b) = (cpu.x87.st(i.dst), cpu.x87.st(i.src));
    let r = a.zip(b).map(|(a, b)| {
        let mut ctx = cpu.x87.ctx(true);
        (apply(OP, a, b, &mut ctx), ctx)
    });
    finish(cpu, i.dst, r, POP);
    Ok(())
}

/// The memory operand of kind `K` as an 80-bit value (conversion exceptions in `ctx`).
pub(crate) fn mem_operand<const K: u8>(
    cpu: &mut Cpu,
    i: &Insn,
    ctx: &mut Ctx,
) -> Result<u128, crate::insn::Trap> {
    let addr = i.ea(cpu);
    Ok(match K {
        M32FP => sf::from_format::<F32>(cpu.mmu.read::<4>(addr)?, ctx),
        M64FP => sf::from_format::<F64>(cpu.mmu.read::<8>(addr)?, ctx),
        M16INT => sf::from_int(cpu.mmu.read::<2>(addr)? as i16 as i64),
        _ => sf::from_int(cpu.mmu.read::<4>(addr)? as i32 as i64),
    })
}

/// The memory operand of kind `K` of an arithmetic or compare instruction: an SNaN stays
/// signalling for the operation's NaN rules, and whether the source is a denormal comes
/// separately (see [`sf::from_format_operand`] and [`denormal_operand`]).
fn arith_operand<const K: u8>(cpu: &mut Cpu, i: &Insn) -> Result<(u128, bool), crate::insn::Trap> {
    let addr = i.ea(cpu);
    Ok(match K {
        M32FP => sf::from_format_operand::<F32>(cpu.mmu.read::<4>(addr)?),
        M64FP => sf::from_format_operand::<F64>(cpu.mmu.read::<8>(addr)?),
        M16INT => (sf::from_int(cpu.mmu.read::<2>(addr)? as i16 as i64), false),
        _ => (sf::from_int(cpu.mmu.read::<4>(addr)? as i32 as i64), false),
    })
}

/// DE for a denormal memory operand, unless the operation stopped at a NaN or an
/// unsupported encoding first (the hardware checks NaNs before denormals) or divided by
/// zero (which also comes first).
fn denormal_operand(a: u128, b: u128, b_denormal: bool, ctx: &mut Ctx) {
    if b_denormal && !sf::is_nan_or_unsupported(a) && !sf::is_nan(b) && ctx.flags & ZE == 0 {
        ctx.flags |= DE;
    }
}

/// FADD..FDIVR m32fp/m64fp and FIADD..FIDIVR m16int/m32int: ST(0) = ST(0) OP mem.
fn arith_mem<const OP: u8, const K: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, true)?;
    let mut ctx = cpu.x87.ctx(true);
    let (b, b_denormal) = arith_operand::<K>(cpu, i)?;
    let r = cpu.x87.st(0).map(|a| {
        let r = apply(OP, a, b, &mut ctx);
        denormal_operand(a, b, b_denormal, &mut ctx);
        (r, ctx)
    });
    finish(cpu, 0, r, false);
    Ok(())
}

/// Sets C3, C2, C0 from a relation (C1 cleared).
fn set_cc(cpu: &mut Cpu, rel: Relation) {
    let cc = match rel {
        Relation::Greater => 0,
        Relation::Less => C0,
        Relation::Equal => C3,
        Relation::Unordered => C3 | C2 | C0,
    };
    cpu.x87.fsw = (cpu.x87.fsw & !(C0 | C1 | C2 | C3)) | cc;
}

/// Compares `a` with `b` (`None`: an empty register) and pops `pops` times, for the
/// FCOM family.
fn compare_cc(
    cpu: &mut Cpu,
    a: Option<u128>,
    b: Option<u128>,
    signal: bool,
    pops: u8,
    mut ctx: Ctx,
) {
    let ok = match a.zip(b) {
        // The condition codes are set even when the exception is unmasked; only the
        // pops are skipped then.
        None => {
            let masked = cpu.x87.stack_fault(false);
            set_cc(cpu, Relation::Unordered);
            cpu.x87.fsw &= !C1;
            masked
        }
        Some((a, b)) => {
            let rel = sf::compare(a, b, signal, &mut ctx);
            let ok = cpu.x87.commit(&ctx, false);
            set_cc(cpu, rel);
            ok
        }
    };
    if ok {
        for _ in 0..pops {
            cpu.x87.pop();
        }
    }
}

/// FCOM/FCOMP/FCOMPP/FUCOM/FUCOMP/FUCOMPP ST(0), ST(src).
fn fcom_reg<const SIGNAL: bool, const POPS: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    // FCOMPP/FUCOMPP have no register operand: they compare with ST(1).
    let s = if POPS == 2 { 1 } else { i.src };
    let (a, b) = (cpu.x87.st(0), cpu.x87.st(s));
    let ctx = cpu.x87.ctx(false);
    compare_cc(cpu, a, b, SIGNAL, POPS, ctx);
    Ok(())
}

/// FCOM/FCOMP m32fp/m64fp, FICOM/FICOMP m16int/m32int.
fn fcom_mem<const K: u8, const POP: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, true)?;
    let mut ctx = cpu.x87.ctx(false);
    let (b, b_denormal) = arith_operand::<K>(cpu, i)?;
    let a = cpu.x87.st(0);
    if let Some(a) = a {
        denormal_operand(a, b, b_denormal, &mut ctx);
    }
    compare_cc(cpu, a, Some(b), true, POP as u8, ctx);
    Ok(())
}

/// FTST: compare ST(0) with +0.
fn ftst(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let a = cpu.x87.st(0);
    let ctx = cpu.x87.ctx(false);
    compare_cc(cpu, a, Some(0), true, 0, ctx);
    Ok(())
}

/// FCOMI/FCOMIP/FUCOMI/FUCOMIP: the relation in ZF, PF, CF (OF, SF, AF cleared). The
/// flags are written even when the instruction raises an unmasked exception (as the
/// condition codes of FCOM are); only the pop is skipped then.
fn fcomi<const SIGNAL: bool, const POP: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let (a, b) = (cpu.x87.st(0), cpu.x87.st(i.src));
    let mut ctx = cpu.x87.ctx(false);
    let (rel, delivered) = match a.zip(b) {
        None => (Relation::Unordered, cpu.x87.stack_fault(false)),
        Some((a, b)) => {
            let rel = sf::compare(a, b, SIGNAL, &mut ctx);
            (rel, cpu.x87.commit(&ctx, false))
        }
    };
    cpu.x87.fsw &= !C1;
    let f = match rel {
        Relation::Greater => 0,
        Relation::Less => flags::CF,
        Relation::Equal => flags::ZF,
        Relation::Unordered => flags::ZF | flags::PF | flags::CF,
    };
    let rflags = (cpu.rflags() & !flags::ARITH) | f;
    cpu.set_rflags(rflags);
    if POP && delivered {
        cpu.x87.pop();
    }
    Ok(())
}

/// FXAM: the class of ST(0) in C3, C2, C0 and its sign in C1.
fn fxam(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let p = cpu.x87.phys(0);
    let v = cpu.x87.regs[p];
    let cc = match cpu.x87.st(0).map(sf::classify) {
        None => C3 | C0,
        Some(Class::Unsupported) => 0,
        Some(Class::QNaN | Class::SNaN) => C0,
        Some(Class::Normal) => C2,
        Some(Class::Inf) => C2 | C0,
        Some(Class::Zero) => C3,
        Some(Class::Denormal) => C3 | C2,
    };
    let sign = if v & SIGN != 0 { C1 } else { 0 };
    cpu.x87.fsw = (cpu.x87.fsw & !(C0 | C1 | C2 | C3)) | cc | sign;
    Ok(())
}

/// A one-operand operation on ST(0).
fn unary(cpu: &mut Cpu, i: &Insn, use_pc: bool, op: fn(u128, &mut Ctx) -> u128) -> Step {
    begin(cpu, i, false)?;
    let r = cpu.x87.st(0).map(|a| {
        let mut ctx = cpu.x87.ctx(use_pc);
        (op(a, &mut ctx), ctx)
    });
    finish(cpu, 0, r, false);
    Ok(())
}

fn fchs(cpu: &mut Cpu, i: &Insn) -> Step {
    unary(cpu, i, false, |a, _| a ^ SIGN)
}

fn fabs(cpu: &mut Cpu, i: &Insn) -> Step {
    unary(cpu, i, false, |a, _| a & !SIGN)
}

fn fsqrt(cpu: &mut Cpu, i: &Insn) -> Step {
    unary(cpu, i, true, sf::sqrt)
}

fn frndint(cpu: &mut Cpu, i: &Insn) -> Step {
    unary(cpu, i, false, sf::round_to_integral)
}

/// FSCALE: ST(0) = ST(0) * 2^trunc(ST(1)).
fn fscale(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let r = cpu.x87.st(0).zip(cpu.x87.st(1)).map(|(a, b)| {
        let mut ctx = cpu.x87.ctx(false);
        (sf::scale(a, b, &mut ctx), ctx)
    });
    finish(cpu, 0, r, false);
    Ok(())
}

/// FXTRACT: ST(0) becomes its exponent (as a value) and the significand (exponent 0) is
/// pushed.
fn fxtract(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let Some(a) = cpu.x87.st(0) else {
        if cpu.x87.stack_fault(false) {
            cpu.x87.set_st(0, INDEFINITE);
            if cpu.x87.st(7).is_none() {
                cpu.x87.push(INDEFINITE);
            }
        }
        return Ok(());
    };
    if cpu.x87.st(7).is_some() {
        if cpu.x87.stack_fault(true) {
            cpu.x87.set_st(0, INDEFINITE);
            cpu.x87.push(INDEFINITE);
        }
        return Ok(());
    }
    let mut ctx = cpu.x87.ctx(false);
    let negative = a & SIGN != 0;
    let (exp, sig) = match sf::classify(a) {
        Class::Unsupported => {
            ctx.flags |= IE;
            (INDEFINITE, INDEFINITE)
        }
        Class::SNaN | Class::QNaN => {
            if sf::classify(a) == Class::SNaN {
                ctx.flags |= IE;
            }
            let q = a | sf::QUIET as u128;
            (q, q)
        }
        Class::Zero => {
            ctx.flags |= ZE;
            (sf::pack(true, sf::EXP_MAX, sf::INT_BIT), a)
        }
        Class::Inf => (a & !SIGN, a),
        c => {
            if c == Class::Denormal {
                ctx.flags |= crate::exec::sse::softfp::DE;
            }
            let (_, e, m) = sf::fields(a);
            let e = if e == 0 { 1 } else { e as i32 };
            let z = m.leading_zeros() as i32;
            let unbiased = e - sf::BIAS - z;
            (
                sf::from_int(unbiased as i64),
                sf::pack(negative, sf::BIAS as u32, m << z),
            )
        }
    };
    if cpu.x87.commit(&ctx, false) {
        cpu.x87.set_st(0, exp);
        cpu.x87.push(sig);
    }
    Ok(())
}

/// FPREM / FPREM1 (`NEAREST`): ST(0) = the (partial) remainder of ST(0) / ST(1); the
/// quotient's low bits in C0, C3, C1 and C2 set while the reduction is incomplete.
fn fprem<const NEAREST: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let x = &mut cpu.x87;
    let Some((a, b)) = x.st(0).zip(x.st(1)) else {
        x.fsw &= !(C0 | C2 | C3);
        if x.stack_fault(false) {
            x.set_st(0, INDEFINITE);
        }
        return Ok(());
    };
    let mut ctx = x.ctx(false);
    let r = sf::rem(a, b, NEAREST, &mut ctx);
    if x.commit(&ctx, false) {
        x.set_st(0, r.value);
        let q = r.quotient;
        let bit = |n: u8, flag: u16| if q >> n & 1 != 0 { flag } else { 0 };
        x.fsw = (x.fsw & !(C0 | C1 | C2 | C3))
            | bit(2, C0)
            | bit(1, C3)
            | bit(0, C1)
            | if r.partial { C2 } else { 0 };
    }
    Ok(())
}

const SIN: u8 = 0;
const COS: u8 = 1;
const SINCOS: u8 = 2;
const TAN: u8 = 3;

/// FSIN / FCOS: ST(0) = f(ST(0)); an operand of magnitude 2^63 or more stays, with C2 set.
fn ftrig<const OP: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let x = &mut cpu.x87;
    x.fsw &= !C2;
    let Some(a) = x.st(0) else {
        if x.stack_fault(false) {
            x.set_st(0, INDEFINITE);
        }
        return Ok(());
    };
    let mut ctx = x.ctx(false);
    let r = if OP == SIN {
        tr::sin(a, &mut ctx)
    } else {
        tr::cos(a, &mut ctx)
    };
    match r {
        None => x.fsw = (x.fsw & !C1) | C2,
        Some(v) => {
            if x.commit(&ctx, true) {
                x.set_st(0, v);
            }
        }
    }
    Ok(())
}

/// FSINCOS (ST(0) = sin, then cos pushed) and FPTAN (ST(0) = tan, then 1 pushed); a NaN
/// result is pushed in place of the second value. An operand of magnitude 2^63 or more
/// stays, with C2 set; a full stack is an overflow before anything else.
fn ftrig_push<const OP: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let x = &mut cpu.x87;
    x.fsw &= !C2;
    let a = x.st(0);
    if x.st(7).is_some() || a.is_none() {
        if x.stack_fault(a.is_some()) {
            x.set_st(0, INDEFINITE);
            x.push(INDEFINITE);
        }
        return Ok(());
    }
    let a = a.unwrap_or(INDEFINITE);
    let mut ctx = x.ctx(false);
    let r = if OP == SINCOS {
        tr::sin_cos(a, &mut ctx)
    } else {
        tr::tan(a, &mut ctx).map(|t| (t, if sf::is_nan(t) { t } else { sf::ONE }))
    };
    match r {
        None => x.fsw = (x.fsw & !C1) | C2,
        Some((first, second)) => {
            if x.commit(&ctx, true) {
                x.set_st(0, first);
                x.push(second);
            }
        }
    }
    Ok(())
}

/// F2XM1: ST(0) = 2^ST(0) - 1.
fn f2xm1(cpu: &mut Cpu, i: &Insn) -> Step {
    unary(cpu, i, false, tr::f2xm1)
}

const ATAN: u8 = 0;
const YL2X: u8 = 1;
const YL2XP1: u8 = 2;

/// FPATAN (ST(1) = atan2(ST(1), ST(0))), FYL2X (ST(1) = ST(1) * log2(ST(0))) and
/// FYL2XP1 (ST(1) = ST(1) * log2(ST(0) + 1)), then pop.
fn binary_pop<const OP: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let r = cpu.x87.st(0).zip(cpu.x87.st(1)).map(|(a, b)| {
        let mut ctx = cpu.x87.ctx(false);
        let v = match OP {
            ATAN => tr::atan2(b, a, &mut ctx),
            YL2X => tr::fyl2x(a, b, &mut ctx),
            _ => tr::fyl2xp1(a, b, &mut ctx),
        };
        (v, ctx)
    });
    finish(cpu, 1, r, true);
    Ok(())
}

/// Registers the arithmetic, compare and one-operand instructions.
pub(crate) fn register(t: &mut OpTable) {
    use Code::*;
    macro_rules! ops {
        ($op:expr, $m32:ident, $m64:ident, $st0sti:ident, $stist0:ident, $p:ident, $i16:ident, $i32:ident) => {
            t.set($m32, OpEntry::mem(arith_mem::<{ $op }, M32FP>));
            t.set($m64, OpEntry::mem(arith_mem::<{ $op }, M64FP>));
            t.set($i16, OpEntry::mem(arith_mem::<{ $op }, M16INT>));
            t.set($i32, OpEntry::mem(arith_mem::<{ $op }, M32INT>));
            t.set($st0sti, OpEntry::reg(arith_reg::<{ $op }, false>));
            t.set($stist0, OpEntry::reg(arith_reg::<{ $op }, false>));
            t.set($p, OpEntry::reg(arith_reg::<{ $op }, true>));
        };
    }
    ops!(
        ADD,
        Fadd_m32fp,
        Fadd_m64fp,
        Fadd_st0_sti,
        Fadd_sti_st0,
        Faddp_sti_st0,
        Fiadd_m16int,
        Fiadd_m32int
    );
    ops!(
        MUL,
        Fmul_m32fp,
        Fmul_m64fp,
        Fmul_st0_sti,
        Fmul_sti_st0,
        Fmulp_sti_st0,
        Fimul_m16int,
        Fimul_m32int
    );
    ops!(
        SUB,
        Fsub_m32fp,
        Fsub_m64fp,
        Fsub_st0_sti,
        Fsub_sti_st0,
        Fsubp_sti_st0,
        Fisub_m16int,
        Fisub_m32int
    );
    ops!(
        SUBR,
        Fsubr_m32fp,
        Fsubr_m64fp,
        Fsubr_st0_sti,
        Fsubr_sti_st0,
        Fsubrp_sti_st0,
        Fisubr_m16int,
        Fisubr_m32int
    );
    ops!(
        DIV,
        Fdiv_m32fp,
        Fdiv_m64fp,
        Fdiv_st0_sti,
        Fdiv_sti_st0,
        Fdivp_sti_st0,
        Fidiv_m16int,
        Fidiv_m32int
    );
    ops!(
        DIVR,
        Fdivr_m32fp,
        Fdivr_m64fp,
        Fdivr_st0_sti,
        Fdivr_sti_st0,
        Fdivrp_sti_st0,
        Fidivr_m16int,
        Fidivr_m32int
    );

    t.set(Fcom_st0_sti, OpEntry::reg(fcom_reg::<true, 0>));
    t.set(Fcomp_st0_sti, OpEntry::reg(fcom_reg::<true, 1>));
    t.set(Fcompp, OpEntry::reg(fcom_reg::<true, 2>));
    t.set(Fucom_st0_sti, OpEntry::reg(fcom_reg::<false, 0>));
    t.set(Fucomp_st0_sti, OpEntry::reg(fcom_reg::<false, 1>));
    t.set(Fucompp, OpEntry::reg(fcom_reg::<false, 2>));
    t.set(Fcom_m32fp, OpEntry::mem(fcom_mem::<M32FP, false>));
    t.set(Fcom_m64fp, OpEntry::mem(fcom_mem::<M64FP, false>));
    t.set(Fcomp_m32fp, OpEntry::mem(fcom_mem::<M32FP, true>));
    t.set(Fcomp_m64fp, OpEntry::mem(fcom_mem::<M64FP, true>));
    t.set(Ficom_m16int, OpEntry::mem(fcom_mem::<M16INT, false>));
    t.set(Ficom_m32int, OpEntry::mem(fcom_mem::<M32INT, false>));
    t.set(Ficomp_m16int, OpEntry::mem(fcom_mem::<M16INT, true>));
    t.set(Ficomp_m32int, OpEntry::mem(fcom_mem::<M32INT, true>));
    t.set(Fcomi_st0_sti, OpEntry::reg(fcomi::<true, false>));
    t.set(Fcomip_st0_sti, OpEntry::reg(fcomi::<true, true>));
    t.set(Fucomi_st0_sti, OpEntry::reg(fcomi::<false, false>));
    t.set(Fucomip_st0_sti, OpEntry::reg(fcomi::<false, true>));
    t.set(Ftst, OpEntry::reg(ftst));
    t.set(Fxam, OpEntry::reg(fxam));
    t.set(Fchs, OpEntry::reg(fchs));
    t.set(Fabs, OpEntry::reg(fabs));
    t.set(Fsqrt, OpEntry::reg(fsqrt));
    t.set(Frndint, OpEntry::reg(frndint));
    t.set(Fscale, OpEntry::reg(fscale));
    t.set(Fxtract, OpEntry::reg(fxtract));
    t.set(Fprem, OpEntry::reg(fprem::<false>));
    t.set(Fprem1, OpEntry::reg(fprem::<true>));
    t.set(Fsin, OpEntry::reg(ftrig::<SIN>));
    t.set(Fcos, OpEntry::reg(ftrig::<COS>));
    t.set(Fsincos, OpEntry::reg(ftrig_push::<SINCOS>));
    t.set(Fptan, OpEntry::reg(ftrig_push::<TAN>));
    t.set(F2xm1, OpEntry::reg(f2xm1));
    t.set(Fpatan, OpEntry::reg(binary_pop::<ATAN>));
    t.set(Fyl2x, OpEntry::reg(binary_pop::<YL2X>));
    t.set(Fyl2xp1, OpEntry::reg(binary_pop::<YL2XP1>));
}
