//! Lowering one translated block to Cranelift IR (see the module docs of [`super`]).
//!
//! The ordering rule every instruction's lowering keeps: all of an instruction's memory
//! accesses come before any of its register or flag updates. A memory access that misses
//! the TLB writes the register cache and pending flags back before calling the `Mmu`, so
//! if it faults the CPU state is exactly the state before the instruction.

use std::mem::offset_of;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block as IrBlock, Function, InstBuilder, MemFlags, SigRef, Signature, Type,
    Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use emu_mmu::{Mmu, TlbEntry, PAGE_MASK, TLB_ENTRIES};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

use super::helpers::{self, JitCtx, STATUS_CODE_WRITTEN, STATUS_TRAP};
use super::{Job, Member};
use crate::cpu::{reg, seg, Cpu};
use crate::flags::{self, FlagOp, LazyFlags};
use crate::insn::{Insn, ADDR16, ADDR32, LOCKED};
use crate::translate::{register_number, Block};

/// Whether the host may reorder memory accesses that x86's total store order keeps in
/// order (aarch64). Inline guest loads are then followed and guest stores preceded by a
/// full fence, which gives the acquire/release pairs TSO needs; the interpreter's
/// accesses get the same from `emu_mmu::host_access` (LDAR/STLR). A full fence is more
/// than TSO needs (an LDAR/STLR pair would do for aligned accesses, which unaligned ones
/// would have to branch around); on x86-64 hosts nothing is emitted.
const WEAK_HOST: bool = cfg!(not(target_arch = "x86_64"));

/// How a block's instructions were lowered.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Lowered to host code.
    pub native: usize,
    /// Left to their interpreter handler.
    pub fallback: usize,
    /// The mnemonics left to handlers (for `QUETZAL_JIT_STATS`).
    pub fallback_mnemonics: Vec<Mnemonic>,
}

/// Decodes `block`'s bytes again (in 64-bit mode), checking that every instruction
/// starts and ends where the block's records say. `None` if the bytes cannot be fetched or
/// do not match.
pub fn decode_again(cpu: &mut Cpu, block: &Block) -> Option<Vec<Instruction>> {
    let len = block.end_rip.wrapping_sub(block.rip) as usize;
    if len == 0 || len > 64 * 15 {
        return None;
    }
    let mut buf = vec![0u8; len];
    let linear = cpu.code_linear(block.rip);
    if cpu.mmu.fetch_code(linear, &mut buf) != len {
        return None;
    }
    let mut decoder = Decoder::with_ip(64, &buf, block.rip, DecoderOptions::NONE);
    let mut out = Vec::with_capacity(block.insns.len());
    for insn in block.insns.iter() {
        let instr = decoder.decode();
        if instr.ip() != insn.rip || instr.len() != insn.len as usize {
            return None;
        }
        out.push(instr);
    }
    Some(out)
}

/// Byte offsets of what compiled code touches inside a [`Cpu`].
struct Layout {
    regs: i32,
    rip: i32,
    flags_kind: i32,
    flags_res: i32,
    flags_a: i32,
    flags_b: i32,
    seg_base: i32,
    tlb_read: i32,
    tlb_write: i32,
    tlb_fetch: i32,
    fetch_mapping_changed: i32,
    privilege_changed: i32,
    interrupt_shadow: i32,
    xmm: i32,
}

impl Layout {
    fn new() -> Self {
        let flags = offset_of!(Cpu, flags);
        let mmu = offset_of!(Cpu, mmu);
        let tlb = Mmu::tlb_layout();
        Layout {
            regs: offset_of!(Cpu, regs) as i32,
            rip: offset_of!(Cpu, rip) as i32,
            flags_kind: (flags + offset_of!(LazyFlags, kind)) as i32,
            flags_res: (flags + offset_of!(LazyFlags, res)) as i32,
            flags_a: (flags + offset_of!(LazyFlags, a)) as i32,
            flags_b: (flags + offset_of!(LazyFlags, b)) as i32,
            seg_base: offset_of!(Cpu, seg_base) as i32,
            tlb_read: (mmu + tlb.read_entries) as i32,
            tlb_write: (mmu + tlb.write_entries) as i32,
            tlb_fetch: (mmu + tlb.fetch_entries) as i32,
            fetch_mapping_changed: offset_of!(Cpu, fetch_mapping_changed) as i32,
            privilege_changed: offset_of!(Cpu, privilege_changed) as i32,
            interrupt_shadow: offset_of!(Cpu, interrupt_shadow) as i32,
            xmm: offset_of!(Cpu, xmm) as i32,
        }
    }
}

/// The flag state at a point of the block, known at compile time.
#[derive(Clone, Copy)]
enum Pending {
    /// `Cpu::flags` holds the current flags.
    Memory,
    /// The last flag-producing operation, not yet written to `Cpu::flags`.
    Lazy {
        op: FlagOp,
        /// log2 of the operand width in bytes.
        width: u8,
        a: Value,
        b: Value,
        res: Value,
    },
}

/// Our flag bits from iced's.
fn flag_bits(rflags: u32) -> u64 {
    use iced_x86::RflagsBits as R;
    let mut f = 0;
    for (iced, ours) in [
        (R::OF, flags::OF),
        (R::SF, flags::SF),
        (R::ZF, flags::ZF),
        (R::AF, flags::AF),
        (R::CF, flags::CF),
        (R::PF, flags::PF),
    ] {
        if rflags & iced != 0 {
            f |= ours;
        }
    }
    f
}

fn is_shift_or_rotate(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Shl
            | Mnemonic::Sal
            | Mnemonic::Shr
            | Mnemonic::Sar
            | Mnemonic::Rol
            | Mnemonic::Ror
            | Mnemonic::Rcl
            | Mnemonic::Rcr
            | Mnemonic::Shld
            | Mnemonic::Shrd
    )
}

/// Flags an instruction certainly overwrites (for liveness: a write that may not happen,
/// such as a shift by CL, which leaves the flags alone when CL is 0, kills nothing).
fn flags_killed(instr: &Instruction) -> u64 {
    if is_shift_or_rotate(instr.mnemonic()) {
        let count_kind = instr.op_kind(instr.op_count() - 1);
        if count_kind != OpKind::Immediate8 {
            return 0;
        }
        let mask = if instr.op0_register().size() == 8 || instr.memory_size().size() == 8 {
            0x3f
        } else {
            0x1f
        };
        if instr.immediate8() & mask == 0 {
            return 0;
        }
    }
    flag_bits(instr.rflags_modified())
}

/// For each instruction, the arithmetic flags that may be read after it before being
/// overwritten, given those live at the end of the block (`at_end`).
fn live_flags_after(decoded: &[Instruction], at_end: u64) -> Vec<u64> {
    let mut live = at_end;
    let mut out = vec![0; decoded.len()];
    for (i, instr) in decoded.iter().enumerate().rev() {
        out[i] = live;
        live = (live & !flags_killed(instr)) | flag_bits(instr.rflags_read());
    }
    out
}

/// Width in bytes of operand `i` (a GPR or memory).
fn operand_size(instr: &Instruction, i: u32) -> u8 {
    match instr.op_kind(i) {
        OpKind::Register => instr.op_register(i).size() as u8,
        OpKind::Memory => instr.memory_size().size() as u8,
        _ => 0,
    }
}

fn width_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn int_type(size: u8) -> Type {
    match size {
        1 => types::I8,
        2 => types::I16,
        4 => types::I32,
        _ => types::I64,
    }
}

/// What the lowering does with one instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plan {
    Nop,
    Mov,
    Movzx,
    Movsx,
    Lea,
    Alu,
    IncDec,
    Neg,
    Not,
    Shift,
    Imul,
    Push,
    Pop,
    Jmp,
    Jcc,
    Call,
    Ret,
    /// JMP r/m64 and CALL r/m64.
    JmpIndirect,
    CallIndirect,
    Cmov,
    Setcc,
    Xchg,
    Bswap,
    Cdqe,
    Cdq,
    Cqo,
    /// BT, BTS, BTR, BTC (not locked).
    Bt,
    /// An SSE data move or bitwise operation (see [`SseOp`]).
    Sse(SseOp),
    /// Through the interpreter handler.
    Fallback,
}

/// The SSE instructions lowered here: the data moves and bitwise operations that
/// compiled C is full of (XMM registers stay in the `Cpu`; each access is a host load or
/// store).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SseOp {
    /// MOVSS/MOVSD/MOVQ/MOVD into XMM from memory or a GPR (or MOVQ from an XMM
    /// register): the low `size` bytes, the rest of the register zeroed.
    LoadZext(u8),
    /// The low `size` bytes of an XMM register to memory or a GPR (MOVD to a GPR
    /// zero-extends into it).
    StoreLow(u8),
    /// MOVSS/MOVSD between registers: only the low `size` bytes move.
    MergeLow(u8),
    /// A whole-register move (MOVUPS, MOVAPS, MOVDQU, MOVDQA, ...); `aligned` forms
    /// raise #GP on a misaligned memory operand.
    Full { aligned: bool },
    /// PXOR/XORPS/XORPD, POR/ORPS/ORPD, PAND/ANDPS/ANDPD (memory operands aligned).
    Logic(SseLogic),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SseLogic {
    Xor,
    Or,
    And,
}

/// The [`SseOp`] for `code`, if it is one lowered here.
fn sse_op(code: Code) -> Option<SseOp> {
    use SseOp::*;
    Some(match code {
        Code::Movss_xmm_xmmm32 | Code::Movss_xmmm32_xmm => MergeLow(4),
        Code::Movsd_xmm_xmmm64 | Code::Movsd_xmmm64_xmm => MergeLow(8),
        Code::Movq_xmm_xmmm64 | Code::Movq_xmm_rm64 => LoadZext(8),
        Code::Movd_xmm_rm32 => LoadZext(4),
        Code::Movq_xmmm64_xmm | Code::Movq_rm64_xmm => StoreLow(8),
        Code::Movd_rm32_xmm => StoreLow(4),
        Code::Movups_xmm_xmmm128
        | Code::Movupd_xmm_xmmm128
        | Code::Movdqu_xmm_xmmm128
        | Code::Movups_xmmm128_xmm
        | Code::Movupd_xmmm128_xmm
        | Code::Movdqu_xmmm128_xmm => Full { aligned: false },
        Code::Movaps_xmm_xmmm128
        | Code::Movapd_xmm_xmmm128
        | Code::Movdqa_xmm_xmmm128
        | Code::Movaps_xmmm128_xmm
        | Code::Movapd_xmmm128_xmm
        | Code::Movdqa_xmmm128_xmm => Full { aligned: true },
        Code::Pxor_xmm_xmmm128 | Code::Xorps_xmm_xmmm128 | Code::Xorpd_xmm_xmmm128 => {
            Logic(SseLogic::Xor)
        }
        Code::Por_xmm_xmmm128 | Code::Orps_xmm_xmmm128 | Code::Orpd_xmm_xmmm128 => {
            Logic(SseLogic::Or)
        }
        Code::Pand_xmm_xmmm128 | Code::Andps_xmm_xmmm128 | Code::Andpd_xmm_xmmm128 => {
            Logic(SseLogic::And)
        }
        _ => return None,
    })
}

/// Whether every explicit operand is a GPR, a plain memory operand or an immediate.
fn plain_operands(instr: &Instruction) -> bool {
    (0..instr.op_count()).all(|i| match instr.op_kind(i) {
        OpKind::Register => instr.op_register(i).is_gpr(),
        OpKind::Memory => true,
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => true,
        _ => false,
    })
}

fn plan(instr: &Instruction, insn: &Insn, live_after: u64) -> Plan {
    if insn.flags & LOCKED != 0 || instr.is_invalid() {
        return Plan::Fallback;
    }
    let code = instr.code();
    match code {
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => return Plan::Jmp,
        Code::Call_rel32_64 => return Plan::Call,
        Code::Retnq => return Plan::Ret,
        Code::Jmp_rm64 => return Plan::JmpIndirect,
        Code::Call_rm64 => return Plan::CallIndirect,
        Code::Push_r64 | Code::Pushq_imm8 | Code::Pushq_imm32 => return Plan::Push,
        Code::Pop_r64 => return Plan::Pop,
        Code::Cdqe => return Plan::Cdqe,
        Code::Cdq => return Plan::Cdq,
        Code::Cqo => return Plan::Cqo,
        Code::Nopw | Code::Nopd | Code::Nopq | Code::Nop_rm16 | Code::Nop_rm32 | Code::Nop_rm64 => {
            return Plan::Nop
        }
        _ => {}
    }
    if instr.is_jcc_short_or_near() {
        return if instr.op0_kind() == OpKind::NearBranch64 {
            Plan::Jcc
        } else {
            Plan::Fallback
        };
    }
    if let Some(op) = sse_op(code) {
        // MOVSS/MOVSD with memory are loads or stores, not merges.
        let op = match op {
            SseOp::MergeLow(size) if instr.op1_kind() == OpKind::Memory => SseOp::LoadZext(size),
            SseOp::MergeLow(size) if instr.op0_kind() == OpKind::Memory => SseOp::StoreLow(size),
            op => op,
        };
        return Plan::Sse(op);
    }
    if !plain_operands(instr) || instr.op_count() == 0 {
        return Plan::Fallback;
    }
    // Every flag the instruction may write (conditionally or not) must be dead.
    let flags_dead = flag_bits(instr.rflags_modified()) & live_after == 0;
    let m = instr.mnemonic();
    match m {
        Mnemonic::Mov => Plan::Mov,
        Mnemonic::Movzx => Plan::Movzx,
        Mnemonic::Movsx | Mnemonic::Movsxd => Plan::Movsx,
        Mnemonic::Lea => Plan::Lea,
        Mnemonic::Add
        | Mnemonic::Adc
        | Mnemonic::Sub
        | Mnemonic::Sbb
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test
            if instr.op_count() == 2 =>
        {
            Plan::Alu
        }
        Mnemonic::Inc | Mnemonic::Dec => Plan::IncDec,
        Mnemonic::Neg => Plan::Neg,
        Mnemonic::Not => Plan::Not,
        Mnemonic::Shl
        | Mnemonic::Sal
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Rol
        | Mnemonic::Ror
            if flags_dead && instr.op_count() == 2 =>
        {
            Plan::Shift
        }
        Mnemonic::Imul if flags_dead && instr.op_count() >= 2 => Plan::Imul,
        Mnemonic::Cmovo
        | Mnemonic::Cmovno
        | Mnemonic::Cmovb
        | Mnemonic::Cmovae
        | Mnemonic::Cmove
        | Mnemonic::Cmovne
        | Mnemonic::Cmovbe
        | Mnemonic::Cmova
        | Mnemonic::Cmovs
        | Mnemonic::Cmovns
        | Mnemonic::Cmovp
        | Mnemonic::Cmovnp
        | Mnemonic::Cmovl
        | Mnemonic::Cmovge
        | Mnemonic::Cmovle
        | Mnemonic::Cmovg => Plan::Cmov,
        Mnemonic::Seto
        | Mnemonic::Setno
        | Mnemonic::Setb
        | Mnemonic::Setae
        | Mnemonic::Sete
        | Mnemonic::Setne
        | Mnemonic::Setbe
        | Mnemonic::Seta
        | Mnemonic::Sets
        | Mnemonic::Setns
        | Mnemonic::Setp
        | Mnemonic::Setnp
        | Mnemonic::Setl
        | Mnemonic::Setge
        | Mnemonic::Setle
        | Mnemonic::Setg => Plan::Setcc,
        // XCHG with memory is implicitly locked: left to the handler.
        Mnemonic::Xchg
            if instr.op0_kind() == OpKind::Register && instr.op1_kind() == OpKind::Register =>
        {
            Plan::Xchg
        }
        Mnemonic::Bswap if instr.op0_register().size() >= 4 => Plan::Bswap,
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc if instr.op_count() == 2 => {
            Plan::Bt
        }
        _ => Plan::Fallback,
    }
}

/// Signatures of the helpers, imported into the function.
struct Helpers {
    read: SigRef,
    write: SigRef,
    exec: SigRef,
    condition: SigRef,
}

/// The instruction being lowered, with its memory operand's address once computed.
struct At<'a> {
    instr: &'a Instruction,
    insn: &'a Insn,
    /// Its index in the block.
    n: usize,
    addr: Option<Value>,
}

/// Per-block lowering state.
struct Lower<'f> {
    b: FunctionBuilder<'f>,
    cpu: Value,
    ctx: Value,
    lay: Layout,
    helpers: Helpers,
    /// Register cache: `regs[i]` holds GPR `i` once `loaded[i]`.
    regs: [Variable; 16],
    loaded: [bool; 16],
    /// Registers written since they were last stored to `Cpu::regs`.
    dirty: [bool; 16],
    flags: Pending,
    /// 1 once a store reached a page holding translated code.
    code_written: Variable,
    /// The current instruction stored through the slow path (so may have written code).
    slow_store: bool,
    /// Trap exits to emit once the straight-line code is done: (block, instructions of
    /// its member completed before the trapping one, address of that one's record).
    deferred_exits: Vec<(IrBlock, usize, u64)>,
    /// Address of the current member's two link slots.
    links: u64,
    /// Address of the current member's first record.
    records: u64,
    /// Where the code is entered (the first member's start).
    start: u64,
    /// The shared tail of exits that do not link ([`Lower::exit`]), once one is needed.
    unlinked_tail: Option<IrBlock>,
    /// The shared tail of exits to a RIP known at run time ([`Lower::exit_dynamic`]).
    dynamic_tail: Option<IrBlock>,
    /// Instructions completed in earlier members during this call of the code (a
    /// region's loops run many members before any exit reports them).
    done: Variable,
    /// The region's members: start address, IR block, and the flags live on entry.
    heads: Vec<(u64, IrBlock, u64)>,
    /// Whether some member branches to a member (else the code is one block and keeps
    /// the lazy register cache of a single block).
    linked_inside: bool,
    /// In a region with inside branches, registers the members' native code touches
    /// (loaded at entry and in host registers at every member's start) and those it
    /// writes (treated as dirty at every member's start).
    region_used: [bool; 16],
    region_written: [bool; 16],
    /// The current member left an instruction to its handler (which may have changed
    /// what the link checks look at).
    member_fallback: bool,
}

/// The compile-time state a branch's two ways each start from.
#[derive(Clone, Copy)]
struct Saved {
    loaded: [bool; 16],
    dirty: [bool; 16],
    flags: Pending,
}

const TRUSTED: MemFlags = MemFlags::trusted();

impl Lower<'_> {
    fn iconst(&mut self, v: u64) -> Value {
        self.b.ins().iconst(types::I64, v as i64)
    }

    /// GPR `r` (0..15), all 64 bits.
    fn reg(&mut self, r: u8) -> Value {
        let r = (r & 15) as usize;
        if !self.loaded[r] {
            let v = self
                .b
                .ins()
                .load(types::I64, TRUSTED, self.cpu, self.lay.regs + 8 * r as i32);
            self.b.def_var(self.regs[r], v);
            self.loaded[r] = true;
        }
        self.b.use_var(self.regs[r])
    }

    fn set_reg64(&mut self, r: u8, v: Value) {
        let r = (r & 15) as usize;
        self.b.def_var(self.regs[r], v);
        self.loaded[r] = true;
        self.dirty[r] = true;
    }

    /// Reads a `size`-byte register operand (record numbering), zero-extended.
    fn read_gpr(&mut self, r: u8, size: u8) -> Value {
        if size == 1 && r & reg::HIGH_BYTE != 0 {
            let full = self.reg(r & 3);
            let v = self.b.ins().ushr_imm(full, 8);
            return self.b.ins().band_imm(v, 0xff);
        }
        let full = self.reg(r);
        if size >= 8 {
            full
        } else {
            self.b.ins().band_imm(full, width_mask(size) as i64)
        }
    }

    /// Writes a `size`-byte register operand with x86-64 semantics.
    fn write_gpr(&mut self, r: u8, size: u8, v: Value) {
        match size {
            8 => self.set_reg64(r, v),
            4 => {
                let z = self.b.ins().band_imm(v, 0xffff_ffff);
                self.set_reg64(r, z);
            }
            _ => {
                let (slot, shift) = if size == 1 && r & reg::HIGH_BYTE != 0 {
                    (r & 3, 8)
                } else {
                    (r & 15, 0)
                };
                let field = width_mask(size) << shift;
                let old = self.reg(slot);
                let kept = self.b.ins().band_imm(old, !field as i64);
                let low = self.b.ins().band_imm(v, width_mask(size) as i64);
                let new = if shift != 0 {
                    self.b.ins().ishl_imm(low, shift)
                } else {
                    low
                };
                let merged = self.b.ins().bor(kept, new);
                self.set_reg64(slot, merged);
            }
        }
    }

    /// The offset part of a memory operand (no segment base), masked to the address size.
    fn offset(&mut self, insn: &Insn) -> Value {
        let mut v = self.iconst(insn.disp);
        if insn.base != reg::ZERO {
            let base = self.reg(insn.base);
            v = self.b.ins().iadd(v, base);
        }
        if insn.index != reg::ZERO {
            let index = self.reg(insn.index);
            let scaled = self.b.ins().ishl_imm(index, insn.scale as i64);
            v = self.b.ins().iadd(v, scaled);
        }
        if insn.flags & ADDR16 != 0 {
            v = self.b.ins().band_imm(v, 0xffff);
        } else if insn.flags & ADDR32 != 0 {
            v = self.b.ins().band_imm(v, 0xffff_ffff);
        }
        v
    }

    /// The linear address of a memory operand (64-bit code: only FS and GS have bases).
    fn address(&mut self, insn: &Insn) -> Value {
        let offset = self.offset(insn);
        if insn.seg == seg::FLAT {
            return offset;
        }
        let base = self.b.ins().load(
            types::I64,
            TRUSTED,
            self.cpu,
            self.lay.seg_base + 8 * (insn.seg as i32 & 7),
        );
        self.b.ins().iadd(offset, base)
    }

    /// Writes every dirty register and the pending flags to the `Cpu`, leaving the
    /// compile-time state as it is (used on cold paths that may leave the block).
    fn write_back(&mut self) {
        for r in 0..16 {
            if self.dirty[r] {
                let v = self.b.use_var(self.regs[r]);
                self.b
                    .ins()
                    .store(TRUSTED, v, self.cpu, self.lay.regs + 8 * r as i32);
            }
        }
        self.write_flags();
    }

    /// Writes the pending flags, if any, to `Cpu::flags` (compile-time state unchanged).
    fn write_flags(&mut self) {
        if let Pending::Lazy {
            op,
            width,
            a,
            b,
            res,
        } = self.flags
        {
            let kind = self
                .b
                .ins()
                .iconst(types::I8, (((op as u8) << 2) | width) as i64);
            self.b
                .ins()
                .store(TRUSTED, kind, self.cpu, self.lay.flags_kind);
            self.b
                .ins()
                .store(TRUSTED, res, self.cpu, self.lay.flags_res);
            self.b.ins().store(TRUSTED, a, self.cpu, self.lay.flags_a);
            self.b.ins().store(TRUSTED, b, self.cpu, self.lay.flags_b);
        }
    }

    /// Leaves the block for the run loop from the current IR block: state written back,
    /// RIP set if given, `count` instructions reported complete, no link to fill.
    fn exit(&mut self, count: usize, rip: Option<Value>) {
        self.write_back();
        if let Some(rip) = rip {
            self.b.ins().store(TRUSTED, rip, self.cpu, self.lay.rip);
        }
        let tail = self.unlinked_tail_block();
        let n = self.iconst(count as u64);
        self.b.ins().jump(tail, &[n]);
    }

    /// The shared tail of exits to the run loop, taking the count of the current
    /// member's instructions complete (code size is compile time: one per function).
    fn unlinked_tail_block(&mut self) -> IrBlock {
        match self.unlinked_tail {
            Some(tail) => tail,
            None => {
                let tail = self.b.create_block();
                self.b.set_cold_block(tail);
                self.b.append_block_param(tail, types::I64);
                self.unlinked_tail = Some(tail);
                tail
            }
        }
    }

    /// Emits the shared tail of [`Lower::exit`], if any exit used it: `ctx.fuel` falls
    /// by the count passed, no link slot is named, and 0 goes back to the run loop.
    fn finish_unlinked_tail(&mut self) {
        let Some(tail) = self.unlinked_tail else {
            return;
        };
        self.b.switch_to_block(tail);
        let n = self.b.block_params(tail)[0];
        self.spend_fuel(n);
        let null = self.iconst(0);
        self.b
            .ins()
            .store(TRUSTED, null, self.ctx, JitCtx::LAST_LINK_OFFSET);
        self.b.ins().return_(&[null]);
    }

    /// Takes `n` instructions of the current member, and those of the members run
    /// before it, from `ctx.fuel` (which is how the run loop counts them); returns the
    /// fuel left.
    fn spend_fuel(&mut self, n: Value) -> Value {
        let before = self.b.use_var(self.done);
        let n = self.b.ins().iadd(n, before);
        let fuel = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::FUEL_OFFSET);
        let fuel = self.b.ins().isub(fuel, n);
        self.b
            .ins()
            .store(TRUSTED, fuel, self.ctx, JitCtx::FUEL_OFFSET);
        fuel
    }

    /// Takes the state before a two-way branch (see [`Saved`]).
    fn save(&self) -> Saved {
        Saved {
            loaded: self.loaded,
            dirty: self.dirty,
            flags: self.flags,
        }
    }

    fn restore(&mut self, saved: Saved) {
        self.loaded = saved.loaded;
        self.dirty = saved.dirty;
        self.flags = saved.flags;
    }

    /// The member starting at `rip`, if the region has one.
    fn member_at(&self, rip: u64) -> Option<usize> {
        self.heads.iter().position(|h| h.0 == rip)
    }

    /// Leaves the current member for fixed address `target`, `count` of its
    /// instructions complete: a jump to the member there if there is one, else a linked
    /// exit through the member's slot `slot` (0 or 1).
    fn goto(&mut self, count: usize, target: u64, slot: usize) {
        match self.member_at(target) {
            Some(m) => self.branch_inside(count, target, m),
            None => self.linked_exit(count, target, slot),
        }
    }

    /// Jumps to member `m` (at `target`), `count` of the current member's instructions
    /// complete, unless the run loop must look first: fuel spent, an event pending,
    /// translated code written, or (after a handler ran) a change of fetch mapping,
    /// privilege or interrupt shadow, which all leave with RIP at `target`.
    ///
    /// Registers stay in host registers across the jump; pending flags are written to
    /// the `Cpu` only if `m` may read them.
    fn branch_inside(&mut self, count: usize, target: u64, m: usize) {
        let before = self.b.use_var(self.done);
        let done = self.b.ins().iadd_imm(before, count as i64);
        self.b.def_var(self.done, done);
        let out = self.b.create_block();
        self.b.set_cold_block(out);
        let fuel = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::FUEL_OFFSET);
        let spent = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, fuel, done);
        let written = self.b.use_var(self.code_written);
        let written = self.b.ins().icmp_imm(IntCC::NotEqual, written, 0);
        let stop = self.b.ins().bor(spent, written);
        self.check(stop, out);
        let events = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::EVENTS_OFFSET);
        let mut any = self.b.ins().uload32(TRUSTED, events, 0);
        if self.member_fallback {
            let changes = self.run_loop_changes();
            any = self.b.ins().bor(any, changes);
        }
        self.check(any, out);
        // Every register the members use is in its variable at every member's start.
        for r in 0..16 {
            if self.region_used[r] && !self.loaded[r] {
                self.reg(r as u8);
            }
        }
        let (_, head, live_in) = self.heads[m];
        if live_in != 0 {
            self.write_flags();
        }
        self.b.ins().jump(head, &[]);

        // The way out: the members before have already been added to `done`.
        self.b.switch_to_block(out);
        self.write_back();
        let rip = self.iconst(target);
        self.b.ins().store(TRUSTED, rip, self.cpu, self.lay.rip);
        let tail = self.unlinked_tail_block();
        let zero = self.iconst(0);
        self.b.ins().jump(tail, &[zero]);
    }

    /// Leaves the block for fixed address `target` through link slot `slot` (0 or 1),
    /// `count` instructions complete (see [`Lower::link_tail`]).
    fn linked_exit(&mut self, count: usize, target: u64, slot: usize) {
        self.write_back();
        let same_page = same_page(self.start, target);
        let target = self.iconst(target);
        let slot = self.iconst(self.slot_addr(slot));
        self.link_tail(count, target, slot, same_page);
    }

    /// Address of link slot `slot` of this block.
    fn slot_addr(&self, slot: usize) -> u64 {
        self.links + (slot * std::mem::size_of::<super::LinkSlot>()) as u64
    }

    /// The end of a block that leaves for `target` (a 64-bit RIP) through the link slot
    /// at `slot`, state already written back, `count` instructions complete: returns the
    /// target's code if the slot holds a link that is still good (see
    /// [`super::LinkSlot`]), else returns 0 to the run loop with the slot named for it
    /// to fill. A block has one of these (a Jcc selects its target and slot first), so
    /// the checks cost code once per block.
    fn link_tail(&mut self, count: usize, target: Value, slot: Value, same_page: bool) {
        use super::LinkSlot;
        let count = self.iconst(count as u64);
        let unlinked = self.begin_leaving(target, count);
        // The slot was filled in this generation.
        let generation = self
            .b
            .ins()
            .load(types::I64, TRUSTED, slot, LinkSlot::GENERATION_OFFSET);
        let current = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::GENERATION_OFFSET);
        let stale = self.b.ins().icmp(IntCC::NotEqual, generation, current);
        self.check(stale, unlinked);
        self.check_nothing_pending(unlinked);
        if !same_page {
            let want = self
                .b
                .ins()
                .load(types::I64, TRUSTED, slot, LinkSlot::PAGE_OFFSET);
            self.check_fetch_page(target, want, unlinked);
        }
        let code = self
            .b
            .ins()
            .load(types::I64, TRUSTED, slot, LinkSlot::CODE_OFFSET);
        self.b.ins().return_(&[code]);

        self.b.switch_to_block(unlinked);
        self.b
            .ins()
            .store(TRUSTED, slot, self.ctx, JitCtx::LAST_LINK_OFFSET);
        let zero = self.iconst(0);
        self.b.ins().return_(&[zero]);
    }

    /// The start of an exit that may go straight on to other code: RIP set to
    /// `target`, `n` instructions of the current member spent from the fuel, and a
    /// branch to the returned (cold, still empty) block, the way back to the run loop,
    /// if the fuel is spent or translated code was written.
    fn begin_leaving(&mut self, target: Value, n: Value) -> IrBlock {
        self.b.ins().store(TRUSTED, target, self.cpu, self.lay.rip);
        let fuel = self.spend_fuel(n);
        let unlinked = self.b.create_block();
        self.b.set_cold_block(unlinked);
        let spent = self.b.ins().icmp_imm(IntCC::SignedLessThanOrEqual, fuel, 0);
        let written = self.b.use_var(self.code_written);
        let written = self.b.ins().icmp_imm(IntCC::NotEqual, written, 0);
        let stop = self.b.ins().bor(spent, written);
        self.check(stop, unlinked);
        unlinked
    }

    /// Goes to `out` if an event is pending or a change waits for the run loop (fetch
    /// mapping, privilege, interrupt shadow).
    fn check_nothing_pending(&mut self, out: IrBlock) {
        let events = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::EVENTS_OFFSET);
        let pending = self.b.ins().uload32(TRUSTED, events, 0);
        let changes = self.run_loop_changes();
        let any = self.b.ins().bor(pending, changes);
        self.check(any, out);
    }

    /// Non-zero if a handler changed what the run loop must see before the next block:
    /// the fetch mapping, the privilege level or the interrupt shadow.
    fn run_loop_changes(&mut self) -> Value {
        let offsets = [
            self.lay.fetch_mapping_changed,
            self.lay.privilege_changed,
            self.lay.interrupt_shadow,
        ];
        let first = offsets[0];
        if offsets[1] == first + 1
            && offsets[2] == first + 2
            && first % 4 == 0
            && first as usize + 4 <= std::mem::size_of::<Cpu>()
        {
            // The three flags are neighbouring bytes of an aligned word: one load.
            let word = self.b.ins().uload32(TRUSTED, self.cpu, first);
            return self.b.ins().band_imm(word, 0xff_ffff);
        }
        let mut any = self.iconst(0);
        for offset in offsets {
            let byte = self.b.ins().uload8(types::I64, TRUSTED, self.cpu, offset);
            any = self.b.ins().bor(any, byte);
        }
        any
    }

    /// Goes to `out` unless the fetch TLB maps `target`'s page to physical page `want`.
    fn check_fetch_page(&mut self, target: Value, want: Value, out: IrBlock) {
        let entries = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.cpu, self.lay.tlb_fetch);
        let page = self.b.ins().ushr_imm(target, emu_mmu::PAGE_SHIFT as i64);
        let index = self.b.ins().band_imm(page, (TLB_ENTRIES - 1) as i64);
        let offset = self
            .b
            .ins()
            .imul_imm(index, std::mem::size_of::<TlbEntry>() as i64);
        let entry = self.b.ins().iadd(entries, offset);
        let tag = self
            .b
            .ins()
            .load(types::I64, TRUSTED, entry, offset_of!(TlbEntry, tag) as i32);
        let want_tag = self.b.ins().band_imm(target, PAGE_MASK as i64);
        let miss = self.b.ins().icmp(IntCC::NotEqual, tag, want_tag);
        self.check(miss, out);
        let phys = self.b.ins().load(
            types::I64,
            TRUSTED,
            entry,
            offset_of!(TlbEntry, phys_page) as i32,
        );
        let phys = self.b.ins().band_imm(phys, PAGE_MASK as i64);
        let moved = self.b.ins().icmp(IntCC::NotEqual, phys, want);
        self.check(moved, out);
    }

    /// Leaves the current member for `target`, a RIP known only at run time (RET,
    /// indirect JMP and CALL), `count` of its instructions complete: through the
    /// function's shared tail, which goes straight on to the code the jump cache holds
    /// for `target` when the same checks as a direct link pass (see
    /// [`Lower::finish_dynamic_tail`]), else returns to the run loop.
    fn exit_dynamic(&mut self, count: usize, target: Value) {
        self.write_back();
        let tail = match self.dynamic_tail {
            Some(tail) => tail,
            None => {
                let tail = self.b.create_block();
                self.b.append_block_param(tail, types::I64);
                self.b.append_block_param(tail, types::I64);
                self.dynamic_tail = Some(tail);
                tail
            }
        };
        let n = self.iconst(count as u64);
        self.b.ins().jump(tail, &[n, target]);
    }

    /// Emits the shared tail of [`Lower::exit_dynamic`], if any exit used it.
    fn finish_dynamic_tail(&mut self) {
        use crate::cache::jump_layout as jl;
        let Some(tail) = self.dynamic_tail else {
            return;
        };
        self.b.switch_to_block(tail);
        let n = self.b.block_params(tail)[0];
        let target = self.b.block_params(tail)[1];
        let unlinked = self.begin_leaving(target, n);
        self.check_nothing_pending(unlinked);
        // The jump cache's entry for `target`.
        let cache = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::JUMP_CACHE_OFFSET);
        let salt = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::JUMP_SALT_OFFSET);
        let high = self.b.ins().ushr_imm(target, 12);
        let hash = self.b.ins().bxor(target, high);
        let index = self.b.ins().band_imm(hash, jl::INDEX_MASK);
        let offset = self.b.ins().imul_imm(index, jl::ENTRY_SIZE);
        let entry = self.b.ins().iadd(cache, offset);
        let tag = self.b.ins().load(types::I64, TRUSTED, entry, jl::TAG);
        let want = self.b.ins().bxor(target, salt);
        let other = self.b.ins().icmp(IntCC::NotEqual, tag, want);
        self.check(other, unlinked);
        let code = self.b.ins().load(types::I64, TRUSTED, entry, jl::CODE);
        let none = self.b.ins().icmp_imm(IntCC::Equal, code, 0);
        self.check(none, unlinked);
        let page = self.b.ins().load(types::I64, TRUSTED, entry, jl::PAGE);
        self.check_fetch_page(target, page, unlinked);
        self.b.ins().return_(&[code]);

        self.b.switch_to_block(unlinked);
        let null = self.iconst(0);
        self.b
            .ins()
            .store(TRUSTED, null, self.ctx, JitCtx::LAST_LINK_OFFSET);
        self.b.ins().return_(&[null]);
    }

    /// Continues in a new block unless `cond` (non-zero) holds, which goes to `out`.
    fn check(&mut self, cond: Value, out: IrBlock) {
        let next = self.b.create_block();
        self.b.ins().brif(cond, out, &[], next, &[]);
        self.b.switch_to_block(next);
    }

    /// A cold block that returns `count` (state already written back by its predecessor).
    /// Emitted after the block's code, so the current block need not be finished.
    fn trap_exit_block(&mut self, count: usize) -> IrBlock {
        let exit = self.b.create_block();
        self.b.set_cold_block(exit);
        let record = self.records + (count * std::mem::size_of::<Insn>()) as u64;
        self.deferred_exits.push((exit, count, record));
        exit
    }

    /// Host address of `size` bytes at `addr` through the TLB array at `array_offset`,
    /// branching to `slow` on a miss; continues in the hit block.
    fn tlb_hit(&mut self, addr: Value, size: u8, array_offset: i32, slow: IrBlock) -> Value {
        let entries = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.cpu, array_offset);
        let page = self.b.ins().ushr_imm(addr, emu_mmu::PAGE_SHIFT as i64);
        let slot = self.b.ins().band_imm(page, (TLB_ENTRIES - 1) as i64);
        let offset = self
            .b
            .ins()
            .imul_imm(slot, std::mem::size_of::<TlbEntry>() as i64);
        let entry = self.b.ins().iadd(entries, offset);
        let tag = self
            .b
            .ins()
            .load(types::I64, TRUSTED, entry, offset_of!(TlbEntry, tag) as i32);
        // The entry maps the page of the last byte: then it also maps the first (an
        // access crossing into the next page can never match the first page's slot).
        let last = if size > 1 {
            self.b.ins().iadd_imm(addr, size as i64 - 1)
        } else {
            addr
        };
        let want = self.b.ins().band_imm(last, PAGE_MASK as i64);
        let hit = self.b.ins().icmp(IntCC::Equal, tag, want);
        let fast = self.b.create_block();
        self.b.ins().brif(hit, fast, &[], slow, &[]);
        self.b.switch_to_block(fast);
        let addend = self.b.ins().load(
            types::I64,
            TRUSTED,
            entry,
            offset_of!(TlbEntry, addend) as i32,
        );
        self.b.ins().iadd(addr, addend)
    }

    /// Loads `size` bytes at `addr` for instruction `n`, zero-extended.
    fn load(&mut self, addr: Value, size: u8, n: usize) -> Value {
        let slow = self.b.create_block();
        self.b.set_cold_block(slow);
        let join = self.b.create_block();
        self.b.append_block_param(join, types::I64);
        let host = self.tlb_hit(addr, size, self.lay.tlb_read, slow);
        let flags = MemFlags::trusted();
        let v = match size {
            1 => self.b.ins().uload8(types::I64, flags, host, 0),
            2 => self.b.ins().uload16(types::I64, flags, host, 0),
            4 => self.b.ins().uload32(flags, host, 0),
            _ => self.b.ins().load(types::I64, flags, host, 0),
        };
        if WEAK_HOST {
            // Acquire: later guest accesses may not pass this load (see `WEAK_HOST`).
            self.b.ins().fence();
        }
        self.b.ins().jump(join, &[v]);

        self.b.switch_to_block(slow);
        self.write_back();
        let size_v = self.iconst(size as u64);
        let callee = self.iconst(helpers::helper_read as *const () as u64);
        let call = self.b.ins().call_indirect(
            self.helpers.read,
            callee,
            &[self.cpu, self.ctx, addr, size_v],
        );
        let value = self.b.inst_results(call)[0];
        let status = self
            .b
            .ins()
            .load(types::I64, TRUSTED, self.ctx, JitCtx::STATUS_OFFSET);
        let exit = self.trap_exit_block(n);
        self.b.ins().brif(status, exit, &[], join, &[value]);

        self.b.switch_to_block(join);
        self.b.block_params(join)[0]
    }

    /// Stores the low `size` bytes of `value` at `addr` for instruction `n`.
    fn store(&mut self, addr: Value, size: u8, value: Value, n: usize) {
        let slow = self.b.create_block();
        self.b.set_cold_block(slow);
        let join = self.b.create_block();
        let host = self.tlb_hit(addr, size, self.lay.tlb_write, slow);
        let flags = MemFlags::trusted();
        if WEAK_HOST {
            // Release: earlier guest accesses may not pass this store.
            self.b.ins().fence();
        }
        match size {
            1 => self.b.ins().istore8(flags, value, host, 0),
            2 => self.b.ins().istore16(flags, value, host, 0),
            4 => self.b.ins().istore32(flags, value, host, 0),
            _ => self.b.ins().store(flags, value, host, 0),
        };
        self.b.ins().jump(join, &[]);

        self.b.switch_to_block(slow);
        self.write_back();
        let size_v = self.iconst(size as u64);
        let callee = self.iconst(helpers::helper_write as *const () as u64);
        let call = self.b.ins().call_indirect(
            self.helpers.write,
            callee,
            &[self.cpu, self.ctx, addr, size_v, value],
        );
        let status = self.b.inst_results(call)[0];
        self.settle_status(status, n, join);
    }

    /// After a helper that may store (status from [`helper_write`] or [`helper_exec`])
    /// for instruction `n`: a trap leaves through the trap exit, a store into translated
    /// code is noted (the block leaves after this instruction), and both other ways go
    /// on at `join`, where lowering continues.
    ///
    /// [`helper_write`]: helpers::helper_write
    /// [`helper_exec`]: helpers::helper_exec
    fn settle_status(&mut self, status: Value, n: usize, join: IrBlock) {
        let not_ok = self.b.create_block();
        self.b.set_cold_block(not_ok);
        self.b.ins().brif(status, not_ok, &[], join, &[]);
        self.b.switch_to_block(not_ok);
        let trapped = self
            .b
            .ins()
            .icmp_imm(IntCC::Equal, status, STATUS_TRAP as i64);
        let exit = self.trap_exit_block(n);
        let code_written = self.b.create_block();
        self.b.set_cold_block(code_written);
        self.b.ins().brif(trapped, exit, &[], code_written, &[]);
        self.b.switch_to_block(code_written);
        let one = self.iconst(1);
        self.b.def_var(self.code_written, one);
        self.b.ins().jump(join, &[]);
        self.slow_store = true;

        self.b.switch_to_block(join);
    }

    /// The address of the instruction's memory operand, computed once.
    fn operand_address(&mut self, at: &mut At) -> Value {
        match at.addr {
            Some(a) => a,
            None => {
                let a = self.address(at.insn);
                at.addr = Some(a);
                a
            }
        }
    }

    /// Reads operand `i` at `size` bytes (immediates truncated to it), zero-extended.
    fn read_operand(&mut self, at: &mut At, i: u32, size: u8) -> Value {
        match at.instr.op_kind(i) {
            OpKind::Register => {
                let r = register_number(at.instr.op_register(i));
                self.read_gpr(r, size)
            }
            OpKind::Memory => {
                let a = self.operand_address(at);
                self.load(a, size, at.n)
            }
            _ => self.iconst(at.instr.immediate(i) & width_mask(size)),
        }
    }

    /// Writes operand `i` (a GPR or memory) at `size` bytes.
    fn write_operand(&mut self, at: &mut At, i: u32, size: u8, value: Value) {
        match at.instr.op_kind(i) {
            OpKind::Register => {
                let r = register_number(at.instr.op_register(i));
                self.write_gpr(r, size, value);
            }
            _ => {
                let a = self.operand_address(at);
                self.store(a, size, value, at.n);
            }
        }
    }

    /// Offset in the `Cpu` of half `half` (0 low, 1 high) of XMM register `r`.
    fn xmm_offset(&self, r: iced_x86::Register, half: i32) -> i32 {
        let n = r.number() as i32 & 15;
        self.lay.xmm + 16 * n + 8 * half
    }

    fn xmm_half(&mut self, r: iced_x86::Register, half: i32) -> Value {
        let offset = self.xmm_offset(r, half);
        self.b.ins().load(types::I64, TRUSTED, self.cpu, offset)
    }

    fn set_xmm_half(&mut self, r: iced_x86::Register, half: i32, v: Value) {
        let offset = self.xmm_offset(r, half);
        self.b.ins().store(TRUSTED, v, self.cpu, offset);
    }

    /// A 16-byte memory access for instruction `n` (record `insn`): `fast` emits the
    /// access through the host address it is given, when the TLB maps all 16 bytes for
    /// `array_offset`'s kind of access (and, if `aligned`, the address is a multiple of
    /// 16); anything else (a miss, a page crossing, MMIO, misalignment's #GP) runs the
    /// whole instruction through its handler, which touches no GPR or flag, so the
    /// compile-time state stays as it is.
    fn access128(
        &mut self,
        addr: Value,
        aligned: bool,
        array_offset: i32,
        insn: &Insn,
        n: usize,
        fast: impl FnOnce(&mut Self, Value),
    ) {
        let slow = self.b.create_block();
        self.b.set_cold_block(slow);
        let join = self.b.create_block();
        if aligned {
            let low = self.b.ins().band_imm(addr, 15);
            let next = self.b.create_block();
            self.b.ins().brif(low, slow, &[], next, &[]);
            self.b.switch_to_block(next);
        }
        let host = self.tlb_hit(addr, 16, array_offset, slow);
        if WEAK_HOST {
            self.b.ins().fence();
        }
        fast(self, host);
        if WEAK_HOST {
            self.b.ins().fence();
        }
        self.b.ins().jump(join, &[]);

        self.b.switch_to_block(slow);
        self.write_back();
        let status = self.call_handler(insn);
        self.settle_status(status, n, join);
    }

    /// Lowers an SSE data move or bitwise operation.
    fn sse(&mut self, op: SseOp, at: &mut At) {
        let instr = at.instr;
        let (insn, n) = (at.insn, at.n);
        let flags = MemFlags::trusted();
        match op {
            SseOp::LoadZext(size) => {
                let dst = instr.op0_register();
                let v = match instr.op1_kind() {
                    OpKind::Register if instr.op1_register().is_xmm() => {
                        self.xmm_half(instr.op1_register(), 0)
                    }
                    _ => self.read_operand(at, 1, size),
                };
                let v = if size == 4 {
                    self.b.ins().band_imm(v, 0xffff_ffff)
                } else {
                    v
                };
                let zero = self.iconst(0);
                self.set_xmm_half(dst, 0, v);
                self.set_xmm_half(dst, 1, zero);
            }
            SseOp::StoreLow(size) => {
                let v = self.xmm_half(instr.op1_register(), 0);
                if instr.op0_kind() == OpKind::Register && instr.op0_register().is_xmm() {
                    // MOVQ xmm, xmm (66 0F D6): the low quadword, zero-extended.
                    let zero = self.iconst(0);
                    self.set_xmm_half(instr.op0_register(), 0, v);
                    self.set_xmm_half(instr.op0_register(), 1, zero);
                } else {
                    self.write_operand(at, 0, size, v);
                }
            }
            SseOp::MergeLow(size) => {
                let src = self.xmm_half(instr.op1_register(), 0);
                let dst = instr.op0_register();
                let v = if size == 8 {
                    src
                } else {
                    let old = self.xmm_half(dst, 0);
                    let kept = self.b.ins().band_imm(old, !0xffff_ffffu64 as i64);
                    let low = self.b.ins().band_imm(src, 0xffff_ffff);
                    self.b.ins().bor(kept, low)
                };
                self.set_xmm_half(dst, 0, v);
            }
            SseOp::Full { aligned } => {
                if instr.op1_kind() == OpKind::Memory {
                    let addr = self.operand_address(at);
                    let dst = instr.op0_register();
                    let tlb = self.lay.tlb_read;
                    self.access128(addr, aligned, tlb, insn, n, |l, host| {
                        let lo = l.b.ins().load(types::I64, flags, host, 0);
                        let hi = l.b.ins().load(types::I64, flags, host, 8);
                        l.set_xmm_half(dst, 0, lo);
                        l.set_xmm_half(dst, 1, hi);
                    });
                } else if instr.op0_kind() == OpKind::Memory {
                    let addr = self.operand_address(at);
                    let src = instr.op1_register();
                    let tlb = self.lay.tlb_write;
                    self.access128(addr, aligned, tlb, insn, n, |l, host| {
                        let lo = l.xmm_half(src, 0);
                        let hi = l.xmm_half(src, 1);
                        l.b.ins().store(flags, lo, host, 0);
                        l.b.ins().store(flags, hi, host, 8);
                    });
                } else {
                    let (dst, src) = (instr.op0_register(), instr.op1_register());
                    for half in 0..2 {
                        let v = self.xmm_half(src, half);
                        self.set_xmm_half(dst, half, v);
                    }
                }
            }
            SseOp::Logic(logic) => {
                let dst = instr.op0_register();
                let combine = |l: &mut Self, a: Value, b: Value| match logic {
                    SseLogic::Xor => l.b.ins().bxor(a, b),
                    SseLogic::Or => l.b.ins().bor(a, b),
                    SseLogic::And => l.b.ins().band(a, b),
                };
                if instr.op1_kind() == OpKind::Memory {
                    let addr = self.operand_address(at);
                    let tlb = self.lay.tlb_read;
                    self.access128(addr, true, tlb, insn, n, |l, host| {
                        for half in 0..2 {
                            let m = l.b.ins().load(types::I64, flags, host, 8 * half);
                            let r = l.xmm_half(dst, half);
                            let v = combine(l, r, m);
                            l.set_xmm_half(dst, half, v);
                        }
                    });
                } else if logic == SseLogic::Xor && instr.op1_register() == dst {
                    // The zeroing idiom.
                    let zero = self.iconst(0);
                    self.set_xmm_half(dst, 0, zero);
                    self.set_xmm_half(dst, 1, zero);
                } else {
                    let src = instr.op1_register();
                    for half in 0..2 {
                        let a = self.xmm_half(dst, half);
                        let b = self.xmm_half(src, half);
                        let v = combine(self, a, b);
                        self.set_xmm_half(dst, half, v);
                    }
                }
            }
        }
    }

    fn set_flags(&mut self, op: FlagOp, size: u8, a: Value, b: Value, res: Value) {
        self.flags = Pending::Lazy {
            op,
            width: flags::width_log2(size as usize),
            a,
            b,
            res,
        };
    }

    fn narrow(&mut self, v: Value, size: u8) -> Value {
        if size >= 8 {
            v
        } else {
            self.b.ins().ireduce(int_type(size), v)
        }
    }

    /// Bit `s` of `v` as an i8 0/1.
    fn bit(&mut self, v: Value, s: u32) -> Value {
        let shifted = self.b.ins().ushr_imm(v, s as i64);
        let one = self.b.ins().band_imm(shifted, 1);
        self.b.ins().ireduce(types::I8, one)
    }

    /// Condition `cc` (0 = O .. 15 = G) as an i8 0/1.
    fn condition(&mut self, cc: u8) -> Value {
        match self.flags {
            Pending::Memory => {
                let callee = self.iconst(helpers::helper_condition as *const () as u64);
                let cc_v = self.iconst(cc as u64);
                let call =
                    self.b
                        .ins()
                        .call_indirect(self.helpers.condition, callee, &[self.cpu, cc_v]);
                let r = self.b.inst_results(call)[0];
                self.b.ins().icmp_imm(IntCC::NotEqual, r, 0)
            }
            Pending::Lazy {
                op,
                width,
                a,
                b,
                res,
            } => {
                let even = self.condition_even(cc & !1, op, 1 << width, a, b, res);
                if cc & 1 != 0 {
                    self.b.ins().bxor_imm(even, 1)
                } else {
                    even
                }
            }
        }
    }

    fn condition_even(
        &mut self,
        cc: u8,
        op: FlagOp,
        size: u8,
        a: Value,
        b: Value,
        res: Value,
    ) -> Value {
        if op == FlagOp::Materialized {
            // `a` holds the flag bits.
            let (cf, pf, zf, sf, of) = (0, 2, 6, 7, 11);
            return match cc {
                0 => self.bit(a, of),
                2 => self.bit(a, cf),
                4 => self.bit(a, zf),
                6 => {
                    let c = self.bit(a, cf);
                    let z = self.bit(a, zf);
                    self.b.ins().bor(c, z)
                }
                8 => self.bit(a, sf),
                10 => self.bit(a, pf),
                _ => {
                    let s = self.bit(a, sf);
                    let o = self.bit(a, of);
                    let less = self.b.ins().bxor(s, o);
                    if cc == 12 {
                        less
                    } else {
                        let z = self.bit(a, zf);
                        self.b.ins().bor(less, z)
                    }
                }
            };
        }
        if op == FlagOp::Sub {
            let cmp = match cc {
                2 => Some(IntCC::UnsignedLessThan),
                4 => Some(IntCC::Equal),
                6 => Some(IntCC::UnsignedLessThanOrEqual),
                12 => Some(IntCC::SignedLessThan),
                14 => Some(IntCC::SignedLessThanOrEqual),
                _ => None,
            };
            if let Some(cmp) = cmp {
                let na = self.narrow(a, size);
                let nb = self.narrow(b, size);
                return self.b.ins().icmp(cmp, na, nb);
            }
        } else if op == FlagOp::Logic {
            match cc {
                0 | 2 => return self.b.ins().iconst(types::I8, 0),
                4 | 6 | 8 | 12 | 14 => {
                    let nr = self.narrow(res, size);
                    let cmp = match cc {
                        4 | 6 => IntCC::Equal,
                        14 => IntCC::SignedLessThanOrEqual,
                        _ => IntCC::SignedLessThan,
                    };
                    return self.b.ins().icmp_imm(cmp, nr, 0);
                }
                _ => {}
            }
        }
        match cc {
            0 => self.of(op, size, a, b, res),
            2 => self.cf(op, size, a, b, res),
            4 => self.zf(size, res),
            6 => {
                let cf = self.cf(op, size, a, b, res);
                let zf = self.zf(size, res);
                self.b.ins().bor(cf, zf)
            }
            8 => self.sf(size, res),
            10 => {
                let low = self.b.ins().band_imm(res, 0xff);
                let count = self.b.ins().popcnt(low);
                let odd = self.b.ins().band_imm(count, 1);
                self.b.ins().icmp_imm(IntCC::Equal, odd, 0)
            }
            12 => {
                let sf = self.sf(size, res);
                let of = self.of(op, size, a, b, res);
                self.b.ins().bxor(sf, of)
            }
            _ => {
                let sf = self.sf(size, res);
                let of = self.of(op, size, a, b, res);
                let l = self.b.ins().bxor(sf, of);
                let zf = self.zf(size, res);
                self.b.ins().bor(l, zf)
            }
        }
    }

    fn zf(&mut self, size: u8, res: Value) -> Value {
        let nr = self.narrow(res, size);
        self.b.ins().icmp_imm(IntCC::Equal, nr, 0)
    }

    fn sf(&mut self, size: u8, res: Value) -> Value {
        let nr = self.narrow(res, size);
        self.b.ins().icmp_imm(IntCC::SignedLessThan, nr, 0)
    }

    fn cf(&mut self, op: FlagOp, size: u8, a: Value, b: Value, res: Value) -> Value {
        let s = size as u32 * 8 - 1;
        match op {
            FlagOp::Add | FlagOp::Adc => {
                let ab = self.b.ins().band(a, b);
                let x = self.b.ins().bxor(a, b);
                let nres = self.b.ins().bnot(res);
                let t = self.b.ins().band(x, nres);
                let c = self.b.ins().bor(ab, t);
                self.bit(c, s)
            }
            FlagOp::Sub | FlagOp::Sbb => {
                let na = self.b.ins().bnot(a);
                let t1 = self.b.ins().band(na, b);
                let x = self.b.ins().bxor(a, b);
                let nx = self.b.ins().bnot(x);
                let t2 = self.b.ins().band(nx, res);
                let c = self.b.ins().bor(t1, t2);
                self.bit(c, s)
            }
            FlagOp::Logic | FlagOp::Materialized => self.b.ins().iconst(types::I8, 0),
            FlagOp::Inc | FlagOp::Dec => self.bit(b, 0),
        }
    }

    fn of(&mut self, op: FlagOp, size: u8, a: Value, b: Value, res: Value) -> Value {
        let s = size as u32 * 8 - 1;
        let m = width_mask(size);
        match op {
            FlagOp::Add | FlagOp::Adc => {
                let x = self.b.ins().bxor(a, res);
                let y = self.b.ins().bxor(b, res);
                let t = self.b.ins().band(x, y);
                self.bit(t, s)
            }
            FlagOp::Sub | FlagOp::Sbb => {
                let x = self.b.ins().bxor(a, b);
                let y = self.b.ins().bxor(a, res);
                let t = self.b.ins().band(x, y);
                self.bit(t, s)
            }
            FlagOp::Inc => {
                let r = self.b.ins().band_imm(res, m as i64);
                self.b.ins().icmp_imm(IntCC::Equal, r, (1u64 << s) as i64)
            }
            FlagOp::Dec => {
                let r = self.b.ins().band_imm(a, m as i64);
                self.b.ins().icmp_imm(IntCC::Equal, r, (1u64 << s) as i64)
            }
            FlagOp::Logic | FlagOp::Materialized => self.b.ins().iconst(types::I8, 0),
        }
    }

    /// CF before the current instruction, as an i64 0/1.
    fn carry_in(&mut self) -> Value {
        let c = self.condition(2);
        self.b.ins().uextend(types::I64, c)
    }

    /// Calls `insn`'s interpreter handler through [`helpers::helper_exec`] (state
    /// already written back), returning its status.
    fn call_handler(&mut self, insn: &Insn) -> Value {
        let callee = self.iconst(helpers::helper_exec as *const () as u64);
        let record = self.iconst(insn as *const Insn as u64);
        let call =
            self.b
                .ins()
                .call_indirect(self.helpers.exec, callee, &[self.cpu, self.ctx, record]);
        self.b.inst_results(call)[0]
    }

    /// Runs instruction `n` through its handler.
    fn fallback(&mut self, insn: &Insn, n: usize, last: bool, block: &Member) {
        self.member_fallback = true;
        self.write_back();
        self.loaded = [false; 16];
        self.dirty = [false; 16];
        self.flags = Pending::Memory;
        let status = self.call_handler(insn);
        let trapped = self
            .b
            .ins()
            .icmp_imm(IntCC::Equal, status, STATUS_TRAP as i64);
        let exit = self.trap_exit_block(n);
        let cont = self.b.create_block();
        self.b.ins().brif(trapped, exit, &[], cont, &[]);
        self.b.switch_to_block(cont);
        if last {
            // The handler set RIP if it is a branch: back to the run loop. Otherwise fall
            // through to the end, linked unless the handler stored into translated code.
            if block.ends_in_branch {
                self.exit(n + 1, None);
                return;
            }
            let written = self
                .b
                .ins()
                .icmp_imm(IntCC::Equal, status, STATUS_CODE_WRITTEN as i64);
            let out = self.b.create_block();
            self.b.set_cold_block(out);
            let next = self.b.create_block();
            self.b.ins().brif(written, out, &[], next, &[]);
            self.b.switch_to_block(out);
            let rip = self.iconst(block.end_rip);
            self.exit(n + 1, Some(rip));
            self.b.switch_to_block(next);
            self.goto(n + 1, block.end_rip, 0);
            return;
        }
        // Stored into translated code: leave after it, as the interpreter does.
        let code_written = self.b.create_block();
        self.b.set_cold_block(code_written);
        let next = self.b.create_block();
        self.b.ins().brif(status, code_written, &[], next, &[]);
        self.b.switch_to_block(code_written);
        let rip = self.iconst(insn.next_rip());
        self.exit(n + 1, Some(rip));
        self.b.switch_to_block(next);
    }
}

fn helper_signature(call_conv: CallConv, params: usize) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..params {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Whether a block starting at `start` may link to `target` without the fetch-TLB check
/// (see [`super::LinkSlot`]): the target is on the same virtual page.
pub fn same_page(start: u64, target: u64) -> bool {
    start & PAGE_MASK == target & PAGE_MASK
}

/// Where a member may go next when it ends: its direct branch targets and fall-through
/// (empty for exits whose target is known only at run time).
pub fn successors(member: &Member) -> Vec<u64> {
    let Some(last) = member.decoded.last() else {
        return Vec::new();
    };
    if !member.ends_in_branch {
        return vec![member.end_rip];
    }
    match last.code() {
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64 => {
            vec![last.near_branch_target()]
        }
        _ if last.is_jcc_short_or_near() && last.op0_kind() == OpKind::NearBranch64 => {
            vec![last.near_branch_target(), last.next_ip()]
        }
        _ => Vec::new(),
    }
}

/// Where a member of a region goes when it ends.
pub struct Exits {
    /// The members its direct successors start (indices into the region).
    pub inside: Vec<usize>,
    /// Whether it may also leave the region.
    pub leaves: bool,
}

/// Each member's [`Exits`].
pub fn region_exits(members: &[Member]) -> Vec<Exits> {
    members
        .iter()
        .map(|m| {
            let next = successors(m);
            let inside: Vec<usize> = next
                .iter()
                .filter_map(|&t| members.iter().position(|o| o.rip() == t))
                .collect();
            let leaves = next.is_empty() || inside.len() < next.len();
            Exits { inside, leaves }
        })
        .collect()
}

/// The arithmetic flags each member may read before writing them, following branches
/// into other members (a least fixed point; leaving the region counts as reading all).
/// Traps are not counted as reads (see the module docs of [`super`]).
fn region_live_in(members: &[Member], exits: &[Exits]) -> Vec<u64> {
    let mut live = vec![0u64; members.len()];
    loop {
        let mut changed = false;
        for (m, member) in members.iter().enumerate() {
            let at_end = live_at_end(&exits[m], &live);
            let mut flags = at_end;
            for instr in member.decoded.iter().rev() {
                flags = (flags & !flags_killed(instr)) | flag_bits(instr.rflags_read());
            }
            if flags != live[m] {
                live[m] |= flags;
                changed = true;
            }
        }
        if !changed {
            return live;
        }
    }
}

/// Flags live at the end of a member that goes where `exits` says, given the members'
/// live-in sets.
fn live_at_end(exits: &Exits, live_in: &[u64]) -> u64 {
    let mut at_end = if exits.leaves { flags::ARITH } else { 0 };
    for &s in &exits.inside {
        at_end |= live_in[s];
    }
    at_end
}

/// GPRs (our numbering) that `instr` reads or writes, explicitly or implicitly.
fn gprs_used(
    factory: &mut iced_x86::InstructionInfoFactory,
    instr: &Instruction,
    used: &mut [bool; 16],
    written: &mut [bool; 16],
) {
    let info = factory.info(instr);
    for u in info.used_registers() {
        let r = u.register().full_register();
        if !r.is_gpr64() {
            continue;
        }
        let n = (register_number(r) & 15) as usize;
        used[n] = true;
        if !matches!(
            u.access(),
            iced_x86::OpAccess::Read | iced_x86::OpAccess::CondRead
        ) {
            written[n] = true;
        }
    }
}

/// Builds `func` (signature already set: cpu, ctx -> next code) from the blocks of
/// `job`: the first is where the code is entered, and a branch from a member to
/// another's start becomes a jump inside the function.
pub fn lower_block(
    func: &mut Function,
    builder_ctx: &mut FunctionBuilderContext,
    call_conv: CallConv,
    job: &Job,
) -> Counts {
    let mut b = FunctionBuilder::new(func, builder_ctx);
    let helpers = Helpers {
        read: b.import_signature(helper_signature(call_conv, 4)),
        write: b.import_signature(helper_signature(call_conv, 5)),
        exec: b.import_signature(helper_signature(call_conv, 3)),
        condition: b.import_signature(helper_signature(call_conv, 2)),
    };
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let cpu = b.block_params(entry)[0];
    let ctx = b.block_params(entry)[1];
    let regs: [Variable; 16] = std::array::from_fn(|i| Variable::from_u32(i as u32));
    for &v in &regs {
        b.declare_var(v, types::I64);
    }
    let code_written = Variable::from_u32(16);
    let done = Variable::from_u32(17);
    b.declare_var(code_written, types::I64);
    b.declare_var(done, types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(code_written, zero);
    b.def_var(done, zero);

    let members = &job.members[..];
    let exits = region_exits(members);
    let live_in = region_live_in(members, &exits);
    let heads: Vec<(u64, IrBlock, u64)> = members
        .iter()
        .zip(&live_in)
        .map(|(m, &live)| (m.rip(), b.create_block(), live))
        .collect();
    let linked_inside = exits.iter().any(|e| !e.inside.is_empty());
    let mut region_used = [false; 16];
    let mut region_written = [false; 16];
    if linked_inside {
        let mut factory = iced_x86::InstructionInfoFactory::new();
        for instr in members.iter().flat_map(|m| m.decoded.iter()) {
            gprs_used(&mut factory, instr, &mut region_used, &mut region_written);
        }
    }
    let mut l = Lower {
        b,
        cpu,
        ctx,
        lay: Layout::new(),
        helpers,
        regs,
        loaded: [false; 16],
        dirty: [false; 16],
        flags: Pending::Memory,
        code_written,
        slow_store: false,
        deferred_exits: Vec::new(),
        links: job.links as u64,
        records: 0,
        start: members[0].rip(),
        unlinked_tail: None,
        dynamic_tail: None,
        done,
        heads,
        linked_inside,
        region_used,
        region_written,
        member_fallback: false,
    };
    // In a region that branches inside itself, every register its members use is
    // loaded once, here, and lives in its variable from member to member.
    for r in 0..16 {
        if l.region_used[r] {
            l.reg(r as u8);
        }
    }
    let first = l.heads[0].1;
    l.b.ins().jump(first, &[]);

    let mut counts = Counts::default();
    for (m, member) in members.iter().enumerate() {
        l.b.switch_to_block(l.heads[m].1);
        if l.linked_inside {
            l.loaded = l.region_used;
            l.dirty = l.region_written;
        } else {
            l.loaded = [false; 16];
            l.dirty = [false; 16];
        }
        l.flags = Pending::Memory;
        l.member_fallback = false;
        l.links = job.links as u64 + (2 * m * std::mem::size_of::<super::LinkSlot>()) as u64;
        l.records = member.insns.as_ptr() as u64;
        let live = live_flags_after(&member.decoded, live_at_end(&exits[m], &live_in));
        lower_member(&mut l, member, &live, &mut counts);
    }
    l.finish_unlinked_tail();
    l.finish_dynamic_tail();
    // Every trap exit jumps to one shared tail with the trapping instruction's index
    // and record: it reports the instructions before it and the record.
    let exits = std::mem::take(&mut l.deferred_exits);
    if !exits.is_empty() {
        let tail = l.b.create_block();
        l.b.set_cold_block(tail);
        l.b.append_block_param(tail, types::I64);
        l.b.append_block_param(tail, types::I64);
        for (exit, n, record) in exits {
            l.b.switch_to_block(exit);
            let n = l.iconst(n as u64);
            let record = l.iconst(record);
            l.b.ins().jump(tail, &[n, record]);
        }
        l.b.switch_to_block(tail);
        let n = l.b.block_params(tail)[0];
        let record = l.b.block_params(tail)[1];
        l.spend_fuel(n);
        l.b.ins()
            .store(TRUSTED, record, l.ctx, JitCtx::TRAP_INSN_OFFSET);
        let null = l.iconst(0);
        l.b.ins().return_(&[null]);
    }
    l.b.seal_all_blocks();
    l.b.finalize();
    counts
}

/// Lowers one member, from the current IR block (its head) to its exits.
fn lower_member(l: &mut Lower, member: &Member, live: &[u64], counts: &mut Counts) {
    let count = member.insns.len();
    for (n, (instr, insn)) in member.decoded.iter().zip(member.insns.iter()).enumerate() {
        let last = n + 1 == count;
        let mut plan = plan(instr, insn, live[n]);
        let branch = matches!(
            plan,
            Plan::Jmp | Plan::Jcc | Plan::Call | Plan::Ret | Plan::JmpIndirect | Plan::CallIndirect
        );
        if branch && !last {
            plan = Plan::Fallback;
        }
        if plan == Plan::Fallback {
            counts.fallback += 1;
            counts.fallback_mnemonics.push(instr.mnemonic());
            l.fallback(insn, n, last, member);
            continue;
        }
        counts.native += 1;
        l.slow_store = false;
        let ended = lower_native(l, plan, instr, insn, n, live[n], count);
        if ended {
            continue;
        }
        if last {
            l.goto(count, member.end_rip, 0);
        } else if l.slow_store {
            // A slow-path store may have hit translated code: leave after this
            // instruction, as the interpreter does.
            let flag = l.b.use_var(l.code_written);
            let out = l.b.create_block();
            l.b.set_cold_block(out);
            let next = l.b.create_block();
            l.b.ins().brif(flag, out, &[], next, &[]);
            l.b.switch_to_block(out);
            let rip = l.iconst(insn.next_rip());
            l.exit(n + 1, Some(rip));
            l.b.switch_to_block(next);
        }
    }
}

/// Emits a natively lowered instruction. Returns whether it ended the block (branches).
fn lower_native(
    l: &mut Lower,
    plan: Plan,
    instr: &Instruction,
    insn: &Insn,
    n: usize,
    live_after: u64,
    count: usize,
) -> bool {
    let mut at = At {
        instr,
        insn,
        n,
        addr: None,
    };
    match plan {
        Plan::Nop | Plan::Fallback => {}
        Plan::Mov => {
            let size = operand_size(instr, 0);
            let v = l.read_operand(&mut at, 1, size);
            l.write_operand(&mut at, 0, size, v);
        }
        Plan::Movzx | Plan::Movsx => {
            let dst = operand_size(instr, 0);
            let src = operand_size(instr, 1);
            let mut v = l.read_operand(&mut at, 1, src);
            if plan == Plan::Movsx && src < 8 {
                let narrow = l.narrow(v, src);
                v = l.b.ins().sextend(types::I64, narrow);
            }
            l.write_operand(&mut at, 0, dst, v);
        }
        Plan::Lea => {
            let size = operand_size(instr, 0);
            let v = l.offset(insn);
            l.write_operand(&mut at, 0, size, v);
        }
        Plan::Alu => {
            let size = operand_size(instr, 0);
            let m = instr.mnemonic();
            let carry = matches!(m, Mnemonic::Adc | Mnemonic::Sbb).then(|| l.carry_in());
            let a = l.read_operand(&mut at, 0, size);
            let b = l.read_operand(&mut at, 1, size);
            let (res, op) = match m {
                Mnemonic::Add => (l.b.ins().iadd(a, b), FlagOp::Add),
                Mnemonic::Adc => {
                    let s = l.b.ins().iadd(a, b);
                    (l.b.ins().iadd(s, carry.expect("carry read")), FlagOp::Adc)
                }
                Mnemonic::Sub | Mnemonic::Cmp => (l.b.ins().isub(a, b), FlagOp::Sub),
                Mnemonic::Sbb => {
                    let d = l.b.ins().isub(a, b);
                    (l.b.ins().isub(d, carry.expect("carry read")), FlagOp::Sbb)
                }
                Mnemonic::And | Mnemonic::Test => (l.b.ins().band(a, b), FlagOp::Logic),
                Mnemonic::Or => (l.b.ins().bor(a, b), FlagOp::Logic),
                _ => (l.b.ins().bxor(a, b), FlagOp::Logic),
            };
            if !matches!(m, Mnemonic::Cmp | Mnemonic::Test) {
                l.write_operand(&mut at, 0, size, res);
            }
            l.set_flags(op, size, a, b, res);
        }
        Plan::IncDec => {
            let size = operand_size(instr, 0);
            // The preserved CF rides in `b`; only computed if something reads it.
            let carry = if live_after & flags::CF != 0 {
                l.carry_in()
            } else {
                l.iconst(0)
            };
            let a = l.read_operand(&mut at, 0, size);
            let inc = instr.mnemonic() == Mnemonic::Inc;
            let res = if inc {
                l.b.ins().iadd_imm(a, 1)
            } else {
                l.b.ins().iadd_imm(a, -1)
            };
            l.write_operand(&mut at, 0, size, res);
            let op = if inc { FlagOp::Inc } else { FlagOp::Dec };
            l.set_flags(op, size, a, carry, res);
        }
        Plan::Sse(op) => l.sse(op, &mut at),
        Plan::Bt => {
            let size = operand_size(instr, 0);
            let bits = size as i64 * 8;
            let bit = if instr.op1_kind() == OpKind::Register {
                let offset = l.read_gpr(register_number(instr.op1_register()), size);
                if instr.op0_kind() == OpKind::Memory {
                    // A register offset into memory is signed and may address any
                    // operand-sized word of the bit string around the operand.
                    let narrow = l.narrow(offset, size);
                    let signed = if size < 8 {
                        l.b.ins().sextend(types::I64, narrow)
                    } else {
                        narrow
                    };
                    let words = l.b.ins().sshr_imm(signed, bits.trailing_zeros() as i64);
                    let bytes = l.b.ins().imul_imm(words, size as i64);
                    let base = l.operand_address(&mut at);
                    at.addr = Some(l.b.ins().iadd(base, bytes));
                }
                l.b.ins().band_imm(offset, bits - 1)
            } else {
                l.iconst(instr.immediate(1) & (bits as u64 - 1))
            };
            let v = l.read_operand(&mut at, 0, size);
            let shifted = l.b.ins().ushr(v, bit);
            let cf = l.b.ins().band_imm(shifted, 1);
            let m = instr.mnemonic();
            if m != Mnemonic::Bt {
                let one = l.iconst(1);
                let mask = l.b.ins().ishl(one, bit);
                let new = match m {
                    Mnemonic::Bts => l.b.ins().bor(v, mask),
                    Mnemonic::Btr => l.b.ins().band_not(v, mask),
                    _ => l.b.ins().bxor(v, mask),
                };
                l.write_operand(&mut at, 0, size, new);
            }
            // CF is the bit; ZF stays as it was; OF, SF, AF and PF are undefined (0 here).
            let zero = l.iconst(0);
            if live_after & flags::ZF != 0 {
                let zf = l.condition(4);
                let zf = l.b.ins().uextend(types::I64, zf);
                let zf = l.b.ins().ishl_imm(zf, 6);
                let bits = l.b.ins().bor(cf, zf);
                l.set_flags(FlagOp::Materialized, 8, bits, zero, zero);
            } else {
                // Cheaper to test: CF as the borrow of 0 - bit.
                let res = l.b.ins().isub(zero, cf);
                l.set_flags(FlagOp::Sub, 8, zero, cf, res);
            }
        }
        Plan::Neg => {
            let size = operand_size(instr, 0);
            let a = l.read_operand(&mut at, 0, size);
            let zero = l.iconst(0);
            let res = l.b.ins().isub(zero, a);
            l.write_operand(&mut at, 0, size, res);
            l.set_flags(FlagOp::Sub, size, zero, a, res);
        }
        Plan::Not => {
            let size = operand_size(instr, 0);
            let a = l.read_operand(&mut at, 0, size);
            let res = l.b.ins().bnot(a);
            l.write_operand(&mut at, 0, size, res);
        }
        Plan::Shift => {
            let size = operand_size(instr, 0);
            let mask = if size == 8 { 0x3f } else { 0x1f };
            let count = match instr.op1_kind() {
                OpKind::Register => {
                    let c = l.read_gpr(reg::RCX, 1);
                    l.b.ins().band_imm(c, mask)
                }
                _ => l.iconst(instr.immediate(1) & mask as u64),
            };
            let a = l.read_operand(&mut at, 0, size);
            let res = match instr.mnemonic() {
                Mnemonic::Shl | Mnemonic::Sal => l.b.ins().ishl(a, count),
                Mnemonic::Shr => l.b.ins().ushr(a, count),
                Mnemonic::Sar => {
                    let narrow = l.narrow(a, size);
                    let wide = if size < 8 {
                        l.b.ins().sextend(types::I64, narrow)
                    } else {
                        narrow
                    };
                    l.b.ins().sshr(wide, count)
                }
                m => {
                    let narrow = l.narrow(a, size);
                    let rotated = if m == Mnemonic::Rol {
                        l.b.ins().rotl(narrow, count)
                    } else {
                        l.b.ins().rotr(narrow, count)
                    };
                    if size < 8 {
                        l.b.ins().uextend(types::I64, rotated)
                    } else {
                        rotated
                    }
                }
            };
            l.write_operand(&mut at, 0, size, res);
        }
        Plan::Imul => {
            let size = operand_size(instr, 0);
            let (x, y) = if instr.op_count() == 3 {
                let x = l.read_operand(&mut at, 1, size);
                let y = l.read_operand(&mut at, 2, size);
                (x, y)
            } else {
                let y = l.read_operand(&mut at, 1, size);
                let x = l.read_operand(&mut at, 0, size);
                (x, y)
            };
            let res = l.b.ins().imul(x, y);
            l.write_operand(&mut at, 0, size, res);
        }
        Plan::Push => {
            let v = match instr.op0_kind() {
                OpKind::Register => l.read_gpr(register_number(instr.op0_register()), 8),
                _ => l.iconst(instr.immediate(0)),
            };
            let rsp = l.reg(reg::RSP);
            let new = l.b.ins().iadd_imm(rsp, -8);
            l.store(new, 8, v, n);
            l.set_reg64(reg::RSP, new);
        }
        Plan::Pop => {
            let rsp = l.reg(reg::RSP);
            let v = l.load(rsp, 8, n);
            let new = l.b.ins().iadd_imm(rsp, 8);
            l.set_reg64(reg::RSP, new);
            l.write_gpr(register_number(instr.op0_register()), 8, v);
        }
        Plan::Cdqe => {
            let eax = l.read_gpr(reg::RAX, 4);
            let narrow = l.narrow(eax, 4);
            let v = l.b.ins().sextend(types::I64, narrow);
            l.set_reg64(reg::RAX, v);
        }
        Plan::Cdq => {
            let eax = l.read_gpr(reg::RAX, 4);
            let narrow = l.narrow(eax, 4);
            let sign = l.b.ins().sshr_imm(narrow, 31);
            let v = l.b.ins().uextend(types::I64, sign);
            l.write_gpr(reg::RDX, 4, v);
        }
        Plan::Cqo => {
            let rax = l.reg(reg::RAX);
            let v = l.b.ins().sshr_imm(rax, 63);
            l.set_reg64(reg::RDX, v);
        }
        Plan::Cmov => {
            let size = operand_size(instr, 0);
            let cc = insn.imm2 as u8;
            let src = l.read_operand(&mut at, 1, size);
            let old = l.read_operand(&mut at, 0, size);
            let cond = l.condition(cc);
            let v = l.b.ins().select(cond, src, old);
            l.write_operand(&mut at, 0, size, v);
        }
        Plan::Setcc => {
            let cc = insn.imm2 as u8;
            let cond = l.condition(cc);
            let v = l.b.ins().uextend(types::I64, cond);
            l.write_operand(&mut at, 0, 1, v);
        }
        Plan::Xchg => {
            let size = operand_size(instr, 0);
            let r0 = register_number(instr.op0_register());
            let r1 = register_number(instr.op1_register());
            let v0 = l.read_gpr(r0, size);
            let v1 = l.read_gpr(r1, size);
            l.write_gpr(r0, size, v1);
            l.write_gpr(r1, size, v0);
        }
        Plan::Bswap => {
            let size = operand_size(instr, 0);
            let r = register_number(instr.op0_register());
            let v = l.read_gpr(r, size);
            let narrow = l.narrow(v, size);
            let swapped = l.b.ins().bswap(narrow);
            let wide = if size < 8 {
                l.b.ins().uextend(types::I64, swapped)
            } else {
                swapped
            };
            l.write_gpr(r, size, wide);
        }
        Plan::Jmp => {
            l.goto(count, insn.imm, 0);
            return true;
        }
        Plan::Jcc => {
            let cc = insn.imm2 as u8;
            let cond = l.condition(cc);
            if l.member_at(insn.imm).is_some() || l.member_at(insn.next_rip()).is_some() {
                // A way stays in the region: each way is its own branch.
                let taken = l.b.create_block();
                let not_taken = l.b.create_block();
                l.b.ins().brif(cond, taken, &[], not_taken, &[]);
                let saved = l.save();
                l.b.switch_to_block(taken);
                l.goto(count, insn.imm, 0);
                l.restore(saved);
                l.b.switch_to_block(not_taken);
                l.goto(count, insn.next_rip(), 1);
                return true;
            }
            // Both ways write the same state back and share the link checks; each has
            // its own slot.
            l.write_back();
            let taken = l.iconst(insn.imm);
            let not_taken = l.iconst(insn.next_rip());
            let target = l.b.ins().select(cond, taken, not_taken);
            let taken_slot = l.iconst(l.slot_addr(0));
            let not_taken_slot = l.iconst(l.slot_addr(1));
            let slot = l.b.ins().select(cond, taken_slot, not_taken_slot);
            let same_page = same_page(l.start, insn.imm) && same_page(l.start, insn.next_rip());
            l.link_tail(count, target, slot, same_page);
            return true;
        }
        Plan::Call => {
            let rsp = l.reg(reg::RSP);
            let new = l.b.ins().iadd_imm(rsp, -8);
            let ret = l.iconst(insn.next_rip());
            l.store(new, 8, ret, n);
            l.set_reg64(reg::RSP, new);
            l.goto(count, insn.imm, 0);
            return true;
        }
        Plan::JmpIndirect => {
            let target = l.read_operand(&mut at, 0, 8);
            l.exit_dynamic(count, target);
            return true;
        }
        Plan::CallIndirect => {
            let target = l.read_operand(&mut at, 0, 8);
            let rsp = l.reg(reg::RSP);
            let new = l.b.ins().iadd_imm(rsp, -8);
            let ret = l.iconst(insn.next_rip());
            l.store(new, 8, ret, n);
            l.set_reg64(reg::RSP, new);
            l.exit_dynamic(count, target);
            return true;
        }
        Plan::Ret => {
            let rsp = l.reg(reg::RSP);
            let target = l.load(rsp, 8, n);
            let new = l.b.ins().iadd_imm(rsp, 8);
            l.set_reg64(reg::RSP, new);
            l.exit_dynamic(count, target);
            return true;
        }
    }
    false
}
