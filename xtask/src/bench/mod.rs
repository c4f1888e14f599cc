//! `cargo xtask bench`: what forkwatch costs the server it watches, side
//! by side with what users would otherwise run (bpftrace, strace), how
//! fast a fork rate it keeps up with, how quickly it reports, and what it
//! costs itself. One run, ratios against an untraced baseline, variants
//! interleaved and repeated (min/median/max), a markdown report and a
//! JSON twin in `target/bench/` (`--out`).
//!
//! One file per benchmark: [`forkserver`] (overhead on the bundled
//! fork-per-connection server), [`postgres`] (overhead on PostgreSQL),
//! [`untracked`] (cost to processes the agent does not track),
//! [`capacity`] (fork rate kept up with, losses, ring-buffer size),
//! [`latency`] (exit/grace to finding), [`memory`] (RSS with 10k/100k
//! tracked processes, the cap, CPU per event). The helper programs are in
//! `tests/benchhelpers`.
//!
//! Hygiene: loopback only; every loop bounded in count and time; every
//! process the bench starts is stopped by pid; the temp dir is removed;
//! `kernel.pid_max`, when raised for 100k processes, is restored.

mod agent;
mod capacity;
mod forkserver;
mod latency;
mod memory;
mod postgres;
mod proc;
mod stats;
mod untracked;

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cmd::{is_root, output, root, sh};

/// Every benchmark, in the order they run.
pub const BENCHES: &[&str] = &[
    "forkserver",
    "postgres",
    "untracked",
    "capacity",
    "latency",
    "memory",
];

/// Debian packages the benchmarks use (peers, PostgreSQL, hyperfine for
/// reproducing single numbers by hand).
const PACKAGES: &[&str] = &["bpftrace", "strace", "postgresql", "hyperfine"];

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// CI smoke run: short durations, one repetition, small process
    /// counts, debug build. Checks that everything runs and the report
    /// is written; its numbers mean little.
    #[arg(long)]
    pub quick: bool,
    /// Where report.md and report.json go (default: target/bench).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Repetitions of each variant, interleaved (default: 3; 1 with --quick).
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Length of each load run (default: 10s; 2s with --quick).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Only these benchmarks (comma-separated): forkserver, postgres,
    /// untracked, capacity, latency, memory.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Use the debug build (the default with --quick; release otherwise).
    #[arg(long)]
    pub debug: bool,
    /// Use the release build even with --quick.
    #[arg(long, conflicts_with = "debug")]
    pub release: bool,
}

/// What every benchmark gets.
pub struct Ctx {
    pub quick: bool,
    pub reps: usize,
    /// Length of a load run.
    pub duration: Duration,
    pub bin_dir: PathBuf,
    /// The bench's temp dir (removed at the end).
    pub tmp: PathBuf,
    pub cpus: usize,
}

impl Ctx {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The order of `n` variants in repetition `rep`: rotated, so each
    /// variant runs first, in the middle and last in turn.
    pub fn order(&self, n: usize, rep: usize) -> Vec<usize> {
        (0..n).map(|i| (i + rep) % n).collect()
    }
}

/// A goal of the issue and whether this run met it.
pub struct Goal {
    pub what: String,
    pub target: String,
    pub value: String,
    pub met: Option<bool>,
}

impl Goal {
    fn json(&self) -> Value {
        json!({"what": self.what, "target": self.target, "value": self.value, "met": self.met})
    }
}

/// One benchmark's part of the report.
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub markdown: String,
    pub json: Value,
    pub goals: Vec<Goal>,
    pub seconds: f64,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C was pressed, so every loop unwinds and the drops
/// stop what was started.
pub fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, unless interrupted.
pub fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_stop()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Removes the temp dir when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        proc::remove_dir(&self.0);
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    if !is_root() {
        bail!(
            "the benchmarks load eBPF probes (forkwatch, bpftrace), attach strace and install \
             packages: run as root (sudo -E cargo xtask bench)"
        );
    }
    let selected: Vec<&'static str> = if args.only.is_empty() {
        BENCHES.to_vec()
    } else {
        let mut v = Vec::new();
        for o in &args.only {
            match BENCHES.iter().find(|b| **b == o.trim()) {
                Some(b) => v.push(*b),
                None => bail!("unknown benchmark {o:?}; known: {}", BENCHES.join(", ")),
            }
        }
        v
    };
    let quick = args.quick;
    let release = args.release || (!quick && !args.debug);
    let reps = args.reps.unwrap_or(if quick { 1 } else { 3 }).max(1);
    let duration = args.duration.unwrap_or(if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    });
    let root = root();
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/bench"));

    install_packages()?;
    let mut build = Command::new("cargo");
    build.current_dir(&root).args(["build", "--bins"]);
    if release {
        build.arg("--release");
    }
    sh(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    let bin_dir = root.join("target").join(profile);

    ctrlc::set_handler(|| {
        eprintln!("\nbench: interrupted; stopping what was started");
        STOP.store(true, Ordering::SeqCst);
    })
    .context("Ctrl-C handler")?;

    let tmp = std::env::temp_dir().join(format!("forkwatch-bench-{}", std::process::id()));
    proc::remove_dir(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    // PostgreSQL runs as `postgres` under it.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let _tmp_guard = TempDir(tmp.clone());

    let ctx = Ctx {
        quick,
        reps,
        duration,
        bin_dir: bin_dir.clone(),
        tmp: tmp.clone(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let machine = machine(&ctx, profile);
    eprintln!(
        "bench: {} mode, {reps} repetition(s), {:?} per load run, {profile} build, on {} ({} CPUs), kernel {}",
        if quick { "quick" } else { "full" },
        duration,
        machine["cpu"].as_str().unwrap_or("?"),
        ctx.cpus,
        machine["kernel"].as_str().unwrap_or("?"),
    );

    let mut sections = Vec::new();
    for id in &selected {
        if check_stop().is_err() {
            break;
        }
        eprintln!("\nbench: === {id} ===");
        let t0 = Instant::now();
        let result = match *id {
            "forkserver" => forkserver::run(&ctx),
            "postgres" => postgres::run(&ctx),
            "untracked" => untracked::run(&ctx),
            "capacity" => capacity::run(&ctx),
            "latency" => latency::run(&ctx),
            "memory" => memory::run(&ctx),
            _ => unreachable!(),
        };
        let mut section = match result {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench: {id} failed: {e:#}");
                Section {
                    id,
                    title: id,
                    markdown: format!("**Not measured**: {e:#}\n"),
                    json: json!({"error": format!("{e:#}")}),
                    goals: Vec::new(),
                    seconds: 0.0,
                }
            }
        };
        section.seconds = t0.elapsed().as_secs_f64();
        eprintln!("bench: {id} took {:.0} s", section.seconds);
        sections.push(section);
    }
    let interrupted = check_stop().is_err();

    let mut machine = machine;
    machine["loadavg_end"] = json!(loadavg());
    let total = started.elapsed();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let md_path = out_dir.join("report.md");
    let json_path = out_dir.join("report.json");
    let report = json!({
        "report": "forkwatch benchmarks",
        "started": humantime::format_rfc3339_seconds(started_at).to_string(),
        "mode": if quick { "quick" } else { "full" },
        "interrupted": interrupted,
        "total_seconds": total.as_secs_f64(),
        "config": {
            "repetitions": reps,
            "load_run_seconds": duration.as_secs_f64(),
            "build": profile,
            "benchmarks": selected,
        },
        "machine": machine,
        "goals": sections.iter().flat_map(|s| s.goals.iter().map(Goal::json)).collect::<Vec<_>>(),
        "results": sections.iter().map(|s| (s.id.to_string(), {
            let mut j = s.json.clone();
            j["seconds"] = json!(s.seconds);
            j
        })).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(
        &md_path,
        markdown(&report, &sections, &machine, &ctx, profile),
    )?;
    eprintln!(
        "\nbench: done in {:.0} s{}",
        total.as_secs_f64(),
        if interrupted { " (interrupted)" } else { "" }
    );
    println!("{}", md_path.display());
    println!("{}", json_path.display());
    if interrupted {
        bail!("interrupted; the report has what was measured");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// apt-get installs what is missing (and says so); nothing when all are there.
fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing Debian packages: {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

fn first_line(cmd: &mut Command) -> String {
    output(cmd)
        .and_then(|o| o.lines().find(|l| !l.trim().is_empty()).map(str::to_string))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn loadavg() -> String {
    read_trim("/proc/loadavg")
}

/// The machine, kernel and tool versions the numbers come from.
fn machine(ctx: &Ctx, profile: &str) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let root = root();
    let commit =
        first_line(
            Command::new("git")
                .current_dir(&root)
                .args(["rev-parse", "--short", "HEAD"]),
        );
    let dirty = output(
        Command::new("git")
            .current_dir(&root)
            .args(["status", "--porcelain"]),
    )
    .is_some_and(|s| !s.trim().is_empty());
    json!({
        "cpu": cpu,
        "cpus": ctx.cpus,
        "memory_gib": mem_kib as f64 / 1048576.0,
        "os": os,
        "kernel": first_line(Command::new("uname").arg("-r")),
        "kernel_version": first_line(Command::new("uname").arg("-v")),
        "arch": std::env::consts::ARCH,
        "virtualization": first_line(&mut Command::new("systemd-detect-virt")),
        "pid_max": read_trim("/proc/sys/kernel/pid_max"),
        "threads_max": read_trim("/proc/sys/kernel/threads-max"),
        "loadavg_start": loadavg(),
        "forkwatch": first_line(Command::new(ctx.bin("forkwatch")).arg("--version")),
        "git_commit": if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
        "build": profile,
        "rustc": first_line(Command::new("rustc").arg("--version")),
        "bpftrace": first_line(Command::new("bpftrace").arg("--version")),
        "strace": first_line(Command::new("strace").arg("-V")),
        "postgres": postgres::version(),
    })
}

fn markdown(
    report: &Value,
    sections: &[Section],
    machine: &Value,
    ctx: &Ctx,
    profile: &str,
) -> String {
    let mut md = String::new();
    let mode = report["mode"].as_str().unwrap_or("?");
    let _ = writeln!(md, "# forkwatch benchmarks\n");
    let _ = writeln!(
        md,
        "Run {} in **{mode}** mode: {} repetition(s) of each variant, interleaved (the order rotates \
         each repetition); load runs of {:.0} s; {profile} build. Cells with three numbers are \
         min / **median** / max over the repetitions; a ratio is the variant against the untraced \
         baseline of the same repetition (1.00 = no cost). Took {:.0} s in all.{}\n",
        report["started"].as_str().unwrap_or("?"),
        ctx.reps,
        ctx.duration.as_secs_f64(),
        report["total_seconds"].as_f64().unwrap_or(0.0),
        if report["interrupted"].as_bool() == Some(true) {
            " **Interrupted**: only part of it ran."
        } else {
            ""
        }
    );
    if ctx.quick {
        let _ = writeln!(
            md,
            "> Quick mode is a smoke test of the benchmark itself: one short repetition, small \
             process counts, usually a debug build. Do not quote its numbers.\n"
        );
    }
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    for (k, label) in [
        ("cpu", "CPU"),
        ("cpus", "CPUs"),
        ("memory_gib", "memory (GiB)"),
        ("os", "OS"),
        ("kernel", "kernel"),
        ("kernel_version", "kernel build"),
        ("virtualization", "virtualization"),
        ("pid_max", "kernel.pid_max"),
        ("threads_max", "kernel.threads-max"),
        ("loadavg_start", "load average at start"),
        ("loadavg_end", "load average at end"),
        ("forkwatch", "forkwatch"),
        ("git_commit", "commit"),
        ("rustc", "rustc"),
        ("bpftrace", "bpftrace"),
        ("strace", "strace"),
        ("postgres", "PostgreSQL"),
    ] {
        let v = match &machine[k] {
            Value::String(s) => s.clone(),
            Value::Number(n) if k == "memory_gib" => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        let _ = writeln!(md, "| {label} | {} |", v.replace('|', "\\|"));
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(
        md,
        "| goal | target | this run (median, or as stated) | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for s in sections {
        for g in &s.goals {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(md, "| {} | {} | {} | {met} |", g.what, g.target, g.value);
        }
        if s.json.get("error").is_some() {
            let _ = writeln!(md, "| {} | | not measured (see below) | n/a |", s.title);
        }
    }
    let _ = writeln!(md);
    for s in sections {
        let _ = writeln!(md, "## {}\n", s.title);
        md.push_str(&s.markdown);
        let _ = writeln!(md, "\n_({:.0} s)_\n", s.seconds);
    }
    md.push_str(&reproduce(ctx));
    md
}

fn reproduce(ctx: &Ctx) -> String {
    let bin = |n: &str| format!("target/release/{n}");
    format!(
        "## How to reproduce\n\n\
On Debian 12 (x86-64) with a BTF kernel, as root, from a clone:\n\n\
```sh\n\
cargo xtask bench            # full: 3 interleaved repetitions, 10 s load runs, release build (~21 min here)\n\
cargo xtask bench --quick    # CI smoke: 1 short repetition, small counts, debug build (~1.5 min here, warm build)\n\
cargo xtask bench --only forkserver,latency --reps 5 --duration 20s --out /tmp/b\n\
```\n\n\
It first runs `cargo xtask setup` (toolchain), installs what is missing of `{pkgs}` with apt-get \
(and says so), builds `cargo build --release --bins`, then writes `report.md` and `report.json` \
(`--out`, default `target/bench/`). It needs about 4 GiB of free memory for 100,000 processes, and \
raises `kernel.pid_max` for that run when it is too low (restored afterwards). Variants run \
interleaved: in repetition r the order is rotated by r, so no variant always runs first or last on a \
machine whose speed drifts.\n\n\
By hand, one variant at a time (each a separate terminal):\n\n\
```sh\n\
{fs} --port 0 --model fork-per-conn --reap loop      # prints: forkserver listening on 127.0.0.1:PORT pid PID\n\
{fw} run --pid PID --web.listen-address 127.0.0.1:0  # or: bpftrace xtask/src/bench/peer.bt; or: strace -f -o /tmp/s.out -p PID\n\
{fs} load steady --addr 127.0.0.1:PORT --count 100000000 --duration 10s --concurrency {c} --json\n\
{b}/forkloop --duration 5                             # the machine's fork+exit+wait rate\n\
{b}/closer 5000000                                    # the close() loop (untracked)\n\
hyperfine -w 1 -r 10 '{b}/closer 5000000'             # its time, with and without an agent running\n\
pgbench -h 127.0.0.1 -p PGPORT -U postgres -C -c 4 -j 2 -T 10 -S -n postgres\n\
```\n\n\
The helper programs are in `tests/benchhelpers` (`forkloop`, `sleepers`, `latprobe`; each has \
`--help`) and `tests/integration` (`closer`); the benchmark code in `xtask/src/bench/`, one file per \
section above.\n",
        pkgs = PACKAGES.join(" "),
        fs = bin("forkserver"),
        fw = bin("forkwatch"),
        b = "target/release",
        c = forkserver::concurrency(ctx),
    )
}
