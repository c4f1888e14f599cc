//! Exec mode (`--exec-handler`, inetd style) and the `handler` subcommand.
//!
//! The connection child dup2s the connection onto stdin and stdout and
//! execv's the handler. Whether the listening socket reaches the handler
//! depends on two switches:
//!
//! | `--child-closes-listener` | `--listener-cloexec` | listener in the handler |
//! |---------------------------|----------------------|-------------------------|
//! | yes                       | any                  | no (closed before exec) |
//! | no                        | yes                  | no (closed by execve)   |
//! | no                        | no                   | yes: carried across exec |

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::Signal;
use nix::unistd::{dup2_stdin, dup2_stdout, execv};

use crate::{echo, signals};

/// Replaces the child with the handler program; never returns (exit status
/// 127 if the exec fails).
pub fn exec_handler(conn: OwnedFd, path: &Path, argv: &[String]) -> ! {
    let error = (|| -> anyhow::Result<std::convert::Infallible> {
        let program = CString::new(path.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        dup2_stdin(&conn)?;
        dup2_stdout(&conn)?;
        drop(conn);
        // The Rust runtime ignores SIGPIPE, and an ignored signal stays
        // ignored across execve: give the handler the default, like inetd.
        signals::set_default(Signal::SIGPIPE);
        Ok(execv(&program, &argv)?)
    })()
    .unwrap_err();
    eprintln!("forkserver: exec {}: {error:#}", path.display());
    crate::exit_demo::underscore_exit(127)
}

/// `forkserver handler`: echo stdin to stdout until EOF.
pub fn run_handler() {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    echo::serve(stdin.as_fd(), stdout.as_fd(), None, false);
}
