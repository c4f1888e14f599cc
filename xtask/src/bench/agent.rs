//! forkwatch as the bench runs it: `forkwatch run` with JSON output, its
//! HTTP endpoint on a free loopback port, its metrics, its CPU time and
//! memory, and the finding lines it prints.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::proc::{Line, Out, Proc, cpu_seconds, status_kib};
use crate::cmd::http_get;

pub struct Agent {
    pub proc: Proc,
    pub http: SocketAddr,
    /// From start to "watching ..." (probes attached, /proc read).
    pub startup: Duration,
}

impl Agent {
    /// `forkwatch --log-format json run --web.listen-address 127.0.0.1:0
    /// ARGS`; returns once it says it is watching.
    pub fn start(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--log-format",
            "json",
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .args(args);
        let mut proc = Proc::spawn("forkwatch", &mut cmd, false)?;
        let (http, _) = proc.wait_line(
            Out::Stderr,
            0,
            Duration::from_secs(120),
            "forkwatch's \"watching\" line",
            |l| {
                if !l.text.contains("metrics and findings on ") {
                    return None;
                }
                let rest = &l.text[l.text.find("://")? + 3..];
                rest[..rest.find('/')?].parse::<SocketAddr>().ok()
            },
        )?;
        Ok(Self {
            proc,
            http,
            startup: t0.elapsed(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn scrape(&self) -> anyhow::Result<Metrics> {
        Ok(Metrics::parse(&http_get(self.http, "/metrics")?))
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        (
            status_kib(self.pid(), "VmRSS").unwrap_or(0),
            status_kib(self.pid(), "VmHWM").unwrap_or(0),
        )
    }

    /// Finding lines printed on stdout from line `from` on:
    /// (time read, "finding_opened"/"finding_resolved", the finding).
    pub fn findings(&self, from: usize) -> Vec<(u64, String, serde_json::Value)> {
        self.proc
            .lines(Out::Stdout)
            .iter()
            .skip(from)
            .filter_map(parse_finding_line)
            .collect()
    }

    /// Polls /metrics until `forkwatch_events_total` stops moving (the
    /// agent has drained the ring buffer), bounded by `timeout`.
    pub fn settle(&self, timeout: Duration) -> anyhow::Result<Metrics> {
        let deadline = Instant::now() + timeout;
        let mut last = self.scrape()?;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            super::check_stop()?;
            let now = self.scrape()?;
            let same = now.sum("forkwatch_events_total") == last.sum("forkwatch_events_total");
            last = now;
            if same || Instant::now() >= deadline {
                return Ok(last);
            }
        }
    }

    /// SIGTERM and wait; returns how long it took to exit.
    pub fn stop(mut self) -> Duration {
        self.proc.stop()
    }
}

/// A finding line of the agent's stdout.
pub fn parse_finding_line(l: &Line) -> Option<(u64, String, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_str(&l.text).ok()?;
    let event = v.get("event")?.as_str()?.to_string();
    Some((l.at_ns, event, v.get("finding")?.clone()))
}

/// A Prometheus text exposition, as (series, value) pairs.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sum of every series of metric `name` whose labels contain all
    /// of `labels` (`key="value"` strings).
    pub fn get(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| {
                let (n, l) = s.split_once('{').unwrap_or((s, ""));
                n == name && labels.iter().all(|want| l.contains(want))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Nothing was scraped (the agent never answered).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn sum(&self, name: &str) -> f64 {
        self.get(name, &[])
    }
}
