//! The agent's own cost: memory idle and with 10k and 100k tracked
//! processes (`sleepers` in tests/benchhelpers: N sleeping children of
//! one process), learned from the event stream (agent first, then the
//! processes) and from /proc at start-up (agent restarted with them all
//! there); what happens at `--max-processes`; CPU per event.
//!
//! 100k processes need `kernel.pid_max` above 100k: raised for the run
//! when lower, and restored.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde_json::{Value, json};

use super::{
    Ctx, Goal, Section,
    agent::{Agent, Metrics},
    check_stop, pause,
    proc::{Out, Proc, kib_field},
    stats::{cell, summary_json},
};

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// Restores kernel.pid_max when dropped.
struct PidMax(Option<String>);

impl PidMax {
    /// Raises pid_max to at least `need` (a power of two), remembering the old value.
    fn ensure(need: u64) -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(PID_MAX)?.trim().to_string();
        let cur: u64 = old.parse().unwrap_or(0);
        if cur >= need {
            return Ok(Self(None));
        }
        let new = need.next_power_of_two().min(4_194_304);
        eprintln!("bench: raising kernel.pid_max from {cur} to {new} for this run");
        std::fs::write(PID_MAX, new.to_string())?;
        Ok(Self(Some(old)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            eprintln!("bench: restoring kernel.pid_max to {old}");
            if let Err(e) = std::fs::write(PID_MAX, &old) {
                eprintln!("bench: cannot restore kernel.pid_max to {old}: {e}");
            }
        }
    }
}

fn meminfo_kib(field: &str) -> u64 {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        field,
    )
    .unwrap_or(0)
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Processes on the machine now (pid directories in /proc).
fn process_count() -> u64 {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// Why N processes cannot be started here, if they cannot.
fn cannot_host(n: u64) -> Option<String> {
    let threads_max = read_u64("/proc/sys/kernel/threads-max");
    let have = process_count();
    if threads_max < n + have + 5_000 {
        return Some(format!(
            "kernel.threads-max is {threads_max}, {have} processes already run: no room for {n} more"
        ));
    }
    // About 40 KiB of kernel memory per sleeping child, plus 1 GiB of slack.
    let need_kib = n * 40 + (1 << 20);
    let avail = meminfo_kib("MemAvailable");
    if avail < need_kib {
        return Some(format!(
            "{} MiB available, {} MiB needed for {n} processes",
            avail / 1024,
            need_kib / 1024
        ));
    }
    None
}

fn start_sleepers(ctx: &Ctx, n: u64) -> anyhow::Result<Proc> {
    let mut p = Proc::spawn(
        "sleepers",
        Command::new(ctx.bin("sleepers")).args([
            "--wait-go",
            "--count",
            &n.to_string(),
            "--max-life",
            "900",
        ]),
        true,
    )?;
    p.wait_line(
        Out::Stdout,
        0,
        Duration::from_secs(10),
        "sleepers ready",
        |l| l.text.strip_prefix("ready ").map(|_| ()),
    )?;
    Ok(p)
}

/// Waits for `spawned N FAILED SECS`; returns (spawned, seconds).
fn wait_spawned(p: &mut Proc) -> anyhow::Result<(u64, f64)> {
    let (v, _) = p.wait_line(
        Out::Stdout,
        0,
        Duration::from_secs(600),
        "sleepers spawned",
        |l| {
            let mut w = l.text.strip_prefix("spawned ")?.split(' ');
            let n: u64 = w.next()?.parse().ok()?;
            let _failed: u64 = w.next()?.parse().ok()?;
            Some((n, w.next()?.parse::<f64>().ok()?))
        },
    )?;
    Ok(v)
}

/// What polling the agent found.
struct Polled {
    /// The last metrics it served (empty if none).
    metrics: Metrics,
    /// It tracked `want` processes and its event count stood still.
    reached: bool,
    /// Scrapes that failed (timed out: the agent was too busy to answer).
    failed_scrapes: u32,
}

/// Polls until the agent tracks `want` processes and its event count is
/// still, bounded by `timeout`. A busy agent may not answer: counted.
fn wait_tracked(agent: &Agent, want: f64, timeout: Duration) -> anyhow::Result<Polled> {
    let t = Instant::now();
    let mut last_events = -1.0;
    let mut polled = Polled {
        metrics: Metrics::default(),
        reached: false,
        failed_scrapes: 0,
    };
    loop {
        check_stop()?;
        match agent.scrape() {
            Ok(m) => {
                let tracked = m.sum("forkwatch_tracked_processes");
                let events = m.sum("forkwatch_events_total");
                polled.metrics = m;
                if tracked == want && events == last_events {
                    polled.reached = true;
                    return Ok(polled);
                }
                last_events = events;
            }
            Err(e) => {
                polled.failed_scrapes += 1;
                eprintln!("bench: forkwatch did not answer /metrics: {e:#}");
            }
        }
        if t.elapsed() >= timeout {
            return Ok(polled);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

/// N sleepers: the agent learns them from events, then a second agent
/// from /proc, then they all exit under the second one.
fn tracked_run(ctx: &Ctx, n: u64, cap: Option<u64>) -> anyhow::Result<Value> {
    let mut sleepers = start_sleepers(ctx, n)?;
    let mut args = vec!["--pid".to_string(), sleepers.pid().to_string()];
    if let Some(c) = cap {
        args.extend(["--max-processes".into(), c.to_string()]);
    }
    let agent = Agent::start(&ctx.bin("forkwatch"), &args)?;
    let (rss_idle, _) = agent.memory_kib();
    let cpu0 = agent.cpu_seconds();
    let t0 = Instant::now();
    sleepers.send("go")?;
    let (spawned, spawn_s) = wait_spawned(&mut sleepers)?;
    let want = cap.map_or(spawned as f64 + 1.0, |c| {
        (c as f64).min(spawned as f64 + 1.0)
    });
    let polled = wait_tracked(&agent, want, Duration::from_secs(120))?;
    let (m, got) = (polled.metrics, polled.reached);
    let caught_up_s = t0.elapsed().as_secs_f64();
    let cpu = agent.cpu_seconds() - cpu0;
    let (rss, hwm) = agent.memory_kib();
    let events = m.sum("forkwatch_events_total");
    let limit_lines: Vec<String> = agent
        .proc
        .lines(Out::Stderr)
        .iter()
        .filter(|l| l.text.contains("limit") || l.text.contains("max-processes"))
        .take(3)
        .map(|l| l.text.clone())
        .collect();
    let log_lines = agent.proc.line_count(Out::Stderr);
    let stop_s = agent.stop().as_secs_f64();
    let stream = json!({
        "spawned": spawned,
        "spawn_seconds": spawn_s,
        "tracked": m.sum("forkwatch_tracked_processes"),
        "tracked_expected": want,
        "reached": got,
        "failed_scrapes": polled.failed_scrapes,
        "caught_up_seconds": caught_up_s,
        "events": events,
        "events_lost": m.sum("forkwatch_events_lost_total"),
        "limit_processes": m.get("forkwatch_limit_reached_total", &["limit=\"processes\""]),
        "limit_kernel_processes": m.get("forkwatch_limit_reached_total", &["limit=\"kernel_processes\""]),
        "reconciliations_events_lost": m.get("forkwatch_reconciliations_total", &["reason=\"events_lost\""]),
        "rss_idle_kib": rss_idle,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_events": if events > 0.0 { cpu / events * 1e6 } else { f64::NAN },
        "agent_log_about_limits": limit_lines,
        "agent_log_lines": log_lines,
        "stop_seconds": stop_s,
    });

    // A restarted agent: everything from /proc at start-up.
    let agent = Agent::start(&ctx.bin("forkwatch"), &args)?;
    let startup_s = agent.startup.as_secs_f64();
    let polled = wait_tracked(&agent, want, Duration::from_secs(60))?;
    let m = polled.metrics;
    let (rss, hwm) = agent.memory_kib();
    let discovery = json!({
        "startup_seconds": startup_s,
        "tracked": m.sum("forkwatch_tracked_processes"),
        "failed_scrapes": polled.failed_scrapes,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "cpu_seconds": agent.cpu_seconds(),
        "agent_log_lines": agent.proc.line_count(Out::Stderr),
    });

    // All of them exit (killed and reaped by the sleepers' parent).
    let cpu0 = agent.cpu_seconds();
    let events0 = m.sum("forkwatch_events_total");
    let t0 = Instant::now();
    sleepers.send("done")?;
    sleepers.wait_line(
        Out::Stdout,
        1,
        Duration::from_secs(300),
        "sleepers reaped",
        |l| l.text.strip_prefix("reaped ").map(|_| ()),
    )?;
    let _ = sleepers.wait_exit(Duration::from_secs(30));
    // Bounded: an agent that cannot keep up is reported as such, then
    // stopped (SIGKILL if SIGTERM does not do it).
    let budget = Duration::from_secs(if ctx.quick { 15 } else { 60 });
    let polled = wait_tracked(&agent, 0.0, budget)?;
    let m = polled.metrics;
    let (rss, hwm) = agent.memory_kib();
    let events = m.sum("forkwatch_events_total") - events0;
    let cpu = agent.cpu_seconds() - cpu0;
    let seconds = t0.elapsed().as_secs_f64();
    let stop_s = agent.stop().as_secs_f64();
    let exit = json!({
        "seconds": seconds,
        "budget_seconds": budget.as_secs_f64(),
        // Unknown when the agent never answered.
        "tracked_after": (!m.is_empty()).then(|| m.sum("forkwatch_tracked_processes")),
        "reached_zero": polled.reached,
        "failed_scrapes": polled.failed_scrapes,
        "events": (!m.is_empty()).then_some(events),
        "events_lost": (!m.is_empty()).then(|| m.sum("forkwatch_events_lost_total")),
        "rss_kib_after": rss,
        "hwm_kib": hwm,
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_events": if events > 0.0 { cpu / events * 1e6 } else { f64::NAN },
        "stop_seconds": stop_s,
    });
    eprintln!(
        "bench: memory {n} processes{}: RSS {:.1} MiB from events ({}), {:.1} MiB from /proc, {:.1} MiB after they exit; lost {} / {}",
        cap.map_or(String::new(), |c| format!(" (--max-processes {c})")),
        kib_to_mib(stream["rss_kib"].as_u64().unwrap_or(0)),
        if stream["reached"] == true {
            "all tracked"
        } else {
            "NOT all tracked"
        },
        kib_to_mib(discovery["rss_kib"].as_u64().unwrap_or(0)),
        kib_to_mib(exit["rss_kib_after"].as_u64().unwrap_or(0)),
        stream["events_lost"],
        exit["events_lost"],
    );
    Ok(
        json!({"processes": n, "max_processes": cap, "from_events": stream, "from_proc": discovery, "exit": exit}),
    )
}

fn idle(ctx: &Ctx) -> anyhow::Result<Value> {
    let decoy = Proc::spawn("sleep", Command::new("sleep").arg("3600"), false)?;
    let agent = Agent::start(
        &ctx.bin("forkwatch"),
        &["--pid".into(), decoy.pid().to_string()],
    )?;
    pause(Duration::from_secs(1))?;
    let cpu0 = agent.cpu_seconds();
    let secs = if ctx.quick { 2.0 } else { 10.0 };
    pause(Duration::from_secs_f64(secs))?;
    let cpu = agent.cpu_seconds() - cpu0;
    let (rss, hwm) = agent.memory_kib();
    let startup = agent.startup.as_secs_f64();
    let stop = agent.stop();
    drop(decoy);
    Ok(
        json!({"rss_kib": rss, "hwm_kib": hwm, "idle_cpu_share": cpu / secs, "startup_seconds": startup, "stop_seconds": stop.as_secs_f64()}),
    )
}

fn mib(runs: &[Value], path: &[&str]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let mut v = r;
            for p in path {
                v = &v[*p];
            }
            v.as_f64().map(|k| k / 1024.0)
        })
        .collect()
}

fn num(runs: &[Value], path: &[&str]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let mut v = r;
            for p in path {
                v = &v[*p];
            }
            v.as_f64()
        })
        .collect()
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let sizes: Vec<u64> = if ctx.quick {
        vec![1_000, 3_000]
    } else {
        vec![10_000, 100_000]
    };
    let cap: u64 = if ctx.quick { 500 } else { 5_000 };
    let mut skipped = Vec::new();
    let mut plan: Vec<(u64, Option<u64>)> = Vec::new();
    for &n in &sizes {
        match cannot_host(n) {
            Some(why) => skipped.push(format!("{n} processes: {why}")),
            None => plan.push((n, None)),
        }
    }
    plan.push((cap * 2, Some(cap)));
    let biggest = plan.iter().map(|p| p.0).max().unwrap_or(0);
    let _pid_max = PidMax::ensure(process_count() + biggest + 32_768)?;
    if read_u64(PID_MAX) < biggest + process_count() {
        bail!("kernel.pid_max is too low for {biggest} processes and could not be raised");
    }

    let mut idle_runs = Vec::new();
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); plan.len()];
    for rep in 0..ctx.reps {
        idle_runs.push(idle(ctx)?);
        for i in ctx.order(plan.len(), rep) {
            let (n, c) = plan[i];
            runs[i].push(tracked_run(ctx, n, c)?);
            pause(Duration::from_secs(1))?;
        }
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "`sleepers --count N` (tests/benchhelpers): one process with N sleeping children \
         (separate processes sharing its memory). \"From events\": forkwatch runs `--pid` the \
         parent first, then the children are started and it learns them from the ring buffer. \
         \"From /proc\": a second forkwatch started with them all there (a restart). Then they \
         are all killed and reaped with the second agent watching. RSS is VmRSS in MiB.\n"
    );
    let idle_rss = mib(&idle_runs, &["rss_kib"]);
    let _ = writeln!(
        md,
        "Idle (watching one sleeping process): RSS {} MiB, peak {} MiB, CPU {} % of one CPU, \
         start-up {} s, stop {} s.\n",
        cell(&idle_rss, 1),
        cell(&mib(&idle_runs, &["hwm_kib"]), 1),
        cell(
            &num(&idle_runs, &["idle_cpu_share"])
                .iter()
                .map(|x| x * 100.0)
                .collect::<Vec<_>>(),
            2
        ),
        cell(&num(&idle_runs, &["startup_seconds"]), 2),
        cell(&num(&idle_runs, &["stop_seconds"]), 2),
    );
    let _ = writeln!(
        md,
        "| processes | spawned in (s) | tracked (from events) | caught up after (s) | events lost | RSS from events | peak RSS | CPU s per M events | RSS from /proc | start-up from /proc (s) | all exit: agent caught up after (s) | its CPU s | RSS after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut goals = Vec::new();
    for (i, (n, c)) in plan.iter().enumerate() {
        let r = &runs[i];
        let label = match c {
            Some(c) => format!("{n} with `--max-processes {c}`"),
            None => n.to_string(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&num(r, &["from_events", "spawn_seconds"]), 2),
            cell(&num(r, &["from_events", "tracked"]), 0),
            cell(&num(r, &["from_events", "caught_up_seconds"]), 2),
            cell(&num(r, &["from_events", "events_lost"]), 0),
            cell(&mib(r, &["from_events", "rss_kib"]), 1),
            cell(&mib(r, &["from_events", "hwm_kib"]), 1),
            cell(
                &num(r, &["from_events", "cpu_seconds_per_million_events"]),
                2
            ),
            cell(&mib(r, &["from_proc", "rss_kib"]), 1),
            cell(&num(r, &["from_proc", "startup_seconds"]), 2),
            r.iter()
                .map(|x| {
                    let e = &x["exit"];
                    if e["reached_zero"] == true {
                        format!("{:.1}", e["seconds"].as_f64().unwrap_or(f64::NAN))
                    } else {
                        format!(
                            "**not within {:.0}** ({} still tracked, {} scrapes unanswered)",
                            e["budget_seconds"].as_f64().unwrap_or(0.0),
                            e["tracked_after"]
                                .as_f64()
                                .map_or("? (no answer)".to_string(), |t| format!("{t:.0}")),
                            e["failed_scrapes"]
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            cell(&num(r, &["exit", "cpu_seconds"]), 1),
            cell(&mib(r, &["exit", "rss_kib_after"]), 1),
        );
        if c.is_none() {
            let rss = mib(r, &["from_events", "rss_kib"]);
            let lost: f64 = num(r, &["from_events", "events_lost"]).iter().sum();
            goals.push(Goal {
                what: format!("agent RSS with {n} tracked processes"),
                target: "(reported)".into(),
                value: format!(
                    "{} MiB (idle {} MiB){}",
                    cell(&rss, 1).replace("**", ""),
                    cell(&idle_rss, 1).replace("**", ""),
                    if lost > 0.0 {
                        format!(", {lost} events lost while they started")
                    } else {
                        String::new()
                    }
                ),
                met: None,
            });
        }
    }
    let capped = runs.last().cloned().unwrap_or_default();
    let _ = writeln!(
        md,
        "\nAt the cap (`--max-processes {cap}`, {} processes): tracked {}, \
         `forkwatch_limit_reached_total{{limit=\"processes\"}}` {}, `{{limit=\"kernel_processes\"}}` {}; \
         what the agent logged about it: {}.",
        cap * 2,
        cell(&num(&capped, &["from_events", "tracked"]), 0),
        cell(&num(&capped, &["from_events", "limit_processes"]), 0),
        cell(&num(&capped, &["from_events", "limit_kernel_processes"]), 0),
        capped
            .first()
            .and_then(|r| r["from_events"]["agent_log_about_limits"]
                .as_array()
                .cloned())
            .filter(|v| !v.is_empty())
            .map_or("nothing".to_string(), |v| v
                .iter()
                .map(|l| format!("`{}`", l.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" ")),
    );
    let _ = writeln!(
        md,
        "\nAt the cap, restarted (from /proc), then all {} processes exit: \
         `forkwatch_tracked_processes` back to 0 after {} s (compare the uncapped rows above; the periodic \
         /proc reconciliation, `--reconcile-interval`, runs every 60 s).",
        cap * 2,
        cell(&num(&capped, &["exit", "seconds"]), 1),
    );
    let _ = writeln!(
        md,
        "\nLines the agent logged (stderr) at the cap: {} learning them from events, {} starting \
         with them there (from /proc).",
        cell(&num(&capped, &["from_events", "agent_log_lines"]), 0),
        cell(&num(&capped, &["from_proc", "agent_log_lines"]), 0),
    );
    for s in &skipped {
        let _ = writeln!(md, "\nNot measured: {s}.");
    }
    Ok(Section {
        id: "memory",
        title: "Agent cost: memory and CPU per event",
        markdown: md,
        json: json!({
            "idle": {"rss_mib": summary_json(&idle_rss), "runs": idle_runs},
            "runs": plan.iter().zip(&runs).map(|((n, c), r)| json!({"processes": n, "max_processes": c, "runs": r})).collect::<Vec<_>>(),
            "skipped": skipped,
        }),
        goals,
        seconds: 0.0,
    })
}
