//! What views without the holder's credentials show (issue 12, item 7 and
//! the parked bullet of item 9).
//!
//! Exchange names are not secrets: ListPreferences and ListPendingExchanges
//! hand them to operators, and ReconcileExchange takes them. So no RPC other
//! than Exchange and GetExchange (which take the code and login key) may
//! return a deliverable's secret parts (code, pin, redeem URL); operator
//! views carry state, provider reference and timestamps. Every RPC that can
//! reach a succeeded exchange is called here and its whole answer searched
//! for every secret, on both ledgers.

use std::time::Duration;

use giftx_core::Clock;
use giftx_proto::v1 as pb;
use giftx_proto::v1::operations_service_client::OperationsServiceClient;
use giftx_providers::simulated::FaultMode;
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{
    assert_refused, campaign_with_options, exchange, exchange_request, get_exchange, issue_codes,
    list_pending, sim, state_of, verify_request,
};
use tonic::Code as GrpcCode;
use tonic_types::StatusExt as _;

const CAMPAIGN: &str = "views";

fn options(redis: bool) -> TestAppOptions {
    let o = TestAppOptions::new()
        .chunk_size(1_000)
        .seed_demo(true)
        .configure(|c| {
            // The test drives reconciliation itself.
            c.expiry.workers = false;
            c.exchange.max_attempts = 2;
        });
    if redis { o.redis() } else { o }
}

/// The deliverable's secret parts (empty ones left out).
fn secrets_of(d: &pb::Deliverable) -> Vec<String> {
    [&d.code, &d.pin, &d.redeem_url]
        .into_iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect()
}

/// Panics if `answer` (the Debug form of a whole response) holds any of
/// `secrets`.
fn assert_no_secret(rpc: &str, answer: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !answer.contains(s.as_str()),
            "{rpc} returned a deliverable secret ({s}): {answer}"
        );
    }
}

async fn check_operator_views(app: TestApp) {
    let deadline = app.clock.now().plus(Duration::from_secs(30 * 24 * 3600));
    app.issuance
        .clone()
        .create_campaign(campaign_with_options(
            CAMPAIGN,
            deadline,
            &[
                ("select-gift", "select-gift"),
                ("emoney-a", "emoney-a"),
                ("emoney-b", "emoney-b"),
                ("giftcode-c", "giftcode-c"),
                ("book-card", "book-card"),
                ("donation", "donation"),
                ("emoney-lost", "emoney-a"),
            ],
        ))
        .await
        .expect("CreateCampaign");
    let codes = issue_codes(&app, CAMPAIGN, "letters", 8).await;
    let mut ops = OperationsServiceClient::new(app.channel.clone());

    // One exchange per provider kind, each with preferences so that
    // ListPreferences names it.
    let mut secrets: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let direct = [
        "select-gift",
        "emoney-a",
        "emoney-b",
        "giftcode-c",
        "book-card",
        "donation",
    ];
    for (i, option) in direct.iter().enumerate() {
        let mut req = exchange_request(&codes[i], option, &format!("v-{i}"));
        req.delete_personal_data = true;
        req.stop_mail = true;
        if *option == "book-card" {
            req.shipping_address = "100-0001\nTokyo, Chiyoda 1-1\nHolder Name".into();
        }
        let x = exchange(&app, req).await.expect("Exchange");
        assert_eq!(
            state_of(&x),
            pb::ExchangeState::Succeeded,
            "{option}: {x:?}"
        );
        let d = x.deliverable.clone().expect("deliverable");
        secrets.extend(secrets_of(&d));
        names.push(x.name.clone());
    }
    // One whose answer was lost: PENDING (listed), then reconciled.
    let mut req = exchange_request(&codes[6], "emoney-lost", "v-lost");
    req.stop_mail = true;
    let lost = exchange(&app, req).await.expect("Exchange");
    assert_eq!(state_of(&lost), pb::ExchangeState::Pending, "{lost:?}");
    let listed = list_pending(&app).await;
    assert!(listed.iter().any(|e| e.name == lost.name));
    names.push(lost.name.clone());
    // The holder sees every deliverable in full, including the reconciled
    // one: the secrets searched for below are real (this is what an operator
    // view must never show).
    let mut holder_views = Vec::new();
    for code in &codes[..7] {
        let shown = get_exchange(&app, code).await;
        if state_of(&shown) == pb::ExchangeState::Succeeded {
            let d = shown.deliverable.clone().expect("deliverable");
            assert!(!d.code.is_empty() || !d.reference.is_empty(), "{shown:?}");
            secrets.extend(secrets_of(&d));
        }
        holder_views.push(shown);
    }
    // Every kind with a code or pin contributed one: select (gift ID and
    // management number), the three simulators, the lost one after the
    // reconcile below.
    assert!(secrets.len() >= 8, "{secrets:?}");

    let mut answers: Vec<(String, String)> = Vec::new();
    // ReconcileExchange on every name: first the PENDING one (it ends
    // SUCCEEDED here), then the finished ones, returned as they are.
    let mut ex = app.expiry.clone();
    for name in &names {
        let r = ex
            .reconcile_exchange(pb::ReconcileExchangeRequest { name: name.clone() })
            .await
            .expect("ReconcileExchange")
            .into_inner();
        assert_eq!(state_of(&r), pb::ExchangeState::Succeeded, "{r:?}");
        // Still useful to an operator: the kind and the provider's reference.
        let d = r.deliverable.clone().expect("a deliverable summary");
        assert!(!d.reference.is_empty(), "{r:?}");
        assert!(
            d.code.is_empty() && d.pin.is_empty() && d.redeem_url.is_empty(),
            "{r:?}"
        );
        answers.push((format!("ReconcileExchange({name})"), format!("{r:?}")));
    }
    // The lost exchange's deliverable, now known to the holder.
    let shown = get_exchange(&app, &codes[6]).await;
    let d = shown.deliverable.clone().expect("reconciled deliverable");
    assert!(!d.code.is_empty());
    secrets.extend(secrets_of(&d));

    // ListPendingExchanges while one is PENDING (a fresh lost exchange).
    let mut req = exchange_request(&codes[7], "emoney-lost", "v-lost-2");
    req.stop_mail = true;
    let lost2 = exchange(&app, req).await.expect("Exchange");
    assert_eq!(state_of(&lost2), pb::ExchangeState::Pending);
    answers.push((
        "ListPendingExchanges".into(),
        format!("{:?}", list_pending(&app).await),
    ));
    let r = ex
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: lost2.name.clone(),
        })
        .await
        .expect("ReconcileExchange")
        .into_inner();
    answers.push(("ReconcileExchange(lost2)".into(), format!("{r:?}")));
    let d = get_exchange(&app, &codes[7])
        .await
        .deliverable
        .expect("deliverable");
    secrets.extend(secrets_of(&d));
    answers.push((
        "ListPendingExchanges(after)".into(),
        format!("{:?}", list_pending(&app).await),
    ));

    // VerifyCode: a summary of the latest exchange, never the deliverable.
    for code in &codes {
        let s = app
            .exchange
            .clone()
            .verify_code(verify_request(code))
            .await
            .expect("VerifyCode")
            .into_inner();
        assert!(s.exchange.is_some());
        answers.push(("VerifyCode".into(), format!("{s:?}")));
    }

    // The operations service.
    let prefs = ops
        .list_preferences(pb::ListPreferencesRequest {
            campaign: format!("campaigns/{CAMPAIGN}"),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("ListPreferences")
        .into_inner();
    assert!(
        prefs.preferences.len() >= names.len(),
        "ListPreferences names the exchanges: {prefs:?}"
    );
    answers.push(("ListPreferences".into(), format!("{prefs:?}")));
    let shipments = ops
        .list_shipments(pb::ListShipmentsRequest {
            provider: "book-card".into(),
            ..Default::default()
        })
        .await
        .expect("ListShipments")
        .into_inner();
    assert_eq!(shipments.shipments.len(), 1);
    answers.push(("ListShipments".into(), format!("{shipments:?}")));
    let marked = ops
        .mark_shipped(pb::MarkShippedRequest {
            provider: "book-card".into(),
            references: vec![shipments.shipments[0].reference.clone()],
            tracking: "T-1".into(),
        })
        .await
        .expect("MarkShipped")
        .into_inner();
    answers.push(("MarkShipped".into(), format!("{marked:?}")));

    // The issuance and expiry services.
    let mut iss = app.issuance.clone();
    let name = format!("campaigns/{CAMPAIGN}");
    answers.push((
        "GetCampaign".into(),
        format!(
            "{:?}",
            iss.get_campaign(pb::GetCampaignRequest { name: name.clone() })
                .await
                .expect("GetCampaign")
        ),
    ));
    answers.push((
        "ListCampaigns".into(),
        format!(
            "{:?}",
            iss.list_campaigns(pb::ListCampaignsRequest::default())
                .await
                .expect("ListCampaigns")
        ),
    ));
    answers.push((
        "GetCampaignStats".into(),
        format!(
            "{:?}",
            iss.get_campaign_stats(pb::GetCampaignStatsRequest {
                campaign: name.clone()
            })
            .await
            .expect("GetCampaignStats")
        ),
    ));
    let batch = format!("{name}/batches/letters");
    answers.push((
        "GetBatch".into(),
        format!(
            "{:?}",
            iss.get_batch(pb::GetBatchRequest {
                name: batch.clone()
            })
            .await
            .expect("GetBatch")
        ),
    ));
    answers.push((
        "SweepExpired".into(),
        format!(
            "{:?}",
            ex.sweep_expired(pb::SweepExpiredRequest {
                campaign: name.clone()
            })
            .await
            .expect("SweepExpired")
        ),
    ));
    answers.push((
        "ExtendCampaign".into(),
        format!(
            "{:?}",
            ex.extend_campaign(pb::ExtendCampaignRequest {
                campaign: name.clone(),
                expire_time: Some(giftx_tests::ts(deadline.plus(Duration::from_secs(3600)))),
                force: false,
            })
            .await
            .expect("ExtendCampaign")
        ),
    ));
    answers.push((
        "VoidBatch".into(),
        format!(
            "{:?}",
            iss.void_batch(pb::VoidBatchRequest { name: batch })
                .await
                .expect("VoidBatch")
        ),
    ));

    for (rpc, answer) in &answers {
        assert_no_secret(rpc, answer, &secrets);
    }
    // The holder's own views still show everything (and were the source of
    // the secrets above).
    // (A shipment marked shipped since shows its ship time and tracking.)
    for (code, before) in codes.iter().zip(&holder_views).take(6) {
        let mut now = get_exchange(&app, code).await.deliverable;
        if let (Some(n), Some(b)) = (now.as_mut(), before.deliverable.as_ref())
            && n.kind == pb::DeliverableKind::Shipment as i32
        {
            assert!(n.ship_time.is_some() && !n.tracking.is_empty(), "{n:?}");
            n.ship_time = b.ship_time;
            n.tracking = b.tracking.clone();
        }
        assert_eq!(now, before.deliverable);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_views_never_return_a_deliverable_secret_embedded() {
    check_operator_views(TestApp::spawn(options(false)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_views_never_return_a_deliverable_secret_on_redis() {
    check_operator_views(TestApp::spawn(options(true)).await).await;
}

// ---- parked exchanges -----------------------------------------------------------

async fn check_parked_answer(app: TestApp) {
    let deadline = app.clock.now().plus(Duration::from_secs(30 * 24 * 3600));
    app.issuance
        .clone()
        .create_campaign(campaign_with_options(
            CAMPAIGN,
            deadline,
            &[("emoney-a", "emoney-a"), ("emoney-b", "emoney-b")],
        ))
        .await
        .expect("CreateCampaign");
    let codes = issue_codes(&app, CAMPAIGN, "p", 1).await;
    let sim_a = sim(&app, "emoney-a");
    sim_a.set_fault(FaultMode::UnknownAll);
    let first = exchange(&app, exchange_request(&codes[0], "emoney-a", "p-1"))
        .await
        .expect("Exchange");
    assert_eq!(state_of(&first), pb::ExchangeState::Pending);
    // While it is only in flight (not parked), another request is told to
    // retry shortly.
    let e = exchange(&app, exchange_request(&codes[0], "emoney-b", "p-2"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::Aborted, "EXCHANGE_IN_FLIGHT");
    assert!(e.get_details_retry_info().is_some());

    // The second attempt is the last (max_attempts 2): parked.
    app.clock.advance(Duration::from_secs(3600));
    let parked = app
        .expiry
        .clone()
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: first.name.clone(),
        })
        .await
        .expect("ReconcileExchange")
        .into_inner();
    assert!(parked.parked, "{parked:?}");

    // Now a new request says so, and does not promise that waiting helps.
    for i in 0..3 {
        let e = exchange(
            &app,
            exchange_request(&codes[0], "emoney-b", &format!("p-new-{i}")),
        )
        .await
        .unwrap_err();
        assert_refused(&e, GrpcCode::FailedPrecondition, "EXCHANGE_PARKED");
        assert!(
            e.get_details_retry_info().is_none(),
            "a parked exchange does not end by waiting: {e:?}"
        );
        assert!(e.message().contains("operator"), "{e:?}");
    }
    // The holder's own retry and GetExchange show it as parked.
    let again = exchange(&app, exchange_request(&codes[0], "emoney-a", "p-1"))
        .await
        .expect("Exchange retry");
    assert!(again.parked && state_of(&again) == pb::ExchangeState::Pending);
    assert!(get_exchange(&app, &codes[0]).await.parked);

    // Once an operator resolves it, the code moves on.
    sim_a.set_fault(FaultMode::None);
    let done = app
        .expiry
        .clone()
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: first.name.clone(),
        })
        .await
        .expect("ReconcileExchange")
        .into_inner();
    assert_eq!(state_of(&done), pb::ExchangeState::Succeeded);
    let e = exchange(&app, exchange_request(&codes[0], "emoney-b", "p-late"))
        .await
        .unwrap_err();
    assert_refused(&e, GrpcCode::FailedPrecondition, "CODE_ALREADY_REDEEMED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_exchange_answers_parked_not_retry_soon_embedded() {
    check_parked_answer(TestApp::spawn(options(false)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_exchange_answers_parked_not_retry_soon_on_redis() {
    check_parked_answer(TestApp::spawn(options(true)).await).await;
}
