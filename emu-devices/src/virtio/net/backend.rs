//! What the virtio-net device needs from the network behind it: a pipe of Ethernet frames
//! in each direction, and a way to say "frames are waiting" from any thread.

use std::sync::{Arc, OnceLock};

/// Receive offloads the driver accepted, which decide what a backend may hand the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestOffloads {
    /// The guest takes TCP/IPv4 segments longer than its MTU, marked with the MSS they
    /// stand for (VIRTIO_NET_F_GUEST_TSO4 together with VIRTIO_NET_F_GUEST_CSUM): a backend
    /// may then produce [`RxFrame`]s with [`RxFrame::gso_size`] set.
    pub tso4: bool,
}

/// A frame on its way to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The Ethernet frame: destination MAC first, no virtio-net header, no FCS.
    pub data: Vec<u8>,
    /// For a TCP/IPv4 segment longer than the MTU (only when the guest accepted
    /// [`GuestOffloads::tso4`]): the segment size it stands for. Its TCP checksum field
    /// need not be valid: the device replaces it with the pseudo-header sum and marks the
    /// checksum partial, as the driver expects of such segments.
    pub gso_size: Option<u16>,
}

impl RxFrame {
    /// An ordinary frame, no larger than the MTU.
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data,
            gso_size: None,
        }
    }
}

/// The network behind a virtio-net device.
///
/// Both calls run on the thread that drives the device (a vCPU thread writing QueueNotify,
/// or the backend's own thread through [`RxNotifier`]) while the device is locked, so they
/// must not block: a backend queues and returns.
pub trait NetBackend: Send {
    /// A frame the guest sent (Ethernet, without the virtio-net header). The backend may
    /// drop it, as a congested network would.
    fn send(&mut self, frame: &[u8]);

    /// The next frame for the guest, if one is waiting. The device calls it only when it
    /// has a receive buffer to put the frame in (or it keeps the frame for the next one).
    fn recv(&mut self) -> Option<RxFrame>;

    /// Whether the backend takes TCP/IPv4 segments longer than the MTU from the guest (one
    /// segment of up to 64 KiB, checksums complete, IP total length set): the device then
    /// offers VIRTIO_NET_F_HOST_TSO4 and hands such segments over whole. A backend that
    /// terminates TCP itself can; one that puts frames on a real link cannot.
    fn takes_tcp_segments(&self) -> bool {
        false
    }

    /// The driver (re)negotiated its receive offloads; after a reset they are all off.
    fn set_guest_offloads(&mut self, offloads: GuestOffloads) {
        let _ = offloads;
    }
}

/// Callback run by [`RxNotifier::notify`].
type NotifyFn = Box<dyn Fn() + Send + Sync>;

/// How a backend tells its device, from any thread, that frames are waiting for the guest.
///
/// The backend gets a clone when it is built; the device end is connected once the device
/// sits behind its transport ([`super::connect_rx`]). A notification before that is
/// dropped, which is harmless: the device asks the backend for frames whenever the driver
/// posts receive buffers.
#[derive(Clone, Default)]
pub struct RxNotifier(Arc<OnceLock<NotifyFn>>);

impl RxNotifier {
    /// A notifier not connected to any device yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells the device that frames are waiting. Must be called without holding any lock
    /// the device's own thread might take (the device is locked inside).
    pub fn notify(&self) {
        if let Some(f) = self.0.get() {
            f();
        }
    }

    /// Connects the device end; a second connection is ignored (returns `false`).
    pub fn connect(&self, f: impl Fn() + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(f)).is_ok()
    }

    /// Whether a device end is connected.
    pub fn is_connected(&self) -> bool {
        self.0.get().is_some()
    }
}

impl std::fmt::Debug for RxNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxNotifier")
            .field("connected", &self.is_connected())
            .finish()
    }
}
