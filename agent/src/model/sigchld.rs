//! SIGCHLD rules: coalesced signals, and handlers that reap one child per
//! signal. Standard signals do not queue: when several children exit before
//! the parent's handler runs, the parent gets one SIGCHLD for all of them,
//! and a handler that calls wait once leaves the others as zombies.

use crate::event::{Event, SignalResult};

use super::{
    Model, Output,
    findings::{Evidence, Finding, FindingKey, FindingKind},
    process::HandlerRun,
    who,
};

impl Model {
    pub(super) fn on_sigchld_generate(&mut self, ev: &Event, result: SignalResult) {
        if result != SignalResult::AlreadyPending {
            return;
        }
        let Some(p) = self.known(ev) else { return };
        p.sigchld_coalesced += 1;
        let server = p.server;
        self.out.push(Output::SigchldCoalesced { server });
    }

    /// A handler (not SIG_DFL/SIG_IGN) starts running in thread `ev.tid`.
    pub(super) fn on_sigchld_deliver(&mut self, ev: &Event, handler: u64) {
        if handler <= 1 {
            return;
        }
        let zombies = self.zombie_children(ev.pid);
        let Some(p) = self.known(ev) else { return };
        p.handler_run = Some(HandlerRun {
            tid: ev.tid,
            zombies_at_start: zombies,
            ..HandlerRun::default()
        });
    }

    /// rt_sigreturn: the handler run (if it is one) ends. It reaped "one
    /// per signal" if its last wait returned a child (it never saw "no
    /// more": 0 or ECHILD) and zombies that had exited are left.
    pub(super) fn on_signal_return(&mut self, ev: &Event) {
        let now = ev.ts_ns;
        let left = self.zombie_children(ev.pid);
        let Some(p) = self.procs.get_mut(&ev.pid) else {
            return;
        };
        let Some(run) = p.handler_run else { return };
        if run.tid != ev.tid {
            return;
        }
        p.handler_run = None;
        let exited = run.zombies_at_start + run.exits_during;
        let stopped_early = run.last_wait_ret.is_some_and(|r| r > 0);
        if !(stopped_early && run.waits_ok >= 1 && run.waits_ok < exited && left > 0) {
            return;
        }
        p.reaps_one_per_signal = Some((exited, run.waits_ok, left));
        p.handler_runs_flagged += 1;
        let p = p.clone();
        let finding = Finding {
            id: 0,
            kind: FindingKind::SigchldCoalesced,
            server: p.server,
            pid: p.pid,
            start_ns: p.start_ns,
            ppid: p.ppid,
            comm: p.comm.clone(),
            summary: format!(
                "{}: handler reaps one child per SIGCHLD: {exited} exited, {} reaped, {left} left ({} SIGCHLD coalesced so far)",
                who(&p.comm, p.pid),
                run.waits_ok,
                p.sigchld_coalesced
            ),
            remedy: "loop waitpid(-1, WNOHANG) until it returns 0 in the SIGCHLD handler".into(),
            opened_ns: now,
            resolved_ns: None,
            resolution: None,
            evidence: Evidence::Sigchld {
                exited,
                reaped: run.waits_ok,
                left,
                coalesced: p.sigchld_coalesced,
                runs: p.handler_runs_flagged,
            },
        };
        self.open(Self::key(FindingKind::SigchldCoalesced, &p, 0), finding);
        // The parent's zombies now have their cause.
        let children: Vec<u32> = p.children.iter().copied().collect();
        for c in children {
            let Some(child) = self.procs.get(&c) else {
                continue;
            };
            let key = Self::key(FindingKind::UnreapedChild, child, 0);
            if let Some(mut f) = self.findings.get(&key).cloned() {
                if let Evidence::Unreaped { cause, .. } = &mut f.evidence {
                    *cause = super::findings::UnreapedCause::HandlerReapsOnePerSignal {
                        exited,
                        reaped: run.waits_ok,
                        left,
                    };
                    f.remedy = cause.remedy().to_string();
                    f.summary = format!(
                        "{} is a zombie not reaped by its parent {}; {}",
                        who(&f.comm, f.pid),
                        who(&p.comm, p.pid),
                        cause.describe(&who(&p.comm, p.pid))
                    );
                }
                self.open(key, f);
            }
        }
    }

    /// Resolves `ppid`'s one-per-signal finding once it has no zombie left.
    pub(super) fn maybe_resolve_sigchld(&mut self, ppid: u32, now: u64) {
        let Some(p) = self.procs.get_mut(&ppid) else {
            return;
        };
        if p.reaps_one_per_signal.is_none() || p.zombie_kids > 0 {
            return;
        }
        p.reaps_one_per_signal = None;
        let key = FindingKey {
            kind: FindingKind::SigchldCoalesced,
            pid: p.pid,
            start_ns: p.start_ns,
            detail: 0,
        };
        self.resolve(&key, now, "all its children are reaped");
    }

    /// Exited, unreaped children of `pid`.
    pub(super) fn zombie_children(&self, pid: u32) -> u32 {
        self.procs.get(&pid).map_or(0, |p| p.zombie_kids)
    }
}
