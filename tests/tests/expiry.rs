//! ExpiryService and its background workers end to end (issue 6): deadlines
//! to the millisecond on a manual clock, ExtendCampaign, SweepExpired, the
//! reconciler (re-drive, backoff, parking), the sweeper, and the singleton
//! lease between two giftxd sharing one Redis.
//!
//! The workers run on real time (a pass every 50 ms) while deadlines, lease
//! expiry and retry times follow each app's manual clock, so the tests move
//! the clock and then poll, with a bounded timeout, for the workers' effect.

use std::collections::BTreeMap;
use std::time::Duration;

use giftx_core::{Clock, Timestamp};
use giftx_ledger::Lease;
use giftx_proto::v1 as pb;
use giftx_providers::simulated::FaultMode;
use giftx_server::workers::LEASE_NAME;
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{
    assert_invalid_field, assert_refused, campaign_with_options, code_state, exchange,
    exchange_request, get_exchange, issue_codes, list_pending, provider_key, sim, state_of,
    stats_count, ts,
};
use tonic::Code as GrpcCode;

const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);
/// How long a test waits for the background workers before failing.
const WORKER_TIMEOUT: Duration = Duration::from_secs(20);
/// Worker lease TTL in the worker tests.
const LEASE_TTL: Duration = Duration::from_millis(500);

fn base(redis: bool) -> TestAppOptions {
    let o = TestAppOptions::new().chunk_size(1_000);
    if redis { o.redis() } else { o }
}

/// No background workers: the test drives everything.
fn manual(redis: bool) -> TestAppOptions {
    base(redis).configure(|c| c.expiry.workers = false)
}

/// Fast workers: a pass every 50 ms, lease TTL 500 ms, every PENDING
/// exchange due at once, 10 ms base backoff.
fn fast_workers(o: TestAppOptions, max_attempts: u32) -> TestAppOptions {
    o.configure(|c| {
        c.expiry.workers = true;
        c.expiry.interval_ms = 50;
        c.expiry.lease_ttl_ms = u64::try_from(LEASE_TTL.as_millis()).unwrap();
        c.expiry.reconcile_min_age_seconds = 0;
        c.exchange.backoff_base_ms = 10;
        c.exchange.backoff_max_seconds = 1;
        c.exchange.max_attempts = max_attempts;
    })
}

/// Creates `id` with deadline `deadline` and options on the default
/// simulators (`gift-reject` is always rejected by the simulator).
async fn create(app: &TestApp, id: &str, deadline: Timestamp) -> pb::Campaign {
    app.issuance
        .clone()
        .create_campaign(campaign_with_options(
            id,
            deadline,
            &[
                ("emoney-a", "emoney-a"),
                ("emoney-b", "emoney-b"),
                ("gift-reject", "emoney-a"),
            ],
        ))
        .await
        .expect("CreateCampaign")
        .into_inner()
}

async fn extend(
    app: &TestApp,
    campaign: &str,
    t: Timestamp,
    force: bool,
) -> Result<pb::Campaign, tonic::Status> {
    app.expiry
        .clone()
        .extend_campaign(pb::ExtendCampaignRequest {
            campaign: format!("campaigns/{campaign}"),
            expire_time: Some(ts(t)),
            force,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn sweep(app: &TestApp, campaign: &str) -> pb::SweepReport {
    app.expiry
        .clone()
        .sweep_expired(pb::SweepExpiredRequest {
            campaign: format!("campaigns/{campaign}"),
        })
        .await
        .expect("SweepExpired")
        .into_inner()
}

/// Polls `check` every 20 ms (calling `nudge` first each time) until it
/// holds, for at most [`WORKER_TIMEOUT`].
async fn wait_until<F, Fut>(what: &str, mut nudge: impl FnMut(), mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WORKER_TIMEOUT;
    loop {
        nudge();
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- deadlines ---------------------------------------------------------------

async fn check_deadline_edges(app: TestApp) {
    let start = app.clock.now();
    let deadline = start.plus(HOUR);
    create(&app, "edge", deadline).await;
    let codes = issue_codes(&app, "edge", "b", 6).await;
    let voided = issue_codes(&app, "edge", "void", 1).await;
    app.issuance
        .clone()
        .void_batch(pb::VoidBatchRequest {
            name: "campaigns/edge/batches/void".into(),
        })
        .await
        .unwrap();
    let sim_a = sim(&app, "emoney-a");

    // One millisecond before: claims succeed (and one whose provider
    // outcome is unknown is finished after the deadline).
    app.clock.set(deadline.minus(MS));
    let ok = exchange(&app, exchange_request(&codes[0], "emoney-a", "e-0"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
    sim_a.set_fault(FaultMode::UnknownAll);
    let late = exchange(&app, exchange_request(&codes[5], "emoney-a", "e-5"))
        .await
        .unwrap();
    assert_eq!(state_of(&late), pb::ExchangeState::Pending);
    sim_a.set_fault(FaultMode::None);

    // One millisecond after: CODE_EXPIRED.
    app.clock.set(deadline.plus(MS));
    let e = exchange(&app, exchange_request(&codes[1], "emoney-a", "e-1"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_EXPIRED");
    assert_eq!(code_state(&app, &codes[1]).await, pb::CodeState::Expired);
    assert_eq!(code_state(&app, &voided[0]).await, pb::CodeState::Void);

    // A claim begun before the deadline finishes after it.
    let done = app
        .expiry
        .clone()
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: late.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    assert!(done.deliverable.is_some());
    assert_eq!(code_state(&app, &codes[5]).await, pb::CodeState::Redeemed);

    // Sweep some of the expired codes, so both kinds of EXPIRED are extended.
    assert_eq!(sweep(&app, "edge").await.expired_count, 4);
    assert_eq!(code_state(&app, &codes[2]).await, pb::CodeState::Expired);

    // ExtendCampaign later: the same code (and a swept one) succeeds.
    let later = deadline.plus(24 * HOUR);
    let c = extend(&app, "edge", later, false).await.unwrap();
    assert_eq!(c.expire_time, Some(ts(later)));
    assert_eq!(code_state(&app, &codes[1]).await, pb::CodeState::Active);
    assert_eq!(code_state(&app, &codes[2]).await, pb::CodeState::Active);
    let ok = exchange(&app, exchange_request(&codes[1], "emoney-a", "e-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
    let ok = exchange(&app, exchange_request(&codes[2], "emoney-a", "e-2"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
    // Voided codes stay void.
    assert_eq!(code_state(&app, &voided[0]).await, pb::CodeState::Void);
    let e = exchange(&app, exchange_request(&voided[0], "emoney-a", "v"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_VOID");

    // Earlier needs force.
    let earlier = deadline.plus(2 * HOUR);
    let e = extend(&app, "edge", earlier, false).await.unwrap_err();
    assert_invalid_field(&e, "expire_time");
    let c = extend(&app, "edge", earlier, true).await.unwrap();
    assert_eq!(c.expire_time, Some(ts(earlier)));
    // Forced into the past: refused, a deadline change never deletes
    // (issue 12 item 1) ...
    let past = app.clock.now().minus(MS);
    let e = extend(&app, "edge", past, true).await.unwrap_err();
    assert_invalid_field(&e, "expire_time");
    // ... but forced to now: the remaining codes are expired again.
    extend(&app, "edge", app.clock.now(), true).await.unwrap();
    let e = exchange(&app, exchange_request(&codes[3], "emoney-a", "e-3"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_EXPIRED");
    assert_eq!(code_state(&app, &codes[1]).await, pb::CodeState::Redeemed);
    assert_eq!(sim_a.max_issued_per_key(), 1);

    // Malformed and unknown campaigns.
    let e = app
        .expiry
        .clone()
        .extend_campaign(pb::ExtendCampaignRequest {
            campaign: "campaigns/edge".into(),
            expire_time: None,
            force: false,
        })
        .await
        .unwrap_err();
    assert_invalid_field(&e, "expire_time");
    let e = extend(&app, "nope", later, false).await.unwrap_err();
    assert_refused(&e, GrpcCode::NotFound, "CAMPAIGN_NOT_FOUND");
}

#[tokio::test]
async fn deadlines_hold_to_the_millisecond_and_extend_embedded() {
    check_deadline_edges(TestApp::spawn(manual(false)).await).await;
}

#[tokio::test]
async fn deadlines_hold_to_the_millisecond_and_extend_on_redis() {
    check_deadline_edges(TestApp::spawn(manual(true)).await).await;
}

// ---- SweepExpired ----------------------------------------------------------------

async fn check_sweep(app: TestApp) {
    let deadline = app.clock.now().plus(HOUR);
    create(&app, "old", deadline).await;
    create(&app, "other", deadline.plus(24 * HOUR)).await;
    let codes = issue_codes(&app, "old", "main", 20).await;
    issue_codes(&app, "old", "void", 3).await;
    let others = issue_codes(&app, "other", "main", 10).await;
    for (i, c) in codes.iter().take(2).enumerate() {
        exchange(&app, exchange_request(c, "emoney-a", &format!("x-{i}")))
            .await
            .unwrap();
    }
    // A rejected exchange leaves its code ACTIVE: it expires too.
    let f = exchange(&app, exchange_request(&codes[2], "gift-reject", "x-r"))
        .await
        .unwrap();
    assert_eq!(state_of(&f), pb::ExchangeState::Failed);
    app.issuance
        .clone()
        .void_batch(pb::VoidBatchRequest {
            name: "campaigns/old/batches/void".into(),
        })
        .await
        .unwrap();

    // Before the deadline: nothing.
    app.clock.set(deadline.minus(MS));
    let r = sweep(&app, "old").await;
    assert_eq!(r.expired_count, 0);
    assert_eq!(r.campaign, "campaigns/old");
    assert_eq!(stats_count(&app, "old", pb::CodeState::Expired).await, 0);

    // After: the 18 unexchanged codes, 500 JPY each; once.
    app.clock.set(deadline.plus(MS));
    let (r, ok) = tokio::join!(
        sweep(&app, "old"),
        exchange(&app, exchange_request(&others[0], "emoney-a", "o-0"))
    );
    assert_eq!(r.expired_count, 18);
    let v = r.expired_value.expect("value");
    assert_eq!((v.currency_code.as_str(), v.minor_units), ("JPY", 18 * 500));
    assert_eq!(state_of(&ok.unwrap()), pb::ExchangeState::Succeeded);
    assert_eq!(sweep(&app, "old").await.expired_count, 0);
    assert_eq!(stats_count(&app, "old", pb::CodeState::Expired).await, 18);
    assert_eq!(stats_count(&app, "old", pb::CodeState::Redeemed).await, 2);
    assert_eq!(stats_count(&app, "old", pb::CodeState::Void).await, 3);
    assert_eq!(stats_count(&app, "old", pb::CodeState::Active).await, 0);
    assert_eq!(code_state(&app, &codes[5]).await, pb::CodeState::Expired);
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Redeemed);
    let e = exchange(&app, exchange_request(&codes[5], "emoney-a", "late"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_EXPIRED");

    // The other campaign is untouched and keeps working.
    assert_eq!(sweep(&app, "other").await.expired_count, 0);
    assert_eq!(stats_count(&app, "other", pb::CodeState::Active).await, 9);
    let ok = exchange(&app, exchange_request(&others[1], "emoney-b", "o-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);

    let e = app
        .expiry
        .clone()
        .sweep_expired(pb::SweepExpiredRequest {
            campaign: "campaigns/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::NotFound);
}

#[tokio::test]
async fn sweep_expired_counts_and_values_each_code_once_embedded() {
    check_sweep(TestApp::spawn(manual(false)).await).await;
}

#[tokio::test]
async fn sweep_expired_counts_and_values_each_code_once_on_redis() {
    check_sweep(TestApp::spawn(manual(true)).await).await;
}

/// Codes marked expired by sweeps, from the ledger's `campaign.swept`
/// events (which name the campaign by id or by series, depending on the
/// ledger: the tests using this have one campaign past its deadline).
async fn swept_by_events(app: &TestApp) -> i64 {
    let events = app.state.ledger.recent_events(10_000).await.unwrap();
    events
        .iter()
        .filter(|e| e.kind == "campaign.swept")
        .filter_map(|e| e.fields.iter().find(|(k, _)| k == "count"))
        .map(|(_, v)| v.parse::<i64>().expect("count"))
        .sum()
}

async fn check_background_sweeper(app: TestApp) {
    let deadline = app.clock.now().plus(HOUR);
    create(&app, "swept", deadline).await;
    create(&app, "later", deadline.plus(HOUR)).await;
    issue_codes(&app, "swept", "b", 7).await;
    issue_codes(&app, "later", "b", 4).await;
    // Before the deadline the sweeper leaves them be.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(swept_by_events(&app).await, 0);
    app.clock.set(deadline.plus(MS));
    wait_until(
        "the sweeper",
        || {},
        || async { swept_by_events(&app).await == 7 },
    )
    .await;
    assert_eq!(sweep(&app, "swept").await.expired_count, 0);
    assert_eq!(stats_count(&app, "swept", pb::CodeState::Expired).await, 7);
    assert_eq!(stats_count(&app, "later", pb::CodeState::Active).await, 4);
}

#[tokio::test]
async fn the_sweeper_expires_codes_after_the_deadline_embedded() {
    check_background_sweeper(TestApp::spawn(fast_workers(base(false), 12)).await).await;
}

#[tokio::test]
async fn the_sweeper_expires_codes_after_the_deadline_on_redis() {
    check_background_sweeper(TestApp::spawn(fast_workers(base(true), 12)).await).await;
}

// ---- the reconciler ----------------------------------------------------------------

/// Makes `n` PENDING exchanges (`reject` of them on an option the simulator
/// will reject) with the simulator down, via `via`.
async fn pending_exchanges(
    via: &TestApp,
    campaign: &str,
    batch: &str,
    n: usize,
    reject: usize,
) -> Vec<(pb::IssuedCode, pb::Exchange)> {
    let codes = issue_codes(via, campaign, batch, i64::try_from(n).unwrap()).await;
    let mut out = Vec::new();
    for (i, c) in codes.into_iter().enumerate() {
        let option = if i < reject {
            "gift-reject"
        } else {
            "emoney-a"
        };
        let e = exchange(via, exchange_request(&c, option, &format!("{batch}-{i}")))
            .await
            .unwrap();
        assert_eq!(state_of(&e), pb::ExchangeState::Pending, "{e:?}");
        out.push((c, e));
    }
    out
}

async fn check_reconciler(app: TestApp) {
    const N: usize = 30;
    const REJECTED: usize = 3;
    create(&app, "heal", app.clock.now().plus(24 * HOUR)).await;
    let sim_a = sim(&app, "emoney-a");
    sim_a.set_fault(FaultMode::UnknownAll);
    let pending = pending_exchanges(&app, "heal", "p", N, REJECTED).await;
    assert_eq!(list_pending(&app).await.len(), N);
    // While the provider is down and nothing is due, they stay PENDING.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(list_pending(&app).await.len(), N);
    assert_eq!(sim_a.issued_count(), 0);

    sim_a.set_fault(FaultMode::None);
    // Retry times follow the manual clock: move it past every backoff.
    app.clock.advance(Duration::from_secs(60));
    wait_until(
        "every PENDING exchange to end",
        || {},
        || async { list_pending(&app).await.is_empty() },
    )
    .await;

    for (i, (code, e)) in pending.iter().enumerate() {
        let now = get_exchange(&app, code).await;
        assert_eq!(now.name, e.name);
        if i < REJECTED {
            assert_eq!(state_of(&now), pb::ExchangeState::Failed, "{now:?}");
            assert_eq!(code_state(&app, code).await, pb::CodeState::Active);
            assert_eq!(sim_a.issued_for(&provider_key(&e.name)), 0);
        } else {
            assert_eq!(state_of(&now), pb::ExchangeState::Succeeded, "{now:?}");
            assert!(now.deliverable.is_some());
            assert!(now.attempts >= 2, "{now:?}");
            assert_eq!(code_state(&app, code).await, pb::CodeState::Redeemed);
            assert_eq!(sim_a.issued_for(&provider_key(&e.name)), 1);
        }
    }
    assert_eq!(sim_a.issued_count(), (N - REJECTED) as u64);
    assert_eq!(sim_a.max_issued_per_key(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_finishes_every_pending_exchange_once_healed_embedded() {
    check_reconciler(TestApp::spawn(fast_workers(base(false), 12)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_finishes_every_pending_exchange_once_healed_on_redis() {
    check_reconciler(TestApp::spawn(fast_workers(base(true), 12)).await).await;
}

async fn check_parking(app: TestApp) {
    create(&app, "park", app.clock.now().plus(24 * HOUR)).await;
    let sim_a = sim(&app, "emoney-a");
    sim_a.set_fault(FaultMode::UnknownAll);
    let pending = pending_exchanges(&app, "park", "p", 2, 0).await;
    let clock = app.clock.clone();
    wait_until(
        "the reconciler to park both exchanges",
        || clock.advance(Duration::from_secs(60)),
        || async {
            let l = list_pending(&app).await;
            l.len() == 2 && l.iter().all(|e| e.parked)
        },
    )
    .await;
    for e in list_pending(&app).await {
        assert_eq!(e.attempts, 3, "{e:?}");
        assert_eq!(state_of(&e), pb::ExchangeState::Pending);
    }
    // Parked: the reconciler leaves them alone however long it waits.
    let lookups = sim_a.lookup_calls();
    for _ in 0..5 {
        app.clock.advance(Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(
        sim_a.lookup_calls(),
        lookups,
        "a parked exchange was re-driven"
    );
    assert!(
        list_pending(&app)
            .await
            .iter()
            .all(|e| e.parked && e.attempts == 3)
    );

    // An operator reconciles one once the provider is back.
    sim_a.set_fault(FaultMode::None);
    let done = app
        .expiry
        .clone()
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: pending[0].1.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    assert!(done.deliverable.is_some());
    let left = list_pending(&app).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, pending[1].1.name);
    assert!(left[0].parked);
    assert_eq!(sim_a.issued_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_are_parked_after_max_attempts_embedded() {
    check_parking(TestApp::spawn(fast_workers(base(false), 3)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_are_parked_after_max_attempts_on_redis() {
    check_parking(TestApp::spawn(fast_workers(base(true), 3)).await).await;
}

// ---- one worker at a time --------------------------------------------------------

/// The worker lease's holder and expiry as stored in Redis.
fn lease_holder(redis_url: &str) -> Option<(String, i64)> {
    let mut c = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .expect("connect to redis");
    let v: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{{g}}:lease:{LEASE_NAME}"))
        .query(&mut c)
        .expect("HGETALL lease");
    let holder = v.get("holder")?.clone();
    let until = v.get("until")?.parse().ok()?;
    Some((holder, until))
}

async fn wait_for_holder(url: &str, who: &[&str]) -> String {
    let mut found = String::new();
    wait_until(
        "a lease holder",
        || {},
        || {
            let got = lease_holder(url);
            if let Some((h, _)) = &got {
                found.clone_from(h);
            }
            let ok = got.is_some_and(|(h, _)| who.contains(&h.as_str()));
            async move { ok }
        },
    )
    .await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_take_turns_and_never_double_issue() {
    let first = TestApp::spawn(fast_workers(base(true), 12)).await;
    let url = first.redis.as_ref().unwrap().url();
    let second = TestApp::spawn(fast_workers(base(false).redis_url(url.clone()), 12)).await;
    let ids = [
        first.state.instance_id.as_str(),
        second.state.instance_id.as_str(),
    ];
    let holder_id = wait_for_holder(&url, &ids).await;
    let (mut holder, other) = if holder_id == ids[0] {
        (first, second)
    } else {
        (second, first)
    };

    // Only one holds it; the clocks stand still, so the other cannot take it.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (h, _) = lease_holder(&url).expect("lease");
        assert_eq!(h, holder.state.instance_id);
    }

    // Exchanges made on the non-holder while the provider is down are
    // reconciled by the holder alone, once each.
    create(&other, "pair", other.clock.now().plus(24 * HOUR)).await;
    let (sim_h, sim_o) = (sim(&holder, "emoney-a"), sim(&other, "emoney-a"));
    sim_h.set_fault(FaultMode::UnknownAll);
    sim_o.set_fault(FaultMode::UnknownAll);
    let first_lot = pending_exchanges(&other, "pair", "one", 10, 0).await;
    sim_h.set_fault(FaultMode::None);
    sim_o.set_fault(FaultMode::None);
    let calls_o = (sim_o.issue_calls(), sim_o.lookup_calls());
    holder.clock.advance(Duration::from_secs(60));
    wait_until(
        "the holder to reconcile",
        || {},
        || async { list_pending(&other).await.is_empty() },
    )
    .await;
    assert_eq!(
        (sim_o.issue_calls(), sim_o.lookup_calls()),
        calls_o,
        "the instance without the lease re-drove exchanges"
    );
    for (code, e) in &first_lot {
        let now = get_exchange(&other, code).await;
        assert_eq!(state_of(&now), pb::ExchangeState::Succeeded);
        assert_eq!(sim_h.issued_for(&provider_key(&e.name)), 1);
        assert_eq!(sim_o.issued_for(&provider_key(&e.name)), 0);
    }
    // One lookup and one issue per exchange: nothing re-driven twice.
    assert_eq!(sim_h.issued_count(), 10);
    assert_eq!(sim_h.issue_calls(), 10);

    // The holder goes away: the other takes over and finishes the rest.
    // (Down for the holder too, which re-drives them in vain until it goes.)
    sim_h.set_fault(FaultMode::UnknownAll);
    sim_o.set_fault(FaultMode::UnknownAll);
    let second_lot = pending_exchanges(&other, "pair", "two", 10, 0).await;
    // (Keep the shared Redis running when the holder is the app owning it.)
    let _redis = holder.redis.take();
    holder.shutdown().await.expect("graceful shutdown");
    sim_o.set_fault(FaultMode::None);
    other.clock.advance(Duration::from_secs(120));
    let other_id = other.state.instance_id.clone();
    wait_for_holder(&url, &[other_id.as_str()]).await;
    wait_until(
        "the new holder to reconcile",
        || {},
        || async { list_pending(&other).await.is_empty() },
    )
    .await;
    for (code, e) in &second_lot {
        let now = get_exchange(&other, code).await;
        assert_eq!(state_of(&now), pb::ExchangeState::Succeeded);
        let k = provider_key(&e.name);
        assert_eq!(sim_h.issued_for(&k) + sim_o.issued_for(&k), 1);
    }
    assert_eq!(sim_h.issued_count() + sim_o.issued_count(), 20);
    assert_eq!(sim_h.max_issued_per_key(), 1);
    assert_eq!(sim_o.max_issued_per_key(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over_after_its_ttl() {
    // One instance serves the API and owns Redis but runs no workers.
    let api = TestApp::spawn(manual(true)).await;
    let url = api.redis.as_ref().unwrap().url();
    // A holder that died without giving its lease up (SIGKILL).
    let start = api.clock.now();
    let took = api
        .state
        .ledger
        .acquire_lease(
            LEASE_NAME,
            &Lease {
                holder: "giftxd-dead".into(),
                until: start.plus(LEASE_TTL),
            },
            start,
        )
        .await
        .unwrap();
    assert!(took);
    create(&api, "orphan", start.plus(24 * HOUR)).await;
    let sim_api = sim(&api, "emoney-a");
    sim_api.set_fault(FaultMode::UnknownAll);
    let lot = pending_exchanges(&api, "orphan", "o", 5, 0).await;

    let worker = TestApp::spawn(fast_workers(base(false).redis_url(url.clone()), 12)).await;
    let sim_w = sim(&worker, "emoney-a");
    // Within the dead holder's TTL nobody works.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lease_holder(&url).unwrap().0, "giftxd-dead");
    }
    assert_eq!(sim_w.lookup_calls() + sim_w.issue_calls(), 0);
    assert_eq!(list_pending(&api).await.len(), 5);

    // Past it, the live instance takes over and finishes the work.
    worker.clock.set(start.plus(LEASE_TTL).plus(MS));
    let worker_id = worker.state.instance_id.clone();
    wait_for_holder(&url, &[worker_id.as_str()]).await;
    worker.clock.advance(Duration::from_secs(60));
    wait_until(
        "the new holder to reconcile",
        || {},
        || async { list_pending(&api).await.is_empty() },
    )
    .await;
    for (code, e) in &lot {
        assert_eq!(
            state_of(&get_exchange(&api, code).await),
            pb::ExchangeState::Succeeded
        );
        assert_eq!(sim_w.issued_for(&provider_key(&e.name)), 1);
    }
    assert_eq!(sim_w.issued_count(), 5);
    assert_eq!(sim_api.issued_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_holder_stops_its_workers_and_hands_the_lease_over() {
    let first = TestApp::spawn(fast_workers(base(true), 12)).await;
    let url = first.redis.as_ref().unwrap().url();
    let first_id = first.state.instance_id.clone();
    wait_for_holder(&url, &[first_id.as_str()]).await;
    // Both clocks stand still: while the first's workers keep renewing, the
    // second cannot take the lease; it gets it only if they stop and give
    // it up.
    let second = TestApp::spawn(fast_workers(base(false).redis_url(url.clone()), 12)).await;
    // Keep the first's Redis alive: take it out before dropping the app.
    let mut first = first;
    let redis = first.redis.take();
    drop(first);
    let second_id = second.state.instance_id.clone();
    wait_for_holder(&url, &[second_id.as_str()]).await;
    // And it stays with the second: the dropped app's workers have stopped.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lease_holder(&url).unwrap().0, second_id);
    }
    drop(second);
    drop(redis);
}
