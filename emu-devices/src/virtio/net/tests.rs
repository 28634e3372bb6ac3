//! virtio-net driven through the virtio-mmio transport the way Linux's virtio_mmio and
//! virtio_net drivers drive it, over a backend the test controls, plus guest garbage that
//! must never panic, hang or stop the device.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emu_mmu::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use super::{
    connect_rx, feature, header as h, GuestOffloads, Net, NetBackend, RxFrame, RxNotifier,
    DEFAULT_MAC, HEADER_LEN, MTU, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::irq::RecordingLine;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    self, driver_ok, guest_bytes, needs_reset, rd, setup_queue, transport, wr, Rings, F_NEXT,
    F_WRITE,
};
use crate::virtio::{device_id, features, interrupt, GuestMemory};

const MEM_SIZE: usize = 0x80000;
/// Per-queue rings: queue `q` at `RINGS + q * 0x3000`.
const RINGS: u64 = 0x1000;
/// Buffers.
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;

/// What the test backend saw and what it will hand the device.
#[derive(Default)]
struct Wire {
    /// The backend takes whole TCP segments (the device offers HOST_TSO4).
    takes_segments: bool,
    sent: Vec<Vec<u8>>,
    to_guest: VecDeque<RxFrame>,
    offloads: Vec<GuestOffloads>,
}

struct TestBackend(Arc<Mutex<Wire>>);

impl NetBackend for TestBackend {
    fn send(&mut self, frame: &[u8]) {
        self.0.lock().unwrap().sent.push(frame.to_vec());
    }
    fn recv(&mut self) -> Option<RxFrame> {
        self.0.lock().unwrap().to_guest.pop_front()
    }
    fn set_guest_offloads(&mut self, offloads: GuestOffloads) {
        self.0.lock().unwrap().offloads.push(offloads);
    }
    fn takes_tcp_segments(&self) -> bool {
        self.0.lock().unwrap().takes_segments
    }
}

struct Rig {
    t: MmioTransport<Net>,
    mem: GuestMemory,
    line: Arc<RecordingLine>,
    wire: Arc<Mutex<Wire>>,
    /// Next available index the driver publishes, per queue.
    avail: [u16; 2],
    /// Next descriptor slot to use, per queue.
    next_desc: [u16; 2],
}

fn new_net() -> (Net, Arc<Mutex<Wire>>) {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let net = Net::new(
        DEFAULT_MAC,
        Box::new(TestBackend(wire.clone())),
        RxNotifier::new(),
    );
    (net, wire)
}

fn rig() -> Rig {
    let (net, wire) = new_net();
    let (t, mem, line) = transport(net, MEM_SIZE);
    Rig {
        t,
        mem,
        line,
        wire,
        avail: [0; 2],
        next_desc: [0; 2],
    }
}

/// Queue `q`'s rings: descriptor table at `RINGS + q * 0x3000`, available ring 0x1000
/// and used ring 0x2000 above.
fn rings(q: usize) -> Rings {
    let desc = RINGS + q as u64 * 0x3000;
    Rings {
        desc,
        avail: desc + 0x1000,
        used: desc + 0x2000,
    }
}

/// `virtnet_probe` up to DRIVER_OK, accepting `offered & accept`; returns what was offered.
fn bring_up(t: &mut MmioTransport<Net>, accept: u64) -> u64 {
    let (offered, features_ok) = testing::negotiate(t, device_id::NET, accept);
    assert!(features_ok);
    for q in [RX_QUEUE, TX_QUEUE] {
        setup_queue(t, q as u32, QUEUE_SIZE, u32::from(QSIZE), rings(q));
    }
    driver_ok(t);
    assert!(!needs_reset(t));
    offered
}

fn live(accept: u64) -> Rig {
    let mut r = rig();
    bring_up(&mut r.t, accept);
    r
}

/// Everything Linux's virtio_net accepts by default.
const ALL: u64 = u64::MAX;

/// Writes `descs` (address, length, flags without NEXT) as one chain in queue `q`'s table
/// and publishes it (without notifying); returns the head index.
fn post(
    mem: &GuestMemory,
    r_avail: &mut u16,
    r_next: &mut u16,
    q: usize,
    descs: &[(u64, u32, u16)],
) -> u16 {
    let head = *r_next;
    for (k, &(addr, len, flags)) in descs.iter().enumerate() {
        let i = (head + k as u16) % QSIZE;
        let more = k + 1 < descs.len();
        let flags = if more { flags | F_NEXT } else { flags };
        rings(q).put_desc(mem, i, addr, len, flags, (i + 1) % QSIZE);
    }
    *r_next = (head + descs.len() as u16) % QSIZE;
    let slot = *r_avail % QSIZE;
    *r_avail = r_avail.wrapping_add(1);
    rings(q).publish(mem, slot, head, *r_avail);
    head
}

impl Rig {
    fn post(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        post(
            &self.mem,
            &mut self.avail[q],
            &mut self.next_desc[q],
            q,
            descs,
        )
    }

    fn notify(&mut self, q: usize) {
        wr(&mut self.t, 0x050, q as u32);
    }

    fn needs_reset(&mut self) -> bool {
        needs_reset(&mut self.t)
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        guest_bytes(&self.mem, addr, len)
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    /// Transmits `frame` behind a header with `flags`/`gso_type`/csum fields as one
    /// two-descriptor chain (header, frame), as virtio_net does without ANY_LAYOUT tricks.
    /// Returns the used element.
    fn transmit(&mut self, hdr: [u8; HEADER_LEN], frame: &[u8]) -> (u32, u32) {
        self.write(BUF, &hdr);
        self.write(BUF + 0x100, frame);
        let before = rings(TX_QUEUE).used_idx(&self.mem);
        self.post(
            TX_QUEUE,
            &[
                (BUF, HEADER_LEN as u32, 0),
                (BUF + 0x100, frame.len() as u32, 0),
            ],
        );
        self.notify(TX_QUEUE);
        assert_eq!(rings(TX_QUEUE).used_idx(&self.mem), before.wrapping_add(1));
        rings(TX_QUEUE).used_elem(&self.mem, before % QSIZE)
    }

    fn queue_frame(&self, frame: RxFrame) {
        self.wire.lock().unwrap().to_guest.push_back(frame);
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.wire.lock().unwrap().sent)
    }
}

fn plain_header() -> [u8; HEADER_LEN] {
    [0; HEADER_LEN]
}

/// An Ethernet + IPv4 + UDP frame from 10.0.2.15:1234 to 10.0.2.2:7 with `payload`, its
/// UDP checksum field holding the pseudo-header sum (as a driver using VIRTIO_NET_F_CSUM
/// leaves it), and the correct full checksum for comparison.
fn udp_frame(payload: &[u8]) -> (Vec<u8>, u16) {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&[10, 0, 2, 15, 10, 0, 2, 2]);
    let c = !sum16(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = vec![
        0x04,
        0xd2,
        0x00,
        0x07,
        (udp_len >> 8) as u8,
        udp_len as u8,
        0,
        0,
    ];
    udp.extend_from_slice(payload);
    let pseudo = {
        let mut p = vec![10, 0, 2, 15, 10, 0, 2, 2, 0, 17];
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        sum16(&p, 0)
    };
    let full = !sum16(&udp, u32::from(pseudo));
    udp[6..8].copy_from_slice(&pseudo.to_be_bytes());
    f.extend_from_slice(&udp);
    (f, full)
}

/// Ones'-complement 16-bit sum of `data` plus `initial`, folded.
fn sum16(data: &[u8], initial: u32) -> u16 {
    let mut s = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        s += u32::from(w);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn features_and_config_space() {
    let mut r = rig();
    let offered = bring_up(&mut r.t, ALL);
    for f in [
        feature::CSUM,
        feature::GUEST_CSUM,
        feature::MTU,
        feature::MAC,
        feature::GUEST_TSO4,
        feature::STATUS,
        features::VIRTIO_F_VERSION_1,
        features::VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(offered & f, 0, "{f:#x}");
    }
    assert_eq!(offered & feature::MRG_RXBUF, 0);
    let mut mac = [0u8; 6];
    r.t.read(0x100, &mut mac);
    assert_eq!(mac, DEFAULT_MAC);
    let mut b = [0u8; 2];
    r.t.read(0x106, &mut b);
    assert_eq!(u16::from_le_bytes(b), 1, "link up");
    r.t.read(0x108, &mut b);
    assert_eq!(u16::from_le_bytes(b), 1, "one queue pair");
    r.t.read(0x10a, &mut b);
    assert_eq!(u16::from_le_bytes(b), MTU);
    assert_eq!(rd(&mut r.t, 0x10c), 0, "beyond the config space");
    // The MAC is read-only in a modern device.
    r.t.write(0x100, &[0xff; 6]);
    r.t.read(0x100, &mut mac);
    assert_eq!(mac, DEFAULT_MAC);
    assert_eq!(
        r.wire.lock().unwrap().offloads.last(),
        Some(&GuestOffloads { tso4: true })
    );
    // Without GUEST_CSUM, TSO is not usable and the backend is told so.
    let r = live(ALL & !feature::GUEST_CSUM);
    assert_eq!(
        r.wire.lock().unwrap().offloads.last(),
        Some(&GuestOffloads { tso4: false })
    );
}

#[test]
fn transmitted_frames_reach_the_backend_without_the_header() {
    let mut r = live(ALL);
    let (frame, _) = udp_frame(b"hello");
    let (id, len) = r.transmit(plain_header(), &frame);
    assert_eq!((id, len), (0, 0));
    assert_eq!(r.sent(), vec![frame.clone()]);
    assert_ne!(rd(&mut r.t, 0x060) & interrupt::USED_BUFFER, 0);
    assert!(r.line.level());
    wr(&mut r.t, 0x064, interrupt::USED_BUFFER);
    // Header and frame in one descriptor, and a frame split mid-way over three.
    let mut one = plain_header().to_vec();
    one.extend_from_slice(&frame);
    r.write(BUF + 0x1000, &one);
    r.post(TX_QUEUE, &[(BUF + 0x1000, one.len() as u32, 0)]);
    r.write(BUF + 0x2000, &frame[..5]);
    r.write(BUF + 0x3000, &frame[5..20]);
    r.write(BUF + 0x4000, &frame[20..]);
    r.post(
        TX_QUEUE,
        &[
            (BUF, HEADER_LEN as u32, 0),
            (BUF + 0x2000, 5, 0),
            (BUF + 0x3000, 15, 0),
            (BUF + 0x4000, frame.len() as u32 - 20, 0),
        ],
    );
    r.notify(TX_QUEUE);
    assert_eq!(r.sent(), vec![frame.clone(), frame]);
    assert_eq!(r.t.device().stats().tx_frames, 3);
    assert!(!r.needs_reset());
}

#[test]
fn partial_checksums_are_completed_before_the_backend_sees_them() {
    let mut r = live(ALL);
    for payload in [&b"odd"[..], b"even", b""] {
        let (frame, full) = udp_frame(payload);
        let mut hdr = plain_header();
        hdr[0] = h::F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
        hdr[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum
        r.transmit(hdr, &frame);
        let sent = r.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0][40..42], full.to_be_bytes(), "{payload:?}");
        assert_eq!(sent[0][..40], frame[..40]);
        assert_eq!(sent[0][42..], frame[42..]);
    }
    // A checksum field outside the frame drops the frame, nothing else.
    let (frame, _) = udp_frame(b"x");
    let mut hdr = plain_header();
    hdr[0] = h::F_NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&40u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&0xfff0u16.to_le_bytes());
    assert_eq!(r.transmit(hdr, &frame).1, 0);
    assert!(r.sent().is_empty());
    assert_eq!(r.t.device().stats().tx_dropped, 1);
    // Without VIRTIO_NET_F_CSUM negotiated the driver may not ask.
    let mut r = live(ALL & !feature::CSUM);
    let mut hdr = plain_header();
    hdr[0] = h::F_NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    r.transmit(hdr, &frame);
    assert!(r.sent().is_empty());
    assert!(!r.needs_reset());
}

#[test]
fn received_frames_fill_posted_buffers_with_a_header() {
    let mut r = live(ALL);
    let (frame, _) = udp_frame(b"to the guest");
    r.queue_frame(RxFrame::new(frame.clone()));
    // Nothing happens before the driver posts a buffer.
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 0);
    // Linux's small-buffer mode: one writable descriptor of header + 1518 bytes.
    r.post(RX_QUEUE, &[(BUF, 12 + 1518, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 1);
    assert_eq!(
        rings(RX_QUEUE).used_elem(&r.mem, 0),
        (0, (12 + frame.len()) as u32)
    );
    let hdr = r.bytes(BUF, HEADER_LEN);
    assert_eq!(hdr[0], h::F_DATA_VALID);
    assert_eq!(hdr[1], h::GSO_NONE);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
    assert_eq!(r.bytes(BUF + 12, frame.len()), frame);
    assert!(r.line.level());
    // A chain of pages (big-packet mode), the header in its own descriptor.
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    r.queue_frame(RxFrame::new(big.clone()));
    r.post(
        RX_QUEUE,
        &[
            (BUF + 0x1000, 12, F_WRITE),
            (BUF + 0x2000, 4096, F_WRITE),
            (BUF + 0x3000, 4096, F_WRITE),
        ],
    );
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_elem(&r.mem, 1).1, 12 + 5000);
    let mut got = r.bytes(BUF + 0x2000, 4096);
    got.extend(r.bytes(BUF + 0x3000, 5000 - 4096));
    assert_eq!(got, big);
    // Without GUEST_CSUM the frame is not marked validated.
    let mut r = live(ALL & !feature::GUEST_CSUM);
    r.queue_frame(RxFrame::new(frame));
    r.post(RX_QUEUE, &[(BUF, 2048, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(r.bytes(BUF, 1)[0], 0);
}

#[test]
fn a_frame_waits_for_a_buffer_and_frames_keep_their_order() {
    let mut r = live(ALL);
    for n in 0..3u8 {
        r.queue_frame(RxFrame::new(vec![n; 60]));
    }
    r.post(RX_QUEUE, &[(BUF, 2048, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 1);
    assert_eq!(r.bytes(BUF + 12, 60), vec![0; 60]);
    r.post(RX_QUEUE, &[(BUF + 0x1000, 2048, F_WRITE)]);
    r.post(RX_QUEUE, &[(BUF + 0x2000, 2048, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 3);
    assert_eq!(r.bytes(BUF + 0x1000 + 12, 60), vec![1; 60]);
    assert_eq!(r.bytes(BUF + 0x2000 + 12, 60), vec![2; 60]);
    assert_eq!(r.t.device().stats().rx_frames, 3);
}

#[test]
fn a_backend_thread_delivers_to_an_idle_guest_and_raises_the_interrupt() {
    let (net, wire) = new_net();
    let notifier = net.notifier().clone();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let line = Arc::new(RecordingLine::default());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        net,
        mem.clone(),
        line.clone(),
    )));
    connect_rx(&t);
    bring_up(&mut t.lock().unwrap(), ALL);
    let (mut avail, mut next) = (0u16, 0u16);
    post(
        &mem,
        &mut avail,
        &mut next,
        RX_QUEUE,
        &[(BUF, 2048, F_WRITE)],
    );
    // The "guest" is idle: nothing kicks the queue but the backend's thread.
    let backend = std::thread::spawn(move || {
        wire.lock()
            .unwrap()
            .to_guest
            .push_back(RxFrame::new(vec![0xab; 64]));
        notifier.notify();
    });
    backend.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rings(RX_QUEUE).used_idx(&mem) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rings(RX_QUEUE).used_idx(&mem), 1);
    assert!(line.level());
    assert_eq!(line.edges(), 1);
    let mut b = vec![0u8; 64];
    mem.read_slice(&mut b, GuestAddress(BUF + 12)).unwrap();
    assert_eq!(b, vec![0xab; 64]);
    // Once the machine drops the transport a notification does nothing.
    let notifier = t.lock().unwrap().device().notifier().clone();
    drop(t);
    notifier.notify();
}

/// A TCP/IPv4 frame of `payload_len` payload bytes (checksum field 0xffff).
fn tcp_frame(payload_len: usize) -> Vec<u8> {
    let total = 20 + 20 + payload_len;
    let mut f = vec![0u8; 14 + total];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 2, 15]);
    ip[32] = 5 << 4;
    ip[36..38].copy_from_slice(&[0xff, 0xff]);
    f
}

#[test]
fn large_tcp_segments_are_delivered_as_tso_when_the_guest_accepts_them() {
    let mut r = live(ALL);
    let frame = tcp_frame(20_000);
    r.queue_frame(RxFrame {
        data: frame.clone(),
        gso_size: Some(1460),
    });
    r.post(RX_QUEUE, &[(BUF, 12 + 0x8000, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(
        rings(RX_QUEUE).used_elem(&r.mem, 0).1,
        (12 + frame.len()) as u32
    );
    let hdr = r.bytes(BUF, HEADER_LEN);
    assert_eq!(hdr[0], h::F_NEEDS_CSUM);
    assert_eq!(hdr[1], h::GSO_TCPV4);
    let le = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]);
    assert_eq!((le(2), le(4), le(6), le(8)), (54, 1460, 34, 16));
    // The checksum field now holds the pseudo-header sum.
    let pseudo = {
        let mut p = vec![10, 0, 2, 2, 10, 0, 2, 15, 0, 6];
        p.extend_from_slice(&(20u16 + 20_000).to_be_bytes());
        sum16(&p, 0)
    };
    assert_eq!(r.bytes(BUF + 12 + 50, 2), pseudo.to_be_bytes());
    assert_eq!(r.bytes(BUF + 12 + 54, 100), vec![0; 100]);

    // A driver that did not accept TSO never sees one; garbage marked as GSO is dropped.
    let mut r = live(ALL & !feature::GUEST_TSO4);
    r.queue_frame(RxFrame {
        data: tcp_frame(3000),
        gso_size: Some(1460),
    });
    r.queue_frame(RxFrame::new(vec![7; 60]));
    r.post(RX_QUEUE, &[(BUF, 0x2000, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 1);
    assert_eq!(r.bytes(BUF + 12, 60), vec![7; 60]);
    assert_eq!(r.t.device().stats().rx_dropped, 1);
    let mut r = live(ALL);
    r.queue_frame(RxFrame {
        data: vec![0; 30],
        gso_size: Some(1460),
    });
    r.post(RX_QUEUE, &[(BUF, 0x2000, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 0);
    assert_eq!(r.t.device().stats().rx_dropped, 1);
}

#[test]
fn guest_garbage_in_the_transmit_queue_drops_frames_without_stopping_the_device() {
    let mut r = live(ALL);
    let (frame, _) = udp_frame(b"ok");
    let mut cases = 0u64;
    // A device-writable descriptor.
    r.write(BUF, &plain_header());
    r.post(TX_QUEUE, &[(BUF, 12, 0), (BUF + 0x100, 64, F_WRITE)]);
    cases += 1;
    // A buffer outside guest RAM, and one that wraps the address space.
    r.post(TX_QUEUE, &[(BUF, 12, 0), (0x1_0000_0000, 64, 0)]);
    r.post(TX_QUEUE, &[(u64::MAX - 4, 12, 0)]);
    cases += 2;
    // Shorter than a header.
    r.post(TX_QUEUE, &[(BUF, 5, 0)]);
    cases += 1;
    // Longer than any frame (the length alone counts; nothing is read).
    r.post(
        TX_QUEUE,
        &[(BUF, 12, 0), (BUF, 0xffff_0000, 0), (BUF, 0xffff_0000, 0)],
    );
    cases += 1;
    // A segmentation request (this backend takes no segments: HOST_TSO4 is not offered).
    let mut gso = plain_header();
    gso[1] = h::GSO_TCPV4;
    r.write(BUF + 0x3000, &gso);
    r.post(TX_QUEUE, &[(BUF + 0x3000, 12, 0), (BUF + 0x100, 60, 0)]);
    cases += 1;
    r.notify(TX_QUEUE);
    assert_eq!(rings(TX_QUEUE).used_idx(&r.mem), cases as u16);
    assert!(r.sent().is_empty());
    assert_eq!(r.t.device().stats().tx_dropped, cases);
    // A descriptor loop: virtio-queue ends it, the device drops the frame.
    let head = r.next_desc[TX_QUEUE];
    r.post(TX_QUEUE, &[(BUF, 12, 0)]);
    rings(TX_QUEUE).put_desc(&r.mem, head, BUF, 12, F_NEXT, head);
    r.notify(TX_QUEUE);
    assert_eq!(rings(TX_QUEUE).used_idx(&r.mem), cases as u16 + 1);
    // The device still works.
    assert!(!r.needs_reset());
    r.transmit(plain_header(), &frame);
    assert_eq!(r.sent(), vec![frame]);
}

#[test]
fn guest_garbage_in_the_receive_queue_never_loses_the_device() {
    let mut r = live(ALL);
    for n in 0..2u8 {
        r.queue_frame(RxFrame::new(vec![n; 100]));
    }
    // A device-readable buffer: handed back empty, the frame goes to the next chain.
    r.post(RX_QUEUE, &[(BUF, 2048, 0)]);
    // Too small for header + frame: handed back empty, that frame is dropped.
    r.post(RX_QUEUE, &[(BUF + 0x1000, 50, F_WRITE)]);
    // Outside RAM.
    r.queue_frame(RxFrame::new(vec![9; 100]));
    r.post(RX_QUEUE, &[(0x1_0000_0000, 2048, F_WRITE)]);
    r.post(RX_QUEUE, &[(BUF + 0x2000, 2048, F_WRITE)]);
    r.notify(RX_QUEUE);
    assert_eq!(rings(RX_QUEUE).used_idx(&r.mem), 4);
    let lens: Vec<u32> = (0..4)
        .map(|n| rings(RX_QUEUE).used_elem(&r.mem, n).1)
        .collect();
    assert_eq!(lens, vec![0, 0, 0, 112]);
    assert_eq!(r.bytes(BUF + 0x2000 + 12, 100), vec![9; 100]);
    assert_eq!(r.t.device().stats().rx_dropped, 2);
    assert!(!r.needs_reset());

    // An available index far ahead of the ring is a broken ring: DEVICE_NEEDS_RESET,
    // reported with a configuration-change interrupt, and later kicks do nothing.
    r.queue_frame(RxFrame::new(vec![1; 60]));
    r.mem
        .write_obj(
            r.avail[RX_QUEUE].wrapping_add(100),
            GuestAddress(rings(RX_QUEUE).avail + 2),
        )
        .unwrap();
    r.notify(RX_QUEUE);
    assert!(r.needs_reset());
    assert_ne!(rd(&mut r.t, 0x060) & interrupt::CONFIG_CHANGE, 0);
    r.notify(TX_QUEUE);
    // A reset and a fresh bring-up make it usable again.
    bring_up(&mut r.t, ALL);
    assert!(!r.needs_reset());
}

#[test]
fn nothing_moves_before_driver_ok_or_after_reset() {
    let mut r = rig();
    r.queue_frame(RxFrame::new(vec![1; 60]));
    r.notify(RX_QUEUE);
    r.notify(TX_QUEUE);
    assert!(r.sent().is_empty());
    assert_eq!(r.wire.lock().unwrap().to_guest.len(), 1);
    bring_up(&mut r.t, ALL);
    // A frame held for lack of buffers is forgotten by a reset.
    r.notify(RX_QUEUE);
    wr(&mut r.t, 0x070, 0);
    assert_eq!(
        r.wire.lock().unwrap().offloads.last(),
        Some(&GuestOffloads::default())
    );
    assert_eq!(r.t.device().driver_features(), 0);
}

#[test]
fn whole_tcp_segments_reach_a_backend_that_takes_them_with_their_checksum_completed() {
    let mut r = rig();
    r.wire.lock().unwrap().takes_segments = true;
    let offered = bring_up(&mut r.t, ALL);
    assert_ne!(offered & feature::HOST_TSO4, 0);
    // A 20000-byte segment as Linux hands it over: pseudo-header sum in the checksum field.
    let mut frame = tcp_frame(20_000);
    for (i, b) in frame[54..].iter_mut().enumerate() {
        *b = (i * 13) as u8;
    }
    let tcp_len = 20 + 20_000u16;
    let pseudo = {
        let mut p = vec![10, 0, 2, 2, 10, 0, 2, 15, 0, 6];
        p.extend_from_slice(&tcp_len.to_be_bytes());
        sum16(&p, 0)
    };
    frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
    let full = {
        let mut seg = frame[34..].to_vec();
        seg[16..18].copy_from_slice(&[0, 0]);
        let mut p = vec![10, 0, 2, 2, 10, 0, 2, 15, 0, 6];
        p.extend_from_slice(&tcp_len.to_be_bytes());
        !sum16(&seg, u32::from(sum16(&p, 0)))
    };
    let mut hdr = plain_header();
    hdr[0] = h::F_NEEDS_CSUM;
    hdr[1] = h::GSO_TCPV4;
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    r.write(BUF, &hdr);
    r.write(BUF + 0x1000, &frame);
    r.post(
        TX_QUEUE,
        &[
            (BUF, HEADER_LEN as u32, 0),
            (BUF + 0x1000, frame.len() as u32, 0),
        ],
    );
    r.notify(TX_QUEUE);
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), frame.len());
    assert_eq!(sent[0][50..52], full.to_be_bytes());
    assert_eq!(sent[0][52..], frame[52..]);
    // Without a partial checksum, or with ECN, the segment is dropped.
    let mut no_csum = hdr;
    no_csum[0] = 0;
    let mut ecn = hdr;
    ecn[1] = h::GSO_TCPV4 | 0x80;
    for bad in [no_csum, ecn] {
        r.transmit(bad, &frame);
    }
    assert!(r.sent().is_empty());
    assert_eq!(r.t.device().stats().tx_dropped, 2);
    // A driver that did not accept HOST_TSO4 may not send segments.
    let mut r = rig();
    r.wire.lock().unwrap().takes_segments = true;
    bring_up(&mut r.t, ALL & !feature::HOST_TSO4);
    r.transmit(hdr, &frame);
    assert!(r.sent().is_empty());
    assert!(!r.needs_reset());
}
