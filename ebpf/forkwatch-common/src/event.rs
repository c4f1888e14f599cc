//! Events written by the probes into the `EVENTS` ring buffer.
//!
//! Every event starts with an [`EventHeader`]; its `kind` says which of the
//! structs below the record is. PIDs are thread-group ids (processes) in the
//! agent's pid namespace unless a field says `tid`.

use core::mem::size_of;

use crate::{COMM_LEN, FILENAME_LEN};

/// Stable event kind numbers. Never renumber or reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash))]
pub enum EventKind {
    /// A tracked process created a process or a thread ([`ForkEvent`]).
    Fork = 1,
    /// A tracked process exec'd, or a process became tracked by exec'ing a
    /// target comm / inside a target cgroup ([`ExecEvent`]).
    Exec = 2,
    /// The last thread of a tracked process exited ([`ExitEvent`]).
    Exit = 3,
    /// A tracked process was released (reaped), whoever reaped it ([`ReleaseEvent`]).
    Release = 4,
    /// A tracked process returned from wait4/waitid ([`WaitEvent`]).
    Wait = 5,
    /// A tracked process put a socket into the listening state ([`ListenEvent`]).
    Listen = 6,
    /// First accept/accept4 by a process on a tracked listening socket ([`FdEvent`]).
    Accept = 7,
    /// close() of an fd that refers to a tracked listening socket ([`FdEvent`]).
    ListenFdClose = 8,
    /// close_range() by a tracked process ([`CloseRangeEvent`]).
    CloseRange = 9,
    /// dup/dup2/dup3/fcntl(F_DUPFD*) copied or overwrote a listening-socket fd ([`DupEvent`]).
    ListenFdDup = 10,
    /// SIGCHLD generated for a tracked process ([`SigchldGenerateEvent`]).
    SigchldGenerate = 11,
    /// SIGCHLD delivered to a tracked process ([`SigchldDeliverEvent`]).
    SigchldDeliver = 12,
    /// A tracked process returned from a signal handler (rt_sigreturn) ([`EventHeader`] only).
    SignalReturn = 13,
    /// fork/vfork/clone/clone3 failed in a tracked process ([`ForkFailedEvent`]).
    ForkFailed = 14,
    /// A listening socket fd survived exec (no close-on-exec) ([`FdEvent`]).
    ExecListenFd = 15,
    /// prctl(PR_SET_CHILD_SUBREAPER) by a tracked process ([`SubreaperEvent`]).
    Subreaper = 16,
}

/// The largest kind number; sizes per-kind counter arrays.
pub const MAX_EVENT_KIND: u32 = 16;

impl EventKind {
    /// All kinds, in number order (for metric series initialised at zero).
    pub const ALL: [EventKind; MAX_EVENT_KIND as usize] = [
        EventKind::Fork,
        EventKind::Exec,
        EventKind::Exit,
        EventKind::Release,
        EventKind::Wait,
        EventKind::Listen,
        EventKind::Accept,
        EventKind::ListenFdClose,
        EventKind::CloseRange,
        EventKind::ListenFdDup,
        EventKind::SigchldGenerate,
        EventKind::SigchldDeliver,
        EventKind::SignalReturn,
        EventKind::ForkFailed,
        EventKind::ExecListenFd,
        EventKind::Subreaper,
    ];

    /// The snake_case name used in JSON (`kind` field) and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Fork => "fork",
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
            EventKind::Release => "release",
            EventKind::Wait => "wait",
            EventKind::Listen => "listen",
            EventKind::Accept => "accept",
            EventKind::ListenFdClose => "listen_fd_close",
            EventKind::CloseRange => "close_range",
            EventKind::ListenFdDup => "listen_fd_dup",
            EventKind::SigchldGenerate => "sigchld_generate",
            EventKind::SigchldDeliver => "sigchld_deliver",
            EventKind::SignalReturn => "signal_return",
            EventKind::ForkFailed => "fork_failed",
            EventKind::ExecListenFd => "exec_listen_fd",
            EventKind::Subreaper => "subreaper",
        }
    }
}

/// An event kind number the decoder does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownEventKind(pub u32);

impl TryFrom<u32> for EventKind {
    type Error = UnknownEventKind;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1..=MAX_EVENT_KIND => Ok(EventKind::ALL[(value - 1) as usize]),
            _ => Err(UnknownEventKind(value)),
        }
    }
}

/// Common header of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] number.
    pub kind: u32,
    /// The process the event is about (thread-group id).
    pub pid: u32,
    /// The thread that was running when the probe fired (0 when not meaningful).
    pub tid: u32,
    /// Index of the target ("server") the process was tracked for.
    pub server: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
}

/// `ForkEvent::flags`: the new task is a thread of the caller (CLONE_THREAD).
pub const FORK_THREAD: u32 = 1;
/// `ForkEvent::flags`: the kernel refused to track the child (map full).
pub const FORK_UNTRACKED: u32 = 2;

/// `header.pid` is the creating process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// Thread-group id of the new process (equal to `header.pid` for a thread).
    pub child_pid: u32,
    /// Thread id of the new task.
    pub child_tid: u32,
    /// The new task's real parent (differs from `header.pid` under CLONE_PARENT).
    pub parent_pid: u32,
    /// `FORK_*` bits.
    pub flags: u32,
    /// The child's start time, CLOCK_BOOTTIME ns (the base of /proc's starttime).
    pub child_start_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// `ExecEvent::flags`: the process became tracked by this exec (comm or cgroup match).
pub const EXEC_NEW_TARGET: u32 = 1;
/// `ExecEvent::flags`: the filename was longer than [`FILENAME_LEN`] and was cut.
pub const EXEC_FILENAME_TRUNCATED: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The thread id that called execve before it took over the leader's id.
    pub old_tid: u32,
    /// `EXEC_*` bits.
    pub flags: u32,
    /// Start time of the process, CLOCK_BOOTTIME ns (unchanged by exec).
    pub start_ns: u64,
    /// Parent at exec time.
    pub ppid: u32,
    pub _pad: u32,
    /// Name after exec.
    pub comm: [u8; COMM_LEN],
    /// NUL-terminated path given to execve (bprm->filename).
    pub filename: [u8; FILENAME_LEN],
}

impl Default for ExecEvent {
    fn default() -> Self {
        Self {
            header: EventHeader::default(),
            old_tid: 0,
            flags: 0,
            start_ns: 0,
            ppid: 0,
            _pad: 0,
            comm: [0; COMM_LEN],
            filename: [0; FILENAME_LEN],
        }
    }
}

/// The whole thread group of `header.pid` is dead; `header.tid` is the last thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// Parent when the process died (before any reparenting of it).
    pub ppid: u32,
    /// Wait status word as the kernel keeps it: `code << 8` or the signal number
    /// (| 0x80 for a core dump).
    pub exit_code: u32,
    pub start_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// `EXIT_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// `ExitEvent::flags`: the parent ignores SIGCHLD (SIG_IGN) or set
/// SA_NOCLDWAIT, so the kernel releases this process at once (auto-reap).
pub const EXIT_PARENT_AUTOREAPS: u32 = 1;

/// `header.pid` was released: its parent waited for it, the kernel auto-reaped
/// it, or its new parent (init, a subreaper) did. Fires from
/// `sched_process_free`, an RCU grace period after the release.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleaseEvent {
    pub header: EventHeader,
    /// The parent at release time: the process that reaped it (or whose
    /// SIGCHLD disposition auto-reaped it).
    pub reaper: u32,
    pub exit_code: u32,
    pub start_ns: u64,
}

/// `WaitEvent::syscall`
pub const WAIT_SYSCALL_WAIT4: u32 = 1;
/// `WaitEvent::syscall`
pub const WAIT_SYSCALL_WAITID: u32 = 2;

/// `WaitEvent::flags`: `status` holds a valid wait status word.
pub const WAIT_HAVE_STATUS: u32 = 1;

/// A wait4/waitid call by `header.pid` returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitEvent {
    pub header: EventHeader,
    /// `WAIT_SYSCALL_*`.
    pub syscall: u32,
    /// `WAIT_*` bits.
    pub flags: u32,
    /// wait4's pid argument, or waitid's `id` argument.
    pub id: i32,
    /// waitid's `which` (P_ALL=0, P_PID=1, P_PGID=2, P_PIDFD=3); 0 for wait4.
    pub which: u32,
    /// The options argument (WNOHANG, WNOWAIT, WEXITED, ...).
    pub options: u32,
    /// The child reported: wait4's return value, or waitid's `si_pid`; 0 if none.
    pub child: u32,
    /// The syscall's return value (negative errno on failure).
    pub ret: i64,
    /// Wait status word (`WIFEXITED` etc. apply) when `WAIT_HAVE_STATUS`.
    pub status: u32,
    /// waitid's `si_code` (CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3, ...); 0 for wait4.
    pub si_code: i32,
}

/// `ListenEvent::family`
pub const AF_INET: u16 = 2;
/// `ListenEvent::family`
pub const AF_INET6: u16 = 10;

/// listen() succeeded on `fd` in `header.pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenEvent {
    pub header: EventHeader,
    pub fd: u32,
    pub backlog: u32,
    /// The socket's inode: `socket:[INODE]` in /proc/PID/fd.
    pub inode: u64,
    /// Local port, host byte order (0 for non-inet sockets).
    pub port: u16,
    /// Address family (AF_INET, AF_INET6, AF_UNIX=1, ...).
    pub family: u16,
    pub _pad: u32,
}

/// An fd of `header.pid` that refers to the listening socket `inode`:
/// accepted on ([`EventKind::Accept`]), closed ([`EventKind::ListenFdClose`]),
/// or still open after exec ([`EventKind::ExecListenFd`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdEvent {
    pub header: EventHeader,
    pub fd: u32,
    pub _pad: u32,
    pub inode: u64,
}

/// close_range(first, last, flags) by `header.pid`. The probes cannot walk
/// the range, so the agent applies it to the fds it knows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseRangeEvent {
    pub header: EventHeader,
    pub first: u32,
    pub last: u32,
    /// CLOSE_RANGE_UNSHARE=2, CLOSE_RANGE_CLOEXEC=4.
    pub flags: u32,
    /// The syscall's return value (the range is closed only on 0).
    pub ret: i32,
}

/// `DupEvent::syscall`
pub const DUP_SYSCALL_DUP: u32 = 1;
/// `DupEvent::syscall`
pub const DUP_SYSCALL_DUP2: u32 = 2;
/// `DupEvent::syscall`
pub const DUP_SYSCALL_DUP3: u32 = 3;
/// `DupEvent::syscall`
pub const DUP_SYSCALL_FCNTL: u32 = 4;

/// A dup-family call by `header.pid` copied a listening-socket fd, or replaced
/// one (dup2/dup3 onto an fd that held a listening socket closes it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DupEvent {
    pub header: EventHeader,
    /// `DUP_SYSCALL_*`.
    pub syscall: u32,
    pub oldfd: u32,
    /// The new fd (the syscall's return value).
    pub newfd: u32,
    pub _pad: u32,
    /// Listening socket behind `oldfd` (0 if `oldfd` is not one).
    pub inode: u64,
    /// Listening socket that `newfd` referred to before and that the call
    /// closed (0 if none).
    pub replaced_inode: u64,
}

/// SIGCHLD generated for `header.pid` (the parent); `header.tid` is the
/// receiving thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigchldGenerateEvent {
    pub header: EventHeader,
    /// The process that was running when the signal was generated (usually
    /// the child that exited).
    pub sender: u32,
    /// `si_pid` of the signal (the child it is about), 0 if not available.
    pub child: u32,
    /// TRACE_SIGNAL_*: 0 delivered, 1 ignored, 2 already pending (coalesced),
    /// 3 overflow, 4 lose info.
    pub result: i32,
    /// `si_code` (CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3, CLD_STOPPED=5, ...).
    pub code: i32,
}

/// TRACE_SIGNAL_* values of `SigchldGenerateEvent::result`.
pub const SIGNAL_RESULT_DELIVERED: i32 = 0;
/// The signal is ignored by the receiver (SIG_IGN, or SIG_DFL for SIGCHLD).
pub const SIGNAL_RESULT_IGNORED: i32 = 1;
/// The signal was already pending: this one is coalesced into it.
pub const SIGNAL_RESULT_ALREADY_PENDING: i32 = 2;

/// SIGCHLD is being delivered to `header.tid` of `header.pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigchldDeliverEvent {
    pub header: EventHeader,
    /// sa_handler: 0 SIG_DFL, 1 SIG_IGN, otherwise a handler address (a handler run).
    pub handler: u64,
    pub sa_flags: u64,
}

/// `ForkFailedEvent::syscall`
pub const FORK_SYSCALL_CLONE: u32 = 1;
/// `ForkFailedEvent::syscall`
pub const FORK_SYSCALL_CLONE3: u32 = 2;
/// `ForkFailedEvent::syscall`
pub const FORK_SYSCALL_FORK: u32 = 3;
/// `ForkFailedEvent::syscall`
pub const FORK_SYSCALL_VFORK: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkFailedEvent {
    pub header: EventHeader,
    /// `FORK_SYSCALL_*`.
    pub syscall: u32,
    /// Positive errno (EAGAIN=11, ENOMEM=12, ...).
    pub errno: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubreaperEvent {
    pub header: EventHeader,
    /// prctl's second argument: non-zero sets the subreaper bit, zero clears it.
    pub enabled: u32,
    pub _pad: u32,
}

/// Size in bytes of the record a kind is written as.
pub const fn event_size(kind: EventKind) -> usize {
    match kind {
        EventKind::Fork => size_of::<ForkEvent>(),
        EventKind::Exec => size_of::<ExecEvent>(),
        EventKind::Exit => size_of::<ExitEvent>(),
        EventKind::Release => size_of::<ReleaseEvent>(),
        EventKind::Wait => size_of::<WaitEvent>(),
        EventKind::Listen => size_of::<ListenEvent>(),
        EventKind::Accept | EventKind::ListenFdClose | EventKind::ExecListenFd => {
            size_of::<FdEvent>()
        }
        EventKind::CloseRange => size_of::<CloseRangeEvent>(),
        EventKind::ListenFdDup => size_of::<DupEvent>(),
        EventKind::SigchldGenerate => size_of::<SigchldGenerateEvent>(),
        EventKind::SigchldDeliver => size_of::<SigchldDeliverEvent>(),
        EventKind::SignalReturn => size_of::<EventHeader>(),
        EventKind::ForkFailed => size_of::<ForkFailedEvent>(),
        EventKind::Subreaper => size_of::<SubreaperEvent>(),
    }
}

// Layout is ABI: these fail the build if a struct changes size by accident.
const _: () = assert!(size_of::<EventHeader>() == 24);
const _: () = assert!(size_of::<ForkEvent>() == 64);
const _: () = assert!(size_of::<ExecEvent>() == 192);
const _: () = assert!(size_of::<ExitEvent>() == 64);
const _: () = assert!(size_of::<ReleaseEvent>() == 40);
const _: () = assert!(size_of::<WaitEvent>() == 64);
const _: () = assert!(size_of::<ListenEvent>() == 48);
const _: () = assert!(size_of::<FdEvent>() == 40);
const _: () = assert!(size_of::<CloseRangeEvent>() == 40);
const _: () = assert!(size_of::<DupEvent>() == 56);
const _: () = assert!(size_of::<SigchldGenerateEvent>() == 40);
const _: () = assert!(size_of::<SigchldDeliverEvent>() == 40);
const _: () = assert!(size_of::<ForkFailedEvent>() == 32);
const _: () = assert!(size_of::<SubreaperEvent>() == 32);
