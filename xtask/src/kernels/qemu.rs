//! Booting one kernel under qemu (TCG: there is no usable KVM on these
//! machines) with the initramfs, the console streamed to the terminal and
//! saved, the results read from the second serial port's file.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::cmd::show;

const CMDLINE: &str = "console=ttyS0 quiet panic=-1 oops=panic softlockup_panic=1 \
                       sysctl.kernel.panic_on_rcu_stall=1 mitigations=off";

pub struct Boot<'a> {
    pub name: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Where the console log and the results go.
    pub dir: PathBuf,
    pub cpus: u32,
    pub memory_mb: u32,
    /// qemu is killed after this long.
    pub timeout: Duration,
    /// Echo the console on stderr as it comes.
    pub echo: bool,
}

pub struct Outcome {
    /// The results channel's lines.
    pub results: Vec<String>,
    pub console_log: PathBuf,
    pub elapsed: Duration,
    pub timed_out: bool,
}

pub fn boot(b: &Boot) -> anyhow::Result<Outcome> {
    fs::create_dir_all(&b.dir)?;
    let results_path = b.dir.join("results.txt");
    let console_log = b.dir.join("console.log");
    let _ = fs::remove_file(&results_path);
    let mut cmd = Command::new("qemu-system-x86_64");
    // One host thread runs both vCPUs. With multi-threaded TCG, a vCPU
    // can run stale code while the kernel patches its text (attaching a
    // tracepoint flips static keys): seen as "Oops: int3" in
    // syscall_exit_to_user_mode_prepare on 6.12 and a soft lockup on 6.1.
    cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-smp", &b.cpus.to_string(), "-m", &b.memory_mb.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-serial")
        .arg(format!("file:{}", results_path.display()))
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initramfs)
        // Quiet boot (the guest's init turns the console log level up
        // again); any oops, lockup or RCU stall ends the VM at once.
        .args(["-append", CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("+ {}", show(&cmd));
    let started = Instant::now();
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            // Lossy: a console can carry any bytes.
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let mut log = fs::File::create(&console_log)?;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                if b.echo {
                    eprintln!("[{}] {line}", b.name);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if started.elapsed() > b.timeout {
            eprintln!(
                "kernels: {}: no end after {:?}; killing qemu",
                b.name, b.timeout
            );
            let _ = child.kill();
            timed_out = true;
            break;
        }
    }
    let status = child.wait()?;
    let elapsed = started.elapsed();
    if !status.success() && !timed_out {
        eprintln!("kernels: {}: qemu exited with {status}", b.name);
    }
    let results = fs::read(&results_path)
        .map(|r| {
            String::from_utf8_lossy(&r)
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect()
        })
        .unwrap_or_default();
    Ok(Outcome {
        results,
        console_log,
        elapsed,
        timed_out,
    })
}
