//! Lazy arithmetic flags.
//!
//! ALU instructions do not compute CF, PF, AF, ZF, SF and OF. They record what they did
//! (the operation, its width, both operands and the result) in [`LazyFlags`]; a flag is
//! computed only when something reads it. Conditional instructions evaluate their
//! condition straight from the record ([`LazyFlags::condition`]), which for the common
//! case of CMP followed by Jcc is a single comparison of the recorded operands.
//!
//! Instructions whose flags are awkward to express lazily (shifts, rotates, multiplies,
//! bit tests) compute them eagerly and store them with [`LazyFlags::set_materialized`].

/// Carry flag bit in RFLAGS.
pub const CF: u64 = 1 << 0;
/// Parity flag bit.
pub const PF: u64 = 1 << 2;
/// Auxiliary-carry flag bit.
pub const AF: u64 = 1 << 4;
/// Zero flag bit.
pub const ZF: u64 = 1 << 6;
/// Sign flag bit.
pub const SF: u64 = 1 << 7;
/// Trap flag bit.
pub const TF: u64 = 1 << 8;
/// Interrupt-enable flag bit.
pub const IF: u64 = 1 << 9;
/// Direction flag bit.
pub const DF: u64 = 1 << 10;
/// Overflow flag bit.
pub const OF: u64 = 1 << 11;
/// Alignment-check flag bit.
pub const AC: u64 = 1 << 18;
/// CPUID-available flag bit.
pub const ID: u64 = 1 << 21;
/// The six arithmetic status flags, the ones [`LazyFlags`] tracks.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// The operation whose flags are recorded. Values are multiplied by 4 and added to the
/// log2 of the operand width to form a [`LazyFlags`] kind, so one match covers both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlagOp {
    /// ADD: `res = a + b`.
    Add = 0,
    /// ADC: `res = a + b + carry-in` (carry-in is implicit in `res`).
    Adc = 1,
    /// SUB, CMP, NEG (`a = 0`): `res = a - b`.
    Sub = 2,
    /// SBB: `res = a - b - borrow-in`.
    Sbb = 3,
    /// AND, OR, XOR, TEST: CF = OF = 0, AF = 0.
    Logic = 4,
    /// INC: `res = a + 1`; `b` holds the preserved CF.
    Inc = 5,
    /// DEC: `res = a - 1`; `b` holds the preserved CF.
    Dec = 6,
    /// Flags already computed: `a` holds the six flag bits.
    Materialized = 7,
}

/// The recorded flag state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LazyFlags {
    /// `FlagOp * 4 + log2(width in bytes)`.
    pub kind: u8,
    /// The result of the operation (not masked to the width).
    pub res: u64,
    /// First operand (or the materialized flags).
    pub a: u64,
    /// Second operand (or the preserved CF for INC/DEC).
    pub b: u64,
}

impl Default for LazyFlags {
    fn default() -> Self {
        LazyFlags {
            kind: (FlagOp::Materialized as u8) << 2,
            res: 0,
            a: 0,
            b: 0,
        }
    }
}

/// `log2` of a width in bytes (1, 2, 4, 8).
#[inline(always)]
pub const fn width_log2(size: usize) -> u8 {
    match size {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => 3,
    }
}

#[inline(always)]
const fn sign_shift(kind: u8) -> u32 {
    (8u32 << (kind & 3)) - 1
}

#[inline(always)]
const fn width_mask(kind: u8) -> u64 {
    u64::MAX >> (63 - sign_shift(kind))
}

/// Whether the low byte of `v` has even parity (PF's definition).
#[inline(always)]
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones() % 2 == 0
}

impl LazyFlags {
    /// Records an operation of `SIZE` bytes.
    #[inline(always)]
    pub fn set<const SIZE: usize>(&mut self, op: FlagOp, a: u64, b: u64, res: u64) {
        self.kind = ((op as u8) << 2) | width_log2(SIZE);
        self.a = a;
        self.b = b;
        self.res = res;
    }

    /// Stores already-computed flags (only the [`ARITH`] bits of `flags` are kept).
    #[inline(always)]
    pub fn set_materialized(&mut self, flags: u64) {
        self.kind = (FlagOp::Materialized as u8) << 2;
        self.a = flags & ARITH;
    }

    /// The operation recorded.
    #[inline(always)]
    pub fn op(&self) -> u8 {
        self.kind >> 2
    }

    /// CF alone, cheaper than computing every flag.
    #[inline]
    pub fn cf(&self) -> bool {
        let (a, b, res) = (self.a, self.b, self.res);
        let s = sign_shift(self.kind);
        match self.op() {
            0 | 1 => ((a & b) | ((a ^ b) & !res)) >> s & 1 != 0,
            2 | 3 => ((!a & b) | (!(a ^ b) & res)) >> s & 1 != 0,
            4 => false,
            5 | 6 => b & 1 != 0,
            _ => a & CF != 0,
        }
    }

    /// ZF alone.
    #[inline(always)]
    pub fn zf(&self) -> bool {
        if self.op() == FlagOp::Materialized as u8 {
            self.a & ZF != 0
        } else {
            self.res & width_mask(self.kind) == 0
        }
    }

    /// SF alone.
    #[inline(always)]
    pub fn sf(&self) -> bool {
        if self.op() == FlagOp::Materialized as u8 {
            self.a & SF != 0
        } else {
            (self.res >> sign_shift(self.kind)) & 1 != 0
        }
    }

    /// OF alone.
    #[inline]
    pub fn of(&self) -> bool {
        let (a, b, res) = (self.a, self.b, self.res);
        let s = sign_shift(self.kind);
        let m = width_mask(self.kind);
        match self.op() {
            0 | 1 => ((a ^ res) & (b ^ res)) >> s & 1 != 0,
            2 | 3 => ((a ^ b) & (a ^ res)) >> s & 1 != 0,
            4 => false,
            5 => res & m == 1 << s,
            6 => a & m == 1 << s,
            _ => a & OF != 0,
        }
    }

    /// All six arithmetic flags as RFLAGS bits.
    pub fn compute(&self) -> u64 {
        if self.op() == FlagOp::Materialized as u8 {
            return self.a & ARITH;
        }
        let mut f = 0;
        if self.cf() {
            f |= CF;
        }
        if parity(self.res) {
            f |= PF;
        }
        // INC/DEC keep the preserved CF (0 or 1) in `b`, whose bit 4 is clear, so the
        // same carry-into-bit-4 formula holds for them.
        if self.op() != FlagOp::Logic as u8 && (self.a ^ self.b ^ self.res) & 0x10 != 0 {
            f |= AF;
        }
        if self.zf() {
            f |= ZF;
        }
        if self.sf() {
            f |= SF;
        }
        if self.of() {
            f |= OF;
        }
        f
    }

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc opcodes:
    /// 0 = O, 1 = NO, 2 = B, 3 = AE, 4 = E, 5 = NE, 6 = BE, 7 = A, 8 = S, 9 = NS, 10 = P,
    /// 11 = NP, 12 = L, 13 = GE, 14 = LE, 15 = G).
    #[inline(always)]
    pub fn condition(&self, cc: u8) -> bool {
        let even = self.condition_even(cc & !1);
        even ^ (cc & 1 != 0)
    }

    #[inline(always)]
    fn condition_even(&self, cc: u8) -> bool {
        // Fast paths straight from the recorded operands for the common producers.
        let op = self.op();
        if op == FlagOp::Sub as u8 {
            let m = width_mask(self.kind);
            let s = 63 - sign_shift(self.kind);
            let (a, b) = (self.a & m, self.b & m);
            let (sa, sb) = (((a << s) as i64) >> s, ((b << s) as i64) >> s);
            match cc {
                2 => return a < b,
                4 => return a == b,
                6 => return a <= b,
                12 => return sa < sb,
                14 => return sa <= sb,
                _ => {}
            }
        } else if op == FlagOp::Logic as u8 {
            match cc {
                0 => return false,
                2 => return false,
                4 | 6 => return self.zf(),
                8 | 12 => return self.sf(),
                14 => return self.zf() || self.sf(),
                _ => {}
            }
        }
        match cc {
            0 => self.of(),
            2 => self.cf(),
            4 => self.zf(),
            6 => self.cf() || self.zf(),
            8 => self.sf(),
            10 => parity(self.res_or_flags_for_parity()),
            12 => self.sf() != self.of(),
            _ => self.zf() || (self.sf() != self.of()),
        }
    }

    #[inline]
    fn res_or_flags_for_parity(&self) -> u64 {
        if self.op() == FlagOp::Materialized as u8 {
            // Fake a byte whose parity is PF: 0 has even parity, 1 odd.
            if self.a & PF != 0 {
                0
            } else {
                1
            }
        } else {
            self.res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_flags_at_byte_width() {
        let mut f = LazyFlags::default();
        f.set::<1>(FlagOp::Add, 0xff, 0x01, 0x100);
        assert_eq!(f.compute(), CF | PF | AF | ZF);
        f.set::<1>(FlagOp::Add, 0x7f, 0x01, 0x80);
        assert_eq!(f.compute(), AF | SF | OF);
    }

    #[test]
    fn sub_flags_and_fast_conditions_agree() {
        let samples = [
            0u64,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x7fff_ffff,
            0x8000_0000,
            u64::MAX,
            1 << 63,
        ];
        for &a in &samples {
            for &b in &samples {
                let mut f = LazyFlags::default();
                f.set::<4>(FlagOp::Sub, a, b, a.wrapping_sub(b));
                let mut m = LazyFlags::default();
                m.set_materialized(f.compute());
                for cc in 0..16 {
                    assert_eq!(
                        f.condition(cc),
                        m.condition(cc),
                        "a={a:#x} b={b:#x} cc={cc}"
                    );
                }
            }
        }
    }

    #[test]
    fn inc_keeps_carry_and_sets_overflow_at_sign_boundary() {
        let mut f = LazyFlags::default();
        f.set::<2>(FlagOp::Inc, 0x7fff, 1, 0x8000);
        assert_eq!(f.compute(), CF | AF | SF | OF | PF);
        f.set::<2>(FlagOp::Dec, 0x8000, 0, 0x7fff);
        assert_eq!(f.compute() & (OF | CF | SF), OF);
    }
}
