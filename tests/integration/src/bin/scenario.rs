//! The process tree of the event-stream test, deterministic and small:
//!
//! The parent prints `ready` and waits for a line on stdin (so the agent
//! can attach first). Then it listens on 127.0.0.1:0, prints `listening
//! PORT`, and forks three children:
//! - A starts a thread, joins it, keeps the inherited listening fd, `_exit(3)`;
//! - B closes the inherited listening fd, `_exit(4)`;
//! - C execs /bin/true (the listener is close-on-exec, as std makes it).
//!
//! The parent has a SIGCHLD handler (SA_RESTART) that does nothing, waits
//! for A and B by pid, prints `done A B C`, and leaves C unreaped until it
//! is killed.

use std::{
    io::{BufRead as _, Write as _},
    net::TcpListener,
    os::fd::AsRawFd as _,
    time::Duration,
};

use nix::{
    sys::{
        signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
        wait::waitpid,
    },
    unistd::{ForkResult, close, execv, fork},
};

extern "C" fn on_sigchld(_: libc::c_int) {}

fn main() {
    let action = SigAction::new(
        SigHandler::Handler(on_sigchld),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing.
    unsafe { sigaction(Signal::SIGCHLD, &action) }.expect("sigaction");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    println!("listening {port}");
    std::io::stdout().flush().unwrap();

    let mut kids = Vec::new();
    for i in 0..3 {
        // SAFETY: single-threaded parent; children only call async-signal-
        // safe functions or exec/exit (A's thread is its own).
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => child(i, fd),
            ForkResult::Parent { child } => kids.push(child),
        }
        // Spaced out so each child's events are easy to tell apart.
        std::thread::sleep(Duration::from_millis(20));
    }
    for &k in &kids[..2] {
        loop {
            match waitpid(k, None) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => panic!("waitpid {k}: {e}"),
            }
        }
    }
    println!("done {} {} {}", kids[0], kids[1], kids[2]);
    std::io::stdout().flush().unwrap();
    // Keep C a zombie until the test kills us (bounded: 60 s).
    std::thread::sleep(Duration::from_secs(60));
    drop(listener);
}

fn child(i: usize, listen_fd: i32) -> ! {
    match i {
        0 => {
            std::thread::spawn(|| {}).join().unwrap();
            // SAFETY: plain _exit.
            unsafe { libc::_exit(3) }
        }
        1 => {
            close(listen_fd).expect("close");
            unsafe { libc::_exit(4) }
        }
        _ => {
            let path = c"/bin/true";
            let _ = execv(path, &[path]);
            unsafe { libc::_exit(127) }
        }
    }
}
