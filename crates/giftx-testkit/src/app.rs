//! giftxd in-process for tests (zero2prod's `spawn_app`).
//!
//! [`TestApp::spawn`] binds 127.0.0.1:0, builds the server state with a
//! [`ManualClock`] and runs [`giftx_server::serve`] on a task. The listener
//! is bound before the server starts, so clients connect at once: no
//! fixed ports, no sleeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use giftx_core::{ManualClock, Timestamp};
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_server::config::ProviderConfig;
use giftx_server::{AppState, Config, ServerError, ServiceKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as ReflectionV1Client;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as ReflectionV1AlphaClient;

use crate::RedisServer;

/// 2014-07-09T00:00:00Z: where the manual clock starts by default.
pub const DEFAULT_START: Timestamp = Timestamp(1_404_864_000_000);

/// The HMAC key the test app uses with Redis (tests only).
pub const TEST_HMAC_KEY: &[u8; 32] = b"giftx-test-hmac-key-0123456789ab";

/// The deliverable key ring the test app uses with Redis (tests only).
pub const TEST_DELIVERABLE_KEY: &str =
    "67696674782d746573742d64656c6976657261626c652d6b65792d3031323334\n";

/// How to spawn a [`TestApp`].
#[derive(Clone, Debug)]
pub struct TestAppOptions {
    /// The configuration to start from (listen address is ignored; the
    /// ledger is chosen by `redis`). Defaults: all services, default
    /// providers, no demo seeding.
    pub config: Config,
    /// Start a private `redis-server` and use the Redis ledger.
    pub redis: bool,
    /// Use this Redis instead (the caller owns the server).
    pub redis_url: Option<String>,
    /// Where the manual clock starts.
    pub start: Timestamp,
}

impl Default for TestAppOptions {
    fn default() -> Self {
        let config = Config {
            seed_demo: Some(false),
            shutdown_grace_seconds: 10,
            ..Config::default()
        };
        TestAppOptions {
            config,
            redis: false,
            redis_url: None,
            start: DEFAULT_START,
        }
    }
}

impl TestAppOptions {
    /// Embedded ledger, all services, default providers, no demo.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use a private Redis (started and owned by the app).
    pub fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// Use the Redis at `url` (owned by the caller).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Serve only these services.
    pub fn services(mut self, services: &[ServiceKind]) -> Self {
        self.config.services = services.to_vec();
        self
    }

    /// Configure exactly these providers.
    pub fn providers(mut self, providers: BTreeMap<String, ProviderConfig>) -> Self {
        self.config.providers = providers;
        self
    }

    /// Seed the demo campaigns (off by default in tests).
    pub fn seed_demo(mut self, seed: bool) -> Self {
        self.config.seed_demo = Some(seed);
        self
    }

    /// IssueCodes chunk size (1,000..=100,000).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.config.issuance.chunk_size = n;
        self
    }

    /// Start the clock at `t`.
    pub fn start(mut self, t: Timestamp) -> Self {
        self.start = t;
        self
    }

    /// Change anything else in the configuration.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }
}

/// A running in-process giftxd and clients connected to it.
pub struct TestApp {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The server's clock: move it to test deadlines.
    pub clock: ManualClock,
    /// The server's shared state (ledger, hasher, config), for assertions
    /// below the API.
    pub state: Arc<AppState>,
    /// A channel to the server (clone it for more clients).
    pub channel: Channel,
    /// `giftx.v1.IssuanceService`.
    pub issuance: IssuanceServiceClient<Channel>,
    /// `giftx.v1.ExchangeService`.
    pub exchange: ExchangeServiceClient<Channel>,
    /// `giftx.v1.ExpiryService`.
    pub expiry: ExpiryServiceClient<Channel>,
    /// `grpc.health.v1.Health`.
    pub health: HealthClient<Channel>,
    /// `grpc.reflection.v1.ServerReflection`.
    pub reflection: ReflectionV1Client<Channel>,
    /// `grpc.reflection.v1alpha.ServerReflection`.
    pub reflection_v1alpha: ReflectionV1AlphaClient<Channel>,
    /// The private Redis, when the app started one.
    pub redis: Option<RedisServer>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), ServerError>>>,
    _keys: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestApp {
    /// Spawns giftxd with `opts`.
    ///
    /// # Panics
    /// When the app cannot start: a test cannot go on without it.
    pub async fn spawn(opts: TestAppOptions) -> TestApp {
        Self::try_spawn(opts).await.expect("spawn test app")
    }

    /// Spawns giftxd with default options (embedded ledger, all services).
    ///
    /// # Panics
    /// As [`TestApp::spawn`].
    pub async fn spawn_default() -> TestApp {
        Self::spawn(TestAppOptions::default()).await
    }

    /// Spawns giftxd, returning the start-up error instead of panicking
    /// (for tests of start-up refusals).
    ///
    /// # Errors
    /// The server's start-up error.
    pub async fn try_spawn(opts: TestAppOptions) -> Result<TestApp, ServerError> {
        let TestAppOptions {
            mut config,
            redis,
            redis_url,
            start,
        } = opts;
        let mut own_redis = None;
        let mut keys = None;
        let url = match (redis_url, redis) {
            (Some(url), _) => Some(url),
            (None, true) => {
                let server = tokio::task::spawn_blocking(RedisServer::start)
                    .await
                    .expect("start redis-server");
                let url = server.url();
                own_redis = Some(server);
                Some(url)
            }
            (None, false) => None,
        };
        if let Some(url) = url {
            config.redis_url = Some(giftx_server::config::SecretString::new(url));
            let dir = tempfile::tempdir().expect("temp dir for keys");
            if config.hmac_key_file.is_none() {
                let path = dir.path().join("hmac.key");
                std::fs::write(&path, TEST_HMAC_KEY).expect("write HMAC key");
                config.hmac_key_file = Some(path);
            }
            if config.deliverable_keys_file.is_none() {
                let path = dir.path().join("deliverable.keys");
                std::fs::write(&path, TEST_DELIVERABLE_KEY).expect("write deliverable key");
                config.deliverable_keys_file = Some(path);
            }
            keys = Some(dir);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        config.listen = addr;

        let clock = ManualClock::new(start);
        let state = giftx_server::build_state(config, Arc::new(clock.clone())).await?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(giftx_server::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));

        let channel = Self::connect_to(addr).await;
        Ok(TestApp {
            addr,
            clock,
            state,
            issuance: IssuanceServiceClient::new(channel.clone())
                .max_decoding_message_size(64 << 20),
            exchange: ExchangeServiceClient::new(channel.clone()),
            expiry: ExpiryServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            reflection: ReflectionV1Client::new(channel.clone()),
            reflection_v1alpha: ReflectionV1AlphaClient::new(channel.clone()),
            channel,
            redis: own_redis,
            shutdown: Some(tx),
            server: Some(server),
            _keys: keys,
        })
    }

    async fn connect_to(addr: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to test app")
    }

    /// A fresh connection (its own HTTP/2 connection) to the app.
    pub async fn connect(&self) -> Channel {
        Self::connect_to(self.addr).await
    }

    /// The `campaigns/{id}` name of a campaign id.
    pub fn campaign_name(id: &str) -> String {
        format!("campaigns/{id}")
    }

    /// Starts a graceful shutdown (like SIGTERM) without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to stop (after [`TestApp::trigger_shutdown`]),
    /// returning what `serve` returned.
    ///
    /// # Errors
    /// The server's error.
    ///
    /// # Panics
    /// When the server task panicked, or was already waited for.
    pub async fn wait_stopped(&mut self) -> Result<(), ServerError> {
        let handle = self.server.take().expect("server already waited for");
        handle.await.expect("server task panicked")
    }

    /// Triggers a graceful shutdown and waits for it.
    ///
    /// # Errors
    /// The server's error.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.trigger_shutdown();
        self.wait_stopped().await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
