//! The Redis ledger on a Sentinel group: a claim and a completion wait
//! until a replica holds them (`WAIT`), and fail retryably, with the write
//! standing, when no replica acknowledges in time.

use std::time::Duration;

use giftx_core::model::{
    BatchId, CampaignId, CampaignSpec, OptionId, ProviderId, RedemptionOption,
};
use giftx_core::{Currency, Digest, Money, Timestamp};
use giftx_ledger::redis::RedisOptions;
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, Lease, Ledger, LedgerConfig, LedgerError, NewCode,
    Preferences, RedisLedger,
};
use giftx_testkit::SentinelGroup;

const NOW: Timestamp = Timestamp(1_400_000_000_000);

fn digest(b: u8) -> Digest {
    Digest([b; 32])
}

fn claim(series: giftx_core::Series, code: u8, request: u8) -> ClaimRequest {
    ClaimRequest {
        code: CodeRef {
            series,
            digest: digest(code),
        },
        login_key: digest(code + 100),
        option: OptionId::parse("o", "gift").unwrap(),
        request: digest(request),
        fingerprint: digest(request),
        contact: None,
        preferences: Preferences::default(),
        lease: Lease {
            holder: "t".into(),
            until: Timestamp(NOW.0 + 30_000),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_a_replica_and_fails_retryably_when_none_acknowledges() {
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    let connect = |acked: Option<usize>| {
        let sentinels = group.sentinel_urls();
        async move {
            RedisLedger::connect_sentinel(
                &sentinels,
                giftx_testkit::sentinel::MASTER_NAME,
                LedgerConfig::default(),
                RedisOptions {
                    min_replicas_acked: acked,
                    timeout: Duration::from_millis(1000),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let (waiting, not_waiting) = (connect(None).await, connect(Some(0)).await);
    let spec = CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("id", "durable").unwrap(),
        display_name: "durable".into(),
        owner: "t".into(),
        face_value: Money::new(Currency::from_code("JPY").unwrap(), 500),
        expire_time: Timestamp(NOW.0 + 86_400_000),
        options: vec![RedemptionOption {
            id: OptionId::parse("o", "gift").unwrap(),
            display_name: "gift".into(),
            provider: ProviderId::parse("p", "sim").unwrap(),
        }],
    };
    let c = waiting.create_campaign(&spec, None, NOW).await.unwrap();
    let batch = waiting
        .begin_batch(&spec.id, &BatchId::parse("b", "b1").unwrap(), 3, NOW)
        .await
        .unwrap();
    let codes: Vec<NewCode> = (1..=3)
        .map(|i| NewCode {
            code: digest(i),
            login_key: digest(i + 100),
            serial: u32::from(i),
        })
        .collect();
    waiting.store_codes(&c, &batch, &codes, NOW).await.unwrap();

    // With the replicas answering: claimed and completed.
    let ClaimOutcome::Claimed(x) = waiting.claim(&claim(c.series, 1, 1), NOW).await.unwrap() else {
        panic!("not claimed");
    };
    waiting.complete(&x.id, None, NOW).await.unwrap();

    // Both replicas stalled for 3 s: a waiting claim fails retryably, a
    // claim that does not wait goes through.
    let stalls: Vec<_> = group
        .replica_ports()
        .into_iter()
        .map(|port| {
            std::thread::spawn(move || {
                let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let _: () = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(3)
                    .query(&mut c)
                    .unwrap();
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    match waiting.claim(&claim(c.series, 2, 2), NOW).await {
        Err(LedgerError::Unavailable(m)) => assert!(m.contains("replicas"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        not_waiting.claim(&claim(c.series, 3, 3), NOW).await,
        Ok(ClaimOutcome::Claimed(_))
    ));
    for s in stalls {
        s.join().unwrap();
    }
    // The unacknowledged claim stood on the master: the same request finds
    // it (and this time a replica acknowledges).
    match waiting.claim(&claim(c.series, 2, 2), NOW).await {
        Ok(ClaimOutcome::Existing(x) | ClaimOutcome::Claimed(x)) => {
            assert_eq!(x.state, giftx_core::model::ExchangeState::Pending);
        }
        other => panic!("expected the standing claim, got {other:?}"),
    }
    drop(group);
}
