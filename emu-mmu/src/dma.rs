//! Writes to guest RAM that do not go through a vCPU: device DMA.
//!
//! VirtIO devices (and anything else that writes guest memory through `vm-memory`
//! directly, from the vCPU's thread or their own) bypass the `Mmu`, so the code-page
//! marks that make stores drop stale translations never see them. A device reports each
//! range it wrote to a shared [`DmaWrites`]; the vCPU's run loop looks at one flag per
//! block and, when it is set, drops the translations of any code page in those ranges
//! ([`crate::Mmu::collect_dma_writes`]) before running on. A guest only runs code that a
//! device wrote after it learned that the request completed (an interrupt or a poll of
//! the used ring), which is always at least one block later.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Guest-physical ranges written by devices since the vCPU last looked.
#[derive(Debug, Default)]
pub struct DmaWrites {
    pending: AtomicBool,
    ranges: Mutex<Vec<(u64, u64)>>,
}

/// Ranges kept before they are merged into "everything" (a device writing more in one
/// go than this many separate buffers before the vCPU looks is rare).
const MAX_RANGES: usize = 4096;

impl DmaWrites {
    /// Records that `len` bytes at guest-physical `addr` were written.
    pub fn wrote(&self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        if ranges.len() >= MAX_RANGES {
            // Too many to keep apart: remember one range covering them all.
            let lo = ranges.iter().map(|r| r.0).min().unwrap_or(addr).min(addr);
            let hi = ranges
                .iter()
                .map(|r| r.0.saturating_add(r.1))
                .max()
                .unwrap_or(0)
                .max(addr.saturating_add(len));
            ranges.clear();
            ranges.push((lo, hi - lo));
        } else {
            ranges.push((addr, len));
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Whether anything was recorded since the last [`DmaWrites::take`].
    #[inline(always)]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Takes the ranges recorded so far.
    pub fn take(&self) -> Vec<(u64, u64)> {
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.store(false, Ordering::Relaxed);
        std::mem::take(&mut *ranges)
    }
}
