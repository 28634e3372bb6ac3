//! Small legacy ports: the POST code port (0x80), the debug-exit port (0xF4), and the
//! callback types through which devices ask the machine to reset or power off.
//!
//! Devices never act on the machine themselves: a reset request (i8042 command 0xFE,
//! port 0x92 bit 0, the ACPI reset register 0xCF9), a power-off (ACPI S5) or a debug exit
//! calls a callback the machine injected, which typically stops the vCPUs and records why.
//! Callbacks run with the device's lock held, so they must not touch the device again;
//! setting a flag or sending on a channel is the intended use.

use std::sync::Arc;

use emu_mmu::BusDevice;

use crate::ports::le_value;

/// A request without arguments (reset, power-off). Shared, so one closure can serve
/// every device that can reset the machine.
pub type Signal = Arc<dyn Fn() + Send + Sync>;

/// A request to exit with a status code (the debug-exit port).
pub type ExitSignal = Arc<dyn Fn(u32) + Send + Sync>;

/// The standard POST code port.
pub const POST_CODE_PORT: u16 = 0x80;

/// Port 0x80: firmware and kernels write progress codes (and Linux uses it as an I/O delay
/// in `outb_p`). Writes are kept; reads return the last value written (0xFF before any).
#[derive(Debug, Clone, Copy)]
pub struct PostCode {
    last: u8,
}

impl Default for PostCode {
    fn default() -> Self {
        PostCode { last: 0xFF }
    }
}

impl PostCode {
    /// A POST code port that has seen no write.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code written.
    pub fn last(&self) -> u8 {
        self.last
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.last = b;
        }
    }
}

/// The conventional debug-exit port (QEMU's `isa-debug-exit` default).
pub const DEBUG_EXIT_PORT: u16 = 0xF4;

/// The debug-exit port: a write of value `v` (1, 2 or 4 bytes, little-endian) asks the
/// machine to exit with status `(v << 1) | 1`, so a test guest can report success or
/// failure and no guest-chosen status can be mistaken for a clean 0. Reads return 0xFF.
pub struct DebugExit {
    exit: ExitSignal,
}

impl DebugExit {
    /// A debug-exit port that calls `exit` with the status code.
    pub fn new(exit: ExitSignal) -> Self {
        DebugExit { exit }
    }

    /// The exit status a write of `value` requests.
    pub fn status_for(value: u32) -> u32 {
        (value << 1) | 1
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let value = le_value(&data[..data.len().min(4)]) as u32;
        (self.exit)(Self::status_for(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn post_code_keeps_the_last_write() {
        let mut p = PostCode::new();
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b, [0xFF]);
        p.write(0, &[0x42]);
        p.read(0, &mut b);
        assert_eq!((b[0], p.last()), (0x42, 0x42));
        p.write(0, &[]);
        let mut w = [0u8; 4];
        p.read(0, &mut w);
        assert_eq!(w, [0x42; 4]);
    }

    #[test]
    fn debug_exit_maps_values_to_odd_statuses() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut d = DebugExit::new(Arc::new(move |code| s.lock().unwrap().push(code)));
        d.write(0, &[0]);
        d.write(0, &[0x10]);
        d.write(0, &[0x34, 0x12]);
        d.write(0, &[0xFF, 0xFF, 0xFF, 0xFF]);
        d.write(0, &[]);
        d.write(0, &[1, 0, 0, 0, 9, 9, 9, 9]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![1, 0x21, 0x2469, 0xFFFF_FFFF, 3],
            "v -> (v << 1) | 1, over at most four bytes"
        );
        let mut b = [0u8; 2];
        d.read(0, &mut b);
        assert_eq!(b, [0xFF, 0xFF]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0x80F4);
        let mut p = PostCode::new();
        let mut d = DebugExit::new(Arc::new(|_| {}));
        for _ in 0..10_000 {
            let w = rng.width();
            let off = rng.next() % 4;
            p.write(off, &rng.bytes(w));
            p.read(off, &mut vec![0; w]);
            d.write(off, &rng.bytes(w));
            d.read(off, &mut vec![0; w]);
        }
    }
}
