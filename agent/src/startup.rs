//! Getting the probes running for a target selection: the host checks,
//! reading the kernel layout, loading, and seeding the in-kernel tracked set
//! from /proc so processes that existed before the agent are followed too.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use forkwatch_common::ListenSocket;
use tracing::{info, warn};

use crate::{
    discovery::{self},
    kernel::{btf::Btf, layout, tracefs},
    privileges,
    probes::loader::{LoadOptions, Probes},
    targets::{Selection, Target},
};

pub struct Started {
    pub probes: Probes,
    /// Tracked pids and their server at start.
    pub seeded: HashMap<u32, u32>,
}

/// The host checks that stop the agent with one clear line when they fail.
pub fn preflight() -> anyhow::Result<layout::Layout> {
    privileges::require()?;
    let (tracefs, mounted) = tracefs::ensure_mounted()?;
    if mounted {
        info!(
            "tracefs was not mounted; mounted it at {}",
            tracefs.display()
        );
    }
    let btf = Btf::from_sys_fs().context(
        "kernel BTF is missing: forkwatch needs /sys/kernel/btf/vmlinux \
         (a kernel built with CONFIG_DEBUG_INFO_BTF=y, standard on current distributions)",
    )?;
    let layout = layout::read(&btf, &tracefs::formats_root(&tracefs));
    Ok(layout)
}

/// Loads the probes and seeds them with the selection's processes.
pub fn start(selection: &Selection, mut opts: LoadOptions) -> anyhow::Result<Started> {
    let layout = preflight()?;
    opts.track_all = selection.track_all();
    let mut probes = Probes::load(&layout, &opts)?;
    for (cap, why) in &probes.disabled {
        warn!(capability = %cap, "capability disabled: {why} ({})", cap.loss());
    }
    for (server, (target, _)) in selection.targets.iter().enumerate() {
        match target {
            Target::Comm(comm) => probes.add_comm_target(comm, server as u32)?,
            Target::Cgroup { id, .. } => probes.add_cgroup_target(*id, server as u32)?,
            Target::Pid(_) | Target::All => {}
        }
    }
    let seeded = seed(selection, &mut probes, &opts);
    Ok(Started { probes, seeded })
}

/// Adds the selection's processes to the kernel's tracked set. The probes
/// are attached first, so a process forked by a tracked one during seeding
/// is tracked by the kernel; a second look catches children of processes
/// seeded after /proc was read. Bounded: a few rounds.
fn seed(selection: &Selection, probes: &mut Probes, opts: &LoadOptions) -> HashMap<u32, u32> {
    let mut seeded: HashMap<u32, u32> = HashMap::new();
    for _round in 0..3 {
        let procs = discovery::all();
        let want = selection.resolve(&procs);
        let new: Vec<(u32, u32)> = want
            .iter()
            .filter(|(pid, _)| !seeded.contains_key(pid))
            .map(|(&p, &s)| (p, s))
            .collect();
        if new.is_empty() {
            break;
        }
        for (pid, server) in new {
            if !opts.track_all {
                let start = procs.get(&pid).map_or(0, |p| p.start_ns);
                if let Err(e) = probes.track(pid, start, server) {
                    // The table is full: one line, and no retry per process.
                    warn!("{e:#}; processes beyond it are not followed");
                    return finish(seeded, probes);
                }
            }
            seeded.insert(pid, server);
        }
    }
    finish(seeded, probes)
}

/// Tells the probes which listening sockets the seeded processes hold.
fn finish(seeded: HashMap<u32, u32>, probes: &mut Probes) -> HashMap<u32, u32> {
    let pids: HashSet<u32> = seeded.keys().copied().collect();
    for (pid, _fd, inode, sock) in discovery::listen_fd_holders(&pids) {
        let server = seeded.get(&pid).copied().unwrap_or(0);
        let value = ListenSocket {
            server,
            port: sock.port,
            family: sock.family,
        };
        if let Err(e) = probes.add_listen_socket(inode, value) {
            warn!("{e:#}");
        }
    }
    seeded
}
