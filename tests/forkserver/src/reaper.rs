//! `forkserver reaper -- PROGRAM ARGS...`: a minimal child subreaper, so that
//! orphans can be observed (and are reaped) somewhere other than init.

use std::ffi::CString;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork, getpid};

use crate::cli::ReaperArgs;
/// Pid of PROGRAM, the reaper's direct child.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// SIGTERM/SIGINT are forwarded to PROGRAM.
extern "C" fn forward(signal: libc::c_int) {
    let saved = Errno::last_raw();
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
    Errno::set_raw(saved);
}

/// Logs every process it reaps to stderr:
/// `forkserver reaper: reaped pid 42 (adopted): killed by SIGHUP` or
/// `forkserver reaper: reaped pid 41 (child): exited with status 0`,
/// and exits with PROGRAM's status (128 + signal number if it was killed)
/// once it has no child left.
pub fn run(args: &ReaperArgs) -> anyhow::Result<ExitCode> {
    nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    let argv = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;

    // SAFETY: single-threaded; the child only execs.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let error = execvp(&argv[0], &argv).unwrap_err();
            eprintln!("forkserver reaper: exec {}: {error}", args.command[0]);
            crate::exit_demo::underscore_exit(127)
        }
        ForkResult::Parent { child } => child,
    };
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls kill(2).
    unsafe {
        sigaction(Signal::SIGTERM, &action)?;
        sigaction(Signal::SIGINT, &action)?;
    }
    eprintln!(
        "forkserver reaper pid {}: subreaper for pid {child} ({})",
        getpid(),
        args.command[0]
    );

    let mut code = 1;
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                let who = if pid == child { "child" } else { "adopted" };
                let how = match status {
                    WaitStatus::Exited(_, c) => {
                        if pid == child {
                            code = c;
                        }
                        format!("exited with status {c}")
                    }
                    WaitStatus::Signaled(_, s, _) => {
                        if pid == child {
                            code = 128 + s as i32;
                        }
                        format!("killed by {s}")
                    }
                    other => format!("{other:?}"),
                };
                eprintln!("forkserver reaper: reaped pid {pid} ({who}): {how}");
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => break,
            Err(e) => return Err(e).context("waitpid"),
        }
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
