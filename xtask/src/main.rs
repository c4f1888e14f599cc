//! `cargo xtask`: what cargo alone cannot do for forkwatch: set up a fresh
//! machine (Debian packages, bpf-linker, the eBPF toolchain, tracefs), run
//! the whole test suite, run the demo, run the benchmarks.

mod bench;
mod cmd;
mod demo;
mod kernels;
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
    /// rules, formatting and lints, then the integration tests again on
    /// each kernel of the matrix (Debian's 6.1 and 6.12) under qemu.
    Test {
        /// Only the tests whose name contains this (passed to cargo test,
        /// and to the test binaries in the kernel matrix).
        filter: Option<String>,
        #[command(flatten)]
        kernels: test::KernelArgs,
    },
    /// The main job: set up, then run the fork server in a faulty mode with
    /// load, forkwatch watching it (findings on screen, metrics on :9867),
    /// and Prometheus with the alert rules. Ctrl-C stops it.
    Demo {
        /// Stop by itself after this long (e.g. 30s); default: until Ctrl-C.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Set up, build (release), and measure: overhead on forkserver and
    /// PostgreSQL against bpftrace and strace, cost to untracked processes,
    /// fork-rate capacity, detection latency, memory. Writes
    /// target/bench/report.md and report.json (root).
    Bench(bench::BenchArgs),
}

fn main() {
    if kernels::guest::is_init() {
        kernels::guest::init();
    }
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Test { filter, kernels } => setup::run_with(kernels.packages())
            .and_then(|()| test::run(filter.as_deref(), &kernels)),
        Task::Demo { duration } => setup::run().and_then(|()| demo::run(duration)),
        Task::Bench(args) => setup::run().and_then(|()| bench::run(args)),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
