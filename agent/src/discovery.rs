//! Reading /proc: the processes that exist, their parents, their state, the
//! listening sockets they hold. Used at start-up (so a restarted agent knows
//! what one that ran all along knows) and to reconcile after lost events.
//! This is the edge where the agent touches /proc; the process model itself
//! never reads it.

use std::collections::{BTreeMap, HashMap, HashSet};

use procfs::process::{FDTarget, Process};

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// The state letter of /proc/PID/stat (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Start time in CLOCK_BOOTTIME ns, at clock-tick precision.
    pub start_ns: u64,
    pub threads: u32,
    /// The unified (v2) cgroup path, e.g. `/system.slice/x.service`.
    pub cgroup: Option<String>,
}

/// A listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenInfo {
    pub port: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
}

/// Nanoseconds per clock tick (USER_HZ).
pub fn ns_per_tick() -> u64 {
    1_000_000_000 / procfs::ticks_per_second().max(1)
}

/// Reads one process; `None` if it is gone (or unreadable).
pub fn process(pid: u32) -> Option<ProcInfo> {
    let p = Process::new(pid as i32).ok()?;
    info(&p)
}

fn info(p: &Process) -> Option<ProcInfo> {
    let stat = p.stat().ok()?;
    Some(ProcInfo {
        pid: stat.pid as u32,
        ppid: stat.ppid as u32,
        comm: stat.comm.clone(),
        state: stat.state,
        start_ns: stat.starttime * ns_per_tick(),
        threads: stat.num_threads.max(0) as u32,
        cgroup: cgroup_v2_path(p),
    })
}

fn cgroup_v2_path(p: &Process) -> Option<String> {
    p.cgroups()
        .ok()?
        .into_iter()
        .find(|c| c.hierarchy == 0)
        .map(|c| c.pathname)
}

/// Every process visible in /proc, by pid.
pub fn all() -> BTreeMap<u32, ProcInfo> {
    let Ok(iter) = procfs::process::all_processes() else {
        return BTreeMap::new();
    };
    iter.filter_map(Result::ok)
        .filter_map(|p| info(&p))
        .map(|i| (i.pid, i))
        .collect()
}

/// The socket inodes among `pid`'s fds, with the fd numbers.
pub fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Ok(p) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let Ok(fds) = p.fd() else { return Vec::new() };
    fds.filter_map(Result::ok)
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some((fd.fd as u32, inode)),
            _ => None,
        })
        .collect()
}

/// Listening TCP sockets in `pid`'s network namespace, by inode.
pub fn listening_sockets(pid: u32) -> HashMap<u64, ListenInfo> {
    let mut out = HashMap::new();
    let Ok(p) = Process::new(pid as i32) else {
        return out;
    };
    for (entries, family) in [
        (p.tcp(), forkwatch_common::AF_INET),
        (p.tcp6(), forkwatch_common::AF_INET6),
    ] {
        for e in entries.into_iter().flatten() {
            if e.state == procfs::net::TcpState::Listen {
                out.insert(
                    e.inode,
                    ListenInfo {
                        port: e.local_address.port(),
                        family,
                    },
                );
            }
        }
    }
    out
}

/// For each of `pids`, the fds that refer to a listening TCP socket, as
/// (pid, fd, inode, socket). Reads each distinct network namespace once.
pub fn listen_fd_holders(pids: &HashSet<u32>) -> Vec<(u32, u32, u64, ListenInfo)> {
    let mut by_netns: HashMap<u64, HashMap<u64, ListenInfo>> = HashMap::new();
    let mut out = Vec::new();
    for &pid in pids {
        let fds = socket_fds(pid);
        if fds.is_empty() {
            continue;
        }
        let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        let listening = by_netns
            .entry(netns)
            .or_insert_with(|| listening_sockets(pid));
        for (fd, inode) in fds {
            if let Some(info) = listening.get(&inode) {
                out.push((pid, fd, inode, *info));
            }
        }
    }
    out.sort_unstable_by_key(|&(pid, fd, ..)| (pid, fd));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = process(std::process::id()).expect("own /proc entry");
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_ns > 0);
    }
}
