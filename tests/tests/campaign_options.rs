//! CreateCampaign asks each option's provider whether it can serve the
//! option at all (issue 12, item 9): a `select` option whose target campaign
//! does not exist (or has ended) used to be accepted, and every exchange of
//! it then FAILED with SELECT_CAMPAIGN_NOT_FOUND. Now it is refused at
//! creation, naming the field.

use std::time::Duration;

use giftx_core::Clock;
use giftx_proto::v1 as pb;
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{assert_invalid_field, campaign_with_options, reason};
use tonic_types::StatusExt as _;

fn options(redis: bool) -> TestAppOptions {
    // No demo: the select provider's target, demo-select, does not exist.
    let o = TestAppOptions::new().seed_demo(false);
    if redis { o.redis() } else { o }
}

async fn check_select_target_is_required(app: TestApp) {
    let deadline = app.clock.now().plus(Duration::from_secs(30 * 24 * 3600));
    let mut iss = app.issuance.clone();
    let req = campaign_with_options(
        "leak-2014",
        deadline,
        &[("book-card", "book-card"), ("select-gift", "select-gift")],
    );
    let e = iss.create_campaign(req.clone()).await.unwrap_err();
    assert_invalid_field(&e, "campaign.options[1].provider");
    assert_eq!(reason(&e), "INVALID_ARGUMENT");
    let br = e.get_details_bad_request().expect("BadRequest");
    assert!(
        br.field_violations[0]
            .description
            .contains("SELECT_CAMPAIGN_NOT_FOUND"),
        "{br:?}"
    );
    // Nothing was created.
    let got = iss
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/leak-2014".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(got.code(), tonic::Code::NotFound);

    // Once the target exists, the same request is accepted.
    iss.create_campaign(campaign_with_options(
        "demo-select",
        deadline,
        &[("emoney-a", "emoney-a")],
    ))
    .await
    .expect("CreateCampaign demo-select");
    let c = iss
        .create_campaign(req)
        .await
        .expect("CreateCampaign with its select target")
        .into_inner();
    assert_eq!(c.options.len(), 2);

    // A target past its deadline takes no new codes: refused too.
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let late = campaign_with_options(
        "leak-2015",
        app.clock.now().plus(Duration::from_secs(3600)),
        &[("select-gift", "select-gift")],
    );
    let e = iss.create_campaign(late).await.unwrap_err();
    assert_invalid_field(&e, "campaign.options[0].provider");
}

#[tokio::test]
async fn a_select_option_without_its_target_campaign_is_refused_embedded() {
    check_select_target_is_required(TestApp::spawn(options(false)).await).await;
}

#[tokio::test]
async fn a_select_option_without_its_target_campaign_is_refused_on_redis() {
    check_select_target_is_required(TestApp::spawn(options(true)).await).await;
}
