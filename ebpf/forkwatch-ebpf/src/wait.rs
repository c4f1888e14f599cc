//! wait4/waitid: which child a tracked process reaped (or was told about),
//! with the status. Arguments are stashed at entry, results read at exit.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use forkwatch_common::{
    EventKind, WAIT_HAVE_STATUS, WAIT_SYSCALL_WAIT4, WAIT_SYSCALL_WAITID, WaitEvent,
};

use crate::{
    config,
    emit::{emit, header},
    kernel::current_ids,
    maps::pending,
    sys::{arg, exit_ret, stash, unstash},
};

/// Offsets in the user-space `siginfo_t` (UAPI, fixed per architecture): the
/// SIGCHLD fields follow three ints and padding to 16 on 64-bit targets.
const SI_CODE: usize = 8;
const SI_PID: usize = 16;
const SI_STATUS: usize = 24;

#[tracepoint(category = "syscalls", name = "sys_enter_wait4")]
pub fn sys_enter_wait4(ctx: TracePointContext) -> u32 {
    let _ = stash(
        pending::WAIT4,
        arg(&ctx, config!(sys.wait4_upid)),
        arg(&ctx, config!(sys.wait4_stat_addr)),
        arg(&ctx, config!(sys.wait4_options)),
        0,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_wait4")]
pub fn sys_exit_wait4(ctx: TracePointContext) -> u32 {
    let _ = try_exit_wait4(&ctx);
    0
}

fn try_exit_wait4(ctx: &TracePointContext) -> Option<()> {
    let p = unstash(pending::WAIT4)?;
    let (tgid, tid) = current_ids()?;
    let ret = exit_ret(ctx);
    let mut flags = 0;
    let mut status = 0;
    if ret > 0 && p.b != 0 {
        // SAFETY: user pointer given to wait4; the helper validates it.
        if let Ok(s) = unsafe { bpf_probe_read_user(p.b as usize as *const u32) } {
            status = s;
            flags |= WAIT_HAVE_STATUS;
        }
    }
    emit(
        EventKind::Wait,
        WaitEvent {
            header: header(EventKind::Wait, tgid, tid, p.server),
            syscall: WAIT_SYSCALL_WAIT4,
            flags,
            id: p.a as i32,
            which: 0,
            options: p.c as u32,
            child: if ret > 0 { ret as u32 } else { 0 },
            ret,
            status,
            si_code: 0,
        },
    );
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_waitid")]
pub fn sys_enter_waitid(ctx: TracePointContext) -> u32 {
    let _ = stash(
        pending::WAITID,
        arg(&ctx, config!(sys.waitid_which)),
        arg(&ctx, config!(sys.waitid_upid)),
        arg(&ctx, config!(sys.waitid_infop)),
        arg(&ctx, config!(sys.waitid_options)),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_waitid")]
pub fn sys_exit_waitid(ctx: TracePointContext) -> u32 {
    let _ = try_exit_waitid(&ctx);
    0
}

fn try_exit_waitid(ctx: &TracePointContext) -> Option<()> {
    let p = unstash(pending::WAITID)?;
    let (tgid, tid) = current_ids()?;
    let ret = exit_ret(ctx);
    let infop = p.c as usize as *const u8;
    let (mut child, mut status, mut si_code, mut flags) = (0u32, 0u32, 0i32, 0u32);
    if ret == 0 && !infop.is_null() {
        // SAFETY: user pointer given to waitid; the helper validates it.
        unsafe {
            child = bpf_probe_read_user(infop.wrapping_add(SI_PID).cast::<u32>()).unwrap_or(0);
            si_code = bpf_probe_read_user(infop.wrapping_add(SI_CODE).cast::<i32>()).unwrap_or(0);
            if let Ok(s) = bpf_probe_read_user(infop.wrapping_add(SI_STATUS).cast::<u32>()) {
                status = s;
                flags |= WAIT_HAVE_STATUS;
            }
        }
    }
    emit(
        EventKind::Wait,
        WaitEvent {
            header: header(EventKind::Wait, tgid, tid, p.server),
            syscall: WAIT_SYSCALL_WAITID,
            flags,
            id: p.b as i32,
            which: p.a as u32,
            options: p.d as u32,
            child,
            ret,
            status,
            si_code,
        },
    );
    Some(())
}
