//! Control transfers: JMP, Jcc, CALL, RET, LOOP/LOOPcc, JRCXZ/JECXZ, INT3, INT n, UD2, HLT.
//!
//! Every handler here is a block terminator and sets RIP itself.

use iced_x86::Code;

use super::stack::{pop_value, push_value};
use crate::cpu::{reg, Cpu};
use crate::exception::Exception;
use crate::insn::{Handler, Insn, OpEntry, OpTable, Step, Trap};

fn jmp_rel(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = i.imm;
    Ok(())
}

fn jmp_reg(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = cpu.regs[i.dst as usize & 15];
    Ok(())
}

fn jmp_mem(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.rip = super::load::<8>(cpu, i)?;
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

fn call_rel(cpu: &mut Cpu, i: &Insn) -> Step {
    push_value::<8>(cpu, i.next_rip())?;
    cpu.rip = i.imm;
    Ok(())
}

fn call_reg(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = cpu.regs[i.dst as usize & 15];
    push_value::<8>(cpu, i.next_rip())?;
    cpu.rip = target;
    Ok(())
}

fn call_mem(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = super::load::<8>(cpu, i)?;
    push_value::<8>(cpu, i.next_rip())?;
    cpu.rip = target;
    Ok(())
}

fn ret(cpu: &mut Cpu, _: &Insn) -> Step {
    cpu.rip = pop_value::<8>(cpu)?;
    Ok(())
}

fn ret_imm(cpu: &mut Cpu, i: &Insn) -> Step {
    let target = pop_value::<8>(cpu)?;
    let rsp = &mut cpu.regs[reg::RSP as usize];
    *rsp = rsp.wrapping_add(i.imm & 0xffff);
    cpu.rip = target;
    Ok(())
}

/// LOOP kinds: plain, LOOPE (also needs ZF), LOOPNE (also needs !ZF).
const LOOP: u8 = 0;
const LOOPE: u8 = 1;
const LOOPNE: u8 = 2;

fn loop_rel<const KIND: u8, const ECX: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let count = if ECX {
        let c = cpu.reg::<4>(reg::RCX).wrapping_sub(1) & 0xffff_ffff;
        cpu.set_reg::<4>(reg::RCX, c);
        c
    } else {
        let c = cpu.regs[reg::RCX as usize].wrapping_sub(1);
        cpu.regs[reg::RCX as usize] = c;
        c
    };
    let taken = count != 0
        && match KIND {
            LOOPE => cpu.flags.zf(),
            LOOPNE => !cpu.flags.zf(),
            _ => true,
        };
    cpu.rip = if taken { i.imm } else { i.next_rip() };
    Ok(())
}

fn jrcxz<const ECX: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let count = if ECX {
        cpu.reg::<4>(reg::RCX)
    } else {
        cpu.regs[reg::RCX as usize]
    };
    cpu.rip = if count == 0 { i.imm } else { i.next_rip() };
    Ok(())
}

fn int3(_: &mut Cpu, _: &Insn) -> Step {
    Err(Trap::SoftwareInterrupt(3))
}

fn int_n(_: &mut Cpu, i: &Insn) -> Step {
    Err(Trap::SoftwareInterrupt(i.imm as u8))
}

fn ud(_: &mut Cpu, _: &Insn) -> Step {
    Err(Trap::Exception(Exception::InvalidOpcode))
}

/// IRETQ (64-bit mode): see [`crate::interrupt::iretq`].
fn iretq(cpu: &mut Cpu, _: &Insn) -> Step {
    crate::interrupt::iretq(cpu)
}

fn hlt(cpu: &mut Cpu, _: &Insn) -> Step {
    super::privileged::require_cpl0(cpu)?;
    Err(Trap::Halt)
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::Jmp_rel8_64, OpEntry::reg(jmp_rel).branch());
    t.set(Code::Jmp_rel32_64, OpEntry::reg(jmp_rel).branch());
    t.set(Code::Jmp_rm64, OpEntry::rm(jmp_reg, jmp_mem).branch());
    let jcc8 = [
        Code::Jo_rel8_64,
        Code::Jno_rel8_64,
        Code::Jb_rel8_64,
        Code::Jae_rel8_64,
        Code::Je_rel8_64,
        Code::Jne_rel8_64,
        Code::Jbe_rel8_64,
        Code::Ja_rel8_64,
        Code::Js_rel8_64,
        Code::Jns_rel8_64,
        Code::Jp_rel8_64,
        Code::Jnp_rel8_64,
        Code::Jl_rel8_64,
        Code::Jge_rel8_64,
        Code::Jle_rel8_64,
        Code::Jg_rel8_64,
    ];
    let jcc32 = [
        Code::Jo_rel32_64,
        Code::Jno_rel32_64,
        Code::Jb_rel32_64,
        Code::Jae_rel32_64,
        Code::Je_rel32_64,
        Code::Jne_rel32_64,
        Code::Jbe_rel32_64,
        Code::Ja_rel32_64,
        Code::Js_rel32_64,
        Code::Jns_rel32_64,
        Code::Jp_rel32_64,
        Code::Jnp_rel32_64,
        Code::Jl_rel32_64,
        Code::Jge_rel32_64,
        Code::Jle_rel32_64,
        Code::Jg_rel32_64,
    ];
    for (cc, (c8, c32)) in jcc8.into_iter().zip(jcc32).enumerate() {
        t.set(c8, OpEntry::reg(jcc_handler(cc as u8)).branch());
        t.set(c32, OpEntry::reg(jcc_handler(cc as u8)).branch());
    }
    t.set(Code::Call_rel32_64, OpEntry::reg(call_rel).branch());
    t.set(Code::Call_rm64, OpEntry::rm(call_reg, call_mem).branch());
    t.set(Code::Retnq, OpEntry::reg(ret).branch());
    t.set(Code::Retnq_imm16, OpEntry::reg(ret_imm).branch());
    t.set(
        Code::Loop_rel8_64_RCX,
        OpEntry::reg(loop_rel::<LOOP, false>).branch(),
    );
    t.set(
        Code::Loop_rel8_64_ECX,
        OpEntry::reg(loop_rel::<LOOP, true>).branch(),
    );
    t.set(
        Code::Loope_rel8_64_RCX,
        OpEntry::reg(loop_rel::<LOOPE, false>).branch(),
    );
    t.set(
        Code::Loope_rel8_64_ECX,
        OpEntry::reg(loop_rel::<LOOPE, true>).branch(),
    );
    t.set(
        Code::Loopne_rel8_64_RCX,
        OpEntry::reg(loop_rel::<LOOPNE, false>).branch(),
    );
    t.set(
        Code::Loopne_rel8_64_ECX,
        OpEntry::reg(loop_rel::<LOOPNE, true>).branch(),
    );
    t.set(Code::Jrcxz_rel8_64, OpEntry::reg(jrcxz::<false>).branch());
    t.set(Code::Jecxz_rel8_64, OpEntry::reg(jrcxz::<true>).branch());
    t.set(Code::Int3, OpEntry::reg(int3).branch());
    t.set(Code::Int_imm8, OpEntry::reg(int_n).branch());
    t.set(Code::Ud2, OpEntry::reg(ud).branch());
    t.set(Code::Hlt, OpEntry::reg(hlt).branch());
    t.set(Code::Iretq, OpEntry::reg(iretq).branch());
}
