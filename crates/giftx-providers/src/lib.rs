//! giftx's built-in provider adapters, one module each, and the registry
//! that builds them from configuration.
//!
//! - [`simulated`]: an on-demand gift-code API simulator for demos and
//!   tests, with faults on demand ([`simulated::SimulatorControl`]).
//! - [`donation`]: records a donation, returns a receipt reference.
//! - [`shipment`]: deferred fulfilment: shipping orders to export and
//!   mark shipped ([`shipment::ShipmentOrders`]).
//! - [`stock`]: pre-purchased codes, imported and handed out once each
//!   ([`stock::StockInventory`]).
//! - [`select`]: the deliverable is a fresh giftx code in another campaign,
//!   stored by the host through [`select::SelectIssuer`].
//! - [`registry`]: [`ProviderConfig`] (`kind = "…"` + settings) and
//!   [`build`].
//!
//! Adapters get what they need from the [`Host`]; those that remember
//! things use its [`ProviderStore`] under their provider id.

use std::sync::Arc;

use giftx_core::{Clock, Secret, SystemClock};
use giftx_provider::{MemoryProviderStore, ProviderStore};

pub mod donation;
pub mod registry;
pub mod select;
pub mod shipment;
pub mod simulated;
pub mod stock;

mod record;
mod reference;

pub use registry::{BuildError, ProviderConfig, build};

/// The kind of code a code-issuing adapter hands out, as configured
/// (`deliverable = "gift_code"` or `"gift_id"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// A claim code ([`DeliverableKind::GiftCode`](giftx_core::model::DeliverableKind::GiftCode)).
    GiftCode,
    /// A gift ID + management number
    /// ([`DeliverableKind::GiftId`](giftx_core::model::DeliverableKind::GiftId)).
    GiftId,
}

impl From<CodeKind> for giftx_core::model::DeliverableKind {
    fn from(k: CodeKind) -> Self {
        match k {
            CodeKind::GiftCode => giftx_core::model::DeliverableKind::GiftCode,
            CodeKind::GiftId => giftx_core::model::DeliverableKind::GiftId,
        }
    }
}

/// What the host lends adapters.
#[derive(Clone)]
pub struct Host {
    /// Storage, namespaced by provider id (sealed at rest by the host).
    pub store: Arc<dyn ProviderStore>,
    /// Key for deterministic derivations (the `select` codes). Keep it
    /// stable across restarts and out of the ledger, e.g. derived from the
    /// HMAC key file; changing it changes what re-drives and re-displays
    /// of earlier select exchanges produce.
    pub secret: Secret,
    /// Where adapters read the time (order and receipt timestamps).
    pub clock: Arc<dyn Clock>,
    /// Stores select codes; required by `select` providers only.
    pub select: Option<Arc<dyn select::SelectIssuer>>,
    /// Where [`build`] registers each simulated provider's control handle.
    pub simulators: simulated::SimulatorControls,
}

impl Host {
    /// A host with `store` and derivation `secret`, the system clock, no
    /// select issuer.
    pub fn new(store: Arc<dyn ProviderStore>, secret: Secret) -> Self {
        Host {
            store,
            secret,
            clock: Arc::new(SystemClock),
            select: None,
            simulators: simulated::SimulatorControls::default(),
        }
    }

    /// A host on a fresh [`MemoryProviderStore`] with a random secret: for
    /// the embedded giftxd and tests, whose data dies with the process.
    ///
    /// # Errors
    /// When the operating system's CSPRNG fails.
    pub fn in_memory() -> Result<Self, getrandom::Error> {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Host::new(
            Arc::new(MemoryProviderStore::new()),
            Secret::new(key),
        ))
    }

    /// This host with `issuer` for select providers.
    #[must_use]
    pub fn with_select(mut self, issuer: Arc<dyn select::SelectIssuer>) -> Self {
        self.select = Some(issuer);
        self
    }

    /// This host reading time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("clock", &self.clock)
            .field("select", &self.select.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use giftx_core::model::ProviderId;
    use giftx_core::model::{CampaignId, OptionId};
    use giftx_core::{Currency, Money};
    use giftx_provider::{IssueRequest, ProviderStore, StoreError, Stored};

    pub fn jpy(n: i64) -> Money {
        Money::new(Currency::from_code("JPY").unwrap(), n)
    }

    pub fn request(key: &str, option: &str) -> IssueRequest {
        IssueRequest {
            idempotency_key: key.to_owned(),
            campaign: CampaignId::parse("campaign", "leak-2014").unwrap(),
            option: OptionId::parse("option", option).unwrap(),
            face_value: jpy(500),
            attempt: 1,
            shipping_address: Some(
                giftx_core::model::PostalAddress::parse("shipping_address", "1-1 Chiyoda, Tokyo")
                    .unwrap(),
            ),
        }
    }

    /// A store that does not answer.
    pub struct Down;

    #[async_trait::async_trait]
    impl ProviderStore for Down {
        async fn put_if_absent(
            &self,
            _: &ProviderId,
            _: &str,
            _: &[u8],
        ) -> Result<Stored, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn get(&self, _: &ProviderId, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn update(&self, _: &ProviderId, _: &str, _: &[u8]) -> Result<bool, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn list(
            &self,
            _: &ProviderId,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<giftx_provider::Entries, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn stock_add(
            &self,
            _: &ProviderId,
            _: &[giftx_provider::StockItem],
        ) -> Result<giftx_provider::StockAdded, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn stock_take(&self, _: &ProviderId, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn stock_get(&self, _: &ProviderId, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn stock_status(
            &self,
            _: &ProviderId,
        ) -> Result<giftx_provider::StockStatus, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
    }
}
