//! The expiry service's background workers: the sweeper and the reconciler.
//!
//! Exactly one giftxd runs them at a time. They hold the ledger lease
//! [`LEASE_NAME`]; the holder renews it every tick and works only while its
//! local view of the lease is valid, which ends (`ttl × 0.8` after the
//! renewal was *sent*) before the lease can lapse in the ledger. So a holder
//! that loses its lease has stopped before another can take it over.
//! On top of that, every exchange is driven under its own per-exchange
//! lease, so no exchange is ever reconciled twice concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use giftx_core::Clock;
use giftx_core::model::{CampaignId, ExchangeState};
use giftx_ledger::{Lease, Ledger};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::exchanger::{DriveOutcome, Exchanger};

/// The ledger lease the workers run under.
pub const LEASE_NAME: &str = "expiry-workers";

/// Worker schedule.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Lease time-to-live; another instance takes over within it.
    pub lease_ttl: Duration,
    /// Pause between passes.
    pub interval: Duration,
    /// Only PENDING exchanges older than this are re-driven.
    pub reconcile_min_age: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease_ttl: Duration::from_secs(15),
            interval: Duration::from_secs(5),
            reconcile_min_age: Duration::from_secs(30),
        }
    }
}

/// What the workers did, for metrics and tests.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Is this process the lease holder now?
    pub holding: bool,
    /// Exchanges re-driven in total, by outcome name.
    pub reconciled: HashMap<&'static str, u64>,
    /// Codes marked expired in total.
    pub swept: i64,
    /// Passes completed.
    pub passes: u64,
}

/// The workers. `run` until shutdown.
pub struct Workers {
    ledger: Arc<dyn Ledger>,
    exchanger: Arc<Exchanger>,
    clock: Arc<dyn Clock>,
    settings: WorkerSettings,
    holder: String,
    stats: watch::Sender<WorkerStats>,
    /// Campaign versions already swept after their deadline, with when
    /// the next sweep of that version has work (the purge, at deadline +
    /// retention; None once purged).
    swept: HashMap<CampaignId, (u64, Option<giftx_core::Timestamp>)>,
}

impl Workers {
    /// Workers over these parts; `holder` names this process in the lease.
    pub fn new(
        ledger: Arc<dyn Ledger>,
        exchanger: Arc<Exchanger>,
        clock: Arc<dyn Clock>,
        settings: WorkerSettings,
        holder: String,
    ) -> (Self, watch::Receiver<WorkerStats>) {
        let (tx, rx) = watch::channel(WorkerStats::default());
        (
            Workers {
                ledger,
                exchanger,
                clock,
                settings,
                holder,
                stats: tx,
                swept: HashMap::new(),
            },
            rx,
        )
    }

    /// Runs passes until `shutdown` turns true (or its sender is dropped),
    /// then gives the lease up.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut valid_until: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            valid_until = self.renew().await;
            self.stats
                .send_modify(|s| s.holding = valid_until.is_some());
            if let Some(v) = valid_until {
                if let Err(e) = self.pass(v).await {
                    warn!(error = %e, "expiry worker pass failed");
                }
                self.stats.send_modify(|s| s.passes += 1);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                changed = shutdown.changed() => {
                    // The sender is gone with the server that owned it (its
                    // task was cancelled): stop and give the lease up, rather
                    // than spin through passes with no pause, forever.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        if valid_until.is_some() {
            let _ = self.ledger.release_lease(LEASE_NAME, &self.holder).await;
        }
    }

    /// Takes or renews the lease; the instant until which this process may
    /// work, or None.
    async fn renew(&self) -> Option<Instant> {
        let sent = Instant::now();
        let now = self.clock.now();
        let lease = Lease {
            holder: self.holder.clone(),
            until: now.plus(self.settings.lease_ttl),
        };
        match self.ledger.acquire_lease(LEASE_NAME, &lease, now).await {
            Ok(true) => Some(sent + self.settings.lease_ttl.mul_f64(0.8)),
            Ok(false) => None,
            Err(e) => {
                warn!(error = %e, "expiry lease renewal failed");
                None
            }
        }
    }

    async fn pass(&mut self, mut valid_until: Instant) -> Result<(), giftx_ledger::LedgerError> {
        self.sweep_pass(&mut valid_until).await?;
        crate::metrics::global().sweep_completed();
        self.reconcile_pass(&mut valid_until).await
    }

    /// Keeps the lease fresh during a long pass; false when it is lost.
    async fn still_holding(&self, valid_until: &mut Instant) -> bool {
        let ttl = self.settings.lease_ttl;
        if Instant::now() + ttl.mul_f64(0.4) < *valid_until {
            return true;
        }
        match self.renew().await {
            Some(v) => {
                *valid_until = v;
                true
            }
            None => false,
        }
    }

    async fn sweep_pass(
        &mut self,
        valid_until: &mut Instant,
    ) -> Result<(), giftx_ledger::LedgerError> {
        let mut cursor: Option<String> = None;
        loop {
            let page = self.ledger.list_campaigns(cursor.as_deref(), 200).await?;
            for c in page.items {
                let now = self.clock.now();
                if c.spec.expire_time > now {
                    continue;
                }
                // Swept at this version: nothing to do again until the
                // purge is due (the ledger says when), nor after it.
                if let Some(&(v, next)) = self.swept.get(&c.spec.id)
                    && v == c.version
                    && next.is_none_or(|due| now < due)
                {
                    continue;
                }
                if !self.still_holding(valid_until).await {
                    return Ok(());
                }
                // A trace of its own per campaign swept (not a child of
                // whatever ran before), so its log lines carry a trace id.
                let root = tracing::info_span!(
                    parent: None,
                    "worker.sweep",
                    giftx.campaign = %c.spec.id,
                );
                let bulk = root.in_scope(|| crate::telemetry::bulk_span("sweep"));
                let out = tracing::Instrument::instrument(
                    self.ledger.sweep(&c.spec.id, now),
                    bulk.clone(),
                )
                .await?;
                bulk.record("giftx.buckets", out.buckets);
                bulk.record("giftx.codes", out.expired);
                let next = out.purged.is_none().then_some(out.purge_due);
                self.swept.insert(c.spec.id.clone(), (c.version, next));
                root.in_scope(|| {
                    if out.expired > 0 {
                        info!(campaign = %c.spec.id, expired = out.expired, "swept expired codes");
                    }
                    if let Some(at) = out.purged {
                        info!(campaign = %c.spec.id, purge_time = at.millis(), "campaign purged past its retention");
                    }
                });
                self.stats.send_modify(|s| s.swept += out.expired);
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(()),
            }
        }
    }

    async fn reconcile_pass(
        &mut self,
        valid_until: &mut Instant,
    ) -> Result<(), giftx_ledger::LedgerError> {
        let now = self.clock.now();
        let before = now.minus(self.settings.reconcile_min_age);
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .ledger
                .list_pending(before, cursor.as_deref(), 100)
                .await?;
            for rec in page.items {
                if rec.parked
                    || rec.state != ExchangeState::Pending
                    || rec.next_attempt_time > self.clock.now()
                {
                    continue;
                }
                if !self.still_holding(valid_until).await {
                    return Ok(());
                }
                // Each re-drive is a trace of its own, named by the
                // exchange, so its provider call and log lines can be found.
                let root = tracing::info_span!(
                    parent: None,
                    "worker.reconcile",
                    giftx.exchange = %crate::convert::exchange_name(&rec.id),
                    giftx.outcome = tracing::field::Empty,
                );
                let result = tracing::Instrument::instrument(
                    self.exchanger.reconcile(&rec.id),
                    root.clone(),
                )
                .await;
                let _entered = root.enter();
                let outcome = match result {
                    Ok((_, o)) => o,
                    Err(giftx_core::DomainError::ExchangeInFlight) => DriveOutcome::Busy,
                    Err(e) => {
                        root.record("giftx.outcome", "error");
                        warn!(exchange = %rec.id.0, error = %e, "reconcile failed");
                        continue;
                    }
                };
                let name = outcome_name(outcome);
                root.record("giftx.outcome", name);
                info!(exchange = %rec.id.0, outcome = name, "reconciled");
                self.stats
                    .send_modify(|s| *s.reconciled.entry(name).or_default() += 1);
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(()),
            }
        }
    }
}

/// Every label [`outcome_name`] gives.
pub const OUTCOME_NAMES: [&str; 7] = [
    "succeeded",
    "failed",
    "released",
    "deferred",
    "parked",
    "busy",
    "already_finished",
];

/// The metric label of an outcome.
pub fn outcome_name(o: DriveOutcome) -> &'static str {
    match o {
        DriveOutcome::Succeeded => "succeeded",
        DriveOutcome::Failed => "failed",
        DriveOutcome::Released => "released",
        DriveOutcome::Deferred => "deferred",
        DriveOutcome::Parked => "parked",
        DriveOutcome::Busy => "busy",
        DriveOutcome::AlreadyFinished => "already_finished",
    }
}
