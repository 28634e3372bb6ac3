//! The virtio-mmio transport, version 2 ("modern"), VirtIO 1.2 §4.2.2.
//!
//! The register file is 32-bit wide below offset 0x100; accesses of any other width there
//! read as zero and are ignored on write (the specification requires drivers to use 32-bit
//! accesses). The device configuration space starts at 0x100 and may be accessed at any
//! width. The interrupt is level triggered: the line is high while InterruptStatus is not
//! zero, which is what the LNRO0005 description in the DSDT promises the guest.

use std::sync::Arc;

use emu_mmu::dma::DmaWrites;
use emu_mmu::BusDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{features, interrupt, status, GuestMemory, VirtioDevice};
use crate::irq::IrqLine;

/// Size of the register window the transport decodes (one 4 KiB page, as usual).
pub const MMIO_SIZE: u64 = 0x1000;

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern virtio-mmio layout.
const VERSION: u32 = 2;
/// Vendor ID reported to the driver: the bytes "QTZL" read as a little-endian word.
const VENDOR_ID: u32 = 0x4c5a_5451;

/// Register offsets (VirtIO 1.2 §4.2.2).
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// What the driver wrote into a queue's registers. Kept apart from the [`Queue`] because
/// `virtio-queue` silently drops invalid values; holding the raw values lets the transport
/// validate them once, when the driver sets QueueReady, and answer with
/// DEVICE_NEEDS_RESET instead of running a queue at stale addresses.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    num: u16,
    desc: u64,
    driver: u64,
    device: u64,
}

/// A virtio-mmio transport in front of one [`VirtioDevice`].
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    irq: Arc<dyn IrqLine>,
    queues: Vec<Queue>,
    queue_regs: Vec<QueueRegs>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    activated: bool,
    /// Where buffers the device wrote are reported, so translated code in them is
    /// dropped (see [`emu_mmu::dma`]).
    dma: Option<Arc<DmaWrites>>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a transport that reaches guest memory through `mem` and signals
    /// its interrupt on `irq`.
    ///
    /// # Panics
    ///
    /// If the device reports a queue maximum size that is not a power of two in
    /// 1..=32768 (a bug in the device model, not something a guest can cause).
    pub fn new(device: D, mem: GuestMemory, irq: Arc<dyn IrqLine>) -> Self {
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect();
        let queue_regs = queues
            .iter()
            .map(|q| QueueRegs {
                num: q.max_size(),
                ..QueueRegs::default()
            })
            .collect();
        Self {
            device,
            mem,
            irq,
            queues,
            queue_regs,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            activated: false,
            dma: None,
        }
    }

    /// Reports every buffer the device fills to `dma` from now on.
    pub fn set_dma_writes(&mut self, dma: Arc<DmaWrites>) {
        self.dma = Some(dma);
    }

    /// Reports to the DMA observer (if any) the device-writable buffers of the chains
    /// that queue `index` has returned since its used index was `used_before`. Paths that
    /// complete requests outside [`BusDevice::write`] (a receive thread) call this too.
    pub fn report_device_writes(&self, index: usize, used_before: u16) {
        let (Some(dma), Some(q)) = (self.dma.as_deref(), self.queues.get(index)) else {
            return;
        };
        let size = q.size();
        let mut used = used_before;
        // At most one ring's worth: anything more is garbage the walk must not loop on.
        for _ in 0..size {
            if used == q.next_used() {
                break;
            }
            let elem = q.used_ring() + 4 + 8 * u64::from(used % size);
            if let Ok(head) = self.mem.read_obj::<u32>(GuestAddress(elem)) {
                report_chain(&self.mem, q.desc_table(), size, head, dma);
            }
            used = used.wrapping_add(1);
        }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Features offered to the driver: the device's plus the transport's.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | features::VIRTIO_F_VERSION_1
    }

    /// Features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Tells the driver the configuration space changed (bumps ConfigGeneration and raises
    /// the configuration-change interrupt).
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise(interrupt::CONFIG_CHANGE);
        }
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        self.update_irq();
    }

    fn update_irq(&self) {
        self.irq.set_level(self.interrupt_status != 0);
    }

    /// The driver broke the protocol in a way the device cannot recover from: VirtIO 1.2
    /// §2.1.1 has the device set DEVICE_NEEDS_RESET and, once DRIVER_OK, notify the driver
    /// with a configuration-change interrupt.
    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.raise(interrupt::CONFIG_CHANGE);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for (q, regs) in self.queues.iter_mut().zip(&mut self.queue_regs) {
            q.reset();
            *regs = QueueRegs {
                num: q.max_size(),
                ..QueueRegs::default()
            };
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.activated = false;
        self.update_irq();
    }

    /// Index of the selected queue, if it exists.
    fn selected(&self) -> Option<usize> {
        let i = usize::try_from(self.queue_sel).ok()?;
        (i < self.queues.len()).then_some(i)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let sel = self.selected();
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            // A queue that does not exist reads as maximum size 0: "not available".
            reg::QUEUE_NUM_MAX => sel.map_or(0, |i| u32::from(self.queues[i].max_size())),
            reg::QUEUE_READY => sel.map_or(0, |i| u32::from(self.queues[i].ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            // Write-only and reserved registers read as zero.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.with_idle_queue(|r| r.num = value as u16),
            reg::QUEUE_DESC_LOW => self.with_idle_queue(|r| set_low(&mut r.desc, value)),
            reg::QUEUE_DESC_HIGH => self.with_idle_queue(|r| set_high(&mut r.desc, value)),
            reg::QUEUE_DRIVER_LOW => self.with_idle_queue(|r| set_low(&mut r.driver, value)),
            reg::QUEUE_DRIVER_HIGH => self.with_idle_queue(|r| set_high(&mut r.driver, value)),
            reg::QUEUE_DEVICE_LOW => self.with_idle_queue(|r| set_low(&mut r.device, value)),
            reg::QUEUE_DEVICE_HIGH => self.with_idle_queue(|r| set_high(&mut r.device, value)),
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.queue_notify(value),
            reg::INTERRUPT_ACK => {
                self.interrupt_status &= !value;
                self.update_irq();
            }
            reg::STATUS => self.write_status(value),
            // Read-only and reserved registers ignore writes.
            _ => {}
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are frozen once negotiated (§3.1.1: only before FEATURES_OK).
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32);
            }
            _ => {}
        }
    }

    /// Applies `f` to the selected queue's registers, unless the queue is live: §4.2.2.3
    /// forbids changing a ready queue, so such writes are ignored.
    fn with_idle_queue(&mut self, f: impl FnOnce(&mut QueueRegs)) {
        if let Some(i) = self.selected() {
            if !self.queues[i].ready() {
                f(&mut self.queue_regs[i]);
            }
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let Some(i) = self.selected() else { return };
        if value & 1 == 0 {
            self.queues[i].set_ready(false);
            return;
        }
        if self.queues[i].ready() {
            return;
        }
        let regs = self.queue_regs[i];
        let q = &mut self.queues[i];
        let ok = q.try_set_size(regs.num).is_ok()
            && q.try_set_desc_table_address(GuestAddress(regs.desc))
                .is_ok()
            && q.try_set_avail_ring_address(GuestAddress(regs.driver))
                .is_ok()
            && q.try_set_used_ring_address(GuestAddress(regs.device))
                .is_ok();
        q.set_event_idx(false);
        q.set_ready(true);
        // `is_valid` checks the rings lie in guest memory; a queue that fails any check
        // is never run.
        if !ok || !q.is_valid(&self.mem) {
            q.set_ready(false);
            self.needs_reset();
        }
    }

    fn queue_notify(&mut self, value: u32) {
        let Ok(i) = usize::try_from(value & 0xffff) else {
            return;
        };
        self.process_queue(i, |device, queue, mem| device.queue_notify(i, queue, mem));
    }

    /// Runs `work` on queue `index` as a driver notification would: nothing runs before
    /// DRIVER_OK, after DEVICE_NEEDS_RESET, or for a missing or not-ready queue; the
    /// buffers `work` completes are reported as DMA writes; the used-buffer interrupt is
    /// raised when it reports used buffers and a [`QueueFault`](super::QueueFault) sets
    /// DEVICE_NEEDS_RESET. Devices use it for work they start themselves, from any thread
    /// (host input to deliver, a buffer the host hands back). Returns whether `work` ran.
    pub fn process_queue(
        &mut self,
        index: usize,
        work: impl FnOnce(&mut D, &mut Queue, &GuestMemory) -> Result<bool, super::QueueFault>,
    ) -> bool {
        if self.status & status::DRIVER_OK == 0 || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return false;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        if !queue.ready() {
            return false;
        }
        let used_before = queue.next_used();
        let result = work(&mut self.device, queue, &self.mem);
        self.report_device_writes(index, used_before);
        match result {
            Ok(true) => self.raise(interrupt::USED_BUFFER),
            Ok(false) => {}
            Err(_) => self.needs_reset(),
        }
        true
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let value = value & 0xff;
        let newly = value & !self.status;
        // DEVICE_NEEDS_RESET belongs to the device; the driver cannot clear or set it.
        let mut next =
            (value & !status::DEVICE_NEEDS_RESET) | (self.status & status::DEVICE_NEEDS_RESET);
        if newly & status::FEATURES_OK != 0 {
            let offered = self.offered_features();
            // §3.1.1: the device refuses a feature set it did not offer, and the modern
            // transport requires VERSION_1; the driver sees FEATURES_OK not stick.
            if self.driver_features & !offered != 0
                || self.driver_features & features::VIRTIO_F_VERSION_1 == 0
            {
                next &= !status::FEATURES_OK;
            }
        }
        self.status = next;
        if newly & status::DRIVER_OK != 0 && next & status::FEATURES_OK != 0 && !self.activated {
            self.activated = true;
            self.device.activate(self.driver_features);
        }
    }
}

/// Reports the device-writable descriptors of the chain at `head` (following one indirect
/// table) to `dma`. The walk is bounded, so a looping or garbage chain ends it early.
fn report_chain(mem: &GuestMemory, table: u64, size: u16, head: u32, dma: &DmaWrites) {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let (mut table, mut entries) = (table, u32::from(size));
    let mut idx = head;
    let mut indirect_seen = false;
    for _ in 0..(u32::from(size) + 1024) {
        if idx >= entries {
            return;
        }
        let at = table + 16 * u64::from(idx);
        let (Ok(addr), Ok(len), Ok(flags), Ok(next)) = (
            mem.read_obj::<u64>(GuestAddress(at)),
            mem.read_obj::<u32>(GuestAddress(at + 8)),
            mem.read_obj::<u16>(GuestAddress(at + 12)),
            mem.read_obj::<u16>(GuestAddress(at + 14)),
        ) else {
            return;
        };
        if flags & INDIRECT != 0 {
            if indirect_seen {
                return;
            }
            indirect_seen = true;
            (table, entries, idx) = (addr, (len / 16).min(1024), 0);
            continue;
        }
        if flags & WRITE != 0 {
            dma.wrote(addr, u64::from(len));
        }
        if flags & NEXT == 0 {
            return;
        }
        idx = u32::from(next);
    }
}

fn set_low(r: &mut u64, v: u32) {
    *r = (*r & !0xffff_ffff) | u64::from(v);
}

fn set_high(r: &mut u64, v: u32) {
    *r = (*r & 0xffff_ffff) | (u64::from(v) << 32);
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset % 4 == 0) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

impl<D: VirtioDevice + std::fmt::Debug> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device)
            .field("status", &self.status)
            .field("interrupt_status", &self.interrupt_status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}
