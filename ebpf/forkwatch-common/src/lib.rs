//! The kernel/user ABI of forkwatch: the events the probes write into the ring
//! buffer, the values of the maps the agent shares with them, and the settings
//! the agent hands to the probes before they load.
//!
//! Rules for everything in this crate (it is read by the verifier-bound probe
//! code and by the agent):
//! - `#[repr(C)]`, fixed-width integers, explicit padding, no `bool`, no Rust
//!   enums on the wire;
//! - event kinds are stable numbers, never reused; the agent decodes them with
//!   `TryFrom<u32>` and rejects unknown values;
//! - the size of every wire struct is asserted at compile time, so a change of
//!   layout is a deliberate edit here, not an accident.
#![no_std]

pub mod config;
pub mod event;
pub mod maps;

pub use config::*;
pub use event::*;
pub use maps::*;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd filename kept in an [`ExecEvent`]; longer names are cut.
pub const FILENAME_LEN: usize = 128;

/// `SIGCHLD` on every architecture forkwatch builds for.
pub const SIGCHLD: u32 = 17;
/// `prctl` option that makes the caller a child subreaper.
pub const PR_SET_CHILD_SUBREAPER: u64 = 36;
/// `CLONE_PARENT`: the child's parent is the caller's parent.
pub const CLONE_PARENT: u64 = 0x0000_8000;
