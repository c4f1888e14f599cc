//! `forkwatch run`: the agent. Probes feed the process model; findings go
//! to stdout as they open and resolve, and to the HTTP endpoint with the
//! metrics.
//!
//! One task owns the probes and drives the model: it drains the ring
//! buffer, runs the model's timers (draining first, so a timer never fires
//! ahead of events already in the buffer), watches the probes' loss
//! counters and reconciles with /proc when events were lost. The HTTP task
//! only reads the model and the metrics.

use std::{
    collections::HashSet,
    io::IsTerminal as _,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::LogFormat,
    clock, discovery,
    event::Event,
    http::{self, Shared},
    metrics::Metrics,
    model::{Config, Model, Output, findings::FindingKind},
    output::FindingLog,
    probes::{loader::LoadOptions, spec::Capability, stream::EventStream},
    procview::{self, RealProc},
    startup,
    targets::Selection,
};

/// What `run` needs beyond the probe options.
pub struct RunOptions {
    pub zombie_after: Duration,
    pub listen_grace: Duration,
    pub listen_address: SocketAddr,
    pub max_open_findings: usize,
    pub resolved_history: usize,
    pub reconcile_every: Duration,
    pub log_format: LogFormat,
    pub web: crate::webconfig::WebConfig,
}

/// Housekeeping turns (250 ms each) the ring-buffer fill gauge looks back over: a minute.
const FILL_WINDOW: usize = 240;

/// How often the ring buffer is drained when the probes did not ask for it.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Records handled per lock of the model, so scrapes wait at most one batch.
const BATCH: usize = 4096;
/// Reconciliations after lost events are at most this frequent.
const MIN_RECONCILE_GAP_NS: u64 = 1_000_000_000;

pub async fn run(
    selection: Selection,
    probe_opts: LoadOptions,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let max_processes = probe_opts.max_processes as usize;
    let mut started = startup::start(&selection, probe_opts)?;
    let mut stream = EventStream::new(started.probes.take_events()?)?;

    let boot_offset_ns = clock::boottime_ns().saturating_sub(clock::monotonic_ns());
    let cfg = Config {
        zombie_after_ns: opts.zombie_after.as_nanos() as u64,
        listen_grace_ns: opts.listen_grace.as_nanos() as u64,
        max_processes,
        max_open_findings: opts.max_open_findings,
        max_resolved_findings: opts.resolved_history,
        tick_ns: discovery::ns_per_tick(),
        boot_offset_ns,
        ..Config::default()
    };
    let mut model = Model::new(cfg);
    let seeded: HashSet<u32> = started.seeded.keys().copied().collect();
    let (snap, _) = procview::snapshot(&selection, &seeded);
    let snap = only_kernel_tracked(snap, &selection, &mut started.probes);
    model.reconcile(&snap, clock::monotonic_ns(), true);

    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let metrics = Metrics::new(&selection.server_names(), &kernel);
    let ids: Vec<String> = selection.targets.iter().map(|(_, n)| n.clone()).collect();
    let handles = metrics.handles(&ids);
    for cap in Capability::ALL {
        let up = !started.probes.disabled.contains_key(&cap);
        metrics
            .capability
            .with_label_values(&[cap.name()])
            .set(i64::from(up));
    }
    metrics
        .reconciliations
        .with_label_values(&["startup"])
        .inc();

    let listener = tokio::net::TcpListener::bind(opts.listen_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (in use? pick another with --web.listen-address)",
                opts.listen_address
            )
        })?;
    let bound = listener.local_addr()?;
    let shared = Arc::new(Shared {
        model: Mutex::new(model),
        metrics,
        handles,
        selection: selection.clone(),
        heartbeat_ns: clock::monotonic_ns().into(),
        before_scrape: Box::new(refresh_gauges),
    });
    let scheme = if opts.web.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = tokio::spawn(http::serve(
        listener,
        http::router(shared.clone(), opts.web.auth.clone()),
        opts.web.tls.clone(),
    ));

    let json = match opts.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let log = FindingLog { json };
    let tracked = shared.model.lock().expect("model lock").len();
    // Before the ready line: a signal sent right after it must find the
    // handlers in place (the default action would kill the agent).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    info!(
        "watching {tracked} process(es) of {}; metrics and findings on {scheme}://{bound}/ (Ctrl-C stops)",
        selection.server_names().join(", ")
    );
    // The start-up findings (existing zombies, leaks) come out at once.
    handle_outputs(&shared, &mut started.probes, &log);

    let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
    // The probes do not wake the agent for every event (see the probes'
    // `wakeup`): it drains the ring buffer on this clock, and at once when
    // the buffer fills up.
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_seen = vec![0u64; forkwatch_common::MAX_EVENT_KIND as usize + 1];
    let mut last_reconcile = clock::monotonic_ns();
    let mut resync_due = false;
    let mut kernel_full_seen = (0u64, 0u64);
    let mut fill_window: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let reconcile_every = opts.reconcile_every.as_nanos() as u64;

    loop {
        let next = shared.model.lock().expect("model lock").next_deadline();
        let sleep = next.map_or(Duration::from_secs(1), |t| {
            Duration::from_nanos(t.saturating_sub(clock::monotonic_ns()))
                .min(Duration::from_secs(1))
        });
        tokio::select! {
            r = stream.ready() => {
                r?;
                apply_ready(&shared, &mut stream);
            }
            _ = drain.tick() => apply_ready(&shared, &mut stream),
            () = tokio::time::sleep(sleep) => {
                apply_ready(&shared, &mut stream);
                let mut model = shared.model.lock().expect("model lock");
                model.tick(clock::monotonic_ns(), &RealProc);
            }
            _ = housekeeping.tick() => {
                started.probes.flush_probe_logs();
                let counters = started.probes.counters();
                let mut lost_now = false;
                for (kind, (&now, seen)) in counters.lost_by_kind.iter().zip(lost_seen.iter_mut()).enumerate() {
                    if now > *seen {
                        let name = forkwatch_common::EventKind::try_from(kind as u32).map_or("unknown", |k| k.name());
                        shared.metrics.events_lost.with_label_values(&[name]).inc_by(now - *seen);
                        *seen = now;
                        lost_now = true;
                    }
                }
                if counters.tracked_full > kernel_full_seen.0 {
                    warn!(
                        "the kernel's tracked-process table is full (--max-processes): {} new processes are not followed",
                        counters.tracked_full - kernel_full_seen.0
                    );
                    shared.metrics.limits.with_label_values(&["kernel_processes"]).inc_by(counters.tracked_full - kernel_full_seen.0);
                    kernel_full_seen.0 = counters.tracked_full;
                }
                if counters.listen_full > kernel_full_seen.1 {
                    warn!("the kernel's listening-socket table is full: new listening sockets are not followed");
                    shared.metrics.limits.with_label_values(&["kernel_listen_sockets"]).inc_by(counters.listen_full - kernel_full_seen.1);
                    kernel_full_seen.1 = counters.listen_full;
                }
                // The gauge is the highest fill of the last minute, whoever
                // reads it (a reset on scrape would hand the peak to the
                // first of two Prometheus servers, or to a curl).
                let ratio = counters.ring_high_water as f64 / f64::from(started.probes.ring_buffer_bytes().max(1));
                started.probes.reset_ring_high_water();
                fill_window.push_back(ratio.min(1.0));
                if fill_window.len() > FILL_WINDOW {
                    fill_window.pop_front();
                }
                shared.metrics.ring_used.set(fill_window.iter().copied().fold(0.0, f64::max));
                let now = clock::monotonic_ns();
                // A loss makes a resync due; it runs at most once a second
                // but is never dropped, so the last loss of a burst is
                // repaired too once things calm down.
                if lost_now && !resync_due {
                    warn!("the kernel ring buffer overflowed: events were lost; reconciling with /proc");
                    resync_due = true;
                }
                let periodic = now.saturating_sub(last_reconcile) >= reconcile_every;
                if (resync_due && now.saturating_sub(last_reconcile) >= MIN_RECONCILE_GAP_NS) || periodic {
                    // What the buffer holds is older than the /proc snapshot
                    // about to be taken: apply it first (bounded).
                    for _ in 0..64 {
                        apply_ready(&shared, &mut stream);
                        if !stream.has_more() {
                            break;
                        }
                    }
                    let reason = if resync_due { "events_lost" } else { "periodic" };
                    reconcile(&shared, &selection, &mut started.probes, reason);
                    last_reconcile = now;
                    resync_due = false;
                }
                shared.heartbeat_ns.store(now, Ordering::Relaxed);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        handle_outputs(&shared, &mut started.probes, &log);
    }
    server.abort();
    info!("stopping: detaching the probes");
    drop(stream);
    drop(started);
    Ok(())
}

/// Applies what is in the ring buffer now, a batch per lock; at most 16
/// batches, so signals and scrapes get their turn under a fork storm (the
/// stream remembers there is more).
fn apply_ready(shared: &Shared, stream: &mut EventStream) {
    for _ in 0..16 {
        let mut model = shared.model.lock().expect("model lock");
        let n = stream.drain_now(BATCH, |bytes| match Event::decode(bytes) {
            Ok(ev) => {
                shared.handles.event(ev.body.kind());
                model.apply(&ev);
            }
            Err(e) => warn!("undecodable event: {e}"),
        });
        if n < BATCH {
            return;
        }
    }
}

/// Resyncs the model (and the kernel's tracked set) with /proc.
fn reconcile(
    shared: &Shared,
    selection: &Selection,
    probes: &mut crate::probes::loader::Probes,
    reason: &str,
) {
    let known: HashSet<u32> = shared
        .model
        .lock()
        .expect("model lock")
        .processes()
        .map(|p| p.pid)
        .collect();
    let (snap, _) = procview::snapshot(selection, &known);
    // Processes /proc shows under a target that the kernel does not track
    // (moved into a target cgroup, or forked while the table was full).
    let snap = only_kernel_tracked(snap, selection, probes);
    for h in &snap.holders {
        let server = snap
            .procs
            .iter()
            .find(|p| p.pid == h.pid)
            .map_or(0, |p| p.server);
        let _ = probes.add_listen_socket(
            h.inode,
            forkwatch_common::ListenSocket {
                server,
                port: h.port,
                family: h.family,
            },
        );
    }
    shared
        .model
        .lock()
        .expect("model lock")
        .reconcile(&snap, clock::monotonic_ns(), false);
    shared
        .metrics
        .reconciliations
        .with_label_values(&[reason])
        .inc();
}

/// Keeps in a snapshot only the live processes the kernel tracks (trying to
/// add the missing ones first), so the model never follows a process whose
/// exit it would not see (the kernel's table was full). Zombies stay: their
/// release is checked against /proc.
fn only_kernel_tracked(
    mut snap: crate::model::Snapshot,
    selection: &Selection,
    probes: &mut crate::probes::loader::Probes,
) -> crate::model::Snapshot {
    if selection.track_all() {
        return snap;
    }
    let mut in_kernel: HashSet<u32> = probes.tracked_pids().into_iter().collect();
    let mut full = false;
    for p in &snap.procs {
        if p.state == 'Z' || in_kernel.contains(&p.pid) || full {
            continue;
        }
        match probes.track(p.pid, p.start_ns, p.server) {
            Ok(()) => {
                in_kernel.insert(p.pid);
            }
            Err(e) => {
                // One line, not one per process.
                warn!("{e:#}; processes beyond it are not followed");
                full = true;
            }
        }
    }
    snap.procs
        .retain(|p| p.state == 'Z' || in_kernel.contains(&p.pid));
    let kept: HashSet<u32> = snap.procs.iter().map(|p| p.pid).collect();
    snap.holders.retain(|h| kept.contains(&h.pid));
    snap
}

/// Turns the model's outputs into metrics, finding lines and kernel map updates.
fn handle_outputs(shared: &Shared, probes: &mut crate::probes::loader::Probes, log: &FindingLog) {
    let outputs = shared.model.lock().expect("model lock").drain();
    if outputs.is_empty() {
        return;
    }
    let now = clock::monotonic_ns();
    for out in &outputs {
        shared.metrics.record(&shared.handles, out);
        match out {
            Output::FindingOpened(f) => log.write("opened", f, &shared.selection, now),
            // Updates (new counts on an open finding) are in /findings; a
            // line per handler run would drown the log.
            Output::FindingResolved(f) => log.write("resolved", f, &shared.selection, now),
            Output::Untrack { pid } => probes.untrack(*pid),
            Output::SocketGone { inode } => probes.remove_listen_socket(*inode),
            Output::TargetExited { pid, comm, .. } => {
                info!(
                    "target {comm} (pid {pid}) exited; still watching its descendants and any new process matching a --comm or --cgroup target"
                );
            }
            _ => {}
        }
    }
}

/// Sets the gauges from the model's current state (just before a scrape).
/// Targets sharing a server name add up.
pub fn refresh_gauges(shared: &Shared) {
    let model = shared.model.lock().expect("model lock");
    let m = &shared.metrics;
    for name in shared.selection.server_names() {
        let ids: Vec<u32> = shared
            .selection
            .targets
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n == name)
            .map(|(i, _)| i as u32)
            .collect();
        let sum = |f: &dyn Fn(u32) -> u64| ids.iter().map(|&s| f(s)).sum::<u64>() as i64;
        let open = |k: FindingKind| sum(&|s| model.findings().open_count(s, k));
        let name = name.as_str();
        m.tracked
            .with_label_values(&[name])
            .set(sum(&|s| model.counts(s).tracked));
        m.zombies
            .with_label_values(&[name])
            .set(sum(&|s| model.counts(s).zombies));
        m.unreaped
            .with_label_values(&[name])
            .set(open(FindingKind::UnreapedChild));
        m.leaked_fds
            .with_label_values(&[name, "inherited"])
            .set(open(FindingKind::LeakedListenFd));
        m.leaked_fds
            .with_label_values(&[name, "across_exec"])
            .set(open(FindingKind::ListenFdAcrossExec));
        for k in FindingKind::ALL {
            m.findings.with_label_values(&[name, k.name()]).set(open(k));
        }
    }
}
