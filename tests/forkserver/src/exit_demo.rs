//! `--child-exit`: what exit(3) does in a forked child that _exit(2) does not.
//!
//! At startup (after the startup line) the parent
//! - writes one line into a fully buffered stdio stream on fd 1 and does not
//!   flush it: `forkserver: line buffered by pid P before fork`;
//! - registers an atexit handler that writes
//!   `forkserver: atexit handler ran in pid X (registered by pid P)` to stderr.
//!
//! Every forked child gets a copy of that buffer and of the atexit list. A
//! child leaving with exit(3) flushes its copy and runs the handler, so with
//! `--child-exit exit` the buffered line appears on stdout once per exited
//! child plus once for the parent's own exit, and stderr shows one atexit line
//! per process. With `_exit` each appears once (the parent's clean exit), and
//! not at all if the parent dies by a signal.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::cli::ChildExit;
use crate::stats::LineBuf;

static REGISTERED_BY: AtomicU32 = AtomicU32::new(0);

/// Fills the stdio buffer and registers the atexit handler.
pub fn arm() {
    let pid = std::process::id();
    REGISTERED_BY.store(pid, Ordering::Relaxed);
    let line = format!("forkserver: line buffered by pid {pid} before fork\n");
    let line = std::ffi::CString::new(line).expect("no NUL in the line");
    // SAFETY: plain libc stdio calls on fd 1; the FILE is never closed, it is
    // flushed (or not) by exit(3) of each process holding a copy.
    unsafe {
        libc::atexit(on_exit);
        let file = libc::fdopen(1, c"w".as_ptr());
        if file.is_null() {
            return;
        }
        // Fully buffered even on a terminal, so the effect is visible there
        // too (glibc would pick line buffering for a tty).
        libc::setvbuf(file, std::ptr::null_mut(), libc::_IOFBF, 4096);
        libc::fputs(line.as_ptr(), file);
    }
}

extern "C" fn on_exit() {
    let mut line = LineBuf::new();
    line.push("forkserver: atexit handler ran in pid ");
    line.push_u64(u64::from(std::process::id()));
    line.push(" (registered by pid ");
    line.push_u64(u64::from(REGISTERED_BY.load(Ordering::Relaxed)));
    line.push(")\n");
    line.write_to_stderr();
}

/// How a connection child or worker leaves.
pub fn exit_child(style: ChildExit, code: i32) -> ! {
    match style {
        ChildExit::UnderscoreExit => underscore_exit(code),
        ChildExit::Exit => std::process::exit(code),
    }
}

/// _exit(2): leave at once, without atexit handlers or stdio flushing (nix
/// 0.31 has no wrapper for it).
pub fn underscore_exit(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and always safe to call.
    unsafe { libc::_exit(code) }
}
