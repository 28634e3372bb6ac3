//! The virtio-rng device model.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::virtio::{device_id, GuestMemory, QueueFault, VirtioDevice};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Most bytes written for one request. The specification lets the device fill less than
/// the buffer (the used length says how much); capping it stops a guest from making the
/// host produce gigabytes of entropy for one kick. Linux asks for far less than this.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

/// The entropy device: no features, no configuration space, one queue.
#[derive(Debug, Default)]
pub struct Rng {
    activated: bool,
}

impl Rng {
    /// A new, un-activated entropy device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the driver has set DRIVER_OK since the last reset.
    pub fn activated(&self) -> bool {
        self.activated
    }
}

/// Fills the writable buffers `(addr, len)` of one chain with random bytes, up to
/// [`MAX_BYTES_PER_REQUEST`], and returns how many bytes were written.
fn fill_chain(mem: &GuestMemory, buffers: &[(GuestAddress, u32)]) -> Result<u32, QueueFault> {
    let mut scratch = [0u8; 4096];
    let mut written = 0u32;
    for &(addr, len) in buffers {
        let len = len.min(MAX_BYTES_PER_REQUEST - written);
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(scratch.len() as u32);
            let chunk = &mut scratch[..n as usize];
            // If the host cannot give entropy, report what was written so far rather than
            // hand the guest predictable bytes.
            if getrandom::fill(chunk).is_err() {
                return Ok(written + done);
            }
            let target = addr
                .checked_add(u64::from(done))
                .ok_or(QueueFault::BadDescriptor { addr: addr.0, len })?;
            mem.write_slice(chunk, target)
                .map_err(|_| QueueFault::BadDescriptor { addr: addr.0, len })?;
            done += n;
        }
        written += len;
        if written >= MAX_BYTES_PER_REQUEST {
            break;
        }
    }
    Ok(written)
}

impl VirtioDevice for Rng {
    fn device_id(&self) -> u32 {
        device_id::RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {
        // No configuration space; the transport has already zeroed `data`.
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, _features: u64) {
        self.activated = true;
    }

    fn reset(&mut self) {
        self.activated = false;
    }

    fn queue_notify(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        // Take the chains off the available ring first: the iterator borrows the queue,
        // and completing a request (add_used) needs it too.
        let mut requests: Vec<(u16, Vec<(GuestAddress, u32)>)> = Vec::new();
        let iter = queue.iter(mem)?;
        for chain in iter {
            let head = chain.head_index();
            // Descriptor loops end after queue-size descriptors (virtio-queue's chain has a
            // time-to-live), so this cannot spin.
            let buffers: Vec<_> = chain.writable().map(|d| (d.addr(), d.len())).collect();
            requests.push((head, buffers));
        }
        let mut used = false;
        for (head, buffers) in requests {
            let len = fill_chain(mem, &buffers)?;
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }
}
