//! The device bus: one small trait for devices, the same for port I/O and MMIO, and a
//! [`Bus`] that maps address ranges to them.
//!
//! Devices know nothing of where they are mapped: they see offsets into their own range.
//! They hold no lock of their own; sharing is done from outside (`Arc<Mutex<_>>`), so a
//! device model stays a plain register state machine (as `vm-superio` does it).

use std::sync::{Arc, Mutex};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes (1, 2, 4 or 8) at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from changing a bus's layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
}

/// An access no device claimed, as an [`UnassignedHandler`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnassignedAccess {
    /// The bus address of the first byte.
    pub addr: u64,
    /// Access width in bytes.
    pub size: u8,
    /// The value written, or `None` for a read.
    pub written: Option<u64>,
}

/// Told of each access to an unassigned address once the bus answers them (see
/// [`Bus::set_unassigned`]); platforms log them.
pub type UnassignedHandler = Arc<dyn Fn(&UnassignedAccess) + Send + Sync>;

#[derive(Clone)]
struct Mapping {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Address ranges mapped to devices. Cloning is cheap (the devices are shared).
#[derive(Clone, Default)]
pub struct Bus {
    /// Sorted by base, non-overlapping.
    mappings: Vec<Mapping>,
    /// When set, unassigned accesses complete as on a PC (see [`Bus::set_unassigned`]).
    unassigned: Option<UnassignedHandler>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.mappings.iter().map(|m| (m.base, m.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus: every address is unassigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `base..base + len`.
    ///
    /// # Errors
    ///
    /// [`BusError`] for an empty or wrapping range, or one overlapping another device.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if self
            .mappings
            .iter()
            .any(|m| m.base < end && base < m.base + m.len)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.mappings.partition_point(|m| m.base < base);
        self.mappings.insert(at, Mapping { base, len, device });
        Ok(())
    }

    /// Makes accesses that no single device covers complete as they do on a PC's bus:
    /// reads return all ones, writes are dropped, and `handler` is told of each. Without
    /// this (the default) [`Bus::read`] and [`Bus::write`] report them unserved, so the
    /// caller decides (a bare CPU stops with an unmapped-access fault).
    pub fn set_unassigned(&mut self, handler: Option<UnassignedHandler>) {
        self.unassigned = handler;
    }

    /// The access did not reach a device: complete it as unassigned, if configured.
    #[cold]
    fn unassigned(&self, addr: u64, size: usize, written: Option<u64>) -> bool {
        let Some(handler) = &self.unassigned else {
            return false;
        };
        handler(&UnassignedAccess {
            addr,
            size: size as u8,
            written,
        });
        true
    }

    /// Whether `addr` belongs to some device.
    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr, 1).is_some()
    }

    /// The mapping holding all of `addr..addr + len`.
    fn find(&self, addr: u64, len: u64) -> Option<&Mapping> {
        let at = self.mappings.partition_point(|m| m.base <= addr);
        let m = self.mappings.get(at.checked_sub(1)?)?;
        let offset = addr - m.base;
        (offset < m.len && len <= m.len - offset).then_some(m)
    }

    /// Reads from the device at `addr`. Returns `false` (leaving `data` alone) if no single
    /// device covers the whole access, unless unassigned accesses are answered
    /// ([`Bus::set_unassigned`]): then `data` is all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some(m) = self.find(addr, data.len() as u64) else {
            if self.unassigned.is_some() {
                data.fill(0xff);
            }
            return self.unassigned(addr, data.len(), None);
        };
        // A device that panicked while holding its lock is a host bug; keep serving it
        // rather than poisoning every later access.
        m.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(addr - m.base, data);
        true
    }

    /// Writes to the device at `addr`. Returns `false` if no single device covers the whole
    /// access, unless unassigned accesses are answered ([`Bus::set_unassigned`]): then the
    /// write is dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some(m) = self.find(addr, data.len() as u64) else {
            let mut value = [0u8; 8];
            let n = data.len().min(8);
            value[..n].copy_from_slice(&data[..n]);
            return self.unassigned(addr, data.len(), Some(u64::from_le_bytes(value)));
        };
        m.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(addr - m.base, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that remembers the last write and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, probe.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(probe.lock().unwrap().last, vec![(7, vec![9])]);
        assert!(!bus.read(0x400, &mut b), "past the end");
        assert!(!bus.read(0x3f7, &mut b), "before the start");
        let mut w = [0u8; 2];
        assert!(
            !bus.read(0x3ff, &mut w),
            "an access running off the device is unassigned"
        );
    }

    #[test]
    fn unassigned_accesses_read_all_ones_once_configured() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x10, Arc::new(Mutex::new(Probe::default())))
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x2000, &mut b), "unserved by default");
        assert_eq!(b, [0; 4], "and left alone");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        bus.set_unassigned(Some(Arc::new(move |a: &UnassignedAccess| {
            log.lock().unwrap().push(*a)
        })));
        assert!(bus.read(0x2000, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(bus.write(0x2004, &[1, 2]));
        assert!(bus.read(0x1004, &mut b), "devices still answer");
        assert_eq!(b, [4; 4]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                UnassignedAccess {
                    addr: 0x2000,
                    size: 4,
                    written: None
                },
                UnassignedAccess {
                    addr: 0x2004,
                    size: 2,
                    written: Some(0x0201)
                },
            ]
        );
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev: SharedDevice = Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x10ff, 1, dev.clone()),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(0, 0, dev.clone()),
            Err(BusError::BadRange { base: 0, len: 0 })
        );
        assert_eq!(
            bus.insert(u64::MAX, 2, dev.clone()),
            Err(BusError::BadRange {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(0x800, 0x800, dev).unwrap();
        assert!(bus.contains(0x800) && bus.contains(0x10ff) && !bus.contains(0x1100));
    }
}
