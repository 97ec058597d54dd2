//! `giftx-bench trust`: what TLS and API keys cost per call, and whether a
//! code of another tenant answers like a code that does not exist.
//!
//! One private Redis and three giftxd processes on it, all running for the
//! whole run:
//!
//! - **baseline**: plaintext, no authentication (every caller is the
//!   anonymous admin), as the other subcommands measure it;
//! - **secure**: TLS (a test CA from `giftx_testkit::TestPki`) and API keys
//!   (`GIFTX_ADMIN_TOKEN_FILE`), rate limits off (`GIFTX_LIMIT_*_RPS=0`):
//!   the load generator calls with a portal key of tenant `tenant-a`, whose
//!   operator key created the campaign and issued its codes;
//! - **secure + rate limit**: the same with a portal limit of 1,000,000
//!   calls/s (burst 1,000,000), so the Redis token bucket runs on every
//!   call but never refuses one.
//!
//! Closed-loop VerifyCode and Exchange run against each in turns
//! (`--rounds` rounds, order rotated every round), so a change in the
//! shared machine's load hits every variant alike; each variant's figures
//! are over all its rounds, and the ratios are against the baseline of the
//! same run. Every variant's client goes through the same interceptor
//! (which adds `authorization` only when it has a token).
//!
//! Then the timing check, against the secure giftxd, as a portal key of
//! `tenant-b`: VerifyCode of real tenant-A codes (right login keys) and of
//! codes that do not exist (valid codes of tenant A's series, random login
//! keys), one call at a time on one connection, interleaved, each answer
//! checked to be NOT_FOUND with ErrorInfo reason LOGIN_KEY_MISMATCH and
//! byte-for-byte the same answer for both kinds. For reference, codes that
//! do not exist in tenant B's own series are interleaved too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt as _;
use giftx_core::{Code, LoginKey, Series};
use giftx_proto::v1 as pb;
use giftx_proto::v1::access_service_client::AccessServiceClient;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::{RedisServer, TestPki};
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::cpu::Probe;
use crate::drive::{Op, closed_loop};
use crate::giftx::{Cred, campaign_request};
use crate::procs::{Giftxd, Machine, connect_tls};
use crate::stats::{RunStats, round1, round3};

/// Every client of this run: a channel behind the bearer interceptor.
type Transport = InterceptedService<Channel, Bearer>;
type ExchangeClient = ExchangeServiceClient<Transport>;
type IssuanceClient = IssuanceServiceClient<Transport>;

/// Codes kept apart for VerifyCode (never exchanged) in each campaign.
const VERIFY_CODES: usize = 20_000;

/// The answer a foreign or unknown code must get.
const EXPECTED: &str = "NotFound/LOGIN_KEY_MISMATCH";

/// Adds `authorization: Bearer <token>` to every call; nothing without a
/// token (the baseline), so every variant's calls take the same path
/// through the client.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: Option<&str>) -> Result<Bearer> {
        let Some(t) = token else {
            return Ok(Bearer(None));
        };
        let mut v = MetadataValue::try_from(format!("Bearer {t}"))
            .map_err(|_| anyhow!("token is not valid metadata"))?;
        v.set_sensitive(true);
        Ok(Bearer(Some(v)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// Settings of the run.
pub struct TrustOpts {
    /// giftxd binary.
    pub giftxd: std::path::PathBuf,
    /// Requests in flight in the closed loops.
    pub concurrency: usize,
    /// HTTP/2 connections per variant.
    pub connections: usize,
    /// Each closed-loop run.
    pub duration: Duration,
    /// Rounds of the three variants.
    pub rounds: usize,
    /// VerifyCode calls of each kind in the timing check.
    pub timing_calls: usize,
    /// Redis `auto-aof-rewrite-min-size`.
    pub aof_rewrite_min_size_mb: u64,
    /// Threads of the load generator.
    pub loadgen_threads: usize,
}

/// What `trust` measured.
#[derive(Debug, Serialize)]
pub struct TrustResults {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Requests in flight.
    pub concurrency: usize,
    /// HTTP/2 connections per variant.
    pub connections: usize,
    /// Seconds of each closed-loop run.
    pub duration_s: f64,
    /// Rounds (each variant measured once per round, order rotated).
    pub rounds: usize,
    /// Threads of the load generator.
    pub loadgen_threads: usize,
    /// Each variant's figures.
    pub variants: Vec<VariantResult>,
    /// Ratios against the baseline (and secure + rate limit ÷ secure).
    pub ratios: Vec<Ratios>,
    /// The tenant timing check.
    pub timing: Timing,
    /// Wall time of the whole run.
    pub total_seconds: f64,
}

/// One variant's closed loops.
#[derive(Debug, Serialize)]
pub struct VariantResult {
    /// `baseline`, `secure`, `secure_rate_limited`.
    pub name: String,
    /// What it is.
    pub description: String,
    /// VerifyCode over all rounds.
    pub verify: Agg,
    /// Exchange over all rounds.
    pub exchange: Agg,
}

/// The runs of one call against one variant, summed up.
#[derive(Debug, Serialize)]
pub struct Agg {
    /// Calls made (all runs).
    pub calls: u64,
    /// Of which succeeded.
    pub ok: u64,
    /// Failures by label.
    pub errors: BTreeMap<String, u64>,
    /// Mean of the runs' successful calls per second.
    pub throughput_per_s: f64,
    /// Mean of the runs' medians (ms).
    pub p50_ms: f64,
    /// Mean of the runs' 99th percentiles (ms).
    pub p99_ms: f64,
    /// giftxd CPU per call over all runs (µs).
    pub giftxd_us_per_call: f64,
    /// redis-server CPU per call over all runs (µs).
    pub redis_us_per_call: f64,
    /// The load generator's CPU per call over all runs (µs).
    pub loadgen_us_per_call: f64,
    /// Each run, in round order.
    pub runs: Vec<RunStats>,
}

impl Agg {
    fn of(runs: Vec<RunStats>) -> Agg {
        let n = runs.len().max(1) as f64;
        let calls: u64 = runs.iter().map(|r| r.requests).sum();
        let per_call = |f: fn(&crate::cpu::CpuSplit) -> f64| {
            let total: f64 = runs
                .iter()
                .filter_map(|r| r.cpu.as_ref().map(|c| f(c) * c.calls as f64))
                .sum();
            round1(total / calls.max(1) as f64)
        };
        let mut errors = BTreeMap::new();
        for r in &runs {
            for (k, v) in &r.errors {
                *errors.entry(k.clone()).or_default() += v;
            }
        }
        Agg {
            calls,
            ok: runs.iter().map(|r| r.ok).sum(),
            errors,
            throughput_per_s: round1(runs.iter().map(|r| r.throughput_per_s).sum::<f64>() / n),
            p50_ms: round3(runs.iter().map(|r| r.p50_ms).sum::<f64>() / n),
            p99_ms: round3(runs.iter().map(|r| r.p99_ms).sum::<f64>() / n),
            giftxd_us_per_call: per_call(|c| c.server_us_per_call.unwrap_or(0.0)),
            redis_us_per_call: per_call(|c| c.redis_us_per_call.unwrap_or(0.0)),
            loadgen_us_per_call: per_call(|c| c.loadgen_us_per_call),
            runs,
        }
    }
}

/// One variant against another.
#[derive(Debug, Serialize)]
pub struct Ratios {
    /// The variant measured.
    pub variant: String,
    /// What it is compared with.
    pub against: String,
    /// VerifyCode calls/s, variant ÷ against.
    pub verify_throughput: f64,
    /// VerifyCode giftxd CPU per call, variant ÷ against.
    pub verify_giftxd_cpu: f64,
    /// … the difference (µs).
    pub verify_giftxd_cpu_added_us: f64,
    /// VerifyCode redis-server CPU per call, variant ÷ against.
    pub verify_redis_cpu: f64,
    /// VerifyCode median latency, variant ÷ against.
    pub verify_p50: f64,
    /// Exchange calls/s, variant ÷ against.
    pub exchange_throughput: f64,
    /// Exchange giftxd CPU per call, variant ÷ against.
    pub exchange_giftxd_cpu: f64,
    /// … the difference (µs).
    pub exchange_giftxd_cpu_added_us: f64,
    /// Exchange redis-server CPU per call, variant ÷ against.
    pub exchange_redis_cpu: f64,
    /// Exchange median latency, variant ÷ against.
    pub exchange_p50: f64,
    /// VerifyCode calls/s ratio in each round (the spread).
    pub verify_throughput_by_round: Vec<f64>,
    /// Exchange calls/s ratio in each round.
    pub exchange_throughput_by_round: Vec<f64>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { round3(a / b) } else { 0.0 }
}

impl Ratios {
    fn of(a: &VariantResult, b: &VariantResult) -> Ratios {
        let by_round = |x: &Agg, y: &Agg| -> Vec<f64> {
            x.runs
                .iter()
                .zip(&y.runs)
                .map(|(p, q)| ratio(p.throughput_per_s, q.throughput_per_s))
                .collect()
        };
        Ratios {
            variant: a.name.clone(),
            against: b.name.clone(),
            verify_throughput: ratio(a.verify.throughput_per_s, b.verify.throughput_per_s),
            verify_giftxd_cpu: ratio(a.verify.giftxd_us_per_call, b.verify.giftxd_us_per_call),
            verify_giftxd_cpu_added_us: round1(
                a.verify.giftxd_us_per_call - b.verify.giftxd_us_per_call,
            ),
            verify_redis_cpu: ratio(a.verify.redis_us_per_call, b.verify.redis_us_per_call),
            verify_p50: ratio(a.verify.p50_ms, b.verify.p50_ms),
            exchange_throughput: ratio(a.exchange.throughput_per_s, b.exchange.throughput_per_s),
            exchange_giftxd_cpu: ratio(
                a.exchange.giftxd_us_per_call,
                b.exchange.giftxd_us_per_call,
            ),
            exchange_giftxd_cpu_added_us: round1(
                a.exchange.giftxd_us_per_call - b.exchange.giftxd_us_per_call,
            ),
            exchange_redis_cpu: ratio(a.exchange.redis_us_per_call, b.exchange.redis_us_per_call),
            exchange_p50: ratio(a.exchange.p50_ms, b.exchange.p50_ms),
            verify_throughput_by_round: by_round(&a.verify, &b.verify),
            exchange_throughput_by_round: by_round(&a.exchange, &b.exchange),
        }
    }
}

/// Sequential VerifyCode latencies of one kind of code.
#[derive(Debug, Serialize)]
pub struct Kind {
    /// What was presented.
    pub what: String,
    /// Calls.
    pub calls: usize,
    /// Median (ms).
    pub p50_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Mean (ms).
    pub mean_ms: f64,
    /// Answers by `code/ErrorInfo reason`.
    pub answers: BTreeMap<String, u64>,
    /// Answers other than NOT_FOUND / LOGIN_KEY_MISMATCH.
    pub mismatches: u64,
    /// Distinct answers (status code, message and details, byte for byte).
    pub distinct_answers: usize,
}

/// The tenant timing check.
#[derive(Debug, Serialize)]
pub struct Timing {
    /// Calls of each kind.
    pub calls_each: usize,
    /// Tenant B's portal presenting real tenant-A codes (right login keys).
    pub foreign_code: Kind,
    /// Tenant B's portal presenting codes that do not exist (tenant A's
    /// series, random login keys).
    pub unknown_code: Kind,
    /// For reference: codes that do not exist in tenant B's own series.
    pub own_unknown_code: Kind,
    /// Median of foreign ÷ median of unknown.
    pub median_ratio: f64,
    /// 90th percentile of foreign ÷ of unknown.
    pub p90_ratio: f64,
    /// The bar: medians within 10 %.
    pub within_10_pct: bool,
    /// Every answer of both kinds was NOT_FOUND / LOGIN_KEY_MISMATCH.
    pub all_not_found: bool,
    /// Both kinds got one and the same answer, byte for byte.
    pub identical_answers: bool,
    /// … and so did the reference kind (tenant B's own series).
    pub reference_identical: bool,
}

/// A giftxd of this run and how to reach it.
struct Server {
    giftxd: Giftxd,
    tls: Option<ClientTlsConfig>,
}

impl Server {
    async fn channel(&self) -> Result<Channel> {
        connect_tls(self.giftxd.addr, self.tls.as_ref()).await
    }

    async fn exchange_clients(&self, n: usize, b: &Bearer) -> Result<Arc<Vec<ExchangeClient>>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            v.push(ExchangeServiceClient::with_interceptor(
                self.channel().await?,
                b.clone(),
            ));
        }
        Ok(Arc::new(v))
    }

    async fn issuance(&self, b: &Bearer) -> Result<IssuanceClient> {
        Ok(
            IssuanceServiceClient::with_interceptor(self.channel().await?, b.clone())
                .max_decoding_message_size(64 << 20),
        )
    }
}

/// A campaign's codes: the first VERIFY_CODES for VerifyCode, the rest
/// exchanged once each from `next` on.
struct Pool {
    campaign: String,
    issuance: IssuanceClient,
    codes: Arc<Vec<Cred>>,
    next: usize,
    batches: u32,
}

impl Pool {
    async fn new(mut issuance: IssuanceClient, campaign: &str, count: u64) -> Result<Pool> {
        issuance
            .create_campaign(campaign_request(campaign))
            .await
            .with_context(|| format!("CreateCampaign {campaign}"))?;
        let mut p = Pool {
            campaign: campaign.to_owned(),
            issuance,
            codes: Arc::new(Vec::new()),
            next: VERIFY_CODES,
            batches: 0,
        };
        p.issue(count.max(1)).await?;
        Ok(p)
    }

    async fn issue(&mut self, count: u64) -> Result<()> {
        self.batches += 1;
        let t = Instant::now();
        let mut s = self
            .issuance
            .issue_codes(pb::IssueCodesRequest {
                campaign: format!("campaigns/{}", self.campaign),
                batch_id: format!("trust-{}", self.batches),
                count: i64::try_from(count)?,
            })
            .await
            .context("IssueCodes")?
            .into_inner();
        let mut v = Vec::with_capacity(self.codes.len() + count as usize);
        v.extend(self.codes.iter().cloned());
        while let Some(item) = s.next().await {
            let c = item.context("IssueCodes stream")?;
            v.push((c.code, c.login_key));
        }
        let got = v.len() - self.codes.len();
        if got as u64 != count {
            bail!("IssueCodes streamed {got} codes, wanted {count}");
        }
        println!(
            "  {}: issued {count} codes ({:.0} codes/s)",
            self.campaign,
            count as f64 / t.elapsed().as_secs_f64()
        );
        self.codes = Arc::new(v);
        Ok(())
    }

    fn available(&self) -> usize {
        self.codes.len().saturating_sub(self.next)
    }

    async fn ensure(&mut self, need: u64) -> Result<()> {
        let avail = self.available() as u64;
        if avail < need {
            self.issue((need - avail).max(20_000)).await?;
        }
        Ok(())
    }

    fn verify_codes(&self) -> Arc<Vec<Cred>> {
        Arc::new(self.codes[..VERIFY_CODES.min(self.codes.len())].to_vec())
    }
}

/// One variant of the closed loops.
struct Variant {
    name: &'static str,
    description: &'static str,
    server: usize,
    pool: usize,
    clients: Arc<Vec<ExchangeClient>>,
    verify_codes: Arc<Vec<Cred>>,
    verify: Vec<RunStats>,
    exchange: Vec<RunStats>,
}

fn verify_op(clients: Arc<Vec<ExchangeClient>>, codes: Arc<Vec<Cred>>) -> Op {
    let len = codes.len().max(1);
    Arc::new(move |i| {
        let mut c = clients[(i as usize) % clients.len()].clone();
        let cred = codes.get(i as usize % len).cloned();
        Box::pin(async move {
            let Some((code, login_key)) = cred else {
                return Err("NoCode".to_owned());
            };
            let r = c
                .verify_code(pb::VerifyCodeRequest { code, login_key })
                .await
                .map_err(|s| format!("{:?}", s.code()))?;
            if r.get_ref().state == pb::CodeState::Active as i32 {
                Ok(())
            } else {
                Err(format!("OkButState{}", r.get_ref().state))
            }
        })
    })
}

fn exchange_op(clients: Arc<Vec<ExchangeClient>>, codes: Arc<Vec<Cred>>, base: usize) -> Op {
    Arc::new(move |i| {
        let idx = base + i as usize;
        let mut c = clients[idx % clients.len()].clone();
        let cred = codes.get(idx).cloned();
        Box::pin(async move {
            let Some((code, login_key)) = cred else {
                return Err("NoCodeLeft".to_owned());
            };
            let r = c
                .exchange(pb::ExchangeRequest {
                    code,
                    login_key,
                    option_id: crate::procs::SIM_PROVIDER.to_owned(),
                    request_id: format!("trust-{idx}"),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("{:?}", s.code()))?;
            if r.get_ref().state == pb::ExchangeState::Succeeded as i32 {
                Ok(())
            } else {
                Err(format!("OkButState{}", r.get_ref().state))
            }
        })
    })
}

/// A closed loop with the CPU split of giftxd `pid` and Redis.
async fn measured(
    name: &str,
    op: Op,
    probe: &mut Probe,
    o: &TrustOpts,
    limit: u64,
) -> Result<(RunStats, u64)> {
    let cpu0 = probe.snap().await?;
    let (mut r, used) = closed_loop(name, op, o.concurrency.max(1), o.duration, limit).await;
    let cpu1 = probe.snap().await?;
    r.cpu = Some(probe.split(&cpu0, &cpu1, r.requests));
    Ok((r, used))
}

async fn create_key(
    admin: &mut AccessServiceClient<Transport>,
    tenant: &str,
    role: pb::Role,
) -> Result<Bearer> {
    let r = admin
        .create_api_key(pb::CreateApiKeyRequest {
            api_key: Some(pb::ApiKey {
                tenant: tenant.to_owned(),
                role: role as i32,
                description: "giftx-bench trust".to_owned(),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("CreateApiKey {tenant} {role:?}"))?
        .into_inner();
    Bearer::new(Some(&r.token))
}

/// Runs the whole `trust` measurement.
pub async fn run(o: &TrustOpts) -> Result<TrustResults> {
    let started = Instant::now();
    let machine = Machine::probe();

    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .context("start redis-server")?;
    let url = redis.url();
    let mut redis_conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("auto-aof-rewrite-min-size")
        .arg(o.aof_rewrite_min_size_mb << 20)
        .query_async(&mut redis_conn)
        .await
        .context("CONFIG SET auto-aof-rewrite-min-size")?;

    // Certificates and the bootstrap admin's token.
    let dir = tempfile::tempdir().context("temp dir for the PKI")?;
    let pki_dir = dir.path().to_owned();
    let pki = tokio::task::spawn_blocking(move || TestPki::new(&pki_dir, "giftx-bench trust CA"))
        .await
        .map_err(|e| anyhow!("make test certificates with openssl: {e}"))?;
    let ca = std::fs::read(pki.ca()).context("read CA")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let admin_token = format!(
        "giftx-bench-trust-{}-{}",
        LoginKey::generate().context("random")?.printed(),
        LoginKey::generate().context("random")?.printed()
    );
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{admin_token}\n"))?;

    let path = |p: &Path| p.display().to_string();
    let common = [
        ("GIFTX_LOCKOUT_THRESHOLD", "1000000000".to_owned()),
        ("GIFTX_END_USER_MAX_FAILURES", "0".to_owned()),
    ];
    let secure = [
        ("GIFTX_TLS_CERT_FILE", path(&pki.server_cert())),
        ("GIFTX_TLS_KEY_FILE", path(&pki.server_key())),
        ("GIFTX_ADMIN_TOKEN_FILE", path(&token_file)),
    ];
    let unlimited = [
        ("GIFTX_LIMIT_PORTAL_RPS", "0".to_owned()),
        ("GIFTX_LIMIT_OPERATOR_RPS", "0".to_owned()),
    ];
    let huge = [
        ("GIFTX_LIMIT_PORTAL_RPS", "1000000".to_owned()),
        ("GIFTX_LIMIT_PORTAL_BURST", "1000000".to_owned()),
        ("GIFTX_LIMIT_OPERATOR_RPS", "1000000".to_owned()),
        ("GIFTX_LIMIT_OPERATOR_BURST", "1000000".to_owned()),
    ];
    let envs: [Vec<(&str, String)>; 3] = [
        [&common[..], &unlimited[..]].concat(),
        [&common[..], &secure[..], &unlimited[..]].concat(),
        [&common[..], &secure[..], &huge[..]].concat(),
    ];
    let mut servers = Vec::new();
    for (k, env) in envs.iter().enumerate() {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let t = (k > 0).then_some(&tls);
        let g = Giftxd::start_tls(&o.giftxd, &url, &env, t).await?;
        servers.push(Server {
            giftxd: g,
            tls: t.cloned(),
        });
    }
    println!(
        "redis-server on port {}; giftxd baseline (plaintext, no auth) pid {} on {}, \
         secure (TLS + API keys) pid {} on {}, secure + rate limit pid {} on {}",
        redis.port(),
        servers[0].giftxd.proc.pid(),
        servers[0].giftxd.addr,
        servers[1].giftxd.proc.pid(),
        servers[1].giftxd.addr,
        servers[2].giftxd.proc.pid(),
        servers[2].giftxd.addr
    );

    // Keys (stored in the shared Redis: both secure giftxds know them).
    let mut admin = AccessServiceClient::with_interceptor(
        servers[1].channel().await?,
        Bearer::new(Some(&admin_token))?,
    );
    let operator_a = create_key(&mut admin, "tenant-a", pb::Role::Operator).await?;
    let portal_a = create_key(&mut admin, "tenant-a", pb::Role::Portal).await?;
    let operator_b = create_key(&mut admin, "tenant-b", pb::Role::Operator).await?;
    let portal_b = create_key(&mut admin, "tenant-b", pb::Role::Portal).await?;

    // Campaigns: the baseline's (tenant `default`, through the baseline
    // giftxd) and tenant A's (its operator key, through the secure one),
    // of the same size; a small one of tenant B's for the timing reference.
    let rounds = o.rounds.max(1);
    let per_run_guess = 30_000u64;
    let first = VERIFY_CODES as u64 + per_run_guess * rounds as u64;
    println!("== campaigns");
    let base_pool = Pool::new(
        servers[0].issuance(&Bearer::default()).await?,
        "trust-base",
        first,
    )
    .await?;
    let a_pool = Pool::new(servers[1].issuance(&operator_a).await?, "trust-a", first).await?;
    let b_pool = Pool::new(servers[1].issuance(&operator_b).await?, "trust-b", 1).await?;
    let mut pools = [base_pool, a_pool];

    let mut variants = vec![
        Variant {
            name: "baseline",
            description: "plaintext, no authentication (anonymous admin)",
            server: 0,
            pool: 0,
            clients: servers[0]
                .exchange_clients(o.connections, &Bearer::default())
                .await?,
            verify_codes: pools[0].verify_codes(),
            verify: Vec::new(),
            exchange: Vec::new(),
        },
        Variant {
            name: "secure",
            description: "TLS + API keys (portal key of tenant-a), rate limits off",
            server: 1,
            pool: 1,
            clients: servers[1]
                .exchange_clients(o.connections, &portal_a)
                .await?,
            verify_codes: pools[1].verify_codes(),
            verify: Vec::new(),
            exchange: Vec::new(),
        },
        Variant {
            name: "secure_rate_limited",
            description: "TLS + API keys, portal rate limit 1,000,000/s burst 1,000,000 \
                          (the Redis token bucket on every call, never refusing)",
            server: 2,
            pool: 1,
            clients: servers[2]
                .exchange_clients(o.connections, &portal_a)
                .await?,
            verify_codes: pools[1].verify_codes(),
            verify: Vec::new(),
            exchange: Vec::new(),
        },
    ];

    // Warm-up: connections, caches, scripts, key records.
    for v in &variants {
        let op = verify_op(v.clients.clone(), v.verify_codes.clone());
        let _ = closed_loop(
            "warm-up",
            op,
            o.concurrency,
            Duration::from_millis(300),
            u64::MAX,
        )
        .await;
        let p = &mut pools[v.pool];
        let op = exchange_op(v.clients.clone(), p.codes.clone(), p.next);
        let (_, used) = closed_loop(
            "warm-up",
            op,
            o.concurrency,
            Duration::from_millis(300),
            p.available() as u64 / 10,
        )
        .await;
        p.next += used as usize;
    }

    let c = o.concurrency.max(1);
    for round in 0..rounds {
        let order: Vec<usize> = (0..3).map(|k| (k + round) % 3).collect();
        println!(
            "== round {} of {rounds}: {c} in flight, {:.0} s each, order {}",
            round + 1,
            o.duration.as_secs_f64(),
            order
                .iter()
                .map(|&k| variants[k].name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for &k in &order {
            let v = &mut variants[k];
            let mut probe = Probe::new(
                Some(("giftxd", servers[v.server].giftxd.proc.pid())),
                Some(redis_conn.clone()),
            );
            let op = verify_op(v.clients.clone(), v.verify_codes.clone());
            let _ = closed_loop(
                "warm-up",
                op.clone(),
                c,
                Duration::from_millis(300),
                u64::MAX,
            )
            .await;
            let (r, _) = measured(
                &format!("VerifyCode {}", v.name),
                op,
                &mut probe,
                o,
                u64::MAX,
            )
            .await?;
            println!("  {}", r.line());
            if let Some(cpu) = &r.cpu {
                println!("    {}", cpu.line());
            }
            v.verify.push(r);
        }
        for &k in &order {
            let v = &mut variants[k];
            let p = &mut pools[v.pool];
            let need = v.exchange.last().map_or(per_run_guess, |r| {
                (r.throughput_per_s * o.duration.as_secs_f64() * 1.5) as u64
            });
            p.ensure(need.max(20_000)).await?;
            let mut probe = Probe::new(
                Some(("giftxd", servers[v.server].giftxd.proc.pid())),
                Some(redis_conn.clone()),
            );
            let op = exchange_op(v.clients.clone(), p.codes.clone(), p.next);
            let (r, used) = measured(
                &format!("Exchange {}", v.name),
                op,
                &mut probe,
                o,
                p.available() as u64,
            )
            .await?;
            p.next += used as usize;
            println!("  {}", r.line());
            if let Some(cpu) = &r.cpu {
                println!("    {}", cpu.line());
            }
            v.exchange.push(r);
        }
    }

    let results: Vec<VariantResult> = variants
        .into_iter()
        .map(|v| VariantResult {
            name: v.name.to_owned(),
            description: v.description.to_owned(),
            verify: Agg::of(v.verify),
            exchange: Agg::of(v.exchange),
        })
        .collect();
    let ratios = vec![
        Ratios::of(&results[1], &results[0]),
        Ratios::of(&results[2], &results[0]),
        Ratios::of(&results[2], &results[1]),
    ];
    for r in &ratios {
        println!(
            "  {} ÷ {}: VerifyCode {:.3}× calls/s, {:.3}× giftxd CPU/call ({:+.1} µs); \
             Exchange {:.3}× calls/s, {:.3}× giftxd CPU/call ({:+.1} µs)",
            r.variant,
            r.against,
            r.verify_throughput,
            r.verify_giftxd_cpu,
            r.verify_giftxd_cpu_added_us,
            r.exchange_throughput,
            r.exchange_giftxd_cpu,
            r.exchange_giftxd_cpu_added_us
        );
    }

    println!(
        "== timing: tenant-b portal, tenant-a code vs code that does not exist ({} each, \
         interleaved, one at a time, one TLS connection)",
        o.timing_calls
    );
    let a_codes = pools[1].verify_codes();
    let b_series = series_of(&b_pool.codes)?;
    let timing = timing_check(&servers[1], &portal_b, &a_codes, b_series, o.timing_calls).await?;
    for k in [
        &timing.foreign_code,
        &timing.unknown_code,
        &timing.own_unknown_code,
    ] {
        println!(
            "  {:<58} p50 {:.3} p90 {:.3} p99 {:.3} ms  answers {:?} ({} distinct)",
            k.what, k.p50_ms, k.p90_ms, k.p99_ms, k.answers, k.distinct_answers
        );
    }
    println!(
        "  median foreign ÷ unknown = {:.3} ({}within 10 %); every answer {EXPECTED}: {}; \
         identical answers: {}",
        timing.median_ratio,
        if timing.within_10_pct { "" } else { "NOT " },
        timing.all_not_found,
        timing.identical_answers
    );

    let mut machine = machine;
    machine.loadavg_end = crate::procs::loadavg();
    drop(servers);
    drop(redis);
    Ok(TrustResults {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        concurrency: c,
        connections: o.connections,
        duration_s: o.duration.as_secs_f64(),
        rounds,
        loadgen_threads: o.loadgen_threads,
        variants: results,
        ratios,
        timing,
        total_seconds: round1(started.elapsed().as_secs_f64()),
    })
}

fn series_of(codes: &[Cred]) -> Result<Series> {
    let (first, _) = codes.first().ok_or_else(|| anyhow!("no codes"))?;
    Ok(Code::parse(first)
        .map_err(|e| anyhow!("bench code {first}: {e}"))?
        .series())
}

fn unknown_code(series: Series) -> Result<pb::VerifyCodeRequest> {
    Ok(pb::VerifyCodeRequest {
        code: Code::generate(series).context("random code")?.printed(),
        login_key: LoginKey::generate().context("random login key")?.printed(),
    })
}

/// One answer: its label (`Ok`, `NotFound/LOGIN_KEY_MISMATCH`, …) and its
/// bytes (status code, message, details).
fn answer(r: &Result<tonic::Response<pb::CodeStatus>, tonic::Status>) -> (String, Vec<u8>) {
    match r {
        Ok(_) => ("Ok".to_owned(), Vec::new()),
        Err(s) => {
            let reason = error_reason(s.details()).unwrap_or_else(|| "-".to_owned());
            let mut bytes = (s.code() as i32).to_le_bytes().to_vec();
            bytes.extend_from_slice(s.message().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(s.details());
            (format!("{:?}/{reason}", s.code()), bytes)
        }
    }
}

async fn timing_check(
    server: &Server,
    portal_b: &Bearer,
    a_codes: &[Cred],
    b_series: Series,
    n: usize,
) -> Result<Timing> {
    if a_codes.is_empty() {
        bail!("no tenant-a codes");
    }
    let a_series = series_of(a_codes)?;
    let mut client =
        ExchangeServiceClient::with_interceptor(server.channel().await?, portal_b.clone());
    let foreign = |i: usize| -> Result<pb::VerifyCodeRequest> {
        let (code, login_key) = a_codes[i % a_codes.len()].clone();
        Ok(pb::VerifyCodeRequest { code, login_key })
    };
    // Warm the connection and every path.
    for i in 0..200 {
        for req in [
            foreign(i)?,
            unknown_code(a_series)?,
            unknown_code(b_series)?,
        ] {
            let _ = client.verify_code(req).await;
        }
    }
    struct Acc {
        reqs: std::vec::IntoIter<pb::VerifyCodeRequest>,
        us: Vec<u64>,
        answers: BTreeMap<String, u64>,
        distinct: BTreeSet<Vec<u8>>,
    }
    let mut accs = Vec::with_capacity(3);
    for make in [
        &foreign as &dyn Fn(usize) -> Result<pb::VerifyCodeRequest>,
        &|_| unknown_code(a_series),
        &|_| unknown_code(b_series),
    ] {
        let reqs = (0..n).map(make).collect::<Result<Vec<_>>>()?;
        accs.push(Acc {
            reqs: reqs.into_iter(),
            us: Vec::with_capacity(n),
            answers: BTreeMap::new(),
            distinct: BTreeSet::new(),
        });
    }
    for _ in 0..n {
        for a in &mut accs {
            let Some(req) = a.reqs.next() else { break };
            let t = Instant::now();
            let r = client.verify_code(req).await;
            a.us.push(t.elapsed().as_micros() as u64);
            let (label, bytes) = answer(&r);
            *a.answers.entry(label).or_default() += 1;
            a.distinct.insert(bytes);
        }
    }
    let identical = accs[0].distinct.len() == 1 && accs[0].distinct == accs[1].distinct;
    let reference_identical = identical && accs[2].distinct == accs[0].distinct;
    let whats = [
        "tenant-a code, right login key (foreign to tenant-b)",
        "code that does not exist (tenant-a series, random key)",
        "code that does not exist (tenant-b's own series)",
    ];
    let mut kinds = accs
        .into_iter()
        .zip(whats)
        .map(|(a, what)| Kind::of(what, a.us, a.answers, a.distinct.len()));
    let (f, u, own) = (
        kinds.next().ok_or_else(|| anyhow!("kind"))?,
        kinds.next().ok_or_else(|| anyhow!("kind"))?,
        kinds.next().ok_or_else(|| anyhow!("kind"))?,
    );
    let median_ratio = ratio(f.p50_ms, u.p50_ms);
    Ok(Timing {
        calls_each: n,
        median_ratio,
        p90_ratio: ratio(f.p90_ms, u.p90_ms),
        within_10_pct: (median_ratio - 1.0).abs() <= 0.10,
        all_not_found: f.mismatches == 0 && u.mismatches == 0,
        identical_answers: identical,
        reference_identical,
        foreign_code: f,
        unknown_code: u,
        own_unknown_code: own,
    })
}

impl Kind {
    fn of(what: &str, mut us: Vec<u64>, answers: BTreeMap<String, u64>, distinct: usize) -> Kind {
        us.sort_unstable();
        let pct = |p: f64| {
            let i = ((us.len() as f64 - 1.0) * p).round() as usize;
            us.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        let mean = us.iter().sum::<u64>() as f64 / us.len().max(1) as f64 / 1000.0;
        let mismatches = answers
            .iter()
            .filter(|(k, _)| k.as_str() != EXPECTED)
            .map(|(_, v)| v)
            .sum();
        Kind {
            what: what.to_owned(),
            calls: us.len(),
            p50_ms: round3(pct(0.5)),
            p90_ms: round3(pct(0.9)),
            p99_ms: round3(pct(0.99)),
            mean_ms: round3(mean),
            answers,
            mismatches,
            distinct_answers: distinct,
        }
    }
}

/// One varint off the front of `b`.
fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        x |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

/// The length-delimited fields of a protobuf message, as (field number,
/// bytes); `None` when it does not parse.
fn pb_fields(mut b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => {
                varint(&mut b)?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                out.push((key >> 3, b.get(..n)?));
                b = b.get(n..)?;
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

/// The ErrorInfo reason in a status's details (an encoded
/// `google.rpc.Status`: details = 3, each an `Any` with type_url = 1 and
/// value = 2; `ErrorInfo.reason` = 1). Decoded by hand: this crate has no
/// protobuf runtime of its own.
fn error_reason(details: &[u8]) -> Option<String> {
    for (f, any) in pb_fields(details)? {
        if f != 3 {
            continue;
        }
        let fields = pb_fields(any)?;
        let url = fields.iter().find(|(g, _)| *g == 1).map(|(_, v)| *v);
        if !url.is_some_and(|u| u.ends_with(b"google.rpc.ErrorInfo")) {
            continue;
        }
        let value = fields
            .iter()
            .find(|(g, _)| *g == 2)
            .map_or(&[][..], |(_, v)| *v);
        let reason = pb_fields(value)?.into_iter().find(|(h, _)| *h == 1)?.1;
        return String::from_utf8(reason.to_vec()).ok();
    }
    None
}

impl TrustResults {
    /// The summary, in Markdown.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let x = &self.machine;
        let _ = writeln!(m, "# giftx-bench trust: TLS and API keys\n");
        let _ = writeln!(m, "`{}` — {:.0} s\n", self.command, self.total_seconds);
        let _ = writeln!(
            m,
            "Machine: {} CPUs ({}), {} GiB, {}, {}; commit {}; load average {} at start, {} at \
             end.\n",
            x.cpus,
            x.cpu_model,
            x.memory_gib,
            x.redis_version,
            x.kernel,
            x.git_commit,
            x.loadavg_start,
            x.loadavg_end
        );
        let _ = writeln!(
            m,
            "One Redis (AOF, appendfsync always), three giftxd on it. Closed loops, {} in flight \
             over {} HTTP/2 connections per variant, {:.0} s per run, {} rounds (each variant \
             once per round, order rotated); figures over all rounds (calls/s and percentiles: \
             mean of the runs; CPU: total CPU ÷ total calls). Load generator: {} thread(s), on \
             the same machine.\n",
            self.concurrency, self.connections, self.duration_s, self.rounds, self.loadgen_threads
        );
        let _ = writeln!(m, "## Cost of TLS, API keys and the rate limit\n");
        let _ = writeln!(
            m,
            "| variant | call | calls/s | p50 / p99 ms | giftxd µs/call | redis µs/call | load generator µs/call | errors |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for v in &self.variants {
            for (call, a) in [("VerifyCode", &v.verify), ("Exchange", &v.exchange)] {
                let _ = writeln!(
                    m,
                    "| {} | {call} | {:.0} | {:.2} / {:.2} | {:.1} | {:.1} | {:.1} | {} |",
                    v.name,
                    a.throughput_per_s,
                    a.p50_ms,
                    a.p99_ms,
                    a.giftxd_us_per_call,
                    a.redis_us_per_call,
                    a.loadgen_us_per_call,
                    if a.errors.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("{:?}", a.errors)
                    }
                );
            }
        }
        let _ = writeln!(m);
        for v in &self.variants {
            let _ = writeln!(m, "- **{}**: {}", v.name, v.description);
        }
        let _ = writeln!(m, "\n### Ratios (same run)\n");
        let _ = writeln!(
            m,
            "| variant ÷ against | VerifyCode calls/s | VerifyCode giftxd CPU/call | VerifyCode redis CPU/call | Exchange calls/s | Exchange giftxd CPU/call | Exchange redis CPU/call | calls/s ratio by round (Verify; Exchange) |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for r in &self.ratios {
            let _ = writeln!(
                m,
                "| {} ÷ {} | {:.3} | {:.3} ({:+.1} µs) | {:.3} | {:.3} | {:.3} ({:+.1} µs) | {:.3} | {:?}; {:?} |",
                r.variant,
                r.against,
                r.verify_throughput,
                r.verify_giftxd_cpu,
                r.verify_giftxd_cpu_added_us,
                r.verify_redis_cpu,
                r.exchange_throughput,
                r.exchange_giftxd_cpu,
                r.exchange_giftxd_cpu_added_us,
                r.exchange_redis_cpu,
                r.verify_throughput_by_round,
                r.exchange_throughput_by_round
            );
        }
        let t = &self.timing;
        let _ = writeln!(
            m,
            "\n## Timing: a tenant-B portal presenting a tenant-A code vs a code that does not exist\n"
        );
        let _ = writeln!(
            m,
            "Against the secure giftxd (lockout threshold 1,000,000,000, end-user limit off, so \
             every call stays a plain NOT_FOUND), as a portal key of tenant-b: {} VerifyCode \
             calls of each kind, one at a time on one TLS connection, interleaved.\n",
            t.calls_each
        );
        let _ = writeln!(
            m,
            "| presented | p50 ms | p90 ms | p99 ms | mean ms | answers | not {EXPECTED} | distinct answers |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for k in [&t.foreign_code, &t.unknown_code, &t.own_unknown_code] {
            let _ = writeln!(
                m,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:?} | {} | {} |",
                k.what,
                k.p50_ms,
                k.p90_ms,
                k.p99_ms,
                k.mean_ms,
                k.answers,
                k.mismatches,
                k.distinct_answers
            );
        }
        let _ = writeln!(
            m,
            "\nMedian tenant-A code ÷ median code that does not exist: **{:.3}** (p90: {:.3}); \
             bar: within 10 % — **{}**. Every answer of both kinds {EXPECTED}: **{}**. Both \
             kinds answered with one and the same status, byte for byte: **{}** (the \
             reference kind too: **{}**).",
            t.median_ratio,
            t.p90_ratio,
            if t.within_10_pct { "met" } else { "NOT met" },
            if t.all_not_found { "yes" } else { "no" },
            if t.identical_answers { "yes" } else { "no" },
            if t.reference_identical { "yes" } else { "no" }
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u64, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![((field << 3) | 2) as u8, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn error_reason_reads_error_info_from_status_details() {
        let info = [ld(1, b"LOGIN_KEY_MISMATCH"), ld(2, b"giftx.dev")].concat();
        let retry = ld(1, b"type.googleapis.com/google.rpc.RetryInfo");
        let any = [
            ld(1, b"type.googleapis.com/google.rpc.ErrorInfo"),
            ld(2, &info),
        ]
        .concat();
        // code = 5 (varint field 1), message (field 2), two details.
        let status = [
            vec![0x08, 5],
            ld(2, b"not found"),
            ld(3, &retry),
            ld(3, &any),
        ]
        .concat();
        assert_eq!(error_reason(&status).as_deref(), Some("LOGIN_KEY_MISMATCH"));
        assert_eq!(error_reason(&[]), None);
        assert_eq!(error_reason(&[0x1a, 40]), None);
    }
}
