//! The process model and the rules: a live picture of the tracked servers'
//! process trees, fed with decoded events and a clock, that opens and
//! resolves findings. No I/O: the few facts it needs from /proc come through
//! the [`ProcView`] trait, so synthetic event sequences drive it in tests.
//!
//! Time is CLOCK_MONOTONIC ns, the clock of the events; process start times
//! are CLOCK_BOOTTIME ns (the base of /proc's starttime) and are compared at
//! clock-tick precision.

pub mod findings;
mod lifecycle;
mod listen;
pub mod process;
mod reconcile;
mod sigchld;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use findings::{Change, Finding, FindingKey, FindingKind, Findings, NewParentKind};
use process::Process;
pub use reconcile::{Snapshot, SnapshotHolder, SnapshotProc};

use crate::event::{Body, Event};

/// Settings of the rules.
#[derive(Debug, Clone)]
pub struct Config {
    /// A zombie older than this is an unreaped child (default 2 s).
    pub zombie_after_ns: u64,
    /// A child still holding an inherited listening socket after this,
    /// without closing or accepting on it, leaks it (default 250 ms).
    pub listen_grace_ns: u64,
    /// Most processes followed at once.
    pub max_processes: usize,
    pub max_open_findings: usize,
    pub max_resolved_findings: usize,
    /// Precision of start times read from /proc (one clock tick).
    pub tick_ns: u64,
    /// CLOCK_BOOTTIME minus CLOCK_MONOTONIC: places start times on the event clock.
    pub boot_offset_ns: u64,
    /// How long after a parent's death an orphan's death by SIGHUP is
    /// blamed on the session leader's death.
    pub sighup_window_ns: u64,
    /// How long to keep asking /proc for an orphan's new parent.
    pub reparent_timeout_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            zombie_after_ns: 2_000_000_000,
            listen_grace_ns: 250_000_000,
            max_processes: 131_072,
            max_open_findings: 10_000,
            max_resolved_findings: 1_000,
            tick_ns: 10_000_000,
            boot_offset_ns: 0,
            sighup_window_ns: 5_000_000_000,
            reparent_timeout_ns: 2_000_000_000,
        }
    }
}

/// /proc as the rules see it. Implemented over the real /proc by the
/// agent, and by fixtures in tests.
pub trait ProcView {
    /// State, parent and start time of `pid`, `None` if there is no such process.
    fn stat(&self, pid: u32) -> Option<ProcStat>;
    /// Whether `pid` has an fd on socket `inode` (`None`: cannot tell).
    fn holds_socket(&self, pid: u32, inode: u64) -> Option<bool>;
    /// Whether `pid` is blocked waiting for connections (in accept, poll,
    /// select or epoll_wait): how a pre-fork worker found at start-up shows.
    fn waits_for_connections(&self, pid: u32) -> bool;
    /// How long `pid` has waited for a CPU while runnable, since it was
    /// forked (`run_delay` of /proc/PID/schedstat).
    fn cpu_wait_ns(&self, pid: u32) -> Option<u64>;
}

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    /// CLOCK_BOOTTIME ns, tick precision.
    pub start_ns: u64,
    pub comm: String,
}

/// Who released an exited process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reaper {
    /// Its (original) parent waited for it.
    Parent,
    /// It was re-parented to init, which reaped it.
    Init,
    /// It was re-parented to a subreaper, which reaped it.
    Subreaper,
    /// The parent ignores SIGCHLD or set SA_NOCLDWAIT: the kernel reaped it.
    Auto,
}

impl Reaper {
    pub const ALL: [Reaper; 4] = [
        Reaper::Parent,
        Reaper::Init,
        Reaper::Subreaper,
        Reaper::Auto,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reaper::Parent => "parent",
            Reaper::Init => "init",
            Reaper::Subreaper => "subreaper",
            Reaper::Auto => "auto",
        }
    }
}

/// A memory cap that was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Processes,
    Findings,
}

/// What the model tells the agent, drained after each call.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    FindingOpened(Finding),
    /// An open finding's evidence changed (e.g. more failures counted).
    FindingUpdated(Finding),
    FindingResolved(Finding),
    Forked {
        server: u32,
    },
    Exited {
        server: u32,
        signaled: bool,
        lifetime_s: Option<f64>,
    },
    Reaped {
        server: u32,
        reaper: Reaper,
        latency_s: Option<f64>,
    },
    Orphaned {
        server: u32,
        new_parent: NewParentKind,
    },
    SigchldCoalesced {
        server: u32,
    },
    ForkFailed {
        server: u32,
        errno: u32,
    },
    ListenFdLeak {
        server: u32,
        across_exec: bool,
    },
    /// A child that never closed an inherited listening socket exited
    /// within the grace period (the kernel closed it): counted, not flagged.
    ListenFdClosedAtExit {
        server: u32,
    },
    LimitReached(Limit),
    /// The process is no longer followed: drop it from the kernel's table.
    Untrack {
        pid: u32,
    },
    /// No process holds this listening socket any more.
    SocketGone {
        inode: u64,
    },
    /// A target given by pid exited.
    TargetExited {
        pid: u32,
        comm: String,
        server: u32,
    },
}

impl Output {
    /// The server an output counts for, if it counts for one.
    pub fn server(&self) -> Option<u32> {
        match self {
            Output::Forked { server }
            | Output::Exited { server, .. }
            | Output::Reaped { server, .. }
            | Output::Orphaned { server, .. }
            | Output::SigchldCoalesced { server }
            | Output::ForkFailed { server, .. }
            | Output::ListenFdLeak { server, .. }
            | Output::ListenFdClosedAtExit { server }
            | Output::TargetExited { server, .. } => Some(*server),
            Output::FindingOpened(f) | Output::FindingUpdated(f) | Output::FindingResolved(f) => {
                Some(f.server)
            }
            Output::LimitReached(_) | Output::Untrack { .. } | Output::SocketGone { .. } => None,
        }
    }
}

/// A timer of the rules: something to check at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Has this zombie been reaped?
    Zombie { pid: u32, start_ns: u64 },
    /// Does this process still hold this socket without having accepted?
    ListenGrace { pid: u32, start_ns: u64, inode: u64 },
    /// Who is the new parent of this orphan?
    Reparent { pid: u32, start_ns: u64 },
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub inode: u64,
    pub port: u16,
    pub family: u16,
    pub server: u32,
    /// The process that listened on it (or the topmost holder found in /proc).
    pub owner: Option<u32>,
}

/// Per-server counts kept in step with the model, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounts {
    pub tracked: u64,
    pub zombies: u64,
}

pub struct Model {
    cfg: Config,
    procs: HashMap<u32, Process>,
    sockets: HashMap<u64, Socket>,
    findings: Findings,
    timers: BTreeSet<(u64, Timer)>,
    counts: HashMap<u32, ServerCounts>,
    out: Vec<Output>,
}

impl Model {
    pub fn new(cfg: Config) -> Self {
        Self {
            findings: Findings::new(cfg.max_open_findings, cfg.max_resolved_findings),
            cfg,
            procs: HashMap::new(),
            sockets: HashMap::new(),
            timers: BTreeSet::new(),
            counts: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// Takes what happened since the last call.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn findings(&self) -> &Findings {
        &self.findings
    }

    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.sockets.values()
    }

    pub fn counts(&self, server: u32) -> ServerCounts {
        self.counts.get(&server).copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// The earliest timer deadline, for the caller to sleep until.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Applies one event.
    pub fn apply(&mut self, ev: &Event) {
        let now = ev.ts_ns;
        match &ev.body {
            Body::Fork {
                child,
                parent,
                thread,
                child_start_ns,
                comm,
                untracked,
                ..
            } => {
                if !thread {
                    self.on_fork(ev, *child, *parent, *child_start_ns, comm, *untracked);
                }
            }
            Body::Exec {
                new_target,
                start_ns,
                ppid,
                comm,
                filename,
                ..
            } => self.on_exec(ev, *new_target, *start_ns, *ppid, comm, filename),
            Body::Exit {
                ppid,
                status,
                start_ns,
                comm,
                autoreaped,
            } => self.on_exit(ev, *ppid, *status, *start_ns, comm, *autoreaped),
            Body::Release {
                reaper,
                status,
                start_ns,
            } => {
                self.on_release(ev.pid, *start_ns, Some(*reaper), Some(*status), now);
            }
            Body::Wait {
                options,
                child,
                ret,
                status,
                ..
            } => self.on_wait(ev, *options, *child, *ret, *status),
            Body::Listen {
                fd,
                inode,
                port,
                family,
                ..
            } => self.on_listen(ev, *fd, *inode, *port, *family),
            Body::Accept { inode, .. } => self.on_accept(ev, *inode),
            Body::ListenFdClose { fd, inode } => self.on_close(ev, *fd, *inode),
            Body::CloseRange {
                first,
                last,
                flags,
                ret,
            } => self.on_close_range(ev, *first, *last, *flags, *ret),
            Body::ListenFdDup {
                newfd,
                inode,
                replaced_inode,
                oldfd,
                ..
            } => self.on_dup(ev, *oldfd, *newfd, *inode, *replaced_inode),
            Body::ExecListenFd { fd, inode } => self.on_exec_listen_fd(ev, *fd, *inode),
            Body::SigchldGenerate { result, .. } => self.on_sigchld_generate(ev, *result),
            Body::SigchldDeliver { handler, .. } => self.on_sigchld_deliver(ev, *handler),
            Body::SignalReturn => self.on_signal_return(ev),
            Body::ForkFailed { errno, .. } => self.on_fork_failed(ev, *errno),
            Body::Subreaper { enabled } => {
                if let Some(p) = self.known(ev) {
                    p.subreaper = *enabled;
                }
            }
        }
    }

    /// Runs the timers due at `now`, asking `view` what only /proc knows.
    pub fn tick(&mut self, now: u64, view: &dyn ProcView) {
        while let Some(&(deadline, timer)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Zombie { pid, start_ns } => self.zombie_due(pid, start_ns, now, view),
                Timer::ListenGrace {
                    pid,
                    start_ns,
                    inode,
                } => self.listen_grace_due(pid, start_ns, inode, now, view),
                Timer::Reparent { pid, start_ns } => self.reparent_due(pid, start_ns, now, view),
            }
        }
    }

    fn timer(&mut self, at: u64, t: Timer) {
        self.timers.insert((at, t));
    }

    /// Same process: same pid and start time (tick precision; 0 = unknown
    /// matches anything).
    fn same_start(&self, a: u64, b: u64) -> bool {
        a == 0 || b == 0 || a / self.cfg.tick_ns == b / self.cfg.tick_ns
    }

    /// The process an event is about, created on the spot if the agent did
    /// not know it yet (it was tracked by the kernel before the agent saw it).
    fn known(&mut self, ev: &Event) -> Option<&mut Process> {
        if !self.procs.contains_key(&ev.pid) {
            let p = Process::new(ev.pid, 0, ev.server, 0, String::new());
            if !self.insert(p) {
                return None;
            }
        }
        self.procs.get_mut(&ev.pid)
    }

    /// Adds a process, unless the cap is reached (then the kernel is told
    /// to stop tracking it).
    fn insert(&mut self, p: Process) -> bool {
        if self.procs.len() >= self.cfg.max_processes && !self.procs.contains_key(&p.pid) {
            self.out.push(Output::LimitReached(Limit::Processes));
            self.out.push(Output::Untrack { pid: p.pid });
            return false;
        }
        let c = self.counts.entry(p.server).or_default();
        c.tracked += 1;
        if p.is_zombie() {
            c.zombies += 1;
        }
        if let Some(parent) = self.procs.get_mut(&p.ppid)
            && parent.children.insert(p.pid)
            && p.is_zombie()
        {
            parent.zombie_kids += 1;
        }
        self.procs.insert(p.pid, p);
        true
    }

    /// Moves `pid` under `new_ppid`, keeping the children sets and zombie
    /// counts of both parents in step.
    fn set_parent(&mut self, pid: u32, new_ppid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let old = p.ppid;
        if old == new_ppid || new_ppid == 0 {
            return;
        }
        p.ppid = new_ppid;
        let zombie = p.is_zombie();
        // zombie_kids counts the zombies among `children`: only a pid that
        // was in (or enters) the set moves the count.
        if let Some(op) = self.procs.get_mut(&old)
            && op.children.remove(&pid)
            && zombie
        {
            op.zombie_kids = op.zombie_kids.saturating_sub(1);
        }
        if let Some(np) = self.procs.get_mut(&new_ppid)
            && np.children.insert(pid)
            && zombie
        {
            np.zombie_kids += 1;
        }
    }

    /// Marks `pid` exited (a zombie now), counting it in its parent.
    fn mark_exited(&mut self, pid: u32, info: process::ExitInfo) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if p.exit.is_some() {
            return;
        }
        p.exit = Some(info);
        let (ppid, server) = (p.ppid, p.server);
        self.counts.entry(server).or_default().zombies += 1;
        if let Some(parent) = self.procs.get_mut(&ppid)
            && parent.children.contains(&pid)
        {
            parent.zombie_kids += 1;
        }
    }

    /// Forgets a process (released, or replaced by a newer one with its pid).
    fn remove(&mut self, pid: u32, now: u64, why: &str) -> Option<Process> {
        let p = self.procs.remove(&pid)?;
        let c = self.counts.entry(p.server).or_default();
        c.tracked = c.tracked.saturating_sub(1);
        if p.is_zombie() {
            c.zombies = c.zombies.saturating_sub(1);
        }
        if let Some(parent) = self.procs.get_mut(&p.ppid)
            && parent.children.remove(&pid)
            && p.is_zombie()
        {
            parent.zombie_kids = parent.zombie_kids.saturating_sub(1);
        }
        for key in self.findings.keys_of(pid, p.start_ns) {
            self.resolve(&key, now, why);
        }
        let held: Vec<u64> = p.listen_fds.values().copied().collect();
        for inode in held {
            self.maybe_socket_gone(inode);
        }
        Some(p)
    }

    fn open(&mut self, key: FindingKey, finding: Finding) {
        match self.findings.open(key, finding) {
            Change::Opened(f) => self.out.push(Output::FindingOpened(f)),
            Change::Updated(f) => self.out.push(Output::FindingUpdated(f)),
            Change::Dropped => self.out.push(Output::LimitReached(Limit::Findings)),
            Change::Resolved(_) => {}
        }
    }

    fn resolve(&mut self, key: &FindingKey, now: u64, why: &str) {
        if let Some(Change::Resolved(f)) = self.findings.resolve(key, now, why) {
            self.out.push(Output::FindingResolved(f));
        }
    }

    fn key(kind: FindingKind, p: &Process, detail: u64) -> FindingKey {
        FindingKey {
            kind,
            pid: p.pid,
            start_ns: p.start_ns,
            detail,
        }
    }

    /// The comm of `pid` if the model knows it.
    fn comm_of(&self, pid: u32) -> String {
        self.procs
            .get(&pid)
            .map_or_else(String::new, |p| p.comm.clone())
    }

    /// Monotonic ns of a CLOCK_BOOTTIME start time.
    fn start_to_mono(&self, start_ns: u64) -> Option<u64> {
        (start_ns != 0).then(|| start_ns.saturating_sub(self.cfg.boot_offset_ns))
    }
}

/// `name (pid N)`, or `pid N` when the name is unknown.
pub fn who(comm: &str, pid: u32) -> String {
    if comm.is_empty() {
        format!("pid {pid}")
    } else {
        format!("{comm} (pid {pid})")
    }
}

/// Seconds for humans: `250ms`, `2.0s`.
pub fn human_ns(ns: u64) -> String {
    if ns < 1_000_000_000 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{:.1}s", ns as f64 / 1e9)
    }
}
