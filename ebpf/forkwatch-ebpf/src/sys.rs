//! Syscall tracepoints: reading record fields at the offsets from tracefs,
//! and carrying a tracked process's arguments from sys_enter to sys_exit.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use forkwatch_common::counter;

use crate::{
    config,
    emit::tracked,
    kernel::current_ids,
    maps::{PENDING, Pending, count},
};

#[inline(always)]
pub fn arg(ctx: &TracePointContext, off: u32) -> u64 {
    // SAFETY: offset from the tracepoint's format file.
    unsafe { ctx.read_at::<u64>(off as usize) }.unwrap_or(0)
}

/// Stashes a tracked process's syscall arguments for its exit probe.
#[inline(always)]
pub fn stash(syscall: u32, a: u64, b: u64, c: u64, d: u64) -> Option<()> {
    let (tgid, _) = current_ids()?;
    let t = tracked(tgid)?;
    let p = Pending {
        syscall,
        server: t.server,
        a,
        b,
        c,
        d,
    };
    if PENDING.insert(bpf_get_current_pid_tgid(), p, 0).is_err() {
        count(counter::PENDING_FULL);
    }
    Some(())
}

/// Takes the stashed arguments of the current thread's `syscall`.
#[inline(always)]
pub fn unstash(syscall: u32) -> Option<Pending> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: value copied out at once.
    let p = unsafe { PENDING.get(&key) }.copied()?;
    let _ = PENDING.remove(&key);
    (p.syscall == syscall).then_some(p)
}

#[inline(always)]
pub fn exit_ret(ctx: &TracePointContext) -> i64 {
    arg(ctx, config!(sys.exit_ret)) as i64
}
