//! Who holds the listening socket: `socket:[INODE]` links in /proc/PID/fd
//! against the LISTEN inode from /proc/net/tcp.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{
    DEADLINE, Server, blocked_in_accept, cmdline, connect_echo, holds, live_children, wait_until,
};

/// Holds `n` echoed connections and returns them with the children serving
/// them (each child has run its post-fork code before echoing).
fn hold(server: &mut Server, n: usize) -> (Vec<TcpStream>, Vec<i32>) {
    let conns: Vec<TcpStream> = (0..n).map(|_| connect_echo(server.addr)).collect();
    assert!(wait_until(DEADLINE, || live_children(server.pid).len() == n));
    let kids = live_children(server.pid);
    server.track(&kids);
    (conns, kids)
}

#[test]
fn children_keep_the_listener_when_they_do_not_close_it() {
    let mut server = Server::start(&["--child-closes-listener", "no"]);
    let inode = server.listen_inode();
    assert!(holds(server.pid, inode), "the server holds its listener");
    let (_conns, kids) = hold(&mut server, 3);
    for pid in kids {
        assert!(
            holds(pid, inode),
            "child {pid} should hold listen inode {inode}"
        );
    }
}

#[test]
fn children_that_close_the_listener_do_not_hold_it() {
    let mut server = Server::start(&["--child-closes-listener", "yes"]);
    let inode = server.listen_inode();
    let (_conns, kids) = hold(&mut server, 3);
    for pid in kids {
        assert!(
            !holds(pid, inode),
            "child {pid} should not hold listen inode {inode}"
        );
    }
    assert!(holds(server.pid, inode));
}

#[test]
fn prefork_workers_share_the_listener_and_accept_on_it() {
    let mut server = Server::start(&["--model", "prefork", "--workers", "4"]);
    let inode = server.listen_inode();
    assert!(
        wait_until(DEADLINE, || {
            let workers = live_children(server.pid);
            workers.len() == 4 && workers.iter().all(|&w| blocked_in_accept(w))
        }),
        "4 workers blocked in accept; workers {:?}",
        live_children(server.pid)
    );
    let workers = live_children(server.pid);
    server.track(&workers);
    for &w in &workers {
        assert!(holds(w, inode), "worker {w} holds listen inode {inode}");
    }
    // Each worker serves one connection at a time: 4 concurrent echoes need
    // all 4 of them.
    let conns: Vec<TcpStream> = (0..4).map(|_| connect_echo(server.addr)).collect();
    assert!(
        wait_until(DEADLINE, || workers.iter().all(|&w| !blocked_in_accept(w))),
        "every worker left accept to serve a connection"
    );
    drop(conns);
    assert!(wait_until(DEADLINE, || workers
        .iter()
        .all(|&w| blocked_in_accept(w))));
    assert_eq!(
        live_children(server.pid),
        workers,
        "same workers, none re-forked"
    );
    assert!(server.terminate().success());
    assert!(
        workers
            .iter()
            .all(|&w| common::stat(w).is_none_or(|s| s.ppid != server.pid))
    );
}

/// Exec mode: starts the server, holds one connection and returns the
/// exec'd handler's pid (once it is running the handler program).
fn exec_handler(server: &mut Server) -> (TcpStream, i32) {
    let conn = connect_echo(server.addr);
    assert!(wait_until(DEADLINE, || live_children(server.pid).len() == 1));
    let handler = live_children(server.pid)[0];
    server.track(&[handler]);
    (conn, handler)
}

#[test]
fn exec_without_cloexec_carries_the_listener_into_the_handler() {
    let mut server = Server::start(&[
        "--exec-handler",
        "self",
        "--child-closes-listener",
        "no",
        "--listener-cloexec",
        "no",
    ]);
    let inode = server.listen_inode();
    let (conn, handler) = exec_handler(&mut server);
    // The echo came from the exec'd program: `forkserver handler`.
    assert_eq!(cmdline(handler).get(1).map(String::as_str), Some("handler"));
    assert!(holds(handler, inode), "handler holds listen inode {inode}");

    // The serious part: the port stays bound after the server dies.
    server.signal(libc::SIGKILL);
    server.wait(DEADLINE);
    assert_eq!(
        common::listen_inode(server.port()),
        Some(inode),
        "port still in LISTEN"
    );
    assert!(holds(handler, inode));
    // The kernel still completes handshakes into the orphaned backlog.
    let _queued = std::net::TcpStream::connect_timeout(&server.addr, Duration::from_secs(5))
        .expect("connect to the orphaned listener");
    drop(conn);
    // The handler exits on EOF; its listener goes with it.
    assert!(wait_until(DEADLINE, || common::listen_inode(server.port()).is_none()));
}

#[test]
fn exec_with_cloexec_does_not_carry_the_listener() {
    let mut server = Server::start(&[
        "--exec-handler",
        "self",
        "--child-closes-listener",
        "no",
        "--listener-cloexec",
        "yes",
    ]);
    let inode = server.listen_inode();
    let (_conn, handler) = exec_handler(&mut server);
    assert_eq!(cmdline(handler).get(1).map(String::as_str), Some("handler"));
    assert!(
        !holds(handler, inode),
        "FD_CLOEXEC closed the listener at exec"
    );
}

#[test]
fn exec_child_that_closes_the_listener_does_not_carry_it() {
    let mut server = Server::start(&[
        "--exec-handler",
        "self",
        "--child-closes-listener",
        "yes",
        "--listener-cloexec",
        "no",
    ]);
    let inode = server.listen_inode();
    let (_conn, handler) = exec_handler(&mut server);
    assert!(!holds(handler, inode));
}

#[test]
fn exec_of_a_user_program_carries_the_listener() {
    let cat = ["/bin/cat", "/usr/bin/cat"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(cat) = cat else {
        eprintln!("skipped: no cat binary to exec");
        return;
    };
    let mut server = Server::start(&[
        "--exec-handler",
        cat,
        "--child-closes-listener",
        "no",
        "--listener-cloexec",
        "no",
    ]);
    let inode = server.listen_inode();
    let (_conn, handler) = exec_handler(&mut server);
    let exe = std::fs::read_link(format!("/proc/{handler}/exe")).expect("exe link");
    assert_eq!(exe.file_name().and_then(|n| n.to_str()), Some("cat"));
    assert!(holds(handler, inode), "cat holds listen inode {inode}");
}
