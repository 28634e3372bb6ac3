//! The second tier: hot blocks compiled to host code with Cranelift.
//!
//! The interpreter ([`crate::translate`], [`crate::exec`]) stays the portable baseline and
//! the reference for every instruction's meaning. A block that the run loop has entered
//! [`JitConfig::threshold`] times is handed to the compiler by [`Jit::enter`], which
//! re-decodes its bytes with iced-x86 (checking that they still match the block's
//! records) and lowers each instruction to Cranelift IR (`lower`):
//!
//! * **Registers** live in SSA values for the whole block: each is loaded from
//!   [`Cpu::regs`] at its first use and stored back only where the state must be exact
//!   (block exits and the cold paths described below).
//! * **Memory** accesses inline the soft-TLB hit path: one load of the entry's tag, one
//!   compare, one add of its addend. A miss calls back into the `Mmu` (page walk, MMIO,
//!   faults, writes to pages that hold translated code).
//! * **Arithmetic flags** stay lazy as in the interpreter, but at compile time: the last
//!   flag-producing operation's operands are SSA values, a Jcc after a CMP becomes one
//!   host compare-and-branch, and [`crate::flags::LazyFlags`] is written once, at exit.
//!   A backward liveness pass over the block's flag reads and writes lets instructions whose
//!   flag results are overwritten before being read (the rotates and shifts of hashing
//!   code, say) skip their flag work entirely.
//! * **Everything else** calls the instruction's interpreter handler through its record:
//!   registers and flags are written back first and reloaded after. So every block can be
//!   compiled, and the lowering only has to cover the instructions that matter for speed.
//!
//! **Regions.** When the hot block starts a loop, [`Jit::enter`] hands the compiler the
//! hot blocks of the loop with it (a [`Job`] with several [`Member`]s; they must lie on
//! the head's physical page). A branch from a member to a member's start is a jump
//! inside the function: registers the members use are loaded once at entry and stay in
//! SSA values all the way round, the flag liveness runs across the members (a member
//! whose start may read flags gets them written to the `Cpu` on the way in; others get
//! nothing), and going round checks only fuel, pending events, written code and, after
//! a handler call, the changes the run loop must see. Exits from any member link as a
//! block's do, each member with its own two link slots.
//!
//! **Links.** Exits to fixed addresses return the next block's code through a
//! [`LinkSlot`]; returns and indirect JMP/CALL look their target up in the jump cache
//! (`JitCtx::jump_cache`) with the same checks. [`run_compiled`] calls whatever comes
//! back, so hot code rarely returns to the run loop.
//!
//! Exits are precise: a fault leaves registers as they were before the faulting
//! instruction and returns its index, and the run loop delivers it exactly as for an
//! interpreted block. One deviation: flags skipped as dead are not recomputed when a
//! later instruction of the block faults (or, in a region, when the run loop takes an
//! interrupt between members), so the RFLAGS image pushed may hold stale
//! CF/OF/SF/ZF/AF/PF bits that the interrupted code would have overwritten without
//! reading them.
//!
//! Compiling happens on a background thread by default ([`JitConfig::background`]): the
//! vCPU keeps interpreting a hot block until its code is ready, so compile time (Cranelift
//! is slower to compile than an interpreter is to translate) costs the vCPU nothing on a
//! host with a core to spare. Results are installed by block id, so a block invalidated
//! meanwhile simply never receives its code.
//!
//! Compiled code is freed all at once: blocks invalidated by writes to their pages leave
//! their code behind until [`Jit::code_bytes`] passes [`JitConfig::max_code_bytes`], when
//! every compiled block is reset and the whole code region freed (results compiled before
//! that carry an older epoch and are dropped on arrival).

mod arena;
mod helpers;
mod lower;

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{types, AbiParam, Signature};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use iced_x86::Instruction;

use crate::cache::CodeCache;
use crate::cpu::Cpu;
use crate::insn::Insn;

pub use helpers::JitCtx;

/// A compiled block: `f(cpu, ctx)` runs it, adds how many of its instructions completed
/// from `ctx.fuel`, and returns the next block's code when it may go straight on
/// (a direct link, see [`LinkSlot`]), else 0. If `ctx.trap` is set on return, the
/// instruction whose record is `ctx.trap_insn` raised it (with no effect, for faults)
/// and the run loop settles it as for interpreted code.
pub type CompiledBlock = unsafe extern "C" fn(*mut Cpu, *mut JitCtx) -> u64;

/// Where a compiled block's exit to a fixed address finds the compiled code of the block
/// there (QEMU calls this chaining). A block has one slot per such exit (a JMP, CALL or
/// fall-through has one, a Jcc two). The run loop fills a slot when the exit was taken
/// and the next block turned out to be compiled; after that the exit returns that code
/// directly, without the run loop, if `generation` is the code cache's current link
/// generation (no block was dropped and no shortcut flushed since), the fetch TLB still
/// maps the target's page to `page`, no event is pending, no fetch-mapping, privilege
/// or interrupt-shadow change is waiting for the run loop, nothing stored into
/// translated code, and `ctx.fuel` is not spent.
///
/// An exit whose target lies on the virtual page the block starts on skips the fetch-TLB
/// check: the block itself was entered through that page's current mapping, so the
/// target is where it was if it is on the same physical page, which the run loop
/// ensures before filling such a slot ([`LinkSlot::fixed_page`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LinkSlot {
    /// The target block's code.
    pub code: u64,
    /// The link generation the slot was filled in (0: never filled).
    pub generation: u64,
    /// The physical page the target's first byte was fetched from.
    pub page: u64,
    /// For an exit that skips the fetch-TLB check, the physical page the block starts
    /// on: the slot may only be filled with a target fetched from there. `u64::MAX`
    /// for exits that check.
    pub fixed_page: u64,
}

impl Default for LinkSlot {
    fn default() -> Self {
        LinkSlot {
            code: 0,
            generation: 0,
            page: 0,
            fixed_page: u64::MAX,
        }
    }
}

impl LinkSlot {
    /// Offset of [`LinkSlot::code`].
    pub const CODE_OFFSET: i32 = std::mem::offset_of!(LinkSlot, code) as i32;
    /// Offset of [`LinkSlot::generation`].
    pub const GENERATION_OFFSET: i32 = std::mem::offset_of!(LinkSlot, generation) as i32;
    /// Offset of [`LinkSlot::page`].
    pub const PAGE_OFFSET: i32 = std::mem::offset_of!(LinkSlot, page) as i32;
}

/// A compiled block's link slots, two per guest block its code holds (see [`Job`]), at a
/// fixed address for as long as the block exists (compiled code holds that address; the
/// run loop writes the slots through it).
#[derive(Debug)]
pub struct LinkSlots {
    first: std::ptr::NonNull<LinkSlot>,
    len: usize,
}

// SAFETY: the slots are plain integers, written only by the vCPU thread that owns the
// code cache (through raw pointers while no reference to them exists).
unsafe impl Send for LinkSlots {}
// SAFETY: as for `Send`: sharing a `&LinkSlots` only shares the address.
unsafe impl Sync for LinkSlots {}

impl LinkSlots {
    fn new(len: usize) -> Self {
        let boxed: Box<[LinkSlot]> = vec![LinkSlot::default(); len.max(1)].into_boxed_slice();
        let len = boxed.len();
        let first = std::ptr::NonNull::from(Box::leak(boxed)).cast::<LinkSlot>();
        LinkSlots { first, len }
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none (never: at least one is allocated).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of slot `i`.
    pub fn slot(&self, i: usize) -> *mut LinkSlot {
        assert!(i < self.len, "link slot {i} of {}", self.len);
        // SAFETY: in bounds of the allocation.
        unsafe { self.first.as_ptr().add(i) }
    }
}

impl Drop for LinkSlots {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.first.as_ptr(), self.len);
        // SAFETY: allocated by `Box::leak` of a boxed slice of `len` in `new`, freed once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Where a block stands with the compiler.
#[derive(Clone, Copy, Debug, Default)]
pub enum BlockTier {
    /// Interpreted and never entered as a whole yet.
    #[default]
    Cold,
    /// Entered whole this many times.
    Warm(u32),
    /// Handed to the background compiler; interpreted until the code arrives.
    Queued,
    /// Compiled.
    Compiled(CompiledBlock),
    /// Not compilable (mode or bytes the compiler does not take); stays interpreted.
    Interpreted,
}

/// Settings of the compiling tier.
#[derive(Clone, Copy, Debug)]
pub struct JitConfig {
    /// Whether hot blocks are compiled at all.
    pub enabled: bool,
    /// Entries after which a block is compiled (1 compiles every block on first entry).
    pub threshold: u32,
    /// Compile on a background thread (the default) rather than on the vCPU's thread
    /// at the moment the block gets hot (deterministic: what the test suites use).
    pub background: bool,
    /// Compiled code kept before everything is dropped and compiling starts afresh.
    pub max_code_bytes: usize,
    /// Most guest blocks compiled into one region (1: every block on its own).
    pub max_region_blocks: usize,
}

/// Most guest instructions in one region (Cranelift's compile time grows faster than
/// the code it is given).
const MAX_REGION_INSNS: usize = 256;

impl Default for JitConfig {
    fn default() -> Self {
        JitConfig {
            enabled: true,
            // Measured on Debian's boot and the compare-qemu workloads. Before regions
            // and direct links, 300 was best (30 compiled too much cold code, 1000 left
            // hot loops interpreted too long). With regions the boot is bound by compile
            // time: 300 boots in 2.85 s, 1000 in 2.48 s, 2000 in 2.30 s, while the
            // workloads are the same at all three (within noise); 1000 keeps medium-hot
            // code compiled sooner.
            threshold: 1000,
            background: true,
            max_code_bytes: 64 << 20,
            max_region_blocks: 8,
        }
    }
}

impl JitConfig {
    /// The default configuration, adjusted by the `QUETZAL_JIT` environment variable:
    /// `off` (or `0`) disables compiling; a number N compiles a block on the vCPU thread
    /// at its Nth entry (`QUETZAL_JIT=1` runs every block compiled, which is how the test
    /// suites exercise this tier); `bg:N` sets the threshold of background compiling.
    /// `QUETZAL_JIT_REGION=N` sets [`JitConfig::max_region_blocks`].
    pub fn from_env() -> Self {
        let mut config = JitConfig::default();
        if let Some(n) = std::env::var("QUETZAL_JIT_REGION")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            config.max_region_blocks = n.max(1);
        }
        if let Ok(v) = std::env::var("QUETZAL_JIT") {
            let v = v.trim();
            if v == "off" || v == "0" {
                config.enabled = false;
            } else if let Some(n) = v.strip_prefix("bg:") {
                if let Ok(t) = n.parse::<u32>() {
                    config.threshold = t.max(1);
                }
            } else if let Ok(t) = v.parse::<u32>() {
                config.threshold = t.max(1);
                config.background = false;
            }
        }
        config
    }
}

/// Counters for the embedder and for profiling.
#[derive(Clone, Copy, Debug, Default)]
pub struct JitStats {
    /// Blocks compiled.
    pub compiled: u64,
    /// Instructions in compiled blocks lowered to host code.
    pub native_insns: u64,
    /// Instructions in compiled blocks left to their interpreter handler.
    pub fallback_insns: u64,
    /// Blocks the compiler declined.
    pub declined: u64,
    /// Times all compiled code was dropped.
    pub flushes: u64,
}

/// One guest block of a [`Job`]: what the lowering needs of it, shared rather than
/// borrowed so that it can cross to the compiler thread.
pub struct Member {
    /// The block's records (compiled code points at them for handler calls and trap
    /// reports, so they must live as long as the code: see [`Block::inlined`]).
    ///
    /// [`Block::inlined`]: crate::translate::Block::inlined
    pub insns: Arc<[Insn]>,
    /// The same instructions as iced decodes them.
    pub decoded: Vec<Instruction>,
    /// Where execution falls through to after the block.
    pub end_rip: u64,
    /// Whether the last instruction sets RIP itself.
    pub ends_in_branch: bool,
}

impl Member {
    fn of(block: &crate::translate::Block, decoded: Vec<Instruction>) -> Self {
        Member {
            insns: block.insns.clone(),
            decoded,
            end_rip: block.end_rip,
            ends_in_branch: block.ends_in_branch,
        }
    }

    /// Address of the block's first instruction.
    pub fn rip(&self) -> u64 {
        self.insns.first().map_or(self.end_rip, |i| i.rip)
    }
}

/// One block handed to the compiler, with the hot blocks around it that its code takes
/// in (a region: see [`Jit::enter`]). The code is entered at the first member's start;
/// a branch from one member to another's start is a jump inside the code, with guest
/// registers kept in host registers across it.
pub struct Job {
    /// [`Block::id`](crate::translate::Block::id) of the block.
    pub block_id: u64,
    /// Its slot in the code cache.
    pub idx: u32,
    /// The flush epoch it was queued in.
    pub epoch: u64,
    /// The guest blocks compiled together; `members[0]` is the block itself.
    pub members: Vec<Member>,
    /// Address of the link slots: two per member, member `m`'s at `2m` and `2m + 1`.
    pub links: usize,
}

/// What came of a [`Job`].
struct Done {
    block_id: u64,
    idx: u32,
    epoch: u64,
    result: Option<Compiled>,
}

struct Compiled {
    code: CompiledBlock,
    bytes: usize,
    counts: lower::Counts,
}

/// Cranelift and the memory its code lives in.
struct Compiler {
    isa: OwnedTargetIsa,
    arena: arena::CodeArena,
    ctx: Context,
    builder_ctx: FunctionBuilderContext,
    /// Where compiled code is described for host profilers, if asked for.
    profile: ProfileOutput,
}

/// What the compiler writes about its code for host profilers, from the environment:
/// `QUETZAL_PERF_MAP` (any value) appends `start size guest-rip` lines to
/// `/tmp/perf-<pid>.map`, the file `perf report` reads to name JIT code;
/// `QUETZAL_JIT_DUMP=<file>` appends each block's host address, guest instructions and
/// Cranelift's disassembly of the code, to match `perf annotate`-style hot addresses
/// with what the lowering produced.
#[derive(Default)]
struct ProfileOutput {
    perf_map: Option<std::fs::File>,
    dump: Option<std::fs::File>,
}

impl ProfileOutput {
    fn from_env() -> Self {
        let append = |path: &std::path::Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        };
        ProfileOutput {
            perf_map: std::env::var_os("QUETZAL_PERF_MAP").and_then(|_| {
                append(std::path::Path::new(&format!(
                    "/tmp/perf-{}.map",
                    std::process::id()
                )))
            }),
            dump: std::env::var_os("QUETZAL_JIT_DUMP")
                .and_then(|p| append(std::path::Path::new(&p))),
        }
    }

    /// Whether Cranelift should keep its text of the code (hosts whose code iced-x86
    /// cannot disassemble).
    fn wants_disassembly(&self) -> bool {
        self.dump.is_some() && cfg!(not(target_arch = "x86_64"))
    }

    /// Describes the code at `start` (`len` bytes) compiled from `job`.
    fn record(&mut self, start: *const u8, len: usize, job: &Job, disasm: Option<&str>) {
        use std::io::Write;
        let rip = job.members[0].rip();
        if let Some(f) = &mut self.perf_map {
            let _ = writeln!(f, "{:x} {:x} guest_{:x}", start as usize, len, rip);
        }
        if let Some(f) = &mut self.dump {
            let mut text = format!("== block guest {rip:#x} at host {:p}, {len} bytes\n", start);
            for member in &job.members {
                for insn in &member.decoded {
                    text += &format!(";   {:x} {}\n", insn.ip(), insn);
                }
                text += ";   --\n";
            }
            if cfg!(target_arch = "x86_64") {
                // SAFETY: `start` is the `len` bytes just installed.
                let bytes = unsafe { std::slice::from_raw_parts(start, len) };
                text += &host_disassembly(bytes, start as u64);
            } else {
                text += disasm.unwrap_or("");
            }
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Room in the code region beyond [`JitConfig::max_code_bytes`], so the blocks compiled
/// while a flush is being decided still fit.
const ARENA_SLACK: usize = 8 << 20;

impl Compiler {
    fn new(config: &JitConfig) -> Option<Self> {
        if cfg!(not(target_pointer_width = "64")) {
            return None;
        }
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").ok()?;
        flags.set("enable_verifier", "false").ok()?;
        let isa = cranelift_native::builder()
            .ok()?
            .finish(settings::Flags::new(flags))
            .ok()?;
        Some(Compiler {
            isa,
            arena: arena::CodeArena::new(config.max_code_bytes + ARENA_SLACK)?,
            ctx: Context::new(),
            builder_ctx: FunctionBuilderContext::new(),
            profile: ProfileOutput::from_env(),
        })
    }

    fn compile(&mut self, job: &Job) -> Option<Compiled> {
        let mut sig = Signature::new(self.isa.default_call_conv());
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(types::I64));
        sig.returns.push(AbiParam::new(types::I64));
        self.ctx.clear();
        self.ctx.set_disasm(self.profile.wants_disassembly());
        self.ctx.func.signature = sig;
        let counts = lower::lower_block(
            &mut self.ctx.func,
            &mut self.builder_ctx,
            self.isa.default_call_conv(),
            job,
        );
        let code = match self.ctx.compile(&*self.isa, &mut ControlPlane::default()) {
            Ok(code) => code,
            Err(e) => {
                compile_failed(&e.inner);
                return None;
            }
        };
        // Helpers are called through constant addresses, so nothing needs patching; a
        // relocation would mean the lowering used something it must not.
        if !code.buffer.relocs().is_empty() {
            return None;
        }
        let bytes = code.code_buffer();
        let start = self.arena.install(bytes)?;
        let disasm = code.vcode.as_deref();
        self.profile.record(start, bytes.len(), job, disasm);
        // SAFETY: the function was built with exactly this signature (two pointers in,
        // one i64 out) in the host's default calling convention, which is `extern "C"`.
        let code = unsafe { std::mem::transmute::<*const u8, CompiledBlock>(start) };
        Some(Compiled {
            code,
            bytes: bytes.len(),
            counts,
        })
    }

    /// Forgets all compiled code, reusing its memory.
    ///
    /// # Safety
    ///
    /// None of it may run afterwards.
    unsafe fn flush(&mut self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.arena.reset() };
    }
}

/// `bytes` of x86-64 code at `address`, one instruction per line.
fn host_disassembly(bytes: &[u8], address: u64) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    let mut line = String::new();
    for insn in Decoder::with_ip(64, bytes, address, DecoderOptions::NONE) {
        line.clear();
        formatter.format(&insn, &mut line);
        out += &format!("{:x}  {line}\n", insn.ip());
    }
    out
}

/// A compile error is a bug in the lowering, not a guest problem: the block simply stays
/// interpreted. Debug builds say so loudly.
fn compile_failed(e: &cranelift_codegen::CodegenError) {
    debug_assert!(false, "compiling a block failed: {e:?}");
}

/// Requests to the compiler thread.
enum Request {
    Compile(Job),
    /// Free all code (every block has been reset to interpreted first).
    Flush,
}

/// The compiler thread: compiles jobs in order until the `Jit` goes away, then frees its
/// code (nothing can run it any more: the vCPU that owned the `Jit` is gone).
fn compiler_thread(
    config: JitConfig,
    requests: Receiver<Request>,
    results: Sender<Done>,
    ready: Arc<AtomicUsize>,
) {
    let Some(mut compiler) = Compiler::new(&config) else {
        return;
    };
    while let Ok(request) = requests.recv() {
        match request {
            Request::Compile(job) => {
                let result = compiler.compile(&job);
                let done = Done {
                    block_id: job.block_id,
                    idx: job.idx,
                    epoch: job.epoch,
                    result,
                };
                // Counted before it is sent, so the receiver never takes more than the
                // count says.
                ready.fetch_add(1, Ordering::Release);
                if results.send(done).is_err() {
                    break;
                }
            }
            // SAFETY: the vCPU reset every block before asking, and results compiled
            // earlier carry an older epoch, so they are dropped on arrival.
            Request::Flush => unsafe { compiler.flush() },
        }
    }
    // Dropping the compiler unmaps the code: the `Jit` that could run it is gone.
}

enum Backend {
    /// Compiles on the vCPU thread.
    Inline(Box<Compiler>),
    /// Compiles on a thread of its own, started at the first job.
    Background {
        requests: Option<Sender<Request>>,
        results: Option<Receiver<Done>>,
        /// Results sent and not yet received: one load tells whether to look.
        ready: Arc<AtomicUsize>,
        worker: Option<std::thread::JoinHandle<()>>,
    },
}

/// The compiling tier of one vCPU.
pub struct Jit {
    config: JitConfig,
    backend: Backend,
    /// Incremented by every flush; results from older epochs are stale.
    epoch: u64,
    /// Jobs sent whose results have not been received.
    in_flight: usize,
    code_bytes: usize,
    /// What has been compiled so far.
    pub stats: JitStats,
    /// With `QUETZAL_JIT_STATS` set: how often each mnemonic was left to its handler in
    /// compiled blocks, printed when the `Jit` goes away.
    fallbacks: Option<std::collections::HashMap<iced_x86::Mnemonic, u64>>,
}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jit")
            .field("config", &self.config)
            .field("code_bytes", &self.code_bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(fallbacks) = &self.fallbacks {
            let mut top: Vec<_> = fallbacks.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1));
            eprintln!(
                "jit: {:?}, {} in flight, {} bytes of code; left to handlers: {:?}",
                self.stats,
                self.in_flight,
                self.code_bytes,
                &top[..top.len().min(30)]
            );
        }
        if let Backend::Background {
            requests,
            results,
            worker,
            ..
        } = &mut self.backend
        {
            // Closing both channels ends the thread, which frees the code.
            drop(requests.take());
            drop(results.take());
            if let Some(worker) = worker.take() {
                let _ = worker.join();
            }
        }
    }
}

impl Jit {
    /// The compiling tier, or `None` if Cranelift does not support this host.
    pub fn new(config: JitConfig) -> Option<Self> {
        let backend = if config.background {
            // Check once, here, that the host is supported.
            Compiler::new(&config)?;
            Backend::Background {
                requests: None,
                results: None,
                ready: Arc::default(),
                worker: None,
            }
        } else {
            Backend::Inline(Box::new(Compiler::new(&config)?))
        };
        Some(Jit {
            config,
            backend,
            epoch: 0,
            in_flight: 0,
            code_bytes: 0,
            stats: JitStats::default(),
            fallbacks: std::env::var_os("QUETZAL_JIT_STATS").map(|_| Default::default()),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &JitConfig {
        &self.config
    }

    /// Bytes of host code emitted since the last flush.
    pub fn code_bytes(&self) -> usize {
        self.code_bytes
    }

    /// Resets every block of `cache` to interpreted-and-cold and frees all compiled code.
    pub fn flush(&mut self, cache: &mut CodeCache) {
        cache.for_each_block_mut(|b| b.tier = BlockTier::Cold);
        // The jump cache holds code pointers too.
        cache.flush_jump_cache();
        self.epoch += 1;
        self.code_bytes = 0;
        self.stats.flushes += 1;
        match &mut self.backend {
            // SAFETY: no block refers to compiled code any more.
            Backend::Inline(compiler) => unsafe { compiler.flush() },
            Backend::Background { requests, .. } => {
                if let Some(tx) = requests {
                    let _ = tx.send(Request::Flush);
                }
            }
        }
    }

    /// Records an entry into block `idx` (about to run whole) and returns its compiled
    /// code if it has some, queueing or doing the compile once the block is hot.
    pub fn enter(
        &mut self,
        cpu: &mut Cpu,
        cache: &mut CodeCache,
        idx: u32,
    ) -> Option<CompiledBlock> {
        if let BlockTier::Compiled(f) = cache.block(idx).tier {
            return Some(f);
        }
        if self.in_flight > 0 {
            // Results that arrived may include this block's.
            self.receive(cache);
        }
        let entries = match cache.block(idx).tier {
            BlockTier::Compiled(f) => return Some(f),
            BlockTier::Queued | BlockTier::Interpreted => return None,
            BlockTier::Cold => 1,
            BlockTier::Warm(n) => n + 1,
        };
        if entries < self.config.threshold {
            cache.block_mut(idx).tier = BlockTier::Warm(entries);
            return None;
        }
        if self.code_bytes > self.config.max_code_bytes {
            self.flush(cache);
            return None;
        }
        let region = if cpu.code_bits == 64 && !cache.block(idx).insns.is_empty() {
            self.region(cpu, cache, idx)
        } else {
            None
        };
        let Some((members, indices)) = region else {
            self.stats.declined += 1;
            cache.block_mut(idx).tier = BlockTier::Interpreted;
            return None;
        };
        // The other members now run inside this block's code: their own entry counts
        // start again, so that they are compiled on their own only if they are also
        // entered often from elsewhere.
        for &other in &indices[1..] {
            let block = cache.block_mut(other);
            if matches!(block.tier, BlockTier::Warm(_)) {
                block.tier = BlockTier::Cold;
            }
        }
        let block = cache.block_mut(idx);
        let slots = 2 * members.len();
        if !block.links.as_ref().is_some_and(|l| l.len() == slots) {
            // No code refers to the old slots: the block has none (it is being queued),
            // and links to its old code died with the flush that reset it.
            block.links = Some(LinkSlots::new(slots));
        }
        let links = block.links.as_ref().map_or(0, |l| l.slot(0) as usize);
        if let Some(slots) = &block.links {
            // Exits to the page the block starts on skip the fetch-TLB check (see
            // `LinkSlot`); the lowering picks the same ones (`lower::same_page`).
            let page = block.pages[0];
            for (m, member) in members.iter().enumerate() {
                let targets = lower::successors(member);
                for k in 0..2 {
                    let fixed = targets
                        .get(k)
                        .filter(|&&t| lower::same_page(members[0].rip(), t))
                        .map_or(u64::MAX, |_| page);
                    // SAFETY: no code uses the slots now (the block is being queued),
                    // and only this thread writes them.
                    unsafe { (*slots.slot(2 * m + k)).fixed_page = fixed };
                }
            }
        }
        block.inlined = members[1..].iter().map(|m| m.insns.clone()).collect();
        let job = Job {
            links,
            block_id: block.id,
            idx,
            epoch: self.epoch,
            members,
        };
        match &mut self.backend {
            Backend::Inline(compiler) => {
                let result = compiler.compile(&job);
                self.install(cache, idx, job.block_id, result);
                match cache.block(idx).tier {
                    BlockTier::Compiled(f) => Some(f),
                    _ => None,
                }
            }
            Backend::Background {
                requests,
                results,
                ready,
                worker,
            } => {
                if requests.is_none() {
                    let config = self.config;
                    let (tx, rx) = channel();
                    let (done_tx, done_rx) = channel();
                    let ready = ready.clone();
                    let spawned = std::thread::Builder::new()
                        .name("quetzal-jit".into())
                        .spawn(move || compiler_thread(config, rx, done_tx, ready));
                    match spawned {
                        Ok(handle) => {
                            *requests = Some(tx);
                            *results = Some(done_rx);
                            *worker = Some(handle);
                        }
                        Err(_) => {
                            cache.block_mut(idx).tier = BlockTier::Interpreted;
                            return None;
                        }
                    }
                }
                let sent = requests
                    .as_ref()
                    .is_some_and(|tx| tx.send(Request::Compile(job)).is_ok());
                cache.block_mut(idx).tier = if sent {
                    self.in_flight += 1;
                    BlockTier::Queued
                } else {
                    BlockTier::Interpreted
                };
                None
            }
        }
    }

    /// The blocks compiled together with block `head` (see [`Job`]), with their cache
    /// indices; `None` if `head` itself cannot be compiled.
    ///
    /// Starting from `head`, the direct successors of each member (branch targets and
    /// fall-through) join while they are hot themselves (entered at least half the
    /// compile threshold, or compiled), lie on the same physical page as `head`, and the
    /// region stays within [`JitConfig::max_region_blocks`] blocks and
    /// [`MAX_REGION_INSNS`] instructions. The one-page rule is what keeps the code
    /// correct: every write that could change a member invalidates `head` too, and a
    /// member is reached in `head`'s code only through `head`'s own page mapping.
    fn region(
        &self,
        cpu: &mut Cpu,
        cache: &CodeCache,
        head: u32,
    ) -> Option<(Vec<Member>, Vec<u32>)> {
        let first = cache.block(head);
        let decoded = lower::decode_again(cpu, first)?;
        let mut members = vec![Member::of(first, decoded)];
        let mut indices = vec![head];
        if first.pages.len() != 1 {
            return Some((members, indices));
        }
        let page = first.pages[0];
        let vpage = first.rip & emu_mmu::PAGE_MASK;
        let mode = cpu.mode_key();
        let mut insns = first.insns.len();
        let hot = |tier: BlockTier| match tier {
            BlockTier::Warm(n) => 2 * n >= self.config.threshold,
            BlockTier::Queued | BlockTier::Compiled(_) => true,
            BlockTier::Cold | BlockTier::Interpreted => false,
        };
        let mut next = 0;
        while next < members.len() {
            for target in lower::successors(&members[next]) {
                if members.len() >= self.config.max_region_blocks {
                    break;
                }
                if target & emu_mmu::PAGE_MASK != vpage || members.iter().any(|m| m.rip() == target)
                {
                    continue;
                }
                let phys = page | (target & !emu_mmu::PAGE_MASK);
                let Some(i) = cache.find(phys, target, mode) else {
                    continue;
                };
                let block = cache.block(i);
                if block.pages != [page]
                    || block.insns.is_empty()
                    || !hot(block.tier)
                    || insns + block.insns.len() > MAX_REGION_INSNS
                {
                    continue;
                }
                let Some(decoded) = lower::decode_again(cpu, block) else {
                    continue;
                };
                insns += block.insns.len();
                members.push(Member::of(block, decoded));
                indices.push(i);
            }
            next += 1;
        }
        // Only loops through `head` are worth their compile time (the boot compiles
        // thousands of blocks, and straight-line regions made it twice as slow): keep
        // the members from which `head` can be reached again.
        let exits = lower::region_exits(&members);
        let mut reaches_head = vec![false; members.len()];
        loop {
            let mut changed = false;
            for m in 0..members.len() {
                if !reaches_head[m] && exits[m].inside.iter().any(|&t| t == 0 || reaches_head[t]) {
                    reaches_head[m] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut m = 0;
        members.retain(|_| {
            m += 1;
            m == 1 || reaches_head[m - 1]
        });
        let mut m = 0;
        indices.retain(|_| {
            m += 1;
            m == 1 || reaches_head[m - 1]
        });
        Some((members, indices))
    }

    /// Installs the results the compiler thread has finished.
    fn receive(&mut self, cache: &mut CodeCache) {
        let Backend::Background {
            results: Some(rx),
            ready,
            ..
        } = &self.backend
        else {
            return;
        };
        if ready.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut done = Vec::new();
        while let Ok(d) = rx.try_recv() {
            done.push(d);
        }
        ready.fetch_sub(done.len(), Ordering::Relaxed);
        for d in done {
            self.in_flight = self.in_flight.saturating_sub(1);
            if d.epoch == self.epoch {
                self.install(cache, d.idx, d.block_id, d.result);
            }
        }
    }

    fn install(
        &mut self,
        cache: &mut CodeCache,
        idx: u32,
        block_id: u64,
        result: Option<Compiled>,
    ) {
        match &result {
            Some(c) => {
                // The code exists (and takes room) whether or not its block is still here.
                self.code_bytes += c.bytes;
                self.stats.compiled += 1;
                self.stats.native_insns += c.counts.native as u64;
                self.stats.fallback_insns += c.counts.fallback as u64;
                if let Some(fallbacks) = self.fallbacks.as_mut() {
                    for m in &c.counts.fallback_mnemonics {
                        *fallbacks.entry(*m).or_default() += 1;
                    }
                }
            }
            None => self.stats.declined += 1,
        }
        let Some(block) = cache.get_block_mut(idx) else {
            return;
        };
        if block.id != block_id {
            return;
        }
        block.tier = match result {
            Some(c) => BlockTier::Compiled(c.code),
            None => BlockTier::Interpreted,
        };
        cache.note_compiled(idx);
    }
}

/// Runs compiled block `f` and the blocks it links to directly, until one returns to
/// the run loop: `ctx.fuel` falls by the instructions completed, `ctx.trap` and
/// `ctx.trap_insn` say what stopped it if a trap did, `ctx.last_link` names the slot of
/// an exit that could not link.
///
/// # Safety
///
/// `f` must have been compiled from a block that is still in the code cache, and the
/// compiler's code region must not have been flushed since; `ctx.generation` must be
/// the cache's current link generation.
pub unsafe fn run_compiled(cpu: &mut Cpu, ctx: &mut JitCtx, f: CompiledBlock) {
    let mut f = f;
    loop {
        // SAFETY: forwarded to the caller; `cpu` and `ctx` are valid exclusive pointers
        // for the duration of the call. A non-zero result is the code of a block the
        // link checks found valid (see `LinkSlot`).
        let next = unsafe { f(cpu, ctx) };
        if next == 0 {
            return;
        }
        // SAFETY: link slots only ever hold `CompiledBlock` addresses.
        f = unsafe { std::mem::transmute::<u64, CompiledBlock>(next) };
    }
}
