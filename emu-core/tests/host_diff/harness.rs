//! The differential runner: one instruction sequence, run natively on the host CPU and in
//! emu-core from the same state, compared register by register and byte by byte.
//!
//! # How a case runs
//!
//! * **Memory.** A 64 KiB data area sits at [`DATA`] and the test bytes at [`CODE`], right
//!   after it, at the same addresses natively and in the emulator, so absolute, RIP-relative,
//!   32-bit and segment-relative operands all reach the same bytes. The data area is filled
//!   from [`Case::fill_seed`] and then [`Case::mem`] is written over it. Layout by
//!   convention: [`MARKER`] (64 bytes the branch cases store markers into), the operand
//!   zone, and the stack zone around [`DEFAULT_RSP`].
//! * **Natively** a server child process (forked once, reused for every case, respawned if
//!   it dies) runs a prologue that loads all 16 GPRs, RFLAGS (`popfq`), XMM0-15, MXCSR and
//!   the FS/GS bases (`arch_prctl`) from a mailbox shared with the parent, jumps to the
//!   test bytes, and an epilogue (reached through a `jmp` placed right after the bytes)
//!   saves everything back. A fault in the test bytes (SIGFPE for #DE, SIGSEGV, SIGILL,
//!   SIGTRAP...) is caught by a handler on an alternate stack, which records the vector
//!   (`REG_TRAPNO`), error code and the register state at the fault and resumes the
//!   server, so a faulting case costs no more than any other. A case that does not finish
//!   within [`NATIVE_TIMEOUT`] gets the child killed.
//! * **Emulated** the same bytes run in a fresh [`Emulator`] with the same memory mapped,
//!   until RIP reaches the end of the bytes.
//! * **Compared:** the outcome (completed, or the same exception vector at the same RIP),
//!   every GPR, RFLAGS (minus [`Case::undefined_flags`] and RF), XMM0-15, MXCSR and the
//!   whole data area. A mismatch is reported with the disassembly, the initial state and
//!   each differing register, flag and memory range.
//!
//! # Using it (for new cases)
//!
//! ```ignore
//! let code = harness::asm(|a| a.addps(xmm0, xmm1));
//! let mut case = harness::Case::new("addps", code);
//! case.init.xmm[1] = 0x3f80_0000;
//! harness::check(&case); // panics with a report on mismatch
//! ```
//!
//! For randomized cases, build a [`Form`] (a name, required host features and a proptest
//! strategy producing [`Case`]s) and hand a list of them to [`run_forms`], which runs
//! [`cases_per_form`] cases of each (`QUETZAL_DIFF_CASES`), shrinks failures and reports
//! every failing form at once. [`gen`] has operand strategies with edge values forced in.
//! Every form must also be listed by its module's `forms()` so the coverage test sees it.
//!
//! Only x86-64 Linux hosts can run cases; elsewhere [`check`] and [`run_forms`] print a skip
//! message and return, so the suite compiles and passes everywhere.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

use emu_core::{Emulator, RunOptions, StopReason};
use iced_x86::code_asm::{CodeAssembler, IcedError};
use iced_x86::{
    Decoder, DecoderOptions, Encoder, Formatter, Instruction, IntelFormatter, Register,
};
use proptest::strategy::{BoxedStrategy, Strategy};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Start of the data area (below 2 GiB, so `[disp32]` and 32-bit addresses reach it).
pub const DATA: u64 = 0x3000_0000;
/// Size of the data area.
pub const DATA_SIZE: usize = 0x1_0000;
/// Where the test bytes start: right after the data area, so RIP-relative operands reach
/// all of it with small displacements.
pub const CODE: u64 = DATA + DATA_SIZE as u64;
/// Longest test sequence (the rest of the code page holds the jump to the epilogue).
pub const CODE_MAX: usize = 0x1000 - 16;
/// 64 bytes at the start of the data area reserved for branch markers (cases write
/// there to show which path ran; operand addresses never land there).
pub const MARKER: u64 = DATA;
/// First byte of the zone operand addresses are drawn from.
pub const OPERAND_ZONE: u64 = DATA + 0x40;
/// End of the operand zone; the stack zone follows up to the end of the data area.
pub const OPERAND_ZONE_END: u64 = DATA + 0xE000;
/// RSP of [`State::new`]: in the middle of the stack zone.
pub const DEFAULT_RSP: u64 = DATA + 0xF000;
/// How long a native case may run before its process is killed.
pub const NATIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// RFLAGS bits a case may set through `popfq`: the arithmetic flags and DF.
pub const SETTABLE_FLAGS: u64 = 0x8d5 | DF;
/// RFLAGS of user code that the CPU keeps fixed: bit 1 and IF.
pub const FIXED_FLAGS: u64 = 0x202;

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary-carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// The six arithmetic flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// Resume flag: set in the RFLAGS image of a fault, never compared.
const RF: u64 = 1 << 16;

/// The 64-bit GPRs in encoding order (the index into [`State::gpr`]).
pub const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Architectural state a case starts from (and that a run ends with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// RAX..R15 in encoding order ([`GPR64`]).
    pub gpr: [u64; 16],
    /// RFLAGS. Only [`SETTABLE_FLAGS`] are taken from a case; [`FIXED_FLAGS`] are always set.
    pub rflags: u64,
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
    /// FS base (canonical; set with `arch_prctl` natively).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// The x87 part of the FXSAVE image (bytes 0..160: control, status and abridged tag
    /// words, pointers, and ST(0)..ST(7) in 16-byte slots); bytes 24..32 (MXCSR and its
    /// mask) are ignored here, MXCSR is [`State::mxcsr`].
    pub x87: [u8; X87_IMAGE],
}

/// Bytes of the FXSAVE image that hold the x87 state.
pub const X87_IMAGE: usize = 160;

/// Bytes of the x87 image that are compared: FCW, FSW, the abridged FTW and the reserved
/// byte after it, and the register slots. FOP, FIP and FDP (bytes 6..24) are not: AMD
/// CPUs store them only while an exception is pending, and they are masked in saved
/// environments too.
fn x87_compared(k: usize) -> bool {
    !(6..32).contains(&k)
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// GPRs zero except RSP = [`DEFAULT_RSP`], flags clear, MXCSR at its reset value,
    /// XMM registers holding distinct patterns (so a stray write to one shows).
    pub fn new() -> Self {
        let mut gpr = [0; 16];
        gpr[4] = DEFAULT_RSP;
        let mut xmm = [0u128; 16];
        for (i, x) in xmm.iter_mut().enumerate() {
            *x = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.rotate_left(8 * i as u32)
                ^ (i as u128 * 0x0101_0101);
        }
        State {
            gpr,
            rflags: FIXED_FLAGS,
            xmm,
            mxcsr: 0x1f80,
            fs_base: 0,
            gs_base: 0,
            x87: {
                let mut x = [0u8; X87_IMAGE];
                x[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
                x
            },
        }
    }

    /// Sets the x87 control word.
    pub fn set_fcw(&mut self, fcw: u16) {
        self.x87[0..2].copy_from_slice(&fcw.to_le_bytes());
    }

    /// Sets the x87 status word (TOP included).
    pub fn set_fsw(&mut self, fsw: u16) {
        self.x87[2..4].copy_from_slice(&fsw.to_le_bytes());
    }

    /// The x87 status word.
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes([self.x87[2], self.x87[3]])
    }

    /// Makes `values` the x87 stack (`values[0]` is ST(0), 80-bit encodings); the other
    /// registers are empty but keep `filler` contents. TOP becomes `8 - values.len()`
    /// (mod 8); the rest of the status word is kept.
    pub fn set_x87_stack(&mut self, values: &[u128], filler: u128) {
        let n = values.len().min(8);
        let top = (8 - n) % 8;
        let fsw = (self.fsw() & !(7 << 11)) | ((top as u16) << 11);
        self.set_fsw(fsw);
        let mut valid = 0u8;
        for k in 0..8 {
            let v = if let Some(&v) = values.get(k).filter(|_| k < n) {
                valid |= 1 << ((top + k) % 8);
                v
            } else {
                filler.wrapping_mul(k as u128 + 1)
            };
            let v = v & ((1u128 << 80) - 1);
            self.x87[32 + 16 * k..48 + 16 * k].copy_from_slice(&v.to_le_bytes());
        }
        self.x87[4] = valid;
    }

    /// The full FXSAVE image of this state (MXCSR_MASK 0).
    pub fn fx_image(&self) -> [u8; 512] {
        let mut img = [0u8; 512];
        img[..X87_IMAGE].copy_from_slice(&self.x87);
        img[24..28].copy_from_slice(&self.mxcsr.to_le_bytes());
        img[28..32].fill(0);
        for (k, x) in self.xmm.iter().enumerate() {
            img[160 + 16 * k..176 + 16 * k].copy_from_slice(&x.to_le_bytes());
        }
        img
    }

    /// Reads a GPR by any of its names (AH..BH read bits 8..15).
    ///
    /// # Panics
    ///
    /// If `r` is not a general-purpose register.
    pub fn reg(&self, r: Register) -> u64 {
        let (idx, shift, bits) = gpr_slot(r);
        let v = self.gpr[idx] >> shift;
        if bits == 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        }
    }

    /// Writes the bits a register name covers, leaving the other bits of the 64-bit
    /// register alone (also for 32-bit names: this is setup, not an instruction).
    ///
    /// # Panics
    ///
    /// If `r` is not a general-purpose register.
    pub fn set_reg(&mut self, r: Register, value: u64) {
        let (idx, shift, bits) = gpr_slot(r);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            ((1u64 << bits) - 1) << shift
        };
        self.gpr[idx] = (self.gpr[idx] & !mask) | ((value << shift) & mask);
    }
}

/// `(index into State::gpr, bit offset, width)` of a GPR name.
fn gpr_slot(r: Register) -> (usize, u32, u32) {
    let full = r.full_register();
    let idx = GPR64
        .iter()
        .position(|&g| g == full)
        .unwrap_or_else(|| panic!("{r:?} is not a general-purpose register"));
    let high = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    (idx, if high { 8 } else { 0 }, r.size() as u32 * 8)
}

/// One differential test case.
#[derive(Clone, Debug)]
pub struct Case {
    /// What the case tests (shown in reports).
    pub name: String,
    /// The instruction bytes, placed at [`CODE`]; execution ends when RIP reaches
    /// `CODE + code.len()`.
    pub code: Vec<u8>,
    /// The initial state.
    pub init: State,
    /// Seed of the pseudo-random fill of the data area.
    pub fill_seed: u64,
    /// Bytes written over the fill, at absolute addresses inside the data area.
    pub mem: Vec<(u64, Vec<u8>)>,
    /// RFLAGS bits the manual leaves undefined for this case: not compared.
    pub undefined_flags: u64,
    /// Per GPR, bits whose final value the manual leaves undefined: not compared.
    pub undefined_gpr: [u64; 16],
    /// Per XMM register, bits whose final value the manual leaves undefined.
    pub undefined_xmm: [u128; 16],
    /// x87 status-word bits the manual leaves undefined for this case.
    pub undefined_fsw: u16,
    /// Memory ranges `(address, length)` whose final contents are undefined (x87
    /// instruction and operand pointers in saved environments).
    pub undefined_mem: Vec<(u64, usize)>,
    /// How many units in the last place the x87 registers may differ by (0: exact), for
    /// the transcendentals, whose last bit differs between CPUs: two finite values of the
    /// same sign within this distance compare equal (the case also marks C1 undefined).
    pub x87_ulps: u64,
}

impl Case {
    /// A case running `code` from [`State::new`] over a fill seeded by the name.
    pub fn new(name: impl Into<String>, code: Vec<u8>) -> Self {
        let name = name.into();
        let fill_seed = fnv1a(name.as_bytes());
        Case {
            name,
            code,
            init: State::new(),
            fill_seed,
            mem: Vec::new(),
            undefined_flags: 0,
            undefined_gpr: [0; 16],
            undefined_xmm: [0; 16],
            undefined_fsw: 0,
            undefined_mem: Vec::new(),
            x87_ulps: 0,
        }
    }

    /// Writes `bytes` at `addr` (inside the data area) before the run.
    ///
    /// # Panics
    ///
    /// If the range is not inside the data area.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        assert!(
            addr >= DATA && addr + bytes.len() as u64 <= DATA + DATA_SIZE as u64,
            "{addr:#x}+{} is outside the data area",
            bytes.len()
        );
        self.mem.push((addr, bytes.to_vec()));
        self
    }

    /// Writes the low `size` bytes of `value` (little endian) at `addr`.
    pub fn write_int(&mut self, addr: u64, value: u64, size: usize) -> &mut Self {
        let bytes = value.to_le_bytes();
        self.write(addr, &bytes[..size])
    }

    /// Writes a 128-bit value at `addr`.
    pub fn write_u128(&mut self, addr: u64, value: u128) -> &mut Self {
        self.write(addr, &value.to_le_bytes())
    }

    /// Address where the run ends (just after the code).
    pub fn end(&self) -> u64 {
        CODE + self.code.len() as u64
    }

    /// The data area as the case starts with it.
    pub fn initial_data(&self) -> Vec<u8> {
        let mut data = vec![0u8; DATA_SIZE];
        let mut x = self.fill_seed | 1;
        for chunk in data.chunks_mut(8) {
            // xorshift64*: cheap, and every byte value shows up.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        for (addr, bytes) in &self.mem {
            let off = (addr - DATA) as usize;
            data[off..off + bytes.len()].copy_from_slice(bytes);
        }
        data
    }

    /// The initial RFLAGS as both sides load it.
    pub fn initial_rflags(&self) -> u64 {
        (self.init.rflags & SETTABLE_FLAGS) | FIXED_FLAGS
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// RIP reached the end of the code.
    Completed,
    /// An exception (or INT3) stopped the run; the state is the one at that point.
    Exception {
        /// The vector (0 = #DE, 3 = #BP, 6 = #UD, 13 = #GP, 14 = #PF, 19 = #XM...).
        vector: u8,
        /// The error code, where the vector has one and the side reports it.
        error_code: Option<u32>,
        /// RIP reported: the faulting instruction, or the next one for INT3.
        rip: u64,
    },
    /// The run did not finish in time.
    Hang,
    /// Anything else (the emulator halted, the native child died...).
    Other(String),
}

/// The end state of one side.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// How the run ended.
    pub outcome: Outcome,
    /// Registers at the end (or at the fault).
    pub state: State,
    /// The data area at the end.
    pub data: Vec<u8>,
}

/// Assembles with iced's code assembler at [`CODE`].
///
/// # Panics
///
/// If assembly fails (a bug in the case).
pub fn asm(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    build(&mut a).expect("case assembles");
    a.assemble(CODE).expect("case assembles")
}

/// Encodes `instrs` one after another starting at [`CODE`] (each is encoded at the address
/// it lands on, so RIP-relative operands and branch targets given as absolute addresses
/// work).
///
/// # Errors
///
/// The encoder's message if an instruction cannot be encoded.
pub fn encode(instrs: &[Instruction]) -> Result<Vec<u8>, String> {
    encode_at(CODE, instrs)
}

/// As [`encode`], starting at `ip`.
///
/// # Errors
///
/// The encoder's message if an instruction cannot be encoded.
pub fn encode_at(ip: u64, instrs: &[Instruction]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = Encoder::new(64);
    for instr in instrs {
        let rip = ip + out.len() as u64;
        encoder
            .encode(instr, rip)
            .map_err(|e| format!("{:?}: {e}", instr.code()))?;
        out.extend_from_slice(&encoder.take_buffer());
    }
    Ok(out)
}

/// Disassembles `code` as placed at [`CODE`], one instruction per line.
pub fn disassemble(code: &[u8]) -> String {
    let mut out = String::new();
    let mut decoder = Decoder::with_ip(64, code, CODE, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut text = String::new();
    for instr in &mut decoder {
        text.clear();
        formatter.format(&instr, &mut text);
        let start = (instr.ip() - CODE) as usize;
        let bytes: String = code[start..start + instr.len()]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(out, "  {:#x}  {bytes:<30} {text}", instr.ip());
    }
    out
}

/// The iced codes of the instructions in `code` (stopping at undecodable bytes).
pub fn decoded_codes(code: &[u8]) -> Vec<iced_x86::Code> {
    let mut decoder = Decoder::with_ip(64, code, CODE, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instr in &mut decoder {
        if instr.is_invalid() {
            break;
        }
        out.push(instr.code());
    }
    out
}

/// Runs `case` on both sides and compares.
///
/// # Errors
///
/// A readable report of every difference (or of a native run that could not be done).
pub fn try_check(case: &Case) -> Result<(), String> {
    assert!(
        case.code.len() <= CODE_MAX,
        "case {} is {} bytes, at most {CODE_MAX} fit",
        case.name,
        case.code.len()
    );
    let data = case.initial_data();
    let native = native::run(case, &data)?;
    // Every tier: the interpreter, every block compiled on its first entry, and blocks
    // compiled on their second (by when the blocks of a loop are known, so a loop
    // compiles into one region).
    for tier in [Tier::Interpreter, Tier::Compiled, Tier::Regions] {
        let emulated = run_emulated(case, &data, tier);
        compare(case, &native, &emulated).map_err(|report| format!("[{tier:?}] {report}"))?;
    }
    Ok(())
}

/// Which execution tier of the emulator runs a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Only the interpreter.
    Interpreter,
    /// Every block compiled (on the vCPU's thread) the first time it runs whole.
    Compiled,
    /// Blocks compiled the second time they run whole, with the blocks around them
    /// that have run before (regions: see `emu_core::jit::Job`).
    Regions,
}

impl Tier {
    fn config(self) -> emu_core::jit::JitConfig {
        emu_core::jit::JitConfig {
            enabled: self != Tier::Interpreter,
            threshold: if self == Tier::Regions { 2 } else { 1 },
            background: false,
            ..Default::default()
        }
    }
}

/// Why this host cannot run native cases, if it cannot.
pub fn native_unavailable() -> Option<String> {
    native::unavailable()
}

/// Runs `case` on both sides and panics with a report if they differ. On hosts that
/// cannot run x86-64 code natively it prints a skip message instead.
///
/// # Panics
///
/// On any difference.
pub fn check(case: &Case) {
    if let Some(why) = native::unavailable() {
        eprintln!("host_diff: skipping {}: {why}", case.name);
        return;
    }
    if let Err(report) = try_check(case) {
        panic!("{report}");
    }
}

/// Runs `case` in a fresh emulator over `data` (the initial data area), on `tier`.
pub fn run_emulated(case: &Case, data: &[u8], tier: Tier) -> Snapshot {
    let mut emu = Emulator::new();
    emu.set_jit_config(tier.config());
    let code_pages = (case.code.len() as u64 + 16).div_ceil(0x1000) * 0x1000;
    emu.map_memory(DATA, DATA_SIZE as u64).expect("map data");
    emu.map_memory(CODE, code_pages).expect("map code");
    emu.write_memory(DATA, data).expect("write data");
    emu.write_memory(CODE, &case.code).expect("write code");
    for (i, &r) in GPR64.iter().enumerate() {
        emu.set_reg(r, case.init.gpr[i]).expect("set gpr");
    }
    emu.set_reg(Register::FS, case.init.fs_base).expect("fs");
    emu.set_reg(Register::GS, case.init.gs_base).expect("gs");
    {
        let cpu = emu.cpu_mut();
        // The native side runs in a user process, so the emulated side runs at CPL 3 too:
        // privileged instructions must fault the same way on both.
        cpu.sys.cpl = 3;
        // As the host kernel does, enable SYSCALL/SYSRET (so SYSRET at CPL 3 is #GP, not #UD).
        cpu.sys.efer |= emu_core::sysregs::efer::SCE;
        cpu.xmm = case.init.xmm;
        cpu.mxcsr = case.init.mxcsr;
        emu_core::exec::x87::fxsave::restore(cpu, &case.init.fx_image(), true)
            .expect("case x87 image loads");
        cpu.set_rflags(case.initial_rflags());
    }
    // The compiled tiers end the code with INT3 rather than running to its end
    // address: a block that the end address cuts short runs interpreted, and compiled
    // code stops at every block boundary when there is an end address (it may not run
    // past it), which would keep a region's loop from going round inside the region.
    let until = if tier != Tier::Interpreter {
        emu.write_memory(case.end(), &[0xcc]).expect("write int3");
        None
    } else {
        Some(case.end())
    };
    let stop = emu.run(
        CODE,
        &RunOptions {
            until,
            max_instructions: Some(10_000_000),
            timeout: Some(NATIVE_TIMEOUT),
        },
    );
    let outcome = match stop {
        StopReason::ReachedEnd => Outcome::Completed,
        StopReason::SoftwareInterrupt { vector: 3, rip }
            if until.is_none() && rip == case.end() + 1 =>
        {
            Outcome::Completed
        }
        StopReason::Exception { exception, rip } => Outcome::Exception {
            vector: exception.vector(),
            error_code: exception.error_code(),
            rip,
        },
        // Paging is off and nothing else is mapped, so an unmapped access is what a
        // page fault is natively.
        StopReason::Unmapped { rip, .. } => Outcome::Exception {
            vector: 14,
            error_code: None,
            rip,
        },
        // INT3 natively is #BP reported after the instruction, which is what this is.
        StopReason::SoftwareInterrupt { vector: 3, rip } => Outcome::Exception {
            vector: 3,
            error_code: None,
            rip,
        },
        StopReason::Timeout | StopReason::InstructionLimit => Outcome::Hang,
        other => Outcome::Other(format!("{other:?}")),
    };
    let mut state = State::new();
    for (i, &r) in GPR64.iter().enumerate() {
        state.gpr[i] = emu.reg(r).expect("gpr");
    }
    state.fs_base = case.init.fs_base;
    state.gs_base = case.init.gs_base;
    let cpu = emu.cpu();
    state.xmm = cpu.xmm;
    state.mxcsr = cpu.mxcsr;
    state.rflags = cpu.rflags();
    state
        .x87
        .copy_from_slice(&emu_core::exec::x87::fxsave::image(cpu, true)[..X87_IMAGE]);
    let mut out = vec![0u8; DATA_SIZE];
    emu.read_memory(DATA, &mut out).expect("read data");
    Snapshot {
        outcome,
        state,
        data: out,
    }
}

fn outcomes_agree(native: &Outcome, emulated: &Outcome) -> bool {
    match (native, emulated) {
        (Outcome::Completed, Outcome::Completed) => true,
        (
            Outcome::Exception {
                vector: v1,
                error_code: e1,
                rip: r1,
            },
            Outcome::Exception {
                vector: v2,
                error_code: e2,
                rip: r2,
            },
        ) => {
            // Error codes are compared for #GP only: #PF's code describes host paging.
            let codes_agree = *v1 != 13 || e1.is_none() || e2.is_none() || e1 == e2;
            v1 == v2 && r1 == r2 && codes_agree
        }
        _ => false,
    }
}

/// Compares two end states under the case's masks.
///
/// # Errors
///
/// The report of every difference.
pub fn compare(case: &Case, native: &Snapshot, emulated: &Snapshot) -> Result<(), String> {
    let mut diffs = String::new();
    if !outcomes_agree(&native.outcome, &emulated.outcome) {
        let _ = writeln!(
            diffs,
            "  outcome: native {:?}, emulated {:?}",
            native.outcome, emulated.outcome
        );
    }
    let (n, e) = (&native.state, &emulated.state);
    for (i, r) in GPR64.iter().enumerate() {
        let d = (n.gpr[i] ^ e.gpr[i]) & !case.undefined_gpr[i];
        if d != 0 {
            let _ = writeln!(
                diffs,
                "  {r:?}: native {:#018x}, emulated {:#018x} (xor {d:#x})",
                n.gpr[i], e.gpr[i]
            );
        }
    }
    let fd = (n.rflags ^ e.rflags) & !(case.undefined_flags | RF);
    if fd != 0 {
        let _ = writeln!(
            diffs,
            "  RFLAGS: native {:#x} [{}], emulated {:#x} [{}]; differing: {} (undefined, not compared: {})",
            n.rflags,
            flag_names(n.rflags),
            e.rflags,
            flag_names(e.rflags),
            flag_names(fd),
            flag_names(case.undefined_flags)
        );
    }
    for i in 0..16 {
        if (n.xmm[i] ^ e.xmm[i]) & !case.undefined_xmm[i] != 0 {
            let _ = writeln!(
                diffs,
                "  XMM{i}: native {:#034x}, emulated {:#034x}",
                n.xmm[i], e.xmm[i]
            );
        }
    }
    if n.mxcsr != e.mxcsr {
        let _ = writeln!(
            diffs,
            "  MXCSR: native {:#06x}, emulated {:#06x}",
            n.mxcsr, e.mxcsr
        );
    }
    let fsw_mask = !case.undefined_fsw;
    let mut e_x87 = e.x87;
    if case.x87_ulps > 0 {
        for k in 0..8 {
            let slot = 32 + 16 * k..42 + 16 * k;
            let value = |x: &[u8; X87_IMAGE]| {
                let mut r = [0u8; 16];
                r[..10].copy_from_slice(&x[slot.clone()]);
                u128::from_le_bytes(r)
            };
            if within_ulps(value(&n.x87), value(&e.x87), case.x87_ulps) {
                e_x87[slot.clone()].copy_from_slice(&n.x87[slot.clone()]);
            }
        }
    }
    let x87_differs = (0..X87_IMAGE).any(|k| {
        let mask = match k {
            2 => fsw_mask as u8,
            3 => (fsw_mask >> 8) as u8,
            _ => 0xff,
        };
        x87_compared(k) && (n.x87[k] ^ e_x87[k]) & mask != 0
    });
    if x87_differs {
        let _ = writeln!(diffs, "  x87: native {}", describe_x87(&n.x87));
        let _ = writeln!(diffs, "       emulated {}", describe_x87(&e.x87));
    }
    let mut emulated_data = emulated.data.clone();
    for &(addr, len) in &case.undefined_mem {
        let off = (addr - DATA) as usize;
        emulated_data[off..off + len].copy_from_slice(&native.data[off..off + len]);
    }
    diffs.push_str(&memory_diff(&native.data, &emulated_data));
    if diffs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "host and emulator disagree on case `{}`\ncode at {CODE:#x}:\n{}initial state:\n{}native outcome {:?}, emulated outcome {:?}\ndifferences:\n{diffs}",
        case.name,
        disassemble(&case.code),
        describe_initial(case),
        native.outcome,
        emulated.outcome,
    ))
}

/// Whether two 80-bit encodings are finite values (normal or denormal) of the same sign
/// at most `ulps` apart (counting representable values, across exponent boundaries).
fn within_ulps(a: u128, b: u128, ulps: u64) -> bool {
    // The position of a value in the ordered sequence of non-negative finite values.
    let index = |v: u128| -> Option<u128> {
        let e = (v >> 64) as u16 & 0x7fff;
        let sig = v as u64;
        match e {
            0 if sig >> 63 == 0 => Some(sig as u128),
            0x7fff => None,
            _ if sig >> 63 == 0 => None,
            _ => Some(((e.max(1) as u128) << 63) | (sig & !(1 << 63)) as u128),
        }
    };
    let sign = |v: u128| v >> 79 & 1;
    match (index(a), index(b)) {
        (Some(x), Some(y)) => sign(a) == sign(b) && x.abs_diff(y) <= ulps as u128,
        _ => false,
    }
}

/// The x87 part of an FXSAVE image, readably.
pub fn describe_x87(x: &[u8; X87_IMAGE]) -> String {
    let w = |k: usize| u16::from_le_bytes([x[k], x[k + 1]]);
    let mut s = format!(
        "FCW {:#06x} FSW {:#06x} (TOP {}) FTW {:#04x} rsvd {:#04x}",
        w(0),
        w(2),
        (w(2) >> 11) & 7,
        x[4],
        x[5]
    );
    for k in 0..8 {
        let mut r = [0u8; 16];
        r.copy_from_slice(&x[32 + 16 * k..48 + 16 * k]);
        let v = u128::from_le_bytes(r);
        let _ = write!(
            s,
            "\n         ST{k} {:04x}_{:016x}",
            (v >> 64) as u16,
            v as u64
        );
        if v >> 80 != 0 {
            let _ = write!(s, " (slot bytes 10..16: {:#x})", v >> 80);
        }
    }
    s
}

fn memory_diff(native: &[u8], emulated: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    let mut ranges = 0;
    while i < native.len() {
        if native[i] == emulated[i] {
            i += 1;
            continue;
        }
        let start = i;
        // Coalesce differences separated by fewer than 8 equal bytes.
        let mut end = i + 1;
        while end < native.len() {
            if native[end] != emulated[end] {
                end += 1;
                continue;
            }
            let next = (end..native.len().min(end + 8)).find(|&j| native[j] != emulated[j]);
            match next {
                Some(j) => end = j + 1,
                None => break,
            }
        }
        ranges += 1;
        if ranges <= 8 {
            let show = (end - start).min(32);
            let _ = writeln!(
                out,
                "  memory {:#x}..{:#x}: native {}, emulated {}{}",
                DATA + start as u64,
                DATA + end as u64,
                hex(&native[start..start + show]),
                hex(&emulated[start..start + show]),
                if show < end - start { " ..." } else { "" }
            );
        }
        i = end;
    }
    if ranges > 8 {
        let _ = writeln!(out, "  ... and {} more differing memory ranges", ranges - 8);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names of the flags set in `f`.
pub fn flag_names(f: u64) -> String {
    const NAMES: [(u64, &str); 11] = [
        (CF, "CF"),
        (PF, "PF"),
        (AF, "AF"),
        (ZF, "ZF"),
        (SF, "SF"),
        (1 << 8, "TF"),
        (1 << 9, "IF"),
        (DF, "DF"),
        (OF, "OF"),
        (1 << 18, "AC"),
        (1 << 21, "ID"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|&(_, n)| n)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(" ")
    }
}

fn describe_initial(case: &Case) -> String {
    let s = &case.init;
    let mut out = String::new();
    for row in 0..4 {
        out.push(' ');
        for col in 0..4 {
            let i = row * 4 + col;
            let _ = write!(out, " {:>3?}={:#018x}", GPR64[i], s.gpr[i]);
        }
        out.push('\n');
    }
    let rf = case.initial_rflags();
    let _ = writeln!(
        out,
        "  RFLAGS={rf:#x} [{}] MXCSR={:#06x} FS.base={:#x} GS.base={:#x}",
        flag_names(rf),
        s.mxcsr,
        s.fs_base,
        s.gs_base
    );
    let defaults = State::new();
    for i in 0..16 {
        if s.xmm[i] != defaults.xmm[i] {
            let _ = writeln!(out, "  XMM{i}={:#034x}", s.xmm[i]);
        }
    }
    if s.x87 != defaults.x87 {
        let _ = writeln!(out, "  x87: {}", describe_x87(&s.x87));
    }
    let _ = writeln!(out, "  data fill seed {:#x}", case.fill_seed);
    for (addr, bytes) in &case.mem {
        let _ = writeln!(out, "  mem {addr:#x}: {}", hex(bytes));
    }
    if case.undefined_gpr.iter().any(|&m| m != 0) {
        let _ = writeln!(out, "  undefined GPR bits: {:x?}", case.undefined_gpr);
    }
    out
}

/// 64-bit FNV-1a: a stable hash for seeds derived from names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Host CPU features a form may need (checked with the CPUID instruction on the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// CMPXCHG16B.
    Cx16,
    /// MOVBE.
    Movbe,
    /// POPCNT.
    Popcnt,
    /// LZCNT (ABM).
    Lzcnt,
    /// BMI1: ANDN, BEXTR, BLSI, BLSMSK, BLSR, TZCNT.
    Bmi1,
    /// BMI2.
    Bmi2,
    /// SSE3.
    Sse3,
    /// SSSE3.
    Ssse3,
    /// SSE4.1.
    Sse41,
    /// SSE4.2.
    Sse42,
    /// PCLMULQDQ.
    Pclmulqdq,
    /// AES-NI.
    Aes,
}

/// Whether the host CPU has `feature` (always false off x86-64).
pub fn host_has(feature: Feature) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        // SAFETY: CPUID is available on every x86-64 processor (the intrinsic is safe on
        // newer compilers, hence the allow).
        #[allow(unused_unsafe)]
        let (l1, l7, e1) = unsafe {
            (
                __cpuid_count(1, 0),
                __cpuid_count(7, 0),
                __cpuid_count(0x8000_0001, 0),
            )
        };
        let bit = |reg: u32, n: u32| reg >> n & 1 != 0;
        match feature {
            Feature::Cx16 => bit(l1.ecx, 13),
            Feature::Movbe => bit(l1.ecx, 22),
            Feature::Popcnt => bit(l1.ecx, 23),
            Feature::Lzcnt => bit(e1.ecx, 5),
            Feature::Bmi1 => bit(l7.ebx, 3),
            Feature::Bmi2 => bit(l7.ebx, 8),
            Feature::Sse3 => bit(l1.ecx, 0),
            Feature::Ssse3 => bit(l1.ecx, 9),
            Feature::Sse41 => bit(l1.ecx, 19),
            Feature::Sse42 => bit(l1.ecx, 20),
            Feature::Pclmulqdq => bit(l1.ecx, 1),
            Feature::Aes => bit(l1.ecx, 25),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// A randomized test of one instruction form: a name, the host features it needs, and a
/// strategy producing its cases.
pub struct Form {
    /// Name (usually the iced `Code`), shown in reports and used to seed the generator.
    pub name: String,
    /// Host features without which the form is skipped (with a message).
    pub requires: Vec<Feature>,
    /// The cases.
    pub cases: BoxedStrategy<Case>,
}

impl Form {
    /// A form needing no special host feature.
    pub fn new(name: impl Into<String>, cases: impl Strategy<Value = Case> + 'static) -> Self {
        Form {
            name: name.into(),
            requires: Vec::new(),
            cases: cases.boxed(),
        }
    }

    /// The same form, needing `features` on the host.
    pub fn requires(mut self, features: &[Feature]) -> Self {
        self.requires.extend_from_slice(features);
        self
    }
}

/// Cases per form: `QUETZAL_DIFF_CASES`, default 256 (about 600 GP forms and 300 SSE
/// forms then run in well under a minute on two cores).
pub fn cases_per_form() -> u32 {
    std::env::var("QUETZAL_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The generator seed for a form: derived from its name, so runs are reproducible, unless
/// `QUETZAL_DIFF_SEED` is set (a number mixed in, or `random`).
fn seed_for(name: &str) -> [u8; 32] {
    let extra = match std::env::var("QUETZAL_DIFF_SEED").ok().as_deref() {
        None => 0,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        Some(v) => v.parse().unwrap_or_else(|_| fnv1a(v.as_bytes())),
    };
    let h = fnv1a(name.as_bytes()) ^ extra;
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(h.rotate_left(13 * i as u32) ^ i as u64).to_le_bytes());
    }
    seed
}

/// Runs every form ([`cases_per_form`] cases each, failures shrunk) and panics with the
/// reports of all failing forms. Forms needing a feature the host lacks are skipped with a
/// message; on hosts that cannot run x86-64 code the whole call is skipped.
///
/// # Panics
///
/// If any form fails.
pub fn run_forms(forms: impl IntoIterator<Item = Form>) {
    if let Some(why) = native::unavailable() {
        eprintln!("host_diff: skipping: {why}");
        return;
    }
    let mut failures = Vec::new();
    let mut ran = 0;
    for form in forms {
        let missing: Vec<Feature> = form
            .requires
            .iter()
            .copied()
            .filter(|&f| !host_has(f))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "host_diff: skipping {}: host CPU lacks {missing:?}",
                form.name
            );
            continue;
        }
        ran += 1;
        let config = Config {
            cases: cases_per_form(),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_for(&form.name));
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&form.cases, |case| {
            try_check(&case).map_err(TestCaseError::fail)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, _)) => failures.push(format!(
                "form {} (minimal failing case):\n{reason}",
                form.name
            )),
            Err(TestError::Abort(reason)) => {
                failures.push(format!("form {} aborted: {reason}", form.name))
            }
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} of {ran} forms disagree with the host CPU:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

/// Proptest strategies for operands, with the edge values forced in.
pub mod gen {
    use proptest::prelude::*;
    use proptest::sample::select;

    /// Values interesting at some width: zero, one, all ones, sign boundaries of every
    /// width, powers of two around them.
    pub const INT_EDGES: [u64; 26] = [
        0,
        1,
        2,
        3,
        0x7f,
        0x80,
        0x81,
        0xfe,
        0xff,
        0x100,
        0x7fff,
        0x8000,
        0x8001,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0x8000_0000,
        0x8000_0001,
        0xffff_ffff,
        0x1_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        0x8000_0000_0000_0001,
        0xffff_ffff_ffff_fffe,
        u64::MAX,
        0x5555_5555_5555_5555,
    ];

    /// A value whose low `bits` bits are an edge value (or a sign-extended/negated one,
    /// a single bit or its complement) or uniformly random, and whose upper bits are
    /// random (so partial-register writes that clobber them show).
    pub fn int(bits: u32) -> impl Strategy<Value = u64> + Clone {
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let low = prop_oneof![
            3 => select(&INT_EDGES[..]),
            1 => select(&INT_EDGES[..]).prop_map(|v| v.wrapping_neg()),
            1 => (0..64u32).prop_map(|b| 1u64 << b),
            1 => (0..64u32).prop_map(|b| !(1u64 << b)),
            4 => any::<u64>(),
        ];
        (low, any::<u64>()).prop_map(move |(v, upper)| (v & mask) | (upper & !mask))
    }

    /// A value edgy at a random width (8, 16, 32 or 64 bits): good for registers whose
    /// width the instruction decides.
    pub fn int_any_width() -> impl Strategy<Value = u64> + Clone {
        prop_oneof![int(8), int(16), int(32), int(64)]
    }

    /// A shift or rotate count for a `bits`-wide operand: 0, 1, width-1, width, width+1,
    /// the masking boundaries, or any byte.
    pub fn shift_count(bits: u32) -> impl Strategy<Value = u8> + Clone {
        let b = bits as u8;
        prop_oneof![
            3 => select(vec![0u8, 1, 2, b - 1, b, b + 1, 9, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255]),
            2 => any::<u8>(),
        ]
    }

    /// RFLAGS for a case: random arithmetic flags and DF.
    pub fn rflags() -> impl Strategy<Value = u64> + Clone {
        any::<u64>().prop_map(|v| (v & super::SETTABLE_FLAGS) | super::FIXED_FLAGS)
    }

    /// Single-precision values that matter: zeros, infinities, quiet and signalling NaNs with
    /// payloads, denormals, the normal range's ends, values that round or convert at the
    /// edges.
    pub const F32_EDGES: [u32; 34] = [
        0x0000_0000,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0000,
        0x7fc0_1234,
        0xffff_ffff,
        0x7f80_0001,
        0xff80_0001,
        0x7fa0_0000,
        0xffbf_ffff,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
        0x807f_ffff,
        0x0040_0000,
        0x0080_0000,
        0x8080_0000,
        0x0080_0001,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x3f80_0000,
        0xbf80_0000,
        0x3f00_0000,
        0x3fc0_0000,
        0x4020_0000,
        0xbf00_0000,
        0x4f00_0000,
        0xcf00_0000,
        0x5f00_0000,
        0xdf00_0000,
        0x4b00_0001,
        0x3eff_ffff,
    ];

    /// Double-precision counterparts of [`F32_EDGES`].
    pub const F64_EDGES: [u64; 32] = [
        0x0000_0000_0000_0000,
        0x8000_0000_0000_0000,
        0x7ff0_0000_0000_0000,
        0xfff0_0000_0000_0000,
        0x7ff8_0000_0000_0000,
        0xfff8_0000_0000_0000,
        0x7ff8_0000_0000_1234,
        0xffff_ffff_ffff_ffff,
        0x7ff0_0000_0000_0001,
        0xfff0_0000_0000_0001,
        0x7ff4_0000_0000_0000,
        0xfff7_ffff_ffff_ffff,
        0x0000_0000_0000_0001,
        0x8000_0000_0000_0001,
        0x000f_ffff_ffff_ffff,
        0x800f_ffff_ffff_ffff,
        0x0010_0000_0000_0000,
        0x8010_0000_0000_0000,
        0x7fef_ffff_ffff_ffff,
        0xffef_ffff_ffff_ffff,
        0x3ff0_0000_0000_0000,
        0xbff0_0000_0000_0000,
        0x3fe0_0000_0000_0000,
        0x3ff8_0000_0000_0000,
        0x4004_0000_0000_0000,
        0x41e0_0000_0000_0000,
        0xc1e0_0000_0000_0000,
        0x43e0_0000_0000_0000,
        0xc3e0_0000_0000_0000,
        0x41df_ffff_ffc0_0000,
        0x3810_0000_0000_0000,
        0x47ef_ffff_e000_0000,
    ];

    /// Single-precision bit patterns: ±0, ±inf, quiet and signalling NaNs of both signs
    /// (with payloads), denormals, min/max normals, values that round interestingly, and
    /// random bits.
    pub fn f32_bits() -> impl Strategy<Value = u32> + Clone {
        prop_oneof![
            3 => select(&F32_EDGES[..]),
            // "Ordinary" numbers of modest magnitude, either sign.
            2 => (any::<bool>(), 0x3000_0000u32..0x5000_0000).prop_map(|(s, m)| m | (s as u32) << 31),
            2 => any::<u32>(),
        ]
    }

    /// Double-precision bit patterns, as [`f32_bits`].
    pub fn f64_bits() -> impl Strategy<Value = u64> + Clone {
        prop_oneof![
            3 => select(&F64_EDGES[..]),
            2 => (any::<bool>(), 0x3c00_0000_0000_0000u64..0x4400_0000_0000_0000)
                .prop_map(|(s, m)| m | (s as u64) << 63),
            2 => any::<u64>(),
        ]
    }

    /// An XMM value of four single-precision lanes from [`f32_bits`].
    pub fn xmm_f32x4() -> impl Strategy<Value = u128> + Clone {
        proptest::array::uniform4(f32_bits()).prop_map(|l| {
            l.iter()
                .enumerate()
                .fold(0u128, |acc, (i, &v)| acc | (v as u128) << (32 * i))
        })
    }

    /// An XMM value of two double-precision lanes from [`f64_bits`].
    pub fn xmm_f64x2() -> impl Strategy<Value = u128> + Clone {
        (f64_bits(), f64_bits()).prop_map(|(a, b)| a as u128 | (b as u128) << 64)
    }

    /// An XMM value for integer lanes: edge values in each 64-bit half, or random bits.
    pub fn xmm_int() -> impl Strategy<Value = u128> + Clone {
        prop_oneof![
            (int_any_width(), int_any_width()).prop_map(|(a, b)| a as u128 | (b as u128) << 64),
            any::<u128>(),
        ]
    }

    /// Any XMM value: float lanes of either width, integer lanes, or random bits.
    pub fn xmm_any() -> impl Strategy<Value = u128> + Clone {
        prop_oneof![xmm_f32x4(), xmm_f64x2(), xmm_int()]
    }

    /// MXCSR with every exception masked: random rounding mode, FTZ, DAZ and sticky
    /// status flags.
    pub fn mxcsr_masked() -> impl Strategy<Value = u32> + Clone {
        prop_oneof![
            2 => Just(0x1f80u32),
            3 => any::<u32>().prop_map(|v| 0x1f80 | (v & (0x3f | 1 << 6 | 3 << 13 | 1 << 15))),
        ]
    }

    /// MXCSR that may unmask exceptions (so #XM can happen).
    pub fn mxcsr_any() -> impl Strategy<Value = u32> + Clone {
        prop_oneof![
            3 => mxcsr_masked(),
            1 => any::<u32>().prop_map(|v| v & 0xffff),
        ]
    }
}

/// The native side: a forked server process that runs cases on the host CPU.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod native {
    use std::sync::{Mutex, OnceLock};

    use iced_x86::code_asm::*;
    use iced_x86::BlockEncoderOptions;

    use super::{
        Case, Outcome, Snapshot, State, CODE, CODE_MAX, DATA, DATA_SIZE, NATIVE_TIMEOUT, X87_IMAGE,
    };

    /// The mailbox shared by the parent and the server child (fixed address, below
    /// 2 GiB so the stub addresses it with `[disp32]`).
    const MBOX: u64 = 0x3002_0000;
    /// The child's private code mapping: the test page at [`CODE`], then the stub page.
    const STUB: u64 = CODE + 0x1000;
    const CODE_MAP_SIZE: usize = 0x2000;
    const MAP_FIXED_NOREPLACE: libc::c_int = 0x10_0000;
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_SET_GS: i64 = 0x1001;
    const ARCH_SET_FS: i64 = 0x1002;
    const ARCH_GET_FS: i64 = 0x1003;
    const ARCH_GET_GS: i64 = 0x1004;

    /// What the parent and child exchange. Inputs are written by the parent before a
    /// run, outputs by the stub (or the fault handler) during it.
    #[repr(C, align(4096))]
    struct Mailbox {
        in_gpr: [u64; 16],
        in_rflags: u64,
        in_fs: u64,
        in_gs: u64,
        in_mxcsr: u32,
        /// 1 while the test bytes run: a fault then is the case's, otherwise the stub's.
        in_test: u32,
        in_xmm: [u128; 16],
        out_gpr: [u64; 16],
        out_rflags: u64,
        out_rip: u64,
        out_mxcsr: u64,
        fault_signo: u64,
        fault_trapno: u64,
        fault_err: u64,
        fault_addr: u64,
        out_xmm: [u128; 16],
        /// RBX, RBP, R12-R15, RSP and RFLAGS of the server while the case runs.
        host_gpr: [u64; 8],
        host_fs: u64,
        host_gs: u64,
        code_len: u64,
        fx: FxArea,
        in_fx: FxArea,
        out_fx: FxArea,
        scratch: [u64; 32],
        code: [u8; CODE_MAX],
    }

    #[repr(C, align(64))]
    struct FxArea([u8; 512]);

    const MBOX_SIZE: usize = std::mem::size_of::<Mailbox>().next_multiple_of(4096);

    macro_rules! mb {
        ($field:ident) => {
            MBOX + std::mem::offset_of!(Mailbox, $field) as u64
        };
    }

    fn mailbox() -> *mut Mailbox {
        MBOX as *mut Mailbox
    }

    /// The assembled stub and the addresses of its entry points.
    struct Stub {
        bytes: Vec<u8>,
        epilogue: u64,
        resume: u64,
    }

    fn scratch_top() -> u64 {
        mb!(scratch) + 8 * 32
    }

    fn build_stub() -> Result<Stub, IcedError> {
        let gprs = [
            rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
        ];
        let xmms = [
            xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
            xmm14, xmm15,
        ];
        let saved = [rbx, rbp, r12, r13, r14, r15, rsp];
        let mut a = CodeAssembler::new(64)?;
        let mut epilogue = a.create_label();
        let mut resume = a.create_label();
        // Prologue: called with the C ABI from the server loop.
        for (i, &r) in saved.iter().enumerate() {
            a.mov(qword_ptr(mb!(host_gpr) + 8 * i as u64), r)?;
        }
        a.pushfq()?;
        a.pop(qword_ptr(mb!(host_gpr) + 8 * 7))?;
        a.fxsave64(ptr(mb!(fx)))?;
        a.fxrstor64(ptr(mb!(in_fx)))?;
        for (code, field) in [(ARCH_SET_FS, mb!(in_fs)), (ARCH_SET_GS, mb!(in_gs))] {
            a.mov(eax, SYS_ARCH_PRCTL as u32)?;
            a.mov(edi, code as u32)?;
            a.mov(rsi, qword_ptr(field))?;
            a.syscall()?;
        }
        a.ldmxcsr(dword_ptr(mb!(in_mxcsr)))?;
        for (i, &x) in xmms.iter().enumerate() {
            a.movups(x, xmmword_ptr(mb!(in_xmm) + 16 * i as u64))?;
        }
        a.mov(rsp, scratch_top())?;
        a.push(qword_ptr(mb!(in_rflags)))?;
        a.popfq()?;
        for (i, &r) in gprs.iter().enumerate() {
            if i != 4 {
                a.mov(r, qword_ptr(mb!(in_gpr) + 8 * i as u64))?;
            }
        }
        a.mov(rsp, qword_ptr(mb!(in_gpr) + 8 * 4))?;
        a.mov(dword_ptr(mb!(in_test)), 1u32)?;
        a.jmp(CODE)?;
        // Epilogue: reached by the jump placed after the test bytes. Nothing before the
        // stores may touch a register or a flag.
        a.set_label(&mut epilogue)?;
        a.mov(dword_ptr(mb!(in_test)), 0u32)?;
        for (i, &r) in gprs.iter().enumerate() {
            a.mov(qword_ptr(mb!(out_gpr) + 8 * i as u64), r)?;
        }
        a.mov(rsp, scratch_top())?;
        a.pushfq()?;
        a.pop(qword_ptr(mb!(out_rflags)))?;
        a.stmxcsr(dword_ptr(mb!(out_mxcsr)))?;
        a.fxsave64(ptr(mb!(out_fx)))?;
        for (i, &x) in xmms.iter().enumerate() {
            a.movups(xmmword_ptr(mb!(out_xmm) + 16 * i as u64), x)?;
        }
        // The fault handler resumes here (with RSP on the scratch stack) after storing
        // the state at the fault.
        a.set_label(&mut resume)?;
        for (code, field) in [(ARCH_SET_FS, mb!(host_fs)), (ARCH_SET_GS, mb!(host_gs))] {
            a.mov(eax, SYS_ARCH_PRCTL as u32)?;
            a.mov(edi, code as u32)?;
            a.mov(rsi, qword_ptr(field))?;
            a.syscall()?;
        }
        a.fxrstor64(ptr(mb!(fx)))?;
        a.push(qword_ptr(mb!(host_gpr) + 8 * 7))?;
        a.popfq()?;
        for (i, &r) in saved.iter().enumerate() {
            a.mov(r, qword_ptr(mb!(host_gpr) + 8 * i as u64))?;
        }
        a.ret()?;
        let result =
            a.assemble_options(STUB, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        Ok(Stub {
            epilogue: result.label_ip(&epilogue)?,
            resume: result.label_ip(&resume)?,
            bytes: result.inner.code_buffer,
        })
    }

    fn stub() -> &'static Stub {
        static STUB_CODE: OnceLock<Stub> = OnceLock::new();
        STUB_CODE.get_or_init(|| build_stub().expect("stub assembles"))
    }

    /// Maps the data area and the mailbox, shared with every future child.
    fn shared_memory() -> Result<(), String> {
        static MAPPED: OnceLock<Result<(), String>> = OnceLock::new();
        MAPPED
            .get_or_init(|| {
                for (addr, size) in [(DATA, DATA_SIZE), (MBOX, MBOX_SIZE)] {
                    // SAFETY: a fresh anonymous mapping at an address nothing else uses
                    // (MAP_FIXED_NOREPLACE fails rather than replace an existing one).
                    let p = unsafe {
                        libc::mmap(
                            addr as *mut libc::c_void,
                            size,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED | libc::MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                            -1,
                            0,
                        )
                    };
                    if p as u64 != addr {
                        return Err(format!(
                            "cannot map {size:#x} bytes at {addr:#x}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
                Ok(())
            })
            .clone()
    }

    /// Why native runs cannot happen here, if they cannot.
    pub(super) fn unavailable() -> Option<String> {
        shared_memory().err()
    }

    struct Server {
        pid: libc::pid_t,
        request: libc::c_int,
        response: libc::c_int,
    }

    impl Server {
        fn kill(self) {
            // SAFETY: plain syscalls on our own child and our own descriptors.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
                libc::close(self.request);
                libc::close(self.response);
            }
        }
    }

    static SERVER: Mutex<Option<Server>> = Mutex::new(None);

    fn spawn() -> Result<Server, String> {
        shared_memory()?;
        let stub = stub();
        let mut req = [0; 2];
        let mut resp = [0; 2];
        // SAFETY: pipe2 writes two descriptors into each array.
        let ok = unsafe {
            libc::pipe2(req.as_mut_ptr(), libc::O_CLOEXEC) == 0
                && libc::pipe2(resp.as_mut_ptr(), libc::O_CLOEXEC) == 0
        };
        if !ok {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the child only makes system calls and touches memory that fork copied
        // or shared; it never allocates, locks or unwinds (other threads of this process
        // do not exist in it), and it leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: we are the freshly forked child; see above. Closing the parent's ends
            // makes a dead parent (closed request pipe) end the child's read loop.
            unsafe {
                libc::close(req[1]);
                libc::close(resp[0]);
                child_main(req[0], resp[1], stub)
            }
        }
        // SAFETY: closing the child's ends in the parent.
        unsafe {
            libc::close(req[0]);
            libc::close(resp[1]);
        }
        Ok(Server {
            pid,
            request: req[1],
            response: resp[0],
        })
    }

    /// The server loop. Never returns.
    ///
    /// # Safety
    ///
    /// Only in a freshly forked child of a process that mapped the shared memory.
    unsafe fn child_main(request: libc::c_int, response: libc::c_int, stub: &Stub) -> ! {
        // SAFETY: (whole body) system calls with valid arguments, and writes to memory
        // this process owns: the mappings made here and the shared mailbox.
        unsafe {
            // No PR_SET_PDEATHSIG: it fires when the forking *thread* ends, and test
            // threads come and go. The child leaves when the request pipe closes instead.
            let code = libc::mmap(
                CODE as *mut libc::c_void,
                CODE_MAP_SIZE,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if code as u64 != CODE {
                libc::_exit(90);
            }
            std::ptr::copy_nonoverlapping(stub.bytes.as_ptr(), STUB as *mut u8, stub.bytes.len());
            let alt_size = 1 << 16;
            let alt = libc::mmap(
                std::ptr::null_mut(),
                alt_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if alt == libc::MAP_FAILED {
                libc::_exit(91);
            }
            let stack = libc::stack_t {
                ss_sp: alt,
                ss_flags: 0,
                ss_size: alt_size,
            };
            libc::sigaltstack(&stack, std::ptr::null_mut());
            RESUME_AT = stub.resume;
            for sig in [
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGILL,
                libc::SIGTRAP,
            ] {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_fault as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
            let mb = mailbox();
            let mut base = 0u64;
            libc::syscall(SYS_ARCH_PRCTL, ARCH_GET_FS, &mut base as *mut u64);
            (*mb).host_fs = base;
            base = 0;
            libc::syscall(SYS_ARCH_PRCTL, ARCH_GET_GS, &mut base as *mut u64);
            (*mb).host_gs = base;
            let entry: extern "C" fn() = std::mem::transmute(STUB as usize);
            let mut byte = 0u8;
            loop {
                if libc::read(request, (&mut byte as *mut u8).cast(), 1) != 1 {
                    libc::_exit(0);
                }
                let len = ((*mb).code_len as usize).min(CODE_MAX);
                std::ptr::copy_nonoverlapping((*mb).code.as_ptr(), CODE as *mut u8, len);
                // jmp rel32 to the epilogue, right after the test bytes.
                let jmp_at = CODE + len as u64;
                let rel = stub.epilogue.wrapping_sub(jmp_at + 5) as u32;
                let p = jmp_at as *mut u8;
                *p = 0xe9;
                std::ptr::copy_nonoverlapping(rel.to_le_bytes().as_ptr(), p.add(1), 4);
                (*mb).fault_signo = 0;
                entry();
                if libc::write(response, (&byte as *const u8).cast(), 1) != 1 {
                    libc::_exit(0);
                }
            }
        }
    }

    /// Where the fault handler sends the stub (set once in the child before any case).
    static mut RESUME_AT: u64 = 0;

    const GREG_OF_GPR: [libc::c_int; 16] = [
        libc::REG_RAX,
        libc::REG_RCX,
        libc::REG_RDX,
        libc::REG_RBX,
        libc::REG_RSP,
        libc::REG_RBP,
        libc::REG_RSI,
        libc::REG_RDI,
        libc::REG_R8,
        libc::REG_R9,
        libc::REG_R10,
        libc::REG_R11,
        libc::REG_R12,
        libc::REG_R13,
        libc::REG_R14,
        libc::REG_R15,
    ];

    /// Records a fault in the test bytes and resumes the stub's restore path. It touches
    /// only the mailbox and the signal context: FS may hold the case's base, so nothing
    /// here may use thread-local storage (no libc calls).
    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo and ucontext; the mailbox is mapped.
        unsafe {
            let mb = mailbox();
            let uc = ctx.cast::<libc::ucontext_t>();
            let g = &mut (*uc).uc_mcontext.gregs;
            (*mb).fault_signo = sig as u64;
            (*mb).fault_trapno = g[libc::REG_TRAPNO as usize] as u64;
            (*mb).fault_err = g[libc::REG_ERR as usize] as u64;
            (*mb).fault_addr = (*info).si_addr() as u64;
            (*mb).out_rip = g[libc::REG_RIP as usize] as u64;
            if std::ptr::read_volatile(&(*mb).in_test) != 1 {
                // The stub itself faulted: a harness bug. Die; the parent reports it.
                std::arch::asm!("syscall", in("rax") 231, in("rdi") 100 + sig, options(noreturn));
            }
            (*mb).in_test = 0;
            for (i, &r) in GREG_OF_GPR.iter().enumerate() {
                (*mb).out_gpr[i] = g[r as usize] as u64;
            }
            (*mb).out_rflags = g[libc::REG_EFL as usize] as u64;
            let fp = (*uc).uc_mcontext.fpregs;
            if !fp.is_null() {
                std::ptr::copy_nonoverlapping(fp.cast::<u8>(), (*mb).out_fx.0.as_mut_ptr(), 512);
                (*mb).out_mxcsr = (*fp).mxcsr as u64;
                for i in 0..16 {
                    let e = (*fp)._xmm[i].element;
                    (*mb).out_xmm[i] = e
                        .iter()
                        .enumerate()
                        .fold(0u128, |acc, (k, &w)| acc | (w as u128) << (32 * k));
                }
            }
            g[libc::REG_RIP as usize] = RESUME_AT as i64;
            g[libc::REG_RSP as usize] = scratch_top() as i64;
        }
    }

    /// Runs `case` natively over `data`.
    pub(super) fn run(case: &Case, data: &[u8]) -> Result<Snapshot, String> {
        let mut guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(spawn()?);
        }
        let server = guard.as_ref().expect("server");
        let mb = mailbox();
        // SAFETY: the mailbox and data area are mapped (spawn checked) and only this
        // thread (holding the lock) and the idle child touch them.
        unsafe {
            (*mb).in_gpr = case.init.gpr;
            (*mb).in_rflags = case.initial_rflags();
            (*mb).in_fs = case.init.fs_base;
            (*mb).in_gs = case.init.gs_base;
            (*mb).in_mxcsr = case.init.mxcsr;
            (*mb).in_xmm = case.init.xmm;
            (*mb).in_fx.0 = case.init.fx_image();
            (*mb).in_test = 0;
            (&mut (*mb).code)[..case.code.len()].copy_from_slice(&case.code);
            (*mb).code_len = case.code.len() as u64;
            std::ptr::copy_nonoverlapping(data.as_ptr(), DATA as *mut u8, DATA_SIZE);
        }
        let byte = 1u8;
        // SAFETY: writing one byte from a live buffer to our pipe.
        let sent = unsafe { libc::write(server.request, (&byte as *const u8).cast(), 1) };
        let mut pfd = libc::pollfd {
            fd: server.response,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor.
        let ready =
            sent == 1 && unsafe { libc::poll(&mut pfd, 1, NATIVE_TIMEOUT.as_millis() as i32) } == 1;
        let mut reply = 0u8;
        // SAFETY: reading one byte into a live buffer.
        let answered =
            ready && unsafe { libc::read(server.response, (&mut reply as *mut u8).cast(), 1) } == 1;
        if !answered {
            let server = guard.take().expect("server");
            let pid = server.pid;
            let mut status = 0;
            // SAFETY: reaping our own child (WNOHANG: it may still be running).
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
            server.kill();
            if sent == 1 && !ready && !reaped {
                return Ok(snapshot(case, Outcome::Hang));
            }
            // SAFETY: the mailbox is mapped.
            let (signo, rip) = unsafe { ((*mb).fault_signo, (*mb).out_rip) };
            let how = if reaped && libc::WIFSIGNALED(status) {
                format!("was killed by signal {}", libc::WTERMSIG(status))
            } else if reaped {
                format!("exited with status {}", libc::WEXITSTATUS(status))
            } else {
                "stopped answering".to_string()
            };
            return Err(format!(
                "native run of `{}` failed: the server child {how} (last signal {signo} at {rip:#x}); harness bug?\ncode:\n{}",
                case.name,
                super::disassemble(&case.code)
            ));
        }
        // SAFETY: the mailbox is mapped.
        let signo = unsafe { (*mb).fault_signo };
        let outcome = if signo == 0 {
            Outcome::Completed
        } else {
            // SAFETY: the mailbox is mapped.
            let (trapno, err, rip) =
                unsafe { ((*mb).fault_trapno, (*mb).fault_err, (*mb).out_rip) };
            let has_code = matches!(trapno, 8 | 10..=14 | 17);
            Outcome::Exception {
                vector: trapno as u8,
                error_code: has_code.then_some(err as u32),
                rip,
            }
        };
        Ok(snapshot(case, outcome))
    }

    fn snapshot(case: &Case, outcome: Outcome) -> Snapshot {
        let mb = mailbox();
        let mut state = State::new();
        let mut data = vec![0u8; DATA_SIZE];
        // SAFETY: the mailbox and data area are mapped and the child is idle or gone.
        unsafe {
            state.gpr = (*mb).out_gpr;
            state.rflags = (*mb).out_rflags;
            state.xmm = (*mb).out_xmm;
            state.mxcsr = (*mb).out_mxcsr as u32;
            state.x87.copy_from_slice(&(&(*mb).out_fx.0)[..X87_IMAGE]);
            std::ptr::copy_nonoverlapping(DATA as *const u8, data.as_mut_ptr(), DATA_SIZE);
        }
        state.fs_base = case.init.fs_base;
        state.gs_base = case.init.gs_base;
        Snapshot {
            outcome,
            state,
            data,
        }
    }
}

/// Native runs need an x86-64 Linux host.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod native {
    use super::{Case, Snapshot};

    pub(super) fn unavailable() -> Option<String> {
        Some("native runs need an x86-64 Linux host".into())
    }

    pub(super) fn run(_: &Case, _: &[u8]) -> Result<Snapshot, String> {
        Err("native runs need an x86-64 Linux host".into())
    }
}
