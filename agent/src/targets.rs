//! Which processes are tracked: the target selection (`--pid`, `--comm`,
//! `--cgroup`, `--all`) and the "server" each target is reported as.
//! A server is the bounded label metrics carry: the target's name, never a pid.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::discovery::{self, ProcInfo};

/// Where cgroup v2 is mounted.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// One target given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process by pid, and its descendants.
    Pid(u32),
    /// Processes with this comm (at start, and whenever one execs later),
    /// and their descendants.
    Comm(String),
    /// Processes in this cgroup v2 directory or below it (the sidecar case).
    Cgroup { path: String, id: u64 },
    /// Every process in the agent's pid namespace.
    All,
}

/// The targets, each with its server name (the index is the server id the
/// probes tag events with).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub targets: Vec<(Target, String)>,
}

impl Selection {
    /// Builds the selection; `server_name` overrides every target's name.
    pub fn new(
        pids: &[u32],
        comms: &[String],
        cgroups: &[PathBuf],
        all: bool,
        server_name: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for &pid in pids {
            let info = discovery::process(pid).with_context(|| {
                format!("no process with pid {pid} (check the pid, or use --comm to wait for one by name)")
            })?;
            targets.push((Target::Pid(pid), info.comm));
        }
        for comm in comms {
            if comm.is_empty() {
                bail!("--comm needs a non-empty process name");
            }
            if comm.len() > 15 {
                bail!(
                    "--comm {comm:?} is longer than 15 bytes; the kernel keeps only the first 15 \
                     of a process name: use {:?}",
                    &comm[..15]
                );
            }
            targets.push((Target::Comm(comm.clone()), comm.clone()));
        }
        for path in cgroups {
            let (rel, id) = cgroup_id(path)?;
            let name = Path::new(&rel)
                .file_name()
                .map_or_else(|| "root".to_string(), |n| n.to_string_lossy().into_owned());
            targets.push((Target::Cgroup { path: rel, id }, name));
        }
        if all {
            targets.push((Target::All, "all".to_string()));
        }
        if targets.is_empty() {
            bail!("no target: give --pid PID, --comm NAME, --cgroup PATH or --all");
        }
        if let Some(name) = server_name {
            for t in &mut targets {
                t.1 = name.to_string();
            }
        }
        Ok(Self { targets })
    }

    pub fn track_all(&self) -> bool {
        self.targets.iter().any(|(t, _)| *t == Target::All)
    }

    /// The server name of id `server`.
    pub fn server_name(&self, server: u32) -> &str {
        self.targets
            .get(server as usize)
            .map_or("unknown", |(_, name)| name.as_str())
    }

    /// Distinct server names (metric label values), in target order.
    pub fn server_names(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.targets
            .iter()
            .filter(|(_, n)| seen.insert(n.clone()))
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The server a process matches directly (not through an ancestor).
    pub fn matches(&self, p: &ProcInfo) -> Option<u32> {
        self.targets
            .iter()
            .position(|(t, _)| match t {
                Target::Pid(pid) => p.pid == *pid,
                Target::Comm(c) => p.comm == *c,
                Target::Cgroup { path, .. } => {
                    p.cgroup.as_deref().is_some_and(|cg| in_cgroup(cg, path))
                }
                Target::All => true,
            })
            .map(|i| i as u32)
    }

    /// The processes to track among `procs`: the ones a target matches and
    /// all their descendants, each with its server. A descendant belongs to
    /// the server of its nearest matching ancestor.
    pub fn resolve(&self, procs: &BTreeMap<u32, ProcInfo>) -> HashMap<u32, u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in procs.values() {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut out = HashMap::new();
        let mut stack: Vec<(u32, u32)> = procs
            .values()
            .filter_map(|p| self.matches(p).map(|s| (p.pid, s)))
            .collect();
        while let Some((pid, server)) = stack.pop() {
            if out.contains_key(&pid) {
                continue;
            }
            out.insert(pid, server);
            for &c in children.get(&pid).into_iter().flatten() {
                let own = procs.get(&c).and_then(|p| self.matches(p));
                stack.push((c, own.unwrap_or(server)));
            }
        }
        out
    }
}

/// Whether cgroup path `cg` is `target` or below it.
fn in_cgroup(cg: &str, target: &str) -> bool {
    target == "/"
        || cg == target
        || cg
            .strip_prefix(target)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on unified
/// systems, `/sys/fs/cgroup/unified` (or elsewhere) on hybrid ones.
pub fn cgroup2_mounts() -> Vec<PathBuf> {
    let Ok(me) = procfs::process::Process::myself() else {
        return Vec::new();
    };
    let Ok(infos) = me.mountinfo() else {
        return Vec::new();
    };
    infos
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// The cgroup v2 path relative to the hierarchy root (as /proc/PID/cgroup
/// shows it after `0::`) and its id (the directory's inode number, which is
/// what bpf_get_current_cgroup_id returns). Accepts a directory under a
/// cgroup2 mount, or a path relative to the hierarchy root (`/a/b`).
pub fn cgroup_id(path: &Path) -> anyhow::Result<(String, u64)> {
    let mounts = cgroup2_mounts();
    if mounts.is_empty() {
        bail!(
            "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none {CGROUP2_ROOT}, or use --pid/--comm)"
        );
    }
    let (mount, full) = match mounts.iter().find(|m| path.starts_with(m)) {
        Some(m) => (m.clone(), path.to_path_buf()),
        None => {
            let m = mounts[0].clone();
            let full = m.join(path.strip_prefix("/").unwrap_or(path));
            (m, full)
        }
    };
    let meta = std::fs::metadata(&full).with_context(|| {
        format!(
            "cgroup {} not found: give a cgroup v2 directory (under {}), or the path /proc/PID/cgroup \
             shows after `0::`",
            full.display(),
            mount.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("{} is not a cgroup directory", full.display());
    }
    let rel = full
        .strip_prefix(&mount)
        .map(|r| format!("/{}", r.display()))
        .unwrap_or_else(|_| "/".into());
    let rel = if rel == "/" {
        rel
    } else {
        rel.trim_end_matches('/').to_string()
    };
    Ok((rel, meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, comm: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            comm: comm.into(),
            state: 'S',
            start_ns: 0,
            threads: 1,
            cgroup: Some(format!("/pod/{comm}")),
        }
    }

    fn procs() -> BTreeMap<u32, ProcInfo> {
        [
            p(1, 0, "init"),
            p(10, 1, "srv"),
            p(11, 10, "srv"),
            p(12, 11, "sh"),
            p(20, 1, "other"),
        ]
        .into_iter()
        .map(|i| (i.pid, i))
        .collect()
    }

    #[test]
    fn comm_target_takes_descendants() {
        let sel = Selection {
            targets: vec![(Target::Comm("srv".into()), "srv".into())],
        };
        let got = sel.resolve(&procs());
        assert_eq!(got, HashMap::from([(10, 0), (11, 0), (12, 0)]));
    }

    #[test]
    fn nearest_matching_ancestor_names_the_server() {
        let sel = Selection {
            targets: vec![
                (Target::Pid(10), "a".into()),
                (Target::Comm("sh".into()), "b".into()),
            ],
        };
        let got = sel.resolve(&procs());
        assert_eq!(got.get(&11), Some(&0));
        assert_eq!(got.get(&12), Some(&1));
    }

    #[test]
    fn cgroup_prefix_is_by_path_component() {
        assert!(in_cgroup("/pod/a", "/pod"));
        assert!(in_cgroup("/pod", "/pod"));
        assert!(!in_cgroup("/pod2/a", "/pod"));
        assert!(in_cgroup("/anything", "/"));
    }

    #[test]
    fn missing_pid_is_a_clear_error() {
        let err = Selection::new(&[u32::MAX - 1], &[], &[], false, None).unwrap_err();
        assert!(err.to_string().contains("no process with pid"), "{err}");
        let err = Selection::new(&[], &[], &[], false, None).unwrap_err();
        assert!(err.to_string().contains("no target"), "{err}");
        let err = Selection::new(&[], &["a-very-long-process-name".into()], &[], false, None)
            .unwrap_err();
        assert!(err.to_string().contains("15 bytes"), "{err}");
    }
}
