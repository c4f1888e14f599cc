//! `forkserver load`: the loopback-only load client.
//!
//! Every loop is bounded in count and time, and every socket operation has a
//! timeout (`--timeout`), so the client never hangs. It exits 1 if any
//! connection failed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{BurstArgs, LoadMode, SteadyArgs, Target};

pub fn run(mode: &LoadMode) -> anyhow::Result<ExitCode> {
    match mode {
        LoadMode::Burst(args) => burst(args),
        LoadMode::Steady(args) => steady(args),
    }
}

/// Connects and checks that `line` comes back.
fn connect_and_echo(target: &Target, line: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&target.addr, target.timeout)
        .with_context(|| format!("connect {}", target.addr))?;
    stream.set_read_timeout(Some(target.timeout))?;
    stream.set_write_timeout(Some(target.timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(line.as_bytes()).context("write")?;
    let mut echoed = vec![0; line.len()];
    stream.read_exact(&mut echoed).context("read echo")?;
    anyhow::ensure!(echoed == line.as_bytes(), "echo mismatch");
    Ok(stream)
}

/// Reads until the server closes (EOF), bounded by the read timeout.
fn wait_server_close(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[derive(Default)]
struct BurstSummary {
    echoed: u64,
    failed: u64,
    server_closed: u64,
}

fn burst(args: &BurstArgs) -> anyhow::Result<ExitCode> {
    let target = &args.target;
    let start = Instant::now();
    let mut summary = BurstSummary::default();
    for round in 0..args.rounds {
        if round > 0 {
            std::thread::sleep(args.gap);
        }
        let mut streams = Vec::with_capacity(args.connections as usize);
        for conn in 0..args.connections {
            let line = format!("forkserver burst round {round} connection {conn}\n");
            match connect_and_echo(target, &line) {
                Ok(stream) => {
                    summary.echoed += 1;
                    streams.push(stream);
                }
                Err(e) => {
                    summary.failed += 1;
                    eprintln!("forkserver load: round {round} connection {conn}: {e:#}");
                }
            }
        }
        std::thread::sleep(args.hold);
        // All FINs leave together: the children see EOF and exit at the same
        // moment, and their SIGCHLDs coalesce in the parent.
        for stream in &streams {
            let _ = stream.shutdown(Shutdown::Write);
        }
        for stream in &mut streams {
            if wait_server_close(stream) {
                summary.server_closed += 1;
            }
        }
        drop(streams);
    }
    let elapsed = start.elapsed();
    if target.json {
        println!(
            "{{\"mode\":\"burst\",\"rounds\":{},\"connections\":{},\"echoed\":{},\"failed\":{},\"server_closed\":{},\"elapsed_s\":{:.3}}}",
            args.rounds,
            args.connections,
            summary.echoed,
            summary.failed,
            summary.server_closed,
            elapsed.as_secs_f64()
        );
    } else {
        println!(
            "burst: rounds={} connections={} echoed={} failed={} server_closed={} elapsed={:.3}s",
            args.rounds,
            args.connections,
            summary.echoed,
            summary.failed,
            summary.server_closed,
            elapsed.as_secs_f64()
        );
    }
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn steady(args: &SteadyArgs) -> anyhow::Result<ExitCode> {
    let target = &args.target;
    let start = Instant::now();
    let deadline = start + args.duration;
    let issued = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|_| {
                s.spawn(|| {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if n >= args.count {
                            break;
                        }
                        let t0 = Instant::now();
                        match connect_and_echo(target, &format!("forkserver steady {n}\n")) {
                            Ok(stream) => {
                                drop(stream);
                                latencies.push(t0.elapsed());
                            }
                            Err(e) => {
                                if errors.fetch_add(1, Ordering::Relaxed) < 10 {
                                    eprintln!("forkserver load: connection {n}: {e:#}");
                                }
                            }
                        }
                    }
                    latencies
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ok = latencies.len() as u64;
    let errors = errors.load(Ordering::Relaxed);
    let rate = ok as f64 / elapsed;
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    if target.json {
        println!(
            "{{\"mode\":\"steady\",\"connections\":{ok},\"errors\":{errors},\"concurrency\":{},\"elapsed_s\":{elapsed:.3},\"conn_per_s\":{rate:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            args.concurrency,
            pct(50),
            pct(99),
            pct(100)
        );
    } else {
        println!(
            "steady: connections={ok} errors={errors} concurrency={} elapsed={elapsed:.3}s rate={rate:.1} conn/s p50={}us p99={}us max={}us",
            args.concurrency,
            pct(50),
            pct(99),
            pct(100)
        );
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
