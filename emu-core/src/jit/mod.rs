//! The second tier: hot blocks compiled to host code with Cranelift.
//!
//! The interpreter ([`crate::translate`], [`crate::exec`]) stays the portable baseline and
//! the reference for every instruction's meaning. A block that the run loop has entered
//! [`JitConfig::threshold`] times is handed to [`Jit::compile`], which re-decodes its bytes
//! with iced-x86 (checking that they still match the block's records) and lowers each
//! instruction to Cranelift IR ([`lower`]):
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
//! Exits are precise: a fault leaves registers as they were before the faulting
//! instruction and returns its index, and the run loop delivers it exactly as for an
//! interpreted block. One deviation: flags skipped as dead are not recomputed when a
//! later instruction of the block faults, so the RFLAGS image pushed for that fault may
//! hold stale CF/OF/SF/ZF/AF/PF bits that the interrupted code would have overwritten
//! without reading them.
//!
//! Compiled code is freed all at once: blocks invalidated by writes to their pages leave
//! their code behind until [`Jit::code_bytes`] passes [`JitConfig::max_code_bytes`], when
//! the run loop drops every compiled block and the whole code region.

mod helpers;
mod lower;

use cranelift_codegen::ir::{types, AbiParam, Signature};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::Module;

use crate::cpu::Cpu;
use crate::insn::Trap;
use crate::translate::Block;

pub use helpers::JitCtx;

/// A compiled block: `f(cpu, ctx)` runs it and returns how many of its instructions
/// completed. If `ctx.trap` is set on return, the instruction at that index raised it
/// (with no effect, for faults) and the run loop settles it as for interpreted code.
pub type CompiledBlock = unsafe extern "C" fn(*mut Cpu, *mut JitCtx) -> u64;

/// Where a block stands with the compiler.
#[derive(Clone, Copy, Debug, Default)]
pub enum BlockTier {
    /// Interpreted; entered this many times so far.
    #[default]
    Cold,
    /// Counting entries towards the threshold.
    Warm(u32),
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
    /// Compiled code kept before everything is dropped and compiling starts afresh.
    pub max_code_bytes: usize,
}

impl Default for JitConfig {
    fn default() -> Self {
        JitConfig {
            enabled: true,
            threshold: 200,
            max_code_bytes: 64 << 20,
        }
    }
}

impl JitConfig {
    /// The default configuration, adjusted by the `QUETZAL_JIT` environment variable:
    /// `off` (or `0`) disables compiling, a number sets the threshold. Meant for
    /// comparing tiers and for running the test suites with every block compiled.
    pub fn from_env() -> Self {
        let mut config = JitConfig::default();
        if let Ok(v) = std::env::var("QUETZAL_JIT") {
            match v.trim() {
                "off" | "0" => config.enabled = false,
                n => {
                    if let Ok(t) = n.parse::<u32>() {
                        config.threshold = t.max(1);
                    }
                }
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

/// The compiler and the memory its code lives in.
pub struct Jit {
    config: JitConfig,
    isa: OwnedTargetIsa,
    module: Option<JITModule>,
    ctx: Context,
    builder_ctx: FunctionBuilderContext,
    code_bytes: usize,
    /// What has been compiled so far.
    pub stats: JitStats,
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

impl Jit {
    /// A compiler for the host CPU, or `None` if Cranelift does not support this host.
    pub fn new(config: JitConfig) -> Option<Self> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").ok()?;
        flags.set("use_colocated_libcalls", "false").ok()?;
        flags.set("is_pic", "false").ok()?;
        let isa = cranelift_native::builder()
            .ok()?
            .finish(settings::Flags::new(flags))
            .ok()?;
        let ctx = Context::new();
        Some(Jit {
            config,
            isa,
            module: None,
            ctx,
            builder_ctx: FunctionBuilderContext::new(),
            code_bytes: 0,
            stats: JitStats::default(),
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

    /// Whether the code region is full, so the caller should forget every compiled block
    /// and call [`Jit::flush`].
    pub fn wants_flush(&self) -> bool {
        self.code_bytes > self.config.max_code_bytes
    }

    /// Frees all compiled code.
    ///
    /// # Safety
    ///
    /// No [`CompiledBlock`] obtained before may be called afterwards.
    pub unsafe fn flush(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: forwarded to the caller.
            unsafe { module.free_memory() };
        }
        self.code_bytes = 0;
        self.stats.flushes += 1;
    }

    fn module(&mut self) -> &mut JITModule {
        let isa = self.isa.clone();
        self.module.get_or_insert_with(|| {
            JITModule::new(JITBuilder::with_isa(
                isa,
                cranelift_module::default_libcall_names(),
            ))
        })
    }

    /// Records one more entry into `block` and compiles it once it is hot. Returns the
    /// compiled code if the block has (or now has) some.
    pub fn enter(&mut self, cpu: &mut Cpu, block: &mut Block) -> Option<CompiledBlock> {
        match block.tier {
            BlockTier::Compiled(f) => return Some(f),
            BlockTier::Interpreted => return None,
            BlockTier::Cold => block.tier = BlockTier::Warm(1),
            BlockTier::Warm(n) => block.tier = BlockTier::Warm(n + 1),
        }
        let BlockTier::Warm(n) = block.tier else {
            return None;
        };
        if n < self.config.threshold {
            return None;
        }
        match self.compile(cpu, block) {
            Some(f) => {
                block.tier = BlockTier::Compiled(f);
                Some(f)
            }
            None => {
                self.stats.declined += 1;
                block.tier = BlockTier::Interpreted;
                None
            }
        }
    }

    /// Compiles `block` (translated in the CPU's current mode), or `None` if the block is
    /// not something this tier takes.
    pub fn compile(&mut self, cpu: &mut Cpu, block: &Block) -> Option<CompiledBlock> {
        if cpu.code_bits != 64 || block.insns.is_empty() {
            return None;
        }
        let decoded = lower::decode_again(cpu, block)?;
        let ptr = self.isa.pointer_type();
        let mut sig = Signature::new(self.isa.default_call_conv());
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        sig.returns.push(AbiParam::new(types::I64));
        self.module();
        let module = self.module.as_mut().expect("module created above");
        module.clear_context(&mut self.ctx);
        self.ctx.func.signature = sig.clone();
        let counts = lower::lower_block(
            &mut self.ctx.func,
            &mut self.builder_ctx,
            self.isa.default_call_conv(),
            block,
            &decoded,
        );
        let id = module.declare_anonymous_function(&sig).ok()?;
        if let Err(e) = module.define_function(id, &mut self.ctx) {
            tracing_unavailable(&e);
            module.clear_context(&mut self.ctx);
            return None;
        }
        let size = self
            .ctx
            .compiled_code()
            .map(|c| c.code_buffer().len())
            .unwrap_or(0);
        module.clear_context(&mut self.ctx);
        module.finalize_definitions().ok()?;
        let code = module.get_finalized_function(id);
        self.code_bytes += size;
        self.stats.compiled += 1;
        self.stats.native_insns += counts.native as u64;
        self.stats.fallback_insns += counts.fallback as u64;
        // SAFETY: the function was built with exactly this signature (two pointers in,
        // one i64 out) in the host's default calling convention, which is `extern "C"`.
        Some(unsafe { std::mem::transmute::<*const u8, CompiledBlock>(code) })
    }
}

/// A compile error is a bug in the lowering, not a guest problem: the block simply stays
/// interpreted. Debug builds say so loudly.
fn tracing_unavailable(e: &cranelift_module::ModuleError) {
    debug_assert!(false, "compiling a block failed: {e:?}");
}

/// Runs a compiled block, returning instructions completed and the trap that stopped it.
///
/// # Safety
///
/// `f` must have been compiled from `block`, which must still be in the code cache, and
/// the compiler's code region must not have been flushed since.
pub unsafe fn run_compiled(cpu: &mut Cpu, f: CompiledBlock) -> (usize, Option<Box<Trap>>) {
    let mut ctx = JitCtx::default();
    // SAFETY: forwarded to the caller; `cpu` and `ctx` are valid exclusive pointers for
    // the duration of the call.
    let n = unsafe { f(cpu, &mut ctx) } as usize;
    (n, ctx.take_trap())
}
