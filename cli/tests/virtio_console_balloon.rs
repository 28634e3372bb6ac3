//! virtio-console and virtio-balloon end to end on Debian 12's stock cloud kernel, whose
//! initramfs loads `virtio_console` and `virtio_balloon`.
//!
//! - `hvc0`: with `-device virtio-serial-device -device virtconsole` a marker the guest
//!   writes to `/dev/hvc0` reaches the host terminal (standard output) next to the serial
//!   console; with `-serial none` the terminal is `hvc0`'s alone, both ways: the host
//!   types a line on standard input and the guest reads it from `/dev/hvc0`.
//! - The balloon: `quetzal -device virtio-balloon-device` binds the guest's driver with
//!   the statistics queue negotiated. The host's controls have no command-line or monitor
//!   path (QEMU's `balloon` monitor command has no counterpart yet), so inflating and
//!   deflating are driven through emu-vmm's `Machine::balloon` in the same process: the
//!   guest's statistics (from its probe, then fresh ones) arrive on request, it gives
//!   16 MiB back when the target asks for it (its MemTotal drops, the host records the
//!   pages and releases them), and takes them back when the target returns to zero.
//! - Bad flags (a virtconsole without its bus, device options that do not exist) are a
//!   one-line error with exit status 1.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    assert_clean_run, assert_one_line_error, boot_with, drain, find_line, image, quetzal, Run,
    DEADLINE,
};
use emu_vmm::config::{MachineConfig, SerialBackend, VirtioDeviceConfig};
use emu_vmm::machine::{Machine, Outcome};
use test_images::Flavour;

/// The flags that give the guest a virtconsole on the terminal.
const VIRTCONSOLE: [&str; 4] = ["-device", "virtio-serial-device", "-device", "virtconsole"];

/// A line the guest writes to `/dev/hvc0` is on the host's standard output, shared with
/// the serial console. The marker is assembled in the guest, so the script's text (on
/// the kernel command line, which the kernel prints) cannot be mistaken for it.
#[test]
fn a_marker_written_to_hvc0_reaches_the_host_terminal() {
    let image = image(Flavour::Cloud);
    let script = "set -e\n\
                  test -c /dev/hvc0\n\
                  echo \"DRIVER=$(ls /sys/bus/virtio/drivers/virtio_console | grep -c virtio)\"\n\
                  printf 'QUETZAL-HVC0-%s\\n' \"$((6 * 7))\" > /dev/hvc0\n\
                  echo WROTE\n";
    let extra: Vec<&OsStr> = VIRTCONSOLE.iter().map(OsStr::new).collect();
    let run = boot_with(image, script, &extra);
    assert_clean_run(&run, &[]);
    assert_eq!(find_line(&run, "DRIVER=").1, "1", "{}", run.transcript());
    let (marker, _) = find_line(&run, "QUETZAL-HVC0-42");
    let (done, _) = find_line(&run, "WROTE");
    assert!(
        marker < done,
        "hvc0 output arrived late\n{}",
        run.transcript()
    );
}

/// With `-serial none` only `hvc0` is on the terminal: the guest announces itself there,
/// the host types a line on standard input (a pipe, as a terminal would send it, ending
/// in a carriage return), the guest reads it from `/dev/hvc0` and echoes it back there.
/// Nothing of the serial console (the init script's markers) shows.
#[test]
fn with_serial_none_the_terminal_is_hvc0_both_ways() {
    let image = image(Flavour::Cloud);
    let script = "echo QUETZAL-HVC-READY > /dev/hvc0\n\
                  read -r line < /dev/hvc0\n\
                  echo \"QUETZAL-GOT=$line\" > /dev/hvc0\n";
    let append = format!(
        "console=ttyS0 {}",
        test_images::initramfs::cmdline_arg(script)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_quetzal"))
        .args([
            OsStr::new("-kernel"),
            image.kernel.as_os_str(),
            OsStr::new("-initrd"),
            image.initramfs.as_os_str(),
            OsStr::new("-append"),
            OsStr::new(&append),
            OsStr::new("-m"),
            OsStr::new("512"),
            OsStr::new("-nographic"),
            OsStr::new("-serial"),
            OsStr::new("none"),
        ])
        .args(VIRTCONSOLE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the quetzal binary");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let stdout = stdout.clone();
        let mut pipe = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                stdout.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let text = |out: &Mutex<Vec<u8>>| String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let start = Instant::now();
    let mut typed = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for quetzal") {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if !typed && text(&stdout).contains("QUETZAL-HVC-READY") {
            stdin
                .write_all(b"typed-on-the-host\r")
                .expect("writing to quetzal's stdin");
            stdin.flush().expect("flushing quetzal's stdin");
            typed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().expect("stdout reader");
    let run = Run {
        status: status.unwrap_or_else(|| {
            panic!(
                "quetzal did not finish within {DEADLINE:?}; killed.\n--- stdout ---\n{}",
                text(&stdout)
            )
        }),
        stdout: text(&stdout).replace('\r', ""),
        stderr: String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned(),
    };
    assert!(
        typed,
        "the guest never announced itself on hvc0\n{}",
        run.transcript()
    );
    assert!(run.status.success(), "{}", run.transcript());
    assert_eq!(
        find_line(&run, "QUETZAL-GOT=").1,
        "typed-on-the-host",
        "{}",
        run.transcript()
    );
    assert!(
        !run.stdout.contains("QUETZAL-INIT-OK"),
        "serial output reached the terminal despite -serial none\n{}",
        run.transcript()
    );
}

/// `-device virtio-balloon-device`: the guest's virtio_balloon driver binds the device and
/// accepts the statistics queue (feature bit 1 in sysfs' feature string), and
/// deflate-on-oom only when asked for (bit 2).
#[test]
fn the_balloon_driver_binds_with_the_statistics_queue() {
    let image = image(Flavour::Cloud);
    let script = "set -e\n\
                  d=$(ls /sys/bus/virtio/drivers/virtio_balloon | grep virtio)\n\
                  echo \"BOUND=$d\"\n\
                  echo \"FEATURES=$(cat /sys/bus/virtio/devices/$d/features)\"\n";
    for (flag, oom) in [
        ("virtio-balloon-device", '0'),
        ("virtio-balloon-device,deflate-on-oom=on", '1'),
    ] {
        let run = boot_with(image, script, &["-device".as_ref(), flag.as_ref()]);
        assert_clean_run(&run, &[]);
        assert!(
            find_line(&run, "BOUND=").1.starts_with("virtio"),
            "{}",
            run.transcript()
        );
        let features: Vec<char> = find_line(&run, "FEATURES=").1.chars().collect();
        assert_eq!(
            features.get(1),
            Some(&'1'),
            "STATS_VQ\n{}",
            run.transcript()
        );
        assert_eq!(
            features.get(2),
            Some(&oom),
            "DEFLATE_ON_OOM\n{}",
            run.transcript()
        );
    }
}

/// The guest's console, captured.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).replace('\r', "")
    }
}

/// Statistics tags (VirtIO 1.2 §5.5.6.3).
const STAT_FREE_MEMORY: u16 = 4;
const STAT_TOTAL_MEMORY: u16 = 5;

/// Pages the host asks for: 16 MiB.
const TARGET_PAGES: u32 = 4096;

/// The host's side of the balloon through emu-vmm's Machine API, with the guest watching
/// its MemTotal: statistics arrive on each request; a target of 16 MiB makes
/// the guest inflate exactly that many distinct pages (reported in `actual`, released on
/// the host, MemTotal 16 MiB lower); a target of zero gives them back (MemTotal restored).
#[test]
fn the_host_inflates_and_deflates_the_balloon_and_reads_guest_statistics() {
    let image = image(Flavour::Cloud);
    let script = format!(
        "set -e\n\
         total() {{ awk '/^MemTotal:/ {{ print $2 }}' /proc/meminfo; }}\n\
         before=$(total)\n\
         echo \"BALLOON-BOUND=$(ls /sys/bus/virtio/drivers/virtio_balloon | grep -c virtio)\"\n\
         echo \"MEMTOTAL0=$before\"\n\
         i=0\n\
         while [ $(total) -gt $((before - {kib})) ]; do\n\
             i=$((i + 1)); [ $i -lt 240 ] || exit 3; sleep 1\n\
         done\n\
         echo \"MEMTOTAL1=$(total)\"\n\
         while [ $(total) -lt $before ]; do\n\
             i=$((i + 1)); [ $i -lt 480 ] || exit 4; sleep 1\n\
         done\n\
         echo \"MEMTOTAL2=$(total)\"\n",
        kib = TARGET_PAGES * 4
    );
    let config = MachineConfig {
        memory: 512 << 20,
        kernel: Some(image.kernel.clone()),
        initrd: Some(image.initramfs.clone()),
        cmdline: format!(
            "console=ttyS0 {}",
            test_images::initramfs::cmdline_arg(&script)
        ),
        serial: SerialBackend::Stdio,
        virtio: vec![VirtioDeviceConfig::Balloon {
            deflate_on_oom: false,
        }],
        ..Default::default()
    };
    let console = Console::default();
    let mut machine =
        Machine::new(&config, Box::new(console.clone())).expect("building the machine");
    let balloon = machine.balloon().expect("the machine has a balloon");
    let stop = machine.stop_handle();

    // The host's side runs beside the vCPU; it stops the machine if anything fails, so a
    // guest that never does its part ends the test instead of hanging it.
    let host = {
        let console = console.clone();
        std::thread::spawn(move || -> Result<String, String> {
            let lock = || balloon.lock().unwrap_or_else(|e| e.into_inner());
            let wait = |what: &str, done: &dyn Fn() -> bool| -> Result<(), String> {
                let start = Instant::now();
                while !done() {
                    if start.elapsed() > DEADLINE / 2 {
                        return Err(format!("timed out waiting for {what}"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            };
            let mut log = String::new();
            wait("MEMTOTAL0 on the console", &|| {
                console.text().contains("MEMTOTAL0=")
            })?;
            // The driver primed statsq at probe; the first request reads that buffer and
            // hands it back, and the guest answers with fresh values.
            if !lock().request_stats() {
                return Err("no statistics buffer from the driver's probe".into());
            }
            let first = lock()
                .device()
                .stats()
                .cloned()
                .ok_or("no statistics at probe")?;
            let total = first
                .get(STAT_TOTAL_MEMORY)
                .ok_or("no total-memory statistic")?;
            if !(400 << 20..=512 << 20).contains(&total) {
                return Err(format!(
                    "total memory statistic {total} for a 512 MiB guest"
                ));
            }
            wait("the guest's answer to the first request", &|| {
                lock()
                    .device()
                    .stats()
                    .is_some_and(|s| s.updates > first.updates)
            })?;
            let first = lock().device().stats().cloned().expect("just seen");
            log += &format!("stats: {first:?}\n");

            lock().set_target_pages(TARGET_PAGES);
            wait("the guest to inflate", &|| {
                let b = lock();
                b.device().inflated_pages() == TARGET_PAGES as usize
                    && b.device().actual_pages() == TARGET_PAGES
            })?;
            let released = lock().device().released_bytes();
            log += &format!("released {released} bytes\n");
            if cfg!(target_os = "linux") && released != u64::from(TARGET_PAGES) * 4096 {
                return Err(format!("released {released} bytes on a 4 KiB-page host"));
            }
            wait("MEMTOTAL1 on the console", &|| {
                console.text().contains("MEMTOTAL1=")
            })?;

            // Fresh statistics on request: the free memory is now 16 MiB lower or so.
            if !lock().request_stats() {
                return Err("the statistics buffer was not there to hand back".into());
            }
            wait("fresh statistics", &|| {
                lock()
                    .device()
                    .stats()
                    .is_some_and(|s| s.updates > first.updates)
            })?;
            let second = lock().device().stats().cloned().expect("just seen");
            log += &format!("requested stats: {second:?}\n");
            if second.get(STAT_TOTAL_MEMORY) >= Some(total) {
                return Err(format!("total memory did not shrink: {second:?}"));
            }
            if second.get(STAT_FREE_MEMORY).is_none() {
                return Err("no free-memory statistic".into());
            }

            lock().set_target_pages(0);
            wait("the guest to deflate", &|| {
                let b = lock();
                b.device().inflated_pages() == 0 && b.device().actual_pages() == 0
            })?;
            Ok(log)
        })
    };
    let watchdog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < DEADLINE {
                std::thread::sleep(Duration::from_millis(100));
                if host.is_finished() {
                    let result = host.join().expect("host thread");
                    if result.is_err() {
                        stop.stop();
                    }
                    return Some(result);
                }
            }
            stop.stop();
            None
        })
    };
    let outcome = machine.run();
    let host = watchdog.join().expect("watchdog thread");
    let transcript = console.text();
    let log = match host {
        Some(Ok(log)) => log,
        Some(Err(e)) => panic!("{e}\n--- console ---\n{transcript}"),
        None => panic!("the host side did not finish within {DEADLINE:?}\n{transcript}"),
    };
    assert_eq!(outcome, Outcome::PowerOff, "{log}\n{transcript}");
    let line = |prefix: &str| -> u64 {
        transcript
            .lines()
            .find_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} line\n{transcript}"))
    };
    assert_eq!(line("BALLOON-BOUND="), 1, "{transcript}");
    assert!(
        transcript.contains("QUETZAL-DONE rc=0"),
        "{log}\n{transcript}"
    );
    let (before, inflated, after) = (line("MEMTOTAL0="), line("MEMTOTAL1="), line("MEMTOTAL2="));
    assert_eq!(
        before - inflated,
        u64::from(TARGET_PAGES) * 4,
        "MemTotal shrinks by exactly the balloon\n{transcript}"
    );
    assert_eq!(after, before, "{transcript}");
}

/// Bad console and balloon flags end with a one-line error naming the problem and exit
/// status 1, before any guest runs.
#[test]
fn bad_console_and_balloon_flags_give_a_one_line_error_and_exit_status_1() {
    let image = image(Flavour::Cloud);
    let kernel = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            "-kernel".as_ref(),
            image.kernel.as_os_str(),
            "-nographic".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        quetzal(&args)
    };
    let run = kernel(&["-device", "virtconsole"]);
    assert_one_line_error("virtconsole without its bus", &run, "virtio-serial-device");
    let run = kernel(&[
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=c0",
    ]);
    assert_one_line_error("virtconsole with a chardev", &run, "chardev=c0");
    let run = kernel(&["-device", "virtio-balloon-device,deflate-on-oom=sometimes"]);
    assert_one_line_error("bad deflate-on-oom", &run, "deflate-on-oom=sometimes");
    let run = kernel(&["-device", "virtio-serial-pci"]);
    assert_one_line_error("unknown device", &run, "virtio-serial-pci");
}
