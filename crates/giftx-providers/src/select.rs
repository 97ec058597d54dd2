//! `select`: the deliverable is a fresh giftx code (gift ID = code,
//! management number = login key, [`DeliverableKind::GiftId`]) in another
//! campaign, with its own options and deadline: a broker of brokers.
//!
//! Idempotency without storing plaintext: the code and login key are
//! derived from the host's secret, the target campaign and the idempotency
//! key ([`Code::derive`], [`LoginKey::derive`]); the host stores them (as
//! keyed hashes) through [`SelectIssuer::store_code`], which is
//! idempotent. A retry derives the same pair and stores it again (a no-op);
//! `lookup` re-derives it and asks the host whether it was stored. Nothing
//! giftx keeps can show the pair, so [`Capabilities::store_deliverable`] is
//! false and re-display re-derives.

use std::sync::Arc;

use async_trait::async_trait;
use giftx_core::model::{CampaignId, Deliverable, DeliverableKind, ProviderId};
use giftx_core::{Code, LoginKey, Money, Secret, Series, Timestamp};
use giftx_provider::{Capabilities, Fulfilment, IssueRequest, ProviderAdapter, ProviderError};
use serde::Deserialize;

/// `[providers.<id>] kind = "select"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// The campaign the select codes belong to (e.g. `"demo-select"`).
    pub campaign: String,
    /// Where holders exchange the select code, put in `redeem_url`.
    #[serde(default)]
    pub redeem_url: String,
}

/// What the adapter needs to know about the target campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectTarget {
    /// Its code series.
    pub series: Series,
    /// What each of its codes is worth.
    pub face_value: Money,
    /// Its deadline.
    pub expire_time: Timestamp,
}

/// The host side of the select gift: the server implements it on its
/// ledger.
#[async_trait]
pub trait SelectIssuer: Send + Sync + 'static {
    /// The target campaign's series, value and deadline.
    ///
    /// # Errors
    /// `Rejected` when the campaign does not exist or takes no new codes
    /// (past its deadline); `Retryable`/`Unknown` when the ledger does not
    /// answer.
    async fn target(&self, campaign: &CampaignId) -> Result<SelectTarget, ProviderError>;

    /// Stores `code` with `login_key` in `campaign`, as a fresh ACTIVE code.
    /// Idempotent: storing a pair already stored succeeds and changes
    /// nothing (whatever the code's state now: it may have been exchanged
    /// since).
    ///
    /// # Errors
    /// `Rejected` when the campaign refuses new codes, or the code exists
    /// with another login key (a derivation collision: never in practice);
    /// `Unknown` when the ledger does not answer.
    async fn store_code(
        &self,
        campaign: &CampaignId,
        code: &Code,
        login_key: &LoginKey,
    ) -> Result<(), ProviderError>;

    /// Whether `code` with `login_key` was stored in `campaign` (in any
    /// state). Must not count towards the code's login-key lockout.
    ///
    /// # Errors
    /// `Retryable`/`Unknown` when the ledger does not answer.
    async fn has_code(
        &self,
        campaign: &CampaignId,
        code: &Code,
        login_key: &LoginKey,
    ) -> Result<bool, ProviderError>;
}

/// The select adapter.
pub struct SelectProvider {
    id: ProviderId,
    campaign: CampaignId,
    redeem_url: String,
    secret: Secret,
    issuer: Arc<dyn SelectIssuer>,
}

impl std::fmt::Debug for SelectProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectProvider")
            .field("id", &self.id)
            .field("campaign", &self.campaign)
            .finish_non_exhaustive()
    }
}

impl SelectProvider {
    /// A select provider `id` issuing codes of `campaign` through `issuer`,
    /// deriving them with `secret`.
    pub fn new(
        id: ProviderId,
        campaign: CampaignId,
        redeem_url: String,
        secret: Secret,
        issuer: Arc<dyn SelectIssuer>,
    ) -> Self {
        SelectProvider {
            id,
            campaign,
            redeem_url,
            secret,
            issuer,
        }
    }

    /// The code and login key for `idempotency_key` in a campaign of
    /// `series`.
    fn derive(&self, series: Series, idempotency_key: &str) -> (Code, LoginKey) {
        let mut input = Vec::new();
        for part in [
            self.id.as_str().as_bytes(),
            self.campaign.as_str().as_bytes(),
            idempotency_key.as_bytes(),
        ] {
            input.extend((part.len() as u64).to_be_bytes());
            input.extend(part);
        }
        (
            Code::derive(series, &self.secret, &input),
            LoginKey::derive(&self.secret, &input),
        )
    }

    fn deliverable(&self, t: &SelectTarget, code: &Code, key: &LoginKey) -> Deliverable {
        Deliverable {
            kind: DeliverableKind::GiftId,
            code: code.printed(),
            pin: key.printed(),
            value: Some(t.face_value),
            expire_time: Some(t.expire_time),
            redeem_url: self.redeem_url.clone(),
            reference: format!("campaigns/{}", self.campaign),
        }
    }
}

#[async_trait]
impl ProviderAdapter for SelectProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            store_deliverable: false,
            fulfilment: Fulfilment::Immediate,
            cancel: false,
        }
    }

    async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
        let t = self.issuer.target(&self.campaign).await?;
        let (code, key) = self.derive(t.series, &req.idempotency_key);
        self.issuer.store_code(&self.campaign, &code, &key).await?;
        Ok(self.deliverable(&t, &code, &key))
    }

    /// The target campaign must exist and take new codes (past its
    /// deadline it refuses them), or every exchange of the option fails.
    async fn check_option(&self, campaign: &CampaignId) -> Result<(), ProviderError> {
        let _ = campaign;
        self.issuer.target(&self.campaign).await.map(|_| ())
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Deliverable>, ProviderError> {
        let t = self.issuer.target(&self.campaign).await?;
        let (code, key) = self.derive(t.series, idempotency_key);
        if self.issuer.has_code(&self.campaign, &code, &key).await? {
            Ok(Some(self.deliverable(&t, &code, &key)))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{jpy, request};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A ledger stand-in: code → login key, per campaign.
    #[derive(Default)]
    struct FakeLedger {
        codes: Mutex<HashMap<(String, String), String>>,
        store_calls: AtomicU64,
        down: AtomicBool,
    }

    #[async_trait]
    impl SelectIssuer for FakeLedger {
        async fn target(&self, campaign: &CampaignId) -> Result<SelectTarget, ProviderError> {
            if campaign.as_str() != "demo-select" {
                return Err(ProviderError::rejected("CAMPAIGN_NOT_FOUND"));
            }
            Ok(SelectTarget {
                series: Series::from_index(42).unwrap(),
                face_value: jpy(500),
                expire_time: Timestamp(1_450_000_000_000),
            })
        }

        async fn store_code(
            &self,
            campaign: &CampaignId,
            code: &Code,
            login_key: &LoginKey,
        ) -> Result<(), ProviderError> {
            self.store_calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(ProviderError::unknown("ledger timed out"));
            }
            let mut codes = self.codes.lock().unwrap();
            let k = (campaign.to_string(), code.canonical().to_owned());
            match codes.get(&k) {
                Some(l) if l != login_key.canonical() => {
                    Err(ProviderError::rejected("CODE_EXISTS"))
                }
                _ => {
                    codes.insert(k, login_key.canonical().to_owned());
                    Ok(())
                }
            }
        }

        async fn has_code(
            &self,
            campaign: &CampaignId,
            code: &Code,
            login_key: &LoginKey,
        ) -> Result<bool, ProviderError> {
            let codes = self.codes.lock().unwrap();
            let k = (campaign.to_string(), code.canonical().to_owned());
            Ok(codes.get(&k).is_some_and(|l| l == login_key.canonical()))
        }
    }

    fn select(ledger: Arc<FakeLedger>, campaign: &str, secret: u8) -> Arc<SelectProvider> {
        Arc::new(SelectProvider::new(
            ProviderId::parse("id", "select").unwrap(),
            CampaignId::parse("campaign", campaign).unwrap(),
            "https://select.example/exchange".into(),
            Secret::new(vec![secret; 32]),
            ledger,
        ))
    }

    #[tokio::test]
    async fn issues_a_parseable_code_of_the_target_campaign_idempotently() {
        let ledger = Arc::new(FakeLedger::default());
        let s = select(ledger.clone(), "demo-select", 1);
        assert!(!s.capabilities().store_deliverable);
        assert_eq!(s.lookup("k1").await.unwrap(), None);
        let d = s.issue(&request("k1", "select")).await.unwrap();
        assert_eq!(d.kind, DeliverableKind::GiftId);
        let code = Code::parse(&d.code).unwrap();
        let key = LoginKey::parse(&d.pin).unwrap();
        assert_eq!(code.series().index(), 42);
        assert_eq!(d.value, Some(jpy(500)));
        assert_eq!(d.expire_time, Some(Timestamp(1_450_000_000_000)));
        assert_eq!(d.reference, "campaigns/demo-select");
        assert_eq!(ledger.codes.lock().unwrap().len(), 1);
        assert!(ledger.has_code(&s.campaign, &code, &key).await.unwrap());
        // Retries and lookups re-derive the same pair; nothing new stored.
        assert_eq!(s.issue(&request("k1", "select")).await.unwrap(), d);
        assert_eq!(s.lookup("k1").await.unwrap(), Some(d.clone()));
        assert_eq!(ledger.codes.lock().unwrap().len(), 1);
        let other = s.issue(&request("k2", "select")).await.unwrap();
        assert_ne!((other.code, other.pin), (d.code.clone(), d.pin.clone()));
        // Another secret derives other codes (the secret is what makes
        // them unguessable).
        let s2 = select(ledger.clone(), "demo-select", 2);
        assert_ne!(
            s2.issue(&request("k1", "select")).await.unwrap().code,
            d.code
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_issues_with_one_key_store_one_code() {
        let ledger = Arc::new(FakeLedger::default());
        let s = select(ledger.clone(), "demo-select", 1);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let s = s.clone();
            set.spawn(async move { s.issue(&request("same", "select")).await });
        }
        let mut codes = std::collections::HashSet::new();
        while let Some(r) = set.join_next().await {
            codes.insert(r.unwrap().unwrap().code);
        }
        assert_eq!(codes.len(), 1);
        assert_eq!(ledger.codes.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn host_errors_keep_their_class() {
        let ledger = Arc::new(FakeLedger::default());
        let missing = select(ledger.clone(), "no-such-campaign", 1);
        assert_eq!(
            missing.issue(&request("k", "select")).await,
            Err(ProviderError::rejected("CAMPAIGN_NOT_FOUND"))
        );
        let s = select(ledger.clone(), "demo-select", 1);
        ledger.down.store(true, Ordering::SeqCst);
        assert_eq!(
            s.issue(&request("k", "select")).await.unwrap_err().class(),
            "unknown"
        );
        assert_eq!(s.lookup("k").await.unwrap(), None);
        ledger.down.store(false, Ordering::SeqCst);
        let d = s.issue(&request("k", "select")).await.unwrap();
        assert_eq!(s.lookup("k").await.unwrap(), Some(d));
        assert_eq!(ledger.store_calls.load(Ordering::SeqCst), 2);
    }
}
