//! `forkwatch events --pid` on a real process tree: every event the
//! scenario must produce, with the right pids, statuses and fds, and nothing
//! from an untracked process hammering close() at the same time.

use std::{
    collections::HashMap,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use forkwatch_integration::{
    Proc, bin, events_agent, parse_events, procfs, require_root, wait_for,
};
use serde_json::Value;

fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or("")
}

fn num(e: &Value, field: &str) -> u64 {
    e[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {e}"))
}

#[test]
fn events_of_a_real_process_tree() {
    require_root();
    let mut cmd = Command::new(bin("scenario"));
    cmd.stdin(Stdio::piped());
    let mut scenario = Proc::spawn(cmd);
    scenario.wait_stdout(Duration::from_secs(10), "scenario ready", |l| {
        (l == "ready").then_some(())
    });
    let parent = scenario.pid();

    let agent = events_agent(&["--pid".into(), parent.to_string()]);

    // The untracked close() storm runs while the scenario does its work.
    let closer = Proc::spawn(Command::new(bin("closer")));
    let closer_pid = closer.pid();

    scenario
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let port: u16 = scenario.wait_stdout(Duration::from_secs(10), "scenario listening", |l| {
        l.strip_prefix("listening ")?.parse().ok()
    });
    let listen_inode =
        procfs::listen_inode(port).expect("the scenario's LISTEN socket in /proc/net/tcp");
    let kids: Vec<u32> = scenario.wait_stdout(Duration::from_secs(10), "scenario done", |l| {
        let rest = l.strip_prefix("done ")?;
        Some(rest.split(' ').map(|p| p.parse().unwrap()).collect())
    });
    let (a, b, c) = (kids[0], kids[1], kids[2]);
    closer.wait_stdout(Duration::from_secs(60), "closer finished", |l| {
        l.starts_with("closed ").then_some(())
    });

    // Ground truth at this moment: C is a zombie child of the parent; A and B are gone.
    wait_for(Duration::from_secs(5), "C to be a zombie", || {
        procfs::is_zombie(c).then_some(())
    });
    assert_eq!(procfs::ppid(c), Some(parent));
    assert_eq!(procfs::zombie_children(parent), vec![c]);
    assert!(procfs::state(a).is_none() && procfs::state(b).is_none());

    // Releases go through an RCU grace period: wait until both are reported.
    let released = |lines: &[String], pid: u32| {
        parse_events(lines)
            .iter()
            .any(|e| kind(e) == "release" && num(e, "pid") == pid as u64)
    };
    wait_for(Duration::from_secs(5), "releases of A and B", || {
        let lines = agent.stdout_lines();
        (released(&lines, a) && released(&lines, b)).then_some(())
    });
    // Give C's (absent) release a chance to show up wrongly.
    std::thread::sleep(Duration::from_millis(200));
    let events = parse_events(&agent.stdout_lines());
    drop(agent);

    // Nothing from the untracked process, and nothing from any pid outside the tree.
    let tree = [parent, a, b, c];
    for e in &events {
        let pid = num(e, "pid") as u32;
        assert_ne!(
            pid, closer_pid,
            "event from the untracked close() loop: {e}"
        );
        assert!(
            tree.contains(&pid),
            "event from a pid outside the tree: {e}"
        );
    }

    let of = |k: &str, pid: u32| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| kind(e) == k && num(e, "pid") == pid as u64)
            .collect()
    };

    // Forks: three processes from the parent, one thread in A.
    let forks = of("fork", parent);
    assert_eq!(forks.len(), 3, "forks by the parent: {forks:?}");
    for (f, child) in forks.iter().zip([a, b, c]) {
        assert_eq!(num(f, "child") as u32, child);
        assert_eq!(num(f, "parent") as u32, parent);
        assert_eq!(f["thread"], false);
    }
    let threads = of("fork", a);
    assert_eq!(threads.len(), 1, "A starts one thread: {threads:?}");
    assert_eq!(threads[0]["thread"], true);
    assert_eq!(num(threads[0], "child") as u32, a);
    assert!(of("fork", b).is_empty() && of("fork", c).is_empty());

    // Exec of C.
    let execs = of("exec", c);
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0]["filename"], "/bin/true");
    assert_eq!(execs[0]["comm"], "true");
    assert!(
        of("exec_listen_fd", c).is_empty(),
        "std's listener is close-on-exec"
    );

    // Exits with their codes.
    for (pid, code) in [(a, 3), (b, 4), (c, 0)] {
        let exits = of("exit", pid);
        assert_eq!(exits.len(), 1, "exit of {pid}: {exits:?}");
        assert_eq!(exits[0]["status"]["how"], "exited");
        assert_eq!(exits[0]["status"]["code"], code);
        assert_eq!(num(exits[0], "ppid") as u32, parent);
    }
    assert!(of("exit", parent).is_empty(), "the parent is still alive");

    // Waits: two successful, by pid, with the statuses; failures only as
    // signal interruptions (ERESTARTSYS is seen at syscall exit, then restarted).
    let waits = of("wait", parent);
    let ok: Vec<_> = waits
        .iter()
        .filter(|w| w["ret"].as_i64() > Some(0))
        .collect();
    assert_eq!(ok.len(), 2, "successful waits: {waits:?}");
    for (w, (child, code)) in ok.iter().zip([(a, 3), (b, 4)]) {
        assert_eq!(w["syscall"], "wait4");
        assert_eq!(num(w, "child") as u32, child);
        assert_eq!(w["id"].as_i64(), Some(child as i64));
        assert_eq!(w["status"]["code"], code);
    }
    for w in waits.iter().filter(|w| w["ret"].as_i64() <= Some(0)) {
        assert!(
            matches!(w["ret"].as_i64(), Some(-512 | -4)),
            "unexpected failed wait: {w}"
        );
    }

    // Releases: A and B, reaped by the parent; not C (still a zombie).
    for pid in [a, b] {
        let r = of("release", pid);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(num(r[0], "reaper") as u32, parent);
    }
    assert!(of("release", c).is_empty(), "C is unreaped: no release");

    // The listen, with the socket /proc shows listening on the port.
    let listens = of("listen", parent);
    assert_eq!(listens.len(), 1, "{listens:?}");
    assert_eq!(num(listens[0], "inode"), listen_inode);
    assert_eq!(num(listens[0], "port"), u64::from(port));
    assert_eq!(num(listens[0], "family"), 2, "AF_INET");
    let listen_fd = num(listens[0], "fd");
    assert!(procfs::socket_inodes(parent).contains(&listen_inode));

    // B's close of the inherited fd; A keeps it.
    let closes = of("listen_fd_close", b);
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(num(closes[0], "inode"), listen_inode);
    assert_eq!(num(closes[0], "fd"), listen_fd);
    assert!(of("listen_fd_close", a).is_empty(), "A keeps the fd");
    assert!(
        of("listen_fd_close", c).is_empty(),
        "C's fd goes at exec (cloexec), not by close()"
    );

    // SIGCHLD: one generated per child, sent by that child, to the parent.
    let gens = of("sigchld_generate", parent);
    let mut senders: Vec<u32> = gens.iter().map(|g| num(g, "sender") as u32).collect();
    senders.sort_unstable();
    assert_eq!(senders, {
        let mut s = vec![a, b, c];
        s.sort_unstable();
        s
    });
    for g in &gens {
        assert!(
            matches!(g["result"].as_str(), Some("delivered" | "already_pending")),
            "{g}"
        );
        assert_eq!(num(g, "child"), num(g, "sender"));
    }
    let delivered = of("sigchld_deliver", parent);
    assert!(
        !delivered.is_empty() && delivered.len() <= 3,
        "{delivered:?}"
    );
    for d in &delivered {
        assert!(num(d, "handler") > 1, "a handler, not SIG_DFL/SIG_IGN: {d}");
    }
    assert_eq!(of("signal_return", parent).len(), delivered.len());

    // Per-process order: fork < exit < release.
    let pos = |k: &str, pid: u32, field: &str| {
        events
            .iter()
            .position(|e| kind(e) == k && num(e, field) == pid as u64)
            .unwrap_or_else(|| panic!("no {k} for {pid}"))
    };
    assert!(pos("listen", parent, "pid") < pos("fork", a, "child"));
    for pid in [a, b] {
        assert!(pos("fork", pid, "child") < pos("exit", pid, "pid"));
        assert!(pos("exit", pid, "pid") < pos("release", pid, "pid"));
    }

    // Every event carries a wall-clock time and monotonic ns.
    for e in &events {
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        assert!(num(e, "ts_ns") > 0);
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *count.entry(kind(e)).or_default() += 1;
    }
    eprintln!("event counts: {count:?}");

    // C stays unreaped until its parent dies; clean up by pid.
    forkwatch_integration::kill_pid(parent);
    drop(scenario);
}
