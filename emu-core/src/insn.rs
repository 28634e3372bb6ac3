//! Translated instruction records and the opcode table that produces them.

use std::sync::OnceLock;

use emu_mmu::MemFault;
use iced_x86::Code;

use crate::cpu::Cpu;
use crate::exception::Exception;

/// Why a handler stopped the straight-line execution of its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// The instruction raised an exception and had no effect; RIP is its address.
    Exception(Exception),
    /// A memory access reached an address that is neither RAM nor a device.
    Memory(MemFault),
    /// The handler already set RIP and the block must end here (REP instructions that
    /// yield part-way, instructions that change how later code must be translated).
    EndBlock,
    /// HLT: RIP is the next instruction.
    Halt,
    /// A software interrupt (INT n, INT3, INTO with OF): RIP is the next instruction.
    SoftwareInterrupt(u8),
    /// SYSCALL: RIP is the next instruction (delivered by the system layer).
    Syscall,
}

impl From<MemFault> for Trap {
    #[inline]
    fn from(f: MemFault) -> Self {
        Trap::Memory(f)
    }
}

impl From<Exception> for Trap {
    #[inline]
    fn from(e: Exception) -> Self {
        Trap::Exception(e)
    }
}

/// What a handler returns. The trap is boxed so that the whole result is one pointer,
/// returned in a register: the run loop checks it after every instruction, and a
/// 24-byte `Result<(), Trap>` would go through memory each time. Traps are rare
/// (faults, HLT, yields of long REP loops), so their allocation does not matter.
pub type Step = Result<(), Box<Trap>>;

impl From<MemFault> for Box<Trap> {
    #[inline]
    fn from(f: MemFault) -> Self {
        Box::new(Trap::Memory(f))
    }
}

impl From<Exception> for Box<Trap> {
    #[inline]
    fn from(e: Exception) -> Self {
        Box::new(Trap::Exception(e))
    }
}

/// An instruction handler: executes one translated instruction.
pub type Handler = fn(&mut Cpu, &Insn) -> Step;

/// [`Insn::flags`]: the memory operand uses 32-bit addressing (0x67 prefix).
pub const ADDR32: u8 = 1 << 0;
/// [`Insn::flags`]: the instruction has a LOCK prefix.
pub const LOCKED: u8 = 1 << 1;
/// [`Insn::flags`]: REP/REPE prefix (F3) on a string instruction.
pub const REP: u8 = 1 << 2;
/// [`Insn::flags`]: REPNE prefix (F2) on a string instruction.
pub const REPNE: u8 = 1 << 3;
/// [`Insn::flags`]: the memory operand uses 16-bit addressing (16-bit code, or a 0x67
/// prefix in 32-bit code): the offset wraps at 64 KiB.
pub const ADDR16: u8 = 1 << 4;

/// The offset mask an instruction's address size implies.
#[inline(always)]
pub fn address_mask(flags: u8) -> u64 {
    if flags & ADDR16 != 0 {
        0xffff
    } else if flags & ADDR32 != 0 {
        0xffff_ffff
    } else {
        u64::MAX
    }
}

/// One translated instruction: its handler and pre-resolved operands.
///
/// Operand conventions (the translator fills them the same way for every instruction):
/// * `dst` is the register number of the first register operand, `src` of the second;
///   8-bit registers may carry [`crate::cpu::reg::HIGH_BYTE`]; XMM registers are 0..15.
/// * A memory operand is `seg_base[seg] + (disp + regs[base] + (regs[index] << scale))`,
///   the inner sum truncated to 32 bits when [`ADDR32`] is set (16 with [`ADDR16`]).
///   Outside 64-bit mode `seg` is the instruction's real segment and every legacy address
///   is 32- or 16-bit, so the sum wraps at 4 GiB.
/// * String instructions keep their destination segment (ES outside 64-bit mode, the flat
///   segment in it) in `imm2`. RIP-relative operands are
///   resolved to an absolute `disp` with `base = index = ZERO`.
/// * `imm` is the first immediate (sign-extended as the encoding says) or the branch target;
///   a second immediate (ENTER) is in `imm2`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Insn {
    /// The handler, chosen at translate time.
    pub exec: Handler,
    /// Address of the instruction.
    pub rip: u64,
    /// Memory displacement (absolute for RIP-relative operands).
    pub disp: u64,
    /// Immediate operand or branch target.
    pub imm: u64,
    /// Length in bytes.
    pub len: u8,
    /// First register operand.
    pub dst: u8,
    /// Second register operand.
    pub src: u8,
    /// Memory base register ([`crate::cpu::reg::ZERO`] when absent).
    pub base: u8,
    /// Memory index register ([`crate::cpu::reg::ZERO`] when absent).
    pub index: u8,
    /// log2 of the index scale.
    pub scale: u8,
    /// Segment whose base is added ([`crate::cpu::seg::FLAT`] for none).
    pub seg: u8,
    /// [`ADDR32`], [`ADDR16`], [`LOCKED`], [`REP`], [`REPNE`].
    pub flags: u8,
    /// Second immediate (ENTER's nesting level), third register operand, or condition code.
    pub imm2: u32,
}

impl Insn {
    /// A record for `exec` at `rip` with no operands: registers 0, no memory base or
    /// index, flat segment. The translator fills in the rest.
    pub fn new(exec: Handler, rip: u64, len: u8) -> Self {
        Insn {
            exec,
            rip,
            disp: 0,
            imm: 0,
            len,
            dst: 0,
            src: 0,
            base: crate::cpu::reg::ZERO,
            index: crate::cpu::reg::ZERO,
            scale: 0,
            seg: crate::cpu::seg::FLAT,
            flags: 0,
            imm2: 0,
        }
    }

    /// Address of the next instruction.
    #[inline(always)]
    pub fn next_rip(&self) -> u64 {
        self.rip.wrapping_add(self.len as u64)
    }

    /// The effective (linear) address of the memory operand.
    #[inline(always)]
    pub fn ea(&self, cpu: &Cpu) -> u64 {
        let offset = self
            .disp
            .wrapping_add(cpu.regs[self.base as usize])
            .wrapping_add(cpu.regs[self.index as usize] << self.scale);
        if self.flags & (ADDR32 | ADDR16) == 0 {
            return offset.wrapping_add(cpu.seg_base[self.seg as usize]);
        }
        // Outside 64-bit mode linear addresses are 32 bits wide as well.
        (offset & address_mask(self.flags)).wrapping_add(cpu.seg_base[self.seg as usize])
            & if cpu.code_bits == 64 {
                u64::MAX
            } else {
                0xffff_ffff
            }
    }
}

/// How an instruction affects the shape of its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Execution continues with the next instruction.
    Next,
    /// The instruction may transfer control: it ends its block and sets RIP itself.
    Branch,
    /// The instruction ends its block and does not set RIP (execution continues at the
    /// next instruction, but later code must be looked up afresh).
    EndBlock,
}

/// An opcode-table entry: handlers for the register and memory forms and metadata.
#[derive(Clone, Copy, Debug)]
pub struct OpEntry {
    /// Handler when no operand is in memory.
    pub reg: Option<Handler>,
    /// Handler when an operand is in memory.
    pub mem: Option<Handler>,
    /// Effect on the block.
    pub flow: Flow,
    /// Whether a LOCK prefix is allowed (memory form only).
    pub lockable: bool,
}

impl OpEntry {
    /// An instruction with register and memory forms.
    pub const fn rm(reg: Handler, mem: Handler) -> Self {
        OpEntry {
            reg: Some(reg),
            mem: Some(mem),
            flow: Flow::Next,
            lockable: false,
        }
    }
    /// An instruction with only a register (or no) operand form.
    pub const fn reg(reg: Handler) -> Self {
        OpEntry {
            reg: Some(reg),
            mem: None,
            flow: Flow::Next,
            lockable: false,
        }
    }
    /// An instruction with only a memory form.
    pub const fn mem(mem: Handler) -> Self {
        OpEntry {
            reg: None,
            mem: Some(mem),
            flow: Flow::Next,
            lockable: false,
        }
    }
    /// The same entry, marked as lockable.
    pub const fn lockable(mut self) -> Self {
        self.lockable = true;
        self
    }
    /// The same entry, marked as a control transfer.
    pub const fn branch(mut self) -> Self {
        self.flow = Flow::Branch;
        self
    }
    /// The same entry, marked as ending its block.
    pub const fn ends_block(mut self) -> Self {
        self.flow = Flow::EndBlock;
        self
    }
}

/// The opcode table: iced `Code` to [`OpEntry`], the single source of truth for what the
/// translator accepts. Each handler module registers its own instructions into it.
pub struct OpTable {
    entries: Vec<Option<OpEntry>>,
}

impl OpTable {
    fn new() -> Self {
        OpTable {
            entries: vec![None; Code::values().len()],
        }
    }

    /// Registers `entry` for `code`.
    ///
    /// # Panics
    ///
    /// If `code` is registered twice: two handlers for one instruction is a bug in the table.
    pub fn set(&mut self, code: Code, entry: OpEntry) {
        let slot = &mut self.entries[code as usize];
        assert!(slot.is_none(), "{code:?} registered twice");
        *slot = Some(entry);
    }

    /// The entry for `code`, if the CPU implements it.
    #[inline]
    pub fn get(&self, code: Code) -> Option<&OpEntry> {
        self.entries[code as usize].as_ref()
    }

    /// Every implemented code.
    pub fn codes(&self) -> impl Iterator<Item = Code> + '_ {
        Code::values()
            .zip(&self.entries)
            .filter(|(_, e)| e.is_some())
            .map(|(code, _)| code)
    }

    /// The table, built on first use.
    pub fn global() -> &'static OpTable {
        static TABLE: OnceLock<OpTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut t = OpTable::new();
            crate::exec::register_all(&mut t);
            t
        })
    }
}
