//! Without root or without CAP_BPF/CAP_PERFMON: one line naming what is
//! missing, a non-zero exit, and nothing left loaded in the kernel.

use std::process::Command;

use forkwatch_integration::{bin, loaded_probe_programs, require_root};

fn run_events(prefix: &[&str]) -> (i32, String) {
    let forkwatch = bin("forkwatch");
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg(&forkwatch)
        .args(["events", "--pid", "1"])
        .output()
        .expect("run forkwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_privileges_one_line_and_nothing_attached() {
    require_root();
    let before = loaded_probe_programs();

    // Not root at all.
    let (code, err) = run_events(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    assert_ne!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{err}");
    assert!(
        lines[0].contains("CAP_BPF") && lines[0].contains("CAP_PERFMON"),
        "{err}"
    );

    // Root, but without CAP_BPF and CAP_PERFMON (and without CAP_SYS_ADMIN,
    // which would cover them).
    let (code, err) = run_events(&[
        "setpriv",
        "--bounding-set=-bpf,-perfmon,-sys_admin",
        "--inh-caps=-bpf,-perfmon,-sys_admin",
    ]);
    assert_ne!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{err}");
    assert!(
        lines[0].contains("missing capabilities: CAP_BPF, CAP_PERFMON"),
        "{err}"
    );
    assert!(
        !lines[0].contains("CAP_SYS_PTRACE"),
        "root keeps CAP_SYS_PTRACE: {err}"
    );

    assert_eq!(
        loaded_probe_programs(),
        before,
        "programs left loaded after the failures"
    );
}
