//! Builds the kernel-side probes (`ebpf/forkwatch-ebpf`) for `bpfel-unknown-none`
//! and leaves the object in `OUT_DIR`, where `src/probes/loader.rs` embeds it.
//!
//! The eBPF crate needs `-Z build-std=core`, hence a toolchain with the
//! library sources: `nightly` with `rust-src` on a developer machine, or
//! Debian's `rustc-web` linked into rustup as `bpf-debian` (what
//! `cargo xtask setup` installs on machines without `rust-src`).
//! `FORKWATCH_EBPF_TOOLCHAIN` overrides the choice.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, bail};

const TOOLCHAIN_ENV: &str = "FORKWATCH_EBPF_TOOLCHAIN";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    let toolchain = match env::var(TOOLCHAIN_ENV) {
        Ok(t) if !t.is_empty() => t,
        _ => pick_toolchain()?,
    };
    if !has_rust_src(&toolchain) {
        bail!(
            "eBPF toolchain `{toolchain}` has no rust-src (needed for -Z build-std=core); \
             run `cargo xtask setup`, or set {TOOLCHAIN_ENV} to a toolchain with rust-src"
        );
    }
    // build-std is an unstable flag; Debian's rustc-web is a stable compiler,
    // so aya-build must be told to pass it anyway. Nightly ignores this.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    let manifest = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = Path::new(&manifest).join("../ebpf/forkwatch-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    // The shared event types are a dependency of both sides: rebuild when they change.
    println!("cargo:rerun-if-changed={manifest}/../ebpf/forkwatch-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "forkwatch-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

/// `nightly` when it has rust-src, else the Debian toolchain `cargo xtask setup` links.
fn pick_toolchain() -> anyhow::Result<String> {
    for candidate in ["nightly", "bpf-debian"] {
        if has_rust_src(candidate) {
            return Ok(candidate.to_string());
        }
    }
    bail!(
        "no eBPF toolchain found: neither `nightly` with rust-src nor `bpf-debian` is usable; \
         run `cargo xtask setup` (or set {TOOLCHAIN_ENV})"
    )
}

fn has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}
