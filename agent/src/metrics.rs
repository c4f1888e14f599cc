//! The Prometheus metrics (docs/metrics.md lists them). Labels are bounded:
//! the server name and fixed kind-like values, never a pid; every series
//! exists from start-up at zero.

use prometheus::{
    Encoder as _, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    model::{
        Output, Reaper,
        findings::{FindingKind, NewParentKind},
    },
    probes::spec::Capability,
};

/// errno label values; anything else is `other`.
pub const ERRNOS: [(u32, &str); 5] = [
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (28, "ENOSPC"),
    (1, "EPERM"),
    (4, "EINTR"),
];

/// Reap latencies span a correct handler's microseconds to a zombie's minutes.
const REAP_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    300.0,
];
/// Child lifetimes: from a failed exec's milliseconds to a day-long worker.
const LIFETIME_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
];

/// Metric children of one server, resolved once.
pub struct ServerHandles {
    forks: IntCounter,
    exited: IntCounter,
    signaled: IntCounter,
    reaps: [IntCounter; 4],
    reap_latency: Histogram,
    lifetime: Histogram,
    orphans_init: IntCounter,
    orphans_subreaper: IntCounter,
    leaks_inherited: IntCounter,
    leaks_across_exec: IntCounter,
    closed_at_exit: IntCounter,
    coalesced: IntCounter,
    /// By `ERRNOS` index, then `other`.
    fork_failures: [IntCounter; ERRNOS.len() + 1],
    findings_total: [IntCounter; FindingKind::ALL.len()],
}

/// All the resolved handles: by server id, and events by kind.
pub struct Handles {
    servers: Vec<ServerHandles>,
    /// By `EventKind` number minus one.
    events: [IntCounter; forkwatch_common::MAX_EVENT_KIND as usize],
}

impl Handles {
    /// Counts one event received from the probes.
    pub fn event(&self, kind: forkwatch_common::EventKind) {
        self.events[kind as usize - 1].inc();
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub forks: IntCounterVec,
    pub exits: IntCounterVec,
    pub reaps: IntCounterVec,
    pub zombies: IntGaugeVec,
    pub unreaped: IntGaugeVec,
    pub reap_latency: HistogramVec,
    pub lifetime: HistogramVec,
    pub orphans: IntCounterVec,
    pub leaked_fds: IntGaugeVec,
    pub leaks: IntCounterVec,
    pub closed_at_exit: IntCounterVec,
    pub coalesced: IntCounterVec,
    pub fork_failures: IntCounterVec,
    pub findings: IntGaugeVec,
    pub findings_total: IntCounterVec,
    pub tracked: IntGaugeVec,
    pub events: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub reconciliations: IntCounterVec,
    pub ring_used: Gauge,
    pub limits: IntCounterVec,
    pub capability: IntGaugeVec,
    pub build_info: GaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["server"],
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    /// All metrics, with every series of `servers` created at zero.
    pub fn new(servers: &[String], kernel: &str) -> Self {
        let r = Registry::new();
        let m = Self {
            forks: counter(
                &r,
                "forkwatch_forks_total",
                "Processes created by tracked processes (threads excluded).",
                &["server"],
            ),
            exits: counter(
                &r,
                "forkwatch_exits_total",
                "Tracked processes whose last thread exited, by how.",
                &["server", "how"],
            ),
            reaps: counter(
                &r,
                "forkwatch_reaps_total",
                "Exited processes released, by who released them (auto: SIGCHLD ignored or SA_NOCLDWAIT).",
                &["server", "reaper"],
            ),
            zombies: gauge(
                &r,
                "forkwatch_zombies",
                "Tracked processes exited and not yet reaped, of any age.",
                &["server"],
            ),
            unreaped: gauge(
                &r,
                "forkwatch_unreaped_children",
                "Zombies older than --zombie-after (open unreaped_child findings).",
                &["server"],
            ),
            reap_latency: histogram(
                &r,
                "forkwatch_reap_latency_seconds",
                "Time from a process's exit to its release.",
                REAP_BUCKETS,
            ),
            lifetime: histogram(
                &r,
                "forkwatch_child_lifetime_seconds",
                "Time from a process's fork to its exit.",
                LIFETIME_BUCKETS,
            ),
            orphans: counter(
                &r,
                "forkwatch_orphans_reparented_total",
                "Children re-parented because their parent died, by new parent.",
                &["server", "new_parent"],
            ),
            leaked_fds: gauge(
                &r,
                "forkwatch_leaked_listen_fds",
                "Open leaked-listening-socket findings, by kind.",
                &["server", "kind"],
            ),
            leaks: counter(
                &r,
                "forkwatch_listen_fd_leaks_total",
                "Leaked-listening-socket findings opened, by kind.",
                &["server", "kind"],
            ),
            closed_at_exit: counter(
                &r,
                "forkwatch_listen_fds_closed_at_exit_total",
                "Children that never closed an inherited listening socket but exited within the grace period (the kernel closed it).",
                &["server"],
            ),
            coalesced: counter(
                &r,
                "forkwatch_sigchld_coalesced_total",
                "SIGCHLD generated while one was already pending (merged into it).",
                &["server"],
            ),
            fork_failures: counter(
                &r,
                "forkwatch_fork_failures_total",
                "fork/clone calls that failed, by errno.",
                &["server", "errno"],
            ),
            findings: gauge(
                &r,
                "forkwatch_open_findings",
                "Open findings, by kind.",
                &["server", "kind"],
            ),
            findings_total: counter(
                &r,
                "forkwatch_findings_total",
                "Findings opened, by kind.",
                &["server", "kind"],
            ),
            tracked: gauge(
                &r,
                "forkwatch_tracked_processes",
                "Processes the agent follows now (live and zombie).",
                &["server"],
            ),
            events: counter(
                &r,
                "forkwatch_events_total",
                "Events received from the kernel probes, by kind.",
                &["kind"],
            ),
            events_lost: counter(
                &r,
                "forkwatch_events_lost_total",
                "Events the probes could not deliver (ring buffer full), by kind.",
                &["kind"],
            ),
            reconciliations: counter(
                &r,
                "forkwatch_reconciliations_total",
                "Resyncs of the model against /proc, by reason.",
                &["reason"],
            ),
            ring_used: {
                let g = Gauge::new(
                    "forkwatch_ring_buffer_used_ratio",
                    "Highest fill of the event ring buffer over the last minute (0 to 1).",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            limits: counter(
                &r,
                "forkwatch_limit_reached_total",
                "A memory cap was hit (something was dropped or not tracked), by cap.",
                &["limit"],
            ),
            capability: gauge(
                &r,
                "forkwatch_capability_enabled",
                "1 if this kernel supports the capability and its probes are attached.",
                &["capability"],
            ),
            build_info: {
                let g = GaugeVec::new(
                    Opts::new(
                        "forkwatch_build_info",
                        "Always 1; the labels say which forkwatch runs on which kernel.",
                    ),
                    &["version", "kernel"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            registry: r,
        };
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let _ = m.registry.register(Box::new(process));
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel])
            .set(1.0);
        for s in servers {
            let s = s.as_str();
            m.forks.with_label_values(&[s]);
            for how in ["exited", "signaled"] {
                m.exits.with_label_values(&[s, how]);
            }
            for r in Reaper::ALL {
                m.reaps.with_label_values(&[s, r.name()]);
            }
            m.zombies.with_label_values(&[s]);
            m.unreaped.with_label_values(&[s]);
            m.reap_latency.with_label_values(&[s]);
            m.lifetime.with_label_values(&[s]);
            for np in [NewParentKind::Init, NewParentKind::Subreaper] {
                m.orphans.with_label_values(&[s, np.name()]);
            }
            for kind in ["inherited", "across_exec"] {
                m.leaked_fds.with_label_values(&[s, kind]);
                m.leaks.with_label_values(&[s, kind]);
            }
            m.closed_at_exit.with_label_values(&[s]);
            m.coalesced.with_label_values(&[s]);
            for (_, e) in ERRNOS {
                m.fork_failures.with_label_values(&[s, e]);
            }
            m.fork_failures.with_label_values(&[s, "other"]);
            for k in FindingKind::ALL {
                m.findings.with_label_values(&[s, k.name()]);
                m.findings_total.with_label_values(&[s, k.name()]);
            }
            m.tracked.with_label_values(&[s]);
        }
        for k in forkwatch_common::EventKind::ALL {
            m.events.with_label_values(&[k.name()]);
            m.events_lost.with_label_values(&[k.name()]);
        }
        for reason in ["startup", "events_lost", "periodic"] {
            m.reconciliations.with_label_values(&[reason]);
        }
        for l in [
            "processes",
            "findings",
            "kernel_processes",
            "kernel_listen_sockets",
        ] {
            m.limits.with_label_values(&[l]);
        }
        for c in Capability::ALL {
            m.capability.with_label_values(&[c.name()]);
        }
        m
    }

    /// Resolved counter and histogram handles for each server id (index =
    /// id), so the per-event path increments without hashing label values.
    pub fn handles(&self, server_names_by_id: &[String]) -> Handles {
        let servers = server_names_by_id
            .iter()
            .map(|s| {
                let s = s.as_str();
                ServerHandles {
                    forks: self.forks.with_label_values(&[s]),
                    exited: self.exits.with_label_values(&[s, "exited"]),
                    signaled: self.exits.with_label_values(&[s, "signaled"]),
                    reaps: Reaper::ALL.map(|r| self.reaps.with_label_values(&[s, r.name()])),
                    reap_latency: self.reap_latency.with_label_values(&[s]),
                    lifetime: self.lifetime.with_label_values(&[s]),
                    orphans_init: self
                        .orphans
                        .with_label_values(&[s, NewParentKind::Init.name()]),
                    orphans_subreaper: self
                        .orphans
                        .with_label_values(&[s, NewParentKind::Subreaper.name()]),
                    leaks_inherited: self.leaks.with_label_values(&[s, "inherited"]),
                    leaks_across_exec: self.leaks.with_label_values(&[s, "across_exec"]),
                    closed_at_exit: self.closed_at_exit.with_label_values(&[s]),
                    coalesced: self.coalesced.with_label_values(&[s]),
                    fork_failures: std::array::from_fn(|i| {
                        let label = ERRNOS.get(i).map_or("other", |(_, e)| e);
                        self.fork_failures.with_label_values(&[s, label])
                    }),
                    findings_total: FindingKind::ALL
                        .map(|k| self.findings_total.with_label_values(&[s, k.name()])),
                }
            })
            .collect();
        Handles {
            servers,
            events: forkwatch_common::EventKind::ALL
                .map(|k| self.events.with_label_values(&[k.name()])),
        }
    }

    /// Counts what the model reported.
    pub fn record(&self, h: &Handles, out: &Output) {
        let Some(s) = out.server().and_then(|id| h.servers.get(id as usize)) else {
            if let Output::LimitReached(l) = out {
                let label = match l {
                    crate::model::Limit::Processes => "processes",
                    crate::model::Limit::Findings => "findings",
                };
                self.limits.with_label_values(&[label]).inc();
            }
            return;
        };
        match out {
            Output::Forked { .. } => s.forks.inc(),
            Output::Exited {
                signaled,
                lifetime_s,
                ..
            } => {
                if *signaled {
                    s.signaled.inc()
                } else {
                    s.exited.inc()
                }
                if let Some(l) = lifetime_s {
                    s.lifetime.observe(*l);
                }
            }
            Output::Reaped {
                reaper, latency_s, ..
            } => {
                s.reaps[*reaper as usize].inc();
                if let Some(l) = latency_s {
                    s.reap_latency.observe(*l);
                }
            }
            Output::Orphaned { new_parent, .. } => match new_parent {
                NewParentKind::Init => s.orphans_init.inc(),
                NewParentKind::Subreaper => s.orphans_subreaper.inc(),
            },
            Output::SigchldCoalesced { .. } => s.coalesced.inc(),
            Output::ForkFailed { errno, .. } => {
                let i = ERRNOS
                    .iter()
                    .position(|(n, _)| n == errno)
                    .unwrap_or(ERRNOS.len());
                s.fork_failures[i].inc();
            }
            Output::ListenFdLeak { across_exec, .. } => {
                if *across_exec {
                    s.leaks_across_exec.inc()
                } else {
                    s.leaks_inherited.inc()
                }
            }
            Output::ListenFdClosedAtExit { .. } => s.closed_at_exit.inc(),
            Output::FindingOpened(f) => s.findings_total[f.kind as usize].inc(),
            _ => {}
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
