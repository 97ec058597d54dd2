//! giftxd killed with SIGKILL between claim and completion: after a
//! restart the exchange is finished by the reconciler, with exactly one
//! deliverable issued (guarantees 1 and 3, with real processes and Redis).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::RedisServer;

mod support;
use support::{channel, free_port, start_giftxd};

const CONFIG: &str = r#"
[providers.slow-sim]
kind = "simulated"
latency_ms = 1500

[exchange]
provider_timeout_ms = 2500
lease_seconds = 3
backoff_base_ms = 200

[expiry]
interval_ms = 200
lease_ttl_ms = 1000
reconcile_min_age_seconds = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_claim_and_completion_ends_with_one_deliverable() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("giftx.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("hmac.key"), [7u8; 32]).unwrap();
    std::fs::write(dir.path().join("deliverable.keys"), "ab".repeat(32)).unwrap();

    let port = free_port();
    let mut first = start_giftxd(dir.path(), &redis, port);
    let ch = channel(port).await;
    let mut issuance = IssuanceServiceClient::new(ch.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    issuance
        .create_campaign(pb::CreateCampaignRequest {
            campaign_id: "crash".into(),
            campaign: Some(pb::Campaign {
                display_name: "crash test".into(),
                face_value: Some(pb::Money {
                    currency_code: "JPY".into(),
                    minor_units: 500,
                }),
                expire_time: Some(prost_types::Timestamp {
                    seconds: now + 86_400,
                    nanos: 0,
                }),
                options: vec![pb::RedemptionOption {
                    option_id: "gift".into(),
                    display_name: "Gift code".into(),
                    provider: "slow-sim".into(),
                    requires_shipping_address: false,
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let codes: Vec<pb::IssuedCode> = issuance
        .issue_codes(pb::IssueCodesRequest {
            campaign: "campaigns/crash".into(),
            batch_id: "b1".into(),
            count: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let code = codes[0].clone();
    let request = pb::ExchangeRequest {
        code: code.code.clone(),
        login_key: code.login_key.clone(),
        option_id: "gift".into(),
        request_id: "crash-1".into(),
        ..Default::default()
    };

    // Claimed, provider call under way (1.5 s of latency): kill giftxd.
    let mut exchange = ExchangeServiceClient::new(ch);
    let in_flight = {
        let mut x = exchange.clone();
        let r = request.clone();
        tokio::spawn(async move { x.exchange(r).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the caller saw no answer"
    );

    // A new giftxd's reconciler finishes it once the dead driver's lease
    // has lapsed.
    let mut second = start_giftxd(dir.path(), &redis, port);
    exchange = ExchangeServiceClient::new(channel(port).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let x = exchange
            .get_exchange(pb::GetExchangeRequest {
                code: code.code.clone(),
                login_key: code.login_key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if x.state == pb::ExchangeState::Succeeded as i32 {
            break x;
        }
        assert!(Instant::now() < deadline, "still {x:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deliverable = done.deliverable.clone().unwrap();
    assert!(!deliverable.code.is_empty());

    // The holder's retry returns the same exchange and deliverable.
    let again = exchange.exchange(request).await.unwrap().into_inner();
    assert_eq!(again.name, done.name);
    assert_eq!(again.deliverable, done.deliverable);

    // The simulator keeps what it issued in the provider store, one entry
    // per idempotency key: exactly one deliverable was ever issued.
    let mut conn = redis.connection();
    let issued: i64 = redis::cmd("HLEN")
        .arg("{p:slow-sim}:v")
        .query(&mut conn)
        .unwrap();
    assert_eq!(issued, 1);

    second.kill();
}

fn lease_holder(redis: &RedisServer) -> Option<String> {
    let mut conn = redis.connection();
    redis::cmd("HGET")
        .arg("{g}:lease:expiry-workers")
        .arg("holder")
        .query(&mut conn)
        .unwrap()
}

fn pid_of(holder: &str) -> u32 {
    holder.split('-').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lease_holder_hands_the_workers_over_within_the_ttl() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("giftx.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("hmac.key"), [7u8; 32]).unwrap();
    std::fs::write(dir.path().join("deliverable.keys"), "ab".repeat(32)).unwrap();
    let mut a = start_giftxd(dir.path(), &redis, free_port());
    let mut b = start_giftxd(dir.path(), &redis, free_port());

    let wait_for = |pred: &dyn Fn(Option<String>) -> bool, limit: Duration| {
        let start = Instant::now();
        loop {
            let h = lease_holder(&redis);
            if pred(h.clone()) {
                return (h, start.elapsed());
            }
            assert!(start.elapsed() < limit, "lease still {h:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (holder, _) = wait_for(&|h| h.is_some(), Duration::from_secs(10));
    let holder = holder.unwrap();
    let (dead, survivor) = if pid_of(&holder) == a.id() {
        (&mut a, b.id())
    } else {
        assert_eq!(pid_of(&holder), b.id(), "the holder is one of the two");
        (&mut b, a.id())
    };
    // Only one holds it: the other keeps seeing a live lease.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(lease_holder(&redis).as_deref(), Some(holder.as_str()));

    dead.kill();
    // lease_ttl_ms = 1000, interval_ms = 200: the survivor takes over once
    // the lease lapses, at its next pass.
    let (now_held, took) = wait_for(
        &|h| h.as_deref().is_some_and(|h| pid_of(h) == survivor),
        Duration::from_secs(5),
    );
    assert!(now_held.is_some());
    assert!(
        took <= Duration::from_millis(1000 + 200 + 800),
        "took {took:?}"
    );
}
