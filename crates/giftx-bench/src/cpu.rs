//! Who used the CPU during a run: the server under test (giftxd or the
//! echo server), redis-server, and the load generator (this process, or
//! `redis-benchmark` as its child), per call, and how busy that made the
//! box.
//!
//! Sources: `/proc/<pid>/stat` utime+stime for the server and for this
//! process (cutime+cstime for a child that was waited for, such as
//! `redis-benchmark`), Redis `INFO cpu` (`used_cpu_user` + `used_cpu_sys`,
//! all of redis-server's threads), and `/proc/stat` for the whole machine
//! (every process, other people's included).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::procs::{machine_jiffies, proc_cpu, redis_info, self_cpu};
use crate::stats::{round1, round3};

/// Threads the load generator's runtime runs on (set once at start).
pub static LOADGEN_THREADS: AtomicUsize = AtomicUsize::new(1);

/// What to measure.
#[derive(Clone)]
pub struct Probe {
    /// The server under test and its name (`giftxd`, `tonic echo server`).
    pub server: Option<(&'static str, u32)>,
    /// A connection to the redis-server in use (for `INFO cpu`).
    pub redis: Option<redis::aio::MultiplexedConnection>,
    /// The load generator's name: `giftx-bench` (this process) or
    /// `redis-benchmark` (a child of this process, counted once reaped).
    pub loadgen: &'static str,
}

/// CPU counters at one instant.
#[derive(Clone, Debug)]
pub struct Snap {
    at: Instant,
    server: Option<Duration>,
    redis: Option<Duration>,
    own: Duration,
    children: Duration,
    machine: Option<(u64, u64)>,
}

/// CPU per call over one run, by process.
#[derive(Clone, Debug, Serialize)]
pub struct CpuSplit {
    /// Calls in the run (all of them, failed ones too).
    pub calls: u64,
    /// Wall time between the two readings.
    pub seconds: f64,
    /// Calls per second over that time.
    pub calls_per_s: f64,
    /// The server under test (`giftxd`, `tonic echo server`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Its CPU µs per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_us_per_call: Option<f64>,
    /// redis-server CPU µs per call (`INFO cpu` used_cpu_user +
    /// used_cpu_sys), if Redis took part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_us_per_call: Option<f64>,
    /// What generated the load (`giftx-bench`, `redis-benchmark`).
    pub loadgen: String,
    /// Its CPU µs per call.
    pub loadgen_us_per_call: f64,
    /// Cores' worth of CPU the load generator used (its CPU per call ×
    /// calls/s).
    pub loadgen_cores_used: f64,
    /// Threads it had (giftx-bench: `--loadgen-threads`; redis-benchmark:
    /// 1). Near `loadgen_cores_used`, the load generator may be what limits
    /// the run.
    pub loadgen_threads: usize,
    /// The three added up.
    pub total_us_per_call: f64,
    /// CPUs on the machine.
    pub cores: usize,
    /// How busy these processes kept the box: total CPU per call × calls/s
    /// ÷ cores, in percent (100 = every core busy with this run).
    pub box_busy_pct: f64,
    /// How busy the whole box was over the same time (`/proc/stat`, every
    /// process including other people's), in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_busy_pct: Option<f64>,
}

/// `INFO cpu` used_cpu_user + used_cpu_sys.
pub async fn redis_cpu(c: &mut redis::aio::MultiplexedConnection) -> Result<Duration> {
    let i = redis_info(c, "cpu").await?;
    let get = |k: &str| -> Result<f64> {
        i.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no {k} in INFO cpu"))
    };
    Ok(Duration::from_secs_f64(
        get("used_cpu_user")? + get("used_cpu_sys")?,
    ))
}

impl Probe {
    /// giftxd (or another server) with its Redis, driven by this process.
    pub fn new(
        server: Option<(&'static str, u32)>,
        redis: Option<redis::aio::MultiplexedConnection>,
    ) -> Probe {
        Probe {
            server,
            redis,
            loadgen: "giftx-bench",
        }
    }

    /// Reads the counters now.
    pub async fn snap(&mut self) -> Result<Snap> {
        let redis = match self.redis.as_mut() {
            Some(c) => Some(redis_cpu(c).await?),
            None => None,
        };
        let server = match self.server {
            Some((_, pid)) => Some(proc_cpu(pid)?),
            None => None,
        };
        let (own, children) = self_cpu()?;
        Ok(Snap {
            at: Instant::now(),
            server,
            redis,
            own,
            children,
            machine: machine_jiffies().ok(),
        })
    }

    /// The split between two readings over `calls` calls.
    pub fn split(&self, a: &Snap, b: &Snap, calls: u64) -> CpuSplit {
        let n = calls.max(1) as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
        let delta = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        };
        let server = delta(a.server, b.server).map(us);
        let redis = delta(a.redis, b.redis).map(us);
        let loadgen_cpu = if self.loadgen == "giftx-bench" {
            b.own.saturating_sub(a.own)
        } else {
            b.children.saturating_sub(a.children)
        };
        let loadgen = us(loadgen_cpu);
        let total = server.unwrap_or(0.0) + redis.unwrap_or(0.0) + loadgen;
        let loadgen_threads = if self.loadgen == "giftx-bench" {
            LOADGEN_THREADS.load(Ordering::Relaxed).max(1)
        } else {
            1
        };
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let calls_per_s = calls as f64 / secs;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let machine_busy_pct = match (a.machine, b.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(round1((b1 - b0) as f64 * 100.0 / (t1 - t0) as f64))
            }
            _ => None,
        };
        CpuSplit {
            calls,
            seconds: round3(secs),
            calls_per_s: round1(calls_per_s),
            server: self.server.map(|(name, _)| name.to_owned()),
            server_us_per_call: server.map(round1),
            redis_us_per_call: redis.map(round1),
            loadgen: self.loadgen.to_owned(),
            loadgen_us_per_call: round1(loadgen),
            loadgen_cores_used: round3(loadgen * calls_per_s / 1e6),
            loadgen_threads,
            total_us_per_call: round1(total),
            cores,
            box_busy_pct: round1(total * calls_per_s / 1e6 / cores as f64 * 100.0),
            machine_busy_pct,
        }
    }
}

impl CpuSplit {
    /// One console line.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let (Some(s), Some(v)) = (&self.server, self.server_us_per_call) {
            parts.push(format!("{s} {v:.1}"));
        }
        if let Some(v) = self.redis_us_per_call {
            parts.push(format!("redis-server {v:.1}"));
        }
        parts.push(format!(
            "load generator ({}) {:.1}",
            self.loadgen, self.loadgen_us_per_call
        ));
        let machine = self
            .machine_busy_pct
            .map(|m| format!("; whole machine {m:.0}% busy (all processes)"))
            .unwrap_or_default();
        let limit = if self.loadgen_near_limit() {
            format!(
                "; WARNING: the load generator used {:.2} of its {} thread(s), it may be the limit",
                self.loadgen_cores_used, self.loadgen_threads
            )
        } else {
            String::new()
        };
        format!(
            "CPU per call: {} = {:.1} µs; × {:.0} calls/s = {:.0}% of {} cores{machine}{limit}",
            parts.join(" + "),
            self.total_us_per_call,
            self.calls_per_s,
            self.box_busy_pct,
            self.cores
        )
    }

    /// Did the load generator use most of the threads it had?
    pub fn loadgen_near_limit(&self) -> bool {
        self.loadgen_cores_used >= 0.8 * self.loadgen_threads as f64
    }
}
