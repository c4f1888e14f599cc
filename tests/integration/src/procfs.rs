//! Ground truth from /proc, read directly (independently of the agent's own
//! /proc code, so the tests do not share its bugs).

use std::{collections::HashSet, fs};

/// (state letter, ppid) from /proc/PID/stat.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

pub fn state(pid: u32) -> Option<char> {
    stat(pid).map(|(s, _)| s)
}

pub fn ppid(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, p)| p)
}

pub fn is_zombie(pid: u32) -> bool {
    state(pid) == Some('Z')
}

/// Pids whose parent is `ppid`.
pub fn children(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| self::ppid(pid) == Some(ppid))
        .collect();
    out.sort_unstable();
    out
}

/// Zombie children of `ppid`.
pub fn zombie_children(ppid: u32) -> Vec<u32> {
    children(ppid)
        .into_iter()
        .filter(|&p| is_zombie(p))
        .collect()
}

/// Inodes of the sockets `pid` holds (`socket:[INODE]` links in /proc/PID/fd).
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let link = fs::read_link(e.ok()?.path()).ok()?;
        let s = link.to_str()?;
        s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// The inode of the TCP socket listening on `port` (state 0A in /proc/net/tcp{,6}).
pub fn listen_inode(port: u16) -> Option<u64> {
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                return f[9].parse().ok();
            }
        }
    }
    None
}
