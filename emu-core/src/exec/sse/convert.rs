//! Conversions between integers, singles and doubles: CVTSI2SS/SD, CVT(T)SS2SI,
//! CVT(T)SD2SI, CVTSS2SD, CVTSD2SS, CVTPS2PD, CVTPD2PS, CVTDQ2PS, CVT(T)PS2DQ, CVTDQ2PD,
//! CVT(T)PD2DQ. The truncating forms round toward zero whatever MXCSR.RC says;
//! out-of-range and NaN inputs give the integer indefinite and raise IE.

use iced_x86::Code;

use super::softfp::{self, Env, Format, Round, F32, F64};
use super::{commit_fp, lane, set_xmm, src128, src_low, src_scalar, with_lane, xmm};
use crate::cpu::Cpu;
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// The environment of a conversion to integer: truncating forms ignore MXCSR.RC.
fn int_env<const TRUNCATE: bool>(mxcsr: u32) -> Env {
    let env = Env::new(mxcsr);
    if TRUNCATE {
        env.with_round(Round::Zero)
    } else {
        env
    }
}

/// CVTSI2SS/CVTSI2SD from an `N`-byte signed integer (general register or memory) into
/// the low lane of `dst`.
fn int_to_scalar<F: Format, const N: usize, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let raw = if MEM {
        super::super::load::<N>(cpu, i)?
    } else {
        cpu.reg::<N>(i.src)
    };
    let v = if N == 4 {
        raw as u32 as i32 as i64
    } else {
        raw as i64
    };
    let mut env = Env::new(cpu.mxcsr);
    let r = softfp::from_int::<F>(v, &mut env);
    commit_fp(cpu, env.flags)?;
    let a = xmm(cpu, i.dst);
    set_xmm(cpu, i.dst, with_lane::<F>(a, 0, r));
    Ok(())
}

/// CVT(T)SS2SI / CVT(T)SD2SI into an `N`-byte general register.
fn scalar_to_int<F: Format, const N: usize, const TRUNCATE: bool, const MEM: bool>(
    cpu: &mut Cpu,
    i: &Insn,
) -> Step {
    let v = src_scalar::<F, MEM>(cpu, i)?;
    let mut env = int_env::<TRUNCATE>(cpu.mxcsr);
    let r = if N == 4 {
        softfp::to_int::<F, 32>(v, &mut env)
    } else {
        softfp::to_int::<F, 64>(v, &mut env)
    };
    commit_fp(cpu, env.flags)?;
    cpu.set_reg::<N>(i.dst, r);
    Ok(())
}

/// CVTSS2SD / CVTSD2SS: the low lane converts, the rest of `dst` is kept.
fn scalar_to_scalar<S: Format, D: Format, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = src_scalar::<S, MEM>(cpu, i)?;
    let mut env = Env::new(cpu.mxcsr);
    let r = softfp::convert::<S, D>(v, &mut env);
    commit_fp(cpu, env.flags)?;
    let a = xmm(cpu, i.dst);
    set_xmm(cpu, i.dst, with_lane::<D>(a, 0, r));
    Ok(())
}

/// CVTPS2PD: the two low singles (register or m64) to two doubles.
fn ps2pd<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let s = src_low::<MEM, 8>(cpu, i)?;
    let mut env = Env::new(cpu.mxcsr);
    let lo = softfp::convert::<F32, F64>(lane::<F32>(s, 0), &mut env);
    let hi = softfp::convert::<F32, F64>(lane::<F32>(s, 1), &mut env);
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, lo as u128 | (hi as u128) << 64);
    Ok(())
}

/// CVTPD2PS: two doubles to the two low singles; the high quadword is zeroed.
fn pd2ps<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let s = src128::<MEM>(cpu, i)?;
    let mut env = Env::new(cpu.mxcsr);
    let lo = softfp::convert::<F64, F32>(lane::<F64>(s, 0), &mut env);
    let hi = softfp::convert::<F64, F32>(lane::<F64>(s, 1), &mut env);
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, lo as u128 | (hi as u128) << 32);
    Ok(())
}

/// CVTDQ2PS: four signed doublewords to singles.
fn dq2ps<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let s = src128::<MEM>(cpu, i)?;
    let mut env = Env::new(cpu.mxcsr);
    let mut r = 0;
    for k in 0..4 {
        let v = lane::<F32>(s, k) as u32 as i32 as i64;
        r = with_lane::<F32>(r, k, softfp::from_int::<F32>(v, &mut env));
    }
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// CVTDQ2PD: the two low signed doublewords (register or m64) to doubles (always exact).
fn dq2pd<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let s = src_low::<MEM, 8>(cpu, i)?;
    let mut env = Env::new(cpu.mxcsr);
    let lo = softfp::from_int::<F64>(s as u32 as i32 as i64, &mut env);
    let hi = softfp::from_int::<F64>((s >> 32) as u32 as i32 as i64, &mut env);
    set_xmm(cpu, i.dst, lo as u128 | (hi as u128) << 64);
    Ok(())
}

/// CVT(T)PS2DQ: four singles to signed doublewords.
fn ps2dq<const TRUNCATE: bool, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let s = src128::<MEM>(cpu, i)?;
    let mut env = int_env::<TRUNCATE>(cpu.mxcsr);
    let mut r = 0;
    for k in 0..4 {
        let v = softfp::to_int::<F32, 32>(lane::<F32>(s, k), &mut env);
        r = with_lane::<F32>(r, k, v);
    }
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// CVT(T)PD2DQ: two doubles to the two low signed doublewords; the high quadword is
/// zeroed.
fn pd2dq<const TRUNCATE: bool, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let s = src128::<MEM>(cpu, i)?;
    let mut env = int_env::<TRUNCATE>(cpu.mxcsr);
    let lo = softfp::to_int::<F64, 32>(lane::<F64>(s, 0), &mut env);
    let hi = softfp::to_int::<F64, 32>(lane::<F64>(s, 1), &mut env);
    commit_fp(cpu, env.flags)?;
    set_xmm(cpu, i.dst, lo as u128 | (hi as u128) << 32);
    Ok(())
}

pub(super) fn register(t: &mut OpTable) {
    t.set(
        Code::Cvtsi2ss_xmm_rm32,
        OpEntry::rm(
            int_to_scalar::<F32, 4, false>,
            int_to_scalar::<F32, 4, true>,
        ),
    );
    t.set(
        Code::Cvtsi2ss_xmm_rm64,
        OpEntry::rm(
            int_to_scalar::<F32, 8, false>,
            int_to_scalar::<F32, 8, true>,
        ),
    );
    t.set(
        Code::Cvtsi2sd_xmm_rm32,
        OpEntry::rm(
            int_to_scalar::<F64, 4, false>,
            int_to_scalar::<F64, 4, true>,
        ),
    );
    t.set(
        Code::Cvtsi2sd_xmm_rm64,
        OpEntry::rm(
            int_to_scalar::<F64, 8, false>,
            int_to_scalar::<F64, 8, true>,
        ),
    );
    t.set(
        Code::Cvtss2si_r32_xmmm32,
        OpEntry::rm(
            scalar_to_int::<F32, 4, false, false>,
            scalar_to_int::<F32, 4, false, true>,
        ),
    );
    t.set(
        Code::Cvtss2si_r64_xmmm32,
        OpEntry::rm(
            scalar_to_int::<F32, 8, false, false>,
            scalar_to_int::<F32, 8, false, true>,
        ),
    );
    t.set(
        Code::Cvttss2si_r32_xmmm32,
        OpEntry::rm(
            scalar_to_int::<F32, 4, true, false>,
            scalar_to_int::<F32, 4, true, true>,
        ),
    );
    t.set(
        Code::Cvttss2si_r64_xmmm32,
        OpEntry::rm(
            scalar_to_int::<F32, 8, true, false>,
            scalar_to_int::<F32, 8, true, true>,
        ),
    );
    t.set(
        Code::Cvtsd2si_r32_xmmm64,
        OpEntry::rm(
            scalar_to_int::<F64, 4, false, false>,
            scalar_to_int::<F64, 4, false, true>,
        ),
    );
    t.set(
        Code::Cvtsd2si_r64_xmmm64,
        OpEntry::rm(
            scalar_to_int::<F64, 8, false, false>,
            scalar_to_int::<F64, 8, false, true>,
        ),
    );
    t.set(
        Code::Cvttsd2si_r32_xmmm64,
        OpEntry::rm(
            scalar_to_int::<F64, 4, true, false>,
            scalar_to_int::<F64, 4, true, true>,
        ),
    );
    t.set(
        Code::Cvttsd2si_r64_xmmm64,
        OpEntry::rm(
            scalar_to_int::<F64, 8, true, false>,
            scalar_to_int::<F64, 8, true, true>,
        ),
    );
    t.set(
        Code::Cvtss2sd_xmm_xmmm32,
        OpEntry::rm(
            scalar_to_scalar::<F32, F64, false>,
            scalar_to_scalar::<F32, F64, true>,
        ),
    );
    t.set(
        Code::Cvtsd2ss_xmm_xmmm64,
        OpEntry::rm(
            scalar_to_scalar::<F64, F32, false>,
            scalar_to_scalar::<F64, F32, true>,
        ),
    );
    t.set(
        Code::Cvtps2pd_xmm_xmmm64,
        OpEntry::rm(ps2pd::<false>, ps2pd::<true>),
    );
    t.set(
        Code::Cvtpd2ps_xmm_xmmm128,
        OpEntry::rm(pd2ps::<false>, pd2ps::<true>),
    );
    t.set(
        Code::Cvtdq2ps_xmm_xmmm128,
        OpEntry::rm(dq2ps::<false>, dq2ps::<true>),
    );
    t.set(
        Code::Cvtdq2pd_xmm_xmmm64,
        OpEntry::rm(dq2pd::<false>, dq2pd::<true>),
    );
    t.set(
        Code::Cvtps2dq_xmm_xmmm128,
        OpEntry::rm(ps2dq::<false, false>, ps2dq::<false, true>),
    );
    t.set(
        Code::Cvttps2dq_xmm_xmmm128,
        OpEntry::rm(ps2dq::<true, false>, ps2dq::<true, true>),
    );
    t.set(
        Code::Cvtpd2dq_xmm_xmmm128,
        OpEntry::rm(pd2dq::<false, false>, pd2dq::<false, true>),
    );
    t.set(
        Code::Cvttpd2dq_xmm_xmmm128,
        OpEntry::rm(pd2dq::<true, false>, pd2dq::<true, true>),
    );
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{cpu, insn};
    use super::*;

    #[test]
    fn truncating_conversions_ignore_mxcsr_rounding() {
        let mut cpu = cpu();
        cpu.mxcsr = 0x1f80 | 2 << softfp::RC_SHIFT; // round up
        cpu.xmm[2] =
            0x3fc0_0000 | 0xbfc0_0000u128 << 32 | 0x7fc0_0000u128 << 64 | 0x4f00_0000u128 << 96;
        let i = insn(ps2dq::<true, false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("cvttps2dq");
        assert_eq!(
            cpu.xmm[1],
            1 | 0xffff_ffffu128 << 32 | 0x8000_0000u128 << 64 | 0x8000_0000u128 << 96
        );
        assert_eq!(cpu.mxcsr & softfp::ALL_FLAGS, softfp::IE | softfp::PE);
        let i = insn(ps2dq::<false, false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("cvtps2dq");
        assert_eq!(cpu.xmm[1] as u32, 2);
    }

    #[test]
    fn narrowing_conversions_zero_the_high_quadword() {
        let mut cpu = cpu();
        cpu.xmm[1] = u128::MAX;
        cpu.xmm[2] = 0x3ff0_0000_0000_0000 | 0xc000_0000_0000_0000u128 << 64;
        let i = insn(pd2ps::<false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("cvtpd2ps");
        assert_eq!(cpu.xmm[1], 0x3f80_0000 | 0xc000_0000u128 << 32);
        cpu.xmm[1] = u128::MAX;
        let i = insn(pd2dq::<true, false>, 1, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("cvttpd2dq");
        assert_eq!(cpu.xmm[1], 1 | 0xffff_fffeu128 << 32);
    }

    #[test]
    fn cvtsi2ss_writes_only_the_low_lane_and_32_bit_results_zero_extend() {
        let mut cpu = cpu();
        cpu.xmm[1] = u128::MAX;
        cpu.regs[3] = 0xffff_ffff_0000_0003; // EBX = 3 in the 32-bit form
        let i = insn(int_to_scalar::<F32, 4, false>, 1, 3, 0, 0);
        (i.exec)(&mut cpu, &i).expect("cvtsi2ss");
        assert_eq!(cpu.xmm[1], (u128::MAX << 32) | 0x4040_0000);
        cpu.regs[0] = u64::MAX;
        cpu.xmm[2] = 0xc040_0000; // -3.0
        let i = insn(scalar_to_int::<F32, 4, true, false>, 0, 2, 0, 0);
        (i.exec)(&mut cpu, &i).expect("cvttss2si");
        assert_eq!(cpu.regs[0], 0xffff_fffd);
    }
}
