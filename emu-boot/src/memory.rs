//! How loaders and configurators reach guest memory: the [`GuestMemory`] trait.
//!
//! The crate writes guest memory only through this consumer-side trait, so it depends on
//! neither `emu-core` nor `emu-mmu`. `emu-vmm` implements it over the machine's RAM (a
//! newtype around `emu_core::Emulator` forwarding to `write_memory`, with
//! [`GuestMemory::ram_regions`] returning the regions it mapped, normally
//! [`crate::layout::ram_regions`]). [`SparseMemory`] is an in-process fake that only
//! allocates the pages written, so tests can model a 6 GiB machine cheaply.

use std::collections::BTreeMap;

use crate::layout::{in_ram, RamRegion};

/// A write that guest memory refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// Some byte of the range is not RAM.
    #[error("guest range {addr:#x}+{len:#x} is not RAM")]
    OutOfRange {
        /// Guest physical start of the write.
        addr: u64,
        /// Length of the write.
        len: u64,
    },
}

/// Guest RAM as the boot code sees it.
pub trait GuestMemory {
    /// The RAM regions, in address order and not overlapping.
    fn ram_regions(&self) -> Vec<RamRegion>;

    /// Copies `data` to guest physical `addr`.
    ///
    /// # Errors
    ///
    /// [`MemoryError::OutOfRange`] if any byte of the range is not RAM; implementations
    /// should then write nothing.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;

    /// Writes `len` zero bytes at `addr` (for BSS); by default in 64 KiB chunks.
    ///
    /// # Errors
    ///
    /// As [`GuestMemory::write`].
    fn zero(&mut self, addr: u64, len: u64) -> Result<(), MemoryError> {
        if !in_ram(&self.ram_regions(), addr, len) {
            return Err(MemoryError::OutOfRange { addr, len });
        }
        let chunk = [0u8; 0x1_0000];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write(addr + done, &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }
}

const PAGE: u64 = 0x1000;

/// A sparse, page-granular fake of guest RAM for tests: unwritten bytes read as zero and
/// cost nothing.
#[derive(Debug, Clone, Default)]
pub struct SparseMemory {
    regions: Vec<RamRegion>,
    pages: BTreeMap<u64, Box<[u8; PAGE as usize]>>,
}

impl SparseMemory {
    /// RAM laid out as [`crate::layout::ram_regions`] lays out `mem_size` bytes.
    pub fn new(mem_size: u64) -> Self {
        Self::with_regions(crate::layout::ram_regions(mem_size))
    }

    /// RAM with exactly these regions.
    pub fn with_regions(regions: Vec<RamRegion>) -> Self {
        Self {
            regions,
            pages: BTreeMap::new(),
        }
    }

    /// Reads `len` bytes at `addr` (zeros where nothing was written).
    ///
    /// # Panics
    ///
    /// If the range is not RAM: a test asking for that has a bug.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        assert!(in_ram(&self.regions, addr, len as u64), "read outside RAM");
        (0..len as u64)
            .map(|i| {
                let a = addr + i;
                self.pages
                    .get(&(a / PAGE))
                    .map_or(0, |p| p[(a % PAGE) as usize])
            })
            .collect()
    }

    /// Reads a little-endian `u16`.
    pub fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.read(addr, 2).try_into().unwrap())
    }

    /// Reads a little-endian `u32`.
    pub fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read(addr, 4).try_into().unwrap())
    }

    /// Reads a little-endian `u64`.
    pub fn read_u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read(addr, 8).try_into().unwrap())
    }

    /// Reads a NUL-terminated string (without the NUL).
    pub fn read_cstr(&self, addr: u64) -> String {
        let mut out = Vec::new();
        let mut a = addr;
        loop {
            let b = self.read(a, 1)[0];
            if b == 0 {
                break;
            }
            out.push(b);
            a += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl GuestMemory for SparseMemory {
    fn ram_regions(&self) -> Vec<RamRegion> {
        self.regions.clone()
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let len = data.len() as u64;
        if !in_ram(&self.regions, addr, len) {
            return Err(MemoryError::OutOfRange { addr, len });
        }
        let mut off = 0usize;
        while off < data.len() {
            let a = addr + off as u64;
            let in_page = (a % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - off);
            let page = self
                .pages
                .entry(a / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            page[in_page..in_page + n].copy_from_slice(&data[off..off + n]);
            off += n;
        }
        Ok(())
    }

    fn zero(&mut self, addr: u64, len: u64) -> Result<(), MemoryError> {
        if !in_ram(&self.regions, addr, len) {
            return Err(MemoryError::OutOfRange { addr, len });
        }
        // Only pages already written need clearing; absent pages read as zero.
        let first = addr / PAGE;
        let last = (addr + len).div_ceil(PAGE);
        let touched: Vec<u64> = self.pages.range(first..last).map(|(k, _)| *k).collect();
        for p in touched {
            let start = (p * PAGE).max(addr);
            let end = ((p + 1) * PAGE).min(addr + len);
            let page = self.pages.get_mut(&p).unwrap();
            page[(start % PAGE) as usize..(start % PAGE + end - start) as usize].fill(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_memory_round_trips_across_pages() {
        let mut m = SparseMemory::new(1 << 20);
        m.write(0xffe, &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.read(0xffd, 6), vec![0, 1, 2, 3, 4, 0]);
        m.zero(0xfff, 2).unwrap();
        assert_eq!(m.read(0xffe, 4), vec![1, 0, 0, 4]);
    }

    #[test]
    fn writes_outside_ram_fail() {
        let mut m = SparseMemory::new(1 << 20);
        assert_eq!(
            m.write((1 << 20) - 1, &[0, 0]),
            Err(MemoryError::OutOfRange {
                addr: (1 << 20) - 1,
                len: 2
            })
        );
    }
}
