//! The driver side of the VirtIO device tests: register access through the virtio-mmio
//! transport, Linux's feature negotiation and queue setup, and the split virtqueue rings
//! as the driver reads and writes them in guest memory. Each device's `tests.rs` keeps its
//! own memory layout and passes the ring addresses in.

use std::sync::Arc;

use emu_mmu::BusDevice;
use vm_memory::{Address, Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::{status, GuestMemory, VirtioDevice};
use crate::irq::RecordingLine;

/// Descriptor flags (VirtIO 1.2 §2.7.5).
pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
pub(crate) const F_INDIRECT: u16 = 4;

/// A transport around `device` over `mem_size` bytes of guest RAM at address 0, with a
/// recording interrupt line.
pub(crate) fn transport<D: VirtioDevice>(
    device: D,
    mem_size: usize,
) -> (MmioTransport<D>, GuestMemory, Arc<RecordingLine>) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), mem_size)]).unwrap();
    let line = Arc::new(RecordingLine::default());
    let t = MmioTransport::new(device, mem.clone(), line.clone());
    (t, mem, line)
}

/// Reads the 32-bit register at `off`.
pub(crate) fn rd<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Writes the 32-bit register at `off`.
pub(crate) fn wr<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Whether the device set DEVICE_NEEDS_RESET.
pub(crate) fn needs_reset<D: VirtioDevice>(t: &mut MmioTransport<D>) -> bool {
    rd(t, 0x070) & status::DEVICE_NEEDS_RESET != 0
}

/// Linux's probe up to FEATURES_OK: checks magic, version and `device_id`, resets,
/// acknowledges, reads the offered features and accepts `offered & accept`. Returns what
/// was offered and whether FEATURES_OK stuck.
pub(crate) fn negotiate<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    device_id: u32,
    accept: u64,
) -> (u64, bool) {
    assert_eq!(rd(t, 0x000), 0x7472_6976);
    assert_eq!(rd(t, 0x004), 2);
    assert_eq!(rd(t, 0x008), device_id);
    wr(t, 0x070, 0);
    wr(t, 0x070, status::ACKNOWLEDGE);
    wr(t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x014, 1);
    let hi = u64::from(rd(t, 0x010));
    wr(t, 0x014, 0);
    let lo = u64::from(rd(t, 0x010));
    let offered = hi << 32 | lo;
    let want = offered & accept;
    wr(t, 0x024, 1);
    wr(t, 0x020, (want >> 32) as u32);
    wr(t, 0x024, 0);
    wr(t, 0x020, want as u32);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(t, 0x070, st);
    (offered, rd(t, 0x070) & status::FEATURES_OK != 0)
}

/// Where one split virtqueue's three parts live in guest memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rings {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Rings {
    /// Writes descriptor `i` of the table.
    pub(crate) fn put_desc(
        &self,
        mem: &GuestMemory,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        put_desc_at(mem, self.desc, i, addr, len, flags, next);
    }

    /// Puts chain head `head` in avail slot `slot` and publishes `idx`.
    pub(crate) fn publish(&self, mem: &GuestMemory, slot: u16, head: u16, idx: u16) {
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
            .unwrap();
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// The used ring's index.
    pub(crate) fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used ring slot `slot` (not reduced modulo the queue size): (id, len).
    pub(crate) fn used_elem(&self, mem: &GuestMemory, slot: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(slot);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// The used elements added since `*seen`, advancing `*seen` to the used index.
    pub(crate) fn take_used(
        &self,
        mem: &GuestMemory,
        seen: &mut u16,
        qsize: u16,
    ) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while *seen != idx {
            out.push(self.used_elem(mem, *seen % qsize));
            *seen = seen.wrapping_add(1);
        }
        out
    }
}

/// Writes descriptor `i` of the table at `table` (a queue's or an indirect one).
pub(crate) fn put_desc_at(
    mem: &GuestMemory,
    table: u64,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let at = GuestAddress(table + u64::from(i) * 16);
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, at.unchecked_add(8)).unwrap();
    mem.write_obj(flags, at.unchecked_add(12)).unwrap();
    mem.write_obj(next, at.unchecked_add(14)).unwrap();
}

/// Selects queue `q`, checks it is not live yet and offers `max` entries, sets size `num`
/// and the ring addresses, and marks it ready (`vm_setup_vq`).
pub(crate) fn setup_queue<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    q: u32,
    max: u16,
    num: u32,
    rings: Rings,
) {
    wr(t, 0x030, q);
    assert_eq!(rd(t, 0x044), 0, "queue must not be live before setup");
    assert_eq!(rd(t, 0x034), u32::from(max));
    wr(t, 0x038, num);
    for (lo, addr) in [
        (0x080, rings.desc),
        (0x090, rings.avail),
        (0x0a0, rings.used),
    ] {
        wr(t, lo, addr as u32);
        wr(t, lo + 4, (addr >> 32) as u32);
    }
    wr(t, 0x044, 1);
}

/// Sets DRIVER_OK on top of the current status.
pub(crate) fn driver_ok<D: VirtioDevice>(t: &mut MmioTransport<D>) {
    let s = rd(t, 0x070);
    wr(t, 0x070, s | status::DRIVER_OK);
}

/// `len` bytes of guest memory at `addr`.
pub(crate) fn guest_bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// xorshift64*: deterministic garbage without a dev-dependency.
pub(crate) struct Garbage(pub u64);

impl Garbage {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
