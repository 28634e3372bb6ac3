//! x87 double-extended (80-bit) arithmetic in software, with x87 semantics: precision
//! control (24, 53 or 64 significand bits over the full 15-bit exponent range), rounding
//! control, the six exception flags, C1 "rounded up", the masked and unmasked responses to
//! overflow and underflow (the unmasked ones deliver the result scaled by 2^∓24576), x87
//! NaN selection, and the unsupported encodings (unnormals, pseudo-NaNs, pseudo-infinities)
//! that raise IE.
//!
//! It is the same design as [`crate::exec::sse::softfp`]: integer arithmetic on the
//! encodings, the [`Round`] directions and the flag bit positions shared (x87 status-word
//! bits 0..5 are the MXCSR flag bits), and the single rounding primitive
//! [`softfp::shift_round`]. What differs is the format: an explicit integer bit, so a
//! value's significand is 64 bits and an encoding is 80 bits (carried in a `u128`), and the
//! rounding context ([`Ctx`]) comes from the x87 control word.

use std::cmp::Ordering;

use crate::exec::sse::softfp::{self, aligned_sum, Format, Round, DE, IE, OE, PE, UE, ZE};

/// The sign bit of an 80-bit encoding.
pub const SIGN: u128 = 1 << 79;
/// The exponent field.
pub const EXP_MASK: u128 = 0x7fff << 64;
/// The explicit integer bit of the significand.
pub const INT_BIT: u64 = 1 << 63;
/// The quiet bit of a NaN.
pub const QUIET: u64 = 1 << 62;
/// Exponent bias.
pub const BIAS: i32 = 16383;
/// The largest biased exponent (infinities and NaNs).
pub const EXP_MAX: u32 = 0x7fff;
/// The "real indefinite": negative quiet NaN with the top two significand bits set.
pub const INDEFINITE: u128 = SIGN | EXP_MASK | 0xc000_0000_0000_0000;
/// Exponent adjustment of the unmasked overflow and underflow responses.
pub const WRAP: i32 = 24576;
/// Mask of the 80 bits of an encoding.
pub const MASK80: u128 = (1 << 80) - 1;
/// +1.0.
pub const ONE: u128 = ((BIAS as u128) << 64) | INT_BIT as u128;

/// What an 80-bit encoding holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// ±0.
    Zero,
    /// A denormal or pseudo-denormal (exponent 0, non-zero significand).
    Denormal,
    /// A normal finite value.
    Normal,
    /// ±∞.
    Inf,
    /// A quiet NaN.
    QNaN,
    /// A signalling NaN.
    SNaN,
    /// An unnormal, pseudo-NaN or pseudo-infinity: invalid operands since the 387.
    Unsupported,
}

/// The sign, biased exponent and significand of `x`.
#[inline]
pub fn fields(x: u128) -> (bool, u32, u64) {
    (x & SIGN != 0, ((x >> 64) & 0x7fff) as u32, x as u64)
}

/// The encoding with these fields.
#[inline]
pub fn pack(negative: bool, exp: u32, sig: u64) -> u128 {
    (if negative { SIGN } else { 0 }) | ((exp as u128 & 0x7fff) << 64) | sig as u128
}

/// Classifies `x`.
pub fn classify(x: u128) -> Class {
    let (_, e, sig) = fields(x);
    if e == EXP_MAX {
        if sig & INT_BIT == 0 {
            Class::Unsupported
        } else if sig << 1 == 0 {
            Class::Inf
        } else if sig & QUIET != 0 {
            Class::QNaN
        } else {
            Class::SNaN
        }
    } else if e == 0 {
        if sig == 0 {
            Class::Zero
        } else {
            Class::Denormal
        }
    } else if sig & INT_BIT == 0 {
        Class::Unsupported
    } else {
        Class::Normal
    }
}

/// Whether `x` is a NaN (quiet or signalling).
#[inline]
pub fn is_nan(x: u128) -> bool {
    matches!(classify(x), Class::QNaN | Class::SNaN)
}

/// Whether the sign bit of `x` is set.
#[inline]
pub fn is_negative(x: u128) -> bool {
    x & SIGN != 0
}

pub(crate) fn signed_zero(negative: bool) -> u128 {
    if negative {
        SIGN
    } else {
        0
    }
}

pub(crate) fn signed_inf(negative: bool) -> u128 {
    signed_zero(negative) | EXP_MASK | INT_BIT as u128
}

/// The rounding context of one x87 instruction and what it raised.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Rounding direction (control word RC, same encoding as MXCSR.RC).
    pub round: Round,
    /// Significand bits results are rounded to (control word PC: 24, 53 or 64).
    pub prec: u32,
    /// Control word bits 0..5: a set bit masks that exception.
    pub masks: u32,
    /// Exceptions detected (status-word bit positions = MXCSR flag positions).
    pub flags: u32,
    /// The last rounding increased the magnitude (reported in C1 with PE).
    pub rounded_up: bool,
}

impl Ctx {
    /// The context the control word `fcw` describes, with full precision if `use_pc` is
    /// false (precision control only affects the basic arithmetic and FSQRT).
    pub fn new(fcw: u16, use_pc: bool) -> Self {
        let prec = if use_pc {
            match (fcw >> 8) & 3 {
                0 => 24,
                2 => 53,
                // 1 is reserved; the hardware treats it as 64 bits.
                _ => 64,
            }
        } else {
            64
        };
        Ctx {
            round: Round::from_bits((fcw >> 10) as u32),
            prec,
            masks: fcw as u32 & 0x3f,
            flags: 0,
            rounded_up: false,
        }
    }

    /// Whether exception `flag` is masked.
    #[inline]
    pub fn masked(&self, flag: u32) -> bool {
        self.masks & flag != 0
    }

    /// Raises IE and returns the indefinite.
    pub(crate) fn invalid(&mut self) -> u128 {
        self.flags |= IE;
        INDEFINITE
    }
}

/// A finite non-zero value as `(negative, exp, sig)` with `value = sig * 2^exp`.
#[inline]
fn unpack(x: u128) -> (bool, i32, u64) {
    let (negative, e, sig) = fields(x);
    let e = if e == 0 { 1 } else { e as i32 };
    (negative, e - BIAS - 63, sig)
}

/// Rounds `(-1)^negative * sig * 2^exp` to the context's precision and the 80-bit exponent
/// range, raising OE, UE and PE as the x87 does and recording C1. With overflow or
/// underflow unmasked the result is delivered with its exponent wrapped by [`WRAP`].
pub fn round_pack(negative: bool, mut exp: i32, mut sig: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if sig == 0 {
        return signed_zero(negative);
    }
    // Keep the significand below 2^126 (what shift_round expects), folding the dropped
    // bits into a sticky bit: at least 120 significant bits remain.
    let msb = 127 - sig.leading_zeros() as i32;
    if msb > 125 {
        let s = (msb - 125) as u32;
        let sticky = sig & ((1u128 << s) - 1) != 0;
        sig = (sig >> s) | sticky as u128;
        exp += s as i32;
    }
    let p = ctx.prec as i32;
    let msb = 127 - sig.leading_zeros() as i32;
    let round_at = |sig: u128, drop: i32, ctx: &mut Ctx| {
        let (kept, inexact) = softfp::shift_round(sig, drop, negative, ctx.round);
        let truncated = if drop <= 0 {
            kept
        } else if drop >= 128 {
            0
        } else {
            sig >> drop
        };
        ctx.rounded_up = kept != truncated;
        (kept, inexact)
    };
    let normal_drop = msb - (p - 1);
    let (mut kept, inexact) = round_at(sig, normal_drop, ctx);
    let mut lsb_exp = exp + normal_drop;
    if kept >> p != 0 {
        kept >>= 1;
        lsb_exp += 1;
    }
    // Biased exponent of the rounded result with an unbounded range.
    let biased = lsb_exp + p - 1 + BIAS;
    let encode =
        |biased: i32, kept: u128| pack(negative, biased as u32, (kept as u64) << (64 - p as u32));
    if biased >= EXP_MAX as i32 {
        if !ctx.masked(OE) {
            if biased - WRAP < EXP_MAX as i32 {
                ctx.flags |= OE | if inexact { PE } else { 0 };
                return encode(biased - WRAP, kept);
            }
            // Too large even for the wrapped exponent (only FSCALE gets here): infinity,
            // whatever the rounding direction, reported as rounded up.
            ctx.flags |= OE | PE;
            ctx.rounded_up = true;
            return signed_inf(negative);
        }
        ctx.flags |= OE | PE;
        let to_inf = match ctx.round {
            Round::Nearest => true,
            Round::Zero => false,
            Round::Up => !negative,
            Round::Down => negative,
        };
        ctx.rounded_up = to_inf;
        return if to_inf {
            signed_inf(negative)
        } else {
            encode(EXP_MAX as i32 - 1, (1u128 << p) - 1)
        };
    }
    if biased <= 0 {
        if !ctx.masked(UE) {
            if biased + WRAP > 0 {
                ctx.flags |= UE | if inexact { PE } else { 0 };
                return encode(biased + WRAP, kept);
            }
            // Too small even for the wrapped exponent (only FSCALE gets here): zero.
            ctx.flags |= UE | PE;
            ctx.rounded_up = false;
            return signed_zero(negative);
        }
        // Denormalize: at precision p the lsb can sit no lower than 2^(1 - BIAS - (p-1)),
        // so reduced precision control also coarsens the denormal grid.
        let drop = ((1 - BIAS - (p - 1)) - exp).max(normal_drop);
        let (kept, inexact) = round_at(sig, drop, ctx);
        if inexact {
            ctx.flags |= UE | PE;
        }
        let sig = (kept as u64) << (64 - p as u32);
        // A carry into the integer bit makes it the smallest normal.
        return pack(negative, (sig >> 63) as u32, sig);
    }
    if inexact {
        ctx.flags |= PE;
    }
    encode(biased, kept)
}

/// Checks one operand for the invalid encodings and NaNs: `Some(result)` ends the
/// operation (IE for an SNaN or unsupported encoding).
pub(crate) fn nan1(a: u128, ctx: &mut Ctx) -> Option<u128> {
    match classify(a) {
        Class::Unsupported => Some(ctx.invalid()),
        Class::SNaN => {
            ctx.flags |= IE;
            Some(a | QUIET as u128)
        }
        Class::QNaN => Some(a),
        _ => None,
    }
}

/// Two-operand NaN rules of the x87: unsupported encodings are invalid; of two NaNs the
/// one with the larger significand wins (a QNaN beats an SNaN); SNaNs raise IE and are
/// quieted.
pub(crate) fn nan2(a: u128, b: u128, ctx: &mut Ctx) -> Option<u128> {
    let (ca, cb) = (classify(a), classify(b));
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return Some(ctx.invalid());
    }
    let a_nan = matches!(ca, Class::QNaN | Class::SNaN);
    let b_nan = matches!(cb, Class::QNaN | Class::SNaN);
    if !a_nan && !b_nan {
        return None;
    }
    if ca == Class::SNaN || cb == Class::SNaN {
        ctx.flags |= IE;
    }
    let q = QUIET as u128;
    Some(if a_nan && b_nan && ca != cb {
        // A QNaN beats an SNaN whatever the significands.
        if ca == Class::QNaN {
            a
        } else {
            b
        }
    } else if a_nan && b_nan {
        let (sa, sb) = (a as u64 | QUIET, b as u64 | QUIET);
        match sa.cmp(&sb) {
            Ordering::Greater => a | q,
            Ordering::Less => b | q,
            // Equal significands: the positive one (the hardware compares the
            // magnitudes of the quieted operands and prefers the larger encoding).
            Ordering::Equal => (if is_negative(a) { b } else { a }) | q,
        }
    } else if a_nan {
        a | q
    } else {
        b | q
    })
}

pub(crate) fn check_denormal2(a: u128, b: u128, ctx: &mut Ctx) {
    if classify(a) == Class::Denormal || classify(b) == Class::Denormal {
        ctx.flags |= DE;
    }
}

/// `a + b`.
pub fn add(a: u128, b: u128, ctx: &mut Ctx) -> u128 {
    add_sub(a, b, false, ctx)
}

/// `a - b`.
pub fn sub(a: u128, b: u128, ctx: &mut Ctx) -> u128 {
    add_sub(a, b, true, ctx)
}

fn add_sub(a: u128, b: u128, subtract: bool, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = nan2(a, b, ctx) {
        return r;
    }
    let b = if subtract { b ^ SIGN } else { b };
    let (ca, cb) = (classify(a), classify(b));
    if ca == Class::Inf {
        if cb == Class::Inf && (a ^ b) & SIGN != 0 {
            return ctx.invalid();
        }
        check_denormal2(a, b, ctx);
        return a;
    }
    check_denormal2(a, b, ctx);
    if cb == Class::Inf {
        return b;
    }
    let (sa, ea, ma) = unpack(a);
    let (sb, eb, mb) = unpack(b);
    if ma == 0 && mb == 0 {
        return if sa == sb {
            a
        } else {
            signed_zero(ctx.round == Round::Down)
        };
    }
    if ma == 0 {
        return round_pack(sb, eb, mb as u128, ctx);
    }
    if mb == 0 {
        return round_pack(sa, ea, ma as u128, ctx);
    }
    // The larger operand's lsb goes to bit 62, so sums stay below 2^127.
    let (negative, base, sum) = aligned_sum((sa, ea, ma), (sb, eb, mb), 62);
    if sum == 0 {
        return signed_zero(ctx.round == Round::Down);
    }
    round_pack(negative, base, sum, ctx)
}

/// `a * b`.
pub fn mul(a: u128, b: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = nan2(a, b, ctx) {
        return r;
    }
    let negative = (a ^ b) & SIGN != 0;
    let (ca, cb) = (classify(a), classify(b));
    if ca == Class::Inf || cb == Class::Inf {
        if ca == Class::Zero || cb == Class::Zero {
            return ctx.invalid();
        }
        check_denormal2(a, b, ctx);
        return signed_inf(negative);
    }
    check_denormal2(a, b, ctx);
    let (_, ea, ma) = unpack(a);
    let (_, eb, mb) = unpack(b);
    if ma == 0 || mb == 0 {
        return signed_zero(negative);
    }
    round_pack(negative, ea + eb, ma as u128 * mb as u128, ctx)
}

/// `a / b`.
pub fn div(a: u128, b: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = nan2(a, b, ctx) {
        return r;
    }
    let negative = (a ^ b) & SIGN != 0;
    let (ca, cb) = (classify(a), classify(b));
    if (ca == Class::Inf && cb == Class::Inf) || (ca == Class::Zero && cb == Class::Zero) {
        return ctx.invalid();
    }
    if ca == Class::Inf {
        check_denormal2(a, b, ctx);
        return signed_inf(negative);
    }
    if cb == Class::Zero {
        // A denormal dividend is not reported: division by zero comes first.
        ctx.flags |= ZE;
        return signed_inf(negative);
    }
    check_denormal2(a, b, ctx);
    if cb == Class::Inf || ca == Class::Zero {
        return signed_zero(negative);
    }
    let (_, ea, ma) = unpack(a);
    let (_, eb, mb) = unpack(b);
    // Normalize both to a top bit at 63, then divide in two 64-bit steps: the quotient has
    // at least 127 bits, plus a sticky bit for the remainder.
    let za = ma.leading_zeros();
    let zb = mb.leading_zeros();
    let (ma, mb) = ((ma << za) as u128, (mb << zb) as u128);
    let num = ma << 63;
    let q1 = num / mb;
    let r1 = num % mb;
    let num2 = r1 << 64;
    let q2 = num2 / mb;
    let r2 = num2 % mb;
    let q = (q1 << 64) | q2 | (r2 != 0) as u128;
    round_pack(
        negative,
        (ea - za as i32) - (eb - zb as i32) - 63 - 64,
        q,
        ctx,
    )
}

/// `sqrt(a)`.
pub fn sqrt(a: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = nan1(a, ctx) {
        return r;
    }
    let c = classify(a);
    if c == Class::Zero {
        return a;
    }
    if is_negative(a) {
        return ctx.invalid();
    }
    if c == Class::Inf {
        return a;
    }
    if c == Class::Denormal {
        ctx.flags |= DE;
    }
    let (_, e, m) = unpack(a);
    let msb = 63 - m.leading_zeros() as i32;
    let mut shift = 124 - msb;
    if (e - shift) & 1 != 0 {
        shift -= 1;
    }
    let radicand = (m as u128) << shift;
    let mut root = softfp::isqrt(radicand);
    let mut rem = radicand - root * root;
    // Three more root bits, digit by digit: (2r+1)^2 <= 4R  <=>  4r+1 <= 4(R - r^2).
    for _ in 0..3 {
        let trial = 4 * root + 1;
        rem *= 4;
        root *= 2;
        if trial <= rem {
            rem -= trial;
            root += 1;
        }
    }
    round_pack(
        false,
        (e - shift) / 2 - 3 - 1,
        root << 1 | (rem != 0) as u128,
        ctx,
    )
}

/// The outcome of a comparison.
pub use softfp::Relation;

/// A totally ordered key for non-NaN values (both zeros equal, pseudo-denormals equal to
/// the normals they denote).
fn order_key(x: u128) -> (i8, i32, u64) {
    let c = classify(x);
    let negative = is_negative(x);
    let (e, sig) = match c {
        Class::Zero => return (0, 0, 0),
        Class::Inf => (i32::MAX, 0),
        _ => {
            let (_, e, m) = unpack(x);
            let z = m.leading_zeros();
            (e - z as i32, m << z)
        }
    };
    if negative {
        (-1, -e, !sig)
    } else {
        (1, e, sig)
    }
}

/// Compares `a` with `b`. IE for an SNaN or unsupported operand, and for a QNaN when
/// `signal_qnan` (FCOM, FCOMI, FTST, FICOM); DE for a denormal operand.
pub fn compare(a: u128, b: u128, signal_qnan: bool, ctx: &mut Ctx) -> Relation {
    let (ca, cb) = (classify(a), classify(b));
    if ca == Class::Unsupported || cb == Class::Unsupported {
        ctx.flags |= IE;
        return Relation::Unordered;
    }
    let nan = |c| matches!(c, Class::QNaN | Class::SNaN);
    if nan(ca) || nan(cb) {
        if signal_qnan || ca == Class::SNaN || cb == Class::SNaN {
            ctx.flags |= IE;
        }
        return Relation::Unordered;
    }
    check_denormal2(a, b, ctx);
    match order_key(a).cmp(&order_key(b)) {
        Ordering::Less => Relation::Less,
        Ordering::Equal => Relation::Equal,
        Ordering::Greater => Relation::Greater,
    }
}

/// Extends a binary32/binary64 encoding to 80 bits (exact). DE for a denormal source,
/// IE for an SNaN (quieted).
pub fn from_format<F: Format>(x: u64, ctx: &mut Ctx) -> u128 {
    let negative = softfp::is_negative::<F>(x);
    if softfp::is_nan::<F>(x) {
        if softfp::is_snan::<F>(x) {
            ctx.flags |= IE;
        }
        let frac = (x & F::FRAC_MASK) << (63 - F::MANT);
        return signed_zero(negative) | EXP_MASK | (INT_BIT | QUIET | frac) as u128;
    }
    if softfp::is_inf::<F>(x) {
        return signed_inf(negative);
    }
    if softfp::is_zero::<F>(x) {
        return signed_zero(negative);
    }
    if softfp::is_denormal::<F>(x) {
        ctx.flags |= DE;
    }
    let (_, e, m) = softfp::unpack::<F>(x);
    let z = m.leading_zeros();
    let e80 = e - z as i32 + 63 + BIAS;
    pack(negative, e80 as u32, m << z)
}

/// Extends a binary32/binary64 memory operand of an arithmetic or compare instruction to
/// 80 bits without raising anything: an SNaN stays signalling (so the operation's NaN
/// rules see it as one) and a denormal source is reported in the second value instead of
/// DE (the operation reports it only if it gets past its NaN checks).
pub fn from_format_operand<F: Format>(x: u64) -> (u128, bool) {
    if softfp::is_snan::<F>(x) {
        let frac = (x & F::FRAC_MASK) << (63 - F::MANT);
        let sign = signed_zero(softfp::is_negative::<F>(x));
        return (sign | EXP_MASK | (INT_BIT | frac) as u128, false);
    }
    let denormal = softfp::is_denormal::<F>(x);
    let mut scratch = Ctx::new(0x37f, false);
    (from_format::<F>(x, &mut scratch), denormal)
}

/// Whether `x` is a NaN or an unsupported encoding (an operand that ends an operation
/// before its denormal check).
pub fn is_nan_or_unsupported(x: u128) -> bool {
    matches!(classify(x), Class::QNaN | Class::SNaN | Class::Unsupported)
}

/// Rounds an 80-bit value to binary32/binary64 (FST m32/m64). With an unmasked
/// exception that prevents the store the returned value is meaningless and the caller
/// must not store it (IE, DE, OE and UE unmasked; see [`Ctx::flags`]).
pub fn to_format<F: Format>(x: u128, ctx: &mut Ctx) -> u64 {
    ctx.rounded_up = false;
    let negative = is_negative(x);
    let sign = if negative { F::SIGN } else { 0 };
    match classify(x) {
        Class::Unsupported => {
            ctx.flags |= IE;
            return F::DEFAULT_NAN;
        }
        Class::SNaN | Class::QNaN => {
            if classify(x) == Class::SNaN {
                ctx.flags |= IE;
            }
            let frac = ((x as u64) << 1) >> (64 - F::MANT);
            return sign | F::EXP_MASK | F::QUIET | frac;
        }
        Class::Inf => return sign | F::EXP_MASK,
        Class::Zero => return sign,
        // Stores do not report denormal sources (they underflow instead).
        Class::Denormal | Class::Normal => {}
    }
    let (_, e, m) = unpack(x);
    let mut env = softfp::Env::new(
        (ctx.round as u32) << softfp::RC_SHIFT | ((ctx.masks & (UE | OE)) << softfp::MASK_SHIFT),
    );
    let r = softfp::round_pack::<F>(negative, e, m as u128, &mut env);
    // An unmasked overflow or underflow stores nothing and reports no precision loss.
    if env.flags & (OE | UE) & !ctx.masks != 0 {
        env.flags &= !PE;
    }
    ctx.flags |= env.flags;
    // C1: whether the stored magnitude exceeds the source's.
    if env.flags & PE != 0 && env.flags & (OE | UE) & !(ctx.masks) == 0 {
        let mut scratch = Ctx { flags: 0, ..*ctx };
        let back = from_format::<F>(r, &mut scratch);
        ctx.rounded_up = order_key(back & !SIGN) > order_key(x & !SIGN);
    }
    r
}

/// Converts a signed integer to 80 bits (exact: every i64 fits the significand).
pub fn from_int(v: i64) -> u128 {
    if v == 0 {
        return 0;
    }
    let m = v.unsigned_abs();
    let z = m.leading_zeros();
    pack(v < 0, (63 - z as i32 + BIAS) as u32, m << z)
}

/// Converts to a signed `bits`-bit integer (16, 32 or 64) in the context's rounding
/// direction. NaNs, infinities, unsupported encodings and out-of-range values raise IE
/// and give `None` (the caller stores the integer indefinite if IE is masked).
pub fn to_int(x: u128, bits: u32, ctx: &mut Ctx) -> Option<i64> {
    ctx.rounded_up = false;
    match classify(x) {
        Class::Zero => return Some(0),
        // Integer stores do not report denormal sources (only the precision loss).
        Class::Normal | Class::Denormal => {}
        _ => {
            ctx.flags |= IE;
            return None;
        }
    }
    let (negative, e, m) = unpack(x);
    let (magnitude, inexact) = if e >= 0 {
        if e >= 64 {
            ctx.flags |= IE;
            return None;
        }
        ((m as u128) << e, false)
    } else {
        let (k, inexact) = softfp::shift_round(m as u128, -e, negative, ctx.round);
        let truncated = if -e >= 128 { 0 } else { m as u128 >> -e };
        ctx.rounded_up = k != truncated;
        (k, inexact)
    };
    let limit = 1u128 << (bits - 1);
    if magnitude > limit || (magnitude == limit && !negative) {
        ctx.flags |= IE;
        ctx.rounded_up = false;
        return None;
    }
    if inexact {
        ctx.flags |= PE;
    }
    let v = magnitude as i128;
    Some(if negative { -v } else { v } as i64)
}

/// Rounds to an integral value in the context's rounding direction (FRNDINT).
pub fn round_to_integral(x: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = nan1(x, ctx) {
        return r;
    }
    match classify(x) {
        Class::Zero | Class::Inf => return x,
        Class::Denormal => ctx.flags |= DE,
        _ => {}
    }
    let (negative, e, m) = unpack(x);
    if e >= 0 {
        return x;
    }
    let (k, inexact) = softfp::shift_round(m as u128, -e, negative, ctx.round);
    let truncated = if -e >= 128 { 0 } else { m as u128 >> -e };
    if inexact {
        ctx.flags |= PE;
    }
    let up = k != truncated;
    if k == 0 {
        return signed_zero(negative);
    }
    let mut c = Ctx { prec: 64, ..*ctx };
    let r = round_pack(negative, 0, k, &mut c);
    ctx.rounded_up = up;
    r
}

/// FSCALE: `a * 2^trunc(b)`.
pub fn scale(a: u128, b: u128, ctx: &mut Ctx) -> u128 {
    ctx.rounded_up = false;
    if let Some(r) = nan2(a, b, ctx) {
        return r;
    }
    let (ca, cb) = (classify(a), classify(b));
    check_denormal2(a, b, ctx);
    match (ca, cb) {
        (Class::Inf, Class::Inf) => {
            return if is_negative(b) { ctx.invalid() } else { a };
        }
        (Class::Zero, Class::Inf) => {
            return if is_negative(b) { a } else { ctx.invalid() };
        }
        (_, Class::Inf) => {
            return if is_negative(b) {
                signed_zero(is_negative(a))
            } else {
                signed_inf(is_negative(a))
            };
        }
        (Class::Inf | Class::Zero, _) => return a,
        _ => {}
    }
    let (bn, be, bm) = unpack(b);
    // trunc(b), saturated far beyond any exponent that can matter.
    let n: i64 = if cb == Class::Zero || be < -63 {
        0
    } else if be >= 0 {
        1 << 20
    } else {
        ((bm >> (-be).min(63) as u32) as i64).min(1 << 20)
    };
    let n = if bn { -n } else { n };
    let (an, ae, am) = unpack(a);
    let mut c = Ctx { prec: 64, ..*ctx };
    let r = round_pack(
        an,
        (ae as i64 + n).clamp(-(1 << 21), 1 << 21) as i32,
        am as u128,
        &mut c,
    );
    ctx.flags |= c.flags;
    ctx.rounded_up = c.rounded_up;
    r
}

/// The outcome of FPREM/FPREM1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remainder {
    /// The (partial) remainder.
    pub value: u128,
    /// The low three bits of the quotient (C0 = bit 2, C3 = bit 1, C1 = bit 0); zero for
    /// a partial remainder.
    pub quotient: u8,
    /// Whether the reduction is incomplete (C2).
    pub partial: bool,
}

/// FPREM (`nearest` false: the quotient truncated) and FPREM1 (`nearest`: the quotient
/// rounded to nearest-even, the IEEE remainder): `a - q * b`, exact.
///
/// When the exponents differ by 64 or more the reduction is partial, as on the hardware:
/// with `d` the exponent difference, the quotient is truncated at bit
/// `(d & !31) - 32`, so one step removes between 32 and 63 bits of exponent difference
/// and software loops until C2 clears.
pub fn rem(a: u128, b: u128, nearest: bool, ctx: &mut Ctx) -> Remainder {
    ctx.rounded_up = false;
    let done = |value| Remainder {
        value,
        quotient: 0,
        partial: false,
    };
    if let Some(r) = nan2(a, b, ctx) {
        return done(r);
    }
    let (ca, cb) = (classify(a), classify(b));
    if ca == Class::Inf || cb == Class::Zero {
        return done(ctx.invalid());
    }
    check_denormal2(a, b, ctx);
    let negative = is_negative(a);
    if ca == Class::Zero || cb == Class::Inf {
        let (_, ea, ma) = unpack(a);
        let mut c = Ctx { prec: 64, ..*ctx };
        let r = round_pack(negative, ea, ma as u128, &mut c);
        ctx.flags |= c.flags;
        return done(if ca == Class::Zero { a } else { r });
    }
    let (_, ea, ma) = unpack(a);
    let (_, eb, mb) = unpack(b);
    let (za, zb) = (ma.leading_zeros() as i32, mb.leading_zeros() as i32);
    let (ma, ea) = (ma << za, ea - za);
    let (mb, eb) = (mb << zb, eb - zb);
    let d = ea - eb;
    // `num / den` in units of 2^unit; `truncate_at`: partial reduction.
    let (num, den, unit, partial) = if d >= 64 {
        let s = (d & !31) - 32;
        ((ma as u128) << (d - s), mb as u128, eb + s, true)
    } else if d >= 0 {
        ((ma as u128) << d, mb as u128, eb, false)
    } else if d >= -64 {
        (ma as u128, (mb as u128) << -d, ea, false)
    } else {
        (ma as u128, 0, ea, false)
    };
    let (mut q, mut r) = num
        .checked_div(den)
        .zip(num.checked_rem(den))
        .unwrap_or((0, num));
    let mut flip = false;
    if nearest && !partial && den != 0 {
        // Round the quotient to nearest-even: compare 2r with the divisor.
        let twice = r << 1;
        if twice > den || (twice == den && q & 1 == 1) {
            q += 1;
            r = den - r;
            flip = true;
        }
    }
    let value = if r == 0 {
        signed_zero(negative)
    } else {
        let mut c = Ctx { prec: 64, ..*ctx };
        let v = round_pack(negative != flip, unit, r, &mut c);
        ctx.flags |= c.flags;
        v
    };
    Remainder {
        value,
        quotient: if partial { 0 } else { (q & 7) as u8 },
        partial,
    }
}

/// FBLD: an 18-digit packed BCD integer (bytes 0..9 two digits each, least significant
/// first; bit 79 the sign, bits 72..78 ignored). Exact. Digits above 9 are weighted as
/// their values (what the hardware computes; the manual leaves it undefined).
pub fn from_bcd(v: u128) -> u128 {
    let mut n: u64 = 0;
    for k in (0..18).rev() {
        let digit = ((v >> (4 * k)) & 0xf) as u64;
        n = n * 10 + digit;
    }
    let negative = v & SIGN != 0;
    if n == 0 {
        return signed_zero(negative);
    }
    let z = n.leading_zeros();
    pack(negative, (63 - z as i32 + BIAS) as u32, n << z)
}

/// The packed BCD indefinite FBSTP stores for an invalid operation.
pub const BCD_INDEFINITE: u128 = 0xffff_c000_0000_0000_0000;

/// FBSTP: rounds to an integer in the context's direction and encodes it as 18-digit
/// packed BCD. `None` (with IE) for NaNs, infinities, unsupported encodings and values
/// of 19 or more digits. Denormals are not reported (as for FIST).
pub fn to_bcd(x: u128, ctx: &mut Ctx) -> Option<u128> {
    ctx.rounded_up = false;
    let negative = is_negative(x);
    let sign = if negative { SIGN } else { 0 };
    let magnitude: u64 = match classify(x) {
        Class::Zero => 0,
        Class::Normal | Class::Denormal => {
            let (_, e, m) = unpack(x);
            if e >= 0 {
                // At least 2^63: far beyond 18 digits.
                ctx.flags |= IE;
                return None;
            }
            let (k, inexact) = softfp::shift_round(m as u128, -e, negative, ctx.round);
            if k >= 1_000_000_000_000_000_000 {
                ctx.flags |= IE;
                return None;
            }
            if inexact {
                ctx.flags |= PE;
            }
            let truncated = if -e >= 128 { 0 } else { m as u128 >> -e };
            ctx.rounded_up = k != truncated;
            k as u64
        }
        _ => {
            ctx.flags |= IE;
            return None;
        }
    };
    let mut out = sign;
    let mut n = magnitude;
    for k in 0..18 {
        out |= ((n % 10) as u128) << (4 * k);
        n /= 10;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASKED: u16 = 0x037f;

    fn ctx(fcw: u16) -> Ctx {
        Ctx::new(fcw, true)
    }

    fn f64_to_80(x: f64) -> u128 {
        from_format::<softfp::F64>(x.to_bits(), &mut ctx(MASKED))
    }

    #[test]
    fn one_third_rounds_per_precision_control() {
        let three = from_int(3);
        let mut c = ctx(MASKED);
        let q = div(ONE, three, &mut c);
        assert_eq!(q, 0x3ffd_aaaa_aaaa_aaaa_aaab);
        assert_eq!(c.flags, PE);
        assert!(c.rounded_up);
        let mut c = ctx(0x027f); // PC = 53 bits
        let q = div(ONE, three, &mut c);
        assert_eq!(q, f64_to_80(1.0 / 3.0));
        let mut c = ctx(0x007f); // PC = 24 bits
        let q = div(ONE, three, &mut c);
        assert_eq!(q, f64_to_80((1.0f32 / 3.0) as f64));
        let mut c = ctx(0x0f7f); // truncate
        assert_eq!(div(ONE, three, &mut c), 0x3ffd_aaaa_aaaa_aaaa_aaaa);
        assert!(!c.rounded_up);
    }

    #[test]
    fn reduced_precision_keeps_the_extended_exponent_range() {
        // 2^-20000 is far below binary64's range but normal in 80 bits, also at PC=53.
        let tiny = pack(false, (BIAS - 20000) as u32, INT_BIT);
        let mut c = ctx(0x027f);
        assert_eq!(mul(tiny, ONE, &mut c), tiny);
        assert_eq!(c.flags, 0);
    }

    #[test]
    fn sqrt_is_correctly_rounded() {
        let two = from_int(2);
        let mut c = ctx(MASKED);
        let r = sqrt(two, &mut c);
        assert_eq!(r, 0x3fff_b504_f333_f9de_6484);
        assert_eq!(c.flags, PE);
        let mut c = ctx(MASKED);
        assert_eq!(sqrt(from_int(144), &mut c), from_int(12));
        assert_eq!(c.flags, 0);
    }

    #[test]
    fn unmasked_overflow_wraps_the_exponent() {
        let big = pack(false, 0x7ffe, INT_BIT);
        let mut c = ctx(MASKED & !(OE as u16));
        let r = mul(big, from_int(2), &mut c);
        assert_eq!(c.flags, OE);
        assert_eq!(r, pack(false, 0x7fff - WRAP as u32, INT_BIT));
        let mut c = ctx(MASKED);
        assert_eq!(mul(big, from_int(2), &mut c), signed_inf(false));
        assert_eq!(c.flags, OE | PE);
    }

    #[test]
    fn masked_underflow_denormalizes() {
        let min_normal = pack(false, 1, INT_BIT);
        let mut c = ctx(MASKED);
        let r = div(min_normal, from_int(4), &mut c);
        assert_eq!(r, pack(false, 0, INT_BIT >> 2));
        assert_eq!(c.flags, 0, "exact tiny results raise nothing when masked");
        let mut c = ctx(MASKED);
        let r = div(min_normal, from_int(3), &mut c);
        assert_eq!(c.flags, UE | PE);
        assert_eq!(fields(r).1, 0);
    }

    #[test]
    fn unsupported_encodings_and_nans() {
        let unnormal = pack(false, 0x4000, 0x4000_0000_0000_0000);
        let mut c = ctx(MASKED);
        assert_eq!(add(unnormal, ONE, &mut c), INDEFINITE);
        assert_eq!(c.flags, IE);
        let snan = pack(false, EXP_MAX, INT_BIT | 1);
        let qnan = pack(true, EXP_MAX, INT_BIT | QUIET | 5);
        let mut c = ctx(MASKED);
        assert_eq!(add(snan, qnan, &mut c), qnan);
        assert_eq!(c.flags, IE);
        let mut c = ctx(MASKED);
        assert_eq!(add(ONE, snan, &mut c), snan | QUIET as u128);
    }

    #[test]
    fn pseudo_denormals_are_denormal_operands_of_normal_value() {
        let pseudo = pack(false, 0, INT_BIT);
        let min_normal = pack(false, 1, INT_BIT);
        let mut c = ctx(MASKED);
        assert_eq!(compare(pseudo, min_normal, false, &mut c), Relation::Equal);
        assert_eq!(c.flags, DE);
        let mut c = ctx(MASKED);
        assert_eq!(add(pseudo, 0, &mut c), min_normal);
    }

    #[test]
    fn integer_conversions() {
        let mut c = ctx(MASKED);
        assert_eq!(to_int(f64_to_80(2.5), 16, &mut c), Some(2));
        assert_eq!(c.flags, PE);
        let mut c = ctx(MASKED);
        assert_eq!(to_int(f64_to_80(-32768.0), 16, &mut c), Some(-32768));
        assert_eq!(to_int(f64_to_80(32768.0), 16, &mut c), None);
        assert_eq!(from_int(i64::MIN), pack(true, (BIAS + 63) as u32, INT_BIT));
    }

    #[test]
    fn stores_to_binary64_round() {
        let three = from_int(3);
        let mut c = ctx(MASKED);
        let third = div(ONE, three, &mut c);
        let mut c = ctx(MASKED);
        let d = to_format::<softfp::F64>(third, &mut c);
        assert_eq!(f64::from_bits(d), 1.0 / 3.0);
        assert_eq!(c.flags, PE);
    }
}
