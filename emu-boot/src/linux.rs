//! The Linux 64-bit boot protocol configurator: writes `boot_params` (the zero page), the
//! command line, the initrd, the GDT and the identity map, and returns the entry state.
//!
//! `boot_params` offsets used (Linux `arch/x86/include/uapi/asm/bootparam.h`, as documented
//! in `Documentation/arch/x86/zero-page.rst`):
//!
//! | offset | field | value |
//! | --- | --- | --- |
//! | 0x070 | `acpi_rsdp_addr` | RSDP address (read by kernels from protocol 2.14 on) |
//! | 0x0c0 / 0x0c4 / 0x0c8 | `ext_ramdisk_image` / `_size` / `ext_cmd_line_ptr` | high 32 bits |
//! | 0x1e8 | `e820_entries` | count |
//! | 0x1f1.. | setup header | copied from the bzImage, then: |
//! | 0x210 | `type_of_loader` | 0xff (undefined loader) |
//! | 0x218 / 0x21c | `ramdisk_image` / `ramdisk_size` | initrd |
//! | 0x228 | `cmd_line_ptr` | [`CMDLINE_ADDR`] |
//! | 0x2d0 | `e820_table` | up to 128 entries of 20 bytes |
//!
//! Entry (boot.rst, "64-bit boot protocol"): long mode, the kernel, zero page and command
//! line identity-mapped, CS = `__BOOT_CS` (0x10), DS = ES = SS = `__BOOT_DS` (0x18), both
//! flat, interrupts off, RSI = `boot_params`, RIP = load address + 0x200.

use crate::config::{load_initrd, write_cmdline, ConfigError, InitrdInfo};
use crate::cpu::{write_boot_gdt, write_identity_page_tables, EntryState};
use crate::e820::memory_map;
use crate::layout::{CMDLINE_ADDR, MMIO_HOLE_END, ZERO_PAGE_ADDR};
use crate::memory::GuestMemory;

/// Most e820 entries `boot_params` holds.
pub const E820_MAX_ENTRIES: usize = 128;
/// Command line limit for kernels without a setup header (Linux's COMMAND_LINE_SIZE − 1).
pub const DEFAULT_CMDLINE_MAX: usize = 2047;

/// What the configurator needs to know about a loaded Linux kernel; loaders produce it
/// ([`crate::bzimage::BzImage::linux_kernel`], [`crate::elf::LoadedElf::linux_kernel`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxKernel {
    /// The 64-bit entry point.
    pub entry64: u64,
    /// One past the memory the kernel may use while starting; the initrd goes above it.
    pub kernel_end: u64,
    /// The raw setup header (file bytes from 0x1f1) for a bzImage; `None` for an ELF
    /// vmlinux, which gets a minimal synthesized one.
    pub setup_header: Option<Vec<u8>>,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_max: usize,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u64,
}

/// The machine-side inputs of a Linux boot.
#[derive(Clone, Debug, Default)]
pub struct LinuxConfig<'a> {
    /// Kernel command line.
    pub cmdline: &'a str,
    /// The initramfs image, if any.
    pub initrd: Option<&'a [u8]>,
    /// Address of the RSDP ([`crate::acpi::write_tables`]'s result), if ACPI tables exist.
    pub rsdp: Option<u64>,
}

/// What [`configure`] did, beyond the entry state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// Registers for the boot vCPU.
    pub entry: EntryState,
    /// Where the initrd went.
    pub initrd: Option<InitrdInfo>,
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// Writes everything the 64-bit boot protocol needs and returns the entry state.
///
/// # Errors
///
/// [`ConfigError::CmdlineTooLong`], [`ConfigError::InitrdDoesNotFit`] or a memory error.
pub fn configure(
    mem: &mut dyn GuestMemory,
    kernel: &LinuxKernel,
    cfg: &LinuxConfig<'_>,
) -> Result<LinuxBoot, ConfigError> {
    let mut zp = vec![0u8; 0x1000];
    match &kernel.setup_header {
        Some(h) => put(&mut zp, 0x1f1, h),
        None => {
            // A vmlinux has no setup header; the kernel still checks the magic and version.
            put(&mut zp, 0x1fe, &0xaa55u16.to_le_bytes());
            put(&mut zp, 0x202, b"HdrS");
            put(&mut zp, 0x206, &0x020fu16.to_le_bytes());
            zp[0x211] = crate::bzimage::LOADED_HIGH;
        }
    }
    zp[0x210] = 0xff;

    let cmdline = write_cmdline(mem, cfg.cmdline, kernel.cmdline_max)?;
    put(&mut zp, 0x228, &(cmdline as u32).to_le_bytes());
    put(&mut zp, 0x0c8, &((cmdline >> 32) as u32).to_le_bytes());

    let initrd = match cfg.initrd {
        Some(data) => {
            // initrd_addr_max is the last byte it may occupy; keep it under 4 GiB too.
            let max = kernel.initrd_addr_max.saturating_add(1).min(MMIO_HOLE_END);
            let info = load_initrd(mem, data, kernel.kernel_end, max)?;
            put(&mut zp, 0x218, &(info.addr as u32).to_le_bytes());
            put(&mut zp, 0x21c, &(info.size as u32).to_le_bytes());
            put(&mut zp, 0x0c0, &((info.addr >> 32) as u32).to_le_bytes());
            put(&mut zp, 0x0c4, &((info.size >> 32) as u32).to_le_bytes());
            Some(info)
        }
        None => None,
    };

    if let Some(rsdp) = cfg.rsdp {
        put(&mut zp, 0x070, &rsdp.to_le_bytes());
    }

    let map = memory_map(&mem.ram_regions());
    let n = map.len().min(E820_MAX_ENTRIES);
    zp[0x1e8] = n as u8;
    for (i, e) in map.iter().take(n).enumerate() {
        put(&mut zp, 0x2d0 + i * 20, &e.to_bytes());
    }

    mem.write(ZERO_PAGE_ADDR, &zp)?;
    write_boot_gdt(mem)?;
    write_identity_page_tables(mem)?;
    debug_assert_eq!(cmdline, CMDLINE_ADDR);
    Ok(LinuxBoot {
        entry: EntryState::long_mode(kernel.entry64, ZERO_PAGE_ADDR),
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bzimage::{self, testimage::bzimage};
    use crate::cpu::{EntryMode, CODE64_SELECTOR, DATA_SELECTOR};
    use crate::layout::PAGE_TABLES_ADDR;
    use crate::memory::SparseMemory;

    #[test]
    fn boot_params_carry_header_cmdline_initrd_e820_and_rsdp() {
        let mut mem = SparseMemory::new(256 << 20);
        let img = bzimage(0x3000, 0x40_0000);
        let k = bzimage::load(&mut mem, &img).unwrap();
        let initrd = vec![0x5a; 0x12345];
        let boot = configure(
            &mut mem,
            &k.linux_kernel(),
            &LinuxConfig {
                cmdline: "console=ttyS0 panic=-1",
                initrd: Some(&initrd),
                rsdp: Some(0xe0000),
            },
        )
        .unwrap();
        let zp = ZERO_PAGE_ADDR;
        assert_eq!(&mem.read(zp + 0x202, 4), b"HdrS");
        assert_eq!(mem.read_u16(zp + 0x1fe), 0xaa55);
        assert_eq!(mem.read_u16(zp + 0x206), 0x020f);
        assert_eq!(mem.read(zp + 0x210, 1), vec![0xff]);
        assert_eq!(mem.read(zp + 0x1ef, 1), vec![0], "sentinel stays zero");
        assert_eq!(mem.read_u32(zp + 0x228) as u64, CMDLINE_ADDR);
        assert_eq!(mem.read_cstr(CMDLINE_ADDR), "console=ttyS0 panic=-1");
        let ird = boot.initrd.unwrap();
        assert_eq!(mem.read_u32(zp + 0x218) as u64, ird.addr);
        assert_eq!(mem.read_u32(zp + 0x21c), 0x12345);
        assert_eq!(ird.addr % 0x1000, 0);
        assert!(ird.addr >= k.kernel_end && ird.addr + ird.size <= 256 << 20);
        assert_eq!(mem.read(ird.addr, 2), vec![0x5a, 0x5a]);
        assert_eq!(mem.read_u64(zp + 0x70), 0xe0000);
        assert_eq!(mem.read(zp + 0x1e8, 1), vec![3]);
        assert_eq!(mem.read_u64(zp + 0x2d0 + 2 * 20), 0x10_0000);
        assert_eq!(mem.read_u32(zp + 0x2d0 + 20 + 16), 2, "reserved BIOS area");

        let e = boot.entry;
        assert_eq!(e.mode, EntryMode::Long64);
        assert_eq!((e.rip, e.rsi, e.cr3), (0x100_0200, zp, PAGE_TABLES_ADDR));
        assert_eq!(
            (e.cs.selector, e.data.selector),
            (CODE64_SELECTOR, DATA_SELECTOR)
        );
    }

    #[test]
    fn initrd_too_big_for_ram_is_refused() {
        let mut mem = SparseMemory::new(64 << 20);
        let k = bzimage::load(&mut mem, &bzimage(0x3000, 0x40_0000)).unwrap();
        let initrd = vec![0u8; 50 << 20];
        let err = configure(
            &mut mem,
            &k.linux_kernel(),
            &LinuxConfig {
                cmdline: "",
                initrd: Some(&initrd),
                rsdp: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::InitrdDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn cmdline_longer_than_the_kernel_accepts_is_refused() {
        let mut mem = SparseMemory::new(64 << 20);
        let k = bzimage::load(&mut mem, &bzimage(0x3000, 0x40_0000)).unwrap();
        let long = "a".repeat(3000);
        let err = configure(
            &mut mem,
            &k.linux_kernel(),
            &LinuxConfig {
                cmdline: &long,
                initrd: None,
                rsdp: None,
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::CmdlineTooLong {
                len: 3000,
                max: 2047
            }
        );
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mut mem = SparseMemory::new(512 << 20);
        let k = bzimage::load(&mut mem, &bzimage(0x3000, 0x40_0000)).unwrap();
        let mut lk = k.linux_kernel();
        lk.initrd_addr_max = 0x7ff_ffff; // 128 MiB
        let initrd = vec![1u8; 0x1000];
        let boot = configure(
            &mut mem,
            &lk,
            &LinuxConfig {
                cmdline: "",
                initrd: Some(&initrd),
                rsdp: None,
            },
        )
        .unwrap();
        assert_eq!(boot.initrd.unwrap().addr, 0x800_0000 - 0x1000);
    }
}
