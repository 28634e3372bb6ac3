//! Giving ballooned guest pages back to the host OS.
//!
//! Guest RAM is `vm-memory` anonymous private mappings. [`release`] advises the kernel
//! that a range of it is no longer needed; the mapping itself stays, so every host pointer
//! into guest RAM remains valid (the invariant the soft TLB relies on). This is the only
//! `unsafe` of the balloon.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::virtio::GuestMemory;

/// Whether this build can release pages at all.
pub const SUPPORTED: bool = cfg!(unix);

/// The host's page size (4 KiB on x86-64 Linux, 16 KiB on Apple Silicon).
pub fn host_page_size() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            return n as u64;
        }
    }
    4096
}

/// Releases the host pages wholly inside guest-physical `[addr, addr + len)`; returns
/// how many bytes were released (zero where releasing is unsupported, the range is not
/// in one anonymous RAM region, or it covers no whole host page).
pub fn release(mem: &GuestMemory, addr: GuestAddress, len: u64) -> u64 {
    let Some(region) = mem.find_region(addr) else {
        return 0;
    };
    // File-backed RAM would only drop its mapping and reread the file: not a release.
    if region.file_offset().is_some() {
        return 0;
    }
    let offset = addr.0 - region.start_addr().0;
    if offset
        .checked_add(len)
        .map_or(true, |end| end > region.len())
    {
        return 0;
    }
    let Ok(base) = mem.get_host_address(region.start_addr()) else {
        return 0;
    };
    // Host pages wholly inside the range, as offsets from the region's base (which is
    // page aligned: it comes from mmap).
    let page = host_page_size();
    let host_start = base as u64 + offset;
    let start = host_start.next_multiple_of(page) - base as u64;
    let end = (host_start + len) / page * page - base as u64;
    if end <= start {
        return 0;
    }
    if advise(base.wrapping_add(start as usize), (end - start) as usize) {
        end - start
    } else {
        0
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const ADVICE: libc::c_int = libc::MADV_DONTNEED;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
const ADVICE: libc::c_int = libc::MADV_FREE;

#[cfg(unix)]
fn advise(start: *mut u8, len: usize) -> bool {
    // SAFETY: `[start, start + len)` lies inside one live anonymous private mapping of
    // guest RAM (checked against the region's bounds by `release`) and is host-page
    // aligned. MADV_DONTNEED / MADV_FREE keep the mapping: later accesses through any
    // pointer into it, from any thread, see zero-filled (or old) pages, never unmapped
    // memory. The guest gave these pages up, so no Rust reference into them exists (guest
    // RAM is only reached through volatile accesses).
    unsafe { libc::madvise(start.cast(), len, ADVICE) == 0 }
}

#[cfg(not(unix))]
fn advise(_start: *mut u8, _len: usize) -> bool {
    false
}
