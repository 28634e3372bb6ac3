//! virtio-blk (block device, VirtIO 1.2 §5.2) backed by a raw disk image file.
//!
//! # Design
//!
//! - **Backend.** One [`std::fs::File`] opened read-write or read-only; the image is raw
//!   (sector `n` is at byte `512 * n`), so any file or host block device works. Only
//!   portable `std` calls are used (`seek`, `read_exact`, `write_all`, `sync_data`), so
//!   the device behaves the same on Linux and macOS. The capacity is the image size
//!   rounded down to whole 512-byte sectors, fixed when the image is opened.
//! - **Synchronous I/O.** Requests are served on the thread that kicks the queue (the vCPU
//!   writing QueueNotify), one chain after another, through a bounce buffer of
//!   [`BOUNCE_BUFFER_SIZE`] bytes: host memory use per device is bounded whatever the
//!   guest asks for, and every guest access goes through `vm-memory`, which never reaches
//!   outside guest RAM. An I/O thread is a later optimisation; the device model does not
//!   depend on completing in order.
//! - **Durability.** VIRTIO_BLK_F_FLUSH is always offered. When the driver accepts it the
//!   device is a writeback cache: writes complete once they reach the host OS and
//!   VIRTIO_BLK_T_FLUSH calls `File::sync_data` before it completes, so a write followed by
//!   an acknowledged flush survives a host crash. When the driver does not accept it, the
//!   specification (§5.2.6.2, first case) makes every completed write stable, so each write
//!   is followed by `sync_data` before it completes (writethrough). `sync_data` uses
//!   `F_FULLFSYNC` on macOS.
//! - **Requests.** IN, OUT, FLUSH, GET_ID, and on writable images DISCARD and
//!   WRITE_ZEROES. WRITE_ZEROES writes zeroes (reads return zeroes afterwards, as required);
//!   DISCARD is validated and then does nothing, which the specification allows ("the
//!   device MAY deallocate"; drivers may assume nothing about discarded data) and which
//!   needs no platform-specific hole punching. Every other type completes with
//!   VIRTIO_BLK_S_UNSUPP.
//! - **Framing.** VirtIO 1.x has no fixed layout (VIRTIO_F_ANY_LAYOUT is implied): a
//!   request is the device-readable bytes of a chain followed by its device-writable
//!   bytes. The first 16 readable bytes are the header, the last writable byte is the
//!   status, and whatever lies between is data, however the driver split it into
//!   descriptors. Indirect descriptor tables are offered (`virtio-queue` follows them).
//! - **Guest mistakes.** `virtio-queue` bounds every chain (loops end after a queue's or an
//!   indirect table's worth of descriptors, and chains over 4 GiB are cut). A chain that
//!   has a status byte in guest RAM but is wrong in any other way (short header, a data
//!   buffer in the wrong direction, a readable descriptor after a writable one, a buffer
//!   outside RAM, more than [`MAX_CHAIN_DESCRIPTORS`] descriptors, a length that is not a
//!   multiple of 512, sectors beyond the capacity) fails with VIRTIO_BLK_S_IOERR. A chain
//!   without a usable status byte (none, a device-readable last descriptor, a status byte
//!   outside RAM, an empty chain, or a chain cut short by a loop, an out-of-range `next`
//!   or an unreadable descriptor) cannot be answered at all, so the device returns a
//!   [`QueueFault`](crate::virtio::QueueFault) and the transport sets DEVICE_NEEDS_RESET,
//!   as QEMU does for broken chains.
//!
//! Not offered: VIRTIO_BLK_F_SIZE_MAX (the bounce buffer takes segments of any size, so a
//! limit would only add a failure path), GEOMETRY, TOPOLOGY, CONFIG_WCE, MQ,
//! VIRTIO_RING_F_EVENT_IDX, LIFETIME, SECURE_ERASE and ZONED.

mod device;
mod request;

#[cfg(test)]
mod tests;

pub use device::{
    feature, request_type, status, Block, BlockError, BlockStats, BOUNCE_BUFFER_SIZE, CONFIG_SIZE,
    ID_BYTES, MAX_CHAIN_DESCRIPTORS, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX,
};
