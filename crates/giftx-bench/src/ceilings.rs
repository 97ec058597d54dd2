//! Ceilings measured in the same run: what Redis can do with a claim-sized
//! script (`redis-benchmark` EVALSHA) and what tonic can do with a trivial
//! unary call (health Check against a server that does nothing else).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::cpu::{CpuSplit, Probe};
use crate::drive::{Op, closed_loop};
use crate::procs::{EchoServer, connect_many};
use crate::stats::RunStats;

/// A Lua script doing what one claim does to Redis: three reads (code
/// record, bucket deadline copy, lockout), then two HSETs, two HINCRBYs, a
/// ZADD and an XADD, on six keys sharing one hash tag.
pub const CLAIM_SIZED_SCRIPT: &str = r"
local f = ARGV[1]
local rec = redis.call('HGET', KEYS[1], f)
local dl = redis.call('HGET', KEYS[3], 'deadline')
local lock = redis.call('HGET', KEYS[4], f)
redis.call('HSET', KEYS[1], f, 'P0123456789abcdef0123')
redis.call('HSET', KEYS[2], f, ARGV[2])
redis.call('HINCRBY', KEYS[3], 'n:active', -1)
redis.call('HINCRBY', KEYS[3], 'n:pending', 1)
redis.call('ZADD', KEYS[5], ARGV[3], f)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', '10000', '*', 'k', 'claim', 't', ARGV[3], 'c', f)
return {0, 1, rec, dl, lock}
";

/// One `redis-benchmark` result.
#[derive(Clone, Debug, Serialize)]
pub struct RedisBench {
    /// What ran.
    pub name: String,
    /// Clients (`-c`).
    pub clients: usize,
    /// Requests (`-n`).
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// CPU per EVALSHA: redis-server and redis-benchmark (the load
    /// generator here).
    pub cpu: Option<CpuSplit>,
}

/// `SCRIPT LOAD`s `script` and runs `redis-benchmark` EVALSHA of it with
/// `clients` connections. `args` follow the sha (numkeys, keys, argv).
pub async fn redis_evalsha(
    port: u16,
    url: &str,
    name: &str,
    script: &str,
    args: &[String],
    clients: usize,
    requests: u64,
) -> Result<RedisBench> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(&mut c)
        .await?;
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-r", "1000000", "--csv", "EVALSHA", &sha])
        .args(args);
    let mut probe = Probe {
        server: None,
        redis: Some(c.clone()),
        loadgen: "redis-benchmark",
    };
    let cpu0 = probe.snap().await?;
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("run redis-benchmark (apt-get install redis-tools)")?;
    // redis-benchmark has been waited for: its CPU is in our cutime/cstime.
    let cpu1 = probe.snap().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    // --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
    // "p95_latency_ms","p99_latency_ms","max_latency_ms", then one row.
    let row = text
        .lines()
        .rfind(|l| l.starts_with("\"EVALSHA"))
        .context("no EVALSHA row in redis-benchmark output")?;
    let cols: Vec<f64> = row
        .split("\",\"")
        .skip(1)
        .map(|v| v.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    if cols.len() < 6 || cols[0] <= 0.0 {
        bail!("unexpected redis-benchmark row {row:?}");
    }
    Ok(RedisBench {
        name: name.to_owned(),
        clients,
        requests,
        rps: cols[0],
        p50_ms: cols[3],
        p99_ms: cols[5],
        cpu: Some(probe.split(&cpu0, &cpu1, requests)),
    })
}

/// The claim-sized script's arguments for `redis-benchmark` (`__rand_int__`
/// spreads the code field over a million values).
pub fn claim_sized_args() -> Vec<String> {
    let mut v: Vec<String> = vec!["6".into()];
    for k in ["c", "x", "m", "l", "p", "e"] {
        v.push(format!("{{bench}}:{k}"));
    }
    v.push("__rand_int__".into());
    v.push("r".repeat(96));
    v.push("1400000000000".into());
    v
}

/// The EVALSHA ceilings: the claim-sized script and `return 1`.
pub async fn redis_ceilings(
    port: u16,
    url: &str,
    clients: usize,
    requests: u64,
) -> Result<(RedisBench, RedisBench)> {
    let claim = redis_evalsha(
        port,
        url,
        "EVALSHA claim-sized script",
        CLAIM_SIZED_SCRIPT,
        &claim_sized_args(),
        clients,
        requests,
    )
    .await?;
    let trivial = redis_evalsha(
        port,
        url,
        "EVALSHA return 1",
        "return 1",
        &["0".to_owned()],
        clients,
        requests,
    )
    .await?;
    Ok((claim, trivial))
}

/// The tonic echo ceiling: closed-loop health Check against a tonic server
/// in its own process (the same load, connections and duration as giftx).
/// Returns the run and the echo server's CPU microseconds per call.
pub async fn tonic_echo(
    concurrency: usize,
    connections: usize,
    duration: Duration,
) -> Result<(RunStats, f64)> {
    let server = EchoServer::start().await?;
    let channels = connect_many(server.addr, connections).await?;
    let clients: Arc<Vec<HealthClient<tonic::transport::Channel>>> =
        Arc::new(channels.into_iter().map(HealthClient::new).collect());
    let op: Op = Arc::new(move |i| {
        let mut c = clients[(i as usize) % clients.len()].clone();
        Box::pin(async move {
            c.check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        })
    });
    // Warm up the connections and the server.
    let _ = closed_loop(
        "warm-up",
        op.clone(),
        concurrency,
        Duration::from_millis(500),
        u64::MAX,
    )
    .await;
    let mut probe = Probe::new(Some(("tonic echo server", server.proc.pid())), None);
    let cpu0 = probe.snap().await?;
    let (mut r, _) = closed_loop(
        "tonic echo (health Check)",
        op,
        concurrency,
        duration,
        u64::MAX,
    )
    .await;
    let cpu1 = probe.snap().await?;
    let split = probe.split(&cpu0, &cpu1, r.requests);
    let per_call = split.server_us_per_call.unwrap_or(0.0);
    r.cpu = Some(split);
    Ok((r, per_call))
}

/// The hidden `echo-server` subcommand: serve tonic-health on a free port,
/// print `LISTEN <addr>`, run until killed.
pub async fn serve_echo() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    println!("LISTEN {addr}");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
