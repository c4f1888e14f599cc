//! Reliability and security: restart after SIGKILL, ring-buffer overflow,
//! memory caps, pid reuse in a small pid namespace, target churn, least
//! privilege, a kernel without a tracepoint, graceful shutdown.
//!
//! Every test here loads probes and some count the kernel's programs, so
//! they run one at a time.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use forkwatch_integration::{
    Agent, Proc, Server, bin, deadline, emulated, http_get, loaded_probe_programs, metric_sum,
    metric_value, poll, procfs, require_root, serial, wait_for,
};
use nix::sys::signal::Signal;

/// (kind, pid) of every open finding.
fn open_set(agent: &Agent) -> BTreeSet<(String, u64)> {
    agent.findings()["open"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn holders(pid: u32, inode: u64) -> Vec<u32> {
    procfs::children(pid)
        .into_iter()
        .filter(|&c| procfs::socket_inodes(c).contains(&inode))
        .collect()
}

/// The count of loaded probe programs once it stops changing: the kernel
/// frees a previous agent's programs asynchronously (slowly under emulation).
fn settled_probe_programs() -> usize {
    let mut last = loaded_probe_programs();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = loaded_probe_programs();
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

fn wait_programs(expected: usize) {
    poll(Duration::from_secs(15), || {
        (loaded_probe_programs() == expected).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} probe programs still loaded, expected {expected}",
            loaded_probe_programs()
        )
    });
}

#[test]
fn sigkilled_agent_leaves_nothing_attached_and_a_restart_reports_the_same() {
    require_root();
    let _serial = serial();
    let baseline = settled_probe_programs();
    let server = Server::start(&["--reap", "none", "--child-closes-listener", "no"]);
    let inode = procfs::listen_inode(server.port).unwrap();
    let mut first = Agent::start(&["--pid", &server.pid.to_string(), "--zombie-after", "1s"]);
    assert!(loaded_probe_programs() > baseline);
    server.burst(3, "100ms");
    let _held = server.burst_in_background(2, "30s");
    let expected = poll(Duration::from_secs(10), || {
        let set = open_set(&first);
        let zombies = procfs::zombie_children(server.pid).len();
        let leaks = holders(server.pid, inode).len();
        (zombies == 3 && leaks == 2 && set.len() == 5).then_some(set)
    })
    .expect("3 zombies and 2 leaks reported by the first agent");

    first
        .proc
        .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    wait_programs(baseline);

    let second = Agent::start(&["--pid", &server.pid.to_string(), "--zombie-after", "1s"]);
    let ready = Instant::now();
    let same = poll(Duration::from_secs(3), || {
        (open_set(&second) == expected).then_some(())
    });
    let took = ready.elapsed();
    assert!(
        same.is_some(),
        "restarted: {:?}, before: {expected:?}",
        open_set(&second)
    );
    assert!(
        took < Duration::from_secs(1),
        "same findings after {took:?}"
    );
}

#[test]
fn graceful_shutdown_exits_zero_and_detaches() {
    require_root();
    let _serial = serial();
    let baseline = settled_probe_programs();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut agent = Agent::start(&["--pid", "1"]);
        let started = Instant::now();
        let status = agent.proc.stop_with(sig, Duration::from_secs(10));
        eprintln!("{sig}: exit after {:?}", started.elapsed());
        assert!(status.success(), "{sig}: {status}");
        assert_eq!(
            loaded_probe_programs(),
            baseline,
            "{sig}: probes left attached"
        );
    }
}

/// `forkstorm FORKS MODE`, started and ready: it forks only when told, so
/// that the agent can be attached to it first.
fn storm_ready(forks: &str, mode: &str) -> Proc {
    let mut cmd = Command::new(bin("forkstorm"));
    cmd.args([forks, mode]).stdin(Stdio::piped());
    let storm = Proc::spawn(cmd);
    storm.wait_stdout(Duration::from_secs(5), "storm ready", |l| {
        (l == "ready").then_some(())
    });
    storm
}

/// Lets the storm fork, and waits until it has (`limit` is stretched
/// under emulation).
fn storm_run(storm: &mut Proc, limit: Duration) {
    storm
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    storm.wait_stdout(deadline(limit), "storm done", |l| {
        l.starts_with("done").then_some(())
    });
}

#[test]
fn ring_buffer_overflow_is_counted_and_reconciled() {
    require_root();
    let _serial = serial();
    // Under emulation a 20 000-fork storm takes many minutes, and the
    // agent may keep up with a slow storm: there it gets 2000 forks and is
    // frozen (SIGSTOP) while they run, so the ring overflows for sure.
    let forks = if emulated() { "2000" } else { "20000" };
    let mut storm = storm_ready(forks, "reap");
    // The smallest ring buffer (one page) cannot hold the storm.
    let agent = Agent::start(&[
        "--pid",
        &storm.pid().to_string(),
        "--ring-buffer-size",
        "4KiB",
    ]);
    let agent_pid = nix::unistd::Pid::from_raw(agent.proc.pid() as i32);
    if emulated() {
        nix::sys::signal::kill(agent_pid, Signal::SIGSTOP).unwrap();
    }
    storm_run(&mut storm, Duration::from_secs(120));
    if emulated() {
        nix::sys::signal::kill(agent_pid, Signal::SIGCONT).unwrap();
    }
    // Reap the storm itself, so its own exit is no zombie of ours.
    let _ = storm.child.wait();
    let metrics = poll(deadline(Duration::from_secs(10)), || {
        let m = agent.get("/metrics");
        (metric_sum(&m, "forkwatch_events_lost_total") > 0.0
            && metric_value(
                &m,
                "forkwatch_reconciliations_total{reason=\"events_lost\"}",
            ) > 0.0)
            .then_some(m)
    })
    .expect("lost events counted and a reconciliation run");
    eprintln!(
        "lost {} of {} events",
        metric_sum(&metrics, "forkwatch_events_lost_total"),
        metric_sum(&metrics, "forkwatch_events_total")
            + metric_sum(&metrics, "forkwatch_events_lost_total")
    );
    assert_eq!(http_get(agent.http, "/healthz").trim(), "ok");
    // The state is right again: no phantom zombie, no finding /proc denies.
    poll(deadline(Duration::from_secs(10)), || {
        let m = agent.get("/metrics");
        let zombies = metric_value(&m, "forkwatch_zombies{server=\"forkstorm\"}");
        (zombies == procfs::zombie_children(storm.pid()).len() as f64
            && open_set(&agent).is_empty())
        .then_some(())
    })
    .unwrap_or_else(|| panic!("after the storm: {:?}", agent.findings()));
}

#[test]
fn memory_stays_under_the_process_cap() {
    require_root();
    let _serial = serial();
    let mut storm = storm_ready("3000", "keep");
    let agent = Agent::start(&[
        "--pid",
        &storm.pid().to_string(),
        "--max-processes",
        "1000",
        "--zombie-after",
        "500ms",
        "--max-open-findings",
        "500",
    ]);
    storm_run(&mut storm, Duration::from_secs(60));
    let m = poll(deadline(Duration::from_secs(10)), || {
        let m = agent.get("/metrics");
        (metric_value(&m, "forkwatch_limit_reached_total{limit=\"findings\"}") > 0.0).then_some(m)
    })
    .expect("the findings cap is reported");
    assert!(metric_sum(&m, "forkwatch_limit_reached_total") > 0.0);
    let tracked = metric_value(&m, "forkwatch_tracked_processes{server=\"forkstorm\"}");
    assert!(tracked <= 1000.0, "tracked {tracked} > cap");
    assert!(
        metric_value(&m, "forkwatch_limit_reached_total{limit=\"processes\"}")
            + metric_value(
                &m,
                "forkwatch_limit_reached_total{limit=\"kernel_processes\"}"
            )
            > 0.0,
        "the process cap is reported"
    );
    assert_eq!(
        agent.open("unreaped_child").len(),
        500,
        "open findings capped"
    );
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", agent.proc.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap();
    eprintln!("agent RSS {rss_kib} KiB with 3000 zombies and a cap of 1000");
    assert!(rss_kib < 256 * 1024, "RSS {rss_kib} KiB");
    drop(storm); // closes stdin: the zombies are reaped when it exits
}

/// Runs `script` in a new pid namespace (with its own /proc) with a small
/// pid_max, so pids are reused within a few hundred forks.
fn in_small_pid_namespace(script: &str) -> Proc {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--", "sh", "-c"])
        .arg(format!("echo 400 > /proc/sys/kernel/pid_max && {script}"))
        .stdin(Stdio::piped());
    Proc::spawn(cmd)
}

#[test]
fn recycled_pids_are_never_confused() {
    require_root();
    let _serial = serial();
    // The agent runs in the namespace too: the sidecar case, where pids are
    // translated into the agent's namespace.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let agent_log =
        std::env::temp_dir().join(format!("forkwatch-pidns-{}.log", std::process::id()));
    let script = format!(
        "{agent} --log-format json run --comm pidchurn --zombie-after 300ms \
         --web.listen-address 127.0.0.1:{port} >/dev/null 2>{log} & \
         while ! grep -q 'metrics and findings' {log}; do sleep 0.1; done; \
         {churn} 3000 50 700; read keep",
        agent = bin("forkwatch").display(),
        churn = bin("pidchurn").display(),
        log = agent_log.display(),
    );
    let mut ns = in_small_pid_namespace(&script);
    ns.wait_stdout(Duration::from_secs(30), "churn ready", |l| {
        (l == "ready").then_some(())
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    ns.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    ns.wait_stdout(Duration::from_secs(120), "churn done", |l| {
        (l == "done").then_some(())
    });
    // Give the last resolutions a moment.
    std::thread::sleep(Duration::from_millis(500));
    let findings: serde_json::Value = serde_json::from_str(&http_get(addr, "/findings")).unwrap();
    let metrics = http_get(addr, "/metrics");
    let lines = ns.stdout_lines();
    let zombies: Vec<(u64, i64)> = lines
        .iter()
        .filter_map(|l| {
            let mut f = l.strip_prefix("zombie ")?.split(' ');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    assert!(zombies.len() >= 50, "{} zombies held", zombies.len());
    let pids: BTreeSet<u64> = zombies.iter().map(|z| z.0).collect();
    assert!(
        pids.len() < zombies.len(),
        "pids were not reused: raise the churn"
    );
    // Every unreaped finding matches a held zombie with its exit code, in
    // order: a pid reused later never carries another process's status.
    let all: Vec<&serde_json::Value> = findings["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .chain(findings["open"].as_array().unwrap())
        .filter(|f| f["kind"] == "unreaped_child")
        .collect();
    assert!(!all.is_empty(), "no zombie was flagged: {findings}");
    for f in &all {
        let pid = f["pid"].as_u64().unwrap();
        let code = f["evidence"]["status"]["code"].as_i64().unwrap();
        assert!(
            zombies.contains(&(pid, code)),
            "finding for pid {pid} with code {code}: no such held zombie"
        );
        assert_eq!(f["state"], "resolved", "every zombie was reaped: {f}");
    }
    assert!(
        findings["open"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["kind"] != "unreaped_child")
    );
    // Every process reaped once: no double count, none missing (the 3000
    // children, and pidchurn itself, reaped by the shell after "done").
    let reaps = metric_sum(&metrics, "forkwatch_reaps_total");
    let forks = metric_sum(&metrics, "forkwatch_forks_total");
    assert_eq!(forks, 3000.0, "forks");
    assert_eq!(reaps, 3001.0, "reaps");
    assert_eq!(
        metric_sum(&metrics, "forkwatch_exits_total"),
        3001.0,
        "exits"
    );
    drop(ns);
    let _ = std::fs::remove_file(agent_log);
}

#[test]
fn a_comm_target_is_picked_up_again_after_a_restart() {
    require_root();
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("forkwatch-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let churnsrv = dir.join("churnsrv");
    std::fs::copy(bin("forkserver"), &churnsrv).unwrap();
    let start = || {
        let mut cmd = Command::new(&churnsrv);
        cmd.args(["--port", "0", "--reap", "none"]);
        Server::from_command(cmd)
    };
    let agent = Agent::start(&["--comm", "churnsrv", "--zombie-after", "500ms"]);
    for round in 0..2 {
        let mut server = start();
        server.burst(1, "50ms");
        let flagged = poll(Duration::from_secs(5), || {
            let f = agent.open("unreaped_child");
            f.iter()
                .any(|f| f["ppid"].as_u64() == Some(u64::from(server.pid)))
                .then_some(())
        });
        assert!(
            flagged.is_some(),
            "round {round}: the zombie of churnsrv {} is not flagged",
            server.pid
        );
        assert_eq!(
            agent.open("unreaped_child").first().unwrap()["server"],
            "churnsrv",
            "server label"
        );
        server
            .proc
            .stop_with(Signal::SIGKILL, Duration::from_secs(5));
        // init reaps the orphaned zombie; the finding resolves.
        poll(Duration::from_secs(10), || {
            agent.open("unreaped_child").is_empty().then_some(())
        })
        .expect("resolved after the server died");
    }
    drop(agent);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_pid_target_that_exits_is_reported_and_the_agent_keeps_running() {
    require_root();
    let _serial = serial();
    let mut server = Server::start(&["--reap", "loop"]);
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    server
        .proc
        .stop_with(Signal::SIGTERM, Duration::from_secs(5));
    wait_for(Duration::from_secs(5), "the exit to be reported", || {
        agent
            .proc
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("exited; still watching"))
            .then_some(())
    });
    assert_eq!(http_get(agent.http, "/healthz").trim(), "ok");
}

fn capsh_run(caps: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(bin("forkwatch"))
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn least_privilege_four_capabilities_and_not_one_less() {
    require_root();
    let _serial = serial();
    let all = ["+bpf", "+perfmon", "+sys_ptrace", "+dac_read_search"];
    // With exactly these, as an unprivileged uid, the agent works: it
    // flags a root-owned server's zombie.
    let server = Server::start(&["--reap", "none"]);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{}", all.join(",")))
        .arg(format!("--ambient-caps=-all,{}", all.join(",")))
        .arg(bin("forkwatch"))
        .args([
            "--log-format",
            "json",
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .args(["--pid", &server.pid.to_string(), "--zombie-after", "500ms"]);
    let agent = Agent::from_command(cmd);
    server.burst(1, "50ms");
    poll(Duration::from_secs(5), || {
        agent
            .get("/findings")
            .contains("unreaped_child")
            .then_some(())
    })
    .expect("the unprivileged agent flags the zombie");
    drop(agent);
    // One less: a one-line error naming it.
    for (i, missing) in all.iter().enumerate() {
        let caps: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| *c)
            .collect();
        let out = capsh_run(
            &caps.join(","),
            &["run", "--pid", "1", "--web.listen-address", "127.0.0.1:0"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "without {missing}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        let name = format!("CAP_{}", missing.trim_start_matches('+').to_uppercase());
        assert!(lines[0].contains(&name), "without {missing}: {err}");
    }
}

#[test]
fn a_kernel_without_a_tracepoint_disables_only_that_capability() {
    require_root();
    let _serial = serial();
    // A copy of tracefs' syscall formats without waitid: as on a kernel
    // that lacks that tracepoint.
    let fake = std::env::temp_dir().join(format!("forkwatch-tracefs-{}", std::process::id()));
    let src = std::path::Path::new("/sys/kernel/tracing/events/syscalls");
    let dst = fake.join("events/syscalls");
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with("_waitid") || !entry.path().join("format").exists() {
            continue;
        }
        std::fs::create_dir_all(dst.join(&*name)).unwrap();
        std::fs::copy(entry.path().join("format"), dst.join(&*name).join("format")).unwrap();
    }
    let out = Command::new(bin("forkwatch"))
        .arg("check")
        .env("FORKWATCH_TRACEFS", &fake)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check must not fail for an optional capability:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARN") && l.contains("capability wait")),
        "{text}"
    );

    let server = Server::start(&["--reap", "none"]);
    let mut cmd = Command::new(bin("forkwatch"));
    cmd.env("FORKWATCH_TRACEFS", &fake)
        .args([
            "--log-format",
            "json",
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .args(["--pid", &server.pid.to_string(), "--zombie-after", "500ms"]);
    let agent = Agent::from_command(cmd);
    assert!(
        agent
            .proc
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("capability disabled")),
        "a log line says so"
    );
    let m = agent.get("/metrics");
    assert_eq!(
        metric_value(&m, "forkwatch_capability_enabled{capability=\"wait\"}"),
        0.0
    );
    assert_eq!(
        metric_value(&m, "forkwatch_capability_enabled{capability=\"lifecycle\"}"),
        1.0
    );
    // The rest keeps working: zombies are still found.
    server.burst(1, "50ms");
    poll(Duration::from_secs(5), || {
        agent
            .get("/findings")
            .contains("unreaped_child")
            .then_some(())
    })
    .expect("zombies still flagged without the wait probes");
    drop(agent);
    std::fs::remove_dir_all(fake).unwrap();
}
