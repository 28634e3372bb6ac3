//! `test-images`: builds Quetzal's guest test images. Run with `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use test_images::{build, cpio, initramfs, Flavour, Options};

const USAGE: &str = "\
usage:
  test-images build [--flavour cloud|generic|all] [--out DIR] [--script FILE] [--gzip]
                    [--offline] [--cache DIR]
      Fetch (or reuse from the cache) Debian bookworm's current kernel and busybox-static,
      write vmlinuz, config, initramfs.cpio and manifest.txt to DIR (default
      <cache>/images/<flavour>), and print the manifest. --script FILE becomes /test.sh,
      which /init runs instead of a shell. --flavour all builds both (then --out DIR gets
      one subdirectory per flavour).
  test-images list FILE
      List the entries of a newc cpio archive (like `cpio -itv`).
  test-images cmdline FILE
      Print the kernel argument quetzal.cmd=<base64> that makes /init run script FILE.

Cache: $QUETZAL_CACHE, else ~/.cache/quetzal.
Mirror and suite: $QUETZAL_DEBIAN_MIRROR (http://deb.debian.org/debian),
$QUETZAL_DEBIAN_SUITE (bookworm).
";

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("test-images: {message}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build") => cmd_build(&args[1..]),
        Some("list") if args.len() == 2 => cmd_list(&args[1]),
        Some("cmdline") if args.len() == 2 => match std::fs::read_to_string(&args[1]) {
            Ok(script) => {
                println!("{}", initramfs::cmdline_arg(&script));
                ExitCode::SUCCESS
            }
            Err(e) => fail(format_args!("{}: {e}", args[1])),
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn cmd_list(path: &str) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    match cpio::parse(&bytes) {
        Ok(entries) => {
            for entry in &entries {
                println!("{}", cpio::describe(entry));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("{path}: {e}")),
    }
}

fn cmd_build(args: &[String]) -> ExitCode {
    let mut flavours = vec![Flavour::Cloud];
    let mut out: Option<PathBuf> = None;
    let mut script = None;
    let mut gzip = false;
    let mut offline = false;
    let mut cache = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match flag {
            "--flavour" | "--flavor" => match value().as_deref() {
                Some("all") => flavours = Flavour::ALL.to_vec(),
                Some(v) => match Flavour::parse(v) {
                    Some(f) => flavours = vec![f],
                    None => {
                        return fail(format_args!(
                            "unknown flavour {v:?} (cloud, generic or all)"
                        ))
                    }
                },
                None => return fail("--flavour needs a value"),
            },
            "--out" => match value() {
                Some(v) => out = Some(PathBuf::from(v)),
                None => return fail("--out needs a directory"),
            },
            "--cache" => match value() {
                Some(v) => cache = Some(PathBuf::from(v)),
                None => return fail("--cache needs a directory"),
            },
            "--script" => match value() {
                Some(v) => match std::fs::read(&v) {
                    Ok(bytes) => script = Some(bytes),
                    Err(e) => return fail(format_args!("{v}: {e}")),
                },
                None => return fail("--script needs a file"),
            },
            "--gzip" => gzip = true,
            "--offline" => offline = true,
            _ => {
                eprint!("{USAGE}");
                return fail(format_args!("unknown argument {arg:?}"));
            }
        }
    }
    let several = flavours.len() > 1;
    for flavour in flavours {
        let mut opts = Options::new(flavour);
        if let Some(cache) = &cache {
            opts.cache = cache.clone();
        }
        opts.out = out.as_ref().map(|o| {
            if several {
                o.join(flavour.to_string())
            } else {
                o.clone()
            }
        });
        opts.script = script.clone();
        opts.gzip = gzip;
        opts.offline = offline;
        match build(&opts) {
            Ok(manifest) => {
                let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                eprintln!(
                    "test-images: {flavour}: kernel {} {} ({} bytes), initramfs {} bytes, busybox {}",
                    manifest.kernel_package,
                    manifest.kernel_version,
                    size(&manifest.kernel),
                    size(&manifest.initramfs),
                    manifest.busybox_version,
                );
                print!("{}", manifest.to_text());
            }
            Err(e) => return fail(format_args!("{flavour}: {e}")),
        }
    }
    ExitCode::SUCCESS
}
