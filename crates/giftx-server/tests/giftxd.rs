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

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// GETs `/metrics` and returns the value of the unlabelled sample `name`.
fn scrape_value(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: giftxd\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
fn giftxd_counts_and_logs_trace_export_failures() {
    let metrics = format!("127.0.0.1:{}", closed_port());
    let mut child = giftxd()
        .env("GIFTX_LISTEN", "127.0.0.1:0")
        .env("GIFTX_METRICS_LISTEN", &metrics)
        .env("GIFTX_LOG_FORMAT", "json")
        // A collector that is down.
        .env(
            "GIFTX_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", closed_port()),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split([' ', '"']).next().map(str::to_owned);
            break;
        }
    }
    let addr = addr.expect("giftxd says where it listens");
    // The export failure counter exists before anything failed.
    let mut first = None;
    for _ in 0..100 {
        first = scrape_value(&metrics, "giftx_trace_export_failures_total");
        if first.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        first,
        Some(0.0),
        "giftx_trace_export_failures_total at start"
    );
    // RPCs make spans; the exporter cannot deliver them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for _ in 0..5 {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("Health/Check");
        }
    });
    // Logged (JSON line) and counted.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("trace export failed") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let logged = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("giftxd logs that trace export failed");
    let v: serde_json::Value = serde_json::from_str(&logged).expect("a JSON log line");
    assert_eq!(v["level"], "WARN", "{logged}");
    assert!(v["total"].as_u64().is_some_and(|n| n >= 1), "{logged}");
    let failures = scrape_value(&metrics, "giftx_trace_export_failures_total").unwrap_or(0.0);
    assert!(
        failures >= 1.0,
        "giftx_trace_export_failures_total = {failures}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
