//! `cargo xtask test`: everything a change must pass, in the order that
//! fails fastest: formatting, build, unit and kernel integration tests on
//! the host kernel, alert-rule tests, lints, and last the same tests on the
//! kernel matrix under qemu (kernels/).
//!
//! Cargo commands run on the default members: the probe crate only builds
//! for the BPF target, through agent/build.rs.

use std::process::Command;

use anyhow::bail;

use crate::{
    cmd::{is_root, root, sh},
    kernels,
};

/// Which kernels the integration tests run on.
#[derive(clap::Args)]
pub struct KernelArgs {
    /// Only on the host kernel: no kernel matrix (the fast path).
    #[arg(long, conflicts_with = "kernels")]
    pub host: bool,
    /// Only the kernel matrix: the tests inside qemu on each kernel of it
    /// (no formatting, host tests, rules or lints).
    #[arg(long)]
    pub kernels: bool,
    /// Only this kernel of the matrix (repeatable), e.g. `--kernel 6.1`.
    #[arg(long = "kernel", value_name = "NAME")]
    pub only: Vec<String>,
    /// Only this test binary in the matrix (repeatable), e.g. `--suite agent`.
    #[arg(long = "suite", value_name = "NAME")]
    pub suites: Vec<String>,
}

impl KernelArgs {
    /// Debian packages the chosen run needs beyond the usual set-up.
    pub fn packages(&self) -> &'static [&'static str] {
        if self.host { &[] } else { kernels::PACKAGES }
    }
}

pub fn run(filter: Option<&str>, k: &KernelArgs) -> anyhow::Result<()> {
    let matrix = || {
        kernels::run(&kernels::Options {
            filter,
            only: &k.only,
            suites: &k.suites,
        })
    };
    if k.kernels {
        return matrix();
    }
    let root = root();
    if !is_root() {
        bail!(
            "the integration tests load eBPF probes into the kernel and compare with /proc: \
             run as root (sudo -E cargo xtask test)"
        );
    }
    sh(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--check"]))?;
    sh(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--bins"]))?;
    let mut test = Command::new("cargo");
    test.current_dir(&root).args(["test"]);
    if let Some(f) = filter {
        test.arg(f);
    }
    sh(&mut test)?;
    if filter.is_none() {
        rules_and_deploy(&root)?;
        sh(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        demo_smoke(&root)?;
    }
    if !k.host {
        if filter.is_none() {
            bench_smoke(&root)?;
        }
        matrix()?;
    }
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// The README's main job, as a smoke test: `cargo xtask demo` for 12 s
/// must keep its server, agent and load running and end with forkwatch
/// having raised every finding the demo's server provokes (the demo checks
/// that itself and fails otherwise).
fn demo_smoke(root: &std::path::Path) -> anyhow::Result<()> {
    // Through cargo: `cargo build` above may have replaced this very binary.
    sh(Command::new("cargo")
        .current_dir(root)
        .args(["xtask", "demo", "--for", "12s"]))
}

/// The benchmark's quick mode, as a smoke test: it must run through and
/// write its report. Its numbers are not checked (no timing assertions in
/// tests); `cargo xtask bench` is where they mean something.
fn bench_smoke(root: &std::path::Path) -> anyhow::Result<()> {
    let out = root.join("target/bench-smoke");
    let _ = std::fs::remove_dir_all(&out);
    // Through cargo: `cargo build` above may have replaced this very binary.
    sh(Command::new("cargo")
        .current_dir(root)
        .args(["xtask", "bench", "--quick", "--out"])
        .arg(&out))?;
    for file in ["report.md", "report.json"] {
        let path = out.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("the bench smoke run wrote no {}: {e}", path.display()))?;
        if text.trim().is_empty() {
            bail!("the bench smoke run wrote an empty {}", path.display());
        }
    }
    if !serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(
        out.join("report.json"),
    )?)?
    .is_object()
    {
        bail!("the bench smoke run's report.json is not a JSON object");
    }
    Ok(())
}

/// The Prometheus rules (promtool's checks and unit tests), the
/// dashboard's queries against docs/metrics.md, and the deployment
/// manifests against the Kubernetes schemas.
fn rules_and_deploy(root: &std::path::Path) -> anyhow::Result<()> {
    let prom = root.join("dashboards/prometheus");
    sh(Command::new("promtool")
        .current_dir(&prom)
        .args(["check", "rules", "alerts.yml"]))?;
    sh(Command::new("promtool")
        .current_dir(&prom)
        .args(["test", "rules", "alerts_test.yml"]))?;
    sh(Command::new("promtool")
        .current_dir(&prom)
        .args(["check", "config", "prometheus.yml"]))?;
    sh(Command::new("python3")
        .current_dir(root)
        .args(["dashboards/check_queries.py", "--lint"]))?;
    sh(Command::new(root.join("deploy/validate.sh")).current_dir(root))
}
