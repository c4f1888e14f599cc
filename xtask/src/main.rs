//! `cargo xtask`: what cargo alone cannot do for forkwatch: set up a fresh
//! machine (Debian packages, bpf-linker, the eBPF toolchain, tracefs), run
//! the whole test suite, run the demo, run the benchmarks.

mod cmd;
mod demo;
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
    /// The main job: set up, then run the fork server in a faulty mode with
    /// load, forkwatch watching it (findings on screen, metrics on :9867),
    /// and Prometheus with the alert rules. Ctrl-C stops it.
    Demo {
        /// Stop by itself after this long (e.g. 30s); default: until Ctrl-C.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Test { filter } => setup::run().and_then(|()| test::run(filter.as_deref())),
        Task::Demo { duration } => setup::run().and_then(|()| demo::run(duration)),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
