//! The x87 transcendentals: FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X, FYL2XP1.
//!
//! Results are computed in [`W`] (128-bit significands: power series evaluated after an
//! argument reduction that keeps them short and free of cancellation) and rounded once
//! to 64 bits in the control word's rounding direction (precision control does not
//! apply to these instructions). They are not bit-exact with any one CPU, but within an
//! ulp of the exact value of what the hardware computes, which is:
//!
//! * FSIN/FCOS/FSINCOS/FPTAN reduce their argument modulo π/2 with the 66-bit
//!   approximation of π the x87 has always used (so results near multiples of π differ
//!   from the true function exactly as the hardware's do), then evaluate the function
//!   of the reduced argument accurately. Arguments of magnitude 2^63 or more are left
//!   unchanged with C2 set.
//! * The others are accurate to about half an ulp on the hardware.
//!
//! Special operands (zeros, infinities, NaNs, unsupported encodings) follow the tables
//! of the manual and are exact; a denormal operand raises DE (and the result, often
//! tiny, goes through the usual underflow rules).

use std::cmp::Ordering;

#[cfg(test)]
use super::softfp80::INDEFINITE;
use super::softfp80::{self as sf, Class, Ctx, SIGN};
use super::wide::W;
#[cfg(test)]
use crate::exec::sse::softfp::IE;
use crate::exec::sse::softfp::{DE, PE, UE, ZE};

/// π, truncated to 128 bits.
const PI: W = W::constant(1, 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1);
/// π/2.
const PI_2: W = W::constant(0, 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1);
/// π/4.
const PI_4: W = W::constant(-1, 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1);
/// 3π/4.
const PI3_4: W = W::constant(1, 0x96cb_e3f9_990e_91a7_9394_c9e8_a0a5_159c);
/// ln 2.
const LN2: W = W::constant(-1, 0xb172_17f7_d1cf_79ab_c9e3_b398_03f2_f6af);
/// log2(e) = 1/ln 2.
const LOG2E: W = W::constant(0, 0xb8aa_3b29_5c17_f0bb_be87_fed0_691d_3e88);
/// √2 (as a threshold only).
const SQRT2: W = W::constant(0, 0xb504_f333_f9de_6484_597d_89b3_754a_be9f);
/// 13/32, where atan switches to the π/4 identity.
const ATAN_SPLIT: W = W::constant(-2, 0xd000_0000_0000_0000_0000_0000_0000_0000);

/// The hardware's π/2 for argument reduction: π rounded down to 66 bits, halved, as a
/// multiple of 2^-65.
const PIO2_66: u128 = 0x3_243f_6a88_85a3_08d3;

/// Terms smaller than 2^-`NEGLIGIBLE` of the sum end a series (below what an addition
/// to the sum would keep, so the first neglected term gives the direction of the error).
const NEGLIGIBLE: i32 = 125;

/// The tail direction of a constant truncated to 128 bits: the true value is above.
const TRUNCATED: Ordering = Ordering::Greater;

/// Sums a series from `first`, each term made from the previous by `next(term, k)`
/// (k = 1, 2, ...), until a term is negligible. Returns the sum and the sign of the
/// first neglected term (where the true value lies relative to the sum).
fn series(first: W, mut next: impl FnMut(W, u32) -> W) -> (W, Ordering) {
    let mut sum = first;
    let mut term = first;
    for k in 1..400 {
        term = next(term, k);
        if term.is_zero() {
            return (sum, TRUNCATED);
        }
        if term.exp < sum.exp - NEGLIGIBLE {
            return (
                sum,
                if term.neg {
                    Ordering::Less
                } else {
                    Ordering::Greater
                },
            );
        }
        sum = sum.plus(term);
    }
    (sum, TRUNCATED)
}

/// sin(r) for |r| <= π/4 (a little more with the hardware's π).
fn sin_w(r: W) -> (W, Ordering) {
    let r2 = r.times(r).negate();
    series(r, |t, k| t.times(r2).div_small((2 * k) * (2 * k + 1)))
}

/// cos(r) for |r| <= π/4.
fn cos_w(r: W) -> (W, Ordering) {
    let r2 = r.times(r).negate();
    series(W::ONE, |t, k| t.times(r2).div_small((2 * k - 1) * (2 * k)))
}

/// atan(t) for |t| <= 0.43: the alternating odd series.
fn atan_series(t: W) -> (W, Ordering) {
    let t2 = t.times(t).negate();
    let mut power = t;
    let mut sum = t;
    for k in 1..400u32 {
        power = power.times(t2);
        let term = power.div_small(2 * k + 1);
        if term.is_zero() {
            break;
        }
        if term.exp < sum.exp - NEGLIGIBLE {
            return (
                sum,
                if term.neg {
                    Ordering::Less
                } else {
                    Ordering::Greater
                },
            );
        }
        sum = sum.plus(term);
    }
    (sum, TRUNCATED)
}

/// atanh(s) for |s| <= 0.18: s + s^3/3 + s^5/5 + ...
fn atanh_series(s: W) -> W {
    let s2 = s.times(s);
    let mut power = s;
    let mut sum = s;
    for k in 1..400u32 {
        power = power.times(s2);
        let term = power.div_small(2 * k + 1);
        if term.is_zero() || term.exp < sum.exp - NEGLIGIBLE {
            break;
        }
        sum = sum.plus(term);
    }
    sum
}

/// atan(z) for 0 <= z <= 1.
fn atan01(z: W) -> (W, Ordering) {
    if z.cmp_abs(ATAN_SPLIT) != Ordering::Greater {
        return atan_series(z);
    }
    // atan(z) = π/4 + atan((z - 1) / (z + 1)), the argument in [-0.43, 0].
    let t = z.minus(W::ONE).quot(z.plus(W::ONE));
    (PI_4.plus(atan_series(t).0), TRUNCATED)
}

/// e^t - 1 for |t| <= 1.
fn expm1_w(t: W) -> (W, Ordering) {
    series(t, |term, k| term.times(t).div_small(k + 1))
}

/// log2(x) for finite x > 0.
fn log2_w(x: W) -> W {
    // x = m * 2^e with m in [√2/2, √2).
    let mut e = x.exp;
    let mut m = W { exp: 0, ..x };
    if m.cmp_abs(SQRT2) == Ordering::Greater {
        m = m.scale(-1);
        e += 1;
    }
    let s = m.minus(W::ONE).quot(m.plus(W::ONE));
    let ln_m = atanh_series(s).scale(1);
    W::from_int(e as i64).plus(ln_m.times(LOG2E))
}

/// log2(1 + x) for finite x > -1.
fn log2p1_w(x: W) -> W {
    let small = x.exp < -2 || (x.exp == -2 && !x.neg);
    if !small {
        return log2_w(W::ONE.plus(x));
    }
    // |x| < 0.5 (or -0.25 < x): ln(1 + x) = 2 atanh(x / (2 + x)), no cancellation.
    let s = x.quot(W::from_int(2).plus(x));
    atanh_series(s).scale(1).times(LOG2E)
}

/// The hardware's argument reduction of |x| < 2^63: `(k, r)` with |x| = k·P + r,
/// |r| <= P/2, P the 66-bit π/2. Exact.
fn reduce(x: W) -> (u64, W) {
    let x = x.abs();
    if x.exp < -1 {
        return (0, x);
    }
    // |x| in units of 2^-65 (x has at most 64 significant bits, so nothing is lost).
    let units = x.sig >> (62 - x.exp);
    let q = units / PIO2_66;
    let r = units % PIO2_66;
    if r << 1 > PIO2_66 {
        (q as u64 + 1, W::new(true, -65, PIO2_66 - r))
    } else {
        (q as u64, W::new(false, -65, r))
    }
}

/// What a trigonometric instruction does with its operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrigInput {
    /// |x| >= 2^63: the operand stays, C2 is set.
    OutOfRange,
    /// The result is this (NaN, indefinite, or exact for a zero), flags in the context.
    Special(u128),
    /// A finite non-zero operand, to be reduced.
    Finite(W),
}

/// Classifies the operand of FSIN/FCOS/FSINCOS/FPTAN: NaNs, unsupported encodings and
/// infinities (IE), the range limit, DE for a denormal.
fn trig_input(x: u128, ctx: &mut Ctx) -> TrigInput {
    ctx.rounded_up = false;
    if let Some(r) = sf::nan1(x, ctx) {
        return TrigInput::Special(r);
    }
    match sf::classify(x) {
        Class::Inf => TrigInput::Special(ctx.invalid()),
        Class::Zero => TrigInput::Special(x),
        c => {
            let w = W::from_f80(x);
            if w.exp >= 63 {
                return TrigInput::OutOfRange;
            }
            if c == Class::Denormal {
                ctx.flags |= DE;
            }
            TrigInput::Finite(w)
        }
    }
}

/// sin and cos of a finite non-zero value (with tails), through the hardware's reduction.
fn sin_cos_finite(x: W) -> ((W, Ordering), (W, Ordering)) {
    let (k, r) = reduce(x);
    let s = sin_w(r);
    let c = cos_w(r);
    let neg = |(w, t): (W, Ordering)| (w.negate(), t.reverse());
    let (sin, cos) = match k & 3 {
        0 => (s, c),
        1 => (c, neg(s)),
        2 => (neg(s), neg(c)),
        _ => (neg(c), s),
    };
    // sin is odd, cos even.
    let sin = if x.neg { neg(sin) } else { sin };
    (sin, cos)
}

/// FSIN: `None` if the operand is out of range (C2).
pub fn sin(x: u128, ctx: &mut Ctx) -> Option<u128> {
    match trig_input(x, ctx) {
        TrigInput::OutOfRange => None,
        TrigInput::Special(r) => Some(r),
        TrigInput::Finite(w) => {
            let ((s, t), _) = sin_cos_finite(w);
            Some(s.round(t, ctx))
        }
    }
}

/// FCOS: `None` if the operand is out of range (C2).
pub fn cos(x: u128, ctx: &mut Ctx) -> Option<u128> {
    match trig_input(x, ctx) {
        TrigInput::OutOfRange => None,
        TrigInput::Special(r) => Some(if sf::classify(x) == Class::Zero {
            sf::ONE
        } else {
            r
        }),
        TrigInput::Finite(w) => {
            let (_, (c, t)) = sin_cos_finite(w);
            Some(c.round(t, ctx))
        }
    }
}

/// FSINCOS: `(sin, cos)`, or `None` if the operand is out of range (C2). A NaN result
/// (an invalid or NaN operand) is both values.
pub fn sin_cos(x: u128, ctx: &mut Ctx) -> Option<(u128, u128)> {
    match trig_input(x, ctx) {
        TrigInput::OutOfRange => None,
        TrigInput::Special(r) => Some(if sf::classify(x) == Class::Zero {
            (x, sf::ONE)
        } else {
            (r, r)
        }),
        TrigInput::Finite(w) => {
            let ((s, ts), (c, tc)) = sin_cos_finite(w);
            // C1 reports the rounding of the sine (as the hardware does).
            let mut cc = *ctx;
            let cos = c.round(tc, &mut cc);
            let sin = s.round(ts, ctx);
            ctx.flags |= cc.flags;
            Some((sin, cos))
        }
    }
}

/// FPTAN: the tangent, or `None` if the operand is out of range (C2).
pub fn tan(x: u128, ctx: &mut Ctx) -> Option<u128> {
    match trig_input(x, ctx) {
        TrigInput::OutOfRange => None,
        TrigInput::Special(r) => Some(r),
        // A denormal, or a tiny power of two: the operand itself (see `tan_tiny`).
        TrigInput::Finite(w)
            if (x as u64) >> 63 == 0 || (w.exp < -64 && x as u64 == sf::INT_BIT) =>
        {
            Some(tan_tiny(x, ctx))
        }
        TrigInput::Finite(w) => {
            let (k, r) = reduce(w);
            let (s, ts) = sin_w(r);
            let (c, _) = cos_w(r);
            let (t, tail) = if k & 1 == 0 {
                // Where the quotient is r itself (|r| < 2^-63), the hardware rounds as if
                // tan r were below r, like sin r (tan r = r + r^3/3 + ... is above):
                // follow it.
                (s.quot(c), ts)
            } else {
                (c.quot(s).negate(), TRUNCATED)
            };
            let (t, tail) = if w.neg {
                (t.negate(), tail.reverse())
            } else {
                (t, tail)
            };
            Some(t.round(tail, ctx))
        }
    }
}

/// FPTAN of a denormal or of a tiny power of two, as the hardware does it: the operand
/// itself, inexact (PE, and UE when tiny) but not rounded in any direction (C1 clear).
/// Other tiny operands round as if tan x were just below x (see [`tan`]).
fn tan_tiny(x: u128, ctx: &mut Ctx) -> u128 {
    let (negative, e, m) = sf::fields(x);
    let e = if e == 0 { 1 } else { e as i32 };
    inexact_as_is(negative, e - sf::BIAS - 63, m as u128, ctx)
}

/// `(-1)^negative * sig * 2^exp`, a value the hardware computes exactly but reports as
/// inexact: rounded as it needs (C1 accordingly), PE raised, and UE too when the result
/// is tiny (with underflow masked; unmasked, the wrapped result reports UE anyway).
fn inexact_as_is(negative: bool, exp: i32, sig: u128, ctx: &mut Ctx) -> u128 {
    let mut c = Ctx { prec: 64, ..*ctx };
    let r = sf::round_pack(negative, exp, sig, &mut c);
    ctx.flags |= c.flags | PE;
    ctx.rounded_up = c.rounded_up;
    let (_, e, m) = sf::fields(r);
    if ctx.masked(UE) && e == 0 && m != 0 {
        ctx.flags |= UE;
    }
    r
}

/// A table result: a constant of the given sign, rounded in the context's direction.
fn constant(c: W, negative: bool, ctx: &mut Ctx) -> u128 {
    let (c, tail) = if negative {
        (c.negate(), TRUNCATED.reverse())
    } else {
        (c, TRUNCATED)
    };
    c.round(tail, ctx)
}

/// FPATAN: atan2(y, x) (y = ST(1), x = ST(0)), in (-π, π].
pub fn atan2(y: u128, x: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = sf::nan2(y, x, ctx) {
        return r;
    }
    sf::check_denormal2(y, x, ctx);
    let (cy, cx) = (sf::classify(y), sf::classify(x));
    let (ny, nx) = (sf::is_negative(y), sf::is_negative(x));
    match (cy, cx) {
        (Class::Inf, Class::Inf) => {
            return constant(if nx { PI3_4 } else { PI_4 }, ny, ctx);
        }
        (Class::Inf, _) | (_, Class::Zero) if cy != Class::Zero => {
            return constant(PI_2, ny, ctx);
        }
        (_, Class::Inf) | (Class::Zero, _) => {
            return if nx {
                constant(PI, ny, ctx)
            } else {
                sf::signed_zero(ny)
            };
        }
        _ => {}
    }
    let (wy, wx) = (W::from_f80(y).abs(), W::from_f80(x).abs());
    let (mut a, mut tail) = if wy.cmp_abs(wx) != Ordering::Greater {
        atan01(wy.quot(wx))
    } else {
        (PI_2.minus(atan01(wx.quot(wy)).0), TRUNCATED)
    };
    if nx {
        a = PI.minus(a);
        tail = TRUNCATED;
    }
    if ny {
        a = a.negate();
        tail = tail.reverse();
    }
    a.round(tail, ctx)
}

/// F2XM1: 2^x - 1 (defined for -1 <= x <= 1; other finite values get the same formula).
pub fn f2xm1(x: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = sf::nan1(x, ctx) {
        return r;
    }
    match sf::classify(x) {
        Class::Zero => return x,
        Class::Inf => {
            return if sf::is_negative(x) {
                sf::ONE | SIGN
            } else {
                x
            };
        }
        Class::Denormal => ctx.flags |= DE,
        _ => {}
    }
    let w = W::from_f80(x);
    if w.exp < 0 || (w.exp == 0 && w.sig == 1 << 127) {
        let (r, tail) = expm1_w(w.times(LN2));
        return r.round(tail, ctx);
    }
    // Outside the architectural range. Beyond 2^15 the result overflows or is -1 to
    // within far less than an ulp.
    if w.exp >= 15 {
        return if w.neg {
            W::ONE.negate().round(Ordering::Greater, ctx)
        } else {
            W::ONE.scale(1 << 16).round(Ordering::Greater, ctx)
        };
    }
    // 2^x - 1 = 2^n * 2^f - 1 with |f| <= 1/2.
    let n = {
        let int = (w.sig >> (127 - w.exp)) as i64;
        let half = (w.sig >> (126 - w.exp)) & 1;
        let n = int + half as i64;
        if w.neg {
            -n
        } else {
            n
        }
    };
    let f = w.minus(W::from_int(n));
    let (em1, _) = expm1_w(f.times(LN2));
    let r = W::ONE.plus(em1).scale(n as i32).minus(W::ONE);
    r.round(TRUNCATED, ctx)
}

/// Rounds a logarithm's product: as if the true value were slightly further from zero
/// (what the hardware does with results that come out representable).
fn away(w: W, ctx: &mut Ctx) -> u128 {
    w.round(
        if w.neg {
            Ordering::Less
        } else {
            Ordering::Greater
        },
        ctx,
    )
}

/// The sign rules shared by FYL2X and FYL2XP1 for a finite non-zero log and a zero or
/// infinite y: the product's sign.
fn product_sign(log_negative: bool, y: u128) -> bool {
    log_negative != sf::is_negative(y)
}

/// FYL2X: y * log2(x) (x = ST(0), y = ST(1)).
pub fn fyl2x(x: u128, y: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = sf::nan2(x, y, ctx) {
        return r;
    }
    let (cx, cy) = (sf::classify(x), sf::classify(y));
    let nx = sf::is_negative(x);
    if nx && cx != Class::Zero {
        return ctx.invalid();
    }
    match cx {
        Class::Zero => {
            // log2(0) = -∞.
            return match cy {
                Class::Zero => ctx.invalid(),
                Class::Inf => sf::signed_inf(!sf::is_negative(y)),
                _ => {
                    ctx.flags |= ZE;
                    sf::signed_inf(!sf::is_negative(y))
                }
            };
        }
        Class::Inf => {
            if cy == Class::Zero {
                return ctx.invalid();
            }
            sf::check_denormal2(x, y, ctx);
            return sf::signed_inf(sf::is_negative(y));
        }
        _ => {}
    }
    let wx = W::from_f80(x);
    let is_one = wx == W::ONE;
    if is_one && cy == Class::Inf {
        return ctx.invalid();
    }
    sf::check_denormal2(x, y, ctx);
    if is_one {
        return sf::signed_zero(sf::is_negative(y));
    }
    let below_one = wx.exp < 0;
    match cy {
        Class::Zero => return sf::signed_zero(product_sign(below_one, y)),
        Class::Inf => return sf::signed_inf(product_sign(below_one, y)),
        _ => {}
    }
    let product = log2_w(wx).times(W::from_f80(y));
    if wx.sig == 1 << 127 {
        // x is a power of two: log2(x) and the product are exact. The hardware still
        // reports PE, and rounds only as the exact value needs.
        return inexact_as_is(product.neg, product.exp - 127, product.sig, ctx);
    }
    away(product, ctx)
}

/// FYL2XP1: y * log2(x + 1) (x = ST(0), y = ST(1); defined for |x| < 1 - √2/2, other
/// values above -1 get the same formula).
pub fn fyl2xp1(x: u128, y: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = sf::nan2(x, y, ctx) {
        return r;
    }
    let (cx, cy) = (sf::classify(x), sf::classify(y));
    let nx = sf::is_negative(x);
    match cx {
        Class::Zero => {
            if cy == Class::Inf {
                return ctx.invalid();
            }
            sf::check_denormal2(x, y, ctx);
            return sf::signed_zero(nx != sf::is_negative(y));
        }
        Class::Inf => {
            if nx || cy == Class::Zero {
                return ctx.invalid();
            }
            sf::check_denormal2(x, y, ctx);
            return sf::signed_inf(sf::is_negative(y));
        }
        _ => {}
    }
    let wx = W::from_f80(x);
    // x <= -1: log2(x + 1) is -∞ or undefined.
    if nx && wx.cmp_abs(W::ONE) != Ordering::Less {
        if wx.cmp_abs(W::ONE) == Ordering::Greater || cy == Class::Zero {
            return ctx.invalid();
        }
        if cy != Class::Inf {
            ctx.flags |= ZE;
        }
        return sf::signed_inf(!sf::is_negative(y));
    }
    sf::check_denormal2(x, y, ctx);
    match cy {
        Class::Zero => return sf::signed_zero(product_sign(nx, y)),
        Class::Inf => return sf::signed_inf(product_sign(nx, y)),
        _ => {}
    }
    away(log2p1_w(wx).times(W::from_f80(y)), ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::sse::softfp;

    fn ctx() -> Ctx {
        Ctx::new(0x037f, true)
    }

    fn f(x: f64) -> u128 {
        sf::from_format::<softfp::F64>(x.to_bits(), &mut ctx())
    }

    fn to_f64(x: u128) -> f64 {
        f64::from_bits(sf::to_format::<softfp::F64>(x, &mut ctx()))
    }

    #[test]
    fn constants_match_the_x87_constants() {
        // FLDPI, FLDLN2 and FLDL2E round these to 64 bits.
        assert_eq!(PI.sig >> 64, 0xc90f_daa2_2168_c234);
        assert_eq!(LN2.sig >> 64, 0xb172_17f7_d1cf_79ab);
        assert_eq!(LOG2E.sig >> 64, 0xb8aa_3b29_5c17_f0bb);
        // ln2 * log2(e) = 1 to about 127 bits.
        let one = LN2.times(LOG2E);
        assert!(one.exp == -1 && one.sig >> 4 == u128::MAX >> 4);
        // The 66-bit π is π's leading bits.
        assert_eq!(PI.sig >> 62, PIO2_66);
    }

    #[test]
    fn trigonometry_of_ordinary_values() {
        for &x in &[0.5f64, 1.0, -1.0, 2.0, 3.0, 10.0, -100.0, 1e-3] {
            let s = to_f64(sin(f(x), &mut ctx()).unwrap());
            let c = to_f64(cos(f(x), &mut ctx()).unwrap());
            let t = to_f64(tan(f(x), &mut ctx()).unwrap());
            assert!(
                (s - x.sin()).abs() <= 1e-15 * x.sin().abs().max(1e-300),
                "sin {x}: {s}"
            );
            assert!((c - x.cos()).abs() <= 1e-15 * x.cos().abs(), "cos {x}: {c}");
            assert!((t - x.tan()).abs() <= 1e-15 * x.tan().abs(), "tan {x}: {t}");
        }
        // The hardware's sin(π80): π80 - π66, not π80 - π.
        let pi80 = sf::pack(false, 0x4000, 0xc90f_daa2_2168_c235);
        let mut c = ctx();
        let s = sin(pi80, &mut c).unwrap();
        assert_eq!(s, 0xbfbf_8000_0000_0000_0000);
        assert!(c.rounded_up);
        assert_eq!(c.flags, PE);
        assert_eq!(sin(sf::pack(false, 0x3fff + 63, 1 << 63), &mut ctx()), None);
    }

    #[test]
    fn special_operands() {
        let mut c = ctx();
        assert_eq!(sin(SIGN, &mut c), Some(SIGN));
        assert_eq!(cos(SIGN, &mut c), Some(sf::ONE));
        assert_eq!(c.flags, 0);
        let inf = sf::signed_inf(false);
        assert_eq!(sin(inf, &mut c), Some(INDEFINITE));
        assert_eq!(c.flags, IE);
        let mut c = ctx();
        let tiny = 1u128;
        assert_eq!(sin(tiny, &mut c), Some(tiny));
        assert!(c.rounded_up, "sin x is below x");
        let mut c = ctx();
        assert_eq!(
            atan2(0, SIGN, &mut c),
            sf::pack(false, 0x4000, 0xc90f_daa2_2168_c235)
        );
        let mut c = ctx();
        assert_eq!(fyl2x(sf::ONE, f(3.0), &mut c), 0);
        assert_eq!(c.flags, 0);
        let mut c = ctx();
        assert_eq!(fyl2x(0, f(3.0), &mut c), sf::signed_inf(true));
        assert_eq!(c.flags, ZE);
        let mut c = ctx();
        assert_eq!(fyl2x(f(-3.0), f(3.0), &mut c), INDEFINITE);
        let mut c = ctx();
        assert_eq!(f2xm1(sf::signed_inf(true), &mut c), sf::ONE | SIGN);
    }

    /// Every function on edge encodings and pseudo-random ones, in every rounding
    /// direction with all exceptions masked or unmasked: no panic (this also runs in debug
    /// builds, with overflow checks), NaNs only from NaN or invalid operands.
    #[test]
    fn no_operand_panics() {
        let mut values = vec![
            0,
            SIGN,
            sf::ONE,
            sf::ONE | SIGN,
            1,
            sf::pack(false, 0, sf::INT_BIT),
            sf::pack(true, 0, 0x4000_0000_0000_0000),
            sf::pack(false, 0x7ffe, u64::MAX),
            sf::pack(true, 0x7ffe, u64::MAX),
            sf::pack(false, 1, sf::INT_BIT),
            sf::signed_inf(false),
            sf::signed_inf(true),
            INDEFINITE,
            sf::pack(false, 0x7fff, sf::INT_BIT | 1),
            sf::pack(false, 0x4000, 0x4000_0000_0000_0000),
            sf::pack(false, 0x3fff + 62, u64::MAX),
            sf::pack(false, 0x3fff + 63, sf::INT_BIT),
            sf::pack(false, 0x3fff + 14, sf::INT_BIT | 5),
            sf::pack(true, 0x3fff + 15, sf::INT_BIT),
            sf::pack(false, 0x3ffd, 0x95f6_1998_0c43_3812),
            sf::pack(true, 0x3ffd, 0x95f6_1998_0c43_3812),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(sf::pack(
                x & 1 != 0,
                (x >> 1) as u32 & 0x7fff,
                x.rotate_left(17),
            ));
            let e = 0x3fff - 70 + (x >> 20) as u32 % 140;
            values.push(sf::pack(x & 2 != 0, e, x | sf::INT_BIT));
        }
        for fcw in [0x037f, 0x0f40, 0x0740, 0x0b7f] {
            for &a in &values {
                let c = || Ctx::new(fcw, false);
                let _ = sin(a, &mut c());
                let _ = cos(a, &mut c());
                let _ = sin_cos(a, &mut c());
                let _ = tan(a, &mut c());
                let _ = f2xm1(a, &mut c());
                for &b in values.iter().step_by(7) {
                    let _ = atan2(a, b, &mut c());
                    let _ = fyl2x(a, b, &mut c());
                    let _ = fyl2xp1(a, b, &mut c());
                    let _ = sf::rem(a, b, false, &mut c());
                    let _ = sf::rem(a, b, true, &mut c());
                }
            }
        }
    }

    #[test]
    fn logarithms_and_exponentials() {
        for &(x, y) in &[
            (8.0f64, 3.0f64),
            (10.0, 1.0),
            (0.3, -2.0),
            (1e300, 1.0),
            (1.5, 0.5),
        ] {
            let r = to_f64(fyl2x(f(x), f(y), &mut ctx()));
            let want = y * x.log2();
            assert!((r - want).abs() <= 1e-15 * want.abs(), "fyl2x {x} {y}: {r}");
        }
        for &x in &[0.25f64, -0.25, 1e-10, -1e-10, 0.29] {
            let r = to_f64(fyl2xp1(f(x), f(1.0), &mut ctx()));
            let want = x.ln_1p() / std::f64::consts::LN_2;
            assert!((r - want).abs() <= 1e-15 * want.abs(), "fyl2xp1 {x}: {r}");
        }
        for &x in &[0.5f64, -0.5, 1.0, -1.0, 1e-10, 0.999, 3.5, -7.25] {
            let r = to_f64(f2xm1(f(x), &mut ctx()));
            let want = (x * std::f64::consts::LN_2).exp_m1();
            assert!((r - want).abs() <= 1e-15 * want.abs(), "f2xm1 {x}: {r}");
        }
        for &(y, x) in &[
            (1.0f64, 1.0f64),
            (1.0, -1.0),
            (-2.0, 0.5),
            (1e-300, 3.0),
            (5.0, -1e-5),
        ] {
            let r = to_f64(atan2(f(y), f(x), &mut ctx()));
            let want = y.atan2(x);
            assert!((r - want).abs() <= 1e-15 * want.abs(), "atan2 {y} {x}: {r}");
        }
    }
}
