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

pub mod config;
pub mod convert;
pub mod demo;
pub mod exchange;
pub mod expiry;
pub mod issuance;
pub mod state;
pub mod status;
pub mod telemetry;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use giftx_core::hash::KeyTooShort;
use giftx_core::{Clock, Hasher, Secret, SystemClock};
use giftx_ledger::{Ledger, LedgerError, MemoryLedger};
use giftx_proto::v1::exchange_service_server::ExchangeServiceServer;
use giftx_proto::v1::expiry_service_server::ExpiryServiceServer;
use giftx_proto::v1::issuance_service_server::IssuanceServiceServer;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

pub use config::{Config, ServiceKind};
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
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<LedgerError> for ServerError {
    fn from(e: LedgerError) -> Self {
        ServerError::Ledger(e.to_string())
    }
}

fn read_key_file(what: &str, path: &Path) -> Result<Secret, ServerError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ServerError::Key(format!("cannot read {what} {}: {e}", path.display())))?;
    let trimmed = bytes.trim_ascii();
    Ok(Secret::new(trimmed.to_vec()))
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
    let hasher = match &config.hmac_key_file {
        Some(path) => {
            Hasher::new(read_key_file("GIFTX_HMAC_KEY_FILE", path)?).map_err(|KeyTooShort(n)| {
                ServerError::Key(format!(
                    "GIFTX_HMAC_KEY_FILE {} holds {n} bytes; at least 32 are required",
                    path.display()
                ))
            })?
        }
        None if !config.embedded_ledger() => {
            return Err(ServerError::Key(
                "GIFTX_HMAC_KEY_FILE is required with the Redis ledger (GIFTX_REDIS_URL): \
                 codes are stored as keyed hashes, and the key must outlive this process. \
                 Create one with `head -c 32 /dev/urandom > hmac.key`"
                    .into(),
            ));
        }
        None => {
            tracing::info!(
                "no GIFTX_HMAC_KEY_FILE: using a random HMAC key (fine for the embedded ledger, whose data dies with the process)"
            );
            Hasher::random().map_err(|e| ServerError::Key(format!("random HMAC key: {e}")))?
        }
    };
    let deliverable_keys = match &config.deliverable_keys_file {
        Some(p) => Some(read_key_file("GIFTX_DELIVERABLE_KEYS_FILE", p)?),
        None => None,
    };
    let ledger_config = config.ledger.ledger_config();
    let ledger: Arc<dyn Ledger> = match &config.redis_url {
        None => Arc::new(MemoryLedger::new(ledger_config)),
        Some(url) => open_redis(url.expose(), ledger_config).await?,
    };
    let mut state = AppState::new(ledger, hasher, clock, config);
    state.deliverable_keys = deliverable_keys;
    let state = Arc::new(state);
    if state.config.seeds_demo() {
        let seeded = demo::seed(&state)
            .await
            .map_err(|e| ServerError::Ledger(format!("seeding the demo campaigns: {e}")))?;
        tracing::debug!(campaigns = ?seeded, "demo campaigns ready");
    }
    Ok(state)
}

async fn open_redis(
    url: &str,
    config: giftx_ledger::LedgerConfig,
) -> Result<Arc<dyn Ledger>, ServerError> {
    let ledger = giftx_ledger::RedisLedger::connect(url, config)
        .await
        .map_err(|e| ServerError::Ledger(format!("cannot connect to Redis: {e}")))?;
    Ok(Arc::new(ledger))
}

/// Reflection lists the served giftx services, health and reflection
/// itself, and can describe all of them.
fn reflection_builder(served: &[ServiceKind]) -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(giftx_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for s in served {
        b = b.with_service_name(s.grpc_name());
    }
    b
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

    let (mut reporter, health_service) = tonic_health::server::health_reporter();
    for s in &served {
        reporter
            .set_service_status(s.grpc_name(), ServingStatus::Serving)
            .await;
    }

    let reflection_v1 = reflection_builder(&served).build_v1()?;
    let reflection_v1alpha = reflection_builder(&served).build_v1alpha()?;

    let serves = |k| served.contains(&k);
    let issuance = serves(ServiceKind::Issuance)
        .then(|| IssuanceServiceServer::new(issuance::IssuanceApi::new(state.clone())));
    let exchange = serves(ServiceKind::Exchange)
        .then(|| ExchangeServiceServer::new(exchange::ExchangeApi::new(state.clone())));
    let expiry = serves(ServiceKind::Expiry)
        .then(|| ExpiryServiceServer::new(expiry::ExpiryApi::new(state.clone())));

    let router = tonic::transport::Server::builder()
        .layer(telemetry::RpcTraceLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(issuance)
        .add_optional_service(exchange)
        .add_optional_service(expiry);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

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
            "listening on {addr} ({ledger_kind}, demo campaign {} seeded; services: {services})",
            demo::DEMO_CAMPAIGN
        );
    } else {
        tracing::info!("listening on {addr} ({ledger_kind}; services: {services})");
    }
    if let Some(m) = state.config.metrics_listen {
        // Metrics export arrives with the observability issue; the address
        // is accepted now so deployments need not change later.
        tracing::info!("metrics endpoint {m} configured; metrics export is not implemented yet");
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
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for s in &served {
        reporter
            .set_service_status(s.grpc_name(), ServingStatus::NotServing)
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
    for s in &served {
        reporter.clear_service_status(s.grpc_name()).await;
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
    tracing::info!("stopped");
    Ok(())
}
