//! A bounded fork storm for the overflow tests: prints `ready`, waits for a
//! line on stdin, then forks N children that exit at once, and either reaps
//! each (`reap`) or leaves them all as zombies (`keep`) until stdin closes
//! or 60 s pass. Prints `done N` when the forks are over.
//!
//! usage: forkstorm N reap|keep

use std::io::{BufRead as _, Write as _};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).expect("N");
    let keep = args.next().as_deref() == Some("keep");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let mut failed = 0;
    for _ in 0..n {
        // SAFETY: the child only calls _exit.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => failed += 1,
            pid => {
                if !keep {
                    // SAFETY: plain waitpid on our child.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                }
            }
        }
    }
    println!("done {n} failed {failed}");
    std::io::stdout().flush().unwrap();
    if keep {
        // Hold the zombies until the test closes stdin (bounded by a timeout
        // the test sets by killing us).
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}
