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
        // Already reaped: its pid may belong to someone else now.
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return status;
        }
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

/// A running `forkserver`, with its port and pid from the startup line.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
    pub pid: u32,
}

impl Server {
    /// Starts `forkserver --port 0 ARGS` and waits for its startup line.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(bin("forkserver"));
        cmd.args(["--port", "0"]).args(args);
        Self::from_command(cmd)
    }

    /// Starts a command that prints forkserver's startup line (e.g. the
    /// server under `forkserver reaper --`).
    pub fn from_command(cmd: Command) -> Self {
        let proc = Proc::spawn(cmd);
        let (port, pid) =
            proc.wait_stdout(Duration::from_secs(10), "forkserver startup line", |l| {
                let rest = l.strip_prefix("forkserver listening on ")?;
                let (addr, pid) = rest.split_once(" pid ")?;
                Some((
                    addr.rsplit(':').next()?.parse().ok()?,
                    pid.trim().parse().ok()?,
                ))
            });
        Self { proc, port, pid }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs the load client's burst mode to completion.
    pub fn burst(&self, connections: u32, hold: &str) {
        let out = Command::new(bin("forkserver"))
            .args(["load", "burst", "--addr", &self.addr()])
            .args(["--connections", &connections.to_string(), "--hold", hold])
            .output()
            .expect("run the load client");
        assert!(
            out.status.success(),
            "load burst failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a burst in the background (connections held while the test looks).
    pub fn burst_in_background(&self, connections: u32, hold: &str) -> Proc {
        let mut cmd = Command::new(bin("forkserver"));
        cmd.args(["load", "burst", "--addr", &self.addr()]).args([
            "--connections",
            &connections.to_string(),
            "--hold",
            hold,
        ]);
        Proc::spawn(cmd)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Children first (by pid), so nothing outlives the test.
        let kids = procfs::children(self.pid);
        self.proc.stop_with(Signal::SIGTERM, Duration::from_secs(5));
        for k in kids {
            kill_pid(k);
        }
    }
}

/// A running `forkwatch run`, serving HTTP on a free loopback port.
pub struct Agent {
    pub proc: Proc,
    pub http: std::net::SocketAddr,
}

impl Agent {
    /// `forkwatch run ARGS` (JSON logs, HTTP on 127.0.0.1:0); waits until
    /// it says it is watching.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(bin("forkwatch"));
        cmd.args([
            "--log-format",
            "json",
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .args(args);
        Self::from_command(cmd)
    }

    /// Starts a command that runs the agent (under setpriv, with a special
    /// environment, ...) with JSON logs on stderr; waits until it says it is
    /// watching and takes its HTTP address from that line.
    pub fn from_command(cmd: Command) -> Self {
        let mut proc = Proc::spawn(cmd);
        proc.wait_stderr(Duration::from_secs(30), "metrics and findings on ");
        let http = proc
            .stderr
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                let rest = &l[l.find("://")? + 3..];
                rest[..rest.find('/')?].parse().ok()
            })
            .expect("HTTP address in the agent's log");
        Self { proc, http }
    }

    pub fn get(&self, path: &str) -> String {
        http_get(self.http, path)
    }

    pub fn findings(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/findings")).expect("/findings is JSON")
    }

    /// Open findings of `kind`.
    pub fn open(&self, kind: &str) -> Vec<serde_json::Value> {
        self.findings()["open"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Pids of the open findings of `kind`, sorted.
    pub fn open_pids(&self, kind: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .open(kind)
            .iter()
            .map(|f| f["pid"].as_u64().unwrap() as u32)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// The value of one series of /metrics (`name{a="b",...}` as printed).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.get("/metrics"), series)
    }
}

/// The value of `series` in a Prometheus text exposition (0 if absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET (bounded by timeouts), returning the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read response");
    let (head, body) = buf.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// Waits until /proc shows `want` processes and the agent's open findings
/// of `kind` name exactly them (/proc read before and after the agent, to
/// be sure it did not change in between); panics with both sides otherwise.
/// `want: None` accepts any non-empty agreement.
pub fn agrees_with_proc(
    agent: &Agent,
    kind: &str,
    truth: impl Fn() -> Vec<u32>,
    want: Option<usize>,
) -> Vec<u32> {
    poll(Duration::from_secs(8), || {
        let before = truth();
        let got = agent.open_pids(kind);
        let after = truth();
        let enough = want.map_or(!before.is_empty(), |n| before.len() == n);
        (enough && before == after && got == before).then_some(got)
    })
    .unwrap_or_else(|| {
        panic!(
            "open {kind} findings {:?} != /proc {:?}\n{}",
            agent.open_pids(kind),
            truth(),
            serde_json::to_string_pretty(&agent.findings()).unwrap()
        )
    })
}

/// Zombie children of `pid`, as /proc shows them.
pub fn zombies_of(pid: u32) -> impl Fn() -> Vec<u32> {
    move || procfs::zombie_children(pid)
}

/// Children of `pid` holding the listening socket with `inode`.
pub fn holders(pid: u32, inode: u64) -> impl Fn() -> Vec<u32> {
    move || {
        procfs::children(pid)
            .into_iter()
            .filter(|&c| procfs::socket_inodes(c).contains(&inode))
            .collect()
    }
}

/// Set by the kernel matrix's guests (qemu under TCG, no KVM), where
/// everything runs ten to fifty times slower: storms shrink there and
/// deadlines grow (see [`deadline`]); what the tests assert stays the same.
pub fn emulated() -> bool {
    std::env::var_os("FORKWATCH_TEST_EMULATED").is_some()
}

/// A deadline for work whose speed is the machine's, stretched tenfold
/// under emulation.
pub fn deadline(d: Duration) -> Duration {
    if emulated() { d * 10 } else { d }
}

/// Polls until `f` returns `Some`, like [`wait_for`], but returns `None`
/// on timeout instead of panicking (for "converges to equal" checks that
/// report their own mismatch).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Serialises the tests of one binary that time kernel behaviour (signal
/// coalescing, grace periods) so they do not compete for the two CPUs.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// forkwatch's programs loaded in the kernel right now (by their names).
pub fn loaded_probe_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str().is_some_and(|n| {
                n.starts_with("sched_process")
                    || n.starts_with("sys_enter_")
                    || n.starts_with("sys_exit_")
                    || n.starts_with("signal_")
            })
        })
        .count()
}

/// Sum of every series of a metric family in a scrape.
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
