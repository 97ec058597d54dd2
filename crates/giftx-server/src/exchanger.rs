//! The exchange engine: claim in the ledger, call the provider, complete or
//! release, all idempotent; and the same machinery re-drives exchanges whose
//! outcome was unknown (reconciliation).
//!
//! The at-most-once guarantee rests on two things: the ledger's claim is
//! the only way a code becomes PENDING (one atomic script, one winner), and
//! every provider call for an exchange uses the same idempotency key
//! (`ExchangeId::provider_key`), so a re-drive after a crash or timeout can
//! only find or re-issue the same deliverable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use giftx_core::model::{
    Campaign, CampaignId, CodeState, Deliverable, ExchangeState, PostalAddress, ProviderId,
    TenantId,
};
use giftx_core::{Clock, Code, DomainError, Hasher, KeyRing, LoginKey, Series, Timestamp};
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, ExchangeId, ExchangeRecord, Lease, Ledger, LedgerError,
    Preferences, Refusal,
};
use giftx_provider::{Fulfilment, IssueRequest, ProviderAdapter, ProviderError};
use tokio::sync::Notify;
use tracing::{Instrument, info_span, warn};

use crate::sealer::Sealer;

/// The configured providers, by id.
pub type ProviderMap = HashMap<ProviderId, Arc<dyn ProviderAdapter>>;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct ExchangeSettings {
    /// Deadline of one provider call; past it the outcome is unknown.
    pub provider_timeout: Duration,
    /// How long a driver holds an exchange before a reconciler may take it.
    pub lease: Duration,
    /// How long a duplicate request waits for an in-flight one.
    pub duplicate_wait: Duration,
    /// First retry delay after an unknown outcome; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Attempts after which the reconciler parks an exchange.
    pub max_attempts: u32,
}

impl Default for ExchangeSettings {
    fn default() -> Self {
        ExchangeSettings {
            provider_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            duplicate_wait: Duration::from_secs(5),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(15 * 60),
            max_attempts: 12,
        }
    }
}

/// An exchange as shown to callers: the record, its campaign, and the
/// deliverable opened (or looked up again at the provider).
#[derive(Clone, Debug)]
pub struct ExchangeView {
    /// The ledger's record.
    pub record: ExchangeRecord,
    /// The code's campaign.
    pub campaign: CampaignId,
    /// What was delivered (SUCCEEDED only).
    pub deliverable: Option<Deliverable>,
}

/// What VerifyCode answers.
#[derive(Clone, Debug)]
pub struct CodeStatus {
    /// The code's campaign (shared with the engine's cache).
    pub campaign: Arc<Campaign>,
    /// Its state now.
    pub state: CodeState,
    /// Its latest exchange.
    pub exchange: Option<ExchangeView>,
}

/// A validated Exchange request.
#[derive(Clone, Debug)]
pub struct ExchangeInput {
    /// The code.
    pub code: Code,
    /// Its login key.
    pub login_key: LoginKey,
    /// The option chosen (validated against the campaign here).
    pub option_id: String,
    /// The caller's idempotency key.
    pub request_id: String,
    /// Optional contact email.
    pub contact_email: Option<String>,
    /// Preferences.
    pub preferences: Preferences,
    /// Where to mail the goods: required for (and only for) an option whose
    /// provider ships goods (deferred fulfilment).
    pub shipping_address: Option<PostalAddress>,
    /// The caller's tenant, when it is limited to one: a code of another
    /// tenant's campaign is then a code that does not exist.
    pub scope: Option<TenantId>,
}

/// How a re-drive ended, for the reconciler's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveOutcome {
    /// Deliverable issued and recorded.
    Succeeded,
    /// Provider refused; code ACTIVE again.
    Failed,
    /// Provider refused for now (`Retryable`: stock out, outage) before it
    /// issued anything; exchange FAILED, code ACTIVE again, and the same
    /// request may claim the code again later.
    Released,
    /// Still unknown; retried later.
    Deferred,
    /// Parked for an operator.
    Parked,
    /// Someone else is driving it.
    Busy,
    /// It had already ended.
    AlreadyFinished,
}

/// The exchange engine. Cheap to share behind an `Arc`.
pub struct Exchanger {
    ledger: Arc<dyn Ledger>,
    keys: KeyRing,
    clock: Arc<dyn Clock>,
    providers: Arc<ProviderMap>,
    sealer: Arc<Sealer>,
    settings: ExchangeSettings,
    /// This process's lease holder name.
    holder: String,
    /// Wakes duplicate requests waiting on an exchange this process drives.
    inflight: Mutex<HashMap<ExchangeId, Arc<Notify>>>,
    /// Campaigns by series, briefly cached: the hot path reads them per call.
    campaigns: Mutex<CampaignCache>,
}

const CAMPAIGN_CACHE_TTL: Duration = Duration::from_secs(1);

/// One load of the campaign of a series; callers finding it in flight
/// wait for its answer instead of loading again.
type CampaignFlight = tokio::sync::OnceCell<Result<Option<Arc<Campaign>>, DomainError>>;

/// Campaigns (and misses) by series for [`CAMPAIGN_CACHE_TTL`], reloaded
/// single-flight: when an entry lapses under load, one caller reloads it
/// and the others in flight wait for that load instead of each sending
/// their own (a stampede of HGET + HGETALL every second).
#[derive(Default)]
struct CampaignCache {
    entries: HashMap<Series, (Option<Arc<Campaign>>, std::time::Instant)>,
    /// At most one per series (1,024 of them), so bounded.
    loading: HashMap<Series, Arc<CampaignFlight>>,
}

fn ledger_error(e: LedgerError) -> DomainError {
    match e {
        LedgerError::Refused(r) => refusal(r),
        LedgerError::Unavailable(m) => DomainError::Unavailable(m),
        LedgerError::Internal(m) => DomainError::Internal(m),
    }
}

fn refusal(r: Refusal) -> DomainError {
    match r {
        Refusal::LoginKeyMismatch => DomainError::LoginKeyMismatch,
        Refusal::Locked { until } => DomainError::CodeLocked { until },
        Refusal::Expired => DomainError::CodeExpired,
        Refusal::Void => DomainError::CodeVoid,
        Refusal::AlreadyRedeemed => DomainError::CodeAlreadyRedeemed,
        Refusal::InFlight | Refusal::Leased => DomainError::ExchangeInFlight,
        Refusal::RequestIdReused => DomainError::RequestIdReused,
        Refusal::TooManyAttempts => DomainError::TooManyAttempts,
        Refusal::CampaignNotFound => DomainError::CampaignNotFound,
        Refusal::BatchNotFound => DomainError::BatchNotFound,
        Refusal::ExchangeNotFound => DomainError::ExchangeNotFound,
        other => DomainError::Internal(format!("unexpected ledger refusal: {other}")),
    }
}

impl Exchanger {
    /// An engine over these parts. `holder` names this process in leases.
    pub fn new(
        ledger: Arc<dyn Ledger>,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
        providers: Arc<ProviderMap>,
        sealer: Arc<Sealer>,
        settings: ExchangeSettings,
        holder: String,
    ) -> Self {
        Exchanger {
            ledger,
            keys,
            clock,
            providers,
            sealer,
            settings,
            holder,
            inflight: Mutex::new(HashMap::new()),
            campaigns: Mutex::new(CampaignCache::default()),
        }
    }

    /// Does `provider` mail goods (deferred fulfilment), so an exchange
    /// for it needs a shipping address?
    pub fn ships_goods(&self, provider: &ProviderId) -> bool {
        self.providers
            .get(provider)
            .is_some_and(|p| p.capabilities().fulfilment == Fulfilment::Deferred)
    }

    /// The engine's settings.
    pub fn settings(&self) -> &ExchangeSettings {
        &self.settings
    }

    /// The code as the ledger is asked about it, and the key its login
    /// key and request ids are hashed with: its campaign's
    /// ([`CampaignSpec::hmac_key`](giftx_core::model::CampaignSpec)), the
    /// current key when no campaign has its series. For a caller limited
    /// to `scope`, a code of another tenant's campaign is looked up under
    /// a hash no stored code has ([`Hasher::foreign_code`]): the ledger
    /// then answers, counts wrong tries and locks exactly as for a code
    /// that does not exist, and the owner's code is never touched. The
    /// campaign is read (from the cache) for every call, existing or not,
    /// so both cost the same.
    async fn code_ref(
        &self,
        code: &Code,
        scope: Option<&TenantId>,
    ) -> Result<(CodeRef, &Hasher), DomainError> {
        let campaign = self.campaign_by_series(code.series()).await?;
        let (digest, hasher) = match (&campaign, scope) {
            (Some(c), Some(t)) if &c.spec.tenant != t => {
                let h = self.keys.current();
                (h.foreign_code(code, t.as_str()), h)
            }
            (Some(c), _) => {
                let h = self.hasher_of(c)?;
                (h.code(code), h)
            }
            (None, _) => (self.keys.current().code(code), self.keys.current()),
        };
        Ok((
            CodeRef {
                series: code.series(),
                digest,
            },
            hasher,
        ))
    }

    /// The key `campaign`'s codes are hashed with
    /// ([`crate::state::campaign_hasher`]).
    fn hasher_of(&self, campaign: &Campaign) -> Result<&Hasher, DomainError> {
        crate::state::campaign_hasher(&self.keys, campaign).map_err(DomainError::Unavailable)
    }

    fn lease(&self, now: Timestamp) -> Lease {
        Lease {
            holder: self.holder.clone(),
            until: now.plus(self.settings.lease),
        }
    }

    fn campaign_cache(&self) -> std::sync::MutexGuard<'_, CampaignCache> {
        // Entries are replaced whole: a poisoned cache is still valid.
        self.campaigns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn campaign_by_series(
        &self,
        series: Series,
    ) -> Result<Option<Arc<Campaign>>, DomainError> {
        // Misses are cached too: an unknown code must cost what a wrong
        // login key costs, or response times would tell them apart.
        let flight = {
            let mut cache = self.campaign_cache();
            if let Some((c, at)) = cache.entries.get(&series)
                && at.elapsed() < CAMPAIGN_CACHE_TTL
            {
                return Ok(c.clone());
            }
            let flight = cache.loading.entry(series).or_default();
            if flight.initialized() {
                // Finished but not yet retired, and its entry has lapsed
                // (or it failed): load again.
                *flight = Arc::default();
            }
            flight.clone()
        };
        let result = flight
            .get_or_init(|| async {
                let found = self
                    .ledger
                    .campaign_by_series(series)
                    .await
                    .map_err(ledger_error)?
                    .map(Arc::new);
                self.campaign_cache()
                    .entries
                    .insert(series, (found.clone(), std::time::Instant::now()));
                Ok(found)
            })
            .await;
        {
            // The first caller back retires the flight.
            let mut cache = self.campaign_cache();
            if cache
                .loading
                .get(&series)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                cache.loading.remove(&series);
            }
        }
        result.clone()
    }

    async fn campaign_of(&self, series: Series) -> Result<Arc<Campaign>, DomainError> {
        // A code whose series has no campaign cannot have passed the ledger's
        // login check, so this only fails on a racing campaign deletion.
        self.campaign_by_series(series)
            .await?
            .ok_or(DomainError::LoginKeyMismatch)
    }

    fn provider(&self, id: &ProviderId) -> Result<Arc<dyn ProviderAdapter>, DomainError> {
        self.providers.get(id).cloned().ok_or_else(|| {
            DomainError::Unavailable(format!("provider {id} is not configured on this server"))
        })
    }

    /// VerifyCode.
    ///
    /// # Errors
    /// `LoginKeyMismatch`, `CodeLocked`, `Unavailable`.
    pub async fn verify(
        &self,
        code: &Code,
        key: &LoginKey,
        scope: Option<&TenantId>,
    ) -> Result<CodeStatus, DomainError> {
        let (code_ref, hasher) = self.code_ref(code, scope).await?;
        let now = self.clock.now();
        // The ledger is asked even when the series is unknown, so an unknown
        // code costs the same as a wrong login key.
        let view = self
            .ledger
            .verify(code_ref, hasher.login_key(code, key), now)
            .await
            .map_err(ledger_error)?;
        let campaign = self.campaign_of(code.series()).await?;
        record_campaign(&campaign, None);
        let exchange = match view.latest_exchange {
            Some(r) => Some(self.view(&campaign, r).await?),
            None => None,
        };
        Ok(CodeStatus {
            campaign,
            state: view.state,
            exchange,
        })
    }

    /// GetExchange: the code's latest exchange.
    ///
    /// # Errors
    /// `LoginKeyMismatch`, `CodeLocked`, `ExchangeNotFound`, `Unavailable`.
    pub async fn latest(
        &self,
        code: &Code,
        key: &LoginKey,
        scope: Option<&TenantId>,
    ) -> Result<ExchangeView, DomainError> {
        let (code_ref, hasher) = self.code_ref(code, scope).await?;
        let now = self.clock.now();
        let rec = self
            .ledger
            .latest_exchange(code_ref, hasher.login_key(code, key), now)
            .await
            .map_err(ledger_error)?;
        let campaign = self.campaign_of(code.series()).await?;
        record_campaign(&campaign, Some(rec.option.as_str()));
        self.view(&campaign, rec).await
    }

    /// Exchange: claim, call the provider, complete or release.
    ///
    /// # Errors
    /// Every refusal of the claim; `InvalidArgument` for an option the
    /// campaign does not have; `ExchangeInFlight` when a duplicate is still
    /// in flight after waiting; `StockExhausted`/`Unavailable` when the
    /// provider could not serve now: the exchange FAILED (retryably), the
    /// code is ACTIVE again, and the same request may be retried later.
    pub async fn exchange(
        self: &Arc<Self>,
        input: ExchangeInput,
    ) -> Result<ExchangeView, DomainError> {
        let now = self.clock.now();
        let (code_ref, hasher) = self.code_ref(&input.code, input.scope.as_ref()).await?;
        let login = hasher.login_key(&input.code, &input.login_key);
        let found = self
            .campaign_by_series(input.code.series())
            .await?
            .and_then(|c| {
                let option = c.option(&input.option_id)?.id.clone();
                Some((c, option))
            });
        let Some((campaign, option)) = found else {
            // Check the credentials first so this answer reveals nothing
            // about codes the caller does not hold.
            self.ledger
                .verify(code_ref, login, now)
                .await
                .map_err(ledger_error)?;
            return Err(DomainError::invalid(
                "option_id",
                "not an option of this code's campaign",
            ));
        };
        record_campaign(&campaign, Some(option.as_str()));
        let ships = campaign
            .option(option.as_str())
            .is_some_and(|o| self.ships_goods(&o.provider));
        let address_error = match (ships, &input.shipping_address) {
            (true, None) => Some("is required: this option mails goods to the holder"),
            (false, Some(_)) => Some("must be empty: this option mails nothing"),
            _ => None,
        };
        if let Some(why) = address_error {
            // Credentials first, as for an unknown option.
            self.ledger
                .verify(code_ref, login, now)
                .await
                .map_err(ledger_error)?;
            return Err(DomainError::invalid("shipping_address", why));
        }
        let contact = input.contact_email.as_deref().map(|e| hasher.email(e));
        let prefs = input.preferences;
        let mut parts: Vec<&[u8]> = vec![
            input.option_id.as_bytes(),
            contact.as_ref().map_or(&[][..], |d| &d.0[..]),
        ];
        let flags = [
            u8::from(prefs.delete_personal_data),
            u8::from(prefs.stop_mail),
        ];
        parts.push(&flags);
        // Only when given, so fingerprints of requests without an address
        // stay what they were.
        if let Some(a) = &input.shipping_address {
            parts.push(a.as_str().as_bytes());
        }
        let fingerprint = hasher.fingerprint(&parts);
        let req = ClaimRequest {
            code: code_ref,
            login_key: login,
            option,
            request: hasher.request_id(&input.code, &input.request_id),
            fingerprint,
            contact,
            preferences: prefs,
            lease: self.lease(now),
        };
        match self.ledger.claim(&req, now).await.map_err(ledger_error)? {
            ClaimOutcome::Claimed(rec) => {
                // The provider call runs in its own task, so a caller that
                // hangs up does not abandon it half-way (which would leave
                // the exchange to the reconciler for no reason).
                let me = Arc::clone(self);
                let guard = InflightGuard::register(Arc::clone(self), rec.id.clone());
                let address = input.shipping_address;
                let task = tokio::spawn(
                    async move {
                        let _guard = guard;
                        me.drive(&campaign, rec, false, address.as_ref()).await
                    }
                    // The RPC's span stays the parent of the provider call.
                    .in_current_span(),
                );
                match task.await {
                    Ok(result) => answer(result),
                    Err(e) => Err(DomainError::Internal(format!("exchange task failed: {e}"))),
                }
            }
            ClaimOutcome::Existing(rec) => {
                self.existing(&campaign, rec, input.shipping_address.as_ref())
                    .await
            }
        }
    }

    /// A repeated request: wait for an in-flight exchange, take over one
    /// whose driver has gone, or return the settled result.
    /// `address` is the repeated request's (its fingerprint matched, so it
    /// is the original request's address).
    async fn existing(
        &self,
        campaign: &Campaign,
        rec: ExchangeRecord,
        address: Option<&PostalAddress>,
    ) -> Result<ExchangeView, DomainError> {
        if rec.state != ExchangeState::Pending {
            return self.view(campaign, rec).await;
        }
        let rec = self.wait_settled(rec).await?;
        let now = self.clock.now();
        // Settled, parked for an operator, or waiting out its backoff after
        // an unknown outcome: show it as it is. A retry must not hammer a
        // provider that the reconciler is deliberately leaving alone.
        if rec.state != ExchangeState::Pending || rec.parked || rec.next_attempt_time > now {
            return self.view(campaign, rec).await;
        }
        // Still PENDING and due: drive it ourselves if its lease has lapsed.
        match self
            .ledger
            .begin_attempt(&rec.id, &self.lease(now), now)
            .await
        {
            Ok(rec) => answer(self.drive(campaign, rec, true, address).await),
            Err(LedgerError::Refused(Refusal::Leased)) => Err(DomainError::ExchangeInFlight),
            Err(LedgerError::Refused(Refusal::ExchangeFinished)) => {
                let rec = self
                    .ledger
                    .get_exchange(&rec.id)
                    .await
                    .map_err(ledger_error)?
                    .ok_or(DomainError::ExchangeNotFound)?;
                self.view(campaign, rec).await
            }
            Err(e) => Err(ledger_error(e)),
        }
    }

    async fn wait_settled(&self, rec: ExchangeRecord) -> Result<ExchangeRecord, DomainError> {
        let notify = self
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.get(&rec.id).cloned());
        let deadline = tokio::time::Instant::now() + self.settings.duplicate_wait;
        let mut current = rec;
        loop {
            // A deferred exchange (unknown outcome) has no driver to wait for.
            if current.state != ExchangeState::Pending
                || current.next_attempt_time > Timestamp(0)
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(current);
            }
            let step = Duration::from_millis(50);
            match &notify {
                Some(n) => {
                    let _ = tokio::time::timeout(step, n.notified()).await;
                }
                None => tokio::time::sleep(step).await,
            }
            current = self
                .ledger
                .get_exchange(&current.id)
                .await
                .map_err(ledger_error)?
                .ok_or(DomainError::ExchangeNotFound)?;
        }
    }

    /// Re-drives a PENDING exchange now (ReconcileExchange and the
    /// reconciler).
    ///
    /// # Errors
    /// `ExchangeNotFound`, `ExchangeInFlight` (someone else drives it),
    /// `Unavailable`.
    pub async fn reconcile(
        &self,
        id: &ExchangeId,
    ) -> Result<(ExchangeView, DriveOutcome), DomainError> {
        let rec = self
            .ledger
            .get_exchange(id)
            .await
            .map_err(ledger_error)?
            .ok_or(DomainError::ExchangeNotFound)?;
        let campaign = self.campaign_of(rec.series).await?;
        if rec.state != ExchangeState::Pending {
            return Ok((
                self.view(&campaign, rec).await?,
                DriveOutcome::AlreadyFinished,
            ));
        }
        let now = self.clock.now();
        let rec = match self.ledger.begin_attempt(id, &self.lease(now), now).await {
            Ok(r) => r,
            Err(LedgerError::Refused(Refusal::ExchangeFinished)) => {
                let rec = self
                    .ledger
                    .get_exchange(id)
                    .await
                    .map_err(ledger_error)?
                    .ok_or(DomainError::ExchangeNotFound)?;
                return Ok((
                    self.view(&campaign, rec).await?,
                    DriveOutcome::AlreadyFinished,
                ));
            }
            Err(e) => return Err(ledger_error(e)),
        };
        // The reconciler has no address: a shipping adapter finds the order
        // the first call made, or defers.
        match self.drive(&campaign, rec, true, None).await {
            Ok(v) => Ok(v),
            // The reconciler treats "provider can't serve now" as deferred.
            Err(DomainError::StockExhausted | DomainError::Unavailable(_)) => {
                let rec = self
                    .ledger
                    .get_exchange(id)
                    .await
                    .map_err(ledger_error)?
                    .ok_or(DomainError::ExchangeNotFound)?;
                let outcome = if rec.parked {
                    DriveOutcome::Parked
                } else {
                    DriveOutcome::Deferred
                };
                Ok((self.view(&campaign, rec).await?, outcome))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::drive_attempt`], counted in `giftx_exchanges_total`: each
    /// exchange once as `succeeded` or `failed` when it ends, and once as
    /// `pending` when its first attempt leaves it unresolved.
    async fn drive(
        &self,
        campaign: &Campaign,
        rec: ExchangeRecord,
        redrive: bool,
        address: Option<&PostalAddress>,
    ) -> Result<(ExchangeView, DriveOutcome), DomainError> {
        let option = rec.option.clone();
        let res = self.drive_attempt(campaign, rec, redrive, address).await;
        let outcome = match &res {
            Ok((_, DriveOutcome::Succeeded)) => Some("succeeded"),
            Ok((_, DriveOutcome::Failed | DriveOutcome::Released)) => Some("failed"),
            _ if !redrive => Some("pending"),
            _ => None,
        };
        if let Some(o) = outcome {
            crate::metrics::global().exchange(option.as_str(), o);
        }
        res
    }

    /// One provider attempt for an exchange this process holds the lease
    /// of. `redrive` looks the key up at the provider before issuing.
    ///
    /// What the provider answers decides: a deliverable completes the
    /// exchange; `Rejected` releases it (FAILED, code ACTIVE); `Retryable`
    /// from `issue` (nothing was issued, and on a re-drive the lookup found
    /// nothing) releases it too, marked retryable, so the holder may choose
    /// another option at once and the same request may claim again later
    /// ([`DriveOutcome::Released`]); only an unknown outcome (`Unknown`, a
    /// timeout, or a lookup that cannot answer) keeps it PENDING for the
    /// reconciler.
    async fn drive_attempt(
        &self,
        campaign: &Campaign,
        rec: ExchangeRecord,
        redrive: bool,
        address: Option<&PostalAddress>,
    ) -> Result<(ExchangeView, DriveOutcome), DomainError> {
        let option = campaign
            .option(rec.option.as_str())
            .ok_or_else(|| DomainError::Internal("exchange option left its campaign".into()))?;
        let provider = self.provider(&option.provider)?;
        let key = rec.id.provider_key();
        let span = info_span!(
            "provider.call",
            provider = %option.provider,
            attempt = rec.attempts,
            outcome = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = async {
            let req = IssueRequest {
                idempotency_key: key.clone(),
                campaign: campaign.spec.id.clone(),
                option: rec.option.clone(),
                face_value: campaign.spec.face_value,
                attempt: rec.attempts,
                shipping_address: address.cloned(),
            };
            // Each provider call gets the whole timeout: a re-drive is a
            // lookup and maybe an issue, two round trips to the provider.
            let timeout = self.settings.provider_timeout;
            let timed_out =
                |what: &str| ProviderError::unknown(format!("provider {what} timed out"));
            // The error, and whether `issue` gave it (then nothing was
            // issued under the key when it is `Retryable`).
            let r: Result<Deliverable, (ProviderError, bool)> = async {
                if redrive {
                    let found = tokio::time::timeout(timeout, provider.lookup(&key))
                        .await
                        .map_err(|_| (timed_out("lookup"), false))?
                        .map_err(|e| (e, false))?;
                    if let Some(d) = found {
                        return Ok(d);
                    }
                }
                tokio::time::timeout(timeout, provider.issue(&req))
                    .await
                    .map_err(|_| (timed_out("issue"), true))?
                    .map_err(|e| (e, true))
            }
            .await;
            let class = match &r {
                Ok(_) => "ok",
                Err((e, _)) => e.class(),
            };
            let elapsed = started.elapsed();
            tracing::Span::current().record("outcome", class);
            tracing::Span::current().record("latency_ms", elapsed.as_secs_f64() * 1000.0);
            crate::metrics::global().provider_call(option.provider.as_str(), class, elapsed);
            r
        }
        .instrument(span)
        .await;

        let now = self.clock.now();
        match result {
            Ok(d) => {
                let sealed = if provider.capabilities().store_deliverable {
                    Some(
                        self.sealer
                            .seal(&rec.id.0, &d)
                            .map_err(|e| DomainError::Internal(e.to_string()))?,
                    )
                } else {
                    None
                };
                let done = self
                    .ledger
                    .complete(&rec.id, sealed, now)
                    .await
                    .map_err(ledger_error)?;
                Ok((
                    ExchangeView {
                        record: done,
                        campaign: campaign.spec.id.clone(),
                        deliverable: Some(d),
                    },
                    DriveOutcome::Succeeded,
                ))
            }
            Err((ProviderError::Rejected { reason }, _)) => {
                let done = self
                    .ledger
                    .release(&rec.id, &reason, false, now)
                    .await
                    .map_err(ledger_error)?;
                Ok((self.view(campaign, done).await?, DriveOutcome::Failed))
            }
            Err((ProviderError::Retryable { reason, .. }, true)) => {
                let done = self
                    .ledger
                    .release(&rec.id, &reason, true, now)
                    .await
                    .map_err(ledger_error)?;
                warn!(exchange = %rec.id.0, attempt = rec.attempts, provider = %option.provider, reason = %reason, "provider cannot serve now; exchange released");
                Ok((self.view(campaign, done).await?, DriveOutcome::Released))
            }
            Err((err @ (ProviderError::Retryable { .. } | ProviderError::Unknown { .. }), _)) => {
                let park = rec.attempts >= self.settings.max_attempts;
                let hint = match &err {
                    ProviderError::Retryable {
                        retry_after: Some(d),
                        ..
                    } => Some(*d),
                    _ => None,
                };
                let next = now.plus(hint.unwrap_or_else(|| self.backoff(rec.attempts)));
                let deferred = self
                    .ledger
                    .defer_attempt(&rec.id, next, park, now)
                    .await
                    .map_err(ledger_error)?;
                warn!(exchange = %rec.id.0, attempt = rec.attempts, park, error = %err, "provider attempt deferred");
                Ok((
                    self.view(campaign, deferred).await?,
                    if park {
                        DriveOutcome::Parked
                    } else {
                        DriveOutcome::Deferred
                    },
                ))
            }
        }
    }

    /// Exponential backoff after `attempts` attempts.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.settings
            .backoff_base
            .saturating_mul(factor)
            .min(self.settings.backoff_max)
    }

    /// Opens (or re-fetches) the deliverable of a record for display.
    async fn view(
        &self,
        campaign: &Campaign,
        rec: ExchangeRecord,
    ) -> Result<ExchangeView, DomainError> {
        let deliverable = if rec.state == ExchangeState::Succeeded {
            match &rec.sealed_deliverable {
                Some(sealed) => Some(
                    self.sealer
                        .open(&rec.id.0, sealed)
                        .map_err(|e| DomainError::Internal(e.to_string()))?,
                ),
                None => {
                    // The provider forbids storing it: ask again by key.
                    let option = campaign.option(rec.option.as_str()).ok_or_else(|| {
                        DomainError::Internal("exchange option left its campaign".into())
                    })?;
                    let provider = self.provider(&option.provider)?;
                    match tokio::time::timeout(
                        self.settings.provider_timeout,
                        provider.lookup(&rec.id.provider_key()),
                    )
                    .await
                    {
                        Ok(Ok(d)) => d,
                        Ok(Err(e)) => {
                            return Err(DomainError::Unavailable(format!(
                                "provider {} cannot show the deliverable now: {e}",
                                option.provider
                            )));
                        }
                        Err(_) => {
                            return Err(DomainError::Unavailable(format!(
                                "provider {} timed out",
                                option.provider
                            )));
                        }
                    }
                }
            }
        } else {
            None
        };
        Ok(ExchangeView {
            record: rec,
            campaign: campaign.spec.id.clone(),
            deliverable,
        })
    }
}

/// What an Exchange call answers for a drive: the exchange, or, when the
/// provider could not serve now and the exchange was released
/// ([`DriveOutcome::Released`]), the error that tells the caller to retry
/// (with the same request id) or choose another option.
fn answer(
    res: Result<(ExchangeView, DriveOutcome), DomainError>,
) -> Result<ExchangeView, DomainError> {
    match res? {
        (v, DriveOutcome::Released) if v.record.failure_reason == "STOCK_EXHAUSTED" => {
            Err(DomainError::StockExhausted)
        }
        (v, DriveOutcome::Released) => Err(DomainError::Unavailable(format!(
            "provider cannot serve option {} now ({})",
            v.record.option, v.record.failure_reason
        ))),
        (v, _) => Ok(v),
    }
}

/// Adds the campaign (and option) to the current RPC span; the span
/// declares both fields, other spans ignore them.
fn record_campaign(campaign: &Campaign, option: Option<&str>) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        // Level off (or no subscriber): nothing to format.
        return;
    }
    span.record("giftx.campaign", tracing::field::display(&campaign.spec.id));
    if let Some(o) = option {
        span.record("giftx.option", o);
    }
}

/// Marks an exchange as driven by this process while alive; wakes waiting
/// duplicates when dropped, however the drive ended.
struct InflightGuard {
    engine: Arc<Exchanger>,
    id: ExchangeId,
    notify: Arc<Notify>,
}

impl InflightGuard {
    fn register(engine: Arc<Exchanger>, id: ExchangeId) -> Self {
        let notify = Arc::new(Notify::new());
        if let Ok(mut m) = engine.inflight.lock() {
            m.insert(id.clone(), notify.clone());
        }
        InflightGuard { engine, id, notify }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.engine.inflight.lock() {
            m.remove(&self.id);
        }
        self.notify.notify_waiters();
    }
}
