//! `giftctl issue`: streams IssueCodes into the print vendor's CSV file.
//!
//! Memory stays flat: each code is written as it arrives and dropped. The
//! file is only put in place once complete and fsynced (see
//! [`crate::vendor_csv`]); any failure says how many codes were written and
//! points at `giftctl batch show|void`, because codes are stored by giftxd
//! before they are sent and so may exist with nobody holding them.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use giftx_proto::v1::IssueCodesRequest;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::IssueArgs;
use crate::error::{Error, Result};
use crate::issuance::campaign_name;
use crate::render::Output;
use crate::rpc::{self, describe_status};
use crate::vendor_csv::VendorCsv;

/// Codes between two progress updates: keeps the per-code cost to a counter.
const PROGRESS_EVERY: u64 = 4096;
/// Plain progress lines: at least this often…
const LINE_INTERVAL: Duration = Duration::from_secs(5);
/// …and at every such fraction of the batch.
const LINE_STEP_PERCENT: u64 = 10;

/// Progress on stderr: a bar on a terminal, plain lines otherwise (also
/// used by `stock import`).
pub(crate) enum Progress {
    Bar(ProgressBar),
    Lines {
        total: u64,
        started: Instant,
        last_line: Instant,
        next_percent: u64,
        verb: &'static str,
        unit: &'static str,
    },
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress::labelled(total, "issued", "codes")
    }

    /// Progress of `total` `unit`s being `verb` (`"imported"`, `"items"`).
    pub(crate) fn labelled(total: u64, verb: &'static str, unit: &'static str) -> Progress {
        let now = Instant::now();
        let lines = Progress::Lines {
            total,
            started: now,
            last_line: now,
            next_percent: LINE_STEP_PERCENT,
            verb,
            unit,
        };
        if !std::io::stderr().is_terminal() {
            return lines;
        }
        // The rate and ETA are the average since the start, like the plain
        // lines: indicatif's own `per_sec` is a short-window estimate that
        // swings wildly (and prints 4 decimals) when the position moves in
        // steps of PROGRESS_EVERY.
        let Ok(style) = ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit}  {{avg_rate}}  {{avg_eta}}"
        )) else {
            return lines;
        };
        let style = style
            .with_key(
                "avg_rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", rate_text(rate(s.pos(), s.elapsed()), unit));
                },
            )
            .with_key(
                "avg_eta",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let r = rate(s.pos(), s.elapsed());
                    let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                    if r > 0.0 && left > 0 {
                        let _ = write!(w, "ETA {:.0}s", left as f64 / r);
                    }
                },
            );
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(style);
        Progress::Bar(bar)
    }

    pub(crate) fn update(&mut self, done: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(done),
            Progress::Lines {
                total,
                started,
                last_line,
                next_percent,
                verb,
                unit,
            } => {
                let percent = done.saturating_mul(100) / (*total).max(1);
                let now = Instant::now();
                if percent < *next_percent && now.duration_since(*last_line) < LINE_INTERVAL {
                    return;
                }
                while *next_percent <= percent {
                    *next_percent += LINE_STEP_PERCENT;
                }
                *last_line = now;
                eprintln!(
                    "{}",
                    labelled_line(verb, unit, done, *total, now.duration_since(*started))
                );
            }
        }
    }

    pub(crate) fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }

    pub(crate) fn abandon(self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// `issued 100000/1000000 codes (10%), 98500 codes/s, ETA 9s`.
#[cfg(test)]
fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    labelled_line("issued", "codes", done, total, elapsed)
}

fn labelled_line(verb: &str, unit: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let rate = rate(done, elapsed);
    let mut line = format!(
        "{verb} {done}/{total} {unit} ({}%), {}",
        done.saturating_mul(100) / total.max(1),
        rate_text(rate, unit)
    );
    if rate > 0.0 && done < total {
        let _ = write!(line, ", ETA {:.0}s", (total - done) as f64 / rate);
    }
    line
}

/// A rate for people: whole units with thousands separators from 100 up
/// (`98,500 codes/s`), one decimal below (`2.5 codes/s`), `-` before any
/// time has passed.
pub(crate) fn rate_text(rate: f64, unit: &str) -> String {
    if !rate.is_finite() || rate <= 0.0 {
        return format!("- {unit}/s");
    }
    if rate < 100.0 {
        return format!("{rate:.1} {unit}/s");
    }
    let digits = format!("{rate:.0}");
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped} {unit}/s")
}

pub(crate) fn rate(done: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { done as f64 / secs } else { 0.0 }
}

/// Resolves with the signal's name on Ctrl-C (SIGINT) or SIGTERM. Once
/// this is polled those signals no longer kill giftctl: `issue` stops the
/// stream itself, keeps every code received in the partial file, and says
/// what to do next.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            // No handler: the signals keep their default action.
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(_) => std::future::pending().await,
        }
    }
}

/// Why the stream did not deliver the batch.
enum StreamFailure {
    /// The RPC was refused before any code was stored (bad request, unknown
    /// campaign, batch id taken…): nothing to void.
    Refused(tonic::Status),
    /// Anything after giftxd may have stored codes.
    Broken(String),
    /// The operator stopped giftctl (SIGINT or SIGTERM).
    Interrupted(&'static str),
}

async fn stream_codes(
    client: &mut IssuanceServiceClient<crate::rpc::Transport>,
    request: IssueCodesRequest,
    file: &mut VendorCsv,
    progress: &mut Progress,
) -> Result<(), StreamFailure> {
    let total = u64::try_from(request.count).unwrap_or(0);
    let mut stream = match client.issue_codes(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(refused_or_broken(status, 0)),
    };
    let mut written: u64 = 0;
    loop {
        let code = match stream.message().await {
            Ok(Some(code)) => code,
            Ok(None) => break,
            Err(status) => return Err(refused_or_broken(status, written)),
        };
        if written == total {
            return Err(StreamFailure::Broken(format!(
                "giftxd sent more codes than the {total} requested"
            )));
        }
        file.write_row(code.serial, &code.code, &code.login_key)
            .map_err(|e| {
                StreamFailure::Broken(format!("cannot write {}: {e}", file.partial().display()))
            })?;
        written += 1;
        if written.is_multiple_of(PROGRESS_EVERY) {
            progress.update(written);
        }
    }
    progress.update(written);
    if written != total {
        return Err(StreamFailure::Broken(format!(
            "the stream ended after {written} of {total} codes"
        )));
    }
    Ok(())
}

/// Statuses giftxd answers before storing anything, when no code came.
fn refused_or_broken(status: tonic::Status, written: u64) -> StreamFailure {
    use tonic::Code;
    let refused = matches!(
        status.code(),
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition
    );
    if refused && written == 0 {
        StreamFailure::Refused(status)
    } else {
        StreamFailure::Broken(format!("IssueCodes failed: {}", describe_status(&status)))
    }
}

/// Runs `giftctl issue`.
///
/// # Errors
/// [`Error::Invalid`] when the file exists; [`Error::Rpc`] when giftxd
/// refuses the batch; [`Error::Failed`] for a broken or short stream or a
/// file that cannot be completed, saying how many codes were written.
pub async fn run(clients: &mut rpc::Clients, out: Output, args: IssueArgs) -> Result<()> {
    let campaign = campaign_name(&args.campaign);
    let total = u64::try_from(args.count).unwrap_or(0);
    let mut file = VendorCsv::create(&args.out)?;
    let started = Instant::now();
    let mut progress = Progress::new(total);
    let request = IssueCodesRequest {
        campaign: campaign.clone(),
        batch_id: args.batch.clone(),
        count: args.count,
    };
    let check = format!(
        "check the batch with `giftctl batch show {c} {b}` and void it with `giftctl batch void {c} {b}` \
         unless you will use these codes",
        c = args.campaign,
        b = args.batch
    );
    // A signal drops the stream between two codes (rows are written
    // synchronously, so every row in the file is complete); the file is
    // then flushed below like after any other break.
    let streamed = tokio::select! {
        r = stream_codes(&mut clients.issuance, request, &mut file, &mut progress) => r,
        signal = interrupted() => Err(StreamFailure::Interrupted(signal)),
    };
    match streamed {
        Ok(()) => progress.finish(),
        Err(failure) => {
            progress.abandon();
            let partial = file.partial().to_owned();
            let (rows, flushed) = file.abandon();
            return Err(match failure {
                StreamFailure::Refused(status) => Error::rpc("IssueCodes")(status),
                StreamFailure::Interrupted(signal) => {
                    let kept = match (rows, flushed) {
                        (0, _) => "no code was received yet".to_owned(),
                        (n, Ok(())) => format!(
                            "the {n} codes received ({n} complete lines after the header) \
                             are in {}",
                            partial.display()
                        ),
                        (n, Err(e)) => format!(
                            "{n} codes were received but {} may be damaged ({e})",
                            partial.display()
                        ),
                    };
                    Error::Failed(format!(
                        "issue interrupted by {signal}; {kept}; giftxd may have stored more \
                         codes than were received. Next: `giftctl batch show {c} {b}` shows \
                         how many were stored; `giftctl batch void {c} {b}` voids them all \
                         unless you will print these",
                        c = args.campaign,
                        b = args.batch
                    ))
                }
                StreamFailure::Broken(cause) => {
                    let kept = match (rows, flushed) {
                        (0, _) => "no code was written".to_owned(),
                        (n, Ok(())) => format!(
                            "{n} of {total} codes were written to {} (incomplete)",
                            partial.display()
                        ),
                        (n, Err(e)) => format!(
                            "{n} of {total} codes were written to {}, which may be damaged ({e})",
                            partial.display()
                        ),
                    };
                    Error::Failed(format!("issue failed: {cause}; {kept}; {check}"))
                }
            });
        }
    }
    let partial = file.partial().to_owned();
    let rows = file.finish().map_err(|e| {
        Error::Failed(format!(
            "all {total} codes were received but the file could not be completed: {e}; \
             the codes are in {}; {check}",
            partial.display()
        ))
    })?;
    let elapsed = started.elapsed();
    let per_sec = rate(rows, elapsed);
    out.emit(
        || {
            json!({
                "campaign": campaign,
                "batch": format!("{campaign}/batches/{}", args.batch),
                "file": args.out.display().to_string(),
                "codes": rows,
                "seconds": elapsed.as_secs_f64(),
                "codes_per_second": per_sec,
            })
        },
        |w| {
            writeln!(
                w,
                "issued {rows} codes of {campaign} (batch {}) into {} in {:.1} s ({})",
                args.batch,
                args.out.display(),
                elapsed.as_secs_f64(),
                rate_text(per_sec, "codes")
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_rate_and_eta() {
        assert_eq!(
            progress_line(100_000, 1_000_000, Duration::from_secs(1)),
            "issued 100000/1000000 codes (10%), 100,000 codes/s, ETA 9s"
        );
        assert_eq!(
            progress_line(10, 10, Duration::from_secs(2)),
            "issued 10/10 codes (100%), 5.0 codes/s"
        );
    }

    #[test]
    fn rates_read_well_at_every_size() {
        assert_eq!(rate_text(1_234_567.8, "codes"), "1,234,568 codes/s");
        assert_eq!(rate_text(98_500.0, "codes"), "98,500 codes/s");
        assert_eq!(rate_text(100.0, "items"), "100 items/s");
        assert_eq!(rate_text(2.46, "items"), "2.5 items/s");
        assert_eq!(rate_text(0.0, "codes"), "- codes/s");
        assert_eq!(rate_text(f64::INFINITY, "codes"), "- codes/s");
        // Before any time has passed there is no rate, not infinity.
        assert_eq!(rate(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn refusals_before_any_code_are_not_reported_as_broken_batches() {
        assert!(matches!(
            refused_or_broken(tonic::Status::already_exists("batch exists"), 0),
            StreamFailure::Refused(_)
        ));
        assert!(matches!(
            refused_or_broken(tonic::Status::unavailable("redis down"), 0),
            StreamFailure::Broken(_)
        ));
        assert!(matches!(
            refused_or_broken(tonic::Status::failed_precondition("deadline"), 5),
            StreamFailure::Broken(_)
        ));
    }
}
