//! General-purpose instruction cases.
//!
//! Most forms come from one generic builder: for an iced `Code` it reads the operand kinds
//! from iced's opcode tables and fills them from random material ([`Raw`]): registers of
//! every width (AH..BH, and SPL..R15B with REX), memory operands with every addressing form
//! (base+disp, base+index*scale, RIP-relative, absolute, 32-bit addresses with garbage in
//! the upper register halves, index-only, FS/GS overrides with random bases), immediates
//! (sign-extended imm8 included), edge-heavy operand values, random flags, an optional LOCK
//! prefix, and an optional flag-producing instruction before it (so the lazy-flag paths
//! feed every flag consumer). Branches get forward targets and a marker store on the
//! not-taken path. Per-mnemonic fix-ups handle what random values cannot: division
//! operands (valid, #DE by zero, #DE by overflow), equal/unequal CMPXCHG, shift counts,
//! stack pointers and return addresses, POPF images.
//!
//! Hand-written families cover what the builder does not: string instructions with
//! REP/REPE/REPNE in both directions and both address sizes, backward loops, stack-relative
//! POP/PUSH operands, INT3/UD2, LOCK misuse (#UD), and random instruction sequences.
//!
//! Undefined flags are masked exactly where the Intel SDM says so for the case at hand
//! ([`undefined_flags`]); nothing else is masked.

use std::sync::OnceLock;

use iced_x86::{
    Code, Encoder, Instruction, InstructionInfoFactory, Mnemonic, OpCodeOperandKind as K, OpKind,
    Register, RflagsBits,
};
use proptest::prelude::*;

use crate::harness::{
    self, gen, Case, Feature, Form, AF, CF, CODE, DEFAULT_RSP, FIXED_FLAGS, GPR64, MARKER, OF,
    OPERAND_ZONE, OPERAND_ZONE_END, PF, SF, ZF,
};

/// Instructions whose results the host cannot show, so they have no differential case:
/// CPUID (we describe our own CPU, not the host's), RDTSC/RDTSCP (time), INT n
/// (kernel-defined in user mode, while the bare emulator delivers it itself), SGDT/SIDT
/// STR/SLDT (see below), IRETQ. `tests/non_differential.rs` and `tests/system_isa.rs` check their
/// documented behaviour instead. HLT and the other privileged instructions do have cases:
/// they fault at CPL 3 on both sides (see [`PRIVILEGED`]).
pub const EXCLUDED: &[Code] = &[
    Code::Cpuid,
    Code::Rdtsc,
    Code::Rdtscp,
    Code::Int_imm8,
    // Legal at CPL 3 unless the host kernel turned UMIP on, so the host's answer depends
    // on its configuration; tests/system_isa.rs checks them.
    Code::Sgdt_m1664,
    Code::Sidt_m1664,
    Code::Str_rm16,
    Code::Str_r32m16,
    Code::Str_r64m16,
    Code::Sldt_rm16,
    Code::Sldt_r32m16,
    Code::Sldt_r64m16,
    // A user-mode IRETQ is legal, but its selectors name the host kernel's GDT entries,
    // which the emulated machine does not have; tests/system_isa.rs covers IRETQ.
    Code::Iretq,
    // A user-mode SYSCALL is a real system call on the host.
    Code::Syscall,
    // Segment-register loads and stores and far transfers: their selectors name the host
    // kernel's GDT entries, which the emulated machine does not have (and the host's
    // selector values are its own); tests/system_isa/modes.rs covers them.
    Code::Mov_rm16_Sreg,
    Code::Mov_r32m16_Sreg,
    Code::Mov_r64m16_Sreg,
    Code::Mov_Sreg_rm16,
    Code::Mov_Sreg_r32m16,
    Code::Mov_Sreg_r64m16,
    Code::Pushw_FS,
    Code::Pushq_FS,
    Code::Pushw_GS,
    Code::Pushq_GS,
    Code::Popw_FS,
    Code::Popq_FS,
    Code::Popw_GS,
    Code::Popq_GS,
    Code::Lfs_r16_m1616,
    Code::Lfs_r32_m1632,
    Code::Lfs_r64_m1664,
    Code::Lgs_r16_m1616,
    Code::Lgs_r32_m1632,
    Code::Lgs_r64_m1664,
    Code::Lss_r16_m1616,
    Code::Lss_r32_m1632,
    Code::Lss_r64_m1664,
    Code::Jmp_m1616,
    Code::Jmp_m1632,
    Code::Jmp_m1664,
    Code::Call_m1616,
    Code::Call_m1632,
    Code::Call_m1664,
    Code::Retfw,
    Code::Retfd,
    Code::Retfq,
    Code::Retfw_imm16,
    Code::Retfd_imm16,
    Code::Retfq_imm16,
    Code::Iretw,
    Code::Iretd,
    Code::Lar_r16_rm16,
    Code::Lar_r32_r32m16,
    Code::Lar_r64_r64m16,
    Code::Lsl_r16_rm16,
    Code::Lsl_r32_r32m16,
    Code::Lsl_r64_r64m16,
    Code::Verr_rm16,
    Code::Verr_r32m16,
    Code::Verr_r64m16,
    Code::Verw_rm16,
    Code::Verw_r32m16,
    Code::Verw_r64m16,
    // SYSENTER/SYSEXIT are #UD in long mode on AMD hosts, while this CPU models Intel's
    // (defined) behaviour; SMSW at CPL 3 depends on the host's UMIP setting, like SGDT.
    Code::Sysenter,
    Code::Sysexitd,
    Code::Sysexitq,
    Code::Smsw_rm16,
    Code::Smsw_r32m16,
    Code::Smsw_r64m16,
    // XGETBV reads the host's XCR0 (AVX and later components enabled), not ours; XSETBV
    // is #GP at CPL 3 on the host but #UD here, because the bare emulated machine runs
    // with CR4.OSXSAVE clear while the host kernel sets it. XSAVE/XSAVEOPT/XRSTOR likewise
    // #UD here and on the host act on the host's XCR0 (XSTATE_BV, AVX state beyond the
    // 576 bytes we define). tests/system_isa/xsave.rs covers them.
    Code::Xgetbv,
    Code::Xsetbv,
    Code::Xsave_mem,
    Code::Xsave64_mem,
    Code::Xsaveopt_mem,
    Code::Xsaveopt64_mem,
    Code::Xrstor_mem,
    Code::Xrstor64_mem,
    // Usable at CPL 3 only where the host kernel set CR4.FSGSBASE (Linux 5.9 and later
    // on hardware that has it), while the emulated machine starts with it clear (#UD);
    // tests/system_isa/xsave.rs covers them.
    Code::Rdfsbase_r32,
    Code::Rdfsbase_r64,
    Code::Rdgsbase_r32,
    Code::Rdgsbase_r64,
    Code::Wrfsbase_r32,
    Code::Wrfsbase_r64,
    Code::Wrgsbase_r32,
    Code::Wrgsbase_r64,
];

/// Whether the host (a 64-bit process) can run `code`: it must be valid in 64-bit mode and
/// not be one of the 16-bit-offset branches that only AMD processors honour there (this
/// CPU decodes 64-bit code as Intel does, where an operand-size prefix does not shorten
/// a near branch, so those encodings occur only in 16- and 32-bit code).
pub fn runs_in_64bit_host(code: Code) -> bool {
    let op = code.op_code();
    op.mode64()
        && !(0..op.op_count()).any(|i| {
            matches!(
                op.op_kind(i),
                iced_x86::OpCodeOperandKind::br16_1 | iced_x86::OpCodeOperandKind::br16_2
            )
        })
        && !matches!(
            code,
            Code::Retnw | Code::Retnw_imm16 | Code::Call_rm16 | Code::Jmp_rm16
        )
}

/// Random material for one generic case; the builder turns it into a [`Case`]
/// deterministically, so proptest can shrink it.
#[derive(Clone, Debug)]
struct Raw {
    regs: [u64; 16],
    flags: u64,
    picks: [u8; 4],
    rm_mem: bool,
    mode: u8,
    target: u16,
    disp: u32,
    index_val: u64,
    mem_val: u64,
    imm: u64,
    count: u8,
    seg: u8,
    seg_base: u64,
    lock: bool,
    producer: u8,
    aux: u64,
    fill: u64,
}

fn raw(count_bits: u32) -> impl Strategy<Value = Raw> {
    let a = (
        proptest::array::uniform16(gen::int_any_width()),
        gen::rflags(),
        any::<[u8; 4]>(),
        any::<bool>(),
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
    );
    let b = (
        gen::int_any_width(),
        gen::int_any_width(),
        gen::shift_count(count_bits),
        any::<u8>(),
        any::<u64>(),
        any::<bool>(),
        any::<u8>(),
        any::<u64>(),
        any::<u64>(),
    );
    (a, b).prop_map(
        |(
            (regs, flags, picks, rm_mem, mode, target, disp, index_val),
            (mem_val, imm, count, seg, seg_base, lock, producer, aux, fill),
        )| Raw {
            regs,
            flags,
            picks,
            rm_mem,
            mode,
            target,
            disp,
            index_val,
            mem_val,
            imm,
            count,
            seg,
            seg_base,
            lock,
            producer,
            aux,
            fill,
        },
    )
}

/// GPR names of one width, in iced's order (AL..BL, AH..BH, SPL..DIL, R8L..R15L for bytes).
fn gprs(bytes: usize) -> &'static [Register] {
    static TABLES: OnceLock<[Vec<Register>; 4]> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let of = |f: fn(Register) -> bool| Register::values().filter(|&r| f(r)).collect();
        [
            of(Register::is_gpr8),
            of(Register::is_gpr16),
            of(Register::is_gpr32),
            of(Register::is_gpr64),
        ]
    });
    match bytes {
        1 => &t[0],
        2 => &t[1],
        4 => &t[2],
        _ => &t[3],
    }
}

fn gpr_index(r: Register) -> usize {
    GPR64
        .iter()
        .position(|&g| g == r.full_register())
        .expect("a GPR")
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// Width in bytes of a register operand kind, if it is one.
fn reg_kind_width(k: K) -> Option<usize> {
    Some(match k {
        K::r8_reg | K::r8_opcode => 1,
        K::r16_reg | K::r16_rm | K::r16_opcode | K::r16_reg_mem => 2,
        K::r32_reg | K::r32_rm | K::r32_opcode | K::r32_vvvv | K::r32_reg_mem => 4,
        K::r64_reg | K::r64_rm | K::r64_opcode | K::r64_vvvv | K::r64_reg_mem => 8,
        _ => return None,
    })
}

fn rm_kind_width(k: K) -> Option<usize> {
    Some(match k {
        K::r8_or_mem => 1,
        K::r16_or_mem => 2,
        K::r32_or_mem => 4,
        K::r64_or_mem => 8,
        _ => return None,
    })
}

/// Whether a code has a vector (SSE/MMX/AVX) operand: those belong to `sse.rs`.
fn has_vector_operand(code: Code) -> bool {
    code.op_code().op_kinds().iter().any(|k| {
        matches!(
            k,
            K::mm_or_mem
                | K::xmm_or_mem
                | K::ymm_or_mem
                | K::zmm_or_mem
                | K::mm_reg
                | K::mm_rm
                | K::xmm_reg
                | K::xmm_rm
                | K::xmm_vvvv
                | K::xmm_is4
                | K::ymm_reg
                | K::ymm_rm
        )
    })
}

/// How a memory operand is used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MemUse {
    /// Read or written: the address must land in the data area.
    Access,
    /// Never dereferenced (LEA, NOP r/m): any address will do.
    Address,
}

/// A memory operand being built: the iced fields plus the register values it needs.
struct MemChoice {
    base: Register,
    index: Register,
    scale: u32,
    disp: i64,
    displ_size: u32,
    seg: Register,
    addr: u64,
    sets: Vec<(Register, u64)>,
    fs_base: Option<u64>,
    gs_base: Option<u64>,
}

/// Chooses an addressing form and register values so the operand addresses `target`
/// (given the instruction's address `ip` for RIP-relative forms). `avoid` lists registers
/// the instruction uses otherwise.
fn choose_mem(raw: &Raw, avoid: &[Register], mem_use: MemUse, target: u64) -> MemChoice {
    let cands: Vec<Register> = GPR64
        .iter()
        .copied()
        .filter(|r| !avoid.contains(r))
        .collect();
    let pick = |n: u8| cands[n as usize % cands.len()];
    let base = pick(raw.picks[2]);
    let mut index = pick(raw.picks[3]);
    if index == base || index == Register::RSP {
        index = cands
            .iter()
            .copied()
            .find(|&r| r != base && r != Register::RSP)
            .unwrap_or(Register::None);
    }
    let scale = 1u32 << (raw.mode >> 5 & 3);
    let disp: i64 = match raw.mode >> 3 & 3 {
        0 => 0,
        1 => raw.disp as i8 as i64,
        _ => (raw.disp as i32 >> 4) as i64,
    };
    let mut m = MemChoice {
        base,
        index: Register::None,
        scale: 1,
        disp,
        displ_size: if disp == 0 { 0 } else { 1 },
        seg: Register::None,
        addr: target,
        sets: Vec::new(),
        fs_base: None,
        gs_base: None,
    };
    if mem_use == MemUse::Address {
        // Any registers, any displacement: the address is never used.
        m.index = index;
        m.scale = scale;
        if raw.mode & 7 >= 5 {
            m.base = base.full_register32();
            m.index = if index == Register::None {
                Register::None
            } else {
                index.full_register32()
            };
        }
        return m;
    }
    // A segment override: FS or GS with a random base (the offset then makes up the
    // difference), or a null prefix, which 64-bit mode ignores.
    let seg_kind = raw.seg % 8;
    let mut offset = target;
    let mode = raw.mode & 7;
    if seg_kind < 2 {
        let wide = matches!(mode, 0 | 1);
        let seg_base = if wide && raw.seg & 0x10 != 0 {
            // A large base and a wrapping offset.
            raw.seg_base & 0x7fff_ffff_f000
        } else {
            raw.seg_base % (target + 1)
        };
        offset = target.wrapping_sub(seg_base);
        if seg_kind == 0 {
            m.seg = Register::FS;
            m.fs_base = Some(seg_base);
        } else {
            m.seg = Register::GS;
            m.gs_base = Some(seg_base);
        }
    } else if seg_kind == 2 {
        m.seg = [Register::ES, Register::CS, Register::SS, Register::DS][raw.seg as usize >> 3 & 3];
    }
    match mode {
        // [base + disp]
        0 | 7 => {
            m.sets.push((base, offset.wrapping_sub(disp as u64)));
        }
        // [base + index*scale + disp], the index any value (the base compensates).
        1 => {
            let idx = raw.index_val;
            m.index = index;
            m.scale = scale;
            let v = offset
                .wrapping_sub(disp as u64)
                .wrapping_sub(idx.wrapping_mul(scale as u64));
            m.sets.push((base, v));
            m.sets.push((index, idx));
        }
        // [rip + disp32]: the encoder computes the displacement from the absolute address.
        2 => {
            m.base = Register::RIP;
            m.disp = offset as i64;
            m.displ_size = 1;
        }
        // [disp32], no base and no index.
        3 => {
            m.base = Register::None;
            m.disp = offset as i64;
            m.displ_size = 4;
        }
        // 32-bit addressing: [ebase + eindex*scale + disp], garbage in the upper halves.
        4 | 5 => {
            m.base = base.full_register32();
            let idx = raw.index_val & 0xffff;
            let mut low = offset.wrapping_sub(disp as u64);
            if mode == 5 && index != Register::None {
                m.index = index.full_register32();
                m.scale = scale;
                low = low.wrapping_sub(idx * scale as u64);
                m.sets.push((index, (raw.index_val & !0xffff_ffff) | idx));
            }
            m.sets
                .push((base, (raw.seg_base & !0xffff_ffff) | (low & 0xffff_ffff)));
        }
        // [index*scale + disp32], no base.
        _ => {
            if index == Register::None {
                m.base = Register::None;
                m.disp = offset as i64;
                m.displ_size = 4;
            } else {
                let idx = raw.index_val & 0xfff;
                m.base = Register::None;
                m.index = index;
                m.scale = scale;
                m.disp = offset.wrapping_sub(idx * scale as u64) as i64;
                m.displ_size = 4;
                m.sets.push((index, idx));
            }
        }
    }
    m
}

/// An address in the operand zone for a `size`-byte operand, aligned to the size if
/// `align` (and kept `margin` bytes from the zone's edges).
fn zone_target(raw: &Raw, size: u64, align: bool, margin: u64) -> u64 {
    let lo = OPERAND_ZONE + margin;
    let hi = OPERAND_ZONE_END - margin - 32;
    let t = lo + raw.target as u64 % (hi - lo);
    if align {
        t & !(size.max(1).next_power_of_two() - 1)
    } else if size > 1 && raw.aux >> 5 & 3 == 0 {
        // Straddle a page boundary (accesses split in two in the emulator's MMU).
        let page_end = (t | 0xfff) + 1;
        let crossing = page_end - 1 - (raw.aux >> 7) % (size - 1);
        if crossing + size <= hi + 32 {
            crossing
        } else {
            t
        }
    } else {
        t
    }
}

/// Flag producers put before a flag consumer: fully defined flags (arithmetic), or
/// logic operations (AF undefined: allowed before instructions that do not read AF).
const ARITH_PRODUCERS: [Mnemonic; 8] = [
    Mnemonic::Add,
    Mnemonic::Adc,
    Mnemonic::Sub,
    Mnemonic::Sbb,
    Mnemonic::Cmp,
    Mnemonic::Neg,
    Mnemonic::Inc,
    Mnemonic::Dec,
];
const LOGIC_PRODUCERS: [Mnemonic; 4] = [Mnemonic::And, Mnemonic::Or, Mnemonic::Xor, Mnemonic::Test];

/// Builds a producer instruction on registers outside `avoid`. Returns it and whether its
/// AF is undefined.
fn producer(raw: &Raw, avoid: &[Register], allow_logic: bool) -> Option<(Instruction, bool)> {
    // One case in three gets a producer.
    if raw.producer % 3 != 0 {
        return None;
    }
    let free: Vec<Register> = GPR64
        .iter()
        .copied()
        .filter(|r| !avoid.contains(r) && *r != Register::RSP)
        .collect();
    if free.len() < 2 {
        return None;
    }
    let n = if allow_logic { 12 } else { 8 };
    let sel = (raw.producer >> 2) as usize % n;
    let mnemonic = if sel < 8 {
        ARITH_PRODUCERS[sel]
    } else {
        LOGIC_PRODUCERS[sel - 8]
    };
    let width = [1usize, 2, 4, 8][(raw.aux >> 40) as usize % 4];
    let a = free[(raw.aux >> 44) as usize % free.len()];
    let b = free[(raw.aux >> 48) as usize % free.len()];
    let reg = |r: Register| -> Register {
        let i = gpr_index(r);
        match width {
            1 => gprs(1)[if i < 4 { i } else { i + 4 }],
            2 => gprs(2)[i],
            4 => gprs(4)[i],
            _ => r,
        }
    };
    let (ra, rb) = (reg(a), reg(b));
    let code = |c8, c16, c32, c64| match width {
        1 => c8,
        2 => c16,
        4 => c32,
        _ => c64,
    };
    let instr = match mnemonic {
        Mnemonic::Neg => Instruction::with1(
            code(
                Code::Neg_rm8,
                Code::Neg_rm16,
                Code::Neg_rm32,
                Code::Neg_rm64,
            ),
            ra,
        )
        .ok()?,
        Mnemonic::Inc => Instruction::with1(
            code(
                Code::Inc_rm8,
                Code::Inc_rm16,
                Code::Inc_rm32,
                Code::Inc_rm64,
            ),
            ra,
        )
        .ok()?,
        Mnemonic::Dec => Instruction::with1(
            code(
                Code::Dec_rm8,
                Code::Dec_rm16,
                Code::Dec_rm32,
                Code::Dec_rm64,
            ),
            ra,
        )
        .ok()?,
        m => {
            let c = match m {
                Mnemonic::Add => code(
                    Code::Add_rm8_r8,
                    Code::Add_rm16_r16,
                    Code::Add_rm32_r32,
                    Code::Add_rm64_r64,
                ),
                Mnemonic::Adc => code(
                    Code::Adc_rm8_r8,
                    Code::Adc_rm16_r16,
                    Code::Adc_rm32_r32,
                    Code::Adc_rm64_r64,
                ),
                Mnemonic::Sub => code(
                    Code::Sub_rm8_r8,
                    Code::Sub_rm16_r16,
                    Code::Sub_rm32_r32,
                    Code::Sub_rm64_r64,
                ),
                Mnemonic::Sbb => code(
                    Code::Sbb_rm8_r8,
                    Code::Sbb_rm16_r16,
                    Code::Sbb_rm32_r32,
                    Code::Sbb_rm64_r64,
                ),
                Mnemonic::Cmp => code(
                    Code::Cmp_rm8_r8,
                    Code::Cmp_rm16_r16,
                    Code::Cmp_rm32_r32,
                    Code::Cmp_rm64_r64,
                ),
                Mnemonic::And => code(
                    Code::And_rm8_r8,
                    Code::And_rm16_r16,
                    Code::And_rm32_r32,
                    Code::And_rm64_r64,
                ),
                Mnemonic::Or => code(
                    Code::Or_rm8_r8,
                    Code::Or_rm16_r16,
                    Code::Or_rm32_r32,
                    Code::Or_rm64_r64,
                ),
                Mnemonic::Xor => code(
                    Code::Xor_rm8_r8,
                    Code::Xor_rm16_r16,
                    Code::Xor_rm32_r32,
                    Code::Xor_rm64_r64,
                ),
                _ => code(
                    Code::Test_rm8_r8,
                    Code::Test_rm16_r16,
                    Code::Test_rm32_r32,
                    Code::Test_rm64_r64,
                ),
            };
            Instruction::with2(c, ra, rb).ok()?
        }
    };
    Some((instr, sel >= 8))
}

/// Full registers an instruction reads or writes (explicitly or implicitly), memory
/// operand registers excluded when the memory operand has none yet.
fn used_registers(instr: &Instruction) -> Vec<Register> {
    let mut f = InstructionInfoFactory::new();
    let mut out: Vec<Register> = f
        .info(instr)
        .used_registers()
        .iter()
        .map(|u| u.register())
        .filter(|r| r.is_gpr())
        .map(|r| r.full_register())
        .collect();
    out.sort_by_key(|&r| r as u32);
    out.dedup();
    out
}

fn set_immediate(instr: &mut Instruction, i: u32, kind: K, value: u64) {
    let (op, _) = match kind {
        K::imm8 | K::imm8_const_1 => (OpKind::Immediate8, 0),
        K::imm16 => (OpKind::Immediate16, 0),
        K::imm32 => (OpKind::Immediate32, 0),
        K::imm64 => (OpKind::Immediate64, 0),
        K::imm8sex16 => (OpKind::Immediate8to16, 0),
        K::imm8sex32 => (OpKind::Immediate8to32, 0),
        K::imm8sex64 => (OpKind::Immediate8to64, 0),
        _ => (OpKind::Immediate32to64, 0),
    };
    // A second imm8 (ENTER's nesting level) has its own kind.
    let op = if op == OpKind::Immediate8 && i > 0 && instr.op_kind(0) == OpKind::Immediate16 {
        OpKind::Immediate8_2nd
    } else {
        op
    };
    instr.set_op_kind(i, op);
    match op {
        OpKind::Immediate8 => instr.set_immediate8(value as u8),
        OpKind::Immediate8_2nd => instr.set_immediate8_2nd(value as u8),
        OpKind::Immediate16 => instr.set_immediate16(value as u16),
        OpKind::Immediate32 => instr.set_immediate32(value as u32),
        OpKind::Immediate64 => instr.set_immediate64(value),
        OpKind::Immediate8to16 => instr.set_immediate8to16(value as i8 as i16),
        OpKind::Immediate8to32 => instr.set_immediate8to32(value as i8 as i32),
        OpKind::Immediate8to64 => instr.set_immediate8to64(value as i8 as i64),
        _ => instr.set_immediate32to64(value as i32 as i64),
    }
}

/// What the builder decided, for the fix-ups and the flag masks.
struct Built {
    case: Case,
    instr: Instruction,
    /// The r/m or memory operand, if the instruction has one: register or memory address.
    rm: Option<Loc>,
    /// Register operands in order.
    regs: Vec<Register>,
    /// Width of the first operand in bytes.
    width: usize,
    /// Shift/rotate count before masking, if any.
    count: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Loc {
    Reg(Register),
    Mem(u64, usize),
}

impl Built {
    fn set_loc(&mut self, loc: Loc, value: u64) {
        match loc {
            Loc::Reg(r) => self.case.init.set_reg(r, value),
            Loc::Mem(addr, size) => {
                self.case.write_int(addr, value, size.min(8));
            }
        }
    }
}

const BRANCH_MARKER: u8 = 0x5a;

/// The marker store after a branch: `mov byte [MARKER], 0x5a` (touches no register or
/// flag, so only memory shows which path ran).
fn marker() -> Instruction {
    Instruction::with2(
        Code::Mov_rm8_imm8,
        iced_x86::MemoryOperand::with_displ(MARKER, 4),
        BRANCH_MARKER as u32,
    )
    .expect("marker")
}

/// The generic builder: one case of `code` from `raw`.
fn generic(code: Code, raw: &Raw) -> Case {
    let info = code.op_code();
    let kinds = info.op_kinds().to_vec();
    let mnemonic = code.mnemonic();
    let mem_use = if matches!(
        mnemonic,
        Mnemonic::Lea
            | Mnemonic::Nop
            | Mnemonic::Reservednop
            | Mnemonic::Cldemote
            | Mnemonic::Prefetchit0
            | Mnemonic::Prefetchit1
            | Mnemonic::Prefetchwt1
    ) {
        MemUse::Address
    } else {
        MemUse::Access
    };
    let is_branch = kinds.iter().any(|k| matches!(k, K::br64_1 | K::br64_4))
        || matches!(mnemonic, Mnemonic::Ret | Mnemonic::Jmp | Mnemonic::Call);
    let stack = info.is_stack_instruction();

    // 1. Operands, with memory addressing left for later.
    let mut instr = Instruction::default();
    instr.set_code(code);
    let mut regs = Vec::new();
    let mut has_mem = false;
    let mut mem_size = 0usize;
    let mut width = 0usize;
    let mut count: Option<u64> = None;
    let mut pick = 0usize;
    let mut imm_seen = 0;
    let shift_like = is_shift_or_rotate(mnemonic);
    for (i, &k) in kinds.iter().enumerate() {
        let i = i as u32;
        let reg_width = reg_kind_width(k).or(match k {
            K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem if !raw.rm_mem => {
                rm_kind_width(k)
            }
            _ => None,
        });
        if let Some(w) = reg_width {
            let table = gprs(w);
            let mut r = table[raw.picks[pick % 2] as usize % table.len()];
            pick += 1;
            // Branching through RSP would push onto the code; not a useful case.
            if matches!(mnemonic, Mnemonic::Jmp | Mnemonic::Call) && r == Register::RSP {
                r = Register::RAX;
            }
            instr.set_op_kind(i, OpKind::Register);
            instr.set_op_register(i, r);
            regs.push(r);
            if i == 0 {
                width = w;
            }
            continue;
        }
        match k {
            K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem | K::mem | K::mem_offs => {
                has_mem = true;
                instr.set_op_kind(i, OpKind::Memory);
                if k == K::mem_offs {
                    instr.set_memory_displ_size(8);
                } else {
                    instr.set_memory_displ_size(4);
                }
                if let Some(w) = rm_kind_width(k) {
                    mem_size = w;
                    if i == 0 {
                        width = w;
                    }
                }
            }
            K::al | K::cl | K::ax | K::dx | K::eax | K::rax => {
                let r = match k {
                    K::al => Register::AL,
                    K::cl => Register::CL,
                    K::ax => Register::AX,
                    K::dx => Register::DX,
                    K::eax => Register::EAX,
                    _ => Register::RAX,
                };
                instr.set_op_kind(i, OpKind::Register);
                instr.set_op_register(i, r);
                regs.push(r);
                if i == 0 {
                    width = r.size();
                }
            }
            K::imm8
            | K::imm8_const_1
            | K::imm16
            | K::imm32
            | K::imm64
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm32sex64 => {
                let v = if k == K::imm8_const_1 {
                    1
                } else if k == K::imm8
                    && (shift_like
                        || imm_seen == 1
                        || matches!(
                            mnemonic,
                            Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
                        ))
                {
                    // Shift counts, bit indexes and ENTER's level: edge counts.
                    raw.count as u64
                } else {
                    raw.imm
                };
                let v = if matches!(mnemonic, Mnemonic::Shld | Mnemonic::Shrd)
                    && width == 2
                    && v & 31 > 16
                {
                    // Counts above the operand size leave the result undefined.
                    v & 15
                } else {
                    v
                };
                if shift_like {
                    count = Some(v & 0xff);
                }
                set_immediate(&mut instr, i, k, v);
                imm_seen += 1;
            }
            K::br64_1 | K::br64_4 => {
                instr.set_op_kind(i, OpKind::NearBranch64);
                instr.set_near_branch64(CODE);
            }
            _ => panic!("{code:?}: operand kind {k:?} is not handled by the generic builder"),
        }
    }
    if has_mem && mem_size == 0 {
        mem_size = instr.memory_size().size().max(1);
    }
    let lock = has_mem && info.can_use_lock_prefix() && raw.lock;
    instr.set_has_lock_prefix(lock);

    // 2. Registers the instruction uses besides its memory operand.
    let mut avoid = used_registers(&instr);
    avoid.push(Register::RSP);

    // 3. A flag producer before it.
    let reads_af = instr.rflags_read() & RflagsBits::AF != 0;
    let reads_flags = instr.rflags_read() != 0 || instr.rflags_modified() != 0;
    let prod = if reads_flags {
        producer(raw, &avoid, !reads_af)
    } else {
        None
    };
    let mut prefix = Vec::new();
    let mut producer_af_undefined = false;
    if let Some((p, logic)) = &prod {
        prefix = harness::encode(std::slice::from_ref(p)).expect("producer encodes");
        producer_af_undefined = *logic;
        for r in used_registers(p) {
            avoid.push(r);
        }
    }
    let ip = CODE + prefix.len() as u64;

    // 4. The initial state.
    let mut case = Case::new(format!("{code:?}"), Vec::new());
    case.fill_seed = raw.fill;
    case.init.gpr = raw.regs;
    case.init.rflags = raw.flags;
    case.init.gpr[4] = DEFAULT_RSP;
    if stack {
        let delta = (raw.aux & 0x3f8) as i64 - 0x200;
        let misalign = if raw.aux >> 10 & 7 == 0 {
            raw.aux >> 13 & 7
        } else {
            0
        };
        case.init.gpr[4] = (DEFAULT_RSP as i64 + delta) as u64 + misalign;
    } else if regs.iter().any(|r| r.full_register() == Register::RSP) {
        case.init.gpr[4] = raw.regs[4];
    }

    // 5. The memory operand.
    let mut rm = None;
    if has_mem {
        let margin = if matches!(
            mnemonic,
            Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
        ) {
            0x1100
        } else {
            0
        };
        let align = raw.aux & 1 == 0 || (code == Code::Cmpxchg16b_m128 && (raw.aux >> 1) % 8 != 0);
        let target = zone_target(raw, mem_size as u64, align, margin);
        let target = if code == Code::Cmpxchg16b_m128 && !align {
            target | 8
        } else {
            target
        };
        let m = if kinds.contains(&K::mem_offs) {
            // moffs: a 64-bit absolute address, optionally FS/GS-relative.
            let mut m = choose_mem(raw, &avoid, MemUse::Access, target);
            if m.seg != Register::FS && m.seg != Register::GS {
                m.seg = Register::None;
                m.addr = target;
            }
            let off = target.wrapping_sub(m.fs_base.or(m.gs_base).unwrap_or(0));
            m.base = Register::None;
            m.index = Register::None;
            m.scale = 1;
            m.disp = off as i64;
            m.displ_size = 8;
            m.sets.clear();
            m
        } else {
            choose_mem(raw, &avoid, mem_use, target)
        };
        instr.set_memory_base(m.base);
        instr.set_memory_index(m.index);
        instr.set_memory_index_scale(m.scale);
        instr.set_memory_displacement64(m.disp as u64);
        instr.set_memory_displ_size(m.displ_size);
        instr.set_segment_prefix(m.seg);
        for (r, v) in &m.sets {
            case.init.gpr[gpr_index(*r)] = *v;
        }
        if let Some(b) = m.fs_base {
            case.init.fs_base = b;
        }
        if let Some(b) = m.gs_base {
            case.init.gs_base = b;
        }
        if mem_use == MemUse::Access {
            case.write_int(m.addr, raw.mem_val, mem_size.min(8));
            if mem_size > 8 {
                case.write_int(m.addr + 8, raw.aux, (mem_size - 8).min(8));
            }
        }
        rm = Some(Loc::Mem(m.addr, mem_size));
    } else if let Some(&r) = regs.first() {
        if kinds
            .iter()
            .any(|k| rm_kind_width(*k).is_some() || reg_kind_width(*k).is_some())
        {
            rm = Some(Loc::Reg(r));
        }
    }

    // 6. Encode (twice for branches: the target is the end, after a marker).
    let encode_tested = |instr: &Instruction| -> Result<Vec<u8>, String> {
        let mut e = Encoder::new(64);
        e.encode(instr, ip).map_err(|e| e.to_string())?;
        Ok(e.take_buffer())
    };
    let mut bytes = match encode_tested(&instr) {
        Ok(b) => b,
        Err(_) => {
            // AH..BH cannot be encoded with a REX prefix: use AL..BL instead.
            for i in 0..instr.op_count() {
                if instr.op_kind(i) == OpKind::Register && is_high_byte(instr.op_register(i)) {
                    let low = gprs(1)[gpr_index(instr.op_register(i))];
                    instr.set_op_register(i, low);
                }
            }
            for r in regs.iter_mut() {
                if is_high_byte(*r) {
                    *r = gprs(1)[gpr_index(*r)];
                }
            }
            if let Some(Loc::Reg(r)) = rm {
                if is_high_byte(r) {
                    rm = Some(Loc::Reg(gprs(1)[gpr_index(r)]));
                }
            }
            encode_tested(&instr)
                .unwrap_or_else(|e| panic!("{code:?} does not encode: {e}\n{instr:?}"))
        }
    };
    let mut suffix = Vec::new();
    if is_branch {
        suffix = harness::encode_at(ip + bytes.len() as u64, &[marker()]).expect("marker");
        let end = ip + bytes.len() as u64 + suffix.len() as u64;
        if instr.op_kinds().any(|k| k == OpKind::NearBranch64) {
            instr.set_near_branch64(end);
            bytes = encode_tested(&instr).expect("branch encodes");
        }
    }
    case.code = [prefix, bytes, suffix].concat();

    let mut b = Built {
        case,
        instr,
        rm,
        regs,
        width,
        count,
    };
    fix_up(code, raw, &mut b);
    b.case.undefined_flags |= undefined_flags(&b);
    if producer_af_undefined {
        b.case.undefined_flags |= AF;
    }
    b.case
}

/// Per-instruction adjustments of the random state.
fn fix_up(code: Code, raw: &Raw, b: &mut Built) {
    let mnemonic = code.mnemonic();
    let w = b.width;
    let end = b.case.end();
    let rsp = b.case.init.gpr[4];
    match mnemonic {
        Mnemonic::Div | Mnemonic::Idiv => {
            let (lo, hi, divisor) = division(mnemonic == Mnemonic::Idiv, w, raw);
            if w == 1 {
                b.case.init.set_reg(Register::AX, lo | hi << 8);
            } else {
                b.case.init.set_reg(gprs(w)[0], lo);
                b.case.init.set_reg(gprs(w)[2], hi);
            }
            if let Some(loc) = b.rm {
                b.set_loc(loc, divisor);
            }
        }
        Mnemonic::Cmpxchg if raw.aux & 2 == 0 => {
            // Make the comparison succeed.
            let dest = match b.rm {
                Some(Loc::Reg(r)) => b.case.init.reg(r),
                Some(Loc::Mem(..)) => raw.mem_val,
                None => 0,
            };
            b.case.init.set_reg(gprs(w)[0], dest);
        }
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b if raw.aux & 2 == 0 => {
            if code == Code::Cmpxchg8b_m64 {
                b.case.init.set_reg(Register::EAX, raw.mem_val);
                b.case.init.set_reg(Register::EDX, raw.mem_val >> 32);
            } else {
                b.case.init.set_reg(Register::RAX, raw.mem_val);
                b.case.init.set_reg(Register::RDX, raw.aux);
            }
        }
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => {
            // With a memory operand a register bit offset reaches outside the operand:
            // keep it within +-2 KiB (the target has that margin).
            if let (Some(Loc::Mem(..)), Some(&r)) = (b.rm, b.regs.first()) {
                let v = (raw.index_val as i64 % 0x4000) as u64;
                b.case.init.set_reg(r, v);
            }
        }
        m if is_shift_or_rotate(m) && code.op_code().op_kinds().contains(&K::cl) => {
            let mut c = raw.count as u64;
            if matches!(mnemonic, Mnemonic::Shld | Mnemonic::Shrd) && w == 2 && c & 31 > 16 {
                // Counts above the operand size leave the result undefined.
                c &= 15;
            }
            b.case.init.set_reg(Register::CL, c);
            b.count = Some(b.case.init.reg(Register::CL));
        }
        Mnemonic::Popf | Mnemonic::Popfq => {
            // A flags image user code can load: no TF, IF set, IOPL 0; the rest random,
            // reserved bits included (the CPU ignores them).
            let img = (raw.imm & !(0x100 | 0x3000 | 0x1_0000 | 0x2_0000 | 0x8_0000 | 0x10_0000))
                | FIXED_FLAGS;
            b.case.write_int(rsp, img, 8);
        }
        Mnemonic::Leave => {
            let rbp = DEFAULT_RSP - 0x800 + (raw.aux >> 20 & 0x3ff);
            b.case.init.set_reg(Register::RBP, rbp);
        }
        Mnemonic::Enter => {
            let rbp = DEFAULT_RSP - 0x800 + (raw.aux >> 20 & 0x3f8);
            b.case.init.set_reg(Register::RBP, rbp);
        }
        Mnemonic::Ret => {
            b.case.write_int(rsp, end, 8);
        }
        Mnemonic::Jmp | Mnemonic::Call => {
            if let Some(loc) = b.rm {
                b.set_loc(loc, end);
            }
        }
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jrcxz | Mnemonic::Jecxz => {
            const COUNTS: [u64; 8] = [
                0,
                1,
                2,
                0x1_0000_0000,
                0x1_0000_0001,
                0xffff_ffff,
                u64::MAX,
                7,
            ];
            let c = if raw.aux & 8 == 0 {
                COUNTS[(raw.aux >> 4) as usize % COUNTS.len()]
            } else {
                raw.regs[1]
            };
            b.case.init.set_reg(Register::RCX, c);
        }
        Mnemonic::Bsf | Mnemonic::Bsr => {
            // A zero source leaves the destination undefined (AMD documents it unchanged,
            // Intel parts may still zero-extend a 32-bit one): not compared.
            let src = if b.instr.op1_kind() == OpKind::Memory {
                raw.mem_val
            } else {
                b.case.init.reg(b.instr.op1_register())
            };
            let mask = if w == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * w)) - 1
            };
            if src & mask == 0 {
                let dst = b.instr.op0_register();
                b.case.undefined_gpr[gpr_index(dst)] = if w == 2 { 0xffff } else { u64::MAX };
            }
        }
        Mnemonic::Bswap if w == 2 => {
            // BSWAP of a 16-bit register is undefined.
            if let Some(&r) = b.regs.first() {
                b.case.undefined_gpr[gpr_index(r)] = 0xffff;
            }
        }
        _ => {}
    }
}

/// Dividend (low, high halves) and divisor for DIV/IDIV of width `w` bytes: one case in
/// ten divides by zero, one overflows the quotient, one hits the most negative quotient,
/// the rest are valid with edge-heavy values.
fn division(signed: bool, w: usize, raw: &Raw) -> (u64, u64, u64) {
    let bits = w as u32 * 8;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let split = |n: i128| ((n as u64) & mask, ((n >> bits) as u64) & mask);
    let kind = raw.aux % 10;
    let mut d = raw.mem_val & mask;
    if d == 0 {
        d = 1;
    }
    let min = -(1i128 << (bits - 1));
    let sx = |v: u64| -> i128 { ((v << (64 - bits)) as i64 >> (64 - bits)) as i128 };
    match kind {
        0 => (raw.regs[0] & mask, raw.regs[2] & mask, 0),
        1 => {
            if signed {
                // -2^(2w-1)... no: MIN / -1.
                let (lo, hi) = split(min);
                (lo, hi, mask)
            } else {
                // High half at least the divisor: the quotient does not fit.
                let hi = d.wrapping_add(raw.imm % 4) & mask;
                let hi = hi.max(d);
                (raw.regs[0] & mask, hi, d)
            }
        }
        2 if signed => {
            let dv = sx(d);
            let (lo, hi) = split(min * dv);
            (lo, hi, d)
        }
        _ => {
            let q = raw.imm & mask;
            let r = raw.regs[0];
            if signed {
                let dv = sx(d);
                let qv = sx(q);
                let mag = (r as u128 % dv.unsigned_abs()) as i128;
                let rv = if qv * dv < 0 { -mag } else { mag };
                let (lo, hi) = split(qv * dv + rv);
                (lo, hi, d)
            } else {
                let rv = r % d;
                let n = q as u128 * d as u128 + rv as u128;
                (n as u64 & mask, (n >> bits) as u64 & mask, d)
            }
        }
    }
}

/// The flags the Intel SDM leaves undefined for this case.
fn undefined_flags(b: &Built) -> u64 {
    let bits = b.width as u64 * 8;
    let masked = |c: u64| c & if bits == 64 { 63 } else { 31 };
    match b.instr.mnemonic() {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => AF,
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => {
            let c = masked(b.count.unwrap_or(1));
            if c == 0 {
                return 0;
            }
            let mut u = AF;
            if c != 1 {
                u |= OF;
            }
            if c >= bits && b.instr.mnemonic() != Mnemonic::Sar {
                u |= CF;
            }
            u
        }
        Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr => {
            let c = masked(b.count.unwrap_or(1));
            if c > 1 {
                OF
            } else {
                0
            }
        }
        Mnemonic::Shld | Mnemonic::Shrd => {
            let c = masked(b.count.unwrap_or(1));
            match c {
                0 => 0,
                1 => AF,
                c if c > bits => CF | OF | SF | ZF | AF | PF,
                _ => AF | OF,
            }
        }
        Mnemonic::Mul | Mnemonic::Imul => SF | ZF | AF | PF,
        Mnemonic::Div | Mnemonic::Idiv => CF | OF | SF | ZF | AF | PF,
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => OF | SF | AF | PF,
        Mnemonic::Bsf | Mnemonic::Bsr => CF | OF | SF | AF | PF,
        Mnemonic::Lzcnt | Mnemonic::Tzcnt => OF | SF | PF | AF,
        Mnemonic::Andn => AF | PF,
        Mnemonic::Bextr => AF | SF | PF,
        Mnemonic::Blsi | Mnemonic::Blsmsk | Mnemonic::Blsr => AF | PF,
        _ => 0,
    }
}

/// The host feature a code needs beyond x86-64 baseline.
fn feature_of(code: Code) -> Option<Feature> {
    Some(match code.mnemonic() {
        Mnemonic::Movbe => Feature::Movbe,
        Mnemonic::Popcnt => Feature::Popcnt,
        Mnemonic::Lzcnt => Feature::Lzcnt,
        Mnemonic::Tzcnt
        | Mnemonic::Andn
        | Mnemonic::Bextr
        | Mnemonic::Blsi
        | Mnemonic::Blsmsk
        | Mnemonic::Blsr => Feature::Bmi1,
        Mnemonic::Cmpxchg16b => Feature::Cx16,
        _ => return None,
    })
}

/// A form built by [`generic`] for `code`.
fn generic_form(code: Code) -> Form {
    let count_bits = match code.op_code().op_kinds().first() {
        Some(K::r8_or_mem) => 8,
        Some(K::r16_or_mem) => 16,
        Some(K::r32_or_mem) => 32,
        _ => 64,
    };
    let form = Form::new(
        format!("{code:?}"),
        raw(count_bits).prop_map(move |r| generic(code, &r)),
    );
    match feature_of(code) {
        Some(f) => form.requires(&[f]),
        None => form,
    }
}

/// Table codes of the given mnemonics (general-purpose forms only).
fn table_codes(mnemonics: &[Mnemonic]) -> Vec<Code> {
    emu_core::insn::OpTable::global()
        .codes()
        .filter(|c| mnemonics.contains(&c.mnemonic()) && !has_vector_operand(*c))
        .filter(|c| runs_in_64bit_host(*c) && !EXCLUDED.contains(c))
        .filter(|c| !STRING_CODES.contains(c) && !PRIVILEGED.contains(c))
        .collect()
}

fn generic_forms(mnemonics: &[Mnemonic]) -> Vec<Form> {
    table_codes(mnemonics)
        .into_iter()
        .map(generic_form)
        .collect()
}

const ALU: &[Mnemonic] = &[
    Mnemonic::Add,
    Mnemonic::Or,
    Mnemonic::Adc,
    Mnemonic::Sbb,
    Mnemonic::And,
    Mnemonic::Sub,
    Mnemonic::Xor,
    Mnemonic::Cmp,
    Mnemonic::Test,
];
const UNARY: &[Mnemonic] = &[Mnemonic::Inc, Mnemonic::Dec, Mnemonic::Neg, Mnemonic::Not];
const SHIFTS: &[Mnemonic] = &[
    Mnemonic::Rol,
    Mnemonic::Ror,
    Mnemonic::Rcl,
    Mnemonic::Rcr,
    Mnemonic::Shl,
    Mnemonic::Sal,
    Mnemonic::Shr,
    Mnemonic::Sar,
    Mnemonic::Shld,
    Mnemonic::Shrd,
];
const MULDIV: &[Mnemonic] = &[Mnemonic::Mul, Mnemonic::Imul, Mnemonic::Div, Mnemonic::Idiv];
const BITS: &[Mnemonic] = &[
    Mnemonic::Bt,
    Mnemonic::Bts,
    Mnemonic::Btr,
    Mnemonic::Btc,
    Mnemonic::Bsf,
    Mnemonic::Bsr,
    Mnemonic::Lzcnt,
    Mnemonic::Tzcnt,
    Mnemonic::Popcnt,
    Mnemonic::Andn,
    Mnemonic::Bextr,
    Mnemonic::Blsi,
    Mnemonic::Blsmsk,
    Mnemonic::Blsr,
];
const MOVES: &[Mnemonic] = &[
    Mnemonic::Mov,
    Mnemonic::Movzx,
    Mnemonic::Movsx,
    Mnemonic::Movsxd,
    Mnemonic::Lea,
    Mnemonic::Xchg,
    Mnemonic::Cmpxchg,
    Mnemonic::Cmpxchg8b,
    Mnemonic::Cmpxchg16b,
    Mnemonic::Xadd,
    Mnemonic::Bswap,
    Mnemonic::Movbe,
    Mnemonic::Cbw,
    Mnemonic::Cwde,
    Mnemonic::Cdqe,
    Mnemonic::Cwd,
    Mnemonic::Cdq,
    Mnemonic::Cqo,
];
const FLAGS_MISC: &[Mnemonic] = &[
    Mnemonic::Nop,
    Mnemonic::Reservednop,
    Mnemonic::Endbr32,
    Mnemonic::Endbr64,
    Mnemonic::Rdsspd,
    Mnemonic::Rdsspq,
    Mnemonic::Cldemote,
    Mnemonic::Prefetchit0,
    Mnemonic::Prefetchit1,
    Mnemonic::Prefetchwt1,
    Mnemonic::Pause,
    Mnemonic::Lahf,
    Mnemonic::Sahf,
    Mnemonic::Clc,
    Mnemonic::Stc,
    Mnemonic::Cmc,
    Mnemonic::Cld,
    Mnemonic::Std,
];
const CONDITIONAL: &[Mnemonic] = &[
    Mnemonic::Cmovo,
    Mnemonic::Cmovno,
    Mnemonic::Cmovb,
    Mnemonic::Cmovae,
    Mnemonic::Cmove,
    Mnemonic::Cmovne,
    Mnemonic::Cmovbe,
    Mnemonic::Cmova,
    Mnemonic::Cmovs,
    Mnemonic::Cmovns,
    Mnemonic::Cmovp,
    Mnemonic::Cmovnp,
    Mnemonic::Cmovl,
    Mnemonic::Cmovge,
    Mnemonic::Cmovle,
    Mnemonic::Cmovg,
    Mnemonic::Seto,
    Mnemonic::Setno,
    Mnemonic::Setb,
    Mnemonic::Setae,
    Mnemonic::Sete,
    Mnemonic::Setne,
    Mnemonic::Setbe,
    Mnemonic::Seta,
    Mnemonic::Sets,
    Mnemonic::Setns,
    Mnemonic::Setp,
    Mnemonic::Setnp,
    Mnemonic::Setl,
    Mnemonic::Setge,
    Mnemonic::Setle,
    Mnemonic::Setg,
];
const STACK: &[Mnemonic] = &[
    Mnemonic::Push,
    Mnemonic::Pop,
    Mnemonic::Pushf,
    Mnemonic::Pushfq,
    Mnemonic::Popf,
    Mnemonic::Popfq,
    Mnemonic::Enter,
    Mnemonic::Leave,
];
const CONTROL: &[Mnemonic] = &[
    Mnemonic::Jmp,
    Mnemonic::Call,
    Mnemonic::Ret,
    Mnemonic::Loop,
    Mnemonic::Loope,
    Mnemonic::Loopne,
    Mnemonic::Jrcxz,
    Mnemonic::Jecxz,
    Mnemonic::Jo,
    Mnemonic::Jno,
    Mnemonic::Jb,
    Mnemonic::Jae,
    Mnemonic::Je,
    Mnemonic::Jne,
    Mnemonic::Jbe,
    Mnemonic::Ja,
    Mnemonic::Js,
    Mnemonic::Jns,
    Mnemonic::Jp,
    Mnemonic::Jnp,
    Mnemonic::Jl,
    Mnemonic::Jge,
    Mnemonic::Jle,
    Mnemonic::Jg,
];

/// The string instruction codes (MOVS, STOS, LODS, SCAS, CMPS in four widths).
const STRING_CODES: [Code; 20] = [
    Code::Movsb_m8_m8,
    Code::Movsw_m16_m16,
    Code::Movsd_m32_m32,
    Code::Movsq_m64_m64,
    Code::Stosb_m8_AL,
    Code::Stosw_m16_AX,
    Code::Stosd_m32_EAX,
    Code::Stosq_m64_RAX,
    Code::Lodsb_AL_m8,
    Code::Lodsw_AX_m16,
    Code::Lodsd_EAX_m32,
    Code::Lodsq_RAX_m64,
    Code::Scasb_AL_m8,
    Code::Scasw_AX_m16,
    Code::Scasd_EAX_m32,
    Code::Scasq_RAX_m64,
    Code::Cmpsb_m8_m8,
    Code::Cmpsw_m16_m16,
    Code::Cmpsd_m32_m32,
    Code::Cmpsq_m64_m64,
];

/// String instructions: every width, no prefix / REP(E) / REPNE, DF clear or set, 64- or
/// 32-bit addresses, optional FS/GS override of the source. RCX stays small and RSI/RDI
/// inside the data area; memory holds a two-value alphabet so REPE/REPNE stop at random
/// points.
fn string_form(code: Code) -> Form {
    let width = code.op_code().memory_size().size().max(1) as u64;
    let strategy = (
        raw(64),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        0u64..24,
        any::<u64>(),
        0u8..4,
    )
        .prop_map(move |(raw, rep, df, a32, count, alphabet, seg)| {
            let mut instr = Instruction::with(code);
            // iced's string constructors set operands; with() gives the code only, so
            // build through the dedicated helpers.
            let seg_reg = match seg {
                0 => Register::FS,
                1 => Register::GS,
                _ => Register::None,
            };
            let reads_src = matches!(
                code.mnemonic(),
                Mnemonic::Movsb
                    | Mnemonic::Movsw
                    | Mnemonic::Movsd
                    | Mnemonic::Movsq
                    | Mnemonic::Lodsb
                    | Mnemonic::Lodsw
                    | Mnemonic::Lodsd
                    | Mnemonic::Lodsq
                    | Mnemonic::Cmpsb
                    | Mnemonic::Cmpsw
                    | Mnemonic::Cmpsd
                    | Mnemonic::Cmpsq
            );
            let seg_reg = if reads_src { seg_reg } else { Register::None };
            let addr_size = if a32 { 32 } else { 64 };
            let rep_prefix = match rep {
                0 => iced_x86::RepPrefixKind::None,
                1 => iced_x86::RepPrefixKind::Repe,
                _ => iced_x86::RepPrefixKind::Repne,
            };
            instr = string_instruction(code, addr_size, seg_reg, rep_prefix).unwrap_or(instr);
            let bytes = harness::encode(&[instr]).expect("string op encodes");
            let mut case = Case::new(format!("{code:?}"), bytes);
            case.fill_seed = raw.fill;
            case.init.gpr = raw.regs;
            case.init.gpr[4] = DEFAULT_RSP;
            case.init.rflags = (raw.flags & !harness::DF) | if df { harness::DF } else { 0 };
            // Source and destination blocks far enough apart, inside the operand zone,
            // with room for 24 elements either way.
            let span = 24 * width + 16;
            let src = OPERAND_ZONE + 0x400 + (raw.target as u64 % 0x3000);
            let dst = OPERAND_ZONE + 0x4000 + (raw.disp as u64 % 0x3000);
            let (src, dst) = if raw.aux & 1 == 0 {
                (src, dst)
            } else {
                (dst, src)
            };
            let upper = |v: u64| if a32 { v & !0xffff_ffff } else { 0 };
            let mut src_off = src;
            if seg_reg != Register::None {
                let base = raw.seg_base % (src - 0x100);
                src_off = src - base;
                if seg_reg == Register::FS {
                    case.init.fs_base = base;
                } else {
                    case.init.gs_base = base;
                }
            }
            case.init.gpr[6] = upper(raw.regs[6]) | src_off;
            case.init.gpr[7] = upper(raw.regs[7]) | dst;
            case.init.gpr[1] = upper(raw.regs[1]) | count;
            // Two-value memory so compares match and mismatch at random points.
            let (x, y) = (raw.mem_val, !raw.mem_val);
            let start_s = src - span;
            let start_d = dst - span;
            let mut bits = alphabet;
            for k in 0..(2 * span / width) {
                let v = if bits & 1 == 0 { x } else { y };
                bits = bits.rotate_right(1);
                case.write_int(start_s + k * width, v, width as usize);
                let v = if bits & 2 == 0 { x } else { y };
                case.write_int(start_d + k * width, v, width as usize);
            }
            if raw.aux & 2 == 0 {
                case.init.gpr[0] = x;
            }
            case
        });
    Form::new(format!("{code:?}"), strategy)
}

/// A string instruction with explicit address size, segment and repeat prefix.
fn string_instruction(
    code: Code,
    addr_size: u32,
    seg: Register,
    rep: iced_x86::RepPrefixKind,
) -> Option<Instruction> {
    use iced_x86::Instruction as I;
    let i = match code.mnemonic() {
        Mnemonic::Movsb => I::with_movsb(addr_size, seg, rep),
        Mnemonic::Movsw => I::with_movsw(addr_size, seg, rep),
        Mnemonic::Movsd => I::with_movsd(addr_size, seg, rep),
        Mnemonic::Movsq => I::with_movsq(addr_size, seg, rep),
        Mnemonic::Stosb => I::with_stosb(addr_size, rep),
        Mnemonic::Stosw => I::with_stosw(addr_size, rep),
        Mnemonic::Stosd => I::with_stosd(addr_size, rep),
        Mnemonic::Stosq => I::with_stosq(addr_size, rep),
        Mnemonic::Lodsb => I::with_lodsb(addr_size, seg, rep),
        Mnemonic::Lodsw => I::with_lodsw(addr_size, seg, rep),
        Mnemonic::Lodsd => I::with_lodsd(addr_size, seg, rep),
        Mnemonic::Lodsq => I::with_lodsq(addr_size, seg, rep),
        Mnemonic::Scasb => I::with_scasb(addr_size, rep),
        Mnemonic::Scasw => I::with_scasw(addr_size, rep),
        Mnemonic::Scasd => I::with_scasd(addr_size, rep),
        Mnemonic::Scasq => I::with_scasq(addr_size, rep),
        Mnemonic::Cmpsb => I::with_cmpsb(addr_size, seg, rep),
        Mnemonic::Cmpsw => I::with_cmpsw(addr_size, seg, rep),
        Mnemonic::Cmpsd => I::with_cmpsd(addr_size, seg, rep),
        _ => I::with_cmpsq(addr_size, seg, rep),
    };
    i.ok()
}

fn string_forms() -> Vec<Form> {
    STRING_CODES.iter().copied().map(string_form).collect()
}

/// Hand-written cases: backward loops, RSP-relative PUSH/POP operands, INT3, UD2 and
/// LOCK misuse.
fn special_forms() -> Vec<Form> {
    use iced_x86::code_asm::*;
    let mut forms = Vec::new();
    // Backward LOOP/LOOPE/LOOPNE over a body that moves ZF, RCX and ECX forms.
    for (name, kind) in [("loop", 0u8), ("loope", 1), ("loopne", 2)] {
        for use_ecx in [false, true] {
            let strategy = (raw(64), 1u64..12).prop_map(move |(raw, n)| {
                let code = harness::asm(|a| {
                    let mut top = a.create_label();
                    a.set_label(&mut top)?;
                    a.inc(rax)?;
                    a.cmp(al, dl)?;
                    if use_ecx {
                        a.db(&[0x67])?;
                    }
                    match kind {
                        0 => a.loop_(top),
                        1 => a.loope(top),
                        _ => a.loopne(top),
                    }
                });
                let mut case = Case::new(format!("backward {name} ecx={use_ecx}"), code);
                case.fill_seed = raw.fill;
                case.init.gpr = raw.regs;
                case.init.gpr[4] = DEFAULT_RSP;
                case.init.rflags = raw.flags;
                // The ECX forms ignore the upper half: fill it with garbage then.
                let upper = if use_ecx {
                    raw.regs[1] & !0xffff_ffff
                } else {
                    0
                };
                case.init.gpr[1] = upper | n;
                case.init.gpr[2] = (raw.regs[2] & !0xff) | (raw.regs[0].wrapping_add(n / 2) & 0xff);
                case
            });
            forms.push(Form::new(
                format!("backward {name} ecx={use_ecx}"),
                strategy,
            ));
        }
    }
    // PUSH/POP with RSP-relative memory operands: POP computes the address after
    // incrementing RSP.
    let stack_rel = raw(64).prop_map(|raw| {
        let d = (raw.disp % 0x40) as i32 & !7;
        let which = raw.aux % 4;
        let code = harness::asm(|a| match which {
            0 => a.pop(qword_ptr(rsp + d)),
            1 => a.push(qword_ptr(rsp + d)),
            2 => a.pop(word_ptr(rsp + d)),
            _ => a.push(word_ptr(rsp + d)),
        });
        let mut case = Case::new("rsp-relative push/pop", code);
        case.fill_seed = raw.fill;
        case.init.gpr = raw.regs;
        case.init.gpr[4] = DEFAULT_RSP - (raw.target as u64 & 0x1f8);
        case.init.rflags = raw.flags;
        case
    });
    forms.push(Form::new("rsp-relative push/pop", stack_rel));
    // BT, BTS, BTR and BTC with a memory operand and a register bit offset (signed,
    // reaching words around the operand), then SETC and a CMP that overwrites ZF: with
    // ZF dead the compiling tier lowers them itself.
    let bt_offsets = (raw(64), 0usize..12, -2048i64..2048).prop_map(|(raw, which, offset)| {
        let size = [2u64, 4, 8][which / 4];
        let code = harness::asm(|a| {
            match (which % 4, size) {
                (0, 2) => a.bt(word_ptr(rbx), cx)?,
                (1, 2) => a.bts(word_ptr(rbx), cx)?,
                (2, 2) => a.btr(word_ptr(rbx), cx)?,
                (_, 2) => a.btc(word_ptr(rbx), cx)?,
                (0, 4) => a.bt(dword_ptr(rbx), ecx)?,
                (1, 4) => a.bts(dword_ptr(rbx), ecx)?,
                (2, 4) => a.btr(dword_ptr(rbx), ecx)?,
                (_, 4) => a.btc(dword_ptr(rbx), ecx)?,
                (0, _) => a.bt(qword_ptr(rbx), rcx)?,
                (1, _) => a.bts(qword_ptr(rbx), rcx)?,
                (2, _) => a.btr(qword_ptr(rbx), rcx)?,
                (_, _) => a.btc(qword_ptr(rbx), rcx)?,
            }
            a.setc(dl)?;
            a.cmp(rax, rbx)
        });
        let mut case = Case::new("bt with a register offset", code);
        case.fill_seed = raw.fill;
        case.init.gpr = raw.regs;
        case.init.gpr[3] = OPERAND_ZONE + 0x1000 + (raw.disp as u64 & 0x7f);
        case.init.gpr[4] = DEFAULT_RSP;
        // The 16- and 32-bit forms ignore the offset register's upper bits.
        let mask = (1u64 << (size * 8 - 1) << 1).wrapping_sub(1);
        case.init.gpr[1] = (raw.regs[1] & !mask) | (offset as u64 & mask);
        case.init.rflags = raw.flags;
        case
    });
    forms.push(Form::new("bt with a register offset", bt_offsets));
    // INT3 and UD2: #BP after the instruction, #UD at it.
    for (name, bytes) in [
        ("int3", vec![0x90u8, 0xcc, 0x90]),
        ("ud2", vec![0x90, 0x0f, 0x0b, 0x90]),
    ] {
        let strategy = raw(64).prop_map(move |raw| {
            let mut case = Case::new(name, bytes.clone());
            case.init.gpr = raw.regs;
            case.init.gpr[4] = DEFAULT_RSP;
            case.init.rflags = raw.flags;
            case
        });
        forms.push(Form::new(name, strategy));
    }
    // LOCK where it is not allowed: on a register destination, and on instructions that
    // do not write memory. Both are #UD.
    let lock_ud = (raw(64), 0usize..6).prop_map(|(raw, which)| {
        let bytes: &[u8] = match which {
            0 => &[0xf0, 0x48, 0x01, 0xd8], // lock add rax, rbx
            1 => &[0xf0, 0x39, 0x03],       // lock cmp [rbx], eax
            2 => &[0xf0, 0x8b, 0x03],       // lock mov eax, [rbx]
            3 => &[0xf0, 0x85, 0x03],       // lock test [rbx], eax
            4 => &[0xf0, 0x0f, 0xa3, 0x03], // lock bt [rbx], eax
            _ => &[0xf0, 0x0f, 0xc1, 0xd8], // lock xadd eax, ebx
        };
        let mut case = Case::new("lock misuse", bytes.to_vec());
        case.init.gpr = raw.regs;
        case.init.gpr[3] = zone_target(&raw, 8, true, 0);
        case.init.gpr[4] = DEFAULT_RSP;
        case.init.rflags = raw.flags;
        case
    });
    forms.push(Form::new("lock misuse", lock_ud));
    // Accesses straddling the start of the data area (the page below is unmapped): #PF
    // with nothing written, and a REP MOVS running off it part-way.
    let straddle = (raw(64), 0usize..6, 1u64..8).prop_map(|(raw, which, k)| {
        let bytes: &[u8] = match which {
            0 => &[0x48, 0x89, 0x03], // mov [rbx], rax
            1 => &[0x48, 0x01, 0x03], // add [rbx], rax
            2 => &[0x48, 0x8b, 0x03], // mov rax, [rbx]
            3 => &[0x0f, 0xc7, 0x0b], // cmpxchg8b [rbx]
            4 => &[0x50],             // push rax (RSP at the edge)
            _ => &[0xfd, 0xf3, 0xa4], // std; rep movsb, running down off the area
        };
        let mut case = Case::new("straddles unmapped memory", bytes.to_vec());
        case.fill_seed = raw.fill;
        case.init.gpr = raw.regs;
        case.init.gpr[3] = harness::DATA - k;
        case.init.gpr[4] = if which == 4 {
            harness::DATA + k
        } else {
            DEFAULT_RSP
        };
        case.init.gpr[1] = 0x40 + (raw.imm & 0x3f);
        case.init.gpr[6] = harness::DATA + 0x20 + (raw.index_val & 0x1f);
        case.init.gpr[7] = harness::DATA + 0x800;
        case.init.rflags = raw.flags;
        case
    });
    forms.push(Form::new("straddles unmapped memory", straddle));
    // Self-modifying code: a store into the next instruction's immediate, which then
    // runs with the new value (the emulator must drop the stale translation).
    let smc = (raw(64), any::<u32>()).prop_map(|(raw, imm)| {
        let code = harness::asm(|a| {
            let mut patch = a.create_label();
            a.mov(dword_ptr(patch) + 1, ecx)?;
            a.set_label(&mut patch)?;
            a.add(eax, imm as i32)?;
            a.mov(byte_ptr(patch) + 1, dl)?;
            a.nop()
        });
        let mut case = Case::new("self-modifying code", code);
        case.init.gpr = raw.regs;
        case.init.gpr[4] = DEFAULT_RSP;
        case.init.rflags = raw.flags;
        case
    });
    forms.push(Form::new("self-modifying code", smc));
    // Data accesses to non-canonical addresses: #GP(0).
    let non_canonical = (raw(64), 0usize..4, any::<bool>()).prop_map(|(raw, which, high)| {
        let bytes: &[u8] = match which {
            0 => &[0x48, 0x8b, 0x03],             // mov rax, [rbx]
            1 => &[0x89, 0x03],                   // mov [rbx], eax
            2 => &[0x00, 0x04, 0x0b],             // add [rbx+rcx], al
            _ => &[0xf0, 0x48, 0x0f, 0xc1, 0x03], // lock xadd [rbx], rax
        };
        let mut case = Case::new("non-canonical address", bytes.to_vec());
        case.init.gpr = raw.regs;
        case.init.gpr[1] = raw.index_val & 0xff;
        let bad = if high {
            0x8000_0000_0000_0000
        } else {
            0x0000_8000_0000_0000
        };
        case.init.gpr[3] = bad | (raw.seg_base & 0x3fff_ffff_ffff);
        case.init.gpr[4] = DEFAULT_RSP;
        case.init.rflags = raw.flags;
        case
    });
    forms.push(Form::new("non-canonical address", non_canonical));
    forms
}

/// Random straight-line sequences of general-purpose instructions, so flags and values flow
/// from one handler to the next (lazy flags included). Memory operands are RIP-relative or
/// absolute, so no instruction's address depends on a register an earlier one changed.
/// Flags an instruction leaves undefined are tracked: a later instruction that would read
/// one gets a `cmp` first that defines all of them, and those still undefined at the end
/// are masked.
fn sequence_form() -> Form {
    let pool = sequence_pool();
    let strategy = (
        proptest::collection::vec((0usize..pool.len(), raw(64)), 2..8),
        raw(64),
    )
        .prop_map(move |(steps, first)| sequence_case(&pool, &steps, &first));
    Form::new("random sequences", strategy)
}

fn sequence_pool() -> Vec<Code> {
    let mut pool = Vec::new();
    for family in [
        ALU,
        UNARY,
        SHIFTS,
        MULDIV,
        BITS,
        MOVES,
        CONDITIONAL,
        FLAGS_MISC,
    ] {
        for code in table_codes(family) {
            let m = code.mnemonic();
            let excluded = matches!(
                m,
                // Faults, host features, undefined results and stack-pointer games stay
                // in their own forms.
                Mnemonic::Div
                    | Mnemonic::Idiv
                    | Mnemonic::Cmpxchg8b
                    | Mnemonic::Cmpxchg16b
                    | Mnemonic::Bswap
                    | Mnemonic::Bsf
                    | Mnemonic::Bsr
                    | Mnemonic::Cld
                    | Mnemonic::Std
            ) || feature_of(code).is_some()
                || code == Code::Shld_rm16_r16_CL
                || code == Code::Shrd_rm16_r16_CL
                || code == Code::Shld_rm16_r16_imm8
                || code == Code::Shrd_rm16_r16_imm8;
            if !excluded {
                pool.push(code);
            }
        }
    }
    pool
}

fn sequence_case(pool: &[Code], steps: &[(usize, Raw)], first: &Raw) -> Case {
    let mut code = Vec::new();
    let mut undefined = 0u64;
    let mut case = Case::new("random sequence", Vec::new());
    case.fill_seed = first.fill;
    case.init.gpr = first.regs;
    case.init.gpr[4] = DEFAULT_RSP;
    case.init.rflags = first.flags;
    // An instruction that faults ends the case wherever it is (the pool has forms the
    // host may not know, which are #UD): the flags undefined at any point may be the
    // final ones.
    let mut ever_undefined = 0;
    for (idx, raw) in steps {
        append_step(&mut case, &mut code, &mut undefined, pool[*idx], raw, &[]);
        ever_undefined |= undefined;
    }
    case.code = code;
    case.undefined_flags = ever_undefined;
    case
}

/// Appends to `code` the instruction of `c` that `raw` makes (with absolute or
/// RIP-relative memory only, leaving RSP and the registers in `reserved` alone; nothing
/// if it cannot), its memory to `case`, and keeps `undefined` (the flags undefined at
/// the end of `code`) up to date, defining them all with a `cmp` first if the new
/// instruction would read one.
fn append_step(
    case: &mut Case,
    code: &mut Vec<u8>,
    undefined: &mut u64,
    c: Code,
    raw: &Raw,
    reserved: &[Register],
) {
    let mut raw = raw.clone();
    raw.mode = (raw.mode & !7) | if raw.mode & 1 == 0 { 2 } else { 3 };
    raw.seg = 7;
    raw.producer = 1;
    let one = generic(c, &raw);
    let Some(instr) = decode_first(&one.code) else {
        return;
    };
    // BT with a memory operand and a register offset addresses by a register value.
    let bt_reg_offset = matches!(
        instr.mnemonic(),
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
    ) && instr.op0_kind() == OpKind::Memory
        && instr.op1_kind() == OpKind::Register;
    let used = used_registers(&instr);
    if bt_reg_offset
        || used.contains(&Register::RSP)
        || reserved.iter().any(|r| used.contains(r))
        || instr.memory_base() != Register::None && instr.memory_base() != Register::RIP
    {
        return;
    }
    // A read of a flag still undefined: define them all first.
    if instr.rflags_read() & iced_flags(*undefined) != 0 {
        define_flags(code);
        *undefined = 0;
    }
    // Re-encode at its place in the sequence (RIP-relative operands move with it).
    let mut placed = instr;
    placed.set_ip(CODE + code.len() as u64);
    let Ok(bytes) = harness::encode_at(CODE + code.len() as u64, &[placed]) else {
        return;
    };
    if code.len() + bytes.len() > 512 {
        return;
    }
    code.extend(bytes);
    for (addr, bytes) in &one.mem {
        case.mem.push((*addr, bytes.clone()));
    }
    // Shifts and rotates may leave every flag alone (count 0) and their counts from
    // CL are only known at run time: they define nothing and may leave CF, OF and AF
    // undefined.
    if is_shift_or_rotate(instr.mnemonic()) {
        *undefined |= CF | OF | AF;
    } else {
        let defined = harness_flags(instr.rflags_modified()) & !one.undefined_flags;
        *undefined = (*undefined & !defined) | one.undefined_flags;
    }
}

/// Shifts and rotates: with a count of 0 they leave every flag alone.
fn is_shift_or_rotate(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Rol
            | Mnemonic::Ror
            | Mnemonic::Rcl
            | Mnemonic::Rcr
            | Mnemonic::Shl
            | Mnemonic::Sal
            | Mnemonic::Shr
            | Mnemonic::Sar
            | Mnemonic::Shld
            | Mnemonic::Shrd
    )
}

/// Appends `cmp rax, rbx`, which defines every arithmetic flag.
fn define_flags(code: &mut Vec<u8>) {
    code.extend(
        harness::encode_at(
            CODE + code.len() as u64,
            &[Instruction::with2(Code::Cmp_rm64_r64, Register::RAX, Register::RBX).expect("cmp")],
        )
        .expect("cmp encodes"),
    );
}

/// Random sequences inside a loop whose body has a forward conditional branch, so that
/// the body is three blocks (the compiling tier turns such loops into one region, with
/// registers and flags carried from block to block in host registers):
///
/// ```text
/// top:  setcc; A; jcc skip; B
/// skip: setcc; C; cmp rax, rbx; dec r15; jnz top
/// ```
///
/// R15 counts 1..6 iterations and A, B and C leave it alone; the SETcc instructions
/// read flags that the block before left pending.
fn loop_form() -> Form {
    let pool = sequence_pool();
    // The loop's shape comes from the first `Raw`'s spare material: a bigger strategy
    // tuple overflows proptest's stack.
    let strategy = (
        proptest::collection::vec((0usize..pool.len(), raw(64)), 3..8),
        raw(64),
    )
        .prop_map(move |(steps, first)| {
            let shape = first.aux;
            let cc = (shape & 15) as u8;
            let iterations = 1 + (shape >> 4) % 6;
            let split = ((shape >> 8) as usize % 64, (shape >> 16) as usize % 64);
            loop_case(&pool, &steps, &first, cc, iterations, split)
        });
    Form::new("random loops", strategy)
}

fn loop_case(
    pool: &[Code],
    steps: &[(usize, Raw)],
    first: &Raw,
    cc: u8,
    iterations: u64,
    split: (usize, usize),
) -> Case {
    let mut case = Case::new("random loop", Vec::new());
    case.fill_seed = first.fill;
    case.init.gpr = first.regs;
    case.init.gpr[4] = DEFAULT_RSP;
    case.init.gpr[15] = iterations;
    case.init.rflags = first.flags;
    let reserved = [Register::R15];
    let a = 1 + split.0 % steps.len();
    let b = a + split.1 % (steps.len() - a + 1);
    let mut code = Vec::new();
    // The second time round, whatever the end of the body left undefined (DEC defines
    // all but CF) meets the reads at the top.
    // The body ends with CMP and DEC, so every flag is defined at the top (CF by the
    // CMP, the others by the DEC) and the first time round by the initial RFLAGS.
    let mut undefined = 0;
    // Read flags at the top and after the join, so they cross from block to block:
    // SETcc into AL, BL, CL or DL.
    let shape = first.aux;
    let setcc = |code: &mut Vec<u8>, cc: u8, reg: u8| code.extend([0x0f, 0x90 | cc, 0xc0 | reg]);
    setcc(
        &mut code,
        ((shape >> 24) & 15) as u8,
        ((shape >> 28) & 3) as u8,
    );
    // An instruction that faults ends the case wherever it is: the flags undefined at
    // any point may be the final ones.
    let mut ever_undefined = 0;
    let mut append =
        |case: &mut Case, code: &mut Vec<u8>, undefined: &mut u64, part: &[(usize, Raw)]| {
            for (idx, raw) in part {
                append_step(case, code, undefined, pool[*idx], raw, &reserved);
                ever_undefined |= *undefined;
            }
        };
    append(&mut case, &mut code, &mut undefined, &steps[..a]);
    if undefined != 0 {
        define_flags(&mut code);
        undefined = 0;
    }
    let jcc = code.len();
    code.extend([0x0f, 0x80 | cc, 0, 0, 0, 0]);
    append(&mut case, &mut code, &mut undefined, &steps[a..b]);
    let skip = code.len();
    code[jcc + 2..jcc + 6].copy_from_slice(&((skip - (jcc + 6)) as i32).to_le_bytes());
    let join_cc = ((shape >> 32) & 15) as u8;
    if harness_flags(cc_flags(join_cc)) & undefined == 0 {
        setcc(&mut code, join_cc, ((shape >> 36) & 3) as u8);
    }
    append(&mut case, &mut code, &mut undefined, &steps[b..]);
    define_flags(&mut code);
    code.extend([0x49, 0xff, 0xcf]); // dec r15
    let back = -((code.len() + 6) as i32);
    code.extend([0x0f, 0x85]); // jnz top
    code.extend(back.to_le_bytes());
    case.code = code;
    case.undefined_flags = ever_undefined;
    case
}

/// iced's flags that condition code `cc` reads.
fn cc_flags(cc: u8) -> u32 {
    decode_first(&[0x0f, 0x90 | cc, 0xc0]).map_or(u32::MAX, |i| i.rflags_read())
}

fn decode_first(code: &[u8]) -> Option<Instruction> {
    let mut d = iced_x86::Decoder::with_ip(64, code, CODE, iced_x86::DecoderOptions::NONE);
    let i = d.decode();
    (!i.is_invalid()).then_some(i)
}

/// iced's RflagsBits for our RFLAGS bits.
fn iced_flags(f: u64) -> u32 {
    let mut r = 0;
    for (ours, theirs) in FLAG_MAP {
        if f & ours != 0 {
            r |= theirs;
        }
    }
    r
}

/// Our RFLAGS bits for iced's RflagsBits.
fn harness_flags(f: u32) -> u64 {
    let mut r = 0;
    for (ours, theirs) in FLAG_MAP {
        if f & theirs != 0 {
            r |= ours;
        }
    }
    r
}

const FLAG_MAP: [(u64, u32); 6] = [
    (CF, RflagsBits::CF),
    (PF, RflagsBits::PF),
    (AF, RflagsBits::AF),
    (ZF, RflagsBits::ZF),
    (SF, RflagsBits::SF),
    (OF, RflagsBits::OF),
];

/// Instructions that need CPL 0 (CLI/STI: CPL <= IOPL). The host runs them in a user
/// process, where each raises #GP(0) (STAC/CLAC: #UD; IN/OUT/INS/OUTS: no I/O bitmap
/// grants the port, as Linux gives user processes none); the emulated side runs at CPL 3 too, so these cases
/// check the privilege checks. Their CPL 0 behaviour is covered by `tests/system_isa.rs`.
/// SGDT/SIDT are not here: they are legal at CPL 3 unless the host kernel enables UMIP, so
/// the host's answer depends on its configuration.
const PRIVILEGED: &[Code] = &[
    Code::Mov_r64_cr,
    Code::Mov_cr_r64,
    Code::Mov_r64_dr,
    Code::Mov_dr_r64,
    Code::Rdmsr,
    Code::Wrmsr,
    Code::Lgdt_m1664,
    Code::Lidt_m1664,
    Code::Ltr_rm16,
    Code::Ltr_r32m16,
    Code::Ltr_r64m16,
    Code::Lldt_rm16,
    Code::Lldt_r32m16,
    Code::Lldt_r64m16,
    Code::Cli,
    Code::Sti,
    Code::Clts,
    Code::Swapgs,
    Code::Invlpg_m,
    Code::Wbinvd,
    Code::Invd,
    Code::Hlt,
    Code::Sysretq,
    Code::Sysretd,
    Code::Lmsw_rm16,
    Code::Lmsw_r32m16,
    Code::Lmsw_r64m16,
    Code::Stac,
    Code::Clac,
    Code::In_AL_imm8,
    Code::In_AX_imm8,
    Code::In_EAX_imm8,
    Code::In_AL_DX,
    Code::In_AX_DX,
    Code::In_EAX_DX,
    Code::Out_imm8_AL,
    Code::Out_imm8_AX,
    Code::Out_imm8_EAX,
    Code::Out_DX_AL,
    Code::Out_DX_AX,
    Code::Out_DX_EAX,
    Code::Insb_m8_DX,
    Code::Insw_m16_DX,
    Code::Insd_m32_DX,
    Code::Outsb_DX_m8,
    Code::Outsw_DX_m16,
    Code::Outsd_DX_m32,
];

/// One form per privileged instruction: random registers, then the instruction, which
/// must raise #GP(0) at CPL 3 on both sides without changing anything.
fn privileged_forms() -> Vec<Form> {
    use iced_x86::code_asm::*;
    PRIVILEGED
        .iter()
        .map(|&code| {
            let strategy = raw(64).prop_map(move |raw| {
                let selector_operand = match code {
                    Code::Ltr_rm16 | Code::Lldt_rm16 | Code::Lmsw_rm16 => Some(Register::AX),
                    Code::Ltr_r32m16 | Code::Lldt_r32m16 | Code::Lmsw_r32m16 => Some(Register::EAX),
                    Code::Ltr_r64m16 | Code::Lldt_r64m16 | Code::Lmsw_r64m16 => Some(Register::RAX),
                    _ => None,
                };
                let bytes = if let Some(r) = selector_operand {
                    let instr = Instruction::with1(code, r).expect("LTR/LLDT/LMSW register form");
                    harness::encode(&[instr]).expect("encodable")
                } else {
                    harness::asm(|a| match code {
                        Code::Mov_r64_cr => a.mov(rax, cr0),
                        Code::Mov_cr_r64 => a.mov(cr4, rbx),
                        Code::Mov_r64_dr => a.mov(rcx, dr7),
                        Code::Mov_dr_r64 => a.mov(dr0, rdx),
                        Code::Rdmsr => a.rdmsr(),
                        Code::Wrmsr => a.wrmsr(),
                        Code::Lgdt_m1664 => a.lgdt(ptr(rsi)),
                        Code::Lidt_m1664 => a.lidt(ptr(rsi)),
                        Code::Cli => a.cli(),
                        Code::Sti => a.sti(),
                        Code::Clts => a.clts(),
                        Code::Swapgs => a.swapgs(),
                        Code::Invlpg_m => a.invlpg(ptr(rsi)),
                        Code::Wbinvd => a.wbinvd(),
                        Code::Invd => a.invd(),
                        Code::Sysretq => a.sysretq(),
                        Code::Sysretd => a.sysret(),
                        Code::Stac => a.stac(),
                        Code::In_AL_imm8 => a.in_(al, 0x60),
                        Code::In_AX_imm8 => a.in_(ax, 0x60),
                        Code::In_EAX_imm8 => a.in_(eax, 0x60),
                        Code::In_AL_DX => a.in_(al, dx),
                        Code::In_AX_DX => a.in_(ax, dx),
                        Code::In_EAX_DX => a.in_(eax, dx),
                        Code::Out_imm8_AL => a.out(0x60, al),
                        Code::Out_imm8_AX => a.out(0x60, ax),
                        Code::Out_imm8_EAX => a.out(0x60, eax),
                        Code::Out_DX_AL => a.out(dx, al),
                        Code::Out_DX_AX => a.out(dx, ax),
                        Code::Out_DX_EAX => a.out(dx, eax),
                        Code::Insb_m8_DX => a.insb(),
                        Code::Insw_m16_DX => a.insw(),
                        Code::Insd_m32_DX => a.insd(),
                        Code::Outsb_DX_m8 => a.outsb(),
                        Code::Outsw_DX_m16 => a.outsw(),
                        Code::Outsd_DX_m32 => a.outsd(),
                        Code::Clac => a.clac(),
                        _ => a.hlt(),
                    })
                };
                let mut case = Case::new(format!("{code:?} at CPL 3"), bytes);
                case.fill_seed = raw.fill;
                case.init.gpr = raw.regs;
                case.init.gpr[4] = DEFAULT_RSP;
                case.init.gpr[6] = OPERAND_ZONE;
                case.init.rflags = raw.flags;
                case
            });
            Form::new(format!("{code:?} at CPL 3"), strategy)
        })
        .collect()
}

#[test]
fn privileged_instructions_fault_at_cpl3() {
    harness::run_forms(privileged_forms());
}

/// Every GP form, for the coverage test.
pub fn forms() -> Vec<Form> {
    let mut all = Vec::new();
    for family in [
        ALU,
        UNARY,
        SHIFTS,
        MULDIV,
        BITS,
        MOVES,
        FLAGS_MISC,
        CONDITIONAL,
        STACK,
        CONTROL,
    ] {
        all.extend(generic_forms(family));
    }
    all.extend(string_forms());
    all.extend(privileged_forms());
    all.extend(special_forms());
    all.push(sequence_form());
    all.push(loop_form());
    all
}

#[test]
fn alu() {
    harness::run_forms(generic_forms(ALU));
}

#[test]
fn inc_dec_neg_not() {
    harness::run_forms(generic_forms(UNARY));
}

#[test]
fn shifts_and_rotates() {
    harness::run_forms(generic_forms(SHIFTS));
}

#[test]
fn multiply_and_divide() {
    harness::run_forms(generic_forms(MULDIV));
}

#[test]
fn bit_instructions() {
    harness::run_forms(generic_forms(BITS));
}

#[test]
fn moves_and_exchanges() {
    harness::run_forms(generic_forms(MOVES));
}

#[test]
fn flag_instructions_and_nops() {
    harness::run_forms(generic_forms(FLAGS_MISC));
}

#[test]
fn cmov_and_setcc() {
    harness::run_forms(generic_forms(CONDITIONAL));
}

#[test]
fn stack() {
    harness::run_forms(generic_forms(STACK));
}

#[test]
fn control_flow() {
    harness::run_forms(generic_forms(CONTROL));
}

#[test]
fn strings() {
    harness::run_forms(string_forms());
}

#[test]
fn special_cases() {
    harness::run_forms(special_forms());
}

#[test]
fn sequences() {
    harness::run_forms([sequence_form()]);
}

#[test]
fn loops() {
    harness::run_forms([loop_form()]);
}

/// The harness itself: a difference must be reported (a test that cannot fail is worse
/// than none). CPUID differs between host and emulator by design.
#[test]
fn harness_reports_differences() {
    if let Some(why) = harness::native_unavailable() {
        eprintln!("host_diff: skipping: {why}");
        return;
    }
    let code = harness::asm(|a| {
        use iced_x86::code_asm::*;
        a.xor(eax, eax)?;
        a.cpuid()
    });
    let report = harness::try_check(&Case::new("cpuid leaf 0", code)).expect_err("must differ");
    assert!(report.contains("RBX: native"), "{report}");
    assert!(report.contains("cpuid"), "{report}");
}
