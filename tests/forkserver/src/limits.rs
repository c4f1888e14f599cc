//! Making fork fail on demand: RLIMIT_NPROC and a pids cgroup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{getpid, getuid};

/// `--rlimit-nproc N`: lowers the soft limit. The kernel checks it in fork
/// against the number of processes of the real uid, and skips the check for
/// root (uid 0 in the initial user namespace) and for CAP_SYS_RESOURCE or
/// CAP_SYS_ADMIN (copy_process() in kernel/fork.c), so as root it has no
/// effect: a warning says so.
pub fn set_rlimit_nproc(limit: u64) -> anyhow::Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NPROC).context("getrlimit(RLIMIT_NPROC)")?;
    anyhow::ensure!(
        limit <= hard,
        "--rlimit-nproc {limit} is above the hard limit {hard}"
    );
    setrlimit(Resource::RLIMIT_NPROC, limit, hard).context("setrlimit(RLIMIT_NPROC)")?;
    if getuid().is_root() {
        eprintln!(
            "forkserver: warning: RLIMIT_NPROC is not enforced for root; use --pids-max to make fork fail"
        );
    }
    Ok(())
}

/// `--pids-max N`: a cgroup `forkserver-PID` with the pids controller, that
/// the server moves itself into. Its children inherit it, zombies included
/// (a pid stays charged until it is reaped), so fork fails with EAGAIN once
/// N tasks exist.
pub struct PidsCgroup {
    dir: PathBuf,
    /// cgroup.procs of the cgroup the server came from.
    home: PathBuf,
}

impl PidsCgroup {
    /// Tries, in order: the cgroup v1 pids hierarchy (a child of the current
    /// cgroup); cgroup v2, a child of the current cgroup (needs `pids` in the
    /// current cgroup's subtree_control, which the server tries to enable);
    /// cgroup v2, a child of the hierarchy root.
    pub fn enter(max: u64) -> anyhow::Result<Self> {
        let name = format!("forkserver-{}", getpid());
        let mut errors = Vec::new();
        for (current, parent) in candidates()? {
            match try_enter(&current, &parent, &name, max) {
                Ok(cgroup) => {
                    eprintln!(
                        "forkserver: moved into pids cgroup {} with pids.max={max}",
                        cgroup.dir.display()
                    );
                    return Ok(cgroup);
                }
                Err(e) => errors.push(format!("{}: {e:#}", parent.display())),
            }
        }
        if errors.is_empty() {
            bail!("--pids-max: no cgroup v1 pids or cgroup v2 hierarchy found");
        }
        bail!(
            "--pids-max: could not set up a pids cgroup: {}",
            errors.join("; ")
        )
    }

    /// Moves the server back to its original cgroup and removes the directory
    /// (it stays if processes remain in it, e.g. orphaned helpers).
    pub fn leave(self) {
        let _ = std::fs::write(&self.home, getpid().to_string());
        for _ in 0..40 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        eprintln!(
            "forkserver: could not remove {} (still in use)",
            self.dir.display()
        );
    }
}

/// (current cgroup dir, parent dir for the new cgroup) pairs to try.
fn candidates() -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id != "0" && controllers.split(',').any(|c| c == "pids") {
            if let Some(mount) = find_mount(&mountinfo, |fstype, opts| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "pids")
            }) {
                let current = join_cgroup(&mount, path);
                out.insert(0, (current.clone(), current));
            }
        } else if id == "0"
            && controllers.is_empty()
            && let Some(mount) = find_mount(&mountinfo, |fstype, _| fstype == "cgroup2")
        {
            let current = join_cgroup(&mount, path);
            out.push((current.clone(), current.clone()));
            if current != mount.0 {
                out.push((current, mount.0.clone()));
            }
        }
    }
    Ok(out)
}

/// (mount point, root of the mount inside the hierarchy) of the first
/// cgroup mount matching `want(fstype, super options)`.
fn find_mount(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (root, mount_point) = (left.get(3)?, left.get(4)?);
        let (fstype, super_opts) = (right.first()?, right.get(2)?);
        want(fstype, super_opts).then(|| (PathBuf::from(mount_point), (*root).to_owned()))
    })
}

fn join_cgroup((mount, root): &(PathBuf, String), path: &str) -> PathBuf {
    let relative = path.strip_prefix(root.as_str()).unwrap_or(path);
    mount.join(relative.trim_start_matches('/'))
}

fn try_enter(current: &Path, parent: &Path, name: &str, max: u64) -> anyhow::Result<PidsCgroup> {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let setup = || -> anyhow::Result<()> {
        if !dir.join("pids.max").exists() {
            // cgroup v2: the controller must be enabled in the parent.
            std::fs::write(parent.join("cgroup.subtree_control"), "+pids")
                .context("enable the pids controller in cgroup.subtree_control")?;
        }
        std::fs::write(dir.join("pids.max"), max.to_string()).context("write pids.max")?;
        std::fs::write(dir.join("cgroup.procs"), getpid().to_string())
            .context("write cgroup.procs")?;
        Ok(())
    };
    match setup() {
        Ok(()) => Ok(PidsCgroup {
            dir,
            home: current.join("cgroup.procs"),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_mounts() {
        let pids = find_mount(MOUNTINFO, |t, o| {
            t == "cgroup" && o.split(',').any(|x| x == "pids")
        });
        assert_eq!(
            pids,
            Some((PathBuf::from("/sys/fs/cgroup/pids"), "/".to_owned()))
        );
        let v2 = find_mount(MOUNTINFO, |t, _| t == "cgroup2");
        assert_eq!(
            v2.map(|m| m.0),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn joins_paths() {
        let mount = (PathBuf::from("/sys/fs/cgroup"), "/".to_owned());
        assert_eq!(join_cgroup(&mount, "/"), PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            join_cgroup(&mount, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
    }
}
