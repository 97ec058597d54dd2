//! The embedded ledger: the same behaviour as the Redis ledger, in process
//! memory, for trying giftx without Redis and for tests.
//!
//! One mutex guards all state; every method takes it once, checks
//! everything first and writes last, so each state change is atomic just
//! as one Lua script is. Counts come from per-batch tallies of the stored
//! states, never from a scan of codes; the deadline and voided batches are
//! applied when reading, as the Redis ledger does.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use giftx_core::hash::ct_eq;
use giftx_core::model::{
    Batch, BatchId, BatchState, Campaign, CampaignCounts, CampaignId, CampaignSpec, CodeState,
    ExchangeState, OptionId,
};
use giftx_core::{Digest, Series, Timestamp};

use crate::{
    ClaimOutcome, ClaimRequest, CodeRef, CodeView, Event, ExchangeId, ExchangeRecord, Lease,
    Ledger, LedgerConfig, LedgerError, NewCode, Page, Refusal, StoreOutcome, SweepOutcome,
};

/// Events kept for [`Ledger::recent_events`]; older ones are dropped.
const EVENTS_KEPT: usize = 10_000;

/// The in-process ledger.
#[derive(Debug)]
pub struct MemoryLedger {
    config: LedgerConfig,
    state: Mutex<State>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new(config: LedgerConfig) -> MemoryLedger {
        MemoryLedger {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, LedgerError> {
        // A panic while holding the lock may have left a change half done.
        self.state
            .lock()
            .map_err(|_| LedgerError::Internal("memory ledger lock poisoned".into()))
    }
}

/// A code's state as written; the deadline and voiding apply on reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    Active,
    Pending,
    Redeemed,
    Expired,
}

/// Codes of one batch per stored state.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    active: i64,
    pending: i64,
    redeemed: i64,
    expired: i64,
}

impl Tally {
    fn slot(&mut self, s: Stored) -> &mut i64 {
        match s {
            Stored::Active => &mut self.active,
            Stored::Pending => &mut self.pending,
            Stored::Redeemed => &mut self.redeemed,
            Stored::Expired => &mut self.expired,
        }
    }

    fn shift(&mut self, from: Stored, to: Stored) {
        *self.slot(from) -= 1;
        *self.slot(to) += 1;
    }
}

#[derive(Debug)]
struct CodeRecord {
    login_key: [u8; 32],
    /// Index into the campaign's batches.
    batch: usize,
    /// 1-based position in its batch.
    serial: u32,
    stored: Stored,
    /// Exchange ids, oldest first.
    exchanges: Vec<String>,
    /// Request digest → (exchange id, fingerprint).
    requests: HashMap<[u8; 32], (String, [u8; 32])>,
}

#[derive(Debug)]
struct BatchEntry {
    batch: Batch,
    tally: Tally,
}

#[derive(Debug)]
struct CampaignEntry {
    campaign: Campaign,
    created_spec: CampaignSpec,
    request_id: Option<String>,
    batches: Vec<BatchEntry>,
    batch_index: HashMap<BatchId, usize>,
    codes: HashMap<[u8; 32], CodeRecord>,
    /// Per option: (redeemed, pending).
    by_option: HashMap<OptionId, (i64, i64)>,
    /// Exchanges given with a holder preference, by (create time, id): per
    /// code its latest such exchange.
    preferences: BTreeSet<(Timestamp, String)>,
    /// When the sweep purged it (past deadline + retention).
    purged: Option<Timestamp>,
}

impl CampaignEntry {
    fn deadline(&self) -> Timestamp {
        self.campaign.spec.expire_time
    }

    /// Past deadline + retention by `now` (or purged): its codes and
    /// exchanges read as ones that do not exist.
    fn retired(&self, config: &LedgerConfig, now: Timestamp) -> bool {
        self.purged.is_some() || now >= self.deadline().plus(config.retention)
    }

    fn batch_mut(&mut self, batch: &BatchId) -> Result<&mut BatchEntry, LedgerError> {
        self.batch_index
            .get(batch)
            .and_then(|&bi| self.batches.get_mut(bi))
            .ok_or(refused(Refusal::BatchNotFound))
    }

    fn view_state(&self, rec: &CodeRecord, now: Timestamp) -> CodeState {
        let voided = self
            .batches
            .get(rec.batch)
            .is_some_and(|b| b.batch.state == BatchState::Void);
        match rec.stored {
            Stored::Pending => CodeState::Pending,
            Stored::Redeemed => CodeState::Redeemed,
            Stored::Active | Stored::Expired if voided => CodeState::Void,
            Stored::Expired => CodeState::Expired,
            Stored::Active if now >= self.deadline() => CodeState::Expired,
            Stored::Active => CodeState::Active,
        }
    }

    fn counts(&self, now: Timestamp) -> CampaignCounts {
        let mut c = CampaignCounts {
            purge_time: self.purged,
            ..CampaignCounts::default()
        };
        let past = now >= self.deadline();
        for b in &self.batches {
            let t = b.tally;
            c.issued += i64::try_from(b.batch.issued).unwrap_or(i64::MAX);
            c.pending += t.pending;
            c.redeemed += t.redeemed;
            if b.batch.state == BatchState::Void {
                c.void += t.active + t.expired;
            } else if past {
                c.expired += t.active + t.expired;
            } else {
                c.active += t.active;
                c.expired += t.expired;
            }
        }
        c.by_option = self
            .campaign
            .spec
            .options
            .iter()
            .map(|o| {
                let (r, p) = self.by_option.get(&o.id).copied().unwrap_or((0, 0));
                (o.id.clone(), r, p)
            })
            .collect();
        c
    }
}

#[derive(Debug)]
struct ExchangeEntry {
    record: ExchangeRecord,
    campaign: usize,
    code: [u8; 32],
    lease: Option<Lease>,
    /// FAILED by a retryable refusal: its request claims the code again.
    retryable: bool,
}

#[derive(Debug, Default)]
struct State {
    campaigns: Vec<CampaignEntry>,
    by_id: HashMap<CampaignId, usize>,
    by_series: HashMap<u16, usize>,
    exchanges: HashMap<String, ExchangeEntry>,
    /// PENDING exchanges by (create time, id).
    pending: BTreeSet<(Timestamp, String)>,
    leases: HashMap<String, Lease>,
    events: VecDeque<Event>,
    seq: u64,
    /// Lockout entries by (series, code digest), for codes that exist and
    /// codes that do not alike; an entry counts until its `expires`.
    lockouts: HashMap<(u16, [u8; 32]), Lockout>,
    /// Lockout writes since expired entries were last dropped.
    lockout_writes: u64,
}

/// A code's wrong login keys (as `claim_code` keeps them in Redis).
#[derive(Clone, Copy, Debug)]
struct Lockout {
    fails: u32,
    /// The lock's end (0: not locked).
    until: Timestamp,
    /// The entry counts while `now` is before this.
    expires: Timestamp,
}

fn refused(r: Refusal) -> LedgerError {
    LedgerError::Refused(r)
}

fn pending_cursor(t: Timestamp, id: &str) -> String {
    format!("{}:{}", t.0, id)
}

fn parse_pending_cursor(s: &str) -> Result<(Timestamp, String), LedgerError> {
    let bad = || LedgerError::Internal(format!("malformed cursor {s:?}"));
    let (t, id) = s.split_once(':').ok_or_else(bad)?;
    let t = t.parse::<i64>().map_err(|_| bad())?;
    Ok((Timestamp(t), id.to_owned()))
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn event(&mut self, kind: &str, now: Timestamp, fields: Vec<(&str, String)>) {
        let seq = self.next_seq();
        self.events.push_back(Event {
            id: format!("{}-{}", now.0, seq),
            kind: kind.to_owned(),
            time: now,
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    /// A `batch.*` event: `campaign` and `batch` first, then `more`.
    fn batch_event(
        &mut self,
        kind: &str,
        now: Timestamp,
        campaign: &CampaignId,
        batch: &BatchId,
        more: Vec<(&str, String)>,
    ) {
        let mut fields = vec![
            ("campaign", campaign.to_string()),
            ("batch", batch.to_string()),
        ];
        fields.extend(more);
        self.event(kind, now, fields);
    }

    fn campaign_index(&self, id: &CampaignId) -> Result<usize, LedgerError> {
        self.by_id
            .get(id)
            .copied()
            .ok_or(refused(Refusal::CampaignNotFound))
    }

    fn campaign_at(&self, ci: usize) -> Result<&CampaignEntry, LedgerError> {
        self.campaigns
            .get(ci)
            .ok_or_else(|| LedgerError::Internal("campaign index out of range".into()))
    }

    fn campaign_at_mut(&mut self, ci: usize) -> Result<&mut CampaignEntry, LedgerError> {
        self.campaigns
            .get_mut(ci)
            .ok_or_else(|| LedgerError::Internal("campaign index out of range".into()))
    }

    fn campaign(&self, id: &CampaignId) -> Result<&CampaignEntry, LedgerError> {
        self.campaign_at(self.campaign_index(id)?)
    }

    fn campaign_mut(&mut self, id: &CampaignId) -> Result<&mut CampaignEntry, LedgerError> {
        self.campaign_at_mut(self.campaign_index(id)?)
    }

    /// The purge (the sweep's, past deadline + retention): drops the
    /// campaign's codes, exchanges, PENDING entries and preference index.
    /// Tallies (and so counts) stay, as history.
    fn purge(&mut self, ci: usize, now: Timestamp) -> Result<Timestamp, LedgerError> {
        let c = self.campaign_at_mut(ci)?;
        if let Some(at) = c.purged {
            return Ok(at);
        }
        c.purged = Some(now);
        c.codes = HashMap::new();
        c.preferences = BTreeSet::new();
        let id = c.campaign.spec.id.to_string();
        self.exchanges.retain(|_, x| x.campaign != ci);
        let exchanges = &self.exchanges;
        self.pending.retain(|(_, x)| exchanges.contains_key(x));
        self.event("campaign.purged", now, vec![("campaign", id)]);
        Ok(now)
    }

    /// Records a lockout entry, dropping expired ones now and then so
    /// guesses at codes that do not exist leave nothing behind for long.
    fn set_lockout(&mut self, key: (u16, [u8; 32]), entry: Lockout, now: Timestamp) {
        self.lockouts.insert(key, entry);
        self.lockout_writes += 1;
        if self.lockout_writes >= 4096 {
            self.lockout_writes = 0;
            self.lockouts.retain(|_, e| e.expires > now);
        }
    }

    /// Checks the login key of a code, counting wrong ones towards lockout.
    /// Returns the campaign index of a code whose key matched.
    fn authenticate(
        &mut self,
        config: &LedgerConfig,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<usize, LedgerError> {
        // A code that does not exist (no campaign holds the series, never
        // stored, or past retention) takes the path of a wrong key.
        let found = self
            .by_series
            .get(&code.series.index())
            .copied()
            .and_then(|ci| {
                let c = self.campaigns.get(ci)?;
                if c.retired(config, now) {
                    return None;
                }
                let rec = c.codes.get(&code.digest.0)?;
                Some((ci, ct_eq(&rec.login_key, &login_key.0)))
            });
        let key = (code.series.index(), code.digest.0);
        let entry = self.lockouts.get(&key).copied().filter(|e| e.expires > now);
        let (fails, until) = entry.map_or((0, Timestamp(0)), |e| (e.fails, e.until));
        if until > now {
            return Err(refused(Refusal::Locked { until }));
        }
        if let Some((ci, true)) = found {
            if entry.is_some() {
                self.lockouts.remove(&key);
            }
            return Ok(ci);
        }
        let fails = fails + 1;
        if fails >= config.lockout_threshold {
            let until = now.plus(config.lockout_duration);
            let e = Lockout {
                fails: 0,
                until,
                expires: until,
            };
            self.set_lockout(key, e, now);
            let series = code.series.to_string();
            self.event("code.locked", now, vec![("series", series)]);
            return Err(refused(Refusal::Locked { until }));
        }
        let e = Lockout {
            fails,
            until: Timestamp(0),
            expires: now.plus(config.lockout_duration),
        };
        self.set_lockout(key, e, now);
        Err(refused(Refusal::LoginKeyMismatch))
    }

    fn code(
        &self,
        ci: usize,
        digest: &Digest,
    ) -> Result<(&CampaignEntry, &CodeRecord), LedgerError> {
        let c = self.campaign_at(ci)?;
        let rec = c
            .codes
            .get(&digest.0)
            .ok_or_else(|| LedgerError::Internal("authenticated code vanished".into()))?;
        Ok((c, rec))
    }

    /// EXCHANGE_NOT_FOUND for an exchange of a campaign past deadline +
    /// retention (as the Redis scripts read it), purged or not yet.
    fn check_retained(
        &self,
        config: &LedgerConfig,
        id: &ExchangeId,
        now: Timestamp,
    ) -> Result<(), LedgerError> {
        let retired = self
            .exchanges
            .get(&id.0)
            .and_then(|x| self.campaigns.get(x.campaign))
            .is_some_and(|c| c.retired(config, now));
        if retired {
            return Err(refused(Refusal::ExchangeNotFound));
        }
        Ok(())
    }

    fn exchange_mut(&mut self, id: &ExchangeId) -> Result<&mut ExchangeEntry, LedgerError> {
        self.exchanges
            .get_mut(&id.0)
            .ok_or(refused(Refusal::ExchangeNotFound))
    }

    /// Exchange `id`, still PENDING (else EXCHANGE_FINISHED).
    fn pending_exchange_mut(&mut self, id: &ExchangeId) -> Result<&mut ExchangeEntry, LedgerError> {
        let x = self.exchange_mut(id)?;
        if x.record.state != ExchangeState::Pending {
            return Err(refused(Refusal::ExchangeFinished));
        }
        Ok(x)
    }

    /// Finishes exchange `id` as `state` (`set` filling in what comes
    /// with it), its code moving to `to`; an exchange already in `state`
    /// is answered unchanged, one finished otherwise is refused.
    fn settle_exchange(
        &mut self,
        id: &ExchangeId,
        state: ExchangeState,
        to: Stored,
        now: Timestamp,
        set: impl FnOnce(&mut ExchangeRecord),
    ) -> Result<ExchangeRecord, LedgerError> {
        let x = self.exchange_mut(id)?;
        if x.record.state == state {
            return Ok(x.record.clone());
        }
        if x.record.state != ExchangeState::Pending {
            return Err(refused(Refusal::ExchangeFinished));
        }
        set(&mut x.record);
        self.finish_exchange(id, state, to, now)
    }

    /// Moves the code of exchange `id` (PENDING) to `to`, and the exchange
    /// to `state`, keeping tallies and per-option counts exact.
    fn finish_exchange(
        &mut self,
        id: &ExchangeId,
        state: ExchangeState,
        to: Stored,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        let x = self.exchange_mut(id)?;
        x.record.state = state;
        x.record.update_time = now;
        x.lease = None;
        let (ci, code, option, created) = (
            x.campaign,
            x.code,
            x.record.option.clone(),
            x.record.create_time,
        );
        let record = x.record.clone();
        self.pending.remove(&(created, id.0.clone()));
        let c = self.campaign_at_mut(ci)?;
        let rec = c
            .codes
            .get_mut(&code)
            .ok_or_else(|| LedgerError::Internal("exchange without code".into()))?;
        rec.stored = to;
        let batch = rec.batch;
        if let Some(b) = c.batches.get_mut(batch) {
            b.tally.shift(Stored::Pending, to);
        }
        let slot = c.by_option.entry(option).or_insert((0, 0));
        slot.1 -= 1;
        if to == Stored::Redeemed {
            slot.0 += 1;
        }
        let (kind, campaign) = match state {
            ExchangeState::Succeeded => ("exchange.succeeded", c.campaign.spec.id.to_string()),
            _ => ("exchange.failed", c.campaign.spec.id.to_string()),
        };
        self.event(
            kind,
            now,
            vec![("exchange", id.0.clone()), ("campaign", campaign)],
        );
        Ok(record)
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn create_campaign(
        &self,
        spec: &CampaignSpec,
        request_id: Option<&str>,
        now: Timestamp,
    ) -> Result<Campaign, LedgerError> {
        let mut st = self.lock()?;
        if let Some(&i) = st.by_id.get(&spec.id) {
            let e = st.campaign_at(i)?;
            let same_request = request_id.is_some() && e.request_id.as_deref() == request_id;
            if same_request || e.created_spec == *spec || e.campaign.spec == *spec {
                return Ok(e.campaign.clone());
            }
            return Err(refused(Refusal::CampaignExists));
        }
        let series = (0..Series::COUNT)
            .find(|n| !st.by_series.contains_key(n))
            .and_then(Series::from_index)
            .ok_or(refused(Refusal::SeriesExhausted))?;
        let campaign = Campaign {
            spec: spec.clone(),
            series,
            create_time: now,
            update_time: now,
            version: 1,
        };
        let i = st.campaigns.len();
        st.campaigns.push(CampaignEntry {
            campaign: campaign.clone(),
            created_spec: spec.clone(),
            request_id: request_id.map(str::to_owned),
            batches: Vec::new(),
            batch_index: HashMap::new(),
            codes: HashMap::new(),
            by_option: HashMap::new(),
            preferences: BTreeSet::new(),
            purged: None,
        });
        st.by_id.insert(spec.id.clone(), i);
        st.by_series.insert(series.index(), i);
        st.event(
            "campaign.created",
            now,
            vec![
                ("campaign", spec.id.to_string()),
                ("series", series.to_string()),
            ],
        );
        Ok(campaign)
    }

    async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, LedgerError> {
        let st = self.lock()?;
        Ok(st
            .by_id
            .get(id)
            .and_then(|&i| st.campaigns.get(i))
            .map(|c| c.campaign.clone()))
    }

    async fn campaign_by_series(&self, series: Series) -> Result<Option<Campaign>, LedgerError> {
        let st = self.lock()?;
        Ok(st
            .by_series
            .get(&series.index())
            .and_then(|&i| st.campaigns.get(i))
            .map(|c| c.campaign.clone()))
    }

    async fn list_campaigns(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Campaign>, LedgerError> {
        let st = self.lock()?;
        let start = match cursor {
            None => 0,
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| LedgerError::Internal(format!("malformed cursor {s:?}")))?,
        };
        let end = start.saturating_add(limit.max(1)).min(st.campaigns.len());
        let items = st
            .campaigns
            .get(start.min(end)..end)
            .unwrap_or_default()
            .iter()
            .map(|c| c.campaign.clone())
            .collect();
        let next = (end < st.campaigns.len()).then(|| end.to_string());
        Ok(Page { items, next })
    }

    async fn extend_campaign(
        &self,
        id: &CampaignId,
        expire_time: Timestamp,
        force: bool,
        now: Timestamp,
    ) -> Result<Campaign, LedgerError> {
        let mut st = self.lock()?;
        let c = st.campaign_mut(id)?;
        if c.retired(&self.config, now) {
            return Err(refused(Refusal::CampaignPurged));
        }
        if expire_time < c.deadline() && expire_time < now {
            return Err(refused(Refusal::DeadlineInPast));
        }
        if expire_time < c.deadline() && !force {
            return Err(refused(Refusal::DeadlineEarlier));
        }
        c.campaign.spec.expire_time = expire_time;
        c.campaign.update_time = now;
        c.campaign.version += 1;
        // Codes the sweep marked EXPIRED under the old deadline live again
        // when the new one has not passed.
        if now < expire_time {
            for rec in c.codes.values_mut() {
                if rec.stored == Stored::Expired {
                    rec.stored = Stored::Active;
                }
            }
            for b in &mut c.batches {
                b.tally.active += b.tally.expired;
                b.tally.expired = 0;
            }
        }
        let campaign = c.campaign.clone();
        st.event(
            "campaign.extended",
            now,
            vec![
                ("campaign", id.to_string()),
                ("expire_time", expire_time.0.to_string()),
            ],
        );
        Ok(campaign)
    }

    async fn begin_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        requested: u64,
        now: Timestamp,
    ) -> Result<Batch, LedgerError> {
        let mut st = self.lock()?;
        let c = st.campaign_mut(campaign)?;
        if c.batch_index.contains_key(batch) {
            return Err(refused(Refusal::BatchExists));
        }
        if now >= c.deadline() {
            return Err(refused(Refusal::CampaignExpired));
        }
        let b = Batch {
            campaign: campaign.clone(),
            id: batch.clone(),
            ordinal: u32::try_from(c.batches.len() + 1).unwrap_or(u32::MAX),
            requested,
            issued: 0,
            state: BatchState::Issuing,
            create_time: now,
            update_time: now,
        };
        c.batch_index.insert(batch.clone(), c.batches.len());
        c.batches.push(BatchEntry {
            batch: b.clone(),
            tally: Tally::default(),
        });
        st.batch_event(
            "batch.created",
            now,
            campaign,
            batch,
            vec![("requested", requested.to_string())],
        );
        Ok(b)
    }

    async fn store_codes(
        &self,
        campaign: &Campaign,
        batch: &Batch,
        codes: &[NewCode],
        now: Timestamp,
    ) -> Result<StoreOutcome, LedgerError> {
        let mut st = self.lock()?;
        let ci = st
            .by_id
            .get(&campaign.spec.id)
            .copied()
            .ok_or(refused(Refusal::BatchNotFound))?;
        let c = st.campaign_at_mut(ci)?;
        let bi = c
            .batch_index
            .get(&batch.id)
            .copied()
            .ok_or(refused(Refusal::BatchNotFound))?;
        let b = c
            .batches
            .get_mut(bi)
            .ok_or_else(|| LedgerError::Internal("batch index out of range".into()))?;
        // A stalled batch reads INCOMPLETE (see `get_batch`): it takes no
        // more codes either.
        let stalled = now > b.batch.update_time.plus(self.config.batch_stall_timeout);
        if b.batch.state != BatchState::Issuing || stalled {
            return Err(refused(Refusal::BatchClosed));
        }
        let mut collisions = Vec::new();
        let mut stored = 0u64;
        for (i, nc) in codes.iter().enumerate() {
            if c.codes.contains_key(&nc.code.0) {
                collisions.push(i);
                continue;
            }
            c.codes.insert(
                nc.code.0,
                CodeRecord {
                    login_key: nc.login_key.0,
                    batch: bi,
                    serial: nc.serial,
                    stored: Stored::Active,
                    exchanges: Vec::new(),
                    requests: HashMap::new(),
                },
            );
            stored += 1;
        }
        b.tally.active += i64::try_from(stored).unwrap_or(i64::MAX);
        b.batch.issued += stored;
        // Never moved back (as the Redis ledger's keepalive needs).
        b.batch.update_time = b.batch.update_time.max(now);
        let issued = b.batch.issued;
        st.batch_event(
            "batch.stored",
            now,
            &campaign.spec.id,
            &batch.id,
            vec![
                ("stored", stored.to_string()),
                ("issued", issued.to_string()),
            ],
        );
        Ok(StoreOutcome { issued, collisions })
    }

    async fn finish_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        complete: bool,
        now: Timestamp,
    ) -> Result<Batch, LedgerError> {
        let mut st = self.lock()?;
        let c = st.campaign_mut(campaign)?;
        let b = c.batch_mut(batch)?;
        let to = if complete {
            BatchState::Complete
        } else {
            BatchState::Incomplete
        };
        if b.batch.state == to {
            return Ok(b.batch.clone());
        }
        if b.batch.state != BatchState::Issuing {
            return Err(refused(Refusal::BatchClosed));
        }
        b.batch.state = to;
        b.batch.update_time = now;
        let out = b.batch.clone();
        st.batch_event(
            "batch.finished",
            now,
            campaign,
            batch,
            vec![("complete", complete.to_string())],
        );
        Ok(out)
    }

    async fn get_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        now: Timestamp,
    ) -> Result<Option<Batch>, LedgerError> {
        let st = self.lock()?;
        let Some(mut b) = st
            .by_id
            .get(campaign)
            .and_then(|&ci| st.campaigns.get(ci))
            .and_then(|c| c.batch_index.get(batch).and_then(|&bi| c.batches.get(bi)))
            .map(|b| b.batch.clone())
        else {
            return Ok(None);
        };
        if b.state == BatchState::Issuing
            && now > b.update_time.plus(self.config.batch_stall_timeout)
        {
            b.state = BatchState::Incomplete;
        }
        Ok(Some(b))
    }

    async fn void_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        now: Timestamp,
    ) -> Result<Batch, LedgerError> {
        let mut st = self.lock()?;
        let c = st.campaign_mut(campaign)?;
        let b = c.batch_mut(batch)?;
        if b.batch.state == BatchState::Void {
            return Ok(b.batch.clone());
        }
        b.batch.state = BatchState::Void;
        b.batch.update_time = now;
        let out = b.batch.clone();
        st.batch_event("batch.voided", now, campaign, batch, Vec::new());
        Ok(out)
    }

    async fn verify(
        &self,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<CodeView, LedgerError> {
        let mut st = self.lock()?;
        let ci = st.authenticate(&self.config, code, login_key, now)?;
        let (c, rec) = st.code(ci, &code.digest)?;
        let latest_exchange = rec
            .exchanges
            .last()
            .and_then(|x| st.exchanges.get(x))
            .map(|x| x.record.clone());
        Ok(CodeView {
            state: c.view_state(rec, now),
            latest_exchange,
        })
    }

    async fn claim(&self, req: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome, LedgerError> {
        let mut st = self.lock()?;
        let ci = st.authenticate(&self.config, req.code, req.login_key, now)?;
        let (c, rec) = st.code(ci, &req.code.digest)?;
        if let Some((xid, fingerprint)) = rec.requests.get(&req.request.0) {
            if !ct_eq(fingerprint, &req.fingerprint.0) {
                return Err(refused(Refusal::RequestIdReused));
            }
            let x = st
                .exchanges
                .get(xid)
                .ok_or_else(|| LedgerError::Internal("request without exchange".into()))?;
            // A retryable refusal does not use the request up: it claims
            // the code again, as a new exchange.
            if !(x.record.state == ExchangeState::Failed && x.retryable) {
                return Ok(ClaimOutcome::Existing(x.record.clone()));
            }
        }
        match c.view_state(rec, now) {
            CodeState::Void => return Err(refused(Refusal::Void)),
            CodeState::Expired => return Err(refused(Refusal::Expired)),
            CodeState::Redeemed => return Err(refused(Refusal::AlreadyRedeemed)),
            CodeState::Pending => return Err(refused(Refusal::InFlight)),
            CodeState::Active => {}
        }
        // Every earlier exchange of an ACTIVE code has FAILED.
        if rec.exchanges.len() >= crate::MAX_FAILED_EXCHANGES as usize {
            return Err(refused(Refusal::TooManyAttempts));
        }
        let campaign = c.campaign.spec.id.to_string();
        let batch_ordinal = c.batches.get(rec.batch).map_or(0, |b| b.batch.ordinal);
        let serial = rec.serial;
        // This exchange replaces the code's earlier one given with a
        // preference in the owner's listing.
        let replaced: Vec<(Timestamp, String)> = if req.preferences.any() {
            rec.exchanges
                .iter()
                .filter_map(|x| st.exchanges.get(x))
                .map(|x| (x.record.create_time, x.record.id.0.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let seq = st.next_seq();
        let id = ExchangeId(format!("m{:03x}{:010x}", req.code.series.index(), seq));
        let record = ExchangeRecord::claimed(req, id.clone(), now, batch_ordinal, serial);
        let c = st.campaign_at_mut(ci)?;
        let rec = c
            .codes
            .get_mut(&req.code.digest.0)
            .ok_or_else(|| LedgerError::Internal("authenticated code vanished".into()))?;
        rec.stored = Stored::Pending;
        rec.exchanges.push(id.0.clone());
        rec.requests
            .insert(req.request.0, (id.0.clone(), req.fingerprint.0));
        let batch = rec.batch;
        if let Some(b) = c.batches.get_mut(batch) {
            b.tally.shift(Stored::Active, Stored::Pending);
        }
        c.by_option.entry(req.option.clone()).or_insert((0, 0)).1 += 1;
        if req.preferences.any() {
            for k in &replaced {
                c.preferences.remove(k);
            }
            c.preferences.insert((now, id.0.clone()));
        }
        st.exchanges.insert(
            id.0.clone(),
            ExchangeEntry {
                record: record.clone(),
                campaign: ci,
                code: req.code.digest.0,
                lease: Some(req.lease.clone()),
                retryable: false,
            },
        );
        st.pending.insert((now, id.0.clone()));
        st.event(
            "code.claimed",
            now,
            vec![
                ("exchange", id.0.clone()),
                ("campaign", campaign),
                ("option", req.option.to_string()),
            ],
        );
        Ok(ClaimOutcome::Claimed(record))
    }

    async fn latest_exchange(
        &self,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        let mut st = self.lock()?;
        let ci = st.authenticate(&self.config, code, login_key, now)?;
        let (_, rec) = st.code(ci, &code.digest)?;
        rec.exchanges
            .last()
            .and_then(|x| st.exchanges.get(x))
            .map(|x| x.record.clone())
            .ok_or(refused(Refusal::ExchangeNotFound))
    }

    async fn get_exchange(&self, id: &ExchangeId) -> Result<Option<ExchangeRecord>, LedgerError> {
        let st = self.lock()?;
        Ok(st.exchanges.get(&id.0).map(|x| x.record.clone()))
    }

    async fn begin_attempt(
        &self,
        id: &ExchangeId,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        let mut st = self.lock()?;
        st.check_retained(&self.config, id, now)?;
        let x = st.pending_exchange_mut(id)?;
        if let Some(held) = &x.lease
            && held.holder != lease.holder
            && held.until > now
        {
            return Err(refused(Refusal::Leased));
        }
        x.lease = Some(lease.clone());
        // Like the Redis twin: an attempt changes neither `update_time`
        // (the state did not change) nor `next_attempt_time`.
        x.record.attempts += 1;
        let record = x.record.clone();
        st.event(
            "exchange.attempt",
            now,
            vec![
                ("exchange", id.0.clone()),
                ("attempts", record.attempts.to_string()),
            ],
        );
        Ok(record)
    }

    async fn defer_attempt(
        &self,
        id: &ExchangeId,
        next_attempt_time: Timestamp,
        park: bool,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        let mut st = self.lock()?;
        st.check_retained(&self.config, id, now)?;
        let x = st.pending_exchange_mut(id)?;
        x.lease = None;
        x.record.next_attempt_time = next_attempt_time;
        // Parking sticks until an operator resolves the exchange.
        x.record.parked |= park;
        let record = x.record.clone();
        let parked = if record.parked { "1" } else { "0" };
        st.event(
            "exchange.deferred",
            now,
            vec![("exchange", id.0.clone()), ("parked", parked.to_owned())],
        );
        Ok(record)
    }

    async fn complete(
        &self,
        id: &ExchangeId,
        sealed_deliverable: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        let mut st = self.lock()?;
        st.check_retained(&self.config, id, now)?;
        st.settle_exchange(id, ExchangeState::Succeeded, Stored::Redeemed, now, |r| {
            r.sealed_deliverable = sealed_deliverable;
        })
    }

    async fn release(
        &self,
        id: &ExchangeId,
        reason: &str,
        retryable: bool,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        let mut st = self.lock()?;
        st.check_retained(&self.config, id, now)?;
        let pending = st.exchange_mut(id)?.record.state == ExchangeState::Pending;
        let record = st.settle_exchange(id, ExchangeState::Failed, Stored::Active, now, |r| {
            r.failure_reason = reason.to_owned();
        })?;
        if pending {
            st.exchange_mut(id)?.retryable = retryable;
        }
        Ok(record)
    }

    async fn list_pending(
        &self,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ExchangeRecord>, LedgerError> {
        let st = self.lock()?;
        let start = match cursor {
            None => Bound::Unbounded,
            Some(s) => Bound::Excluded(parse_pending_cursor(s)?),
        };
        let limit = limit.max(1);
        let mut items = Vec::new();
        let mut next = None;
        for (t, id) in st.pending.range((start, Bound::Unbounded)) {
            if *t > created_before {
                break;
            }
            if items.len() == limit {
                next = items
                    .last()
                    .map(|x: &ExchangeRecord| pending_cursor(x.create_time, &x.id.0));
                break;
            }
            if let Some(x) = st.exchanges.get(id) {
                items.push(x.record.clone());
            }
        }
        Ok(Page { items, next })
    }

    async fn list_preferences(
        &self,
        campaign: &CampaignId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ExchangeRecord>, LedgerError> {
        let st = self.lock()?;
        let c = st.campaign(campaign)?;
        let start = match cursor {
            None | Some("") => Bound::Unbounded,
            Some(s) => Bound::Excluded(parse_pending_cursor(s)?),
        };
        let limit = limit.max(1);
        let mut items = Vec::new();
        let mut next = None;
        for (t, id) in c.preferences.range((start, Bound::Unbounded)) {
            if items.len() == limit {
                next = items
                    .last()
                    .map(|x: &ExchangeRecord| pending_cursor(x.create_time, &x.id.0));
                break;
            }
            if let Some(x) = st.exchanges.get(id) {
                items.push(x.record.clone());
            } else {
                return Err(LedgerError::Internal(format!(
                    "preference index names a missing exchange {id} ({})",
                    t.0
                )));
            }
        }
        Ok(Page { items, next })
    }

    async fn batch_by_ordinal(
        &self,
        campaign: &CampaignId,
        ordinal: u32,
    ) -> Result<Option<Batch>, LedgerError> {
        let st = self.lock()?;
        let Some(c) = st.by_id.get(campaign).and_then(|&ci| st.campaigns.get(ci)) else {
            return Ok(None);
        };
        let Some(i) = usize::try_from(ordinal).ok().and_then(|o| o.checked_sub(1)) else {
            return Ok(None);
        };
        Ok(c.batches.get(i).map(|b| b.batch.clone()))
    }

    async fn sweep(
        &self,
        campaign: &CampaignId,
        now: Timestamp,
    ) -> Result<SweepOutcome, LedgerError> {
        let mut st = self.lock()?;
        let ci = st.campaign_index(campaign)?;
        let c = st.campaign_at_mut(ci)?;
        let purge_due = c.deadline().plus(self.config.retention);
        if now < c.deadline() {
            return Ok(SweepOutcome {
                expired: 0,
                buckets: 1,
                purged: None,
                purge_due,
            });
        }
        let mut expired = 0i64;
        for rec in c.codes.values_mut() {
            let Some(b) = c.batches.get_mut(rec.batch) else {
                continue;
            };
            if rec.stored == Stored::Active && b.batch.state != BatchState::Void {
                rec.stored = Stored::Expired;
                b.tally.shift(Stored::Active, Stored::Expired);
                expired += 1;
            }
        }
        let due = now >= purge_due || c.purged.is_some();
        if expired > 0 {
            st.event(
                "campaign.swept",
                now,
                vec![
                    ("campaign", campaign.to_string()),
                    ("count", expired.to_string()),
                ],
            );
        }
        let purged = if due { Some(st.purge(ci, now)?) } else { None };
        Ok(SweepOutcome {
            expired,
            buckets: 1,
            purged,
            purge_due,
        })
    }

    async fn counts(
        &self,
        campaign: &CampaignId,
        now: Timestamp,
    ) -> Result<CampaignCounts, LedgerError> {
        let st = self.lock()?;
        Ok(st.campaign(campaign)?.counts(now))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<bool, LedgerError> {
        let mut st = self.lock()?;
        let free = match st.leases.get(name) {
            None => true,
            Some(held) => held.holder == lease.holder || held.until <= now,
        };
        if free {
            st.leases.insert(name.to_owned(), lease.clone());
            st.event(
                "lease.acquired",
                now,
                vec![("lease", name.to_owned()), ("holder", lease.holder.clone())],
            );
        }
        Ok(free)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LedgerError> {
        let mut st = self.lock()?;
        if st.leases.get(name).is_some_and(|l| l.holder == holder) {
            st.leases.remove(name);
        }
        Ok(())
    }

    async fn recent_events(&self, limit: usize) -> Result<Vec<Event>, LedgerError> {
        let st = self.lock()?;
        let skip = st.events.len().saturating_sub(limit);
        Ok(st.events.iter().skip(skip).cloned().collect())
    }
}
