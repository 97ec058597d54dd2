//! gRPC plumbing: connecting to giftxd (plaintext or TLS, with an API
//! token on every call) and turning a non-OK `Status` into one line an
//! operator can act on (AIP-193 details decoded, hints for what to do).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use giftx_proto::v1::access_service_client::AccessServiceClient;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_proto::v1::operations_service_client::OperationsServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

use crate::error::{Error, Result};

/// The address giftctl talks to when neither `--addr` nor `GIFTX_ADDR` is set.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// What every client sends its calls over: the channel, with the API token
/// (if any) added to each call.
pub type Transport = InterceptedService<Channel, Bearer>;

/// One connection to giftxd and a client per service over it.
#[derive(Clone, Debug)]
pub struct Clients {
    /// IssuanceService.
    pub issuance: IssuanceServiceClient<Transport>,
    /// ExchangeService.
    pub exchange: ExchangeServiceClient<Transport>,
    /// ExpiryService.
    pub expiry: ExpiryServiceClient<Transport>,
    /// OperationsService (stock, shipments, preferences).
    pub operations: OperationsServiceClient<Transport>,
    /// AccessService (API keys, the audit trail).
    pub access: AccessServiceClient<Transport>,
}

/// An API token (`gx1.<key id>.<secret>`, or the bootstrap admin's). Its
/// `Debug` never shows it, and no error message names it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from text (surrounding whitespace, as in a file ending in a
    /// newline, is dropped). `source` names where it came from, for the
    /// error.
    ///
    /// # Errors
    /// [`Error::Invalid`] when it is empty or holds characters no token has
    /// (spaces, control or non-ASCII characters); the token is not shown.
    pub fn new(text: &str, source: &str) -> Result<Token> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::Invalid(format!("{source}: the token is empty")));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Invalid(format!(
                "{source}: not a token (a token is one word of printable ASCII, \
                 e.g. gx1.<key id>.<secret>)"
            )));
        }
        Ok(Token(t.to_owned()))
    }

    /// Reads a token from a file holding it (trimmed), as a Kubernetes
    /// secret mounts it.
    ///
    /// # Errors
    /// [`Error::Io`] naming `flag` and the file when it cannot be read;
    /// [`Error::Invalid`] when it holds no token.
    pub fn from_file(path: &Path, flag: &str) -> Result<Token> {
        let text = std::fs::read_to_string(path).map_err(Error::io(format!(
            "cannot read the token file {flag} {}",
            path.display()
        )))?;
        Token::new(&text, &format!("{flag} {}", path.display()))
    }

    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a
/// token). The value is marked sensitive, so it is never logged.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The interceptor for `token` (none: calls go without credentials).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the token cannot be sent as metadata.
    pub fn new(token: Option<&Token>) -> Result<Bearer> {
        let Some(token) = token else {
            return Ok(Bearer(None));
        };
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| Error::Invalid("the token cannot be sent as gRPC metadata".to_owned()))?;
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "Bearer(<redacted>)",
            None => "Bearer(none)",
        })
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How to reach giftxd: the global flags `--addr`, `--ca-cert`,
/// `--client-cert`, `--client-key`, `--token` / `--token-file`.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// `http://host:port` (plaintext), `https://host:port` (TLS); a bare
    /// `host:port` means `http://`.
    pub addr: String,
    /// PEM CA certificate(s) to trust for giftxd's certificate instead of
    /// the public web roots (`--ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate chain for mTLS (`--client-cert`).
    pub client_cert: Option<PathBuf>,
    /// Its PEM private key (`--client-key`).
    pub client_key: Option<PathBuf>,
    /// The API token sent with every call.
    pub token: Option<Token>,
}

impl ConnectOptions {
    /// Plaintext or TLS to `addr` with the public web roots, no token.
    pub fn new(addr: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            addr: addr.into(),
            ..ConnectOptions::default()
        }
    }
}

/// Connects to giftxd at `addr` without a token or TLS files; see
/// [`connect_with`].
///
/// # Errors
/// As [`connect_with`].
pub async fn connect(addr: &str) -> Result<Clients> {
    connect_with(&ConnectOptions::new(addr)).await
}

/// A PEM file given by `flag`, checked to hold a block whose label
/// `wanted` accepts (`what` names it in the error).
fn read_pem(path: &Path, flag: &str, what: &str, wanted: impl Fn(&str) -> bool) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).map_err(Error::io(format!("cannot read {flag} {}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(&wanted)
    });
    if !found {
        return Err(Error::Invalid(format!(
            "{flag} {}: holds no PEM {what} (a block starting -----BEGIN {}-----)",
            path.display(),
            if what == "private key" {
                "PRIVATE KEY"
            } else {
                "CERTIFICATE"
            }
        )));
    }
    Ok(bytes)
}

/// `--ca-cert` and friends as given (for messages): which TLS flags are
/// set.
fn tls_flags_given(opts: &ConnectOptions) -> Vec<&'static str> {
    let mut v = Vec::new();
    if opts.ca_cert.is_some() {
        v.push("--ca-cert (GIFTX_CA_CERT)");
    }
    if opts.client_cert.is_some() {
        v.push("--client-cert (GIFTX_CLIENT_CERT)");
    }
    if opts.client_key.is_some() {
        v.push("--client-key (GIFTX_CLIENT_KEY)");
    }
    v
}

/// The TLS configuration `opts` ask for, each file checked so that a bad
/// one is named.
fn tls_config(opts: &ConnectOptions, endpoint: &Endpoint) -> Result<ClientTlsConfig> {
    let check = |config: ClientTlsConfig, what: String| {
        endpoint
            .clone()
            .tls_config(config)
            .map(drop)
            .map_err(|e| Error::Invalid(format!("{what}: {}", error_chain(&e))))
    };
    let mut config = ClientTlsConfig::new().timeout(Duration::from_secs(10));
    match &opts.ca_cert {
        Some(path) => {
            let pem = read_pem(path, "--ca-cert", "certificate", |l| l == "CERTIFICATE")?;
            let ca = Certificate::from_pem(pem);
            check(
                ClientTlsConfig::new().ca_certificate(ca.clone()),
                format!("--ca-cert {}: not a valid PEM certificate", path.display()),
            )?;
            config = config.ca_certificate(ca);
        }
        None => config = config.with_webpki_roots(),
    }
    match (&opts.client_cert, &opts.client_key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let cert_pem = read_pem(cert, "--client-cert", "certificate", |l| l == "CERTIFICATE")?;
            let key_pem = read_pem(key, "--client-key", "private key", |l| {
                l.ends_with("PRIVATE KEY")
            })?;
            let identity = Identity::from_pem(cert_pem, key_pem);
            check(
                ClientTlsConfig::new()
                    .with_webpki_roots()
                    .identity(identity.clone()),
                format!(
                    "--client-cert {} and --client-key {}: not a usable certificate and key",
                    cert.display(),
                    key.display()
                ),
            )?;
            config = config.identity(identity);
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Invalid(
                "--client-cert (GIFTX_CLIENT_CERT) and --client-key (GIFTX_CLIENT_KEY) go \
                 together: give both or neither"
                    .to_owned(),
            ));
        }
    }
    Ok(config)
}

/// Whether `host` (from a URI) is this machine.
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects to giftxd as `opts` say: `http://host:port` (or a bare
/// `host:port`) is plaintext HTTP/2; `https://host:port` is TLS, checking
/// giftxd's certificate against `--ca-cert` (else the public web roots)
/// and the host in the address (a DNS name or an IP address, matched
/// against the certificate's subject alternative names), presenting
/// `--client-cert`/`--client-key` when given (mTLS). TLS files with an
/// `http://` address are refused rather than ignored: the calls would go
/// in the clear. The token, when given, is sent with every call.
///
/// # Errors
/// [`Error::Invalid`] for another scheme, TLS files with `http://`, a
/// client certificate without its key, or an unusable PEM file (named);
/// [`Error::Io`] when a file cannot be read; [`Error::Connect`] when the
/// address is malformed, nothing answers within a few seconds, or the TLS
/// handshake fails (with a hint: which CA to trust, which certificate to
/// present).
pub async fn connect_with(opts: &ConnectOptions) -> Result<Clients> {
    let addr = opts.addr.trim();
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let scheme = uri.split_once("://").map_or("", |(s, _)| s);
    let tls = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        let flags = tls_flags_given(opts);
        if !flags.is_empty() {
            return Err(Error::Invalid(format!(
                "--addr {uri} is plaintext, but {} configure TLS: use an https:// address \
                 to talk TLS, or unset them (giftctl will not send calls in the clear that \
                 were meant for TLS)",
                flags.join(", ")
            )));
        }
        false
    } else {
        return Err(Error::Invalid(format!(
            "--addr {uri}: unsupported scheme {scheme}://; use http://host:port (plaintext) \
             or https://host:port (TLS)"
        )));
    };
    let connect_error = |detail: String| Error::Connect {
        addr: uri.clone(),
        hint: connect_hint(&detail, tls, opts),
        detail,
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| connect_error(error_chain(&e)))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if tls {
        let config = tls_config(opts, &endpoint)?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| connect_error(error_chain(&e)))?;
    } else if opts.token.is_some() && !endpoint.uri().host().is_some_and(is_loopback_host) {
        eprintln!(
            "giftctl: warning: sending the API token to {uri} over plaintext http://; \
             use https:// unless this network is trusted"
        );
    }
    let _ = CONNECTION.set(ConnectionInfo {
        tls,
        client_cert: opts.client_cert.is_some(),
    });
    let bearer = Bearer::new(opts.token.as_ref())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(error_chain(&e)))?;
    let with = |c: Channel| InterceptedService::new(c, bearer.clone());
    Ok(Clients {
        issuance: IssuanceServiceClient::new(with(channel.clone())),
        exchange: ExchangeServiceClient::new(with(channel.clone())),
        expiry: ExpiryServiceClient::new(with(channel.clone())),
        operations: OperationsServiceClient::new(with(channel.clone())),
        access: AccessServiceClient::new(with(channel)),
    })
}

/// What to try when connecting failed with `detail`.
fn connect_hint(detail: &str, tls: bool, opts: &ConnectOptions) -> String {
    if let Some(h) = transport_hint(detail) {
        return match (h, &opts.ca_cert) {
            (TransportHint::UntrustedServer, Some(ca)) => format!(
                "giftxd's certificate is not signed by the CA in --ca-cert {}; pass the CA \
                 that signed giftxd's certificate",
                ca.display()
            ),
            (h, _) => h.text().to_owned(),
        };
    }
    if closed_by_peer(detail) {
        return match (tls, opts.client_cert.is_some()) {
            (false, _) => "the connection was closed: if giftxd serves TLS on this port, \
                           use an https:// address"
                .to_owned(),
            (true, false) => format!(
                "the connection was closed: if giftxd requires a client certificate \
                 (mTLS), {CLIENT_CERT_HOWTO}"
            ),
            (true, true) => TransportHint::ClientCertRefused.text().to_owned(),
        };
    }
    "is giftxd running? set --addr or GIFTX_ADDR".to_owned()
}

/// A transport failure giftctl can say more about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransportHint {
    UntrustedServer,
    WrongName,
    ExpiredServer,
    ClientCertRequired,
    ClientCertRefused,
    NotTls,
}

impl TransportHint {
    fn text(self) -> &'static str {
        match self {
            TransportHint::UntrustedServer => {
                "giftxd's certificate is not signed by a CA giftctl trusts: pass --ca-cert \
                 FILE (GIFTX_CA_CERT) with the CA that signed it"
            }
            TransportHint::WrongName => {
                "giftxd's certificate is not valid for the host in --addr: use a host name \
                 or IP address its certificate names"
            }
            TransportHint::ExpiredServer => {
                "giftxd's certificate has expired or is not yet valid (check the clocks)"
            }
            TransportHint::ClientCertRequired => {
                "giftxd requires a client certificate (mTLS): pass --client-cert and \
                 --client-key (GIFTX_CLIENT_CERT, GIFTX_CLIENT_KEY)"
            }
            TransportHint::ClientCertRefused => {
                "giftxd refused the client certificate: pass with --client-cert one signed \
                 by a CA in giftxd's GIFTX_TLS_CLIENT_CA_FILE"
            }
            TransportHint::NotTls => {
                "giftxd does not seem to speak TLS on this port: use an http:// address, \
                 or start giftxd with GIFTX_TLS_CERT_FILE and GIFTX_TLS_KEY_FILE"
            }
        }
    }
}

/// A hint for a transport error's text (rustls' and hyper's wording).
fn transport_hint(detail: &str) -> Option<TransportHint> {
    let d = detail.to_ascii_lowercase();
    if d.contains("unknownissuer") || d.contains("unknown issuer") || d.contains("badsignature") {
        Some(TransportHint::UntrustedServer)
    } else if d.contains("notvalidforname") || d.contains("not valid for name") {
        Some(TransportHint::WrongName)
    } else if d.contains("invalid peer certificate: expired")
        || d.contains("notvalidyet")
        || d.contains("invalid peer certificate: notvalid")
    {
        Some(TransportHint::ExpiredServer)
    } else if d.contains("certificaterequired") || d.contains("certificate required") {
        Some(TransportHint::ClientCertRequired)
    } else if d.contains("alert")
        && (d.contains("badcertificate")
            || d.contains("unknownca")
            || d.contains("decrypterror")
            || d.contains("certificateunknown"))
    {
        Some(TransportHint::ClientCertRefused)
    } else if d.contains("invalidcontenttype")
        || d.contains("corrupt message")
        || d.contains("invalidmessage")
        || d.contains("wrong version")
    {
        Some(TransportHint::NotTls)
    } else {
        None
    }
}

/// An error and its sources, joined with `: ` on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The canonical name of a gRPC status code, as in `google.rpc.Code`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One line describing a status: code, message, then the AIP-193 details
/// giftx sends (ErrorInfo reason, BadRequest field violations, RetryInfo).
///
/// `INVALID_ARGUMENT: invalid campaign [reason CAMPAIGN_INVALID; campaign.face_value: must be positive]`
pub fn describe_status(status: &tonic::Status) -> String {
    let mut out = String::from(code_name(status.code()));
    let message = one_line(status.message());
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(&message);
    }
    // A transport failure: its causes say more than "transport error".
    for cause in source_chain(status).split(": ") {
        if !cause.is_empty() && !out.contains(cause) {
            out.push_str(": ");
            out.push_str(&one_line(cause));
        }
    }
    let mut details: Vec<String> = Vec::new();
    // Details that do not decode are ignored: the code and message remain.
    let decoded = status.get_error_details();
    if let Some(info) = decoded.error_info() {
        if !info.reason.is_empty() {
            details.push(format!("reason {}", info.reason));
        }
        let mut meta: Vec<_> = info.metadata.iter().collect();
        meta.sort();
        for (k, v) in meta {
            details.push(format!("{k}={}", one_line(v)));
        }
    }
    if let Some(bad) = decoded.bad_request() {
        for v in &bad.field_violations {
            details.push(format!("{}: {}", v.field, one_line(&v.description)));
        }
    }
    if let Some(pre) = decoded.precondition_failure() {
        for v in &pre.violations {
            details.push(format!(
                "{} {}: {}",
                v.r#type,
                v.subject,
                one_line(&v.description)
            ));
        }
    }
    if let Some(retry) = decoded.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        details.push(format!("retry after {:.1}s", delay.as_secs_f64()));
    }
    if let Some(hint) = status_hint(status) {
        details.push(hint);
    } else if status.code() == tonic::Code::Unavailable
        && details.is_empty()
        && message.contains("transport")
    {
        details.push("is giftxd running and reachable?".to_owned());
    }
    if !details.is_empty() {
        out.push_str(" [");
        out.push_str(&details.join("; "));
        out.push(']');
    }
    out
}

/// What the operator can do about `status`, when giftctl knows: for
/// UNAUTHENTICATED which token to pass, for PERMISSION_DENIED which role
/// may call the method, for a failed TLS connection which certificate to
/// trust or present.
pub fn status_hint(status: &tonic::Status) -> Option<String> {
    use tonic::Code as C;
    let info = status.get_details_error_info();
    let reason = info.as_ref().map_or("", |i| i.reason.as_str());
    match (status.code(), reason) {
        (C::Unauthenticated, "API_KEY_MISSING") => Some(
            "pass --token or --token-file, or set GIFTX_TOKEN or GIFTX_TOKEN_FILE"
                .to_owned(),
        ),
        (C::Unauthenticated, "API_KEY_INVALID") => Some(
            "giftxd does not know this token: check --token/--token-file (GIFTX_TOKEN, GIFTX_TOKEN_FILE); an admin creates keys with `giftctl keys create`"
                .to_owned(),
        ),
        (C::Unauthenticated, "API_KEY_REVOKED") => Some(
            "this API key was revoked: ask an admin for a new one (`giftctl keys create`)"
                .to_owned(),
        ),
        (C::Unauthenticated, "API_KEY_EXPIRED") => Some(
            "this API key has expired: ask an admin for a new one (`giftctl keys create`)"
                .to_owned(),
        ),
        (C::Unauthenticated, _) => Some(
            "pass a valid API token with --token or --token-file (GIFTX_TOKEN, GIFTX_TOKEN_FILE)"
                .to_owned(),
        ),
        (C::PermissionDenied, "ROLE_NOT_ALLOWED") => {
            let method = info
                .as_ref()
                .and_then(|i| i.metadata.get("method"))
                .map_or("", String::as_str);
            let roles = roles_for_method(method);
            Some(format!(
                "use a token of {roles} (--token, --token-file, GIFTX_TOKEN, GIFTX_TOKEN_FILE)"
            ))
        }
        (C::Unavailable | C::Unknown | C::Internal | C::Cancelled, _) if info.is_none() => {
            let text = format!("{} {}", status.message(), source_chain(status));
            if let Some(h) = transport_hint(&text) {
                return Some(h.text().to_owned());
            }
            if std::error::Error::source(status).is_none() || !closed_by_peer(&text) {
                return None;
            }
            // The peer closed the connection without saying why (TLS
            // alerts race with the first request): guess from how giftctl
            // connected.
            CONNECTION.get().map(|c| {
                match (c.tls, c.client_cert) {
                    (false, _) => "giftxd closed the connection: if it serves TLS on this port, \
                                   use an https:// address"
                        .to_owned(),
                    (true, false) => format!(
                        "giftxd closed the connection: if it requires a client certificate \
                         (mTLS), {}",
                        CLIENT_CERT_HOWTO
                    ),
                    (true, true) => TransportHint::ClientCertRefused.text().to_owned(),
                }
            })
        }
        _ => None,
    }
}

/// How to present a client certificate.
const CLIENT_CERT_HOWTO: &str =
    "pass --client-cert and --client-key (GIFTX_CLIENT_CERT, GIFTX_CLIENT_KEY)";

/// How giftctl connected, for hints on failures the transport does not
/// explain.
#[derive(Clone, Copy, Debug)]
struct ConnectionInfo {
    tls: bool,
    client_cert: bool,
}

static CONNECTION: std::sync::OnceLock<ConnectionInfo> = std::sync::OnceLock::new();

/// The causes of a status that did not come from giftxd (a transport
/// failure), on one line; empty for giftxd's own statuses.
fn source_chain(status: &tonic::Status) -> String {
    use std::error::Error as _;
    match status.source() {
        Some(s) => error_chain(s),
        None => String::new(),
    }
}

/// Whether a transport failure reads as the peer closing or breaking the
/// connection (not refusing it or timing out).
fn closed_by_peer(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "connection closed",
        "connection was not ready",
        "broken pipe",
        "connection reset",
        "frame with invalid size",
        "h2 protocol error",
        "unexpected eof",
        "operation was canceled",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Which roles may call a full gRPC method (`/giftx.v1.IssuanceService/…`),
/// as access.proto says.
fn roles_for_method(method: &str) -> &'static str {
    let service = method
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    match service {
        "giftx.v1.ExchangeService" => "a portal or admin key",
        "giftx.v1.AccessService" if method.ends_with("/ListAuditEvents") => {
            "an operator or admin key"
        }
        "giftx.v1.AccessService" => "an admin key",
        "giftx.v1.IssuanceService" | "giftx.v1.ExpiryService" | "giftx.v1.OperationsService" => {
            "an operator or admin key"
        }
        _ => "a key whose role may call it",
    }
}

/// A giftx.v1 service and how to get a giftxd that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `giftx.v1.IssuanceService`.
    pub full_name: &'static str,
    /// The `GIFTX_SERVICES` entry that serves it (OperationsService and
    /// AccessService are served wherever issuance is).
    pub giftx_services: &'static str,
}

/// Which service an RPC giftctl calls belongs to.
pub fn service_of(rpc: &str) -> Option<ServiceInfo> {
    let (full_name, giftx_services) = match rpc {
        "CreateCampaign" | "GetCampaign" | "ListCampaigns" | "IssueCodes" | "GetBatch"
        | "VoidBatch" | "GetCampaignStats" => ("giftx.v1.IssuanceService", "issuance"),
        "VerifyCode" | "Exchange" | "GetExchange" => ("giftx.v1.ExchangeService", "exchange"),
        "ExtendCampaign" | "SweepExpired" | "ListPendingExchanges" | "ReconcileExchange" => {
            ("giftx.v1.ExpiryService", "expiry")
        }
        "ImportStock" | "GetStockStatus" | "ListShipments" | "MarkShipped" | "ListPreferences" => {
            ("giftx.v1.OperationsService", "issuance")
        }
        "CreateApiKey" | "ListApiKeys" | "RevokeApiKey" | "ListAuditEvents" => {
            ("giftx.v1.AccessService", "issuance")
        }
        _ => return None,
    };
    Some(ServiceInfo {
        full_name,
        giftx_services,
    })
}

/// The service `rpc` belongs to when `status` says the giftxd does not
/// serve it at all: UNIMPLEMENTED without giftx's error details, which is
/// what the gRPC router answers for a service it does not have (giftxd
/// itself never answers UNIMPLEMENTED for a method it serves).
pub fn service_not_served(rpc: &str, status: &tonic::Status) -> Option<ServiceInfo> {
    if status.code() != tonic::Code::Unimplemented || status.get_details_error_info().is_some() {
        return None;
    }
    service_of(rpc)
}

/// One line for a failed RPC: `GetCampaign failed: NOT_FOUND: …`, or for a
/// service this giftxd does not serve, which service and how to reach one.
pub fn describe_rpc_failure(rpc: &str, status: &tonic::Status) -> String {
    match service_not_served(rpc, status) {
        Some(s) => format!(
            "{rpc} failed: UNIMPLEMENTED: this giftxd does not serve {}; point --addr \
             (GIFTX_ADDR) at a giftxd started with GIFTX_SERVICES including {}",
            s.full_name, s.giftx_services
        ),
        None => format!("{rpc} failed: {}", describe_status(status)),
    }
}

/// The AIP-193 details of a status as JSON: `error_info`,
/// `field_violations`, `precondition_violations`, `retry_delay_seconds`
/// (each only when present).
pub fn status_details_json(status: &tonic::Status) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut out = Map::new();
    let decoded = status.get_error_details();
    if let Some(info) = decoded.error_info() {
        out.insert(
            "error_info".into(),
            json!({"reason": info.reason, "domain": info.domain, "metadata": info.metadata}),
        );
    }
    if let Some(bad) = decoded.bad_request() {
        let v: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        out.insert("field_violations".into(), Value::Array(v));
    }
    if let Some(pre) = decoded.precondition_failure() {
        let v: Vec<Value> = pre
            .violations
            .iter()
            .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
            .collect();
        out.insert("precondition_violations".into(), Value::Array(v));
    }
    if let Some(retry) = decoded.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        out.insert("retry_delay_seconds".into(), json!(delay.as_secs_f64()));
    }
    if let Some(hint) = status_hint(status) {
        out.insert("hint".into(), json!(hint));
    }
    Value::Object(out)
}

/// Whether a failed call may have had an effect or may succeed if sent
/// again unchanged (same request id): the outcome is unknown or the
/// failure transient. INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and
/// the like are answers: sending the same request again gets them again.
pub fn is_retryable(status: &tonic::Status) -> bool {
    use tonic::Code as C;
    matches!(
        status.code(),
        C::Unavailable
            | C::DeadlineExceeded
            | C::Aborted
            | C::ResourceExhausted
            | C::Unknown
            | C::Internal
            | C::Cancelled
    )
}

/// The ErrorInfo reason of a status, if it has one.
pub fn reason(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, FieldViolation};

    #[test]
    fn describes_bad_request_and_error_info_on_one_line() {
        let mut details = ErrorDetails::with_error_info(
            "CAMPAIGN_INVALID",
            "giftx.dev",
            HashMap::from([("campaign".to_owned(), "campaigns/x".to_owned())]),
        );
        details.set_bad_request(vec![
            FieldViolation::new("campaign.face_value", "must be positive"),
            FieldViolation::new("campaign.face_value.currency_code", "unknown\ncurrency"),
        ]);
        let status = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "invalid campaign",
            details,
        );
        assert_eq!(
            describe_status(&status),
            "INVALID_ARGUMENT: invalid campaign [reason CAMPAIGN_INVALID; campaign=campaigns/x; \
             campaign.face_value: must be positive; campaign.face_value.currency_code: unknown currency]"
        );
        assert_eq!(reason(&status).as_deref(), Some("CAMPAIGN_INVALID"));
    }

    #[test]
    fn describes_retry_info_and_plain_statuses() {
        let mut details =
            ErrorDetails::with_error_info("EXCHANGE_IN_FLIGHT", "giftx.dev", HashMap::new());
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let status = tonic::Status::with_error_details(tonic::Code::Aborted, "in flight", details);
        assert_eq!(
            describe_status(&status),
            "ABORTED: in flight [reason EXCHANGE_IN_FLIGHT; retry after 1.5s]"
        );
        let plain = tonic::Status::not_found("campaign not found");
        assert_eq!(describe_status(&plain), "NOT_FOUND: campaign not found");
        assert_eq!(reason(&plain), None);
    }

    #[test]
    fn unimplemented_service_names_the_service_and_how_to_reach_it() {
        let e = Error::rpc("IssueCodes")(tonic::Status::unimplemented(""));
        assert_eq!(
            e.to_string(),
            "IssueCodes failed: UNIMPLEMENTED: this giftxd does not serve \
             giftx.v1.IssuanceService; point --addr (GIFTX_ADDR) at a giftxd started with \
             GIFTX_SERVICES including issuance"
        );
        let j = e.to_json();
        assert_eq!(j["error"]["reason"], "SERVICE_NOT_SERVED");
        assert_eq!(j["error"]["code"], "UNIMPLEMENTED");
        assert_eq!(
            service_of("MarkShipped").map(|s| s.giftx_services),
            Some("issuance")
        );
    }

    #[test]
    fn every_rpc_is_mapped_to_its_service_as_the_proto_says() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(giftx_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                for m in &service.method {
                    let info = service_of(m.name()).unwrap_or_else(|| panic!("{}", m.name()));
                    assert_eq!(info.full_name, full, "{}", m.name());
                    methods += 1;
                }
            }
        }
        assert!(methods >= 19, "{methods}");
    }

    fn denied(code: tonic::Code, reason: &str, meta: &[(&str, &str)]) -> tonic::Status {
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tonic::Status::with_error_details(
            code,
            "refused",
            ErrorDetails::with_error_info(reason, "giftx.dev", meta),
        )
    }

    #[test]
    fn auth_failures_say_what_to_pass() {
        let e = Error::rpc("ListCampaigns")(denied(
            tonic::Code::Unauthenticated,
            "API_KEY_MISSING",
            &[],
        ));
        let text = e.to_string();
        assert!(
            text.starts_with("ListCampaigns failed: UNAUTHENTICATED: refused [reason API_KEY_MISSING; pass --token"),
            "{text}"
        );
        assert!(text.contains("GIFTX_TOKEN"), "{text}");
        assert!(e.to_json()["error"]["details"]["hint"].is_string());
        for reason in ["API_KEY_INVALID", "API_KEY_REVOKED", "API_KEY_EXPIRED"] {
            let s = denied(tonic::Code::Unauthenticated, reason, &[]);
            assert!(status_hint(&s).is_some(), "{reason}");
        }
        let s = denied(
            tonic::Code::PermissionDenied,
            "ROLE_NOT_ALLOWED",
            &[
                ("role", "portal"),
                ("method", "/giftx.v1.IssuanceService/ListCampaigns"),
            ],
        );
        assert!(
            describe_status(&s).contains("use a token of an operator or admin key"),
            "{}",
            describe_status(&s)
        );
        assert_eq!(
            roles_for_method("/giftx.v1.AccessService/CreateApiKey"),
            "an admin key"
        );
        assert_eq!(
            roles_for_method("/giftx.v1.AccessService/ListAuditEvents"),
            "an operator or admin key"
        );
        assert_eq!(
            roles_for_method("/giftx.v1.ExchangeService/Exchange"),
            "a portal or admin key"
        );
        // giftxd's own answers get no transport hint.
        let s = tonic::Status::unavailable("ledger unavailable");
        assert_eq!(status_hint(&s), None);
    }

    #[test]
    fn transport_failures_are_recognised() {
        let cases = [
            (
                "transport error: invalid peer certificate: UnknownIssuer",
                TransportHint::UntrustedServer,
            ),
            (
                "invalid peer certificate: NotValidForName",
                TransportHint::WrongName,
            ),
            (
                "connection error: received fatal alert: CertificateRequired",
                TransportHint::ClientCertRequired,
            ),
            (
                "received fatal alert: UnknownCA",
                TransportHint::ClientCertRefused,
            ),
            (
                "received corrupt message of type InvalidContentType",
                TransportHint::NotTls,
            ),
        ];
        for (text, hint) in cases {
            assert_eq!(transport_hint(text), Some(hint), "{text}");
        }
        assert_eq!(
            transport_hint("tcp connect error: Connection refused"),
            None
        );
        assert!(closed_by_peer(
            "connection error detected: frame with invalid size"
        ));
        assert!(!closed_by_peer("tcp connect error: Connection refused"));
        let opts = ConnectOptions::new("https://127.0.0.1:1");
        assert!(
            connect_hint("tcp connect error: Connection refused", true, &opts)
                .contains("is giftxd running")
        );
        assert!(connect_hint("connection closed", false, &opts).contains("https://"));
        let opts = ConnectOptions {
            ca_cert: Some("ca.pem".into()),
            ..opts
        };
        assert!(connect_hint("UnknownIssuer", true, &opts).contains("--ca-cert ca.pem"));
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = Token::new("  gx1.0123456789abcdef.s3cret \n", "--token").unwrap();
        assert_eq!(t.expose(), "gx1.0123456789abcdef.s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in ["", "  \n", "two words", "caf\u{e9}"] {
            let e = Token::new(bad, "--token (GIFTX_TOKEN)")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--token (GIFTX_TOKEN): "), "{e}");
            if !bad.trim().is_empty() {
                assert!(!e.contains(bad.trim()), "the token is never shown: {e}");
            }
        }
        let mut bearer = Bearer::new(Some(&t)).unwrap();
        assert!(!format!("{bearer:?}").contains("s3cret"));
        let req = bearer.call(tonic::Request::new(())).unwrap();
        let value = req.metadata().get("authorization").unwrap();
        assert_eq!(
            value.to_str().unwrap(),
            "Bearer gx1.0123456789abcdef.s3cret"
        );
        assert!(!format!("{value:?}").contains("s3cret"), "sensitive");
        let mut none = Bearer::new(None).unwrap();
        let req = none.call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn tls_settings_are_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let err = |opts: ConnectOptions| async move {
            connect_with(&opts).await.unwrap_err().to_string()
        };
        // Nothing listens on port 1; every case fails before connecting.
        let e = err(ConnectOptions {
            ca_cert: Some(junk.clone()),
            ..ConnectOptions::new("http://127.0.0.1:1")
        })
        .await;
        assert!(e.contains("plaintext") && e.contains("--ca-cert"), "{e}");
        let e = err(ConnectOptions {
            client_key: Some(junk.clone()),
            ..ConnectOptions::new("127.0.0.1:1")
        })
        .await;
        assert!(e.contains("--client-key"), "{e}");
        let e = err(ConnectOptions {
            ca_cert: Some(junk.clone()),
            ..ConnectOptions::new("https://127.0.0.1:1")
        })
        .await;
        assert!(
            e.contains(&format!(
                "--ca-cert {}: holds no PEM certificate",
                junk.display()
            )),
            "{e}"
        );
        let e = err(ConnectOptions {
            client_cert: Some(junk.clone()),
            ..ConnectOptions::new("https://127.0.0.1:1")
        })
        .await;
        assert!(e.contains("go together"), "{e}");
        let e = err(ConnectOptions {
            ca_cert: Some(dir.path().join("missing.pem")),
            ..ConnectOptions::new("https://127.0.0.1:1")
        })
        .await;
        assert!(
            e.contains("cannot read --ca-cert") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(ConnectOptions::new("grpc://127.0.0.1:1")).await;
        assert!(e.contains("unsupported scheme grpc://"), "{e}");
        // https:// with the web roots and nothing listening: a connect error.
        let e = err(ConnectOptions::new("https://127.0.0.1:1")).await;
        assert!(
            e.starts_with("cannot connect to giftxd at https://127.0.0.1:1"),
            "{e}"
        );
    }

    #[test]
    fn rpc_error_displays_the_rpc_name_first() {
        let e = Error::rpc("GetCampaign")(tonic::Status::not_found("campaign not found"));
        assert_eq!(
            e.to_string(),
            "GetCampaign failed: NOT_FOUND: campaign not found"
        );
    }
}
