//! `cargo xtask`: what cargo alone cannot do for forkwatch: set up a fresh
//! machine (Debian packages, bpf-linker, the eBPF toolchain, tracefs), run
//! the whole test suite, run the demo, run the benchmarks.

mod cmd;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "forkwatch's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; quick when done).
    Setup,
    /// Set up, build, and run every test: unit, kernel integration (root),
    /// rules, formatting and lints.
    Test {
        /// Only the tests whose name contains this (passed to cargo test).
        filter: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Test { filter } => setup::run().and_then(|()| test::run(filter.as_deref())),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
