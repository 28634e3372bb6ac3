//! Segment descriptors and selectors: parsing GDT/LDT entries and the checks that loading
//! them requires in 64-bit mode.

use crate::cpu::Cpu;
use crate::exception::Exception;
use crate::insn::Trap;

/// A segment selector: index, table indicator and requested privilege level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selector(pub u16);

impl Selector {
    /// Requested privilege level.
    pub fn rpl(self) -> u8 {
        (self.0 & 3) as u8
    }
    /// Whether the selector names the LDT rather than the GDT.
    pub fn in_ldt(self) -> bool {
        self.0 & 4 != 0
    }
    /// Index into the table (in descriptors).
    pub fn index(self) -> u64 {
        (self.0 >> 3) as u64
    }
    /// Whether this is a null selector (index 0 in the GDT).
    pub fn is_null(self) -> bool {
        self.0 & !3 == 0
    }
    /// The selector with its RPL bits cleared, as error codes carry it.
    pub fn error_code(self) -> u32 {
        (self.0 & !3) as u32
    }
}

/// An 8-byte segment descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor(pub u64);

impl Descriptor {
    /// Base address (bits 0..31; system descriptors in long mode add bits 32..63 from the
    /// following quadword).
    pub fn base(self) -> u64 {
        ((self.0 >> 16) & 0xff_ffff) | ((self.0 >> 32) & 0xff00_0000)
    }
    /// Limit in bytes, after applying the granularity bit.
    pub fn limit(self) -> u32 {
        let raw = ((self.0 & 0xffff) | ((self.0 >> 32) & 0xf_0000)) as u32;
        if self.granularity() {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    /// Type field (4 bits).
    pub fn kind(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }
    /// S bit: code or data (true) versus system (false).
    pub fn is_code_or_data(self) -> bool {
        self.0 & (1 << 44) != 0
    }
    /// Descriptor privilege level.
    pub fn dpl(self) -> u8 {
        ((self.0 >> 45) & 3) as u8
    }
    /// Present bit.
    pub fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }
    /// L bit: 64-bit code segment.
    pub fn long(self) -> bool {
        self.0 & (1 << 53) != 0
    }
    /// D/B bit.
    pub fn default_big(self) -> bool {
        self.0 & (1 << 54) != 0
    }
    /// G bit: limit in 4 KiB units.
    pub fn granularity(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Whether this is a code segment.
    pub fn is_code(self) -> bool {
        self.is_code_or_data() && self.kind() & 8 != 0
    }
    /// Whether this is a conforming code segment.
    pub fn is_conforming(self) -> bool {
        self.is_code() && self.kind() & 4 != 0
    }
    /// Whether this is a writable data segment.
    pub fn is_writable_data(self) -> bool {
        self.is_code_or_data() && self.kind() & 8 == 0 && self.kind() & 2 != 0
    }
    /// The attribute bits (type, S, DPL, P, AVL, L, D/B, G) packed as VMX does:
    /// descriptor bits 40..47 in 0..7 and 52..55 in 12..15.
    pub fn attributes(self) -> u16 {
        (((self.0 >> 40) & 0xff) | ((self.0 >> 40) & 0xf000)) as u16
    }
}

/// System descriptor types in long mode.
pub mod system_type {
    /// LDT.
    pub const LDT: u8 = 0x2;
    /// Available 64-bit TSS.
    pub const TSS_AVAILABLE: u8 = 0x9;
    /// Busy 64-bit TSS.
    pub const TSS_BUSY: u8 = 0xb;
    /// 64-bit call gate.
    pub const CALL_GATE: u8 = 0xc;
    /// 64-bit interrupt gate.
    pub const INTERRUPT_GATE: u8 = 0xe;
    /// 64-bit trap gate.
    pub const TRAP_GATE: u8 = 0xf;
}

/// Where a selector's descriptor lives in linear memory, checking the table limit.
///
/// # Errors
///
/// `#GP(selector)` when the descriptor (of `size` bytes) lies beyond the table's limit.
pub fn descriptor_address(cpu: &Cpu, sel: Selector, size: u64) -> Result<u64, Trap> {
    let (base, limit) = if sel.in_ldt() {
        let ldtr = &cpu.sys.ldtr;
        if Selector(ldtr.selector).is_null() {
            return Err(Exception::GeneralProtection(sel.error_code()).into());
        }
        (ldtr.base, ldtr.limit as u64)
    } else {
        (cpu.sys.gdtr.base, cpu.sys.gdtr.limit as u64)
    };
    let offset = sel.index() * 8;
    if offset + size - 1 > limit {
        return Err(Exception::GeneralProtection(sel.error_code()).into());
    }
    Ok(base.wrapping_add(offset))
}

/// Reads the 8-byte descriptor a selector names (a supervisor access).
///
/// # Errors
///
/// `#GP(selector)` beyond the table limit; memory faults from the read.
pub fn read_descriptor(cpu: &mut Cpu, sel: Selector) -> Result<Descriptor, Trap> {
    let addr = descriptor_address(cpu, sel, 8)?;
    Ok(Descriptor(cpu.mmu.read::<8>(addr)?))
}

/// Reads a 16-byte system descriptor (TSS, LDT, gates in long mode): the 8-byte descriptor
/// and the upper 32 bits of its base.
///
/// # Errors
///
/// `#GP(selector)` beyond the table limit; memory faults from the read.
pub fn read_system_descriptor(cpu: &mut Cpu, sel: Selector) -> Result<(Descriptor, u64), Trap> {
    let addr = descriptor_address(cpu, sel, 16)?;
    let low = Descriptor(cpu.mmu.read::<8>(addr)?);
    let high = cpu.mmu.read::<8>(addr.wrapping_add(8))?;
    Ok((low, low.base() | (high & 0xffff_ffff) << 32))
}

/// The hidden part of a system segment register (LDTR, TR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemSegment {
    /// Visible selector.
    pub selector: u16,
    /// Linear base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u32,
    /// Attributes as [`Descriptor::attributes`].
    pub attributes: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_64bit_code_descriptor_decodes() {
        // The usual kernel CS: base 0, limit 0xfffff pages, present, DPL 0, code, L=1.
        let d = Descriptor(0x00af_9a00_0000_ffff);
        assert!(d.present() && d.is_code() && d.long() && !d.default_big());
        assert_eq!(d.dpl(), 0);
        assert_eq!(d.base(), 0);
        assert_eq!(d.limit(), 0xffff_ffff);
        let user_data = Descriptor(0x00cf_f200_0000_ffff);
        assert!(user_data.is_writable_data());
        assert_eq!(user_data.dpl(), 3);
        assert_eq!(Selector(0x2b).rpl(), 3);
        assert_eq!(Selector(0x2b).index(), 5);
        assert!(Selector(3).is_null());
    }
}
