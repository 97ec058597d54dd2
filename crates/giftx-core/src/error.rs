//! The domain's errors: what callers did wrong, and expected outcomes that
//! are not successes. Transport mapping lives in giftx-server.

use crate::clock::Timestamp;

/// Why typed text is not a well-formed code or login key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeFormatError {
    /// A character outside Crockford base32 (after forgiving I, L, O).
    #[error("'{0}' is not a valid character (use 0-9 and A-Z without U)")]
    InvalidCharacter(char),
    /// Too few or too many symbols.
    #[error("expected {expected} characters (hyphens and spaces aside)")]
    WrongLength {
        /// Symbols expected, check character included.
        expected: usize,
    },
    /// The check character does not match: almost surely a typo.
    #[error("the check character does not match; please check for a typo")]
    BadCheckCharacter,
}

/// One invalid request field, for AIP-193's `BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `campaign.face_value`.
    pub field: String,
    /// What is wrong with it, for a human.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Everything a giftx operation can answer besides success. Each variant is
/// one AIP-193 reason; giftx-server maps them to gRPC status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Request fields are malformed.
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    /// No such campaign.
    #[error("campaign not found")]
    CampaignNotFound,
    /// No such batch.
    #[error("batch not found")]
    BatchNotFound,
    /// No such exchange.
    #[error("exchange not found")]
    ExchangeNotFound,
    /// No code matches the code and login key (unknown code, or wrong key:
    /// deliberately indistinguishable).
    #[error("no code matches this code and login key")]
    LoginKeyMismatch,
    /// Too many wrong login keys; try again after `until`.
    #[error("too many wrong login keys; the code is locked for a while")]
    CodeLocked {
        /// When the lock ends.
        until: Timestamp,
    },
    /// The code's deadline has passed.
    #[error("the code's deadline has passed")]
    CodeExpired,
    /// The code's batch was voided.
    #[error("the code was voided")]
    CodeVoid,
    /// The code was already exchanged.
    #[error("the code was already exchanged")]
    CodeAlreadyRedeemed,
    /// Another exchange of this code is in flight.
    #[error("another exchange of this code is in flight; retry shortly")]
    ExchangeInFlight,
    /// The request id was used before with other parameters.
    #[error("request_id was already used with other parameters")]
    RequestIdReused,
    /// The code has had too many refused exchanges and takes no new one.
    #[error("this code has had too many refused exchanges and cannot be exchanged any more")]
    TooManyAttempts,
    /// A campaign with this id exists with other content.
    #[error("campaign already exists with other content")]
    CampaignAlreadyExists,
    /// This batch id was already used.
    #[error("batch already exists")]
    BatchAlreadyExists,
    /// The campaign's deadline has passed, so it takes no new codes.
    #[error("the campaign's deadline has passed")]
    CampaignExpired,
    /// Every code series is in use.
    #[error("no code series left for a new campaign")]
    SeriesExhausted,
    /// The provider's stock ran out (retry later, after a restock).
    #[error("provider stock exhausted")]
    StockExhausted,
    /// A dependency (ledger, provider) is unavailable; retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// Something that should not happen; details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl DomainError {
    /// A single-field invalid-argument error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DomainError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}
