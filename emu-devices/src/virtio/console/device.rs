//! The virtio-console device model and its host-side input path.

use std::collections::VecDeque;
use std::io::Write;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes};

use crate::virtio::mmio::MmioTransport;
use crate::virtio::{device_id, GuestMemory, QueueFault, VirtioDevice};

/// Index of port 0's receive queue (host to guest).
pub const RECEIVEQ: usize = 0;
/// Index of port 0's transmit queue (guest to host).
pub const TRANSMITQ: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Most bytes taken from one transmit chain; the rest of a longer chain is dropped.
/// Linux sends at most a few pages per buffer.
pub const MAX_TX_BYTES_PER_CHAIN: u32 = 1 << 20;
/// Most host input bytes held while the driver has no receive buffers.
pub const MAX_INPUT_BACKLOG: usize = 64 << 10;
/// Size of the configuration space: `cols` (u16), `rows` (u16), `max_nr_ports` (u32),
/// `emerg_wr` (u32).
pub const CONFIG_SIZE: usize = 12;

/// Byte counts, for the host's curiosity and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Bytes the guest sent to the host.
    pub bytes_out: u64,
    /// Bytes delivered to the guest.
    pub bytes_in: u64,
    /// Host input bytes dropped because the backlog was full.
    pub input_dropped: u64,
}

/// The console device: one port whose output goes to a writer and whose input comes
/// from [`MmioTransport::receive_input`].
pub struct Console {
    output: Box<dyn Write + Send>,
    input: VecDeque<u8>,
    counters: ConsoleCounters,
    activated: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("backlog", &self.input.len())
            .field("counters", &self.counters)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console whose port writes what the guest sends to `output`.
    pub fn new(output: Box<dyn Write + Send>) -> Self {
        Self {
            output,
            input: VecDeque::new(),
            counters: ConsoleCounters::default(),
            activated: false,
        }
    }

    /// Whether the driver has set DRIVER_OK since the last reset.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Byte counts since the device was created.
    pub fn counters(&self) -> ConsoleCounters {
        self.counters
    }

    /// Host input bytes not yet delivered to the guest.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Adds host input to the backlog, dropping what does not fit.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let room = MAX_INPUT_BACKLOG - self.input.len();
        let take = bytes.len().min(room);
        self.input.extend(&bytes[..take]);
        self.counters.input_dropped += (bytes.len() - take) as u64;
    }

    /// Copies the backlog into the driver's receive buffers, one chain after another,
    /// while there is input and there are buffers (at most one ring's worth of chains).
    /// Returns whether any buffer was used.
    fn deliver_input(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueFault> {
        let mut used = false;
        for _ in 0..queue.size() {
            if self.input.is_empty() {
                break;
            }
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.writable() {
                if self.input.is_empty() {
                    break;
                }
                let n = (desc.len() as usize).min(self.input.len());
                let bytes: Vec<u8> = self.input.iter().take(n).copied().collect();
                let bad = QueueFault::BadDescriptor {
                    addr: desc.addr().0,
                    len: desc.len(),
                };
                mem.write_slice(&bytes, desc.addr()).map_err(|_| bad)?;
                self.input.drain(..n);
                written += n as u32;
            }
            self.counters.bytes_in += u64::from(written);
            queue.add_used(mem, head, written)?;
            used = true;
        }
        Ok(used)
    }

    /// Sends the readable bytes of every available transmit chain to the output.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueFault> {
        let chains: Vec<_> = crate::virtio::take_chains(queue, mem)?;
        let mut scratch = [0u8; 4096];
        let mut used = false;
        for chain in chains {
            let head = chain.head_index();
            let mut budget = MAX_TX_BYTES_PER_CHAIN;
            for desc in chain.readable() {
                let len = desc.len().min(budget);
                let bad = QueueFault::BadDescriptor {
                    addr: desc.addr().0,
                    len: desc.len(),
                };
                let mut done = 0u32;
                while done < len {
                    let n = (len - done).min(scratch.len() as u32);
                    let chunk = &mut scratch[..n as usize];
                    let at = desc
                        .addr()
                        .checked_add(u64::from(done))
                        .ok_or_else(|| bad.clone())?;
                    mem.read_slice(chunk, at).map_err(|_| bad.clone())?;
                    // Nobody reading the output is not the guest's problem.
                    let _ = self.output.write_all(chunk);
                    done += n;
                }
                self.counters.bytes_out += u64::from(len);
                budget -= len;
                if budget == 0 {
                    break;
                }
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        if used {
            let _ = self.output.flush();
        }
        Ok(used)
    }
}

impl VirtioDevice for Console {
    fn device_id(&self) -> u32 {
        device_id::CONSOLE
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_SIZE];
        // cols and rows are unknown (zero); one port.
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        crate::virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr exists only with VIRTIO_CONSOLE_F_EMERG_WRITE, which is not offered;
        // the rest is read-only.
    }

    fn activate(&mut self, _features: u64) {
        self.activated = true;
    }

    fn reset(&mut self) {
        // Host input is the host's: typed-ahead bytes wait for the next driver (its probe
        // starts with a reset), as QEMU's character backends hold them back.
        self.activated = false;
    }

    fn queue_notify(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueFault> {
        match index {
            RECEIVEQ => self.deliver_input(queue, mem),
            TRANSMITQ => self.transmit(queue, mem),
            _ => Ok(false),
        }
    }
}

impl MmioTransport<Console> {
    /// Gives host input (typed keys) to the guest: the bytes join the device's backlog and
    /// go into the driver's receive buffers at once if it has posted any (raising the
    /// used-buffer interrupt), else when it next posts some.
    pub fn receive_input(&mut self, bytes: &[u8]) {
        self.device_mut().queue_input(bytes);
        self.process_queue(RECEIVEQ, |console, queue, mem| {
            console.deliver_input(queue, mem)
        });
    }
}
