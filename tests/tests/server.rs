//! giftxd as a server: health, reflection, service subsets, request
//! validation, start-up refusals and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use giftx_core::SystemClock;
use giftx_proto::v1 as pb;
use giftx_server::{Config, ServerError, ServiceKind};
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{assert_invalid_field, campaign_request, list_services, reason};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const SERVICES: [&str; 3] = [
    "giftx.v1.IssuanceService",
    "giftx.v1.ExchangeService",
    "giftx.v1.ExpiryService",
];

async fn health(app: &TestApp, service: &str) -> Result<ServingStatus, tonic::Status> {
    let r = app
        .health
        .clone()
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

async fn list_services_v1alpha(app: &TestApp) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = app
        .reflection_v1alpha
        .clone()
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn health_is_serving_for_the_server_and_each_service() {
    let app = TestApp::spawn_default().await;
    assert_eq!(health(&app, "").await.unwrap(), ServingStatus::Serving);
    for s in SERVICES {
        assert_eq!(
            health(&app, s).await.unwrap(),
            ServingStatus::Serving,
            "{s}"
        );
    }
    let unknown = health(&app, "giftx.v1.NoSuchService").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_three_services_in_v1_and_v1alpha_and_describes_them() {
    let app = TestApp::spawn_default().await;
    for listed in [list_services(&app).await, list_services_v1alpha(&app).await] {
        for s in SERVICES {
            assert!(listed.iter().any(|l| l == s), "{s} missing from {listed:?}");
        }
        assert!(
            listed.iter().any(|l| l == "grpc.health.v1.Health"),
            "{listed:?}"
        );
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let reqs = SERVICES.map(|s| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(s.to_owned())),
    });
    let mut stream = app
        .reflection
        .clone()
        .server_reflection_info(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    for s in SERVICES {
        let resp = stream.next().await.unwrap().unwrap();
        match resp.message_response {
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                assert!(!f.file_descriptor_proto.is_empty(), "{s}")
            }
            other => panic!("no descriptor for {s}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_service_subset_serves_only_those_services() {
    let app = TestApp::spawn(TestAppOptions::new().services(&[ServiceKind::Exchange])).await;
    assert_eq!(
        health(&app, "giftx.v1.ExchangeService").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(health(&app, "").await.unwrap(), ServingStatus::Serving);
    for s in ["giftx.v1.IssuanceService", "giftx.v1.ExpiryService"] {
        let e = health(&app, s).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{s}");
    }
    let e = app
        .issuance
        .clone()
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let e = app
        .expiry
        .clone()
        .sweep_expired(pb::SweepExpiredRequest {
            campaign: "campaigns/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let listed = list_services(&app).await;
    assert!(listed.iter().any(|l| l == "giftx.v1.ExchangeService"));
    assert!(
        !listed.iter().any(|l| l == "giftx.v1.IssuanceService"),
        "{listed:?}"
    );
}

#[tokio::test]
async fn malformed_requests_answer_invalid_argument_naming_the_field() {
    let app = TestApp::spawn_default().await;
    let now = app.clock.now_ts();
    let mut c = app.issuance.clone();

    // CreateCampaign: one broken field at a time.
    type Breaker = Box<dyn Fn(&mut pb::CreateCampaignRequest)>;
    let past = prost_types::Timestamp {
        seconds: now.to_seconds_nanos().0 - 1,
        nanos: 0,
    };
    let cases: Vec<(&str, Breaker)> = vec![
        ("campaign_id", Box::new(|r| r.campaign_id = String::new())),
        ("campaign_id", Box::new(|r| r.campaign_id = "Bad_Id".into())),
        ("campaign_id", Box::new(|r| r.campaign_id = "a".repeat(64))),
        ("request_id", Box::new(|r| r.request_id = "x".repeat(129))),
        (
            "request_id",
            Box::new(|r| r.request_id = "has space".into()),
        ),
        ("campaign", Box::new(|r| r.campaign = None)),
        (
            "campaign.display_name",
            Box::new(|r| r.campaign.as_mut().unwrap().display_name = "x".repeat(201)),
        ),
        (
            "campaign.owner",
            Box::new(|r| r.campaign.as_mut().unwrap().owner = "\u{0}".into()),
        ),
        (
            "campaign.face_value",
            Box::new(|r| r.campaign.as_mut().unwrap().face_value = None),
        ),
        (
            "campaign.face_value.currency_code",
            Box::new(|r| {
                r.campaign
                    .as_mut()
                    .unwrap()
                    .face_value
                    .as_mut()
                    .unwrap()
                    .currency_code = "XYZ".into()
            }),
        ),
        (
            "campaign.face_value.currency_code",
            Box::new(|r| {
                r.campaign
                    .as_mut()
                    .unwrap()
                    .face_value
                    .as_mut()
                    .unwrap()
                    .currency_code = "jpy".into()
            }),
        ),
        (
            "campaign.face_value.minor_units",
            Box::new(|r| {
                r.campaign
                    .as_mut()
                    .unwrap()
                    .face_value
                    .as_mut()
                    .unwrap()
                    .minor_units = 0
            }),
        ),
        (
            "campaign.face_value.minor_units",
            Box::new(|r| {
                r.campaign
                    .as_mut()
                    .unwrap()
                    .face_value
                    .as_mut()
                    .unwrap()
                    .minor_units = -500
            }),
        ),
        (
            "campaign.face_value.minor_units",
            Box::new(|r| {
                r.campaign
                    .as_mut()
                    .unwrap()
                    .face_value
                    .as_mut()
                    .unwrap()
                    .minor_units = i64::MAX
            }),
        ),
        (
            "campaign.expire_time",
            Box::new(|r| r.campaign.as_mut().unwrap().expire_time = None),
        ),
        (
            "campaign.expire_time",
            Box::new(move |r| r.campaign.as_mut().unwrap().expire_time = Some(past)),
        ),
        (
            "campaign.expire_time",
            Box::new(|r| {
                r.campaign.as_mut().unwrap().expire_time = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
        ),
        (
            "campaign.expire_time",
            Box::new(|r| {
                r.campaign
                    .as_mut()
                    .unwrap()
                    .expire_time
                    .as_mut()
                    .unwrap()
                    .nanos = -1
            }),
        ),
        (
            "campaign.options",
            Box::new(|r| r.campaign.as_mut().unwrap().options.clear()),
        ),
        (
            "campaign.options",
            Box::new(|r| {
                let c = r.campaign.as_mut().unwrap();
                c.options = (0..33)
                    .map(|i| pb::RedemptionOption {
                        option_id: format!("o{i}"),
                        display_name: String::new(),
                        provider: "donation".into(),
                        requires_shipping_address: false,
                    })
                    .collect();
            }),
        ),
        (
            "campaign.options[0].option_id",
            Box::new(|r| r.campaign.as_mut().unwrap().options[0].option_id = String::new()),
        ),
        (
            "campaign.options[1].option_id",
            Box::new(|r| r.campaign.as_mut().unwrap().options[1].option_id = "book-card".into()),
        ),
        (
            "campaign.options[0].provider",
            Box::new(|r| {
                r.campaign.as_mut().unwrap().options[0].provider = "not-configured".into()
            }),
        ),
        (
            "campaign.options[0].provider",
            Box::new(|r| r.campaign.as_mut().unwrap().options[0].provider = "BAD PROVIDER".into()),
        ),
        (
            "campaign.options[1].display_name",
            Box::new(|r| r.campaign.as_mut().unwrap().options[1].display_name = "y".repeat(201)),
        ),
    ];
    for (field, breaker) in cases {
        let mut req = campaign_request("valid-id", now);
        breaker(&mut req);
        let e = c.create_campaign(req).await.unwrap_err();
        assert_invalid_field(&e, field);
    }

    // Resource names and paging.
    for name in [
        "",
        "campaigns/",
        "campaigns/UPPER",
        "nope/x",
        "campaigns/a/b",
        &"a".repeat(10_000),
    ] {
        let e = c
            .get_campaign(pb::GetCampaignRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_invalid_field(&e, "name");
        let e = c
            .get_campaign_stats(pb::GetCampaignStatsRequest {
                campaign: name.into(),
            })
            .await
            .unwrap_err();
        assert_invalid_field(&e, "campaign");
    }
    for name in [
        "",
        "campaigns/a",
        "campaigns/a/batches/",
        "campaigns/a/batches/B!",
        "campaigns/A/batches/b",
    ] {
        let e = c
            .get_batch(pb::GetBatchRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_invalid_field(&e, "name");
        let e = c
            .void_batch(pb::VoidBatchRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_invalid_field(&e, "name");
    }
    let e = c
        .list_campaigns(pb::ListCampaignsRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&e, "page_size");
    for token in ["garbage", "!!!!", &"A".repeat(5000)] {
        let e = c
            .list_campaigns(pb::ListCampaignsRequest {
                page_size: 0,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_invalid_field(&e, "page_token");
    }

    // IssueCodes: validated before anything is stored.
    let issue = |campaign: &str, batch: &str, count: i64| pb::IssueCodesRequest {
        campaign: campaign.into(),
        batch_id: batch.into(),
        count,
    };
    for (req, field) in [
        (issue("campaigns/x", "b1", 0), "count"),
        (issue("campaigns/x", "b1", -5), "count"),
        (issue("campaigns/x", "b1", 10_000_001), "count"),
        (issue("campaigns/x", "b1", i64::MIN), "count"),
        (issue("campaigns/x", "", 1), "batch_id"),
        (issue("campaigns/x", "B_1", 1), "batch_id"),
        (issue("x", "b1", 1), "campaign"),
        (issue("", "b1", 1), "campaign"),
    ] {
        let e = c.issue_codes(req).await.unwrap_err();
        assert_invalid_field(&e, field);
    }
}

trait NowTs {
    fn now_ts(&self) -> giftx_core::Timestamp;
}

impl NowTs for giftx_core::ManualClock {
    fn now_ts(&self) -> giftx_core::Timestamp {
        giftx_core::Clock::now(self)
    }
}

#[tokio::test]
async fn graceful_shutdown_goes_not_serving_first_and_lets_in_flight_calls_finish() {
    let mut app = TestApp::spawn(TestAppOptions::new().chunk_size(1_000)).await;
    let now = app.clock.now_ts();
    let mut issuance = app.issuance.clone();
    issuance
        .create_campaign(campaign_request("shutdown", now))
        .await
        .unwrap();

    // A health watcher on its own connection sees NOT_SERVING.
    let mut watch = app
        .health
        .clone()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // An in-flight stream, read slowly.
    let mut stream = issuance
        .issue_codes(pb::IssueCodesRequest {
            campaign: "campaigns/shutdown".into(),
            batch_id: "in-flight".into(),
            count: 20_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while received < 100 {
        stream.next().await.unwrap().unwrap();
        received += 1;
    }

    app.trigger_shutdown();
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    while let Some(item) = stream.next().await {
        item.unwrap();
        received += 1;
    }
    assert_eq!(received, 20_000);
    tokio::time::timeout(Duration::from_secs(20), app.wait_stopped())
        .await
        .expect("server stops after in-flight calls")
        .expect("clean stop");
    let batch = app
        .state
        .ledger
        .get_batch(
            &giftx_core::model::CampaignId::parse("c", "shutdown").unwrap(),
            &giftx_core::model::BatchId::parse("b", "in-flight").unwrap(),
            app.clock.now_ts(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.state, giftx_core::model::BatchState::Complete);
    assert_eq!(batch.issued, 20_000);
    // The listener is closed.
    assert!(
        tokio::net::TcpStream::connect(app.addr).await.is_err(),
        "listener still open after shutdown"
    );
}

#[tokio::test]
async fn redis_without_an_hmac_key_refuses_to_start_with_a_clear_message() {
    let config = Config {
        redis_url: Some(giftx_server::config::SecretString::new(
            "redis://127.0.0.1:1/",
        )),
        ..Config::default()
    };
    let e = giftx_server::build_state(config, Arc::new(SystemClock))
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::Key(_)), "{e:?}");
    assert!(e.to_string().contains("GIFTX_HMAC_KEY_FILE"), "{e}");
}

#[tokio::test]
async fn a_short_hmac_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("giftx-short-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k");
    std::fs::write(&key, b"too short").unwrap();
    let config = Config {
        hmac_key_file: Some(key),
        ..Config::default()
    };
    let e = giftx_server::build_state(config, Arc::new(SystemClock))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least 32"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_embedded_default_seeds_the_demo_campaigns() {
    let app = TestApp::spawn(TestAppOptions::new().seed_demo(true)).await;
    let mut c = app.issuance.clone();
    let demo = c
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/demo-2014".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(demo.display_name, "Apology gift 2014");
    assert_eq!(demo.face_value.unwrap().minor_units, 500);
    let ids: Vec<_> = demo.options.iter().map(|o| o.option_id.as_str()).collect();
    assert_eq!(ids, ["select-gift", "book-card", "donation"]);
    let select = c
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/demo-select".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = select
        .options
        .iter()
        .map(|o| o.option_id.as_str())
        .collect();
    assert_eq!(ids, ["emoney-a", "emoney-b", "giftcode-c"]);
}

#[tokio::test]
async fn unimplemented_rpcs_say_so_clearly_and_errors_carry_error_info() {
    let app = TestApp::spawn_default().await;
    let e = app
        .issuance
        .clone()
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(reason(&e), "CAMPAIGN_NOT_FOUND");
}

/// Asks reflection for the files that define `symbols`, and for every file
/// they import, as a reflective client (grpcurl) does before it decodes.
async fn reflected_pool(app: &TestApp, symbols: &[&str]) -> prost_reflect::DescriptorPool {
    use prost::Message as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut files: std::collections::BTreeMap<String, prost_types::FileDescriptorProto> =
        std::collections::BTreeMap::new();
    let mut asks: Vec<MessageRequest> = symbols
        .iter()
        .map(|s| MessageRequest::FileContainingSymbol((*s).to_owned()))
        .collect();
    while !asks.is_empty() {
        let reqs: Vec<ServerReflectionRequest> = asks
            .drain(..)
            .map(|m| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            })
            .collect();
        let n = reqs.len();
        let mut stream = app
            .reflection
            .clone()
            .server_reflection_info(futures::stream::iter(reqs))
            .await
            .expect("reflection")
            .into_inner();
        for _ in 0..n {
            let resp = stream.next().await.expect("an answer").expect("reflection");
            match resp.message_response {
                Some(MessageResponse::FileDescriptorResponse(f)) => {
                    for raw in f.file_descriptor_proto {
                        let fd = prost_types::FileDescriptorProto::decode(raw.as_slice())
                            .expect("a FileDescriptorProto");
                        files.insert(fd.name().to_owned(), fd);
                    }
                }
                other => panic!("reflection could not describe it: {other:?}"),
            }
        }
        let missing: std::collections::BTreeSet<String> = files
            .values()
            .flat_map(|f| f.dependency.iter().cloned())
            .filter(|d| !files.contains_key(d))
            .collect();
        asks.extend(missing.into_iter().map(MessageRequest::FileByFilename));
    }
    prost_reflect::DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet {
        file: files.into_values().collect(),
    })
    .expect("the reflected files form a valid descriptor pool")
}

#[tokio::test]
async fn a_reflective_client_decodes_the_error_info_of_a_real_error() {
    use tonic_types::StatusExt as _;
    let app = TestApp::spawn_default().await;
    // A real error: a campaign that does not exist.
    let err = app
        .issuance
        .clone()
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/no-such-campaign".into(),
        })
        .await
        .expect_err("no such campaign");
    assert_eq!(err.code(), Code::NotFound);
    let expected = err
        .get_details_error_info()
        .expect("giftx's errors carry an ErrorInfo");
    assert!(!err.details().is_empty(), "grpc-status-details-bin is set");

    // Decode grpc-status-details-bin knowing only what reflection says.
    let pool = reflected_pool(&app, &["google.rpc.Status", "google.rpc.ErrorInfo"]).await;
    let status_desc = pool
        .get_message_by_name("google.rpc.Status")
        .expect("reflection describes google.rpc.Status");
    let status = prost_reflect::DynamicMessage::decode(status_desc, err.details())
        .expect("the details decode as google.rpc.Status");
    assert_eq!(
        status.get_field_by_name("code").and_then(|v| v.as_i32()),
        Some(Code::NotFound as i32)
    );
    let details = status.get_field_by_name("details").expect("details");
    let details = details.as_list().expect("a repeated field");
    let mut decoded = 0;
    for any in details {
        let any = any.as_message().expect("an Any");
        let type_url = any
            .get_field_by_name("type_url")
            .and_then(|v| v.as_str().map(str::to_owned))
            .expect("type_url");
        let value = any
            .get_field_by_name("value")
            .and_then(|v| v.as_bytes().cloned())
            .expect("value");
        let type_name = type_url.rsplit('/').next().expect("a type name");
        let desc = pool
            .get_message_by_name(type_name)
            .unwrap_or_else(|| panic!("reflection does not describe {type_url}"));
        let msg = prost_reflect::DynamicMessage::decode(desc, value.as_ref())
            .unwrap_or_else(|e| panic!("{type_url} does not decode: {e}"));
        if type_name == "google.rpc.ErrorInfo" {
            let field = |n: &str| {
                msg.get_field_by_name(n)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            assert_eq!(field("reason"), expected.reason);
            assert_eq!(field("domain"), expected.domain);
            assert!(!field("reason").is_empty());
            decoded += 1;
        }
    }
    assert_eq!(decoded, 1, "one ErrorInfo among {} details", details.len());
    // BadRequest and RetryInfo are described too.
    for t in ["google.rpc.BadRequest", "google.rpc.RetryInfo"] {
        let pool = reflected_pool(&app, &[t]).await;
        assert!(pool.get_message_by_name(t).is_some(), "{t}");
    }
}
