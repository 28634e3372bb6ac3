//! The busybox initramfs: directory skeleton, device nodes, busybox and its applet links,
//! and the `/init` script that prints markers, runs a test script and powers off.

use crate::cpio::{CpioError, Writer};

/// The `/init` script. See the crate docs for its contract (markers and command line).
pub const INIT: &str = r#"#!/bin/sh
# /init of Quetzal's test initramfs, written by test-images (see test-images/README.md).
#
# Prints "QUETZAL-INIT-OK <kernel release>", then runs the script given as
# quetzal.cmd=<base64> on the kernel command line, else /test.sh if present, and prints
# "QUETZAL-DONE rc=<status>"; with neither it prints QUETZAL-SHELL and starts an
# interactive shell on the console (prompt "quetzal# "). Afterwards it ends the machine as
# quetzal.end= says: poweroff (the default), reboot, halt, or wait (stay up). Before the
# first marker it loads the kernel modules listed in /lib/modules/<release>/load-order
# (the virtio drivers) unless quetzal.modules=0.
PATH=/bin:/sbin:/usr/bin:/usr/sbin
HOME=/root
export PATH HOME
set -f
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mkdir -p /dev/pts
/bin/busybox mount -t devpts devpts /dev/pts 2>/dev/null
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox mount -t tmpfs tmpfs /run
/bin/busybox --install -s

cmd=
end=poweroff
modules=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        quetzal.cmd=*) cmd="${arg#quetzal.cmd=}" ;;
        quetzal.end=*) end="${arg#quetzal.end=}" ;;
        quetzal.modules=*) modules="${arg#quetzal.modules=}" ;;
    esac
done
set +f
cd /

mods=/lib/modules/$(uname -r)
if [ "$modules" != 0 ] && [ -f "$mods/load-order" ]; then
    for m in $(cat "$mods/load-order"); do
        insmod "$mods/$m.ko" || echo "QUETZAL-WARN insmod $m failed"
    done
fi
echo "QUETZAL-INIT-OK $(uname -r)"
script=
if [ -n "$cmd" ]; then
    script=/run/quetzal-cmd.sh
    echo "$cmd" | base64 -d > "$script" || echo "QUETZAL-ERROR bad quetzal.cmd"
elif [ -f /test.sh ]; then
    script=/test.sh
fi
if [ -n "$script" ]; then
    sh "$script"
    echo "QUETZAL-DONE rc=$?"
else
    echo "QUETZAL-SHELL"
    setsid cttyhack sh -l || sh -l
fi
sync
case "$end" in
    reboot) reboot -f ;;
    halt) halt -f ;;
    wait) while :; do sleep 3600; done ;;
    *) poweroff -f ;;
esac
echo "QUETZAL-ERROR quetzal.end=$end did not stop the machine"
while :; do sleep 3600; done
"#;

/// `/etc/profile` for the interactive shell.
pub const PROFILE: &str = "PS1='quetzal# '\nexport PS1\n";

/// Applets linked to `/bin/busybox` inside the archive itself (everything else busybox
/// provides is linked by `busybox --install -s` when `/init` starts). All are in Debian's
/// `busybox-static`.
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "[",
    "[[",
    "awk",
    "base64",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cmp",
    "cp",
    "cttyhack",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "dmesg",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "free",
    "grep",
    "halt",
    "head",
    "hexdump",
    "id",
    "ip",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mknod",
    "mount",
    "mv",
    "nproc",
    "od",
    "poweroff",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "reboot",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "setsid",
    "sha1sum",
    "sha256sum",
    "sha512sum",
    "sleep",
    "sort",
    "stat",
    "stty",
    "sync",
    "tail",
    "tee",
    "test",
    "time",
    "touch",
    "tr",
    "true",
    "tty",
    "umount",
    "uname",
    "uniq",
    "uptime",
    "vi",
    "wc",
    "xargs",
    "yes",
];

/// Kernel modules (file names without `.ko`) copied from the kernel package into the
/// initramfs and loaded by `/init`: Debian builds the virtio drivers as modules. Their
/// dependencies must be in this list too ([`load_order`] checks).
pub const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio-rng",
    "virtio_balloon",
];

/// The module names a `.ko` file depends on, from the `depends=` string of its `.modinfo`
/// section (found by scanning for the NUL-separated key; empty if absent).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// A module's name as the kernel knows it (`virtio-rng` → `virtio_rng`).
pub fn module_name(file_stem: &str) -> String {
    file_stem.replace('-', "_")
}

/// Orders modules (file stem, `.ko` bytes) so that each comes after its dependencies.
/// Returns indices into `modules`.
///
/// # Errors
/// A message naming a dependency that is not among `modules`, or a dependency cycle.
pub fn load_order(modules: &[(String, &[u8])]) -> Result<Vec<usize>, String> {
    let names: Vec<String> = modules.iter().map(|(stem, _)| module_name(stem)).collect();
    let mut state = vec![0u8; modules.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::new();
    fn visit(
        i: usize,
        modules: &[(String, &[u8])],
        names: &[String],
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), String> {
        match state[i] {
            2 => return Ok(()),
            1 => return Err(format!("module dependency cycle through {}", names[i])),
            _ => {}
        }
        state[i] = 1;
        for dep in modinfo_depends(modules[i].1) {
            let j = names.iter().position(|n| *n == dep).ok_or_else(|| {
                format!(
                    "module {} needs {dep}, which is not in the package or the list",
                    names[i]
                )
            })?;
            visit(j, modules, names, state, order)?;
        }
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..modules.len() {
        visit(i, modules, &names, &mut state, &mut order)?;
    }
    Ok(order)
}

/// A kernel module: file stem (`virtio-rng`) and `.ko` bytes.
pub type Module<'a> = (&'a str, &'a [u8]);

/// Builder for the test initramfs.
#[derive(Debug, Clone)]
pub struct Initramfs<'a> {
    busybox: &'a [u8],
    script: Option<&'a [u8]>,
    extra: Vec<(String, u32, &'a [u8])>,
    modules: Option<(&'a str, Vec<Module<'a>>)>,
}

impl<'a> Initramfs<'a> {
    /// An initramfs around this (static, x86-64) busybox binary.
    pub fn new(busybox: &'a [u8]) -> Self {
        Self {
            busybox,
            script: None,
            extra: Vec::new(),
            modules: None,
        }
    }

    /// Includes kernel modules for kernel release `release` (`uname -r`), given as
    /// (file stem, `.ko` bytes) in load order (see [`load_order`]): they go to
    /// `/lib/modules/<release>/<stem>.ko`, and their stems, in order, to
    /// `/lib/modules/<release>/load-order`, which `/init` loads with `insmod`.
    pub fn modules(mut self, release: &'a str, ordered: Vec<Module<'a>>) -> Self {
        self.modules = Some((release, ordered));
        self
    }

    /// Includes `script` as `/test.sh`, which `/init` runs instead of a shell.
    pub fn script(mut self, script: &'a [u8]) -> Self {
        self.script = Some(script);
        self
    }

    /// Adds a regular file (its parent directories must be in the skeleton or added
    /// first: `/bin /sbin /usr/bin /usr/sbin /dev /proc /sys /tmp /run /etc /root /mnt`).
    pub fn file(mut self, path: &str, perm: u32, data: &'a [u8]) -> Self {
        self.extra.push((path.to_string(), perm, data));
        self
    }

    /// Writes the uncompressed newc archive.
    ///
    /// # Errors
    /// [`CpioError`] if an added file's path is invalid or clashes with the skeleton.
    pub fn build(&self) -> Result<Vec<u8>, CpioError> {
        let mut w = Writer::new();
        for dir in [
            "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "etc", "mnt",
        ] {
            w.dir(dir, 0o755)?;
        }
        w.dir("tmp", 0o1777)?;
        w.dir("root", 0o700)?;
        // The kernel opens /dev/console for init's stdin/stdout/stderr before /init runs,
        // so the node must be in the archive; the rest help if devtmpfs is missing.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        w.char_dev("dev/null", 0o666, 1, 3)?;
        w.char_dev("dev/zero", 0o666, 1, 5)?;
        w.char_dev("dev/tty", 0o666, 5, 0)?;
        w.char_dev("dev/ttyS0", 0o660, 4, 64)?;
        w.file("bin/busybox", 0o755, self.busybox)?;
        for applet in APPLETS {
            w.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
        w.file("etc/group", 0o644, b"root:x:0:\n")?;
        w.file("etc/profile", 0o644, PROFILE.as_bytes())?;
        w.file("init", 0o755, INIT.as_bytes())?;
        if let Some(script) = self.script {
            w.file("test.sh", 0o755, script)?;
        }
        if let Some((release, modules)) = &self.modules {
            let dir = format!("lib/modules/{release}");
            for d in ["lib", "lib/modules", &dir] {
                w.dir(d, 0o755)?;
            }
            let mut list = String::new();
            for (stem, ko) in modules {
                w.file(&format!("{dir}/{stem}.ko"), 0o644, ko)?;
                list.push_str(stem);
                list.push('\n');
            }
            w.file(&format!("{dir}/load-order"), 0o644, list.as_bytes())?;
        }
        for (path, perm, data) in &self.extra {
            w.file(path, *perm, data)?;
        }
        Ok(w.finish())
    }
}

/// Standard base64 with padding (what busybox `base64 -d` reads).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kernel command-line argument that makes `/init` run `script`
/// (`quetzal.cmd=<base64>`). Mind the kernel's 2048-byte command-line limit on x86.
pub fn cmdline_arg(script: &str) -> String {
    format!("quetzal.cmd={}", base64(script.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{parse, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

    fn unbase64(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(4) {
            let digits: Vec<u8> = chunk
                .iter()
                .copied()
                .filter(|&c| c != b'=')
                .map(value)
                .collect();
            let n = digits
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
            for i in 0..digits.len().saturating_sub(1) {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[test]
    fn base64_matches_rfc4648_vectors_and_round_trips() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
            assert_eq!(unbase64(encoded), plain.as_bytes());
        }
        let script = "echo hello; sha256sum /bin/busybox | head -c 64\n";
        let arg = cmdline_arg(script);
        assert!(!arg.contains(' '));
        assert_eq!(
            unbase64(arg.strip_prefix("quetzal.cmd=").unwrap()),
            script.as_bytes()
        );
    }

    #[test]
    fn archive_has_the_skeleton_nodes_busybox_and_init() {
        let bytes = Initramfs::new(b"BUSYBOX")
            .script(b"echo hi\n")
            .file("etc/motd", 0o644, b"x")
            .build()
            .unwrap();
        let entries = parse(&bytes).unwrap();
        let get = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        for dir in [
            "dev", "proc", "sys", "tmp", "etc", "bin", "sbin", "usr/bin", "run", "root", "mnt",
        ] {
            assert_eq!(get(dir).mode & S_IFMT, S_IFDIR, "{dir}");
        }
        let console = get("dev/console");
        assert_eq!(console.mode, S_IFCHR | 0o600);
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        assert_eq!(
            (get("dev/null").rdev_major, get("dev/null").rdev_minor),
            (1, 3)
        );
        assert_eq!(
            (get("dev/ttyS0").rdev_major, get("dev/ttyS0").rdev_minor),
            (4, 64)
        );
        assert_eq!(get("bin/busybox").data, b"BUSYBOX");
        for applet in [
            "sh",
            "mount",
            "echo",
            "cat",
            "sha256sum",
            "poweroff",
            "dd",
            "head",
            "uname",
            "base64",
        ] {
            let link = get(&format!("bin/{applet}"));
            assert_eq!(link.mode & S_IFMT, S_IFLNK, "{applet}");
            assert_eq!(link.data, b"busybox");
        }
        let init = get("init");
        assert_eq!(init.mode, S_IFREG | 0o755);
        assert!(init.data.starts_with(b"#!/bin/sh\n"));
        assert_eq!(get("test.sh").data, b"echo hi\n");
        assert_eq!(get("test.sh").mode, S_IFREG | 0o755);
        assert_eq!(get("etc/motd").data, b"x");
        // Directories come before anything inside them, as the kernel needs.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                assert!(
                    entries[..i].iter().any(|p| p.name == parent),
                    "{} before its parent",
                    e.name
                );
            }
        }
    }

    fn ko(name: &str, depends: &str) -> Vec<u8> {
        format!("\x7fELF...\0license=GPL\0depends={depends}\0retpoline=Y\0name={name}\0")
            .into_bytes()
    }

    #[test]
    fn modinfo_depends_reads_the_depends_string() {
        assert_eq!(
            modinfo_depends(&ko("virtio_blk", "virtio,virtio_ring")),
            ["virtio", "virtio_ring"]
        );
        assert!(modinfo_depends(&ko("virtio", "")).is_empty());
        assert!(modinfo_depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let (net, fail, nf, virtio, ring) = (
            ko("virtio_net", "net_failover,virtio,virtio_ring"),
            ko("failover", ""),
            ko("net_failover", "failover"),
            ko("virtio", ""),
            ko("virtio_ring", "virtio"),
        );
        let modules: Vec<(String, &[u8])> = vec![
            ("virtio_net".into(), &net),
            ("failover".into(), &fail),
            ("net_failover".into(), &nf),
            ("virtio".into(), &virtio),
            ("virtio_ring".into(), &ring),
        ];
        let order: Vec<&str> = load_order(&modules)
            .unwrap()
            .into_iter()
            .map(|i| modules[i].0.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio",
                "virtio_ring",
                "virtio_net"
            ]
        );
        // A dash in the file name is an underscore in the module name.
        let rng = ko("virtio_rng", "virtio");
        let with_dash: Vec<(String, &[u8])> =
            vec![("virtio-rng".into(), &rng), ("virtio".into(), &virtio)];
        assert_eq!(load_order(&with_dash).unwrap(), [1, 0]);
        let missing = load_order(&modules[..1]).unwrap_err();
        assert!(missing.contains("needs net_failover"), "{missing}");
        let (a, b) = (ko("a", "b"), ko("b", "a"));
        let cycle: Vec<(String, &[u8])> = vec![("a".into(), &a), ("b".into(), &b)];
        assert!(load_order(&cycle).unwrap_err().contains("cycle"));
    }

    #[test]
    fn modules_go_under_lib_modules_with_a_load_order() {
        let bytes = Initramfs::new(b"B")
            .modules("6.1.0-test", vec![("virtio", b"V1"), ("virtio-rng", b"V2")])
            .build()
            .unwrap();
        let entries = parse(&bytes).unwrap();
        let get = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(get("lib/modules/6.1.0-test").mode & S_IFMT, S_IFDIR);
        assert_eq!(get("lib/modules/6.1.0-test/virtio-rng.ko").data, b"V2");
        assert_eq!(
            get("lib/modules/6.1.0-test/load-order").data,
            b"virtio\nvirtio-rng\n"
        );
        assert!(INIT.contains("insmod") && INIT.contains("quetzal.modules=*"));
    }

    #[test]
    fn without_a_script_there_is_no_test_sh_and_clashes_are_errors() {
        let entries = parse(&Initramfs::new(b"B").build().unwrap()).unwrap();
        assert!(entries.iter().all(|e| e.name != "test.sh"));
        assert!(matches!(
            Initramfs::new(b"B").file("init", 0o755, b"").build(),
            Err(CpioError::Duplicate(_))
        ));
    }

    #[test]
    fn init_prints_the_markers_and_honours_the_command_line() {
        for needle in [
            "QUETZAL-INIT-OK",
            "QUETZAL-DONE rc=$?",
            "QUETZAL-SHELL",
            "quetzal.cmd=*",
            "quetzal.end=*",
            "/test.sh",
            "poweroff -f",
            "mount -t devtmpfs",
            "base64 -d",
        ] {
            assert!(INIT.contains(needle), "{needle}");
        }
        assert!(INIT.ends_with('\n'));
    }
}
