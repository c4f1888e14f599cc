//! Counters of the server parent, and a stats line that can be written from a
//! signal handler (fixed buffer, no allocation, no lock, write(2) only).
//!
//! The line goes to stderr on SIGUSR1 and at clean shutdown:
//!
//! ```text
//! forkserver stats pid=123 reason=exit accepted=5 forked=5 fork_failures=0 sigchld_handler_runs=3 wait_calls=8 reaped=5 shutdown_reaped=0
//! ```
//!
//! `wait_calls` and `reaped` count the serving phase only (SIGCHLD handler or
//! accept loop); children reaped while shutting down are `shutdown_reaped`.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Connections accepted by the parent (fork-per-conn).
pub static ACCEPTED: AtomicU64 = AtomicU64::new(0);
/// Successful forks of connection children or workers.
pub static FORKED: AtomicU64 = AtomicU64::new(0);
/// fork(2) calls that failed.
pub static FORK_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Runs of the SIGCHLD handler.
pub static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
/// waitpid(2) calls while serving.
pub static WAIT_CALLS: AtomicU64 = AtomicU64::new(0);
/// Children reaped while serving.
pub static REAPED: AtomicU64 = AtomicU64::new(0);
/// Children reaped during shutdown.
pub static SHUTDOWN_REAPED: AtomicU64 = AtomicU64::new(0);

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Writes the stats line to stderr. Async-signal-safe.
pub fn write_line(reason: &str) {
    let mut line = LineBuf::new();
    line.push("forkserver stats pid=");
    line.push_u64(u64::from(std::process::id()));
    line.push(" reason=");
    line.push(reason);
    let counters = [
        (" accepted=", &ACCEPTED),
        (" forked=", &FORKED),
        (" fork_failures=", &FORK_FAILURES),
        (" sigchld_handler_runs=", &HANDLER_RUNS),
        (" wait_calls=", &WAIT_CALLS),
        (" reaped=", &REAPED),
        (" shutdown_reaped=", &SHUTDOWN_REAPED),
    ];
    for (name, counter) in counters {
        line.push(name);
        line.push_u64(counter.load(Ordering::Relaxed));
    }
    line.push("\n");
    line.write_to_stderr();
}

/// A fixed-size line buffer for signal handlers and post-fork children.
pub struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    pub const fn new() -> Self {
        LineBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    pub fn push(&mut self, s: &str) {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                return;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    pub fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            self.push(char::from(d).encode_utf8(&mut [0; 4]));
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// One write(2) to fd 2; errors are ignored (nowhere to report them).
    pub fn write_to_stderr(&self) {
        // SAFETY: fd 2 stays open for the life of the process.
        let stderr = unsafe { BorrowedFd::borrow_raw(2) };
        let _ = nix::unistd::write(stderr, self.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::LineBuf;

    #[test]
    fn formats_numbers() {
        let mut l = LineBuf::new();
        l.push("a=");
        l.push_u64(0);
        l.push(" b=");
        l.push_u64(18_446_744_073_709_551_615);
        assert_eq!(l.as_bytes(), b"a=0 b=18446744073709551615");
    }

    #[test]
    fn truncates_instead_of_overflowing() {
        let mut l = LineBuf::new();
        for _ in 0..100 {
            l.push("0123456789");
        }
        assert_eq!(l.as_bytes().len(), 256);
    }
}
