//! What the agent needs from the kernel's permission model, checked before
//! anything is loaded, so a missing capability is one clear line rather than
//! a verifier dump.
//!
//! - CAP_BPF: create maps and load programs (CAP_SYS_ADMIN on kernels < 5.8).
//! - CAP_PERFMON: tracing programs, reading kernel memory (bpf_probe_read_kernel).
//! - CAP_SYS_PTRACE: read other processes' /proc/PID/fd links (start-up
//!   discovery of listening-socket holders and reconciliation).
//! - CAP_DAC_READ_SEARCH (only when not uid 0): read tracefs format files
//!   (tracefs directories are root-only) and other users' /proc/PID/fd.
//! - CAP_SYS_ADMIN is not needed, except to mount tracefs when it is not
//!   mounted (the agent then says so).

use caps::{CapSet, Capability as Cap};

/// A capability the agent needs and does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub cap: &'static str,
    pub why: &'static str,
}

/// The capabilities needed to load and run the probes and read /proc.
pub const NEEDED: &[(Cap, &str, &str)] = &[
    (Cap::CAP_BPF, "CAP_BPF", "to load the eBPF probes"),
    (Cap::CAP_PERFMON, "CAP_PERFMON", "to attach tracing probes"),
    (
        Cap::CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "to read other processes' fds in /proc",
    ),
];

/// Needed only when not running as uid 0: tracefs directories and other
/// users' /proc/PID/fd directories are not readable by permission bits.
pub const NEEDED_UNLESS_ROOT: (Cap, &str, &str) = (
    Cap::CAP_DAC_READ_SEARCH,
    "CAP_DAC_READ_SEARCH",
    "to read tracefs and other users' /proc/PID/fd when not running as uid 0",
);

/// Needed capabilities missing from the effective set. CAP_SYS_ADMIN covers
/// CAP_BPF and CAP_PERFMON (and is what kernels before 5.8 require).
pub fn missing() -> Vec<Missing> {
    let has = |c: Cap| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let admin = has(Cap::CAP_SYS_ADMIN);
    let root = nix::unistd::geteuid().is_root();
    NEEDED
        .iter()
        .chain((!root).then_some(&NEEDED_UNLESS_ROOT))
        .filter(|(cap, _, _)| {
            let covered = admin && matches!(cap, Cap::CAP_BPF | Cap::CAP_PERFMON);
            !covered && !has(*cap)
        })
        .map(|&(_, cap, why)| Missing { cap, why })
        .collect()
}

/// The one-line error for missing capabilities.
pub fn require() -> anyhow::Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<_> = missing.iter().map(|m| m.cap).collect();
    let whys: Vec<_> = missing
        .iter()
        .map(|m| format!("{} {}", m.cap, m.why))
        .collect();
    anyhow::bail!(
        "missing capabilities: {} (needs {}); run as root, or grant them, e.g. \
         `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep forkwatch`",
        names.join(", "),
        whys.join("; ")
    )
}

/// Turns an EPERM from the kernel into the capability message; other errors
/// keep their full chain (including the verifier log).
pub fn explain_load_error(e: anyhow::Error) -> anyhow::Error {
    let eperm = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
            || c.to_string().contains("Operation not permitted")
    });
    if eperm {
        match require() {
            Err(msg) => msg,
            Ok(()) => e.context(
                "the kernel refused to load the probes (EPERM) although the capabilities are \
                 present: a seccomp or LSM policy (or kernel.unprivileged_bpf_disabled with a \
                 user namespace) may forbid bpf()",
            ),
        }
    } else {
        e
    }
}
