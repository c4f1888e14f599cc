//! The shipped Prometheus setup end to end: Prometheus (on 127.0.0.1, the
//! example scrape config of dashboards/prometheus/prometheus.yml retargeted
//! at the agents, 1 s intervals, the rules of alerts.yml with every `for:`
//! cut to 1 s) scrapes agents watching fork servers in every faulty mode.
//! Through Prometheus' HTTP API the test checks that the alerts that should
//! fire do, that every query of every dashboard panel returns data
//! (dashboards/check_queries.py --prometheus), and that the metric names of
//! the dashboard and the rules and those the agent exports are the same
//! (check_queries.py --metrics on a saved scrape).
//!
//! The real `for:` durations are covered by `promtool test rules
//! dashboards/prometheus/alerts_test.yml` (cargo xtask test).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use forkwatch_integration::{
    Agent, Proc, Server, bin, kill_pid, poll, procfs, require_root, serial, wait_for,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("forkwatch-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes the test did not start itself but caused (children orphaned
/// to init), killed on drop by pid if they are still the same process
/// (same start time).
#[derive(Default)]
struct Strays(Vec<(u32, u64)>);

impl Strays {
    fn add(&mut self, pid: u32) {
        if let Some(t) = procfs::start_ticks(pid) {
            self.0.push((pid, t));
        }
    }
}

impl Drop for Strays {
    fn drop(&mut self) {
        for &(pid, ticks) in &self.0 {
            if procfs::start_ticks(pid) == Some(ticks) {
                kill_pid(pid);
            }
        }
    }
}

/// `GET path` over HTTP/1.0 (no chunked encoding), bounded by timeouts:
/// the status code and the body, or `None` if the connection failed.
fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The example scrape config with its global intervals set to 1 s and the
/// static target of the forkwatch job replaced by `targets`. Everything
/// else (job name, rule_files, comments) is the example's, so a change to
/// the example is a change to what this test runs.
fn scrape_config(example: &str, targets: &[SocketAddr]) -> String {
    let (mut intervals, mut replaced) = (0, 0);
    let mut out = String::new();
    for line in example.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if let Some(key) = ["scrape_interval:", "evaluation_interval:"]
            .into_iter()
            .find(|k| t.starts_with(k))
        {
            out += &format!("{indent}{key} 1s\n");
            intervals += 1;
        } else if t == r#"- targets: ["127.0.0.1:9867"]"# {
            let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
            out += &format!("{indent}- targets: [{}]\n", list.join(", "));
            replaced += 1;
        } else {
            out += line;
            out.push('\n');
        }
    }
    assert_eq!(
        (intervals, replaced),
        (2, 1),
        "dashboards/prometheus/prometheus.yml no longer has the global scrape_interval and \
         evaluation_interval and one static target 127.0.0.1:9867 this test rewrites; update \
         scrape_config() in tests/integration/tests/prometheus.rs"
    );
    out
}

/// alerts.yml with every `for:` set to 1 s, and the names of its alerts.
fn quick_rules(rules: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut names = Vec::new();
    for line in rules.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        // `for: 5m` (a key with one duration), not prose starting "for:".
        if t.strip_prefix("for:")
            .map(str::trim)
            .is_some_and(|d| !d.is_empty() && !d.contains(' '))
        {
            out += &format!("{indent}for: 1s\n");
            continue;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            names.push(name.trim().trim_matches(['"', '\'']).to_string());
        }
        out += line;
        out.push('\n');
    }
    assert!(!names.is_empty(), "no alert in alerts.yml");
    (out, names)
}

/// A running Prometheus with its data in a temp dir.
struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts it on a free loopback port and waits until it is ready.
    fn start(config: &Path, data: &Path) -> Self {
        let prometheus = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        assert!(
            Command::new(&prometheus).arg("--version").output().is_ok(),
            "{prometheus} not found: install Prometheus (cargo xtask setup does), or set PROMETHEUS_BIN"
        );
        for attempt in 1..=3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut cmd = Command::new(&prometheus);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null());
            let mut proc = Proc::spawn(cmd);
            let ready = poll(Duration::from_secs(30), || {
                if let Ok(Some(_)) = proc.child.try_wait() {
                    return Some(false);
                }
                matches!(http(addr, "/-/ready"), Some((200, _))).then_some(true)
            });
            let stderr = || proc.stderr.lock().unwrap().join("\n");
            match ready {
                Some(true) => return Self { proc, addr },
                Some(false) if attempt < 3 && stderr().contains("address already in use") => {
                    continue; // lost the free port to someone else: another one
                }
                _ => panic!(
                    "prometheus ({}) did not become ready on {addr}; stderr:\n{}",
                    config.display(),
                    stderr()
                ),
            }
        }
        unreachable!()
    }

    /// The last `n` lines of its log.
    fn log_tail(&self, n: usize) -> String {
        let lines = self.proc.stderr.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /api/v1/...`: the `data` of a successful answer.
    fn api(&self, path: &str) -> Value {
        let (status, body) =
            http(self.addr, path).unwrap_or_else(|| panic!("prometheus did not answer GET {path}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {status} {e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "GET {path}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)));
        assert_eq!(data["resultType"], "vector", "{expr}");
        data["result"].as_array().unwrap().clone()
    }

    fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The firing alerts, as "Name{label=value,...}" strings for messages.
    fn firing(&self) -> Vec<String> {
        self.alerts()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| format!("{}", a["labels"]))
            .collect()
    }
}

/// An expected alert: its name and labels it must carry.
struct Expect {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
}

impl Expect {
    fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        Self {
            name,
            labels: labels.iter().map(|&(k, v)| (k, v.to_string())).collect(),
        }
    }

    fn matches(&self, alert: &Value) -> bool {
        alert["labels"]["alertname"] == self.name
            && self
                .labels
                .iter()
                .all(|(k, v)| alert["labels"][k].as_str() == Some(v.as_str()))
    }
}

/// Waits (bounded) until every alert of `expect` is firing; checks that
/// the annotations of the firing alerts were rendered from labels that
/// exist, and that none of `not_firing` fires.
fn wait_firing(prom: &Prometheus, expect: &[Expect], not_firing: &[&str], timeout: Duration) {
    let done = poll(timeout, || {
        let alerts = prom.alerts();
        expect
            .iter()
            .all(|e| {
                alerts
                    .iter()
                    .any(|a| a["state"] == "firing" && e.matches(a))
            })
            .then_some(alerts)
    });
    let alerts = done.unwrap_or_else(|| {
        let missing: Vec<&str> = expect
            .iter()
            .filter(|e| {
                !prom
                    .alerts()
                    .iter()
                    .any(|a| a["state"] == "firing" && e.matches(a))
            })
            .map(|e| e.name)
            .collect();
        panic!(
            "after {timeout:?} these alerts are not firing: {missing:?}\nalerts: {}\nrules: {}\n\
             prometheus log (end):\n{}",
            serde_json::to_string_pretty(&prom.alerts()).unwrap(),
            serde_json::to_string_pretty(&prom.api("/api/v1/rules")).unwrap(),
            prom.log_tail(20)
        )
    });
    for a in alerts.iter().filter(|a| a["state"] == "firing") {
        for (k, v) in a["annotations"].as_object().unwrap() {
            let v = v.as_str().unwrap_or_default();
            assert!(
                !v.contains("<no value>") && !v.contains("error executing template"),
                "annotation {k} of {} refers to a label the alert does not have: {v}",
                a["labels"]
            );
        }
        let name = a["labels"]["alertname"].as_str().unwrap();
        assert!(
            !not_firing.contains(&name),
            "{name} fires but should not: {}",
            a["labels"]
        );
    }
}

/// Runs `cmd` to completion within `timeout` (killed by pid and the test
/// failed otherwise): its exit status and its stdout and stderr lines.
fn run_bounded(mut cmd: Command, timeout: Duration) -> (std::process::ExitStatus, String) {
    cmd.stdin(Stdio::null());
    let what = format!("{cmd:?} to finish");
    let mut p = Proc::spawn(cmd);
    let status = wait_for(timeout, &what, || p.child.try_wait().expect("try_wait"));
    // The reader threads see EOF once the process is gone.
    thread::sleep(Duration::from_millis(50));
    let out = format!(
        "{}\n{}",
        p.stdout.lock().unwrap().join("\n"),
        p.stderr.lock().unwrap().join("\n")
    );
    (status, out)
}

/// Runs dashboards/check_queries.py with `args`; panics with its output
/// unless it succeeds.
fn check_queries(args: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("dashboards/check_queries.py"))
        .args(args)
        // Prometheus is on loopback: never through a proxy.
        .env("no_proxy", "127.0.0.1,localhost")
        .env("NO_PROXY", "127.0.0.1,localhost");
    let (status, out) = run_bounded(cmd, Duration::from_secs(120));
    assert!(status.success(), "check_queries.py {args:?} failed:\n{out}");
    out
}

/// The load client to completion, whatever its exit status (the fork
/// server may drop connections on purpose).
fn burst_allowing_failures(server: &Server, connections: u32, hold: &str) {
    let mut cmd = Command::new(bin("forkserver"));
    cmd.args(["load", "burst", "--addr", &server.addr()]).args([
        "--connections",
        &connections.to_string(),
        "--hold",
        hold,
    ]);
    run_bounded(cmd, Duration::from_secs(30));
}

/// Inodes of the established TCP sockets whose local port is `port`: the
/// server side of the connections accepted on it.
fn connection_inodes(port: u16) -> HashSet<u64> {
    let mut out = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && let Ok(inode) = f[9].parse()
            {
                out.insert(inode);
            }
        }
    }
    out
}

#[test]
fn prometheus_fires_the_alerts_and_every_dashboard_query_has_data() {
    require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1?}] {what}", t0.elapsed());
    let tmp = TempDir::new("prometheus-test");
    let mut strays = Strays::default();

    // The servers, one per faulty mode.
    // A: the textbook echo server (one waitpid per SIGCHLD) whose children
    //    keep the listening socket: zombies, coalesced SIGCHLD, inherited
    //    leaks (held connections), listeners closed only by exit (short
    //    connections), reaps by the parent.
    let reap_once = Server::start(&["--reap", "once", "--child-closes-listener", "no"]);
    // B: inetd style, the listening socket without close-on-exec: carried
    //    into the exec'd handler.
    let exec = Server::start(&[
        "--exec-handler",
        "self",
        "--child-closes-listener",
        "no",
        "--listener-cloexec",
        "no",
    ]);
    // C: killed by SIGKILL after its second connection: orphans to init.
    let dies = Server::start(&["--exit-after", "2", "--die-by-signal", "KILL"]);
    // D: in a pids cgroup of 3 tasks, never reaping: fork fails with EAGAIN.
    let mut pids_max = Server::start(&["--pids-max", "3", "--reap", "none"]);
    // E: a healthy server for the agent with the tiny ring buffer.
    let healthy = Server::start(&[]);

    // One agent watches A-D (all are "forkserver": one server label);
    // another, with a 4 KiB ring buffer, watches E and loses events; a
    // third watches E too but may track only 4 processes in the kernel.
    let pid_args: Vec<String> = [&reap_once, &exec, &dies, &pids_max]
        .iter()
        .flat_map(|s| ["--pid".to_string(), s.pid.to_string()])
        .collect();
    let mut agent = Agent::start(&pid_args.iter().map(String::as_str).collect::<Vec<_>>());
    let lossy = Agent::start(&[
        "--pid",
        &healthy.pid.to_string(),
        "--ring-buffer-size",
        "4KiB",
    ]);
    let capped = Agent::start(&["--pid", &healthy.pid.to_string(), "--max-processes", "4"]);
    let (main_inst, lossy_inst, capped_inst) = (
        agent.http.to_string(),
        lossy.http.to_string(),
        capped.http.to_string(),
    );
    phase("servers and agents started");

    // Prometheus with the example config, retargeted, and the quick rules.
    let prom_dir = repo().join("dashboards/prometheus");
    let example = std::fs::read_to_string(prom_dir.join("prometheus.yml")).unwrap();
    let (rules, alert_names) =
        quick_rules(&std::fs::read_to_string(prom_dir.join("alerts.yml")).unwrap());
    let config = tmp.0.join("prometheus.yml");
    std::fs::write(
        &config,
        scrape_config(&example, &[agent.http, lossy.http, capped.http]),
    )
    .unwrap();
    // rule_files: alerts.yml is relative to the config file.
    std::fs::write(tmp.0.join("alerts.yml"), rules).unwrap();
    let prom = Prometheus::start(&config, &tmp.0.join("data"));
    phase(&format!("prometheus ready on {}", prom.url()));

    // Every rule of alerts.yml is loaded.
    let groups = prom.api("/api/v1/rules");
    let loaded: BTreeSet<String> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| Some(r["name"].as_str()?.to_string()))
        .collect();
    assert_eq!(
        loaded,
        alert_names.iter().cloned().collect::<BTreeSet<_>>(),
        "rules loaded by Prometheus vs alerts.yml"
    );
    // All targets scraped at least once before anything goes wrong, so
    // that increase() and rate() see the counters go up from zero.
    wait_for(
        Duration::from_secs(20),
        "every agent scraped (up == 1)",
        || {
            let up = prom.query(r#"up{job="forkwatch"} == 1"#);
            (up.len() == 3).then_some(())
        },
    );
    phase("every agent scraped");

    // A: bursts until SIGCHLDs coalesced and a zombie stays (bounded), then
    // two connections held (children holding the inherited socket).
    for round in 1.. {
        assert!(round <= 10, "10 bursts of 5 left no zombie behind");
        reap_once.burst(5, "100ms");
        thread::sleep(Duration::from_millis(300));
        if !procfs::zombie_children(reap_once.pid).is_empty() {
            break;
        }
    }
    let _held_a = reap_once.burst_in_background(2, "120s");
    // B: two connections held, each served by an exec'd handler holding
    // the listening socket.
    let _held_b = exec.burst_in_background(2, "120s");
    // C: two connections; the server kills itself after forking the second.
    let _held_c = dies.burst_in_background(2, "120s");
    // (Not reaped before the end: its pid stays its own for Server's drop.)
    wait_for(Duration::from_secs(10), "server C to die", || {
        procfs::state(dies.pid)
            .is_none_or(|s| s == 'Z')
            .then_some(())
    });
    // Its children, now init's: the processes under pid 1 that hold a
    // connection accepted on C's port (other tests may orphan
    // forkservers to init at the same time).
    let orphans: Vec<u32> = wait_for(Duration::from_secs(10), "C's two orphans", || {
        let conns = connection_inodes(dies.port);
        let c: Vec<u32> = procfs::children(1)
            .into_iter()
            .filter(|&p| !procfs::socket_inodes(p).is_disjoint(&conns))
            .collect();
        (c.len() == 2).then_some(c)
    });
    for &p in &orphans {
        strays.add(p);
    }
    // D: two children (server + 2 = pids.max), the next forks fail.
    burst_allowing_failures(&pids_max, 4, "100ms");
    pids_max
        .proc
        .wait_stderr(Duration::from_secs(5), "fork failed: EAGAIN");
    // E: the lossy agent stopped (as if starved of CPU) while a burst fills
    // its ring buffer (a few rounds at most); the capped agent cannot track
    // that many children.
    for round in 1.. {
        assert!(
            round <= 5,
            "5 bursts into a stopped agent's 4 KiB ring buffer lost no event"
        );
        lossy.proc.signal(Signal::SIGSTOP);
        burst_allowing_failures(&healthy, 40, "10ms");
        lossy.proc.signal(Signal::SIGCONT);
        // Asked of Prometheus, not of the agent: a GET /metrics resets the
        // ring-buffer fill gauge, and Prometheus must see the peak.
        let lost = poll(Duration::from_secs(5), || {
            let q = format!(r#"sum(forkwatch_events_lost_total{{instance="{lossy_inst}"}}) > 0"#);
            (!prom.query(&q).is_empty()).then_some(())
        });
        if lost.is_some() {
            break;
        }
    }
    phase("faults produced");

    let expect = [
        Expect::new(
            "ForkwatchUnreapedChildren",
            &[("instance", main_inst.as_str()), ("server", "forkserver")],
        ),
        Expect::new(
            "ForkwatchListenFdLeaked",
            &[("instance", main_inst.as_str()), ("kind", "inherited")],
        ),
        Expect::new(
            "ForkwatchListenFdAcrossExec",
            &[("instance", main_inst.as_str()), ("kind", "across_exec")],
        ),
        Expect::new(
            "ForkwatchOrphansReparented",
            &[("instance", main_inst.as_str()), ("new_parent", "init")],
        ),
        Expect::new(
            "ForkwatchForkFailures",
            &[("instance", main_inst.as_str()), ("errno", "EAGAIN")],
        ),
        Expect::new("ForkwatchEventsLost", &[("instance", lossy_inst.as_str())]),
        Expect::new(
            "ForkwatchRingBufferNearlyFull",
            &[("instance", lossy_inst.as_str())],
        ),
        Expect::new(
            "ForkwatchLimitReached",
            &[
                ("instance", capped_inst.as_str()),
                ("limit", "kernel_processes"),
            ],
        ),
    ];
    let never = [
        "ForkwatchDown",
        "ForkwatchAbsent",
        "ForkwatchCapabilityDisabled",
    ];
    wait_firing(&prom, &expect, &never, Duration::from_secs(60));
    phase(&format!("alerts firing: {:?}", prom.firing()));

    // Fresh observations for the histograms (the quantile panels rate()
    // over 1m, so the waits above must not have aged them out): a short
    // connection to A (its SIGCHLD reaps one child) and to E (reaped at
    // once, seen by the lossy agent with its ring buffer drained).
    reap_once.burst(1, "50ms");
    healthy.burst(5, "50ms");
    for inst in [&main_inst, &lossy_inst] {
        for h in [
            "forkwatch_reap_latency_seconds",
            "forkwatch_child_lifetime_seconds",
        ] {
            let q = format!(
                r#"histogram_quantile(0.5, sum by (le) (rate({h}_bucket{{instance="{inst}"}}[1m])))"#
            );
            wait_for(Duration::from_secs(15), &q, || {
                prom.query(&q)
                    .iter()
                    .any(|r| r["value"][1].as_str().is_some_and(|v| v != "NaN"))
                    .then_some(())
            });
        }
    }

    // Every dashboard query has data: all agents and servers (the
    // dashboard's default, "All" = .*), then one agent and one server
    // picked, escaped the way Grafana escapes a multi-value variable.
    let url = prom.url();
    let out = check_queries(&["--prometheus", &url, "--var", "job=forkwatch"]);
    eprintln!("{out}");
    let one_agent = main_inst.replace('.', r"\\.");
    check_queries(&[
        "--prometheus",
        &url,
        "--var",
        "job=forkwatch",
        "--var",
        &format!("instance={one_agent}"),
        "--var",
        "server=forkserver",
    ]);
    // The names: dashboard and rules vs what the agents export.
    for (name, a) in [("main", &agent), ("lossy", &lossy), ("capped", &capped)] {
        let scrape = tmp.0.join(format!("metrics-{name}.txt"));
        std::fs::write(&scrape, a.get("/metrics")).unwrap();
        let out = check_queries(&["--metrics", scrape.to_str().unwrap()]);
        eprintln!("{name} agent: {out}");
    }
    // What Prometheus stored is what the agents export.
    let exported: BTreeSet<String> = agent
        .get("/metrics")
        .lines()
        .filter(|l| l.starts_with("forkwatch_"))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    let stored: BTreeSet<String> = prom
        .api(&format!(
            "/api/v1/label/__name__/values?match[]={}",
            urlencode(r#"{job="forkwatch"}"#)
        ))
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            n.as_str()
                .filter(|n| n.starts_with("forkwatch_"))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        stored, exported,
        "forkwatch_* names in Prometheus vs /metrics"
    );
    // Every rule evaluates without error.
    let health: BTreeMap<String, String> = prom.api("/api/v1/rules")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                format!("{} {}", r["health"], r["lastError"]),
            )
        })
        .filter(|(_, h)| !h.starts_with("\"ok\""))
        .collect();
    assert!(health.is_empty(), "rules in error: {health:?}");
    phase("dashboard queries and metric names checked");

    // The main agent goes away: ForkwatchDown for it.
    let status = agent
        .proc
        .stop_with(Signal::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exited with {status} on SIGTERM");
    wait_firing(
        &prom,
        &[Expect::new(
            "ForkwatchDown",
            &[("instance", main_inst.as_str())],
        )],
        &["ForkwatchAbsent"],
        Duration::from_secs(30),
    );
    phase("ForkwatchDown firing");
}
