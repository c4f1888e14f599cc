//! `forkwatch events`: the raw, decoded event stream as JSON lines.
//!
//! One object per line with `kind`, `ts_ns` (CLOCK_MONOTONIC), `time`
//! (RFC 3339 wall clock), `server`, `pid`, `tid` and the kind's fields (see
//! docs/events.md). Lost events are reported in-band as
//! `{"kind":"events_lost",...}` lines: a gap is never silent.

use std::io::Write as _;

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    clock,
    event::Event,
    probes::{loader::LoadOptions, stream::EventStream},
    startup,
    targets::Selection,
};

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    server: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

pub async fn run(selection: Selection, opts: LoadOptions) -> anyhow::Result<()> {
    let mut started = startup::start(&selection, opts)?;
    let mut stream = EventStream::new(started.probes.take_events()?)?;
    // Before the ready line: a signal sent right after it must find the
    // handlers in place (the default action would kill the agent).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    info!(
        "streaming events of {} process(es) ({}); Ctrl-C stops",
        started.seeded.len(),
        selection.server_names().join(", ")
    );
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut drain = tokio::time::interval(crate::cmd::run::DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stdout = std::io::stdout();
    let mut lost_seen = 0u64;
    let write = |bytes: &[u8], out: &mut std::io::StdoutLock<'_>| match Event::decode(bytes) {
        Ok(ev) => {
            let line = Line {
                time: clock::rfc3339(clock::wall_time(ev.ts_ns)),
                server: selection.server_name(ev.server),
                event: &ev,
            };
            let _ = serde_json::to_writer(&mut *out, &line);
            let _ = out.write_all(b"\n");
        }
        Err(e) => warn!("undecodable event: {e}"),
    };
    loop {
        tokio::select! {
            r = stream.ready() => {
                r?;
                stream.drain_now(4096, |b| write(b, &mut stdout.lock()));
                stdout.lock().flush()?;
            }
            _ = drain.tick() => {
                if stream.drain_now(4096, |b| write(b, &mut stdout.lock())) > 0 {
                    stdout.lock().flush()?;
                }
            }
            _ = tick.tick() => {
                started.probes.flush_probe_logs();
                let lost = started.probes.counters().lost_total();
                if lost > lost_seen {
                    let line = serde_json::json!({
                        "kind": "events_lost",
                        "time": clock::rfc3339(std::time::SystemTime::now()),
                        "count": lost - lost_seen,
                        "total": lost,
                    });
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    lost_seen = lost;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // What is already in the buffer still goes out.
    while stream.drain_now(4096, |b| write(b, &mut stdout.lock())) == 4096 {}
    stdout.lock().flush()?;
    Ok(())
}
