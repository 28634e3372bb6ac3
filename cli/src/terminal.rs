//! The host terminal as the guest's serial console: raw mode (so keys reach the guest
//! unprocessed, Ctrl-C included) restored on exit, and QEMU's `Ctrl-A` escapes
//! (`Ctrl-A x` quits, `Ctrl-A h` lists the escapes, `Ctrl-A Ctrl-A` sends a literal
//! `Ctrl-A`).
//!
//! Raw mode uses POSIX termios through `libc`, which Linux and macOS both provide.

/// The escape key: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What a stretch of terminal input means.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the guest.
    Send(Vec<u8>),
    /// `Ctrl-A x`: end the emulator.
    Quit,
    /// `Ctrl-A h`: show the escapes.
    Help,
}

/// The help text for `Ctrl-A h`.
pub const ESCAPE_HELP: &str =
    "\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  send C-a\r\n";

/// Splits terminal input into guest bytes and escape commands, remembering a `Ctrl-A`
/// that ended one read until the next.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending: bool,
}

impl EscapeFilter {
    /// Interprets `input`.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut out = Vec::new();
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => {
                        flush(&mut out, &mut actions);
                        actions.push(Action::Quit);
                        return actions;
                    }
                    b'h' | b'H' | b'?' => {
                        flush(&mut out, &mut actions);
                        actions.push(Action::Help);
                    }
                    ESCAPE => out.push(ESCAPE),
                    // Unknown escapes are dropped, as QEMU does.
                    _ => {}
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        flush(&mut out, &mut actions);
        actions
    }
}

fn flush(out: &mut Vec<u8>, actions: &mut Vec<Action>) {
    if !out.is_empty() {
        actions.push(Action::Send(std::mem::take(out)));
    }
}

/// Raw mode on standard input; the previous settings come back when this is dropped.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Puts standard input in raw mode, or returns `None` when it is not a terminal
    /// (piped input is passed through as it is).
    pub fn enter() -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: STDIN is a terminal (checked above) and `saved` is a valid termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: as above; the settings come from tcgetattr.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quit_help_and_literal_ctrl_a() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ls\r"), vec![Action::Send(b"ls\r".to_vec())]);
        assert_eq!(
            f.feed(b"a\x01hb"),
            vec![
                Action::Send(b"a".to_vec()),
                Action::Help,
                Action::Send(b"b".to_vec())
            ]
        );
        assert_eq!(f.feed(b"\x01\x01"), vec![Action::Send(vec![1])]);
        // An escape split across two reads.
        assert_eq!(f.feed(b"z\x01"), vec![Action::Send(b"z".to_vec())]);
        assert_eq!(f.feed(b"x ignored"), vec![Action::Quit]);
        // Unknown escapes vanish.
        assert_eq!(f.feed(b"\x01qok"), vec![Action::Send(b"ok".to_vec())]);
    }
}
