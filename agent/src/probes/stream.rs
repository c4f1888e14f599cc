//! Draining the event ring buffer from the tokio runtime: the ring buffer's
//! fd becomes readable when the probes submit.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
    /// The last drain stopped at its limit: records are still waiting, and
    /// no new wake-up may come for them.
    more: bool,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd and keeps it open for as
        // long as the AsyncFd owns the ring buffer.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
        Ok(Self { fd, more: false })
    }

    /// Waits until the probes wrote something. Readiness is cleared before
    /// returning, so a write that lands after this call (even while the
    /// caller drains) wakes the next call: nothing is left behind.
    pub async fn ready(&mut self) -> io::Result<()> {
        if self.more {
            // Let the other branches (signals, timers, scrapes) run first.
            tokio::task::yield_now().await;
            return Ok(());
        }
        let mut guard = self.fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Whether the last drain stopped at its limit (records are waiting).
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Hands up to `max` records to `f`, without waiting; returns how many.
    pub fn drain_now(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        self.more = n == max;
        n
    }
}
