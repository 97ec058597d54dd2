//! `giftx-portal`: serves the apology portal.
//!
//! Settings (environment): `GIFTX_PORTAL_LISTEN` (default
//! `127.0.0.1:8080`), `GIFTX_ADDR` (giftxd, default
//! `http://127.0.0.1:50051`; `https://` for TLS, checked against
//! `GIFTX_CA_CERT` when set), `GIFTX_TOKEN` or `GIFTX_TOKEN_FILE` (the
//! portal's API key, a `portal` key), `GIFTX_PORTAL_SECURE_COOKIES` (`true` behind
//! HTTPS), `GIFTX_LOG` / `RUST_LOG` (default `info`). Logs go to stderr.

use std::net::SocketAddr;
use std::process::ExitCode;

use giftx_portal::{Portal, Settings};
use tracing_subscriber::EnvFilter;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = env("GIFTX_LOG")
        .or_else(|| env("RUST_LOG"))
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("giftx-portal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let listen = env("GIFTX_PORTAL_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listen: SocketAddr = listen.parse().map_err(|_| {
        format!("GIFTX_PORTAL_LISTEN {listen:?} is not an address like 127.0.0.1:8080")
    })?;
    let mut settings = Settings::default();
    if let Some(a) = env("GIFTX_ADDR") {
        settings.giftx_addr = a;
    }
    settings.token = match (env("GIFTX_TOKEN"), env("GIFTX_TOKEN_FILE")) {
        (Some(_), Some(_)) => {
            return Err("set GIFTX_TOKEN or GIFTX_TOKEN_FILE, not both".into());
        }
        (Some(t), None) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| format!("cannot read GIFTX_TOKEN_FILE {f}: {e}"))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(f) = env("GIFTX_CA_CERT") {
        settings.ca_cert_pem =
            Some(std::fs::read(&f).map_err(|e| format!("cannot read GIFTX_CA_CERT {f}: {e}"))?);
    }
    if let Some(v) = env("GIFTX_PORTAL_SECURE_COOKIES") {
        settings.secure_cookies = match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(format!(
                    "GIFTX_PORTAL_SECURE_COOKIES {v:?} must be true or false"
                ));
            }
        };
    }
    let addr = settings.giftx_addr.clone();
    let portal = Portal::new(settings).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %local, giftxd = %addr, "giftx-portal serving");
    axum::serve(
        listener,
        portal
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .map_err(|e| e.to_string())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
