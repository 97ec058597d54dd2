//! The transport of a real giftxd process on a real Redis (issue 12, items
//! 4, 5, 6 and the `/metrics` bullet of 9): garbage from a client answered
//! as the client's mistake and never counted as a server fault, the
//! IssueCodes stream cap and window, idle and excess connections closed,
//! the accept loop backing off at the file-descriptor limit, and `/metrics`
//! in both text formats.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use giftx_proto::v1 as pb;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::RedisServer;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const HMAC_KEY: &[u8; 32] = b"giftx-transport-test-hmac-key-01";
const DELIVERABLE_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A giftxd child process, killed when dropped.
struct Giftxd {
    child: Child,
    port: u16,
    metrics_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Giftxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Giftxd {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// `/metrics` over HTTP/1.1, with `accept` as the Accept header.
    fn metrics(&self, accept: Option<&str>) -> (String, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let ct = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        (ct, body.to_owned())
    }

    /// The `/proc` CPU time (user + system) of the process, in ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

/// Starts giftxd on `redis` (or the embedded ledger) with `env`, under
/// `ulimit -n` when `nofile` is given.
fn start(redis: Option<&RedisServer>, env: &[(&str, &str)], nofile: Option<u32>) -> Giftxd {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hmac.key"), HMAC_KEY).unwrap();
    std::fs::write(dir.path().join("deliverable.keys"), DELIVERABLE_KEY).unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let bin = env!("CARGO_BIN_EXE_giftxd");
    let mut c = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("GIFTX_") || k == "RUST_LOG" || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.env("GIFTX_LISTEN", format!("127.0.0.1:{port}"))
        .env("GIFTX_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("GIFTX_SEED_DEMO", "true");
    if let Some(r) = redis {
        c.env("GIFTX_REDIS_URL", r.url())
            .env("GIFTX_HMAC_KEY_FILE", dir.path().join("hmac.key"))
            .env(
                "GIFTX_DELIVERABLE_KEYS_FILE",
                dir.path().join("deliverable.keys"),
            );
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("giftxd ended early").unwrap();
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if l.contains("WARN") || l.contains("ERROR") {
                eprintln!("giftxd: {l}");
            }
        }
    });
    Giftxd {
        child,
        port,
        metrics_port,
        _dir: dir,
    }
}

/// One raw HTTP/2 request; returns the HTTP status and the gRPC status
/// (from the headers of a trailers-only answer, else from the trailers).
async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Option<i32>, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let grpc = |h: &http::HeaderMap| {
        let code = h
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        let msg = h
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (code, msg)
    };
    let (code, msg) = grpc(resp.headers());
    if code.is_some() {
        return (status, code, msg);
    }
    let collected = resp.into_body().collect().await.unwrap();
    let (code, msg) = collected
        .trailers()
        .map(grpc)
        .unwrap_or((None, String::new()));
    (status, code, msg)
}

/// A gRPC frame: flag, big-endian length, message.
fn frame(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    v.extend_from_slice(msg);
    v
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");
const VERIFY: &str = "/giftx.v1.ExchangeService/VerifyCode";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_garbage_is_the_clients_mistake_and_never_counts_as_internal() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let g = start(Some(&redis), &[], None);
    let addr = g.addr();

    // Nested groups 101 deep: beyond prost's recursion limit.
    let deep: Vec<u8> = std::iter::repeat_n(0x7b_u8, 101).collect();
    let malformed: [(&str, Vec<u8>); 5] = [
        ("invalid UTF-8 in a string", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("truncated field", vec![0x0a, 0x05, b'a']),
        ("wrong wire type", vec![0x0d, 1, 2, 3, 4]),
        ("nesting too deep", deep),
        ("varint overflow", vec![0xff; 11]),
    ];
    for (what, msg) in malformed {
        let (http, code, m) = raw(&addr, "POST", VERIFY, &[GRPC], frame(0, &msg)).await;
        assert_eq!(http, 200, "{what}");
        assert_eq!(code, Some(Code::InvalidArgument as i32), "{what}: {m}");
    }
    // The same for a service built with tonic's own codec (health).
    let (_, code, m) = raw(
        &addr,
        "POST",
        "/grpc.health.v1.Health/Check",
        &[GRPC],
        frame(0, &[0x0a, 0x02, 0xff, 0xfe]),
    )
    .await;
    assert_eq!(code, Some(Code::InvalidArgument as i32), "health: {m}");

    // Length prefix larger than the message; no message at all; an
    // undefined compressed flag.
    let mut short = frame(0, &[0x0a, 0x01, b'a']);
    short[4] = 100;
    for (what, body) in [
        ("length prefix beyond the body", short),
        ("no message", Vec::new()),
        ("compressed flag 2", frame(2, &[])),
    ] {
        let (http, code, m) = raw(&addr, "POST", VERIFY, &[GRPC], body).await;
        assert_eq!(http, 200, "{what}");
        assert_eq!(code, Some(Code::InvalidArgument as i32), "{what}: {m}");
    }

    // Over the 4 MiB limit (documented OUT_OF_RANGE).
    let mut huge = vec![0u8];
    huge.extend_from_slice(&(5u32 << 20).to_be_bytes());
    let (_, code, m) = raw(&addr, "POST", VERIFY, &[GRPC], huge).await;
    assert_eq!(code, Some(Code::OutOfRange as i32), "{m}");

    // Compressed flag without grpc-encoding: INTERNAL, as the gRPC
    // compression spec mandates, but a protocol error of the client.
    let (_, code, m) = raw(&addr, "POST", VERIFY, &[GRPC], frame(1, &[])).await;
    assert_eq!(code, Some(Code::Internal as i32), "{m}");

    // Not gRPC at all: the HTTP answers the gRPC HTTP/2 spec prescribes.
    let (http, code, _) = raw(
        &addr,
        "POST",
        VERIFY,
        &[("content-type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!((http, code), (415, None));
    let (http, code, _) = raw(&addr, "GET", VERIFY, &[], Vec::new()).await;
    assert_eq!((http, code), (405, None));

    // A well-formed call still works.
    let (_, code, _) = raw(&addr, "POST", VERIFY, &[GRPC], frame(0, &[])).await;
    assert_eq!(code, Some(Code::InvalidArgument as i32), "empty code field");

    let (_, text) = g.metrics(None);
    let internal: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("giftx_rpc_requests_total") && l.contains("INTERNAL"))
        .collect();
    assert!(
        internal.is_empty(),
        "counted as server faults: {internal:?}"
    );
    for reason in ["method", "content_type", "compressed_flag_without_encoding"] {
        let line = format!(r#"giftx_rpc_protocol_errors_total{{reason="{reason}"}} 1"#);
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"giftx_rpc_requests_total{service="giftx.v1.ExchangeService",method="VerifyCode",code="INVALID_ARGUMENT"}"#
        )),
        "{text}"
    );
}

fn issue(batch: &str, count: i64) -> pb::IssueCodesRequest {
    pb::IssueCodesRequest {
        campaign: "campaigns/demo-2014".into(),
        batch_id: batch.into(),
        count,
    }
}

async fn issued(c: &mut IssuanceServiceClient<Channel>, batch: &str) -> (i64, i32) {
    let b = c
        .get_batch(pb::GetBatchRequest {
            name: format!("campaigns/demo-2014/batches/{batch}"),
        })
        .await
        .unwrap()
        .into_inner();
    (b.issued_count, b.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_streams_are_capped_and_an_unread_stream_stores_one_window_ahead() {
    const CHUNK: i64 = 20_000;
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let g = start(
        Some(&redis),
        &[
            ("GIFTX_MAX_ISSUE_STREAMS", "2"),
            ("GIFTX_ISSUE_WINDOW_CHUNKS", "1"),
            ("GIFTX_ISSUE_CHUNK_SIZE", &CHUNK.to_string()),
        ],
        None,
    );
    // HTTP/2's default stream window (64 KiB) on the client, so the
    // transport buffers a few thousand codes at most (hyper's client would
    // take 2 MiB per stream). The connection window stays large, so the
    // unread streams do not block the other calls.
    let ch = Channel::from_shared(format!("http://{}", g.addr()))
        .unwrap()
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut c = IssuanceServiceClient::new(ch.clone());

    // Two streams that nobody reads.
    let unread_a = c.issue_codes(issue("unread-a", 2_000_000)).await.unwrap();
    let unread_b = c.issue_codes(issue("unread-b", 2_000_000)).await.unwrap();

    // A third is refused, with when to retry.
    let refused = c.issue_codes(issue("third", 10)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "ISSUE_STREAMS_EXHAUSTED"
    );

    // The unread stream's stored count stops growing at one window (one
    // chunk) beyond what the transport buffers (64 KiB of client window and
    // hyper's 400 KiB send buffer: about 11,000 codes of ~43 bytes, under
    // a chunk). Before the window it settled at 4 chunks and more.
    let mut last = -1;
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while same < 10 {
        assert!(Instant::now() < deadline, "the stored count never settled");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (n, _) = issued(&mut c, "unread-a").await;
        // Nothing stored yet is not settled: the first chunk is generated
        // on low-priority threads, slow while other work has the CPU.
        if n == last && n > 0 {
            same += 1;
        } else {
            (last, same) = (n, 0);
        }
    }
    assert!(last > 0, "nothing stored");
    assert!(
        last <= 2 * CHUNK,
        "an unread stream stored {last} codes: more than one window of {CHUNK} beyond the transport"
    );

    // Ending a stream gives its place back.
    drop(unread_a);
    let deadline = Instant::now() + Duration::from_secs(30);
    let third = loop {
        match c.issue_codes(issue("third", 10)).await {
            Ok(s) => break s,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("third stream: {s:?}"),
        }
    };
    let mut third = third.into_inner();
    let mut n = 0;
    while let Some(item) = third.message().await.unwrap() {
        assert!(!item.code.is_empty());
        n += 1;
    }
    assert_eq!(n, 10);
    drop(unread_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed_while_capped_ones_work() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let g = start(
        Some(&redis),
        &[
            ("GIFTX_IDLE_TIMEOUT_SECONDS", "1"),
            ("GIFTX_MAX_CONNECTIONS", "3"),
        ],
        None,
    );

    // A connection that never sends a request is closed.
    let mut idle = tokio::net::TcpStream::connect(g.addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncReadExt as _;
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    drop(idle);

    // Three connections (the cap) work; a fourth is closed at once.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut h = tonic_health::pb::health_client::HealthClient::new(g.channel().await);
        h.check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
        clients.push(h);
    }
    let mut excess = tokio::net::TcpStream::connect(g.addr()).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = excess.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        loop {
            match excess.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "a connection beyond the cap was served");
    // Calls keep the three busy enough; each still answers.
    for h in &mut clients {
        h.check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    }
    let (_, text) = g.metrics(None);
    assert!(
        text.lines()
            .any(|l| l.starts_with("giftx_connections_refused_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("giftx_connections_idle_closed_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_the_accept_loop_backs_off_and_recovers() {
    // The embedded ledger: no Redis connections among the 64 descriptors.
    let g = start(None, &[], Some(64));
    // Fill the descriptor table with connections that say nothing.
    let mut extra = Vec::new();
    for _ in 0..100 {
        extra.push(std::net::TcpStream::connect(g.addr()).unwrap());
    }
    // Let giftxd reach EMFILE, then measure its CPU over two seconds.
    std::thread::sleep(Duration::from_secs(1));
    let before = g.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = g.cpu_ticks() - before;
    // A spinning accept loop burns ~200 ticks (a whole core) here.
    assert!(
        used < 50,
        "giftxd used {used} ticks of CPU in 2 s at EMFILE"
    );

    drop(extra);
    // New clients are served again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = async {
            let ch = Channel::from_shared(format!("http://{}", g.addr()))
                .ok()?
                .connect()
                .await
                .ok()?;
            tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()
        }
        .await;
        if ok.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "giftxd did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    } // (Scraped once descriptors are free: the metrics listener needs one.)
    let (_, text) = g.metrics(None);
    assert!(
        text.lines()
            .any(|l| l.starts_with("giftx_accept_backoffs_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_format_the_client_accepts() {
    let g = start(None, &[], None);
    let (ct, open) = g.metrics(Some(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ));
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(open.ends_with("# EOF\n"));
    let (ct, classic) = g.metrics(None);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(!classic.contains("# EOF"));
    for needle in [
        "# TYPE process_cpu_seconds_total counter",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "# TYPE giftx_build_info gauge",
        "giftx_build_info{version=\"",
    ] {
        assert!(classic.contains(needle), "{needle} missing in\n{classic}");
    }
    promtool_check(&classic);
}

/// `promtool check metrics` on the classic text, when promtool is
/// installed (`apt-get install prometheus`).
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Lint findings (naming advice) exit 3; a parse error exits 1.
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool rejected the classic format:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
