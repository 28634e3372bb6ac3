//! The stack itself, single-threaded: frames from the guest in, frames for the guest out,
//! host sockets polled without blocking. [`crate::UserNet`] runs it on its I/O thread;
//! the tests drive it directly.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emu_devices::virtio::net::RxFrame;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpCidr,
    IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

use crate::config::{HostForward, UserNetConfig};
use crate::tcp::{new_socket, Conn, FlowKey};
use crate::udp::UdpRelay;
use crate::wire::{arp_reply, ethernet_ipv4, fill_tcp_checksum, udp_frame, ETH_HEADER_LEN};
use crate::{dhcp, dns, NetError};

/// The router's (and every virtual host's) MAC address, QEMU slirp's.
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
/// Shortest sleep between polls of idle host sockets (right after activity).
pub const MIN_POLL: Duration = Duration::from_micros(50);
/// Longest sleep between polls of idle host sockets.
pub const MAX_POLL: Duration = Duration::from_millis(4);
/// The IP MTU of the virtual link.
const MTU: usize = 1500;
/// Frames for the guest the stack holds before smoltcp is told the link is busy.
pub(crate) const OUT_CAP: usize = 512;
/// Frames the stack's own replies (ARP, DHCP, DNS, UDP) may add beyond [`OUT_CAP`].
const OUT_HARD_CAP: usize = 2 * OUT_CAP;
/// Most proxied TCP connections at once.
pub(crate) const MAX_CONNS: usize = 256;
/// Most host connects in progress.
const MAX_PENDING_CONNECTS: usize = 64;
/// Most DNS lookups in progress.
const MAX_RESOLVERS: usize = 8;
/// How long a host connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First local port of connections forwarded into the guest.
const FIRST_EPHEMERAL_PORT: u16 = 49152;

/// What helper threads hand back.
enum Event {
    Connected {
        key: FlowKey,
        result: std::io::Result<TcpStream>,
    },
    Resolved {
        to: (Ipv4Addr, u16),
        reply: Vec<u8>,
    },
}

/// Wakes the thread that runs the stack (called by helper threads).
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// Frames for the guest and how to address them.
struct Out {
    frames: VecDeque<RxFrame>,
    guest_mac: EthernetAddress,
    tso: bool,
}

impl Out {
    fn push(&mut self, frame: Vec<u8>) {
        if self.frames.len() < OUT_HARD_CAP {
            self.frames.push_back(RxFrame::new(frame));
        }
    }
}

/// smoltcp's device: IP packets from the guest, and IP packets wrapped into Ethernet frames
/// for it.
struct IpPipe {
    rx: VecDeque<Vec<u8>>,
    out: Out,
}

struct RxTok(Vec<u8>);

impl phy::RxToken for RxTok {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

struct TxTok<'a> {
    out: &'a mut Out,
    meta: PacketMeta,
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = ethernet_ipv4(GATEWAY_MAC, self.out.guest_mac, len);
        let r = f(&mut frame[ETH_HEADER_LEN..]);
        let gso_size = self.meta.segmentation_offload_size.map(|n| n.get());
        // With TSO smoltcp leaves TCP checksums to the device: segments the guest gets
        // whole are checksummed here (the device marks TSO segments partial itself).
        if self.out.tso && gso_size.is_none() {
            fill_tcp_checksum(&mut frame[ETH_HEADER_LEN..]);
        }
        self.out.frames.push_back(RxFrame {
            data: frame,
            gso_size,
        });
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

impl phy::Device for IpPipe {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            RxTok(packet),
            TxTok {
                out: &mut self.out,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (self.out.frames.len() < OUT_CAP).then(|| TxTok {
            out: &mut self.out,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        if self.out.tso {
            // smoltcp sends TCP segments of up to a whole IP packet and, as it requires
            // for segmentation offload, leaves their checksums to the device.
            caps.segmentation.tcpv4 = NonZeroUsize::new(65535);
            caps.checksum.tcp = Checksum::Rx;
        }
        caps
    }
}

/// The interface facing the guest: the router's and the DNS server's addresses, and
/// `any_ip` so it accepts segments for any destination (every TCP peer the guest talks to
/// is played by this stack).
fn build_interface(
    cfg: &UserNetConfig,
    dev: &mut IpPipe,
    now: smoltcp::time::Instant,
) -> Interface {
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut iface = Interface::new(config, dev, now);
    iface.update_ip_addrs(|addrs| {
        for a in [cfg.host, cfg.dns] {
            let _ = addrs.push(IpCidr::new(a.into(), cfg.prefix_len));
        }
    });
    iface.set_any_ip(true);
    let _ = iface.routes_mut().add_default_ipv4_route(cfg.host);
    iface
}

/// A host listener forwarding into the guest.
struct Forward {
    listener: TcpListener,
    guest: SocketAddrV4,
}

/// A guest SYN waiting for its host connect.
struct Pending {
    key: FlowKey,
    syn: Vec<u8>,
}

/// The user-mode network stack.
pub(crate) struct Stack {
    cfg: UserNetConfig,
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: IpPipe,
    conns: Vec<Conn>,
    pending: Vec<Pending>,
    forwards: Vec<Forward>,
    udp: UdpRelay,
    resolvers: usize,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    wake: Wake,
    epoch: Instant,
    next_port: u16,
}

/// Binds a hostfwd listener, retrying briefly while the port is still held by a machine
/// that is shutting down (the reboot loop builds the next machine at once).
fn bind(addr: SocketAddr) -> Result<TcpListener, NetError> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)
                    .map_err(|source| NetError::Listen { addr, source })?;
                return Ok(l);
            }
            Err(e) if e.kind() == ErrorKind::AddrInUse && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => return Err(NetError::Listen { addr, source }),
        }
    }
}

impl Stack {
    /// A stack for `cfg` whose guest has MAC `guest_mac`; helper threads call `wake` when
    /// they have results. Binds the host-forwarding listeners.
    pub fn new(cfg: &UserNetConfig, guest_mac: [u8; 6], wake: Wake) -> Result<Self, NetError> {
        let forwards = cfg
            .host_forwards
            .iter()
            .map(|f: &HostForward| {
                let listener = bind(SocketAddr::V4(SocketAddrV4::new(f.host_addr, f.host_port)))?;
                Ok(Forward {
                    listener,
                    guest: SocketAddrV4::new(f.guest_addr.unwrap_or(cfg.guest), f.guest_port),
                })
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        let mut dev = IpPipe {
            rx: VecDeque::new(),
            out: Out {
                frames: VecDeque::new(),
                guest_mac: EthernetAddress(guest_mac),
                tso: false,
            },
        };
        let epoch = Instant::now();
        let iface = build_interface(cfg, &mut dev, smoltcp::time::Instant::ZERO);
        let (events_tx, events_rx) = channel();
        Ok(Self {
            cfg: cfg.clone(),
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            conns: Vec::new(),
            pending: Vec::new(),
            forwards,
            udp: UdpRelay::default(),
            resolvers: 0,
            events_tx,
            events_rx,
            wake,
            epoch,
            next_port: FIRST_EPHEMERAL_PORT,
        })
    }

    /// Whether the guest accepts TSO segments (smoltcp then sends up to 64 KiB at once).
    /// smoltcp reads the device's capabilities once, so the interface is rebuilt; the
    /// sockets, and so the connections, carry on.
    pub fn set_tso(&mut self, on: bool) {
        if self.dev.out.tso != on {
            self.dev.out.tso = on;
            let now = self.timestamp(Instant::now());
            self.iface = build_interface(&self.cfg, &mut self.dev, now);
        }
    }

    fn timestamp(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// The next frame for the guest.
    pub fn pop_frame(&mut self) -> Option<RxFrame> {
        self.dev.out.frames.pop_front()
    }

    /// How long the stack can wait before smoltcp's next timer, if one is armed.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let ts = self.timestamp(now);
        self.iface
            .poll_delay(ts, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Whether host sockets exist that must be polled for input.
    pub fn has_host_sockets(&self) -> bool {
        !self.forwards.is_empty() || !self.udp.is_empty() || self.conns.iter().any(Conn::has_host)
    }

    /// Takes one Ethernet frame from the guest. Anything malformed or unsupported is
    /// dropped.
    pub fn handle_guest_frame(&mut self, frame: &[u8], now: Instant) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let src = eth.src_addr();
        if src.is_unicast() {
            self.dev.out.guest_mac = src;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(eth.payload()),
            EthernetProtocol::Ipv4 => self.ipv4(eth.payload(), now),
            _ => {}
        }
    }

    fn arp(&mut self, payload: &[u8]) {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            return;
        };
        let Ok(repr) = ArpRepr::parse(&packet) else {
            return;
        };
        let ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            ..
        } = repr
        else {
            return;
        };
        // Only the router and the DNS server exist on the virtual network.
        if target_protocol_addr == self.cfg.host || target_protocol_addr == self.cfg.dns {
            if let Some(reply) = arp_reply(GATEWAY_MAC, &repr) {
                self.dev.out.push(reply);
            }
        }
    }

    /// Whether `a` can be a guest's or a peer's unicast address.
    fn unicast(&self, a: Ipv4Addr) -> bool {
        let subnet_broadcast =
            Ipv4Addr::from(u32::from(self.cfg.host) | !u32::from(self.cfg.netmask()));
        !(a.is_unspecified()
            || a.is_broadcast()
            || a.is_multicast()
            || a.is_loopback()
            || a == subnet_broadcast)
    }

    /// Where a guest connection to `dst:port` goes on the host, or `None` to refuse it.
    fn host_target(&self, dst: Ipv4Addr, port: u16) -> Option<SocketAddr> {
        if port == 0 {
            None
        } else if dst == self.cfg.host {
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        } else if self.cfg.in_network(dst) || !self.unicast(dst) {
            None
        } else {
            Some(SocketAddr::new(IpAddr::V4(dst), port))
        }
    }

    fn ipv4(&mut self, payload: &[u8], now: Instant) {
        let Ok(packet) = Ipv4Packet::new_checked(payload) else {
            return;
        };
        let Ok(repr) = Ipv4Repr::parse(&packet, &ChecksumCapabilities::default()) else {
            return;
        };
        // Fragments are dropped (the guest sets DF on TCP; fragmented UDP is rare).
        if packet.more_frags() || packet.frag_offset() != 0 {
            return;
        }
        let ip = &payload[..usize::from(packet.total_len())];
        let (src, dst) = (repr.src_addr, repr.dst_addr);
        match repr.next_header {
            IpProtocol::Udp => self.udp(packet.payload(), src, dst, now),
            IpProtocol::Tcp => {
                if !self.unicast(src) || !self.unicast(dst) {
                    return;
                }
                let Ok(tcp) = TcpPacket::new_checked(packet.payload()) else {
                    return;
                };
                if tcp.syn() && !tcp.ack() && !tcp.rst() {
                    let key = FlowKey {
                        guest: (src, tcp.src_port()),
                        remote: (dst, tcp.dst_port()),
                    };
                    self.syn(key, ip);
                } else {
                    self.dev.rx.push_back(ip.to_vec());
                }
            }
            IpProtocol::Icmp
                if self.unicast(src) && (dst == self.cfg.host || dst == self.cfg.dns) =>
            {
                self.dev.rx.push_back(ip.to_vec());
            }
            _ => {}
        }
    }

    fn udp(&mut self, datagram: &[u8], src: Ipv4Addr, dst: Ipv4Addr, now: Instant) {
        let Ok(packet) = UdpPacket::new_checked(datagram) else {
            return;
        };
        let Ok(repr) = UdpRepr::parse(
            &packet,
            &src.into(),
            &dst.into(),
            &ChecksumCapabilities::default(),
        ) else {
            return;
        };
        let data = packet.payload();
        if repr.dst_port == dhcp::SERVER_PORT && (dst.is_broadcast() || dst == self.cfg.host) {
            if let Some(reply) = dhcp::answer(&self.cfg, data) {
                let frame = udp_frame(
                    (GATEWAY_MAC, EthernetAddress::BROADCAST),
                    (self.cfg.host, dhcp::SERVER_PORT),
                    (Ipv4Addr::BROADCAST, dhcp::CLIENT_PORT),
                    &reply,
                );
                self.dev.out.push(frame);
            }
            return;
        }
        if !self.unicast(src) {
            return;
        }
        let from = (src, repr.src_port);
        if dst == self.cfg.dns && repr.dst_port == dns::PORT {
            self.dns(data, from);
            return;
        }
        if let Some(target) = self.host_target(dst, repr.dst_port) {
            let remote = SocketAddrV4::new(dst, repr.dst_port);
            let guest = SocketAddrV4::new(src, repr.src_port);
            self.udp.send(now, guest, remote, target, data);
        }
    }

    fn dns(&mut self, query: &[u8], from: (Ipv4Addr, u16)) {
        match dns::parse(query) {
            dns::Request::Ignore => {}
            dns::Request::Reply(reply) => self.reply_from_dns(from, &reply),
            dns::Request::Resolve(q) => {
                if self.resolvers >= MAX_RESOLVERS {
                    self.reply_from_dns(from, &dns::busy(&q));
                    return;
                }
                let tx = self.events_tx.clone();
                let wake = self.wake.clone();
                let busy = dns::busy(&q);
                let spawned = std::thread::Builder::new()
                    .name("quetzal-net-dns".into())
                    .spawn(move || {
                        let reply = dns::resolve(&q);
                        let _ = tx.send(Event::Resolved { to: from, reply });
                        wake();
                    });
                if spawned.is_ok() {
                    self.resolvers += 1;
                } else {
                    self.reply_from_dns(from, &busy);
                }
            }
        }
    }

    fn reply_from_dns(&mut self, to: (Ipv4Addr, u16), reply: &[u8]) {
        let frame = udp_frame(
            (GATEWAY_MAC, self.dev.out.guest_mac),
            (self.cfg.dns, dns::PORT),
            to,
            reply,
        );
        self.dev.out.push(frame);
    }

    /// A guest SYN: passed to smoltcp if its connection exists, held while the host
    /// connection is made, or passed on unanswerable (smoltcp resets it) when refused.
    fn syn(&mut self, key: FlowKey, ip: &[u8]) {
        if self.conns.iter().any(|c| c.key == Some(key)) {
            self.dev.rx.push_back(ip.to_vec());
            return;
        }
        if self.pending.iter().any(|p| p.key == key) {
            // A retransmission while the host connect is under way.
            return;
        }
        let target = self.host_target(key.remote.0, key.remote.1);
        let room =
            self.pending.len() < MAX_PENDING_CONNECTS && self.conns.len() < crate::stack::MAX_CONNS;
        let Some(target) = target.filter(|_| room) else {
            self.dev.rx.push_back(ip.to_vec());
            return;
        };
        let tx = self.events_tx.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("quetzal-net-connect".into())
            .spawn(move || {
                let result = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT);
                let _ = tx.send(Event::Connected { key, result });
                wake();
            });
        if spawned.is_ok() {
            self.pending.push(Pending {
                key,
                syn: ip.to_vec(),
            });
        } else {
            self.dev.rx.push_back(ip.to_vec());
        }
    }

    fn connected(&mut self, key: FlowKey, result: std::io::Result<TcpStream>, now: Instant) {
        let Some(i) = self.pending.iter().position(|p| p.key == key) else {
            return;
        };
        let pending = self.pending.swap_remove(i);
        if let Ok(stream) = result {
            let ok = stream.set_nonblocking(true).is_ok();
            let _ = stream.set_nodelay(true);
            let mut sock = new_socket();
            let listen = IpListenEndpoint {
                addr: Some(key.remote.0.into()),
                port: key.remote.1,
            };
            if ok && sock.listen(listen).is_ok() {
                let handle = self.sockets.add(sock);
                self.conns.push(Conn::new(handle, stream, Some(key), now));
            }
        }
        // With a listener the SYN opens the connection; without one smoltcp answers it
        // with a reset, which the guest sees as "connection refused".
        self.dev.rx.push_front(pending.syn);
    }

    fn accept_forwards(&mut self, now: Instant) -> bool {
        let mut any = false;
        for i in 0..self.forwards.len() {
            loop {
                let (stream, guest) = match self.forwards[i].listener.accept() {
                    Ok((s, _)) => (s, self.forwards[i].guest),
                    Err(_) => break,
                };
                any = true;
                if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let port = self.ephemeral_port();
                let mut sock = new_socket();
                let local = IpListenEndpoint {
                    addr: Some(self.cfg.host.into()),
                    port,
                };
                let remote = (smoltcp::wire::IpAddress::Ipv4(*guest.ip()), guest.port());
                if sock.connect(self.iface.context(), remote, local).is_ok() {
                    let handle = self.sockets.add(sock);
                    self.conns.push(Conn::new(handle, stream, None, now));
                }
            }
        }
        any
    }

    fn ephemeral_port(&mut self) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            let taken = self.conns.iter().any(|c| {
                c.key.is_none()
                    && self
                        .sockets
                        .get::<tcp::Socket>(c.handle)
                        .local_endpoint()
                        .is_some_and(|e| e.port == port)
            });
            if !taken {
                return port;
            }
        }
    }

    /// Runs everything that is ready: helper results, new forwarded connections, smoltcp,
    /// the proxied connections and the UDP relay. Returns whether anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut progress = false;
        while let Ok(event) = self.events_rx.try_recv() {
            progress = true;
            match event {
                Event::Connected { key, result } => self.connected(key, result, now),
                Event::Resolved { to, reply } => {
                    self.resolvers = self.resolvers.saturating_sub(1);
                    self.reply_from_dns(to, &reply);
                }
            }
        }
        progress |= self.accept_forwards(now);
        let ts = self.timestamp(now);
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        let mut finished = Vec::new();
        for (i, conn) in self.conns.iter_mut().enumerate() {
            let sock = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            let pumped = conn.pump(sock, now);
            progress |= pumped.progress;
            if pumped.finished {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            let conn = self.conns.swap_remove(i);
            self.sockets.remove(conn.handle);
        }
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        let out = &mut self.dev.out;
        progress |= self.udp.poll(now, |remote, guest, data| {
            let frame = udp_frame(
                (GATEWAY_MAC, out.guest_mac),
                (*remote.ip(), remote.port()),
                (*guest.ip(), guest.port()),
                data,
            );
            out.push(frame);
        });
        progress
    }
}
