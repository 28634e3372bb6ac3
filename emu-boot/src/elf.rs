//! The ELF loader (via goblin): copies `PT_LOAD` segments to their physical addresses
//! (`p_paddr`), zero-fills their BSS, and finds the Xen PVH entry note.
//!
//! A Linux `vmlinux` built with `CONFIG_PVH` carries an ELF note named `"Xen"` of type
//! `XEN_ELFNOTE_PHYS32_ENTRY` (18) whose descriptor is the physical address of its 32-bit
//! PVH entry; [`crate::pvh::configure`] boots it that way. Without the note, the ELF
//! entry (`e_entry`, physical for vmlinux: `phys_startup_64`) is a 64-bit entry for the
//! Linux 64-bit boot protocol ([`LoadedElf::linux_kernel`]). Multiboot ELF kernels use
//! this loader too ([`crate::multiboot`]).

use goblin::elf::{program_header::PT_LOAD, Elf};

use crate::layout::{in_ram, BOOT_DATA_END};
use crate::linux::{LinuxKernel, DEFAULT_CMDLINE_MAX};
use crate::memory::{GuestMemory, MemoryError};

/// ELF note type of the PVH 32-bit entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of i386.
pub const EM_386: u16 = 3;

/// Why an ELF image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// goblin could not parse the file (bad magic, truncated headers...).
    #[error("not a valid ELF file: {0}")]
    Parse(String),
    /// Not an x86 or x86-64 executable.
    #[error("ELF machine {0} is neither x86-64 nor i386")]
    NotX86(u16),
    /// Nothing to load.
    #[error("ELF file has no PT_LOAD segment")]
    NoLoadSegments,
    /// A segment's file bytes run past the end of the file.
    #[error("ELF segment {index} runs past the end of the file (truncated?)")]
    SegmentTruncated {
        /// Program header index.
        index: usize,
    },
    /// A segment does not land in RAM.
    #[error("ELF segment at {addr:#x}+{size:#x} is not in RAM (give the machine more memory?)")]
    SegmentOutsideRam {
        /// Physical address.
        addr: u64,
        /// Memory size.
        size: u64,
    },
    /// A segment would overwrite the fixed boot data below `BOOT_DATA_END`.
    #[error(
        "ELF segment at {addr:#x} overlaps the boot data area below {:#x}",
        BOOT_DATA_END
    )]
    SegmentOverlapsBootData {
        /// Physical address.
        addr: u64,
    },
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// An ELF image copied into guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedElf {
    /// `e_entry`.
    pub entry: u64,
    /// The PVH 32-bit entry point, when the image has the note.
    pub pvh_entry: Option<u64>,
    /// Lowest loaded physical address.
    pub low: u64,
    /// One past the highest loaded physical address (BSS included).
    pub kernel_end: u64,
    /// Whether the file is ELF64.
    pub is_64: bool,
}

impl LoadedElf {
    /// The image as a Linux kernel for [`crate::linux::configure`] (64-bit entry at
    /// `e_entry`, no setup header, initrd anywhere below 4 GiB).
    pub fn linux_kernel(&self) -> LinuxKernel {
        LinuxKernel {
            entry64: self.entry,
            kernel_end: self.kernel_end,
            setup_header: None,
            cmdline_max: DEFAULT_CMDLINE_MAX,
            initrd_addr_max: 0xffff_ffff,
        }
    }
}

/// Whether `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Parses `image` and copies its loadable segments.
///
/// # Errors
///
/// Any [`Error`].
pub fn load(mem: &mut dyn GuestMemory, image: &[u8]) -> Result<LoadedElf, Error> {
    let elf = Elf::parse(image).map_err(|e| Error::Parse(e.to_string()))?;
    if elf.header.e_machine != EM_X86_64 && elf.header.e_machine != EM_386 {
        return Err(Error::NotX86(elf.header.e_machine));
    }
    let regions = mem.ram_regions();
    // Check every segment before writing any, so a refused image leaves memory alone.
    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == PT_LOAD && ph.p_memsz > 0)
        .collect();
    if loads.is_empty() {
        return Err(Error::NoLoadSegments);
    }
    for &(index, ph) in &loads {
        let file_end = ph.p_offset.checked_add(ph.p_filesz);
        if file_end.map_or(true, |e| e > image.len() as u64) || ph.p_filesz > ph.p_memsz {
            return Err(Error::SegmentTruncated { index });
        }
        if !in_ram(&regions, ph.p_paddr, ph.p_memsz) {
            return Err(Error::SegmentOutsideRam {
                addr: ph.p_paddr,
                size: ph.p_memsz,
            });
        }
        if ph.p_paddr < BOOT_DATA_END {
            return Err(Error::SegmentOverlapsBootData { addr: ph.p_paddr });
        }
    }
    let (mut low, mut end) = (u64::MAX, 0);
    for &(_, ph) in &loads {
        let off = ph.p_offset as usize;
        mem.write(ph.p_paddr, &image[off..off + ph.p_filesz as usize])?;
        if ph.p_memsz > ph.p_filesz {
            mem.zero(ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz)?;
        }
        low = low.min(ph.p_paddr);
        end = end.max(ph.p_paddr + ph.p_memsz);
    }
    Ok(LoadedElf {
        entry: elf.header.e_entry,
        pvh_entry: find_pvh_entry(&elf, image),
        low,
        kernel_end: end,
        is_64: elf.is_64,
    })
}

/// Finds `XEN_ELFNOTE_PHYS32_ENTRY` in the PT_NOTE segments (or, failing those, the note
/// sections). Linux emits the descriptor as a pointer-sized value; only the low 32 bits
/// matter for a 32-bit entry.
fn find_pvh_entry(elf: &Elf<'_>, image: &[u8]) -> Option<u64> {
    let from = |it: Option<goblin::elf::note::NoteIterator<'_>>| -> Option<u64> {
        it?.filter_map(Result::ok).find_map(|n| {
            let is_xen = n.name.trim_end_matches('\0') == "Xen";
            if is_xen && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY && n.desc.len() >= 4 {
                Some(u64::from(u32::from_le_bytes(
                    n.desc[..4].try_into().unwrap(),
                )))
            } else {
                None
            }
        })
    };
    from(elf.iter_note_headers(image)).or_else(|| from(elf.iter_note_sections(image, None)))
}

/// Hand-built ELF images for tests.
#[cfg(test)]
pub(crate) mod testimage {
    /// One loadable segment of a test ELF.
    pub struct Seg {
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// An ELF64 x86-64 executable with `segs` and, if `pvh` is set, a PT_NOTE with the
    /// Xen PVH entry note (8-byte descriptor, as Linux emits it). `prefix` bytes of file
    /// content are placed right after the headers, before the segment data (room for a
    /// multiboot header within the first 8 KiB).
    pub fn elf64(entry: u64, segs: &[Seg], pvh: Option<u64>, prefix: &[u8]) -> Vec<u8> {
        let phnum = segs.len() + usize::from(pvh.is_some());
        let ph_off = 64usize;
        let mut data_off = ph_off + 56 * phnum;
        let mut out = vec![0u8; data_off];
        out.extend_from_slice(prefix);
        data_off += prefix.len();
        // ELF header.
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little endian
        out[6] = 1; // version
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(ph_off as u64).to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        let ph = |i: usize,
                  p_type: u32,
                  off: u64,
                  paddr: u64,
                  filesz: u64,
                  memsz: u64,
                  out: &mut Vec<u8>| {
            let b = ph_off + i * 56;
            out[b..b + 4].copy_from_slice(&p_type.to_le_bytes());
            out[b + 4..b + 8].copy_from_slice(&7u32.to_le_bytes());
            out[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
            out[b + 16..b + 24].copy_from_slice(&paddr.to_le_bytes());
            out[b + 24..b + 32].copy_from_slice(&paddr.to_le_bytes());
            out[b + 32..b + 40].copy_from_slice(&filesz.to_le_bytes());
            out[b + 40..b + 48].copy_from_slice(&memsz.to_le_bytes());
            out[b + 48..b + 56].copy_from_slice(&4u64.to_le_bytes());
        };
        for (i, s) in segs.iter().enumerate() {
            ph(
                i,
                1,
                out.len() as u64,
                s.paddr,
                s.data.len() as u64,
                s.memsz,
                &mut out,
            );
            out.extend_from_slice(&s.data);
        }
        let _ = data_off;
        if let Some(e) = pvh {
            let mut note = Vec::new();
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            note.extend_from_slice(&8u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
            let off = out.len() as u64;
            ph(
                segs.len(),
                4,
                off,
                0,
                note.len() as u64,
                note.len() as u64,
                &mut out,
            );
            out.extend_from_slice(&note);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testimage::{elf64, Seg};
    use super::*;
    use crate::memory::SparseMemory;

    fn seg(paddr: u64, data: &[u8], memsz: u64) -> Seg {
        Seg {
            paddr,
            data: data.to_vec(),
            memsz,
        }
    }

    #[test]
    fn loads_segments_zeroes_bss_and_finds_the_pvh_note() {
        let img = elf64(
            0x100_0000,
            &[seg(0x100_0000, &[1, 2, 3], 0x10), seg(0x200_0000, &[9], 1)],
            Some(0x100_0040),
            &[],
        );
        let mut mem = SparseMemory::new(64 << 20);
        mem.write(0x100_0003, &[0xff; 4]).unwrap(); // stale bytes where the BSS goes
        let k = load(&mut mem, &img).unwrap();
        assert_eq!(k.entry, 0x100_0000);
        assert_eq!(k.pvh_entry, Some(0x100_0040));
        assert_eq!((k.low, k.kernel_end), (0x100_0000, 0x200_0001));
        assert_eq!(mem.read(0x100_0000, 8), vec![1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(mem.read(0x200_0000, 1), vec![9]);
    }

    #[test]
    fn elf_without_note_has_no_pvh_entry() {
        let img = elf64(0x100_0000, &[seg(0x100_0000, &[0x90], 1)], None, &[]);
        let mut mem = SparseMemory::new(64 << 20);
        let k = load(&mut mem, &img).unwrap();
        assert_eq!(k.pvh_entry, None);
        assert_eq!(k.linux_kernel().entry64, 0x100_0000);
    }

    #[test]
    fn corrupted_elves_give_clear_errors() {
        let mut mem = SparseMemory::new(64 << 20);
        let good = elf64(0x100_0000, &[seg(0x100_0000, &[0x90; 64], 64)], None, &[]);
        assert!(matches!(load(&mut mem, &good[..40]), Err(Error::Parse(_))));
        assert!(matches!(
            load(&mut mem, &good[..good.len() - 1]),
            Err(Error::SegmentTruncated { index: 0 })
        ));
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(matches!(load(&mut mem, &bad), Err(Error::Parse(_))));
        let mut arm = good.clone();
        arm[18] = 183;
        assert_eq!(load(&mut mem, &arm), Err(Error::NotX86(183)));

        let high = elf64(0x100_0000, &[seg(0x800_0000, &[0x90], 1)], None, &[]);
        assert!(matches!(
            load(&mut mem, &high),
            Err(Error::SegmentOutsideRam { .. })
        ));
        let low = elf64(0x100_0000, &[seg(0x7000, &[0x90], 1)], None, &[]);
        assert_eq!(
            load(&mut mem, &low),
            Err(Error::SegmentOverlapsBootData { addr: 0x7000 })
        );
        let none = elf64(0x100_0000, &[], None, &[]);
        assert_eq!(load(&mut mem, &none), Err(Error::NoLoadSegments));
    }
}
