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
use std::sync::atomic::{AtomicBool, Ordering};
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
        name: rustls::pki_types::ServerName<'static>,
    },
    #[cfg(unix)]
    Unix(PathBuf),
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
}

impl Conn {
    fn alive(&self) -> bool {
        if self.dead.load(Ordering::Acquire) {
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
        if broken(e) {
            self.dead.store(true, Ordering::Release);
        }
    }
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
                Target::Tls {
                    host: host.clone(),
                    port: *port,
                    connector: tls_connector(ca)?,
                    name: rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| format!("TLS server name {host}: {e}"))?,
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

    /// Opens a connection: socket (and TLS), AUTH/SELECT, and its driver
    /// spawned on this runtime, marking it dead when it ends.
    async fn open(&self) -> Result<Conn, RedisError> {
        match &self.target {
            Target::Tcp { host, port } => {
                let (s, probe) = tcp(host, *port).await?;
                self.start(s, Some(probe)).await
            }
            Target::Tls {
                host,
                port,
                connector,
                name,
            } => {
                let (s, probe) = tcp(host, *port).await?;
                let s = connector.connect(name.clone(), s).await?;
                self.start(s, Some(probe)).await
            }
            #[cfg(unix)]
            Target::Unix(path) => {
                self.start(tokio::net::UnixStream::connect(path).await?, None)
                    .await
            }
        }
    }

    async fn start<S>(
        &self,
        stream: S,
        probe: Option<std::net::TcpStream>,
    ) -> Result<Conn, RedisError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // No response timeout here: every call has its own deadline.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let (inner, driver) =
            MultiplexedConnection::new_with_config(&self.redis, stream, config).await?;
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
        })
    }
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
                other => return other,
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(super::map_err),
        Err(_) => Err(LedgerError::Unavailable(format!("{what} timed out"))),
    }
}
