//! VirtIO devices behind one virtio-mmio (version 2) transport.
//!
//! The transport ([`mmio::MmioTransport`]) owns the register file, feature negotiation,
//! the device status state machine, the queues (`virtio-queue`'s [`Queue`]) and the
//! interrupt line; a device model only implements [`VirtioDevice`]: what it is, what it
//! offers, its configuration space and what happens when the driver kicks a queue. One
//! folder per device (`rng/`, `block/`, later `net/`, ...) with the same file names.
//! Register facts come from the VirtIO 1.2 specification, section 4.2.2.

pub mod balloon;
pub mod block;
pub mod console;
pub mod fuzz;
pub mod mmio;
pub mod net;
pub mod rng;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Guest memory as the VirtIO devices see it (the machine's `emu_mmu::ram::GuestRam`
/// collection, cloned: regions are shared through `Arc`s, so a clone is a handle).
pub type GuestMemory = GuestMemoryMmap;

/// Device status bits (VirtIO 1.2 §2.1).
pub mod status {
    /// The guest OS has noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// The driver has acknowledged the features it understands; negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Device-independent feature bits (VirtIO 1.2 §6).
pub mod features {
    /// The device complies with VirtIO 1.0 or later (required for a modern transport).
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    /// The driver may use indirect descriptor tables (`virtio-queue` follows them).
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
}

/// Interrupt status bits (virtio-mmio InterruptStatus).
pub mod interrupt {
    /// The device used a buffer in at least one queue.
    pub const USED_BUFFER: u32 = 1;
    /// The device configuration (or DEVICE_NEEDS_RESET) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Device type numbers (VirtIO 1.2 §5).
pub mod device_id {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Traditional memory balloon.
    pub const BALLOON: u32 = 5;
}

/// A driver error found while processing a queue; the transport answers it by setting
/// DEVICE_NEEDS_RESET, as the specification allows for unrecoverable driver mistakes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueFault {
    /// The available ring index or a ring entry could not be read or made no sense.
    #[error("virtqueue rings are unreadable or inconsistent: {0}")]
    Ring(String),
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadDescriptor {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Length of the buffer.
        len: u32,
    },
}

impl From<virtio_queue::Error> for QueueFault {
    fn from(e: virtio_queue::Error) -> Self {
        QueueFault::Ring(e.to_string())
    }
}

/// Takes every chain the driver made available on `queue` off its ring. Devices take them
/// all first because the iterator borrows the queue and completing a chain
/// (`add_used`) needs it too; there are at most a ring's worth.
///
/// # Errors
///
/// [`QueueFault::Ring`] if the available ring cannot be read.
pub(crate) fn take_chains<'m>(
    queue: &mut virtio_queue::Queue,
    mem: &'m GuestMemory,
) -> Result<Vec<virtio_queue::DescriptorChain<&'m GuestMemory>>, QueueFault> {
    use virtio_queue::QueueOwnedT;
    Ok(queue.iter(mem)?.collect())
}

/// Copies the device configuration space `config` at `offset` into `data`, as drivers
/// read it: bytes past the end of `config` (or at offsets beyond any index) read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// The device model behind a VirtIO transport.
pub trait VirtioDevice: Send {
    /// The VirtIO device type (see [`device_id`]).
    fn device_id(&self) -> u32;

    /// Device-specific feature bits offered to the driver. The transport adds the
    /// transport-level ones ([`features::VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;

    /// Maximum size of each queue (powers of two, at most 32768); the slice's length is
    /// the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads `data.len()` bytes of the device configuration space at `offset`. Bytes
    /// beyond the configuration space must read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset`; read-only or absent bytes are
    /// ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK having accepted `features` (including transport bits).
    fn activate(&mut self, features: u64);

    /// The driver reset the device: return to the freshly-created state.
    fn reset(&mut self);

    /// The driver notified queue `index` (which is ready and lies in valid memory).
    /// Returns whether buffers were added to the used ring, i.e. whether the driver should
    /// get a used-buffer interrupt.
    ///
    /// # Errors
    ///
    /// A [`QueueFault`] when the driver put garbage in the queue; the transport then marks
    /// the device as needing a reset.
    fn queue_notify(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault>;
}
