//! giftx under test: a private redis-server (AOF, appendfsync always),
//! giftxd as a child process on it, gRPC clients, and the operations the
//! bench drives.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt as _;
use giftx_core::model::{BatchId, CampaignId};
use giftx_core::{Digest, Timestamp};
use giftx_ledger::{Ledger as _, LedgerConfig, NewCode, RedisLedger};
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::RedisServer;
use serde::Serialize;
use tonic::transport::Channel;

use crate::cpu::{CpuSplit, Probe};
use crate::drive::{Op, closed_loop};
use crate::procs::{
    ChildGuard, Giftxd, RssSampler, command_calls, connect, connect_many, used_memory,
};
use crate::stats::round3;

/// A printed credential pair.
pub type Cred = (String, String);

/// Redis + giftxd + clients.
pub struct Env {
    /// The private Redis.
    pub redis: RedisServer,
    /// A connection for INFO and CONFIG.
    pub redis_conn: redis::aio::MultiplexedConnection,
    /// giftxd.
    pub giftxd: Giftxd,
    /// The ledger, directly (bulk preloads only).
    pub ledger: RedisLedger,
    /// Issuance client.
    pub issuance: IssuanceServiceClient<Channel>,
    /// Expiry client.
    pub expiry: ExpiryServiceClient<Channel>,
    /// Exchange clients, one per connection.
    pub exchange: Arc<Vec<ExchangeServiceClient<Channel>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn proto_time(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// CreateCampaign of `id`: one option on the zero-latency simulator,
/// deadline 30 days out.
pub fn campaign_request(id: &str) -> pb::CreateCampaignRequest {
    let deadline = now_ms() + 30 * 86_400_000;
    pb::CreateCampaignRequest {
        campaign_id: id.to_owned(),
        request_id: String::new(),
        campaign: Some(pb::Campaign {
            display_name: format!("bench {id}"),
            owner: "giftx-bench".to_owned(),
            face_value: Some(pb::Money {
                currency_code: "JPY".to_owned(),
                minor_units: 500,
            }),
            expire_time: Some(proto_time(deadline)),
            options: vec![pb::RedemptionOption {
                option_id: crate::procs::SIM_PROVIDER.to_owned(),
                display_name: "Simulated gift code".to_owned(),
                provider: crate::procs::SIM_PROVIDER.to_owned(),
                requires_shipping_address: false,
            }],
            ..Default::default()
        }),
    }
}

impl Env {
    /// Starts Redis and giftxd, connects `connections` exchange clients.
    /// `aof_rewrite_min_size_mb`: Redis's `auto-aof-rewrite-min-size`.
    pub async fn start(
        giftxd_bin: &Path,
        connections: usize,
        aof_rewrite_min_size_mb: u64,
    ) -> Result<Env> {
        Env::start_with(giftxd_bin, connections, aof_rewrite_min_size_mb, &[]).await
    }

    /// [`Env::start`] with further `GIFTX_*` settings for giftxd.
    pub async fn start_with(
        giftxd_bin: &Path,
        connections: usize,
        aof_rewrite_min_size_mb: u64,
        giftxd_env: &[(&str, &str)],
    ) -> Result<Env> {
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
            .arg(aof_rewrite_min_size_mb << 20)
            .query_async(&mut redis_conn)
            .await
            .context("CONFIG SET auto-aof-rewrite-min-size")?;
        let giftxd = Giftxd::start(giftxd_bin, &url, giftxd_env).await?;
        let ledger = RedisLedger::connect(&url, LedgerConfig::default())
            .await
            .map_err(|e| anyhow!("ledger connect: {e}"))?;
        let ch = connect(giftxd.addr).await?;
        let exchange = connect_many(giftxd.addr, connections)
            .await?
            .into_iter()
            .map(ExchangeServiceClient::new)
            .collect();
        Ok(Env {
            redis,
            redis_conn,
            giftxd,
            ledger,
            issuance: IssuanceServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            expiry: ExpiryServiceClient::new(ch),
            exchange: Arc::new(exchange),
        })
    }

    /// What to read for the CPU split of a run against giftxd: giftxd,
    /// its redis-server, and this process.
    pub fn probe(&self) -> Probe {
        Probe::new(
            Some(("giftxd", self.giftxd.proc.pid())),
            Some(self.redis_conn.clone()),
        )
    }

    /// Creates a campaign with one option on the zero-latency simulator,
    /// deadline 30 days out.
    pub async fn create_campaign(&mut self, id: &str) -> Result<()> {
        self.issuance
            .create_campaign(campaign_request(id))
            .await
            .with_context(|| format!("CreateCampaign {id}"))?;
        Ok(())
    }

    /// IssueCodes end to end; keeps the codes when `keep`.
    pub async fn issue(
        &mut self,
        campaign: &str,
        batch: &str,
        count: u64,
        keep: bool,
    ) -> Result<(Vec<Cred>, Issuance)> {
        let mem0 = used_memory(&mut self.redis_conn).await?;
        let cpu0 = self.giftxd.cpu()?;
        let rss = RssSampler::start(self.giftxd.proc.pid());
        let t = Instant::now();
        let mut s = self
            .issuance
            .issue_codes(pb::IssueCodesRequest {
                campaign: format!("campaigns/{campaign}"),
                batch_id: batch.to_owned(),
                count: i64::try_from(count)?,
            })
            .await
            .context("IssueCodes")?
            .into_inner();
        let mut out = Vec::with_capacity(if keep { count as usize } else { 0 });
        let mut n = 0u64;
        while let Some(item) = s.next().await {
            let c = item.context("IssueCodes stream")?;
            n += 1;
            if keep {
                out.push((c.code, c.login_key));
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let peak_rss_kb = rss.finish();
        if n != count {
            bail!("IssueCodes streamed {n} codes, wanted {count}");
        }
        let cpu = self.giftxd.cpu()?.saturating_sub(cpu0);
        let mem1 = used_memory(&mut self.redis_conn).await?;
        Ok((
            out,
            Issuance {
                codes: n,
                seconds: round3(secs),
                codes_per_s: (n as f64 / secs).round(),
                redis_bytes_per_code: round3((mem1 - mem0) as f64 / n as f64),
                giftxd_peak_rss_mb: round3(peak_rss_kb as f64 / 1024.0),
                giftxd_vm_hwm_mb: round3(self.giftxd.status_kb("VmHWM")? as f64 / 1024.0),
                giftxd_cpu_us_per_code: round3(cpu.as_secs_f64() * 1e6 / n as f64),
            },
        ))
    }

    /// Bulk-stores `count` filler codes (random digests nobody holds) into
    /// `campaign` straight through the ledger, as giftxd's issuance would.
    pub async fn preload(&mut self, campaign: &str, batch: &str, count: u64) -> Result<f64> {
        if count == 0 {
            return Ok(0.0);
        }
        let id = CampaignId::parse("campaign", campaign).map_err(|e| anyhow!("{e:?}"))?;
        let c = self
            .ledger
            .get_campaign(&id)
            .await
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("campaign {campaign} not found"))?;
        let bid = BatchId::parse("batch", batch).map_err(|e| anyhow!("{e:?}"))?;
        let now = Timestamp(now_ms());
        let b = self
            .ledger
            .begin_batch(&id, &bid, count, now)
            .await
            .map_err(|e| anyhow!("begin_batch: {e}"))?;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ now.0 as u64);
        let t = Instant::now();
        let mut left = count;
        // Bounded: one pass per chunk.
        while left > 0 {
            let n = left.min(50_000) as usize;
            let first = count - left;
            let chunk: Vec<NewCode> = (0..n as u64)
                .map(|k| NewCode {
                    code: rng.digest(),
                    login_key: rng.digest(),
                    serial: u32::try_from(first + k + 1).unwrap_or(u32::MAX),
                })
                .collect();
            self.ledger
                .store_codes(&c, &b, &chunk, Timestamp(now_ms()))
                .await
                .map_err(|e| anyhow!("store_codes: {e}"))?;
            left -= n as u64;
        }
        self.ledger
            .finish_batch(&id, &bid, true, Timestamp(now_ms()))
            .await
            .map_err(|e| anyhow!("finish_batch: {e}"))?;
        Ok(count as f64 / t.elapsed().as_secs_f64())
    }

    /// Exchange of `codes[base + i]` (each code once, distinct request ids).
    pub fn exchange_op(&self, codes: Arc<Vec<Cred>>, base: usize) -> Op {
        let clients = self.exchange.clone();
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
                        request_id: format!("bench-{idx}"),
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

    /// VerifyCode of `codes[base + i % len]`.
    pub fn verify_op(&self, codes: Arc<Vec<Cred>>, base: usize) -> Op {
        let clients = self.exchange.clone();
        let len = codes.len().saturating_sub(base).max(1);
        Arc::new(move |i| {
            let idx = base + (i as usize % len);
            let mut c = clients[(i as usize) % clients.len()].clone();
            let cred = codes.get(idx).cloned();
            Box::pin(async move {
                let Some((code, login_key)) = cred else {
                    return Err("NoCodeLeft".to_owned());
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

    /// Moves the campaign's deadline to just ahead (forced), waits past it,
    /// then times SweepExpired.
    pub async fn sweep(&mut self, campaign: &str, codes: u64) -> Result<Sweep> {
        let name = format!("campaigns/{campaign}");
        let deadline = now_ms() + 1000;
        self.expiry
            .extend_campaign(pb::ExtendCampaignRequest {
                campaign: name.clone(),
                expire_time: Some(proto_time(deadline)),
                force: true,
            })
            .await
            .context("ExtendCampaign (force, to now + 1 s)")?;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let rss_before = self.giftxd.status_kb("VmRSS")?;
        let mem0 = used_memory(&mut self.redis_conn).await?;
        let cpu0 = self.giftxd.cpu()?;
        let rss = RssSampler::start(self.giftxd.proc.pid());
        let t = Instant::now();
        let r = self
            .expiry
            .sweep_expired(pb::SweepExpiredRequest {
                campaign: name.clone(),
            })
            .await
            .context("SweepExpired")?
            .into_inner();
        let secs = t.elapsed().as_secs_f64();
        let peak = rss.finish();
        let cpu = self.giftxd.cpu()?.saturating_sub(cpu0);
        let mem1 = used_memory(&mut self.redis_conn).await?;
        Ok(Sweep {
            codes,
            expired_count: r.expired_count,
            expired_value_minor_units: r.expired_value.map_or(0, |m| m.minor_units),
            buckets_swept: r.buckets_swept,
            seconds: round3(secs),
            seconds_per_million: round3(secs * 1e6 / codes.max(1) as f64),
            giftxd_rss_before_mb: round3(rss_before as f64 / 1024.0),
            giftxd_peak_rss_during_mb: round3(peak as f64 / 1024.0),
            giftxd_cpu_seconds: round3(cpu.as_secs_f64()),
            redis_used_memory_delta_mb: round3((mem1 - mem0) as f64 / 1048576.0),
        })
    }

    /// Runs `n` calls of `op` at `concurrency` under `redis-cli MONITOR`
    /// and counts the commands clients sent (not those run inside
    /// scripts), by name, per call. Also gives giftxd's CPU per call.
    pub async fn round_trips(&mut self, op: Op, n: u64, concurrency: usize) -> Result<Cost> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("monitor.log");
        let file = std::fs::File::create(&path)?;
        let child = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.redis.port().to_string(),
                "MONITOR",
            ])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-cli MONITOR")?;
        let guard = ChildGuard::from(child);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls0 = command_calls(&mut self.redis_conn).await?;
        let (r, used) = closed_loop("monitored", op, concurrency, Duration::from_secs(60), n).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls1 = command_calls(&mut self.redis_conn).await?;
        drop(guard);
        let text = std::fs::read_to_string(&path)?;
        let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
        for line in text.lines() {
            // 1339518083.107412 [0 127.0.0.1:60866] "evalsha" "…"
            let Some((tag, rest)) = line.split_once("] \"") else {
                continue;
            };
            if tag.ends_with(" lua") {
                continue;
            }
            let cmd = rest.split('"').next().unwrap_or("").to_ascii_lowercase();
            if cmd == "info" {
                continue; // the bench's own INFO
            }
            *by_name.entry(cmd).or_default() += 1;
        }
        let total: u64 = by_name.values().sum();
        let per = |x: u64| round3(x as f64 / used.max(1) as f64);
        let evalsha = calls1.get("evalsha").copied().unwrap_or(0)
            - calls0.get("evalsha").copied().unwrap_or(0);
        Ok(Cost {
            calls: used,
            ok: r.ok,
            redis_round_trips_per_call: per(total),
            commands_per_call: by_name.into_iter().map(|(k, v)| (k, per(v))).collect(),
            evalsha_per_call: per(evalsha),
            giftxd_cpu_us_per_call: 0.0,
            redis_cpu_us_per_call: None,
            loadgen_cpu_us_per_call: None,
            total_cpu_us_per_call: None,
            box_busy_pct: None,
        })
    }

    /// Waits (at most 180 s) until Redis has no AOF rewrite running or
    /// scheduled: a bulk load triggers one (fork + rewrite of the whole
    /// data set), which would otherwise land on the next measurement.
    /// Returns the seconds waited.
    pub async fn settle_aof(&mut self) -> Result<f64> {
        let t = Instant::now();
        // Let a rewrite that the load just triggered get scheduled.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while t.elapsed() < Duration::from_secs(180) {
            let p = crate::procs::redis_info(&mut self.redis_conn, "persistence").await?;
            let busy = |k: &str| p.get(k).is_some_and(|v| v != "0");
            if !busy("aof_rewrite_in_progress") && !busy("aof_rewrite_scheduled") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(round3(t.elapsed().as_secs_f64()))
    }

    /// Sets `appendfsync` on the running Redis.
    pub async fn set_appendfsync(&mut self, mode: &str) -> Result<()> {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(mode)
            .query_async::<()>(&mut self.redis_conn)
            .await?;
        Ok(())
    }
}

impl From<std::process::Child> for ChildGuard {
    fn from(child: std::process::Child) -> Self {
        ChildGuard::new(child)
    }
}

struct XorShift(u64);

impl XorShift {
    fn digest(&mut self) -> Digest {
        let mut d = [0u8; 32];
        for chunk in d.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            chunk.copy_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        Digest(d)
    }
}

/// Issuance figures.
#[derive(Clone, Debug, Serialize)]
pub struct Issuance {
    /// Codes issued (streamed and stored).
    pub codes: u64,
    /// Wall time of the IssueCodes stream.
    pub seconds: f64,
    /// Codes per second end to end.
    pub codes_per_s: f64,
    /// Redis `used_memory` delta per code.
    pub redis_bytes_per_code: f64,
    /// giftxd peak VmRSS sampled during the stream.
    pub giftxd_peak_rss_mb: f64,
    /// giftxd VmHWM (lifetime peak) after the stream.
    pub giftxd_vm_hwm_mb: f64,
    /// giftxd CPU per code.
    pub giftxd_cpu_us_per_code: f64,
}

/// Sweep figures.
#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    /// Codes in the campaign.
    pub codes: u64,
    /// What SweepExpired reported.
    pub expired_count: i64,
    /// Its value.
    pub expired_value_minor_units: i64,
    /// Buckets visited.
    pub buckets_swept: i64,
    /// Wall time of the call.
    pub seconds: f64,
    /// Scaled to one million codes.
    pub seconds_per_million: f64,
    /// giftxd VmRSS just before.
    pub giftxd_rss_before_mb: f64,
    /// giftxd peak VmRSS during.
    pub giftxd_peak_rss_during_mb: f64,
    /// giftxd CPU during.
    pub giftxd_cpu_seconds: f64,
    /// Redis memory change.
    pub redis_used_memory_delta_mb: f64,
}

/// What one call costs giftxd and Redis.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    /// Calls in the sample.
    pub calls: u64,
    /// Of which succeeded.
    pub ok: u64,
    /// Commands giftxd sent to Redis per call (MONITOR, scripts' inner
    /// commands not counted).
    pub redis_round_trips_per_call: f64,
    /// The same by command.
    pub commands_per_call: BTreeMap<String, f64>,
    /// `cmdstat_evalsha` delta per call.
    pub evalsha_per_call: f64,
    /// giftxd CPU time per call in the closed-loop run (µs).
    pub giftxd_cpu_us_per_call: f64,
    /// redis-server CPU time per call in the same run (µs).
    pub redis_cpu_us_per_call: Option<f64>,
    /// The load generator's (giftx-bench's) CPU time per call in the same
    /// run (µs).
    pub loadgen_cpu_us_per_call: Option<f64>,
    /// giftxd + redis-server + load generator, per call (µs).
    pub total_cpu_us_per_call: Option<f64>,
    /// Those three's CPU as a share of the box in that run: total per call
    /// × calls/s ÷ cores, in percent.
    pub box_busy_pct: Option<f64>,
}

impl Cost {
    /// Fills in the CPU figures of the closed-loop run.
    pub fn set_cpu(&mut self, giftxd_us: f64, split: Option<&CpuSplit>) {
        self.giftxd_cpu_us_per_call = giftxd_us;
        if let Some(s) = split {
            self.redis_cpu_us_per_call = s.redis_us_per_call;
            self.loadgen_cpu_us_per_call = Some(s.loadgen_us_per_call);
            self.total_cpu_us_per_call = Some(s.total_us_per_call);
            self.box_busy_pct = Some(s.box_busy_pct);
        }
    }
}
