//! Packed integer arithmetic, compares, bitwise logic and shifts (SSE2, SSSE3, SSE4.1,
//! SSE4.2's PCMPGTQ), and the bitwise floating-point operations (ANDPS ... XORPD), which
//! are the same bit operations.

use iced_x86::Code;

use super::lanes::{from_u16s, from_u32s, from_u64s, from_u8s, u16s, u32s, u64s, u8s};
use super::{set_xmm, src128, xmm};
use crate::cpu::Cpu;
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// Operation numbers for [`binary`].
mod op {
    pub const PADDB: u8 = 0;
    pub const PADDW: u8 = 1;
    pub const PADDD: u8 = 2;
    pub const PADDQ: u8 = 3;
    pub const PSUBB: u8 = 4;
    pub const PSUBW: u8 = 5;
    pub const PSUBD: u8 = 6;
    pub const PSUBQ: u8 = 7;
    pub const PADDSB: u8 = 8;
    pub const PADDSW: u8 = 9;
    pub const PADDUSB: u8 = 10;
    pub const PADDUSW: u8 = 11;
    pub const PSUBSB: u8 = 12;
    pub const PSUBSW: u8 = 13;
    pub const PSUBUSB: u8 = 14;
    pub const PSUBUSW: u8 = 15;
    pub const PMULLW: u8 = 16;
    pub const PMULHW: u8 = 17;
    pub const PMULHUW: u8 = 18;
    pub const PMULUDQ: u8 = 19;
    pub const PMADDWD: u8 = 20;
    pub const PAVGB: u8 = 21;
    pub const PAVGW: u8 = 22;
    pub const PMINUB: u8 = 23;
    pub const PMAXUB: u8 = 24;
    pub const PMINSW: u8 = 25;
    pub const PMAXSW: u8 = 26;
    pub const PSADBW: u8 = 27;
    pub const PCMPEQB: u8 = 28;
    pub const PCMPEQW: u8 = 29;
    pub const PCMPEQD: u8 = 30;
    pub const PCMPGTB: u8 = 31;
    pub const PCMPGTW: u8 = 32;
    pub const PCMPGTD: u8 = 33;
    pub const AND: u8 = 34;
    pub const ANDN: u8 = 35;
    pub const OR: u8 = 36;
    pub const XOR: u8 = 37;
    // SSSE3
    pub const PHADDW: u8 = 40;
    pub const PHADDD: u8 = 41;
    pub const PHADDSW: u8 = 42;
    pub const PHSUBW: u8 = 43;
    pub const PHSUBD: u8 = 44;
    pub const PHSUBSW: u8 = 45;
    pub const PMADDUBSW: u8 = 46;
    pub const PSIGNB: u8 = 47;
    pub const PSIGNW: u8 = 48;
    pub const PSIGND: u8 = 49;
    pub const PMULHRSW: u8 = 50;
    pub const PABSB: u8 = 51;
    pub const PABSW: u8 = 52;
    pub const PABSD: u8 = 53;
    // SSE4.1
    pub const PMULLD: u8 = 60;
    pub const PMULDQ: u8 = 61;
    pub const PMINSB: u8 = 62;
    pub const PMINSD: u8 = 63;
    pub const PMINUW: u8 = 64;
    pub const PMINUD: u8 = 65;
    pub const PMAXSB: u8 = 66;
    pub const PMAXSD: u8 = 67;
    pub const PMAXUW: u8 = 68;
    pub const PMAXUD: u8 = 69;
    pub const PCMPEQQ: u8 = 70;
    pub const PHMINPOSUW: u8 = 71;
    // SSE4.2
    pub const PCMPGTQ: u8 = 80;
}
use op::*;

fn map8(a: u128, b: u128, f: impl Fn(u8, u8) -> u8) -> u128 {
    let (a, b) = (u8s(a), u8s(b));
    from_u8s(std::array::from_fn(|k| f(a[k], b[k])))
}

fn map16(a: u128, b: u128, f: impl Fn(u16, u16) -> u16) -> u128 {
    let (a, b) = (u16s(a), u16s(b));
    from_u16s(std::array::from_fn(|k| f(a[k], b[k])))
}

fn map32(a: u128, b: u128, f: impl Fn(u32, u32) -> u32) -> u128 {
    let (a, b) = (u32s(a), u32s(b));
    from_u32s(std::array::from_fn(|k| f(a[k], b[k])))
}

fn map64(a: u128, b: u128, f: impl Fn(u64, u64) -> u64) -> u128 {
    let (a, b) = (u64s(a), u64s(b));
    from_u64s(std::array::from_fn(|k| f(a[k], b[k])))
}

/// All ones when `c`, for compare results.
fn ones<T: From<u8> + std::ops::Not<Output = T>>(c: bool) -> T {
    if c {
        !T::from(0)
    } else {
        T::from(0)
    }
}

fn sat_i16(v: i32) -> u16 {
    v.clamp(i16::MIN as i32, i16::MAX as i32) as i16 as u16
}

/// Horizontal pairs: `f` applied to adjacent lanes of `a`, then of `b`.
fn horizontal16(a: u128, b: u128, f: impl Fn(u16, u16) -> u16) -> u128 {
    let (a, b) = (u16s(a), u16s(b));
    from_u16s(std::array::from_fn(|k| {
        let s = if k < 4 { &a } else { &b };
        let j = (k % 4) * 2;
        f(s[j], s[j + 1])
    }))
}

fn horizontal32(a: u128, b: u128, f: impl Fn(u32, u32) -> u32) -> u128 {
    let (a, b) = (u32s(a), u32s(b));
    from_u32s(std::array::from_fn(|k| {
        let s = if k < 2 { &a } else { &b };
        let j = (k % 2) * 2;
        f(s[j], s[j + 1])
    }))
}

/// The result of packed operation `OP` on destination `a` and source `b`.
#[inline(always)]
fn binary<const OP: u8>(a: u128, b: u128) -> u128 {
    match OP {
        PADDB => map8(a, b, u8::wrapping_add),
        PADDW => map16(a, b, u16::wrapping_add),
        PADDD => map32(a, b, u32::wrapping_add),
        PADDQ => map64(a, b, u64::wrapping_add),
        PSUBB => map8(a, b, u8::wrapping_sub),
        PSUBW => map16(a, b, u16::wrapping_sub),
        PSUBD => map32(a, b, u32::wrapping_sub),
        PSUBQ => map64(a, b, u64::wrapping_sub),
        PADDSB => map8(a, b, |x, y| (x as i8).saturating_add(y as i8) as u8),
        PADDSW => map16(a, b, |x, y| (x as i16).saturating_add(y as i16) as u16),
        PADDUSB => map8(a, b, u8::saturating_add),
        PADDUSW => map16(a, b, u16::saturating_add),
        PSUBSB => map8(a, b, |x, y| (x as i8).saturating_sub(y as i8) as u8),
        PSUBSW => map16(a, b, |x, y| (x as i16).saturating_sub(y as i16) as u16),
        PSUBUSB => map8(a, b, u8::saturating_sub),
        PSUBUSW => map16(a, b, u16::saturating_sub),
        PMULLW => map16(a, b, u16::wrapping_mul),
        PMULHW => map16(a, b, |x, y| {
            ((x as i16 as i32 * y as i16 as i32) >> 16) as u16
        }),
        PMULHUW => map16(a, b, |x, y| ((x as u32 * y as u32) >> 16) as u16),
        PMULUDQ => map64(a, b, |x, y| (x as u32 as u64) * (y as u32 as u64)),
        PMULDQ => map64(a, b, |x, y| {
            (x as u32 as i32 as i64).wrapping_mul(y as u32 as i32 as i64) as u64
        }),
        PMADDWD => {
            let (x, y) = (u16s(a), u16s(b));
            from_u32s(std::array::from_fn(|k| {
                let p0 = x[2 * k] as i16 as i32 * y[2 * k] as i16 as i32;
                let p1 = x[2 * k + 1] as i16 as i32 * y[2 * k + 1] as i16 as i32;
                // Only -32768 * -32768 twice overflows; it wraps to 0x80000000 as on hardware.
                p0.wrapping_add(p1) as u32
            }))
        }
        PAVGB => map8(a, b, |x, y| ((x as u16 + y as u16 + 1) >> 1) as u8),
        PAVGW => map16(a, b, |x, y| ((x as u32 + y as u32 + 1) >> 1) as u16),
        PMINUB => map8(a, b, u8::min),
        PMAXUB => map8(a, b, u8::max),
        PMINSW => map16(a, b, |x, y| (x as i16).min(y as i16) as u16),
        PMAXSW => map16(a, b, |x, y| (x as i16).max(y as i16) as u16),
        PMINSB => map8(a, b, |x, y| (x as i8).min(y as i8) as u8),
        PMAXSB => map8(a, b, |x, y| (x as i8).max(y as i8) as u8),
        PMINUW => map16(a, b, u16::min),
        PMAXUW => map16(a, b, u16::max),
        PMINSD => map32(a, b, |x, y| (x as i32).min(y as i32) as u32),
        PMAXSD => map32(a, b, |x, y| (x as i32).max(y as i32) as u32),
        PMINUD => map32(a, b, u32::min),
        PMAXUD => map32(a, b, u32::max),
        PSADBW => {
            let (x, y) = (u8s(a), u8s(b));
            let sad = |h: usize| -> u64 {
                (0..8)
                    .map(|k| x[h * 8 + k].abs_diff(y[h * 8 + k]) as u64)
                    .sum()
            };
            from_u64s([sad(0), sad(1)])
        }
        PCMPEQB => map8(a, b, |x, y| ones(x == y)),
        PCMPEQW => map16(a, b, |x, y| ones(x == y)),
        PCMPEQD => map32(a, b, |x, y| ones(x == y)),
        PCMPEQQ => map64(a, b, |x, y| if x == y { u64::MAX } else { 0 }),
        PCMPGTB => map8(a, b, |x, y| ones((x as i8) > (y as i8))),
        PCMPGTW => map16(a, b, |x, y| ones((x as i16) > (y as i16))),
        PCMPGTD => map32(a, b, |x, y| ones((x as i32) > (y as i32))),
        PCMPGTQ => map64(
            a,
            b,
            |x, y| if (x as i64) > (y as i64) { u64::MAX } else { 0 },
        ),
        AND => a & b,
        ANDN => !a & b,
        OR => a | b,
        XOR => a ^ b,
        PHADDW => horizontal16(a, b, u16::wrapping_add),
        PHADDD => horizontal32(a, b, u32::wrapping_add),
        PHADDSW => horizontal16(a, b, |x, y| (x as i16).saturating_add(y as i16) as u16),
        PHSUBW => horizontal16(a, b, u16::wrapping_sub),
        PHSUBD => horizontal32(a, b, u32::wrapping_sub),
        PHSUBSW => horizontal16(a, b, |x, y| (x as i16).saturating_sub(y as i16) as u16),
        PMADDUBSW => {
            // Unsigned bytes of the destination times signed bytes of the source.
            let (x, y) = (u8s(a), u8s(b));
            from_u16s(std::array::from_fn(|k| {
                let p0 = x[2 * k] as i32 * y[2 * k] as i8 as i32;
                let p1 = x[2 * k + 1] as i32 * y[2 * k + 1] as i8 as i32;
                sat_i16(p0 + p1)
            }))
        }
        PSIGNB => map8(a, b, |x, y| match (y as i8).signum() {
            -1 => x.wrapping_neg(),
            0 => 0,
            _ => x,
        }),
        PSIGNW => map16(a, b, |x, y| match (y as i16).signum() {
            -1 => x.wrapping_neg(),
            0 => 0,
            _ => x,
        }),
        PSIGND => map32(a, b, |x, y| match (y as i32).signum() {
            -1 => x.wrapping_neg(),
            0 => 0,
            _ => x,
        }),
        PMULHRSW => map16(a, b, |x, y| {
            let p = x as i16 as i32 * y as i16 as i32;
            (((p >> 14) + 1) >> 1) as u16
        }),
        // The absolute values read only the source.
        PABSB => map8(b, b, |x, _| (x as i8).unsigned_abs()),
        PABSW => map16(b, b, |x, _| (x as i16).unsigned_abs()),
        PABSD => map32(b, b, |x, _| (x as i32).unsigned_abs()),
        PMULLD => map32(a, b, u32::wrapping_mul),
        PHMINPOSUW => {
            let w = u16s(b);
            // The first (lowest-index) minimum wins.
            let (idx, min) =
                w.iter().enumerate().fold(
                    (0usize, w[0]),
                    |(bi, bv), (k, &v)| if v < bv { (k, v) } else { (bi, bv) },
                );
            min as u128 | (idx as u128) << 16
        }
        _ => a,
    }
}

/// `op xmm, xmm/m128` for the operations of [`binary`].
fn binary_op<const OP: u8, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let r = binary::<OP>(xmm(cpu, i.dst), b);
    set_xmm(cpu, i.dst, r);
    Ok(())
}

fn entry<const OP: u8>() -> OpEntry {
    OpEntry::rm(binary_op::<OP, false>, binary_op::<OP, true>)
}

/// Shift kinds.
mod shift {
    pub const SLL: u8 = 0;
    pub const SRL: u8 = 1;
    pub const SRA: u8 = 2;
}

/// Shifts every `N`-byte lane of `v` by `count` (counts past the lane width give zero,
/// or all sign bits for arithmetic shifts).
fn shift_lanes<const KIND: u8, const N: usize>(v: u128, count: u64) -> u128 {
    let bits = N as u64 * 8;
    match N {
        2 => map16(v, 0, |x, _| shift_one::<KIND>(x as u64, count, bits) as u16),
        4 => map32(v, 0, |x, _| shift_one::<KIND>(x as u64, count, bits) as u32),
        _ => map64(v, 0, |x, _| shift_one::<KIND>(x, count, bits)),
    }
}

fn shift_one<const KIND: u8>(x: u64, count: u64, bits: u64) -> u64 {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    match KIND {
        shift::SLL => {
            if count >= bits {
                0
            } else {
                (x << count) & mask
            }
        }
        shift::SRL => {
            if count >= bits {
                0
            } else {
                x >> count
            }
        }
        _ => {
            let signed = ((x << (64 - bits)) as i64) >> (64 - bits);
            (signed >> count.min(bits - 1)) as u64 & mask
        }
    }
}

/// PSLLW/D/Q, PSRLW/D/Q, PSRAW/D by an XMM or m128 count (its low quadword).
fn shift_by_xmm<const KIND: u8, const N: usize, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let count = src128::<MEM>(cpu, i)? as u64;
    let r = shift_lanes::<KIND, N>(xmm(cpu, i.dst), count);
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// The same by an immediate count.
fn shift_by_imm<const KIND: u8, const N: usize>(cpu: &mut Cpu, i: &Insn) -> Step {
    let r = shift_lanes::<KIND, N>(xmm(cpu, i.dst), i.imm & 0xff);
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// PSLLDQ (`LEFT`) and PSRLDQ: whole-register byte shifts.
fn shift_bytes<const LEFT: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let n = (i.imm & 0xff) as u32;
    let v = xmm(cpu, i.dst);
    let r = if n >= 16 {
        0
    } else if LEFT {
        v << (n * 8)
    } else {
        v >> (n * 8)
    };
    set_xmm(cpu, i.dst, r);
    Ok(())
}

/// PTEST: ZF = (a AND b) == 0, CF = (NOT a AND b) == 0; the other arithmetic flags clear.
fn ptest<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let b = src128::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let mut f = 0;
    if a & b == 0 {
        f |= flags::ZF;
    }
    if !a & b == 0 {
        f |= flags::CF;
    }
    cpu.flags.set_materialized(f);
    Ok(())
}

pub(super) fn register(t: &mut OpTable) {
    use shift::*;
    t.set(Code::Paddb_xmm_xmmm128, entry::<PADDB>());
    t.set(Code::Paddw_xmm_xmmm128, entry::<PADDW>());
    t.set(Code::Paddd_xmm_xmmm128, entry::<PADDD>());
    t.set(Code::Paddq_xmm_xmmm128, entry::<PADDQ>());
    t.set(Code::Psubb_xmm_xmmm128, entry::<PSUBB>());
    t.set(Code::Psubw_xmm_xmmm128, entry::<PSUBW>());
    t.set(Code::Psubd_xmm_xmmm128, entry::<PSUBD>());
    t.set(Code::Psubq_xmm_xmmm128, entry::<PSUBQ>());
    t.set(Code::Paddsb_xmm_xmmm128, entry::<PADDSB>());
    t.set(Code::Paddsw_xmm_xmmm128, entry::<PADDSW>());
    t.set(Code::Paddusb_xmm_xmmm128, entry::<PADDUSB>());
    t.set(Code::Paddusw_xmm_xmmm128, entry::<PADDUSW>());
    t.set(Code::Psubsb_xmm_xmmm128, entry::<PSUBSB>());
    t.set(Code::Psubsw_xmm_xmmm128, entry::<PSUBSW>());
    t.set(Code::Psubusb_xmm_xmmm128, entry::<PSUBUSB>());
    t.set(Code::Psubusw_xmm_xmmm128, entry::<PSUBUSW>());
    t.set(Code::Pmullw_xmm_xmmm128, entry::<PMULLW>());
    t.set(Code::Pmulhw_xmm_xmmm128, entry::<PMULHW>());
    t.set(Code::Pmulhuw_xmm_xmmm128, entry::<PMULHUW>());
    t.set(Code::Pmuludq_xmm_xmmm128, entry::<PMULUDQ>());
    t.set(Code::Pmaddwd_xmm_xmmm128, entry::<PMADDWD>());
    t.set(Code::Pavgb_xmm_xmmm128, entry::<PAVGB>());
    t.set(Code::Pavgw_xmm_xmmm128, entry::<PAVGW>());
    t.set(Code::Pminub_xmm_xmmm128, entry::<PMINUB>());
    t.set(Code::Pmaxub_xmm_xmmm128, entry::<PMAXUB>());
    t.set(Code::Pminsw_xmm_xmmm128, entry::<PMINSW>());
    t.set(Code::Pmaxsw_xmm_xmmm128, entry::<PMAXSW>());
    t.set(Code::Psadbw_xmm_xmmm128, entry::<PSADBW>());
    t.set(Code::Pcmpeqb_xmm_xmmm128, entry::<PCMPEQB>());
    t.set(Code::Pcmpeqw_xmm_xmmm128, entry::<PCMPEQW>());
    t.set(Code::Pcmpeqd_xmm_xmmm128, entry::<PCMPEQD>());
    t.set(Code::Pcmpgtb_xmm_xmmm128, entry::<PCMPGTB>());
    t.set(Code::Pcmpgtw_xmm_xmmm128, entry::<PCMPGTW>());
    t.set(Code::Pcmpgtd_xmm_xmmm128, entry::<PCMPGTD>());
    for code in [
        Code::Pand_xmm_xmmm128,
        Code::Andps_xmm_xmmm128,
        Code::Andpd_xmm_xmmm128,
    ] {
        t.set(code, entry::<AND>());
    }
    for code in [
        Code::Pandn_xmm_xmmm128,
        Code::Andnps_xmm_xmmm128,
        Code::Andnpd_xmm_xmmm128,
    ] {
        t.set(code, entry::<ANDN>());
    }
    for code in [
        Code::Por_xmm_xmmm128,
        Code::Orps_xmm_xmmm128,
        Code::Orpd_xmm_xmmm128,
    ] {
        t.set(code, entry::<OR>());
    }
    for code in [
        Code::Pxor_xmm_xmmm128,
        Code::Xorps_xmm_xmmm128,
        Code::Xorpd_xmm_xmmm128,
    ] {
        t.set(code, entry::<XOR>());
    }

    t.set(Code::Phaddw_xmm_xmmm128, entry::<PHADDW>());
    t.set(Code::Phaddd_xmm_xmmm128, entry::<PHADDD>());
    t.set(Code::Phaddsw_xmm_xmmm128, entry::<PHADDSW>());
    t.set(Code::Phsubw_xmm_xmmm128, entry::<PHSUBW>());
    t.set(Code::Phsubd_xmm_xmmm128, entry::<PHSUBD>());
    t.set(Code::Phsubsw_xmm_xmmm128, entry::<PHSUBSW>());
    t.set(Code::Pmaddubsw_xmm_xmmm128, entry::<PMADDUBSW>());
    t.set(Code::Psignb_xmm_xmmm128, entry::<PSIGNB>());
    t.set(Code::Psignw_xmm_xmmm128, entry::<PSIGNW>());
    t.set(Code::Psignd_xmm_xmmm128, entry::<PSIGND>());
    t.set(Code::Pmulhrsw_xmm_xmmm128, entry::<PMULHRSW>());
    t.set(Code::Pabsb_xmm_xmmm128, entry::<PABSB>());
    t.set(Code::Pabsw_xmm_xmmm128, entry::<PABSW>());
    t.set(Code::Pabsd_xmm_xmmm128, entry::<PABSD>());

    t.set(Code::Pmulld_xmm_xmmm128, entry::<PMULLD>());
    t.set(Code::Pmuldq_xmm_xmmm128, entry::<PMULDQ>());
    t.set(Code::Pminsb_xmm_xmmm128, entry::<PMINSB>());
    t.set(Code::Pminsd_xmm_xmmm128, entry::<PMINSD>());
    t.set(Code::Pminuw_xmm_xmmm128, entry::<PMINUW>());
    t.set(Code::Pminud_xmm_xmmm128, entry::<PMINUD>());
    t.set(Code::Pmaxsb_xmm_xmmm128, entry::<PMAXSB>());
    t.set(Code::Pmaxsd_xmm_xmmm128, entry::<PMAXSD>());
    t.set(Code::Pmaxuw_xmm_xmmm128, entry::<PMAXUW>());
    t.set(Code::Pmaxud_xmm_xmmm128, entry::<PMAXUD>());
    t.set(Code::Pcmpeqq_xmm_xmmm128, entry::<PCMPEQQ>());
    t.set(Code::Phminposuw_xmm_xmmm128, entry::<PHMINPOSUW>());
    t.set(Code::Pcmpgtq_xmm_xmmm128, entry::<PCMPGTQ>());
    t.set(
        Code::Ptest_xmm_xmmm128,
        OpEntry::rm(ptest::<false>, ptest::<true>),
    );

    t.set(
        Code::Psllw_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SLL, 2, false>, shift_by_xmm::<SLL, 2, true>),
    );
    t.set(
        Code::Pslld_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SLL, 4, false>, shift_by_xmm::<SLL, 4, true>),
    );
    t.set(
        Code::Psllq_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SLL, 8, false>, shift_by_xmm::<SLL, 8, true>),
    );
    t.set(
        Code::Psrlw_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SRL, 2, false>, shift_by_xmm::<SRL, 2, true>),
    );
    t.set(
        Code::Psrld_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SRL, 4, false>, shift_by_xmm::<SRL, 4, true>),
    );
    t.set(
        Code::Psrlq_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SRL, 8, false>, shift_by_xmm::<SRL, 8, true>),
    );
    t.set(
        Code::Psraw_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SRA, 2, false>, shift_by_xmm::<SRA, 2, true>),
    );
    t.set(
        Code::Psrad_xmm_xmmm128,
        OpEntry::rm(shift_by_xmm::<SRA, 4, false>, shift_by_xmm::<SRA, 4, true>),
    );
    t.set(Code::Psllw_xmm_imm8, OpEntry::reg(shift_by_imm::<SLL, 2>));
    t.set(Code::Pslld_xmm_imm8, OpEntry::reg(shift_by_imm::<SLL, 4>));
    t.set(Code::Psllq_xmm_imm8, OpEntry::reg(shift_by_imm::<SLL, 8>));
    t.set(Code::Psrlw_xmm_imm8, OpEntry::reg(shift_by_imm::<SRL, 2>));
    t.set(Code::Psrld_xmm_imm8, OpEntry::reg(shift_by_imm::<SRL, 4>));
    t.set(Code::Psrlq_xmm_imm8, OpEntry::reg(shift_by_imm::<SRL, 8>));
    t.set(Code::Psraw_xmm_imm8, OpEntry::reg(shift_by_imm::<SRA, 2>));
    t.set(Code::Psrad_xmm_imm8, OpEntry::reg(shift_by_imm::<SRA, 4>));
    t.set(Code::Pslldq_xmm_imm8, OpEntry::reg(shift_bytes::<true>));
    t.set(Code::Psrldq_xmm_imm8, OpEntry::reg(shift_bytes::<false>));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmaddwd_wraps_the_one_overflowing_case() {
        let a = from_u16s([0x8000; 8]);
        let r = u32s(binary::<PMADDWD>(a, a));
        assert_eq!(r, [0x8000_0000; 4]);
    }

    #[test]
    fn arithmetic_shifts_saturate_the_count() {
        let v = from_u16s([0x8000, 0x7fff, 1, 0, 0, 0, 0, 0xffff]);
        let r = u16s(shift_lanes::<{ shift::SRA }, 2>(v, 1000));
        assert_eq!(r, [0xffff, 0, 0, 0, 0, 0, 0, 0xffff]);
        let r = u16s(shift_lanes::<{ shift::SLL }, 2>(v, 16));
        assert_eq!(r, [0; 8]);
        let r = u64s(shift_lanes::<{ shift::SRL }, 8>(u128::MAX, 63));
        assert_eq!(r, [1, 1]);
    }

    #[test]
    fn phminposuw_picks_the_first_minimum() {
        let v = from_u16s([9, 3, 7, 3, 8, 8, 8, 8]);
        assert_eq!(binary::<PHMINPOSUW>(0, v), 3 | 1 << 16);
    }

    #[test]
    fn pmulhrsw_rounds_and_wraps() {
        let a = from_u16s([0x8000, 0x4000, 0xffff, 1, 0, 0, 0, 0]);
        let b = from_u16s([0x8000, 0x4000, 1, 0x4000, 0, 0, 0, 0]);
        let r = u16s(binary::<PMULHRSW>(a, b));
        assert_eq!(&r[..4], &[0x8000, 0x2000, 0, 1]);
    }

    #[test]
    fn psign_negates_zeroes_or_keeps() {
        let a = from_u32s([5, 5, 5, 0x8000_0000]);
        let b = from_u32s([u32::MAX, 0, 7, u32::MAX]);
        assert_eq!(
            u32s(binary::<PSIGND>(a, b)),
            [5u32.wrapping_neg(), 0, 5, 0x8000_0000]
        );
    }
}
