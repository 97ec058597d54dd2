//! HMAC key rotation against real giftxd processes on a real Redis: a
//! giftxd started with a key ring whose current key is new keeps serving
//! the campaigns, API keys and page tokens made under the old key, hashes
//! new campaigns and API keys with the new one and says so; a giftxd that
//! lacks a campaign's key answers UNAVAILABLE instead of "no such code"
//! (and never counts a wrong try); a malformed ring, or a key id that now
//! names other key material than the ledger saw, stops giftxd at start.

use std::path::Path;

use giftx_proto::v1 as pb;
use giftx_proto::v1::access_service_client::AccessServiceClient;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::RedisServer;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

mod support;
use support::{channel, free_port, giftxd_dir, start_giftxd_with};

const CONFIG: &str = r#"
[expiry]
workers = false

[providers.sim]
kind = "simulated"
"#;

const ADMIN: &str = "rotation-admin-0123456789abcdef0123456789abcdef";

fn with<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

async fn create_key(ch: &Channel, role: pb::Role) -> String {
    AccessServiceClient::new(ch.clone())
        .create_api_key(with(
            pb::CreateApiKeyRequest {
                api_key: Some(pb::ApiKey {
                    tenant: "acme".into(),
                    role: role as i32,
                    ..Default::default()
                }),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .token
}

fn campaign(id: &str) -> pb::CreateCampaignRequest {
    pb::CreateCampaignRequest {
        campaign_id: id.into(),
        campaign: Some(pb::Campaign {
            display_name: id.into(),
            face_value: Some(pb::Money {
                currency_code: "JPY".into(),
                minor_units: 500,
            }),
            expire_time: Some(prost_types::Timestamp {
                // Whole days from a fixed origin, so a retry later in the
                // test asks for exactly the same deadline.
                seconds: (now_secs() / 86_400 + 2) * 86_400,
                nanos: 0,
            }),
            options: vec![pb::RedemptionOption {
                option_id: "gift".into(),
                display_name: "gift".into(),
                provider: "sim".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn create(ch: &Channel, op: &str, id: &str) -> Result<pb::Campaign, Status> {
    IssuanceServiceClient::new(ch.clone())
        .create_campaign(with(campaign(id), op))
        .await
        .map(tonic::Response::into_inner)
}

async fn issue(ch: &Channel, op: &str, id: &str, n: i64) -> Result<Vec<pb::IssuedCode>, Status> {
    use futures::StreamExt as _;
    let stream = IssuanceServiceClient::new(ch.clone())
        .issue_codes(with(
            pb::IssueCodesRequest {
                campaign: format!("campaigns/{id}"),
                batch_id: "b1".into(),
                count: n,
            },
            op,
        ))
        .await?
        .into_inner();
    stream.collect::<Vec<_>>().await.into_iter().collect()
}

async fn verify(
    ch: &Channel,
    portal: &str,
    code: &pb::IssuedCode,
    login_key: &str,
) -> Result<pb::CodeStatus, Status> {
    ExchangeServiceClient::new(ch.clone())
        .verify_code(with(
            pb::VerifyCodeRequest {
                code: code.code.clone(),
                login_key: login_key.into(),
            },
            portal,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ring_keeps_what_the_old_key_made_and_hashes_new_things_with_the_new_key() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = giftxd_dir(CONFIG, Some(ADMIN));
    let d = dir.path();
    // The two-step rollout: first every giftxd learns k2 while the single
    // key file's key (a bare `default` line) stays current, then k2 moves
    // first.
    let k2 = "09".repeat(32);
    std::fs::write(d.join("step1.keys"), format!("default\nk2 {k2}\n")).unwrap();
    std::fs::write(d.join("step2.keys"), format!("# current first\nk2 {k2}\n")).unwrap();
    let env = vec![
        ("GIFTX_REDIS_URL", redis.url()),
        ("GIFTX_ADMIN_TOKEN_FILE", path(&d.join("admin.token"))),
        ("GIFTX_ADMIN_TENANT", "ops".to_owned()),
        ("GIFTX_AUTH_CACHE_MS", "0".to_owned()),
        ("GIFTX_LIMIT_PORTAL_RPS", "100000".to_owned()),
        ("GIFTX_LIMIT_OPERATOR_RPS", "100000".to_owned()),
    ];
    // Before the rotation: the single key file only.
    let (p1, p2) = (free_port(), free_port());
    let _old = start_giftxd_with(d, p1, &env);
    let old = channel(p1).await;
    let op = create_key(&old, pb::Role::Operator).await;
    let portal = create_key(&old, pb::Role::Portal).await;
    let before = create(&old, &op, "before").await.unwrap();
    assert_eq!(before.hmac_key_id, "default");
    create(&old, &op, "before-2").await.unwrap();
    let codes = issue(&old, &op, "before", 2).await.unwrap();
    let page = IssuanceServiceClient::new(old.clone())
        .list_campaigns(with(
            pb::ListCampaignsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());

    // Step 1: k2 known, not used.
    let p3 = free_port();
    let mut step1 = env.clone();
    step1.push(("GIFTX_HMAC_KEYRING_FILE", path(&d.join("step1.keys"))));
    let _mid = start_giftxd_with(d, p3, &step1);
    let mid = channel(p3).await;
    assert_eq!(
        create(&mid, &op, "mid").await.unwrap().hmac_key_id,
        "default"
    );

    // Step 2: k2 current, the single key file's key kept (last) as default.
    let mut rotated = env.clone();
    rotated.push(("GIFTX_HMAC_KEYRING_FILE", path(&d.join("step2.keys"))));
    let _new = start_giftxd_with(d, p2, &rotated);
    let new = channel(p2).await;

    // What the old key made still works: API keys, codes, page tokens, and
    // a create retried across the rotation.
    let seen = verify(&new, &portal, &codes[0], &codes[0].login_key)
        .await
        .unwrap();
    assert_eq!(seen.state(), pb::CodeState::Active);
    let done = ExchangeServiceClient::new(new.clone())
        .exchange(with(
            pb::ExchangeRequest {
                code: codes[0].code.clone(),
                login_key: codes[0].login_key.clone(),
                option_id: "gift".into(),
                request_id: "after-rotation".into(),
                ..Default::default()
            },
            &portal,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state(), pb::ExchangeState::Succeeded);
    let rest = IssuanceServiceClient::new(new.clone())
        .list_campaigns(with(
            pb::ListCampaignsRequest {
                page_size: 1,
                page_token: page.next_page_token.clone(),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.campaigns.len(), 1);
    let again = create(&new, &op, "before").await.unwrap();
    assert_eq!(again.hmac_key_id, "default");
    assert_eq!(again.code_series, before.code_series);

    // New things are hashed with k2.
    let after = create(&new, &op, "after").await.unwrap();
    assert_eq!(after.hmac_key_id, "k2");
    let fresh = issue(&new, &op, "after", 2).await.unwrap();
    verify(&new, &portal, &fresh[0], &fresh[0].login_key)
        .await
        .unwrap();
    let portal2 = create_key(&new, pb::Role::Portal).await;
    verify(&new, &portal2, &fresh[0], &fresh[0].login_key)
        .await
        .unwrap();
    // A step-1 giftxd serves what a step-2 one made.
    verify(&mid, &portal2, &fresh[0], &fresh[0].login_key)
        .await
        .unwrap();

    // A giftxd without k2 refuses retryably, never answers "no such code"
    // and never counts a wrong try: after more wrong keys than the lockout
    // threshold there, the code is not locked.
    for _ in 0..12 {
        let e = verify(&old, &portal, &fresh[1], &fresh[0].login_key)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let seen = verify(&new, &portal, &fresh[1], &fresh[1].login_key)
        .await
        .unwrap();
    assert_eq!(seen.state(), pb::CodeState::Active);
    let e = issue(&old, &op, "after", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = verify(&old, &portal2, &codes[1], &codes[1].login_key)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The old key's API keys go on working on the old giftxd.
    verify(&old, &portal, &codes[1], &codes[1].login_key)
        .await
        .unwrap();

    // A key id that now names other material stops giftxd at start: the
    // single key file replaced, or k2 regenerated under the same id.
    std::fs::write(d.join("other.key"), [8u8; 32]).unwrap();
    std::fs::write(d.join("other.keys"), format!("k2 {}\n", "0a".repeat(32))).unwrap();
    for (file, ring, bad) in [
        ("other.key", None, "default"),
        ("hmac.key", Some("other.keys"), "k2"),
    ] {
        let mut extra = env.clone();
        extra.push(("GIFTX_HMAC_KEY_FILE", path(&d.join(file))));
        if let Some(r) = ring {
            extra.push(("GIFTX_HMAC_KEYRING_FILE", path(&d.join(r))));
        }
        let stderr = exits_with_error(d, &extra);
        assert!(
            stderr.contains("other key material") && stderr.contains(bad),
            "{stderr}"
        );
    }
}

/// Runs giftxd with `env` (and `dir`'s config and deliverable keys), which
/// must exit with an error within 30 s; returns its stderr.
fn exits_with_error(dir: &Path, env: &[(&str, String)]) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_giftxd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GIFTX_") || k == "RUST_LOG" || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    let mut child = c
        .arg("--config")
        .arg(dir.join("giftx.toml"))
        .env("GIFTX_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("GIFTX_DELIVERABLE_KEYS_FILE", dir.join("deliverable.keys"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("giftxd did not refuse to start");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn a_malformed_or_short_key_ring_stops_giftxd_at_start_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("k1 nothex\n", "line 1"),
        (
            &*format!("k1 {}\nk1 {}\n", "01".repeat(32), "02".repeat(32)),
            "twice",
        ),
        (&*format!("k1 {}\n", "01".repeat(31)), "at least 32"),
        ("# only a comment\n", "no key"),
        ("default\n", "GIFTX_HMAC_KEY_FILE is not set"),
        ("k9\n", "no key material"),
    ];
    for (text, want) in cases {
        std::fs::write(dir.path().join("ring.keys"), text).unwrap();
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_giftxd"));
        for (k, _) in std::env::vars() {
            if k.starts_with("GIFTX_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        let out = c
            .env("GIFTX_LISTEN", "127.0.0.1:0")
            .env("GIFTX_HMAC_KEYRING_FILE", dir.path().join("ring.keys"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("GIFTX_HMAC_KEYRING_FILE") && stderr.contains(want),
            "{text:?}: {stderr}"
        );
    }
}
