//! The echo loop: read, write back, until EOF.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{read, write};

/// Echoes `input` to `output` until EOF, an error, or `lifetime` has elapsed.
/// With `in_thread`, the loop runs in a new thread that the caller joins.
pub fn serve(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    lifetime: Option<Duration>,
    in_thread: bool,
) {
    if in_thread {
        std::thread::scope(|s| {
            let _ = s.spawn(|| echo(input, output, lifetime)).join();
        });
    } else {
        let _ = echo(input, output, lifetime);
    }
}

fn echo(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    lifetime: Option<Duration>,
) -> nix::Result<()> {
    let deadline = lifetime.map(|d| Instant::now() + d);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(deadline) = deadline
            && !wait_readable(input, deadline)?
        {
            return Ok(());
        }
        let n = match read(input, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        write_all(output, &buf[..n])?;
    }
}

/// Waits until `fd` is readable; false once `deadline` has passed.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> nix::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
