//! SSE4.2 text processing: PCMPESTRI, PCMPESTRM, PCMPISTRI, PCMPISTRM (packed string
//! compares with explicit or implicit lengths) and CRC32 (CRC-32C, Castagnoli).

use iced_x86::Code;

use super::lanes::{from_u16s, from_u8s, u16s, u8s};
use super::{load128, xmm};
use crate::cpu::{reg, Cpu};
use crate::flags;
use crate::insn::{Insn, OpEntry, OpTable, Step};

/// The outcome of a string compare before it is written anywhere.
struct Compare {
    /// IntRes2: one bit per element.
    result: u16,
    /// Elements per register (16 bytes or 8 words).
    elements: u32,
    /// Length of the first operand (XMM `dst`).
    len_a: u32,
    /// Length of the second operand (XMM or memory).
    len_b: u32,
}

/// Elements of `v` as signed or unsigned integers, 16 bytes or 8 words.
fn elements(v: u128, words: bool, signed: bool) -> [i32; 16] {
    let mut out = [0i32; 16];
    if words {
        for (k, w) in u16s(v).iter().enumerate() {
            out[k] = if signed { *w as i16 as i32 } else { *w as i32 };
        }
    } else {
        for (k, b) in u8s(v).iter().enumerate() {
            out[k] = if signed { *b as i8 as i32 } else { *b as i32 };
        }
    }
    out
}

/// Implicit length: the index of the first zero element.
fn implicit_length(e: &[i32; 16], n: u32) -> u32 {
    (0..n).find(|&k| e[k as usize] == 0).unwrap_or(n)
}

/// Explicit length: the absolute value of the register, saturated to `n`.
fn explicit_length(raw: u64, wide: bool, n: u32) -> u32 {
    let magnitude = if wide {
        (raw as i64).unsigned_abs()
    } else {
        (raw as u32 as i32).unsigned_abs() as u64
    };
    magnitude.min(n as u64) as u32
}

/// The compare itself, given both operands and their lengths.
fn compare(a: u128, b: u128, imm: u8, len: Option<(u32, u32)>) -> Compare {
    let words = imm & 1 != 0;
    let signed = imm & 2 != 0;
    let n: u32 = if words { 8 } else { 16 };
    let ea = elements(a, words, signed);
    let eb = elements(b, words, signed);
    let (len_a, len_b) = len.unwrap_or_else(|| (implicit_length(&ea, n), implicit_length(&eb, n)));
    let aggregation = (imm >> 2) & 3;
    // BoolRes[i][j] with the forcing rules for invalid (past-the-length) elements.
    let bool_res = |i: u32, j: u32| -> bool {
        let a_valid = i < len_a;
        let b_valid = j < len_b;
        match (a_valid, b_valid) {
            (true, true) => {
                let (x, y) = (ea[i as usize], eb[j as usize]);
                match aggregation {
                    // Ranges: even elements of the first operand are lower bounds, odd
                    // ones upper bounds.
                    1 => {
                        if i % 2 == 0 {
                            y >= x
                        } else {
                            y <= x
                        }
                    }
                    _ => x == y,
                }
            }
            (false, false) => aggregation >= 2,
            (false, true) => aggregation == 3,
            (true, false) => false,
        }
    };
    let mut int_res1: u16 = 0;
    for j in 0..n {
        let bit = match aggregation {
            0 => (0..n).any(|i| bool_res(i, j)),
            1 => (0..n)
                .step_by(2)
                .any(|i| bool_res(i, j) && bool_res(i + 1, j)),
            2 => bool_res(j, j),
            _ => (0..n - j).all(|i| bool_res(i, j + i)),
        };
        int_res1 |= (bit as u16) << j;
    }
    let all: u16 = if n == 16 { 0xffff } else { 0xff };
    let valid_b: u16 = ((1u32 << len_b) - 1) as u16;
    let result = match (imm >> 4) & 3 {
        1 => !int_res1 & all,
        3 => (int_res1 ^ valid_b) & all,
        _ => int_res1,
    };
    Compare {
        result,
        elements: n,
        len_a,
        len_b,
    }
}

/// The second operand: XMM `src` or 16 bytes of memory (no alignment rule for these
/// instructions).
fn second_operand<const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Result<u128, crate::insn::Trap> {
    if MEM {
        load128::<false>(cpu, i)
    } else {
        Ok(xmm(cpu, i.src))
    }
}

/// Runs the compare of PCMPxSTRx: `EXPLICIT` lengths come from EAX/EDX (RAX/RDX when
/// `WIDE`), and sets the arithmetic flags.
fn run<const EXPLICIT: bool, const WIDE: bool, const MEM: bool>(
    cpu: &mut Cpu,
    i: &Insn,
) -> Result<Compare, crate::insn::Trap> {
    let b = second_operand::<MEM>(cpu, i)?;
    let a = xmm(cpu, i.dst);
    let imm = i.imm as u8;
    let n = if imm & 1 != 0 { 8 } else { 16 };
    let len = if EXPLICIT {
        Some((
            explicit_length(cpu.regs[reg::RAX as usize], WIDE, n),
            explicit_length(cpu.regs[reg::RDX as usize], WIDE, n),
        ))
    } else {
        None
    };
    let c = compare(a, b, imm, len);
    let mut f = 0;
    if c.result != 0 {
        f |= flags::CF;
    }
    if c.len_b < c.elements {
        f |= flags::ZF;
    }
    if c.len_a < c.elements {
        f |= flags::SF;
    }
    if c.result & 1 != 0 {
        f |= flags::OF;
    }
    cpu.flags.set_materialized(f);
    Ok(c)
}

/// PCMPESTRI/PCMPISTRI: ECX = index of the lowest (imm bit 6 clear) or highest set
/// result bit, or the element count when none is set.
fn pcmpstri<const EXPLICIT: bool, const WIDE: bool, const MEM: bool>(
    cpu: &mut Cpu,
    i: &Insn,
) -> Step {
    let c = run::<EXPLICIT, WIDE, MEM>(cpu, i)?;
    let index = if c.result == 0 {
        c.elements
    } else if i.imm & 0x40 != 0 {
        15 - c.result.leading_zeros()
    } else {
        c.result.trailing_zeros()
    };
    cpu.set_reg::<4>(reg::RCX, index as u64);
    Ok(())
}

/// PCMPESTRM/PCMPISTRM: XMM0 = the result as a bit mask (imm bit 6 clear) or expanded
/// to a byte or word mask.
fn pcmpstrm<const EXPLICIT: bool, const WIDE: bool, const MEM: bool>(
    cpu: &mut Cpu,
    i: &Insn,
) -> Step {
    let c = run::<EXPLICIT, WIDE, MEM>(cpu, i)?;
    let r = if i.imm & 0x40 == 0 {
        c.result as u128
    } else if c.elements == 8 {
        from_u16s(std::array::from_fn(|k| {
            if c.result & (1 << k) != 0 {
                0xffff
            } else {
                0
            }
        }))
    } else {
        from_u8s(std::array::from_fn(|k| {
            if c.result & (1 << k) != 0 {
                0xff
            } else {
                0
            }
        }))
    };
    cpu.xmm[0] = r;
    Ok(())
}

/// The reflected CRC-32C table (polynomial 0x1EDC6F41, reflected 0x82F63B78).
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// Accumulates the low `N` bytes of `data` into `crc`, least significant byte first.
fn crc32c<const N: usize>(mut crc: u32, data: u64) -> u32 {
    for k in 0..N {
        let byte = (data >> (8 * k)) as u8;
        crc = (crc >> 8) ^ CRC32C_TABLE[((crc as u8) ^ byte) as usize];
    }
    crc
}

/// CRC32 r32/r64, r/m`N`: the destination's low 32 bits accumulate; a 64-bit
/// destination has its high half cleared.
fn crc32<const N: usize, const MEM: bool>(cpu: &mut Cpu, i: &Insn) -> Step {
    let data = if MEM {
        super::super::load::<N>(cpu, i)?
    } else {
        cpu.reg::<N>(i.src)
    };
    let crc = crc32c::<N>(cpu.reg::<4>(i.dst) as u32, data);
    cpu.set_reg::<4>(i.dst, crc as u64);
    Ok(())
}

pub(super) fn register(t: &mut OpTable) {
    t.set(
        Code::Pcmpestri_xmm_xmmm128_imm8,
        OpEntry::rm(
            pcmpstri::<true, false, false>,
            pcmpstri::<true, false, true>,
        ),
    );
    t.set(
        Code::Pcmpestri64_xmm_xmmm128_imm8,
        OpEntry::rm(pcmpstri::<true, true, false>, pcmpstri::<true, true, true>),
    );
    t.set(
        Code::Pcmpestrm_xmm_xmmm128_imm8,
        OpEntry::rm(
            pcmpstrm::<true, false, false>,
            pcmpstrm::<true, false, true>,
        ),
    );
    t.set(
        Code::Pcmpestrm64_xmm_xmmm128_imm8,
        OpEntry::rm(pcmpstrm::<true, true, false>, pcmpstrm::<true, true, true>),
    );
    t.set(
        Code::Pcmpistri_xmm_xmmm128_imm8,
        OpEntry::rm(
            pcmpstri::<false, false, false>,
            pcmpstri::<false, false, true>,
        ),
    );
    t.set(
        Code::Pcmpistrm_xmm_xmmm128_imm8,
        OpEntry::rm(
            pcmpstrm::<false, false, false>,
            pcmpstrm::<false, false, true>,
        ),
    );
    t.set(
        Code::Crc32_r32_rm8,
        OpEntry::rm(crc32::<1, false>, crc32::<1, true>),
    );
    t.set(
        Code::Crc32_r64_rm8,
        OpEntry::rm(crc32::<1, false>, crc32::<1, true>),
    );
    t.set(
        Code::Crc32_r32_rm16,
        OpEntry::rm(crc32::<2, false>, crc32::<2, true>),
    );
    t.set(
        Code::Crc32_r32_rm32,
        OpEntry::rm(crc32::<4, false>, crc32::<4, true>),
    );
    t.set(
        Code::Crc32_r64_rm64,
        OpEntry::rm(crc32::<8, false>, crc32::<8, true>),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &[u8]) -> u128 {
        let mut b = [0u8; 16];
        b[..s.len()].copy_from_slice(s);
        u128::from_le_bytes(b)
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C("123456789") = 0xE3069283 (init and final xor 0xFFFFFFFF).
        let mut crc = u32::MAX;
        for &b in b"123456789" {
            crc = crc32c::<1>(crc, b as u64);
        }
        assert_eq!(!crc, 0xe306_9283);
    }

    #[test]
    fn equal_ordered_finds_a_substring() {
        // Needle "lo" in haystack "hello world": first match at index 3.
        let c = compare(bytes(b"lo"), bytes(b"hello world"), 0x0c, None);
        assert_eq!(c.result.trailing_zeros(), 3);
        assert_eq!((c.len_a, c.len_b), (2, 11));
    }

    #[test]
    fn ranges_with_negative_polarity_find_the_first_non_letter() {
        // Ranges "az": bytes in 'a'..='z' match; negated, the first non-letter is at 5.
        let c = compare(bytes(b"az"), bytes(b"hello world"), 0x14, None);
        assert_eq!(c.result.trailing_zeros(), 5);
    }

    #[test]
    fn masked_negative_polarity_only_flips_valid_elements() {
        let c = compare(bytes(b"a"), bytes(b"ab"), 0x30, None);
        // Equal any: b[0] matches; masked negation flips only elements 0 and 1.
        assert_eq!(c.result, 0b10);
        let c = compare(bytes(b"a"), bytes(b"ab"), 0x10, None);
        assert_eq!(c.result, 0xfffe);
    }

    #[test]
    fn explicit_lengths_saturate_and_take_absolute_values() {
        assert_eq!(explicit_length(0xffff_fffb, false, 16), 5);
        assert_eq!(explicit_length(0x8000_0000, false, 16), 16);
        assert_eq!(explicit_length(u64::MAX, true, 8), 1);
        assert_eq!(explicit_length(1 << 40, false, 16), 0);
    }
}
