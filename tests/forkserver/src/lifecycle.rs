//! Session leadership, controlling terminal, subreaper, and parent death.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::openpty;
use nix::sys::signal::{SigSet, Signal, raise};
use nix::unistd::{ForkResult, fork, getpgrp, getpid, setsid};

use crate::cli::ServeArgs;
use crate::signals;

nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

/// The pseudo-terminal that is the session's controlling terminal; kept open
/// for the life of the server.
pub struct ControllingTty {
    _master: OwnedFd,
    _slave: OwnedFd,
}

/// `--setsid` (and `--controlling-tty`): make the server a session leader.
///
/// setsid(2) fails with EPERM for a process-group leader (e.g. a command
/// started by an interactive shell), so in that case the server forks once and
/// the original process exits 0, like daemon(3): the session leader is the
/// pid printed in the startup line.
pub fn become_session_leader(controlling_tty: bool) -> anyhow::Result<Option<ControllingTty>> {
    if getpgrp() == getpid() {
        // SAFETY: still single-threaded.
        match unsafe { fork() }.context("fork before setsid")? {
            ForkResult::Parent { .. } => crate::exit_demo::underscore_exit(0),
            ForkResult::Child => {}
        }
    }
    setsid().context("setsid")?;
    if !controlling_tty {
        return Ok(None);
    }
    // A session leader without a controlling terminal acquires one with
    // TIOCSCTTY; its process group becomes the terminal's foreground group,
    // and children forked later inherit that group. When the leader exits,
    // the kernel sends SIGHUP to the foreground group (disassociate_ctty() in
    // drivers/tty/tty_jobctrl.c).
    let pty = openpty(None, None).context("openpty")?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
    unsafe { tiocsctty(pty.slave.as_raw_fd(), 0) }.context("ioctl(TIOCSCTTY)")?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("fcntl(FD_CLOEXEC)")?;
    }
    Ok(Some(ControllingTty {
        _master: pty.master,
        _slave: pty.slave,
    }))
}

/// `--subreaper`: orphaned descendants are reparented to this process.
pub fn become_subreaper() -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")
}

/// `--exit-after N` reached: the parent dies, leaving its children orphaned.
pub fn parent_death(args: &ServeArgs, accepted: u64) -> ! {
    match args.die_by_signal {
        Some(signal) => {
            eprintln!("forkserver: killing itself with {signal} after {accepted} connections");
            if signal != Signal::SIGKILL {
                signals::set_default(signal);
                let mut set = SigSet::empty();
                set.add(signal);
                let _ = set.thread_unblock();
            }
            let _ = raise(signal);
            // Not reached for a terminating signal.
            crate::exit_demo::underscore_exit(1)
        }
        None => {
            eprintln!(
                "forkserver: exiting with status {} after {accepted} connections, children left running",
                args.exit_code
            );
            std::process::exit(args.exit_code)
        }
    }
}
