//! giftx-server: giftxd's gRPC wiring.
//!
//! - [`run`]: the one entry point for `main` and tests: serves the
//!   configured giftx.v1 services, `grpc.health.v1` and server reflection
//!   (v1 and v1alpha) on one listener until the shutdown future resolves.
//! - [`config`]: TOML file + `GIFTX_*` environment.
//! - [`state`]: [`AppState`], shared by every service.
//! - [`status`]: the one error → `tonic::Status` mapping (AIP-193).
//! - [`convert`]: protobuf ↔ domain, request validation.
//! - [`telemetry`]: logging and per-RPC spans.
//! - [`issuance`], [`exchange`], [`expiry`]: the three services.
//! - [`demo`]: the demo campaigns seeded on the embedded default.

pub mod access;
pub mod auth;
pub mod background;
pub mod config;
pub mod convert;
pub mod demo;
pub mod exchange;
pub mod exchanger;
pub mod expiry;
pub mod issuance;
pub mod metrics;
pub mod operations;
pub mod preferences;
pub mod providers;
pub mod sealer;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod workers;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use giftx_core::{Clock, Hasher, KeyRing, Secret, SystemClock};
use giftx_ledger::{Ledger, LedgerError, MemoryLedger};
use giftx_provider::{MemoryProviderStore, ProviderStore};

use crate::exchanger::Exchanger;
use crate::sealer::Sealer;
use giftx_proto::v1::exchange_service_server::ExchangeServiceServer;
use giftx_proto::v1::expiry_service_server::ExpiryServiceServer;
use giftx_proto::v1::issuance_service_server::IssuanceServiceServer;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

pub use config::{Config, ServiceKind};

/// giftxd's version (the trace resource's `service.version`,
/// `giftx_build_info`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use state::AppState;
pub use status::ApiError;

/// Why giftxd could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A key file is missing, unreadable or too short.
    #[error("{0}")]
    Key(String),
    /// The ledger could not be opened or seeded.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The listener could not be used.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Asked to serve a network without TLS and authentication.
    #[error("{0}")]
    Insecure(String),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<LedgerError> for ServerError {
    fn from(e: LedgerError) -> Self {
        ServerError::Ledger(e.to_string())
    }
}

/// The key a key file holds, read as bytes: without surrounding ASCII
/// whitespace when at least `min` bytes remain (a text key such as
/// `openssl rand -hex 32` with its newline, read so since the first
/// release: the same file keeps hashing the same way), else the file's
/// bytes exactly as they are (a binary key such as
/// `head -c 32 /dev/urandom`, which may begin or end with a byte that
/// looks like whitespace).
fn key_bytes(bytes: Vec<u8>, min: usize) -> Vec<u8> {
    let trimmed = bytes.trim_ascii();
    if trimmed.len() >= min {
        trimmed.to_vec()
    } else {
        bytes
    }
}

fn read_key_file(what: &str, path: &Path) -> Result<Secret, ServerError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ServerError::Key(format!("cannot read {what} {}: {e}", path.display())))?;
    Ok(Secret::new(key_bytes(bytes, giftx_core::hash::MIN_KEY_LEN)))
}

/// The HMAC key ring: `GIFTX_HMAC_KEYRING_FILE`'s keys (current first)
/// and `GIFTX_HMAC_KEY_FILE`'s key as `default` (where the ring has a bare
/// `default` line, else last); a random `default` key on the embedded
/// ledger when neither is set.
fn key_ring(config: &Config) -> Result<KeyRing, ServerError> {
    use giftx_core::hash::DEFAULT_KEY_ID;
    let single = match &config.hmac_key_file {
        Some(path) => {
            let key = read_key_file("GIFTX_HMAC_KEY_FILE", path)?;
            if key.expose().len() < giftx_core::hash::MIN_KEY_LEN {
                return Err(ServerError::Key(format!(
                    "GIFTX_HMAC_KEY_FILE {} holds {} bytes; at least 32 are required (the \
                     file's bytes are the key, e.g. `head -c 32 /dev/urandom`, or a text key \
                     such as `openssl rand -hex 32`, whose surrounding whitespace is ignored)",
                    path.display(),
                    key.expose().len()
                )));
            }
            Some(key)
        }
        None => None,
    };
    let mut keys = Vec::new();
    let mut single = single.map(|k| (DEFAULT_KEY_ID.to_owned(), k));
    if let Some(path) = &config.hmac_keyring_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServerError::Key(format!(
                "cannot read GIFTX_HMAC_KEYRING_FILE {}: {e}",
                path.display()
            ))
        })?;
        let bad = |what: String| {
            ServerError::Key(format!(
                "GIFTX_HMAC_KEYRING_FILE {}: {what}",
                path.display()
            ))
        };
        let lines = KeyRing::parse(&text).map_err(|e| bad(e.to_string()))?;
        if lines.is_empty() {
            return Err(bad(
                "holds no key (expected lines of `<key id> <key as hex>`, e.g. \
                 `k2027a $(openssl rand -hex 32)`)"
                    .into(),
            ));
        }
        for (id, key) in lines {
            match key {
                Some(k) => keys.push((id, k)),
                None if id == DEFAULT_KEY_ID => match single.take() {
                    Some(k) => keys.push(k),
                    None => {
                        return Err(bad(
                            "a bare `default` line names GIFTX_HMAC_KEY_FILE's key, \
                             and GIFTX_HMAC_KEY_FILE is not set (or `default` is listed twice)"
                                .into(),
                        ));
                    }
                },
                None => {
                    return Err(bad(format!(
                        "key {id:?} has no key material; only `default` may stand alone \
                         (it names GIFTX_HMAC_KEY_FILE's key)"
                    )));
                }
            }
        }
    }
    keys.extend(single);
    if keys.is_empty() {
        if !config.embedded_ledger() {
            return Err(ServerError::Key(
                "GIFTX_HMAC_KEY_FILE (or GIFTX_HMAC_KEYRING_FILE) is required with the Redis \
                 ledger (GIFTX_REDIS_URL): codes are stored as keyed hashes, and the key must \
                 outlive this process. Create one with `head -c 32 /dev/urandom > hmac.key`"
                    .into(),
            ));
        }
        tracing::info!(
            "no GIFTX_HMAC_KEY_FILE: using a random HMAC key (fine for the embedded ledger, whose data dies with the process)"
        );
        let h = Hasher::random().map_err(|e| ServerError::Key(format!("random HMAC key: {e}")))?;
        return Ok(KeyRing::single(h));
    }
    let ring = KeyRing::new(keys).map_err(|e| {
        ServerError::Key(format!(
            "HMAC key ring (GIFTX_HMAC_KEYRING_FILE, GIFTX_HMAC_KEY_FILE): {e}"
        ))
    })?;
    tracing::info!(
        current = ring.current_id(),
        keys = ?ring.ids().collect::<Vec<_>>(),
        "HMAC key ring loaded"
    );
    Ok(ring)
}

/// Refuses to start when a key id of the ring names other key material
/// than the ledger recorded for it the first time it was used: every code
/// of its campaigns would then look unknown, and each holder's try would
/// count as a wrong key. A ledger that cannot be asked now is not a
/// reason to stay down: the check is logged and skipped.
async fn check_key_ring(
    keys: &KeyRing,
    access: &dyn giftx_ledger::access::AccessStore,
) -> Result<(), ServerError> {
    let prints: Vec<(String, String)> = keys
        .ids()
        .zip(keys.hashers())
        .map(|(id, h)| (id.to_owned(), hex::encode(h.key_check())))
        .collect();
    match access.check_hmac_keys(&prints).await {
        Ok(differ) if differ.is_empty() => Ok(()),
        Ok(differ) => Err(ServerError::Key(format!(
            "HMAC key id(s) {} name other key material than this ledger has seen under \
             them: codes hashed before would not be found and holders' tries would count \
             as wrong login keys. Restore the original key (GIFTX_HMAC_KEY_FILE is id \
             `default`; GIFTX_HMAC_KEYRING_FILE lines are `<id> <hex>`); a new key needs \
             a new id",
            differ.join(", ")
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the HMAC key ring against the ledger now; starting anyway");
            Ok(())
        }
    }
}

/// The Redis connection options: the CA for `rediss://`
/// (`GIFTX_REDIS_CA_FILE`) and the password (`GIFTX_REDIS_PASSWORD_FILE`).
fn redis_options(config: &Config) -> Result<giftx_ledger::redis::RedisOptions, ServerError> {
    let mut options = giftx_ledger::redis::RedisOptions {
        username: config.redis_username.clone(),
        min_replicas_acked: config.redis_min_replicas_acked,
        ..Default::default()
    };
    if let Some(p) = &config.redis_ca_file {
        let pem = std::fs::read(p).map_err(|e| {
            ServerError::Key(format!(
                "cannot read GIFTX_REDIS_CA_FILE {}: {e}",
                p.display()
            ))
        })?;
        options.tls.ca_pem = Some(pem);
    }
    if let Some(p) = &config.redis_password_file {
        let text = std::fs::read_to_string(p).map_err(|e| {
            ServerError::Key(format!(
                "cannot read GIFTX_REDIS_PASSWORD_FILE {}: {e}",
                p.display()
            ))
        })?;
        // The line, without the newline an editor or `echo` adds.
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            return Err(ServerError::Key(format!(
                "GIFTX_REDIS_PASSWORD_FILE {} is empty",
                p.display()
            )));
        }
        options.password = Some(giftx_ledger::redis::RedisPassword(password.to_owned()));
    }
    Ok(options)
}

/// Builds the shared state from the configuration: reads keys, opens the
/// ledger, seeds the demo campaigns when configured to.
///
/// # Errors
/// [`ServerError`] with a message an operator can act on.
pub async fn build_state(
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<AppState>, ServerError> {
    config.validate()?;
    let keys = key_ring(&config)?;
    let sealer = match &config.deliverable_keys_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                ServerError::Key(format!(
                    "cannot read GIFTX_DELIVERABLE_KEYS_FILE {}: {e} (expected text: one key \
                     per line, 64 hex characters each, e.g. `openssl rand -hex 32`)",
                    p.display()
                ))
            })?;
            Sealer::from_key_file(&text).map_err(|e| {
                ServerError::Key(format!("GIFTX_DELIVERABLE_KEYS_FILE {}: {e}", p.display()))
            })?
        }
        None if !config.embedded_ledger() => {
            return Err(ServerError::Key(
                "GIFTX_DELIVERABLE_KEYS_FILE is required with the Redis ledger: deliverables \
                 are stored encrypted, and the key must outlive this process. Create one with \
                 `openssl rand -hex 32 > deliverable.keys`"
                    .into(),
            ));
        }
        None => Sealer::random().map_err(|e| ServerError::Key(e.to_string()))?,
    };
    let sealer = Arc::new(sealer);
    let ledger_config = config.ledger.ledger_config();
    let (ledger, store, access): (
        Arc<dyn Ledger>,
        Arc<dyn ProviderStore>,
        Arc<dyn giftx_ledger::access::AccessStore>,
    ) = match &config.redis_url {
        None if !config.redis_sentinels.is_empty() => {
            let options = redis_options(&config)?;
            let master = config.redis_sentinel_master.as_deref().unwrap_or_default();
            let redis = giftx_ledger::RedisLedger::connect_sentinel(
                &config.redis_sentinels,
                master,
                ledger_config,
                options,
            )
            .await
            .map_err(|e| {
                ServerError::Ledger(format!(
                    "cannot reach the Redis master {master:?} through the sentinels: {e}"
                ))
            })?;
            let store = Arc::new(redis.provider_store());
            let access = Arc::new(redis.access_store());
            (Arc::new(redis), store, access)
        }
        None => (
            Arc::new(MemoryLedger::new(ledger_config)),
            Arc::new(MemoryProviderStore::new()),
            Arc::new(giftx_ledger::access::MemoryAccessStore::new()),
        ),
        Some(url) => {
            let options = redis_options(&config)?;
            let redis =
                giftx_ledger::RedisLedger::connect_with(url.expose(), ledger_config, options)
                    .await
                    .map_err(|e| ServerError::Ledger(format!("cannot connect to Redis: {e}")))?;
            let store = Arc::new(redis.provider_store());
            let access = Arc::new(redis.access_store());
            (Arc::new(redis), store, access)
        }
    };
    let provider_set = providers::build(
        &config,
        ledger.clone(),
        keys.clone(),
        clock.clone(),
        store,
        sealer.clone(),
    )
    .map_err(|e| ServerError::Config(config::ConfigError::Invalid(e.to_string())))?;
    let instance_id = state::new_instance_id();
    let exchanger = Arc::new(Exchanger::new(
        ledger.clone(),
        keys.clone(),
        clock.clone(),
        provider_set.adapters.clone(),
        sealer,
        config.exchange.settings(),
        instance_id.clone(),
    ));
    check_key_ring(&keys, access.as_ref()).await?;
    let auth = auth::Auth::new(&config.security, access, keys.clone(), clock.clone())
        .map_err(ServerError::Key)?;
    let engine = state::Engine {
        instance_id,
        exchanger,
        provider_set: Arc::new(provider_set),
        auth: Arc::new(auth),
    };
    let state = Arc::new(AppState::new(ledger, keys, clock, config, engine));
    check_campaign_providers(&state).await?;
    if state.config.seeds_demo() {
        let seeded = demo::seed(&state)
            .await
            .map_err(|e| ServerError::Ledger(format!("seeding the demo campaigns: {e}")))?;
        tracing::debug!(campaigns = ?seeded, "demo campaigns ready");
    }
    Ok(state)
}

/// Refuses to serve campaigns whose options name providers this process
/// does not have: their codes could be claimed but never fulfilled.
async fn check_campaign_providers(state: &AppState) -> Result<(), ServerError> {
    let mut cursor: Option<String> = None;
    loop {
        let page = state.ledger.list_campaigns(cursor.as_deref(), 500).await?;
        for c in &page.items {
            for o in &c.spec.options {
                if !state.provider_set.adapters.contains_key(&o.provider) {
                    return Err(ServerError::Config(config::ConfigError::Invalid(format!(
                        "campaign {} option {} uses provider {}, which is not configured \
                         (add [providers.{}])",
                        c.spec.id, o.id, o.provider, o.provider
                    ))));
                }
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(()),
        }
    }
}

/// Reflection lists the served giftx services, health and reflection
/// itself, and can describe all of them, and the `google.rpc` error
/// details (ErrorInfo, BadRequest, RetryInfo, ...) giftx's errors carry in
/// `grpc-status-details-bin`, so reflective clients decode them.
fn reflection_builder(served: &[ServiceKind]) -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(giftx_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for name in grpc_names(served) {
        b = b.with_service_name(name);
    }
    b
}

/// Creates the zero-valued series known at start (see
/// [`metrics::Metrics::init_known`]): the served methods, the configured
/// providers, the options of the campaigns in the ledger, the Redis
/// ledger's scripts.
async fn init_known_metrics(state: &AppState, served: &[ServiceKind]) {
    use prost::Message as _;
    let names = grpc_names(served);
    let set = prost_types::FileDescriptorSet::decode(giftx_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    let mut methods: Vec<(String, String)> = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            if names.contains(&full.as_str()) {
                for m in &service.method {
                    methods.push((full.clone(), m.name().to_owned()));
                }
            }
        }
    }
    let methods: Vec<(&str, &str)> = methods
        .iter()
        .map(|(s, m)| (s.as_str(), m.as_str()))
        .collect();
    let providers: Vec<String> = state
        .provider_set
        .configs
        .keys()
        .map(ToString::to_string)
        .collect();
    let mut options: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        match state.ledger.list_campaigns(cursor.as_deref(), 200).await {
            Ok(page) => {
                for c in &page.items {
                    options.extend(c.spec.options.iter().map(|o| o.id.as_str().to_owned()));
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing campaigns for the metrics' option series failed");
                break;
            }
        }
    }
    options.sort();
    options.dedup();
    let scripts = if state.config.embedded_ledger() {
        Vec::new()
    } else {
        giftx_ledger::redis::script_names()
    };
    metrics::global().init_known(&methods, &providers, &options, &scripts);
}

/// The gRPC names of the served giftx services: OperationsService goes
/// with IssuanceService (both operator-internal; see [`operations`]).
fn grpc_names(served: &[ServiceKind]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = served.iter().map(|s| s.grpc_name()).collect();
    if served.contains(&ServiceKind::Issuance) {
        names.push(operations::SERVICE_NAME);
        // Key management and the audit trail: operator-internal too, so a
        // portal-facing (exchange-only) giftxd exposes ExchangeService only.
        names.push(access::SERVICE_NAME);
    }
    names
}

/// Secure defaults: without TLS and authentication giftxd serves only a
/// loopback address, unless `GIFTX_INSECURE=true` says the network is
/// trusted (logged loudly).
fn check_exposure(
    security: &config::SecurityConfig,
    addr: std::net::SocketAddr,
) -> Result<(), ServerError> {
    let auth = security.auth();
    let tls = security.tls();
    if !auth && addr.ip().is_loopback() {
        tracing::info!(
            "no GIFTX_ADMIN_TOKEN_FILE: serving without authentication, on loopback only"
        );
    }
    if addr.ip().is_loopback() || (auth && tls) {
        return Ok(());
    }
    let missing = match (tls, auth) {
        (false, false) => {
            "TLS (GIFTX_TLS_CERT_FILE, GIFTX_TLS_KEY_FILE) and authentication (GIFTX_ADMIN_TOKEN_FILE)"
        }
        (false, true) => {
            "TLS (GIFTX_TLS_CERT_FILE, GIFTX_TLS_KEY_FILE): tokens would cross the network in clear"
        }
        _ => {
            "authentication (GIFTX_ADMIN_TOKEN_FILE): anyone who reaches the port could mint codes"
        }
    };
    if security.insecure {
        tracing::warn!(
            "INSECURE: serving {addr}, which is not a loopback address, without {missing}, \
             because GIFTX_INSECURE=true. Anyone who reaches this port is trusted."
        );
        return Ok(());
    }
    Err(ServerError::Insecure(format!(
        "refusing to serve {addr} without {missing}. Configure them (see OPERATING.md, \
         \"Trust\"), listen on a loopback address (GIFTX_LISTEN=127.0.0.1:50051), or set \
         GIFTX_INSECURE=true if every client that can reach this address is trusted"
    )))
}

/// Runs giftxd on `listener` until `shutdown` resolves, with the system
/// clock. The one entry point for `main`.
///
/// # Errors
/// [`ServerError`] when it cannot start, or the server fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = build_state(config, Arc::new(SystemClock)).await?;
    serve(state, listener, shutdown).await
}

/// Serves already-built state on `listener` until `shutdown` resolves
/// (tests build the state with a manual clock and call this).
///
/// On shutdown: health goes NOT_SERVING for "" and every service first,
/// then (after the configured drain delay) the listener closes, in-flight
/// calls get up to the grace period to finish, and this returns `Ok`.
///
/// # Errors
/// [`ServerError`] when the server fails.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    let served: Vec<ServiceKind> = state.config.services.clone();
    check_exposure(&state.config.security, addr)?;

    // Metrics first, so a port in use stops start-up instead of surfacing
    // later.
    metrics::install_ledger_observer();
    init_known_metrics(&state, &served).await;
    let metrics_endpoint = match state.config.metrics_listen {
        Some(m) => {
            let l = TcpListener::bind(m).await.map_err(|e| {
                ServerError::Io(std::io::Error::new(
                    e.kind(),
                    format!("metrics listener {m}: {e}"),
                ))
            })?;
            Some(metrics::Endpoint::start(l)?)
        }
        None => None,
    };

    let (mut reporter, health_service) = tonic_health::server::health_reporter();
    for name in grpc_names(&served) {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    // Probes that cannot speak TLS ask a plaintext listener of their own,
    // which serves health only (same statuses).
    let (health_stop, health_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let health_endpoint = match state.config.health_listen {
        Some(h) => {
            let l = TcpListener::bind(h).await.map_err(|e| {
                ServerError::Io(std::io::Error::new(
                    e.kind(),
                    format!("health listener {h}: {e}"),
                ))
            })?;
            let local = l.local_addr()?;
            let server = tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    async {
                        let _ = health_stop_rx.await;
                    },
                );
            Some((local, tokio::spawn(server)))
        }
        None => None,
    };

    let reflection_v1 = reflection_builder(&served).build_v1()?;
    let reflection_v1alpha = reflection_builder(&served).build_v1alpha()?;

    let serves = |k| served.contains(&k);
    let issuance = serves(ServiceKind::Issuance)
        .then(|| IssuanceServiceServer::new(issuance::IssuanceApi::new(state.clone())));
    let operations = serves(ServiceKind::Issuance).then(|| operations::server(state.clone()));
    let exchange = serves(ServiceKind::Exchange)
        .then(|| ExchangeServiceServer::new(exchange::ExchangeApi::new(state.clone())));
    let expiry = serves(ServiceKind::Expiry)
        .then(|| ExpiryServiceServer::new(expiry::ExpiryApi::new(state.clone())));

    let t = &state.config.transport;
    let keepalive = (t.keepalive_interval_seconds > 0)
        .then(|| Duration::from_secs(t.keepalive_interval_seconds));
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(
            keepalive.map(|_| Duration::from_secs(t.keepalive_timeout_seconds)),
        )
        .max_concurrent_streams(Some(t.max_streams_per_connection))
        // Outermost: non-gRPC requests and broken framing are answered
        // before the per-RPC span and metrics (transport.rs).
        .layer(transport::GrpcGuardLayer)
        .layer(telemetry::RpcTraceLayer)
        // Inside the span, so refusals are traced, counted and audited.
        .layer(auth::AuthLayer(state.auth.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(issuance)
        .add_optional_service(operations)
        .add_optional_service(exchange)
        .add_optional_service(expiry)
        .add_optional_service(serves(ServiceKind::Issuance).then(|| access::server(state.clone())));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (tls_stop, tls_stop_rx) = tokio::sync::watch::channel(false);
    let tls = match tls::TlsFiles::from_config(&state.config.security) {
        Some(files) => Some(
            tls::TlsState::start(
                files,
                Duration::from_secs(state.config.security.tls_reload_seconds),
                tls_stop_rx,
            )
            .map_err(ServerError::Tls)?,
        ),
        None => None,
    };
    // Said inside the parentheses: tools read the address after
    // "listening on ".
    let sec = &state.config.security;
    let trust = match (sec.tls(), sec.tls_client_ca_file.is_some(), sec.auth()) {
        (false, _, false) => "",
        (false, _, true) => ", API keys",
        (true, false, false) => ", TLS",
        (true, false, true) => ", TLS, API keys",
        (true, true, false) => ", mTLS",
        (true, true, true) => ", mTLS, API keys",
    };
    // Connection cap, idle timeout, back-off on EMFILE, TLS (transport.rs).
    let incoming = transport::incoming(listener, &state.config.transport, tls);
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

    // The expiry service's background workers (sweeper, reconciler): every
    // instance serving expiry competes for one lease; one works.
    let (workers_stop, workers_stop_rx) = tokio::sync::watch::channel(false);
    let workers = (serves(ServiceKind::Expiry) && state.config.expiry.workers).then(|| {
        let settings = state.config.expiry.settings();
        let every = settings.interval.max(Duration::from_secs(15));
        let (w, stats) = workers::Workers::new(
            state.ledger.clone(),
            state.exchanger.clone(),
            state.clock.clone(),
            settings,
            state.instance_id.clone(),
        );
        tokio::spawn(metrics::run_ledger_gauges(
            state.clone(),
            stats,
            workers_stop_rx.clone(),
            every,
        ));
        tokio::spawn(w.run(workers_stop_rx))
    });

    let ledger_kind = if state.config.embedded_ledger() {
        "embedded ledger"
    } else {
        "Redis ledger"
    };
    let services = served
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if state.config.seeds_demo() {
        tracing::info!(
            "listening on {addr} ({ledger_kind}{trust}, demo campaign {} seeded; services: {services})",
            demo::DEMO_CAMPAIGN
        );
    } else {
        tracing::info!("listening on {addr} ({ledger_kind}{trust}; services: {services})");
    }
    if let Some(m) = &metrics_endpoint {
        tracing::info!("metrics on http://{}/metrics", m.local_addr());
    }
    if let Some((h, _)) = &health_endpoint {
        tracing::info!("health (only) on http://{h}");
    }

    tokio::select! {
        res = &mut server => {
            // The server stopped by itself: an accept-level failure.
            return match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
            };
        }
        () = shutdown => {}
    }

    tracing::info!("shutting down: health NOT_SERVING");
    let _ = workers_stop.send(true);
    if let Some(w) = workers
        && tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .is_err()
    {
        tracing::warn!("expiry workers did not stop within 10s");
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for name in grpc_names(&served) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let drain = Duration::from_secs(state.config.shutdown_drain_seconds);
    if !drain.is_zero() {
        tokio::time::sleep(drain).await;
    }
    let _ = stop_tx.send(());
    // Health watch streams never end by themselves; dropping their senders
    // (after NOT_SERVING was sent) lets them finish so they do not hold the
    // drain up.
    reporter.clear_service_status("").await;
    for name in grpc_names(&served) {
        reporter.clear_service_status(name).await;
    }
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(Ok(res)) => res?,
        Ok(Err(e)) => return Err(ServerError::Io(std::io::Error::other(e.to_string()))),
        Err(_) => {
            tracing::warn!(
                "in-flight calls did not finish within {}s; stopping anyway",
                grace.as_secs()
            );
            server.abort();
        }
    }
    if let Some(m) = metrics_endpoint {
        m.stop().await;
    }
    let _ = tls_stop.send(true);
    let _ = health_stop.send(());
    if let Some((_, h)) = health_endpoint {
        let _ = h.await;
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Vec<u8> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        read_key_file("GIFTX_HMAC_KEY_FILE", f.path())
            .unwrap()
            .expose()
            .to_vec()
    }

    /// Issue 12 item 9: `head -c 32 /dev/urandom > hmac.key` gave a key
    /// that begins or ends with a whitespace byte about 4 % of the time,
    /// and trimming it left 31 bytes: refused. Now such a key is used as
    /// it is, byte for byte, so it hashes the same way on every start.
    #[test]
    fn a_binary_key_with_whitespace_bytes_at_its_ends_is_used_as_is() {
        let mut key: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(128))
            .collect();
        key[0] = b' ';
        key[31] = b'\n';
        let got = read(&key);
        assert_eq!(got, key);
        let once = Hasher::new(Secret::new(got)).unwrap();
        let again = Hasher::new(Secret::new(read(&key))).unwrap();
        let code = giftx_core::Code::generate(giftx_core::Series::from_index(1).unwrap()).unwrap();
        assert_eq!(once.code(&code), again.code(&code));
        assert_eq!(
            once.code(&code),
            Hasher::new(Secret::new(key.clone())).unwrap().code(&code)
        );
        // Every byte value at either end, whitespace or not.
        for b in [b'\t', b'\n', 0x0b, 0x0c, b'\r', b' ', 0, 0xff] {
            let mut k = key.clone();
            k[31] = b;
            assert_eq!(read(&k), k, "last byte {b:#04x}");
            k[0] = b;
            assert_eq!(read(&k), k, "first byte {b:#04x}");
        }
    }

    /// A text key (`openssl rand -hex 32 > hmac.key`) keeps the meaning it
    /// always had: its characters without the newline.
    #[test]
    fn a_text_key_is_read_without_its_newline() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(read(format!("{hex}\n").as_bytes()), hex.as_bytes());
        assert_eq!(read(format!("  {hex}\r\n").as_bytes()), hex.as_bytes());
        // Too short either way: the file as it is, which Hasher refuses.
        assert_eq!(read(b"short\n"), b"short\n");
    }
}
