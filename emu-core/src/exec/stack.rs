//! PUSH, POP, PUSHF, POPF, ENTER, LEAVE.

use iced_x86::Code;

use crate::cpu::{reg, Cpu};
use crate::insn::{Insn, OpEntry, OpTable, Step, Trap};

/// Sets the stack pointer to offset `sp`: with a 16-bit stack only SP changes, with a
/// 32-bit one ESP, in 64-bit mode all of RSP.
#[inline(always)]
pub(crate) fn set_stack_offset(cpu: &mut Cpu, sp: u64) {
    let m = cpu.stack_mask;
    let rsp = &mut cpu.regs[reg::RSP as usize];
    *rsp = (*rsp & !m) | (sp & m);
}

/// Pushes an `N`-byte value. RSP changes only if the store succeeds.
#[inline(always)]
pub(crate) fn push_value<const N: usize>(cpu: &mut Cpu, value: u64) -> Result<(), Trap> {
    let sp = cpu.regs[reg::RSP as usize].wrapping_sub(N as u64);
    cpu.mmu.write::<N>(cpu.stack_linear(sp), value)?;
    set_stack_offset(cpu, sp);
    Ok(())
}

/// Pops an `N`-byte value. RSP changes only if the load succeeds.
#[inline(always)]
pub(crate) fn pop_value<const N: usize>(cpu: &mut Cpu) -> Result<u64, Trap> {
    let sp = cpu.regs[reg::RSP as usize];
    let value = cpu.mmu.read::<N>(cpu.stack_linear(sp))?;
    set_stack_offset(cpu, sp.wrapping_add(N as u64));
    Ok(value)
}

/// Reads the `N`-byte stack slot `k` slots above the stack pointer without popping it.
pub(crate) fn peek_value<const N: usize>(cpu: &mut Cpu, k: u64) -> Result<u64, Trap> {
    let sp = cpu.regs[reg::RSP as usize].wrapping_add(k * N as u64);
    Ok(cpu.mmu.read::<N>(cpu.stack_linear(sp))?)
}

/// Checks that `bytes` bytes below the stack pointer can be pushed (for instructions
/// that push several values and must not fault half-way).
pub(crate) fn check_push_room(cpu: &mut Cpu, bytes: u64) -> Result<(), Trap> {
    let sp = cpu.regs[reg::RSP as usize].wrapping_sub(bytes);
    let low = cpu.stack_linear(sp);
    let high = cpu.stack_linear(sp.wrapping_add(bytes - 1));
    if high >= low {
        cpu.mmu.check_writable(low, bytes)?;
    } else {
        // The stack wraps inside the segment: check byte by byte.
        for k in 0..bytes {
            cpu.mmu
                .check_writable(cpu.stack_linear(sp.wrapping_add(k)), 1)?;
        }
    }
    Ok(())
}

fn push_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.dst);
    Ok(push_value::<N>(cpu, v)?)
}

fn push_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::load::<N>(cpu, i)?;
    Ok(push_value::<N>(cpu, v)?)
}

fn push_imm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    Ok(push_value::<N>(cpu, i.imm)?)
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
        return Err(e.into());
    }
    Ok(())
}

/// RFLAGS as PUSHF stores it: RF and VM read as zero.
fn flags_image(cpu: &Cpu) -> u64 {
    cpu.rflags() & !((1 << 16) | (1 << 17))
}

fn pushf<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let v = flags_image(cpu);
    Ok(push_value::<N>(cpu, v)?)
}

/// POPF: outside real mode IOPL changes only at CPL 0 and IF only when CPL <= IOPL (as
/// on hardware, silently); RF is cleared and VM is never set.
fn popf<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let v = pop_value::<N>(cpu)?;
    let mut keep = !0xffff_u64; // a 16-bit POPF leaves the upper half alone
    if N != 2 {
        keep = 0;
    }
    if !cpu.real_mode() {
        if cpu.sys.cpl > 0 {
            keep |= 3 << 12;
        }
        if cpu.sys.cpl > cpu.iopl() {
            keep |= crate::flags::IF;
        }
    }
    let current = cpu.rflags();
    cpu.set_rflags(((current & keep) | (v & !keep)) & !(1 << 16));
    Ok(())
}

/// LEAVE: the stack pointer takes the frame pointer (at the stack's width), then the old
/// frame pointer is popped.
fn leave<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let bp = cpu.regs[reg::RBP as usize];
    let v = cpu.mmu.read::<N>(cpu.stack_linear(bp))?;
    set_stack_offset(cpu, bp.wrapping_add(N as u64));
    cpu.set_reg::<N>(reg::RBP, v);
    Ok(())
}

/// ENTER imm16, imm8 with an `N`-byte operand size. The frame stores are checked before
/// any is made, so a fault there leaves the stack untouched; a fault on the final stack
/// pointer comes after them, as on hardware.
fn enter<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let n = N as u64;
    let size = i.imm & 0xffff;
    let level = (i.imm2 & 31) as u64;
    let rsp = cpu.regs[reg::RSP as usize];
    let mut bp = cpu.regs[reg::RBP as usize];
    let frame = rsp.wrapping_sub(n) & cpu.stack_mask;
    // Pushes: old frame pointer, level-1 copied frame pointers, and the new frame pointer.
    let pushes = if level == 0 { 1 } else { level + 1 };
    check_push_room(cpu, n * pushes)?;
    let mut copied = Vec::new();
    for _ in 1..level {
        bp = bp.wrapping_sub(n);
        copied.push(cpu.mmu.read::<N>(cpu.stack_linear(bp))?);
    }
    let mut sp = rsp;
    sp = sp.wrapping_sub(n);
    let old_bp = cpu.regs[reg::RBP as usize];
    cpu.mmu.write::<N>(cpu.stack_linear(sp), old_bp)?;
    for v in copied {
        sp = sp.wrapping_sub(n);
        cpu.mmu.write::<N>(cpu.stack_linear(sp), v)?;
    }
    if level > 0 {
        sp = sp.wrapping_sub(n);
        cpu.mmu.write::<N>(cpu.stack_linear(sp), frame)?;
    }
    // The SDM: ENTER faults if a write using the final stack pointer would fault. Hardware
    // probes it after storing the frame (the stores stay, RSP and RBP do not change), and
    // nothing is written there.
    let final_sp = sp.wrapping_sub(size);
    cpu.mmu.check_writable(cpu.stack_linear(final_sp), n)?;
    cpu.set_reg::<N>(reg::RBP, frame);
    set_stack_offset(cpu, final_sp);
    Ok(())
}

/// PUSHA/PUSHAD: the eight general registers, with the stack pointer as it was before.
fn pusha<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    check_push_room(cpu, 8 * N as u64)?;
    let original_sp = cpu.regs[reg::RSP as usize];
    for r in 0..8u8 {
        let v = if r == reg::RSP {
            original_sp
        } else {
            cpu.regs[r as usize]
        };
        push_value::<N>(cpu, v)?;
    }
    Ok(())
}

/// POPA/POPAD: the eight general registers in reverse, skipping the saved stack pointer.
fn popa<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let mut values = [0u64; 8];
    for (k, v) in values.iter_mut().enumerate() {
        *v = peek_value::<N>(cpu, k as u64)?;
    }
    for (k, v) in values.iter().enumerate() {
        let r = 7 - k as u8;
        if r != reg::RSP {
            cpu.set_reg::<N>(r, *v);
        }
    }
    let sp = cpu.regs[reg::RSP as usize].wrapping_add(8 * N as u64);
    set_stack_offset(cpu, sp);
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
    // POPF ends its block: when it sets IF, a pending interrupt is taken right after it.
    t.set(Code::Popfq, OpEntry::reg(popf::<8>).ends_block());
    t.set(Code::Popfw, OpEntry::reg(popf::<2>).ends_block());
    t.set(Code::Leaveq, OpEntry::reg(leave::<8>));
    t.set(Code::Leavew, OpEntry::reg(leave::<2>));
    t.set(Code::Enterq_imm16_imm8, OpEntry::reg(enter::<8>));
    t.set(Code::Enterw_imm16_imm8, OpEntry::reg(enter::<2>));
    // Forms that exist only outside 64-bit mode.
    t.set(Code::Enterd_imm16_imm8, OpEntry::reg(enter::<4>));
    t.set(Code::Push_r32, OpEntry::reg(push_reg::<4>));
    t.set(Code::Push_rm32, OpEntry::rm(push_reg::<4>, push_mem::<4>));
    t.set(Code::Pushd_imm8, OpEntry::reg(push_imm::<4>));
    t.set(Code::Pushd_imm32, OpEntry::reg(push_imm::<4>));
    t.set(Code::Pop_r32, OpEntry::reg(pop_reg::<4>));
    t.set(Code::Pop_rm32, OpEntry::rm(pop_reg::<4>, pop_mem::<4>));
    t.set(Code::Pushfd, OpEntry::reg(pushf::<4>));
    t.set(Code::Popfd, OpEntry::reg(popf::<4>).ends_block());
    t.set(Code::Leaved, OpEntry::reg(leave::<4>));
    t.set(Code::Pushaw, OpEntry::reg(pusha::<2>));
    t.set(Code::Pushad, OpEntry::reg(pusha::<4>));
    t.set(Code::Popaw, OpEntry::reg(popa::<2>));
    t.set(Code::Popad, OpEntry::reg(popa::<4>));
}
