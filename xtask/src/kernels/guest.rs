//! The guest side: this same xtask binary is the initramfs' `/init`, pid 1
//! of the test VM. It mounts what the tests need, brings up loopback, runs
//! the plan the host wrote (`forkwatch check`, then each test binary), and
//! reports on the second serial port, which the host reads as a file. The
//! console (first serial port) carries the tests' output for people.
//!
//! Pid 1 itself only reaps: the plan runs in a forked child, so orphans
//! (the tests make many on purpose, and expect init to reap them) are
//! re-parented to a process that waits for them, as a real init does.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// Where the host puts the plan in the initramfs.
pub const PLAN: &str = "/forkwatch-kernels/plan";
/// busybox-static, when the host has it: a shell and the usual commands.
pub const BUSYBOX: &str = "/bin/busybox";
/// The second serial port: machine-readable results.
const RESULTS: &str = "/dev/ttyS1";

/// Whether this process is the VM's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Pid 1's life: set up, run the plan in a child, reap until it is done,
/// power off (the VM runs with -no-reboot, so a reboot ends qemu).
pub fn init() -> ! {
    if let Err(e) = setup() {
        println!("forkwatch-guest: setup: {e}");
    }
    let _ = std::io::stdout().flush();
    // SAFETY: single-threaded at this point; the child only runs Rust code
    // that is safe after fork in a single-threaded process.
    let runner = unsafe { libc::fork() };
    if runner == 0 {
        let code = match run_plan() {
            Ok(()) => 0,
            Err(e) => {
                println!("forkwatch-guest: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    if runner > 0 {
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid == runner
                || (pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
            {
                break;
            }
        }
    } else {
        println!("forkwatch-guest: fork failed");
    }
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

fn mount(source: &str, target: &str, fstype: &str, data: &str) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (source_c, target_c, fstype_c, data_c) = (c(source), c(target), c(fstype), c(data));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            data_c.as_ptr().cast(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount -t {fstype} {source} {target}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The mounts of a usual host (the tests use /proc, /sys, tracefs,
/// cgroup2 and devpts), and loopback up.
fn setup() -> Result<(), String> {
    mount("proc", "/proc", "proc", "")?;
    // Booted quiet; from now on every kernel message (warnings, oopses
    // and their traces) reaches the console.
    let _ = fs::write("/proc/sys/kernel/printk", "7");
    mount("sysfs", "/sys", "sysfs", "")?;
    mount("devtmpfs", "/dev", "devtmpfs", "")?;
    mount("devpts", "/dev/pts", "devpts", "ptmxmode=0666,mode=0620")?;
    // /tmp and /run stay in the initramfs (itself a tmpfs): a mount there
    // would hide a workspace under /tmp.
    let _ = fs::set_permissions("/tmp", std::os::unix::fs::PermissionsExt::from_mode(0o1777));
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", "")?;
    // As `cargo xtask setup` does on the host; the check test unmounts it
    // and expects forkwatch to mount it again.
    mount("tracefs", "/sys/kernel/tracing", "tracefs", "")?;
    busybox_links();
    loopback_up()
}

/// A link for every busybox applet (sh, grep, sleep...) whose path the
/// host's tools do not already occupy.
fn busybox_links() {
    let Ok(out) = Command::new(BUSYBOX).arg("--list-full").output() else {
        return;
    };
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let path = Path::new("/").join(applet);
        if !path.exists() {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            let _ = std::os::unix::fs::symlink(BUSYBOX, &path);
        }
    }
}

/// `ip link set lo up`; the kernel adds 127.0.0.1/8 and ::1 itself.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut ret = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if ret == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            ret = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if ret != 0 {
            return Err(format!("bringing lo up: {err}"));
        }
    }
    Ok(())
}

/// One line of the results channel (tab-separated fields).
struct Results(fs::File);

impl Results {
    fn line(&mut self, fields: &[&str]) {
        let _ = writeln!(self.0, "{}", fields.join("\t"));
        let _ = self.0.flush();
    }
}

/// Runs the plan: lines of tab-separated fields, `env KEY VALUE`,
/// `check FORKWATCH`, `suite NAME CWD TIMEOUT_SECS EXE ARGS...`.
fn run_plan() -> Result<(), String> {
    let plan = fs::read_to_string(PLAN).map_err(|e| format!("{PLAN}: {e}"))?;
    let mut results = Results(
        fs::OpenOptions::new()
            .write(true)
            .open(RESULTS)
            .map_err(|e| format!("{RESULTS}: {e}"))?,
    );
    let mut uname = String::new();
    if let Ok(r) = fs::read_to_string("/proc/sys/kernel/osrelease") {
        uname = r.trim().to_string();
    }
    results.line(&["kernel", &uname]);
    if let Ok(up) = fs::read_to_string("/proc/uptime") {
        results.line(&["uptime", up.split(' ').next().unwrap_or("?")]);
    }
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into()),
        ("HOME".into(), "/root".into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
    ];
    for line in plan.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["env", key, value] => env.push(((*key).into(), (*value).into())),
            ["check", forkwatch] => check(&mut results, forkwatch, &env),
            ["suite", name, cwd, timeout, exe, args @ ..] => {
                let timeout = Duration::from_secs(timeout.parse().unwrap_or(600));
                suite(&mut results, name, cwd, timeout, exe, args, &env);
            }
            [""] => {}
            _ => println!("forkwatch-guest: bad plan line {line:?}"),
        }
    }
    results.line(&["done"]);
    Ok(())
}

/// `forkwatch check`, its report on both channels.
fn check(results: &mut Results, forkwatch: &str, env: &[(String, String)]) {
    println!("forkwatch-guest: {forkwatch} check");
    let out = Command::new(forkwatch)
        .arg("check")
        .env_clear()
        .envs(env.iter().cloned())
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            for l in text.lines() {
                println!("{l}");
                results.line(&["check", l]);
            }
            let code = out.status.code().unwrap_or(-1).to_string();
            results.line(&["check-exit", &code]);
        }
        Err(e) => {
            results.line(&["check", &format!("cannot run {forkwatch}: {e}")]);
            results.line(&["check-exit", "-1"]);
        }
    }
}

/// Runs one test binary with a deadline; its output goes to the console,
/// each `test NAME ... RESULT` line also to the results channel.
fn suite(
    results: &mut Results,
    name: &str,
    cwd: &str,
    timeout: Duration,
    exe: &str,
    args: &[&str],
    env: &[(String, String)],
) {
    println!("forkwatch-guest: suite {name}: {exe} {}", args.join(" "));
    results.line(&["suite-begin", name]);
    let started = Instant::now();
    let end = |results: &mut Results, outcome: &str| {
        let secs = format!("{:.1}", started.elapsed().as_secs_f64());
        println!("forkwatch-guest: suite {name}: {outcome} after {secs} s");
        results.line(&["suite-end", name, outcome, &secs]);
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return end(results, &format!("error: pipe: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0);
    match writer.try_clone() {
        Ok(w) => cmd.stdout(w).stderr(writer),
        Err(e) => return end(results, &format!("error: pipe: {e}")),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return end(results, &format!("error: cannot start: {e}")),
    };
    drop(cmd); // closes our copies of the pipe's write end
    let tests: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = tests.clone();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            if let Some((test, result)) = libtest_result(&line) {
                sink.lock().unwrap().push((test, result));
            }
        }
    });
    let mut reported = 0;
    let outcome = loop {
        {
            let tests = tests.lock().unwrap();
            for (test, result) in &tests[reported..] {
                results.line(&["test", name, test, result]);
            }
            reported = tests.len();
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                break status
                    .code()
                    .map_or_else(|| format!("signal {status}"), |c| format!("exit {c}"));
            }
            Ok(None) if started.elapsed() > timeout => {
                // SAFETY: signalling the suite's own process group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break format!("timeout {}s", timeout.as_secs());
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => break format!("error: wait: {e}"),
        }
    };
    // Lines still in the pipe (bounded: its writers may linger).
    thread::sleep(Duration::from_millis(200));
    for (test, result) in &tests.lock().unwrap()[reported..] {
        results.line(&["test", name, test, result]);
    }
    end(results, &outcome);
}

/// `test some::name ... ok` (libtest's pretty format) as (name, result).
fn libtest_result(line: &str) -> Option<(String, String)> {
    let (test, result) = line.strip_prefix("test ")?.rsplit_once(" ... ")?;
    let result = result.split_whitespace().next()?.trim_end_matches(',');
    matches!(result, "ok" | "FAILED" | "ignored").then(|| (test.to_string(), result.to_string()))
}

#[cfg(test)]
mod tests {
    use super::libtest_result;

    #[test]
    fn libtest_lines() {
        let r = |l| libtest_result(l).map(|(t, r)| format!("{t}={r}"));
        assert_eq!(r("test a::b ... ok").as_deref(), Some("a::b=ok"));
        assert_eq!(r("test c ... FAILED").as_deref(), Some("c=FAILED"));
        assert_eq!(
            r("test d ... ignored, needs root").as_deref(),
            Some("d=ignored")
        );
        assert_eq!(r("test result: ok. 1 passed; 0 failed"), None);
        assert_eq!(r("test e has been running for over 60 seconds"), None);
    }
}
