//! Machine set-up, idempotent: each step checks first and says what it
//! installs. On a machine that has everything, this takes well under a
//! second.
//!
//! What a fresh Debian 12 machine of this project's kind needs (see
//! ../shared/EBPF-TOOLCHAIN.md for how each was verified):
//! - an eBPF toolchain with the library sources for `-Z build-std=core`:
//!   `nightly` with rust-src when there is one, else Debian's rustc-web
//!   linked into rustup as `bpf-debian`;
//! - bpf-linker, built against Debian's LLVM 22;
//! - Prometheus' promtool and server (rule tests, the dashboard query test);
//! - tracefs mounted (aya looks tracepoint ids up there).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd::{is_root, output, sh, succeeds};

/// Debian packages the build and tests need: the LLVM bpf-linker links
/// against, and Prometheus (promtool) for the rules and dashboard tests.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "prometheus",
];

/// Debian's Rust with library sources, when no nightly with rust-src exists.
const DEBIAN_RUST: &[&str] = &["rustc-web", "rust-web-src", "cargo-web"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_TOOLCHAIN: &str = "bpf-debian";

pub fn run() -> anyhow::Result<()> {
    run_with(&[])
}

/// The set-up, with `extra` Debian packages (the kernel matrix's qemu).
pub fn run_with(extra: &[&str]) -> anyhow::Result<()> {
    let need_debian_rust = !toolchain_has_rust_src("nightly");
    let mut packages: Vec<&str> = PACKAGES.to_vec();
    packages.extend_from_slice(extra);
    if need_debian_rust {
        packages.extend_from_slice(DEBIAN_RUST);
    }
    install_packages(&packages)?;
    install_bpf_linker()?;
    if need_debian_rust {
        link_debian_toolchain()?;
    }
    mount_tracefs()?;
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "these packages are missing and installing them needs root: \
             sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version"));
    if have
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (against LLVM 22, ~1 min)");
    // bpf-linker's build finds LLVM through llvm-config on PATH.
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    sh(Command::new("cargo")
        .env("PATH", path)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"]))
}

/// Whether `rustup run <toolchain>` has the core library sources.
pub fn toolchain_has_rust_src(toolchain: &str) -> bool {
    output(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))
        .is_some_and(|sysroot| {
            Path::new(sysroot.trim())
                .join("lib/rustlib/src/rust/library/core/Cargo.toml")
                .exists()
        })
}

fn link_debian_toolchain() -> anyhow::Result<()> {
    if toolchain_has_rust_src(DEBIAN_TOOLCHAIN) {
        return Ok(());
    }
    eprintln!("setup: linking Debian's rustc-web into rustup as `{DEBIAN_TOOLCHAIN}`");
    // A stale link (e.g. to a removed compiler) would make `link` fail.
    let _ = succeeds(Command::new("rustup").args(["toolchain", "uninstall", DEBIAN_TOOLCHAIN]));
    sh(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))?;
    if !toolchain_has_rust_src(DEBIAN_TOOLCHAIN) {
        bail!(
            "`{DEBIAN_TOOLCHAIN}` has no library sources after linking (is rust-web-src installed?)"
        );
    }
    Ok(())
}

fn mount_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "setup: tracefs is not mounted; the kernel tests will fail until root runs \
             `mount -t tracefs tracefs /sys/kernel/tracing`"
        );
        return Ok(());
    }
    eprintln!("setup: mounting tracefs at /sys/kernel/tracing");
    sh(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
        .context("mounting tracefs")
}
