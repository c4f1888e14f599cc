//! Listening sockets and the fds that refer to them: listen, accept, close,
//! close_range and the dup family. Only fds that refer to a socket in
//! `LISTEN_SOCKETS` produce events; a server's per-connection closes stop at
//! one map lookup.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use forkwatch_common::{
    AcceptKey, CloseRangeEvent, DUP_SYSCALL_DUP, DUP_SYSCALL_DUP2, DUP_SYSCALL_DUP3,
    DUP_SYSCALL_FCNTL, DupEvent, EventKind, FdEvent, ListenEvent, ListenSocket, counter,
};

use crate::{
    config,
    emit::{emit, header, tracked},
    kernel::{current_file, current_ids, current_listen_inode, file_inode, socket_port_family},
    maps::{ACCEPTED, LISTEN_SOCKETS, count, pending},
    sys::{arg, exit_ret, stash, unstash},
};

/// fcntl commands that duplicate an fd.
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let fd = arg(&ctx, config!(sys.listen_fd));
    let backlog = arg(&ctx, config!(sys.listen_backlog));
    let _ = stash(pending::LISTEN, fd, backlog, 0, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let _ = try_exit_listen(&ctx);
    0
}

fn try_exit_listen(ctx: &TracePointContext) -> Option<()> {
    let p = unstash(pending::LISTEN)?;
    if exit_ret(ctx) != 0 {
        return None;
    }
    let (tgid, tid) = current_ids()?;
    let fd = p.a as u32;
    let file = current_file(fd)?;
    let inode = file_inode(file)?;
    let (port, family) = socket_port_family(file);
    let sock = ListenSocket {
        server: p.server,
        port,
        family,
    };
    if LISTEN_SOCKETS.insert(inode, sock, 0).is_err() {
        count(counter::LISTEN_FULL);
    }
    emit(
        EventKind::Listen,
        ListenEvent {
            header: header(EventKind::Listen, tgid, tid, p.server),
            fd,
            backlog: p.b as u32,
            inode,
            port,
            family,
            _pad: 0,
        },
    );
    Some(())
}

#[inline(always)]
fn on_accept(fd: u64) -> Option<()> {
    let (tgid, tid) = current_ids()?;
    let t = tracked(tgid)?;
    let inode = current_listen_inode(fd as u32)?;
    let key = AcceptKey {
        inode,
        start_ns: t.start_ns,
        pid: tgid,
        _pad: 0,
    };
    // SAFETY: presence check only.
    if unsafe { ACCEPTED.get(&key) }.is_some() {
        return None; // this process already told the agent it accepts here
    }
    let _ = ACCEPTED.insert(key, 1u8, 0);
    emit(
        EventKind::Accept,
        FdEvent {
            header: header(EventKind::Accept, tgid, tid, t.server),
            fd: fd as u32,
            _pad: 0,
            inode,
        },
    );
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = on_accept(arg(&ctx, config!(sys.accept_fd)));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = on_accept(arg(&ctx, config!(sys.accept4_fd)));
    0
}

/// close() drops the fd whatever it returns, so the event is written at entry.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let _ = try_close(arg(&ctx, config!(sys.close_fd)) as u32);
    0
}

fn try_close(fd: u32) -> Option<()> {
    let (tgid, tid) = current_ids()?;
    let t = tracked(tgid)?;
    let inode = current_listen_inode(fd)?;
    emit(
        EventKind::ListenFdClose,
        FdEvent {
            header: header(EventKind::ListenFdClose, tgid, tid, t.server),
            fd,
            _pad: 0,
            inode,
        },
    );
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_close_range")]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    let _ = stash(
        pending::CLOSE_RANGE,
        arg(&ctx, config!(sys.close_range_fd)),
        arg(&ctx, config!(sys.close_range_max_fd)),
        arg(&ctx, config!(sys.close_range_flags)),
        0,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_close_range")]
pub fn sys_exit_close_range(ctx: TracePointContext) -> u32 {
    let _ = try_exit_close_range(&ctx);
    0
}

fn try_exit_close_range(ctx: &TracePointContext) -> Option<()> {
    let p = unstash(pending::CLOSE_RANGE)?;
    let (tgid, tid) = current_ids()?;
    emit(
        EventKind::CloseRange,
        CloseRangeEvent {
            header: header(EventKind::CloseRange, tgid, tid, p.server),
            first: p.a as u32,
            last: p.b as u32,
            flags: p.c as u32,
            ret: exit_ret(ctx) as i32,
        },
    );
    Some(())
}

/// At entry of a dup-family call: stash it if `oldfd` is a listening socket
/// or `newfd` is one (dup2/dup3 onto it closes it).
#[inline(always)]
fn dup_enter(syscall: u32, oldfd: u64, newfd: Option<u64>) -> Option<()> {
    let (tgid, _) = current_ids()?;
    tracked(tgid)?;
    let inode = current_listen_inode(oldfd as u32).unwrap_or(0);
    let replaced = newfd
        .filter(|&n| n != oldfd)
        .and_then(|n| current_listen_inode(n as u32))
        .unwrap_or(0);
    if inode == 0 && replaced == 0 {
        return None;
    }
    stash(pending::DUP, u64::from(syscall), oldfd, inode, replaced)
}

fn dup_exit(ctx: &TracePointContext) -> Option<()> {
    let p = unstash(pending::DUP)?;
    let ret = exit_ret(ctx);
    if ret < 0 {
        return None;
    }
    let (tgid, tid) = current_ids()?;
    emit(
        EventKind::ListenFdDup,
        DupEvent {
            header: header(EventKind::ListenFdDup, tgid, tid, p.server),
            syscall: p.a as u32,
            oldfd: p.b as u32,
            newfd: ret as u32,
            _pad: 0,
            inode: p.c,
            replaced_inode: p.d,
        },
    );
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup")]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    let _ = dup_enter(DUP_SYSCALL_DUP, arg(&ctx, config!(sys.dup_fildes)), None);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup2")]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    let newfd = arg(&ctx, config!(sys.dup2_newfd));
    let _ = dup_enter(
        DUP_SYSCALL_DUP2,
        arg(&ctx, config!(sys.dup2_oldfd)),
        Some(newfd),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup3")]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    let newfd = arg(&ctx, config!(sys.dup3_newfd));
    let _ = dup_enter(
        DUP_SYSCALL_DUP3,
        arg(&ctx, config!(sys.dup3_oldfd)),
        Some(newfd),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fcntl")]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = arg(&ctx, config!(sys.fcntl_cmd));
    if cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC {
        let _ = dup_enter(DUP_SYSCALL_FCNTL, arg(&ctx, config!(sys.fcntl_fd)), None);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup")]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    let _ = dup_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup2")]
pub fn sys_exit_dup2(ctx: TracePointContext) -> u32 {
    let _ = dup_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup3")]
pub fn sys_exit_dup3(ctx: TracePointContext) -> u32 {
    let _ = dup_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_fcntl")]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    let _ = dup_exit(&ctx);
    0
}
