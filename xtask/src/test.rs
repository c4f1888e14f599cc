//! `cargo xtask test`: everything a change must pass, in the order that
//! fails fastest: formatting, build, unit and kernel integration tests,
//! alert-rule tests, lints.
//!
//! Cargo commands run on the default members: the probe crate only builds
//! for the BPF target, through agent/build.rs.

use std::process::Command;

use anyhow::bail;

use crate::cmd::{is_root, root, sh};

pub fn run(filter: Option<&str>) -> anyhow::Result<()> {
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
    }
    eprintln!("xtask: all tests passed");
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
