//! `--model fork-per-conn`: the parent accepts, and forks one child per
//! connection.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::socket::accept;
use nix::unistd::ForkResult;

use crate::child::{self, Plan};
use crate::cli::Reap;
use crate::stats::{self, ACCEPTED};
use crate::{lifecycle, reap, signals};

/// The accept loop. Returns when SIGTERM/SIGINT asks the server to stop.
pub fn run(plan: &Plan<'_>, listener: &OwnedFd) -> anyhow::Result<()> {
    let args = plan.args;
    let listen_fd = listener.as_raw_fd();
    while !signals::stopping() {
        let conn = match accept(listen_fd) {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            // The stop handler shut the socket down (EINVAL) or interrupted us.
            Err(_) if signals::stopping() => break,
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                eprintln!("forkserver: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(e).context("accept"),
        };
        let n = ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;

        if args.reap == Reap::Blocking {
            // No SIGCHLD handler: children that exited since the last accept
            // are reaped now, and only now.
            reap::reap_exited();
        }

        match signals::fork_child() {
            Ok(ForkResult::Child) => child::run(plan, conn, listen_fd),
            Ok(ForkResult::Parent { .. }) => {
                stats::bump(&stats::FORKED);
                drop(conn);
            }
            Err(e) => {
                stats::bump(&stats::FORK_FAILURES);
                eprintln!("forkserver: fork failed: {e}, connection {n} dropped");
                drop(conn);
            }
        }

        if args.exit_after == Some(n) {
            lifecycle::parent_death(args, n);
        }
    }
    Ok(())
}
