//! Multiboot (version 1) loader and configurator: the protocol of most bare-metal test
//! kernels.
//!
//! The header (Multiboot Specification 0.6.96, section 3.1) is 32-bit aligned within
//! the first 8192 bytes: magic 0x1BADB002, flags, checksum (the three sum to 0 mod 2^32).
//! Flags bits 0–15 are requirements: bit 0 (page-align modules), bit 1 (memory
//! information) and bit 2 (video mode) are accepted — modules are always page aligned,
//! memory information is always given, and no video mode is set (text mode stays, no
//! framebuffer information is passed). Any other requirement bit is refused. Bit 16 (the
//! "a.out kludge") gives the load addresses in the header; otherwise the image must be
//! ELF and is loaded by [`crate::elf`].
//!
//! The `multiboot_info` structure lives in the page at [`BOOT_INFO_ADDR`]:
//!
//! | address | contents |
//! | --- | --- |
//! | 0x6000 | `multiboot_info`: flags = MEM \| CMDLINE \| MODS \| MMAP \| LOADER_NAME |
//! | 0x6100 | memory map: entries of `size` (20), base, length, type |
//! | 0x6600 | module list: mod_start, mod_end, string, reserved (16 bytes each, ≤ 32) |
//! | 0x6800 | strings: the boot loader name ("quetzal"), then module command lines |
//! | 0x20000 | kernel command line ([`crate::layout::CMDLINE_ADDR`]) |
//!
//! Modules are placed one after another from the first page boundary above the kernel.
//! Entry: 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = 0x6000, flat CS
//! (selector 0x20) and data segments (0x18), interrupts off.

use crate::config::{place_low, write_cmdline, ConfigError, InitrdInfo};
use crate::cpu::{write_boot_gdt, EntryState};
use crate::e820::memory_map;
use crate::elf;
use crate::layout::{
    in_ram, BOOT_DATA_END, BOOT_INFO_ADDR, CMDLINE_MAX, EBDA_START, HIGH_MEMORY_START,
    MMIO_HOLE_END,
};
use crate::memory::{GuestMemory, MemoryError};

/// The header magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// How far into the file the header may start.
pub const SEARCH_LIMIT: usize = 8192;
/// Header flag: page-align modules.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: memory information wanted.
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: video mode wanted.
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the a.out kludge address fields are valid.
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

/// `multiboot_info.flags` bits we set.
const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// Memory map address.
pub const MMAP_ADDR: u64 = BOOT_INFO_ADDR + 0x100;
/// Module list address.
pub const MODS_ADDR: u64 = BOOT_INFO_ADDR + 0x600;
/// String area address.
pub const STRINGS_ADDR: u64 = BOOT_INFO_ADDR + 0x800;
const STRINGS_END: u64 = BOOT_INFO_ADDR + 0x1000;
const MAX_MODULES: usize = 32;
const LOADER_NAME: &str = "quetzal";

/// Why a multiboot image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No header magic in the first 8 KiB.
    #[error("no multiboot header in the first 8 KiB")]
    NoHeader,
    /// A header magic was found but its checksum is wrong.
    #[error("multiboot header at {offset:#x} has a bad checksum")]
    BadChecksum {
        /// File offset of the header.
        offset: usize,
    },
    /// The header requires features we do not provide.
    #[error("multiboot header requires unsupported features (flags {flags:#x})")]
    UnsupportedFlags {
        /// The header's flags.
        flags: u32,
    },
    /// The a.out kludge addresses are inconsistent.
    #[error("multiboot a.out kludge addresses are inconsistent: {0}")]
    BadAddresses(&'static str),
    /// The file ends before the header or the image it describes.
    #[error("multiboot kernel file is truncated")]
    Truncated,
    /// The image does not land in RAM (or lands on the boot data below 0x30000).
    #[error(
        "multiboot image at {addr:#x}+{size:#x} does not fit in RAM above {:#x} and below 4 GiB",
        BOOT_DATA_END
    )]
    DoesNotFit {
        /// Load address.
        addr: u64,
        /// Bytes including BSS.
        size: u64,
    },
    /// The entry point is not reachable in 32-bit mode.
    #[error("multiboot entry point {0:#x} is above 4 GiB")]
    EntryAbove4G(u64),
    /// The ELF image failed to load.
    #[error(transparent)]
    Elf(#[from] elf::Error),
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// The a.out kludge address fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutKludge {
    /// Physical address the header's magic is loaded at.
    pub header_addr: u32,
    /// Physical address of the first loaded byte.
    pub load_addr: u32,
    /// End of the loaded bytes (0: the rest of the file).
    pub load_end_addr: u32,
    /// End of the BSS (0: none).
    pub bss_end_addr: u32,
    /// Entry point.
    pub entry_addr: u32,
}

/// A parsed multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    /// The flags word.
    pub flags: u32,
    /// The a.out addresses when flag bit 16 is set.
    pub aout: Option<AoutKludge>,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Finds and checks the header.
///
/// # Errors
///
/// [`Error::NoHeader`], [`Error::BadChecksum`], [`Error::UnsupportedFlags`],
/// [`Error::Truncated`] (a.out fields cut off).
pub fn find_header(image: &[u8]) -> Result<Header, Error> {
    let limit = image.len().min(SEARCH_LIMIT);
    let mut bad = None;
    let mut offset = 0;
    while offset + 12 <= limit {
        if u32_at(image, offset) == HEADER_MAGIC {
            let flags = u32_at(image, offset + 4);
            let sum = HEADER_MAGIC
                .wrapping_add(flags)
                .wrapping_add(u32_at(image, offset + 8));
            if sum == 0 {
                return parse_at(image, offset, flags);
            }
            bad.get_or_insert(offset);
        }
        offset += 4;
    }
    Err(bad.map_or(Error::NoHeader, |offset| Error::BadChecksum { offset }))
}

fn parse_at(image: &[u8], offset: usize, flags: u32) -> Result<Header, Error> {
    let known = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;
    if flags & 0xffff & !known != 0 {
        return Err(Error::UnsupportedFlags { flags });
    }
    let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
        if offset + 32 > image.len() {
            return Err(Error::Truncated);
        }
        let f = |i: usize| u32_at(image, offset + 12 + 4 * i);
        Some(AoutKludge {
            header_addr: f(0),
            load_addr: f(1),
            load_end_addr: f(2),
            bss_end_addr: f(3),
            entry_addr: f(4),
        })
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        aout,
    })
}

/// Whether `image` has a valid multiboot header (used to pick a loader).
pub fn is_multiboot(image: &[u8]) -> bool {
    find_header(image).is_ok()
}

/// A multiboot kernel in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedMultiboot {
    /// The header.
    pub header: Header,
    /// 32-bit entry point.
    pub entry: u32,
    /// One past the last byte of the image (BSS included): modules go above.
    pub kernel_end: u64,
}

/// Finds the header and loads the image (a.out kludge or ELF).
///
/// # Errors
///
/// Any [`Error`].
pub fn load(mem: &mut dyn GuestMemory, image: &[u8]) -> Result<LoadedMultiboot, Error> {
    let header = find_header(image)?;
    let Some(a) = header.aout else {
        let k = elf::load(mem, image)?;
        let entry = u32::try_from(k.entry).map_err(|_| Error::EntryAbove4G(k.entry))?;
        return Ok(LoadedMultiboot {
            header,
            entry,
            kernel_end: k.kernel_end,
        });
    };
    if a.load_addr > a.header_addr {
        return Err(Error::BadAddresses("load_addr is above header_addr"));
    }
    let file_start = header
        .offset
        .checked_sub((a.header_addr - a.load_addr) as usize)
        .ok_or(Error::BadAddresses(
            "header_addr - load_addr exceeds the header's file offset",
        ))?;
    let load_len = if a.load_end_addr == 0 {
        (image.len() - file_start) as u64
    } else {
        u64::from(
            a.load_end_addr
                .checked_sub(a.load_addr)
                .ok_or(Error::BadAddresses("load_end_addr is below load_addr"))?,
        )
    };
    if file_start as u64 + load_len > image.len() as u64 {
        return Err(Error::Truncated);
    }
    let load_end = u64::from(a.load_addr) + load_len;
    let end = if a.bss_end_addr == 0 {
        load_end
    } else if u64::from(a.bss_end_addr) < load_end {
        return Err(Error::BadAddresses(
            "bss_end_addr is below the end of the loaded image",
        ));
    } else {
        u64::from(a.bss_end_addr)
    };
    let addr = u64::from(a.load_addr);
    let size = end - addr;
    if addr < BOOT_DATA_END || !in_ram(&mem.ram_regions(), addr, size) {
        return Err(Error::DoesNotFit { addr, size });
    }
    mem.write(addr, &image[file_start..file_start + load_len as usize])?;
    if end > load_end {
        mem.zero(load_end, end - load_end)?;
    }
    Ok(LoadedMultiboot {
        header,
        entry: a.entry_addr,
        kernel_end: end,
    })
}

/// One boot module (for Linux-less kernels, often a test payload or an initrd).
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    /// The module's bytes.
    pub data: &'a [u8],
    /// Its command line (the `string` field).
    pub cmdline: &'a str,
}

/// The machine-side inputs of a multiboot boot.
#[derive(Clone, Debug, Default)]
pub struct MultibootConfig<'a> {
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Modules, in order.
    pub modules: &'a [Module<'a>],
}

/// What [`configure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootBoot {
    /// Registers for the boot vCPU.
    pub entry: EntryState,
    /// Where each module went.
    pub modules: Vec<InitrdInfo>,
}

/// Writes `multiboot_info`, the memory map, the command line and the modules.
///
/// # Errors
///
/// [`ConfigError::TooManyModules`], [`ConfigError::CmdlineTooLong`] (also for module
/// strings that overflow their area), [`ConfigError::InitrdDoesNotFit`] for a module, or
/// a memory error.
pub fn configure(
    mem: &mut dyn GuestMemory,
    kernel: &LoadedMultiboot,
    cfg: &MultibootConfig<'_>,
) -> Result<MultibootBoot, ConfigError> {
    if cfg.modules.len() > MAX_MODULES {
        return Err(ConfigError::TooManyModules(cfg.modules.len()));
    }
    let regions = mem.ram_regions();
    let cmdline = write_cmdline(mem, cfg.cmdline, CMDLINE_MAX - 1)?;

    let mut page = vec![0u8; 0x1000];
    let mut put = |off: u64, v: &[u8]| {
        let o = (off - BOOT_INFO_ADDR) as usize;
        page[o..o + v.len()].copy_from_slice(v);
    };

    // Strings: loader name, then module command lines.
    let mut strings = STRINGS_ADDR;
    let mut add_string = |s: &str, put: &mut dyn FnMut(u64, &[u8])| -> Result<u64, ConfigError> {
        let at = strings;
        if at + s.len() as u64 + 1 > STRINGS_END || s.as_bytes().contains(&0) {
            return Err(ConfigError::CmdlineTooLong {
                len: s.len(),
                max: (STRINGS_END - at).saturating_sub(1) as usize,
            });
        }
        put(at, s.as_bytes());
        strings += s.len() as u64 + 1; // the page is zeroed: the NUL is already there
        Ok(at)
    };
    let name = add_string(LOADER_NAME, &mut put)?;

    let mut modules = Vec::new();
    let mut next = kernel.kernel_end;
    for (i, m) in cfg.modules.iter().enumerate() {
        let size = m.data.len() as u64;
        let addr = place_low(&regions, size.max(1), next, MMIO_HOLE_END)?;
        mem.write(addr, m.data)?;
        let string = add_string(m.cmdline, &mut put)?;
        let e = MODS_ADDR + i as u64 * 16;
        put(e, &(addr as u32).to_le_bytes());
        put(e + 4, &((addr + size) as u32).to_le_bytes());
        put(e + 8, &(string as u32).to_le_bytes());
        modules.push(InitrdInfo { addr, size });
        next = addr + size;
    }

    let map = memory_map(&regions);
    for (i, e) in map.iter().enumerate() {
        let at = MMAP_ADDR + i as u64 * 24;
        put(at, &20u32.to_le_bytes());
        put(at + 4, &e.to_bytes());
    }
    let mem_lower = regions
        .iter()
        .find(|r| r.base == 0)
        .map_or(0, |r| r.end().min(EBDA_START) / 1024);
    let mem_upper = regions
        .iter()
        .find(|r| r.base <= HIGH_MEMORY_START && r.end() > HIGH_MEMORY_START)
        .map_or(0, |r| (r.end() - HIGH_MEMORY_START) / 1024);

    let i = BOOT_INFO_ADDR;
    let flags = INFO_MEM | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;
    put(i, &flags.to_le_bytes());
    put(i + 4, &(mem_lower as u32).to_le_bytes());
    put(
        i + 8,
        &(mem_upper.min(u64::from(u32::MAX)) as u32).to_le_bytes(),
    );
    put(i + 16, &(cmdline as u32).to_le_bytes());
    put(i + 20, &(cfg.modules.len() as u32).to_le_bytes());
    put(i + 24, &(MODS_ADDR as u32).to_le_bytes());
    put(i + 44, &((map.len() * 24) as u32).to_le_bytes());
    put(i + 48, &(MMAP_ADDR as u32).to_le_bytes());
    put(i + 64, &(name as u32).to_le_bytes());
    mem.write(BOOT_INFO_ADDR, &page)?;
    write_boot_gdt(mem)?;
    Ok(MultibootBoot {
        entry: EntryState::protected_mode(
            u64::from(kernel.entry),
            u64::from(BOOTLOADER_MAGIC),
            BOOT_INFO_ADDR,
        ),
        modules,
    })
}

/// Where [`aout_kludge_image`] loads a kernel (1 MiB); the entry point is 32 bytes on,
/// right after the header.
pub const AOUT_LOAD: u32 = 0x10_0000;

/// A minimal multiboot kernel (a.out kludge, which any multiboot loader takes): the
/// 32-byte header at file offset 0, loaded at [`AOUT_LOAD`], then `code`, entered at
/// its first byte (`AOUT_LOAD + 32`) in 32-bit protected mode, then `bss` zeroed bytes.
/// For tests and tools that boot hand-written code.
pub fn aout_kludge_image(code: &[u8], bss: u32) -> Vec<u8> {
    let entry = AOUT_LOAD + 32;
    let flags = FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO | FLAG_PAGE_ALIGN;
    let load_end = entry + code.len() as u32;
    let mut img = Vec::new();
    for w in [
        HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        AOUT_LOAD,
        AOUT_LOAD,
        load_end,
        load_end + bss,
        entry,
    ] {
        img.extend_from_slice(&w.to_le_bytes());
    }
    img.extend_from_slice(code);
    img
}

/// Test images.
#[cfg(test)]
pub(crate) mod testimage {
    pub use super::aout_kludge_image as aout;

    /// A bare multiboot header (no a.out kludge) with `flags`.
    pub fn header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [
            super::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(super::HEADER_MAGIC).wrapping_sub(flags),
        ] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::testimage::{aout, header};
    use super::*;
    use crate::cpu::EntryMode;
    use crate::elf::testimage::{elf64, Seg};
    use crate::layout::CMDLINE_ADDR;
    use crate::memory::SparseMemory;

    #[test]
    fn aout_kludge_kernel_loads_and_gets_a_full_info_structure() {
        let img = aout(&[0xf4, 0xeb, 0xfd], 0x2000);
        let mut mem = SparseMemory::new(32 << 20);
        mem.write(0x10_0023, &[0xff; 8]).unwrap(); // where the BSS goes
        let k = load(&mut mem, &img).unwrap();
        assert_eq!(k.entry, 0x10_0020);
        assert_eq!(k.kernel_end, 0x10_0023 + 0x2000);
        assert_eq!(mem.read(0x10_0020, 4), vec![0xf4, 0xeb, 0xfd, 0]);

        let mods = [
            Module {
                data: b"first",
                cmdline: "mod1 arg",
            },
            Module {
                data: &[1u8; 0x1234],
                cmdline: "",
            },
        ];
        let boot = configure(
            &mut mem,
            &k,
            &MultibootConfig {
                cmdline: "kernel -v",
                modules: &mods,
            },
        )
        .unwrap();
        let e = boot.entry;
        assert_eq!(e.mode, EntryMode::Protected32);
        assert_eq!(
            (e.rip, e.rax, e.rbx),
            (0x10_0020, 0x2bad_b002, BOOT_INFO_ADDR)
        );

        let i = BOOT_INFO_ADDR;
        let flags = mem.read_u32(i);
        assert_eq!(flags, 1 | 4 | 8 | 64 | 512);
        assert_eq!(mem.read_u32(i + 4), 639);
        assert_eq!(mem.read_u32(i + 8), (32 << 10) - 1024);
        assert_eq!(mem.read_cstr(mem.read_u32(i + 16) as u64), "kernel -v");
        assert_eq!(mem.read_u32(i + 16) as u64, CMDLINE_ADDR);
        assert_eq!(mem.read_cstr(mem.read_u32(i + 64) as u64), "quetzal");

        assert_eq!(mem.read_u32(i + 20), 2);
        let m = mem.read_u32(i + 24) as u64;
        let (s0, e0) = (mem.read_u32(m) as u64, mem.read_u32(m + 4) as u64);
        assert_eq!(s0 % 0x1000, 0);
        assert!(s0 >= k.kernel_end);
        assert_eq!(mem.read(s0, (e0 - s0) as usize), b"first".to_vec());
        assert_eq!(mem.read_cstr(mem.read_u32(m + 8) as u64), "mod1 arg");
        let (s1, e1) = (mem.read_u32(m + 16) as u64, mem.read_u32(m + 20) as u64);
        assert!(s1 >= e0 && s1 % 0x1000 == 0 && e1 - s1 == 0x1234);
        assert_eq!(boot.modules[1].addr, s1);

        let (len, addr) = (mem.read_u32(i + 44) as u64, mem.read_u32(i + 48) as u64);
        assert_eq!(len, 3 * 24);
        assert_eq!(mem.read_u32(addr), 20);
        assert_eq!(mem.read_u64(addr + 4 + 24 * 2), 0x10_0000);
        assert_eq!(mem.read_u32(addr + 20 + 24 * 2), 1);
    }

    #[test]
    fn elf_multiboot_kernel_uses_the_elf_loader() {
        let img = elf64(
            0x20_0000,
            &[Seg {
                paddr: 0x20_0000,
                data: vec![0xf4],
                memsz: 0x100,
            }],
            None,
            &header(0),
        );
        let mut mem = SparseMemory::new(32 << 20);
        let k = load(&mut mem, &img).unwrap();
        assert_eq!((k.entry, k.kernel_end), (0x20_0000, 0x20_0100));
        assert_eq!(mem.read(0x20_0000, 1), vec![0xf4]);
    }

    #[test]
    fn corrupted_multiboot_images_give_clear_errors() {
        let mut mem = SparseMemory::new(32 << 20);
        let good = aout(&[0xf4], 0);
        assert!(load(&mut mem, &good).is_ok());

        assert_eq!(load(&mut mem, &[0u8; 100]), Err(Error::NoHeader));
        assert_eq!(load(&mut mem, &[]), Err(Error::NoHeader));
        let mut bad = good.clone();
        bad[8] ^= 1;
        assert_eq!(load(&mut mem, &bad), Err(Error::BadChecksum { offset: 0 }));
        assert_eq!(load(&mut mem, &good[..20]), Err(Error::Truncated));
        assert_eq!(
            load(&mut mem, &good[..good.len() - 1]),
            Err(Error::Truncated)
        );
        // A header past the first 8 KiB is not found.
        let mut far = vec![0u8; 8192];
        far.extend_from_slice(&good);
        assert_eq!(load(&mut mem, &far), Err(Error::NoHeader));
        // Required feature bit 3 is unknown.
        assert_eq!(
            load(&mut mem, &header(1 << 3)),
            Err(Error::UnsupportedFlags { flags: 8 })
        );
        // Header flags without the kludge on a non-ELF file.
        assert!(matches!(
            load(&mut mem, &header(0)),
            Err(Error::Elf(elf::Error::Parse(_)))
        ));
        // load_addr above header_addr.
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&0x10_0010u32.to_le_bytes());
        assert!(matches!(load(&mut mem, &bad), Err(Error::BadAddresses(_))));
        // Loaded beyond RAM.
        let mut small = SparseMemory::new(1 << 20);
        assert!(matches!(
            load(&mut small, &good),
            Err(Error::DoesNotFit { .. })
        ));
    }

    #[test]
    fn module_larger_than_ram_is_refused() {
        let mut mem = SparseMemory::new(4 << 20);
        let k = load(&mut mem, &aout(&[0xf4], 0)).unwrap();
        let big = vec![0u8; 4 << 20];
        let mods = [Module {
            data: &big,
            cmdline: "",
        }];
        let err = configure(
            &mut mem,
            &k,
            &MultibootConfig {
                cmdline: "",
                modules: &mods,
            },
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::InitrdDoesNotFit { .. }));
    }
}
