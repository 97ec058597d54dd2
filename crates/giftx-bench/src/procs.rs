//! The processes under test (giftxd, the echo server), their CPU time and
//! memory from `/proc`, Redis `INFO`, and what machine this is.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A child process killed (SIGKILL, by its own handle) on drop.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        ChildGuard { child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has it exited?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// giftxd running as a child process on a private Redis.
pub struct Giftxd {
    /// The child.
    pub proc: ChildGuard,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its config, keys and log.
    pub dir: tempfile::TempDir,
}

/// The provider id (and option id) the bench campaigns use: a simulator
/// with zero latency and no faults.
pub const SIM_PROVIDER: &str = "sim";

/// `state = "memory"`: the simulator keeps what it issued in giftxd's
/// memory, as a real provider keeps it in its own system, instead of in
/// giftx's Redis (the default, which would add a round trip per Exchange
/// that no real provider costs giftx).
const CONFIG: &str = r#"# giftx-bench: one simulated provider, zero latency, no faults,
# its issued deliverables kept in memory (not in giftx's Redis).
[providers.sim]
kind = "simulated"
latency_ms = 0
jitter_ms = 0
magic = false
state = "memory"
"#;

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// Finds `target/release/giftxd` next to this binary, unless given.
pub fn giftxd_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe().context("current exe")?;
    let p = exe.with_file_name("giftxd");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "{} not found: build it first with `cargo build --release -p giftx-server` \
             (or pass --giftxd PATH)",
            p.display()
        )
    }
}

impl Giftxd {
    /// Starts giftxd on `redis_url` with the bench configuration
    /// (workers off, so only the bench sweeps) and waits until it serves.
    /// `extra_env`: further `GIFTX_*` settings for this run.
    pub async fn start(bin: &Path, redis_url: &str, extra_env: &[(&str, &str)]) -> Result<Giftxd> {
        Giftxd::start_tls(bin, redis_url, extra_env, None).await
    }

    /// [`Giftxd::start`] for a giftxd that may serve TLS (`extra_env` sets
    /// `GIFTX_TLS_*`): the health check that waits for it goes over `tls`
    /// when given (health needs no token).
    pub async fn start_tls(
        bin: &Path,
        redis_url: &str,
        extra_env: &[(&str, &str)],
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Giftxd> {
        let dir = tempfile::tempdir().context("temp dir for giftxd")?;
        let config = dir.path().join("giftxd.toml");
        std::fs::write(&config, CONFIG)?;
        let hmac = dir.path().join("hmac.key");
        std::fs::write(
            &hmac,
            "giftx-bench-hmac-key-not-a-secret-0123456789abcdef\n",
        )?;
        let keys = dir.path().join("deliverable.keys");
        std::fs::write(
            &keys,
            "67696674782d62656e63682d64656c6976657261626c652d6b65792d30313233\n",
        )?;
        let log = std::fs::File::create(dir.path().join("giftxd.log"))?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("GIFTX_LISTEN", addr.to_string())
            .env("GIFTX_REDIS_URL", redis_url)
            .env("GIFTX_HMAC_KEY_FILE", &hmac)
            .env("GIFTX_DELIVERABLE_KEYS_FILE", &keys)
            .env("GIFTX_WORKERS", "false")
            .env("GIFTX_SEED_DEMO", "false")
            .env("GIFTX_LOG", "warn")
            .env_remove("GIFTX_METRICS_LISTEN")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut g = Giftxd {
            proc: ChildGuard { child },
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = g.proc.exited() {
                let log =
                    std::fs::read_to_string(g.dir.path().join("giftxd.log")).unwrap_or_default();
                bail!("giftxd exited at start ({status}): {log}");
            }
            if let Ok(ch) = connect_tls(addr, tls).await {
                let mut h = HealthClient::new(ch);
                if h.check(HealthCheckRequest::default()).await.is_ok() {
                    return Ok(g);
                }
            }
            if Instant::now() > deadline {
                bail!("giftxd did not serve on {addr} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its CPU time (user + system) so far.
    pub fn cpu(&self) -> Result<Duration> {
        proc_cpu(self.proc.pid())
    }

    /// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM).
    pub fn status_kb(&self, field: &str) -> Result<u64> {
        proc_status_kb(self.proc.pid(), field)
    }
}

/// The tonic echo ceiling's server: this binary's hidden `echo-server`
/// subcommand (tonic-health only), a child process like giftxd.
pub struct EchoServer {
    /// The child.
    pub proc: ChildGuard,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl EchoServer {
    /// Starts it and reads its address from its first stdout line.
    pub async fn start() -> Result<EchoServer> {
        let exe = std::env::current_exe().context("current exe")?;
        let mut child = Command::new(exe)
            .arg("echo-server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn echo server")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let proc = ChildGuard { child };
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).map(|_| line)
        })
        .await??;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("LISTEN ")
            .ok_or_else(|| anyhow!("echo server said {line:?}"))?
            .parse()?;
        Ok(EchoServer { proc, addr })
    }
}

/// A channel to `addr` (one HTTP/2 connection), with a 30 s call timeout.
pub async fn connect(addr: SocketAddr) -> Result<Channel> {
    connect_tls(addr, None).await
}

/// [`connect`], over TLS (`https://`) when `tls` is given.
pub async fn connect_tls(addr: SocketAddr, tls: Option<&ClientTlsConfig>) -> Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(t) = tls {
        e = e.tls_config(t.clone())?;
    }
    Ok(e.connect().await?)
}

/// `n` channels (connections) to `addr`.
pub async fn connect_many(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        v.push(connect(addr).await?);
    }
    Ok(v)
}

/// Clock ticks per second (`getconf CLK_TCK`), asked once.
fn clk_tck() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// utime, stime, cutime, cstime of a process (`/proc/<pid>/stat`), as
/// durations.
fn stat_times(pid: &str) -> Result<[Duration; 4]> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tck = clk_tck();
    let mut out = [Duration::ZERO; 4];
    for (k, o) in out.iter_mut().enumerate() {
        let ticks: u64 = f
            .get(11 + k)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()?;
        *o = Duration::from_micros(ticks * 1_000_000 / tck);
    }
    Ok(out)
}

/// User + system CPU time of a process (`/proc/<pid>/stat`).
pub fn proc_cpu(pid: u32) -> Result<Duration> {
    let [u, s, _, _] = stat_times(&pid.to_string())?;
    Ok(u + s)
}

/// This process's user + system CPU time (all its threads), and that of
/// its children that have exited and been waited for (such as
/// `redis-benchmark`).
pub fn self_cpu() -> Result<(Duration, Duration)> {
    let [u, s, cu, cs] = stat_times("self")?;
    Ok((u + s, cu + cs))
}

/// The whole machine's busy and total clock ticks so far (`/proc/stat`,
/// all CPUs; busy = everything but idle and iowait).
pub fn machine_jiffies() -> Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// A `/proc/<pid>/status` field in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("{field} not in /proc/{pid}/status"))
}

/// Samples a process's VmRSS every 25 ms on a thread until stopped; the
/// maximum seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kb = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_kb.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most one hour of samples.
            for _ in 0..144_000 {
                if let Ok(kb) = proc_status_kb(pid, "VmRSS") {
                    m.fetch_max(kb, Ordering::Relaxed);
                }
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        RssSampler {
            stop,
            max_kb,
            thread: Some(thread),
        }
    }

    /// Stops and returns the peak VmRSS seen, in kB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max_kb.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `INFO <section>` as key → value.
pub async fn redis_info(
    c: &mut redis::aio::MultiplexedConnection,
    section: &str,
) -> Result<BTreeMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query_async(c).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// `used_memory` in bytes.
pub async fn used_memory(c: &mut redis::aio::MultiplexedConnection) -> Result<i64> {
    redis_info(c, "memory")
        .await?
        .get("used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no used_memory in INFO"))
}

/// `INFO commandstats` as command → calls.
pub async fn command_calls(
    c: &mut redis::aio::MultiplexedConnection,
) -> Result<BTreeMap<String, u64>> {
    Ok(redis_info(c, "commandstats")
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("cmdstat_")?.to_owned();
            let calls = v.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name, calls))
        })
        .collect())
}

/// The machine the figures were taken on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// `/proc/meminfo` MemTotal in GiB.
    pub memory_gib: f64,
    /// `redis-server --version`.
    pub redis_version: String,
    /// `uname -sr`.
    pub kernel: String,
    /// `git rev-parse --short HEAD` (+ `-dirty`).
    pub git_commit: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started.
    pub loadavg_start: String,
    /// … and when it ended.
    pub loadavg_end: String,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    /// Reads it now.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        let mut git_commit = sh("git", &["rev-parse", "--short", "HEAD"]);
        if dirty {
            git_commit.push_str("-dirty");
        }
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            redis_version: sh("redis-server", &["--version"]),
            kernel: sh("uname", &["-sr"]),
            git_commit,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}
