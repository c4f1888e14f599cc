//! `forkwatch run` against the real fork server in each faulty mode: what
//! /findings and /metrics say must equal what /proc says at the same moment.

use std::{io::Write as _, process::Command, time::Duration};

use forkwatch_integration::{
    Agent, Proc, Server, agrees_with_proc, bin, holders, poll, procfs, require_root, serial,
    zombies_of,
};
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn reap_once_burst_leaves_exactly_the_zombies_proc_shows() {
    require_root();
    let _serial = serial();
    let server = Server::start(&["--reap", "once"]);
    let agent = Agent::start(&["--pid", &server.pid.to_string(), "--zombie-after", "1s"]);
    // Coalescing depends on scheduling: burst until a zombie stays (bounded).
    let mut rounds = 0;
    while procfs::zombie_children(server.pid).is_empty() {
        rounds += 1;
        assert!(rounds <= 10, "10 bursts of 5 left no zombie behind");
        server.burst(5, "200ms");
        std::thread::sleep(Duration::from_millis(300));
    }
    let pids = agrees_with_proc(&agent, "unreaped_child", zombies_of(server.pid), None);
    for f in agent.open("unreaped_child") {
        assert_eq!(u(&f["ppid"]) as u32, server.pid);
        assert_eq!(
            f["evidence"]["cause"], "handler_reaps_one_per_signal",
            "{f}"
        );
        assert!(
            f["summary"]
                .as_str()
                .unwrap()
                .contains("handler reaps one child per SIGCHLD"),
            "{f}"
        );
        assert!(
            f["remedy"]
                .as_str()
                .unwrap()
                .contains("loop waitpid(-1, WNOHANG)")
        );
        assert_eq!(f["server"], "forkserver");
        assert_eq!(f["state"], "open");
    }
    let coalesced = agent.metric("forkwatch_sigchld_coalesced_total{server=\"forkserver\"}");
    assert!(coalesced > 0.0, "no coalesced SIGCHLD counted");
    let sig = agent.open("sigchld_coalesced");
    assert_eq!(sig.len(), 1, "{sig:?}");
    assert_eq!(u(&sig[0]["pid"]) as u32, server.pid);
    assert_eq!(
        agent.metric("forkwatch_unreaped_children{server=\"forkserver\"}") as usize,
        pids.len()
    );
}

#[test]
fn reap_none_flags_every_child_and_init_resolves_them() {
    require_root();
    let _serial = serial();
    let mut server = Server::start(&["--reap", "none"]);
    let agent = Agent::start(&["--pid", &server.pid.to_string(), "--zombie-after", "1s"]);
    server.burst(3, "100ms");
    let pids = agrees_with_proc(&agent, "unreaped_child", zombies_of(server.pid), Some(3));
    for f in agent.open("unreaped_child") {
        assert_eq!(f["evidence"]["cause"], "parent_never_waits", "{f}");
        assert_eq!(f["evidence"]["status"]["how"], "exited");
    }
    // The server dies; init adopts and reaps the zombies (here after 1-2 s).
    let server_pid = server.pid;
    server
        .proc
        .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    poll(Duration::from_secs(10), || {
        pids.iter()
            .all(|&p| procfs::state(p).is_none())
            .then_some(())
    })
    .expect("init reaps the orphaned zombies");
    let open = poll(Duration::from_secs(5), || {
        let open = agent.open_pids("unreaped_child");
        open.is_empty().then_some(())
    });
    assert!(
        open.is_some(),
        "still open: {:?}",
        agent.open_pids("unreaped_child")
    );
    let resolved: Vec<Value> = agent.findings()["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "unreaped_child")
        .cloned()
        .collect();
    assert_eq!(resolved.len(), 3, "{resolved:?}");
    for f in &resolved {
        assert_eq!(f["state"], "resolved");
        assert!(f["resolved_at"].is_string());
    }
    assert_eq!(
        agent.metric("forkwatch_reaps_total{reaper=\"init\",server=\"forkserver\"}"),
        3.0
    );
    assert!(procfs::state(server_pid).is_none());
}

fn healthy_mode_has_no_findings(reap: &str, reaper: &str) {
    let server = Server::start(&["--reap", reap]);
    let agent = Agent::start(&["--pid", &server.pid.to_string(), "--zombie-after", "500ms"]);
    for _ in 0..3 {
        server.burst(5, "100ms");
    }
    // Every child is released, and each gives one reap-latency sample.
    let samples = "forkwatch_reap_latency_seconds_count{server=\"forkserver\"}";
    poll(Duration::from_secs(5), || {
        (agent.metric(samples) >= 15.0).then_some(())
    })
    .unwrap_or_else(|| panic!("{} reap samples", agent.metric(samples)));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(agent.metric(samples), 15.0, "one sample per child");
    assert_eq!(
        agent.metric("forkwatch_forks_total{server=\"forkserver\"}"),
        15.0
    );
    let series = format!("forkwatch_reaps_total{{reaper=\"{reaper}\",server=\"forkserver\"}}");
    assert_eq!(agent.metric(&series), 15.0);
    assert!(procfs::zombie_children(server.pid).is_empty());
    let findings = agent.findings();
    assert_eq!(findings["open"].as_array().unwrap().len(), 0, "{findings}");
    assert_eq!(
        findings["resolved"].as_array().unwrap().len(),
        0,
        "{findings}"
    );
}

#[test]
fn reap_loop_is_healthy() {
    require_root();
    let _serial = serial();
    healthy_mode_has_no_findings("loop", "parent");
}

#[test]
fn reap_ignore_is_auto_reaped() {
    require_root();
    let _serial = serial();
    healthy_mode_has_no_findings("ignore", "auto");
}

#[test]
fn leaked_listen_fds_are_exactly_the_children_holding_the_socket() {
    require_root();
    let _serial = serial();
    let server = Server::start(&["--child-closes-listener", "no"]);
    let inode = procfs::listen_inode(server.port).expect("LISTEN socket in /proc/net/tcp");
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    let load = server.burst_in_background(3, "4s");
    agrees_with_proc(
        &agent,
        "leaked_listen_fd",
        holders(server.pid, inode),
        Some(3),
    );
    for f in agent.open("leaked_listen_fd") {
        assert_eq!(u(&f["evidence"]["port"]), u64::from(server.port));
        assert_eq!(u(&f["evidence"]["inode"]), inode);
        assert_eq!(f["evidence"]["obtained"], "fork");
        assert_eq!(u(&f["evidence"]["owner"]) as u32, server.pid);
        assert!(
            f["summary"]
                .as_str()
                .unwrap()
                .contains(&format!("port {}", server.port))
        );
        assert_eq!(
            f["remedy"],
            "close the listening socket in the child right after fork, or set SOCK_CLOEXEC"
        );
    }
    assert_eq!(
        agent.metric("forkwatch_leaked_listen_fds{kind=\"inherited\",server=\"forkserver\"}"),
        3.0
    );
    drop(load);
    // The children exit with their connections: the findings resolve.
    poll(Duration::from_secs(10), || {
        agent.open_pids("leaked_listen_fd").is_empty().then_some(())
    })
    .expect("leak findings resolve when the children exit");
}

#[test]
fn children_that_close_the_listener_are_not_flagged() {
    require_root();
    let _serial = serial();
    let server = Server::start(&["--child-closes-listener", "yes"]);
    let inode = procfs::listen_inode(server.port).unwrap();
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    let _load = server.burst_in_background(3, "2s");
    forkwatch_integration::wait_for(Duration::from_secs(5), "3 children", || {
        (procfs::children(server.pid).len() == 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(800));
    assert!(holders(server.pid, inode)().is_empty());
    assert!(
        agent.open_pids("leaked_listen_fd").is_empty(),
        "{}",
        agent.findings()
    );
}

#[test]
fn prefork_workers_accept_and_are_not_leaks() {
    require_root();
    let _serial = serial();
    let server = Server::start(&["--model", "prefork", "--workers", "4"]);
    let inode = procfs::listen_inode(server.port).unwrap();
    forkwatch_integration::wait_for(Duration::from_secs(5), "4 workers", || {
        (holders(server.pid, inode)().len() == 4).then_some(())
    });
    // Started after the workers: they are found in /proc, idle in accept.
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    // One connection per worker at a time (they serve one each).
    for _ in 0..3 {
        server.burst(4, "100ms");
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(holders(server.pid, inode)().len(), 4);
    assert!(
        agent.open_pids("leaked_listen_fd").is_empty(),
        "{}",
        agent.findings()
    );
}

#[test]
fn listening_socket_carried_across_exec() {
    require_root();
    let _serial = serial();
    let server = Server::start(&[
        "--exec-handler",
        "self",
        "--child-closes-listener",
        "no",
        "--listener-cloexec",
        "no",
    ]);
    let inode = procfs::listen_inode(server.port).unwrap();
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    let _load = server.burst_in_background(2, "4s");
    agrees_with_proc(
        &agent,
        "listen_fd_across_exec",
        holders(server.pid, inode),
        Some(2),
    );
    for f in agent.open("listen_fd_across_exec") {
        assert_eq!(f["evidence"]["obtained"], "exec");
        assert_eq!(u(&f["evidence"]["port"]), u64::from(server.port));
        assert!(f["remedy"].as_str().unwrap().contains("SOCK_CLOEXEC"));
    }
    assert!(
        agent.open_pids("leaked_listen_fd").is_empty(),
        "exec'd holders are the exec kind"
    );
}

fn orphans_go_to(agent: &Agent, children: &[u32], kind: &str) {
    let found = poll(Duration::from_secs(5), || {
        let got = agent.open_pids("orphan_reparented");
        (got == children).then_some(got)
    });
    assert!(
        found.is_some(),
        "orphan findings {:?} != {children:?}\n{}",
        agent.open_pids("orphan_reparented"),
        agent.findings()
    );
    for f in agent.open("orphan_reparented") {
        let pid = u(&f["pid"]) as u32;
        let ppid = procfs::ppid(pid).expect("orphan alive");
        assert_eq!(
            u(&f["evidence"]["new_parent"]) as u32,
            ppid,
            "new parent = /proc PPid: {f}"
        );
        assert_eq!(u(&f["ppid"]) as u32, ppid);
        assert_eq!(f["evidence"]["new_parent_kind"], kind, "{f}");
        assert_eq!(f["evidence"]["old_parent_status"]["how"], "signaled", "{f}");
        assert_eq!(f["evidence"]["old_parent_status"]["signal"], 9);
    }
    assert_eq!(
        agent.metric(&format!(
            "forkwatch_orphans_reparented_total{{new_parent=\"{kind}\",server=\"forkserver\"}}"
        )),
        children.len() as f64
    );
}

#[test]
fn parent_killed_orphans_go_to_init() {
    require_root();
    let _serial = serial();
    let server = Server::start(&["--exit-after", "2", "--die-by-signal", "KILL"]);
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    let server_start = procfs::start_ticks(server.pid).unwrap();
    let load = server.burst_in_background(2, "3s");
    forkwatch_integration::wait_for(Duration::from_secs(5), "the server to die", || {
        procfs::state(server.pid)
            .is_none_or(|s| s == 'Z')
            .then_some(())
    });
    // Its children now belong to init: forkserver processes under pid 1
    // started after it (the tests of this binary run one at a time).
    let children: Vec<u32> = poll(Duration::from_secs(5), || {
        let c: Vec<u32> = procfs::children(1)
            .into_iter()
            .filter(|&p| procfs::comm(p).as_deref() == Some("forkserver"))
            .filter(|&p| procfs::start_ticks(p).is_some_and(|t| t >= server_start))
            .filter(|&p| procfs::state(p) != Some('Z'))
            .collect();
        (c.len() == 2).then_some(c)
    })
    .expect("two orphaned children under init");
    orphans_go_to(&agent, &children, "init");
    drop(load);
    for c in children {
        forkwatch_integration::kill_pid(c);
    }
}

#[test]
fn parent_killed_orphans_go_to_the_subreaper() {
    require_root();
    let _serial = serial();
    let mut cmd = Command::new(bin("forkserver"));
    cmd.args(["reaper", "--", bin("forkserver").to_str().unwrap()])
        .args([
            "--port",
            "0",
            "--exit-after",
            "2",
            "--die-by-signal",
            "KILL",
        ]);
    let server = Server::from_command(cmd);
    let reaper = server.proc.pid();
    let agent = Agent::start(&["--pid", &reaper.to_string()]);
    let load = server.burst_in_background(2, "3s");
    let children: Vec<u32> = poll(Duration::from_secs(5), || {
        let c: Vec<u32> = procfs::children(reaper)
            .into_iter()
            .filter(|&p| p != server.pid && procfs::state(p) != Some('Z'))
            .collect();
        (c.len() == 2 && procfs::state(server.pid).is_none_or(|s| s == 'Z')).then_some(c)
    })
    .expect("two children re-parented to the subreaper");
    orphans_go_to(&agent, &children, "subreaper");
    for f in agent.open("orphan_reparented") {
        assert_eq!(u(&f["evidence"]["new_parent"]) as u32, reaper);
    }
    drop(load);
}

#[test]
fn a_late_agent_reports_existing_zombies_and_leaks_within_a_second() {
    require_root();
    let _serial = serial();
    let server = Server::start(&["--reap", "none", "--child-closes-listener", "no"]);
    let inode = procfs::listen_inode(server.port).unwrap();
    server.burst(3, "100ms");
    // Held well past the agent's start-up (seconds under emulation); dropped at the end.
    let _held = server.burst_in_background(2, "60s");
    forkwatch_integration::wait_for(Duration::from_secs(5), "3 zombies and 2 holders", || {
        (procfs::zombie_children(server.pid).len() == 3 && holders(server.pid, inode)().len() == 2)
            .then_some(())
    });
    let started = std::time::Instant::now();
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    let ready = started.elapsed();
    agrees_with_proc(&agent, "unreaped_child", zombies_of(server.pid), Some(3));
    agrees_with_proc(
        &agent,
        "leaked_listen_fd",
        holders(server.pid, inode),
        Some(2),
    );
    let took = started.elapsed() - ready;
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} after the agent was ready"
    );
}

/// A cgroup v2 directory for the test, mounting the hierarchy if this
/// machine has none (hybrid cgroup v1 hosts); removed on drop.
struct TestCgroup {
    dir: std::path::PathBuf,
    mounted: Option<std::path::PathBuf>,
}

impl TestCgroup {
    fn new() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let existing = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split(' ').next()? == "cgroup2")
                .then(|| pre.split(' ').nth(4).unwrap().to_string())
        });
        let (root, mounted) = match existing {
            Some(m) => (std::path::PathBuf::from(m), None),
            None => {
                let m = std::env::temp_dir().join(format!("forkwatch-cg2-{}", std::process::id()));
                std::fs::create_dir_all(&m).unwrap();
                let ok = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&m)
                    .status()
                    .unwrap();
                assert!(ok.success(), "cannot mount cgroup2");
                (m.clone(), Some(m))
            }
        };
        let dir = root.join(format!("forkwatch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, mounted }
    }

    /// `forkserver ARGS` started inside the cgroup (it execs there).
    fn server(&self, args: &str) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec {} --port 0 {args}",
            self.dir.display(),
            bin("forkserver").display()
        ));
        Server::from_command(cmd)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Empty by now (the servers were stopped first); bounded retries.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(m) = &self.mounted {
            let _ = Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

#[test]
fn a_cgroup_target_follows_processes_found_and_started_in_it() {
    require_root();
    let _serial = serial();
    let cg = TestCgroup::new();
    let before = cg.server("--reap none");
    let agent = Agent::start(&[
        "--cgroup",
        cg.dir.to_str().unwrap(),
        "--zombie-after",
        "500ms",
    ]);
    // Exec'd inside the cgroup after the agent started: tracked by the kernel at exec.
    let after = cg.server("--reap none");
    before.burst(1, "50ms");
    after.burst(1, "50ms");
    let name = cg.dir.file_name().unwrap().to_str().unwrap().to_string();
    let zombies = || {
        let mut z = procfs::zombie_children(before.pid);
        z.extend(procfs::zombie_children(after.pid));
        z.sort_unstable();
        z
    };
    agrees_with_proc(&agent, "unreaped_child", zombies, Some(2));
    for f in agent.open("unreaped_child") {
        assert_eq!(f["server"], name.as_str());
    }
    drop(before);
    drop(after);
}

/// A server it did not bundle: a shell script that starts a job and execs
/// another program (`sh -c 'job & exec sleep 30'`). The job's zombie
/// belongs to `sleep` now, which never waits: the finding must say that the
/// parent exec'd a program that does not wait, and resolve when `sleep`
/// dies and init reaps the zombie.
#[test]
fn a_parent_that_execs_a_program_that_never_waits() {
    require_root();
    let _serial = serial();
    let mut cmd = Command::new("sh");
    // `read` holds the script until the agent watches it.
    cmd.args(["-c", "read go; true & exec sleep 30"])
        .stdin(std::process::Stdio::piped());
    let mut script = Proc::spawn(cmd);
    let pid = script.pid();
    let agent = Agent::start(&["--pid", &pid.to_string(), "--zombie-after", "500ms"]);
    script
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let zombies = agrees_with_proc(&agent, "unreaped_child", zombies_of(pid), Some(1));
    assert_eq!(
        procfs::comm(pid).as_deref(),
        Some("sleep"),
        "the script exec'd"
    );
    let f = &agent.open("unreaped_child")[0];
    assert_eq!(u(&f["ppid"]), u64::from(pid));
    assert_eq!(f["evidence"]["cause"], "parent_execed", "{f:#}");
    assert!(
        f["evidence"]["program"].as_str().unwrap().contains("sleep"),
        "{f:#}"
    );
    // sleep dies: the zombie goes to init, which reaps it.
    script.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    poll(Duration::from_secs(10), || {
        (!procfs::is_zombie(zombies[0]) && agent.open_pids("unreaped_child").is_empty())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("still open: {:#}", agent.findings()));
}
