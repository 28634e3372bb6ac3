//! `quetzal`: boot a kernel on a pure-software x86-64 machine, with QEMU's flags.
//!
//! ```text
//! quetzal -kernel bzImage -initrd initrd.img -append "console=ttyS0" -m 512 -nographic
//! ```
//!
//! Exit status: 0 when the guest powers off (or resets under `-no-reboot`, or the user
//! quits with `Ctrl-A x`); the debug-exit port's `(v << 1) | 1`; 1 for bad flags or an
//! unbootable kernel; 2 when the guest dies (kernel panic, triple fault, a halt nothing
//! can wake, an access to nothing).

use std::io::Read;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use cli::qemu_args::{self, Command};
use cli::terminal::{Action, EscapeFilter, RawMode, ESCAPE_HELP};
use emu_vmm::config::{MachineConfig, SerialBackend};
use emu_vmm::machine::{console_output, Machine, Outcome};

/// Where terminal input goes: the running machine's serial port and stop handle.
type InputSink = Arc<Mutex<Option<(Box<dyn Fn(&[u8]) + Send + Sync>, emu_core::StopHandle)>>>;

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
    let _raw = if config.serial == SerialBackend::Stdio {
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
    loop {
        let console = match console_output(&config.serial) {
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
        *sink.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Box::new(machine.serial_input()), machine.stop_handle()));
        let outcome = machine.run();
        *sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            Outcome::Stopped if quit.load(std::sync::atomic::Ordering::SeqCst) => ExitCode::SUCCESS,
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
