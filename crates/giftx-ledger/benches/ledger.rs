//! Redis ledger throughput on a fresh private redis-server (AOF on,
//! appendfsync always): bulk store of 1,000,000 codes (codes/s, bytes per
//! code), claim+complete with 64 concurrent tasks, and `redis-benchmark`
//! EVALSHA of a trivial script on the same server as the ceiling.
//! Writes `target/bench/ledger.json`; the store figure includes
//! redis-server's CPU time per code (`INFO cpu`).
//!
//! `cargo bench -p giftx-ledger --bench ledger`
//!
//! `GIFTX_BENCH_CODES` and `GIFTX_BENCH_CHUNK` change how many codes are
//! stored and how many per `store_codes` call; `GIFTX_BENCH_STORE_ONLY=1`
//! stops after the store.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use giftx_core::model::{
    BatchId, CampaignId, CampaignSpec, OptionId, ProviderId, RedemptionOption,
};
use giftx_core::{Currency, Digest, Money, Timestamp};
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, Lease, Ledger, LedgerConfig, NewCode, Preferences,
    RedisLedger,
};
use giftx_testkit::RedisServer;

/// Codes stored (`GIFTX_BENCH_CODES` overrides).
const CODES: usize = 1_000_000;
/// Codes per `store_codes` call, as giftxd's IssueCodes chunks
/// (`GIFTX_BENCH_CHUNK` overrides).
const CHUNK: usize = 262_144;
const TASKS: usize = 64;
const EXCHANGES: usize = 64_000;
const NOW: Timestamp = Timestamp(1_400_000_000_000);

struct Rng(u64);
impl Rng {
    fn digest(&mut self) -> Digest {
        let mut d = [0u8; 32];
        for chunk in d.chunks_mut(8) {
            // xorshift64*: fast, deterministic; these digests stand in for HMACs.
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            chunk.copy_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        Digest(d)
    }
}

fn used_memory(server: &RedisServer) -> i64 {
    let mut c = server.connection();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut c)
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// redis-server's CPU time so far (`INFO cpu`: user + sys), in seconds.
fn redis_cpu(server: &RedisServer) -> f64 {
    let mut c = server.connection();
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

fn ceiling(server: &RedisServer) -> f64 {
    let mut c = server.connection();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query(&mut c)
        .unwrap_or_default();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &server.port().to_string(),
            "-n",
            "200000",
            "-c",
            "64",
            "-q",
        ])
        .args(["EVALSHA", &sha, "0"])
        .output();
    let Ok(out) = out else { return 0.0 };
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA ...: 123456.78 requests per second, p50=..."; -q prints
    // progress with carriage returns first.
    text.rsplit('\r')
        .flat_map(|l| l.split(": ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let codes_n = env_usize("GIFTX_BENCH_CODES", CODES);
    let chunk_n = env_usize("GIFTX_BENCH_CHUNK", CHUNK).max(1);
    let server = RedisServer::start();
    let ledger = Arc::new(
        RedisLedger::connect(&server.url(), LedgerConfig::default())
            .await
            .expect("connect"),
    );
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
    let campaign = ledger
        .create_campaign(&spec, None, NOW)
        .await
        .expect("campaign");
    let batch = ledger
        .begin_batch(
            &spec.id,
            &BatchId::parse("b", "b1").expect("batch"),
            codes_n as u64,
            NOW,
        )
        .await
        .expect("batch");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let codes: Vec<NewCode> = (0..codes_n)
        .map(|i| NewCode {
            code: rng.digest(),
            login_key: rng.digest(),
            serial: u32::try_from(i + 1).expect("serial"),
        })
        .collect();

    let mem0 = used_memory(&server);
    let cpu0 = redis_cpu(&server);
    let t = Instant::now();
    for chunk in codes.chunks(chunk_n) {
        let out = ledger
            .store_codes(&campaign, &batch, chunk, NOW)
            .await
            .expect("store");
        assert!(out.collisions.is_empty());
    }
    let store_secs = t.elapsed().as_secs_f64();
    let redis_us_per_code = (redis_cpu(&server) - cpu0) * 1e6 / codes_n as f64;
    let bytes_per_code = (used_memory(&server) - mem0) as f64 / codes_n as f64;
    let codes_per_s = codes_n as f64 / store_secs;
    if std::env::var_os("GIFTX_BENCH_STORE_ONLY").is_some() {
        println!(
            "store: {codes_n} codes in chunks of {chunk_n}, {store_secs:.2}s = \
             {codes_per_s:.0} codes/s; redis-server {redis_us_per_code:.2} µs CPU/code; \
             {bytes_per_code:.1} bytes/code"
        );
        return;
    }
    ledger
        .finish_batch(&spec.id, &batch.id, true, NOW)
        .await
        .expect("finish");

    let codes = Arc::new(codes);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (ledger, codes) = (ledger.clone(), codes.clone());
        let series = campaign.series;
        tasks.push(tokio::spawn(async move {
            for i in (task..EXCHANGES).step_by(TASKS) {
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
                let Ok(ClaimOutcome::Claimed(x)) = ledger.claim(&req, NOW).await else {
                    panic!("claim failed");
                };
                ledger
                    .complete(&x.id, Some(vec![0u8; 64]), NOW)
                    .await
                    .expect("complete");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let exch_secs = t.elapsed().as_secs_f64();
    let exchanges_per_s = EXCHANGES as f64 / exch_secs;
    let script_ops_per_s = 2.0 * exchanges_per_s;
    let ceiling = ceiling(&server);
    let ratio = if ceiling > 0.0 {
        script_ops_per_s / ceiling
    } else {
        0.0
    };

    println!(
        "store: {codes_n} codes in chunks of {chunk_n}, {store_secs:.2}s = {codes_per_s:.0} codes/s; \
         redis-server {redis_us_per_code:.2} µs CPU/code"
    );
    println!("memory: {bytes_per_code:.1} bytes/code (used_memory delta)");
    println!(
        "claim+complete: {EXCHANGES} exchanges, {TASKS} tasks, {exch_secs:.2}s = \
         {exchanges_per_s:.0} exchanges/s = {script_ops_per_s:.0} giftx script ops/s"
    );
    println!(
        "ceiling: redis-benchmark EVALSHA trivial -c 64: {ceiling:.0} req/s; ratio {ratio:.2}"
    );

    let json = format!(
        "{{\n  \"codes\": {codes_n},\n  \"chunk\": {chunk_n},\n  \"store_seconds\": {store_secs:.3},\n  \
         \"redis_cpu_us_per_code\": {redis_us_per_code:.2},\n  \
         \"store_codes_per_s\": {codes_per_s:.0},\n  \"bytes_per_code\": {bytes_per_code:.1},\n  \
         \"exchanges\": {EXCHANGES},\n  \"tasks\": {TASKS},\n  \"exchanges_per_s\": {exchanges_per_s:.0},\n  \
         \"giftx_script_ops_per_s\": {script_ops_per_s:.0},\n  \"ceiling_evalsha_per_s\": {ceiling:.0},\n  \
         \"ratio\": {ratio:.3},\n  \"appendfsync\": \"always\"\n}}\n"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("ledger.json"), json);
}
