//! The command line: clap definitions and the parsers of its values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use giftx_core::Currency;
use giftx_core::model::MAX_ISSUE_COUNT;

use crate::error::{Error, Result};
use crate::rpc::{ConnectOptions, DEFAULT_ADDR, Token};
use crate::time::{
    TimeOrDuration, TypedTime, parse_duration, parse_time_or_duration, parse_typed_rfc3339,
};

/// The help heading of the flags saying how to reach giftxd.
const CONNECTION: &str = "Connection";

/// How giftctl reaches giftxd, shown at the end of `giftctl --help`.
const CONNECTING: &str = "\
Connecting:
  --addr http://host:port   plaintext HTTP/2 (a bare host:port too)
  --addr https://host:port  TLS: giftxd's certificate must be signed by the CA in
                            --ca-cert (else by a public web CA) and name the host
                            (DNS name or IP address) in --addr
  --client-cert/--client-key present a client certificate (mTLS, when giftxd has
                            GIFTX_TLS_CLIENT_CA_FILE); https:// only
  --token / --token-file    the API key sent as `authorization: Bearer <token>` on
                            every call (needed when giftxd has GIFTX_ADMIN_TOKEN_FILE);
                            an admin creates keys with `giftctl keys create`
Every flag above may also be set by its environment variable (GIFTX_ADDR,
GIFTX_CA_CERT, GIFTX_CLIENT_CERT, GIFTX_CLIENT_KEY, GIFTX_TOKEN, GIFTX_TOKEN_FILE).";

/// An API token as typed (`--token`, `GIFTX_TOKEN`): checked when used, and
/// never shown (not by `Debug`, not in errors).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(pub String);

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretArg(<redacted>)")
    }
}

/// Takes a token as it is: a parse error would echo it.
fn parse_secret(s: &str) -> Result<SecretArg, std::convert::Infallible> {
    Ok(SecretArg(s.to_owned()))
}

/// giftctl: the giftx operator CLI.
#[derive(Debug, Parser)]
#[command(
    name = "giftctl",
    version,
    about,
    propagate_version = true,
    after_help = CONNECTING
)]
pub struct Cli {
    /// giftxd's gRPC address: http://host:port (plaintext) or
    /// https://host:port (TLS).
    #[arg(
        long,
        env = "GIFTX_ADDR",
        default_value = DEFAULT_ADDR,
        global = true,
        help_heading = CONNECTION
    )]
    pub addr: String,
    /// PEM file of the CA certificate(s) to trust for giftxd's certificate
    /// (https:// only); without it the public web CAs are trusted.
    #[arg(
        long,
        env = "GIFTX_CA_CERT",
        value_name = "FILE",
        global = true,
        help_heading = CONNECTION
    )]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain) to present to giftxd (mTLS); needs
    /// --client-key; https:// only.
    #[arg(
        long,
        env = "GIFTX_CLIENT_CERT",
        value_name = "FILE",
        global = true,
        help_heading = CONNECTION
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "GIFTX_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        help_heading = CONNECTION
    )]
    pub client_key: Option<PathBuf>,
    /// API token sent as `authorization: Bearer <token>` with every call.
    /// Prefer --token-file or the environment: a command line is visible to
    /// other users of the machine.
    #[arg(
        long,
        env = "GIFTX_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_secret,
        global = true,
        help_heading = CONNECTION
    )]
    pub token: Option<SecretArg>,
    /// File holding the API token (surrounding whitespace ignored), e.g. a
    /// mounted Kubernetes secret. Not together with --token.
    #[arg(
        long,
        env = "GIFTX_TOKEN_FILE",
        value_name = "FILE",
        global = true,
        help_heading = CONNECTION
    )]
    pub token_file: Option<PathBuf>,
    /// Print one JSON document per command (JSON lines for streams) instead
    /// of text for humans.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in UTC (default: the zone of a time typed in the command,
    /// else the local zone from TZ or the system).
    #[arg(long, global = true)]
    pub utc: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The UTC offset of a time typed in this command (`--deadline`,
    /// `--expires`, `--since`), in seconds: times are shown back in it.
    pub fn typed_offset(&self) -> Option<i32> {
        match &self.command {
            Command::Campaign(CampaignCommand::Create(a)) => Some(a.deadline.offset_seconds),
            Command::Campaign(CampaignCommand::Extend { deadline, .. }) => {
                Some(deadline.offset_seconds)
            }
            Command::Keys(KeysCommand::Create(a)) => {
                a.expires.as_ref().and_then(TimeOrDuration::typed_offset)
            }
            Command::Audit(AuditCommand::List(a)) => {
                a.since.as_ref().and_then(TimeOrDuration::typed_offset)
            }
            _ => None,
        }
    }

    /// The API token: `--token` (`GIFTX_TOKEN`) or the file of
    /// `--token-file` (`GIFTX_TOKEN_FILE`), not both.
    ///
    /// # Errors
    /// [`Error::Invalid`] when both are given or the token is malformed;
    /// [`Error::Io`] when the file cannot be read.
    pub fn token(&self) -> Result<Option<Token>> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(Error::Invalid(
                "both --token (GIFTX_TOKEN) and --token-file (GIFTX_TOKEN_FILE) are set: \
                 give one"
                    .to_owned(),
            )),
            (Some(t), None) => Token::new(&t.0, "--token (GIFTX_TOKEN)").map(Some),
            (None, Some(path)) => {
                Token::from_file(path, "--token-file (GIFTX_TOKEN_FILE)").map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// How to reach giftxd, from the global flags.
    ///
    /// # Errors
    /// As [`Cli::token`].
    pub fn connect_options(&self) -> Result<ConnectOptions> {
        Ok(ConnectOptions {
            addr: self.addr.clone(),
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            token: self.token()?,
        })
    }
}

/// giftctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show, count and extend campaigns.
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// Show or void a batch of issued codes.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Issue codes of a campaign into a CSV file for the print vendor.
    Issue(IssueArgs),
    /// Expire codes past their campaign's deadline.
    #[command(subcommand)]
    Expiry(ExpiryCommand),
    /// Find and finish exchanges still in flight.
    #[command(subcommand)]
    Pending(PendingCommand),
    /// Check a code and login key (ExchangeService.VerifyCode).
    Verify(CredentialArgs),
    /// Exchange a code for one of its options (ExchangeService.Exchange).
    Exchange(ExchangeArgs),
    /// Show a code's exchange again (ExchangeService.GetExchange).
    ShowExchange(CredentialArgs),
    /// Load a stock provider's pre-purchased items and see what is left.
    #[command(subcommand)]
    Stock(StockCommand),
    /// Export shipping orders for the mailing vendor; mark them shipped.
    #[command(subcommand)]
    Shipments(ShipmentsCommand),
    /// Export holders' data-deletion and stop-mail preferences.
    #[command(subcommand)]
    Preferences(PreferencesCommand),
    /// Walk the apology-gift story against giftxd's embedded demo campaign.
    Demo,
    /// Create, list and revoke API keys (admin).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read the audit trail: who called what, when, with what outcome.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// A key's role (access.proto's `Role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// ExchangeService only: what an apology portal needs.
    Portal,
    /// Campaigns, issuance, expiry, operations and the audit trail of its
    /// tenant.
    Operator,
    /// Everything, in every tenant, and key management.
    Admin,
}

/// `giftctl keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its token is printed this once (JSON field
    /// `token` under --json).
    Create(KeysCreateArgs),
    /// List API keys (every page; never their tokens), with their state.
    List {
        /// Only the keys of this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an API key: its token is refused from then on.
    Revoke {
        /// The key's name, `apiKeys/ID`, or just the ID (16 hex digits).
        name: String,
    },
}

/// `giftctl keys create`.
#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// The tenant whose resources the key reaches (lower-case letters,
    /// digits and hyphens).
    #[arg(long)]
    pub tenant: String,
    /// What the key may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// When the key stops working: an RFC 3339 time
    /// (2027-01-01T00:00:00Z) or a duration from now (30d, 12h). Default:
    /// never.
    #[arg(long, value_parser = parse_time_or_duration, value_name = "TIME|DURATION")]
    pub expires: Option<TimeOrDuration>,
    /// Free text for people (who holds the key, what for).
    #[arg(long)]
    pub description: Option<String>,
}

/// `giftctl audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first (every page). An operator sees its
    /// own tenant's events.
    List(AuditListArgs),
}

/// `giftctl audit list`.
#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only events at or after this time: RFC 3339 (2026-12-01T00:00:00Z)
    /// or a duration ago (15m, 24h, 7d).
    #[arg(long, value_parser = parse_time_or_duration, value_name = "TIME|DURATION")]
    pub since: Option<TimeOrDuration>,
    /// At most this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Keep polling for new events every second (until interrupted); under
    /// --json one event per line. Calls of ListAuditEvents (its own polls
    /// among them) are not shown while following.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `giftctl stock …`.
#[derive(Debug, Subcommand)]
pub enum StockCommand {
    /// Import items from a CSV file (header code,pin[,expire_time]; .gz
    /// read too). Items imported before are counted as duplicates.
    Import(StockImportArgs),
    /// How many items are left and handed out.
    Status {
        /// Id of a provider of kind stock.
        #[arg(long)]
        provider: String,
    },
}

/// `giftctl stock import`.
#[derive(Debug, Args)]
pub struct StockImportArgs {
    /// Id of a provider of kind stock.
    #[arg(long)]
    pub provider: String,
    /// The CSV file: header `code,pin[,expire_time]` (RFC 3339 times),
    /// gzip when it ends in .gz.
    pub file: PathBuf,
}

/// `giftctl shipments …`.
#[derive(Debug, Subcommand)]
pub enum ShipmentsCommand {
    /// Write a shipment provider's orders as CSV for the mailing vendor
    /// (reference,state,create_time,ship_time,tracking).
    Export(ShipmentsExportArgs),
    /// Mark orders shipped (idempotent); reports unknown references.
    MarkShipped(MarkShippedArgs),
}

/// Which orders `shipments export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShipmentStateFilter {
    /// Orders waiting for the mailing vendor.
    Ordered,
    /// Orders already sent.
    Shipped,
    /// Every order.
    All,
}

/// `giftctl shipments export`.
#[derive(Debug, Args)]
pub struct ShipmentsExportArgs {
    /// Id of a provider of kind shipment.
    #[arg(long)]
    pub provider: String,
    /// The CSV file to write (gzip when it ends in .gz); never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Which orders.
    #[arg(long, value_enum, default_value_t = ShipmentStateFilter::Ordered)]
    pub state: ShipmentStateFilter,
}

/// `giftctl shipments mark-shipped`.
#[derive(Debug, Args)]
pub struct MarkShippedArgs {
    /// Id of a provider of kind shipment.
    #[arg(long)]
    pub provider: String,
    /// The mailing vendor's tracking number, recorded with every order.
    #[arg(long)]
    pub tracking: Option<String>,
    /// A file of references, one per line (blank lines and `#` comments
    /// skipped; a CSV from `shipments export` works too).
    #[arg(long, conflicts_with = "references")]
    pub file: Option<PathBuf>,
    /// Order references (the deliverables' `reference`).
    #[arg(required_unless_present = "file")]
    pub references: Vec<String>,
}

/// `giftctl preferences …`.
#[derive(Debug, Subcommand)]
pub enum PreferencesCommand {
    /// Write a campaign's holders' preferences as CSV for its owner
    /// (exchange,batch,serial,delete_personal_data,stop_mail,create_time).
    Export {
        /// The campaign's id.
        #[arg(long)]
        campaign: String,
        /// The CSV file to write (gzip when it ends in .gz); never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `giftctl campaign …`.
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign (idempotent on --request-id).
    Create(CreateCampaignArgs),
    /// List every campaign.
    List,
    /// Show one campaign.
    Show {
        /// The campaign's id.
        id: String,
    },
    /// Counts and value of a campaign's codes by state and by option.
    Stats {
        /// The campaign's id.
        id: String,
    },
    /// Move a campaign's deadline (later only, unless --force).
    Extend {
        /// The campaign's id.
        id: String,
        /// The new deadline, RFC 3339 (e.g. 2027-01-15T00:00:00+09:00).
        #[arg(long, value_parser = parse_typed_rfc3339)]
        deadline: TypedTime,
        /// Allow moving the deadline earlier (asks for confirmation first).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (for scripts).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `giftctl campaign create`.
#[derive(Debug, Args)]
pub struct CreateCampaignArgs {
    /// The campaign's id: lower-case letters, digits and hyphens.
    pub id: String,
    /// Name shown to people.
    #[arg(long)]
    pub display_name: String,
    /// What each code is worth, in the currency's major unit (500 for
    /// 500 JPY, 5.00 for 5 USD).
    #[arg(long)]
    pub face_value: String,
    /// ISO 4217 currency code.
    #[arg(long)]
    pub currency: String,
    /// The deadline, RFC 3339 (e.g. 2026-12-15T00:00:00Z).
    #[arg(long, value_parser = parse_typed_rfc3339)]
    pub deadline: TypedTime,
    /// A redemption option, repeatable:
    /// `id=select-gift,provider=select-gift,name="Select gift"`.
    #[arg(
        long = "option",
        value_name = "id=ID,provider=PROVIDER,name=NAME",
        value_parser = parse_option_spec,
        required = true
    )]
    pub options: Vec<OptionSpec>,
    /// Who the campaign is run for.
    #[arg(long)]
    pub owner: Option<String>,
    /// Idempotency key: a retry with the same key returns the same campaign.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `giftctl batch …`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Show a batch and its progress.
    Show(BatchRef),
    /// Void every unredeemed code of a batch (asks for confirmation first).
    Void(BatchVoidArgs),
}

/// `giftctl batch void`.
#[derive(Debug, Args)]
pub struct BatchVoidArgs {
    /// The batch.
    #[command(flatten)]
    pub batch: BatchRef,
    /// Do not ask for confirmation (for scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// A batch, by campaign and batch id.
#[derive(Debug, Args)]
pub struct BatchRef {
    /// The campaign's id.
    pub campaign: String,
    /// The batch's id.
    pub batch: String,
}

/// `giftctl issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The campaign's id.
    #[arg(long)]
    pub campaign: String,
    /// How many codes (1 to 10,000,000, giftxd's limit per batch).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=MAX_ISSUE_COUNT))]
    pub count: i64,
    /// The batch's id (each id can be issued once).
    #[arg(long)]
    pub batch: String,
    /// The CSV file to write (gzip when it ends in .gz); never overwritten.
    #[arg(long)]
    pub out: PathBuf,
}

/// `giftctl expiry …`.
#[derive(Debug, Subcommand)]
pub enum ExpiryCommand {
    /// Mark a campaign's codes past its deadline EXPIRED; prints count and value.
    Sweep {
        /// The campaign's id.
        campaign: String,
    },
}

/// `giftctl pending …`.
#[derive(Debug, Subcommand)]
pub enum PendingCommand {
    /// List exchanges still PENDING (every page).
    List {
        /// Only those that began at least this long ago (e.g. 60s, 15m, 1h).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Exchanges asked for per page.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
    },
    /// Drive one exchange to an end now.
    Reconcile {
        /// The exchange's name (`exchanges/ID`, or just the ID).
        name: String,
    },
}

/// A printed code and its login key.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// The printed code.
    pub code: String,
    /// The printed login key.
    pub login_key: String,
}

/// `giftctl exchange`.
#[derive(Debug, Args)]
pub struct ExchangeArgs {
    /// The code and login key.
    #[command(flatten)]
    pub credential: CredentialArgs,
    /// The option to exchange for.
    #[arg(long = "option")]
    pub option_id: String,
    /// Idempotency key; reuse it to retry the same exchange (default: random).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Contact address for showing the result again later.
    #[arg(long)]
    pub email: Option<String>,
    /// The holder asks for their personal data to be deleted.
    #[arg(long)]
    pub delete_personal_data: bool,
    /// The holder asks to receive no more mail.
    #[arg(long)]
    pub stop_mail: bool,
    /// Where to mail the goods (required for an option that mails them;
    /// `\n` in the text separates lines).
    #[arg(long)]
    pub address: Option<String>,
}

/// One `--option` of `campaign create`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// `id=`.
    pub option_id: String,
    /// `provider=`.
    pub provider: String,
    /// `name=` (defaults to the id).
    pub display_name: String,
}

/// Parses `id=select-gift,provider=select-gift,name="Select gift"`. Values
/// may be double-quoted (with `\"` and `\\` escapes) to hold commas.
///
/// # Errors
/// A message naming what is missing or wrong.
pub fn parse_option_spec(s: &str) -> Result<OptionSpec, String> {
    let mut id = None;
    let mut provider = None;
    let mut name = None;
    for (key, value) in split_pairs(s)? {
        let slot = match key.as_str() {
            "id" | "option_id" => &mut id,
            "provider" => &mut provider,
            "name" | "display_name" | "display-name" => &mut name,
            other => {
                return Err(format!(
                    "unknown key '{other}' in --option (use id=…,provider=…,name=…)"
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("'{key}' given twice in --option"));
        }
    }
    let option_id = id.ok_or(
        "--option needs id=… (e.g. id=select-gift,provider=select-gift,name=\"Select gift\")",
    )?;
    let provider = provider.ok_or("--option needs provider=…")?;
    if option_id.is_empty() || provider.is_empty() {
        return Err("--option: id and provider must not be empty".to_owned());
    }
    let display_name = name.unwrap_or_else(|| option_id.clone());
    Ok(OptionSpec {
        option_id,
        provider,
        display_name,
    })
}

/// Splits `k=v,k="v, with comma"` into pairs.
fn split_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        let mut has_value = false;
        for c in chars.by_ref() {
            if c == '=' {
                has_value = true;
                break;
            }
            if c == ',' {
                break;
            }
            key.push(c);
        }
        let key = key.trim().to_owned();
        if !has_value {
            return Err(if key.is_empty() {
                format!("expected key=value in --option '{s}'")
            } else {
                format!(
                    "expected key=value in --option, found '{key}' (quote values that hold commas: name=\"A, B\")"
                )
            });
        }
        if key.is_empty() {
            return Err(format!("expected key=value in --option '{s}'"));
        }
        let mut value = String::new();
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some(e) => value.push(e),
                        None => break,
                    },
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated quote in --option value of '{key}'"));
            }
            while chars.peek().is_some_and(|c| *c == ' ') {
                chars.next();
            }
            match chars.next() {
                None | Some(',') => {}
                Some(c) => {
                    return Err(format!(
                        "unexpected '{c}' after the quoted value of '{key}' in --option"
                    ));
                }
            }
        } else {
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        pairs.push((key, value));
        if chars.peek().is_none() {
            return Ok(pairs);
        }
    }
}

/// Converts a face value in major units (`500`, `5.00`, `5`) into minor
/// units of `currency`.
///
/// # Errors
/// A message when the currency is unknown, the amount malformed, not
/// positive, or more precise than the currency allows.
pub fn parse_face_value(amount: &str, currency: &str) -> Result<(Currency, i64), String> {
    let code = currency.trim().to_ascii_uppercase();
    let cur = Currency::from_code(&code)
        .ok_or_else(|| format!("--currency: '{currency}' is not an ISO 4217 currency code"))?;
    let exp = u32::from(cur.exponent());
    let bad = || {
        format!(
            "--face-value: '{amount}' is not an amount of {code} (e.g. 500, or 5.00 for 2-decimal currencies)"
        )
    };
    let (whole, frac) = match amount.trim().split_once('.') {
        Some((w, f)) => (w, f),
        None => (amount.trim(), ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > exp as usize {
        return Err(format!(
            "--face-value: {code} has {exp} decimal places, '{amount}' has more"
        ));
    }
    let scale = 10_i64.pow(exp);
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let mut frac_units: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_units += i64::from(b - b'0') * 10_i64.pow(exp - 1 - i as u32);
    }
    let minor = whole
        .checked_mul(scale)
        .and_then(|m| m.checked_add(frac_units))
        .ok_or_else(bad)?;
    if minor <= 0 {
        return Err("--face-value must be positive".to_owned());
    }
    Ok((cur, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_spec_parses_quoted_and_plain_values() {
        let o =
            parse_option_spec(r#"id=select-gift,provider=select-gift,name="Select gift""#).unwrap();
        assert_eq!(
            o,
            OptionSpec {
                option_id: "select-gift".into(),
                provider: "select-gift".into(),
                display_name: "Select gift".into(),
            }
        );
        // What the shell leaves of name="Select gift".
        let o =
            parse_option_spec("id=book-card,provider=shipment,name=Book card (mailed)").unwrap();
        assert_eq!(o.display_name, "Book card (mailed)");
        let o = parse_option_spec(r#"name="Book card, mailed \"A5\"", id=book, provider=ship"#)
            .unwrap();
        assert_eq!(o.display_name, "Book card, mailed \"A5\"");
        assert_eq!(
            (o.option_id.as_str(), o.provider.as_str()),
            ("book", "ship")
        );
        let o = parse_option_spec("id=donate,provider=donation").unwrap();
        assert_eq!(o.display_name, "donate");
    }

    #[test]
    fn option_spec_rejects_what_it_cannot_read() {
        for (bad, hint) in [
            ("provider=x,name=y", "needs id"),
            ("id=x", "needs provider"),
            ("id=x,provider=y,colour=red", "unknown key"),
            ("id=x,id=y,provider=z", "twice"),
            ("id=x,provider=y,name=A, B", "quote values"),
            (r#"id=x,provider=y,name="A"#, "unterminated"),
            ("id=,provider=y", "must not be empty"),
            ("", "key=value"),
        ] {
            let err = parse_option_spec(bad).unwrap_err();
            assert!(err.contains(hint), "{bad}: {err}");
        }
    }

    #[test]
    fn face_value_is_read_in_major_units() {
        assert_eq!(parse_face_value("500", "JPY").unwrap().1, 500);
        assert_eq!(parse_face_value("500", "jpy").unwrap().0.code(), "JPY");
        assert_eq!(parse_face_value("5.00", "USD").unwrap().1, 500);
        assert_eq!(parse_face_value("5", "USD").unwrap().1, 500);
        assert_eq!(parse_face_value("12.5", "EUR").unwrap().1, 1250);
        assert_eq!(parse_face_value("1.234", "KWD").unwrap().1, 1234);
        assert!(
            parse_face_value("500.5", "JPY")
                .unwrap_err()
                .contains("decimal places")
        );
        assert!(
            parse_face_value("0", "JPY")
                .unwrap_err()
                .contains("positive")
        );
        assert!(parse_face_value("-5", "JPY").is_err());
        assert!(parse_face_value("5e3", "JPY").is_err());
        assert!(
            parse_face_value("500", "XXX")
                .unwrap_err()
                .contains("ISO 4217")
        );
    }

    #[test]
    fn command_line_parses_campaign_create() {
        let cli = Cli::try_parse_from([
            "giftctl",
            "--addr",
            "http://10.0.0.1:50051",
            "campaign",
            "create",
            "apology-2014",
            "--display-name",
            "Apology 2014",
            "--face-value",
            "500",
            "--currency",
            "JPY",
            "--deadline",
            "2026-12-15T00:00:00Z",
            "--option",
            "id=select-gift,provider=select-gift,name=Select gift",
            "--option",
            "id=donate,provider=donation",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.addr, "http://10.0.0.1:50051");
        let Command::Campaign(CampaignCommand::Create(args)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.id, "apology-2014");
        assert_eq!(args.deadline.timestamp.seconds, 1_797_292_800);
        assert_eq!(args.options.len(), 2);
        assert_eq!(args.options[1].provider, "donation");
    }

    #[test]
    fn command_line_rejects_bad_deadline_and_missing_option() {
        let base = [
            "giftctl",
            "campaign",
            "create",
            "c",
            "--display-name",
            "C",
            "--face-value",
            "1",
            "--currency",
            "JPY",
        ];
        let err = Cli::try_parse_from(base.iter().chain(&[
            "--deadline",
            "2026-12-15",
            "--option",
            "id=a,provider=b",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        let err = Cli::try_parse_from(base.iter().chain(&["--deadline", "2026-12-15T00:00:00Z"]))
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn command_line_parses_issue_pending_and_exchange() {
        let cli = Cli::try_parse_from([
            "giftctl",
            "issue",
            "--campaign",
            "c",
            "--count",
            "1000000",
            "--batch",
            "b1",
            "--out",
            "codes.csv.gz",
        ])
        .unwrap();
        let Command::Issue(a) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(a.count, 1_000_000);
        assert!(
            Cli::try_parse_from([
                "giftctl",
                "issue",
                "--campaign",
                "c",
                "--count",
                "0",
                "--batch",
                "b",
                "--out",
                "f"
            ])
            .is_err()
        );
        // The bound named is giftxd's own.
        let err = Cli::try_parse_from([
            "giftctl",
            "issue",
            "--campaign",
            "c",
            "--count",
            "10000001",
            "--batch",
            "b",
            "--out",
            "f",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains(&MAX_ISSUE_COUNT.to_string()), "{err}");

        let cli =
            Cli::try_parse_from(["giftctl", "pending", "list", "--older-than", "60s"]).unwrap();
        let Command::Pending(PendingCommand::List {
            older_than,
            page_size,
        }) = cli.command
        else {
            panic!("wrong command")
        };
        assert_eq!(older_than, Some(Duration::from_secs(60)));
        assert_eq!(page_size, 500);

        let cli = Cli::try_parse_from([
            "giftctl",
            "exchange",
            "CODE",
            "KEY",
            "--option",
            "emoney-a",
            "--email",
            "a@example.com",
        ])
        .unwrap();
        let Command::Exchange(a) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(a.option_id, "emoney-a");
        assert_eq!(a.request_id, None);
        assert_eq!(a.credential.login_key, "KEY");
    }

    #[test]
    fn command_line_parses_keys_audit_and_the_global_flags() {
        let cli = Cli::try_parse_from([
            "giftctl",
            "--addr",
            "https://giftxd.example:443",
            "--ca-cert",
            "ca.pem",
            "--token",
            "gx1.0123456789abcdef.s3cret",
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "operator",
            "--expires",
            "2027-01-01T09:00:00+09:00",
        ])
        .unwrap();
        assert!(
            !format!("{cli:?}").contains("s3cret"),
            "the token never shows"
        );
        assert_eq!(cli.typed_offset(), Some(9 * 3600));
        let opts = cli.connect_options().unwrap();
        assert_eq!(opts.addr, "https://giftxd.example:443");
        assert_eq!(
            opts.ca_cert.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        assert_eq!(
            opts.token.as_ref().map(Token::expose),
            Some("gx1.0123456789abcdef.s3cret")
        );
        let Command::Keys(KeysCommand::Create(a)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!((a.tenant.as_str(), a.role), ("acme", RoleArg::Operator));

        // Global flags go after the subcommand too.
        let cli = Cli::try_parse_from([
            "giftctl",
            "audit",
            "list",
            "--since",
            "24h",
            "--limit",
            "5",
            "--token-file",
            "t",
        ])
        .unwrap();
        let Command::Audit(AuditCommand::List(a)) = &cli.command else {
            panic!("wrong command")
        };
        assert_eq!(
            a.since,
            Some(TimeOrDuration::Relative(Duration::from_secs(86_400)))
        );
        assert_eq!(a.limit, Some(5));
        assert_eq!(cli.token_file.as_deref(), Some(std::path::Path::new("t")));
        assert!(
            Cli::try_parse_from([
                "giftctl", "keys", "create", "--tenant", "a", "--role", "root"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["giftctl", "audit", "list", "--limit", "0"]).is_err());

        // --token and --token-file together: refused, the token unshown.
        let cli = Cli::try_parse_from([
            "giftctl",
            "--token",
            "s3cret",
            "--token-file",
            "t",
            "keys",
            "list",
        ])
        .unwrap();
        let e = cli.token().unwrap_err().to_string();
        assert!(e.contains("--token-file") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
