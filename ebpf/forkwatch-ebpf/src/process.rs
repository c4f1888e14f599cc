//! Process lifecycle: fork, exec, exit, release, fork failures, subreapers.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel_str_bytes},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use forkwatch_common::{
    EXEC_FILENAME_TRUNCATED, EXEC_NEW_TARGET, EXIT_PARENT_AUTOREAPS, EventKind, ExecEvent,
    ExitEvent, FORK_SYSCALL_CLONE, FORK_SYSCALL_CLONE3, FORK_SYSCALL_FORK, FORK_SYSCALL_VFORK,
    FORK_THREAD, FORK_UNTRACKED, FdEvent, ForkEvent, ForkFailedEvent, PR_SET_CHILD_SUBREAPER,
    ReleaseEvent, SubreaperEvent, Tracked, counter,
};

use crate::{
    config,
    emit::{emit, header, match_target, reserve, tracked},
    kernel::{
        Task, current_global_tgid, current_ids, current_task, is_kthread, parent_tgid,
        process_start_ns, read, read_ptr, same_start, scan_listen_fds, task_ids,
    },
    maps::{EXITED, Exited, TRACKED, count},
};

/// `sched:sched_process_fork(struct task_struct *parent, struct task_struct *child)`,
/// fired in the parent before the child first runs.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    try_fork(&ctx).unwrap_or(0)
}

fn try_fork(ctx: &RawTracePointContext) -> Option<i32> {
    let (ptgid, ptid) = current_ids()?;
    let parent = tracked(ptgid)?;
    let child: Task = ctx.arg(1);
    if is_kthread(child) {
        return None;
    }
    let (ctgid, ctid) = task_ids(child)?;
    let start: u64 = read(child, config!(kernel.task_start_boottime)).unwrap_or(0);
    let mut flags = 0;
    if ctgid == ptgid {
        flags |= FORK_THREAD;
    } else if config!(track_all) == 0 {
        let entry = Tracked {
            start_ns: start,
            server: parent.server,
            _pad: 0,
        };
        if TRACKED.insert(ctgid, entry, 0).is_err() {
            count(counter::TRACKED_FULL);
            flags |= FORK_UNTRACKED;
        }
    }
    emit(
        EventKind::Fork,
        ForkEvent {
            header: header(EventKind::Fork, ptgid, ptid, parent.server),
            child_pid: ctgid,
            child_tid: ctid,
            parent_pid: parent_tgid(child),
            flags,
            child_start_ns: start,
            comm: bpf_get_current_comm().unwrap_or_default(),
        },
    );
    Some(0)
}

/// `sched:sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`,
/// after the new program is loaded (close-on-exec fds are already closed).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    try_exec(&ctx).unwrap_or(0)
}

fn try_exec(ctx: &RawTracePointContext) -> Option<i32> {
    let (tgid, tid) = current_ids()?;
    let comm = bpf_get_current_comm().ok()?;
    let task = current_task();
    let start = process_start_ns(task);
    let mut flags = 0;
    let server = match tracked(tgid) {
        Some(t) => t.server,
        None => {
            let server = match_target(&comm)?;
            let entry = Tracked {
                start_ns: start,
                server,
                _pad: 0,
            };
            if TRACKED.insert(tgid, entry, 0).is_err() {
                count(counter::TRACKED_FULL);
                return None;
            }
            flags |= EXEC_NEW_TARGET;
            server
        }
    };
    let bprm: *const u8 = ctx.arg(2);
    let old_pid: u64 = ctx.arg(1);
    if let Some(mut entry) = reserve::<ExecEvent>(EventKind::Exec) {
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points at reserved ring-buffer memory of the right size.
        unsafe {
            (*ev).header = header(EventKind::Exec, tgid, tid, server);
            (*ev).old_tid = if config!(pidns_nested) == 0 {
                old_pid as u32
            } else {
                0
            };
            (*ev).start_ns = start;
            (*ev).ppid = parent_tgid(task);
            (*ev)._pad = 0;
            (*ev).comm = comm;
            (*ev).filename = [0; forkwatch_common::FILENAME_LEN];
            let name = read_ptr(bprm, config!(kernel.binprm_filename)).unwrap_or(core::ptr::null());
            if !name.is_null() {
                if let Ok(s) = bpf_probe_read_kernel_str_bytes(name, &mut (*ev).filename) {
                    if s.len() + 1 >= forkwatch_common::FILENAME_LEN {
                        flags |= EXEC_FILENAME_TRUNCATED;
                    }
                }
            }
            (*ev).flags = flags;
        }
        entry.submit(crate::emit::wakeup());
    }
    // Listening sockets the new program inherited: their fds had no
    // close-on-exec, so the socket now lives on in another program.
    scan_listen_fds(|fd, inode, _| {
        emit(
            EventKind::ExecListenFd,
            FdEvent {
                header: header(EventKind::ExecListenFd, tgid, tid, server),
                fd,
                _pad: 0,
                inode,
            },
        );
    });
    Some(0)
}

/// `sched:sched_process_exit(struct task_struct *p, bool group_dead)` (Linux
/// 6.13 and later pass `group_dead`).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    try_exit(|| ctx.arg::<u64>(1) & 0xff != 0, false).unwrap_or(0)
}

/// The same for kernels whose `sched_process_exit` has only the task: the
/// group is dead when `signal->live` reached zero. do_exit decrements it
/// well before the tracepoint, so a thread that was already exiting can
/// see zero too once the last thread has decremented it (seen on 6.1: a
/// joined thread's tracepoint ran after its leader's `_exit`). Only the
/// first thread to get there reports the exit.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit_live(_ctx: RawTracePointContext) -> i32 {
    try_exit(
        || {
            let live = read_ptr(current_task(), config!(kernel.task_signal))
                .and_then(|signal| read::<i32>(signal, config!(kernel.signal_live)));
            live == Some(0)
        },
        true,
    )
    .unwrap_or(0)
}

/// `BPF_NOEXIST`: the map update fails if the key is there.
const BPF_NOEXIST: u64 = 1;

/// Every exiting thread of the system passes here: the tracked check comes
/// first, the group-death check only for tracked processes. With
/// `first_only`, a thread reports only if no other thread of the same
/// process did (the EXITED entry is inserted atomically, `BPF_NOEXIST`).
#[inline(always)]
fn try_exit(group_dead: impl FnOnce() -> bool, first_only: bool) -> Option<i32> {
    let (tgid, tid) = current_ids()?;
    let t = tracked(tgid)?;
    if !group_dead() {
        return None;
    }
    let task = current_task();
    let start = process_start_ns(task);
    let flags = if parent_autoreaps(task) {
        EXIT_PARENT_AUTOREAPS
    } else {
        0
    };
    // Remember the process by its global tgid for sched_process_free, which
    // can no longer map the task into the agent's pid namespace.
    let exited = Exited {
        pid: tgid,
        server: t.server,
        start_ns: start,
    };
    let key = current_global_tgid();
    if first_only && EXITED.insert(key, exited, BPF_NOEXIST).is_err() {
        // SAFETY: value copied out at once.
        match unsafe { EXITED.get(&key) }.copied() {
            Some(e) if same_start(e.start_ns, start) => return None, // reported
            // A stale entry of an earlier process with this pid.
            _ => {
                let _ = EXITED.insert(key, exited, 0);
            }
        }
    } else if !first_only {
        let _ = EXITED.insert(key, exited, 0);
    }
    emit(
        EventKind::Exit,
        ExitEvent {
            header: header(EventKind::Exit, tgid, tid, t.server),
            ppid: parent_tgid(task),
            exit_code: exit_status(task),
            start_ns: start,
            comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or_default(),
            flags,
            _pad: 0,
        },
    );
    Some(0)
}

/// `SIGNAL_GROUP_EXIT` in `signal_struct.flags` (include/linux/sched/signal.h,
/// the same value since 2.6).
const SIGNAL_GROUP_EXIT: u32 = 0x4;

/// The process's exit status as its parent's wait will get it
/// (wait_task_zombie in kernel/exit.c): the group exit code after
/// exit_group or a fatal signal, else the leader's own exit code. Not the
/// current thread's code: the thread that reports the exit may be one that
/// called exit(2) with its own status before the group died.
#[inline(always)]
fn exit_status(task: Task) -> u32 {
    let signal = read_ptr(task, config!(kernel.task_signal));
    let signal_flags: u32 = signal
        .and_then(|s| read(s, config!(kernel.signal_flags)))
        .unwrap_or(0);
    if signal_flags & SIGNAL_GROUP_EXIT != 0 {
        if let Some(code) = signal.and_then(|s| read(s, config!(kernel.signal_group_exit_code))) {
            return code;
        }
    }
    read_ptr(task, config!(kernel.task_group_leader))
        .and_then(|leader| read(leader, config!(kernel.task_exit_code)))
        .unwrap_or(0)
}

/// SIG_IGN and SA_NOCLDWAIT (stable UAPI values).
const SIG_IGN: u64 = 1;
const SA_NOCLDWAIT: u64 = 2;

/// Whether `task`'s parent has SIGCHLD ignored or SA_NOCLDWAIT set: then
/// exit_notify releases the child at once (do_notify_parent's autoreap),
/// and nobody will ever wait for it.
#[inline(always)]
fn parent_autoreaps(task: Task) -> bool {
    let action = read_ptr(task, config!(kernel.task_real_parent))
        .and_then(|parent| read_ptr(parent, config!(kernel.task_sighand)))
        .map(|sighand| {
            sighand.wrapping_add(
                (config!(kernel.sighand_action)
                    + (forkwatch_common::SIGCHLD - 1) * config!(kernel.ksigaction_size))
                    as usize,
            )
        });
    let Some(action) = action else { return false };
    let handler: u64 = read(action, config!(kernel.ksigaction_handler)).unwrap_or(0);
    let flags: u64 = read(action, config!(kernel.ksigaction_flags)).unwrap_or(0);
    handler == SIG_IGN || flags & SA_NOCLDWAIT != 0
}

/// `sched:sched_process_free(struct task_struct *p)`: the task was released
/// (its parent reaped it, or the kernel did), an RCU grace period ago. Runs
/// in whatever context frees the task, so only the task's global ids are
/// usable.
#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn sched_process_free(ctx: RawTracePointContext) -> i32 {
    try_free(&ctx).unwrap_or(0)
}

fn try_free(ctx: &RawTracePointContext) -> Option<i32> {
    let task: Task = ctx.arg(0);
    let pid: u32 = read(task, config!(kernel.task_pid))?;
    let tgid: u32 = read(task, config!(kernel.task_tgid))?;
    if pid != tgid {
        return None; // a thread, not a process
    }
    // SAFETY: value copied out at once.
    let exited = unsafe { EXITED.get(&tgid) }.copied()?;
    let start: u64 = read(task, config!(kernel.task_start_boottime)).unwrap_or(0);
    if !same_start(exited.start_ns, start) {
        return None; // the entry belongs to a newer process with the same pid
    }
    let _ = EXITED.remove(&tgid);
    // SAFETY: value copied out at once.
    if let Some(t) = unsafe { TRACKED.get(&exited.pid) }.copied() {
        if same_start(t.start_ns, start) {
            let _ = TRACKED.remove(&exited.pid);
        }
    }
    emit(
        EventKind::Release,
        ReleaseEvent {
            header: header(EventKind::Release, exited.pid, 0, exited.server),
            reaper: parent_tgid(task),
            exit_code: read(task, config!(kernel.task_exit_code)).unwrap_or(0),
            start_ns: start,
        },
    );
    Some(0)
}

#[inline(always)]
fn fork_failed(ctx: &TracePointContext, syscall: u32) -> u32 {
    // SAFETY: offset from the tracepoint's format file.
    let ret: i64 = unsafe { ctx.read_at(config!(sys.exit_ret) as usize) }.unwrap_or(0);
    if ret >= 0 {
        return 0;
    }
    let Some((tgid, tid)) = current_ids() else {
        return 0;
    };
    let Some(t) = tracked(tgid) else { return 0 };
    emit(
        EventKind::ForkFailed,
        ForkFailedEvent {
            header: header(EventKind::ForkFailed, tgid, tid, t.server),
            syscall,
            errno: (-ret) as u32,
        },
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_clone")]
pub fn sys_exit_clone(ctx: TracePointContext) -> u32 {
    fork_failed(&ctx, FORK_SYSCALL_CLONE)
}

#[tracepoint(category = "syscalls", name = "sys_exit_clone3")]
pub fn sys_exit_clone3(ctx: TracePointContext) -> u32 {
    fork_failed(&ctx, FORK_SYSCALL_CLONE3)
}

#[tracepoint(category = "syscalls", name = "sys_exit_fork")]
pub fn sys_exit_fork(ctx: TracePointContext) -> u32 {
    fork_failed(&ctx, FORK_SYSCALL_FORK)
}

#[tracepoint(category = "syscalls", name = "sys_exit_vfork")]
pub fn sys_exit_vfork(ctx: TracePointContext) -> u32 {
    fork_failed(&ctx, FORK_SYSCALL_VFORK)
}

/// prctl(PR_SET_CHILD_SUBREAPER, on): orphans below this process will be
/// re-parented to it instead of to init.
#[tracepoint(category = "syscalls", name = "sys_enter_prctl")]
pub fn sys_enter_prctl(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let option: u64 = unsafe { ctx.read_at(config!(sys.prctl_option) as usize) }.unwrap_or(0);
    if option != PR_SET_CHILD_SUBREAPER {
        return 0;
    }
    let Some((tgid, tid)) = current_ids() else {
        return 0;
    };
    let Some(t) = tracked(tgid) else { return 0 };
    let arg2: u64 = unsafe { ctx.read_at(config!(sys.prctl_arg2) as usize) }.unwrap_or(0);
    emit(
        EventKind::Subreaper,
        SubreaperEvent {
            header: header(EventKind::Subreaper, tgid, tid, t.server),
            enabled: u32::from(arg2 != 0),
            _pad: 0,
        },
    );
    0
}
