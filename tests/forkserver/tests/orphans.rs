//! Parent death and reparenting: PPid in /proc/PID/status.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{
    DEADLINE, Proc, Server, close_and_wait_eof, connect, connect_echo, live_children,
    possible_reapers, status_ppid, wait_until,
};

/// Connects twice (the second connection triggers `--exit-after 2`; its
/// child still echoes after the parent is gone) and returns the connections
/// with the two children serving them, found by the server side of each
/// connection in /proc/net/tcp.
fn two_connections_then_parent_death(server: &mut Server) -> (Vec<TcpStream>, Vec<Proc>) {
    let conns = vec![connect_echo(server.addr), connect_echo(server.addr)];
    let kids: Vec<Proc> = conns
        .iter()
        .map(|c| {
            let pid = common::connection_holder(server.port(), c, server.pid)
                .expect("child serving the connection");
            Proc::of(pid).expect("child")
        })
        .collect();
    server.track(&kids.iter().map(|k| k.pid).collect::<Vec<_>>());
    (conns, kids)
}

/// The server exits after 2 connections; its two children live on with a new
/// parent: init, or a subreaper among the test's own ancestors.
#[test]
fn exit_after_orphans_children_to_init() {
    let mut server = Server::start(&["--exit-after", "2", "--exit-code", "3"]);
    let (conns, kids) = two_connections_then_parent_death(&mut server);
    let status = server.wait(DEADLINE);
    assert_eq!(status.code(), Some(3));
    assert_eq!(kids.len(), 2, "both children found");
    let reapers = possible_reapers();
    for kid in &kids {
        assert!(kid.alive(), "orphan {} still running", kid.pid);
        let ppid = status_ppid(kid.pid).expect("status");
        assert!(
            reapers.contains(&ppid),
            "orphan {} reparented to {ppid}, expected one of {reapers:?}",
            kid.pid
        );
    }
    // Orphans keep serving.
    for conn in conns {
        close_and_wait_eof(conn);
    }
    assert!(wait_until(DEADLINE, || kids.iter().all(|k| !k.alive())));
}

#[test]
fn die_by_signal_orphans_children() {
    let mut server = Server::start(&["--exit-after", "2", "--die-by-signal", "KILL"]);
    let (_conns, kids) = two_connections_then_parent_death(&mut server);
    let status = server.wait(DEADLINE);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(kids.len(), 2);
    let reapers = possible_reapers();
    for kid in &kids {
        let ppid = status_ppid(kid.pid).expect("status");
        assert!(
            reapers.contains(&ppid),
            "orphan {} reparented to {ppid}",
            kid.pid
        );
    }
    // Tracked orphans are killed by pid when `server` drops.
}

/// Under `forkserver reaper`, orphans are reparented to the reaper, which
/// reaps them and says so.
#[test]
fn orphans_go_to_the_subreaper_ancestor() {
    let mut server = Server::start_under_reaper(&["--exit-after", "2"]);
    let reaper = server.child.id() as i32;
    let first = connect_echo(server.addr);
    let second = connect_echo(server.addr);
    let server_proc = server.pid;
    assert!(
        wait_until(DEADLINE, || common::stat(server_proc).is_none()),
        "server gone"
    );
    let kids = live_children(reaper);
    server.track(&kids);
    assert_eq!(kids.len(), 2, "two orphans adopted by the reaper");
    for &kid in &kids {
        assert_eq!(status_ppid(kid), Some(reaper));
    }
    close_and_wait_eof(first);
    close_and_wait_eof(second);
    let status = server.wait(DEADLINE);
    assert!(status.success(), "reaper exits with the server's status");
    let stderr = server.final_stderr();
    assert!(
        stderr.contains(&format!(
            "reaped pid {server_proc} (child): exited with status 0"
        )),
        "{stderr}"
    );
    for kid in kids {
        assert!(
            stderr.contains(&format!("reaped pid {kid} (adopted): exited with status 0")),
            "{stderr}"
        );
    }
}

/// Returns the helper (grandchild) of the single connection child.
fn helper_of_connection(server: &mut Server) -> (TcpStream, Proc, Proc) {
    let conn = connect_echo(server.addr);
    assert!(wait_until(DEADLINE, || live_children(server.pid).len() == 1));
    let child = Proc::of(live_children(server.pid)[0]).unwrap();
    // The helper is forked before the echo, so it exists now.
    let helpers = live_children(child.pid);
    assert_eq!(helpers.len(), 1, "one helper");
    let helper = Proc::of(helpers[0]).unwrap();
    server.track(&[child.pid, helper.pid]);
    (conn, child, helper)
}

#[test]
fn grandchildren_are_reparented_to_the_subreaper_server() {
    let mut server = Server::start(&["--subreaper", "--grandchildren", "--helper-lifetime", "60s"]);
    let (conn, child, helper) = helper_of_connection(&mut server);
    close_and_wait_eof(conn);
    assert!(
        wait_until(DEADLINE, || !child.exists()),
        "child exited and was reaped"
    );
    assert!(helper.alive());
    assert_eq!(
        status_ppid(helper.pid),
        Some(server.pid),
        "helper adopted by the subreaper"
    );
    // Clean shutdown covers adopted helpers too.
    assert!(server.terminate().success());
    assert!(!helper.exists(), "helper killed and reaped by the server");
}

#[test]
fn grandchildren_without_subreaper_go_to_init() {
    let mut server = Server::start(&["--grandchildren", "--helper-lifetime", "60s"]);
    let (conn, child, helper) = helper_of_connection(&mut server);
    close_and_wait_eof(conn);
    assert!(wait_until(DEADLINE, || !child.exists()));
    let ppid = status_ppid(helper.pid).expect("helper alive");
    assert!(
        possible_reapers().contains(&ppid),
        "helper reparented to {ppid}"
    );
    assert_ne!(ppid, server.pid);
    helper.signal(libc::SIGKILL);
}

/// A session leader with a controlling terminal dies: the kernel sends SIGHUP
/// to the terminal's foreground process group, i.e. the children.
#[test]
fn session_leader_death_sends_sighup_to_children() {
    let started =
        Server::try_start_under_reaper(&["--setsid", "--controlling-tty", "--exit-after", "2"]);
    let mut server = match started {
        Ok(server) => server,
        Err(e) if e.contains("openpty") => {
            eprintln!("skipped: no pseudo-terminal available: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut first = connect_echo(server.addr);
    let child = live_children(server.pid)[0];
    let st = common::stat(child).unwrap();
    assert_eq!(st.session, server.pid, "child in the server's session");
    assert_ne!(st.tty_nr, 0, "session has a controlling terminal");
    let _second = connect(server.addr);
    // Both children die of SIGHUP; the client sees the connection end.
    let mut buf = [0u8; 16];
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)));
    let status = server.wait(DEADLINE);
    assert!(status.success());
    let stderr = server.final_stderr();
    let sighups = stderr
        .lines()
        .filter(|l| l.ends_with("(adopted): killed by SIGHUP"))
        .count();
    assert_eq!(sighups, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("reaped pid {child} (adopted): killed by SIGHUP")),
        "{stderr}"
    );
}

/// Without a controlling terminal there is no SIGHUP: the children survive.
#[test]
fn setsid_without_terminal_sends_no_sighup() {
    let mut server = Server::start_under_reaper(&["--setsid", "--exit-after", "2"]);
    let reaper = server.child.id() as i32;
    let first = connect_echo(server.addr);
    let second = connect_echo(server.addr);
    let server_pid = server.pid;
    assert!(wait_until(DEADLINE, || common::stat(server_pid).is_none()));
    std::thread::sleep(Duration::from_millis(300));
    let kids = live_children(reaper);
    server.track(&kids);
    assert_eq!(kids.len(), 2, "children survive the session leader");
    close_and_wait_eof(first);
    close_and_wait_eof(second);
    assert!(server.wait(DEADLINE).success());
    assert!(!server.final_stderr().contains("SIGHUP"));
}
