//! Guest memory for Quetzal: RAM, the per-vCPU access path and code-page tracking.
//!
//! * [`GuestRam`] is guest physical RAM on `vm-memory`'s `GuestMemoryMmap` (mmap-backed, so
//!   it works on Linux and macOS alike).
//! * [`Mmu`] is what a vCPU touches memory through. Its fast path is the soft TLB
//!   ([`tlb::SoftTlb`]): a direct-mapped array per access kind, each entry a virtual page tag
//!   and a host-pointer addend, so a hit is one compare and one add. A miss takes the slow
//!   path, which translates the address (identity while paging is off; page walks arrive
//!   with the system ISA), checks what the physical page is, and fills the entry.
//! * Pages that hold translated guest code are marked. Their write entries are never put in
//!   the TLB, so every store to them goes through the slow path, which records the page in
//!   a list the code cache drains to drop stale blocks (self-modifying code).
//! * Memory hooks (for embedders and tracing) turn the TLB off, so every access takes the
//!   slow path where the hooks run.
//!
//! All dereferences of host pointers are in [`host_access`], whose invariants are written
//! there.

pub mod host_access;
pub mod ram;
pub mod tlb;

use std::collections::HashSet;

pub use ram::{GuestRam, RamError};
pub use tlb::{SoftTlb, TlbArray, TlbEntry, TLB_ENTRIES};

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a page in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask that keeps the page-aligned part of an address.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

/// The kind of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// Why an access could not complete. These become guest-visible events in the CPU; none
/// of them is a host error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemFault {
    /// The physical address is neither RAM nor a device.
    #[error("{access:?} of unmapped address {addr:#x}")]
    Unmapped {
        /// The (virtual) address of the first byte that is not mapped.
        addr: u64,
        /// What kind of access it was.
        access: Access,
    },
}

/// A memory access reported to memory hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemAccessEvent {
    /// Read or write (fetches are not reported; use a code hook).
    pub access: Access,
    /// Virtual address of the access.
    pub addr: u64,
    /// Width in bytes (1, 2, 4 or 8; wider accesses are reported in 8-byte pieces).
    pub size: u8,
    /// The value read, or the value being written.
    pub value: u64,
}

/// A callback run on every data access while installed.
pub type MemHook = Box<dyn FnMut(&MemAccessEvent) + Send>;

/// One vCPU's path to guest memory.
///
/// For now an `Mmu` also owns the machine's RAM and code-page marks; when several vCPUs
/// arrive those move into a shared machine memory object and each `Mmu` keeps only its TLB.
pub struct Mmu {
    tlb: SoftTlb,
    ram: GuestRam,
    /// Physical pages (page-aligned) that hold translated code.
    code_pages: HashSet<u64>,
    /// Code pages written since the code cache last drained this list.
    written_code_pages: Vec<u64>,
    hooks: Vec<MemHook>,
}

impl Default for Mmu {
    fn default() -> Self {
        Self::new(GuestRam::new())
    }
}

impl std::fmt::Debug for Mmu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmu")
            .field("ram", &self.ram)
            .field("code_pages", &self.code_pages.len())
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl Mmu {
    /// Creates an access path over `ram` with an empty TLB.
    pub fn new(ram: GuestRam) -> Self {
        Self {
            tlb: SoftTlb::default(),
            ram,
            code_pages: HashSet::new(),
            written_code_pages: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// The RAM behind this path.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Adds a zero-filled RAM region (see [`GuestRam::add_region`]).
    ///
    /// # Errors
    ///
    /// As [`GuestRam::add_region`].
    pub fn add_ram(&mut self, addr: u64, size: u64) -> Result<(), RamError> {
        self.ram.add_region(addr, size)?;
        // A page that was unassigned may be RAM now; TLB entries never cache "unassigned",
        // but flush anyway so the rule "layout changes flush" holds without exceptions.
        self.tlb.flush();
        Ok(())
    }

    /// Flushes the whole TLB (CR3 writes, mode changes, layout changes).
    pub fn flush_tlb(&mut self) {
        self.tlb.flush();
    }

    /// Installs a memory hook. While any hook is installed the TLB is bypassed.
    pub fn add_hook(&mut self, hook: MemHook) {
        self.hooks.push(hook);
        self.tlb.flush();
    }

    /// Removes every memory hook, re-enabling the TLB.
    pub fn clear_hooks(&mut self) {
        self.hooks.clear();
    }

    /// Reads `N` bytes (1, 2, 4 or 8) at virtual address `vaddr`, zero-extended.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte is not mapped.
    #[inline(always)]
    pub fn read<const N: usize>(&mut self, vaddr: u64) -> Result<u64, MemFault> {
        match self.tlb.read.lookup(vaddr, N as u64) {
            // SAFETY: a TLB hit means the entry was filled from a RAM page that is still
            // mapped, and `lookup` checked that all N bytes are inside that page.
            Some(host) => Ok(unsafe { host_access::load::<N>(host as *const u8) }),
            None => self.read_slow::<N>(vaddr),
        }
    }

    /// Writes the low `N` bytes (1, 2, 4 or 8) of `value` at virtual address `vaddr`.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte is not mapped; nothing is written then.
    #[inline(always)]
    pub fn write<const N: usize>(&mut self, vaddr: u64, value: u64) -> Result<(), MemFault> {
        match self.tlb.write.lookup(vaddr, N as u64) {
            Some(host) => {
                // SAFETY: as in `read`; write entries exist only for writable RAM pages
                // that hold no translated code.
                unsafe { host_access::store::<N>(host as *mut u8, value) };
                Ok(())
            }
            None => self.write_slow::<N>(vaddr, value),
        }
    }

    /// Reads 16 bytes at `vaddr` (SSE operands), low quadword first.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte is not mapped.
    #[inline]
    pub fn read_u128(&mut self, vaddr: u64) -> Result<u128, MemFault> {
        let lo = self.read::<8>(vaddr)?;
        let hi = self.read::<8>(vaddr.wrapping_add(8))?;
        Ok(lo as u128 | (hi as u128) << 64)
    }

    /// Writes 16 bytes at `vaddr`. Both halves are checked before either is written.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte is not mapped; nothing is written then.
    #[inline]
    pub fn write_u128(&mut self, vaddr: u64, value: u128) -> Result<(), MemFault> {
        self.check_writable(vaddr, 16)?;
        self.write::<8>(vaddr, value as u64)?;
        self.write::<8>(vaddr.wrapping_add(8), (value >> 64) as u64)
    }

    /// Checks that `len` bytes at `vaddr` could be written, without writing them. Used by
    /// instructions that must not leave a partial store behind.
    ///
    /// # Errors
    ///
    /// [`MemFault`] for the first byte that is not mapped.
    pub fn check_writable(&mut self, vaddr: u64, len: u64) -> Result<(), MemFault> {
        self.check_mapped(vaddr, len, Access::Write)
    }

    /// Checks that `len` bytes at `vaddr` are mapped for `access`.
    ///
    /// # Errors
    ///
    /// [`MemFault`] for the first byte that is not mapped.
    pub fn check_mapped(&mut self, vaddr: u64, len: u64, access: Access) -> Result<(), MemFault> {
        if len == 0 {
            return Ok(());
        }
        let last = vaddr.wrapping_add(len - 1);
        let mut page = vaddr & PAGE_MASK;
        loop {
            let probe = if page == vaddr & PAGE_MASK {
                vaddr
            } else {
                page
            };
            self.translate(probe, access)?;
            if page == last & PAGE_MASK {
                return Ok(());
            }
            page = page.wrapping_add(PAGE_SIZE);
        }
    }

    /// Copies up to `buf.len()` bytes of code starting at `vaddr` into `buf`, stopping at
    /// the first unmapped byte. Returns how many bytes were copied.
    pub fn fetch_code(&mut self, vaddr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let addr = vaddr.wrapping_add(done as u64);
            let Ok(host_page) = self.fetch_host_page(addr) else {
                break;
            };
            let offset = (addr & !PAGE_MASK) as usize;
            let n = (ram::PAGE_BYTES - offset).min(buf.len() - done);
            // SAFETY: `host_page` is a live RAM page and `offset + n <= PAGE_BYTES`.
            unsafe { host_access::copy_out(host_page.add(offset), &mut buf[done..done + n]) };
            done += n;
        }
        done
    }

    /// Translates a virtual address for `access`, returning the physical address.
    ///
    /// # Errors
    ///
    /// [`MemFault::Unmapped`] if the page is not RAM.
    pub fn translate(&mut self, vaddr: u64, access: Access) -> Result<u64, MemFault> {
        // Paging is off: physical == virtual. Page walks arrive with the system ISA.
        let paddr = vaddr;
        if self.ram.is_ram(paddr) {
            Ok(paddr)
        } else {
            Err(MemFault::Unmapped {
                addr: vaddr,
                access,
            })
        }
    }

    /// Marks the physical page holding `paddr` as holding translated code, so writes to it
    /// are seen by the code cache.
    pub fn mark_code_page(&mut self, paddr: u64) {
        let page = paddr & PAGE_MASK;
        if self.code_pages.insert(page) {
            self.tlb.write.flush_phys_page(page);
        }
    }

    /// Whether the physical page holding `paddr` holds translated code.
    pub fn is_code_page(&self, paddr: u64) -> bool {
        self.code_pages.contains(&(paddr & PAGE_MASK))
    }

    /// Whether any code page has been written since the last [`Mmu::take_written_code_pages`].
    #[inline(always)]
    pub fn code_written(&self) -> bool {
        !self.written_code_pages.is_empty()
    }

    /// Takes the list of code pages written since the last call. Their code marks are
    /// already cleared; the caller drops the blocks translated from them.
    pub fn take_written_code_pages(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.written_code_pages)
    }

    /// Reads guest memory into `buf` (embedder and loader access, not through hooks).
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte is not RAM; `buf` may then be partly filled.
    pub fn read_bytes(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.check_mapped(vaddr, buf.len() as u64, Access::Read)?;
        let mut done = 0;
        while done < buf.len() {
            let addr = vaddr.wrapping_add(done as u64);
            let host_page = self.host_page_for(addr, Access::Read)?;
            let offset = (addr & !PAGE_MASK) as usize;
            let n = (ram::PAGE_BYTES - offset).min(buf.len() - done);
            // SAFETY: `host_page` is a live RAM page and `offset + n <= PAGE_BYTES`.
            unsafe { host_access::copy_out(host_page.add(offset), &mut buf[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Writes `data` into guest memory (embedder and loader access). Code pages written
    /// this way are reported to the code cache like guest stores.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte is not RAM; nothing is written then.
    pub fn write_bytes(&mut self, vaddr: u64, data: &[u8]) -> Result<(), MemFault> {
        self.check_mapped(vaddr, data.len() as u64, Access::Write)?;
        let mut done = 0;
        while done < data.len() {
            let addr = vaddr.wrapping_add(done as u64);
            let host_page = self.host_page_for(addr, Access::Write)?;
            self.note_code_write(addr);
            let offset = (addr & !PAGE_MASK) as usize;
            let n = (ram::PAGE_BYTES - offset).min(data.len() - done);
            // SAFETY: `host_page` is a live RAM page and `offset + n <= PAGE_BYTES`.
            unsafe { host_access::copy_in(host_page.add(offset), &data[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    fn host_page_for(&mut self, vaddr: u64, access: Access) -> Result<*mut u8, MemFault> {
        let paddr = self.translate(vaddr, access)?;
        self.ram.host_page(paddr).ok_or(MemFault::Unmapped {
            addr: vaddr,
            access,
        })
    }

    fn fetch_host_page(&mut self, vaddr: u64) -> Result<*mut u8, MemFault> {
        if let Some(host) = self.tlb.fetch.lookup(vaddr & PAGE_MASK, 1) {
            return Ok(host as *mut u8);
        }
        let host_page = self.host_page_for(vaddr, Access::Fetch)?;
        let paddr = self.translate(vaddr, Access::Fetch)?;
        self.tlb.fetch.fill(vaddr, paddr, host_page);
        Ok(host_page)
    }

    /// Records a write to a code page: the page loses its mark (later writes go fast again
    /// until code is translated from it anew) and is queued for the code cache.
    fn note_code_write(&mut self, vaddr: u64) {
        let paddr = vaddr; // identity while paging is off
        let page = paddr & PAGE_MASK;
        if self.code_pages.remove(&page) {
            self.written_code_pages.push(page);
        }
    }

    #[cold]
    #[inline(never)]
    fn read_slow<const N: usize>(&mut self, vaddr: u64) -> Result<u64, MemFault> {
        let value = if (vaddr & !PAGE_MASK) + N as u64 > PAGE_SIZE {
            // Crosses a page: check both pages first, then assemble byte by byte.
            self.check_mapped(vaddr, N as u64, Access::Read)?;
            let mut value = 0u64;
            for i in 0..N {
                let addr = vaddr.wrapping_add(i as u64);
                let host_page = self.host_page_for(addr, Access::Read)?;
                // SAFETY: one byte inside a live RAM page.
                let byte =
                    unsafe { host_access::load::<1>(host_page.add((addr & !PAGE_MASK) as usize)) };
                value |= byte << (8 * i);
            }
            value
        } else {
            let host_page = self.host_page_for(vaddr, Access::Read)?;
            if self.hooks.is_empty() {
                let paddr = self.translate(vaddr, Access::Read)?;
                self.tlb.read.fill(vaddr, paddr, host_page);
            }
            // SAFETY: all N bytes are inside this live RAM page (no crossing, checked above).
            unsafe { host_access::load::<N>(host_page.add((vaddr & !PAGE_MASK) as usize)) }
        };
        self.run_hooks(Access::Read, vaddr, N, value);
        Ok(value)
    }

    #[cold]
    #[inline(never)]
    fn write_slow<const N: usize>(&mut self, vaddr: u64, value: u64) -> Result<(), MemFault> {
        self.run_hooks(Access::Write, vaddr, N, value);
        if (vaddr & !PAGE_MASK) + N as u64 > PAGE_SIZE {
            self.check_mapped(vaddr, N as u64, Access::Write)?;
            for i in 0..N {
                let addr = vaddr.wrapping_add(i as u64);
                let host_page = self.host_page_for(addr, Access::Write)?;
                self.note_code_write(addr);
                // SAFETY: one byte inside a live RAM page.
                unsafe {
                    host_access::store::<1>(
                        host_page.add((addr & !PAGE_MASK) as usize),
                        value >> (8 * i),
                    )
                };
            }
            return Ok(());
        }
        let host_page = self.host_page_for(vaddr, Access::Write)?;
        let paddr = self.translate(vaddr, Access::Write)?;
        if self.is_code_page(paddr) {
            self.note_code_write(vaddr);
        } else if self.hooks.is_empty() {
            self.tlb.write.fill(vaddr, paddr, host_page);
        }
        // SAFETY: all N bytes are inside this live RAM page (no crossing, checked above).
        unsafe { host_access::store::<N>(host_page.add((vaddr & !PAGE_MASK) as usize), value) };
        Ok(())
    }

    fn run_hooks(&mut self, access: Access, addr: u64, size: usize, value: u64) {
        if self.hooks.is_empty() {
            return;
        }
        let event = MemAccessEvent {
            access,
            addr,
            size: size as u8,
            value,
        };
        for hook in &mut self.hooks {
            hook(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mmu_with(addr: u64, size: u64) -> Mmu {
        let mut ram = GuestRam::new();
        ram.add_region(addr, size).unwrap();
        Mmu::new(ram)
    }

    #[test]
    fn reads_back_what_was_written_in_every_width() {
        let mut m = mmu_with(0x1000, 0x2000);
        m.write::<8>(0x1100, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read::<1>(0x1100).unwrap(), 0x88);
        assert_eq!(m.read::<2>(0x1101).unwrap(), 0x6677);
        assert_eq!(m.read::<4>(0x1104).unwrap(), 0x1122_3344);
        assert_eq!(m.read::<8>(0x1100).unwrap(), 0x1122_3344_5566_7788);
        // Second read is a TLB hit and must agree.
        assert_eq!(m.read::<8>(0x1100).unwrap(), 0x1122_3344_5566_7788);
    }

    #[test]
    fn page_crossing_accesses_are_split() {
        let mut m = mmu_with(0x1000, 0x2000);
        m.write::<8>(0x1ffc, 0xaabb_ccdd_1122_3344).unwrap();
        assert_eq!(m.read::<4>(0x1ffc).unwrap(), 0x1122_3344);
        assert_eq!(m.read::<4>(0x2000).unwrap(), 0xaabb_ccdd);
        assert_eq!(m.read::<8>(0x1ffc).unwrap(), 0xaabb_ccdd_1122_3344);
    }

    #[test]
    fn unmapped_access_faults_and_writes_nothing() {
        let mut m = mmu_with(0x1000, 0x1000);
        assert_eq!(
            m.read::<4>(0x3000),
            Err(MemFault::Unmapped {
                addr: 0x3000,
                access: Access::Read
            })
        );
        m.write::<4>(0x1ffc, 0x5555_5555).unwrap();
        // Crosses into unmapped memory: faults without touching the mapped half.
        assert!(m.write::<8>(0x1ffc, u64::MAX).is_err());
        assert_eq!(m.read::<4>(0x1ffc).unwrap(), 0x5555_5555);
        assert!(m.write_u128(0x1ff8, u128::MAX).is_err());
        assert_eq!(m.read::<4>(0x1ffc).unwrap(), 0x5555_5555);
    }

    #[test]
    fn writes_to_code_pages_are_reported_once_per_mark() {
        let mut m = mmu_with(0x1000, 0x2000);
        m.write::<4>(0x1000, 1).unwrap(); // fills the write TLB
        m.mark_code_page(0x1000);
        assert!(!m.code_written());
        m.write::<4>(0x1004, 2).unwrap();
        assert!(m.code_written());
        m.write::<4>(0x1008, 3).unwrap();
        assert_eq!(m.take_written_code_pages(), vec![0x1000]);
        assert!(!m.is_code_page(0x1000));
        assert_eq!(m.read::<4>(0x1004).unwrap(), 2);
    }

    #[test]
    fn hooks_see_every_access() {
        use std::sync::{Arc, Mutex};
        let mut m = mmu_with(0x1000, 0x1000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        m.add_hook(Box::new(move |e| s.lock().unwrap().push(*e)));
        m.write::<2>(0x1010, 0xbeef).unwrap();
        m.read::<2>(0x1010).unwrap();
        m.read::<2>(0x1010).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[0],
            MemAccessEvent {
                access: Access::Write,
                addr: 0x1010,
                size: 2,
                value: 0xbeef
            }
        );
        assert_eq!(seen[2].access, Access::Read);
    }

    #[test]
    fn fetch_code_stops_at_unmapped_memory() {
        let mut m = mmu_with(0x1000, 0x1000);
        m.write_bytes(0x1ffe, &[0x90, 0xc3]).unwrap();
        let mut buf = [0u8; 15];
        assert_eq!(m.fetch_code(0x1ffe, &mut buf), 2);
        assert_eq!(&buf[..2], &[0x90, 0xc3]);
    }
}
