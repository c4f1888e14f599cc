//! Values of the maps shared by the probes and the agent, and the indices of
//! the probes' own counters.

use core::mem::size_of;

/// Value of the `TRACKED` map (key: thread-group id in the agent's pid namespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// CLOCK_BOOTTIME ns the process started at: with the pid, its identity
    /// (a release only untracks the process it is about, not a newer one that
    /// reused the pid).
    pub start_ns: u64,
    /// Index of the target ("server") this process belongs to.
    pub server: u32,
    pub _pad: u32,
}

/// Value of the `LISTEN_SOCKETS` map (key: socket inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenSocket {
    pub server: u32,
    pub port: u16,
    pub family: u16,
}

/// Key of the `ACCEPTED` LRU map: "process `pid` (started `start_ns`) already
/// reported an accept on socket `inode`", so a pre-fork worker costs one event,
/// not one per connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptKey {
    pub inode: u64,
    pub start_ns: u64,
    pub pid: u32,
    pub _pad: u32,
}

/// Value of the `COMM_TARGETS` map (key: `[u8; COMM_LEN]`, NUL-padded) and of
/// `CGROUP_TARGETS` (key: cgroup v2 id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub server: u32,
}

/// Indices into the per-CPU `COUNTERS` array. Indices `1..=MAX_EVENT_KIND`
/// count events of that kind lost because the ring buffer was full.
pub mod counter {
    /// A child could not be added to `TRACKED` (map full): its events are lost.
    pub const TRACKED_FULL: u32 = 32;
    /// A syscall's arguments could not be stashed for its exit probe.
    pub const PENDING_FULL: u32 = 33;
    /// A kernel memory read failed (offset wrong, or memory gone).
    pub const READ_ERRORS: u32 = 34;
    /// A listening socket could not be added to `LISTEN_SOCKETS` (map full).
    pub const LISTEN_FULL: u32 = 35;
    /// Not a count: the most unconsumed bytes seen in the ring buffer after a
    /// write, per CPU (the agent reads the maximum and resets it).
    pub const RING_HIGH_WATER: u32 = 36;
    /// Size of the array.
    pub const LEN: u32 = 48;
}

const _: () = assert!(size_of::<Tracked>() == 16);
const _: () = assert!(size_of::<ListenSocket>() == 8);
const _: () = assert!(size_of::<AcceptKey>() == 24);
