//! The one mapping from giftx errors to `tonic::Status`, with AIP-193
//! details (`ErrorInfo`, `BadRequest`, `RetryInfo`) via tonic-types.
//!
//! Handlers work with [`ApiError`] (anything a domain or ledger call can
//! fail with converts into it with `?`) and turn it into a `Status` at the
//! very end with [`ApiError::into_status`]. Internal causes are logged here
//! and never sent.

use std::collections::HashMap;
use std::time::Duration;

use giftx_core::{DomainError, FieldViolation, Timestamp};
use giftx_ledger::{LedgerError, Refusal};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every giftx error.
pub const ERROR_DOMAIN: &str = "giftx.dev";

/// How long callers are told to wait before retrying an in-flight or
/// unavailable call.
const RETRY_SOON: Duration = Duration::from_secs(1);

/// How long a holder whose option is out of stock is told to wait: stock
/// comes back when an operator loads more, and every refused try counts
/// towards the code's limit of refused exchanges
/// (`giftx_ledger::MAX_FAILED_EXCHANGES`), so retrying every second would
/// use it up.
const RETRY_STOCK: Duration = Duration::from_secs(60);

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A domain outcome (the common case).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A failed precondition that the domain enum has no variant for
    /// (e.g. `BATCH_CLOSED`, `EXCHANGE_FINISHED`).
    #[error("{message}")]
    Precondition {
        /// The `ErrorInfo` reason.
        reason: &'static str,
        /// For humans.
        message: String,
    },
    /// A resource the domain enum has no variant for (e.g.
    /// `API_KEY_NOT_FOUND`) does not exist.
    #[error("{message}")]
    NotFound {
        /// The `ErrorInfo` reason.
        reason: &'static str,
        /// For humans.
        message: String,
    },
}

impl From<FieldViolation> for ApiError {
    fn from(v: FieldViolation) -> Self {
        ApiError::Domain(DomainError::InvalidArgument(vec![v]))
    }
}

impl From<Vec<FieldViolation>> for ApiError {
    fn from(v: Vec<FieldViolation>) -> Self {
        ApiError::Domain(DomainError::InvalidArgument(v))
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let d = match r {
            Refusal::LoginKeyMismatch => DomainError::LoginKeyMismatch,
            Refusal::Locked { until } => DomainError::CodeLocked { until },
            Refusal::Expired => DomainError::CodeExpired,
            Refusal::Void => DomainError::CodeVoid,
            Refusal::AlreadyRedeemed => DomainError::CodeAlreadyRedeemed,
            Refusal::InFlight | Refusal::Leased => DomainError::ExchangeInFlight,
            Refusal::RequestIdReused => DomainError::RequestIdReused,
            Refusal::TooManyAttempts => DomainError::TooManyAttempts,
            Refusal::CampaignNotFound => DomainError::CampaignNotFound,
            Refusal::CampaignExists => DomainError::CampaignAlreadyExists,
            Refusal::SeriesExhausted => DomainError::SeriesExhausted,
            Refusal::DeadlineEarlier => DomainError::invalid(
                "expire_time",
                "is earlier than the campaign's current deadline; set force to move it earlier",
            ),
            Refusal::DeadlineInPast => DomainError::invalid(
                "expire_time",
                "must not be before now when it moves the deadline earlier (force or not): a deadline change never deletes codes",
            ),
            Refusal::CampaignPurged => {
                return ApiError::Precondition {
                    reason: "CAMPAIGN_PURGED",
                    message: "the campaign is past its deadline + retention: its codes and exchanges are (being) deleted, and its deadline no longer moves".into(),
                };
            }
            Refusal::BatchNotFound => DomainError::BatchNotFound,
            Refusal::BatchExists => DomainError::BatchAlreadyExists,
            Refusal::CampaignExpired => DomainError::CampaignExpired,
            Refusal::ExchangeNotFound => DomainError::ExchangeNotFound,
            Refusal::BatchClosed => {
                return ApiError::Precondition {
                    reason: "BATCH_CLOSED",
                    message: "the batch is no longer issuing (finished or voided)".into(),
                };
            }
            Refusal::ExchangeFinished => {
                return ApiError::Precondition {
                    reason: "EXCHANGE_FINISHED",
                    message: "the exchange has already finished with another outcome".into(),
                };
            }
        };
        ApiError::Domain(d)
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Refused(r) => r.into(),
            LedgerError::Unavailable(m) => ApiError::Domain(DomainError::Unavailable(m)),
            LedgerError::Internal(m) => ApiError::Domain(DomainError::Internal(m)),
        }
    }
}

/// The `ErrorInfo` reason of a domain error.
pub fn reason(e: &DomainError) -> &'static str {
    match e {
        DomainError::InvalidArgument(_) => "INVALID_ARGUMENT",
        DomainError::CampaignNotFound => "CAMPAIGN_NOT_FOUND",
        DomainError::BatchNotFound => "BATCH_NOT_FOUND",
        DomainError::ExchangeNotFound => "EXCHANGE_NOT_FOUND",
        DomainError::LoginKeyMismatch => "LOGIN_KEY_MISMATCH",
        DomainError::CodeLocked { .. } => "CODE_LOCKED",
        DomainError::CodeExpired => "CODE_EXPIRED",
        DomainError::CodeVoid => "CODE_VOID",
        DomainError::CodeAlreadyRedeemed => "CODE_ALREADY_REDEEMED",
        DomainError::ExchangeInFlight => "EXCHANGE_IN_FLIGHT",
        DomainError::RequestIdReused => "REQUEST_ID_REUSED",
        DomainError::TooManyAttempts => "TOO_MANY_ATTEMPTS",
        DomainError::CampaignAlreadyExists => "CAMPAIGN_ALREADY_EXISTS",
        DomainError::BatchAlreadyExists => "BATCH_ALREADY_EXISTS",
        DomainError::CampaignExpired => "CAMPAIGN_EXPIRED",
        DomainError::SeriesExhausted => "SERIES_EXHAUSTED",
        DomainError::StockExhausted => "STOCK_EXHAUSTED",
        DomainError::Unavailable(_) => "UNAVAILABLE",
        DomainError::Internal(_) => "INTERNAL",
    }
}

/// The gRPC code of a domain error.
pub fn code(e: &DomainError) -> Code {
    match e {
        DomainError::InvalidArgument(_) => Code::InvalidArgument,
        DomainError::CampaignNotFound
        | DomainError::BatchNotFound
        | DomainError::ExchangeNotFound
        | DomainError::LoginKeyMismatch => Code::NotFound,
        DomainError::CodeLocked { .. }
        | DomainError::CodeExpired
        | DomainError::CodeVoid
        | DomainError::CodeAlreadyRedeemed
        | DomainError::RequestIdReused
        | DomainError::TooManyAttempts
        | DomainError::CampaignExpired => Code::FailedPrecondition,
        DomainError::ExchangeInFlight => Code::Aborted,
        DomainError::CampaignAlreadyExists | DomainError::BatchAlreadyExists => Code::AlreadyExists,
        DomainError::SeriesExhausted => Code::ResourceExhausted,
        DomainError::StockExhausted | DomainError::Unavailable(_) => Code::Unavailable,
        DomainError::Internal(_) => Code::Internal,
    }
}

impl ApiError {
    /// A single-field INVALID_ARGUMENT.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::Domain(DomainError::invalid(field, description))
    }

    /// An INTERNAL error whose `cause` is logged, never sent.
    pub fn internal(cause: impl Into<String>) -> Self {
        ApiError::Domain(DomainError::Internal(cause.into()))
    }

    /// The gRPC status for this error, with AIP-193 details. `now` sets
    /// the `RetryInfo` of a locked code.
    pub fn into_status(self, now: Timestamp) -> Status {
        let e = match self {
            ApiError::Domain(e) => e,
            ApiError::Precondition { reason, message } => {
                let mut d = ErrorDetails::new();
                d.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
                return Status::with_error_details(Code::FailedPrecondition, message, d);
            }
            ApiError::NotFound { reason, message } => {
                let mut d = ErrorDetails::new();
                d.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
                return Status::with_error_details(Code::NotFound, message, d);
            }
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(reason(&e), ERROR_DOMAIN, HashMap::new());
        let message = match &e {
            DomainError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                e.to_string()
            }
            DomainError::CodeLocked { until } => {
                let ms = until.millis().saturating_sub(now.millis()).max(0);
                details.set_retry_info(Some(Duration::from_millis(ms.unsigned_abs())));
                e.to_string()
            }
            DomainError::ExchangeInFlight => {
                details.set_retry_info(Some(RETRY_SOON));
                e.to_string()
            }
            DomainError::StockExhausted => {
                details.set_retry_info(Some(RETRY_STOCK));
                e.to_string()
            }
            DomainError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "dependency unavailable");
                details.set_retry_info(Some(RETRY_SOON));
                "temporarily unavailable; retry shortly".to_owned()
            }
            DomainError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                "internal error".to_owned()
            }
            _ => e.to_string(),
        };
        Status::with_error_details(code(&e), message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_every_field() {
        let s = ApiError::from(vec![
            FieldViolation::new("count", "must be at least 1"),
            FieldViolation::new("batch_id", "must not be empty"),
        ])
        .into_status(Timestamp(0));
        assert_eq!(s.code(), Code::InvalidArgument);
        let br = s.get_details_bad_request().unwrap();
        let fields: Vec<_> = br
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["count", "batch_id"]);
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn locked_code_says_when_to_retry() {
        let s = ApiError::from(Refusal::Locked {
            until: Timestamp(61_000),
        })
        .into_status(Timestamp(1_000));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.get_details_error_info().unwrap().reason, "CODE_LOCKED");
        assert_eq!(
            s.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn internal_and_unavailable_causes_are_not_sent() {
        let s = ApiError::from(LedgerError::Internal("bucket 7 corrupt: secret".into()))
            .into_status(Timestamp(0));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"));
        let s = ApiError::from(LedgerError::Unavailable("redis at 10.0.0.1 down".into()))
            .into_status(Timestamp(0));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("10.0.0.1"));
        assert!(s.get_details_retry_info().is_some());
    }

    #[test]
    fn user_mistakes_never_map_to_internal() {
        for r in [
            Refusal::LoginKeyMismatch,
            Refusal::Expired,
            Refusal::Void,
            Refusal::AlreadyRedeemed,
            Refusal::InFlight,
            Refusal::RequestIdReused,
            Refusal::CampaignNotFound,
            Refusal::CampaignExists,
            Refusal::SeriesExhausted,
            Refusal::DeadlineEarlier,
            Refusal::DeadlineInPast,
            Refusal::CampaignPurged,
            Refusal::BatchNotFound,
            Refusal::BatchExists,
            Refusal::BatchClosed,
            Refusal::CampaignExpired,
            Refusal::ExchangeNotFound,
            Refusal::ExchangeFinished,
            Refusal::Leased,
            Refusal::TooManyAttempts,
        ] {
            let s = ApiError::from(r.clone()).into_status(Timestamp(0));
            assert_ne!(s.code(), Code::Internal, "{r:?}");
            assert_ne!(s.code(), Code::Unknown, "{r:?}");
        }
        let s = ApiError::from(Refusal::RequestIdReused).into_status(Timestamp(0));
        assert_eq!(
            s.get_details_error_info().unwrap().reason,
            "REQUEST_ID_REUSED"
        );
        let s = ApiError::from(Refusal::LoginKeyMismatch).into_status(Timestamp(0));
        assert_eq!(s.code(), Code::NotFound);
    }
}
