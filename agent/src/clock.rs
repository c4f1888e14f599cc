//! Turning the probes' CLOCK_MONOTONIC timestamps into wall-clock time.

use std::time::{Duration, SystemTime};

use nix::time::{ClockId, clock_gettime};

fn ns(clock: ClockId) -> u64 {
    clock_gettime(clock).map_or(0, |t| {
        (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64
    })
}

/// CLOCK_MONOTONIC now, in ns (the probes' `ts_ns` clock).
pub fn monotonic_ns() -> u64 {
    ns(ClockId::CLOCK_MONOTONIC)
}

/// CLOCK_BOOTTIME now, in ns (the clock of process start times).
pub fn boottime_ns() -> u64 {
    ns(ClockId::CLOCK_BOOTTIME)
}

/// The wall-clock time of monotonic instant `ts_ns`.
pub fn wall_time(ts_ns: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    let now = SystemTime::now();
    if ts_ns <= now_mono {
        now - Duration::from_nanos(now_mono - ts_ns)
    } else {
        now + Duration::from_nanos(ts_ns - now_mono)
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
