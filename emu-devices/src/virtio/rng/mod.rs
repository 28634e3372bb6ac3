//! virtio-rng (entropy device, VirtIO 1.2 §5.4): one request queue whose device-writable
//! buffers the device fills with random bytes from the host OS.

mod device;

pub use device::{Rng, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
