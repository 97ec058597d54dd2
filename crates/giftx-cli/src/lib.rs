//! giftctl, the giftx operator CLI: a gRPC client of giftxd.
//!
//! - [`cli`]: the command line (clap) and the parsers of its values.
//! - [`rpc`]: connecting to giftxd (plaintext or TLS, mTLS, the API token
//!   on every call); one-line descriptions of failed calls (AIP-193
//!   details decoded, hints for authentication and TLS failures).
//! - [`issuance`], [`issue`], [`expiry`], [`exchange`], [`operations`],
//!   [`access`], [`demo`]: the commands, one module per area.
//! - [`stock_csv`]: the stock file an operator imports (CSV, maybe gzip).
//! - [`vendor_csv`]: the print vendor's code file (CSV, maybe gzip),
//!   written safely.
//! - [`render`]: text for humans and JSON for scripts.
//! - [`time`]: RFC 3339 timestamps, short durations, the zone times are
//!   shown in.
//! - [`confirm`]: confirmation before destructive commands.

pub mod access;
pub mod cli;
pub mod confirm;
pub mod demo;
pub mod error;
pub mod exchange;
pub mod expiry;
pub mod issuance;
pub mod issue;
pub mod operations;
pub mod render;
pub mod rpc;
pub mod stock_csv;
pub mod time;
pub mod vendor_csv;

pub use cli::Cli;
pub use error::{Error, Result};

use cli::Command;
use render::Output;

/// Runs one parsed command line.
///
/// # Errors
/// Whatever the command fails with; its `Display` is one line.
pub async fn run(cli: Cli) -> Result<()> {
    let out = Output { json: cli.json };
    time::set_display_zone(if cli.utc {
        time::DisplayZone::Utc
    } else if let Some(offset) = cli.typed_offset() {
        time::DisplayZone::Fixed(offset)
    } else {
        time::DisplayZone::local()
    });
    let mut clients = rpc::connect_with(&cli.connect_options()?).await?;
    let c = &mut clients;
    match cli.command {
        Command::Campaign(cmd) => issuance::campaign(c, out, cmd).await,
        Command::Batch(cmd) => issuance::batch(c, out, cmd).await,
        Command::Issue(args) => issue::run(c, out, args).await,
        Command::Expiry(cmd) => expiry::expiry(c, out, cmd).await,
        Command::Pending(cmd) => expiry::pending(c, out, cmd).await,
        Command::Verify(args) => exchange::verify(c, out, args).await,
        Command::Exchange(args) => exchange::exchange(c, out, args).await,
        Command::ShowExchange(args) => exchange::show(c, out, args).await,
        Command::Stock(cmd) => operations::stock(c, out, cmd).await,
        Command::Shipments(cmd) => operations::shipments(c, out, cmd).await,
        Command::Preferences(cmd) => operations::preferences(c, out, cmd).await,
        Command::Demo => demo::run(c, out).await,
        Command::Keys(cmd) => access::keys(c, out, cmd).await,
        Command::Audit(cmd) => access::audit(c, out, cmd).await,
    }
}
