//! A private `redis-server` for tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process owned by a test. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// With [`RedisServer::start_tls`]: the TLS port (the plain `port`
    /// then needs the admin password).
    tls: Option<u16>,
}

/// The ACL user a TLS server of [`RedisServer::start_tls`] has for giftx.
pub const ACL_USER: &str = "giftx";
/// Its password.
pub const ACL_PASSWORD: &str = "giftx-acl-pa55";
/// The `default` user's password on a TLS server (admin, plain port).
const ADMIN_PASSWORD: &str = "admin-pa55";

fn free_port() -> u16 {
    // Bind port 0, read the port, let it go: redis-server takes it next.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a fresh server (AOF on, fsync on every write) on a free port.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not come up within 10 s: a
    /// test cannot run without it.
    pub fn start() -> RedisServer {
        // A port can be taken between probe and bind: retry a few times.
        for _ in 0..5 {
            let mut s = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir for redis"),
                tls: None,
            };
            if s.spawn().is_ok() {
                return s;
            }
        }
        panic!("could not start redis-server (is it installed? `apt-get install redis-server`)");
    }

    /// Starts a server that also serves TLS on [`RedisServer::tls_url`],
    /// with a throwaway CA ([`RedisServer::ca_file`]) and server
    /// certificate for 127.0.0.1 made by the `openssl` CLI, an ACL user
    /// [`ACL_USER`] / [`ACL_PASSWORD`] with every right, and the `default`
    /// user behind a password (so a client without credentials is refused).
    ///
    /// # Panics
    /// When `openssl` or a TLS-enabled `redis-server` is missing.
    pub fn start_tls() -> RedisServer {
        for _ in 0..5 {
            let mut s = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir for redis"),
                tls: Some(free_port()),
            };
            s.make_certificates();
            if s.spawn().is_ok() {
                return s;
            }
        }
        panic!("could not start a TLS redis-server (is it built with TLS?)");
    }

    fn make_certificates(&self) {
        crate::pki::TestPki::new(self.dir.path(), "giftx test CA");
    }

    /// `rediss://127.0.0.1:<tls port>/` (no credentials) of a server
    /// started with [`RedisServer::start_tls`].
    ///
    /// # Panics
    /// On a server without TLS.
    pub fn tls_url(&self) -> String {
        let port = self.tls.expect("a server started with start_tls");
        format!("rediss://127.0.0.1:{port}/")
    }

    /// The PEM file of the CA that signed the TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
            ])
            .arg(self.dir.path().join("redis.log"))
            .args(self.tls_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(tls) = self.tls else {
            return Vec::new();
        };
        let f = |n: &str| self.dir.path().join(n).display().to_string();
        vec![
            "--tls-port".into(),
            tls.to_string(),
            "--tls-cert-file".into(),
            f("server.crt"),
            "--tls-key-file".into(),
            f("server.key"),
            "--tls-ca-cert-file".into(),
            f("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            ADMIN_PASSWORD.into(),
            "--user".into(),
            ACL_USER.into(),
            "on".into(),
            format!(">{ACL_PASSWORD}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ]
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("redis-server exited: {status}"));
            }
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                // Loading the AOF answers LOADING errors; PING succeeds
                // only once the data is back.
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("redis-server did not become ready".into())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/` (with the admin password on a server
    /// started with [`RedisServer::start_tls`]).
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(_) => format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{}/", self.port),
        }
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// A blocking client connection.
    ///
    /// # Panics
    /// When the server is down.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }

    /// Deletes every key (between tests sharing one server).
    pub fn flushall(&self) {
        let mut c = self.connection();
        redis::cmd("FLUSHALL")
            .query::<()>(&mut c)
            .expect("FLUSHALL");
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query::<()>(&mut c)
            .expect("SCRIPT FLUSH");
    }

    /// Kills the server with SIGKILL (no shutdown, no final fsync).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory; it
    /// reloads the AOF.
    ///
    /// # Panics
    /// When it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis restart failed: {e}"),
                // The port may linger a moment after the kill.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Is the server process running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
