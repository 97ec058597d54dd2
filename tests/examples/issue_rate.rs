//! Measures IssueCodes end to end against an in-process giftxd:
//! `cargo run --release -p giftx-tests --example issue_rate -- [count] [redis|embedded]`.

use std::time::Instant;

use futures::StreamExt as _;
use giftx_proto::v1 as pb;
use giftx_testkit::{TestApp, TestAppOptions};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let count: i64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let redis = args.next().as_deref() != Some("embedded");
    let opts = if redis {
        TestAppOptions::new().redis()
    } else {
        TestAppOptions::new()
    };
    let app = TestApp::spawn(opts).await;
    let mut c = app.issuance.clone();
    c.create_campaign(giftx_tests::campaign_request(
        "bench",
        giftx_core::Clock::now(&app.clock),
    ))
    .await
    .expect("create campaign");
    let start = Instant::now();
    let mut s = c
        .issue_codes(pb::IssueCodesRequest {
            campaign: "campaigns/bench".into(),
            batch_id: "b1".into(),
            count,
        })
        .await
        .expect("issue")
        .into_inner();
    let mut n = 0i64;
    while let Some(item) = s.next().await {
        item.expect("code");
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} codes in {secs:.2}s: {:.0} codes/s ({} ledger)",
        n as f64 / secs,
        if redis { "Redis" } else { "embedded" }
    );
}
