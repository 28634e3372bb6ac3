//! `quetzal`'s command line, spelled as QEMU spells it (`-kernel`, `-m 512M`, `-smp 1`,
//! `-nographic`, ...). Long options take one dash, as in QEMU; two dashes are accepted
//! too. clap cannot express single-dash long options, so this is a small table-driven
//! parser: every option is declared once in [`OPTIONS`], which also renders `-h`.

use std::ffi::OsString;
use std::path::PathBuf;

use emu_vmm::config::{
    parse_memory_size, HostForward, MachineConfig, SerialBackend, TraceFlags, UserNetConfig,
    VirtioDeviceConfig,
};

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
        name: "drive",
        value: Some("OPTS"),
        help: "disk: file=PATH,format=raw[,if=virtio|none][,readonly=on][,id=ID]",
    },
    OptionSpec {
        name: "device",
        value: Some("DEV"),
        help: "add a device: virtio-blk-device,drive=ID, virtio-rng-device, \
               virtio-net-device,netdev=ID[,mac=MAC], virtio-serial-device, virtconsole, \
               virtio-balloon-device[,deflate-on-oom=on]",
    },
    OptionSpec {
        name: "netdev",
        value: Some("OPTS"),
        help: "user-mode network: user,id=ID[,hostfwd=tcp:[ADDR]:PORT-[GADDR]:GPORT]...",
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

/// QEMU's `-smp` takes `[cpus=]N[,sockets=S][,dies=D][,cores=C][,threads=T][,maxcpus=M]`;
/// without a count the topology's product is the count. Every CPU is its own core here
/// (the topology only sizes the machine), and CPU hot-plug is not offered, so `maxcpus`
/// may not exceed the count.
fn cpus(value: &str) -> Result<u32, ArgError> {
    let number = |v: &str| -> Result<u32, ArgError> {
        v.parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("smp", value, "expected a positive number of CPUs"))
    };
    let mut count = None;
    let mut topology = 1u32;
    let mut max = None;
    for (i, part) in value.split(',').enumerate() {
        match part.split_once('=') {
            None if i == 0 => count = Some(number(part)?),
            Some(("cpus", v)) => count = Some(number(v)?),
            Some(("sockets" | "dies" | "clusters" | "cores" | "threads", v)) => {
                topology = topology.saturating_mul(number(v)?);
            }
            Some(("maxcpus", v)) => max = Some(number(v)?),
            _ => return Err(bad("smp", value, &format!("unknown part '{part}'"))),
        }
    }
    let count = count.unwrap_or(topology);
    if max.is_some_and(|m| m > count) {
        return Err(bad(
            "smp",
            value,
            "CPU hot-plug (maxcpus above the count) is not supported",
        ));
    }
    Ok(count)
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

/// The `-device` names this build knows, for error messages.
pub const DEVICES: &[&str] = &[
    "virtio-blk-device",
    "virtio-rng-device",
    "virtio-net-device",
    "virtio-serial-device",
    "virtconsole",
    "virtio-balloon-device",
];

/// Splits a QEMU option string at commas; `,,` stands for a literal comma (so a path
/// may contain one).
fn split_opts(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            parts.last_mut().expect("never empty").push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            parts.last_mut().expect("never empty").push(',');
        } else {
            parts.push(String::new());
        }
    }
    parts
}

/// QEMU's boolean spellings.
fn on_off(option: &str, part: &str, value: &str) -> Result<bool, ArgError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(bad(option, part, "expected on or off")),
    }
}

/// One `-drive`: a raw image, attached at once (`if=virtio`) or left for a
/// `-device virtio-blk-device,drive=ID` (`if=none`).
#[derive(Debug)]
struct Drive {
    id: Option<String>,
    path: PathBuf,
    read_only: bool,
    attach_now: bool,
    /// Attached (by `if=virtio` or a `-device`).
    used: bool,
}

/// Parses `-drive` options: `file=PATH` (required), `format=raw` (the only format; also
/// assumed when absent), `if=virtio` (the default) or `if=none`, `readonly=on|off`,
/// `id=ID` and `media=disk`. Anything else is refused by name.
fn drive(value: &str) -> Result<Drive, ArgError> {
    let mut d = Drive {
        id: None,
        path: PathBuf::new(),
        read_only: false,
        attach_now: true,
        used: false,
    };
    let mut file = None;
    for part in split_opts(value) {
        let Some((key, v)) = part.split_once('=') else {
            return Err(bad("drive", &part, "expected key=value"));
        };
        match key {
            "file" if !v.is_empty() => file = Some(PathBuf::from(v)),
            "format" if v == "raw" => {}
            "format" => return Err(bad("drive", &part, "only format=raw is supported")),
            "if" => {
                d.attach_now = match v {
                    "virtio" => true,
                    "none" => false,
                    _ => return Err(bad("drive", &part, "supported interfaces: virtio, none")),
                }
            }
            "readonly" => d.read_only = on_off("drive", &part, v)?,
            "id" if !v.is_empty() => d.id = Some(v.to_string()),
            "media" if v == "disk" => {}
            _ => {
                return Err(bad(
                    "drive",
                    &part,
                    "expected file=, format=raw, if=virtio|none, readonly=on|off, id=",
                ))
            }
        }
    }
    d.path = file.ok_or_else(|| bad("drive", value, "file=PATH is required"))?;
    Ok(d)
}

/// What a `-device` asks for: a device now, or a disk whose `-drive` may come later.
#[derive(Debug)]
enum Device {
    Ready(VirtioDeviceConfig),
    Disk {
        drive: String,
    },
    /// A NIC on the `-netdev` with this id (which may come later), with its MAC if given.
    Nic {
        netdev: String,
        mac: Option<[u8; 6]>,
    },
}

/// Parses `-device NAME[,key=value...]` for the devices in [`DEVICES`].
fn device(value: &str) -> Result<Device, ArgError> {
    let parts = split_opts(value);
    let name = parts[0].strip_prefix("driver=").unwrap_or(&parts[0]);
    let props = &parts[1..];
    match name {
        "virtio-blk-device" => {
            let mut drive = None;
            for part in props {
                match part.split_once('=') {
                    Some(("drive", id)) if !id.is_empty() => drive = Some(id.to_string()),
                    _ => return Err(bad("device", part, "virtio-blk-device takes drive=ID")),
                }
            }
            let drive = drive.ok_or_else(|| {
                bad(
                    "device",
                    value,
                    "virtio-blk-device needs drive=ID naming a -drive id=ID,if=none",
                )
            })?;
            Ok(Device::Disk { drive })
        }
        "virtio-net-device" => {
            let (mut netdev, mut mac) = (None, None);
            for part in props {
                match part.split_once('=') {
                    Some(("netdev", id)) if !id.is_empty() => netdev = Some(id.to_string()),
                    Some(("mac", m)) => {
                        mac = Some(parse_mac(m).ok_or_else(|| {
                            bad(
                                "device",
                                part,
                                "expected a unicast MAC like 52:54:00:12:34:56",
                            )
                        })?)
                    }
                    _ => {
                        return Err(bad(
                            "device",
                            part,
                            "virtio-net-device takes netdev=ID and mac=MAC",
                        ))
                    }
                }
            }
            let netdev = netdev.ok_or_else(|| {
                bad(
                    "device",
                    value,
                    "virtio-net-device needs netdev=ID naming a -netdev user,id=ID",
                )
            })?;
            Ok(Device::Nic { netdev, mac })
        }
        "virtio-rng-device" => match props.first() {
            Some(part) => Err(bad("device", part, "virtio-rng-device takes no options")),
            None => Ok(Device::Ready(VirtioDeviceConfig::Rng)),
        },
        // The bus; its port comes with a later `-device virtconsole`.
        "virtio-serial-device" => match props.first() {
            Some(part) => Err(bad("device", part, "virtio-serial-device takes no options")),
            None => Ok(Device::Ready(VirtioDeviceConfig::Console {
                terminal: false,
            })),
        },
        "virtio-balloon-device" => {
            let mut deflate_on_oom = false;
            for part in props {
                match part.split_once('=') {
                    Some(("deflate-on-oom", v)) => deflate_on_oom = on_off("device", part, v)?,
                    _ => {
                        return Err(bad(
                            "device",
                            part,
                            "virtio-balloon-device takes deflate-on-oom=on|off",
                        ))
                    }
                }
            }
            Ok(Device::Ready(VirtioDeviceConfig::Balloon {
                deflate_on_oom,
            }))
        }
        _ => Err(bad(
            "device",
            name,
            &format!("unknown device (supported: {})", DEVICES.join(", ")),
        )),
    }
}

/// A MAC address written `52:54:00:12:34:56`; multicast addresses are refused.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// One `-netdev`: a user-mode network waiting for its `-device virtio-net-device`.
#[derive(Debug)]
struct Netdev {
    id: String,
    user: UserNetConfig,
    /// Attached to a NIC.
    used: bool,
}

/// The netdev types this build knows, for error messages.
pub const NETDEVS: &[&str] = &["user"];

/// Parses `-netdev user,id=ID[,hostfwd=RULE]...` (QEMU's user-mode network; `hostfwd` may
/// be repeated).
fn netdev(value: &str) -> Result<Netdev, ArgError> {
    let parts = split_opts(value);
    let kind = parts[0].strip_prefix("type=").unwrap_or(&parts[0]);
    if kind != "user" {
        return Err(bad(
            "netdev",
            kind,
            &format!("unknown netdev type (supported: {})", NETDEVS.join(", ")),
        ));
    }
    let mut id = None;
    let mut user = UserNetConfig::default();
    for part in &parts[1..] {
        match part.split_once('=') {
            Some(("id", v)) if !v.is_empty() => id = Some(v.to_string()),
            Some(("hostfwd", rule)) => user.host_forwards.push(
                rule.parse::<HostForward>()
                    .map_err(|e| bad("netdev", part, &e.to_string()))?,
            ),
            _ => return Err(bad("netdev", part, "user takes id=ID and hostfwd=RULE")),
        }
    }
    let id = id.ok_or_else(|| bad("netdev", value, "id=ID is required"))?;
    Ok(Netdev {
        id,
        user,
        used: false,
    })
}

/// Whether a `-device` value names QEMU's `virtconsole`.
fn is_virtconsole(value: &str) -> bool {
    let name = value.split(',').next().unwrap_or("");
    name.strip_prefix("driver=").unwrap_or(name) == "virtconsole"
}

/// `-device virtconsole`: the port of the most recent `-device virtio-serial-device` (as
/// in QEMU, the bus comes first), connected to the terminal. One port per bus (no
/// multiport) and one on the terminal in all.
fn attach_virtconsole(slots: &mut [Slot], value: &str) -> Result<(), ArgError> {
    if let Some(part) = split_opts(value).get(1) {
        return Err(bad(
            "device",
            part,
            "virtconsole takes no options (its port is the terminal; no chardev=)",
        ));
    }
    if slots_have_terminal(slots) {
        return Err(bad(
            "device",
            "virtconsole",
            "only one virtconsole is supported (it is the terminal)",
        ));
    }
    let terminal = slots
        .iter_mut()
        .rev()
        .find_map(|s| match s {
            Slot::Ready(VirtioDeviceConfig::Console { terminal }) => Some(terminal),
            _ => None,
        })
        .ok_or_else(|| {
            bad(
                "device",
                "virtconsole",
                "needs a -device virtio-serial-device before it",
            )
        })?;
    *terminal = true;
    Ok(())
}

/// Whether a virtconsole is attached already.
fn slots_have_terminal(slots: &[Slot]) -> bool {
    slots.iter().any(|s| {
        matches!(
            s,
            Slot::Ready(VirtioDeviceConfig::Console { terminal: true })
        )
    })
}

/// Where a VirtIO device of the command line comes from, in command-line order.
enum Slot {
    Ready(VirtioDeviceConfig),
    /// `-drive` number `n` with `if=virtio`.
    Drive(usize),
    /// A `-device virtio-blk-device,drive=ID`.
    DriveRef(String),
    /// A `-device virtio-net-device,netdev=ID[,mac=MAC]`.
    NetdevRef {
        netdev: String,
        mac: Option<[u8; 6]>,
    },
}

/// Resolves the VirtIO devices in command-line order: every `drive=ID` names exactly one
/// `-drive` with that id and `if=none`, and no drive is attached twice.
fn resolve_virtio(
    slots: Vec<Slot>,
    drives: &mut [Drive],
    netdevs: &mut [Netdev],
) -> Result<Vec<VirtioDeviceConfig>, ArgError> {
    // QEMU's default MACs: 52:54:00:12:34:56 for the first NIC, then ...:57 and so on.
    let mut next_mac = emu_vmm::config::DEFAULT_MAC;
    let block = |d: &Drive| VirtioDeviceConfig::Block {
        path: d.path.clone(),
        read_only: d.read_only,
    };
    let mut out = Vec::new();
    for slot in slots {
        out.push(match slot {
            Slot::Ready(c) => c,
            Slot::Drive(n) => block(&drives[n]),
            Slot::DriveRef(id) => {
                let part = format!("drive={id}");
                let d = drives
                    .iter_mut()
                    .find(|d| d.id.as_deref() == Some(id.as_str()))
                    .ok_or_else(|| bad("device", &part, "no -drive has this id"))?;
                if d.used {
                    return Err(bad(
                        "device",
                        &part,
                        "this drive is already attached (give it if=none, and use it once)",
                    ));
                }
                d.used = true;
                block(d)
            }
            Slot::NetdevRef { netdev, mac } => {
                let part = format!("netdev={netdev}");
                let n = netdevs
                    .iter_mut()
                    .find(|n| n.id == netdev)
                    .ok_or_else(|| bad("device", &part, "no -netdev has this id"))?;
                if n.used {
                    return Err(bad("device", &part, "this netdev is already attached"));
                }
                n.used = true;
                let mac = mac.unwrap_or(next_mac);
                next_mac[5] = next_mac[5].wrapping_add(1);
                VirtioDeviceConfig::Net {
                    mac,
                    user: n.user.clone(),
                }
            }
        });
    }
    Ok(out)
}

/// Parses `quetzal`'s arguments (without the program name).
///
/// # Errors
///
/// The first unusable argument.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, ArgError> {
    let mut config = MachineConfig::default();
    let mut drives: Vec<Drive> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut netdevs: Vec<Netdev> = Vec::new();
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
            "drive" => {
                let mut d = drive(&value)?;
                if let Some(id) = &d.id {
                    if drives.iter().any(|o| o.id.as_ref() == Some(id)) {
                        return Err(bad("drive", &format!("id={id}"), "duplicate drive id"));
                    }
                }
                if d.attach_now {
                    d.used = true;
                    slots.push(Slot::Drive(drives.len()));
                }
                drives.push(d);
            }
            "device" if is_virtconsole(&value) => attach_virtconsole(&mut slots, &value)?,
            "device" => slots.push(match device(&value)? {
                Device::Ready(c) => Slot::Ready(c),
                Device::Disk { drive } => Slot::DriveRef(drive),
                Device::Nic { netdev, mac } => Slot::NetdevRef { netdev, mac },
            }),
            "netdev" => {
                let n = netdev(&value)?;
                if netdevs.iter().any(|o| o.id == n.id) {
                    return Err(bad(
                        "netdev",
                        &format!("id={}", n.id),
                        "duplicate netdev id",
                    ));
                }
                netdevs.push(n);
            }
            "h" | "help" => return Ok(Command::Help),
            "version" => return Ok(Command::Version),
            _ => unreachable!("every OPTIONS entry is handled"),
        }
    }
    config.virtio = resolve_virtio(slots, &mut drives, &mut netdevs)?;
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
    fn smp_takes_a_count_or_a_topology() {
        assert_eq!(run(&["-smp", "4"]).unwrap().cpus, 4);
        assert_eq!(run(&["-smp", "cpus=2,sockets=1"]).unwrap().cpus, 2);
        assert_eq!(
            run(&["-smp", "sockets=2,cores=2,threads=2"]).unwrap().cpus,
            8
        );
        assert_eq!(run(&["-smp", "3,maxcpus=3"]).unwrap().cpus, 3);
    }

    #[test]
    fn errors_name_the_flag_or_value() {
        let err = |a: &[&str]| parse(a.iter().map(OsString::from)).unwrap_err().to_string();
        assert_eq!(err(&["-bogus"]), "unknown option '-bogus' (see -h)");
        assert_eq!(err(&["-kernel"]), "option '-kernel' needs a value");
        assert!(err(&["-m", "lots"]).starts_with("invalid value 'lots' for -m"));
        assert!(err(&["-smp", "two"]).contains("-smp"));
        assert!(err(&["-smp", "0"]).contains("-smp"));
        assert!(err(&["-smp", "2,frogs=3"]).contains("frogs"));
        assert!(err(&["-smp", "2,maxcpus=4"]).contains("hot-plug"));
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
    fn drives_and_devices_become_virtio_devices_in_command_line_order() {
        let c = run(&[
            "-device",
            "virtio-rng-device",
            "-drive",
            "file=/img/a.raw,format=raw,if=virtio",
            "-device",
            "virtio-blk-device,drive=disk1",
            "-drive",
            "id=disk1,file=/img/b.raw,format=raw,if=none,readonly=on",
            "-drive",
            "file=/img/c,,d.raw,readonly=off",
            "-drive",
            "id=spare,file=/img/unused.raw,format=raw,if=none",
        ])
        .unwrap();
        let block = |path: &str, read_only| VirtioDeviceConfig::Block {
            path: path.into(),
            read_only,
        };
        assert_eq!(
            c.virtio,
            vec![
                VirtioDeviceConfig::Rng,
                block("/img/a.raw", false),
                // The -device's position counts, not its drive's.
                block("/img/b.raw", true),
                // `,,` is a comma in the path; format and if default to raw and virtio.
                block("/img/c,d.raw", false),
            ]
        );
        assert_eq!(
            run(&["-device", "driver=virtio-rng-device"])
                .unwrap()
                .virtio,
            vec![VirtioDeviceConfig::Rng]
        );
        assert!(run(&["-kernel", "k"]).unwrap().virtio.is_empty());
    }

    #[test]
    fn bad_drives_and_devices_are_named() {
        let err = |a: &[&str]| parse(a.iter().map(OsString::from)).unwrap_err().to_string();
        assert_eq!(
            err(&["-drive", "file=d.qcow2,format=qcow2,if=virtio"]),
            "invalid value 'format=qcow2' for -drive: only format=raw is supported"
        );
        assert_eq!(
            err(&["-device", "virtio-gpu-device"]),
            "invalid value 'virtio-gpu-device' for -device: unknown device \
             (supported: virtio-blk-device, virtio-rng-device, virtio-net-device, \
             virtio-serial-device, virtconsole, virtio-balloon-device)"
        );
        assert!(err(&["-drive", "format=raw,if=virtio"]).contains("file=PATH is required"));
        assert!(err(&["-drive", "file=d,if=ide"]).contains("'if=ide'"));
        assert!(err(&["-drive", "file=d,readonly=maybe"]).contains("'readonly=maybe'"));
        assert!(err(&["-drive", "file=d,snapshot=on"]).contains("'snapshot=on'"));
        assert!(err(&["-drive", "file=d,raw"]).contains("'raw'"));
        assert!(err(&["-device", "virtio-blk-device"]).contains("needs drive=ID"));
        assert!(err(&["-device", "virtio-rng-device,max-bytes=10"]).contains("max-bytes"));
        assert_eq!(
            err(&["-device", "virtio-blk-device,drive=nope"]),
            "invalid value 'drive=nope' for -device: no -drive has this id"
        );
        // An if=virtio drive is attached already; a drive is attached once.
        assert!(err(&[
            "-drive",
            "id=a,file=d,if=virtio",
            "-device",
            "virtio-blk-device,drive=a"
        ])
        .contains("already attached"));
        assert!(err(&[
            "-drive",
            "id=a,file=d,if=none",
            "-device",
            "virtio-blk-device,drive=a",
            "-device",
            "virtio-blk-device,drive=a"
        ])
        .contains("already attached"));
        assert!(err(&[
            "-drive",
            "id=a,file=d,if=none",
            "-drive",
            "id=a,file=e,if=none"
        ])
        .contains("duplicate drive id"));
        assert_eq!(err(&["-drive"]), "option '-drive' needs a value");
        for e in [
            err(&["-drive", "file=x,format=vmdk"]),
            err(&["-device", "e1000"]),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn netdevs_and_nics_become_virtio_net_devices() {
        let c = run(&[
            "-device",
            "virtio-net-device,netdev=n0",
            "-netdev",
            "user,id=n0,hostfwd=tcp::5555-:22,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80",
            "-netdev",
            "user,id=n1",
            "-device",
            "virtio-net-device,netdev=n1,mac=02:00:00:00:00:01",
        ])
        .unwrap();
        let VirtioDeviceConfig::Net { mac, user } = &c.virtio[0] else {
            panic!("{:?}", c.virtio);
        };
        assert_eq!(*mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(user.host_forwards.len(), 2);
        assert_eq!(user.host_forwards[0].host_port, 5555);
        assert_eq!(user.host_forwards[0].guest_port, 22);
        assert_eq!(
            user.host_forwards[1].host_addr,
            std::net::Ipv4Addr::LOCALHOST
        );
        assert_eq!(user.guest, std::net::Ipv4Addr::new(10, 0, 2, 15));
        let VirtioDeviceConfig::Net { mac, user } = &c.virtio[1] else {
            panic!("{:?}", c.virtio);
        };
        assert_eq!(*mac, [2, 0, 0, 0, 0, 1]);
        assert!(user.host_forwards.is_empty());
        // A second NIC without mac= gets the next default address.
        let c = run(&[
            "-netdev",
            "user,id=a",
            "-netdev",
            "type=user,id=b",
            "-device",
            "virtio-net-device,netdev=a",
            "-device",
            "virtio-net-device,netdev=b",
        ])
        .unwrap();
        let macs: Vec<u8> = c
            .virtio
            .iter()
            .map(|d| match d {
                VirtioDeviceConfig::Net { mac, .. } => mac[5],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(macs, vec![0x56, 0x57]);
    }

    #[test]
    fn bad_netdevs_and_nics_are_named() {
        let err = |a: &[&str]| parse(a.iter().map(OsString::from)).unwrap_err().to_string();
        assert_eq!(
            err(&["-netdev", "tap,id=n0"]),
            "invalid value 'tap' for -netdev: unknown netdev type (supported: user)"
        );
        assert_eq!(
            err(&["-device", "virtio-net-device,netdev=nope"]),
            "invalid value 'netdev=nope' for -device: no -netdev has this id"
        );
        assert!(err(&["-netdev", "user"]).contains("id=ID is required"));
        assert!(err(&["-netdev", "user,id=n,hostfwd=tcp:5555-:22"])
            .contains("expected tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT"));
        assert!(err(&["-netdev", "user,id=n,hostfwd=udp::53-:53"]).contains("only tcp"));
        assert!(err(&["-netdev", "user,id=n,hostfwd=tcp::99999-:22"]).contains("'99999'"));
        assert!(err(&["-netdev", "user,id=n,restrict=on"]).contains("'restrict=on'"));
        assert!(err(&["-netdev", "user,id=n", "-netdev", "user,id=n"]).contains("duplicate"));
        assert!(err(&["-device", "virtio-net-device"]).contains("needs netdev=ID"));
        assert!(err(&[
            "-device",
            "virtio-net-device,netdev=n,mac=01:00:00:00:00:01"
        ])
        .contains("'mac=01:00:00:00:00:01'"));
        assert!(
            err(&["-device", "virtio-net-device,netdev=n,mac=52:54:00:12:34"]).contains("mac=")
        );
        assert!(err(&[
            "-netdev",
            "user,id=n",
            "-device",
            "virtio-net-device,netdev=n",
            "-device",
            "virtio-net-device,netdev=n"
        ])
        .contains("already attached"));
        for e in [
            err(&["-netdev", "socket,id=x"]),
            err(&["-netdev", "user,id=n,hostfwd=bogus"]),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn consoles_and_balloons_become_virtio_devices() {
        let c = run(&[
            "-device",
            "virtio-serial-device",
            "-device",
            "virtio-balloon-device",
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole",
            "-device",
            "virtio-balloon-device,deflate-on-oom=on",
        ])
        .unwrap();
        assert_eq!(
            c.virtio,
            vec![
                VirtioDeviceConfig::Console { terminal: false },
                VirtioDeviceConfig::Balloon {
                    deflate_on_oom: false
                },
                // The virtconsole is the port of the serial device just before it.
                VirtioDeviceConfig::Console { terminal: true },
                VirtioDeviceConfig::Balloon {
                    deflate_on_oom: true
                },
            ]
        );
        assert_eq!(
            run(&[
                "-device",
                "virtio-serial-device",
                "-device",
                "driver=virtconsole"
            ])
            .unwrap()
            .virtio,
            vec![VirtioDeviceConfig::Console { terminal: true }]
        );
    }

    #[test]
    fn bad_console_and_balloon_flags_are_named() {
        let err = |a: &[&str]| parse(a.iter().map(OsString::from)).unwrap_err().to_string();
        assert_eq!(
            err(&["-device", "virtconsole"]),
            "invalid value 'virtconsole' for -device: needs a -device virtio-serial-device \
             before it"
        );
        // QEMU's order: the bus first.
        assert!(
            err(&["-device", "virtconsole", "-device", "virtio-serial-device"])
                .contains("needs a -device virtio-serial-device")
        );
        assert!(err(&[
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole",
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole"
        ])
        .contains("only one virtconsole"));
        assert!(err(&[
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole,chardev=c0"
        ])
        .contains("'chardev=c0'"));
        assert!(err(&["-device", "virtio-serial-device,max_ports=4"]).contains("max_ports"));
        assert!(err(&["-device", "virtio-balloon-device,deflate-on-oom=maybe"]).contains("maybe"));
        assert!(
            err(&["-device", "virtio-balloon-device,free-page-reporting=on"])
                .contains("deflate-on-oom")
        );
        for e in [
            err(&["-device", "virtconsole"]),
            err(&["-device", "virtio-balloon-device,x=y"]),
        ] {
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
