//! An untracked process that calls close() N times (default 1,000,000) on
//! an fd that is not open, then prints `closed N`. The event-stream test
//! runs it beside the tracked tree: none of its calls may reach the agent.

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    for _ in 0..n {
        // SAFETY: closing an fd number that is never open; EBADF expected.
        unsafe { libc::close(1_000_000) };
    }
    println!("closed {n}");
}
