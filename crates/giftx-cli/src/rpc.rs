//! gRPC plumbing: connecting to giftxd and turning a non-OK `Status` into
//! one line an operator can act on (AIP-193 details decoded).

use std::time::Duration;

use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_proto::v1::operations_service_client::OperationsServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use crate::error::{Error, Result};

/// The address giftctl talks to when neither `--addr` nor `GIFTX_ADDR` is set.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// One connection to giftxd and a client per service over it.
#[derive(Clone, Debug)]
pub struct Clients {
    /// IssuanceService.
    pub issuance: IssuanceServiceClient<Channel>,
    /// ExchangeService.
    pub exchange: ExchangeServiceClient<Channel>,
    /// ExpiryService.
    pub expiry: ExpiryServiceClient<Channel>,
    /// OperationsService (stock, shipments, preferences).
    pub operations: OperationsServiceClient<Channel>,
}

/// Connects to giftxd at `addr` (`http://host:port`; a bare `host:port`
/// means plain HTTP/2). `https://` is refused: giftctl has no TLS yet, and
/// speaking plaintext to an address that asks for TLS would send codes and
/// login keys in the clear.
///
/// # Errors
/// [`Error::Invalid`] when the address asks for TLS or another scheme;
/// [`Error::Connect`] when it is malformed or nothing answers within a few
/// seconds.
pub async fn connect(addr: &str) -> Result<Clients> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    if let Some((scheme, _)) = uri.split_once("://")
        && !scheme.eq_ignore_ascii_case("http")
    {
        let detail = if scheme.eq_ignore_ascii_case("https") {
            "giftctl does not support TLS yet, and will not speak plaintext to an https:// \
             address; use http:// on a trusted network, or reach giftxd through a \
             TLS-terminating tunnel or proxy that giftctl talks http:// to"
                .to_owned()
        } else {
            format!("unsupported scheme {scheme}://; use http://host:port")
        };
        return Err(Error::Invalid(format!("--addr {uri}: {detail}")));
    }
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| Error::Connect {
            addr: uri.clone(),
            detail: error_chain(&e),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| Error::Connect {
        addr: uri.clone(),
        detail: error_chain(&e),
    })?;
    Ok(Clients {
        issuance: IssuanceServiceClient::new(channel.clone()),
        exchange: ExchangeServiceClient::new(channel.clone()),
        expiry: ExpiryServiceClient::new(channel.clone()),
        operations: OperationsServiceClient::new(channel),
    })
}

/// An error and its sources, joined with `: ` on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The canonical name of a gRPC status code, as in `google.rpc.Code`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One line describing a status: code, message, then the AIP-193 details
/// giftx sends (ErrorInfo reason, BadRequest field violations, RetryInfo).
///
/// `INVALID_ARGUMENT: invalid campaign [reason CAMPAIGN_INVALID; campaign.face_value: must be positive]`
pub fn describe_status(status: &tonic::Status) -> String {
    let mut out = String::from(code_name(status.code()));
    let message = one_line(status.message());
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(&message);
    }
    let mut details: Vec<String> = Vec::new();
    // Details that do not decode are ignored: the code and message remain.
    let decoded = status.get_error_details();
    if let Some(info) = decoded.error_info() {
        if !info.reason.is_empty() {
            details.push(format!("reason {}", info.reason));
        }
        let mut meta: Vec<_> = info.metadata.iter().collect();
        meta.sort();
        for (k, v) in meta {
            details.push(format!("{k}={}", one_line(v)));
        }
    }
    if let Some(bad) = decoded.bad_request() {
        for v in &bad.field_violations {
            details.push(format!("{}: {}", v.field, one_line(&v.description)));
        }
    }
    if let Some(pre) = decoded.precondition_failure() {
        for v in &pre.violations {
            details.push(format!(
                "{} {}: {}",
                v.r#type,
                v.subject,
                one_line(&v.description)
            ));
        }
    }
    if let Some(retry) = decoded.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        details.push(format!("retry after {:.1}s", delay.as_secs_f64()));
    }
    if status.code() == tonic::Code::Unavailable
        && details.is_empty()
        && message.contains("transport")
    {
        details.push("is giftxd running and reachable?".to_owned());
    }
    if !details.is_empty() {
        out.push_str(" [");
        out.push_str(&details.join("; "));
        out.push(']');
    }
    out
}

/// A giftx.v1 service and how to get a giftxd that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `giftx.v1.IssuanceService`.
    pub full_name: &'static str,
    /// The `GIFTX_SERVICES` entry that serves it (OperationsService is
    /// served wherever issuance is).
    pub giftx_services: &'static str,
}

/// Which service an RPC giftctl calls belongs to.
pub fn service_of(rpc: &str) -> Option<ServiceInfo> {
    let (full_name, giftx_services) = match rpc {
        "CreateCampaign" | "GetCampaign" | "ListCampaigns" | "IssueCodes" | "GetBatch"
        | "VoidBatch" | "GetCampaignStats" => ("giftx.v1.IssuanceService", "issuance"),
        "VerifyCode" | "Exchange" | "GetExchange" => ("giftx.v1.ExchangeService", "exchange"),
        "ExtendCampaign" | "SweepExpired" | "ListPendingExchanges" | "ReconcileExchange" => {
            ("giftx.v1.ExpiryService", "expiry")
        }
        "ImportStock" | "GetStockStatus" | "ListShipments" | "MarkShipped" | "ListPreferences" => {
            ("giftx.v1.OperationsService", "issuance")
        }
        _ => return None,
    };
    Some(ServiceInfo {
        full_name,
        giftx_services,
    })
}

/// The service `rpc` belongs to when `status` says the giftxd does not
/// serve it at all: UNIMPLEMENTED without giftx's error details, which is
/// what the gRPC router answers for a service it does not have (giftxd
/// itself never answers UNIMPLEMENTED for a method it serves).
pub fn service_not_served(rpc: &str, status: &tonic::Status) -> Option<ServiceInfo> {
    if status.code() != tonic::Code::Unimplemented || status.get_details_error_info().is_some() {
        return None;
    }
    service_of(rpc)
}

/// One line for a failed RPC: `GetCampaign failed: NOT_FOUND: …`, or for a
/// service this giftxd does not serve, which service and how to reach one.
pub fn describe_rpc_failure(rpc: &str, status: &tonic::Status) -> String {
    match service_not_served(rpc, status) {
        Some(s) => format!(
            "{rpc} failed: UNIMPLEMENTED: this giftxd does not serve {}; point --addr \
             (GIFTX_ADDR) at a giftxd started with GIFTX_SERVICES including {}",
            s.full_name, s.giftx_services
        ),
        None => format!("{rpc} failed: {}", describe_status(status)),
    }
}

/// The AIP-193 details of a status as JSON: `error_info`,
/// `field_violations`, `precondition_violations`, `retry_delay_seconds`
/// (each only when present).
pub fn status_details_json(status: &tonic::Status) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut out = Map::new();
    let decoded = status.get_error_details();
    if let Some(info) = decoded.error_info() {
        out.insert(
            "error_info".into(),
            json!({"reason": info.reason, "domain": info.domain, "metadata": info.metadata}),
        );
    }
    if let Some(bad) = decoded.bad_request() {
        let v: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        out.insert("field_violations".into(), Value::Array(v));
    }
    if let Some(pre) = decoded.precondition_failure() {
        let v: Vec<Value> = pre
            .violations
            .iter()
            .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
            .collect();
        out.insert("precondition_violations".into(), Value::Array(v));
    }
    if let Some(retry) = decoded.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        out.insert("retry_delay_seconds".into(), json!(delay.as_secs_f64()));
    }
    Value::Object(out)
}

/// Whether a failed call may have had an effect or may succeed if sent
/// again unchanged (same request id): the outcome is unknown or the
/// failure transient. INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and
/// the like are answers: sending the same request again gets them again.
pub fn is_retryable(status: &tonic::Status) -> bool {
    use tonic::Code as C;
    matches!(
        status.code(),
        C::Unavailable
            | C::DeadlineExceeded
            | C::Aborted
            | C::ResourceExhausted
            | C::Unknown
            | C::Internal
            | C::Cancelled
    )
}

/// The ErrorInfo reason of a status, if it has one.
pub fn reason(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, FieldViolation};

    #[test]
    fn describes_bad_request_and_error_info_on_one_line() {
        let mut details = ErrorDetails::with_error_info(
            "CAMPAIGN_INVALID",
            "giftx.dev",
            HashMap::from([("campaign".to_owned(), "campaigns/x".to_owned())]),
        );
        details.set_bad_request(vec![
            FieldViolation::new("campaign.face_value", "must be positive"),
            FieldViolation::new("campaign.face_value.currency_code", "unknown\ncurrency"),
        ]);
        let status = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "invalid campaign",
            details,
        );
        assert_eq!(
            describe_status(&status),
            "INVALID_ARGUMENT: invalid campaign [reason CAMPAIGN_INVALID; campaign=campaigns/x; \
             campaign.face_value: must be positive; campaign.face_value.currency_code: unknown currency]"
        );
        assert_eq!(reason(&status).as_deref(), Some("CAMPAIGN_INVALID"));
    }

    #[test]
    fn describes_retry_info_and_plain_statuses() {
        let mut details =
            ErrorDetails::with_error_info("EXCHANGE_IN_FLIGHT", "giftx.dev", HashMap::new());
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let status = tonic::Status::with_error_details(tonic::Code::Aborted, "in flight", details);
        assert_eq!(
            describe_status(&status),
            "ABORTED: in flight [reason EXCHANGE_IN_FLIGHT; retry after 1.5s]"
        );
        let plain = tonic::Status::not_found("campaign not found");
        assert_eq!(describe_status(&plain), "NOT_FOUND: campaign not found");
        assert_eq!(reason(&plain), None);
    }

    #[test]
    fn unimplemented_service_names_the_service_and_how_to_reach_it() {
        let e = Error::rpc("IssueCodes")(tonic::Status::unimplemented(""));
        assert_eq!(
            e.to_string(),
            "IssueCodes failed: UNIMPLEMENTED: this giftxd does not serve \
             giftx.v1.IssuanceService; point --addr (GIFTX_ADDR) at a giftxd started with \
             GIFTX_SERVICES including issuance"
        );
        let j = e.to_json();
        assert_eq!(j["error"]["reason"], "SERVICE_NOT_SERVED");
        assert_eq!(j["error"]["code"], "UNIMPLEMENTED");
        assert_eq!(
            service_of("MarkShipped").map(|s| s.giftx_services),
            Some("issuance")
        );
    }

    #[test]
    fn every_rpc_is_mapped_to_its_service_as_the_proto_says() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(giftx_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                for m in &service.method {
                    let info = service_of(m.name()).unwrap_or_else(|| panic!("{}", m.name()));
                    assert_eq!(info.full_name, full, "{}", m.name());
                    methods += 1;
                }
            }
        }
        assert!(methods >= 19, "{methods}");
    }

    #[test]
    fn rpc_error_displays_the_rpc_name_first() {
        let e = Error::rpc("GetCampaign")(tonic::Status::not_found("campaign not found"));
        assert_eq!(
            e.to_string(),
            "GetCampaign failed: NOT_FOUND: campaign not found"
        );
    }
}
