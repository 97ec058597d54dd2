//! giftxd's configuration: a TOML file (`--config`) overlaid by `GIFTX_*`
//! environment variables, then by command-line flags.
//!
//! Plain serde structs. Secrets (the Redis URL may carry a password; key
//! material is read from files) are wrapped so `Debug` never shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use giftx_core::Secret;
use giftx_core::model::ProviderId;
use giftx_ledger::LedgerConfig;
use serde::{Deserialize, Deserializer};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// One of the three giftx.v1 services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// `giftx.v1.IssuanceService`.
    Issuance,
    /// `giftx.v1.ExchangeService`.
    Exchange,
    /// `giftx.v1.ExpiryService`.
    Expiry,
}

impl ServiceKind {
    /// All three, in a fixed order.
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::Issuance,
        ServiceKind::Exchange,
        ServiceKind::Expiry,
    ];

    /// The fully qualified gRPC service name.
    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Issuance => "giftx.v1.IssuanceService",
            ServiceKind::Exchange => "giftx.v1.ExchangeService",
            ServiceKind::Expiry => "giftx.v1.ExpiryService",
        }
    }

    /// Parses a comma-separated list (`"exchange,expiry"`), deduplicated.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unknown name or an empty list.
    pub fn parse_list(s: &str) -> Result<Vec<ServiceKind>, ConfigError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let k = part.parse::<ServiceKind>()?;
            if !out.contains(&k) {
                out.push(k);
            }
        }
        if out.is_empty() {
            return Err(ConfigError::Invalid(
                "services: name at least one of issuance, exchange, expiry".into(),
            ));
        }
        out.sort();
        Ok(out)
    }
}

impl FromStr for ServiceKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "issuance" => Ok(ServiceKind::Issuance),
            "exchange" => Ok(ServiceKind::Exchange),
            "expiry" => Ok(ServiceKind::Expiry),
            other => Err(ConfigError::Invalid(format!(
                "services: unknown service {other:?} (expected issuance, exchange or expiry)"
            ))),
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Issuance => "issuance",
            ServiceKind::Exchange => "exchange",
            ServiceKind::Expiry => "expiry",
        })
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid(format!(
                "log format {other:?} is not json or text"
            ))),
        }
    }
}

/// Logging settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (`GIFTX_LOG_FORMAT`).
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `giftx=debug`
    /// (`GIFTX_LOG`; otherwise `RUST_LOG`; otherwise `info`).
    pub level: Option<String>,
    /// The deployment environment traces are tagged with
    /// (`deployment.environment.name`; `GIFTX_DEPLOYMENT_ENVIRONMENT`;
    /// default `unspecified`).
    pub environment: Option<String>,
    /// The trace resource's `service.instance.id`
    /// (`GIFTX_SERVICE_INSTANCE_ID`; default: a random UUID per process).
    pub instance_id: Option<String>,
}

/// A string that never prints (for URLs that may carry a password).
#[derive(Clone)]
pub struct SecretString(Secret);

impl SecretString {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(Secret::new(s.into().into_bytes()))
    }

    /// The text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        // Built from a String only, so always UTF-8.
        std::str::from_utf8(self.0.expose()).unwrap_or_default()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString::new)
    }
}

/// Ledger tunables (`[ledger]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerTunables {
    /// Wrong login keys in a row that lock a code (`GIFTX_LOCKOUT_THRESHOLD`).
    pub lockout_threshold: u32,
    /// Seconds a locked code stays locked (`GIFTX_LOCKOUT_SECONDS`).
    pub lockout_seconds: u64,
    /// Days codes and exchanges are kept after the deadline
    /// (`GIFTX_RETENTION_DAYS`).
    pub retention_days: u64,
    /// Seconds an ISSUING batch may stall before it reads as INCOMPLETE
    /// (`GIFTX_BATCH_STALL_SECONDS`).
    pub batch_stall_seconds: u64,
}

impl Default for LedgerTunables {
    fn default() -> Self {
        let d = LedgerConfig::default();
        LedgerTunables {
            lockout_threshold: d.lockout_threshold,
            lockout_seconds: d.lockout_duration.as_secs(),
            retention_days: d.retention.as_secs() / 86_400,
            batch_stall_seconds: d.batch_stall_timeout.as_secs(),
        }
    }
}

impl LedgerTunables {
    /// The ledger's view of these settings.
    pub fn ledger_config(&self) -> LedgerConfig {
        LedgerConfig {
            lockout_threshold: self.lockout_threshold,
            lockout_duration: Duration::from_secs(self.lockout_seconds),
            retention: Duration::from_secs(self.retention_days.saturating_mul(86_400)),
            batch_stall_timeout: Duration::from_secs(self.batch_stall_seconds),
        }
    }
}

/// Issuance tunables (`[issuance]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuanceTunables {
    /// Codes generated, stored and sent per chunk (1,000..=1,000,000).
    /// A chunk is stored with one script per ledger bucket (4,096), each
    /// with a fixed cost in Redis (about 25 µs), so large chunks store
    /// fastest: the default, 64 codes per bucket, keeps that cost near a
    /// quarter of Redis's work, while a chunk waits in memory at about 100
    /// bytes per code.
    pub chunk_size: usize,
    /// IssueCodes streams served at once (`GIFTX_MAX_ISSUE_STREAMS`,
    /// default 4); one more is refused RESOURCE_EXHAUSTED with RetryInfo.
    pub max_streams: usize,
    /// Chunks a stream may have generated and stored ahead of what its
    /// client has taken (`GIFTX_ISSUE_WINDOW_CHUNKS`, 1..=8, default 3):
    /// a stream holds at most this many chunks in memory, and stores at
    /// most this many chunks beyond what was handed to the transport,
    /// however slowly its client reads.
    pub window_chunks: usize,
}

impl Default for IssuanceTunables {
    fn default() -> Self {
        IssuanceTunables {
            chunk_size: 262_144,
            max_streams: 4,
            window_chunks: 3,
        }
    }
}

/// gRPC connection limits (`[transport]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportTunables {
    /// Client connections open at once (`GIFTX_MAX_CONNECTIONS`, default
    /// 4096); more are closed as soon as accepted.
    pub max_connections: usize,
    /// Concurrent calls per HTTP/2 connection
    /// (`GIFTX_MAX_STREAMS_PER_CONNECTION`, default 100).
    pub max_streams_per_connection: u32,
    /// Seconds a connection with no call in flight stays open
    /// (`GIFTX_IDLE_TIMEOUT_SECONDS`, default 300; 0: forever).
    pub idle_timeout_seconds: u64,
    /// Seconds between HTTP/2 keepalive pings on a connection
    /// (`GIFTX_KEEPALIVE_INTERVAL_SECONDS`, default 60; 0: no pings).
    pub keepalive_interval_seconds: u64,
    /// Seconds to wait for a ping's answer before closing the connection
    /// (`GIFTX_KEEPALIVE_TIMEOUT_SECONDS`, default 20).
    pub keepalive_timeout_seconds: u64,
}

impl Default for TransportTunables {
    fn default() -> Self {
        TransportTunables {
            max_connections: 4096,
            max_streams_per_connection: 100,
            idle_timeout_seconds: 300,
            keepalive_interval_seconds: 60,
            keepalive_timeout_seconds: 20,
        }
    }
}

/// Who may call, over what (`[security]`): TLS, API keys, rate limits,
/// the audit trail.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// PEM certificate chain served on the gRPC listener
    /// (`GIFTX_TLS_CERT_FILE`); with the key, the listener speaks TLS
    /// only. Re-read when it changes.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`GIFTX_TLS_KEY_FILE`).
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates; set: every client must present a certificate
    /// they sign (mTLS) (`GIFTX_TLS_CLIENT_CA_FILE`).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Seconds between checks of the TLS files for changes
    /// (`GIFTX_TLS_RELOAD_SECONDS`, default 10).
    pub tls_reload_seconds: u64,
    /// File holding the first admin's bearer token
    /// (`GIFTX_ADMIN_TOKEN_FILE`); set: every call but health and
    /// reflection needs a token. Only its keyed hash is kept.
    pub admin_token_file: Option<PathBuf>,
    /// The tenant of that admin (`GIFTX_ADMIN_TENANT`, default `default`).
    pub admin_tenant: String,
    /// Serve on a non-loopback address without TLS and authentication
    /// (`GIFTX_INSECURE`, default false): for a network you trust
    /// entirely. Logged loudly at start.
    pub insecure: bool,
    /// Calls per second per portal key (`GIFTX_LIMIT_PORTAL_RPS`, default
    /// 500; 0: unlimited), shared by every giftxd on the ledger.
    pub portal_rps: f64,
    /// Calls a portal key may make at once (`GIFTX_LIMIT_PORTAL_BURST`,
    /// default 1000).
    pub portal_burst: u32,
    /// Calls per second per operator or admin key
    /// (`GIFTX_LIMIT_OPERATOR_RPS`, default 50; 0: unlimited).
    pub operator_rps: f64,
    /// Calls an operator or admin key may make at once
    /// (`GIFTX_LIMIT_OPERATOR_BURST`, default 100).
    pub operator_burst: u32,
    /// Failed verifications an end user (`x-giftx-end-user`) may have in a
    /// window, across all codes, before its calls are refused
    /// (`GIFTX_END_USER_MAX_FAILURES`, default 20; 0: no limit).
    pub end_user_max_failures: u32,
    /// The window's length in seconds (`GIFTX_END_USER_WINDOW_SECONDS`,
    /// default 600), from the first failure in it.
    pub end_user_window_seconds: u64,
    /// Milliseconds a key's record is trusted once read
    /// (`GIFTX_AUTH_CACHE_MS`, default 2000): a revocation reaches every
    /// giftxd within it.
    pub auth_cache_ms: u64,
    /// Days audit events are kept (`GIFTX_AUDIT_RETENTION_DAYS`, default
    /// 400).
    pub audit_retention_days: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_reload_seconds: 10,
            admin_token_file: None,
            admin_tenant: giftx_core::model::TenantId::DEFAULT.to_owned(),
            insecure: false,
            portal_rps: 500.0,
            portal_burst: 1000,
            operator_rps: 50.0,
            operator_burst: 100,
            end_user_max_failures: 20,
            end_user_window_seconds: 600,
            auth_cache_ms: 2000,
            audit_retention_days: 400,
        }
    }
}

impl SecurityConfig {
    /// TLS is configured.
    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    /// Authentication is on.
    pub fn auth(&self) -> bool {
        self.admin_token_file.is_some()
    }

    fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let path = |k: &str| get(k).map(|v| PathBuf::from(v.trim()));
        if let Some(v) = path("GIFTX_TLS_CERT_FILE") {
            self.tls_cert_file = Some(v);
        }
        if let Some(v) = path("GIFTX_TLS_KEY_FILE") {
            self.tls_key_file = Some(v);
        }
        if let Some(v) = path("GIFTX_TLS_CLIENT_CA_FILE") {
            self.tls_client_ca_file = Some(v);
        }
        if let Some(v) = path("GIFTX_ADMIN_TOKEN_FILE") {
            self.admin_token_file = Some(v);
        }
        if let Some(v) = get("GIFTX_ADMIN_TENANT") {
            self.admin_tenant = v.trim().to_owned();
        }
        macro_rules! num {
            ($($var:literal => $field:ident),* $(,)?) => {
                $(if let Some(v) = get($var) {
                    self.$field = env_parse($var, &v)?;
                })*
            };
        }
        num! {
            "GIFTX_TLS_RELOAD_SECONDS" => tls_reload_seconds,
            "GIFTX_INSECURE" => insecure,
            "GIFTX_LIMIT_PORTAL_RPS" => portal_rps,
            "GIFTX_LIMIT_PORTAL_BURST" => portal_burst,
            "GIFTX_LIMIT_OPERATOR_RPS" => operator_rps,
            "GIFTX_LIMIT_OPERATOR_BURST" => operator_burst,
            "GIFTX_END_USER_MAX_FAILURES" => end_user_max_failures,
            "GIFTX_END_USER_WINDOW_SECONDS" => end_user_window_seconds,
            "GIFTX_AUTH_CACHE_MS" => auth_cache_ms,
            "GIFTX_AUDIT_RETENTION_DAYS" => audit_retention_days,
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad(
                "GIFTX_TLS_CERT_FILE and GIFTX_TLS_KEY_FILE go together: set both or neither",
            );
        }
        if self.tls_client_ca_file.is_some() && !self.tls() {
            return bad(
                "GIFTX_TLS_CLIENT_CA_FILE needs TLS: set GIFTX_TLS_CERT_FILE and GIFTX_TLS_KEY_FILE too",
            );
        }
        if self.tls_reload_seconds == 0 {
            return bad("GIFTX_TLS_RELOAD_SECONDS must be at least 1");
        }
        if let Err(v) = giftx_core::model::TenantId::parse("GIFTX_ADMIN_TENANT", &self.admin_tenant)
        {
            return Err(ConfigError::Invalid(format!(
                "GIFTX_ADMIN_TENANT {:?} {}",
                self.admin_tenant, v.description
            )));
        }
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        if !rate_ok(self.portal_rps) || !rate_ok(self.operator_rps) {
            return bad(
                "GIFTX_LIMIT_PORTAL_RPS and GIFTX_LIMIT_OPERATOR_RPS must be 0 (unlimited) or positive",
            );
        }
        if self.portal_burst == 0 || self.operator_burst == 0 {
            return bad(
                "GIFTX_LIMIT_PORTAL_BURST and GIFTX_LIMIT_OPERATOR_BURST must be at least 1",
            );
        }
        if self.end_user_window_seconds == 0 || self.audit_retention_days == 0 {
            return bad(
                "GIFTX_END_USER_WINDOW_SECONDS and GIFTX_AUDIT_RETENTION_DAYS must be at least 1",
            );
        }
        Ok(())
    }
}

/// Exchange tunables (`[exchange]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExchangeTunables {
    /// Deadline of one provider call in milliseconds; past it the outcome
    /// is unknown and the exchange stays PENDING (`GIFTX_PROVIDER_TIMEOUT_MS`).
    pub provider_timeout_ms: u64,
    /// Seconds a driver holds an exchange before a reconciler may take it
    /// over (must exceed the provider timeout).
    pub lease_seconds: u64,
    /// Milliseconds a duplicate request waits for the in-flight one.
    pub duplicate_wait_ms: u64,
    /// First re-drive delay after an unknown outcome, in milliseconds;
    /// doubles per attempt.
    pub backoff_base_ms: u64,
    /// Longest re-drive delay, in seconds.
    pub backoff_max_seconds: u64,
    /// Attempts after which an exchange is parked for an operator
    /// (`GIFTX_MAX_ATTEMPTS`).
    pub max_attempts: u32,
}

impl Default for ExchangeTunables {
    fn default() -> Self {
        let d = crate::exchanger::ExchangeSettings::default();
        ExchangeTunables {
            provider_timeout_ms: d.provider_timeout.as_millis() as u64,
            lease_seconds: d.lease.as_secs(),
            duplicate_wait_ms: d.duplicate_wait.as_millis() as u64,
            backoff_base_ms: d.backoff_base.as_millis() as u64,
            backoff_max_seconds: d.backoff_max.as_secs(),
            max_attempts: d.max_attempts,
        }
    }
}

impl ExchangeTunables {
    /// The engine's view of these settings.
    pub fn settings(&self) -> crate::exchanger::ExchangeSettings {
        crate::exchanger::ExchangeSettings {
            provider_timeout: Duration::from_millis(self.provider_timeout_ms),
            lease: Duration::from_secs(self.lease_seconds),
            duplicate_wait: Duration::from_millis(self.duplicate_wait_ms),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_secs(self.backoff_max_seconds),
            max_attempts: self.max_attempts,
        }
    }
}

/// Expiry workers' schedule (`[expiry]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpiryTunables {
    /// Run the sweeper and reconciler in this process when it serves the
    /// expiry service (`GIFTX_WORKERS`, default true). At most one process
    /// works at a time whatever this says: they share a lease.
    pub workers: bool,
    /// Milliseconds between worker passes (`GIFTX_WORKER_INTERVAL_MS`).
    pub interval_ms: u64,
    /// Lease time-to-live in milliseconds: another instance takes over
    /// within it when the holder dies (`GIFTX_WORKER_LEASE_MS`).
    pub lease_ttl_ms: u64,
    /// Seconds a PENDING exchange must be old before the reconciler
    /// re-drives it (`GIFTX_RECONCILE_MIN_AGE_SECONDS`).
    pub reconcile_min_age_seconds: u64,
}

impl Default for ExpiryTunables {
    fn default() -> Self {
        let d = crate::workers::WorkerSettings::default();
        ExpiryTunables {
            workers: true,
            interval_ms: d.interval.as_millis() as u64,
            lease_ttl_ms: d.lease_ttl.as_millis() as u64,
            reconcile_min_age_seconds: d.reconcile_min_age.as_secs(),
        }
    }
}

impl ExpiryTunables {
    /// The workers' view of these settings.
    pub fn settings(&self) -> crate::workers::WorkerSettings {
        crate::workers::WorkerSettings {
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            interval: Duration::from_millis(self.interval_ms),
            reconcile_min_age: Duration::from_secs(self.reconcile_min_age_seconds),
        }
    }
}

/// One configured provider (`[providers.<id>]`): its adapter kind and the
/// adapter's own settings, kept as a TOML table until the adapter reads them.
#[derive(Clone, Deserialize)]
pub struct ProviderConfig {
    /// Adapter kind: `select`, `simulated`, `shipment`, `donation`, …
    pub kind: String,
    /// The tenant that owns the provider: only its campaigns may use it,
    /// only its operators (and admins) import or read its stock. Unset: a
    /// shared provider, any tenant's campaigns may use it, and its stock
    /// is an admin's business.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Everything else in the table, for the adapter.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl ProviderConfig {
    /// A provider of `kind` with no settings.
    pub fn of_kind(kind: &str) -> Self {
        ProviderConfig {
            kind: kind.to_owned(),
            tenant: None,
            settings: toml::Table::new(),
        }
    }
}

impl fmt::Debug for ProviderConfig {
    // Settings may hold API keys: show their names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The provider set used when none is configured: enough for the demo
/// campaigns.
pub fn default_providers() -> BTreeMap<String, ProviderConfig> {
    [
        ("select-gift", "select"),
        ("emoney-a", "simulated"),
        ("emoney-b", "simulated"),
        ("giftcode-c", "simulated"),
        ("book-card", "shipment"),
        ("donation", "donation"),
    ]
    .into_iter()
    .map(|(id, kind)| {
        let mut p = ProviderConfig::of_kind(kind);
        if kind == "select" {
            p.settings.insert(
                "campaign".into(),
                toml::Value::String(crate::demo::DEMO_SELECT_CAMPAIGN.into()),
            );
        }
        (id.to_owned(), p)
    })
    .collect()
}

/// giftxd's whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where gRPC is served (`GIFTX_LISTEN`, default 127.0.0.1:50051).
    pub listen: SocketAddr,
    /// Redis URL (`GIFTX_REDIS_URL`); unset: the embedded ledger.
    pub redis_url: Option<SecretString>,
    /// PEM file of the CA that signs Redis's certificate, for a
    /// `rediss://` URL (`GIFTX_REDIS_CA_FILE`; required with `rediss://`).
    pub redis_ca_file: Option<PathBuf>,
    /// File holding the Redis password (`GIFTX_REDIS_PASSWORD_FILE`), so it
    /// need not sit in the URL; the file's content without its trailing
    /// newline. Overrides a password in the URL.
    pub redis_password_file: Option<PathBuf>,
    /// Sentinel mode (`GIFTX_REDIS_SENTINELS`): the sentinels,
    /// `redis://[user:password@]host:port` each (`rediss://` for TLS).
    pub redis_sentinels: Vec<String>,
    /// The master name the sentinels watch (`GIFTX_REDIS_SENTINEL_MASTER`).
    pub redis_sentinel_master: Option<String>,
    /// Cluster mode (`GIFTX_REDIS_CLUSTER_NODES`): refused with a clear
    /// message until it is supported.
    pub redis_cluster_nodes: Vec<String>,
    /// The ACL user for the master in Sentinel mode (`GIFTX_REDIS_USERNAME`;
    /// with a single node the user is in the URL).
    pub redis_username: Option<String>,
    /// Replicas a claim and a completion must reach before giftx acts on
    /// them (`GIFTX_REDIS_MIN_REPLICAS_ACKED`); unset: 1 in Sentinel mode,
    /// and with one node 1 when it has replicas, else 0.
    pub redis_min_replicas_acked: Option<usize>,
    /// Where metrics are served, if anywhere (`GIFTX_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
    /// A second, plaintext listener serving `grpc.health.v1` only
    /// (`GIFTX_HEALTH_LISTEN`), for probes that cannot speak TLS (such as
    /// Kubernetes' gRPC probes) when the main listener does.
    pub health_listen: Option<SocketAddr>,
    /// Services served (`GIFTX_SERVICES`, `--services`; default all).
    pub services: Vec<ServiceKind>,
    /// File holding the HMAC key (`GIFTX_HMAC_KEY_FILE`), at least 32
    /// bytes: the file's bytes as they are, or a text key (such as
    /// `openssl rand -hex 32`) without its surrounding whitespace when at
    /// least 32 bytes remain. Required with Redis.
    pub hmac_key_file: Option<PathBuf>,
    /// File holding the HMAC key ring (`GIFTX_HMAC_KEYRING_FILE`): text,
    /// one key per line, `<key id> <key as hex>`, current first. With
    /// `hmac_key_file` too, that key joins the ring last, as id `default`.
    pub hmac_keyring_file: Option<PathBuf>,
    /// File holding the deliverable AEAD keys (`GIFTX_DELIVERABLE_KEYS_FILE`).
    pub deliverable_keys_file: Option<PathBuf>,
    /// Logging (`GIFTX_LOG_FORMAT`, `GIFTX_LOG`).
    pub log: LogConfig,
    /// Ledger tunables.
    pub ledger: LedgerTunables,
    /// Issuance tunables.
    pub issuance: IssuanceTunables,
    /// Exchange tunables.
    pub exchange: ExchangeTunables,
    /// Expiry workers' schedule.
    pub expiry: ExpiryTunables,
    /// gRPC connection limits.
    pub transport: TransportTunables,
    /// Seed the demo campaigns (`GIFTX_SEED_DEMO`); default: only on the
    /// embedded ledger.
    pub seed_demo: Option<bool>,
    /// Seconds between health going NOT_SERVING and the listener closing,
    /// so load balancers notice (`GIFTX_SHUTDOWN_DRAIN_SECONDS`, default 0).
    pub shutdown_drain_seconds: u64,
    /// Seconds in-flight calls get to finish on shutdown
    /// (`GIFTX_SHUTDOWN_GRACE_SECONDS`, default 30).
    pub shutdown_grace_seconds: u64,
    /// Configured providers by id; empty: [`default_providers`].
    pub providers: BTreeMap<String, ProviderConfig>,
    /// TLS, API keys, rate limits, audit.
    pub security: SecurityConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            redis_url: None,
            redis_ca_file: None,
            redis_password_file: None,
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            redis_cluster_nodes: Vec::new(),
            redis_username: None,
            redis_min_replicas_acked: None,
            metrics_listen: None,
            health_listen: None,
            services: ServiceKind::ALL.to_vec(),
            hmac_key_file: None,
            hmac_keyring_file: None,
            deliverable_keys_file: None,
            log: LogConfig::default(),
            ledger: LedgerTunables::default(),
            issuance: IssuanceTunables::default(),
            exchange: ExchangeTunables::default(),
            expiry: ExpiryTunables::default(),
            transport: TransportTunables::default(),
            seed_demo: None,
            shutdown_drain_seconds: 0,
            shutdown_grace_seconds: 30,
            providers: BTreeMap::new(),
            security: SecurityConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
}

fn env_parse<T: FromStr>(name: &str, v: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    v.trim()
        .parse::<T>()
        .map_err(|e| ConfigError::Invalid(format!("{name}={v:?}: {e}")))
}

impl Config {
    /// Reads the configuration: `file` (if given), then the process's
    /// `GIFTX_*` environment, then `services_flag` (`--services`).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or variable at fault.
    pub fn load(file: Option<&Path>, services_flag: Option<&str>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, services_flag, |k| std::env::var(k).ok())
    }

    /// As [`Config::load`], reading variables through `env` (for tests).
    ///
    /// # Errors
    /// As for [`Config::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        services_flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        c.apply_env(env)?;
        if let Some(s) = services_flag {
            c.services = ServiceKind::parse_list(s)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Parses a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The TOML error.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        // An empty variable counts as unset, as shells make that easy.
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("GIFTX_LISTEN") {
            self.listen = env_parse("GIFTX_LISTEN", &v)?;
        }
        if let Some(v) = get("GIFTX_REDIS_URL") {
            self.redis_url = Some(SecretString::new(v.trim()));
        }
        if let Some(v) = get("GIFTX_REDIS_CA_FILE") {
            self.redis_ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("GIFTX_REDIS_PASSWORD_FILE") {
            self.redis_password_file = Some(PathBuf::from(v));
        }
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(v) = get("GIFTX_REDIS_SENTINELS") {
            self.redis_sentinels = list(&v);
        }
        if let Some(v) = get("GIFTX_REDIS_SENTINEL_MASTER") {
            self.redis_sentinel_master = Some(v.trim().to_owned());
        }
        if let Some(v) = get("GIFTX_REDIS_CLUSTER_NODES") {
            self.redis_cluster_nodes = list(&v);
        }
        if let Some(v) = get("GIFTX_REDIS_USERNAME") {
            self.redis_username = Some(v.trim().to_owned());
        }
        if let Some(v) = get("GIFTX_REDIS_MIN_REPLICAS_ACKED") {
            self.redis_min_replicas_acked = Some(env_parse("GIFTX_REDIS_MIN_REPLICAS_ACKED", &v)?);
        }
        if let Some(v) = get("GIFTX_METRICS_LISTEN") {
            self.metrics_listen = Some(env_parse("GIFTX_METRICS_LISTEN", &v)?);
        }
        if let Some(v) = get("GIFTX_HEALTH_LISTEN") {
            self.health_listen = Some(env_parse("GIFTX_HEALTH_LISTEN", &v)?);
        }
        if let Some(v) = get("GIFTX_SERVICES") {
            self.services = ServiceKind::parse_list(&v)?;
        }
        if let Some(v) = get("GIFTX_HMAC_KEY_FILE") {
            self.hmac_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("GIFTX_HMAC_KEYRING_FILE") {
            self.hmac_keyring_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("GIFTX_DELIVERABLE_KEYS_FILE") {
            self.deliverable_keys_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("GIFTX_LOG_FORMAT") {
            self.log.format = env_parse("GIFTX_LOG_FORMAT", &v)?;
        }
        if let Some(v) = get("GIFTX_LOG") {
            self.log.level = Some(v);
        }
        if let Some(v) = get("GIFTX_DEPLOYMENT_ENVIRONMENT") {
            self.log.environment = Some(v);
        }
        if let Some(v) = get("GIFTX_SERVICE_INSTANCE_ID") {
            self.log.instance_id = Some(v);
        }
        if let Some(v) = get("GIFTX_LOCKOUT_THRESHOLD") {
            self.ledger.lockout_threshold = env_parse("GIFTX_LOCKOUT_THRESHOLD", &v)?;
        }
        if let Some(v) = get("GIFTX_LOCKOUT_SECONDS") {
            self.ledger.lockout_seconds = env_parse("GIFTX_LOCKOUT_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_RETENTION_DAYS") {
            self.ledger.retention_days = env_parse("GIFTX_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = get("GIFTX_BATCH_STALL_SECONDS") {
            self.ledger.batch_stall_seconds = env_parse("GIFTX_BATCH_STALL_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_ISSUE_CHUNK_SIZE") {
            self.issuance.chunk_size = env_parse("GIFTX_ISSUE_CHUNK_SIZE", &v)?;
        }
        if let Some(v) = get("GIFTX_PROVIDER_TIMEOUT_MS") {
            self.exchange.provider_timeout_ms = env_parse("GIFTX_PROVIDER_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("GIFTX_MAX_ATTEMPTS") {
            self.exchange.max_attempts = env_parse("GIFTX_MAX_ATTEMPTS", &v)?;
        }
        if let Some(v) = get("GIFTX_WORKERS") {
            self.expiry.workers = env_parse("GIFTX_WORKERS", &v)?;
        }
        if let Some(v) = get("GIFTX_WORKER_INTERVAL_MS") {
            self.expiry.interval_ms = env_parse("GIFTX_WORKER_INTERVAL_MS", &v)?;
        }
        if let Some(v) = get("GIFTX_WORKER_LEASE_MS") {
            self.expiry.lease_ttl_ms = env_parse("GIFTX_WORKER_LEASE_MS", &v)?;
        }
        if let Some(v) = get("GIFTX_RECONCILE_MIN_AGE_SECONDS") {
            self.expiry.reconcile_min_age_seconds =
                env_parse("GIFTX_RECONCILE_MIN_AGE_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_SEED_DEMO") {
            self.seed_demo = Some(env_parse("GIFTX_SEED_DEMO", &v)?);
        }
        if let Some(v) = get("GIFTX_SHUTDOWN_DRAIN_SECONDS") {
            self.shutdown_drain_seconds = env_parse("GIFTX_SHUTDOWN_DRAIN_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_SHUTDOWN_GRACE_SECONDS") {
            self.shutdown_grace_seconds = env_parse("GIFTX_SHUTDOWN_GRACE_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_MAX_ISSUE_STREAMS") {
            self.issuance.max_streams = env_parse("GIFTX_MAX_ISSUE_STREAMS", &v)?;
        }
        if let Some(v) = get("GIFTX_ISSUE_WINDOW_CHUNKS") {
            self.issuance.window_chunks = env_parse("GIFTX_ISSUE_WINDOW_CHUNKS", &v)?;
        }
        let t = &mut self.transport;
        if let Some(v) = get("GIFTX_MAX_CONNECTIONS") {
            t.max_connections = env_parse("GIFTX_MAX_CONNECTIONS", &v)?;
        }
        if let Some(v) = get("GIFTX_MAX_STREAMS_PER_CONNECTION") {
            t.max_streams_per_connection = env_parse("GIFTX_MAX_STREAMS_PER_CONNECTION", &v)?;
        }
        if let Some(v) = get("GIFTX_IDLE_TIMEOUT_SECONDS") {
            t.idle_timeout_seconds = env_parse("GIFTX_IDLE_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_KEEPALIVE_INTERVAL_SECONDS") {
            t.keepalive_interval_seconds = env_parse("GIFTX_KEEPALIVE_INTERVAL_SECONDS", &v)?;
        }
        if let Some(v) = get("GIFTX_KEEPALIVE_TIMEOUT_SECONDS") {
            t.keepalive_timeout_seconds = env_parse("GIFTX_KEEPALIVE_TIMEOUT_SECONDS", &v)?;
        }
        self.security.apply_env(&get)?;
        Ok(())
    }

    /// Checks ranges and names.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] saying what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.services.is_empty() {
            return bad("services: name at least one of issuance, exchange, expiry".into());
        }
        self.security.validate()?;
        let modes = [
            self.redis_url.is_some(),
            !self.redis_sentinels.is_empty(),
            !self.redis_cluster_nodes.is_empty(),
        ];
        if modes.iter().filter(|m| **m).count() > 1 {
            return bad("set one Redis mode only: GIFTX_REDIS_URL (one node), \
                 GIFTX_REDIS_SENTINELS with GIFTX_REDIS_SENTINEL_MASTER (Sentinel), or \
                 GIFTX_REDIS_CLUSTER_NODES (Cluster)"
                .into());
        }
        if !self.redis_cluster_nodes.is_empty() {
            return bad(
                "GIFTX_REDIS_CLUSTER_NODES: Redis Cluster is not supported yet; use \
                 one node (GIFTX_REDIS_URL) or Sentinel (GIFTX_REDIS_SENTINELS)"
                    .into(),
            );
        }
        if self.redis_sentinels.is_empty() != self.redis_sentinel_master.is_none() {
            return bad(
                "Sentinel mode needs both GIFTX_REDIS_SENTINELS (the sentinels, \
                 redis://host:port, comma-separated) and GIFTX_REDIS_SENTINEL_MASTER (the \
                 master name they watch)"
                    .into(),
            );
        }
        if !(1_000..=1_000_000).contains(&self.issuance.chunk_size) {
            return bad(format!(
                "issuance.chunk_size {} is outside 1000..=1000000",
                self.issuance.chunk_size
            ));
        }
        if self.issuance.max_streams == 0 {
            return bad("issuance.max_streams (GIFTX_MAX_ISSUE_STREAMS) must be at least 1".into());
        }
        if !(1..=8).contains(&self.issuance.window_chunks) {
            return bad(format!(
                "issuance.window_chunks (GIFTX_ISSUE_WINDOW_CHUNKS) {} is outside 1..=8",
                self.issuance.window_chunks
            ));
        }
        let t = &self.transport;
        if t.max_connections == 0 || t.max_streams_per_connection == 0 {
            return bad("transport.max_connections (GIFTX_MAX_CONNECTIONS) and \
                 transport.max_streams_per_connection (GIFTX_MAX_STREAMS_PER_CONNECTION) \
                 must be at least 1"
                .into());
        }
        if t.keepalive_interval_seconds > 0 && t.keepalive_timeout_seconds == 0 {
            return bad(
                "transport.keepalive_timeout_seconds (GIFTX_KEEPALIVE_TIMEOUT_SECONDS) must be \
                 at least 1 when keepalive pings are on"
                    .into(),
            );
        }
        if self.ledger.lockout_threshold == 0 {
            return bad("ledger.lockout_threshold must be at least 1".into());
        }
        let x = &self.exchange;
        if x.provider_timeout_ms == 0
            || x.lease_seconds.saturating_mul(1000) <= x.provider_timeout_ms
        {
            return bad(format!(
                "exchange.lease_seconds ({}) must exceed exchange.provider_timeout_ms ({} ms), \
                 which must be positive: a lease that lapses during a provider call would let a \
                 reconciler drive the same exchange concurrently",
                x.lease_seconds, x.provider_timeout_ms
            ));
        }
        if x.max_attempts == 0 {
            return bad("exchange.max_attempts must be at least 1".into());
        }
        let e = &self.expiry;
        if e.interval_ms == 0 || e.lease_ttl_ms <= e.interval_ms.saturating_mul(2) {
            return bad(format!(
                "expiry.lease_ttl_ms ({}) must exceed twice expiry.interval_ms ({}), \
                 which must be positive, so the holder renews in time",
                e.lease_ttl_ms, e.interval_ms
            ));
        }
        for (id, p) in &self.providers {
            if let Err(v) = ProviderId::parse("providers", id) {
                return bad(format!("[providers.{id}]: provider id {}", v.description));
            }
            if let Some(t) = &p.tenant
                && let Err(v) = giftx_core::model::TenantId::parse("tenant", t)
            {
                return bad(format!("[providers.{id}]: tenant {t:?} {}", v.description));
            }
            if p.kind.trim().is_empty() {
                return bad(format!("[providers.{id}]: kind must not be empty"));
            }
        }
        Ok(())
    }

    /// The configured providers, or [`default_providers`] when none are.
    pub fn effective_providers(&self) -> BTreeMap<String, ProviderConfig> {
        if self.providers.is_empty() {
            default_providers()
        } else {
            self.providers.clone()
        }
    }

    /// True when the embedded (in-process) ledger is used.
    pub fn embedded_ledger(&self) -> bool {
        self.redis_url.is_none() && self.redis_sentinels.is_empty()
    }

    /// Whether the demo campaigns are seeded at start.
    pub fn seeds_demo(&self) -> bool {
        self.seed_demo.unwrap_or(self.embedded_ledger())
    }

    /// True when `kind` is served.
    pub fn serves(&self, kind: ServiceKind) -> bool {
        self.services.contains(&kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_configuration_means_loopback_embedded_all_services_demo() {
        let c = Config::load_with_env(None, None, env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.embedded_ledger());
        assert!(c.seeds_demo());
        assert_eq!(c.services, ServiceKind::ALL.to_vec());
        let p = c.effective_providers();
        assert_eq!(p["select-gift"].kind, "select");
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn env_overrides_file_and_flag_overrides_env() {
        let dir = std::env::temp_dir().join(format!("giftx-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("giftx.toml");
        std::fs::write(
            &f,
            r#"
listen = "0.0.0.0:7000"
services = ["issuance"]
[log]
format = "json"
[providers.amazon]
kind = "simulated"
api_key = "hunter2-very-secret"
"#,
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&f),
            Some("exchange"),
            env(&[
                ("GIFTX_LISTEN", "127.0.0.1:9"),
                ("GIFTX_SERVICES", "expiry,issuance"),
                ("GIFTX_REDIS_URL", "redis://:pa55word@localhost:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.services, vec![ServiceKind::Exchange]);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(!c.seeds_demo());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pa55word"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(
            c.redis_url.unwrap().expose(),
            "redis://:pa55word@localhost:6379"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let e = Config::load_with_env(None, None, env(&[("GIFTX_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GIFTX_LISTEN"), "{e}");
        let e = Config::load_with_env(None, Some("issuance,bogus"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(Config::from_toml("nonsense = 1").is_err());
    }
}
