//! Guest physical RAM, backed by `vm-memory`'s `GuestMemoryMmap`.

use std::sync::Arc;

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::{PAGE_MASK, PAGE_SIZE};

/// Errors from changing the RAM layout.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// The address or size is not a multiple of the 4 KiB page size, or the size is zero.
    #[error("RAM range {addr:#x}+{size:#x} is not page aligned or is empty")]
    Unaligned {
        /// Requested guest physical address.
        addr: u64,
        /// Requested size in bytes.
        size: u64,
    },
    /// The range would wrap around the end of the physical address space.
    #[error("RAM range {addr:#x}+{size:#x} wraps the address space")]
    Overflow {
        /// Requested guest physical address.
        addr: u64,
        /// Requested size in bytes.
        size: u64,
    },
    /// The range overlaps RAM that is already mapped.
    #[error("RAM range {addr:#x}+{size:#x} overlaps mapped RAM")]
    Overlap {
        /// Requested guest physical address.
        addr: u64,
        /// Requested size in bytes.
        size: u64,
    },
    /// The host could not allocate the memory.
    #[error("cannot allocate guest RAM: {0}")]
    Alloc(String),
}

/// Guest physical RAM: a set of non-overlapping, page-aligned regions.
///
/// Regions live in `Arc`s inside the `vm-memory` collection, so host pointers into a region
/// stay valid for as long as this `GuestRam` (or a clone of its collection) is alive.
#[derive(Clone, Debug, Default)]
pub struct GuestRam {
    memory: Option<GuestMemoryMmap>,
    /// `(guest start, length, host address of the start)` of every region, in address
    /// order: page walks look up a host page for every table they read, and a scan of
    /// one or two entries is much cheaper than `vm-memory`'s general lookup.
    spans: Vec<(u64, u64, usize)>,
}

impl GuestRam {
    /// Creates RAM with no regions: every physical address is unassigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a zero-filled RAM region at guest physical address `addr`.
    ///
    /// # Errors
    ///
    /// Fails if the range is not page aligned, wraps, overlaps existing RAM, or cannot be
    /// allocated.
    pub fn add_region(&mut self, addr: u64, size: u64) -> Result<(), RamError> {
        if size == 0 || addr & !PAGE_MASK != 0 || size & !PAGE_MASK != 0 {
            return Err(RamError::Unaligned { addr, size });
        }
        let end = addr
            .checked_add(size)
            .ok_or(RamError::Overflow { addr, size })?;
        let overlaps = self.memory.iter().flat_map(|m| m.iter()).any(|r| {
            let start = r.start_addr().0;
            start < end && addr < start + r.len()
        });
        if overlaps {
            return Err(RamError::Overlap { addr, size });
        }
        let size_usize = usize::try_from(size).map_err(|_| RamError::Overflow { addr, size })?;
        let region = GuestRegionMmap::from_range(GuestAddress(addr), size_usize, None)
            .map_err(|e| RamError::Alloc(e.to_string()))?;
        let memory = match &self.memory {
            None => GuestMemoryMmap::from_regions(vec![region]),
            Some(m) => m.insert_region(Arc::new(region)),
        }
        .map_err(|e| RamError::Alloc(e.to_string()))?;
        let mut spans = Vec::new();
        for r in memory.iter() {
            let start = r.start_addr();
            let host = memory
                .get_host_address(start)
                .map_err(|e| RamError::Alloc(e.to_string()))?;
            spans.push((start.0, r.len(), host as usize));
        }
        spans.sort_unstable_by_key(|s| s.0);
        self.spans = spans;
        self.memory = Some(memory);
        Ok(())
    }

    /// The underlying `vm-memory` collection, for device models and loaders.
    pub fn memory(&self) -> Option<&GuestMemoryMmap> {
        self.memory.as_ref()
    }

    /// Host address of the start of the RAM page holding physical address `paddr`, or
    /// `None` if that page is not RAM.
    ///
    /// Regions are page aligned, so the whole 4 KiB page behind the returned pointer is RAM.
    #[inline]
    pub fn host_page(&self, paddr: u64) -> Option<*mut u8> {
        let page = paddr & PAGE_MASK;
        self.spans
            .iter()
            .find(|&&(start, len, _)| page.wrapping_sub(start) < len)
            .map(|&(start, _, host)| (host + (page - start) as usize) as *mut u8)
    }

    /// Whether physical address `paddr` is RAM.
    pub fn is_ram(&self, paddr: u64) -> bool {
        self.host_page(paddr).is_some()
    }

    /// Total bytes of RAM mapped.
    pub fn total_size(&self) -> u64 {
        self.memory
            .iter()
            .flat_map(|m| m.iter())
            .map(|r| r.len())
            .sum()
    }

    /// Iterates over `(guest physical start, size)` of every region, in address order.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.memory
            .iter()
            .flat_map(|m| m.iter())
            .map(|r| (r.start_addr().0, r.len()))
    }
}

/// Size of one page as a `usize`, for buffer arithmetic.
pub(crate) const PAGE_BYTES: usize = PAGE_SIZE as usize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unaligned_and_overlapping_regions() {
        let mut ram = GuestRam::new();
        assert!(matches!(
            ram.add_region(0x1001, 0x1000),
            Err(RamError::Unaligned { .. })
        ));
        assert!(matches!(
            ram.add_region(0, 0),
            Err(RamError::Unaligned { .. })
        ));
        ram.add_region(0x10000, 0x4000).unwrap();
        assert!(matches!(
            ram.add_region(0x12000, 0x4000),
            Err(RamError::Overlap { .. })
        ));
        assert!(matches!(
            ram.add_region(PAGE_MASK, 0x2000),
            Err(RamError::Overflow { .. })
        ));
        ram.add_region(0x0, 0x10000).unwrap();
        assert_eq!(ram.total_size(), 0x14000);
    }

    #[test]
    fn host_page_covers_only_ram() {
        let mut ram = GuestRam::new();
        ram.add_region(0x2000, 0x2000).unwrap();
        assert!(ram.host_page(0x1fff).is_none());
        assert!(ram.host_page(0x2000).is_some());
        assert!(ram.host_page(0x3fff).is_some());
        assert!(ram.host_page(0x4000).is_none());
        let a = ram.host_page(0x2000).unwrap();
        let b = ram.host_page(0x3000).unwrap();
        assert_eq!(b as usize - a as usize, PAGE_BYTES);
    }
}
