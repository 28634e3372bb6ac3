//! User-mode networking for Quetzal's virtio-net: the guest gets a network that needs no
//! root, no TAP device and no host configuration, following QEMU's "slirp" conventions.
//!
//! # What the guest sees
//!
//! A /24 network (10.0.2.0/24 by default) with a router at 10.0.2.2 that is also the host,
//! a DNS server at 10.0.2.3, and itself at 10.0.2.15:
//!
//! - **DHCP** (UDP 67): DISCOVER gets an OFFER of the guest address with the router, the DNS
//!   server, a /24 mask and a one-day lease; REQUEST for that address gets an ACK, for any
//!   other a NAK; INFORM gets an ACK. Replies are broadcast.
//! - **ARP** for the router and the DNS server is answered with the router's MAC
//!   ([`GATEWAY_MAC`]); no other address of the network exists. Everything beyond the
//!   network is reached through the router.
//! - **TCP** to any address and port is proxied to a host socket: the router's address
//!   maps to the host's 127.0.0.1 (so `10.0.2.2:8080` reaches a server on the host's
//!   loopback), other addresses are connected to as they are. The guest's SYN is held until
//!   the host connection is made, so a refused host connection is a refused guest
//!   connection (RST), as with slirp. The DNS server's address and other addresses of the
//!   virtual network refuse TCP.
//! - **UDP** to the DNS server's port 53 is answered by the host's resolver (below); UDP to
//!   other addresses is relayed through a host UDP socket per flow (router → 127.0.0.1),
//!   replies coming back from the address the guest sent to.
//! - **DNS**: A and AAAA queries are answered with what the host's own resolver says
//!   (`getaddrinfo` through `std::net::ToSocketAddrs`, run on a helper thread): whatever the
//!   host resolves (its /etc/hosts, its DNS servers, mDNS on macOS) the guest resolves,
//!   without reading resolv.conf or needing a reachable DNS server address. Other query
//!   types get NOTIMP; a name the host cannot resolve gets NXDOMAIN.
//! - **ICMP** echo to the router and the DNS server is answered (by smoltcp); other ICMP is
//!   dropped (relaying it would need raw sockets).
//! - **Host forwarding** ([`HostForward`], QEMU's `hostfwd=tcp:[ADDR]:PORT-[GADDR]:GPORT`):
//!   a host listener whose connections are proxied to the guest's port, appearing in the
//!   guest to come from the router.
//!
//! # How it is built
//!
//! - **smoltcp** terminates the guest's TCP: an [`smoltcp::iface::Interface`] on an IP
//!   medium with `any_ip`, so it accepts segments for any destination. Ethernet and ARP
//!   are handled here (the guest's MAC is learnt from its frames), and UDP (DHCP, DNS and
//!   the relay) is parsed and built here with smoltcp's `wire` module, so smoltcp only
//!   sees TCP and ICMP. Each guest connection is a smoltcp socket listening on exactly the
//!   destination the guest asked for, created once the host side is connected.
//! - **One I/O thread per device** ([`UserNet`]) owns the stack and every host socket.
//!   The device hands it frames through a queue and a condition variable; frames for the
//!   guest go back through a bounded queue, and the thread tells the device through its
//!   [`RxNotifier`](emu_devices::virtio::net::RxNotifier), which delivers them and raises
//!   the interrupt even when the guest is idle. smoltcp's own timers (retransmission,
//!   delayed ACKs, TIME-WAIT) bound how long the thread sleeps.
//! - **Portable host I/O.** Host sockets are `std::net` sockets in non-blocking mode, the
//!   same code on Linux and macOS; `std` has no readiness API (no poll, epoll or kqueue),
//!   so the thread polls them: again at once after any progress, otherwise after a sleep
//!   that doubles from [`MIN_POLL`] to [`MAX_POLL`] while nothing happens (and without a
//!   host socket it sleeps until smoltcp or the device wakes it). Under load it never
//!   sleeps; idle, it wakes a few hundred times a second. Connecting and resolving, which
//!   can block for seconds, run on short-lived helper threads that wake the I/O thread
//!   when they are done.
//! - **Bounded memory.** Queues between the device and the thread, the number of
//!   connections, relayed UDP flows, pending connects and resolver threads are all capped;
//!   beyond a cap frames are dropped (TCP retransmits) or connections refused. Every frame
//!   from the guest is parsed with checked `wire` accessors: garbage is dropped, never a
//!   panic.
//! - **Offloads.** When the guest accepts TSO ([`GuestOffloads::tso4`]
//!   (emu_devices::virtio::net::GuestOffloads)), smoltcp is told the device segments TCP,
//!   so it sends the guest segments of up to 64 KiB marked with the MSS; the guest takes
//!   each as one packet.

mod backend;
mod config;
mod dhcp;
mod dns;
mod stack;
mod tcp;
mod udp;
mod wire;

#[cfg(test)]
mod tests;

pub use backend::UserNet;
pub use config::{HostForward, HostForwardError, UserNetConfig};
pub use stack::{GATEWAY_MAC, MAX_POLL, MIN_POLL};

/// Why user-mode networking could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A host-forwarding listener could not be bound (the port is taken, or not allowed).
    #[error("cannot listen on {addr} for hostfwd: {source}")]
    Listen {
        /// The host address and port.
        addr: std::net::SocketAddr,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The I/O thread could not be started.
    #[error("cannot start the network thread: {0}")]
    Thread(#[source] std::io::Error),
}
