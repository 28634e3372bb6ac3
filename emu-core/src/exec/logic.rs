//! AND, OR, XOR, TEST, NOT.

use iced_x86::Code;

use super::arith::{alu_mi, alu_op::*, alu_ri, alu_rm, alu_rr, register_alu};
use crate::cpu::{mask, Cpu};
use crate::insn::{Insn, OpEntry, OpTable, Step};

fn not_reg<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = !cpu.reg::<N>(i.dst) & mask::<N>();
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

fn not_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let v = !cpu.mmu.read::<N>(addr)? & mask::<N>();
    cpu.mmu.write::<N>(addr, v)?;
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    register_alu::<AND>(
        t,
        [
            Code::And_rm8_r8,
            Code::And_rm16_r16,
            Code::And_rm32_r32,
            Code::And_rm64_r64,
            Code::And_r8_rm8,
            Code::And_r16_rm16,
            Code::And_r32_rm32,
            Code::And_r64_rm64,
            Code::And_AL_imm8,
            Code::And_AX_imm16,
            Code::And_EAX_imm32,
            Code::And_RAX_imm32,
            Code::And_rm8_imm8,
            Code::And_rm16_imm16,
            Code::And_rm32_imm32,
            Code::And_rm64_imm32,
            Code::And_rm16_imm8,
            Code::And_rm32_imm8,
            Code::And_rm64_imm8,
        ],
    );
    register_alu::<OR>(
        t,
        [
            Code::Or_rm8_r8,
            Code::Or_rm16_r16,
            Code::Or_rm32_r32,
            Code::Or_rm64_r64,
            Code::Or_r8_rm8,
            Code::Or_r16_rm16,
            Code::Or_r32_rm32,
            Code::Or_r64_rm64,
            Code::Or_AL_imm8,
            Code::Or_AX_imm16,
            Code::Or_EAX_imm32,
            Code::Or_RAX_imm32,
            Code::Or_rm8_imm8,
            Code::Or_rm16_imm16,
            Code::Or_rm32_imm32,
            Code::Or_rm64_imm32,
            Code::Or_rm16_imm8,
            Code::Or_rm32_imm8,
            Code::Or_rm64_imm8,
        ],
    );
    register_alu::<XOR>(
        t,
        [
            Code::Xor_rm8_r8,
            Code::Xor_rm16_r16,
            Code::Xor_rm32_r32,
            Code::Xor_rm64_r64,
            Code::Xor_r8_rm8,
            Code::Xor_r16_rm16,
            Code::Xor_r32_rm32,
            Code::Xor_r64_rm64,
            Code::Xor_AL_imm8,
            Code::Xor_AX_imm16,
            Code::Xor_EAX_imm32,
            Code::Xor_RAX_imm32,
            Code::Xor_rm8_imm8,
            Code::Xor_rm16_imm16,
            Code::Xor_rm32_imm32,
            Code::Xor_rm64_imm32,
            Code::Xor_rm16_imm8,
            Code::Xor_rm32_imm8,
            Code::Xor_rm64_imm8,
        ],
    );

    // TEST r/m, r has one operand order only; the memory operand is read, never written.
    t.set(
        Code::Test_rm8_r8,
        OpEntry::rm(alu_rr::<TEST, 1>, alu_rm::<TEST, 1>),
    );
    t.set(
        Code::Test_rm16_r16,
        OpEntry::rm(alu_rr::<TEST, 2>, alu_rm::<TEST, 2>),
    );
    t.set(
        Code::Test_rm32_r32,
        OpEntry::rm(alu_rr::<TEST, 4>, alu_rm::<TEST, 4>),
    );
    t.set(
        Code::Test_rm64_r64,
        OpEntry::rm(alu_rr::<TEST, 8>, alu_rm::<TEST, 8>),
    );
    t.set(Code::Test_AL_imm8, OpEntry::reg(alu_ri::<TEST, 1>));
    t.set(Code::Test_AX_imm16, OpEntry::reg(alu_ri::<TEST, 2>));
    t.set(Code::Test_EAX_imm32, OpEntry::reg(alu_ri::<TEST, 4>));
    t.set(Code::Test_RAX_imm32, OpEntry::reg(alu_ri::<TEST, 8>));
    for (code, n) in [
        (Code::Test_rm8_imm8, 1),
        (Code::Test_rm8_imm8_F6r1, 1),
        (Code::Test_rm16_imm16, 2),
        (Code::Test_rm16_imm16_F7r1, 2),
        (Code::Test_rm32_imm32, 4),
        (Code::Test_rm32_imm32_F7r1, 4),
        (Code::Test_rm64_imm32, 8),
        (Code::Test_rm64_imm32_F7r1, 8),
    ] {
        let entry = match n {
            1 => OpEntry::rm(alu_ri::<TEST, 1>, alu_mi::<TEST, 1>),
            2 => OpEntry::rm(alu_ri::<TEST, 2>, alu_mi::<TEST, 2>),
            4 => OpEntry::rm(alu_ri::<TEST, 4>, alu_mi::<TEST, 4>),
            _ => OpEntry::rm(alu_ri::<TEST, 8>, alu_mi::<TEST, 8>),
        };
        t.set(code, entry);
    }

    t.set(
        Code::Not_rm8,
        OpEntry::rm(not_reg::<1>, not_mem::<1>).lockable(),
    );
    t.set(
        Code::Not_rm16,
        OpEntry::rm(not_reg::<2>, not_mem::<2>).lockable(),
    );
    t.set(
        Code::Not_rm32,
        OpEntry::rm(not_reg::<4>, not_mem::<4>).lockable(),
    );
    t.set(
        Code::Not_rm64,
        OpEntry::rm(not_reg::<8>, not_mem::<8>).lockable(),
    );
}
