//! Block translation: guest bytes, decoded once by iced-x86, into [`Block`]s of
//! pre-resolved [`Insn`] records.

use emu_mmu::{Access, MemFault, PAGE_MASK, PAGE_SIZE};
use iced_x86::{
    ConditionCode, Decoder, DecoderError, DecoderOptions, Instruction, OpKind, Register,
};

use crate::cpu::{reg, seg, Cpu};
use crate::exception::Exception;
use crate::insn::{Flow, Insn, OpTable, Step, Trap, ADDR16, ADDR32, LOCKED, REP, REPNE};

/// Most instructions one block holds.
pub const MAX_BLOCK_INSNS: usize = 64;

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// A straight-line run of translated instructions.
#[derive(Debug)]
pub struct Block {
    /// Virtual address of the first instruction.
    pub rip: u64,
    /// Address just after the last instruction (where execution falls through to).
    pub end_rip: u64,
    /// The instructions (shared with the background compiler while it works on them).
    pub insns: std::sync::Arc<[Insn]>,
    /// Whether the last instruction sets RIP itself.
    pub ends_in_branch: bool,
    /// Physical pages the block's bytes came from (one, or two if an instruction
    /// straddles a page boundary).
    pub pages: Vec<u64>,
    /// Where the block stands with the compiling tier ([`crate::jit`]).
    pub tier: crate::jit::BlockTier,
    /// Whether some instruction has [`LOCKED`] set (the run loop then checks each one).
    pub has_locked: bool,
    /// The block's direct-link slots, once it is queued for compiling.
    pub links: Option<crate::jit::LinkSlots>,
    /// Records of the other blocks its compiled code takes in (a region, see
    /// [`crate::jit::Job`]): that code calls their handlers and reports their traps
    /// through pointers to them, so they live as long as this block.
    pub inlined: Vec<std::sync::Arc<[Insn]>>,
    /// Unique among all blocks ever translated in this process (a cache slot index is
    /// reused; this is not), so late compile results find the block they were for.
    pub id: u64,
}

/// Source of [`Block::id`].
static NEXT_BLOCK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Translates the block starting at offset `rip` of the current code segment, decoding
/// in the CPU's current mode ([`Cpu::code_bits`]). Records carry code-segment offsets;
/// code is fetched (and marked) at linear addresses.
///
/// # Errors
///
/// A fetch fault if the first instruction cannot be fetched. Later instructions that
/// cannot be fetched end the block before them, so their fault is raised when reached.
pub fn translate_block(cpu: &mut Cpu, rip: u64) -> Result<Block, Trap> {
    let bits = cpu.code_bits;
    let linear = cpu.code_linear(rip);
    let page_left = (PAGE_SIZE - (linear & !PAGE_MASK)) as usize;
    let in_page = page_left.min(MAX_BLOCK_INSNS * MAX_INSN_LEN);
    let mut buf = [0u8; MAX_BLOCK_INSNS * MAX_INSN_LEN + MAX_INSN_LEN];
    let fetched = cpu
        .mmu
        .fetch_code(linear, &mut buf[..in_page + MAX_INSN_LEN]);
    if fetched == 0 {
        return Err(fetch_fault(cpu, linear));
    }
    let table = OpTable::global();
    let mut decoder = Decoder::with_ip(bits, &buf[..fetched], rip, DecoderOptions::NONE);
    let mut insns = Vec::with_capacity(16);
    let mut instr = Instruction::default();
    let mut ends_in_branch = false;
    let mut end_rip = rip;
    while insns.len() < MAX_BLOCK_INSNS && decoder.position() < in_page.min(fetched) {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            if decoder.last_error() == DecoderError::NoMoreBytes && fetched < buf.len() {
                // The instruction runs into memory that is not mapped.
                if insns.is_empty() {
                    return Err(fetch_fault(cpu, linear.wrapping_add(fetched as u64)));
                }
                break;
            }
            insns.push(raise_ud_record(instr.ip(), instr.len().max(1)));
            ends_in_branch = true;
            end_rip = instr.next_ip();
            break;
        }
        let (record, flow) = translate_insn(table, &instr, bits);
        insns.push(record);
        end_rip = instr.next_ip();
        if flow != Flow::Next {
            ends_in_branch = flow == Flow::Branch;
            break;
        }
    }
    // Code marks and invalidation work on physical pages: the same code may be mapped at
    // several linear addresses.
    let mut pages = vec![cpu.mmu.mark_code_at(linear)?];
    let last_byte = linear.wrapping_add(end_rip.wrapping_sub(rip + 1));
    if last_byte & PAGE_MASK != linear & PAGE_MASK {
        pages.push(cpu.mmu.mark_code_at(last_byte)?);
    }
    let has_locked = insns.iter().any(|i| i.flags & LOCKED != 0);
    Ok(Block {
        rip,
        end_rip,
        has_locked,
        links: None,
        inlined: Vec::new(),
        insns: insns.into(),
        ends_in_branch,
        pages,
        tier: crate::jit::BlockTier::Cold,
        id: NEXT_BLOCK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}

/// What stops a fetch at `addr`: a page fault, a non-canonical address, or memory that is
/// not RAM.
fn fetch_fault(cpu: &mut Cpu, addr: u64) -> Trap {
    let fault = cpu.mmu.translate(addr, Access::Fetch).err();
    Trap::Memory(fault.unwrap_or(MemFault::Unmapped {
        addr,
        access: Access::Fetch,
    }))
}

fn raise_ud(_: &mut Cpu, _: &Insn) -> Step {
    Err(Trap::Exception(Exception::InvalidOpcode).into())
}

fn raise_ud_record(rip: u64, len: usize) -> Insn {
    Insn::new(raise_ud, rip, len as u8)
}

/// Translates one instruction decoded in `bits`-bit code into its record; unknown or
/// invalid ones become a record that raises #UD when executed.
pub fn translate_insn(table: &OpTable, instr: &Instruction, bits: u32) -> (Insn, Flow) {
    let ud = (raise_ud_record(instr.ip(), instr.len()), Flow::Branch);
    let Some(entry) = table.get(instr.code()) else {
        return ud;
    };
    let has_mem = (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory);
    let handler = if has_mem { entry.mem } else { entry.reg };
    let Some(handler) = handler else { return ud };
    if instr.has_lock_prefix() && !(entry.lockable && has_mem) {
        return ud;
    }
    let mut insn = raise_ud_record(instr.ip(), instr.len());
    insn.exec = handler;
    // XCHG with a memory operand is locked whether or not it has the prefix.
    if instr.has_lock_prefix() || (has_mem && instr.mnemonic() == iced_x86::Mnemonic::Xchg) {
        insn.flags |= LOCKED;
    }
    if instr.is_string_instruction() {
        if instr.has_rep_prefix() {
            insn.flags |= REP;
        } else if instr.has_repne_prefix() {
            insn.flags |= REPNE;
        }
    }
    let mut regs_seen = 0;
    let mut imms_seen = 0;
    for i in 0..instr.op_count() {
        match instr.op_kind(i) {
            OpKind::Register => {
                let r = register_number(instr.op_register(i));
                match regs_seen {
                    0 => insn.dst = r,
                    1 => insn.src = r,
                    _ => insn.imm2 = r as u32,
                }
                regs_seen += 1;
            }
            OpKind::Memory => resolve_memory(instr, &mut insn, bits),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                insn.imm = instr.near_branch_target();
            }
            OpKind::Immediate8
            | OpKind::Immediate8_2nd
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => {
                let value = instr.immediate(i);
                if imms_seen == 0 {
                    insn.imm = value;
                } else {
                    insn.imm2 = value as u32;
                }
                imms_seen += 1;
            }
            OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI => {
                insn.seg = segment_number(instr.memory_segment(), bits);
                insn.flags |= string_address_size(instr.op_kind(i));
            }
            OpKind::MemoryESDI | OpKind::MemoryESEDI | OpKind::MemoryESRDI => {
                insn.imm2 = segment_number(Register::ES, bits) as u32;
                insn.flags |= string_address_size(instr.op_kind(i));
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                insn.imm = if instr.op_kind(i) == OpKind::FarBranch16 {
                    instr.far_branch16() as u64
                } else {
                    instr.far_branch32() as u64
                };
                insn.imm2 = instr.far_branch_selector() as u32;
            }
        }
    }
    if instr.condition_code() != ConditionCode::None {
        // Jcc, SETcc, CMOVcc: condition number 0 (O) .. 15 (G), as in the opcode.
        insn.imm2 = instr.condition_code() as u32 - 1;
    }
    (insn, entry.flow)
}

fn resolve_memory(instr: &Instruction, insn: &mut Insn, bits: u32) {
    let base = instr.memory_base();
    let index = instr.memory_index();
    if base == Register::RIP || base == Register::EIP {
        insn.disp = instr.ip_rel_memory_address();
        insn.base = reg::ZERO;
        if base == Register::EIP {
            insn.flags |= ADDR32;
        }
    } else {
        insn.disp = instr.memory_displacement64();
        insn.base = if base == Register::None {
            reg::ZERO
        } else {
            register_number(base)
        };
        let no_registers = base == Register::None && index == Register::None;
        if base.is_gpr16() || index.is_gpr16() || (no_registers && instr.memory_displ_size() == 2) {
            insn.flags |= ADDR16;
        } else if base.is_gpr32() || index.is_gpr32() || bits != 64 {
            insn.flags |= ADDR32;
        }
    }
    insn.index = if index == Register::None {
        reg::ZERO
    } else {
        register_number(index)
    };
    insn.scale = instr.memory_index_scale().trailing_zeros() as u8;
    insn.seg = segment_number(instr.memory_segment(), bits);
}

/// The address-size flag of a string instruction's implicit operand.
fn string_address_size(kind: OpKind) -> u8 {
    match kind {
        OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => ADDR16,
        OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => ADDR32,
        _ => 0,
    }
}

/// Our number for the segment an operand uses. In 64-bit mode only FS and GS have bases
/// and every other segment is flat; elsewhere each segment's base applies.
fn segment_number(segment: Register, bits: u32) -> u8 {
    match segment {
        Register::FS => seg::FS,
        Register::GS => seg::GS,
        _ if bits == 64 => seg::FLAT,
        Register::ES => seg::ES,
        Register::CS => seg::CS,
        Register::SS => seg::SS,
        Register::DS => seg::DS,
        _ => seg::FLAT,
    }
}

/// Our number for an iced register: GPRs 0..15 (8-bit high registers with
/// [`reg::HIGH_BYTE`]), XMM 0..15, segment registers 0..5.
pub fn register_number(r: Register) -> u8 {
    let n = r as u32;
    if r.is_gpr8() {
        let i = n - Register::AL as u32;
        match i {
            0..=3 => i as u8,
            4..=7 => reg::HIGH_BYTE | (i as u8 - 4),
            8..=11 => i as u8 - 4,
            _ => i as u8 - 4,
        }
    } else if r.is_gpr16() {
        (n - Register::AX as u32) as u8
    } else if r.is_gpr32() {
        (n - Register::EAX as u32) as u8
    } else if r.is_gpr64() {
        (n - Register::RAX as u32) as u8
    } else if r.is_xmm() {
        (n - Register::XMM0 as u32) as u8
    } else if r.is_cr() {
        (n - Register::CR0 as u32) as u8
    } else if r.is_dr() {
        (n - Register::DR0 as u32) as u8
    } else if r.is_segment_register() {
        (n - Register::ES as u32) as u8
    } else if r.is_st() {
        // x87 stack registers ST(0)..ST(7), relative to TOP.
        (n - Register::ST0 as u32) as u8
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_numbers_cover_high_bytes_and_rex_bytes() {
        assert_eq!(register_number(Register::AL), 0);
        assert_eq!(register_number(Register::AH), reg::HIGH_BYTE);
        assert_eq!(register_number(Register::BH), reg::HIGH_BYTE | 3);
        assert_eq!(register_number(Register::SPL), 4);
        assert_eq!(register_number(Register::DIL), 7);
        assert_eq!(register_number(Register::R8L), 8);
        assert_eq!(register_number(Register::R15L), 15);
        assert_eq!(register_number(Register::R15D), 15);
        assert_eq!(register_number(Register::XMM9), 9);
        assert_eq!(register_number(Register::GS), 5);
    }
}
