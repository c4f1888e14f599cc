//! The detection-latency probe: makes one zombie or one leaked listening
//! socket at a time, on command, and says exactly when.
//!
//! Commands, one per line on stdin; answers on stdout:
//! - `zombie`: fork a child that reads CLOCK_MONOTONIC and CLOCK_REALTIME,
//!   hands them to the parent through a pipe and `_exit(0)`s at once; the
//!   parent does not reap it. Answer: `exited PID MONO_NS REAL_NS`.
//! - `reap PID`: waitpid it. Answer: `reaped PID`.
//! - `leak`: (listening on 127.0.0.1:0 on first use) read the clocks, then
//!   fork a child that keeps the inherited listening socket and sleeps.
//!   Answer: `forked PID MONO_NS REAL_NS PORT` (the clocks read just
//!   before fork(), so latencies measured from them are upper bounds).
//! - `kill PID`: SIGKILL and reap it. Answer: `killed PID`.
//! - `quit`, EOF, or no command for 10 minutes: kill and reap every child
//!   left, exit.
//!
//! Starts with `ready PID` and waits for the first line when `--wait-go`.

use std::{io::Write as _, net::TcpListener, time::Duration};

use forkwatch_benchhelpers::{
    Args, die_with_parent, monotonic_ns, read_line_timeout, realtime_ns, reap, wait_for_go,
};

const USAGE: &str =
    "latprobe [--wait-go]   (commands on stdin: zombie, reap PID, leak, kill PID, quit)";

fn main() {
    let args = Args::from_env(USAGE);
    if args.flag("--wait-go") {
        wait_for_go();
    }
    let me = std::process::id() as libc::pid_t;
    let mut listener: Option<TcpListener> = None;
    let mut kids: Vec<libc::pid_t> = Vec::new();
    let mut out = std::io::stdout();
    while let Some(line) = read_line_timeout(Duration::from_secs(600)) {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("quit");
        let arg: libc::pid_t = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        match cmd {
            "zombie" => {
                let mut fds = [0; 2];
                // SAFETY: a valid array of two ints.
                if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                    eprintln!("latprobe: pipe: {}", std::io::Error::last_os_error());
                    break;
                }
                // SAFETY: the child only reads clocks, writes to a pipe and _exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let t = [monotonic_ns(), realtime_ns()];
                    unsafe {
                        libc::write(fds[1], t.as_ptr().cast(), 16);
                        libc::_exit(0);
                    }
                }
                unsafe { libc::close(fds[1]) };
                let mut t = [0u64; 2];
                let n = unsafe { libc::read(fds[0], t.as_mut_ptr().cast(), 16) };
                unsafe { libc::close(fds[0]) };
                if pid < 0 || n != 16 {
                    eprintln!("latprobe: fork or pipe read failed");
                    break;
                }
                kids.push(pid);
                let _ = writeln!(out, "exited {pid} {} {}", t[0], t[1]);
            }
            "leak" => {
                if listener.is_none() {
                    match TcpListener::bind("127.0.0.1:0") {
                        Ok(l) => listener = Some(l),
                        Err(e) => {
                            eprintln!("latprobe: listen: {e}");
                            break;
                        }
                    }
                }
                let port = listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map_or(0, |a| a.port());
                let (mono, real) = (monotonic_ns(), realtime_ns());
                // SAFETY: the child only calls prctl, getppid and pause.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    if die_with_parent(me) {
                        loop {
                            unsafe { libc::pause() };
                        }
                    }
                    unsafe { libc::_exit(0) };
                }
                if pid < 0 {
                    eprintln!("latprobe: fork: {}", std::io::Error::last_os_error());
                    break;
                }
                kids.push(pid);
                let _ = writeln!(out, "forked {pid} {mono} {real} {port}");
            }
            "reap" | "kill" if kids.contains(&arg) => {
                if cmd == "kill" {
                    // SAFETY: our own unreaped child, by pid.
                    unsafe { libc::kill(arg, libc::SIGKILL) };
                }
                reap(arg);
                kids.retain(|&k| k != arg);
                let _ = writeln!(
                    out,
                    "{}ed {arg}",
                    if cmd == "kill" { "kill" } else { "reap" }
                );
            }
            "reap" | "kill" => {
                let _ = writeln!(out, "unknown {arg}");
            }
            _ => break,
        }
        let _ = out.flush();
    }
    for &k in &kids {
        // SAFETY: our own children, by pid.
        unsafe { libc::kill(k, libc::SIGKILL) };
        reap(k);
    }
}
