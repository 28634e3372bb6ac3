//! The stack end to end, single-threaded, against a guest played by a second smoltcp
//! interface (Ethernet, its own DHCP client, ARP and TCP): the guest configures itself by
//! DHCP, fetches from a server on the host's loopback through the router's address, is
//! refused where nothing listens, resolves `localhost`, relays UDP, serves a forwarded
//! port; and garbage frames never panic the stack. Host peers are std sockets on
//! 127.0.0.1 only.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::config::{HostForward, UserNetConfig};
use crate::stack::Stack;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const DEADLINE: Duration = Duration::from_secs(20);

/// The guest's NIC: frames to and from the stack.
#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        // Room for the stack's 64 KiB segments when TSO is on.
        c.max_transmission_unit = 65535 + 14;
        c
    }
}

struct Net {
    stack: Stack,
    guest: Interface,
    sockets: SocketSet<'static>,
    wire: Wire,
    epoch: Instant,
    /// Largest frame the stack sent, and whether any carried a segment size.
    largest: usize,
    gso_seen: bool,
}

impl Net {
    fn new(cfg: UserNetConfig) -> Net {
        let stack = Stack::new(&cfg, GUEST_MAC, Arc::new(|| {})).unwrap();
        let mut wire = Wire::default();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let guest = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        Net {
            stack,
            guest,
            sockets: SocketSet::new(Vec::new()),
            wire,
            epoch: Instant::now(),
            largest: 0,
            gso_seen: false,
        }
    }

    /// A guest configured statically, as DHCP would.
    fn configured(cfg: UserNetConfig) -> Net {
        let mut n = Net::new(cfg);
        n.guest.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
                .unwrap();
        });
        n.guest
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(10, 0, 2, 2))
            .unwrap();
        n
    }

    fn step(&mut self) {
        let now = Instant::now();
        let ts =
            smoltcp::time::Instant::from_micros(now.duration_since(self.epoch).as_micros() as i64);
        self.guest.poll(ts, &mut self.wire, &mut self.sockets);
        for f in self.wire.tx.drain(..) {
            self.stack.handle_guest_frame(&f, now);
        }
        self.stack.poll(now);
        while let Some(mut f) = self.stack.pop_frame() {
            self.largest = self.largest.max(f.data.len());
            if f.gso_size.is_some() {
                // What the guest's stack does with a segment the device marked partial
                // (this guest verifies checksums).
                self.gso_seen = true;
                crate::wire::fill_tcp_checksum(&mut f.data[14..]);
            }
            self.wire.rx.push_back(f.data);
        }
    }

    /// Steps until `done` holds, failing after [`DEADLINE`].
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Net) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            self.step();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn tcp(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        self.sockets.add(s)
    }

    fn connect(&mut self, to: (Ipv4Addr, u16), local_port: u16) -> SocketHandle {
        let h = self.tcp();
        let cx = self.guest.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, IpEndpoint::new(to.0.into(), to.1), local_port)
            .unwrap();
        h
    }

    fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}

/// Deterministic bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 256) as u8).collect()
}

#[test]
fn dhcp_gives_the_guest_its_address_router_and_dns_server() {
    let mut n = Net::new(UserNetConfig::default());
    let dhcp = n.sockets.add(dhcpv4::Socket::new());
    let mut got = None;
    n.run_until("a DHCP lease", |n| {
        if let Some(dhcpv4::Event::Configured(c)) = n.sockets.get_mut::<dhcpv4::Socket>(dhcp).poll()
        {
            got = Some((c.address, c.router, c.dns_servers.to_vec()));
        }
        got.is_some()
    });
    let (address, router, dns) = got.unwrap();
    assert_eq!(address.address(), Ipv4Addr::new(10, 0, 2, 15));
    assert_eq!(address.prefix_len(), 24);
    assert_eq!(router, Some(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
}

/// A host server on 127.0.0.1 that reads a line and answers with `reply`, then closes.
fn serve_once(reply: Vec<u8>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        s.write_all(&reply).unwrap();
        line
    });
    (port, t)
}

fn fetch(n: &mut Net, h: SocketHandle, request: &[u8]) -> Vec<u8> {
    n.run_until("the connection", |n| n.sock(h).may_send());
    assert_eq!(n.sock(h).send_slice(request).unwrap(), request.len());
    let mut got = Vec::new();
    n.run_until("the whole reply and end of stream", |n| {
        let s = n.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        !s.may_recv()
    });
    got
}

#[test]
fn guest_tcp_to_the_router_reaches_a_server_on_the_hosts_loopback() {
    let data = pattern(3 << 20);
    let (port, server) = serve_once(data.clone());
    let mut n = Net::configured(UserNetConfig::default());
    let h = n.connect((Ipv4Addr::new(10, 0, 2, 2), port), 40000);
    let got = fetch(&mut n, h, b"GET /file\n");
    assert_eq!(server.join().unwrap(), b"GET /file\n");
    assert!(got == data, "got {} bytes, want {}", got.len(), data.len());
    assert!(n.largest <= 1514, "no frame beyond the MTU without TSO");
    n.sock(h).close();
    n.run_until("the connection to close", |n| {
        matches!(n.sock(h).state(), tcp::State::TimeWait | tcp::State::Closed)
    });
}

#[test]
fn with_tso_the_guest_gets_segments_larger_than_the_mtu() {
    let data = pattern(2 << 20);
    let (port, server) = serve_once(data.clone());
    let mut n = Net::configured(UserNetConfig::default());
    n.stack.set_tso(true);
    let h = n.connect((Ipv4Addr::new(10, 0, 2, 2), port), 40001);
    let got = fetch(&mut n, h, b"GET\n");
    server.join().unwrap();
    assert!(got == data, "got {} bytes, want {}", got.len(), data.len());
    assert!(n.gso_seen, "no segment carried a segment size");
    assert!(n.largest > 1514, "largest frame {}", n.largest);
}

#[test]
fn connections_where_nothing_listens_are_refused() {
    // A port on the host's loopback that nothing listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut n = Net::configured(UserNetConfig::default());
    let to_host = n.connect((Ipv4Addr::new(10, 0, 2, 2), port), 40010);
    // The DNS server has no TCP.
    // (Other addresses of the network do not answer ARP, as with slirp.)
    let to_dns = n.connect((Ipv4Addr::new(10, 0, 2, 3), 80), 40011);
    n.run_until("two resets", |n| {
        [to_host, to_dns]
            .iter()
            .all(|&h| n.sock(h).state() == tcp::State::Closed)
    });
}

#[test]
fn a_forwarded_host_port_reaches_a_server_in_the_guest() {
    let host_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = UserNetConfig {
        host_forwards: vec![HostForward {
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_addr: None,
            guest_port: 8022,
        }],
        ..UserNetConfig::default()
    };
    let mut n = Net::configured(cfg);
    let h = n.tcp();
    n.sock(h).listen(8022).unwrap();
    let message = pattern(200_000);
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"hello guest\n").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut heard = Vec::new();
    n.run_until("the greeting", |n| {
        let s = n.sock(h);
        if s.can_recv() {
            s.recv(|b| {
                heard.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        heard.ends_with(b"\n")
    });
    assert_eq!(heard, b"hello guest\n");
    let peer = n.sock(h).remote_endpoint().unwrap();
    assert_eq!(
        peer.addr,
        IpAddress::v4(10, 0, 2, 2),
        "forwarded from the router"
    );
    let mut sent = 0;
    n.run_until("the reply to go out", |n| {
        let s = n.sock(h);
        if sent < message.len() && s.can_send() {
            sent += s.send_slice(&message[sent..]).unwrap();
        }
        if sent == message.len() {
            s.close();
        }
        sent == message.len() && !s.may_send()
    });
    let end = Instant::now() + DEADLINE;
    while !client.is_finished() {
        assert!(
            Instant::now() < end,
            "the host client never saw end of stream"
        );
        n.step();
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(client.join().unwrap() == message);
}

#[test]
fn dns_answers_localhost_and_udp_is_relayed_to_the_host() {
    let mut n = Net::configured(UserNetConfig::default());
    let u = n.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    ));
    n.sockets.get_mut::<udp::Socket>(u).bind(5353).unwrap();
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9];
    query.extend_from_slice(b"localhost");
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    n.sockets
        .get_mut::<udp::Socket>(u)
        .send_slice(&query, IpEndpoint::new(IpAddress::v4(10, 0, 2, 3), 53))
        .unwrap();
    let mut answer = Vec::new();
    n.run_until("the DNS answer", |n| {
        if let Ok((data, meta)) = n.sockets.get_mut::<udp::Socket>(u).recv() {
            assert_eq!(
                meta.endpoint,
                IpEndpoint::new(IpAddress::v4(10, 0, 2, 3), 53)
            );
            answer = data.to_vec();
        }
        !answer.is_empty()
    });
    assert_eq!(&answer[..2], &[0x12, 0x34]);
    assert_eq!(answer[3] & 0xf, 0, "NOERROR");
    assert!(answer.windows(4).any(|w| w == [127, 0, 0, 1]));

    // UDP to the router reaches the host's loopback and the reply comes back.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    n.sockets
        .get_mut::<udp::Socket>(u)
        .send_slice(b"ping", IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), port))
        .unwrap();
    echo.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = None;
    let end = Instant::now() + DEADLINE;
    while got.is_none() {
        assert!(Instant::now() < end, "the datagram never reached the host");
        n.step();
        echo.set_nonblocking(true).unwrap();
        let mut b = [0u8; 16];
        if let Ok((len, from)) = echo.recv_from(&mut b) {
            got = Some((b[..len].to_vec(), from));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let (data, from) = got.unwrap();
    assert_eq!(data, b"ping");
    echo.send_to(b"pong", from).unwrap();
    let mut reply = Vec::new();
    n.run_until("the relayed reply", |n| {
        if let Ok((data, meta)) = n.sockets.get_mut::<udp::Socket>(u).recv() {
            assert_eq!(
                meta.endpoint,
                IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), port)
            );
            reply = data.to_vec();
        }
        !reply.is_empty()
    });
    assert_eq!(reply, b"pong");
}

/// A small xorshift generator, so the garbage is the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_frames_never_panic_the_stack() {
    // Real frames to mutate: what a guest sends while it runs DHCP and opens a
    // connection (ARP, DHCP, a SYN, ACKs), and a DNS query.
    let (port, server) = serve_once(b"reply".to_vec());
    let mut n = Net::configured(UserNetConfig::default());
    n.sockets.add(dhcpv4::Socket::new());
    let h = n.connect((Ipv4Addr::new(10, 0, 2, 2), port), 40020);
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let end = Instant::now() + DEADLINE;
    while !(n.sock(h).may_send() && seeds.len() >= 4) {
        assert!(Instant::now() < end, "no connection to take frames from");
        let now = Instant::now();
        let ts =
            smoltcp::time::Instant::from_micros(now.duration_since(n.epoch).as_micros() as i64);
        n.guest.poll(ts, &mut n.wire, &mut n.sockets);
        for f in n.wire.tx.drain(..) {
            n.stack.handle_guest_frame(&f, now);
            seeds.push(f);
        }
        n.stack.poll(now);
        while let Some(f) = n.stack.pop_frame() {
            n.wire.rx.push_back(f.data);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    n.sock(h).send_slice(b"x\n").unwrap();
    n.run_until("the reply", |n| n.sock(h).can_recv());
    server.join().unwrap();
    seeds.push(crate::wire::udp_frame(
        (EthernetAddress(GUEST_MAC), crate::stack::GATEWAY_MAC),
        (Ipv4Addr::new(10, 0, 2, 15), 5000),
        (Ipv4Addr::new(10, 0, 2, 3), 53),
        &[
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ],
    ));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let now = Instant::now();
    for round in 0..20_000usize {
        let mut f = seeds[round % seeds.len()].clone();
        match rng.next() % 4 {
            0 => {
                for _ in 0..1 + rng.next() % 8 {
                    let i = (rng.next() as usize) % f.len().max(1);
                    if let Some(b) = f.get_mut(i) {
                        *b ^= rng.next() as u8;
                    }
                }
            }
            1 => f.truncate((rng.next() as usize) % (f.len() + 1)),
            2 => f.extend((0..rng.next() % 64).map(|_| rng.next() as u8)),
            _ => f = (0..rng.next() % 200).map(|_| rng.next() as u8).collect(),
        }
        n.stack.handle_guest_frame(&f, now);
        if round % 64 == 0 {
            n.stack.poll(now);
            while n.stack.pop_frame().is_some() {}
        }
    }
    n.stack.poll(Instant::now());
}
