//! Who may call giftx: API key records, rate limits, end-user failure
//! counters and the audit trail, behind one trait ([`AccessStore`]) with an
//! embedded twin ([`MemoryAccessStore`]) and a Redis one
//! ([`crate::redis::access::RedisAccessStore`]).
//!
//! Like the ledger, the store never sees a secret: a key record holds the
//! keyed hash of its token's secret part, an end user is named by a keyed
//! hash of what the portal sent. What a role may do, and how tokens are
//! made and checked, is the server's business.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use giftx_core::Timestamp;
use giftx_core::model::TenantId;
use serde::{Deserialize, Serialize};

use crate::{LedgerError, Page};

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// ExchangeService only.
    Portal,
    /// IssuanceService, ExpiryService, OperationsService of its tenant.
    Operator,
    /// Everything, in every tenant, and key management.
    Admin,
}

impl Role {
    /// `portal`, `operator`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Portal => "portal",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (as [`Role::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "portal" => Some(Role::Portal),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An API key as stored: everything but its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The key's id: the middle part of its token, `apiKeys/{id}`.
    pub id: String,
    /// Whose resources it reaches.
    #[serde(with = "tenant_text")]
    pub tenant: TenantId,
    /// What it may do.
    pub role: Role,
    /// Hex of the keyed hash of the token's secret part.
    pub digest: String,
    /// When it was created.
    pub create_time: Timestamp,
    /// When it stops working, if ever.
    pub expire_time: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoke_time: Option<Timestamp>,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// The id of the HMAC key `digest` is keyed with (keys created before
    /// key rings: `default`).
    #[serde(default = "default_key_id")]
    pub hmac_key: String,
}

fn default_key_id() -> String {
    giftx_core::hash::DEFAULT_KEY_ID.to_owned()
}

mod tenant_text {
    use giftx_core::model::TenantId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &TenantId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TenantId, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::parse("tenant", &s).map_err(|e| serde::de::Error::custom(e.description))
    }
}

/// One audited call, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call finished.
    pub time: Timestamp,
    /// `apiKeys/{id}`, `bootstrap` or `anonymous`.
    pub principal: String,
    /// The caller's tenant.
    pub tenant: String,
    /// The caller's role (`None`: not authenticated).
    pub role: Option<Role>,
    /// `/giftx.v1.<Service>/<Method>`.
    pub method: String,
    /// What the call named (may be empty).
    pub resource: String,
    /// The gRPC status code's name.
    pub outcome: String,
    /// 32 hex digits, or empty.
    pub trace_id: String,
}

/// The answer of [`AccessStore::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Allowed and counted.
    Allowed,
    /// Refused: the earliest a call would be allowed, from now.
    Refused(Duration),
}

/// A rate: `per_second` calls sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Sustained calls per second (> 0).
    pub per_second: f64,
    /// Calls that may come at once (≥ 1).
    pub burst: u32,
}

impl Rate {
    /// (emission interval, burst tolerance) in microseconds.
    pub fn gcra(self) -> (i64, i64) {
        #[allow(clippy::cast_possible_truncation)]
        let interval = (1_000_000.0 / self.per_second).ceil().max(1.0) as i64;
        (interval, interval * i64::from(self.burst.max(1) - 1))
    }
}

/// Keys, limits and audit, on Redis or in memory.
#[async_trait]
pub trait AccessStore: Send + Sync + std::fmt::Debug {
    /// Stores a new key.
    ///
    /// # Errors
    /// `Internal` when the id is taken (ids are random: a bug), else the
    /// store's error.
    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), LedgerError>;

    /// The key with this id.
    ///
    /// # Errors
    /// The store's error.
    async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, LedgerError>;

    /// Keys, newest first, after the cursor of a previous page.
    ///
    /// # Errors
    /// The store's error.
    async fn list_keys(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, LedgerError>;

    /// Marks a key revoked at `at` (unchanged when it already is).
    ///
    /// # Errors
    /// The store's error.
    async fn revoke_key(
        &self,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<ApiKeyRecord>, LedgerError>;

    /// Takes `n` calls at once (all or none) from the limit `bucket` at
    /// `rate`; `now_us` is the caller's clock in microseconds.
    ///
    /// # Errors
    /// The store's error.
    async fn take(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_us: i64,
    ) -> Result<Take, LedgerError>;

    /// Records the fingerprint of each HMAC key `(id, fingerprint)` whose
    /// id the store has not seen, and returns the ids whose recorded
    /// fingerprint differs from the one given: a key id that now names
    /// other key material, which would find no code hashed before.
    ///
    /// # Errors
    /// The store's error.
    async fn check_hmac_keys(&self, keys: &[(String, String)]) -> Result<Vec<String>, LedgerError>;

    /// Failures counted for `who` in its current window.
    ///
    /// # Errors
    /// The store's error.
    async fn failures(&self, who: &str) -> Result<u32, LedgerError>;

    /// Counts one failure of `who`; a window starts with its first failure
    /// and lasts `window`. Returns the failures in the window.
    ///
    /// # Errors
    /// The store's error.
    async fn add_failure(&self, who: &str, window: Duration) -> Result<u32, LedgerError>;

    /// Appends audit events (in order), dropping those older than
    /// `keep_after`.
    ///
    /// # Errors
    /// The store's error.
    async fn append_audit(
        &self,
        events: &[AuditRecord],
        keep_after: Timestamp,
    ) -> Result<(), LedgerError>;

    /// Audit events at or after `since`, oldest first, after the event with
    /// id `after` when given: `(id, event)`.
    ///
    /// # Errors
    /// The store's error; `Internal` for a malformed `after`.
    async fn list_audit(
        &self,
        after: Option<&str>,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, AuditRecord)>, LedgerError>;
}

/// An audit id: `<ms>-<seq>`, ordered as Redis stream ids are.
pub(crate) fn parse_audit_id(id: &str) -> Option<(i64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// [`AccessStore`] in process memory: for the embedded ledger (and tests).
#[derive(Debug, Default)]
pub struct MemoryAccessStore {
    inner: Mutex<MemoryAccess>,
}

#[derive(Debug, Default)]
struct MemoryAccess {
    keys: HashMap<String, ApiKeyRecord>,
    /// (create ms, id) of every key.
    order: BTreeMap<(i64, String), ()>,
    /// Theoretical arrival time (µs) per bucket.
    buckets: HashMap<String, i64>,
    /// (failures, window end) per end user, by the process clock.
    failures: HashMap<String, (u32, std::time::Instant)>,
    /// HMAC key id → fingerprint.
    hmac_keys: HashMap<String, String>,
    audit: VecDeque<((i64, u64), AuditRecord)>,
}

impl MemoryAccessStore {
    /// An empty store.
    pub fn new() -> MemoryAccessStore {
        MemoryAccessStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryAccess> {
        // Every change is one assignment: a poisoned store is still whole.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl AccessStore for MemoryAccessStore {
    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), LedgerError> {
        let mut m = self.lock();
        if m.keys.contains_key(&key.id) {
            return Err(LedgerError::Internal(format!("key id {} is taken", key.id)));
        }
        m.keys.insert(key.id.clone(), key.clone());
        m.order.insert((key.create_time.0, key.id.clone()), ());
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, LedgerError> {
        Ok(self.lock().keys.get(id).cloned())
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, LedgerError> {
        let m = self.lock();
        let skip: usize = cursor.map_or(Ok(0), |c| {
            c.parse()
                .map_err(|_| LedgerError::Internal("bad cursor".into()))
        })?;
        let items: Vec<ApiKeyRecord> = m
            .order
            .keys()
            .rev()
            .skip(skip)
            .take(limit)
            .filter_map(|(_, id)| m.keys.get(id).cloned())
            .collect();
        let next = (skip + items.len() < m.order.len() && !items.is_empty())
            .then(|| (skip + items.len()).to_string());
        Ok(Page { items, next })
    }

    async fn revoke_key(
        &self,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<ApiKeyRecord>, LedgerError> {
        let mut m = self.lock();
        Ok(m.keys.get_mut(id).map(|k| {
            k.revoke_time.get_or_insert(at);
            k.clone()
        }))
    }

    async fn take(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_us: i64,
    ) -> Result<Take, LedgerError> {
        let (interval, tolerance) = rate.gcra();
        let n = i64::from(n.max(1));
        let mut m = self.lock();
        let tat = m.buckets.get(bucket).copied().unwrap_or(0).max(now_us);
        let allow_at = tat + (n - 1) * interval - tolerance;
        if now_us < allow_at {
            let wait = u64::try_from(allow_at - now_us).unwrap_or(0);
            return Ok(Take::Refused(Duration::from_micros(wait)));
        }
        m.buckets.insert(bucket.to_owned(), tat + n * interval);
        if m.buckets.len() > 100_000 {
            // Full buckets carry nothing: drop them.
            m.buckets.retain(|_, t| *t > now_us);
        }
        Ok(Take::Allowed)
    }

    async fn failures(&self, who: &str) -> Result<u32, LedgerError> {
        let m = self.lock();
        Ok(match m.failures.get(who) {
            Some((n, end)) if *end > std::time::Instant::now() => *n,
            _ => 0,
        })
    }

    async fn check_hmac_keys(&self, keys: &[(String, String)]) -> Result<Vec<String>, LedgerError> {
        let mut m = self.lock();
        let mut differ = Vec::new();
        for (id, fp) in keys {
            let seen = m.hmac_keys.entry(id.clone()).or_insert_with(|| fp.clone());
            if seen != fp {
                differ.push(id.clone());
            }
        }
        Ok(differ)
    }

    async fn add_failure(&self, who: &str, window: Duration) -> Result<u32, LedgerError> {
        let now = std::time::Instant::now();
        let mut m = self.lock();
        if m.failures.len() > 100_000 {
            m.failures.retain(|_, (_, end)| *end > now);
        }
        let e = m
            .failures
            .entry(who.to_owned())
            .or_insert((0, now + window));
        if e.1 <= now {
            *e = (0, now + window);
        }
        e.0 += 1;
        Ok(e.0)
    }

    async fn append_audit(
        &self,
        events: &[AuditRecord],
        keep_after: Timestamp,
    ) -> Result<(), LedgerError> {
        let mut m = self.lock();
        for e in events {
            let last = m.audit.back().map_or((0, 0), |(id, _)| *id);
            let ms = e.time.0.max(last.0);
            let id = if ms == last.0 {
                (ms, last.1 + 1)
            } else {
                (ms, 0)
            };
            m.audit.push_back((id, e.clone()));
        }
        while m.audit.front().is_some_and(|(id, _)| id.0 < keep_after.0) {
            m.audit.pop_front();
        }
        Ok(())
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, AuditRecord)>, LedgerError> {
        let after = match after {
            Some(a) => Some(
                parse_audit_id(a).ok_or_else(|| LedgerError::Internal("bad audit id".into()))?,
            ),
            None => None,
        };
        let m = self.lock();
        Ok(m.audit
            .iter()
            .filter(|(id, _)| id.0 >= since.0 && after.is_none_or(|a| *id > a))
            .take(limit)
            .map(|((ms, seq), e)| (format!("{ms}-{seq}"), e.clone()))
            .collect())
    }
}
