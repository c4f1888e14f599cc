//! Startup line, clean shutdown, exit vs _exit, threads, fork failures, and
//! the load client's own checks.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    BIN, DEADLINE, Proc, Server, close_and_wait_eof, connect_echo, live_children,
    parse_startup_line, run_bounded, stat_value, wait_until, zombies,
};

#[test]
fn startup_line_names_address_port_and_pid() {
    let server = Server::start(&[]);
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(server.port(), 0);
    assert_eq!(server.pid, server.child.id() as i32);
    assert_eq!(
        parse_startup_line(&format!(
            "forkserver listening on {} pid {}",
            server.addr, server.pid
        )),
        Some((server.addr, server.pid))
    );
    assert!(common::listen_inode(server.port()).is_some());
}

#[test]
fn sigterm_kills_and_reaps_every_child_then_exits_0() {
    // --reap none: zombies and live children at the same time.
    let mut server = Server::start(&["--reap", "none"]);
    for _ in 0..2 {
        close_and_wait_eof(connect_echo(server.addr));
    }
    let held: Vec<_> = (0..2).map(|_| connect_echo(server.addr)).collect();
    assert!(wait_until(DEADLINE, || zombies(server.pid).len() == 2
        && live_children(server.pid).len() == 2));
    let seen: Vec<Proc> = common::children(server.pid)
        .into_iter()
        .filter_map(Proc::of)
        .collect();
    assert_eq!(seen.len(), 4);
    server.track(&seen.iter().map(|p| p.pid).collect::<Vec<_>>());

    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    for p in &seen {
        assert!(!p.exists(), "pid {} left behind", p.pid);
    }
    assert_eq!(
        stat_value(&server.final_stderr(), "exit", "shutdown_reaped"),
        Some(4)
    );
    drop(held);
}

#[test]
fn sigterm_stops_prefork_workers() {
    let mut server = Server::start(&["--model", "prefork", "--workers", "3", "--reap", "blocking"]);
    assert!(wait_until(DEADLINE, || live_children(server.pid).len() == 3));
    let workers: Vec<Proc> = live_children(server.pid)
        .into_iter()
        .filter_map(Proc::of)
        .collect();
    server.track(&workers.iter().map(|p| p.pid).collect::<Vec<_>>());
    let _conn = connect_echo(server.addr);
    assert_eq!(server.terminate().code(), Some(0));
    assert!(workers.iter().all(|w| !w.exists()));
}

#[test]
fn prefork_blocking_reforks_dead_workers() {
    let server = Server::start(&["--model", "prefork", "--workers", "2", "--reap", "blocking"]);
    assert!(wait_until(DEADLINE, || live_children(server.pid).len() == 2));
    let victim = Proc::of(live_children(server.pid)[0]).unwrap();
    victim.signal(libc::SIGKILL);
    assert!(
        wait_until(DEADLINE, || !victim.exists()
            && live_children(server.pid).len() == 2),
        "worker reaped and replaced"
    );
    assert_eq!(zombies(server.pid), Vec::<i32>::new());
}

/// Stdout and stderr of a server that served 3 connections with
/// `--child-exit STYLE` and then shut down cleanly.
fn exit_demo(style: &str) -> (String, String) {
    let mut server = Server::start(&["--child-exit", style]);
    for _ in 0..3 {
        close_and_wait_eof(connect_echo(server.addr));
    }
    assert!(wait_until(DEADLINE, || common::children(server.pid).is_empty()));
    assert!(server.terminate().success());
    (server.stdout_to_eof(), server.final_stderr())
}

#[test]
fn child_exit_flushes_the_inherited_stdio_buffer_in_every_child() {
    let (stdout, stderr) = exit_demo("exit");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("line buffered by pid"))
            .count(),
        4,
        "{stdout}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("atexit handler ran"))
            .count(),
        4,
        "{stderr}"
    );
    assert!(stdout.starts_with("forkserver listening on "));
}

#[test]
fn child_underscore_exit_prints_once() {
    let (stdout, stderr) = exit_demo("_exit");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("line buffered by pid"))
            .count(),
        1,
        "{stdout}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("atexit handler ran"))
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn threads_switch_serves_the_connection_in_a_second_thread() {
    let mut server = Server::start(&["--threads"]);
    let _conn = connect_echo(server.addr);
    assert!(wait_until(DEADLINE, || live_children(server.pid).len() == 1));
    let child = live_children(server.pid)[0];
    server.track(&[child]);
    let threads = std::fs::read_dir(format!("/proc/{child}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 2, "main thread + echo thread");
    assert_eq!(
        std::fs::read_dir(format!("/proc/{}/task", server.pid))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn conn_lifetime_closes_from_the_server_side() {
    let server = Server::start(&["--conn-lifetime", "200ms"]);
    let mut conn = connect_echo(server.addr);
    let mut buf = [0u8; 8];
    let start = std::time::Instant::now();
    assert_eq!(
        std::io::Read::read(&mut conn, &mut buf).ok(),
        Some(0),
        "server closed"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// `--pids-max`: fork fails with EAGAIN once the cgroup is full (zombies
/// count, so `--reap none` fills it).
#[test]
fn pids_max_makes_fork_fail_with_eagain() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: --pids-max needs root to create a cgroup");
        return;
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["--port", "0", "--pids-max", "3", "--reap", "none"]);
    let mut server = match Server::try_from_command(cmd) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("skipped: no usable pids cgroup on this machine: {e}");
            return;
        }
    };
    // stderr is read by its own thread: the line may trail the startup line.
    assert!(wait_until(DEADLINE, || server
        .stderr()
        .contains("moved into pids cgroup")));
    let stderr = server.stderr();
    let dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("forkserver: moved into pids cgroup "))
        .and_then(|l| l.split(' ').next())
        .map(std::path::PathBuf::from)
        .expect("cgroup line");
    // Server + 2 children = 3 tasks: the third fork fails.
    for _ in 0..2 {
        close_and_wait_eof(connect_echo(server.addr));
    }
    let third = common::connect(server.addr);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("fork failed: EAGAIN")),
        "{}",
        server.stderr()
    );
    drop(third);
    assert!(server.terminate().success());
    let stderr = server.final_stderr();
    assert_eq!(stat_value(&stderr, "exit", "fork_failures"), Some(1));
    assert!(
        !dir.exists(),
        "cgroup {} removed on shutdown",
        dir.display()
    );
}

/// `--rlimit-nproc` works for an unprivileged user (root ignores it).
#[test]
fn rlimit_nproc_makes_fork_fail_for_an_unprivileged_user() {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    // SAFETY: getuid has no preconditions.
    let (Some(setpriv), 0) = (setpriv, unsafe { libc::getuid() }) else {
        eprintln!("skipped: needs root and setpriv to run the server as uid 65534");
        return;
    };
    // uid 65534 (nobody) must be able to execute the test binary.
    let probe = run_bounded(Command::new(setpriv).args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "--version",
    ]));
    if !probe.status.success() {
        eprintln!("skipped: uid 65534 cannot run {BIN}: {probe:?}");
        return;
    }
    let mut cmd = Command::new(setpriv);
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "--port",
        "0",
    ]);
    // 2 processes for uid 65534: the server and one child.
    cmd.args(["--rlimit-nproc", "2", "--reap", "none"]);
    let mut server = Server::from_command(cmd);
    close_and_wait_eof(connect_echo(server.addr));
    let second = common::connect(server.addr);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("fork failed: EAGAIN")),
        "{}",
        server.stderr()
    );
    drop(second);
    assert!(server.terminate().success());
}

#[test]
fn load_client_refuses_non_loopback_addresses() {
    let out = run_bounded(Command::new(BIN).args(["load", "burst", "--addr", "192.0.2.1:7000"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing a non-loopback address"));
}

#[test]
fn load_client_steady_reports_json() {
    let server = Server::start(&[]);
    let out = server.load(&[
        "steady",
        "--count",
        "50",
        "--duration",
        "10s",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("{\"mode\":\"steady\",\"connections\":50,\"errors\":0,"),
        "{stdout}"
    );
}

#[test]
fn load_client_burst_summary() {
    let server = Server::start(&[]);
    let out = server.load(&[
        "burst",
        "--connections",
        "3",
        "--hold",
        "10ms",
        "--rounds",
        "2",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("burst: rounds=2 connections=3 echoed=6 failed=0 server_closed=6 "),
        "{stdout}"
    );
}

#[test]
fn sigusr1_prints_stats() {
    let server = Server::start(&[]);
    close_and_wait_eof(connect_echo(server.addr));
    server.signal(libc::SIGUSR1);
    assert!(wait_until(DEADLINE, || stat_value(
        &server.stderr(),
        "sigusr1",
        "accepted"
    ) == Some(1)));
}
