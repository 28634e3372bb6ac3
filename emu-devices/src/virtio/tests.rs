//! The transport and virtio-rng driven the way Linux's virtio_mmio driver drives them,
//! plus guest garbage that must never panic the host.

use std::sync::Arc;

use emu_mmu::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::rng::Rng;
use super::testing::{self, driver_ok, rd, transport, wr, Garbage, Rings, F_NEXT, F_WRITE};
use super::{device_id, features, interrupt, status, GuestMemory};
use crate::irq::RecordingLine;

const MEM_SIZE: usize = 0x10000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x8000;
const QSIZE: u32 = 16;

const Q: Rings = Rings {
    desc: DESC,
    avail: AVAIL,
    used: USED,
};

struct Rig {
    t: MmioTransport<Rng>,
    mem: GuestMemory,
    line: Arc<RecordingLine>,
}

fn rig() -> Rig {
    let (t, mem, line) = transport(Rng::new(), MEM_SIZE);
    Rig { t, mem, line }
}

/// Linux's probe and `vm_find_vqs` sequence up to feature negotiation; returns whether
/// FEATURES_OK stuck.
fn negotiate(t: &mut MmioTransport<Rng>, accept: u64) -> bool {
    let (offered, ok) = testing::negotiate(t, device_id::RNG, accept);
    assert_ne!(offered & features::VIRTIO_F_VERSION_1, 0);
    ok
}

fn setup_queue(t: &mut MmioTransport<Rng>, num: u32, rings: Rings) {
    testing::setup_queue(t, 0, super::rng::QUEUE_SIZE, num, rings);
}

/// A fully brought-up device, as after Linux's probe.
fn live() -> Rig {
    let mut r = rig();
    assert!(negotiate(&mut r.t, u64::MAX));
    setup_queue(&mut r.t, QSIZE, Q);
    assert_eq!(rd(&mut r.t, 0x044), 1);
    driver_ok(&mut r.t);
    assert_eq!(r.t.status() & status::DEVICE_NEEDS_RESET, 0);
    r
}

#[test]
fn linux_bring_up_and_one_request() {
    let mut r = live();
    assert!(r.t.device().activated());
    assert_eq!(r.t.driver_features(), features::VIRTIO_F_VERSION_1);
    assert!(!r.line.level());

    let before = [0u8; 64];
    r.mem.write_slice(&before, GuestAddress(BUF)).unwrap();
    Q.put_desc(&r.mem, 0, BUF, 64, F_WRITE, 0);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);

    assert_eq!(Q.used_idx(&r.mem), 1);
    assert_eq!(Q.used_elem(&r.mem, 0), (0, 64));
    assert_eq!(rd(&mut r.t, 0x060), interrupt::USED_BUFFER);
    assert!(r.line.level());
    let mut after = [0u8; 64];
    r.mem.read_slice(&mut after, GuestAddress(BUF)).unwrap();
    assert_ne!(after, before, "64 random bytes are not all zero");

    // The driver's interrupt handler acknowledges; the level line drops.
    wr(&mut r.t, 0x064, interrupt::USED_BUFFER);
    assert_eq!(rd(&mut r.t, 0x060), 0);
    assert!(!r.line.level());

    // A second request in the next slot, with a read-only descriptor first that the
    // device must skip.
    Q.put_desc(&r.mem, 1, BUF + 0x100, 8, F_NEXT, 2);
    Q.put_desc(&r.mem, 2, BUF + 0x200, 16, F_WRITE, 0);
    Q.publish(&r.mem, 1, 1, 2);
    wr(&mut r.t, 0x050, 0);
    assert_eq!(Q.used_idx(&r.mem), 2);
    assert_eq!(Q.used_elem(&r.mem, 1), (1, 16));
    assert!(r.line.level());
    assert_eq!(r.line.edges(), 2);
}

#[test]
fn reset_returns_to_initial_state() {
    let mut r = live();
    Q.put_desc(&r.mem, 0, BUF, 4, F_WRITE, 0);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);
    assert!(r.line.level());
    wr(&mut r.t, 0x070, 0);
    assert_eq!(rd(&mut r.t, 0x070), 0);
    assert_eq!(rd(&mut r.t, 0x060), 0);
    assert_eq!(rd(&mut r.t, 0x044), 0);
    assert!(!r.line.level());
    assert!(!r.t.device().activated());
    // And it can be brought up again from scratch.
    r.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    r.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    assert!(negotiate(&mut r.t, u64::MAX));
    setup_queue(&mut r.t, QSIZE, Q);
    driver_ok(&mut r.t);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);
    assert_eq!(Q.used_idx(&r.mem), 1);
}

#[test]
fn features_without_version_1_are_refused() {
    let mut r = rig();
    assert!(!negotiate(&mut r.t, !features::VIRTIO_F_VERSION_1));
    // Features the device never offered are refused too.
    wr(&mut r.t, 0x070, 0);
    wr(&mut r.t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut r.t, 0x024, 1);
    wr(&mut r.t, 0x020, 1 | 2);
    wr(
        &mut r.t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(rd(&mut r.t, 0x070) & status::FEATURES_OK, 0);
}

#[test]
fn bad_queue_setups_need_reset() {
    // Size not a power of two, size above the maximum, misaligned rings, rings outside
    // memory: the queue never goes live and the device asks for a reset.
    let cases: [(u32, u64, u64, u64); 5] = [
        (3, DESC, AVAIL, USED),
        (1024, DESC, AVAIL, USED),
        (QSIZE, DESC + 1, AVAIL, USED),
        (QSIZE, DESC, AVAIL, USED + 2),
        (QSIZE, 0xffff_ffff_0000, AVAIL, USED),
    ];
    for (num, d, a, u) in cases {
        let mut r = rig();
        assert!(negotiate(&mut r.t, u64::MAX));
        setup_queue(
            &mut r.t,
            num,
            Rings {
                desc: d,
                avail: a,
                used: u,
            },
        );
        assert_eq!(rd(&mut r.t, 0x044), 0, "case {num} {d:#x} {a:#x} {u:#x}");
        assert_ne!(rd(&mut r.t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
        // Notifying anyway does nothing.
        driver_ok(&mut r.t);
        wr(&mut r.t, 0x050, 0);
        assert_eq!(rd(&mut r.t, 0x060) & interrupt::USED_BUFFER, 0);
    }
}

#[test]
fn notify_before_driver_ok_or_for_missing_queue_is_ignored() {
    let mut r = rig();
    assert!(negotiate(&mut r.t, u64::MAX));
    setup_queue(&mut r.t, QSIZE, Q);
    Q.put_desc(&r.mem, 0, BUF, 4, F_WRITE, 0);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);
    assert_eq!(Q.used_idx(&r.mem), 0);
    driver_ok(&mut r.t);
    wr(&mut r.t, 0x050, 7);
    wr(&mut r.t, 0x050, u32::MAX);
    assert_eq!(Q.used_idx(&r.mem), 0);
    assert_eq!(rd(&mut r.t, 0x060), 0);
    // Selecting a queue that does not exist reads max size 0.
    wr(&mut r.t, 0x030, 1);
    assert_eq!(rd(&mut r.t, 0x034), 0);
}

#[test]
fn descriptor_outside_memory_needs_reset() {
    let mut r = live();
    Q.put_desc(&r.mem, 0, 0xdead_0000_0000, 64, F_WRITE, 0);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);
    assert_ne!(rd(&mut r.t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(rd(&mut r.t, 0x060), interrupt::CONFIG_CHANGE);
    assert!(r.line.level());
    // A buffer straddling the end of RAM is just as bad.
    let mut r = live();
    Q.put_desc(&r.mem, 0, MEM_SIZE as u64 - 8, 64, F_WRITE, 0);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);
    assert_ne!(rd(&mut r.t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
    // Once the device needs a reset, further kicks are ignored.
    wr(&mut r.t, 0x050, 0);
}

#[test]
fn descriptor_loop_terminates() {
    let mut r = live();
    let flags = F_WRITE | F_NEXT;
    Q.put_desc(&r.mem, 0, BUF, 8, flags, 1);
    Q.put_desc(&r.mem, 1, BUF + 8, 8, flags, 0);
    Q.publish(&r.mem, 0, 0, 1);
    wr(&mut r.t, 0x050, 0);
    // The chain is cut after queue-size descriptors; whatever was written is reported.
    assert_eq!(Q.used_idx(&r.mem), 1);
    let (id, len) = Q.used_elem(&r.mem, 0);
    assert_eq!(id, 0);
    assert!(len <= QSIZE * 8, "{len}");
    // Next index beyond the queue and a bogus avail index do not panic either.
    Q.put_desc(&r.mem, 1, BUF, 8, flags, 999);
    Q.publish(&r.mem, 1, 1, 2);
    wr(&mut r.t, 0x050, 0);
    Q.publish(&r.mem, 2, 500, 3);
    wr(&mut r.t, 0x050, 0);
    r.mem.write_obj(0x8000u16, GuestAddress(AVAIL + 2)).unwrap();
    wr(&mut r.t, 0x050, 0);
    assert_ne!(rd(&mut r.t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn random_register_traffic_never_panics() {
    let mut g = Garbage(0x9e37_79b9_7f4a_7c15);
    for round in 0..64 {
        // Half the rounds start from a live device, so notifies reach the queue code.
        let mut r = if round % 2 == 0 { live() } else { rig() };
        for _ in 0..2000 {
            let v = g.next();
            let width = [1usize, 2, 4, 8][(v & 3) as usize];
            // Mostly aligned register offsets, sometimes anything in or past the window.
            let off = if v & 4 == 0 {
                (v >> 8) & 0xfc
            } else {
                (v >> 8) % 0x1200
            };
            let val = g.next();
            if v & 0x10 == 0 {
                let mut buf = [0u8; 8];
                r.t.read(off, &mut buf[..width]);
            } else {
                // Small values make status, selects and sizes plausible more often.
                let val = if v & 0x20 == 0 { val & 0xff } else { val };
                r.t.write(off, &val.to_le_bytes()[..width]);
            }
            if v & 0x3f0 == 0 {
                // Scribble over the rings too, then kick.
                let addr = g.next() % MEM_SIZE as u64;
                let _ = r.mem.write_obj(g.next() as u32, GuestAddress(addr & !3));
                wr(&mut r.t, 0x050, 0);
            }
        }
        // The line always mirrors InterruptStatus.
        assert_eq!(r.line.level(), rd(&mut r.t, 0x060) != 0);
    }
}

#[test]
fn random_rings_never_panic() {
    let mut g = Garbage(42);
    for _ in 0..200 {
        let mut r = live();
        for a in (DESC..USED + 0x100).step_by(8) {
            let v = g.next();
            // Keep addresses small-ish half the time so some descriptors hit RAM.
            let v = if v & 1 == 0 {
                v % (2 * MEM_SIZE as u64)
            } else {
                v
            };
            r.mem.write_obj(v, GuestAddress(a)).unwrap();
        }
        wr(&mut r.t, 0x050, 0);
        wr(&mut r.t, 0x050, 0);
        assert_eq!(r.line.level(), rd(&mut r.t, 0x060) != 0);
    }
}

#[test]
fn buffers_the_device_fills_are_reported_as_dma_writes() {
    let mut r = live();
    let dma = Arc::new(emu_mmu::dma::DmaWrites::default());
    r.t.set_dma_writes(dma.clone());
    // Driver-readable descriptors are not reported; device-writable ones are, whole.
    Q.put_desc(&r.mem, 0, BUF + 0x100, 8, F_NEXT, 1);
    Q.put_desc(&r.mem, 1, BUF + 0x200, 16, F_WRITE, 0);
    Q.publish(&r.mem, 0, 0, 1);
    assert!(!dma.pending());
    wr(&mut r.t, 0x050, 0);
    assert_eq!(Q.used_idx(&r.mem), 1);
    assert!(dma.pending());
    assert_eq!(dma.take(), vec![(BUF + 0x200, 16)]);
    assert!(!dma.pending());

    // A chain that loops on itself is reported once per descriptor visit, boundedly.
    Q.put_desc(&r.mem, 2, BUF + 0x300, 4, F_WRITE | F_NEXT, 2);
    Q.publish(&r.mem, 1, 2, 2);
    wr(&mut r.t, 0x050, 0);
    assert!(dma.take().len() <= QSIZE as usize + 1024);
}
