//! The typed description of a machine: what `quetzal`'s flags (or an embedding program)
//! ask for, checked before anything is built.

use std::path::PathBuf;

pub use emu_net::{HostForward, UserNetConfig};

/// The MAC address of the first NIC unless one is given (QEMU's: 52:54:00:12:34:56).
pub const DEFAULT_MAC: [u8; 6] = emu_devices::virtio::net::DEFAULT_MAC;

/// The most vCPUs a machine runs (each is a host thread; the IOAPIC and xAPIC address
/// up to 255, the limit is a sanity bound for hosts with a handful of cores).
pub const MAX_CPUS: u32 = 32;
/// Smallest guest memory the default machine accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory the default machine accepts.
pub const MAX_MEMORY: u64 = 64 << 30;
/// Most VirtIO devices the machine has room for: each gets its own IOAPIC pin, and the
/// pins above the ISA range (GSIs 16..=23) number eight.
pub const MAX_VIRTIO_DEVICES: usize = 8;

/// Where the guest's first serial port goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialBackend {
    /// The host terminal (raw mode when it is a terminal, with `Ctrl-A` escapes).
    Stdio,
    /// Appended to a file; no input.
    File(PathBuf),
    /// Not connected (the UART still exists; output is dropped).
    None,
}

/// What to trace (QEMU's `-d` items we support).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFlags {
    /// Every translated block (`-d in_asm`).
    pub in_asm: bool,
    /// Interrupts and exceptions (`-d int`).
    pub int: bool,
    /// Page faults (`-d mmu`).
    pub mmu: bool,
    /// Guest errors: unimplemented instructions, accesses to nothing (`-d guest_errors`).
    pub guest_errors: bool,
}

/// A VirtIO device, attached through its own virtio-mmio transport (described to the
/// guest in the ACPI DSDT, so the stock `virtio_mmio` driver finds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtioDeviceConfig {
    /// virtio-blk over a raw disk image (QEMU's `-drive file=PATH,format=raw,if=virtio`).
    Block {
        /// The image file; it must exist (its size, in whole 512-byte sectors, is the
        /// disk's capacity).
        path: PathBuf,
        /// Open the image read-only and tell the guest the disk is read-only.
        read_only: bool,
    },
    /// virtio-rng fed from the host's random source (`-device virtio-rng-device`).
    Rng,
    /// virtio-net on user-mode networking, QEMU's `-netdev user,id=ID[,hostfwd=...]` with
    /// `-device virtio-net-device,netdev=ID[,mac=...]`: no root, no TAP (see `emu_net`).
    Net {
        /// The MAC address the guest sees.
        mac: [u8; 6],
        /// The virtual network: QEMU's addresses and the forwarded ports.
        user: UserNetConfig,
    },
    /// virtio-console with one port, `hvc0` in the guest (`-device virtio-serial-device`,
    /// plus `-device virtconsole` for `terminal`).
    Console {
        /// The port is on the host terminal: its output goes where the serial port's does
        /// when that is [`SerialBackend::Stdio`] (the writer given to `Machine::new`), else
        /// to standard output, and `Machine::console_input` feeds it. Without it the port
        /// exists but is not connected (output dropped, no input).
        terminal: bool,
    },
    /// virtio-balloon (`-device virtio-balloon-device[,deflate-on-oom=on]`): the host sets
    /// a target through `Machine::balloon` and the guest's pages are released on the host.
    Balloon {
        /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM (the guest may deflate under memory
        /// pressure).
        deflate_on_oom: bool,
    },
}

/// A machine to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Kernel image (bzImage, ELF vmlinux with or without a PVH note, or multiboot).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// First serial port.
    pub serial: SerialBackend,
    /// Exit instead of rebooting when the guest resets.
    pub no_reboot: bool,
    /// Trace switches.
    pub trace: TraceFlags,
    /// Where trace output goes (`-D`); standard error when unset.
    pub trace_file: Option<PathBuf>,
    /// VirtIO devices, in order: device `i` is the guest's `i`-th virtio-mmio transport
    /// (so the first disk in this list is `/dev/vda`).
    pub virtio: Vec<VirtioDeviceConfig>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            memory: 512 << 20,
            cpus: 1,
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            serial: SerialBackend::Stdio,
            no_reboot: false,
            trace: TraceFlags::default(),
            trace_file: None,
            virtio: Vec::new(),
        }
    }
}

/// A configuration the machine cannot be built from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A memory size that does not parse.
    #[error("invalid memory size '{0}' (examples: 512, 512M, 2G)")]
    BadMemorySize(String),
    /// Memory outside what the machine supports.
    #[error("memory size {got} MiB is outside the supported range {min}..={max} MiB")]
    MemoryOutOfRange {
        /// Requested MiB.
        got: u64,
        /// Smallest MiB.
        min: u64,
        /// Largest MiB.
        max: u64,
    },
    /// More vCPUs than this release runs.
    #[error("{got} CPUs requested, but this release runs at most {max}")]
    TooManyCpus {
        /// Requested.
        got: u32,
        /// Supported.
        max: u32,
    },
    /// Zero vCPUs.
    #[error("at least one CPU is needed")]
    NoCpus,
    /// No kernel to boot.
    #[error("no kernel given (use -kernel FILE)")]
    NoKernel,
    /// More VirtIO devices than the machine has interrupt pins for.
    #[error("{got} VirtIO devices requested, but the machine has room for at most {max}")]
    TooManyVirtioDevices {
        /// Requested.
        got: usize,
        /// Supported.
        max: usize,
    },
}

/// Parses a memory size as QEMU's `-m` does: a plain number is MiB; suffixes K, M, G, T
/// (case-insensitive, optionally followed by `B` or `iB`) are binary units.
///
/// # Errors
///
/// [`ConfigError::BadMemorySize`] for anything else, zero, or an overflow.
pub fn parse_memory_size(text: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadMemorySize(text.to_string());
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let value: u64 = number.parse().map_err(|_| bad())?;
    let suffix = suffix.to_ascii_lowercase();
    let suffix = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(&suffix);
    let shift = match suffix {
        "" | "m" => 20,
        "k" => 10,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    if value == 0 || value.leading_zeros() < shift {
        return Err(bad());
    }
    Ok(value << shift)
}

impl MachineConfig {
    /// Checks the configuration against what the machine supports.
    ///
    /// # Errors
    ///
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&self.memory) {
            return Err(ConfigError::MemoryOutOfRange {
                got: self.memory >> 20,
                min: MIN_MEMORY >> 20,
                max: MAX_MEMORY >> 20,
            });
        }
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.cpus > MAX_CPUS {
            return Err(ConfigError::TooManyCpus {
                got: self.cpus,
                max: MAX_CPUS,
            });
        }
        if self.kernel.is_none() {
            return Err(ConfigError::NoKernel);
        }
        if self.virtio.len() > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyVirtioDevices {
                got: self.virtio.len(),
                max: MAX_VIRTIO_DEVICES,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_like_qemu() {
        assert_eq!(parse_memory_size("512"), Ok(512 << 20));
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("512m"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2G"), Ok(2 << 30));
        assert_eq!(parse_memory_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory_size("65536K"), Ok(64 << 20));
        for bad in ["", "M", "0", "12X", "-5", "1.5G", "99999999999999999999T"] {
            assert!(parse_memory_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = MachineConfig {
            kernel: Some("bzImage".into()),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let many = MachineConfig {
            cpus: MAX_CPUS + 1,
            ..ok.clone()
        };
        assert_eq!(
            many.validate(),
            Err(ConfigError::TooManyCpus {
                got: MAX_CPUS + 1,
                max: MAX_CPUS
            })
        );
        let all = MachineConfig {
            cpus: MAX_CPUS,
            ..ok.clone()
        };
        assert_eq!(all.validate(), Ok(()));
        let tiny = MachineConfig {
            memory: 1 << 20,
            ..ok.clone()
        };
        assert!(matches!(
            tiny.validate(),
            Err(ConfigError::MemoryOutOfRange { .. })
        ));
        let crowded = MachineConfig {
            virtio: vec![VirtioDeviceConfig::Rng; MAX_VIRTIO_DEVICES + 1],
            ..ok.clone()
        };
        assert_eq!(
            crowded.validate(),
            Err(ConfigError::TooManyVirtioDevices { got: 9, max: 8 })
        );
        let full = MachineConfig {
            virtio: vec![VirtioDeviceConfig::Rng; MAX_VIRTIO_DEVICES],
            ..ok.clone()
        };
        assert_eq!(full.validate(), Ok(()));
        let none = MachineConfig { kernel: None, ..ok };
        assert_eq!(none.validate(), Err(ConfigError::NoKernel));
    }
}
