//! `cargo xtask demo`: the main job. The bundled fork server in a faulty
//! mode (`--reap once` and children that keep the listening socket), a
//! load client sending bursts of connections, forkwatch watching it with
//! findings on the terminal and metrics served, and Prometheus (when
//! installed) scraping it with the alert rules. Ctrl-C stops everything.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd::{http_get, is_root, root, sh};

/// The agent's port (forkwatch's default) and Prometheus'.
const AGENT_ADDR: &str = "127.0.0.1:9867";
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

struct Running {
    name: &'static str,
    child: Child,
}

impl Running {
    /// `Some(status)` once it has exited on its own.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after 5 s; always reaped.
    fn stop(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("demo: {} did not stop in 5 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF probes: run it as root (sudo -E cargo xtask demo)");
    }
    let root = root();
    sh(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--bins"]))?;
    let bin = |name: &str| root.join("target/debug").join(name);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("Ctrl-C handler")?;
    }

    // The server: the textbook bugs, on a free port.
    let mut server = Command::new(bin("forkserver"))
        .args([
            "--port",
            "0",
            "--reap",
            "once",
            "--child-closes-listener",
            "no",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("start forkserver")?;
    let line = read_line(server.stdout.take().expect("stdout"))?;
    let addr = line
        .strip_prefix("forkserver listening on ")
        .and_then(|r| r.split(' ').next())
        .with_context(|| format!("unexpected forkserver line {line:?}"))?
        .to_string();
    eprintln!("demo: {line} (--reap once --child-closes-listener no)");

    let server_pid = server.id().to_string();
    let mut agent = Running {
        name: "forkwatch",
        child: Command::new(bin("forkwatch"))
            .args(["--log-format", "text", "run", "--pid", &server_pid])
            .args(["--web.listen-address", AGENT_ADDR])
            .spawn()
            .context("start forkwatch")?,
    };
    let mut server = Running {
        name: "forkserver",
        child: server,
    };
    let prometheus = start_prometheus(&root)?;

    thread::sleep(Duration::from_secs(2));
    eprintln!();
    eprintln!("demo: forkwatch findings print below as they open and resolve");
    eprintln!("demo:   metrics   http://{AGENT_ADDR}/metrics");
    eprintln!("demo:   findings  http://{AGENT_ADDR}/findings");
    eprintln!("demo:   tree      http://{AGENT_ADDR}/tree");
    if prometheus.is_some() {
        eprintln!(
            "demo:   prometheus http://{PROMETHEUS_ADDR}/alerts (rules: dashboards/prometheus/alerts.yml)"
        );
    }
    eprintln!(
        "demo: load: a burst of 5 connections closed at once every 3 s, one held connection; Ctrl-C stops"
    );
    eprintln!();

    // One connection held open the whole time: its child keeps the
    // listening socket (a leak) for as long as it lives.
    let mut held = Running {
        name: "held connection",
        child: Command::new(bin("forkserver"))
            .args([
                "load",
                "burst",
                "--addr",
                &addr,
                "--connections",
                "1",
                "--hold",
                "1h",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("start the load client")?,
    };
    let started = Instant::now();
    let mut next_burst = Instant::now();
    // A helper that dies ends the demo with its name: a demo that goes on
    // without its server, agent or held connection shows nothing true.
    let mut died = None;
    while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
        if let Some((name, status)) = [&mut server, &mut agent, &mut held]
            .into_iter()
            .find_map(|r| Some((r.name, r.exited()?)))
        {
            died = Some(format!(
                "{name} exited on its own ({status}); see its message above"
            ));
            break;
        }
        if Instant::now() >= next_burst {
            // Bounded: a burst has its own timeouts.
            let _ = Command::new(bin("forkserver"))
                .args([
                    "load",
                    "burst",
                    "--addr",
                    &addr,
                    "--connections",
                    "5",
                    "--hold",
                    "500ms",
                ])
                .stdout(Stdio::null())
                .status();
            next_burst = Instant::now() + Duration::from_secs(3);
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("\ndemo: stopping");
    let summary = summarize(started.elapsed());
    held.stop();
    agent.stop();
    server.stop();
    if let Some(p) = prometheus {
        p.stop();
    }
    if let Some(why) = died {
        bail!("{why}");
    }
    summary
}

/// What forkwatch raised during the demo, by kind, from its /findings.
/// After long enough for every bug of the demo to show (the first burst's
/// zombies pass `--zombie-after` 2 s at about 3 s), a kind missing is an
/// error: the server has that bug, so forkwatch must have said so.
fn summarize(ran: Duration) -> anyhow::Result<()> {
    const EXPECTED: [&str; 3] = ["unreaped_child", "leaked_listen_fd", "sigchld_coalesced"];
    let body = http_get(AGENT_ADDR.parse()?, "/findings").context("read forkwatch's /findings")?;
    let findings: serde_json::Value = serde_json::from_str(&body).context("/findings JSON")?;
    let count = |state: &str, kind: &str| {
        findings[state]
            .as_array()
            .map_or(0, |a| a.iter().filter(|f| f["kind"] == kind).count())
    };
    eprintln!("demo: forkwatch's findings ({:.0} s):", ran.as_secs_f64());
    for kind in EXPECTED {
        eprintln!(
            "demo:   {kind:<18} {} open, {} resolved",
            count("open", kind),
            count("resolved", kind)
        );
    }
    let missing: Vec<&str> = EXPECTED
        .into_iter()
        .filter(|k| count("open", k) + count("resolved", k) == 0)
        .collect();
    if ran >= Duration::from_secs(8) && !missing.is_empty() {
        bail!(
            "forkwatch raised no {} finding in {:.0} s although the demo's server has that bug",
            missing.join(", no "),
            ran.as_secs_f64()
        );
    }
    Ok(())
}

fn read_line(out: impl std::io::Read) -> anyhow::Result<String> {
    use std::io::BufRead as _;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Prometheus with the example scrape config and the alert rules, data in
/// target/demo/prometheus; `None` when it is not installed.
fn start_prometheus(root: &Path) -> anyhow::Result<Option<Running>> {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("demo: prometheus is not installed; skipping it (apt-get install prometheus)");
        return Ok(None);
    }
    let data = root.join("target/demo/prometheus");
    std::fs::create_dir_all(&data)?;
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            root.join("dashboards/prometheus/prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start prometheus")?;
    Ok(Some(Running {
        name: "prometheus",
        child,
    }))
}
