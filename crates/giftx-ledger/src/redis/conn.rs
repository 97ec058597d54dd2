//! Connections to Redis: a fixed set of multiplexed connections, each
//! replaced as soon as it is known dead, and the rule for retrying a
//! command that failed on a dead one.
//!
//! Why not the redis crate's `ConnectionManager`: over RESP2 it learns that
//! its connection died only when a command fails on it, so a connection
//! that Redis closed while it sat idle (`CLIENT KILL`, a timeout, a
//! failover) fails the next caller, however long after Redis is back. Here
//! this process runs each connection's driver task itself, so the moment
//! the driver ends (the socket hit EOF or an error) the connection is
//! marked dead, and [`Pool::get`] opens a fresh one before handing it out.
//!
//! What is retried (see [`Rerun`]): a command that fails because its
//! connection broke is retried once on a fresh connection when running it
//! twice cannot change anything (a read), or when it provably never reached
//! Redis (opening the connection failed, so nothing was sent). A write that
//! was sent on a connection that then broke may or may not have run (Redis
//! may have run it and lost the reply), so it is never re-sent: the caller
//! gets `Unavailable`, as the exchange protocol expects of an unknown
//! outcome. A connection is never *handed out* once known dead, so no write
//! is sent on a socket the process already knew was gone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisConnectionInfo, RedisError,
    RedisFuture, Value,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::LedgerError;

/// Whether a command may be sent again after its connection broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rerun {
    /// Reads only: running it twice changes nothing, so it is retried once
    /// on a fresh connection whenever its connection broke.
    Safe,
    /// Writes: retried only when the failure proves nothing was sent
    /// (opening the connection failed).
    IfUnsent,
}

/// How to reach Redis, from the URL (and the TLS settings).
enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        connector: tokio_rustls::TlsConnector,
    },
    #[cfg(unix)]
    Unix(PathBuf),
    /// The master a Sentinel group names, found again on every connect.
    Sentinel(Arc<SentinelTarget>),
}

/// One sentinel: its address and its own credentials.
struct SentinelAddr {
    host: String,
    port: u16,
    redis: RedisConnectionInfo,
}

/// Sentinel mode: where the sentinels are, which master they watch, and
/// what this process last learned of it.
pub(crate) struct SentinelTarget {
    sentinels: Vec<SentinelAddr>,
    master: String,
    /// TLS to the sentinels and the master (`rediss://` sentinel URLs).
    tls: Option<tokio_rustls::TlsConnector>,
    /// The master's address as last learned, and an epoch bumped whenever
    /// it changes: a connection opened under an older epoch is to a former
    /// master and is never handed out again.
    current: RwLock<Option<(String, u16)>>,
    epoch: AtomicU64,
}

impl SentinelTarget {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records `addr` as the master's; returns the epoch it belongs to.
    fn learned(&self, addr: &(String, u16)) -> u64 {
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.as_ref() != Some(addr) {
            if cur.is_some() {
                tracing::warn!(
                    master = %self.master,
                    from = ?cur,
                    to = ?addr,
                    "Sentinel names a new Redis master: reconnecting"
                );
            }
            *cur = Some(addr.clone());
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.epoch()
    }

    /// Asks the sentinels in turn for the master's address; the first
    /// answer wins.
    async fn resolve(&self, timeout: Duration) -> Result<(String, u16), RedisError> {
        let mut last = None;
        for s in &self.sentinels {
            let ask = async {
                let mut c = connect(&s.host, s.port, self.tls.as_ref(), &s.redis)
                    .await?
                    .inner;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            match tokio::time::timeout(timeout, ask).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => {
                    last = Some(RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "a sentinel does not know the master name",
                        self.master.clone(),
                    )));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "asking a sentinel timed out",
                    )));
                }
            }
        }
        Err(last
            .unwrap_or_else(|| RedisError::from(std::io::Error::other("no sentinel configured"))))
    }
}

/// How often the sentinels are asked whether the master moved (besides
/// every reconnect): bounds how long writes could go to a master that was
/// replaced while its connections stayed open (a partition).
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Polls the sentinels while the pool lives; a new master address makes
/// every connection to the old one stale.
fn watch_sentinels(target: &Arc<SentinelTarget>, timeout: Duration) {
    let weak = Arc::downgrade(target);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SENTINEL_POLL).await;
            let Some(t) = weak.upgrade() else {
                return;
            };
            if let Ok(addr) = t.resolve(timeout).await {
                t.learned(&addr);
            }
        }
    });
}

/// TLS settings for a `rediss://` URL.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM certificates of the CA(s) that sign the server's certificate.
    /// Required with `rediss://`: there is no platform trust store.
    pub ca_pem: Option<Vec<u8>>,
}

/// One connection handed out: the multiplexed connection and the flag its
/// driver sets when it ends. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: MultiplexedConnection,
    dead: Arc<AtomicBool>,
    /// A second handle on the TCP socket (same file description), to peek
    /// at it: an EOF or error already received means Redis closed it,
    /// even if the driver task has not run since.
    probe: Option<Arc<std::net::TcpStream>>,
    /// In Sentinel mode: the target and the epoch this connection was
    /// opened under.
    sentinel: Option<(Arc<SentinelTarget>, u64)>,
    /// Replicas a durable write waits for unless configured: in Sentinel
    /// mode 1 (a failover needs a replica anyway); otherwise 1 when the
    /// server had replicas when this connection was opened (`ROLE`).
    pub(crate) wait_default: usize,
    /// The connection's `WAIT`s, shared by everyone writing on it.
    pub(crate) waits: Arc<WaitGroup>,
}

/// Group commit of `WAIT` on one connection. `WAIT` makes Redis wait for
/// the replicas to acknowledge everything this connection wrote before
/// it, so one `WAIT` sent after several writes' replies arrived covers all
/// of them. A writer takes a ticket once its write is answered; the first
/// to get the turn sends one `WAIT` for every ticket taken so far, and the
/// others find their ticket covered and share its answer. Under load that
/// is one `WAIT` at a time per connection instead of one per write.
#[derive(Default)]
pub(crate) struct WaitGroup {
    /// Tickets handed out so far.
    requested: AtomicU64,
    /// The turn, and what the last `WAIT` covered: (tickets up to, replicas
    /// acknowledged).
    done: tokio::sync::Mutex<(u64, i64)>,
}

impl WaitGroup {
    /// Returns how many replicas acknowledged a `WAIT numreplicas timeout`
    /// sent after the caller's write was answered on `c` (possibly one
    /// sent for another writer as well).
    pub(crate) async fn wait(
        &self,
        c: &mut Conn,
        numreplicas: usize,
        timeout_ms: i64,
    ) -> Result<i64, RedisError> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = self.done.lock().await;
        if done.0 >= ticket {
            return Ok(done.1);
        }
        // Every ticket taken so far belongs to a write already answered:
        // a WAIT sent now covers them all.
        let upto = self.requested.load(Ordering::Acquire);
        let acked: i64 = redis::cmd("WAIT")
            .arg(numreplicas)
            .arg(timeout_ms)
            .query_async(c)
            .await?;
        *done = (upto, acked);
        Ok(acked)
    }
}

impl Conn {
    fn alive(&self) -> bool {
        if self.dead.load(Ordering::Acquire) {
            return false;
        }
        if let Some((t, epoch)) = &self.sentinel
            && t.epoch() != *epoch
        {
            self.dead.store(true, Ordering::Release);
            return false;
        }
        let Some(probe) = &self.probe else {
            return true;
        };
        // Non-blocking: pending reply bytes or nothing yet mean alive.
        let open = match probe.peek(&mut [0u8; 1]) {
            Ok(n) => n > 0,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        };
        if !open {
            self.dead.store(true, Ordering::Release);
        }
        open
    }

    /// After `e`, is this connection finished? (Then it is marked dead at
    /// once, not only when its driver gets to notice.)
    fn note(&self, e: &RedisError) {
        if broken(e) || read_only(e) {
            self.dead.store(true, Ordering::Release);
        }
    }
}

/// The server is a replica now (a demoted master): the command was
/// refused, nothing was written, and the connection must go.
pub(crate) fn read_only(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// An error that means the connection itself is gone (as opposed to an
/// answer from Redis, or a timeout of a command still in flight).
pub(crate) fn broken(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_io_error())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let r = self.inner.send_packed_command(cmd).await;
            if let Err(e) = &r {
                self.note(e);
            }
            r
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let r = self
                .inner
                .send_packed_commands(pipeline, offset, count)
                .await;
            if let Err(e) = &r {
                self.note(e);
            }
            r
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[derive(Default)]
struct Slot {
    live: RwLock<Option<Conn>>,
    /// Held while (re)opening this slot's connection: one attempt at a
    /// time, and callers that arrive meanwhile use its result.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn current(&self) -> Option<Conn> {
        let live = self
            .live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.as_ref().filter(|c| c.alive()).cloned()
    }
}

/// A fixed number of connections, each reopened when known dead.
pub(crate) struct Pool {
    target: Target,
    redis: RedisConnectionInfo,
    timeout: Duration,
    slots: Vec<Slot>,
}

impl Pool {
    /// A pool of `size` connections to `url`; connects none yet.
    pub(crate) fn new(
        url: &str,
        password: Option<&str>,
        tls: &TlsOptions,
        size: usize,
        timeout: Duration,
    ) -> Result<Pool, String> {
        let tls_url = url.starts_with("rediss://") || url.starts_with("valkeys://");
        // The redis crate parses the URL (user, password, db, protocol);
        // TLS is set up here, so a `rediss://` URL is parsed as `redis://`.
        let plain = if tls_url {
            let rest = url.split_once("://").map_or("", |(_, r)| r);
            if rest.contains('#') {
                return Err(
                    "a rediss:// URL takes no #fragment (no #insecure): give the CA with \
                     GIFTX_REDIS_CA_FILE"
                        .into(),
                );
            }
            format!("redis://{rest}")
        } else {
            url.to_owned()
        };
        let client = redis::Client::open(plain.as_str()).map_err(|e| e.to_string())?;
        let info = client.get_connection_info();
        let mut redis = info.redis_settings().clone();
        if let Some(p) = password {
            redis = redis.set_password(p);
        }
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) if tls_url => {
                let Some(ca) = &tls.ca_pem else {
                    return Err("a rediss:// URL needs the CA that signs the server's \
                                certificate (GIFTX_REDIS_CA_FILE)"
                        .into());
                };
                // Checked here so a bad name fails at start.
                rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("TLS server name {host}: {e}"))?;
                Target::Tls {
                    host: host.clone(),
                    port: *port,
                    connector: tls_connector(ca)?,
                }
            }
            ConnectionAddr::Tcp(host, port) => Target::Tcp {
                host: host.clone(),
                port: *port,
            },
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Target::Unix(path.clone()),
            other => return Err(format!("unsupported Redis address {other:?}")),
        };
        Ok(Pool {
            target,
            redis,
            timeout,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Connection `i` (modulo the pool size), alive as far as this process
    /// knows: a connection known dead is replaced before it is handed out.
    pub(crate) async fn get(&self, i: usize) -> Result<Conn, RedisError> {
        let slot = &self.slots[i % self.slots.len()];
        if let Some(c) = slot.current() {
            return Ok(c);
        }
        let _opening = slot.opening.lock().await;
        if let Some(c) = slot.current() {
            return Ok(c);
        }
        let c = tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to Redis timed out",
                ))
            })??;
        *slot
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }

    /// A pool of `size` connections to the master the sentinels at
    /// `sentinels` (`redis://[user:password@]host:port` each, `rediss://`
    /// for TLS to them and to the master) name `master`; connects none yet,
    /// and starts watching the sentinels for a new master.
    pub(crate) fn new_sentinel(
        sentinels: &[String],
        master: &str,
        (user, password, db): (Option<&str>, Option<&str>, i64),
        tls: &TlsOptions,
        size: usize,
        timeout: Duration,
    ) -> Result<Pool, String> {
        if sentinels.is_empty() {
            return Err("no sentinel given".into());
        }
        let tls_urls = sentinels
            .iter()
            .filter(|u| u.starts_with("rediss://"))
            .count();
        if tls_urls != 0 && tls_urls != sentinels.len() {
            return Err("the sentinel URLs mix redis:// and rediss://".into());
        }
        let mut addrs = Vec::new();
        for url in sentinels {
            let plain = match url.strip_prefix("rediss://") {
                Some(rest) => format!("redis://{rest}"),
                None => url.clone(),
            };
            let client = redis::Client::open(plain.as_str())
                .map_err(|e| format!("sentinel URL {url:?}: {e}"))?;
            let info = client.get_connection_info();
            let ConnectionAddr::Tcp(host, port) = info.addr() else {
                return Err(format!("sentinel URL {url:?}: expected redis://host:port"));
            };
            addrs.push(SentinelAddr {
                host: host.clone(),
                port: *port,
                redis: info.redis_settings().clone(),
            });
        }
        let tls = if tls_urls > 0 {
            let Some(ca) = &tls.ca_pem else {
                return Err("rediss:// sentinels need the CA that signs the servers' \
                            certificates (GIFTX_REDIS_CA_FILE)"
                    .into());
            };
            Some(tls_connector(ca)?)
        } else {
            None
        };
        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(u) = user {
            redis = redis.set_username(u);
        }
        if let Some(p) = password {
            redis = redis.set_password(p);
        }
        let target = Arc::new(SentinelTarget {
            sentinels: addrs,
            master: master.to_owned(),
            tls,
            current: RwLock::new(None),
            epoch: AtomicU64::new(0),
        });
        watch_sentinels(&target, timeout);
        Ok(Pool {
            target: Target::Sentinel(target),
            redis,
            timeout,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
        })
    }

    /// Opens a connection: socket (and TLS), AUTH/SELECT, its driver
    /// spawned on this runtime (marking it dead when it ends), and `ROLE`:
    /// how many replicas the server has, and in Sentinel mode that it
    /// really is a master (never one being demoted).
    async fn open(&self) -> Result<Conn, RedisError> {
        let mut conn = match &self.target {
            Target::Tcp { host, port } => connect(host, *port, None, &self.redis).await?,
            Target::Tls {
                host,
                port,
                connector,
            } => connect(host, *port, Some(connector), &self.redis).await?,
            #[cfg(unix)]
            Target::Unix(path) => {
                start(
                    tokio::net::UnixStream::connect(path).await?,
                    None,
                    &self.redis,
                )
                .await?
            }
            Target::Sentinel(t) => {
                let addr = t.resolve(self.timeout).await?;
                let mut c = connect(&addr.0, addr.1, t.tls.as_ref(), &self.redis).await?;
                let (master, _) = role(&mut c).await?;
                if !master {
                    return Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!(
                            "the node Sentinel names master of {} ({}:{}) is not a master yet",
                            t.master, addr.0, addr.1
                        ),
                    )));
                }
                c.wait_default = 1;
                c.sentinel = Some((t.clone(), t.learned(&addr)));
                return Ok(c);
            }
        };
        // ROLE may be refused to a restricted ACL user: then no replicas
        // are assumed.
        if let Ok((_, replicas)) = role(&mut conn).await {
            conn.wait_default = replicas.min(1);
        }
        Ok(conn)
    }
}

/// `ROLE`: is the server a master, and with how many replicas.
async fn role(c: &mut Conn) -> Result<(bool, usize), RedisError> {
    let v: Vec<Value> = redis::cmd("ROLE").query_async(c).await?;
    let master = matches!(v.first(), Some(Value::BulkString(b)) if b == b"master");
    let replicas = match v.get(2) {
        Some(Value::Array(r)) if master => r.len(),
        _ => 0,
    };
    Ok((master, replicas))
}

/// A connection to `host:port` (over TLS with `tls`, the host being the
/// name checked in the certificate), authenticated as `redis` says.
async fn connect(
    host: &str,
    port: u16,
    tls: Option<&tokio_rustls::TlsConnector>,
    redis: &RedisConnectionInfo,
) -> Result<Conn, RedisError> {
    let (s, probe) = tcp(host, port).await?;
    match tls {
        None => start(s, Some(probe), redis).await,
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "bad TLS server name",
                    format!("{host}: {e}"),
                ))
            })?;
            let s = connector.connect(name, s).await?;
            start(s, Some(probe), redis).await
        }
    }
}

/// Starts the multiplexed connection over `stream` and its driver task.
async fn start<S>(
    stream: S,
    probe: Option<std::net::TcpStream>,
    redis: &RedisConnectionInfo,
) -> Result<Conn, RedisError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // No response timeout here: every call has its own deadline.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (inner, driver) = MultiplexedConnection::new_with_config(redis, stream, config).await?;
    let dead = Arc::new(AtomicBool::new(false));
    let flag = dead.clone();
    tokio::spawn(async move {
        driver.await;
        flag.store(true, Ordering::Release);
    });
    Ok(Conn {
        inner,
        dead,
        probe: probe.map(Arc::new),
        sentinel: None,
        wait_default: 0,
        waits: Arc::new(WaitGroup::default()),
    })
}

/// A TCP connection, and a second handle on its socket for [`Conn::alive`].
async fn tcp(
    host: &str,
    port: u16,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let s = tokio::net::TcpStream::connect((host, port)).await?;
    s.set_nodelay(true)?;
    let s = s.into_std()?;
    // Both handles share one file description, non-blocking as tokio
    // needs it.
    let probe = s.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(s)?, probe))
}

fn tls_connector(ca_pem: &[u8]) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the Redis CA file is not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the Redis CA file holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the Redis CA file holds no PEM certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Runs `call` on connection `i` of `pool`, retrying once on a fresh
/// connection as [`Rerun`] allows, all within `timeout` (then
/// `Unavailable("<what> timed out")`).
///
/// # Errors
/// The last error, mapped by [`map_err`](super::map_err).
pub(crate) async fn with_retry<T, F, Fut>(
    pool: &Pool,
    i: usize,
    rerun: Rerun,
    (timeout, what): (Duration, &str),
    call: F,
) -> Result<T, LedgerError>
where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let attempt = async {
        let mut retried = false;
        loop {
            let conn = match pool.get(i).await {
                Ok(c) => c,
                // Nothing was sent: any command may go again, once.
                Err(e) if !retried && broken(&e) => {
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match call(conn).await {
                Err(e) if !retried && rerun == Rerun::Safe && broken(&e) => {
                    tracing::debug!(what, error = %e, "Redis connection broke; read retried");
                    retried = true;
                }
                // A demoted master refused it (nothing was written): once
                // more, on a connection to the master Sentinel names now.
                Err(e) if !retried && read_only(&e) => {
                    tracing::debug!(what, error = %e, "Redis refused a write as a replica; retried");
                    retried = true;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(super::map_err),
        Err(_) => Err(LedgerError::Unavailable(format!("{what} timed out"))),
    }
}
