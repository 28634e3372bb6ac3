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
//! turned into `&[u8]`/`&mut [u8]` (which would promise exclusivity). Aligned accesses are
//! atomics; unaligned ones and bulk copies are byte-wise volatile accesses, which are valid
//! at any address.
//!
//! # Memory ordering (TSO on every host)
//!
//! x86 guests rely on total store order: loads are not reordered with older loads, stores
//! not with older stores or loads; only a store followed by a load may pass. Guest loads
//! here are acquire loads and guest stores release stores, which is exactly that: on
//! x86-64 hosts both compile to plain moves (the host is TSO already, and the orderings
//! keep the compiler from reordering), on aarch64 to LDAR/STLR. The byte-wise paths fence
//! the same way (acquire after, release before), and locked instructions use
//! compare-exchanges with acquire-release ordering, which are full barriers like the
//! guest's LOCK prefix. MFENCE is a sequentially consistent fence.

use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Loads `N` little-endian bytes (N is 1, 2, 4 or 8) and zero-extends them to a `u64`.
///
/// Naturally aligned accesses (nearly all of them) are single relaxed atomic loads, which
/// compile to one plain load on x86-64 and aarch64 and are well defined even while another
/// thread writes the same bytes. Unaligned ones are assembled from byte-wise volatile loads.
///
/// # Safety
///
/// `ptr..ptr + N` must lie inside a live guest RAM region (see the module invariants).
#[inline(always)]
pub unsafe fn load<const N: usize>(ptr: *const u8) -> u64 {
    if (ptr as usize) & (N - 1) != 0 {
        // SAFETY: forwarded caller guarantee.
        return unsafe { load_bytewise::<N>(ptr) };
    }
    // SAFETY: the caller guarantees `ptr..ptr + N` is inside a live RAM region, and the
    // check above made `ptr` aligned for the atomic type. Guest RAM is only ever accessed
    // through atomics or volatile accesses, never through references.
    unsafe {
        match N {
            1 => AtomicU8::from_ptr(ptr as *mut u8).load(Ordering::Acquire) as u64,
            2 => u16::from_le(AtomicU16::from_ptr(ptr as *mut u16).load(Ordering::Acquire)) as u64,
            4 => u32::from_le(AtomicU32::from_ptr(ptr as *mut u32).load(Ordering::Acquire)) as u64,
            8 => u64::from_le(AtomicU64::from_ptr(ptr as *mut u64).load(Ordering::Acquire)),
            _ => unreachable!("access width must be 1, 2, 4 or 8"),
        }
    }
}

/// Stores the low `N` bytes of `value` little-endian (N is 1, 2, 4 or 8); aligned stores
/// are single relaxed atomic stores, unaligned ones byte-wise volatile stores.
///
/// # Safety
///
/// `ptr..ptr + N` must lie inside a live guest RAM region (see the module invariants).
#[inline(always)]
pub unsafe fn store<const N: usize>(ptr: *mut u8, value: u64) {
    if (ptr as usize) & (N - 1) != 0 {
        // SAFETY: forwarded caller guarantee.
        return unsafe { store_bytewise::<N>(ptr, value) };
    }
    // SAFETY: as in `load`; the region is writable RAM.
    unsafe {
        match N {
            1 => AtomicU8::from_ptr(ptr).store(value as u8, Ordering::Release),
            2 => AtomicU16::from_ptr(ptr as *mut u16)
                .store((value as u16).to_le(), Ordering::Release),
            4 => AtomicU32::from_ptr(ptr as *mut u32)
                .store((value as u32).to_le(), Ordering::Release),
            8 => AtomicU64::from_ptr(ptr as *mut u64).store(value.to_le(), Ordering::Release),
            _ => unreachable!("access width must be 1, 2, 4 or 8"),
        }
    }
}

#[cold]
unsafe fn load_bytewise<const N: usize>(ptr: *const u8) -> u64 {
    let mut value = 0u64;
    for i in 0..N {
        // SAFETY: `ptr + i` is inside the range the caller vouched for.
        value |= (unsafe { ptr.add(i).read_volatile() } as u64) << (8 * i);
    }
    fence(Ordering::Acquire);
    value
}

#[cold]
unsafe fn store_bytewise<const N: usize>(ptr: *mut u8, value: u64) {
    fence(Ordering::Release);
    for i in 0..N {
        // SAFETY: `ptr + i` is inside the range the caller vouched for.
        unsafe { ptr.add(i).write_volatile((value >> (8 * i)) as u8) };
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

/// Atomically replaces the little-endian `u32` at `ptr` with `new` if it holds `old`.
/// Returns whether it did. Used for accessed/dirty updates of paging-structure entries,
/// which other vCPUs and devices may write at the same time.
///
/// # Safety
///
/// `ptr..ptr + 4` must lie inside a live guest RAM region and `ptr` must be 4-byte aligned.
#[inline]
pub unsafe fn compare_exchange_u32(ptr: *mut u8, old: u32, new: u32) -> bool {
    debug_assert!(ptr as usize % 4 == 0, "entry pointer must be aligned");
    // SAFETY: the caller guarantees an aligned 4-byte location inside live guest RAM, which
    // is only ever accessed through atomics or volatile accesses.
    unsafe { AtomicU32::from_ptr(ptr as *mut u32) }
        .compare_exchange(
            old.to_le(),
            new.to_le(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Atomically replaces the little-endian `u64` at `ptr` with `new` if it holds `old`.
/// Returns whether it did.
///
/// # Safety
///
/// `ptr..ptr + 8` must lie inside a live guest RAM region and `ptr` must be 8-byte aligned.
#[inline]
pub unsafe fn compare_exchange_u64(ptr: *mut u8, old: u64, new: u64) -> bool {
    debug_assert!(ptr as usize % 8 == 0, "entry pointer must be aligned");
    // SAFETY: as in `compare_exchange_u32`, for an aligned 8-byte location.
    unsafe { AtomicU64::from_ptr(ptr as *mut u64) }
        .compare_exchange(
            old.to_le(),
            new.to_le(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Atomically replaces the little-endian `u128` at `ptr` with `new` if it holds `old`
/// (CMPXCHG16B). Returns whether it did. Uses the host's 16-byte compare-exchange
/// (CMPXCHG16B on x86-64, CASP or LDXP/STXP on aarch64) through `portable-atomic`.
///
/// # Safety
///
/// `ptr..ptr + 16` must lie inside a live guest RAM region and `ptr` must be 16-byte
/// aligned.
#[inline]
pub unsafe fn compare_exchange_u128(ptr: *mut u8, old: u128, new: u128) -> bool {
    debug_assert!(ptr as usize % 16 == 0, "operand pointer must be aligned");
    // SAFETY: as in `compare_exchange_u32`, for an aligned 16-byte location.
    unsafe { portable_atomic::AtomicU128::from_ptr(ptr as *mut u128) }
        .compare_exchange(
            old.to_le(),
            new.to_le(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}
