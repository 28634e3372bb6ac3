//! x87 loads and stores (floating-point and integer), the constants, FXCH and FCMOVcc.

use iced_x86::Code;

use super::arith::{mem_operand, M16INT, M32FP, M32INT, M64FP};
use super::softfp80::{self as sf, INDEFINITE};
use super::state::C1;
use super::{begin, load80, store80, write_mem};
use crate::cpu::Cpu;
use crate::exec::sse::softfp::{Format, Round, F32, F64, OE, UE};
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step};

const M64INT: u8 = 4;
const M80: u8 = 5;
const M80BCD: u8 = 6;

/// FLD m32fp/m64fp/m80fp and FILD m16int/m32int/m64int: push the memory operand.
fn fld_mem<const K: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, true)?;
    let mut ctx = cpu.x87.ctx(false);
    let addr = i.ea(cpu);
    let v = match K {
        M64INT => sf::from_int(cpu.mmu.read::<8>(addr)? as i64),
        // 80-bit loads copy the encoding: no SNaN or denormal checks.
        M80 => load80(cpu, addr)?,
        M80BCD => sf::from_bcd(load80(cpu, addr)?),
        M32FP => mem_operand::<M32FP>(cpu, i, &mut ctx)?,
        M64FP => mem_operand::<M64FP>(cpu, i, &mut ctx)?,
        M16INT => mem_operand::<M16INT>(cpu, i, &mut ctx)?,
        _ => mem_operand::<M32INT>(cpu, i, &mut ctx)?,
    };
    cpu.x87.push_result(v, &ctx);
    Ok(())
}

/// FLD ST(i).
fn fld_sti(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let ctx = cpu.x87.ctx(false);
    match cpu.x87.st(i.dst) {
        Some(v) => cpu.x87.push_result(v, &ctx),
        None if cpu.x87.st(7).is_some() => cpu.x87.push_result(0, &ctx),
        None => {
            if cpu.x87.stack_fault(false) {
                cpu.x87.push(INDEFINITE);
            }
        }
    }
    Ok(())
}

/// A constant: its exponent field, truncated 64-bit significand, and whether the next
/// bits are above one half (round to nearest goes up).
#[derive(Clone, Copy)]
struct Constant(u32, u64, bool);

const PI: Constant = Constant(0x4000, 0xc90f_daa2_2168_c234, true);
const L2E: Constant = Constant(0x3fff, 0xb8aa_3b29_5c17_f0bb, true);
const L2T: Constant = Constant(0x4000, 0xd49a_784b_cd1b_8afe, false);
const LG2: Constant = Constant(0x3ffd, 0x9a20_9a84_fbcf_f798, true);
const LN2: Constant = Constant(0x3ffe, 0xb172_17f7_d1cf_79ab, true);

/// Pushes a constant rounded per the control word's RC (as the hardware does, with no
/// precision exception).
fn fld_const<const C: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let v = match C {
        0 => sf::ONE,
        1 => 0,
        _ => {
            let Constant(e, sig, nearest_up) = match C {
                2 => PI,
                3 => L2E,
                4 => L2T,
                5 => LG2,
                _ => LN2,
            };
            let up = match cpu.x87.ctx(false).round {
                Round::Nearest => nearest_up,
                Round::Up => true,
                Round::Down | Round::Zero => false,
            };
            sf::pack(false, e, sig + up as u64)
        }
    };
    let ctx = cpu.x87.ctx(false);
    cpu.x87.push_result(v, &ctx);
    Ok(())
}

/// The integer indefinite of a `bytes`-byte integer.
fn int_indefinite(bytes: usize) -> u64 {
    1u64 << (bytes * 8 - 1)
}

/// FST/FSTP m32fp/m64fp, FSTP m80fp, FIST/FISTP m16/m32/m64int, FISTTP, FBSTP: the value to
/// store (`None`: nothing is stored) computed on a copy of the state, the store, then the
/// state committed.
fn fst_mem<const K: u8, const POP: bool, const TRUNC: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, true)?;
    let addr = i.ea(cpu);
    let mut x = cpu.x87.clone();
    let size = match K {
        M32FP | M32INT => 4,
        M64FP | M64INT => 8,
        M16INT => 2,
        _ => 10,
    };
    let value: Option<u128> = match x.st(0) {
        None => x.stack_fault(false).then(|| match K {
            M32FP => F32::DEFAULT_NAN as u128,
            M64FP => F64::DEFAULT_NAN as u128,
            M80 => INDEFINITE,
            M80BCD => sf::BCD_INDEFINITE,
            _ => int_indefinite(size) as u128,
        }),
        Some(v) => {
            let mut ctx = x.ctx(false);
            if TRUNC {
                ctx.round = Round::Zero;
            }
            let r = match K {
                M32FP => sf::to_format::<F32>(v, &mut ctx) as u128,
                M64FP => sf::to_format::<F64>(v, &mut ctx) as u128,
                M80 => v,
                M80BCD => sf::to_bcd(v, &mut ctx).unwrap_or(sf::BCD_INDEFINITE),
                _ => match sf::to_int(v, size as u32 * 8, &mut ctx) {
                    Some(n) => n as u64 as u128 & ((1u128 << (size * 8)) - 1),
                    None => int_indefinite(size) as u128,
                },
            };
            let delivered = x.commit(&ctx, true);
            // An unmasked overflow or underflow stores nothing to memory.
            let unmasked_range = ctx.flags & (OE | UE) & !ctx.masks != 0;
            (delivered && !unmasked_range).then_some(r)
        }
    };
    if let Some(v) = value {
        if size == 10 {
            store80(cpu, addr, v)?;
        } else {
            write_mem(cpu, addr, &v.to_le_bytes()[..size])?;
        }
        if POP {
            x.pop();
        }
    }
    cpu.x87 = x;
    Ok(())
}

/// FST/FSTP ST(i): ST(i) = ST(0).
fn fst_sti<const POP: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let x = &mut cpu.x87;
    x.fsw &= !C1;
    let v = match x.st(0) {
        Some(v) => v,
        None => {
            if !x.stack_fault(false) {
                return Ok(());
            }
            INDEFINITE
        }
    };
    x.set_st(i.dst, v);
    if POP {
        x.pop();
    }
    Ok(())
}

/// FXCH ST(i).
fn fxch(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let x = &mut cpu.x87;
    let s = i.src;
    let (a, b) = match (x.st(0), x.st(s)) {
        (Some(a), Some(b)) => {
            x.fsw &= !C1;
            (a, b)
        }
        (a, b) => {
            if !x.stack_fault(false) {
                return Ok(());
            }
            (a.unwrap_or(INDEFINITE), b.unwrap_or(INDEFINITE))
        }
    };
    x.set_st(0, b);
    x.set_st(s, a);
    Ok(())
}

/// FCMOVcc ST(0), ST(i): condition number as in [`fcmov_cond`].
fn fcmov<const C: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    begin(cpu, i, false)?;
    let f = cpu.rflags();
    let cond = match C & 3 {
        0 => f & flags::CF != 0,
        1 => f & flags::ZF != 0,
        2 => f & (flags::CF | flags::ZF) != 0,
        _ => f & flags::PF != 0,
    } ^ (C >= 4);
    let x = &mut cpu.x87;
    match (x.st(0), x.st(i.src)) {
        (Some(_), Some(v)) => {
            x.fsw &= !C1;
            if cond {
                x.set_st(0, v);
            }
        }
        _ => {
            if x.stack_fault(false) {
                x.set_st(0, INDEFINITE);
            }
        }
    }
    Ok(())
}

/// Registers the loads, stores, constants, FXCH and FCMOVcc.
pub(crate) fn register(t: &mut OpTable) {
    use Code::*;
    t.set(Fld_m32fp, OpEntry::mem(fld_mem::<M32FP>));
    t.set(Fld_m64fp, OpEntry::mem(fld_mem::<M64FP>));
    t.set(Fld_m80fp, OpEntry::mem(fld_mem::<M80>));
    t.set(Fild_m16int, OpEntry::mem(fld_mem::<M16INT>));
    t.set(Fild_m32int, OpEntry::mem(fld_mem::<M32INT>));
    t.set(Fild_m64int, OpEntry::mem(fld_mem::<M64INT>));
    t.set(Fld_sti, OpEntry::reg(fld_sti));
    t.set(Fld1, OpEntry::reg(fld_const::<0>));
    t.set(Fldz, OpEntry::reg(fld_const::<1>));
    t.set(Fldpi, OpEntry::reg(fld_const::<2>));
    t.set(Fldl2e, OpEntry::reg(fld_const::<3>));
    t.set(Fldl2t, OpEntry::reg(fld_const::<4>));
    t.set(Fldlg2, OpEntry::reg(fld_const::<5>));
    t.set(Fldln2, OpEntry::reg(fld_const::<6>));
    t.set(Fst_m32fp, OpEntry::mem(fst_mem::<M32FP, false, false>));
    t.set(Fst_m64fp, OpEntry::mem(fst_mem::<M64FP, false, false>));
    t.set(Fstp_m32fp, OpEntry::mem(fst_mem::<M32FP, true, false>));
    t.set(Fstp_m64fp, OpEntry::mem(fst_mem::<M64FP, true, false>));
    t.set(Fstp_m80fp, OpEntry::mem(fst_mem::<M80, true, false>));
    t.set(Fbld_m80bcd, OpEntry::mem(fld_mem::<M80BCD>));
    t.set(Fbstp_m80bcd, OpEntry::mem(fst_mem::<M80BCD, true, false>));
    t.set(Fist_m16int, OpEntry::mem(fst_mem::<M16INT, false, false>));
    t.set(Fist_m32int, OpEntry::mem(fst_mem::<M32INT, false, false>));
    t.set(Fistp_m16int, OpEntry::mem(fst_mem::<M16INT, true, false>));
    t.set(Fistp_m32int, OpEntry::mem(fst_mem::<M32INT, true, false>));
    t.set(Fistp_m64int, OpEntry::mem(fst_mem::<M64INT, true, false>));
    t.set(Fisttp_m16int, OpEntry::mem(fst_mem::<M16INT, true, true>));
    t.set(Fisttp_m32int, OpEntry::mem(fst_mem::<M32INT, true, true>));
    t.set(Fisttp_m64int, OpEntry::mem(fst_mem::<M64INT, true, true>));
    t.set(Fst_sti, OpEntry::reg(fst_sti::<false>));
    t.set(Fstp_sti, OpEntry::reg(fst_sti::<true>));
    t.set(Fxch_st0_sti, OpEntry::reg(fxch));
    t.set(Fcmovb_st0_sti, OpEntry::reg(fcmov::<0>));
    t.set(Fcmove_st0_sti, OpEntry::reg(fcmov::<1>));
    t.set(Fcmovbe_st0_sti, OpEntry::reg(fcmov::<2>));
    t.set(Fcmovu_st0_sti, OpEntry::reg(fcmov::<3>));
    t.set(Fcmovnb_st0_sti, OpEntry::reg(fcmov::<4>));
    t.set(Fcmovne_st0_sti, OpEntry::reg(fcmov::<5>));
    t.set(Fcmovnbe_st0_sti, OpEntry::reg(fcmov::<6>));
    t.set(Fcmovnu_st0_sti, OpEntry::reg(fcmov::<7>));
}
