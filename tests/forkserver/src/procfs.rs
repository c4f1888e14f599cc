//! The few /proc reads the server needs.

use nix::unistd::Pid;

/// Children of `parent` (live or zombie) with their state letter, from the
/// PPid field of every /proc/PID/stat.
pub fn children(parent: Pid) -> Vec<(Pid, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, ppid) = parse_stat(&stat)?;
        (ppid == parent.as_raw()).then_some((Pid::from_raw(pid), state))
    })
    .collect()
}

/// State and ppid from /proc/PID/stat (the comm field may contain spaces and
/// parentheses, so split after the last ')').
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "42 (a) b (c) Z 7 42 42 0 -1 4194564 0";
        assert_eq!(super::parse_stat(stat), Some(('Z', 7)));
    }
}
