//! Shared harness of the kernel integration tests: finding the binaries,
//! running the agent and the fork server as child processes, reading /proc
//! ground truth, bounded waiting. Every process a test starts is stopped by
//! pid when its handle drops; every wait has a deadline.

pub mod procfs;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A binary built by `cargo build --workspace` (`cargo xtask test` does that
/// first): in the same target directory as the running test.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("test binary lives in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} not found: build the workspace first (`cargo build --workspace`, or run the \
         tests with `cargo xtask test`), or set {var}",
        path.display()
    );
    path
}

/// Panics unless running as root: these tests load eBPF programs.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel integration tests load eBPF probes: run them as root (cargo xtask test)"
    );
}

/// Polls `f` every 10 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    /// Lines of stdout/stderr, collected by reader threads.
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr captured (stdin as given).
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stdout line satisfies `f`.
    pub fn wait_stdout<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> T {
        wait_for(timeout, what, || {
            self.stdout.lock().unwrap().iter().find_map(|l| f(l))
        })
    }

    /// Waits until a stderr line contains `needle`; panics with the
    /// stderr seen if the process exits first.
    pub fn wait_stderr(&mut self, timeout: Duration, needle: &str) {
        wait_for(timeout, needle, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "process exited ({status}) before printing {needle:?}; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
                .then_some(())
        });
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), sig);
    }

    /// Sends `sig` and waits (bounded) for the exit; returns the status.
    pub fn stop_with(&mut self, sig: Signal, timeout: Duration) -> std::process::ExitStatus {
        self.signal(sig);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.signal(Signal::SIGKILL);
                return self.child.wait().expect("wait");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop_with(Signal::SIGTERM, Duration::from_secs(3));
        }
    }
}

/// Kills a process by pid (SIGKILL), ignoring "no such process".
pub fn kill_pid(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// `forkwatch events` with `args`, started and ready (its probes attached).
pub fn events_agent(args: &[String]) -> Proc {
    let mut cmd = Command::new(bin("forkwatch"));
    cmd.arg("--log-format=json").arg("events").args(args);
    let mut p = Proc::spawn(cmd);
    p.wait_stderr(Duration::from_secs(30), "streaming events");
    p
}

/// Parsed JSON lines of an events stream.
pub fn parse_events(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}
