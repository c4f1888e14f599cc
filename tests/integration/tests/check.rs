//! `forkwatch check` on this machine, and with tracefs unmounted.
//! One test in this binary on purpose: it unmounts tracefs, which no other
//! test may be using at the same moment (cargo runs test binaries one after
//! another).

use std::{path::Path, process::Command};

use forkwatch_integration::{bin, require_root};

fn check() -> (i32, String) {
    let out = Command::new(bin("forkwatch"))
        .arg("check")
        .output()
        .expect("run forkwatch check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_passes_and_mounts_tracefs_when_missing() {
    require_root();
    let (code, text) = check();
    assert_eq!(code, 0, "forkwatch check failed on this machine:\n{text}");
    for item in ["privileges", "btf", "tracefs", "probes load and attach"] {
        let line = text
            .lines()
            .find(|l| l.contains(item))
            .unwrap_or_else(|| panic!("no {item} line:\n{text}"));
        assert!(line.starts_with("PASS"), "{line}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("raw_tp:sched_process_fork") && l.starts_with("PASS")),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("FAIL")), "{text}");

    // Unmounted tracefs: check mounts it and says so.
    let tracing = Path::new("/sys/kernel/tracing");
    let status = Command::new("umount")
        .arg(tracing)
        .status()
        .expect("umount");
    assert!(status.success(), "cannot unmount tracefs for the test");
    assert!(!tracing.join("events").exists());
    let (code, text) = check();
    let remounted = tracing.join("events").exists();
    if !remounted {
        // Leave the machine as we found it even when the assertion fails.
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    assert!(remounted, "check did not mount tracefs:\n{text}");
    assert_eq!(code, 0, "{text}");
    let line = text.lines().find(|l| l.contains("tracefs")).unwrap();
    assert!(
        line.starts_with("PASS") && line.contains("was not mounted; mounted it"),
        "{line}"
    );
}
