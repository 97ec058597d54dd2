//! What the tests that run the giftxd binary share: a free port, the
//! child process (killed when dropped) and a channel to it.
//!
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use giftx_testkit::RedisServer;
use tonic::transport::Channel;

/// A temporary directory holding what [`start_giftxd_with`] reads:
/// `giftx.toml` (`config`), `hmac.key`, `deliverable.keys`, and with
/// `admin` an `admin.token` for GIFTX_ADMIN_TOKEN_FILE.
pub fn giftxd_dir(config: &str, admin: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("giftx.toml"), config).unwrap();
    std::fs::write(d.join("hmac.key"), [7u8; 32]).unwrap();
    std::fs::write(d.join("deliverable.keys"), "ab".repeat(32)).unwrap();
    if let Some(token) = admin {
        std::fs::write(d.join("admin.token"), token).unwrap();
    }
    dir
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A giftxd child process, killed when dropped so a failing test leaves
/// no server behind.
pub struct Giftxd(Child);

impl Giftxd {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Giftxd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// giftxd on `redis`, with `dir`'s `giftx.toml`, `hmac.key` and
/// `deliverable.keys`, listening on `port`.
pub fn start_giftxd(dir: &Path, redis: &RedisServer, port: u16) -> Giftxd {
    start_giftxd_with(dir, port, &[("GIFTX_REDIS_URL", redis.url())])
}

/// As [`start_giftxd`], with `env` instead of the Redis URL; returns once
/// giftxd says it listens. Its WARN and ERROR lines go to stderr.
pub fn start_giftxd_with(dir: &Path, port: u16, env: &[(&str, String)]) -> Giftxd {
    let mut c = Command::new(env!("CARGO_BIN_EXE_giftxd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GIFTX_") || k == "RUST_LOG" || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    let mut child = c
        .arg("--config")
        .arg(dir.join("giftx.toml"))
        .env("GIFTX_LISTEN", format!("127.0.0.1:{port}"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GIFTX_HMAC_KEY_FILE", dir.join("hmac.key"))
        .env("GIFTX_DELIVERABLE_KEYS_FILE", dir.join("deliverable.keys"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("giftxd ended early").unwrap();
        if line.contains("listening on") {
            break;
        }
    }
    let child = Giftxd(child);
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if l.contains("WARN") || l.contains("ERROR") {
                eprintln!("giftxd: {l}");
            }
        }
    });
    child
}

/// A connected channel to the giftxd on `port`.
pub async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A channel to the giftxd on `port` over TLS, trusting `ca` (PEM file),
/// presenting `identity` (certificate and key PEM files) when given.
pub async fn tls_channel(
    port: u16,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}
