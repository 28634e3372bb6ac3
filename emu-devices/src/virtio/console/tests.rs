//! virtio-console driven through the virtio-mmio transport the way Linux's virtio_mmio and
//! virtio_console drivers drive a single-port console, plus guest mistakes.

use std::sync::{Arc, Mutex};

use emu_mmu::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use super::{Console, MAX_INPUT_BACKLOG, MAX_TX_BYTES_PER_CHAIN, QUEUE_SIZE, RECEIVEQ, TRANSMITQ};
use crate::irq::RecordingLine;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    guest_bytes, needs_reset, rd, setup_queue, transport, wr, Rings, F_NEXT, F_WRITE,
};
use crate::virtio::{device_id, features, interrupt, status, GuestMemory};

const MEM_SIZE: usize = 0x30_0000;
/// Queue `q`'s descriptor table is at `RINGS + q * 0x1000`, its available ring 0x400 and
/// its used ring 0x800 above.
const RINGS: u64 = 0x1000;
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;

/// Everything written to the console's output.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Rig {
    t: MmioTransport<Console>,
    mem: GuestMemory,
    line: Arc<RecordingLine>,
    out: Output,
    avail: [u16; 2],
    used: [u16; 2],
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

fn rig() -> Rig {
    let out = Output::default();
    let (t, mem, line) = transport(Console::new(Box::new(out.clone())), MEM_SIZE);
    Rig {
        t,
        mem,
        line,
        out,
        avail: [0; 2],
        used: [0; 2],
    }
}

/// Linux's probe: negotiate (nothing but VERSION_1 is offered), set up both queues,
/// DRIVER_OK.
fn bring_up(r: &mut Rig) {
    let t = &mut r.t;
    assert_eq!(rd(t, 0x008), device_id::CONSOLE);
    wr(t, 0x070, 0);
    wr(t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x014, 0);
    assert_eq!(rd(t, 0x010), 0, "no console features offered");
    wr(t, 0x014, 1);
    assert_eq!(u64::from(rd(t, 0x010)) << 32, features::VIRTIO_F_VERSION_1);
    wr(t, 0x024, 1);
    wr(t, 0x020, 1);
    wr(t, 0x024, 0);
    wr(t, 0x020, 0);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(t, 0x070, st);
    assert_ne!(rd(t, 0x070) & status::FEATURES_OK, 0);
    for q in 0..2 {
        setup_queue(t, q as u32, QUEUE_SIZE, u32::from(QSIZE), rings(q));
    }
    // Without MULTIPORT there are no control queues.
    wr(t, 0x030, 2);
    assert_eq!(rd(t, 0x034), 0);
    wr(t, 0x070, st | status::DRIVER_OK);
    assert!(r.t.device().activated());
}

fn live() -> Rig {
    let mut r = rig();
    bring_up(&mut r);
    r
}

/// Writes a chain of `descs` (address, length, flags without NEXT) at descriptor `first`
/// of queue `q` and publishes it, without kicking.
fn post(r: &mut Rig, q: usize, first: u16, descs: &[(u64, u32, u16)]) {
    let rings = rings(q);
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let i = first + i as u16;
        let more = usize::from(i - first) + 1 < descs.len();
        let flags = if more { flags | F_NEXT } else { flags };
        rings.put_desc(&r.mem, i, addr, len, flags, i + 1);
    }
    let slot = r.avail[q] % QSIZE;
    r.avail[q] = r.avail[q].wrapping_add(1);
    rings.publish(&r.mem, slot, first, r.avail[q]);
}

fn kick(r: &mut Rig, q: usize) {
    wr(&mut r.t, 0x050, q as u32);
}

/// The used elements queue `q` gained since the last call.
fn take_used(r: &mut Rig, q: usize) -> Vec<(u32, u32)> {
    rings(q).take_used(&r.mem, &mut r.used[q], QSIZE)
}

fn ack(r: &mut Rig) -> u32 {
    let isr = rd(&mut r.t, 0x060);
    wr(&mut r.t, 0x064, isr);
    assert!(!r.line.level());
    isr
}

fn output(r: &Rig) -> Vec<u8> {
    r.out.0.lock().unwrap().clone()
}

#[test]
fn config_space_says_one_port() {
    let mut r = rig();
    let mut b = [0u8; 12];
    r.t.read(0x100, &mut b);
    assert_eq!(b, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    let mut w = [0xffu8; 4];
    r.t.read(0x104, &mut w[..2]);
    assert_eq!(w, [1, 0, 0xff, 0xff]);
    // Beyond the space, and writes, change nothing.
    r.t.write(0x100, &[9; 12]);
    r.t.read(0x10a, &mut w);
    assert_eq!(w, [0; 4]);
    r.t.read(0x104, &mut w);
    assert_eq!(u32::from_le_bytes(w), 1);
}

#[test]
fn guest_output_reaches_the_host_writer() {
    let mut r = live();
    r.mem.write_slice(b"hello ", GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(b"hvc0\n", GuestAddress(BUF + 0x100))
        .unwrap();
    // Two readable buffers in one chain, then a second chain; a writable descriptor in
    // a transmit chain is ignored.
    post(&mut r, TRANSMITQ, 0, &[(BUF, 6, 0), (BUF + 0x100, 5, 0)]);
    post(
        &mut r,
        TRANSMITQ,
        4,
        &[(BUF, 5, 0), (BUF + 0x200, 8, F_WRITE)],
    );
    kick(&mut r, TRANSMITQ);
    assert_eq!(output(&r), b"hello hvc0\nhello");
    assert_eq!(take_used(&mut r, TRANSMITQ), vec![(0, 0), (4, 0)]);
    assert_eq!(ack(&mut r), interrupt::USED_BUFFER);
    assert_eq!(r.t.device().counters().bytes_out, 16);
    // A kick with nothing new does nothing.
    kick(&mut r, TRANSMITQ);
    assert_eq!(rd(&mut r.t, 0x060), 0);
}

#[test]
fn input_waits_for_buffers_then_arrives() {
    let mut r = live();
    // Typed before the driver posted anything: kept.
    r.t.receive_input(b"ls -l\r");
    assert_eq!(r.t.device().pending_input(), 6);
    assert_eq!(rd(&mut r.t, 0x060), 0);
    // Linux fills receiveq with page-sized buffers and kicks.
    post(&mut r, RECEIVEQ, 0, &[(BUF, 4096, F_WRITE)]);
    post(&mut r, RECEIVEQ, 1, &[(BUF + 0x1000, 4096, F_WRITE)]);
    kick(&mut r, RECEIVEQ);
    assert_eq!(take_used(&mut r, RECEIVEQ), vec![(0, 6)]);
    assert_eq!(guest_bytes(&r.mem, BUF, 6), b"ls -l\r");
    assert_eq!(ack(&mut r), interrupt::USED_BUFFER);
    // With a buffer posted, input from the host thread arrives at once, with an
    // interrupt.
    r.t.receive_input(b"x");
    assert_eq!(take_used(&mut r, RECEIVEQ), vec![(1, 1)]);
    assert_eq!(guest_bytes(&r.mem, BUF + 0x1000, 1), b"x");
    assert!(r.line.level());
    assert_eq!(ack(&mut r), interrupt::USED_BUFFER);
    // No buffers left: the next input waits again.
    r.t.receive_input(b"yz");
    assert!(take_used(&mut r, RECEIVEQ).is_empty());
    assert_eq!(r.t.device().pending_input(), 2);
    assert_eq!(r.t.device().counters().bytes_in, 7);
}

#[test]
fn input_larger_than_a_buffer_spans_chains_and_descriptors() {
    let mut r = live();
    let text: Vec<u8> = (0..100u8).collect();
    r.t.receive_input(&text);
    // A chain of two small writable descriptors, then a 10-byte one.
    post(
        &mut r,
        RECEIVEQ,
        0,
        &[(BUF, 30, F_WRITE), (BUF + 0x100, 20, F_WRITE)],
    );
    post(&mut r, RECEIVEQ, 2, &[(BUF + 0x200, 10, F_WRITE)]);
    kick(&mut r, RECEIVEQ);
    assert_eq!(take_used(&mut r, RECEIVEQ), vec![(0, 50), (2, 10)]);
    assert_eq!(guest_bytes(&r.mem, BUF, 30), &text[..30]);
    assert_eq!(guest_bytes(&r.mem, BUF + 0x100, 20), &text[30..50]);
    assert_eq!(guest_bytes(&r.mem, BUF + 0x200, 10), &text[50..60]);
    assert_eq!(r.t.device().pending_input(), 40);
    post(&mut r, RECEIVEQ, 3, &[(BUF + 0x300, 4096, F_WRITE)]);
    kick(&mut r, RECEIVEQ);
    assert_eq!(take_used(&mut r, RECEIVEQ), vec![(3, 40)]);
    assert_eq!(guest_bytes(&r.mem, BUF + 0x300, 40), &text[60..]);
}

#[test]
fn a_receive_chain_without_writable_space_completes_empty() {
    let mut r = live();
    r.t.receive_input(b"abc");
    post(&mut r, RECEIVEQ, 0, &[(BUF, 8, 0)]);
    post(&mut r, RECEIVEQ, 1, &[(BUF + 0x100, 8, F_WRITE)]);
    kick(&mut r, RECEIVEQ);
    assert_eq!(take_used(&mut r, RECEIVEQ), vec![(0, 0), (1, 3)]);
    assert!(!needs_reset(&mut r.t));
}

#[test]
fn the_backlog_is_bounded_and_counts_what_it_drops() {
    let mut r = live();
    r.t.receive_input(&vec![b'a'; MAX_INPUT_BACKLOG - 10]);
    r.t.receive_input(&[b'b'; 25]);
    assert_eq!(r.t.device().pending_input(), MAX_INPUT_BACKLOG);
    assert_eq!(r.t.device().counters().input_dropped, 15);
}

#[test]
fn input_typed_before_the_driver_or_across_a_reset_is_kept() {
    let mut r = rig();
    r.t.receive_input(b"early");
    assert_eq!(r.t.device().pending_input(), 5);
    assert!(!r.line.level());
    // The probe starts with a reset; the typed-ahead bytes survive it.
    bring_up(&mut r);
    post(&mut r, RECEIVEQ, 0, &[(BUF, 64, F_WRITE)]);
    kick(&mut r, RECEIVEQ);
    assert_eq!(take_used(&mut r, RECEIVEQ), vec![(0, 5)]);
    assert_eq!(guest_bytes(&r.mem, BUF, 5), b"early");
    r.t.receive_input(b"late");
    wr(&mut r.t, 0x070, 0);
    assert!(!r.t.device().activated());
    assert!(!r.line.level());
    assert_eq!(r.t.device().pending_input(), 4);
}

#[test]
fn buffers_outside_memory_need_reset() {
    let mut r = live();
    post(&mut r, TRANSMITQ, 0, &[(MEM_SIZE as u64 - 4, 8, 0)]);
    kick(&mut r, TRANSMITQ);
    assert!(needs_reset(&mut r.t));
    assert_eq!(rd(&mut r.t, 0x060), interrupt::CONFIG_CHANGE);

    let mut r = live();
    r.t.receive_input(b"0123456789");
    post(&mut r, RECEIVEQ, 0, &[(0xdead_0000_0000, 64, F_WRITE)]);
    kick(&mut r, RECEIVEQ);
    assert!(needs_reset(&mut r.t));
    // The device has given up: input no longer touches the queue.
    r.t.receive_input(b"more");
    assert!(take_used(&mut r, RECEIVEQ).is_empty());
}

#[test]
fn a_huge_transmit_chain_is_cut_at_the_limit() {
    let mut r = live();
    let len = MAX_TX_BYTES_PER_CHAIN;
    post(
        &mut r,
        TRANSMITQ,
        0,
        &[(BUF, len, 0), (BUF, len, 0), (BUF, 100, 0)],
    );
    kick(&mut r, TRANSMITQ);
    assert_eq!(output(&r).len(), len as usize);
    assert_eq!(take_used(&mut r, TRANSMITQ), vec![(0, 0)]);
}

#[test]
fn looping_chains_end() {
    let mut r = live();
    // Descriptor 0 -> 1 -> 0 ...: virtio-queue stops after a ring's worth.
    let tx = rings(TRANSMITQ);
    for (i, next) in [(0u16, 1u16), (1, 0)] {
        tx.put_desc(&r.mem, i, BUF, 4, F_NEXT, next);
    }
    tx.publish(&r.mem, 0, 0, 1);
    kick(&mut r, TRANSMITQ);
    assert!(output(&r).len() <= usize::from(QSIZE) * 4);
    assert_eq!(take_used(&mut r, TRANSMITQ).len(), 1);
}
