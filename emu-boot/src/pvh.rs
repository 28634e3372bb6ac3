//! The PVH boot protocol configurator (Xen's `hvm_start_info`, which Linux and other
//! kernels also accept on KVM-style hypervisors).
//!
//! In the page at [`BOOT_INFO_ADDR`]:
//!
//! | address | contents |
//! | --- | --- |
//! | 0x6000 | `hvm_start_info` v1: magic 0x336ec578, version 1, flags 0, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr, memmap_entries |
//! | 0x6040 | one `hvm_modlist_entry` (paddr, size, cmdline_paddr 0, reserved) for the initrd |
//! | 0x6100 | `hvm_memmap_table_entry` array (addr, size, type, reserved: 24 bytes each), the e820 map |
//!
//! Entry (Xen's `arch-x86/hvm/start_info.h`): 32-bit protected mode, paging off, flat
//! CS (r/x) and DS/ES/SS (r/w), EBX = `hvm_start_info` address, interrupts off. (The
//! protocol also asks for TR to be a 32-bit TSS with base 0 and limit 0x67; Linux never
//! relies on it and the integrator may leave TR as it is.)

use crate::config::{load_initrd, write_cmdline, ConfigError, InitrdInfo};
use crate::cpu::{write_boot_gdt, EntryState};
use crate::e820::memory_map;
use crate::layout::{BOOT_INFO_ADDR, MMIO_HOLE_END};
use crate::memory::GuestMemory;

/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Address of the module list.
pub const MODLIST_ADDR: u64 = BOOT_INFO_ADDR + 0x40;
/// Address of the memory map.
pub const MEMMAP_ADDR: u64 = BOOT_INFO_ADDR + 0x100;
/// Most memory map entries the page holds.
const MEMMAP_MAX: usize = (0x1000 - 0x100) / 24;

/// The machine-side inputs of a PVH boot.
#[derive(Clone, Debug, Default)]
pub struct PvhConfig<'a> {
    /// Command line.
    pub cmdline: &'a str,
    /// Initrd, passed as module 0.
    pub initrd: Option<&'a [u8]>,
    /// RSDP address, if ACPI tables exist.
    pub rsdp: Option<u64>,
}

/// What [`configure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhBoot {
    /// Registers for the boot vCPU.
    pub entry: EntryState,
    /// Where the initrd went.
    pub initrd: Option<InitrdInfo>,
}

/// Writes `hvm_start_info` and friends for a kernel with PVH entry point `entry` that
/// occupies memory up to `kernel_end`, and returns the entry state.
///
/// # Errors
///
/// Command line or initrd errors, or a memory error.
pub fn configure(
    mem: &mut dyn GuestMemory,
    entry: u64,
    kernel_end: u64,
    cfg: &PvhConfig<'_>,
) -> Result<PvhBoot, ConfigError> {
    let cmdline = write_cmdline(mem, cfg.cmdline, crate::linux::DEFAULT_CMDLINE_MAX)?;
    let initrd = match cfg.initrd {
        Some(data) => Some(load_initrd(mem, data, kernel_end, MMIO_HOLE_END)?),
        None => None,
    };
    let map = memory_map(&mem.ram_regions());
    let n = map.len().min(MEMMAP_MAX);

    let mut page = vec![0u8; 0x1000];
    let mut put = |off: u64, v: &[u8]| {
        let o = (off - BOOT_INFO_ADDR) as usize;
        page[o..o + v.len()].copy_from_slice(v);
    };
    put(BOOT_INFO_ADDR, &HVM_START_MAGIC.to_le_bytes());
    put(BOOT_INFO_ADDR + 4, &1u32.to_le_bytes());
    if let Some(i) = initrd {
        put(BOOT_INFO_ADDR + 0x0c, &1u32.to_le_bytes());
        put(BOOT_INFO_ADDR + 0x10, &MODLIST_ADDR.to_le_bytes());
        put(MODLIST_ADDR, &i.addr.to_le_bytes());
        put(MODLIST_ADDR + 8, &i.size.to_le_bytes());
    }
    put(BOOT_INFO_ADDR + 0x18, &cmdline.to_le_bytes());
    put(BOOT_INFO_ADDR + 0x20, &cfg.rsdp.unwrap_or(0).to_le_bytes());
    put(BOOT_INFO_ADDR + 0x28, &MEMMAP_ADDR.to_le_bytes());
    put(BOOT_INFO_ADDR + 0x30, &(n as u32).to_le_bytes());
    for (i, e) in map.iter().take(n).enumerate() {
        // Same as e820 plus 4 reserved bytes.
        put(MEMMAP_ADDR + i as u64 * 24, &e.to_bytes());
    }
    mem.write(BOOT_INFO_ADDR, &page)?;
    write_boot_gdt(mem)?;
    Ok(PvhBoot {
        entry: EntryState::protected_mode(entry, 0, BOOT_INFO_ADDR),
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{EntryMode, CODE32_SELECTOR};
    use crate::layout::CMDLINE_ADDR;
    use crate::memory::SparseMemory;

    #[test]
    fn start_info_describes_cmdline_module_memmap_and_rsdp() {
        let mut mem = SparseMemory::new(128 << 20);
        let initrd = [7u8; 100];
        let boot = configure(
            &mut mem,
            0x100_0040,
            0x200_0000,
            &PvhConfig {
                cmdline: "console=hvc0",
                initrd: Some(&initrd),
                rsdp: Some(0xe0000),
            },
        )
        .unwrap();
        let si = BOOT_INFO_ADDR;
        assert_eq!(mem.read_u32(si), HVM_START_MAGIC);
        assert_eq!(mem.read_u32(si + 4), 1);
        assert_eq!(mem.read_u32(si + 0xc), 1);
        assert_eq!(mem.read_u64(si + 0x18), CMDLINE_ADDR);
        assert_eq!(mem.read_cstr(CMDLINE_ADDR), "console=hvc0");
        assert_eq!(mem.read_u64(si + 0x20), 0xe0000);
        let m = mem.read_u64(si + 0x10);
        let ird = boot.initrd.unwrap();
        assert_eq!((mem.read_u64(m), mem.read_u64(m + 8)), (ird.addr, 100));
        assert_eq!(mem.read(ird.addr, 1), vec![7]);
        assert_eq!(mem.read_u32(si + 0x30), 3);
        let mm = mem.read_u64(si + 0x28);
        assert_eq!(mem.read_u64(mm + 2 * 24), 0x10_0000);
        assert_eq!(mem.read_u32(mm + 2 * 24 + 16), 1);

        let e = boot.entry;
        assert_eq!(e.mode, EntryMode::Protected32);
        assert_eq!((e.rip, e.rbx, e.cr0 & 0x8000_0001), (0x100_0040, si, 1));
        assert_eq!(e.cs.selector, CODE32_SELECTOR);
    }
}
