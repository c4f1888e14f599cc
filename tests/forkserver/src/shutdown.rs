//! Clean shutdown on SIGTERM/SIGINT: every child gets SIGTERM (SIGKILL after
//! `--shutdown-timeout`) and is reaped, so the server exits 0 with no child
//! left behind. In the auto-reaping modes (ignore, nocldwait) the kernel
//! reaps and the server calls no wait at all, it only watches its children
//! disappear from /proc.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::getpid;

use crate::cli::Reap;
use crate::{procfs, signals, stats};

pub fn run(reap: Reap, timeout: Duration) {
    let auto_reap = matches!(reap, Reap::Ignore | Reap::Nocldwait);
    if !auto_reap {
        // From here on the main loop below reaps; no handler runs.
        signals::set_default(Signal::SIGCHLD);
    }
    let me = getpid();
    let start = Instant::now();
    let mut signaled = HashSet::new();
    loop {
        if !auto_reap {
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
                stats::bump(&stats::SHUTDOWN_REAPED);
            }
        }
        let children = procfs::children(me);
        if children.is_empty() {
            return;
        }
        let elapsed = start.elapsed();
        for &(pid, state) in &children {
            if state == 'Z' {
                continue;
            }
            if signaled.insert(pid) {
                let _ = kill(pid, Signal::SIGTERM);
            } else if elapsed > timeout {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        if elapsed > timeout + Duration::from_secs(5) {
            eprintln!(
                "forkserver: shutdown: {} children still present, giving up",
                children.len()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
