//! One proxied TCP connection: a smoltcp socket facing the guest and a non-blocking host
//! `TcpStream`, with bytes pumped both ways and each side's end of stream passed on.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};

/// Receive buffer of the guest-facing socket (the window the guest may fill).
const RX_BUFFER: usize = 256 * 1024;
/// Transmit buffer of the guest-facing socket (how much may be in flight to the guest).
const TX_BUFFER: usize = 512 * 1024;
/// A connection still not established after this long is given up.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest's end and the remote end (as the guest addressed it) of a connection the guest
/// opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    pub guest: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
}

/// A guest-facing socket with the proxy's settings: Nagle off (the host side already
/// batches), the stack's default delayed ACKs.
pub(crate) fn new_socket() -> Socket<'static> {
    let mut s = Socket::new(
        SocketBuffer::new(vec![0u8; RX_BUFFER]),
        SocketBuffer::new(vec![0u8; TX_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

/// A proxied connection.
pub(crate) struct Conn {
    pub handle: SocketHandle,
    /// For connections the guest opened, the flow (so a retransmitted SYN finds it).
    pub key: Option<FlowKey>,
    /// The host side; `None` once both directions are finished or it failed.
    host: Option<TcpStream>,
    established: bool,
    /// The host sent its end of stream and the guest-facing socket was closed.
    host_eof: bool,
    /// The guest sent its end of stream and the host side's writing half was shut down.
    guest_eof: bool,
    created: Instant,
}

/// What one [`Conn::pump`] did.
pub(crate) struct Pumped {
    /// Bytes moved or a state passed on.
    pub progress: bool,
    /// The connection is over: remove its socket.
    pub finished: bool,
}

impl Conn {
    /// A connection over `host`, whose guest-facing socket is `handle`.
    pub fn new(handle: SocketHandle, host: TcpStream, key: Option<FlowKey>, now: Instant) -> Self {
        Self {
            handle,
            key,
            host: Some(host),
            established: false,
            host_eof: false,
            guest_eof: false,
            created: now,
        }
    }

    /// Moves what can be moved between the two sides without blocking.
    pub fn pump(&mut self, sock: &mut Socket<'_>, now: Instant) -> Pumped {
        let mut progress = false;
        let state = sock.state();
        if state == State::Closed {
            self.host = None;
            return Pumped {
                progress: false,
                finished: true,
            };
        }
        if !self.established {
            if matches!(state, State::Listen | State::SynSent | State::SynReceived) {
                if now.duration_since(self.created) > HANDSHAKE_TIMEOUT {
                    sock.abort();
                }
                return Pumped {
                    progress: false,
                    finished: false,
                };
            }
            self.established = true;
        }
        let Some(host) = self.host.as_mut() else {
            return Pumped {
                progress: false,
                finished: false,
            };
        };
        let mut failed = false;

        // Guest to host.
        while sock.can_recv() {
            let result = sock.recv(|buf| match host.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match result {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => progress = true,
                Ok(Err(e)) if would_block(&e) => break,
                Ok(Err(_)) => {
                    failed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Once established, "may not receive and nothing buffered" means the guest sent FIN.
        if !failed && !self.guest_eof && !sock.may_recv() && !sock.can_recv() {
            let _ = host.shutdown(Shutdown::Write);
            self.guest_eof = true;
            progress = true;
        }

        // Host to guest.
        while !failed && !self.host_eof && sock.can_send() {
            let result = sock.send(|buf| {
                if buf.is_empty() {
                    return (0, Err(ErrorKind::WouldBlock.into()));
                }
                match host.read(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match result {
                Ok(Ok(0)) => {
                    self.host_eof = true;
                    sock.close();
                    progress = true;
                }
                Ok(Ok(_)) => progress = true,
                Ok(Err(e)) if would_block(&e) => break,
                Ok(Err(_)) => failed = true,
                Err(_) => break,
            }
        }

        if failed {
            // The host side broke: reset the guest's connection.
            sock.abort();
            self.host = None;
            progress = true;
        } else if self.host_eof && self.guest_eof {
            self.host = None;
        }
        Pumped {
            progress,
            finished: false,
        }
    }

    /// Whether the host side is still open (and must be polled).
    pub fn has_host(&self) -> bool {
        self.host.is_some()
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}
