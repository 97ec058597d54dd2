//! giftx-bench: the load generator, and the one command that reproduces
//! every figure in BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p giftx-bench -p giftx-server
//! target/release/giftx-bench all --out bench-results/
//! ```
//!
//! Each subcommand starts its own redis-server (AOF, appendfsync always) on
//! a free loopback port and giftxd (`target/release/giftxd`) as a child
//! process on it with a zero-latency simulated provider, measures, and
//! writes `results.json`, `summary.md` and (with open-loop runs)
//! `latency.svg` into `--out`.

mod ceilings;
mod cpu;
mod drive;
mod giftx;
mod hardening;
mod procs;
mod report;
mod stats;
mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::drive::{closed_loop, open_loop};
use crate::giftx::{Cred, Env};
use crate::report::{Everysec, Growth, Results};
use crate::stats::RunStats;

/// giftx load generator and benchmark suite.
#[derive(Debug, Parser)]
#[command(name = "giftx-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Everything in BENCHMARKS.md (≈ 5 minutes on 2 cores).
    All(Opts),
    /// Exchange: closed loop, cost per call, open-loop rate sweep.
    Exchange(Opts),
    /// VerifyCode: closed loop, cost per call, open-loop rate sweep.
    Verify(Opts),
    /// IssueCodes of --issue-codes codes: codes/s, Redis bytes/code, RSS.
    Issue(Opts),
    /// Issue --issue-codes codes, move the deadline past, time SweepExpired.
    Sweep(Opts),
    /// The ceilings only: redis-benchmark EVALSHA and tonic echo.
    Ceilings(Opts),
    /// Exchange and VerifyCode at --preload-codes, then at --grow-to
    /// (default 10,000,000) codes in the campaign.
    Growth(Opts),
    /// The hardening figures: VerifyCode of unknown codes vs wrong login
    /// keys, and Exchange with and without concurrent IssueCodes streams.
    Hardening(HardeningArgs),
    /// The trust figures: VerifyCode and Exchange over plaintext without
    /// authentication vs TLS + API keys (and with the rate limit on), and
    /// a tenant-B portal's VerifyCode of tenant-A codes vs unknown codes.
    Trust(TrustArgs),
    /// (internal) the tonic echo server for the echo ceiling.
    #[command(hide = true)]
    EchoServer,
}

#[derive(Clone, Debug, Args)]
struct Opts {
    /// Where results.json, summary.md and latency.svg go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// giftxd binary (default: giftxd next to this binary).
    #[arg(long)]
    giftxd: Option<PathBuf>,
    /// Requests in flight (closed loop; also redis-benchmark -c).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections from the load generator to each server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of each closed-loop run.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Seconds of each open-loop step.
    #[arg(long, default_value_t = 4.0)]
    step_duration: f64,
    /// Open-loop rates, in percent of the closed-loop maximum.
    #[arg(long, default_value = "25,50,75,100,125", value_delimiter = ',')]
    rates: Vec<f64>,
    /// Codes issued for the issuance and sweep figures.
    #[arg(long, default_value_t = 1_000_000)]
    issue_codes: u64,
    /// Codes in the exchange campaign for the main runs (issued via
    /// IssueCodes up to --drive-codes, the rest bulk-stored via the ledger).
    #[arg(long, default_value_t = 100_000)]
    preload_codes: u64,
    /// Most codes issued via IssueCodes (kept in memory to drive calls) at
    /// the start.
    #[arg(long, default_value_t = 200_000)]
    drive_codes: u64,
    /// Campaign size for the growth comparison (all: 1,000,000; growth:
    /// 10,000,000; 0 = skip).
    #[arg(long)]
    grow_to: Option<u64>,
    /// Calls sampled under MONITOR to count Redis round trips.
    #[arg(long, default_value_t = 2_000)]
    monitor_calls: u64,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 100_000)]
    redis_bench_requests: u64,
    /// Open loop: most requests outstanding; past it the sender waits (the
    /// wait still counts: latency is measured from the scheduled time).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Skip the appendfsync everysec comparison (all only).
    #[arg(long)]
    no_everysec: bool,
    /// Threads of the load generator's runtime. 1 (the default): one
    /// thread for everything, which batches the HTTP/2 writes of calls that
    /// become ready together and costs the shared machine the least CPU per
    /// call; 0 = one worker per core.
    #[arg(long, default_value_t = 1)]
    loadgen_threads: usize,
    /// Redis `auto-aof-rewrite-min-size` in MiB for the private
    /// redis-server. Redis's default (64) is for small datasets: with the
    /// bench's ~100 MB of data an Exchange run writes ~1.5 KB of AOF per
    /// Exchange and rewrites the AOF every few seconds, each rewrite
    /// stalling `appendfsync always` for tens of milliseconds. A ledger of
    /// production size (GBs) rewrites far less often; 2048 is closer to
    /// that. 64 measures with Redis's default.
    #[arg(long, default_value_t = 2048)]
    aof_rewrite_min_size_mb: u64,
}

/// `hardening` settings.
#[derive(Clone, Debug, Args)]
struct HardeningArgs {
    #[command(flatten)]
    opts: Opts,
    /// VerifyCode calls of each kind (unknown code, wrong login key).
    #[arg(long, default_value_t = 10_000)]
    verify_calls: usize,
    /// Concurrent IssueCodes streams opened while Exchange runs.
    #[arg(long, default_value_t = 20)]
    issue_streams: usize,
}

/// `trust` settings.
#[derive(Clone, Debug, Args)]
struct TrustArgs {
    /// Where results.json and summary.md go.
    #[arg(long, default_value = "bench-results/trust")]
    out: PathBuf,
    /// giftxd binary (default: giftxd next to this binary).
    #[arg(long)]
    giftxd: Option<PathBuf>,
    /// Requests in flight (closed loops).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections from the load generator to each giftxd.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of each closed-loop run.
    #[arg(long, default_value_t = 6.0)]
    duration: f64,
    /// Rounds: each variant is measured once per round, in rotated order.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// VerifyCode calls of each kind in the tenant timing check.
    #[arg(long, default_value_t = 10_000)]
    timing_calls: usize,
    /// Threads of the load generator's runtime (1; 0 = one per core).
    #[arg(long, default_value_t = 1)]
    loadgen_threads: usize,
    /// Redis `auto-aof-rewrite-min-size` in MiB.
    #[arg(long, default_value_t = 2048)]
    aof_rewrite_min_size_mb: u64,
}

impl Opts {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.clamp(0.5, 600.0))
    }
    fn step(&self) -> Duration {
        Duration::from_secs_f64(self.step_duration.clamp(0.5, 600.0))
    }
}

/// The codes the load generator holds for a campaign.
struct Pool {
    campaign: String,
    codes: Arc<Vec<Cred>>,
    /// Codes already exchanged (from the front).
    used: usize,
    /// Codes stored in the campaign (issued + bulk-stored).
    stored: u64,
    batches: u32,
}

impl Pool {
    fn available(&self) -> usize {
        self.codes.len().saturating_sub(self.used)
    }

    /// Issues another batch when fewer than `need` codes are left.
    async fn ensure(&mut self, env: &mut Env, need: u64) -> Result<()> {
        let avail = self.available() as u64;
        if avail >= need {
            return Ok(());
        }
        let n = (need - avail).clamp(20_000, 2_000_000);
        self.batches += 1;
        let (codes, i) = env
            .issue(&self.campaign, &format!("drive-{}", self.batches), n, true)
            .await?;
        println!(
            "  issued {n} more drive codes ({:.0} codes/s)",
            i.codes_per_s
        );
        let mut v = Vec::with_capacity(self.codes.len() + codes.len());
        v.extend(self.codes.iter().cloned());
        v.extend(codes);
        self.codes = Arc::new(v);
        self.stored += n;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Plan {
    ceilings: bool,
    exchange: bool,
    verify: bool,
    open_loop: bool,
    issue: bool,
    sweep: bool,
    grow_to: u64,
    everysec: bool,
}

impl Plan {
    const NONE: Plan = Plan {
        ceilings: false,
        exchange: false,
        verify: false,
        open_loop: false,
        issue: false,
        sweep: false,
        grow_to: 0,
        everysec: false,
    };
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::EchoServer => 0,
        Cmd::All(o)
        | Cmd::Exchange(o)
        | Cmd::Verify(o)
        | Cmd::Issue(o)
        | Cmd::Sweep(o)
        | Cmd::Ceilings(o)
        | Cmd::Growth(o) => o.loadgen_threads,
        Cmd::Hardening(h) => h.opts.loadgen_threads,
        Cmd::Trust(t) => t.loadgen_threads,
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    cpu::LOADGEN_THREADS.store(
        if threads == 0 { cores } else { threads },
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("giftx-bench: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        let (opts, plan) = match cli.cmd {
            Cmd::EchoServer => return ceilings::serve_echo().await,
            Cmd::Hardening(h) => return run_hardening(h).await,
            Cmd::Trust(t) => return run_trust(t).await,
            Cmd::All(o) => {
                let p = Plan {
                    ceilings: true,
                    exchange: true,
                    verify: true,
                    open_loop: true,
                    issue: true,
                    sweep: true,
                    grow_to: o.grow_to.unwrap_or(1_000_000),
                    everysec: !o.no_everysec,
                };
                (o, p)
            }
            Cmd::Exchange(o) => {
                let p = Plan {
                    ceilings: true,
                    exchange: true,
                    verify: false,
                    open_loop: true,
                    issue: false,
                    sweep: false,
                    grow_to: o.grow_to.unwrap_or(0),
                    everysec: false,
                };
                (o, p)
            }
            Cmd::Verify(o) => {
                let p = Plan {
                    ceilings: true,
                    exchange: false,
                    verify: true,
                    open_loop: true,
                    issue: false,
                    sweep: false,
                    grow_to: o.grow_to.unwrap_or(0),
                    everysec: false,
                };
                (o, p)
            }
            Cmd::Issue(o) => (
                o,
                Plan {
                    issue: true,
                    ..Plan::NONE
                },
            ),
            Cmd::Sweep(o) => (
                o,
                Plan {
                    issue: true,
                    sweep: true,
                    ..Plan::NONE
                },
            ),
            Cmd::Ceilings(o) => (
                o,
                Plan {
                    ceilings: true,
                    ..Plan::NONE
                },
            ),
            Cmd::Growth(o) => {
                let grow_to = o.grow_to.unwrap_or(10_000_000);
                (
                    o,
                    Plan {
                        exchange: true,
                        verify: true,
                        grow_to,
                        ..Plan::NONE
                    },
                )
            }
        };
        run(opts, plan).await
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("giftx-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(o: Opts, plan: Plan) -> Result<()> {
    let started = Instant::now();
    let mut res = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Some(procs::Machine::probe()),
        concurrency: o.concurrency,
        connections: o.connections,
        appendfsync: "always".into(),
        aof_rewrite_min_size_mb: o.aof_rewrite_min_size_mb,
        ..Results::default()
    };
    std::fs::create_dir_all(&o.out).with_context(|| format!("create {}", o.out.display()))?;
    let bin = procs::giftxd_path(o.giftxd.as_deref())?;
    println!(
        "giftx-bench: giftxd {}, load average {}",
        bin.display(),
        procs::loadavg()
    );
    let mut env = Env::start(&bin, o.connections, o.aof_rewrite_min_size_mb).await?;
    println!(
        "redis-server on port {} (AOF, appendfsync always, auto-aof-rewrite-min-size {} MiB); \
         giftxd pid {} on {}",
        env.redis.port(),
        o.aof_rewrite_min_size_mb,
        env.giftxd.proc.pid(),
        env.giftxd.addr
    );
    let c = o.concurrency.max(1);

    if plan.ceilings {
        println!("== ceilings");
        if plan.exchange || !plan.verify {
            let (claim, trivial) = ceilings::redis_ceilings(
                env.redis.port(),
                &env.redis.url(),
                c,
                o.redis_bench_requests,
            )
            .await?;
            for b in [&claim, &trivial] {
                println!(
                    "  {}: {:.0}/s p50 {:.2} p99 {:.2} ms",
                    b.name, b.rps, b.p50_ms, b.p99_ms
                );
                if let Some(cpu) = &b.cpu {
                    println!("    {}", cpu.line());
                }
            }
            res.ceiling_evalsha_claim = Some(claim);
            res.ceiling_evalsha_trivial = Some(trivial);
        }
        if plan.verify || !plan.exchange {
            let (echo, cpu) = ceilings::tonic_echo(c, o.connections, o.duration()).await?;
            println!("  {}", echo.line());
            print_cpu(&echo);
            res.ceiling_tonic_echo = Some(echo);
            res.echo_server_cpu_us_per_call = Some(stats::round1(cpu));
        }
    }

    if plan.issue {
        println!("== issuance: {} codes via IssueCodes", o.issue_codes);
        env.create_campaign("bench-issue").await?;
        let (_, i) = env
            .issue("bench-issue", "print-1", o.issue_codes, false)
            .await?;
        println!(
            "  {:.0} codes/s, {:.1} B/code in Redis, giftxd peak RSS {:.1} MB",
            i.codes_per_s, i.redis_bytes_per_code, i.giftxd_peak_rss_mb
        );
        res.issuance = Some(i);
        if plan.sweep {
            println!("== sweep: {} codes past their deadline", o.issue_codes);
            let s = env.sweep("bench-issue", o.issue_codes).await?;
            println!(
                "  SweepExpired {:.2} s ({:.2} s per million), expired {}, giftxd RSS {:.1} → peak {:.1} MB",
                s.seconds,
                s.seconds_per_million,
                s.expired_count,
                s.giftxd_rss_before_mb,
                s.giftxd_peak_rss_during_mb
            );
            if u64::try_from(s.expired_count).ok() != Some(o.issue_codes) {
                println!(
                    "  WARNING: expired {} of {} codes",
                    s.expired_count, o.issue_codes
                );
            }
            res.sweep = Some(s);
        }
    }

    if plan.exchange || plan.verify {
        exchange_runs(&mut env, &o, plan, &mut res).await?;
    }

    if plan.everysec {
        println!("== appendfsync everysec (comparison only)");
        env.set_appendfsync("everysec").await?;
        let r = everysec(&mut env, &o).await;
        env.set_appendfsync("always").await?;
        res.everysec = Some(r?);
    }

    if let Some(m) = res.machine.as_mut() {
        m.loadavg_end = procs::loadavg();
    }
    res.total_seconds = stats::round1(started.elapsed().as_secs_f64());
    res.judge();
    write_results(&o, &res)?;
    println!("\n{}", res.markdown());
    Ok(())
}

/// `giftx-bench hardening`: its own Redis and giftxd, its own results file.
async fn run_hardening(h: HardeningArgs) -> Result<()> {
    let o = &h.opts;
    std::fs::create_dir_all(&o.out).with_context(|| format!("create {}", o.out.display()))?;
    let bin = procs::giftxd_path(o.giftxd.as_deref())?;
    println!(
        "giftx-bench hardening: giftxd {}, load average {}",
        bin.display(),
        procs::loadavg()
    );
    let mut env = Env::start(&bin, o.connections, o.aof_rewrite_min_size_mb).await?;
    let r = hardening::run(
        &mut env,
        &hardening::HardeningOpts {
            verify_calls: h.verify_calls,
            issue_streams: h.issue_streams,
            concurrency: o.concurrency,
            duration: o.duration(),
        },
    )
    .await?;
    let path = o.out.join("hardening.json");
    std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `giftx-bench trust`: its own Redis and three giftxd, its own results.
async fn run_trust(t: TrustArgs) -> Result<()> {
    std::fs::create_dir_all(&t.out).with_context(|| format!("create {}", t.out.display()))?;
    let bin = procs::giftxd_path(t.giftxd.as_deref())?;
    println!(
        "giftx-bench trust: giftxd {}, load average {}",
        bin.display(),
        procs::loadavg()
    );
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let r = trust::run(&trust::TrustOpts {
        giftxd: bin,
        concurrency: t.concurrency.max(1),
        connections: t.connections.max(1),
        duration: Duration::from_secs_f64(t.duration.clamp(0.5, 600.0)),
        rounds: t.rounds.max(1),
        timing_calls: t.timing_calls.max(1),
        aof_rewrite_min_size_mb: t.aof_rewrite_min_size_mb,
        loadgen_threads: if t.loadgen_threads == 0 {
            cores
        } else {
            t.loadgen_threads
        },
    })
    .await?;
    std::fs::write(
        t.out.join("results.json"),
        serde_json::to_string_pretty(&r)?,
    )?;
    let md = r.markdown();
    std::fs::write(t.out.join("summary.md"), &md)?;
    println!("\n{md}");
    println!("wrote {}/results.json, summary.md", t.out.display());
    Ok(())
}

/// Rounds of the growth comparison: each size measured this many times,
/// in turns with the other.
const GROWTH_ROUNDS: u64 = 2;

/// The exchange campaign: closed loops, costs, open-loop sweeps, growth.
async fn exchange_runs(env: &mut Env, o: &Opts, plan: Plan, res: &mut Results) -> Result<()> {
    let c = o.concurrency.max(1);
    let campaign = "bench-x";
    env.create_campaign(campaign).await?;
    let drive = o.drive_codes.min(o.preload_codes).max(20_000);
    println!("== exchange campaign: {drive} codes via IssueCodes");
    let mut pool = Pool {
        campaign: campaign.to_owned(),
        codes: Arc::new(Vec::new()),
        used: 0,
        stored: 0,
        batches: 0,
    };
    pool.ensure(env, drive).await?;
    if o.preload_codes > pool.stored {
        let n = o.preload_codes - pool.stored;
        let rate = env.preload(campaign, "preload-1", n).await?;
        pool.stored += n;
        println!("  bulk-stored {n} filler codes ({rate:.0} codes/s)");
    }
    res.campaign_codes = Some(pool.stored);

    // Warm up connections, caches and scripts.
    let warm = env.exchange_op(pool.codes.clone(), pool.used);
    let (_, used) = closed_loop(
        "warm-up",
        warm,
        c,
        Duration::from_millis(500),
        pool.available() as u64 / 10,
    )
    .await;
    pool.used += used as usize;

    let mut exchange_small = None;
    let mut verify_small = None;
    if plan.exchange {
        println!("== Exchange, closed loop, {c} in flight");
        let r = exchange_closed(env, &mut pool, o, c, 20_000).await?;
        println!("  {}", r.0.line());
        print_cpu(&r.0);
        exchange_small = Some(r.0.clone());
        let split = r.0.cpu.clone();
        res.exchange = Some(r.0);
        pool.ensure(env, o.monitor_calls + 1000).await?;
        let op = env.exchange_op(pool.codes.clone(), pool.used);
        let mut cost = env.round_trips(op, o.monitor_calls, c).await?;
        pool.used += cost.calls as usize;
        cost.set_cpu(r.1, split.as_ref());
        println!(
            "  giftxd CPU {:.0} µs/Exchange; {:.2} Redis round trips/Exchange {:?}",
            cost.giftxd_cpu_us_per_call, cost.redis_round_trips_per_call, cost.commands_per_call
        );
        res.exchange_cost = Some(cost);
    }
    if plan.verify {
        println!("== VerifyCode, closed loop, {c} in flight");
        pool.ensure(env, 20_000).await?;
        let r = verify_closed(env, &pool, o, c).await?;
        println!("  {}", r.0.line());
        print_cpu(&r.0);
        verify_small = Some(r.0.clone());
        let split = r.0.cpu.clone();
        res.verify = Some(r.0);
        let op = env.verify_op(pool.codes.clone(), pool.used);
        let mut cost = env.round_trips(op, o.monitor_calls, c).await?;
        cost.set_cpu(r.1, split.as_ref());
        println!(
            "  giftxd CPU {:.0} µs/VerifyCode; {:.2} Redis round trips/VerifyCode {:?}",
            cost.giftxd_cpu_us_per_call, cost.redis_round_trips_per_call, cost.commands_per_call
        );
        res.verify_cost = Some(cost);
    }

    if plan.open_loop {
        if let Some(max) = res.exchange.as_ref().map(|r| r.throughput_per_s) {
            println!("== Exchange, open loop");
            let need: f64 =
                o.rates.iter().map(|p| p / 100.0 * max).sum::<f64>() * o.step().as_secs_f64();
            pool.ensure(env, (need * 1.05) as u64 + 1000).await?;
            for p in &o.rates {
                let rate = (p / 100.0 * max).max(1.0);
                let op = env.exchange_op(pool.codes.clone(), pool.used);
                let mut probe = env.probe();
                let cpu0 = probe.snap().await?;
                let (mut r, used) = open_loop(
                    &format!("Exchange {p:.0}%"),
                    op,
                    rate,
                    o.step(),
                    pool.available() as u64,
                    o.max_in_flight,
                )
                .await;
                let cpu1 = probe.snap().await?;
                r.cpu = Some(probe.split(&cpu0, &cpu1, r.requests));
                pool.used += used as usize;
                println!("  {}", r.line());
                print_cpu(&r);
                res.exchange_open_loop.push(r);
            }
        }
        if let Some(max) = res.verify.as_ref().map(|r| r.throughput_per_s) {
            println!("== VerifyCode, open loop");
            pool.ensure(env, 20_000).await?;
            for p in &o.rates {
                let rate = (p / 100.0 * max).max(1.0);
                let op = env.verify_op(pool.codes.clone(), pool.used);
                let mut probe = env.probe();
                let cpu0 = probe.snap().await?;
                let (mut r, _) = open_loop(
                    &format!("VerifyCode {p:.0}%"),
                    op,
                    rate,
                    o.step(),
                    u64::MAX,
                    o.max_in_flight,
                )
                .await;
                let cpu1 = probe.snap().await?;
                r.cpu = Some(probe.split(&cpu0, &cpu1, r.requests));
                println!("  {}", r.line());
                print_cpu(&r);
                res.verify_open_loop.push(r);
            }
        }
    }

    if plan.grow_to > pool.stored {
        // The first figures above were taken minutes earlier; on a shared
        // machine the load moves more than 10 % in that time. So the
        // comparison is A/B: after growing this campaign, a second campaign
        // of the small size is set up beside it (same Redis, same memory
        // in use), and the two are measured in turns, GROWTH_ROUNDS rounds
        // (order alternating), each side's figure the mean of its rounds.
        let _ = (exchange_small.take(), verify_small.take());
        let n = plan.grow_to.saturating_sub(pool.stored);
        println!("== growth: bulk-storing {n} codes into the campaign");
        let rate = env.preload(campaign, "preload-2", n).await?;
        pool.stored += n;
        println!("  {rate:.0} codes/s; campaign now {} codes", pool.stored);

        let small_id = "bench-small";
        env.create_campaign(small_id).await?;
        let mut small = Pool {
            campaign: small_id.to_owned(),
            codes: Arc::new(Vec::new()),
            used: 0,
            stored: 0,
            batches: 0,
        };
        // Enough codes for its Exchange rounds, issued up front so the
        // small campaign does not grow between rounds.
        let per_run = (res
            .exchange
            .as_ref()
            .map_or(10_000.0, |x| x.throughput_per_s)
            * o.duration().as_secs_f64()
            * 1.5) as u64;
        small
            .ensure(env, (per_run * GROWTH_ROUNDS).max(o.preload_codes))
            .await?;
        if o.preload_codes > small.stored {
            let n = o.preload_codes - small.stored;
            env.preload(small_id, "preload-1", n).await?;
            small.stored += n;
        }
        println!(
            "== growth: {} rounds, small campaign ({} codes) and grown campaign ({} codes) in turns",
            GROWTH_ROUNDS, small.stored, pool.stored
        );
        pool.ensure(env, per_run * GROWTH_ROUNDS).await?;
        let settle = env.settle_aof().await?;
        println!("  waited {settle:.1} s for Redis's AOF rewrite after the bulk loads");
        let mut runs: [Vec<RunStats>; 4] = Default::default();
        for round in 0..GROWTH_ROUNDS {
            for k in 0..2 {
                let big = (k == 1) == (round % 2 == 0);
                let (p, label) = if big {
                    (&mut pool, "grown")
                } else {
                    (&mut small, "small")
                };
                let (x, _) = exchange_closed(env, p, o, c, per_run).await?;
                println!(
                    "  round {} {label} ({} codes): {}",
                    round + 1,
                    p.stored,
                    x.line()
                );
                p.ensure(env, 20_000).await?;
                let (v, _) = verify_closed(env, p, o, c).await?;
                println!(
                    "  round {} {label} ({} codes): {}",
                    round + 1,
                    p.stored,
                    v.line()
                );
                let at = usize::from(big);
                runs[at].push(x);
                runs[2 + at].push(v);
            }
        }
        let [es, el, vs, vl] = runs.map(|r| stats::mean_of(&r));
        res.growth = Some(Growth {
            small_codes: small.stored,
            large_codes: pool.stored,
            preload_codes_per_s: rate.round(),
            aof_rewrite_wait_seconds: settle,
            rounds: GROWTH_ROUNDS as u32,
            exchange_small: es,
            exchange_large: el,
            verify_small: vs,
            verify_large: vl,
        });
    }
    Ok(())
}

/// Closed-loop Exchange; returns the run and giftxd CPU µs per call.
async fn exchange_closed(
    env: &mut Env,
    pool: &mut Pool,
    o: &Opts,
    c: usize,
    need: u64,
) -> Result<(RunStats, f64)> {
    // Each code is exchanged once: the run stops early if they run out.
    pool.ensure(env, need).await?;
    let op = env.exchange_op(pool.codes.clone(), pool.used);
    let mut probe = env.probe();
    let cpu0 = probe.snap().await?;
    let (mut r, used) = closed_loop("Exchange", op, c, o.duration(), pool.available() as u64).await;
    let cpu1 = probe.snap().await?;
    pool.used += used as usize;
    let split = probe.split(&cpu0, &cpu1, r.requests);
    let giftxd = split.server_us_per_call.unwrap_or(0.0);
    r.cpu = Some(split);
    Ok((r, giftxd))
}

/// Closed-loop VerifyCode over the unexchanged codes; giftxd CPU µs per call.
async fn verify_closed(env: &mut Env, pool: &Pool, o: &Opts, c: usize) -> Result<(RunStats, f64)> {
    let op = env.verify_op(pool.codes.clone(), pool.used);
    let _ = closed_loop(
        "warm-up",
        op.clone(),
        c,
        Duration::from_millis(300),
        u64::MAX,
    )
    .await;
    let mut probe = env.probe();
    let cpu0 = probe.snap().await?;
    let (mut r, _) = closed_loop("VerifyCode", op, c, o.duration(), u64::MAX).await;
    let cpu1 = probe.snap().await?;
    let split = probe.split(&cpu0, &cpu1, r.requests);
    let giftxd = split.server_us_per_call.unwrap_or(0.0);
    r.cpu = Some(split);
    Ok((r, giftxd))
}

/// Exchange and the claim ceiling with appendfsync everysec, on a fresh
/// campaign.
async fn everysec(env: &mut Env, o: &Opts) -> Result<Everysec> {
    let c = o.concurrency.max(1);
    env.create_campaign("bench-everysec").await?;
    let mut pool = Pool {
        campaign: "bench-everysec".to_owned(),
        codes: Arc::new(Vec::new()),
        used: 0,
        stored: 0,
        batches: 0,
    };
    let short = Opts {
        duration: (o.duration / 2.0).max(2.0),
        ..o.clone()
    };
    let (r, _) = exchange_closed(env, &mut pool, &short, c, 40_000).await?;
    println!("  {}", r.line());
    let (claim, _) = ceilings::redis_ceilings(
        env.redis.port(),
        &env.redis.url(),
        c,
        o.redis_bench_requests,
    )
    .await?;
    println!("  {}: {:.0}/s", claim.name, claim.rps);
    Ok(Everysec {
        exchange: r,
        ceiling_evalsha_claim: claim,
    })
}

/// The CPU split of a run, on the console.
fn print_cpu(r: &RunStats) {
    if let Some(cpu) = &r.cpu {
        println!("    {}", cpu.line());
    }
}

fn write_results(o: &Opts, res: &Results) -> Result<()> {
    let json = serde_json::to_string_pretty(res)?;
    std::fs::write(o.out.join("results.json"), json)?;
    std::fs::write(o.out.join("summary.md"), res.markdown())?;
    if let Some(svg) = res.svg() {
        std::fs::write(o.out.join("latency.svg"), svg)?;
    }
    println!(
        "wrote {}/results.json, summary.md{}",
        o.out.display(),
        if res.svg().is_some() {
            ", latency.svg"
        } else {
            ""
        }
    );
    Ok(())
}
