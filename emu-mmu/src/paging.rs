//! x86 paging: the page walker for every paging mode, and the state the CPU drives it with.
//!
//! [`walk`] translates one linear address the way the hardware does:
//!
//! * **32-bit paging** (CR0.PG, !CR4.PAE): two levels of 4-byte entries, 4 MiB pages when
//!   CR4.PSE, with PSE-36 (PDE bits 20:13 are physical-address bits 39:32; bit 21 is
//!   reserved). No execute-disable bit exists in this mode.
//! * **PAE paging** (CR4.PAE, !EFER.LMA): four PDPTEs loaded into the processor when CR3 is
//!   written (and on the CR0/CR4 changes the SDM lists), then 8-byte PDEs (2 MiB pages) and
//!   PTEs. The walk uses the loaded PDPTEs, never the copies in memory, as hardware does.
//! * **4-level and 5-level paging** (EFER.LMA, CR4.LA57): 2 MiB and 1 GiB pages.
//!
//! Permissions follow SDM vol. 3 §4.6: U/S for user-mode accesses (CPL 3 and not an implicit
//! supervisor access), R/W with CR0.WP for supervisor writes, execute-disable when EFER.NXE,
//! SMEP and SMAP (with RFLAGS.AC for explicit accesses; implicit supervisor accesses such as
//! descriptor-table reads are never allowed to touch user pages under SMAP). Reserved bits
//! include physical-address bits at and above [`MAXPHYADDR`], XD when EFER.NXE is clear and
//! the PS bit where a level cannot map a page. Protection keys are not supported.
//!
//! Accessed and dirty bits are set only after the whole walk and the permission checks
//! succeeded (a faulting walk leaves memory untouched), each with a compare-exchange of the
//! whole entry in guest RAM; if the entry changed since it was read (another vCPU or a device
//! wrote it) the walk starts again. A is set in every entry used; D only in the leaf, and only
//! for writes.
//!
//! **Page tables outside RAM.** A page-table read of a physical address that is not RAM
//! returns all ones, what an unassigned PC bus returns for a read nobody claims, and the
//! entry is then interpreted literally: in PAE and long mode all-ones has reserved bits set
//! (bits 51:40) so the walk ends in a #PF with RSVD; in 32-bit paging it is a present entry
//! (with PSE, a 4 MiB page with reserved bit 21, so again RSVD). PDPTE loads from outside RAM
//! read all ones and fail the reserved-bit check (#GP on the MOV). Accessed/dirty updates to
//! such entries are dropped (all-ones already has A and D set, so none is attempted). No host
//! memory outside guest RAM is ever touched: entries are read only through
//! [`GuestRam::host_page`] pointers.

use crate::host_access;
use crate::{Access, GuestRam, PAGE_SIZE};

/// Physical-address width, matching CPUID 0x80000008 EAX[7:0].
pub const MAXPHYADDR: u32 = 40;

/// Bit masks of the control registers and EFER that paging depends on.
pub mod bits {
    /// CR0.WP: supervisor writes honour read-only pages.
    pub const CR0_WP: u64 = 1 << 16;
    /// CR0.PG: paging enabled.
    pub const CR0_PG: u64 = 1 << 31;
    /// CR4.PSE: 4 MiB pages in 32-bit paging.
    pub const CR4_PSE: u64 = 1 << 4;
    /// CR4.PAE: PAE (or, with EFER.LMA, long-mode) paging.
    pub const CR4_PAE: u64 = 1 << 5;
    /// CR4.PGE: global pages.
    pub const CR4_PGE: u64 = 1 << 7;
    /// CR4.LA57: 5-level paging.
    pub const CR4_LA57: u64 = 1 << 12;
    /// CR4.PCIDE: CR3[11:0] is the process-context identifier.
    pub const CR4_PCIDE: u64 = 1 << 17;
    /// CR4.SMEP: supervisor-mode execution prevention.
    pub const CR4_SMEP: u64 = 1 << 20;
    /// CR4.SMAP: supervisor-mode access prevention.
    pub const CR4_SMAP: u64 = 1 << 21;
    /// EFER.LME: long mode enable.
    pub const EFER_LME: u64 = 1 << 8;
    /// EFER.LMA: long mode active (the CPU sets it when paging is enabled with LME).
    pub const EFER_LMA: u64 = 1 << 10;
    /// EFER.NXE: execute-disable bit enabled.
    pub const EFER_NXE: u64 = 1 << 11;
    /// CR3 bit 63 in a MOV to CR3 with CR4.PCIDE: do not flush the new PCID's entries.
    pub const CR3_NO_FLUSH: u64 = 1 << 63;
}

/// Page-fault error-code bits (SDM vol. 3 §4.7).
pub mod pf {
    /// The fault was a protection violation (0: a not-present entry).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was a user-mode access.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch (reported only with SMEP or PAE/long-mode NXE).
    pub const ID: u32 = 1 << 4;
    /// Protection-key violation (never: protection keys are not supported).
    pub const PK: u32 = 1 << 5;
    /// Shadow-stack access (never).
    pub const SS: u32 = 1 << 6;
    /// SGX-specific access-control violation (never).
    pub const SGX: u32 = 1 << 15;
}

// Paging-structure entry bits.
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const XD: u64 = 1 << 63;
/// Physical-address bits MAXPHYADDR-1..12 of an 8-byte entry.
const ADDR_MASK: u64 = ((1 << MAXPHYADDR) - 1) & !(PAGE_SIZE - 1);
/// Bits 51:MAXPHYADDR, reserved in long-mode entries.
const LONG_HIGH_RSVD: u64 = ((1 << 52) - 1) & !((1 << MAXPHYADDR) - 1);
/// Bits 62:MAXPHYADDR, reserved in PAE entries.
const PAE_HIGH_RSVD: u64 = ((1 << 63) - 1) & !((1 << MAXPHYADDR) - 1);
/// Bits 20:13 of a 2 MiB leaf (between PAT and the frame address).
const RSVD_2M: u64 = 0x001f_e000;
/// Bits 29:13 of a 1 GiB leaf.
const RSVD_1G: u64 = 0x3fff_e000;
/// Reserved bits of a PAE PDPTE besides 63:MAXPHYADDR: 2:1 and 8:5.
const PDPTE_RSVD: u64 = 0x1e6 | PAE_HIGH_RSVD | XD;

/// The paging mode selected by CR0, CR4 and EFER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// Paging disabled: linear addresses are physical.
    Off,
    /// 32-bit (two-level) paging.
    Bits32,
    /// PAE (three-level) paging.
    Pae,
    /// 4-level long-mode paging (48-bit linear addresses).
    Level4,
    /// 5-level long-mode paging (57-bit linear addresses).
    Level5,
}

/// The control-register state paging depends on, as the CPU holds it.
///
/// Registers are passed whole; only the bits in [`bits`] matter here. The CPU keeps
/// EFER.LMA up to date (it becomes 1 when CR0.PG is set with EFER.LME and CR4.PAE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PagingContext {
    /// CR0.
    pub cr0: u64,
    /// CR3 as stored (without the no-flush bit).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

impl PagingContext {
    /// The paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & bits::CR0_PG == 0 {
            PagingMode::Off
        } else if self.cr4 & bits::CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & bits::EFER_LMA == 0 {
            PagingMode::Pae
        } else if self.cr4 & bits::CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }

    /// The current PCID (CR3[11:0] when CR4.PCIDE, otherwise 0).
    pub fn pcid(&self) -> u16 {
        if self.cr4 & bits::CR4_PCIDE != 0 {
            (self.cr3 & 0xfff) as u16
        } else {
            0
        }
    }

    fn nxe(&self) -> bool {
        self.efer & bits::EFER_NXE != 0
    }
}

/// Who is accessing memory, for the U/S, SMEP and SMAP checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Privilege {
    /// Current privilege level (0-3).
    pub cpl: u8,
    /// RFLAGS.AC (lets explicit supervisor accesses reach user pages under SMAP).
    pub ac: bool,
    /// The access is an implicit supervisor access (descriptor tables, the TSS, the stack
    /// during event delivery), which is a supervisor access whatever the CPL.
    pub implicit_supervisor: bool,
}

impl Privilege {
    /// Whether accesses are user-mode accesses (CPL 3 and not implicit supervisor).
    pub fn is_user(&self) -> bool {
        self.cpl == 3 && !self.implicit_supervisor
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the accessed byte.
    pub paddr: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB; 4 KiB with paging off).
    pub page_size: u64,
    /// The page is a user page (U/S set at every level).
    pub user: bool,
    /// The page is writable (R/W set at every level).
    pub writable: bool,
    /// Instructions may be fetched (no XD at any level, or NXE clear).
    pub executable: bool,
    /// The page is global (G in the leaf and CR4.PGE).
    pub global: bool,
}

/// A page fault: the guest sees #PF with CR2 = `addr` and this error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address.
    pub addr: u64,
    /// The error code (bits in [`pf`]).
    pub error_code: u32,
}

/// Errors from loading paging state (MOV to CR0/CR3/CR4); the CPU raises #GP(0) for each
/// and leaves the register unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    /// A present PAE PDPTE has a reserved bit set (or the PDPT is outside RAM and reads as
    /// all ones).
    #[error("PDPTE {index} ({value:#x}) has reserved bits set")]
    ReservedPdpte {
        /// Which of the four PDPTEs.
        index: usize,
        /// Its value.
        value: u64,
    },
    /// A long-mode CR3 value has bits set at or above MAXPHYADDR (other than the no-flush
    /// bit 63 with CR4.PCIDE).
    #[error("CR3 value {value:#x} has reserved bits set")]
    ReservedCr3 {
        /// The value written.
        value: u64,
    },
    /// INVPCID with a non-canonical address (type 0).
    #[error("INVPCID address {addr:#x} is not canonical")]
    NonCanonical {
        /// The address.
        addr: u64,
    },
    /// PCIDs are 12 bits; INVPCID with a larger one is #GP.
    #[error("PCID {pcid:#x} is out of range")]
    BadPcid {
        /// The PCID.
        pcid: u64,
    },
}

/// Whether `vaddr` is canonical: 48-bit (or 57-bit with `la57`) sign-extended.
pub fn is_canonical(vaddr: u64, la57: bool) -> bool {
    let shift = if la57 { 7 } else { 16 };
    ((vaddr << shift) as i64 >> shift) as u64 == vaddr
}

/// Reads a paging-structure entry of 4 or 8 bytes; outside RAM it reads as all ones.
fn read_entry(ram: &GuestRam, paddr: u64, wide: bool) -> u64 {
    let Some(page) = ram.host_page(paddr) else {
        return if wide { u64::MAX } else { u32::MAX as u64 };
    };
    let offset = (paddr & (PAGE_SIZE - 1)) as usize;
    // SAFETY: `page` is a live RAM page and the entry is naturally aligned (tables are
    // 4 KiB or 32-byte aligned and indices are multiplied by the entry size), so all of it
    // lies inside that page.
    unsafe {
        if wide {
            host_access::load::<8>(page.add(offset))
        } else {
            host_access::load::<4>(page.add(offset))
        }
    }
}

/// Replaces entry `old` with `new` if it still holds `old`. Returns `false` if it changed.
/// Outside RAM the write is dropped (and reported as done).
fn update_entry(ram: &GuestRam, paddr: u64, wide: bool, old: u64, new: u64) -> bool {
    let Some(page) = ram.host_page(paddr) else {
        return true;
    };
    let offset = (paddr & (PAGE_SIZE - 1)) as usize;
    // SAFETY: as in `read_entry`: a naturally aligned entry inside a live RAM page.
    unsafe {
        if wide {
            host_access::compare_exchange_u64(page.add(offset), old, new)
        } else {
            host_access::compare_exchange_u32(page.add(offset), old as u32, new as u32)
        }
    }
}

/// Loads the four PAE PDPTEs from the 32-byte aligned table at CR3[31:5], as a MOV to CR3
/// (or a paging-mode change into PAE paging) does.
///
/// # Errors
///
/// [`PagingError::ReservedPdpte`] if a present PDPTE has reserved bits set.
pub fn load_pdptes(ram: &GuestRam, cr3: u64) -> Result<[u64; 4], PagingError> {
    let base = cr3 & 0xffff_ffe0;
    let mut pdptes = [0u64; 4];
    for (index, slot) in pdptes.iter_mut().enumerate() {
        let value = read_entry(ram, base + index as u64 * 8, true);
        if value & P != 0 && value & PDPTE_RSVD != 0 {
            return Err(PagingError::ReservedPdpte { index, value });
        }
        *slot = value;
    }
    Ok(pdptes)
}

/// Translates linear address `vaddr` for `access` by `privilege` under `ctx`.
///
/// `pdptes` are the PDPTEs loaded by [`load_pdptes`] (used in PAE mode only). With paging
/// off the translation is the identity. Linear addresses are not checked for canonicality
/// here (that is a #GP, checked before the walk); in 32-bit and PAE paging only the low
/// 32 bits are used.
///
/// # Errors
///
/// A [`PageFault`] with the architectural error code if the translation is not present,
/// has reserved bits set or does not permit the access. No A/D bit is set then.
pub fn walk(
    ram: &GuestRam,
    ctx: &PagingContext,
    pdptes: &[u64; 4],
    privilege: Privilege,
    vaddr: u64,
    access: Access,
) -> Result<Translation, PageFault> {
    loop {
        if let Some(result) = walk_once(ram, ctx, pdptes, privilege, vaddr, access) {
            return result;
        }
        // An entry changed under us while setting A/D bits: walk again.
    }
}

/// The entries one walk used: (physical address, value read).
struct Path {
    entries: [(u64, u64); 5],
    len: usize,
}

impl Path {
    fn push(&mut self, addr: u64, value: u64) {
        self.entries[self.len] = (addr, value);
        self.len += 1;
    }
}

/// One walk; `None` if an A/D update lost a race and the walk must be redone.
fn walk_once(
    ram: &GuestRam,
    ctx: &PagingContext,
    pdptes: &[u64; 4],
    privilege: Privilege,
    vaddr: u64,
    access: Access,
) -> Option<Result<Translation, PageFault>> {
    let mode = ctx.mode();
    if mode == PagingMode::Off {
        return Some(Ok(Translation {
            paddr: vaddr,
            page_size: PAGE_SIZE,
            user: true,
            writable: true,
            executable: true,
            global: false,
        }));
    }
    let user_access = privilege.is_user();
    let nxe = mode != PagingMode::Bits32 && ctx.nxe();
    let smep = ctx.cr4 & bits::CR4_SMEP != 0;
    let mut code = 0u32;
    if access == Access::Write {
        code |= pf::W;
    }
    if user_access {
        code |= pf::U;
    }
    if access == Access::Fetch && (smep || nxe) {
        code |= pf::ID;
    }
    let fault = |extra: u32| {
        Some(Err(PageFault {
            addr: vaddr,
            error_code: code | extra,
        }))
    };

    let mut path = Path {
        entries: [(0, 0); 5],
        len: 0,
    };
    let mut user = true;
    let mut writable = true;
    let mut executable = true;
    let mut take = |e: u64| {
        user &= e & US != 0;
        writable &= e & RW != 0;
        executable &= !(nxe && e & XD != 0);
    };
    let wide = mode != PagingMode::Bits32;
    let (leaf, frame, page_size) = match mode {
        PagingMode::Off => unreachable!("handled above"),
        PagingMode::Bits32 => {
            let va = vaddr & 0xffff_ffff;
            let pde_addr = (ctx.cr3 & 0xffff_f000) + ((va >> 22) & 0x3ff) * 4;
            let pde = read_entry(ram, pde_addr, false);
            if pde & P == 0 {
                return fault(0);
            }
            if pde & PS != 0 && ctx.cr4 & bits::CR4_PSE != 0 {
                // PSE-36: bits 20:13 are physical-address bits 39:32; bit 21 is reserved.
                if pde & (1 << 21) != 0 {
                    return fault(pf::P | pf::RSVD);
                }
                take(pde);
                path.push(pde_addr, pde);
                let frame = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
                (pde, frame, 4 << 20)
            } else {
                take(pde);
                path.push(pde_addr, pde);
                let pte_addr = (pde & 0xffff_f000) + ((va >> 12) & 0x3ff) * 4;
                let pte = read_entry(ram, pte_addr, false);
                if pte & P == 0 {
                    return fault(0);
                }
                take(pte);
                path.push(pte_addr, pte);
                (pte, pte & 0xffff_f000, PAGE_SIZE)
            }
        }
        PagingMode::Pae => {
            let va = vaddr & 0xffff_ffff;
            let pdpte = pdptes[((va >> 30) & 3) as usize];
            if pdpte & P == 0 {
                return fault(0);
            }
            let rsvd = PAE_HIGH_RSVD | if nxe { 0 } else { XD };
            let pde_addr = (pdpte & ADDR_MASK) + ((va >> 21) & 0x1ff) * 8;
            let pde = read_entry(ram, pde_addr, true);
            if pde & P == 0 {
                return fault(0);
            }
            let large = pde & PS != 0;
            if pde & (rsvd | if large { RSVD_2M } else { 0 }) != 0 {
                return fault(pf::P | pf::RSVD);
            }
            take(pde);
            path.push(pde_addr, pde);
            if large {
                (pde, pde & ADDR_MASK & !((2 << 20) - 1), 2 << 20)
            } else {
                let pte_addr = (pde & ADDR_MASK) + ((va >> 12) & 0x1ff) * 8;
                let pte = read_entry(ram, pte_addr, true);
                if pte & P == 0 {
                    return fault(0);
                }
                if pte & rsvd != 0 {
                    return fault(pf::P | pf::RSVD);
                }
                take(pte);
                path.push(pte_addr, pte);
                (pte, pte & ADDR_MASK, PAGE_SIZE)
            }
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let levels = if mode == PagingMode::Level5 { 5 } else { 4 };
            let rsvd = LONG_HIGH_RSVD | if nxe { 0 } else { XD };
            let mut table = ctx.cr3 & ADDR_MASK;
            let mut level = levels;
            loop {
                let shift = 12 + 9 * (level - 1);
                let addr = table + ((vaddr >> shift) & 0x1ff) * 8;
                let e = read_entry(ram, addr, true);
                if e & P == 0 {
                    return fault(0);
                }
                let large = e & PS != 0;
                let extra = match level {
                    // PML5E / PML4E: PS is reserved.
                    4 | 5 => PS,
                    3 if large => RSVD_1G,
                    2 if large => RSVD_2M,
                    _ => 0,
                };
                if e & (rsvd | extra) != 0 {
                    return fault(pf::P | pf::RSVD);
                }
                take(e);
                path.push(addr, e);
                if level == 1 || large {
                    let size = 1u64 << shift;
                    break (e, e & ADDR_MASK & !(size - 1), size);
                }
                table = e & ADDR_MASK;
                level -= 1;
            }
        }
    };

    // Permissions (SDM vol. 3 §4.6.1).
    let allowed = if user_access {
        user && match access {
            Access::Read => true,
            Access::Write => writable,
            Access::Fetch => executable,
        }
    } else {
        let smap_blocks =
            ctx.cr4 & bits::CR4_SMAP != 0 && (privilege.implicit_supervisor || !privilege.ac);
        match access {
            Access::Read => !(user && smap_blocks),
            Access::Write => !(user && smap_blocks) && (writable || ctx.cr0 & bits::CR0_WP == 0),
            Access::Fetch => executable && !(user && smep),
        }
    };
    if !allowed {
        return fault(pf::P);
    }

    // Accessed flags on every entry used, dirty on the leaf for writes.
    for i in 0..path.len {
        let (addr, old) = path.entries[i];
        let mut new = old | A;
        if i + 1 == path.len && access == Access::Write {
            new |= D;
        }
        if new != old && !update_entry(ram, addr, wide, old, new) {
            return None;
        }
    }

    let offset_mask = page_size - 1;
    let va = if wide && mode != PagingMode::Pae {
        vaddr
    } else {
        vaddr & 0xffff_ffff
    };
    Some(Ok(Translation {
        paddr: frame | (va & offset_mask),
        page_size,
        user,
        writable,
        executable,
        global: leaf & G != 0 && ctx.cr4 & bits::CR4_PGE != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const RW_: u64 = RW;
    const PRU: u64 = P | RW | US;
    const SUP: Privilege = Privilege {
        cpl: 0,
        ac: false,
        implicit_supervisor: false,
    };
    const USER: Privilege = Privilege {
        cpl: 3,
        ac: false,
        implicit_supervisor: false,
    };

    /// Guest RAM (16 MiB at 0) with a bump allocator for page tables from 1 MiB up.
    struct Tables {
        ram: GuestRam,
        next: u64,
    }

    impl Tables {
        fn new() -> Self {
            let mut ram = GuestRam::new();
            ram.add_region(0, 16 << 20).unwrap();
            Self {
                ram,
                next: 0x10_0000,
            }
        }
        fn alloc(&mut self) -> u64 {
            let a = self.next;
            self.next += 0x1000;
            a
        }
        fn w64(&self, a: u64, v: u64) {
            self.ram
                .memory()
                .unwrap()
                .write_obj(v, GuestAddress(a))
                .unwrap();
        }
        fn r64(&self, a: u64) -> u64 {
            self.ram
                .memory()
                .unwrap()
                .read_obj(GuestAddress(a))
                .unwrap()
        }
        fn w32(&self, a: u64, v: u32) {
            self.ram
                .memory()
                .unwrap()
                .write_obj(v, GuestAddress(a))
                .unwrap();
        }
        fn r32(&self, a: u64) -> u32 {
            self.ram
                .memory()
                .unwrap()
                .read_obj(GuestAddress(a))
                .unwrap()
        }

        /// Maps `va` in a 4/5-level hierarchy rooted at `root`, with the leaf at `leaf_level`
        /// (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) holding `leaf`, and new upper entries `upper`.
        /// Returns the leaf entry's address.
        fn map_long(
            &mut self,
            root: u64,
            levels: u32,
            va: u64,
            leaf_level: u32,
            leaf: u64,
            upper: u64,
        ) -> u64 {
            let mut table = root;
            for level in (leaf_level..=levels).rev() {
                let addr = table + ((va >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
                if level == leaf_level {
                    self.w64(addr, leaf);
                    return addr;
                }
                let e = self.r64(addr);
                table = if e & P != 0 {
                    e & ADDR_MASK
                } else {
                    let t = self.alloc();
                    self.w64(addr, t | upper);
                    t
                };
            }
            unreachable!()
        }

        /// All entry addresses a 4-level walk of `va` uses (top first).
        fn path_long(&self, root: u64, levels: u32, va: u64) -> Vec<u64> {
            let mut out = Vec::new();
            let mut table = root;
            for level in (1..=levels).rev() {
                let addr = table + ((va >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
                out.push(addr);
                let e = self.r64(addr);
                if e & P == 0 || e & PS != 0 {
                    break;
                }
                table = e & ADDR_MASK;
            }
            out
        }
    }

    fn long_ctx(root: u64) -> PagingContext {
        PagingContext {
            cr0: bits::CR0_PG | bits::CR0_WP | 1,
            cr3: root,
            cr4: bits::CR4_PAE,
            efer: bits::EFER_LME | bits::EFER_LMA | bits::EFER_NXE,
        }
    }

    fn go(
        t: &Tables,
        ctx: &PagingContext,
        p: Privilege,
        va: u64,
        acc: Access,
    ) -> Result<Translation, PageFault> {
        walk(&t.ram, ctx, &[0; 4], p, va, acc)
    }

    fn code(t: &Tables, ctx: &PagingContext, p: Privilege, va: u64, acc: Access) -> Option<u32> {
        go(t, ctx, p, va, acc).err().map(|f| {
            assert_eq!(f.addr, va);
            f.error_code
        })
    }

    const VA: u64 = 0x0000_7f12_3456_7abc;

    #[test]
    fn long_mode_4k_walk_translates_and_sets_accessed_then_dirty() {
        let mut t = Tables::new();
        let root = t.alloc();
        let leaf = t.map_long(root, 4, VA, 1, 0x5000 | PRU, PRU);
        let ctx = long_ctx(root);
        let tr = go(&t, &ctx, SUP, VA, Access::Read).unwrap();
        assert_eq!(tr.paddr, 0x5abc);
        assert_eq!(tr.page_size, 4096);
        assert!(tr.user && tr.writable && tr.executable && !tr.global);
        for a in t.path_long(root, 4, VA) {
            assert_eq!(t.r64(a) & (A | D), A, "read sets A only, at {a:#x}");
        }
        go(&t, &ctx, SUP, VA, Access::Write).unwrap();
        let path = t.path_long(root, 4, VA);
        assert_eq!(*path.last().unwrap(), leaf);
        for &a in &path[..3] {
            assert_eq!(t.r64(a) & (A | D), A, "D is never set in upper levels");
        }
        assert_eq!(t.r64(leaf) & (A | D), A | D, "write sets D in the leaf");
    }

    #[test]
    fn faulting_walks_set_no_accessed_or_dirty_bits() {
        let mut t = Tables::new();
        let root = t.alloc();
        let leaf = t.map_long(root, 4, VA, 1, 0x5000 | P | US, PRU); // read-only leaf
        let ctx = long_ctx(root);
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Write),
            Some(pf::P | pf::W | pf::U)
        );
        for a in t.path_long(root, 4, VA) {
            assert_eq!(
                t.r64(a) & (A | D),
                0,
                "protection fault leaves {a:#x} alone"
            );
        }
        t.w64(leaf, 0x5000 | RW_ | US); // not present
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(0));
        for a in t.path_long(root, 4, VA) {
            assert_eq!(t.r64(a) & A, 0);
        }
    }

    #[test]
    fn not_present_error_codes_carry_access_and_mode_bits() {
        let mut t = Tables::new();
        let root = t.alloc();
        let mut ctx = long_ctx(root);
        // Nothing mapped: the PML4E itself is not present.
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(0));
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Write), Some(pf::W));
        assert_eq!(code(&t, &ctx, USER, VA, Access::Read), Some(pf::U));
        assert_eq!(code(&t, &ctx, USER, VA, Access::Write), Some(pf::U | pf::W));
        // I/D: with NXE in long mode, or with SMEP.
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Fetch),
            Some(pf::U | pf::ID)
        );
        ctx.efer &= !bits::EFER_NXE;
        assert_eq!(code(&t, &ctx, USER, VA, Access::Fetch), Some(pf::U));
        ctx.cr4 |= bits::CR4_SMEP;
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Fetch), Some(pf::ID));
        // Implicit supervisor accesses from CPL 3 are supervisor accesses (U/S clear).
        let implicit = Privilege {
            implicit_supervisor: true,
            ..USER
        };
        assert_eq!(code(&t, &ctx, implicit, VA, Access::Write), Some(pf::W));
        // Present leaf under a not-present PT: still P=0.
        t.map_long(root, 4, VA, 1, 0x5000, PRU);
        assert_eq!(code(&t, &ctx, USER, VA, Access::Read), Some(pf::U));
    }

    #[test]
    fn reserved_bits_fault_with_rsvd_and_present() {
        let mut t = Tables::new();
        let root = t.alloc();
        let ctx = long_ctx(root);
        let rsvd = pf::P | pf::RSVD;
        let leaf = t.map_long(root, 4, VA, 1, 0x5000 | PRU, PRU);
        // Physical-address bit at MAXPHYADDR.
        t.w64(leaf, 0x5000 | PRU | 1 << MAXPHYADDR);
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(rsvd));
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Write),
            Some(rsvd | pf::U | pf::W)
        );
        // Bit 51 reserved too; bits 62:52 are ignored (no protection keys).
        t.w64(leaf, 0x5000 | PRU | 1 << 51);
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(rsvd));
        t.w64(leaf, 0x5000 | PRU | 0x7ff << 52);
        assert!(go(&t, &ctx, SUP, VA, Access::Read).is_ok());
        // XD is reserved without NXE.
        t.w64(leaf, 0x5000 | PRU | XD);
        let mut no_nx = ctx;
        no_nx.efer &= !bits::EFER_NXE;
        assert_eq!(code(&t, &no_nx, SUP, VA, Access::Read), Some(rsvd));
        assert_eq!(code(&t, &no_nx, SUP, VA, Access::Fetch), Some(rsvd));
        // A not-present entry is just not present, whatever else it holds.
        t.w64(leaf, (0x5000 | RW_ | US | 1 << 45) & !P);
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(0));
        // PS in a PML4E is reserved.
        let pml4e = t.path_long(root, 4, VA)[0];
        let v = t.r64(pml4e);
        t.w64(pml4e, v | PS);
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(rsvd));
        t.w64(pml4e, v);
        // Reserved bits of the large-page leaves.
        let va2 = 0x4000_0000u64 * 3 + 0x12_3456;
        let pde = t.map_long(root, 4, va2, 2, 0x20_0000 | PS | PRU | 1 << 13, PRU);
        assert_eq!(code(&t, &ctx, SUP, va2, Access::Read), Some(rsvd));
        t.w64(pde, 0x20_0000 | PS | PRU);
        assert!(go(&t, &ctx, SUP, va2, Access::Read).is_ok());
        let va3 = 0x4000_0000u64 * 5 + 0x1234;
        t.map_long(root, 4, va3, 3, 0x4000_0000 | PS | PRU | 1 << 29, PRU);
        assert_eq!(code(&t, &ctx, SUP, va3, Access::Read), Some(rsvd));
    }

    #[test]
    fn large_pages_in_four_and_five_level_paging() {
        let mut t = Tables::new();
        let root = t.alloc();
        let ctx = long_ctx(root);
        let va2m = 0x0000_0040_0060_0000u64 | 0x1_2345;
        t.map_long(root, 4, va2m, 2, 0x80_0000 | PS | PRU | G, PRU);
        let tr = go(&t, &ctx, SUP, va2m, Access::Read).unwrap();
        assert_eq!(
            (tr.paddr, tr.page_size, tr.global),
            (0x80_0000 | 0x1_2345, 2 << 20, false)
        );
        let mut pge = ctx;
        pge.cr4 |= bits::CR4_PGE;
        assert!(go(&t, &pge, SUP, va2m, Access::Read).unwrap().global);
        let va1g = 0xffff_8000_0000_0000u64 | 0x3abc_def0;
        t.map_long(
            root,
            4,
            va1g,
            3,
            0x80_4000_0000 & ADDR_MASK | PS | P | RW_,
            PRU,
        );
        let tr = go(&t, &ctx, SUP, va1g, Access::Write).unwrap();
        assert_eq!(
            (tr.paddr, tr.page_size),
            (0x80_7abc_def0 & ((1 << 40) - 1), 1 << 30)
        );
        assert!(!tr.user);

        // 5-level: bits 56:48 index the PML5.
        let root5 = t.alloc();
        let mut ctx5 = long_ctx(root5);
        ctx5.cr4 |= bits::CR4_LA57;
        assert_eq!(ctx5.mode(), PagingMode::Level5);
        let va5 = 0x00ab_cd00_1234_5678u64;
        t.map_long(root5, 5, va5, 1, 0x6000 | PRU, PRU);
        assert_eq!(
            go(&t, &ctx5, USER, va5, Access::Read).unwrap().paddr,
            0x6678
        );
        for a in t.path_long(root5, 5, va5) {
            assert_eq!(t.r64(a) & A, A);
        }
        // The same address under 4-level paging ignores bits 56:48 (and is unmapped).
        assert!(go(&t, &long_ctx(root5), USER, va5, Access::Read).is_err());
    }

    #[test]
    fn user_supervisor_and_write_protect_matrix() {
        let mut t = Tables::new();
        let root = t.alloc();
        let mut ctx = long_ctx(root);
        let leaf = t.map_long(root, 4, VA, 1, 0, PRU);
        // (leaf flags, upper flags override) -> expected for sup read/write(WP=1)/write(WP=0), user read/write
        let set = |t: &Tables, f: u64| t.w64(leaf, 0x5000 | f);
        set(&t, P); // supervisor, read-only
        assert!(go(&t, &ctx, SUP, VA, Access::Read).is_ok());
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Write), Some(pf::P | pf::W));
        assert_eq!(code(&t, &ctx, USER, VA, Access::Read), Some(pf::P | pf::U));
        ctx.cr0 &= !bits::CR0_WP;
        assert!(
            go(&t, &ctx, SUP, VA, Access::Write).is_ok(),
            "WP=0: supervisor writes anything"
        );
        set(&t, P | US); // user, read-only
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Write),
            Some(pf::P | pf::W | pf::U),
            "WP does not matter for user writes"
        );
        assert!(go(&t, &ctx, SUP, VA, Access::Write).is_ok());
        ctx.cr0 |= bits::CR0_WP;
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Write), Some(pf::P | pf::W));
        set(&t, PRU);
        assert!(go(&t, &ctx, USER, VA, Access::Write).is_ok());
        // An upper level without U/S or R/W restricts the whole translation.
        let pdpte = t.path_long(root, 4, VA)[1];
        let v = t.r64(pdpte);
        t.w64(pdpte, v & !US);
        assert_eq!(code(&t, &ctx, USER, VA, Access::Read), Some(pf::P | pf::U));
        t.w64(pdpte, v & !RW);
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Write),
            Some(pf::P | pf::W | pf::U)
        );
        assert!(!go(&t, &ctx, USER, VA, Access::Read).unwrap().writable);
    }

    #[test]
    fn execute_disable_and_smep_matrix() {
        let mut t = Tables::new();
        let root = t.alloc();
        let mut ctx = long_ctx(root);
        let leaf = t.map_long(root, 4, VA, 1, 0x5000 | PRU | XD, PRU);
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Fetch), Some(pf::P | pf::ID));
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Fetch),
            Some(pf::P | pf::ID | pf::U)
        );
        assert!(
            go(&t, &ctx, USER, VA, Access::Read).is_ok(),
            "XD only stops fetches"
        );
        // XD in an upper level applies too.
        t.w64(leaf, 0x5000 | PRU);
        assert!(go(&t, &ctx, USER, VA, Access::Fetch).is_ok());
        let pde = t.path_long(root, 4, VA)[2];
        let v = t.r64(pde);
        t.w64(pde, v | XD);
        assert_eq!(
            code(&t, &ctx, USER, VA, Access::Fetch),
            Some(pf::P | pf::ID | pf::U)
        );
        t.w64(pde, v);
        // SMEP: supervisor may not fetch from user pages.
        assert!(go(&t, &ctx, SUP, VA, Access::Fetch).is_ok());
        ctx.cr4 |= bits::CR4_SMEP;
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Fetch), Some(pf::P | pf::ID));
        assert!(
            go(&t, &ctx, SUP, VA, Access::Read).is_ok(),
            "SMEP does not stop data reads"
        );
        assert!(go(&t, &ctx, USER, VA, Access::Fetch).is_ok());
        t.w64(leaf, 0x5000 | P | RW_); // supervisor page
        assert!(go(&t, &ctx, SUP, VA, Access::Fetch).is_ok());
    }

    #[test]
    fn smap_matrix_with_ac_and_implicit_accesses() {
        let mut t = Tables::new();
        let root = t.alloc();
        let mut ctx = long_ctx(root);
        t.map_long(root, 4, VA, 1, 0x5000 | PRU, PRU);
        let sup_ac = Privilege { ac: true, ..SUP };
        let implicit_ac = Privilege {
            implicit_supervisor: true,
            ..sup_ac
        };
        let implicit_user = Privilege {
            implicit_supervisor: true,
            ac: true,
            ..USER
        };
        for p in [SUP, sup_ac, implicit_ac, implicit_user] {
            assert!(go(&t, &ctx, p, VA, Access::Read).is_ok(), "SMAP off: {p:?}");
        }
        ctx.cr4 |= bits::CR4_SMAP;
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Read), Some(pf::P));
        assert_eq!(code(&t, &ctx, SUP, VA, Access::Write), Some(pf::P | pf::W));
        assert!(go(&t, &ctx, sup_ac, VA, Access::Read).is_ok());
        assert!(go(&t, &ctx, sup_ac, VA, Access::Write).is_ok());
        assert_eq!(
            code(&t, &ctx, implicit_ac, VA, Access::Read),
            Some(pf::P),
            "implicit ignores AC"
        );
        assert_eq!(
            code(&t, &ctx, implicit_user, VA, Access::Write),
            Some(pf::P | pf::W),
            "implicit from CPL 3: U/S clear"
        );
        assert!(
            go(&t, &ctx, USER, VA, Access::Write).is_ok(),
            "SMAP does not affect user accesses"
        );
        assert!(
            go(&t, &ctx, SUP, VA, Access::Fetch).is_ok(),
            "SMAP does not affect fetches"
        );
        // With AC, supervisor writes to read-only user pages follow WP.
        let leaf = *t.path_long(root, 4, VA).last().unwrap();
        t.w64(leaf, 0x5000 | P | US);
        assert_eq!(
            code(&t, &ctx, sup_ac, VA, Access::Write),
            Some(pf::P | pf::W)
        );
        ctx.cr0 &= !bits::CR0_WP;
        assert!(go(&t, &ctx, sup_ac, VA, Access::Write).is_ok());
    }

    fn ctx32(cr3: u64, cr4: u64) -> PagingContext {
        PagingContext {
            cr0: bits::CR0_PG | bits::CR0_WP | 1,
            cr3,
            cr4,
            efer: bits::EFER_NXE,
        }
    }

    #[test]
    fn two_level_paging_4k_and_4m_pages_with_pse36() {
        let mut t = Tables::new();
        let pd = t.alloc();
        let pt = t.alloc();
        let va = 0x8040_3123u64;
        let pde = pd + (va >> 22) * 4;
        let pte = pt + ((va >> 12) & 0x3ff) * 4;
        t.w32(pde, (pt | PRU) as u32);
        t.w32(pte, (0x7000 | PRU | G) as u32);
        let ctx = ctx32(pd, bits::CR4_PGE);
        assert_eq!(ctx.mode(), PagingMode::Bits32);
        let tr = go(&t, &ctx, USER, va, Access::Write).unwrap();
        assert_eq!((tr.paddr, tr.page_size, tr.global), (0x7123, 4096, true));
        assert_eq!(t.r32(pde) as u64 & (A | D), A);
        assert_eq!(t.r32(pte) as u64 & (A | D), A | D);
        // No XD in 32-bit paging: NXE is irrelevant and I/D is reported only with SMEP.
        t.w32(pte, 0);
        assert_eq!(code(&t, &ctx, USER, va, Access::Fetch), Some(pf::U));
        assert_eq!(
            code(&t, &ctx32(pd, bits::CR4_SMEP), USER, va, Access::Fetch),
            Some(pf::U | pf::ID)
        );
        // 4 MiB page: PS honoured only with PSE; PSE-36 supplies address bits 39:32.
        t.w32(pde, (0x0040_0000 | 0x3 << 13 | PS | PRU) as u32);
        let with_pse = ctx32(pd, bits::CR4_PSE);
        let tr = go(&t, &with_pse, SUP, va, Access::Read).unwrap();
        assert_eq!(
            (tr.paddr, tr.page_size),
            (0x3_0040_0000 | (va & 0x3f_ffff), 4 << 20)
        );
        // Without PSE the same PDE points at a page table at 0x0040_6000 (PS ignored).
        let tr = go(&t, &ctx32(pd, 0), SUP, va, Access::Read);
        assert_eq!(
            tr,
            Err(PageFault {
                addr: va,
                error_code: 0
            }),
            "empty page table there"
        );
        // Bit 21 of a 4 MiB PDE is reserved.
        t.w32(pde, (0x0540_0000 | 1 << 21 | PS | PRU) as u32);
        assert_eq!(
            code(&t, &with_pse, SUP, va, Access::Read),
            Some(pf::P | pf::RSVD)
        );
    }

    #[test]
    fn pae_paging_uses_loaded_pdptes() {
        let mut t = Tables::new();
        let pdpt = 0x10_0fe0u64; // 32-byte aligned, not page aligned
        let pd = t.alloc() + 0x1000;
        t.next += 0x1000;
        let pt = t.alloc();
        let va = 0xc020_1456u64; // PDPTE 3, PDE 1, PTE 1
        t.w64(pdpt + 3 * 8, pd | P);
        t.w64(pd + 8, pt | PRU);
        t.w64(pt + 8, 0x9000 | PRU | XD);
        let ctx = PagingContext {
            cr0: bits::CR0_PG | bits::CR0_WP | 1,
            cr3: pdpt,
            cr4: bits::CR4_PAE,
            efer: bits::EFER_NXE,
        };
        assert_eq!(ctx.mode(), PagingMode::Pae);
        let pdptes = load_pdptes(&t.ram, ctx.cr3).unwrap();
        assert_eq!(pdptes[3], pd | P);
        let tr = walk(&t.ram, &ctx, &pdptes, USER, va, Access::Read).unwrap();
        assert_eq!(tr.paddr, 0x9456);
        assert_eq!(
            t.r64(pdpt + 24),
            pd | P,
            "PDPTEs have no accessed bit in PAE paging"
        );
        assert_eq!(t.r64(pd + 8) & A, A);
        let f = walk(&t.ram, &ctx, &pdptes, USER, va, Access::Fetch).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::U | pf::ID);
        // The walk uses the loaded PDPTEs, not memory, until they are reloaded.
        t.w64(pdpt + 3 * 8, 0);
        assert!(walk(&t.ram, &ctx, &pdptes, USER, va, Access::Read).is_ok());
        let reloaded = load_pdptes(&t.ram, ctx.cr3).unwrap();
        assert_eq!(
            walk(&t.ram, &ctx, &reloaded, USER, va, Access::Read)
                .unwrap_err()
                .error_code,
            pf::U
        );
        // Bits 62:MAXPHYADDR are reserved in PAE entries (unlike long mode).
        t.w64(pdpt + 3 * 8, pd | P);
        t.w64(pt + 8, 0x9000 | PRU | 1 << 62);
        assert_eq!(
            walk(&t.ram, &ctx, &pdptes, SUP, va, Access::Read)
                .unwrap_err()
                .error_code,
            pf::P | pf::RSVD
        );
        // 2 MiB page.
        t.w64(pd + 8, 0x40_0000 | PS | PRU);
        let tr = walk(&t.ram, &ctx, &pdptes, SUP, va, Access::Read).unwrap();
        assert_eq!(
            (tr.paddr, tr.page_size),
            (0x40_0000 | (va & 0x1f_ffff), 2 << 20)
        );
        // Reserved PDPTE bits fail the load.
        for bad in [1 << 1, 1 << 5, 1 << 8, 1 << MAXPHYADDR, XD] {
            t.w64(pdpt + 8, 0x20_0000 | P | bad);
            assert!(matches!(
                load_pdptes(&t.ram, ctx.cr3),
                Err(PagingError::ReservedPdpte { index: 1, .. })
            ));
        }
        t.w64(pdpt + 8, 0x20_0000 | (1 << 5)); // not present: anything goes
        assert!(load_pdptes(&t.ram, ctx.cr3).is_ok());
    }

    #[test]
    fn page_tables_outside_ram_read_as_all_ones() {
        let t = Tables::new();
        // Long mode: CR3 beyond RAM; all-ones has bits 51:40 set -> RSVD.
        let ctx = long_ctx(0x40_0000_0000 & ADDR_MASK | 0x1_0000_0000);
        assert_eq!(
            code(&t, &ctx, SUP, VA, Access::Read),
            Some(pf::P | pf::RSVD)
        );
        // PAE: the PDPT load fails.
        assert!(matches!(
            load_pdptes(&t.ram, 0xfff0_0000),
            Err(PagingError::ReservedPdpte { index: 0, .. })
        ));
        // 32-bit with PSE: a 4 MiB page with reserved bit 21 -> RSVD.
        assert_eq!(
            code(
                &t,
                &ctx32(0xffff_f000, bits::CR4_PSE),
                SUP,
                0x1234,
                Access::Read
            ),
            Some(pf::P | pf::RSVD)
        );
        // 32-bit without PSE: PDE and PTE read as all ones and map 0xffff_f000, which is
        // not RAM either (the Mmu reports that access as unmapped).
        let tr = go(&t, &ctx32(0xffff_f000, 0), SUP, 0x1234, Access::Write).unwrap();
        assert_eq!(tr.paddr, 0xffff_f234);
        assert!(!t.ram.is_ram(tr.paddr));
    }

    #[test]
    fn canonical_checks_for_48_and_57_bits() {
        assert!(is_canonical(0x0000_7fff_ffff_ffff, false));
        assert!(!is_canonical(0x0000_8000_0000_0000, false));
        assert!(is_canonical(0xffff_8000_0000_0000, false));
        assert!(is_canonical(0x00ff_ffff_ffff_ffff, true));
        assert!(!is_canonical(0x0100_0000_0000_0000, true));
        assert!(!is_canonical(0x00ff_ffff_ffff_ffff, false));
        assert!(is_canonical(0xff80_0000_0000_0000, true));
        assert!(!is_canonical(0xfe00_0000_0000_0000, true));
        assert!(is_canonical(0xff00_0000_0000_0000, true));
    }
}
