//! Reading the kernel's task, file and pid structures at the offsets the agent
//! found in BTF, and translating kernel pids into the agent's pid namespace.

use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
        generated::bpf_get_ns_current_pid_tgid,
    },
};

use crate::{config, maps::LISTEN_SOCKETS};
use forkwatch_common::ListenSocket;

/// `PF_KTHREAD` in `task_struct.flags` (stable since 2.6).
const PF_KTHREAD: u32 = 0x0020_0000;

pub type Task = *const u8;

/// Reads a `T` at `base + off`. Errors (a bad pointer) become `None`.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()).ok() }
}

#[inline(always)]
pub fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    read::<u64>(base, off).map(|p| p as usize as *const u8)
}

#[inline(always)]
pub fn current_task() -> Task {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() as usize as Task }
}

/// The global (initial pid namespace) tgid of the current task.
#[inline(always)]
pub fn current_global_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// (tgid, tid) of the current task in the agent's pid namespace; `None` when
/// the task is not visible there.
#[inline(always)]
pub fn current_ids() -> Option<(u32, u32)> {
    if config!(pidns_nested) == 0 {
        let v = bpf_get_current_pid_tgid();
        return Some(((v >> 32) as u32, v as u32));
    }
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a valid out-pointer of the size given.
    let ret = unsafe {
        bpf_get_ns_current_pid_tgid(
            config!(pidns_dev),
            config!(pidns_ino),
            &mut info,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    (ret == 0).then_some((info.tgid, info.pid))
}

/// Deepest pid namespace nesting the probes look through (the kernel allows
/// 32; container runtimes nest one or two).
const MAX_PIDNS_LEVELS: u32 = 8;

/// The number of `struct pid *pid` in the agent's pid namespace, like the
/// kernel's `pid_nr_ns`: the `upid` whose namespace is the agent's.
#[inline(always)]
fn pid_nr_in_agent_ns(pid: *const u8) -> Option<u32> {
    let pid_level: u32 = read(pid, config!(kernel.pid_level))?;
    for level in 0..MAX_PIDNS_LEVELS {
        if level > pid_level {
            break;
        }
        let upid = pid.wrapping_add(
            (config!(kernel.pid_numbers) + level * config!(kernel.upid_size)) as usize,
        );
        let ns = read_ptr(upid, config!(kernel.upid_ns))?;
        let inum: u32 = read(ns, config!(kernel.pidns_inum))?;
        if u64::from(inum) == config!(pidns_ino) {
            return read(upid, config!(kernel.upid_nr));
        }
    }
    None
}

/// (tgid, tid) of `task` in the agent's pid namespace.
#[inline(always)]
pub fn task_ids(task: Task) -> Option<(u32, u32)> {
    if config!(pidns_nested) == 0 {
        let tgid: u32 = read(task, config!(kernel.task_tgid))?;
        let tid: u32 = read(task, config!(kernel.task_pid))?;
        return Some((tgid, tid));
    }
    let tid = pid_nr_in_agent_ns(read_ptr(task, config!(kernel.task_thread_pid))?)?;
    let leader = read_ptr(task, config!(kernel.task_group_leader))?;
    let tgid = pid_nr_in_agent_ns(read_ptr(leader, config!(kernel.task_thread_pid))?)?;
    Some((tgid, tid))
}

/// The tgid of `task`'s real parent (0 when not visible to the agent).
#[inline(always)]
pub fn parent_tgid(task: Task) -> u32 {
    read_ptr(task, config!(kernel.task_real_parent))
        .and_then(task_ids)
        .map_or(0, |(tgid, _)| tgid)
}

#[inline(always)]
pub fn is_kthread(task: Task) -> bool {
    read::<u32>(task, config!(kernel.task_flags)).is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Start time (CLOCK_BOOTTIME ns) of the process `task` belongs to.
#[inline(always)]
pub fn process_start_ns(task: Task) -> u64 {
    read_ptr(task, config!(kernel.task_group_leader))
        .and_then(|leader| read(leader, config!(kernel.task_start_boottime)))
        .unwrap_or(0)
}

/// Two start times name the same process when they fall in the same clock
/// tick: /proc reports start times in ticks (USER_HZ, 100/s), and the agent
/// seeds processes it found in /proc with tick precision.
#[inline(always)]
pub fn same_start(a: u64, b: u64) -> bool {
    a / 10_000_000 == b / 10_000_000
}

/// The `struct file *` behind `fd` in the current task's fd table.
#[inline(always)]
pub fn current_file(fd: u32) -> Option<*const u8> {
    file_of(current_task(), fd)
}

#[inline(always)]
fn fd_array(task: Task) -> Option<(*const u8, u32)> {
    let files = read_ptr(task, config!(kernel.task_files))?;
    let fdt = read_ptr(files, config!(kernel.files_fdt))?;
    let max_fds: u32 = read(fdt, config!(kernel.fdtable_max_fds))?;
    let fds = read_ptr(fdt, config!(kernel.fdtable_fd))?;
    Some((fds, max_fds))
}

#[inline(always)]
fn file_of(task: Task, fd: u32) -> Option<*const u8> {
    let (fds, max_fds) = fd_array(task)?;
    if fd >= max_fds {
        return None;
    }
    let file = read_ptr(fds, fd.wrapping_mul(8))?;
    (!file.is_null()).then_some(file)
}

#[inline(always)]
pub fn file_inode(file: *const u8) -> Option<u64> {
    let inode = read_ptr(file, config!(kernel.file_f_inode))?;
    read(inode, config!(kernel.inode_i_ino))
}

/// Inode of the listening socket behind the current task's `fd`, if it is
/// one the agent tracks.
#[inline(always)]
pub fn current_listen_inode(fd: u32) -> Option<u64> {
    let inode = file_inode(current_file(fd)?)?;
    // SAFETY: read-only use of a map value copied out immediately.
    unsafe { LISTEN_SOCKETS.get(&inode) }.map(|_| inode)
}

/// Local port and family of the socket behind `file` (struct socket in
/// `file->private_data`).
#[inline(always)]
pub fn socket_port_family(file: *const u8) -> (u16, u16) {
    let sk = read_ptr(file, config!(kernel.file_private_data))
        .and_then(|sock| read_ptr(sock, config!(kernel.socket_sk)));
    let Some(sk) = sk else { return (0, 0) };
    let port: u16 = read(sk, config!(kernel.sock_num)).unwrap_or(0);
    let family: u16 = read(sk, config!(kernel.sock_family)).unwrap_or(0);
    (port, family)
}

/// How many fds of an exec'ing process are checked for listening sockets
/// that survived exec. Listening sockets sit at low fd numbers in practice;
/// the bound keeps the verifier's work and the probe's cost fixed.
pub const EXEC_FD_SCAN: u32 = 256;

/// Calls `found(fd, inode)` for each of the first [`EXEC_FD_SCAN`] fds of
/// the current task that refers to a tracked listening socket.
#[inline(always)]
pub fn scan_listen_fds(mut found: impl FnMut(u32, u64, &ListenSocket)) {
    let Some((fds, max_fds)) = fd_array(current_task()) else {
        return;
    };
    for fd in 0..EXEC_FD_SCAN {
        if fd >= max_fds {
            break;
        }
        let Some(file) = read_ptr(fds, fd * 8) else {
            continue;
        };
        if file.is_null() {
            continue;
        }
        let Some(inode) = file_inode(file) else {
            continue;
        };
        // SAFETY: read-only use of a map value.
        if let Some(sock) = unsafe { LISTEN_SOCKETS.get(&inode) } {
            found(fd, inode, sock);
        }
    }
}
