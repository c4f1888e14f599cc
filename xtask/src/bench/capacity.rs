//! Capacity: the machine's raw fork+exit+wait rate, then the agent
//! tracking fork loops at fractions of it and flat out: events lost (if
//! any), whether its picture is right afterwards (zombies and tracked
//! processes against /proc), the ring-buffer fill, its CPU per event; and
//! with smaller ring buffers, what a loss looks like (counted, reconciled,
//! the zombie gauge back to the truth) and the size needed for none.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    Ctx, Goal, Section,
    agent::{Agent, Metrics},
    check_stop, pause,
    proc::{Out, Proc},
    stats::{cell, median, summary_json},
};

/// Zombies each fork loop leaves at the end (the truth to compare with).
const ZOMBIES: u32 = 5;

fn loop_secs(ctx: &Ctx) -> f64 {
    if ctx.quick { 1.0 } else { 5.0 }
}

/// Starts `n` fork loops waiting for "go".
pub fn start_loops(ctx: &Ctx, n: usize, args: &[String]) -> anyhow::Result<Vec<Proc>> {
    let mut v = Vec::new();
    for _ in 0..n {
        let mut p = Proc::spawn(
            "forkloop",
            Command::new(ctx.bin("forkloop"))
                .arg("--wait-go")
                .args(args),
            true,
        )?;
        p.wait_line(
            Out::Stdout,
            0,
            Duration::from_secs(10),
            "forkloop ready",
            |l| l.text.strip_prefix("ready ").map(|_| ()),
        )?;
        v.push(p);
    }
    Ok(v)
}

/// Sends go to every loop, waits for their results: (total forks,
/// longest elapsed, zombie pids).
fn go_and_wait(loops: &mut [Proc], secs: f64) -> anyhow::Result<(f64, f64, Vec<u32>)> {
    for p in loops.iter_mut() {
        p.send("go")?;
    }
    let (mut forks, mut elapsed, mut zombies) = (0.0, 0.0f64, Vec::new());
    for p in loops.iter_mut() {
        let (v, _) = p.wait_line(
            Out::Stdout,
            1,
            Duration::from_secs_f64(secs + 60.0),
            "forkloop result",
            |l| serde_json::from_str::<Value>(&l.text).ok(),
        )?;
        forks += v["forks"].as_f64().unwrap_or(0.0);
        elapsed = elapsed.max(v["elapsed_s"].as_f64().unwrap_or(0.0));
        zombies.extend(
            v["zombies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|z| z.as_u64().map(|z| z as u32)),
        );
    }
    Ok((forks, elapsed, zombies))
}

/// The machine's rate: `n` untracked loops at once, no agent.
fn raw_rate(ctx: &Ctx, n: usize) -> anyhow::Result<f64> {
    let secs = loop_secs(ctx);
    let mut loops = start_loops(ctx, n, &["--duration".into(), secs.to_string()])?;
    let (forks, elapsed, _) = go_and_wait(&mut loops, secs)?;
    Ok(forks / elapsed.max(1e-9))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.get(s.rfind(')')? + 2..).map(|r| r.starts_with('Z')))
        .unwrap_or(false)
}

/// One tracked run: `n` loops at `rate` forks/s in all (None: flat out),
/// forkwatch with `ring` (None: its default).
/// With `freeze`, the agent is stopped (SIGSTOP) while the loops run and
/// continued after: an agent starved of CPU.
fn tracked(
    ctx: &Ctx,
    n: usize,
    rate: Option<f64>,
    ring: Option<&str>,
    freeze: bool,
) -> anyhow::Result<Value> {
    let secs = loop_secs(ctx);
    let mut args = vec![
        "--duration".to_string(),
        secs.to_string(),
        "--zombies".into(),
        ZOMBIES.to_string(),
    ];
    if let Some(r) = rate {
        args.extend(["--rate".into(), format!("{:.1}", r / n as f64)]);
    }
    let mut loops = start_loops(ctx, n, &args)?;
    let mut agent_args = vec!["--zombie-after".to_string(), "1s".into()];
    for p in &loops {
        agent_args.extend(["--pid".into(), p.pid().to_string()]);
    }
    if let Some(r) = ring {
        agent_args.extend(["--ring-buffer-size".into(), r.into()]);
    }
    let agent = Agent::start(&ctx.bin("forkwatch"), &agent_args)?;
    let cpu0 = agent.cpu_seconds();
    if freeze {
        // SAFETY: signalling the agent we started, by pid.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    }
    let ran = go_and_wait(&mut loops, secs);
    if freeze {
        // SAFETY: as above.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    }
    let (forks, elapsed, zombies) = ran?;
    let loops_done = Instant::now();
    // Each scrape carries the highest ring fill since the previous one:
    // keep the highest over the drain.
    let mut ring_max: f64 = 0.0;
    let mut m = agent.scrape()?;
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ring_max = ring_max.max(m.sum("forkwatch_ring_buffer_used_ratio"));
        std::thread::sleep(Duration::from_millis(300));
        check_stop()?;
        let next = agent.scrape()?;
        let same = next.sum("forkwatch_events_total") == m.sum("forkwatch_events_total");
        m = next;
        if same || Instant::now() >= drain_deadline {
            ring_max = ring_max.max(m.sum("forkwatch_ring_buffer_used_ratio"));
            break;
        }
    }
    let drained_s = loops_done.elapsed().as_secs_f64();
    let cpu = agent.cpu_seconds() - cpu0;

    // The truth: every loop is alive, its zombies are zombies.
    let true_zombies = zombies.iter().filter(|&&z| is_zombie(z)).count() as f64;
    let true_tracked = n as f64 + zombies.len() as f64;
    let gauges = |m: &Metrics| {
        (
            m.sum("forkwatch_zombies"),
            m.sum("forkwatch_tracked_processes"),
        )
    };
    let (z0, t0) = gauges(&m);
    let right_at_once = z0 == true_zombies && t0 == true_tracked;
    // When wrong (after a loss), wait for the reconciliation to fix it.
    let mut converged_s = if right_at_once { Some(0.0) } else { None };
    let mut last = m.clone();
    if !right_at_once {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            check_stop()?;
            std::thread::sleep(Duration::from_millis(100));
            last = agent.scrape()?;
            let (z, tr) = gauges(&last);
            if z == true_zombies && tr == true_tracked {
                converged_s = Some(t.elapsed().as_secs_f64() + drained_s);
                break;
            }
        }
    }
    let events = m.sum("forkwatch_events_total");
    let lost = last.sum("forkwatch_events_lost_total");
    let (rss, hwm) = agent.memory_kib();
    let result = json!({
        "loops": n,
        "target_rate": rate,
        "ring_buffer": ring.unwrap_or("8MiB (default)"),
        "agent_frozen": freeze,
        "forks": forks,
        "rate": forks / elapsed.max(1e-9),
        "events": events,
        "events_per_fork": events / (forks + zombies.len() as f64).max(1.0),
        "events_lost": lost,
        "ring_buffer_used_ratio_max": ring_max,
        "reconciliations_events_lost": last.get("forkwatch_reconciliations_total", &["reason=\"events_lost\""]),
        "forks_seen": m.sum("forkwatch_forks_total"),
        "forks_made": forks + zombies.len() as f64,
        "zombies_true": true_zombies,
        "zombies_gauge_after_drain": z0,
        "tracked_true": true_tracked,
        "tracked_gauge_after_drain": t0,
        "zombies_gauge_final": gauges(&last).0,
        "tracked_gauge_final": gauges(&last).1,
        "right_after_drain": right_at_once,
        "right_after_seconds": converged_s,
        "drain_seconds": drained_s,
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_events": if events > 0.0 { cpu / events * 1e6 } else { f64::NAN },
        "agent_cpu_share": cpu / elapsed.max(1e-9),
        "rss_kib": rss,
        "hwm_kib": hwm,
    });
    eprintln!(
        "bench: capacity {}{:>6} {:>14} {:>7.0} forks/s events {events:.0} lost {lost:.0} ring max {:.2} zombies {z0}/{true_zombies} tracked {t0}/{true_tracked}{}",
        if freeze { "frozen agent, " } else { "" },
        ring.unwrap_or("8MiB"),
        rate.map_or("flat out".to_string(), |r| format!("paced {r:.0}/s")),
        forks / elapsed.max(1e-9),
        ring_max,
        match converged_s {
            Some(s) if !right_at_once => format!(" (right after {s:.1} s)"),
            Some(_) => String::new(),
            None => " (NOT right after 10 s)".into(),
        }
    );
    for p in &mut loops {
        p.close_stdin();
    }
    agent.stop();
    for mut p in loops {
        let _ = p.wait_exit(Duration::from_secs(10));
    }
    Ok(result)
}

fn col(runs: &[Value], key: &str) -> Vec<f64> {
    runs.iter().filter_map(|r| r[key].as_f64()).collect()
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let n = ctx.cpus.max(1);
    // 1. The machine's rate, one loop and one loop per CPU.
    let widths: Vec<usize> = if n > 1 { vec![1, n] } else { vec![1] };
    let mut raw: Vec<Vec<f64>> = vec![Vec::new(); widths.len()];
    for rep in 0..ctx.reps {
        for i in ctx.order(widths.len(), rep) {
            let r = raw_rate(ctx, widths[i])?;
            eprintln!("bench: capacity raw, {} loop(s): {r:.0} forks/s", widths[i]);
            raw[i].push(r);
            pause(Duration::from_millis(300))?;
        }
    }
    let machine_rate = raw.iter().map(|v| median(v)).fold(0.0, f64::max);

    // 2. Tracked, paced at fractions of it, and flat out; default ring.
    let fractions: Vec<Option<f64>> = if ctx.quick {
        vec![Some(0.5), None]
    } else {
        vec![Some(0.25), Some(0.5), Some(0.75), None]
    };
    let mut steps: Vec<Vec<Value>> = vec![Vec::new(); fractions.len()];
    for rep in 0..ctx.reps {
        for i in ctx.order(fractions.len(), rep) {
            let rate = fractions[i].map(|f| f * machine_rate);
            steps[i].push(tracked(ctx, n, rate, None, false)?);
            pause(Duration::from_millis(300))?;
        }
    }

    // 3. Flat out with smaller ring buffers.
    let rings: Vec<&str> = if ctx.quick {
        vec!["4KiB"]
    } else {
        vec!["1MiB", "64KiB", "16KiB", "4KiB"]
    };
    let mut ring_runs: Vec<Vec<Value>> = vec![Vec::new(); rings.len()];
    // 4. Flat out with the agent frozen while the loops run (default ring;
    // a small one in quick mode, where the loops are too short to fill it).
    let frozen_ring = if ctx.quick { Some("64KiB") } else { None };
    let mut frozen: Vec<Value> = Vec::new();
    for rep in 0..ctx.reps {
        for i in ctx.order(rings.len() + 1, rep) {
            if i == rings.len() {
                frozen.push(tracked(ctx, n, None, frozen_ring, true)?);
            } else {
                ring_runs[i].push(tracked(ctx, n, None, Some(rings[i]), false)?);
            }
            pause(Duration::from_millis(300))?;
        }
    }

    // Report.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`forkloop` (tests/benchhelpers): fork, the child `_exit(0)`s, the parent waitpid()s it; \
         {n} loop(s) at once for {:.0} s each run, the last {ZOMBIES} children of each left as \
         zombies. Tracked runs: the loops start paused, forkwatch runs `--pid` each of them \
         (`--zombie-after 1s`), then they go. \"Right\" means forkwatch's `forkwatch_zombies` and \
         `forkwatch_tracked_processes` equal /proc's truth once it has drained (or, after a loss, \
         how long until they do).\n",
        loop_secs(ctx)
    );
    let _ = writeln!(md, "**The machine's rate** (untracked, no agent):\n");
    let _ = writeln!(md, "| loops | forks/s |\n|---|---|");
    for (i, w) in widths.iter().enumerate() {
        let _ = writeln!(md, "| {w} | {} |", cell(&raw[i], 0));
    }
    let _ = writeln!(
        md,
        "\nMachine rate used below: {machine_rate:.0} forks/s.\n\n**Tracked, default ring buffer \
         (8 MiB)**:\n"
    );
    let table_head = "| load | forks/s achieved | events per fork | events lost | ring buffer fill (max) | picture right | agent CPU s per M events | agent CPU share |\n|---|---|---|---|---|---|---|---|";
    let _ = writeln!(md, "{table_head}");
    let row = |label: String, runs: &[Value]| -> String {
        let right: Vec<String> = runs
            .iter()
            .map(|r| match r["right_after_seconds"].as_f64() {
                Some(0.0) => "yes".into(),
                Some(s) => format!("after {s:.1} s"),
                None => "**no**".into(),
            })
            .collect();
        format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&col(runs, "rate"), 0),
            cell(&col(runs, "events_per_fork"), 2),
            cell(&col(runs, "events_lost"), 0),
            cell(&col(runs, "ring_buffer_used_ratio_max"), 3),
            right.join(", "),
            cell(&col(runs, "cpu_seconds_per_million_events"), 2),
            cell(
                &col(runs, "agent_cpu_share")
                    .iter()
                    .map(|x| x * 100.0)
                    .collect::<Vec<_>>(),
                1
            ) + " %",
        )
    };
    let mut zero_loss_rate: Option<f64> = None;
    for (i, f) in fractions.iter().enumerate() {
        let label = match f {
            Some(f) => format!("paced {:.0} % ({:.0}/s)", f * 100.0, f * machine_rate),
            None => "flat out".into(),
        };
        let _ = writeln!(md, "{}", row(label, &steps[i]));
        if col(&steps[i], "events_lost").iter().all(|&l| l == 0.0) {
            let achieved = median(&col(&steps[i], "rate"));
            zero_loss_rate = Some(zero_loss_rate.map_or(achieved, |z: f64| z.max(achieved)));
        }
    }
    let _ = writeln!(
        md,
        "\n**Beyond it: flat out with smaller ring buffers** (`--ring-buffer-size`), and with the \
         agent frozen: what a loss does.\n"
    );
    let _ = writeln!(
        md,
        "| ring buffer | forks/s achieved | events per fork | events lost | ring buffer fill (max) | picture right | agent CPU s per M events | agent CPU share | reconciliations (events_lost) |\n|---|---|---|---|---|---|---|---|---|"
    );
    let flat = steps.last().cloned().unwrap_or_default();
    let mut smallest_lossless: Option<&str> =
        (!flat.is_empty() && col(&flat, "events_lost").iter().all(|&l| l == 0.0)).then_some("8MiB");
    let mut unbroken = smallest_lossless.is_some();
    for (i, r) in rings.iter().enumerate() {
        let line = row(r.to_string(), &ring_runs[i]);
        let _ = writeln!(
            md,
            "{} {} |",
            line,
            cell(&col(&ring_runs[i], "reconciliations_events_lost"), 0)
        );
        let lossless = col(&ring_runs[i], "events_lost").iter().all(|&l| l == 0.0);
        if unbroken && lossless {
            smallest_lossless = Some(r);
        } else {
            unbroken = false;
        }
    }
    let _ = writeln!(
        md,
        "{} {} |",
        row(
            format!(
                "{} with the agent frozen (SIGSTOP) while the loops run",
                frozen_ring.unwrap_or("8MiB")
            ),
            &frozen
        ),
        cell(&col(&frozen, "reconciliations_events_lost"), 0)
    );
    let flat_lost: f64 = col(&flat, "events_lost").iter().sum();
    let flat_rate = median(&col(&flat, "rate"));
    let _ = writeln!(
        md,
        "\nHighest rate with no loss (default ring buffer): {}. Smallest ring buffer with no loss \
         flat out, of those tried: {}.",
        zero_loss_rate.map_or("none of the rates tried".into(), |r| format!(
            "{r:.0} forks/s"
        )),
        smallest_lossless.unwrap_or("none (even 8 MiB lost events)")
    );
    let all: Vec<Value> = steps
        .iter()
        .chain(ring_runs.iter())
        .flatten()
        .cloned()
        .collect();
    let wrong: Vec<&Value> = all
        .iter()
        .filter(|r| r["right_after_seconds"].is_null())
        .collect();
    if !wrong.is_empty() {
        let _ = writeln!(
            md,
            "\n**{} run(s) where the agent's picture was still wrong 10 s after the loops ended** \
             (zombies gauge/true, tracked gauge/true): {}.",
            wrong.len(),
            wrong
                .iter()
                .map(|r| format!(
                    "{} ring, lost {}: {}/{} and {}/{}",
                    r["ring_buffer"].as_str().unwrap_or("?"),
                    r["events_lost"],
                    r["zombies_gauge_final"],
                    r["zombies_true"],
                    r["tracked_gauge_final"],
                    r["tracked_true"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let goals = vec![
        Goal {
            what: "capacity: no event lost at the machine's full fork rate (8 MiB ring)".into(),
            target: "0 lost".into(),
            value: format!(
                "{flat_lost:.0} lost flat out ({flat_rate:.0} forks/s tracked; {machine_rate:.0}/s untracked)"
            ),
            met: Some(flat_lost == 0.0 && !flat.is_empty()),
        },
        Goal {
            what: "agent CPU per million events (tracked fork loop flat out)".into(),
            target: "(reported)".into(),
            value: format!(
                "{} CPU-seconds ({} of one CPU)",
                cell(&col(&flat, "cpu_seconds_per_million_events"), 2).replace("**", ""),
                cell(
                    &col(&flat, "agent_cpu_share")
                        .iter()
                        .map(|x| x * 100.0)
                        .collect::<Vec<_>>(),
                    1
                )
                .replace("**", "")
                    + " %"
            ),
            met: None,
        },
    ];
    Ok(Section {
        id: "capacity",
        title: "Capacity: fork rate, losses, ring buffer",
        markdown: md,
        json: json!({
            "loops": n,
            "loop_seconds": loop_secs(ctx),
            "zombies_per_loop": ZOMBIES,
            "raw_rate": widths.iter().zip(&raw).map(|(w, r)| json!({"loops": w, "forks_per_s": summary_json(r)})).collect::<Vec<_>>(),
            "machine_rate": machine_rate,
            "zero_loss_rate": zero_loss_rate,
            "smallest_lossless_ring_buffer": smallest_lossless,
            "steps": fractions.iter().zip(&steps).map(|(f, runs)| json!({"fraction": f, "runs": runs})).collect::<Vec<_>>(),
            "ring_buffers": rings.iter().zip(&ring_runs).map(|(r, runs)| json!({"ring_buffer": r, "runs": runs})).collect::<Vec<_>>(),
            "frozen_agent": {"ring_buffer": frozen_ring.unwrap_or("8MiB"), "runs": frozen},
        }),
        goals,
        seconds: 0.0,
    })
}
