//! A wider binary floating-point type for the x87 transcendentals: a 128-bit significand
//! and an `i32` exponent, so intermediate results carry about twice the precision of the
//! 64-bit x87 significand and the final rounding to 80 bits (in
//! [`super::softfp80::round_pack`]) is almost always the correctly rounded one.
//!
//! Every operation truncates (error below one unit in the 128th bit); the algorithms in
//! [`super::transcendental`] keep the number of operations and the cancellation small,
//! so results are accurate to well over 100 bits.

use std::cmp::Ordering;

use super::softfp80::{self, Ctx};

/// `(-1)^neg * sig * 2^(exp - 127)`: the leading significand bit (bit 127) has weight
/// `2^exp`. Zero has `sig == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct W {
    /// Sign.
    pub neg: bool,
    /// Exponent of the leading bit.
    pub exp: i32,
    /// Significand, normalized (bit 127 set) unless zero.
    pub sig: u128,
}

/// The full 256-bit product of two 128-bit integers, as `(high, low)`.
pub fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    let (a1, a0) = (a >> 64, a & u64::MAX as u128);
    let (b1, b0) = (b >> 64, b & u64::MAX as u128);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 & u64::MAX as u128) + (p10 & u64::MAX as u128);
    let lo = (p00 & u64::MAX as u128) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

impl W {
    /// Zero.
    pub const ZERO: W = W {
        neg: false,
        exp: 0,
        sig: 0,
    };

    /// One.
    pub const ONE: W = W {
        neg: false,
        exp: 0,
        sig: 1 << 127,
    };

    /// `(-1)^neg * sig * 2^lsb_exp`, normalized.
    pub fn new(neg: bool, lsb_exp: i32, sig: u128) -> W {
        if sig == 0 {
            return W { neg, ..W::ZERO };
        }
        let z = sig.leading_zeros();
        W {
            neg,
            exp: lsb_exp + 127 - z as i32,
            sig: sig << z,
        }
    }

    /// A constant: the truncated 128-bit significand and the exponent of its leading bit.
    pub const fn constant(exp: i32, sig: u128) -> W {
        W {
            neg: false,
            exp,
            sig,
        }
    }

    /// The value of a finite 80-bit encoding (zero, denormal or normal; exact).
    pub fn from_f80(x: u128) -> W {
        let (neg, e, m) = softfp80::fields(x);
        let e = if e == 0 { 1 } else { e as i32 };
        W::new(neg, e - softfp80::BIAS - 63, m as u128)
    }

    /// A small integer.
    pub fn from_int(v: i64) -> W {
        W::new(v < 0, 0, v.unsigned_abs() as u128)
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.sig == 0
    }

    /// `-self`.
    pub fn negate(self) -> W {
        W {
            neg: !self.neg,
            ..self
        }
    }

    /// `|self|`.
    pub fn abs(self) -> W {
        W { neg: false, ..self }
    }

    /// `self * 2^k`.
    pub fn scale(self, k: i32) -> W {
        if self.is_zero() {
            return self;
        }
        W {
            exp: self.exp.saturating_add(k),
            ..self
        }
    }

    /// Compares magnitudes.
    pub fn cmp_abs(self, o: W) -> Ordering {
        match (self.is_zero(), o.is_zero()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => self.exp.cmp(&o.exp).then(self.sig.cmp(&o.sig)),
        }
    }

    /// `self * o` (truncated).
    pub fn times(self, o: W) -> W {
        let neg = self.neg != o.neg;
        if self.is_zero() || o.is_zero() {
            return W { neg, ..W::ZERO };
        }
        let (hi, lo) = mul_wide(self.sig, o.sig);
        // The product of two significands in [2^127, 2^128) is in [2^254, 2^256): keep
        // its leading 128 bits.
        if hi >> 127 == 0 {
            W {
                neg,
                exp: self.exp + o.exp,
                sig: hi << 1 | lo >> 127,
            }
        } else {
            W {
                neg,
                exp: self.exp + o.exp + 1,
                sig: hi,
            }
        }
    }

    /// `self / n` for a small positive integer `n` (truncated).
    pub fn div_small(self, n: u32) -> W {
        if self.is_zero() {
            return self;
        }
        let n = n as u128;
        // Two 64-bit steps: 128 quotient bits plus the leading bits of the rest.
        let q1 = self.sig / n;
        let r1 = self.sig % n;
        let q2 = (r1 << 64) / n;
        let r2 = (r1 << 64) % n;
        let q3 = (r2 << 64) / n;
        // q = sig * 2^128 / n as a 256-bit value (q1, q2, q3 are its 64-bit-aligned parts).
        let z = q1.leading_zeros();
        let hi = if z == 0 {
            q1
        } else {
            (q1 << z) | ((q2 << 64 | q3) >> (128 - z))
        };
        W::new(self.neg, self.exp - 127 - z as i32, hi)
    }

    /// `self / o` (truncated); `o` must not be zero (a zero divisor gives zero).
    pub fn quot(self, o: W) -> W {
        let neg = self.neg != o.neg;
        if self.is_zero() || o.is_zero() {
            return W { neg, ..W::ZERO };
        }
        // Restoring division of the significands, one quotient bit at a time.
        let (a, b) = (self.sig, o.sig);
        let mut exp = self.exp - o.exp;
        // The leading quotient bit: a/b in [1, 2), or 2a/b in [1, 2) (2a - b < b, so
        // the wrapping arithmetic is exact).
        let mut rem = if a >= b {
            a - b
        } else {
            exp -= 1;
            a.wrapping_shl(1).wrapping_sub(b)
        };
        let mut q: u128 = 1;
        for _ in 0..127 {
            let carry = rem >> 127;
            rem <<= 1;
            q <<= 1;
            if carry != 0 || rem >= b {
                rem = rem.wrapping_sub(b);
                q |= 1;
            }
        }
        W { neg, exp, sig: q }
    }

    /// `self + o` (truncated to 127 bits below the larger operand's leading bit).
    pub fn plus(self, o: W) -> W {
        if self.is_zero() {
            return o;
        }
        if o.is_zero() {
            return self;
        }
        let (hi, lo) = if self.cmp_abs(o) == Ordering::Less {
            (o, self)
        } else {
            (self, o)
        };
        // One bit of headroom for a carry.
        let big = hi.sig >> 1;
        let shift = (hi.exp - lo.exp) as u32 + 1;
        let small = if shift >= 128 { 0 } else { lo.sig >> shift };
        let sum = if hi.neg == lo.neg {
            big + small
        } else {
            big - small
        };
        W::new(hi.neg, hi.exp - 126, sum)
    }

    /// `self - o`.
    pub fn minus(self, o: W) -> W {
        self.plus(o.negate())
    }

    /// Rounds to an 80-bit encoding under `ctx` (its precision and rounding direction,
    /// range and flags as [`softfp80::round_pack`]). The value is treated as inexact,
    /// with the neglected part on the side `tail` says (`Less`: the true value is below
    /// `self`, `Greater`: above), which decides ties and directed roundings when the
    /// approximation happens to be representable.
    pub fn round(self, tail: Ordering, ctx: &mut Ctx) -> u128 {
        if self.is_zero() {
            return if self.neg { softfp80::SIGN } else { 0 };
        }
        // Towards or away from zero, in terms of magnitude.
        let up = (tail == Ordering::Greater) != self.neg;
        let base = self.sig & !1;
        let sig = if up { base | 1 } else { base - 1 };
        softfp80::round_pack(self.neg, self.exp - 127, sig, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_multiplication() {
        assert_eq!(mul_wide(u128::MAX, u128::MAX), (u128::MAX - 1, 1));
        assert_eq!(mul_wide(1 << 64, 1 << 64), (1, 0));
        let (hi, lo) = mul_wide(0x1234_5678_9abc_def0_1122_3344_5566_7788, 3);
        assert_eq!(hi, 0);
        assert_eq!(lo, 0x1234_5678_9abc_def0_1122_3344_5566_7788 * 3);
    }

    #[test]
    fn arithmetic() {
        let three = W::from_int(3);
        let third = W::ONE.quot(three);
        assert_eq!(third.exp, -2);
        assert_eq!(third.sig, 0xaaaa_aaaa_aaaa_aaaa_aaaa_aaaa_aaaa_aaaa);
        assert_eq!(W::ONE.div_small(3), third);
        let back = third.times(three);
        assert_eq!(back.exp, -1);
        assert_eq!(back.sig, u128::MAX);
        assert_eq!(W::from_int(5).minus(W::from_int(7)), W::from_int(-2));
        assert_eq!(W::from_int(-5).plus(W::from_int(7)), W::from_int(2));
        assert!(W::from_int(7).minus(W::from_int(7)).is_zero());
        assert_eq!(W::from_int(6).quot(W::from_int(-4)), W::new(true, -1, 3));
        assert_eq!(W::from_int(7).div_small(7), W::ONE);
    }

    #[test]
    fn rounding_follows_the_tail() {
        let mut ctx = Ctx::new(0x37f, false);
        assert_eq!(W::ONE.round(Ordering::Less, &mut ctx), softfp80::ONE);
        assert!(ctx.rounded_up);
        let mut ctx = Ctx::new(0x37f | 0x400, false); // round down
        let below = W::ONE.round(Ordering::Less, &mut ctx);
        assert_eq!(below, softfp80::pack(false, 0x3ffe, u64::MAX));
        let mut ctx = Ctx::new(0x37f | 0x800, false); // round up
        let above = W::ONE.round(Ordering::Greater, &mut ctx);
        assert_eq!(above, softfp80::ONE + 1);
    }
}
