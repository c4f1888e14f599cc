//! forkwatch's kernel side: tracepoint programs that follow the processes of
//! the tracked servers (fork, exec, exit, release, wait, listening-socket fds,
//! SIGCHLD) and write events into one ring buffer for the agent.
//!
//! Filtering happens here: every probe first asks "is the current (or target)
//! process tracked?" with one map lookup, and untracked processes stop there.
//! The tracked set grows at fork, before the child first runs, so a child's
//! first syscalls are never missed.
//!
//! Every kernel layout detail (struct member offsets, tracepoint record
//! offsets) comes from [`CONFIG`], which the agent fills from BTF and tracefs
//! at start-up.
#![no_std]
#![no_main]

mod emit;
mod fds;
mod kernel;
mod maps;
mod process;
mod signals;
mod sys;
mod wait;

use forkwatch_common::ProbeConfig;

/// Written by the agent before load (`EbpfLoader::set_global`); read-only here.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = unsafe { core::mem::zeroed() };

/// Reads one field of [`CONFIG`]. Volatile, so the compiler cannot fold the
/// zero initialiser into the code: the loader patches the value in.
macro_rules! config {
    ($($field:ident).+) => {
        {
            // Also used inside unsafe blocks, where this one is redundant.
            #[allow(unused_unsafe)]
            // SAFETY: a plain read of a static the loader initialised.
            let value = unsafe { core::ptr::read_volatile(&raw const $crate::CONFIG.$($field).+) };
            value
        }
    };
}
pub(crate) use config;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
