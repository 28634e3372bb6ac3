//! virtio-console (console device, VirtIO 1.2 §5.3): one port, `hvc0` in a Linux guest.
//!
//! # Design
//!
//! - **One port, no multiport.** VIRTIO_CONSOLE_F_MULTIPORT is not offered, so the device
//!   has exactly two queues, receiveq (0) and transmitq (1), for port 0, and no control
//!   queues. Linux's `virtio_console` then makes port 0 a console (`hvc0`). Neither
//!   VIRTIO_CONSOLE_F_SIZE nor VIRTIO_CONSOLE_F_EMERG_WRITE is offered; the configuration
//!   space still reads as the specification lays it out (`cols`, `rows` zero,
//!   `max_nr_ports` one).
//! - **Output.** A kick on transmitq copies the device-readable bytes of each chain to the
//!   output writer (through a small bounce buffer, at most [`MAX_TX_BYTES_PER_CHAIN`] per
//!   chain so a guest cannot make the host copy gigabytes for one kick), flushes it, and
//!   completes the chain. Host write errors are ignored: the guest console must not fail
//!   because nobody reads it. Linux busy-waits for its console buffers to come back, so
//!   output is served synchronously on the kicking vCPU thread.
//! - **Input.** Host bytes
//!   ([`receive_input`](crate::virtio::mmio::MmioTransport::receive_input)) wait in a
//!   backlog of at most [`MAX_INPUT_BACKLOG`] bytes (beyond it they are dropped and
//!   counted, as a UART overruns) and are copied into the driver's receive buffers as
//!   soon as there are any: at once when the driver has buffers posted, else when it next
//!   kicks receiveq. The backlog survives device resets (it is the host's, and Linux's
//!   probe starts with a reset), so keys typed while the guest boots are not lost. Input
//!   arrives on a host thread (the terminal reader), which works on the queue through
//!   [`process_queue`](crate::virtio::mmio::MmioTransport::process_queue) under the same
//!   lock as the vCPU's accesses.
//! - **Guest mistakes.** A buffer outside guest RAM sets DEVICE_NEEDS_RESET (the
//!   transport's answer to a [`QueueFault`](crate::virtio::QueueFault)); chains cut short
//!   by `virtio-queue` (loops, bad `next`) are served as far as they go; a receive chain
//!   with no writable space completes with length 0. Each pass handles at most one ring's
//!   worth of chains, so a guest refilling the ring from another vCPU cannot keep a host
//!   thread busy forever.

mod device;

#[cfg(test)]
mod tests;

pub use device::{
    Console, ConsoleCounters, CONFIG_SIZE, MAX_INPUT_BACKLOG, MAX_TX_BYTES_PER_CHAIN, QUEUE_SIZE,
    RECEIVEQ, TRANSMITQ,
};
