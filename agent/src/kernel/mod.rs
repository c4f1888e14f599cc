//! What the agent needs to know about the running kernel: its BTF, its
//! tracefs, and from both the layout the probes read.

pub mod btf;
pub mod layout;
pub mod tracefs;
