//! ExchangeService end to end (issue 5): the story, exactly-once under
//! concurrency, idempotency, no oracle, lockout, provider faults, re-display
//! without stored deliverables, field errors, void and expired codes, and no
//! secrets at rest in Redis. Each behaviour runs on the embedded ledger and
//! on a private Redis.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use giftx_core::{Clock, Code, LoginKey};
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_providers::simulated::FaultMode;
use giftx_server::config::{ProviderConfig, default_providers};
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{
    assert_invalid_field, assert_refused, campaign_with_options, code_state, exchange,
    exchange_request, get_exchange, get_exchange_request, issue_codes, list_pending, provider_key,
    reason, sim, state_of, verify_request,
};
use tonic::Code as GrpcCode;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

/// Codes raced by 100 concurrent exchanges each, on the embedded ledger
/// (1,000 take ~45 s in a debug build on 2 busy cores; 200 keep the file
/// under a minute).
const RACE_CODES_EMBEDDED: usize = 200;
/// The same on Redis (each call is a few round trips more).
const RACE_CODES_REDIS: usize = 100;
/// Concurrent Exchange calls per raced code.
const RACERS: usize = 100;

/// The campaign most tests use.
const CAMPAIGN: &str = "gifts";

/// Default providers plus `nostore`, a simulator whose terms forbid storing
/// deliverables.
fn providers() -> BTreeMap<String, ProviderConfig> {
    let mut p = default_providers();
    let mut nostore = ProviderConfig::of_kind("simulated");
    nostore
        .settings
        .insert("store_deliverable".into(), toml::Value::Boolean(false));
    p.insert("nostore".into(), nostore);
    p
}

fn options(redis: bool) -> TestAppOptions {
    let o = TestAppOptions::new()
        .chunk_size(1_000)
        .providers(providers())
        // The reconciler would race the tests' own ReconcileExchange calls.
        .configure(|c| c.expiry.workers = false);
    if redis { o.redis() } else { o }
}

async fn spawn(redis: bool) -> TestApp {
    TestApp::spawn(options(redis)).await
}

/// Creates [`CAMPAIGN`]: two plain simulated options, one that the simulator
/// always rejects (magic suffix), and one on the no-store simulator.
async fn create_gifts(app: &TestApp) {
    let deadline = app.clock.now().plus(Duration::from_secs(30 * 24 * 3600));
    app.issuance
        .clone()
        .create_campaign(campaign_with_options(
            CAMPAIGN,
            deadline,
            &[
                ("emoney-a", "emoney-a"),
                ("emoney-b", "emoney-b"),
                ("gift-reject", "emoney-b"),
                ("nostore", "nostore"),
            ],
        ))
        .await
        .expect("CreateCampaign");
}

async fn reconcile(app: &TestApp, name: &str) -> pb::Exchange {
    app.expiry
        .clone()
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: name.to_owned(),
        })
        .await
        .expect("ReconcileExchange")
        .into_inner()
}

// ---- the story ---------------------------------------------------------------

/// The apology story (docs/design.md) on the seeded demo: letter code → select gift → gift
/// code, each shown again.
async fn check_story(app: TestApp) {
    let letters = issue_codes(&app, "demo-2014", "letters", 3).await;
    let letter = &letters[0];
    let mut ex = app.exchange.clone();

    let status = ex
        .verify_code(verify_request(letter))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.campaign, "campaigns/demo-2014");
    assert_eq!(status.state, pb::CodeState::Active as i32);
    assert_eq!(status.face_value.as_ref().unwrap().minor_units, 500);
    assert!(status.exchange.is_none());
    let opts: Vec<_> = status
        .options
        .iter()
        .map(|o| o.option_id.as_str())
        .collect();
    assert!(opts.contains(&"select-gift"), "{opts:?}");

    let mut req = exchange_request(letter, "select-gift", "story-1");
    req.contact_email = "holder@example.com".into();
    req.delete_personal_data = true;
    req.stop_mail = true;
    let first = ex.exchange(req).await.unwrap().into_inner();
    assert_eq!(state_of(&first), pb::ExchangeState::Succeeded);
    assert_eq!(first.option_id, "select-gift");
    assert_eq!(first.campaign, "campaigns/demo-2014");
    let select = first.deliverable.clone().expect("select gift deliverable");
    assert_eq!(select.kind, pb::DeliverableKind::GiftId as i32);
    Code::parse(&select.code).expect("the gift ID is a giftx code");
    LoginKey::parse(&select.pin).expect("the management number is a login key");
    assert_eq!(code_state(&app, letter).await, pb::CodeState::Redeemed);

    // The select gift is a code of demo-select with its own options.
    let gift = pb::IssuedCode {
        code: select.code.clone(),
        login_key: select.pin.clone(),
        serial: 0,
    };
    let gs = ex
        .verify_code(verify_request(&gift))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gs.campaign, "campaigns/demo-select");
    assert_eq!(gs.state, pb::CodeState::Active as i32);
    let gopts: Vec<_> = gs.options.iter().map(|o| o.option_id.as_str()).collect();
    assert!(gopts.contains(&"emoney-a"), "{gopts:?}");

    let sim_a = sim(&app, "emoney-a");
    let before = sim_a.issued_count();
    let second = ex
        .exchange(exchange_request(&gift, "emoney-a", "story-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&second), pb::ExchangeState::Succeeded);
    let code = second.deliverable.clone().expect("gift code");
    assert_eq!(code.kind, pb::DeliverableKind::GiftCode as i32);
    assert!(!code.code.is_empty());
    assert_eq!(code.value.as_ref().unwrap().minor_units, 500);
    assert_eq!(sim_a.issued_count(), before + 1);
    assert_eq!(sim_a.issued_for(&provider_key(&second.name)), 1);

    // Shown again, both of them.
    let again = get_exchange(&app, &gift).await;
    assert_eq!(again.name, second.name);
    assert_eq!(again.deliverable.as_ref(), Some(&code));
    let again = get_exchange(&app, letter).await;
    assert_eq!(again.name, first.name);
    assert_eq!(again.deliverable.as_ref(), Some(&select));
    let status = ex
        .verify_code(verify_request(letter))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::CodeState::Redeemed as i32);
    assert_eq!(
        status.exchange.as_ref().map(|e| e.name.as_str()),
        Some(first.name.as_str())
    );
    assert_eq!(code_state(&app, &gift).await, pb::CodeState::Redeemed);
    // Nothing issued twice by re-display.
    assert_eq!(sim_a.issued_count(), before + 1);
}

#[tokio::test]
async fn the_story_select_gift_then_gift_code_embedded() {
    check_story(TestApp::spawn(options(false).seed_demo(true)).await).await;
}

#[tokio::test]
async fn the_story_select_gift_then_gift_code_on_redis() {
    check_story(TestApp::spawn(options(true).seed_demo(true)).await).await;
}

// ---- exactly once under concurrency --------------------------------------------

/// 100 concurrent Exchange calls with 100 request ids on each of `n`
/// codes: one SUCCEEDED, the rest CODE_ALREADY_REDEEMED or ABORTED, one
/// deliverable issued per code.
async fn check_races(app: TestApp, n: usize) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "race", i64::try_from(n).unwrap()).await;
    let mut clients: Vec<ExchangeServiceClient<Channel>> = Vec::new();
    for _ in 0..4 {
        clients.push(ExchangeServiceClient::new(app.connect().await));
    }
    let sim_a = sim(&app, "emoney-a");
    // A provider call that takes a moment, so racers also meet the winner
    // in flight (ABORTED), not only after it (CODE_ALREADY_REDEEMED).
    sim_a.set_latency(Duration::from_millis(3), Duration::ZERO);
    let issued_before = sim_a.issued_count();
    let (mut redeemed, mut aborted) = (0usize, 0usize);
    for (i, code) in codes.iter().enumerate() {
        let before = sim_a.issued_count();
        let mut set = tokio::task::JoinSet::new();
        for j in 0..RACERS {
            let mut c = clients[j % clients.len()].clone();
            let req = exchange_request(code, "emoney-a", &format!("race-{i}-{j}"));
            set.spawn(async move { c.exchange(req).await.map(tonic::Response::into_inner) });
        }
        let mut winners = Vec::new();
        while let Some(r) = set.join_next().await {
            match r.expect("racer task") {
                Ok(e) => winners.push(e),
                Err(s) if s.code() == GrpcCode::FailedPrecondition => {
                    assert_eq!(reason(&s), "CODE_ALREADY_REDEEMED", "{s:?}");
                    redeemed += 1;
                }
                Err(s) if s.code() == GrpcCode::Aborted => {
                    assert_eq!(reason(&s), "EXCHANGE_IN_FLIGHT", "{s:?}");
                    aborted += 1;
                }
                Err(s) => panic!("code {i}: unexpected {s:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "code {i}: {winners:?}");
        let w = &winners[0];
        assert_eq!(state_of(w), pb::ExchangeState::Succeeded, "{w:?}");
        assert_eq!(sim_a.issued_count(), before + 1, "code {i}");
        assert_eq!(sim_a.issued_for(&provider_key(&w.name)), 1);
    }
    assert_eq!(sim_a.issued_count() - issued_before, n as u64);
    assert_eq!(sim_a.max_issued_per_key(), 1);
    assert_eq!(redeemed + aborted, n * (RACERS - 1));
    eprintln!("{n} codes raced: {redeemed} CODE_ALREADY_REDEEMED, {aborted} EXCHANGE_IN_FLIGHT");
    for c in codes.iter().step_by(97) {
        assert_eq!(code_state(&app, c).await, pb::CodeState::Redeemed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_exchanges_of_one_code_issue_once_embedded() {
    check_races(spawn(false).await, RACE_CODES_EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_exchanges_of_one_code_issue_once_on_redis() {
    check_races(spawn(true).await, RACE_CODES_REDIS).await;
}

// ---- idempotency ---------------------------------------------------------------

async fn check_same_request_repeated(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "idem", 3).await;
    let sim_a = sim(&app, "emoney-a");

    // Sequential.
    let calls = sim_a.issue_calls();
    let mut req = exchange_request(&codes[0], "emoney-a", "same-seq");
    req.contact_email = "a@example.com".into();
    let first = exchange(&app, req.clone()).await.unwrap();
    assert_eq!(state_of(&first), pb::ExchangeState::Succeeded);
    assert!(first.deliverable.is_some());
    for _ in 1..100 {
        assert_eq!(exchange(&app, req.clone()).await.unwrap(), first);
    }
    assert_eq!(sim_a.issue_calls(), calls + 1);
    assert_eq!(
        get_exchange(&app, &codes[0]).await.deliverable,
        first.deliverable
    );

    // Concurrent.
    let calls = sim_a.issue_calls();
    let req = exchange_request(&codes[1], "emoney-a", "same-conc");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut c = app.exchange.clone();
        let req = req.clone();
        set.spawn(async move { c.exchange(req).await.map(tonic::Response::into_inner) });
    }
    let mut answers = Vec::new();
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap().expect("a duplicate waits for the first"));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "answers differ");
    assert_eq!(state_of(&answers[0]), pb::ExchangeState::Succeeded);
    assert!(answers[0].deliverable.is_some());
    assert_eq!(sim_a.issue_calls(), calls + 1);
    assert_eq!(sim_a.max_issued_per_key(), 1);

    // Same request id, other option (or other email): REQUEST_ID_REUSED.
    let e = exchange(&app, exchange_request(&codes[0], "emoney-b", "same-seq"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "REQUEST_ID_REUSED");
    let mut other = exchange_request(&codes[0], "emoney-a", "same-seq");
    other.contact_email = "b@example.com".into();
    let e = exchange(&app, other).await.unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "REQUEST_ID_REUSED");
    // A fresh code: reusing the request id of another code is no reuse.
    let e = exchange(&app, exchange_request(&codes[2], "emoney-a", "fresh"))
        .await
        .unwrap();
    assert_eq!(state_of(&e), pb::ExchangeState::Succeeded);
    let e = exchange(&app, exchange_request(&codes[2], "emoney-b", "fresh"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "REQUEST_ID_REUSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_gives_the_same_answer_and_one_provider_call_embedded() {
    check_same_request_repeated(spawn(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_gives_the_same_answer_and_one_provider_call_on_redis() {
    check_same_request_repeated(spawn(true).await).await;
}

// ---- no oracle, lockout -----------------------------------------------------------

async fn check_wrong_keys_and_lockout(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "keys", 2).await;
    let code = &codes[0];
    let series = Code::parse(&code.code).unwrap().series();
    let unknown = pb::IssuedCode {
        code: Code::generate(series).unwrap().printed(),
        login_key: code.login_key.clone(),
        serial: 0,
    };
    let wrong = |k: &str| pb::IssuedCode {
        code: code.code.clone(),
        login_key: k.to_owned(),
        serial: 0,
    };
    let wrong_key = wrong(&LoginKey::generate().unwrap().printed());

    let e1 = exchange(&app, exchange_request(&unknown, "emoney-a", "u-1"))
        .await
        .unwrap_err();
    let e2 = exchange(&app, exchange_request(&wrong_key, "emoney-a", "w-1"))
        .await
        .unwrap_err();
    assert_refused(&e1, GrpcCode::NotFound, "LOGIN_KEY_MISMATCH");
    assert_refused(&e2, GrpcCode::NotFound, "LOGIN_KEY_MISMATCH");
    assert_eq!(e1.message(), e2.message());
    // Same for VerifyCode and GetExchange, and for an unknown option.
    for (a, b) in [
        (
            app.exchange
                .clone()
                .verify_code(verify_request(&unknown))
                .await
                .unwrap_err(),
            app.exchange
                .clone()
                .verify_code(verify_request(&wrong_key))
                .await
                .unwrap_err(),
        ),
        (
            app.exchange
                .clone()
                .get_exchange(get_exchange_request(&unknown))
                .await
                .unwrap_err(),
            app.exchange
                .clone()
                .get_exchange(get_exchange_request(&wrong_key))
                .await
                .unwrap_err(),
        ),
        (
            exchange(&app, exchange_request(&unknown, "no-such-option", "u-2"))
                .await
                .unwrap_err(),
            exchange(&app, exchange_request(&wrong_key, "no-such-option", "w-2"))
                .await
                .unwrap_err(),
        ),
    ] {
        assert_refused(&a, GrpcCode::NotFound, "LOGIN_KEY_MISMATCH");
        assert_refused(&b, GrpcCode::NotFound, "LOGIN_KEY_MISMATCH");
        assert_eq!(a.message(), b.message());
    }

    // Ten wrong keys in a row (four above, six more) lock the code: even the
    // right key is refused, with a RetryInfo.
    for i in 0..6 {
        let k = wrong(&LoginKey::generate().unwrap().printed());
        let e = exchange(&app, exchange_request(&k, "emoney-a", &format!("w-x{i}")))
            .await
            .unwrap_err();
        // Not locked before the tenth; the tenth may answer either way.
        if i < 5 {
            assert_refused(&e, GrpcCode::NotFound, "LOGIN_KEY_MISMATCH");
        } else {
            assert!(
                matches!(reason(&e).as_str(), "LOGIN_KEY_MISMATCH" | "CODE_LOCKED"),
                "{e:?}"
            );
        }
    }
    let e = exchange(&app, exchange_request(code, "emoney-a", "right"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_LOCKED");
    let retry = e
        .get_details_retry_info()
        .expect("RetryInfo on a locked code");
    let delay = retry.retry_delay.expect("retry delay");
    assert!(
        delay > Duration::from_secs(14 * 60) && delay <= Duration::from_secs(15 * 60),
        "{delay:?}"
    );
    let e = app
        .exchange
        .clone()
        .verify_code(verify_request(code))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_LOCKED");
    // The other code of the batch is not locked.
    let other = exchange(&app, exchange_request(&codes[1], "emoney-a", "other"))
        .await
        .unwrap();
    assert_eq!(state_of(&other), pb::ExchangeState::Succeeded);

    // Still locked just before the retry delay; past it the right key works.
    app.clock.advance(delay - Duration::from_secs(1));
    let e = exchange(&app, exchange_request(code, "emoney-a", "right"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_LOCKED");
    app.clock
        .advance(Duration::from_secs(1) + Duration::from_millis(1));
    let ok = exchange(&app, exchange_request(code, "emoney-a", "right"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
}

#[tokio::test]
async fn wrong_keys_look_like_unknown_codes_and_lock_the_code_embedded() {
    check_wrong_keys_and_lockout(spawn(false).await).await;
}

#[tokio::test]
async fn wrong_keys_look_like_unknown_codes_and_lock_the_code_on_redis() {
    check_wrong_keys_and_lockout(spawn(true).await).await;
}

// ---- provider faults ----------------------------------------------------------------

async fn check_rejection(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "reject", 2).await;
    let sim_a = sim(&app, "emoney-a");

    // Runtime fault: every issue rejected.
    sim_a.set_fault(FaultMode::RejectAll);
    let failed = exchange(&app, exchange_request(&codes[0], "emoney-a", "r-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&failed), pb::ExchangeState::Failed);
    assert_eq!(failed.failure_reason, "SIMULATED_REJECTED");
    assert!(failed.deliverable.is_none());
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Active);
    assert_eq!(sim_a.issued_count(), 0);
    // The same request again: the same FAILED exchange, no new call.
    let calls = sim_a.issue_calls();
    assert_eq!(
        exchange(&app, exchange_request(&codes[0], "emoney-a", "r-1"))
            .await
            .unwrap(),
        failed
    );
    assert_eq!(sim_a.issue_calls(), calls);
    sim_a.set_fault(FaultMode::None);
    // Exchangeable again, for another option.
    let ok = exchange(&app, exchange_request(&codes[0], "emoney-b", "r-2"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
    assert!(ok.deliverable.is_some());
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Redeemed);
    assert_eq!(get_exchange(&app, &codes[0]).await.name, ok.name);

    // Magic option id: rejected, then another option works.
    let failed = exchange(&app, exchange_request(&codes[1], "gift-reject", "m-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&failed), pb::ExchangeState::Failed);
    let s = app
        .exchange
        .clone()
        .verify_code(verify_request(&codes[1]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, pb::CodeState::Active as i32);
    let ok = exchange(&app, exchange_request(&codes[1], "emoney-a", "m-2"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
    assert_eq!(sim_a.issued_count(), 1);
}

#[tokio::test]
async fn a_rejected_exchange_fails_and_the_code_can_choose_again_embedded() {
    check_rejection(spawn(false).await).await;
}

#[tokio::test]
async fn a_rejected_exchange_fails_and_the_code_can_choose_again_on_redis() {
    check_rejection(spawn(true).await).await;
}

/// Issue 12 item 2: a holder whose provider keeps refusing cannot make the
/// ledger keep records without bound: the code takes 20 refused exchanges,
/// then answers TOO_MANY_ATTEMPTS, while repeated requests still get their
/// exchange back.
async fn check_refusal_cap(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "cap", 2).await;
    let sim_a = sim(&app, "emoney-a");
    sim_a.set_fault(FaultMode::RejectAll);
    let mut first = None;
    for i in 0..20 {
        let x = exchange(
            &app,
            exchange_request(&codes[0], "emoney-a", &format!("c-{i}")),
        )
        .await
        .unwrap();
        assert_eq!(state_of(&x), pb::ExchangeState::Failed, "{x:?}");
        first.get_or_insert(x);
    }
    let calls = sim_a.issue_calls();
    let e = exchange(&app, exchange_request(&codes[0], "emoney-b", "c-20"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "TOO_MANY_ATTEMPTS");
    assert_eq!(sim_a.issue_calls(), calls, "no provider call once capped");
    assert_eq!(
        exchange(&app, exchange_request(&codes[0], "emoney-a", "c-0"))
            .await
            .unwrap(),
        first.unwrap()
    );
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Active);
    // Another code is not affected.
    sim_a.set_fault(FaultMode::None);
    let ok = exchange(&app, exchange_request(&codes[1], "emoney-a", "c-0"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
}

#[tokio::test]
async fn a_code_takes_at_most_20_refused_exchanges_embedded() {
    check_refusal_cap(spawn(false).await).await;
}

#[tokio::test]
async fn a_code_takes_at_most_20_refused_exchanges_on_redis() {
    check_refusal_cap(spawn(true).await).await;
}

/// Issue 12 item 3: a provider that cannot serve now (nothing issued)
/// frees the code at once: UNAVAILABLE with RetryInfo, the exchange FAILED,
/// another option works right away, nothing is left for the reconciler,
/// and the same request retried later claims again.
async fn check_retryable_refusal(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "retryable", 2).await;
    let sim_a = sim(&app, "emoney-a");
    sim_a.set_fault(FaultMode::RetryableAll);
    let e = exchange(&app, exchange_request(&codes[0], "emoney-a", "t-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::Unavailable, "{e:?}");
    assert!(e.get_details_retry_info().is_some(), "{e:?}");
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Active);
    let failed = get_exchange(&app, &codes[0]).await;
    assert_eq!(state_of(&failed), pb::ExchangeState::Failed);
    assert_eq!(failed.failure_reason, "SIMULATED_UNAVAILABLE");
    assert!(list_pending(&app).await.is_empty());
    // Another option at once.
    let ok = exchange(&app, exchange_request(&codes[0], "emoney-b", "t-2"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
    // The provider is back: the abandoned exchange stays FAILED and nothing
    // more is issued for it.
    sim_a.set_fault(FaultMode::None);
    app.clock.advance(Duration::from_secs(120));
    assert_eq!(
        state_of(&reconcile(&app, &failed.name).await),
        pb::ExchangeState::Failed
    );
    assert_eq!(sim_a.issued_count(), 0);
    // On another code, the same request retried once the provider is back
    // claims again and succeeds.
    sim_a.set_fault(FaultMode::RetryableAll);
    exchange(&app, exchange_request(&codes[1], "emoney-a", "t-3"))
        .await
        .unwrap_err();
    sim_a.set_fault(FaultMode::None);
    let done = exchange(&app, exchange_request(&codes[1], "emoney-a", "t-3"))
        .await
        .unwrap();
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    assert_eq!(sim_a.issued_count(), 1);
}

#[tokio::test]
async fn a_retryable_refusal_frees_the_code_at_once_embedded() {
    check_retryable_refusal(spawn(false).await).await;
}

#[tokio::test]
async fn a_retryable_refusal_frees_the_code_at_once_on_redis() {
    check_retryable_refusal(spawn(true).await).await;
}

async fn check_unknown_outcome(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "unknown", 2).await;
    let sim_a = sim(&app, "emoney-a");

    // Nothing issued, outcome unknown: PENDING, listed, re-driven.
    sim_a.set_fault(FaultMode::UnknownAll);
    let pending = exchange(&app, exchange_request(&codes[0], "emoney-a", "u-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&pending), pb::ExchangeState::Pending);
    assert!(pending.deliverable.is_none());
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Pending);
    let listed = list_pending(&app).await;
    let mine = listed
        .iter()
        .find(|e| e.name == pending.name)
        .expect("PENDING exchange listed");
    assert_eq!(mine.attempts, 1);
    assert!(!mine.parked);
    // Another request for the code meanwhile: ABORTED, in flight.
    let e = exchange(&app, exchange_request(&codes[0], "emoney-b", "u-other"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::Aborted, "EXCHANGE_IN_FLIGHT");
    // Still down: reconciling leaves it PENDING with one more attempt.
    let still = reconcile(&app, &pending.name).await;
    assert_eq!(state_of(&still), pb::ExchangeState::Pending);
    assert_eq!(still.attempts, 2);
    assert_eq!(sim_a.issued_count(), 0);

    sim_a.set_fault(FaultMode::None);
    let done = reconcile(&app, &pending.name).await;
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    // An operator view: the provider's reference, never the secret parts.
    let summary = done.deliverable.clone().expect("deliverable summary");
    assert_eq!(sim_a.issued_for(&provider_key(&pending.name)), 1);
    assert_eq!(sim_a.issued_count(), 1);
    let d = get_exchange(&app, &codes[0])
        .await
        .deliverable
        .expect("deliverable");
    assert!(!d.code.is_empty());
    assert_eq!(
        summary,
        pb::Deliverable {
            code: String::new(),
            pin: String::new(),
            redeem_url: String::new(),
            ..d.clone()
        }
    );
    assert!(
        list_pending(&app)
            .await
            .iter()
            .all(|e| e.name != pending.name)
    );
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Redeemed);
    // The client's retry sees the result; reconciling again changes nothing.
    let retried = exchange(&app, exchange_request(&codes[0], "emoney-a", "u-1"))
        .await
        .unwrap();
    assert_eq!(retried.deliverable, Some(d.clone()));
    assert_eq!(
        reconcile(&app, &pending.name).await.deliverable,
        Some(summary)
    );
    assert_eq!(sim_a.issued_count(), 1);

    // Issued, but the answer was lost: the re-drive finds it (lookup), and
    // issues nothing more.
    sim_a.set_fault(FaultMode::UnknownAfterIssue);
    let lost = exchange(&app, exchange_request(&codes[1], "emoney-a", "l-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&lost), pb::ExchangeState::Pending);
    assert_eq!(sim_a.issued_count(), 2);
    sim_a.set_fault(FaultMode::None);
    let lookups = sim_a.lookup_calls();
    let calls = sim_a.issue_calls();
    let done = reconcile(&app, &lost.name).await;
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    assert!(done.deliverable.is_some());
    assert!(sim_a.lookup_calls() > lookups);
    assert_eq!(
        sim_a.issue_calls(),
        calls,
        "found by lookup, not issued again"
    );
    assert_eq!(sim_a.issued_count(), 2);
    assert_eq!(sim_a.issued_for(&provider_key(&lost.name)), 1);
    assert_eq!(sim_a.max_issued_per_key(), 1);
    assert!(list_pending(&app).await.is_empty());
}

#[tokio::test]
async fn an_unknown_outcome_stays_pending_until_reconciled_once_embedded() {
    check_unknown_outcome(spawn(false).await).await;
}

#[tokio::test]
async fn an_unknown_outcome_stays_pending_until_reconciled_once_on_redis() {
    check_unknown_outcome(spawn(true).await).await;
}

async fn check_no_store_redisplay(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "nostore", 1).await;
    let ns = sim(&app, "nostore");
    let done = exchange(&app, exchange_request(&codes[0], "nostore", "n-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    let d = done.deliverable.clone().expect("deliverable");
    assert_eq!(ns.issued_count(), 1);
    for _ in 0..3 {
        let lookups = ns.lookup_calls();
        let again = get_exchange(&app, &codes[0]).await;
        assert_eq!(again.deliverable.as_ref(), Some(&d));
        assert_eq!(
            ns.lookup_calls(),
            lookups + 1,
            "re-display asks the provider"
        );
    }
    // Retrying the request re-displays the same way.
    let lookups = ns.lookup_calls();
    let again = exchange(&app, exchange_request(&codes[0], "nostore", "n-1"))
        .await
        .unwrap();
    assert_eq!(again.deliverable, Some(d));
    assert_eq!(ns.lookup_calls(), lookups + 1);
    assert_eq!(ns.issued_count(), 1);
}

#[tokio::test]
async fn a_no_store_provider_is_asked_again_on_redisplay_embedded() {
    check_no_store_redisplay(spawn(false).await).await;
}

#[tokio::test]
async fn a_no_store_provider_is_asked_again_on_redisplay_on_redis() {
    check_no_store_redisplay(spawn(true).await).await;
}

// ---- malformed requests, void, expired ---------------------------------------------

async fn check_malformed(app: TestApp) {
    create_gifts(&app).await;
    let codes = issue_codes(&app, CAMPAIGN, "bad", 1).await;
    let good = exchange_request(&codes[0], "emoney-a", "b-1");

    let mut r = good.clone();
    r.request_id = String::new();
    assert_invalid_field(&exchange(&app, r).await.unwrap_err(), "request_id");

    // A typo in the code: its check character catches it.
    let mut r = good.clone();
    let mut chars: Vec<char> = r.code.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == '0' { '1' } else { '0' };
    r.code = chars.into_iter().collect();
    assert_invalid_field(&exchange(&app, r).await.unwrap_err(), "code");

    let mut r = good.clone();
    r.login_key = "nope".into();
    assert_invalid_field(&exchange(&app, r).await.unwrap_err(), "login_key");

    let mut r = good.clone();
    r.contact_email = "not-an-email".into();
    assert_invalid_field(&exchange(&app, r).await.unwrap_err(), "contact_email");

    let mut r = good.clone();
    r.option_id = String::new();
    assert_invalid_field(&exchange(&app, r).await.unwrap_err(), "option_id");

    // Several at once: all named.
    let mut r = good.clone();
    r.request_id = String::new();
    r.contact_email = "@@".into();
    let e = exchange(&app, r).await.unwrap_err();
    assert_invalid_field(&e, "request_id");
    assert_invalid_field(&e, "contact_email");

    // An unknown option is INVALID_ARGUMENT only with the right credentials.
    let mut r = good.clone();
    r.option_id = "no-such-option".into();
    assert_invalid_field(&exchange(&app, r).await.unwrap_err(), "option_id");
    let mut r = good.clone();
    r.option_id = "no-such-option".into();
    r.login_key = LoginKey::generate().unwrap().printed();
    assert_refused(
        &exchange(&app, r).await.unwrap_err(),
        GrpcCode::NotFound,
        "LOGIN_KEY_MISMATCH",
    );

    // Nothing above touched the code.
    assert_eq!(code_state(&app, &codes[0]).await, pb::CodeState::Active);
    let ok = exchange(&app, good).await.unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);
}

#[tokio::test]
async fn malformed_exchange_requests_name_their_fields_embedded() {
    check_malformed(spawn(false).await).await;
}

#[tokio::test]
async fn malformed_exchange_requests_name_their_fields_on_redis() {
    check_malformed(spawn(true).await).await;
}

async fn check_void_and_expired(app: TestApp) {
    create_gifts(&app).await;
    let voided = issue_codes(&app, CAMPAIGN, "voided", 2).await;
    let kept = issue_codes(&app, CAMPAIGN, "kept", 2).await;
    app.issuance
        .clone()
        .void_batch(pb::VoidBatchRequest {
            name: format!("campaigns/{CAMPAIGN}/batches/voided"),
        })
        .await
        .unwrap();
    let e = exchange(&app, exchange_request(&voided[0], "emoney-a", "v-1"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_VOID");
    assert_eq!(code_state(&app, &voided[0]).await, pb::CodeState::Void);
    let ok = exchange(&app, exchange_request(&kept[0], "emoney-a", "k-1"))
        .await
        .unwrap();
    assert_eq!(state_of(&ok), pb::ExchangeState::Succeeded);

    // Past the deadline.
    app.clock
        .advance(Duration::from_secs(30 * 24 * 3600) + Duration::from_millis(1));
    let e = exchange(&app, exchange_request(&kept[1], "emoney-a", "k-2"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_EXPIRED");
    assert_eq!(code_state(&app, &kept[1]).await, pb::CodeState::Expired);
    // A void code stays void, a redeemed one redeemed.
    let e = exchange(&app, exchange_request(&voided[1], "emoney-a", "v-2"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_VOID");
    assert_eq!(code_state(&app, &kept[0]).await, pb::CodeState::Redeemed);
    assert_eq!(sim(&app, "emoney-a").issued_count(), 1);
}

#[tokio::test]
async fn void_and_expired_codes_are_refused_embedded() {
    check_void_and_expired(spawn(false).await).await;
}

#[tokio::test]
async fn void_and_expired_codes_are_refused_on_redis() {
    check_void_and_expired(spawn(true).await).await;
}

// ---- no secrets at rest -----------------------------------------------------------

/// The forms a secret may be written in.
fn forms(s: &str) -> Vec<String> {
    let mut out = vec![s.to_owned(), s.replace('-', "")];
    out.extend(Code::parse(s).ok().map(|c| c.canonical().to_owned()));
    out.extend(LoginKey::parse(s).ok().map(|k| k.canonical().to_owned()));
    out.retain(|f| f.len() >= 6);
    out.sort();
    out.dedup();
    out
}

/// Every byte a key holds: its DUMP (which may be compressed) and its
/// contents read by type (which are not).
fn value_bytes(conn: &mut redis::Connection, key: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = redis::cmd("DUMP")
        .arg(key)
        .query::<Option<Vec<u8>>>(conn)
        .expect("DUMP")
        .unwrap_or_default();
    let kind: String = redis::cmd("TYPE").arg(key).query(conn).expect("TYPE");
    let parts: Vec<Vec<u8>> = match kind.as_str() {
        "string" => vec![redis::cmd("GET").arg(key).query(conn).expect("GET")],
        "hash" => redis::cmd("HGETALL").arg(key).query(conn).expect("HGETALL"),
        "set" => redis::cmd("SMEMBERS")
            .arg(key)
            .query(conn)
            .expect("SMEMBERS"),
        "list" => redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(conn)
            .expect("LRANGE"),
        "zset" => redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(conn)
            .expect("ZRANGE"),
        "stream" => {
            let v: redis::Value = redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query(conn)
                .expect("XRANGE");
            let mut flat = Vec::new();
            flatten(&v, &mut flat);
            flat
        }
        "none" => Vec::new(),
        other => panic!("unexpected key type {other}"),
    };
    for p in parts {
        out.push(b'\n');
        out.extend(p);
    }
    out
}

fn flatten(v: &redis::Value, out: &mut Vec<Vec<u8>>) {
    match v {
        redis::Value::BulkString(b) => out.push(b.clone()),
        redis::Value::SimpleString(s) => out.push(s.clone().into_bytes()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for i in items {
                flatten(i, out);
            }
        }
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                flatten(v, out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn redis_holds_no_plaintext_code_login_key_email_or_deliverable() {
    let app = TestApp::spawn(options(true).seed_demo(true)).await;
    create_gifts(&app).await;
    let mut secrets: Vec<String> = Vec::new();
    let email = "holder.secret@example.com";
    secrets.push(email.to_owned());

    // The story, with an email.
    let letters = issue_codes(&app, "demo-2014", "letters", 2).await;
    let mut req = exchange_request(&letters[0], "select-gift", "s-1");
    req.contact_email = email.into();
    let select = exchange(&app, req).await.unwrap().deliverable.unwrap();
    let gift = pb::IssuedCode {
        code: select.code.clone(),
        login_key: select.pin.clone(),
        serial: 0,
    };
    let d = exchange(&app, exchange_request(&gift, "emoney-a", "s-2"))
        .await
        .unwrap()
        .deliverable
        .unwrap();
    secrets.extend([select.code, select.pin, d.code, d.pin]);
    // Stored and not-stored deliverables, a reconciled one, a failed one.
    let codes = issue_codes(&app, CAMPAIGN, "dump", 5).await;
    for (i, option) in ["emoney-a", "emoney-b", "nostore"].iter().enumerate() {
        let mut req = exchange_request(&codes[i], option, &format!("d-{i}"));
        req.contact_email = format!("person{i}@example.com");
        secrets.push(req.contact_email.clone());
        let d = exchange(&app, req).await.unwrap().deliverable.unwrap();
        secrets.extend([d.code, d.pin]);
    }
    let sim_a = sim(&app, "emoney-a");
    sim_a.set_fault(FaultMode::UnknownAfterIssue);
    let p = exchange(&app, exchange_request(&codes[3], "emoney-a", "d-3"))
        .await
        .unwrap();
    sim_a.set_fault(FaultMode::None);
    reconcile(&app, &p.name).await;
    let d = get_exchange(&app, &codes[3]).await.deliverable.unwrap();
    secrets.extend([d.code, d.pin]);
    let f = exchange(&app, exchange_request(&codes[4], "gift-reject", "d-4"))
        .await
        .unwrap();
    assert_eq!(state_of(&f), pb::ExchangeState::Failed);
    for c in letters.iter().chain(codes.iter()) {
        secrets.push(c.code.clone());
        secrets.push(c.login_key.clone());
    }
    let needles: HashSet<String> = secrets.iter().flat_map(|s| forms(s)).collect();
    assert!(needles.len() > 40, "{}", needles.len());

    let mut conn = app.redis.as_ref().expect("redis").connection();
    let mut cursor: u64 = 0;
    let mut keys = 0usize;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .expect("SCAN");
        for key in batch {
            keys += 1;
            let mut blob = key.clone();
            blob.extend(value_bytes(&mut conn, &key));
            let text = String::from_utf8_lossy(&blob).to_ascii_uppercase();
            for n in &needles {
                assert!(
                    !text.contains(&n.to_ascii_uppercase()),
                    "key {} holds a plaintext secret",
                    String::from_utf8_lossy(&key)
                );
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(keys > 10, "only {keys} keys: wrong Redis?");
}
