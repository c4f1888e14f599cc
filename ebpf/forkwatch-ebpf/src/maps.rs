//! The maps shared with the agent. Sizes are defaults; the agent may resize
//! them before load (`--max-processes`, `--ring-buffer-size`).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use forkwatch_common::{AcceptKey, COMM_LEN, ListenSocket, Target, Tracked, counter};

/// Events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Tracked processes, by thread-group id in the agent's pid namespace.
#[map]
pub static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(131_072, 0);

/// Processes whose last thread exited and that are not released yet, by
/// *global* tgid, because `sched_process_free` runs after the task's pid
/// links are gone and only its global ids can be read. LRU: a zombie that
/// is never reaped cannot pin an entry forever.
#[map]
pub static EXITED: LruHashMap<u32, Exited> = LruHashMap::with_max_entries(131_072, 0);

/// Listening sockets of tracked processes, by socket inode.
#[map]
pub static LISTEN_SOCKETS: HashMap<u64, ListenSocket> = HashMap::with_max_entries(4096, 0);

/// (process, listening socket) pairs that already reported an accept.
#[map]
pub static ACCEPTED: LruHashMap<AcceptKey, u8> = LruHashMap::with_max_entries(16_384, 0);

/// Comms that make a process tracked when it execs (`--comm`).
#[map]
pub static COMM_TARGETS: HashMap<[u8; COMM_LEN], Target> = HashMap::with_max_entries(64, 0);

/// Cgroup v2 ids whose processes (and descendant cgroups') are tracked when
/// they exec (`--cgroup`).
#[map]
pub static CGROUP_TARGETS: HashMap<u64, Target> = HashMap::with_max_entries(64, 0);

/// Syscall arguments stashed at sys_enter for the matching sys_exit, by
/// global pid_tgid (one in-flight syscall per thread).
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16_384, 0);

/// Per-CPU counters: lost events per kind, map-full and read errors.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Exited {
    pub pid: u32,
    pub server: u32,
    pub start_ns: u64,
}

/// Which syscall a [`Pending`] entry belongs to.
pub mod pending {
    pub const WAIT4: u32 = 1;
    pub const WAITID: u32 = 2;
    pub const LISTEN: u32 = 3;
    pub const CLOSE_RANGE: u32 = 4;
    pub const DUP: u32 = 5;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub syscall: u32,
    pub server: u32,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
