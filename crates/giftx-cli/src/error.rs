//! The one error type of giftctl. Every variant displays as one line, which
//! `main` prints before exiting non-zero; under `--json` it is also printed
//! on stdout as one JSON object ([`Error::to_json`]).

use std::io;

use serde_json::{Value, json};

use crate::rpc;

/// Why a giftctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// giftxd could not be reached, or the TLS handshake with it failed.
    #[error("cannot connect to giftxd at {addr}: {detail} ({hint})")]
    Connect {
        /// The address tried.
        addr: String,
        /// The transport error and its causes, on one line.
        detail: String,
        /// What to try (`is giftxd running? …`, which CA to trust, …).
        hint: String,
    },
    /// An RPC answered with a non-OK status.
    #[error("{}", rpc::describe_rpc_failure(rpc, status))]
    Rpc {
        /// The RPC's name, e.g. `CreateCampaign`.
        rpc: &'static str,
        /// The status giftxd answered.
        status: Box<tonic::Status>,
    },
    /// Something given on the command line is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A local file or terminal operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command ran but its outcome is a failure (a short issue stream, a
    /// demo step that did not end as the story says).
    #[error("{0}")]
    Failed(String),
    /// A command ran but some of what it was given was not acted on; the
    /// details say what (e.g. references that match no order).
    #[error("{message}")]
    Partial {
        /// One line for humans.
        message: String,
        /// The ErrorInfo-style reason, e.g. `UNKNOWN_REFERENCES`.
        reason: &'static str,
        /// What was and was not done, for `--json`.
        details: Value,
    },
}

impl Error {
    /// An [`Error::Rpc`] for `rpc`.
    pub fn rpc(rpc: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |status| Error::Rpc {
            rpc,
            status: Box::new(status),
        }
    }

    /// An [`Error::Io`] while doing `context`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl Error {
    /// Whether this is stdout (or another pipe) closed by its reader, as
    /// with `giftctl … | head`: nothing to report.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The error as one JSON object for `--json`:
    /// `{"error": {"code", "reason", "message", "details", …}}`. `code` is
    /// the gRPC status code giftxd answered, or for failures on giftctl's
    /// side the nearest one (`source` tells which side).
    pub fn to_json(&self) -> Value {
        let text = self.to_string();
        let local = |code: &str, reason: &str, details: Value| {
            json!({"error": {
                "source": "giftctl",
                "code": code,
                "reason": reason,
                "message": text,
                "details": details,
            }})
        };
        match self {
            Error::Rpc { rpc, status } => {
                let mut details = rpc::status_details_json(status);
                let mut reason = rpc::reason(status).unwrap_or_default();
                if let Some(service) = rpc::service_not_served(rpc, status) {
                    reason = "SERVICE_NOT_SERVED".to_owned();
                    details["service_not_served"] = json!({
                        "service": service.full_name,
                        "giftx_services": service.giftx_services,
                    });
                }
                json!({"error": {
                    "source": "giftxd",
                    "rpc": rpc,
                    "code": rpc::code_name(status.code()),
                    "reason": reason,
                    "message": status.message(),
                    "details": details,
                    "text": text,
                }})
            }
            Error::Connect { addr, hint, .. } => local(
                "UNAVAILABLE",
                "GIFTXD_UNREACHABLE",
                json!({"addr": addr, "hint": hint}),
            ),
            Error::Invalid(_) => local("INVALID_ARGUMENT", "INVALID_COMMAND_LINE", json!({})),
            Error::Io { context, source } => local(
                "UNKNOWN",
                "LOCAL_IO_ERROR",
                json!({"context": context, "io_error": source.to_string()}),
            ),
            Error::Failed(_) => local("UNKNOWN", "COMMAND_FAILED", json!({})),
            Error::Partial {
                reason, details, ..
            } => local("FAILED_PRECONDITION", reason, details.clone()),
        }
    }
}

/// giftctl's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
