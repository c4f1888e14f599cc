//! Loading the kernel-side probes, attaching them, and reading what they write.

pub mod loader;
pub mod spec;
pub mod stream;
