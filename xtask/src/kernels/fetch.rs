//! Debian's kernel images, fetched once with `apt-get download` and kept
//! (only `vmlinuz` and its config) under `target/kernels/<name>/`. No
//! package is installed. Delete the directory to fetch the newest again.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::cmd::{output, sh};

/// A kernel of the matrix: the newest Debian package whose name is
/// `prefix` + digits + `suffix`.
pub struct Kernel {
    /// Short name, used in reports and cache paths.
    pub name: &'static str,
    pub prefix: &'static str,
    pub suffix: &'static str,
}

/// A kernel image ready to boot.
pub struct Image {
    pub vmlinuz: PathBuf,
    /// The Debian package and version it came from.
    pub package: String,
}

impl Kernel {
    /// The cached image, or fetch it.
    pub fn image(&self, cache: &Path) -> anyhow::Result<Image> {
        let dir = cache.join(self.name);
        let vmlinuz = dir.join("vmlinuz");
        let stamp = dir.join("package");
        if vmlinuz.exists()
            && let Ok(package) = fs::read_to_string(&stamp)
        {
            return Ok(Image {
                vmlinuz,
                package: package.trim().to_string(),
            });
        }
        let package = match self.newest_package() {
            Some(p) => p,
            None => {
                // Stale or missing package lists.
                sh(Command::new("apt-get").args(["update", "-q"]))?;
                self.newest_package().with_context(|| {
                    format!(
                        "no Debian package {}N{} in the package lists",
                        self.prefix, self.suffix
                    )
                })?
            }
        };
        eprintln!(
            "kernels: fetching {package} (once; cached in {})",
            dir.display()
        );
        let download = dir.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        let fetch = || {
            sh(Command::new("apt-get")
                .current_dir(&download)
                // Downloading as root into a directory _apt cannot write.
                .args(["-o", "APT::Sandbox::User=root", "download", "-q", &package]))
        };
        if fetch().is_err() {
            sh(Command::new("apt-get").args(["update", "-q"]))?;
            fetch()?;
        }
        let deb = fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        extract_boot(&deb, &download)?;
        let boot = download.join("boot");
        let mut found = false;
        for entry in fs::read_dir(&boot).with_context(|| format!("{}", boot.display()))? {
            let path = entry?.path();
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            if file.starts_with("vmlinuz-") {
                fs::rename(&path, &vmlinuz)?;
                found = true;
            } else if file.starts_with("config-") {
                fs::rename(&path, dir.join("config"))?;
            }
        }
        if !found {
            bail!("{} has no /boot/vmlinuz-*", deb.display());
        }
        let version = deb
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .split('_')
            .nth(1)
            .unwrap_or("?")
            .to_string();
        let package = format!("{package} {version}");
        fs::write(&stamp, format!("{package}\n"))?;
        fs::remove_dir_all(&download)?;
        Ok(Image { vmlinuz, package })
    }

    /// The newest matching package name in the package lists.
    fn newest_package(&self) -> Option<String> {
        let regex = format!(
            "^{}[0-9]+{}$",
            self.prefix.replace('.', "\\.").replace('+', "\\+"),
            self.suffix.replace('.', "\\.").replace('+', "\\+")
        );
        let list = output(Command::new("apt-cache").args(["search", "--names-only", &regex]))?;
        list.lines()
            .filter_map(|l| l.split(' ').next())
            .filter_map(|name| {
                let n: u32 = name
                    .strip_prefix(self.prefix)?
                    .strip_suffix(self.suffix)?
                    .parse()
                    .ok()?;
                Some((n, name.to_string()))
            })
            .max()
            .map(|(_, name)| name)
    }
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x ./boot`: only the image and its
/// config, not the modules.
fn extract_boot(deb: &Path, into: &Path) -> anyhow::Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start dpkg-deb")?;
    let status = Command::new("tar")
        .current_dir(into)
        .args(["-x", "--wildcards", "./boot/vmlinuz-*", "./boot/config-*"])
        .stdin(dpkg.stdout.take().expect("piped"))
        .status()
        .context("cannot start tar")?;
    let dpkg_status = dpkg.wait()?;
    if !status.success() || !dpkg_status.success() {
        bail!(
            "extracting /boot from {} failed (dpkg-deb {dpkg_status}, tar {status})",
            deb.display()
        );
    }
    Ok(())
}
