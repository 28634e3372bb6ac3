//! Helpers shared by the legacy port-I/O devices.
//!
//! A bus device sees offsets into one range, but several PC devices answer in more than
//! one place (the PIC pair at 0x20, 0xA0 and its ELCR at 0x4D0; the PIT at 0x40 and its
//! gate/output bits at 0x61; the ACPI PM block at 0x600 and the reset register at 0xCF9).
//! Such devices implement [`PortIo`] over absolute port numbers, and the machine maps one
//! [`PortWindow`] per range, each forwarding to the shared device:
//!
//! ```ignore
//! let pic = Arc::new(Mutex::new(PicPair::new(intr)));
//! for &(base, len) in PicPair::PORT_RANGES {
//!     emu.add_io_device(base, len, Arc::new(Mutex::new(PortWindow::new(pic.clone(), base))))?;
//! }
//! ```

use std::sync::{Arc, Mutex};

use emu_mmu::BusDevice;

/// A device addressed by absolute I/O port numbers (see the module docs).
pub trait PortIo: Send {
    /// Reads `data.len()` bytes from `port`. Ports the device does not own read as 0xFF.
    fn port_read(&mut self, port: u16, data: &mut [u8]);
    /// Writes `data` to `port`. Writes to ports the device does not own are ignored.
    fn port_write(&mut self, port: u16, data: &[u8]);
}

/// One I/O range of a [`PortIo`] device: a [`BusDevice`] that turns the bus offset back
/// into the absolute port number (`base + offset`) and forwards to the shared device.
pub struct PortWindow<T: PortIo + ?Sized> {
    device: Arc<Mutex<T>>,
    base: u16,
}

impl<T: PortIo + ?Sized> PortWindow<T> {
    /// A window whose offset 0 is port `base` of `device`.
    pub fn new(device: Arc<Mutex<T>>, base: u16) -> Self {
        PortWindow { device, base }
    }
}

impl<T: PortIo + ?Sized> BusDevice for PortWindow<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let port = self.base.wrapping_add(offset as u16);
        // A panic in a device is a host bug; keep serving it rather than poisoning the
        // lock for every later access (as emu_mmu::Bus does).
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .port_read(port, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let port = self.base.wrapping_add(offset as u16);
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .port_write(port, data);
    }
}

/// Reads a wide access to byte-wide registers as consecutive byte reads, as the ISA bus
/// splits `in ax, dx` into reads of `dx` and `dx + 1`.
pub(crate) fn read_bytes(offset: u64, data: &mut [u8], mut read8: impl FnMut(u64) -> u8) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = read8(offset.wrapping_add(i as u64));
    }
}

/// Writes a wide access to byte-wide registers as consecutive byte writes.
pub(crate) fn write_bytes(offset: u64, data: &[u8], mut write8: impl FnMut(u64, u8)) {
    for (i, &b) in data.iter().enumerate() {
        write8(offset.wrapping_add(i as u64), b);
    }
}

/// Little-endian value of up to 8 bytes (longer slices are truncated).
pub(crate) fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = data.len().min(8);
    v[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(v)
}

/// Stores the low `data.len()` bytes of `value`, little-endian (zero past 8 bytes).
pub(crate) fn put_le(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Shared by the device tests: a tiny xorshift generator for the garbage tests.

    /// A deterministic pseudo-random generator (xorshift64*).
    pub struct Rng(pub u64);

    impl Rng {
        /// The next 64 random bits.
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A random access width: mostly 1, 2, 4 or 8, sometimes odd (0, 3, 5..16).
        pub fn width(&mut self) -> usize {
            match self.next() % 8 {
                0 => (self.next() % 17) as usize,
                1..=3 => 1,
                4 => 2,
                5 | 6 => 4,
                _ => 8,
            }
        }

        /// A buffer of `n` random bytes.
        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }
}
