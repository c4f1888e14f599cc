//! The rules' window on /proc (the [`ProcView`] the model asks before it
//! flags something), and the snapshots used for discovery and
//! reconciliation.

use std::collections::{BTreeMap, HashSet};

use crate::{
    discovery::{self, ProcInfo},
    model::{ProcStat, ProcView, Snapshot, SnapshotHolder, SnapshotProc},
    targets::Selection,
};

/// The real /proc.
pub struct RealProc;

/// Syscalls a process waiting for connections sits in: accept itself, or
/// a readiness wait on the listening socket (event-loop workers).
const WAITING_FOR_CONNECTIONS: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
];

impl ProcView for RealProc {
    fn stat(&self, pid: u32) -> Option<ProcStat> {
        discovery::process(pid).map(|p| ProcStat {
            state: p.state,
            ppid: p.ppid,
            start_ns: p.start_ns,
            comm: p.comm,
        })
    }

    fn holds_socket(&self, pid: u32, inode: u64) -> Option<bool> {
        if !std::path::Path::new(&format!("/proc/{pid}/fd")).exists() {
            return None;
        }
        Some(discovery::socket_fds(pid).iter().any(|&(_, i)| i == inode))
    }

    fn waits_for_connections(&self, pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .and_then(|s| syscall_nr(&s))
            .is_some_and(|nr| WAITING_FOR_CONNECTIONS.contains(&nr))
    }

    fn cpu_wait_ns(&self, pid: u32) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()
            .and_then(|s| run_delay(&s))
    }
}

/// `run_delay` (ns spent runnable, waiting for a CPU) of /proc/PID/schedstat:
/// `cpu_time run_delay timeslices`.
fn run_delay(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The syscall number in /proc/PID/syscall: `NR arg1 ... sp pc` while
/// blocked in a syscall, `-1 sp pc` in user space, `running` otherwise.
fn syscall_nr(text: &str) -> Option<i64> {
    text.split_whitespace().next()?.parse().ok()
}

/// What /proc shows of the selection's processes (targets and descendants),
/// and the listening sockets they hold.
pub fn snapshot(selection: &Selection, also: &HashSet<u32>) -> (Snapshot, BTreeMap<u32, ProcInfo>) {
    let procs = discovery::all();
    let mut want = selection.resolve(&procs);
    // Processes the agent already follows stay in the picture even if no
    // target matches them any more (e.g. re-parented away from the target).
    for pid in also {
        if procs.contains_key(pid) {
            want.entry(*pid).or_insert(0);
        }
    }
    let pids: HashSet<u32> = want.keys().copied().collect();
    let holders = discovery::listen_fd_holders(&pids)
        .into_iter()
        .map(|(pid, fd, inode, sock)| SnapshotHolder {
            pid,
            fd,
            inode,
            port: sock.port,
            family: sock.family,
        })
        .collect();
    let snap = Snapshot {
        procs: want
            .iter()
            .filter_map(|(&pid, &server)| {
                let p = procs.get(&pid)?;
                Some(SnapshotProc {
                    pid,
                    ppid: p.ppid,
                    comm: p.comm.clone(),
                    state: p.state,
                    start_ns: p.start_ns,
                    server,
                    // A target's own children often match too (same comm,
                    // same cgroup): only the topmost one is the target.
                    is_root_target: selection.matches(p).is_some() && !want.contains_key(&p.ppid),
                })
            })
            .collect(),
        holders,
    };
    (snap, procs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines() {
        assert_eq!(
            syscall_nr("43 0x3 0x7ffd 0x0 0x0 0x0 0x0 0x7ffd 0x7f\n"),
            Some(43)
        );
        assert_eq!(syscall_nr("-1 0x7ffd 0x7f\n"), Some(-1));
        assert_eq!(syscall_nr("running\n"), None);
        assert_eq!(syscall_nr(""), None);
    }

    #[test]
    fn schedstat_lines() {
        assert_eq!(run_delay("1234 5678 9\n"), Some(5678));
        assert_eq!(run_delay("1234\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn hostile_syscall_files_do_not_panic(text in "\\PC*") {
            let _ = syscall_nr(&text);
            let _ = run_delay(&text);
        }
    }
}
