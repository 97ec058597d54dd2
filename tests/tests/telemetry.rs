//! Telemetry: every RPC gets a span and an "rpc finished" event with its
//! method and final status. Its own test binary: a thread-scoped
//! subscriber races with tracing's callsite cache when other tests run in
//! the same process.

use std::sync::Arc;

use futures::StreamExt as _;
use giftx_core::Clock as _;
use giftx_proto::v1 as pb;
use giftx_testkit::TestApp;
use giftx_tests::campaign_request;

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_rpc_is_logged_with_its_method_and_final_status() {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_writer(out.clone())
        .finish();
    // Current-thread runtime: the server's tasks run on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = TestApp::spawn_default().await;
    let mut c = app.issuance.clone();
    let _ = c
        .get_campaign(pb::GetCampaignRequest {
            name: "campaigns/nope".into(),
        })
        .await;
    c.create_campaign(campaign_request("logged", app.clock.now()))
        .await
        .unwrap();
    let mut s = c
        .issue_codes(pb::IssueCodesRequest {
            campaign: "campaigns/logged".into(),
            batch_id: "b".into(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner();
    while s.next().await.is_some() {}
    drop(app);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let finished: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rpc finished"))
        .collect();
    let find = |method: &str, status: &str| {
        finished
            .iter()
            .any(|l| l.contains(&format!("\"rpc.method\":\"{method}\"")) && l.contains(status))
    };
    assert!(find("GetCampaign", "NOT_FOUND"), "{text}");
    assert!(find("CreateCampaign", "\"OK\""), "{text}");
    assert!(find("IssueCodes", "\"OK\""), "{text}");
}
