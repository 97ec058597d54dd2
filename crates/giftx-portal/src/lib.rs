//! `giftx-portal`: the reference apology portal. Server-rendered pages (no
//! JavaScript) over giftxd's ExchangeService, in Japanese and English.
//!
//! The journey: `GET /` (code + login key) → `POST /verify` (checked
//! locally first, then VerifyCode) → options → `POST /choose` → confirm
//! (a fresh request id, sealed into the form) → `POST /exchange` → result.
//! A redeemed code shows its result again; `GET /select` is the select
//! gift's own first page (gift ID + management number).
//!
//! Safety: codes, login keys and addresses travel only in POST bodies,
//! between steps sealed into a hidden field ([`seal`]); never in URLs,
//! cookies or logs. Every POST needs the CSRF token of the browser's
//! nonce cookie. Every response carries the security headers; pages that
//! show a code or a deliverable are `no-store`.

pub mod i18n;
pub mod pages;
pub mod seal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use giftx_core::model::PostalAddress;
use giftx_core::{Code, LoginKey};
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use maud::Markup;
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;

use crate::i18n::Lang;
use crate::pages::{FieldErrors, OptionsView, Problem};
use crate::seal::{Carried, Choice, Keys};

/// The portal's settings.
#[derive(Clone)]
pub struct Settings {
    /// Where giftxd's ExchangeService is (`http://host:port`).
    pub giftx_addr: String,
    /// Mark cookies `Secure` (set when served over HTTPS).
    pub secure_cookies: bool,
    /// Deadline of one call to giftxd.
    pub rpc_timeout: Duration,
    /// The portal's API key (a `portal` key of its tenant), sent as
    /// `authorization: Bearer` on every call (`GIFTX_TOKEN`,
    /// `GIFTX_TOKEN_FILE`).
    pub token: Option<String>,
    /// PEM CA certificate(s) giftxd's TLS certificate is checked against
    /// for an `https://` address (`GIFTX_CA_CERT`); unset: the public web
    /// roots.
    pub ca_cert_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Settings")
            .field("giftx_addr", &self.giftx_addr)
            .field("secure_cookies", &self.secure_cookies)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            giftx_addr: "http://127.0.0.1:50051".to_owned(),
            secure_cookies: false,
            rpc_timeout: Duration::from_secs(15),
            token: None,
            ca_cert_pem: None,
        }
    }
}

/// Why the portal could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `GIFTX_ADDR` is not a URI.
    #[error("GIFTX_ADDR {0:?} is not a valid address (e.g. http://127.0.0.1:50051)")]
    Addr(String),
    /// The CSPRNG failed.
    #[error("{0}")]
    Keys(#[from] seal::SealError),
    /// The TLS settings cannot be used.
    #[error("TLS to giftxd: {0}")]
    Tls(String),
    /// The token cannot be sent as metadata.
    #[error("GIFTX_TOKEN holds characters a header cannot carry")]
    Token,
}

/// Adds the portal's bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

type Client =
    ExchangeServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// The shared state of the handlers.
pub struct Portal {
    client: Client,
    keys: Keys,
    settings: Settings,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The name of the CSRF nonce cookie.
pub const CSRF_COOKIE: &str = "giftx_csrf";
/// The name of the language cookie.
pub const LANG_COOKIE: &str = "giftx_lang";
/// The metadata key carrying the holder's IP address to giftxd.
pub const END_USER_METADATA: &str = "x-giftx-end-user";

const CSS: &str = include_str!("../assets/portal.css");
const FAVICON: &str = include_str!("../assets/favicon.svg");
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'; object-src 'none'";

impl Portal {
    /// A portal over giftxd at `settings.giftx_addr` (connected lazily:
    /// the portal starts even while giftxd is down).
    ///
    /// # Errors
    /// [`StartError`].
    pub fn new(settings: Settings) -> Result<Arc<Portal>, StartError> {
        let uri = if settings.giftx_addr.contains("://") {
            settings.giftx_addr.clone()
        } else {
            format!("http://{}", settings.giftx_addr)
        };
        let tls = uri.starts_with("https://");
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|_| StartError::Addr(settings.giftx_addr.clone()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(settings.rpc_timeout);
        if tls {
            let mut cfg = tonic::transport::ClientTlsConfig::new();
            cfg = match &settings.ca_cert_pem {
                Some(pem) => cfg.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => cfg.with_webpki_roots(),
            };
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| StartError::Tls(e.to_string()))?;
        } else if settings.ca_cert_pem.is_some() {
            return Err(StartError::Tls(
                "GIFTX_CA_CERT is set but GIFTX_ADDR is not https://".into(),
            ));
        }
        let bearer = match &settings.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| StartError::Token)?,
            ),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        Ok(Arc::new(Portal {
            client: ExchangeServiceClient::with_interceptor(channel, Bearer(bearer)),
            keys: Keys::random()?,
            settings,
        }))
    }

    /// The routes, with security headers and request logging.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(start))
            .route("/select", get(select))
            .route("/verify", post(verify))
            .route("/resume", post(resume))
            .route("/choose", post(choose))
            .route("/exchange", post(exchange))
            .route("/lang/{code}", get(set_lang))
            .route("/static/portal.css", get(css))
            .route("/static/favicon.svg", get(favicon))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(not_found)
            .layer(middleware::from_fn(headers_and_log))
            .with_state(Arc::clone(self))
    }
}

// ---- per-request context ----------------------------------------------------

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The language, the browser's CSRF nonce (new if it had none) and the
/// holder's address.
struct Ctx {
    lang: Lang,
    nonce: String,
    new_nonce: bool,
    ip: String,
}

impl Ctx {
    fn new(headers: &HeaderMap, peer: SocketAddr) -> Ctx {
        let lang = Lang::negotiate(
            cookie(headers, LANG_COOKIE),
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        );
        let (nonce, new_nonce) = match cookie(headers, CSRF_COOKIE).filter(|n| seal::nonce_ok(n)) {
            Some(n) => (n.to_owned(), false),
            // A CSPRNG failure leaves an empty nonce: every POST then fails
            // the CSRF check and says so.
            None => (seal::new_nonce().unwrap_or_default(), true),
        };
        Ctx {
            lang,
            nonce,
            new_nonce,
            ip: peer.ip().to_string(),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// Pages that explain a refusal (wrong key, locked, expired, a field to
// fix) answer 200: they are the portal working as meant, and browsers log
// 4xx documents as console errors. Failures of the portal or giftxd keep
// their 5xx/429 status; a refused CSRF token answers 403.

/// How a page may be cached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// Shows a code or a deliverable: never stored.
    NoStore,
    /// Carries only sealed state: kept in the browser's history (so Back
    /// shows the same confirm form, with the same request id), never
    /// shared.
    Private,
}

fn page(p: &Portal, ctx: &Ctx, status: StatusCode, caching: Caching, m: Markup) -> Response {
    let mut r = (status, m.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match caching {
            Caching::NoStore => "no-store",
            Caching::Private => "private, no-cache",
        }),
    );
    if ctx.new_nonce && !ctx.nonce.is_empty() {
        let secure = if p.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        let c = format!(
            "{CSRF_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
            ctx.nonce
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

// ---- forms -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct VerifyForm {
    csrf: String,
    code: String,
    login_key: String,
    flow: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StateForm {
    csrf: String,
    state: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChooseForm {
    csrf: String,
    state: String,
    option_id: String,
    shipping_address: String,
    contact_email: String,
    delete_personal_data: Option<String>,
    stop_mail: Option<String>,
}

// ---- giftxd errors ---------------------------------------------------------------

/// A giftxd refusal, reduced to what the pages need (never its message,
/// which could echo input).
struct RpcError {
    code: tonic::Code,
    reason: String,
    retry: Option<Duration>,
    fields: Vec<String>,
}

impl RpcError {
    fn of(s: &tonic::Status) -> RpcError {
        let d = s.get_error_details();
        RpcError {
            code: s.code(),
            reason: d.error_info().map(|i| i.reason.clone()).unwrap_or_default(),
            retry: d.retry_info().and_then(|r| r.retry_delay),
            fields: d
                .bad_request()
                .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
                .unwrap_or_default(),
        }
    }

    fn log(&self, rpc: &str) {
        tracing::info!(rpc, code = ?self.code, reason = %self.reason, "giftxd refused");
    }

    /// The holder-facing problem.
    fn problem(&self, lang: Lang) -> Problem {
        let t = lang.t();
        let p = |m: &str, todo: &str| Problem {
            message: m.to_owned(),
            todo: todo.to_owned(),
        };
        let wait = |todo: &str| -> String {
            match self.retry {
                Some(d) if d.as_secs() >= 60 => {
                    let until = now_ms() / 1000 + i64::try_from(d.as_secs()).unwrap_or(0);
                    format!("{todo} {} {}", t.retry_after, i18n::datetime(lang, until))
                }
                _ => todo.to_owned(),
            }
        };
        match (self.code, self.reason.as_str()) {
            (_, "LOGIN_KEY_MISMATCH") => p(t.err_mismatch, ""),
            (_, "CODE_LOCKED") => {
                let until = now_ms() / 1000
                    + self
                        .retry
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
                    + 59;
                Problem {
                    message: t.err_locked.to_owned(),
                    todo: format!(
                        "{} {}",
                        t.err_locked_until,
                        i18n::datetime(lang, until - until.rem_euclid(60))
                    ),
                }
            }
            (_, "CODE_EXPIRED") => p(t.err_expired, t.err_expired_todo),
            (_, "CODE_VOID") => p(t.err_void, t.err_void_todo),
            (_, "EXCHANGE_IN_FLIGHT") => p(t.err_in_flight, t.err_in_flight_todo),
            (_, "STOCK_EXHAUSTED") => Problem {
                message: t.err_stock.to_owned(),
                todo: wait(t.err_unavailable_todo),
            },
            (tonic::Code::ResourceExhausted, _) => Problem {
                message: t.err_throttled.to_owned(),
                todo: wait(t.err_throttled_todo),
            },
            (
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled,
                _,
            ) => Problem {
                message: t.err_unavailable.to_owned(),
                todo: wait(t.err_unavailable_todo),
            },
            _ => p(t.err_internal, t.err_internal_todo),
        }
    }

    /// Field errors of an INVALID_ARGUMENT, in the holder's words.
    fn field_errors(&self, lang: Lang) -> FieldErrors {
        let t = lang.t();
        let mut out = FieldErrors::new();
        for f in &self.fields {
            let e = match f.as_str() {
                "code" => ("code", t.err_code_check),
                "login_key" => ("login_key", t.err_key_check),
                "shipping_address" => ("shipping_address", t.err_address),
                "contact_email" => ("contact_email", t.err_email),
                "option_id" => ("option_id", t.err_choose_option),
                _ => continue,
            };
            out.push((e.0, e.1.to_owned()));
        }
        out
    }
}

fn request<T>(ctx: &Ctx, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = ctx.ip.parse() {
        r.metadata_mut().insert(END_USER_METADATA, v);
    }
    r
}

// ---- handlers -------------------------------------------------------------------

async fn start(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let m = pages::start(ctx.lang, &csrf, false, ("", ""), &Vec::new(), None);
    page(&p, &ctx, StatusCode::OK, Caching::Private, m)
}

async fn select(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let m = pages::start(ctx.lang, &csrf, true, ("", ""), &Vec::new(), None);
    page(&p, &ctx, StatusCode::OK, Caching::Private, m)
}

/// The page for a POST whose CSRF token or sealed state is not good.
fn session_expired(p: &Portal, ctx: &Ctx) -> Response {
    let t = ctx.lang.t();
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let pr = Problem {
        message: t.err_session.to_owned(),
        todo: t.err_session_todo.to_owned(),
    };
    tracing::info!("form refused: CSRF token or sealed state does not match");
    let m = pages::problem(ctx.lang, &csrf, &pr, None);
    page(p, ctx, StatusCode::FORBIDDEN, Caching::NoStore, m)
}

fn csrf_ok(p: &Portal, ctx: &Ctx, token: &str) -> bool {
    !ctx.new_nonce && p.keys.csrf_ok(&ctx.nonce, token)
}

async fn verify(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<VerifyForm>,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    if !csrf_ok(&p, &ctx, &f.csrf) {
        return session_expired(&p, &ctx);
    }
    let t = ctx.lang.t();
    let select = f.flow == "select";
    // The check characters catch typos here, before any call.
    let mut errors = FieldErrors::new();
    let bad = |e: giftx_core::error::CodeFormatError, check: &str, format: &str| match e {
        giftx_core::error::CodeFormatError::BadCheckCharacter => check.to_owned(),
        _ => format.to_owned(),
    };
    if f.code.trim().is_empty() {
        errors.push(("code", t.err_required.to_owned()));
    } else if let Err(e) = Code::parse(&f.code) {
        errors.push(("code", bad(e, t.err_code_check, t.err_code_format)));
    }
    if f.login_key.trim().is_empty() {
        errors.push(("login_key", t.err_required.to_owned()));
    } else if let Err(e) = LoginKey::parse(&f.login_key) {
        errors.push(("login_key", bad(e, t.err_key_check, t.err_key_format)));
    }
    if !errors.is_empty() {
        let csrf = p.keys.csrf_token(&ctx.nonce);
        let m = pages::start(
            ctx.lang,
            &csrf,
            select,
            (&f.code, &f.login_key),
            &errors,
            None,
        );
        return page(&p, &ctx, StatusCode::OK, Caching::NoStore, m);
    }
    let carried = Carried {
        code: f.code.trim().to_owned(),
        login_key: f.login_key.trim().to_owned(),
        flow: if select {
            "select".into()
        } else {
            String::new()
        },
        sealed_ms: now_ms(),
        choice: None,
    };
    route_by_status(&p, &ctx, carried, None, FieldErrors::new()).await
}

/// VerifyCode, then the page the code's state calls for: options (with
/// `prefill` and `errors`), its result again, or why it cannot be used.
async fn route_by_status(
    p: &Portal,
    ctx: &Ctx,
    carried: Carried,
    prefill: Option<Choice>,
    errors: FieldErrors,
) -> Response {
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let select = carried.flow == "select";
    let status = match p
        .client
        .clone()
        .verify_code(request(
            ctx,
            pb::VerifyCodeRequest {
                code: carried.code.clone(),
                login_key: carried.login_key.clone(),
            },
        ))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => {
            let e = RpcError::of(&s);
            e.log("VerifyCode");
            let fields = e.field_errors(ctx.lang);
            let pr = (fields.is_empty()).then(|| e.problem(ctx.lang));
            let m = pages::start(
                ctx.lang,
                &csrf,
                select,
                (&carried.code, &carried.login_key),
                &fields,
                pr.as_ref(),
            );
            let code = if e.code == tonic::Code::Unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            return page(p, ctx, code, Caching::NoStore, m);
        }
    };
    let state = pb::CodeState::try_from(status.state).unwrap_or(pb::CodeState::Unspecified);
    let t = ctx.lang.t();
    match state {
        pb::CodeState::Expired | pb::CodeState::Void => {
            let pr = if state == pb::CodeState::Expired {
                Problem {
                    message: t.err_expired.to_owned(),
                    todo: t.err_expired_todo.to_owned(),
                }
            } else {
                Problem {
                    message: t.err_void.to_owned(),
                    todo: t.err_void_todo.to_owned(),
                }
            };
            let m = pages::problem(ctx.lang, &csrf, &pr, None);
            page(p, ctx, StatusCode::OK, Caching::NoStore, m)
        }
        pb::CodeState::Redeemed | pb::CodeState::Pending => {
            let sealed = match p.keys.seal(
                &ctx.nonce,
                &Carried {
                    choice: None,
                    sealed_ms: now_ms(),
                    ..carried
                },
            ) {
                Ok(s) => s,
                Err(_) => return internal(p, ctx),
            };
            match &status.exchange {
                Some(x) => {
                    let m = pages::result(ctx.lang, &csrf, x, &sealed, true, Some(&status));
                    page(p, ctx, StatusCode::OK, Caching::NoStore, m)
                }
                None => internal(p, ctx),
            }
        }
        _ => {
            let sealed = match p.keys.seal(
                &ctx.nonce,
                &Carried {
                    choice: None,
                    sealed_ms: now_ms(),
                    ..carried
                },
            ) {
                Ok(s) => s,
                Err(_) => return internal(p, ctx),
            };
            let v = OptionsView {
                status: &status,
                state: &sealed,
                prefill: prefill.as_ref(),
                problem: None,
            };
            let m = pages::options(ctx.lang, &csrf, &v, &errors);
            page(p, ctx, StatusCode::OK, Caching::Private, m)
        }
    }
}

fn internal(p: &Portal, ctx: &Ctx) -> Response {
    let t = ctx.lang.t();
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let pr = Problem {
        message: t.err_internal.to_owned(),
        todo: t.err_internal_todo.to_owned(),
    };
    let m = pages::problem(ctx.lang, &csrf, &pr, None);
    page(
        p,
        ctx,
        StatusCode::INTERNAL_SERVER_ERROR,
        Caching::NoStore,
        m,
    )
}

/// Opens a POSTed state after the CSRF check.
fn open_state(p: &Portal, ctx: &Ctx, csrf: &str, state: &str) -> Option<Carried> {
    if !csrf_ok(p, ctx, csrf) {
        return None;
    }
    p.keys.open(&ctx.nonce, state, now_ms()).ok()
}

/// Back to the options (from confirm, a failed exchange, or a pending
/// check): the code's state decides the page again.
async fn resume(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<StateForm>,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    let Some(mut carried) = open_state(&p, &ctx, &f.csrf, &f.state) else {
        return session_expired(&p, &ctx);
    };
    let prefill = carried.choice.take();
    route_by_status(&p, &ctx, carried, prefill, FieldErrors::new()).await
}

async fn choose(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<ChooseForm>,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    let Some(mut carried) = open_state(&p, &ctx, &f.csrf, &f.state) else {
        return session_expired(&p, &ctx);
    };
    let t = ctx.lang.t();
    let mut choice = Choice {
        option_id: f.option_id.trim().to_owned(),
        shipping_address: f.shipping_address.trim().to_owned(),
        contact_email: f.contact_email.trim().to_owned(),
        delete_personal_data: f.delete_personal_data.is_some(),
        stop_mail: f.stop_mail.is_some(),
        request_id: String::new(),
    };
    let status = match p
        .client
        .clone()
        .verify_code(request(
            &ctx,
            pb::VerifyCodeRequest {
                code: carried.code.clone(),
                login_key: carried.login_key.clone(),
            },
        ))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => {
            let e = RpcError::of(&s);
            e.log("VerifyCode");
            return problem_page(&p, &ctx, &e, None);
        }
    };
    if status.state != pb::CodeState::Active as i32 {
        carried.choice = None;
        return route_by_status(&p, &ctx, carried, None, FieldErrors::new()).await;
    }
    let mut errors = FieldErrors::new();
    match status
        .options
        .iter()
        .find(|o| o.option_id == choice.option_id)
    {
        None => errors.push(("option_id", t.err_choose_option.to_owned())),
        Some(o) if o.requires_shipping_address => {
            if PostalAddress::parse("shipping_address", &choice.shipping_address).is_err() {
                errors.push(("shipping_address", t.err_address.to_owned()));
            }
        }
        // Only mailed options take an address: forget one typed anyway.
        Some(_) => choice.shipping_address.clear(),
    }
    if !choice.contact_email.is_empty() && !email_ok(&choice.contact_email) {
        errors.push(("contact_email", t.err_email.to_owned()));
    }
    if !errors.is_empty() {
        carried.choice = None;
        return route_by_status(&p, &ctx, carried, Some(choice), errors).await;
    }
    choice.request_id = match seal::new_request_id() {
        Ok(r) => r,
        Err(_) => return internal(&p, &ctx),
    };
    carried.choice = Some(choice);
    carried.sealed_ms = now_ms();
    let Ok(sealed) = p.keys.seal(&ctx.nonce, &carried) else {
        return internal(&p, &ctx);
    };
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let Some(choice) = carried.choice.as_ref() else {
        return internal(&p, &ctx);
    };
    let m = pages::confirm(ctx.lang, &csrf, &status, choice, &sealed);
    page(&p, &ctx, StatusCode::OK, Caching::Private, m)
}

/// A light check; giftxd checks again.
fn email_ok(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.chars().count() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
}

fn problem_page(p: &Portal, ctx: &Ctx, e: &RpcError, retry: Option<(&str, &str)>) -> Response {
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let pr = e.problem(ctx.lang);
    let m = pages::problem(ctx.lang, &csrf, &pr, retry);
    let code = match e.code {
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Internal | tonic::Code::Unknown => StatusCode::BAD_GATEWAY,
        _ => StatusCode::OK,
    };
    page(p, ctx, code, Caching::NoStore, m)
}

async fn exchange(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<StateForm>,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    let Some(mut carried) = open_state(&p, &ctx, &f.csrf, &f.state) else {
        return session_expired(&p, &ctx);
    };
    let Some(choice) = carried.choice.clone() else {
        return route_by_status(&p, &ctx, carried, None, FieldErrors::new()).await;
    };
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let req = pb::ExchangeRequest {
        code: carried.code.clone(),
        login_key: carried.login_key.clone(),
        option_id: choice.option_id.clone(),
        request_id: choice.request_id.clone(),
        contact_email: choice.contact_email.clone(),
        delete_personal_data: choice.delete_personal_data,
        stop_mail: choice.stop_mail,
        shipping_address: choice.shipping_address.clone(),
    };
    match p.client.clone().exchange(request(&ctx, req)).await {
        Ok(x) => {
            let x = x.into_inner();
            tracing::info!(exchange = %x.name, state = x.state, "exchanged");
            // The same sealed state: "check again" repeats this request id.
            let m = pages::result(ctx.lang, &csrf, &x, &f.state, false, None);
            page(&p, &ctx, StatusCode::OK, Caching::NoStore, m)
        }
        Err(s) => {
            let e = RpcError::of(&s);
            e.log("Exchange");
            match e.reason.as_str() {
                // Exchanged before (another tab, another request id): show
                // that result.
                "CODE_ALREADY_REDEEMED" => already(&p, &ctx, &carried).await,
                "EXCHANGE_IN_FLIGHT" => problem_page(&p, &ctx, &e, Some(("/exchange", &f.state))),
                "REQUEST_ID_REUSED" => {
                    carried.choice = None;
                    route_by_status(&p, &ctx, carried, Some(choice), FieldErrors::new()).await
                }
                _ if e.code == tonic::Code::InvalidArgument => {
                    let errors = e.field_errors(ctx.lang);
                    carried.choice = None;
                    route_by_status(&p, &ctx, carried, Some(choice), errors).await
                }
                _ if matches!(
                    e.code,
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::ResourceExhausted
                ) =>
                {
                    problem_page(&p, &ctx, &e, Some(("/exchange", &f.state)))
                }
                _ => problem_page(&p, &ctx, &e, None),
            }
        }
    }
}

/// The code's exchange, shown again.
async fn already(p: &Portal, ctx: &Ctx, carried: &Carried) -> Response {
    let csrf = p.keys.csrf_token(&ctx.nonce);
    match p
        .client
        .clone()
        .get_exchange(request(
            ctx,
            pb::GetExchangeRequest {
                code: carried.code.clone(),
                login_key: carried.login_key.clone(),
            },
        ))
        .await
    {
        Ok(x) => {
            let m = pages::result(ctx.lang, &csrf, &x.into_inner(), "", true, None);
            page(p, ctx, StatusCode::OK, Caching::NoStore, m)
        }
        Err(s) => {
            let e = RpcError::of(&s);
            e.log("GetExchange");
            problem_page(p, ctx, &e, None)
        }
    }
}

async fn set_lang(State(p): State<Arc<Portal>>, Path(code): Path<String>) -> Response {
    let lang = Lang::from_code(&code).unwrap_or(Lang::Ja);
    let secure = if p.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let c = format!(
        "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax{secure}",
        lang.code()
    );
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

async fn not_found(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::new(&headers, peer);
    let t = ctx.lang.t();
    let csrf = p.keys.csrf_token(&ctx.nonce);
    let pr = Problem {
        message: t.err_not_found.to_owned(),
        todo: String::new(),
    };
    let m = pages::problem(ctx.lang, &csrf, &pr, None);
    page(&p, &ctx, StatusCode::NOT_FOUND, Caching::NoStore, m)
}

/// Security headers on every response (`no-store` unless the handler
/// chose), and one log line per request: method, path (never a query,
/// never a body), status, duration.
async fn headers_and_log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // Only known paths are logged: an unknown one could be anything a
    // person pasted into the address bar.
    let path = match req.uri().path() {
        p @ ("/"
        | "/select"
        | "/verify"
        | "/resume"
        | "/choose"
        | "/exchange"
        | "/static/portal.css"
        | "/static/favicon.svg"
        | "/healthz"
        | "/lang/ja"
        | "/lang/en") => p.to_owned(),
        _ => "(other)".to_owned(),
    };
    let started = std::time::Instant::now();
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    tracing::info!(
        %method,
        path = %path,
        status = r.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    r
}
