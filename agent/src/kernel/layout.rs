//! The kernel layout the probes read, taken from the running kernel at
//! start-up: struct member offsets from BTF, syscall record offsets from the
//! tracefs `format` files, and the raw tracepoints' prototypes checked
//! against what the probes expect. Never one kernel version's constants.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _, path::Path};

use forkwatch_common::{KernelOffsets, SyscallOffsets};

use super::{btf::Btf, tracefs::Format};
use crate::probes::spec::{Capability, RAW_PROTOTYPES};

/// Inode number of the initial pid namespace (`PROC_PID_INIT_INO`, fixed
/// in include/linux/proc_ns.h).
const INIT_PIDNS_INO: u64 = 0xEFFF_FFFC;

/// The layout, and what could not be found (by capability).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub kernel: KernelOffsets,
    pub sys: SyscallOffsets,
    /// `sched_process_exit` passes `group_dead` (Linux 6.13+).
    pub exit_has_group_dead: bool,
    /// The agent runs in a pid namespace other than the initial one (a
    /// sidecar container); the probes then translate pids.
    pub pidns_nested: bool,
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// Capabilities that cannot work on this kernel, and why.
    pub missing: BTreeMap<Capability, Vec<String>>,
}

impl Layout {
    fn miss(&mut self, cap: Capability, why: impl ToString) {
        self.missing.entry(cap).or_default().push(why.to_string());
    }
}

/// Reads the layout from `btf` and the format files under `tracefs`.
pub fn read(btf: &Btf, tracefs: &Path) -> Layout {
    let mut layout = Layout::default();
    read_pidns(&mut layout);
    read_kernel_offsets(btf, &mut layout);
    read_raw_prototypes(btf, &mut layout);
    read_syscall_offsets(tracefs, &mut layout);
    layout
}

fn read_pidns(layout: &mut Layout) {
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(m) => {
            layout.pidns_dev = m.dev();
            layout.pidns_ino = m.ino();
            layout.pidns_nested = m.ino() != INIT_PIDNS_INO;
        }
        Err(e) => layout.miss(
            Capability::Lifecycle,
            format!("cannot stat /proc/self/ns/pid: {e}"),
        ),
    }
}

/// (capability, struct, member path, destination, size the probes read or 0 for any).
type OffsetSpec = (
    Capability,
    &'static str,
    &'static str,
    fn(&mut KernelOffsets) -> &mut u32,
    u32,
);

// One line per offset reads better than rustfmt's five.
#[rustfmt::skip]
const OFFSETS: &[OffsetSpec] = &[
    (Capability::Lifecycle, "task_struct", "pid", |k| &mut k.task_pid, 4),
    (Capability::Lifecycle, "task_struct", "tgid", |k| &mut k.task_tgid, 4),
    (Capability::Lifecycle, "task_struct", "flags", |k| &mut k.task_flags, 4),
    (Capability::Lifecycle, "task_struct", "real_parent", |k| &mut k.task_real_parent, 8),
    (Capability::Lifecycle, "task_struct", "group_leader", |k| &mut k.task_group_leader, 8),
    (Capability::Lifecycle, "task_struct", "start_boottime", |k| &mut k.task_start_boottime, 8),
    (Capability::Lifecycle, "task_struct", "exit_code", |k| &mut k.task_exit_code, 4),
    (Capability::Lifecycle, "task_struct", "signal", |k| &mut k.task_signal, 8),
    (Capability::Lifecycle, "task_struct", "thread_pid", |k| &mut k.task_thread_pid, 8),
    (Capability::Lifecycle, "task_struct", "sighand", |k| &mut k.task_sighand, 8),
    (Capability::Lifecycle, "signal_struct", "live", |k| &mut k.signal_live, 4),
    (Capability::Lifecycle, "signal_struct", "flags", |k| &mut k.signal_flags, 4),
    (Capability::Lifecycle, "signal_struct", "group_exit_code", |k| &mut k.signal_group_exit_code, 4),
    (Capability::Lifecycle, "sighand_struct", "action", |k| &mut k.sighand_action, 0),
    (Capability::Lifecycle, "k_sigaction", "sa.sa_handler", |k| &mut k.ksigaction_handler, 8),
    (Capability::Lifecycle, "k_sigaction", "sa.sa_flags", |k| &mut k.ksigaction_flags, 8),
    (Capability::Lifecycle, "linux_binprm", "filename", |k| &mut k.binprm_filename, 8),
    (Capability::ListenFds, "task_struct", "files", |k| &mut k.task_files, 8),
    (Capability::ListenFds, "files_struct", "fdt", |k| &mut k.files_fdt, 8),
    (Capability::ListenFds, "fdtable", "max_fds", |k| &mut k.fdtable_max_fds, 4),
    (Capability::ListenFds, "fdtable", "fd", |k| &mut k.fdtable_fd, 8),
    (Capability::ListenFds, "file", "f_inode", |k| &mut k.file_f_inode, 8),
    (Capability::ListenFds, "file", "private_data", |k| &mut k.file_private_data, 8),
    (Capability::ListenFds, "inode", "i_ino", |k| &mut k.inode_i_ino, 8),
    (Capability::ListenFds, "socket", "sk", |k| &mut k.socket_sk, 8),
    (Capability::ListenFds, "sock", "__sk_common.skc_num", |k| &mut k.sock_num, 2),
    (Capability::ListenFds, "sock", "__sk_common.skc_family", |k| &mut k.sock_family, 2),
    (Capability::Sigchld, "kernel_siginfo", "si_code", |k| &mut k.siginfo_code, 4),
    (Capability::Sigchld, "kernel_siginfo", "_sifields._sigchld._pid", |k| &mut k.siginfo_pid, 4),
];

/// Offsets only needed when the agent runs in a nested pid namespace.
#[rustfmt::skip]
const PIDNS_OFFSETS: &[OffsetSpec] = &[
    (Capability::Lifecycle, "pid", "level", |k| &mut k.pid_level, 4),
    (Capability::Lifecycle, "pid", "numbers", |k| &mut k.pid_numbers, 0),
    (Capability::Lifecycle, "upid", "nr", |k| &mut k.upid_nr, 4),
    (Capability::Lifecycle, "upid", "ns", |k| &mut k.upid_ns, 8),
    (Capability::Lifecycle, "pid_namespace", "ns.inum", |k| &mut k.pidns_inum, 4),
];

fn read_kernel_offsets(btf: &Btf, layout: &mut Layout) {
    // Every field is written below; see the test that checks none is missed.
    let nested = layout.pidns_nested;
    let specs = OFFSETS
        .iter()
        .chain(PIDNS_OFFSETS.iter().filter(|_| nested));
    for &(cap, strukt, path, dest, want) in specs {
        match btf.member(strukt, path) {
            Ok(f) if want != 0 && f.size != want => layout.miss(
                cap,
                format!(
                    "{strukt}.{path} is {} bytes, the probes read {want}",
                    f.size
                ),
            ),
            Ok(f) => *dest(&mut layout.kernel) = f.offset,
            Err(e) => layout.miss(cap, e),
        }
    }
    match btf.struct_size("k_sigaction") {
        Ok(size) => layout.kernel.ksigaction_size = size,
        Err(e) => layout.miss(Capability::Lifecycle, e),
    }
    if nested {
        match btf.struct_size("upid") {
            Ok(size) => layout.kernel.upid_size = size,
            Err(e) => layout.miss(Capability::Lifecycle, e),
        }
    }
}

fn read_raw_prototypes(btf: &Btf, layout: &mut Layout) {
    for &(tp, want) in RAW_PROTOTYPES {
        let cap = match tp {
            "signal_generate" | "signal_deliver" => Capability::Sigchld,
            _ => Capability::Lifecycle,
        };
        match btf.raw_tracepoint_params(tp) {
            Ok(have) if have == want => {}
            Ok(have) => layout.miss(
                cap,
                format!(
                    "raw tracepoint {tp} takes ({}), the probes expect ({})",
                    have.join(", "),
                    want.join(", ")
                ),
            ),
            Err(e) => layout.miss(cap, e),
        }
    }
    match btf.raw_tracepoint_params("sched_process_exit") {
        Ok(params) if params.first().map(String::as_str) == Some("struct task_struct *") => {
            layout.exit_has_group_dead = params.get(1).map(String::as_str) == Some("bool");
        }
        Ok(params) => layout.miss(
            Capability::Lifecycle,
            format!(
                "raw tracepoint sched_process_exit takes ({})",
                params.join(", ")
            ),
        ),
        Err(e) => layout.miss(Capability::Lifecycle, e),
    }
}

/// (capability, syscall tracepoint, record field, destination).
type SysSpec = (
    Capability,
    &'static str,
    &'static str,
    fn(&mut SyscallOffsets) -> &mut u32,
);

#[rustfmt::skip]
const SYSCALL_FIELDS: &[SysSpec] = &[
    (Capability::ListenFds, "sys_enter_close", "fd", |s| &mut s.close_fd),
    (Capability::ListenFds, "sys_enter_close_range", "fd", |s| &mut s.close_range_fd),
    (Capability::ListenFds, "sys_enter_close_range", "max_fd", |s| &mut s.close_range_max_fd),
    (Capability::ListenFds, "sys_enter_close_range", "flags", |s| &mut s.close_range_flags),
    (Capability::ListenFds, "sys_enter_dup", "fildes", |s| &mut s.dup_fildes),
    (Capability::ListenFds, "sys_enter_dup2", "oldfd", |s| &mut s.dup2_oldfd),
    (Capability::ListenFds, "sys_enter_dup2", "newfd", |s| &mut s.dup2_newfd),
    (Capability::ListenFds, "sys_enter_dup3", "oldfd", |s| &mut s.dup3_oldfd),
    (Capability::ListenFds, "sys_enter_dup3", "newfd", |s| &mut s.dup3_newfd),
    (Capability::ListenFds, "sys_enter_fcntl", "fd", |s| &mut s.fcntl_fd),
    (Capability::ListenFds, "sys_enter_fcntl", "cmd", |s| &mut s.fcntl_cmd),
    (Capability::ListenFds, "sys_enter_listen", "fd", |s| &mut s.listen_fd),
    (Capability::ListenFds, "sys_enter_listen", "backlog", |s| &mut s.listen_backlog),
    (Capability::ListenFds, "sys_enter_accept", "fd", |s| &mut s.accept_fd),
    (Capability::ListenFds, "sys_enter_accept4", "fd", |s| &mut s.accept4_fd),
    (Capability::Wait, "sys_enter_wait4", "upid", |s| &mut s.wait4_upid),
    (Capability::Wait, "sys_enter_wait4", "stat_addr", |s| &mut s.wait4_stat_addr),
    (Capability::Wait, "sys_enter_wait4", "options", |s| &mut s.wait4_options),
    (Capability::Wait, "sys_enter_waitid", "which", |s| &mut s.waitid_which),
    (Capability::Wait, "sys_enter_waitid", "upid", |s| &mut s.waitid_upid),
    (Capability::Wait, "sys_enter_waitid", "infop", |s| &mut s.waitid_infop),
    (Capability::Wait, "sys_enter_waitid", "options", |s| &mut s.waitid_options),
    (Capability::Subreaper, "sys_enter_prctl", "option", |s| &mut s.prctl_option),
    (Capability::Subreaper, "sys_enter_prctl", "arg2", |s| &mut s.prctl_arg2),
];

/// Syscalls some architectures lack; a missing format file there is no loss.
const OPTIONAL_SYSCALLS: &[&str] = &["sys_enter_dup2", "sys_enter_close_range"];

/// The exit records whose `ret` the probes read (all must agree).
const EXIT_RECORDS: &[(Capability, &str)] = &[
    (Capability::Wait, "sys_exit_wait4"),
    (Capability::Wait, "sys_exit_waitid"),
    (Capability::ListenFds, "sys_exit_listen"),
    (Capability::ListenFds, "sys_exit_dup"),
    (Capability::ListenFds, "sys_exit_dup3"),
    (Capability::ListenFds, "sys_exit_fcntl"),
    (Capability::ForkFailures, "sys_exit_clone"),
];

fn read_syscall_offsets(tracefs: &Path, layout: &mut Layout) {
    let mut formats: BTreeMap<&str, Result<Format, String>> = BTreeMap::new();
    let mut format = |name: &'static str| {
        formats
            .entry(name)
            .or_insert_with(|| Format::read(tracefs, "syscalls", name).map_err(|e| e.to_string()))
            .clone()
    };
    for &(cap, tp, field, dest) in SYSCALL_FIELDS {
        match format(tp).and_then(|f| f.slot_offset(field).map_err(|e| e.to_string())) {
            Ok(off) => *dest(&mut layout.sys) = off,
            Err(_) if OPTIONAL_SYSCALLS.contains(&tp) => {}
            Err(e) => layout.miss(cap, e),
        }
    }
    let mut ret = None;
    for &(cap, tp) in EXIT_RECORDS {
        match format(tp).and_then(|f| f.slot_offset("ret").map_err(|e| e.to_string())) {
            Ok(off) if ret.is_none_or(|r| r == off) => ret = Some(off),
            Ok(off) => layout.miss(
                cap,
                format!("{tp}: ret at {off}, other exit records at {ret:?}"),
            ),
            Err(e) => layout.miss(cap, e),
        }
    }
    layout.sys.exit_ret = ret.unwrap_or(0);
}

/// A layout failure that stops the agent: the lifecycle probes cannot work.
#[derive(Debug, thiserror::Error)]
#[error("this kernel lacks what forkwatch needs to follow processes: {0}")]
pub struct LifecycleMissing(pub String);

impl Layout {
    /// Errors if the must-have capability is missing.
    pub fn require_lifecycle(&self) -> Result<(), LifecycleMissing> {
        match self.missing.get(&Capability::Lifecycle) {
            Some(why) => Err(LifecycleMissing(why.join("; "))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `KernelOffsets` in declaration order.
    fn fields(k: &KernelOffsets) -> [u32; 36] {
        // SAFETY: KernelOffsets is 36 u32s, repr(C), size asserted in the ABI crate.
        unsafe { std::mem::transmute_copy(k) }
    }

    /// A new `KernelOffsets` field without a line in the tables would stay
    /// zero and the probes would read the wrong memory: every field must be
    /// filled from the running kernel's BTF.
    #[test]
    fn every_kernel_offset_is_read_from_btf() {
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        let mut layout = Layout {
            kernel: unsafe { std::mem::transmute::<[u32; 36], KernelOffsets>([u32::MAX; 36]) },
            pidns_nested: true,
            ..Layout::default()
        };
        read_kernel_offsets(&btf, &mut layout);
        assert!(layout.missing.is_empty(), "{:?}", layout.missing);
        let f = fields(&layout.kernel);
        for (i, v) in f.iter().enumerate() {
            assert_ne!(
                *v,
                u32::MAX,
                "KernelOffsets field #{i} is not read from BTF"
            );
        }
        assert_eq!(
            layout.kernel.ksigaction_size,
            btf.struct_size("k_sigaction").unwrap()
        );
    }
}
