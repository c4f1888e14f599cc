//! Command line: the server switches, one per classic mistake, and the
//! `handler`, `load` and `reaper` subcommands.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

/// Upper bound for `--workers` (the prefork parent tracks workers in a fixed
/// table that its SIGCHLD handler can update without allocating).
pub const MAX_WORKERS: usize = 256;

/// forkserver: a textbook TCP echo fork-server with a switch for each classic
/// mistake, so that every forkwatch finding can be produced on demand.
///
/// Without a subcommand it runs the server. On start it prints exactly one
/// line to stdout and flushes it:
///
///     forkserver listening on 127.0.0.1:PORT pid PID
///
/// Everything else (errors, stats, demonstrations) goes to stderr, except the
/// `--child-exit` demonstration line, which sits in a stdio buffer and reaches
/// stdout only when a process flushes it with exit(3).
#[derive(Debug, Parser)]
#[command(name = "forkserver", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Echo stdin to stdout until EOF: the program `--exec-handler self` execs
    /// (inetd style, the connection is on fds 0 and 1).
    Handler,
    /// Load client (loopback only): bursts of connections closed at once, or
    /// steady connect/echo/close loops.
    Load(LoadArgs),
    /// Run PROGRAM under a child subreaper (PR_SET_CHILD_SUBREAPER): orphans
    /// of PROGRAM's descendants are reparented to this process, which reaps
    /// them and logs each one (pid, exit status or signal) to stderr. Exits
    /// with PROGRAM's status once no child or adopted orphan is left.
    Reaper(ReaperArgs),
}

/// yes/no switch values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    Yes,
    No,
}

impl YesNo {
    pub fn yes(self) -> bool {
        self == YesNo::Yes
    }
}

/// Server process model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// The parent accepts and forks one child per connection; the child
    /// echoes until EOF and exits.
    ForkPerConn,
    /// `--workers N` children are forked up front and each loops on accept on
    /// the shared listening socket (Apache prefork). The parent only waits
    /// for workers and re-forks the ones it reaps.
    Prefork,
}

/// How the parent reaps its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reap {
    /// SIGCHLD handler loops waitpid(-1, WNOHANG) until nothing is left
    /// (correct).
    Loop,
    /// SIGCHLD handler calls waitpid(-1, WNOHANG) exactly once per signal
    /// (the textbook bug: coalesced signals leave zombies).
    Once,
    /// No handler, the parent never waits: every child becomes a zombie.
    None,
    /// SIGCHLD set to SIG_IGN: the kernel auto-reaps, no wait call at all.
    Ignore,
    /// No handler; fork-per-conn: the accept loop reaps with a
    /// waitpid(-1, WNOHANG) loop only after each accept returns, so zombies
    /// linger while the server is idle. prefork: the parent sleeps in
    /// sigwait(SIGCHLD) and reaps synchronously (correct).
    Blocking,
    /// SIGCHLD left at SIG_DFL with SA_NOCLDWAIT: the kernel auto-reaps.
    Nocldwait,
}

/// How children leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChildExit {
    /// _exit(2): no atexit handlers, no stdio flush (correct after fork).
    #[value(name = "_exit")]
    UnderscoreExit,
    /// exit(3): runs the atexit handlers and flushes the stdio buffers
    /// inherited from the parent, so output the parent buffered before fork
    /// is printed again by every child.
    Exit,
}

/// Server switches (used when no subcommand is given).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP port to listen on; 0 picks a free one (read it from the startup
    /// line).
    #[arg(long, default_value_t = 7000)]
    pub port: u16,

    /// Address to bind (IPv4 or IPv6 literal).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// listen(2) backlog.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i32).range(1..=65535))]
    pub backlog: i32,

    /// Set SO_REUSEADDR on the listening socket (no: a restart on the same
    /// port fails with EADDRINUSE while old connections sit in TIME_WAIT).
    #[arg(long, value_enum, default_value_t = YesNo::Yes)]
    pub reuseaddr: YesNo,

    /// Process model.
    #[arg(long, value_enum, default_value_t = Model::ForkPerConn)]
    pub model: Model,

    /// Number of pre-forked workers (only with `--model prefork`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS as i64))]
    pub workers: u16,

    /// Reaping policy of the parent. Handlers are installed with sigaction,
    /// SA_RESTART (so the parent's blocking accept(2) is restarted rather than
    /// failing with EINTR) and SA_NOCLDSTOP.
    #[arg(long, value_enum, default_value_t = Reap::Loop)]
    pub reap: Reap,

    /// Whether a child closes its inherited copy of the listening socket
    /// right after fork (no = leaked listen fd; in exec mode the listener then
    /// reaches the exec'd handler unless `--listener-cloexec yes`). Ignored
    /// with `--model prefork`: workers accept on it.
    #[arg(long, value_enum, default_value_t = YesNo::Yes)]
    pub child_closes_listener: YesNo,

    /// How connection children and prefork workers exit (see the stdout
    /// demonstration line and the atexit line on stderr).
    #[arg(long, value_enum, default_value_t = ChildExit::UnderscoreExit)]
    pub child_exit: ChildExit,

    /// Exec mode (fork-per-conn only): the child dup2s the connection onto
    /// stdin/stdout and execv's this program, inetd style. `self` runs
    /// `forkserver handler` (an echo loop); anything else is a path to an
    /// executable, e.g. /bin/cat.
    #[arg(long, value_name = "self|PATH")]
    pub exec_handler: Option<String>,

    /// Extra argument for the exec'd handler (repeatable).
    #[arg(long, value_name = "ARG", requires = "exec_handler")]
    pub exec_arg: Vec<String>,

    /// Create the listening socket with FD_CLOEXEC (SOCK_CLOEXEC). Only
    /// matters in exec mode with `--child-closes-listener no`: with `no` the
    /// exec'd handler inherits the listening socket and keeps the port bound
    /// after the server dies.
    #[arg(long, value_enum, default_value_t = YesNo::Yes)]
    pub listener_cloexec: YesNo,

    /// The parent sets PR_SET_CHILD_SUBREAPER: orphaned descendants (see
    /// `--grandchildren`) are reparented to it instead of init.
    #[arg(long)]
    pub subreaper: bool,

    /// Each connection child forks a helper (grandchild) that lives for
    /// `--helper-lifetime`; the child does not wait for it and usually exits
    /// first, so the helper is reparented (to the subreaper if
    /// `--subreaper`, else to init). fork-per-conn only.
    #[arg(long)]
    pub grandchildren: bool,

    /// Lifetime of a `--grandchildren` helper.
    #[arg(long, value_parser = parse_duration, default_value = "2s", value_name = "DURATION")]
    pub helper_lifetime: Duration,

    /// The child (or worker) serves each connection in a new thread and joins
    /// it, so thread creation and exit show up next to the process events.
    #[arg(long)]
    pub threads: bool,

    /// Server-side limit on a connection: the child closes it after this long
    /// even if the client did not (default: echo until the client's EOF).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub conn_lifetime: Option<Duration>,

    /// Parent death: the parent exits (exit(3), status `--exit-code`) right
    /// after forking the child for the N-th accepted connection, leaving its
    /// children orphaned. fork-per-conn only (kill a prefork parent by hand).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub exit_after: Option<u64>,

    /// Exit status used by `--exit-after`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=255))]
    pub exit_code: i32,

    /// With `--exit-after N`: instead of exiting, the parent kills itself
    /// with this signal (KILL, SIGKILL or 9 ...; must be a signal whose
    /// default action terminates).
    #[arg(long, value_parser = parse_signal, value_name = "SIG", requires = "exit_after")]
    pub die_by_signal: Option<Signal>,

    /// The parent calls setsid(2) and becomes a session leader (if it already
    /// leads a process group, e.g. started from an interactive shell, it forks
    /// once first and the original process exits 0, like daemon(3)). Alone,
    /// there is no controlling terminal, so its death sends no SIGHUP.
    #[arg(long)]
    pub setsid: bool,

    /// With `--setsid`: open a pseudo-terminal and make it the session's
    /// controlling terminal (TIOCSCTTY). The children are in its foreground
    /// process group, so when the session leader dies the kernel sends them
    /// SIGHUP and they die (the SIGHUP cascade).
    #[arg(long, requires = "setsid")]
    pub controlling_tty: bool,

    /// Lower RLIMIT_NPROC to N so fork fails with EAGAIN. Counts every
    /// process of the real uid, and is NOT enforced for root (uid 0) or with
    /// CAP_SYS_RESOURCE/CAP_SYS_ADMIN: as root use `--pids-max`.
    #[arg(long, value_name = "N")]
    pub rlimit_nproc: Option<u64>,

    /// Create a pids cgroup (v1 pids controller, or cgroup v2) named
    /// forkserver-PID, set pids.max = N and move the server into it: once N
    /// tasks (the server, its children, and their zombies) exist, fork fails
    /// with EAGAIN. Removed again on clean shutdown.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids_max: Option<u64>,

    /// On SIGTERM/SIGINT: how long children get to exit after SIGTERM before
    /// they are sent SIGKILL.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub shutdown_timeout: Duration,
}

impl ServeArgs {
    /// Checks the combinations clap cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.model == Model::Prefork {
            let fork_per_conn_only = [
                (self.exec_handler.is_some(), "--exec-handler"),
                (self.grandchildren, "--grandchildren"),
                (self.exit_after.is_some(), "--exit-after"),
            ];
            for (set, name) in fork_per_conn_only {
                anyhow::ensure!(!set, "{name} needs --model fork-per-conn");
            }
        }
        Ok(())
    }

    /// The exec'd handler, if any: program path and argv.
    pub fn exec_command(&self) -> anyhow::Result<Option<(PathBuf, Vec<String>)>> {
        let Some(handler) = &self.exec_handler else {
            return Ok(None);
        };
        let (path, mut argv) = if handler == "self" {
            let exe = std::env::current_exe()?;
            (exe, vec!["forkserver".to_owned(), "handler".to_owned()])
        } else {
            let path = PathBuf::from(handler);
            anyhow::ensure!(path.is_file(), "--exec-handler {handler}: no such file");
            (path, vec![handler.clone()])
        };
        argv.extend(self.exec_arg.iter().cloned());
        Ok(Some((path, argv)))
    }
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub mode: LoadMode,
}

#[derive(Debug, Subcommand)]
pub enum LoadMode {
    /// Open N connections, echo a line on each and verify it, hold them, then
    /// close them all at the same instant (shutdown(SHUT_WR) on every socket
    /// in a tight loop; then each socket waits, bounded, for the server's
    /// close and is closed): N FINs, N children exiting together, N SIGCHLD
    /// that coalesce. Prints a one-line summary.
    Burst(BurstArgs),
    /// connect/echo/close loop, bounded by both `--count` and `--duration`.
    /// Prints connections per second.
    Steady(SteadyArgs),
}

/// Options shared by the load modes.
#[derive(Debug, Args)]
pub struct Target {
    /// Server address (IP literal and port; loopback only).
    #[arg(long, value_parser = parse_loopback)]
    pub addr: SocketAddr,

    /// Timeout for connect, read and write.
    #[arg(long, value_parser = parse_duration, default_value = "2s", value_name = "DURATION")]
    pub timeout: Duration,

    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BurstArgs {
    #[command(flatten)]
    pub target: Target,

    /// Connections per burst.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,

    /// How long the connections are held open after the echo.
    #[arg(long, value_parser = parse_duration, default_value = "300ms", value_name = "DURATION")]
    pub hold: Duration,

    /// Number of bursts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub rounds: u32,

    /// Pause between bursts.
    #[arg(long, value_parser = parse_duration, default_value = "100ms", value_name = "DURATION")]
    pub gap: Duration,
}

#[derive(Debug, Args)]
pub struct SteadyArgs {
    #[command(flatten)]
    pub target: Target,

    /// Stop after this many connections.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Stop after this long.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub duration: Duration,

    /// Client threads running the loop.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
}

#[derive(Debug, Args)]
pub struct ReaperArgs {
    /// The program and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

/// Parses `300ms`, `2s`, `1m`, `1h`, `1s 500ms` (humantime, as the agent's
/// `--zombie-after` does, so one spelling works for both programs).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 300ms, 2s or 1m: {e}"))
}

/// Parses `KILL`, `SIGKILL`, `kill` or `9`; refuses signals whose default
/// action does not terminate the process.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let signal = if let Ok(n) = s.parse::<i32>() {
        Signal::try_from(n).map_err(|e| format!("{s}: {e}"))?
    } else {
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        Signal::from_str(&name).map_err(|_| format!("{s}: unknown signal"))?
    };
    use Signal::{SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH};
    if [
        SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH,
    ]
    .contains(&signal)
    {
        return Err(format!(
            "{signal}: default action does not terminate the process"
        ));
    }
    Ok(signal)
}

/// Parses an `IP:PORT` literal and refuses anything that is not loopback.
pub fn parse_loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?}: expected IP:PORT, e.g. 127.0.0.1:7000"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr}: refusing a non-loopback address; the load client only targets 127.0.0.0/8 or [::1]"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1s 500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("CHLD").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn loopback_only() {
        assert!(parse_loopback("127.0.0.1:7000").is_ok());
        assert!(parse_loopback("[::1]:7000").is_ok());
        assert!(parse_loopback("10.0.0.1:7000").is_err());
        assert!(parse_loopback("localhost:7000").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
