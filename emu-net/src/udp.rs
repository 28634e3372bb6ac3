//! The UDP relay: each flow (guest port, destination as the guest sees it) gets a host
//! socket connected to the real destination, so only that destination's replies come
//! back; flows idle for [`FLOW_IDLE`] are closed, and at most [`MAX_FLOWS`] exist.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::wire::MAX_UDP_PAYLOAD;

/// A flow with no traffic for this long is closed.
pub(crate) const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Most flows at once; a new one beyond this closes the least recently used.
pub(crate) const MAX_FLOWS: usize = 64;
/// Most datagrams taken from one host socket per poll, so one flow cannot starve others.
const MAX_DATAGRAMS_PER_POLL: usize = 64;

struct Flow {
    sock: UdpSocket,
    guest: SocketAddrV4,
    /// The destination as the guest addressed it (replies come from here).
    remote: SocketAddrV4,
    last_used: Instant,
}

/// All relayed flows.
#[derive(Default)]
pub(crate) struct UdpRelay {
    flows: Vec<Flow>,
}

impl UdpRelay {
    /// Sends `payload` from the guest's `guest` address and port to `remote` (as the guest
    /// sees it),
    /// reaching it at `target` on the host. Host errors drop the datagram, as a network
    /// would.
    pub fn send(
        &mut self,
        now: Instant,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        target: SocketAddr,
        payload: &[u8],
    ) {
        let found = self
            .flows
            .iter()
            .position(|f| f.guest == guest && f.remote == remote);
        let index = match found {
            Some(i) => i,
            None => {
                let Some(sock) = open(target) else { return };
                if self.flows.len() >= MAX_FLOWS {
                    let oldest = self
                        .flows
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, f)| f.last_used)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    self.flows.swap_remove(oldest);
                }
                self.flows.push(Flow {
                    sock,
                    guest,
                    remote,
                    last_used: now,
                });
                self.flows.len() - 1
            }
        };
        let flow = &mut self.flows[index];
        flow.last_used = now;
        let _ = flow.sock.send(payload);
    }

    /// Takes the datagrams waiting on the host sockets, handing each to `deliver` as
    /// (source as the guest sees it, guest address and port, payload), and closes idle
    /// flows. Returns whether anything arrived.
    pub fn poll(
        &mut self,
        now: Instant,
        mut deliver: impl FnMut(SocketAddrV4, SocketAddrV4, &[u8]),
    ) -> bool {
        let mut buf = [0u8; MAX_UDP_PAYLOAD];
        let mut any = false;
        self.flows.retain_mut(|flow| {
            for _ in 0..MAX_DATAGRAMS_PER_POLL {
                match flow.sock.recv(&mut buf) {
                    Ok(n) => {
                        any = true;
                        flow.last_used = now;
                        deliver(flow.remote, flow.guest, &buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // ICMP errors surface as recv errors on a connected socket (refused,
                    // unreachable): the guest just sees no answer.
                    Err(_) => break,
                }
            }
            now.duration_since(flow.last_used) < FLOW_IDLE
        });
        any
    }

    /// Whether any flow exists (the I/O thread must poll host sockets).
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// A non-blocking host socket connected to `target`, bound to the loopback interface when
/// the target is on it.
fn open(target: SocketAddr) -> Option<UdpSocket> {
    let local = if target.ip().is_loopback() {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    };
    let sock = UdpSocket::bind(local).ok()?;
    sock.connect(target).ok()?;
    sock.set_nonblocking(true).ok()?;
    Some(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_go_out_and_replies_come_back_to_the_flow() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        let seen_as = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), target.port());
        let mut relay = UdpRelay::default();
        let now = Instant::now();
        let guest = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 5000);
        relay.send(now, guest, seen_as, target, b"ping");
        let mut buf = [0u8; 64];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.is_empty() && Instant::now() < deadline {
            relay.poll(Instant::now(), |src, to, data| {
                got.push((src, to, data.to_vec()))
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, vec![(seen_as, guest, b"pong".to_vec())]);
        // Idle flows close.
        relay.poll(now + FLOW_IDLE + Duration::from_secs(1), |_, _, _| {});
        assert!(relay.is_empty());
    }

    #[test]
    fn the_number_of_flows_is_capped() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        let mut relay = UdpRelay::default();
        let now = Instant::now();
        for port in 0..(MAX_FLOWS as u16 + 10) {
            let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), target.port());
            let guest = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 1000 + port);
            relay.send(now, guest, remote, target, b"x");
        }
        assert_eq!(relay.flows.len(), MAX_FLOWS);
    }
}
