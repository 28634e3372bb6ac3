//! virtio-net (network device, VirtIO 1.2 §5.1) in front of a pluggable [`NetBackend`].
//!
//! # Design
//!
//! - **Queues.** One receive queue (0) and one transmit queue (1); no control queue and no
//!   multiqueue. Every frame carries the 12-byte `virtio_net_hdr` (VirtIO 1.x always has
//!   the `num_buffers` field). VIRTIO_NET_F_MRG_RXBUF is not offered, so a received frame
//!   goes into one descriptor chain (Linux then posts chains large enough for the MTU, or
//!   for 64 KiB once it accepts TSO); indirect descriptors are offered so those chains take
//!   one ring slot each.
//! - **Backend.** The device only moves frames between the queues and a [`NetBackend`]:
//!   [`NetBackend::send`] for each transmitted frame and [`NetBackend::recv`] while receive
//!   buffers last. Neither blocks; a backend that needs time (a user-mode TCP/IP stack, a
//!   TAP device) runs on its own thread and queues. The device holds no lock of its own
//!   (DESIGN §4): it sits in an `Arc<Mutex<MmioTransport<Net>>>` like every device.
//! - **Receiving when the guest is idle.** A backend thread with frames waiting calls
//!   [`RxNotifier::notify`]. [`connect_rx`] connects that to the transport: it locks it
//!   and runs the receive queue on the device's behalf ([`MmioTransport::process_queue`]),
//!   exactly as the driver's notification after posting buffers does. So the same checks
//!   apply (DRIVER_OK set, no
//!   DEVICE_NEEDS_RESET, queue ready), the frames are copied under the transport's lock,
//!   and the used-buffer interrupt goes out through the transport's IRQ line, which wakes
//!   a halted vCPU through the IOAPIC and local APIC. When no buffer is free the frame
//!   stays with the device (one) and the backend (the rest) until the driver posts more.
//! - **Offloads.** VIRTIO_NET_F_CSUM: the device completes partial checksums of
//!   transmitted frames before the backend sees them, so the guest does not checksum what
//!   it sends. VIRTIO_NET_F_GUEST_CSUM: received frames are marked DATA_VALID (backends
//!   produce correct checksums), so the guest does not verify them. VIRTIO_NET_F_GUEST_TSO4
//!   (with GUEST_CSUM): a backend may hand over TCP/IPv4 segments of up to 64 KiB with the
//!   MSS they stand for ([`RxFrame::gso_size`]); the guest takes each as one packet instead
//!   of up to 44. VIRTIO_NET_F_HOST_TSO4, offered when the backend takes whole TCP
//!   segments ([`NetBackend::takes_tcp_segments`], as a backend that terminates TCP
//!   itself can): the guest sends segments of up to 64 KiB, their checksum completed here,
//!   instead of cutting them into MTU-sized frames. In an emulator the guest's per-packet
//!   and per-byte work is the cost that matters, so these are what make throughput.
//! - **Guest mistakes.** `virtio-queue` bounds every chain. A transmit chain with a
//!   device-writable descriptor, more than [`MAX_CHAIN_DESCRIPTORS`] descriptors, more
//!   than a header plus [`MAX_FRAME_LEN`] bytes, a buffer outside RAM, a broken `next`, a
//!   checksum request pointing outside the frame or a segmentation request that was not
//!   negotiated (or not TCP/IPv4 with a partial checksum) is dropped and
//!   completed with length 0. A receive chain with a device-readable descriptor or a broken
//!   `next` is completed with length 0 and the frame goes to the next chain; one too small
//!   for the frame, or outside RAM, is completed with length 0 and the frame is dropped
//!   (Linux counts a length error). Only unreadable or inconsistent rings are a
//!   [`QueueFault`](crate::virtio::QueueFault) (DEVICE_NEEDS_RESET).

mod backend;
mod device;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

pub use backend::{GuestOffloads, NetBackend, RxFrame, RxNotifier};
pub use device::{
    feature, header, Net, NetStats, CONFIG_SIZE, DEFAULT_MAC, HEADER_LEN, MAX_CHAIN_DESCRIPTORS,
    MAX_FRAME_LEN, MTU, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};

use super::mmio::MmioTransport;
use super::VirtioDevice;

/// Connects the [`RxNotifier`] of the device inside `transport` to it, so a backend thread
/// can deliver frames while the guest is idle (see the module docs): a notification runs
/// the receive queue through [`MmioTransport::process_queue`], as the driver's own
/// notification does. The notifier holds the transport weakly: once the machine drops the
/// transport, notifications do nothing.
pub fn connect_rx(transport: &Arc<Mutex<MmioTransport<Net>>>) {
    let notifier = transport
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .device()
        .notifier()
        .clone();
    let weak = Arc::downgrade(transport);
    notifier.connect(move || {
        if let Some(t) = weak.upgrade() {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .process_queue(RX_QUEUE, |net, queue, mem| {
                    net.queue_notify(RX_QUEUE, queue, mem)
                });
        }
    });
}
