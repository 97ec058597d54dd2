//! The giftx ledger: every piece of state giftx keeps, and every change to
//! it as one atomic step.
//!
//! - [`Ledger`]: the async trait the services program against.
//! - `redis`: the Redis ledger; each state change is one Lua script in
//!   `lua/`, all keys of a script under one hash tag.
//! - `memory`: the embedded in-process twin, same behaviour, no Redis.
//!
//! Only this crate knows Redis key names and scripts. Everything it
//! receives about a code is already a keyed hash ([`Digest`]); it never
//! sees a plaintext code, login key or email, and stores deliverables only
//! as the sealed (encrypted) bytes the caller hands it.

pub mod access;
pub mod memory;
pub use memory::MemoryLedger;
pub mod redis;
pub use redis::RedisLedger;
pub use redis::provider_store::RedisProviderStore;

use std::time::Duration;

use async_trait::async_trait;
use giftx_core::model::{
    Batch, BatchId, Campaign, CampaignCounts, CampaignId, CampaignSpec, CodeState, ExchangeState,
    OptionId,
};
use giftx_core::{Digest, Series, Timestamp};

/// Tunables every ledger implementation honours.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Wrong login keys in a row that lock a code.
    pub lockout_threshold: u32,
    /// How long a locked code stays locked.
    pub lockout_duration: Duration,
    /// How long a campaign's codes and exchanges are kept after its
    /// deadline. Past it they read as codes that do not exist; the sweep
    /// then marks the campaign purged and deletes them (counters stay, as
    /// history). The Redis keys also carry this as a TTL.
    pub retention: Duration,
    /// How long an ISSUING batch may go without storing a chunk before it
    /// reads as INCOMPLETE.
    pub batch_stall_timeout: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            lockout_threshold: 10,
            lockout_duration: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(400 * 24 * 3600),
            batch_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Refused (FAILED) exchanges a code may have: once a code has this many, a
/// claim that would start another is refused with
/// [`Refusal::TooManyAttempts`] (a repeated request still gets its own
/// exchange back). Every exchange of an ACTIVE code has FAILED, so this also
/// bounds the exchanges a code ever has, and with them the ledger's work and
/// memory per code.
pub const MAX_FAILED_EXCHANGES: u32 = 20;

/// A code as the ledger knows it: its campaign series (public, printed in
/// the code) and its keyed hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodeRef {
    /// The series the code starts with.
    pub series: Series,
    /// `Hasher::code` of the code.
    pub digest: Digest,
}

/// A code to store: hashes only.
#[derive(Clone, Copy, Debug)]
pub struct NewCode {
    /// `Hasher::code`.
    pub code: Digest,
    /// `Hasher::login_key`.
    pub login_key: Digest,
    /// 1-based position of the code in its batch (`IssuedCode.serial`):
    /// with the batch, it leads back to the letter the code was printed on.
    pub serial: u32,
}

/// What came of storing a chunk of codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Codes of the batch stored so far, this chunk included.
    pub issued: u64,
    /// Indexes (into the chunk) of codes not stored because their hash was
    /// already taken; the caller generates new codes for them.
    pub collisions: Vec<usize>,
}

/// Identifier of an exchange (`exchanges/{id}`); opaque outside the ledger,
/// which encodes in it where the exchange lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub String);

impl ExchangeId {
    /// The key giftx hands the provider: the same on every attempt, forever.
    pub fn provider_key(&self) -> String {
        format!("giftx-{}", self.0)
    }

    /// Whether the id has the form a giftx ledger gives out: the Redis
    /// ledger's 32 lower-case hex digits, or the embedded ledger's `m` and
    /// at least 13 lower-case hex digits. Anything else (`hello`) is a
    /// malformed name, not an exchange that does not exist.
    pub fn is_well_formed(&self) -> bool {
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let s = self.0.as_str();
        match s.strip_prefix('m') {
            Some(rest) => rest.len() >= 13 && rest.len() <= 32 && hex(rest),
            None => s.len() == 32 && hex(s),
        }
    }
}

/// The holder's preferences recorded with an exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preferences {
    /// Delete my personal data.
    pub delete_personal_data: bool,
    /// Send me no more mail.
    pub stop_mail: bool,
}

/// A request to exchange a code.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The code.
    pub code: CodeRef,
    /// `Hasher::login_key` of the typed login key.
    pub login_key: Digest,
    /// The option chosen (already checked against the campaign).
    pub option: OptionId,
    /// `Hasher::request_id` of the caller's request id.
    pub request: Digest,
    /// A hash of everything else in the request (option, email hash,
    /// preferences): same request id with another fingerprint is
    /// `REQUEST_ID_REUSED`.
    pub fingerprint: Digest,
    /// `Hasher::email` of the contact email, if one was given.
    pub contact: Option<Digest>,
    /// Preferences.
    pub preferences: Preferences,
    /// Who drives the provider call (a process token), and until when it
    /// holds the exchange before a reconciler may take it over.
    pub lease: Lease,
}

/// A time-limited claim on some work by one holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (unique per process).
    pub holder: String,
    /// When it lapses.
    pub until: Timestamp,
}

/// One exchange as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRecord {
    /// Its id.
    pub id: ExchangeId,
    /// Series of the code's campaign.
    pub series: Series,
    /// The option chosen.
    pub option: OptionId,
    /// Where it stands.
    pub state: ExchangeState,
    /// The deliverable, sealed by the caller (None when not stored, or not
    /// succeeded).
    pub sealed_deliverable: Option<Vec<u8>>,
    /// Why the provider refused (FAILED only).
    pub failure_reason: String,
    /// When it began.
    pub create_time: Timestamp,
    /// When it last changed.
    pub update_time: Timestamp,
    /// Provider calls begun for it.
    pub attempts: u32,
    /// Given up on by the reconciler; waits for an operator.
    pub parked: bool,
    /// Earliest time the reconciler should try again.
    pub next_attempt_time: Timestamp,
    /// Contact email hash and preferences given with it.
    pub contact: Option<Digest>,
    /// Preferences given with it.
    pub preferences: Preferences,
    /// Ordinal (1-based, per campaign) of the batch the code was issued in
    /// (see [`Ledger::batch_by_ordinal`]), copied from the code at claim.
    pub batch_ordinal: u32,
    /// The code's serial in that batch ([`NewCode::serial`]).
    pub serial: u32,
}

impl ExchangeRecord {
    /// The record a successful claim of `req` creates: PENDING, its first
    /// provider attempt begun, due at once (the claim's lease keeps
    /// reconcilers off it), with the code's batch ordinal and serial.
    pub fn claimed(
        req: &ClaimRequest,
        id: ExchangeId,
        now: Timestamp,
        batch_ordinal: u32,
        serial: u32,
    ) -> ExchangeRecord {
        ExchangeRecord {
            id,
            series: req.code.series,
            option: req.option.clone(),
            state: ExchangeState::Pending,
            sealed_deliverable: None,
            failure_reason: String::new(),
            create_time: now,
            update_time: now,
            attempts: 1,
            parked: false,
            next_attempt_time: Timestamp(0),
            contact: req.contact,
            preferences: req.preferences,
            batch_ordinal,
            serial,
        }
    }
}

impl Preferences {
    /// Whether the holder asked for anything.
    pub fn any(&self) -> bool {
        self.delete_personal_data || self.stop_mail
    }
}

/// What claiming gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The code is now PENDING under this new exchange; the caller holds
    /// its lease and must call the provider (attempt 1).
    Claimed(ExchangeRecord),
    /// The same request (id and fingerprint) was seen before: its exchange,
    /// in whatever state it is now. No provider call is due from this
    /// caller unless it is PENDING and its lease has lapsed.
    Existing(ExchangeRecord),
}

/// A code's state as seen at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeView {
    /// The state, with deadline and voided batches applied.
    pub state: CodeState,
    /// The code's latest exchange, if any.
    pub latest_exchange: Option<ExchangeRecord>,
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Codes this sweep marked EXPIRED.
    pub expired: i64,
    /// Ledger buckets visited.
    pub buckets: u64,
    /// When the campaign was marked purged (by this sweep or an earlier
    /// one); once a sweep answers it, every code and exchange of the
    /// campaign is deleted.
    pub purged: Option<Timestamp>,
    /// When the purge is due (deadline + retention): a sweep at or after
    /// it purges. Nothing else about the campaign changes until then.
    pub purge_due: Timestamp,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Opaque cursor for the next page; None on the last.
    pub next: Option<String>,
}

/// One recorded state change (the outbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Opaque, ordered within its stream.
    pub id: String,
    /// What happened: `campaign.created`, `batch.stored`, `code.claimed`,
    /// `exchange.succeeded`, …
    pub kind: String,
    /// When.
    pub time: Timestamp,
    /// Free-form fields (never a secret): exchange id, campaign, counts.
    pub fields: Vec<(String, String)>,
}

/// Why the ledger refused a request: expected outcomes, mirrored one to one
/// by the scripts' return codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such code, or the login key is wrong (indistinguishable).
    #[error("no code matches this code and login key")]
    LoginKeyMismatch,
    /// Locked after too many wrong login keys.
    #[error("code locked")]
    Locked {
        /// When the lock ends.
        until: Timestamp,
    },
    /// Past the deadline.
    #[error("code expired")]
    Expired,
    /// Batch voided.
    #[error("code void")]
    Void,
    /// Already redeemed.
    #[error("code already redeemed")]
    AlreadyRedeemed,
    /// Another request's exchange of this code is PENDING.
    #[error("another exchange is in flight")]
    InFlight,
    /// Same request id, other parameters.
    #[error("request id reused")]
    RequestIdReused,
    /// The code already has [`MAX_FAILED_EXCHANGES`] refused exchanges; it
    /// takes no new one.
    #[error("too many refused exchanges of this code")]
    TooManyAttempts,
    /// No such campaign.
    #[error("campaign not found")]
    CampaignNotFound,
    /// The campaign id is taken with other content.
    #[error("campaign exists")]
    CampaignExists,
    /// All 1024 series are in use.
    #[error("no series left")]
    SeriesExhausted,
    /// Deadline move not allowed (earlier without force).
    #[error("the new deadline is earlier than the current one")]
    DeadlineEarlier,
    /// A deadline moved earlier may not lie before now (force or not): a
    /// deadline change never makes codes disappear.
    #[error("the new deadline is earlier than the current one and before now")]
    DeadlineInPast,
    /// The campaign's retention has passed (by the caller's clock) or it
    /// was marked purged: its deadline no longer moves.
    #[error("the campaign is past its retention and purged (or about to be)")]
    CampaignPurged,
    /// No such batch.
    #[error("batch not found")]
    BatchNotFound,
    /// Batch id already used.
    #[error("batch exists")]
    BatchExists,
    /// The batch is not ISSUING (finished, voided) and takes no codes.
    #[error("batch closed")]
    BatchClosed,
    /// Campaign past its deadline: no new batches.
    #[error("campaign expired")]
    CampaignExpired,
    /// No such exchange.
    #[error("exchange not found")]
    ExchangeNotFound,
    /// The exchange is not PENDING (complete/release on a finished one with
    /// a different outcome).
    #[error("exchange already finished")]
    ExchangeFinished,
    /// Someone else holds the exchange's lease.
    #[error("exchange leased by another worker")]
    Leased,
}

/// Ledger failures.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An expected refusal.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store is unreachable or timed out; the change may or may not
    /// have happened (callers treat it like a provider's unknown outcome).
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// Corrupt or unexpected data; a bug.
    #[error("ledger internal error: {0}")]
    Internal(String),
}

/// giftx's state. Every method that changes state is one atomic step:
/// it happens entirely or not at all, and leaves an [`Event`].
/// `now` always comes from the caller's clock.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Creates a campaign and gives it a free series. Idempotent: the same
    /// `request_id`, or the same spec, returns the existing campaign.
    ///
    /// # Errors
    /// `CampaignExists` (same id, other content), `SeriesExhausted`.
    async fn create_campaign(
        &self,
        spec: &CampaignSpec,
        request_id: Option<&str>,
        now: Timestamp,
    ) -> Result<Campaign, LedgerError>;

    /// A campaign by id.
    async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, LedgerError>;

    /// The campaign holding `series`.
    async fn campaign_by_series(&self, series: Series) -> Result<Option<Campaign>, LedgerError>;

    /// Campaigns in creation order, from an opaque cursor.
    async fn list_campaigns(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Campaign>, LedgerError>;

    /// Moves the deadline for every code of the campaign at once. Never
    /// deletes anything: a deadline moved earlier must not lie before
    /// `now`, so it can be moved back with nothing lost.
    ///
    /// # Errors
    /// `CampaignNotFound`; `DeadlineInPast` when earlier than the current
    /// deadline and before `now` (force or not); `DeadlineEarlier` when
    /// earlier and not `force`; `CampaignPurged` when the campaign is
    /// marked purged or `now` is past its deadline + retention.
    async fn extend_campaign(
        &self,
        id: &CampaignId,
        expire_time: Timestamp,
        force: bool,
        now: Timestamp,
    ) -> Result<Campaign, LedgerError>;

    /// Opens a batch (state ISSUING) for `requested` codes.
    ///
    /// # Errors
    /// `CampaignNotFound`, `BatchExists` (any earlier use of the id),
    /// `CampaignExpired`.
    async fn begin_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        requested: u64,
        now: Timestamp,
    ) -> Result<Batch, LedgerError>;

    /// Stores a chunk of codes of an ISSUING batch (at most 100,000 per
    /// call; the Redis ledger groups them by bucket, one script per bucket,
    /// pipelined). Codes whose hash already exists are skipped and reported.
    /// Once this returns, the codes are durable and counted in the batch's
    /// `issued`; if it fails, any subset may have been stored, and the
    /// batch's `issued` (derived from per-bucket counters) stays exact.
    ///
    /// # Errors
    /// `BatchNotFound`, `BatchClosed`.
    async fn store_codes(
        &self,
        campaign: &Campaign,
        batch: &Batch,
        codes: &[NewCode],
        now: Timestamp,
    ) -> Result<StoreOutcome, LedgerError>;

    /// Closes an ISSUING batch as COMPLETE (`complete`) or INCOMPLETE.
    async fn finish_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        complete: bool,
        now: Timestamp,
    ) -> Result<Batch, LedgerError>;

    /// A batch; an ISSUING batch idle for longer than the stall timeout
    /// reads as INCOMPLETE.
    async fn get_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        now: Timestamp,
    ) -> Result<Option<Batch>, LedgerError>;

    /// Voids every unredeemed code of the batch (lazily: codes read as VOID
    /// from now on). Idempotent.
    async fn void_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        now: Timestamp,
    ) -> Result<Batch, LedgerError>;

    /// Checks a code and login key. A wrong key counts towards lockout; a
    /// right one resets the count. A code that does not exist (never
    /// stored, of a series no campaign holds, or past its campaign's
    /// retention) is answered as a wrong key and counts towards lockout
    /// the same way, so the answers never tell the two apart. Failures
    /// are forgotten once the lockout duration passes without another,
    /// and a lock ends after the lockout duration.
    ///
    /// # Errors
    /// `LoginKeyMismatch`, `Locked`.
    async fn verify(
        &self,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<CodeView, LedgerError>;

    /// Claims a code for an exchange: checks login key, lockout, deadline,
    /// voiding, state and idempotency, then moves the code to PENDING under
    /// a new exchange, all in one step.
    ///
    /// Idempotency: the same request (id and fingerprint) answers its
    /// exchange as `Existing`, except when that exchange was released as
    /// *retryable* (see [`Ledger::release`]): such a request claims the code
    /// again, as a new exchange, like a new request. The ledger's work is
    /// bounded by a constant whatever the code's history (the request is
    /// found through an index, not a scan of the code's exchanges).
    ///
    /// # Errors
    /// `LoginKeyMismatch`, `Locked`, `Expired`, `Void`, `AlreadyRedeemed`,
    /// `InFlight`, `RequestIdReused`, `TooManyAttempts` (the code has
    /// [`MAX_FAILED_EXCHANGES`] refused exchanges; checked after the
    /// idempotency and state checks).
    async fn claim(&self, req: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome, LedgerError>;

    /// The code's latest exchange, after checking the login key.
    ///
    /// # Errors
    /// `LoginKeyMismatch`, `Locked`, `ExchangeNotFound`.
    async fn latest_exchange(
        &self,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError>;

    /// An exchange by id.
    async fn get_exchange(&self, id: &ExchangeId) -> Result<Option<ExchangeRecord>, LedgerError>;

    /// Takes (or renews) the exchange's lease to drive it, counting one
    /// more provider attempt. Returns the record; refuses if another holder's
    /// lease has not lapsed at `now`.
    ///
    /// # Errors
    /// `ExchangeNotFound`, `ExchangeFinished` (not PENDING), `Leased`.
    async fn begin_attempt(
        &self,
        id: &ExchangeId,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError>;

    /// Records that an attempt ended with an unknown outcome: releases the
    /// lease, sets the next attempt time, and parks the exchange if `park`.
    async fn defer_attempt(
        &self,
        id: &ExchangeId,
        next_attempt_time: Timestamp,
        park: bool,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError>;

    /// PENDING → SUCCEEDED, code → REDEEMED, with the sealed deliverable.
    /// Completing an already SUCCEEDED exchange returns it unchanged.
    ///
    /// # Errors
    /// `ExchangeNotFound`, `ExchangeFinished` (it FAILED).
    async fn complete(
        &self,
        id: &ExchangeId,
        sealed_deliverable: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError>;

    /// PENDING → FAILED, code → ACTIVE again (the provider refused, nothing
    /// was issued). Releasing an already FAILED exchange returns it
    /// unchanged. `retryable`: the provider refused for now (stock out,
    /// outage), not for good: the same request claims the code again
    /// later ([`Ledger::claim`]) instead of answering this FAILED exchange.
    ///
    /// # Errors
    /// `ExchangeNotFound`, `ExchangeFinished` (it SUCCEEDED).
    async fn release(
        &self,
        id: &ExchangeId,
        reason: &str,
        retryable: bool,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError>;

    /// PENDING exchanges created at or before `created_before`.
    async fn list_pending(
        &self,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ExchangeRecord>, LedgerError>;

    /// The campaign's exchanges that carry a holder preference (data
    /// deletion or stop mail), for the campaign owner: per code, its latest
    /// exchange given with a preference, whatever that exchange's state (a
    /// later exchange of the code given without preferences does not
    /// withdraw it). Paged from an opaque cursor that stays valid while
    /// exchanges are added or finish: none listed twice, none skipped.
    /// At most `limit` per page; a page may hold fewer (even none) and
    /// still have a next one. Nothing is listed once the campaign's
    /// exchanges are past retention and purged.
    ///
    /// # Errors
    /// `CampaignNotFound`.
    async fn list_preferences(
        &self,
        campaign: &CampaignId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ExchangeRecord>, LedgerError>;

    /// The campaign's batch with this ordinal ([`Batch::ordinal`],
    /// [`ExchangeRecord::batch_ordinal`]); None when the campaign or the
    /// ordinal is unknown. No clock is given, so an ISSUING batch reads as
    /// stored, not aged to INCOMPLETE by the stall timeout (`get_batch`
    /// does that).
    async fn batch_by_ordinal(
        &self,
        campaign: &CampaignId,
        ordinal: u32,
    ) -> Result<Option<Batch>, LedgerError>;

    /// Marks the campaign's unexchanged codes past the deadline EXPIRED.
    /// Returns how many this call marked (0 before the deadline, and on a
    /// repeat). At or after deadline + retention (by `now`) it is also the
    /// purge, the only step that deletes: it marks the campaign purged
    /// (from then on its deadline no longer moves), then deletes its codes,
    /// exchanges, PENDING entries and preference index; a repeat finishes
    /// a purge cut short.
    async fn sweep(
        &self,
        campaign: &CampaignId,
        now: Timestamp,
    ) -> Result<SweepOutcome, LedgerError>;

    /// Exact counts of the campaign's codes, without a scan of codes.
    /// After a purge they are history: what the campaign held when it was
    /// purged, with `purge_time` set.
    async fn counts(
        &self,
        campaign: &CampaignId,
        now: Timestamp,
    ) -> Result<CampaignCounts, LedgerError>;

    /// Takes or renews the named singleton lease (sweeper, reconciler).
    /// True if `lease.holder` holds it until `lease.until`.
    async fn acquire_lease(
        &self,
        name: &str,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<bool, LedgerError>;

    /// Gives up the named lease if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LedgerError>;

    /// The most recent events, oldest first (at most `limit`).
    async fn recent_events(&self, limit: usize) -> Result<Vec<Event>, LedgerError>;
}
