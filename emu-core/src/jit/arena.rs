//! Executable memory for compiled blocks: one contiguous region, filled in order.
//!
//! Blocks are small (a few hundred bytes) and numerous, so they are packed back to back
//! rather than given pages of their own: that keeps the instruction TLB and the number
//! of system calls small. The region is mapped readable, writable and executable once.
//! On Apple Silicon, where such a mapping must be `MAP_JIT`, writing is enabled only for
//! the writing thread and only while it copies (`pthread_jit_write_protect_np`), so the
//! vCPU thread keeps seeing it as execute-only. The region is never unmapped while the
//! compiler that owns it lives; [`CodeArena::reset`] reuses it from the start once every
//! block compiled into it has been forgotten.

use std::ptr::NonNull;

/// A region of executable memory.
pub struct CodeArena {
    base: NonNull<u8>,
    size: usize,
    used: usize,
}

// SAFETY: the arena is a plain memory region; the compiler thread that owns it is the only
// writer, and code pointers handed out are only called while it lives.
unsafe impl Send for CodeArena {}

/// Code is placed at this alignment (what compilers use for function entries).
const ALIGN: usize = 16;

impl CodeArena {
    /// Reserves `size` bytes of executable memory (pages are committed as they are
    /// written). `None` if the host refuses.
    pub fn new(size: usize) -> Option<Self> {
        #[allow(unused_mut)]
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANON;
        #[cfg(target_vendor = "apple")]
        {
            flags |= libc::MAP_JIT;
        }
        #[cfg(target_os = "linux")]
        {
            flags |= libc::MAP_NORESERVE;
        }
        // SAFETY: an anonymous mapping at an address of the kernel's choosing touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(CodeArena {
            base: NonNull::new(p.cast())?,
            size,
            used: 0,
        })
    }

    /// Copies `code` in and returns where it starts, or `None` if it does not fit.
    pub fn install(&mut self, code: &[u8]) -> Option<*const u8> {
        let start = self.used.next_multiple_of(ALIGN);
        if code.is_empty() || start.checked_add(code.len())? > self.size {
            return None;
        }
        // SAFETY: `start + len <= size`, inside the mapping, and nothing executes this
        // part of the region yet (it is past everything handed out since the last reset).
        unsafe {
            let dst = self.base.as_ptr().add(start);
            set_writable(true);
            std::ptr::copy_nonoverlapping(code.as_ptr(), dst, code.len());
            set_writable(false);
            // Instruction caches are not coherent with data writes on every host.
            wasmtime_jit_icache_coherence::clear_cache(dst.cast(), code.len()).ok()?;
        }
        wasmtime_jit_icache_coherence::pipeline_flush_mt().ok()?;
        self.used = start + code.len();
        // SAFETY: in bounds, as above.
        Some(unsafe { self.base.as_ptr().add(start) })
    }

    /// Starts filling from the beginning again.
    ///
    /// # Safety
    ///
    /// No code handed out before may run afterwards.
    pub unsafe fn reset(&mut self) {
        self.used = 0;
    }
}

impl Drop for CodeArena {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this size; the owner guarantees no
        // code in it runs any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size) };
    }
}

/// Lets this thread write `MAP_JIT` memory (Apple Silicon); elsewhere the mapping is
/// writable already.
#[inline]
fn set_writable(on: bool) {
    #[cfg(all(target_vendor = "apple", target_arch = "aarch64"))]
    // SAFETY: toggles this thread's view of MAP_JIT regions only.
    unsafe {
        libc::pthread_jit_write_protect_np(if on { 0 } else { 1 })
    };
    #[cfg(not(all(target_vendor = "apple", target_arch = "aarch64")))]
    let _ = on;
}
