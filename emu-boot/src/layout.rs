//! The guest physical memory layout every loader and configurator in this crate agrees on.
//!
//! ```text
//! 0x0000_0000 ┬ real-mode IVT / BDA (left zero: no BIOS)
//! 0x0000_0500 ┼ GDT (BOOT_GDT_ADDR, 5 descriptors)
//! 0x0000_6000 ┼ PVH hvm_start_info or multiboot_info page (BOOT_INFO_ADDR)
//! 0x0000_7000 ┼ Linux boot_params, the "zero page" (ZERO_PAGE_ADDR)
//! 0x0000_8000 ┼ boot stack, grows down from BOOT_STACK_TOP (0x8ff0)
//! 0x0000_9000 ┼ identity-mapping page tables: PML4, PDPT, 4 page directories (to 0xf000)
//! 0x0002_0000 ┼ kernel command line (CMDLINE_ADDR, at most CMDLINE_MAX bytes with the NUL)
//! 0x0003_0000 ┼ end of the boot data area (BOOT_DATA_END)
//! 0x0009_fc00 ┼ e820 reserved from here: EBDA, VGA hole, option ROMs, BIOS area
//! 0x000e_0000 ┼ ACPI tables (ACPI_TABLES_ADDR; the RSDP is the first, in the BIOS search area)
//! 0x0010_0000 ┼ RAM again (1 MiB): kernels load here or at their preferred address
//!      ...    │ initrd / modules, placed as high as the protocol allows
//! 0xc000_0000 ┼ MMIO hole (MMIO_HOLE_START) when RAM is larger than 3 GiB
//! 0xfec0_0000 │   IOAPIC, 0xfed0_0000 HPET, 0xfee0_0000 local APICs
//! 0x1_0000_0000 RAM above 4 GiB (the rest of it)
//! ```
//!
//! Every address here is a fixed contract with `emu-vmm` (which maps RAM with
//! [`ram_regions`]) and `emu-devices` (which decodes the MMIO and I/O addresses).

/// Start of the flat GDT written by [`crate::cpu::write_boot_gdt`].
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Page holding the PVH `hvm_start_info` or the multiboot `multiboot_info` and their
/// memory maps and module lists.
pub const BOOT_INFO_ADDR: u64 = 0x6000;
/// Linux `boot_params` (4 KiB).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer handed to every protocol (16-byte aligned, just under the page
/// tables). No protocol requires one; it only gives a kernel that pushes early a valid
/// place to do so.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// PML4 of the identity map; the PDPT follows at +0x1000 and the page directories at
/// +0x2000.
pub const PAGE_TABLES_ADDR: u64 = 0x9000;
/// Bytes of the identity map's tables: PML4, PDPT, one directory per GiB.
pub const PAGE_TABLES_SIZE: u64 = 0x1000 * (2 + IDENTITY_MAP_GIB);
/// GiB of physical address space identity-mapped (2 MiB pages) for 64-bit entry.
pub const IDENTITY_MAP_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Most bytes of command line the area holds, NUL included.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// End of the low area that holds only boot data: kernels may not load below this.
pub const BOOT_DATA_END: u64 = 0x3_0000;
/// Start of the e820 hole below 1 MiB (EBDA, VGA, ROM area): 639 KiB of low RAM.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of the ACPI tables; the RSDP is the first thing here.
pub const ACPI_TABLES_ADDR: u64 = 0xe_0000;
/// End (exclusive) of the area the ACPI tables may use.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// 1 MiB: where RAM resumes and where non-relocatable kernels load.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB; RAM beyond this much moves above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole: 4 GiB.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// IOAPIC MMIO base (as the MADT reports it).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// HPET MMIO base (as the HPET table reports it).
pub const HPET_ADDR: u64 = 0xfed0_0000;
/// Local APIC MMIO base (as the MADT reports it).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// One range of guest RAM: `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest physical start.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `[addr, addr + len)` lies inside this region.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr.checked_add(len).is_some_and(|e| e <= self.end())
    }
}

/// The RAM regions of a machine with `mem_size` bytes of RAM: everything from 0 up to the
/// MMIO hole, the rest from 4 GiB on. `emu-vmm` maps RAM exactly like this.
pub fn ram_regions(mem_size: u64) -> Vec<RamRegion> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut regions = vec![RamRegion { base: 0, size: low }];
    if mem_size > MMIO_HOLE_START {
        regions.push(RamRegion {
            base: MMIO_HOLE_END,
            size: mem_size - MMIO_HOLE_START,
        });
    }
    regions
}

// The fixed areas must not overlap; checked at compile time.
const _: () = {
    assert!(BOOT_GDT_ADDR + 5 * 8 <= BOOT_INFO_ADDR);
    assert!(BOOT_INFO_ADDR + 0x1000 <= ZERO_PAGE_ADDR);
    assert!(ZERO_PAGE_ADDR + 0x1000 <= BOOT_STACK_TOP);
    assert!(BOOT_STACK_TOP <= PAGE_TABLES_ADDR);
    assert!(PAGE_TABLES_ADDR + PAGE_TABLES_SIZE <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= BOOT_DATA_END);
    assert!(BOOT_DATA_END <= EBDA_START);
    assert!(EBDA_START <= ACPI_TABLES_ADDR && ACPI_TABLES_END == HIGH_MEMORY_START);
};

/// Whether `[addr, addr + len)` lies entirely inside one of `regions`.
pub fn in_ram(regions: &[RamRegion], addr: u64, len: u64) -> bool {
    regions.iter().any(|r| r.contains(addr, len))
}

/// Rounds `v` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Rounds `v` down to a multiple of `align` (a power of two).
pub(crate) fn align_down(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    v & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_machine_has_one_region() {
        assert_eq!(
            ram_regions(256 << 20),
            vec![RamRegion {
                base: 0,
                size: 256 << 20
            }]
        );
    }

    #[test]
    fn large_machine_splits_around_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r[0],
            RamRegion {
                base: 0,
                size: 3 << 30
            }
        );
        assert_eq!(
            r[1],
            RamRegion {
                base: 4 << 30,
                size: 1 << 30
            }
        );
    }
}
