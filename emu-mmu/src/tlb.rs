//! The per-vCPU soft TLB: direct-mapped arrays of virtual page tag plus host addend.
//!
//! A hit costs one compare and one add: the entry for a virtual page holds the page's
//! address as its tag and `host pointer - virtual page address` as its addend, so the host
//! address of any byte in the page is `vaddr + addend`. Reads, writes and instruction
//! fetches have separate arrays, because their permissions differ (a page holding
//! translated code is readable and fetchable through the TLB, but its writes must take the
//! slow path so the code cache hears about them).
//!
//! With paging on, an entry is only ever filled after the page walk checked the access it
//! is for, under the privilege class of the [`SoftTlb`] it is in (the `Mmu` keeps one
//! `SoftTlb` per class and swaps them when the class changes), so a hit needs no
//! permission check. Entries mapping global pages are flagged so CR3 writes can keep them.

/// Number of entries in each direct-mapped array (a power of two).
pub const TLB_ENTRIES: usize = 512;

/// A tag no page-aligned address can equal, marking an empty entry.
const INVALID_TAG: u64 = u64::MAX;

/// One TLB entry.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TlbEntry {
    /// Page-aligned virtual address this entry maps, or [`INVALID_TAG`].
    pub tag: u64,
    /// `host address of the page - tag`, as a wrapping difference.
    pub addend: u64,
    /// Guest physical address of the page (for flushing by physical page) in the high
    /// bits; the low 12 bits hold flags ([`TlbEntry::GLOBAL`]).
    pub phys_page: u64,
}

impl TlbEntry {
    /// Flag in `phys_page`: the entry maps a global page (kept across CR3 writes).
    pub const GLOBAL: u64 = 1;

    const EMPTY: TlbEntry = TlbEntry {
        tag: INVALID_TAG,
        addend: 0,
        phys_page: INVALID_TAG,
    };
}

/// One direct-mapped array of entries.
#[derive(Clone, Debug)]
pub struct TlbArray {
    entries: Box<[TlbEntry; TLB_ENTRIES]>,
}

impl Default for TlbArray {
    fn default() -> Self {
        Self {
            entries: Box::new([TlbEntry::EMPTY; TLB_ENTRIES]),
        }
    }
}

impl TlbArray {
    /// Offset of the pointer to the entries inside a `TlbArray`.
    pub const ENTRIES_OFFSET: usize = std::mem::offset_of!(TlbArray, entries);

    #[inline(always)]
    fn slot(vaddr: u64) -> usize {
        (vaddr >> crate::PAGE_SHIFT) as usize & (TLB_ENTRIES - 1)
    }

    /// The entry that would map `vaddr`, whether or not it does.
    #[inline(always)]
    pub fn entry(&self, vaddr: u64) -> &TlbEntry {
        &self.entries[Self::slot(vaddr)]
    }

    /// Host address for an access of `size` bytes at `vaddr`, if the entry for its page
    /// is present and the access does not cross into the next page.
    #[inline(always)]
    pub fn lookup(&self, vaddr: u64, size: u64) -> Option<u64> {
        let e = self.entry(vaddr);
        let page_ok = e.tag == vaddr & crate::PAGE_MASK;
        let fits = (vaddr & !crate::PAGE_MASK) <= crate::PAGE_SIZE - size;
        if page_ok && fits {
            Some(vaddr.wrapping_add(e.addend))
        } else {
            None
        }
    }

    /// Installs the mapping `virtual page -> (physical page, host page pointer)`.
    pub fn fill(&mut self, vaddr: u64, phys_page: u64, host_page: *mut u8) {
        self.fill_with(vaddr, phys_page, host_page, false);
    }

    /// As [`TlbArray::fill`], marking the entry global if `global`.
    pub fn fill_with(&mut self, vaddr: u64, phys_page: u64, host_page: *mut u8, global: bool) {
        let tag = vaddr & crate::PAGE_MASK;
        self.entries[Self::slot(vaddr)] = TlbEntry {
            tag,
            addend: (host_page as u64).wrapping_sub(tag),
            phys_page: phys_page & crate::PAGE_MASK | if global { TlbEntry::GLOBAL } else { 0 },
        };
    }

    /// Physical address of `vaddr` if the entry for its page is present.
    #[inline]
    pub fn phys(&self, vaddr: u64) -> Option<u64> {
        let e = self.entry(vaddr);
        (e.tag == vaddr & crate::PAGE_MASK)
            .then_some(e.phys_page & crate::PAGE_MASK | vaddr & !crate::PAGE_MASK)
    }

    /// Drops every entry that is not global.
    pub fn flush_non_global(&mut self) {
        for e in self.entries.iter_mut() {
            if e.phys_page & TlbEntry::GLOBAL == 0 {
                *e = TlbEntry::EMPTY;
            }
        }
    }

    /// Drops every entry.
    pub fn flush(&mut self) {
        self.entries.fill(TlbEntry::EMPTY);
    }

    /// Drops the entry for the virtual page holding `vaddr`, if present.
    pub fn flush_page(&mut self, vaddr: u64) {
        let e = &mut self.entries[Self::slot(vaddr)];
        if e.tag == vaddr & crate::PAGE_MASK {
            *e = TlbEntry::EMPTY;
        }
    }

    /// Drops every entry that maps physical page `paddr` (through any virtual page).
    pub fn flush_phys_page(&mut self, paddr: u64) {
        let page = paddr & crate::PAGE_MASK;
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.tag != INVALID_TAG && e.phys_page & crate::PAGE_MASK == page)
        {
            *e = TlbEntry::EMPTY;
        }
    }
}

/// The three arrays of one vCPU's soft TLB.
#[derive(Clone, Debug, Default)]
pub struct SoftTlb {
    /// Entries for data reads.
    pub read: TlbArray,
    /// Entries for data writes (never filled for pages that hold translated code).
    pub write: TlbArray,
    /// Entries for instruction fetch.
    pub fetch: TlbArray,
    /// Whether anything may have been filled since the last full flush (lets flushes skip
    /// arrays that are known empty).
    pub(crate) used: bool,
}

impl SoftTlb {
    /// Drops every entry of every array.
    pub fn flush(&mut self) {
        if self.used {
            self.read.flush();
            self.write.flush();
            self.fetch.flush();
            self.used = false;
        }
    }

    /// Drops every entry that is not global, in every array.
    pub fn flush_non_global(&mut self) {
        if self.used {
            self.read.flush_non_global();
            self.write.flush_non_global();
            self.fetch.flush_non_global();
        }
    }

    /// Drops the entries for the virtual page holding `vaddr` in every array.
    pub fn flush_page(&mut self, vaddr: u64) {
        if self.used {
            self.read.flush_page(vaddr);
            self.write.flush_page(vaddr);
            self.fetch.flush_page(vaddr);
        }
    }

    /// The array for `access`.
    #[inline(always)]
    pub fn array_mut(&mut self, access: crate::Access) -> &mut TlbArray {
        self.used = true;
        match access {
            crate::Access::Read => &mut self.read,
            crate::Access::Write => &mut self.write,
            crate::Access::Fetch => &mut self.fetch,
        }
    }

    /// The array for `access`, for lookups.
    #[inline(always)]
    pub fn array(&self, access: crate::Access) -> &TlbArray {
        match access {
            crate::Access::Read => &self.read,
            crate::Access::Write => &self.write,
            crate::Access::Fetch => &self.fetch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_needs_matching_page_and_no_page_crossing() {
        let mut t = TlbArray::default();
        let host = 0x7000_0000_0000u64 as *mut u8;
        t.fill(0x5000, 0x5000, host);
        assert_eq!(t.lookup(0x5000, 8), Some(0x7000_0000_0000));
        assert_eq!(t.lookup(0x5ff8, 8), Some(0x7000_0000_0ff8));
        assert_eq!(t.lookup(0x5ff9, 8), None, "crosses into the next page");
        assert_eq!(t.lookup(0x5fff, 1), Some(0x7000_0000_0fff));
        assert_eq!(t.lookup(0x6000, 1), None);
        // Same slot, different page: must miss.
        assert_eq!(t.lookup(0x5000 + (TLB_ENTRIES as u64) * 0x1000, 1), None);
    }

    #[test]
    fn flushes_drop_entries() {
        let mut t = TlbArray::default();
        t.fill(0x1000, 0x9000, 0x1000_0000 as *mut u8);
        t.fill(0x2000, 0x9000, 0x1000_0000 as *mut u8);
        t.fill(0x3000, 0xa000, 0x2000_0000 as *mut u8);
        t.flush_phys_page(0x9abc);
        assert_eq!(t.lookup(0x1000, 1), None);
        assert_eq!(t.lookup(0x2000, 1), None);
        assert!(t.lookup(0x3000, 1).is_some());
        t.flush_page(0x3fff);
        assert_eq!(t.lookup(0x3000, 1), None);
        assert_eq!(t.lookup(crate::PAGE_MASK, 1), None, "empty tag never hits");
    }
}
