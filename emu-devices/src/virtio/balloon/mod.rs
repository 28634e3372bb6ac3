//! virtio-balloon (traditional memory balloon, VirtIO 1.2 §5.5): the host asks for guest
//! memory back, the guest gives pages, and the host releases them.
//!
//! # Design
//!
//! - **Queues.** inflateq (0), deflateq (1) and statsq (2). Each inflate or deflate
//!   buffer is an array of little-endian 32-bit page frame numbers of 4 KiB pages
//!   (VIRTIO_BALLOON_PFN_SHIFT = 12, whatever the guest's page size), at most
//!   [`MAX_PFNS_PER_CHAIN`] of them per chain (Linux sends 256; the rest of a longer chain
//!   is ignored, which the cooperative protocol tolerates).
//! - **Target.** The host sets `num_pages` with
//!   [`set_target_pages`](crate::virtio::mmio::MmioTransport::set_target_pages), which
//!   updates the configuration space and raises the configuration-change interrupt (the
//!   transport's existing `notify_config_change`); the driver inflates or deflates towards
//!   it and writes how far it got into `actual` ([`Balloon::actual_pages`]).
//! - **Releasing memory.** Pages the guest inflates are recorded (a set of frame numbers,
//!   bounded by guest RAM, since frames outside RAM are ignored) and released on the host
//!   through [`backend`]: `madvise(MADV_DONTNEED)` on Linux, which frees them at once and
//!   zero-fills them on the next touch; `madvise(MADV_FREE)` on macOS and the BSDs, which
//!   frees them under memory pressure. Both keep the mapping, so host pointers into guest
//!   RAM (the soft TLB, the JIT's inline accesses) stay valid and nothing has to be
//!   flushed; a guest that touches a ballooned page anyway just sees zeroes or its old
//!   data. Only host pages wholly covered by a run of contiguous ballooned frames are
//!   released, so a host with 16 KiB pages (Apple Silicon) releases what it can. Where
//!   `madvise` does not exist (not Unix) or the RAM is file-backed, pages are only
//!   recorded. Deflating needs no host action: VIRTIO_BALLOON_F_MUST_TELL_HOST is not
//!   offered, so the guest may reuse pages before telling the device.
//! - **Statistics.** VIRTIO_BALLOON_F_STATS_VQ is offered. The driver primes statsq with
//!   one buffer of `(tag: u16, value: u64)` entries; the device keeps the buffer and the
//!   latest values ([`Balloon::stats`]). The host asks for fresh values with
//!   [`MmioTransport::request_stats`](crate::virtio::mmio::MmioTransport::request_stats),
//!   which hands the buffer back; the driver refills it and kicks again. Linux primes
//!   statsq before it sets DRIVER_OK (the specification forbids notifying that early, and
//!   the transport ignores such notifications), so the probe's buffer is picked up from
//!   the ring by the first request.
//! - **Other features.** VIRTIO_BALLOON_F_DEFLATE_ON_OOM is offered when the device is
//!   created with it (QEMU's `deflate-on-oom`, off by default): the guest may then deflate
//!   on its own under memory pressure, and Linux does not shrink MemTotal while inflated.
//!   Free page hinting, page poisoning and free page reporting are not offered.
//! - **Guest mistakes.** A buffer outside guest RAM sets DEVICE_NEEDS_RESET; frame numbers
//!   outside RAM, repeated inflates of one frame and deflates of frames never inflated are
//!   ignored.

pub mod backend;
mod device;

#[cfg(test)]
mod tests;

pub use device::{
    feature, stat_tag, Balloon, BalloonStats, CONFIG_SIZE, DEFLATEQ, INFLATEQ, MAX_PFNS_PER_CHAIN,
    MAX_STATS, PAGE_SIZE, QUEUE_SIZE, STATSQ,
};
