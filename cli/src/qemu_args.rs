//! `quetzal`'s command line, spelled as QEMU spells it (`-kernel`, `-m 512M`, `-smp 1`,
//! `-nographic`, ...). Long options take one dash, as in QEMU; two dashes are accepted
//! too. clap cannot express single-dash long options, so this is a small table-driven
//! parser: every option is declared once in [`OPTIONS`], which also renders `-h`.

use std::ffi::OsString;
use std::path::PathBuf;

use emu_vmm::config::{parse_memory_size, MachineConfig, SerialBackend, TraceFlags};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Build and run this machine.
    Run(Box<MachineConfig>),
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
    /// Print the `-d` items.
    TraceHelp,
}

/// A command line that cannot be used; the message names the offending flag or value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    /// An option we do not know.
    #[error("unknown option '{0}' (see -h)")]
    Unknown(String),
    /// An option given without its value.
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    /// A value the option does not accept.
    #[error("invalid value '{value}' for {option}: {reason}")]
    BadValue {
        /// The option.
        option: String,
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// An argument that is not an option.
    #[error("unexpected argument '{0}' (options start with '-')")]
    Positional(String),
}

/// One option: its name without dashes, whether it takes a value, and its help line.
pub struct OptionSpec {
    /// Name, e.g. `kernel`.
    pub name: &'static str,
    /// Value placeholder for help, or `None` for a switch.
    pub value: Option<&'static str>,
    /// One-line description.
    pub help: &'static str,
}

/// Every option `quetzal` accepts.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "kernel",
        value: Some("FILE"),
        help: "boot this kernel (bzImage, ELF vmlinux/PVH, multiboot)",
    },
    OptionSpec {
        name: "initrd",
        value: Some("FILE"),
        help: "use FILE as the initial ramdisk",
    },
    OptionSpec {
        name: "append",
        value: Some("CMDLINE"),
        help: "kernel command line",
    },
    OptionSpec {
        name: "m",
        value: Some("SIZE"),
        help: "guest RAM: 512, 512M, 2G (MiB without a suffix)",
    },
    OptionSpec {
        name: "smp",
        value: Some("N"),
        help: "number of vCPUs (this release: 1)",
    },
    OptionSpec {
        name: "machine",
        value: Some("TYPE"),
        help: "machine type: quetzal (default; microvm-like), microvm",
    },
    OptionSpec {
        name: "M",
        value: Some("TYPE"),
        help: "same as -machine",
    },
    OptionSpec {
        name: "nographic",
        value: None,
        help: "no display; serial port on the terminal",
    },
    OptionSpec {
        name: "display",
        value: Some("none"),
        help: "display backend (only 'none')",
    },
    OptionSpec {
        name: "serial",
        value: Some("DEV"),
        help: "serial port: stdio, mon:stdio, file:PATH, none",
    },
    OptionSpec {
        name: "nodefaults",
        value: None,
        help: "no default devices (accepted; the machine has no optional defaults)",
    },
    OptionSpec {
        name: "no-reboot",
        value: None,
        help: "exit instead of rebooting",
    },
    OptionSpec {
        name: "accel",
        value: Some("tcg"),
        help: "accelerator (only 'tcg': every instruction is emulated)",
    },
    OptionSpec {
        name: "d",
        value: Some("ITEMS"),
        help: "trace items, comma-separated: in_asm,int,mmu,guest_errors (help lists them)",
    },
    OptionSpec {
        name: "D",
        value: Some("FILE"),
        help: "write trace output to FILE instead of stderr",
    },
    OptionSpec {
        name: "h",
        value: None,
        help: "print this help",
    },
    OptionSpec {
        name: "help",
        value: None,
        help: "print this help",
    },
    OptionSpec {
        name: "version",
        value: None,
        help: "print the version",
    },
];

/// The `-d` items and what they trace.
pub const TRACE_ITEMS: &[(&str, &str)] = &[
    ("in_asm", "each block as it is translated"),
    ("int", "interrupts and exceptions"),
    ("mmu", "page faults"),
    (
        "guest_errors",
        "unimplemented instructions and accesses to nothing",
    ),
];

/// The help text.
pub fn help() -> String {
    let mut s = String::from(
        "usage: quetzal [options]\n\nBoots a kernel on a pure-software x86-64 machine. \
         Options (one or two leading dashes):\n",
    );
    for o in OPTIONS {
        let left = match o.value {
            Some(v) => format!("-{} {}", o.name, v),
            None => format!("-{}", o.name),
        };
        s.push_str(&format!("  {left:<22} {}\n", o.help));
    }
    s.push_str("\nOn the terminal, Ctrl-A x quits, Ctrl-A h shows the escapes.\n");
    s
}

fn bad(option: &str, value: &str, reason: &str) -> ArgError {
    ArgError::BadValue {
        option: format!("-{option}"),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// QEMU's `-m` also takes `size=512M[,...]`.
fn memory(value: &str) -> Result<u64, ArgError> {
    let size = value
        .split(',')
        .find_map(|p| p.strip_prefix("size="))
        .unwrap_or_else(|| value.split(',').next().unwrap_or(""));
    parse_memory_size(size).map_err(|e| bad("m", value, &e.to_string()))
}

/// QEMU's `-smp` takes `N` or `cpus=N[,...]`.
fn cpus(value: &str) -> Result<u32, ArgError> {
    let n = value
        .split(',')
        .find_map(|p| p.strip_prefix("cpus="))
        .unwrap_or_else(|| value.split(',').next().unwrap_or(""));
    n.parse::<u32>()
        .map_err(|_| bad("smp", value, "expected a number of CPUs"))
}

fn serial(value: &str) -> Result<SerialBackend, ArgError> {
    match value {
        "stdio" | "mon:stdio" => Ok(SerialBackend::Stdio),
        "none" | "null" => Ok(SerialBackend::None),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialBackend::File(PathBuf::from(path))),
            _ => Err(bad(
                "serial",
                value,
                "expected stdio, mon:stdio, file:PATH or none",
            )),
        },
    }
}

fn trace(value: &str) -> Result<Option<TraceFlags>, ArgError> {
    let mut flags = TraceFlags::default();
    for item in value.split(',') {
        match item {
            "help" => return Ok(None),
            "in_asm" => flags.in_asm = true,
            "int" => flags.int = true,
            "mmu" => flags.mmu = true,
            "guest_errors" => flags.guest_errors = true,
            _ => return Err(bad("d", item, "unknown trace item (-d help lists them)")),
        }
    }
    Ok(Some(flags))
}

/// Parses `quetzal`'s arguments (without the program name).
///
/// # Errors
///
/// The first unusable argument.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, ArgError> {
    let mut config = MachineConfig::default();
    let mut args = args.into_iter();
    while let Some(raw) = args.next() {
        let arg = raw.to_string_lossy().into_owned();
        let Some(name) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|n| !n.is_empty())
        else {
            return Err(ArgError::Positional(arg));
        };
        // `-opt=value` is accepted as well as `-opt value`.
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        let spec = OPTIONS
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| ArgError::Unknown(arg.clone()))?;
        let value = match (spec.value, inline) {
            (None, Some(_)) => return Err(ArgError::Unknown(arg.clone())),
            (None, None) => String::new(),
            (Some(_), Some(v)) => v,
            (Some(_), None) => args
                .next()
                .map(|v| v.to_string_lossy().into_owned())
                .ok_or_else(|| ArgError::MissingValue(format!("-{name}")))?,
        };
        match name {
            "kernel" => config.kernel = Some(PathBuf::from(value)),
            "initrd" => config.initrd = Some(PathBuf::from(value)),
            "append" => config.cmdline = value,
            "m" => config.memory = memory(&value)?,
            "smp" => config.cpus = cpus(&value)?,
            "machine" | "M" => {
                let kind = value.split(',').next().unwrap_or("");
                if !matches!(kind, "quetzal" | "microvm") {
                    return Err(bad(
                        name,
                        &value,
                        "supported machine types: quetzal, microvm",
                    ));
                }
            }
            "nographic" => config.serial = SerialBackend::Stdio,
            "display" => {
                if value != "none" {
                    return Err(bad("display", &value, "only 'none' is supported"));
                }
            }
            "serial" => config.serial = serial(&value)?,
            "nodefaults" => {}
            "no-reboot" => config.no_reboot = true,
            "accel" => {
                if value.split(',').next() != Some("tcg") {
                    return Err(bad("accel", &value, "only 'tcg' exists here"));
                }
            }
            "d" => match trace(&value)? {
                Some(flags) => config.trace = flags,
                None => return Ok(Command::TraceHelp),
            },
            "D" => config.trace_file = Some(PathBuf::from(value)),
            "h" | "help" => return Ok(Command::Help),
            "version" => return Ok(Command::Version),
            _ => unreachable!("every OPTIONS entry is handled"),
        }
    }
    Ok(Command::Run(Box::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<MachineConfig, ArgError> {
        match parse(args.iter().map(OsString::from))? {
            Command::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_readme_command_line_parses() {
        let c = run(&[
            "-kernel",
            "bzImage",
            "-initrd",
            "initrd.img",
            "-append",
            "console=ttyS0 panic=-1",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
        ])
        .unwrap();
        assert_eq!(c.kernel, Some(PathBuf::from("bzImage")));
        assert_eq!(c.initrd, Some(PathBuf::from("initrd.img")));
        assert_eq!(c.cmdline, "console=ttyS0 panic=-1");
        assert_eq!(c.memory, 512 << 20);
        assert_eq!(c.cpus, 1);
        assert_eq!(c.serial, SerialBackend::Stdio);
    }

    #[test]
    fn qemu_spellings_and_double_dashes_are_accepted() {
        let c = run(&[
            "--kernel=k",
            "-m",
            "size=2G",
            "-smp",
            "cpus=1",
            "-M",
            "microvm",
            "-serial",
            "file:/tmp/out",
            "-no-reboot",
            "-display",
            "none",
            "-nodefaults",
            "-accel",
            "tcg",
            "-d",
            "int,mmu",
            "-D",
            "/tmp/trace",
        ])
        .unwrap();
        assert_eq!(c.memory, 2 << 30);
        assert_eq!(c.serial, SerialBackend::File("/tmp/out".into()));
        assert!(c.no_reboot && c.trace.int && c.trace.mmu && !c.trace.in_asm);
        assert_eq!(c.trace_file, Some(PathBuf::from("/tmp/trace")));
        // A value that starts with a dash is still a value.
        assert_eq!(run(&["-append", "-x"]).unwrap().cmdline, "-x");
    }

    #[test]
    fn errors_name_the_flag_or_value() {
        let err = |a: &[&str]| parse(a.iter().map(OsString::from)).unwrap_err().to_string();
        assert_eq!(err(&["-bogus"]), "unknown option '-bogus' (see -h)");
        assert_eq!(err(&["-kernel"]), "option '-kernel' needs a value");
        assert!(err(&["-m", "lots"]).starts_with("invalid value 'lots' for -m"));
        assert!(err(&["-smp", "two"]).contains("-smp"));
        assert!(err(&["-serial", "tcp:1234"]).contains("-serial"));
        assert!(err(&["-M", "q35"]).contains("-M"));
        assert!(err(&["-d", "everything"]).contains("everything"));
        assert!(err(&["bzImage"]).contains("unexpected argument 'bzImage'"));
        assert!(err(&["-nographic=1"]).contains("-nographic=1"));
        for e in [err(&["-bogus"]), err(&["-m", "x"])] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn help_version_and_trace_help() {
        let cmd = |a: &[&str]| parse(a.iter().map(OsString::from)).unwrap();
        assert_eq!(cmd(&["-h"]), Command::Help);
        assert_eq!(cmd(&["--help"]), Command::Help);
        assert_eq!(cmd(&["--version"]), Command::Version);
        assert_eq!(cmd(&["-d", "help"]), Command::TraceHelp);
        let h = help();
        for o in OPTIONS {
            assert!(h.contains(&format!("-{}", o.name)));
        }
    }
}
