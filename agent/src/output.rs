//! How findings reach people and programs: a line per finding as it opens
//! and resolves (human text on a terminal, JSON lines otherwise), and the
//! JSON shapes of the HTTP endpoints.

use std::{io::Write as _, time::SystemTime};

use serde::Serialize;

use crate::{
    clock,
    model::{
        Model,
        findings::{Evidence, Finding, FindingKind},
        human_ns,
        process::Process,
    },
    targets::Selection,
};

/// A finding as the outside world sees it.
#[derive(Debug, Serialize)]
pub struct FindingView<'a> {
    pub id: u64,
    pub kind: FindingKind,
    pub state: &'static str,
    pub server: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
    /// RFC 3339: when it opened.
    pub since: String,
    /// RFC 3339: when it resolved (null while open).
    pub resolved_at: Option<String>,
    /// How long it has been (or was) open, in seconds.
    pub duration_seconds: f64,
    pub summary: &'a str,
    pub remedy: &'a str,
    pub resolution: Option<&'a str>,
    pub evidence: &'a Evidence,
    /// For unreaped children: seconds since the exit (when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zombie_age_seconds: Option<f64>,
}

impl<'a> FindingView<'a> {
    pub fn new(f: &'a Finding, selection: &'a Selection, now_ns: u64) -> Self {
        let end = f.resolved_ns.unwrap_or(now_ns);
        let zombie_age_seconds = match &f.evidence {
            Evidence::Unreaped {
                exited_ns: Some(at),
                ..
            } => Some(end.saturating_sub(*at) as f64 / 1e9),
            _ => None,
        };
        Self {
            id: f.id,
            kind: f.kind,
            state: if f.is_open() { "open" } else { "resolved" },
            server: selection.server_name(f.server),
            pid: f.pid,
            ppid: f.ppid,
            comm: &f.comm,
            since: clock::rfc3339(clock::wall_time(f.opened_ns)),
            resolved_at: f.resolved_ns.map(|t| clock::rfc3339(clock::wall_time(t))),
            duration_seconds: end.saturating_sub(f.opened_ns) as f64 / 1e9,
            summary: &f.summary,
            remedy: &f.remedy,
            resolution: f.resolution.as_deref(),
            evidence: &f.evidence,
            zombie_age_seconds,
        }
    }
}

/// `GET /findings`.
#[derive(Serialize)]
pub struct FindingsDoc<'a> {
    pub open: Vec<FindingView<'a>>,
    pub resolved: Vec<FindingView<'a>>,
}

pub fn findings_doc<'a>(
    model: &'a Model,
    selection: &'a Selection,
    now_ns: u64,
) -> FindingsDoc<'a> {
    let mut open: Vec<_> = model
        .findings()
        .open_findings()
        .map(|f| FindingView::new(f, selection, now_ns))
        .collect();
    open.sort_by_key(|f| f.id);
    let resolved = model
        .findings()
        .resolved_findings()
        .rev()
        .map(|f| FindingView::new(f, selection, now_ns))
        .collect();
    FindingsDoc { open, resolved }
}

/// A node of `GET /tree`.
#[derive(Serialize)]
pub struct TreeNode {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen_fds: Vec<TreeFd>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<TreeNode>,
}

#[derive(Serialize)]
pub struct TreeFd {
    pub fd: u32,
    pub inode: u64,
    pub port: u16,
}

#[derive(Serialize)]
pub struct TreeServer {
    pub server: String,
    pub processes: Vec<TreeNode>,
}

/// `GET /tree`: each server's processes as trees (roots: processes whose
/// parent the agent does not follow).
pub fn tree(model: &Model, selection: &Selection) -> Vec<TreeServer> {
    let mut roots: Vec<&Process> = model
        .processes()
        .filter(|p| model.process(p.ppid).is_none())
        .collect();
    roots.sort_by_key(|p| p.pid);
    let mut servers: Vec<TreeServer> = Vec::new();
    for root in roots {
        let name = selection.server_name(root.server).to_string();
        let node = node(model, root, 0);
        match servers.iter_mut().find(|s| s.server == name) {
            Some(s) => s.processes.push(node),
            None => servers.push(TreeServer {
                server: name,
                processes: vec![node],
            }),
        }
    }
    servers
}

fn node(model: &Model, p: &Process, depth: usize) -> TreeNode {
    let port = |inode: u64| {
        model
            .sockets()
            .find(|s| s.inode == inode)
            .map_or(0, |s| s.port)
    };
    TreeNode {
        pid: p.pid,
        ppid: p.ppid,
        comm: p.comm.clone(),
        state: if p.is_zombie() { "zombie" } else { "live" },
        listen_fds: p
            .listen_fds
            .iter()
            .map(|(&fd, &inode)| TreeFd {
                fd,
                inode,
                port: port(inode),
            })
            .collect(),
        // Bounded depth: a corrupt parent link must not recurse forever.
        children: if depth < 64 {
            p.children
                .iter()
                .filter_map(|c| model.process(*c))
                .map(|c| node(model, c, depth + 1))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Writes finding lines to stdout.
pub struct FindingLog {
    pub json: bool,
}

impl FindingLog {
    pub fn write(&self, what: &str, f: &Finding, selection: &Selection, now_ns: u64) {
        let view = FindingView::new(f, selection, now_ns);
        let mut out = std::io::stdout().lock();
        if self.json {
            let line = serde_json::json!({
                "time": clock::rfc3339(SystemTime::now()),
                "event": format!("finding_{what}"),
                "finding": view,
            });
            let _ = writeln!(out, "{line}");
        } else {
            let time = humantime::format_rfc3339_seconds(SystemTime::now());
            let tag = if what == "opened" {
                "OPEN    "
            } else {
                "RESOLVED"
            };
            let _ = write!(
                out,
                "{time} {tag} {:<21} server={} pid={} {}",
                f.kind.name(),
                view.server,
                f.pid,
                f.summary
            );
            if f.is_open() {
                let _ = writeln!(out, "\n{:>31} fix: {}", "", f.remedy);
            } else {
                let _ = writeln!(
                    out,
                    " ({} after {})",
                    f.resolution.as_deref().unwrap_or("resolved"),
                    human_ns(view.duration_seconds.mul_add(1e9, 0.0) as u64)
                );
            }
        }
        let _ = out.flush();
    }
}
