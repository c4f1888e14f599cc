//! Shared helpers for the forkserver integration tests: start the server,
//! read /proc, talk to it over loopback, and clean up by pid.
//!
//! Hygiene rules kept here: traffic to 127.0.0.1 only; every wait has a
//! deadline; processes are killed by pid, and only after checking their start
//! time, so a reused pid is never hit.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_forkserver");

/// Generous deadline for things that normally take milliseconds (the suite
/// runs tests in parallel on small machines).
pub const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- /proc --

/// What the tests need from /proc/PID/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub session: i32,
    pub tty_nr: i32,
    pub starttime: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) ...
    // starttime(22); f[0] is field 3.
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        tty_nr: f.get(4)?.parse().ok()?,
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// PPid from /proc/PID/status.
pub fn status_ppid(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every process whose parent is `parent` (live or zombie).
pub fn children(parent: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent))
        .collect();
    out.sort_unstable();
    out
}

/// Children of `parent` in state Z.
pub fn zombies(parent: i32) -> Vec<i32> {
    children(parent)
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.state == 'Z'))
        .collect()
}

/// Children of `parent` that are not zombies.
pub fn live_children(parent: i32) -> Vec<i32> {
    children(parent)
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X'))
        .collect()
}

/// Inodes of the sockets `pid` holds (`socket:[INODE]` links in /proc/PID/fd).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        let link = link.to_str()?;
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Inode of the LISTEN (state 0A) socket on `port`, from /proc/net/tcp{,6}.
pub fn listen_inode(port: u16) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                return inode.parse().ok();
            }
        }
    }
    None
}

pub fn holds(pid: i32, inode: u64) -> bool {
    socket_inodes(pid).contains(&inode)
}

/// argv of `pid`.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` sleeps in accept(2)/accept4(2): /proc/PID/syscall, with
/// /proc/PID/wchan as a fallback on other architectures.
pub fn blocked_in_accept(pid: i32) -> bool {
    #[cfg(target_arch = "x86_64")]
    const ACCEPT: [i64; 2] = [43, 288];
    #[cfg(target_arch = "aarch64")]
    const ACCEPT: [i64; 2] = [202, 242];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const ACCEPT: [i64; 0] = [];
    let nr = std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok());
    if nr.is_some_and(|nr| ACCEPT.contains(&nr)) {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("accept"))
}

/// The test process and its ancestors: where an orphan may land when there
/// is a PR_SET_CHILD_SUBREAPER above us (systemd --user, tini, ...), next to
/// init (pid 1).
pub fn possible_reapers() -> HashSet<i32> {
    let mut out = HashSet::from([1]);
    let mut pid = std::process::id() as i32;
    for _ in 0..64 {
        out.insert(pid);
        match status_ppid(pid) {
            Some(ppid) if ppid > 0 => pid = ppid,
            _ => break,
        }
    }
    out
}

/// Polls `f` every 10 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ----------------------------------------------------- process identity --

/// A process identified by pid and start time (pids are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proc {
    pub pid: i32,
    pub starttime: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|s| Proc {
            pid,
            starttime: s.starttime,
        })
    }

    /// Still the same process (zombie included)?
    pub fn exists(self) -> bool {
        stat(self.pid).is_some_and(|s| s.starttime == self.starttime)
    }

    /// Still the same process and not a zombie?
    pub fn alive(self) -> bool {
        stat(self.pid)
            .is_some_and(|s| s.starttime == self.starttime && s.state != 'Z' && s.state != 'X')
    }

    /// Sends `signal` if the pid still names this process.
    pub fn signal(self, signal: i32) {
        if self.exists() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(self.pid, signal) };
        }
    }
}

// ---------------------------------------------------------------- server --

/// A running forkserver (or `forkserver reaper -- forkserver ...`).
pub struct Server {
    /// The process the test spawned: the server, or the reaper wrapping it.
    pub child: Child,
    /// The server's pid, from the startup line.
    pub pid: i32,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Processes to kill on drop (descendants the test learned about).
    tracked: Vec<Proc>,
    waited: Option<ExitStatus>,
}

impl Server {
    /// `forkserver --port 0 ARGS...`
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["--port", "0"]).args(args);
        Server::from_command(cmd)
    }

    /// `forkserver reaper -- forkserver --port 0 ARGS...`
    pub fn start_under_reaper(args: &[&str]) -> Server {
        Server::try_start_under_reaper(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start_under_reaper`, but an error if no server comes up.
    pub fn try_start_under_reaper(args: &[&str]) -> Result<Server, String> {
        let mut cmd = Command::new(BIN);
        cmd.args(["reaper", "--", BIN, "--port", "0"]).args(args);
        Server::try_from_command(cmd)
    }

    /// Spawns `cmd` (which must run a forkserver) and waits for the startup
    /// line.
    pub fn from_command(cmd: Command) -> Server {
        Server::try_from_command(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `from_command`, but an error (with stderr) if the server exits
    /// without printing its startup line.
    pub fn try_from_command(mut cmd: Command) -> Result<Server, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forkserver");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (first_line_tx, first_line_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().expect("stdout");
        let err_pipe = child.stderr.take().expect("stderr");
        let readers = vec![
            collect(out_pipe, Arc::clone(&stdout), Some(first_line_tx)),
            collect(err_pipe, Arc::clone(&stderr), None),
        ];
        let Ok(line) = first_line_rx.recv_timeout(DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = wait_until(DEADLINE, || readers.iter().all(|r| r.is_finished()));
            return Err(format!(
                "no startup line; stderr:\n{}",
                stderr.lock().unwrap()
            ));
        };
        let Some((addr, pid)) = parse_startup_line(&line) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bad startup line {line:?}"));
        };
        Ok(Server {
            child,
            pid,
            addr,
            stdout,
            stderr,
            readers,
            tracked: Vec::new(),
            waited: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn listen_inode(&self) -> u64 {
        listen_inode(self.port()).expect("LISTEN socket in /proc/net/tcp")
    }

    /// Remembers processes to kill (by pid and start time) when the test ends.
    pub fn track(&mut self, pids: &[i32]) {
        self.tracked
            .extend(pids.iter().filter_map(|&p| Proc::of(p)));
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything written to stderr, once the spawned process has exited: waits
    /// (bounded) for the reader thread to reach EOF, which needs every holder of
    /// the pipe (children included) to be gone.
    pub fn final_stderr(&mut self) -> String {
        assert!(
            self.waited.is_some(),
            "final_stderr before the process exited"
        );
        let finished = wait_until(DEADLINE, || self.readers.iter().all(|r| r.is_finished()));
        assert!(
            finished,
            "stderr still open (a process still holds the pipe)"
        );
        self.stderr()
    }

    /// Everything the process wrote to stdout, once it has exited and the
    /// pipe is closed (all holders of the pipe gone).
    pub fn stdout_to_eof(&mut self) -> String {
        let finished = wait_until(DEADLINE, || self.readers.iter().all(|r| r.is_finished()));
        assert!(
            finished,
            "stdout still open (a process still holds the pipe)"
        );
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the spawned process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.waited {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.waited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "forkserver pid {} did not exit within {timeout:?}; stderr:\n{}",
                self.child.id(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the spawned process (server or reaper).
    pub fn signal(&self, signal: i32) {
        if self.waited.is_none() {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// SIGTERM and wait: the clean shutdown.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(DEADLINE)
    }

    /// Runs `forkserver load ARGS... --addr THIS` to completion.
    pub fn load(&self, args: &[&str]) -> std::process::Output {
        let addr = self.addr.to_string();
        run_bounded(
            Command::new(BIN)
                .arg("load")
                .args(args)
                .args(["--addr", &addr]),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Clean shutdown first (reaps everything the server still owns)...
        if self.waited.is_none() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.waited = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // ...then whatever the test tracked (orphans), by pid + start time...
        for p in &self.tracked {
            p.signal(libc::SIGKILL);
        }
        // ...and the spawned process itself if it is still there.
        if self.waited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(
    pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    first: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut first = first;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = first.take() {
                let _ = tx.send(line.clone());
            }
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    })
}

/// `forkserver listening on ADDR pid PID`
pub fn parse_startup_line(line: &str) -> Option<(SocketAddr, i32)> {
    let rest = line.strip_prefix("forkserver listening on ")?;
    let (addr, pid) = rest.split_once(" pid ")?;
    Some((addr.parse().ok()?, pid.parse().ok()?))
}

/// Runs a command with a deadline (kills it if it overruns).
pub fn run_bounded(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("command overran its deadline: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- client --

/// Connects, echoes one line and checks it; the connection stays open.
pub fn connect_echo(addr: SocketAddr) -> TcpStream {
    assert!(addr.ip().is_loopback());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping\n").expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping\n");
    s
}

/// Connects without waiting for an echo.
pub fn connect(addr: SocketAddr) -> TcpStream {
    assert!(addr.ip().is_loopback());
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Half-closes and waits for the server side to close (EOF), bounded.
pub fn close_and_wait_eof(mut s: TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = [0u8; 64];
    for _ in 0..16 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Value of `name=` in the last stats line with `reason=`.
pub fn stat_value(stderr: &str, reason: &str, name: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| {
        l.starts_with("forkserver stats ") && l.contains(&format!(" reason={reason} "))
    })?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// The process (other than `exclude`) holding the server side of `conn`:
/// the ESTABLISHED socket with local port `server_port` and the client's
/// port as remote port, looked up in /proc/net/tcp{,6} and then in every
/// /proc/PID/fd.
pub fn connection_holder(server_port: u16, conn: &TcpStream, exclude: i32) -> Option<i32> {
    let client_port = conn.local_addr().ok()?.port();
    let mut inode = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |field: Option<&&str>| {
                field
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port(f.get(1)) == Some(server_port)
                && port(f.get(2)) == Some(client_port)
                && f.get(3) == Some(&"01")
            {
                inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            }
        }
    }
    let inode = inode?;
    let mut holder = None;
    wait_until(DEADLINE, || {
        holder = std::fs::read_dir("/proc")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != exclude)
            .find(|&pid| holds(pid, inode));
        holder.is_some()
    });
    holder
}
