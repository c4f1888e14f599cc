//! Shared bits of the benchmark helpers (`cargo xtask bench` runs them):
//! argument parsing without dependencies, clocks, the "wait for go" start
//! handshake, and bounded reading of stdin.
//!
//! Every helper is bounded: loops stop at a count and a deadline, and
//! children die with their parent (PR_SET_PDEATHSIG).

use std::{io::Write as _, time::Duration};

/// `--name VALUE` options and `--flag` switches, parsed from `std::env::args`.
pub struct Args {
    args: Vec<String>,
}

impl Args {
    pub fn from_env(usage: &str) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "-h" || a == "--help") {
            println!("{usage}");
            std::process::exit(0);
        }
        Self { args }
    }

    /// Whether `--name` is present.
    pub fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }

    /// The value after `--name`, parsed; `default` when absent. Exits with
    /// status 2 on a bad value.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        let Some(i) = self.args.iter().position(|a| a == name) else {
            return default;
        };
        match self.args.get(i + 1).map(|v| v.parse::<T>()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("{name} needs a value");
                std::process::exit(2);
            }
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns (the clock of the agent's event timestamps).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Prints `ready PID` and waits for one line on stdin (or EOF), so the
/// bench can point the agent at this process before it does anything.
pub fn wait_for_go() {
    println!("ready {}", std::process::id());
    let _ = std::io::stdout().flush();
    read_line_raw();
}

/// Reads one line from fd 0 a byte at a time: no buffering, so what
/// follows the line stays in the pipe for the next poll. Empty on EOF.
fn read_line_raw() -> String {
    let mut line = Vec::new();
    loop {
        let mut b = 0u8;
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(0, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            if b == b'\n' {
                break;
            }
            line.push(b);
        } else if n == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Waits up to `timeout` for stdin to have a line (or EOF). Returns the
/// line (empty on EOF), or `None` on timeout.
pub fn read_line_timeout(timeout: Duration) -> Option<String> {
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n <= 0 {
        return None;
    }
    Some(read_line_raw())
}

/// In a child: die with SIGKILL when the parent dies, so nothing outlives
/// the helper. Returns false if the parent is already gone.
pub fn die_with_parent(parent: libc::pid_t) -> bool {
    // SAFETY: prctl and getppid are plain system calls.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::getppid() == parent
    }
}

/// Reaps `pid` (blocking); its exit status, or None if it is not our child.
pub fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    // SAFETY: a valid pointer to an int.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    (r == pid).then_some(status)
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (no-op if past).
pub fn sleep_until(deadline_ns: u64) {
    let now = monotonic_ns();
    if deadline_ns > now {
        std::thread::sleep(Duration::from_nanos(deadline_ns - now));
    }
}
