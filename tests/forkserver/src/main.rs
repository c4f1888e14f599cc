//! forkserver: the bundled TCP echo fork-server of forkwatch, written the way
//! the textbooks teach it, with a switch for each classic mistake (see
//! docs/forkserver.md).

mod child;
mod cli;
mod echo;
mod exec;
mod exit_demo;
mod lifecycle;
mod limits;
mod listener;
mod load;
mod prefork;
mod procfs;
mod reap;
mod reaper;
mod server;
mod shutdown;
mod signals;
mod stats;

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use clap::Parser;

use crate::child::Plan;
use crate::cli::{Cli, Command, Model, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => serve(&cli.serve).map(|()| ExitCode::SUCCESS),
        Some(Command::Handler) => {
            exec::run_handler();
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Load(load)) => load::run(&load.mode),
        Some(Command::Reaper(args)) => reaper::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("forkserver: error: {e:#}");
        ExitCode::FAILURE
    })
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let plan = Plan {
        args,
        exec: args.exec_command()?,
    };
    let _tty = if args.setsid {
        lifecycle::become_session_leader(args.controlling_tty)?
    } else {
        None
    };
    if args.subreaper {
        lifecycle::become_subreaper()?;
    }
    if let Some(limit) = args.rlimit_nproc {
        limits::set_rlimit_nproc(limit)?;
    }
    let cgroup = args.pids_max.map(limits::PidsCgroup::enter).transpose()?;

    reap::install(args.reap)?;
    let (listener, addr) = listener::open(args)?;
    let wake_accept = (args.model == Model::ForkPerConn).then(|| listener.as_raw_fd());
    signals::install_parent_handlers(wake_accept)?;
    listener::announce(addr)?;
    exit_demo::arm();

    match args.model {
        Model::ForkPerConn => server::run(&plan, &listener)?,
        Model::Prefork => prefork::run(args, &listener)?,
    }

    drop(listener);
    shutdown::run(args.reap, args.shutdown_timeout);
    if let Some(cgroup) = cgroup {
        cgroup.leave();
    }
    stats::write_line("exit");
    Ok(())
}
