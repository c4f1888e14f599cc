//! The processes the bench starts: output captured line by line with the
//! CLOCK_MONOTONIC time each line was read, stdin for commands, and a stop
//! by pid (SIGTERM, then SIGKILL) that always reaps, on drop too.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::check_stop;

/// CLOCK_MONOTONIC in ns: the clock of the agent's event times and of the
/// helpers' timestamps.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A line of output and when the bench read it (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug)]
pub struct Line {
    pub at_ns: u64,
    pub text: String,
}

pub type Lines = Arc<Mutex<Vec<Line>>>;

fn collect(r: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = String::new();
        loop {
            buf.clear();
            match r.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at_ns = mono_ns();
                    sink.lock().unwrap().push(Line {
                        at_ns,
                        text: buf.trim_end().to_string(),
                    });
                }
            }
        }
    });
    lines
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Stdout,
    Stderr,
}

/// A child process of the bench.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    done: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr captured; stdin piped when
    /// `with_stdin` (else /dev/null).
    pub fn spawn(name: &str, cmd: &mut Command, with_stdin: bool) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", crate::cmd::show(cmd)))?;
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Ok(Self {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            done: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a line to its stdin.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is not piped")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn lines(&self, out: Out) -> Vec<Line> {
        match out {
            Out::Stdout => self.stdout.lock().unwrap().clone(),
            Out::Stderr => self.stderr.lock().unwrap().clone(),
        }
    }

    pub fn line_count(&self, out: Out) -> usize {
        match out {
            Out::Stdout => self.stdout.lock().unwrap().len(),
            Out::Stderr => self.stderr.lock().unwrap().len(),
        }
    }

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let start = lines.len().saturating_sub(8);
        lines[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a line of `out` from index `from` on satisfies `f`;
    /// returns what `f` returned and the line's index. Fails on timeout,
    /// if the process exits first, or on Ctrl-C.
    pub fn wait_line<T>(
        &mut self,
        out: Out,
        from: usize,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Line) -> Option<T>,
    ) -> anyhow::Result<(T, usize)> {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        let mut exited_at: Option<Instant> = None;
        loop {
            {
                let lines = match out {
                    Out::Stdout => self.stdout.lock().unwrap(),
                    Out::Stderr => self.stderr.lock().unwrap(),
                };
                while next < lines.len() {
                    if let Some(v) = f(&lines[next]) {
                        return Ok((v, next));
                    }
                    next += 1;
                }
            }
            check_stop()?;
            // After an exit, give the reader threads a moment to catch up.
            if exited_at.is_none() && !self.running() {
                exited_at = Some(Instant::now());
            }
            if exited_at.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
                bail!(
                    "{} exited ({}) before {what}; stderr:\n{}",
                    self.name,
                    self.done.map_or("?".into(), |s| s.to_string()),
                    self.stderr_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} from {}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn running(&mut self) -> bool {
        if self.done.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.done = Some(s);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Waits (bounded) for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.running() {
            check_stop()?;
            if Instant::now() >= deadline {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(self.done.expect("exited"))
    }

    /// Sends `sig`, waits up to `timeout`, then SIGKILL; always reaped.
    /// Returns how long it took to exit.
    pub fn stop_with(&mut self, sig: i32, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        if !self.running() {
            return Duration::ZERO;
        }
        self.stdin = None;
        // SAFETY: signalling our own unreaped child by pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
        while self.running() {
            if t0.elapsed() >= timeout {
                eprintln!(
                    "bench: {} (pid {}) did not stop within {timeout:?}; killing it",
                    self.name,
                    self.pid()
                );
                let _ = self.child.kill();
                if let Ok(s) = self.child.wait() {
                    self.done = Some(s);
                }
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        t0.elapsed()
    }

    pub fn stop(&mut self) -> Duration {
        self.stop_with(libc::SIGTERM, Duration::from_secs(10))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` to completion (bounded by `timeout`, killed after it), and
/// returns its stdout; fails if it fails.
pub fn run_capture(name: &str, cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let mut p = Proc::spawn(name, cmd, false)?;
    let status = match p.wait_exit(timeout) {
        Ok(s) => s,
        Err(e) => {
            p.stop();
            return Err(e);
        }
    };
    // The reader threads finish at EOF, just after the exit.
    thread::sleep(Duration::from_millis(20));
    let out = p
        .lines(Out::Stdout)
        .into_iter()
        .map(|l| l.text)
        .collect::<Vec<_>>()
        .join("\n");
    if !status.success() {
        bail!("{name} failed ({status}):\n{}", p.stderr_tail());
    }
    Ok(out)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    kib_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// `FIELD:   123 kB` in a /proc file of such lines (status, meminfo), in KiB.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Context switches (voluntary, involuntary) of all threads of a process.
pub fn ctx_switches(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for t in tasks.filter_map(Result::ok) {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for l in status.lines() {
            let num = |prefix: &str| -> Option<u64> { l.strip_prefix(prefix)?.trim().parse().ok() };
            if let Some(v) = num("voluntary_ctxt_switches:") {
                total.0 += v;
            }
            if let Some(v) = num("nonvoluntary_ctxt_switches:") {
                total.1 += v;
            }
        }
    }
    total
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a
/// server started right after).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Removes a directory tree, ignoring "not found".
pub fn remove_dir(path: &Path) {
    if path.exists()
        && let Err(e) = std::fs::remove_dir_all(path)
    {
        eprintln!("bench: cannot remove {}: {e}", path.display());
    }
}
