//! giftxd: the giftx gRPC server.
//!
//! With no configuration it listens on 127.0.0.1:50051 with the embedded
//! ledger and a demo campaign. See `giftx_server::config` for every
//! setting (and `giftx_server::telemetry` for `OTEL_EXPORTER_OTLP_ENDPOINT`);
//! SIGTERM or SIGINT shut it down gracefully (exit 0), flushing traces.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use giftx_server::Config;

// glibc malloc was ~15 % of giftxd's samples on the Exchange path
// (BENCHMARKS.md profile): many short-lived futures and buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `giftxd --help` says first: what the program is for its users.
const ABOUT: &str = "giftxd, the giftx gift-code exchange broker: issues bearer codes for a \
campaign, exchanges each code exactly once for a provider's gift, and enforces each \
campaign's deadline (gRPC API giftx.v1).";

/// What `giftxd --help` says after the options.
const AFTER_HELP: &str = "\
With no configuration giftxd listens on 127.0.0.1:50051 with the embedded in-memory ledger \
and seeds the demo campaigns: run `giftctl demo` in another terminal.

Settings come from --config FILE, then GIFTX_* environment variables, then flags. The ones \
to know first:
  GIFTX_LISTEN                 gRPC address (default 127.0.0.1:50051)
  GIFTX_REDIS_URL              Redis ledger (default: embedded, state lost on exit)
  GIFTX_HMAC_KEY_FILE          key for the hashes of codes (required with Redis)
  GIFTX_DELIVERABLE_KEYS_FILE  deliverable encryption keys (required with Redis)
  GIFTX_SERVICES               issuance,exchange,expiry (default all)
  GIFTX_METRICS_LISTEN         Prometheus /metrics address
Every setting: README.md (Configuration); running it in production: docs/OPERATING.md.
SIGTERM or SIGINT shut it down gracefully.";

/// giftx gift-code exchange broker (gRPC server).
#[derive(Debug, Parser)]
#[command(name = "giftxd", version, about = ABOUT, after_help = AFTER_HELP)]
struct Args {
    /// TOML configuration file; GIFTX_* environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Services to serve, comma-separated: issuance,exchange,expiry
    /// (overrides GIFTX_SERVICES; default all).
    #[arg(long, value_name = "LIST")]
    services: Option<String>,
}

/// Registers SIGTERM and SIGINT handlers now (so a signal that arrives
/// during start-up is not fatal) and returns a future that resolves on
/// either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref(), args.services.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("giftxd: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("giftxd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter is a tonic client.
    let telemetry = match runtime.block_on(async { giftx_server::telemetry::init(&config.log) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("giftxd: telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let shutdown =
            shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        giftx_server::run(config, listener, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    // Spans still buffered are exported while the runtime is alive.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("giftxd: {e}");
            ExitCode::FAILURE
        }
    }
}
