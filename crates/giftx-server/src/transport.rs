//! The gRPC transport below the services: which connections are accepted,
//! how long they live, and what a request must look like before a service
//! sees it.
//!
//! - [`incoming`]: the accept loop. At most `max_connections` connections
//!   are open at once (each holds a permit; an excess connection is
//!   accepted and closed at once, so its client fails fast instead of
//!   waiting in the backlog); a connection with no request in flight for
//!   `idle_timeout_seconds` is closed; when `accept` fails for lack of
//!   file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop
//!   backs off (5 ms doubling to 1 s) instead of spinning on a listener
//!   that stays readable, and serves again as soon as descriptors free up.
//! - [`GrpcGuardLayer`]: answers what is not a gRPC call at the protocol
//!   level, as the gRPC over HTTP/2 specification prescribes: a method
//!   other than POST gets HTTP 405, a content-type that is not
//!   `application/grpc[+proto]` gets HTTP 415. It checks the
//!   length-prefixed framing of the request body: a message cut short (a
//!   length prefix larger than what follows), a request with no message,
//!   or a compressed-flag other than 0 or 1 is answered INVALID_ARGUMENT;
//!   a compressed flag of 1 without a `grpc-encoding` is answered INTERNAL,
//!   which the gRPC compression specification mandates, but is counted as
//!   a protocol error of the client (`giftx_rpc_protocol_errors_total`),
//!   never as a server fault. A message that does not parse is answered
//!   INVALID_ARGUMENT by the codec (`giftx_proto::codec`); one over the
//!   size limit OUT_OF_RANGE by tonic.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use futures::{Stream, StreamExt as _};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::TransportTunables;
use crate::metrics;

/// The giftx methods whose request is a stream (which may be empty).
const CLIENT_STREAMS: [&str; 1] = ["/giftx.v1.OperationsService/ImportStock"];

/// First pause after an accept failed for lack of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while resources lack.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What one connection shares with the requests it carries.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Requests in flight (their response not yet finished).
    active: AtomicUsize,
    /// Milliseconds after `opened` when the last request finished.
    last_done_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection became idle, if it is.
    fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.opened + Duration::from_millis(self.last_done_ms.load(Ordering::SeqCst)))
    }
}

/// A request in flight on a connection; dropping it ends it.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_done_ms.fetch_max(ms, Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connection information every request carries in its extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Addresses, as tonic's own TCP incoming gives them.
    pub tcp: TcpConnectInfo,
    /// The API key id the verified client certificate names
    /// ([`crate::tls::cert_key_id`]), on an mTLS connection.
    pub cert_key: Option<Arc<str>>,
    activity: Arc<Activity>,
}

/// The bytes of a connection: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! io {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Io::Plain($s) => $e,
            Io::Tls($s) => $e,
        }
    };
}

/// An accepted connection: holds its permit, closes itself when idle.
pub struct Conn {
    tcp: Io,
    info: ConnInfo,
    idle: Option<Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    _permit: OwnedSemaphorePermit,
    _gauge: OpenGauge,
}

/// Counts the connection in `giftx_connections_open` while it lives.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::global().connection_opened();
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::global().connection_closed();
    }
}

impl Conn {
    /// True when the connection has been idle for the idle timeout; else
    /// arms the timer for the earliest moment it could be.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle else {
            return false;
        };
        loop {
            let now = Instant::now();
            let due = match self.info.activity.idle_since() {
                Some(since) if now.duration_since(since) >= idle => return true,
                Some(since) => since + idle,
                // Busy: look again a timeout from now.
                None => now + idle,
            };
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
            if timer.deadline() != due.into() {
                timer.as_mut().reset(due.into());
            }
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = io!(&mut this.tcp, t => Pin::new(t).poll_read(cx, buf));
        match read {
            Poll::Pending => {
                if this.poll_idle(cx) {
                    // End of input: the HTTP/2 connection ends; its client
                    // reconnects when it next needs to.
                    metrics::global().connection_idle_closed();
                    tracing::debug!(peer = ?this.info.tcp.remote_addr(), "closing an idle connection");
                    this.idle = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle connection closed",
                    )));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io!(&mut self.get_mut().tcp, t => Pin::new(t).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(&mut self.get_mut().tcp, t => Pin::new(t).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(&mut self.get_mut().tcp, t => Pin::new(t).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io!(&mut self.get_mut().tcp, t => Pin::new(t).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        io!(&self.tcp, t => t.is_write_vectored())
    }
}

/// True for accept errors that mean "out of descriptors or memory": the
/// listener stays readable, so retrying at once would spin.
fn lacks_resources(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 (Linux).
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
    idle: Option<Duration>,
    backoff: Duration,
    refused_logged: Option<Instant>,
}

/// The accepted connections of `listener`, under the limits of `t`; with
/// `tls`, each after its TLS handshake, which runs in its own task (at
/// most [`crate::tls::HANDSHAKE_TIMEOUT`]) so a slow client never holds
/// up the others.
pub fn incoming(
    listener: TcpListener,
    t: &TransportTunables,
    tls: Option<crate::tls::TlsState>,
) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send + 'static>> {
    let acceptor = Acceptor {
        listener,
        permits: Arc::new(Semaphore::new(t.max_connections)),
        max: t.max_connections,
        idle: (t.idle_timeout_seconds > 0).then(|| Duration::from_secs(t.idle_timeout_seconds)),
        backoff: BACKOFF_MIN,
        refused_logged: None,
    };
    let Some(tls) = tls else {
        return Box::pin(futures::stream::unfold(acceptor, |mut a| async move {
            let conn = a.next().await;
            Some((Ok(conn), a))
        }));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
    tokio::spawn(async move {
        let mut a = acceptor;
        loop {
            let (tcp, conn) = tokio::select! {
                c = a.accept() => c,
                () = tx.closed() => return,
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = conn.info.tcp.remote_addr();
                match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let mut conn = conn;
                        conn.info.cert_key = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::tls::cert_key_id(c))
                            .map(Arc::from);
                        let _ = tx.send(conn.with(Io::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(e)) => {
                        metrics::global().tls_handshake_failed();
                        tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::global().tls_handshake_failed();
                        tracing::debug!(?peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok))
}

/// An accepted connection before its bytes are known to flow (the TLS
/// handshake): everything of a [`Conn`] but its stream.
struct Pending {
    info: ConnInfo,
    idle: Option<Duration>,
    permit: OwnedSemaphorePermit,
    gauge: OpenGauge,
}

impl Pending {
    fn with(self, tcp: Io) -> Conn {
        Conn {
            tcp,
            info: self.info,
            idle: self.idle,
            timer: None,
            _permit: self.permit,
            _gauge: self.gauge,
        }
    }
}

impl Acceptor {
    async fn next(&mut self) -> Conn {
        let (tcp, pending) = self.accept().await;
        pending.with(Io::Plain(tcp))
    }

    async fn accept(&mut self) -> (TcpStream, Pending) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    self.backoff = BACKOFF_MIN;
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        metrics::global().connection_refused();
                        // One warning a minute at most: a flood must not
                        // flood the log too.
                        if self
                            .refused_logged
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                        {
                            self.refused_logged = Some(Instant::now());
                            tracing::warn!(
                                limit = self.max,
                                "connection limit reached: closing new connections \
                                 (GIFTX_MAX_CONNECTIONS; giftx_connections_refused_total)"
                            );
                        }
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let info = ConnInfo {
                        tcp: tcp.connect_info(),
                        cert_key: None,
                        activity: Activity::new(),
                    };
                    return (
                        tcp,
                        Pending {
                            info,
                            idle: self.idle,
                            permit,
                            gauge: OpenGauge::new(),
                        },
                    );
                }
                Err(e) if lacks_resources(&e) => {
                    metrics::global().accept_backoff();
                    if self.backoff == BACKOFF_MIN {
                        tracing::warn!(error = %e, "cannot accept connections: backing off until resources free up");
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => {
                    // The peer gave up before we accepted (ECONNABORTED) and
                    // the like: nothing to wait for, but never spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
            }
        }
    }
}

/// Set when a request broke the gRPC protocol in a way the specification
/// answers with a server-side code (INTERNAL): the call is counted as the
/// client's protocol error, not as an RPC that failed.
#[derive(Clone, Debug, Default)]
pub struct ProtocolFault(Arc<OnceLock<&'static str>>);

impl ProtocolFault {
    /// The reason, when one was set.
    pub fn reason(&self) -> Option<&'static str> {
        self.0.get().copied()
    }

    fn set(&self, reason: &'static str) {
        let _ = self.0.set(reason);
    }
}

/// Tower layer: see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcGuardLayer;

impl<S> tower::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcGuard { inner }
    }
}

/// The service [`GrpcGuardLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct GrpcGuard<S> {
    inner: S,
}

/// An HTTP answer to a request that is not a gRPC call.
fn http_refusal(status: http::StatusCode, text: &'static str) -> http::Response<tonic::body::Body> {
    let mut r = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from_static(text.as_bytes()),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `application/grpc`, `application/grpc+proto`, with or without
/// parameters: what this server decodes.
fn is_grpc_proto(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(v) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/grpc")
        || essence.eq_ignore_ascii_case("application/grpc+proto")
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for GrpcGuard<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let in_flight = req
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.activity.begin());
        if req.method() != http::Method::POST {
            // gRPC is POST only (PROTOCOL-HTTP2: ":method POST").
            metrics::global().protocol_error("method");
            let mut r = http_refusal(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "gRPC calls are HTTP/2 POST requests\n",
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return Box::pin(async move { Ok(r) });
        }
        if !is_grpc_proto(req.headers().get(http::header::CONTENT_TYPE)) {
            // PROTOCOL-HTTP2: a Content-Type that does not begin with
            // application/grpc SHOULD be answered 415.
            metrics::global().protocol_error("content_type");
            return Box::pin(async move {
                Ok(http_refusal(
                    http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type must be application/grpc or application/grpc+proto\n",
                ))
            });
        }
        let fault = ProtocolFault::default();
        let encoded = req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity");
        // Client streams may send no message; every other method takes
        // exactly one.
        let path = req.uri().path();
        let needs_message =
            !path.starts_with("/grpc.reflection.") && !CLIENT_STREAMS.contains(&path);
        req.extensions_mut().insert(fault.clone());
        let req = req.map(|inner| {
            tonic::body::Body::new(FramedBody {
                inner,
                fault,
                encoded,
                needs_message,
                header: [0; 5],
                header_len: 0,
                body_left: 0,
                messages: 0,
                ended: false,
            })
        });
        // Standard tower idiom: use the clone that was driven ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let Some(in_flight) = in_flight else {
                return Ok(res);
            };
            // The request is in flight until its response body ends.
            Ok(res.map(|body| {
                tonic::body::Body::new(HoldBody {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its connection busy until it ends.
struct HoldBody {
    body: tonic::body::Body,
    _in_flight: InFlight,
}

impl Body for HoldBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body checked against gRPC's length-prefixed framing as it
/// streams through (the bytes are passed on unchanged).
struct FramedBody {
    inner: tonic::body::Body,
    fault: ProtocolFault,
    /// A `grpc-encoding` other than identity was sent.
    encoded: bool,
    needs_message: bool,
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
    messages: u64,
    ended: bool,
}

impl FramedBody {
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data.advance(n);
                if self.body_left == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data.advance(n);
            if self.header_len < 5 {
                break;
            }
            self.header_len = 0;
            match self.header[0] {
                0 => {}
                1 if self.encoded => {}
                1 => {
                    self.fault.set("compressed_flag_without_encoding");
                    // grpc compression spec: such a message MUST fail with
                    // INTERNAL, saying why.
                    return Err(Status::internal(
                        "protocol error: a message has its compressed flag set but the request \
                         has no grpc-encoding",
                    ));
                }
                f => {
                    return Err(Status::invalid_argument(format!(
                        "protocol error: compressed flag {f}: only 0 and 1 are defined"
                    )));
                }
            }
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            self.body_left = usize::try_from(len).unwrap_or(usize::MAX);
            if self.body_left == 0 {
                self.messages += 1;
            }
        }
        Ok(())
    }

    fn check_end(&self) -> Result<(), Status> {
        if self.header_len > 0 || self.body_left > 0 {
            return Err(Status::invalid_argument(format!(
                "protocol error: the request ended inside a message ({} bytes of it missing): \
                 its length prefix is larger than what was sent",
                if self.header_len > 0 {
                    5 - self.header_len
                } else {
                    self.body_left
                }
            )));
        }
        if self.needs_message && self.messages == 0 {
            return Err(Status::invalid_argument(
                "protocol error: the request carries no message",
            ));
        }
        Ok(())
    }
}

impl Body for FramedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    if let Err(s) = this.scan(&data) {
                        this.ended = true;
                        return Poll::Ready(Some(Err(s)));
                    }
                } else if frame.is_trailers()
                    && let Err(s) = this.check_end()
                {
                    this.ended = true;
                    return Poll::Ready(Some(Err(s)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                match this.check_end() {
                    Ok(()) => Poll::Ready(None),
                    Err(s) => Poll::Ready(Some(Err(s))),
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> FramedBody {
        FramedBody {
            inner: tonic::body::Body::empty(),
            fault: ProtocolFault::default(),
            encoded: false,
            needs_message: true,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            messages: 0,
            ended: false,
        }
    }

    #[test]
    fn framing_is_followed_across_chunk_boundaries() {
        let mut b = body();
        let msg = [0u8, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0];
        for byte in msg {
            b.scan(&[byte]).unwrap();
        }
        assert_eq!(b.messages, 2);
        b.check_end().unwrap();
    }

    #[test]
    fn a_short_message_an_empty_request_and_bad_flags_are_invalid_argument() {
        let mut b = body();
        b.scan(&[0, 0, 0, 0, 9, 1]).unwrap();
        assert_eq!(
            b.check_end().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            body().check_end().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let e = body().scan(&[7, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut b = body();
        assert_eq!(
            b.scan(&[1, 0, 0, 0, 0]).unwrap_err().code(),
            tonic::Code::Internal
        );
        assert_eq!(b.fault.reason(), Some("compressed_flag_without_encoding"));
    }

    #[test]
    fn every_client_streaming_method_is_listed() {
        // A new `rpc X(stream Y)` in proto/ must be added to CLIENT_STREAMS.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/giftx/v1");
        let mut found = Vec::new();
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let service = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("service "))
                .map(|l| l.trim_end_matches(" {").to_owned())
                .collect::<Vec<_>>();
            for l in text.lines().map(str::trim) {
                if let Some(rest) = l.strip_prefix("rpc ")
                    && rest.split(" returns ").next().unwrap().contains("(stream ")
                {
                    let method = rest.split('(').next().unwrap();
                    assert_eq!(service.len(), 1, "{}", path.display());
                    found.push(format!("/giftx.v1.{}/{method}", service[0]));
                }
            }
        }
        assert_eq!(found, CLIENT_STREAMS.map(String::from).to_vec());
    }

    #[test]
    fn only_grpc_proto_content_types_pass() {
        let ok = |s: &'static str| is_grpc_proto(Some(&http::HeaderValue::from_static(s)));
        assert!(ok("application/grpc"));
        assert!(ok("application/grpc+proto"));
        assert!(ok("application/grpc; charset=utf-8"));
        assert!(!ok("application/json"));
        assert!(!ok("application/grpc+json"));
        assert!(!is_grpc_proto(None));
    }
}
