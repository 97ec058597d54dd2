//! The one error type of giftctl. Every variant displays as one line, which
//! `main` prints before exiting non-zero.

use std::io;

use crate::rpc;

/// Why a giftctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// giftxd could not be reached.
    #[error(
        "cannot connect to giftxd at {addr}: {detail} (is giftxd running? set --addr or GIFTX_ADDR)"
    )]
    Connect {
        /// The address tried.
        addr: String,
        /// The transport error and its causes, on one line.
        detail: String,
    },
    /// An RPC answered with a non-OK status.
    #[error("{rpc} failed: {}", rpc::describe_status(.status))]
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

/// giftctl's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
