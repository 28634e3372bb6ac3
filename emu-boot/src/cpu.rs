//! The vCPU state a boot protocol starts a kernel in, and the GDT and page tables behind it.
//!
//! Every configurator ends by returning an [`EntryState`]: plain register values the
//! machine copies into its boot vCPU. The descriptor tables those values point at are
//! written into guest memory by [`write_boot_gdt`] and [`write_identity_page_tables`]
//! (the configurators call them), at the fixed addresses of [`crate::layout`].
//!
//! # The GDT (at [`BOOT_GDT_ADDR`], limit 0x27)
//!
//! | selector | descriptor | use |
//! | --- | --- | --- |
//! | 0x00 | null | |
//! | 0x08 | null | (Linux's boot protocol names 0x10 and 0x18) |
//! | 0x10 | `0x00af_9b00_0000_ffff`: 64-bit code, DPL 0, G | `__BOOT_CS`, 64-bit entry |
//! | 0x18 | `0x00cf_9300_0000_ffff`: flat 4 GiB data, D/B, G | `__BOOT_DS`, all data segments |
//! | 0x20 | `0x00cf_9b00_0000_ffff`: flat 4 GiB 32-bit code | CS for 32-bit entry |
//!
//! # Applying an [`EntryState`] with `emu_core`
//!
//! ```text
//! cpu.regs[RAX/RBX/RSI/RSP] = state.rax/rbx/rsi/rsp; cpu.rip = state.rip;
//! for (i, s) in [ES, CS, SS, DS, FS, GS] (emu_core's seg order) :
//!     seg_sel[i] = s.selector; seg_base[i] = s.base; seg_limit[i] = s.limit; seg_attr[i] = s.attributes
//! sys.gdtr = { base: state.gdt_base, limit: state.gdt_limit }; sys.idtr = { 0, 0 }
//! cpu.apply_paging(state.cr0, state.cr3, state.cr4, state.efer)?; cpu.update_mode();
//! rflags = state.rflags (IF clear)
//! ```
//!
//! [`Segment::attributes`] uses emu-core's packing (the descriptor's access byte in bits
//! 0..7, AVL/L/D/G in bits 12..15), which is also VMX's.

use crate::layout::{BOOT_GDT_ADDR, IDENTITY_MAP_GIB, PAGE_TABLES_ADDR};
use crate::memory::{GuestMemory, MemoryError};

/// `__BOOT_CS`: the 64-bit code selector.
pub const CODE64_SELECTOR: u16 = 0x10;
/// `__BOOT_DS`: the flat data selector for every data segment register.
pub const DATA_SELECTOR: u16 = 0x18;
/// The flat 32-bit code selector used for 32-bit protected-mode entry (PVH, multiboot).
pub const CODE32_SELECTOR: u16 = 0x20;

/// The five GDT descriptors, in selector order.
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_9b00_0000_ffff,
];

/// Segment attributes (emu-core packing) of the 64-bit code segment: P, S, type 0xb, L, G.
pub const ATTR_CODE64: u16 = 0xa09b;
/// Attributes of the flat data segment: P, S, type 0x3 (accessed, writable), D/B, G.
pub const ATTR_DATA: u16 = 0xc093;
/// Attributes of the flat 32-bit code segment: P, S, type 0xb, D/B, G.
pub const ATTR_CODE32: u16 = 0xc09b;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (required for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Which mode the kernel is entered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with paging through the identity map at [`PAGE_TABLES_ADDR`].
    Long64,
    /// 32-bit protected mode, paging off (PVH and multiboot).
    Protected32,
}

/// One segment register's selector and hidden part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Base address (0: every segment is flat).
    pub base: u64,
    /// Limit in bytes (0xffff_ffff).
    pub limit: u32,
    /// Attributes in emu-core's packing (see the module docs).
    pub attributes: u16,
}

impl Segment {
    const fn flat(selector: u16, attributes: u16) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            attributes,
        }
    }
}

/// Everything the boot vCPU must be set to before its first instruction. Registers not
/// named here are 0; the IDT is empty (base 0, limit 0); other vCPUs stay in
/// wait-for-SIPI and are started by the kernel through the local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// The mode; informational, since the fields below already encode it.
    pub mode: EntryMode,
    /// First instruction.
    pub rip: u64,
    /// RAX: 0x2BADB002 for multiboot, else 0.
    pub rax: u64,
    /// RBX: `multiboot_info` (multiboot) or `hvm_start_info` (PVH) address, else 0.
    pub rbx: u64,
    /// RSI: `boot_params` address for the Linux 64-bit protocol, else 0.
    pub rsi: u64,
    /// RSP: [`crate::layout::BOOT_STACK_TOP`].
    pub rsp: u64,
    /// RFLAGS: 0x2 (only the reserved bit; IF clear).
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3 (0 when paging is off).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// GDTR base ([`BOOT_GDT_ADDR`]).
    pub gdt_base: u64,
    /// GDTR limit (0x27).
    pub gdt_limit: u16,
    /// CS.
    pub cs: Segment,
    /// DS, ES, FS, GS and SS all get this one.
    pub data: Segment,
}

impl EntryState {
    /// State for the Linux 64-bit boot protocol (and any 64-bit entry): long mode through
    /// the identity map, CS = 0x10, data = 0x18.
    pub fn long_mode(rip: u64, rsi: u64) -> Self {
        Self {
            mode: EntryMode::Long64,
            rip,
            rax: 0,
            rbx: 0,
            rsi,
            rsp: crate::layout::BOOT_STACK_TOP,
            rflags: 0x2,
            cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG,
            cr3: PAGE_TABLES_ADDR,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            gdt_base: BOOT_GDT_ADDR,
            gdt_limit: (BOOT_GDT.len() * 8 - 1) as u16,
            cs: Segment::flat(CODE64_SELECTOR, ATTR_CODE64),
            data: Segment::flat(DATA_SELECTOR, ATTR_DATA),
        }
    }

    /// State for 32-bit protected-mode entry with paging off (PVH, multiboot): CS = 0x20,
    /// data = 0x18, CR0 = PE | ET.
    pub fn protected_mode(rip: u64, rax: u64, rbx: u64) -> Self {
        Self {
            mode: EntryMode::Protected32,
            rip,
            rax,
            rbx,
            rsi: 0,
            rsp: crate::layout::BOOT_STACK_TOP,
            rflags: 0x2,
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            gdt_base: BOOT_GDT_ADDR,
            gdt_limit: (BOOT_GDT.len() * 8 - 1) as u16,
            cs: Segment::flat(CODE32_SELECTOR, ATTR_CODE32),
            data: Segment::flat(DATA_SELECTOR, ATTR_DATA),
        }
    }
}

/// Writes [`BOOT_GDT`] at [`BOOT_GDT_ADDR`].
///
/// # Errors
///
/// If the page is not RAM.
pub fn write_boot_gdt(mem: &mut dyn GuestMemory) -> Result<(), MemoryError> {
    let bytes: Vec<u8> = BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write(BOOT_GDT_ADDR, &bytes)
}

/// Writes 4-level page tables at [`PAGE_TABLES_ADDR`] identity-mapping the first
/// [`IDENTITY_MAP_GIB`] GiB with 2 MiB pages (present, writable, supervisor): a PML4 whose
/// entry 0 points to the PDPT at +0x1000, whose first entries point to page directories
/// at +0x2000, +0x3000, ... Returns the CR3 value.
///
/// 4 GiB covers every kernel's `init_size` from its load address, the zero page, the
/// command line and the initrd, which the Linux 64-bit protocol requires mapped.
///
/// # Errors
///
/// If the table pages are not RAM.
pub fn write_identity_page_tables(mem: &mut dyn GuestMemory) -> Result<u64, MemoryError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_2M: u64 = 0x80;
    let pdpt = PAGE_TABLES_ADDR + 0x1000;
    let pd0 = PAGE_TABLES_ADDR + 0x2000;

    let mut pml4 = vec![0u8; 0x1000];
    pml4[..8].copy_from_slice(&(pdpt | PRESENT_RW).to_le_bytes());
    mem.write(PAGE_TABLES_ADDR, &pml4)?;

    let mut pdpt_page = vec![0u8; 0x1000];
    for g in 0..IDENTITY_MAP_GIB {
        let e = (pd0 + g * 0x1000) | PRESENT_RW;
        pdpt_page[g as usize * 8..][..8].copy_from_slice(&e.to_le_bytes());
    }
    mem.write(pdpt, &pdpt_page)?;

    for g in 0..IDENTITY_MAP_GIB {
        let mut pd = vec![0u8; 0x1000];
        for i in 0..512u64 {
            let phys = (g << 30) | (i << 21);
            pd[i as usize * 8..][..8].copy_from_slice(&(phys | PRESENT_RW | PAGE_2M).to_le_bytes());
        }
        mem.write(pd0 + g * 0x1000, &pd)?;
    }
    Ok(PAGE_TABLES_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::SparseMemory;

    /// Walks the tables the way the MMU would, for one address.
    fn translate(mem: &SparseMemory, cr3: u64, va: u64) -> Option<u64> {
        let pml4e = mem.read_u64(cr3 + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = mem.read_u64((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = mem.read_u64((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & 0x81 != 0x81 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_map_covers_four_gib_and_nothing_more() {
        let mut mem = SparseMemory::new(64 << 20);
        let cr3 = write_identity_page_tables(&mut mem).unwrap();
        for va in [
            0u64,
            0x7000,
            0x100_0200,
            0x1234_5678,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }

    #[test]
    fn gdt_descriptors_match_the_attributes() {
        let mut mem = SparseMemory::new(1 << 20);
        write_boot_gdt(&mut mem).unwrap();
        for (sel, attr) in [
            (CODE64_SELECTOR, ATTR_CODE64),
            (DATA_SELECTOR, ATTR_DATA),
            (CODE32_SELECTOR, ATTR_CODE32),
        ] {
            let d = mem.read_u64(BOOT_GDT_ADDR + sel as u64);
            let packed = ((d >> 40) & 0xff) as u16 | (((d >> 52) & 0xf) as u16) << 12;
            assert_eq!(packed, attr, "selector {sel:#x}");
            assert_eq!(d & 0xffff, 0xffff);
        }
        let s = EntryState::long_mode(0x100_0200, 0x7000);
        assert_eq!(s.gdt_limit, 0x27);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
    }
}
