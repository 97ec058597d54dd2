//! Who is calling, and may they: API keys, roles, tenants, rate limits,
//! end-user velocity and the audit trail.
//!
//! [`AuthLayer`] runs on every request after the per-RPC span
//! ([`crate::telemetry::RpcTraceLayer`]) and before the services:
//! 1. health and reflection pass untouched;
//! 2. the caller is authenticated from `authorization: Bearer <token>`
//!    (UNAUTHENTICATED otherwise); on a giftxd without authentication
//!    every caller is [`Principal::anonymous`], an admin of the default
//!    tenant;
//! 3. its role must allow the method (PERMISSION_DENIED otherwise);
//! 4. its key's rate limit, shared by every giftxd on the ledger, must
//!    have room (RESOURCE_EXHAUSTED `RATE_LIMITED` otherwise);
//! 5. the [`Principal`] goes into the request's extensions, where the
//!    services read it ([`principal`]) to filter by tenant.
//!
//! Calls of operator and admin methods by a known principal are audited
//! (calls without a valid key are counted in
//! `giftx_auth_refused_total` instead: anyone can make them): the layer
//! fills the request's [`AuditSlot`], handlers add the resource they touched
//! ([`note_resource`]), and the span's end writes the event with the
//! call's outcome ([`AuditSlot::finish`]).
//!
//! Tokens are `gx1.<key id>.<secret>`: the id finds the key's record, the
//! secret's keyed hash must match the record's. Only the hash is stored.
//! The bootstrap admin's token (`GIFTX_ADMIN_TOKEN_FILE`) is any text of
//! at least 32 characters; only its keyed hash is kept in memory.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use giftx_core::hash::ct_eq;
use giftx_core::model::TenantId;
use giftx_core::{Clock, KeyRing, Timestamp};
use giftx_ledger::access::{AccessStore, ApiKeyRecord, AuditRecord, Rate, Role, Take};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::SecurityConfig;
use crate::status::ERROR_DOMAIN;

/// The metadata a portal names its end user with (an IP address, a
/// session): failed verifications are counted per end user.
pub const END_USER_HEADER: &str = "x-giftx-end-user";

/// Longest end-user identity kept (longer ones are cut: only a hash is
/// used).
const MAX_END_USER_LEN: usize = 256;

/// Most key records cached at once (misses included): a client spraying
/// made-up key ids cannot grow it without bound.
const MAX_CACHED_KEYS: usize = 10_000;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `apiKeys/{id}`, `bootstrap`, or `anonymous`.
    pub name: String,
    /// Whose resources it reaches (all of them for an admin).
    pub tenant: TenantId,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// The caller on a giftxd without authentication (loopback only): an
    /// admin of the default tenant.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            tenant: TenantId::default_tenant(),
            role: Role::Admin,
        }
    }

    /// May it reach what belongs to `tenant`?
    pub fn reaches(&self, tenant: &TenantId) -> bool {
        self.role == Role::Admin || &self.tenant == tenant
    }

    /// The one tenant it is limited to; `None` for an admin.
    pub fn scope(&self) -> Option<&TenantId> {
        (self.role != Role::Admin).then_some(&self.tenant)
    }
}

/// The principal of a request (set by [`AuthLayer`]).
///
/// # Errors
/// UNAUTHENTICATED when the request did not pass the layer (never in a
/// served giftxd: fail closed all the same).
#[allow(clippy::result_large_err)]
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    req.extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no principal"))
}

/// Records what an audited call touched (e.g. `campaigns/x/batches/b`).
pub fn note_resource<T>(req: &tonic::Request<T>, resource: impl Into<String>) {
    if let Some(slot) = req.extensions().get::<AuditSlot>() {
        slot.lock().resource = resource.into();
    }
}

/// The audit event of one call, filled as the call goes.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<AuditDraft>>);

#[derive(Default)]
struct AuditDraft {
    /// Where to write it; `None`: the call is not audited.
    sink: Option<AuditSink>,
    principal: Option<Arc<Principal>>,
    method: String,
    resource: String,
}

impl AuditSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, AuditDraft> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The call ended with `outcome` (a gRPC code's name): writes its
    /// event if it is audited.
    pub fn finish(&self, outcome: &str, trace_id: String) {
        let d = self.lock();
        let Some(sink) = &d.sink else {
            return;
        };
        let Some(p) = &d.principal else {
            return;
        };
        let (principal, tenant, role) = (p.name.clone(), p.tenant.to_string(), Some(p.role));
        sink.write(AuditRecord {
            // Set by `write`, in the order events enter the stream.
            time: giftx_core::Timestamp(0),
            principal,
            tenant,
            role,
            method: d.method.clone(),
            resource: d.resource.clone(),
            outcome: outcome.to_owned(),
            trace_id,
        });
    }
}

/// Writes audit events to the store in the background, in order, and
/// logs each one.
#[derive(Clone)]
pub struct AuditSink {
    tx: tokio::sync::mpsc::Sender<AuditRecord>,
    clock: Arc<dyn Clock>,
    order: Arc<Mutex<()>>,
}

/// Audit events waiting to be written; when full, events are dropped
/// (counted and logged) rather than slowing calls down.
const AUDIT_QUEUE: usize = 16_384;

impl AuditSink {
    /// Starts the writer over `store`, keeping events `retention` long.
    pub fn start(
        store: Arc<dyn AccessStore>,
        clock: Arc<dyn Clock>,
        retention: Duration,
    ) -> AuditSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<AuditRecord>(AUDIT_QUEUE);
        let writer_clock = clock.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                let keep_after = Timestamp(
                    writer_clock
                        .now()
                        .0
                        .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)),
                );
                let mut tries = 0;
                loop {
                    match store.append_audit(&batch, keep_after).await {
                        Ok(()) => break,
                        Err(e) if tries < 5 => {
                            tries += 1;
                            tracing::warn!(error = %e, "writing audit events failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                        }
                        Err(e) => {
                            crate::metrics::global().audit_dropped(batch.len());
                            tracing::error!(error = %e, events = batch.len(), "audit events could not be written and were dropped (they are in this log)");
                            break;
                        }
                    }
                }
                batch.clear();
            }
        });
        AuditSink {
            tx,
            clock,
            order: Arc::new(Mutex::new(())),
        }
    }

    fn write(&self, mut e: AuditRecord) {
        tracing::info!(
            target: "giftx::audit",
            principal = %e.principal,
            tenant = %e.tenant,
            role = e.role.map_or("", Role::as_str),
            method = %e.method,
            resource = %e.resource,
            outcome = %e.outcome,
            "audit"
        );
        // Time taken and queued under one lock: the stream's order is the
        // order of its times.
        let _order = self
            .order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        e.time = self.clock.now();
        if self.tx.try_send(e).is_err() {
            crate::metrics::global().audit_dropped(1);
            tracing::warn!(
                "audit queue full: an event was dropped from the stream (it is in this log)"
            );
        }
    }
}

/// Why a caller was not authenticated (the ErrorInfo reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization: Bearer` metadata.
    Missing,
    /// Unknown token, or a wrong secret.
    Invalid,
    /// The key was revoked.
    Revoked,
    /// The key expired.
    Expired,
}

impl AuthFailure {
    fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "API_KEY_MISSING",
            AuthFailure::Invalid => "API_KEY_INVALID",
            AuthFailure::Revoked => "API_KEY_REVOKED",
            AuthFailure::Expired => "API_KEY_EXPIRED",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "this giftxd needs an API key: send the metadata `authorization: Bearer <token>` \
                 (or, with mTLS, a client certificate naming the key in a subjectAltName URI \
                 `giftx:apiKeys/<id>`)"
            }
            AuthFailure::Invalid => "the API key is not valid",
            AuthFailure::Revoked => "the API key was revoked",
            AuthFailure::Expired => "the API key has expired",
        }
    }
}

/// A new key's token, shown once.
pub struct NewToken {
    /// The record to store.
    pub record: ApiKeyRecord,
    /// `gx1.<id>.<secret>`.
    pub token: String,
}

/// Authentication, authorization and limits, shared by the layer and the
/// services.
pub struct Auth {
    enabled: bool,
    store: Arc<dyn AccessStore>,
    keys: KeyRing,
    clock: Arc<dyn Clock>,
    bootstrap: Option<(giftx_core::Digest, TenantId)>,
    cache: Mutex<HashMap<String, (Instant, Option<ApiKeyRecord>)>>,
    cache_ttl: Duration,
    portal_rate: Option<Rate>,
    operator_rate: Option<Rate>,
    end_user: Option<(u32, Duration)>,
    audit: Option<AuditSink>,
    leases: Mutex<HashMap<String, Lease>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// How long calls taken from the shared bucket may be spent here.
const LEASE_TTL: Duration = Duration::from_millis(100);

/// Calls of one key taken from the shared bucket, not yet spent.
struct Lease {
    left: u32,
    until: Instant,
}

/// Calls taken at once: about 20 ms of the rate, at most a quarter of
/// the burst, at least one.
fn lease_size(r: Rate) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let by_rate = (r.per_second * 0.02).floor().min(f64::from(u32::MAX)) as u32;
    by_rate.min(r.burst / 4).max(1)
}

fn rate(per_second: f64, burst: u32) -> Option<Rate> {
    (per_second > 0.0).then_some(Rate { per_second, burst })
}

/// What the caller must be to call `path`; `None`: anyone (health,
/// reflection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Open,
    /// ExchangeService.
    Portal,
    /// Issuance, Expiry, Operations, ListAuditEvents.
    Operator,
    /// Key management.
    Admin,
    /// A path no service serves: any authenticated caller gets
    /// UNIMPLEMENTED.
    Unknown,
}

fn needs(path: &str) -> Needs {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    match service {
        s if s.starts_with("grpc.health.") || s.starts_with("grpc.reflection.") => Needs::Open,
        "giftx.v1.ExchangeService" => Needs::Portal,
        "giftx.v1.IssuanceService" | "giftx.v1.ExpiryService" | "giftx.v1.OperationsService" => {
            Needs::Operator
        }
        "giftx.v1.AccessService" if method == "ListAuditEvents" => Needs::Operator,
        "giftx.v1.AccessService" => Needs::Admin,
        _ => Needs::Unknown,
    }
}

fn allowed(role: Role, n: Needs) -> bool {
    match n {
        Needs::Open | Needs::Unknown => true,
        Needs::Portal => matches!(role, Role::Portal | Role::Admin),
        Needs::Operator => matches!(role, Role::Operator | Role::Admin),
        Needs::Admin => role == Role::Admin,
    }
}

fn error(
    code: tonic::Code,
    reason: &str,
    message: impl Into<String>,
    meta: &[(&str, &str)],
    retry: Option<Duration>,
) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(
        reason,
        ERROR_DOMAIN,
        meta.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    );
    if let Some(r) = retry {
        d.set_retry_info(Some(r));
    }
    Status::with_error_details(code, message, d)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl Auth {
    /// Builds it from the configuration: reads the bootstrap token file.
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or is too short.
    pub fn new(
        security: &SecurityConfig,
        store: Arc<dyn AccessStore>,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
    ) -> Result<Auth, String> {
        let bootstrap = match &security.admin_token_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    format!("cannot read GIFTX_ADMIN_TOKEN_FILE {}: {e}", p.display())
                })?;
                let token = text.trim();
                if token.len() < 32 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "GIFTX_ADMIN_TOKEN_FILE {} must hold one token of at least 32 \
                         characters without spaces (e.g. `openssl rand -hex 32`)",
                        p.display()
                    ));
                }
                let tenant = TenantId::parse("GIFTX_ADMIN_TENANT", &security.admin_tenant)
                    .map_err(|v| format!("GIFTX_ADMIN_TENANT {}", v.description))?;
                Some((keys.current().api_token(token.as_bytes()), tenant))
            }
            None => None,
        };
        let enabled = bootstrap.is_some();
        let audit = Some(AuditSink::start(
            store.clone(),
            clock.clone(),
            Duration::from_secs(security.audit_retention_days.saturating_mul(86_400)),
        ));
        Ok(Auth {
            enabled,
            store,
            keys,
            clock,
            bootstrap,
            cache: Mutex::new(HashMap::new()),
            cache_ttl: Duration::from_millis(security.auth_cache_ms),
            portal_rate: rate(security.portal_rps, security.portal_burst),
            operator_rate: rate(security.operator_rps, security.operator_burst),
            end_user: (security.end_user_max_failures > 0).then(|| {
                (
                    security.end_user_max_failures,
                    Duration::from_secs(security.end_user_window_seconds),
                )
            }),
            audit,
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Authentication is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The access store (keys, audit).
    pub fn store(&self) -> &Arc<dyn AccessStore> {
        &self.store
    }

    /// A new key's record and token.
    ///
    /// # Errors
    /// When the system's random source fails.
    pub fn new_key(
        &self,
        tenant: TenantId,
        role: Role,
        expire_time: Option<Timestamp>,
        description: String,
    ) -> Result<NewToken, String> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| e.to_string())?;
        getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
        let id = hex::encode(id);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let digest = hex::encode(self.keys.current().api_token(secret.as_bytes()).0);
        Ok(NewToken {
            token: format!("gx1.{id}.{secret}"),
            record: ApiKeyRecord {
                id,
                tenant,
                role,
                digest,
                create_time: self.clock.now(),
                expire_time,
                revoke_time: None,
                description,
                hmac_key: self.keys.current_id().to_owned(),
            },
        })
    }

    /// Forgets a cached key (after revoking it here).
    pub fn forget(&self, id: &str) {
        self.lock_cache().remove(id);
    }

    fn lock_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<ApiKeyRecord>)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKeyRecord>, Status> {
        if let Some((at, rec)) = self.lock_cache().get(id)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(rec.clone());
        }
        let rec = self.store.get_key(id).await.map_err(|e| {
            tracing::warn!(error = %e, "reading an API key failed");
            Status::unavailable("cannot check the API key now; retry")
        })?;
        let mut cache = self.lock_cache();
        if cache.len() >= MAX_CACHED_KEYS {
            let ttl = self.cache_ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED_KEYS {
                cache.clear();
            }
        }
        cache.insert(id.to_owned(), (Instant::now(), rec.clone()));
        Ok(rec)
    }

    /// The principal of a key whose holder is proven (its secret matched,
    /// or a verified client certificate names it), unless it is revoked
    /// or expired.
    fn usable(&self, rec: ApiKeyRecord) -> Result<Principal, AuthFailure> {
        if rec.revoke_time.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if rec.expire_time.is_some_and(|t| self.clock.now() >= t) {
            return Err(AuthFailure::Expired);
        }
        Ok(Principal {
            name: format!("apiKeys/{}", rec.id),
            tenant: rec.tenant,
            role: rec.role,
        })
    }

    /// The principal of the API key a verified client certificate names
    /// (`giftx:apiKeys/<id>`): the key's tenant and role; its revocation
    /// and expiry hold as for its token.
    async fn authenticate_cert(&self, id: &str) -> Result<Result<Principal, AuthFailure>, Status> {
        Ok(match self.key(id).await? {
            Some(rec) => self.usable(rec),
            None => Err(AuthFailure::Invalid),
        })
    }

    /// The principal a bearer token names.
    async fn authenticate(&self, token: &str) -> Result<Result<Principal, AuthFailure>, Status> {
        if let Some(rest) = token.strip_prefix("gx1.") {
            let Some((id, secret)) = rest.split_once('.') else {
                return Ok(Err(AuthFailure::Invalid));
            };
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Err(AuthFailure::Invalid));
            }
            let Some(rec) = self.key(id).await? else {
                return Ok(Err(AuthFailure::Invalid));
            };
            let Some(hasher) = self.keys.get(&rec.hmac_key) else {
                tracing::error!(
                    key = %rec.id,
                    hmac_key = %rec.hmac_key,
                    "API key hashed with an HMAC key this giftxd does not have; \
                     roll the key ring out to every giftxd"
                );
                return Err(Status::unavailable("cannot check the API key now; retry"));
            };
            let digest = hex::encode(hasher.api_token(secret.as_bytes()).0);
            // The secret first: only its holder learns the key's state.
            if !ct_eq(digest.as_bytes(), rec.digest.as_bytes()) {
                return Ok(Err(AuthFailure::Invalid));
            }
            return Ok(self.usable(rec));
        }
        if let Some((digest, tenant)) = &self.bootstrap
            && ct_eq(
                &self.keys.current().api_token(token.as_bytes()).0,
                &digest.0,
            )
        {
            return Ok(Ok(Principal {
                name: "bootstrap".into(),
                tenant: tenant.clone(),
                role: Role::Admin,
            }));
        }
        Ok(Err(AuthFailure::Invalid))
    }

    /// Checks one request: the principal, or the answer to send instead.
    async fn admit(
        &self,
        headers: &http::HeaderMap,
        cert_key: Option<&str>,
        need: Needs,
        path: &str,
    ) -> Result<Arc<Principal>, (Status, Option<Arc<Principal>>)> {
        if !self.enabled {
            return Ok(Arc::new(Principal::anonymous()));
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        // A bearer token, else the key the client certificate names.
        let found = match (token, cert_key) {
            (Some(token), _) => Some(self.authenticate(token).await),
            (None, Some(id)) => Some(self.authenticate_cert(id).await),
            (None, None) => None,
        };
        let Some(found) = found else {
            let f = AuthFailure::Missing;
            crate::metrics::global().auth_refused(f.reason());
            return Err((
                error(
                    tonic::Code::Unauthenticated,
                    f.reason(),
                    f.message(),
                    &[],
                    None,
                ),
                None,
            ));
        };
        let p = match found {
            Ok(Ok(p)) => Arc::new(p),
            Ok(Err(f)) => {
                crate::metrics::global().auth_refused(f.reason());
                return Err((
                    error(
                        tonic::Code::Unauthenticated,
                        f.reason(),
                        f.message(),
                        &[],
                        None,
                    ),
                    None,
                ));
            }
            Err(s) => return Err((s, None)),
        };
        if !allowed(p.role, need) {
            crate::metrics::global().auth_refused("ROLE_NOT_ALLOWED");
            let role = p.role.as_str();
            return Err((
                error(
                    tonic::Code::PermissionDenied,
                    "ROLE_NOT_ALLOWED",
                    format!("a {role} key may not call {path}"),
                    &[("role", role), ("method", path)],
                    None,
                ),
                Some(p),
            ));
        }
        let limit = match p.role {
            Role::Portal => self.portal_rate,
            Role::Operator | Role::Admin => self.operator_rate,
        };
        if let Some(r) = limit
            && let Err(refusal) = self.take(&p, r).await
        {
            return Err((refusal, Some(p)));
        }
        Ok(p)
    }

    /// Takes one call from `p`'s rate limit. Calls are taken from the
    /// shared bucket in Redis a lease at a time (about 20 ms of the rate,
    /// at most a quarter of the burst), then spent here: the limit holds
    /// in total across replicas (a lease is counted when taken), and a
    /// portal's calls cost a Redis round trip only once per lease. An
    /// unspent lease lapses after [`LEASE_TTL`].
    #[allow(clippy::result_large_err)]
    async fn take(&self, p: &Principal, r: Rate) -> Result<(), Status> {
        {
            let mut leases = self.lock_leases();
            if let Some(l) = leases.get_mut(&p.name)
                && l.left > 0
                && l.until > Instant::now()
            {
                l.left -= 1;
                return Ok(());
            }
        }
        let lease = lease_size(r);
        let mut taken = 0;
        for n in [lease, 1] {
            match self.store.take(&p.name, r, n, now_us()).await {
                Ok(Take::Allowed) => {
                    taken = n;
                    break;
                }
                // A whole lease does not fit: one call may.
                Ok(Take::Refused(_)) if n > 1 => {}
                Ok(Take::Refused(wait)) => {
                    crate::metrics::global().auth_refused("RATE_LIMITED");
                    let wait = wait.max(Duration::from_millis(1));
                    return Err(error(
                        tonic::Code::ResourceExhausted,
                        "RATE_LIMITED",
                        format!(
                            "this key's rate limit ({} calls/s, burst {}) is used up; retry in {} ms",
                            r.per_second,
                            r.burst,
                            wait.as_millis()
                        ),
                        &[("limit_rps", &r.per_second.to_string())],
                        Some(wait),
                    ));
                }
                Err(e) => {
                    // The ledger is down: the call will fail there anyway;
                    // a limit that cannot be read does not refuse.
                    tracing::warn!(error = %e, "rate limit unavailable; call let through");
                    return Ok(());
                }
            }
        }
        if taken > 1 {
            let mut leases = self.lock_leases();
            if leases.len() >= MAX_CACHED_KEYS {
                let now = Instant::now();
                leases.retain(|_, l| l.until > now);
            }
            leases.insert(
                p.name.clone(),
                Lease {
                    left: taken - 1,
                    until: Instant::now() + LEASE_TTL,
                },
            );
        }
        Ok(())
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The end user a portal call names (`x-giftx-end-user`), as the key
    /// its failures are counted under.
    pub fn end_user<T>(&self, p: &Principal, req: &tonic::Request<T>) -> Option<String> {
        self.end_user?;
        let v = req.metadata().get(END_USER_HEADER)?.as_bytes();
        let v = &v[..v.len().min(MAX_END_USER_LEN)];
        let who = String::from_utf8_lossy(v);
        let who = who.trim();
        (!who.is_empty()).then(|| {
            let d = self.keys.current().end_user(p.tenant.as_str(), who);
            hex::encode(&d.0[..16])
        })
    }

    /// Refuses the call when its end user has used up its failures.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED `END_USER_THROTTLED` with RetryInfo.
    #[allow(clippy::result_large_err)]
    pub async fn check_end_user(&self, who: Option<&str>) -> Result<(), Status> {
        let (Some(who), Some((max, window))) = (who, self.end_user) else {
            return Ok(());
        };
        match self.store.failures(who).await {
            Ok(n) if n >= max => {
                crate::metrics::global().auth_refused("END_USER_THROTTLED");
                Err(error(
                    tonic::Code::ResourceExhausted,
                    "END_USER_THROTTLED",
                    format!(
                        "too many failed verifications for this end user ({max} in {} s); try later",
                        window.as_secs()
                    ),
                    &[("max_failures", &max.to_string())],
                    Some(window),
                ))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "end-user failures unavailable; call let through");
                Ok(())
            }
        }
    }

    /// Counts a failed verification of the end user.
    pub async fn end_user_failed(&self, who: Option<&str>) {
        let (Some(who), Some((_, window))) = (who, self.end_user) else {
            return;
        };
        if let Err(e) = self.store.add_failure(who, window).await {
            tracing::warn!(error = %e, "counting an end user's failure failed");
        }
    }
}

/// The tower layer doing [`Auth`]'s checks on every request.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Auth>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let need = needs(&path);
            if need == Needs::Open {
                return inner.call(req).await;
            }
            let slot = req.extensions().get::<AuditSlot>().cloned();
            let audited = matches!(need, Needs::Operator | Needs::Admin);
            let cert_key = req
                .extensions()
                .get::<crate::transport::ConnInfo>()
                .and_then(|c| c.cert_key.clone());
            let admitted = auth
                .admit(req.headers(), cert_key.as_deref(), need, &path)
                .await;
            // Audited: every call of an operator or admin method by a
            // known principal, refused by its role or limit included.
            // Calls without a valid key are counted and logged, not
            // stored: anyone can make them, and each would cost a write.
            let known = match &admitted {
                Ok(p) => Some(p.clone()),
                Err((_, p)) => p.clone(),
            };
            if let (Some(slot), true, Some(p)) = (&slot, audited, known) {
                let mut d = slot.lock();
                d.sink.clone_from(&auth.audit);
                d.method.clone_from(&path);
                d.principal = Some(p);
            }
            match admitted {
                Ok(p) => {
                    req.extensions_mut().insert(p);
                    inner.call(req).await
                }
                Err((status, _)) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_reach_exactly_their_services() {
        let p = "/giftx.v1.ExchangeService/Exchange";
        let o = "/giftx.v1.IssuanceService/VoidBatch";
        let k = "/giftx.v1.AccessService/CreateApiKey";
        let a = "/giftx.v1.AccessService/ListAuditEvents";
        let h = "/grpc.health.v1.Health/Check";
        assert_eq!(needs(h), Needs::Open);
        assert_eq!(
            needs("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Needs::Open
        );
        assert_eq!(needs("/nope/x"), Needs::Unknown);
        let table = [
            (Role::Portal, [true, false, false, false]),
            (Role::Operator, [false, true, false, true]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, want) in table {
            let got = [p, o, k, a].map(|m| allowed(role, needs(m)));
            assert_eq!(got, want, "{role:?}");
        }
        for s in [
            "ExpiryService/ExtendCampaign",
            "OperationsService/ImportStock",
        ] {
            assert_eq!(needs(&format!("/giftx.v1.{s}")), Needs::Operator);
        }
    }

    #[test]
    fn leases_are_a_fiftieth_of_the_rate_within_a_quarter_of_the_burst() {
        let r = |per_second, burst| Rate { per_second, burst };
        assert_eq!(lease_size(r(500.0, 1000)), 10);
        assert_eq!(lease_size(r(5.0, 10)), 1);
        assert_eq!(lease_size(r(50.0, 100)), 1);
        assert_eq!(lease_size(r(1_000_000.0, 1_000_000)), 20_000);
        assert_eq!(lease_size(r(1_000_000.0, 8)), 2);
        assert_eq!(lease_size(r(0.5, 1)), 1);
    }

    #[test]
    fn admins_reach_every_tenant_others_their_own() {
        let a = TenantId::parse("t", "acme").unwrap();
        let b = TenantId::parse("t", "bravo").unwrap();
        let op = Principal {
            name: "apiKeys/x".into(),
            tenant: a.clone(),
            role: Role::Operator,
        };
        assert!(op.reaches(&a));
        assert!(!op.reaches(&b));
        assert_eq!(op.scope(), Some(&a));
        let admin = Principal {
            role: Role::Admin,
            ..op
        };
        assert!(admin.reaches(&b));
        assert_eq!(admin.scope(), None);
    }
}
