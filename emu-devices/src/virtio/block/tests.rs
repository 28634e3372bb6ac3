//! virtio-blk driven through the virtio-mmio transport the way Linux's virtio_mmio and
//! virtio_blk drivers drive it, on temporary image files, plus guest garbage that must
//! never panic, hang or reach outside guest RAM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use emu_mmu::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use super::{feature, request_type as t, status as s, Block, BlockError, QUEUE_SIZE};
use crate::irq::RecordingLine;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    self, driver_ok, guest_bytes, needs_reset, put_desc_at, rd, setup_queue, transport, wr,
    Garbage, Rings, F_INDIRECT, F_NEXT, F_WRITE,
};
use crate::virtio::{device_id, features, interrupt, GuestMemory};

const MEM_SIZE: usize = 0x40000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Request headers.
const HDR: u64 = 0x4000;
/// Status bytes.
const STATUS: u64 = 0x5000;
/// Indirect descriptor tables.
const INDIRECT: u64 = 0x6000;
/// Data buffers.
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;

const Q: Rings = Rings {
    desc: DESC,
    avail: AVAIL,
    used: USED,
};

/// A descriptor as the tests write it: address, length, flags (NEXT is added by `submit`).
type Desc = (u64, u32, u16);

/// Image size used by most tests: 64 sectors.
const SECTORS: u64 = 64;

/// A temporary image file, removed on drop.
struct TempImage {
    path: PathBuf,
}

impl TempImage {
    fn new(contents: &[u8]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("quetzal-virtio-blk-{}-{n}.img", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    /// An image whose byte `i` is a function of `i`, so every sector differs.
    fn patterned(sectors: u64) -> Self {
        Self::new(&pattern(0, (sectors * 512) as usize))
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pattern of a patterned image from byte `start`.
fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ (i / 512) as u8)
        .collect()
}

struct Rig {
    t: MmioTransport<Block>,
    mem: GuestMemory,
    line: Arc<RecordingLine>,
    /// Next available ring index the driver publishes.
    avail: u16,
    img: TempImage,
}

fn rig_with(img: TempImage, read_only: bool) -> Rig {
    let dev = Block::open(&img.path, read_only)
        .unwrap()
        .with_serial("QTZL-TEST-SERIAL")
        .unwrap();
    rig_from(dev, img)
}

fn rig_from(dev: Block, img: TempImage) -> Rig {
    let (t, mem, line) = transport(dev, MEM_SIZE);
    Rig {
        t,
        mem,
        line,
        avail: 0,
        img,
    }
}

/// Linux's probe up to FEATURES_OK, accepting `offered & accept`; returns what was offered.
fn negotiate(t: &mut MmioTransport<Block>, accept: u64) -> u64 {
    let (offered, features_ok) = testing::negotiate(t, device_id::BLOCK, accept);
    assert!(features_ok);
    offered
}

/// Queue 0 set up and DRIVER_OK, as after `virtblk_probe`.
fn bring_up(r: &mut Rig, accept: u64) {
    negotiate(&mut r.t, accept);
    setup_queue(&mut r.t, 0, QUEUE_SIZE, u32::from(QSIZE), Q);
    driver_ok(&mut r.t);
    assert!(!needs_reset(&mut r.t));
}

/// A live device on a patterned image of [`SECTORS`] sectors, all features accepted.
fn live() -> Rig {
    live_with(TempImage::patterned(SECTORS), false, u64::MAX)
}

fn live_with(img: TempImage, read_only: bool, accept: u64) -> Rig {
    let mut r = rig_with(img, read_only);
    bring_up(&mut r, accept);
    r
}

/// Publishes chain head `head` and kicks; returns the used element if one was added.
fn kick(r: &mut Rig, head: u16) -> Option<(u32, u32)> {
    let slot = r.avail % QSIZE;
    r.avail = r.avail.wrapping_add(1);
    Q.publish(&r.mem, slot, head, r.avail);
    let before = Q.used_idx(&r.mem);
    wr(&mut r.t, 0x050, 0);
    if Q.used_idx(&r.mem) == before {
        return None;
    }
    assert_eq!(Q.used_idx(&r.mem), before.wrapping_add(1));
    let elem = Q.used_elem(&r.mem, before % QSIZE);
    // The driver's interrupt handler acknowledges.
    assert_ne!(rd(&mut r.t, 0x060) & interrupt::USED_BUFFER, 0);
    assert!(r.line.level());
    wr(&mut r.t, 0x064, interrupt::USED_BUFFER);
    Some(elem)
}

/// Submits `descs` (address, length, flags without NEXT) as one direct chain starting at
/// descriptor 0; returns the used element, or `None` if nothing was used.
fn submit(r: &mut Rig, descs: &[Desc]) -> Option<(u32, u32)> {
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let i = i as u16;
        let more = usize::from(i) + 1 < descs.len();
        let flags = if more { flags | F_NEXT } else { flags };
        put_desc_at(&r.mem, DESC, i, addr, len, flags, i + 1);
    }
    kick(r, 0)
}

fn header(r: &Rig, ty: u32, sector: u64) {
    r.mem.write_obj(ty, GuestAddress(HDR)).unwrap();
    r.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    r.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

/// A request as Linux's virtio_blk builds it: a 16-byte readable header, the data buffers,
/// a 1-byte writable status. Returns (status, used length).
fn request(r: &mut Rig, ty: u32, sector: u64, data: &[Desc]) -> (u8, u32) {
    header(r, ty, sector);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut descs = vec![(HDR, 16, 0)];
    descs.extend_from_slice(data);
    descs.push((STATUS, 1, F_WRITE));
    let (id, len) = submit(r, &descs).expect("request completed");
    assert_eq!(id, 0);
    assert!(!needs_reset(&mut r.t));
    (r.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
}

fn cfg(r: &mut Rig, off: u64, width: usize) -> u64 {
    let mut b = [0u8; 8];
    r.t.read(0x100 + off, &mut b[..width]);
    u64::from_le_bytes(b)
}

#[test]
fn features_and_config_space() {
    let mut r = rig_with(TempImage::new(&vec![0; 64 * 512 + 100]), false);
    let offered = negotiate(&mut r.t, u64::MAX);
    for f in [
        feature::SEG_MAX,
        feature::BLK_SIZE,
        feature::FLUSH,
        feature::DISCARD,
        feature::WRITE_ZEROES,
        features::VIRTIO_F_VERSION_1,
        features::VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(offered & f, 0, "{f:#x}");
    }
    assert_eq!(offered & (feature::RO | feature::SIZE_MAX), 0);
    // A trailing partial sector is not exposed; Linux reads the 64-bit capacity as two
    // 32-bit halves.
    assert_eq!(cfg(&mut r, 0, 4), 64);
    assert_eq!(cfg(&mut r, 4, 4), 0);
    assert_eq!(cfg(&mut r, 0, 8), 64);
    assert_eq!(cfg(&mut r, 12, 4), u64::from(super::SEG_MAX));
    assert_eq!(cfg(&mut r, 20, 4), 512);
    assert_eq!(cfg(&mut r, 36, 4), u64::from(super::MAX_DISCARD_SECTORS));
    assert_eq!(cfg(&mut r, 40, 4), u64::from(super::MAX_DISCARD_SEG));
    assert_eq!(
        cfg(&mut r, 48, 4),
        u64::from(super::MAX_WRITE_ZEROES_SECTORS)
    );
    assert_eq!(cfg(&mut r, 52, 4), u64::from(super::MAX_WRITE_ZEROES_SEG));
    assert_eq!(cfg(&mut r, 56, 1), 0, "write zeroes never unmaps");
    // Byte reads, reads straddling the end and reads far beyond it.
    assert_eq!(cfg(&mut r, 1, 1), 0);
    assert_eq!(cfg(&mut r, 0, 1), 64);
    assert_eq!(cfg(&mut r, 58, 4), 0);
    assert_eq!(cfg(&mut r, 0xe00, 4), 0);
    // Writes are ignored.
    r.t.write(0x100, &[0xff; 8]);
    assert_eq!(cfg(&mut r, 0, 8), 64);
    assert_eq!(r.t.device().capacity(), 64);

    // Read-only: RO offered, no discard or write zeroes, their limits zero.
    let mut r = rig_with(TempImage::patterned(8), true);
    let offered = negotiate(&mut r.t, u64::MAX);
    assert_ne!(offered & feature::RO, 0);
    assert_eq!(offered & (feature::DISCARD | feature::WRITE_ZEROES), 0);
    assert_eq!(cfg(&mut r, 0, 8), 8);
    assert_eq!(cfg(&mut r, 36, 4), 0);
    assert_eq!(cfg(&mut r, 48, 4), 0);
}

#[test]
fn read_returns_image_contents() {
    let mut r = live();
    // Sectors 5..8 into two buffers split mid-sector, as scatter-gather lists do.
    let (st, len) = request(
        &mut r,
        t::IN,
        5,
        &[(BUF, 700, F_WRITE), (BUF + 0x1000, 3 * 512 - 700, F_WRITE)],
    );
    assert_eq!((st, len), (s::OK, 3 * 512 + 1));
    let mut got = guest_bytes(&r.mem, BUF, 700);
    got.extend(guest_bytes(&r.mem, BUF + 0x1000, 3 * 512 - 700));
    assert_eq!(got, pattern(5 * 512, 3 * 512));
    // The last sector.
    let (st, _) = request(&mut r, t::IN, SECTORS - 1, &[(BUF, 512, F_WRITE)]);
    assert_eq!(st, s::OK);
    assert_eq!(
        guest_bytes(&r.mem, BUF, 512),
        pattern((SECTORS as usize - 1) * 512, 512)
    );
    // A read larger than the bounce buffer.
    let img = TempImage::patterned(600);
    let mut r = live_with(img, true, u64::MAX);
    let (st, _) = request(&mut r, t::IN, 10, &[(BUF, 300 * 512, F_WRITE)]);
    assert_eq!(st, s::OK);
    assert_eq!(
        guest_bytes(&r.mem, BUF, 300 * 512),
        pattern(10 * 512, 300 * 512)
    );
    assert_eq!(r.t.device().stats().bytes_read, 300 * 512);
}

#[test]
fn write_then_read_back() {
    let mut r = live();
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    r.mem.write_slice(&data[..512], GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&data[512..], GuestAddress(BUF + 0x2000))
        .unwrap();
    let (st, len) = request(&mut r, t::OUT, 9, &[(BUF, 512, 0), (BUF + 0x2000, 512, 0)]);
    assert_eq!((st, len), (s::OK, 1));
    // The image file has it (no user-space buffering in between), the rest is untouched.
    let file = r.img.contents();
    assert_eq!(file.len() as u64, SECTORS * 512);
    assert_eq!(&file[9 * 512..11 * 512], &data[..]);
    assert_eq!(&file[..9 * 512], &pattern(0, 9 * 512)[..]);
    assert_eq!(
        &file[11 * 512..],
        &pattern(11 * 512, (SECTORS as usize - 11) * 512)[..]
    );
    // And the guest reads it back.
    let (st, _) = request(&mut r, t::IN, 9, &[(BUF + 0x8000, 1024, F_WRITE)]);
    assert_eq!(st, s::OK);
    assert_eq!(guest_bytes(&r.mem, BUF + 0x8000, 1024), data);
    assert_eq!(r.t.device().stats().bytes_written, 1024);
}

#[test]
fn flush_syncs_and_writethrough_without_flush() {
    // FLUSH accepted: a writeback cache; writes do not sync, FLUSH does.
    let mut r = live();
    assert_ne!(r.t.device().driver_features() & feature::FLUSH, 0);
    let (st, _) = request(&mut r, t::OUT, 0, &[(BUF, 512, 0)]);
    assert_eq!(st, s::OK);
    assert_eq!(r.t.device().stats().syncs, 0);
    let (st, len) = request(&mut r, t::FLUSH, 0, &[]);
    assert_eq!((st, len), (s::OK, 1));
    assert_eq!(r.t.device().stats().syncs, 1);

    // FLUSH offered but not accepted: §5.2.6.2 makes completed writes stable, so every
    // write syncs before it completes.
    let mut r = live_with(TempImage::patterned(SECTORS), false, !feature::FLUSH);
    assert_eq!(r.t.device().driver_features() & feature::FLUSH, 0);
    let (st, _) = request(&mut r, t::OUT, 3, &[(BUF, 1024, 0)]);
    assert_eq!(st, s::OK);
    assert_eq!(r.t.device().stats().syncs, 1);
    // A failed write does not sync (and writes nothing).
    let (st, _) = request(&mut r, t::OUT, SECTORS, &[(BUF, 512, 0)]);
    assert_eq!(st, s::IOERR);
    assert_eq!(r.t.device().stats().syncs, 1);
}

#[test]
fn read_only_rejects_writes() {
    let img = TempImage::patterned(SECTORS);
    let before = img.contents();
    let mut r = live_with(img, true, u64::MAX);
    assert_ne!(r.t.device().driver_features() & feature::RO, 0);
    r.mem.write_slice(&[0xaa; 512], GuestAddress(BUF)).unwrap();
    let (st, len) = request(&mut r, t::OUT, 0, &[(BUF, 512, 0)]);
    assert_eq!((st, len), (s::IOERR, 1));
    // Discard and write zeroes were not offered, so they are unsupported.
    let range = [0u8; 16];
    r.mem
        .write_slice(&range, GuestAddress(BUF + 0x1000))
        .unwrap();
    let (st, _) = request(&mut r, t::WRITE_ZEROES, 0, &[(BUF + 0x1000, 16, 0)]);
    assert_eq!(st, s::UNSUPP);
    let (st, _) = request(&mut r, t::DISCARD, 0, &[(BUF + 0x1000, 16, 0)]);
    assert_eq!(st, s::UNSUPP);
    // Reads and flushes work.
    let (st, _) = request(&mut r, t::IN, 0, &[(BUF, 512, F_WRITE)]);
    assert_eq!(st, s::OK);
    assert_eq!(guest_bytes(&r.mem, BUF, 512), pattern(0, 512));
    let (st, _) = request(&mut r, t::FLUSH, 0, &[]);
    assert_eq!(st, s::OK);
    assert_eq!(r.img.contents(), before);
    assert_eq!(r.t.device().stats().io_errors, 1);
}

#[test]
fn get_id_returns_serial() {
    let mut r = live();
    r.mem.write_slice(&[0xee; 32], GuestAddress(BUF)).unwrap();
    let (st, len) = request(&mut r, t::GET_ID, 0, &[(BUF, 20, F_WRITE)]);
    assert_eq!((st, len), (s::OK, 21));
    let mut want = b"QTZL-TEST-SERIAL".to_vec();
    want.resize(20, 0);
    assert_eq!(guest_bytes(&r.mem, BUF, 20), want);
    assert_eq!(
        guest_bytes(&r.mem, BUF + 20, 1),
        [0xee],
        "nothing beyond the buffer"
    );

    // A 20-character serial has no terminator.
    let img = TempImage::patterned(1);
    let dev = Block::open(&img.path, false).unwrap();
    let dev = dev.with_serial("ABCDEFGHIJKLMNOPQRST").unwrap();
    let mut r2 = rig_from(dev, img);
    bring_up(&mut r2, u64::MAX);
    let (st, _) = request(&mut r2, t::GET_ID, 0, &[(BUF, 20, F_WRITE)]);
    assert_eq!(st, s::OK);
    assert_eq!(guest_bytes(&r2.mem, BUF, 20), b"ABCDEFGHIJKLMNOPQRST");

    // Serials GET_ID cannot carry are refused.
    for bad in ["ABCDEFGHIJKLMNOPQRSTU", "tab\there", "ümlaut"] {
        let e = Block::open(&r.img.path, true)
            .unwrap()
            .with_serial(bad)
            .unwrap_err();
        assert!(matches!(e, BlockError::Serial(_)), "{e}");
    }
}

#[test]
fn out_of_range_sectors_fail() {
    let mut r = live();
    let before = r.img.contents();
    let cases: [(u32, u64, u32); 6] = [
        (t::IN, SECTORS, 512),
        (t::IN, SECTORS - 1, 1024),
        (t::IN, u64::MAX, 512),
        (t::IN, u64::MAX / 512 + 1, 512),
        (t::OUT, SECTORS, 512),
        (t::OUT, SECTORS - 1, 1024),
    ];
    for (ty, sector, len) in cases {
        let flags = if ty == t::IN { F_WRITE } else { 0 };
        let (st, used) = request(&mut r, ty, sector, &[(BUF, len, flags)]);
        assert_eq!((st, used), (s::IOERR, 1), "type {ty} sector {sector:#x}");
    }
    assert_eq!(
        r.img.contents(),
        before,
        "the image neither grew nor changed"
    );
    // The device is still healthy.
    let (st, _) = request(&mut r, t::IN, 0, &[(BUF, 512, F_WRITE)]);
    assert_eq!(st, s::OK);
}

#[test]
fn host_io_errors_fail_the_request() {
    let mut r = live();
    // Something else shrinks the image behind the device's back: reads past the new end
    // hit end-of-file on the host.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&r.img.path)
        .unwrap()
        .set_len(4 * 512)
        .unwrap();
    let (st, len) = request(&mut r, t::IN, 10, &[(BUF, 512, F_WRITE)]);
    assert_eq!((st, len), (s::IOERR, 1));
    let (st, _) = request(&mut r, t::IN, 3, &[(BUF, 1024, F_WRITE)]);
    assert_eq!(st, s::IOERR, "a read running off the end fails as a whole");
    let (st, _) = request(&mut r, t::IN, 0, &[(BUF, 512, F_WRITE)]);
    assert_eq!(st, s::OK);
    assert_eq!(guest_bytes(&r.mem, BUF, 512), pattern(0, 512));
    assert!(!needs_reset(&mut r.t));
}

#[test]
fn write_zeroes_and_discard() {
    let mut r = live();
    let range = |r: &Rig, at: u64, sector: u64, count: u32, flags: u32| {
        r.mem.write_obj(sector, GuestAddress(at)).unwrap();
        r.mem.write_obj(count, GuestAddress(at + 8)).unwrap();
        r.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    };
    // Two segments, one with the unmap flag (allowed for write zeroes).
    range(&r, BUF, 2, 3, 0);
    range(&r, BUF + 16, 10, 1, 1);
    let (st, _) = request(&mut r, t::WRITE_ZEROES, 0, &[(BUF, 32, 0)]);
    assert_eq!(st, s::OK);
    let file = r.img.contents();
    let mut want = pattern(0, SECTORS as usize * 512);
    want[2 * 512..5 * 512].fill(0);
    want[10 * 512..11 * 512].fill(0);
    assert_eq!(file, want);

    // Unknown flags are unsupported; nothing is written.
    range(&r, BUF, 20, 1, 2);
    let (st, _) = request(&mut r, t::WRITE_ZEROES, 0, &[(BUF, 16, 0)]);
    assert_eq!(st, s::UNSUPP);
    // A range beyond the capacity fails and the valid segment before it is not written.
    range(&r, BUF, 20, 1, 0);
    range(&r, BUF + 16, SECTORS, 1, 0);
    let (st, _) = request(&mut r, t::WRITE_ZEROES, 0, &[(BUF, 32, 0)]);
    assert_eq!(st, s::IOERR);
    // Bad segment lists: empty, not a multiple of 16, more than max_write_zeroes_seg.
    for len in [0, 8, 16 * (super::MAX_WRITE_ZEROES_SEG + 1)] {
        for i in 0..u64::from(super::MAX_WRITE_ZEROES_SEG) + 1 {
            range(&r, BUF + 16 * i, 0, 1, 0);
        }
        let (st, _) = request(&mut r, t::WRITE_ZEROES, 0, &[(BUF, len, 0)]);
        assert_eq!(st, s::IOERR, "{len}");
    }
    // Too many sectors in one segment.
    range(&r, BUF, 0, super::MAX_WRITE_ZEROES_SECTORS + 1, 0);
    let (st, _) = request(&mut r, t::WRITE_ZEROES, 0, &[(BUF, 16, 0)]);
    assert_eq!(st, s::IOERR);
    assert_eq!(r.img.contents(), want);

    // Discard: validated, then a no-op the specification allows.
    range(&r, BUF, 0, 8, 0);
    let (st, _) = request(&mut r, t::DISCARD, 0, &[(BUF, 16, 0)]);
    assert_eq!(st, s::OK);
    // The unmap flag is not allowed on discard.
    range(&r, BUF, 0, 8, 1);
    let (st, _) = request(&mut r, t::DISCARD, 0, &[(BUF, 16, 0)]);
    assert_eq!(st, s::UNSUPP);
    range(&r, BUF, SECTORS - 1, 2, 0);
    let (st, _) = request(&mut r, t::DISCARD, 0, &[(BUF, 16, 0)]);
    assert_eq!(st, s::IOERR);
    assert_eq!(r.img.contents(), want);

    // Not negotiated: unsupported.
    let accept = !(feature::DISCARD | feature::WRITE_ZEROES);
    let mut r = live_with(TempImage::patterned(SECTORS), false, accept);
    range(&r, BUF, 0, 1, 0);
    for ty in [t::DISCARD, t::WRITE_ZEROES] {
        let (st, _) = request(&mut r, ty, 0, &[(BUF, 16, 0)]);
        assert_eq!(st, s::UNSUPP);
    }
    assert_eq!(r.img.contents(), pattern(0, SECTORS as usize * 512));
}

#[test]
fn unsupported_types() {
    let mut r = live();
    for ty in [
        2,
        3,
        5,
        t::GET_LIFETIME,
        t::SECURE_ERASE,
        16,
        0x8000_0000,
        u32::MAX,
    ] {
        let (st, len) = request(&mut r, ty, 0, &[(BUF, 512, F_WRITE)]);
        assert_eq!((st, len), (s::UNSUPP, 1), "type {ty:#x}");
    }
    assert_eq!(r.t.device().stats().requests, 8);
    assert_eq!(r.t.device().stats().io_errors, 0);
}

#[test]
fn malformed_requests_fail_with_ioerr() {
    let mut r = live();
    let before = r.img.contents();
    let outside = MEM_SIZE as u64 + 0x1000;
    // Each case is a whole chain ending in a good status byte.
    let cases: Vec<(&str, u32, Vec<Desc>)> = vec![
        (
            "device-writable header",
            t::IN,
            vec![(HDR, 16, F_WRITE), (BUF, 512, F_WRITE)],
        ),
        ("header too short", t::IN, vec![(HDR, 8, 0)]),
        ("no header at all", t::IN, vec![]),
        (
            "read-only data buffer for IN",
            t::IN,
            vec![(HDR, 16, 0), (BUF, 512, 0)],
        ),
        (
            "writable data buffer for OUT",
            t::OUT,
            vec![(HDR, 16, 0), (BUF, 512, F_WRITE)],
        ),
        (
            "IN not a multiple of 512",
            t::IN,
            vec![(HDR, 16, 0), (BUF, 500, F_WRITE)],
        ),
        (
            "OUT not a multiple of 512",
            t::OUT,
            vec![(HDR, 16, 0), (BUF, 513, 0)],
        ),
        (
            "readable after writable",
            t::IN,
            vec![(HDR, 16, 0), (BUF, 512, F_WRITE), (BUF + 0x1000, 16, 0)],
        ),
        (
            "data outside RAM",
            t::IN,
            vec![(HDR, 16, 0), (outside, 512, F_WRITE)],
        ),
        (
            "data straddling the end of RAM",
            t::OUT,
            vec![(HDR, 16, 0), (MEM_SIZE as u64 - 256, 512, 0)],
        ),
        (
            "data address wraps",
            t::IN,
            vec![(HDR, 16, 0), (u64::MAX - 255, 512, F_WRITE)],
        ),
        (
            "header outside RAM",
            t::IN,
            vec![(outside, 16, 0), (BUF, 512, F_WRITE)],
        ),
        ("GET_ID without a buffer", t::GET_ID, vec![(HDR, 16, 0)]),
        (
            "GET_ID with a readable buffer",
            t::GET_ID,
            vec![(HDR, 16, 0), (BUF, 20, 0), (BUF + 0x100, 20, F_WRITE)],
        ),
    ];
    for (name, ty, mut descs) in cases {
        header(&r, ty, 0);
        r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        descs.push((STATUS, 1, F_WRITE));
        let used = submit(&mut r, &descs);
        assert_eq!(used, Some((0, 1)), "{name}");
        assert!(!needs_reset(&mut r.t), "{name}");
        assert_eq!(guest_bytes(&r.mem, STATUS, 1), [s::IOERR], "{name}");
    }
    assert_eq!(r.img.contents(), before);
    // The status byte may share a descriptor with data (any layout): 512 bytes of data
    // and the status in one 513-byte buffer.
    header(&r, t::IN, 1);
    let used = submit(&mut r, &[(HDR, 16, 0), (BUF, 513, F_WRITE)]);
    assert_eq!(used, Some((0, 513)));
    assert_eq!(guest_bytes(&r.mem, BUF, 512), pattern(512, 512));
    assert_eq!(guest_bytes(&r.mem, BUF + 512, 1), [s::OK]);
    // And a header split over two descriptors.
    r.mem.write_obj(t::IN, GuestAddress(BUF + 0x3000)).unwrap();
    r.mem.write_obj(0u32, GuestAddress(BUF + 0x3004)).unwrap();
    r.mem.write_obj(2u64, GuestAddress(BUF + 0x4000)).unwrap();
    let used = submit(
        &mut r,
        &[
            (BUF + 0x3000, 8, 0),
            (BUF + 0x4000, 8, 0),
            (BUF, 512, F_WRITE),
            (STATUS, 1, F_WRITE),
        ],
    );
    assert_eq!(used, Some((0, 513)));
    assert_eq!(guest_bytes(&r.mem, STATUS, 1), [s::OK]);
    assert_eq!(guest_bytes(&r.mem, BUF, 512), pattern(1024, 512));
}

#[test]
fn chains_without_a_status_byte_need_reset() {
    let outside = MEM_SIZE as u64 + 0x1000;
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        (
            "readable last descriptor",
            vec![(HDR, 16, 0), (BUF, 512, 0)],
        ),
        (
            "zero-length status",
            vec![(HDR, 16, 0), (BUF, 512, F_WRITE), (STATUS, 0, F_WRITE)],
        ),
        (
            "status outside RAM",
            vec![(HDR, 16, 0), (BUF, 512, F_WRITE), (outside, 1, F_WRITE)],
        ),
        (
            "status address wraps",
            vec![(HDR, 16, 0), (u64::MAX, 2, F_WRITE)],
        ),
        ("only a header", vec![(HDR, 16, 0)]),
    ];
    for (name, descs) in cases {
        let mut r = live();
        let before = r.img.contents();
        header(&r, t::OUT, 0);
        assert_eq!(submit(&mut r, &descs), None, "{name}");
        assert!(needs_reset(&mut r.t), "{name}");
        assert_ne!(rd(&mut r.t, 0x060) & interrupt::CONFIG_CHANGE, 0);
        assert_eq!(r.img.contents(), before, "{name}");
        // Later kicks are ignored; a reset brings the device back.
        wr(&mut r.t, 0x050, 0);
        r.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
        r.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
        r.avail = 0;
        bring_up(&mut r, u64::MAX);
        let (st, _) = request(&mut r, t::IN, 0, &[(BUF, 512, F_WRITE)]);
        assert_eq!(st, s::OK, "{name}");
    }
}

#[test]
fn broken_chains_need_reset() {
    // A loop: 0 -> 1 -> 0 ...
    let mut r = live();
    header(&r, t::IN, 0);
    put_desc_at(&r.mem, DESC, 0, HDR, 16, F_NEXT, 1);
    put_desc_at(&r.mem, DESC, 1, STATUS, 1, F_WRITE | F_NEXT, 0);
    assert_eq!(kick(&mut r, 0), None);
    assert!(needs_reset(&mut r.t));

    // A next index beyond the table.
    let mut r = live();
    put_desc_at(&r.mem, DESC, 0, HDR, 16, F_NEXT, 999);
    assert_eq!(kick(&mut r, 0), None);
    assert!(needs_reset(&mut r.t));

    // A head index beyond the table.
    let mut r = live();
    assert_eq!(kick(&mut r, 500), None);
    assert!(needs_reset(&mut r.t));

    // An avail index more than a queue ahead.
    let mut r = live();
    r.mem.write_obj(0x8000u16, GuestAddress(AVAIL + 2)).unwrap();
    wr(&mut r.t, 0x050, 0);
    assert!(needs_reset(&mut r.t));

    // A self-loop through an indirect table, and an indirect descriptor inside one.
    for (flags, next) in [(F_NEXT, 0u16), (F_INDIRECT, 0)] {
        let mut r = live();
        put_desc_at(&r.mem, INDIRECT, 0, INDIRECT, 16, flags, next);
        put_desc_at(&r.mem, DESC, 0, INDIRECT, 16, F_INDIRECT, 0);
        assert_eq!(kick(&mut r, 0), None);
        assert!(needs_reset(&mut r.t));
    }
}

#[test]
fn indirect_requests() {
    let mut r = live();
    // A read through an indirect table: header, two data buffers, status.
    header(&r, t::IN, 4);
    let table = [
        (HDR, 16, 0),
        (BUF, 512, F_WRITE),
        (BUF + 0x1000, 512, F_WRITE),
        (STATUS, 1, F_WRITE),
    ];
    for (i, &(addr, len, flags)) in table.iter().enumerate() {
        let i = i as u16;
        let flags = if i < 3 { flags | F_NEXT } else { flags };
        put_desc_at(&r.mem, INDIRECT, i, addr, len, flags, i + 1);
    }
    put_desc_at(&r.mem, DESC, 0, INDIRECT, 64, F_INDIRECT, 0);
    assert_eq!(kick(&mut r, 0), Some((0, 1025)));
    assert_eq!(guest_bytes(&r.mem, STATUS, 1), [s::OK]);
    let mut got = guest_bytes(&r.mem, BUF, 512);
    got.extend(guest_bytes(&r.mem, BUF + 0x1000, 512));
    assert_eq!(got, pattern(4 * 512, 1024));

    // An oversized chain: 2000 descriptors in one indirect table (allowed by the ring,
    // above MAX_CHAIN_DESCRIPTORS), ending in a good status byte: IOERR.
    let n: u16 = 2000;
    header(&r, t::IN, 0);
    put_desc_at(&r.mem, BUF, 0, HDR, 16, F_NEXT, 1);
    for i in 1..n - 1 {
        put_desc_at(&r.mem, BUF, i, BUF + 0x10000, 512, F_WRITE | F_NEXT, i + 1);
    }
    put_desc_at(&r.mem, BUF, n - 1, STATUS, 1, F_WRITE, 0);
    put_desc_at(&r.mem, DESC, 0, BUF, u32::from(n) * 16, F_INDIRECT, 0);
    const { assert!(2000 > super::MAX_CHAIN_DESCRIPTORS) };
    assert_eq!(kick(&mut r, 0), Some((0, 1)));
    assert_eq!(guest_bytes(&r.mem, STATUS, 1), [s::IOERR]);
    assert!(!needs_reset(&mut r.t));
}

#[test]
fn several_requests_per_kick() {
    let mut r = live();
    // Three chains published at once, as a busy driver does.
    for k in 0..3u16 {
        let base = k * 3;
        let hdr = HDR + 16 * u64::from(k);
        r.mem.write_obj(t::IN, GuestAddress(hdr)).unwrap();
        r.mem
            .write_obj(u64::from(k) * 2, GuestAddress(hdr + 8))
            .unwrap();
        put_desc_at(&r.mem, DESC, base, hdr, 16, F_NEXT, base + 1);
        put_desc_at(
            &r.mem,
            DESC,
            base + 1,
            BUF + 0x1000 * u64::from(k),
            512,
            F_WRITE | F_NEXT,
            base + 2,
        );
        put_desc_at(&r.mem, DESC, base + 2, STATUS + u64::from(k), 1, F_WRITE, 0);
        r.mem
            .write_obj(base, GuestAddress(AVAIL + 4 + 2 * u64::from(k)))
            .unwrap();
    }
    r.mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
    wr(&mut r.t, 0x050, 0);
    assert_eq!(Q.used_idx(&r.mem), 3);
    assert_eq!(r.line.edges(), 1, "one interrupt for the batch");
    for k in 0..3u64 {
        assert_eq!(guest_bytes(&r.mem, STATUS + k, 1), [s::OK]);
        assert_eq!(
            guest_bytes(&r.mem, BUF + 0x1000 * k, 512),
            pattern(k as usize * 1024, 512)
        );
    }
}

#[test]
fn open_errors_are_clear() {
    let missing = std::env::temp_dir().join("quetzal-virtio-blk-does-not-exist.img");
    for ro in [false, true] {
        let e = Block::open(&missing, ro).unwrap_err();
        match &e {
            BlockError::Open { path, source, .. } => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("does-not-exist.img"), "{msg}");
        assert!(msg.starts_with("cannot open disk image"), "{msg}");
    }
    // A directory is not an image (opening one read-only succeeds on Unix).
    let dir = std::env::temp_dir();
    let e = Block::open(&dir, true).unwrap_err();
    assert!(
        matches!(e, BlockError::NotAFile { .. } | BlockError::Open { .. }),
        "{e}"
    );
    let e = Block::open(&dir, false).unwrap_err();
    assert!(
        matches!(e, BlockError::NotAFile { .. } | BlockError::Open { .. }),
        "{e}"
    );
    // An empty image is a zero-sector disk, not an error.
    let img = TempImage::new(&[]);
    assert_eq!(Block::open(&img.path, false).unwrap().capacity(), 0);
}

/// Random descriptor tables and headers, mostly plausible so that requests get past the
/// first checks: no panic, no hang, the image never grows, and every kick ends with the
/// used ring advanced by completed requests or the device asking for a reset.
#[test]
fn random_descriptor_tables_never_panic() {
    let mut g = Garbage(0x5eed_b10c);
    let mut completed = 0u32;
    let mut resets = 0u32;
    let (mut good, mut failed) = (0u64, 0u64);
    for _round in 0..300 {
        let mut r = live_with(
            TempImage::patterned(16),
            false,
            g.next() | features::VIRTIO_F_VERSION_1,
        );
        let size = r.img.contents().len();
        for _kick in 0..8 {
            // Headers: a plausible type and a sector near the capacity.
            for h in 0..4u64 {
                let ty = [
                    t::IN,
                    t::OUT,
                    t::FLUSH,
                    t::GET_ID,
                    t::DISCARD,
                    t::WRITE_ZEROES,
                    7,
                ][g.below(7) as usize];
                r.mem.write_obj(ty, GuestAddress(HDR + 16 * h)).unwrap();
                r.mem
                    .write_obj(g.below(20), GuestAddress(HDR + 16 * h + 8))
                    .unwrap();
            }
            // Random range segments in the data area, for discard and write zeroes.
            for k in 0..8u64 {
                r.mem
                    .write_obj(g.below(20), GuestAddress(BUF + 16 * k))
                    .unwrap();
                r.mem
                    .write_obj(g.below(8) as u32, GuestAddress(BUF + 16 * k + 8))
                    .unwrap();
                r.mem
                    .write_obj(g.below(3) as u32, GuestAddress(BUF + 16 * k + 12))
                    .unwrap();
            }
            // Descriptors: direct table and an indirect table, half plausible, half junk.
            for (table, count) in [(DESC, QSIZE), (INDIRECT, 32)] {
                for i in 0..count {
                    let v = g.next();
                    let addr = match v & 7 {
                        0 => g.next(),
                        1 => MEM_SIZE as u64 - g.below(64),
                        2 | 3 => HDR + 16 * g.below(4),
                        4 => STATUS + g.below(16),
                        _ => BUF + 512 * g.below(64),
                    };
                    let len = match (v >> 3) & 7 {
                        0 => g.next() as u32,
                        1 => 1,
                        2 => 16,
                        3 => 20,
                        4 => 8,
                        _ => 512 * (1 + g.below(4) as u32),
                    };
                    let flags = (g.next() as u16) & if v & 0x100 == 0 { 7 } else { 3 };
                    let next = if v & 0x200 == 0 {
                        g.below(u64::from(count) + 2) as u16
                    } else {
                        i + 1
                    };
                    put_desc_at(&r.mem, table, i, addr, len, flags, next);
                }
            }
            // Sometimes point a descriptor at the indirect table properly.
            if g.next() & 1 == 0 {
                let i = g.below(u64::from(QSIZE)) as u16;
                put_desc_at(
                    &r.mem,
                    DESC,
                    i,
                    INDIRECT,
                    16 * (1 + g.below(32) as u32),
                    F_INDIRECT,
                    0,
                );
            }
            let heads = 1 + g.below(4) as u16;
            for h in 0..heads {
                let slot = r.avail % QSIZE;
                // Nine heads in ten start a well-formed-looking chain (header, data, status in
                // descriptors 3h..3h+2) with one field possibly damaged; the rest point at
                // the junk.
                let head = if g.below(10) != 0 {
                    let base = 3 * h;
                    let dir = if g.next() & 1 == 0 { F_WRITE } else { 0 };
                    let mut chain = [
                        (HDR + 16 * g.below(4), 16, 0),
                        (BUF + 512 * g.below(64), 512 * (1 + g.below(4) as u32), dir),
                        (STATUS + u64::from(h), 1, F_WRITE),
                    ];
                    if g.below(3) == 0 {
                        let which = g.below(3) as usize;
                        match g.below(3) {
                            0 => chain[which].0 = g.next() % (2 * MEM_SIZE as u64),
                            1 => chain[which].1 = g.next() as u32 % 1100,
                            _ => chain[which].2 ^= F_WRITE,
                        }
                    }
                    for (i, &(addr, len, flags)) in chain.iter().enumerate() {
                        let i = i as u16;
                        let flags = if i < 2 { flags | F_NEXT } else { flags };
                        put_desc_at(&r.mem, DESC, base + i, addr, len, flags, base + i + 1);
                    }
                    base
                } else {
                    g.below(u64::from(QSIZE) + 1) as u16
                };
                r.mem
                    .write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
                    .unwrap();
                r.avail = r.avail.wrapping_add(1);
            }
            r.mem.write_obj(r.avail, GuestAddress(AVAIL + 2)).unwrap();
            let before = Q.used_idx(&r.mem);
            wr(&mut r.t, 0x050, 0);
            let after = Q.used_idx(&r.mem);
            completed += u32::from(after.wrapping_sub(before));
            assert!(after.wrapping_sub(before) <= heads);
            wr(&mut r.t, 0x064, interrupt::USED_BUFFER);
            if needs_reset(&mut r.t) {
                resets += 1;
                break;
            }
            assert_eq!(
                after.wrapping_sub(before),
                heads,
                "no reset, so every chain completed"
            );
        }
        assert_eq!(r.line.level(), rd(&mut r.t, 0x060) != 0);
        assert_eq!(r.img.contents().len(), size, "the image never grows");
        let stats = r.t.device().stats();
        good += stats.requests - stats.io_errors;
        failed += stats.io_errors;
    }
    // The generator reaches both outcomes.
    eprintln!(
        "{completed} requests completed ({good} OK or UNSUPP, {failed} IOERR), {resets} resets"
    );
    assert!(good > 200 && failed > 200, "{good} {failed}");
    assert!(completed > 500, "{completed}");
    assert!(resets > 10, "{resets}");
}
