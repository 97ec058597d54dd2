//! Refused exchanges against a real giftxd process on a real Redis (issue
//! 12 items 2 and 3): a provider that keeps refusing cannot make a code's
//! claims dearer or its records grow without bound, and a provider that
//! cannot serve now (stock out) frees the code at once instead of holding
//! it PENDING for the reconciler.

use std::time::Duration;

use futures::StreamExt as _;
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_proto::v1::operations_service_client::OperationsServiceClient;
use giftx_testkit::RedisServer;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

mod support;
use support::{Giftxd, channel, free_port, start_giftxd};

/// A simulated provider (`gift-reject`, a magic option id, is refused on
/// every attempt) and a stock provider.
const PROVIDERS: &str = r#"
[providers.sim]
kind = "simulated"

[providers.edy-stock]
kind = "stock"
"#;

/// A reconciler that runs often and takes every PENDING exchange at once.
const WORKERS: &str = r#"
[expiry]
interval_ms = 100
lease_ttl_ms = 1000
reconcile_min_age_seconds = 0
"#;

/// No background workers: nothing but the calls measured touches Redis.
const NO_WORKERS: &str = r#"
[expiry]
workers = false
"#;

struct World {
    _redis: RedisServer,
    _dir: tempfile::TempDir,
    _giftxd: Giftxd,
    channel: Channel,
    redis_url: String,
}

async fn world(expiry: &str) -> World {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("giftx.toml"),
        format!("{PROVIDERS}{expiry}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("hmac.key"), [7u8; 32]).unwrap();
    std::fs::write(dir.path().join("deliverable.keys"), "ab".repeat(32)).unwrap();
    let port = free_port();
    let giftxd = start_giftxd(dir.path(), &redis, port);
    let channel = channel(port).await;
    World {
        redis_url: redis.url(),
        _redis: redis,
        _dir: dir,
        _giftxd: giftxd,
        channel,
    }
}

/// Creates campaign `id` with `options` (option id, provider) and issues
/// `count` codes.
async fn codes(w: &World, id: &str, options: &[(&str, &str)], count: i64) -> Vec<pb::IssuedCode> {
    let mut issuance = IssuanceServiceClient::new(w.channel.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    issuance
        .create_campaign(pb::CreateCampaignRequest {
            campaign_id: id.into(),
            campaign: Some(pb::Campaign {
                display_name: "refusals".into(),
                face_value: Some(pb::Money {
                    currency_code: "JPY".into(),
                    minor_units: 500,
                }),
                expire_time: Some(prost_types::Timestamp {
                    seconds: now + 86_400,
                    nanos: 0,
                }),
                options: options
                    .iter()
                    .map(|(o, p)| pb::RedemptionOption {
                        option_id: (*o).into(),
                        display_name: (*o).into(),
                        provider: (*p).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    issuance
        .issue_codes(pb::IssueCodesRequest {
            campaign: format!("campaigns/{id}"),
            batch_id: "b1".into(),
            count,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await
}

fn request(code: &pb::IssuedCode, option: &str, request_id: &str) -> pb::ExchangeRequest {
    pb::ExchangeRequest {
        code: code.code.clone(),
        login_key: code.login_key.clone(),
        option_id: option.into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Redis commands run since the last `CONFIG RESETSTAT`, the scripts' own
/// calls included, INFO and CONFIG aside.
fn commands_run(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter(|l| !l.starts_with("cmdstat_info") && !l.starts_with("cmdstat_config"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// The Redis commands one Exchange call costs, and its answer. (giftxd's
/// campaign caches may reload within a call: compare minimums of a few.)
async fn cost(w: &World, req: pb::ExchangeRequest) -> (u64, Result<pb::Exchange, tonic::Status>) {
    let mut conn = redis::Client::open(w.redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let out = ExchangeServiceClient::new(w.channel.clone())
        .exchange(req)
        .await
        .map(tonic::Response::into_inner);
    (commands_run(&mut conn), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_hammered_with_refused_exchanges_is_capped_and_stays_cheap() {
    let w = world(NO_WORKERS).await;
    let codes = codes(&w, "hammer", &[("gift-reject", "sim"), ("gift", "sim")], 8).await;
    let mut exchange = ExchangeServiceClient::new(w.channel.clone());
    // The first refusals each leave a FAILED exchange.
    let mut first = None;
    for i in 0..20 {
        let x = exchange
            .exchange(request(&codes[0], "gift-reject", &format!("h-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(x.state, pb::ExchangeState::Failed as i32, "{x:?}");
        first.get_or_insert(x);
    }
    // Then the code takes no more, however often it is tried, with any
    // option; the same request still answers its exchange.
    for i in 20..300 {
        let option = if i % 2 == 0 { "gift-reject" } else { "gift" };
        let e = exchange
            .exchange(request(&codes[0], option, &format!("h-{i}")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert_eq!(reason(&e), "TOO_MANY_ATTEMPTS", "{e:?}");
    }
    let again = exchange
        .exchange(request(&codes[0], "gift-reject", "h-0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Some(again), first);

    // The Redis work of a call does not grow with the code's history: a
    // refused request on the hammered code costs no more than one
    // (refused) exchange of a fresh code, and an exchange after 18
    // refusals costs what one after a single refusal does.
    let mut fresh = u64::MAX;
    let mut capped = u64::MAX;
    for i in 0..3 {
        let (c, out) = cost(&w, request(&codes[1 + i], "gift-reject", "fresh")).await;
        assert_eq!(out.unwrap().state, pb::ExchangeState::Failed as i32);
        fresh = fresh.min(c);
        let (c, out) = cost(&w, request(&codes[0], "gift", &format!("more-{i}"))).await;
        assert_eq!(reason(&out.unwrap_err()), "TOO_MANY_ATTEMPTS");
        capped = capped.min(c);
    }
    assert!(capped <= fresh, "fresh {fresh}, capped {capped}");
    // codes[1..4] now have one refusal each; give codes[4..7] 18.
    for c in &codes[4..7] {
        for i in 0..18 {
            exchange
                .exchange(request(c, "gift-reject", &format!("r-{i}")))
                .await
                .unwrap();
        }
    }
    let (mut after_one, mut after_many) = (u64::MAX, u64::MAX);
    for i in 0..3 {
        let (c, out) = cost(&w, request(&codes[1 + i], "gift-reject", "next")).await;
        assert_eq!(out.unwrap().state, pb::ExchangeState::Failed as i32);
        after_one = after_one.min(c);
        let (c, out) = cost(&w, request(&codes[4 + i], "gift-reject", "next")).await;
        assert_eq!(out.unwrap().state, pb::ExchangeState::Failed as i32);
        after_many = after_many.min(c);
    }
    assert_eq!(after_many, after_one, "after 18 refusals vs after 1");
    assert!(
        after_one <= fresh + 1,
        "fresh {fresh}, after one {after_one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_out_frees_the_code_at_once_and_a_restock_completes_nothing_abandoned() {
    let w = world(WORKERS).await;
    let codes = codes(&w, "stockout", &[("edy", "edy-stock"), ("gift", "sim")], 2).await;
    let mut exchange = ExchangeServiceClient::new(w.channel.clone());
    let mut ops = OperationsServiceClient::new(w.channel.clone());
    let mut expiry = ExpiryServiceClient::new(w.channel.clone());

    // No stock: refused now, with RetryInfo; the code is ACTIVE again and
    // its exchange FAILED with the reason.
    for c in &codes {
        let e = exchange
            .exchange(request(c, "edy", "edy-1"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert_eq!(reason(&e), "STOCK_EXHAUSTED");
        assert!(e.get_details_retry_info().is_some(), "{e:?}");
        let s = exchange
            .verify_code(pb::VerifyCodeRequest {
                code: c.code.clone(),
                login_key: c.login_key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.state, pb::CodeState::Active as i32);
        let x = s.exchange.unwrap();
        assert_eq!(x.state, pb::ExchangeState::Failed as i32);
        assert_eq!(x.failure_reason, "STOCK_EXHAUSTED");
    }
    // The first holder chooses another option at once.
    let gift = exchange
        .exchange(request(&codes[0], "gift", "gift-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gift.state, pb::ExchangeState::Succeeded as i32, "{gift:?}");
    // Nothing is left for the reconciler.
    let pending = expiry
        .list_pending_exchanges(pb::ListPendingExchangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(pending.exchanges.is_empty(), "{pending:?}");

    // A restock; the reconciler keeps running (every 100 ms) and must not
    // hand the item to the abandoned exchange.
    let added = ops
        .import_stock(futures::stream::iter(vec![pb::ImportStockRequest {
            provider: "edy-stock".into(),
            items: vec![pb::StockItem {
                code: "EDY-0001".into(),
                pin: "1111".into(),
                expire_time: None,
            }],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.available, 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = |ops: &mut OperationsServiceClient<Channel>| {
        let mut ops = ops.clone();
        async move {
            ops.get_stock_status(pb::GetStockStatusRequest {
                provider: "edy-stock".into(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    assert_eq!(status(&mut ops).await.available, 1);
    let e = exchange
        .exchange(request(&codes[0], "edy", "edy-1"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CODE_ALREADY_REDEEMED", "{e:?}");

    // The second holder retries with the same request id: it succeeds.
    let done = exchange
        .exchange(request(&codes[1], "edy", "edy-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::ExchangeState::Succeeded as i32, "{done:?}");
    assert_eq!(done.deliverable.unwrap().code, "EDY-0001");
    let s = status(&mut ops).await;
    assert_eq!((s.available, s.handed_out), (0, 1));
}
