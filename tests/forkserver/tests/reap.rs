//! `--reap`: zombies (state Z, ppid = server) per policy, read from /proc.

mod common;

use std::time::Duration;

use common::{
    DEADLINE, Proc, Server, close_and_wait_eof, connect_echo, stat_value, wait_until, zombies,
};

/// One burst: 5 connections, echoed, held, then all closed at once.
fn burst(server: &Server) {
    let out = server.load(&["burst", "--connections", "5", "--hold", "300ms"]);
    assert!(out.status.success(), "load burst failed: {out:?}");
}

#[test]
fn reap_once_leaves_zombies_after_coalesced_sigchld() {
    let mut server = Server::start(&["--reap", "once"]);
    // Whether two exits land in one pending SIGCHLD depends on scheduling, so
    // repeat the burst (bounded) until it happened; zombies then stay, since
    // no further child exits to trigger another handler run.
    let mut found = Vec::new();
    for round in 1..=20 {
        burst(&server);
        std::thread::sleep(Duration::from_millis(500));
        found = zombies(server.pid);
        if !found.is_empty() {
            eprintln!("{} zombies after {round} bursts", found.len());
            break;
        }
    }
    assert!(
        !found.is_empty(),
        "no zombie after 20 bursts of 5 with --reap once"
    );
    for &pid in &found {
        assert_eq!(common::status_ppid(pid), Some(server.pid));
    }
    // Still there a while later: nobody reaps them.
    std::thread::sleep(Duration::from_millis(300));
    let zombie = Proc::of(found[0]).expect("zombie");
    assert!(zombie.exists() && common::stat(zombie.pid).unwrap().state == 'Z');

    server.signal(libc::SIGUSR1);
    assert!(wait_until(DEADLINE, || server
        .stderr()
        .contains("reason=sigusr1")));
    let stderr = server.stderr();
    let runs = stat_value(&stderr, "sigusr1", "sigchld_handler_runs").unwrap();
    let waits = stat_value(&stderr, "sigusr1", "wait_calls").unwrap();
    let forked = stat_value(&stderr, "sigusr1", "forked").unwrap();
    let reaped = stat_value(&stderr, "sigusr1", "reaped").unwrap();
    assert_eq!(runs, waits, "exactly one waitpid per handler run");
    assert!(
        reaped < forked,
        "fewer reaped ({reaped}) than forked ({forked})"
    );

    // Clean shutdown reaps the leftovers.
    assert!(server.terminate().success());
    assert!(!zombie.exists());
    let stderr = server.final_stderr();
    assert!(stat_value(&stderr, "exit", "shutdown_reaped").unwrap() >= found.len() as u64);
}

#[test]
fn reap_loop_leaves_no_zombie() {
    let mut server = Server::start(&["--reap", "loop"]);
    for _round in 0..3 {
        burst(&server);
        // Usually gone within microseconds; poll so a loaded machine does not
        // make the test flaky.
        // (no child at all: the burst has seen every child's EOF, so they
        // are exiting or gone).
        assert!(
            wait_until(Duration::from_secs(2), || common::children(server.pid)
                .is_empty()),
            "children left with --reap loop: {:?}, zombies {:?}",
            common::children(server.pid),
            zombies(server.pid)
        );
    }
    assert!(server.terminate().success());
    let stderr = server.final_stderr();
    assert_eq!(stat_value(&stderr, "exit", "reaped"), Some(15));
    assert_eq!(stat_value(&stderr, "exit", "shutdown_reaped"), Some(0));
}

/// Auto-reaping policies: never a zombie, and the server never calls wait.
fn assert_auto_reaped(policy: &str) {
    let mut server = Server::start(&["--reap", policy]);
    for _round in 0..3 {
        burst(&server);
        for _sample in 0..10 {
            assert_eq!(
                zombies(server.pid),
                Vec::<i32>::new(),
                "zombie with --reap {policy}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(
        wait_until(DEADLINE, || common::children(server.pid).is_empty()),
        "children left"
    );
    assert!(server.terminate().success());
    let stderr = server.final_stderr();
    for counter in [
        "sigchld_handler_runs",
        "wait_calls",
        "reaped",
        "shutdown_reaped",
    ] {
        assert_eq!(
            stat_value(&stderr, "exit", counter),
            Some(0),
            "{counter} with --reap {policy}"
        );
    }
    assert_eq!(stat_value(&stderr, "exit", "forked"), Some(15));
}

#[test]
fn reap_ignore_auto_reaps_without_wait() {
    assert_auto_reaped("ignore");
}

#[test]
fn reap_nocldwait_auto_reaps_without_wait() {
    assert_auto_reaped("nocldwait");
}

#[test]
fn reap_none_leaves_every_child_a_zombie() {
    let mut server = Server::start(&["--reap", "none"]);
    for _ in 0..3 {
        close_and_wait_eof(connect_echo(server.addr));
    }
    assert!(wait_until(DEADLINE, || zombies(server.pid).len() == 3));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(zombies(server.pid).len(), 3, "zombies are never reaped");
    assert!(server.terminate().success());
    let stderr = server.final_stderr();
    assert_eq!(stat_value(&stderr, "exit", "wait_calls"), Some(0));
    assert_eq!(stat_value(&stderr, "exit", "shutdown_reaped"), Some(3));
}

#[test]
fn reap_blocking_reaps_only_after_accept() {
    let mut server = Server::start(&["--reap", "blocking"]);
    // All 3 accepted before any exits (each accept reaps what exited before).
    let conns: Vec<_> = (0..3).map(|_| connect_echo(server.addr)).collect();
    for conn in conns {
        close_and_wait_eof(conn);
    }
    // Idle server: the zombies linger.
    assert!(wait_until(DEADLINE, || zombies(server.pid).len() == 3));
    std::thread::sleep(Duration::from_millis(500));
    let old: Vec<Proc> = zombies(server.pid)
        .into_iter()
        .filter_map(Proc::of)
        .collect();
    assert_eq!(old.len(), 3);
    // The next accept reaps them.
    let held = connect_echo(server.addr);
    assert!(
        wait_until(DEADLINE, || old.iter().all(|p| !p.exists())),
        "zombies not reaped after the next accept"
    );
    assert_eq!(zombies(server.pid), Vec::<i32>::new());
    drop(held);
    assert!(server.terminate().success());
}
