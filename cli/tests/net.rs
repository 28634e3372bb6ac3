//! virtio-net with user-mode networking end to end: the `quetzal` binary boots Debian 12's
//! stock cloud kernel (its initramfs loads `virtio_net`), and
//!
//! - the guest configures `eth0` by DHCP (busybox `udhcpc`), resolves `localhost` through
//!   the DNS server at 10.0.2.3, and fetches a file with busybox `wget` from an HTTP server
//!   this test runs on the host's loopback, through the router address 10.0.2.2; the
//!   SHA-256 it prints is the host's;
//! - the host connects through a forwarded port (`hostfwd=tcp:127.0.0.1:PORT-:8000`) to
//!   busybox `nc -l` in the guest and receives exactly what it sends;
//! - bad `-netdev` / `-device virtio-net-device` flags and a forwarded port that is taken
//!   are one-line errors with exit status 1.
//!
//! Every host socket here is on 127.0.0.1.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{assert_clean_run, assert_one_line_error, boot_with, find_line, image, noise};
use test_images::Flavour;

/// How long the host side waits for the guest before failing (far above a normal boot).
const PATIENCE: Duration = Duration::from_secs(120);

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// A minimal HTTP/1.0 server on 127.0.0.1 serving `body` at `/data` (404 elsewhere) until
/// `stop` is set; returns its port and the thread.
fn http_server(body: Vec<u8>, stop: Arc<AtomicBool>) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the HTTP server");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let port = listener.local_addr().expect("its address").port();
    let thread = std::thread::spawn(move || {
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) && start.elapsed() < common::DEADLINE {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = serve(stream, &body);
        }
    });
    (port, thread)
}

fn serve(stream: TcpStream, body: &[u8]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut out = stream;
    if request.split_whitespace().nth(1) == Some("/data") {
        write!(
            out,
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)?;
    } else {
        out.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
    }
    out.flush()
}

/// Shell lines that bring `eth0` up by DHCP, then print the lease as `LEASE ...`.
const DHCP: &str = r#"ip link set lo up
ip link set eth0 up
cat > /tmp/udhcpc.sh <<'EOF'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
ip route add default via "$router"
echo "nameserver $dns" > /etc/resolv.conf
echo "LEASE ip=$ip mask=$mask router=$router dns=$dns" > /tmp/lease
EOF
chmod +x /tmp/udhcpc.sh
udhcpc -i eth0 -s /tmp/udhcpc.sh -f -q -n -t 10 -T 1 >/dev/null 2>&1
cat /tmp/lease
"#;

/// The guest gets 10.0.2.15 by DHCP, resolves `localhost` through 10.0.2.3, and fetches
/// 4 MiB from an HTTP server on the host's loopback through 10.0.2.2; its SHA-256 is the
/// host's.
#[test]
fn the_guest_gets_an_address_by_dhcp_and_fetches_a_host_file_through_the_router() {
    let image = image(Flavour::Cloud);
    let body = noise(4 << 20, 0x05ee_d0e7);
    let stop = Arc::new(AtomicBool::new(false));
    let (port, server) = http_server(body.clone(), stop.clone());
    let script = format!(
        "set -e\n{DHCP}\
         echo \"DNS=$(nslookup localhost 10.0.2.3 2>&1 | grep -c 127.0.0.1)\"\n\
         echo \"FETCH=$(wget -q -O - http://10.0.2.2:{port}/data | sha256sum)\"\n"
    );
    let started = Instant::now();
    let run = boot_with(
        image,
        &script,
        &[
            "-netdev".as_ref(),
            "user,id=n0".as_ref(),
            "-device".as_ref(),
            "virtio-net-device,netdev=n0".as_ref(),
        ],
    );
    eprintln!("boot, DHCP, DNS and a 4 MiB fetch: {:?}", started.elapsed());
    stop.store(true, Ordering::SeqCst);
    server.join().expect("the HTTP server thread");
    assert_clean_run(&run, &[]);
    assert_eq!(
        find_line(&run, "LEASE ").1,
        "ip=10.0.2.15 mask=24 router=10.0.2.2 dns=10.0.2.3",
        "{}",
        run.transcript()
    );
    assert_ne!(find_line(&run, "DNS=").1, "0", "{}", run.transcript());
    let (_, fetched) = find_line(&run, "FETCH=");
    assert_eq!(
        fetched.split_whitespace().next(),
        Some(test_images::fetch::sha256_hex(&body).as_str()),
        "the guest's SHA-256 of the fetched file differs from the host's\n{}",
        run.transcript()
    );
}

/// The host connects to a forwarded port and reads what busybox `nc -l` in the guest
/// sends (`seq 1 100000`, 575 KiB): the bytes expected, which hash as the guest's do.
#[test]
fn the_host_reaches_a_server_in_the_guest_through_a_forwarded_port() {
    let image = image(Flavour::Cloud);
    let port = free_port();
    // A static address this time (the DHCP test covers DHCP), so the guest listens sooner.
    let script = "set -e\n\
                  ip link set lo up\n\
                  ip link set eth0 up\n\
                  ip addr add 10.0.2.15/24 dev eth0\n\
                  ip route add default via 10.0.2.2\n\
                  seq 1 100000 > /tmp/payload\n\
                  echo \"PAYLOAD=$(sha256sum /tmp/payload)\"\n\
                  nc -l -p 8000 < /tmp/payload\n\
                  echo SERVED\n";
    let fwd = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8000");
    let args: Vec<String> = vec![
        "-netdev".into(),
        fwd,
        "-device".into(),
        "virtio-net-device,netdev=n0,mac=52:54:00:ab:cd:ef".into(),
    ];
    let started = Instant::now();
    let guest = std::thread::spawn(move || {
        let extra: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        boot_with(image, script, &extra)
    });
    // Until the guest listens, a forwarded connection is reset and reads nothing: retry.
    let mut received = Vec::new();
    while received.is_empty() && started.elapsed() < PATIENCE && !guest.is_finished() {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = s.read_to_end(&mut received);
        }
        if received.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let run = guest.join().expect("the quetzal thread");
    eprintln!(
        "boot and a 575 KiB transfer out of the guest: {:?}",
        started.elapsed()
    );
    assert_clean_run(&run, &[]);
    assert!(run.stdout.contains("SERVED"), "{}", run.transcript());
    let (_, hash) = find_line(&run, "PAYLOAD=");
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert!(
        received == expected.as_bytes(),
        "received {} bytes, want {}\n{}",
        received.len(),
        expected.len(),
        run.transcript()
    );
    assert_eq!(
        hash.split_whitespace().next(),
        Some(test_images::fetch::sha256_hex(&received).as_str()),
        "the host received other bytes than the guest sent\n{}",
        run.transcript()
    );
}

/// Bad network flags are one-line errors with exit status 1, before anything boots.
#[test]
fn bad_network_flags_are_one_line_errors() {
    let image = image(Flavour::Cloud);
    let run = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            "-kernel".as_ref(),
            image.kernel.as_os_str(),
            "-nographic".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        common::quetzal(&args)
    };
    assert_one_line_error(
        "unknown netdev type",
        &run(&["-netdev", "tap,id=n0"]),
        "unknown netdev type",
    );
    assert_one_line_error(
        "dangling netdev",
        &run(&["-device", "virtio-net-device,netdev=n9"]),
        "no -netdev has this id",
    );
    assert_one_line_error(
        "bad hostfwd",
        &run(&["-netdev", "user,id=n0,hostfwd=tcp:22-:22"]),
        "hostfwd=tcp:22-:22",
    );
    assert_one_line_error(
        "bad mac",
        &run(&[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-device,netdev=n0,mac=xyz",
        ]),
        "mac=xyz",
    );
    // A forwarded port that is taken on the host.
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = taken.local_addr().expect("its address").port();
    let fwd = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22");
    assert_one_line_error(
        "taken port",
        &run(&["-netdev", &fwd, "-device", "virtio-net-device,netdev=n0"]),
        &format!("127.0.0.1:{port}"),
    );
}
