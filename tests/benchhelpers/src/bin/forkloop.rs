//! The fork/exit/wait loop of the capacity and untracked-cost benchmarks:
//! fork, the child `_exit(0)`s at once, the parent `waitpid`s it; again,
//! until `--count` forks or `--duration` seconds, whichever comes first,
//! optionally paced to `--rate` forks per second. Then it leaves
//! `--zombies K` children unreaped and waits for a line on stdin (the
//! bench compares the agent's zombie count with them), reaps them, exits.
//!
//! Prints one JSON line:
//! `{"forks":N,"failures":F,"elapsed_s":S,"rate":R,"zombies":[PID,...]}`.

use std::io::Write as _;

use forkwatch_benchhelpers::{
    Args, die_with_parent, monotonic_ns, read_line_timeout, reap, sleep_until, wait_for_go,
};

const USAGE: &str = "forkloop [--count N] [--duration SECONDS] [--rate FORKS_PER_S] \
[--zombies K] [--wait-go]
  --wait-go   print `ready PID` and wait for a line on stdin before starting";

fn main() {
    let args = Args::from_env(USAGE);
    let count: u64 = args.get("--count", 1_000_000);
    let duration: f64 = args.get("--duration", 10.0);
    let rate: f64 = args.get("--rate", 0.0);
    let zombies: u32 = args.get("--zombies", 0);
    if args.flag("--wait-go") {
        wait_for_go();
    }
    let me = std::process::id() as libc::pid_t;

    let start = monotonic_ns();
    let deadline = start + (duration * 1e9) as u64;
    let mut forks = 0u64;
    let mut failures = 0u64;
    while forks < count {
        let now = monotonic_ns();
        if now >= deadline {
            break;
        }
        if rate > 0.0 {
            // Sleep only when more than 1 ms ahead: timers are coarser
            // than one fork at high rates.
            let due = start + (forks as f64 * 1e9 / rate) as u64;
            if due > now + 1_000_000 {
                sleep_until(due.min(deadline));
                continue;
            }
        }
        // SAFETY: the child calls only _exit.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe { libc::_exit(0) },
            p if p > 0 => {
                reap(p);
                forks += 1;
            }
            _ => {
                failures += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    let elapsed = (monotonic_ns() - start) as f64 / 1e9;

    let mut kids = Vec::new();
    for _ in 0..zombies {
        // SAFETY: the child calls only prctl, getppid and _exit.
        match unsafe { libc::fork() } {
            0 => {
                die_with_parent(me);
                unsafe { libc::_exit(0) }
            }
            p if p > 0 => kids.push(p),
            _ => failures += 1,
        }
    }
    let list: Vec<String> = kids.iter().map(|p| p.to_string()).collect();
    println!(
        "{{\"forks\":{forks},\"failures\":{failures},\"elapsed_s\":{elapsed:.6},\"rate\":{:.1},\"zombies\":[{}]}}",
        forks as f64 / elapsed.max(1e-9),
        list.join(",")
    );
    let _ = std::io::stdout().flush();
    if !kids.is_empty() {
        // Bounded: at most 10 minutes, then clean up anyway.
        let _ = read_line_timeout(std::time::Duration::from_secs(600));
        for p in kids {
            reap(p);
        }
    }
}
