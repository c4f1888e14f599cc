//! Findings: what the agent flags, with the evidence and the remedy, kept
//! while open and for a while after they are resolved.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use crate::event::ExitStatus;

/// The kinds of finding (DESIGN.md, "What the agent flags").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    UnreapedChild,
    OrphanReparented,
    LeakedListenFd,
    ListenFdAcrossExec,
    SigchldCoalesced,
    ForkFailure,
}

impl FindingKind {
    pub const ALL: [FindingKind; 6] = [
        FindingKind::UnreapedChild,
        FindingKind::OrphanReparented,
        FindingKind::LeakedListenFd,
        FindingKind::ListenFdAcrossExec,
        FindingKind::SigchldCoalesced,
        FindingKind::ForkFailure,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            FindingKind::UnreapedChild => "unreaped_child",
            FindingKind::OrphanReparented => "orphan_reparented",
            FindingKind::LeakedListenFd => "leaked_listen_fd",
            FindingKind::ListenFdAcrossExec => "listen_fd_across_exec",
            FindingKind::SigchldCoalesced => "sigchld_coalesced",
            FindingKind::ForkFailure => "fork_failure",
        }
    }
}

/// Why a zombie is not being reaped, most likely first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum UnreapedCause {
    /// The parent's SIGCHLD handler calls wait once per signal while
    /// signals were coalesced.
    HandlerReapsOnePerSignal { exited: u32, reaped: u32, left: u32 },
    /// The parent exec'd a program that does not wait for the children the
    /// old program forked (`sh -c 'child & exec other'`).
    ParentExeced { program: String },
    /// The parent has never called wait4/waitid.
    ParentNeverWaits,
    /// The parent waits, but not since this child exited (it reaps only
    /// at certain points, e.g. after accept returns).
    ParentWaitsLate,
    /// The parent is not a tracked process (its calls are not seen).
    ParentNotWatched,
    /// Re-parented to init, which has not reaped it yet.
    AdoptedByInit,
}

impl UnreapedCause {
    pub fn describe(&self, parent: &str) -> String {
        match self {
            UnreapedCause::HandlerReapsOnePerSignal {
                exited,
                reaped,
                left,
            } => format!(
                "{parent}'s SIGCHLD handler reaps one child per SIGCHLD: {exited} exited, {reaped} reaped, {left} left"
            ),
            UnreapedCause::ParentExeced { program } => format!(
                "{parent} exec'd {program}, which does not wait for children the previous program forked"
            ),
            UnreapedCause::ParentNeverWaits => format!("{parent} never calls wait4/waitid"),
            UnreapedCause::ParentWaitsLate => {
                format!(
                    "{parent} has not called wait since this child exited (it reaps only now and then)"
                )
            }
            UnreapedCause::ParentNotWatched => format!("{parent} has not reaped it"),
            UnreapedCause::AdoptedByInit => {
                "re-parented to init, which has not reaped it yet".into()
            }
        }
    }

    pub fn remedy(&self) -> &'static str {
        match self {
            UnreapedCause::HandlerReapsOnePerSignal { .. } => {
                "loop waitpid(-1, WNOHANG) until it returns 0 in the SIGCHLD handler: signals do not queue, one SIGCHLD can stand for many exits"
            }
            UnreapedCause::ParentExeced { .. } => {
                "do not exec while children are running (wait for them first), or exec the child directly instead of `child & exec other`"
            }
            UnreapedCause::ParentNeverWaits => {
                "install a SIGCHLD handler that loops waitpid(-1, WNOHANG) until it returns 0, or set SIGCHLD to SIG_IGN if exit statuses are not needed"
            }
            UnreapedCause::ParentWaitsLate => {
                "reap from a SIGCHLD handler (loop waitpid(-1, WNOHANG)) instead of only between accepts, so children are reaped while the server is idle"
            }
            UnreapedCause::ParentNotWatched => {
                "make the parent wait for its children (waitpid), or run the child under a parent that does"
            }
            UnreapedCause::AdoptedByInit => {
                "the original parent died without waiting; if this persists, the pid namespace's init does not reap: run a real init (tini, dumb-init) as pid 1"
            }
        }
    }
}

/// To whom an orphan went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NewParentKind {
    /// The init of the pid namespace.
    Init,
    /// The nearest ancestor with PR_SET_CHILD_SUBREAPER.
    Subreaper,
}

impl NewParentKind {
    pub const fn name(self) -> &'static str {
        match self {
            NewParentKind::Init => "init",
            NewParentKind::Subreaper => "subreaper",
        }
    }
}

/// How a process came to hold a listening socket it did not create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Obtained {
    /// Inherited through fork.
    Fork,
    /// Still open after exec (no close-on-exec).
    Exec,
    /// Already held when the agent started (or reconciled).
    Discovered,
}

/// Kind-specific evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", untagged)]
pub enum Evidence {
    Unreaped {
        status: Option<ExitStatus>,
        /// Monotonic ns of the exit; `None` when it happened before the agent started.
        #[serde(skip)]
        exited_ns: Option<u64>,
        #[serde(flatten)]
        cause: UnreapedCause,
    },
    Orphan {
        old_parent: u32,
        old_parent_comm: String,
        old_parent_status: Option<ExitStatus>,
        new_parent: u32,
        new_parent_comm: String,
        new_parent_kind: NewParentKind,
        /// The orphan then died of the SIGHUP sent when its session leader died.
        killed_by_sighup: bool,
    },
    ListenFd {
        inode: u64,
        port: u16,
        /// The fds that refer to the socket.
        fds: Vec<u32>,
        obtained: Obtained,
        /// The program holding it (its comm, or the exec'd path).
        program: String,
        /// The process that created (listened on) the socket, if known.
        owner: Option<u32>,
    },
    Sigchld {
        exited: u32,
        reaped: u32,
        left: u32,
        /// SIGCHLD generated while one was pending, for this parent so far.
        coalesced: u64,
        /// Handler runs that stopped early.
        runs: u64,
    },
    ForkFailure {
        errno: u32,
        errno_name: String,
        failures: u64,
        /// Zombie children of the process when it last failed.
        zombie_children: u32,
    },
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub id: u64,
    pub kind: FindingKind,
    /// Index of the server (the output layer names it).
    #[serde(skip)]
    pub server: u32,
    pub pid: u32,
    /// Start time (CLOCK_BOOTTIME ns) of `pid`: with it, the process identity.
    pub start_ns: u64,
    pub ppid: u32,
    pub comm: String,
    /// One line in the server's terms.
    pub summary: String,
    /// One line: what to change.
    pub remedy: String,
    /// Monotonic ns when it opened / resolved.
    #[serde(skip)]
    pub opened_ns: u64,
    #[serde(skip)]
    pub resolved_ns: Option<u64>,
    /// Why it was resolved.
    pub resolution: Option<String>,
    pub evidence: Evidence,
}

impl Finding {
    pub fn is_open(&self) -> bool {
        self.resolved_ns.is_none()
    }
}

/// What makes two findings the same one: process identity, kind, and the
/// socket or errno for the kinds that can have several per process. The
/// field order is the sort order: a process's findings are one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingKey {
    pub pid: u32,
    pub start_ns: u64,
    pub kind: FindingKind,
    pub detail: u64,
}

/// Open findings and a bounded history of resolved ones.
#[derive(Debug)]
pub struct Findings {
    next_id: u64,
    open: BTreeMap<FindingKey, Finding>,
    resolved: VecDeque<Finding>,
    max_open: usize,
    max_resolved: usize,
    /// Open findings by (server, kind), kept in step for the gauges.
    open_counts: HashMap<(u32, FindingKind), u64>,
}

/// What a store operation did, for the outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Opened(Finding),
    Updated(Finding),
    Resolved(Finding),
    /// Not opened: the cap on open findings was reached.
    Dropped,
}

impl Findings {
    pub fn new(max_open: usize, max_resolved: usize) -> Self {
        Self {
            next_id: 1,
            open: BTreeMap::new(),
            resolved: VecDeque::new(),
            max_open,
            max_resolved,
            open_counts: HashMap::new(),
        }
    }

    pub fn get(&self, key: &FindingKey) -> Option<&Finding> {
        self.open.get(key)
    }

    pub fn is_open(&self, key: &FindingKey) -> bool {
        self.open.contains_key(key)
    }

    /// Opens a finding, or updates the open one with the same key (keeping
    /// its id and opening time).
    pub fn open(&mut self, key: FindingKey, mut finding: Finding) -> Change {
        if let Some(existing) = self.open.get_mut(&key) {
            finding.id = existing.id;
            finding.opened_ns = existing.opened_ns;
            if *existing == finding {
                return Change::Updated(finding);
            }
            *existing = finding.clone();
            return Change::Updated(finding);
        }
        if self.open.len() >= self.max_open {
            return Change::Dropped;
        }
        finding.id = self.next_id;
        self.next_id += 1;
        finding.resolved_ns = None;
        *self
            .open_counts
            .entry((finding.server, key.kind))
            .or_default() += 1;
        self.open.insert(key, finding.clone());
        Change::Opened(finding)
    }

    /// Resolves the open finding with this key, if any.
    pub fn resolve(&mut self, key: &FindingKey, now_ns: u64, why: &str) -> Option<Change> {
        let mut f = self.open.remove(key)?;
        if let Some(n) = self.open_counts.get_mut(&(f.server, key.kind)) {
            *n = n.saturating_sub(1);
        }
        f.resolved_ns = Some(now_ns);
        f.resolution = Some(why.to_string());
        if self.max_resolved > 0 {
            if self.resolved.len() >= self.max_resolved {
                self.resolved.pop_front();
            }
            self.resolved.push_back(f.clone());
        }
        Some(Change::Resolved(f))
    }

    /// Keys of the open findings about process (`pid`, `start_ns`): one
    /// range of the ordered map, so an exit costs O(log n), not a scan.
    pub fn keys_of(&self, pid: u32, start_ns: u64) -> Vec<FindingKey> {
        let lo = FindingKey {
            pid,
            start_ns,
            kind: FindingKind::ALL[0],
            detail: 0,
        };
        let hi = FindingKey {
            pid,
            start_ns,
            kind: FindingKind::ALL[FindingKind::ALL.len() - 1],
            detail: u64::MAX,
        };
        self.open.range(lo..=hi).map(|(k, _)| *k).collect()
    }

    pub fn open_findings(&self) -> impl Iterator<Item = &Finding> {
        self.open.values()
    }

    pub fn resolved_findings(&self) -> impl DoubleEndedIterator<Item = &Finding> {
        self.resolved.iter()
    }

    pub fn open_count(&self, server: u32, kind: FindingKind) -> u64 {
        self.open_counts.get(&(server, kind)).copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub fn open_len(&self) -> usize {
        self.open.len()
    }
}
