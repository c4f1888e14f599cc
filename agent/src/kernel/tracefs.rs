//! tracefs: finding (or mounting) it, and reading tracepoint `format` files,
//! which give the layout of each tracepoint's record on this kernel.

use std::{
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where tracefs lives on current kernels, and the older debugfs location.
pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); \
         run `mount -t tracefs tracefs {TRACEFS}` as root"
    )]
    NotMounted(String),
    /// A tracepoint's format file is missing: the kernel lacks that tracepoint.
    #[error("kernel has no tracepoint {category}:{name} ({path} missing)")]
    NoTracepoint {
        category: String,
        name: String,
        path: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The format file does not parse, or lacks a field the probes need.
    #[error("{0}")]
    Format(String),
}

/// Where the tracepoint `format` files are read from: the tracefs mount,
/// unless `FORKWATCH_TRACEFS` names another directory of the same shape.
/// That override exists to test what happens on a kernel that lacks a
/// tracepoint (a copy of tracefs with one event removed); probes still
/// attach through the real tracefs.
pub fn formats_root(mounted: &Path) -> PathBuf {
    std::env::var_os("FORKWATCH_TRACEFS").map_or_else(|| mounted.to_path_buf(), PathBuf::from)
}

/// The tracefs mount point, if tracefs is mounted.
pub fn find() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// The tracefs mount point, mounting tracefs at [`TRACEFS`] when it is not
/// mounted (aya looks tracepoint ids up there). Returns whether it mounted.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(p) = find() {
        return Ok((p, false));
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| TracefsError::NotMounted(e.desc().to_string()))?;
    match find() {
        Some(p) => Ok((p, true)),
        None => Err(TracefsError::NotMounted(
            "mounted, but no events directory".into(),
        )),
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatField {
    /// The field name, without any array suffix.
    pub name: String,
    /// The C declaration's type part, e.g. `unsigned int`, `__data_loc char[]`.
    pub ctype: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed `events/<category>/<name>/format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub fields: Vec<FormatField>,
}

impl Format {
    /// Parses the text of a format file.
    pub fn parse(text: &str) -> Result<Self, TracefsError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("ID:") {
                id = v.trim().parse().ok();
            } else if line.starts_with("field:") {
                fields.push(parse_field(line)?);
            }
        }
        Ok(Self {
            name: name.ok_or_else(|| TracefsError::Format("format file has no name".into()))?,
            id: id.ok_or_else(|| TracefsError::Format("format file has no ID".into()))?,
            fields,
        })
    }

    /// Reads `events/<category>/<name>/format` under `root`.
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TracefsError::NoTracepoint {
                    category: category.into(),
                    name: name.into(),
                    path: path.display().to_string(),
                }
            } else {
                TracefsError::Read {
                    path: path.display().to_string(),
                    source,
                }
            }
        })?;
        Self::parse(&text)
    }

    pub fn field(&self, name: &str) -> Option<&FormatField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field the probes read as a 64-bit slot (syscall arguments
    /// and return values are `long`-sized in these records); an error names
    /// the tracepoint and field when the layout is not what they can read.
    pub fn slot_offset(&self, field: &str) -> Result<u32, TracefsError> {
        let f = self.field(field).ok_or_else(|| {
            TracefsError::Format(format!("tracepoint {} has no field {field}", self.name))
        })?;
        if f.size != 8 {
            return Err(TracefsError::Format(format!(
                "tracepoint {} field {field} is {} bytes, expected 8",
                self.name, f.size
            )));
        }
        Ok(f.offset)
    }
}

/// `field:unsigned int fd; offset:16; size:8; signed:0;` (tab-separated)
fn parse_field(line: &str) -> Result<FormatField, TracefsError> {
    let bad = || TracefsError::Format(format!("unparsable format line: {line}"));
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("field:") {
            decl = Some(v.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    let decl = decl.ok_or_else(bad)?;
    // The name is the last identifier of the declaration, before a
    // trailing `[N]` (`char comm[16]`); a `[]` before the name belongs to
    // the type (`__data_loc char[] comm`).
    let without_array = match (decl.ends_with(']'), decl.rfind('[')) {
        (true, Some(i)) => decl[..i].trim_end(),
        _ => decl,
    };
    let split = without_array
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &without_array[split..];
    if name.is_empty() {
        return Err(bad());
    }
    let ctype = format!(
        "{}{}",
        without_array[..split].trim_end(),
        &decl[without_array.len()..]
    );
    Ok(FormatField {
        name: name.to_string(),
        ctype: ctype.trim().to_string(),
        offset: offset.ok_or_else(bad)?,
        size: size.ok_or_else(bad)?,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_618: &str = "name: sched_process_fork
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\", __get_str(parent_comm), REC->parent_pid, __get_str(child_comm), REC->child_pid
";

    const FORK_61: &str = "name: sched_process_fork
ID: 300
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn parses_both_comm_layouts() {
        let new = Format::parse(FORK_618).unwrap();
        assert_eq!(new.id, 372);
        assert_eq!(new.field("child_pid").unwrap().offset, 20);
        assert_eq!(new.field("parent_comm").unwrap().ctype, "__data_loc char[]");
        let old = Format::parse(FORK_61).unwrap();
        assert_eq!(old.field("child_pid").unwrap().offset, 44);
        let comm = old.field("child_comm").unwrap();
        assert_eq!((comm.ctype.as_str(), comm.size), ("char[16]", 16));
        assert!(old.field("parent_pid").unwrap().signed);
    }

    #[test]
    fn slot_offset_checks_the_size() {
        let f = Format::parse(FORK_618).unwrap();
        assert!(f.slot_offset("child_pid").is_err());
        assert!(f.slot_offset("missing").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Format::parse("").is_err());
        assert!(Format::parse("name: x\nID: 1\n\tfield:;offset:1;size:2;").is_err());
        assert!(Format::parse("name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;").is_err());
    }

    proptest::proptest! {
        /// Whatever a format file holds, parsing gives a result or an error.
        #[test]
        fn hostile_format_files_do_not_panic(text in "\\PC*", lines in proptest::collection::vec("[a-z_ :;\\[\\]0-9\t]{0,60}", 0..20)) {
            let _ = Format::parse(&text);
            let joined = format!("name: x\nID: 1\nformat:\n{}", lines.iter().map(|l| format!("\tfield:{l}")).collect::<Vec<_>>().join("\n"));
            if let Ok(f) = Format::parse(&joined) {
                for field in &f.fields {
                    let _ = f.slot_offset(&field.name);
                }
            }
        }
    }

    #[test]
    fn running_kernel_formats_parse() {
        let Some(root) = find() else {
            // Without tracefs mounted there is nothing to read; the
            // integration tests mount it.
            eprintln!("tracefs not mounted: skipped");
            return;
        };
        let f = Format::read(&root, "syscalls", "sys_enter_wait4").unwrap();
        assert_eq!(f.slot_offset("upid").unwrap(), 16);
    }
}
