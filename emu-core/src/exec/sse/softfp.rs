//! IEEE-754 binary32 and binary64 arithmetic in software, with the exact semantics of
//! x86 SSE: MXCSR rounding control, the six sticky exception flags, DAZ and FTZ, x86 NaN
//! propagation and the "indefinite" results.
//!
//! Why not the host FPU: the emulator also runs on aarch64, whose NaN rules, flag
//! semantics and flush-to-zero detection differ from x86, and reading or writing the
//! host's floating-point environment from Rust is not portable. Everything here is
//! integer arithmetic on the encodings, so results are identical on every host.
//!
//! Conventions:
//! * Values travel as raw encodings in a `u64` (binary32 in the low 32 bits), and the
//!   format is a type parameter ([`F32`] or [`F64`]).
//! * Every operation takes an [`Env`] (built from MXCSR) and ORs the exceptions it
//!   detects into [`Env::flags`] using the MXCSR flag bit positions. The caller decides
//!   whether an unmasked flag raises #XM.
//! * Tininess is detected after rounding, as x86 does for SSE; FTZ flushes a tiny result
//!   to zero (setting UE and PE) only when underflow is masked.
//! * Exceptions are reported in the hardware's priority order: an SNaN operand (IE) or a
//!   QNaN operand ends the operation before the denormal-operand check; invalid
//!   operations and divide-by-zero also suppress the denormal flag.

use std::cmp::Ordering;

/// MXCSR: invalid operation.
pub const IE: u32 = 1 << 0;
/// MXCSR: denormal operand.
pub const DE: u32 = 1 << 1;
/// MXCSR: divide by zero.
pub const ZE: u32 = 1 << 2;
/// MXCSR: overflow.
pub const OE: u32 = 1 << 3;
/// MXCSR: underflow.
pub const UE: u32 = 1 << 4;
/// MXCSR: precision (inexact).
pub const PE: u32 = 1 << 5;
/// MXCSR: denormals are zeros (inputs).
pub const DAZ: u32 = 1 << 6;
/// MXCSR: where the six exception mask bits start (mask of flag `f` is `f << MASK_SHIFT`).
pub const MASK_SHIFT: u32 = 7;
/// MXCSR: where the two rounding-control bits start.
pub const RC_SHIFT: u32 = 13;
/// MXCSR: flush to zero (tiny results, when underflow is masked).
pub const FTZ: u32 = 1 << 15;
/// All six exception flags.
pub const ALL_FLAGS: u32 = IE | DE | ZE | OE | UE | PE;

/// A rounding direction, numbered as in MXCSR.RC and the ROUNDPS immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// Round to nearest, ties to even.
    Nearest,
    /// Toward negative infinity.
    Down,
    /// Toward positive infinity.
    Up,
    /// Toward zero (truncate).
    Zero,
}

impl Round {
    /// The rounding direction with MXCSR.RC encoding `rc` (only the low two bits count).
    pub fn from_bits(rc: u32) -> Self {
        match rc & 3 {
            0 => Round::Nearest,
            1 => Round::Down,
            2 => Round::Up,
            _ => Round::Zero,
        }
    }
}

/// The floating-point environment of one instruction, and the flags it raised.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    /// Rounding direction.
    pub round: Round,
    /// Denormal inputs are read as zeros of the same sign (MXCSR.DAZ).
    pub daz: bool,
    /// Tiny results are flushed to zero when underflow is masked (MXCSR.FTZ).
    pub ftz: bool,
    /// MXCSR.UM: changes when underflow is signalled (tiny alone, or tiny and inexact).
    pub underflow_masked: bool,
    /// MXCSR.OM: an unmasked overflow is reported without PE (no result is delivered).
    pub overflow_masked: bool,
    /// Exceptions detected so far (MXCSR flag bit positions).
    pub flags: u32,
}

impl Env {
    /// The environment MXCSR describes, with no flags raised yet.
    pub fn new(mxcsr: u32) -> Self {
        Env {
            round: Round::from_bits(mxcsr >> RC_SHIFT),
            daz: mxcsr & DAZ != 0,
            ftz: mxcsr & FTZ != 0,
            underflow_masked: mxcsr & (UE << MASK_SHIFT) != 0,
            overflow_masked: mxcsr & (OE << MASK_SHIFT) != 0,
            flags: 0,
        }
    }

    /// The same environment with a different rounding direction (truncating
    /// conversions, ROUNDPS with an immediate rounding mode).
    pub fn with_round(mut self, round: Round) -> Self {
        self.round = round;
        self
    }
}

/// A binary floating-point format.
pub trait Format: Copy {
    /// Explicit fraction bits (23 or 52).
    const MANT: u32;
    /// Exponent bits (8 or 11).
    const EXP: u32;
    /// Bits of the encoding.
    const BITS: u32 = 1 + Self::EXP + Self::MANT;
    /// The sign bit.
    const SIGN: u64 = 1 << (Self::MANT + Self::EXP);
    /// The exponent field.
    const EXP_MASK: u64 = ((1 << Self::EXP) - 1) << Self::MANT;
    /// The fraction field.
    const FRAC_MASK: u64 = (1 << Self::MANT) - 1;
    /// The quiet bit of a NaN.
    const QUIET: u64 = 1 << (Self::MANT - 1);
    /// Exponent bias.
    const BIAS: i32 = (1 << (Self::EXP - 1)) - 1;
    /// The x86 "QNaN floating-point indefinite": negative, quiet, zero payload.
    const DEFAULT_NAN: u64 = Self::SIGN | Self::EXP_MASK | Self::QUIET;
    /// The largest finite magnitude.
    const MAX_FINITE: u64 = Self::EXP_MASK - 1;
}

/// IEEE binary32.
#[derive(Clone, Copy, Debug)]
pub struct F32;
/// IEEE binary64.
#[derive(Clone, Copy, Debug)]
pub struct F64;

impl Format for F32 {
    const MANT: u32 = 23;
    const EXP: u32 = 8;
}

impl Format for F64 {
    const MANT: u32 = 52;
    const EXP: u32 = 11;
}

/// Whether `x` is a NaN.
#[inline]
pub fn is_nan<F: Format>(x: u64) -> bool {
    x & F::EXP_MASK == F::EXP_MASK && x & F::FRAC_MASK != 0
}

/// Whether `x` is a signalling NaN.
#[inline]
pub fn is_snan<F: Format>(x: u64) -> bool {
    is_nan::<F>(x) && x & F::QUIET == 0
}

/// Whether `x` is an infinity.
#[inline]
pub fn is_inf<F: Format>(x: u64) -> bool {
    x & !F::SIGN == F::EXP_MASK
}

/// Whether `x` is a zero of either sign.
#[inline]
pub fn is_zero<F: Format>(x: u64) -> bool {
    x & !F::SIGN == 0
}

/// Whether `x` is a denormal (subnormal, non-zero).
#[inline]
pub fn is_denormal<F: Format>(x: u64) -> bool {
    x & F::EXP_MASK == 0 && x & F::FRAC_MASK != 0
}

/// Whether the sign bit of `x` is set.
#[inline]
pub fn is_negative<F: Format>(x: u64) -> bool {
    x & F::SIGN != 0
}

#[inline]
fn signed_zero<F: Format>(negative: bool) -> u64 {
    if negative {
        F::SIGN
    } else {
        0
    }
}

#[inline]
fn signed_inf<F: Format>(negative: bool) -> u64 {
    signed_zero::<F>(negative) | F::EXP_MASK
}

/// `x` with DAZ applied: a denormal becomes a zero of the same sign when DAZ is set.
#[inline]
pub fn daz<F: Format>(x: u64, env: &Env) -> u64 {
    if env.daz && is_denormal::<F>(x) {
        x & F::SIGN
    } else {
        x
    }
}

/// The quiet form of NaN `x`.
#[inline]
fn quiet<F: Format>(x: u64) -> u64 {
    x | F::QUIET
}

/// x86 NaN propagation for a two-operand operation: IE for any SNaN; the result is the
/// first operand if it is a NaN, else the second, quieted. `None` if neither is a NaN.
#[inline]
fn propagate_nan2<F: Format>(a: u64, b: u64, env: &mut Env) -> Option<u64> {
    let a_nan = is_nan::<F>(a);
    let b_nan = is_nan::<F>(b);
    if !a_nan && !b_nan {
        return None;
    }
    if is_snan::<F>(a) || is_snan::<F>(b) {
        env.flags |= IE;
    }
    Some(if a_nan { quiet::<F>(a) } else { quiet::<F>(b) })
}

/// Single-operand NaN propagation.
#[inline]
fn propagate_nan1<F: Format>(a: u64, env: &mut Env) -> Option<u64> {
    if !is_nan::<F>(a) {
        return None;
    }
    if is_snan::<F>(a) {
        env.flags |= IE;
    }
    Some(quiet::<F>(a))
}

/// A finite value split into sign, exponent and integer significand:
/// `value = sig * 2^exp` (a zero has `sig == 0`).
#[inline]
pub(crate) fn unpack<F: Format>(x: u64) -> (bool, i32, u64) {
    let negative = is_negative::<F>(x);
    let e = ((x & F::EXP_MASK) >> F::MANT) as i32;
    let frac = x & F::FRAC_MASK;
    if e == 0 {
        (negative, 1 - F::BIAS - F::MANT as i32, frac)
    } else {
        (
            negative,
            e - F::BIAS - F::MANT as i32,
            frac | (1 << F::MANT),
        )
    }
}

/// Drops the low `drop` bits of `sig` with rounding. Returns the rounded integer and
/// whether anything non-zero was dropped.
#[inline]
pub(crate) fn shift_round(sig: u128, drop: i32, negative: bool, round: Round) -> (u128, bool) {
    if drop <= 0 {
        return (sig << (-drop).min(127) as u32, false);
    }
    let (kept, vs_half, inexact) = if drop >= 127 {
        // Callers keep significands below 2^126, so everything is below half an ulp.
        (0, Ordering::Less, sig != 0)
    } else {
        let kept = sig >> drop;
        let rem = sig & ((1u128 << drop) - 1);
        (kept, rem.cmp(&(1u128 << (drop - 1))), rem != 0)
    };
    if !inexact {
        return (kept, false);
    }
    let up = match round {
        Round::Nearest => {
            vs_half == Ordering::Greater || (vs_half == Ordering::Equal && kept & 1 == 1)
        }
        Round::Zero => false,
        Round::Up => !negative,
        Round::Down => negative,
    };
    (kept + up as u128, true)
}

/// Rounds `(-1)^negative * sig * 2^exp` to format `F` under `env`, raising OE, UE and
/// PE as x86 does. `sig` may carry a sticky bit in its least significant position as long
/// as it then has at least `MANT + 3` significant bits, and must be below 2^126.
pub(crate) fn round_pack<F: Format>(negative: bool, exp: i32, sig: u128, env: &mut Env) -> u64 {
    let sign = signed_zero::<F>(negative);
    if sig == 0 {
        return sign;
    }
    let p = F::MANT as i32;
    let msb = 127 - sig.leading_zeros() as i32;
    // Rounded to MANT+1 bits with an unbounded exponent range: decides overflow and
    // (x86 detects tininess after rounding) underflow.
    let normal_drop = msb - p;
    let (kept, inexact) = shift_round(sig, normal_drop, negative, env.round);
    let carry = (kept >> (p + 1)) as i32;
    let unbounded_exp = exp + normal_drop + p + carry;
    if unbounded_exp > F::BIAS {
        if !env.overflow_masked {
            // No result is delivered; PE tells whether the result rounded with an
            // unbounded exponent was inexact (what x87 would deliver scaled).
            env.flags |= OE | if inexact { PE } else { 0 };
            return sign | F::EXP_MASK;
        }
        env.flags |= OE | PE;
        let to_inf = match env.round {
            Round::Nearest => true,
            Round::Zero => false,
            Round::Up => !negative,
            Round::Down => negative,
        };
        return sign | if to_inf { F::EXP_MASK } else { F::MAX_FINITE };
    }
    if unbounded_exp < 1 - F::BIAS {
        // Tiny.
        if !env.underflow_masked {
            // Signalled whether exact or not, with PE as for an unmasked overflow.
            env.flags |= UE | if inexact { PE } else { 0 };
            return sign;
        }
        if env.ftz {
            env.flags |= UE | PE;
            return sign;
        }
        let drop = (1 - F::BIAS - p) - exp;
        let (kept, inexact) = shift_round(sig, drop, negative, env.round);
        if inexact {
            env.flags |= UE | PE;
        }
        // `kept` may have rounded up to 2^MANT, which is the encoding of the smallest
        // normal number.
        return sign | kept as u64;
    }
    if inexact {
        env.flags |= PE;
    }
    let lsb_exp = exp + normal_drop;
    sign | ((((lsb_exp + p + F::BIAS - 1) as u64) << F::MANT).wrapping_add(kept as u64))
}

/// Sets DE if either operand is a denormal (operands already passed through DAZ).
#[inline]
fn check_denormal2<F: Format>(a: u64, b: u64, env: &mut Env) {
    if is_denormal::<F>(a) || is_denormal::<F>(b) {
        env.flags |= DE;
    }
}

/// `a + b`.
pub fn add<F: Format>(a: u64, b: u64, env: &mut Env) -> u64 {
    add_sub::<F>(a, b, false, env)
}

/// `a - b`.
pub fn sub<F: Format>(a: u64, b: u64, env: &mut Env) -> u64 {
    add_sub::<F>(a, b, true, env)
}

fn add_sub<F: Format>(a: u64, b: u64, subtract: bool, env: &mut Env) -> u64 {
    let a = daz::<F>(a, env);
    let b = daz::<F>(b, env);
    if let Some(nan) = propagate_nan2::<F>(a, b, env) {
        return nan;
    }
    let b = if subtract { b ^ F::SIGN } else { b };
    if is_inf::<F>(a) {
        if is_inf::<F>(b) && (a ^ b) & F::SIGN != 0 {
            env.flags |= IE;
            return F::DEFAULT_NAN;
        }
        check_denormal2::<F>(a, b, env);
        return a;
    }
    check_denormal2::<F>(a, b, env);
    if is_inf::<F>(b) {
        return b;
    }
    let (sa, ea, ma) = unpack::<F>(a);
    let (sb, eb, mb) = unpack::<F>(b);
    if ma == 0 && mb == 0 {
        // The sum of two zeros: their sign if they agree, else +0 (-0 rounding down).
        return if sa == sb {
            a
        } else {
            signed_zero::<F>(env.round == Round::Down)
        };
    }
    if ma == 0 {
        return round_pack::<F>(sb, eb, mb as u128, env);
    }
    if mb == 0 {
        return round_pack::<F>(sa, ea, ma as u128, env);
    }
    // Align both to a common exponent 64 bits below the larger one.
    let (negative, base, sum) = aligned_sum((sa, ea, ma), (sb, eb, mb), 64);
    if sum == 0 {
        return signed_zero::<F>(env.round == Round::Down);
    }
    round_pack::<F>(negative, base, sum, env)
}

/// The exact signed sum of two unpacked finite non-zero values `(sign, exponent,
/// significand)`, aligned to the exponent `headroom` bits below the larger operand's:
/// returns `(sign, exponent of bit 0, magnitude)`. The smaller operand can lose bits only
/// when it lies entirely below the rounding position, where a sticky bit stands in for it.
/// Shared by the SSE and x87 soft-floats (`headroom` 64 and 62).
pub(crate) fn aligned_sum(
    a: (bool, i32, u64),
    b: (bool, i32, u64),
    headroom: u32,
) -> (bool, i32, u128) {
    let (hi, lo) = if a.1 >= b.1 { (a, b) } else { (b, a) };
    let base = hi.1 - headroom as i32;
    let big = (hi.2 as u128) << headroom;
    let shift = lo.1 - base;
    let small = if shift >= 0 {
        (lo.2 as u128) << shift
    } else if -shift >= 127 {
        1
    } else {
        let s = (-shift) as u32;
        let v = (lo.2 as u128) >> s;
        v | ((v << s != lo.2 as u128) as u128)
    };
    let (negative, sum) = if hi.0 == lo.0 {
        (hi.0, big + small)
    } else if big >= small {
        (hi.0, big - small)
    } else {
        (lo.0, small - big)
    };
    (negative, base, sum)
}

/// `a * b`.
pub fn mul<F: Format>(a: u64, b: u64, env: &mut Env) -> u64 {
    let a = daz::<F>(a, env);
    let b = daz::<F>(b, env);
    if let Some(nan) = propagate_nan2::<F>(a, b, env) {
        return nan;
    }
    let negative = (a ^ b) & F::SIGN != 0;
    if is_inf::<F>(a) || is_inf::<F>(b) {
        if is_zero::<F>(a) || is_zero::<F>(b) {
            env.flags |= IE;
            return F::DEFAULT_NAN;
        }
        check_denormal2::<F>(a, b, env);
        return signed_inf::<F>(negative);
    }
    check_denormal2::<F>(a, b, env);
    let (_, ea, ma) = unpack::<F>(a);
    let (_, eb, mb) = unpack::<F>(b);
    if ma == 0 || mb == 0 {
        return signed_zero::<F>(negative);
    }
    round_pack::<F>(negative, ea + eb, ma as u128 * mb as u128, env)
}

/// `a / b`.
pub fn div<F: Format>(a: u64, b: u64, env: &mut Env) -> u64 {
    let a = daz::<F>(a, env);
    let b = daz::<F>(b, env);
    if let Some(nan) = propagate_nan2::<F>(a, b, env) {
        return nan;
    }
    let negative = (a ^ b) & F::SIGN != 0;
    let (a_inf, b_inf) = (is_inf::<F>(a), is_inf::<F>(b));
    let (a_zero, b_zero) = (is_zero::<F>(a), is_zero::<F>(b));
    if (a_inf && b_inf) || (a_zero && b_zero) {
        env.flags |= IE;
        return F::DEFAULT_NAN;
    }
    if b_zero {
        // Division of a finite non-zero value by zero.
        if !a_inf {
            env.flags |= ZE;
        }
        return signed_inf::<F>(negative);
    }
    check_denormal2::<F>(a, b, env);
    if a_inf {
        return signed_inf::<F>(negative);
    }
    if b_inf || a_zero {
        return signed_zero::<F>(negative);
    }
    let (_, ea, ma) = unpack::<F>(a);
    let (_, eb, mb) = unpack::<F>(b);
    // Put the dividend's top bit at 116 and the divisor's at 52 or below: the quotient
    // has at least 64 bits, far more than MANT + 3.
    let sa = 116 - (63 - ma.leading_zeros() as i32);
    let num = (ma as u128) << sa;
    let q = num / mb as u128;
    let r = num % mb as u128;
    round_pack::<F>(negative, ea - sa - eb, q | (r != 0) as u128, env)
}

/// Integer square root of a `u128`, rounded down.
pub(crate) fn isqrt(n: u128) -> u128 {
    if n == 0 {
        return 0;
    }
    // Start above the root and descend with Newton's method; it converges monotonically.
    let bits = 128 - n.leading_zeros();
    let mut x: u128 = 1u128 << bits.div_ceil(2);
    loop {
        let y = (x + n / x) >> 1;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// `sqrt(a)`.
pub fn sqrt<F: Format>(a: u64, env: &mut Env) -> u64 {
    let a = daz::<F>(a, env);
    if let Some(nan) = propagate_nan1::<F>(a, env) {
        return nan;
    }
    if is_zero::<F>(a) {
        return a;
    }
    if is_negative::<F>(a) {
        env.flags |= IE;
        return F::DEFAULT_NAN;
    }
    if is_inf::<F>(a) {
        return a;
    }
    if is_denormal::<F>(a) {
        env.flags |= DE;
    }
    let (_, e, m) = unpack::<F>(a);
    // Scale to an even exponent with the radicand's top bit near 120: the root then has
    // about 60 bits, enough for rounding with a sticky bit.
    let msb = 63 - m.leading_zeros() as i32;
    let mut shift = 120 - msb;
    if (e - shift) & 1 != 0 {
        shift -= 1;
    }
    let radicand = (m as u128) << shift;
    let root = isqrt(radicand);
    let exact = root * root == radicand;
    // The sticky bit sits below a doubled root so it never touches the rounding bits.
    round_pack::<F>(false, (e - shift) / 2 - 1, root << 1 | !exact as u128, env)
}

/// The outcome of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// `a < b`.
    Less,
    /// `a == b` (zeros of either sign are equal).
    Equal,
    /// `a > b`.
    Greater,
    /// At least one operand is a NaN.
    Unordered,
}

/// A key that orders finite and infinite encodings like their values (both zeros map
/// to 0).
#[inline]
fn order_key<F: Format>(x: u64) -> i64 {
    let magnitude = (x & !F::SIGN) as i64;
    if is_negative::<F>(x) {
        -magnitude
    } else {
        magnitude
    }
}

/// Compares `a` with `b`. IE is raised for an SNaN operand, and for a QNaN operand too
/// when `signal_qnan` (the ordered "signalling" predicates, COMISS).
pub fn compare<F: Format>(a: u64, b: u64, signal_qnan: bool, env: &mut Env) -> Relation {
    let a = daz::<F>(a, env);
    let b = daz::<F>(b, env);
    if is_nan::<F>(a) || is_nan::<F>(b) {
        if signal_qnan || is_snan::<F>(a) || is_snan::<F>(b) {
            env.flags |= IE;
        }
        return Relation::Unordered;
    }
    check_denormal2::<F>(a, b, env);
    match order_key::<F>(a).cmp(&order_key::<F>(b)) {
        Ordering::Less => Relation::Less,
        Ordering::Equal => Relation::Equal,
        Ordering::Greater => Relation::Greater,
    }
}

/// MINSS/MINPS semantics: `a < b ? a : b`, so the second operand is returned when either
/// is a NaN (raising IE, even for a QNaN) or both are zeros.
pub fn min<F: Format>(a: u64, b: u64, env: &mut Env) -> u64 {
    min_max::<F>(a, b, false, env)
}

/// MAXSS/MAXPS semantics: `a > b ? a : b`, with the same NaN and zero rules as [`min`].
pub fn max<F: Format>(a: u64, b: u64, env: &mut Env) -> u64 {
    min_max::<F>(a, b, true, env)
}

fn min_max<F: Format>(a: u64, b: u64, want_max: bool, env: &mut Env) -> u64 {
    let a = daz::<F>(a, env);
    let b = daz::<F>(b, env);
    if is_nan::<F>(a) || is_nan::<F>(b) {
        env.flags |= IE;
        return b;
    }
    check_denormal2::<F>(a, b, env);
    let (ka, kb) = (order_key::<F>(a), order_key::<F>(b));
    let a_wins = if want_max { ka > kb } else { ka < kb };
    if a_wins {
        a
    } else {
        b
    }
}

/// Converts between formats (CVTSS2SD, CVTSD2SS, CVTPS2PD, CVTPD2PS). NaN payloads keep
/// their top fraction bits.
pub fn convert<S: Format, D: Format>(a: u64, env: &mut Env) -> u64 {
    let a = daz::<S>(a, env);
    let negative = is_negative::<S>(a);
    if is_nan::<S>(a) {
        if is_snan::<S>(a) {
            env.flags |= IE;
        }
        let frac = a & S::FRAC_MASK;
        let frac = if D::MANT >= S::MANT {
            frac << (D::MANT - S::MANT)
        } else {
            frac >> (S::MANT - D::MANT)
        };
        return signed_zero::<D>(negative) | D::EXP_MASK | D::QUIET | frac;
    }
    if is_inf::<S>(a) {
        return signed_inf::<D>(negative);
    }
    if is_denormal::<S>(a) {
        env.flags |= DE;
    }
    let (_, e, m) = unpack::<S>(a);
    round_pack::<D>(negative, e, m as u128, env)
}

/// Converts a signed integer to format `F` (CVTSI2SS, CVTDQ2PS, ...), raising PE when
/// rounding.
pub fn from_int<F: Format>(v: i64, env: &mut Env) -> u64 {
    round_pack::<F>(v < 0, 0, v.unsigned_abs() as u128, env)
}

/// Converts to a signed `BITS`-bit integer (32 or 64) rounded as `env` says. NaNs,
/// infinities and out-of-range values raise IE and give the integer indefinite
/// (only the sign bit set). The result is returned zero-extended to 64 bits.
pub fn to_int<F: Format, const BITS: u32>(a: u64, env: &mut Env) -> u64 {
    let indefinite = 1u64 << (BITS - 1);
    let a = daz::<F>(a, env);
    if is_nan::<F>(a) || is_inf::<F>(a) {
        env.flags |= IE;
        return indefinite;
    }
    let (negative, e, m) = unpack::<F>(a);
    if m == 0 {
        return 0;
    }
    let (magnitude, inexact) = if e >= 0 {
        if e >= 64 {
            env.flags |= IE;
            return indefinite;
        }
        ((m as u128) << e, false)
    } else {
        shift_round(m as u128, -e, negative, env.round)
    };
    let limit = 1u128 << (BITS - 1);
    if magnitude > limit || (magnitude == limit && !negative) {
        env.flags |= IE;
        return indefinite;
    }
    if inexact {
        env.flags |= PE;
    }
    let v = if negative {
        (magnitude as u64).wrapping_neg()
    } else {
        magnitude as u64
    };
    if BITS == 64 {
        v
    } else {
        v & ((1u64 << BITS) - 1)
    }
}

/// Rounds to an integral value in format `F` (ROUNDSS and friends), in the rounding
/// direction of `env`. PE is raised for inexact results; the caller drops it when the
/// instruction suppresses precision exceptions.
pub fn round_to_integral<F: Format>(a: u64, env: &mut Env) -> u64 {
    let a = daz::<F>(a, env);
    if let Some(nan) = propagate_nan1::<F>(a, env) {
        return nan;
    }
    if is_inf::<F>(a) || is_zero::<F>(a) {
        return a;
    }
    let (negative, e, m) = unpack::<F>(a);
    if e >= 0 {
        return a;
    }
    let (k, inexact) = shift_round(m as u128, -e, negative, env.round);
    if inexact {
        env.flags |= PE;
    }
    if k == 0 {
        return signed_zero::<F>(negative);
    }
    round_pack::<F>(negative, 0, k, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASKED: u32 = 0x1f80;
    const ONE32: u64 = 0x3f80_0000;
    const ONE64: u64 = 0x3ff0_0000_0000_0000;

    fn env(mxcsr: u32) -> Env {
        Env::new(mxcsr)
    }

    fn rc(mode: u32) -> u32 {
        MASKED | mode << RC_SHIFT
    }

    #[test]
    fn one_third_rounds_per_mxcsr_rounding_control() {
        let three = 0x4040_0000;
        // 1/3 = 0x3eaaaaaa.aaa...: nearest and down/zero truncate, up rounds up.
        let expect = [
            (0, 0x3eaa_aaab),
            (1, 0x3eaa_aaaa),
            (2, 0x3eaa_aaab),
            (3, 0x3eaa_aaaa),
        ];
        for (mode, bits) in expect {
            let mut e = env(rc(mode));
            assert_eq!(div::<F32>(ONE32, three, &mut e), bits, "mode {mode}");
            assert_eq!(e.flags, PE);
        }
        // -1/3 rounds the other way for the directed modes.
        let mut e = env(rc(1));
        assert_eq!(div::<F32>(ONE32 | F32::SIGN, three, &mut e), 0xbeaa_aaab);
        let mut e = env(rc(2));
        assert_eq!(div::<F32>(ONE32 | F32::SIGN, three, &mut e), 0xbeaa_aaaa);
    }

    #[test]
    fn ties_round_to_even() {
        // 1 + 2^-24 is exactly halfway between 1 and the next single: stays at 1.
        let mut e = env(MASKED);
        assert_eq!(add::<F32>(ONE32, 0x3380_0000, &mut e), ONE32);
        assert_eq!(e.flags, PE);
        // 1 + 3 * 2^-24 is halfway between two odd/even neighbours: goes to even (up).
        let mut e = env(MASKED);
        assert_eq!(add::<F32>(ONE32, 0x3440_0000, &mut e), 0x3f80_0002);
    }

    #[test]
    fn exact_cancellation_gives_plus_zero_except_rounding_down() {
        for mode in 0..4 {
            let mut e = env(rc(mode));
            let r = sub::<F64>(ONE64, ONE64, &mut e);
            assert_eq!(r, if mode == 1 { F64::SIGN } else { 0 });
            assert_eq!(e.flags, 0);
        }
        let mut e = env(MASKED);
        assert_eq!(add::<F32>(F32::SIGN, F32::SIGN, &mut e), F32::SIGN);
    }

    #[test]
    fn overflow_depends_on_rounding_direction() {
        let max = F32::MAX_FINITE;
        for (mode, expect) in [(0, F32::EXP_MASK), (1, max), (2, F32::EXP_MASK), (3, max)] {
            let mut e = env(rc(mode));
            assert_eq!(add::<F32>(max, max, &mut e), expect, "mode {mode}");
            assert_eq!(e.flags, OE | PE);
        }
        // Negative overflow rounding up stays finite.
        let mut e = env(rc(2));
        assert_eq!(
            mul::<F32>(max | F32::SIGN, 0x4000_0000, &mut e),
            max | F32::SIGN
        );
    }

    #[test]
    fn unmasked_overflow_reports_precision_only_when_inexact() {
        let max = F32::MAX_FINITE;
        let unmask_oe = MASKED & !(OE << MASK_SHIFT);
        let mut e = env(unmask_oe);
        add::<F32>(max, max, &mut e);
        assert_eq!(e.flags, OE, "max + max is exact with an unbounded exponent");
        let mut e = env(unmask_oe);
        mul::<F32>(max, max, &mut e);
        assert_eq!(e.flags, OE | PE);
    }

    #[test]
    fn underflow_is_detected_after_rounding() {
        // (2^-126 - 2^-150) * (1 + 2^-23) rounds up to 2^-126 with an unbounded exponent
        // at single precision... pick a value just below the smallest normal whose
        // rounding to 24 bits reaches it: tiny before rounding, not tiny after.
        let just_below = 0x007f_ffff; // largest denormal, 2^-126 - 2^-149
        let one_plus = 0x3f80_0001; // 1 + 2^-23
        let mut e = env(MASKED);
        let r = mul::<F32>(just_below, one_plus, &mut e);
        // Exact product is 2^-126 - 2^-149 + 2^-149 - 2^-172 = 2^-126 - 2^-172: it rounds
        // to 2^-126, so x86 reports PE (and DE for the denormal input) but not UE.
        assert_eq!(r, 0x0080_0000);
        assert_eq!(e.flags, DE | PE);
    }

    #[test]
    fn tiny_exact_results_raise_nothing_when_masked_but_ue_when_unmasked() {
        let half = 0x3f00_0000;
        let mut e = env(MASKED);
        assert_eq!(mul::<F32>(0x0080_0000, half, &mut e), 0x0040_0000);
        assert_eq!(e.flags, 0);
        let mut e = env(MASKED & !(UE << MASK_SHIFT));
        mul::<F32>(0x0080_0000, half, &mut e);
        assert_eq!(e.flags, UE);
    }

    #[test]
    fn ftz_flushes_tiny_results_with_ue_and_pe() {
        let half = 0x3f00_0000;
        let mut e = env(MASKED | FTZ);
        assert_eq!(mul::<F32>(0x8080_0000, half, &mut e), F32::SIGN);
        assert_eq!(e.flags, UE | PE);
        // FTZ has no effect when underflow is unmasked.
        let mut e = env((MASKED | FTZ) & !(UE << MASK_SHIFT));
        mul::<F32>(0x8080_0000, half, &mut e);
        assert_eq!(e.flags, UE);
    }

    #[test]
    fn daz_reads_denormals_as_signed_zeros_without_de() {
        let denormal = 0x8000_0001;
        let mut e = env(MASKED | DAZ);
        assert_eq!(add::<F32>(denormal, F32::SIGN, &mut e), F32::SIGN);
        assert_eq!(e.flags, 0);
        let mut e = env(MASKED);
        assert_eq!(add::<F32>(denormal, F32::SIGN, &mut e), denormal);
        assert_eq!(e.flags, DE);
        // DAZ: denormal / denormal is 0/0, invalid.
        let mut e = env(MASKED | DAZ);
        assert_eq!(div::<F32>(1, 1, &mut e), F32::DEFAULT_NAN);
        assert_eq!(e.flags, IE);
    }

    #[test]
    fn nan_rules_follow_x86() {
        let qnan_a = 0x7fc0_0001;
        let snan_b = 0xff80_0002;
        let mut e = env(MASKED);
        // Both NaN: the first operand's NaN wins even if only the second is signalling.
        assert_eq!(add::<F32>(qnan_a, snan_b, &mut e), qnan_a);
        assert_eq!(e.flags, IE);
        // An SNaN alone is quieted.
        let mut e = env(MASKED);
        assert_eq!(mul::<F32>(ONE32, snan_b, &mut e), 0xffc0_0002);
        assert_eq!(e.flags, IE);
        // Invalid operations give the negative default NaN.
        let mut e = env(MASKED);
        assert_eq!(
            sub::<F64>(F64::EXP_MASK, F64::EXP_MASK, &mut e),
            0xfff8_0000_0000_0000
        );
        let mut e = env(MASKED);
        assert_eq!(sqrt::<F32>(0xbf80_0000, &mut e), 0xffc0_0000);
        assert_eq!(e.flags, IE);
        // A QNaN operand suppresses the denormal check.
        let mut e = env(MASKED);
        add::<F32>(qnan_a, 1, &mut e);
        assert_eq!(e.flags, 0);
        // Subtraction keeps the NaN's sign.
        let mut e = env(MASKED);
        assert_eq!(sub::<F32>(ONE32, 0x7fc0_0000, &mut e), 0x7fc0_0000);
    }

    #[test]
    fn division_by_zero_and_sqrt_of_minus_zero() {
        let mut e = env(MASKED);
        assert_eq!(
            div::<F64>(ONE64 | F64::SIGN, 0, &mut e),
            F64::SIGN | F64::EXP_MASK
        );
        assert_eq!(e.flags, ZE);
        let mut e = env(MASKED);
        assert_eq!(sqrt::<F64>(F64::SIGN, &mut e), F64::SIGN);
        assert_eq!(e.flags, 0);
        let mut e = env(MASKED);
        assert_eq!(
            sqrt::<F64>(0x4010_0000_0000_0000, &mut e),
            0x4000_0000_0000_0000
        );
        assert_eq!(e.flags, 0);
        let mut e = env(rc(2));
        // sqrt(2) rounded up.
        assert_eq!(
            sqrt::<F64>(0x4000_0000_0000_0000, &mut e),
            0x3ff6_a09e_667f_3bcd
        );
        assert_eq!(e.flags, PE);
    }

    #[test]
    fn min_max_return_the_second_operand_for_nans_and_zeros() {
        let mut e = env(MASKED);
        assert_eq!(min::<F32>(0, F32::SIGN, &mut e), F32::SIGN);
        assert_eq!(min::<F32>(F32::SIGN, 0, &mut e), 0);
        assert_eq!(e.flags, 0);
        let snan = 0x7f80_0001;
        assert_eq!(max::<F32>(0x7fc0_0000, ONE32, &mut e), ONE32);
        assert_eq!(max::<F32>(ONE32, snan, &mut e), snan, "returned unquieted");
        assert_eq!(e.flags, IE);
        let mut e = env(MASKED);
        assert_eq!(max::<F32>(0xbf80_0000, ONE32, &mut e), ONE32);
        assert_eq!(min::<F32>(0xbf80_0000, ONE32, &mut e), 0xbf80_0000);
    }

    #[test]
    fn integer_conversions_round_and_give_the_indefinite() {
        let two_and_half = 0x4020_0000;
        for (mode, expect) in [(0, 2), (1, 2), (2, 3), (3, 2)] {
            let mut e = env(rc(mode));
            assert_eq!(to_int::<F32, 32>(two_and_half, &mut e), expect);
            assert_eq!(e.flags, PE);
        }
        let mut e = env(rc(1));
        assert_eq!(
            to_int::<F32, 32>(two_and_half | F32::SIGN, &mut e),
            (-3i32) as u32 as u64
        );
        // 2^31 does not fit; -2^31 does.
        let mut e = env(MASKED);
        assert_eq!(to_int::<F32, 32>(0x4f00_0000, &mut e), 0x8000_0000);
        assert_eq!(e.flags, IE);
        let mut e = env(MASKED);
        assert_eq!(to_int::<F32, 32>(0xcf00_0000, &mut e), 0x8000_0000);
        assert_eq!(e.flags, 0);
        let mut e = env(MASKED);
        assert_eq!(to_int::<F64, 64>(0x7ff8_0000_0000_0000, &mut e), 1 << 63);
        assert_eq!(e.flags, IE);
        // Truncation toward zero of a value just below -2^31 - 1 is still in range when it
        // truncates to -2^31.
        let mut e = env(rc(3));
        assert_eq!(
            to_int::<F64, 32>(0xc1e0_0000_000f_ffff, &mut e),
            0x8000_0000
        );
        assert_eq!(e.flags, PE);
    }

    #[test]
    fn int_to_float_rounds_large_values() {
        let mut e = env(MASKED);
        // 2^24 + 1 is not a single: ties to even gives 2^24.
        assert_eq!(from_int::<F32>((1 << 24) + 1, &mut e), 0x4b80_0000);
        assert_eq!(e.flags, PE);
        let mut e = env(rc(2));
        assert_eq!(from_int::<F32>((1 << 24) + 1, &mut e), 0x4b80_0001);
        let mut e = env(MASKED);
        assert_eq!(from_int::<F64>(i64::MIN, &mut e), 0xc3e0_0000_0000_0000);
        assert_eq!(e.flags, 0);
    }

    #[test]
    fn format_conversion_keeps_nan_payloads_and_reports_denormals() {
        let mut e = env(MASKED);
        assert_eq!(
            convert::<F32, F64>(0x7f80_0001, &mut e),
            0x7ff8_0000_2000_0000
        );
        assert_eq!(e.flags, IE);
        let mut e = env(MASKED);
        assert_eq!(
            convert::<F64, F32>(0xfff8_0000_2000_0001, &mut e),
            0xffc0_0001
        );
        let mut e = env(MASKED);
        assert_eq!(convert::<F32, F64>(1, &mut e), 0x36a0_0000_0000_0000);
        assert_eq!(e.flags, DE);
        // A double too small for a single underflows to zero with UE and PE.
        let mut e = env(MASKED);
        assert_eq!(convert::<F64, F32>(0x3000_0000_0000_0000, &mut e), 0);
        assert_eq!(e.flags, UE | PE);
    }

    #[test]
    fn round_to_integral_uses_the_given_direction() {
        let minus_half = 0xbf00_0000;
        for (mode, expect) in [
            (0, F32::SIGN),
            (1, 0xbf80_0000),
            (2, F32::SIGN),
            (3, F32::SIGN),
        ] {
            let mut e = env(rc(mode));
            assert_eq!(
                round_to_integral::<F32>(minus_half, &mut e),
                expect,
                "mode {mode}"
            );
            assert_eq!(e.flags, PE);
        }
        let mut e = env(MASKED);
        assert_eq!(
            round_to_integral::<F64>(0x4330_0000_0000_0001, &mut e),
            0x4330_0000_0000_0001
        );
        assert_eq!(e.flags, 0);
    }

    #[test]
    fn compare_signals_qnan_only_when_asked() {
        let mut e = env(MASKED);
        assert_eq!(
            compare::<F32>(0x7fc0_0000, ONE32, false, &mut e),
            Relation::Unordered
        );
        assert_eq!(e.flags, 0);
        assert_eq!(
            compare::<F32>(0x7fc0_0000, ONE32, true, &mut e),
            Relation::Unordered
        );
        assert_eq!(e.flags, IE);
        let mut e = env(MASKED);
        assert_eq!(compare::<F32>(0, F32::SIGN, true, &mut e), Relation::Equal);
        assert_eq!(
            compare::<F32>(0xbf80_0000, F32::SIGN, true, &mut e),
            Relation::Less
        );
    }
}
