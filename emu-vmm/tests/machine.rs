//! Whole machines running tiny bare-metal kernels (multiboot a.out-kludge images
//! assembled here): how each way of ending becomes an [`Outcome`], unassigned physical
//! addresses reading all ones, the LAPIC timer waking the timer thread, `-d` tracing, and
//! the virtio-mmio window (placement, a request served on notify, its IOAPIC interrupt).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emu_vmm::config::{MachineConfig, SerialBackend, TraceFlags, VirtioDeviceConfig};
use emu_vmm::machine::{Machine, Outcome};
use iced_x86::code_asm::*;

mod common;
use common::{multiboot, Console, CODE};

/// A temporary directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    common::scratch("test", name)
}

/// Scratch places in low RAM, identity-mapped and otherwise unused by emu-boot.
const IDT: u32 = 0x6_0000;
const PAGE_DIR: u32 = 0x5_0000;
const STACK_TOP: u32 = 0x8_0000;
const APIC: u32 = 0xfee0_0000;

type Asm = CodeAssembler;
type Step = Result<(), IcedError>;
/// Code for an interrupt handler.
type Handler = Box<dyn Fn(&mut Asm) -> Step>;

/// A 32-bit protected-mode kernel (multiboot's entry state: flat segments, no paging):
/// sets a stack, installs `handlers` (vector, code) as interrupt gates in an IDT, then
/// runs `body`. Handlers are assembled at fixed places after the body: 32-bit code has
/// no label-relative memory operands, so every address is fixed up front.
fn kernel(body: impl FnOnce(&mut Asm) -> Step, handlers: Vec<(u8, Handler)>) -> Vec<u8> {
    const BODY_MAX: u32 = 0x1000;
    const HANDLER_MAX: u32 = 0x100;
    const IDTR: u32 = IDT - 8;
    let handler_at = |k: usize| CODE + BODY_MAX + k as u32 * HANDLER_MAX;
    let mut a = CodeAssembler::new(32).unwrap();
    (|| -> Step {
        a.mov(esp, STACK_TOP)?;
        for (k, &(vector, _)) in handlers.iter().enumerate() {
            let gate = IDT + 8 * vector as u32;
            let at = handler_at(k);
            a.mov(word_ptr(gate), at & 0xffff)?;
            a.mov(word_ptr(gate + 6), at >> 16)?;
            a.mov(dx, cs)?;
            a.mov(word_ptr(gate + 2), dx)?;
            a.mov(byte_ptr(gate + 5), 0x8eu32)?; // present, DPL 0, 32-bit interrupt gate
        }
        a.mov(word_ptr(IDTR), 0x7ffu32)?;
        a.mov(dword_ptr(IDTR + 2), IDT)?;
        a.lidt(ptr(IDTR))?;
        body(&mut a)
    })()
    .unwrap();
    let mut code = a.assemble(CODE as u64).unwrap();
    assert!(code.len() <= BODY_MAX as usize);
    for (k, (_, handler)) in handlers.iter().enumerate() {
        let mut h = CodeAssembler::new(32).unwrap();
        handler(&mut h).unwrap();
        let bytes = h.assemble(handler_at(k) as u64).unwrap();
        assert!(bytes.len() <= HANDLER_MAX as usize);
        code.resize((handler_at(k) - CODE) as usize, 0x90);
        code.extend_from_slice(&bytes);
    }
    multiboot(&code)
}

/// `out 0xf4, eax`: ends the machine with `DebugExit((eax << 1) | 1)`.
fn exit_with_eax(a: &mut Asm) -> Step {
    a.out(0xf4, eax)?;
    a.hlt()
}

/// A handler that exits with `code`.
fn exit_handler(code: u32) -> Handler {
    Box::new(move |a| {
        a.mov(eax, code)?;
        exit_with_eax(a)
    })
}

fn config_for(dir: &Path, image: &[u8]) -> MachineConfig {
    let kernel = dir.join("kernel.bin");
    std::fs::write(&kernel, image).unwrap();
    MachineConfig {
        memory: 64 << 20,
        kernel: Some(kernel),
        serial: SerialBackend::None,
        ..Default::default()
    }
}

fn run(name: &str, image: &[u8]) -> Outcome {
    let dir = scratch(name);
    let mut m = Machine::new(&config_for(&dir, image), Box::new(std::io::sink())).unwrap();
    let outcome = m.run();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Runs with `trace` going to a `-D` file; returns the outcome and the trace.
fn run_traced(name: &str, image: &[u8], trace: TraceFlags) -> (Outcome, String) {
    let dir = scratch(name);
    let log = dir.join("trace.log");
    let config = MachineConfig {
        trace,
        trace_file: Some(log.clone()),
        ..config_for(&dir, image)
    };
    let mut m = Machine::new(&config, Box::new(std::io::sink())).unwrap();
    let outcome = m.run();
    drop(m);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (outcome, text)
}

#[test]
fn the_debug_exit_port_ends_the_machine_with_its_status() {
    let image = kernel(
        |a| {
            a.mov(eax, 0x21u32)?;
            exit_with_eax(a)
        },
        vec![],
    );
    assert_eq!(
        run("debug-exit", &image),
        Outcome::DebugExit((0x21 << 1) | 1)
    );
}

#[test]
fn the_keyboard_controller_and_the_reset_register_reset_the_machine() {
    let i8042 = kernel(
        |a| {
            a.mov(al, 0xfeu32)?;
            a.out(0x64, al)?;
            a.hlt()
        },
        vec![],
    );
    assert_eq!(run("reset-i8042", &i8042), Outcome::Reset);
    let cf9 = kernel(
        |a| {
            a.mov(dx, 0xcf9u32)?;
            a.mov(al, 0x06u32)?;
            a.out(dx, al)?;
            a.hlt()
        },
        vec![],
    );
    assert_eq!(run("reset-cf9", &cf9), Outcome::Reset);
}

#[test]
fn acpi_s5_powers_the_machine_off() {
    let image = kernel(
        |a| {
            a.mov(dx, 0x604u32)?; // PM1a_CNT
            a.mov(ax, (5u32 << 10) | (1 << 13))?; // SLP_TYP = S5, SLP_EN
            a.out(dx, ax)?;
            a.hlt()
        },
        vec![],
    );
    assert_eq!(run("poweroff", &image), Outcome::PowerOff);
}

#[test]
fn a_triple_fault_ends_the_machine_with_a_register_dump() {
    // No gates at all: #UD cannot be delivered (#GP), nor can that (#DF): shutdown.
    let image = kernel(
        |a| {
            a.mov(ebx, 0x1234_5678u32)?;
            a.ud2()
        },
        vec![],
    );
    match run("triple-fault", &image) {
        Outcome::TripleFault(dump) => {
            assert!(dump.contains("RIP="), "{dump}");
            assert!(dump.contains("RBX=0x0000000012345678"), "{dump}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_halt_with_interrupts_off_is_reported() {
    let image = kernel(
        |a| {
            a.cli()?;
            a.hlt()
        },
        vec![],
    );
    assert!(matches!(run("halt", &image), Outcome::HaltedForever(_)));
}

#[test]
fn unassigned_physical_addresses_read_all_ones_and_are_logged_as_guest_errors() {
    let image = kernel(
        |a| {
            a.mov(dword_ptr(0xf000_0010u32), 0x55u32)?; // dropped
            a.mov(eax, dword_ptr(0xf000_0000u32))?;
            a.cmp(eax, 0xffff_ffffu32)?;
            a.sete(al)?;
            a.movzx(eax, al)?;
            exit_with_eax(a)
        },
        vec![],
    );
    let (outcome, trace) = run_traced(
        "unassigned",
        &image,
        TraceFlags {
            guest_errors: true,
            ..Default::default()
        },
    );
    assert_eq!(outcome, Outcome::DebugExit(3), "the read saw all ones");
    assert!(
        trace.contains("Invalid write at addr 0xF0000010, size 4, value 0x55, region '(none)', reason: unassigned"),
        "{trace}"
    );
    assert!(
        trace.contains(
            "Invalid read at addr 0xF0000000, size 4, region '(none)', reason: unassigned"
        ),
        "{trace}"
    );
}

#[test]
fn fetching_from_nothing_stops_the_machine_and_says_so() {
    let image = kernel(
        |a| {
            a.mov(eax, 0xf000_0000u32)?;
            a.jmp(eax)
        },
        vec![],
    );
    match run("fetch-nothing", &image) {
        Outcome::Unmapped(what) => {
            assert!(
                what.contains("Fetch of unmapped address 0xf0000000"),
                "{what}"
            );
            assert!(what.contains("RIP="), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_microcode_revision_msr_reads_back_after_the_linux_sequence() {
    let image = kernel(
        |a| {
            a.mov(ecx, 0x8bu32)?;
            a.xor(eax, eax)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            a.mov(eax, 1u32)?;
            a.cpuid()?;
            a.mov(ecx, 0x8bu32)?;
            a.rdmsr()?;
            a.mov(eax, edx)?;
            a.shr(eax, 16)?;
            exit_with_eax(a)
        },
        vec![(13, exit_handler(0xd))],
    );
    let rev = emu_core::sysregs::MICROCODE_REVISION;
    assert_eq!(
        run("bios-sign-id", &image),
        Outcome::DebugExit(((rev >> 16) << 1) | 1)
    );
}

#[test]
fn int_and_guest_errors_trace_an_invalid_opcode_and_in_asm_shows_the_block() {
    let image = kernel(|a| a.ud2(), vec![(6, exit_handler(6))]);
    let (outcome, trace) = run_traced(
        "trace-ud",
        &image,
        TraceFlags {
            in_asm: true,
            int: true,
            guest_errors: true,
            mmu: false,
        },
    );
    assert_eq!(outcome, Outcome::DebugExit((6 << 1) | 1));
    let ud_line = trace
        .lines()
        .find(|l| l.contains("v=06"))
        .unwrap_or_else(|| panic!("no #UD line in\n{trace}"));
    assert!(
        ud_line.starts_with("     0: v=06 e=0000 i=0 cpl=0 IP=0020:"),
        "{ud_line}"
    );
    assert!(trace.contains(": 0f 0b (ud2)"), "{trace}");
    assert!(trace.contains("guest_errors: #UD at 0020:"), "{trace}");
    assert!(trace.contains("----------------\nIN:\n"), "{trace}");
    let ud2 = trace
        .lines()
        .find(|l| l.ends_with(" ud2"))
        .unwrap_or_else(|| panic!("ud2 not disassembled in\n{trace}"));
    assert!(ud2.starts_with("0x00100"), "{ud2}");
    assert!(ud2.contains("0f 0b"), "{ud2}");
}

#[test]
fn mmu_traces_page_faults_with_cr2_and_the_error_code() {
    // 32-bit paging with one 4 MiB identity page; reading 0x40000000 is a not-present
    // supervisor read (error code 0).
    let image = kernel(
        |a| {
            a.mov(dword_ptr(PAGE_DIR), 0x83u32)?; // present, writable, 4 MiB
            a.mov(eax, PAGE_DIR)?;
            a.mov(cr3, eax)?;
            a.mov(eax, cr4)?;
            a.or(eax, 1 << 4)?; // PSE
            a.mov(cr4, eax)?;
            a.mov(eax, cr0)?;
            a.or(eax, 1 << 31)?;
            a.mov(cr0, eax)?;
            a.mov(eax, dword_ptr(0x4000_0000u32))?;
            a.hlt()
        },
        vec![(
            14,
            Box::new(|a: &mut Asm| {
                a.mov(eax, cr2)?;
                a.shr(eax, 24)?;
                exit_with_eax(a)
            }),
        )],
    );
    let (outcome, trace) = run_traced(
        "trace-pf",
        &image,
        TraceFlags {
            mmu: true,
            int: true,
            ..Default::default()
        },
    );
    assert_eq!(outcome, Outcome::DebugExit((0x40 << 1) | 1));
    assert!(
        trace.contains(
            "mmu: #PF CR2=0000000040000000 error=0000 (not-present read supervisor) IP=0020:"
        ),
        "{trace}"
    );
    assert!(trace.contains("v=0e e=0000 i=0 cpl=0"), "{trace}");
    assert!(trace.contains("CR2=0000000040000000"), "{trace}");
}

#[test]
fn guest_errors_names_msr_accesses_that_fault() {
    let image = kernel(
        |a| {
            a.mov(ecx, 0xabcdu32)?;
            a.rdmsr()?;
            a.hlt()
        },
        vec![(13, exit_handler(13))],
    );
    let (outcome, trace) = run_traced(
        "trace-msr",
        &image,
        TraceFlags {
            guest_errors: true,
            ..Default::default()
        },
    );
    assert_eq!(outcome, Outcome::DebugExit((13 << 1) | 1));
    assert!(
        trace.contains("guest_errors: rdmsr of unknown MSR 0x0000abcd -> #GP at 0020:"),
        "{trace}"
    );
}

#[test]
fn tracing_does_not_change_what_the_guest_sees() {
    // The same program with and without every trace switch: a #UD handled by the guest,
    // then an exit with a value it computed.
    let image = kernel(
        |a| {
            a.mov(ebx, 7u32)?;
            a.ud2()
        },
        vec![(
            6,
            Box::new(|a: &mut Asm| {
                a.lea(eax, dword_ptr(ebx + 35))?;
                exit_with_eax(a)
            }),
        )],
    );
    let plain = run("untraced", &image);
    let all = TraceFlags {
        in_asm: true,
        int: true,
        mmu: true,
        guest_errors: true,
    };
    let (traced, _) = run_traced("traced", &image, all);
    assert_eq!(plain, Outcome::DebugExit((42 << 1) | 1));
    assert_eq!(traced, plain);
}

#[test]
fn a_lapic_one_shot_wakes_the_timer_thread_instead_of_waiting_for_its_poll() {
    // One-shot of 1 ms (APIC timer input: 1 GHz, divide by 1), then HLT with IF=1; the
    // handler exits. The machine's timer thread polls only every 30 s here, so the
    // interrupt arrives in time only if programming the timer woke the thread.
    let image = kernel(
        |a| {
            // First let the timer thread start and settle into its (long) sleep.
            a.mov(ecx, 20_000_000u32)?;
            let mut spin = a.create_label();
            a.set_label(&mut spin)?;
            a.dec(ecx)?;
            a.jnz(spin)?;
            a.mov(dword_ptr(APIC + 0xf0), 0x1ffu32)?; // SVR: enabled, spurious vector 0xff
            a.mov(dword_ptr(APIC + 0x3e0), 0xbu32)?; // divide by 1
            a.mov(dword_ptr(APIC + 0x320), 0x40u32)?; // LVT timer: one-shot, vector 0x40
            a.mov(dword_ptr(APIC + 0x380), 1_000_000u32)?; // initial count
            a.sti()?;
            let mut again = a.create_label();
            a.set_label(&mut again)?;
            a.hlt()?;
            a.jmp(again)
        },
        vec![(0x40, exit_handler(0x40))],
    );
    let dir = scratch("lapic-wake");
    let mut m = Machine::new(&config_for(&dir, &image), Box::new(std::io::sink())).unwrap();
    m.set_timer_poll(Duration::from_secs(30));
    let stop = m.stop_handle();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        stop.stop();
    });
    let start = Instant::now();
    let outcome = m.run();
    let took = start.elapsed();
    assert_eq!(
        outcome,
        Outcome::DebugExit((0x40 << 1) | 1),
        "after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(watchdog);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serial_output_reaches_the_console() {
    let image = kernel(
        |a| {
            a.mov(dx, 0x3f8u32)?;
            for &b in b"ok\n" {
                a.mov(al, b as u32)?;
                a.out(dx, al)?;
            }
            a.xor(eax, eax)?;
            exit_with_eax(a)
        },
        vec![],
    );
    let dir = scratch("serial");
    let console = Console::default();
    let mut m = Machine::new(&config_for(&dir, &image), Box::new(console.clone())).unwrap();
    assert_eq!(m.run(), Outcome::DebugExit(1));
    assert_eq!(&*console.0.lock().unwrap(), b"ok\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the virtio-mmio transports are: slot `i` of the machine's window.
fn virtio(slot: u32, reg: u32) -> u32 {
    (emu_vmm::machine::VIRTIO_MMIO_BASE + u64::from(slot) * emu_vmm::machine::VIRTIO_MMIO_STRIDE)
        as u32
        + reg
}

/// A raw disk image of `sectors` 512-byte sectors in `dir`.
fn disk(dir: &Path, sectors: u64) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0u8; (sectors * 512) as usize]).unwrap();
    path
}

#[test]
fn virtio_devices_sit_in_the_mmio_window_in_config_order() {
    // Slot 0: the rng (device ID 4); slot 1: the disk (ID 2, capacity 8 sectors in its
    // configuration space); slot 2: nothing, so it reads all ones.
    let image = kernel(
        |a| {
            let mut bad = a.create_label();
            a.cmp(dword_ptr(virtio(0, 0)), 0x7472_6976u32)?; // "virt"
            a.jne(bad)?;
            a.cmp(dword_ptr(virtio(1, 4)), 2u32)?; // version 2 (modern)
            a.jne(bad)?;
            a.mov(eax, dword_ptr(virtio(0, 8)))?;
            a.mov(ebx, dword_ptr(virtio(1, 8)))?;
            a.shl(ebx, 4u32)?;
            a.or(eax, ebx)?;
            a.mov(ebx, dword_ptr(virtio(1, 0x100)))?; // capacity, low word
            a.shl(ebx, 8u32)?;
            a.or(eax, ebx)?;
            a.cmp(dword_ptr(virtio(2, 0)), -1i32)?;
            a.jne(bad)?;
            exit_with_eax(a)?;
            a.set_label(&mut bad)?;
            a.mov(eax, 0xbadu32)?;
            exit_with_eax(a)
        },
        vec![],
    );
    let dir = scratch("virtio-window");
    let config = MachineConfig {
        virtio: vec![
            VirtioDeviceConfig::Rng,
            VirtioDeviceConfig::Block {
                path: disk(&dir, 8),
                read_only: true,
            },
        ],
        ..config_for(&dir, &image)
    };
    let mut m = Machine::new(&config, Box::new(std::io::sink())).unwrap();
    assert_eq!(m.run(), Outcome::DebugExit((0x824 << 1) | 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_virtio_request_is_served_on_notify_and_interrupts_through_the_devices_ioapic_pin() {
    // The rng in slot 1 (a disk in slot 0), so its interrupt is GSI 17. The guest routes
    // IOAPIC pin 17 (level, active high) to vector 0x41, sets the device up as Linux's
    // virtio_mmio driver does, offers one 16-byte writable buffer and kicks the queue;
    // the handler reports the used ring and InterruptStatus.
    const IOAPIC: u32 = 0xfec0_0000;
    const DESC: u32 = 0x80_0000;
    const AVAIL: u32 = DESC + 0x1000;
    const USED: u32 = DESC + 0x2000;
    const BUF: u32 = DESC + 0x3000;
    let image = kernel(
        |a| {
            a.mov(dword_ptr(APIC + 0xf0), 0x1ffu32)?; // SVR: enabled
            a.mov(dword_ptr(IOAPIC), 0x10u32 + 2 * 17)?;
            a.mov(dword_ptr(IOAPIC + 0x10), 0x41u32 | (1 << 15))?; // level, vector 0x41
            a.mov(dword_ptr(IOAPIC), 0x11u32 + 2 * 17)?;
            a.mov(dword_ptr(IOAPIC + 0x10), 0u32)?; // APIC ID 0
            let reg = |r| dword_ptr(virtio(1, r));
            a.mov(reg(0x70), 1u32)?; // ACKNOWLEDGE
            a.mov(reg(0x70), 3u32)?; // DRIVER
            a.mov(reg(0x24), 1u32)?;
            a.mov(reg(0x20), 1u32)?; // VIRTIO_F_VERSION_1
            a.mov(reg(0x70), 0xbu32)?; // FEATURES_OK
            a.mov(reg(0x30), 0u32)?;
            a.mov(reg(0x38), 8u32)?;
            a.mov(reg(0x80), DESC)?;
            a.mov(reg(0x90), AVAIL)?;
            a.mov(reg(0xa0), USED)?;
            a.mov(reg(0x44), 1u32)?;
            a.mov(reg(0x70), 0xfu32)?; // DRIVER_OK
            a.mov(dword_ptr(DESC), BUF)?;
            a.mov(dword_ptr(DESC + 4), 0u32)?;
            a.mov(dword_ptr(DESC + 8), 16u32)?;
            a.mov(dword_ptr(DESC + 12), 2u32)?; // VIRTQ_DESC_F_WRITE
            a.mov(word_ptr(AVAIL + 4), 0u32)?; // ring[0] = descriptor 0
            a.mov(word_ptr(AVAIL + 2), 1u32)?; // idx = 1
            a.sti()?;
            a.mov(reg(0x50), 0u32)?; // QueueNotify
            let mut again = a.create_label();
            a.set_label(&mut again)?;
            a.hlt()?;
            a.jmp(again)
        },
        vec![(
            0x41,
            Box::new(|a: &mut Asm| {
                a.mov(eax, dword_ptr(USED + 8))?; // used.ring[0].len
                a.movzx(ebx, word_ptr(USED + 2))?; // used.idx
                a.shl(ebx, 8u32)?;
                a.or(eax, ebx)?;
                a.mov(ebx, dword_ptr(virtio(1, 0x60)))?; // InterruptStatus
                a.shl(ebx, 16u32)?;
                a.or(eax, ebx)?;
                exit_with_eax(a)
            }),
        )],
    );
    let dir = scratch("virtio-rng-irq");
    let config = MachineConfig {
        virtio: vec![
            VirtioDeviceConfig::Block {
                path: disk(&dir, 1),
                read_only: false,
            },
            VirtioDeviceConfig::Rng,
        ],
        ..config_for(&dir, &image)
    };
    let mut m = Machine::new(&config, Box::new(std::io::sink())).unwrap();
    let stop = m.stop_handle();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        stop.stop();
    });
    // 16 bytes used, used.idx 1, InterruptStatus = used buffer.
    assert_eq!(m.run(), Outcome::DebugExit((0x1_0110 << 1) | 1));
    drop(watchdog);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_disk_image_is_an_error_naming_it() {
    let dir = scratch("virtio-missing");
    let missing = dir.join("no-such-disk.raw");
    let config = MachineConfig {
        virtio: vec![VirtioDeviceConfig::Block {
            path: missing.clone(),
            read_only: false,
        }],
        ..config_for(&dir, &kernel(exit_with_eax, vec![]))
    };
    let err = Machine::new(&config, Box::new(std::io::sink()))
        .err()
        .expect("a machine without its disk")
        .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (up to 10 s) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn pause_holds_every_vcpu_whether_spinning_halted_or_waiting_to_start() {
    // Two vCPUs: the boot vCPU spins forever (or halts, below); the second waits for a
    // start-up IPI that never comes. Pausing must return with no vCPU running, keep it
    // so until resumed, and a stop must still end the machine afterwards.
    for halt in [false, true] {
        let image = kernel(
            |a| {
                let mut spin = a.create_label();
                a.set_label(&mut spin)?;
                if halt {
                    a.sti()?;
                    a.hlt()?;
                } else {
                    a.inc(dword_ptr(0x7000))?;
                }
                a.jmp(spin)
            },
            vec![],
        );
        let dir = scratch(&format!("pause-{halt}"));
        let config = MachineConfig {
            cpus: 2,
            ..config_for(&dir, &image)
        };
        let mut m = Machine::new(&config, Box::new(std::io::sink())).unwrap();
        assert_eq!(m.cpu_count(), 2);
        let gate = m.pause_handle();
        let stop = m.stop_handle();
        let machine = std::thread::spawn(move || m.run());
        if !halt {
            eventually("the boot vCPU runs", || gate.running() == 1);
        }
        gate.pause();
        assert_eq!(gate.running(), 0, "paused");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(gate.running(), 0, "still paused");
        assert!(!machine.is_finished());
        gate.resume();
        if !halt {
            eventually("the boot vCPU runs again", || gate.running() == 1);
        }
        stop.stop();
        assert_eq!(machine.join().unwrap(), Outcome::Stopped);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
