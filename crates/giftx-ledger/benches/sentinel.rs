//! The cost of durability in Sentinel mode: claim+complete with 64
//! concurrent tasks on the master a Sentinel group names (two replicas,
//! AOF always), with the claims and completions waiting for one replica
//! (`WAIT 1`, the Sentinel default) and without (`min_replicas_acked = 0`),
//! in alternating rounds on fresh codes in the same run.
//!
//! Reports per mode: exchanges/s, latency p50/p99 of one claim+complete,
//! the master's CPU per exchange (`INFO cpu`) and this process's CPU per
//! exchange (the ledger client's share of giftxd's work). Writes
//! `target/bench/sentinel.json`.
//!
//! `cargo bench -p giftx-ledger --bench sentinel`
//! (`GIFTX_BENCH_EXCHANGES` per round, default 8000; 2 rounds per mode.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use giftx_core::model::{
    BatchId, CampaignId, CampaignSpec, OptionId, ProviderId, RedemptionOption,
};
use giftx_core::{Currency, Digest, Money, Timestamp};
use giftx_ledger::redis::RedisOptions;
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, Lease, Ledger, LedgerConfig, NewCode, Preferences,
    RedisLedger,
};
use giftx_testkit::SentinelGroup;

const TASKS: usize = 64;
const ROUNDS: usize = 2;
const NOW: Timestamp = Timestamp(1_400_000_000_000);

struct Rng(u64);
impl Rng {
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

/// This process's CPU time so far (user + system), from /proc.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field overall, stime the 15th; ticks of 1/100 s on Linux.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// The master's CPU time so far (`INFO cpu`: user + sys), in seconds.
fn redis_cpu(port: u16) -> f64 {
    let Ok(mut c) =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|c| c.get_connection())
    else {
        return 0.0;
    };
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut c)
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

#[derive(Default)]
struct Totals {
    exchanges: usize,
    seconds: f64,
    redis_cpu: f64,
    own_cpu: f64,
    latencies: Vec<Duration>,
}

impl Totals {
    fn per_s(&self) -> f64 {
        self.exchanges as f64 / self.seconds
    }
    fn us(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.exchanges as f64
    }
    /// Latency percentile in ms (after the latencies are sorted).
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i].as_secs_f64() * 1e3
    }
}

async fn round(
    ledger: &Arc<RedisLedger>,
    codes: Arc<Vec<NewCode>>,
    series: giftx_core::Series,
    master: u16,
    t: &mut Totals,
) {
    let (r0, c0) = (redis_cpu(master), own_cpu());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (ledger, codes) = (ledger.clone(), codes.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (task..codes.len()).step_by(TASKS) {
                let c = &codes[i];
                let req = ClaimRequest {
                    code: CodeRef {
                        series,
                        digest: c.code,
                    },
                    login_key: c.login_key,
                    option: OptionId::parse("o", "amazon").expect("option"),
                    request: c.login_key,
                    fingerprint: c.code,
                    contact: None,
                    preferences: Preferences::default(),
                    lease: Lease {
                        holder: "bench".into(),
                        until: Timestamp(NOW.0 + 30_000),
                    },
                };
                let one = Instant::now();
                let Ok(ClaimOutcome::Claimed(x)) = ledger.claim(&req, NOW).await else {
                    panic!("claim failed");
                };
                ledger
                    .complete(&x.id, Some(vec![0u8; 64]), NOW)
                    .await
                    .expect("complete");
                lat.push(one.elapsed());
            }
            lat
        }));
    }
    for task in tasks {
        t.latencies.extend(task.await.expect("task"));
    }
    t.seconds += start.elapsed().as_secs_f64();
    t.exchanges += codes.len();
    t.redis_cpu += redis_cpu(master) - r0;
    t.own_cpu += own_cpu() - c0;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let per_round = std::env::var("GIFTX_BENCH_EXCHANGES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(8_000usize);
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .expect("sentinel group");
    let sentinels = group.sentinel_urls();
    let master = group.master_port().expect("a master");
    let connect = |acked: Option<usize>| {
        let sentinels = sentinels.clone();
        async move {
            Arc::new(
                RedisLedger::connect_sentinel(
                    &sentinels,
                    giftx_testkit::sentinel::MASTER_NAME,
                    LedgerConfig::default(),
                    RedisOptions {
                        min_replicas_acked: acked,
                        ..Default::default()
                    },
                )
                .await
                .expect("connect through Sentinel"),
            )
        }
    };
    let waiting = connect(None).await;
    let not_waiting = connect(Some(0)).await;

    let spec = CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("id", "bench").expect("id"),
        display_name: "bench".into(),
        owner: "bench".into(),
        face_value: Money::new(Currency::from_code("JPY").expect("JPY"), 500),
        expire_time: Timestamp(NOW.0 + 86_400_000 * 365),
        options: vec![RedemptionOption {
            id: OptionId::parse("o", "amazon").expect("option"),
            display_name: "Amazon".into(),
            provider: ProviderId::parse("p", "fake").expect("provider"),
        }],
    };
    let campaign = waiting
        .create_campaign(&spec, None, NOW)
        .await
        .expect("campaign");
    let total = per_round * ROUNDS * 2;
    let batch = waiting
        .begin_batch(
            &spec.id,
            &BatchId::parse("b", "b1").expect("batch"),
            total as u64,
            NOW,
        )
        .await
        .expect("batch");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let codes: Vec<NewCode> = (0..total)
        .map(|i| NewCode {
            code: rng.digest(),
            login_key: rng.digest(),
            serial: u32::try_from(i + 1).expect("serial"),
        })
        .collect();
    for chunk in codes.chunks(65_536) {
        waiting
            .store_codes(&campaign, &batch, chunk, NOW)
            .await
            .expect("store");
    }
    waiting
        .finish_batch(&spec.id, &batch.id, true, NOW)
        .await
        .expect("finish");

    // Alternate the modes, each round on codes of its own.
    let (mut with, mut without) = (Totals::default(), Totals::default());
    for (i, part) in codes.chunks(per_round).enumerate() {
        let part = Arc::new(part.to_vec());
        if i % 2 == 0 {
            round(&not_waiting, part, campaign.series, master, &mut without).await;
        } else {
            round(&waiting, part, campaign.series, master, &mut with).await;
        }
    }
    with.latencies.sort();
    without.latencies.sort();
    let ratio = with.per_s() / without.per_s();
    let lines = [("without WAIT", &without), ("with WAIT 1", &with)].map(|(name, t)| {
        format!(
            "{name}: {} exchanges, {:.0} exchanges/s, p50 {:.2} ms, p99 {:.2} ms, \
             master {:.1} µs CPU/exchange, client {:.1} µs CPU/exchange",
            t.exchanges,
            t.per_s(),
            t.pct(0.50),
            t.pct(0.99),
            t.us(t.redis_cpu),
            t.us(t.own_cpu)
        )
    });
    for l in &lines {
        println!("{l}");
    }
    println!("with / without WAIT throughput: {ratio:.3}");
    let json = format!(
        "{{\n  \"tasks\": {TASKS},\n  \"exchanges_per_mode\": {},\n  \
         \"without_wait_per_s\": {:.0},\n  \"with_wait_per_s\": {:.0},\n  \"ratio\": {ratio:.3},\n  \
         \"without_wait_p50_ms\": {:.3},\n  \"without_wait_p99_ms\": {:.3},\n  \
         \"with_wait_p50_ms\": {:.3},\n  \"with_wait_p99_ms\": {:.3},\n  \
         \"without_wait_master_cpu_us\": {:.1},\n  \"with_wait_master_cpu_us\": {:.1},\n  \
         \"without_wait_client_cpu_us\": {:.1},\n  \"with_wait_client_cpu_us\": {:.1}\n}}\n",
        with.exchanges,
        without.per_s(),
        with.per_s(),
        without.pct(0.5),
        without.pct(0.99),
        with.pct(0.5),
        with.pct(0.99),
        without.us(without.redis_cpu),
        with.us(with.redis_cpu),
        without.us(without.own_cpu),
        with.us(with.own_cpu),
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("sentinel.json"), json);
    drop(group);
}
