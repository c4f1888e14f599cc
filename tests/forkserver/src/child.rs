//! What a connection child does after fork.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::{ForkResult, close, fork};

use crate::cli::ServeArgs;
use crate::{echo, exec, exit_demo};

/// Per-connection behaviour, prepared once by the parent.
pub struct Plan<'a> {
    pub args: &'a ServeArgs,
    pub exec: Option<(PathBuf, Vec<String>)>,
}

/// The connection child: runs in the process fork just created, never
/// returns.
pub fn run(plan: &Plan<'_>, conn: OwnedFd, listener: RawFd) -> ! {
    let args = plan.args;
    if args.child_closes_listener.yes() {
        // The fix for the leaked listen fd: the child never accepts, so it
        // has no business holding the listening socket.
        let _ = close(listener);
    }
    if args.grandchildren {
        spawn_helper(&conn, args.helper_lifetime);
    }
    if let Some((path, argv)) = &plan.exec {
        exec::exec_handler(conn, path, argv);
    }
    echo::serve(conn.as_fd(), conn.as_fd(), args.conn_lifetime, args.threads);
    drop(conn);
    exit_demo::exit_child(args.child_exit, 0)
}

/// Forks a helper that closes its copy of the connection (so the client still
/// sees the child's FIN), sleeps for `lifetime` and _exits. The child never
/// waits for it: when the child exits first, the helper is reparented.
fn spawn_helper(conn: &OwnedFd, lifetime: Duration) {
    // SAFETY: the connection child is still single-threaded here (any
    // `--threads` thread is started later).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = close(conn.as_raw_fd());
            std::thread::sleep(lifetime);
            crate::exit_demo::underscore_exit(0)
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => eprintln!(
            "forkserver: child {}: fork of helper failed: {e}",
            std::process::id()
        ),
    }
}
