//! Loading the probe object into the kernel, with the layout and settings
//! the agent read at start-up, and attaching each capability's programs.
//!
//! Programs and links belong to the [`Probes`] value: dropping it (or the
//! agent dying, even by SIGKILL) closes their fds and the kernel detaches
//! them. Nothing is pinned, so nothing outlives the agent.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Program, RawTracePoint, TracePoint},
};
use forkwatch_common::{
    COMM_LEN, ListenSocket, MAX_EVENT_KIND, ProbeConfig, Target, Tracked, counter,
};
use tracing::{debug, warn};

use super::spec::{Attach, Capability, EXIT_WITH_GROUP_DEAD, EXIT_WITH_SIGNAL_LIVE, PROBES, Probe};
use crate::kernel::layout::Layout;

/// The compiled probe object, built by build.rs.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forkwatch"));

/// What the loader is asked for.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Track every process of the agent's pid namespace.
    pub track_all: bool,
    /// Capacity of the in-kernel tracked-process table.
    pub max_processes: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// aya-log level of the probes' diagnostics (0 off .. 5 trace).
    pub probe_log_level: u8,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            track_all: false,
            max_processes: 131_072,
            ring_buffer_bytes: 8 << 20,
            probe_log_level: 2,
        }
    }
}

/// The loaded, attached probes and the agent's handles on their maps.
pub struct Probes {
    /// Owns the programs and their links.
    ebpf: Ebpf,
    /// Keeps the probes' log ring buffer alive (dropping it before loading
    /// makes the verifier reject the programs) and drains it.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    tracked: HashMap<MapData, u32, Tracked>,
    listen: HashMap<MapData, u64, ListenSocket>,
    comm_targets: HashMap<MapData, [u8; COMM_LEN], Target>,
    cgroup_targets: HashMap<MapData, u64, Target>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    ring_buffer_bytes: u32,
    /// Capabilities that could not be attached, and why.
    pub disabled: BTreeMap<Capability, String>,
    /// Programs attached, for `check` and logs.
    pub attached: Vec<&'static str>,
}

/// Counters the probes keep (summed over CPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Events lost because the ring buffer was full, by event kind number.
    pub lost_by_kind: Vec<u64>,
    pub tracked_full: u64,
    pub pending_full: u64,
    pub listen_full: u64,
    pub read_errors: u64,
    /// Most unconsumed bytes seen in the ring buffer since the last reset.
    pub ring_high_water: u64,
}

impl ProbeCounters {
    pub fn lost_total(&self) -> u64 {
        self.lost_by_kind.iter().sum()
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("probe object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Probes {
    /// Loads the probe object with `layout`, attaches what the kernel supports.
    pub fn load(layout: &Layout, opts: &LoadOptions) -> anyhow::Result<Self> {
        layout.require_lifecycle()?;
        let config = ProbeConfig {
            track_all: u32::from(opts.track_all),
            pidns_nested: u32::from(layout.pidns_nested),
            pidns_dev: layout.pidns_dev,
            pidns_ino: layout.pidns_ino,
            agent_pid: std::process::id(),
            _pad: 0,
            kernel: layout.kernel,
            sys: layout.sys,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .override_global("AYA_LOG_LEVEL", &opts.probe_log_level, false)
            .map_max_entries("TRACKED", opts.max_processes)
            .map_max_entries("EXITED", opts.max_processes)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(PROBE_OBJECT)
            .map_err(|e| crate::privileges::explain_load_error(e.into()))?;

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!("probe logging unavailable: {e}");
                None
            }
        };
        let mut probes = Self {
            tracked: take(&mut ebpf, "TRACKED")?,
            listen: take(&mut ebpf, "LISTEN_SOCKETS")?,
            comm_targets: take(&mut ebpf, "COMM_TARGETS")?,
            cgroup_targets: take(&mut ebpf, "CGROUP_TARGETS")?,
            counters: take(&mut ebpf, "COUNTERS")?,
            events: Some(take(&mut ebpf, "EVENTS")?),
            ring_buffer_bytes: opts.ring_buffer_bytes,
            ebpf,
            logger,
            disabled: layout
                .missing
                .iter()
                .map(|(cap, why)| (*cap, why.join("; ")))
                .collect(),
            attached: Vec::new(),
        };
        probes.attach_all(layout)?;
        Ok(probes)
    }

    fn attach_all(&mut self, layout: &Layout) -> anyhow::Result<()> {
        let exit = Probe {
            program: if layout.exit_has_group_dead {
                EXIT_WITH_GROUP_DEAD
            } else {
                EXIT_WITH_SIGNAL_LIVE
            },
            attach: Attach::Raw("sched_process_exit"),
            capability: Capability::Lifecycle,
            optional: false,
        };
        for cap in Capability::ALL {
            if self.disabled.contains_key(&cap) {
                continue;
            }
            let group = PROBES
                .iter()
                .chain(std::iter::once(&exit))
                .filter(|p| p.capability == cap);
            let mut done = Vec::new();
            for probe in group {
                match self.attach_one(probe) {
                    Ok(()) => done.push(probe.program),
                    Err(e) if probe.optional => {
                        debug!("optional probe {} not attached: {e:#}", probe.attach);
                    }
                    Err(e) => {
                        let why = format!("{}: {e:#}", probe.attach);
                        if cap == Capability::Lifecycle {
                            return Err(e.context(format!("cannot attach {}", probe.attach)));
                        }
                        warn!(capability = %cap, "disabled: {why} ({})", cap.loss());
                        // Half a group would be worse than none: detach the rest.
                        for program in done.drain(..) {
                            if let Some(p) = self.ebpf.program_mut(program) {
                                let _ = unload(p);
                            }
                        }
                        self.disabled.insert(cap, why);
                        break;
                    }
                }
            }
            self.attached.extend(done);
        }
        Ok(())
    }

    fn attach_one(&mut self, probe: &Probe) -> anyhow::Result<()> {
        let program = self
            .ebpf
            .program_mut(probe.program)
            .with_context(|| format!("probe object has no program {}", probe.program))?;
        match probe.attach {
            Attach::Raw(tp) => {
                let p: &mut RawTracePoint = program.try_into()?;
                p.load().map_err(verifier_context)?;
                p.attach(tp)?;
            }
            Attach::Tracepoint(category, name) => {
                let p: &mut TracePoint = program.try_into()?;
                p.load().map_err(verifier_context)?;
                p.attach(category, name)?;
            }
        }
        Ok(())
    }

    /// The event ring buffer; the consumer takes it once.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        match self.events.take() {
            Some(rb) => Ok(rb),
            None => bail!("the event ring buffer was already taken"),
        }
    }

    /// Starts tracking process `pid` (started at `start_ns`, CLOCK_BOOTTIME,
    /// tick precision is enough) for target `server`.
    pub fn track(&mut self, pid: u32, start_ns: u64, server: u32) -> anyhow::Result<()> {
        let value = Tracked {
            start_ns,
            server,
            _pad: 0,
        };
        self.tracked
            .insert(pid, value, 0)
            .with_context(|| format!("cannot track pid {pid} (tracked-process table full?)"))
    }

    pub fn untrack(&mut self, pid: u32) {
        let _ = self.tracked.remove(&pid);
    }

    /// Pids in the in-kernel tracked table.
    pub fn tracked_pids(&self) -> Vec<u32> {
        self.tracked.keys().filter_map(Result::ok).collect()
    }

    pub fn add_listen_socket(&mut self, inode: u64, sock: ListenSocket) -> anyhow::Result<()> {
        self.listen
            .insert(inode, sock, 0)
            .with_context(|| format!("cannot add listening socket {inode}"))
    }

    pub fn remove_listen_socket(&mut self, inode: u64) {
        let _ = self.listen.remove(&inode);
    }

    /// Processes that exec a program whose comm is `comm` become tracked.
    pub fn add_comm_target(&mut self, comm: &str, server: u32) -> anyhow::Result<()> {
        let mut key = [0u8; COMM_LEN];
        let bytes = comm.as_bytes();
        // The kernel keeps the first 15 bytes of a comm.
        let n = bytes.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&bytes[..n]);
        self.comm_targets
            .insert(key, Target { server }, 0)
            .context("cannot add comm target")
    }

    /// Processes that exec inside cgroup `id` (or below it) become tracked.
    pub fn add_cgroup_target(&mut self, id: u64, server: u32) -> anyhow::Result<()> {
        self.cgroup_targets
            .insert(id, Target { server }, 0)
            .context("cannot add cgroup target")
    }

    /// Reads the probes' counters.
    pub fn counters(&self) -> ProbeCounters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        ProbeCounters {
            lost_by_kind: (0..=MAX_EVENT_KIND).map(sum).collect(),
            tracked_full: sum(counter::TRACKED_FULL),
            pending_full: sum(counter::PENDING_FULL),
            listen_full: sum(counter::LISTEN_FULL),
            read_errors: sum(counter::READ_ERRORS),
            ring_high_water: self
                .counters
                .get(&counter::RING_HIGH_WATER, 0)
                .map(|v| v.iter().copied().max().unwrap_or(0))
                .unwrap_or(0),
        }
    }

    /// Starts a new high-water period for the ring buffer fill.
    pub fn reset_ring_high_water(&mut self) {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        if let Ok(zeros) = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]) {
            let _ = self.counters.set(counter::RING_HIGH_WATER, zeros, 0);
        }
    }

    pub fn ring_buffer_bytes(&self) -> u32 {
        self.ring_buffer_bytes
    }

    /// Forwards what the probes logged through aya-log.
    pub fn flush_probe_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

/// Detaching a tracepoint waits for an RCU grace period (tens of ms here);
/// one program after another, 31 of them took almost 2 s. Detached from
/// one thread each, the waits overlap and the whole takes about one.
impl Drop for Probes {
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for (_, program) in self.ebpf.programs_mut() {
                s.spawn(move || {
                    let _ = unload(program);
                });
            }
        });
    }
}

fn unload(program: &mut Program) -> Result<(), aya::programs::ProgramError> {
    match program {
        Program::RawTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Keeps the verifier's log in the error, where it says what it rejected.
fn verifier_context(e: aya::programs::ProgramError) -> anyhow::Error {
    crate::privileges::explain_load_error(e.into())
}
