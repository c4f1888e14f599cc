//! Writing events into the ring buffer, counting the ones that do not fit.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_get_current_ancestor_cgroup_id},
    maps::ring_buf::RingBufEntry,
};
use forkwatch_common::{EventHeader, EventKind, Tracked, counter};

use crate::{
    config,
    maps::{CGROUP_TARGETS, COMM_TARGETS, COUNTERS, EVENTS, TRACKED, count},
};

#[inline(always)]
pub fn header(kind: EventKind, pid: u32, tid: u32, server: u32) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        server,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Room for one `T` in the ring buffer, or `None` after counting the loss
/// of a `kind` event (the agent exports the count and reconciles).
#[inline(always)]
pub fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(kind as u32);
    }
    entry
}

/// Writes `event` (built on the stack; only for small events).
#[inline(always)]
pub fn emit<T: 'static>(kind: EventKind, event: T) {
    if let Some(mut entry) = reserve::<T>(kind) {
        entry.write(event);
        entry.submit(wakeup());
    }
}

/// `bpf_ringbuf_query` flags and `bpf_ringbuf_submit` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// How to submit: without waking the agent, which drains the buffer on its
/// own clock (every 10 ms), unless the buffer is filling up (an eighth of
/// it unread), when it is woken at once. A wake-up per event cost the
/// traced server an irq_work (a hypervisor exit on VMs) and the agent a
/// context switch per event; the benchmarks measured both.
///
/// Also keeps the ring buffer's high-water mark for the fill gauge.
#[inline(always)]
pub fn wakeup() -> u64 {
    let used = EVENTS.query(BPF_RB_AVAIL_DATA);
    if let Some(slot) = COUNTERS.get_ptr_mut(counter::RING_HIGH_WATER) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            if used > *slot {
                *slot = used;
            }
        }
    }
    if used > EVENTS.query(BPF_RB_RING_SIZE) / 8 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// The tracking entry of process `tgid`, or a synthetic one under `--all`.
#[inline(always)]
pub fn tracked(tgid: u32) -> Option<Tracked> {
    if tgid == config!(agent_pid) {
        return None;
    }
    if config!(track_all) != 0 {
        return Some(Tracked::default());
    }
    // SAFETY: the value is copied out at once.
    unsafe { TRACKED.get(&tgid) }.copied()
}

/// The target a newly exec'd, untracked process matches: its new comm is a
/// `--comm` target, or its cgroup (or an ancestor cgroup) is a `--cgroup`
/// target.
#[inline(always)]
pub fn match_target(comm: &[u8; 16]) -> Option<u32> {
    // SAFETY: values copied out at once.
    if let Some(t) = unsafe { COMM_TARGETS.get(comm) } {
        return Some(t.server);
    }
    // Walk from the root (level 0) down: ancestor ids are 0 past the task's
    // own level. 16 levels is deeper than any container runtime nests.
    for level in 0..16 {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: values copied out at once.
        if let Some(t) = unsafe { CGROUP_TARGETS.get(&id) } {
            return Some(t.server);
        }
    }
    None
}
