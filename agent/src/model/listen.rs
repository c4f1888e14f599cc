//! Listening sockets and who holds them: leaked listen fds (inherited
//! through fork and neither closed nor accepted on) and listening sockets
//! carried across exec into another program.
//!
//! A socket is identified by its inode, not by an fd number: dup'd copies
//! are the same socket. The process that called listen() owns it; every
//! other holder must close it, or accept on it (a pre-fork worker), within
//! the grace period.

use crate::event::Event;

use super::{
    Model, Output, ProcView, Socket, Timer,
    findings::{Evidence, Finding, FindingKind, Obtained},
    process::Held,
    who,
};

/// A starved child's grace period stretches to at most this many times its
/// length in wall-clock time.
const MAX_GRACE_STRETCH: u64 = 20;

/// close_range's flag that marks fds close-on-exec instead of closing them.
const CLOSE_RANGE_CLOEXEC: u32 = 4;

impl Model {
    pub(super) fn on_listen(&mut self, ev: &Event, fd: u32, inode: u64, port: u16, family: u16) {
        let server = ev.server;
        let Some(p) = self.known(ev) else { return };
        p.listen_fds.insert(fd, inode);
        p.owns.insert(inode);
        p.held.remove(&inode);
        let pid = p.pid;
        self.sockets
            .entry(inode)
            .and_modify(|s| {
                s.port = port;
                s.family = family;
            })
            .or_insert(Socket {
                inode,
                port,
                family,
                server,
                owner: Some(pid),
            });
    }

    pub(super) fn on_accept(&mut self, ev: &Event, inode: u64) {
        let now = ev.ts_ns;
        let Some(p) = self.known(ev) else { return };
        p.accepted.insert(inode);
        let p = p.clone();
        for kind in [FindingKind::LeakedListenFd, FindingKind::ListenFdAcrossExec] {
            let key = Self::key(kind, &p, inode);
            self.resolve(&key, now, "it accepts on the socket: a worker, not a leak");
        }
    }

    pub(super) fn on_close(&mut self, ev: &Event, fd: u32, inode: u64) {
        let Some(p) = self.known(ev) else { return };
        if p.listen_fds.get(&fd) == Some(&inode) {
            p.listen_fds.remove(&fd);
        }
        self.after_fd_change(ev.pid, inode, ev.ts_ns);
    }

    pub(super) fn on_close_range(
        &mut self,
        ev: &Event,
        first: u32,
        last: u32,
        flags: u32,
        ret: i32,
    ) {
        if ret != 0 || flags & CLOSE_RANGE_CLOEXEC != 0 {
            return; // failed, or only marked close-on-exec (exec will tell)
        }
        let Some(p) = self.known(ev) else { return };
        let closed: Vec<(u32, u64)> = p
            .listen_fds
            .range(first..=last)
            .map(|(&fd, &inode)| (fd, inode))
            .collect();
        for (fd, _) in &closed {
            p.listen_fds.remove(fd);
        }
        for (_, inode) in closed {
            self.after_fd_change(ev.pid, inode, ev.ts_ns);
        }
    }

    pub(super) fn on_dup(&mut self, ev: &Event, oldfd: u32, newfd: u32, inode: u64, replaced: u64) {
        let Some(p) = self.known(ev) else { return };
        if oldfd == newfd {
            return;
        }
        if replaced != 0 && p.listen_fds.get(&newfd) == Some(&replaced) {
            p.listen_fds.remove(&newfd);
        }
        if inode != 0 {
            p.listen_fds.insert(newfd, inode);
        }
        if replaced != 0 {
            self.after_fd_change(ev.pid, replaced, ev.ts_ns);
        }
    }

    /// An fd that survived exec (no close-on-exec) refers to a listening socket.
    pub(super) fn on_exec_listen_fd(&mut self, ev: &Event, fd: u32, inode: u64) {
        let now = ev.ts_ns;
        let Some(p) = self.known(ev) else { return };
        p.listen_fds.insert(fd, inode);
        let first = !p.held.contains_key(&inode);
        p.held.entry(inode).or_insert(Held {
            since_ns: now,
            how: Obtained::Exec,
        });
        let (pid, start) = (p.pid, p.start_ns);
        if first {
            self.timer(
                now + self.cfg.listen_grace_ns,
                Timer::ListenGrace {
                    pid,
                    start_ns: start,
                    inode,
                },
            );
        }
    }

    /// After `pid` dropped an fd of `inode`: if it holds the socket no more,
    /// its findings about it resolve, and the socket may be gone entirely.
    pub(super) fn after_fd_change(&mut self, pid: u32, inode: u64, now: u64) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if p.holds(inode) {
            return;
        }
        p.held.remove(&inode);
        let p = p.clone();
        for kind in [FindingKind::LeakedListenFd, FindingKind::ListenFdAcrossExec] {
            let key = Self::key(kind, &p, inode);
            self.resolve(&key, now, "it closed the socket");
        }
        self.maybe_socket_gone(inode);
    }

    /// Forgets a socket no process holds any more.
    pub(super) fn maybe_socket_gone(&mut self, inode: u64) {
        if !self.sockets.contains_key(&inode) {
            return;
        }
        if self.procs.values().any(|p| p.holds(inode)) {
            return;
        }
        self.sockets.remove(&inode);
        self.out.push(Output::SocketGone { inode });
    }

    /// The grace period of a holder ran out: a leak unless it closed the
    /// socket, accepted on it, or is (per /proc) waiting for connections.
    pub(super) fn listen_grace_due(
        &mut self,
        pid: u32,
        start_ns: u64,
        inode: u64,
        now: u64,
        view: &dyn ProcView,
    ) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        if !self.same_start(p.start_ns, start_ns)
            || p.is_zombie()
            || !p.holds(inode)
            || p.owns.contains(&inode)
            || p.accepted.contains(&inode)
        {
            return;
        }
        let Some(held) = p.held.get(&inode).copied() else {
            return;
        };
        // Ground truth before flagging: /proc must show the fd.
        if view.holds_socket(pid, inode) == Some(false) {
            let fds: Vec<u32> = p.fds_of(inode);
            if let Some(p) = self.procs.get_mut(&pid) {
                for fd in fds {
                    p.listen_fds.remove(&fd);
                }
            }
            self.after_fd_change(pid, inode, now);
            return;
        }
        // The grace period counts time the child could run: one starved of
        // CPU (runnable, waiting on a busy machine) has not had its chance
        // to close the socket yet. Bounded, so a leak is flagged anyway.
        if held.how == Obtained::Fork
            && let Some(waited) = view.cpu_wait_ns(pid)
        {
            let grace = self.cfg.listen_grace_ns;
            let had = now.saturating_sub(held.since_ns).saturating_sub(waited);
            let latest = held.since_ns + grace.saturating_mul(MAX_GRACE_STRETCH);
            if had < grace && now < latest {
                let next = (now + (grace - had)).min(latest);
                self.timer(
                    next,
                    Timer::ListenGrace {
                        pid,
                        start_ns,
                        inode,
                    },
                );
                return;
            }
        }
        // Found holding it at start-up: an idle pre-fork worker sits in
        // accept; the agent did not see it start accepting.
        if held.how == Obtained::Discovered && view.waits_for_connections(pid) {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.accepted.insert(inode);
            }
            return;
        }
        let p = p.clone();
        let sock = self.sockets.get(&inode).cloned();
        let port = sock.as_ref().map_or(0, |s| s.port);
        let owner = sock.as_ref().and_then(|s| s.owner);
        let owner_text = owner.map_or_else(String::new, |o| {
            format!(" from {}", who(&self.comm_of(o), o))
        });
        let fds = p.fds_of(inode);
        let fd_text = fds
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let program = p.program_name();
        let across_exec = held.how == Obtained::Exec;
        let (kind, summary, remedy) = if across_exec {
            (
                FindingKind::ListenFdAcrossExec,
                format!(
                    "{} ({program}) kept the listening socket of port {port} (fd {fd_text}) across exec and does not accept on it: the port stays bound even after the server dies",
                    who(&p.comm, pid)
                ),
                "set SOCK_CLOEXEC on the listening socket (or FD_CLOEXEC with fcntl) so exec closes it; close it in the child before exec".to_string(),
            )
        } else {
            (
                FindingKind::LeakedListenFd,
                format!(
                    "{} holds the listening socket of port {port} (fd {fd_text}) it inherited{owner_text}, and has neither closed it nor accepted on it",
                    who(&p.comm, pid)
                ),
                "close the listening socket in the child right after fork, or set SOCK_CLOEXEC"
                    .to_string(),
            )
        };
        self.out.push(Output::ListenFdLeak {
            server: p.server,
            across_exec,
        });
        let finding = Finding {
            id: 0,
            kind,
            server: p.server,
            pid,
            start_ns: p.start_ns,
            ppid: p.ppid,
            comm: p.comm.clone(),
            summary,
            remedy,
            opened_ns: now,
            resolved_ns: None,
            resolution: None,
            evidence: Evidence::ListenFd {
                inode,
                port,
                fds,
                obtained: held.how,
                program,
                owner,
            },
        };
        self.open(Self::key(kind, &p, inode), finding);
    }
}
