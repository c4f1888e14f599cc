//! Detection latency: from a child's exit to its `unreaped_child` finding
//! (minus `--zombie-after`), and from the end of the grace period to the
//! `leaked_listen_fd` finding. `latprobe` (tests/benchhelpers) makes one
//! zombie or one leaking child at a time and prints the CLOCK_MONOTONIC
//! time of the exit (read by the child just before `_exit`) or of the
//! fork (read by the parent just before `fork()`, so the leak latency is
//! an upper bound); the bench timestamps each finding line of the agent's
//! stdout as it reads it, on the same clock. The agent's own `since`
//! (wall clock) gives the part before the line is written.

use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx, Goal, Section,
    agent::{Agent, parse_finding_line},
    capacity::start_loops,
    pause,
    proc::{Out, Proc},
    stats::{Summary, cell, percentile, summary_json},
};

const THRESHOLD_MS: f64 = 100.0;

/// Waits for the agent's finding line `event` of `kind` for `pid`.
fn wait_finding(
    agent: &mut Agent,
    from: usize,
    event: &str,
    kind: &str,
    pid: u32,
) -> anyhow::Result<(u64, Value)> {
    let (r, _) = agent.proc.wait_line(
        Out::Stdout,
        from,
        Duration::from_secs(10),
        &format!("{event} {kind} for pid {pid}"),
        |l| {
            let (at, e, f) = parse_finding_line(l)?;
            (e == event && f["kind"] == kind && f["pid"].as_u64() == Some(u64::from(pid)))
                .then_some((at, f))
        },
    )?;
    Ok(r)
}

/// Sends `cmd` to the probe and waits for the answer starting with `word`.
fn ask(probe: &mut Proc, cmd: &str, word: &str) -> anyhow::Result<Vec<u64>> {
    let from = probe.line_count(Out::Stdout);
    probe.send(cmd)?;
    let (v, _) = probe.wait_line(Out::Stdout, from, Duration::from_secs(10), word, |l| {
        let rest = l.text.strip_prefix(word)?.strip_prefix(' ')?;
        rest.split(' ').map(|w| w.parse().ok()).collect()
    })?;
    Ok(v)
}

fn realtime_of(since: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(since).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as f64)
}

struct Samples {
    /// Bench-observed latency (ms): line read time minus exit/grace end.
    seen: Vec<f64>,
    /// Agent-stamped (ms): the finding's `since` minus exit/grace end.
    stamped: Vec<f64>,
}

/// Forks per second of the tracked fork loop in the "under load" variant.
const LOAD_RATE: u32 = 2000;

fn one_rep(ctx: &Ctx, n: usize, load: bool) -> anyhow::Result<(Samples, Samples)> {
    // Under load: the same agent also tracks a fork loop.
    let mut forkloop = if load {
        let args = ["--rate", &LOAD_RATE.to_string(), "--duration", "600"].map(String::from);
        start_loops(ctx, 1, &args)?.pop()
    } else {
        None
    };
    let mut probe = Proc::spawn(
        "latprobe",
        Command::new(ctx.bin("latprobe")).arg("--wait-go"),
        true,
    )?;
    probe.wait_line(
        Out::Stdout,
        0,
        Duration::from_secs(10),
        "latprobe ready",
        |l| l.text.strip_prefix("ready ").map(|_| ()),
    )?;
    let mut args = vec![
        "--pid".to_string(),
        probe.pid().to_string(),
        "--zombie-after".into(),
        format!("{THRESHOLD_MS}ms"),
        "--listen-grace".into(),
        format!("{THRESHOLD_MS}ms"),
    ];
    if let Some(f) = &forkloop {
        args.extend(["--pid".into(), f.pid().to_string()]);
    }
    let mut agent = Agent::start(&ctx.bin("forkwatch"), &args)?;
    if let Some(f) = &mut forkloop {
        f.send("go")?;
    }
    probe.send("go")?;
    let mut zombie = Samples {
        seen: Vec::new(),
        stamped: Vec::new(),
    };
    let mut leak = Samples {
        seen: Vec::new(),
        stamped: Vec::new(),
    };
    for i in 0..n {
        // A zombie: exit at a known time, finding expected 100 ms later.
        let from = agent.proc.line_count(Out::Stdout);
        let v = ask(&mut probe, "zombie", "exited")?;
        let (pid, mono, real) = (v[0] as u32, v[1], v[2]);
        let (at, f) = wait_finding(&mut agent, from, "finding_opened", "unreaped_child", pid)?;
        zombie
            .seen
            .push((at as f64 - mono as f64) / 1e6 - THRESHOLD_MS);
        if let Some(s) = f["since"].as_str().and_then(realtime_of) {
            zombie.stamped.push((s - real as f64) / 1e6 - THRESHOLD_MS);
        }
        let from = agent.proc.line_count(Out::Stdout);
        ask(&mut probe, &format!("reap {pid}"), "reaped")?;
        wait_finding(&mut agent, from, "finding_resolved", "unreaped_child", pid)?;

        // A leak: fork at a known time, finding expected after the grace.
        let from = agent.proc.line_count(Out::Stdout);
        let v = ask(&mut probe, "leak", "forked")?;
        let (pid, mono, real) = (v[0] as u32, v[1], v[2]);
        let (at, f) = wait_finding(&mut agent, from, "finding_opened", "leaked_listen_fd", pid)?;
        leak.seen
            .push((at as f64 - mono as f64) / 1e6 - THRESHOLD_MS);
        if let Some(s) = f["since"].as_str().and_then(realtime_of) {
            leak.stamped.push((s - real as f64) / 1e6 - THRESHOLD_MS);
        }
        let from = agent.proc.line_count(Out::Stdout);
        ask(&mut probe, &format!("kill {pid}"), "killed")?;
        wait_finding(
            &mut agent,
            from,
            "finding_resolved",
            "leaked_listen_fd",
            pid,
        )?;
        // Spread the samples over the agent's timer phases.
        pause(Duration::from_millis(10 + (i as u64 * 7) % 23))?;
    }
    probe.send("quit")?;
    probe
        .wait_exit(Duration::from_secs(10))
        .context("latprobe quit")?;
    if let Some(mut f) = forkloop {
        f.stop();
    }
    agent.stop();
    if zombie.seen.len() != n || leak.seen.len() != n {
        bail!("missing samples");
    }
    Ok((zombie, leak))
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let n = if ctx.quick { 10 } else { 100 };
    let variants = [
        ("idle", "agent otherwise idle", false),
        (
            "loaded",
            "agent also tracking a fork loop at 2,000 forks/s",
            true,
        ),
    ];
    let mut reps: Vec<Vec<(Samples, Samples)>> = vec![Vec::new(), Vec::new()];
    for rep in 0..ctx.reps {
        for i in ctx.order(variants.len(), rep) {
            let r = one_rep(ctx, n, variants[i].2)?;
            eprintln!(
                "bench: latency rep {}/{} {:<6}: zombie p50 {:.1} p99 {:.1} ms, leak p50 {:.1} p99 {:.1} ms",
                rep + 1,
                ctx.reps,
                variants[i].0,
                percentile(&r.0.seen, 50.0).unwrap_or(f64::NAN),
                percentile(&r.0.seen, 99.0).unwrap_or(f64::NAN),
                percentile(&r.1.seen, 50.0).unwrap_or(f64::NAN),
                percentile(&r.1.seen, 99.0).unwrap_or(f64::NAN),
            );
            reps[i].push(r);
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`forkwatch run --pid LATPROBE --zombie-after 100ms --listen-grace 100ms`; {n} zombies and \
         {n} leaking children per repetition, one at a time, alternating, each resolved (reaped, \
         killed) before the next; idle, and with the same agent also tracking a fork loop at \
         {LOAD_RATE} forks/s. \"Seen\" is when the bench read the finding's JSON line on the \
         agent's stdout; \"stamped\" is the finding's own `since` time. Both minus the exit time \
         (for leaks: the time just before fork(), so an upper bound) and the 100 ms threshold; in \
         ms. Per-repetition percentiles as min / **median** / max over repetitions, and over all \
         samples pooled.\n"
    );
    let _ = writeln!(
        md,
        "| agent | measure | p50 per rep | p99 per rep | pooled p50 | pooled p99 | pooled max |\n|---|---|---|---|---|---|---|"
    );
    let mut j = serde_json::Map::new();
    let mut goals = Vec::new();
    type Pick = fn(&(Samples, Samples)) -> Vec<f64>;
    let measures: [(&str, &str, Pick); 4] = [
        ("exit → unreaped_child, seen", "zombie_seen_ms", |r| {
            r.0.seen.clone()
        }),
        (
            "exit → unreaped_child, stamped",
            "zombie_stamped_ms",
            |r| r.0.stamped.clone(),
        ),
        (
            "grace end → leaked_listen_fd, seen",
            "leak_seen_ms",
            |r| r.1.seen.clone(),
        ),
        (
            "grace end → leaked_listen_fd, stamped",
            "leak_stamped_ms",
            |r| r.1.stamped.clone(),
        ),
    ];
    for (v, (vkey, vlabel, _)) in variants.iter().enumerate() {
        let mut vj = serde_json::Map::new();
        for (label, key, pick) in measures {
            let per: Vec<Vec<f64>> = reps[v].iter().map(pick).collect();
            let p50s: Vec<f64> = per.iter().filter_map(|x| percentile(x, 50.0)).collect();
            let p99s: Vec<f64> = per.iter().filter_map(|x| percentile(x, 99.0)).collect();
            let pooled: Vec<f64> = per.concat();
            let (p50, p99) = (
                percentile(&pooled, 50.0).unwrap_or(f64::NAN),
                percentile(&pooled, 99.0).unwrap_or(f64::NAN),
            );
            let max = Summary::of(&pooled).map_or(f64::NAN, |s| s.max);
            let _ = writeln!(
                md,
                "| {vkey} | {label} | {} | {} | {p50:.1} | {p99:.1} | {max:.1} |",
                cell(&p50s, 1),
                cell(&p99s, 1)
            );
            vj.insert(
                key.into(),
                json!({
                    "p50_per_rep": summary_json(&p50s),
                    "p99_per_rep": summary_json(&p99s),
                    "pooled": {"n": pooled.len(), "p50": p50, "p99": p99, "max": max,
                               "min": Summary::of(&pooled).map_or(f64::NAN, |s| s.min)},
                    "samples": per,
                }),
            );
            if key.ends_with("seen_ms") {
                goals.push(Goal {
                    what: format!("detection latency p99 ({vlabel}): {label}"),
                    target: "< 50 ms".into(),
                    value: format!("{p99:.1} ms (p50 {p50:.1} ms)"),
                    met: p99.is_finite().then_some(p99 < 50.0),
                });
            }
        }
        j.insert((*vkey).into(), Value::Object(vj));
    }
    Ok(Section {
        id: "latency",
        title: "Detection latency",
        markdown: md,
        json: json!({
            "threshold_ms": THRESHOLD_MS,
            "samples_per_rep": n,
            "load_forks_per_s": LOAD_RATE,
            "results": j,
        }),
        goals,
        seconds: 0.0,
    })
}
