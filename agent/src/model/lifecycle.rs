//! Process lifecycle rules: fork, exec, exit, wait, release; unreaped
//! children (zombies past the threshold), orphans and their new parents,
//! fork failures.

use crate::event::{Event, ExitStatus, WCONTINUED, WNOWAIT, WUNTRACED, signal_name};

use super::{
    Model, Output, ProcView, Reaper, Timer,
    findings::{Evidence, Finding, FindingKind, NewParentKind, Obtained, UnreapedCause},
    human_ns,
    process::{ExitInfo, Held, PendingReparent, Process},
    who,
};

impl Model {
    pub(super) fn on_fork(
        &mut self,
        ev: &Event,
        child: u32,
        parent: u32,
        start_ns: u64,
        comm: &str,
        untracked: bool,
    ) {
        let now = ev.ts_ns;
        if let Some(old) = self.procs.get(&child) {
            if self.same_start(old.start_ns, start_ns) && old.start_ns != 0 {
                return; // already known (seen in /proc during start-up)
            }
            // The pid was reused: the process we knew is gone, and its
            // release was missed.
            self.remove(child, now, "process gone (pid reused)");
        }
        let forker = self.known(ev).map(|p| {
            let fds = (!p.listen_fds.is_empty()).then(|| p.listen_fds.clone());
            (p.server, p.start_ns, fds)
        });
        let Some((server, forker_start, fds)) = forker else {
            return;
        };
        // A successful fork resolves the forker's fork failures.
        for key in self.findings.keys_of(ev.pid, forker_start) {
            if key.kind == FindingKind::ForkFailure {
                self.resolve(&key, now, "fork succeeded again");
            }
        }
        self.out.push(Output::Forked { server });
        if untracked {
            return; // the kernel's table was full: nothing will follow
        }
        let mut p = Process::new(child, start_ns, server, parent, comm.to_string());
        p.born_ns = Some(now);
        // fork copies the fd table: the child holds every listening socket
        // the parent held, and must close or use each within the grace period.
        for (&fd, &inode) in fds.iter().flatten() {
            p.listen_fds.insert(fd, inode);
            p.held.entry(inode).or_insert(Held {
                since_ns: now,
                how: Obtained::Fork,
            });
        }
        let inodes: Vec<u64> = p.held.keys().copied().collect();
        if self.insert(p) {
            for inode in inodes {
                self.timer(
                    now + self.cfg.listen_grace_ns,
                    Timer::ListenGrace {
                        pid: child,
                        start_ns,
                        inode,
                    },
                );
            }
        }
    }

    pub(super) fn on_exec(
        &mut self,
        ev: &Event,
        new_target: bool,
        start_ns: u64,
        ppid: u32,
        comm: &str,
        filename: &str,
    ) {
        let now = ev.ts_ns;
        if new_target && !self.procs.contains_key(&ev.pid) {
            let mut p = Process::new(ev.pid, start_ns, ev.server, ppid, comm.to_string());
            p.born_ns = self.start_to_mono(start_ns);
            p.is_root_target = true;
            self.insert(p);
        }
        if self.known(ev).is_none() {
            return;
        }
        self.set_parent(ev.pid, ppid);
        let Some(p) = self.procs.get_mut(&ev.pid) else {
            return;
        };
        if p.start_ns == 0 {
            p.start_ns = start_ns;
        }
        p.comm = comm.to_string();
        p.program = Some(filename.to_string());
        p.exec_ns = Some(now);
        p.waits_since_exec = 0;
        // Another program now: the fds that survived come next as
        // ExecListenFd events; sockets it created or accepted on belong to
        // the old program.
        let dropped: Vec<u64> = p.listen_fds.values().copied().collect();
        p.listen_fds.clear();
        p.held.clear();
        p.owns.clear();
        p.accepted.clear();
        let (pid, start) = (p.pid, p.start_ns);
        let keys: Vec<_> = self
            .findings
            .keys_of(pid, start)
            .into_iter()
            .filter(|k| {
                matches!(
                    k.kind,
                    FindingKind::LeakedListenFd | FindingKind::ListenFdAcrossExec
                )
            })
            .collect();
        for key in keys {
            self.resolve(&key, now, "the process exec'd another program");
        }
        for inode in dropped {
            self.maybe_socket_gone(inode);
        }
    }

    pub(super) fn on_exit(
        &mut self,
        ev: &Event,
        ppid: u32,
        status: ExitStatus,
        start_ns: u64,
        comm: &str,
        autoreaped: bool,
    ) {
        let now = ev.ts_ns;
        if let Some(p) = self.procs.get(&ev.pid) {
            if !self.same_start(p.start_ns, start_ns) {
                if start_ns < p.start_ns {
                    return; // about an older process that had this pid
                }
                // The one we knew is gone (its release was missed) and a
                // newer one with its pid, whose fork we missed, exited.
                self.remove(ev.pid, now, "process gone (pid reused)");
            } else if p.is_zombie() {
                // Two threads exiting at once can both report the group's death.
                return;
            }
        }
        let grace = self.cfg.listen_grace_ns;
        if self.known(ev).is_none() {
            return;
        }
        self.set_parent(ev.pid, ppid);
        self.mark_exited(
            ev.pid,
            ExitInfo {
                at_ns: Some(now),
                status: Some(status),
                autoreaped,
            },
        );
        let Some(p) = self.procs.get_mut(&ev.pid) else {
            return;
        };
        if p.start_ns == 0 {
            p.start_ns = start_ns;
        }
        if !comm.is_empty() {
            p.comm = comm.to_string();
        }
        let lifetime_s = p.born_ns.map(|b| now.saturating_sub(b) as f64 / 1e9);
        let (pid, server, pstart, parent) = (p.pid, p.server, p.start_ns, p.ppid);
        let children: Vec<u32> = p.children.iter().copied().collect();
        let comm = p.comm.clone();
        let is_root = p.is_root_target;
        let quick_closes = p
            .held
            .iter()
            .filter(|(inode, h)| {
                h.how == Obtained::Fork
                    && now.saturating_sub(h.since_ns) < grace
                    && p.listen_fds.values().any(|i| i == *inode)
                    && !p.accepted.contains(inode)
            })
            .count();
        let dropped: Vec<u64> = p.listen_fds.values().copied().collect();
        p.listen_fds.clear();
        p.held.clear();
        p.handler_run = None;
        self.out.push(Output::Exited {
            server,
            signaled: matches!(status, ExitStatus::Signaled { .. }),
            lifetime_s,
        });
        for _ in 0..quick_closes {
            self.out.push(Output::ListenFdClosedAtExit { server });
        }
        // Its findings about live behaviour end with it.
        let keys: Vec<_> = self
            .findings
            .keys_of(pid, pstart)
            .into_iter()
            .filter(|k| k.kind != FindingKind::OrphanReparented)
            .collect();
        for key in keys {
            self.resolve(&key, now, "the process exited");
        }
        for inode in dropped {
            self.maybe_socket_gone(inode);
        }
        if is_root {
            self.out.push(Output::TargetExited {
                pid,
                comm: comm.clone(),
                server,
            });
        }
        // Its parent's handler run, if one is going on, sees one more exit.
        if let Some(run) = self
            .procs
            .get_mut(&parent)
            .and_then(|pp| pp.handler_run.as_mut())
        {
            run.exits_during += 1;
        }
        // An orphan killed by the SIGHUP that followed its session leader's death.
        if status
            == (ExitStatus::Signaled {
                signal: 1,
                core_dumped: false,
            })
        {
            self.note_sighup(pid, pstart, now);
        }
        // Its children are re-parented (in exit_notify, right after this
        // event): find out to whom.
        for c in children {
            if let Some(child) = self.procs.get_mut(&c) {
                child.reparent = Some(PendingReparent {
                    old_parent: pid,
                    old_parent_comm: comm.clone(),
                    old_parent_status: Some(status),
                    since_ns: now,
                });
                let start = child.start_ns;
                self.timer(
                    now,
                    Timer::Reparent {
                        pid: c,
                        start_ns: start,
                    },
                );
            }
        }
        if !autoreaped {
            self.timer(
                now + self.cfg.zombie_after_ns,
                Timer::Zombie {
                    pid,
                    start_ns: pstart,
                },
            );
        }
    }

    /// A wait call returned. A child it reports with an exit status (and
    /// without WNOWAIT) is released.
    pub(super) fn on_wait(
        &mut self,
        ev: &Event,
        options: u32,
        child: u32,
        ret: i64,
        status: Option<ExitStatus>,
    ) {
        let now = ev.ts_ns;
        let Some(p) = self.known(ev) else { return };
        p.waits += 1;
        p.last_wait_ns = Some(now);
        p.waits_since_exec += 1;
        // A child returned without WNOWAIT was reaped if it exited. Without
        // the status (waitpid(pid, NULL, 0)) only WUNTRACED/WCONTINUED could
        // have reported something else.
        let exited = match status {
            Some(s) => s.is_exit(),
            None => options & (WUNTRACED | WCONTINUED) == 0,
        };
        let reaped = child != 0 && ret >= 0 && options & WNOWAIT == 0 && exited;
        if let Some(run) = p.handler_run.as_mut()
            && run.tid == ev.tid
        {
            run.last_wait_ret = Some(if child != 0 { i64::from(child) } else { ret });
            if reaped {
                run.waits_ok += 1;
            }
        }
        if reaped {
            let start = self.procs.get(&child).map_or(0, |c| c.start_ns);
            self.on_release(child, start, Some(ev.pid), status, now);
        }
    }

    /// `pid` (started `start_ns`) was released by `reaper` at `now`.
    pub(super) fn on_release(
        &mut self,
        pid: u32,
        start_ns: u64,
        reaper: Option<u32>,
        status: Option<ExitStatus>,
        now: u64,
    ) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        if !self.same_start(p.start_ns, start_ns) {
            if start_ns > p.start_ns {
                // A newer process with this pid was released: the one we
                // knew is long gone too.
                self.remove(pid, now, "process gone (pid reused)");
            }
            return;
        }
        let p = p.clone();
        // A missed exit event: the release says it ended.
        if p.exit.is_none() {
            self.out.push(Output::Exited {
                server: p.server,
                signaled: matches!(status, Some(ExitStatus::Signaled { .. })),
                lifetime_s: None,
            });
        }
        // An orphan that was reaped before /proc told us its new parent.
        // Reaper 0: not visible (already gone, or outside the agent's pid
        // namespace): nothing to say about a new parent.
        if let (Some(pending), Some(r)) = (&p.reparent, reaper)
            && r != 0
            && r != pending.old_parent
        {
            let pending = pending.clone();
            self.open_orphan(pid, r, None, &pending, now);
        }
        let kind = if p.exit.is_some_and(|e| e.autoreaped) {
            Reaper::Auto
        } else if reaper == Some(1) || (reaper.is_none() && p.ppid == 1) {
            Reaper::Init
        } else if p.orphaned || p.reparent.is_some() {
            Reaper::Subreaper
        } else {
            Reaper::Parent
        };
        let latency_s = p
            .exit
            .and_then(|e| e.at_ns)
            .map(|at| now.saturating_sub(at) as f64 / 1e9);
        // Without a reaper (found gone in /proc) only auto-reaping is certain.
        if reaper.is_some() || kind == Reaper::Auto {
            self.out.push(Output::Reaped {
                server: p.server,
                reaper: kind,
                latency_s,
            });
        }
        let why = match reaper {
            Some(r) if r != 0 => format!("reaped by {}", who(&self.comm_of(r), r)),
            _ => "reaped".to_string(),
        };
        self.remove(pid, now, &why);
        // One zombie fewer: the parent's one-per-signal finding resolves
        // when none is left.
        self.maybe_resolve_sigchld(p.ppid, now);
    }

    /// The zombie timer fired: flag it if /proc agrees it is still a zombie.
    pub(super) fn zombie_due(&mut self, pid: u32, start_ns: u64, now: u64, view: &dyn ProcView) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        if !self.same_start(p.start_ns, start_ns) || !p.is_zombie() {
            return;
        }
        match view.stat(pid) {
            Some(s) if s.state == 'Z' && self.same_start(p.start_ns, s.start_ns) => {
                self.set_parent(pid, s.ppid);
                self.flag_zombie(pid, now, view);
                // Keep checking: a lost release must not leave a phantom.
                self.timer(
                    now + self.cfg.zombie_after_ns,
                    Timer::Zombie { pid, start_ns },
                );
            }
            // Gone (or a new process has the pid): it was reaped and the
            // release event was lost.
            _ => {
                let start = p.start_ns;
                self.on_release(pid, start, None, None, now);
            }
        }
    }

    fn flag_zombie(&mut self, pid: u32, now: u64, view: &dyn ProcView) {
        let Some(ppid) = self.procs.get(&pid).map(|p| p.ppid) else {
            return;
        };
        self.refresh_comm(ppid, view);
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let parent = self.procs.get(&p.ppid);
        let parent_comm = parent.map_or_else(
            || view.stat(p.ppid).map_or_else(String::new, |s| s.comm),
            |pp| pp.comm.clone(),
        );
        let cause = self.unreaped_cause(p, parent);
        let exited_ns = p.exit.and_then(|e| e.at_ns);
        let status = p.exit.and_then(|e| e.status);
        let age = exited_ns.map_or_else(
            || "since before forkwatch started".to_string(),
            |at| format!("for {}", human_ns(now.saturating_sub(at))),
        );
        let status_text = status.map_or_else(|| "exited".to_string(), |s| format!("exited ({s})"));
        let summary = format!(
            "{} is a zombie: {status_text}, not reaped by its parent {} {age}; {}",
            who(&p.comm, pid),
            who(&parent_comm, p.ppid),
            cause.describe(&who(&parent_comm, p.ppid)),
        );
        let finding = Finding {
            id: 0,
            kind: FindingKind::UnreapedChild,
            server: p.server,
            pid,
            start_ns: p.start_ns,
            ppid: p.ppid,
            comm: p.comm.clone(),
            summary,
            remedy: cause.remedy().to_string(),
            opened_ns: now,
            resolved_ns: None,
            resolution: None,
            evidence: Evidence::Unreaped {
                status,
                exited_ns,
                cause,
            },
        };
        let key = Self::key(FindingKind::UnreapedChild, p, 0);
        if let Some(existing) = self.findings.get(&key) {
            // Keep the first summary's age; only a new parent or cause is news.
            if let (Evidence::Unreaped { cause: a, .. }, Evidence::Unreaped { cause: b, .. }) =
                (&existing.evidence, &finding.evidence)
                && a == b
                && existing.ppid == finding.ppid
            {
                return;
            }
        }
        self.open(key, finding);
    }

    /// Takes `pid`'s name from /proc, where the process is still the one
    /// the model knows: a program may rename itself after exec (prctl
    /// PR_SET_NAME), as busybox's applets run through /proc/self/exe do.
    fn refresh_comm(&mut self, pid: u32, view: &dyn ProcView) {
        let Some(s) = view.stat(pid) else {
            return;
        };
        let same = self
            .procs
            .get(&pid)
            .is_some_and(|p| self.same_start(p.start_ns, s.start_ns));
        if let (true, Some(p)) = (same, self.procs.get_mut(&pid)) {
            p.comm = s.comm;
        }
    }

    /// The most likely reason `p` is not reaped by `parent`.
    fn unreaped_cause(&self, p: &Process, parent: Option<&Process>) -> UnreapedCause {
        let Some(parent) = parent else {
            return if p.ppid == 1 {
                UnreapedCause::AdoptedByInit
            } else {
                UnreapedCause::ParentNotWatched
            };
        };
        if let Some((exited, reaped, left)) = parent.reaps_one_per_signal {
            return UnreapedCause::HandlerReapsOnePerSignal {
                exited,
                reaped,
                left,
            };
        }
        let forked_before_exec = match (parent.exec_ns, p.born_ns) {
            (Some(exec), Some(born)) => born < exec,
            _ => false,
        };
        if forked_before_exec && parent.waits_since_exec == 0 {
            return UnreapedCause::ParentExeced {
                program: parent.program_name(),
            };
        }
        if parent.waits == 0 {
            // Found as a zombie at start-up: the parent's past is unknown.
            if p.exit.is_some_and(|e| e.at_ns.is_none()) {
                return UnreapedCause::ParentNotWatched;
            }
            return UnreapedCause::ParentNeverWaits;
        }
        UnreapedCause::ParentWaitsLate
    }

    /// Find an orphan's new parent: /proc knows it once exit_notify ran.
    pub(super) fn reparent_due(&mut self, pid: u32, start_ns: u64, now: u64, view: &dyn ProcView) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let Some(pending) = p.reparent.clone() else {
            return;
        };
        if !self.same_start(p.start_ns, start_ns) {
            return;
        }
        match view.stat(pid) {
            Some(s) if self.same_start(p.start_ns, s.start_ns) && s.ppid != pending.old_parent => {
                let comm = self
                    .procs
                    .get(&s.ppid)
                    .map(|np| np.comm.clone())
                    .or_else(|| view.stat(s.ppid).map(|ps| ps.comm));
                self.open_orphan(pid, s.ppid, comm, &pending, now);
            }
            Some(_) if now.saturating_sub(pending.since_ns) < self.cfg.reparent_timeout_ns => {
                // exit_notify has not run yet: look again shortly.
                self.timer(now + 1_000_000, Timer::Reparent { pid, start_ns });
            }
            // Gone: its release (with the reaper) will tell.
            _ => {}
        }
    }

    /// Opens the orphan finding of `pid`, now a child of `new_parent`.
    fn open_orphan(
        &mut self,
        pid: u32,
        new_parent: u32,
        new_parent_comm: Option<String>,
        pending: &PendingReparent,
        now: u64,
    ) {
        let new_comm = new_parent_comm.unwrap_or_else(|| self.comm_of(new_parent));
        let subreaper_known = self.procs.get(&new_parent).is_some_and(|np| np.subreaper);
        let kind = if new_parent == 1 && !subreaper_known {
            NewParentKind::Init
        } else {
            NewParentKind::Subreaper
        };
        self.set_parent(pid, new_parent);
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.reparent = None;
        p.orphaned = true;
        let p = p.clone();
        let how = match pending.old_parent_status {
            Some(ExitStatus::Signaled { signal, .. }) => {
                format!("was killed by {}", signal_name(signal))
            }
            Some(ExitStatus::Exited { code }) => format!("exited with code {code}"),
            _ => "died".to_string(),
        };
        let state = if p.is_zombie() { "zombie" } else { "live" };
        let summary = format!(
            "{} ({state}) was orphaned when its parent {} {how}; re-parented to {} ({})",
            who(&p.comm, pid),
            who(&pending.old_parent_comm, pending.old_parent),
            who(&new_comm, new_parent),
            kind.name(),
        );
        let finding = Finding {
            id: 0,
            kind: FindingKind::OrphanReparented,
            server: p.server,
            pid,
            start_ns: p.start_ns,
            ppid: new_parent,
            comm: p.comm.clone(),
            summary,
            remedy: "make the parent wait for its children before it exits (or forward SIGTERM to them and reap); if the children must outlive it, have a supervisor set PR_SET_CHILD_SUBREAPER and reap them".into(),
            opened_ns: now,
            resolved_ns: None,
            resolution: None,
            evidence: Evidence::Orphan {
                old_parent: pending.old_parent,
                old_parent_comm: pending.old_parent_comm.clone(),
                old_parent_status: pending.old_parent_status,
                new_parent,
                new_parent_comm: new_comm,
                new_parent_kind: kind,
                killed_by_sighup: false,
            },
        };
        self.out.push(Output::Orphaned {
            server: p.server,
            new_parent: kind,
        });
        self.open(Self::key(FindingKind::OrphanReparented, &p, 0), finding);
        // A zombie that is now init's (or a subreaper's): its unreaped
        // finding stays open, with the new parent and cause, until the new
        // parent reaps it.
        if p.is_zombie()
            && self
                .findings
                .is_open(&Self::key(FindingKind::UnreapedChild, &p, 0))
        {
            self.flag_zombie(pid, now, &NoProc);
        }
    }

    /// An orphan died of SIGHUP soon after its old parent died: the
    /// session leader's death hung up the terminal.
    fn note_sighup(&mut self, pid: u32, start_ns: u64, now: u64) {
        let key = super::findings::FindingKey {
            kind: FindingKind::OrphanReparented,
            pid,
            start_ns,
            detail: 0,
        };
        let Some(mut f) = self.findings.get(&key).cloned() else {
            return;
        };
        if now.saturating_sub(f.opened_ns) > self.cfg.sighup_window_ns {
            return;
        }
        if let Evidence::Orphan {
            killed_by_sighup,
            old_parent,
            old_parent_comm,
            ..
        } = &mut f.evidence
        {
            *killed_by_sighup = true;
            f.summary = format!(
                "{}; then killed by SIGHUP: its session leader {} died and the terminal hung up",
                f.summary,
                who(old_parent_comm, *old_parent)
            );
        }
        self.open(key, f);
    }

    pub(super) fn on_fork_failed(&mut self, ev: &Event, errno: u32) {
        let now = ev.ts_ns;
        let Some(p) = self.known(ev) else { return };
        let p = p.clone();
        let zombies = p.zombie_kids;
        let key = Self::key(FindingKind::ForkFailure, &p, u64::from(errno));
        let failures = match self.findings.get(&key).map(|f| &f.evidence) {
            Some(Evidence::ForkFailure { failures, .. }) => failures + 1,
            _ => 1,
        };
        let name = errno_name(errno);
        let mut summary = format!(
            "{} failed to fork: {name} ({failures} time{})",
            who(&p.comm, p.pid),
            if failures == 1 { "" } else { "s" }
        );
        if zombies > 0 {
            summary.push_str(&format!(
                "; it has {zombies} unreaped children holding pids"
            ));
        }
        let remedy = if zombies > 0 {
            "reap the children (loop waitpid(-1, WNOHANG) in the SIGCHLD handler): zombies count against pids.max and RLIMIT_NPROC"
        } else {
            "raise the limit that refused the fork (pids.max of the cgroup, RLIMIT_NPROC, kernel.pid_max, or memory), or fork less"
        };
        self.out.push(Output::ForkFailed {
            server: p.server,
            errno,
        });
        let finding = Finding {
            id: 0,
            kind: FindingKind::ForkFailure,
            server: p.server,
            pid: p.pid,
            start_ns: p.start_ns,
            ppid: p.ppid,
            comm: p.comm.clone(),
            summary,
            remedy: remedy.into(),
            opened_ns: now,
            resolved_ns: None,
            resolution: None,
            evidence: Evidence::ForkFailure {
                errno,
                errno_name: name,
                failures,
                zombie_children: zombies,
            },
        };
        self.open(key, finding);
    }
}

/// A [`ProcView`] that knows nothing: for rules that can do without /proc.
struct NoProc;

impl ProcView for NoProc {
    fn stat(&self, _: u32) -> Option<super::ProcStat> {
        None
    }
    fn holds_socket(&self, _: u32, _: u64) -> Option<bool> {
        None
    }
    fn waits_for_connections(&self, _: u32) -> bool {
        false
    }
    fn cpu_wait_ns(&self, _: u32) -> Option<u64> {
        None
    }
}

/// `EAGAIN` for 11, and so on.
pub fn errno_name(errno: u32) -> String {
    let e = nix::errno::Errno::from_raw(errno as i32);
    if e == nix::errno::Errno::UnknownErrno {
        format!("errno {errno}")
    } else {
        format!("{e:?}")
    }
}
