//! The table of probe programs: where each attaches and which capability of
//! the agent it serves. The loader, `forkwatch check` and the layout reader
//! all work from this one table.

use std::fmt;

/// What the agent can observe; each is backed by a group of probes. When a
/// kernel lacks what a group needs, that capability is disabled and reported,
/// and the rest keeps working. `Lifecycle` is the one the agent cannot run
/// without.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// fork, exec, exit, release: the process tree and zombies.
    Lifecycle,
    /// wait4/waitid results: who reaped whom, with which status.
    Wait,
    /// listen, accept, close, close_range, dup*: leaked listening sockets.
    ListenFds,
    /// SIGCHLD generated/coalesced/delivered and handler returns.
    Sigchld,
    /// fork/clone failures with their errno.
    ForkFailures,
    /// prctl(PR_SET_CHILD_SUBREAPER).
    Subreaper,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::Lifecycle,
        Capability::Wait,
        Capability::ListenFds,
        Capability::Sigchld,
        Capability::ForkFailures,
        Capability::Subreaper,
    ];

    /// Label value in metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Capability::Lifecycle => "lifecycle",
            Capability::Wait => "wait",
            Capability::ListenFds => "listen_fds",
            Capability::Sigchld => "sigchld",
            Capability::ForkFailures => "fork_failures",
            Capability::Subreaper => "subreaper",
        }
    }

    /// What users lose when it is disabled.
    pub const fn loss(self) -> &'static str {
        match self {
            Capability::Lifecycle => "no process tracking at all",
            Capability::Wait => "reaps are seen only at release, without the waiting call",
            Capability::ListenFds => "no leaked-listen-fd findings",
            Capability::Sigchld => "no coalesced-SIGCHLD findings",
            Capability::ForkFailures => "no fork-failure findings",
            Capability::Subreaper => "subreapers are named only from /proc",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A raw tracepoint; arguments are the tracepoint's TP_PROTO, checked
    /// against BTF (`btf_trace_<name>`) before loading.
    Raw(&'static str),
    /// A classic tracepoint `category:name`; record offsets come from tracefs.
    Tracepoint(&'static str, &'static str),
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attach::Raw(name) => write!(f, "raw_tp:{name}"),
            Attach::Tracepoint(cat, name) => write!(f, "{cat}:{name}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Program (function) name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    pub capability: Capability,
    /// Syscalls some architectures do not have (dup2, fork, vfork on arm64):
    /// their absence disables nothing.
    pub optional: bool,
}

const fn raw(program: &'static str, tp: &'static str, capability: Capability) -> Probe {
    Probe {
        program,
        attach: Attach::Raw(tp),
        capability,
        optional: false,
    }
}

const fn sys(program: &'static str, capability: Capability, optional: bool) -> Probe {
    Probe {
        program,
        attach: Attach::Tracepoint("syscalls", program),
        capability,
        optional,
    }
}

use Capability::*;

/// `sched_process_exit` comes in two variants: with the `group_dead`
/// argument (Linux 6.13+) and without; the loader picks one by the
/// tracepoint's BTF prototype, never by kernel version.
pub const EXIT_WITH_GROUP_DEAD: &str = "sched_process_exit";
pub const EXIT_WITH_SIGNAL_LIVE: &str = "sched_process_exit_live";

/// Every program but the `sched_process_exit` variants.
pub const PROBES: &[Probe] = &[
    raw("sched_process_fork", "sched_process_fork", Lifecycle),
    raw("sched_process_exec", "sched_process_exec", Lifecycle),
    raw("sched_process_free", "sched_process_free", Lifecycle),
    sys("sys_enter_wait4", Wait, false),
    sys("sys_exit_wait4", Wait, false),
    sys("sys_enter_waitid", Wait, false),
    sys("sys_exit_waitid", Wait, false),
    sys("sys_enter_listen", ListenFds, false),
    sys("sys_exit_listen", ListenFds, false),
    sys("sys_enter_accept", ListenFds, false),
    sys("sys_enter_accept4", ListenFds, false),
    sys("sys_enter_close", ListenFds, false),
    sys("sys_enter_close_range", ListenFds, true),
    sys("sys_exit_close_range", ListenFds, true),
    sys("sys_enter_dup", ListenFds, false),
    sys("sys_exit_dup", ListenFds, false),
    sys("sys_enter_dup2", ListenFds, true),
    sys("sys_exit_dup2", ListenFds, true),
    sys("sys_enter_dup3", ListenFds, false),
    sys("sys_exit_dup3", ListenFds, false),
    sys("sys_enter_fcntl", ListenFds, false),
    sys("sys_exit_fcntl", ListenFds, false),
    raw("signal_generate", "signal_generate", Sigchld),
    raw("signal_deliver", "signal_deliver", Sigchld),
    sys("sys_enter_rt_sigreturn", Sigchld, false),
    sys("sys_exit_clone", ForkFailures, false),
    sys("sys_exit_clone3", ForkFailures, true),
    sys("sys_exit_fork", ForkFailures, true),
    sys("sys_exit_vfork", ForkFailures, true),
    sys("sys_enter_prctl", Subreaper, false),
];

/// The raw tracepoints' argument types the probes rely on, as BTF spells
/// them (after the `void *` context). A kernel whose prototype differs gets
/// that capability disabled rather than misread arguments.
pub const RAW_PROTOTYPES: &[(&str, &[&str])] = &[
    (
        "sched_process_fork",
        &["struct task_struct *", "struct task_struct *"],
    ),
    (
        "sched_process_exec",
        &["struct task_struct *", "pid_t", "struct linux_binprm *"],
    ),
    ("sched_process_free", &["struct task_struct *"]),
    (
        "signal_generate",
        &[
            "int",
            "struct kernel_siginfo *",
            "struct task_struct *",
            "int",
            "int",
        ],
    ),
    (
        "signal_deliver",
        &["int", "struct kernel_siginfo *", "struct k_sigaction *"],
    ),
];
