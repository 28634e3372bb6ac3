//! SSE-family differential cases (SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2).
//!
//! One randomized [`Form`] per SSE-family opcode-table entry, built from the instruction's
//! own operand description (iced's `OpCodeInfo`), so a handler registered later is covered
//! without editing this file. Each case picks random XMM0-15 / GPR operands, a memory
//! operand in the operand zone (aligned, or misaligned to check #GP(0) on the aligned
//! forms and the unaligned forms' reach), random immediates (edge values forced in), XMM
//! contents made of NaNs (quiet and signalling), denormals, infinities, zeros of both signs
//! and rounding-sensitive values, and an MXCSR drawn from every rounding mode and DAZ/FTZ
//! combination, sometimes with exceptions unmasked (so #XM and its flag updates are
//! compared too).
//!
//! RCPPS/RCPSS/RSQRTPS/RSQRTSS are approximations whose exact bits differ between CPU
//! models, so besides the generic forms (which compare only special inputs exactly, see
//! [`approximation_case`]) their accuracy is checked against the architectural bound by
//! code that runs on both sides.

use emu_core::insn::OpTable;
use iced_x86::{
    Code, CpuidFeature, Instruction, Mnemonic, OpCodeOperandKind as K, OpKind, Register,
};
use proptest::prelude::*;

use crate::harness::{self, gen, Case, Feature, Form, OPERAND_ZONE};

/// Mnemonics of SSE-family instructions without an XMM operand.
const NON_XMM_MNEMONICS: &[Mnemonic] = &[
    Mnemonic::Crc32,
    Mnemonic::Ldmxcsr,
    Mnemonic::Stmxcsr,
    Mnemonic::Movnti,
    Mnemonic::Lfence,
    Mnemonic::Sfence,
    Mnemonic::Mfence,
    Mnemonic::Prefetchnta,
    Mnemonic::Prefetcht0,
    Mnemonic::Prefetcht1,
    Mnemonic::Prefetcht2,
    Mnemonic::Prefetch,
    Mnemonic::Prefetchw,
    Mnemonic::Clflush,
];

/// Whether `code` is an SSE-family instruction (and so has its cases here).
fn is_sse(code: Code) -> bool {
    let info = code.op_code();
    let has_xmm = (0..info.op_count())
        .any(|k| matches!(info.op_kind(k), K::xmm_reg | K::xmm_rm | K::xmm_or_mem));
    has_xmm
        || NON_XMM_MNEMONICS.contains(&code.mnemonic())
        || format!("{code:?}").starts_with("Prefetchreserved")
}

/// Host features a code needs.
fn features(code: Code) -> Vec<Feature> {
    code.cpuid_features()
        .iter()
        .filter_map(|f| match f {
            CpuidFeature::SSE3 => Some(Feature::Sse3),
            CpuidFeature::SSSE3 => Some(Feature::Ssse3),
            CpuidFeature::SSE4_1 => Some(Feature::Sse41),
            CpuidFeature::SSE4_2 => Some(Feature::Sse42),
            _ => None,
        })
        .collect()
}

/// What the lanes of an instruction's XMM operands hold, judged from its mnemonic.
#[derive(Clone, Copy)]
enum Lanes {
    Single,
    Double,
    Integer,
}

fn lanes(code: Code) -> Lanes {
    let m = format!("{:?}", code.mnemonic()).to_lowercase();
    let single =
        ["ps", "ss"].iter().any(|s| m.ends_with(s)) || m.starts_with("cvtss") || m == "cvtdq2pd";
    let double = ["pd", "sd"].iter().any(|s| m.ends_with(s)) || m.starts_with("cvtsd");
    if m.starts_with('p') && !m.starts_with("pcmpe") && !m.starts_with("pcmpi") {
        Lanes::Integer
    } else if single {
        Lanes::Single
    } else if double {
        Lanes::Double
    } else {
        Lanes::Integer
    }
}

/// The random material of one case; [`build_case`] turns it into instruction and state.
#[derive(Clone, Debug)]
struct Raw {
    choices: u64,
    xmm: [u128; 16],
    gpr: [u64; 16],
    mxcsr: u32,
    rflags: u64,
    imm: u8,
    mem: [u128; 2],
    mxcsr_image: u32,
}

/// A tiny deterministic chooser fed by [`Raw::choices`].
struct Chooser(u64);

impl Chooser {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const XMMS: [Register; 16] = [
    Register::XMM0,
    Register::XMM1,
    Register::XMM2,
    Register::XMM3,
    Register::XMM4,
    Register::XMM5,
    Register::XMM6,
    Register::XMM7,
    Register::XMM8,
    Register::XMM9,
    Register::XMM10,
    Register::XMM11,
    Register::XMM12,
    Register::XMM13,
    Register::XMM14,
    Register::XMM15,
];

/// GPR numbers an operand may name: all but RSP.
const GPRS: [usize; 15] = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fn gpr_name(n: usize, bits: u32) -> Register {
    // iced orders the byte registers AL..BL, AH..BH, SPL..DIL, R8L..R15L; the others are
    // in encoding order.
    let idx = match bits {
        8 if n < 4 => Register::AL as usize + n,
        8 if n < 8 => Register::SPL as usize + (n - 4),
        8 => Register::R8L as usize + (n - 8),
        16 => Register::AX as usize + n,
        32 => Register::EAX as usize + n,
        _ => Register::RAX as usize + n,
    };
    Register::values()
        .nth(idx)
        .expect("register index in range")
}

/// Where a case's memory operand is, relative to [`OPERAND_ZONE`].
const MEM_OFFSET: u64 = 0x100;

/// Builds the instruction for `code` from the choices, or `None` if an operand kind is one
/// this generator does not produce.
fn build_instruction(
    code: Code,
    c: &mut Chooser,
    use_mem: bool,
    misalign: u64,
    imm: u8,
) -> Option<Instruction> {
    let info = code.op_code();
    let mut ins = Instruction::default();
    ins.set_code(code);
    let addr = OPERAND_ZONE + MEM_OFFSET + misalign;
    // Absolute [disp32] operands, with 64-bit addressing or (0x67) 32-bit addressing.
    let displ_size = if c.next(4) == 0 { 4 } else { 8 };
    let set_mem = |ins: &mut Instruction, k: u32| {
        ins.set_op_kind(k, OpKind::Memory);
        ins.set_memory_base(Register::None);
        ins.set_memory_index(Register::None);
        ins.set_memory_displ_size(displ_size);
        ins.set_memory_displacement64(addr);
    };
    for k in 0..info.op_count() {
        let kind = info.op_kind(k);
        let reg = |ins: &mut Instruction, r: Register| {
            ins.set_op_kind(k, OpKind::Register);
            ins.set_op_register(k, r);
        };
        let gpr =
            |c: &mut Chooser, bits: u32| gpr_name(GPRS[c.next(GPRS.len() as u64) as usize], bits);
        match kind {
            // `*_rm` kinds name a register in the ModRM r/m field; `*_or_mem` kinds may be
            // memory.
            K::xmm_reg | K::xmm_rm => reg(&mut ins, XMMS[c.next(16) as usize]),
            K::xmm_or_mem => {
                if use_mem {
                    set_mem(&mut ins, k)
                } else {
                    reg(&mut ins, XMMS[c.next(16) as usize])
                }
            }
            K::mem => set_mem(&mut ins, k),
            K::r32_reg | K::r32_rm | K::r32_reg_mem => reg(&mut ins, gpr(c, 32)),
            K::r64_reg | K::r64_rm | K::r64_reg_mem => reg(&mut ins, gpr(c, 64)),
            K::r16_rm => reg(&mut ins, gpr(c, 16)),
            K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem => {
                if use_mem {
                    set_mem(&mut ins, k)
                } else {
                    let bits = match kind {
                        K::r8_or_mem => 8,
                        K::r16_or_mem => 16,
                        K::r32_or_mem => 32,
                        _ => 64,
                    };
                    reg(&mut ins, gpr(c, bits))
                }
            }
            K::imm8 => {
                ins.set_op_kind(k, OpKind::Immediate8);
                ins.set_immediate8(imm);
            }
            K::seg_rDI => ins.set_op_kind(k, OpKind::MemorySegRDI),
            _ => return None,
        }
    }
    Some(ins)
}

/// Whether `code` has a memory form among its operands (or only one).
fn memory_forms(code: Code) -> (bool, bool) {
    let info = code.op_code();
    let mut optional = false;
    let mut required = false;
    for k in 0..info.op_count() {
        match info.op_kind(k) {
            K::xmm_or_mem | K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem => {
                optional = true
            }
            K::mem => required = true,
            _ => {}
        }
    }
    (optional, required)
}

/// Turns raw material into a case for `code`.
fn build_case(code: Code, raw: &Raw) -> Case {
    let mut c = Chooser(raw.choices);
    let (optional, required) = memory_forms(code);
    let use_mem = required || (optional && c.next(3) == 0);
    // One memory case in six is misaligned: #GP(0) for the aligned forms.
    let misalign = if use_mem && c.next(6) == 0 {
        1 + c.next(15)
    } else {
        0
    };
    let ins = build_instruction(code, &mut c, use_mem, misalign, raw.imm)
        .unwrap_or_else(|| panic!("{code:?}: operand kinds this generator cannot build"));
    let bytes = harness::encode(&[ins]).unwrap_or_else(|e| panic!("{code:?}: {e}"));
    let mut case = Case::new(format!("{code:?}"), bytes);
    case.init.xmm = raw.xmm;
    case.init.gpr[..16].copy_from_slice(&raw.gpr);
    case.init.gpr[4] = harness::DEFAULT_RSP;
    // MASKMOVDQU stores at RDI: somewhere in the operand zone, at any alignment.
    if code == Code::Maskmovdqu_rDI_xmm_xmm {
        case.init.gpr[7] = OPERAND_ZONE + 0x200 + (raw.gpr[7] & 0x3f);
    }
    case.init.rflags = raw.rflags;
    case.init.mxcsr = raw.mxcsr;
    let addr = OPERAND_ZONE + MEM_OFFSET + misalign;
    case.write_u128(addr, raw.mem[0]);
    case.write_u128(addr + 16, raw.mem[1]);
    if code == Code::Ldmxcsr_m32 {
        case.write_int(addr, raw.mxcsr_image as u64, 4);
    }
    if matches!(
        code.mnemonic(),
        Mnemonic::Rcpps | Mnemonic::Rcpss | Mnemonic::Rsqrtps | Mnemonic::Rsqrtss
    ) {
        approximation_case(&mut case, &ins, use_mem, addr);
    }
    case
}

/// Special inputs, for which RCP/RSQRT results are exact on every CPU: zeros, infinities,
/// NaNs and denormals (the latter read as zeros).
const APPROX_SPECIALS: [u32; 10] = [
    0x0000_0000,
    0x8000_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc1_2345,
    0x7f80_0001,
    0x0000_0001,
    0x807f_ffff,
    0x8040_0000,
];

/// Makes an RCP/RSQRT case compare exactly: every single its source reads becomes a
/// special input (same choice on both sides). The approximations of ordinary numbers are
/// checked by [`approximations_meet_the_architectural_bound`].
fn approximation_case(case: &mut Case, ins: &Instruction, use_mem: bool, addr: u64) {
    let pick = |v: u128| -> u128 {
        (0..4).fold(0u128, |acc, k| {
            let sel = ((v >> (32 * k)) as usize) % APPROX_SPECIALS.len();
            acc | (APPROX_SPECIALS[sel] as u128) << (32 * k)
        })
    };
    if use_mem {
        let v = pick(case.init.xmm[0] ^ 0x5555);
        case.write_u128(addr, v);
    } else {
        let src = ins.op_register(1);
        let n = src as usize - Register::XMM0 as usize;
        case.init.xmm[n] = pick(case.init.xmm[n]);
    }
}

/// The raw material of a case from two seeds. The values are drawn here rather than
/// composed from proptest strategies: the composed value trees of sixteen XMM registers,
/// sixteen GPRs and memory are large enough to overflow a test thread's stack.
fn raw_strategy(code: Code) -> impl Strategy<Value = Raw> {
    let l = lanes(code);
    (any::<u64>(), any::<u64>()).prop_map(move |(a, b)| Raw::generate(l, a, b))
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Integer values at the edges of every lane width.
const INT_EDGES: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    0x5555_5555_5555_5555,
];

fn f32_value(r: &mut Rng) -> u32 {
    match r.below(8) {
        0..=3 => r.pick(&gen::F32_EDGES),
        4 | 5 => (0x3000_0000 + r.below(0x2000_0000) as u32) | ((r.below(2) as u32) << 31),
        // Tiny and huge exponents, for underflow and overflow.
        6 => {
            let e = r.pick(&[1u32, 2, 3, 0x68, 0x69, 0xfd, 0xfe]);
            (e << 23) | (r.next() as u32 & 0x807f_ffff)
        }
        _ => r.next() as u32,
    }
}

fn f64_value(r: &mut Rng) -> u64 {
    match r.below(8) {
        0..=3 => r.pick(&gen::F64_EDGES),
        4 | 5 => (0x3c00_0000_0000_0000 + r.below(0x0800_0000_0000_0000)) | (r.below(2) << 63),
        6 => {
            let e = r.pick(&[1u64, 2, 3, 0x369, 0x36a, 0x380, 0x47f, 0x7fd, 0x7fe]);
            (e << 52) | (r.next() & 0x800f_ffff_ffff_ffff)
        }
        _ => r.next(),
    }
}

fn int_value(r: &mut Rng) -> u64 {
    match r.below(4) {
        0 => r.pick(&INT_EDGES),
        1 => r.pick(&INT_EDGES).wrapping_neg(),
        2 => 1 << r.below(64),
        _ => r.next(),
    }
}

fn xmm_value(r: &mut Rng, l: Lanes) -> u128 {
    // Mostly the instruction's own lane type, sometimes another.
    let l = match r.below(6) {
        0 => Lanes::Single,
        1 => Lanes::Double,
        2 => Lanes::Integer,
        _ => l,
    };
    match l {
        Lanes::Single => (0..4).fold(0, |a, k| a | (f32_value(r) as u128) << (32 * k)),
        Lanes::Double => f64_value(r) as u128 | (f64_value(r) as u128) << 64,
        Lanes::Integer => match r.below(4) {
            0 | 1 => {
                // Edge values in lanes of one width.
                let width = r.pick(&[8u32, 16, 32, 64]);
                (0..128 / width).fold(0u128, |a, k| {
                    let v = int_value(r) as u128 & ((1u128 << width) - 1);
                    a | v << (width * k)
                })
            }
            // Text for the string compares: letters, digits, zeros (terminators).
            2 => u128::from_le_bytes(std::array::from_fn(|_| {
                r.pick(&[0u8, b'a', b'b', b'z', b'A', b'0', b'9', 0x7f, 0x80, 0xff])
            })),
            _ => r.next() as u128 | (r.next() as u128) << 64,
        },
    }
}

/// MXCSR: every rounding mode and DAZ/FTZ combination, sticky flags, and in a quarter of
/// the cases random exception masks (so #XM happens).
fn mxcsr_value(r: &mut Rng) -> u32 {
    match r.below(8) {
        0..=2 => 0x1f80,
        3..=5 => 0x1f80 | (r.next() as u32 & (0x3f | 1 << 6 | 3 << 13 | 1 << 15)),
        _ => r.next() as u32 & 0xffff,
    }
}

impl Raw {
    fn generate(l: Lanes, a: u64, b: u64) -> Raw {
        let mut r = Rng(a ^ b.rotate_left(32));
        let xmm = std::array::from_fn(|_| xmm_value(&mut r, l));
        let gpr = std::array::from_fn(|_| match r.below(5) {
            // Small signed lengths for PCMPESTRx (and small integers for conversions).
            0 | 1 => (r.below(40) as i64 - 20) as u64,
            2 | 3 => int_value(&mut r),
            _ => r.next(),
        });
        let mxcsr = mxcsr_value(&mut r);
        let imm = if r.below(5) < 2 {
            r.pick(&[
                0u8, 1, 2, 3, 4, 7, 8, 0x0c, 0x10, 0x1b, 0x40, 0x4e, 0x80, 0xe4, 0xff, 15, 16, 17,
                31, 32, 33, 63, 64,
            ])
        } else {
            r.next() as u8
        };
        let mem = [xmm_value(&mut r, l), xmm_value(&mut r, l)];
        let mxcsr_image = if r.below(5) == 0 {
            // Reserved bits (not bit 17, which AMD hosts accept as MisAlignSse).
            mxcsr_value(&mut r) | r.pick(&[1u32 << 16, 1 << 18, 1 << 31, 0xfffd_0000])
        } else {
            mxcsr_value(&mut r)
        };
        Raw {
            choices: r.next(),
            xmm,
            gpr,
            mxcsr,
            rflags: (r.next() & harness::SETTABLE_FLAGS) | harness::FIXED_FLAGS,
            imm,
            mem,
            mxcsr_image,
        }
    }
}

/// The form testing `code`.
fn form(code: Code) -> Form {
    Form::new(
        format!("{code:?}"),
        raw_strategy(code).prop_map(move |raw| build_case(code, &raw)),
    )
    .requires(&features(code))
}

/// Every SSE-family opcode-table entry.
fn sse_codes() -> Vec<Code> {
    OpTable::global().codes().filter(|&c| is_sse(c)).collect()
}

/// Every SSE form, for the coverage test.
pub fn forms() -> Vec<Form> {
    sse_codes().into_iter().map(form).collect()
}

/// The forms whose code needs exactly the extension `feature` (or none of the listed ones
/// when `None`: SSE and SSE2).
fn forms_of(feature: Option<CpuidFeature>) -> Vec<Form> {
    let listed = [
        CpuidFeature::SSE3,
        CpuidFeature::SSSE3,
        CpuidFeature::SSE4_1,
        CpuidFeature::SSE4_2,
    ];
    sse_codes()
        .into_iter()
        .filter(|c| {
            let f = c.cpuid_features();
            match feature {
                Some(want) => f.contains(&want),
                None => !f.iter().any(|x| listed.contains(x)),
            }
        })
        .map(form)
        .collect()
}

/// Runs `forms` on a thread with a roomy stack: proptest builds the value trees of these
/// wide strategies on the stack, more than a test thread's default 2 MiB.
fn run_forms_with_big_stack(forms: impl FnOnce() -> Vec<Form> + Send + 'static) {
    let worker = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || harness::run_forms(forms()))
        .expect("spawn test thread");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn sse_and_sse2_agree_with_the_host() {
    run_forms_with_big_stack(|| forms_of(None));
}

#[test]
fn sse3_agrees_with_the_host() {
    run_forms_with_big_stack(|| forms_of(Some(CpuidFeature::SSE3)));
}

#[test]
fn ssse3_agrees_with_the_host() {
    run_forms_with_big_stack(|| forms_of(Some(CpuidFeature::SSSE3)));
}

#[test]
fn sse41_agrees_with_the_host() {
    run_forms_with_big_stack(|| forms_of(Some(CpuidFeature::SSE4_1)));
}

#[test]
fn sse42_agrees_with_the_host() {
    run_forms_with_big_stack(|| forms_of(Some(CpuidFeature::SSE4_2)));
}

/// RCP/RSQRT of ordinary numbers: the code itself measures `x * r` (or `x * r * r`)
/// against 1 and compares the error with the architectural bound (1.5 * 2^-12 relative for
/// the approximation, so 2^-11 and 2^-10 with slack), producing a lane mask both sides
/// must agree on. The approximation register itself is not compared; MXCSR is reloaded so
/// the flags of the checking arithmetic (which depend on the approximation) do not count.
#[test]
fn approximations_meet_the_architectural_bound() {
    run_forms_with_big_stack(approximation_forms);
}

/// The forms of [`approximations_meet_the_architectural_bound`].
fn approximation_forms() -> Vec<Form> {
    use iced_x86::code_asm::*;
    const ONE: u64 = OPERAND_ZONE + 0x400;
    const ABS: u64 = ONE + 16;
    const BOUND: u64 = ONE + 32;
    const MXCSR: u64 = ONE + 48;
    let ordinary = proptest::array::uniform4((any::<bool>(), 0x0100_0000u32..0x7e00_0000))
        .prop_map(|l| {
            l.iter().enumerate().fold(0u128, |a, (k, &(s, m))| {
                a | ((m | (s as u32) << 31) as u128) << (32 * k)
            })
        });
    let mut forms = Vec::new();
    for (name, rsqrt) in [("rcpps accuracy", false), ("rsqrtps accuracy", true)] {
        let cases = (ordinary.clone(), gen::mxcsr_masked()).prop_map(move |(x, mx)| {
            let code = harness::asm(|a| {
                if rsqrt {
                    a.andps(xmm0, xmmword_ptr(ABS))?;
                    a.rsqrtps(xmm1, xmm0)?;
                } else {
                    a.rcpps(xmm1, xmm0)?;
                }
                a.ldmxcsr(dword_ptr(MXCSR))?;
                a.movaps(xmm2, xmm1)?;
                a.mulps(xmm2, xmm0)?;
                if rsqrt {
                    a.mulps(xmm2, xmm1)?;
                }
                a.subps(xmm2, xmmword_ptr(ONE))?;
                a.andps(xmm2, xmmword_ptr(ABS))?;
                a.cmpleps(xmm2, xmmword_ptr(BOUND))?;
                a.ldmxcsr(dword_ptr(MXCSR))
            });
            let mut case = Case::new(name, code);
            case.init.xmm[0] = x;
            case.init.mxcsr = mx;
            let splat = |v: u32| (0..4).fold(0u128, |a, k| a | (v as u128) << (32 * k));
            case.write_u128(ONE, splat(0x3f80_0000));
            case.write_u128(ABS, splat(0x7fff_ffff));
            // 2^-11 (RCP) and 2^-10 (RSQRT, whose error doubles in x * r * r): the bound
            // 1.5 * 2^-12 plus rounding slack.
            case.write_u128(BOUND, splat(if rsqrt { 0x3a80_0000 } else { 0x3a00_0000 }));
            case.write_int(MXCSR, 0x1f80, 4);
            case.undefined_xmm[1] = u128::MAX;
            case
        });
        forms.push(Form::new(name, cases));
    }
    forms
}

/// Targeted cases the random forms reach only rarely.
#[test]
fn sse_edge_cases_agree_with_the_host() {
    use iced_x86::code_asm::*;
    let zone = OPERAND_ZONE + 0x800;
    let mut cases = Vec::new();
    // Misaligned MOVAPS load and store, aligned MOVUPS at a page-crossing-free offset.
    cases.push(Case::new(
        "movaps misaligned load",
        harness::asm(|a| a.movaps(xmm1, xmmword_ptr(zone + 8))),
    ));
    cases.push(Case::new(
        "movaps misaligned store",
        harness::asm(|a| a.movaps(xmmword_ptr(zone + 4), xmm1)),
    ));
    cases.push(Case::new(
        "movups misaligned",
        harness::asm(|a| {
            a.movups(xmm1, xmmword_ptr(zone + 3))?;
            a.movups(xmmword_ptr(zone + 0x31), xmm1)
        }),
    ));
    cases.push(Case::new(
        "addps misaligned",
        harness::asm(|a| a.addps(xmm1, xmmword_ptr(zone + 8))),
    ));
    cases.push(Case::new(
        "addss misaligned is fine",
        harness::asm(|a| a.addss(xmm1, dword_ptr(zone + 1))),
    ));
    // LDMXCSR: reserved bit -> #GP(0); valid values round-trip through STMXCSR.
    let mut c = Case::new(
        "ldmxcsr reserved",
        harness::asm(|a| a.ldmxcsr(dword_ptr(zone))),
    );
    c.write_int(zone, 0x1_1f80, 4);
    cases.push(c);
    let mut c = Case::new(
        "ldmxcsr stmxcsr",
        harness::asm(|a| {
            a.ldmxcsr(dword_ptr(zone))?;
            a.stmxcsr(dword_ptr(zone + 4))
        }),
    );
    c.write_int(zone, 0xffff, 4);
    cases.push(c);
    // Unmasked exceptions: #XM with the flags recorded and the destination untouched.
    for (name, mxcsr, a_bits, b_bits) in [
        (
            "divps by zero, ZM clear",
            0x1f80 & !(1 << 9),
            0x3f80_0000u32,
            0u32,
        ),
        (
            "addps overflow, OM clear",
            0x1f80 & !(1 << 10),
            0x7f7f_ffff,
            0x7f7f_ffff,
        ),
        (
            "mulps underflow, UM clear, exact",
            0x1f80 & !(1 << 11),
            0x0080_0000,
            0x3f00_0000,
        ),
        (
            "mulps underflow, UM clear, FTZ",
            0x9f80 & !(1 << 11),
            0x0080_0001,
            0x3f00_0000,
        ),
        (
            "mulps underflow, UM clear, inexact",
            0x1f80 & !(1 << 11),
            0x0080_0001,
            0x3f00_0001,
        ),
        (
            "mulps underflow, UM clear, inexact only when denormal",
            0x1f80 & !(1 << 11),
            0x00c0_0001,
            0x3f00_0000,
        ),
        (
            "mulps overflow, OM clear, FTZ",
            0x9f80 & !(1 << 10),
            0x7f00_0001,
            0x4000_0001,
        ),
        (
            "addps inexact, PM clear",
            0x1f80 & !(1 << 12),
            0x3f80_0000,
            0x3300_0001,
        ),
        (
            "addps denormal, DM clear, inexact too",
            0x1f80 & !(1 << 8),
            0x0000_0001,
            0x3f80_0000,
        ),
        (
            "addps SNaN, IM clear",
            0x1f80 & !(1 << 7),
            0x7f80_0001,
            0x3f80_0000,
        ),
        (
            "addps SNaN masked, PM clear",
            0x1f80 & !(1 << 12),
            0x7f80_0001,
            0x3f80_0000,
        ),
    ] {
        for op in 0..2 {
            let code = harness::asm(|a| {
                if op == 0 {
                    a.addps(xmm1, xmm2)
                } else {
                    a.mulps(xmm1, xmm2)
                }
            });
            let code = if name.starts_with("div") {
                harness::asm(|a| a.divps(xmm1, xmm2))
            } else {
                code
            };
            let mut c = Case::new(format!("{name} ({op})"), code);
            c.init.mxcsr = mxcsr;
            let splat = |v: u32| (0..4).fold(0u128, |a, k| a | (v as u128) << (32 * k));
            c.init.xmm[1] = splat(a_bits);
            c.init.xmm[2] = splat(b_bits) ^ 0x8000_0000 << 64;
            cases.push(c);
        }
    }
    // COMISS with an unmasked invalid: EFLAGS must not change.
    let mut c = Case::new(
        "comiss qnan, IM clear",
        harness::asm(|a| a.comiss(xmm1, xmm2)),
    );
    c.init.mxcsr = 0x1f80 & !(1 << 7);
    c.init.xmm[2] = 0x7fc0_0000;
    c.init.rflags = harness::ARITH;
    cases.push(c);
    // MASKMOVDQU with an all-zero mask and with a mask reaching the last byte.
    for mask in [0u128, u128::MAX, 0x80 << 120, 0x8000_0080] {
        let mut c = Case::new(
            format!("maskmovdqu {mask:#x}"),
            harness::asm(|a| a.maskmovdqu(xmm1, xmm2)),
        );
        c.init.gpr[7] = zone + 5;
        c.init.xmm[2] = mask;
        cases.push(c);
    }
    for c in &cases {
        harness::check(c);
    }
}
