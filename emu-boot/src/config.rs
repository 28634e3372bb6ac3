//! Configurator building blocks shared by every protocol: the command line, the initrd
//! (or module) placement, and the [`ConfigError`] they fail with.

use crate::layout::{align_down, align_up, RamRegion, CMDLINE_ADDR, CMDLINE_MAX};
use crate::memory::{GuestMemory, MemoryError};

/// Why a configurator could not set the boot up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The command line, with its NUL, is longer than the kernel or our area accepts.
    #[error("command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Bytes of command line given (without the NUL).
        len: usize,
        /// Bytes the kernel accepts (without the NUL).
        max: usize,
    },
    /// The command line contains a NUL byte, which would cut it short.
    #[error("command line contains a NUL byte")]
    CmdlineHasNul,
    /// No RAM range between the kernel's end and the protocol's ceiling holds the initrd.
    #[error(
        "initrd of {size:#x} bytes does not fit in RAM between {min:#x} and {max:#x} \
         (give the machine more memory or use a smaller initrd)"
    )]
    InitrdDoesNotFit {
        /// Size of the initrd.
        size: u64,
        /// Lowest acceptable address (end of the kernel).
        min: u64,
        /// Highest acceptable end address (exclusive).
        max: u64,
    },
    /// Too many CPUs for the xAPIC MADT we write (ids are 8 bits, the IOAPIC takes one).
    #[error("{0} vCPUs: the MADT supports 1 to 254")]
    BadCpuCount(u32),
    /// The ACPI tables outgrew their area below 1 MiB.
    #[error("ACPI tables need {0:#x} bytes, more than their area holds")]
    AcpiTooLarge(u64),
    /// More modules than the boot-info page holds.
    #[error("{0} modules: at most 32 are supported")]
    TooManyModules(usize),
    /// Writing guest memory failed (the fixed boot areas are not RAM).
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Writes `cmdline` with its NUL at [`CMDLINE_ADDR`] and returns that address.
///
/// `max_len` is the kernel's limit in bytes without the NUL (Linux's `cmdline_size`);
/// our area's own [`CMDLINE_MAX`] applies too.
///
/// # Errors
///
/// [`ConfigError::CmdlineTooLong`], [`ConfigError::CmdlineHasNul`], or a memory error.
pub fn write_cmdline(
    mem: &mut dyn GuestMemory,
    cmdline: &str,
    max_len: usize,
) -> Result<u64, ConfigError> {
    let max = max_len.min(CMDLINE_MAX - 1);
    if cmdline.len() > max {
        return Err(ConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(ConfigError::CmdlineHasNul);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write(CMDLINE_ADDR, &bytes)?;
    Ok(CMDLINE_ADDR)
}

/// Where an initrd (or module) went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdInfo {
    /// Guest physical address (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Finds the highest page-aligned address `a` with `[a, a + size)` inside one RAM region,
/// `a >= min` and `a + size <= max`. High placement keeps the initrd clear of the
/// kernel's decompression and of the allocator's early low memory, as bootloaders do.
///
/// # Errors
///
/// [`ConfigError::InitrdDoesNotFit`].
pub fn place_high(
    regions: &[RamRegion],
    size: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let err = ConfigError::InitrdDoesNotFit { size, min, max };
    let mut best = None;
    for r in regions {
        let top = r.end().min(max);
        let Some(start) = top.checked_sub(size) else {
            continue;
        };
        let a = align_down(start, 0x1000);
        if a >= r.base && a >= min && best.map_or(true, |b| a > b) {
            best = Some(a);
        }
    }
    best.ok_or(err)
}

/// Finds the lowest page-aligned address at or above `min` where `size` bytes fit in one
/// RAM region below `max` (multiboot modules go right after the kernel, as GRUB does).
///
/// # Errors
///
/// [`ConfigError::InitrdDoesNotFit`].
pub fn place_low(regions: &[RamRegion], size: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let err = ConfigError::InitrdDoesNotFit { size, min, max };
    for r in regions {
        let Some(a) = align_up(r.base.max(min), 0x1000) else {
            continue;
        };
        if a.checked_add(size)
            .is_some_and(|end| end <= r.end() && end <= max)
        {
            return Ok(a);
        }
    }
    Err(err)
}

/// Places `data` as high as possible in `[min, max)` and copies it there.
///
/// # Errors
///
/// [`ConfigError::InitrdDoesNotFit`] or a memory error.
pub fn load_initrd(
    mem: &mut dyn GuestMemory,
    data: &[u8],
    min: u64,
    max: u64,
) -> Result<InitrdInfo, ConfigError> {
    let size = data.len() as u64;
    let addr = place_high(&mem.ram_regions(), size, min, max)?;
    mem.write(addr, data)?;
    Ok(InitrdInfo { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_regions;
    use crate::memory::SparseMemory;

    #[test]
    fn cmdline_is_written_with_its_nul() {
        let mut m = SparseMemory::new(1 << 20);
        assert_eq!(
            write_cmdline(&mut m, "console=ttyS0", 2047),
            Ok(CMDLINE_ADDR)
        );
        assert_eq!(m.read_cstr(CMDLINE_ADDR), "console=ttyS0");
    }

    #[test]
    fn too_long_cmdline_is_refused() {
        let mut m = SparseMemory::new(1 << 20);
        let long = "x".repeat(2048);
        assert_eq!(
            write_cmdline(&mut m, &long, 2047),
            Err(ConfigError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        );
        assert_eq!(
            write_cmdline(&mut m, "a\0b", 2047),
            Err(ConfigError::CmdlineHasNul)
        );
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let r = ram_regions(64 << 20);
        let a = place_high(&r, 0x1800, 0x100_0000, u64::MAX).unwrap();
        assert_eq!(a, (64 << 20) - 0x2000);
        // A ceiling below the top of RAM is honoured.
        let a = place_high(&r, 0x1000, 0, 0x200_0000).unwrap();
        assert_eq!(a, 0x200_0000 - 0x1000);
    }

    #[test]
    fn initrd_that_does_not_fit_is_a_clear_error() {
        let mut m = SparseMemory::new(64 << 20);
        let big = vec![0u8; 60 << 20];
        let err = load_initrd(&mut m, &big, 16 << 20, u64::MAX).unwrap_err();
        assert!(matches!(err, ConfigError::InitrdDoesNotFit { .. }));
        assert!(err.to_string().contains("does not fit"));
    }

    #[test]
    fn low_placement_is_the_first_fit() {
        let r = ram_regions(64 << 20);
        assert_eq!(place_low(&r, 0x10, 0x10_0001, u64::MAX), Ok(0x10_1000));
        assert!(place_low(&r, (64 << 20) + 1, 0, u64::MAX).is_err());
    }
}
