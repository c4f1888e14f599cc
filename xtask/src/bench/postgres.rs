//! Overhead on a real fork-per-connection server: PostgreSQL forks a
//! backend per connection. A private cluster (initdb'd under the bench's
//! temp dir as `postgres`, on 127.0.0.1 and a free port), `pgbench -i`,
//! then `pgbench -C -S` (a new connection, hence a backend fork, per
//! select-only transaction): tps with and without forkwatch watching the
//! postmaster.

use std::{
    fmt::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx, Goal, Section,
    forkserver::{Tracer, attach, describe_findings, findings_opened, min_of},
    pause,
    proc::{free_port, run_capture},
    stats::{cell, median, ratios, summary_json},
};

/// The newest installed PostgreSQL's bin directory.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

pub fn version() -> String {
    bin_dir()
        .and_then(|b| crate::cmd::output(Command::new(b.join("postgres")).arg("--version")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("no `postgres` user (the postgresql package creates it)");
    }
    // SAFETY: non-null passwd entry.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A private cluster, stopped (by its postmaster's pid if need be) on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    uid: u32,
    gid: u32,
    port: u16,
    postmaster: Option<u32>,
}

impl Cluster {
    fn as_postgres(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.uid(self.uid)
            .gid(self.gid)
            .env("LC_ALL", "C")
            .current_dir(self.data.parent().expect("data dir has a parent"));
        c
    }

    fn create(ctx: &Ctx) -> anyhow::Result<Self> {
        let bin = bin_dir().context("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")?;
        let (uid, gid) = postgres_user()?;
        let dir = ctx.tmp.join("pg");
        std::fs::create_dir_all(&dir)?;
        // SAFETY: chown of a path we created, to the postgres user.
        let cpath = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        if unsafe { libc::chown(cpath.as_ptr(), uid, gid) } != 0 {
            bail!(
                "chown {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        let data = dir.join("data");
        let mut c = Self {
            bin,
            data,
            uid,
            gid,
            port: free_port()?,
            postmaster: None,
        };
        run_capture(
            "initdb",
            c.as_postgres("initdb").arg("-D").arg(&c.data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            Duration::from_secs(120),
        )?;
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=100 \
             -c fsync=off -c synchronous_commit=off",
            c.port,
            dir.display()
        );
        run_capture(
            "pg_ctl start",
            c.as_postgres("pg_ctl")
                .arg("-D")
                .arg(&c.data)
                .arg("-l")
                .arg(dir.join("log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
            Duration::from_secs(90),
        )?;
        let pidfile = std::fs::read_to_string(c.data.join("postmaster.pid"))
            .context("postmaster.pid after pg_ctl start")?;
        c.postmaster = Some(
            pidfile
                .lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .context("postmaster pid")?,
        );
        Ok(c)
    }

    fn pgbench(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bin.join("pgbench"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres");
        run_capture("pgbench", &mut cmd, timeout)
    }

    fn stop(&mut self) {
        let Some(pid) = self.postmaster.take() else {
            return;
        };
        let ok = run_capture(
            "pg_ctl stop",
            self.as_postgres("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
            Duration::from_secs(45),
        );
        if ok.is_err() && Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: pg_ctl stop failed; killing the postmaster (pid {pid})");
            // SAFETY: the postmaster we started, by pid; its backends exit
            // when it dies.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_pgbench(out: &str) -> Value {
    let num = |prefix: &str| {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
    };
    json!({
        "tps": num("tps = "),
        "transactions": num("number of transactions actually processed: "),
        "failed": num("number of failed transactions: "),
        "connection_ms": num("average connection time = "),
        "latency_ms": num("latency average = "),
    })
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let mut cluster = Cluster::create(ctx)?;
    let postmaster = cluster.postmaster.context("postmaster")?;
    eprintln!(
        "bench: PostgreSQL on 127.0.0.1:{} postmaster pid {postmaster}",
        cluster.port
    );
    cluster.pgbench(&["-i", "-q", "-s", "1"], Duration::from_secs(300))?;
    let clients = 4.to_string();
    let jobs = ctx.cpus.clamp(1, 4).to_string();
    let secs = ctx.duration.as_secs().max(1).to_string();
    let bench_args = ["-C", "-c", &clients, "-j", &jobs, "-T", &secs, "-S", "-n"];

    let tracers = [Tracer::None, Tracer::Forkwatch];
    let mut tps: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); 2];
    // Warm-up: the first connections fill caches.
    cluster.pgbench(
        &["-C", "-c", "2", "-T", "1", "-S", "-n"],
        Duration::from_secs(60),
    )?;
    for rep in 0..ctx.reps {
        for i in ctx.order(2, rep) {
            let attached = attach(ctx, tracers[i], postmaster, &[])?;
            let out = cluster.pgbench(&bench_args, ctx.duration + Duration::from_secs(120));
            let seen = attached.finish()?;
            let r = parse_pgbench(&out?);
            let t = r["tps"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "bench: postgres rep {}/{} {:<10} {t:>8.1} tps",
                rep + 1,
                ctx.reps,
                tracers[i].key()
            );
            tps[i].push(t);
            runs[i].push(json!({"rep": rep, "pgbench": r, "tracer": seen}));
            pause(Duration::from_millis(500))?;
        }
    }
    cluster.stop();

    let ratio = ratios(&tps[1], &tps[0]);
    let findings = findings_opened(&runs[1]);
    let events: Vec<f64> = runs[1]
        .iter()
        .filter_map(|r| {
            Some(r["tracer"]["events"].as_f64()? / r["pgbench"]["transactions"].as_f64()?)
        })
        .collect();
    let lost: f64 = runs[1]
        .iter()
        .filter_map(|r| r["tracer"]["events_lost"].as_f64())
        .sum();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} in a private cluster (initdb'd as `postgres` in the temp dir, `-c fsync=off`, on \
         127.0.0.1), `pgbench -i -s 1`, then `pgbench -C -c {clients} -j {jobs} -T {secs} -S -n` \
         per run: a new connection per select-only transaction, i.e. a backend fork and exit per \
         transaction. forkwatch runs `forkwatch run --pid POSTMASTER`.\n",
        version()
    );
    let _ = writeln!(md, "| variant | tps | ratio to baseline |\n|---|---|---|");
    let _ = writeln!(md, "| no tracer (baseline) | {} | 1 |", cell(&tps[0], 1));
    let _ = writeln!(
        md,
        "| forkwatch | {} | {} |",
        cell(&tps[1], 1),
        cell(&ratio, 3)
    );
    let _ = writeln!(
        md,
        "\nforkwatch saw {} events per transaction, lost {lost}, and opened these findings on \
         PostgreSQL: {} (none expected: the postmaster reaps its backends and they close the \
         listening sockets).",
        cell(&events, 1),
        describe_findings(&runs[1])
    );
    let m = median(&ratio);
    Ok(Section {
        id: "postgres",
        title: "Overhead on PostgreSQL (a backend fork per connection)",
        markdown: md,
        json: json!({
            "postgres": version(),
            "pgbench_args": bench_args,
            "baseline_tps": summary_json(&tps[0]),
            "forkwatch_tps": summary_json(&tps[1]),
            "ratio": summary_json(&ratio),
            "forkwatch_events_per_transaction": summary_json(&events),
            "forkwatch_events_lost": lost,
            "forkwatch_findings_opened": findings,
            "runs": {"baseline": runs[0], "forkwatch": runs[1]},
        }),
        goals: vec![Goal {
            what: "PostgreSQL pgbench -C: forkwatch tps vs untraced".into(),
            target: "≥ 0.97".into(),
            value: format!("{m:.3} (min {:.3})", min_of(&ratio)),
            met: m.is_finite().then_some(m >= 0.97),
        }],
        seconds: 0.0,
    })
}
