//! N sleeping child processes, for the agent's memory at 10k and 100k
//! tracked processes. The children are separate processes (thread-group
//! leaders, not threads) that share the parent's memory (clone with
//! CLONE_VM and no CLONE_THREAD, a few KiB of stack each), so 100,000 of
//! them fit in a few GiB of kernel memory instead of copying page tables
//! 100,000 times. Each child sleeps in pause() and dies with the parent
//! (PR_SET_PDEATHSIG).
//!
//! After starting them all it prints `spawned N FAILED ELAPSED_S`, waits for
//! a line on stdin (at most `--max-life` seconds), kills every child by pid,
//! reaps them, prints `reaped N` and exits.

use std::{io::Write as _, time::Duration};

use forkwatch_benchhelpers::{
    Args, monotonic_ns, read_line_timeout, reap, sleep_until, wait_for_go,
};

const USAGE: &str = "sleepers --count N [--rate PER_S] [--max-life SECONDS] [--wait-go]";

/// Stack of each child: it only calls prctl, getppid and pause.
const STACK: usize = 16 * 1024;

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    let parent = arg as usize as libc::c_long;
    // SAFETY: raw system calls only: the child shares the parent's memory
    // and thread pointer, so it must not go through libc's wrappers'
    // thread state or touch the heap.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as libc::c_long,
            libc::SIGKILL as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        );
        if libc::syscall(libc::SYS_getppid) != parent {
            libc::syscall(libc::SYS_exit, 0 as libc::c_long);
        }
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

fn main() {
    let args = Args::from_env(USAGE);
    let count: usize = args.get("--count", 1000);
    let rate: f64 = args.get("--rate", 0.0);
    let max_life: u64 = args.get("--max-life", 900);
    if args.flag("--wait-go") {
        wait_for_go();
    }
    let me = std::process::id() as libc::pid_t;

    // SAFETY: an anonymous private mapping, checked below.
    let stacks = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            count.max(1) * STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stacks == libc::MAP_FAILED {
        eprintln!("sleepers: cannot map {count} stacks");
        std::process::exit(1);
    }
    let start = monotonic_ns();
    let mut kids: Vec<libc::pid_t> = Vec::with_capacity(count);
    let mut failed = 0usize;
    for i in 0..count {
        if rate > 0.0 {
            sleep_until(start + (i as f64 * 1e9 / rate) as u64);
        }
        // SAFETY: each child gets its own stack inside the mapping, and
        // runs child_main only.
        let pid = unsafe {
            let top = (stacks as *mut u8).add((i + 1) * STACK) as *mut libc::c_void;
            libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::SIGCHLD,
                me as usize as *mut libc::c_void,
            )
        };
        if pid > 0 {
            kids.push(pid);
        } else {
            failed += 1;
            if failed > 100 {
                eprintln!(
                    "sleepers: clone keeps failing after {} children: {}",
                    kids.len(),
                    std::io::Error::last_os_error()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let elapsed = (monotonic_ns() - start) as f64 / 1e9;
    println!("spawned {} {failed} {elapsed:.3}", kids.len());
    let _ = std::io::stdout().flush();

    let _ = read_line_timeout(Duration::from_secs(max_life));
    for &p in &kids {
        // SAFETY: our own children, by pid, not yet reaped.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let mut reaped = 0;
    for &p in &kids {
        if reap(p).is_some() {
            reaped += 1;
        }
    }
    println!("reaped {reaped}");
}
