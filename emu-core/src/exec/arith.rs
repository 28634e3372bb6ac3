//! ADD, ADC, SUB, SBB, CMP, INC, DEC, NEG, and the operand-form handlers shared by the
//! whole ALU group (the logic operations in `logic.rs` use them too).

use iced_x86::Code;

use crate::cpu::{mask, Cpu};
use crate::flags::FlagOp;
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// ALU operation numbers, in the order of the x86 opcode group 1 (`/0` .. `/7`).
pub mod alu_op {
    /// ADD.
    pub const ADD: u8 = 0;
    /// OR.
    pub const OR: u8 = 1;
    /// ADC.
    pub const ADC: u8 = 2;
    /// SBB.
    pub const SBB: u8 = 3;
    /// AND.
    pub const AND: u8 = 4;
    /// SUB.
    pub const SUB: u8 = 5;
    /// XOR.
    pub const XOR: u8 = 6;
    /// CMP.
    pub const CMP: u8 = 7;
    /// TEST (AND that writes nothing back).
    pub const TEST: u8 = 8;
}
use alu_op::*;

/// Whether the operation writes its result back.
const fn writes_back(op: u8) -> bool {
    op != CMP && op != TEST
}

/// Computes an ALU result (masked to `N` bytes) without touching the flags.
#[inline(always)]
fn alu_value<const OP: u8, const N: usize>(cpu: &Cpu, a: u64, b: u64) -> u64 {
    let r = match OP {
        ADD => a.wrapping_add(b),
        OR => a | b,
        ADC => a.wrapping_add(b).wrapping_add(cpu.flags.cf() as u64),
        SBB => a.wrapping_sub(b).wrapping_sub(cpu.flags.cf() as u64),
        AND | TEST => a & b,
        SUB | CMP => a.wrapping_sub(b),
        _ => a ^ b,
    };
    r & mask::<N>()
}

/// Records the flags of an ALU operation.
#[inline(always)]
fn alu_flags<const OP: u8, const N: usize>(cpu: &mut Cpu, a: u64, b: u64, r: u64) {
    let op = match OP {
        ADD => FlagOp::Add,
        ADC => FlagOp::Adc,
        SUB | CMP => FlagOp::Sub,
        SBB => FlagOp::Sbb,
        _ => FlagOp::Logic,
    };
    cpu.flags.set::<N>(op, a, b, r);
}

/// `op reg, reg`.
pub(crate) fn alu_rr<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    let b = cpu.reg::<N>(i.src);
    let r = alu_value::<OP, N>(cpu, a, b);
    if writes_back(OP) {
        cpu.set_reg::<N>(i.dst, r);
    }
    alu_flags::<OP, N>(cpu, a, b, r);
    Ok(())
}

/// `op reg, imm`.
pub(crate) fn alu_ri<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    let b = i.imm & mask::<N>();
    let r = alu_value::<OP, N>(cpu, a, b);
    if writes_back(OP) {
        cpu.set_reg::<N>(i.dst, r);
    }
    alu_flags::<OP, N>(cpu, a, b, r);
    Ok(())
}

/// `op reg, [mem]`.
pub(crate) fn alu_rm<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    let b = super::load::<N>(cpu, i)?;
    let r = alu_value::<OP, N>(cpu, a, b);
    if writes_back(OP) {
        cpu.set_reg::<N>(i.dst, r);
    }
    alu_flags::<OP, N>(cpu, a, b, r);
    Ok(())
}

/// `op [mem], reg` (LOCK allowed). With a memory operand the register is the
/// instruction's only register operand, so it is in `dst`.
pub(crate) fn alu_mr<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let a = cpu.mmu.read::<N>(addr)?;
    let b = cpu.reg::<N>(i.dst);
    let r = alu_value::<OP, N>(cpu, a, b);
    if writes_back(OP) {
        cpu.mmu.write::<N>(addr, r)?;
    }
    alu_flags::<OP, N>(cpu, a, b, r);
    Ok(())
}

/// `op [mem], imm` (LOCK allowed).
pub(crate) fn alu_mi<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let a = cpu.mmu.read::<N>(addr)?;
    let b = i.imm & mask::<N>();
    let r = alu_value::<OP, N>(cpu, a, b);
    if writes_back(OP) {
        cpu.mmu.write::<N>(addr, r)?;
    }
    alu_flags::<OP, N>(cpu, a, b, r);
    Ok(())
}

/// Registers one group-1 operation in all its forms. `c` lists the codes in the order
/// rm,r (8/16/32/64); r,rm (8/16/32/64); accumulator,imm (8/16/32/64); rm,imm (8/16/32/64);
/// rm,imm8 sign-extended (16/32/64).
pub(crate) fn register_alu<const OP: u8>(t: &mut OpTable, c: [Code; 19]) {
    let lock = |e: OpEntry| if writes_back(OP) { e.lockable() } else { e };
    t.set(c[0], lock(OpEntry::rm(alu_rr::<OP, 1>, alu_mr::<OP, 1>)));
    t.set(c[1], lock(OpEntry::rm(alu_rr::<OP, 2>, alu_mr::<OP, 2>)));
    t.set(c[2], lock(OpEntry::rm(alu_rr::<OP, 4>, alu_mr::<OP, 4>)));
    t.set(c[3], lock(OpEntry::rm(alu_rr::<OP, 8>, alu_mr::<OP, 8>)));
    t.set(c[4], OpEntry::rm(alu_rr::<OP, 1>, alu_rm::<OP, 1>));
    t.set(c[5], OpEntry::rm(alu_rr::<OP, 2>, alu_rm::<OP, 2>));
    t.set(c[6], OpEntry::rm(alu_rr::<OP, 4>, alu_rm::<OP, 4>));
    t.set(c[7], OpEntry::rm(alu_rr::<OP, 8>, alu_rm::<OP, 8>));
    t.set(c[8], OpEntry::reg(alu_ri::<OP, 1>));
    t.set(c[9], OpEntry::reg(alu_ri::<OP, 2>));
    t.set(c[10], OpEntry::reg(alu_ri::<OP, 4>));
    t.set(c[11], OpEntry::reg(alu_ri::<OP, 8>));
    t.set(c[12], lock(OpEntry::rm(alu_ri::<OP, 1>, alu_mi::<OP, 1>)));
    t.set(c[13], lock(OpEntry::rm(alu_ri::<OP, 2>, alu_mi::<OP, 2>)));
    t.set(c[14], lock(OpEntry::rm(alu_ri::<OP, 4>, alu_mi::<OP, 4>)));
    t.set(c[15], lock(OpEntry::rm(alu_ri::<OP, 8>, alu_mi::<OP, 8>)));
    t.set(c[16], lock(OpEntry::rm(alu_ri::<OP, 2>, alu_mi::<OP, 2>)));
    t.set(c[17], lock(OpEntry::rm(alu_ri::<OP, 4>, alu_mi::<OP, 4>)));
    t.set(c[18], lock(OpEntry::rm(alu_ri::<OP, 8>, alu_mi::<OP, 8>)));
}

/// INC and DEC: CF is preserved, so the record carries it.
pub(crate) fn incdec_reg<const DEC: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    let r = if DEC {
        a.wrapping_sub(1)
    } else {
        a.wrapping_add(1)
    } & mask::<N>();
    let cf = cpu.flags.cf() as u64;
    cpu.set_reg::<N>(i.dst, r);
    cpu.flags
        .set::<N>(if DEC { FlagOp::Dec } else { FlagOp::Inc }, a, cf, r);
    Ok(())
}

fn incdec_mem<const DEC: bool, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let a = cpu.mmu.read::<N>(addr)?;
    let r = if DEC {
        a.wrapping_sub(1)
    } else {
        a.wrapping_add(1)
    } & mask::<N>();
    cpu.mmu.write::<N>(addr, r)?;
    let cf = cpu.flags.cf() as u64;
    cpu.flags
        .set::<N>(if DEC { FlagOp::Dec } else { FlagOp::Inc }, a, cf, r);
    Ok(())
}

fn neg_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = cpu.reg::<N>(i.dst);
    let r = 0u64.wrapping_sub(b) & mask::<N>();
    cpu.set_reg::<N>(i.dst, r);
    cpu.flags.set::<N>(FlagOp::Sub, 0, b, r);
    Ok(())
}

fn neg_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let b = cpu.mmu.read::<N>(addr)?;
    let r = 0u64.wrapping_sub(b) & mask::<N>();
    cpu.mmu.write::<N>(addr, r)?;
    cpu.flags.set::<N>(FlagOp::Sub, 0, b, r);
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    register_alu::<ADD>(
        t,
        [
            Code::Add_rm8_r8,
            Code::Add_rm16_r16,
            Code::Add_rm32_r32,
            Code::Add_rm64_r64,
            Code::Add_r8_rm8,
            Code::Add_r16_rm16,
            Code::Add_r32_rm32,
            Code::Add_r64_rm64,
            Code::Add_AL_imm8,
            Code::Add_AX_imm16,
            Code::Add_EAX_imm32,
            Code::Add_RAX_imm32,
            Code::Add_rm8_imm8,
            Code::Add_rm16_imm16,
            Code::Add_rm32_imm32,
            Code::Add_rm64_imm32,
            Code::Add_rm16_imm8,
            Code::Add_rm32_imm8,
            Code::Add_rm64_imm8,
        ],
    );
    register_alu::<ADC>(
        t,
        [
            Code::Adc_rm8_r8,
            Code::Adc_rm16_r16,
            Code::Adc_rm32_r32,
            Code::Adc_rm64_r64,
            Code::Adc_r8_rm8,
            Code::Adc_r16_rm16,
            Code::Adc_r32_rm32,
            Code::Adc_r64_rm64,
            Code::Adc_AL_imm8,
            Code::Adc_AX_imm16,
            Code::Adc_EAX_imm32,
            Code::Adc_RAX_imm32,
            Code::Adc_rm8_imm8,
            Code::Adc_rm16_imm16,
            Code::Adc_rm32_imm32,
            Code::Adc_rm64_imm32,
            Code::Adc_rm16_imm8,
            Code::Adc_rm32_imm8,
            Code::Adc_rm64_imm8,
        ],
    );
    register_alu::<SUB>(
        t,
        [
            Code::Sub_rm8_r8,
            Code::Sub_rm16_r16,
            Code::Sub_rm32_r32,
            Code::Sub_rm64_r64,
            Code::Sub_r8_rm8,
            Code::Sub_r16_rm16,
            Code::Sub_r32_rm32,
            Code::Sub_r64_rm64,
            Code::Sub_AL_imm8,
            Code::Sub_AX_imm16,
            Code::Sub_EAX_imm32,
            Code::Sub_RAX_imm32,
            Code::Sub_rm8_imm8,
            Code::Sub_rm16_imm16,
            Code::Sub_rm32_imm32,
            Code::Sub_rm64_imm32,
            Code::Sub_rm16_imm8,
            Code::Sub_rm32_imm8,
            Code::Sub_rm64_imm8,
        ],
    );
    register_alu::<SBB>(
        t,
        [
            Code::Sbb_rm8_r8,
            Code::Sbb_rm16_r16,
            Code::Sbb_rm32_r32,
            Code::Sbb_rm64_r64,
            Code::Sbb_r8_rm8,
            Code::Sbb_r16_rm16,
            Code::Sbb_r32_rm32,
            Code::Sbb_r64_rm64,
            Code::Sbb_AL_imm8,
            Code::Sbb_AX_imm16,
            Code::Sbb_EAX_imm32,
            Code::Sbb_RAX_imm32,
            Code::Sbb_rm8_imm8,
            Code::Sbb_rm16_imm16,
            Code::Sbb_rm32_imm32,
            Code::Sbb_rm64_imm32,
            Code::Sbb_rm16_imm8,
            Code::Sbb_rm32_imm8,
            Code::Sbb_rm64_imm8,
        ],
    );
    register_alu::<CMP>(
        t,
        [
            Code::Cmp_rm8_r8,
            Code::Cmp_rm16_r16,
            Code::Cmp_rm32_r32,
            Code::Cmp_rm64_r64,
            Code::Cmp_r8_rm8,
            Code::Cmp_r16_rm16,
            Code::Cmp_r32_rm32,
            Code::Cmp_r64_rm64,
            Code::Cmp_AL_imm8,
            Code::Cmp_AX_imm16,
            Code::Cmp_EAX_imm32,
            Code::Cmp_RAX_imm32,
            Code::Cmp_rm8_imm8,
            Code::Cmp_rm16_imm16,
            Code::Cmp_rm32_imm32,
            Code::Cmp_rm64_imm32,
            Code::Cmp_rm16_imm8,
            Code::Cmp_rm32_imm8,
            Code::Cmp_rm64_imm8,
        ],
    );

    t.set(
        Code::Inc_rm8,
        OpEntry::rm(incdec_reg::<false, 1>, incdec_mem::<false, 1>).lockable(),
    );
    t.set(
        Code::Inc_rm16,
        OpEntry::rm(incdec_reg::<false, 2>, incdec_mem::<false, 2>).lockable(),
    );
    t.set(
        Code::Inc_rm32,
        OpEntry::rm(incdec_reg::<false, 4>, incdec_mem::<false, 4>).lockable(),
    );
    t.set(
        Code::Inc_rm64,
        OpEntry::rm(incdec_reg::<false, 8>, incdec_mem::<false, 8>).lockable(),
    );
    t.set(
        Code::Dec_rm8,
        OpEntry::rm(incdec_reg::<true, 1>, incdec_mem::<true, 1>).lockable(),
    );
    t.set(
        Code::Dec_rm16,
        OpEntry::rm(incdec_reg::<true, 2>, incdec_mem::<true, 2>).lockable(),
    );
    t.set(
        Code::Dec_rm32,
        OpEntry::rm(incdec_reg::<true, 4>, incdec_mem::<true, 4>).lockable(),
    );
    t.set(
        Code::Dec_rm64,
        OpEntry::rm(incdec_reg::<true, 8>, incdec_mem::<true, 8>).lockable(),
    );
    t.set(
        Code::Neg_rm8,
        OpEntry::rm(neg_reg::<1>, neg_mem::<1>).lockable(),
    );
    t.set(
        Code::Neg_rm16,
        OpEntry::rm(neg_reg::<2>, neg_mem::<2>).lockable(),
    );
    t.set(
        Code::Neg_rm32,
        OpEntry::rm(neg_reg::<4>, neg_mem::<4>).lockable(),
    );
    t.set(
        Code::Neg_rm64,
        OpEntry::rm(neg_reg::<8>, neg_mem::<8>).lockable(),
    );
}
