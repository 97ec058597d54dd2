//! giftxd (a spawned process) and its Redis connections (issue 12): a
//! connection Redis closed fails no call once Redis answers again, and
//! `rediss://` with an ACL user, the CA and the password given by file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt as _;
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::RedisServer;
use tonic::transport::Channel;

mod support;
use support::{channel, free_port, start_giftxd, start_giftxd_with};

const CONFIG: &str = r#"
[providers.sim]
kind = "simulated"
latency_ms = 0
"#;

fn files(dir: &Path) {
    std::fs::write(dir.join("giftx.toml"), CONFIG).unwrap();
    // A binary key ending in a newline byte (issue 12 item 9).
    let mut key = [0x9cu8; 32];
    key[31] = b'\n';
    std::fs::write(dir.join("hmac.key"), key).unwrap();
    std::fs::write(dir.join("deliverable.keys"), "ab".repeat(32)).unwrap();
}

/// Creates a campaign, issues `n` codes and exchanges every other one.
async fn codes(ch: Channel, n: i64) -> Vec<pb::IssuedCode> {
    let mut issuance = IssuanceServiceClient::new(ch.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    issuance
        .create_campaign(pb::CreateCampaignRequest {
            campaign_id: "conn".into(),
            campaign: Some(pb::Campaign {
                display_name: "connections".into(),
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
                    provider: "sim".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let codes: Vec<pb::IssuedCode> = issuance
        .issue_codes(pb::IssueCodesRequest {
            campaign: "campaigns/conn".into(),
            batch_id: "b1".into(),
            count: n,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let mut exchange = ExchangeServiceClient::new(ch);
    for (i, c) in codes.iter().enumerate().step_by(2) {
        exchange
            .exchange(pb::ExchangeRequest {
                code: c.code.clone(),
                login_key: c.login_key.clone(),
                option_id: "gift".into(),
                request_id: format!("r{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    codes
}

/// `n` VerifyCode / GetExchange calls, 40 at a time: the statuses of the
/// ones that failed with a server-side error.
async fn redisplay(ch: &Channel, codes: &[pb::IssuedCode], n: usize) -> Vec<tonic::Status> {
    futures::stream::iter(0..n)
        .map(|i| {
            let ch = ch.clone();
            let c = codes[i % codes.len()].clone();
            async move {
                let mut x = ExchangeServiceClient::new(ch);
                let r = if i % 2 == 0 {
                    x.verify_code(pb::VerifyCodeRequest {
                        code: c.code,
                        login_key: c.login_key,
                    })
                    .await
                    .map(|_| ())
                } else {
                    x.get_exchange(pb::GetExchangeRequest {
                        code: c.code,
                        login_key: c.login_key,
                    })
                    .await
                    .map(|_| ())
                };
                match r {
                    // Unexchanged codes have no exchange: an answer.
                    Err(s) if s.code() == tonic::Code::NotFound => None,
                    Err(s) => Some(s),
                    Ok(()) => None,
                }
            }
        })
        .buffer_unordered(40)
        .filter_map(|s| async move { s })
        .collect()
        .await
}

fn kill_clients(redis: &RedisServer) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut redis.connection())
        .unwrap()
}

/// Issue 12 item 8, end to end: `CLIENT KILL TYPE normal` during a load
/// and while giftxd sits idle; once Redis answers, 400 re-display calls
/// all succeed (before: a few answered UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_connections_fail_no_call_once_redis_answers() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let port = free_port();
    let _giftxd = start_giftxd(dir.path(), &redis, port);
    let ch = channel(port).await;
    let codes = codes(ch.clone(), 30).await;
    let (_, killed) = tokio::join!(redisplay(&ch, &codes, 1000), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        kill_clients(&redis)
    });
    assert!(killed > 0);
    for round in 0..3 {
        assert!(kill_clients(&redis) > 0, "giftxd holds connections");
        let _: String = redis::cmd("PING").query(&mut redis.connection()).unwrap();
        let failed = redisplay(&ch, &codes, 400).await;
        assert!(
            failed.is_empty(),
            "round {round}: {} failed: {:?}",
            failed.len(),
            failed.first()
        );
    }
}

/// Issue 12 item 9: giftxd on `rediss://` as an ACL user, the CA from
/// GIFTX_REDIS_CA_FILE and the password from GIFTX_REDIS_PASSWORD_FILE
/// (not in the URL); without the CA it refuses to start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giftxd_serves_from_a_tls_redis_as_an_acl_user() {
    use giftx_testkit::redis::{ACL_PASSWORD, ACL_USER};
    let redis = tokio::task::spawn_blocking(RedisServer::start_tls)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    std::fs::write(
        dir.path().join("redis.password"),
        format!("{ACL_PASSWORD}\n"),
    )
    .unwrap();
    let url = redis
        .tls_url()
        .replace("rediss://", &format!("rediss://{ACL_USER}@"));
    let env = [
        ("GIFTX_REDIS_URL", url.clone()),
        ("GIFTX_REDIS_CA_FILE", redis.ca_file().display().to_string()),
        (
            "GIFTX_REDIS_PASSWORD_FILE",
            dir.path().join("redis.password").display().to_string(),
        ),
    ];
    let port = free_port();
    let giftxd = start_giftxd_with(dir.path(), port, &env);
    let ch = channel(port).await;
    let codes = codes(ch.clone(), 4).await;
    assert!(redisplay(&ch, &codes, 8).await.is_empty());
    drop(giftxd);

    let out = Command::new(env!("CARGO_BIN_EXE_giftxd"))
        .env_clear()
        .env("GIFTX_LISTEN", "127.0.0.1:0")
        .env("GIFTX_REDIS_URL", &url)
        .env("GIFTX_HMAC_KEY_FILE", dir.path().join("hmac.key"))
        .env(
            "GIFTX_DELIVERABLE_KEYS_FILE",
            dir.path().join("deliverable.keys"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("GIFTX_REDIS_CA_FILE") || stdout.contains("GIFTX_REDIS_CA_FILE"),
        "{stderr}{stdout}"
    );
}
