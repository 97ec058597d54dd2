//! The provider adapter contract: all a provider adapter author needs.
//!
//! giftx turns a claimed code into a deliverable by calling
//! [`ProviderAdapter::issue`] with an [`IssueRequest`] whose
//! `idempotency_key` is derived from the exchange: the same key on every
//! retry, forever. An adapter must make `issue` idempotent on that key
//! (most provider APIs take such a key; otherwise remember it) and be able
//! to [`lookup`](ProviderAdapter::lookup) an earlier issue by it.
//!
//! Errors come in three classes, and the class decides what giftx does:
//!
//! | error | meaning | giftx then |
//! |---|---|---|
//! | [`ProviderError::Rejected`] | permanent refusal, nothing issued | exchange FAILED, code ACTIVE again |
//! | [`ProviderError::Retryable`] from `issue` | nothing issued, try again later | exchange FAILED with the reason, code ACTIVE again (the holder may choose another option at once); the caller is told to retry, and the same request claims the code again as a new exchange |
//! | [`ProviderError::Unknown`] | timeout, connection lost: maybe issued | exchange PENDING, re-driven: `lookup`, then `issue`, same key |
//!
//! `Retryable` must mean that nothing was issued under the key, ever: giftx
//! gives the code back on it. On a re-drive, `issue` is called only after
//! `lookup` found nothing, so a `Retryable` from that `issue` releases too;
//! a `Retryable` from `lookup` itself (it cannot say now) is treated as an
//! unknown outcome, since an earlier attempt may have issued.
//!
//! Adapters that must remember what they issued and have no remote API to
//! do it for them get host-side storage: [`store::ProviderStore`].
//!
//! # A complete third-party adapter
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use async_trait::async_trait;
//! use giftx_core::model::{Deliverable, DeliverableKind};
//! use giftx_provider::{
//!     Capabilities, Fulfilment, IssueRequest, ProviderAdapter, ProviderError,
//! };
//!
//! /// Issues numbered vouchers, remembering each key so retries match.
//! #[derive(Default)]
//! struct VoucherShop {
//!     issued: Mutex<HashMap<String, Deliverable>>,
//! }
//!
//! #[async_trait]
//! impl ProviderAdapter for VoucherShop {
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities { store_deliverable: true, fulfilment: Fulfilment::Immediate, cancel: false }
//!     }
//!
//!     async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
//!         let mut issued = self.issued.lock().map_err(|_| ProviderError::unknown("poisoned"))?;
//!         let n = issued.len() + 1;
//!         let d = issued.entry(req.idempotency_key.clone()).or_insert_with(|| Deliverable {
//!             kind: DeliverableKind::GiftCode,
//!             code: format!("VOUCHER-{n:06}"),
//!             pin: String::new(),
//!             value: Some(req.face_value),
//!             expire_time: None,
//!             redeem_url: "https://shop.example/redeem".into(),
//!             reference: format!("order-{n}"),
//!         });
//!         Ok(d.clone())
//!     }
//!
//!     async fn lookup(&self, key: &str) -> Result<Option<Deliverable>, ProviderError> {
//!         let issued = self.issued.lock().map_err(|_| ProviderError::unknown("poisoned"))?;
//!         Ok(issued.get(key).cloned())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # use giftx_core::{Money, Currency, model::{CampaignId, OptionId}};
//! let shop = VoucherShop::default();
//! let req = IssueRequest {
//!     idempotency_key: "giftx-abc".into(),
//!     campaign: CampaignId::parse("c", "leak-2014").unwrap(),
//!     option: OptionId::parse("o", "voucher").unwrap(),
//!     face_value: Money::new(Currency::from_code("JPY").unwrap(), 500),
//!     attempt: 1,
//!     shipping_address: None,
//! };
//! let first = shop.issue(&req).await.unwrap();
//! let again = shop.issue(&req).await.unwrap();
//! assert_eq!(first, again); // idempotent on the key
//! assert_eq!(shop.lookup("giftx-abc").await.unwrap(), Some(first));
//! # }
//! ```

use std::time::Duration;

pub mod store;

pub use store::{
    Entries, MemoryProviderStore, ProviderStore, SealedStore, Sealer, StockAdded, StockItem,
    StockStatus, StoreError, Stored,
};

use async_trait::async_trait;
use giftx_core::Money;
use giftx_core::model::{CampaignId, Deliverable, OptionId, PostalAddress};

/// When a provider fulfils.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fulfilment {
    /// The deliverable is complete when `issue` returns (a gift code).
    Immediate,
    /// `issue` returns an order that completes later (mailed goods); the
    /// deliverable's `reference` tracks it.
    Deferred,
}

/// What an adapter can and may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// May giftx store the deliverable (encrypted)? False for providers
    /// whose terms forbid keeping claim codes: giftx then keeps only the
    /// idempotency key and re-display calls [`ProviderAdapter::lookup`].
    pub store_deliverable: bool,
    /// Immediate or deferred fulfilment.
    pub fulfilment: Fulfilment,
    /// Does [`ProviderAdapter::cancel`] work?
    pub cancel: bool,
}

/// One request to issue a deliverable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueRequest {
    /// Derived from the exchange; identical on every retry, forever.
    pub idempotency_key: String,
    /// The code's campaign.
    pub campaign: CampaignId,
    /// The option chosen.
    pub option: OptionId,
    /// The code's face value.
    pub face_value: Money,
    /// 1 for the first call, then 2, 3, … on re-drives.
    pub attempt: u32,
    /// Where to mail the goods: given to adapters with
    /// [`Fulfilment::Deferred`] on the holder's own request only (and on a
    /// retry of it). A re-drive by the reconciler does not have it: an
    /// adapter that needs it and did not record it at the first call must
    /// then answer [`ProviderError::Retryable`] (never issue without it),
    /// so the exchange stays PENDING until a lookup finds the order or an
    /// operator resolves it. Personal data: keep it only sealed (the host's
    /// [`SealedStore`]) and never log it.
    pub shipping_address: Option<PostalAddress>,
}

/// Why a provider call did not produce a deliverable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Permanent refusal; nothing was issued and nothing will be for this
    /// key. The code becomes ACTIVE again.
    #[error("rejected by provider: {reason}")]
    Rejected {
        /// Machine-readable reason, e.g. `OPTION_DISCONTINUED`.
        reason: String,
    },
    /// Nothing was issued (under this key, ever) and nothing can be now;
    /// it may work later. giftx gives the code back to its holder (the
    /// exchange FAILS with `reason`; a retry of the request starts a new
    /// exchange, with a new key).
    #[error("provider temporarily refused: {reason}")]
    Retryable {
        /// Machine-readable reason, e.g. `STOCK_EXHAUSTED`.
        reason: String,
        /// When to try again, if the provider says.
        retry_after: Option<Duration>,
    },
    /// Maybe issued, maybe not (timeout, connection lost). giftx keeps the
    /// exchange PENDING and re-drives it with the same key.
    #[error("provider outcome unknown: {reason}")]
    Unknown {
        /// What happened, for logs.
        reason: String,
    },
}

impl ProviderError {
    /// A [`ProviderError::Rejected`].
    pub fn rejected(reason: impl Into<String>) -> Self {
        ProviderError::Rejected {
            reason: reason.into(),
        }
    }

    /// A [`ProviderError::Retryable`] without a hint.
    pub fn retryable(reason: impl Into<String>) -> Self {
        ProviderError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A [`ProviderError::Unknown`].
    pub fn unknown(reason: impl Into<String>) -> Self {
        ProviderError::Unknown {
            reason: reason.into(),
        }
    }

    /// The class name used in metrics and traces.
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Retryable { .. } => "retryable",
            ProviderError::Unknown { .. } => "unknown",
        }
    }
}

/// A provider giftx exchanges codes into. Implementations must be safe to
/// call concurrently, including for the same key.
#[async_trait]
pub trait ProviderAdapter: Send + Sync + 'static {
    /// What this adapter can and may do.
    fn capabilities(&self) -> Capabilities;

    /// Issues the deliverable for `req`, or returns the one already issued
    /// for `req.idempotency_key`.
    ///
    /// # Errors
    /// One of the three [`ProviderError`] classes.
    async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError>;

    /// The deliverable issued earlier for `idempotency_key`, or `None` if
    /// nothing was issued for it.
    ///
    /// # Errors
    /// `Unknown` or `Retryable` when the provider cannot say now.
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Deliverable>, ProviderError>;

    /// Checks, when a campaign is created with an option on this provider,
    /// that the provider can serve that option at all (e.g. the `select`
    /// provider's target campaign exists and takes new codes), so an option
    /// that would fail every exchange is refused at creation instead.
    /// `campaign` is the campaign being created. The default accepts.
    ///
    /// # Errors
    /// `Rejected` when the option can never work as configured
    /// (CreateCampaign then answers INVALID_ARGUMENT naming the option's
    /// `provider` field and the reason); `Retryable`/`Unknown` when the
    /// provider cannot tell now (CreateCampaign answers UNAVAILABLE).
    async fn check_option(&self, campaign: &CampaignId) -> Result<(), ProviderError> {
        let _ = campaign;
        Ok(())
    }

    /// Cancels what was issued for `idempotency_key`, where the provider
    /// allows it (see [`Capabilities::cancel`]).
    ///
    /// # Errors
    /// `Rejected` by default: cancelling is not supported.
    async fn cancel(&self, idempotency_key: &str) -> Result<(), ProviderError> {
        let _ = idempotency_key;
        Err(ProviderError::rejected("CANCEL_UNSUPPORTED"))
    }
}
