//! Recycles pids quickly, for the pid-reuse test (run it in a pid
//! namespace with a small pid_max). Prints `ready`, waits for a line on
//! stdin, then forks R children one after another; child i exits with code
//! (i % 200) + 1. Every K-th child is left a zombie for HOLD_MS while the
//! churn goes on (its pid is then the one the agent must flag, with that
//! exit code); the others are reaped at once, so their pids come back.
//! Prints `zombie PID CODE` when it leaves one, `reaped PID` when it reaps
//! it, and `done` at the end.
//!
//! usage: pidchurn R K HOLD_MS

use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant},
};

fn main() {
    let a: Vec<u64> = std::env::args()
        .skip(1)
        .map(|x| x.parse().expect("number"))
        .collect();
    let (rounds, every, hold) = (a[0], a[1], Duration::from_millis(a[2]));
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let mut held: Vec<(i32, Instant)> = Vec::new();
    let reap = |pid: i32, out: &mut std::io::StdoutLock<'_>| {
        // SAFETY: plain waitpid on our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        writeln!(out, "reaped {pid}").unwrap();
    };
    for i in 0..rounds {
        let code = (i % 200 + 1) as i32;
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe { libc::_exit(code) },
            -1 => continue,
            _ => {}
        }
        if i % every == 0 {
            writeln!(out, "zombie {pid} {code}").unwrap();
            out.flush().unwrap();
            held.push((pid, Instant::now() + hold));
        } else {
            // SAFETY: plain waitpid on our child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, t)| *t <= now);
        held = keep;
        for (p, _) in due {
            reap(p, &mut out);
        }
        // Slow enough that a held zombie is seen past the threshold while
        // the others' pids cycle around it.
        std::thread::sleep(Duration::from_millis(2));
    }
    for (p, t) in held {
        std::thread::sleep(t.saturating_duration_since(Instant::now()));
        reap(p, &mut out);
    }
    writeln!(out, "done").unwrap();
}
