//! Redis time of a claim on a code with a long history of refused
//! exchanges vs a fresh code (issue 12 item 2), on a private redis-server.
//!
//! One code is tried 1,000 times with a new request id each time, every
//! exchange refused by the provider (released): the first
//! `MAX_FAILED_EXCHANGES` leave FAILED exchanges, the rest are refused by the
//! ledger (TOO_MANY_ATTEMPTS). Then, each phase after `CONFIG RESETSTAT`,
//! `INFO commandstats` gives the Redis time of the claim script
//! (`cmdstat_evalsha` `usec_per_call`, the script's own commands included)
//! and the commands it ran per claim:
//!
//! - `fresh`: claims of codes never exchanged (the common case);
//! - `history`: claims of codes with `MAX_FAILED_EXCHANGES - 1` refused
//!   exchanges (the dearest claim a code can still make);
//! - `capped`: new requests on the code tried 1,000 times (refused);
//! - `repeated`: its first request again (answered idempotently).
//!
//! `cargo bench -p giftx-ledger --bench refusals`; writes
//! `target/bench/refusals.json`. `GIFTX_BENCH_SAMPLES` sets the claims per
//! phase (default 2,000).

use std::sync::Arc;

use giftx_core::model::{
    BatchId, CampaignId, CampaignSpec, OptionId, ProviderId, RedemptionOption,
};
use giftx_core::{Currency, Digest, Money, Series, Timestamp};
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, Lease, Ledger, LedgerConfig, LedgerError,
    MAX_FAILED_EXCHANGES, NewCode, Preferences, RedisLedger, Refusal,
};
use giftx_testkit::RedisServer;

const NOW: Timestamp = Timestamp(1_400_000_000_000);
/// Exchange attempts on the hammered code.
const ATTEMPTS: usize = 1_000;
const SAMPLES: usize = 2_000;

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

fn request(series: Series, c: &NewCode, request: Digest) -> ClaimRequest {
    ClaimRequest {
        code: CodeRef {
            series,
            digest: c.code,
        },
        login_key: c.login_key,
        option: OptionId::parse("o", "amazon").expect("option"),
        request,
        fingerprint: Digest([1; 32]),
        contact: None,
        preferences: Preferences {
            delete_personal_data: true,
            stop_mail: false,
        },
        lease: Lease {
            holder: "bench".into(),
            until: Timestamp(NOW.0 + 30_000),
        },
    }
}

/// `(usec_per_call of EVALSHA, commands per EVALSHA)` since the last
/// RESETSTAT; commands counted are every command but EVALSHA, INFO and
/// CONFIG, i.e. those the scripts ran.
fn script_stats(server: &RedisServer) -> (f64, f64) {
    let mut c = server.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .expect("INFO");
    let field = |l: &str, name: &str| -> f64 {
        l.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let mut evalsha = (0.0, 0.0);
    let mut inner = 0.0;
    for l in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        if l.starts_with("cmdstat_evalsha:") {
            evalsha = (field(l, "usec_per_call"), field(l, "calls"));
        } else if !l.starts_with("cmdstat_info") && !l.starts_with("cmdstat_config") {
            inner += field(l, "calls");
        }
    }
    let per = if evalsha.1 > 0.0 {
        inner / evalsha.1
    } else {
        0.0
    };
    (evalsha.0, per)
}

fn reset(server: &RedisServer) {
    let mut c = server.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut c)
        .expect("RESETSTAT");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let samples = std::env::var("GIFTX_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(SAMPLES)
        .max(1);
    let server = RedisServer::start();
    let ledger = Arc::new(
        RedisLedger::connect(&server.url(), LedgerConfig::default())
            .await
            .expect("connect"),
    );
    let spec = CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("id", "refusals").expect("id"),
        display_name: "refusals".into(),
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
    let n = 1 + 2 * samples;
    let batch = ledger
        .begin_batch(
            &spec.id,
            &BatchId::parse("b", "b1").expect("batch"),
            n as u64,
            NOW,
        )
        .await
        .expect("batch");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let codes: Vec<NewCode> = (0..n)
        .map(|i| NewCode {
            code: rng.digest(),
            login_key: rng.digest(),
            serial: u32::try_from(i + 1).expect("serial"),
        })
        .collect();
    for chunk in codes.chunks(100_000) {
        ledger
            .store_codes(&campaign, &batch, chunk, NOW)
            .await
            .expect("store");
    }
    let series = campaign.series;
    let hammered = &codes[0];
    let fresh = &codes[1..=samples];
    let history = &codes[samples + 1..];

    // Refused exchanges: claim, then release as the provider refused.
    let refuse = |c: &NewCode, r: Digest| {
        let (ledger, req) = (ledger.clone(), request(series, c, r));
        async move {
            match ledger.claim(&req, NOW).await {
                Ok(ClaimOutcome::Claimed(x)) => {
                    ledger
                        .release(&x.id, "REFUSED", false, NOW)
                        .await
                        .expect("release");
                    true
                }
                Err(LedgerError::Refused(Refusal::TooManyAttempts)) => false,
                other => panic!("unexpected claim outcome {other:?}"),
            }
        }
    };
    let first = rng.digest();
    let mut failed = 0;
    for i in 0..ATTEMPTS {
        let r = if i == 0 { first } else { rng.digest() };
        failed += usize::from(refuse(hammered, r).await);
    }
    for c in history {
        for _ in 1..MAX_FAILED_EXCHANGES {
            assert!(refuse(c, rng.digest()).await);
        }
    }

    reset(&server);
    for c in fresh {
        let out = ledger.claim(&request(series, c, rng.digest()), NOW).await;
        assert!(matches!(out, Ok(ClaimOutcome::Claimed(_))), "{out:?}");
    }
    let fresh_stats = script_stats(&server);
    reset(&server);
    for c in history {
        let out = ledger.claim(&request(series, c, rng.digest()), NOW).await;
        assert!(matches!(out, Ok(ClaimOutcome::Claimed(_))), "{out:?}");
    }
    let history_stats = script_stats(&server);
    reset(&server);
    for _ in 0..samples {
        let out = ledger
            .claim(&request(series, hammered, rng.digest()), NOW)
            .await;
        assert!(
            matches!(out, Err(LedgerError::Refused(Refusal::TooManyAttempts))),
            "{out:?}"
        );
    }
    let capped_stats = script_stats(&server);
    reset(&server);
    for _ in 0..samples {
        let out = ledger.claim(&request(series, hammered, first), NOW).await;
        assert!(matches!(out, Ok(ClaimOutcome::Existing(_))), "{out:?}");
    }
    let repeated_stats = script_stats(&server);

    let ratio = |s: (f64, f64)| {
        if fresh_stats.0 > 0.0 {
            s.0 / fresh_stats.0
        } else {
            0.0
        }
    };
    println!(
        "refusals: one code tried {ATTEMPTS} times, every exchange refused: {failed} FAILED \
         exchanges (cap {MAX_FAILED_EXCHANGES}), {} refused TOO_MANY_ATTEMPTS",
        ATTEMPTS - failed
    );
    println!("claim script, Redis time per call (INFO commandstats), {samples} calls each:");
    for (name, s) in [
        ("fresh code", fresh_stats),
        (
            "code with cap-1 refused exchanges (new request)",
            history_stats,
        ),
        ("code tried 1,000 times (new request)", capped_stats),
        ("code tried 1,000 times (repeated request)", repeated_stats),
    ] {
        println!(
            "  {name}: {:.2} µs, {:.1} commands; {:.2}x fresh",
            s.0,
            s.1,
            ratio(s)
        );
    }
    let json = format!(
        "{{\n  \"attempts\": {ATTEMPTS},\n  \"failed_exchanges\": {failed},\n  \
         \"samples\": {samples},\n  \
         \"fresh_usec\": {:.2},\n  \"fresh_commands\": {:.1},\n  \
         \"history_usec\": {:.2},\n  \"history_commands\": {:.1},\n  \
         \"capped_usec\": {:.2},\n  \"capped_commands\": {:.1},\n  \
         \"repeated_usec\": {:.2},\n  \"repeated_commands\": {:.1},\n  \
         \"capped_vs_fresh\": {:.3},\n  \"history_vs_fresh\": {:.3}\n}}\n",
        fresh_stats.0,
        fresh_stats.1,
        history_stats.0,
        history_stats.1,
        capped_stats.0,
        capped_stats.1,
        repeated_stats.0,
        repeated_stats.1,
        ratio(capped_stats),
        ratio(history_stats),
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("refusals.json"), json);
}
