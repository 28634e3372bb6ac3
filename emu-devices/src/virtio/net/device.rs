//! The virtio-net device model.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::backend::{GuestOffloads, NetBackend, RxFrame, RxNotifier};
use crate::virtio::features::VIRTIO_RING_F_INDIRECT_DESC;
use crate::virtio::{device_id, GuestMemory, QueueFault, VirtioDevice};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the virtio-net header before every frame (`struct virtio_net_hdr_mrg_rxbuf`:
/// a VirtIO 1.x device always has the `num_buffers` field).
pub const HEADER_LEN: usize = 12;
/// The MTU the device reports (VIRTIO_NET_F_MTU) and the backends assume: Ethernet's.
pub const MTU: u16 = 1500;
/// Largest Ethernet frame (without FCS) either way: a 64 KiB IP packet after the Ethernet
/// header, the most a TSO segment can be. Larger transmit chains are dropped unread.
pub const MAX_FRAME_LEN: usize = 14 + 65535;
/// Most descriptors read from one transmit chain; longer chains (possible only through an
/// indirect table) are dropped.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// The MAC address QEMU gives its first NIC, used when none is configured.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Size of the configuration space the device implements (`mac`, `status`,
/// `max_virtqueue_pairs`, `mtu`); bytes beyond read as zero.
pub const CONFIG_SIZE: usize = 12;

/// virtio-net feature bits (VirtIO 1.2 §5.1.3).
pub mod feature {
    /// The device completes partial checksums of transmitted frames.
    pub const CSUM: u64 = 1 << 0;
    /// The driver accepts received frames with partial or already-validated checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The device reports its MTU in the configuration space.
    pub const MTU: u64 = 1 << 3;
    /// The device has a MAC address in the configuration space.
    pub const MAC: u64 = 1 << 5;
    /// The driver accepts TCP/IPv4 segments longer than the MTU.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The device accepts TCP/IPv4 segments longer than the MTU (offered when the backend
    /// takes them).
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The driver can merge receive buffers (not offered).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The configuration space has a link status.
    pub const STATUS: u64 = 1 << 16;
}

/// The virtio-net header fields' values (VirtIO 1.2 §5.1.6).
pub mod header {
    /// `flags`: the checksum from `csum_start` on is partial and must be completed.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `flags`: the frame's checksums have been validated.
    pub const F_DATA_VALID: u8 = 2;
    /// `gso_type`: not a segmentation-offload frame.
    pub const GSO_NONE: u8 = 0;
    /// `gso_type`: a TCP/IPv4 segment to be cut at `gso_size`.
    pub const GSO_TCPV4: u8 = 1;
}

/// Link status bit of the `status` configuration field.
const STATUS_LINK_UP: u16 = 1;

/// Counters for the embedder (and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that went to the backend.
    pub tx_frames: u64,
    /// Bytes of those frames (without the virtio-net header).
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed (wrong direction, too long, outside RAM, a
    /// checksum request that points outside the frame, a segmentation request that was
    /// not negotiated).
    pub tx_dropped: u64,
    /// Frames put in the guest's receive buffers.
    pub rx_frames: u64,
    /// Bytes of those frames (without the virtio-net header).
    pub rx_bytes: u64,
    /// Frames from the backend that could not be delivered (a receive buffer too small,
    /// unusable or outside RAM, or an offload the driver did not accept).
    pub rx_dropped: u64,
}

/// A virtio-net device in front of a [`NetBackend`].
pub struct Net {
    mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    notifier: RxNotifier,
    /// Features the driver accepted at DRIVER_OK (0 before and after reset).
    driver_features: u64,
    /// A frame taken from the backend that found no receive buffer yet.
    pending: Option<RxFrame>,
    /// Scratch space for one transmitted chain (header and frame).
    tx_buf: Vec<u8>,
    stats: NetStats,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("driver_features", &self.driver_features)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

impl Net {
    /// A network device with MAC address `mac` in front of `backend`, which signals waiting
    /// frames through `notifier` (connect its device end with
    /// [`super::connect_rx`]).
    pub fn new(mac: [u8; 6], backend: Box<dyn NetBackend>, notifier: RxNotifier) -> Self {
        Self {
            mac,
            backend,
            notifier,
            driver_features: 0,
            pending: None,
            tx_buf: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// The MAC address the guest is given.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The notifier the backend uses to announce frames.
    pub fn notifier(&self) -> &RxNotifier {
        &self.notifier
    }

    /// Counters since the device was created.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Features the driver accepted (0 until DRIVER_OK).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn config(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        // max_virtqueue_pairs: one pair (VIRTIO_NET_F_MQ is not offered).
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&MTU.to_le_bytes());
        c
    }

    fn offloads(&self) -> GuestOffloads {
        let both = feature::GUEST_CSUM | feature::GUEST_TSO4;
        GuestOffloads {
            tso4: self.driver_features & both == both,
        }
    }

    /// Moves frames from the backend into the receive queue until either runs out.
    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueFault> {
        let mut used = false;
        while let Some(mut frame) = self.pending.take().or_else(|| self.backend.recv()) {
            let Some(header) = self.rx_header(&mut frame) else {
                self.stats.rx_dropped += 1;
                continue;
            };
            let chain = {
                let mut iter = queue.iter(mem)?;
                iter.next()
            };
            let Some(chain) = chain else {
                // No buffer: keep the frame until the driver posts one (and notifies).
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let len = match writable_segments(chain) {
                Some(segs) => match write_frame(mem, &segs, &header, &frame.data) {
                    Some(len) => {
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += frame.data.len() as u64;
                        len
                    }
                    None => {
                        self.stats.rx_dropped += 1;
                        0
                    }
                },
                // A chain the device may not write: hand it back empty and offer the
                // frame to the next one.
                None => {
                    self.pending = Some(frame);
                    0
                }
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }

    /// The virtio-net header for `frame`, or `None` when the frame must be dropped.
    fn rx_header(&self, frame: &mut RxFrame) -> Option<[u8; HEADER_LEN]> {
        if frame.data.len() > MAX_FRAME_LEN {
            return None;
        }
        let mut h = [0u8; HEADER_LEN];
        // num_buffers is 1: VIRTIO_NET_F_MRG_RXBUF is not offered.
        h[10..12].copy_from_slice(&1u16.to_le_bytes());
        match frame.gso_size {
            None => {
                if self.driver_features & feature::GUEST_CSUM != 0 {
                    h[0] = header::F_DATA_VALID;
                }
            }
            Some(mss) => {
                if !self.offloads().tso4 || mss == 0 {
                    return None;
                }
                let (csum_start, hdr_len) = prepare_tcpv4_gso(&mut frame.data)?;
                h[0] = header::F_NEEDS_CSUM;
                h[1] = header::GSO_TCPV4;
                h[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
                h[4..6].copy_from_slice(&mss.to_le_bytes());
                h[6..8].copy_from_slice(&(csum_start as u16).to_le_bytes());
                // The TCP checksum field is 16 bytes into the TCP header.
                h[8..10].copy_from_slice(&16u16.to_le_bytes());
            }
        }
        Some(h)
    }

    /// Sends every chain of the transmit queue to the backend.
    fn drain_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueFault> {
        let chains: Vec<_> = crate::virtio::take_chains(queue, mem)?;
        let mut used = false;
        for chain in chains {
            let head = chain.head_index();
            if self.read_tx_chain(mem, chain) {
                let frame = &self.tx_buf[HEADER_LEN..];
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
                self.backend.send(frame);
            } else {
                self.stats.tx_dropped += 1;
            }
            // Transmit buffers are only read: the used length is 0.
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Reads one transmit chain into `tx_buf` and applies its header; `false` when the
    /// frame must be dropped.
    fn read_tx_chain<M>(&mut self, mem: &GuestMemory, chain: DescriptorChain<M>) -> bool
    where
        M: Deref<Target = GuestMemory>,
    {
        let mut segs = Vec::new();
        let mut total = 0usize;
        let mut last_has_next = false;
        for desc in chain {
            // Transmit buffers are device-readable only (VirtIO 1.2 §5.1.6.2).
            if desc.is_write_only() || segs.len() == MAX_CHAIN_DESCRIPTORS {
                return false;
            }
            total = total.saturating_add(desc.len() as usize);
            if total > HEADER_LEN + MAX_FRAME_LEN {
                return false;
            }
            segs.push(Segment {
                addr: desc.addr(),
                len: desc.len(),
            });
            last_has_next = desc.has_next();
        }
        // A chain cut short (a loop, a bad `next`, an unreadable descriptor) is dropped.
        if last_has_next || total < HEADER_LEN {
            return false;
        }
        self.tx_buf.clear();
        self.tx_buf.resize(total, 0);
        let mut at = 0usize;
        for s in &segs {
            let end = at + s.len as usize;
            if mem.read_slice(&mut self.tx_buf[at..end], s.addr).is_err() {
                return false;
            }
            at = end;
        }
        let flags = self.tx_buf[0];
        let gso_type = self.tx_buf[1];
        match gso_type {
            header::GSO_NONE => {}
            // A TCP/IPv4 segment of up to 64 KiB, which the backend takes whole (it
            // accepted VIRTIO_NET_F_HOST_TSO4 on its behalf); its checksum is partial.
            header::GSO_TCPV4
                if self.driver_features & feature::HOST_TSO4 != 0
                    && flags & header::F_NEEDS_CSUM != 0 => {}
            // Other kinds (UDP, IPv6, ECN) are not offered.
            _ => return false,
        }
        if flags & header::F_NEEDS_CSUM != 0 {
            if self.driver_features & feature::CSUM == 0 {
                return false;
            }
            let start = usize::from(u16::from_le_bytes([self.tx_buf[6], self.tx_buf[7]]));
            let offset = usize::from(u16::from_le_bytes([self.tx_buf[8], self.tx_buf[9]]));
            if !complete_checksum(&mut self.tx_buf[HEADER_LEN..], start, offset) {
                return false;
            }
        }
        true
    }
}

/// The device-writable buffers of a receive chain, or `None` when the chain has a
/// device-readable descriptor, is cut short, or is empty.
fn writable_segments<M>(chain: DescriptorChain<M>) -> Option<Vec<Segment>>
where
    M: Deref<Target = GuestMemory>,
{
    let mut segs = Vec::new();
    let mut last_has_next = false;
    for desc in chain {
        if !desc.is_write_only() || segs.len() == MAX_CHAIN_DESCRIPTORS {
            return None;
        }
        segs.push(Segment {
            addr: desc.addr(),
            len: desc.len(),
        });
        last_has_next = desc.has_next();
    }
    (!segs.is_empty() && !last_has_next).then_some(segs)
}

/// Writes `header` then `data` across `segs`; returns the bytes written, or `None` when the
/// buffers are too small or outside guest RAM (nothing useful was delivered).
fn write_frame(
    mem: &GuestMemory,
    segs: &[Segment],
    header: &[u8; HEADER_LEN],
    data: &[u8],
) -> Option<u32> {
    let room: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    let need = (HEADER_LEN + data.len()) as u64;
    if room < need {
        return None;
    }
    let mut parts = [&header[..], data];
    let mut part = 0usize;
    for s in segs {
        let mut left = s.len as usize;
        let mut addr = s.addr;
        while left > 0 && part < parts.len() {
            let src = parts[part];
            let n = left.min(src.len());
            if n > 0 {
                mem.write_slice(&src[..n], addr).ok()?;
                addr = GuestAddress(addr.0.checked_add(n as u64)?);
                left -= n;
            }
            parts[part] = &src[n..];
            if parts[part].is_empty() {
                part += 1;
            }
        }
        if part == parts.len() {
            break;
        }
    }
    u32::try_from(need).ok()
}

/// For a TCP/IPv4 frame: puts the pseudo-header sum in the TCP checksum field (what
/// VIRTIO_NET_HDR_F_NEEDS_CSUM promises the driver: the rest of the sum is "to be
/// completed") and returns where the TCP header and the payload start. `None` when the
/// frame is not a well-formed TCP/IPv4 frame. Doing it twice gives the same frame.
fn prepare_tcpv4_gso(frame: &mut [u8]) -> Option<(usize, usize)> {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &mut frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 6 || ip.len() < ihl + 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let thl = usize::from(ip[ihl + 12] >> 4) * 4;
    if thl < 20 || total < ihl + thl || total > ip.len() {
        return None;
    }
    let tcp_len = (total - ihl) as u32;
    let mut sum = 6 + tcp_len;
    for pair in ip[12..20].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    ip[ihl + 16..ihl + 18].copy_from_slice(&fold(sum).to_be_bytes());
    Some((ETH + ihl, ETH + ihl + thl))
}

/// Folds a 32-bit ones'-complement sum to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a partial checksum as VIRTIO_NET_HDR_F_NEEDS_CSUM asks: the ones'-complement
/// sum of `frame[start..]` (whose checksum field already holds the pseudo-header sum),
/// inverted, stored big-endian at `start + offset`. `false` when the field is not inside the
/// frame.
fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if start > frame.len() || field.saturating_add(2) > frame.len() {
        return false;
    }
    let mut sum = 0u32;
    let mut chunks = frame[start..].chunks_exact(2);
    for pair in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([pair[0], pair[1]])));
        if sum & 0x8000_0000 != 0 {
            sum = u32::from(fold(sum));
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    let check = !fold(sum);
    frame[field..field + 2].copy_from_slice(&check.to_be_bytes());
    true
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        device_id::NET
    }

    fn features(&self) -> u64 {
        let base = feature::CSUM
            | feature::GUEST_CSUM
            | feature::MTU
            | feature::MAC
            | feature::GUEST_TSO4
            | feature::STATUS
            | VIRTIO_RING_F_INDIRECT_DESC;
        if self.backend.takes_tcp_segments() {
            base | feature::HOST_TSO4
        } else {
            base
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is writable only in legacy devices; everything else is read-only.
    }

    fn activate(&mut self, features: u64) {
        self.driver_features = features;
        self.backend.set_guest_offloads(self.offloads());
    }

    fn reset(&mut self) {
        self.driver_features = 0;
        self.pending = None;
        self.backend.set_guest_offloads(GuestOffloads::default());
    }

    fn queue_notify(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        match index {
            RX_QUEUE => self.fill_rx(queue, mem),
            TX_QUEUE => self.drain_tx(queue, mem),
            _ => Ok(false),
        }
    }
}
