//! A writer of the `newc` cpio format the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst). Written
//! here rather than with cpio(1) so that device nodes (/dev/console) and
//! any path can go in without root, staging directories or a package.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::{Path, PathBuf},
};

/// One entry of the archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// The archive's entries by absolute path; parents are added as needed.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Archive {
    pub fn add(&mut self, path: impl AsRef<Path>, entry: Entry) {
        let path = path.as_ref();
        assert!(path.is_absolute(), "{} is not absolute", path.display());
        for parent in path.ancestors().skip(1) {
            if parent != Path::new("/") {
                self.entries
                    .entry(parent.to_path_buf())
                    .or_insert(Entry::Dir);
            }
        }
        self.entries.insert(path.to_path_buf(), entry);
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    /// Writes the archive. The kernel creates no parent directories, and
    /// the BTreeMap's order puts every directory before what it contains.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let name = path.strip_prefix("/").expect("absolute path");
            let name = name.to_string_lossy();
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040_755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100_000 | mode, data, (0, 0)),
                Entry::Symlink(target) => (0o120_777, target.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor, mode } => (0o020_000 | mode, &[], (*major, *minor)),
            };
            write_header(out, ino, mode, data.len(), rdev, &name)?;
            out.write_all(data)?;
            pad(out, data.len())?;
        }
        write_header(out, 0, 0, 0, (0, 0), "TRAILER!!!")
    }
}

fn write_header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    size: usize,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| io::Error::other("file over 4 GiB"))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| io::Error::other("name too long"))?;
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, namesize, 0,
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        header.push_str(&format!("{f:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + name.len() + 1)
}

/// Pads to the format's 4-byte alignment.
fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0; 3][..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parents_come_first() {
        let mut a = Archive::default();
        a.add(
            "/a/b/c",
            Entry::File {
                data: b"hello".to_vec(),
                mode: 0o644,
            },
        );
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let (da, dab, file) = (
            text.find("a\0").unwrap(),
            text.find("a/b\0").unwrap(),
            text.find("a/b/c\0").unwrap(),
        );
        assert!(da < dab && dab < file);
        assert!(text.contains("TRAILER!!!\0"));
    }
}
