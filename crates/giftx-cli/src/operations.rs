//! `giftctl stock …`, `shipments …`, `preferences …` (OperationsService).
//!
//! `stock import` checks the whole file first (every problem reported with
//! its line, nothing sent if any), then streams it in chunks of
//! [`IMPORT_CHUNK`] items with progress on stderr. Imports are idempotent:
//! after a failure, importing the same file again counts what got in as
//! duplicates.
//!
//! The exports are written like `issue`'s code files (see
//! [`crate::vendor_csv`]): to `FILE.partial`, fsynced, then put in place;
//! an existing file is never overwritten.

use std::path::{Path, PathBuf};
use std::time::Instant;

use giftx_proto::v1::{
    GetStockStatusRequest, ImportStockRequest, ImportStockResponse, ListPreferencesRequest,
    ListShipmentsRequest, MarkShippedRequest, MarkShippedResponse, ShipmentState, StockItem,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cli::{
    MarkShippedArgs, PreferencesCommand, ShipmentStateFilter, ShipmentsCommand,
    ShipmentsExportArgs, StockCommand, StockImportArgs,
};
use crate::error::{Error, Result};
use crate::issuance::campaign_name;
use crate::issue::{Progress, rate, rate_text};
use crate::render::Output;
use crate::rpc::{Clients, describe_status};
use crate::stock_csv::{self, StockReader};
use crate::time::format_rfc3339;
use crate::vendor_csv::VendorCsv;

/// Items per ImportStock message (the server takes up to 10,000).
pub const IMPORT_CHUNK: usize = 5_000;
/// References per MarkShipped call (the server's limit).
pub const MARK_CHUNK: usize = 10_000;
/// Orders or preferences asked for per page.
const EXPORT_PAGE: i32 = 5_000;
/// Header of `shipments export`.
/// (`reference` first: `mark-shipped --file` reads the export back; the
/// address may span lines inside its quoted field.)
pub const SHIPMENTS_HEADER: &[u8] = b"reference,state,create_time,ship_time,tracking,campaign,batch,serial,option_id,shipping_address\n";
/// Header of `preferences export`.
pub const PREFERENCES_HEADER: &[u8] =
    b"exchange,batch,serial,delete_personal_data,stop_mail,create_time\n";

/// Runs a `stock` subcommand.
///
/// # Errors
/// What the RPC or the file fails with.
pub async fn stock(clients: &mut Clients, out: Output, cmd: StockCommand) -> Result<()> {
    match cmd {
        StockCommand::Import(args) => import(clients, out, args).await,
        StockCommand::Status { provider } => {
            let s = clients
                .operations
                .get_stock_status(GetStockStatusRequest {
                    provider: provider.clone(),
                })
                .await
                .map_err(Error::rpc("GetStockStatus"))?
                .into_inner();
            out.emit(
                || {
                    json!({
                        "provider": s.provider,
                        "available": s.available,
                        "handed_out": s.handed_out,
                    })
                },
                |w| {
                    writeln!(w, "provider    {}", s.provider)?;
                    writeln!(w, "available   {}", s.available)?;
                    writeln!(w, "handed out  {}", s.handed_out)
                },
            )
        }
    }
}

/// What the reading side of an import did.
struct Sent {
    items: u64,
    /// The file could not be read to the end (it changed since the check?).
    failed: Option<String>,
    progress: Progress,
}

/// Reads `path` and sends it in chunks on `tx` until the end of the file
/// or the receiver goes away. Runs on the blocking pool.
fn send_file(
    path: &Path,
    provider: &str,
    tx: &mpsc::Sender<ImportStockRequest>,
    mut progress: Progress,
) -> Sent {
    let mut sent = 0u64;
    let fail = |progress: Progress, sent: u64, msg: String| Sent {
        items: sent,
        failed: Some(msg),
        progress,
    };
    let mut reader = match StockReader::open(path) {
        Ok(r) => r,
        Err(e) => return fail(progress, sent, e.to_string()),
    };
    let mut chunk: Vec<StockItem> = Vec::with_capacity(IMPORT_CHUNK);
    loop {
        let row = reader.next_row();
        let end = row.is_none();
        match row {
            None => {}
            Some(Err(e)) => return fail(progress, sent, format!("{}: {e}", path.display())),
            Some(Ok(r)) => chunk.push(StockItem {
                code: r.code,
                pin: r.pin,
                expire_time: r.expire_time,
            }),
        }
        if chunk.len() == IMPORT_CHUNK || (end && !chunk.is_empty()) {
            let n = chunk.len() as u64;
            let msg = ImportStockRequest {
                provider: provider.to_owned(),
                items: std::mem::replace(&mut chunk, Vec::with_capacity(IMPORT_CHUNK)),
            };
            if tx.blocking_send(msg).is_err() {
                // The call ended (refused or broken): it says why.
                break;
            }
            sent += n;
            progress.update(sent);
        }
        if end {
            break;
        }
    }
    Sent {
        items: sent,
        failed: None,
        progress,
    }
}

async fn import(clients: &mut Clients, out: Output, args: StockImportArgs) -> Result<()> {
    let started = Instant::now();
    let path = args.file.clone();
    let total = tokio::task::spawn_blocking(move || stock_csv::check_file(&path))
        .await
        .map_err(|e| Error::Failed(format!("checking the file failed: {e}")))??;
    if !out.json {
        eprintln!(
            "{} holds {total} items; importing into {}…",
            args.file.display(),
            args.provider
        );
    }
    let (tx, rx) = mpsc::channel::<ImportStockRequest>(2);
    let progress = Progress::labelled(total, "sent", "items");
    let (path, provider) = (args.file.clone(), args.provider.clone());
    let reader = tokio::task::spawn_blocking(move || send_file(&path, &provider, &tx, progress));
    let response = clients
        .operations
        .import_stock(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let sent = reader
        .await
        .map_err(|e| Error::Failed(format!("reading the file failed: {e}")))?;
    let again = format!(
        "importing {} again is safe: items already in count as duplicates",
        args.file.display()
    );
    let r: ImportStockResponse = match (response, sent.failed) {
        (Err(status), _) => {
            sent.progress.abandon();
            // A refusal (bad provider, bad item) is the server's answer to
            // the first message that had it: report it as it is.
            let refused = matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            );
            return Err(if refused || sent.items == 0 {
                Error::rpc("ImportStock")(status)
            } else {
                Error::Failed(format!(
                    "ImportStock failed after {} of {total} items were sent: {}; {again}",
                    sent.items,
                    describe_status(&status)
                ))
            });
        }
        (Ok(r), Some(cause)) => {
            sent.progress.abandon();
            let r = r.into_inner();
            return Err(Error::Failed(format!(
                "{cause}; only {} of {total} items were sent ({} added, {} duplicates); {again}",
                sent.items, r.added, r.duplicates
            )));
        }
        (Ok(r), None) => {
            sent.progress.finish();
            r.into_inner()
        }
    };
    if sent.items != total {
        return Err(Error::Failed(format!(
            "{} of {total} items were sent ({} added, {} duplicates): the file changed while \
             importing? {again}",
            sent.items, r.added, r.duplicates
        )));
    }
    let elapsed = started.elapsed();
    out.emit(
        || {
            json!({
                "provider": r.provider,
                "file": args.file.display().to_string(),
                "items": total,
                "added": r.added,
                "duplicates": r.duplicates,
                "available": r.available,
                "seconds": elapsed.as_secs_f64(),
            })
        },
        |w| {
            writeln!(
                w,
                "imported {} into {} in {:.1} s ({}): {} added, {} duplicates skipped; {} available",
                args.file.display(),
                r.provider,
                elapsed.as_secs_f64(),
                rate_text(rate(total, elapsed), "items"),
                r.added,
                r.duplicates,
                r.available
            )
        },
    )
}

/// Runs a `shipments` subcommand.
///
/// # Errors
/// What the RPC or the file fails with.
pub async fn shipments(clients: &mut Clients, out: Output, cmd: ShipmentsCommand) -> Result<()> {
    match cmd {
        ShipmentsCommand::Export(args) => export_shipments(clients, out, args).await,
        ShipmentsCommand::MarkShipped(args) => mark_shipped(clients, out, args).await,
    }
}

fn state_filter(s: ShipmentStateFilter) -> ShipmentState {
    match s {
        ShipmentStateFilter::Ordered => ShipmentState::Ordered,
        ShipmentStateFilter::Shipped => ShipmentState::Shipped,
        ShipmentStateFilter::All => ShipmentState::Unspecified,
    }
}

/// `SHIPMENT_STATE_ORDERED` → `ORDERED` (the number when unknown).
fn shipment_state(v: i32) -> String {
    ShipmentState::try_from(v).map_or_else(
        |_| v.to_string(),
        |s| {
            let n = s.as_str_name();
            n.strip_prefix("SHIPMENT_STATE_").unwrap_or(n).to_owned()
        },
    )
}

fn csv_time(t: Option<&prost_types::Timestamp>) -> String {
    t.map(format_rfc3339).unwrap_or_default()
}

/// Gives up on an export file: what was written stays in `FILE.partial`.
fn abandon_export(file: VendorCsv, what: &str, cause: String) -> Error {
    let partial = file.partial().to_owned();
    let (rows, flushed) = file.abandon();
    let kept = match (rows, flushed) {
        (0, _) => "no file was written".to_owned(),
        (n, Ok(())) => format!(
            "{n} {what} were written to {} (incomplete; remove it before retrying)",
            partial.display()
        ),
        (n, Err(e)) => format!(
            "{n} {what} were written to {}, which may be damaged ({e})",
            partial.display()
        ),
    };
    Error::Failed(format!("{cause}; {kept}"))
}

fn finish_export(file: VendorCsv) -> Result<u64> {
    let partial = file.partial().to_owned();
    file.finish().map_err(|e| {
        Error::Failed(format!(
            "the export could not be completed: {e}; the rows are in {}",
            partial.display()
        ))
    })
}

async fn export_shipments(
    clients: &mut Clients,
    out: Output,
    args: ShipmentsExportArgs,
) -> Result<()> {
    let mut file = VendorCsv::create_with_header(&args.out, SHIPMENTS_HEADER)?;
    let state = state_filter(args.state);
    let mut token = String::new();
    loop {
        let page = match clients
            .operations
            .list_shipments(ListShipmentsRequest {
                provider: args.provider.clone(),
                state: state as i32,
                page_size: EXPORT_PAGE,
                page_token: token.clone(),
            })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(status) if file.rows() == 0 && token.is_empty() => {
                let _ = file.abandon();
                return Err(Error::rpc("ListShipments")(status));
            }
            Err(status) => {
                let cause = format!("ListShipments failed: {}", describe_status(&status));
                return Err(abandon_export(file, "shipments", cause));
            }
        };
        for s in &page.shipments {
            let row = [
                s.reference.as_str(),
                &shipment_state(s.state),
                &csv_time(s.create_time.as_ref()),
                &csv_time(s.ship_time.as_ref()),
                s.tracking.as_str(),
                s.campaign.as_str(),
                s.batch.as_str(),
                &if s.batch.is_empty() {
                    String::new()
                } else {
                    s.serial.to_string()
                },
                s.option_id.as_str(),
                s.shipping_address.as_str(),
            ];
            if let Err(e) = file.write_record(&row) {
                let cause = format!("cannot write {}: {e}", file.partial().display());
                return Err(abandon_export(file, "shipments", cause));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let rows = finish_export(file)?;
    let state_name = format!("{:?}", args.state).to_ascii_lowercase();
    out.emit(
        || {
            json!({
                "provider": args.provider,
                "state": state_name,
                "file": args.out.display().to_string(),
                "shipments": rows,
            })
        },
        |w| {
            writeln!(
                w,
                "exported {rows} shipments ({state_name}) of {} into {}",
                args.provider,
                args.out.display()
            )
        },
    )
}

/// The references in a file: one per line; blank lines and `#` comments
/// are skipped; of a CSV line only the first field counts, and a
/// `reference` header is skipped (so `shipments export` output works,
/// including its quoted multi-line address fields).
pub fn parse_references(text: &str) -> Vec<String> {
    csv_records(text)
        .into_iter()
        .map(|l| l.trim_start_matches('\u{feff}'))
        .map(|l| l.split(',').next().unwrap_or_default().trim())
        .map(|l| l.trim_matches('"'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.eq_ignore_ascii_case("reference"))
        .map(str::to_owned)
        .collect()
}

/// The lines of `text`, except that a line break inside a double-quoted
/// CSV field continues the record (the continuation is not a line of its
/// own).
fn csv_records(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, ch) in text.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '\n' if !quoted => {
                out.push(text[start..i].trim_end_matches('\r'));
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn read_references(path: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(Error::io(format!("cannot read {}", path.display())))?;
    let refs = parse_references(&text);
    if refs.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no references (one per line)",
            path.display()
        )));
    }
    Ok(refs)
}

async fn mark_shipped(clients: &mut Clients, out: Output, args: MarkShippedArgs) -> Result<()> {
    let refs = match &args.file {
        Some(path) => read_references(path)?,
        None => args.references.clone(),
    };
    let mut total = MarkShippedResponse::default();
    let chunks = refs.chunks(MARK_CHUNK).count();
    for (i, chunk) in refs.chunks(MARK_CHUNK).enumerate() {
        let r = clients
            .operations
            .mark_shipped(MarkShippedRequest {
                provider: args.provider.clone(),
                references: chunk.to_vec(),
                tracking: args.tracking.clone().unwrap_or_default(),
            })
            .await
            .map_err(|status| {
                if i == 0 {
                    Error::rpc("MarkShipped")(status)
                } else {
                    Error::Failed(format!(
                        "MarkShipped failed on call {} of {chunks}: {}; {} orders were marked \
                         before it; running the same command again is safe",
                        i + 1,
                        describe_status(&status),
                        total.updated
                    ))
                }
            })?
            .into_inner();
        total.updated += r.updated;
        total.already_shipped += r.already_shipped;
        total.unknown_references.extend(r.unknown_references);
    }
    let summary = json!({
        "provider": args.provider,
        "updated": total.updated,
        "already_shipped": total.already_shipped,
        "unknown_references": total.unknown_references,
    });
    let unknown = &total.unknown_references;
    if unknown.is_empty() {
        return out.emit(
            || summary,
            |w| {
                writeln!(
                    w,
                    "marked {} orders of {} shipped ({} were already shipped)",
                    total.updated, args.provider, total.already_shipped
                )
            },
        );
    }
    // Some references match no order (a typo, another provider's file):
    // the others were marked, but the command failed at what it was asked.
    if !out.json {
        out.emit(
            || Value::Null,
            |w| {
                writeln!(
                    w,
                    "marked {} orders of {} shipped ({} were already shipped)",
                    total.updated, args.provider, total.already_shipped
                )
            },
        )?;
    }
    Err(Error::Partial {
        message: format!(
            "{} reference(s) match no order of {}: {} (every other reference was marked; \
             check them and run again: marking is idempotent)",
            unknown.len(),
            args.provider,
            unknown.join(", ")
        ),
        reason: "UNKNOWN_REFERENCES",
        details: summary,
    })
}

/// Runs a `preferences` subcommand.
///
/// # Errors
/// What the RPC or the file fails with.
pub async fn preferences(
    clients: &mut Clients,
    out: Output,
    cmd: PreferencesCommand,
) -> Result<()> {
    let PreferencesCommand::Export {
        campaign,
        out: path,
    } = cmd;
    let campaign = campaign_name(&campaign);
    let mut file = VendorCsv::create_with_header(&path, PREFERENCES_HEADER)?;
    let mut token = String::new();
    loop {
        let page = match clients
            .operations
            .list_preferences(ListPreferencesRequest {
                campaign: campaign.clone(),
                page_size: EXPORT_PAGE,
                page_token: token.clone(),
            })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(status) if file.rows() == 0 && token.is_empty() => {
                let _ = file.abandon();
                return Err(Error::rpc("ListPreferences")(status));
            }
            Err(status) => {
                let cause = format!("ListPreferences failed: {}", describe_status(&status));
                return Err(abandon_export(file, "preferences", cause));
            }
        };
        for p in &page.preferences {
            let row = [
                p.exchange.as_str(),
                p.batch.as_str(),
                &p.serial.to_string(),
                if p.delete_personal_data {
                    "true"
                } else {
                    "false"
                },
                if p.stop_mail { "true" } else { "false" },
                &csv_time(p.create_time.as_ref()),
            ];
            if let Err(e) = file.write_record(&row) {
                let cause = format!("cannot write {}: {e}", file.partial().display());
                return Err(abandon_export(file, "preferences", cause));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let rows = finish_export(file)?;
    out.emit(
        || {
            json!({
                "campaign": campaign,
                "file": path.display().to_string(),
                "preferences": rows,
            })
        },
        |w| {
            writeln!(
                w,
                "exported {rows} holders' preferences of {campaign} into {}",
                path.display()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_files_take_one_per_line_or_an_export_csv() {
        let text = "\u{feff}SHP-A\n\n  SHP-B  \n# a comment\nSHP-C\r\n";
        assert_eq!(parse_references(text), ["SHP-A", "SHP-B", "SHP-C"]);
        let csv = "reference,state,create_time,ship_time,tracking\n\
                   SHP-1,ORDERED,2014-07-09T00:00:00Z,,\n\
                   \"SHP-2\",ORDERED,2014-07-09T00:00:00Z,,\n";
        assert_eq!(parse_references(csv), ["SHP-1", "SHP-2"]);
        // An export's quoted address may span lines (and hold commas).
        let export = "reference,state,create_time,ship_time,tracking,campaign,batch,serial,\
                      option_id,shipping_address\n\
                      SHP-1,ORDERED,t,,,campaigns/c,campaigns/c/batches/b,7,book,\
                      \"〒100-0001\nSHP-FAKE, Tokyo\n\"\"Yamada\"\"\"\n\
                      SHP-2,ORDERED,t,,,campaigns/c,,,book,\n";
        assert_eq!(parse_references(export), ["SHP-1", "SHP-2"]);
    }

    #[test]
    fn shipment_states_print_short() {
        assert_eq!(shipment_state(ShipmentState::Ordered as i32), "ORDERED");
        assert_eq!(shipment_state(ShipmentState::Shipped as i32), "SHIPPED");
        assert_eq!(shipment_state(42), "42");
        assert_eq!(
            state_filter(ShipmentStateFilter::All),
            ShipmentState::Unspecified
        );
    }

    #[test]
    fn command_lines_parse() {
        use crate::cli::{Cli, Command};
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "giftctl",
            "stock",
            "import",
            "--provider",
            "edy-stock",
            "items.csv.gz",
        ])
        .unwrap();
        let Command::Stock(StockCommand::Import(a)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(
            (a.provider.as_str(), a.file.to_str()),
            ("edy-stock", Some("items.csv.gz"))
        );

        let cli = Cli::try_parse_from([
            "giftctl",
            "shipments",
            "export",
            "--provider",
            "book-card",
            "--out",
            "x.csv",
        ])
        .unwrap();
        let Command::Shipments(ShipmentsCommand::Export(a)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(a.state, ShipmentStateFilter::Ordered);
        assert!(
            Cli::try_parse_from([
                "giftctl",
                "shipments",
                "export",
                "--provider",
                "p",
                "--out",
                "x",
                "--state",
                "lost"
            ])
            .is_err()
        );

        let cli = Cli::try_parse_from([
            "giftctl",
            "shipments",
            "mark-shipped",
            "--provider",
            "book-card",
            "--tracking",
            "JP1",
            "SHP-1",
            "SHP-2",
        ])
        .unwrap();
        let Command::Shipments(ShipmentsCommand::MarkShipped(a)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(a.references, ["SHP-1", "SHP-2"]);
        assert_eq!(a.tracking.as_deref(), Some("JP1"));
        // References or a file, not both, not neither.
        let base = ["giftctl", "shipments", "mark-shipped", "--provider", "p"];
        assert!(Cli::try_parse_from(base).is_err());
        assert!(Cli::try_parse_from(base.iter().chain(&["--file", "f", "SHP-1"])).is_err());
        assert!(Cli::try_parse_from(base.iter().chain(&["--file", "f"])).is_ok());

        let cli = Cli::try_parse_from([
            "giftctl",
            "preferences",
            "export",
            "--campaign",
            "c",
            "--out",
            "p.csv",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Preferences(PreferencesCommand::Export { .. })
        ));
    }
}
