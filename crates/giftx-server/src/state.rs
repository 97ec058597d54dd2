//! What every service shares: the ledger, the keyed hasher, the clock, the
//! configuration, and a short-lived campaign cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use giftx_core::model::{Campaign, CampaignId};
use giftx_core::{Clock, DomainError, Hasher, KeyRing, Series, Timestamp};
use giftx_ledger::Ledger;
use tonic::Status;

use crate::auth::{Auth, Principal};
use crate::config::{Config, ProviderConfig};
use crate::exchanger::Exchanger;
use crate::providers::ProviderSet;
use crate::status::ApiError;

/// How long a cached campaign is trusted. Deadlines are enforced by the
/// ledger itself, so a stale copy only delays what callers are shown.
const CAMPAIGN_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct CampaignCache {
    by_id: HashMap<CampaignId, (Instant, Arc<Campaign>)>,
    by_series: HashMap<Series, (Instant, Arc<Campaign>)>,
}

/// The parts of [`AppState`] built over the ledger.
pub struct Engine {
    /// This process's lease token.
    pub instance_id: String,
    /// The exchange engine.
    pub exchanger: Arc<Exchanger>,
    /// The providers.
    pub provider_set: Arc<ProviderSet>,
    /// Keys, roles, limits, audit.
    pub auth: Arc<Auth>,
}

/// A token naming this process in leases: unique even for two giftxd in
/// one process (tests) or PID reuse across containers.
pub fn new_instance_id() -> String {
    let mut r = [0u8; 6];
    // A failing CSPRNG leaves zeros: the PID still tells processes apart.
    let _ = getrandom::fill(&mut r);
    format!("giftxd-{}-{}", std::process::id(), hex::encode(r))
}

/// The key of `keys` that `campaign`'s codes are hashed with. A campaign
/// created under a key this process lacks (a ring rolled out to some
/// replicas only) is logged and answered with a message for a retryable
/// error: hashing with another key would find nothing and count a wrong
/// try.
///
/// # Errors
/// The message naming the campaign and its key id.
pub fn campaign_hasher<'k>(keys: &'k KeyRing, campaign: &Campaign) -> Result<&'k Hasher, String> {
    keys.get(&campaign.spec.hmac_key).ok_or_else(|| {
        tracing::error!(
            campaign = %campaign.spec.id,
            hmac_key = %campaign.spec.hmac_key,
            "campaign hashed with an HMAC key this giftxd does not have; \
             roll the key ring out to every giftxd"
        );
        format!(
            "campaign {} is hashed with HMAC key {:?}, which this server does not have",
            campaign.spec.id, campaign.spec.hmac_key
        )
    })
}

/// Shared state, handed to every service as `Arc<AppState>`.
pub struct AppState {
    /// The ledger (Redis or embedded).
    pub ledger: Arc<dyn Ledger>,
    /// The HMAC keys of codes, login keys, emails, API keys and page
    /// tokens: the current one for what is new, each campaign's own for
    /// its codes.
    pub keys: KeyRing,
    /// Where time comes from (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
    /// The configuration giftxd started with.
    pub config: Arc<Config>,
    /// Configured providers by id (the defaults when none are configured).
    pub providers: Arc<BTreeMap<String, ProviderConfig>>,
    /// This process's token, for leases (`giftxd-<pid>-<random>`).
    pub instance_id: String,
    /// The exchange engine (claim → provider → complete/release).
    pub exchanger: Arc<Exchanger>,
    /// The provider adapters, their store and simulator handles.
    pub provider_set: Arc<ProviderSet>,
    /// Keys, roles, limits, audit.
    pub auth: Arc<Auth>,
    cache: Mutex<CampaignCache>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("clock", &self.clock)
            .field("config", &self.config)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Assembles the state from its parts (the ledger already open, the
    /// providers and the engine built over it).
    pub fn new(
        ledger: Arc<dyn Ledger>,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
        config: Config,
        engine: Engine,
    ) -> AppState {
        let providers = Arc::new(config.effective_providers());
        AppState {
            ledger,
            keys,
            clock,
            config: Arc::new(config),
            providers,
            instance_id: engine.instance_id,
            exchanger: engine.exchanger,
            provider_set: engine.provider_set,
            auth: engine.auth,
            cache: Mutex::new(CampaignCache::default()),
        }
    }

    /// The current instant, from the injected clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Turns any handler error into the gRPC status (the one mapping in
    /// [`crate::status`]), at the current time.
    pub fn status(&self, e: impl Into<ApiError>) -> Status {
        e.into().into_status(self.now())
    }

    /// The key `campaign`'s codes are hashed with; UNAVAILABLE when this
    /// process lacks it (the key ring is not rolled out here yet).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] naming the key.
    pub fn hasher_of(&self, campaign: &Campaign) -> Result<&Hasher, DomainError> {
        campaign_hasher(&self.keys, campaign).map_err(DomainError::Unavailable)
    }

    /// True when `id` is a configured provider.
    pub fn provider_configured(&self, id: &str) -> bool {
        self.providers.contains_key(id)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, CampaignCache> {
        // A poisoned cache is still a valid cache: entries are replaced whole.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a campaign in the cache (after creating or changing it).
    pub fn remember_campaign(&self, c: Campaign) -> Arc<Campaign> {
        let c = Arc::new(c);
        let now = Instant::now();
        let mut cache = self.cache();
        cache.by_id.insert(c.spec.id.clone(), (now, c.clone()));
        cache.by_series.insert(c.series, (now, c.clone()));
        c
    }

    /// Drops a campaign from the cache (after its deadline moved).
    pub fn invalidate_campaign(&self, id: &CampaignId) {
        let mut cache = self.cache();
        if let Some((_, c)) = cache.by_id.remove(id) {
            cache.by_series.remove(&c.series);
        }
    }

    /// A campaign by id, from the cache when fresh.
    ///
    /// # Errors
    /// NOT_FOUND (`CAMPAIGN_NOT_FOUND`), or the ledger's error.
    pub async fn campaign(&self, id: &CampaignId) -> Result<Arc<Campaign>, ApiError> {
        if let Some((at, c)) = self.cache().by_id.get(id)
            && at.elapsed() < CAMPAIGN_TTL
        {
            return Ok(c.clone());
        }
        match self.ledger.get_campaign(id).await? {
            Some(c) => Ok(self.remember_campaign(c)),
            None => Err(DomainError::CampaignNotFound.into()),
        }
    }

    /// A campaign by id, as `p` may see it: one of another tenant is
    /// NOT_FOUND, exactly as one that does not exist.
    ///
    /// # Errors
    /// As [`AppState::campaign`].
    pub async fn campaign_for(
        &self,
        p: &Principal,
        id: &CampaignId,
    ) -> Result<Arc<Campaign>, ApiError> {
        let c = self.campaign(id).await?;
        if p.reaches(&c.spec.tenant) {
            Ok(c)
        } else {
            Err(DomainError::CampaignNotFound.into())
        }
    }

    /// May `p` use provider `id` for its campaigns (a shared provider, or
    /// one of its tenant)? Operators of a tenant may import and read the
    /// stock of its own providers only; admins of any.
    pub fn provider_for(&self, p: &Principal, id: &str, for_stock: bool) -> bool {
        let Some(cfg) = self.providers.get(id) else {
            return false;
        };
        match (&cfg.tenant, p.scope()) {
            (_, None) => true,
            (Some(owner), Some(t)) => owner == t.as_str(),
            (None, Some(_)) => !for_stock,
        }
    }

    /// The campaign holding `series`, from the cache when fresh.
    ///
    /// # Errors
    /// The ledger's error.
    pub async fn campaign_by_series(
        &self,
        series: Series,
    ) -> Result<Option<Arc<Campaign>>, ApiError> {
        if let Some((at, c)) = self.cache().by_series.get(&series)
            && at.elapsed() < CAMPAIGN_TTL
        {
            return Ok(Some(c.clone()));
        }
        Ok(self
            .ledger
            .campaign_by_series(series)
            .await?
            .map(|c| self.remember_campaign(c)))
    }
}
