//! `--model prefork`: N workers forked up front, each looping on accept on the
//! shared listening socket (Apache prefork). The parent never accepts; it
//! waits for workers to die and re-forks the ones it reaps.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::socket::accept;
use nix::unistd::ForkResult;

use crate::cli::{Reap, ServeArgs};
use crate::reap::WORKERS;
use crate::{echo, exit_demo, reap, signals, stats};

/// The parent's loop. Returns when SIGTERM/SIGINT asks the server to stop.
///
/// SIGCHLD, SIGTERM and SIGINT stay blocked except while the parent sleeps, so
/// the stop flag and the worker table are only checked between signals:
/// - handler policies (loop, once): sleep in sigsuspend(2); the SIGCHLD handler
///   reaps and frees the worker's slot;
/// - `blocking`: no handler; sleep in sigwait(2) and, on SIGCHLD, reap with a
///   waitpid(-1, WNOHANG) loop;
/// - none, ignore, nocldwait: the parent never learns that a worker died (no
///   wait), so dead workers are not replaced.
///
/// A worker whose fork fails is retried at the next wake-up.
pub fn run(args: &ServeArgs, listener: &OwnedFd) -> anyhow::Result<()> {
    let mut sleep_set = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        sleep_set.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&sleep_set), None)?;

    let workers = &WORKERS[..usize::from(args.workers)];
    while !signals::stopping() {
        for slot in workers
            .iter()
            .filter(|slot| slot.load(Ordering::Relaxed) == 0)
        {
            match signals::fork_child() {
                Ok(ForkResult::Child) => worker(args, listener.as_raw_fd()),
                Ok(ForkResult::Parent { child }) => {
                    stats::bump(&stats::FORKED);
                    slot.store(child.as_raw(), Ordering::Relaxed);
                }
                Err(e) => {
                    stats::bump(&stats::FORK_FAILURES);
                    eprintln!("forkserver: fork of a worker failed: {e}");
                    break;
                }
            }
        }
        if args.reap == Reap::Blocking {
            match sleep_set.wait() {
                Ok(Signal::SIGCHLD) => reap::reap_exited(),
                Ok(_) => signals::STOP.store(true, Ordering::Relaxed),
                Err(_) => {}
            }
        } else {
            // Returns (EINTR) after a handler ran.
            let _ = SigSet::empty().suspend();
        }
    }
    Ok(())
}

/// A worker: accept, echo, close, forever. It is killed by the parent's
/// SIGTERM at shutdown.
fn worker(args: &ServeArgs, listen_fd: RawFd) -> ! {
    loop {
        match accept(listen_fd) {
            Ok(fd) => {
                // SAFETY: accept returned a new descriptor that nothing else owns.
                let conn = unsafe { OwnedFd::from_raw_fd(fd) };
                echo::serve(conn.as_fd(), conn.as_fd(), args.conn_lifetime, args.threads);
            }
            Err(Errno::EINTR | Errno::ECONNABORTED) => {}
            Err(e) => {
                eprintln!("forkserver: worker {}: accept: {e}", std::process::id());
                exit_demo::exit_child(args.child_exit, 1);
            }
        }
    }
}
