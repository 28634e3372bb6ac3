//! Lane rearrangement: shuffles, unpacks, packs with saturation, byte alignment, blends,
//! inserts and extracts, sign and zero extension (PMOVSX/PMOVZX), MPSADBW.

use iced_x86::Code;

use super::lanes::{from_u16s, from_u32s, from_u64s, from_u8s, u16s, u32s, u64s, u8s};
use super::{set_xmm, src128, src_low, xmm};
use crate::cpu::{mask, Cpu};
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// Operation numbers for [`combine`].
mod op {
    pub const PSHUFD: u8 = 0;
    pub const PSHUFLW: u8 = 1;
    pub const PSHUFHW: u8 = 2;
    pub const SHUFPS: u8 = 3;
    pub const SHUFPD: u8 = 4;
    pub const UNPCKLBW: u8 = 5;
    pub const UNPCKLWD: u8 = 6;
    pub const UNPCKLDQ: u8 = 7;
    pub const UNPCKLQDQ: u8 = 8;
    pub const UNPCKHBW: u8 = 9;
    pub const UNPCKHWD: u8 = 10;
    pub const UNPCKHDQ: u8 = 11;
    pub const UNPCKHQDQ: u8 = 12;
    pub const PACKSSWB: u8 = 13;
    pub const PACKSSDW: u8 = 14;
    pub const PACKUSWB: u8 = 15;
    pub const PACKUSDW: u8 = 16;
    pub const PSHUFB: u8 = 17;
    pub const PALIGNR: u8 = 18;
    pub const BLENDPS: u8 = 19;
    pub const BLENDPD: u8 = 20;
    pub const PBLENDW: u8 = 21;
    pub const MPSADBW: u8 = 22;
}
use op::*;

/// Interleaves the low (`HIGH == false`) or high halves of `a` and `b`, `N` bytes at a
/// time.
fn unpack<const N: usize, const HIGH: bool>(a: u128, b: u128) -> u128 {
    let (a, b) = (u8s(a), u8s(b));
    let half = if HIGH { 8 } else { 0 };
    from_u8s(std::array::from_fn(|k| {
        let element = k / N;
        let byte = k % N;
        let from = if element % 2 == 0 { &a } else { &b };
        from[half + (element / 2) * N + byte]
    }))
}

/// The result of `OP` on destination `a`, source `b` and immediate `imm`.
#[inline(always)]
fn combine<const OP: u8>(a: u128, b: u128, imm: u8) -> u128 {
    let sel = |k: u32| ((imm >> (2 * k)) & 3) as usize;
    match OP {
        PSHUFD => {
            let d = u32s(b);
            from_u32s([d[sel(0)], d[sel(1)], d[sel(2)], d[sel(3)]])
        }
        PSHUFLW => {
            let w = u16s(b);
            let mut r = w;
            for k in 0..4 {
                r[k] = w[sel(k as u32)];
            }
            from_u16s(r)
        }
        PSHUFHW => {
            let w = u16s(b);
            let mut r = w;
            for k in 0..4 {
                r[4 + k] = w[4 + sel(k as u32)];
            }
            from_u16s(r)
        }
        SHUFPS => {
            let (x, y) = (u32s(a), u32s(b));
            from_u32s([x[sel(0)], x[sel(1)], y[sel(2)], y[sel(3)]])
        }
        SHUFPD => {
            let (x, y) = (u64s(a), u64s(b));
            from_u64s([x[(imm & 1) as usize], y[((imm >> 1) & 1) as usize]])
        }
        UNPCKLBW => unpack::<1, false>(a, b),
        UNPCKLWD => unpack::<2, false>(a, b),
        UNPCKLDQ => unpack::<4, false>(a, b),
        UNPCKLQDQ => unpack::<8, false>(a, b),
        UNPCKHBW => unpack::<1, true>(a, b),
        UNPCKHWD => unpack::<2, true>(a, b),
        UNPCKHDQ => unpack::<4, true>(a, b),
        UNPCKHQDQ => unpack::<8, true>(a, b),
        PACKSSWB | PACKUSWB => {
            let (x, y) = (u16s(a), u16s(b));
            from_u8s(std::array::from_fn(|k| {
                let w = if k < 8 { x[k] } else { y[k - 8] } as i16 as i32;
                if OP == PACKSSWB {
                    w.clamp(-128, 127) as i8 as u8
                } else {
                    w.clamp(0, 255) as u8
                }
            }))
        }
        PACKSSDW | PACKUSDW => {
            let (x, y) = (u32s(a), u32s(b));
            from_u16s(std::array::from_fn(|k| {
                let d = if k < 4 { x[k] } else { y[k - 4] } as i32;
                if OP == PACKSSDW {
                    d.clamp(-32768, 32767) as i16 as u16
                } else {
                    d.clamp(0, 65535) as u16
                }
            }))
        }
        PSHUFB => {
            let (x, y) = (u8s(a), u8s(b));
            from_u8s(std::array::from_fn(|k| {
                if y[k] & 0x80 != 0 {
                    0
                } else {
                    x[(y[k] & 15) as usize]
                }
            }))
        }
        PALIGNR => {
            // The 32-byte concatenation dst:src shifted right by imm bytes.
            let shift = imm as u32 * 8;
            if shift >= 256 {
                0
            } else if shift >= 128 {
                a >> (shift - 128)
            } else if shift == 0 {
                b
            } else {
                (b >> shift) | (a << (128 - shift))
            }
        }
        BLENDPS => {
            let (x, y) = (u32s(a), u32s(b));
            from_u32s(std::array::from_fn(|k| {
                if imm & (1 << k) != 0 {
                    y[k]
                } else {
                    x[k]
                }
            }))
        }
        BLENDPD => {
            let (x, y) = (u64s(a), u64s(b));
            from_u64s(std::array::from_fn(|k| {
                if imm & (1 << k) != 0 {
                    y[k]
                } else {
                    x[k]
                }
            }))
        }
        PBLENDW => {
            let (x, y) = (u16s(a), u16s(b));
            from_u16s(std::array::from_fn(|k| {
                if imm & (1 << k) != 0 {
                    y[k]
                } else {
                    x[k]
                }
            }))
        }
        MPSADBW => {
            let (x, y) = (u8s(a), u8s(b));
            let src_off = (imm & 3) as usize * 4;
            let dst_off = ((imm >> 2) & 1) as usize * 4;
            from_u16s(std::array::from_fn(|k| {
                (0..4)
                    .map(|j| x[dst_off + k + j].abs_diff(y[src_off + j]) as u16)
                    .sum()
            }))
        }
        _ => a,
    }
}

/// `op xmm, xmm/m128[, imm8]` for the operations of [`combine`].
fn combine_op<const OP: u8, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let r = combine::<OP>(xmm(cpu, i.dst), b, i.imm as u8);
    set_xmm(cpu, i.dst, r);
    Ok(())
}

fn entry<const OP: u8>() -> OpEntry {
    OpEntry::rm(combine_op::<OP, false>, combine_op::<OP, true>)
}

/// BLENDVPS (`N == 4`), BLENDVPD (8), PBLENDVB (1): lanes come from the source where the
/// lane's sign bit in the implicit mask register XMM0 is set.
fn blend_variable<const N: usize, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let m = cpu.xmm[0];
    let lane_mask = mask::<N>() as u128;
    let mut r = a;
    for k in 0..16 / N {
        let shift = (k * N * 8) as u32;
        if (m >> (shift + N as u32 * 8 - 1)) & 1 != 0 {
            r = (r & !(lane_mask << shift)) | (b & (lane_mask << shift));
        }
    }
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// PMOVSX/PMOVZX: `FROM`-byte elements of the low `FROM * (16 / TO)` bytes extended to
/// `TO` bytes each. `SRC` is that source width in bytes (the memory operand size).
fn extend<
    const FROM: usize,
    const TO: usize,
    const SRC: usize,
    const SIGNED: bool,
    const MEM: bool,
>(
    cpu: &mut Cpu,
    i: &Insn,
) -> Step {
    let s = src_low::<MEM, SRC>(cpu, i)?;
    let mut r = 0u128;
    for k in 0..16 / TO {
        let raw = (s >> (k * FROM * 8)) as u64 & mask::<FROM>();
        let v = if SIGNED {
            crate::cpu::sext::<FROM>(raw) & mask::<TO>()
        } else {
            raw
        };
        r |= (v as u128) << (k * TO * 8);
    }
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// PEXTRB/PEXTRW/PEXTRD/PEXTRQ/EXTRACTPS into a general register (zero-extended to the
/// register's width). The element index is the immediate modulo the lane count.
fn extract_reg<const N: usize, const R: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let idx = (i.imm as usize) & (16 / N - 1);
    let v = (xmm(cpu, i.src) >> (idx * N * 8)) as u64 & mask::<N>();
    cpu.set_reg::<R>(i.dst, v);
    Ok(())
}

/// The memory forms of the extracts: the register operand is in `dst`.
fn extract_mem<const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let idx = (i.imm as usize) & (16 / N - 1);
    let v = (xmm(cpu, i.dst) >> (idx * N * 8)) as u64 & mask::<N>();
    Ok(super::super::store::<N>(cpu, i, v)?)
}

/// PINSRB/PINSRW/PINSRD/PINSRQ: an `N`-byte element from a general register or memory.
fn insert<const N: usize, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let v = if MEM {
        super::super::load::<N>(cpu, i)?
    } else {
        cpu.reg::<8>(i.src) & mask::<N>()
    };
    let idx = (i.imm as usize) & (16 / N - 1);
    let shift = idx * N * 8;
    let a = xmm(cpu, i.dst);
    let r = (a & !((mask::<N>() as u128) << shift)) | (v as u128) << shift;
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// INSERTPS: one single (chosen by imm bits 7:6 from a register, or the m32 operand)
/// into the lane of imm bits 5:4, then the lanes of imm bits 3:0 zeroed.
fn insertps<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let imm = i.imm as u8;
    let v = if MEM {
        super::super::load::<4>(cpu, i)? as u32
    } else {
        u32s(xmm(cpu, i.src))[(imm >> 6) as usize]
    };
    let mut d = u32s(xmm(cpu, i.dst));
    d[((imm >> 4) & 3) as usize] = v;
    for (k, lane) in d.iter_mut().enumerate() {
        if imm & (1 << k) != 0 {
            *lane = 0;
        }
    }
    set_xmm(cpu, i.dst, from_u32s(d));
    Ok(())
}

pub(super) fn register(t: &mut OpTable) {
    t.set(Code::Pshufd_xmm_xmmm128_imm8, entry::<PSHUFD>());
    t.set(Code::Pshuflw_xmm_xmmm128_imm8, entry::<PSHUFLW>());
    t.set(Code::Pshufhw_xmm_xmmm128_imm8, entry::<PSHUFHW>());
    t.set(Code::Shufps_xmm_xmmm128_imm8, entry::<SHUFPS>());
    t.set(Code::Shufpd_xmm_xmmm128_imm8, entry::<SHUFPD>());
    t.set(Code::Punpcklbw_xmm_xmmm128, entry::<UNPCKLBW>());
    t.set(Code::Punpcklwd_xmm_xmmm128, entry::<UNPCKLWD>());
    t.set(Code::Punpckldq_xmm_xmmm128, entry::<UNPCKLDQ>());
    t.set(Code::Punpcklqdq_xmm_xmmm128, entry::<UNPCKLQDQ>());
    t.set(Code::Punpckhbw_xmm_xmmm128, entry::<UNPCKHBW>());
    t.set(Code::Punpckhwd_xmm_xmmm128, entry::<UNPCKHWD>());
    t.set(Code::Punpckhdq_xmm_xmmm128, entry::<UNPCKHDQ>());
    t.set(Code::Punpckhqdq_xmm_xmmm128, entry::<UNPCKHQDQ>());
    t.set(Code::Unpcklps_xmm_xmmm128, entry::<UNPCKLDQ>());
    t.set(Code::Unpckhps_xmm_xmmm128, entry::<UNPCKHDQ>());
    t.set(Code::Unpcklpd_xmm_xmmm128, entry::<UNPCKLQDQ>());
    t.set(Code::Unpckhpd_xmm_xmmm128, entry::<UNPCKHQDQ>());
    t.set(Code::Packsswb_xmm_xmmm128, entry::<PACKSSWB>());
    t.set(Code::Packssdw_xmm_xmmm128, entry::<PACKSSDW>());
    t.set(Code::Packuswb_xmm_xmmm128, entry::<PACKUSWB>());
    t.set(Code::Packusdw_xmm_xmmm128, entry::<PACKUSDW>());
    t.set(Code::Pshufb_xmm_xmmm128, entry::<PSHUFB>());
    t.set(Code::Palignr_xmm_xmmm128_imm8, entry::<PALIGNR>());
    t.set(Code::Blendps_xmm_xmmm128_imm8, entry::<BLENDPS>());
    t.set(Code::Blendpd_xmm_xmmm128_imm8, entry::<BLENDPD>());
    t.set(Code::Pblendw_xmm_xmmm128_imm8, entry::<PBLENDW>());
    t.set(Code::Mpsadbw_xmm_xmmm128_imm8, entry::<MPSADBW>());
    t.set(
        Code::Blendvps_xmm_xmmm128,
        OpEntry::rm(blend_variable::<4, false>, blend_variable::<4, true>),
    );
    t.set(
        Code::Blendvpd_xmm_xmmm128,
        OpEntry::rm(blend_variable::<8, false>, blend_variable::<8, true>),
    );
    t.set(
        Code::Pblendvb_xmm_xmmm128,
        OpEntry::rm(blend_variable::<1, false>, blend_variable::<1, true>),
    );

    t.set(
        Code::Pmovsxbw_xmm_xmmm64,
        OpEntry::rm(
            extend::<1, 2, 8, true, false>,
            extend::<1, 2, 8, true, true>,
        ),
    );
    t.set(
        Code::Pmovsxbd_xmm_xmmm32,
        OpEntry::rm(
            extend::<1, 4, 4, true, false>,
            extend::<1, 4, 4, true, true>,
        ),
    );
    t.set(
        Code::Pmovsxbq_xmm_xmmm16,
        OpEntry::rm(
            extend::<1, 8, 2, true, false>,
            extend::<1, 8, 2, true, true>,
        ),
    );
    t.set(
        Code::Pmovsxwd_xmm_xmmm64,
        OpEntry::rm(
            extend::<2, 4, 8, true, false>,
            extend::<2, 4, 8, true, true>,
        ),
    );
    t.set(
        Code::Pmovsxwq_xmm_xmmm32,
        OpEntry::rm(
            extend::<2, 8, 4, true, false>,
            extend::<2, 8, 4, true, true>,
        ),
    );
    t.set(
        Code::Pmovsxdq_xmm_xmmm64,
        OpEntry::rm(
            extend::<4, 8, 8, true, false>,
            extend::<4, 8, 8, true, true>,
        ),
    );
    t.set(
        Code::Pmovzxbw_xmm_xmmm64,
        OpEntry::rm(
            extend::<1, 2, 8, false, false>,
            extend::<1, 2, 8, false, true>,
        ),
    );
    t.set(
        Code::Pmovzxbd_xmm_xmmm32,
        OpEntry::rm(
            extend::<1, 4, 4, false, false>,
            extend::<1, 4, 4, false, true>,
        ),
    );
    t.set(
        Code::Pmovzxbq_xmm_xmmm16,
        OpEntry::rm(
            extend::<1, 8, 2, false, false>,
            extend::<1, 8, 2, false, true>,
        ),
    );
    t.set(
        Code::Pmovzxwd_xmm_xmmm64,
        OpEntry::rm(
            extend::<2, 4, 8, false, false>,
            extend::<2, 4, 8, false, true>,
        ),
    );
    t.set(
        Code::Pmovzxwq_xmm_xmmm32,
        OpEntry::rm(
            extend::<2, 8, 4, false, false>,
            extend::<2, 8, 4, false, true>,
        ),
    );
    t.set(
        Code::Pmovzxdq_xmm_xmmm64,
        OpEntry::rm(
            extend::<4, 8, 8, false, false>,
            extend::<4, 8, 8, false, true>,
        ),
    );

    t.set(Code::Pextrw_r32_xmm_imm8, OpEntry::reg(extract_reg::<2, 4>));
    t.set(Code::Pextrw_r64_xmm_imm8, OpEntry::reg(extract_reg::<2, 8>));
    t.set(
        Code::Pextrw_r32m16_xmm_imm8,
        OpEntry::rm(extract_reg::<2, 4>, extract_mem::<2>),
    );
    t.set(
        Code::Pextrw_r64m16_xmm_imm8,
        OpEntry::rm(extract_reg::<2, 8>, extract_mem::<2>),
    );
    t.set(
        Code::Pextrb_r32m8_xmm_imm8,
        OpEntry::rm(extract_reg::<1, 4>, extract_mem::<1>),
    );
    t.set(
        Code::Pextrb_r64m8_xmm_imm8,
        OpEntry::rm(extract_reg::<1, 8>, extract_mem::<1>),
    );
    t.set(
        Code::Pextrd_rm32_xmm_imm8,
        OpEntry::rm(extract_reg::<4, 4>, extract_mem::<4>),
    );
    t.set(
        Code::Pextrq_rm64_xmm_imm8,
        OpEntry::rm(extract_reg::<8, 8>, extract_mem::<8>),
    );
    t.set(
        Code::Extractps_rm32_xmm_imm8,
        OpEntry::rm(extract_reg::<4, 4>, extract_mem::<4>),
    );
    t.set(
        Code::Extractps_r64m32_xmm_imm8,
        OpEntry::rm(extract_reg::<4, 8>, extract_mem::<4>),
    );
    t.set(
        Code::Pinsrw_xmm_r32m16_imm8,
        OpEntry::rm(insert::<2, false>, insert::<2, true>),
    );
    t.set(
        Code::Pinsrw_xmm_r64m16_imm8,
        OpEntry::rm(insert::<2, false>, insert::<2, true>),
    );
    t.set(
        Code::Pinsrb_xmm_r32m8_imm8,
        OpEntry::rm(insert::<1, false>, insert::<1, true>),
    );
    t.set(
        Code::Pinsrb_xmm_r64m8_imm8,
        OpEntry::rm(insert::<1, false>, insert::<1, true>),
    );
    t.set(
        Code::Pinsrd_xmm_rm32_imm8,
        OpEntry::rm(insert::<4, false>, insert::<4, true>),
    );
    t.set(
        Code::Pinsrq_xmm_rm64_imm8,
        OpEntry::rm(insert::<8, false>, insert::<8, true>),
    );
    t.set(
        Code::Insertps_xmm_xmmm32_imm8,
        OpEntry::rm(insertps::<false>, insertps::<true>),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_interleaves_low_and_high_halves() {
        let a = from_u32s([0, 1, 2, 3]);
        let b = from_u32s([10, 11, 12, 13]);
        assert_eq!(u32s(combine::<UNPCKLDQ>(a, b, 0)), [0, 10, 1, 11]);
        assert_eq!(u32s(combine::<UNPCKHDQ>(a, b, 0)), [2, 12, 3, 13]);
        assert_eq!(
            u64s(combine::<UNPCKHQDQ>(a, b, 0)),
            [u64s(a)[1], u64s(b)[1]]
        );
    }

    #[test]
    fn palignr_handles_every_shift_range() {
        let a = from_u64s([0x1111, 0x2222]);
        let b = from_u64s([0x3333, 0x4444]);
        assert_eq!(combine::<PALIGNR>(a, b, 0), b);
        assert_eq!(u64s(combine::<PALIGNR>(a, b, 8)), [0x4444, 0x1111]);
        assert_eq!(combine::<PALIGNR>(a, b, 16), a);
        assert_eq!(u64s(combine::<PALIGNR>(a, b, 24)), [0x2222, 0]);
        assert_eq!(combine::<PALIGNR>(a, b, 32), 0);
        assert_eq!(combine::<PALIGNR>(a, b, 255), 0);
    }

    #[test]
    fn packs_saturate() {
        let a = from_u32s([0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 5]);
        assert_eq!(
            &u16s(combine::<PACKSSDW>(a, a, 0))[..4],
            &[0x7fff, 0x8000, 0xffff, 5]
        );
        assert_eq!(&u16s(combine::<PACKUSDW>(a, a, 0))[..4], &[0xffff, 0, 0, 5]);
    }

    #[test]
    fn mpsadbw_sums_absolute_differences_of_sliding_blocks() {
        let a = from_u8s(std::array::from_fn(|k| k as u8));
        let b = from_u8s([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Source block 1 (bytes 4..8, all ones) against destination bytes k..k+4.
        let r = u16s(combine::<MPSADBW>(a, b, 1));
        // |0-1| + |1-1| + |2-1| + |3-1|.
        assert_eq!(r[0], 4);
        assert_eq!(r[7], 6 + 7 + 8 + 9);
    }
}
