//! Start-up discovery and reconciliation: the model is brought in line with
//! what /proc shows, so an agent started late (or one that lost events)
//! reports what one that ran all along would.

use std::collections::{BTreeMap, HashMap};

use super::{
    Model, Socket, Timer,
    findings::Obtained,
    process::{ExitInfo, Held, Process},
};

/// One tracked process as /proc showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub state: char,
    /// CLOCK_BOOTTIME ns, tick precision.
    pub start_ns: u64,
    pub server: u32,
    /// Matched a target itself (not only through an ancestor).
    pub is_root_target: bool,
}

/// An fd of a tracked process that refers to a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHolder {
    pub pid: u32,
    pub fd: u32,
    pub inode: u64,
    pub port: u16,
    pub family: u16,
}

/// /proc's view of the tracked processes at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub procs: Vec<SnapshotProc>,
    pub holders: Vec<SnapshotHolder>,
}

impl Model {
    /// Brings the model in line with `snap`, taken at `now`. At start-up
    /// (`startup`), zombies and leaks found are flagged at once: they
    /// existed before the agent, so their age is at least its uptime.
    pub fn reconcile(&mut self, snap: &Snapshot, now: u64, startup: bool) {
        let seen: HashMap<u32, &SnapshotProc> = snap.procs.iter().map(|p| (p.pid, p)).collect();

        // Gone from /proc (or replaced by a newer process with the pid):
        // released while the agent was not looking.
        let gone: Vec<(u32, u64)> = self
            .procs
            .values()
            .filter(|p| {
                seen.get(&p.pid)
                    .is_none_or(|s| !self.same_start(p.start_ns, s.start_ns))
            })
            .map(|p| (p.pid, p.start_ns))
            .collect();
        for (pid, start) in gone {
            self.on_release(pid, start, None, None, now);
        }

        for s in &snap.procs {
            match self.procs.get_mut(&s.pid) {
                Some(p) => {
                    if p.start_ns == 0 {
                        p.start_ns = s.start_ns;
                    }
                    p.ppid = s.ppid;
                    p.comm.clone_from(&s.comm);
                    p.is_root_target |= s.is_root_target;
                    if s.state == 'Z' && p.exit.is_none() {
                        // Its exit was missed.
                        p.exit = Some(ExitInfo {
                            at_ns: None,
                            status: None,
                            autoreaped: false,
                        });
                        let (pid, start, server) = (p.pid, p.start_ns, p.server);
                        self.counts.entry(server).or_default().zombies += 1;
                        let at = if startup {
                            now
                        } else {
                            now + self.cfg.zombie_after_ns
                        };
                        self.timer(
                            at,
                            Timer::Zombie {
                                pid,
                                start_ns: start,
                            },
                        );
                    }
                }
                None => {
                    let mut p = Process::new(s.pid, s.start_ns, s.server, s.ppid, s.comm.clone());
                    p.born_ns = self.start_to_mono(s.start_ns);
                    p.is_root_target = s.is_root_target;
                    if s.state == 'Z' {
                        p.exit = Some(ExitInfo {
                            at_ns: None,
                            status: None,
                            autoreaped: false,
                        });
                    }
                    let zombie = p.is_zombie();
                    if self.insert(p) && zombie {
                        let at = if startup {
                            now
                        } else {
                            now + self.cfg.zombie_after_ns
                        };
                        self.timer(
                            at,
                            Timer::Zombie {
                                pid: s.pid,
                                start_ns: s.start_ns,
                            },
                        );
                    }
                }
            }
        }
        self.rebuild_children();
        self.reconcile_holders(snap, now);
    }

    /// Parent → children links from the ppids.
    fn rebuild_children(&mut self) {
        let mut children: HashMap<u32, (Vec<u32>, u32)> = HashMap::new();
        for p in self.procs.values() {
            let entry = children.entry(p.ppid).or_default();
            entry.0.push(p.pid);
            entry.1 += u32::from(p.is_zombie());
        }
        for p in self.procs.values_mut() {
            let (kids, zombies) = children.remove(&p.pid).unwrap_or_default();
            p.children = kids.into_iter().collect();
            p.zombie_kids = zombies;
        }
    }

    fn reconcile_holders(&mut self, snap: &Snapshot, now: u64) {
        let mut by_pid: HashMap<u32, BTreeMap<u32, u64>> = HashMap::new();
        for h in &snap.holders {
            by_pid.entry(h.pid).or_default().insert(h.fd, h.inode);
            let server = self.procs.get(&h.pid).map_or(0, |p| p.server);
            self.sockets.entry(h.inode).or_insert(Socket {
                inode: h.inode,
                port: h.port,
                family: h.family,
                server,
                owner: None,
            });
        }
        // The owner of a socket found in /proc: a holder whose parent does
        // not hold it (the process that created it, as far as one can tell).
        let holds = |pid: u32, inode: u64| {
            by_pid
                .get(&pid)
                .is_some_and(|fds| fds.values().any(|&i| i == inode))
        };
        let mut owners: Vec<(u64, u32)> = Vec::new();
        for h in &snap.holders {
            let ppid = self.procs.get(&h.pid).map_or(0, |p| p.ppid);
            if !holds(ppid, h.inode) {
                owners.push((h.inode, h.pid));
            }
        }
        for (inode, pid) in owners {
            if let Some(s) = self.sockets.get_mut(&inode)
                && s.owner.is_none()
            {
                s.owner = Some(pid);
            }
            if let Some(p) = self.procs.get_mut(&pid)
                && !p.held.contains_key(&inode)
            {
                p.owns.insert(inode);
            }
        }
        // Each process's listening fds are what /proc shows.
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            let want = by_pid.remove(&pid).unwrap_or_default();
            let Some(p) = self.procs.get_mut(&pid) else {
                continue;
            };
            if p.is_zombie() {
                continue;
            }
            let before: Vec<u64> = p.listen_fds.values().copied().collect();
            p.listen_fds = want;
            let start = p.start_ns;
            let mut new_held = Vec::new();
            let inodes: Vec<u64> = p.listen_fds.values().copied().collect();
            for inode in inodes {
                if !p.owns.contains(&inode) && !p.held.contains_key(&inode) {
                    p.held.insert(
                        inode,
                        Held {
                            since_ns: now,
                            how: Obtained::Discovered,
                        },
                    );
                    new_held.push(inode);
                }
            }
            for inode in new_held {
                self.timer(
                    now + self.cfg.listen_grace_ns,
                    Timer::ListenGrace {
                        pid,
                        start_ns: start,
                        inode,
                    },
                );
            }
            for inode in before {
                self.after_fd_change(pid, inode, now);
            }
        }
    }
}
