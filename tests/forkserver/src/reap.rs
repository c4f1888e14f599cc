//! Reaping policies (`--reap`): the SIGCHLD disposition and the waitpid calls.
//!
//! The handlers do async-signal-safe work only: waitpid(2), atomic counters,
//! clearing a slot of the prefork worker table, and saving/restoring errno.
//! They are installed with SA_RESTART, so a SIGCHLD arriving while the parent
//! blocks in accept(2) restarts the accept instead of failing it with EINTR
//! (the textbook alternative is to loop on EINTR), and with SA_NOCLDSTOP, so
//! stopped children do not raise SIGCHLD.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cli::{MAX_WORKERS, Reap};
use crate::stats;

/// Pids of the live prefork workers (0 = free slot). The SIGCHLD handler
/// clears a worker's slot when it reaps it; the parent re-forks free slots.
pub static WORKERS: [AtomicI32; MAX_WORKERS] = [const { AtomicI32::new(0) }; MAX_WORKERS];

/// Installs the SIGCHLD disposition for `policy`.
pub fn install(policy: Reap) -> nix::Result<()> {
    let restart = SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP;
    let action = match policy {
        Reap::Loop => SigAction::new(
            SigHandler::Handler(on_sigchld_loop),
            restart,
            SigSet::empty(),
        ),
        Reap::Once => SigAction::new(
            SigHandler::Handler(on_sigchld_once),
            restart,
            SigSet::empty(),
        ),
        // SIG_DFL explicitly: an inherited SIG_IGN would auto-reap.
        Reap::None | Reap::Blocking => {
            SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty())
        }
        Reap::Ignore => SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()),
        Reap::Nocldwait => {
            SigAction::new(SigHandler::SigDfl, SaFlags::SA_NOCLDWAIT, SigSet::empty())
        }
    };
    // SAFETY: the handlers only make async-signal-safe calls.
    unsafe { sigaction(Signal::SIGCHLD, &action) }.map(drop)
}

/// Correct handler: reap until nothing is left, because one SIGCHLD may stand
/// for several exited children.
extern "C" fn on_sigchld_loop(_: libc::c_int) {
    let saved = Errno::last_raw();
    stats::bump(&stats::HANDLER_RUNS);
    while reap_one() {}
    Errno::set_raw(saved);
}

/// The textbook bug: one waitpid per signal. Standard signals do not queue,
/// so when several children exit before the handler runs, the others stay
/// zombies (until a later SIGCHLD happens to reap one of them).
extern "C" fn on_sigchld_once(_: libc::c_int) {
    let saved = Errno::last_raw();
    stats::bump(&stats::HANDLER_RUNS);
    reap_one();
    Errno::set_raw(saved);
}

/// The `--reap blocking` step (also used by the prefork parent's sigwait
/// loop): reap every child that has exited, without blocking.
pub fn reap_exited() {
    while reap_one() {}
}

/// One waitpid(-1, WNOHANG); true if a child was reaped.
fn reap_one() -> bool {
    stats::bump(&stats::WAIT_CALLS);
    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(_) => false,
        Ok(status) => {
            stats::bump(&stats::REAPED);
            if let Some(pid) = status.pid() {
                forget_worker(pid);
            }
            true
        }
    }
}

/// Frees the worker slot of `pid`, if it is a prefork worker.
fn forget_worker(pid: Pid) {
    for slot in &WORKERS {
        if slot
            .compare_exchange(pid.as_raw(), 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}
