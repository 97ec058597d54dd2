//! Trust (TLS, API keys, roles, tenants, limits, audit) against real
//! giftxd processes over TLS on a real Redis.
//!
//! - every RPC × {no token, revoked, expired, portal of A, operator of A,
//!   operator of B, admin} gets the documented answer, and nothing of
//!   tenant A reaches tenant B;
//! - the audit trail holds every operator and admin call;
//! - rate limits and end-user velocity trip at their numbers, recover, and
//!   hold in total across two giftxd on one Redis;
//! - mTLS refuses a client without a certificate; certificates reload;
//!   a client certificate naming an API key is that key's principal;
//! - a non-loopback address without TLS and authentication is refused
//!   unless GIFTX_INSECURE=true.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use giftx_proto::v1 as pb;
use giftx_proto::v1::access_service_client::AccessServiceClient;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_proto::v1::operations_service_client::OperationsServiceClient;
use giftx_testkit::{RedisServer, TestPki};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

mod support;
use support::{Giftxd, free_port, giftxd_dir, start_giftxd_with, tls_channel};

const CONFIG: &str = r#"
[expiry]
workers = false

[providers.sim]
kind = "simulated"

[providers.acme-stock]
kind = "stock"
tenant = "acme"
"#;

/// The bootstrap admin's token (GIFTX_ADMIN_TOKEN_FILE).
const ADMIN: &str = "bootstrap-admin-0123456789abcdef0123456789abcdef";

struct World {
    redis: RedisServer,
    dir: tempfile::TempDir,
    pki: TestPki,
    giftxd: Vec<Giftxd>,
    ports: Vec<u16>,
}

impl World {
    fn env(&self, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let d = self.dir.path();
        let mut env: Vec<(&'static str, String)> = vec![
            ("GIFTX_REDIS_URL", self.redis.url()),
            ("GIFTX_TLS_CERT_FILE", path(&self.pki.server_cert())),
            ("GIFTX_TLS_KEY_FILE", path(&self.pki.server_key())),
            ("GIFTX_ADMIN_TOKEN_FILE", path(&d.join("admin.token"))),
            ("GIFTX_ADMIN_TENANT", "ops".into()),
            ("GIFTX_AUTH_CACHE_MS", "0".into()),
        ];
        for (k, v) in extra {
            env.retain(|(e, _)| e != k);
            // Leaked: a handful of short strings per test.
            env.push((Box::leak((*k).to_owned().into_boxed_str()), v.clone()));
        }
        env
    }

    fn start(&mut self, extra: &[(&str, String)]) -> u16 {
        let port = free_port();
        let env = self.env(extra);
        self.giftxd
            .push(start_giftxd_with(self.dir.path(), port, &env));
        self.ports.push(port);
        port
    }

    async fn channel(&self, i: usize) -> Channel {
        tls_channel(self.ports[i], &self.pki.ca(), None)
            .await
            .expect("TLS channel")
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

async fn world(extra: &[(&str, String)]) -> World {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = giftxd_dir(CONFIG, Some(ADMIN));
    let d = dir.path();
    let pki_dir = d.join("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let pki = TestPki::new(&pki_dir, "giftx trust test CA");
    let mut w = World {
        redis,
        dir,
        pki,
        giftxd: Vec::new(),
        ports: Vec::new(),
    };
    w.start(extra);
    w
}

fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn reason(s: &Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn create_key(
    ch: &Channel,
    tenant: &str,
    role: pb::Role,
    expire_in: Option<i64>,
) -> (String, String) {
    let r = AccessServiceClient::new(ch.clone())
        .create_api_key(with(
            pb::CreateApiKeyRequest {
                api_key: Some(pb::ApiKey {
                    tenant: tenant.into(),
                    role: role as i32,
                    expire_time: expire_in.map(|s| prost_types::Timestamp {
                        seconds: now_secs() + s,
                        nanos: 0,
                    }),
                    description: format!("{tenant} {role:?}"),
                    ..Default::default()
                }),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    let key = r.api_key.unwrap();
    assert!(r.token.starts_with("gx1."), "{}", r.token);
    (key.name, r.token)
}

fn campaign(id: &str, options: &[(&str, &str)]) -> pb::CreateCampaignRequest {
    pb::CreateCampaignRequest {
        campaign_id: id.into(),
        campaign: Some(pb::Campaign {
            display_name: id.into(),
            face_value: Some(pb::Money {
                currency_code: "JPY".into(),
                minor_units: 500,
            }),
            expire_time: Some(prost_types::Timestamp {
                seconds: now_secs() + 86_400,
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
    }
}

async fn issue(
    ch: &Channel,
    token: &str,
    campaign: &str,
    batch: &str,
    n: i64,
) -> Result<Vec<pb::IssuedCode>, Status> {
    let stream = IssuanceServiceClient::new(ch.clone())
        .issue_codes(with(
            pb::IssueCodesRequest {
                campaign: format!("campaigns/{campaign}"),
                batch_id: batch.into(),
                count: n,
            },
            Some(token),
        ))
        .await?
        .into_inner();
    stream.collect::<Vec<_>>().await.into_iter().collect()
}

/// Every RPC giftxd serves, outside health and reflection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    CreateCampaign,
    GetCampaign,
    ListCampaigns,
    IssueCodes,
    GetBatch,
    VoidBatch,
    GetCampaignStats,
    VerifyCode,
    Exchange,
    GetExchange,
    ExtendCampaign,
    SweepExpired,
    ListPendingExchanges,
    ReconcileExchange,
    ImportStock,
    GetStockStatus,
    ListShipments,
    MarkShipped,
    ListPreferences,
    CreateApiKey,
    ListApiKeys,
    RevokeApiKey,
    ListAuditEvents,
}

const RPCS: [Rpc; 23] = [
    Rpc::CreateCampaign,
    Rpc::GetCampaign,
    Rpc::ListCampaigns,
    Rpc::IssueCodes,
    Rpc::GetBatch,
    Rpc::VoidBatch,
    Rpc::GetCampaignStats,
    Rpc::VerifyCode,
    Rpc::Exchange,
    Rpc::GetExchange,
    Rpc::ExtendCampaign,
    Rpc::SweepExpired,
    Rpc::ListPendingExchanges,
    Rpc::ReconcileExchange,
    Rpc::ImportStock,
    Rpc::GetStockStatus,
    Rpc::ListShipments,
    Rpc::MarkShipped,
    Rpc::ListPreferences,
    Rpc::CreateApiKey,
    Rpc::ListApiKeys,
    Rpc::RevokeApiKey,
    Rpc::ListAuditEvents,
];

impl Rpc {
    fn method(self) -> String {
        let service = match self {
            Rpc::CreateCampaign
            | Rpc::GetCampaign
            | Rpc::ListCampaigns
            | Rpc::IssueCodes
            | Rpc::GetBatch
            | Rpc::VoidBatch
            | Rpc::GetCampaignStats => "IssuanceService",
            Rpc::VerifyCode | Rpc::Exchange | Rpc::GetExchange => "ExchangeService",
            Rpc::ExtendCampaign
            | Rpc::SweepExpired
            | Rpc::ListPendingExchanges
            | Rpc::ReconcileExchange => "ExpiryService",
            Rpc::ImportStock
            | Rpc::GetStockStatus
            | Rpc::ListShipments
            | Rpc::MarkShipped
            | Rpc::ListPreferences => "OperationsService",
            _ => "AccessService",
        };
        format!("/giftx.v1.{service}/{self:?}")
    }

    fn portal(self) -> bool {
        matches!(self, Rpc::VerifyCode | Rpc::Exchange | Rpc::GetExchange)
    }

    fn admin_only(self) -> bool {
        matches!(
            self,
            Rpc::CreateApiKey | Rpc::ListApiKeys | Rpc::RevokeApiKey
        )
    }
}

/// What tenant A owns, which every call aims at.
struct Target {
    code: pb::IssuedCode,
    exchange: String,
    /// A key each allowed RevokeApiKey call may revoke.
    spare_keys: std::sync::Mutex<Vec<String>>,
}

/// What a call returned that matters to the matrix: its status, and for
/// the listings whether any of tenant A's resources came back.
async fn call(
    ch: &Channel,
    rpc: Rpc,
    token: Option<&str>,
    n: usize,
    t: &Target,
) -> Result<bool, Status> {
    let a_campaign = "campaigns/acme-camp".to_owned();
    let batch = format!("{a_campaign}/batches/b1");
    let issuance = || IssuanceServiceClient::new(ch.clone());
    let expiry = || ExpiryServiceClient::new(ch.clone());
    let ops = || OperationsServiceClient::new(ch.clone());
    let access = || AccessServiceClient::new(ch.clone());
    let exchange = || ExchangeServiceClient::new(ch.clone());
    let none = Ok(false);
    match rpc {
        Rpc::CreateCampaign => {
            issuance()
                .create_campaign(with(
                    campaign(&format!("matrix-{n}"), &[("gift", "sim")]),
                    token,
                ))
                .await?;
            none
        }
        Rpc::GetCampaign => {
            issuance()
                .get_campaign(with(pb::GetCampaignRequest { name: a_campaign }, token))
                .await?;
            Ok(true)
        }
        Rpc::ListCampaigns => {
            let r = issuance()
                .list_campaigns(with(pb::ListCampaignsRequest::default(), token))
                .await?
                .into_inner();
            Ok(r.campaigns
                .iter()
                .any(|c| c.name == a_campaign || c.tenant == "acme"))
        }
        Rpc::IssueCodes => {
            let stream = issuance()
                .issue_codes(with(
                    pb::IssueCodesRequest {
                        campaign: a_campaign,
                        batch_id: format!("m{n}"),
                        count: 3,
                    },
                    token,
                ))
                .await?
                .into_inner();
            let got: Result<Vec<_>, _> = stream.collect::<Vec<_>>().await.into_iter().collect();
            Ok(!got?.is_empty())
        }
        Rpc::GetBatch => {
            issuance()
                .get_batch(with(pb::GetBatchRequest { name: batch }, token))
                .await?;
            Ok(true)
        }
        Rpc::VoidBatch => {
            // A batch of its own per call: b1 holds the codes in use.
            issuance()
                .void_batch(with(
                    pb::VoidBatchRequest {
                        name: format!("{a_campaign}/batches/spare"),
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::GetCampaignStats => {
            issuance()
                .get_campaign_stats(with(
                    pb::GetCampaignStatsRequest {
                        campaign: a_campaign,
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::VerifyCode => {
            exchange()
                .verify_code(with(
                    pb::VerifyCodeRequest {
                        code: t.code.code.clone(),
                        login_key: t.code.login_key.clone(),
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::Exchange => {
            exchange()
                .exchange(with(
                    pb::ExchangeRequest {
                        code: t.code.code.clone(),
                        login_key: t.code.login_key.clone(),
                        option_id: "gift".into(),
                        request_id: "first".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::GetExchange => {
            exchange()
                .get_exchange(with(
                    pb::GetExchangeRequest {
                        code: t.code.code.clone(),
                        login_key: t.code.login_key.clone(),
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::ExtendCampaign => {
            expiry()
                .extend_campaign(with(
                    pb::ExtendCampaignRequest {
                        campaign: a_campaign,
                        expire_time: Some(prost_types::Timestamp {
                            seconds: now_secs() + 2 * 86_400 + n as i64,
                            nanos: 0,
                        }),
                        force: false,
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::SweepExpired => {
            expiry()
                .sweep_expired(with(
                    pb::SweepExpiredRequest {
                        campaign: a_campaign,
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::ListPendingExchanges => {
            let r = expiry()
                .list_pending_exchanges(with(pb::ListPendingExchangesRequest::default(), token))
                .await?
                .into_inner();
            Ok(r.exchanges.iter().any(|x| x.name.contains("acme")))
        }
        Rpc::ReconcileExchange => {
            expiry()
                .reconcile_exchange(with(
                    pb::ReconcileExchangeRequest {
                        name: t.exchange.clone(),
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::ImportStock => {
            let msg = pb::ImportStockRequest {
                provider: "acme-stock".into(),
                items: vec![pb::StockItem {
                    code: format!("EDY-{n}"),
                    pin: "1234".into(),
                    expire_time: None,
                }],
            };
            let mut r = Request::new(tokio_stream::iter(vec![msg]));
            if let Some(tok) = token {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {tok}").parse().unwrap());
            }
            ops().import_stock(r).await?;
            Ok(true)
        }
        Rpc::GetStockStatus => {
            ops()
                .get_stock_status(with(
                    pb::GetStockStatusRequest {
                        provider: "acme-stock".into(),
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::ListShipments => {
            let r = ops()
                .list_shipments(with(
                    pb::ListShipmentsRequest {
                        provider: "book-card".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await;
            // No shipment provider in this configuration: NOT_FOUND for
            // everyone allowed to ask.
            match r {
                Err(s) if s.code() == Code::NotFound && reason(&s) == "PROVIDER_NOT_FOUND" => none,
                Err(s) => Err(s),
                Ok(r) => Ok(!r.into_inner().shipments.is_empty()),
            }
        }
        Rpc::MarkShipped => {
            let r = ops()
                .mark_shipped(with(
                    pb::MarkShippedRequest {
                        provider: "book-card".into(),
                        references: vec!["nope".into()],
                        tracking: String::new(),
                    },
                    token,
                ))
                .await;
            match r {
                Err(s) if s.code() == Code::NotFound && reason(&s) == "PROVIDER_NOT_FOUND" => none,
                Err(s) => Err(s),
                Ok(_) => none,
            }
        }
        Rpc::ListPreferences => {
            ops()
                .list_preferences(with(
                    pb::ListPreferencesRequest {
                        campaign: a_campaign,
                        ..Default::default()
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::CreateApiKey => {
            access()
                .create_api_key(with(
                    pb::CreateApiKeyRequest {
                        api_key: Some(pb::ApiKey {
                            tenant: "acme".into(),
                            role: pb::Role::Portal as i32,
                            ..Default::default()
                        }),
                    },
                    token,
                ))
                .await?;
            Ok(true)
        }
        Rpc::ListApiKeys => {
            access()
                .list_api_keys(with(pb::ListApiKeysRequest::default(), token))
                .await?;
            Ok(true)
        }
        Rpc::RevokeApiKey => {
            let name = t.spare_keys.lock().unwrap().last().cloned().unwrap();
            access()
                .revoke_api_key(with(pb::RevokeApiKeyRequest { name: name.clone() }, token))
                .await?;
            t.spare_keys.lock().unwrap().retain(|k| k != &name);
            Ok(true)
        }
        Rpc::ListAuditEvents => {
            let r = access()
                .list_audit_events(with(pb::ListAuditEventsRequest::default(), token))
                .await?
                .into_inner();
            Ok(r.events.iter().any(|e| e.tenant == "acme"))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Nobody,
    Revoked,
    Expired,
    PortalA,
    OperatorA,
    OperatorB,
    Admin,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_principal_as_documented_and_tenants_never_meet() {
    let w = world(&[
        ("GIFTX_LIMIT_PORTAL_RPS", "100000".into()),
        ("GIFTX_LIMIT_OPERATOR_RPS", "100000".into()),
        ("GIFTX_LIMIT_OPERATOR_BURST", "100000".into()),
    ])
    .await;
    let ch = w.channel(0).await;

    let (_, portal_a) = create_key(&ch, "acme", pb::Role::Portal, None).await;
    let (_, op_a) = create_key(&ch, "acme", pb::Role::Operator, None).await;
    let (_, op_b) = create_key(&ch, "bravo", pb::Role::Operator, None).await;
    let (_, portal_b) = create_key(&ch, "bravo", pb::Role::Portal, None).await;
    let (revoked_name, revoked) = create_key(&ch, "acme", pb::Role::Admin, None).await;
    let (_, expired) = create_key(&ch, "acme", pb::Role::Admin, Some(2)).await;
    let mut spare = Vec::new();
    for _ in 0..3 {
        spare.push(create_key(&ch, "acme", pb::Role::Portal, None).await.0);
    }
    AccessServiceClient::new(ch.clone())
        .revoke_api_key(with(
            pb::RevokeApiKeyRequest { name: revoked_name },
            Some(ADMIN),
        ))
        .await
        .unwrap();

    // Tenant A's campaign, codes and an exchange; a spare batch to void.
    let created = IssuanceServiceClient::new(ch.clone())
        .create_campaign(with(campaign("acme-camp", &[("gift", "sim")]), Some(&op_a)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.tenant, "acme");
    let codes = issue(&ch, &op_a, "acme-camp", "b1", 4).await.unwrap();
    issue(&ch, &op_a, "acme-camp", "spare", 1).await.unwrap();
    let done = ExchangeServiceClient::new(ch.clone())
        .exchange(with(
            pb::ExchangeRequest {
                code: codes[1].code.clone(),
                login_key: codes[1].login_key.clone(),
                option_id: "gift".into(),
                request_id: "setup".into(),
                ..Default::default()
            },
            Some(&portal_a),
        ))
        .await
        .unwrap()
        .into_inner();
    let target = Target {
        code: codes[0].clone(),
        exchange: done.name.clone(),
        spare_keys: std::sync::Mutex::new(spare),
    };
    // Let the short-lived key expire.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let principals = [
        (Who::Nobody, None),
        (Who::Revoked, Some(revoked.as_str())),
        (Who::Expired, Some(expired.as_str())),
        (Who::PortalA, Some(portal_a.as_str())),
        (Who::OperatorA, Some(op_a.as_str())),
        (Who::OperatorB, Some(op_b.as_str())),
        (Who::Admin, Some(ADMIN)),
    ];
    let mut n = 0;
    let mut failures = Vec::new();
    for rpc in RPCS {
        for (who, token) in principals {
            n += 1;
            let got = match tokio::time::timeout(
                Duration::from_secs(20),
                call(&ch, rpc, token, n, &target),
            )
            .await
            {
                Ok(got) => got,
                Err(_) => {
                    failures.push(format!("{rpc:?} as {who:?}: no answer within 20 s"));
                    continue;
                }
            };
            let denied = |c: Code, r: &str| match &got {
                Err(s) if s.code() == c && reason(s) == r => None,
                other => Some(format!("want {c:?} {r}, got {other:?}")),
            };
            let problem = match who {
                Who::Nobody => denied(Code::Unauthenticated, "API_KEY_MISSING"),
                Who::Revoked => denied(Code::Unauthenticated, "API_KEY_REVOKED"),
                Who::Expired => denied(Code::Unauthenticated, "API_KEY_EXPIRED"),
                Who::PortalA if !rpc.portal() => denied(Code::PermissionDenied, "ROLE_NOT_ALLOWED"),
                Who::OperatorA | Who::OperatorB if rpc.portal() || rpc.admin_only() => {
                    denied(Code::PermissionDenied, "ROLE_NOT_ALLOWED")
                }
                Who::OperatorB => match (&got, rpc) {
                    // Its own campaign: allowed.
                    (Ok(_), Rpc::CreateCampaign) => None,
                    // Listings come back without anything of tenant A.
                    (Ok(false), _) => None,
                    (Err(s), _) if s.code() == Code::NotFound => None,
                    other => Some(format!("tenant B reached tenant A: {other:?}")),
                },
                // Allowed: any answer but an authentication or role refusal.
                _ => match &got {
                    Err(s)
                        if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) =>
                    {
                        Some(format!("refused: {s:?}"))
                    }
                    Err(s) if s.code() == Code::Internal || s.code() == Code::Unknown => {
                        Some(format!("server fault: {s:?}"))
                    }
                    _ => None,
                },
            };
            if let Some(p) = problem {
                failures.push(format!("{rpc:?} as {who:?}: {p}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} wrong answers:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Tenant B's portal: tenant A's code is a code that does not exist,
    // and hammering it does not lock it for tenant A.
    let mut exchange_b = ExchangeServiceClient::new(ch.clone());
    let unknown = pb::VerifyCodeRequest {
        code: codes[2].code.clone(),
        login_key: giftx_core::LoginKey::generate().unwrap().printed(),
    };
    let foreign = pb::VerifyCodeRequest {
        code: codes[2].code.clone(),
        login_key: codes[2].login_key.clone(),
    };
    let a = exchange_b
        .verify_code(with(foreign.clone(), Some(&portal_b)))
        .await
        .unwrap_err();
    // A code of tenant A's series that was never issued.
    let series = giftx_core::Code::parse(&codes[2].code).unwrap().series();
    let made_up = giftx_core::Code::generate(series).unwrap().printed();
    let b = exchange_b
        .verify_code(with(
            pb::VerifyCodeRequest {
                code: made_up,
                login_key: codes[2].login_key.clone(),
            },
            Some(&portal_b),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (a.code(), reason(&a)),
        (b.code(), reason(&b)),
        "{a:?} vs {b:?}"
    );
    assert!(
        matches!(a.code(), Code::NotFound | Code::InvalidArgument),
        "{a:?}"
    );
    for _ in 0..15 {
        let _ = exchange_b
            .verify_code(with(foreign.clone(), Some(&portal_b)))
            .await;
        let _ = exchange_b
            .verify_code(with(unknown.clone(), Some(&portal_b)))
            .await;
    }
    let mine = ExchangeServiceClient::new(ch.clone())
        .verify_code(with(foreign.clone(), Some(&portal_a)))
        .await
        .expect("tenant A's code still verifies for tenant A");
    assert_eq!(mine.into_inner().campaign, "campaigns/acme-camp");

    // The audit trail holds every operator and admin call the matrix made.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut events = Vec::new();
        let mut token = String::new();
        loop {
            let r = AccessServiceClient::new(ch.clone())
                .list_audit_events(with(
                    pb::ListAuditEventsRequest {
                        page_size: 1000,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                    Some(ADMIN),
                ))
                .await
                .unwrap()
                .into_inner();
            // Each listing is audited too: a short page is the end.
            let short = r.events.len() < 1000;
            events.extend(r.events);
            token = r.next_page_token;
            if short {
                break;
            }
        }
        // Each operator or admin method, called by the bootstrap admin
        // (tenant ops) and by keys of tenants acme and bravo: audited
        // whatever the outcome (a refused role included).
        let mut missing = Vec::new();
        for r in RPCS.iter().filter(|r| !r.portal()) {
            let m = r.method();
            for (p, t) in [
                ("bootstrap", "ops"),
                ("apiKeys/", "acme"),
                ("apiKeys/", "bravo"),
            ] {
                if !events
                    .iter()
                    .any(|e| e.method == m && e.principal.starts_with(p) && e.tenant == t)
                {
                    missing.push(format!("{m} by {p} of {t}"));
                }
            }
        }
        if missing.is_empty() {
            let b_saw_a = events
                .iter()
                .any(|e| e.tenant == "bravo" && e.resource.contains("acme") && e.outcome == "OK");
            assert!(!b_saw_a, "an OK call of tenant B on tenant A's resource");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit events missing: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An operator sees its own tenant's audit events only.
    let mine = AccessServiceClient::new(ch.clone())
        .list_audit_events(with(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            },
            Some(&op_b),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!mine.events.is_empty());
    assert!(
        mine.events.iter().all(|e| e.tenant == "bravo"),
        "{:?}",
        mine.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_end_user_velocity_trip_recover_and_hold_across_replicas() {
    let limits = [
        ("GIFTX_LIMIT_PORTAL_RPS", "5".to_owned()),
        ("GIFTX_LIMIT_PORTAL_BURST", "10".to_owned()),
        ("GIFTX_END_USER_MAX_FAILURES", "3".to_owned()),
        ("GIFTX_END_USER_WINDOW_SECONDS", "2".to_owned()),
    ];
    let mut w = world(&limits).await;
    w.start(&limits);
    let (a, b) = (w.channel(0).await, w.channel(1).await);
    let (_, portal) = create_key(&a, "acme", pb::Role::Portal, None).await;
    let (_, op) = create_key(&a, "acme", pb::Role::Operator, None).await;
    IssuanceServiceClient::new(a.clone())
        .create_campaign(with(campaign("acme-camp", &[("gift", "sim")]), Some(&op)))
        .await
        .unwrap();
    let codes = issue(&a, &op, "acme-camp", "b1", 2).await.unwrap();
    let good = pb::VerifyCodeRequest {
        code: codes[0].code.clone(),
        login_key: codes[0].login_key.clone(),
    };

    // 40 calls as fast as they go, alternating replicas: the burst (10)
    // plus what 5/s refills, in total, not per replica.
    let start = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for i in 0..40 {
        let ch = if i % 2 == 0 { &a } else { &b };
        match ExchangeServiceClient::new(ch.clone())
            .verify_code(with(good.clone(), Some(&portal)))
            .await
        {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(reason(&s), "RATE_LIMITED");
                let retry = s.get_details_retry_info().expect("RetryInfo");
                assert!(retry.retry_delay.unwrap() <= Duration::from_secs(1));
                limited += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = 10.0 + 5.0 * elapsed + 1.0;
    assert!(
        f64::from(ok) <= allowed && ok >= 10,
        "{ok} allowed in {elapsed:.2}s (limit {allowed:.1}), {limited} limited"
    );
    assert!(limited > 0);
    // Recovers: after a second, calls go through again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ExchangeServiceClient::new(b.clone())
        .verify_code(with(good.clone(), Some(&portal)))
        .await
        .expect("the limit refills");

    // End-user velocity: 3 failed verifications of one end user, across
    // replicas and codes, then its calls are refused, even a correct one;
    // another end user is not; after the window it may try again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let as_user = |msg: pb::VerifyCodeRequest, user: &str| {
        let mut r = with(msg, Some(&portal));
        r.metadata_mut()
            .insert("x-giftx-end-user", user.parse().unwrap());
        r
    };
    for (i, c) in [&codes[0], &codes[1], &codes[0]].iter().enumerate() {
        let ch = if i % 2 == 0 { &a } else { &b };
        let s = ExchangeServiceClient::new(ch.clone())
            .verify_code(as_user(
                pb::VerifyCodeRequest {
                    code: c.code.clone(),
                    login_key: giftx_core::LoginKey::generate().unwrap().printed(),
                },
                "203.0.113.7",
            ))
            .await
            .unwrap_err();
        assert_ne!(s.code(), Code::ResourceExhausted, "{s:?}");
    }
    let s = ExchangeServiceClient::new(b.clone())
        .verify_code(as_user(good.clone(), "203.0.113.7"))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::ResourceExhausted, "END_USER_THROTTLED"),
        "{s:?}"
    );
    assert!(s.get_details_retry_info().is_some());
    ExchangeServiceClient::new(a.clone())
        .verify_code(as_user(good.clone(), "198.51.100.1"))
        .await
        .expect("another end user is not throttled");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    ExchangeServiceClient::new(a.clone())
        .verify_code(as_user(good.clone(), "203.0.113.7"))
        .await
        .expect("the window passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_and_certificates_reload() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = giftxd_dir(CONFIG, Some(ADMIN));
    let d = dir.path();
    for sub in ["one", "two", "live"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let one = TestPki::new(&d.join("one"), "first CA");
    let two = TestPki::new(&d.join("two"), "second CA");
    let (client_cert, client_key) = one.client("portal-host");
    let live = d.join("live");
    let copy = |pki: &TestPki| {
        std::fs::copy(pki.server_cert(), live.join("server.crt")).unwrap();
        std::fs::copy(pki.server_key(), live.join("server.key")).unwrap();
    };
    copy(&one);
    std::fs::copy(one.ca(), live.join("clients.crt")).unwrap();
    let port = free_port();
    let _g = start_giftxd_with(
        d,
        port,
        &[
            ("GIFTX_REDIS_URL", redis.url()),
            ("GIFTX_TLS_CERT_FILE", path(&live.join("server.crt"))),
            ("GIFTX_TLS_KEY_FILE", path(&live.join("server.key"))),
            ("GIFTX_TLS_CLIENT_CA_FILE", path(&live.join("clients.crt"))),
            ("GIFTX_TLS_RELOAD_SECONDS", "1".into()),
            ("GIFTX_ADMIN_TOKEN_FILE", path(&d.join("admin.token"))),
        ],
    );
    let health = |ch: Channel| async move {
        tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
    };
    // Without a client certificate the handshake (or the first call) fails.
    match tls_channel(port, &one.ca(), None).await {
        Err(_) => {}
        Ok(ch) => assert!(
            health(ch).await.is_err(),
            "served a client without a certificate"
        ),
    }
    let ch = tls_channel(port, &one.ca(), Some((&client_cert, &client_key)))
        .await
        .expect("mTLS connects");
    health(ch).await.expect("health over mTLS");

    // Rotate the server certificate to one of another CA: new connections
    // get it within the reload interval; the old CA no longer verifies.
    copy(&two);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ch) = tls_channel(port, &two.ca(), Some((&client_cert, &client_key))).await
            && health(ch).await.is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match tls_channel(port, &one.ca(), Some((&client_cert, &client_key))).await {
        Err(_) => {}
        Ok(ch) => assert!(
            health(ch).await.is_err(),
            "the old certificate is still served"
        ),
    }
    // A broken rotation (a key that does not match) keeps the current one.
    std::fs::copy(one.server_key(), live.join("server.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ch = tls_channel(port, &two.ca(), Some((&client_cert, &client_key)))
        .await
        .expect("still serving the last good certificate");
    health(ch).await.unwrap();
}

/// With mTLS, a client certificate whose subjectAltName URI names an API
/// key (`giftx:apiKeys/<id>`) is that key's principal without a token: its
/// tenant and role apply, revoking the key ends it, and a bearer token on
/// the same connection still takes precedence. A certificate naming no
/// key, an unknown key, or two keys gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_naming_an_api_key_is_that_keys_principal() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let dir = giftxd_dir(CONFIG, Some(ADMIN));
    let d = dir.path();
    std::fs::create_dir(d.join("pki")).unwrap();
    let pki = TestPki::new(&d.join("pki"), "mTLS principals CA");
    let port = free_port();
    let _g = start_giftxd_with(
        d,
        port,
        &[
            ("GIFTX_REDIS_URL", redis.url()),
            ("GIFTX_TLS_CERT_FILE", path(&pki.server_cert())),
            ("GIFTX_TLS_KEY_FILE", path(&pki.server_key())),
            ("GIFTX_TLS_CLIENT_CA_FILE", path(&pki.ca())),
            ("GIFTX_ADMIN_TOKEN_FILE", path(&d.join("admin.token"))),
            ("GIFTX_AUTH_CACHE_MS", "0".into()),
        ],
    );
    let (admin_cert, admin_key) = pki.client("admin-host");
    let admin_ch = tls_channel(port, &pki.ca(), Some((&admin_cert, &admin_key)))
        .await
        .unwrap();
    let (op_name, op_token) = create_key(&admin_ch, "acme", pb::Role::Operator, None).await;
    let (portal_name, _) = create_key(&admin_ch, "acme", pb::Role::Portal, None).await;
    let (other_name, _) = create_key(&admin_ch, "bravo", pb::Role::Operator, None).await;
    let id = |name: &str| name.trim_start_matches("apiKeys/").to_owned();
    let uri = |name: &str| format!("giftx:apiKeys/{}", id(name));
    let connect = |cert: (std::path::PathBuf, std::path::PathBuf)| {
        let ca = pki.ca();
        async move {
            tls_channel(port, &ca, Some((&cert.0, &cert.1)))
                .await
                .unwrap()
        }
    };
    let create = |ch: Channel, id: &'static str, token: Option<String>| async move {
        IssuanceServiceClient::new(ch)
            .create_campaign(with(campaign(id, &[("gift", "sim")]), token.as_deref()))
            .await
    };
    let list = |ch: Channel| async move {
        IssuanceServiceClient::new(ch)
            .list_campaigns(with(pb::ListCampaignsRequest::default(), None))
            .await
    };

    // The operator's certificate: acme's operator, no token needed.
    let op_ch = connect(pki.client_with_uris("op-host", &[&uri(&op_name)])).await;
    let made = create(op_ch.clone(), "cert-made", None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.tenant, "acme");
    // bravo's operator certificate sees nothing of acme.
    let other_ch = connect(pki.client_with_uris("other-host", &[&uri(&other_name)])).await;
    let seen = list(other_ch).await.unwrap().into_inner();
    assert!(seen.campaigns.is_empty(), "{seen:?}");
    // The portal's certificate is a portal: no operator RPCs.
    let portal_ch = connect(pki.client_with_uris("portal-host", &[&uri(&portal_name)])).await;
    let e = list(portal_ch).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED")
    );
    // A certificate naming no key, an unknown key, or two keys: nothing.
    for (name, uris) in [
        ("plain-host", vec![]),
        (
            "unknown-host",
            vec!["giftx:apiKeys/00000000000000aa".to_owned()],
        ),
        ("two-host", vec![uri(&op_name), uri(&portal_name)]),
    ] {
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        let ch = connect(pki.client_with_uris(name, &uris)).await;
        let e = list(ch).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{name}: {e:?}");
    }
    // A token on a certificate's connection takes precedence.
    let ch = connect(pki.client_with_uris("op-host-2", &[&uri(&portal_name)])).await;
    create(ch, "token-wins", Some(op_token)).await.unwrap();
    // Revoking the key ends the certificate's access.
    AccessServiceClient::new(admin_ch.clone())
        .revoke_api_key(with(
            pb::RevokeApiKeyRequest {
                name: op_name.clone(),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let e = list(op_ch).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unauthenticated, "API_KEY_REVOKED")
    );
}

fn run_giftxd(listen: &str, env: &[(&str, &str)]) -> std::process::Child {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_giftxd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GIFTX_") || k == "RUST_LOG" || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.env("GIFTX_LISTEN", listen)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_network_address_needs_tls_and_authentication_or_an_explicit_insecure() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), ADMIN).unwrap();
    let token_path = token.path().to_str().unwrap().to_owned();
    for env in [
        vec![],
        vec![("GIFTX_ADMIN_TOKEN_FILE", token_path.as_str())],
    ] {
        let out = run_giftxd(&format!("0.0.0.0:{}", free_port()), &env)
            .wait_with_output()
            .unwrap();
        assert!(!out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("refusing to serve 0.0.0.0:"), "{text}");
        assert!(text.contains("GIFTX_INSECURE=true"), "{text}");
    }
    // With GIFTX_INSECURE=true it starts, and says so loudly.
    let mut child = run_giftxd(
        &format!("0.0.0.0:{}", free_port()),
        &[("GIFTX_INSECURE", "true")],
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut warned = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        warned |= line.contains("INSECURE");
        if line.contains("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no INSECURE warning before listening");
}
