//! Servers forkwatch did not bundle. CPython's standard
//! `socketserver.ForkingTCPServer` forks a child per connection and does
//! not close the listening socket in the child, so every child holds it
//! for as long as its connection lives: a real leaked listen fd, the one
//! the fork server reproduces with `--child-closes-listener no`. It reaps
//! its children itself (waitpid(WNOHANG) between requests and every half
//! second), so it leaves no zombie past the threshold. What the agent says
//! must equal what /proc says.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use forkwatch_integration::{
    Agent, Proc, agrees_with_proc, holders, poll, procfs, require_root, serial,
};

/// An echo server, the way the standard library documents it.
const PYTHON_SERVER: &str = r#"
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
with socketserver.ForkingTCPServer(("127.0.0.1", 0), Echo) as server:
    print("listening", server.server_address[1], flush=True)
    server.serve_forever()
"#;

#[test]
fn python_forking_tcp_server_children_keep_the_listening_socket() {
    require_root();
    let _serial = serial();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON_SERVER]);
    let server = Proc::spawn(cmd);
    let port: u16 = server.wait_stdout(Duration::from_secs(20), "python listening", |l| {
        l.strip_prefix("listening ")?.parse().ok()
    });
    let inode = procfs::listen_inode(port).expect("python's listening socket in /proc/net/tcp");
    let agent = Agent::start(&["--pid", &server.pid().to_string()]);

    // Three clients, each echoed once and then held open.
    let conns: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"hello\n").unwrap();
            let mut echo = [0u8; 6];
            s.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"hello\n");
            s
        })
        .collect();
    let leaking = agrees_with_proc(
        &agent,
        "leaked_listen_fd",
        holders(server.pid(), inode),
        Some(3),
    );
    for f in agent.open("leaked_listen_fd") {
        assert_eq!(f["evidence"]["port"], u64::from(port), "{f:#}");
        assert_eq!(f["evidence"]["inode"], inode, "{f:#}");
        assert_eq!(f["ppid"], server.pid(), "{f:#}");
        assert_eq!(f["server"], "python3", "{f:#}");
    }

    // The clients hang up: the children exit, python reaps them, the
    // findings resolve, and no zombie is flagged.
    drop(conns);
    poll(Duration::from_secs(10), || {
        (agent.open_pids("leaked_listen_fd").is_empty()
            && leaking.iter().all(|&c| procfs::stat(c).is_none()))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("after the hang-up: {:#}", agent.findings()));
    assert!(agent.open_pids("unreaped_child").is_empty());
    assert_eq!(
        agent.metric("forkwatch_reaps_total{reaper=\"parent\",server=\"python3\"}"),
        3.0
    );
}
