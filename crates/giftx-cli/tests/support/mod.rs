//! Real processes for giftctl's end-to-end tests: a private `redis-server`
//! (giftx-testkit) and the `giftxd` binary on it, started as
//! docs/OPERATING.md says (HMAC key and deliverable key files, made like
//! `openssl rand -hex 32 > …`, and `GIFTX_REDIS_URL`).
//!
//! Cargo builds only this package's binaries (`giftctl`) for its tests, so
//! `giftxd` is built here with `cargo build` into the same target
//! directory (a no-op when it is fresh).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use giftx_testkit::RedisServer;

/// The `giftctl` binary under test.
pub fn giftctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_giftctl"))
}

/// The `giftxd` binary beside `giftctl`, built (or found fresh) once per
/// test binary.
pub fn giftxd() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let ctl = giftctl();
        let profile_dir = ctl.parent().expect("giftctl's directory");
        let target_dir = profile_dir.parent().expect("target directory");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(&workspace)
            .args(["build", "--locked", "-p", "giftx-server", "--bin", "giftxd"])
            .arg("--target-dir")
            .arg(target_dir);
        if release {
            c.arg("--release");
        }
        let status = c.status().expect("run cargo build for giftxd");
        assert!(status.success(), "cargo build of giftxd failed");
        let bin = profile_dir.join("giftxd");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// 64 random hex characters and a newline, as `openssl rand -hex 32` prints.
fn hex_key() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random");
    let mut s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    s.push('\n');
    s
}

/// giftxd on a private Redis, killed (with its Redis) when dropped.
pub struct Giftxd {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// Holds giftx.toml and the key files.
    pub dir: tempfile::TempDir,
    /// The private Redis.
    pub redis: RedisServer,
}

impl Drop for Giftxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Giftxd {
    /// Starts giftxd with `config` (TOML; may be empty) on a fresh Redis
    /// and waits until it listens.
    pub fn start(config: &str) -> Giftxd {
        Giftxd::start_with(config, &[])
    }

    /// As [`Giftxd::start`], with more environment (`GIFTX_TLS_CERT_FILE`,
    /// `GIFTX_ADMIN_TOKEN_FILE`, …). `addr` is `https://127.0.0.1:PORT`
    /// when giftxd serves TLS.
    pub fn start_with(config: &str, env: &[(&str, &std::ffi::OsStr)]) -> Giftxd {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("giftx.toml"), config).expect("config");
        std::fs::write(dir.path().join("hmac.key"), hex_key()).expect("hmac.key");
        std::fs::write(dir.path().join("deliverable.keys"), hex_key()).expect("keys");
        let port = free_port();
        let mut c = Command::new(giftxd());
        for (k, _) in std::env::vars() {
            if k.starts_with("GIFTX_") || k == "RUST_LOG" || k.starts_with("OTEL_") {
                c.env_remove(k);
            }
        }
        let mut child = c
            .arg("--config")
            .arg(dir.path().join("giftx.toml"))
            .env("GIFTX_LISTEN", format!("127.0.0.1:{port}"))
            .env("GIFTX_REDIS_URL", redis.url())
            .env("GIFTX_HMAC_KEY_FILE", dir.path().join("hmac.key"))
            .env(
                "GIFTX_DELIVERABLE_KEYS_FILE",
                dir.path().join("deliverable.keys"),
            )
            .env("GIFTX_LOG_FORMAT", "text")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn giftxd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            let line = lines
                .next()
                .expect("giftxd ended before listening")
                .expect("read giftxd log");
            if line.contains("listening on") {
                break;
            }
        }
        let tls = env.iter().any(|(k, _)| *k == "GIFTX_TLS_CERT_FILE");
        let scheme = if tls { "https" } else { "http" };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if l.contains("WARN") || l.contains("ERROR") {
                    eprintln!("giftxd: {l}");
                }
            }
        });
        Giftxd {
            child,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            dir,
            redis,
        }
    }
}
