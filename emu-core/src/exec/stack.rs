//! PUSH, POP, PUSHF, POPF, ENTER, LEAVE.

use iced_x86::Code;

use crate::cpu::{reg, Cpu};
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};

/// Pushes an `N`-byte value. RSP changes only if the store succeeds.
#[inline(always)]
pub(crate) fn push_value<const N: usize>(cpu: &mut Cpu, value: u64) -> Result<(), Trap> {
    let rsp = cpu.regs[reg::RSP as usize].wrapping_sub(N as u64);
    cpu.mmu.write::<N>(rsp, value)?;
    cpu.regs[reg::RSP as usize] = rsp;
    Ok(())
}

/// Pops an `N`-byte value. RSP changes only if the load succeeds.
#[inline(always)]
pub(crate) fn pop_value<const N: usize>(cpu: &mut Cpu) -> Result<u64, Trap> {
    let rsp = cpu.regs[reg::RSP as usize];
    let value = cpu.mmu.read::<N>(rsp)?;
    cpu.regs[reg::RSP as usize] = rsp.wrapping_add(N as u64);
    Ok(value)
}

fn push_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.dst);
    push_value::<N>(cpu, v)
}

fn push_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::load::<N>(cpu, i)?;
    push_value::<N>(cpu, v)
}

fn push_imm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    push_value::<N>(cpu, i.imm)
}

fn pop_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = pop_value::<N>(cpu)?;
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

/// POP to memory: an RSP-based address is computed after the increment.
fn pop_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let old_rsp = cpu.regs[reg::RSP as usize];
    let v = pop_value::<N>(cpu)?;
    if let Err(e) = super::store::<N>(cpu, i, v) {
        cpu.regs[reg::RSP as usize] = old_rsp;
        return Err(e);
    }
    Ok(())
}

/// RFLAGS as PUSHF stores it: RF and VM read as zero.
fn flags_image(cpu: &Cpu) -> u64 {
    cpu.rflags() & !((1 << 16) | (1 << 17))
}

fn pushf<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let v = flags_image(cpu);
    push_value::<N>(cpu, v)
}

fn popf<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let v = pop_value::<N>(cpu)?;
    let v = if N == 2 {
        (cpu.rflags() & !0xffff) | v
    } else {
        v
    };
    cpu.set_rflags(v);
    Ok(())
}

fn leave<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let rbp = cpu.regs[reg::RBP as usize];
    let v = cpu.mmu.read::<N>(rbp)?;
    cpu.regs[reg::RSP as usize] = rbp.wrapping_add(N as u64);
    cpu.set_reg::<N>(reg::RBP, v);
    Ok(())
}

/// ENTER imm16, imm8 with 64-bit operand size. The frame stores are checked before any is
/// made, so a fault there leaves the stack untouched; a fault on the final stack pointer
/// comes after them, as on hardware.
fn enter(cpu: &mut Cpu, i: &Insn) -> Step {
    let size = i.imm & 0xffff;
    let level = (i.imm2 & 31) as u64;
    let rsp = cpu.regs[reg::RSP as usize];
    let mut rbp = cpu.regs[reg::RBP as usize];
    let frame = rsp.wrapping_sub(8);
    // Bytes pushed: old RBP, level-1 copied frame pointers, and the new frame pointer.
    let pushes = if level == 0 { 1 } else { level + 1 };
    cpu.mmu
        .check_writable(rsp.wrapping_sub(8 * pushes), 8 * pushes)?;
    let mut copied = Vec::new();
    for _ in 1..level {
        rbp = rbp.wrapping_sub(8);
        copied.push(cpu.mmu.read::<8>(rbp)?);
    }
    let mut sp = rsp;
    sp = sp.wrapping_sub(8);
    cpu.mmu.write::<8>(sp, cpu.regs[reg::RBP as usize])?;
    for v in copied {
        sp = sp.wrapping_sub(8);
        cpu.mmu.write::<8>(sp, v)?;
    }
    if level > 0 {
        sp = sp.wrapping_sub(8);
        cpu.mmu.write::<8>(sp, frame)?;
    }
    // The SDM: ENTER faults if a write using the final stack pointer would fault. Hardware
    // probes it after storing the frame (the stores stay, RSP and RBP do not change), and
    // nothing is written there.
    cpu.mmu.check_writable(sp.wrapping_sub(size), 8)?;
    cpu.regs[reg::RBP as usize] = frame;
    cpu.regs[reg::RSP as usize] = sp.wrapping_sub(size);
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::Push_r64, OpEntry::reg(push_reg::<8>));
    t.set(Code::Push_r16, OpEntry::reg(push_reg::<2>));
    t.set(Code::Push_rm64, OpEntry::rm(push_reg::<8>, push_mem::<8>));
    t.set(Code::Push_rm16, OpEntry::rm(push_reg::<2>, push_mem::<2>));
    t.set(Code::Pushq_imm8, OpEntry::reg(push_imm::<8>));
    t.set(Code::Pushq_imm32, OpEntry::reg(push_imm::<8>));
    t.set(Code::Pushw_imm8, OpEntry::reg(push_imm::<2>));
    t.set(Code::Push_imm16, OpEntry::reg(push_imm::<2>));
    t.set(Code::Pop_r64, OpEntry::reg(pop_reg::<8>));
    t.set(Code::Pop_r16, OpEntry::reg(pop_reg::<2>));
    t.set(Code::Pop_rm64, OpEntry::rm(pop_reg::<8>, pop_mem::<8>));
    t.set(Code::Pop_rm16, OpEntry::rm(pop_reg::<2>, pop_mem::<2>));
    t.set(Code::Pushfq, OpEntry::reg(pushf::<8>));
    t.set(Code::Pushfw, OpEntry::reg(pushf::<2>));
    t.set(Code::Popfq, OpEntry::reg(popf::<8>));
    t.set(Code::Popfw, OpEntry::reg(popf::<2>));
    t.set(Code::Leaveq, OpEntry::reg(leave::<8>));
    t.set(Code::Leavew, OpEntry::reg(leave::<2>));
    t.set(Code::Enterq_imm16_imm8, OpEntry::reg(enter));
}
