//! The rules driven by synthetic event sequences and a fake /proc.

use std::collections::{HashMap, HashSet};

use super::{
    Config, Model, Output, ProcStat, ProcView, Reaper, Snapshot, SnapshotHolder, SnapshotProc,
    findings::{Evidence, FindingKind, NewParentKind, UnreapedCause},
};
use crate::event::{Body, Event, ExitStatus, SignalResult, WaitSyscall};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

#[derive(Default)]
struct FakeProc {
    stats: HashMap<u32, ProcStat>,
    holds: HashMap<(u32, u64), bool>,
    accepting: HashSet<u32>,
    cpu_wait: HashMap<u32, u64>,
}

impl FakeProc {
    fn set(&mut self, pid: u32, state: char, ppid: u32, start_ns: u64) {
        self.stats.insert(
            pid,
            ProcStat {
                state,
                ppid,
                start_ns,
                comm: format!("p{pid}"),
            },
        );
    }
}

impl ProcView for FakeProc {
    fn stat(&self, pid: u32) -> Option<ProcStat> {
        self.stats.get(&pid).cloned()
    }
    fn holds_socket(&self, pid: u32, inode: u64) -> Option<bool> {
        self.holds.get(&(pid, inode)).copied()
    }
    fn waits_for_connections(&self, pid: u32) -> bool {
        self.accepting.contains(&pid)
    }
    fn cpu_wait_ns(&self, pid: u32) -> Option<u64> {
        self.cpu_wait.get(&pid).copied()
    }
}

fn ev(ts: u64, pid: u32, body: Body) -> Event {
    Event {
        ts_ns: ts,
        pid,
        tid: pid,
        server: 0,
        body,
    }
}

/// Start times far apart so tick-precision comparisons tell them apart.
fn start(pid: u32) -> u64 {
    u64::from(pid) * S
}

fn fork(ts: u64, parent: u32, child: u32) -> Event {
    ev(
        ts,
        parent,
        Body::Fork {
            child,
            child_tid: child,
            parent,
            thread: false,
            untracked: false,
            child_start_ns: start(child),
            comm: "server".into(),
        },
    )
}

fn exit(ts: u64, pid: u32, ppid: u32, code: i32) -> Event {
    exit_with(ts, pid, ppid, ExitStatus::Exited { code }, false)
}

fn exit_with(ts: u64, pid: u32, ppid: u32, status: ExitStatus, autoreaped: bool) -> Event {
    ev(
        ts,
        pid,
        Body::Exit {
            ppid,
            status,
            start_ns: start(pid),
            comm: "server".into(),
            autoreaped,
        },
    )
}

fn wait(ts: u64, reaper: u32, child: u32, code: i32) -> Event {
    ev(
        ts,
        reaper,
        Body::Wait {
            syscall: WaitSyscall::Wait4,
            id: -1,
            which: 0,
            options: 1,
            child,
            ret: i64::from(child),
            status: (child != 0).then_some(ExitStatus::Exited { code }),
        },
    )
}

fn release(ts: u64, pid: u32, reaper: u32) -> Event {
    ev(
        ts,
        pid,
        Body::Release {
            reaper,
            status: ExitStatus::Exited { code: 0 },
            start_ns: start(pid),
        },
    )
}

fn model() -> Model {
    Model::new(Config {
        tick_ns: 10 * MS,
        ..Config::default()
    })
}

/// A model that knows process `pid` (a server found at start-up).
fn with_server(pid: u32) -> Model {
    let mut m = model();
    m.reconcile(
        &Snapshot {
            procs: vec![SnapshotProc {
                pid,
                ppid: 1,
                comm: "server".into(),
                state: 'S',
                start_ns: start(pid),
                server: 0,
                is_root_target: true,
            }],
            holders: vec![],
        },
        0,
        true,
    );
    m.drain();
    m
}

fn opened(out: &[Output], kind: FindingKind) -> Vec<u32> {
    out.iter()
        .filter_map(|o| match o {
            Output::FindingOpened(f) if f.kind == kind => Some(f.pid),
            _ => None,
        })
        .collect()
}

fn resolved(out: &[Output], kind: FindingKind) -> Vec<u32> {
    out.iter()
        .filter_map(|o| match o {
            Output::FindingResolved(f) if f.kind == kind => Some(f.pid),
            _ => None,
        })
        .collect()
}

fn reaps(out: &[Output]) -> Vec<(Reaper, Option<f64>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reaped {
                reaper, latency_s, ..
            } => Some((*reaper, *latency_s)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_zombie_past_the_threshold_is_flagged_then_resolved_when_reaped() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&fork(10 * MS, 100, 101));
    m.apply(&exit(20 * MS, 101, 100, 7));
    view.set(101, 'Z', 100, start(101));
    m.tick(20 * MS + 1_999 * MS, &view);
    assert!(
        opened(&m.drain(), FindingKind::UnreapedChild).is_empty(),
        "not before 2 s"
    );
    m.tick(20 * MS + 2 * S, &view);
    let out = m.drain();
    assert_eq!(opened(&out, FindingKind::UnreapedChild), vec![101]);
    let f = m.findings().open_findings().next().unwrap();
    assert!(matches!(
        f.evidence,
        Evidence::Unreaped {
            cause: UnreapedCause::ParentNeverWaits,
            status: Some(ExitStatus::Exited { code: 7 }),
            ..
        }
    ));
    assert_eq!(m.counts(0).zombies, 1);

    m.apply(&wait(3 * S, 100, 101, 7));
    let out = m.drain();
    assert_eq!(resolved(&out, FindingKind::UnreapedChild), vec![101]);
    let r = reaps(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, Reaper::Parent);
    assert!((r[0].1.unwrap() - 2.98).abs() < 1e-6);
    assert_eq!(m.counts(0).zombies, 0);
    // The later release event of the same process changes nothing.
    m.apply(&release(3 * S + 5 * MS, 101, 100));
    assert!(reaps(&m.drain()).is_empty());
}

#[test]
fn one_waitpid_per_sigchld_is_named_with_the_counts() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    for c in 101..=105 {
        m.apply(&fork(MS, 100, c));
    }
    for c in 101..=105 {
        m.apply(&exit(10 * MS, c, 100, 0));
        view.set(c, 'Z', 100, start(c));
        let result = if c == 101 {
            SignalResult::Delivered
        } else {
            SignalResult::AlreadyPending
        };
        m.apply(&ev(
            10 * MS,
            100,
            Body::SigchldGenerate {
                sender: c,
                child: c,
                result,
                code: 1,
            },
        ));
    }
    m.apply(&ev(
        11 * MS,
        100,
        Body::SigchldDeliver {
            handler: 0x5555,
            sa_flags: 0,
        },
    ));
    m.apply(&wait(11 * MS, 100, 101, 0));
    m.apply(&ev(11 * MS, 100, Body::SignalReturn));
    view.stats.remove(&101);
    let out = m.drain();
    let coalesced = out
        .iter()
        .filter(|o| matches!(o, Output::SigchldCoalesced { .. }))
        .count();
    assert_eq!(coalesced, 4);
    assert_eq!(opened(&out, FindingKind::SigchldCoalesced), vec![100]);
    let f = m
        .findings()
        .open_findings()
        .find(|f| f.kind == FindingKind::SigchldCoalesced)
        .unwrap();
    assert!(
        f.summary
            .contains("handler reaps one child per SIGCHLD: 5 exited, 1 reaped, 4 left"),
        "{}",
        f.summary
    );

    m.tick(3 * S, &view);
    let out = m.drain();
    let mut zombies = opened(&out, FindingKind::UnreapedChild);
    zombies.sort_unstable();
    assert_eq!(zombies, vec![102, 103, 104, 105]);
    for f in m
        .findings()
        .open_findings()
        .filter(|f| f.kind == FindingKind::UnreapedChild)
    {
        assert!(matches!(
            f.evidence,
            Evidence::Unreaped {
                cause: UnreapedCause::HandlerReapsOnePerSignal {
                    exited: 5,
                    reaped: 1,
                    left: 4
                },
                ..
            }
        ));
        assert!(
            f.remedy
                .contains("loop waitpid(-1, WNOHANG) until it returns 0")
        );
    }

    // Reaping the rest resolves everything.
    for c in 102..=105 {
        m.apply(&wait(4 * S, 100, c, 0));
    }
    let out = m.drain();
    assert_eq!(resolved(&out, FindingKind::UnreapedChild).len(), 4);
    assert_eq!(resolved(&out, FindingKind::SigchldCoalesced), vec![100]);
    assert_eq!(m.findings().open_len(), 0);
}

#[test]
fn a_handler_that_loops_until_nothing_is_left_is_fine() {
    let mut m = with_server(100);
    let view = FakeProc::default();
    for c in 101..=103 {
        m.apply(&fork(MS, 100, c));
        m.apply(&exit(2 * MS, c, 100, 0));
    }
    m.apply(&ev(
        3 * MS,
        100,
        Body::SigchldDeliver {
            handler: 0x5555,
            sa_flags: 0,
        },
    ));
    for c in 101..=103 {
        m.apply(&wait(3 * MS, 100, c, 0));
    }
    m.apply(&wait(3 * MS, 100, 0, 0)); // WNOHANG: nothing left
    m.apply(&ev(3 * MS, 100, Body::SignalReturn));
    m.tick(10 * S, &view);
    let out = m.drain();
    assert_eq!(reaps(&out).len(), 3, "one reap-latency sample per child");
    assert!(
        reaps(&out)
            .iter()
            .all(|(r, l)| *r == Reaper::Parent && l.is_some())
    );
    assert_eq!(m.findings().open_len(), 0);
}

#[test]
fn ignored_sigchld_counts_as_auto_reap_and_never_flags() {
    let mut m = with_server(100);
    let view = FakeProc::default();
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit_with(
        2 * MS,
        101,
        100,
        ExitStatus::Exited { code: 0 },
        true,
    ));
    // The release (sched_process_free) comes an RCU grace period later.
    m.tick(10 * S, &view);
    m.apply(&release(10 * S + MS, 101, 100));
    let out = m.drain();
    assert!(opened(&out, FindingKind::UnreapedChild).is_empty());
    assert_eq!(reaps(&out).len(), 1);
    assert_eq!(reaps(&out)[0].0, Reaper::Auto);
}

#[test]
fn pid_reuse_never_attributes_to_the_wrong_process() {
    let mut m = with_server(100);
    let view = FakeProc::default();
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit(2 * MS, 101, 100, 1));
    // The release of this 101 is lost; the pid comes back for a new child.
    let mut reused = fork(3 * MS, 100, 101);
    if let Body::Fork { child_start_ns, .. } = &mut reused.body {
        *child_start_ns = 777 * S;
    }
    m.apply(&reused);
    assert_eq!(m.process(101).unwrap().start_ns, 777 * S);
    assert!(!m.process(101).unwrap().is_zombie(), "the new 101 is alive");
    // A stale release of the old 101 (old start time) must not touch the new one.
    m.apply(&release(4 * MS, 101, 100));
    assert!(m.process(101).is_some());
    // A stale exit of the old one neither.
    m.apply(&exit(5 * MS, 101, 100, 1));
    let p = m.process(101).unwrap();
    assert_eq!(p.start_ns, 777 * S);
    m.tick(10 * S, &view);
    assert!(opened(&m.drain(), FindingKind::UnreapedChild).is_empty());
}

#[test]
fn threads_are_not_processes() {
    let mut m = with_server(100);
    m.apply(&fork(MS, 100, 101));
    m.apply(&ev(
        2 * MS,
        101,
        Body::Fork {
            child: 101,
            child_tid: 150,
            parent: 100,
            thread: true,
            untracked: false,
            child_start_ns: start(150),
            comm: "server".into(),
        },
    ));
    assert_eq!(m.len(), 2, "the thread is not a process");
    // The leader thread exits first: no event (only group death reports);
    // then the group dies once, possibly reported twice by racing threads.
    m.apply(&exit(3 * MS, 101, 100, 0));
    m.apply(&exit(3 * MS, 101, 100, 0));
    let exits = m
        .drain()
        .iter()
        .filter(|o| matches!(o, Output::Exited { .. }))
        .count();
    assert_eq!(exits, 1);
}

/// `sh -c 'child & exec other'`: server 100 forks 101, execs `filename`
/// (the kernel naming it `comm`), and 101 exits and stays a zombie; the
/// unreaped cause flagged once /proc (`view`, told of the zombie) agrees.
fn exec_leaving_a_zombie(comm: &str, filename: &str, mut view: FakeProc) -> UnreapedCause {
    let mut m = with_server(100);
    m.apply(&fork(MS, 100, 101));
    m.apply(&ev(
        2 * MS,
        100,
        Body::Exec {
            old_tid: 100,
            new_target: false,
            start_ns: start(100),
            ppid: 1,
            comm: comm.into(),
            filename: filename.into(),
            filename_truncated: false,
        },
    ));
    m.apply(&exit(3 * MS, 101, 100, 0));
    view.set(101, 'Z', 100, start(101));
    m.tick(3 * S, &view);
    let f = m.findings().open_findings().next().expect("flagged");
    let Evidence::Unreaped {
        status,
        exited_ns,
        cause,
    } = &f.evidence
    else {
        panic!("{f:?}")
    };
    assert_eq!(*status, Some(ExitStatus::Exited { code: 0 }));
    assert_eq!(*exited_ns, Some(3 * MS));
    cause.clone()
}

#[test]
fn a_parent_that_execs_a_non_waiter_is_named() {
    assert_eq!(
        exec_leaving_a_zombie("sleep", "/bin/sleep", FakeProc::default()),
        UnreapedCause::ParentExeced {
            program: "/bin/sleep".into()
        }
    );
}

#[test]
fn a_program_exec_d_through_a_proc_link_is_named_by_its_comm() {
    // busybox sh runs `exec sleep` as /proc/self/exe (the kernel names it
    // "exe"), and the applet renames itself "sleep" with prctl: /proc says.
    let mut view = FakeProc::default();
    view.set(100, 'S', 1, start(100));
    view.stats.get_mut(&100).unwrap().comm = "sleep".into();
    assert_eq!(
        exec_leaving_a_zombie("exe", "/proc/self/exe", view),
        UnreapedCause::ParentExeced {
            program: "sleep".into()
        }
    );
}

#[test]
fn orphans_go_to_the_subreaper_and_are_reaped_by_it() {
    let mut m = with_server(50);
    let mut view = FakeProc::default();
    m.apply(&ev(MS, 50, Body::Subreaper { enabled: true }));
    m.apply(&fork(2 * MS, 50, 100));
    m.apply(&fork(3 * MS, 100, 101));
    m.apply(&exit_with(
        4 * MS,
        100,
        50,
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        },
        false,
    ));
    // exit_notify has not run yet: /proc still shows the old parent.
    view.set(101, 'S', 100, start(101));
    m.tick(4 * MS, &view);
    assert!(opened(&m.drain(), FindingKind::OrphanReparented).is_empty());
    view.set(101, 'S', 50, start(101));
    m.tick(6 * MS, &view);
    let out = m.drain();
    assert_eq!(opened(&out, FindingKind::OrphanReparented), vec![101]);
    assert!(out.contains(&Output::Orphaned {
        server: 0,
        new_parent: NewParentKind::Subreaper
    }));
    let f = m
        .findings()
        .open_findings()
        .find(|f| f.kind == FindingKind::OrphanReparented)
        .unwrap();
    assert!(f.summary.contains("killed by SIGKILL"), "{}", f.summary);
    assert_eq!(f.ppid, 50);

    m.apply(&exit(10 * MS, 101, 50, 0));
    m.apply(&wait(11 * MS, 50, 101, 0));
    let out = m.drain();
    assert_eq!(reaps(&out)[0].0, Reaper::Subreaper);
    assert_eq!(resolved(&out, FindingKind::OrphanReparented), vec![101]);
}

#[test]
fn orphans_killed_by_the_sighup_of_their_session_leader() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit(2 * MS, 100, 1, 0));
    view.set(101, 'S', 1, start(101));
    m.tick(2 * MS, &view);
    m.apply(&exit_with(
        3 * MS,
        101,
        1,
        ExitStatus::Signaled {
            signal: 1,
            core_dumped: false,
        },
        false,
    ));
    let f = m
        .findings()
        .open_findings()
        .find(|f| f.kind == FindingKind::OrphanReparented)
        .unwrap();
    assert!(matches!(
        f.evidence,
        Evidence::Orphan {
            killed_by_sighup: true,
            new_parent: 1,
            new_parent_kind: NewParentKind::Init,
            ..
        }
    ));
    // init reaps it: the finding resolves, the reap counts as init's.
    m.apply(&release(1500 * MS, 101, 1));
    let out = m.drain();
    assert_eq!(resolved(&out, FindingKind::OrphanReparented), vec![101]);
    assert_eq!(reaps(&out).last().unwrap().0, Reaper::Init);
}

fn listen(ts: u64, pid: u32, fd: u32, inode: u64) -> Event {
    ev(
        ts,
        pid,
        Body::Listen {
            fd,
            backlog: 128,
            inode,
            port: 7000,
            family: 2,
        },
    )
}

#[test]
fn leaked_listen_fds_and_the_ones_that_are_not() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&listen(MS, 100, 3, 9000));
    // 101 keeps it; 102 closes it at once; 103 accepts on it (a worker);
    // 104 exits within the grace period without closing it.
    for c in 101..=104 {
        m.apply(&fork(2 * MS, 100, c));
        view.holds.insert((c, 9000), true);
    }
    m.apply(&ev(3 * MS, 102, Body::ListenFdClose { fd: 3, inode: 9000 }));
    m.apply(&ev(3 * MS, 103, Body::Accept { fd: 3, inode: 9000 }));
    m.apply(&exit(100 * MS, 104, 100, 0));
    m.tick(2 * MS + 250 * MS, &view);
    let out = m.drain();
    assert_eq!(opened(&out, FindingKind::LeakedListenFd), vec![101]);
    assert!(out.contains(&Output::ListenFdClosedAtExit { server: 0 }));
    let f = m
        .findings()
        .open_findings()
        .find(|f| f.kind == FindingKind::LeakedListenFd)
        .unwrap();
    assert!(f.summary.contains("port 7000"), "{}", f.summary);
    assert_eq!(
        f.remedy,
        "close the listening socket in the child right after fork, or set SOCK_CLOEXEC"
    );
    // A dup'd copy is the same socket: closing one fd is not enough.
    m.apply(&ev(
        400 * MS,
        101,
        Body::ListenFdDup {
            syscall: crate::event::DupSyscall::Dup,
            oldfd: 3,
            newfd: 5,
            inode: 9000,
            replaced_inode: 0,
        },
    ));
    m.apply(&ev(
        401 * MS,
        101,
        Body::ListenFdClose { fd: 3, inode: 9000 },
    ));
    assert!(resolved(&m.drain(), FindingKind::LeakedListenFd).is_empty());
    m.apply(&ev(
        402 * MS,
        101,
        Body::ListenFdClose { fd: 5, inode: 9000 },
    ));
    assert_eq!(resolved(&m.drain(), FindingKind::LeakedListenFd), vec![101]);
    // The owner itself is never flagged.
    assert!(m.findings().open_findings().all(|f| f.pid != 100));
}

#[test]
fn a_listening_socket_carried_across_exec_is_its_own_kind() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&listen(MS, 100, 3, 9000));
    m.apply(&fork(2 * MS, 100, 101));
    m.apply(&ev(
        3 * MS,
        101,
        Body::Exec {
            old_tid: 101,
            new_target: false,
            start_ns: start(101),
            ppid: 100,
            comm: "handler".into(),
            filename: "/usr/bin/handler".into(),
            filename_truncated: false,
        },
    ));
    m.apply(&ev(3 * MS, 101, Body::ExecListenFd { fd: 3, inode: 9000 }));
    view.holds.insert((101, 9000), true);
    m.tick(600 * MS, &view);
    let out = m.drain();
    assert!(opened(&out, FindingKind::LeakedListenFd).is_empty());
    assert_eq!(opened(&out, FindingKind::ListenFdAcrossExec), vec![101]);
    assert!(out.contains(&Output::ListenFdLeak {
        server: 0,
        across_exec: true
    }));
}

#[test]
fn proc_disagreeing_about_the_fd_wins() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&listen(MS, 100, 3, 9000));
    m.apply(&fork(2 * MS, 100, 101));
    // The close event was lost: /proc shows the child without the socket.
    view.holds.insert((101, 9000), false);
    m.tick(S, &view);
    assert!(
        m.drain()
            .iter()
            .all(|o| !matches!(o, Output::FindingOpened(_)))
    );
    assert!(!m.process(101).unwrap().holds(9000));
}

#[test]
fn fork_failures_open_and_resolve() {
    let mut m = with_server(100);
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit(2 * MS, 101, 100, 0));
    for t in 3..5 {
        m.apply(&ev(
            t * MS,
            100,
            Body::ForkFailed {
                syscall: crate::event::ForkSyscall::Clone,
                errno: 11,
            },
        ));
    }
    let out = m.drain();
    assert_eq!(opened(&out, FindingKind::ForkFailure), vec![100]);
    let f = m.findings().open_findings().next().unwrap();
    assert!(matches!(
        &f.evidence,
        Evidence::ForkFailure { errno: 11, failures: 2, zombie_children: 1, errno_name } if errno_name == "EAGAIN"
    ));
    m.apply(&fork(10 * MS, 100, 102));
    assert_eq!(resolved(&m.drain(), FindingKind::ForkFailure), vec![100]);
}

#[test]
fn lost_events_are_repaired_by_reconciliation() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit(2 * MS, 101, 100, 0));
    view.set(101, 'Z', 100, start(101));
    m.tick(3 * S, &view);
    assert_eq!(opened(&m.drain(), FindingKind::UnreapedChild), vec![101]);
    // Events were lost: 101's release, and 102's fork and exit. /proc now
    // shows 102 as a zombie child of 100 and no 101.
    let snap = Snapshot {
        procs: vec![
            SnapshotProc {
                pid: 100,
                ppid: 1,
                comm: "server".into(),
                state: 'S',
                start_ns: start(100),
                server: 0,
                is_root_target: true,
            },
            SnapshotProc {
                pid: 102,
                ppid: 100,
                comm: "server".into(),
                state: 'Z',
                start_ns: start(102),
                server: 0,
                is_root_target: false,
            },
        ],
        holders: vec![],
    };
    m.reconcile(&snap, 4 * S, false);
    let out = m.drain();
    assert_eq!(resolved(&out, FindingKind::UnreapedChild), vec![101]);
    assert!(m.process(101).is_none());
    assert!(m.process(102).unwrap().is_zombie());
    assert!(m.process(100).unwrap().children.contains(&102));
    view.set(102, 'Z', 100, start(102));
    view.stats.remove(&101);
    m.tick(7 * S, &view);
    assert_eq!(opened(&m.drain(), FindingKind::UnreapedChild), vec![102]);
}

#[test]
fn a_late_start_reports_existing_zombies_and_leaks_at_once() {
    let mut m = model();
    let mut view = FakeProc::default();
    let p = |pid, ppid, state| SnapshotProc {
        pid,
        ppid,
        comm: "server".into(),
        state,
        start_ns: start(pid),
        server: 0,
        is_root_target: pid == 100,
    };
    let h = |pid| SnapshotHolder {
        pid,
        fd: 3,
        inode: 9000,
        port: 7000,
        family: 2,
    };
    let snap = Snapshot {
        procs: vec![
            p(100, 1, 'S'),
            p(101, 100, 'Z'),
            p(102, 100, 'S'),
            p(103, 100, 'S'),
        ],
        holders: vec![h(100), h(102), h(103)],
    };
    view.set(101, 'Z', 100, start(101));
    view.holds.insert((102, 9000), true);
    view.holds.insert((103, 9000), true);
    // 103 is an idle pre-fork worker blocked in accept.
    view.accepting.insert(103);
    m.reconcile(&snap, 0, true);
    m.tick(0, &view);
    assert_eq!(opened(&m.drain(), FindingKind::UnreapedChild), vec![101]);
    m.tick(250 * MS, &view);
    let out = m.drain();
    assert_eq!(opened(&out, FindingKind::LeakedListenFd), vec![102]);
    let owner = m.sockets().next().unwrap().owner;
    assert_eq!(owner, Some(100));
}

#[test]
fn memory_is_bounded_by_the_process_cap() {
    let mut m = Model::new(Config {
        max_processes: 3,
        ..Config::default()
    });
    m.apply(&fork(MS, 100, 101));
    m.apply(&fork(MS, 100, 102));
    m.apply(&fork(MS, 100, 103));
    let out = m.drain();
    assert_eq!(m.len(), 3);
    assert!(out.contains(&Output::LimitReached(super::Limit::Processes)));
    assert!(out.contains(&Output::Untrack { pid: 103 }));
}

#[test]
fn open_findings_are_capped_too() {
    let mut m = Model::new(Config {
        max_open_findings: 2,
        tick_ns: 10 * MS,
        ..Config::default()
    });
    let mut view = FakeProc::default();
    for c in 101..=104 {
        m.apply(&fork(MS, 100, c));
        m.apply(&exit(2 * MS, c, 100, 0));
        view.set(c, 'Z', 100, start(c));
    }
    m.tick(3 * S, &view);
    let out = m.drain();
    assert_eq!(opened(&out, FindingKind::UnreapedChild).len(), 2);
    assert!(out.contains(&Output::LimitReached(super::Limit::Findings)));
    assert_eq!(m.findings().open_len(), 2);
}

#[test]
fn a_flagged_zombie_adopted_by_init_stays_the_same_finding_until_init_reaps_it() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit(2 * MS, 101, 100, 0));
    view.set(101, 'Z', 100, start(101));
    m.tick(3 * S, &view);
    let id = m.findings().open_findings().next().unwrap().id;
    // The server is killed; its zombie goes to init.
    m.apply(&exit_with(
        4 * S,
        100,
        1,
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        },
        false,
    ));
    view.set(101, 'Z', 1, start(101));
    m.tick(4 * S, &view);
    let out = m.drain();
    assert!(resolved(&out, FindingKind::UnreapedChild).is_empty());
    let f = m
        .findings()
        .open_findings()
        .find(|f| f.kind == FindingKind::UnreapedChild)
        .unwrap();
    assert_eq!((f.id, f.ppid), (id, 1));
    assert!(matches!(
        f.evidence,
        Evidence::Unreaped {
            cause: UnreapedCause::AdoptedByInit,
            ..
        }
    ));
    m.apply(&release(5 * S, 101, 1));
    let out = m.drain();
    assert_eq!(resolved(&out, FindingKind::UnreapedChild), vec![101]);
    assert_eq!(reaps(&out)[0].0, Reaper::Init);
}

#[test]
fn a_wait_without_a_status_pointer_still_reaps() {
    // waitpid(pid, NULL, 0): the probes cannot read a status, the reap is real.
    let mut m = with_server(100);
    m.apply(&fork(MS, 100, 101));
    m.apply(&exit(2 * MS, 101, 100, 0));
    let mut w = wait(3 * MS, 100, 101, 0);
    if let Body::Wait { status, .. } = &mut w.body {
        *status = None;
    }
    m.apply(&w);
    assert!(m.process(101).is_none());
    assert_eq!(reaps(&m.drain()).len(), 1);
    // Its parent exiting later has no child to orphan, and a late release
    // with an invisible reaper says nothing.
    m.apply(&exit(4 * MS, 100, 1, 0));
    m.apply(&release(5 * MS, 101, 0));
    assert!(opened(&m.drain(), FindingKind::OrphanReparented).is_empty());
}

/// The model's bookkeeping (children sets, zombie counts per parent and per
/// server) stays equal to what a recount finds, whatever the sequence.
fn check_invariants(m: &Model) {
    let mut zombies = 0;
    for p in m.processes() {
        let recount = p
            .children
            .iter()
            .filter(|c| m.process(**c).is_some_and(|c| c.is_zombie()))
            .count() as u32;
        assert_eq!(p.zombie_kids, recount, "zombie count of {}", p.pid);
        for c in &p.children {
            if let Some(child) = m.process(*c) {
                assert_eq!(
                    child.ppid, p.pid,
                    "{c} listed under {} but its parent is {}",
                    p.pid, child.ppid
                );
            }
        }
        zombies += u64::from(p.is_zombie());
    }
    assert_eq!(m.counts(0).zombies, zombies);
    assert_eq!(m.counts(0).tracked, m.len() as u64);
}

#[derive(Debug, Clone)]
enum Op {
    Fork(u32, u32),
    Exit(u32),
    Wait(u32, u32),
    Release(u32),
    Tick,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (100u32..110, 100u32..110).prop_map(|(a, b)| Op::Fork(a, b)),
        (100u32..110).prop_map(Op::Exit),
        (100u32..110, 100u32..110).prop_map(|(a, b)| Op::Wait(a, b)),
        (100u32..110).prop_map(Op::Release),
        Just(Op::Tick),
    ]
}

proptest::proptest! {
    #[test]
    fn bookkeeping_survives_any_sequence(ops in proptest::collection::vec(op(), 0..80)) {
        let mut m = with_server(100);
        let mut view = FakeProc::default();
        let mut t = MS;
        for op in ops {
            t += 10 * MS;
            match op {
                Op::Fork(parent, child) if parent != child => m.apply(&fork(t, parent, child)),
                Op::Exit(pid) => {
                    let ppid = m.process(pid).map_or(1, |p| p.ppid);
                    m.apply(&exit(t, pid, ppid, 0));
                    view.set(pid, 'Z', ppid, start(pid));
                    // Its children go to init, as the kernel would do.
                    let kids: Vec<u32> = m.process(pid).map(|p| p.children.iter().copied().collect()).unwrap_or_default();
                    for k in kids {
                        let state = if m.process(k).is_some_and(|c| c.is_zombie()) { 'Z' } else { 'S' };
                        view.set(k, state, 1, start(k));
                    }
                }
                Op::Wait(parent, child) => m.apply(&wait(t, parent, child, 0)),
                Op::Release(pid) => {
                    let reaper = m.process(pid).map_or(1, |p| p.ppid);
                    m.apply(&release(t, pid, reaper));
                    view.stats.remove(&pid);
                }
                Op::Tick => m.tick(t + 3 * S, &view),
                Op::Fork(..) => {}
            }
            m.drain();
            check_invariants(&m);
        }
    }
}

#[test]
fn a_child_starved_of_cpu_gets_its_whole_grace_period() {
    let mut m = with_server(100);
    let mut view = FakeProc::default();
    m.apply(&listen(MS, 100, 3, 9000));
    m.apply(&fork(10 * MS, 100, 101));
    view.holds.insert((101, 9000), true);
    // 250 ms after the fork it has waited 200 ms for a CPU: it had 50 ms.
    view.cpu_wait.insert(101, 200 * MS);
    m.tick(260 * MS, &view);
    assert!(opened(&m.drain(), FindingKind::LeakedListenFd).is_empty());
    // Still holding it once it had 250 ms of chances: a leak.
    m.tick(700 * MS, &view);
    assert_eq!(opened(&m.drain(), FindingKind::LeakedListenFd), vec![101]);
}
