//! Logs, traces and per-RPC instrumentation.
//!
//! - [`init`]: the global subscriber (text by default, JSON with
//!   `GIFTX_LOG_FORMAT=json`; level from `GIFTX_LOG`, else `RUST_LOG`,
//!   else `info`) and, when `GIFTX_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP/gRPC trace export with the
//!   W3C trace-context propagator. Without an endpoint no OpenTelemetry
//!   layer is installed: tracing costs nothing beyond the log spans. JSON
//!   lines carry the `trace_id` and `span_id` of their span when traces are
//!   on. Called by `main` (inside the runtime: the exporter is a tonic
//!   client); tests install nothing, or call [`init_with`].
//! - [`RpcTraceLayer`]: a tower layer that opens a span per RPC (parented
//!   on the caller's `traceparent`), records the final gRPC status code
//!   (`rpc.grpc.status_code`) when the call ends, streams included, and
//!   counts the call in [`crate::metrics`]. Handlers add `giftx.campaign`
//!   and `giftx.option` with `Span::current().record(..)`; never a code,
//!   login key, email or deliverable.
//! - [`bulk_span`]: bulk ledger operations (VoidBatch, ExtendCampaign,
//!   SweepExpired, the sweeper) run one script per bucket (4,096); they
//!   run under one `ledger.bulk` span with counts as attributes, and the
//!   per-bucket `ledger.script` spans under it are not exported, so one
//!   RPC cannot fill the exporter's queue and push root spans out.
//! - The exporter's queue is guarded: a span that would not fit is dropped
//!   here, counted in `giftx_trace_spans_dropped_total` and logged (a
//!   warning every 10 s at most), instead of vanishing in the SDK.

use std::io::IsTerminal as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use tracing::{Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogFormat};

/// The OTLP endpoint from the environment: `GIFTX_OTLP_ENDPOINT`, else
/// the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; empty counts as unset.
pub fn otlp_endpoint_from_env() -> Option<String> {
    ["GIFTX_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans still
/// buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now (blocks until the exporter answers
    /// or times out). Call it from outside the runtime's worker threads,
    /// or from `spawn_blocking`.
    ///
    /// # Errors
    /// The exporter's error.
    pub fn force_flush(&self) -> Result<(), String> {
        match &self.provider {
            Some(p) => p.force_flush().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Flushes and stops the exporter. Call it while the runtime is still
    /// alive, from outside its worker threads.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("giftxd: flushing traces: {e}");
        }
    }
}

/// Installs the global subscriber, writing logs to stdout and exporting
/// traces to the endpoint from [`otlp_endpoint_from_env`].
///
/// # Errors
/// When the level directive is malformed, the endpoint is unusable, or a
/// subscriber is already set.
pub fn init(cfg: &LogConfig) -> Result<Telemetry, String> {
    init_with(
        cfg,
        otlp_endpoint_from_env().as_deref(),
        std::io::stdout,
        std::io::stdout().is_terminal(),
    )
}

/// As [`init`], with the OTLP endpoint (None: no traces) and the log
/// writer given. Must run inside a Tokio runtime when `otlp` is set.
///
/// # Errors
/// As for [`init`].
pub fn init_with<W>(
    cfg: &LogConfig,
    otlp: Option<&str>,
    writer: W,
    ansi: bool,
) -> Result<Telemetry, String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let directive = cfg
        .level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".to_owned());
    let filter =
        EnvFilter::try_new(&directive).map_err(|e| format!("log level {directive:?}: {e}"))?;
    let provider = match otlp {
        Some(endpoint) => Some(tracer_provider(endpoint, cfg)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("giftxd"))
            .with_level(true)
            .with_filter(DynFilterFn::new(|meta, cx| {
                // Spans under a bulk span are not exported (see bulk_span).
                !meta.is_span()
                    || cx
                        .lookup_current()
                        .is_none_or(|s| !s.scope().any(|a| a.name() == BULK_SPAN))
            }))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let dispatch = Arc::new(OnceLock::new());
    let res = match cfg.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format()
                            .json()
                            .flatten_event(true)
                            .with_current_span(true)
                            .with_span_list(false),
                        dispatch: dispatch.clone(),
                    })
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_writer(writer),
            )
            .try_init(),
    };
    if let Err(e) = res {
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        return Err(e.to_string());
    }
    // The formatter needs the dispatcher to read span contexts; inside an
    // event `dispatcher::get_default` is re-entrant and yields none.
    tracing::dispatcher::get_default(|d| {
        let _ = dispatch.set(d.downgrade());
    });
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(endpoint: &str, cfg: &LogConfig) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let resource = resource(cfg);
    // The SDK's queue size (2,048 unless OTEL_BSP_MAX_QUEUE_SIZE says
    // otherwise), set explicitly so the guard knows it.
    let max_queue = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2_048);
    let queue = Arc::new(ExportQueue {
        queued: AtomicUsize::new(0),
        max: max_queue,
        dropped: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        last_failure: std::sync::Mutex::new(String::new()),
    });
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        queue: queue.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(max_queue)
            .build(),
    )
    .build();
    report_drops(Arc::downgrade(&queue));
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(GuardedProcessor {
            inner: batch,
            queue,
        })
        .build())
}

/// The trace resource: `service.name` (`giftxd`), `service.version` (the
/// crate's), `service.instance.id` (`cfg.instance_id`, else a random UUID)
/// and `deployment.environment.name` (`cfg.environment`, else
/// `unspecified`; also
/// under its older key `deployment.environment`, which many backends still
/// group by). What `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` set
/// wins over these defaults.
fn resource(cfg: &LogConfig) -> opentelemetry_sdk::Resource {
    use opentelemetry::{Key, KeyValue};
    // What the SDK's own detectors read from the environment.
    let detected = opentelemetry_sdk::Resource::builder().build();
    let has = |k: &str| {
        detected
            .get(&Key::new(k.to_owned()))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"))
    };
    let set = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let environment = set(&cfg.environment).unwrap_or_else(|| "unspecified".to_owned());
    let instance = set(&cfg.instance_id).unwrap_or_else(random_uuid);
    let defaults = [
        KeyValue::new("service.name", "giftxd"),
        KeyValue::new("service.version", crate::VERSION),
        KeyValue::new("service.instance.id", instance),
        KeyValue::new("deployment.environment.name", environment.clone()),
        KeyValue::new("deployment.environment", environment),
    ];
    let mut b = opentelemetry_sdk::Resource::builder();
    for kv in defaults {
        if !has(kv.key.as_str()) {
            b = b.with_attribute(kv);
        }
    }
    b.build()
}

/// A random (version 4) UUID, as `service.instance.id` recommends.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No entropy: the pid and the start time still tell processes apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ (u128::from(std::process::id()) << 64)).to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The name of [`bulk_span`]'s span.
pub const BULK_SPAN: &str = "ledger.bulk";

/// The one span of a bulk ledger operation (`op`: `void_batch`,
/// `extend_campaign`, `sweep`): instrument the ledger call with it and
/// record `giftx.buckets` / `giftx.codes` on it. The per-bucket script
/// spans under it are kept out of the export.
pub fn bulk_span(op: &'static str) -> Span {
    tracing::info_span!(
        "ledger.bulk",
        giftx.operation = op,
        giftx.buckets = tracing::field::Empty,
        giftx.codes = tracing::field::Empty,
    )
}

/// Spans handed to the batch processor and not yet taken by its exporter.
#[derive(Debug)]
struct ExportQueue {
    queued: AtomicUsize,
    max: usize,
    dropped: AtomicU64,
    /// Batches the exporter failed to deliver, and the last error.
    failures: AtomicU64,
    last_failure: std::sync::Mutex<String>,
}

impl ExportQueue {
    /// Takes a place in the queue; false (and counted) when it is full.
    fn admit(&self) -> bool {
        let admitted = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().spans_dropped(1);
        }
        admitted
    }

    /// The exporter failed to deliver a batch: counted here and in
    /// `giftx_trace_export_failures_total`, logged by [`report_drops`].
    fn export_failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().trace_export_failed();
        if let Ok(mut last) = self.last_failure.lock() {
            *last = error;
        }
    }

    fn taken(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                Some(q.saturating_sub(n))
            });
    }
}

/// Logs dropped spans and failed exports (within a second, then every
/// 10 s at most), for as long
/// as the queue lives (a span cannot be logged from inside the tracing
/// pipeline that ends it, and a collector that is down would otherwise
/// log once per batch).
fn report_drops(queue: Weak<ExportQueue>) {
    let _ = std::thread::Builder::new()
        .name("giftx-span-drops".into())
        .spawn(move || {
            let (mut dropped_seen, mut failures_seen) = (0, 0);
            // The first trouble is told within a second, then at most
            // once per 10 s.
            let mut last_report: Option<Instant> = None;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let Some(q) = queue.upgrade() else {
                    return;
                };
                if last_report.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10)) {
                    continue;
                }
                let told = (dropped_seen, failures_seen);
                let n = q.dropped.load(Ordering::Relaxed);
                if n > dropped_seen {
                    tracing::warn!(
                        dropped = n - dropped_seen,
                        total = n,
                        queue = q.max,
                        "trace export queue full: spans dropped \
                         (giftx_trace_spans_dropped_total; OTEL_BSP_MAX_QUEUE_SIZE)"
                    );
                    dropped_seen = n;
                }
                let f = q.failures.load(Ordering::Relaxed);
                if f > failures_seen {
                    let last = q.last_failure.lock().map(|e| e.clone()).unwrap_or_default();
                    tracing::warn!(
                        failed_batches = f - failures_seen,
                        total = f,
                        error = %last,
                        "trace export failed: spans lost \
                         (giftx_trace_export_failures_total; is the OTLP collector up?)"
                    );
                    failures_seen = f;
                }
                if (dropped_seen, failures_seen) != told {
                    last_report = Some(Instant::now());
                }
            }
        });
}

/// The batch processor behind a queue guard (see [`ExportQueue`]).
#[derive(Debug)]
struct GuardedProcessor {
    inner: BatchSpanProcessor,
    queue: Arc<ExportQueue>,
}

impl SpanProcessor for GuardedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queue.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, giving queue places back as it takes batches.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queue: Arc<ExportQueue>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        self.queue.taken(batch.len());
        let export = self.inner.export(batch);
        let queue = &self.queue;
        async move {
            let result = export.await;
            if let Err(e) = &result {
                queue.export_failed(e.to_string());
            }
            result
        }
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_export_queue_drops_and_counts() {
        let q = ExportQueue {
            queued: AtomicUsize::new(0),
            max: 2,
            dropped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_failure: std::sync::Mutex::new(String::new()),
        };
        assert!(q.admit());
        assert!(q.admit());
        assert!(!q.admit());
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
        q.taken(2);
        assert!(q.admit());
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
    }
}

/// A JSON event format that adds `trace_id` and `span_id` (of the event's
/// span, as exported) in front of what the wrapped format writes.
struct WithTraceIds<F> {
    inner: F,
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.parent_span().and_then(|span| {
            let dispatch = self.dispatch.get()?.upgrade()?;
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let sep = if rest.trim_start().starts_with('}') {
                    ""
                } else {
                    ","
                };
                write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{sep}{rest}"
                )
            }
            None => writer.write_str(&line),
        }
    }
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Tower layer: one span per RPC, final status recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTraceLayer;

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

/// The service [`RpcTraceLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct RpcTrace<S> {
    inner: S,
}

fn grpc_status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "INVALID_STATUS",
    }
}

/// Services built with tonic-prost's own codec (health, reflection)
/// answer a request that does not parse INTERNAL; giftx's own use
/// `giftx_proto::codec`. Either way it is the caller's mistake: rewritten
/// to INVALID_ARGUMENT (trailers-only answers, which unary calls give).
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap, code: i32) -> i32 {
    let undecodable = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.starts_with("failed to decode Protobuf message")
                || m.starts_with("failed%20to%20decode%20Protobuf%20message")
        });
    if code != 13 || !undecodable {
        return code;
    }
    headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    3
}

/// `("<service>", "<method>")` of a gRPC path `/<service>/<method>`.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""))
}

/// Records the end of one RPC exactly once.
struct Finish {
    span: Span,
    /// `/<service>/<method>`.
    path: String,
    start: Instant,
    quiet: bool,
    done: bool,
    /// Set by [`crate::transport::GrpcGuard`] when the request broke the
    /// protocol: counted as the client's protocol error, not as an RPC.
    fault: Option<crate::transport::ProtocolFault>,
    /// Filled by [`crate::auth::AuthLayer`] for audited calls.
    audit: Option<crate::auth::AuditSlot>,
}

impl Finish {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code);
        if let Some(slot) = &self.audit {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let cx = self.span.context();
            let sc = opentelemetry::trace::TraceContextExt::span(&cx)
                .span_context()
                .clone();
            let trace_id = if sc.is_valid() {
                sc.trace_id().to_string()
            } else {
                String::new()
            };
            slot.finish(name, trace_id);
        }
        let elapsed = self.start.elapsed();
        if let Some(reason) = self.fault.as_ref().and_then(|f| f.reason()) {
            // The specification answers it INTERNAL, but the mistake is
            // the caller's: never a server fault, in metrics or traces.
            crate::metrics::global().protocol_error(reason);
            let _g = self.span.enter();
            tracing::info!(
                grpc.status = name,
                reason,
                "rpc refused: client protocol error"
            );
            return;
        }
        if code == 12 {
            // Paths nobody serves (scanners, typos): one series for all.
            crate::metrics::global().rpc_finished("other", "other", name, elapsed);
        } else {
            let (service, method) = split_path(&self.path);
            crate::metrics::global().rpc_finished(service, method, name, elapsed);
        }
        if matches!(code, 2 | 4 | 13 | 14 | 15) {
            // Server faults (OpenTelemetry's gRPC server conventions).
            self.span.record("otel.status_code", "error");
        }
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let _g = self.span.enter();
        if self.quiet {
            tracing::debug!(grpc.status = name, elapsed_ms, "rpc finished");
        } else if matches!(code, 2 | 13 | 15) {
            tracing::error!(grpc.status = name, elapsed_ms, "rpc finished");
        } else {
            tracing::info!(grpc.status = name, elapsed_ms, "rpc finished");
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // The body went away before its trailers: the client cancelled or
        // the connection broke.
        self.finish(1);
    }
}

impl<S, B> tower::Service<http::Request<B>> for RpcTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let quiet = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let audit = (!quiet).then(|| {
            let slot = crate::auth::AuditSlot::default();
            req.extensions_mut().insert(slot.clone());
            slot
        });
        let (service, method) = split_path(&path);
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            giftx.campaign = tracing::field::Empty,
            giftx.option = tracing::field::Empty,
        );
        // The caller's W3C `traceparent` (gRPC metadata = HTTP/2 headers).
        // Without an exporter the global propagator is a no-op; with the
        // span filtered out (level above info) there is nothing to parent.
        if !span.is_disabled() {
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(req.headers()))
            });
            if parent.span().span_context().is_valid() {
                let _ = span.set_parent(parent);
            }
        }
        let mut finish = Finish {
            span: span.clone(),
            path,
            start: Instant::now(),
            quiet,
            done: false,
            fault: req
                .extensions()
                .get::<crate::transport::ProtocolFault>()
                .cloned(),
            audit,
        };
        // Standard tower idiom: use the clone that was driven ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = {
            let _g = span.enter();
            inner.call(req)
        };
        Box::pin(async move {
            let res = tracing::Instrument::instrument(fut, span).await?;
            let (mut parts, body) = res.into_parts();
            if let Some(code) = grpc_status_of(&parts.headers) {
                let code = undecodable_is_invalid_argument(&mut parts.headers, code);
                // Trailers-only response: the call ended here.
                finish.finish(code);
                return Ok(http::Response::from_parts(parts, body));
            }
            let body = tonic::body::Body::new(TracedBody {
                inner: body,
                finish,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that records the status from its trailers.
struct TracedBody {
    inner: tonic::body::Body,
    finish: Finish,
}

impl Body for TracedBody {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status_of) {
                    this.finish.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish.finish(2),
            Poll::Ready(None) => this.finish.finish(0),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
