//! Data movement and exchange: MOV, MOVZX/MOVSX/MOVSXD, LEA, XCHG, CMPXCHG,
//! CMPXCHG8B/16B, XADD, BSWAP, MOVBE, CMOVcc, SETcc, CBW..CQO, NOPs, and the flag
//! instructions LAHF/SAHF/CLC/STC/CMC/CLD/STD.
//!
//! Memory forms put their single register operand in `dst` (see [`crate::insn::Insn`]).

use iced_x86::Code;

use crate::cpu::{mask, reg, sext, Cpu};
use crate::exception::Exception;
use crate::flags::{self, FlagOp};
use crate::insn::{Insn, OpEntry, OpTable, Step};

fn mov_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.src);
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

fn mov_ri<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    cpu.set_reg::<N>(i.dst, i.imm);
    Ok(())
}

/// `mov reg, [mem]`.
fn mov_rm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::load::<N>(cpu, i)?;
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

/// `mov [mem], reg`.
fn mov_mr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.dst);
    Ok(super::store::<N>(cpu, i, v)?)
}

fn mov_mi<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    Ok(super::store::<N>(cpu, i, i.imm)?)
}

/// MOVZX/MOVSX/MOVSXD from an `S`-byte source into a `D`-byte destination.
fn extend_rr<const D: usize, const S: usize, const SIGNED: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<S>(i.src);
    let v = if SIGNED { sext::<S>(v) } else { v };
    cpu.set_reg::<D>(i.dst, v & mask::<D>());
    Ok(())
}

fn extend_rm<const D: usize, const S: usize, const SIGNED: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::load::<S>(cpu, i)?;
    let v = if SIGNED { sext::<S>(v) } else { v };
    cpu.set_reg::<D>(i.dst, v & mask::<D>());
    Ok(())
}

/// LEA: the offset part of the address, without any segment base.
fn lea<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let offset = i
        .disp
        .wrapping_add(cpu.regs[i.base as usize])
        .wrapping_add(cpu.regs[i.index as usize] << i.scale);
    // LEA computes the offset only: no segment base.
    cpu.set_reg::<N>(i.dst, offset & crate::insn::address_mask(i.flags));
    Ok(())
}

fn xchg_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let a = cpu.reg::<N>(i.dst);
    let b = cpu.reg::<N>(i.src);
    cpu.set_reg::<N>(i.dst, b);
    cpu.set_reg::<N>(i.src, a);
    Ok(())
}

fn xchg_mr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let m = cpu.mmu.read::<N>(addr)?;
    let r = cpu.reg::<N>(i.dst);
    cpu.mmu.write::<N>(addr, r)?;
    cpu.set_reg::<N>(i.dst, m);
    Ok(())
}

/// CMPXCHG r/m, r: compare the accumulator with the destination.
fn cmpxchg_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let acc = cpu.reg::<N>(reg::RAX);
    let dest = cpu.reg::<N>(i.dst);
    cpu.flags
        .set::<N>(FlagOp::Sub, acc, dest, acc.wrapping_sub(dest) & mask::<N>());
    if acc == dest {
        let src = cpu.reg::<N>(i.src);
        cpu.set_reg::<N>(i.dst, src);
    } else {
        cpu.set_reg::<N>(reg::RAX, dest);
    }
    Ok(())
}

fn cmpxchg_mr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let acc = cpu.reg::<N>(reg::RAX);
    let dest = cpu.mmu.read::<N>(addr)?;
    // The destination is always written (with its old value on mismatch), as the
    // processor does for a locked read-modify-write.
    let new = if acc == dest {
        cpu.reg::<N>(i.dst)
    } else {
        dest
    };
    cpu.mmu.write::<N>(addr, new)?;
    cpu.flags
        .set::<N>(FlagOp::Sub, acc, dest, acc.wrapping_sub(dest) & mask::<N>());
    if acc != dest {
        cpu.set_reg::<N>(reg::RAX, dest);
    }
    Ok(())
}

/// CMPXCHG8B / CMPXCHG16B. `WIDE` selects the 16-byte form, which needs 16-byte alignment.
fn cmpxchg_double<const WIDE: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let (expected, replacement, current) = if WIDE {
        if addr & 15 != 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let cur = cpu.mmu.read_u128(addr)?;
        let exp = cpu.regs[reg::RAX as usize] as u128 | (cpu.regs[reg::RDX as usize] as u128) << 64;
        let rep = cpu.regs[reg::RBX as usize] as u128 | (cpu.regs[reg::RCX as usize] as u128) << 64;
        (exp, rep, cur)
    } else {
        let cur = cpu.mmu.read::<8>(addr)? as u128;
        let exp = (cpu.reg::<4>(reg::RAX) | cpu.reg::<4>(reg::RDX) << 32) as u128;
        let rep = (cpu.reg::<4>(reg::RBX) | cpu.reg::<4>(reg::RCX) << 32) as u128;
        (exp, rep, cur)
    };
    let equal = expected == current;
    let new = if equal { replacement } else { current };
    if WIDE {
        cpu.mmu.write_u128(addr, new)?;
    } else {
        cpu.mmu.write::<8>(addr, new as u64)?;
    }
    let mut f = cpu.flags.compute() & !flags::ZF;
    if equal {
        f |= flags::ZF;
    } else if WIDE {
        cpu.regs[reg::RAX as usize] = current as u64;
        cpu.regs[reg::RDX as usize] = (current >> 64) as u64;
    } else {
        cpu.set_reg::<4>(reg::RAX, current as u64);
        cpu.set_reg::<4>(reg::RDX, (current >> 32) as u64);
    }
    cpu.flags.set_materialized(f);
    Ok(())
}

fn xadd_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let d = cpu.reg::<N>(i.dst);
    let s = cpu.reg::<N>(i.src);
    let sum = d.wrapping_add(s) & mask::<N>();
    cpu.set_reg::<N>(i.src, d);
    cpu.set_reg::<N>(i.dst, sum);
    cpu.flags.set::<N>(FlagOp::Add, d, s, d.wrapping_add(s));
    Ok(())
}

fn xadd_mr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    let d = cpu.mmu.read::<N>(addr)?;
    let s = cpu.reg::<N>(i.dst);
    cpu.mmu.write::<N>(addr, d.wrapping_add(s) & mask::<N>())?;
    cpu.set_reg::<N>(i.dst, d);
    cpu.flags.set::<N>(FlagOp::Add, d, s, d.wrapping_add(s));
    Ok(())
}

fn bswap<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.dst);
    let r = match N {
        4 => (v as u32).swap_bytes() as u64,
        8 => v.swap_bytes(),
        // BSWAP of a 16-bit register is undefined; real processors write zero.
        _ => 0,
    };
    cpu.set_reg::<N>(i.dst, r);
    Ok(())
}

fn swap_n<const N: usize>(v: u64) -> u64 {
    match N {
        2 => (v as u16).swap_bytes() as u64,
        4 => (v as u32).swap_bytes() as u64,
        _ => v.swap_bytes(),
    }
}

fn movbe_rm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::load::<N>(cpu, i)?;
    cpu.set_reg::<N>(i.dst, swap_n::<N>(v));
    Ok(())
}

fn movbe_mr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = swap_n::<N>(cpu.reg::<N>(i.dst));
    Ok(super::store::<N>(cpu, i, v)?)
}

/// CMOVcc: the condition code is in `imm2`. A 32-bit CMOV zero-extends its destination
/// even when the condition is false; the memory operand is read either way.
fn cmov_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = if cpu.flags.condition(i.imm2 as u8) {
        cpu.reg::<N>(i.src)
    } else {
        cpu.reg::<N>(i.dst)
    };
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

fn cmov_rm<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let m = super::load::<N>(cpu, i)?;
    let v = if cpu.flags.condition(i.imm2 as u8) {
        m
    } else {
        cpu.reg::<N>(i.dst)
    };
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

fn setcc_r(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.flags.condition(i.imm2 as u8) as u64;
    cpu.set_reg::<1>(i.dst, v);
    Ok(())
}

fn setcc_m(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.flags.condition(i.imm2 as u8) as u64;
    Ok(super::store::<1>(cpu, i, v)?)
}

/// CBW/CWDE/CDQE: sign-extend the low half of the accumulator into all of it.
fn widen_acc<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let v = match N {
        2 => sext::<1>(cpu.reg::<1>(reg::RAX)),
        4 => sext::<2>(cpu.reg::<2>(reg::RAX)),
        _ => sext::<4>(cpu.reg::<4>(reg::RAX)),
    };
    cpu.set_reg::<N>(reg::RAX, v & mask::<N>());
    Ok(())
}

/// CWD/CDQ/CQO: fill the data register with the accumulator's sign.
fn sign_to_rdx<const N: usize>(cpu: &mut Cpu, _: &Insn) -> Step {
    let sign = cpu.reg::<N>(reg::RAX) >> (N * 8 - 1) & 1;
    cpu.set_reg::<N>(reg::RDX, if sign != 0 { mask::<N>() } else { 0 });
    Ok(())
}

fn nop(_: &mut Cpu, _: &Insn) -> Step {
    Ok(())
}

fn lahf(cpu: &mut Cpu, _: &Insn) -> Step {
    let f = cpu.rflags() & 0xff;
    cpu.set_reg::<1>(reg::HIGH_BYTE, f);
    Ok(())
}

fn sahf(cpu: &mut Cpu, _: &Insn) -> Step {
    let ah = cpu.reg::<1>(reg::HIGH_BYTE);
    let keep = cpu.flags.compute() & flags::OF;
    let from_ah = ah & (flags::SF | flags::ZF | flags::AF | flags::PF | flags::CF);
    cpu.flags.set_materialized(keep | from_ah);
    Ok(())
}

fn clc(cpu: &mut Cpu, _: &Insn) -> Step {
    let f = cpu.flags.compute() & !flags::CF;
    cpu.flags.set_materialized(f);
    Ok(())
}

fn stc(cpu: &mut Cpu, _: &Insn) -> Step {
    let f = cpu.flags.compute() | flags::CF;
    cpu.flags.set_materialized(f);
    Ok(())
}

fn cmc(cpu: &mut Cpu, _: &Insn) -> Step {
    let f = cpu.flags.compute() ^ flags::CF;
    cpu.flags.set_materialized(f);
    Ok(())
}

fn cld(cpu: &mut Cpu, _: &Insn) -> Step {
    cpu.rflags_other &= !flags::DF;
    Ok(())
}

fn std_(cpu: &mut Cpu, _: &Insn) -> Step {
    cpu.rflags_other |= flags::DF;
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(Code::Mov_rm8_r8, OpEntry::rm(mov_rr::<1>, mov_mr::<1>));
    t.set(Code::Mov_rm16_r16, OpEntry::rm(mov_rr::<2>, mov_mr::<2>));
    t.set(Code::Mov_rm32_r32, OpEntry::rm(mov_rr::<4>, mov_mr::<4>));
    t.set(Code::Mov_rm64_r64, OpEntry::rm(mov_rr::<8>, mov_mr::<8>));
    t.set(Code::Mov_r8_rm8, OpEntry::rm(mov_rr::<1>, mov_rm::<1>));
    t.set(Code::Mov_r16_rm16, OpEntry::rm(mov_rr::<2>, mov_rm::<2>));
    t.set(Code::Mov_r32_rm32, OpEntry::rm(mov_rr::<4>, mov_rm::<4>));
    t.set(Code::Mov_r64_rm64, OpEntry::rm(mov_rr::<8>, mov_rm::<8>));
    t.set(Code::Mov_r8_imm8, OpEntry::reg(mov_ri::<1>));
    t.set(Code::Mov_r16_imm16, OpEntry::reg(mov_ri::<2>));
    t.set(Code::Mov_r32_imm32, OpEntry::reg(mov_ri::<4>));
    t.set(Code::Mov_r64_imm64, OpEntry::reg(mov_ri::<8>));
    t.set(Code::Mov_rm8_imm8, OpEntry::rm(mov_ri::<1>, mov_mi::<1>));
    t.set(Code::Mov_rm16_imm16, OpEntry::rm(mov_ri::<2>, mov_mi::<2>));
    t.set(Code::Mov_rm32_imm32, OpEntry::rm(mov_ri::<4>, mov_mi::<4>));
    t.set(Code::Mov_rm64_imm32, OpEntry::rm(mov_ri::<8>, mov_mi::<8>));
    t.set(Code::Mov_AL_moffs8, OpEntry::mem(mov_rm::<1>));
    t.set(Code::Mov_AX_moffs16, OpEntry::mem(mov_rm::<2>));
    t.set(Code::Mov_EAX_moffs32, OpEntry::mem(mov_rm::<4>));
    t.set(Code::Mov_RAX_moffs64, OpEntry::mem(mov_rm::<8>));
    t.set(Code::Mov_moffs8_AL, OpEntry::mem(mov_mr::<1>));
    t.set(Code::Mov_moffs16_AX, OpEntry::mem(mov_mr::<2>));
    t.set(Code::Mov_moffs32_EAX, OpEntry::mem(mov_mr::<4>));
    t.set(Code::Mov_moffs64_RAX, OpEntry::mem(mov_mr::<8>));

    t.set(
        Code::Movzx_r16_rm8,
        OpEntry::rm(extend_rr::<2, 1, false>, extend_rm::<2, 1, false>),
    );
    t.set(
        Code::Movzx_r32_rm8,
        OpEntry::rm(extend_rr::<4, 1, false>, extend_rm::<4, 1, false>),
    );
    t.set(
        Code::Movzx_r64_rm8,
        OpEntry::rm(extend_rr::<8, 1, false>, extend_rm::<8, 1, false>),
    );
    t.set(
        Code::Movzx_r16_rm16,
        OpEntry::rm(extend_rr::<2, 2, false>, extend_rm::<2, 2, false>),
    );
    t.set(
        Code::Movzx_r32_rm16,
        OpEntry::rm(extend_rr::<4, 2, false>, extend_rm::<4, 2, false>),
    );
    t.set(
        Code::Movzx_r64_rm16,
        OpEntry::rm(extend_rr::<8, 2, false>, extend_rm::<8, 2, false>),
    );
    t.set(
        Code::Movsx_r16_rm8,
        OpEntry::rm(extend_rr::<2, 1, true>, extend_rm::<2, 1, true>),
    );
    t.set(
        Code::Movsx_r32_rm8,
        OpEntry::rm(extend_rr::<4, 1, true>, extend_rm::<4, 1, true>),
    );
    t.set(
        Code::Movsx_r64_rm8,
        OpEntry::rm(extend_rr::<8, 1, true>, extend_rm::<8, 1, true>),
    );
    t.set(
        Code::Movsx_r16_rm16,
        OpEntry::rm(extend_rr::<2, 2, true>, extend_rm::<2, 2, true>),
    );
    t.set(
        Code::Movsx_r32_rm16,
        OpEntry::rm(extend_rr::<4, 2, true>, extend_rm::<4, 2, true>),
    );
    t.set(
        Code::Movsx_r64_rm16,
        OpEntry::rm(extend_rr::<8, 2, true>, extend_rm::<8, 2, true>),
    );
    t.set(
        Code::Movsxd_r64_rm32,
        OpEntry::rm(extend_rr::<8, 4, true>, extend_rm::<8, 4, true>),
    );
    t.set(
        Code::Movsxd_r32_rm32,
        OpEntry::rm(extend_rr::<4, 4, true>, extend_rm::<4, 4, true>),
    );
    t.set(
        Code::Movsxd_r16_rm16,
        OpEntry::rm(extend_rr::<2, 2, true>, extend_rm::<2, 2, true>),
    );

    t.set(Code::Lea_r16_m, OpEntry::mem(lea::<2>));
    t.set(Code::Lea_r32_m, OpEntry::mem(lea::<4>));
    t.set(Code::Lea_r64_m, OpEntry::mem(lea::<8>));

    // XCHG with memory is always locked; the LOCK prefix is allowed and changes nothing.
    t.set(
        Code::Xchg_rm8_r8,
        OpEntry::rm(xchg_rr::<1>, xchg_mr::<1>).lockable(),
    );
    t.set(
        Code::Xchg_rm16_r16,
        OpEntry::rm(xchg_rr::<2>, xchg_mr::<2>).lockable(),
    );
    t.set(
        Code::Xchg_rm32_r32,
        OpEntry::rm(xchg_rr::<4>, xchg_mr::<4>).lockable(),
    );
    t.set(
        Code::Xchg_rm64_r64,
        OpEntry::rm(xchg_rr::<8>, xchg_mr::<8>).lockable(),
    );
    t.set(Code::Xchg_r16_AX, OpEntry::reg(xchg_rr::<2>));
    t.set(Code::Xchg_r32_EAX, OpEntry::reg(xchg_rr::<4>));
    t.set(Code::Xchg_r64_RAX, OpEntry::reg(xchg_rr::<8>));

    t.set(
        Code::Cmpxchg_rm8_r8,
        OpEntry::rm(cmpxchg_rr::<1>, cmpxchg_mr::<1>).lockable(),
    );
    t.set(
        Code::Cmpxchg_rm16_r16,
        OpEntry::rm(cmpxchg_rr::<2>, cmpxchg_mr::<2>).lockable(),
    );
    t.set(
        Code::Cmpxchg_rm32_r32,
        OpEntry::rm(cmpxchg_rr::<4>, cmpxchg_mr::<4>).lockable(),
    );
    t.set(
        Code::Cmpxchg_rm64_r64,
        OpEntry::rm(cmpxchg_rr::<8>, cmpxchg_mr::<8>).lockable(),
    );
    t.set(
        Code::Cmpxchg8b_m64,
        OpEntry::mem(cmpxchg_double::<false>).lockable(),
    );
    t.set(
        Code::Cmpxchg16b_m128,
        OpEntry::mem(cmpxchg_double::<true>).lockable(),
    );
    t.set(
        Code::Xadd_rm8_r8,
        OpEntry::rm(xadd_rr::<1>, xadd_mr::<1>).lockable(),
    );
    t.set(
        Code::Xadd_rm16_r16,
        OpEntry::rm(xadd_rr::<2>, xadd_mr::<2>).lockable(),
    );
    t.set(
        Code::Xadd_rm32_r32,
        OpEntry::rm(xadd_rr::<4>, xadd_mr::<4>).lockable(),
    );
    t.set(
        Code::Xadd_rm64_r64,
        OpEntry::rm(xadd_rr::<8>, xadd_mr::<8>).lockable(),
    );

    t.set(Code::Bswap_r16, OpEntry::reg(bswap::<2>));
    t.set(Code::Bswap_r32, OpEntry::reg(bswap::<4>));
    t.set(Code::Bswap_r64, OpEntry::reg(bswap::<8>));
    t.set(Code::Movbe_r16_m16, OpEntry::mem(movbe_rm::<2>));
    t.set(Code::Movbe_r32_m32, OpEntry::mem(movbe_rm::<4>));
    t.set(Code::Movbe_r64_m64, OpEntry::mem(movbe_rm::<8>));
    t.set(Code::Movbe_m16_r16, OpEntry::mem(movbe_mr::<2>));
    t.set(Code::Movbe_m32_r32, OpEntry::mem(movbe_mr::<4>));
    t.set(Code::Movbe_m64_r64, OpEntry::mem(movbe_mr::<8>));

    let cmov16 = [
        Code::Cmovo_r16_rm16,
        Code::Cmovno_r16_rm16,
        Code::Cmovb_r16_rm16,
        Code::Cmovae_r16_rm16,
        Code::Cmove_r16_rm16,
        Code::Cmovne_r16_rm16,
        Code::Cmovbe_r16_rm16,
        Code::Cmova_r16_rm16,
        Code::Cmovs_r16_rm16,
        Code::Cmovns_r16_rm16,
        Code::Cmovp_r16_rm16,
        Code::Cmovnp_r16_rm16,
        Code::Cmovl_r16_rm16,
        Code::Cmovge_r16_rm16,
        Code::Cmovle_r16_rm16,
        Code::Cmovg_r16_rm16,
    ];
    let cmov32 = [
        Code::Cmovo_r32_rm32,
        Code::Cmovno_r32_rm32,
        Code::Cmovb_r32_rm32,
        Code::Cmovae_r32_rm32,
        Code::Cmove_r32_rm32,
        Code::Cmovne_r32_rm32,
        Code::Cmovbe_r32_rm32,
        Code::Cmova_r32_rm32,
        Code::Cmovs_r32_rm32,
        Code::Cmovns_r32_rm32,
        Code::Cmovp_r32_rm32,
        Code::Cmovnp_r32_rm32,
        Code::Cmovl_r32_rm32,
        Code::Cmovge_r32_rm32,
        Code::Cmovle_r32_rm32,
        Code::Cmovg_r32_rm32,
    ];
    let cmov64 = [
        Code::Cmovo_r64_rm64,
        Code::Cmovno_r64_rm64,
        Code::Cmovb_r64_rm64,
        Code::Cmovae_r64_rm64,
        Code::Cmove_r64_rm64,
        Code::Cmovne_r64_rm64,
        Code::Cmovbe_r64_rm64,
        Code::Cmova_r64_rm64,
        Code::Cmovs_r64_rm64,
        Code::Cmovns_r64_rm64,
        Code::Cmovp_r64_rm64,
        Code::Cmovnp_r64_rm64,
        Code::Cmovl_r64_rm64,
        Code::Cmovge_r64_rm64,
        Code::Cmovle_r64_rm64,
        Code::Cmovg_r64_rm64,
    ];
    let setcc = [
        Code::Seto_rm8,
        Code::Setno_rm8,
        Code::Setb_rm8,
        Code::Setae_rm8,
        Code::Sete_rm8,
        Code::Setne_rm8,
        Code::Setbe_rm8,
        Code::Seta_rm8,
        Code::Sets_rm8,
        Code::Setns_rm8,
        Code::Setp_rm8,
        Code::Setnp_rm8,
        Code::Setl_rm8,
        Code::Setge_rm8,
        Code::Setle_rm8,
        Code::Setg_rm8,
    ];
    for cc in 0..16 {
        t.set(cmov16[cc], OpEntry::rm(cmov_rr::<2>, cmov_rm::<2>));
        t.set(cmov32[cc], OpEntry::rm(cmov_rr::<4>, cmov_rm::<4>));
        t.set(cmov64[cc], OpEntry::rm(cmov_rr::<8>, cmov_rm::<8>));
        t.set(setcc[cc], OpEntry::rm(setcc_r, setcc_m));
    }

    t.set(Code::Cbw, OpEntry::reg(widen_acc::<2>));
    t.set(Code::Cwde, OpEntry::reg(widen_acc::<4>));
    t.set(Code::Cdqe, OpEntry::reg(widen_acc::<8>));
    t.set(Code::Cwd, OpEntry::reg(sign_to_rdx::<2>));
    t.set(Code::Cdq, OpEntry::reg(sign_to_rdx::<4>));
    t.set(Code::Cqo, OpEntry::reg(sign_to_rdx::<8>));

    for code in [Code::Nopw, Code::Nopd, Code::Nopq, Code::Pause] {
        t.set(code, OpEntry::reg(nop));
    }
    for code in [Code::Nop_rm16, Code::Nop_rm32, Code::Nop_rm64] {
        t.set(code, OpEntry::rm(nop, nop));
    }
    // The hint-NOP space (0F 0D, 0F 18..0F 1F): a CPU without the feature a hint names
    // executes it as a NOP, which is what compilers rely on. That covers CET's ENDBR32/
    // ENDBR64 (glibc and the kernel put one at every indirect-branch target) and RDSSP,
    // which leaves its register unchanged while shadow stacks are off, and the cache
    // hints CLDEMOTE and PREFETCHIT0/1. In the 0F 0D row only memory forms are hints
    // (PREFETCH/PREFETCHW); register forms are #UD on real processors.
    for code in Code::values() {
        let name = format!("{code:?}");
        if name.starts_with("Reservednop_") && name.ends_with("_0F0D") {
            t.set(code, OpEntry::mem(nop));
        } else if name.starts_with("Reservednop_")
            || matches!(
                code,
                Code::Endbr32
                    | Code::Endbr64
                    | Code::Rdsspd_r32
                    | Code::Rdsspq_r64
                    | Code::Cldemote_m8
                    | Code::Prefetchit0_m8
                    | Code::Prefetchit1_m8
                    | Code::Prefetchwt1_m8
            )
        {
            t.set(code, OpEntry::rm(nop, nop));
        }
    }
    t.set(Code::Lahf, OpEntry::reg(lahf));
    t.set(Code::Sahf, OpEntry::reg(sahf));
    t.set(Code::Clc, OpEntry::reg(clc));
    t.set(Code::Stc, OpEntry::reg(stc));
    t.set(Code::Cmc, OpEntry::reg(cmc));
    t.set(Code::Cld, OpEntry::reg(cld));
    t.set(Code::Std, OpEntry::reg(std_));
}
