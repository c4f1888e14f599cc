//! Overhead on a fork-per-connection workload: the bundled `forkserver
//! --model fork-per-conn --reap loop` under the steady load client
//! (connect, echo, close; a fork and an exit per connection), its
//! connections/s untraced, with forkwatch watching it, with bpftrace on the
//! same tracepoints, and under `strace -f`.

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{
    Ctx, Goal, Section,
    agent::Agent,
    pause,
    proc::{Out, Proc, ctx_switches, run_capture},
    stats::{cell, median, ratios, summary_json},
};

/// The bpftrace script of the comparison (also usable by hand).
pub const PEER_BT: &str = include_str!("peer.bt");

/// The `SyscallPath` variant's script: sethostname is never called by the
/// loops, so its program never runs; only the per-syscall tracing hook does.
const SYSCALL_PATH_BT: &str = r#"BEGIN { printf("attached\n"); }
tracepoint:syscalls:sys_enter_sethostname { @events[probe] = count(); }"#;

/// The `CloseFloor` variant's script: runs for every close() and stops at
/// once, as forkwatch's program does for an untracked process.
const CLOSE_FLOOR_BT: &str = r#"BEGIN { printf("attached\n"); }
tracepoint:syscalls:sys_enter_close /pid == 1/ { @events[probe] = count(); }"#;

/// Load client threads: enough to keep both the server and the client busy.
pub fn concurrency(ctx: &Ctx) -> usize {
    (ctx.cpus * 2).clamp(2, 8)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tracer {
    None,
    Forkwatch,
    Bpftrace,
    /// bpftrace on one syscall tracepoint no benchmark loop calls: what any
    /// syscall tracepoint costs every syscall of the machine (the kernel's
    /// tracing path), with no program run for the measured syscalls.
    SyscallPath,
    /// bpftrace with the least program there is on sys_enter_close (a pid
    /// compare): the floor for any tool that watches close() this way.
    CloseFloor,
    Strace,
}

impl Tracer {
    pub fn name(self) -> &'static str {
        match self {
            Tracer::None => "no tracer (baseline)",
            Tracer::Forkwatch => "forkwatch",
            Tracer::Bpftrace => "bpftrace (same tracepoints, counting)",
            Tracer::SyscallPath => {
                "kernel syscall tracing path only (bpftrace, one unrelated syscall tracepoint)"
            }
            Tracer::CloseFloor => "least program on sys_enter_close (bpftrace, `/pid == 1/`)",
            Tracer::Strace => "strace -f",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Tracer::None => "baseline",
            Tracer::Forkwatch => "forkwatch",
            Tracer::Bpftrace => "bpftrace",
            Tracer::SyscallPath => "syscall_path",
            Tracer::CloseFloor => "close_floor",
            Tracer::Strace => "strace",
        }
    }
}

/// A tracer attached to a process (or system-wide, for bpftrace); stopped
/// by `finish`, which returns what it saw.
pub enum Attached {
    None,
    Forkwatch {
        agent: Agent,
        cpu0: f64,
        events0: f64,
        switches0: u64,
    },
    Bpftrace(Proc),
    Strace(Proc, std::path::PathBuf),
}

/// Writes the bpftrace script into the temp dir; its path.
pub fn peer_script(ctx: &Ctx) -> anyhow::Result<std::path::PathBuf> {
    let path = ctx.tmp.join("peer.bt");
    if !path.exists() {
        std::fs::write(&path, PEER_BT)?;
    }
    Ok(path)
}

/// Attaches `tracer` to `pid`. forkwatch gets `extra` arguments.
pub fn attach(ctx: &Ctx, tracer: Tracer, pid: u32, extra: &[String]) -> anyhow::Result<Attached> {
    Ok(match tracer {
        Tracer::None => Attached::None,
        Tracer::Forkwatch => {
            let mut args = vec!["--pid".to_string(), pid.to_string()];
            args.extend_from_slice(extra);
            let agent = Agent::start(&ctx.bin("forkwatch"), &args)?;
            let m = agent.scrape()?;
            Attached::Forkwatch {
                cpu0: agent.cpu_seconds(),
                events0: m.sum("forkwatch_events_total"),
                switches0: ctx_switches(agent.pid()).0,
                agent,
            }
        }
        Tracer::Bpftrace | Tracer::SyscallPath | Tracer::CloseFloor => {
            let mut cmd = Command::new("bpftrace");
            match tracer {
                Tracer::SyscallPath => cmd.args(["-e", SYSCALL_PATH_BT]),
                Tracer::CloseFloor => cmd.args(["-e", CLOSE_FLOOR_BT]),
                _ => cmd.arg(peer_script(ctx)?),
            };
            let mut p = Proc::spawn("bpftrace", &mut cmd, false)?;
            p.wait_line(
                Out::Stdout,
                0,
                Duration::from_secs(120),
                "bpftrace's BEGIN line",
                |l| (l.text == "attached").then_some(()),
            )?;
            Attached::Bpftrace(p)
        }
        Tracer::Strace => {
            let out = ctx.tmp.join(format!("strace-{pid}.out"));
            let mut p = Proc::spawn(
                "strace",
                Command::new("strace")
                    .args(["-f", "-o"])
                    .arg(&out)
                    .args(["-p", &pid.to_string()]),
                false,
            )?;
            p.wait_line(
                Out::Stderr,
                0,
                Duration::from_secs(30),
                "strace's attach message",
                |l| l.text.contains("attached").then_some(()),
            )?;
            // Let it settle on the process before the load starts.
            pause(Duration::from_millis(200))?;
            Attached::Strace(p, out)
        }
    })
}

impl Attached {
    /// Detaches; returns what the tracer reports (events seen, its CPU).
    pub fn finish(self) -> anyhow::Result<Value> {
        Ok(match self {
            Attached::None => Value::Null,
            Attached::Forkwatch {
                agent,
                cpu0,
                events0,
                switches0,
            } => {
                let m = agent.settle(Duration::from_secs(10))?;
                let cpu = agent.cpu_seconds() - cpu0;
                let wakeups = ctx_switches(agent.pid()).0.saturating_sub(switches0) as f64;
                let events = m.sum("forkwatch_events_total") - events0;
                let (rss, hwm) = agent.memory_kib();
                let lines = agent.findings(0);
                let opened: Vec<&serde_json::Value> = lines
                    .iter()
                    .filter(|(_, e, _)| e == "finding_opened")
                    .map(|(_, _, f)| f)
                    .collect();
                let findings: Vec<String> = opened
                    .iter()
                    .map(|f| f["kind"].as_str().unwrap_or("?").to_string())
                    .collect();
                // The first few in full, with how they resolved.
                let details: Vec<Value> = opened
                    .iter()
                    .take(10)
                    .map(|f| {
                        let resolved = lines
                            .iter()
                            .find(|(_, e, r)| e == "finding_resolved" && r["id"] == f["id"]);
                        json!({
                            "kind": f["kind"], "pid": f["pid"], "ppid": f["ppid"],
                            "comm": f["comm"], "since": f["since"], "summary": f["summary"],
                            "evidence": f["evidence"],
                            "resolution": resolved.map(|(_, _, r)| r["resolution"].clone()),
                            "open_seconds": resolved.map(|(_, _, r)| r["duration_seconds"].clone()),
                        })
                    })
                    .collect();
                let stop = agent.stop();
                json!({
                    "events": events,
                    "events_lost": m.sum("forkwatch_events_lost_total"),
                    "cpu_seconds": cpu,
                    "cpu_seconds_per_million_events": if events > 0.0 { cpu / events * 1e6 } else { f64::NAN },
                    "rss_kib": rss,
                    "hwm_kib": hwm,
                    "findings_opened": findings,
                    "findings": details,
                    "wakeups": wakeups,
                    "wakeups_per_event": if events > 0.0 { wakeups / events } else { f64::NAN },
                    "stop_seconds": stop.as_secs_f64(),
                })
            }
            Attached::Bpftrace(mut p) => {
                let cpu = super::proc::cpu_seconds(p.pid()).unwrap_or(0.0);
                p.stop_with(libc::SIGINT, Duration::from_secs(30));
                std::thread::sleep(Duration::from_millis(50));
                let events: u64 = p
                    .lines(Out::Stdout)
                    .iter()
                    .filter_map(|l| {
                        l.text
                            .strip_prefix("@events[")?
                            .rsplit_once("]: ")?
                            .1
                            .parse::<u64>()
                            .ok()
                    })
                    .sum();
                json!({"events_counted_system_wide": events, "cpu_seconds": cpu})
            }
            Attached::Strace(mut p, out) => {
                let cpu = super::proc::cpu_seconds(p.pid()).unwrap_or(0.0);
                p.stop_with(libc::SIGINT, Duration::from_secs(30));
                let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
                let lines = line_count(&out);
                let _ = std::fs::remove_file(&out);
                json!({"output_bytes": bytes, "syscall_lines": lines, "cpu_seconds": cpu})
            }
        })
    }
}

fn line_count(path: &Path) -> u64 {
    use std::io::Read as _;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    while let Ok(k) = f.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    n
}

/// A running forkserver and its address.
pub struct Server {
    pub proc: Proc,
    pub pid: u32,
    pub addr: String,
}

impl Server {
    pub fn start(ctx: &Ctx, args: &[&str]) -> anyhow::Result<Self> {
        let mut proc = Proc::spawn(
            "forkserver",
            Command::new(ctx.bin("forkserver"))
                .args(["--port", "0"])
                .args(args),
            false,
        )?;
        let ((addr, pid), _) = proc.wait_line(
            Out::Stdout,
            0,
            Duration::from_secs(10),
            "the forkserver startup line",
            |l| {
                let rest = l.text.strip_prefix("forkserver listening on ")?;
                let (addr, pid) = rest.split_once(" pid ")?;
                Some((addr.to_string(), pid.trim().parse::<u32>().ok()?))
            },
        )?;
        Ok(Self { proc, pid, addr })
    }

    /// The steady load client for `duration`; its JSON summary.
    pub fn steady(
        &self,
        ctx: &Ctx,
        duration: Duration,
        count: u64,
        concurrency: usize,
    ) -> anyhow::Result<Value> {
        let out = run_capture(
            "forkserver load steady",
            Command::new(ctx.bin("forkserver")).args([
                "load",
                "steady",
                "--addr",
                &self.addr,
                "--count",
                &count.to_string(),
                "--duration",
                &format!("{}ms", duration.as_millis()),
                "--concurrency",
                &concurrency.to_string(),
                "--json",
            ]),
            duration + Duration::from_secs(60),
        )?;
        serde_json::from_str(out.lines().last().unwrap_or(""))
            .with_context(|| format!("load client output {out:?}"))
    }

    pub fn stop(mut self) {
        self.proc.stop();
    }
}

/// One measured run: a fresh server, the tracer, a warm-up, the load.
fn run_one(ctx: &Ctx, tracer: Tracer, c: usize) -> anyhow::Result<(Value, Value)> {
    let server = Server::start(ctx, &["--model", "fork-per-conn", "--reap", "loop"])?;
    let attached = attach(ctx, tracer, server.pid, &[])?;
    server.steady(ctx, Duration::from_secs(1), 300, c)?;
    let load = server.steady(ctx, ctx.duration, 100_000_000, c);
    let seen = attached.finish();
    server.stop();
    Ok((load?, seen?))
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let tracers = [
        Tracer::None,
        Tracer::Forkwatch,
        Tracer::Bpftrace,
        Tracer::Strace,
    ];
    let c = concurrency(ctx);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); tracers.len()];
    for rep in 0..ctx.reps {
        for i in ctx.order(tracers.len(), rep) {
            let t = tracers[i];
            let (load, seen) = run_one(ctx, t, c).with_context(|| format!("{} run", t.key()))?;
            let rate = load["conn_per_s"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "bench: forkserver rep {}/{} {:<10} {rate:>8.1} conn/s (errors {})",
                rep + 1,
                ctx.reps,
                t.key(),
                load["errors"]
            );
            rates[i].push(rate);
            runs[i].push(json!({"rep": rep, "load": load, "tracer": seen}));
            pause(Duration::from_millis(500))?;
        }
    }

    let base = &rates[0];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`forkserver --model fork-per-conn --reap loop` (one fork and one exit per connection) \
         driven by `forkserver load steady --concurrency {c} --duration {:.0}s` (connect, echo a \
         line, close), a fresh server per run after a 300-connection warm-up. forkwatch runs \
         `forkwatch run --pid SERVER`; bpftrace runs [peer.bt](../../xtask/src/bench/peer.bt) \
         (the same {} tracepoints as forkwatch's probes, `@events[probe] = count()`, \
         system-wide); strace runs `strace -f -o FILE -p SERVER`.\n",
        ctx.duration.as_secs_f64(),
        PEER_BT.matches("tracepoint:").count(),
    );
    let _ = writeln!(
        md,
        "| variant | connections/s | ratio to baseline |\n|---|---|---|"
    );
    let mut variants = serde_json::Map::new();
    let mut goals = Vec::new();
    let fw_ratio = ratios(&rates[1], base);
    let bt_ratio = ratios(&rates[2], base);
    for (i, t) in tracers.iter().enumerate() {
        let r = ratios(&rates[i], base);
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            t.name(),
            cell(&rates[i], 0),
            if i == 0 { "1".into() } else { cell(&r, 3) }
        );
        variants.insert(
            t.key().into(),
            json!({
                "conn_per_s": summary_json(&rates[i]),
                "ratio": summary_json(&r),
                "runs": runs[i],
            }),
        );
    }
    let fw_runs = &runs[1];
    let events: Vec<f64> = fw_runs
        .iter()
        .filter_map(|r| r["tracer"]["events"].as_f64())
        .collect();
    let conns: Vec<f64> = fw_runs
        .iter()
        .filter_map(|r| r["load"]["connections"].as_f64())
        .collect();
    let per_conn: Vec<f64> = events.iter().zip(&conns).map(|(e, c)| e / c).collect();
    let cpu_per_m: Vec<f64> = fw_runs
        .iter()
        .filter_map(|r| r["tracer"]["cpu_seconds_per_million_events"].as_f64())
        .collect();
    let cpu_share: Vec<f64> = fw_runs
        .iter()
        .filter_map(|r| Some(r["tracer"]["cpu_seconds"].as_f64()? / ctx.duration.as_secs_f64()))
        .collect();
    let wakeups: Vec<f64> = fw_runs
        .iter()
        .filter_map(|r| Some(r["tracer"]["wakeups"].as_f64()? / r["load"]["connections"].as_f64()?))
        .collect();
    let lost: f64 = fw_runs
        .iter()
        .filter_map(|r| r["tracer"]["events_lost"].as_f64())
        .sum();
    let findings = findings_opened(fw_runs);
    let _ = writeln!(
        md,
        "\nforkwatch during these runs: {} events per connection, {} wake-ups (voluntary context \
         switches of its threads) per connection, {} CPU-seconds per million events, {} of one \
         CPU, {lost} events lost, findings opened: {} (none expected: the server is correct).",
        cell(&per_conn, 1),
        cell(&wakeups, 2),
        cell(&cpu_per_m, 2),
        cell(&cpu_share.iter().map(|x| x * 100.0).collect::<Vec<_>>(), 1) + " %",
        describe_findings(fw_runs)
    );
    let bt_events: Vec<f64> = runs[2]
        .iter()
        .filter_map(|r| r["tracer"]["events_counted_system_wide"].as_f64())
        .collect();
    let st_lines: Vec<f64> = runs[3]
        .iter()
        .filter_map(|r| r["tracer"]["syscall_lines"].as_f64())
        .collect();
    let _ = writeln!(
        md,
        "bpftrace counted {} events per run (system-wide, warm-up included); strace wrote {} \
         lines per run.",
        cell(&bt_events, 0),
        cell(&st_lines, 0)
    );
    let fw = median(&fw_ratio);
    let bt = median(&bt_ratio);
    goals.push(Goal {
        what: "forkserver fork-per-conn: forkwatch throughput vs untraced".into(),
        target: "≥ 0.97".into(),
        value: format!("{fw:.3} (min {:.3})", min_of(&fw_ratio)),
        met: fw.is_finite().then_some(fw >= 0.97),
    });
    goals.push(Goal {
        what: "forkserver fork-per-conn: forkwatch better than bpftrace".into(),
        target: "forkwatch ratio > bpftrace ratio".into(),
        value: format!("{fw:.3} vs {bt:.3}"),
        met: (fw.is_finite() && bt.is_finite()).then_some(fw > bt),
    });
    Ok(Section {
        id: "forkserver",
        title: "Overhead on a fork-per-connection server (forkserver)",
        markdown: md,
        json: json!({
            "workload": "forkserver --model fork-per-conn --reap loop; forkserver load steady",
            "concurrency": c,
            "duration_s": ctx.duration.as_secs_f64(),
            "variants": variants,
            "forkwatch_events_per_connection": summary_json(&per_conn),
            "forkwatch_wakeups_per_connection": summary_json(&wakeups),
            "forkwatch_cpu_seconds_per_million_events": summary_json(&cpu_per_m),
            "forkwatch_cpu_share": summary_json(&cpu_share),
            "forkwatch_events_lost": lost,
            "forkwatch_findings_opened": findings,
        }),
        goals,
        seconds: 0.0,
    })
}

/// The kinds of the findings forkwatch opened during `runs`, one per finding.
pub fn findings_opened(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .flat_map(|r| {
            r["tracer"]["findings_opened"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The findings forkwatch opened during `runs` ("none", or each with how it
/// resolved), for a workload on which none are expected.
pub fn describe_findings(runs: &[Value]) -> String {
    let all: Vec<&Value> = runs
        .iter()
        .flat_map(|r| r["tracer"]["findings"].as_array().into_iter().flatten())
        .collect();
    let total: usize = runs
        .iter()
        .map(|r| {
            r["tracer"]["findings_opened"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    if total == 0 {
        return "none".into();
    }
    let shown: Vec<String> = all
        .iter()
        .take(5)
        .map(|f| {
            format!(
                "`{}` on {} (pid {}){}",
                f["kind"].as_str().unwrap_or("?"),
                f["comm"].as_str().unwrap_or("?"),
                f["pid"],
                match (f["resolution"].as_str(), f["open_seconds"].as_f64()) {
                    (Some(r), Some(s)) => format!(", resolved {s:.3} s later: {r}"),
                    _ => ", still open when the run ended".into(),
                }
            )
        })
        .collect();
    format!(
        "{total}: {}{}",
        shown.join("; "),
        if total > shown.len() { "; ..." } else { "" }
    )
}

pub fn min_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}
