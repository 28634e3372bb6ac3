//! Guest memory for Quetzal: RAM, the per-vCPU access path and code-page tracking.
//!
//! * [`GuestRam`] is guest physical RAM on `vm-memory`'s `GuestMemoryMmap` (mmap-backed, so
//!   it works on Linux and macOS alike).
//! * [`Mmu`] is what a vCPU touches memory through. Its fast path is the soft TLB
//!   ([`tlb::SoftTlb`]): a direct-mapped array per access kind, each entry a virtual page tag
//!   and a host-pointer addend, so a hit is one compare and one add. A miss takes the slow
//!   path, which translates the address (identity while paging is off, otherwise the page
//!   walker in [`paging`]), checks what the physical page is, and fills the entry.
//! * With paging on the soft TLB is the shadow page table. Entries are filled only after
//!   the walk checked the very access they serve (a read fills the read array, a write the
//!   write array once the dirty bit is set, a fetch the fetch array), so a hit needs no
//!   permission check. Because what a walk grants depends on who asks, the `Mmu` keeps one
//!   `SoftTlb` per *privilege class* (user; supervisor that may touch user pages; supervisor
//!   that SMAP keeps off user pages) and swaps the active one in when the class changes
//!   (three pointer swaps; the hit path is unchanged). Flushes follow the architecture: see
//!   [`Mmu::set_paging`], [`Mmu::write_cr3`], [`Mmu::invlpg`] and [`Mmu::invpcid`].
//! * Pages that hold translated guest code are marked. Their write entries are never put in
//!   the TLB, so every store to them goes through the slow path, which records the page in
//!   a list the code cache drains to drop stale blocks (self-modifying code). The vCPUs of
//!   one machine share the marks through [`code::CodeShare`] (cross-modifying code).
//! * LOCK-prefixed read-modify-writes are one host compare-exchange of the aligned word
//!   holding the operand ([`Mmu::begin_locked`]), so they are atomic against every other
//!   vCPU and device.
//! * Memory hooks (for embedders and tracing) turn the TLB off, so every access takes the
//!   slow path where the hooks run.
//!
//! All dereferences of host pointers are in [`host_access`], whose invariants are written
//! there.

pub mod bus;
pub mod clock;
pub mod code;
pub mod dma;
pub mod host_access;
pub mod paging;
pub mod ram;
pub mod tlb;

use std::collections::HashSet;

pub use bus::{Bus, BusDevice, BusError, SharedDevice, UnassignedAccess, UnassignedHandler};
pub use paging::{
    PageFault, PagingContext, PagingError, PagingMode, Privilege, Translation, MAXPHYADDR,
};
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
    /// The page walk failed: the guest sees #PF with CR2 = `addr`.
    #[error("page fault at {addr:#x} (error code {error_code:#x})")]
    PageFault {
        /// The faulting linear address.
        addr: u64,
        /// The #PF error code (bits in [`paging::pf`]).
        error_code: u32,
    },
    /// The linear address is not canonical (48-bit, or 57-bit with LA57): the guest sees
    /// #GP(0) (#SS(0) for stack references), not #PF.
    #[error("{access:?} of non-canonical address {addr:#x}")]
    NonCanonical {
        /// The address of the first non-canonical byte.
        addr: u64,
        /// What kind of access it was.
        access: Access,
    },
}

/// Which INVPCID operation to perform (the type operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvpcidKind {
    /// Type 0: one linear address in one PCID (global translations excepted).
    Address,
    /// Type 1: every non-global translation of one PCID.
    SingleContext,
    /// Type 2: every translation, global ones included.
    AllIncludingGlobal,
    /// Type 3: every non-global translation.
    AllExceptGlobal,
}

/// Privilege classes; one `SoftTlb` each.
const CLASS_USER: usize = 0;
/// Supervisor accesses that may touch user data pages (SMAP off, or RFLAGS.AC with an
/// explicit access). Also the class used while paging is off.
const CLASS_SUPERVISOR: usize = 1;
/// Supervisor accesses that SMAP keeps away from user data pages.
const CLASS_SUPERVISOR_SMAP: usize = 2;

/// What one slow-path translation found.
#[derive(Clone, Copy)]
struct Resolved {
    paddr: u64,
    host_page: *mut u8,
    global: bool,
    /// `(virtual base, size)` of the large page that mapped it, if larger than 4 KiB.
    large: Option<(u64, u64)>,
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

/// Byte offsets, inside an [`Mmu`], of the pointers to the current privilege class's read
/// and write [`TlbEntry`] arrays ([`TLB_ENTRIES`] entries each, indexed by virtual page
/// number modulo their length). Compiled code reads them to inline the TLB hit path:
/// the pointer itself must be loaded again after anything that may switch the privilege
/// class, because a switch swaps whole arrays.
#[derive(Clone, Copy, Debug)]
pub struct TlbLayout {
    /// Offset of the read array's pointer.
    pub read_entries: usize,
    /// Offset of the write array's pointer.
    pub write_entries: usize,
    /// Offset of the instruction-fetch array's pointer.
    pub fetch_entries: usize,
}

/// One vCPU's path to guest memory.
///
/// The RAM (shared mappings), the device-write log and the machine-wide code-page marks
/// ([`code::CodeShare`]) are shared with the other vCPUs' `Mmu`s ([`Mmu::sibling`]); the
/// TLBs, the paging state and a local copy of the code-page marks are this vCPU's own.
pub struct Mmu {
    /// The TLB of the current privilege class.
    tlb: SoftTlb,
    /// The TLBs of the other classes; slot `class` holds an empty spare.
    parked: [SoftTlb; 3],
    /// The current privilege class (`CLASS_*`).
    class: usize,
    paging: PagingContext,
    mode: PagingMode,
    /// PAE PDPTEs, loaded when CR3 is written in (or paging switches to) PAE mode.
    pdptes: [u64; 4],
    privilege: Privilege,
    /// Virtual range `(base, mask)` covering every large page the TLB may hold slices of,
    /// if any. INVLPG inside it flushes everything.
    large_pages: Option<(u64, u64)>,
    ram: GuestRam,
    /// Physical pages (page-aligned) that hold translated code, this vCPU's copy of the
    /// machine-wide set (see [`code`]).
    code_pages: HashSet<u64>,
    /// Code pages written since the code cache last drained this list.
    written_code_pages: Vec<u64>,
    /// Set when this vCPU lost track of the other vCPUs' code writes: every translation
    /// must go ([`Mmu::take_lost_track`]).
    lost_track: bool,
    /// The marks shared with the other vCPUs, this vCPU's number among them and the last
    /// change it has applied.
    code_share: std::sync::Arc<code::CodeShare>,
    member: usize,
    code_seen: u64,
    /// Writes by devices, which bypass the code-page marks ([`dma`]).
    dma: std::sync::Arc<dma::DmaWrites>,
    hooks: Vec<MemHook>,
    /// Devices at physical addresses that are not RAM.
    mmio: Option<std::sync::Arc<Bus>>,
    /// Where a LOCK-prefixed instruction's memory operand stands ([`Mmu::begin_locked`]).
    locked: Locked,
    /// Empty read and write arrays swapped in while a locked instruction runs, so that
    /// its accesses take the slow path.
    locked_spare: (TlbArray, TlbArray),
}

/// The state of a locked read-modify-write (see [`Mmu::begin_locked`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Locked {
    /// No locked instruction is running.
    #[default]
    Off,
    /// A locked instruction runs; its operand has not been touched yet.
    Armed,
    /// The operand was read: `word` is the host address of the naturally aligned 8-byte
    /// word (16 bytes when `wide`) holding it, `old` that word's value at the read.
    Held {
        vaddr: u64,
        size: u8,
        paddr: u64,
        word: usize,
        old: u128,
        wide: bool,
    },
    /// The operand is a device register: accesses go to the device as they come.
    Device,
    /// The write went through atomically.
    Stored,
    /// Another vCPU or a device changed the word between the read and the write.
    Raced,
    /// The operand cannot be updated with one host compare-exchange (it straddles an
    /// 8-byte word, a cache line or a page, or the instruction touched a second place).
    Unsupported,
}

/// How a locked instruction's memory update ended ([`Mmu::end_locked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockedOutcome {
    /// The read-modify-write happened atomically (or wrote nothing).
    Done,
    /// The memory changed under it and nothing was written: run the instruction again
    /// from its original register state.
    Retry,
    /// Nothing was written because the operand cannot be updated atomically by this
    /// path: run the instruction again, with every other vCPU stopped.
    NeedsExclusive,
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
        let mut mmu = Self {
            tlb: SoftTlb::default(),
            parked: Default::default(),
            class: CLASS_SUPERVISOR,
            paging: PagingContext::default(),
            mode: PagingMode::Off,
            pdptes: [0; 4],
            privilege: Privilege::default(),
            large_pages: None,
            ram,
            code_pages: HashSet::new(),
            written_code_pages: Vec::new(),
            lost_track: false,
            code_share: Default::default(),
            member: 0,
            code_seen: 0,
            dma: Default::default(),
            hooks: Vec::new(),
            mmio: None,
            locked: Locked::Off,
            locked_spare: Default::default(),
        };
        mmu.member = mmu.code_share.join();
        mmu
    }

    /// A path to the same memory for another vCPU: it shares the RAM, the device-write
    /// log and the code-page marks, and starts with an empty TLB, paging off and no MMIO
    /// bus or hooks. RAM added later to either `Mmu` is not seen by the other, so a
    /// machine maps all of its RAM before it creates siblings.
    pub fn sibling(&self) -> Mmu {
        let (member, marks, seen) = self.code_share.join_sibling(&self.code_pages);
        Mmu {
            ram: self.ram.clone(),
            code_pages: marks,
            code_share: self.code_share.clone(),
            member,
            code_seen: seen,
            dma: self.dma.clone(),
            ..Mmu::new(GuestRam::new())
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
        self.flush_tlb();
        Ok(())
    }

    /// Flushes the whole TLB of every privilege class, global entries included.
    pub fn flush_tlb(&mut self) {
        self.tlb.flush();
        for t in &mut self.parked {
            t.flush();
        }
        self.large_pages = None;
    }

    /// Flushes every non-global entry of every privilege class.
    fn flush_non_global(&mut self) {
        self.tlb.flush_non_global();
        for t in &mut self.parked {
            t.flush_non_global();
        }
    }

    /// The paging registers last installed.
    pub fn paging(&self) -> &PagingContext {
        &self.paging
    }

    /// The paging mode in force.
    pub fn paging_mode(&self) -> PagingMode {
        self.mode
    }

    /// The PAE PDPTEs as last loaded (meaningful in PAE mode only).
    pub fn pdptes(&self) -> [u64; 4] {
        self.pdptes
    }

    /// Installs CR0, CR3, CR4 and EFER. Call after every MOV to CR0 or CR4, WRMSR to EFER,
    /// mode switch, task switch or reset (a MOV to CR3 alone goes to [`Mmu::write_cr3`]).
    ///
    /// Flushes as the architecture requires: everything, global entries included, when
    /// CR0.PG/WP, CR4.PSE/PAE/PGE/LA57/PCIDE/SMEP/SMAP or EFER.NXE/LMA change; otherwise,
    /// if CR3 changed, the non-global entries (as a MOV to CR3 without the no-flush bit).
    /// When the result is PAE paging and PG, PAE, PSE, PGE, SMEP or CR3 changed, the PDPTEs
    /// are (re)loaded.
    ///
    /// # Errors
    ///
    /// [`PagingError::ReservedPdpte`] if PDPTEs had to be loaded and one is invalid; the
    /// CPU raises #GP(0) and must keep its old register values (nothing here changed).
    pub fn set_paging(&mut self, ctx: PagingContext) -> Result<(), PagingError> {
        use paging::bits::*;
        let old = self.paging;
        if ctx == old {
            return Ok(());
        }
        let cr0_diff = (old.cr0 ^ ctx.cr0) & (CR0_PG | CR0_WP);
        let cr4_diff = (old.cr4 ^ ctx.cr4)
            & (CR4_PSE | CR4_PAE | CR4_PGE | CR4_LA57 | CR4_PCIDE | CR4_SMEP | CR4_SMAP);
        let efer_diff = (old.efer ^ ctx.efer) & (EFER_NXE | EFER_LMA);
        let mode = ctx.mode();
        let pdpte_reload = mode == PagingMode::Pae
            && (old.cr3 != ctx.cr3
                || cr0_diff & CR0_PG != 0
                || cr4_diff & (CR4_PAE | CR4_PSE | CR4_PGE | CR4_SMEP) != 0
                || self.mode != PagingMode::Pae);
        if pdpte_reload {
            self.pdptes = paging::load_pdptes(&self.ram, ctx.cr3)?;
        }
        self.paging = ctx;
        self.mode = mode;
        if cr0_diff != 0 || cr4_diff != 0 || efer_diff != 0 {
            self.flush_tlb();
        } else if old.cr3 != ctx.cr3 {
            self.flush_non_global();
        }
        self.select_class();
        Ok(())
    }

    /// MOV to CR3 with `value` as the guest wrote it. Call on every MOV to CR3, even of an
    /// unchanged value (that is how guests flush).
    ///
    /// Stores `value` without bit 63 (the PCID no-flush bit, honoured when CR4.PCIDE). In
    /// PAE mode loads the PDPTEs. Flushes non-global entries, unless CR4.PCIDE and bit 63 is
    /// set and the PCID is unchanged. (The TLB holds entries of the current PCID only, so a
    /// switch to another PCID flushes the non-global entries even with the no-flush bit.)
    ///
    /// # Errors
    ///
    /// [`PagingError::ReservedCr3`] in long mode if bits 62:MAXPHYADDR (or bit 63 without
    /// CR4.PCIDE) are set, [`PagingError::ReservedPdpte`] in PAE mode for an invalid PDPTE.
    /// The CPU raises #GP(0); nothing changed.
    pub fn write_cr3(&mut self, value: u64) -> Result<(), PagingError> {
        use paging::bits::*;
        let pcide = self.paging.cr4 & CR4_PCIDE != 0;
        let no_flush = pcide && value & CR3_NO_FLUSH != 0;
        let cr3 = if pcide { value & !CR3_NO_FLUSH } else { value };
        if self.paging.efer & EFER_LMA != 0 && cr3 >> MAXPHYADDR != 0 {
            return Err(PagingError::ReservedCr3 { value });
        }
        if self.mode == PagingMode::Pae {
            self.pdptes = paging::load_pdptes(&self.ram, cr3)?;
        }
        let old_pcid = self.paging.pcid();
        self.paging.cr3 = cr3;
        if !(no_flush && self.paging.pcid() == old_pcid) {
            self.flush_non_global();
        }
        Ok(())
    }

    /// INVLPG: drops the translation of the page holding linear address `vaddr` (global
    /// or not) in every privilege class. If the address lies where a large page was
    /// cached (as 4 KiB slices), everything is flushed.
    pub fn invlpg(&mut self, vaddr: u64) {
        if matches!(self.large_pages, Some((base, mask)) if vaddr & mask == base) {
            self.flush_tlb();
            return;
        }
        self.tlb.flush_page(vaddr);
        for t in &mut self.parked {
            t.flush_page(vaddr);
        }
    }

    /// INVPCID of `kind` for `pcid` and linear address `vaddr` (type 0 only).
    ///
    /// # Errors
    ///
    /// [`PagingError::BadPcid`] for a PCID above 0xfff, [`PagingError::NonCanonical`] for a
    /// non-canonical address with type 0. The CPU raises #GP(0). (Checking CR4.PCIDE for
    /// types 0/1 with a non-zero PCID and the reserved-type #GP is the CPU's.)
    pub fn invpcid(&mut self, kind: InvpcidKind, pcid: u64, vaddr: u64) -> Result<(), PagingError> {
        if pcid > 0xfff {
            return Err(PagingError::BadPcid { pcid });
        }
        let current = u64::from(self.paging.pcid()) == pcid;
        match kind {
            InvpcidKind::Address => {
                if !paging::is_canonical(vaddr, self.mode == PagingMode::Level5) {
                    return Err(PagingError::NonCanonical { addr: vaddr });
                }
                // Entries of other PCIDs are never held; global entries are exempt but
                // flushing one more page is always allowed.
                if current {
                    self.invlpg(vaddr);
                }
            }
            InvpcidKind::SingleContext => {
                if current {
                    self.flush_non_global();
                }
            }
            InvpcidKind::AllIncludingGlobal => self.flush_tlb(),
            InvpcidKind::AllExceptGlobal => self.flush_non_global(),
        }
        Ok(())
    }

    /// Sets the privilege of subsequent accesses: the CPL and RFLAGS.AC. Call when CPL
    /// changes and when AC changes (STAC, CLAC, POPF, IRET, ...); cheap when nothing
    /// relevant changed.
    #[inline]
    pub fn set_privilege(&mut self, cpl: u8, ac: bool) {
        self.privilege.cpl = cpl;
        self.privilege.ac = ac;
        self.select_class();
    }

    /// Marks subsequent accesses as implicit supervisor accesses (`true`: descriptor
    /// tables, TSS, stack pushes during event delivery) or ends that (`false`).
    #[inline]
    pub fn set_implicit_supervisor(&mut self, on: bool) {
        self.privilege.implicit_supervisor = on;
        self.select_class();
    }

    /// The privilege of accesses now.
    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// Activates the TLB of the current privilege class.
    #[inline]
    fn select_class(&mut self) {
        let class = if self.mode == PagingMode::Off {
            CLASS_SUPERVISOR
        } else if self.privilege.is_user() {
            CLASS_USER
        } else if self.paging.cr4 & paging::bits::CR4_SMAP != 0
            && (self.privilege.implicit_supervisor || !self.privilege.ac)
        {
            CLASS_SUPERVISOR_SMAP
        } else {
            CLASS_SUPERVISOR
        };
        if class != self.class {
            std::mem::swap(&mut self.tlb, &mut self.parked[self.class]);
            std::mem::swap(&mut self.tlb, &mut self.parked[class]);
            self.class = class;
        }
    }

    /// Where generated code finds this `Mmu`'s TLB arrays (see [`TlbLayout`]).
    pub fn tlb_layout() -> TlbLayout {
        use std::mem::offset_of;
        let tlb = offset_of!(Mmu, tlb);
        TlbLayout {
            read_entries: tlb + offset_of!(SoftTlb, read) + TlbArray::ENTRIES_OFFSET,
            write_entries: tlb + offset_of!(SoftTlb, write) + TlbArray::ENTRIES_OFFSET,
            fetch_entries: tlb + offset_of!(SoftTlb, fetch) + TlbArray::ENTRIES_OFFSET,
        }
    }

    /// The physical page that instruction fetches at `vaddr` reach, if the fetch TLB of
    /// the current privilege class holds it (no walk: `None` on a miss). The code cache
    /// checks its RIP shortcuts against this, so they survive CR3 writes and INVLPG.
    #[inline(always)]
    pub fn fetch_page(&self, vaddr: u64) -> Option<u64> {
        let e = self.tlb.fetch.entry(vaddr);
        (e.tag == vaddr & PAGE_MASK).then_some(e.phys_page & PAGE_MASK)
    }

    /// Whether memory hooks are installed (the TLB is bypassed while they are).
    pub fn has_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Installs a memory hook. While any hook is installed the TLB is bypassed.
    pub fn add_hook(&mut self, hook: MemHook) {
        self.hooks.push(hook);
        self.flush_tlb();
    }

    /// Attaches the bus that serves physical addresses that are not RAM (MMIO). Accesses
    /// there never enter the TLB, so each one reaches the device.
    pub fn set_mmio_bus(&mut self, bus: std::sync::Arc<Bus>) {
        self.mmio = Some(bus);
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
        if self.locked != Locked::Off {
            return self.locked_read_u128(vaddr);
        }
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
        if self.locked != Locked::Off {
            return self.locked_write_u128(vaddr, value);
        }
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
    /// the first byte that cannot be fetched (unmapped, not present, not executable).
    /// Returns how many bytes were copied; [`Mmu::translate`] with [`Access::Fetch`] at the
    /// first byte not copied gives the fault.
    pub fn fetch_code(&mut self, vaddr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let addr = vaddr.wrapping_add(done as u64);
            let Ok(page) = self.access_page(addr, Access::Fetch) else {
                break;
            };
            let offset = (addr & !PAGE_MASK) as usize;
            let n = (ram::PAGE_BYTES - offset).min(buf.len() - done);
            // SAFETY: `host_page` is a live RAM page and `offset + n <= PAGE_BYTES`.
            unsafe { host_access::copy_out(page.host_page.add(offset), &mut buf[done..done + n]) };
            done += n;
        }
        done
    }

    /// Translates a linear address for `access` by the current privilege, returning the
    /// physical address. With paging on this walks the page tables (setting A/D bits) on a
    /// TLB miss and fills the TLB as the access would.
    ///
    /// # Errors
    ///
    /// [`MemFault::NonCanonical`] for a non-canonical address (in 32-bit and PAE paging:
    /// above 4 GiB), [`MemFault::PageFault`] if the walk faults, [`MemFault::Unmapped`] if
    /// the physical page is not RAM.
    pub fn translate(&mut self, vaddr: u64, access: Access) -> Result<u64, MemFault> {
        Ok(self.access_page(vaddr, access)?.paddr)
    }

    /// Translates `vaddr` for an instruction fetch and marks the physical page it lands on
    /// as holding translated code. Returns that physical page (page aligned). The code
    /// cache calls this for each page a block's bytes came from.
    ///
    /// # Errors
    ///
    /// As [`Mmu::translate`].
    pub fn mark_code_at(&mut self, vaddr: u64) -> Result<u64, MemFault> {
        let page = self.access_page(vaddr, Access::Fetch)?.paddr & PAGE_MASK;
        self.mark_code_page(page);
        Ok(page)
    }

    /// Marks the physical page holding `paddr` as holding translated code, so writes to it
    /// (by any vCPU sharing this memory) are seen by the code cache.
    pub fn mark_code_page(&mut self, paddr: u64) {
        let page = paddr & PAGE_MASK;
        if self.code_pages.insert(page) {
            self.forget_write_entries(page);
            if self.code_share.shared() {
                let change = code::Change::Marked {
                    page,
                    by: self.member,
                };
                self.code_share.publish(change, &mut self.code_seen);
            }
        }
    }

    /// Drops every write entry for physical page `page`, in every privilege class.
    fn forget_write_entries(&mut self, page: u64) {
        self.tlb.write.flush_phys_page(page);
        for t in &mut self.parked {
            t.write.flush_phys_page(page);
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

    /// Where devices that write guest RAM directly report what they wrote (see [`dma`]).
    pub fn dma_writes(&self) -> std::sync::Arc<dma::DmaWrites> {
        self.dma.clone()
    }

    /// Whether devices or other vCPUs changed something about translated code since the
    /// last [`Mmu::catch_up`]: one or two relaxed loads, for the run loop to call once
    /// per block.
    #[inline(always)]
    pub fn memory_changed(&self) -> bool {
        self.dma.pending() || self.code_share.next_seq() != self.code_seen
    }

    /// Applies what devices wrote and what other vCPUs marked or wrote since the last
    /// call: their code pages join [`Mmu::take_written_code_pages`]'s list, newly marked
    /// pages leave the write TLB.
    pub fn catch_up(&mut self) {
        if self.dma.pending() {
            self.collect_dma_writes();
        }
        if self.code_share.next_seq() == self.code_seen {
            return;
        }
        match self.code_share.replay(&mut self.code_seen) {
            code::Replay::Changes(changes) => {
                for change in changes {
                    match change {
                        code::Change::Marked { page, by }
                            if by != self.member && self.code_pages.insert(page) =>
                        {
                            self.forget_write_entries(page);
                        }
                        code::Change::Written { page, by }
                            if by != self.member && self.code_pages.remove(&page) =>
                        {
                            self.written_code_pages.push(page);
                        }
                        code::Change::DeviceWrote { first, last } => {
                            self.drop_code_marks_in(first, last);
                        }
                        _ => {}
                    }
                }
            }
            code::Replay::Resync(marks) => {
                self.flush_tlb();
                self.code_pages = marks;
                self.lost_track = true;
            }
        }
    }

    /// Whether this vCPU fell so far behind the others' code writes that it cannot tell
    /// which of its translations are stale: if so (once), the caller drops them all.
    pub fn take_lost_track(&mut self) -> bool {
        std::mem::take(&mut self.lost_track)
    }

    /// Turns the device writes reported so far into written code pages: every code page
    /// they touched loses its mark and joins [`Mmu::take_written_code_pages`]'s list (on
    /// every vCPU sharing this memory).
    pub fn collect_dma_writes(&mut self) {
        for (addr, len) in self.dma.take() {
            let first = addr & PAGE_MASK;
            let last = addr.saturating_add(len - 1) & PAGE_MASK;
            self.drop_code_marks_in(first, last);
            if self.code_share.shared() {
                let change = code::Change::DeviceWrote { first, last };
                self.code_share.publish(change, &mut self.code_seen);
            }
        }
    }

    /// Unmarks the code pages in `first..=last` (page addresses) and queues them for the
    /// code cache.
    fn drop_code_marks_in(&mut self, first: u64, last: u64) {
        let pages = ((last - first) >> PAGE_SHIFT) + 1;
        if pages as usize > self.code_pages.len() {
            // A huge range: cheaper to look at each code page than each page.
            let hit: Vec<u64> = self
                .code_pages
                .iter()
                .copied()
                .filter(|&p| p >= first && p <= last)
                .collect();
            for page in hit {
                self.code_pages.remove(&page);
                self.written_code_pages.push(page);
            }
        } else {
            let mut page = first;
            loop {
                if self.code_pages.remove(&page) {
                    self.written_code_pages.push(page);
                }
                if page >= last {
                    break;
                }
                page += PAGE_SIZE;
            }
        }
    }

    /// Takes the list of code pages written since the last call. Their code marks are
    /// already cleared; the caller drops the blocks translated from them.
    pub fn take_written_code_pages(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.written_code_pages)
    }

    /// Host address of the `len` bytes at `vaddr`, translated for `access`, when they lie
    /// in one RAM page: for bulk work (REP MOVS/STOS) that then touches them through
    /// [`host_access`]. `None` (the caller goes access by access) when they cross a page,
    /// are not RAM, or memory hooks must see every access. A write access drops the
    /// page's translated code as any store does.
    ///
    /// # Errors
    ///
    /// As [`Mmu::translate`], for the page.
    pub fn host_span(
        &mut self,
        vaddr: u64,
        len: u64,
        access: Access,
    ) -> Result<Option<*mut u8>, MemFault> {
        let offset = vaddr & !PAGE_MASK;
        if len == 0 || offset + len > PAGE_SIZE || !self.hooks.is_empty() {
            return Ok(None);
        }
        match self.access_page(vaddr, access) {
            Ok(page) => {
                if access == Access::Write {
                    self.note_code_write(page.paddr);
                }
                // SAFETY: `offset + len` is within the page (checked above).
                Ok(Some(unsafe { page.host_page.add(offset as usize) }))
            }
            Err(MemFault::Unmapped { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads guest memory into `buf` (embedder and loader access, not through hooks), at
    /// linear addresses translated with the current paging state and privilege.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte cannot be read; `buf` is then untouched.
    pub fn read_bytes(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.check_mapped(vaddr, buf.len() as u64, Access::Read)?;
        let mut done = 0;
        while done < buf.len() {
            let addr = vaddr.wrapping_add(done as u64);
            let page = self.access_page(addr, Access::Read)?;
            let offset = (addr & !PAGE_MASK) as usize;
            let n = (ram::PAGE_BYTES - offset).min(buf.len() - done);
            // SAFETY: `host_page` is a live RAM page and `offset + n <= PAGE_BYTES`.
            unsafe { host_access::copy_out(page.host_page.add(offset), &mut buf[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Writes `data` into guest memory (embedder and loader access), at linear addresses
    /// translated with the current paging state and privilege. Code pages written this way
    /// are reported to the code cache like guest stores.
    ///
    /// # Errors
    ///
    /// [`MemFault`] if any byte cannot be written; nothing is written then.
    pub fn write_bytes(&mut self, vaddr: u64, data: &[u8]) -> Result<(), MemFault> {
        self.check_mapped(vaddr, data.len() as u64, Access::Write)?;
        let mut done = 0;
        while done < data.len() {
            let addr = vaddr.wrapping_add(done as u64);
            let page = self.access_page(addr, Access::Write)?;
            self.note_code_write(page.paddr);
            let offset = (addr & !PAGE_MASK) as usize;
            let n = (ram::PAGE_BYTES - offset).min(data.len() - done);
            // SAFETY: `host_page` is a live RAM page and `offset + n <= PAGE_BYTES`.
            unsafe { host_access::copy_in(page.host_page.add(offset), &data[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Translates `vaddr` (paging, canonical check) without touching the TLB.
    fn walk(&mut self, vaddr: u64, access: Access) -> Result<Translation, MemFault> {
        let ok = match self.mode {
            PagingMode::Bits32 | PagingMode::Pae => vaddr <= u64::from(u32::MAX),
            PagingMode::Level5 => paging::is_canonical(vaddr, true),
            PagingMode::Off | PagingMode::Level4 => paging::is_canonical(vaddr, false),
        };
        if !ok {
            return Err(MemFault::NonCanonical {
                addr: vaddr,
                access,
            });
        }
        paging::walk(
            &self.ram,
            &self.paging,
            &self.pdptes,
            self.privilege,
            vaddr,
            access,
        )
        .map_err(|f| MemFault::PageFault {
            addr: f.addr,
            error_code: f.error_code,
        })
    }

    /// The physical and host page for `vaddr`: from the TLB if it holds the page for this
    /// access, otherwise by a walk, after which the TLB is filled (unless hooks are
    /// installed or it is a write to a code page).
    fn access_page(&mut self, vaddr: u64, access: Access) -> Result<Resolved, MemFault> {
        let array = self.tlb.array(access);
        let e = array.entry(vaddr);
        let tag = vaddr & PAGE_MASK;
        if e.tag == tag {
            return Ok(Resolved {
                paddr: e.phys_page & PAGE_MASK | vaddr & !PAGE_MASK,
                host_page: tag.wrapping_add(e.addend) as *mut u8,
                global: e.phys_page & TlbEntry::GLOBAL != 0,
                large: None,
            });
        }
        let t = self.walk(vaddr, access)?;
        let host_page = self.ram.host_page(t.paddr).ok_or(MemFault::Unmapped {
            addr: vaddr,
            access,
        })?;
        let r = Resolved {
            paddr: t.paddr,
            host_page,
            global: t.global,
            large: (t.page_size > PAGE_SIZE).then(|| (vaddr & !(t.page_size - 1), t.page_size)),
        };
        let fill = self.hooks.is_empty()
            && self.locked == Locked::Off
            && !(access == Access::Write && self.is_code_page(r.paddr));
        if fill {
            if let Some((base, size)) = r.large {
                self.note_large_page(base, size);
            }
            self.tlb
                .array_mut(access)
                .fill_with(vaddr, r.paddr, r.host_page, r.global);
        }
        Ok(r)
    }

    /// Widens the large-page range INVLPG checks to cover `base..base + size`.
    fn note_large_page(&mut self, base: u64, size: u64) {
        let mut mask = !(size - 1);
        if let Some((old_base, old_mask)) = self.large_pages {
            mask &= old_mask;
            while old_base & mask != base & mask {
                mask <<= 1;
            }
        }
        self.large_pages = Some((base & mask, mask));
    }

    /// Records a write to physical address `paddr`: if its page holds code, the page loses
    /// its mark (later writes go fast again until code is translated from it anew) and is
    /// queued for the code cache.
    fn note_code_write(&mut self, paddr: u64) {
        let page = paddr & PAGE_MASK;
        if self.code_pages.remove(&page) {
            self.written_code_pages.push(page);
            if self.code_share.shared() {
                let change = code::Change::Written {
                    page,
                    by: self.member,
                };
                self.code_share.publish(change, &mut self.code_seen);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn read_slow<const N: usize>(&mut self, vaddr: u64) -> Result<u64, MemFault> {
        if self.locked != Locked::Off {
            return self.locked_read::<N>(vaddr);
        }
        let offset = (vaddr & !PAGE_MASK) as usize;
        let value = if offset + N > ram::PAGE_BYTES {
            // Crosses a page: translate both pages first, then assemble byte by byte.
            let first = self.access_page(vaddr, Access::Read)?;
            let next = (vaddr & PAGE_MASK).wrapping_add(PAGE_SIZE);
            let second = self.access_page(next, Access::Read)?;
            let mut value = 0u64;
            for i in 0..N {
                let ptr = if offset + i < ram::PAGE_BYTES {
                    // SAFETY: offset + i is inside the first page.
                    unsafe { first.host_page.add(offset + i) }
                } else {
                    // SAFETY: offset + i - PAGE_BYTES < N is inside the second page.
                    unsafe { second.host_page.add(offset + i - ram::PAGE_BYTES) }
                };
                // SAFETY: one byte inside a live RAM page.
                value |= unsafe { host_access::load::<1>(ptr) } << (8 * i);
            }
            value
        } else {
            match self.access_page(vaddr, Access::Read) {
                // SAFETY: all N bytes are inside this live RAM page (no crossing, checked above).
                Ok(page) => unsafe { host_access::load::<N>(page.host_page.add(offset)) },
                Err(MemFault::Unmapped { .. }) if self.mmio.is_some() => {
                    self.mmio_read::<N>(vaddr)?
                }
                Err(e) => return Err(e),
            }
        };
        self.run_hooks(Access::Read, vaddr, N, value);
        Ok(value)
    }

    #[cold]
    #[inline(never)]
    fn write_slow<const N: usize>(&mut self, vaddr: u64, value: u64) -> Result<(), MemFault> {
        if self.locked != Locked::Off {
            return self.locked_write::<N>(vaddr, value);
        }
        self.run_hooks(Access::Write, vaddr, N, value);
        let offset = (vaddr & !PAGE_MASK) as usize;
        if offset + N > ram::PAGE_BYTES {
            // Both pages are checked (and their dirty bits set) before any byte is stored.
            let first = self.access_page(vaddr, Access::Write)?;
            let next = (vaddr & PAGE_MASK).wrapping_add(PAGE_SIZE);
            let second = self.access_page(next, Access::Write)?;
            self.note_code_write(first.paddr);
            self.note_code_write(second.paddr);
            for i in 0..N {
                let ptr = if offset + i < ram::PAGE_BYTES {
                    // SAFETY: offset + i is inside the first page.
                    unsafe { first.host_page.add(offset + i) }
                } else {
                    // SAFETY: offset + i - PAGE_BYTES < N is inside the second page.
                    unsafe { second.host_page.add(offset + i - ram::PAGE_BYTES) }
                };
                // SAFETY: one byte inside a live RAM page.
                unsafe { host_access::store::<1>(ptr, value >> (8 * i)) };
            }
            return Ok(());
        }
        let page = match self.access_page(vaddr, Access::Write) {
            Ok(page) => page,
            Err(MemFault::Unmapped { .. }) if self.mmio.is_some() => {
                return self.mmio_write::<N>(vaddr, value);
            }
            Err(e) => return Err(e),
        };
        self.note_code_write(page.paddr);
        // SAFETY: all N bytes are inside this live RAM page (no crossing, checked above).
        unsafe { host_access::store::<N>(page.host_page.add(offset), value) };
        Ok(())
    }

    /// An `N`-byte read of a physical address that is not RAM: the MMIO bus, or
    /// [`MemFault::Unmapped`] if no device is there.
    fn mmio_read<const N: usize>(&mut self, vaddr: u64) -> Result<u64, MemFault> {
        let paddr = self.walk(vaddr, Access::Read)?.paddr;
        let mut data = [0u8; 8];
        let served = self
            .mmio
            .as_ref()
            .is_some_and(|bus| bus.read(paddr, &mut data[..N]));
        if served {
            Ok(u64::from_le_bytes(data))
        } else {
            Err(MemFault::Unmapped {
                addr: vaddr,
                access: Access::Read,
            })
        }
    }

    /// An `N`-byte write to a physical address that is not RAM (see [`Mmu::mmio_read`]).
    fn mmio_write<const N: usize>(&mut self, vaddr: u64, value: u64) -> Result<(), MemFault> {
        let paddr = self.walk(vaddr, Access::Write)?.paddr;
        let data = value.to_le_bytes();
        let served = self
            .mmio
            .as_ref()
            .is_some_and(|bus| bus.write(paddr, &data[..N]));
        if served {
            Ok(())
        } else {
            Err(MemFault::Unmapped {
                addr: vaddr,
                access: Access::Write,
            })
        }
    }

    /// Starts a LOCK-prefixed read-modify-write (or an XCHG with memory). Until
    /// [`Mmu::end_locked`] every access takes the slow path: the first read of the operand
    /// translates it for writing and remembers the naturally aligned host word holding it
    /// (8 bytes; 16 for CMPXCHG16B) and that word's value; the write of the same operand
    /// then replaces the word with one host compare-exchange, which fails if anything
    /// (another vCPU, a device) changed the word in between. So the update is atomic
    /// against every other access, locked or not, as on x86. Operands one compare-exchange
    /// cannot cover are reported, not written ([`LockedOutcome::NeedsExclusive`]).
    pub fn begin_locked(&mut self) {
        debug_assert_eq!(self.locked, Locked::Off);
        std::mem::swap(&mut self.tlb.read, &mut self.locked_spare.0);
        std::mem::swap(&mut self.tlb.write, &mut self.locked_spare.1);
        self.locked = Locked::Armed;
    }

    /// Ends what [`Mmu::begin_locked`] started and says how the update went. Call it
    /// whether or not the instruction faulted.
    pub fn end_locked(&mut self) -> LockedOutcome {
        std::mem::swap(&mut self.tlb.read, &mut self.locked_spare.0);
        std::mem::swap(&mut self.tlb.write, &mut self.locked_spare.1);
        let outcome = match self.locked {
            Locked::Raced => LockedOutcome::Retry,
            Locked::Unsupported => LockedOutcome::NeedsExclusive,
            _ => LockedOutcome::Done,
        };
        self.locked = Locked::Off;
        outcome
    }

    /// Translates a locked operand at `vaddr` of `size` bytes for writing: its page, or
    /// `None` when it is a device register (the state becomes [`Locked::Device`]).
    fn locked_page(&mut self, vaddr: u64, size: u64) -> Result<Option<Resolved>, MemFault> {
        if (vaddr & !PAGE_MASK) + size > PAGE_SIZE {
            self.locked = Locked::Unsupported;
            return Ok(None);
        }
        // The real write array is parked in `locked_spare` meanwhile: a hit there is the
        // common case (and never a code page); a miss walks with the arrays back in
        // place, so the walk fills them as any write would.
        let e = self.locked_spare.1.entry(vaddr);
        let tag = vaddr & PAGE_MASK;
        if e.tag == tag {
            return Ok(Some(Resolved {
                paddr: e.phys_page & PAGE_MASK | vaddr & !PAGE_MASK,
                host_page: tag.wrapping_add(e.addend) as *mut u8,
                global: e.phys_page & TlbEntry::GLOBAL != 0,
                large: None,
            }));
        }
        let state = std::mem::replace(&mut self.locked, Locked::Off);
        std::mem::swap(&mut self.tlb.read, &mut self.locked_spare.0);
        std::mem::swap(&mut self.tlb.write, &mut self.locked_spare.1);
        let page = self.access_page(vaddr, Access::Write);
        std::mem::swap(&mut self.tlb.read, &mut self.locked_spare.0);
        std::mem::swap(&mut self.tlb.write, &mut self.locked_spare.1);
        self.locked = state;
        match page {
            Ok(page) => Ok(Some(page)),
            Err(MemFault::Unmapped { .. }) if self.mmio.is_some() => {
                self.locked = Locked::Device;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn locked_read<const N: usize>(&mut self, vaddr: u64) -> Result<u64, MemFault> {
        let bits = if N == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * N)) - 1
        };
        let shift = (vaddr & 7) * 8;
        let value = match self.locked {
            Locked::Armed => {
                let Some(page) = self.locked_page(vaddr, N as u64)? else {
                    return match self.locked {
                        Locked::Device => self.mmio_read::<N>(vaddr),
                        _ => Ok(0),
                    };
                };
                if (vaddr & 7) + N as u64 > 8 {
                    self.locked = Locked::Unsupported;
                    return Ok(0);
                }
                let offset = (vaddr & !PAGE_MASK & !7) as usize;
                // SAFETY: an aligned 8-byte word inside a live RAM page.
                let word = unsafe { page.host_page.add(offset) };
                // SAFETY: as above.
                let old = unsafe { host_access::load::<8>(word) };
                self.locked = Locked::Held {
                    vaddr,
                    size: N as u8,
                    paddr: page.paddr,
                    word: word as usize,
                    old: old as u128,
                    wide: false,
                };
                (old >> shift) & bits
            }
            Locked::Held {
                vaddr: v,
                size,
                old,
                wide: false,
                ..
            } if v == vaddr && size as usize == N => (old as u64 >> shift) & bits,
            Locked::Device => return self.mmio_read::<N>(vaddr),
            _ => {
                self.locked = Locked::Unsupported;
                return Ok(0);
            }
        };
        self.run_hooks(Access::Read, vaddr, N, value);
        Ok(value)
    }

    fn locked_write<const N: usize>(&mut self, vaddr: u64, value: u64) -> Result<(), MemFault> {
        let Locked::Held {
            vaddr: v,
            size,
            paddr,
            word,
            old,
            wide: false,
        } = self.locked
        else {
            if self.locked == Locked::Device {
                return self.mmio_write::<N>(vaddr, value);
            }
            // A write that was not read first, or of another place: not one word.
            self.locked = Locked::Unsupported;
            return Ok(());
        };
        if v != vaddr || size as usize != N {
            self.locked = Locked::Unsupported;
            return Ok(());
        }
        let bits = if N == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * N)) - 1
        };
        let shift = (vaddr & 7) * 8;
        let old = old as u64;
        let new = old & !(bits << shift) | (value & bits) << shift;
        // SAFETY: `word` is the aligned 8-byte word in a live RAM page found by the read.
        if unsafe { host_access::compare_exchange_u64(word as *mut u8, old, new) } {
            self.note_code_write(paddr);
            self.run_hooks(Access::Write, vaddr, N, value);
            self.locked = Locked::Stored;
        } else {
            self.locked = Locked::Raced;
        }
        Ok(())
    }

    fn locked_read_u128(&mut self, vaddr: u64) -> Result<u128, MemFault> {
        if self.locked != Locked::Armed || vaddr & 15 != 0 {
            self.locked = Locked::Unsupported;
            return Ok(0);
        }
        let Some(page) = self.locked_page(vaddr, 16)? else {
            // No device takes 16-byte locked accesses; treat it as unsupported.
            self.locked = Locked::Unsupported;
            return Ok(0);
        };
        let word = page.host_page as usize + (vaddr & !PAGE_MASK) as usize;
        // SAFETY: two aligned 8-byte words inside a live RAM page. The halves may tear;
        // the 16-byte compare-exchange of the write checks the whole value.
        let old = unsafe {
            host_access::load::<8>(word as *const u8) as u128
                | (host_access::load::<8>((word + 8) as *const u8) as u128) << 64
        };
        self.locked = Locked::Held {
            vaddr,
            size: 16,
            paddr: page.paddr,
            word,
            old,
            wide: true,
        };
        self.run_hooks(Access::Read, vaddr, 8, old as u64);
        self.run_hooks(Access::Read, vaddr + 8, 8, (old >> 64) as u64);
        Ok(old)
    }

    fn locked_write_u128(&mut self, vaddr: u64, value: u128) -> Result<(), MemFault> {
        match self.locked {
            Locked::Held {
                vaddr: v,
                paddr,
                word,
                old,
                wide: true,
                ..
            } if v == vaddr => {
                // SAFETY: `word` is the 16-byte aligned operand in a live RAM page.
                if unsafe { host_access::compare_exchange_u128(word as *mut u8, old, value) } {
                    self.note_code_write(paddr);
                    self.run_hooks(Access::Write, vaddr, 8, value as u64);
                    self.run_hooks(Access::Write, vaddr + 8, 8, (value >> 64) as u64);
                    self.locked = Locked::Stored;
                } else {
                    self.locked = Locked::Raced;
                }
            }
            _ => self.locked = Locked::Unsupported,
        }
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
    fn device_writes_drop_the_code_pages_they_touch() {
        let mut m = mmu_with(0, 0x10_0000);
        m.mark_code_page(0x3000);
        m.mark_code_page(0x9000);
        let dma = m.dma_writes();
        assert!(!m.memory_changed());
        // Touches 0x2000..=0x3000 (one code page) and 0x8000 (none).
        dma.wrote(0x2ff0, 0x20);
        dma.wrote(0x8000, 0x10);
        assert!(m.memory_changed());
        m.collect_dma_writes();
        assert!(!m.memory_changed());
        assert!(m.code_written());
        assert_eq!(m.take_written_code_pages(), vec![0x3000]);
        assert!(!m.is_code_page(0x3000));
        assert!(m.is_code_page(0x9000));
        // A range far larger than the set of code pages takes the other path.
        dma.wrote(0, 0x10_0000);
        m.collect_dma_writes();
        assert_eq!(m.take_written_code_pages(), vec![0x9000]);
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

    mod paged {
        use super::super::*;
        use paging::bits::*;
        use vm_memory::{Bytes, GuestAddress};

        const PRESENT: u64 = 1;
        const RW: u64 = 2;
        const US: u64 = 4;
        const PS: u64 = 1 << 7;
        const G: u64 = 1 << 8;
        const PRU: u64 = PRESENT | RW | US;
        const ROOT: u64 = 0x10_0000;

        /// An Mmu over 16 MiB with 4-level tables at ROOT whose upper levels are user and
        /// writable; `map` writes leaves directly into RAM (bypassing the TLB).
        struct Setup {
            mmu: Mmu,
            next: u64,
        }

        impl Setup {
            fn new() -> Self {
                let mut ram = GuestRam::new();
                ram.add_region(0, 16 << 20).unwrap();
                let mut s = Self {
                    mmu: Mmu::new(ram),
                    next: ROOT + 0x1000,
                };
                s.enable(0, false);
                s
            }
            fn enable(&mut self, extra_cr4: u64, pcide: bool) {
                let ctx = PagingContext {
                    cr0: CR0_PG | CR0_WP | 1,
                    cr3: ROOT | if pcide { 1 } else { 0 },
                    cr4: CR4_PAE | extra_cr4,
                    efer: EFER_LME | EFER_LMA | EFER_NXE,
                };
                self.mmu.set_paging(ctx).unwrap();
            }
            fn w64(&self, a: u64, v: u64) {
                self.mmu
                    .ram()
                    .memory()
                    .unwrap()
                    .write_obj(v, GuestAddress(a))
                    .unwrap();
            }
            fn r64(&self, a: u64) -> u64 {
                self.mmu
                    .ram()
                    .memory()
                    .unwrap()
                    .read_obj(GuestAddress(a))
                    .unwrap()
            }
            /// Maps `va` with a leaf at `level` (1: 4 KiB, 2: 2 MiB); returns the leaf address.
            fn map(&mut self, va: u64, level: u32, leaf: u64) -> u64 {
                let mut table = ROOT;
                for l in (level..=4).rev() {
                    let addr = table + ((va >> (12 + 9 * (l - 1))) & 0x1ff) * 8;
                    if l == level {
                        self.w64(addr, leaf);
                        return addr;
                    }
                    let e = self.r64(addr);
                    table = if e & PRESENT != 0 {
                        e & 0xff_ffff_f000
                    } else {
                        let t = self.next;
                        self.next += 0x1000;
                        self.w64(addr, t | PRU);
                        t
                    };
                }
                unreachable!()
            }
            fn phys_write(&self, a: u64, v: u64) {
                self.w64(a, v);
            }
        }

        const VA: u64 = 0x0000_4000_0012_3000;

        #[test]
        fn tlb_keeps_a_stale_translation_until_invlpg() {
            let mut s = Setup::new();
            let leaf = s.map(VA, 1, 0x5000 | PRU);
            s.phys_write(0x5008, 0x1111);
            s.phys_write(0x6008, 0x2222);
            assert_eq!(s.mmu.read::<8>(VA + 8).unwrap(), 0x1111);
            s.w64(leaf, 0x6000 | PRU);
            assert_eq!(s.mmu.read::<8>(VA + 8).unwrap(), 0x1111, "TLB hit");
            s.mmu.invlpg(VA + 0xfff);
            assert_eq!(s.mmu.read::<8>(VA + 8).unwrap(), 0x2222);
            s.mmu.write::<8>(VA + 16, 7).unwrap();
            assert_eq!(s.r64(0x6010), 7);
            assert_eq!(s.r64(leaf) & 0x60, 0x60, "A and D set through the Mmu");
        }

        #[test]
        fn cr3_writes_keep_global_entries_only_with_pge() {
            let mut s = Setup::new();
            s.enable(CR4_PGE, false);
            let va2 = VA + 0x1000;
            let l1 = s.map(VA, 1, 0x5000 | PRU | G);
            let l2 = s.map(va2, 1, 0x7000 | PRU);
            s.phys_write(0x5000, 1);
            s.phys_write(0x6000, 2);
            s.phys_write(0x7000, 3);
            s.phys_write(0x8000, 4);
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1);
            assert_eq!(s.mmu.read::<8>(va2).unwrap(), 3);
            s.w64(l1, 0x6000 | PRU | G);
            s.w64(l2, 0x8000 | PRU);
            s.mmu.write_cr3(ROOT).unwrap();
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1, "global entry survives");
            assert_eq!(s.mmu.read::<8>(va2).unwrap(), 4, "non-global entry flushed");
            // Clearing CR4.PGE flushes everything.
            s.enable(0, false);
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 2);
        }

        #[test]
        fn privilege_classes_never_share_entries() {
            let mut s = Setup::new();
            s.map(VA, 1, 0x5000 | PRESENT | RW); // supervisor page
            s.mmu.read::<8>(VA).unwrap();
            s.mmu.set_privilege(3, false);
            assert_eq!(
                s.mmu.read::<8>(VA),
                Err(MemFault::PageFault {
                    addr: VA,
                    error_code: 5
                })
            );
            s.mmu.set_privilege(0, false);
            s.mmu.read::<8>(VA).unwrap();
            // SMAP: a user page is readable by the supervisor only with AC, explicitly.
            let va2 = VA + 0x1000;
            s.map(va2, 1, 0x6000 | PRU);
            s.enable(CR4_SMAP, false);
            s.mmu.set_privilege(0, true);
            s.mmu.read::<8>(va2).unwrap();
            s.mmu.set_privilege(0, false); // CLAC
            assert_eq!(
                s.mmu.read::<8>(va2),
                Err(MemFault::PageFault {
                    addr: va2,
                    error_code: 1
                })
            );
            s.mmu.set_privilege(0, true); // STAC
            s.mmu.read::<8>(va2).unwrap();
            s.mmu.set_implicit_supervisor(true);
            assert_eq!(
                s.mmu.read::<8>(va2),
                Err(MemFault::PageFault {
                    addr: va2,
                    error_code: 1
                })
            );
            s.mmu.set_implicit_supervisor(false);
            s.mmu.set_privilege(3, false);
            s.mmu.write::<8>(va2, 5).unwrap();
            assert_eq!(s.mmu.read::<8>(va2).unwrap(), 5);
        }

        #[test]
        fn a_read_entry_never_lets_a_write_through() {
            let mut s = Setup::new();
            let leaf = s.map(VA, 1, 0x5000 | PRESENT | US);
            s.mmu.set_privilege(3, false);
            s.mmu.read::<8>(VA).unwrap();
            assert_eq!(
                s.mmu.write::<8>(VA, 1),
                Err(MemFault::PageFault {
                    addr: VA,
                    error_code: 7
                })
            );
            assert_eq!(s.r64(leaf) & 0x40, 0, "no dirty bit for a faulting write");
            assert_eq!(s.r64(0x5000), 0);
        }

        #[test]
        fn invlpg_anywhere_in_a_large_page_drops_all_its_slices() {
            let mut s = Setup::new();
            let base = 0x0000_0000_4020_0000u64;
            let pde = s.map(base, 2, 0x20_0000 | PS | PRU);
            s.phys_write(0x20_1000, 1);
            s.phys_write(0x20_5000, 2);
            s.phys_write(0x40_1000, 3);
            s.phys_write(0x40_5000, 4);
            assert_eq!(s.mmu.read::<8>(base + 0x1000).unwrap(), 1);
            assert_eq!(s.mmu.read::<8>(base + 0x5000).unwrap(), 2);
            s.w64(pde, 0x40_0000 | PS | PRU);
            s.mmu.invlpg(base + 0x10_0000);
            assert_eq!(s.mmu.read::<8>(base + 0x1000).unwrap(), 3);
            assert_eq!(s.mmu.read::<8>(base + 0x5000).unwrap(), 4);
        }

        #[test]
        fn pcid_no_flush_keeps_entries_only_for_the_same_pcid() {
            let mut s = Setup::new();
            s.enable(CR4_PCIDE, true);
            assert_eq!(s.mmu.paging().pcid(), 1);
            let leaf = s.map(VA, 1, 0x5000 | PRU);
            s.phys_write(0x5000, 1);
            s.phys_write(0x6000, 2);
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1);
            s.w64(leaf, 0x6000 | PRU);
            s.mmu.write_cr3(ROOT | 1 | CR3_NO_FLUSH).unwrap();
            assert_eq!(s.mmu.paging().cr3, ROOT | 1, "bit 63 is not stored");
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1, "same PCID, no flush");
            s.mmu.invpcid(InvpcidKind::SingleContext, 2, 0).unwrap();
            assert_eq!(
                s.mmu.read::<8>(VA).unwrap(),
                1,
                "other PCID: nothing to drop"
            );
            s.mmu.invpcid(InvpcidKind::Address, 1, VA).unwrap();
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 2);
            s.w64(leaf, 0x5000 | PRU);
            s.mmu.write_cr3(ROOT | 2 | CR3_NO_FLUSH).unwrap();
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1, "new PCID: entries dropped");
            assert!(s
                .mmu
                .invpcid(InvpcidKind::AllExceptGlobal, 0x1000, 0)
                .is_err());
            assert!(s.mmu.invpcid(InvpcidKind::Address, 2, 1 << 47).is_err());
            assert_eq!(
                s.mmu.write_cr3(1 << 40),
                Err(PagingError::ReservedCr3 { value: 1 << 40 })
            );
        }

        #[test]
        fn mode_bit_changes_flush_everything() {
            let mut s = Setup::new();
            let leaf = s.map(VA, 1, 0x5000 | PRESENT | RW);
            s.phys_write(0x5000, 1);
            s.phys_write(0x6000, 2);
            for change in [CR4_SMEP, CR4_SMAP, CR4_PGE] {
                s.w64(leaf, 0x5000 | PRESENT | RW);
                s.enable(0, false);
                assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1);
                s.w64(leaf, 0x6000 | PRESENT | RW);
                s.enable(change, false);
                assert_eq!(s.mmu.read::<8>(VA).unwrap(), 2, "CR4 bit {change:#x}");
            }
            s.w64(leaf, 0x5000 | PRESENT | RW);
            let mut ctx = *s.mmu.paging();
            ctx.efer &= !EFER_NXE;
            s.mmu.set_paging(ctx).unwrap();
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 1, "EFER.NXE change flushes");
            s.w64(leaf, 0x6000 | PRESENT | RW);
            ctx.cr0 &= !CR0_WP;
            s.mmu.set_paging(ctx).unwrap();
            assert_eq!(s.mmu.read::<8>(VA).unwrap(), 2, "CR0.WP change flushes");
        }

        #[test]
        fn non_canonical_addresses_fault_distinctly() {
            let mut s = Setup::new();
            assert_eq!(
                s.mmu.read::<1>(0x0000_8000_0000_0000),
                Err(MemFault::NonCanonical {
                    addr: 0x0000_8000_0000_0000,
                    access: Access::Read
                })
            );
            // An access running off the top of the lower half faults on its second page.
            s.map(0x0000_7fff_ffff_f000, 1, 0x5000 | PRU);
            assert_eq!(
                s.mmu.read::<8>(0x0000_7fff_ffff_fffc),
                Err(MemFault::NonCanonical {
                    addr: 0x0000_8000_0000_0000,
                    access: Access::Read
                })
            );
        }

        #[test]
        fn code_marks_and_writes_use_physical_pages() {
            let mut s = Setup::new();
            let alias = VA + 0x10_0000;
            s.map(VA, 1, 0x5000 | PRU);
            s.map(alias, 1, 0x5000 | PRU);
            assert_eq!(s.mmu.mark_code_at(VA + 0x10).unwrap(), 0x5000);
            assert!(s.mmu.is_code_page(0x5000));
            s.mmu.write::<4>(alias + 4, 0x90).unwrap();
            assert_eq!(s.mmu.take_written_code_pages(), vec![0x5000]);
            let mut buf = [0u8; 8];
            assert_eq!(s.mmu.fetch_code(VA, &mut buf), 8);
            assert_eq!(buf[4], 0x90);
        }

        #[test]
        fn guest_pointers_outside_ram_never_reach_the_host() {
            let mut s = Setup::new();
            // A leaf mapping a frame beyond RAM: unmapped, not a host access.
            s.map(VA, 1, 0xf0_0000_0000 | PRU);
            assert_eq!(
                s.mmu.read::<8>(VA),
                Err(MemFault::Unmapped {
                    addr: VA,
                    access: Access::Read
                })
            );
            // A table pointer beyond RAM reads as all ones: reserved bits, #PF with RSVD.
            let va2 = 0x0000_6000_0000_0000u64;
            s.w64(ROOT + ((va2 >> 39) & 0x1ff) * 8, 0x80_0000_0000 | PRU);
            assert_eq!(
                s.mmu.write::<8>(va2, 1),
                Err(MemFault::PageFault {
                    addr: va2,
                    error_code: 0b1011
                })
            );
            // PAE with a PDPT outside RAM: the mode change is refused and nothing changes.
            let before = *s.mmu.paging();
            let pae = PagingContext {
                cr0: CR0_PG | 1,
                cr3: 0xfff0_0000,
                cr4: CR4_PAE,
                efer: 0,
            };
            assert!(matches!(
                s.mmu.set_paging(pae),
                Err(PagingError::ReservedPdpte { .. })
            ));
            assert_eq!(*s.mmu.paging(), before);
        }
    }

    #[test]
    fn mmio_reaches_devices_and_never_enters_the_tlb() {
        use std::sync::{Arc, Mutex};
        #[derive(Default)]
        struct Regs {
            value: u32,
            writes: usize,
        }
        impl BusDevice for Regs {
            fn read(&mut self, offset: u64, data: &mut [u8]) {
                let v = self.value.wrapping_add(offset as u32).to_le_bytes();
                data.copy_from_slice(&v[..data.len()]);
            }
            fn write(&mut self, _offset: u64, data: &[u8]) {
                let mut b = [0u8; 4];
                b[..data.len()].copy_from_slice(data);
                self.value = u32::from_le_bytes(b);
                self.writes += 1;
            }
        }
        let regs = Arc::new(Mutex::new(Regs::default()));
        let mut bus = Bus::new();
        bus.insert(0xfee0_0000, 0x1000, regs.clone()).unwrap();
        let mut ram = GuestRam::new();
        ram.add_region(0, 0x1000).unwrap();
        let mut m = Mmu::new(ram);
        assert!(m.read::<4>(0xfee0_0000).is_err(), "no bus yet: unassigned");
        m.set_mmio_bus(Arc::new(bus));
        m.write::<4>(0xfee0_0000, 0x1234).unwrap();
        m.write::<4>(0xfee0_0000, 0x5678).unwrap();
        assert_eq!(
            regs.lock().unwrap().writes,
            2,
            "both writes reached the device"
        );
        assert_eq!(m.read::<4>(0xfee0_0010).unwrap(), 0x5688);
        assert_eq!(m.read::<2>(0xfee0_0000).unwrap(), 0x5678);
        assert!(matches!(
            m.read::<4>(0xfef0_0000),
            Err(MemFault::Unmapped { .. })
        ));
    }

    #[test]
    fn a_sibling_shares_ram_and_hears_of_code_written_by_the_other() {
        let mut a = mmu_with(0x1000, 0x4000);
        a.mark_code_page(0x1000);
        let mut b = a.sibling();
        assert!(
            b.is_code_page(0x1000),
            "siblings start with their creator's marks"
        );
        // B translates code from 0x2000: A must stop caching writes to it.
        a.write::<8>(0x2000, 1).unwrap();
        b.mark_code_page(0x2000);
        assert!(a.memory_changed());
        a.catch_up();
        assert!(a.is_code_page(0x2000));
        // A writes B's code page: A hears of it at once, B at its next catch-up.
        a.write::<8>(0x2008, 0x90).unwrap();
        assert_eq!(a.take_written_code_pages(), vec![0x2000]);
        assert!(b.memory_changed());
        b.catch_up();
        assert_eq!(b.take_written_code_pages(), vec![0x2000]);
        assert_eq!(b.read::<8>(0x2008).unwrap(), 0x90, "one RAM");
        assert!(!b.memory_changed());
        // Device writes collected by one reach the other.
        a.dma_writes().wrote(0x1000, 16);
        b.catch_up();
        assert_eq!(b.take_written_code_pages(), vec![0x1000]);
        a.catch_up();
        assert_eq!(a.take_written_code_pages(), vec![0x1000]);
    }

    #[test]
    fn a_locked_update_is_one_compare_exchange_that_fails_if_the_word_changed() {
        let mut a = mmu_with(0x1000, 0x1000);
        let mut b = a.sibling();
        a.write::<8>(0x1100, 0x1111_2222_3333_4444).unwrap();
        a.begin_locked();
        let old = a.read::<4>(0x1104).unwrap();
        a.write::<4>(0x1104, old + 1).unwrap();
        assert_eq!(a.end_locked(), LockedOutcome::Done);
        assert_eq!(a.read::<8>(0x1100).unwrap(), 0x1111_2223_3333_4444);
        // Another vCPU changes a byte of the same word between the read and the write.
        a.begin_locked();
        let old = a.read::<2>(0x1100).unwrap();
        b.write::<1>(0x1107, 0x99).unwrap();
        a.write::<2>(0x1100, old + 1).unwrap();
        assert_eq!(a.end_locked(), LockedOutcome::Retry);
        assert_eq!(
            a.read::<8>(0x1100).unwrap(),
            0x9911_2223_3333_4444,
            "nothing stored"
        );
        // An operand straddling two words is not written at all.
        a.begin_locked();
        let old = a.read::<4>(0x1106).unwrap();
        a.write::<4>(0x1106, old ^ 0xffff_ffff).unwrap();
        assert_eq!(a.end_locked(), LockedOutcome::NeedsExclusive);
        assert_eq!(a.read::<8>(0x1100).unwrap(), 0x9911_2223_3333_4444);
        // 16 bytes, aligned.
        a.begin_locked();
        let old = a.read_u128(0x1200).unwrap();
        a.write_u128(0x1200, old | 1 << 100).unwrap();
        assert_eq!(a.end_locked(), LockedOutcome::Done);
        assert_eq!(a.read_u128(0x1200).unwrap(), 1 << 100);
        // The TLB works again afterwards.
        a.write::<8>(0x1300, 5).unwrap();
        assert_eq!(a.read::<8>(0x1300).unwrap(), 5);
    }
}
