//! IssuanceService end to end: campaigns, IssueCodes, batches, stats.
//! Each behaviour runs on the embedded ledger; those where storage
//! matters run on a private Redis too.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use giftx_core::model::{BatchId, CampaignId, CodeState};
use giftx_core::{Clock, Code, LoginKey};
use giftx_ledger::CodeRef;
use giftx_proto::v1 as pb;
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{assert_invalid_field, campaign_request, issue_codes, reason};
use tonic::Code as GrpcCode;

fn issue(campaign: &str, batch: &str, count: i64) -> pb::IssueCodesRequest {
    pb::IssueCodesRequest {
        campaign: format!("campaigns/{campaign}"),
        batch_id: batch.to_owned(),
        count,
    }
}

async fn create(app: &TestApp, id: &str) -> pb::Campaign {
    app.issuance
        .clone()
        .create_campaign(campaign_request(id, app.clock.now()))
        .await
        .unwrap()
        .into_inner()
}

async fn get_batch(app: &TestApp, campaign: &str, batch: &str) -> pb::Batch {
    app.issuance
        .clone()
        .get_batch(pb::GetBatchRequest {
            name: format!("campaigns/{campaign}/batches/{batch}"),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn stats(app: &TestApp, campaign: &str) -> pb::CampaignStats {
    app.issuance
        .clone()
        .get_campaign_stats(pb::GetCampaignStatsRequest {
            campaign: format!("campaigns/{campaign}"),
        })
        .await
        .unwrap()
        .into_inner()
}

fn state_count(s: &pb::CampaignStats, state: pb::CodeState) -> i64 {
    s.by_state
        .iter()
        .find(|x| x.state == state as i32)
        .map_or(-1, |x| x.count)
}

/// The state the ledger gives a printed code and login key.
async fn ledger_state(app: &TestApp, code: &str, key: &str) -> CodeState {
    let code = Code::parse(code).unwrap();
    let key = LoginKey::parse(key).unwrap();
    let h = app.state.keys.current();
    let r = CodeRef {
        series: code.series(),
        digest: h.code(&code),
    };
    app.state
        .ledger
        .verify(r, h.login_key(&code, &key), app.clock.now())
        .await
        .unwrap()
        .state
}

async fn embedded() -> TestApp {
    TestApp::spawn(TestAppOptions::new().chunk_size(1_000)).await
}

async fn redis() -> TestApp {
    TestApp::spawn(TestAppOptions::new().chunk_size(1_000).redis()).await
}

// ---- campaigns -------------------------------------------------------------

async fn check_create_get_and_idempotency(app: TestApp) {
    let mut c = app.issuance.clone();
    let mut req = campaign_request("leak-2014", app.clock.now());
    req.request_id = "req-1".into();
    let created = c.create_campaign(req.clone()).await.unwrap().into_inner();
    assert_eq!(created.name, "campaigns/leak-2014");
    assert_eq!(created.code_series.len(), 2);
    assert!(created.create_time.is_some());
    let again = c.create_campaign(req.clone()).await.unwrap().into_inner();
    assert_eq!(again, created, "same request_id returns the same campaign");
    let got = c
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/leak-2014".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let mut other = campaign_request("leak-2014", app.clock.now());
    other
        .campaign
        .as_mut()
        .unwrap()
        .face_value
        .as_mut()
        .unwrap()
        .minor_units = 1000;
    let e = c.create_campaign(other).await.unwrap_err();
    assert_eq!(e.code(), GrpcCode::AlreadyExists);
    assert_eq!(reason(&e), "CAMPAIGN_ALREADY_EXISTS");

    let e = c
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::NotFound);
}

#[tokio::test]
async fn campaigns_are_created_once_and_read_back_embedded() {
    check_create_get_and_idempotency(embedded().await).await;
}

#[tokio::test]
async fn campaigns_are_created_once_and_read_back_on_redis() {
    check_create_get_and_idempotency(redis().await).await;
}

#[tokio::test]
async fn list_campaigns_pages_through_every_campaign_once() {
    let app = embedded().await;
    for i in 0..7 {
        create(&app, &format!("c{i}")).await;
    }
    let mut c = app.issuance.clone();
    let mut token = String::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_campaigns(pb::ListCampaignsRequest {
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.campaigns.len() <= 3);
        seen.extend(page.campaigns.into_iter().map(|c| c.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging does not end");
    }
    let expected: Vec<_> = (0..7).map(|i| format!("campaigns/c{i}")).collect();
    assert_eq!(seen, expected);
    let all = c
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.campaigns.len(), 7);
    assert!(all.next_page_token.is_empty());
}

// ---- IssueCodes ------------------------------------------------------------

async fn check_issue_codes(app: TestApp) {
    create(&app, "print").await;
    let codes = issue_codes(&app, "print", "b-1", 2_500).await;
    assert_eq!(codes.len(), 2_500);
    let serials: Vec<i64> = codes.iter().map(|c| c.serial).collect();
    assert_eq!(serials, (1..=2_500).collect::<Vec<_>>());
    let distinct: HashSet<_> = codes.iter().map(|c| c.code.clone()).collect();
    assert_eq!(distinct.len(), 2_500);
    let series = Code::parse(&codes[0].code).unwrap().series();
    for c in &codes {
        let code = Code::parse(&c.code).expect("well-formed code");
        assert_eq!(code.series(), series);
        LoginKey::parse(&c.login_key).expect("well-formed login key");
    }
    for c in codes.iter().step_by(499) {
        assert_eq!(
            ledger_state(&app, &c.code, &c.login_key).await,
            CodeState::Active
        );
    }

    let b = get_batch(&app, "print", "b-1").await;
    assert_eq!(b.state, pb::BatchState::Complete as i32);
    assert_eq!((b.requested_count, b.issued_count), (2_500, 2_500));
    assert_eq!(b.name, "campaigns/print/batches/b-1");

    let s = stats(&app, "print").await;
    assert_eq!(s.issued_count, 2_500);
    assert_eq!(state_count(&s, pb::CodeState::Active), 2_500);
    let active = s
        .by_state
        .iter()
        .find(|x| x.state == pb::CodeState::Active as i32)
        .unwrap();
    assert_eq!(active.value.as_ref().unwrap().minor_units, 2_500 * 500);
    assert_eq!(active.value.as_ref().unwrap().currency_code, "JPY");
    assert_eq!(s.by_state.len(), 5);
    let options: Vec<_> = s.by_option.iter().map(|o| o.option_id.as_str()).collect();
    assert_eq!(options, ["book-card", "donation"]);
    assert_eq!(s.breakage.unwrap().minor_units, 0);

    // The same batch id again: ALREADY_EXISTS, nothing more stored.
    let e = app
        .issuance
        .clone()
        .issue_codes(issue("print", "b-1", 10))
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::AlreadyExists);
    assert_eq!(reason(&e), "BATCH_ALREADY_EXISTS");
    assert_eq!(stats(&app, "print").await.issued_count, 2_500);
}

#[tokio::test]
async fn issue_codes_streams_distinct_stored_codes_embedded() {
    check_issue_codes(embedded().await).await;
}

#[tokio::test]
async fn issue_codes_streams_distinct_stored_codes_on_redis() {
    check_issue_codes(redis().await).await;
}

#[tokio::test]
async fn issue_codes_refuses_unknown_campaigns_bad_counts_and_past_deadlines() {
    let app = embedded().await;
    let mut c = app.issuance.clone();
    let e = c.issue_codes(issue("nope", "b", 1)).await.unwrap_err();
    assert_eq!(e.code(), GrpcCode::NotFound);
    assert_eq!(reason(&e), "CAMPAIGN_NOT_FOUND");

    create(&app, "late").await;
    for n in [0, -1, 10_000_001] {
        let e = c.issue_codes(issue("late", "b", n)).await.unwrap_err();
        assert_invalid_field(&e, "count");
    }
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let e = c.issue_codes(issue("late", "b", 1)).await.unwrap_err();
    assert_eq!(e.code(), GrpcCode::FailedPrecondition);
    assert_eq!(reason(&e), "CAMPAIGN_EXPIRED");
}

async fn check_broken_stream_then_void(app: TestApp) {
    create(&app, "halfway").await;
    let mut s = app
        .issuance
        .clone()
        .issue_codes(issue("halfway", "run-1", 200_000))
        .await
        .unwrap()
        .into_inner();
    let mut held = Vec::new();
    while held.len() < 2_500 {
        held.push(s.next().await.unwrap().unwrap());
    }
    drop(s); // the client goes away

    // The server notices asynchronously; wait for the batch to close.
    let mut batch = get_batch(&app, "halfway", "run-1").await;
    for _ in 0..500 {
        if batch.state != pb::BatchState::Issuing as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        batch = get_batch(&app, "halfway", "run-1").await;
    }
    assert_eq!(batch.state, pb::BatchState::Incomplete as i32);
    assert_eq!(batch.requested_count, 200_000);
    assert!(batch.issued_count >= 2_500, "{batch:?}");
    assert!(batch.issued_count < 200_000, "{batch:?}");
    // Exact: the ledger holds exactly issued_count codes.
    assert_eq!(
        stats(&app, "halfway").await.issued_count,
        batch.issued_count
    );

    // Void: every code of the batch, held or not, reads VOID.
    let voided = app
        .issuance
        .clone()
        .void_batch(pb::VoidBatchRequest {
            name: "campaigns/halfway/batches/run-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voided.state, pb::BatchState::Void as i32);
    assert_eq!(voided.issued_count, batch.issued_count);
    for c in held.iter().step_by(250) {
        assert_eq!(
            ledger_state(&app, &c.code, &c.login_key).await,
            CodeState::Void
        );
    }
    let s = stats(&app, "halfway").await;
    assert_eq!(state_count(&s, pb::CodeState::Void), batch.issued_count);
    assert_eq!(state_count(&s, pb::CodeState::Active), 0);
    // Idempotent.
    let again = app
        .issuance
        .clone()
        .void_batch(pb::VoidBatchRequest {
            name: "campaigns/halfway/batches/run-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::BatchState::Void as i32);
}

#[tokio::test]
async fn a_broken_stream_leaves_an_exact_incomplete_batch_that_voids_embedded() {
    check_broken_stream_then_void(embedded().await).await;
}

#[tokio::test]
async fn a_broken_stream_leaves_an_exact_incomplete_batch_that_voids_on_redis() {
    check_broken_stream_then_void(redis().await).await;
}

#[tokio::test]
async fn unknown_batches_are_not_found() {
    let app = embedded().await;
    create(&app, "empty").await;
    let e = app
        .issuance
        .clone()
        .get_batch(pb::GetBatchRequest {
            name: "campaigns/empty/batches/none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::NotFound);
    assert_eq!(reason(&e), "BATCH_NOT_FOUND");
    let e = app
        .issuance
        .clone()
        .void_batch(pb::VoidBatchRequest {
            name: "campaigns/empty/batches/none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::NotFound);
    let e = app
        .issuance
        .clone()
        .get_campaign_stats(pb::GetCampaignStatsRequest {
            campaign: "campaigns/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), GrpcCode::NotFound);
    // A campaign with no codes has all-zero stats.
    let s = stats(&app, "empty").await;
    assert_eq!(s.issued_count, 0);
    assert!(s.by_state.iter().all(|x| x.count == 0));
    let _ = (CampaignId::parse("c", "empty"), BatchId::parse("b", "none"));
}
