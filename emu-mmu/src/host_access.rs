//! The only module that dereferences host pointers into guest RAM.
//!
//! # Invariants
//!
//! Every pointer handed to these functions was produced by [`crate::ram::GuestRam`] from a
//! `vm-memory` region, together with the guarantee that `ptr..ptr + N` lies inside that
//! region. Regions are never unmapped while an [`crate::Mmu`] holds a TLB entry for them:
//! the `GuestRam` keeps every region alive (`Arc`) for as long as the `Mmu` that filled the
//! entry exists, and removing RAM flushes the TLB first.
//!
//! Guest RAM may be touched concurrently by other vCPUs and device threads, so it is never
//! turned into `&[u8]`/`&mut [u8]` (which would promise exclusivity). Accesses are volatile
//! reads and writes of byte arrays, which have alignment 1 and so are valid at any address,
//! as guest accesses may be unaligned.

/// Loads `N` little-endian bytes (N is 1, 2, 4 or 8) and zero-extends them to a `u64`.
///
/// # Safety
///
/// `ptr..ptr + N` must lie inside a live guest RAM region (see the module invariants).
#[inline(always)]
pub unsafe fn load<const N: usize>(ptr: *const u8) -> u64 {
    // SAFETY: the caller guarantees `ptr..ptr + N` is inside a live RAM region; `[u8; K]`
    // has alignment 1, so the volatile read is valid at any address.
    unsafe {
        match N {
            1 => ptr.read_volatile() as u64,
            2 => u16::from_le_bytes((ptr as *const [u8; 2]).read_volatile()) as u64,
            4 => u32::from_le_bytes((ptr as *const [u8; 4]).read_volatile()) as u64,
            8 => u64::from_le_bytes((ptr as *const [u8; 8]).read_volatile()),
            _ => unreachable!("access width must be 1, 2, 4 or 8"),
        }
    }
}

/// Stores the low `N` bytes of `value` little-endian (N is 1, 2, 4 or 8).
///
/// # Safety
///
/// `ptr..ptr + N` must lie inside a live guest RAM region (see the module invariants).
#[inline(always)]
pub unsafe fn store<const N: usize>(ptr: *mut u8, value: u64) {
    // SAFETY: as for `load`; the region is writable RAM.
    unsafe {
        match N {
            1 => ptr.write_volatile(value as u8),
            2 => (ptr as *mut [u8; 2]).write_volatile((value as u16).to_le_bytes()),
            4 => (ptr as *mut [u8; 4]).write_volatile((value as u32).to_le_bytes()),
            8 => (ptr as *mut [u8; 8]).write_volatile(value.to_le_bytes()),
            _ => unreachable!("access width must be 1, 2, 4 or 8"),
        }
    }
}

/// Copies `dst.len()` bytes out of guest RAM.
///
/// # Safety
///
/// `src..src + dst.len()` must lie inside a live guest RAM region.
#[inline]
pub unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
    for (i, byte) in dst.iter_mut().enumerate() {
        // SAFETY: `src + i` is inside the range the caller vouched for.
        *byte = unsafe { src.add(i).read_volatile() };
    }
}

/// Copies `src` into guest RAM.
///
/// # Safety
///
/// `dst..dst + src.len()` must lie inside a live guest RAM region.
#[inline]
pub unsafe fn copy_in(dst: *mut u8, src: &[u8]) {
    for (i, byte) in src.iter().enumerate() {
        // SAFETY: `dst + i` is inside the range the caller vouched for.
        unsafe { dst.add(i).write_volatile(*byte) };
    }
}
