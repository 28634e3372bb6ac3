//! Bit instructions: BT/BTS/BTR/BTC, BSF/BSR, LZCNT/TZCNT/POPCNT, and BMI1 (ANDN, BEXTR,
//! BLSI, BLSMSK, BLSR).

use iced_x86::Code;

use crate::cpu::{mask, sext, Cpu};
use crate::flags::{self, parity};
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// BT variants: test only, set, reset, complement.
const BT: u8 = 0;
const BTS: u8 = 1;
const BTR: u8 = 2;
const BTC: u8 = 3;

fn bit_apply<const OP: u8>(v: u64, bit: u64) -> u64 {
    match OP {
        BTS => v | 1 << bit,
        BTR => v & !(1 << bit),
        BTC => v ^ 1 << bit,
        _ => v,
    }
}

/// Only CF changes (to the tested bit); the other flags keep their values.
fn set_cf(cpu: &mut Cpu, cf: bool) {
    let f = (cpu.flags.compute() & !flags::CF) | cf as u64;
    cpu.flags.set_materialized(f);
}

fn bt_rr<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let bit = cpu.reg::<N>(i.src) & (N as u64 * 8 - 1);
    let v = cpu.reg::<N>(i.dst);
    if OP != BT {
        cpu.set_reg::<N>(i.dst, bit_apply::<OP>(v, bit));
    }
    set_cf(cpu, v >> bit & 1 != 0);
    Ok(())
}

fn bt_ri<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let bit = i.imm & (N as u64 * 8 - 1);
    let v = cpu.reg::<N>(i.dst);
    if OP != BT {
        cpu.set_reg::<N>(i.dst, bit_apply::<OP>(v, bit));
    }
    set_cf(cpu, v >> bit & 1 != 0);
    Ok(())
}

/// BT with a memory operand and a register bit offset: the offset is signed and may
/// address anywhere in the bit string around the operand.
fn bt_mr<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let offset = sext::<N>(cpu.reg::<N>(i.dst)) as i64;
    let bits = N as i64 * 8;
    let addr = i
        .ea(cpu)
        .wrapping_add((offset.div_euclid(bits) * N as i64) as u64);
    let bit = offset.rem_euclid(bits) as u64;
    bt_mem_at::<OP, N>(cpu, addr, bit)
}

fn bt_mi<const OP: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    bt_mem_at::<OP, N>(cpu, addr, i.imm & (N as u64 * 8 - 1))
}

fn bt_mem_at<const OP: u8, const N: usize>(cpu: &mut Cpu, addr: u64, bit: u64) -> Step {
    let v = cpu.mmu.read::<N>(addr)?;
    if OP != BT {
        cpu.mmu.write::<N>(addr, bit_apply::<OP>(v, bit))?;
    }
    set_cf(cpu, v >> bit & 1 != 0);
    Ok(())
}

/// Bit scans and counts. `KIND`: 0 BSF, 1 BSR, 2 TZCNT, 3 LZCNT, 4 POPCNT.
const BSF: u8 = 0;
const BSR: u8 = 1;
const TZCNT: u8 = 2;
const LZCNT: u8 = 3;
const POPCNT: u8 = 4;

fn scan<const KIND: u8, const N: usize>(cpu: &mut Cpu, dst: u8, src: u64) {
    let bits = N as u32 * 8;
    match KIND {
        BSF | BSR => {
            if src == 0 {
                // Destination unchanged (as AMD documents and Intel parts do); ZF set.
                cpu.flags.set_materialized(flags::ZF);
            } else {
                let r = if KIND == BSF {
                    src.trailing_zeros()
                } else {
                    63 - src.leading_zeros()
                };
                cpu.set_reg::<N>(dst, r as u64);
                cpu.flags
                    .set_materialized(if parity(r as u64) { flags::PF } else { 0 });
            }
        }
        TZCNT | LZCNT => {
            let r = if src == 0 {
                bits
            } else if KIND == TZCNT {
                src.trailing_zeros()
            } else {
                src.leading_zeros() - (64 - bits)
            };
            cpu.set_reg::<N>(dst, r as u64);
            let mut f = cpu.flags.compute() & !(flags::CF | flags::ZF);
            if src == 0 {
                f |= flags::CF;
            }
            if r == 0 {
                f |= flags::ZF;
            }
            cpu.flags.set_materialized(f);
        }
        _ => {
            cpu.set_reg::<N>(dst, src.count_ones() as u64);
            cpu.flags
                .set_materialized(if src == 0 { flags::ZF } else { 0 });
        }
    }
}

fn scan_rr<const KIND: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = cpu.reg::<N>(i.src);
    scan::<KIND, N>(cpu, i.dst, src);
    Ok(())
}

fn scan_rm<const KIND: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = super::load::<N>(cpu, i)?;
    scan::<KIND, N>(cpu, i.dst, src);
    Ok(())
}

fn logic_flags<const N: usize>(r: u64, cf: bool) -> u64 {
    let mut f = if cf { flags::CF } else { 0 };
    if r & mask::<N>() == 0 {
        f |= flags::ZF;
    }
    if r >> (N * 8 - 1) & 1 != 0 {
        f |= flags::SF;
    }
    f
}

/// ANDN dst, src1, src2: `!src1 & src2`. Register form: src2 is the third register.
fn andn_r<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = cpu.reg::<N>(i.imm2 as u8);
    andn_finish::<N>(cpu, i, b)
}

fn andn_m<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = super::load::<N>(cpu, i)?;
    andn_finish::<N>(cpu, i, b)
}

fn andn_finish<const N: usize>(cpu: &mut Cpu, i: &Insn, b: u64) -> Step {
    let r = !cpu.reg::<N>(i.src) & b & mask::<N>();
    cpu.set_reg::<N>(i.dst, r);
    cpu.flags.set_materialized(logic_flags::<N>(r, false));
    Ok(())
}

/// BEXTR dst, src, control: register form has control as third register; memory form
/// has it as the second register.
fn bextr_r<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = cpu.reg::<N>(i.src);
    let ctl = cpu.reg::<N>(i.imm2 as u8);
    bextr_finish::<N>(cpu, i.dst, src, ctl)
}

fn bextr_m<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = super::load::<N>(cpu, i)?;
    let ctl = cpu.reg::<N>(i.src);
    bextr_finish::<N>(cpu, i.dst, src, ctl)
}

fn bextr_finish<const N: usize>(cpu: &mut Cpu, dst: u8, src: u64, ctl: u64) -> Step {
    let start = (ctl & 0xff) as u32;
    let len = ((ctl >> 8) & 0xff) as u32;
    let shifted = if start >= 64 { 0 } else { src >> start };
    let r = if len >= 64 {
        shifted
    } else {
        shifted & ((1u64 << len) - 1)
    } & mask::<N>();
    cpu.set_reg::<N>(dst, r);
    cpu.flags
        .set_materialized(if r == 0 { flags::ZF } else { 0 });
    Ok(())
}

/// BLSI / BLSMSK / BLSR: `KIND` 0, 1, 2. Destination is the VEX.vvvv register (`dst`).
fn bls<const KIND: u8, const N: usize>(cpu: &mut Cpu, dst: u8, src: u64) {
    let (r, cf) = match KIND {
        0 => (src & src.wrapping_neg(), src != 0),
        1 => (src ^ src.wrapping_sub(1), src == 0),
        _ => (src & src.wrapping_sub(1), src == 0),
    };
    let r = r & mask::<N>();
    cpu.set_reg::<N>(dst, r);
    let mut f = logic_flags::<N>(r, cf);
    if KIND == 1 {
        f &= !flags::ZF;
    }
    cpu.flags.set_materialized(f);
}

fn bls_r<const KIND: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = cpu.reg::<N>(i.src);
    bls::<KIND, N>(cpu, i.dst, src);
    Ok(())
}

fn bls_m<const KIND: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let src = super::load::<N>(cpu, i)?;
    bls::<KIND, N>(cpu, i.dst, src);
    Ok(())
}

pub(crate) fn register(t: &mut OpTable) {
    t.set(
        Code::Bt_rm16_r16,
        OpEntry::rm(bt_rr::<BT, 2>, bt_mr::<BT, 2>),
    );
    t.set(
        Code::Bt_rm32_r32,
        OpEntry::rm(bt_rr::<BT, 4>, bt_mr::<BT, 4>),
    );
    t.set(
        Code::Bt_rm64_r64,
        OpEntry::rm(bt_rr::<BT, 8>, bt_mr::<BT, 8>),
    );
    t.set(
        Code::Bts_rm16_r16,
        OpEntry::rm(bt_rr::<BTS, 2>, bt_mr::<BTS, 2>).lockable(),
    );
    t.set(
        Code::Bts_rm32_r32,
        OpEntry::rm(bt_rr::<BTS, 4>, bt_mr::<BTS, 4>).lockable(),
    );
    t.set(
        Code::Bts_rm64_r64,
        OpEntry::rm(bt_rr::<BTS, 8>, bt_mr::<BTS, 8>).lockable(),
    );
    t.set(
        Code::Btr_rm16_r16,
        OpEntry::rm(bt_rr::<BTR, 2>, bt_mr::<BTR, 2>).lockable(),
    );
    t.set(
        Code::Btr_rm32_r32,
        OpEntry::rm(bt_rr::<BTR, 4>, bt_mr::<BTR, 4>).lockable(),
    );
    t.set(
        Code::Btr_rm64_r64,
        OpEntry::rm(bt_rr::<BTR, 8>, bt_mr::<BTR, 8>).lockable(),
    );
    t.set(
        Code::Btc_rm16_r16,
        OpEntry::rm(bt_rr::<BTC, 2>, bt_mr::<BTC, 2>).lockable(),
    );
    t.set(
        Code::Btc_rm32_r32,
        OpEntry::rm(bt_rr::<BTC, 4>, bt_mr::<BTC, 4>).lockable(),
    );
    t.set(
        Code::Btc_rm64_r64,
        OpEntry::rm(bt_rr::<BTC, 8>, bt_mr::<BTC, 8>).lockable(),
    );
    t.set(
        Code::Bt_rm16_imm8,
        OpEntry::rm(bt_ri::<BT, 2>, bt_mi::<BT, 2>),
    );
    t.set(
        Code::Bt_rm32_imm8,
        OpEntry::rm(bt_ri::<BT, 4>, bt_mi::<BT, 4>),
    );
    t.set(
        Code::Bt_rm64_imm8,
        OpEntry::rm(bt_ri::<BT, 8>, bt_mi::<BT, 8>),
    );
    t.set(
        Code::Bts_rm16_imm8,
        OpEntry::rm(bt_ri::<BTS, 2>, bt_mi::<BTS, 2>).lockable(),
    );
    t.set(
        Code::Bts_rm32_imm8,
        OpEntry::rm(bt_ri::<BTS, 4>, bt_mi::<BTS, 4>).lockable(),
    );
    t.set(
        Code::Bts_rm64_imm8,
        OpEntry::rm(bt_ri::<BTS, 8>, bt_mi::<BTS, 8>).lockable(),
    );
    t.set(
        Code::Btr_rm16_imm8,
        OpEntry::rm(bt_ri::<BTR, 2>, bt_mi::<BTR, 2>).lockable(),
    );
    t.set(
        Code::Btr_rm32_imm8,
        OpEntry::rm(bt_ri::<BTR, 4>, bt_mi::<BTR, 4>).lockable(),
    );
    t.set(
        Code::Btr_rm64_imm8,
        OpEntry::rm(bt_ri::<BTR, 8>, bt_mi::<BTR, 8>).lockable(),
    );
    t.set(
        Code::Btc_rm16_imm8,
        OpEntry::rm(bt_ri::<BTC, 2>, bt_mi::<BTC, 2>).lockable(),
    );
    t.set(
        Code::Btc_rm32_imm8,
        OpEntry::rm(bt_ri::<BTC, 4>, bt_mi::<BTC, 4>).lockable(),
    );
    t.set(
        Code::Btc_rm64_imm8,
        OpEntry::rm(bt_ri::<BTC, 8>, bt_mi::<BTC, 8>).lockable(),
    );

    t.set(
        Code::Bsf_r16_rm16,
        OpEntry::rm(scan_rr::<BSF, 2>, scan_rm::<BSF, 2>),
    );
    t.set(
        Code::Bsf_r32_rm32,
        OpEntry::rm(scan_rr::<BSF, 4>, scan_rm::<BSF, 4>),
    );
    t.set(
        Code::Bsf_r64_rm64,
        OpEntry::rm(scan_rr::<BSF, 8>, scan_rm::<BSF, 8>),
    );
    t.set(
        Code::Bsr_r16_rm16,
        OpEntry::rm(scan_rr::<BSR, 2>, scan_rm::<BSR, 2>),
    );
    t.set(
        Code::Bsr_r32_rm32,
        OpEntry::rm(scan_rr::<BSR, 4>, scan_rm::<BSR, 4>),
    );
    t.set(
        Code::Bsr_r64_rm64,
        OpEntry::rm(scan_rr::<BSR, 8>, scan_rm::<BSR, 8>),
    );
    t.set(
        Code::Tzcnt_r16_rm16,
        OpEntry::rm(scan_rr::<TZCNT, 2>, scan_rm::<TZCNT, 2>),
    );
    t.set(
        Code::Tzcnt_r32_rm32,
        OpEntry::rm(scan_rr::<TZCNT, 4>, scan_rm::<TZCNT, 4>),
    );
    t.set(
        Code::Tzcnt_r64_rm64,
        OpEntry::rm(scan_rr::<TZCNT, 8>, scan_rm::<TZCNT, 8>),
    );
    t.set(
        Code::Lzcnt_r16_rm16,
        OpEntry::rm(scan_rr::<LZCNT, 2>, scan_rm::<LZCNT, 2>),
    );
    t.set(
        Code::Lzcnt_r32_rm32,
        OpEntry::rm(scan_rr::<LZCNT, 4>, scan_rm::<LZCNT, 4>),
    );
    t.set(
        Code::Lzcnt_r64_rm64,
        OpEntry::rm(scan_rr::<LZCNT, 8>, scan_rm::<LZCNT, 8>),
    );
    t.set(
        Code::Popcnt_r16_rm16,
        OpEntry::rm(scan_rr::<POPCNT, 2>, scan_rm::<POPCNT, 2>),
    );
    t.set(
        Code::Popcnt_r32_rm32,
        OpEntry::rm(scan_rr::<POPCNT, 4>, scan_rm::<POPCNT, 4>),
    );
    t.set(
        Code::Popcnt_r64_rm64,
        OpEntry::rm(scan_rr::<POPCNT, 8>, scan_rm::<POPCNT, 8>),
    );

    t.set(
        Code::VEX_Andn_r32_r32_rm32,
        OpEntry::rm(andn_r::<4>, andn_m::<4>),
    );
    t.set(
        Code::VEX_Andn_r64_r64_rm64,
        OpEntry::rm(andn_r::<8>, andn_m::<8>),
    );
    t.set(
        Code::VEX_Bextr_r32_rm32_r32,
        OpEntry::rm(bextr_r::<4>, bextr_m::<4>),
    );
    t.set(
        Code::VEX_Bextr_r64_rm64_r64,
        OpEntry::rm(bextr_r::<8>, bextr_m::<8>),
    );
    t.set(
        Code::VEX_Blsi_r32_rm32,
        OpEntry::rm(bls_r::<0, 4>, bls_m::<0, 4>),
    );
    t.set(
        Code::VEX_Blsi_r64_rm64,
        OpEntry::rm(bls_r::<0, 8>, bls_m::<0, 8>),
    );
    t.set(
        Code::VEX_Blsmsk_r32_rm32,
        OpEntry::rm(bls_r::<1, 4>, bls_m::<1, 4>),
    );
    t.set(
        Code::VEX_Blsmsk_r64_rm64,
        OpEntry::rm(bls_r::<1, 8>, bls_m::<1, 8>),
    );
    t.set(
        Code::VEX_Blsr_r32_rm32,
        OpEntry::rm(bls_r::<2, 4>, bls_m::<2, 4>),
    );
    t.set(
        Code::VEX_Blsr_r64_rm64,
        OpEntry::rm(bls_r::<2, 8>, bls_m::<2, 8>),
    );
}
