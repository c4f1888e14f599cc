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
mod http;
mod kernel;
mod metrics;
mod model;
mod output;
mod privileges;
mod probes;
mod procview;
mod startup;
mod targets;
mod webconfig;

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

fn selection(t: &cli::TargetArgs) -> anyhow::Result<targets::Selection> {
    targets::Selection::new(
        &t.pids,
        &t.comms,
        &t.cgroups,
        t.all,
        t.server_name.as_deref(),
    )
}

fn load_options(p: &cli::ProbeArgs) -> probes::loader::LoadOptions {
    probes::loader::LoadOptions {
        max_processes: p.max_processes,
        ring_buffer_bytes: p.ring_buffer_size,
        ..Default::default()
    }
}

/// One thread: the event loop, the ring buffer's readiness and the HTTP
/// endpoint share it, so waking the loop never crosses threads.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run {
            targets,
            probes,
            zombie_after,
            listen_grace,
            listen_address,
            web_config_file,
            max_open_findings,
            resolved_history,
            reconcile_interval,
        } => {
            let selection = selection(&targets)?;
            let opts = cmd::run::RunOptions {
                zombie_after,
                listen_grace,
                listen_address,
                max_open_findings,
                resolved_history,
                reconcile_every: reconcile_interval,
                log_format: cli.log_format,
                web: match &web_config_file {
                    Some(p) => webconfig::WebConfig::load(p)?,
                    None => webconfig::WebConfig::none(),
                },
            };
            runtime()?.block_on(cmd::run::run(selection, load_options(&probes), opts))?;
            Ok(0)
        }
        Command::Check { no_load } => Ok(cmd::check::run(!no_load)),
        Command::Events { targets, probes } => {
            let selection = selection(&targets)?;
            runtime()?.block_on(cmd::events::run(selection, load_options(&probes)))?;
            Ok(0)
        }
    }
}
