//! Bare-metal SMP guests: multiboot kernels (assembled here with iced-x86) that bring up
//! the application processors the way an operating system does and then check, inside
//! the guest, what only several vCPUs running at once can get wrong.
//!
//! - **AP start-up.** The BSP copies a real-mode trampoline below 1 MiB and wakes the APs
//!   with INIT (assert, de-assert) and two STARTUP IPIs, Linux's sequence, either
//!   broadcast (all-excluding-self) or one AP at a time (physical destination). Each AP
//!   loads a GDT, enters protected mode (and, in the 64-bit tests, long mode with
//!   identity-mapped 2 MiB pages) and records its arrival: the BSP checks that every AP
//!   arrived exactly once (so a second STARTUP restarting a running CPU is caught, and
//!   the counter tests send one more STARTUP to the running APs on purpose). INIT sends
//!   a halted AP back to wait-for-SIPI and the STARTUPs restart it, with the MP
//!   specification's delay and back to back as Linux does today.
//! - **Atomicity.** After a start barrier, every vCPU does `lock xadd`, a `lock cmpxchg`
//!   retry loop, an `xchg` spinlock guarding a plain read-modify-write, and whole-dword
//!   plus upper-word `lock add`s on the same bytes; the totals must be exact. Variants
//!   put the operands across a 64-byte line and across a page (the machine-wide
//!   exclusive section), and run in 64-bit mode on qwords, where the loops are hot enough
//!   for the compiled tier. Another guest covers every locked instruction kind and width:
//!   unique `lock xadd` tickets (marked with `lock bts`), neighbouring bytes, `adc`/`sbb`
//!   with a carry in, bit and logic operations, `cmpxchg8b`/`cmpxchg16b`. The BSP prints
//!   how much the vCPUs contended (cmpxchg retries, updates an unlocked `inc` lost) on
//!   the serial port, which the test output shows.
//! - **IPIs.** Fixed IPIs bounced between two vCPUs (xAPIC MMIO and x2APIC MSRs), each
//!   handler EOIing and sending the next one; logical (flat model) destinations,
//!   multicast, the self / all-including-self / all-excluding-self shorthands, NMIs
//!   (physical, logical and shorthand) waking a vCPU halted with interrupts off, and a
//!   fixed IPI staying pending while its target has IF=0.
//!
//! Guests report through the debug-exit port: [`SUCCESS`] or a failed check's code (in
//! bits 30:24) with the value it saw (bits 23:0), which the tests decode into a message.
//! Every wait inside a guest has a deadline on the TSC, and every machine runs under a
//! host watchdog, so a hang fails the test instead of blocking CI.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use emu_vmm::config::{MachineConfig, SerialBackend};
use emu_vmm::machine::{Machine, Outcome};
use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand};

mod common;
use common::{multiboot, Console, CODE, LOAD};

/// A temporary directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    common::scratch("smp", name)
}

// ---------------------------------------------------------------------------------------
// Memory map. The image is loaded at 1 MiB in fixed sections (32-bit code has no
// label-relative data operands, and code assembled separately can only reach other code
// at addresses fixed up front).

// The image's load address and the BSP's entry point are `common::LOAD` and `CODE`.
/// Code every CPU runs once in protected mode on our GDT: segments, stack, IDT, and the
/// switch to long mode in the 64-bit tests; then it jumps to [`MAIN`].
const COMMON32: u32 = LOAD + 0x1000;
/// The trampoline page as stored in the image; the BSP copies it to [`TRAMPOLINE`].
const TRAMPOLINE_IMAGE: u32 = LOAD + 0x1800;
/// Interrupt handlers, [`HANDLER_MAX`] bytes each.
const HANDLERS: u32 = LOAD + 0x2000;
const HANDLER_MAX: u32 = 0x100;
/// The test's own code, run by every CPU with EBX = its APIC ID.
const MAIN: u32 = LOAD + 0x3000;
const MAIN_MAX: u32 = 0x3000;

/// Real-mode trampoline: page-aligned below 1 MiB (STARTUP vector = page number). 0x8000
/// is free once the multiboot kernel runs (emu-boot's boot data ends below it and its
/// stack is not ours).
const TRAMPOLINE: u32 = 0x8000;
const TRAMPOLINE_SIZE: u32 = 0x200;
/// Inside the trampoline page: the GDT pseudo-descriptor and the GDT itself, so that
/// real-mode code can reach both through DS = CS.
const GDTR_OFFSET: u32 = 0xf0;
const GDT_OFFSET: u32 = 0x100;
const CODE32_SEL: u16 = 0x08;
const DATA_SEL: u16 = 0x10;
const CODE64_SEL: u16 = 0x18;

/// Identity map of the first GiB in 2 MiB pages (64-bit tests).
const PML4: u32 = 0x5_0000;
const PDPT: u32 = 0x5_1000;
const PD: u32 = 0x5_2000;
/// One IDT (32-bit gates) shared by every CPU.
const IDT: u32 = 0x6_0000;
const IDTR: u32 = IDT - 8;
/// CPU `id`'s stack is the 4 KiB below `STACKS + (id + 1) * 0x1000`.
const STACKS: u32 = 0x7_0000;

const APIC: u32 = 0xfee0_0000;
const APIC_ID: u32 = APIC + 0x20;
const APIC_EOI: u32 = APIC + 0xb0;
const APIC_LDR: u32 = APIC + 0xd0;
const APIC_DFR: u32 = APIC + 0xe0;
const APIC_SVR: u32 = APIC + 0xf0;
const APIC_ICR_LOW: u32 = APIC + 0x300;
const APIC_ICR_HIGH: u32 = APIC + 0x310;

/// ICR bits (SDM vol. 3 figure 10-12).
const DM_NMI: u32 = 0x400;
const DM_INIT: u32 = 0x500;
const DM_STARTUP: u32 = 0x600;
const DEST_LOGICAL: u32 = 1 << 11;
const DELIVERY_PENDING: u32 = 1 << 12;
const ASSERT: u32 = 1 << 14;
const LEVEL: u32 = 1 << 15;
const TO_SELF: u32 = 1 << 18;
const TO_ALL: u32 = 2 << 18;
const TO_OTHERS: u32 = 3 << 18;

/// Bookkeeping every CPU does in [`COMMON32`]: how many CPUs came up, and which.
const STARTS: u32 = 0x20_0000;
const ARRIVED: u32 = 0x20_0004;
/// Test data (each test lays out its own).
const DATA: u32 = 0x21_0000;

/// What a guest reports when every check passed.
const SUCCESS: u32 = 0x600d;
/// Guest-side deadline for any wait, in units of 2^20 TSC ticks (the TSC runs at 1 GHz):
/// about 30 s, well inside the host watchdog.
const GUEST_TIMEOUT: u32 = 28_600;
/// How long the host lets a machine run before stopping it.
const HOST_TIMEOUT: Duration = Duration::from_secs(60);

type Asm = CodeAssembler;
type Step = Result<(), IcedError>;
/// Code for an interrupt handler (32-bit, ends in IRETD).
type Handler = Box<dyn Fn(&mut Asm) -> Step>;

// ---------------------------------------------------------------------------------------
// Checks: each failure a guest can report gets a code and a description.

/// The checks a guest makes, numbered from 1 in the order they are emitted; the guest
/// exits with `code << 24 | value` when one fails.
#[derive(Default)]
struct Checks(RefCell<Vec<String>>);

impl Checks {
    fn code(&self, what: impl Into<String>) -> u32 {
        let mut names = self.0.borrow_mut();
        names.push(what.into());
        assert!(
            names.len() < 0x80,
            "exit codes have seven bits for the check"
        );
        names.len() as u32
    }

    /// Explains an outcome that is not success.
    fn describe(&self, outcome: &Outcome) -> String {
        match outcome {
            Outcome::DebugExit(status) => {
                let reported = status >> 1;
                let code = reported >> 24;
                let value = reported & 0xff_ffff;
                match self.0.borrow().get((code as usize).wrapping_sub(1)) {
                    Some(name) => {
                        format!("check {code} failed: {name}; the guest saw {value} ({value:#x})")
                    }
                    None => format!("unexpected debug exit {status:#x} (EAX {reported:#x})"),
                }
            }
            other => format!("{other:?}"),
        }
    }
}

/// Asserts that the guest exited with [`SUCCESS`], explaining anything else.
fn assert_success(outcome: &Outcome, checks: &Checks, took: Duration) {
    assert_eq!(
        *outcome,
        Outcome::DebugExit((SUCCESS << 1) | 1),
        "{} (after {took:?})",
        checks.describe(outcome)
    );
}

// ---------------------------------------------------------------------------------------
// Small code generators shared by the guests. They use EAX, EDX and ESI as scratch and
// leave EBX (the APIC ID) alone; all data addresses are below 2 GiB, so the same absolute
// operands work in 32-bit and in 64-bit code.

/// `out 0xf4, eax`: ends the machine with `DebugExit((eax << 1) | 1)`.
fn exit_with_eax(a: &mut Asm) -> Step {
    a.out(0xf4, eax)?;
    a.cli()?;
    a.hlt()
}

fn exit_success(a: &mut Asm) -> Step {
    a.mov(eax, SUCCESS)?;
    exit_with_eax(a)
}

/// Exits with check `code` failed, reporting the low 24 bits of EAX.
fn fail_with_eax(a: &mut Asm, code: u32) -> Step {
    a.and(eax, 0xff_ffff)?;
    a.or(eax, code << 24)?;
    exit_with_eax(a)
}

/// Fails check `code` unless the dword at `addr` is `expected`.
fn check_eq(a: &mut Asm, addr: u32, expected: u32, code: u32) -> Step {
    let mut ok = a.create_label();
    a.mov(eax, dword_ptr(addr))?;
    a.cmp(eax, expected)?;
    a.je(ok)?;
    fail_with_eax(a, code)?;
    a.set_label(&mut ok)
}

/// EAX = the TSC in units of 2^20 ticks (about a millisecond).
fn coarse_tsc(a: &mut Asm) -> Step {
    a.rdtsc()?;
    a.shrd(eax, edx, 20)
}

/// Spins (with PAUSE) until the dword at `addr` is `expected`; fails check `code`,
/// reporting the dword, if that takes longer than [`GUEST_TIMEOUT`].
fn wait_for(a: &mut Asm, addr: u32, expected: u32, code: u32) -> Step {
    let mut again = a.create_label();
    let mut done = a.create_label();
    coarse_tsc(a)?;
    a.mov(esi, eax)?;
    a.set_label(&mut again)?;
    a.cmp(dword_ptr(addr), expected)?;
    a.je(done)?;
    a.pause()?;
    coarse_tsc(a)?;
    a.sub(eax, esi)?;
    a.cmp(eax, GUEST_TIMEOUT)?;
    a.jb(again)?;
    a.mov(eax, dword_ptr(addr))?;
    fail_with_eax(a, code)?;
    a.set_label(&mut done)
}

/// Spins for about `ns` nanoseconds of TSC time (`ns` < 2^32).
fn delay_ns(a: &mut Asm, ns: u32) -> Step {
    let mut again = a.create_label();
    a.rdtsc()?;
    a.mov(esi, eax)?;
    a.set_label(&mut again)?;
    a.pause()?;
    a.rdtsc()?;
    a.sub(eax, esi)?;
    a.cmp(eax, ns)?;
    a.jb(again)
}

/// Halts with interrupts off for good (NMIs still come in and return here).
fn park(a: &mut Asm) -> Step {
    let mut again = a.create_label();
    a.cli()?;
    a.set_label(&mut again)?;
    a.hlt()?;
    a.jmp(again)
}

/// Halts with interrupts on forever: the CPU only runs its handlers from now on.
fn serve_interrupts(a: &mut Asm) -> Step {
    let mut again = a.create_label();
    a.sti()?;
    a.set_label(&mut again)?;
    a.hlt()?;
    a.jmp(again)
}

/// `jmp far selector:offset` (ptr16:32), in 16-bit code with an operand-size prefix.
fn jmp_far32(a: &mut Asm, selector: u16, offset: u32) -> Step {
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        selector,
        offset,
    )?)
}

/// How a CPU talks to its local APIC: the xAPIC MMIO page or the x2APIC MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApicMode {
    XApic,
    X2Apic,
}

impl ApicMode {
    /// Software-enables this CPU's APIC (spurious vector 0xFF), switching it to x2APIC
    /// mode first if that is the mode. Clobbers EAX, ECX, EDX.
    fn enable(self, a: &mut Asm) -> Step {
        match self {
            ApicMode::XApic => a.mov(dword_ptr(APIC_SVR), 0x1ffu32),
            ApicMode::X2Apic => {
                a.mov(ecx, 0x1bu32)?; // IA32_APIC_BASE
                a.rdmsr()?;
                a.or(eax, 0xc00)?; // enabled, x2APIC
                a.wrmsr()?;
                a.mov(ecx, 0x80fu32)?; // SVR
                a.mov(eax, 0x1ffu32)?;
                a.xor(edx, edx)?;
                a.wrmsr()
            }
        }
    }

    /// End of interrupt. Clobbers EAX, ECX, EDX.
    fn eoi(self, a: &mut Asm) -> Step {
        match self {
            ApicMode::XApic => a.mov(dword_ptr(APIC_EOI), 0u32),
            ApicMode::X2Apic => {
                a.mov(ecx, 0x80bu32)?;
                a.xor(eax, eax)?;
                a.xor(edx, edx)?;
                a.wrmsr()
            }
        }
    }

    /// Sends the IPI `icr_low` to `dest` (a physical APIC ID or a logical mask, as
    /// `icr_low` says; ignored with a shorthand). Clobbers EAX, ECX, EDX.
    fn send(self, a: &mut Asm, dest: u32, icr_low: u32) -> Step {
        match self {
            ApicMode::XApic => {
                // Delivery status always reads idle here, but an OS waits, so we do.
                // (The label-free first instruction lets a label precede a send.)
                let mut busy = a.create_label();
                let mut poll = a.create_label();
                a.jmp(poll)?;
                a.set_label(&mut busy)?;
                a.pause()?;
                a.set_label(&mut poll)?;
                a.test(dword_ptr(APIC_ICR_LOW), DELIVERY_PENDING)?;
                a.jnz(busy)?;
                a.mov(dword_ptr(APIC_ICR_HIGH), dest << 24)?;
                a.mov(dword_ptr(APIC_ICR_LOW), icr_low)
            }
            ApicMode::X2Apic => {
                a.mov(ecx, 0x830u32)?;
                a.mov(edx, dest)?;
                a.mov(eax, icr_low)?;
                a.wrmsr()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The SMP kernel: BSP entry, trampoline, common protected-mode entry, test code.

/// Which APs the BSP wakes, and how.
#[derive(Clone, Copy)]
enum Wake {
    /// INIT and STARTUPs with the all-excluding-self shorthand.
    Broadcast,
    /// INIT and STARTUPs to each of APIC IDs `1..cpus`, physical destination.
    OneByOne,
}

struct Smp<'a> {
    cpus: u32,
    wake: Wake,
    /// Run [`MAIN`] in 64-bit mode (identity-mapped first GiB, no IDT).
    long_mode: bool,
    /// BSP code before any AP is woken (32-bit): initialise data.
    bsp_setup: &'a dyn Fn(&mut Asm) -> Step,
    /// Every CPU (BSP included) with EBX = APIC ID and a private stack.
    main: &'a dyn Fn(&mut Asm) -> Step,
    /// 32-bit interrupt gates installed in the shared IDT.
    handlers: Vec<(u8, Handler)>,
}

/// The trampoline page: real-mode code at offset 0 (entered at CS = page >> 4, IP = 0),
/// the GDT pseudo-descriptor at [`GDTR_OFFSET`] and the GDT at [`GDT_OFFSET`].
fn trampoline() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    (|| -> Step {
        a.cli()?;
        a.mov(ax, cs)?;
        a.mov(ds, ax)?;
        // `lgdtl` as Linux's trampoline has it: the 32-bit form, full base.
        a.add_instruction(Instruction::with1(
            Code::Lgdt_m1632,
            MemoryOperand::with_displ(u64::from(GDTR_OFFSET), 2),
        )?)?;
        a.mov(eax, cr0)?;
        a.or(eax, 1)?; // PE
        a.mov(cr0, eax)?;
        jmp_far32(&mut a, CODE32_SEL, COMMON32)
    })()
    .unwrap();
    let mut page = a.assemble(0).unwrap();
    assert!(page.len() <= GDTR_OFFSET as usize);
    page.resize(GDTR_OFFSET as usize, 0xcc);
    let gdt: [u64; 4] = [
        0,
        0x00cf_9a00_0000_ffff, // 0x08: 32-bit code, flat
        0x00cf_9200_0000_ffff, // 0x10: data, flat
        0x00af_9a00_0000_ffff, // 0x18: 64-bit code
    ];
    page.extend_from_slice(&((gdt.len() * 8 - 1) as u16).to_le_bytes());
    page.extend_from_slice(&(TRAMPOLINE + GDT_OFFSET).to_le_bytes());
    page.resize(GDT_OFFSET as usize, 0);
    for d in gdt {
        page.extend_from_slice(&d.to_le_bytes());
    }
    assert!(page.len() <= TRAMPOLINE_SIZE as usize);
    page
}

/// Linux's wake-up sequence (`wakeup_secondary_cpu_via_init`) for `dest` (with the
/// shorthand in `shorthand`, or a physical APIC ID with shorthand 0): INIT assert and
/// de-assert, then two STARTUPs 10 µs apart. Linux waits `init_delay_ns` after the INIT
/// only on old processors (10 ms, the MP specification's figure), not on today's.
fn init_startup_startup(a: &mut Asm, dest: u32, shorthand: u32, init_delay_ns: u32) -> Step {
    let apic = ApicMode::XApic;
    apic.send(a, dest, shorthand | DM_INIT | LEVEL | ASSERT)?;
    if init_delay_ns != 0 {
        delay_ns(a, init_delay_ns)?;
    }
    apic.send(a, dest, shorthand | DM_INIT | LEVEL)?; // de-assert
    for _ in 0..2 {
        apic.send(a, dest, shorthand | DM_STARTUP | (TRAMPOLINE >> 12))?;
        delay_ns(a, 10_000)?;
    }
    Ok(())
}

fn assemble(bitness: u32, at: u32, max: u32, f: impl FnOnce(&mut Asm) -> Step) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    let bytes = a.assemble(u64::from(at)).unwrap();
    assert!(
        bytes.len() <= max as usize,
        "{} bytes of code at {at:#x}, room for {max}",
        bytes.len()
    );
    bytes
}

/// The multiboot image of an SMP test kernel.
fn smp_image(spec: &Smp) -> Vec<u8> {
    assert!(spec.handlers.len() <= ((MAIN - HANDLERS) / HANDLER_MAX) as usize);
    assert!(spec.handlers.is_empty() || !spec.long_mode);
    let bsp = assemble(32, CODE, COMMON32 - CODE, |a| {
        a.mov(esp, STACKS + 0x1000)?;
        a.cld()?;
        for (k, &(vector, _)) in spec.handlers.iter().enumerate() {
            let gate = IDT + 8 * u32::from(vector);
            let at = HANDLERS + k as u32 * HANDLER_MAX;
            a.mov(
                dword_ptr(gate),
                (u32::from(CODE32_SEL) << 16) | (at & 0xffff),
            )?;
            a.mov(dword_ptr(gate + 4), (at & 0xffff_0000) | 0x8e00)?; // 32-bit interrupt gate
        }
        a.mov(word_ptr(IDTR), 0x7ffu32)?;
        a.mov(dword_ptr(IDTR + 2), IDT)?;
        a.mov(esi, TRAMPOLINE_IMAGE)?;
        a.mov(edi, TRAMPOLINE)?;
        a.mov(ecx, TRAMPOLINE_SIZE)?;
        a.rep().movsb()?;
        a.lgdt(ptr(TRAMPOLINE + GDTR_OFFSET))?;
        if spec.long_mode {
            // PML4[0] -> PDPT, PDPT[0] -> PD, PD: 512 2 MiB pages.
            a.mov(dword_ptr(PML4), PDPT | 3)?;
            a.mov(dword_ptr(PML4 + 4), 0u32)?;
            a.mov(dword_ptr(PDPT), PD | 3)?;
            a.mov(dword_ptr(PDPT + 4), 0u32)?;
            a.mov(edi, PD)?;
            a.mov(eax, 0x83u32)?; // present, writable, 2 MiB
            a.mov(ecx, 512u32)?;
            let mut fill = a.create_label();
            a.set_label(&mut fill)?;
            a.mov(dword_ptr(edi), eax)?;
            a.mov(dword_ptr(edi + 4), 0u32)?;
            a.add(eax, 0x20_0000)?;
            a.add(edi, 8)?;
            a.dec(ecx)?;
            a.jnz(fill)?;
        }
        a.mov(dword_ptr(STARTS), 0u32)?;
        a.mov(dword_ptr(ARRIVED), 0u32)?;
        (spec.bsp_setup)(a)?;
        // The BSP's APIC must be enabled before it sends IPIs (as an OS does first).
        a.mov(dword_ptr(APIC_SVR), 0x1ffu32)?;
        match spec.wake {
            Wake::Broadcast => init_startup_startup(a, 0, TO_OTHERS, 0)?,
            Wake::OneByOne => {
                for id in 1..spec.cpus {
                    init_startup_startup(a, id, 0, 0)?;
                }
            }
        }
        jmp_far32(a, CODE32_SEL, COMMON32)
    });
    let common = assemble(32, COMMON32, TRAMPOLINE_IMAGE - COMMON32, |a| {
        a.mov(ax, DATA_SEL as u32)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(fs, ax)?;
        a.mov(gs, ax)?;
        a.mov(ss, ax)?;
        a.mov(ebx, dword_ptr(APIC_ID))?;
        a.shr(ebx, 24)?;
        a.mov(esp, ebx)?;
        a.shl(esp, 12)?;
        a.add(esp, STACKS + 0x1000)?;
        a.lock().inc(dword_ptr(STARTS))?;
        a.lock().bts(dword_ptr(ARRIVED), ebx)?;
        if spec.long_mode {
            a.mov(eax, cr4)?;
            a.or(eax, 1 << 5)?; // PAE
            a.mov(cr4, eax)?;
            a.mov(eax, PML4)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, 0xc000_0080u32)?; // EFER
            a.rdmsr()?;
            a.or(eax, 1 << 8)?; // LME
            a.wrmsr()?;
            a.mov(eax, cr0)?;
            a.or(eax, 1 << 31)?; // PG
            a.mov(cr0, eax)?;
            a.add_instruction(Instruction::with_far_branch(
                Code::Jmp_ptr1632,
                CODE64_SEL,
                MAIN,
            )?)
        } else {
            a.lidt(ptr(IDTR))?;
            a.jmp(u64::from(MAIN))
        }
    });
    let main = assemble(if spec.long_mode { 64 } else { 32 }, MAIN, MAIN_MAX, |a| {
        if spec.long_mode {
            // Entering 64-bit mode leaves the upper halves undefined: rebuild them.
            a.mov(ebx, ebx)?;
            a.mov(eax, ebx)?;
            a.shl(eax, 12)?;
            a.add(eax, STACKS + 0x1000)?;
            a.mov(esp, eax)?;
        }
        (spec.main)(a)
    });
    let mut code = bsp;
    let place = |code: &mut Vec<u8>, at: u32, bytes: &[u8]| {
        code.resize((at - CODE) as usize, 0xcc);
        code.extend_from_slice(bytes);
    };
    place(&mut code, COMMON32, &common);
    place(&mut code, TRAMPOLINE_IMAGE, &trampoline());
    for (k, (_, handler)) in spec.handlers.iter().enumerate() {
        let at = HANDLERS + k as u32 * HANDLER_MAX;
        place(&mut code, at, &assemble(32, at, HANDLER_MAX, handler));
    }
    place(&mut code, MAIN, &main);
    multiboot(&code)
}

/// Runs `image` on `cpus` vCPUs under the host watchdog; returns the outcome and the
/// wall time it took, and prints what the guest wrote to its serial port.
fn run(name: &str, cpus: u32, image: &[u8]) -> (Outcome, Duration) {
    let dir = scratch(name);
    let kernel = dir.join("kernel.bin");
    std::fs::write(&kernel, image).unwrap();
    let config = MachineConfig {
        memory: 64 << 20,
        cpus,
        kernel: Some(kernel),
        serial: SerialBackend::None,
        ..Default::default()
    };
    let console = Console::default();
    let mut m = Machine::new(&config, Box::new(console.clone()))
        .unwrap_or_else(|e| panic!("a machine with {cpus} CPUs: {e}"));
    let stop = m.stop_handle();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(HOST_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout) {
            stop.stop();
        }
    });
    let start = Instant::now();
    let outcome = m.run();
    let took = start.elapsed();
    drop(done);
    watchdog.join().unwrap();
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    eprintln!("{name}: {cpus} CPUs, {took:?}, {outcome:?}\n{text}");
    (outcome, took)
}

/// The value every APIC ID `0..cpus` sets in [`ARRIVED`].
fn all_arrived(cpus: u32) -> u32 {
    u32::MAX >> (32 - cpus)
}

/// Checks that exactly `cpus` CPUs, each APIC ID once, went through [`COMMON32`].
fn check_arrivals(a: &mut Asm, checks: &Checks, cpus: u32) -> Step {
    check_eq(
        a,
        ARRIVED,
        all_arrived(cpus),
        checks.code(format!("the APIC IDs that arrived are 0..{cpus}")),
    )?;
    check_eq(
        a,
        STARTS,
        cpus,
        checks.code(format!("exactly {cpus} CPU starts")),
    )
}

// ---------------------------------------------------------------------------------------
// Atomicity: shared counters updated by every vCPU.

/// Where the shared data of a counter test lives. Each operand gets a sentinel just
/// before and just after it that no one writes, so an access wider or shifted is caught.
#[derive(Clone, Copy)]
struct Counters {
    /// Incremented with `lock xadd`.
    xadd: u32,
    /// Incremented with a `lock cmpxchg` retry loop.
    cmpxchg: u32,
    /// The `xchg` spinlock.
    lock: u32,
    /// Incremented with plain loads and stores while holding the spinlock.
    guarded: u32,
    /// A dword updated whole (`lock add dword`, +1) and in its upper word alone (`lock
    /// add word`, +1) by every CPU: a locked access that needs the exclusive section
    /// (when the dword is split) must exclude the other CPUs' ones on the same bytes.
    overlap: u32,
    /// Incremented with an unlocked `inc` (a diagnostic: lost updates there show that the
    /// vCPUs really ran at once).
    plain: u32,
}

/// Every operand on its own cache line.
const ALIGNED: Counters = Counters {
    xadd: DATA,
    cmpxchg: DATA + 0x40,
    lock: DATA + 0x80,
    guarded: DATA + 0xc0,
    overlap: DATA + 0x100,
    plain: DATA + 0x140,
};

/// Operands across a 64-byte line (at offset 62 or 61 of theirs) or across a 4 KiB page.
const SPLIT: Counters = Counters {
    xadd: DATA + 0x400 + 62,
    cmpxchg: DATA + 0x1000 - 2,
    lock: DATA + 0x4c0 + 61,
    guarded: DATA + 0x500 + 62,
    overlap: DATA + 0x2000 - 2,
    plain: DATA + 0x140,
};

/// CPUs through the start barrier, and CPUs done.
const GO: u32 = DATA + 0x800;
const DONE: u32 = DATA + 0x840;
/// Per CPU (8 bytes each): how often its `lock cmpxchg` failed and how often it found
/// the spinlock taken: how much the CPUs actually contended.
const STATS: u32 = DATA + 0x900;

const SENTINEL_BEFORE: u32 = 0x5a5a_a5a5;
const SENTINEL_AFTER: u32 = 0xc3c3_3c3c;

/// How many times each CPU goes round each loop.
#[derive(Clone, Copy)]
struct Rounds {
    xadd: u32,
    cmpxchg: u32,
    spinlock: u32,
    /// At most 65535 in total (the low word of [`Counters::overlap`] must not carry).
    overlap: u32,
}

/// Value width of the counters: dwords in 32-bit code, qwords in 64-bit code.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Width {
    Dword,
    Qword,
}

impl Width {
    fn bytes(self) -> u32 {
        match self {
            Width::Dword => 4,
            Width::Qword => 8,
        }
    }

    /// `[disp + ebx * scale]` (`rbx` in 64-bit code): per-CPU data.
    fn per_cpu(self, disp: u32, scale: u32) -> AsmMemoryOperand {
        match self {
            Width::Dword => ebx * scale + disp,
            Width::Qword => rbx * scale + disp,
        }
    }
}

/// The qword counters start just below 2^32 so that the carry into the upper half has
/// to be atomic with the rest of the update.
const QWORD_START: u64 = 0xffff_fff0;

fn start_value(width: Width) -> u64 {
    match width {
        Width::Dword => 0,
        Width::Qword => QWORD_START,
    }
}

/// The operands a sentinel pair surrounds, and their sizes.
fn guarded_operands(c: Counters, width: Width) -> [(&'static str, u32, u32); 5] {
    [
        ("xadd", c.xadd, width.bytes()),
        ("cmpxchg", c.cmpxchg, width.bytes()),
        ("lock", c.lock, 4),
        ("guarded", c.guarded, width.bytes()),
        ("overlap", c.overlap, 4),
    ]
}

/// BSP setup: counters at their start values, sentinels around them, lock free.
fn init_counters(a: &mut Asm, c: Counters, width: Width) -> Step {
    let start = start_value(width);
    for addr in [c.xadd, c.cmpxchg, c.guarded] {
        a.mov(dword_ptr(addr), start as u32)?;
        if width == Width::Qword {
            a.mov(dword_ptr(addr + 4), (start >> 32) as u32)?;
        }
    }
    for addr in [c.lock, c.overlap, c.plain, GO, DONE] {
        a.mov(dword_ptr(addr), 0u32)?;
    }
    for (_, addr, size) in guarded_operands(c, width) {
        a.mov(dword_ptr(addr - 4), SENTINEL_BEFORE)?;
        a.mov(dword_ptr(addr + size), SENTINEL_AFTER)?;
    }
    Ok(())
}

/// Every CPU waits here until all `cpus` have arrived, so their work overlaps.
fn barrier(a: &mut Asm, checks: &Checks, cpus: u32) -> Step {
    a.lock().inc(dword_ptr(GO))?;
    wait_for(
        a,
        GO,
        cpus,
        checks.code(format!("all {cpus} CPUs reach the start barrier")),
    )
}

/// Every CPU's share of the work, on dwords or (in 64-bit code) qwords. Clobbers EAX,
/// ECX, EDX; counts `lock cmpxchg` failures in EDI and spinlock waits in EBP.
fn work(a: &mut Asm, width: Width, c: Counters, r: Rounds) -> Step {
    let counter = |addr: u32| match width {
        Width::Dword => dword_ptr(addr),
        Width::Qword => qword_ptr(addr),
    };
    a.xor(edi, edi)?;
    a.xor(ebp, ebp)?;

    let mut xadd_loop = a.create_label();
    a.mov(ecx, r.xadd)?;
    a.set_label(&mut xadd_loop)?;
    a.mov(eax, 1u32)?;
    match width {
        Width::Dword => a.lock().xadd(counter(c.xadd), eax)?,
        Width::Qword => a.lock().xadd(counter(c.xadd), rax)?,
    }
    a.dec(ecx)?;
    a.jnz(xadd_loop)?;

    // On failure CMPXCHG leaves the current value in EAX: retry from there.
    let mut cmpxchg_loop = a.create_label();
    let mut retry = a.create_label();
    let mut swapped = a.create_label();
    let mut failed = a.create_label();
    a.mov(ecx, r.cmpxchg)?;
    a.set_label(&mut cmpxchg_loop)?;
    match width {
        Width::Dword => a.mov(eax, counter(c.cmpxchg))?,
        Width::Qword => a.mov(rax, counter(c.cmpxchg))?,
    }
    a.set_label(&mut retry)?;
    match width {
        Width::Dword => {
            a.lea(edx, eax + 1)?;
            a.lock().cmpxchg(counter(c.cmpxchg), edx)?;
        }
        Width::Qword => {
            a.lea(rdx, rax + 1)?;
            a.lock().cmpxchg(counter(c.cmpxchg), rdx)?;
        }
    }
    a.jnz(failed)?;
    a.set_label(&mut swapped)?;
    a.dec(ecx)?;
    a.jnz(cmpxchg_loop)?;
    let mut spinlock = a.create_label();
    a.jmp(spinlock)?;
    a.set_label(&mut failed)?;
    a.inc(edi)?;
    a.jmp(retry)?;

    // Test-and-test-and-set with XCHG (implicitly locked); the release is a plain store,
    // which x86's ordering makes visible only after the guarded store.
    let mut try_lock = a.create_label();
    let mut spin = a.create_label();
    let mut locked = a.create_label();
    a.set_label(&mut spinlock)?;
    a.mov(ecx, r.spinlock)?;
    a.set_label(&mut try_lock)?;
    a.mov(eax, 1u32)?;
    a.xchg(dword_ptr(c.lock), eax)?;
    a.test(eax, eax)?;
    a.jz(locked)?;
    a.inc(ebp)?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.cmp(dword_ptr(c.lock), 0u32)?;
    a.jne(spin)?;
    a.jmp(try_lock)?;
    a.set_label(&mut locked)?;
    match width {
        Width::Dword => {
            a.mov(eax, counter(c.guarded))?;
            a.inc(eax)?;
            a.mov(counter(c.guarded), eax)?;
        }
        Width::Qword => {
            a.mov(rax, counter(c.guarded))?;
            a.inc(rax)?;
            a.mov(counter(c.guarded), rax)?;
        }
    }
    a.mov(dword_ptr(c.lock), 0u32)?;
    a.dec(ecx)?;
    a.jnz(try_lock)?;

    let mut overlap_loop = a.create_label();
    a.mov(ecx, r.overlap)?;
    a.set_label(&mut overlap_loop)?;
    a.lock().add(dword_ptr(c.overlap), 1)?;
    a.lock().add(word_ptr(c.overlap + 2), 1)?;
    a.dec(ecx)?;
    a.jnz(overlap_loop)?;

    let mut plain_loop = a.create_label();
    a.mov(ecx, r.xadd)?;
    a.set_label(&mut plain_loop)?;
    a.inc(dword_ptr(c.plain))?;
    a.dec(ecx)?;
    a.jnz(plain_loop)?;

    a.mov(dword_ptr(width.per_cpu(STATS, 8)), edi)?;
    a.mov(dword_ptr(width.per_cpu(STATS + 4, 8)), ebp)?;
    a.lock().inc(dword_ptr(DONE))
}

/// Fails check `code` unless the counter at `addr` holds `expected` (a qword in 64-bit
/// code), reporting the low 24 bits of what it holds.
fn check_counter(a: &mut Asm, width: Width, addr: u32, expected: u64, code: u32) -> Step {
    match width {
        Width::Dword => check_eq(a, addr, expected as u32, code),
        Width::Qword => {
            let mut ok = a.create_label();
            a.mov(rax, qword_ptr(addr))?;
            a.mov(rdx, expected)?;
            a.cmp(rax, rdx)?;
            a.je(ok)?;
            fail_with_eax(a, code)?;
            a.set_label(&mut ok)
        }
    }
}

/// Writes `text` to the first serial port. Clobbers EAX, EDX.
fn print(a: &mut Asm, text: &str) -> Step {
    a.mov(edx, 0x3f8u32)?;
    for b in text.bytes() {
        a.mov(al, u32::from(b))?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Writes EAX to the first serial port as eight hex digits. Clobbers EAX, ECX, EDX, ESI.
fn print_hex(a: &mut Asm) -> Step {
    let mut digit = a.create_label();
    let mut decimal = a.create_label();
    a.mov(esi, eax)?;
    a.mov(ecx, 8u32)?;
    a.mov(edx, 0x3f8u32)?;
    a.set_label(&mut digit)?;
    a.rol(esi, 4)?;
    a.mov(eax, esi)?;
    a.and(eax, 0xf)?;
    a.cmp(eax, 10)?;
    a.jb(decimal)?;
    a.add(eax, u32::from(b'a' - b'0' - 10))?;
    a.set_label(&mut decimal)?;
    a.add(eax, u32::from(b'0'))?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(digit)
}

/// Runs the counter workload on `cpus` vCPUs and asserts every total is exact.
fn counters_add_up(name: &str, cpus: u32, c: Counters, r: Rounds, long_mode: bool) {
    assert!(cpus * r.overlap < 0x1_0000);
    let width = if long_mode {
        Width::Qword
    } else {
        Width::Dword
    };
    let checks = Checks::default();
    let setup = |a: &mut Asm| init_counters(a, c, width);
    let main = |a: &mut Asm| -> Step {
        barrier(a, &checks, cpus)?;
        if !long_mode {
            // A STARTUP to a running CPU must be ignored: the BSP sends one to every AP
            // now that they all run (an AP restarted by it would arrive twice).
            let mut ap = a.create_label();
            a.test(ebx, ebx)?;
            a.jnz(ap)?;
            ApicMode::XApic.send(a, 0, TO_OTHERS | DM_STARTUP | (TRAMPOLINE >> 12))?;
            a.set_label(&mut ap)?;
        }
        work(a, width, c, r)?;
        let mut bsp = a.create_label();
        a.test(ebx, ebx)?;
        a.jz(bsp)?;
        park(a)?;

        a.set_label(&mut bsp)?;
        wait_for(
            a,
            DONE,
            cpus,
            checks.code(format!("all {cpus} CPUs finish (CPUs done)")),
        )?;
        for (what, offset) in [("cmpxchg retries", 0), ("spinlock waits", 4)] {
            print(a, what)?;
            for id in 0..cpus {
                print(a, " ")?;
                a.mov(eax, dword_ptr(STATS + 8 * id + offset))?;
                print_hex(a)?;
            }
            print(a, "\n")?;
        }
        print(a, "unlocked inc lost ")?;
        a.mov(eax, cpus * r.xadd)?;
        a.sub(eax, dword_ptr(c.plain))?;
        print_hex(a)?;
        print(a, &format!(" of {:08x}\n", cpus * r.xadd))?;

        check_arrivals(a, &checks, cpus)?;
        let start = start_value(width);
        for (what, addr, rounds) in [
            ("lock xadd", c.xadd, r.xadd),
            ("lock cmpxchg loop", c.cmpxchg, r.cmpxchg),
            ("xchg spinlock", c.guarded, r.spinlock),
        ] {
            let expected = start + u64::from(cpus) * u64::from(rounds);
            check_counter(
                a,
                width,
                addr,
                expected,
                checks.code(format!(
                    "{what} counter == {expected:#x} (low 24 bits shown)"
                )),
            )?;
        }
        check_eq(
            a,
            c.overlap,
            cpus * r.overlap * 0x1_0001,
            checks.code(format!(
                "overlapping dword/word counter == {:#x} (low 24 bits shown)",
                cpus * r.overlap * 0x1_0001
            )),
        )?;
        for (what, addr, size) in guarded_operands(c, width) {
            check_eq(
                a,
                addr - 4,
                SENTINEL_BEFORE,
                checks.code(format!("the dword before the {what} counter is untouched")),
            )?;
            check_eq(
                a,
                addr + size,
                SENTINEL_AFTER,
                checks.code(format!("the dword after the {what} counter is untouched")),
            )?;
        }
        exit_success(a)
    };
    let image = smp_image(&Smp {
        cpus,
        wake: Wake::Broadcast,
        long_mode,
        bsp_setup: &setup,
        main: &main,
        handlers: vec![],
    });
    let (outcome, took) = run(name, cpus, &image);
    assert_success(&outcome, &checks, took);
}

const ROUNDS: Rounds = Rounds {
    xadd: 500_000,
    cmpxchg: 500_000,
    spinlock: 100_000,
    overlap: 8_000,
};

#[test]
fn locked_increments_from_a_single_vcpu_add_up_exactly() {
    // The same kernel with no AP to wake: the broadcasts reach no one.
    counters_add_up("counters-1", 1, ALIGNED, ROUNDS, false);
}

#[test]
fn locked_increments_from_every_vcpu_add_up_exactly_2() {
    counters_add_up("counters-2", 2, ALIGNED, ROUNDS, false);
}

#[test]
fn locked_increments_from_every_vcpu_add_up_exactly_4() {
    counters_add_up("counters-4", 4, ALIGNED, ROUNDS, false);
}

#[test]
fn locked_increments_from_every_vcpu_add_up_exactly_8() {
    counters_add_up("counters-8", 8, ALIGNED, ROUNDS, false);
}

/// Split locks take the machine-wide exclusive section: far fewer rounds.
const SPLIT_ROUNDS: Rounds = Rounds {
    xadd: 20_000,
    cmpxchg: 20_000,
    spinlock: 5_000,
    overlap: 8_000,
};

#[test]
fn split_locked_increments_across_a_line_and_a_page_add_up_exactly_1() {
    counters_add_up("split-1", 1, SPLIT, SPLIT_ROUNDS, false);
}

#[test]
fn split_locked_increments_across_a_line_and_a_page_add_up_exactly_2() {
    counters_add_up("split-2", 2, SPLIT, SPLIT_ROUNDS, false);
}

#[test]
fn split_locked_increments_across_a_line_and_a_page_add_up_exactly_4() {
    counters_add_up("split-4", 4, SPLIT, SPLIT_ROUNDS, false);
}

#[test]
fn long_mode_locked_qword_increments_add_up_exactly_1() {
    counters_add_up("long-1", 1, ALIGNED, ROUNDS, true);
}

#[test]
fn long_mode_locked_qword_increments_add_up_exactly_2() {
    counters_add_up("long-2", 2, ALIGNED, ROUNDS, true);
}

#[test]
fn long_mode_locked_qword_increments_add_up_exactly_4() {
    counters_add_up("long-4", 4, ALIGNED, ROUNDS, true);
}

#[test]
fn long_mode_split_locked_qword_increments_add_up_exactly_2() {
    counters_add_up("long-split-2", 2, SPLIT, SPLIT_ROUNDS, true);
}

#[test]
fn long_mode_split_locked_qword_increments_add_up_exactly_4() {
    counters_add_up("long-split-4", 4, SPLIT, SPLIT_ROUNDS, true);
}

/// Fails check `code` unless `load` (which puts a value in EAX) yields `expected`.
fn check_loaded(
    a: &mut Asm,
    load: impl FnOnce(&mut Asm) -> Step,
    expected: u32,
    code: u32,
) -> Step {
    let mut ok = a.create_label();
    load(a)?;
    a.cmp(eax, expected)?;
    a.je(ok)?;
    fail_with_eax(a, code)?;
    a.set_label(&mut ok)
}

/// Every kind of locked instruction at every width, from `cpus` vCPUs at once:
///
/// - tickets from `lock xadd`, each marked in a bitmap with `lock bts`: a ticket handed
///   out twice (a locked instruction rerun with a stale result) finds its bit set;
/// - per-CPU bytes of one qword, each updated by its CPU with `lock inc byte` and a plain
///   `inc byte`: a locked update of the whole word must not undo a neighbour's byte;
/// - a shared word (`lock add word`), `lock dec`, `lock adc` / `lock sbb` whose result
///   depends on the carry flag going in (a rerun must start from the original flags);
/// - per-CPU bits of shared dwords: `lock bts` must find the CPU's bit clear and `lock
///   btr` set; `lock or` / `lock and` and twice `lock xor` per round end at zero;
/// - a counter twice the register width incremented with `lock cmpxchg8b` (32-bit code)
///   or `lock cmpxchg16b` (64-bit code), starting just below the carry into its upper
///   half.
fn locked_operations(name: &str, cpus: u32, long_mode: bool) {
    const TICKETS: u32 = 200_000;
    const MIXED: u32 = 100_000;
    const WIDE_ROUNDS: u32 = 100_000;
    const TICKET: u32 = DATA;
    const DUPLICATES: u32 = DATA + 0x40;
    const BYTES: u32 = DATA + 0x80;
    const WORD: u32 = DATA + 0xc0;
    const DEC: u32 = DATA + 0xc4;
    const ADC: u32 = DATA + 0xc8;
    const SBB: u32 = DATA + 0xcc;
    const BITS: u32 = DATA + 0x100;
    const BIT_ERRORS: u32 = DATA + 0x140;
    const OR_AND: u32 = DATA + 0x180;
    const XOR: u32 = DATA + 0x184;
    const WIDE: u32 = DATA + 0x1c0;
    const BITMAP: u32 = DATA + 0x1_0000;
    assert!(cpus <= 8 && (cpus * TICKETS) % 32 == 0);
    let width = if long_mode {
        Width::Qword
    } else {
        Width::Dword
    };
    let wide_start: u128 = match width {
        Width::Dword => 0xffff_fff0,
        Width::Qword => (1 << 64) - 16,
    };
    let checks = Checks::default();
    let setup = |a: &mut Asm| -> Step {
        for addr in [TICKET, DUPLICATES, WORD, DEC, ADC, SBB, BITS, BIT_ERRORS] {
            a.mov(dword_ptr(addr), 0u32)?;
        }
        for addr in [BYTES, BYTES + 4, OR_AND, XOR, GO, DONE] {
            a.mov(dword_ptr(addr), 0u32)?;
        }
        for k in 0..4 {
            a.mov(dword_ptr(WIDE + 4 * k), (wide_start >> (32 * k)) as u32)?;
        }
        a.xor(eax, eax)?;
        a.mov(edi, BITMAP)?;
        a.mov(ecx, cpus * TICKETS / 32 + 1)?;
        a.rep().stosd()
    };
    let main = |a: &mut Asm| -> Step {
        barrier(a, &checks, cpus)?;
        a.mov(ecx, ebx)?;
        a.mov(ebp, 1u32)?;
        a.shl(ebp, cl)?; // this CPU's bit

        let mut tickets = a.create_label();
        let mut fresh = a.create_label();
        a.mov(ecx, TICKETS)?;
        a.set_label(&mut tickets)?;
        a.mov(eax, 1u32)?;
        a.lock().xadd(dword_ptr(TICKET), eax)?;
        a.lock().bts(dword_ptr(BITMAP), eax)?;
        a.jnc(fresh)?;
        a.lock().inc(dword_ptr(DUPLICATES))?;
        a.set_label(&mut fresh)?;
        a.dec(ecx)?;
        a.jnz(tickets)?;

        let mut mixed = a.create_label();
        let mut next = a.create_label();
        let mut bad = a.create_label();
        let mut wide = a.create_label();
        a.mov(ecx, MIXED)?;
        a.set_label(&mut mixed)?;
        a.lock().inc(byte_ptr(width.per_cpu(BYTES, 1)))?;
        a.inc(byte_ptr(width.per_cpu(BYTES, 1)))?;
        a.lock().add(word_ptr(WORD), 3)?;
        a.lock().dec(dword_ptr(DEC))?;
        a.stc()?;
        a.lock().adc(dword_ptr(ADC), 0)?; // +1 through the carry
        a.clc()?;
        a.lock().sbb(dword_ptr(SBB), -1)?; // +1 with no borrow
        a.lock().bts(dword_ptr(BITS), ebx)?;
        a.jc(bad)?;
        a.lock().btr(dword_ptr(BITS), ebx)?;
        a.jnc(bad)?;
        a.lock().or(dword_ptr(OR_AND), ebp)?;
        a.mov(eax, ebp)?;
        a.not(eax)?;
        a.lock().and(dword_ptr(OR_AND), eax)?;
        a.lock().xor(dword_ptr(XOR), ebp)?;
        a.lock().xor(dword_ptr(XOR), ebp)?;
        a.set_label(&mut next)?;
        a.dec(ecx)?;
        a.jnz(mixed)?;
        a.jmp(wide)?;
        a.set_label(&mut bad)?;
        a.lock().inc(dword_ptr(BIT_ERRORS))?;
        a.jmp(next)?;

        // CMPXCHG8B/16B compare EDX:EAX (RDX:RAX), store ECX:EBX (RCX:RBX).
        let mut round = a.create_label();
        let mut again = a.create_label();
        a.set_label(&mut wide)?;
        a.mov(esi, WIDE_ROUNDS)?;
        match width {
            Width::Dword => {
                a.push(ebx)?;
                a.set_label(&mut round)?;
                a.mov(eax, dword_ptr(WIDE))?;
                a.mov(edx, dword_ptr(WIDE + 4))?;
                a.set_label(&mut again)?;
                a.mov(ebx, eax)?;
                a.mov(ecx, edx)?;
                a.add(ebx, 1)?;
                a.adc(ecx, 0)?;
                a.lock().cmpxchg8b(qword_ptr(WIDE))?;
                a.jnz(again)?;
                a.dec(esi)?;
                a.jnz(round)?;
                a.pop(ebx)?;
            }
            Width::Qword => {
                a.push(rbx)?;
                a.set_label(&mut round)?;
                a.mov(rax, qword_ptr(WIDE))?;
                a.mov(rdx, qword_ptr(WIDE + 8))?;
                a.set_label(&mut again)?;
                a.mov(rbx, rax)?;
                a.mov(rcx, rdx)?;
                a.add(rbx, 1)?;
                a.adc(rcx, 0)?;
                a.lock().cmpxchg16b(xmmword_ptr(WIDE))?;
                a.jnz(again)?;
                a.dec(esi)?;
                a.jnz(round)?;
                a.pop(rbx)?;
            }
        }
        a.lock().inc(dword_ptr(DONE))?;

        let mut bsp = a.create_label();
        a.test(ebx, ebx)?;
        a.jz(bsp)?;
        park(a)?;

        a.set_label(&mut bsp)?;
        wait_for(
            a,
            DONE,
            cpus,
            checks.code(format!("all {cpus} CPUs finish (CPUs done)")),
        )?;
        check_arrivals(a, &checks, cpus)?;
        check_eq(
            a,
            DUPLICATES,
            0,
            checks.code("no ticket was handed out twice"),
        )?;
        check_eq(
            a,
            TICKET,
            cpus * TICKETS,
            checks.code(format!("{} tickets", cpus * TICKETS)),
        )?;
        // Every ticket's bit is set, and nothing beyond.
        let mut scan = a.create_label();
        let mut scanned = a.create_label();
        let hole = checks.code("every ticket's bit is set (dword index shown)");
        a.mov(edi, BITMAP)?;
        a.mov(ecx, cpus * TICKETS / 32)?;
        a.set_label(&mut scan)?;
        a.cmp(dword_ptr(edi), -1)?;
        a.je(scanned)?;
        a.lea(eax, edi - BITMAP as i32)?;
        a.shr(eax, 2)?;
        fail_with_eax(a, hole)?;
        a.set_label(&mut scanned)?;
        a.add(edi, 4)?;
        a.dec(ecx)?;
        a.jnz(scan)?;
        check_eq(
            a,
            BITMAP + cpus * TICKETS / 8,
            0,
            checks.code("no bit past the last ticket"),
        )?;
        for id in 0..8 {
            let expected = if id < cpus { (2 * MIXED) & 0xff } else { 0 };
            check_loaded(
                a,
                |a| a.movzx(eax, byte_ptr(BYTES + id)),
                expected,
                checks.code(format!("CPU {id}'s byte == {expected:#x}")),
            )?;
        }
        let word = (3 * cpus * MIXED) & 0xffff;
        check_loaded(
            a,
            |a| a.movzx(eax, word_ptr(WORD)),
            word,
            checks.code(format!("lock add word total == {word:#x}")),
        )?;
        for (what, addr, expected) in [
            ("lock dec", DEC, (cpus * MIXED).wrapping_neg()),
            ("lock adc (CF=1)", ADC, cpus * MIXED),
            ("lock sbb (CF=0)", SBB, cpus * MIXED),
            ("lock bts/btr errors", BIT_ERRORS, 0),
            ("bits left by lock bts/btr", BITS, 0),
            ("bits left by lock or/and", OR_AND, 0),
            ("bits left by lock xor", XOR, 0),
        ] {
            check_eq(
                a,
                addr,
                expected,
                checks.code(format!("{what} == {expected:#x} (low 24 bits shown)")),
            )?;
        }
        let wide_end = wide_start + u128::from(cpus * WIDE_ROUNDS);
        let dwords = if long_mode { 4 } else { 2 };
        for k in 0..dwords {
            let expected = (wide_end >> (32 * k)) as u32;
            check_eq(
                a,
                WIDE + 4 * k,
                expected,
                checks.code(format!(
                    "dword {k} of the cmpxchg{}b counter == {expected:#x}",
                    if long_mode { 16 } else { 8 }
                )),
            )?;
        }
        exit_success(a)
    };
    let image = smp_image(&Smp {
        cpus,
        wake: Wake::Broadcast,
        long_mode,
        bsp_setup: &setup,
        main: &main,
        handlers: vec![],
    });
    let (outcome, took) = run(name, cpus, &image);
    assert_success(&outcome, &checks, took);
}

#[test]
fn every_kind_of_locked_operation_is_atomic_1() {
    locked_operations("locked-ops-1", 1, false);
}

#[test]
fn every_kind_of_locked_operation_is_atomic_2() {
    locked_operations("locked-ops-2", 2, false);
}

#[test]
fn every_kind_of_locked_operation_is_atomic_4() {
    locked_operations("locked-ops-4", 4, false);
}

#[test]
fn every_kind_of_locked_operation_is_atomic_in_long_mode_4() {
    locked_operations("locked-ops-long-4", 4, true);
}

/// The AP comes up and parks (CLI; HLT). A STARTUP alone must not restart it; INIT then
/// two STARTUPs must, exactly once: `restarts` times over, waiting `init_delay_ns` after
/// each INIT.
fn init_restarts_a_halted_ap(name: &str, restarts: u32, init_delay_ns: u32) {
    let checks = Checks::default();
    let setup = |_: &mut Asm| Ok(());
    let main = |a: &mut Asm| -> Step {
        let mut bsp = a.create_label();
        a.test(ebx, ebx)?;
        a.jz(bsp)?;
        park(a)?;

        a.set_label(&mut bsp)?;
        wait_for(a, STARTS, 2, checks.code("the AP starts"))?;
        delay_ns(a, 1_000_000)?; // let it reach its HLT
        ApicMode::XApic.send(a, 1, ASSERT | DM_STARTUP | (TRAMPOLINE >> 12))?;
        delay_ns(a, 20_000_000)?;
        check_eq(
            a,
            STARTS,
            2,
            checks.code("a STARTUP without INIT does not restart the halted AP"),
        )?;

        // EDI: the starts expected so far.
        let mut restart = a.create_label();
        let mut poll = a.create_label();
        let mut started = a.create_label();
        let timeout = checks.code(
            "INIT, STARTUP, STARTUP restarts the AP within 5 s; shown: expected starts << 12 | \
             starts after one more STARTUP (equal: the AP had been left waiting for a STARTUP)",
        );
        a.mov(edi, 2u32)?;
        a.set_label(&mut restart)?;
        a.inc(edi)?;
        init_startup_startup(a, 1, 0, init_delay_ns)?;
        coarse_tsc(a)?;
        a.mov(esi, eax)?;
        a.set_label(&mut poll)?;
        a.cmp(dword_ptr(STARTS), edi)?;
        a.je(started)?;
        a.pause()?;
        coarse_tsc(a)?;
        a.sub(eax, esi)?;
        a.cmp(eax, 5_000)?;
        a.jb(poll)?;
        // Tell a lost start-up from an AP that never took the INIT.
        ApicMode::XApic.send(a, 1, ASSERT | DM_STARTUP | (TRAMPOLINE >> 12))?;
        delay_ns(a, 50_000_000)?;
        a.mov(eax, edi)?;
        a.shl(eax, 12)?;
        a.or(eax, dword_ptr(STARTS))?;
        fail_with_eax(a, timeout)?;
        a.set_label(&mut started)?;
        delay_ns(a, 100_000)?; // mostly back in its HLT by the next INIT
        a.cmp(edi, 2 + restarts)?;
        a.jb(restart)?;

        delay_ns(a, 20_000_000)?;
        check_eq(
            a,
            STARTS,
            2 + restarts,
            checks.code("each INIT restarted the AP once (the second STARTUP is ignored)"),
        )?;
        check_eq(
            a,
            ARRIVED,
            0b11,
            checks.code("only APIC IDs 0 and 1 arrived"),
        )?;
        exit_success(a)
    };
    let image = smp_image(&Smp {
        cpus: 2,
        wake: Wake::OneByOne,
        long_mode: false,
        bsp_setup: &setup,
        main: &main,
        handlers: vec![],
    });
    let (outcome, took) = run(name, 2, &image);
    assert_success(&outcome, &checks, took);
}

#[test]
fn init_then_startup_restarts_a_halted_ap() {
    // The MP specification's timing: the AP has long taken the INIT when the STARTUPs
    // come.
    init_restarts_a_halted_ap("init-restart", 20, 10_000_000);
}

/// Linux's timing on today's processors: the STARTUPs follow the INIT within
/// microseconds, often before the halted AP's thread has woken to take the INIT. The AP
/// must then take the INIT and the STARTUPs sent after it (an INIT voids only earlier
/// STARTUPs). Before 007a9ba the late INIT also discarded the newer STARTUPs, leaving the
/// AP waiting for one (this failed within about 50 restarts nearly every run).
#[test]
fn init_then_startups_back_to_back_restart_a_halted_ap() {
    init_restarts_a_halted_ap("init-restart-back-to-back", 1000, 0);
}

// ---------------------------------------------------------------------------------------
// IPIs.

/// Handler prologue/epilogue: the handlers below use EAX, ECX and EDX.
fn save(a: &mut Asm) -> Step {
    a.push(eax)?;
    a.push(ecx)?;
    a.push(edx)
}

fn restore_and_return(a: &mut Asm) -> Step {
    a.pop(edx)?;
    a.pop(ecx)?;
    a.pop(eax)?;
    a.iretd()
}

/// Fixed IPIs bounced `ROUNDS` times between the BSP (vector 0x40) and one AP (vector
/// 0x41), each handler counting, EOIing and sending the next to the other's physical
/// APIC ID. The AP waits in HLT with interrupts on, so every ping has to wake it.
fn ping_pong(name: &str, apic: ApicMode) {
    const ROUNDS: u32 = 2000;
    const READY: u32 = DATA;
    const BSP_PONGS: u32 = DATA + 0x40;
    const AP_PINGS: u32 = DATA + 0x80;
    let checks = Checks::default();
    let setup = |a: &mut Asm| -> Step {
        for addr in [READY, BSP_PONGS, AP_PINGS] {
            a.mov(dword_ptr(addr), 0u32)?;
        }
        Ok(())
    };
    let main = |a: &mut Asm| -> Step {
        let mut bsp = a.create_label();
        apic.enable(a)?;
        a.test(ebx, ebx)?;
        a.jz(bsp)?;
        a.lock().inc(dword_ptr(READY))?;
        serve_interrupts(a)?;

        a.set_label(&mut bsp)?;
        wait_for(a, READY, 1, checks.code("the AP is ready"))?;
        check_arrivals(a, &checks, 2)?;
        a.sti()?;
        apic.send(a, 1, ASSERT | 0x41)?;
        wait_for(
            a,
            BSP_PONGS,
            ROUNDS,
            checks.code(format!("the BSP takes {ROUNDS} pongs")),
        )?;
        a.cli()?;
        check_eq(
            a,
            AP_PINGS,
            ROUNDS,
            checks.code(format!("the AP took {ROUNDS} pings")),
        )?;
        check_eq(
            a,
            BSP_PONGS,
            ROUNDS,
            checks.code(format!("the BSP took {ROUNDS} pongs, no more")),
        )?;
        exit_success(a)
    };
    let bsp_handler: Handler = Box::new(move |a| {
        let mut last = a.create_label();
        save(a)?;
        a.inc(dword_ptr(BSP_PONGS))?;
        a.mov(eax, dword_ptr(BSP_PONGS))?;
        a.push(eax)?;
        apic.eoi(a)?;
        a.pop(eax)?;
        a.cmp(eax, ROUNDS)?;
        a.jae(last)?;
        apic.send(a, 1, ASSERT | 0x41)?;
        a.set_label(&mut last)?;
        restore_and_return(a)
    });
    let ap_handler: Handler = Box::new(move |a| {
        save(a)?;
        a.inc(dword_ptr(AP_PINGS))?;
        apic.eoi(a)?;
        apic.send(a, 0, ASSERT | 0x40)?;
        restore_and_return(a)
    });
    let image = smp_image(&Smp {
        cpus: 2,
        wake: Wake::OneByOne,
        long_mode: false,
        bsp_setup: &setup,
        main: &main,
        handlers: vec![(0x40, bsp_handler), (0x41, ap_handler)],
    });
    let (outcome, took) = run(name, 2, &image);
    assert_success(&outcome, &checks, took);
}

#[test]
fn ipi_ping_pong() {
    ping_pong("ping-pong", ApicMode::XApic);
}

#[test]
fn ipi_ping_pong_through_x2apic_msrs() {
    ping_pong("ping-pong-x2apic", ApicMode::X2Apic);
}

/// Per-(vector, CPU) delivery counters of [`ipi_delivery_modes`].
fn tally(vector: u8, id: u32) -> u32 {
    DATA + 0x1000 + u32::from(vector) * 0x40 + id * 4
}

/// A handler counting deliveries of `vector` per APIC ID. `park` also clears IF in the
/// interrupted context, so the CPU goes back to HLT with interrupts off.
fn counting_handler(vector: u8, eoi: bool, park: bool) -> Handler {
    Box::new(move |a| {
        a.push(eax)?;
        a.mov(eax, dword_ptr(APIC_ID))?;
        a.shr(eax, 24)?;
        a.lock().inc(dword_ptr(eax * 4 + tally(vector, 0)))?;
        if eoi {
            a.mov(dword_ptr(APIC_EOI), 0u32)?;
        }
        if park {
            a.and(dword_ptr(esp + 12), !0x200u32)?; // EFLAGS above EAX, EIP, CS
        }
        a.pop(eax)?;
        a.iretd()
    })
}

#[test]
fn ipi_delivery_modes() {
    // Three CPUs, flat logical model: CPU n has logical ID bit n. The BSP sends each kind
    // of IPI, waits until its targets counted it, and at the end checks every (vector,
    // CPU) count, so a delivery to a CPU that was not a target is caught too.
    const CPUS: u32 = 3;
    const READY: u32 = DATA;
    const NMI_ROUNDS: u32 = 20;
    const PENDING: u8 = 0x4b;
    let apic = ApicMode::XApic;
    let checks = Checks::default();
    let expected = RefCell::new(std::collections::BTreeMap::<(u8, u32), u32>::new());
    let vectors: Vec<u8> = std::iter::once(2).chain(0x42..=0x4b).collect();
    let setup = |a: &mut Asm| -> Step {
        a.mov(dword_ptr(READY), 0u32)?;
        for &v in &vectors {
            for id in 0..CPUS {
                a.mov(dword_ptr(tally(v, id)), 0u32)?;
            }
        }
        Ok(())
    };
    // Sends `icr_low` to `dest`, then waits until each of `targets` counted `vector`.
    let send_and_wait =
        |a: &mut Asm, dest: u32, icr_low: u32, vector: u8, targets: &[u32], what: &str| -> Step {
            apic.send(a, dest, icr_low)?;
            for &id in targets {
                let mut e = expected.borrow_mut();
                let count = e.entry((vector, id)).or_insert(0);
                *count += 1;
                wait_for(
                    a,
                    tally(vector, id),
                    *count,
                    checks.code(format!(
                        "{what}: vector {vector:#x} reaches CPU {id} (count {count})"
                    )),
                )?;
            }
            Ok(())
        };
    let main = |a: &mut Asm| -> Step {
        let mut bsp = a.create_label();
        apic.enable(a)?;
        a.mov(dword_ptr(APIC_DFR), u32::MAX)?; // flat model
        a.mov(ecx, ebx)?;
        a.mov(eax, 1u32 << 24)?;
        a.shl(eax, cl)?;
        a.mov(dword_ptr(APIC_LDR), eax)?;
        a.test(ebx, ebx)?;
        a.jz(bsp)?;
        a.lock().inc(dword_ptr(READY))?;
        serve_interrupts(a)?;

        a.set_label(&mut bsp)?;
        wait_for(a, READY, CPUS - 1, checks.code("both APs are ready"))?;
        check_arrivals(a, &checks, CPUS)?;
        a.sti()?;
        let fixed = ASSERT | DEST_LOGICAL;
        send_and_wait(a, 0b010, fixed | 0x42, 0x42, &[1], "logical, one AP")?;
        send_and_wait(a, 0b110, fixed | 0x43, 0x43, &[1, 2], "logical, both APs")?;
        send_and_wait(
            a,
            0b101,
            fixed | 0x44,
            0x44,
            &[0, 2],
            "logical, BSP and AP 2",
        )?;
        send_and_wait(a, 0, ASSERT | TO_SELF | 0x45, 0x45, &[0], "self shorthand")?;
        send_and_wait(
            a,
            0,
            ASSERT | TO_ALL | 0x46,
            0x46,
            &[0, 1, 2],
            "all including self",
        )?;
        send_and_wait(
            a,
            0,
            ASSERT | TO_OTHERS | 0x47,
            0x47,
            &[1, 2],
            "all excluding self",
        )?;
        send_and_wait(a, 2, ASSERT | 0x48, 0x48, &[2], "physical, AP 2")?;
        // Logical ID bit 3 belongs to no one: nothing may arrive.
        send_and_wait(a, 0b1000, fixed | 0x49, 0x49, &[], "logical, no CPU")?;
        // From here on both APs sit in HLT with IF=0 (the handler clears it).
        send_and_wait(a, 0, ASSERT | TO_OTHERS | 0x4a, 0x4a, &[1, 2], "park")?;
        // A fixed IPI to a CPU with IF=0 must stay pending in its IRR ...
        apic.send(a, 1, ASSERT | u32::from(PENDING))?;
        // ... while NMIs get through and wake it from HLT.
        for _ in 0..NMI_ROUNDS {
            send_and_wait(a, 1, ASSERT | DM_NMI, 2, &[1], "NMI, physical")?;
            send_and_wait(
                a,
                0b100,
                ASSERT | DEST_LOGICAL | DM_NMI,
                2,
                &[2],
                "NMI, logical",
            )?;
        }
        send_and_wait(
            a,
            0,
            ASSERT | TO_OTHERS | DM_NMI,
            2,
            &[1, 2],
            "NMI, all excluding self",
        )?;
        a.cli()?;
        let e = expected.borrow();
        for &v in &vectors {
            for id in 0..CPUS {
                let count = e.get(&(v, id)).copied().unwrap_or(0);
                check_eq(
                    a,
                    tally(v, id),
                    count,
                    checks.code(format!(
                        "in the end CPU {id} counted vector {v:#x} {count} times"
                    )),
                )?;
            }
        }
        exit_success(a)
    };
    let mut handlers: Vec<(u8, Handler)> = vec![(2, counting_handler(2, false, false))];
    for v in 0x42..=0x4b {
        handlers.push((v, counting_handler(v, true, v == 0x4a)));
    }
    let image = smp_image(&Smp {
        cpus: CPUS,
        wake: Wake::OneByOne,
        long_mode: false,
        bsp_setup: &setup,
        main: &main,
        handlers,
    });
    let (outcome, took) = run("ipi-modes", CPUS, &image);
    assert_success(&outcome, &checks, took);
}

// ---------------------------------------------------------------------------------------
// How a machine of several vCPUs ends.

/// Three CPUs whose APs park (CLI; HLT) at once; the BSP then runs `bsp_end`.
fn parked_aps(name: &str, bsp_end: impl Fn(&mut Asm) -> Step) -> Outcome {
    let setup = |_: &mut Asm| Ok(());
    let main = |a: &mut Asm| -> Step {
        let mut bsp = a.create_label();
        a.test(ebx, ebx)?;
        a.jz(bsp)?;
        park(a)?;
        a.set_label(&mut bsp)?;
        bsp_end(a)
    };
    let image = smp_image(&Smp {
        cpus: 3,
        wake: Wake::Broadcast,
        long_mode: false,
        bsp_setup: &setup,
        main: &main,
        handlers: vec![],
    });
    run(name, 3, &image).0
}

#[test]
fn halted_aps_do_not_end_the_machine_while_the_bsp_runs() {
    // The APs are parked for 200 ms before the BSP exits through the debug port.
    let checks = Checks::default();
    let outcome = parked_aps("halted-aps", |a| {
        wait_for(a, STARTS, 3, checks.code("both APs start"))?;
        delay_ns(a, 200_000_000)?;
        exit_success(a)
    });
    assert_success(&outcome, &checks, Duration::ZERO);
}

#[test]
fn the_machine_ends_halted_once_every_vcpu_is_halted_with_interrupts_off() {
    let checks = Checks::default();
    let outcome = parked_aps("all-halted", |a| {
        wait_for(a, STARTS, 3, checks.code("both APs start"))?;
        park(a)
    });
    assert!(
        matches!(outcome, Outcome::HaltedForever(_)),
        "{}",
        checks.describe(&outcome)
    );
}
