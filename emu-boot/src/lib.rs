//! Kernel loaders and boot-protocol configurators for Quetzal machines.
//!
//! **Load, then configure** (`../shared/DESIGN.md`, section 5). Loaders put an image into
//! guest memory and describe what they found; configurators write the structures a boot
//! protocol hands the kernel and return the [`cpu::EntryState`] the boot vCPU starts in.
//!
//! | loader | finds | configurator | entry |
//! | --- | --- | --- | --- |
//! | [`bzimage::load`] | [`bzimage::BzImage`] | [`linux::configure`] | 64-bit, RSI = zero page |
//! | [`elf::load`] with a PVH note | [`elf::LoadedElf`] | [`pvh::configure`] | 32-bit, EBX = start_info |
//! | [`elf::load`] without one | [`elf::LoadedElf`] | [`linux::configure`] | 64-bit at `e_entry` |
//! | [`multiboot::load`] | [`multiboot::LoadedMultiboot`] | [`multiboot::configure`] | 32-bit, EAX = 0x2BADB002, EBX = info |
//!
//! Protocol-independent configurators: [`acpi::write_tables`] (RSDP, XSDT, FADT, FACS,
//! MADT, HPET, DSDT), [`config::write_cmdline`], [`config::load_initrd`],
//! [`e820::memory_map`]. Every fixed address is in [`layout`]; guest memory is reached
//! through the [`memory::GuestMemory`] trait.
//!
//! [`boot`] strings the steps together for the common case:
//!
//! ```
//! use emu_boot::{boot, BootRequest, acpi::AcpiConfig, memory::SparseMemory};
//! # let kernel = emu_boot::doc_example_kernel();
//! let mut ram = SparseMemory::new(256 << 20); // emu-vmm: its own GuestMemory impl
//! let out = boot(&mut ram, &BootRequest {
//!     kernel: &kernel,
//!     initrd: None,
//!     cmdline: "console=ttyS0",
//!     acpi: Some(AcpiConfig { cpus: 2, ..Default::default() }),
//! })?;
//! // Apply out.entry to the boot vCPU (see emu_boot::cpu for the exact recipe).
//! assert_eq!(out.entry.rip, 0x10_0020);
//! # Ok::<(), emu_boot::Error>(())
//! ```

pub mod acpi;
pub mod bzimage;
pub mod config;
pub mod cpu;
pub mod e820;
pub mod elf;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod multiboot;
pub mod pvh;

use config::{ConfigError, InitrdInfo};
use cpu::EntryState;
use memory::GuestMemory;

/// Any failure of [`boot`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The kernel is none of bzImage, multiboot, ELF.
    #[error("kernel image format not recognised (not a bzImage, multiboot kernel or ELF file)")]
    UnknownFormat,
    /// The bzImage loader refused the kernel.
    #[error(transparent)]
    BzImage(#[from] bzimage::Error),
    /// The ELF loader refused the kernel.
    #[error(transparent)]
    Elf(#[from] elf::Error),
    /// The multiboot loader refused the kernel.
    #[error(transparent)]
    Multiboot(#[from] multiboot::Error),
    /// A configurator failed (command line, initrd, ACPI).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A kernel image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// Linux bzImage.
    BzImage,
    /// A file with a valid multiboot v1 header (ELF or a.out kludge).
    Multiboot,
    /// Any other ELF file (vmlinux, PVH kernels).
    Elf,
}

/// Guesses the format: a bzImage header wins, then a multiboot header, then ELF.
pub fn detect(image: &[u8]) -> Option<KernelFormat> {
    if bzimage::is_bzimage(image) {
        Some(KernelFormat::BzImage)
    } else if multiboot::is_multiboot(image) {
        Some(KernelFormat::Multiboot)
    } else if elf::is_elf(image) {
        Some(KernelFormat::Elf)
    } else {
        None
    }
}

/// The boot protocol [`boot`] used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Linux 64-bit boot protocol (bzImage, or vmlinux without a PVH note).
    Linux64,
    /// PVH (ELF with `XEN_ELFNOTE_PHYS32_ENTRY`).
    Pvh,
    /// Multiboot v1.
    Multiboot,
}

/// What to boot.
#[derive(Clone, Debug, Default)]
pub struct BootRequest<'a> {
    /// The kernel image file.
    pub kernel: &'a [u8],
    /// An initrd (multiboot: module 0).
    pub initrd: Option<&'a [u8]>,
    /// The command line.
    pub cmdline: &'a str,
    /// ACPI tables to write, or `None` for none.
    pub acpi: Option<acpi::AcpiConfig>,
}

/// What [`boot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootOutcome {
    /// The protocol used.
    pub protocol: Protocol,
    /// The boot vCPU's state.
    pub entry: EntryState,
    /// One past the kernel's memory.
    pub kernel_end: u64,
    /// Where the initrd went.
    pub initrd: Option<InitrdInfo>,
    /// RSDP address, when ACPI tables were written.
    pub rsdp: Option<u64>,
}

/// Detects the format, loads the kernel, writes ACPI tables and the protocol's
/// structures, and returns the entry state.
///
/// # Errors
///
/// [`Error::UnknownFormat`] or the failing loader's or configurator's error.
pub fn boot(mem: &mut dyn GuestMemory, req: &BootRequest<'_>) -> Result<BootOutcome, Error> {
    let format = detect(req.kernel).ok_or(Error::UnknownFormat)?;
    let rsdp = match &req.acpi {
        Some(cfg) => Some(acpi::write_tables(mem, cfg)?),
        None => None,
    };
    let linux_cfg = linux::LinuxConfig {
        cmdline: req.cmdline,
        initrd: req.initrd,
        rsdp,
    };
    let (protocol, entry, kernel_end, initrd) = match format {
        KernelFormat::BzImage => {
            let k = bzimage::load(mem, req.kernel)?;
            let b = linux::configure(mem, &k.linux_kernel(), &linux_cfg)?;
            (Protocol::Linux64, b.entry, k.kernel_end, b.initrd)
        }
        KernelFormat::Elf => {
            let k = elf::load(mem, req.kernel)?;
            match k.pvh_entry {
                Some(e) => {
                    let cfg = pvh::PvhConfig {
                        cmdline: req.cmdline,
                        initrd: req.initrd,
                        rsdp,
                    };
                    let b = pvh::configure(mem, e, k.kernel_end, &cfg)?;
                    (Protocol::Pvh, b.entry, k.kernel_end, b.initrd)
                }
                None => {
                    let b = linux::configure(mem, &k.linux_kernel(), &linux_cfg)?;
                    (Protocol::Linux64, b.entry, k.kernel_end, b.initrd)
                }
            }
        }
        KernelFormat::Multiboot => {
            let k = multiboot::load(mem, req.kernel)?;
            let modules: Vec<multiboot::Module<'_>> = req
                .initrd
                .map(|data| multiboot::Module {
                    data,
                    cmdline: "initrd",
                })
                .into_iter()
                .collect();
            let cfg = multiboot::MultibootConfig {
                cmdline: req.cmdline,
                modules: &modules,
            };
            let b = multiboot::configure(mem, &k, &cfg)?;
            (
                Protocol::Multiboot,
                b.entry,
                k.kernel_end,
                b.modules.first().copied(),
            )
        }
    };
    Ok(BootOutcome {
        protocol,
        entry,
        kernel_end,
        initrd,
        rsdp,
    })
}

/// A tiny multiboot a.out kernel (HLT at 0x100020), for the crate-level example.
#[doc(hidden)]
pub fn doc_example_kernel() -> Vec<u8> {
    let (base, flags) = (0x10_0000u32, 0x1_0002u32);
    let mut img = Vec::new();
    for w in [
        multiboot::HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(multiboot::HEADER_MAGIC)
            .wrapping_sub(flags),
        base,
        base,
        0,
        0,
        base + 32,
    ] {
        img.extend_from_slice(&w.to_le_bytes());
    }
    img.push(0xf4);
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::SparseMemory;

    #[test]
    fn detect_tells_formats_apart() {
        let bz = bzimage::testimage::bzimage(0x1000, 0x10_0000);
        assert_eq!(detect(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect(&doc_example_kernel()), Some(KernelFormat::Multiboot));
        let e = elf::testimage::elf64(
            0x100_0000,
            &[elf::testimage::Seg {
                paddr: 0x100_0000,
                data: vec![1],
                memsz: 1,
            }],
            None,
            &[],
        );
        assert_eq!(detect(&e), Some(KernelFormat::Elf));
        assert_eq!(detect(b"garbage"), None);
    }

    #[test]
    fn boot_runs_each_protocol_end_to_end() {
        let acpi = Some(acpi::AcpiConfig {
            cpus: 2,
            ..Default::default()
        });
        let initrd = [3u8; 64];

        let bz = bzimage::testimage::bzimage(0x1000, 0x10_0000);
        let mut mem = SparseMemory::new(64 << 20);
        let out = boot(
            &mut mem,
            &BootRequest {
                kernel: &bz,
                initrd: Some(&initrd),
                cmdline: "quiet",
                acpi: acpi.clone(),
            },
        )
        .unwrap();
        assert_eq!(out.protocol, Protocol::Linux64);
        assert_eq!(
            (out.entry.rip, out.entry.rsi),
            (0x100_0200, layout::ZERO_PAGE_ADDR)
        );
        assert_eq!(mem.read_u64(layout::ZERO_PAGE_ADDR + 0x70), 0xe0000);
        assert!(out.initrd.is_some());

        let seg = elf::testimage::Seg {
            paddr: 0x100_0000,
            data: vec![0x90; 16],
            memsz: 16,
        };
        let pvh_img = elf::testimage::elf64(
            0x100_0000,
            std::slice::from_ref(&seg),
            Some(0x100_0008),
            &[],
        );
        let mut mem = SparseMemory::new(64 << 20);
        let out = boot(
            &mut mem,
            &BootRequest {
                kernel: &pvh_img,
                initrd: Some(&initrd),
                cmdline: "",
                acpi: acpi.clone(),
            },
        )
        .unwrap();
        assert_eq!(out.protocol, Protocol::Pvh);
        assert_eq!(
            (out.entry.rip, out.entry.rbx),
            (0x100_0008, layout::BOOT_INFO_ADDR)
        );
        assert_eq!(mem.read_u64(layout::BOOT_INFO_ADDR + 0x20), 0xe0000);

        let vmlinux = elf::testimage::elf64(0x100_0000, &[seg], None, &[]);
        let mut mem = SparseMemory::new(64 << 20);
        let out = boot(
            &mut mem,
            &BootRequest {
                kernel: &vmlinux,
                cmdline: "",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(out.protocol, Protocol::Linux64);
        assert_eq!(out.entry.rip, 0x100_0000);
        assert_eq!(&mem.read(layout::ZERO_PAGE_ADDR + 0x202, 4), b"HdrS");

        let mut mem = SparseMemory::new(64 << 20);
        let out = boot(
            &mut mem,
            &BootRequest {
                kernel: &doc_example_kernel(),
                initrd: Some(&initrd),
                cmdline: "",
                acpi,
            },
        )
        .unwrap();
        assert_eq!(out.protocol, Protocol::Multiboot);
        assert_eq!(out.entry.rax, 0x2bad_b002);
        assert_eq!(mem.read(out.initrd.unwrap().addr, 1), vec![3]);
    }

    #[test]
    fn boot_reports_clear_errors() {
        let mut mem = SparseMemory::new(64 << 20);
        let err = boot(
            &mut mem,
            &BootRequest {
                kernel: &[0u8; 10000],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err, Error::UnknownFormat);
        let bz = bzimage::testimage::bzimage(0x1000, 0x10_0000);
        let err = boot(
            &mut mem,
            &BootRequest {
                kernel: &bz[..0x800],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::BzImage(bzimage::Error::Truncated { .. })),
            "{err}"
        );
    }
}
