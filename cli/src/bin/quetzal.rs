//! `quetzal`: boot a kernel on a pure-software x86-64 machine, with QEMU's flags.
//!
//! ```text
//! quetzal -kernel bzImage -initrd initrd.img -append "console=ttyS0" -m 512 -nographic
//! ```
//!
//! The terminal is the serial port's (`-serial stdio`, the default), and a virtconsole's
//! (`-device virtio-serial-device -device virtconsole`, `hvc0` in the guest) when there
//! is one: both print there, and typed input goes to `hvc0` when a virtconsole exists,
//! else to the serial port. With `-serial none` the terminal is `hvc0`'s alone.
//!
//! Exit status: 0 when the guest powers off (or resets under `-no-reboot`, or the user
//! quits with `Ctrl-A x`); the debug-exit port's `(v << 1) | 1`; 1 for bad flags or an
//! unbootable kernel; 2 when the guest dies (kernel panic, triple fault, a halt nothing
//! can wake, an access to nothing).

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use cli::qemu_args::{self, Command};
use cli::terminal::{Action, EscapeFilter, RawMode, ESCAPE_HELP};
use emu_vmm::config::{MachineConfig, SerialBackend, VirtioDeviceConfig};
use emu_vmm::machine::{console_output, Machine, Outcome};

/// Bytes typed on the terminal, for the guest.
type Input = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Where terminal input goes: the running machine's `hvc0` or serial port, and its stop
/// handle.
type InputSink = Arc<Mutex<Option<(Input, emu_core::StopHandle)>>>;

fn main() -> ExitCode {
    let command = match qemu_args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quetzal: {e}");
            return ExitCode::from(1);
        }
    };
    match command {
        Command::Help => {
            print!("{}", qemu_args::help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("quetzal {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::TraceHelp => {
            for (item, what) in qemu_args::TRACE_ITEMS {
                println!("{item:<14} {what}");
            }
            ExitCode::SUCCESS
        }
        Command::Run(config) => run(&config),
    }
}

/// Reads the terminal on its own thread and feeds the current machine.
fn start_input(sink: InputSink, quit: Arc<std::sync::atomic::AtomicBool>) {
    std::thread::Builder::new()
        .name("quetzal-stdin".into())
        .spawn(move || {
            let mut filter = EscapeFilter::default();
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for action in filter.feed(&buf[..n]) {
                    let target = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let Some((input, stop)) = target.as_ref() else {
                        continue;
                    };
                    match action {
                        Action::Send(bytes) => input(&bytes),
                        Action::Help => eprint!("{ESCAPE_HELP}"),
                        Action::Quit => {
                            quit.store(true, std::sync::atomic::Ordering::SeqCst);
                            stop.stop();
                        }
                    }
                }
            }
        })
        .expect("spawning the terminal thread");
}

fn run(config: &MachineConfig) -> ExitCode {
    let sink: InputSink = Arc::new(Mutex::new(None));
    let quit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let virtconsole = config
        .virtio
        .contains(&VirtioDeviceConfig::Console { terminal: true });
    let _raw = if config.serial == SerialBackend::Stdio || virtconsole {
        let raw = RawMode::enter();
        start_input(sink.clone(), quit.clone());
        raw
    } else {
        None
    };
    // One trace per run of quetzal, as QEMU's -D: start the file empty here; the
    // machines of the reboot loop append to it.
    if let Some(path) = &config.trace_file {
        if let Err(e) = std::fs::File::create(path) {
            eprintln!(
                "quetzal: cannot open the trace file {}: {e}",
                path.display()
            );
            return ExitCode::from(1);
        }
    }
    let started = |machine: &Machine| {
        let input: Input = match machine.console_input() {
            Some(hvc0) => Box::new(hvc0),
            None => Box::new(machine.serial_input()),
        };
        *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some((input, machine.stop_handle()));
        ControlFlow::Continue(())
    };
    let finished = || *sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
    run_machines(config, || console_output(&config.serial), started, finished)
}

/// The reboot loop: builds a machine for `config` (its serial output from `console`),
/// runs it, and on a guest reset builds a fresh one and starts over, unless
/// `-no-reboot` was given. `started` sees each machine before it runs (and may end the
/// loop with a status instead); `finished` is told when it stopped. Returns the exit
/// status for how the last machine ended.
fn run_machines(
    config: &MachineConfig,
    mut console: impl FnMut() -> std::io::Result<Box<dyn Write + Send>>,
    mut started: impl FnMut(&Machine) -> ControlFlow<ExitCode>,
    mut finished: impl FnMut(),
) -> ExitCode {
    loop {
        let console = match console() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("quetzal: cannot open the serial output: {e}");
                return ExitCode::from(1);
            }
        };
        let mut machine = match Machine::new(config, console) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("quetzal: {e}");
                return ExitCode::from(1);
            }
        };
        if let ControlFlow::Break(status) = started(&machine) {
            return status;
        }
        let outcome = machine.run();
        finished();
        // Leave the guest's last line alone: start our messages on a fresh line.
        let fatal = |what: &str, detail: &str| {
            eprintln!("\r\nquetzal: {what}\r\n{}", detail.replace('\n', "\r\n"));
            ExitCode::from(2)
        };
        return match outcome {
            Outcome::PowerOff => ExitCode::SUCCESS,
            Outcome::Reset if config.no_reboot => ExitCode::SUCCESS,
            Outcome::Reset => continue,
            Outcome::DebugExit(code) => ExitCode::from(code.min(255) as u8),
            // Ctrl-A x (or an embedder's stop): a clean exit.
            Outcome::Stopped => ExitCode::SUCCESS,
            Outcome::GuestPanic(msg) => fatal("the guest kernel panicked", &msg),
            Outcome::TripleFault(cpu) => fatal("the guest CPU shut down (triple fault)", &cpu),
            Outcome::HaltedForever(cpu) => fatal("the guest halted with interrupts disabled", &cpu),
            Outcome::Unmapped(what) => {
                fatal("the guest executed from memory that does not exist", &what)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multiboot a.out-kludge kernel that prints `B` on COM1 and resets the machine
    /// through port 0xCF9 (hand-assembled 32-bit code).
    fn resetting_kernel() -> Vec<u8> {
        emu_boot::multiboot::aout_kludge_image(
            &[
                0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
                0xb0, b'B', // mov al, 'B'
                0xee, // out dx, al
                0x66, 0xba, 0xf9, 0x0c, // mov dx, 0xcf9
                0xb0, 0x06, // mov al, 6
                0xee, // out dx, al
                0xf4, // hlt
            ],
            0,
        )
    }

    #[derive(Clone, Default)]
    struct Console(Arc<Mutex<Vec<u8>>>);

    impl Write for Console {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs the reboot loop over the resetting kernel, ending it with status 7 when the
    /// third machine is about to start; returns the status, the machines built and the
    /// guest's serial output.
    fn reboot_loop(no_reboot: bool) -> (String, u32, Vec<u8>) {
        let dir =
            std::env::temp_dir().join(format!("quetzal-reboot-{}-{no_reboot}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("kernel.bin");
        std::fs::write(&kernel, resetting_kernel()).unwrap();
        let config = MachineConfig {
            memory: 32 << 20,
            kernel: Some(kernel),
            serial: SerialBackend::None,
            no_reboot,
            ..Default::default()
        };
        let out = Console::default();
        let mut boots = 0;
        let status = run_machines(
            &config,
            || Ok(Box::new(out.clone()) as Box<dyn Write + Send>),
            |_| {
                boots += 1;
                if boots == 3 {
                    ControlFlow::Break(ExitCode::from(7))
                } else {
                    ControlFlow::Continue(())
                }
            },
            || {},
        );
        let _ = std::fs::remove_dir_all(&dir);
        let output = out.0.lock().unwrap().clone();
        (format!("{status:?}"), boots, output)
    }

    #[test]
    fn a_guest_reset_restarts_the_machine_from_scratch() {
        let (status, boots, output) = reboot_loop(false);
        assert_eq!(status, format!("{:?}", ExitCode::from(7)));
        assert_eq!(boots, 3);
        assert_eq!(
            output, b"BB",
            "two whole boots ran before the third was cut off"
        );
    }

    #[test]
    fn no_reboot_exits_cleanly_on_the_first_reset() {
        let (status, boots, output) = reboot_loop(true);
        assert_eq!(status, format!("{:?}", ExitCode::SUCCESS));
        assert_eq!(boots, 1);
        assert_eq!(output, b"B");
    }
}
