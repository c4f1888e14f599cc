//! SIGCHLD: generated (and whether it was already pending, i.e. coalesced),
//! delivered (to a handler or not), and handler returns (rt_sigreturn).

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use forkwatch_common::{EventKind, SIGCHLD, SigchldDeliverEvent, SigchldGenerateEvent};

use crate::{
    config,
    emit::{emit, header, tracked},
    kernel::{Task, current_ids, read, task_ids},
};

/// `signal:signal_generate(int sig, struct kernel_siginfo *info,
/// struct task_struct *task, int group, int result)`.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    try_generate(&ctx).unwrap_or(0)
}

fn try_generate(ctx: &RawTracePointContext) -> Option<i32> {
    let sig: u64 = ctx.arg(0);
    if sig as u32 != SIGCHLD {
        return None;
    }
    let target: Task = ctx.arg(2);
    let (tgid, tid) = task_ids(target)?;
    let t = tracked(tgid)?;
    let info: *const u8 = ctx.arg(1);
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are not pointers.
    let (child, code) = if (info as usize) > 1 {
        (
            read::<u32>(info, config!(kernel.siginfo_pid)).unwrap_or(0),
            read::<i32>(info, config!(kernel.siginfo_code)).unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    let result: u64 = ctx.arg(4);
    emit(
        EventKind::SigchldGenerate,
        SigchldGenerateEvent {
            header: header(EventKind::SigchldGenerate, tgid, tid, t.server),
            sender: current_ids().map_or(0, |(pid, _)| pid),
            child,
            result: result as i32,
            code,
        },
    );
    Some(0)
}

/// `signal:signal_deliver(int sig, struct kernel_siginfo *info, struct k_sigaction *ka)`,
/// in the receiving thread.
#[raw_tracepoint(tracepoint = "signal_deliver")]
pub fn signal_deliver(ctx: RawTracePointContext) -> i32 {
    try_deliver(&ctx).unwrap_or(0)
}

fn try_deliver(ctx: &RawTracePointContext) -> Option<i32> {
    let sig: u64 = ctx.arg(0);
    if sig as u32 != SIGCHLD {
        return None;
    }
    let (tgid, tid) = current_ids()?;
    let t = tracked(tgid)?;
    let ka: *const u8 = ctx.arg(2);
    emit(
        EventKind::SigchldDeliver,
        SigchldDeliverEvent {
            header: header(EventKind::SigchldDeliver, tgid, tid, t.server),
            handler: read::<u64>(ka, config!(kernel.ksigaction_handler)).unwrap_or(0),
            sa_flags: read::<u64>(ka, config!(kernel.ksigaction_flags)).unwrap_or(0),
        },
    );
    Some(0)
}

/// rt_sigreturn: the end of a signal handler run in a tracked process.
#[tracepoint(category = "syscalls", name = "sys_enter_rt_sigreturn")]
pub fn sys_enter_rt_sigreturn(_ctx: TracePointContext) -> u32 {
    if let Some((tgid, tid)) = current_ids() {
        if let Some(t) = tracked(tgid) {
            emit(
                EventKind::SignalReturn,
                header(EventKind::SignalReturn, tgid, tid, t.server),
            );
        }
    }
    0
}
