//! Issue 12 items 1 and 9, end to end: a real giftxd process on a real
//! Redis, driven over gRPC only.
//!
//! - A forced ExtendCampaign to a year-slip date (and to any time before
//!   now) is refused with INVALID_ARGUMENT naming `expire_time`; every code
//!   and redeemed exchange is still there and the stats are unchanged.
//! - A code that does not exist locks at the 10th wrong key like a real one.

use futures::StreamExt as _;
use giftx_core::{Code, LoginKey, Series};
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::RedisServer;
use tonic::Code as GrpcCode;
use tonic::transport::Channel;
use tonic_types::StatusExt;

mod support;
use support::{Giftxd, channel, free_port, start_giftxd};

const CONFIG: &str = r#"
[providers.sim]
kind = "simulated"
"#;

fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

async fn start() -> (RedisServer, tempfile::TempDir, Giftxd, Channel) {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("giftx.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("hmac.key"), [7u8; 32]).unwrap();
    std::fs::write(dir.path().join("deliverable.keys"), "ab".repeat(32)).unwrap();
    let port = free_port();
    let giftxd = start_giftxd(dir.path(), &redis, port);
    let ch = channel(port).await;
    (redis, dir, giftxd, ch)
}

async fn campaign(
    ch: &Channel,
    id: &str,
    deadline: i64,
    n: i64,
) -> (pb::Campaign, Vec<pb::IssuedCode>) {
    let mut issuance = IssuanceServiceClient::new(ch.clone());
    let c = issuance
        .create_campaign(pb::CreateCampaignRequest {
            campaign_id: id.into(),
            campaign: Some(pb::Campaign {
                display_name: "apology".into(),
                face_value: Some(pb::Money {
                    currency_code: "JPY".into(),
                    minor_units: 500,
                }),
                expire_time: Some(ts(deadline)),
                options: vec![pb::RedemptionOption {
                    option_id: "gift".into(),
                    display_name: "Gift code".into(),
                    provider: "sim".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<pb::IssuedCode> = issuance
        .issue_codes(pb::IssueCodesRequest {
            campaign: format!("campaigns/{id}"),
            batch_id: "b1".into(),
            count: n,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    (c, codes)
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_year_slip_extension_is_refused_and_deletes_nothing() {
    let (redis, _dir, _giftxd, ch) = start().await;
    let now = unix_now();
    let deadline = now + 30 * 86_400;
    let (_, codes) = campaign(&ch, "slip", deadline, 20).await;
    let mut exchange = ExchangeServiceClient::new(ch.clone());
    let mut redeemed = Vec::new();
    for (i, c) in codes.iter().take(5).enumerate() {
        let x = exchange
            .exchange(pb::ExchangeRequest {
                code: c.code.clone(),
                login_key: c.login_key.clone(),
                option_id: "gift".into(),
                request_id: format!("r{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(x.state, pb::ExchangeState::Succeeded as i32);
        redeemed.push(x);
    }
    let mut issuance = IssuanceServiceClient::new(ch.clone());
    let stats = |mut i: IssuanceServiceClient<Channel>| async move {
        let mut s = i
            .get_campaign_stats(pb::GetCampaignStatsRequest {
                campaign: "campaigns/slip".into(),
            })
            .await
            .unwrap()
            .into_inner();
        s.read_time = None;
        s
    };
    let before = stats(issuance.clone()).await;
    assert_eq!(before.purge_time, None);
    let mut conn = redis.connection();
    let keys_before: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();

    // The original report: one digit of the year slipped (and, for good
    // measure, a forced deadline just before now).
    let mut expiry = ExpiryServiceClient::new(ch.clone());
    for to in [deadline - 10 * 365 * 86_400, now - 60] {
        let err = expiry
            .extend_campaign(pb::ExtendCampaignRequest {
                campaign: "campaigns/slip".into(),
                expire_time: Some(ts(to)),
                force: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), GrpcCode::InvalidArgument, "{err:?}");
        let bad = err.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "expire_time", "{bad:?}");
        assert!(
            bad.field_violations[0].description.contains("before now"),
            "{bad:?}"
        );
    }
    // A sweep finds nothing to purge either.
    let swept = expiry
        .sweep_expired(pb::SweepExpiredRequest {
            campaign: "campaigns/slip".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(swept.expired_count, 0);

    // Everything is still there.
    let c = issuance
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/slip".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.expire_time, Some(ts(deadline)));
    for (i, code) in codes.iter().enumerate() {
        let s = exchange
            .verify_code(pb::VerifyCodeRequest {
                code: code.code.clone(),
                login_key: code.login_key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let want = if i < 5 {
            pb::CodeState::Redeemed
        } else {
            pb::CodeState::Active
        };
        assert_eq!(s.state, want as i32, "code {i}");
    }
    for (i, x) in redeemed.iter().enumerate() {
        let again = exchange
            .get_exchange(pb::GetExchangeRequest {
                code: codes[i].code.clone(),
                login_key: codes[i].login_key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.name, x.name);
        assert_eq!(again.deliverable, x.deliverable);
    }
    assert_eq!(stats(issuance.clone()).await, before);
    let keys_after: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert!(
        keys_after >= keys_before,
        "{keys_before} keys, now {keys_after}"
    );

    // An earlier deadline still ahead is allowed, and reversible.
    let soon = now + 3600;
    expiry
        .extend_campaign(pb::ExtendCampaignRequest {
            campaign: "campaigns/slip".into(),
            expire_time: Some(ts(soon)),
            force: true,
        })
        .await
        .unwrap();
    expiry
        .extend_campaign(pb::ExtendCampaignRequest {
            campaign: "campaigns/slip".into(),
            expire_time: Some(ts(deadline)),
            force: false,
        })
        .await
        .unwrap();
    assert_eq!(stats(issuance).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_that_does_not_exist_locks_like_a_real_one() {
    let (_redis, _dir, _giftxd, ch) = start().await;
    let (c, codes) = campaign(&ch, "lock", unix_now() + 86_400, 1).await;
    let series = Series::parse(&c.code_series).unwrap();
    let wrong = LoginKey::generate().unwrap().printed();
    let unknown = Code::generate(series).unwrap().printed();
    let no_campaign = Code::generate(Series::from_index((series.index() + 7) % 1024).unwrap())
        .unwrap()
        .printed();
    let mut exchange = ExchangeServiceClient::new(ch);
    for code in [codes[0].code.clone(), unknown, no_campaign] {
        let mut answers = Vec::new();
        for _ in 0..11 {
            let e = exchange
                .verify_code(pb::VerifyCodeRequest {
                    code: code.clone(),
                    login_key: wrong.clone(),
                })
                .await
                .unwrap_err();
            let reason = e
                .get_details_error_info()
                .map(|i| i.reason)
                .unwrap_or_default();
            answers.push((e.code(), reason));
        }
        let mut want = vec![(GrpcCode::NotFound, "LOGIN_KEY_MISMATCH".to_owned()); 9];
        want.extend(vec![
            (GrpcCode::FailedPrecondition, "CODE_LOCKED".to_owned());
            2
        ]);
        assert_eq!(answers, want, "{code}");
    }
}
