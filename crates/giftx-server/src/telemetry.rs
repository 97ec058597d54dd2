//! Logs and per-RPC tracing.
//!
//! - [`init`]: the global subscriber (text by default, JSON with
//!   `GIFTX_LOG_FORMAT=json`; level from `GIFTX_LOG`, else `RUST_LOG`,
//!   else `info`). Called by `main` only; tests install nothing.
//! - [`RpcTraceLayer`]: a tower layer that opens a span per RPC with
//!   `rpc.method` and records the final gRPC status code
//!   (`rpc.grpc.status_code`) when the call ends, streams included.
//!
//! Hook for OTLP export and metrics (a later issue): add a
//! `tracing_opentelemetry` layer to the registry in [`init`], and read
//! counters off the `rpc finished` events or this layer.

use std::io::IsTerminal as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tracing::Span;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber.
///
/// # Errors
/// When the level directive is malformed or a subscriber is already set.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let directive = cfg
        .level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".to_owned());
    let filter =
        EnvFilter::try_new(&directive).map_err(|e| format!("log level {directive:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let res = match cfg.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    res.map_err(|e| e.to_string())
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

/// Records the end of one RPC exactly once.
struct Finish {
    span: Span,
    start: Instant,
    quiet: bool,
    done: bool,
}

impl Finish {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code);
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0;
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let quiet = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        let span = tracing::info_span!(
            "rpc",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.kind = "server",
        );
        let mut finish = Finish {
            span: span.clone(),
            start: Instant::now(),
            quiet,
            done: false,
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
            let (parts, body) = res.into_parts();
            if let Some(code) = grpc_status_of(&parts.headers) {
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
