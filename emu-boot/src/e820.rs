//! The physical memory map handed to every kernel, in e820 form.
//!
//! Linux gets it in `boot_params.e820_table`, PVH kernels as the `hvm_memmap_table`, and
//! multiboot kernels as the `mmap` buffer; the types are the same in all three. The map
//! is: RAM `[0, 0x9fc00)` (639 KiB of conventional memory), reserved
//! `[0x9fc00, 0x100000)` (where a PC has its EBDA, VGA window and BIOS; our ACPI tables
//! live there), then every RAM region from 1 MiB up as RAM. The MMIO hole and device
//! windows are simply absent, as on PCs.

use crate::layout::{RamRegion, EBDA_START, HIGH_MEMORY_START};

/// e820 / multiboot / PVH memory type: usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved: the kernel must not use it.
pub const E820_RESERVED: u32 = 2;
/// ACPI reclaimable (unused by this crate: our tables sit in the reserved BIOS area).
pub const E820_ACPI: u32 = 3;

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// One of [`E820_RAM`], [`E820_RESERVED`], [`E820_ACPI`].
    pub kind: u32,
}

impl E820Entry {
    /// The 20-byte packed form of `boot_params.e820_table` and the PVH/multiboot maps.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.kind.to_le_bytes());
        b
    }
}

/// Builds the memory map for a machine with these RAM regions.
pub fn memory_map(regions: &[RamRegion]) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for r in regions {
        // Conventional memory below the EBDA.
        if r.base < EBDA_START {
            let end = r.end().min(EBDA_START);
            map.push(E820Entry {
                addr: r.base,
                size: end - r.base,
                kind: E820_RAM,
            });
        }
        // RAM from 1 MiB up.
        if r.end() > HIGH_MEMORY_START {
            let start = r.base.max(HIGH_MEMORY_START);
            map.push(E820Entry {
                addr: start,
                size: r.end() - start,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIGH_MEMORY_START - EBDA_START,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_regions;

    #[test]
    fn map_of_a_small_machine() {
        let map = memory_map(&ram_regions(128 << 20));
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (128 << 20) - 0x100000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn map_of_a_large_machine_skips_the_hole() {
        let map = memory_map(&ram_regions(6 << 30));
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, 0xc000_0000);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 << 30,
                size: 3 << 30,
                kind: E820_RAM
            }
        );
    }
}
