//! Instructions that exist only outside 64-bit mode: the BCD adjustments (DAA, DAS, AAA,
//! AAS, AAM, AAD), SALC, BOUND, ARPL, INTO, the one-byte INC/DEC r16/r32 encodings and the
//! 0x82 alias of the 8-bit immediate ALU group. In 64-bit code their encodings decode as
//! something else or as invalid, so the translator never meets them there.

use iced_x86::Code;

use super::arith::{alu_mi, alu_op, alu_ri, incdec_reg};
use crate::cpu::{reg, sext, Cpu};
use crate::exception::Exception;
use crate::flags::{parity, AF, CF, OF, PF, SF, ZF};
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};

/// Replaces the arithmetic flags named in `affected` with the bits of `values`.
fn set_flags(cpu: &mut Cpu, affected: u64, values: u64) {
    let flags = cpu.flags.compute();
    cpu.flags
        .set_materialized((flags & !affected) | (values & affected));
}

/// SF, ZF and PF of an 8-bit result.
fn szp(v: u8) -> u64 {
    let mut f = 0;
    if v & 0x80 != 0 {
        f |= SF;
    }
    if v == 0 {
        f |= ZF;
    }
    if parity(v as u64) {
        f |= PF;
    }
    f
}

fn al(cpu: &Cpu) -> u8 {
    cpu.regs[reg::RAX as usize] as u8
}

/// DAA (`SUB` = false) / DAS: decimal adjust AL after an addition or a subtraction.
/// The SDM's algorithm: adjust the low digit by 6 if it is above 9 or AF is set, then
/// the high digit by 0x60 if the original AL was above 0x99 or CF was set.
fn decimal_adjust<const SUB: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    let old_al = al(cpu);
    let old_cf = cpu.flags.cf();
    let f = cpu.flags.compute();
    let mut v = old_al;
    let mut out = 0;
    if v & 0xf > 9 || f & AF != 0 {
        let (adjusted, carry) = if SUB {
            v.overflowing_sub(6)
        } else {
            v.overflowing_add(6)
        };
        v = adjusted;
        out |= AF;
        if old_cf || carry {
            out |= CF;
        }
    }
    if old_al > 0x99 || old_cf {
        v = if SUB {
            v.wrapping_sub(0x60)
        } else {
            v.wrapping_add(0x60)
        };
        out |= CF;
    } else if !SUB {
        // DAA clears CF here; DAS keeps what the low-digit step produced.
        out &= !CF;
    }
    cpu.set_reg::<1>(reg::RAX, v as u64);
    // OF is undefined; it is cleared here.
    set_flags(cpu, CF | AF | SF | ZF | PF | OF, out | szp(v));
    Ok(())
}

/// AAA (`SUB` = false) / AAS: ASCII adjust AX after an addition or subtraction.
fn aaa<const SUB: bool>(cpu: &mut Cpu, _: &Insn) -> Step {
    let f = cpu.flags.compute();
    let ax = cpu.reg::<2>(reg::RAX) as u16;
    let adjust = ax & 0xf > 9 || f & AF != 0;
    let mut v = ax;
    if adjust {
        v = if SUB {
            v.wrapping_sub(6).wrapping_sub(0x100)
        } else {
            v.wrapping_add(0x106)
        };
    }
    v &= 0xff0f;
    cpu.set_reg::<2>(reg::RAX, v as u64);
    // OF, SF, ZF and PF are undefined: they describe AL here.
    let out = if adjust { AF | CF } else { 0 };
    set_flags(cpu, CF | AF | SF | ZF | PF | OF, out | szp(v as u8));
    Ok(())
}

/// AAM imm8: AH = AL / base, AL = AL % base; `#DE` for base 0.
fn aam(cpu: &mut Cpu, i: &Insn) -> Step {
    let base = i.imm as u8;
    if base == 0 {
        return Err(Exception::DivideError.into());
    }
    let a = al(cpu);
    let (q, r) = (a / base, a % base);
    cpu.set_reg::<2>(reg::RAX, (q as u64) << 8 | r as u64);
    set_flags(cpu, CF | AF | SF | ZF | PF | OF, szp(r));
    Ok(())
}

/// AAD imm8: AL = AL + AH * base, AH = 0.
fn aad(cpu: &mut Cpu, i: &Insn) -> Step {
    let base = i.imm as u8;
    let ax = cpu.reg::<2>(reg::RAX);
    let v = ((ax & 0xff) as u8).wrapping_add(((ax >> 8) as u8).wrapping_mul(base));
    cpu.set_reg::<2>(reg::RAX, v as u64);
    set_flags(cpu, CF | AF | SF | ZF | PF | OF, szp(v));
    Ok(())
}

/// SALC (undocumented but universal): AL = CF ? 0xFF : 0, flags unchanged.
fn salc(cpu: &mut Cpu, _: &Insn) -> Step {
    let v = if cpu.flags.cf() { 0xff } else { 0 };
    cpu.set_reg::<1>(reg::RAX, v);
    Ok(())
}

/// BOUND r, m: `#BR` unless lower <= r <= upper (signed; the bounds are in memory).
fn bound<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let lower = sext::<N>(cpu.mmu.read::<N>(addr)?) as i64;
    let upper = sext::<N>(cpu.mmu.read::<N>(addr.wrapping_add(N as u64))?) as i64;
    let index = sext::<N>(cpu.reg::<N>(i.dst)) as i64;
    if index < lower || index > upper {
        return Err(Exception::BoundRange.into());
    }
    Ok(())
}

/// ARPL r/m16, r16: raises the destination selector's RPL to the source's (ZF says
/// whether it changed). `#UD` in real mode.
fn arpl<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    if cpu.real_mode() {
        return Err(Exception::InvalidOpcode.into());
    }
    // The register form has the destination in `dst` and the source in `src`; the memory
    // form keeps its only register (the source) in `dst`.
    let (dst, src) = if MEM {
        (super::load::<2>(cpu, i)?, cpu.reg::<2>(i.dst))
    } else {
        (cpu.reg::<2>(i.dst), cpu.reg::<2>(i.src))
    };
    if dst & 3 < src & 3 {
        let raised = (dst & !3) | (src & 3);
        if MEM {
            super::store::<2>(cpu, i, raised)?;
        } else {
            cpu.set_reg::<2>(i.dst, raised);
        }
        set_flags(cpu, ZF, ZF);
    } else {
        set_flags(cpu, ZF, 0);
    }
    Ok(())
}

/// INTO: the overflow trap (#OF, vector 4) when OF is set.
fn into(cpu: &mut Cpu, i: &Insn) -> Step {
    if cpu.flags.of() {
        return Err(Trap::SoftwareInterrupt(4).into());
    }
    cpu.rip = i.next_rip();
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    use alu_op::*;
    use Code::*;
    t.set(Daa, OpEntry::reg(decimal_adjust::<false>));
    t.set(Das, OpEntry::reg(decimal_adjust::<true>));
    t.set(Aaa, OpEntry::reg(aaa::<false>));
    t.set(Aas, OpEntry::reg(aaa::<true>));
    t.set(Aam_imm8, OpEntry::reg(aam));
    t.set(Aad_imm8, OpEntry::reg(aad));
    t.set(Salc, OpEntry::reg(salc));
    t.set(Bound_r16_m1616, OpEntry::mem(bound::<2>));
    t.set(Bound_r32_m3232, OpEntry::mem(bound::<4>));
    t.set(Arpl_rm16_r16, OpEntry::rm(arpl::<false>, arpl::<true>));
    t.set(Arpl_r32m16_r32, OpEntry::rm(arpl::<false>, arpl::<true>));
    t.set(Into, OpEntry::reg(into).branch());
    t.set(Inc_r16, OpEntry::reg(incdec_reg::<false, 2>));
    t.set(Inc_r32, OpEntry::reg(incdec_reg::<false, 4>));
    t.set(Dec_r16, OpEntry::reg(incdec_reg::<true, 2>));
    t.set(Dec_r32, OpEntry::reg(incdec_reg::<true, 4>));
    let group_82: [(Code, crate::insn::Handler, crate::insn::Handler); 8] = [
        (Add_rm8_imm8_82, alu_ri::<ADD, 1>, alu_mi::<ADD, 1>),
        (Or_rm8_imm8_82, alu_ri::<OR, 1>, alu_mi::<OR, 1>),
        (Adc_rm8_imm8_82, alu_ri::<ADC, 1>, alu_mi::<ADC, 1>),
        (Sbb_rm8_imm8_82, alu_ri::<SBB, 1>, alu_mi::<SBB, 1>),
        (And_rm8_imm8_82, alu_ri::<AND, 1>, alu_mi::<AND, 1>),
        (Sub_rm8_imm8_82, alu_ri::<SUB, 1>, alu_mi::<SUB, 1>),
        (Xor_rm8_imm8_82, alu_ri::<XOR, 1>, alu_mi::<XOR, 1>),
        (Cmp_rm8_imm8_82, alu_ri::<CMP, 1>, alu_mi::<CMP, 1>),
    ];
    for (code, reg_form, mem_form) in group_82 {
        let entry = OpEntry::rm(reg_form, mem_form);
        t.set(
            code,
            if code == Cmp_rm8_imm8_82 {
                entry
            } else {
                entry.lockable()
            },
        );
    }
}
