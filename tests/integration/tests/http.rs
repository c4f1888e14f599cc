//! The HTTP endpoint: read-only, bounded against slow clients, and with
//! TLS and basic authentication from an exporter-toolkit web config file.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use forkwatch_integration::{Agent, require_root};

/// A raw request; returns the status line.
fn request(addr: std::net::SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.lines().next().unwrap_or_default().to_string()
}

#[test]
fn only_reads_are_served() {
    require_root();
    let agent = Agent::start(&["--pid", "1"]);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let status = request(
            agent.http,
            &format!(
                "{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(status.contains(" 405 "), "{method}: {status}");
    }
    let status = request(
        agent.http,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(" 200 "), "{status}");
    let status = request(
        agent.http,
        "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(" 404 "), "{status}");
}

#[test]
fn a_slowloris_client_does_not_stop_scrapes() {
    require_root();
    let agent = Agent::start(&["--pid", "1"]);
    // More slow clients than the endpoint has connection slots, each
    // sending a header line now and then but never finishing (bounded:
    // they stop after 20 s).
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let addr = agent.http;
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
                    return;
                };
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                let end = Instant::now() + Duration::from_secs(20);
                while Instant::now() < end {
                    if s.write_all(b"X-Slow: 1\r\n").is_err() {
                        return; // the server hung up on us: good
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A scrape still gets through (the slow ones are cut off after the
    // header timeout and free their slots); bounded wait.
    let started = Instant::now();
    let body = forkwatch_integration::http_get(agent.http, "/metrics");
    assert!(body.contains("forkwatch_build_info"));
    eprintln!("scrape during the slowloris took {:?}", started.elapsed());
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn tls_and_basic_auth_from_a_web_config_file() {
    require_root();
    let dir = std::env::temp_dir().join(format!("forkwatch-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .current_dir(&dir)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl could not make a certificate");
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )
    .unwrap();
    let web = dir.join("web.yml");
    let agent = Agent::start(&["--pid", "1", "--web.config.file", web.to_str().unwrap()]);
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(["--cacert", dir.join("server.crt").to_str().unwrap()])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("https://{}/metrics", agent.http);
    assert_eq!(curl(&["-u", "prometheus:s3cret", &url]), "200");
    assert_eq!(curl(&["-u", "prometheus:wrong", &url]), "401");
    assert_eq!(curl(&[&url]), "401");
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = format!("http://{}/metrics", agent.http);
    assert_ne!(curl(&["-u", "prometheus:s3cret", &plain]), "200");
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_web_config_is_a_clear_error() {
    require_root();
    let dir = std::env::temp_dir().join(format!("forkwatch-badweb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        "basic_auth_users:\n  prometheus: plaintext\n",
    )
    .unwrap();
    let out = Command::new(forkwatch_integration::bin("forkwatch"))
        .args([
            "run",
            "--pid",
            "1",
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.config.file",
        ])
        .arg(dir.join("web.yml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a bcrypt hash"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
