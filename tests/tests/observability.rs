//! Observability (issue 7), checked from outside: traces exported over
//! OTLP to an in-process receiver, parented on the caller's `traceparent`
//! and free of secrets; `/metrics` that parses and moves with traffic;
//! JSON log lines that carry the trace id.
//!
//! The tracing subscriber and the OpenTelemetry pipeline are process-wide,
//! so this binary installs them once ([`env`]) on one shared runtime, and
//! the tests take turns ([`serial`]) so counters move only by their own
//! calls.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use giftx_core::Clock as _;
use giftx_proto::v1 as pb;
use giftx_server::config::{LogConfig, LogFormat};
use giftx_server::telemetry::{self, Telemetry};
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{campaign_with_options, exchange_request, issue_codes, verify_request};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The deployment environment this binary's telemetry is set up with.
const ENVIRONMENT: &str = "staging-eu";

/// Everything process-wide: the runtime, the receiver, the captured logs.
struct Env {
    receiver: Receiver,
    logs: Captured,
    telemetry: Telemetry,
}

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
});

static ENV: OnceLock<Env> = OnceLock::new();

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the OTLP receiver and installs giftxd's telemetry (JSON logs into
/// a buffer, traces to the receiver), once.
fn env() -> &'static Env {
    ENV.get_or_init(|| {
        RT.block_on(async {
            let receiver = Receiver::default();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let svc = TraceServiceServer::new(receiver.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            let logs = Captured::default();
            let cfg = LogConfig {
                format: LogFormat::Json,
                level: Some("info".into()),
                environment: Some(ENVIRONMENT.into()),
                instance_id: None,
            };
            let telemetry =
                telemetry::init_with(&cfg, Some(&format!("http://{addr}")), logs.clone(), false)
                    .expect("install telemetry");
            assert!(telemetry.exporting());
            Env {
                receiver,
                logs,
                telemetry,
            }
        })
    })
}

/// An OTLP TraceService that keeps every span it is sent, and the
/// resource attributes each batch came with.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<Vec<KeyValue>>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            if let Some(r) = rs.resource {
                self.1.lock().unwrap().push(r.attributes);
            }
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn of_trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

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

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("UTF-8 logs")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn with_traceparent<T>(msg: T, tp: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("traceparent", tp.parse().expect("ASCII metadata"));
    r
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str(s: &Span, key: &str) -> Option<String> {
    match attr(s, key)? {
        AnyValue::StringValue(v) => Some(v.clone()),
        AnyValue::IntValue(v) => Some(v.to_string()),
        AnyValue::BoolValue(v) => Some(v.to_string()),
        AnyValue::DoubleValue(v) => Some(v.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn all_attribute_text(kvs: &[KeyValue]) -> String {
    kvs.iter()
        .map(|kv| format!("{}={:?}", kv.key, kv.value))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Exports what is buffered until `done` holds for the trace's spans.
async fn spans_until(trace_id: &[u8], done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let env = env();
    for _ in 0..100 {
        tokio::task::spawn_blocking(|| env.telemetry.force_flush())
            .await
            .unwrap()
            .expect("flush spans");
        let spans = env.receiver.of_trace(trace_id);
        if done(&spans) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = env.receiver.of_trace(trace_id);
    panic!(
        "spans of trace {} never complete: {:#?}",
        hex(trace_id),
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

/// A campaign with one option on `provider`, and `n` codes of it.
async fn campaign_and_codes(
    app: &TestApp,
    id: &str,
    option: &str,
    provider: &str,
    n: i64,
) -> Vec<pb::IssuedCode> {
    let deadline = app.clock.now().plus(Duration::from_secs(30 * 24 * 3600));
    app.issuance
        .clone()
        .create_campaign(campaign_with_options(id, deadline, &[(option, provider)]))
        .await
        .expect("CreateCampaign");
    issue_codes(app, id, "b-1", n).await
}

const RPC_SPAN: &str = "giftx.v1.ExchangeService/Exchange";

#[test]
fn exchange_with_traceparent_exports_rpc_ledger_and_provider_spans_without_secrets() {
    let env = env();
    let _turn = serial();
    RT.block_on(async {
        let app = TestApp::spawn(
            TestAppOptions::new()
                .redis()
                .chunk_size(1_000)
                .configure(|c| c.expiry.workers = false),
        )
        .await;
        let codes = campaign_and_codes(&app, "traced", "gift-a", "emoney-a", 1).await;
        let code = &codes[0];
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller_span = "00f067aa0ba902b7";
        let email = "holder@example.com";
        let mut req = exchange_request(code, "gift-a", "req-traced-1");
        req.contact_email = email.into();
        let done = app
            .exchange
            .clone()
            .exchange(with_traceparent(req, &traceparent(trace_id, caller_span)))
            .await
            .expect("Exchange")
            .into_inner();
        let deliverable = done.deliverable.clone().expect("a deliverable");
        assert!(!deliverable.code.is_empty());

        let tid = unhex(trace_id);
        let spans = spans_until(&tid, |spans| {
            spans.iter().any(|s| s.name == RPC_SPAN)
                && spans.iter().any(|s| s.name == "provider.call")
                && spans.iter().filter(|s| s.name == "ledger.script").count() >= 2
        })
        .await;

        // The RPC span: a server span whose parent is the caller's span.
        let rpc = spans.iter().find(|s| s.name == RPC_SPAN).unwrap();
        assert_eq!(hex(&rpc.parent_span_id), caller_span);
        assert_eq!(rpc.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(attr_str(rpc, "rpc.method").as_deref(), Some("Exchange"));
        assert_eq!(
            attr_str(rpc, "rpc.service").as_deref(),
            Some("giftx.v1.ExchangeService")
        );
        assert_eq!(attr_str(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
        assert_eq!(attr_str(rpc, "giftx.campaign").as_deref(), Some("traced"));
        assert_eq!(attr_str(rpc, "giftx.option").as_deref(), Some("gift-a"));

        // Every other span of the trace descends from the RPC span.
        let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
        let descends = |s: &Span| {
            let mut cur = s;
            for _ in 0..16 {
                if cur.parent_span_id == rpc.span_id {
                    return true;
                }
                match by_id.get(&cur.parent_span_id) {
                    Some(p) => cur = p,
                    None => return false,
                }
            }
            false
        };
        let scripts: Vec<&Span> = spans.iter().filter(|s| s.name == "ledger.script").collect();
        let names: Vec<String> = scripts
            .iter()
            .map(|s| attr_str(s, "script").expect("script name"))
            .collect();
        assert!(names.contains(&"claim_code".to_owned()), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("complete")), "{names:?}");
        for s in &scripts {
            assert!(
                descends(s),
                "ledger span {:?} is not under the RPC span",
                s.name
            );
            assert!(attr(s, "result").is_some(), "result code on {names:?}");
            assert!(attr(s, "bucket").is_some(), "bucket on {names:?}");
        }
        let provider = spans.iter().find(|s| s.name == "provider.call").unwrap();
        assert!(
            descends(provider),
            "provider span is not under the RPC span"
        );
        assert_eq!(attr_str(provider, "provider").as_deref(), Some("emoney-a"));
        assert_eq!(attr_str(provider, "outcome").as_deref(), Some("ok"));
        assert!(attr(provider, "attempt").is_some());
        assert!(attr(provider, "latency_ms").is_some());

        // No secret anywhere in anything exported (all traces, not just
        // this one: events and names included).
        let mut secrets = vec![
            code.code.clone(),
            code.login_key.clone(),
            email.to_owned(),
            deliverable.code.clone(),
        ];
        secrets.push(code.code.replace('-', ""));
        secrets.push(code.login_key.replace('-', ""));
        if !deliverable.pin.is_empty() {
            secrets.push(deliverable.pin.clone());
        }
        for s in env.receiver.all() {
            let mut text = format!("{}\n{}", s.name, all_attribute_text(&s.attributes));
            for e in &s.events {
                text.push_str(&format!(
                    "\n{}\n{}",
                    e.name,
                    all_attribute_text(&e.attributes)
                ));
            }
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "span {} carries a secret: {text}",
                    s.name
                );
            }
        }
        app.shutdown().await.expect("clean shutdown");
    });
}

#[test]
fn json_log_lines_of_a_traced_request_carry_its_trace_id() {
    let env = env();
    let _turn = serial();
    RT.block_on(async {
        let app = TestApp::spawn(TestAppOptions::new().chunk_size(1_000)).await;
        let codes = campaign_and_codes(&app, "logged", "gift-a", "emoney-a", 1).await;
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        let status = app
            .exchange
            .clone()
            .verify_code(with_traceparent(
                verify_request(&codes[0]),
                &traceparent(trace_id, "b7ad6b7169203331"),
            ))
            .await
            .expect("VerifyCode")
            .into_inner();
        assert_eq!(status.campaign, "campaigns/logged");

        let mut found = None;
        for _ in 0..50 {
            let text = env.logs.text();
            found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["trace_id"] == trace_id && v["message"] == "rpc finished");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let line = found.unwrap_or_else(|| {
            panic!(
                "no `rpc finished` line with trace id {trace_id}:\n{}",
                env.logs.text()
            )
        });
        let span_id = line["span_id"].as_str().expect("span_id");
        assert_eq!(span_id.len(), 16, "{line}");
        assert!(span_id.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
        assert_ne!(
            span_id, "b7ad6b7169203331",
            "the server's own span, not the caller's"
        );
        assert_eq!(line["span"]["rpc.method"], "VerifyCode", "{line}");

        // Every line is one JSON object, and none holds the credentials.
        let text = env.logs.text();
        for l in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            assert!(!l.contains(&codes[0].code), "{l}");
            assert!(!l.contains(&codes[0].login_key), "{l}");
        }
        app.shutdown().await.expect("clean shutdown");
    });
}

/// A parsed sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the Prometheus / OpenMetrics text formats: every line
/// is a `# HELP`, `# TYPE`, `# UNIT` or `# EOF` comment or a well-formed
/// sample of a declared family.
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn valid_name(n: &str) -> bool {
        let mut cs = n.chars();
        matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        assert!(!eof, "line {} after # EOF: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match parts.next() {
                Some("EOF") => eof = true,
                Some("TYPE") => {
                    let name = parts.next().expect("TYPE name");
                    let ty = parts.next().expect("TYPE type");
                    assert!(valid_name(name), "{line}");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram",
                            "untyped"
                        ]
                        .contains(&ty),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "{line}"
                    );
                }
                Some("HELP") | Some("UNIT") => {
                    assert!(valid_name(parts.next().expect("name")), "{line}");
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line {}", i + 1);
        let (name, rest) = match line.find(['{', ' ']) {
            Some(p) => line.split_at(p),
            None => panic!("no value: {line}"),
        };
        assert!(valid_name(name), "{line}");
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let (start, c) = chars.next().expect("unterminated labels");
                if c == '}' {
                    end = start;
                    break;
                }
                let mut key = String::from(c);
                loop {
                    let (_, c) = chars.next().expect("label name");
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert!(
                    valid_name(&key) && !key.contains(':'),
                    "label {key}: {line}"
                );
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("label value").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other}: {line}"),
                        },
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.insert(key, value).is_none(),
                    "duplicate label: {line}"
                );
                if let Some((_, ',')) = chars.peek() {
                    chars.next();
                }
            }
            &body[end + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
        }
        assert!(fields.next().is_none(), "trailing fields: {line}");
        let family = ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample of an undeclared family: {line}"
        );
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// GETs `/metrics` with a bare HTTP/1.1 client, asking for OpenMetrics
/// as Prometheus does, and parses the body.
async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: giftxd\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head_lc = head.to_ascii_lowercase();
    assert!(
        head_lc.contains("content-type: application/openmetrics-text")
            || head_lc.contains("content-type: text/plain"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    parse_exposition(body)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn metrics_endpoint_parses_and_counts_move_with_exchanges() {
    let _env = env();
    let _turn = serial();
    RT.block_on(async {
        // A free port for GIFTX_METRICS_LISTEN (serve binds it itself).
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_addr = probe.local_addr().unwrap();
        drop(probe);
        let app = TestApp::spawn(
            TestAppOptions::new()
                .redis()
                .chunk_size(1_000)
                .configure(|c| c.metrics_listen = Some(metrics_addr)),
        )
        .await;
        const N: usize = 5;
        let codes = campaign_and_codes(&app, "metered", "metered-opt", "emoney-b", 5).await;
        let before = scrape(metrics_addr).await;
        for (i, code) in codes.iter().enumerate().take(N) {
            app.exchange
                .clone()
                .exchange(exchange_request(code, "metered-opt", &format!("m-{i}")))
                .await
                .expect("Exchange");
        }
        let after = scrape(metrics_addr).await;
        let delta = |name: &str, labels: &[(&str, &str)]| {
            value(&after, name, labels) - value(&before, name, labels)
        };
        let n = N as f64;
        let exchange_rpc = [
            ("service", "giftx.v1.ExchangeService"),
            ("method", "Exchange"),
        ];
        assert_eq!(
            delta(
                "giftx_exchanges_total",
                &[("option", "metered-opt"), ("outcome", "succeeded")]
            ),
            n
        );
        assert_eq!(
            delta(
                "giftx_rpc_requests_total",
                &[exchange_rpc[0], exchange_rpc[1], ("code", "OK")]
            ),
            n
        );
        assert_eq!(delta("giftx_rpc_duration_seconds_count", &exchange_rpc), n);
        assert_eq!(
            delta(
                "giftx_rpc_duration_seconds_bucket",
                &[exchange_rpc[0], exchange_rpc[1], ("le", "+Inf")]
            ),
            n
        );
        assert!(delta("giftx_rpc_duration_seconds_sum", &exchange_rpc) > 0.0);
        assert_eq!(
            delta(
                "giftx_provider_calls_total",
                &[("provider", "emoney-b"), ("outcome", "ok")]
            ),
            n
        );
        assert_eq!(
            delta(
                "giftx_provider_call_duration_seconds_count",
                &[("provider", "emoney-b")]
            ),
            n
        );
        assert_eq!(
            delta(
                "giftx_ledger_script_duration_seconds_count",
                &[("script", "claim_code")]
            ),
            n
        );
        assert_eq!(value(&after, "giftx_ledger_script_errors_total", &[]), 0.0);
        // Buckets are cumulative: +Inf holds the count.
        let bucket_inf = value(
            &after,
            "giftx_rpc_duration_seconds_bucket",
            &[exchange_rpc[0], exchange_rpc[1], ("le", "+Inf")],
        );
        assert_eq!(
            bucket_inf,
            value(&after, "giftx_rpc_duration_seconds_count", &exchange_rpc)
        );
        // This app runs the expiry workers: it reports the lease.
        assert!(
            after.iter().any(|s| s.name == "giftx_lease_held"
                && s.labels.get("lease").map(String::as_str) == Some("expiry-workers")),
            "giftx_lease_held missing"
        );
        app.shutdown().await.expect("clean shutdown");
        // The endpoint stops with the server.
        assert!(tokio::net::TcpStream::connect(metrics_addr).await.is_err());
    });
}

#[test]
fn bulk_rpcs_export_one_bulk_span_not_a_span_per_bucket() {
    let env = env();
    let _turn = serial();
    RT.block_on(async {
        let app = TestApp::spawn(
            TestAppOptions::new()
                .redis()
                .chunk_size(1_000)
                .configure(|c| c.expiry.workers = false),
        )
        .await;
        let codes = campaign_and_codes(&app, "bulk-traced", "gift-b", "emoney-a", 3).await;
        assert_eq!(codes.len(), 3);
        let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
        let caller_span = "10f067aa0ba902b8";
        app.issuance
            .clone()
            .void_batch(with_traceparent(
                pb::VoidBatchRequest {
                    name: "campaigns/bulk-traced/batches/b-1".into(),
                },
                &traceparent(trace_id, caller_span),
            ))
            .await
            .expect("VoidBatch");
        const VOID_SPAN: &str = "giftx.v1.IssuanceService/VoidBatch";
        let tid = unhex(trace_id);
        let spans = spans_until(&tid, |spans| {
            spans.iter().any(|s| s.name == VOID_SPAN)
                && spans.iter().any(|s| s.name == "ledger.bulk")
        })
        .await;
        let rpc = spans.iter().find(|s| s.name == VOID_SPAN).unwrap();
        assert_eq!(hex(&rpc.parent_span_id), caller_span);
        let bulk = spans.iter().find(|s| s.name == "ledger.bulk").unwrap();
        assert_eq!(bulk.parent_span_id, rpc.span_id);
        assert_eq!(
            attr_str(bulk, "giftx.operation").as_deref(),
            Some("void_batch")
        );
        assert_eq!(attr_str(bulk, "giftx.codes").as_deref(), Some("3"));
        // One script per bucket (4,096) ran; none of them is exported.
        let scripts = spans.iter().filter(|s| s.name == "ledger.script").count();
        assert!(
            scripts < 16,
            "{scripts} ledger.script spans exported for one VoidBatch"
        );
        assert!(
            !env.logs.text().contains("spans dropped"),
            "spans were dropped"
        );
    });
}

fn kv_str(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

#[test]
fn the_trace_resource_names_service_version_instance_and_environment() {
    let env = env();
    let _turn = serial();
    RT.block_on(async {
        let app = TestApp::spawn(TestAppOptions::new().chunk_size(1_000)).await;
        let codes = campaign_and_codes(&app, "resourced", "gift-a", "emoney-a", 1).await;
        let trace_id = "1af7651916cd43dd8448eb211c80319d";
        app.exchange
            .clone()
            .verify_code(with_traceparent(
                verify_request(&codes[0]),
                &traceparent(trace_id, "c7ad6b7169203332"),
            ))
            .await
            .expect("VerifyCode");
        spans_until(&unhex(trace_id), |s| !s.is_empty()).await;
        let resources = env.receiver.1.lock().unwrap().clone();
        assert!(!resources.is_empty(), "no resource came with the spans");
        let mut instances = std::collections::BTreeSet::new();
        for r in &resources {
            assert_eq!(
                kv_str(r, "service.name").as_deref(),
                Some("giftxd"),
                "{r:?}"
            );
            assert_eq!(
                kv_str(r, "service.version").as_deref(),
                Some(giftx_server::VERSION),
                "{r:?}"
            );
            assert_eq!(
                kv_str(r, "deployment.environment.name").as_deref(),
                Some(ENVIRONMENT),
                "{r:?}"
            );
            let instance = kv_str(r, "service.instance.id").expect("service.instance.id");
            // A random UUID when none is set.
            assert_eq!(instance.len(), 36, "{instance}");
            assert_eq!(instance.matches('-').count(), 4, "{instance}");
            instances.insert(instance);
        }
        assert_eq!(
            instances.len(),
            1,
            "one process, one instance id: {instances:?}"
        );
        app.shutdown().await.expect("clean shutdown");
    });
}

#[test]
fn a_reconciler_run_is_a_root_trace_named_by_its_exchange_and_its_logs_carry_it() {
    let env = env();
    let _turn = serial();
    RT.block_on(async {
        let app = TestApp::spawn(
            TestAppOptions::new()
                .redis()
                .chunk_size(1_000)
                .configure(|c| {
                    c.expiry.workers = true;
                    c.expiry.interval_ms = 50;
                    c.expiry.lease_ttl_ms = 500;
                    c.expiry.reconcile_min_age_seconds = 0;
                    c.exchange.backoff_base_ms = 10;
                    c.exchange.backoff_max_seconds = 1;
                }),
        )
        .await;
        let codes = campaign_and_codes(&app, "redriven", "gift-r", "emoney-a", 1).await;
        let sim = giftx_tests::sim(&app, "emoney-a");
        sim.set_fault(giftx_providers::simulated::FaultMode::UnknownAll);
        let pending = giftx_tests::exchange(&app, exchange_request(&codes[0], "gift-r", "r-1"))
            .await
            .expect("Exchange");
        assert_eq!(giftx_tests::state_of(&pending), pb::ExchangeState::Pending);
        sim.set_fault(giftx_providers::simulated::FaultMode::None);
        app.clock.advance(Duration::from_secs(60));
        let mut finished = false;
        for _ in 0..200 {
            if giftx_tests::list_pending(&app).await.is_empty() {
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(finished, "the reconciler never finished {}", pending.name);

        // The root span of the re-drive, found by its exchange name.
        let mut root = None;
        for _ in 0..100 {
            tokio::task::spawn_blocking(|| env.telemetry.force_flush())
                .await
                .unwrap()
                .expect("flush spans");
            root = env.receiver.all().into_iter().find(|s| {
                s.name == "worker.reconcile"
                    && attr_str(s, "giftx.exchange").as_deref() == Some(pending.name.as_str())
                    && attr_str(s, "giftx.outcome").as_deref() == Some("succeeded")
            });
            if root.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let root = root.unwrap_or_else(|| {
            panic!(
                "no worker.reconcile span for {}: {:?}",
                pending.name,
                env.receiver
                    .all()
                    .iter()
                    .filter(|s| s.name.starts_with("worker."))
                    .map(|s| (&s.name, attr_str(s, "giftx.exchange")))
                    .collect::<Vec<_>>()
            )
        });
        assert!(root.parent_span_id.is_empty(), "a root span: {root:?}");
        // Its trace holds the provider call that finished the exchange.
        let spans = spans_until(&root.trace_id, |spans| {
            spans.iter().any(|s| s.name == "provider.call")
        })
        .await;
        assert!(
            spans
                .iter()
                .filter(|s| s.name == "provider.call")
                .all(|s| s.trace_id == root.trace_id)
        );
        // Its log line carries the trace id.
        let tid = hex(&root.trace_id);
        let text = env.logs.text();
        assert!(
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|v| v["trace_id"] == tid.as_str() && v["message"] == "reconciled"),
            "no `reconciled` log line with trace id {tid}:\n{text}"
        );
        app.shutdown().await.expect("clean shutdown");
    });
}

/// Every `giftx_*` metric name in the dashboard's and the alerts' queries
/// (histogram suffixes taken off).
fn metrics_the_deploy_files_use() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut exprs: Vec<String> = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" {
                        out.extend(v.as_str().map(str::to_owned));
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/giftx-dashboard.json"))
            .expect("the dashboard"),
    )
    .expect("dashboard JSON");
    walk(&dashboard, &mut exprs);
    let alerts: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).expect("alerts"),
    )
    .expect("alerts YAML");
    walk(&alerts, &mut exprs);
    assert!(exprs.len() > 10, "queries found: {exprs:?}");
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(p) = rest.find("giftx_") {
            let tail = &rest[p..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_exists_from_the_first_scrape() {
    let _env = env();
    let _turn = serial();
    RT.block_on(async {
        let used = metrics_the_deploy_files_use();
        assert!(
            used.contains("giftx_ledger_script_errors_total"),
            "{used:?}"
        );
        let providers = BTreeMap::from([
            (
                "emoney-a".to_owned(),
                giftx_server::config::ProviderConfig::of_kind("simulated"),
            ),
            (
                "edy-stock".to_owned(),
                giftx_server::config::ProviderConfig::of_kind("stock"),
            ),
        ]);
        // A Redis ledger that already holds a campaign, as after a restart.
        let first = TestApp::spawn(
            TestAppOptions::new()
                .redis()
                .chunk_size(1_000)
                .providers(providers.clone())
                .configure(|c| c.expiry.workers = false),
        )
        .await;
        campaign_and_codes(&first, "scraped", "scraped-opt", "emoney-a", 1).await;
        let mut first = first;
        let redis = first.redis.take().expect("the app's Redis");
        first.shutdown().await.expect("clean shutdown");

        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_addr = probe.local_addr().unwrap();
        drop(probe);
        let app = TestApp::spawn(
            TestAppOptions::new()
                .redis_url(redis.url())
                .chunk_size(1_000)
                .providers(providers)
                .configure(|c| {
                    c.metrics_listen = Some(metrics_addr);
                    c.expiry.workers = true;
                }),
        )
        .await;
        // The app's gRPC port takes connections before serve() has bound
        // the metrics port: wait for that port, then take the first scrape.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(metrics_addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first scrape: every counter and histogram the queries use.
        let samples = scrape(metrics_addr).await;
        let present = |samples: &[Sample], name: &str| {
            samples.iter().any(|s| {
                s.name == name
                    || s.name
                        .strip_prefix(name)
                        .is_some_and(|x| ["_bucket", "_sum", "_count", "_total"].contains(&x))
            })
        };
        // The ledger gauges are the lease holder's (a process that has not
        // won the lease leaves them to the one that has).
        let holder_only = [
            "giftx_codes",
            "giftx_exchanges_pending",
            "giftx_exchanges_parked",
            "giftx_stock_available",
            "giftx_sweeper_last_success_timestamp_seconds",
        ];
        for name in used.iter().filter(|n| !holder_only.contains(&n.as_str())) {
            assert!(
                present(&samples, name),
                "{name} missing from the first scrape"
            );
        }
        // Zero-valued before anything happened.
        assert_eq!(
            value(&samples, "giftx_ledger_script_errors_total", &[]),
            0.0
        );
        assert!(
            samples
                .iter()
                .any(|s| s.name == "giftx_ledger_script_errors_total"
                    && s.labels.get("script").map(String::as_str) == Some("claim_code")),
            "giftx_ledger_script_errors_total{{script=\"claim_code\"}} missing"
        );
        assert!(
            samples.iter().any(|s| s.name == "giftx_exchanges_total"
                && s.labels.get("option").map(String::as_str) == Some("scraped-opt")),
            "the stored campaign's option has no giftx_exchanges_total series"
        );
        assert!(
            samples
                .iter()
                .any(|s| s.name == "giftx_provider_calls_total"
                    && s.labels.get("provider").map(String::as_str) == Some("emoney-a")
                    && s.labels.get("outcome").map(String::as_str) == Some("unknown")),
            "giftx_provider_calls_total for emoney-a/unknown missing"
        );
        // The lease holder's first scrape has the ledger gauges as well.
        let mut holder = None;
        for _ in 0..100 {
            let s = scrape(metrics_addr).await;
            if value(&s, "giftx_lease_held", &[("lease", "expiry-workers")]) == 1.0 {
                holder = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let holder = holder.expect("the only giftxd wins the lease");
        for name in holder_only.iter().filter(|n| used.contains(**n)) {
            assert!(
                present(&holder, name),
                "{name} missing from the lease holder's first scrape"
            );
        }
        app.shutdown().await.expect("clean shutdown");
        drop(redis);
    });
}
