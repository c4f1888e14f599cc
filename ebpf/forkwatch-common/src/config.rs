//! Settings the agent writes into the probes' read-only `CONFIG` global before
//! loading them: what to track, the agent's pid namespace, and every kernel
//! layout detail the probes need, read from the running kernel (BTF for struct
//! members, tracefs `format` files for syscall tracepoint records). Nothing
//! here is a compile-time guess about one kernel version.

use core::mem::size_of;

/// Byte offsets of kernel struct members, from /sys/kernel/btf/vmlinux.
/// Names are `<struct>_<member>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_flags: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub task_files: u32,
    pub task_thread_pid: u32,
    /// `signal_struct.live`: reaches 0 when the last thread exits (used where
    /// `sched_process_exit` has no `group_dead` argument, before Linux 6.13).
    pub signal_live: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_ino: u32,
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_num` (local port, host order).
    pub sock_num: u32,
    /// `sock.__sk_common.skc_family`.
    pub sock_family: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_nr: u32,
    pub upid_ns: u32,
    /// `pid_namespace.ns.inum`.
    pub pidns_inum: u32,
    /// `kernel_siginfo` → `si_pid` of the SIGCHLD layout.
    pub siginfo_pid: u32,
    pub siginfo_code: u32,
    /// `k_sigaction.sa.sa_handler`.
    pub ksigaction_handler: u32,
    pub ksigaction_flags: u32,
    pub binprm_filename: u32,
    pub task_sighand: u32,
    /// `sighand_struct.action`: the array of `k_sigaction`, one per signal.
    pub sighand_action: u32,
    /// `sizeof(struct k_sigaction)`.
    pub ksigaction_size: u32,
    /// `signal_struct.flags` (`SIGNAL_GROUP_EXIT`) and
    /// `signal_struct.group_exit_code`: a process's exit status as wait
    /// reports it, whichever of its threads the probe runs in.
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
}

/// Offsets of the fields the probes read in `syscalls:sys_{enter,exit}_*`
/// records, from tracefs `format` files. Names are `<syscall>_<field>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallOffsets {
    pub close_fd: u32,
    pub close_range_fd: u32,
    pub close_range_max_fd: u32,
    pub close_range_flags: u32,
    pub dup_fildes: u32,
    pub dup2_oldfd: u32,
    pub dup2_newfd: u32,
    pub dup3_oldfd: u32,
    pub dup3_newfd: u32,
    pub fcntl_fd: u32,
    pub fcntl_cmd: u32,
    pub listen_fd: u32,
    pub listen_backlog: u32,
    pub accept_fd: u32,
    pub accept4_fd: u32,
    pub wait4_upid: u32,
    pub wait4_stat_addr: u32,
    pub wait4_options: u32,
    pub waitid_which: u32,
    pub waitid_upid: u32,
    pub waitid_infop: u32,
    pub waitid_options: u32,
    pub prctl_option: u32,
    pub prctl_arg2: u32,
    /// `ret` of every `sys_exit_*` record the probes use (checked equal).
    pub exit_ret: u32,
    pub _pad: u32,
}

/// The probes' `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Non-zero: every process of the agent's pid namespace is tracked
    /// (`--all`), no `TRACKED` lookup is needed.
    pub track_all: u32,
    /// Non-zero when the agent runs in a pid namespace other than the
    /// initial one (a sidecar container): pids are then translated into it.
    /// Zero: the kernel's own pid fields are the pids the agent sees.
    pub pidns_nested: u32,
    /// st_dev and st_ino of /proc/self/ns/pid (for `bpf_get_ns_current_pid_tgid`).
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// The agent's own pid (in its namespace): never tracked, so that
    /// under `--all` its own syscalls do not feed back into the stream.
    pub agent_pid: u32,
    pub _pad: u32,
    pub kernel: KernelOffsets,
    pub sys: SyscallOffsets,
}

const _: () = assert!(size_of::<KernelOffsets>() == 36 * 4);
const _: () = assert!(size_of::<SyscallOffsets>() == 26 * 4);
const _: () = assert!(size_of::<ProbeConfig>() == 32 + 36 * 4 + 26 * 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, every bit pattern valid, no padding
    // the compiler adds (explicit `_pad` fields and size assertions above).
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for crate::Tracked {}
    unsafe impl aya::Pod for crate::ListenSocket {}
    unsafe impl aya::Pod for crate::AcceptKey {}
    unsafe impl aya::Pod for crate::Target {}
}
