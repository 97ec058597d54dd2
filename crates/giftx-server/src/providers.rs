//! The configured providers: adapters built from `[providers.<id>]`, the
//! store they keep state in (sealed at rest), and the host services giftxd
//! lends them (the select gift's code issuer).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use giftx_core::model::{BatchId, BatchState, Campaign, CampaignId, ProviderId};
use giftx_core::{Clock, Code, Hasher, KeyRing, LoginKey, Secret};
use giftx_ledger::{CodeRef, Ledger, LedgerError, NewCode, Refusal};
use giftx_provider::{ProviderError, ProviderStore, SealedStore, StoreError};
use giftx_providers::select::{SelectIssuer, SelectTarget};
use giftx_providers::simulated::SimulatorControls;
use giftx_providers::{Host, ProviderConfig};

use crate::config::Config;
use crate::exchanger::ProviderMap;
use crate::sealer::Sealer;

/// Everything giftxd knows about its providers.
pub struct ProviderSet {
    /// Adapters by id.
    pub adapters: Arc<ProviderMap>,
    /// Each provider's parsed configuration.
    pub configs: BTreeMap<ProviderId, ProviderConfig>,
    /// The (sealed) store adapters keep state in; also used by the
    /// operations service (stock, shipments).
    pub store: Arc<dyn ProviderStore>,
    /// Control handles of simulated providers (tests, demos).
    pub simulators: SimulatorControls,
}

impl std::fmt::Debug for ProviderSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSet")
            .field("providers", &self.configs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why the providers could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderSetupError(pub String);

/// Builds every configured provider.
///
/// # Errors
/// [`ProviderSetupError`] naming the provider and setting at fault.
pub fn build(
    config: &Config,
    ledger: Arc<dyn Ledger>,
    keys: KeyRing,
    clock: Arc<dyn Clock>,
    backend: Arc<dyn ProviderStore>,
    sealer: Arc<Sealer>,
) -> Result<ProviderSet, ProviderSetupError> {
    let store: Arc<dyn ProviderStore> =
        Arc::new(SealedStore::new(backend, Arc::new(StoreSealer(sealer))));
    // The select gift derives its codes from the exchange key; the
    // derivation secret comes from the HMAC key ring's anchor (oldest) key
    // so it survives restarts and rotations and stays out of Redis.
    let secret = Secret::new(
        keys.anchor()
            .fingerprint(&[b"select-derivation-secret"])
            .0
            .to_vec(),
    );
    let issuer = Arc::new(LedgerSelectIssuer {
        ledger,
        keys,
        clock: clock.clone(),
    });
    let host = Host::new(store.clone(), secret)
        .with_clock(clock)
        .with_select(issuer);
    let mut adapters = ProviderMap::new();
    let mut configs = BTreeMap::new();
    for (id, raw) in config.effective_providers() {
        let pid = ProviderId::parse("providers", &id)
            .map_err(|v| ProviderSetupError(format!("[providers.{id}]: {}", v.description)))?;
        let mut table = raw.settings.clone();
        table.insert("kind".into(), toml::Value::String(raw.kind.clone()));
        let parsed: ProviderConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e| ProviderSetupError(format!("[providers.{id}]: {e}")))?;
        let adapter = giftx_providers::build(&pid, &parsed, &host)
            .map_err(|e| ProviderSetupError(e.to_string()))?;
        adapters.insert(pid.clone(), adapter);
        configs.insert(pid, parsed);
    }
    Ok(ProviderSet {
        adapters: Arc::new(adapters),
        configs,
        store,
        simulators: host.simulators.clone(),
    })
}

/// Seals provider-store values with the deliverable key ring.
struct StoreSealer(Arc<Sealer>);

impl giftx_provider::Sealer for StoreSealer {
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.0
            .seal_bytes(context, plaintext)
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.0
            .open_bytes(context, sealed)
            .map_err(|e| StoreError::Internal(e.to_string()))
    }
}

/// Stores select-gift codes in their campaign through the ledger.
///
/// Each select code gets its own one-code batch, named after the code's
/// hash, so storing is idempotent and an operator can void one select
/// gift like any batch.
struct LedgerSelectIssuer {
    ledger: Arc<dyn Ledger>,
    keys: KeyRing,
    clock: Arc<dyn Clock>,
}

fn unknown(e: LedgerError) -> ProviderError {
    ProviderError::unknown(format!("ledger: {e}"))
}

impl LedgerSelectIssuer {
    /// The key the select campaign's codes are hashed with; a retryable
    /// failure while this process lacks it.
    fn hasher_of(&self, c: &Campaign) -> Result<&Hasher, ProviderError> {
        crate::state::campaign_hasher(&self.keys, c).map_err(ProviderError::unknown)
    }

    fn batch_id(&self, code: &Code, attempt: u8) -> Result<BatchId, ProviderError> {
        // Under the anchor key: the same code names the same batch across
        // rotations.
        let d = self.keys.anchor().code(code);
        let id = format!("select-{}-{attempt}", hex::encode(&d.0[..10]));
        BatchId::parse("batch_id", &id).map_err(|v| ProviderError::unknown(v.description))
    }
}

#[async_trait]
impl SelectIssuer for LedgerSelectIssuer {
    async fn target(&self, campaign: &CampaignId) -> Result<SelectTarget, ProviderError> {
        let c = self
            .ledger
            .get_campaign(campaign)
            .await
            .map_err(unknown)?
            .ok_or_else(|| ProviderError::rejected("SELECT_CAMPAIGN_NOT_FOUND"))?;
        if c.spec.expire_time <= self.clock.now() {
            return Err(ProviderError::rejected("SELECT_CAMPAIGN_EXPIRED"));
        }
        Ok(SelectTarget {
            series: c.series,
            face_value: c.spec.face_value,
            expire_time: c.spec.expire_time,
        })
    }

    async fn store_code(
        &self,
        campaign: &CampaignId,
        code: &Code,
        login_key: &LoginKey,
    ) -> Result<(), ProviderError> {
        let c = self
            .ledger
            .get_campaign(campaign)
            .await
            .map_err(unknown)?
            .ok_or_else(|| ProviderError::rejected("SELECT_CAMPAIGN_NOT_FOUND"))?;
        let hasher = self.hasher_of(&c)?;
        let new = NewCode {
            code: hasher.code(code),
            login_key: hasher.login_key(code, login_key),
            serial: 1,
        };
        // A batch left open by a crash stalls and takes no more codes, so a
        // later attempt opens the next batch id.
        for attempt in 0..4u8 {
            if self.has_code(campaign, code, login_key).await? {
                return Ok(());
            }
            let now = self.clock.now();
            let bid = self.batch_id(code, attempt)?;
            let batch = match self.ledger.begin_batch(campaign, &bid, 1, now).await {
                Ok(b) => b,
                Err(LedgerError::Refused(Refusal::BatchExists)) => {
                    match self
                        .ledger
                        .get_batch(campaign, &bid, now)
                        .await
                        .map_err(unknown)?
                    {
                        Some(b) => b,
                        None => continue,
                    }
                }
                Err(LedgerError::Refused(Refusal::CampaignExpired)) => {
                    return Err(ProviderError::rejected("SELECT_CAMPAIGN_EXPIRED"));
                }
                Err(LedgerError::Refused(Refusal::CampaignNotFound)) => {
                    return Err(ProviderError::rejected("SELECT_CAMPAIGN_NOT_FOUND"));
                }
                Err(e) => return Err(unknown(e)),
            };
            if batch.state != BatchState::Issuing {
                continue;
            }
            match self.ledger.store_codes(&c, &batch, &[new], now).await {
                Ok(out) if out.collisions.is_empty() => {
                    let _ = self.ledger.finish_batch(campaign, &bid, true, now).await;
                    return Ok(());
                }
                Ok(_) => {
                    // The hash exists: stored earlier, or (never in
                    // practice) another code's hash.
                    let _ = self.ledger.finish_batch(campaign, &bid, false, now).await;
                    return if self.has_code(campaign, code, login_key).await? {
                        Ok(())
                    } else {
                        Err(ProviderError::rejected("SELECT_CODE_COLLISION"))
                    };
                }
                Err(LedgerError::Refused(Refusal::BatchClosed)) => continue,
                Err(e) => return Err(unknown(e)),
            }
        }
        Err(ProviderError::unknown("select code could not be stored"))
    }

    async fn has_code(
        &self,
        campaign: &CampaignId,
        code: &Code,
        login_key: &LoginKey,
    ) -> Result<bool, ProviderError> {
        let c = self
            .ledger
            .get_campaign(campaign)
            .await
            .map_err(unknown)?
            .ok_or_else(|| ProviderError::rejected("SELECT_CAMPAIGN_NOT_FOUND"))?;
        let hasher = self.hasher_of(&c)?;
        let r = CodeRef {
            series: code.series(),
            digest: hasher.code(code),
        };
        // The derived login key is right whenever the code exists, so this
        // never counts towards the lockout.
        match self
            .ledger
            .verify(r, hasher.login_key(code, login_key), self.clock.now())
            .await
        {
            Ok(_) | Err(LedgerError::Refused(Refusal::Locked { .. })) => Ok(true),
            Err(LedgerError::Refused(Refusal::LoginKeyMismatch)) => Ok(false),
            Err(e) => Err(unknown(e)),
        }
    }
}
