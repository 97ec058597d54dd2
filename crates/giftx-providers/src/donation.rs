//! `donation`: the holder gives the code's value to a fund. The adapter
//! records the donation in the host's store (once per idempotency key) and
//! returns a [`DeliverableKind::DonationReceipt`] whose `reference` is the
//! receipt number, stable across retries and re-displays.
//!
//! Store layout (namespace = provider id): `donation/<idempotency key>` →
//! [`Donation`] as JSON.

use std::sync::Arc;

use async_trait::async_trait;
use giftx_core::model::{Deliverable, DeliverableKind, ProviderId};
use giftx_core::{Clock, Timestamp};
use giftx_provider::{
    Capabilities, Fulfilment, IssueRequest, ProviderAdapter, ProviderError, ProviderStore,
};
use serde::{Deserialize, Serialize};

use crate::record::{self, MoneyRecord};
use crate::reference;

/// `[providers.<id>] kind = "donation"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DonationConfig {
    /// Receipt numbers start with this and a hyphen (1-8 of `A-Z0-9`).
    pub reference_prefix: String,
    /// Where a holder can see the fund's report, put in `redeem_url`.
    pub receipt_url: String,
}

impl Default for DonationConfig {
    fn default() -> Self {
        DonationConfig {
            reference_prefix: "DON".to_owned(),
            receipt_url: String::new(),
        }
    }
}

impl DonationConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// `(field, reason)` for a malformed prefix.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !reference::valid_prefix(&self.reference_prefix) {
            return Err(("reference_prefix", "must be 1-8 of A-Z and 0-9".to_owned()));
        }
        Ok(())
    }
}

/// One recorded donation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Donation {
    /// The receipt number.
    pub reference: String,
    /// The idempotency key it was recorded under.
    pub idempotency_key: String,
    /// The donating code's campaign.
    pub campaign: String,
    /// The option chosen.
    pub option: String,
    /// ISO 4217 currency of the amount.
    pub currency: String,
    /// The amount, in minor units.
    pub minor_units: i64,
    /// When it was recorded (ms since the epoch).
    pub create_time_ms: i64,
}

/// The donation adapter.
pub struct DonationProvider {
    id: ProviderId,
    config: DonationConfig,
    store: Arc<dyn ProviderStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DonationProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DonationProvider")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DonationProvider {
    /// A donation register `id` in `store`.
    pub fn new(
        id: ProviderId,
        config: DonationConfig,
        store: Arc<dyn ProviderStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        DonationProvider {
            id,
            config,
            store,
            clock,
        }
    }

    /// Donations recorded, in key order, `limit` at a time after the
    /// cursor `after` (the last page's `next`).
    ///
    /// # Errors
    /// `Unknown` when the store does not answer or a record is corrupt.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Donation>, Option<String>), ProviderError> {
        let page = self.store.list(&self.id, "donation/", after, limit).await?;
        let items = page
            .items
            .iter()
            .map(|(_, v)| record::decode(v))
            .collect::<Result<_, _>>()?;
        Ok((items, page.next))
    }

    fn deliverable(&self, d: &Donation) -> Result<Deliverable, ProviderError> {
        let value = MoneyRecord {
            currency: d.currency.clone(),
            minor_units: d.minor_units,
        }
        .to_money()?;
        Ok(Deliverable {
            kind: DeliverableKind::DonationReceipt,
            code: String::new(),
            pin: String::new(),
            value: Some(value),
            expire_time: None,
            redeem_url: self.config.receipt_url.clone(),
            reference: d.reference.clone(),
        })
    }
}

#[async_trait]
impl ProviderAdapter for DonationProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            store_deliverable: true,
            fulfilment: Fulfilment::Immediate,
            cancel: false,
        }
    }

    async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
        let fresh = Donation {
            reference: format!(
                "{}-{}",
                self.config.reference_prefix,
                reference::random_symbols(12)?
            ),
            idempotency_key: req.idempotency_key.clone(),
            campaign: req.campaign.to_string(),
            option: req.option.to_string(),
            currency: req.face_value.currency.code().to_owned(),
            minor_units: req.face_value.minor_units,
            create_time_ms: self.clock.now().millis(),
        };
        let key = format!("donation/{}", req.idempotency_key);
        let stored = self
            .store
            .put_if_absent(&self.id, &key, &record::encode(&fresh)?)
            .await?;
        self.deliverable(&record::decode(&stored.value)?)
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Deliverable>, ProviderError> {
        let key = format!("donation/{idempotency_key}");
        match self.store.get(&self.id, &key).await? {
            Some(v) => Ok(Some(self.deliverable(&record::decode(&v)?)?)),
            None => Ok(None),
        }
    }
}

impl Donation {
    /// When it was recorded.
    pub fn create_time(&self) -> Timestamp {
        Timestamp(self.create_time_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Down;
    use crate::testing::{jpy, request};
    use giftx_core::ManualClock;
    use giftx_provider::MemoryProviderStore;

    fn donation(store: Arc<dyn ProviderStore>) -> Arc<DonationProvider> {
        Arc::new(DonationProvider::new(
            ProviderId::parse("id", "kids-fund").unwrap(),
            DonationConfig::default(),
            store,
            Arc::new(ManualClock::new(Timestamp(1_418_000_000_000))),
        ))
    }

    #[tokio::test]
    async fn records_once_and_returns_a_stable_receipt() {
        let d = donation(Arc::new(MemoryProviderStore::new()));
        let r = d.issue(&request("k1", "donate")).await.unwrap();
        assert_eq!(r.kind, DeliverableKind::DonationReceipt);
        assert!(r.reference.starts_with("DON-"));
        assert_eq!(r.value, Some(jpy(500)));
        assert_eq!(d.issue(&request("k1", "donate")).await.unwrap(), r);
        assert_eq!(d.lookup("k1").await.unwrap(), Some(r.clone()));
        assert_eq!(d.lookup("k2").await.unwrap(), None);
        let other = d.issue(&request("k2", "donate")).await.unwrap();
        assert_ne!(other.reference, r.reference);
        let (all, next) = d.list(None, 10).await.unwrap();
        assert_eq!(next, None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].idempotency_key, "k1");
        assert_eq!(all[0].create_time(), Timestamp(1_418_000_000_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_retries_record_one_donation() {
        let d = donation(Arc::new(MemoryProviderStore::new()));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let d = d.clone();
            set.spawn(async move { d.issue(&request("same", "donate")).await });
        }
        let mut refs = std::collections::HashSet::new();
        while let Some(r) = set.join_next().await {
            refs.insert(r.unwrap().unwrap().reference);
        }
        assert_eq!(refs.len(), 1);
        assert_eq!(d.list(None, 1000).await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_unknown_outcome() {
        let d = donation(Arc::new(Down));
        assert_eq!(
            d.issue(&request("k", "donate")).await.unwrap_err().class(),
            "unknown"
        );
        assert_eq!(d.lookup("k").await.unwrap_err().class(), "unknown");
        assert!(
            DonationConfig {
                reference_prefix: "bad".into(),
                ..DonationConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
