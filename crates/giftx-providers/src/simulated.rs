//! `simulated`: an on-demand gift-code API **simulator** for demos and
//! tests. It behaves like a real provider API: idempotent on the request
//! key (same key → same deliverable, issued once), with configurable
//! latency, failure rates and faults, and magic inputs that trigger each
//! error class the way provider sandboxes do. It counts what it issued so
//! tests can prove nothing was issued twice.
//!
//! Where it keeps what it "issued" is the `state` setting:
//!
//! - `state = "store"` (the default): the host's [`ProviderStore`] under
//!   its provider id (the simulated provider's own database), so with a
//!   persistent store it survives a giftxd restart like a remote API would.
//!   Crash and restart tests rely on this. It costs giftx a round trip to
//!   its own store per issue, which a real provider (keeping its state in
//!   its own system) does not.
//! - `state = "memory"`: an in-process map with the same idempotency
//!   semantics (same key → same deliverable, issued once), **lost when
//!   giftxd restarts** (a re-drive after a restart then issues anew), and
//!   never trimmed (one entry per key issued). For benchmarks, so that the
//!   simulator adds no load to giftx's own Redis.
//!
//! # Faults, in the order they are decided
//!
//! 1. The runtime fault mode ([`SimulatorControl::set_fault`]; starts as
//!    the configured `fault`), when not [`FaultMode::None`].
//! 2. Magic option ids (when `magic = true`, the default): the option id's
//!    last hyphen-separated word decides.
//!
//!    | option id ends with | outcome |
//!    |---|---|
//!    | `-reject` | `Rejected { reason: "SIMULATED_REJECTED" }`, every attempt |
//!    | `-retry` | `Retryable { reason: "SIMULATED_UNAVAILABLE" }`, attempt 1 only |
//!    | `-unknown` | `Unknown`, nothing issued, attempt 1 only |
//!    | `-lost` | issued, then `Unknown` (response lost), attempt 1 only |
//!    | `-timeout` | hangs `hang_ms`, then `Unknown`, nothing issued, attempt 1 only |
//!
//!    Transient faults fire on attempt 1 only, so a re-drive (attempt 2)
//!    succeeds, as after a real blip.
//! 3. Random faults with the configured rates (`failure_rate`,
//!    `unknown_rate`, `lost_rate`, `timeout_rate`; fractions of calls).
//!
//! Outage faults (retryable, unknown, timeout) also hit `lookup`; a
//! rejection never hides a deliverable already issued for the key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use giftx_core::model::{Deliverable, DeliverableKind, ProviderId};
use giftx_provider::{
    Capabilities, Fulfilment, IssueRequest, ProviderAdapter, ProviderError, ProviderStore,
};
use serde::{Deserialize, Serialize};

use crate::CodeKind;
use crate::record::{self, DeliverableRecord};
use crate::reference;

/// `[providers.<id>] kind = "simulated"` settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// `"gift_code"` (a claim code) or `"gift_id"` (gift ID + management
    /// number).
    pub deliverable: CodeKind,
    /// False models providers whose terms forbid storing claim codes:
    /// giftx then keeps only the key and re-display calls `lookup`.
    pub store_deliverable: bool,
    /// Added to every call.
    pub latency_ms: u64,
    /// Up to this much more, uniformly at random.
    pub jitter_ms: u64,
    /// Fraction of calls answering `Retryable` (nothing issued).
    pub failure_rate: f64,
    /// Fraction of calls answering `Unknown` (nothing issued).
    pub unknown_rate: f64,
    /// Fraction of calls that issue, then answer `Unknown`.
    pub lost_rate: f64,
    /// Fraction of calls that hang `hang_ms`, then answer `Unknown`.
    pub timeout_rate: f64,
    /// How long a timeout fault hangs (longer than giftx's deadline).
    pub hang_ms: u64,
    /// Fault mode at start.
    pub fault: FaultMode,
    /// Whether magic option ids trigger faults.
    pub magic: bool,
    /// Redeem URL put in deliverables.
    pub redeem_url: String,
    /// Where what was issued is kept (see the [module docs](self)).
    pub state: SimulatorState,
}

/// `state = "store" | "memory"`: where a simulator keeps what it issued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulatorState {
    /// The host's [`ProviderStore`]: survives restarts.
    #[default]
    Store,
    /// An in-process map: same idempotency, lost on restart.
    Memory,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            deliverable: CodeKind::GiftCode,
            store_deliverable: true,
            latency_ms: 0,
            jitter_ms: 0,
            failure_rate: 0.0,
            unknown_rate: 0.0,
            lost_rate: 0.0,
            timeout_rate: 0.0,
            hang_ms: 30_000,
            fault: FaultMode::None,
            magic: true,
            redeem_url: "https://simulator.giftx.invalid/redeem".to_owned(),
            state: SimulatorState::Store,
        }
    }
}

impl SimulatedConfig {
    /// Checks the settings; on error, the offending field and why.
    ///
    /// # Errors
    /// `(field, reason)` for a rate outside 0..=1 or rates summing above 1.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let rates = [
            ("failure_rate", self.failure_rate),
            ("unknown_rate", self.unknown_rate),
            ("lost_rate", self.lost_rate),
            ("timeout_rate", self.timeout_rate),
        ];
        for (field, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err((field, format!("must be between 0 and 1, got {r}")));
            }
        }
        let sum: f64 = rates.iter().map(|(_, r)| r).sum();
        if sum > 1.0 {
            return Err((
                "failure_rate",
                format!("failure, unknown, lost and timeout rates sum to {sum}, more than 1"),
            ));
        }
        Ok(())
    }
}

/// A fault applied to every call while set (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// Behave (subject to magic inputs and random rates).
    #[default]
    None,
    /// Reject every new issue (`SIMULATED_REJECTED`).
    RejectAll,
    /// Answer `Retryable` (`SIMULATED_UNAVAILABLE`) to every call.
    RetryableAll,
    /// Answer `Unknown` to every call, issuing nothing.
    UnknownAll,
    /// Hang `hang_ms` on every call, then answer `Unknown`, issuing nothing.
    Timeout,
    /// Issue (once per key, as always), then answer `Unknown`: proves that
    /// re-drives return the first deliverable instead of issuing again.
    UnknownAfterIssue,
}

#[derive(Debug)]
struct ControlState {
    fault: Mutex<FaultMode>,
    latency: Mutex<(Duration, Duration)>,
    issue_calls: AtomicU64,
    lookup_calls: AtomicU64,
    issued: AtomicU64,
    per_key: Mutex<HashMap<String, u64>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a plain read or write: never half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handle on one simulator: set faults at runtime, read its counters.
/// Clones share the simulator.
#[derive(Clone, Debug)]
pub struct SimulatorControl {
    state: Arc<ControlState>,
}

impl SimulatorControl {
    fn new(fault: FaultMode, latency: Duration, jitter: Duration) -> Self {
        SimulatorControl {
            state: Arc::new(ControlState {
                fault: Mutex::new(fault),
                latency: Mutex::new((latency, jitter)),
                issue_calls: AtomicU64::new(0),
                lookup_calls: AtomicU64::new(0),
                issued: AtomicU64::new(0),
                per_key: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Applies `mode` to every call from now on.
    pub fn set_fault(&self, mode: FaultMode) {
        *locked(&self.state.fault) = mode;
    }

    /// The current fault mode.
    pub fn fault(&self) -> FaultMode {
        *locked(&self.state.fault)
    }

    /// Sets the latency of every call to `latency` plus up to `jitter`.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        *locked(&self.state.latency) = (latency, jitter);
    }

    /// Deliverables created (by this process), at most one per key.
    pub fn issued_count(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Calls to `issue`, whatever their outcome.
    pub fn issue_calls(&self) -> u64 {
        self.state.issue_calls.load(Ordering::SeqCst)
    }

    /// Calls to `lookup`.
    pub fn lookup_calls(&self) -> u64 {
        self.state.lookup_calls.load(Ordering::SeqCst)
    }

    /// Deliverables created for `key`: 0 or 1, or the simulator is broken.
    pub fn issued_for(&self, key: &str) -> u64 {
        locked(&self.state.per_key).get(key).copied().unwrap_or(0)
    }

    /// The most deliverables created for any one key (0 or 1).
    pub fn max_issued_per_key(&self) -> u64 {
        locked(&self.state.per_key)
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn latency(&self) -> (Duration, Duration) {
        *locked(&self.state.latency)
    }

    fn record_issue(&self, key: &str) {
        self.state.issued.fetch_add(1, Ordering::SeqCst);
        *locked(&self.state.per_key)
            .entry(key.to_owned())
            .or_insert(0) += 1;
    }
}

/// The control handles of the simulators a host built, by provider id.
/// Clones share the registry.
#[derive(Clone, Debug, Default)]
pub struct SimulatorControls {
    by_id: Arc<Mutex<HashMap<ProviderId, SimulatorControl>>>,
}

impl SimulatorControls {
    /// The control of simulated provider `id`, if one was built.
    pub fn get(&self, id: &str) -> Option<SimulatorControl> {
        locked(&self.by_id)
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, v)| v.clone())
    }

    /// Ids of the simulated providers built, sorted.
    pub fn ids(&self) -> Vec<ProviderId> {
        let mut ids: Vec<_> = locked(&self.by_id).keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn insert(&self, id: ProviderId, control: SimulatorControl) {
        locked(&self.by_id).insert(id, control);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Reject,
    Retryable,
    Unknown,
    Lost,
    Timeout,
}

/// Where the deliverables issued live (`state`).
enum Issued {
    Store(Arc<dyn ProviderStore>),
    Memory(Mutex<HashMap<String, Deliverable>>),
}

/// The simulator adapter.
pub struct SimulatedProvider {
    id: ProviderId,
    config: SimulatedConfig,
    issued: Issued,
    control: SimulatorControl,
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SimulatedProvider {
    /// A simulator `id` keeping its state in `store` (or, with
    /// `state = "memory"`, in this process). Rates outside 0..=1 behave as
    /// clamped; [`SimulatedConfig::validate`] refuses them.
    pub fn new(id: ProviderId, config: SimulatedConfig, store: Arc<dyn ProviderStore>) -> Self {
        let control = SimulatorControl::new(
            config.fault,
            Duration::from_millis(config.latency_ms),
            Duration::from_millis(config.jitter_ms),
        );
        let issued = match config.state {
            SimulatorState::Store => Issued::Store(store),
            SimulatorState::Memory => Issued::Memory(Mutex::new(HashMap::new())),
        };
        SimulatedProvider {
            id,
            config,
            issued,
            control,
        }
    }

    /// What was issued for `idempotency_key`, if anything.
    async fn issued_for(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<Deliverable>, ProviderError> {
        match &self.issued {
            Issued::Store(store) => match store.get(&self.id, &Self::key(idempotency_key)).await? {
                Some(v) => Ok(Some(
                    record::decode::<DeliverableRecord>(&v)?.to_deliverable()?,
                )),
                None => Ok(None),
            },
            Issued::Memory(m) => Ok(locked(m).get(idempotency_key).cloned()),
        }
    }

    /// Keeps `fresh` for `idempotency_key` unless something already is:
    /// what is kept now, and whether it is `fresh`.
    async fn keep(
        &self,
        idempotency_key: &str,
        fresh: Deliverable,
    ) -> Result<(Deliverable, bool), ProviderError> {
        match &self.issued {
            Issued::Store(store) => {
                let stored = store
                    .put_if_absent(
                        &self.id,
                        &Self::key(idempotency_key),
                        &record::encode(&DeliverableRecord::from(&fresh))?,
                    )
                    .await?;
                let kept = record::decode::<DeliverableRecord>(&stored.value)?.to_deliverable()?;
                Ok((kept, stored.created))
            }
            Issued::Memory(m) => {
                let mut m = locked(m);
                match m.get(idempotency_key) {
                    Some(d) => Ok((d.clone(), false)),
                    None => {
                        m.insert(idempotency_key.to_owned(), fresh.clone());
                        Ok((fresh, true))
                    }
                }
            }
        }
    }

    /// The handle on this simulator.
    pub fn control(&self) -> SimulatorControl {
        self.control.clone()
    }

    async fn delay(&self) -> Result<(), ProviderError> {
        let (latency, jitter) = self.control.latency();
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            jitter.mul_f64(roll()?)
        };
        let d = latency + extra;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        Ok(())
    }

    fn magic(&self, req: &IssueRequest) -> Option<Fault> {
        if !self.config.magic {
            return None;
        }
        let word = req.option.as_str().rsplit('-').next()?;
        let fault = match word {
            "reject" => return Some(Fault::Reject),
            "retry" => Fault::Retryable,
            "unknown" => Fault::Unknown,
            "lost" => Fault::Lost,
            "timeout" => Fault::Timeout,
            _ => return None,
        };
        (req.attempt <= 1).then_some(fault)
    }

    fn random_fault(&self) -> Result<Option<Fault>, ProviderError> {
        let c = &self.config;
        if c.failure_rate + c.unknown_rate + c.lost_rate + c.timeout_rate <= 0.0 {
            return Ok(None);
        }
        let r = roll()?;
        let mut edge = 0.0;
        for (rate, fault) in [
            (c.failure_rate, Fault::Retryable),
            (c.unknown_rate, Fault::Unknown),
            (c.lost_rate, Fault::Lost),
            (c.timeout_rate, Fault::Timeout),
        ] {
            edge += rate.clamp(0.0, 1.0);
            if r < edge {
                return Ok(Some(fault));
            }
        }
        Ok(None)
    }

    fn runtime_fault(&self) -> Option<Fault> {
        match self.control.fault() {
            FaultMode::None => None,
            FaultMode::RejectAll => Some(Fault::Reject),
            FaultMode::RetryableAll => Some(Fault::Retryable),
            FaultMode::UnknownAll => Some(Fault::Unknown),
            FaultMode::Timeout => Some(Fault::Timeout),
            FaultMode::UnknownAfterIssue => Some(Fault::Lost),
        }
    }

    /// Answers an outage fault; `Ok` for the others (handled by the caller).
    async fn outage(&self, fault: Option<Fault>) -> Result<(), ProviderError> {
        match fault {
            Some(Fault::Retryable) => Err(ProviderError::Retryable {
                reason: "SIMULATED_UNAVAILABLE".to_owned(),
                retry_after: Some(Duration::from_secs(1)),
            }),
            Some(Fault::Unknown) => Err(ProviderError::unknown(
                "simulated: connection reset before a response",
            )),
            Some(Fault::Timeout) => {
                tokio::time::sleep(Duration::from_millis(self.config.hang_ms)).await;
                Err(ProviderError::unknown("simulated: request timed out"))
            }
            Some(Fault::Reject | Fault::Lost) | None => Ok(()),
        }
    }

    fn fresh(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
        let (code, pin) = match self.config.deliverable {
            // Claim codes shaped like the big gift-card APIs': 4-6-4.
            CodeKind::GiftCode => (
                reference::grouped(&reference::random_symbols(14)?, &[4, 6, 4]),
                String::new(),
            ),
            // E-money gift IDs: 16 symbols + an 8-digit management number.
            CodeKind::GiftId => (
                reference::grouped(&reference::random_symbols(16)?, &[4, 4, 4, 4]),
                reference::random_digits(8)?,
            ),
        };
        Ok(Deliverable {
            kind: DeliverableKind::from(self.config.deliverable),
            code,
            pin,
            value: Some(req.face_value),
            expire_time: None,
            redeem_url: self.config.redeem_url.clone(),
            reference: format!("SIM-{}", reference::random_symbols(12)?),
        })
    }

    fn key(idempotency_key: &str) -> String {
        format!("issued/{idempotency_key}")
    }
}

/// A uniform number in [0, 1).
fn roll() -> Result<f64, ProviderError> {
    let n = giftx_core::random::u32()
        .map_err(|e| ProviderError::retryable(format!("RNG_UNAVAILABLE: {e}")))?;
    Ok(f64::from(n) / (f64::from(u32::MAX) + 1.0))
}

#[async_trait]
impl ProviderAdapter for SimulatedProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            store_deliverable: self.config.store_deliverable,
            fulfilment: Fulfilment::Immediate,
            cancel: false,
        }
    }

    async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
        self.control
            .state
            .issue_calls
            .fetch_add(1, Ordering::SeqCst);
        self.delay().await?;
        let fault = match self.runtime_fault().or_else(|| self.magic(req)) {
            Some(f) => Some(f),
            None => self.random_fault()?,
        };
        self.outage(fault).await?;
        if fault == Some(Fault::Reject) {
            // A provider replays an earlier success for the key rather than
            // refusing it after the fact.
            return match self.issued_for(&req.idempotency_key).await? {
                Some(d) => Ok(d),
                None => Err(ProviderError::rejected("SIMULATED_REJECTED")),
            };
        }
        let fresh = self.fresh(req)?;
        let (kept, created) = self.keep(&req.idempotency_key, fresh).await?;
        if created {
            self.control.record_issue(&req.idempotency_key);
        }
        if fault == Some(Fault::Lost) {
            return Err(ProviderError::unknown(
                "simulated: issued, but the response was lost",
            ));
        }
        Ok(kept)
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Deliverable>, ProviderError> {
        self.control
            .state
            .lookup_calls
            .fetch_add(1, Ordering::SeqCst);
        self.delay().await?;
        let fault = match self.runtime_fault() {
            Some(f) => Some(f),
            None => self.random_fault()?,
        };
        self.outage(fault).await?;
        self.issued_for(idempotency_key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;
    use giftx_provider::MemoryProviderStore;

    fn sim(config: SimulatedConfig) -> Arc<SimulatedProvider> {
        Arc::new(SimulatedProvider::new(
            ProviderId::parse("id", "amazon-sim").unwrap(),
            config,
            Arc::new(MemoryProviderStore::new()),
        ))
    }

    fn sim_with(
        config: SimulatedConfig,
        store: Arc<MemoryProviderStore>,
    ) -> Arc<SimulatedProvider> {
        Arc::new(SimulatedProvider::new(
            ProviderId::parse("id", "amazon-sim").unwrap(),
            config,
            store,
        ))
    }

    #[test]
    fn state_setting_defaults_to_the_store_and_refuses_unknown_values() {
        let parse = |t: &str| toml::from_str::<SimulatedConfig>(t);
        assert_eq!(parse("").unwrap().state, SimulatorState::Store);
        assert_eq!(
            parse("state = \"store\"").unwrap().state,
            SimulatorState::Store
        );
        assert_eq!(
            parse("state = \"memory\"").unwrap().state,
            SimulatorState::Memory
        );
        let e = parse("state = \"disk\"").unwrap_err().to_string();
        assert!(e.contains("disk") && e.contains("memory"), "{e}");
        assert!(parse("states = \"memory\"").is_err());
    }

    #[tokio::test]
    async fn store_state_keeps_what_was_issued_in_the_host_store_and_memory_does_not() {
        let id = ProviderId::parse("id", "amazon-sim").unwrap();
        for (state, in_store) in [
            (SimulatorState::Store, true),
            (SimulatorState::Memory, false),
        ] {
            let store = Arc::new(MemoryProviderStore::new());
            let s = sim_with(
                SimulatedConfig {
                    state,
                    ..SimulatedConfig::default()
                },
                store.clone(),
            );
            let d = s.issue(&request("k1", "amazon")).await.unwrap();
            assert_eq!(
                store.get(&id, "issued/k1").await.unwrap().is_some(),
                in_store
            );
            // A second simulator on the same store stands for a restarted
            // giftxd: only the store state survives it.
            let restarted = sim_with(
                SimulatedConfig {
                    state,
                    ..SimulatedConfig::default()
                },
                store,
            );
            let found = restarted.lookup("k1").await.unwrap();
            assert_eq!(found, in_store.then_some(d), "{state:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_state_has_the_same_idempotency_as_the_store() {
        let memory = || SimulatedConfig {
            state: SimulatorState::Memory,
            hang_ms: 5,
            ..SimulatedConfig::default()
        };
        let s = sim(memory());
        let a = s.issue(&request("k1", "amazon")).await.unwrap();
        assert_eq!(s.issue(&request("k1", "amazon")).await.unwrap(), a);
        let b = s.issue(&request("k2", "amazon")).await.unwrap();
        assert_ne!(a.code, b.code);
        assert_eq!(s.lookup("k1").await.unwrap(), Some(a.clone()));
        assert_eq!(s.lookup("never").await.unwrap(), None);
        let c = s.control();
        assert_eq!((c.issued_count(), c.issue_calls()), (2, 3));

        // One key from many tasks at once: issued once.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let s = s.clone();
            set.spawn(async move { s.issue(&request("same", "amazon")).await });
        }
        let mut codes = std::collections::HashSet::new();
        while let Some(r) = set.join_next().await {
            codes.insert(r.unwrap().unwrap().code);
        }
        assert_eq!(codes.len(), 1);
        assert_eq!(c.issued_for("same"), 1);

        // Lost response: the re-drive finds the first deliverable.
        let err = s.issue(&request("l", "gift-lost")).await.unwrap_err();
        assert_eq!(err.class(), "unknown");
        let found = s.lookup("l").await.unwrap().unwrap();
        let mut redrive = request("l", "gift-lost");
        redrive.attempt = 2;
        assert_eq!(s.issue(&redrive).await.unwrap(), found);
        assert_eq!(c.issued_for("l"), 1);

        // A rejection never hides what was already issued for the key.
        c.set_fault(FaultMode::RejectAll);
        assert_eq!(s.issue(&request("k1", "amazon")).await.unwrap(), a);
        assert_eq!(
            s.issue(&request("new", "amazon")).await,
            Err(ProviderError::rejected("SIMULATED_REJECTED"))
        );
        assert_eq!(c.max_issued_per_key(), 1);
    }

    #[tokio::test]
    async fn issue_is_idempotent_on_the_key_and_counted_once() {
        let s = sim(SimulatedConfig::default());
        let a = s.issue(&request("k1", "amazon")).await.unwrap();
        let again = s.issue(&request("k1", "amazon")).await.unwrap();
        assert_eq!(a, again);
        let b = s.issue(&request("k2", "amazon")).await.unwrap();
        assert_ne!(a.code, b.code);
        let c = s.control();
        assert_eq!((c.issued_count(), c.issue_calls()), (2, 3));
        assert_eq!(c.issued_for("k1"), 1);
        assert_eq!(c.issued_for("nope"), 0);
        assert_eq!(s.lookup("k1").await.unwrap(), Some(a.clone()));
        assert_eq!(s.lookup("never").await.unwrap(), None);
        assert_eq!(a.kind, DeliverableKind::GiftCode);
        assert_eq!(a.code.len(), 16);
        assert_eq!(a.value, Some(crate::testing::jpy(500)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_issues_with_one_key_issue_once() {
        let s = sim(SimulatedConfig {
            jitter_ms: 3,
            ..SimulatedConfig::default()
        });
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let s = s.clone();
            set.spawn(async move { s.issue(&request("same", "amazon")).await });
        }
        let mut codes = std::collections::HashSet::new();
        while let Some(r) = set.join_next().await {
            codes.insert(r.unwrap().unwrap().code);
        }
        assert_eq!(codes.len(), 1);
        let c = s.control();
        assert_eq!(
            (c.issued_count(), c.issue_calls(), c.issued_for("same")),
            (1, 100, 1)
        );
    }

    #[tokio::test]
    async fn gift_ids_carry_a_management_number_and_store_flag_shows_in_capabilities() {
        let s = sim(SimulatedConfig {
            deliverable: CodeKind::GiftId,
            store_deliverable: false,
            ..SimulatedConfig::default()
        });
        assert!(!s.capabilities().store_deliverable);
        let d = s.issue(&request("k", "edy")).await.unwrap();
        assert_eq!(d.kind, DeliverableKind::GiftId);
        assert_eq!(d.code.len(), 19);
        assert_eq!(d.pin.len(), 8);
        // Re-display asks the provider again: same deliverable, no new issue.
        assert_eq!(s.lookup("k").await.unwrap(), Some(d));
        assert_eq!(s.control().issued_count(), 1);
        assert_eq!(s.control().lookup_calls(), 1);
    }

    #[tokio::test]
    async fn magic_option_ids_trigger_each_error_class() {
        let s = sim(SimulatedConfig {
            hang_ms: 5,
            ..SimulatedConfig::default()
        });
        let err = |r: Result<Deliverable, ProviderError>| r.unwrap_err().class();
        assert_eq!(err(s.issue(&request("r", "gift-reject")).await), "rejected");
        let mut again = request("r", "gift-reject");
        again.attempt = 2;
        assert_eq!(err(s.issue(&again).await), "rejected");
        assert_eq!(err(s.issue(&request("t", "gift-retry")).await), "retryable");
        assert_eq!(err(s.issue(&request("u", "gift-unknown")).await), "unknown");
        assert_eq!(err(s.issue(&request("h", "gift-timeout")).await), "unknown");
        assert_eq!(s.control().issued_count(), 0);
        assert_eq!(s.lookup("u").await.unwrap(), None);
        // Lost: issued, then unknown; the re-drive finds it and nothing is
        // issued twice.
        assert_eq!(err(s.issue(&request("l", "gift-lost")).await), "unknown");
        let found = s.lookup("l").await.unwrap().unwrap();
        let mut redrive = request("l", "gift-lost");
        redrive.attempt = 2;
        assert_eq!(s.issue(&redrive).await.unwrap(), found);
        assert_eq!(s.control().issued_for("l"), 1);
        // Transient faults clear on attempt 2.
        for (key, opt) in [
            ("t", "gift-retry"),
            ("u", "gift-unknown"),
            ("h", "gift-timeout"),
        ] {
            let mut r = request(key, opt);
            r.attempt = 2;
            assert!(s.issue(&r).await.is_ok(), "{opt}");
        }
        assert_eq!(s.control().issued_count(), 4);
        assert_eq!(s.control().max_issued_per_key(), 1);
    }

    #[tokio::test]
    async fn magic_can_be_turned_off() {
        let s = sim(SimulatedConfig {
            magic: false,
            ..SimulatedConfig::default()
        });
        assert!(s.issue(&request("r", "gift-reject")).await.is_ok());
    }

    #[tokio::test]
    async fn runtime_fault_modes_answer_each_class_and_never_double_issue() {
        let s = sim(SimulatedConfig {
            hang_ms: 5,
            ..SimulatedConfig::default()
        });
        let c = s.control();
        let issued = s.issue(&request("before", "amazon")).await.unwrap();

        c.set_fault(FaultMode::RejectAll);
        assert_eq!(
            s.issue(&request("new", "amazon")).await,
            Err(ProviderError::rejected("SIMULATED_REJECTED"))
        );
        // A rejection never hides what was already issued for the key.
        assert_eq!(s.issue(&request("before", "amazon")).await.unwrap(), issued);

        c.set_fault(FaultMode::RetryableAll);
        assert!(matches!(
            s.issue(&request("new", "amazon")).await,
            Err(ProviderError::Retryable { ref reason, retry_after: Some(_) }) if reason == "SIMULATED_UNAVAILABLE"
        ));
        assert_eq!(s.lookup("before").await.unwrap_err().class(), "retryable");

        c.set_fault(FaultMode::UnknownAll);
        assert_eq!(
            s.issue(&request("new", "amazon"))
                .await
                .unwrap_err()
                .class(),
            "unknown"
        );
        assert_eq!(s.lookup("before").await.unwrap_err().class(), "unknown");

        c.set_fault(FaultMode::Timeout);
        let req = request("new", "amazon");
        let t = tokio::time::timeout(Duration::from_secs(5), s.issue(&req)).await;
        assert_eq!(t.unwrap().unwrap_err().class(), "unknown");

        c.set_fault(FaultMode::UnknownAfterIssue);
        for _ in 0..3 {
            assert_eq!(
                s.issue(&request("new", "amazon"))
                    .await
                    .unwrap_err()
                    .class(),
                "unknown"
            );
        }
        assert_eq!(c.issued_for("new"), 1);

        c.set_fault(FaultMode::None);
        assert_eq!(c.fault(), FaultMode::None);
        let got = s.issue(&request("new", "amazon")).await.unwrap();
        assert_eq!(s.lookup("new").await.unwrap(), Some(got));
        assert_eq!(c.issued_count(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeouts_outlast_the_callers_deadline() {
        let s = sim(SimulatedConfig {
            fault: FaultMode::Timeout,
            hang_ms: 60_000,
            ..SimulatedConfig::default()
        });
        let r = tokio::time::timeout(Duration::from_millis(50), s.issue(&request("k", "a"))).await;
        assert!(r.is_err(), "the call should still hang");
        assert_eq!(s.control().issued_count(), 0);
    }

    #[tokio::test]
    async fn random_faults_follow_the_configured_rates() {
        let s = sim(SimulatedConfig {
            failure_rate: 1.0,
            ..SimulatedConfig::default()
        });
        for i in 0..20 {
            let r = s.issue(&request(&format!("k{i}"), "a")).await;
            assert_eq!(r.unwrap_err().class(), "retryable");
        }
        let lost = sim(SimulatedConfig {
            lost_rate: 1.0,
            ..SimulatedConfig::default()
        });
        assert_eq!(
            lost.issue(&request("k", "a")).await.unwrap_err().class(),
            "unknown"
        );
        assert_eq!(lost.control().issued_for("k"), 1);
        assert!(matches!(
            SimulatedConfig {
                failure_rate: 0.6,
                lost_rate: 0.6,
                ..SimulatedConfig::default()
            }
            .validate(),
            Err(("failure_rate", _))
        ));
        assert!(matches!(
            SimulatedConfig {
                unknown_rate: -0.1,
                ..SimulatedConfig::default()
            }
            .validate(),
            Err(("unknown_rate", _))
        ));
    }

    #[tokio::test]
    async fn latency_is_applied_to_every_call() {
        let s = sim(SimulatedConfig {
            latency_ms: 50,
            ..SimulatedConfig::default()
        });
        let start = tokio::time::Instant::now();
        s.issue(&request("k", "a")).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50));
        s.control()
            .set_latency(Duration::from_millis(80), Duration::ZERO);
        let start = tokio::time::Instant::now();
        assert!(s.lookup("k").await.unwrap().is_some());
        assert!(start.elapsed() >= Duration::from_millis(80));
    }
}
