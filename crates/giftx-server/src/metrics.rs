//! Prometheus metrics: one process-wide registry ([`global`]), what feeds
//! it, and the `/metrics` endpoint ([`serve_http`]).
//!
//! - RPCs are counted by [`crate::telemetry::RpcTraceLayer`] when each call
//!   ends; exchanges and provider calls by the exchange engine; ledger
//!   scripts through [`giftx_ledger::redis::ScriptObserver`].
//! - The expiry workers' progress (lease, sweeps, re-drives) comes from
//!   their [`WorkerStats`] watch; gauges read off the shared ledger
//!   (pending, parked, stock, codes by state) are refreshed by
//!   [`run_ledger_gauges`] on the lease holder only, so one process scans
//!   the ledger, and are withdrawn when it loses the lease.
//!
//! Names and labels are a contract with `deploy/prometheus/alerts.yaml`,
//! `deploy/grafana/giftx-dashboard.json` and `docs/OPERATING.md`. Every
//! label set is bounded: methods, status codes, options, providers,
//! scripts, campaigns (gauges only), outcomes. The registry is
//! process-wide because a process is one giftxd; tests that spawn several
//! apps in one process share it.
//!
//! The endpoint negotiates its format by the `Accept` header: OpenMetrics
//! text (`application/openmetrics-text`, what Prometheus asks for) when
//! the client accepts it, otherwise the classic Prometheus text format
//! 0.0.4 (`text/plain; version=0.0.4`), which older scrapers, the classic
//! parser and `promtool check metrics` read. Besides giftx's own metrics it
//! serves the standard `process_*` metrics (read from `/proc/self` when
//! scraped) and `giftx_build_info{version}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use giftx_core::model::ExchangeState;
use giftx_providers::stock::StockInventory;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::AppState;
use crate::workers::{LEASE_NAME, WorkerStats};

/// A label set: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// The OpenMetrics content type (when the client accepts it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's content type (otherwise).
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `outcome` labels of `giftx_exchanges_total`.
const EXCHANGE_OUTCOMES: [&str; 3] = ["succeeded", "failed", "pending"];
/// The `outcome` labels of `giftx_provider_calls_total`: `ok` or the
/// error's class.
const PROVIDER_OUTCOMES: [&str; 4] = ["ok", "rejected", "retryable", "unknown"];

/// Seconds; from 1ms to 2 minutes (IssueCodes streams are long).
const RPC_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Seconds; provider calls end at the provider timeout (10s by default).
const PROVIDER_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];
/// Seconds; a script is normally well under a millisecond plus the network.
const SCRIPT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}

fn provider_histogram() -> Histogram {
    Histogram::new(PROVIDER_BUCKETS)
}

fn script_histogram() -> Histogram {
    Histogram::new(SCRIPT_BUCKETS)
}

/// Every metric giftxd exports.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<Labels, Counter>,
    rpc_duration: Family<Labels, Histogram, fn() -> Histogram>,
    exchanges: Family<Labels, Counter>,
    provider_calls: Family<Labels, Counter>,
    provider_duration: Family<Labels, Histogram, fn() -> Histogram>,
    // Label-less gauges as families, so a process that is not the lease
    // holder can withdraw them instead of reporting a stale value.
    exchanges_pending: Family<Labels, Gauge>,
    exchanges_parked: Family<Labels, Gauge>,
    stock_available: Family<Labels, Gauge>,
    codes: Family<Labels, Gauge>,
    sweeper_expired: Counter,
    sweeper_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    reconciler_redrives: Family<Labels, Counter>,
    lease_held: Family<Labels, Gauge>,
    script_duration: Family<Labels, Histogram, fn() -> Histogram>,
    script_errors: Family<Labels, Counter>,
    protocol_errors: Family<Labels, Counter>,
    auth_refused: Family<Labels, Counter>,
    audit_dropped: Counter,
    tls_handshake_failures: Counter,
    tls_reloads: Family<Labels, Counter>,
    connections_open: Gauge,
    connections_refused: Counter,
    connections_idle_closed: Counter,
    accept_backoffs: Counter,
    issue_streams: Gauge,
    issue_streams_refused: Counter,
    spans_dropped: Counter,
    trace_export_failures: Counter,
    handles: Handles,
}

/// The series the per-call recorders touch, looked up in their families
/// once per label set and kept: a call then costs a read lock and a
/// lookup by `&str`, instead of building label vectors of owned strings
/// and hashing them in the family. Keys are the families' own label
/// values (bounded the same way), and these families are never cleared,
/// so a kept handle is always the exported series.
#[derive(Default)]
struct Handles {
    /// service → method → (duration, requests by code).
    rpc: RwLock<HashMap<String, HashMap<String, RpcSeries>>>,
    /// option → outcome → counter.
    exchanges: RwLock<HashMap<String, HashMap<&'static str, Counter>>>,
    /// provider → (duration, calls by outcome).
    providers: RwLock<HashMap<String, RpcSeries>>,
    /// script → (duration, errors once one failed).
    scripts: RwLock<HashMap<&'static str, (Histogram, Option<Counter>)>>,
}

struct RpcSeries {
    duration: Histogram,
    counts: HashMap<&'static str, Counter>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Maps of handles are only ever added to: a poisoned one is valid.
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Routes the Redis ledger's script timings into [`global`]. Idempotent.
pub fn install_ledger_observer() {
    struct Observer;
    impl giftx_ledger::redis::ScriptObserver for Observer {
        fn script_finished(&self, script: &'static str, elapsed: Duration, failed: bool) {
            global().ledger_script(script, elapsed, failed);
        }
    }
    let _ = giftx_ledger::redis::set_script_observer(Box::new(Observer));
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            exchanges: Family::default(),
            provider_calls: Family::default(),
            provider_duration: Family::new_with_constructor(provider_histogram),
            exchanges_pending: Family::default(),
            exchanges_parked: Family::default(),
            stock_available: Family::default(),
            codes: Family::default(),
            sweeper_expired: Counter::default(),
            sweeper_last_success: Gauge::default(),
            reconciler_redrives: Family::default(),
            lease_held: Family::default(),
            script_duration: Family::new_with_constructor(script_histogram),
            script_errors: Family::default(),
            protocol_errors: Family::default(),
            auth_refused: Family::default(),
            audit_dropped: Counter::default(),
            tls_handshake_failures: Counter::default(),
            tls_reloads: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_idle_closed: Counter::default(),
            accept_backoffs: Counter::default(),
            issue_streams: Gauge::default(),
            issue_streams_refused: Counter::default(),
            spans_dropped: Counter::default(),
            trace_export_failures: Counter::default(),
            registry: Registry::default(),
            handles: Handles::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "giftx_rpc_requests",
            "Finished RPCs by service, method and gRPC status code name",
            m.rpc_requests.clone(),
        );
        registry.register(
            "giftx_rpc_duration_seconds",
            "RPC latency (server streams: the whole stream)",
            m.rpc_duration.clone(),
        );
        registry.register(
            "giftx_exchanges",
            "Exchange results by option and outcome (succeeded, failed, pending)",
            m.exchanges.clone(),
        );
        registry.register(
            "giftx_provider_calls",
            "Provider calls by provider and outcome (ok, rejected, retryable, unknown)",
            m.provider_calls.clone(),
        );
        registry.register(
            "giftx_provider_call_duration_seconds",
            "Provider call latency, timeouts included",
            m.provider_duration.clone(),
        );
        registry.register(
            "giftx_exchanges_pending",
            "Exchanges in PENDING (reported by the expiry lease holder)",
            m.exchanges_pending.clone(),
        );
        registry.register(
            "giftx_exchanges_parked",
            "PENDING exchanges the reconciler gave up on (reported by the expiry lease holder)",
            m.exchanges_parked.clone(),
        );
        registry.register(
            "giftx_stock_available",
            "Items left in a stock provider (reported by the expiry lease holder)",
            m.stock_available.clone(),
        );
        registry.register(
            "giftx_codes",
            "Codes per campaign by state (reported by the expiry lease holder)",
            m.codes.clone(),
        );
        registry.register(
            "giftx_sweeper_expired",
            "Codes the sweeper marked EXPIRED",
            m.sweeper_expired.clone(),
        );
        registry.register(
            "giftx_sweeper_last_success_timestamp_seconds",
            "Unix time of the last completed sweep pass",
            m.sweeper_last_success.clone(),
        );
        registry.register(
            "giftx_reconciler_redrives",
            "Re-drives by the reconciler, by outcome",
            m.reconciler_redrives.clone(),
        );
        registry.register(
            "giftx_lease_held",
            "1 on the process holding the lease, 0 elsewhere",
            m.lease_held.clone(),
        );
        registry.register(
            "giftx_ledger_script_duration_seconds",
            "Redis Lua script latency seen by giftxd (round trip)",
            m.script_duration.clone(),
        );
        registry.register(
            "giftx_ledger_script_errors",
            "Scripts that failed with a Redis error (not a business refusal)",
            m.script_errors.clone(),
        );
        registry.register(
            "giftx_rpc_protocol_errors",
            "Requests refused for breaking the gRPC protocol (method, content_type, \
             compressed_flag_without_encoding): the client's mistake, not counted as RPCs",
            m.protocol_errors.clone(),
        );
        registry.register(
            "giftx_auth_refused",
            "Calls refused by authentication, role or limits (reason: API_KEY_MISSING, \
             API_KEY_INVALID, API_KEY_REVOKED, API_KEY_EXPIRED, ROLE_NOT_ALLOWED, RATE_LIMITED, \
             END_USER_THROTTLED)",
            m.auth_refused.clone(),
        );
        registry.register(
            "giftx_audit_dropped",
            "Audit events that could not be written to the ledger (they are in the log)",
            m.audit_dropped.clone(),
        );
        registry.register(
            "giftx_tls_handshake_failures",
            "TLS handshakes on the gRPC listener that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "giftx_tls_reloads",
            "Reloads of the TLS certificate, key and client CA files (result: ok, error)",
            m.tls_reloads.clone(),
        );
        registry.register(
            "giftx_connections_open",
            "Client connections open on the gRPC listener",
            m.connections_open.clone(),
        );
        registry.register(
            "giftx_connections_refused",
            "Connections closed at once because GIFTX_MAX_CONNECTIONS were open",
            m.connections_refused.clone(),
        );
        registry.register(
            "giftx_connections_idle_closed",
            "Connections closed after GIFTX_IDLE_TIMEOUT_SECONDS without a request",
            m.connections_idle_closed.clone(),
        );
        registry.register(
            "giftx_accept_backoffs",
            "Pauses of the accept loop because accept failed for lack of file descriptors or memory",
            m.accept_backoffs.clone(),
        );
        registry.register(
            "giftx_issue_streams",
            "IssueCodes streams running",
            m.issue_streams.clone(),
        );
        registry.register(
            "giftx_issue_streams_refused",
            "IssueCodes calls refused because GIFTX_MAX_ISSUE_STREAMS were running",
            m.issue_streams_refused.clone(),
        );
        registry.register(
            "giftx_trace_spans_dropped",
            "Spans the trace exporter dropped (its queue was full)",
            m.spans_dropped.clone(),
        );
        registry.register(
            "giftx_trace_export_failures",
            "Span batches the OTLP exporter failed to deliver (collector down, refused or timed out)",
            m.trace_export_failures.clone(),
        );
        registry.register(
            "giftx_build",
            "The running giftxd",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                crate::VERSION.to_owned(),
            )]),
        );
        Metrics { registry, ..m }
    }

    /// Creates, zero-valued, every series whose labels are known at start,
    /// so the dashboards' and alerts' metrics exist from the first scrape
    /// (a counter that appears only at its first increment loses that
    /// increment to `rate()` and `increase()`): per served method its
    /// `OK` count and latency; per provider its call outcomes and latency;
    /// per option in `options` its exchange outcomes; per ledger script in
    /// `scripts` its latency and errors; the reconciler's outcomes. The
    /// gauges read off the ledger stay the lease holder's alone (see
    /// [`run_ledger_gauges`]).
    pub fn init_known(
        &self,
        methods: &[(&str, &str)],
        providers: &[String],
        options: &[String],
        scripts: &[&'static str],
    ) {
        for (service, method) in methods {
            let _ = self.rpc_requests.get_or_create(&vec![
                ("service", (*service).to_owned()),
                ("method", (*method).to_owned()),
                ("code", "OK".to_owned()),
            ]);
            let _ = self.rpc_duration.get_or_create(&vec![
                ("service", (*service).to_owned()),
                ("method", (*method).to_owned()),
            ]);
        }
        for p in providers {
            for outcome in PROVIDER_OUTCOMES {
                let _ = self.provider_calls.get_or_create(&vec![
                    ("provider", p.clone()),
                    ("outcome", outcome.to_owned()),
                ]);
            }
            let _ = self
                .provider_duration
                .get_or_create(&vec![("provider", p.clone())]);
        }
        for o in options {
            self.option_known(o);
        }
        for script in scripts {
            let labels = vec![("script", (*script).to_owned())];
            let _ = self.script_duration.get_or_create(&labels);
            let _ = self.script_errors.get_or_create(&labels);
        }
        for outcome in crate::workers::OUTCOME_NAMES {
            let _ = self
                .reconciler_redrives
                .get_or_create(&vec![("outcome", outcome.to_owned())]);
        }
    }

    /// Creates the zero-valued exchange series of `option` (at start, and
    /// when a campaign offering it is created).
    pub fn option_known(&self, option: &str) {
        for outcome in EXCHANGE_OUTCOMES {
            let _ = self.exchanges.get_or_create(&vec![
                ("option", option.to_owned()),
                ("outcome", outcome.to_owned()),
            ]);
        }
    }

    /// A request broke the gRPC protocol (`reason`: method, content_type,
    /// compressed_flag_without_encoding).
    pub fn protocol_error(&self, reason: &'static str) {
        self.protocol_errors
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// A call was refused by authentication, its role or a limit.
    pub fn auth_refused(&self, reason: &'static str) {
        self.auth_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// `n` audit events could not be written.
    pub fn audit_dropped(&self, n: usize) {
        self.audit_dropped.inc_by(n as u64);
    }

    /// A TLS handshake failed or timed out.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// The TLS files were reloaded (`ok`) or could not be (`error`).
    pub fn tls_reloaded(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A connection was closed at once: too many were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// An idle connection was closed.
    pub fn connection_idle_closed(&self) {
        self.connections_idle_closed.inc();
    }

    /// The accept loop paused: no descriptors or memory.
    pub fn accept_backoff(&self) {
        self.accept_backoffs.inc();
    }

    /// An IssueCodes stream started (`+1`) or ended (`-1`).
    pub fn issue_streams_add(&self, n: i64) {
        self.issue_streams.inc_by(n);
    }

    /// An IssueCodes call was refused: the stream limit was reached.
    pub fn issue_stream_refused(&self) {
        self.issue_streams_refused.inc();
    }

    /// The trace exporter dropped `n` spans.
    pub fn spans_dropped(&self, n: u64) {
        self.spans_dropped.inc_by(n);
    }

    /// A batch of spans could not be exported.
    pub fn trace_export_failed(&self) {
        self.trace_export_failures.inc();
    }

    /// The registry and the process metrics in the OpenMetrics text
    /// format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        let body_end = out.rfind("# EOF").unwrap_or(out.len());
        out.truncate(body_end);
        process_metrics(&mut out);
        out.push_str("# EOF\n");
        out
    }

    /// As [`Metrics::render`], in the classic Prometheus text format 0.0.4.
    pub fn render_classic(&self) -> String {
        to_classic(&self.render())
    }

    /// One RPC ended with `code` (a gRPC code name such as `OK`).
    pub fn rpc_finished(&self, service: &str, method: &str, code: &'static str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        {
            let m = read(&self.handles.rpc);
            if let Some(s) = m.get(service).and_then(|m| m.get(method))
                && let Some(c) = s.counts.get(code)
            {
                c.inc();
                s.duration.observe(secs);
                return;
            }
        }
        let counter = self
            .rpc_requests
            .get_or_create(&vec![
                ("service", service.to_owned()),
                ("method", method.to_owned()),
                ("code", code.to_owned()),
            ])
            .clone();
        let duration = self
            .rpc_duration
            .get_or_create(&vec![
                ("service", service.to_owned()),
                ("method", method.to_owned()),
            ])
            .clone();
        counter.inc();
        duration.observe(secs);
        write(&self.handles.rpc)
            .entry(service.to_owned())
            .or_default()
            .entry(method.to_owned())
            .or_insert_with(|| RpcSeries {
                duration,
                counts: HashMap::new(),
            })
            .counts
            .insert(code, counter);
    }

    /// An exchange of `option` ended a drive with `outcome` (`succeeded`,
    /// `failed` or `pending`).
    pub fn exchange(&self, option: &str, outcome: &'static str) {
        if let Some(c) = read(&self.handles.exchanges)
            .get(option)
            .and_then(|m| m.get(outcome))
        {
            c.inc();
            return;
        }
        let counter = self
            .exchanges
            .get_or_create(&vec![
                ("option", option.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .clone();
        counter.inc();
        write(&self.handles.exchanges)
            .entry(option.to_owned())
            .or_default()
            .insert(outcome, counter);
    }

    /// A provider call ended with `outcome` (`ok` or the error class).
    pub fn provider_call(&self, provider: &str, outcome: &'static str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        {
            let m = read(&self.handles.providers);
            if let Some(s) = m.get(provider)
                && let Some(c) = s.counts.get(outcome)
            {
                c.inc();
                s.duration.observe(secs);
                return;
            }
        }
        let counter = self
            .provider_calls
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .clone();
        let duration = self
            .provider_duration
            .get_or_create(&vec![("provider", provider.to_owned())])
            .clone();
        counter.inc();
        duration.observe(secs);
        write(&self.handles.providers)
            .entry(provider.to_owned())
            .or_insert_with(|| RpcSeries {
                duration,
                counts: HashMap::new(),
            })
            .counts
            .insert(outcome, counter);
    }

    /// A ledger script ended.
    pub fn ledger_script(&self, script: &'static str, elapsed: Duration, failed: bool) {
        let secs = elapsed.as_secs_f64();
        {
            let m = read(&self.handles.scripts);
            if let Some((duration, errors)) = m.get(script)
                && (!failed || errors.is_some())
            {
                duration.observe(secs);
                if let Some(e) = errors.as_ref().filter(|_| failed) {
                    e.inc();
                }
                return;
            }
        }
        let labels = vec![("script", script.to_owned())];
        let duration = self.script_duration.get_or_create(&labels).clone();
        duration.observe(secs);
        let errors = failed.then(|| {
            let e = self.script_errors.get_or_create(&labels).clone();
            e.inc();
            e
        });
        let mut m = write(&self.handles.scripts);
        let entry = m.entry(script).or_insert_with(|| (duration, None));
        if errors.is_some() {
            entry.1 = errors;
        }
    }

    /// A sweep pass completed now.
    pub fn sweep_completed(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.sweeper_last_success.set(now);
    }

    fn lease(&self, name: &str, held: bool) {
        self.lease_held
            .get_or_create(&vec![("lease", name.to_owned())])
            .set(i64::from(held));
    }

    fn withdraw_ledger_gauges(&self) {
        self.exchanges_pending.clear();
        self.exchanges_parked.clear();
        self.stock_available.clear();
        self.codes.clear();
    }
}

/// The running `/metrics` endpoint; dropping it stops it too.
#[derive(Debug)]
pub struct Endpoint {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Serves `/metrics` on `listener` on a new task.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub fn start(listener: TcpListener) -> std::io::Result<Endpoint> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(listener, async {
            let _ = stopped.await;
        }));
        Ok(Endpoint {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the task.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serves `/metrics` on `listener` until `shutdown` resolves; open
/// connections are dropped then.
pub async fn serve_http(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(
                                TokioIo::new(stream),
                                hyper::service::service_fn(handle),
                            );
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "metrics connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let openmetrics = wants_openmetrics(req.headers().get(http::header::ACCEPT));
    Ok(respond(req.method(), req.uri().path(), openmetrics))
}

/// True when the `Accept` header names `application/openmetrics-text`
/// with a non-zero quality (Prometheus sends it first).
fn wants_openmetrics(accept: Option<&http::HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// OpenMetrics text (as `prometheus_client` and [`process_metrics`] write
/// it) → classic Prometheus text 0.0.4: no `# EOF` or `# UNIT`, counters
/// typed under their `_total` name, info metrics as gauges named `_info`.
fn to_classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // A family's HELP comes before its TYPE, which decides its name.
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name_out, kind_out) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                "stateset" => (name.to_owned(), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                k => (name.to_owned(), k),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                // Classic HELP escapes backslash and newline, not quotes.
                let text = text.replace("\\\"", "\"");
                out.push_str(&format!("# HELP {name_out} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name_out} {kind_out}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // A sample; exemplars (after " # ") are OpenMetrics only.
        out.push_str(line.split(" # ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, which
/// Linux fixes at 100 for user space on every architecture it supports.
const USER_HZ: f64 = 100.0;

/// Appends the standard `process_*` metrics (OpenMetrics text), read from
/// `/proc/self`; on a system without procfs nothing is appended.
fn process_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is parenthesised and may hold
    // spaces: state is field 3, utime 14, stime 15, starttime 22, vsize 23.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let mut gauge = |name: &str, help: &str, kind: &str, v: f64| {
        let sample = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {v}\n"
        );
    };
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        gauge(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            "counter",
            (u + s) / USER_HZ,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    if let Some(rss) = kb("VmRSS:") {
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            rss,
        );
    }
    if let Some(vsize) = field(23) {
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            vsize,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let n = dir.count().saturating_sub(1);
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            n as f64,
        );
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    if let Some(n) = max_fds {
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            n,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            boot + start / USER_HZ,
        );
    }
}

fn respond(method: &Method, path: &str, openmetrics: bool) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if path != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else if openmetrics {
        Bytes::from(global().render())
    } else {
        Bytes::from(global().render_classic())
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(if openmetrics {
            CONTENT_TYPE
        } else {
            CLASSIC_CONTENT_TYPE
        }),
    );
    r.headers_mut()
        .insert(http::header::VARY, http::HeaderValue::from_static("Accept"));
    r
}

/// Feeds the workers' progress into the metrics and, while this process
/// holds the expiry lease, refreshes the ledger gauges every `every`.
/// Returns when `shutdown` turns true or the workers are gone.
pub async fn run_ledger_gauges(
    state: Arc<AppState>,
    mut stats: watch::Receiver<WorkerStats>,
    mut shutdown: watch::Receiver<bool>,
    every: Duration,
) {
    let m = global();
    let mut seen = WorkerStats::default();
    m.lease(LEASE_NAME, false);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = stats.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = stats.borrow_and_update().clone();
                // The lease just won: the gauges first, then
                // giftx_lease_held, so a scrape that shows this process
                // holding the lease already has them.
                if now.holding && !seen.holding
                    && let Err(e) = refresh_ledger_gauges(&state).await
                {
                    tracing::warn!(error = %e, "refreshing the ledger gauges failed");
                }
                record_progress(m, &seen, &now);
                if seen.holding && !now.holding {
                    m.withdraw_ledger_gauges();
                }
                seen = now;
            }
            _ = tick.tick() => {
                if seen.holding {
                    if let Err(e) = refresh_ledger_gauges(&state).await {
                        tracing::warn!(error = %e, "refreshing the ledger gauges failed");
                    }
                } else {
                    m.withdraw_ledger_gauges();
                }
            }
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    m.lease(LEASE_NAME, false);
    m.withdraw_ledger_gauges();
}

/// Counts what the workers did since `before` (their stats are totals).
fn record_progress(m: &Metrics, before: &WorkerStats, now: &WorkerStats) {
    m.lease(LEASE_NAME, now.holding);
    let swept = now.swept.saturating_sub(before.swept);
    if let Ok(n) = u64::try_from(swept)
        && n > 0
    {
        m.sweeper_expired.inc_by(n);
    }
    for (outcome, total) in &now.reconciled {
        let prev = before.reconciled.get(outcome).copied().unwrap_or(0);
        let n = total.saturating_sub(prev);
        if n > 0 {
            m.reconciler_redrives
                .get_or_create(&vec![("outcome", (*outcome).to_owned())])
                .inc_by(n);
        }
    }
}

/// Reads pending and parked exchanges, stock and code counts off the
/// ledger and publishes them.
async fn refresh_ledger_gauges(state: &AppState) -> Result<(), String> {
    let m = global();
    let now = state.clock.now();

    let (mut pending, mut parked) = (0i64, 0i64);
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .ledger
            .list_pending(now, cursor.as_deref(), 500)
            .await
            .map_err(|e| e.to_string())?;
        for rec in &page.items {
            if rec.state == ExchangeState::Pending {
                pending += 1;
                if rec.parked {
                    parked += 1;
                }
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }

    let mut stock: Vec<(String, i64)> = Vec::new();
    for (id, cfg) in &state.provider_set.configs {
        if cfg.kind() != "stock" {
            continue;
        }
        let inv = StockInventory::new(id.clone(), state.provider_set.store.clone());
        let status = inv.status().await.map_err(|e| e.to_string())?;
        stock.push((
            id.to_string(),
            i64::try_from(status.available).unwrap_or(i64::MAX),
        ));
    }

    let mut codes: HashMap<(String, &'static str), i64> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .ledger
            .list_campaigns(cursor.as_deref(), 200)
            .await
            .map_err(|e| e.to_string())?;
        for c in &page.items {
            let n = state
                .ledger
                .counts(&c.spec.id, now)
                .await
                .map_err(|e| e.to_string())?;
            let id = c.spec.id.to_string();
            for (s, v) in [
                ("ACTIVE", n.active),
                ("PENDING", n.pending),
                ("REDEEMED", n.redeemed),
                ("EXPIRED", n.expired),
                ("VOID", n.void),
            ] {
                codes.insert((id.clone(), s), v);
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }

    m.exchanges_pending.get_or_create(&Vec::new()).set(pending);
    m.exchanges_parked.get_or_create(&Vec::new()).set(parked);
    m.stock_available.clear();
    for (p, n) in stock {
        m.stock_available
            .get_or_create(&vec![("provider", p)])
            .set(n);
    }
    // Deleted campaigns drop out; the rest are overwritten.
    m.codes.clear();
    for ((campaign, s), v) in codes {
        m.codes
            .get_or_create(&vec![("campaign", campaign), ("state", s.to_owned())])
            .set(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        assert_eq!(
            respond(&Method::GET, "/metrics", true).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::HEAD, "/metrics", false).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", true).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&Method::GET, "/", true).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let h = |s: &'static str| http::HeaderValue::from_static(s);
        let prometheus = h(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        assert!(wants_openmetrics(Some(&prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some(&h("text/plain"))));
        assert!(!wants_openmetrics(Some(&h("*/*"))));
        assert!(!wants_openmetrics(Some(&h(
            "application/openmetrics-text;q=0"
        ))));
        let ct = |b: bool| {
            respond(&Method::GET, "/metrics", b).headers()[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert!(ct(true).starts_with("application/openmetrics-text"));
        assert!(ct(false).starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn the_classic_format_types_counters_under_their_total_name() {
        let m = Metrics::new();
        m.rpc_finished("s", "m", "OK", Duration::from_millis(1));
        let open = m.render();
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE giftx_rpc_requests counter"));
        assert!(open.contains("# TYPE process_cpu_seconds counter"));
        assert!(open.contains("process_resident_memory_bytes "));
        assert!(open.contains("process_open_fds "));
        assert!(open.contains("process_start_time_seconds "));
        assert!(open.contains(r#"giftx_build_info{version=""#));
        let classic = m.render_classic();
        assert!(!classic.contains("# EOF"), "{classic}");
        assert!(classic.contains("# TYPE giftx_rpc_requests_total counter"));
        assert!(classic.contains("# HELP giftx_rpc_requests_total "));
        assert!(classic.contains("# TYPE process_cpu_seconds_total counter"));
        assert!(classic.contains("# TYPE giftx_build_info gauge"));
        // Every sample belongs to the family typed just before it.
        let mut family = String::new();
        for l in classic.lines() {
            if let Some(r) = l.strip_prefix("# TYPE ") {
                family = r.split(' ').next().unwrap().to_owned();
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(name == family || base == family, "{l} outside {family}");
            }
        }
    }

    #[test]
    fn exported_names_match_the_dashboards_and_alerts() {
        let m = Metrics::new();
        m.rpc_finished(
            "giftx.v1.ExchangeService",
            "Exchange",
            "OK",
            Duration::from_millis(3),
        );
        m.exchange("book-card", "succeeded");
        m.provider_call("book-card", "ok", Duration::from_millis(1));
        m.ledger_script("claim_code", Duration::from_micros(300), true);
        m.lease(LEASE_NAME, true);
        m.sweep_completed();
        m.sweeper_expired.inc();
        m.reconciler_redrives
            .get_or_create(&vec![("outcome", "succeeded".to_owned())])
            .inc();
        m.exchanges_pending.get_or_create(&Vec::new()).set(2);
        let text = m.render();
        for line in [
            r#"giftx_rpc_requests_total{service="giftx.v1.ExchangeService",method="Exchange",code="OK"} 1"#,
            r#"giftx_rpc_duration_seconds_bucket{le="0.005",service="giftx.v1.ExchangeService",method="Exchange"} 1"#,
            r#"giftx_rpc_duration_seconds_count{service="giftx.v1.ExchangeService",method="Exchange"} 1"#,
            r#"giftx_exchanges_total{option="book-card",outcome="succeeded"} 1"#,
            r#"giftx_provider_calls_total{provider="book-card",outcome="ok"} 1"#,
            r#"giftx_provider_call_duration_seconds_count{provider="book-card"} 1"#,
            r#"giftx_ledger_script_duration_seconds_count{script="claim_code"} 1"#,
            r#"giftx_ledger_script_errors_total{script="claim_code"} 1"#,
            r#"giftx_lease_held{lease="expiry-workers"} 1"#,
            r#"giftx_sweeper_expired_total 1"#,
            r#"giftx_reconciler_redrives_total{outcome="succeeded"} 1"#,
            r#"giftx_exchanges_pending 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("giftx_sweeper_last_success_timestamp_seconds "));
        m.withdraw_ledger_gauges();
        assert!(!m.render().contains("giftx_exchanges_pending "));
    }
}
