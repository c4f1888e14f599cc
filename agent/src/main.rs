//! forkwatch: an eBPF observability agent for forking servers.
//!
//! Layout: `kernel/` reads the running kernel's layout (BTF, tracefs);
//! `probes/` loads the eBPF programs and drains their ring buffer; `event`
//! decodes what they write; `discovery` reads /proc; `targets` chooses what
//! to track; `cmd/` holds the subcommands.

mod cli;
mod clock;
mod cmd;
mod discovery;
mod event;
mod kernel;
mod model;
mod privileges;
mod probes;
mod startup;
mod targets;

use std::io::IsTerminal as _;

use clap::Parser as _;
use cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forkwatch: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Check { no_load } => Ok(cmd::check::run(!no_load)),
        Command::Events { targets, probes } => {
            let selection = targets::Selection::new(
                &targets.pids,
                &targets.comms,
                &targets.cgroups,
                targets.all,
                targets.server_name.as_deref(),
            )?;
            let opts = probes::loader::LoadOptions {
                max_processes: probes.max_processes,
                ring_buffer_bytes: probes.ring_buffer_size,
                ..Default::default()
            };
            tokio::runtime::Runtime::new()?.block_on(cmd::events::run(selection, opts))?;
            Ok(0)
        }
    }
}
