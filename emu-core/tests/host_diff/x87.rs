//! x87 FPU and FXSAVE/FXRSTOR differential cases.
//!
//! One randomized [`Form`] per x87 opcode-table entry, built from iced's operand
//! description. Each case starts from a random x87 state (loaded natively with FXRSTOR):
//! a stack of 0..8 values drawn from 80-bit edge encodings (quiet and signalling NaNs,
//! the indefinite, denormals, pseudo-denormals, unnormals, pseudo-NaNs and
//! pseudo-infinities, infinities, ±0, the extremes of the exponent range, integers near
//! the conversion limits) and random values, every precision and rounding control, and
//! sometimes unmasked exceptions (and sometimes pending flags). The instruction runs,
//! optionally followed by FWAIT so a pending #MF shows; the whole x87 part of the FXSAVE
//! image is compared (FOP/FIP/FDP excepted, see the harness).

use emu_core::insn::OpTable;
use iced_x86::{
    Code, CpuidFeature, Instruction, Mnemonic, OpCodeOperandKind as K, OpKind, Register,
};
use proptest::prelude::*;

use crate::harness::{self, gen, Case, Feature, Form, OPERAND_ZONE};

/// Status-word condition bits the manual leaves undefined after arithmetic.
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;

/// Whether `code` is an x87 (or FXSAVE/FXRSTOR) instruction.
fn is_x87(code: Code) -> bool {
    code.cpuid_features().iter().any(|f| {
        matches!(
            f,
            CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387 | CpuidFeature::FXSR
        )
    }) || code.mnemonic() == Mnemonic::Fisttp
}

/// The x87 codes of the opcode table.
fn x87_codes() -> Vec<Code> {
    OpTable::global().codes().filter(|&c| is_x87(c)).collect()
}

/// Forms for every x87 code in the table.
pub fn forms() -> Vec<Form> {
    x87_codes().into_iter().map(form).collect()
}

fn pack(negative: bool, exp: u32, sig: u64) -> u128 {
    ((negative as u128) << 79) | ((exp as u128 & 0x7fff) << 64) | sig as u128
}

/// 80-bit encodings with the edge values forced in.
fn f80() -> impl Strategy<Value = u128> + Clone {
    let int = 1u64 << 63;
    let edges: Vec<u128> = vec![
        0,
        pack(true, 0, 0),
        pack(false, 0x3fff, int),
        pack(true, 0x3fff, int),
        pack(false, 0x4000, int | 1 << 62),
        pack(false, 0x3ffd, 0xaaaa_aaaa_aaaa_aaab),
        pack(false, 0x7ffe, u64::MAX),
        pack(true, 0x7ffe, u64::MAX),
        pack(false, 1, int),
        pack(false, 0, 1),
        pack(true, 0, 0x4000_0000_0000_0000),
        pack(false, 0, int),
        pack(true, 0, int | 5),
        pack(false, 0x4000, 0x4000_0000_0000_0000),
        pack(false, 0x7fff, int),
        pack(true, 0x7fff, int),
        pack(false, 0x7fff, int | 1 << 62),
        pack(true, 0x7fff, int | 1 << 62),
        pack(false, 0x7fff, int | 1),
        pack(true, 0x7fff, int | 0x1234_5678),
        pack(false, 0x7fff, 0),
        pack(false, 0x7fff, 1 << 62),
        pack(false, 0x3fff + 62, u64::MAX),
        pack(true, 0x3fff + 63, int),
        pack(false, 0x3fff + 31, int),
        pack(false, 0x3fff + 14, 0xfffe_0000_0000_0000),
        pack(false, 0x3ffe, int),
        pack(false, 0x3fff, int | 1 << 62),
        pack(false, 0x3c00, int | 12345),
        pack(false, 0x43ff, u64::MAX - 7),
        pack(false, 0x3f81, int),
        pack(false, 0x3c01, int),
    ];
    prop_oneof![
        3 => proptest::sample::select(edges),
        2 => (any::<bool>(), 0x3f00u32..0x4100, any::<u64>()).prop_map(|(s, e, m)| pack(s, e, m | 1 << 63)),
        1 => (any::<bool>(), 0x3ff0u32..0x4040, 0u64..64).prop_map(|(s, e, k)| pack(s, e, (1u64 << 63) | (k << 50))),
        1 => any::<u128>().prop_map(|v| v & ((1u128 << 80) - 1)),
    ]
}

/// An x87 control word: every precision and rounding control, usually all exceptions
/// masked, sometimes some unmasked.
fn fcw() -> impl Strategy<Value = u16> + Clone {
    (
        prop_oneof![Just(0u16), Just(2), Just(3)],
        0u16..4,
        prop_oneof![4 => Just(0x3fu16), 1 => 0u16..0x40],
    )
        .prop_map(|(pc, rc, masks)| 0x40 | masks | pc << 8 | rc << 10)
}

/// Bytes of a memory operand of the instruction's size.
fn mem_bytes(size: usize) -> BoxedStrategy<Vec<u8>> {
    match size {
        4 => prop_oneof![
            gen::f32_bits().prop_map(|v| v.to_le_bytes().to_vec()),
            gen::int(32).prop_map(|v| (v as u32).to_le_bytes().to_vec()),
        ]
        .boxed(),
        8 => prop_oneof![
            gen::f64_bits().prop_map(|v| v.to_le_bytes().to_vec()),
            gen::int(64).prop_map(|v| v.to_le_bytes().to_vec()),
        ]
        .boxed(),
        10 => f80().prop_map(|v| v.to_le_bytes()[..10].to_vec()).boxed(),
        2 => gen::int(16)
            .prop_map(|v| (v as u16).to_le_bytes().to_vec())
            .boxed(),
        _ => proptest::collection::vec(any::<u8>(), size).boxed(),
    }
}

/// Whether an 80-bit encoding is a special operand for the transcendentals: zero,
/// denormal or pseudo-denormal, infinity, NaN or an unsupported encoding. Their results
/// are exact on every implementation.
fn is_special(v: u128) -> bool {
    let e = (v >> 64) as u16 & 0x7fff;
    e == 0 || e == 0x7fff || (v as u64) >> 63 == 0
}

/// The transcendentals, whose results on ordinary operands are approximations.
fn is_transcendental(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Fsin
            | Mnemonic::Fcos
            | Mnemonic::Fsincos
            | Mnemonic::Fptan
            | Mnemonic::Fpatan
            | Mnemonic::F2xm1
            | Mnemonic::Fyl2x
            | Mnemonic::Fyl2xp1
    )
}

/// Adapts the generated operands to the instruction: keeps F2XM1 and FYL2XP1 operands in
/// the domain where the manual defines them, draws FBLD operands from valid packed BCD
/// and FBSTP operands from around the BCD range. Returns whether the case's results are
/// exact (false: a transcendental of ordinary operands, compared within an ulp).
fn shape_operands(code: Code, stack: &mut [u128], operand: &mut [u8], extra: u64) -> bool {
    let m = code.mnemonic();
    // Maps an ordinary value above 2^(max_exp - bias + 1) or an infinity to a magnitude
    // below 2^-top (between 2^-(top + 70) and 2^-top), keeping its sign and significand
    // (unsupported encodings and NaNs are defined inputs: kept).
    let into_domain = |v: &mut u128, top: u32, max_exp: u32| {
        let e = (*v >> 64) as u32 & 0x7fff;
        let ordinary = e != 0 && (*v as u64) >> 63 == 1;
        if (ordinary && e > max_exp) || (e == 0x7fff && *v as u64 == 1 << 63) {
            let new_e = 0x3fff - top - ((e as u64 + extra) % 70) as u32;
            *v = (*v & !(0x7fffu128 << 64)) | (new_e as u128) << 64;
        }
    };
    match m {
        // |x| <= 1.
        Mnemonic::F2xm1 => {
            if let Some(v) = stack.first_mut() {
                if (*v >> 64) as u32 & 0x7fff == 0x3fff && *v as u64 != 1 << 63 {
                    *v -= 1 << 64;
                }
                into_domain(v, 1, 0x3fff);
            }
        }
        // |x| < 1 - sqrt(2)/2 (0.29...): below 1/4.
        Mnemonic::Fyl2xp1 => {
            if let Some(v) = stack.first_mut() {
                into_domain(v, 3, 0x3ffc);
            }
        }
        Mnemonic::Fbld => {
            // 18 decimal digits (fewer, sometimes), any sign byte.
            let digits = 1 + (extra % 18) as usize;
            let mut x = extra;
            for (k, byte) in operand.iter_mut().enumerate().take(9) {
                let mut b = 0;
                for half in 0..2 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let d = if 2 * k + half < digits {
                        (x >> 60) % 10
                    } else {
                        0
                    };
                    b |= (d as u8) << (4 * half);
                }
                *byte = b;
            }
        }
        Mnemonic::Fbstp => {
            // Half the time a value in or just beyond the 18-digit range.
            if let Some(v) = stack.first_mut() {
                if extra & 1 == 0 {
                    let e = 0x3fff + ((extra >> 1) % 61) as u128;
                    let near_limit = extra >> 8 & 3 == 0;
                    let sig = if near_limit {
                        0xde0b_6b3a_763f_fff0 + (extra >> 10 & 0x1f)
                    } else {
                        (extra >> 16) | 1 << 63
                    };
                    let e = if near_limit { 0x3fff + 59 } else { e };
                    *v = (*v & (1 << 79)) | e << 64 | sig as u128;
                }
            }
        }
        _ => {}
    }
    if !is_transcendental(m) {
        return true;
    }
    // One operand: a special one gets an exact result. Two operands: a result from the
    // table of specials (a zero, infinity, NaN or unsupported operand) is exact; a
    // denormal operand is otherwise computed with like any other (y * log2(x) with a
    // denormal y is an approximation, on the denormal grid).
    match m {
        Mnemonic::Fpatan | Mnemonic::Fyl2x | Mnemonic::Fyl2xp1 => {
            let denormal = |v: u128| (v >> 64) as u16 & 0x7fff == 0 && v as u64 != 0;
            stack.len() < 2 || stack[..2].iter().any(|&v| is_special(v) && !denormal(v))
        }
        _ => match stack.first() {
            None => true,
            Some(&v) => is_special(v),
        },
    }
}

/// Where the memory operand is.
const ADDR: u64 = OPERAND_ZONE + 0x200;

fn build(code: Code, sti: u8, misalign: u64) -> Instruction {
    let info = code.op_code();
    let mut ins = Instruction::default();
    ins.set_code(code);
    for k in 0..info.op_count() {
        match info.op_kind(k) {
            K::st0 => {
                ins.set_op_kind(k, OpKind::Register);
                ins.set_op_register(k, Register::ST0);
            }
            K::sti_opcode => {
                ins.set_op_kind(k, OpKind::Register);
                ins.set_op_register(k, Register::ST0 + sti as u32);
            }
            K::ax => {
                ins.set_op_kind(k, OpKind::Register);
                ins.set_op_register(k, Register::AX);
            }
            K::mem => {
                ins.set_op_kind(k, OpKind::Memory);
                ins.set_memory_base(Register::None);
                ins.set_memory_index(Register::None);
                ins.set_memory_displ_size(4);
                ins.set_memory_displacement64(ADDR + misalign);
            }
            other => panic!("{code:?}: operand kind {other:?} not generated"),
        }
    }
    ins
}

/// The size of the instruction's memory operand (0 without one).
fn mem_size(code: Code) -> usize {
    let s = format!("{code:?}");
    if s.contains("m512") {
        512
    } else if s.contains("m108") {
        108
    } else if s.contains("m94") {
        94
    } else if s.contains("m28") {
        28
    } else if s.contains("m14") {
        14
    } else if s.contains("m80") {
        10
    } else if s.contains("m64") {
        8
    } else if s.contains("m32") {
        4
    } else if s.contains("m16") || s.contains("m2byte") {
        2
    } else {
        0
    }
}

fn form(code: Code) -> Form {
    let size = mem_size(code);
    let features: Vec<Feature> = if code.mnemonic() == Mnemonic::Fisttp {
        vec![Feature::Sse3]
    } else {
        vec![]
    };
    let strategy = (
        proptest::collection::vec(f80(), 0..=8),
        f80(),
        fcw(),
        prop_oneof![4 => Just(0u16), 1 => 0u16..0x40],
        0u8..8,
        mem_bytes(size.min(16)),
        proptest::collection::vec(any::<u8>(), size),
        any::<bool>(),
        gen::rflags(),
        prop_oneof![8 => Just(0u64), 1 => 1u64..16],
        gen::mxcsr_masked(),
        any::<u64>(),
    )
        .prop_map(
            move |(
                mut stack,
                filler,
                fcw,
                pending,
                sti,
                operand,
                raw,
                wait,
                rflags,
                misalign,
                mxcsr,
                extra,
            )| {
                let mut operand = operand;
                let exact = shape_operands(code, &mut stack, &mut operand, extra);
                let align = if size == 512 { misalign } else { 0 };
                let ins = build(code, sti, align);
                let mut instrs = vec![ins];
                if wait {
                    instrs.push(Instruction::with(Code::Wait));
                }
                let bytes = harness::encode(&instrs).expect("x87 instruction encodes");
                let mut case = Case::new(format!("{code:?}"), bytes);
                case.init.rflags = rflags;
                case.init.mxcsr = mxcsr;
                case.init.set_fcw(fcw);
                // Flags already raised; ES and B when one is unmasked, as the hardware
                // keeps them.
                let es = if pending & !fcw & 0x3f != 0 {
                    0x8080
                } else {
                    0
                };
                case.init.set_fsw(pending | es);
                case.init.set_x87_stack(&stack, filler);
                if size > 0 {
                    let mut mem = raw.clone();
                    let n = operand.len().min(size);
                    mem[..n].copy_from_slice(&operand[..n]);
                    if size == 512 {
                        // A plausible FXRSTOR image: MXCSR without reserved bits mostly.
                        if misalign & 1 == 0 {
                            mem[24..28].copy_from_slice(&mxcsr.to_le_bytes());
                        }
                    }
                    case.write(ADDR + align, &mem);
                    match size {
                        28 | 108 => {
                            case.undefined_mem.push((ADDR + 12, 16));
                        }
                        // The 16-bit formats: FIP, FCS, FDP, FDS.
                        14 | 94 => {
                            case.undefined_mem.push((ADDR + 6, 8));
                        }
                        512 => {
                            case.undefined_mem.push((ADDR + align + 6, 18));
                            case.undefined_mem.push((ADDR + align + 28, 4));
                        }
                        _ => {}
                    }
                }
                if !matches!(
                    code.mnemonic(),
                    Mnemonic::Fcom
                        | Mnemonic::Fcomp
                        | Mnemonic::Fcompp
                        | Mnemonic::Fucom
                        | Mnemonic::Fucomp
                        | Mnemonic::Fucompp
                        | Mnemonic::Ficom
                        | Mnemonic::Ficomp
                        | Mnemonic::Ftst
                        | Mnemonic::Fxam
                        | Mnemonic::Fnstsw
                        | Mnemonic::Fstsw
                        | Mnemonic::Fnstenv
                        | Mnemonic::Fstenv
                        | Mnemonic::Fnsave
                        | Mnemonic::Fsave
                        | Mnemonic::Fldenv
                        | Mnemonic::Frstor
                        | Mnemonic::Fxsave
                        | Mnemonic::Fxsave64
                        | Mnemonic::Fxrstor
                        | Mnemonic::Fxrstor64
                        | Mnemonic::Fnclex
                        | Mnemonic::Fclex
                        | Mnemonic::Fninit
                        | Mnemonic::Finit
                        | Mnemonic::Fldcw
                        | Mnemonic::Wait
                ) {
                    case.undefined_fsw = C0 | C2 | C3;
                }
                match code.mnemonic() {
                    // The condition codes hold the quotient bits and the completion flag.
                    Mnemonic::Fprem | Mnemonic::Fprem1 => case.undefined_fsw = 0,
                    // C2 tells an out-of-range operand.
                    Mnemonic::Fsin | Mnemonic::Fcos | Mnemonic::Fsincos | Mnemonic::Fptan => {
                        case.undefined_fsw = C0 | C3
                    }
                    _ => {}
                }
                if !exact {
                    // An approximation of an ordinary operand: the last bit (and with it
                    // C1, "rounded up") may differ between implementations.
                    case.x87_ulps = 1;
                    case.undefined_fsw |= C1;
                }
                case
            },
        );
    Form::new(format!("x87 {code:?}"), strategy).requires(&features)
}

#[test]
fn x87_instructions_match_the_host() {
    let worker = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| harness::run_forms(forms()))
        .expect("spawn");
    if let Err(e) = worker.join() {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn one_third_in_every_precision() {
    for pc in [0u16, 2, 3] {
        for rc in 0..4u16 {
            let code = harness::asm(|a| {
                use iced_x86::code_asm::*;
                a.fld1()?;
                a.fld1()?;
                a.fadd_2(st0, st1)?;
                a.fadd_2(st0, st1)?;
                a.fdivp(st1, st0)?;
                a.fstp(tword_ptr(OPERAND_ZONE))
            });
            let mut case = Case::new(format!("1/3 pc {pc} rc {rc}"), code);
            case.init.set_fcw(0x7f | pc << 8 | rc << 10);
            harness::check(&case);
        }
    }
}
