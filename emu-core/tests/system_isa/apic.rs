//! The local APIC and IOAPIC (emu-devices) attached to a vCPU: 64-bit guest code with an
//! IDT enables the APIC, programs its timer through x2APIC MSRs or the xAPIC page, HLTs
//! and takes the interrupt; TPR and CR8 hold interrupts back; an IOAPIC level-triggered
//! line is delivered, EOI'd and released. A small host thread stands in for the
//! machine's timer thread, calling `LocalApic::tick`.
//!
//! `Apic` and `Wake` below are the glue a machine writes between emu-devices' local APIC
//! and emu-core's [`LocalInterruptController`] (the two crates do not depend on each
//! other).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emu_core::{
    Emulator, InterruptLine, LocalInterruptController, MsrAccess, Register, RunOptions, StopReason,
};
use emu_devices::ioapic::{IoApic, IOAPIC_BASE_ADDR, IOAPIC_MMIO_SIZE};
use emu_devices::irq::IrqLine;
use emu_devices::lapic::{route, CpuSignal, LocalApic, MsrResult, APIC_BASE_ADDR, APIC_PAGE_SIZE};
use emu_mmu::BusDevice;
use iced_x86::code_asm::*;

use super::common::reg;
use super::delivery::{machine, set_gate, set_handler, INTERRUPT};

/// A local APIC as the CPU's interrupt controller and as its MMIO page.
struct Apic(LocalApic);

impl BusDevice for Apic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

fn msr_access(r: MsrResult) -> MsrAccess {
    match r {
        MsrResult::NotMine => MsrAccess::NotMine,
        MsrResult::Ok(v) => MsrAccess::Done(v),
        MsrResult::Fault => MsrAccess::Fault,
    }
}

impl LocalInterruptController for Apic {
    fn acknowledge(&mut self) -> Option<u8> {
        self.0.acknowledge()
    }
    fn read_msr(&mut self, msr: u32) -> MsrAccess {
        msr_access(self.0.read_msr(msr))
    }
    fn write_msr(&mut self, msr: u32, value: u64) -> MsrAccess {
        msr_access(self.0.write_msr(msr, value))
    }
    fn tpr(&mut self) -> u8 {
        self.0.tpr()
    }
    fn set_tpr(&mut self, tpr: u8) {
        self.0.set_tpr(tpr);
    }
}

/// The APIC's way to its vCPU.
struct Wake(InterruptLine);

impl CpuSignal for Wake {
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

/// Attaches a local APIC (ID 0, the BSP) to `emu`: its MMIO page, the CPU hook.
fn attach_apic(emu: &mut Emulator) -> Arc<Mutex<Apic>> {
    let wake = Arc::new(Wake(emu.interrupt_line()));
    let apic = Arc::new(Mutex::new(Apic(LocalApic::new(0, true, emu.clock(), wake))));
    emu.add_mmio_device(APIC_BASE_ADDR, APIC_PAGE_SIZE, apic.clone())
        .unwrap();
    emu.set_interrupt_controller(apic.clone());
    apic
}

/// A stand-in for the machine's timer thread: ticks the APIC every 50 µs until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(apic: Arc<Mutex<Apic>>, clock: emu_mmu::clock::VirtualClock) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                apic.lock().unwrap().0.tick(clock.now_ns());
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        Ticker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(emu: &mut Emulator) -> StopReason {
    emu.run(
        super::common::CODE,
        &RunOptions {
            timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        },
    )
}

#[test]
fn tsc_deadline_timer_through_x2apic_msrs_wakes_hlt() {
    let mut emu = machine(|a| {
        let mut wait = a.create_label();
        // IA32_APIC_BASE |= x2APIC enable.
        a.mov(ecx, 0x1bu32)?;
        a.rdmsr()?;
        a.mov(r8, rax)?; // the base as the guest first saw it
        a.or(eax, 1 << 10)?;
        a.wrmsr()?;
        // CPUID.1: APIC, x2APIC and TSC-deadline bits, for the host to check.
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.mov(r9, rcx)?;
        a.mov(r15, rdx)?;
        // SVR: software enable, spurious vector 0xFF.
        a.mov(ecx, 0x80fu32)?;
        a.mov(eax, 0x1ffu32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        // LVT timer: vector 0x40, TSC-deadline mode.
        a.mov(ecx, 0x832u32)?;
        a.mov(eax, 0x40u32 | 2 << 17)?;
        a.wrmsr()?;
        // Deadline = now + 2 ms (TSC at 1 GHz), kept in R10.
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.add(rax, 2_000_000)?;
        a.mov(r10, rax)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.mov(ecx, 0x6e0u32)?;
        a.wrmsr()?;
        a.sti()?;
        a.set_label(&mut wait)?;
        a.hlt()?;
        a.cmp(r13, 1)?;
        a.jne(wait)?;
        a.cli()?;
        // The deadline disarmed itself when it fired.
        a.mov(ecx, 0x6e0u32)?;
        a.rdmsr()?;
        a.mov(r12, rax)?;
        a.hlt()
    });
    set_gate(&mut emu, 0x40, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x40, |a| {
        a.inc(r13)?;
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(r11, rax)?; // when the interrupt arrived
                          // EOI through the x2APIC MSR.
        a.mov(ecx, 0x80bu32)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.iretq()
    });
    let apic = attach_apic(&mut emu);
    let _ticker = Ticker::start(apic.clone(), emu.clock());
    assert_eq!(
        run(&mut emu),
        StopReason::Halted,
        "the final HLT with IF clear"
    );
    assert_eq!(
        reg(&emu, Register::R8),
        0xfee0_0900,
        "enabled, BSP, default base"
    );
    let (ecx1, edx1) = (reg(&emu, Register::R9), reg(&emu, Register::R15));
    assert_ne!(ecx1 & 1 << 21, 0, "x2APIC advertised");
    assert_ne!(ecx1 & 1 << 24, 0, "TSC-deadline advertised");
    assert_ne!(edx1 & 1 << 9, 0, "APIC advertised");
    assert_eq!(reg(&emu, Register::R13), 1, "one timer interrupt");
    assert!(
        reg(&emu, Register::R11) >= reg(&emu, Register::R10),
        "not before the deadline"
    );
    assert_eq!(
        reg(&emu, Register::R12),
        0,
        "the deadline reads 0 once fired"
    );
    let apic = apic.lock().unwrap();
    assert!(!apic.0.in_service(0x40), "EOI'd");
    assert!(apic.0.x2apic());
}

#[test]
fn one_shot_timer_through_the_xapic_page_is_held_back_by_cr8() {
    let mut emu = machine(|a| {
        let mut pending = a.create_label();
        a.mov(rbx, 0xfee0_0000u64)?;
        a.mov(dword_ptr(rbx + 0xf0), 0x1ff)?; // SVR: enabled
        a.mov(dword_ptr(rbx + 0x3e0), 0xb)?; // divide by 1
        a.mov(dword_ptr(rbx + 0x320), 0x50)?; // LVT timer: one-shot, vector 0x50
        a.mov(eax, 6u32)?;
        a.mov(cr8, rax)?; // TPR 0x60: class 5 held back
        a.mov(dword_ptr(rbx + 0x380), 200_000)?; // 200 µs
        a.sti()?;
        // Wait until the timer has fired: IRR bit 0x50 (IRR dword 2, bit 16).
        a.set_label(&mut pending)?;
        a.pause()?;
        a.mov(eax, dword_ptr(rbx + 0x220))?;
        a.test(eax, 1 << 16)?;
        a.jz(pending)?;
        a.mov(r12, r13)?; // interrupts taken so far: none
        a.mov(r9d, dword_ptr(rbx + 0xa0))?; // PPR
        a.mov(r8, cr8)?;
        a.mov(r10d, dword_ptr(rbx + 0x390))?; // current count: 0
        a.xor(eax, eax)?;
        a.mov(cr8, rax)?; // unmasks it: taken right after this instruction
        a.mov(r14, r13)?;
        a.cli()?;
        a.hlt()
    });
    set_gate(&mut emu, 0x50, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x50, |a| {
        a.inc(r13)?;
        a.mov(eax, dword_ptr(rbx + 0x120))?; // ISR dword 2
        a.mov(r15, rax)?;
        a.mov(dword_ptr(rbx + 0xb0), 0)?; // EOI
        a.iretq()
    });
    let apic = attach_apic(&mut emu);
    let _ticker = Ticker::start(apic.clone(), emu.clock());
    assert_eq!(run(&mut emu), StopReason::Halted);
    assert_eq!(reg(&emu, Register::R12), 0, "held back while TPR was 0x60");
    assert_eq!(reg(&emu, Register::R9), 0x60, "PPR = TPR");
    assert_eq!(reg(&emu, Register::R8), 6, "CR8 reads TPR[7:4]");
    assert_eq!(reg(&emu, Register::R10), 0, "the one-shot count ran out");
    assert_eq!(
        reg(&emu, Register::R14),
        1,
        "taken at once when CR8 dropped"
    );
    assert_eq!(
        reg(&emu, Register::R15),
        1 << 16,
        "in service in the handler"
    );
    assert_eq!(reg(&emu, Register::CR8), 0);
    assert_eq!(apic.lock().unwrap().0.tpr(), 0);
}

/// A port device that lowers an interrupt line when written (the guest's "ack").
struct LineClear(Arc<dyn IrqLine>);

impl BusDevice for LineClear {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.set_level(false);
    }
}

#[test]
fn ioapic_level_interrupt_reaches_the_cpu_and_its_eoi_clears_remote_irr() {
    let mut emu = machine(|a| {
        let mut wait = a.create_label();
        a.mov(rbx, 0xfee0_0000u64)?;
        a.mov(dword_ptr(rbx + 0xf0), 0x1ff)?; // SVR: enabled
                                              // IOAPIC pin 9: vector 0x61, level-triggered, active low, physical APIC 0.
        a.mov(rsi, 0xfec0_0000u64)?;
        a.mov(byte_ptr(rsi), 0x10 + 2 * 9 + 1)?;
        a.mov(dword_ptr(rsi + 0x10), 0)?;
        a.mov(byte_ptr(rsi), 0x10 + 2 * 9)?;
        a.mov(dword_ptr(rsi + 0x10), 0x61 | 1 << 13 | 1 << 15)?;
        a.mov(r12, 1u64)?; // ready
        a.sti()?;
        a.set_label(&mut wait)?;
        a.hlt()?;
        a.cmp(r13, 1)?;
        a.jne(wait)?;
        a.cli()?;
        a.hlt()
    });
    set_gate(&mut emu, 0x61, INTERRUPT, 0, 0, true);
    set_handler(&mut emu, 0x61, |a| {
        a.inc(r13)?;
        a.out(0x80, al)?; // the device drops its line
        a.mov(dword_ptr(rbx + 0xb0), 0)?; // EOI: broadcast to the IOAPIC
        a.iretq()
    });
    let apic = attach_apic(&mut emu);
    let input = apic.lock().unwrap().0.input();
    let ioapic = Arc::new(Mutex::new(IoApic::new(
        1,
        Box::new(move |m| route(std::slice::from_ref(&input), m)),
    )));
    emu.add_mmio_device(IOAPIC_BASE_ADDR, IOAPIC_MMIO_SIZE, ioapic.clone())
        .unwrap();
    let io = ioapic.clone();
    apic.lock()
        .unwrap()
        .0
        .set_eoi_broadcast(Box::new(move |v| io.lock().unwrap().end_of_interrupt(v)));
    let pin = IoApic::pin(&ioapic, 9);
    emu.add_io_device(0x80, 1, Arc::new(Mutex::new(LineClear(pin.clone()))))
        .unwrap();
    // A device thread asserts the line once the guest has programmed the IOAPIC.
    let device = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        pin.set_level(true);
    });
    let stop = run(&mut emu);
    device.join().unwrap();
    assert_eq!(stop, StopReason::Halted);
    assert_eq!(reg(&emu, Register::R12), 1, "the guest got to its HLT loop");
    assert_eq!(reg(&emu, Register::R13), 1, "delivered once");
    let entry = ioapic.lock().unwrap().redirection(9);
    assert_eq!(
        entry & 1 << 14,
        0,
        "remote IRR cleared by the EOI broadcast"
    );
    assert_eq!(entry & 0xff, 0x61);
}
