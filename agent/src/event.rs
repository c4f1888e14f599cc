//! The events the probes report, decoded from the ring buffer's bytes into
//! plain Rust values. Pure: no I/O, so the decoder is table-tested and
//! fuzzable, and the process model consumes these types directly.

use forkwatch_common as wire;
use serde::Serialize;
use thiserror::Error;

/// A decoded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds when the probe fired.
    pub ts_ns: u64,
    /// The process the event is about (thread-group id).
    pub pid: u32,
    /// The thread that was running (0 when not meaningful).
    pub tid: u32,
    /// Index of the target the process is tracked for.
    #[serde(skip)]
    pub server: u32,
    #[serde(flatten)]
    pub body: Body,
}

/// How a process ended, decoded from a wait status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum ExitStatus {
    /// `exit(code)` / `_exit(code)` / return from main.
    Exited { code: i32 },
    /// Killed by a signal.
    Signaled { signal: i32, core_dumped: bool },
    /// Stopped (WUNTRACED), not an exit.
    Stopped { signal: i32 },
    /// Continued (WCONTINUED), not an exit.
    Continued,
}

impl ExitStatus {
    /// Decodes a wait status word (the value wait4 stores, and the kernel's
    /// `task->exit_code`).
    pub fn from_wait_status(raw: u32) -> Self {
        let low = raw & 0x7f;
        if raw == 0xffff {
            ExitStatus::Continued
        } else if raw & 0xff == 0x7f {
            ExitStatus::Stopped {
                signal: ((raw >> 8) & 0xff) as i32,
            }
        } else if low == 0 {
            ExitStatus::Exited {
                code: ((raw >> 8) & 0xff) as i32,
            }
        } else {
            ExitStatus::Signaled {
                signal: low as i32,
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    /// Decodes waitid's `si_code` / `si_status` pair.
    pub fn from_siginfo(si_code: i32, si_status: u32) -> Option<Self> {
        let status = si_status as i32;
        Some(match si_code {
            CLD_EXITED => ExitStatus::Exited { code: status },
            CLD_KILLED => ExitStatus::Signaled {
                signal: status,
                core_dumped: false,
            },
            CLD_DUMPED => ExitStatus::Signaled {
                signal: status,
                core_dumped: true,
            },
            CLD_STOPPED | CLD_TRAPPED => ExitStatus::Stopped { signal: status },
            CLD_CONTINUED => ExitStatus::Continued,
            _ => return None,
        })
    }

    /// Whether this status reports the end of the process (so a wait that
    /// returned it reaped the child, unless WNOWAIT).
    pub fn is_exit(self) -> bool {
        matches!(
            self,
            ExitStatus::Exited { .. } | ExitStatus::Signaled { .. }
        )
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited { code } => write!(f, "exit code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(*signal))?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            ExitStatus::Stopped { signal } => write!(f, "stopped by {}", signal_name(*signal)),
            ExitStatus::Continued => f.write_str("continued"),
        }
    }
}

/// `si_code` values for SIGCHLD (include/uapi/asm-generic/siginfo.h).
pub const CLD_EXITED: i32 = 1;
pub const CLD_KILLED: i32 = 2;
pub const CLD_DUMPED: i32 = 3;
pub const CLD_TRAPPED: i32 = 4;
pub const CLD_STOPPED: i32 = 5;
pub const CLD_CONTINUED: i32 = 6;

/// waitid's option that leaves the child waitable (no reap).
pub const WNOWAIT: u32 = 0x0100_0000;
/// Report stopped children too.
pub const WUNTRACED: u32 = 2;
/// Report continued children too.
pub const WCONTINUED: u32 = 8;

/// A signal's name, e.g. `SIGKILL` (or `signal 42`).
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Which wait syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitSyscall {
    Wait4,
    Waitid,
}

/// Which dup-family call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DupSyscall {
    Dup,
    Dup2,
    Dup3,
    Fcntl,
}

/// Which fork-family call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkSyscall {
    Clone,
    Clone3,
    Fork,
    Vfork,
}

/// What happened to a generated SIGCHLD (the kernel's TRACE_SIGNAL_* result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalResult {
    /// Queued for delivery.
    Delivered,
    /// Discarded: the receiver ignores it (SIG_IGN, or SIG_DFL for SIGCHLD).
    Ignored,
    /// One is already pending: this one merges into it (coalesced).
    AlreadyPending,
    /// Any other result code.
    Other,
}

/// What the event says, by kind. Serialised with a `kind` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// `pid` created a process (or a thread, `thread: true`).
    Fork {
        child: u32,
        child_tid: u32,
        /// The child's real parent (differs from `pid` under CLONE_PARENT).
        parent: u32,
        thread: bool,
        /// The kernel could not track the child (its table was full).
        untracked: bool,
        /// CLOCK_BOOTTIME ns; with `child`, the child's identity.
        child_start_ns: u64,
        comm: String,
    },
    /// `pid` exec'd `filename`; `new_target`: it became tracked by doing so.
    Exec {
        old_tid: u32,
        new_target: bool,
        start_ns: u64,
        ppid: u32,
        comm: String,
        filename: String,
        filename_truncated: bool,
    },
    /// The last thread of `pid` exited.
    Exit {
        ppid: u32,
        status: ExitStatus,
        start_ns: u64,
        comm: String,
        /// The parent ignores SIGCHLD or set SA_NOCLDWAIT: the kernel
        /// releases this process at once.
        autoreaped: bool,
    },
    /// `pid` was released; `reaper` is its parent at that moment.
    Release {
        reaper: u32,
        status: ExitStatus,
        start_ns: u64,
    },
    /// A wait4/waitid call of `pid` returned.
    Wait {
        syscall: WaitSyscall,
        /// wait4's pid argument or waitid's id.
        id: i32,
        /// waitid's idtype (P_ALL=0, P_PID=1, P_PGID=2, P_PIDFD=3).
        which: u32,
        options: u32,
        /// The child reported (0: none).
        child: u32,
        /// Return value (negative errno on failure).
        ret: i64,
        status: Option<ExitStatus>,
    },
    /// listen() succeeded on `fd`.
    Listen {
        fd: u32,
        backlog: u32,
        inode: u64,
        port: u16,
        family: u16,
    },
    /// First accept by `pid` on the listening socket `inode`.
    Accept { fd: u32, inode: u64 },
    /// `pid` closed `fd`, which referred to the listening socket `inode`.
    ListenFdClose { fd: u32, inode: u64 },
    /// close_range() by `pid`.
    CloseRange {
        first: u32,
        last: u32,
        flags: u32,
        ret: i32,
    },
    /// A dup-family call copied (`inode`) or overwrote (`replaced_inode`) a
    /// listening-socket fd.
    ListenFdDup {
        syscall: DupSyscall,
        oldfd: u32,
        newfd: u32,
        inode: u64,
        replaced_inode: u64,
    },
    /// SIGCHLD generated for `pid`.
    SigchldGenerate {
        sender: u32,
        child: u32,
        result: SignalResult,
        code: i32,
    },
    /// SIGCHLD delivered to `pid`; `handler` is the sa_handler (0 SIG_DFL, 1 SIG_IGN).
    SigchldDeliver { handler: u64, sa_flags: u64 },
    /// A signal handler of `pid` returned.
    SignalReturn,
    /// A fork-family call of `pid` failed with `errno`.
    ForkFailed { syscall: ForkSyscall, errno: u32 },
    /// The listening socket `inode` is still open on `fd` after exec.
    ExecListenFd { fd: u32, inode: u64 },
    /// prctl(PR_SET_CHILD_SUBREAPER, enabled).
    Subreaper { enabled: bool },
}

impl Body {
    /// The wire kind of this body.
    pub fn kind(&self) -> wire::EventKind {
        use wire::EventKind as K;
        match self {
            Body::Fork { .. } => K::Fork,
            Body::Exec { .. } => K::Exec,
            Body::Exit { .. } => K::Exit,
            Body::Release { .. } => K::Release,
            Body::Wait { .. } => K::Wait,
            Body::Listen { .. } => K::Listen,
            Body::Accept { .. } => K::Accept,
            Body::ListenFdClose { .. } => K::ListenFdClose,
            Body::CloseRange { .. } => K::CloseRange,
            Body::ListenFdDup { .. } => K::ListenFdDup,
            Body::SigchldGenerate { .. } => K::SigchldGenerate,
            Body::SigchldDeliver { .. } => K::SigchldDeliver,
            Body::SignalReturn => K::SignalReturn,
            Body::ForkFailed { .. } => K::ForkFailed,
            Body::ExecListenFd { .. } => K::ExecListenFd,
            Body::Subreaper { .. } => K::Subreaper,
        }
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Shorter than the header.
    #[error("record of {0} bytes is shorter than an event header")]
    NoHeader(usize),
    /// A kind number this agent does not know (probes newer than the agent?).
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// Shorter than its kind's struct.
    #[error("{kind} record of {len} bytes, expected {want}")]
    Short {
        kind: &'static str,
        len: usize,
        want: usize,
    },
}

/// Reads a `T` from the front of `bytes` (length checked by the caller).
fn read<T: Copy>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= size_of::<T>());
    // SAFETY: length checked; `T` is a repr(C) plain-old-data wire struct for
    // which every bit pattern is valid; read_unaligned needs no alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// Text from a NUL-padded kernel buffer.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn signal_result(r: i32) -> SignalResult {
    match r {
        wire::SIGNAL_RESULT_DELIVERED => SignalResult::Delivered,
        wire::SIGNAL_RESULT_IGNORED => SignalResult::Ignored,
        wire::SIGNAL_RESULT_ALREADY_PENDING => SignalResult::AlreadyPending,
        _ => SignalResult::Other,
    }
}

impl Event {
    /// Decodes one ring-buffer record. Malformed input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < size_of::<wire::EventHeader>() {
            return Err(DecodeError::NoHeader(bytes.len()));
        }
        let h: wire::EventHeader = read(bytes);
        let kind = wire::EventKind::try_from(h.kind).map_err(|e| DecodeError::UnknownKind(e.0))?;
        let want = wire::event_size(kind);
        if bytes.len() < want {
            return Err(DecodeError::Short {
                kind: kind.name(),
                len: bytes.len(),
                want,
            });
        }
        use wire::EventKind as K;
        let body = match kind {
            K::Fork => {
                let e: wire::ForkEvent = read(bytes);
                Body::Fork {
                    child: e.child_pid,
                    child_tid: e.child_tid,
                    parent: e.parent_pid,
                    thread: e.flags & wire::FORK_THREAD != 0,
                    untracked: e.flags & wire::FORK_UNTRACKED != 0,
                    child_start_ns: e.child_start_ns,
                    comm: cstr(&e.comm),
                }
            }
            K::Exec => {
                let e: wire::ExecEvent = read(bytes);
                Body::Exec {
                    old_tid: e.old_tid,
                    new_target: e.flags & wire::EXEC_NEW_TARGET != 0,
                    start_ns: e.start_ns,
                    ppid: e.ppid,
                    comm: cstr(&e.comm),
                    filename: cstr(&e.filename),
                    filename_truncated: e.flags & wire::EXEC_FILENAME_TRUNCATED != 0,
                }
            }
            K::Exit => {
                let e: wire::ExitEvent = read(bytes);
                Body::Exit {
                    ppid: e.ppid,
                    status: ExitStatus::from_wait_status(e.exit_code),
                    start_ns: e.start_ns,
                    comm: cstr(&e.comm),
                    autoreaped: e.flags & wire::EXIT_PARENT_AUTOREAPS != 0,
                }
            }
            K::Release => {
                let e: wire::ReleaseEvent = read(bytes);
                Body::Release {
                    reaper: e.reaper,
                    status: ExitStatus::from_wait_status(e.exit_code),
                    start_ns: e.start_ns,
                }
            }
            K::Wait => {
                let e: wire::WaitEvent = read(bytes);
                let (syscall, status) = if e.syscall == wire::WAIT_SYSCALL_WAITID {
                    let status = (e.flags & wire::WAIT_HAVE_STATUS != 0 && e.child != 0)
                        .then(|| ExitStatus::from_siginfo(e.si_code, e.status))
                        .flatten();
                    (WaitSyscall::Waitid, status)
                } else {
                    let status = (e.flags & wire::WAIT_HAVE_STATUS != 0)
                        .then(|| ExitStatus::from_wait_status(e.status));
                    (WaitSyscall::Wait4, status)
                };
                Body::Wait {
                    syscall,
                    id: e.id,
                    which: e.which,
                    options: e.options,
                    child: e.child,
                    ret: e.ret,
                    status,
                }
            }
            K::Listen => {
                let e: wire::ListenEvent = read(bytes);
                Body::Listen {
                    fd: e.fd,
                    backlog: e.backlog,
                    inode: e.inode,
                    port: e.port,
                    family: e.family,
                }
            }
            K::Accept | K::ListenFdClose | K::ExecListenFd => {
                let e: wire::FdEvent = read(bytes);
                let (fd, inode) = (e.fd, e.inode);
                match kind {
                    K::Accept => Body::Accept { fd, inode },
                    K::ListenFdClose => Body::ListenFdClose { fd, inode },
                    _ => Body::ExecListenFd { fd, inode },
                }
            }
            K::CloseRange => {
                let e: wire::CloseRangeEvent = read(bytes);
                Body::CloseRange {
                    first: e.first,
                    last: e.last,
                    flags: e.flags,
                    ret: e.ret,
                }
            }
            K::ListenFdDup => {
                let e: wire::DupEvent = read(bytes);
                Body::ListenFdDup {
                    syscall: match e.syscall {
                        wire::DUP_SYSCALL_DUP2 => DupSyscall::Dup2,
                        wire::DUP_SYSCALL_DUP3 => DupSyscall::Dup3,
                        wire::DUP_SYSCALL_FCNTL => DupSyscall::Fcntl,
                        _ => DupSyscall::Dup,
                    },
                    oldfd: e.oldfd,
                    newfd: e.newfd,
                    inode: e.inode,
                    replaced_inode: e.replaced_inode,
                }
            }
            K::SigchldGenerate => {
                let e: wire::SigchldGenerateEvent = read(bytes);
                Body::SigchldGenerate {
                    sender: e.sender,
                    child: e.child,
                    result: signal_result(e.result),
                    code: e.code,
                }
            }
            K::SigchldDeliver => {
                let e: wire::SigchldDeliverEvent = read(bytes);
                Body::SigchldDeliver {
                    handler: e.handler,
                    sa_flags: e.sa_flags,
                }
            }
            K::SignalReturn => Body::SignalReturn,
            K::ForkFailed => {
                let e: wire::ForkFailedEvent = read(bytes);
                Body::ForkFailed {
                    syscall: match e.syscall {
                        wire::FORK_SYSCALL_CLONE3 => ForkSyscall::Clone3,
                        wire::FORK_SYSCALL_FORK => ForkSyscall::Fork,
                        wire::FORK_SYSCALL_VFORK => ForkSyscall::Vfork,
                        _ => ForkSyscall::Clone,
                    },
                    errno: e.errno,
                }
            }
            K::Subreaper => {
                let e: wire::SubreaperEvent = read(bytes);
                Body::Subreaper {
                    enabled: e.enabled != 0,
                }
            }
        };
        Ok(Event {
            ts_ns: h.ts_ns,
            pid: h.pid,
            tid: h.tid,
            server: h.server,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: viewing a repr(C) POD value as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: wire::EventKind, pid: u32) -> wire::EventHeader {
        wire::EventHeader {
            kind: kind as u32,
            pid,
            tid: pid,
            server: 0,
            ts_ns: 42,
        }
    }

    #[test]
    fn decodes_a_fork() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"echo");
        let e = wire::ForkEvent {
            header: header(wire::EventKind::Fork, 10),
            child_pid: 11,
            child_tid: 11,
            parent_pid: 10,
            flags: 0,
            child_start_ns: 7,
            comm,
        };
        let ev = Event::decode(&bytes(&e)).unwrap();
        assert_eq!(ev.pid, 10);
        assert_eq!(
            ev.body,
            Body::Fork {
                child: 11,
                child_tid: 11,
                parent: 10,
                thread: false,
                untracked: false,
                child_start_ns: 7,
                comm: "echo".into()
            }
        );
    }

    #[test]
    fn decodes_wait_statuses() {
        let mut e = wire::WaitEvent {
            header: header(wire::EventKind::Wait, 10),
            syscall: wire::WAIT_SYSCALL_WAIT4,
            flags: wire::WAIT_HAVE_STATUS,
            id: -1,
            which: 0,
            options: 1,
            child: 11,
            ret: 11,
            status: 3 << 8,
            si_code: 0,
        };
        let Body::Wait { status, .. } = Event::decode(&bytes(&e)).unwrap().body else {
            panic!()
        };
        assert_eq!(status, Some(ExitStatus::Exited { code: 3 }));
        e.syscall = wire::WAIT_SYSCALL_WAITID;
        e.si_code = CLD_KILLED;
        e.status = 9;
        let Body::Wait { status, .. } = Event::decode(&bytes(&e)).unwrap().body else {
            panic!()
        };
        assert_eq!(
            status,
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
    }

    #[test]
    fn wait_status_words() {
        assert_eq!(
            ExitStatus::from_wait_status(0),
            ExitStatus::Exited { code: 0 }
        );
        assert_eq!(
            ExitStatus::from_wait_status(0x0100),
            ExitStatus::Exited { code: 1 }
        );
        assert_eq!(
            ExitStatus::from_wait_status(0x8b),
            ExitStatus::Signaled {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(0x137f),
            ExitStatus::Stopped { signal: 19 }
        );
        assert_eq!(ExitStatus::from_wait_status(0xffff), ExitStatus::Continued);
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(Event::decode(&[]), Err(DecodeError::NoHeader(0)));
        let mut h = bytes(&header(wire::EventKind::Fork, 1));
        assert!(matches!(Event::decode(&h), Err(DecodeError::Short { .. })));
        h[0] = 99;
        assert_eq!(Event::decode(&h), Err(DecodeError::UnknownKind(99)));
    }

    proptest::proptest! {
        /// Any bytes decode to an event or an error, never a panic; a known
        /// kind with a full-size record always decodes.
        #[test]
        fn hostile_records_do_not_panic(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), kind in 0u32..20) {
            let _ = Event::decode(&bytes);
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&kind.to_le_bytes());
                let decoded = Event::decode(&bytes);
                if let Ok(k) = wire::EventKind::try_from(kind) {
                    proptest::prop_assert_eq!(decoded.is_ok(), bytes.len() >= wire::event_size(k));
                } else {
                    proptest::prop_assert!(decoded.is_err());
                }
            }
        }
    }

    #[test]
    fn every_kind_decodes_from_zeroed_bytes() {
        for kind in wire::EventKind::ALL {
            let mut b = vec![0u8; wire::event_size(kind)];
            b[..4].copy_from_slice(&(kind as u32).to_le_bytes());
            let ev = Event::decode(&b).unwrap();
            assert_eq!(ev.body.kind(), kind);
        }
    }
}
