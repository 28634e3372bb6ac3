//! The bare-CPU embedding API: one vCPU, its memory, hooks and a run loop.
//!
//! This is Quetzal's Unicorn-shaped surface: map memory, set registers, run from an
//! address until an end address, an instruction count, a time limit or a stop request
//! from another thread, with hooks on code, memory accesses and interrupts. Whole
//! machines (devices, firmware, kernels) are assembled on top of it in `emu-vmm`.
//!
//! ```
//! use emu_core::{Emulator, Register, RunOptions, StopReason};
//!
//! let mut emu = Emulator::new();
//! emu.map_memory(0x1000, 0x1000)?;
//! emu.write_memory(0x1000, &[0x48, 0x01, 0xd8, 0xf4])?; // add rax, rbx; hlt
//! emu.set_reg(Register::RAX, 2)?;
//! emu.set_reg(Register::RBX, 3)?;
//! assert_eq!(emu.run(0x1000, &RunOptions::default()), StopReason::Halted);
//! assert_eq!(emu.reg(Register::RAX)?, 5);
//! # Ok::<(), emu_core::EmuError>(())
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emu_mmu::{Bus, BusError, MemAccessEvent, MemFault, Mmu, RamError, SharedDevice};
use iced_x86::Register;

use crate::cache::CodeCache;
use crate::cpu::Cpu;
use crate::events::{self, AttachedController, Events, InterruptLine, LocalInterruptController};
use crate::exception::Exception;
use crate::insn::Trap;
use crate::interrupt::{self, escalate, fault_class, Escalation, EventKind, FaultClass};
use crate::jit::{self, Jit, JitConfig, JitStats};
use crate::translate::{translate_block, Block};

/// Errors from the embedding API (never from guest behaviour, which ends a run with a
/// [`StopReason`] instead).
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// Mapping memory failed.
    #[error(transparent)]
    Ram(#[from] RamError),
    /// A host read or write touched memory that is not mapped.
    #[error(transparent)]
    Memory(#[from] MemFault),
    /// A device could not be mapped.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The register cannot be read or written through this API.
    #[error("register {0:?} is not supported by this API")]
    UnsupportedRegister(Register),
}

/// When [`Emulator::run`] should stop, besides guest events.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop when RIP reaches this address (before executing the instruction there).
    pub until: Option<u64>,
    /// Stop after retiring this many instructions.
    pub max_instructions: Option<u64>,
    /// Stop after this much host time (checked between blocks).
    pub timeout: Option<Duration>,
}

/// Why [`Emulator::run`] returned. RIP is left at the next instruction to execute (or at
/// the faulting instruction for exceptions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// RIP reached [`RunOptions::until`].
    ReachedEnd,
    /// [`RunOptions::max_instructions`] were retired.
    InstructionLimit,
    /// [`RunOptions::timeout`] elapsed.
    Timeout,
    /// A [`StopHandle`] asked the run to stop.
    StopRequested,
    /// A code hook asked the run to stop.
    HookRequested,
    /// The guest executed HLT.
    Halted,
    /// An exception no interrupt hook handled.
    Exception {
        /// The exception.
        exception: Exception,
        /// Address of the faulting instruction.
        rip: u64,
    },
    /// A software interrupt (INT n, INT3, INTO) no interrupt hook handled.
    SoftwareInterrupt {
        /// The vector.
        vector: u8,
        /// Address of the next instruction.
        rip: u64,
    },
    /// SYSCALL with no interrupt hook to handle it.
    Syscall {
        /// Address of the next instruction.
        rip: u64,
    },
    /// A fault while delivering a double fault: the processor shuts down.
    TripleFault {
        /// RIP when the shutdown happened.
        rip: u64,
    },
    /// A data access or fetch reached unmapped memory.
    Unmapped {
        /// The fault.
        fault: MemFault,
        /// Address of the instruction.
        rip: u64,
    },
}

/// What an interrupt hook is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptEvent {
    /// An exception; RIP is the faulting instruction.
    Exception(Exception),
    /// INT n / INT3 / INTO; RIP is the next instruction.
    Software(u8),
    /// SYSCALL; RIP is the next instruction.
    Syscall,
}

/// Who handles exceptions and software interrupts that no interrupt hook handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterruptDelivery {
    /// The run stops and reports them ([`StopReason::Exception`],
    /// [`StopReason::SoftwareInterrupt`]): the Unicorn-style bare CPU.
    #[default]
    Embedder,
    /// The guest does, through its IDT, as a real processor would (with #DF and triple
    /// faults).
    Guest,
}

/// What a code hook wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Execute the instruction.
    Continue,
    /// Stop before the instruction ([`StopReason::HookRequested`]).
    Stop,
}

/// Called before every instruction with the CPU, the instruction's address and length.
/// Changing RIP in the hook redirects execution.
pub type CodeHook = Box<dyn FnMut(&mut Cpu, u64, u8) -> HookAction + Send>;
/// Called on exceptions, software interrupts and SYSCALL. Return `true` if handled (the
/// run continues at the CPU's RIP, which the hook may have changed), `false` to stop.
pub type InterruptHook = Box<dyn FnMut(&mut Cpu, InterruptEvent) -> bool + Send>;

/// An event about to be delivered through the guest's IDT (under
/// [`InterruptDelivery::Guest`]), as a [`DeliveryHook`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The IDT vector.
    pub vector: u8,
    /// The error code pushed with it, if any.
    pub error_code: Option<u32>,
    /// Exception, external interrupt (NMIs included: vector 2) or software interrupt.
    pub kind: EventKind,
    /// The exception, when it is one (a page fault carries its address and code).
    pub exception: Option<Exception>,
}

/// Called just before an event is delivered through the guest's IDT, with the CPU still
/// in the interrupted state (RIP at the faulting instruction for faults, at the next one
/// for traps and interrupts). Observational: it cannot refuse or change the delivery.
/// Events raised while delivering another (a #PF pushing the frame, the #DF that
/// follows) are reported too, each before its own delivery.
pub type DeliveryHook = Box<dyn FnMut(&mut Cpu, &Delivery) + Send>;

/// Called once per block when it is translated (not when a cached translation runs
/// again) with the CPU, the block's first instruction's offset in CS and the offset just
/// past its last one. To see what was translated, fetch `end - start` bytes at
/// `cpu.code_linear(start)` with `cpu.mmu.fetch_code` and decode them in `cpu.code_bits`
/// mode.
pub type BlockHook = Box<dyn FnMut(&mut Cpu, u64, u64) + Send>;

/// Asks a running [`Emulator`] (or several: [`StopHandle::all`]) to stop, from any
/// thread.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<[Arc<Events>]>);

impl StopHandle {
    /// Requests a stop; the run returns [`StopReason::StopRequested`] within a block (or
    /// at once from HLT, or from waiting for a start-up IPI).
    pub fn stop(&self) {
        for events in self.0.iter() {
            events.request_stop();
        }
    }

    /// One handle that stops every vCPU the given handles stop (a machine's vCPUs).
    pub fn all(handles: &[StopHandle]) -> StopHandle {
        StopHandle(handles.iter().flat_map(|h| h.0.iter().cloned()).collect())
    }
}

/// One vCPU with its memory, code cache and hooks.
pub struct Emulator {
    cpu: Cpu,
    cache: CodeCache,
    events: Arc<Events>,
    /// The current run's time limit (HLT sleeps no longer than this).
    deadline: Option<Instant>,
    code_hooks: Vec<CodeHook>,
    interrupt_hooks: Vec<InterruptHook>,
    /// Observers of guest deliveries (looked at only when an event is delivered).
    delivery_hooks: Vec<DeliveryHook>,
    /// Observers of translation (looked at only when a block is translated).
    block_hooks: Vec<BlockHook>,
    delivery: InterruptDelivery,
    /// The MMIO devices (the MMU holds a shared copy).
    mmio: Bus,
    /// The compiling tier, when enabled and supported on this host.
    jit: Option<Jit>,
    /// The configuration `jit` was made from (siblings get the same).
    jit_config: JitConfig,
    /// Whether the vCPU runs or waits for a start-up IPI.
    activity: Activity,
}

/// Whether a vCPU executes instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Running (or halted: HLT is an instruction that sleeps).
    Active,
    /// After INIT: nothing runs until a start-up IPI ([`InterruptLine::raise_startup`]).
    WaitForStartup,
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

/// How often (in blocks) the run loop looks at the clock for a timeout.
const TIMEOUT_CHECK_BLOCKS: u32 = 256;

impl Emulator {
    /// A 64-bit CPU with no memory mapped.
    pub fn new() -> Self {
        Self::with_cpu(Cpu::new(Mmu::default()), JitConfig::from_env())
    }

    /// An emulator around `cpu` with nothing attached: no hooks, no devices, exceptions
    /// to the embedder, the compiling tier as `jit_config` says.
    fn with_cpu(cpu: Cpu, jit_config: JitConfig) -> Self {
        Emulator {
            cpu,
            cache: CodeCache::default(),
            events: Arc::new(Events::default()),
            deadline: None,
            code_hooks: Vec::new(),
            interrupt_hooks: Vec::new(),
            delivery_hooks: Vec::new(),
            block_hooks: Vec::new(),
            delivery: InterruptDelivery::Embedder,
            mmio: Bus::new(),
            jit: Self::make_jit(jit_config),
            jit_config,
            activity: Activity::Active,
        }
    }

    /// Another vCPU of the same machine, for its own host thread: it shares this vCPU's
    /// RAM (map all of it first), code-page marks, device-write log and virtual clock
    /// (so both read the same TSC), and the machine's [`crate::smp::Gate`] (created on
    /// the first call). It gets its own registers (in [`Emulator::new`]'s starting
    /// state), code cache, compiling tier (same configuration), event word and empty MMIO
    /// and port buses: the platform attaches devices, and its own local APIC, to each
    /// vCPU. A PC platform then puts it through [`Emulator::reset`] and
    /// [`Activity::WaitForStartup`], as an application processor.
    pub fn new_vcpu(&mut self) -> Emulator {
        let gate = self.attach_gate();
        let mut cpu = Cpu::new(self.cpu.mmu.sibling());
        cpu.clock = self.cpu.clock.clone();
        cpu.gate = Some(gate.clone());
        let mut vcpu = Self::with_cpu(cpu, self.jit_config);
        vcpu.delivery = self.delivery;
        gate.add_member(&vcpu.events);
        vcpu
    }

    /// The machine's gate ([`crate::smp::Gate::pause`] holds every vCPU at a block
    /// boundary), created on first use; [`Emulator::new_vcpu`] shares it. A vCPU with a
    /// gate that halts with interrupts off sleeps until an NMI, INIT or stop request
    /// unless every vCPU of the machine is in that state (then the run ends with
    /// [`StopReason::Halted`] as without one).
    pub fn attach_gate(&mut self) -> Arc<crate::smp::Gate> {
        self.cpu
            .gate
            .get_or_insert_with(|| {
                let gate = Arc::new(crate::smp::Gate::default());
                gate.add_member(&self.events);
                gate
            })
            .clone()
    }

    /// Whether the vCPU runs or waits for a start-up IPI.
    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// Sets whether the vCPU runs or waits for a start-up IPI (a platform starting an
    /// application processor by other means sets [`Activity::Active`]).
    pub fn set_activity(&mut self, activity: Activity) {
        self.activity = activity;
    }

    fn make_jit(config: JitConfig) -> Option<Jit> {
        if config.enabled {
            Jit::new(config)
        } else {
            None
        }
    }

    /// Configures the compiling tier ([`crate::jit`]). By default hot blocks are compiled
    /// (unless the `QUETZAL_JIT` environment variable says otherwise, see
    /// [`JitConfig::from_env`]); `enabled: false` leaves everything to the interpreter.
    pub fn set_jit_config(&mut self, config: JitConfig) {
        if let Some(jit) = self.jit.as_mut() {
            // Blocks must not keep pointers into the code this `Jit` frees.
            jit.flush(&mut self.cache);
        }
        self.jit = Self::make_jit(config);
        self.jit_config = config;
    }

    /// Counters of the compiling tier, if it is enabled.
    pub fn jit_stats(&self) -> Option<JitStats> {
        self.jit.as_ref().map(|j| j.stats)
    }

    /// Chooses who handles exceptions and software interrupts (see [`InterruptDelivery`]).
    pub fn set_interrupt_delivery(&mut self, delivery: InterruptDelivery) {
        self.delivery = delivery;
    }

    /// Maps `size` bytes of zeroed RAM at `addr` (both 4 KiB aligned).
    ///
    /// # Errors
    ///
    /// [`EmuError::Ram`] for unaligned, overlapping or unallocatable ranges.
    pub fn map_memory(&mut self, addr: u64, size: u64) -> Result<(), EmuError> {
        self.cpu.mmu.add_ram(addr, size)?;
        Ok(())
    }

    /// Writes `data` at `addr`. Translated code there is dropped.
    ///
    /// # Errors
    ///
    /// [`EmuError::Memory`] if any byte is unmapped (nothing is written then).
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), EmuError> {
        self.cpu.mmu.write_bytes(addr, data)?;
        self.drop_written_code();
        Ok(())
    }

    /// Reads `buf.len()` bytes at `addr`.
    ///
    /// # Errors
    ///
    /// [`EmuError::Memory`] if any byte is unmapped.
    pub fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), EmuError> {
        self.cpu.mmu.read_bytes(addr, buf)?;
        Ok(())
    }

    /// The CPU state.
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    /// The CPU state, mutably.
    pub fn cpu_mut(&mut self) -> &mut Cpu {
        &mut self.cpu
    }

    /// Reads a register: any GPR (8/16/32/64-bit names), RIP (EIP/IP: the offset in CS),
    /// ES/CS/SS/DS (their selectors), FS/GS (their bases), CR0/CR2/CR3/CR4/CR8.
    ///
    /// # Errors
    ///
    /// [`EmuError::UnsupportedRegister`] for other registers.
    pub fn reg(&self, r: Register) -> Result<u64, EmuError> {
        use crate::translate::register_number as num;
        let cpu = &self.cpu;
        Ok(match r {
            Register::RIP | Register::EIP => cpu.rip,
            Register::FS => cpu.seg_base[crate::cpu::seg::FS as usize],
            Register::GS => cpu.seg_base[crate::cpu::seg::GS as usize],
            Register::ES | Register::CS | Register::SS | Register::DS => {
                cpu.seg_sel[num(r) as usize] as u64
            }
            Register::CR0 => cpu.sys.cr0,
            Register::CR2 => cpu.sys.cr2,
            Register::CR3 => cpu.sys.cr3,
            Register::CR4 => cpu.sys.cr4,
            Register::CR8 => match &cpu.apic {
                Some(apic) => (apic.lock().tpr() >> 4) as u64,
                None => cpu.sys.cr8,
            },
            r if r.is_gpr64() => cpu.reg::<8>(num(r)),
            r if r.is_gpr32() => cpu.reg::<4>(num(r)),
            r if r.is_gpr16() => cpu.reg::<2>(num(r)),
            r if r.is_gpr8() => cpu.reg::<1>(num(r)),
            r => return Err(EmuError::UnsupportedRegister(r)),
        })
    }

    /// Writes a register, with the same coverage as [`Emulator::reg`]. Writing FS or GS
    /// sets the segment base (FS_BASE / GS_BASE).
    ///
    /// # Errors
    ///
    /// [`EmuError::UnsupportedRegister`] for other registers.
    pub fn set_reg(&mut self, r: Register, value: u64) -> Result<(), EmuError> {
        use crate::translate::register_number as num;
        let cpu = &mut self.cpu;
        match r {
            Register::RIP => cpu.rip = value,
            Register::FS => cpu.seg_base[crate::cpu::seg::FS as usize] = value,
            Register::GS => cpu.seg_base[crate::cpu::seg::GS as usize] = value,
            r if r.is_gpr64() => cpu.set_reg::<8>(num(r), value),
            r if r.is_gpr32() => cpu.set_reg::<4>(num(r), value),
            r if r.is_gpr16() => cpu.set_reg::<2>(num(r), value),
            r if r.is_gpr8() => cpu.set_reg::<1>(num(r), value),
            r => return Err(EmuError::UnsupportedRegister(r)),
        }
        Ok(())
    }

    /// Maps `device` at I/O ports `base..base + len` (IN, OUT, INS, OUTS).
    ///
    /// # Errors
    ///
    /// [`EmuError::Bus`] for an empty range or one overlapping another device.
    pub fn add_io_device(
        &mut self,
        base: u16,
        len: u16,
        device: SharedDevice,
    ) -> Result<(), EmuError> {
        let mut bus = (*self.cpu.io).clone();
        bus.insert(base as u64, len as u64, device)?;
        self.cpu.io = Arc::new(bus);
        Ok(())
    }

    /// Maps `device` at physical addresses `base..base + len` that are not RAM (MMIO).
    ///
    /// # Errors
    ///
    /// [`EmuError::Bus`] for an empty range or one overlapping another device.
    pub fn add_mmio_device(
        &mut self,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), EmuError> {
        self.mmio.insert(base, len, device)?;
        self.cpu.mmu.set_mmio_bus(Arc::new(self.mmio.clone()));
        Ok(())
    }

    /// Chooses what data accesses to physical addresses that are neither RAM nor a device
    /// do. With `None` (the default, Unicorn's contract) the run stops with
    /// [`StopReason::Unmapped`]. With a handler they complete as on a PC's bus: reads
    /// return all ones, writes are dropped, and the handler is told of each (platforms log
    /// them). Instruction fetches from nothing stop the run either way: there is no
    /// instruction to execute there.
    pub fn set_unassigned_mmio(&mut self, handler: Option<emu_mmu::UnassignedHandler>) {
        self.mmio.set_unassigned(handler);
        self.cpu.mmu.set_mmio_bus(Arc::new(self.mmio.clone()));
    }

    /// The machine's virtual clock, for devices that must agree with the TSC.
    pub fn clock(&self) -> emu_mmu::clock::VirtualClock {
        self.cpu.clock.clone()
    }

    /// A handle that stops a run from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::new([self.events.clone()]))
    }

    /// The handle through which a platform raises external interrupts and NMIs. They are
    /// delivered through the guest's IDT under [`InterruptDelivery::Guest`].
    pub fn interrupt_line(&self) -> InterruptLine {
        InterruptLine(self.events.clone())
    }

    /// Attaches the vCPU's local interrupt controller (its local APIC). From now on:
    ///
    /// - external interrupts come from the controller: [`InterruptLine::notify`] marks
    ///   one possible, and the CPU takes it with
    ///   [`LocalInterruptController::acknowledge`] when RFLAGS.IF allows (under
    ///   [`InterruptDelivery::Guest`]); HLT sleeps until then. The request register of
    ///   [`InterruptLine::raise`] is no longer looked at (NMIs and stop requests work as
    ///   before);
    /// - RDMSR/WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE and the x2APIC MSRs
    ///   (0x800..=0x8FF) go to the controller first;
    /// - MOV to/from CR8 reads and writes the controller's task priority;
    /// - CPUID advertises the APIC, x2APIC, the TSC-deadline timer and ARAT, with
    ///   [`Cpu::apic_id`] as the initial APIC ID.
    ///
    /// The platform typically maps the same object as the APIC's MMIO page
    /// ([`Emulator::add_mmio_device`]) and gives the controller this vCPU's
    /// [`Emulator::interrupt_line`] to notify. [`Emulator::reset`] leaves the controller
    /// alone: resetting the APIC with its CPU is the platform's job.
    pub fn set_interrupt_controller(
        &mut self,
        controller: Arc<Mutex<dyn LocalInterruptController>>,
    ) {
        self.cpu.apic = Some(AttachedController(controller));
        // A notification may have arrived before the controller was attached.
        self.events.notify_intr();
    }

    /// Adds a hook run before every instruction. Runs with code hooks are slower: each
    /// instruction is dispatched separately.
    pub fn add_code_hook(&mut self, hook: CodeHook) {
        self.code_hooks.push(hook);
    }

    /// Adds a hook run on every data read and write. While memory hooks are installed
    /// the soft TLB is bypassed.
    pub fn add_mem_hook(&mut self, hook: Box<dyn FnMut(&MemAccessEvent) + Send>) {
        self.cpu.mmu.add_hook(hook);
    }

    /// Adds a hook run on exceptions, software interrupts and SYSCALL.
    pub fn add_interrupt_hook(&mut self, hook: InterruptHook) {
        self.interrupt_hooks.push(hook);
    }

    /// Adds a hook told of every event delivered through the guest's IDT (exceptions,
    /// software interrupts, external interrupts and NMIs) under
    /// [`InterruptDelivery::Guest`]; see [`DeliveryHook`]. Unlike an interrupt hook it
    /// cannot handle the event, so it never changes what the guest sees; it costs nothing
    /// on the execution path (it runs only when an event is delivered). Tracing uses it.
    pub fn add_delivery_hook(&mut self, hook: DeliveryHook) {
        self.delivery_hooks.push(hook);
    }

    /// Adds a hook told of every block as it is translated; see [`BlockHook`]. It runs on
    /// the translation path only, so cached code runs at full speed (QEMU's `-d in_asm`
    /// has the same meaning: each block once, when translated).
    pub fn add_block_hook(&mut self, hook: BlockHook) {
        self.block_hooks.push(hook);
    }

    /// Removes every hook.
    pub fn clear_hooks(&mut self) {
        self.code_hooks.clear();
        self.interrupt_hooks.clear();
        self.delivery_hooks.clear();
        self.block_hooks.clear();
        self.cpu.mmu.clear_hooks();
    }

    /// Number of translated blocks currently cached.
    pub fn cached_blocks(&self) -> usize {
        self.cache.len()
    }

    /// The state of segment register `sreg` (ES, CS, SS, DS, FS or GS), hidden part
    /// included.
    ///
    /// # Errors
    ///
    /// [`EmuError::UnsupportedRegister`] for anything but a segment register.
    pub fn segment(&self, sreg: Register) -> Result<SegmentState, EmuError> {
        if !sreg.is_segment_register() {
            return Err(EmuError::UnsupportedRegister(sreg));
        }
        let i = crate::translate::register_number(sreg) as usize;
        let cpu = &self.cpu;
        Ok(SegmentState {
            selector: cpu.seg_sel[i],
            base: cpu.seg_base[i],
            limit: cpu.seg_limit[i],
            attributes: cpu.seg_attr[i],
        })
    }

    /// Puts the vCPU in the architectural power-on state: real mode at CS:IP = F000:FFF0,
    /// so the first instruction is fetched from physical 0xFFFF_FFF0 (map firmware
    /// there). Continue with [`Emulator::resume`]. Memory, devices and hooks stay.
    pub fn reset(&mut self) {
        self.cpu.reset();
        self.cache.flush_jump_cache();
    }

    /// Runs from `begin` (an offset in the current code segment: the linear address in
    /// 64-bit code) until a stop condition or a guest event.
    pub fn run(&mut self, begin: u64, options: &RunOptions) -> StopReason {
        self.cpu.rip = begin;
        self.resume(options)
    }

    /// Runs from the current instruction pointer (after [`Emulator::reset`], or to
    /// continue after a stop) until a stop condition or a guest event.
    pub fn resume(&mut self, options: &RunOptions) -> StopReason {
        self.events.clear(events::STOP);
        let Some(gate) = self.cpu.gate.clone() else {
            return self.run_loop(options);
        };
        // Counted in while running guest code, so exclusive sections wait for this vCPU.
        let stop = if gate.enter(&self.events) {
            self.run_loop(options)
        } else {
            self.events.clear(events::STOP);
            StopReason::StopRequested
        };
        gate.leave();
        stop
    }

    /// [`Emulator::resume`]'s loop (counted in at the gate, when there is one).
    fn run_loop(&mut self, options: &RunOptions) -> StopReason {
        let deadline = options.timeout.map(|t| Instant::now() + t);
        self.deadline = deadline;
        let mut budget = options.max_instructions.unwrap_or(u64::MAX);
        let until = options.until;
        let mut until_clock = TIMEOUT_CHECK_BLOCKS;
        loop {
            if self.cpu.fetch_mapping_changed {
                self.cpu.fetch_mapping_changed = false;
                self.cache.flush_jump_cache();
            }
            if self.cpu.privilege_changed {
                self.cpu.privilege_changed = false;
                self.cache.set_user_mode(self.cpu.sys.cpl == 3);
            }
            if self.activity == Activity::WaitForStartup {
                if let Some(stop) = self.wait_for_startup() {
                    return stop;
                }
                continue;
            }
            let rip = self.cpu.rip;
            if Some(rip) == until {
                return StopReason::ReachedEnd;
            }
            if budget == 0 {
                return StopReason::InstructionLimit;
            }
            let pending = self.events.pending();
            if pending != 0 {
                if pending & events::STOP != 0 {
                    self.events.clear(events::STOP);
                    return StopReason::StopRequested;
                }
                if pending & (events::KICK | events::INIT | events::SIPI) != 0 {
                    if let Some(stop) = self.take_processor_event(pending) {
                        return stop;
                    }
                    continue;
                }
                if let Some(stop) = self.take_external_event(pending) {
                    return stop;
                }
                if self.cpu.rip != rip {
                    continue;
                }
            }
            until_clock -= 1;
            if until_clock == 0 {
                until_clock = TIMEOUT_CHECK_BLOCKS;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return StopReason::Timeout;
                }
            }
            if self.cpu.mmu.memory_changed() {
                // A device or another vCPU wrote guest RAM: drop translations of code
                // they overwrote.
                self.cpu.mmu.catch_up();
                self.drop_written_code();
            }
            let page = self.cpu.mmu.fetch_page(self.cpu.code_linear(rip));
            let idx = match page.and_then(|page| self.cache.lookup_fast(rip, page)) {
                Some(idx) => idx,
                None => match self.find_or_translate(rip) {
                    Ok(idx) => idx,
                    Err(trap) => match self.deliver(trap, rip) {
                        Some(stop) => return stop,
                        None => continue,
                    },
                },
            };
            let block = self.cache.block(idx);
            let mut limit = block.insns.len();
            if budget < limit as u64 {
                limit = budget as usize;
            }
            if self.cpu.interrupt_shadow {
                // One instruction runs in the shadow; interrupts are looked at after it.
                limit = limit.min(1);
            }
            if let Some(u) = until {
                if u > block.rip && u < block.end_rip {
                    if let Some(i) = block.insns.iter().position(|i| i.rip == u) {
                        limit = limit.min(i);
                    }
                }
            }
            // Whole-block runs without code hooks may use (and warm up) compiled code.
            let compiled = match self.jit.as_mut() {
                Some(jit) if limit == block.insns.len() && self.code_hooks.is_empty() => {
                    jit.enter(&mut self.cpu, &mut self.cache, idx)
                }
                _ => None,
            };
            let block = self.cache.block(idx);
            let (executed, result) = if let Some(code) = compiled {
                let chain = until.is_none();
                self.run_compiled_chain(code, budget, chain)
            } else if self.code_hooks.is_empty() {
                run_block(&mut self.cpu, block, limit)
            } else {
                match run_block_hooked(&mut self.cpu, block, limit, &mut self.code_hooks) {
                    Some(r) => r,
                    None => return StopReason::HookRequested,
                }
            };
            self.cpu.icount += executed as u64;
            budget -= executed as u64;
            if executed > 0 && limit == 1 {
                self.cpu.interrupt_shadow = false;
            }
            if self.cpu.mmu.code_written() {
                self.drop_written_code();
            }
            if let Err((trap, insn_rip)) = result {
                if let Some(stop) = self.deliver(trap, insn_rip) {
                    return stop;
                }
            }
        }
    }

    /// Runs compiled block `code` and, if `chain`, the compiled blocks it leads to, for as
    /// long as nothing needs the run loop: no trap, no pending event, no change of fetch
    /// mapping or privilege, no written code, room in the instruction budget. This is
    /// where compiled code spends its time. Blocks follow their direct links themselves
    /// (see [`jit::LinkSlot`]); when one returns here, this loop looks up where execution
    /// goes next, fills the link slot the block named, and goes on.
    fn run_compiled_chain(
        &mut self,
        mut code: jit::CompiledBlock,
        budget: u64,
        chain: bool,
    ) -> BlockOutcome {
        /// Times the blocks return here before the run loop looks at timeouts again.
        const MAX_CHAIN: u32 = 256;
        /// Instructions linked blocks may run before they return here.
        const LINK_FUEL: u64 = 1 << 14;
        let margin = crate::translate::MAX_BLOCK_INSNS as u64;
        let (jump_cache, jump_salt) = self.cache.jump_cache_address();
        let mut ctx = jit::JitCtx {
            generation: self.cache.link_generation(),
            events: self.events.pending_word(),
            jump_cache,
            jump_salt,
            ..Default::default()
        };
        let mut done = 0u64;
        for _ in 0..MAX_CHAIN {
            let left = budget - done;
            ctx.fuel = if chain && left > 2 * margin {
                (left - 2 * margin).min(LINK_FUEL) as i64
            } else {
                0
            };
            let fuel = ctx.fuel;
            // SAFETY: `code` was compiled from a block that is still cached, the code
            // region has not been flushed since (flushes reset every block), and the
            // context carries the cache's current link generation.
            unsafe { jit::run_compiled(&mut self.cpu, &mut ctx, code) };
            done += (fuel - ctx.fuel) as u64;
            if let Some(trap) = ctx.take_trap() {
                // SAFETY: the trapping block stored its own record, which lives as long
                // as the block, still cached.
                let insn = unsafe { &*ctx.trap_insn };
                let (k, r) = settle_trap(&mut self.cpu, insn, *trap, 0);
                return ((done as usize) + k, r);
            }
            let cpu = &self.cpu;
            if !chain
                || cpu.mmu.code_written()
                || cpu.fetch_mapping_changed
                || cpu.privilege_changed
                || cpu.interrupt_shadow
                || cpu.mmu.memory_changed()
                || self.events.pending() != 0
                || budget - done < margin
            {
                break;
            }
            // Compiled blocks are 64-bit code, where RIP is the linear address.
            let Some(page) = cpu.mmu.fetch_page(cpu.rip) else {
                break;
            };
            let Some((_, next)) = self.cache.lookup_compiled(cpu.rip, page) else {
                break;
            };
            if !ctx.last_link.is_null() {
                // SAFETY: the slot belongs to the block that just ran, still cached (no
                // code was written and nothing was dropped since, checked above); only
                // this thread writes slots, and no reference to them exists.
                unsafe {
                    let slot = &mut *ctx.last_link;
                    // An exit that skips the fetch-TLB check links only to its own page.
                    if slot.fixed_page == u64::MAX || slot.fixed_page == page {
                        slot.code = next as usize as u64;
                        slot.generation = ctx.generation;
                        slot.page = page;
                    }
                }
            }
            code = next;
        }
        (done as usize, Ok(()))
    }

    fn find_or_translate(&mut self, rip: u64) -> Result<u32, Trap> {
        let linear = self.cpu.code_linear(rip);
        let phys = self.cpu.mmu.translate(linear, emu_mmu::Access::Fetch)?;
        let mode = self.cpu.mode_key();
        if let Some(idx) = self.cache.lookup(phys, rip, mode) {
            return Ok(idx);
        }
        let block = translate_block(&mut self.cpu, rip)?;
        for hook in &mut self.block_hooks {
            hook(&mut self.cpu, block.rip, block.end_rip);
        }
        Ok(self.cache.insert(phys, mode, block))
    }

    fn drop_written_code(&mut self) {
        if self.cpu.mmu.take_lost_track() {
            if let Some(jit) = self.jit.as_mut() {
                jit.flush(&mut self.cache);
            }
            self.cache.flush();
        }
        for page in self.cpu.mmu.take_written_code_pages() {
            self.cache.invalidate_page(page);
        }
    }

    /// Handles a kick from the machine's gate, INIT and start-up IPIs. `Some` ends the
    /// run (a stop request arrived while waiting at the gate).
    fn take_processor_event(&mut self, pending: u32) -> Option<StopReason> {
        if pending & events::KICK != 0 {
            self.events.clear(events::KICK);
            if let Some(gate) = self.cpu.gate.clone() {
                if !gate.checkpoint(&self.events) {
                    self.events.clear(events::STOP);
                    return Some(StopReason::StopRequested);
                }
            }
        }
        if pending & events::INIT != 0 {
            self.events.clear(events::INIT);
            self.init();
        }
        if pending & events::SIPI != 0 && self.activity == Activity::Active {
            // A start-up IPI to a running processor is ignored.
            self.events.clear(events::SIPI);
        }
        None
    }

    /// INIT: the processor state goes to its power-up values (real mode at the reset
    /// vector, paging off, caches of translations dropped) and the vCPU waits for a
    /// start-up IPI. The local APIC, the TSC and the APIC ID are left alone.
    fn init(&mut self) {
        self.cpu.reset();
        self.cache.flush_jump_cache();
        // Start-up IPIs raised after the INIT (often within microseconds of it) stay
        // pending: they are what starts the processor again.
        self.events.clear(events::NMI);
        self.activity = Activity::WaitForStartup;
    }

    /// Waits, counted out at the gate, for a start-up IPI, and starts at its page. `Some`
    /// ends the run (a stop request or the run's time limit).
    fn wait_for_startup(&mut self) -> Option<StopReason> {
        let wanted = events::STOP | events::SIPI | events::INIT;
        let Some(woke) = self.sleep(wanted, true) else {
            return Some(StopReason::Halted);
        };
        if woke & events::STOP != 0 {
            self.events.clear(events::STOP);
            return Some(StopReason::StopRequested);
        }
        if woke & events::INIT != 0 {
            self.events.clear(events::INIT);
            return None;
        }
        if woke & events::SIPI == 0 {
            return Some(StopReason::Timeout);
        }
        let vector = self.events.take_startup();
        let cs = crate::cpu::seg::CS as usize;
        self.cpu.seg_sel[cs] = (vector as u16) << 8;
        self.cpu.seg_base[cs] = (vector as u64) << 12;
        self.cpu.seg_limit[cs] = 0xffff;
        self.cpu.seg_attr[cs] = crate::cpu::attr::REAL_CODE;
        self.cpu.rip = 0;
        self.cpu.update_mode();
        self.cpu.fetch_mapping_changed = true;
        self.activity = Activity::Active;
        None
    }

    /// Sleeps until one of `wanted` is pending or the run's time limit passes, counted
    /// out at the gate meanwhile (an exclusive section need not wait for a sleeper).
    /// Returns the pending bits (none of `wanted` on a timeout). `dormant`: only another
    /// processor can wake this one (waiting for a start-up IPI, or halted with interrupts
    /// off); `None` when every vCPU of the machine is dormant, which nothing can end.
    fn sleep(&mut self, wanted: u32, dormant: bool) -> Option<u32> {
        let Some(gate) = self.cpu.gate.clone() else {
            return Some(self.events.wait(wanted, self.deadline));
        };
        let alive = gate.sleep_begin(dormant);
        let woke = if alive {
            self.events.wait(wanted, self.deadline)
        } else {
            0
        };
        if !gate.sleep_end(dormant, &self.events) {
            return Some(woke | events::STOP);
        }
        alive.then_some(woke)
    }

    /// Handles a trap; `Some` ends the run.
    fn deliver(&mut self, trap: Trap, insn_rip: u64) -> Option<StopReason> {
        let event = match trap {
            Trap::EndBlock => return None,
            Trap::Halt if self.delivery == InterruptDelivery::Guest => return self.halt(),
            Trap::Halt => return Some(StopReason::Halted),
            // A data access to a non-canonical address is #GP(0) before it is anything
            // else (hardware raises #SS(0) for stack references; this is a bare CPU without
            // segments, so #GP it is).
            Trap::Memory(MemFault::NonCanonical { access, .. })
                if access != emu_mmu::Access::Fetch =>
            {
                InterruptEvent::Exception(Exception::GeneralProtection(0))
            }
            Trap::Memory(MemFault::PageFault { addr, error_code }) => {
                InterruptEvent::Exception(Exception::PageFault {
                    addr,
                    code: error_code,
                })
            }
            Trap::Memory(fault) => {
                return Some(StopReason::Unmapped {
                    fault,
                    rip: insn_rip,
                })
            }
            Trap::Exception(e) => InterruptEvent::Exception(e),
            Trap::SoftwareInterrupt(v) => InterruptEvent::Software(v),
            Trap::Syscall => InterruptEvent::Syscall,
        };
        for hook in &mut self.interrupt_hooks {
            if hook(&mut self.cpu, event) {
                return None;
            }
        }
        if self.delivery == InterruptDelivery::Guest {
            match event {
                InterruptEvent::Exception(e) => {
                    return self.deliver_to_guest(
                        e.vector(),
                        e.error_code(),
                        EventKind::Exception,
                        fault_class(e),
                        Some(e),
                    );
                }
                InterruptEvent::Software(v) => {
                    return self.deliver_to_guest(
                        v,
                        None,
                        EventKind::Software,
                        FaultClass::Benign,
                        None,
                    );
                }
                // SYSCALL with EFER.SCE clear is #UD on a real processor.
                InterruptEvent::Syscall => {
                    let ud = Exception::InvalidOpcode;
                    self.cpu.rip = insn_rip;
                    return self.deliver_to_guest(
                        ud.vector(),
                        None,
                        EventKind::Exception,
                        fault_class(ud),
                        Some(ud),
                    );
                }
            }
        }
        Some(match event {
            InterruptEvent::Exception(exception) => StopReason::Exception {
                exception,
                rip: insn_rip,
            },
            InterruptEvent::Software(vector) => StopReason::SoftwareInterrupt {
                vector,
                rip: self.cpu.rip,
            },
            InterruptEvent::Syscall => StopReason::Syscall { rip: self.cpu.rip },
        })
    }

    /// Delivers a pending NMI or external interrupt if the CPU accepts one now.
    fn take_external_event(&mut self, pending: u32) -> Option<StopReason> {
        if self.delivery != InterruptDelivery::Guest || self.cpu.interrupt_shadow {
            return None;
        }
        if pending & events::NMI != 0 && !self.cpu.sys.nmi_blocked {
            self.events.clear(events::NMI);
            self.cpu.sys.nmi_blocked = true;
            return self.deliver_to_guest(2, None, EventKind::External, FaultClass::Benign, None);
        }
        if pending & events::INTR != 0 && self.cpu.rflags_other & crate::flags::IF != 0 {
            if let Some(vector) = self.take_interrupt() {
                return self.deliver_to_guest(
                    vector,
                    None,
                    EventKind::External,
                    FaultClass::Benign,
                    None,
                );
            }
        }
        None
    }

    /// Takes the highest-priority external interrupt: from the attached controller, or
    /// from the request register without one.
    #[inline]
    fn take_interrupt(&mut self) -> Option<u8> {
        match &self.cpu.apic {
            Some(apic) => {
                // Clear first: a notify racing with the question sets INTR again and is
                // answered by the next question, never lost.
                self.events.clear(events::INTR);
                apic.lock().acknowledge()
            }
            None => self.events.take_interrupt(),
        }
    }

    /// HLT under guest delivery. With interrupts enabled the CPU sleeps until an
    /// interrupt, an NMI or a stop request arrives (or the run's time limit passes). With
    /// interrupts disabled only an NMI could ever wake it, so the run ends with
    /// [`StopReason::Halted`] and the embedder decides (a platform that sends an NMI simply
    /// runs again).
    fn halt(&mut self) -> Option<StopReason> {
        if self.cpu.rflags_other & crate::flags::IF == 0 {
            let nmi_waiting = !self.cpu.sys.nmi_blocked && self.events.pending() & events::NMI != 0;
            if nmi_waiting {
                return None;
            }
            if self.cpu.gate.is_none() {
                return Some(StopReason::Halted);
            }
            // One of several processors: it sleeps until an NMI, INIT or stop request
            // (from another processor) arrives, unless none is left to send one.
            let wanted =
                events::STOP | events::INIT | (events::NMI * u32::from(!self.cpu.sys.nmi_blocked));
            return match self.sleep(wanted, true) {
                None => Some(StopReason::Halted),
                Some(woke) if woke & wanted == 0 => Some(StopReason::Timeout),
                Some(_) => None,
            };
        }
        let mut wanted = events::STOP | events::INTR;
        if !self.cpu.sys.nmi_blocked {
            wanted |= events::NMI;
        }
        loop {
            let woke = self.sleep(wanted, false).unwrap_or(0);
            if woke & wanted == 0 {
                return Some(StopReason::Timeout);
            }
            if self.cpu.apic.is_none() || woke & wanted & (events::STOP | events::NMI) != 0 {
                return None;
            }
            // Only INTR, from a controller: take the interrupt here, so that a
            // notification that finds nothing deliverable (TPR, an interrupt already in
            // service) does not end the HLT as no real interrupt would.
            if let Some(vector) = self.take_interrupt() {
                return self.deliver_to_guest(
                    vector,
                    None,
                    EventKind::External,
                    FaultClass::Benign,
                    None,
                );
            }
        }
    }

    /// Delivers an event through the guest's IDT, applying the double-fault rules to
    /// faults raised by the delivery itself. `Some` ends the run (triple fault, or a
    /// delivery that touched unmapped memory).
    fn deliver_to_guest(
        &mut self,
        mut vector: u8,
        mut error_code: Option<u32>,
        mut kind: EventKind,
        mut class: FaultClass,
        mut exception: Option<Exception>,
    ) -> Option<StopReason> {
        loop {
            if let Some(Exception::PageFault { addr, .. }) = exception {
                self.cpu.sys.cr2 = addr;
            }
            if !self.delivery_hooks.is_empty() {
                let event = Delivery {
                    vector,
                    error_code,
                    kind,
                    exception,
                };
                for hook in &mut self.delivery_hooks {
                    hook(&mut self.cpu, &event);
                }
            }
            let second = match interrupt::deliver(&mut self.cpu, vector, error_code, kind) {
                Ok(()) => return None,
                Err(Trap::Exception(e)) => e,
                Err(Trap::Memory(MemFault::PageFault { addr, error_code })) => {
                    Exception::PageFault {
                        addr,
                        code: error_code,
                    }
                }
                Err(Trap::Memory(MemFault::NonCanonical { .. })) => Exception::GeneralProtection(0),
                Err(Trap::Memory(fault)) => {
                    return Some(StopReason::Unmapped {
                        fault,
                        rip: self.cpu.rip,
                    })
                }
                Err(_) => return Some(StopReason::TripleFault { rip: self.cpu.rip }),
            };
            match escalate(class, second) {
                Escalation::TripleFault => {
                    return Some(StopReason::TripleFault { rip: self.cpu.rip })
                }
                Escalation::DoubleFault => {
                    vector = Exception::DoubleFault.vector();
                    error_code = Some(0);
                    class = FaultClass::DoubleFault;
                    exception = Some(Exception::DoubleFault);
                }
                Escalation::Serial => {
                    vector = second.vector();
                    error_code = second.error_code();
                    class = fault_class(second);
                    exception = Some(second);
                }
            }
            // A fault raised while delivering an external event keeps EXT; otherwise the
            // event is now an exception (no gate-DPL check).
            if kind != EventKind::External {
                kind = EventKind::Exception;
            }
        }
    }
}

/// A segment register: the visible selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentState {
    /// The selector.
    pub selector: u16,
    /// Linear base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u32,
    /// Attributes, packed as [`crate::descriptor::Descriptor::attributes`].
    pub attributes: u16,
}

/// Outcome of running (part of) a block: instructions retired, and the trap that ended
/// it with the address of the instruction that raised it.
type BlockOutcome = (usize, Result<(), (Trap, u64)>);

/// Sets RIP after a trap from the instruction at `insn`: faults leave RIP on the
/// instruction, completed events move it past, `EndBlock` keeps what the handler set.
#[inline]
fn settle_trap(cpu: &mut Cpu, insn: &crate::insn::Insn, trap: Trap, n: usize) -> BlockOutcome {
    match trap {
        Trap::Exception(_) | Trap::Memory(_) => {
            cpu.rip = insn.rip;
            (n, Err((trap, insn.rip)))
        }
        Trap::EndBlock => (n + 1, Err((trap, insn.rip))),
        Trap::Halt | Trap::SoftwareInterrupt(_) | Trap::Syscall => {
            cpu.rip = insn.next_rip();
            (n + 1, Err((trap, insn.rip)))
        }
    }
}

/// Executes the first `limit` instructions of `block`: the hot loop.
#[inline]
fn run_block(cpu: &mut Cpu, block: &Block, limit: usize) -> BlockOutcome {
    if block.has_locked {
        run_block_with::<true>(cpu, block, limit)
    } else {
        run_block_with::<false>(cpu, block, limit)
    }
}

/// Executes one instruction: through its handler, atomically if it is locked.
#[inline(always)]
fn exec_insn<const LOCKS: bool>(cpu: &mut Cpu, insn: &crate::insn::Insn) -> crate::insn::Step {
    if LOCKS && insn.flags & crate::insn::LOCKED != 0 {
        crate::exec::locked::exec_locked(cpu, insn)
    } else {
        (insn.exec)(cpu, insn)
    }
}

/// [`run_block`] for blocks with (`LOCKS`) or without locked instructions.
#[inline(always)]
fn run_block_with<const LOCKS: bool>(cpu: &mut Cpu, block: &Block, limit: usize) -> BlockOutcome {
    let insns = &block.insns[..limit];
    for (n, insn) in insns.iter().enumerate() {
        if let Err(trap) = exec_insn::<LOCKS>(cpu, insn) {
            return settle_trap(cpu, insn, *trap, n);
        }
        if cpu.mmu.code_written() {
            // The instruction stored into translated code: the rest of this block may be
            // stale, so leave it now.
            let sets_rip = n + 1 == block.insns.len() && block.ends_in_branch;
            if !sets_rip {
                cpu.rip = insn.next_rip();
            }
            return (n + 1, Ok(()));
        }
    }
    finish_block(cpu, block, limit);
    (limit, Ok(()))
}

#[inline(always)]
fn finish_block(cpu: &mut Cpu, block: &Block, limit: usize) {
    if limit < block.insns.len() {
        cpu.rip = block.insns[limit].rip;
    } else if !block.ends_in_branch {
        cpu.rip = block.end_rip;
    }
}

/// As [`run_block`], calling the code hooks before each instruction. `None` means a hook
/// asked to stop (RIP is at the instruction it was called for).
fn run_block_hooked(
    cpu: &mut Cpu,
    block: &Block,
    limit: usize,
    hooks: &mut [CodeHook],
) -> Option<BlockOutcome> {
    for (n, insn) in block.insns[..limit].iter().enumerate() {
        cpu.rip = insn.rip;
        for hook in hooks.iter_mut() {
            if hook(cpu, insn.rip, insn.len) == HookAction::Stop {
                cpu.icount += n as u64;
                return None;
            }
        }
        if cpu.rip != insn.rip {
            return Some((n, Ok(())));
        }
        if let Err(trap) = exec_insn::<true>(cpu, insn) {
            return Some(settle_trap(cpu, insn, *trap, n));
        }
        if cpu.mmu.code_written() {
            let sets_rip = n + 1 == block.insns.len() && block.ends_in_branch;
            if !sets_rip {
                cpu.rip = insn.next_rip();
            }
            return Some((n + 1, Ok(())));
        }
    }
    finish_block(cpu, block, limit);
    Some((limit, Ok(())))
}
