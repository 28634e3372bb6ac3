//! A 16550A UART (the PC's COM ports: COM1 at I/O 0x3F8..0x3FF, IRQ 4).
//!
//! The device is a register state machine in the style of `vm-superio`'s `Serial`: its
//! interrupt line and its output are injected, and input arrives through
//! [`Serial::enqueue_input`]. Transmission is instantaneous: a byte written to THR goes
//! straight to the output (or, in loopback mode, to the receiver), so THRE and TEMT are
//! always set once the write returns and the "THR empty" interrupt is raised right away.
//!
//! What Linux's 8250 driver checks, and how it is met:
//! - the existence test (IER reads back its low four bits, the upper ones read 0),
//! - the loopback test (MCR bit 4 routes MCR outputs into MSR: RTS→CTS, DTR→DSR,
//!   OUT1→RI, OUT2→DCD, and transmitted bytes into the receiver),
//! - the scratch register,
//! - FIFO detection: with FCR bit 0 set, IIR bits 7:6 read 0b11 (a 16550A); IIR bit 5
//!   (64-byte FIFO) and bit 4 read 0 so it is not taken for a 16750 or an NS16550A.
//!
//! The interrupt output follows the PC wiring: the IRQ is driven only while MCR OUT2 is
//! set and loopback is off (OUT2 gates the UART's interrupt onto the ISA bus, and in
//! loopback mode the OUT pins are disconnected). The line is level: high exactly while
//! an enabled interrupt condition is pending.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use emu_mmu::BusDevice;

use crate::irq::IrqLine;
use crate::ports::{read_bytes, write_bytes};

/// The standard base port of COM1.
pub const COM1_BASE: u16 = 0x3F8;
/// The ISA IRQ of COM1.
pub const COM1_IRQ: u8 = 4;
/// Ports the UART occupies (map `Serial` at `base..base + SERIAL_PORT_LEN`).
pub const SERIAL_PORT_LEN: u16 = 8;

// Register offsets.
const DATA: u64 = 0; // RBR (read), THR (write); DLL with DLAB
const IER: u64 = 1; // DLM with DLAB
const IIR_FCR: u64 = 2; // IIR (read), FCR (write)
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

// IER bits.
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_RLS: u8 = 0x04;
const IER_MS: u8 = 0x08;

// IIR values (bits 3:1 give the source; bit 0 set means "no interrupt").
const IIR_NONE: u8 = 0x01;
const IIR_MS: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_TIMEOUT: u8 = 0x0C;
const IIR_FIFO_ENABLED: u8 = 0xC0;

// FCR bits.
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

// LCR bits.
const LCR_DLAB: u8 = 0x80;

// MCR bits.
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

// LSR bits.
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BI_FE_PE: u8 = 0x1C;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LSR_FIFO_ERR: u8 = 0x80;

// MSR bits.
const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// Modem lines seen outside loopback: a connected terminal (carrier, DSR and CTS up).
const DEFAULT_MSR: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// Receive FIFO depth of a 16550A.
const FIFO_LEN: usize = 16;

/// Bytes accepted from the host side beyond the FIFO before `enqueue_input` pushes back.
pub const INPUT_BACKLOG: usize = 64 * 1024;

/// A 16550A UART.
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    /// Only the error bits (OE, PE, FE, BI); DR, THRE and TEMT are computed.
    lsr_errors: u8,
    /// Status bits (7:4) and delta bits (3:0).
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// FCR as last written (bit 0: FIFOs on; bits 7:6: receive trigger level).
    fcr: u8,
    /// The receiver: at most 16 bytes with FIFOs on, 1 without.
    rx: VecDeque<u8>,
    /// Host input waiting for room in the receiver (so pasting loses nothing).
    backlog: VecDeque<u8>,
    /// The "THR empty" interrupt condition: set when THR empties (or the interrupt is
    /// enabled while it is empty), cleared by writing THR or reading IIR while it is the
    /// reported source.
    thre_pending: bool,
    irq_level: bool,
    irq: Arc<dyn IrqLine>,
    out: Box<dyn Write + Send>,
}

impl Serial {
    /// A UART in its reset state that writes transmitted bytes to `out` and drives `irq`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        Serial {
            ier: 0,
            lcr: 0x03, // 8N1, a common firmware default
            mcr: 0,
            lsr_errors: 0,
            msr: DEFAULT_MSR,
            scr: 0,
            dll: 0x0C, // 9600 baud from the 1.8432 MHz clock
            dlm: 0,
            fcr: 0,
            rx: VecDeque::with_capacity(FIFO_LEN),
            backlog: VecDeque::new(),
            thre_pending: false,
            irq_level: false,
            irq,
            out,
        }
    }

    /// Queues bytes typed on the host side. They fill the receive FIFO (and raise the
    /// "received data" interrupt if enabled); what does not fit waits in a backlog that
    /// refills the FIFO as the guest reads it. Returns how many bytes were accepted: fewer
    /// than `input.len()` only when the backlog ([`INPUT_BACKLOG`]) is full.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = INPUT_BACKLOG.saturating_sub(self.backlog.len());
        let n = input.len().min(room);
        self.backlog.extend(&input[..n]);
        self.refill_rx();
        self.update_irq();
        n
    }

    /// Bytes the guest has not read yet (FIFO plus backlog).
    pub fn pending_input(&self) -> usize {
        self.rx.len() + self.backlog.len()
    }

    /// The divisor latch value (baud = 115200 / divisor).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_LEN
        } else {
            1
        }
    }

    fn rx_trigger(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Moves backlog bytes into the receiver while it has room. In loopback mode the
    /// receiver is disconnected from the outside, so the backlog waits.
    fn refill_rx(&mut self) {
        if self.loopback() {
            return;
        }
        while self.rx.len() < self.rx_capacity() {
            match self.backlog.pop_front() {
                Some(b) => self.rx.push_back(b),
                None => break,
            }
        }
    }

    /// A byte arriving at the receiver (from loopback): an overrun if there is no room.
    fn receive(&mut self, byte: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(byte);
        } else {
            self.lsr_errors |= LSR_OE;
        }
    }

    fn lsr(&self) -> u8 {
        let mut lsr = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            lsr |= LSR_DR;
        }
        if self.fifo_enabled() && self.lsr_errors & LSR_BI_FE_PE != 0 {
            lsr |= LSR_FIFO_ERR;
        }
        lsr
    }

    /// The highest-priority pending interrupt, as its IIR code (without FIFO bits).
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors & (LSR_OE | LSR_BI_FE_PE) != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            // Below the trigger level a real FIFO reports a character timeout after four
            // character times; with no time on the wire here, that is "now".
            if self.fifo_enabled() && self.rx.len() < self.rx_trigger() {
                IIR_TIMEOUT
            } else {
                IIR_RDA
            }
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr & 0x0F != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        let gated = self.mcr & MCR_OUT2 != 0 && !self.loopback();
        let level = gated && self.interrupt_id() != IIR_NONE;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Recomputes MSR's status bits from the modem lines, setting delta bits on changes.
    fn update_msr(&mut self) {
        let status = if self.loopback() {
            let mut s = 0;
            if self.mcr & MCR_RTS != 0 {
                s |= MSR_CTS;
            }
            if self.mcr & MCR_DTR != 0 {
                s |= MSR_DSR;
            }
            if self.mcr & MCR_OUT1 != 0 {
                s |= MSR_RI;
            }
            if self.mcr & MCR_OUT2 != 0 {
                s |= MSR_DCD;
            }
            s
        } else {
            DEFAULT_MSR
        };
        let old = self.msr & 0xF0;
        let changed = old ^ status;
        let mut delta = self.msr & 0x0F;
        if changed & MSR_CTS != 0 {
            delta |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            delta |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            delta |= MSR_DDCD;
        }
        // TERI is set on the trailing edge of RI only.
        if old & MSR_RI != 0 && status & MSR_RI == 0 {
            delta |= MSR_TERI;
        }
        self.msr = status | delta;
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            self.receive(byte);
        } else {
            // The guest cannot be told about a host write error; dropping the byte is what
            // a disconnected cable does.
            let _ = self.out.write_all(&[byte]);
            let _ = self.out.flush();
        }
        self.thre_pending = true;
    }

    fn read_reg(&mut self, offset: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DATA if dlab => self.dll,
            DATA => {
                let b = self.rx.pop_front().unwrap_or(0);
                self.refill_rx();
                b
            }
            IER if dlab => self.dlm,
            IER => self.ier,
            IIR_FCR => {
                let id = self.interrupt_id();
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled() {
                    IIR_FIFO_ENABLED
                } else {
                    0
                }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let lsr = self.lsr();
                self.lsr_errors = 0;
                lsr
            }
            MSR => {
                let msr = self.msr;
                self.msr &= 0xF0;
                msr
            }
            SCR => self.scr,
            _ => 0xFF,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DATA if dlab => self.dll = value,
            DATA => self.transmit(value),
            IER if dlab => self.dlm = value,
            IER => {
                let was = self.ier;
                self.ier = value & 0x0F;
                // Enabling the THRE interrupt while THR is empty (always, here) raises it:
                // Linux's THRE-bug probe relies on this.
                if was & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            IIR_FCR => {
                let was_enabled = self.fifo_enabled();
                // Toggling the FIFO enable clears both FIFOs.
                if (value & FCR_ENABLE != 0) != was_enabled || value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
                // The transmitter is always empty, so "clear TX FIFO" has nothing to do.
                // Bits 2:1 self-clear; keep the enable and trigger bits.
                self.fcr = value & 0xC1;
                self.refill_rx();
            }
            LCR => self.lcr = value,
            MCR => {
                let was_loop = self.loopback();
                self.mcr = value & 0x1F;
                self.update_msr();
                if was_loop && !self.loopback() {
                    self.refill_rx();
                }
            }
            // LSR and MSR are read-only (writes are "factory test" on real parts).
            LSR | MSR => {}
            SCR => self.scr = value,
            _ => {}
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, data, |o| self.read_reg(o));
        self.update_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, data, |o, v| self.write_reg(o, v));
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingLine;
    use std::sync::Mutex;

    /// An output that collects what the UART sends.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Serial, Arc<RecordingLine>, Sink) {
        let line = Arc::new(RecordingLine::default());
        let sink = Sink::default();
        (
            Serial::new(line.clone(), Box::new(sink.clone())),
            line,
            sink,
        )
    }

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    fn wr(s: &mut Serial, off: u64, v: u8) {
        s.write(off, &[v]);
    }

    #[test]
    fn transmits_to_the_output_and_thr_is_always_empty() {
        let (mut s, _, sink) = uart();
        for &b in b"hi\n" {
            wr(&mut s, DATA, b);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(rd(&mut s, LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn linux_8250_probe_sequence() {
        let (mut s, _, _) = uart();
        // Existence test: IER keeps only its low four bits.
        wr(&mut s, IER, 0);
        assert_eq!(rd(&mut s, IER) & 0x0F, 0);
        wr(&mut s, IER, 0xFF);
        assert_eq!(rd(&mut s, IER), 0x0F);
        wr(&mut s, IER, 0);
        // Loopback test: MCR = LOOP | OUT2 | RTS shows DCD | CTS in MSR.
        wr(&mut s, MCR, MCR_LOOP | 0x0A);
        assert_eq!(rd(&mut s, MSR) & 0xF0, 0x90);
        wr(&mut s, MCR, 0);
        // Scratch register.
        wr(&mut s, SCR, 0xA5);
        assert_eq!(rd(&mut s, SCR), 0xA5);
        // FIFO detection: 16550A.
        wr(&mut s, IIR_FCR, FCR_ENABLE);
        assert_eq!(rd(&mut s, IIR_FCR) >> 6, 3);
        // Not a 16750: requesting the 64-byte FIFO leaves IIR bit 5 clear.
        wr(&mut s, IIR_FCR, FCR_ENABLE | 0x20);
        assert_eq!(rd(&mut s, IIR_FCR) >> 5, 6);
        // IER bit 6 (XScale UUE) does not stick.
        wr(&mut s, IER, 0x40);
        assert_eq!(rd(&mut s, IER) & 0x40, 0);
        wr(&mut s, IIR_FCR, 0);
        assert_eq!(rd(&mut s, IIR_FCR) & 0xC0, 0, "FIFOs off");
    }

    #[test]
    fn loopback_routes_tx_to_rx_and_not_to_the_output() {
        let (mut s, line, sink) = uart();
        wr(&mut s, MCR, MCR_LOOP | MCR_OUT2);
        wr(&mut s, IER, IER_RDA);
        wr(&mut s, DATA, 0x55);
        assert!(sink.0.lock().unwrap().is_empty());
        assert_eq!(rd(&mut s, LSR) & LSR_DR, LSR_DR);
        assert!(!line.level(), "loopback disconnects the IRQ output");
        assert_eq!(
            rd(&mut s, IIR_FCR) & 0x0F,
            IIR_RDA,
            "but interrupts still work"
        );
        assert_eq!(rd(&mut s, DATA), 0x55);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
        // Without FIFOs a second byte overruns the one-byte holding register.
        wr(&mut s, DATA, 1);
        wr(&mut s, DATA, 2);
        assert_eq!(rd(&mut s, LSR) & LSR_OE, LSR_OE);
        assert_eq!(rd(&mut s, LSR) & LSR_OE, 0, "reading LSR clears OE");
        assert_eq!(rd(&mut s, DATA), 1);
        // MSR follows the MCR outputs, with deltas.
        rd(&mut s, MSR);
        wr(
            &mut s,
            MCR,
            MCR_LOOP | MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2,
        );
        assert_eq!(rd(&mut s, MSR), 0xF0 | MSR_DCTS | MSR_DDSR);
        wr(&mut s, MCR, MCR_LOOP);
        assert_eq!(
            rd(&mut s, MSR),
            MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD,
            "TERI on RI's trailing edge"
        );
    }

    #[test]
    fn fifo_holds_sixteen_bytes_and_the_backlog_the_rest() {
        let (mut s, _, _) = uart();
        wr(&mut s, IIR_FCR, FCR_ENABLE | 0xC0); // trigger level 14
        let input: Vec<u8> = (0..40).collect();
        assert_eq!(s.enqueue_input(&input), 40);
        assert_eq!(s.rx.len(), 16);
        assert_eq!(s.pending_input(), 40);
        let got: Vec<u8> = (0..40).map(|_| rd(&mut s, DATA)).collect();
        assert_eq!(got, input);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
        // Without FIFOs the receiver holds one byte at a time; nothing is lost.
        wr(&mut s, IIR_FCR, 0);
        s.enqueue_input(b"abc");
        assert_eq!(s.rx.len(), 1);
        assert_eq!(
            [rd(&mut s, DATA), rd(&mut s, DATA), rd(&mut s, DATA)],
            *b"abc"
        );
        // FCR "clear receive FIFO".
        wr(&mut s, IIR_FCR, FCR_ENABLE);
        s.enqueue_input(b"xyz");
        wr(&mut s, IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
    }

    #[test]
    fn receive_interrupt_follows_the_data_and_out2() {
        let (mut s, line, _) = uart();
        wr(&mut s, IER, IER_RDA);
        s.enqueue_input(b"k");
        assert!(!line.level(), "OUT2 gates the IRQ");
        wr(&mut s, MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
        assert!(line.level());
        assert_eq!(rd(&mut s, IIR_FCR), IIR_RDA);
        assert_eq!(rd(&mut s, DATA), b'k');
        assert!(!line.level(), "level drops when the FIFO empties");
        assert_eq!(rd(&mut s, IIR_FCR), IIR_NONE);
        // With FIFOs and a trigger level of 4, one byte reports a character timeout.
        wr(&mut s, IIR_FCR, FCR_ENABLE | 0x40);
        s.enqueue_input(b"a");
        assert_eq!(rd(&mut s, IIR_FCR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
        s.enqueue_input(b"bcd");
        assert_eq!(rd(&mut s, IIR_FCR), IIR_FIFO_ENABLED | IIR_RDA);
    }

    #[test]
    fn thre_interrupt_is_raised_on_enable_and_cleared_by_iir_read() {
        let (mut s, line, _) = uart();
        wr(&mut s, MCR, MCR_OUT2);
        wr(&mut s, IER, IER_THRE);
        assert!(line.level());
        assert_eq!(rd(&mut s, IIR_FCR), IIR_THRE);
        assert!(!line.level(), "reading IIR clears the THRE interrupt");
        assert_eq!(rd(&mut s, IIR_FCR), IIR_NONE);
        // Linux's THRE-bug test: disable and re-enable raises it again.
        wr(&mut s, IER, 0);
        wr(&mut s, IER, IER_THRE);
        assert_eq!(rd(&mut s, IIR_FCR), IIR_THRE);
        // Writing THR raises it (the byte leaves at once).
        wr(&mut s, DATA, b'x');
        assert!(line.level());
        assert_eq!(line.edges(), 3);
        wr(&mut s, IER, 0);
        assert!(!line.level(), "disabling the interrupt drops the line");
    }

    #[test]
    fn iir_reports_the_highest_priority_source() {
        let (mut s, _, _) = uart();
        wr(&mut s, IER, 0x0F);
        // Pending: THRE (enabled just now), received data, line status, modem status.
        wr(&mut s, MCR, MCR_LOOP);
        wr(&mut s, DATA, 1);
        wr(&mut s, DATA, 2); // overrun
        wr(&mut s, MCR, MCR_LOOP | MCR_RTS); // delta CTS
        assert_eq!(rd(&mut s, IIR_FCR), IIR_RLS);
        rd(&mut s, LSR);
        assert_eq!(rd(&mut s, IIR_FCR), IIR_RDA);
        rd(&mut s, DATA);
        assert_eq!(rd(&mut s, IIR_FCR), IIR_THRE);
        assert_eq!(rd(&mut s, IIR_FCR), IIR_MS);
        rd(&mut s, MSR);
        assert_eq!(rd(&mut s, IIR_FCR), IIR_NONE);
    }

    #[test]
    fn divisor_latch_shares_offsets_with_data_and_ier() {
        let (mut s, _, sink) = uart();
        wr(&mut s, IER, 0x05);
        wr(&mut s, LCR, LCR_DLAB | 0x03);
        wr(&mut s, DATA, 0x01);
        wr(&mut s, IER, 0x00);
        assert_eq!(s.divisor(), 1, "115200 baud");
        assert_eq!((rd(&mut s, DATA), rd(&mut s, IER)), (0x01, 0x00));
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "DLL writes do not transmit"
        );
        wr(&mut s, LCR, 0x03);
        assert_eq!(rd(&mut s, IER), 0x05, "IER survived");
        assert_eq!(rd(&mut s, LCR), 0x03);
        // A 16-bit write sets both latch bytes.
        wr(&mut s, LCR, LCR_DLAB);
        s.write(DATA, &[0x80, 0x01]);
        assert_eq!(s.divisor(), 0x180);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::ports::test_util::Rng(0x16550);
        let (mut s, _, _) = uart();
        for _ in 0..50_000 {
            let w = rng.width();
            let off = rng.next() % 10;
            match rng.next() % 4 {
                0 => {
                    let b = rng.bytes(w);
                    s.enqueue_input(&b);
                }
                1 => s.read(off, &mut vec![0; w]),
                _ => s.write(off, &rng.bytes(w)),
            }
        }
    }
}
