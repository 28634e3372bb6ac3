//! Data movement between XMM registers, memory and general registers; MXCSR access;
//! fences, prefetches and CLFLUSH.

use emu_mmu::Access;
use iced_x86::Code;

use super::lanes::{from_u32s, u32s, u64s};
use super::{gp0, load128, set_xmm, src128, store128, xmm};
use crate::cpu::{reg, Cpu};
use crate::insn::{Insn, OpEntry, OpTable, Step};

const LOW64: u128 = u64::MAX as u128;
const LOW32: u128 = u32::MAX as u128;

/// MXCSR bits LDMXCSR accepts; setting any other bit is #GP(0).
pub(crate) const MXCSR_WRITABLE: u32 = 0xffff;

/// Full-register move into XMM `dst` (MOVAPS, MOVUPS, MOVDQA, MOVDQU, LDDQU, MOVNTDQA,
/// and the register forms of the store encodings).
fn mov_load<const MEM: bool, const ALIGNED: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = if MEM {
        load128::<ALIGNED>(cpu, i)?
    } else {
        xmm(cpu, i.src)
    };
    set_xmm(cpu, i.dst, v);
    Ok(())
}

/// Full-register store (MOVAPS m128, xmm, MOVNTPS, ...): the register is in `dst`.
fn mov_store<const ALIGNED: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = xmm(cpu, i.dst);
    Ok(store128::<ALIGNED>(cpu, i, v)?)
}

/// MOVSS/MOVSD between registers: only the low lane moves.
fn movs_rr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let m = if N == 4 { LOW32 } else { LOW64 };
    let v = (xmm(cpu, i.dst) & !m) | (xmm(cpu, i.src) & m);
    set_xmm(cpu, i.dst, v);
    Ok(())
}

/// MOVSS/MOVSD/MOVQ/MOVD load: the value is zero-extended to the whole register.
fn load_zext<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::super::load::<N>(cpu, i)?;
    set_xmm(cpu, i.dst, v as u128);
    Ok(())
}

/// Store of the low `N` bytes of XMM `dst`.
fn store_low<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = xmm(cpu, i.dst) as u64;
    Ok(super::super::store::<N>(cpu, i, v)?)
}

/// Store of the high quadword of XMM `dst` (MOVHPS/MOVHPD m64, xmm).
fn store_high64(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = (xmm(cpu, i.dst) >> 64) as u64;
    Ok(super::super::store::<8>(cpu, i, v)?)
}

/// MOVLPS/MOVLPD xmm, m64: replaces the low quadword.
fn load_low64(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::super::load::<8>(cpu, i)?;
    let r = (xmm(cpu, i.dst) & !LOW64) | v as u128;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// MOVHPS/MOVHPD xmm, m64: replaces the high quadword.
fn load_high64(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::super::load::<8>(cpu, i)?;
    let r = (xmm(cpu, i.dst) & LOW64) | (v as u128) << 64;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// MOVHLPS: the source's high quadword into the destination's low one.
fn movhlps(cpu: &mut Cpu, i: &Insn) -> Step {
    let r = (xmm(cpu, i.dst) & !LOW64) | xmm(cpu, i.src) >> 64;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// MOVLHPS: the source's low quadword into the destination's high one.
fn movlhps(cpu: &mut Cpu, i: &Insn) -> Step {
    let r = (xmm(cpu, i.dst) & LOW64) | (xmm(cpu, i.src) & LOW64) << 64;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// MOVD xmm, r32 / MOVQ xmm, r64: zero-extended into the XMM register.
fn movd_from_gpr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.src);
    set_xmm(cpu, i.dst, v as u128);
    Ok(())
}

/// MOVD r32, xmm / MOVQ r64, xmm.
fn movd_to_gpr<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = xmm(cpu, i.src) as u64;
    cpu.set_reg::<N>(i.dst, v);
    Ok(())
}

/// MOVQ xmm, xmm (both encodings): the low quadword, zero-extended.
fn movq_rr(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = xmm(cpu, i.src) & LOW64;
    set_xmm(cpu, i.dst, v);
    Ok(())
}

/// MOVMSKPS: the four sign bits into a general register.
fn movmskps(cpu: &mut Cpu, i: &Insn) -> Step {
    let d = u32s(xmm(cpu, i.src));
    let m = (0..4).fold(0u64, |acc, k| acc | ((d[k] >> 31) as u64) << k);
    cpu.set_reg::<8>(i.dst, m);
    Ok(())
}

/// MOVMSKPD: the two sign bits into a general register.
fn movmskpd(cpu: &mut Cpu, i: &Insn) -> Step {
    let q = u64s(xmm(cpu, i.src));
    cpu.set_reg::<8>(i.dst, (q[0] >> 63) | (q[1] >> 63) << 1);
    Ok(())
}

/// PMOVMSKB: the sixteen byte sign bits into a general register.
fn pmovmskb(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = xmm(cpu, i.src).to_le_bytes();
    let m = (0..16).fold(0u64, |acc, k| acc | ((b[k] >> 7) as u64) << k);
    cpu.set_reg::<8>(i.dst, m);
    Ok(())
}

/// MOVDDUP: the low quadword into both halves.
fn movddup<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let lo = if MEM {
        super::super::load::<8>(cpu, i)?
    } else {
        xmm(cpu, i.src) as u64
    };
    set_xmm(cpu, i.dst, lo as u128 | (lo as u128) << 64);
    Ok(())
}

/// MOVSLDUP (`ODD == false`) and MOVSHDUP (`ODD == true`).
fn movs_dup<const ODD: bool, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let d = u32s(src128::<MEM>(cpu, i)?);
    let o = ODD as usize;
    set_xmm(cpu, i.dst, from_u32s([d[o], d[o], d[2 + o], d[2 + o]]));
    Ok(())
}

/// MOVNTI: a plain store of a general register (non-temporal hints change nothing here).
fn movnti<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.reg::<N>(i.dst);
    Ok(super::super::store::<N>(cpu, i, v)?)
}

/// MASKMOVDQU: stores the bytes of `dst` whose mask byte (in `src`) has its top bit set,
/// at DS:RDI. Only the span of selected bytes is checked for writability, and it is
/// checked before any byte is written, so a fault leaves memory untouched.
fn maskmovdqu(cpu: &mut Cpu, i: &Insn) -> Step {
    let data = xmm(cpu, i.dst).to_le_bytes();
    let mask = xmm(cpu, i.src).to_le_bytes();
    let selected: u16 = (0..16).fold(0, |acc, k| acc | (((mask[k] >> 7) as u16) << k));
    if selected == 0 {
        return Ok(());
    }
    let offset = cpu.regs[reg::RDI as usize] & crate::insn::address_mask(i.flags);
    let base = crate::exec::string::string_linear(cpu, i.seg, offset);
    let first = selected.trailing_zeros() as u64;
    let last = 15 - selected.leading_zeros() as u64;
    cpu.mmu
        .check_writable(base.wrapping_add(first), last - first + 1)?;
    for k in first..=last {
        if selected & (1 << k) != 0 {
            cpu.mmu
                .write::<1>(base.wrapping_add(k), data[k as usize] as u64)?;
        }
    }
    Ok(())
}

/// LDMXCSR: reserved bits set is #GP(0).
fn ldmxcsr(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = super::super::load::<4>(cpu, i)? as u32;
    if v & !MXCSR_WRITABLE != 0 {
        return Err(gp0().into());
    }
    cpu.mxcsr = v;
    Ok(())
}

fn stmxcsr(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = cpu.mxcsr as u64;
    Ok(super::super::store::<4>(cpu, i, v)?)
}

/// Fences and prefetches: this CPU executes in order and has no caches to warm, so they
/// have no effect (and prefetches never fault).
fn no_effect(_: &mut Cpu, _: &Insn) -> Step {
    Ok(())
}

/// CLFLUSH: no cache to flush, but like the hardware it faults on an address that cannot
/// be accessed.
fn clflush(cpu: &mut Cpu, i: &Insn) -> Step {
    let addr = i.ea(cpu);
    cpu.mmu.check_mapped(addr, 1, Access::Read)?;
    Ok(())
}

/// MFENCE: no later load may pass an earlier store, the one reordering x86 allows
/// without it (guest accesses are acquire loads and release stores otherwise, see
/// `emu_mmu::host_access`). LFENCE and SFENCE order nothing TSO does not already order.
fn mfence(_: &mut Cpu, _: &Insn) -> Step {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

pub(super) fn register(t: &mut OpTable) {
    let aligned_load = OpEntry::rm(mov_load::<false, true>, mov_load::<true, true>);
    let unaligned_load = OpEntry::rm(mov_load::<false, false>, mov_load::<true, false>);
    let aligned_store = OpEntry::rm(mov_load::<false, true>, mov_store::<true>);
    let unaligned_store = OpEntry::rm(mov_load::<false, false>, mov_store::<false>);
    for code in [
        Code::Movaps_xmm_xmmm128,
        Code::Movapd_xmm_xmmm128,
        Code::Movdqa_xmm_xmmm128,
    ] {
        t.set(code, aligned_load);
    }
    for code in [
        Code::Movups_xmm_xmmm128,
        Code::Movupd_xmm_xmmm128,
        Code::Movdqu_xmm_xmmm128,
    ] {
        t.set(code, unaligned_load);
    }
    for code in [
        Code::Movaps_xmmm128_xmm,
        Code::Movapd_xmmm128_xmm,
        Code::Movdqa_xmmm128_xmm,
    ] {
        t.set(code, aligned_store);
    }
    for code in [
        Code::Movups_xmmm128_xmm,
        Code::Movupd_xmmm128_xmm,
        Code::Movdqu_xmmm128_xmm,
    ] {
        t.set(code, unaligned_store);
    }
    t.set(Code::Lddqu_xmm_m128, OpEntry::mem(mov_load::<true, false>));
    t.set(
        Code::Movntdqa_xmm_m128,
        OpEntry::mem(mov_load::<true, true>),
    );
    for code in [
        Code::Movntps_m128_xmm,
        Code::Movntpd_m128_xmm,
        Code::Movntdq_m128_xmm,
    ] {
        t.set(code, OpEntry::mem(mov_store::<true>));
    }
    t.set(Code::Movnti_m32_r32, OpEntry::mem(movnti::<4>));
    t.set(Code::Movnti_m64_r64, OpEntry::mem(movnti::<8>));

    t.set(
        Code::Movss_xmm_xmmm32,
        OpEntry::rm(movs_rr::<4>, load_zext::<4>),
    );
    t.set(
        Code::Movss_xmmm32_xmm,
        OpEntry::rm(movs_rr::<4>, store_low::<4>),
    );
    t.set(
        Code::Movsd_xmm_xmmm64,
        OpEntry::rm(movs_rr::<8>, load_zext::<8>),
    );
    t.set(
        Code::Movsd_xmmm64_xmm,
        OpEntry::rm(movs_rr::<8>, store_low::<8>),
    );
    t.set(Code::Movlps_xmm_m64, OpEntry::mem(load_low64));
    t.set(Code::Movlpd_xmm_m64, OpEntry::mem(load_low64));
    t.set(Code::Movlps_m64_xmm, OpEntry::mem(store_low::<8>));
    t.set(Code::Movlpd_m64_xmm, OpEntry::mem(store_low::<8>));
    t.set(Code::Movhps_xmm_m64, OpEntry::mem(load_high64));
    t.set(Code::Movhpd_xmm_m64, OpEntry::mem(load_high64));
    t.set(Code::Movhps_m64_xmm, OpEntry::mem(store_high64));
    t.set(Code::Movhpd_m64_xmm, OpEntry::mem(store_high64));
    t.set(Code::Movhlps_xmm_xmm, OpEntry::reg(movhlps));
    t.set(Code::Movlhps_xmm_xmm, OpEntry::reg(movlhps));

    t.set(
        Code::Movd_xmm_rm32,
        OpEntry::rm(movd_from_gpr::<4>, load_zext::<4>),
    );
    t.set(
        Code::Movq_xmm_rm64,
        OpEntry::rm(movd_from_gpr::<8>, load_zext::<8>),
    );
    t.set(
        Code::Movd_rm32_xmm,
        OpEntry::rm(movd_to_gpr::<4>, store_low::<4>),
    );
    t.set(
        Code::Movq_rm64_xmm,
        OpEntry::rm(movd_to_gpr::<8>, store_low::<8>),
    );
    t.set(Code::Movq_xmm_xmmm64, OpEntry::rm(movq_rr, load_zext::<8>));
    t.set(Code::Movq_xmmm64_xmm, OpEntry::rm(movq_rr, store_low::<8>));

    t.set(Code::Movmskps_r32_xmm, OpEntry::reg(movmskps));
    t.set(Code::Movmskps_r64_xmm, OpEntry::reg(movmskps));
    t.set(Code::Movmskpd_r32_xmm, OpEntry::reg(movmskpd));
    t.set(Code::Movmskpd_r64_xmm, OpEntry::reg(movmskpd));
    t.set(Code::Pmovmskb_r32_xmm, OpEntry::reg(pmovmskb));
    t.set(Code::Pmovmskb_r64_xmm, OpEntry::reg(pmovmskb));

    t.set(
        Code::Movddup_xmm_xmmm64,
        OpEntry::rm(movddup::<false>, movddup::<true>),
    );
    t.set(
        Code::Movsldup_xmm_xmmm128,
        OpEntry::rm(movs_dup::<false, false>, movs_dup::<false, true>),
    );
    t.set(
        Code::Movshdup_xmm_xmmm128,
        OpEntry::rm(movs_dup::<true, false>, movs_dup::<true, true>),
    );
    t.set(Code::Maskmovdqu_rDI_xmm_xmm, OpEntry::reg(maskmovdqu));

    t.set(Code::Ldmxcsr_m32, OpEntry::mem(ldmxcsr));
    t.set(Code::Stmxcsr_m32, OpEntry::mem(stmxcsr));

    for code in [
        Code::Lfence,
        Code::Lfence_E9,
        Code::Lfence_EA,
        Code::Lfence_EB,
        Code::Lfence_EC,
        Code::Lfence_ED,
        Code::Lfence_EE,
        Code::Lfence_EF,
        Code::Sfence,
        Code::Sfence_F9,
        Code::Sfence_FA,
        Code::Sfence_FB,
        Code::Sfence_FC,
        Code::Sfence_FD,
        Code::Sfence_FE,
        Code::Sfence_FF,
    ] {
        t.set(code, OpEntry::reg(no_effect));
    }
    for code in [
        Code::Mfence,
        Code::Mfence_F1,
        Code::Mfence_F2,
        Code::Mfence_F3,
        Code::Mfence_F4,
        Code::Mfence_F5,
        Code::Mfence_F6,
        Code::Mfence_F7,
    ] {
        t.set(code, OpEntry::reg(mfence));
    }
    for code in [
        Code::Prefetchnta_m8,
        Code::Prefetcht0_m8,
        Code::Prefetcht1_m8,
        Code::Prefetcht2_m8,
        Code::Prefetch_m8,
        Code::Prefetchw_m8,
        Code::Prefetchreserved3_m8,
        Code::Prefetchreserved4_m8,
        Code::Prefetchreserved5_m8,
        Code::Prefetchreserved6_m8,
        Code::Prefetchreserved7_m8,
    ] {
        t.set(code, OpEntry::mem(no_effect));
    }
    t.set(Code::Clflush_m8, OpEntry::mem(clflush));
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{cpu, insn, MEM};
    use super::*;
    use crate::exception::Exception;
    use crate::insn::Trap;

    #[test]
    fn aligned_forms_fault_on_misaligned_operands_and_change_nothing() {
        let mut cpu = cpu();
        cpu.xmm[1] = 7;
        let i = insn(mov_store::<true>, 1, 0, 0, MEM + 8);
        assert_eq!(
            (i.exec)(&mut cpu, &i),
            Err(Trap::Exception(Exception::GeneralProtection(0)).into())
        );
        assert_eq!(cpu.mmu.read::<8>(MEM + 8), Ok(0));
        let i = insn(mov_store::<false>, 1, 0, 0, MEM + 8);
        assert_eq!((i.exec)(&mut cpu, &i), Ok(()));
        let i = insn(mov_load::<true, false>, 2, 0, 0, MEM + 8);
        assert_eq!((i.exec)(&mut cpu, &i), Ok(()));
        assert_eq!(cpu.xmm[2], 7);
    }

    #[test]
    fn ldmxcsr_rejects_reserved_bits() {
        let mut cpu = cpu();
        cpu.mmu.write::<4>(MEM, 0x1_1f80).expect("write");
        let i = insn(ldmxcsr, 0, 0, 0, MEM);
        assert_eq!(
            (i.exec)(&mut cpu, &i),
            Err(Trap::Exception(Exception::GeneralProtection(0)).into())
        );
        assert_eq!(cpu.mxcsr, 0x1f80);
        cpu.mmu.write::<4>(MEM, 0xffff).expect("write");
        assert_eq!((i.exec)(&mut cpu, &i), Ok(()));
        assert_eq!(cpu.mxcsr, 0xffff);
    }

    #[test]
    fn maskmovdqu_writes_only_selected_bytes() {
        let mut cpu = cpu();
        cpu.regs[reg::RDI as usize] = MEM + 3;
        cpu.xmm[1] = u128::from_le_bytes(std::array::from_fn(|k| 0xa0 + k as u8));
        cpu.xmm[2] = 0x80 | 0x80 << 120;
        let i = insn(maskmovdqu, 1, 2, 0, 0);
        assert_eq!((i.exec)(&mut cpu, &i), Ok(()));
        assert_eq!(cpu.mmu.read::<1>(MEM + 3), Ok(0xa0));
        assert_eq!(cpu.mmu.read::<1>(MEM + 4), Ok(0));
        assert_eq!(cpu.mmu.read::<1>(MEM + 18), Ok(0xaf));
    }

    #[test]
    fn scalar_moves_zero_or_keep_the_upper_lanes() {
        let mut cpu = cpu();
        cpu.xmm[0] = u128::MAX;
        cpu.xmm[1] = 0x1234;
        cpu.mmu.write::<4>(MEM, 0x5678).expect("write");
        let i = insn(movs_rr::<4>, 0, 1, 0, 0);
        (i.exec)(&mut cpu, &i).expect("movss");
        assert_eq!(cpu.xmm[0], (u128::MAX << 32) | 0x1234);
        let i = insn(load_zext::<4>, 0, 0, 0, MEM);
        (i.exec)(&mut cpu, &i).expect("movss load");
        assert_eq!(cpu.xmm[0], 0x5678);
    }
}
