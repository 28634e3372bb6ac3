//! What the machine tests (`machine.rs`, `smp.rs`) share: the multiboot image their tiny
//! kernels are packed in, scratch directories and a console buffer.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where the a.out kludge loads the image: the 32-byte multiboot header, then the code.
pub const LOAD: u32 = emu_boot::multiboot::AOUT_LOAD;
/// The entry point: the first byte after the header (multiboot state: 32-bit protected
/// mode, flat segments, no paging).
pub const CODE: u32 = LOAD + 32;

/// A multiboot a.out-kludge image of `code`, loaded at [`LOAD`] and entered at [`CODE`].
pub fn multiboot(code: &[u8]) -> Vec<u8> {
    emu_boot::multiboot::aout_kludge_image(code, 0)
}

/// A temporary directory for one test's files (`suite` keeps the test binaries apart).
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emu-vmm-{suite}-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A shared buffer standing in for the serial console.
#[derive(Clone, Default)]
pub struct Console(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
