//! The bzImage loader: checks the real-mode setup header and copies the protected-mode
//! kernel to its load address. [`crate::linux::configure`] then writes `boot_params`.
//!
//! Facts from the x86 boot protocol (Linux `Documentation/arch/x86/boot.rst`): the file
//! starts with `setup_sects + 1` 512-byte sectors of real-mode code (0 sectors means 4),
//! whose header starts at 0x1f1, has `0xAA55` at 0x1fe and `"HdrS"` at 0x202, and ends at
//! `0x202 + byte[0x201]`. The protected-mode kernel follows, `syssize * 16` bytes. Since
//! protocol 2.12 `xloadflags` bit 0 says the kernel has a 64-bit entry point at its load
//! address + 0x200. A relocatable kernel may load at any `kernel_alignment`-aligned
//! address; we prefer `pref_address` and need `init_size` bytes of RAM from there.

use crate::layout::{align_up, in_ram, HIGH_MEMORY_START, MMIO_HOLE_END};
use crate::linux::LinuxKernel;
use crate::memory::{GuestMemory, MemoryError};

/// Offset of the setup header in the file and in `boot_params`.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Where the header region of `boot_params` ends (the EDD signature buffer follows).
pub const SETUP_HEADER_LIMIT: usize = 0x290;
/// `"HdrS"`, little-endian.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature at 0x1fe.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `loadflags` bit 0: the protected-mode kernel is loaded at 1 MiB or above (bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0: there is a 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1: kernel, boot_params, command line and initrd may sit above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// Oldest protocol with `xloadflags` (and so a declared 64-bit entry): 2.12.
pub const MIN_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the load address.
pub const ENTRY64_OFFSET: u64 = 0x200;
/// Smallest file that can hold a 2.12+ setup header.
const MIN_FILE: usize = 0x270;

/// Why a bzImage was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too short to hold a setup header.
    #[error("kernel file is {len} bytes, too short to be a bzImage")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// No `"HdrS"` at 0x202: not a Linux kernel image (or one older than protocol 2.00).
    #[error("not a bzImage: no \"HdrS\" magic at 0x202 (found {found:#010x})")]
    BadMagic {
        /// The 4 bytes found there.
        found: u32,
    },
    /// The boot sector signature 0xAA55 is missing.
    #[error("not a bzImage: boot flag at 0x1fe is {found:#06x}, expected 0xaa55")]
    BadBootFlag {
        /// The value found.
        found: u16,
    },
    /// The boot protocol is older than 2.12.
    #[error("boot protocol {}.{:02} is too old: 2.12 or later is needed for 64-bit entry", .version >> 8, .version & 0xff)]
    ProtocolTooOld {
        /// The protocol version (major << 8 | minor).
        version: u16,
    },
    /// A zImage (loads below 1 MiB) rather than a bzImage.
    #[error("zImage kernels (loadflags.LOADED_HIGH clear) are not supported")]
    NotLoadedHigh,
    /// The kernel has no 64-bit entry point (a 32-bit kernel).
    #[error("kernel has no 64-bit entry point (xloadflags.XLF_KERNEL_64 clear): a 32-bit kernel?")]
    No64BitEntry,
    /// The file ends before the setup code or protected-mode kernel it declares.
    #[error("kernel file is truncated: header declares {expected} bytes, file has {actual}")]
    Truncated {
        /// Bytes the header declares (setup + protected-mode kernel).
        expected: u64,
        /// File length.
        actual: u64,
    },
    /// No RAM range holds the kernel's `init_size`.
    #[error(
        "kernel needs {size:#x} bytes of RAM at {pref:#x} (or, relocated, anywhere aligned to \
         {align:#x}) and the machine has no such range"
    )]
    DoesNotFit {
        /// Bytes needed (`init_size`).
        size: u64,
        /// Preferred load address.
        pref: u64,
        /// Alignment a relocated kernel needs.
        align: u64,
    },
    /// Copying the kernel into guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// The fields of the setup header the loader and configurator use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Real-mode sectors after the boot sector (already mapped 0 → 4).
    pub setup_sects: u8,
    /// Protected-mode kernel size in 16-byte paragraphs.
    pub syssize: u32,
    /// Boot protocol version, major << 8 | minor.
    pub version: u16,
    /// `loadflags`.
    pub loadflags: u8,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// Alignment a relocated kernel needs.
    pub kernel_alignment: u32,
    /// Whether the kernel may load at another address than `pref_address`.
    pub relocatable: bool,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// Longest command line, without the NUL.
    pub cmdline_size: u32,
    /// Preferred load address.
    pub pref_address: u64,
    /// Bytes of RAM the kernel needs from its load address while it decompresses.
    pub init_size: u32,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

impl SetupHeader {
    /// Parses and checks the header of `image`.
    ///
    /// # Errors
    ///
    /// [`Error::TooShort`], [`Error::BadMagic`], [`Error::BadBootFlag`],
    /// [`Error::ProtocolTooOld`], [`Error::NotLoadedHigh`], [`Error::No64BitEntry`].
    pub fn parse(image: &[u8]) -> Result<Self, Error> {
        if image.len() < MIN_FILE {
            return Err(Error::TooShort { len: image.len() });
        }
        let magic = u32_at(image, 0x202);
        if magic != HDRS_MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let flag = u16_at(image, 0x1fe);
        if flag != BOOT_FLAG {
            return Err(Error::BadBootFlag { found: flag });
        }
        let version = u16_at(image, 0x206);
        if version < MIN_PROTOCOL {
            return Err(Error::ProtocolTooOld { version });
        }
        let hdr = SetupHeader {
            setup_sects: match image[0x1f1] {
                0 => 4,
                n => n,
            },
            syssize: u32_at(image, 0x1f4),
            version,
            loadflags: image[0x211],
            initrd_addr_max: u32_at(image, 0x22c),
            kernel_alignment: u32_at(image, 0x230),
            relocatable: image[0x234] != 0,
            xloadflags: u16_at(image, 0x236),
            cmdline_size: u32_at(image, 0x238),
            pref_address: u64_at(image, 0x258),
            init_size: u32_at(image, 0x260),
        };
        if hdr.loadflags & LOADED_HIGH == 0 {
            return Err(Error::NotLoadedHigh);
        }
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(Error::No64BitEntry);
        }
        Ok(hdr)
    }

    /// Bytes of real-mode setup code at the start of the file (boot sector included).
    pub fn setup_size(&self) -> u64 {
        (u64::from(self.setup_sects) + 1) * 512
    }

    /// Bytes of protected-mode kernel after the setup code.
    pub fn kernel_size(&self) -> u64 {
        u64::from(self.syssize) * 16
    }
}

/// A bzImage copied into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImage {
    /// The parsed header.
    pub header: SetupHeader,
    /// Where the protected-mode kernel was copied.
    pub load_addr: u64,
    /// The 64-bit entry point: `load_addr + 0x200`.
    pub entry64: u64,
    /// One past the RAM the kernel may use while it starts (`load_addr + init_size`).
    pub kernel_end: u64,
    /// The raw setup header, file offsets 0x1f1 up to its end, for `boot_params`.
    pub header_bytes: Vec<u8>,
}

impl BzImage {
    /// What [`crate::linux::configure`] needs to know about this kernel.
    pub fn linux_kernel(&self) -> LinuxKernel {
        LinuxKernel {
            entry64: self.entry64,
            kernel_end: self.kernel_end,
            setup_header: Some(self.header_bytes.clone()),
            cmdline_max: self.header.cmdline_size as usize,
            initrd_addr_max: u64::from(self.header.initrd_addr_max),
        }
    }
}

/// Chooses the load address: `pref_address` if `size` bytes fit there, else (for a
/// relocatable kernel) the lowest suitably aligned address at or above 1 MiB where they
/// fit below 4 GiB (the identity map's reach).
fn choose_load_addr(mem: &dyn GuestMemory, hdr: &SetupHeader, size: u64) -> Result<u64, Error> {
    let regions = mem.ram_regions();
    let pref = hdr.pref_address;
    let align = if hdr.kernel_alignment.is_power_of_two() {
        u64::from(hdr.kernel_alignment)
    } else {
        0x20_0000
    };
    let err = Error::DoesNotFit { size, pref, align };
    let below_4g = |a: u64| a.checked_add(size).is_some_and(|e| e <= MMIO_HOLE_END);
    if pref >= HIGH_MEMORY_START && in_ram(&regions, pref, size) && below_4g(pref) {
        return Ok(pref);
    }
    if !hdr.relocatable {
        return Err(err);
    }
    // A relocatable 64-bit kernel still decompresses itself at or above its
    // LOAD_PHYSICAL_ADDR (which is what pref_address holds), so a lower load address would
    // only move the failure into the guest: relocate upwards only.
    for r in &regions {
        let Some(a) = align_up(r.base.max(HIGH_MEMORY_START).max(pref), align) else {
            continue;
        };
        if r.contains(a, size) && below_4g(a) {
            return Ok(a);
        }
    }
    Err(err)
}

/// Checks `image` and copies its protected-mode kernel into guest memory.
///
/// # Errors
///
/// Any [`Error`]: a header that fails the checks of [`SetupHeader::parse`], a truncated
/// file, no room for the kernel, or a failed write.
pub fn load(mem: &mut dyn GuestMemory, image: &[u8]) -> Result<BzImage, Error> {
    let header = SetupHeader::parse(image)?;
    let setup = header.setup_size();
    let kernel = header.kernel_size();
    let expected = setup + kernel;
    if kernel == 0 || (image.len() as u64) < expected {
        return Err(Error::Truncated {
            expected,
            actual: image.len() as u64,
        });
    }
    let footprint = u64::from(header.init_size).max(kernel);
    let load_addr = choose_load_addr(mem, &header, footprint)?;
    mem.write(load_addr, &image[setup as usize..expected as usize])?;

    let header_end = (0x202 + usize::from(image[0x201]))
        .min(SETUP_HEADER_LIMIT)
        .min(image.len());
    Ok(BzImage {
        header,
        load_addr,
        entry64: load_addr + ENTRY64_OFFSET,
        kernel_end: load_addr + footprint,
        header_bytes: image[SETUP_HEADER_OFFSET..header_end].to_vec(),
    })
}

/// Whether `image` looks like a bzImage (boot flag and `"HdrS"` present), without the
/// other checks: used to pick a loader.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.len() >= MIN_FILE
        && u16_at(image, 0x1fe) == BOOT_FLAG
        && u32_at(image, 0x202) == HDRS_MAGIC
}

/// Builders of synthetic bzImages for tests (here and in other modules).
#[cfg(test)]
pub(crate) mod testimage {
    /// A minimal 2.15 bzImage: 4 setup sectors (encoded as 0), `kernel_len` bytes of
    /// protected-mode kernel whose first byte is 0xAB, relocatable, pref 16 MiB.
    pub fn bzimage(kernel_len: usize, init_size: u32) -> Vec<u8> {
        let setup = 5 * 512;
        let mut img = vec![0u8; setup + kernel_len];
        img[0x1f1] = 0;
        img[0x1f4..0x1f8].copy_from_slice(&((kernel_len as u32).div_ceil(16)).to_le_bytes());
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x200] = 0xeb; // jmp short
        img[0x201] = 0x6a; // header ends at 0x26c
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 0x01; // LOADED_HIGH
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[0x234] = 1;
        img[0x236..0x238].copy_from_slice(&0x3u16.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        img[setup] = 0xab;
        img
    }
}

#[cfg(test)]
mod tests {
    use super::testimage::bzimage;
    use super::*;
    use crate::memory::SparseMemory;

    #[test]
    fn loads_at_pref_address_with_entry_at_plus_0x200() {
        let mut mem = SparseMemory::new(128 << 20);
        let img = bzimage(0x3000, 0x40_0000);
        let k = load(&mut mem, &img).unwrap();
        assert_eq!(k.load_addr, 0x100_0000);
        assert_eq!(k.entry64, 0x100_0200);
        assert_eq!(k.kernel_end, 0x140_0000);
        assert_eq!(mem.read(0x100_0000, 1), vec![0xab]);
        assert_eq!(k.header.setup_sects, 4);
        assert_eq!(k.header.version, 0x020f);
        assert_eq!(k.header_bytes.len(), 0x26c - 0x1f1);
    }

    #[test]
    fn relocatable_kernel_moves_up_but_never_below_pref() {
        let mut img = bzimage(0x3000, 0x40_0000);
        // Preferred 16 MiB, but the RAM there is taken by a hole: 16..20 MiB are not RAM.
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        let mut mem = SparseMemory::with_regions(vec![
            crate::layout::RamRegion {
                base: 0,
                size: 0x100_0000,
            },
            crate::layout::RamRegion {
                base: 0x140_0000,
                size: 0x100_0000,
            },
        ]);
        let k = load(&mut mem, &img).unwrap();
        assert_eq!(
            k.load_addr, 0x140_0000,
            "the next aligned address above pref"
        );
        // A machine too small to hold the kernel above its preferred address refuses it
        // (the kernel would decompress itself up there anyway).
        img[0x258..0x260].copy_from_slice(&0x400_0000u64.to_le_bytes());
        let mut small = SparseMemory::new(32 << 20);
        assert!(matches!(
            load(&mut small, &img),
            Err(Error::DoesNotFit { .. })
        ));
    }

    #[test]
    fn non_relocatable_kernel_that_does_not_fit_is_refused() {
        let mut img = bzimage(0x3000, 0x40_0000);
        img[0x234] = 0;
        let mut mem = SparseMemory::new(16 << 20);
        let err = load(&mut mem, &img).unwrap_err();
        assert!(
            matches!(
                err,
                Error::DoesNotFit {
                    size: 0x40_0000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn kernel_larger_than_ram_is_refused() {
        let img = bzimage(0x3000, 0x1000_0000);
        let mut mem = SparseMemory::new(64 << 20);
        assert!(matches!(
            load(&mut mem, &img),
            Err(Error::DoesNotFit { .. })
        ));
    }

    #[test]
    fn corrupted_images_give_clear_errors() {
        let mut mem = SparseMemory::new(64 << 20);
        let good = bzimage(0x3000, 0x40_0000);

        assert_eq!(
            load(&mut mem, &good[..0x100]),
            Err(Error::TooShort { len: 0x100 })
        );
        assert_eq!(load(&mut mem, &[]), Err(Error::TooShort { len: 0 }));

        let trunc = &good[..good.len() - 1];
        assert!(matches!(
            load(&mut mem, trunc),
            Err(Error::Truncated { .. })
        ));
        let setup_only = &good[..0x400];
        assert!(matches!(
            load(&mut mem, setup_only),
            Err(Error::Truncated { .. })
        ));

        let garbage: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(matches!(
            load(&mut mem, &garbage),
            Err(Error::BadMagic { .. })
        ));

        let mut bad = good.clone();
        bad[0x202] = b'X';
        assert!(matches!(load(&mut mem, &bad), Err(Error::BadMagic { .. })));
        let mut bad = good.clone();
        bad[0x1fe] = 0;
        assert_eq!(
            load(&mut mem, &bad),
            Err(Error::BadBootFlag { found: 0xaa00 })
        );
        let mut bad = good.clone();
        bad[0x206..0x208].copy_from_slice(&0x020au16.to_le_bytes());
        let err = load(&mut mem, &bad).unwrap_err();
        assert_eq!(err, Error::ProtocolTooOld { version: 0x020a });
        assert!(err.to_string().contains("2.10"), "{err}");
        let mut bad = good.clone();
        bad[0x236] = 0;
        assert_eq!(load(&mut mem, &bad), Err(Error::No64BitEntry));
        let mut bad = good.clone();
        bad[0x211] = 0;
        assert_eq!(load(&mut mem, &bad), Err(Error::NotLoadedHigh));
    }
}
