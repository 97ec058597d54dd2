//! `giftctl issue` against a stand-in IssuanceService that streams codes,
//! ends short, breaks or refuses: the file is complete, or the failure says
//! how many codes were written and what to do about the batch.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use giftx_cli::cli::IssueArgs;
use giftx_cli::render::Output;
use giftx_cli::vendor_csv::partial_path;
use giftx_cli::{Error, rpc};
use giftx_proto::v1::issuance_service_server::{IssuanceService, IssuanceServiceServer};
use giftx_proto::v1::*;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Complete,
    /// Ends cleanly after this many codes.
    Short(i64),
    /// Fails with UNAVAILABLE after this many codes.
    BreakAfter(i64),
    /// Sends one code more than asked.
    Extra,
    /// Refuses the batch at once.
    AlreadyExists,
}

#[derive(Clone)]
struct Fake {
    mode: Mode,
    calls: Arc<AtomicUsize>,
}

fn issued(serial: i64) -> Result<IssuedCode, Status> {
    Ok(IssuedCode {
        code: format!(
            "AB{:04}-{:04}-{:04}-{:04}",
            serial % 10_000,
            serial / 7 % 10_000,
            serial / 3 % 10_000,
            serial % 9_999
        ),
        login_key: format!("K{:03}-{:04}", serial % 1000, serial % 10_000),
        serial,
    })
}

type CodeStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<IssuedCode, Status>> + Send>>;

#[tonic::async_trait]
impl IssuanceService for Fake {
    async fn create_campaign(
        &self,
        _: Request<CreateCampaignRequest>,
    ) -> Result<Response<Campaign>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_campaign(
        &self,
        _: Request<GetCampaignRequest>,
    ) -> Result<Response<Campaign>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_campaigns(
        &self,
        _: Request<ListCampaignsRequest>,
    ) -> Result<Response<ListCampaignsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type IssueCodesStream = CodeStream;
    async fn issue_codes(
        &self,
        req: Request<IssueCodesRequest>,
    ) -> Result<Response<CodeStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let count = req.into_inner().count;
        let stream: CodeStream = match self.mode {
            Mode::Complete => Box::pin(tokio_stream::iter((1..=count).map(issued))),
            Mode::Short(n) => Box::pin(tokio_stream::iter((1..=n).map(issued))),
            Mode::Extra => Box::pin(tokio_stream::iter((1..=count + 1).map(issued))),
            Mode::BreakAfter(n) => Box::pin(tokio_stream::iter((1..=n).map(issued).chain(
                std::iter::once(Err(Status::unavailable("ledger went away"))),
            ))),
            Mode::AlreadyExists => {
                return Err(Status::already_exists("batch b1 was already issued"));
            }
        };
        Ok(Response::new(stream))
    }
    async fn get_batch(&self, _: Request<GetBatchRequest>) -> Result<Response<Batch>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn void_batch(&self, _: Request<VoidBatchRequest>) -> Result<Response<Batch>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_campaign_stats(
        &self,
        _: Request<GetCampaignStatsRequest>,
    ) -> Result<Response<CampaignStats>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves a [`Fake`] on a free port; returns its clients and call counter.
async fn spawn(mode: Mode) -> (rpc::Clients, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = Fake {
        mode,
        calls: calls.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IssuanceServiceServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (
        rpc::connect(&format!("http://{addr}")).await.unwrap(),
        calls,
    )
}

fn args(count: i64, out: &Path) -> IssueArgs {
    IssueArgs {
        campaign: "c".into(),
        count,
        batch: "b1".into(),
        out: out.to_owned(),
    }
}

const JSON: Output = Output { json: true };

fn read_gz(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_writes_every_code_into_a_complete_gz_file() {
    let (mut clients, _) = spawn(Mode::Complete).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("codes.csv.gz");
    // GIFTCTL_BENCH_CODES=1000000 turns this into the throughput check
    // (run with --release --nocapture; the summary line has codes/s).
    let count: i64 = std::env::var("GIFTCTL_BENCH_CODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    giftx_cli::issue::run(&mut clients, JSON, args(count, &out))
        .await
        .unwrap();
    assert!(!partial_path(&out).exists());
    let text = read_gz(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("serial,code,login_key"));
    let mut n = 0_i64;
    for (i, row) in lines.enumerate() {
        n += 1;
        let serial = (i + 1).to_string();
        assert_eq!(row.split(',').next(), Some(serial.as_str()), "{row}");
        assert_eq!(row.split(',').count(), 3, "{row}");
    }
    assert_eq!(n, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_stream_fails_saying_how_many_codes_were_written() {
    let (mut clients, _) = spawn(Mode::Short(700)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("codes.csv");
    let err = giftx_cli::issue::run(&mut clients, JSON, args(1000, &out))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Failed(_)), "{msg}");
    assert!(msg.contains("ended after 700 of 1000 codes"), "{msg}");
    assert!(msg.contains("700 of 1000 codes were written"), "{msg}");
    assert!(msg.contains("giftctl batch void c b1"), "{msg}");
    assert!(
        !out.exists(),
        "an incomplete file never takes the final name"
    );
    let partial = std::fs::read_to_string(partial_path(&out)).unwrap();
    assert_eq!(partial.lines().count(), 701);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_stream_fails_with_the_status_and_the_count() {
    let (mut clients, _) = spawn(Mode::BreakAfter(10_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("codes.csv.gz");
    let err = giftx_cli::issue::run(&mut clients, JSON, args(20_000, &out))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("UNAVAILABLE: ledger went away"), "{msg}");
    assert!(msg.contains("10000 of 20000 codes were written"), "{msg}");
    assert!(msg.contains("giftctl batch show c b1"), "{msg}");
    assert!(!out.exists());
    assert_eq!(read_gz(&partial_path(&out)).lines().count(), 10_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_codes_than_asked_is_a_failure() {
    let (mut clients, _) = spawn(Mode::Extra).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("codes.csv");
    let err = giftx_cli::issue::run(&mut clients, JSON, args(5, &out))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("more codes than the 5 requested"),
        "{err}"
    );
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batch_is_reported_as_the_rpc_error_and_leaves_no_file() {
    let (mut clients, _) = spawn(Mode::AlreadyExists).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("codes.csv");
    let err = giftx_cli::issue::run(&mut clients, JSON, args(5, &out))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IssueCodes failed: ALREADY_EXISTS: batch b1 was already issued"
    );
    assert!(!out.exists());
    assert!(!partial_path(&out).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_file_is_refused_before_any_code_is_issued() {
    let (mut clients, calls) = spawn(Mode::Complete).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("codes.csv");
    std::fs::write(&out, "precious").unwrap();
    let err = giftx_cli::issue::run(&mut clients, JSON, args(5, &out))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no batch may be issued for a file we cannot write"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
}

#[tokio::test]
async fn unreachable_server_is_one_clear_line() {
    // Port 1 on loopback: nothing listens there.
    let err = rpc::connect("127.0.0.1:1").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot connect to giftxd at http://127.0.0.1:1"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}
