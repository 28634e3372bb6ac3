//! virtio-balloon driven through the virtio-mmio transport the way Linux's virtio_mmio and
//! virtio_balloon drivers drive it: target changes, inflate and deflate with page release
//! on the host, the statistics protocol, and guest mistakes.

use std::sync::Arc;

use emu_mmu::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use super::{feature, stat_tag, Balloon, DEFLATEQ, INFLATEQ, PAGE_SIZE, QUEUE_SIZE, STATSQ};
use crate::irq::RecordingLine;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    driver_ok, needs_reset, negotiate, rd, setup_queue, transport, wr, Rings,
};
use crate::virtio::{device_id, features, interrupt, status, GuestMemory};

const MEM_SIZE: usize = 0x40_0000;
/// Queue `q`'s descriptor table is at `RINGS + q * 0x1000`, its available ring 0x400 and
/// its used ring 0x800 above.
const RINGS: u64 = 0x1000;
/// Frame-number arrays and statistics buffers.
const BUF: u64 = 0x8000;
/// Pages the tests balloon: 1 MiB and up.
const FIRST_PFN: u64 = 0x100;
const QSIZE: u16 = 16;

struct Rig {
    t: MmioTransport<Balloon>,
    mem: GuestMemory,
    line: Arc<RecordingLine>,
    avail: [u16; 3],
    used: [u16; 3],
}

/// Queue `q`'s rings: descriptor table at `RINGS + q * 0x1000`, available ring 0x400 and
/// used ring 0x800 above.
fn rings(q: usize) -> Rings {
    let desc = RINGS + q as u64 * 0x1000;
    Rings {
        desc,
        avail: desc + 0x400,
        used: desc + 0x800,
    }
}

fn rig_with(balloon: Balloon) -> Rig {
    let (t, mem, line) = transport(balloon, MEM_SIZE);
    Rig {
        t,
        mem,
        line,
        avail: [0; 3],
        used: [0; 3],
    }
}

/// Linux's probe up to DRIVER_OK, accepting `offered & accept`; sets up the statistics
/// queue only when STATS_VQ was accepted, as `init_vqs` does. Returns what was offered.
fn bring_up(r: &mut Rig, accept: u64) -> u64 {
    let offered = bring_up_queues(r, accept);
    driver_ok(&mut r.t);
    assert!(r.t.device().activated());
    offered
}

/// Linux's probe with every feature accepted, queues set up, DRIVER_OK not yet set.
fn bring_up_until_queues(r: &mut Rig) -> u64 {
    bring_up_queues(r, u64::MAX)
}

fn bring_up_queues(r: &mut Rig, accept: u64) -> u64 {
    let t = &mut r.t;
    let (offered, features_ok) = negotiate(t, device_id::BALLOON, accept);
    assert!(features_ok);
    let want = offered & accept;
    let queues = if want & feature::STATS_VQ != 0 { 3 } else { 2 };
    for q in 0..queues {
        setup_queue(t, q as u32, QUEUE_SIZE, u32::from(QSIZE), rings(q));
    }
    offered
}

fn live() -> Rig {
    let mut r = rig_with(Balloon::new(false));
    bring_up(&mut r, u64::MAX);
    r
}

/// Publishes a one-descriptor readable chain of `len` bytes at `addr` on queue `q`
/// (descriptor index = avail slot), without kicking; returns its head.
fn post(r: &mut Rig, q: usize, addr: u64, len: u32) -> u16 {
    let rings = rings(q);
    let head = r.avail[q] % QSIZE;
    rings.put_desc(&r.mem, head, addr, len, 0, 0);
    r.avail[q] = r.avail[q].wrapping_add(1);
    rings.publish(&r.mem, head, head, r.avail[q]);
    head
}

fn take_used(r: &mut Rig, q: usize) -> Vec<(u32, u32)> {
    rings(q).take_used(&r.mem, &mut r.used[q], QSIZE)
}

/// `tell_host`: the frame numbers in one buffer on inflateq or deflateq, kicked; the
/// device must use it at once (Linux waits for it).
fn tell_host(r: &mut Rig, q: usize, pfns: &[u32]) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    let addr = BUF + 0x1000 * q as u64;
    r.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    let head = post(r, q, addr, bytes.len() as u32);
    wr(&mut r.t, 0x050, q as u32);
    assert_eq!(take_used(r, q), vec![(u32::from(head), 0)]);
    assert_ne!(rd(&mut r.t, 0x060) & interrupt::USED_BUFFER, 0);
    wr(&mut r.t, 0x064, interrupt::USED_BUFFER);
}

fn cfg(r: &mut Rig, off: u64) -> u32 {
    rd(&mut r.t, 0x100 + off)
}

/// A statistics buffer as Linux's `update_balloon_stats` fills it.
fn post_stats(r: &mut Rig, entries: &[(u16, u64)]) {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|&(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    r.mem
        .write_slice(&bytes, GuestAddress(BUF + 0x4000))
        .unwrap();
    post(r, STATSQ, BUF + 0x4000, bytes.len() as u32);
    wr(&mut r.t, 0x050, STATSQ as u32);
}

#[test]
fn features_queues_and_config_space() {
    let mut r = rig_with(Balloon::new(false));
    let offered = bring_up(&mut r, u64::MAX);
    assert_eq!(offered, feature::STATS_VQ | features::VIRTIO_F_VERSION_1);
    wr(&mut r.t, 0x030, 3);
    assert_eq!(rd(&mut r.t, 0x034), 0, "three queues only");
    assert_eq!(cfg(&mut r, 0), 0);
    assert_eq!(cfg(&mut r, 4), 0);
    assert_eq!(cfg(&mut r, 8), 0, "nothing beyond num_pages and actual");
    let mut r = rig_with(Balloon::new(true));
    let offered = bring_up(&mut r, u64::MAX);
    assert_ne!(offered & feature::DEFLATE_ON_OOM, 0);
    assert_eq!(offered & feature::MUST_TELL_HOST, 0);
}

#[test]
fn a_target_raises_a_config_change_and_the_driver_reports_actual() {
    let mut r = rig_with(Balloon::new(false));
    // Before the driver is up the target is just there to read.
    r.t.set_target_pages(100);
    assert_eq!(cfg(&mut r, 0), 100);
    assert!(!r.line.level());
    bring_up(&mut r, u64::MAX);
    let generation = rd(&mut r.t, 0x0fc);
    r.t.set_target_pages(256);
    assert_eq!(rd(&mut r.t, 0x060), interrupt::CONFIG_CHANGE);
    assert!(r.line.level());
    assert_ne!(rd(&mut r.t, 0x0fc), generation);
    assert_eq!(cfg(&mut r, 0), 256);
    assert_eq!(r.t.device().target_pages(), 256);
    wr(&mut r.t, 0x064, interrupt::CONFIG_CHANGE);
    assert!(!r.line.level());
    // The driver writes `actual`; num_pages is the host's and stays.
    wr(&mut r.t, 0x104, 200);
    r.t.write(0x100, &7u32.to_le_bytes());
    assert_eq!(r.t.device().actual_pages(), 200);
    assert_eq!(cfg(&mut r, 4), 200);
    assert_eq!(cfg(&mut r, 0), 256);
    // Byte-wide writes to actual work too.
    r.t.write(0x105, &[1]);
    assert_eq!(r.t.device().actual_pages(), 200 + 256);
}

#[test]
fn inflate_records_and_deflate_returns_pages() {
    let mut r = live();
    let pfns: Vec<u32> = (0..8).map(|i| (FIRST_PFN + i) as u32).collect();
    tell_host(&mut r, INFLATEQ, &pfns);
    assert_eq!(r.t.device().inflated_pages(), 8);
    assert!(r.t.device().is_inflated(FIRST_PFN + 3));
    // Again, plus frames outside RAM: nothing new.
    let beyond = (MEM_SIZE as u64 / PAGE_SIZE) as u32;
    tell_host(&mut r, INFLATEQ, &[pfns[0], beyond, u32::MAX]);
    assert_eq!(r.t.device().inflated_pages(), 8);
    tell_host(&mut r, DEFLATEQ, &pfns[..3]);
    assert_eq!(r.t.device().inflated_pages(), 5);
    assert!(!r.t.device().is_inflated(FIRST_PFN));
    // Deflating what was never inflated is harmless.
    tell_host(&mut r, DEFLATEQ, &[1, 2, beyond]);
    assert_eq!(r.t.device().inflated_pages(), 5);
    assert!(!needs_reset(&mut r.t));
    // A reset gives the guest everything back.
    wr(&mut r.t, 0x070, 0);
    assert_eq!(r.t.device().inflated_pages(), 0);
    assert_eq!(r.t.device().actual_pages(), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn inflated_pages_are_released_on_the_host() {
    let mut r = live();
    let page = super::backend::host_page_size();
    assert_eq!(page, 4096, "x86-64 Linux hosts have 4 KiB pages");
    let at = |pfn: u64| GuestAddress(pfn * PAGE_SIZE);
    for pfn in FIRST_PFN..FIRST_PFN + 4 {
        r.mem.write_slice(&[0xa5; 4096], at(pfn)).unwrap();
    }
    // Two separate runs of frames, given out of order.
    let pfns = [FIRST_PFN + 3, FIRST_PFN, FIRST_PFN + 2].map(|p| p as u32);
    tell_host(&mut r, INFLATEQ, &pfns);
    assert_eq!(r.t.device().released_bytes(), 3 * 4096);
    // MADV_DONTNEED on private anonymous memory: the pages come back zero-filled, and
    // the page the guest kept keeps its data.
    let read = |r: &Rig, pfn: u64| {
        let mut b = [0u8; 4096];
        r.mem.read_slice(&mut b, at(pfn)).unwrap();
        b
    };
    for pfn in [FIRST_PFN, FIRST_PFN + 2, FIRST_PFN + 3] {
        assert_eq!(read(&r, pfn), [0; 4096], "pfn {pfn:#x}");
    }
    assert_eq!(read(&r, FIRST_PFN + 1), [0xa5; 4096]);
    // The mapping stays: the guest can use the pages again after deflating.
    tell_host(&mut r, DEFLATEQ, &pfns);
    r.mem.write_slice(&[1; 4096], at(FIRST_PFN)).unwrap();
    assert_eq!(read(&r, FIRST_PFN), [1; 4096]);

    // A balloon that only records keeps the data.
    let mut r = rig_with(Balloon::new(false).without_release());
    bring_up(&mut r, u64::MAX);
    r.mem.write_slice(&[0xa5; 4096], at(FIRST_PFN)).unwrap();
    tell_host(&mut r, INFLATEQ, &[FIRST_PFN as u32]);
    assert_eq!(r.t.device().inflated_pages(), 1);
    assert_eq!(r.t.device().released_bytes(), 0);
    assert_eq!(read(&r, FIRST_PFN), [0xa5; 4096]);
}

#[test]
fn statistics_arrive_and_the_host_can_ask_for_more() {
    let mut r = live();
    assert!(r.t.device().stats().is_none());
    assert!(!r.t.request_stats(), "no buffer to hand back yet");
    // Linux primes statsq with the current values at probe.
    post_stats(
        &mut r,
        &[
            (stat_tag::SWAP_IN, 0),
            (stat_tag::FREE_MEMORY, 300 << 20),
            (stat_tag::TOTAL_MEMORY, 500 << 20),
        ],
    );
    // The device keeps the buffer: nothing used, no interrupt.
    assert!(take_used(&mut r, STATSQ).is_empty());
    assert_eq!(rd(&mut r.t, 0x060), 0);
    let s = r.t.device().stats().unwrap().clone();
    assert_eq!(s.updates, 1);
    assert_eq!(s.get(stat_tag::TOTAL_MEMORY), Some(500 << 20));
    assert_eq!(s.get(stat_tag::FREE_MEMORY), Some(300 << 20));
    assert_eq!(s.get(stat_tag::AVAILABLE_MEMORY), None);
    assert!(r.t.device().stats_request_possible());

    // The host asks: the buffer comes back with an interrupt.
    assert!(r.t.request_stats());
    assert_eq!(take_used(&mut r, STATSQ), vec![(0, 0)]);
    assert_eq!(rd(&mut r.t, 0x060), interrupt::USED_BUFFER);
    wr(&mut r.t, 0x064, interrupt::USED_BUFFER);
    // Until the driver answers, there is nothing to ask with.
    assert!(!r.t.request_stats());
    post_stats(&mut r, &[(stat_tag::FREE_MEMORY, 200 << 20)]);
    let s = r.t.device().stats().unwrap();
    assert_eq!(s.updates, 2);
    assert_eq!(s.get(stat_tag::FREE_MEMORY), Some(200 << 20));
    assert_eq!(
        s.get(stat_tag::TOTAL_MEMORY),
        None,
        "the latest buffer only"
    );
}

/// Linux's `init_vqs` posts the first statistics buffer and kicks before DRIVER_OK; the
/// kick is ignored, and the first host request picks the buffer up from the ring.
#[test]
fn the_statistics_primed_before_driver_ok_arrive_with_the_first_request() {
    let mut r = rig_with(Balloon::new(false));
    let offered = bring_up_until_queues(&mut r);
    assert_ne!(offered & feature::STATS_VQ, 0);
    post_stats(&mut r, &[(stat_tag::TOTAL_MEMORY, 500 << 20)]);
    let st = rd(&mut r.t, 0x070);
    wr(&mut r.t, 0x070, st | status::DRIVER_OK);
    assert!(r.t.device().stats().is_none(), "the early kick was ignored");
    assert!(r.t.request_stats());
    let s = r.t.device().stats().unwrap();
    assert_eq!(
        (s.updates, s.get(stat_tag::TOTAL_MEMORY)),
        (1, Some(500 << 20))
    );
    assert_eq!(take_used(&mut r, STATSQ), vec![(0, 0)]);
    assert_eq!(rd(&mut r.t, 0x060), interrupt::USED_BUFFER);
}

#[test]
fn without_stats_vq_there_is_nothing_to_request() {
    let mut r = rig_with(Balloon::new(false));
    bring_up(&mut r, !feature::STATS_VQ);
    assert!(!r.t.request_stats());
    tell_host(&mut r, INFLATEQ, &[FIRST_PFN as u32]);
    assert_eq!(r.t.device().inflated_pages(), 1);
}

#[test]
fn a_second_stats_buffer_returns_the_first() {
    let mut r = live();
    post_stats(&mut r, &[(stat_tag::SWAP_IN, 1)]);
    post_stats(&mut r, &[(stat_tag::SWAP_IN, 2)]);
    assert_eq!(take_used(&mut r, STATSQ), vec![(0, 0)]);
    assert_eq!(
        r.t.device().stats().unwrap().get(stat_tag::SWAP_IN),
        Some(2)
    );
    assert!(r.t.request_stats());
    assert_eq!(take_used(&mut r, STATSQ), vec![(1, 0)]);
}

#[test]
fn buffers_outside_memory_need_reset() {
    let mut r = live();
    post(&mut r, INFLATEQ, MEM_SIZE as u64 - 8, 64);
    wr(&mut r.t, 0x050, INFLATEQ as u32);
    assert!(needs_reset(&mut r.t));
    assert_eq!(rd(&mut r.t, 0x060), interrupt::CONFIG_CHANGE);
    // Once broken, the host's controls do nothing to the queues.
    assert!(!r.t.request_stats());

    let mut r = live();
    post(&mut r, STATSQ, 0xffff_ffff_f000, 20);
    wr(&mut r.t, 0x050, STATSQ as u32);
    assert!(needs_reset(&mut r.t));
}

#[test]
fn odd_sized_and_huge_pfn_buffers_are_bounded() {
    let mut r = live();
    // 6 bytes: one whole frame number, the rest ignored.
    r.mem
        .write_slice(&[0x00, 0x01, 0, 0, 0xff, 0xff], GuestAddress(BUF))
        .unwrap();
    post(&mut r, INFLATEQ, BUF, 6);
    wr(&mut r.t, 0x050, INFLATEQ as u32);
    assert_eq!(r.t.device().inflated_pages(), 1);
    assert!(r.t.device().is_inflated(0x100));
    // A 3 MiB array: only the first MAX_PFNS_PER_CHAIN entries count.
    let mut r = live();
    let pfns: Vec<u8> = (0..(MEM_SIZE as u32 / 4096))
        .flat_map(|p| p.to_le_bytes())
        .collect();
    r.mem.write_slice(&pfns, GuestAddress(0x10_0000)).unwrap();
    post(&mut r, INFLATEQ, 0x10_0000, 3 << 20);
    wr(&mut r.t, 0x050, INFLATEQ as u32);
    assert!(!needs_reset(&mut r.t));
    assert_eq!(
        r.t.device().inflated_pages(),
        super::MAX_PFNS_PER_CHAIN.min(MEM_SIZE / 4096)
    );
}
