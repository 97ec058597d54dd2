//! The giftxd binary: says where it listens, stops cleanly on SIGTERM,
//! refuses a Redis ledger without an HMAC key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn giftxd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_giftxd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GIFTX_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn giftxd_logs_its_address_and_exits_zero_on_sigterm() {
    let mut child = giftxd()
        .env("GIFTX_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let listening = loop {
        let line = lines
            .next()
            .expect("giftxd ended before saying where it listens")
            .unwrap();
        if line.contains("listening on") {
            break line;
        }
    };
    assert!(listening.contains("embedded ledger"), "{listening}");
    assert!(
        listening.contains("demo campaign demo-2014 seeded"),
        "{listening}"
    );
    let addr = listening
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_owned();
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .expect("giftxd accepts connections");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "giftxd exit status");
}

#[test]
fn giftxd_refuses_redis_without_an_hmac_key() {
    let out = giftxd()
        .env("GIFTX_LISTEN", "127.0.0.1:0")
        .env("GIFTX_REDIS_URL", "redis://127.0.0.1:1/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GIFTX_HMAC_KEY_FILE"), "{stderr}");
}

#[test]
fn giftxd_refuses_an_unknown_service() {
    let out = giftxd()
        .args(["--services", "exchange,bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
}
