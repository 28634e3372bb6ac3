//! Control transfers: JMP, Jcc, CALL, RET, LOOP/LOOPcc, JRCXZ/JECXZ, INT3, INT n, UD2, HLT.
//!
//! Every handler here is a block terminator and sets RIP itself.

use iced_x86::Code;

use super::stack::{pop_value, push_value, set_stack_offset};
use crate::cpu::{mask, reg, Cpu};
use crate::exception::Exception;
use crate::insn::{Handler, Insn, OpEntry, OpTable, Step, Trap};

fn jmp_rel(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = i.imm;
    Ok(())
}

/// JMP r/m with an `N`-byte target (zero-extended: 16- and 32-bit forms exist only
/// outside 64-bit mode, where the upper half of RIP is not visible).
fn jmp_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = cpu.reg::<N>(i.dst);
    Ok(())
}

fn jmp_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = super::load::<N>(cpu, i)?;
    Ok(())
}

fn jcc<const CC: u8>(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = if cpu.flags.condition(CC) {
        i.imm
    } else {
        i.next_rip()
    };
    Ok(())
}

/// The Jcc handler for condition code `cc` (monomorphized so each evaluates its
/// condition with constant folding).
pub(crate) fn jcc_handler(cc: u8) -> Handler {
    const HANDLERS: [Handler; 16] = [
        jcc::<0>, jcc::<1>, jcc::<2>, jcc::<3>, jcc::<4>, jcc::<5>, jcc::<6>, jcc::<7>, jcc::<8>,
        jcc::<9>, jcc::<10>, jcc::<11>, jcc::<12>, jcc::<13>, jcc::<14>, jcc::<15>,
    ];
    HANDLERS[cc as usize & 15]
}

/// CALL rel with an `N`-byte return address.
fn call_rel<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    push_value::<N>(cpu, i.next_rip())?;
    cpu.rip = i.imm;
    Ok(())
}

fn call_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = cpu.reg::<N>(i.dst);
    push_value::<N>(cpu, i.next_rip())?;
    cpu.rip = target;
    Ok(())
}

fn call_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = super::load::<N>(cpu, i)?;
    push_value::<N>(cpu, i.next_rip())?;
    cpu.rip = target;
    Ok(())
}

fn ret<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    cpu.rip = pop_value::<N>(cpu)?;
    Ok(())
}

fn ret_imm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = pop_value::<N>(cpu)?;
    let sp = cpu.regs[reg::RSP as usize].wrapping_add(i.imm & 0xffff);
    set_stack_offset(cpu, sp);
    cpu.rip = target;
    Ok(())
}

/// LOOP kinds: plain, LOOPE (also needs ZF), LOOPNE (also needs !ZF).
const LOOP: u8 = 0;
const LOOPE: u8 = 1;
const LOOPNE: u8 = 2;

/// LOOP/LOOPE/LOOPNE counting in CX, ECX or RCX (`W` bytes: the address size).
fn loop_rel<const KIND: u8, const W: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let count = cpu.reg::<W>(reg::RCX).wrapping_sub(1) & mask::<W>();
    cpu.set_reg::<W>(reg::RCX, count);
    let taken = count != 0
        && match KIND {
            LOOPE => cpu.flags.zf(),
            LOOPNE => !cpu.flags.zf(),
            _ => true,
        };
    cpu.rip = if taken { i.imm } else { i.next_rip() };
    Ok(())
}

/// JCXZ/JECXZ/JRCXZ (`W` bytes of the count register).
fn jrcxz<const W: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = if cpu.reg::<W>(reg::RCX) == 0 {
        i.imm
    } else {
        i.next_rip()
    };
    Ok(())
}

fn int3(_: &mut Cpu, _: &Insn) -> Step {
    Err(Trap::SoftwareInterrupt(3).into())
}

fn int_n(_: &mut Cpu, i: &Insn) -> Step {
    Err(Trap::SoftwareInterrupt(i.imm as u8).into())
}

fn ud(_: &mut Cpu, _: &Insn) -> Step {
    Err(Trap::Exception(Exception::InvalidOpcode).into())
}

fn hlt(cpu: &mut Cpu, _: &Insn) -> Step {
    super::privileged::require_cpl0(cpu)?;
    Err(Trap::Halt.into())
}

pub(crate) fn register(t: &mut OpTable) {
    for code in [Code::Jmp_rel8_64, Code::Jmp_rel32_64].into_iter().chain([
        Code::Jmp_rel8_16,
        Code::Jmp_rel8_32,
        Code::Jmp_rel16,
        Code::Jmp_rel32_32,
    ]) {
        t.set(code, OpEntry::reg(jmp_rel).branch());
    }
    t.set(
        Code::Jmp_rm64,
        OpEntry::rm(jmp_reg::<8>, jmp_mem::<8>).branch(),
    );
    t.set(
        Code::Jmp_rm32,
        OpEntry::rm(jmp_reg::<4>, jmp_mem::<4>).branch(),
    );
    t.set(
        Code::Jmp_rm16,
        OpEntry::rm(jmp_reg::<2>, jmp_mem::<2>).branch(),
    );
    // Jcc in every encoding: rel8 and rel16/32 forms for 16-, 32- and 64-bit operand size.
    for code in Code::values() {
        use iced_x86::Mnemonic as M;
        let is_jcc = matches!(
            code.mnemonic(),
            M::Jo
                | M::Jno
                | M::Jb
                | M::Jae
                | M::Je
                | M::Jne
                | M::Jbe
                | M::Ja
                | M::Js
                | M::Jns
                | M::Jp
                | M::Jnp
                | M::Jl
                | M::Jge
                | M::Jle
                | M::Jg
        );
        if is_jcc {
            let cc = code.condition_code() as u8 - 1;
            t.set(code, OpEntry::reg(jcc_handler(cc)).branch());
        }
    }
    t.set(Code::Call_rel32_64, OpEntry::reg(call_rel::<8>).branch());
    t.set(Code::Call_rel32_32, OpEntry::reg(call_rel::<4>).branch());
    t.set(Code::Call_rel16, OpEntry::reg(call_rel::<2>).branch());
    t.set(
        Code::Call_rm64,
        OpEntry::rm(call_reg::<8>, call_mem::<8>).branch(),
    );
    t.set(
        Code::Call_rm32,
        OpEntry::rm(call_reg::<4>, call_mem::<4>).branch(),
    );
    t.set(
        Code::Call_rm16,
        OpEntry::rm(call_reg::<2>, call_mem::<2>).branch(),
    );
    t.set(Code::Retnq, OpEntry::reg(ret::<8>).branch());
    t.set(Code::Retnd, OpEntry::reg(ret::<4>).branch());
    t.set(Code::Retnw, OpEntry::reg(ret::<2>).branch());
    t.set(Code::Retnq_imm16, OpEntry::reg(ret_imm::<8>).branch());
    t.set(Code::Retnd_imm16, OpEntry::reg(ret_imm::<4>).branch());
    t.set(Code::Retnw_imm16, OpEntry::reg(ret_imm::<2>).branch());
    use Code::*;
    let loops: [(Code, Handler); 24] = [
        (Loop_rel8_16_CX, loop_rel::<LOOP, 2>),
        (Loop_rel8_32_CX, loop_rel::<LOOP, 2>),
        (Loop_rel8_16_ECX, loop_rel::<LOOP, 4>),
        (Loop_rel8_32_ECX, loop_rel::<LOOP, 4>),
        (Loop_rel8_64_ECX, loop_rel::<LOOP, 4>),
        (Loop_rel8_64_RCX, loop_rel::<LOOP, 8>),
        (Loope_rel8_16_CX, loop_rel::<LOOPE, 2>),
        (Loope_rel8_32_CX, loop_rel::<LOOPE, 2>),
        (Loope_rel8_16_ECX, loop_rel::<LOOPE, 4>),
        (Loope_rel8_32_ECX, loop_rel::<LOOPE, 4>),
        (Loope_rel8_64_ECX, loop_rel::<LOOPE, 4>),
        (Loope_rel8_64_RCX, loop_rel::<LOOPE, 8>),
        (Loopne_rel8_16_CX, loop_rel::<LOOPNE, 2>),
        (Loopne_rel8_32_CX, loop_rel::<LOOPNE, 2>),
        (Loopne_rel8_16_ECX, loop_rel::<LOOPNE, 4>),
        (Loopne_rel8_32_ECX, loop_rel::<LOOPNE, 4>),
        (Loopne_rel8_64_ECX, loop_rel::<LOOPNE, 4>),
        (Loopne_rel8_64_RCX, loop_rel::<LOOPNE, 8>),
        (Jcxz_rel8_16, jrcxz::<2>),
        (Jcxz_rel8_32, jrcxz::<2>),
        (Jecxz_rel8_16, jrcxz::<4>),
        (Jecxz_rel8_32, jrcxz::<4>),
        (Jecxz_rel8_64, jrcxz::<4>),
        (Jrcxz_rel8_64, jrcxz::<8>),
    ];
    for (code, handler) in loops {
        t.set(code, OpEntry::reg(handler).branch());
    }
    t.set(Code::Int3, OpEntry::reg(int3).branch());
    t.set(Code::Int_imm8, OpEntry::reg(int_n).branch());
    t.set(Code::Ud2, OpEntry::reg(ud).branch());
    t.set(Code::Hlt, OpEntry::reg(hlt).branch());
}
