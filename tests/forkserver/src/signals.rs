//! The parent's other signals (SIGTERM/SIGINT stop, SIGUSR1 stats) and fork
//! with the usual signal hygiene.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::socket::{Shutdown, shutdown};
use nix::unistd::{ForkResult, fork};

use crate::stats;

/// Set by SIGTERM/SIGINT: stop serving and shut down.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// The listening socket the stop handler shuts down (-1: none).
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);

/// Signals the parent handles itself; blocked around fork and reset to their
/// default action in the child.
const PARENT_SIGNALS: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
];

pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Installs the SIGTERM/SIGINT and SIGUSR1 handlers, without SA_RESTART.
///
/// `wake_accept`: the fork-per-conn listening socket. The stop handler then
/// also calls shutdown(2) on it (async-signal-safe): that wakes a blocked
/// accept(2) and makes any later accept fail, so there is no window between
/// checking `STOP` and blocking in accept in which a SIGTERM could be missed.
pub fn install_parent_handlers(wake_accept: Option<RawFd>) -> nix::Result<()> {
    LISTEN_FD.store(wake_accept.unwrap_or(-1), Ordering::Relaxed);
    let stop = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let usr1 = SigAction::new(
        SigHandler::Handler(on_usr1),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handlers only make async-signal-safe calls.
    unsafe {
        sigaction(Signal::SIGTERM, &stop)?;
        sigaction(Signal::SIGINT, &stop)?;
        sigaction(Signal::SIGUSR1, &usr1)?;
    }
    Ok(())
}

extern "C" fn on_stop(_: libc::c_int) {
    let saved = Errno::last_raw();
    STOP.store(true, Ordering::Relaxed);
    let fd = LISTEN_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let _ = shutdown(fd, Shutdown::Both);
    }
    Errno::set_raw(saved);
}

extern "C" fn on_usr1(_: libc::c_int) {
    let saved = Errno::last_raw();
    stats::write_line("sigusr1");
    Errno::set_raw(saved);
}

/// fork(2) for connection children and workers. The parent's signals are
/// blocked across the fork, and the child resets them to their default action
/// and unblocks everything before it runs any code of its own, so a SIGTERM
/// meant for the child kills it instead of running the parent's handler.
pub fn fork_child() -> nix::Result<ForkResult> {
    let mut block = SigSet::empty();
    for signal in PARENT_SIGNALS {
        block.add(signal);
    }
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&block), Some(&mut old))?;
    // SAFETY: the server parent is single-threaded (it never starts threads),
    // so the child may run arbitrary code.
    let result = unsafe { fork() };
    match result {
        Ok(ForkResult::Child) => {
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            for signal in PARENT_SIGNALS {
                // SAFETY: SIG_DFL is always a valid disposition.
                let _ = unsafe { sigaction(signal, &default) };
            }
            let _ = SigSet::empty().thread_set_mask();
        }
        _ => {
            let _ = old.thread_set_mask();
        }
    }
    result
}

/// Restores the default action of `signal` (before exec, or before raising a
/// signal the parent handles).
pub fn set_default(signal: Signal) {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL is always a valid disposition.
    let _ = unsafe { sigaction(signal, &default) };
}
