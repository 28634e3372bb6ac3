//! The local APIC (one per vCPU): xAPIC MMIO page and x2APIC MSRs over one state.
//!
//! Implements Intel SDM vol. 3 chapter 10 ("Advanced Programmable Interrupt Controller")
//! to the extent an operating system uses it: ID, version (0x14, six LVT entries), task,
//! processor and arbitration priority, EOI (with EOI broadcast to the IOAPIC for
//! level-triggered vectors), logical destination, spurious-vector register, the 256-bit
//! ISR/TMR/IRR, the error status register, the ICR (IPIs), the six LVT entries (timer,
//! thermal, performance counters, LINT0, LINT1, error) and the timer in one-shot,
//! periodic and TSC-deadline modes, counting on the machine's [`VirtualClock`].
//!
//! # Two halves: the registers and the input side
//!
//! [`LocalApic`] holds the registers and is shared as `Arc<Mutex<..>>` by its vCPU (which
//! acknowledges interrupts and reaches the MSRs), the MMIO bus (the register page) and
//! the machine's timer thread ([`LocalApic::next_deadline_ns`] / [`LocalApic::tick`]).
//!
//! Everything that *sends* the APIC an interrupt from elsewhere (the IOAPIC, MSIs, IPIs
//! from other vCPUs, the LINT0/LINT1 pins driven by the 8259 and NMI sources) goes
//! through a [`LapicInput`] instead, which never takes the APIC's lock: a request is
//! posted into an atomic 256-bit register and the vCPU is notified; the APIC folds the
//! posted requests into its IRR the next time it runs under its lock (at the latest when
//! the vCPU asks for an interrupt). Destination matching for routers also reads atomic
//! mirrors of ID, LDR and DFR.
//!
//! # Lock order
//!
//! The only locks taken while the APIC's lock is held are the ones behind its injected
//! callbacks: the EOI broadcast (the IOAPIC's lock), the ExtINT acknowledge (the 8259's
//! lock), the IPI router and the timer listener (which must not lock any APIC). Nothing
//! takes the APIC's lock while holding the IOAPIC's or the 8259's lock, because their
//! way into an APIC is a [`LapicInput`]. So the order is always
//! `LAPIC -> IOAPIC -> (nothing)` and `LAPIC -> 8259 -> (nothing)`, and a device holding
//! its own lock may drive an IOAPIC pin or a LINT line freely.
//!
//! # Deviations
//!
//! The APIC base in IA32_APIC_BASE can be written but the page is not moved (the
//! machine maps it at [`APIC_BASE_ADDR`]). Delivery status bits always read 0 (delivery
//! is instantaneous). INIT, SIPI and SMI sent to oneself are ignored; to others they go
//! to the router. Directed EOI (EOI-broadcast suppression) is not offered. LINT pins in
//! fixed mode are edge-triggered (their remote IRR is not modelled).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use emu_mmu::clock::VirtualClock;
use emu_mmu::BusDevice;

use crate::irq::IrqLine;

/// Where the xAPIC register page is mapped (the architectural default).
pub const APIC_BASE_ADDR: u64 = 0xfee0_0000;
/// Size of the xAPIC register page.
pub const APIC_PAGE_SIZE: u64 = 0x1000;
/// Frequency of the timer's input clock before the divider, in Hz (CPUID leaf 0x16 and
/// the hypervisor timing leaf report the same).
pub const TIMER_HZ: u64 = 1_000_000_000;
/// Frequency of the TSC that TSC-deadline values count in, in Hz (the CPU's TSC runs on
/// the same virtual clock at this rate).
pub const TSC_HZ: u64 = 1_000_000_000;
/// The version register: version 0x14 (an integrated APIC), maximum LVT entry 5.
pub const VERSION: u32 = 0x0005_0014;

/// IA32_APIC_BASE bit 8: this is the bootstrap processor.
pub const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode.
pub const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: the APIC is enabled.
pub const BASE_ENABLE: u64 = 1 << 11;

/// The MSRs a local APIC answers besides the x2APIC range.
pub mod msr {
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_TSC_DEADLINE.
    pub const TSC_DEADLINE: u32 = 0x6e0;
    /// First x2APIC register MSR (MSR = `X2APIC_BASE + offset / 16`).
    pub const X2APIC_BASE: u32 = 0x800;
    /// Last MSR of the x2APIC range.
    pub const X2APIC_LAST: u32 = 0x8ff;
}

/// Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16).
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x20;
    /// Version.
    pub const VERSION: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Arbitration priority (xAPIC only).
    pub const APR: u32 = 0x90;
    /// Processor priority.
    pub const PPR: u32 = 0xa0;
    /// End of interrupt.
    pub const EOI: u32 = 0xb0;
    /// Remote read (xAPIC only; reads 0).
    pub const RRD: u32 = 0xc0;
    /// Logical destination.
    pub const LDR: u32 = 0xd0;
    /// Destination format (xAPIC only).
    pub const DFR: u32 = 0xe0;
    /// Spurious-interrupt vector.
    pub const SVR: u32 = 0xf0;
    /// In-service register, 8 x 32 bits at 16-byte strides.
    pub const ISR: u32 = 0x100;
    /// Trigger-mode register.
    pub const TMR: u32 = 0x180;
    /// Interrupt-request register.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low half.
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high half (xAPIC only).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance-monitoring counters.
    pub const LVT_PERF: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// Self IPI (x2APIC only, MSR 0x83F).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// LVT bit 16: masked.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer modes (bits 18:17).
const TIMER_MODE_SHIFT: u32 = 17;
const MODE_ONE_SHOT: u32 = 0;
const MODE_PERIODIC: u32 = 1;
const MODE_TSC_DEADLINE: u32 = 2;

/// SVR bit 8: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// SVR bits that can be written: vector, enable, focus-processor checking.
const SVR_WRITABLE: u32 = 0xff | SVR_ENABLE | 1 << 9;

/// ESR bit 5: an IPI with an illegal vector was sent.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: an interrupt with an illegal vector (0..15) was received.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;

/// LVT indices in [`LocalApic`]'s table, in register order.
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
/// Writable bits of each LVT entry (timer, thermal, perf, LINT0, LINT1, error). LINT1
/// has no level-triggered mode; the delivery-status and remote-IRR bits are read-only.
const LVT_WRITABLE: [u32; 6] = [
    0xff | LVT_MASKED | 3 << TIMER_MODE_SHIFT,
    0xff | 7 << 8 | LVT_MASKED,
    0xff | 7 << 8 | LVT_MASKED,
    0xff | 7 << 8 | 1 << 13 | 1 << 15 | LVT_MASKED,
    0xff | 7 << 8 | 1 << 13 | LVT_MASKED,
    0xff | LVT_MASKED,
];

/// How an APIC reaches its vCPU. The machine implements it over the vCPU's
/// `emu_core::InterruptLine` (`notify()` and `raise_nmi()`). Both are called from any
/// thread, possibly with APIC, IOAPIC or device locks held: they must not lock those.
pub trait CpuSignal: Send + Sync {
    /// An interrupt may be deliverable: the vCPU should ask
    /// [`LocalApic::acknowledge`] when its RFLAGS.IF allows, waking from HLT.
    fn interrupt(&self);
    /// Deliver an NMI to the vCPU.
    fn nmi(&self);
    /// Deliver INIT: the vCPU resets and waits for a start-up IPI.
    fn init(&self);
    /// Deliver a start-up IPI: a vCPU waiting for one starts in real mode at
    /// `vector << 12`.
    fn startup(&self, vector: u8);
}

/// An interrupt message's delivery mode (ICR, IOAPIC redirection entry and MSI bits
/// 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector, to every addressed APIC.
    Fixed,
    /// The vector, to one of the addressed APICs (the lowest-priority one).
    LowestPriority,
    /// A system-management interrupt.
    Smi,
    /// A non-maskable interrupt (vector ignored).
    Nmi,
    /// INIT.
    Init,
    /// Start-up IPI (the vector names the start page).
    StartUp,
    /// External interrupt: the vector comes from the 8259's acknowledge cycle.
    ExtInt,
    /// The reserved encoding 3.
    Reserved,
}

impl DeliveryMode {
    /// Decodes the 3-bit field.
    pub fn from_bits(bits: u64) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// An interrupt message on its way to local APICs: from an IOAPIC redirection entry, an
/// MSI or an IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMessage {
    /// The vector.
    pub vector: u8,
    /// The delivery mode.
    pub mode: DeliveryMode,
    /// Logical (`true`) or physical destination mode.
    pub logical: bool,
    /// The destination: an APIC ID (physical) or a logical mask; 8 bits except from
    /// x2APIC ICRs. 0xFF (xAPIC) or 0xFFFF_FFFF (x2APIC) physical is a broadcast.
    pub dest: u32,
    /// Level-triggered (the receiving APIC sets TMR and broadcasts its EOI).
    pub level: bool,
}

/// An IPI's destination shorthand (ICR bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field says who.
    None,
    /// Only the sender.
    ToSelf,
    /// Everyone, the sender included.
    AllIncludingSelf,
    /// Everyone but the sender.
    AllExcludingSelf,
}

/// An IPI that (also) addresses other APICs, handed to the injected router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// What is sent.
    pub message: InterruptMessage,
    /// The shorthand; with [`Shorthand::None`] the message's destination applies.
    pub shorthand: Shorthand,
    /// The sender's APIC ID (a router must not deliver to it again).
    pub source: u32,
}

/// The answer to an MSR access ([`LocalApic::read_msr`], [`LocalApic::write_msr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrResult {
    /// Not an APIC MSR.
    NotMine,
    /// Done (the value read; 0 for writes).
    Ok(u64),
    /// The access raises `#GP(0)`.
    Fault,
}

/// Called with a level-triggered vector when its EOI is broadcast (the IOAPIC's
/// [`crate::ioapic::IoApic::end_of_interrupt`]), under the APIC's lock.
pub type EoiBroadcast = Box<dyn FnMut(u8) + Send>;
/// The 8259's interrupt-acknowledge cycle for ExtINT delivery, under the APIC's lock.
pub type ExtIntAcknowledge = Box<dyn FnMut() -> Option<u8> + Send>;
/// Delivers an IPI to other APICs (through their [`LapicInput`]s), under the sender's
/// lock.
pub type IpiRouter = Box<dyn FnMut(&Ipi) + Send>;
/// Told the timer's new deadline (virtual-clock ns) whenever the guest reprograms it, so
/// the timer thread can sleep less; must not lock the APIC.
pub type TimerListener = Box<dyn FnMut(Option<u64>) + Send>;

/// Flags mirrored into [`Shared::state`] for the lock-free side.
const STATE_HW_ENABLED: u32 = 1 << 0;
const STATE_SW_ENABLED: u32 = 1 << 1;
const STATE_X2APIC: u32 = 1 << 2;

/// The state the lock-free input side shares with the registers.
struct Shared {
    /// Posted interrupt requests, folded into the IRR under the lock.
    posted: [AtomicU64; 4],
    /// Trigger mode of the posted requests (1 = level).
    posted_level: [AtomicU64; 4],
    /// Error bits to add to the ESR.
    posted_errors: AtomicU32,
    /// An ExtINT message (from an IOAPIC) waits for the acknowledge cycle.
    extint: AtomicBool,
    /// Levels of the LINT0 and LINT1 pins.
    lint_level: [AtomicBool; 2],
    /// Copies of LVT LINT0 and LINT1, for the pins' lock-free handlers.
    lvt_lint: [AtomicU32; 2],
    /// Destination-matching copies: APIC ID (x2APIC numbering), LDR, DFR, and the
    /// `STATE_*` flags.
    id: AtomicU32,
    ldr: AtomicU32,
    dfr: AtomicU32,
    state: AtomicU32,
    signal: Arc<dyn CpuSignal>,
}

impl Shared {
    fn post(&self, vector: u8, level: bool) {
        if vector < 16 {
            self.posted_errors
                .fetch_or(ESR_RECEIVE_ILLEGAL_VECTOR, Ordering::AcqRel);
        } else {
            let (w, bit) = (vector as usize / 64, 1u64 << (vector % 64));
            // The trigger mode first: whoever takes the request bit then sees it.
            if level {
                self.posted_level[w].fetch_or(bit, Ordering::AcqRel);
            } else {
                self.posted_level[w].fetch_and(!bit, Ordering::AcqRel);
            }
            self.posted[w].fetch_or(bit, Ordering::AcqRel);
        }
        self.signal.interrupt();
    }

    fn matches(&self, dest: u32, logical: bool) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state & STATE_HW_ENABLED == 0 {
            return false;
        }
        let x2apic = state & STATE_X2APIC != 0;
        if !logical {
            let broadcast = if x2apic { u32::MAX } else { 0xff };
            return dest == broadcast || dest == self.id.load(Ordering::Acquire);
        }
        let ldr = self.ldr.load(Ordering::Acquire);
        if x2apic {
            // Cluster in bits 31:16, a bit per member in 15:0.
            dest == u32::MAX || (dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0)
        } else {
            let dest = dest & 0xff;
            let mine = ldr >> 24;
            if dest == 0xff {
                return true;
            }
            if self.dfr.load(Ordering::Acquire) >> 28 == 0xf {
                dest & mine != 0 // flat model
            } else {
                dest >> 4 == mine >> 4 && dest & mine & 0xf != 0 // cluster model
            }
        }
    }
}

/// The lock-free input side of a [`LocalApic`]: how IOAPICs, MSIs, other APICs' IPIs
/// and the LINT pins reach it. Cheap to clone; never takes the APIC's lock, so it may be
/// used with any device lock held.
#[derive(Clone)]
pub struct LapicInput(Arc<Shared>);

impl std::fmt::Debug for LapicInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LapicInput(id {})", self.id())
    }
}

impl LapicInput {
    /// The APIC's ID (x2APIC numbering: the xAPIC ID register holds it in bits 31:24).
    pub fn id(&self) -> u32 {
        self.0.id.load(Ordering::Acquire)
    }

    /// Accepts a fixed interrupt: `vector` goes into the IRR (TMR set when
    /// `level_triggered`, so its EOI is broadcast) and the vCPU is notified. Vectors
    /// 0..15 are illegal and only set the receive error. Requests arriving while the
    /// APIC is disabled are dropped.
    pub fn accept(&self, vector: u8, level_triggered: bool) {
        self.0.post(vector, level_triggered);
    }

    /// Delivers an NMI to the vCPU.
    pub fn nmi(&self) {
        self.0.signal.nmi();
    }

    /// Whether the APIC is addressed by destination `dest` in logical or physical mode
    /// (ID, LDR and the flat or cluster model of DFR, or the x2APIC cluster format).
    pub fn matches(&self, dest: u32, logical: bool) -> bool {
        self.0.matches(dest, logical)
    }

    /// Delivers `message` to this APIC as its delivery mode says (without looking at
    /// the destination: see [`LapicInput::matches`] and [`route`]). Fixed and
    /// lowest-priority become IRR bits, NMI an NMI, ExtINT an acknowledge cycle on the
    /// 8259, INIT and start-up go to the vCPU ([`CpuSignal::init`],
    /// [`CpuSignal::startup`]); SMI (no system-management mode here) is dropped.
    pub fn deliver(&self, message: &InterruptMessage) {
        match message.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept(message.vector, message.level)
            }
            DeliveryMode::Nmi => self.nmi(),
            DeliveryMode::ExtInt => {
                self.0.extint.store(true, Ordering::Release);
                self.0.signal.interrupt();
            }
            DeliveryMode::Init => self.0.signal.init(),
            DeliveryMode::StartUp => self.0.signal.startup(message.vector),
            DeliveryMode::Smi | DeliveryMode::Reserved => {}
        }
    }

    /// The LINT0 (`pin` 0) or LINT1 (`pin` 1) input as an [`IrqLine`], for the 8259's
    /// INTR output (LINT0) or an NMI source (LINT1). What a level change does depends
    /// on the pin's LVT entry: ExtINT (the CPU then asks the 8259 for the vector), NMI
    /// (on a rising edge), fixed (the entry's vector on a rising edge), or nothing when
    /// masked. With the APIC disabled in IA32_APIC_BASE, LINT0 is the CPU's INTR pin
    /// and LINT1 its NMI pin.
    pub fn lint(&self, pin: usize) -> Arc<dyn IrqLine> {
        assert!(pin < 2, "LINT{pin} does not exist");
        Arc::new(LintPin {
            shared: self.0.clone(),
            pin,
        })
    }
}

/// Delivers `message` to every APIC in `apics` it addresses (lowest priority: to the
/// first one addressed). The router of a machine's IOAPIC and MSIs.
pub fn route(apics: &[LapicInput], message: &InterruptMessage) {
    for apic in apics {
        if apic.matches(message.dest, message.logical) {
            apic.deliver(message);
            if message.mode == DeliveryMode::LowestPriority {
                return;
            }
        }
    }
}

/// Delivers an IPI handed to a sender's router ([`LocalApic::set_ipi_router`]) to the
/// other APICs in `apics` it addresses: every one but the sender for the "all" shorthands,
/// the ones its destination matches otherwise (lowest priority: the first of them). The
/// sender's own copy was delivered by the sender.
pub fn route_ipi(apics: &[LapicInput], ipi: &Ipi) {
    let message = &ipi.message;
    for apic in apics.iter().filter(|a| a.id() != ipi.source) {
        let addressed = match ipi.shorthand {
            Shorthand::ToSelf => false,
            Shorthand::AllIncludingSelf | Shorthand::AllExcludingSelf => {
                apic.0.state.load(Ordering::Acquire) & STATE_HW_ENABLED != 0
            }
            Shorthand::None => apic.matches(message.dest, message.logical),
        };
        if addressed {
            apic.deliver(message);
            if message.mode == DeliveryMode::LowestPriority {
                return;
            }
        }
    }
}

/// A LINT pin (see [`LapicInput::lint`]).
struct LintPin {
    shared: Arc<Shared>,
    pin: usize,
}

impl IrqLine for LintPin {
    fn set_level(&self, high: bool) {
        let s = &self.shared;
        let was = s.lint_level[self.pin].swap(high, Ordering::AcqRel);
        let rising = high && !was;
        if s.state.load(Ordering::Acquire) & STATE_HW_ENABLED == 0 {
            // A disabled APIC passes the pins through: LINT0 is INTR, LINT1 is NMI.
            match self.pin {
                0 if high => s.signal.interrupt(),
                1 if rising => s.signal.nmi(),
                _ => {}
            }
            return;
        }
        let lvt = s.lvt_lint[self.pin].load(Ordering::Acquire);
        if lvt & LVT_MASKED != 0 {
            return;
        }
        match DeliveryMode::from_bits((lvt >> 8) as u64) {
            // Level-sensitive: the acknowledge cycle asks the 8259 while the pin is high.
            DeliveryMode::ExtInt if high => s.signal.interrupt(),
            DeliveryMode::Nmi if rising => s.signal.nmi(),
            DeliveryMode::Fixed if rising => s.post(lvt as u8, false),
            _ => {}
        }
    }
}

/// The timer's counting state (the registers are initial count and divide config).
#[derive(Clone, Copy, Debug, Default)]
struct Timer {
    initial: u32,
    divide: u32,
    /// Virtual-clock time of the next expiry in one-shot and periodic modes.
    next_ns: Option<u64>,
    /// IA32_TSC_DEADLINE (raw TSC units), 0 when disarmed.
    deadline: u64,
}

impl Timer {
    /// The divider the divide-configuration register selects (bits 0, 1 and 3).
    fn divisor(&self) -> u64 {
        let v = (self.divide & 3) | (self.divide >> 1 & 4);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    /// Nanoseconds for `counts` timer counts.
    fn counts_to_ns(&self, counts: u64) -> u64 {
        (counts as u128 * self.divisor() as u128 * 1_000_000_000 / TIMER_HZ as u128) as u64
    }

    /// Timer counts left in `ns` nanoseconds, rounded up.
    fn ns_to_counts(&self, ns: u64) -> u64 {
        let per = self.divisor() as u128 * 1_000_000_000;
        ((ns as u128 * TIMER_HZ as u128).div_ceil(per)) as u64
    }
}

/// TSC ticks at virtual-clock time `ns`.
fn ns_to_tsc(ns: u64) -> u64 {
    (ns as u128 * TSC_HZ as u128 / 1_000_000_000) as u64
}

/// The first virtual-clock time at which the TSC reads `tsc` or more.
fn tsc_to_ns(tsc: u64) -> u64 {
    (tsc as u128 * 1_000_000_000).div_ceil(TSC_HZ as u128) as u64
}

/// Index and bit of `vector` in a 256-bit register held as four words.
#[inline]
fn bit(vector: u8) -> (usize, u64) {
    (vector as usize / 64, 1u64 << (vector % 64))
}

/// The highest set bit of a 256-bit register.
fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4)
        .rev()
        .find(|&w| bits[w] != 0)
        .map(|w| (w * 64 + 63 - bits[w].leading_zeros() as usize) as u8)
}

/// One vCPU's local APIC. See the module docs for how it is shared and wired.
pub struct LocalApic {
    /// The ID it was created with (x2APIC mode always uses it).
    initial_id: u32,
    /// IA32_APIC_BASE.
    base: u64,
    /// ID (x2APIC numbering; the xAPIC register shows it in bits 31:24).
    id: u32,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u64; 4],
    tmr: [u64; 4],
    irr: [u64; 4],
    /// The ESR as last latched (by a write) and the errors since.
    esr: u32,
    esr_pending: u32,
    /// ICR: low half, and the destination in bits 63:32 (x2APIC) or 63:56 (xAPIC).
    icr: u64,
    lvt: [u32; 6],
    timer: Timer,
    clock: VirtualClock,
    shared: Arc<Shared>,
    eoi_broadcast: Option<EoiBroadcast>,
    extint: Option<ExtIntAcknowledge>,
    ipi_router: Option<IpiRouter>,
    timer_listener: Option<TimerListener>,
}

impl std::fmt::Debug for LocalApic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApic")
            .field("id", &self.id)
            .field("base", &format_args!("{:#x}", self.base))
            .field("tpr", &self.tpr)
            .field("svr", &format_args!("{:#x}", self.svr))
            .field("isr", &self.isr)
            .field("irr", &self.irr)
            .field("lvt", &self.lvt)
            .field("timer", &self.timer)
            .finish()
    }
}

impl LocalApic {
    /// A local APIC in its power-up state (xAPIC mode, software-disabled, every LVT
    /// entry masked) with ID `id`, the bootstrap processor's if `bsp`, timing with
    /// `clock` and reaching its vCPU through `signal`.
    pub fn new(id: u32, bsp: bool, clock: VirtualClock, signal: Arc<dyn CpuSignal>) -> Self {
        let shared = Arc::new(Shared {
            posted: Default::default(),
            posted_level: Default::default(),
            posted_errors: AtomicU32::new(0),
            extint: AtomicBool::new(false),
            lint_level: Default::default(),
            lvt_lint: [AtomicU32::new(LVT_MASKED), AtomicU32::new(LVT_MASKED)],
            id: AtomicU32::new(id),
            ldr: AtomicU32::new(0),
            dfr: AtomicU32::new(u32::MAX),
            state: AtomicU32::new(0),
            signal,
        });
        let mut apic = LocalApic {
            initial_id: id,
            base: APIC_BASE_ADDR | BASE_ENABLE | if bsp { BASE_BSP } else { 0 },
            id,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            isr: [0; 4],
            tmr: [0; 4],
            irr: [0; 4],
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_MASKED; 6],
            timer: Timer::default(),
            clock,
            shared,
            eoi_broadcast: None,
            extint: None,
            ipi_router: None,
            timer_listener: None,
        };
        apic.reset_registers();
        apic
    }

    /// The lock-free input side (for the IOAPIC router, MSIs, other APICs, LINT pins).
    pub fn input(&self) -> LapicInput {
        LapicInput(self.shared.clone())
    }

    /// Sets who hears EOIs of level-triggered vectors (the IOAPIC). Called under this
    /// APIC's lock: it may lock the IOAPIC, never an APIC.
    pub fn set_eoi_broadcast(&mut self, hook: EoiBroadcast) {
        self.eoi_broadcast = Some(hook);
    }

    /// Sets the 8259's acknowledge cycle, used for ExtINT delivery (LINT0 in ExtINT
    /// mode, an IOAPIC ExtINT entry, or LINT0 as INTR while the APIC is disabled).
    /// Called under this APIC's lock: it may lock the 8259, never an APIC.
    pub fn set_extint_acknowledge(&mut self, hook: ExtIntAcknowledge) {
        self.extint = Some(hook);
    }

    /// Sets the router for IPIs that address other APICs. Called under this APIC's
    /// lock: it must reach other APICs only through their [`LapicInput`]s.
    pub fn set_ipi_router(&mut self, router: IpiRouter) {
        self.ipi_router = Some(router);
    }

    /// Sets the listener told of the timer's new deadline whenever the guest programs
    /// the timer (see [`TimerListener`]).
    pub fn set_timer_listener(&mut self, listener: TimerListener) {
        self.timer_listener = Some(listener);
    }

    /// Puts the APIC in the state a PC BIOS leaves it in ("virtual wire" mode):
    /// software-enabled, LINT0 ExtINT (the 8259 reaches the CPU through it), LINT1 NMI.
    /// Firmware-less boots call it so that legacy-interrupt code paths work.
    pub fn set_virtual_wire(&mut self) {
        self.write_svr(SVR_ENABLE | 0xff);
        self.write_lvt(LVT_LINT0, 7 << 8);
        self.write_lvt(LVT_LINT1, 4 << 8);
    }

    /// The APIC ID (x2APIC numbering).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether x2APIC mode is on.
    pub fn x2apic(&self) -> bool {
        self.base & BASE_EXTD != 0
    }

    fn hw_enabled(&self) -> bool {
        self.base & BASE_ENABLE != 0
    }

    fn sw_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The power-up state of everything but IA32_APIC_BASE.
    fn reset_registers(&mut self) {
        self.id = self.initial_id;
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = [0; 4];
        self.tmr = [0; 4];
        self.irr = [0; 4];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; 6];
        self.timer = Timer::default();
        for w in 0..4 {
            self.shared.posted[w].store(0, Ordering::Release);
        }
        self.shared.extint.store(false, Ordering::Release);
        self.publish();
    }

    /// Copies what the lock-free side needs.
    fn publish(&self) {
        let s = &self.shared;
        s.id.store(self.id, Ordering::Release);
        s.ldr.store(self.logical_id(), Ordering::Release);
        s.dfr.store(self.dfr, Ordering::Release);
        s.lvt_lint[0].store(self.lvt[LVT_LINT0], Ordering::Release);
        s.lvt_lint[1].store(self.lvt[LVT_LINT1], Ordering::Release);
        let mut state = 0;
        if self.hw_enabled() {
            state |= STATE_HW_ENABLED;
        }
        if self.sw_enabled() {
            state |= STATE_SW_ENABLED;
        }
        if self.x2apic() {
            state |= STATE_X2APIC;
        }
        s.state.store(state, Ordering::Release);
    }

    /// The LDR: written by software in xAPIC mode, derived from the ID in x2APIC mode.
    fn logical_id(&self) -> u32 {
        if self.x2apic() {
            ((self.id >> 4) << 16) | (1 << (self.id & 0xf))
        } else {
            self.ldr
        }
    }

    /// Folds posted requests and errors into the IRR and ESR.
    fn sync(&mut self) {
        let enabled = self.hw_enabled() && self.sw_enabled();
        for w in 0..4 {
            if self.shared.posted[w].load(Ordering::Acquire) == 0 {
                continue;
            }
            let bits = self.shared.posted[w].swap(0, Ordering::AcqRel);
            let level = self.shared.posted_level[w].fetch_and(!bits, Ordering::AcqRel) & bits;
            if enabled {
                self.irr[w] |= bits;
                self.tmr[w] = (self.tmr[w] & !bits) | level;
            }
        }
        let errors = self.shared.posted_errors.swap(0, Ordering::AcqRel);
        if errors != 0 {
            self.raise_error(errors);
        }
    }

    /// Records errors in the ESR and signals them through LVT error.
    fn raise_error(&mut self, errors: u32) {
        self.esr_pending |= errors;
        let lvt = self.lvt[LVT_ERROR];
        if lvt & LVT_MASKED == 0 && lvt as u8 >= 16 {
            self.set_irr(lvt as u8, false);
        }
    }

    fn set_irr(&mut self, vector: u8, level: bool) {
        let (w, b) = bit(vector);
        self.irr[w] |= b;
        if level {
            self.tmr[w] |= b;
        } else {
            self.tmr[w] &= !b;
        }
    }

    /// Accepts a fixed interrupt on this APIC directly (from its own vCPU's thread or a
    /// holder of its lock); elsewhere use [`LapicInput::accept`].
    pub fn accept(&mut self, vector: u8, level_triggered: bool) {
        self.shared.post(vector, level_triggered);
        self.sync();
    }

    /// The processor priority: the task priority, or the class of the highest vector in
    /// service if that is higher.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The arbitration priority (xAPIC APR).
    fn apr(&self) -> u8 {
        let top = highest(&self.isr)
            .unwrap_or(0)
            .max(highest(&self.irr).unwrap_or(0));
        if self.tpr >> 4 >= top >> 4 {
            self.tpr
        } else {
            top & 0xf0
        }
    }

    /// The highest requested vector the processor priority lets through.
    fn deliverable(&self) -> Option<u8> {
        highest(&self.irr).filter(|&v| v >> 4 > self.ppr() >> 4)
    }

    /// Whether the 8259 should be asked for a vector.
    fn extint_pending(&self) -> bool {
        if !self.hw_enabled() {
            return self.shared.lint_level[0].load(Ordering::Acquire);
        }
        if self.shared.extint.load(Ordering::Acquire) {
            return true;
        }
        let lvt = self.lvt[LVT_LINT0];
        lvt & LVT_MASKED == 0
            && DeliveryMode::from_bits((lvt >> 8) as u64) == DeliveryMode::ExtInt
            && self.shared.lint_level[0].load(Ordering::Acquire)
    }

    /// Folds posted requests in and notifies the vCPU if something is deliverable.
    fn update(&mut self) {
        self.sync();
        if self.deliverable().is_some() || self.extint_pending() {
            self.shared.signal.interrupt();
        }
    }

    /// The interrupt-acknowledge cycle, for the vCPU when RFLAGS.IF allows: an ExtINT
    /// vector from the 8259 if one is pending, else the highest IRR vector above the
    /// processor priority, moved to the ISR. `None` if nothing is deliverable.
    pub fn acknowledge(&mut self) -> Option<u8> {
        self.sync();
        if self.extint_pending() {
            self.shared.extint.store(false, Ordering::Release);
            let vector = self.extint.as_mut().and_then(|ack| ack());
            // The 8259 keeps INTR high while it has more: ask again later.
            if self.extint_pending() || self.deliverable().is_some() {
                self.shared.signal.interrupt();
            }
            if vector.is_some() {
                return vector;
            }
        }
        if !self.hw_enabled() {
            return None;
        }
        let vector = self.deliverable()?;
        let (w, b) = bit(vector);
        self.irr[w] &= !b;
        self.isr[w] |= b;
        Some(vector)
    }

    /// End of interrupt: retires the highest vector in service, broadcasting the EOI of
    /// a level-triggered one.
    pub fn eoi(&mut self) {
        if let Some(vector) = highest(&self.isr) {
            let (w, b) = bit(vector);
            self.isr[w] &= !b;
            if self.tmr[w] & b != 0 {
                if let Some(hook) = self.eoi_broadcast.as_mut() {
                    hook(vector);
                }
            }
        }
        self.update();
    }

    /// The task-priority register.
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the task-priority register (CR8 writes `cr8 << 4`).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
        self.update();
    }

    /// Whether `vector` is requested (IRR).
    pub fn is_requested(&self, vector: u8) -> bool {
        let (w, b) = bit(vector);
        self.irr[w] & b != 0 || self.shared.posted[w].load(Ordering::Acquire) & b != 0
    }

    /// Whether `vector` is in service (ISR).
    pub fn in_service(&self, vector: u8) -> bool {
        let (w, b) = bit(vector);
        self.isr[w] & b != 0
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & SVR_WRITABLE;
        if !self.sw_enabled() {
            // Software-disabling masks every LVT entry.
            for lvt in &mut self.lvt {
                *lvt |= LVT_MASKED;
            }
        }
        self.publish();
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let old = self.lvt[index];
        let mut value = (value & LVT_WRITABLE[index]) | (old & !LVT_WRITABLE[index]);
        if !self.sw_enabled() {
            value |= LVT_MASKED;
        }
        self.lvt[index] = value;
        if index == LVT_TIMER {
            let mode = |v: u32| v >> TIMER_MODE_SHIFT & 3;
            if mode(old) != mode(value) {
                // Changing the mode disarms the timer.
                self.timer.next_ns = None;
                self.timer.initial = 0;
                self.timer.deadline = 0;
                self.timer_changed();
            }
        }
        if index == LVT_LINT0 || index == LVT_LINT1 {
            self.publish();
        }
    }

    fn timer_mode(&self) -> u32 {
        match self.lvt[LVT_TIMER] >> TIMER_MODE_SHIFT & 3 {
            MODE_PERIODIC => MODE_PERIODIC,
            MODE_TSC_DEADLINE => MODE_TSC_DEADLINE,
            _ => MODE_ONE_SHOT,
        }
    }

    fn timer_changed(&mut self) {
        let next = self.next_deadline_ns();
        if let Some(listener) = self.timer_listener.as_mut() {
            listener(next);
        }
    }

    fn write_initial_count(&mut self, count: u32) {
        if self.timer_mode() == MODE_TSC_DEADLINE {
            return; // ignored in TSC-deadline mode
        }
        self.timer.initial = count;
        self.timer.next_ns = if count == 0 {
            None
        } else {
            Some(
                self.clock
                    .now_ns()
                    .saturating_add(self.timer.counts_to_ns(count as u64)),
            )
        };
        self.timer_changed();
    }

    fn write_divide(&mut self, value: u32) {
        let now = self.clock.now_ns();
        let left = self.current_count(now) as u64;
        self.timer.divide = value & 0xb;
        // A running count goes on at the new rate.
        if self.timer.next_ns.is_some() && self.timer_mode() != MODE_TSC_DEADLINE {
            self.timer.next_ns = Some(now.saturating_add(self.timer.counts_to_ns(left)));
            self.timer_changed();
        }
    }

    /// The current-count register at virtual time `now`.
    fn current_count(&self, now: u64) -> u32 {
        if self.timer_mode() == MODE_TSC_DEADLINE {
            return 0;
        }
        let Some(next) = self.timer.next_ns else {
            return 0;
        };
        let left = if now < next {
            next - now
        } else if self.timer_mode() == MODE_PERIODIC {
            // The timer thread is late: the count has wrapped around already.
            let period = self.timer.counts_to_ns(self.timer.initial as u64).max(1);
            period - (now - next) % period
        } else {
            0
        };
        self.timer.ns_to_counts(left).min(self.timer.initial as u64) as u32
    }

    /// IA32_TSC_DEADLINE (raw TSC units; 0 when disarmed or outside TSC-deadline mode).
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == MODE_TSC_DEADLINE {
            self.timer.deadline
        } else {
            0
        }
    }

    /// Writes IA32_TSC_DEADLINE (raw TSC units): arms the timer in TSC-deadline mode (a
    /// deadline already passed fires at once), disarms it with 0; ignored in other modes.
    pub fn set_tsc_deadline(&mut self, deadline: u64) {
        if self.timer_mode() != MODE_TSC_DEADLINE {
            return;
        }
        self.timer.deadline = deadline;
        let now = self.clock.now_ns();
        self.tick(now);
        self.timer_changed();
    }

    /// When the timer next expires, in virtual-clock nanoseconds (`None` when it is not
    /// running). The machine's timer thread sleeps until the earliest such deadline of
    /// all its timer devices, then calls [`LocalApic::tick`].
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.timer_mode() == MODE_TSC_DEADLINE {
            (self.timer.deadline != 0).then(|| tsc_to_ns(self.timer.deadline))
        } else {
            self.timer.next_ns
        }
    }

    /// Runs the timer up to virtual time `now_ns`: an expiry at or before it raises the
    /// LVT timer interrupt (unless masked) once. A one-shot or TSC-deadline timer then
    /// stops; a periodic one reloads, and if `tick` comes late, skips the periods
    /// missed (the interrupt is one IRR bit, so they would merge anyway) and keeps its
    /// phase. Calling it early or twice is harmless.
    pub fn tick(&mut self, now_ns: u64) {
        let fired = match self.timer_mode() {
            MODE_TSC_DEADLINE => {
                let due = self.timer.deadline != 0 && ns_to_tsc(now_ns) >= self.timer.deadline;
                if due {
                    self.timer.deadline = 0;
                }
                due
            }
            mode => match self.timer.next_ns {
                Some(next) if next <= now_ns => {
                    self.timer.next_ns = if mode == MODE_PERIODIC {
                        let period = self.timer.counts_to_ns(self.timer.initial as u64).max(1);
                        let missed = (now_ns - next) / period;
                        Some(next.saturating_add((missed + 1).saturating_mul(period)))
                    } else {
                        None
                    };
                    true
                }
                _ => false,
            },
        };
        let lvt = self.lvt[LVT_TIMER];
        if fired && lvt & LVT_MASKED == 0 {
            if lvt as u8 >= 16 {
                self.set_irr(lvt as u8, false);
            } else {
                self.raise_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            }
            self.update();
        }
    }

    /// Sends the IPI in the ICR (`icr`: the low half, and the destination in bits
    /// 63:32 in x2APIC mode or 63:56 in xAPIC mode).
    fn send_ipi(&mut self, icr: u64) {
        let mode = DeliveryMode::from_bits(icr >> 8);
        let vector = icr as u8;
        let trigger_level = icr & 1 << 15 != 0;
        let assert = icr & 1 << 14 != 0;
        if mode == DeliveryMode::Init && trigger_level && !assert {
            return; // INIT level de-assert: a no-op on integrated APICs
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.raise_error(ESR_SEND_ILLEGAL_VECTOR);
            return;
        }
        let message = InterruptMessage {
            vector,
            mode,
            logical: icr & 1 << 11 != 0,
            dest: if self.x2apic() {
                (icr >> 32) as u32
            } else {
                (icr >> 56) as u32
            },
            level: trigger_level,
        };
        let shorthand = match icr >> 18 & 3 {
            0 => Shorthand::None,
            1 => Shorthand::ToSelf,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let (to_self, to_others) = match shorthand {
            Shorthand::ToSelf => (true, false),
            Shorthand::AllIncludingSelf => (true, true),
            Shorthand::AllExcludingSelf => (false, true),
            Shorthand::None => {
                let me = self.shared.matches(message.dest, message.logical);
                let only_me = me && !message.logical && message.dest == self.id;
                (me, !only_me)
            }
        };
        if to_self {
            LapicInput(self.shared.clone()).deliver(&message);
            self.sync();
        }
        if to_others {
            if let Some(router) = self.ipi_router.as_mut() {
                router(&Ipi {
                    message,
                    shorthand,
                    source: self.id,
                });
            }
        }
    }

    /// Reads the register at page offset `offset` (16-byte aligned) as xAPIC software
    /// sees it; `None` for offsets with no register.
    fn read_register(&mut self, offset: u32) -> Option<u32> {
        self.sync();
        Some(match offset {
            reg::ID => {
                if self.x2apic() {
                    self.id
                } else {
                    self.id << 24
                }
            }
            reg::VERSION => VERSION,
            reg::TPR => self.tpr as u32,
            reg::APR => self.apr() as u32,
            reg::PPR => self.ppr() as u32,
            reg::RRD => 0,
            reg::LDR => self.logical_id(),
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x270 => {
                let i = ((offset & 0x7f) >> 4) as usize;
                let r = match offset & !0x7f {
                    reg::ISR => &self.isr,
                    reg::TMR => &self.tmr,
                    _ => &self.irr,
                };
                (r[i / 2] >> (32 * (i % 2))) as u32
            }
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr as u32,
            reg::ICR_HIGH => (self.icr >> 32) as u32,
            reg::LVT_TIMER..=reg::LVT_ERROR => self.lvt[((offset - reg::LVT_TIMER) >> 4) as usize],
            reg::TIMER_INITIAL => self.timer.initial,
            reg::TIMER_CURRENT => self.current_count(self.clock.now_ns()),
            reg::TIMER_DIVIDE => self.timer.divide,
            _ => return None,
        })
    }

    /// Writes the register at page offset `offset` as xAPIC software would (the x2APIC
    /// MSR path filters first). Read-only and unknown registers ignore writes.
    fn write_register(&mut self, offset: u32, value: u32) {
        self.sync();
        match offset {
            reg::ID if !self.x2apic() => {
                self.id = value >> 24;
                self.publish();
            }
            reg::TPR => self.tpr = value as u8,
            reg::EOI => self.eoi(),
            reg::LDR if !self.x2apic() => {
                self.ldr = value & 0xff00_0000;
                self.publish();
            }
            reg::DFR if !self.x2apic() => {
                self.dfr = value | 0x0fff_ffff;
                self.publish();
            }
            reg::SVR => self.write_svr(value),
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW => {
                self.icr = (self.icr & !0xffff_ffff) | (value & !(1 << 12)) as u64;
                self.send_ipi(self.icr);
            }
            reg::ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | ((value & 0xff00_0000) as u64) << 32
            }
            reg::LVT_TIMER..=reg::LVT_ERROR => {
                self.write_lvt(((offset - reg::LVT_TIMER) >> 4) as usize, value)
            }
            reg::TIMER_INITIAL => self.write_initial_count(value),
            reg::TIMER_DIVIDE => self.write_divide(value),
            _ => {}
        }
        self.update();
    }

    /// RDMSR of an APIC MSR: IA32_APIC_BASE, IA32_TSC_DEADLINE (raw TSC units) and the
    /// x2APIC registers (which fault unless x2APIC mode is on, as do write-only and
    /// xAPIC-only registers).
    pub fn read_msr(&mut self, index: u32) -> MsrResult {
        match index {
            msr::APIC_BASE => MsrResult::Ok(self.base),
            msr::TSC_DEADLINE => MsrResult::Ok(self.tsc_deadline()),
            msr::X2APIC_BASE..=msr::X2APIC_LAST => {
                if !self.x2apic() {
                    return MsrResult::Fault;
                }
                let offset = (index - msr::X2APIC_BASE) << 4;
                match offset {
                    reg::APR | reg::EOI | reg::RRD | reg::DFR | reg::ICR_HIGH | reg::SELF_IPI => {
                        MsrResult::Fault
                    }
                    reg::ICR_LOW => MsrResult::Ok(self.icr),
                    _ => match self.read_register(offset) {
                        Some(v) => MsrResult::Ok(v as u64),
                        None => MsrResult::Fault,
                    },
                }
            }
            _ => MsrResult::NotMine,
        }
    }

    /// WRMSR of an APIC MSR (see [`LocalApic::read_msr`]). IA32_APIC_BASE faults on
    /// reserved bits and on the invalid mode transitions (x2APIC to xAPIC, disabled to
    /// x2APIC, x2APIC without enable); disabling the APIC resets it.
    pub fn write_msr(&mut self, index: u32, value: u64) -> MsrResult {
        match index {
            msr::APIC_BASE => {
                if self.write_base(value) {
                    MsrResult::Ok(0)
                } else {
                    MsrResult::Fault
                }
            }
            msr::TSC_DEADLINE => {
                self.set_tsc_deadline(value);
                MsrResult::Ok(0)
            }
            msr::X2APIC_BASE..=msr::X2APIC_LAST => {
                if !self.x2apic() {
                    return MsrResult::Fault;
                }
                let offset = (index - msr::X2APIC_BASE) << 4;
                let value32 = value as u32;
                let high_clear = value >> 32 == 0;
                match offset {
                    reg::ICR_LOW => {
                        self.sync();
                        if value & 0xffff_ffff & !0x000c_cfff != 0 {
                            return MsrResult::Fault; // reserved bits of the low half
                        }
                        self.icr = value;
                        self.send_ipi(value);
                        self.update();
                    }
                    reg::SELF_IPI if value >> 8 == 0 => {
                        self.accept(value as u8, false);
                        self.update();
                    }
                    reg::EOI | reg::ESR if value != 0 => return MsrResult::Fault,
                    reg::TPR | reg::EOI | reg::ESR | reg::SVR | reg::TIMER_INITIAL
                        if high_clear =>
                    {
                        self.write_register(offset, value32)
                    }
                    reg::TIMER_DIVIDE if value & !0xb == 0 => self.write_register(offset, value32),
                    reg::LVT_TIMER..=reg::LVT_ERROR if high_clear => {
                        self.write_register(offset, value32)
                    }
                    _ => return MsrResult::Fault,
                }
                MsrResult::Ok(0)
            }
            _ => MsrResult::NotMine,
        }
    }

    /// Writes IA32_APIC_BASE; `false` for a value that faults.
    fn write_base(&mut self, value: u64) -> bool {
        const PHYS_BITS: u32 = 40;
        let allowed = ((1u64 << PHYS_BITS) - 1) & !0xfff | BASE_BSP | BASE_EXTD | BASE_ENABLE;
        if value & !allowed != 0 {
            return false;
        }
        let mode = |v: u64| (v & BASE_ENABLE != 0, v & BASE_EXTD != 0);
        let (old, new) = (mode(self.base), mode(value));
        match (old, new) {
            (_, (false, true)) => return false, // x2APIC without enable
            ((true, true), (true, false)) => return false, // x2APIC -> xAPIC
            ((false, false), (true, true)) => return false, // disabled -> x2APIC
            _ => {}
        }
        self.base = (value & !BASE_BSP) | (self.base & BASE_BSP);
        if !new.0 && old.0 {
            self.reset_registers();
        } else if new.1 && !old.1 {
            // Entering x2APIC mode: the ID is the initial x2APIC ID, the LDR derived.
            self.id = self.initial_id;
        }
        self.publish();
        self.update();
        true
    }
}

impl BusDevice for LocalApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The page is inaccessible in x2APIC mode and while disabled.
        if !self.hw_enabled() || self.x2apic() || offset >= APIC_PAGE_SIZE {
            return;
        }
        let byte = (offset & 0xf) as usize;
        if byte >= 4 {
            return;
        }
        let value = self.read_register((offset & !0xf) as u32).unwrap_or(0);
        let bytes = value.to_le_bytes();
        let n = data.len().min(4 - byte);
        data[..n].copy_from_slice(&bytes[byte..byte + n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Registers are written as aligned dwords; anything else is ignored.
        if !self.hw_enabled() || self.x2apic() || offset & 0xf != 0 || data.len() < 4 {
            return;
        }
        if offset >= APIC_PAGE_SIZE {
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset as u32, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// Counts notifications, NMIs and INITs; remembers start-up vectors.
    #[derive(Default)]
    struct Signals {
        interrupts: AtomicUsize,
        nmis: AtomicUsize,
        inits: AtomicUsize,
        startups: Mutex<Vec<u8>>,
    }

    impl CpuSignal for Signals {
        fn interrupt(&self) {
            self.interrupts.fetch_add(1, Ordering::SeqCst);
        }
        fn nmi(&self) {
            self.nmis.fetch_add(1, Ordering::SeqCst);
        }
        fn init(&self) {
            self.inits.fetch_add(1, Ordering::SeqCst);
        }
        fn startup(&self, vector: u8) {
            self.startups.lock().unwrap().push(vector);
        }
    }

    fn apic() -> (LocalApic, Arc<Signals>, VirtualClock) {
        let signals = Arc::new(Signals::default());
        let clock = VirtualClock::manual();
        let apic = LocalApic::new(0, true, clock.clone(), signals.clone());
        (apic, signals, clock)
    }

    fn mmio_read(apic: &mut LocalApic, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        apic.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn mmio_write(apic: &mut LocalApic, offset: u32, value: u32) {
        apic.write(offset as u64, &value.to_le_bytes());
    }

    fn enabled() -> (LocalApic, Arc<Signals>, VirtualClock) {
        let (mut a, s, c) = apic();
        mmio_write(&mut a, reg::SVR, SVR_ENABLE | 0xff);
        (a, s, c)
    }

    fn x2apic() -> (LocalApic, Arc<Signals>, VirtualClock) {
        let (mut a, s, c) = enabled();
        let base = a.read_msr(msr::APIC_BASE);
        let MsrResult::Ok(base) = base else {
            panic!("{base:?}")
        };
        assert_eq!(
            a.write_msr(msr::APIC_BASE, base | BASE_EXTD),
            MsrResult::Ok(0)
        );
        (a, s, c)
    }

    #[test]
    fn power_up_registers_read_through_mmio() {
        let (mut a, _, _) = apic();
        assert_eq!(mmio_read(&mut a, reg::VERSION), 0x0005_0014);
        assert_eq!(mmio_read(&mut a, reg::ID), 0);
        assert_eq!(mmio_read(&mut a, reg::SVR), 0xff);
        assert_eq!(mmio_read(&mut a, reg::DFR), 0xffff_ffff);
        for lvt in (reg::LVT_TIMER..=reg::LVT_ERROR).step_by(16) {
            assert_eq!(mmio_read(&mut a, lvt), LVT_MASKED, "LVT {lvt:#x}");
        }
        assert_eq!(
            a.read_msr(msr::APIC_BASE),
            MsrResult::Ok(0xfee0_0000 | BASE_BSP | BASE_ENABLE)
        );
        // A byte read of the version's high half.
        let mut b = [0u8; 1];
        a.read(reg::VERSION as u64 + 2, &mut b);
        assert_eq!(b[0], 5);
        // Registers round-trip with their writable bits only.
        mmio_write(&mut a, reg::ID, 0x0300_0000);
        assert_eq!(mmio_read(&mut a, reg::ID), 0x0300_0000);
        assert_eq!(a.input().id(), 3);
        mmio_write(&mut a, reg::LDR, 0x01ff_ffff);
        assert_eq!(mmio_read(&mut a, reg::LDR), 0x0100_0000);
        mmio_write(&mut a, reg::DFR, 0);
        assert_eq!(mmio_read(&mut a, reg::DFR), 0x0fff_ffff);
        mmio_write(&mut a, reg::TIMER_DIVIDE, 0xffff_ffff);
        assert_eq!(mmio_read(&mut a, reg::TIMER_DIVIDE), 0xb);
        // Software-disabled: LVT entries stay masked.
        mmio_write(&mut a, reg::LVT_LINT0, 0x700);
        assert_eq!(mmio_read(&mut a, reg::LVT_LINT0), LVT_MASKED | 0x700);
        mmio_write(&mut a, reg::SVR, SVR_ENABLE | 0x1ff);
        mmio_write(&mut a, reg::LVT_LINT0, 0xffff_ffff);
        assert_eq!(
            mmio_read(&mut a, reg::LVT_LINT0),
            0x1_a7ff,
            "remote IRR and delivery status are read-only"
        );
        mmio_write(&mut a, reg::SVR, 0xff);
        assert_ne!(mmio_read(&mut a, reg::LVT_LINT0) & LVT_MASKED, 0);
    }

    #[test]
    fn priority_acknowledge_and_eoi_follow_vector_classes() {
        let (mut a, signals, _) = enabled();
        let input = a.input();
        input.accept(0x31, false);
        input.accept(0x52, false);
        input.accept(0x55, false);
        assert!(signals.interrupts.load(Ordering::SeqCst) >= 3);
        assert_eq!(
            mmio_read(&mut a, reg::IRR + 0x20),
            0x0024_0000,
            "0x52, 0x55"
        );
        assert_eq!(a.acknowledge(), Some(0x55));
        assert_eq!(mmio_read(&mut a, reg::PPR), 0x50);
        assert_eq!(mmio_read(&mut a, reg::ISR + 0x20), 0x0020_0000);
        // 0x52 is in the same class as 0x55: held until the EOI.
        assert_eq!(a.acknowledge(), None);
        input.accept(0x61, false);
        assert_eq!(a.acknowledge(), Some(0x61), "a higher class nests");
        mmio_write(&mut a, reg::EOI, 0); // retires 0x61
        assert_eq!(mmio_read(&mut a, reg::PPR), 0x50);
        let before = signals.interrupts.load(Ordering::SeqCst);
        mmio_write(&mut a, reg::EOI, 0); // retires 0x55: 0x52 becomes deliverable
        assert!(signals.interrupts.load(Ordering::SeqCst) > before);
        assert_eq!(a.acknowledge(), Some(0x52));
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x31));
        a.eoi();
        assert_eq!(a.acknowledge(), None);
        assert_eq!(mmio_read(&mut a, reg::PPR), 0);
    }

    #[test]
    fn tpr_masks_classes_at_or_below_it() {
        let (mut a, signals, _) = enabled();
        a.set_tpr(0x50);
        a.input().accept(0x55, false);
        a.input().accept(0x45, false);
        assert_eq!(a.acknowledge(), None, "0x55 is not above TPR class 5");
        assert_eq!(mmio_read(&mut a, reg::PPR), 0x50);
        let before = signals.interrupts.load(Ordering::SeqCst);
        mmio_write(&mut a, reg::TPR, 0x40);
        assert!(
            signals.interrupts.load(Ordering::SeqCst) > before,
            "lowering TPR notifies"
        );
        assert_eq!(a.acknowledge(), Some(0x55));
        assert_eq!(a.acknowledge(), None, "0x45 is below TPR");
        a.set_tpr(0);
        assert_eq!(a.acknowledge(), None, "0x45 is below 0x55 in service");
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x45));
    }

    #[test]
    fn illegal_vectors_and_a_disabled_apic_drop_requests() {
        let (mut a, _, _) = apic();
        a.input().accept(0x40, false);
        assert_eq!(a.acknowledge(), None, "software-disabled");
        mmio_write(&mut a, reg::SVR, SVR_ENABLE | 0xff);
        mmio_write(&mut a, reg::LVT_ERROR, 0xe0);
        a.input().accept(7, false);
        mmio_write(&mut a, reg::ESR, 0);
        assert_eq!(mmio_read(&mut a, reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(a.acknowledge(), Some(0xe0), "the error LVT fired");
        mmio_write(&mut a, reg::ESR, 0);
        assert_eq!(mmio_read(&mut a, reg::ESR), 0);
    }

    #[test]
    fn level_triggered_eoi_is_broadcast() {
        let (mut a, _, _) = enabled();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        a.set_eoi_broadcast(Box::new(move |v| s.lock().unwrap().push(v)));
        a.input().accept(0x40, true);
        a.input().accept(0x30, false);
        assert_eq!(mmio_read(&mut a, reg::TMR + 0x20), 1, "TMR bit 0x40");
        assert_eq!(a.acknowledge(), Some(0x40));
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x30));
        a.eoi();
        assert_eq!(*seen.lock().unwrap(), vec![0x40], "only the level vector");
    }

    #[test]
    fn x2apic_msrs_mirror_the_registers_and_fault_where_hardware_does() {
        let (mut a, _, _) = enabled();
        assert_eq!(a.read_msr(0x808), MsrResult::Fault, "x2APIC off");
        assert_eq!(a.write_msr(0x808, 0), MsrResult::Fault);
        assert_eq!(a.read_msr(0x10), MsrResult::NotMine);
        let (mut a, signals, _) = x2apic();
        let mut page = [0u8; 4];
        a.read(reg::VERSION as u64, &mut page);
        assert_eq!(page, [0; 4], "the MMIO page is off in x2APIC mode");
        assert_eq!(a.read_msr(0x803), MsrResult::Ok(0x0005_0014));
        assert_eq!(a.read_msr(0x802), MsrResult::Ok(0));
        assert_eq!(a.read_msr(0x80d), MsrResult::Ok(1), "LDR derived from ID 0");
        assert_eq!(a.write_msr(0x802, 5), MsrResult::Fault, "ID is read-only");
        assert_eq!(a.write_msr(0x80d, 5), MsrResult::Fault, "LDR is read-only");
        assert_eq!(a.read_msr(0x80b), MsrResult::Fault, "EOI is write-only");
        assert_eq!(a.read_msr(0x80e), MsrResult::Fault, "no DFR");
        assert_eq!(a.read_msr(0x809), MsrResult::Fault, "no APR");
        assert_eq!(a.write_msr(0x80b, 1), MsrResult::Fault, "EOI takes 0 only");
        assert_eq!(a.write_msr(0x808, 0x20), MsrResult::Ok(0));
        assert_eq!(a.read_msr(0x808), MsrResult::Ok(0x20));
        assert_eq!(a.tpr(), 0x20);
        assert_eq!(a.write_msr(0x808, 1 << 32), MsrResult::Fault);
        // Self IPI, then a fixed IPI to self by ID through the 64-bit ICR.
        assert_eq!(a.write_msr(0x83f, 0x41), MsrResult::Ok(0));
        assert_eq!(a.read_msr(0x820 + 2), MsrResult::Ok(2), "IRR bit 0x41");
        assert!(signals.interrupts.load(Ordering::SeqCst) > 0);
        assert_eq!(a.write_msr(0x830, 0x0000_0000_0000_0051), MsrResult::Ok(0));
        assert_eq!(a.read_msr(0x830), MsrResult::Ok(0x51));
        assert_eq!(a.acknowledge(), Some(0x51));
        assert_eq!(
            a.read_msr(0x810 + 2),
            MsrResult::Ok(1 << 17),
            "ISR bit 0x51"
        );
        assert_eq!(a.write_msr(0x80b, 0), MsrResult::Ok(0));
        assert_eq!(a.acknowledge(), Some(0x41));
        // An NMI IPI to all including self.
        a.write_msr(0x830, 0x8_0400);
        assert_eq!(signals.nmis.load(Ordering::SeqCst), 1);
        // x2APIC -> xAPIC is refused; disabling resets, then xAPIC is allowed again.
        let base = 0xfee0_0000 | BASE_BSP | BASE_ENABLE;
        assert_eq!(a.write_msr(msr::APIC_BASE, base), MsrResult::Fault);
        assert_eq!(
            a.write_msr(msr::APIC_BASE, base & !BASE_ENABLE & !BASE_BSP),
            MsrResult::Ok(0)
        );
        assert_eq!(
            a.read_msr(msr::APIC_BASE),
            MsrResult::Ok(0xfee0_0000 | BASE_BSP),
            "BSP is read-only"
        );
        assert_eq!(
            a.write_msr(msr::APIC_BASE, base | BASE_EXTD),
            MsrResult::Fault,
            "disabled -> x2APIC"
        );
        assert_eq!(a.write_msr(msr::APIC_BASE, base), MsrResult::Ok(0));
        assert_eq!(mmio_read(&mut a, reg::SVR), 0xff, "reset by the disable");
        assert_eq!(a.write_msr(msr::APIC_BASE, base | 1), MsrResult::Fault);
    }

    #[test]
    fn one_shot_timer_fires_once_even_when_ticked_late() {
        let (mut a, _, clock) = enabled();
        mmio_write(&mut a, reg::TIMER_DIVIDE, 0b0001); // divide by 4
        mmio_write(&mut a, reg::LVT_TIMER, 0x40);
        clock.advance(100);
        mmio_write(&mut a, reg::TIMER_INITIAL, 1000);
        assert_eq!(a.next_deadline_ns(), Some(100 + 4000));
        clock.advance(1000);
        assert_eq!(mmio_read(&mut a, reg::TIMER_CURRENT), 750);
        a.tick(clock.now_ns());
        assert_eq!(a.acknowledge(), None, "not yet");
        clock.advance(10_000); // the timer thread is late
        assert_eq!(mmio_read(&mut a, reg::TIMER_CURRENT), 0);
        a.tick(clock.now_ns());
        a.tick(clock.now_ns());
        assert_eq!(a.next_deadline_ns(), None);
        assert_eq!(a.acknowledge(), Some(0x40));
        a.eoi();
        a.tick(clock.now_ns() + 1_000_000);
        assert_eq!(a.acknowledge(), None, "exactly once");
        // A masked timer counts down without interrupting.
        mmio_write(&mut a, reg::LVT_TIMER, 0x40 | LVT_MASKED);
        mmio_write(&mut a, reg::TIMER_INITIAL, 10);
        a.tick(clock.now_ns() + 100);
        assert_eq!(a.acknowledge(), None);
        assert_eq!(a.next_deadline_ns(), None);
    }

    #[test]
    fn periodic_timer_reloads_and_keeps_its_phase() {
        let (mut a, _, clock) = enabled();
        mmio_write(&mut a, reg::TIMER_DIVIDE, 0b1011); // divide by 1
        mmio_write(
            &mut a,
            reg::LVT_TIMER,
            0x40 | MODE_PERIODIC << TIMER_MODE_SHIFT,
        );
        mmio_write(&mut a, reg::TIMER_INITIAL, 1000);
        let mut fired = 0;
        for _ in 0..10 {
            clock.advance(1000);
            a.tick(clock.now_ns());
            if a.acknowledge() == Some(0x40) {
                fired += 1;
                a.eoi();
            }
        }
        assert_eq!(fired, 10);
        assert_eq!(a.next_deadline_ns(), Some(11_000));
        // 3.5 periods late: one interrupt, next expiry still on the 1000 ns grid.
        clock.advance(3500);
        assert_eq!(mmio_read(&mut a, reg::TIMER_CURRENT), 500);
        a.tick(clock.now_ns());
        assert_eq!(a.acknowledge(), Some(0x40));
        assert_eq!(a.acknowledge(), None);
        assert_eq!(a.next_deadline_ns(), Some(14_000));
        // Changing the mode disarms it.
        mmio_write(&mut a, reg::LVT_TIMER, 0x40);
        assert_eq!(a.next_deadline_ns(), None);
    }

    #[test]
    fn tsc_deadline_timer_fires_at_its_deadline_and_disarms() {
        let (mut a, _, clock) = x2apic();
        assert_eq!(a.write_msr(msr::TSC_DEADLINE, 500), MsrResult::Ok(0));
        assert_eq!(
            a.read_msr(msr::TSC_DEADLINE),
            MsrResult::Ok(0),
            "ignored outside deadline mode"
        );
        a.write_msr(0x832, 0x40 | (MODE_TSC_DEADLINE << TIMER_MODE_SHIFT) as u64);
        let listened = Arc::new(Mutex::new(Vec::new()));
        let l = listened.clone();
        a.set_timer_listener(Box::new(move |d| l.lock().unwrap().push(d)));
        a.write_msr(msr::TSC_DEADLINE, 5000);
        assert_eq!(*listened.lock().unwrap(), vec![Some(5000)]);
        assert_eq!(a.read_msr(msr::TSC_DEADLINE), MsrResult::Ok(5000));
        a.write_msr(0x838, 77); // initial count: ignored in this mode
        assert_eq!(a.read_msr(0x838), MsrResult::Ok(0));
        clock.advance(4999);
        a.tick(clock.now_ns());
        assert_eq!(a.acknowledge(), None);
        clock.advance(1);
        a.tick(clock.now_ns());
        assert_eq!(a.read_msr(msr::TSC_DEADLINE), MsrResult::Ok(0));
        assert_eq!(a.acknowledge(), Some(0x40));
        a.write_msr(0x80b, 0);
        // A deadline in the past fires as it is written; 0 disarms.
        a.write_msr(msr::TSC_DEADLINE, 1);
        assert_eq!(a.acknowledge(), Some(0x40));
        a.write_msr(msr::TSC_DEADLINE, 1_000_000);
        a.write_msr(msr::TSC_DEADLINE, 0);
        assert_eq!(a.next_deadline_ns(), None);
    }

    #[test]
    fn lint0_extint_asks_the_8259_and_lint1_raises_nmi() {
        let (mut a, signals, _) = apic();
        let acks = Arc::new(AtomicUsize::new(0));
        let n = acks.clone();
        a.set_extint_acknowledge(Box::new(move || {
            n.fetch_add(1, Ordering::SeqCst);
            Some(0x08)
        }));
        let lint0 = a.input().lint(0);
        let lint1 = a.input().lint(1);
        lint0.set_level(true);
        assert_eq!(a.acknowledge(), None, "LINT0 masked at power-up");
        a.set_virtual_wire();
        lint0.set_level(true);
        assert!(signals.interrupts.load(Ordering::SeqCst) > 0);
        assert_eq!(a.acknowledge(), Some(0x08));
        lint0.set_level(false);
        assert_eq!(a.acknowledge(), None);
        assert_eq!(acks.load(Ordering::SeqCst), 1);
        lint1.pulse();
        assert_eq!(signals.nmis.load(Ordering::SeqCst), 1);
        // A globally disabled APIC passes LINT0 straight through as INTR.
        a.write_msr(msr::APIC_BASE, 0xfee0_0000);
        lint0.set_level(true);
        assert_eq!(a.acknowledge(), Some(0x08));
    }

    #[test]
    fn destinations_match_physical_flat_and_cluster_modes() {
        let (mut a, _, _) = enabled();
        mmio_write(&mut a, reg::ID, 2 << 24);
        mmio_write(&mut a, reg::LDR, 0x0400_0000);
        let i = a.input();
        assert!(i.matches(2, false) && i.matches(0xff, false) && !i.matches(1, false));
        assert!(i.matches(0x06, true) && !i.matches(0x03, true), "flat");
        mmio_write(&mut a, reg::DFR, 0x0fff_ffff);
        mmio_write(&mut a, reg::LDR, 0x2100_0000); // cluster 2, member bit 0
        assert!(i.matches(0x23, true) && !i.matches(0x13, true) && !i.matches(0x22, true));
        let (a, _, _) = x2apic();
        let i = a.input();
        assert!(i.matches(0, false) && i.matches(u32::MAX, false) && !i.matches(0xff, false));
        assert!(i.matches(0x0000_0001, true) && !i.matches(0x0001_0001, true));
    }

    #[test]
    fn ipis_to_others_go_to_the_router() {
        let (mut a, _, _) = enabled();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        a.set_ipi_router(Box::new(move |ipi| s.lock().unwrap().push(*ipi)));
        mmio_write(&mut a, reg::ICR_HIGH, 1 << 24);
        mmio_write(&mut a, reg::ICR_LOW, 0x4031); // fixed 0x31 to APIC 1
        mmio_write(&mut a, reg::ICR_LOW, 0x8_4032); // all including self
        mmio_write(&mut a, reg::ICR_LOW, 0x4_4033); // self only
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].message.dest, 1);
        assert_eq!(sent[0].message.vector, 0x31);
        assert_eq!(sent[1].shorthand, Shorthand::AllIncludingSelf);
        assert_eq!(a.acknowledge(), Some(0x33));
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x32));
        // An illegal vector is an error, not an IPI.
        mmio_write(&mut a, reg::ICR_LOW, 0x4_4005);
        mmio_write(&mut a, reg::ESR, 0);
        assert_eq!(mmio_read(&mut a, reg::ESR), ESR_SEND_ILLEGAL_VECTOR);
    }

    #[test]
    fn init_and_startup_ipis_reach_the_addressed_vcpus_only() {
        let (mut a, _, clock) = enabled();
        let signals: Vec<Arc<Signals>> = (0..3).map(|_| Arc::new(Signals::default())).collect();
        let others: Vec<LocalApic> = (1..3)
            .map(|id| LocalApic::new(id, false, clock.clone(), signals[id as usize].clone()))
            .collect();
        let inputs: Vec<LapicInput> = others.iter().map(|o| o.input()).collect();
        a.set_ipi_router(Box::new(move |ipi| route_ipi(&inputs, ipi)));
        // INIT (level, assert) to all excluding self, then STARTUP 0x08 to APIC 2.
        mmio_write(&mut a, reg::ICR_LOW, 0xc_c500);
        mmio_write(&mut a, reg::ICR_HIGH, 2 << 24);
        mmio_write(&mut a, reg::ICR_LOW, 0x0608);
        // INIT de-assert is a no-op.
        mmio_write(&mut a, reg::ICR_LOW, 0xc_8500);
        assert_eq!(signals[1].inits.load(Ordering::SeqCst), 1);
        assert_eq!(signals[2].inits.load(Ordering::SeqCst), 1);
        assert!(signals[1].startups.lock().unwrap().is_empty());
        assert_eq!(*signals[2].startups.lock().unwrap(), vec![0x08]);
        // A fixed IPI by physical ID reaches only that APIC; NMI by shorthand all others.
        mmio_write(&mut a, reg::ICR_HIGH, 1 << 24);
        mmio_write(&mut a, reg::ICR_LOW, 0x4041);
        mmio_write(&mut a, reg::ICR_LOW, 0xc_4400);
        assert_eq!(signals[1].interrupts.load(Ordering::SeqCst), 1);
        assert_eq!(signals[2].interrupts.load(Ordering::SeqCst), 0);
        assert_eq!(signals[1].nmis.load(Ordering::SeqCst), 1);
        assert_eq!(signals[2].nmis.load(Ordering::SeqCst), 1);
        assert_eq!(
            signals[0].inits.load(Ordering::SeqCst),
            0,
            "never to the sender"
        );
    }
}
