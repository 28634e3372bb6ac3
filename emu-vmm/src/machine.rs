//! A whole machine: RAM, its vCPUs (one host thread each), the PC platform devices, a
//! kernel loaded and configured by emu-boot, and the loops that run it until the guest
//! powers off, resets, asks the debug-exit port to end, or dies.
//!
//! vCPU 0 is the boot processor and enters the kernel; the others (`-smp N`) are
//! application processors waiting for INIT and start-up IPIs, as on a PC. Each vCPU has
//! its own local APIC (ID = its index) mapped at 0xFEE00000 in its own view of the MMIO
//! bus; every other device is shared. The boot vCPU runs on the caller's thread, the
//! others on scoped threads; a device's exit request or a dying vCPU stops them all.
//!
//! The platform ("quetzal", microvm-like): RAM from 0 (with the 3..4 GiB hole above
//! 3 GiB), a local APIC per vCPU at 0xFEE00000, an IOAPIC at 0xFEC00000, an HPET at 0xFED00000,
//! COM1 at 0x3F8 (IRQ 4), the 8259 pair (reaching the APIC's LINT0), 8254 PIT, CMOS RTC,
//! i8042, ACPI PM block at 0x600 with the PM timer and S5 power-off, the reset register
//! at 0xCF9, POST port 0x80 and the debug-exit port 0xF4, all described to the guest by
//! ACPI tables (MADT, FADT, HPET, DSDT). ISA IRQs reach both the 8259 and the IOAPIC.
//!
//! VirtIO devices ([`MachineConfig::virtio`]) sit behind virtio-mmio transports in a window
//! below the IOAPIC, laid out as QEMU's microvm lays out its own: transport `i` decodes
//! [`VIRTIO_MMIO_STRIDE`] bytes at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE` and drives
//! IOAPIC pin `VIRTIO_FIRST_GSI + i`, level triggered and active high. Each is a
//! `LNRO0005` device in the DSDT (Debian's kernels build `virtio_mmio` as a module and
//! ignore `virtio_mmio.device=`, so ACPI is how they find them). A queue notification is
//! served synchronously by the vCPU thread that writes QueueNotify. The host's side of a
//! virtio-console on the terminal is [`Machine::console_input`] (its output shares the
//! serial console's writer), and of a virtio-balloon [`Machine::balloon`]; both work from
//! any thread while the machine runs.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use emu_core::{Emulator, InterruptDelivery, RunOptions, StopReason};
use emu_devices::irq::IrqLine;
use emu_devices::ports::PortWindow;
use emu_mmu::SharedDevice;

use emu_devices::virtio::balloon::Balloon;
use emu_devices::virtio::block::{Block, BlockError};
use emu_devices::virtio::console::Console;
use emu_devices::virtio::mmio::MmioTransport;
use emu_devices::virtio::net::{Net, RxNotifier};
use emu_devices::virtio::rng::Rng;

use crate::config::{MachineConfig, SerialBackend, VirtioDeviceConfig, MAX_VIRTIO_DEVICES};
use crate::timers::{TimedDevice, TimerThread, TimerWaker, MAX_SLEEP};
use crate::trace::Tracer;

/// Base of the virtio-mmio window (QEMU microvm's address): free of RAM (inside the
/// 3..4 GiB hole) and below the IOAPIC (0xFEC00000), HPET and local APIC.
pub const VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// Bytes each virtio-mmio transport decodes: the register file (0x000..0x100) and the
/// device configuration space after it.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x200;
/// IOAPIC pin (GSI) of the first virtio-mmio transport; the next ones follow in order.
pub const VIRTIO_FIRST_GSI: u32 = 16;

/// Where VirtIO device `index` lives: its MMIO base and its IOAPIC pin.
pub fn virtio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_STRIDE,
        VIRTIO_FIRST_GSI + index as u32,
    )
}

// The window must end below the IOAPIC and every pin must exist.
const _: () = assert!(
    VIRTIO_MMIO_BASE + MAX_VIRTIO_DEVICES as u64 * VIRTIO_MMIO_STRIDE
        <= emu_devices::ioapic::IOAPIC_BASE_ADDR
);
const _: () = assert!(VIRTIO_FIRST_GSI as usize + MAX_VIRTIO_DEVICES <= emu_devices::ioapic::PINS);

/// A VirtIO device model, opened (its backing files checked) before anything else is
/// built, so a missing disk image is reported before the kernel is loaded.
enum VirtioModel {
    Block(Block),
    Rng(Rng),
    Net(Net),
    /// Its output is opened with the other consoles (see [`VirtioHost`]).
    Console {
        terminal: bool,
    },
    Balloon(Balloon),
}

/// What the VirtIO devices the host drives itself need from [`Machine::new`], and the
/// typed handles to them the machine keeps.
struct VirtioHost {
    /// Opens the output of a virtconsole on the terminal.
    terminal: Box<dyn FnMut() -> Box<dyn Write + Send>>,
    /// The first virtconsole on the terminal.
    console: Option<Arc<Mutex<MmioTransport<Console>>>>,
    /// The first balloon.
    balloon: Option<Arc<Mutex<MmioTransport<Balloon>>>>,
}

impl VirtioModel {
    fn open(config: &VirtioDeviceConfig) -> Result<Self, MachineError> {
        Ok(match config {
            VirtioDeviceConfig::Block { path, read_only } => {
                VirtioModel::Block(Block::open(path, *read_only)?)
            }
            VirtioDeviceConfig::Rng => VirtioModel::Rng(Rng::new()),
            VirtioDeviceConfig::Net { mac, user } => {
                // The network's thread starts now, so a hostfwd port that cannot be bound
                // is reported before anything else is built.
                let notifier = RxNotifier::new();
                let backend = emu_net::UserNet::start(user, *mac, notifier.clone())?;
                VirtioModel::Net(Net::new(*mac, Box::new(backend), notifier))
            }
            VirtioDeviceConfig::Console { terminal } => VirtioModel::Console {
                terminal: *terminal,
            },
            VirtioDeviceConfig::Balloon { deflate_on_oom } => {
                VirtioModel::Balloon(Balloon::new(*deflate_on_oom))
            }
        })
    }

    /// Puts the model behind a transport that signals on `irq`.
    fn into_transport(
        self,
        mem: emu_devices::virtio::GuestMemory,
        irq: Arc<dyn IrqLine>,
        dma: Arc<emu_mmu::dma::DmaWrites>,
        host: &mut VirtioHost,
    ) -> SharedDevice {
        fn wrap<D: emu_devices::virtio::VirtioDevice + 'static>(
            device: D,
            mem: emu_devices::virtio::GuestMemory,
            irq: Arc<dyn IrqLine>,
            dma: Arc<emu_mmu::dma::DmaWrites>,
        ) -> Arc<Mutex<MmioTransport<D>>> {
            let mut transport = MmioTransport::new(device, mem, irq);
            transport.set_dma_writes(dma);
            Arc::new(Mutex::new(transport))
        }
        match self {
            VirtioModel::Block(d) => wrap(d, mem, irq, dma),
            VirtioModel::Rng(d) => wrap(d, mem, irq, dma),
            VirtioModel::Net(d) => {
                let mut transport = MmioTransport::new(d, mem, irq);
                transport.set_dma_writes(dma);
                let transport = Arc::new(Mutex::new(transport));
                // Frames arriving while the guest is idle are delivered by the network's
                // thread through the transport.
                emu_devices::virtio::net::connect_rx(&transport);
                transport
            }
            VirtioModel::Console { terminal } => {
                let output = match terminal {
                    true => (host.terminal)(),
                    false => Box::new(std::io::sink()),
                };
                let t = wrap(Console::new(output), mem, irq, dma);
                if terminal {
                    host.console.get_or_insert_with(|| t.clone());
                }
                t
            }
            VirtioModel::Balloon(d) => {
                let t = wrap(d, mem, irq, dma);
                host.balloon.get_or_insert_with(|| t.clone());
                t
            }
        }
    }
}

/// Why a machine stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042, 0xCF9).
    Reset,
    /// The guest wrote to the debug-exit port: exit with this status.
    DebugExit(u32),
    /// The CPU shut down (triple fault); the message describes its state.
    TripleFault(String),
    /// The CPU halted with interrupts disabled: nothing can wake it.
    HaltedForever(String),
    /// An instruction fetch reached memory that is neither RAM nor a device (data
    /// accesses there read all ones and drop writes, as on a PC).
    Unmapped(String),
    /// The guest kernel panicked (seen on its console); the panic message.
    GuestPanic(String),
    /// [`Machine::stop_handle`] was used.
    Stopped,
}

/// Watches the guest's console for a Linux panic: when the panic's closing line
/// ("---[ end Kernel panic") has been printed, the machine stops with
/// [`Outcome::GuestPanic`] instead of spinning in the kernel's panic loop forever.
struct PanicWatch {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    message: Option<String>,
    on_panic: Box<dyn Fn(String) + Send>,
}

impl Write for PanicWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            if b != b'\n' && b != b'\r' && self.line.len() < 512 {
                self.line.push(b);
            }
            let line_done = b == b'\n';
            // The closing line ends with "]---" and its newline may come much later.
            let closing = self.line.ends_with(b"]---")
                && String::from_utf8_lossy(&self.line).contains("---[ end Kernel panic");
            if !line_done && !closing {
                continue;
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if let Some(at) = line.find("Kernel panic - not syncing") {
                if !closing {
                    self.message = Some(line[at..].trim_end().to_string());
                    continue;
                }
            }
            if closing {
                let msg = self
                    .message
                    .take()
                    .unwrap_or_else(|| line.trim().to_string());
                (self.on_panic)(msg);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `inner` behind a [`PanicWatch`] that stops the machine through `exit` and `stop`.
fn panic_watched(
    inner: Box<dyn Write + Send>,
    exit: Arc<ExitLatch>,
    stop: emu_core::StopHandle,
) -> Box<dyn Write + Send> {
    Box::new(PanicWatch {
        inner,
        line: Vec::new(),
        message: None,
        on_panic: Box::new(move |msg| {
            exit.request(Outcome::GuestPanic(msg));
            stop.stop();
        }),
    })
}

/// One console writer shared by the guest's consoles on the terminal (the UART and a
/// virtconsole), so both reach the writer given to [`Machine::new`].
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Errors building a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel or initrd could not be loaded.
    #[error("cannot boot {path}: {source}")]
    Boot {
        /// The kernel file.
        path: String,
        /// What emu-boot found wrong.
        source: emu_boot::Error,
    },
    /// Guest memory could not be set up.
    #[error("cannot set up guest memory: {0}")]
    Memory(String),
    /// A device could not be mapped.
    #[error("cannot map a device: {0}")]
    Bus(String),
    /// A disk image could not be used (the message names the file).
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// User-mode networking could not start (a hostfwd port that cannot be bound).
    #[error(transparent)]
    Network(#[from] emu_net::NetError),
    /// The trace file (`-D`) could not be opened.
    #[error("cannot open the trace file {path}: {source}")]
    TraceFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the devices ask the machine to do; the first request wins.
#[derive(Default)]
struct ExitLatch {
    outcome: Mutex<Option<Outcome>>,
}

impl ExitLatch {
    fn request(&self, outcome: Outcome) {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if o.is_none() {
            *o = Some(outcome);
        }
    }

    fn take(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// `emu_boot::GuestMemory` over the emulator's RAM.
struct BootMemory<'a> {
    emu: &'a mut Emulator,
    regions: Vec<emu_boot::layout::RamRegion>,
}

impl emu_boot::memory::GuestMemory for BootMemory<'_> {
    fn ram_regions(&self) -> Vec<emu_boot::layout::RamRegion> {
        self.regions.clone()
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), emu_boot::memory::MemoryError> {
        let inside = self
            .regions
            .iter()
            .any(|r| addr >= r.base && addr.saturating_add(data.len() as u64) <= r.base + r.size);
        if !inside {
            return Err(emu_boot::memory::MemoryError::OutOfRange {
                addr,
                len: data.len() as u64,
            });
        }
        self.emu
            .write_memory(addr, data)
            .map_err(|_| emu_boot::memory::MemoryError::OutOfRange {
                addr,
                len: data.len() as u64,
            })
    }
}

/// An ISA interrupt line: as on a PC, it reaches both the 8259 pair and the IOAPIC (IRQ 0
/// on pin 2, as the MADT's interrupt source override says; every other IRQ on its own
/// number).
/// (The 8259 drives its own INTR output, wired to the APIC's LINT0.)
struct IsaIrq {
    irq: u8,
    pic: Arc<Mutex<emu_devices::pic::PicPair>>,
    ioapic_pin: Arc<dyn IrqLine>,
}

impl IrqLine for IsaIrq {
    fn set_level(&self, high: bool) {
        self.pic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_irq(self.irq, high);
        self.ioapic_pin.set_level(high);
    }
}

/// How a local APIC reaches its vCPU.
struct CpuWake(emu_core::InterruptLine);

impl emu_devices::lapic::CpuSignal for CpuWake {
    fn interrupt(&self) {
        self.0.notify();
    }
    fn nmi(&self) {
        self.0.raise_nmi();
    }
    fn init(&self) {
        self.0.raise_init();
    }
    fn startup(&self, vector: u8) {
        self.0.raise_startup(vector);
    }
}

/// The local APIC as the CPU, the MMIO bus and the timer thread each see it.
struct Apic(emu_devices::lapic::LocalApic);

fn msr_access(r: emu_devices::lapic::MsrResult) -> emu_core::MsrAccess {
    match r {
        emu_devices::lapic::MsrResult::NotMine => emu_core::MsrAccess::NotMine,
        emu_devices::lapic::MsrResult::Ok(v) => emu_core::MsrAccess::Done(v),
        emu_devices::lapic::MsrResult::Fault => emu_core::MsrAccess::Fault,
    }
}

impl emu_core::LocalInterruptController for Apic {
    fn acknowledge(&mut self) -> Option<u8> {
        self.0.acknowledge()
    }
    fn read_msr(&mut self, msr: u32) -> emu_core::MsrAccess {
        msr_access(self.0.read_msr(msr))
    }
    fn write_msr(&mut self, msr: u32, value: u64) -> emu_core::MsrAccess {
        msr_access(self.0.write_msr(msr, value))
    }
    fn tpr(&mut self) -> u8 {
        self.0.tpr()
    }
    fn set_tpr(&mut self, tpr: u8) {
        self.0.set_tpr(tpr);
    }
}

impl emu_mmu::BusDevice for Apic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

impl TimedDevice for Apic {
    fn next_deadline_ns(&self) -> Option<u64> {
        self.0.next_deadline_ns()
    }
    fn tick(&mut self, now_ns: u64) {
        self.0.tick(now_ns)
    }
}

impl TimedDevice for emu_devices::hpet::Hpet {
    fn next_deadline_ns(&self) -> Option<u64> {
        emu_devices::hpet::Hpet::next_deadline_ns(self)
    }
    fn tick(&mut self, now_ns: u64) {
        emu_devices::hpet::Hpet::tick(self, now_ns)
    }
}

impl TimedDevice for emu_devices::pit::Pit {
    fn next_deadline_ns(&self) -> Option<u64> {
        emu_devices::pit::Pit::next_deadline_ns(self)
    }
    fn tick(&mut self, now_ns: u64) {
        emu_devices::pit::Pit::tick(self, now_ns)
    }
}

impl TimedDevice for emu_devices::rtc::Rtc {
    fn next_deadline_ns(&self) -> Option<u64> {
        emu_devices::rtc::Rtc::next_deadline_ns(self)
    }
    fn tick(&mut self, now_ns: u64) {
        emu_devices::rtc::Rtc::tick(self, now_ns)
    }
}

impl TimedDevice for emu_devices::acpi_pm::AcpiPm {
    fn next_deadline_ns(&self) -> Option<u64> {
        emu_devices::acpi_pm::AcpiPm::next_deadline_ns(self)
    }
    fn tick(&mut self, now_ns: u64) {
        emu_devices::acpi_pm::AcpiPm::tick(self, now_ns)
    }
}

/// A device whose writes may reprogram a timer: after each one the timer thread is woken
/// to look at the new deadline (reads never change one).
struct WakeOnWrite {
    inner: SharedDevice,
    waker: TimerWaker,
}

impl emu_mmu::BusDevice for WakeOnWrite {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data);
        self.waker.wake();
    }
}

/// A built machine, ready to run.
pub struct Machine {
    /// The vCPUs; the first is the boot processor, the others wait for start-up IPIs.
    cpus: Vec<Emulator>,
    /// Holds every vCPU at a block boundary for [`Machine::pause_handle`].
    gate: Arc<emu_core::smp::Gate>,
    /// Stops every vCPU.
    stop: emu_core::StopHandle,
    exit: Arc<ExitLatch>,
    serial: Arc<Mutex<emu_devices::serial::Serial>>,
    timed: Vec<Arc<Mutex<dyn TimedDevice>>>,
    /// Wakes the timer thread when the guest reprograms a timer.
    waker: TimerWaker,
    /// The timer thread's safety-net poll interval.
    timer_poll: std::time::Duration,
    tracer: Option<Arc<Tracer>>,
    entry: emu_boot::cpu::EntryState,
    /// The first virtconsole on the terminal.
    virtio_console: Option<Arc<Mutex<MmioTransport<Console>>>>,
    /// The first virtio-balloon.
    balloon: Option<Arc<Mutex<MmioTransport<Balloon>>>>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, MachineError> {
    std::fs::read(path).map_err(|source| MachineError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Machine {
    /// Builds the machine `config` describes and loads its kernel. Serial output goes to
    /// `console` (the CLI passes standard output, or a file).
    ///
    /// # Errors
    ///
    /// An unusable configuration, an unreadable or unbootable kernel or initrd.
    pub fn new(
        config: &MachineConfig,
        console: Box<dyn Write + Send>,
    ) -> Result<Machine, MachineError> {
        config.validate()?;
        let kernel_path = config.kernel.as_deref().expect("validated");
        let kernel = read_file(kernel_path)?;
        let initrd = match &config.initrd {
            Some(p) => Some(read_file(p)?),
            None => None,
        };
        let virtio_models = config
            .virtio
            .iter()
            .map(VirtioModel::open)
            .collect::<Result<Vec<_>, _>>()?;
        let virtio_acpi = (0..virtio_models.len())
            .map(|i| {
                let (base, gsi) = virtio_slot(i);
                emu_boot::acpi::VirtioMmioDevice {
                    base,
                    size: VIRTIO_MMIO_STRIDE,
                    irq: gsi,
                }
            })
            .collect();

        let tracer = if config.trace == crate::config::TraceFlags::default() {
            None
        } else {
            let t = Tracer::open(config.trace, config.trace_file.as_deref()).map_err(|source| {
                MachineError::TraceFile {
                    path: config
                        .trace_file
                        .as_deref()
                        .unwrap_or(Path::new("(stderr)"))
                        .display()
                        .to_string(),
                    source,
                }
            })?;
            Some(Arc::new(t))
        };

        let mut emu = Emulator::new();
        prepare_vcpu(&mut emu, tracer.as_ref());
        let waker = TimerWaker::new();
        let wake_on_write = |inner: SharedDevice| -> SharedDevice {
            Arc::new(Mutex::new(WakeOnWrite {
                inner,
                waker: waker.clone(),
            }))
        };
        let regions = emu_boot::layout::ram_regions(config.memory);
        for r in &regions {
            emu.map_memory(r.base, r.size)
                .map_err(|e| MachineError::Memory(e.to_string()))?;
        }
        let boot = {
            let mut mem = BootMemory {
                emu: &mut emu,
                regions,
            };
            emu_boot::boot(
                &mut mem,
                &emu_boot::BootRequest {
                    kernel: &kernel,
                    initrd: initrd.as_deref(),
                    cmdline: &config.cmdline,
                    acpi: Some(emu_boot::acpi::AcpiConfig {
                        cpus: config.cpus,
                        virtio_mmio: virtio_acpi,
                        ..Default::default()
                    }),
                },
            )
            .map_err(|source| MachineError::Boot {
                path: kernel_path.display().to_string(),
                source,
            })?
        };

        // The other vCPUs share the boot vCPU's RAM (all mapped by now), code marks and
        // clock; each gets its own local APIC and its own view of the buses below.
        let gate = emu.attach_gate();
        let mut cpus = vec![emu];
        for _ in 1..config.cpus {
            let mut ap = cpus[0].new_vcpu();
            // Application processors wait in their power-up state for INIT and SIPI.
            ap.reset();
            ap.set_activity(emu_core::Activity::WaitForStartup);
            prepare_vcpu(&mut ap, tracer.as_ref());
            cpus.push(ap);
        }

        let exit = Arc::new(ExitLatch::default());
        let clock = cpus[0].clock();
        let stop =
            emu_core::StopHandle::all(&cpus.iter().map(|c| c.stop_handle()).collect::<Vec<_>>());
        let signal = |outcome: Outcome| -> emu_devices::legacy::Signal {
            let exit = exit.clone();
            let stop = stop.clone();
            Arc::new(move || {
                exit.request(outcome.clone());
                stop.stop();
            })
        };
        let add_mmio = |cpus: &mut [Emulator], base: u64, len: u64, device: SharedDevice| {
            cpus.iter_mut().try_for_each(|c| {
                c.add_mmio_device(base, len, device.clone())
                    .map_err(|e| MachineError::Bus(e.to_string()))
            })
        };

        // Interrupts: each vCPU's local APIC is its controller; the IOAPIC routes device
        // pins to them; the 8259 pair reaches the boot vCPU's through LINT0 (virtual-wire
        // mode, which the kernel turns off once it switches to the IOAPIC); IPIs go from
        // any APIC to the others it addresses.
        let mut lapics: Vec<emu_devices::lapic::LocalApic> = cpus
            .iter_mut()
            .enumerate()
            .map(|(i, cpu)| {
                let id = i as u32;
                cpu.cpu_mut().apic_id = id;
                cpu.cpu_mut().package_cpus = config.cpus;
                let mut lapic = emu_devices::lapic::LocalApic::new(
                    id,
                    i == 0,
                    clock.clone(),
                    Arc::new(CpuWake(cpu.interrupt_line())),
                );
                // A deadline sooner than the timer thread's current sleep must not wait
                // for its next poll: a one-shot of 100 us fires after 100 us, not 1 ms.
                let waker = waker.clone();
                lapic.set_timer_listener(Box::new(move |_| waker.wake()));
                lapic
            })
            .collect();
        lapics[0].set_virtual_wire();
        let apic_inputs: Vec<emu_devices::lapic::LapicInput> =
            lapics.iter().map(|l| l.input()).collect();
        let ioapic = {
            let inputs = apic_inputs.clone();
            Arc::new(Mutex::new(emu_devices::ioapic::IoApic::new(
                config.cpus as u8,
                Box::new(move |message| emu_devices::lapic::route(&inputs, message)),
            )))
        };
        let pic = Arc::new(Mutex::new(emu_devices::pic::PicPair::new(
            apic_inputs[0].lint(0),
        )));
        let mut apics: Vec<Arc<Mutex<Apic>>> = Vec::new();
        for (cpu, mut lapic) in cpus.iter_mut().zip(lapics) {
            let pic = pic.clone();
            lapic.set_extint_acknowledge(Box::new(move || {
                pic.lock().unwrap_or_else(|e| e.into_inner()).acknowledge()
            }));
            let ioapic = ioapic.clone();
            lapic.set_eoi_broadcast(Box::new(move |vector| {
                ioapic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .end_of_interrupt(vector)
            }));
            let inputs = apic_inputs.clone();
            lapic.set_ipi_router(Box::new(move |ipi| {
                emu_devices::lapic::route_ipi(&inputs, ipi)
            }));
            let apic = Arc::new(Mutex::new(Apic(lapic)));
            cpu.set_interrupt_controller(apic.clone());
            // Each vCPU sees its own APIC at the architectural address.
            cpu.add_mmio_device(
                emu_devices::lapic::APIC_BASE_ADDR,
                emu_devices::lapic::APIC_PAGE_SIZE,
                apic.clone(),
            )
            .map_err(|e| MachineError::Bus(e.to_string()))?;
            apics.push(apic);
        }
        add_mmio(
            &mut cpus,
            emu_devices::ioapic::IOAPIC_BASE_ADDR,
            emu_devices::ioapic::IOAPIC_MMIO_SIZE,
            ioapic.clone(),
        )?;
        let isa = |irq: u8| -> Arc<dyn IrqLine> {
            let gsi = if irq == 0 { 2 } else { irq as usize };
            Arc::new(IsaIrq {
                irq,
                pic: pic.clone(),
                ioapic_pin: emu_devices::ioapic::IoApic::pin(&ioapic, gsi),
            })
        };
        let hpet = Arc::new(Mutex::new(emu_devices::hpet::Hpet::new(
            clock.clone(),
            (0..emu_devices::ioapic::PINS)
                .map(|n| emu_devices::ioapic::IoApic::pin(&ioapic, n))
                .collect(),
        )));
        add_mmio(
            &mut cpus,
            emu_devices::hpet::HPET_BASE,
            emu_devices::hpet::HPET_LEN,
            wake_on_write(hpet.clone()),
        )?;

        // The serial console, and hvc0 when a virtconsole is on the terminal: the same
        // panic-watched writer when the serial port is on the terminal too, else standard
        // output (watched on its own).
        let console = SharedWriter(Arc::new(Mutex::new(panic_watched(
            console,
            exit.clone(),
            stop.clone(),
        ))));
        let mut virtio_host = VirtioHost {
            terminal: if config.serial == SerialBackend::Stdio {
                let console = console.clone();
                Box::new(move || Box::new(console.clone()))
            } else {
                let (exit, stop) = (exit.clone(), stop.clone());
                Box::new(move || {
                    panic_watched(Box::new(std::io::stdout()), exit.clone(), stop.clone())
                })
            },
            console: None,
            balloon: None,
        };
        if !virtio_models.is_empty() {
            let mem = cpus[0]
                .cpu()
                .mmu
                .ram()
                .memory()
                .cloned()
                .ok_or_else(|| MachineError::Memory("no RAM for VirtIO devices".into()))?;
            for (i, model) in virtio_models.into_iter().enumerate() {
                let (base, gsi) = virtio_slot(i);
                let irq = emu_devices::ioapic::IoApic::pin(&ioapic, gsi as usize);
                let dma = cpus[0].cpu().mmu.dma_writes();
                let transport = model.into_transport(mem.clone(), irq, dma, &mut virtio_host);
                add_mmio(&mut cpus, base, VIRTIO_MMIO_STRIDE, transport)?;
            }
        }

        let mut map_ports =
            |ranges: &[(u16, u16)], device: SharedDevice| -> Result<(), MachineError> {
                for &(base, len) in ranges {
                    for cpu in cpus.iter_mut() {
                        cpu.add_io_device(base, len, device.clone())
                            .map_err(|e| MachineError::Bus(e.to_string()))?;
                    }
                }
                Ok(())
            };
        for &(base, len) in emu_devices::pic::PicPair::PORT_RANGES {
            map_ports(
                &[(base, len)],
                Arc::new(Mutex::new(PortWindow::new(pic.clone(), base))),
            )?;
        }
        let pit = Arc::new(Mutex::new(emu_devices::pit::Pit::new(
            clock.clone(),
            isa(0),
        )));
        for &(base, len) in emu_devices::pit::Pit::PORT_RANGES {
            map_ports(
                &[(base, len)],
                wake_on_write(Arc::new(Mutex::new(PortWindow::new(pit.clone(), base)))),
            )?;
        }
        let serial = Arc::new(Mutex::new(emu_devices::serial::Serial::new(
            isa(4),
            Box::new(console),
        )));
        map_ports(&[(0x3f8, 8)], serial.clone())?;
        let rtc = Arc::new(Mutex::new(emu_devices::rtc::Rtc::new(
            clock.clone(),
            isa(8),
        )));
        map_ports(
            &[(emu_devices::rtc::RTC_PORT_BASE, 2)],
            wake_on_write(rtc.clone()),
        )?;
        let i8042 = Arc::new(Mutex::new(emu_devices::i8042::I8042::new(
            isa(1),
            signal(Outcome::Reset),
        )));
        for &(base, len) in emu_devices::i8042::I8042::PORT_RANGES {
            map_ports(
                &[(base, len)],
                Arc::new(Mutex::new(PortWindow::new(i8042.clone(), base))),
            )?;
        }
        let pm = Arc::new(Mutex::new(emu_devices::acpi_pm::AcpiPm::new(
            clock.clone(),
            isa(emu_devices::acpi_pm::SCI_IRQ),
            signal(Outcome::PowerOff),
            signal(Outcome::Reset),
        )));
        for &(base, len) in emu_devices::acpi_pm::AcpiPm::PORT_RANGES {
            map_ports(
                &[(base, len)],
                Arc::new(Mutex::new(PortWindow::new(pm.clone(), base))),
            )?;
        }
        map_ports(
            &[(emu_devices::legacy::POST_CODE_PORT, 1)],
            Arc::new(Mutex::new(emu_devices::legacy::PostCode::new())),
        )?;
        let debug_exit: emu_devices::legacy::ExitSignal = {
            let exit = exit.clone();
            let stop = stop.clone();
            Arc::new(move |code| {
                exit.request(Outcome::DebugExit(code));
                stop.stop();
            })
        };
        map_ports(
            &[(emu_devices::legacy::DEBUG_EXIT_PORT, 4)],
            Arc::new(Mutex::new(emu_devices::legacy::DebugExit::new(debug_exit))),
        )?;

        let mut timed: Vec<Arc<Mutex<dyn TimedDevice>>> = vec![pit, rtc, pm, hpet];
        for apic in apics {
            timed.push(apic);
        }
        let mut machine = Machine {
            cpus,
            gate,
            stop,
            exit,
            serial,
            timed,
            waker,
            timer_poll: MAX_SLEEP,
            tracer,
            entry: boot.entry,
            virtio_console: virtio_host.console,
            balloon: virtio_host.balloon,
        };
        machine.apply_entry_state();
        Ok(machine)
    }

    /// Puts the boot vCPU in the state emu-boot's protocol asks for.
    fn apply_entry_state(&mut self) {
        let e = self.entry;
        let cpu = self.cpus[0].cpu_mut();
        cpu.regs = [0; 17];
        cpu.regs[emu_core::cpu::reg::RAX as usize] = e.rax;
        cpu.regs[emu_core::cpu::reg::RBX as usize] = e.rbx;
        cpu.regs[emu_core::cpu::reg::RSI as usize] = e.rsi;
        cpu.regs[emu_core::cpu::reg::RSP as usize] = e.rsp;
        cpu.set_rflags(e.rflags);
        cpu.sys.gdtr = emu_core::sysregs::TableRegister {
            base: e.gdt_base,
            limit: e.gdt_limit,
        };
        cpu.sys.idtr = emu_core::sysregs::TableRegister { base: 0, limit: 0 };
        for sreg in 0..6 {
            let s = if sreg == emu_core::cpu::seg::CS as usize {
                e.cs
            } else {
                e.data
            };
            cpu.seg_sel[sreg] = s.selector;
            cpu.seg_base[sreg] = s.base;
            cpu.seg_limit[sreg] = s.limit;
            cpu.seg_attr[sreg] = s.attributes;
        }
        cpu.sys.cr0 = e.cr0;
        cpu.sys.cr3 = e.cr3;
        cpu.sys.cr4 = e.cr4;
        cpu.sys.efer = e.efer;
        cpu.apply_paging(e.cr0, e.cr3, e.cr4, e.efer)
            .expect("emu-boot's entry paging state is valid");
        cpu.set_cpl(0);
        cpu.update_mode();
        cpu.rip = e.rip;
    }

    /// Sets how often the timer thread looks at the devices' deadlines when nothing woke
    /// it ([`crate::timers::MAX_SLEEP`] by default). Every timer the guest programs wakes
    /// the thread itself, so this is only a safety net; tests lengthen it to show that.
    pub fn set_timer_poll(&mut self, poll: std::time::Duration) {
        self.timer_poll = poll;
    }

    /// A handle that stops [`Machine::run`] (every vCPU) from another thread.
    pub fn stop_handle(&self) -> emu_core::StopHandle {
        self.stop.clone()
    }

    /// A handle that pauses and resumes the running machine from another thread:
    /// [`emu_core::smp::Gate::pause`] returns once no vCPU runs guest code (each stops
    /// at its next block boundary; halted ones stay halted and cannot wake until
    /// [`emu_core::smp::Gate::resume`]). Guest memory and devices are then quiescent, as a
    /// snapshot needs them.
    pub fn pause_handle(&self) -> Arc<emu_core::smp::Gate> {
        self.gate.clone()
    }

    /// How many vCPUs the machine has.
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// Gives typed input to the guest's serial port (the terminal thread calls this).
    pub fn serial_input(&self) -> impl Fn(&[u8]) + Send + Sync + 'static {
        let serial = self.serial.clone();
        move |bytes: &[u8]| {
            serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes);
        }
    }

    /// Gives typed input to the guest's `hvc0` when a virtconsole is on the terminal
    /// ([`VirtioDeviceConfig::Console`] with `terminal`); `None` without one. Callable
    /// from any thread while the machine runs.
    pub fn console_input(&self) -> Option<impl Fn(&[u8]) + Send + Sync + 'static> {
        let console = self.virtio_console.clone()?;
        Some(move |bytes: &[u8]| {
            console
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .receive_input(bytes);
        })
    }

    /// The first virtio-balloon's transport, usable from any thread while the machine
    /// runs: `set_target_pages` and `request_stats` drive it, `device()` shows the
    /// guest's statistics and how many pages it gave back; `None` without a balloon.
    pub fn balloon(&self) -> Option<Arc<Mutex<MmioTransport<Balloon>>>> {
        self.balloon.clone()
    }

    /// Runs the machine until it powers off, resets, exits through the debug port, dies
    /// or is stopped.
    pub fn run(&mut self) -> Outcome {
        let outcome = self.run_until_outcome();
        if let Some(t) = &self.tracer {
            t.flush();
        }
        outcome
    }

    fn run_until_outcome(&mut self) -> Outcome {
        let _timers = TimerThread::start_with(
            self.cpus[0].clock(),
            self.timed.clone(),
            self.waker.clone(),
            self.timer_poll,
        );
        let (bsp, aps) = self.cpus.split_first_mut().expect("a machine has a vCPU");
        let exit = &self.exit;
        let stop = &self.stop;
        let tracer = self.tracer.as_deref();
        std::thread::scope(|scope| {
            for (i, ap) in aps.iter_mut().enumerate() {
                std::thread::Builder::new()
                    .name(format!("quetzal-vcpu{}", i + 1))
                    .spawn_scoped(scope, move || {
                        // An application processor ends the machine only by dying;
                        // everything else (a stop, a power-off) goes through the exit
                        // latch, which the boot vCPU's loop reports.
                        if let Some(outcome) = run_vcpu(ap, tracer) {
                            exit.request(outcome);
                            stop.stop();
                        }
                    })
                    .expect("cannot start a vCPU thread");
            }
            if let Some(outcome) = run_vcpu(bsp, tracer) {
                exit.request(outcome);
            }
            // Without a device's (or a dying vCPU's) request, the stop handle was used.
            let outcome = exit.take().unwrap_or(Outcome::Stopped);
            // The other vCPUs end with the machine.
            stop.stop();
            outcome
        })
    }

    /// The boot vCPU's registers, for fatal-error messages.
    pub fn describe_cpu(&self) -> String {
        describe_cpu(&self.cpus[0])
    }

    /// Instructions retired so far.
    pub fn instructions(&self) -> u64 {
        self.cpus.iter().map(|c| c.cpu().icount).sum()
    }
}

/// What every vCPU of the machine gets: guest delivery of exceptions and interrupts, the
/// PC's answer to unassigned physical addresses (reads all ones, writes dropped; QEMU
/// logs them under -d guest_errors, so do we) and the tracer's hooks.
fn prepare_vcpu(emu: &mut Emulator, tracer: Option<&Arc<Tracer>>) {
    emu.set_interrupt_delivery(InterruptDelivery::Guest);
    emu.set_unassigned_mmio(Some(match tracer {
        Some(t) => {
            let t = t.clone();
            Arc::new(move |a: &emu_mmu::UnassignedAccess| t.unassigned(a))
        }
        None => Arc::new(|_: &emu_mmu::UnassignedAccess| {}),
    }));
    if let Some(t) = tracer {
        t.install(emu);
    }
}

/// Runs one vCPU until something ends its part in the machine: `Some` with the outcome
/// when it died (triple fault, fetch from nothing, or every vCPU halted for good), `None`
/// when it was stopped.
fn run_vcpu(emu: &mut Emulator, tracer: Option<&Tracer>) -> Option<Outcome> {
    loop {
        match emu.resume(&RunOptions::default()) {
            StopReason::StopRequested => return None,
            StopReason::TripleFault { .. } => return Some(Outcome::TripleFault(describe_cpu(emu))),
            StopReason::Halted => return Some(Outcome::HaltedForever(describe_cpu(emu))),
            StopReason::Unmapped { fault, rip } => {
                let what = format!("{fault} (instruction at RIP {rip:#x})");
                if let Some(t) = tracer.filter(|t| t.flags().guest_errors) {
                    t.line(&format!("guest_errors: {what}"));
                }
                return Some(Outcome::Unmapped(format!("{what}\n{}", describe_cpu(emu))));
            }
            // Anything else (a timeout, an instruction limit) just continues.
            _ => continue,
        }
    }
}

/// A vCPU's registers, for fatal-error messages.
fn describe_cpu(emu: &Emulator) -> String {
    let cpu = emu.cpu();
    let names = [
        "RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11", "R12",
        "R13", "R14", "R15",
    ];
    let mut s = format!(
        "CPU {} RIP={:#018x} RFLAGS={:#x} CS={:#x} CPL={} CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x}\n",
        cpu.apic_id,
        cpu.rip,
        cpu.rflags(),
        cpu.seg_sel[1],
        cpu.sys.cpl,
        cpu.sys.cr0,
        cpu.sys.cr2,
        cpu.sys.cr3,
        cpu.sys.cr4,
        cpu.sys.efer
    );
    for (k, name) in names.iter().enumerate() {
        s.push_str(&format!("{name:>3}={:#018x}", cpu.regs[k]));
        s.push(if k % 4 == 3 { '\n' } else { ' ' });
    }
    s
}

/// Opens the serial backend's output.
///
/// # Errors
///
/// The file of `SerialBackend::File` cannot be opened.
pub fn console_output(backend: &SerialBackend) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match backend {
        SerialBackend::Stdio => Box::new(std::io::stdout()),
        SerialBackend::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        SerialBackend::None => Box::new(std::io::sink()),
    })
}
