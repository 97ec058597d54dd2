//! End-to-end tests: `tests/<area>.rs`, each against giftxd spawned
//! in-process by `giftx_testkit::TestApp`, and these shared helpers.

use std::time::Duration;

use giftx_core::Timestamp;
use giftx_proto::v1 as pb;
use tonic::Status;
use tonic_types::StatusExt as _;

/// A valid CreateCampaign request for `id`: 500 JPY, deadline 30 days
/// after `now`, options on the default providers.
pub fn campaign_request(id: &str, now: Timestamp) -> pb::CreateCampaignRequest {
    let deadline = now.plus(Duration::from_secs(30 * 24 * 3600));
    let (seconds, nanos) = deadline.to_seconds_nanos();
    pb::CreateCampaignRequest {
        campaign_id: id.to_owned(),
        request_id: String::new(),
        campaign: Some(pb::Campaign {
            display_name: format!("Campaign {id}"),
            owner: "tests".to_owned(),
            face_value: Some(pb::Money {
                currency_code: "JPY".to_owned(),
                minor_units: 500,
            }),
            expire_time: Some(prost_types::Timestamp { seconds, nanos }),
            options: vec![
                pb::RedemptionOption {
                    option_id: "book-card".to_owned(),
                    display_name: "Book card".to_owned(),
                    provider: "book-card".to_owned(),
                    requires_shipping_address: false,
                },
                pb::RedemptionOption {
                    option_id: "donation".to_owned(),
                    display_name: "Donation".to_owned(),
                    provider: "donation".to_owned(),
                    requires_shipping_address: false,
                },
            ],
            ..Default::default()
        }),
    }
}

/// The fields a status's `BadRequest` names.
pub fn bad_request_fields(s: &Status) -> Vec<String> {
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The `ErrorInfo` reason of a status ("" when none).
pub fn reason(s: &Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Panics unless `s` is INVALID_ARGUMENT with a `BadRequest` naming
/// `field`.
pub fn assert_invalid_field(s: &Status, field: &str) {
    assert_eq!(
        s.code(),
        tonic::Code::InvalidArgument,
        "expected INVALID_ARGUMENT for {field}, got {s:?}"
    );
    let fields = bad_request_fields(s);
    assert!(
        fields.iter().any(|f| f == field),
        "expected BadRequest naming {field}, got {fields:?} ({s:?})"
    );
}

// ---- exchange and expiry helpers -------------------------------------------

/// A protobuf timestamp of `t`.
pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_seconds_nanos();
    prost_types::Timestamp { seconds, nanos }
}

/// A CreateCampaign request for `id`: 500 JPY, deadline `deadline`, one
/// option per `(option_id, provider)`.
pub fn campaign_with_options(
    id: &str,
    deadline: Timestamp,
    options: &[(&str, &str)],
) -> pb::CreateCampaignRequest {
    let mut req = campaign_request(id, deadline);
    let c = req.campaign.as_mut().expect("campaign");
    c.expire_time = Some(ts(deadline));
    c.options = options
        .iter()
        .map(|(option_id, provider)| pb::RedemptionOption {
            option_id: (*option_id).to_owned(),
            display_name: format!("Option {option_id}"),
            provider: (*provider).to_owned(),
            requires_shipping_address: false,
        })
        .collect();
    req
}

/// Issues `count` codes of `campaign` (an id) under `batch` and collects the
/// stream.
///
/// # Panics
/// When the RPC or the stream fails.
pub async fn issue_codes(
    app: &giftx_testkit::TestApp,
    campaign: &str,
    batch: &str,
    count: i64,
) -> Vec<pb::IssuedCode> {
    use futures::StreamExt as _;
    let mut s = app
        .issuance
        .clone()
        .issue_codes(pb::IssueCodesRequest {
            campaign: format!("campaigns/{campaign}"),
            batch_id: batch.to_owned(),
            count,
        })
        .await
        .expect("IssueCodes")
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.push(c.expect("IssuedCode"));
    }
    assert_eq!(out.len(), usize::try_from(count).unwrap_or(0));
    out
}

/// An Exchange request for an issued code.
pub fn exchange_request(
    code: &pb::IssuedCode,
    option: &str,
    request_id: &str,
) -> pb::ExchangeRequest {
    pb::ExchangeRequest {
        code: code.code.clone(),
        login_key: code.login_key.clone(),
        option_id: option.to_owned(),
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

/// A VerifyCode request for an issued code.
pub fn verify_request(code: &pb::IssuedCode) -> pb::VerifyCodeRequest {
    pb::VerifyCodeRequest {
        code: code.code.clone(),
        login_key: code.login_key.clone(),
    }
}

/// A GetExchange request for an issued code.
pub fn get_exchange_request(code: &pb::IssuedCode) -> pb::GetExchangeRequest {
    pb::GetExchangeRequest {
        code: code.code.clone(),
        login_key: code.login_key.clone(),
    }
}

/// The `CodeState` VerifyCode reports for an issued code.
///
/// # Panics
/// When VerifyCode fails.
pub async fn code_state(app: &giftx_testkit::TestApp, code: &pb::IssuedCode) -> pb::CodeState {
    let s = app
        .exchange
        .clone()
        .verify_code(verify_request(code))
        .await
        .expect("VerifyCode")
        .into_inner();
    pb::CodeState::try_from(s.state).expect("known code state")
}

/// Every PENDING exchange older than zero (all pages).
///
/// # Panics
/// When the RPC fails or paging does not end.
pub async fn list_pending(app: &giftx_testkit::TestApp) -> Vec<pb::Exchange> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = app
            .expiry
            .clone()
            .list_pending_exchanges(pb::ListPendingExchangesRequest {
                older_than: Some(prost_types::Duration::default()),
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .expect("ListPendingExchanges")
            .into_inner();
        out.extend(page.exchanges);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
    panic!("ListPendingExchanges paging does not end");
}

/// GetCampaignStats's count of codes in `state` (-1 when absent).
///
/// # Panics
/// When the RPC fails.
pub async fn stats_count(
    app: &giftx_testkit::TestApp,
    campaign: &str,
    state: pb::CodeState,
) -> i64 {
    let s = app
        .issuance
        .clone()
        .get_campaign_stats(pb::GetCampaignStatsRequest {
            campaign: format!("campaigns/{campaign}"),
        })
        .await
        .expect("GetCampaignStats")
        .into_inner();
    s.by_state
        .iter()
        .find(|x| x.state == state as i32)
        .map_or(-1, |x| x.count)
}

/// The control handle of the simulated provider `id`.
///
/// # Panics
/// When `app` has no simulator `id`.
pub fn sim(app: &giftx_testkit::TestApp, id: &str) -> giftx_providers::simulated::SimulatorControl {
    app.state
        .provider_set
        .simulators
        .get(id)
        .unwrap_or_else(|| panic!("simulator {id}"))
}

/// The provider idempotency key of an exchange name.
///
/// # Panics
/// When `name` is not an exchange name.
pub fn provider_key(name: &str) -> String {
    format!(
        "giftx-{}",
        name.strip_prefix("exchanges/").expect("exchange name")
    )
}

/// The state of an exchange.
///
/// # Panics
/// When the state is unknown.
pub fn state_of(e: &pb::Exchange) -> pb::ExchangeState {
    pb::ExchangeState::try_from(e.state).expect("known exchange state")
}

/// Calls Exchange.
///
/// # Errors
/// The RPC's status.
pub async fn exchange(
    app: &giftx_testkit::TestApp,
    req: pb::ExchangeRequest,
) -> Result<pb::Exchange, Status> {
    app.exchange
        .clone()
        .exchange(req)
        .await
        .map(tonic::Response::into_inner)
}

/// GetExchange for an issued code.
///
/// # Panics
/// When the RPC fails.
pub async fn get_exchange(app: &giftx_testkit::TestApp, code: &pb::IssuedCode) -> pb::Exchange {
    app.exchange
        .clone()
        .get_exchange(get_exchange_request(code))
        .await
        .expect("GetExchange")
        .into_inner()
}

/// Panics unless `s` has gRPC code `code` and `ErrorInfo` reason `why`.
pub fn assert_refused(s: &Status, code: tonic::Code, why: &str) {
    assert_eq!(s.code(), code, "expected {code:?} {why}, got {s:?}");
    assert_eq!(reason(s), why, "{s:?}");
}

/// The services server reflection (v1) lists.
///
/// # Panics
/// When the reflection call fails or answers something else.
pub async fn list_services(app: &giftx_testkit::TestApp) -> Vec<String> {
    use futures::StreamExt as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = app
        .reflection
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
