//! The subcommands.

pub mod check;
pub mod events;
pub mod run;
