//! The kernel matrix: forkwatch's tests on the LTS kernels users run, each
//! booted under qemu. The host kernel (6.18 here) is tested directly by
//! `cargo test`; this adds Debian's 6.1 and 6.12, whose tracepoint
//! layouts, raw tracepoint prototypes and BPF verifier differ from it.
//!
//! For each kernel: the newest Debian cloud image is fetched once
//! (fetch.rs), one initramfs holds the binaries, the test binaries and what
//! they load (initramfs.rs), qemu boots it (qemu.rs), and this binary, as
//! the guest's /init (guest.rs), runs `forkwatch check` and every test
//! binary and reports on a serial port. Then one report per kernel.

mod cpio;
mod fetch;
pub mod guest;
mod initramfs;
mod qemu;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd::{root, show};
use fetch::Kernel;

/// The matrix. Debian 12 ships both (linux and linux-6.12 sources); the
/// cloud flavour is the smallest image that has BTF, BPF, tracefs and the
/// 8250 serial console built in.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    Kernel {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
    },
];

/// Debian packages the matrix needs on the host: qemu, and busybox for a
/// shell and the usual commands in the guest.
pub const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];

/// Test binaries not run in the guests, and why: what they test does not
/// depend on the kernel, and what they need is not in the initramfs.
const GUEST_SKIP: &[(&str, &str)] = &[
    (
        "prometheus",
        "needs the Prometheus server and python3; tests the shipped alert rules and dashboards, not the kernel",
    ),
    (
        "foreign_servers",
        "needs python3 (its socketserver is the server under test); the kernel paths it takes are the fork server's",
    ),
];

/// A test binary's deadline inside the guest, and the whole VM's.
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const VM_TIMEOUT: Duration = Duration::from_secs(60 * 60);

pub struct Options<'a> {
    /// Passed to every test binary (libtest's name filter).
    pub filter: Option<&'a str>,
    /// Only these kernels (by name); all when empty.
    pub only: &'a [String],
    /// Only these test binaries (by suite name, e.g. `agent`); all when empty.
    pub suites: &'a [String],
}

/// One test binary.
struct Suite {
    name: String,
    exe: PathBuf,
    /// Its package's directory (cargo runs tests from there; empty in the
    /// guest).
    cwd: PathBuf,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let root = root();
    let cache = root.join("target/kernels");
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| opts.only.is_empty() || opts.only.iter().any(|o| o == k.name))
        .collect();
    if kernels.is_empty() {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!("no such kernel; the matrix has {}", names.join(", "));
    }

    let started = Instant::now();
    // forkwatch first: the plan runs its `check`.
    let mut binaries: Vec<PathBuf> = artifacts(&root, &["build", "--bins"])?
        .into_iter()
        .filter(|a| !a.test)
        .map(|a| a.executable)
        .collect();
    binaries.sort_by_key(|b| !b.ends_with("forkwatch"));
    if !binaries.first().is_some_and(|b| b.ends_with("forkwatch")) {
        bail!("cargo build --bins built no forkwatch");
    }
    let suites: Vec<Suite> = test_binaries(&root)?
        .into_iter()
        .filter(|s| opts.suites.is_empty() || opts.suites.contains(&s.name))
        .filter(|s| {
            let skip = GUEST_SKIP.iter().find(|(name, _)| *name == s.name);
            if let Some((name, why)) = skip {
                eprintln!("kernels: not run in the guests: {name} ({why})");
            }
            skip.is_none()
        })
        .collect();
    let mut images = Vec::new();
    for k in &kernels {
        images.push(k.image(&cache)?);
    }

    let mut plan = String::new();
    // The tests shrink their storms and stretch their deadlines under it.
    writeln!(plan, "env\tFORKWATCH_TEST_EMULATED\t1")?;
    writeln!(plan, "check\t{}", binaries[0].display())?;
    for s in &suites {
        write!(
            plan,
            "suite\t{}\t{}\t{}\t{}",
            s.name,
            s.cwd.display(),
            SUITE_TIMEOUT.as_secs(),
            s.exe.display()
        )?;
        if let Some(f) = opts.filter {
            write!(plan, "\t{f}")?;
        }
        plan.push('\n');
    }
    let mut all: Vec<PathBuf> = binaries.clone();
    all.extend(suites.iter().map(|s| s.exe.clone()));
    let initramfs = cache.join("initramfs.cpio");
    let size = initramfs::build(
        &initramfs::Contents {
            binaries: &all,
            dirs: &suites.iter().map(|s| s.cwd.clone()).collect::<Vec<_>>(),
            plan: &plan,
        },
        &cache.join("stage"),
        &initramfs,
    )?;
    eprintln!(
        "kernels: initramfs {} ({} MB, {} test binaries) ready after {:.1} s",
        initramfs.display(),
        size >> 20,
        suites.len(),
        started.elapsed().as_secs_f64()
    );

    // All kernels at once: each VM's vCPUs share one host thread (see
    // qemu.rs), so two VMs keep two cores busy.
    let outcomes: Vec<anyhow::Result<qemu::Outcome>> = std::thread::scope(|scope| {
        let runs: Vec<_> = kernels
            .iter()
            .zip(&images)
            .map(|(k, image)| {
                let boot = qemu::Boot {
                    name: k.name,
                    vmlinuz: &image.vmlinuz,
                    initramfs: &initramfs,
                    dir: cache.join(k.name),
                    cpus: 2,
                    memory_mb: 2048,
                    timeout: VM_TIMEOUT,
                    echo: true,
                };
                scope.spawn(move || qemu::boot(&boot))
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("boot thread panicked"))
            .collect()
    });
    let mut reports = Vec::new();
    for ((k, image), outcome) in kernels.iter().zip(&images).zip(outcomes) {
        let report = Report::parse(k.name, &image.package, &suites, &outcome?);
        fs::write(cache.join(k.name).join("report.txt"), report.render(true))?;
        reports.push(report);
    }
    eprintln!();
    for r in &reports {
        eprint!("{}", r.render(false));
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.kernel.as_str())
        .collect();
    eprintln!(
        "kernels: {} kernel(s) in {:.0} s",
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "tests failed on kernel(s) {} (console logs in {})",
            failed.join(", "),
            cache.display()
        );
    }
    Ok(())
}

/// The executables of `cargo ARGS --message-format=json` (which builds
/// them), but xtask's.
fn artifacts(root: &Path, args: &[&str]) -> anyhow::Result<Vec<Artifact>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(args)
        .arg("--message-format=json-render-diagnostics");
    eprintln!("+ {}", show(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("{} failed", show(&cmd));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(Artifact::parse)
        .filter(|a| !a.manifest_dir.ends_with("xtask"))
        .collect())
}

/// The test binaries from `cargo test --no-run`: unit tests first, then
/// the integration tests, in a stable order.
fn test_binaries(root: &Path) -> anyhow::Result<Vec<Suite>> {
    let mut suites: Vec<_> = artifacts(root, &["test", "--no-run"])?
        .into_iter()
        .filter(|a| a.test)
        .map(|a| {
            let unit = a.kind != "test";
            (
                (!unit, a.manifest_dir.clone(), a.target.clone()),
                Suite {
                    name: if unit {
                        format!("{} (unit)", a.target)
                    } else {
                        a.target
                    },
                    exe: a.executable,
                    cwd: a.manifest_dir,
                },
            )
        })
        .collect();
    suites.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(suites.into_iter().map(|(_, s)| s).collect())
}

/// The fields of a cargo `compiler-artifact` message with an executable.
/// Read with string matching: xtask has no JSON parser, and cargo writes
/// these fields in a fixed form.
struct Artifact {
    target: String,
    kind: String,
    /// Built as a test harness (`profile.test`).
    test: bool,
    manifest_dir: PathBuf,
    executable: PathBuf,
}

impl Artifact {
    fn parse(line: &str) -> Option<Self> {
        if !line.contains(r#""reason":"compiler-artifact""#) {
            return None;
        }
        let field = |key: &str| -> Option<String> {
            let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
            let len = line[start..].find('"')?;
            Some(line[start..start + len].to_string())
        };
        let executable = PathBuf::from(field("executable")?);
        let manifest = PathBuf::from(field("manifest_path")?);
        // "target":{"kind":["test"],...,"name":"agent",...}
        let target = &line[line.find(r#""target":{"#)?..];
        let kind_start = target.find(r#""kind":[""#)? + 9;
        let kind = target[kind_start..].split('"').next()?.to_string();
        let name_start = target.find(r#""name":""#)? + 8;
        let name = target[name_start..].split('"').next()?.to_string();
        // "profile":{...,"test":true} (a flat object)
        let profile = &line[line.find(r#""profile":{"#)?..];
        let profile = &profile[..profile.find('}')?];
        Some(Self {
            target: name,
            kind,
            test: profile.contains(r#""test":true"#),
            manifest_dir: manifest.parent()?.to_path_buf(),
            executable,
        })
    }
}

/// What one kernel's run produced.
struct Report {
    kernel: String,
    package: String,
    release: String,
    /// The guest's uptime when its init started (the boot, under TCG).
    boot_secs: String,
    elapsed: Duration,
    timed_out: bool,
    console_log: PathBuf,
    check: Vec<String>,
    check_exit: Option<i32>,
    /// (suite, outcome ("exit 0", "timeout ..."), seconds) in order.
    suites: Vec<(String, String, String)>,
    /// (suite, test, result) in order.
    tests: Vec<(String, String, String)>,
    /// Suites of the plan that never reported.
    missing: Vec<String>,
    done: bool,
}

impl Report {
    fn parse(kernel: &str, package: &str, suites: &[Suite], o: &qemu::Outcome) -> Self {
        let mut r = Report {
            kernel: kernel.to_string(),
            package: package.to_string(),
            release: String::new(),
            boot_secs: "?".to_string(),
            elapsed: o.elapsed,
            timed_out: o.timed_out,
            console_log: o.console_log.clone(),
            check: Vec::new(),
            check_exit: None,
            suites: Vec::new(),
            tests: Vec::new(),
            missing: Vec::new(),
            done: false,
        };
        for line in &o.results {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["kernel", release] => r.release = (*release).to_string(),
                ["uptime", secs] => r.boot_secs = (*secs).to_string(),
                ["check", l] => r.check.push((*l).to_string()),
                ["check-exit", code] => r.check_exit = code.parse().ok(),
                ["test", suite, test, result] => {
                    r.tests
                        .push(((*suite).into(), (*test).into(), (*result).into()));
                }
                ["suite-end", suite, outcome, secs] => {
                    r.suites
                        .push(((*suite).into(), (*outcome).into(), (*secs).into()));
                }
                ["done"] => r.done = true,
                _ => {}
            }
        }
        r.missing = suites
            .iter()
            .filter(|s| !r.suites.iter().any(|(name, ..)| *name == s.name))
            .map(|s| s.name.clone())
            .collect();
        r
    }

    fn passed(&self) -> bool {
        self.done
            && !self.timed_out
            && self.check_exit == Some(0)
            && self.missing.is_empty()
            && self.suites.iter().all(|(_, o, _)| o == "exit 0")
            && self.tests.iter().all(|(_, _, res)| res != "FAILED")
    }

    /// The report; `every_test` adds a line per test (for report.txt).
    fn render(&self, every_test: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== kernel {} ({}; uname {}): {} in {:.0} s (booted in {} s)",
            self.kernel,
            self.package,
            if self.release.is_empty() {
                "?"
            } else {
                &self.release
            },
            if self.passed() { "PASSED" } else { "FAILED" },
            self.elapsed.as_secs_f64(),
            self.boot_secs,
        );
        let _ = writeln!(
            s,
            "forkwatch check (exit {}):",
            self.check_exit
                .map_or_else(|| "none".to_string(), |c| c.to_string())
        );
        for l in &self.check {
            let _ = writeln!(s, "    {l}");
        }
        let _ = writeln!(
            s,
            "{:<30} {:>6} {:>6} {:>7} {:>8}  outcome",
            "test binary", "passed", "failed", "ignored", "seconds"
        );
        for (suite, outcome, secs) in &self.suites {
            let count = |res: &str| {
                self.tests
                    .iter()
                    .filter(|(s, _, r)| s == suite && r == res)
                    .count()
            };
            let _ = writeln!(
                s,
                "{suite:<30} {:>6} {:>6} {:>7} {secs:>8}  {outcome}",
                count("ok"),
                count("FAILED"),
                count("ignored")
            );
        }
        for (suite, test, res) in &self.tests {
            if every_test || res == "FAILED" {
                let _ = writeln!(s, "{res:<7} {suite}: {test}");
            }
        }
        for m in &self.missing {
            let _ = writeln!(s, "NOT RUN {m}");
        }
        for (suite, why) in GUEST_SKIP {
            let _ = writeln!(s, "skipped {suite} ({why})");
        }
        if self.timed_out {
            let _ = writeln!(s, "the VM timed out");
        } else if !self.done {
            let _ = writeln!(s, "the guest did not finish its plan");
        }
        let _ = writeln!(s, "console log: {}", self.console_log.display());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Artifact;

    #[test]
    fn cargo_artifact_messages() {
        let test = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests/integration#forkwatch-integration@0.1.0","manifest_path":"/w/tests/integration/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"agent","src_path":"/w/tests/integration/tests/agent.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/agent-1"],"executable":"/w/target/debug/deps/agent-1","fresh":true}"#;
        let a = Artifact::parse(test).unwrap();
        assert_eq!(
            (a.target.as_str(), a.kind.as_str(), a.test),
            ("agent", "test", true)
        );
        assert_eq!(a.manifest_dir.to_str(), Some("/w/tests/integration"));
        assert_eq!(a.executable.to_str(), Some("/w/target/debug/deps/agent-1"));
        // A bin built for running: its target is testable, its profile is not a test.
        let bin = test
            .replace(r#""kind":["test"]"#, r#""kind":["bin"]"#)
            .replace(
                r#""overflow_checks":true,"test":true"#,
                r#""overflow_checks":true,"test":false"#,
            );
        let b = Artifact::parse(&bin).unwrap();
        assert_eq!((b.kind.as_str(), b.test), ("bin", false));
        let lib = test.replace(
            r#""executable":"/w/target/debug/deps/agent-1""#,
            r#""executable":null"#,
        );
        assert!(Artifact::parse(&lib).is_none());
    }
}
