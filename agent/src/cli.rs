//! The command line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "forkwatch",
    version,
    about = "eBPF observability for forking servers: unreaped children, orphans, leaked \
             listening sockets, coalesced SIGCHLD, fork failures"
)]
pub struct Cli {
    /// Log format: human text on a terminal, JSON lines otherwise (auto).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    /// Log level filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info", env = "FORKWATCH_LOG", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: watch the targets, report findings as they open and
    /// resolve, serve /metrics, /findings, /tree and /healthz.
    Run {
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        probes: ProbeArgs,
        /// A child exited and not reaped for longer than this is flagged.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        zombie_after: Duration,
        /// A child still holding an inherited listening socket after this,
        /// without closing or accepting on it, is flagged.
        #[arg(long, default_value = "250ms", value_parser = parse_duration)]
        listen_grace: Duration,
        /// Address of the HTTP endpoint (9867 is forkwatch's default port;
        /// use 127.0.0.1:9867 to keep it local).
        #[arg(long = "web.listen-address", default_value = ":9867", value_parser = crate::http::parse_listen_address)]
        listen_address: std::net::SocketAddr,
        /// TLS and basic authentication for the HTTP endpoint, in the
        /// Prometheus exporter-toolkit web config format.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<PathBuf>,
        /// Most findings open at once (a cap on memory; more are counted
        /// in forkwatch_limit_reached_total{limit="findings"}).
        #[arg(long, default_value_t = 10_000)]
        max_open_findings: usize,
        /// Resolved findings kept for /findings.
        #[arg(long, default_value_t = 1_000)]
        resolved_history: usize,
        /// How often the agent checks its picture against /proc even when no
        /// event was lost (it always does after a loss).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        reconcile_interval: Duration,
    },
    /// Stream the decoded kernel events of the target processes as JSON lines.
    Events {
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        probes: ProbeArgs,
    },
    /// Check that this host can run forkwatch: kernel, BTF, tracefs,
    /// tracepoints, privileges. One line per item with the fix.
    Check {
        /// Only inspect; do not load and attach the probes to prove they work.
        #[arg(long)]
        no_load: bool,
    },
}

/// Which processes to watch. Repeatable and combinable; each target and its
/// descendants are tracked.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// A process by pid (and all its descendants).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Processes by name (comm, at most 15 bytes), now and whenever one
    /// execs later, e.g. after a restart.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Processes in a cgroup v2 directory or below it (the sidecar case),
    /// e.g. /sys/fs/cgroup/kubepods.slice/....
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// Every process of this pid namespace.
    #[arg(long)]
    pub all: bool,
    /// The name the targets are reported under (the `server` label);
    /// default: the target's comm, cgroup directory name, or "all".
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Size of the kernel-to-agent ring buffer (power of two, e.g. 8MiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub ring_buffer_size: u32,
    /// Most processes tracked at once (in the kernel and in the agent).
    #[arg(long, default_value_t = 131_072)]
    pub max_processes: u32,
}

/// Parses a human duration: `250ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 250ms or 2s: {e}"))
}

/// Parses `4096`, `64KiB`, `8MiB`, `1GiB`; must be a power of two of at
/// least one page (the kernel's ring buffer requirement).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("K", 1 << 10),
        ("M", 1 << 20),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 8MiB"))?;
    let bytes = n * mult;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > (1 << 30) {
        return Err(format!(
            "{s} is not a power of two between 4KiB and 1GiB (the kernel's ring buffer needs one)"
        ));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3MiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1024").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
