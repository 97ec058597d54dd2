//! `giftctl demo` walks the apology story of docs/design.md against a
//! giftxd with its demo campaigns, on the embedded ledger and on Redis.

use giftx_testkit::{TestApp, TestAppOptions};

async fn giftctl_demo(app: &TestApp) -> Result<(), giftx_cli::Error> {
    use clap::Parser as _;
    let addr = format!("http://{}", app.addr);
    let cli = giftx_cli::Cli::try_parse_from(["giftctl", "--addr", addr.as_str(), "demo"])
        .expect("demo parses");
    giftx_cli::run(cli).await
}

#[tokio::test]
async fn giftctl_demo_succeeds_on_the_embedded_ledger() {
    let app = TestApp::spawn(TestAppOptions::default().seed_demo(true)).await;
    giftctl_demo(&app).await.expect("demo story");
    // The story issues a fresh code each time: it runs again.
    giftctl_demo(&app).await.expect("demo story, again");
}

#[tokio::test]
async fn giftctl_demo_succeeds_on_redis() {
    let app = TestApp::spawn(TestAppOptions::default().redis().seed_demo(true)).await;
    giftctl_demo(&app).await.expect("demo story on Redis");
}
