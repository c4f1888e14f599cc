//! `forkwatch check`: a preflight of the host, one line per item with PASS,
//! WARN (works, with less) or FAIL (forkwatch cannot run) and the fix.
//! Exits non-zero when something forkwatch needs is missing.

use std::path::Path;

use crate::{
    kernel::{btf::Btf, layout, tracefs},
    privileges,
    probes::{
        loader::{LoadOptions, Probes},
        spec::{Attach, Capability, PROBES},
    },
};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Info,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Status, String, String)>,
}

impl Report {
    fn add(&mut self, status: Status, item: &str, detail: impl Into<String>) {
        self.lines.push((status, item.to_string(), detail.into()));
    }

    fn print(&self) {
        for (status, item, detail) in &self.lines {
            let tag = match status {
                Status::Pass => "PASS",
                Status::Info => "INFO",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{tag}  {item:<34} {detail}");
        }
    }

    fn failed(&self) -> bool {
        self.lines.iter().any(|(s, ..)| *s == Status::Fail)
    }
}

/// Runs the checks; returns the process exit code.
pub fn run(load: bool) -> i32 {
    let mut r = Report { lines: Vec::new() };
    let uname = nix::sys::utsname::uname().ok();
    r.add(
        Status::Pass,
        "kernel",
        uname.map_or_else(
            || "unknown".to_string(),
            |u| {
                format!(
                    "Linux {} ({})",
                    u.release().to_string_lossy(),
                    u.machine().to_string_lossy()
                )
            },
        ),
    );

    let missing = privileges::missing();
    if missing.is_empty() {
        r.add(
            Status::Pass,
            "privileges",
            "CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE effective",
        );
    } else {
        for m in &missing {
            r.add(
                Status::Fail,
                "privileges",
                format!(
                    "{} missing ({}); fix: run as root or `setcap {}+ep` the binary",
                    m.cap,
                    m.why,
                    m.cap.to_lowercase()
                ),
            );
        }
    }

    let btf = match Btf::from_sys_fs() {
        Ok(b) => {
            r.add(Status::Pass, "btf", "/sys/kernel/btf/vmlinux");
            Some(b)
        }
        Err(e) => {
            r.add(
                Status::Fail,
                "btf",
                format!("{e}; fix: use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
            );
            None
        }
    };

    let tracefs_root = match tracefs::ensure_mounted() {
        Ok((p, false)) => {
            r.add(
                Status::Pass,
                "tracefs",
                format!("mounted at {}", p.display()),
            );
            Some(p)
        }
        Ok((p, true)) => {
            r.add(
                Status::Pass,
                "tracefs",
                format!("was not mounted; mounted it at {}", p.display()),
            );
            Some(p)
        }
        Err(e) => {
            r.add(Status::Fail, "tracefs", e.to_string());
            None
        }
    };

    if let Some(root) = &tracefs_root {
        let kprobes = root.join("kprobe_events").exists();
        r.add(
            Status::Info,
            "kprobes",
            if kprobes {
                "available (forkwatch does not need them)"
            } else {
                "not available (CONFIG_KPROBE_EVENTS off); forkwatch uses tracepoints only"
            },
        );
    }

    if let (Some(btf), Some(root)) = (&btf, &tracefs_root) {
        let root = &tracefs::formats_root(root);
        let layout = layout::read(btf, root);
        check_tracepoints(&mut r, btf, root, &layout);
        check_capabilities(&mut r, &layout);
        if load && missing.is_empty() && layout.require_lifecycle().is_ok() {
            check_load(&mut r, &layout);
        }
    }
    r.print();
    i32::from(r.failed())
}

fn check_tracepoints(r: &mut Report, btf: &Btf, root: &Path, layout: &layout::Layout) {
    for probe in PROBES {
        let present = match probe.attach {
            Attach::Raw(tp) => btf.raw_tracepoint_params(tp).is_ok(),
            Attach::Tracepoint(cat, name) => root.join("events").join(cat).join(name).exists(),
        };
        let item = format!("tracepoint {}", probe.attach);
        if present {
            r.add(Status::Pass, &item, format!("({})", probe.capability));
        } else if probe.optional {
            r.add(
                Status::Info,
                &item,
                "absent on this architecture/kernel; not needed",
            );
        } else if probe.capability == Capability::Lifecycle {
            r.add(
                Status::Fail,
                &item,
                "missing: forkwatch cannot follow processes without it",
            );
        } else {
            r.add(
                Status::Warn,
                &item,
                format!(
                    "missing: {} disabled ({})",
                    probe.capability,
                    probe.capability.loss()
                ),
            );
        }
    }
    r.add(
        Status::Pass,
        "tracepoint raw_tp:sched_process_exit",
        if layout.exit_has_group_dead {
            "(lifecycle) with group_dead"
        } else {
            "(lifecycle) without group_dead: signal->live is read instead"
        },
    );
}

fn check_capabilities(r: &mut Report, layout: &layout::Layout) {
    for cap in Capability::ALL {
        let item = format!("capability {cap}");
        match layout.missing.get(&cap) {
            None => r.add(
                Status::Pass,
                &item,
                "kernel layout found (BTF, tracefs formats)",
            ),
            Some(why) if cap == Capability::Lifecycle => {
                r.add(Status::Fail, &item, why.join("; "));
            }
            Some(why) => r.add(
                Status::Warn,
                &item,
                format!("{}: disabled ({})", why.join("; "), cap.loss()),
            ),
        }
    }
    r.add(
        Status::Info,
        "pid namespace",
        if layout.pidns_nested {
            "nested (container): pids are translated into this namespace"
        } else {
            "initial"
        },
    );
}

/// Loads and attaches the probes for real, then drops them (detaching all).
fn check_load(r: &mut Report, layout: &layout::Layout) {
    match Probes::load(layout, &LoadOptions::default()) {
        Ok(p) => {
            r.add(
                Status::Pass,
                "probes load and attach",
                format!("{} programs attached and detached again", p.attached.len()),
            );
            for (cap, why) in &p.disabled {
                if !layout.missing.contains_key(cap) {
                    r.add(
                        Status::Warn,
                        &format!("capability {cap}"),
                        format!("attach failed: {why}"),
                    );
                }
            }
        }
        Err(e) => r.add(Status::Fail, "probes load and attach", format!("{e:#}")),
    }
}
