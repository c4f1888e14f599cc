//! What the model knows about one process.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::ExitStatus;

use super::findings::Obtained;

/// How a process ended, as far as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Monotonic ns of the exit; `None` when the process was already a
    /// zombie when the agent found it.
    pub at_ns: Option<u64>,
    pub status: Option<ExitStatus>,
    /// The parent ignores SIGCHLD / set SA_NOCLDWAIT: the kernel releases it.
    pub autoreaped: bool,
}

/// A run of the SIGCHLD handler, from delivery to rt_sigreturn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandlerRun {
    pub tid: u32,
    /// Unreaped exited children when the handler started.
    pub zombies_at_start: u32,
    /// Children that exited while it ran.
    pub exits_during: u32,
    /// wait calls in the handler that returned a child.
    pub waits_ok: u32,
    /// Return value of the handler's last wait call.
    pub last_wait_ret: Option<i64>,
}

/// A child whose parent died; its new parent is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReparent {
    pub old_parent: u32,
    pub old_parent_comm: String,
    pub old_parent_status: Option<ExitStatus>,
    /// Monotonic ns of the parent's death.
    pub since_ns: u64,
}

/// A listening socket this process holds without having created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Monotonic ns when it got it (fork, exec, or discovery).
    pub since_ns: u64,
    pub how: Obtained,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// CLOCK_BOOTTIME ns at tick precision or better; 0 when unknown.
    pub start_ns: u64,
    pub server: u32,
    pub ppid: u32,
    pub comm: String,
    /// Path of the last exec, if one was seen.
    pub program: Option<String>,
    /// Monotonic ns of the birth (fork seen, or derived from the start time).
    pub born_ns: Option<u64>,
    pub exit: Option<ExitInfo>,
    pub children: BTreeSet<u32>,
    /// How many of `children` are zombies (kept in step by the model, so
    /// SIGCHLD rules do not walk a server's thousands of children).
    pub zombie_kids: u32,
    pub subreaper: bool,
    /// Monotonic ns of the last exec.
    pub exec_ns: Option<u64>,
    /// Listening-socket fds: fd -> socket inode.
    pub listen_fds: BTreeMap<u32, u64>,
    /// Sockets it listened on itself (the owner is never a leak).
    pub owns: BTreeSet<u64>,
    /// Sockets it holds without having created them, since when and how.
    pub held: BTreeMap<u64, Held>,
    /// Sockets it accepted on (a pre-fork worker, not a leak).
    pub accepted: BTreeSet<u64>,
    /// wait calls seen from it, and when the last one (and the last
    /// successful one) returned.
    pub waits: u64,
    pub last_wait_ns: Option<u64>,
    pub waits_since_exec: u64,
    pub handler_run: Option<HandlerRun>,
    /// A handler run of this process stopped with zombies left.
    pub reaps_one_per_signal: Option<(u32, u32, u32)>,
    pub sigchld_coalesced: u64,
    pub handler_runs_flagged: u64,
    pub reparent: Option<PendingReparent>,
    /// The orphan finding was opened for it (its parent died).
    pub orphaned: bool,
    /// A target given by pid (reported when it exits).
    pub is_root_target: bool,
}

impl Process {
    /// The program it runs, as findings name it: the path of its last exec,
    /// except when that path names a file descriptor or a /proc link rather
    /// than a program (busybox's shell runs its applets through
    /// /proc/self/exe; fexecve() shows /dev/fd/N), or no exec was seen:
    /// then its comm.
    pub fn program_name(&self) -> String {
        match self.program.as_deref() {
            Some(path)
                if !path.is_empty()
                    && !path.starts_with("/proc/")
                    && !path.starts_with("/dev/fd/") =>
            {
                path.to_string()
            }
            _ => self.comm.clone(),
        }
    }

    pub fn new(pid: u32, start_ns: u64, server: u32, ppid: u32, comm: String) -> Self {
        Self {
            pid,
            start_ns,
            server,
            ppid,
            comm,
            program: None,
            born_ns: None,
            exit: None,
            children: BTreeSet::new(),
            zombie_kids: 0,
            subreaper: false,
            exec_ns: None,
            listen_fds: BTreeMap::new(),
            owns: BTreeSet::new(),
            held: BTreeMap::new(),
            accepted: BTreeSet::new(),
            waits: 0,
            last_wait_ns: None,
            waits_since_exec: 0,
            handler_run: None,
            reaps_one_per_signal: None,
            sigchld_coalesced: 0,
            handler_runs_flagged: 0,
            reparent: None,
            orphaned: false,
            is_root_target: false,
        }
    }

    pub fn is_zombie(&self) -> bool {
        self.exit.is_some()
    }

    /// The fds that refer to socket `inode`.
    pub fn fds_of(&self, inode: u64) -> Vec<u32> {
        self.listen_fds
            .iter()
            .filter(|&(_, &i)| i == inode)
            .map(|(&fd, _)| fd)
            .collect()
    }

    pub fn holds(&self, inode: u64) -> bool {
        self.listen_fds.values().any(|&i| i == inode)
    }
}
