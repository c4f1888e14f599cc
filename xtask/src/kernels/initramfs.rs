//! The guest's whole filesystem, as one initramfs: the xtask binary as
//! `/init`, forkwatch, the fork server, the test binaries (at their host
//! paths: the tests find binaries next to themselves, and the fork
//! server's tests have its path compiled in), the host tools the tests
//! run, and every shared library all of them load. The guest kernels have
//! virtio-blk as a module and no 9p, so nothing else reaches the guest.

use std::{
    collections::BTreeSet,
    fs,
    io::BufWriter,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    cpio::{Archive, Entry},
    guest,
};
use crate::cmd::output;

/// Programs the tests run by name (`check` unmounts and mounts tracefs,
/// `privileges` and the fork server's rlimit test use setpriv, `http` uses
/// openssl and curl). Missing ones are left out, with a warning: the
/// tests that need them then fail in the guest as they would on the host.
/// `reliability` uses unshare, the fork server's exec test wants a real
/// `cat` (busybox's would be named busybox in /proc).
const HOST_TOOLS: &[&str] = &[
    "mount", "umount", "setpriv", "unshare", "openssl", "curl", "cat",
];

/// Configuration files those tools read, copied when present.
const HOST_FILES: &[&str] = &["/etc/ssl/openssl.cnf"];

pub struct Contents<'a> {
    /// Binaries copied to the same path in the guest (debug info stripped).
    pub binaries: &'a [PathBuf],
    /// Empty directories (the test binaries' working directories).
    pub dirs: &'a [PathBuf],
    /// The plan `/init` runs.
    pub plan: &'a str,
}

/// Writes the initramfs to `out`; returns its size in bytes.
pub fn build(contents: &Contents, stage: &Path, out: &Path) -> anyhow::Result<u64> {
    let mut a = Archive::default();
    let mut elves: Vec<PathBuf> = Vec::new();

    // The kernel opens /dev/console for init before anything is mounted.
    a.add(
        "/dev/console",
        Entry::CharDev {
            major: 5,
            minor: 1,
            mode: 0o600,
        },
    );
    for dir in ["/proc", "/sys", "/tmp", "/run", "/root"] {
        a.add(dir, Entry::Dir);
    }
    for dir in contents.dirs {
        a.add(dir, Entry::Dir);
    }
    // Merged /usr, as on Debian 12: /bin/cat and /usr/bin/cat are one file.
    for dir in MERGED {
        a.add(
            Path::new("/").join(dir),
            Entry::Symlink(format!("usr/{dir}")),
        );
    }

    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage)?;
    // This very binary (read through /proc/self/exe in this process: cargo
    // may have rebuilt its file meanwhile).
    let init = stage.join("xtask");
    fs::copy("/proc/self/exe", &init).context("copying /proc/self/exe")?;
    a.add("/init", stripped(&init, stage)?);
    elves.push(init);
    for bin in contents.binaries {
        a.add(bin, stripped(bin, stage)?);
        elves.push(bin.clone());
    }
    for tool in HOST_TOOLS {
        match find_in_path(tool) {
            Some(path) => {
                a.add(usr(&path), file(&path, 0o755)?);
                elves.push(path);
            }
            None => eprintln!("kernels: {tool} not found on this machine; left out of the guest"),
        }
    }
    if Path::new(guest::BUSYBOX).exists() {
        a.add(
            usr(Path::new(guest::BUSYBOX)),
            file(Path::new(guest::BUSYBOX), 0o755)?,
        );
        elves.push(guest::BUSYBOX.into());
    } else {
        eprintln!(
            "kernels: no {} (busybox-static): the guest has no shell",
            guest::BUSYBOX
        );
    }
    for lib in shared_libraries(&elves)? {
        if !a.contains(&usr(&lib)) {
            a.add(usr(&lib), file(&lib, 0o755)?);
        }
    }
    for f in HOST_FILES {
        if Path::new(f).exists() {
            a.add(f, file(Path::new(f), 0o644)?);
        }
    }
    if Path::new("/etc/ssl/openssl.cnf").exists() {
        a.add(
            "/usr/lib/ssl/openssl.cnf",
            Entry::Symlink("/etc/ssl/openssl.cnf".into()),
        );
    }
    a.add(
        "/etc/passwd",
        text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
    );
    a.add("/etc/group", text("root:x:0:\nnogroup:x:65534:\n"));
    a.add("/etc/hosts", text("127.0.0.1 localhost\n::1 localhost\n"));
    a.add(guest::PLAN, text(contents.plan));

    let mut w = BufWriter::new(
        fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    a.write(&mut w)
        .with_context(|| format!("writing {}", out.display()))?;
    drop(w);
    let _ = fs::remove_dir_all(stage);
    Ok(fs::metadata(out)?.len())
}

fn text(s: &str) -> Entry {
    Entry::File {
        data: s.as_bytes().to_vec(),
        mode: 0o644,
    }
}

fn file(path: &Path, mode: u32) -> anyhow::Result<Entry> {
    Ok(Entry::File {
        data: fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        mode,
    })
}

/// The binary without its debug info (symbols stay, for backtraces):
/// a fifth of the size, and the guest holds it all in memory.
fn stripped(path: &Path, stage: &Path) -> anyhow::Result<Entry> {
    let name = path.file_name().context("binary without a file name")?;
    let tmp = stage.join(name).with_extension("stripped");
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    let entry = file(if ok { &tmp } else { path }, 0o755)?;
    let _ = fs::remove_file(&tmp);
    Ok(entry)
}

/// The top-level directories that are links into /usr.
const MERGED: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

/// Where `path` lives in the merged-/usr guest: /lib/x -> /usr/lib/x.
fn usr(path: &Path) -> PathBuf {
    let mut parts = path.components();
    parts.next(); // the root
    match parts.next() {
        Some(first) if MERGED.iter().any(|d| first.as_os_str() == *d) => {
            Path::new("/usr").join(first).join(parts.as_path())
        }
        _ => path.to_path_buf(),
    }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Every shared library (and the dynamic loader) the binaries load, by
/// the path the loader looks them up at, as `ldd` resolves them here.
fn shared_libraries(binaries: &[PathBuf]) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for bin in binaries {
        // ldd fails for static binaries: then there is nothing to add.
        let Some(text) = output(Command::new("ldd").arg(bin)) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest.split(" (").next().unwrap_or(""),
                None => line.split(" (").next().unwrap_or(""),
            };
            if path.starts_with('/') {
                libs.insert(PathBuf::from(path));
            } else if line.contains("not found") {
                bail!("{}: {line}", bin.display());
            }
        }
    }
    Ok(libs)
}
