//! Protobuf <-> domain at the edge, and request validation.
//!
//! Every check names the request field at fault (a [`FieldViolation`]),
//! so a malformed request answers INVALID_ARGUMENT with a `BadRequest`.
//! Nothing here panics on any input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use giftx_core::model::{
    Batch, BatchId, BatchState, Campaign, CampaignId, CampaignSpec, CodeState, DeliverableKind,
    ExchangeState, OptionId, ProviderId, RedemptionOption,
};
use giftx_core::{Code, Currency, FieldViolation, Hasher, KeyRing, LoginKey, Money, Timestamp};
use giftx_ledger::ExchangeId;
use giftx_proto::v1 as pb;

/// Longest display name or owner, in characters.
pub const MAX_DISPLAY_NAME: usize = 200;
/// Longest `request_id`, in characters.
pub const MAX_REQUEST_ID: usize = 128;
/// Longest typed code or login key accepted before parsing (spaces and
/// hyphens included).
pub const MAX_TYPED_CREDENTIAL: usize = 64;
/// Longest contact email.
pub const MAX_EMAIL: usize = 254;
/// Longest page token.
pub const MAX_PAGE_TOKEN: usize = 1024;
/// Longest resource name.
pub const MAX_RESOURCE_NAME: usize = 256;
/// Most options a campaign may have.
pub const MAX_OPTIONS: usize = 32;
/// Largest face value, in minor units.
pub const MAX_FACE_VALUE: i64 = 1_000_000_000_000;
/// Most codes one IssueCodes call may ask for (shared with giftctl).
pub use giftx_core::model::MAX_ISSUE_COUNT;
/// Earliest timestamp accepted (0001-01-01T00:00:00Z), in seconds.
const MIN_SECONDS: i64 = -62_135_596_800;
/// Latest timestamp accepted (9999-12-31T23:59:59Z), in seconds.
const MAX_SECONDS: i64 = 253_402_300_799;

// ---- time and money -------------------------------------------------------

/// A domain instant as a protobuf timestamp.
pub fn timestamp_to_proto(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_seconds_nanos();
    prost_types::Timestamp { seconds, nanos }
}

/// A protobuf timestamp as a domain instant, checked against the
/// well-known type's valid range.
///
/// # Errors
/// A violation of `field` when out of range.
pub fn timestamp_from_proto(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<Timestamp, FieldViolation> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(FieldViolation::new(
            field,
            "is not a valid timestamp (years 1-9999, nanos 0-999999999)",
        ));
    }
    Ok(Timestamp::from_seconds_nanos(t.seconds, t.nanos))
}

/// Domain money as protobuf.
pub fn money_to_proto(m: Money) -> pb::Money {
    pb::Money {
        currency_code: m.currency.code().to_owned(),
        minor_units: m.minor_units,
    }
}

/// A positive amount in a known currency, from protobuf. `field` is the
/// path of the `Money` message (`campaign.face_value`).
///
/// # Errors
/// Violations naming `field.currency_code` and/or `field.minor_units`.
pub fn positive_money_from_proto(field: &str, m: &pb::Money) -> Result<Money, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let currency = Currency::from_code(&m.currency_code);
    if currency.is_none() {
        v.push(FieldViolation::new(
            format!("{field}.currency_code"),
            if m.currency_code.is_empty() {
                "must be set to an ISO 4217 code, for example JPY".to_owned()
            } else {
                format!(
                    "{:?} is not a known ISO 4217 currency code (upper case, for example JPY)",
                    truncate(&m.currency_code, 8)
                )
            },
        ));
    }
    if m.minor_units <= 0 {
        v.push(FieldViolation::new(
            format!("{field}.minor_units"),
            "must be positive",
        ));
    } else if m.minor_units > MAX_FACE_VALUE {
        v.push(FieldViolation::new(
            format!("{field}.minor_units"),
            format!("must be at most {MAX_FACE_VALUE}"),
        ));
    }
    match currency {
        Some(c) if v.is_empty() => Ok(Money::new(c, m.minor_units)),
        _ => Err(v),
    }
}

// ---- enums -----------------------------------------------------------------

/// A code state as protobuf.
pub fn code_state_to_proto(s: CodeState) -> pb::CodeState {
    match s {
        CodeState::Active => pb::CodeState::Active,
        CodeState::Pending => pb::CodeState::Pending,
        CodeState::Redeemed => pb::CodeState::Redeemed,
        CodeState::Expired => pb::CodeState::Expired,
        CodeState::Void => pb::CodeState::Void,
    }
}

/// An exchange state as protobuf.
pub fn exchange_state_to_proto(s: ExchangeState) -> pb::ExchangeState {
    match s {
        ExchangeState::Pending => pb::ExchangeState::Pending,
        ExchangeState::Succeeded => pb::ExchangeState::Succeeded,
        ExchangeState::Failed => pb::ExchangeState::Failed,
    }
}

/// A deliverable kind as protobuf.
pub fn deliverable_kind_to_proto(k: DeliverableKind) -> pb::DeliverableKind {
    match k {
        DeliverableKind::GiftCode => pb::DeliverableKind::GiftCode,
        DeliverableKind::GiftId => pb::DeliverableKind::GiftId,
        DeliverableKind::Shipment => pb::DeliverableKind::Shipment,
        DeliverableKind::DonationReceipt => pb::DeliverableKind::DonationReceipt,
    }
}

/// A batch state as protobuf.
pub fn batch_state_to_proto(s: BatchState) -> pb::BatchState {
    match s {
        BatchState::Issuing => pb::BatchState::Issuing,
        BatchState::Complete => pb::BatchState::Complete,
        BatchState::Incomplete => pb::BatchState::Incomplete,
        BatchState::Void => pb::BatchState::Void,
    }
}

/// Checks an enum field of a request: a value the API defines, and not
/// the `_UNSPECIFIED` zero unless `allow_unspecified`.
///
/// # Errors
/// A violation of `field`.
pub fn enum_from_proto<E: TryFrom<i32>>(
    field: &str,
    value: i32,
    allow_unspecified: bool,
) -> Result<Option<E>, FieldViolation> {
    if value == 0 && allow_unspecified {
        return Ok(None);
    }
    if value == 0 {
        return Err(FieldViolation::new(field, "must be set"));
    }
    E::try_from(value)
        .map(Some)
        .map_err(|_| FieldViolation::new(field, format!("{value} is not a known value")))
}

// ---- resources -------------------------------------------------------------

/// A campaign as protobuf.
pub fn campaign_to_proto(c: &Campaign) -> pb::Campaign {
    pb::Campaign {
        name: campaign_name(&c.spec.id),
        display_name: c.spec.display_name.clone(),
        face_value: Some(money_to_proto(c.spec.face_value)),
        expire_time: Some(timestamp_to_proto(c.spec.expire_time)),
        options: c
            .spec
            .options
            .iter()
            .map(|o| pb::RedemptionOption {
                option_id: o.id.to_string(),
                display_name: o.display_name.clone(),
                provider: o.provider.to_string(),
                requires_shipping_address: false,
            })
            .collect(),
        create_time: Some(timestamp_to_proto(c.create_time)),
        owner: c.spec.owner.clone(),
        update_time: Some(timestamp_to_proto(c.update_time)),
        code_series: c.series.to_string(),
        tenant: c.spec.tenant.to_string(),
        hmac_key_id: c.spec.hmac_key.clone(),
    }
}

/// A batch as protobuf.
pub fn batch_to_proto(b: &Batch) -> pb::Batch {
    pb::Batch {
        name: batch_name(&b.campaign, &b.id),
        requested_count: i64::try_from(b.requested).unwrap_or(i64::MAX),
        issued_count: i64::try_from(b.issued).unwrap_or(i64::MAX),
        state: batch_state_to_proto(b.state) as i32,
        create_time: Some(timestamp_to_proto(b.create_time)),
        update_time: Some(timestamp_to_proto(b.update_time)),
    }
}

/// `campaigns/{id}`.
pub fn campaign_name(id: &CampaignId) -> String {
    format!("campaigns/{id}")
}

/// `campaigns/{c}/batches/{b}`.
pub fn batch_name(c: &CampaignId, b: &BatchId) -> String {
    format!("campaigns/{c}/batches/{b}")
}

/// `exchanges/{id}`.
pub fn exchange_name(id: &ExchangeId) -> String {
    format!("exchanges/{}", id.0)
}

fn check_name_length(field: &str, name: &str) -> Result<(), FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if name.len() > MAX_RESOURCE_NAME {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_RESOURCE_NAME} characters"),
        ));
    }
    Ok(())
}

/// Parses `campaigns/{campaign_id}`.
///
/// # Errors
/// A violation of `field`.
pub fn parse_campaign_name(field: &str, name: &str) -> Result<CampaignId, FieldViolation> {
    check_name_length(field, name)?;
    let Some(id) = name.strip_prefix("campaigns/") else {
        return Err(FieldViolation::new(
            field,
            "must have the form campaigns/{campaign_id}",
        ));
    };
    CampaignId::parse(field, id)
        .map_err(|v| FieldViolation::new(field, format!("campaign id {}", v.description)))
}

/// Parses `campaigns/{campaign_id}/batches/{batch_id}`.
///
/// # Errors
/// A violation of `field`.
pub fn parse_batch_name(field: &str, name: &str) -> Result<(CampaignId, BatchId), FieldViolation> {
    check_name_length(field, name)?;
    let form = || {
        FieldViolation::new(
            field,
            "must have the form campaigns/{campaign_id}/batches/{batch_id}",
        )
    };
    let rest = name.strip_prefix("campaigns/").ok_or_else(form)?;
    let (c, b) = rest.split_once("/batches/").ok_or_else(form)?;
    let c = CampaignId::parse(field, c)
        .map_err(|v| FieldViolation::new(field, format!("campaign id {}", v.description)))?;
    let b = BatchId::parse(field, b)
        .map_err(|v| FieldViolation::new(field, format!("batch id {}", v.description)))?;
    Ok((c, b))
}

/// Parses `exchanges/{exchange_id}`: the id is opaque, 1-128 characters
/// of letters, digits, `-`, `_`, `.`, `~` and `:`.
///
/// # Errors
/// A violation of `field`.
pub fn parse_exchange_name(field: &str, name: &str) -> Result<ExchangeId, FieldViolation> {
    check_name_length(field, name)?;
    let Some(id) = name.strip_prefix("exchanges/") else {
        return Err(FieldViolation::new(
            field,
            "must have the form exchanges/{exchange_id}",
        ));
    };
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':'));
    let exchange = ExchangeId(id.to_owned());
    if !ok || !exchange.is_well_formed() {
        return Err(FieldViolation::new(
            field,
            "exchange id is malformed (giftx exchange ids are hex digits, as in the names \
             ListPendingExchanges and GetExchange return)",
        ));
    }
    Ok(exchange)
}

// ---- credentials and strings ----------------------------------------------

/// Parses a typed code, with the parser's reason on failure.
///
/// # Errors
/// A violation of `field`.
pub fn parse_code(field: &str, typed: &str) -> Result<Code, FieldViolation> {
    if typed.trim().is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if typed.len() > MAX_TYPED_CREDENTIAL {
        return Err(FieldViolation::new(field, "is far too long to be a code"));
    }
    Code::parse(typed).map_err(|e| FieldViolation::new(field, e.to_string()))
}

/// Parses a typed login key, with the parser's reason on failure.
///
/// # Errors
/// A violation of `field`.
pub fn parse_login_key(field: &str, typed: &str) -> Result<LoginKey, FieldViolation> {
    if typed.trim().is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if typed.len() > MAX_TYPED_CREDENTIAL {
        return Err(FieldViolation::new(
            field,
            "is far too long to be a login key",
        ));
    }
    LoginKey::parse(typed).map_err(|e| FieldViolation::new(field, e.to_string()))
}

/// Checks free text: at most `max` characters, no control characters.
///
/// # Errors
/// A violation of `field`.
pub fn check_text(field: &str, s: &str, max: usize) -> Result<(), FieldViolation> {
    if s.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a caller's idempotency key: 1-128 printable ASCII characters
/// (empty allowed when not `required`).
///
/// # Errors
/// A violation of `field`.
pub fn check_request_id(field: &str, s: &str, required: bool) -> Result<(), FieldViolation> {
    if s.is_empty() {
        return if required {
            Err(FieldViolation::new(field, "must not be empty"))
        } else {
            Ok(())
        };
    }
    if s.len() > MAX_REQUEST_ID {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_REQUEST_ID} characters"),
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldViolation::new(
            field,
            "may contain only printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

/// Checks a contact email loosely (`local@domain`, at most 254
/// characters); empty means none.
///
/// # Errors
/// A violation of `field`.
pub fn check_email(field: &str, s: &str) -> Result<Option<String>, FieldViolation> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    check_text(field, s, MAX_EMAIL)?;
    match s.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !s.contains(char::is_whitespace) =>
        {
            Ok(Some(s.to_owned()))
        }
        _ => Err(FieldViolation::new(
            field,
            "is not an email address (name@example.com)",
        )),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

// ---- paging ----------------------------------------------------------------

/// AIP-158 page size: negative is an error, 0 means `default`, above
/// `max` is coerced to `max`.
///
/// # Errors
/// A violation of `field` for a negative size.
pub fn page_size(
    field: &str,
    size: i32,
    default: usize,
    max: usize,
) -> Result<usize, FieldViolation> {
    match usize::try_from(size) {
        Err(_) => Err(FieldViolation::new(field, "must not be negative")),
        Ok(0) => Ok(default),
        Ok(n) => Ok(n.min(max)),
    }
}

const PAGE_TOKEN_PREFIX: &str = "giftx-page-v1:";
/// Bytes of MAC in a page token: enough that a forged token is refused
/// here instead of reaching the ledger.
const PAGE_TOKEN_MAC: usize = 12;

fn page_token_mac(hasher: &Hasher, cursor: &str) -> [u8; PAGE_TOKEN_MAC] {
    hasher
        .fingerprint(&[PAGE_TOKEN_PREFIX.as_bytes(), cursor.as_bytes()])
        .prefix::<PAGE_TOKEN_MAC>()
}

/// Wraps a ledger cursor as an opaque page token, authenticated with the
/// current HMAC key.
pub fn encode_page_token(keys: &KeyRing, cursor: &str) -> String {
    let mut bytes = page_token_mac(keys.current(), cursor).to_vec();
    bytes.extend_from_slice(cursor.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Unwraps a page token made by [`encode_page_token`] under any key of
/// the ring (a listing paged across a rotation goes on); empty means the
/// first page.
///
/// # Errors
/// A violation of `field` for anything this server did not hand out.
pub fn decode_page_token(
    keys: &KeyRing,
    field: &str,
    token: &str,
) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FieldViolation::new(field, "is not a page token returned by this API");
    if token.len() > MAX_PAGE_TOKEN {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    if bytes.len() <= PAGE_TOKEN_MAC {
        return Err(bad());
    }
    let (mac, cursor) = bytes.split_at(PAGE_TOKEN_MAC);
    let cursor = std::str::from_utf8(cursor).map_err(|_| bad())?;
    if !keys
        .hashers()
        .any(|h| giftx_core::hash::ct_eq(mac, &page_token_mac(h, cursor)))
    {
        return Err(bad());
    }
    Ok(Some(cursor.to_owned()))
}

// ---- requests --------------------------------------------------------------

/// Validates a CreateCampaign request into a spec. `now` is the server's
/// clock; `provider_configured` says whether a provider id is configured.
///
/// # Errors
/// Every violation found, each naming its field.
pub fn campaign_spec_from_request(
    req: &pb::CreateCampaignRequest,
    now: Timestamp,
    provider_configured: impl Fn(&str) -> bool,
) -> Result<CampaignSpec, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let id = CampaignId::parse("campaign_id", &req.campaign_id)
        .map_err(|e| v.push(e))
        .ok();
    if let Err(e) = check_request_id("request_id", &req.request_id, false) {
        v.push(e);
    }
    let Some(c) = &req.campaign else {
        v.push(FieldViolation::new("campaign", "must be set"));
        return Err(v);
    };
    if let Err(e) = check_text("campaign.display_name", &c.display_name, MAX_DISPLAY_NAME) {
        v.push(e);
    }
    if let Err(e) = check_text("campaign.owner", &c.owner, MAX_DISPLAY_NAME) {
        v.push(e);
    }
    let face_value = match &c.face_value {
        None => {
            v.push(FieldViolation::new("campaign.face_value", "must be set"));
            None
        }
        Some(m) => positive_money_from_proto("campaign.face_value", m)
            .map_err(|e| v.extend(e))
            .ok(),
    };
    let expire_time = match &c.expire_time {
        None => {
            v.push(FieldViolation::new("campaign.expire_time", "must be set"));
            None
        }
        Some(t) => match timestamp_from_proto("campaign.expire_time", t) {
            Err(e) => {
                v.push(e);
                None
            }
            Ok(t) if t <= now => {
                v.push(FieldViolation::new(
                    "campaign.expire_time",
                    "must be in the future",
                ));
                None
            }
            Ok(t) => Some(t),
        },
    };
    if c.options.is_empty() {
        v.push(FieldViolation::new(
            "campaign.options",
            "must have at least one option",
        ));
    } else if c.options.len() > MAX_OPTIONS {
        v.push(FieldViolation::new(
            "campaign.options",
            format!("must have at most {MAX_OPTIONS} options"),
        ));
    }
    let mut options = Vec::with_capacity(c.options.len().min(MAX_OPTIONS));
    let mut seen: Vec<OptionId> = Vec::new();
    for (i, o) in c.options.iter().enumerate().take(MAX_OPTIONS) {
        let f = |name: &str| format!("campaign.options[{i}].{name}");
        let oid = OptionId::parse(&f("option_id"), &o.option_id)
            .map_err(|e| v.push(e))
            .ok();
        if let Some(oid) = &oid
            && seen.contains(oid)
        {
            v.push(FieldViolation::new(
                f("option_id"),
                format!("{oid} appears more than once"),
            ));
        }
        if let Some(oid) = &oid {
            seen.push(oid.clone());
        }
        if let Err(e) = check_text(&f("display_name"), &o.display_name, MAX_DISPLAY_NAME) {
            v.push(e);
        }
        let provider = match ProviderId::parse(&f("provider"), &o.provider) {
            Err(e) => {
                v.push(e);
                None
            }
            Ok(p) if !provider_configured(p.as_str()) => {
                v.push(FieldViolation::new(
                    f("provider"),
                    format!("{p} is not a configured provider"),
                ));
                None
            }
            Ok(p) => Some(p),
        };
        if let (Some(id), Some(provider)) = (oid, provider) {
            let display_name = if o.display_name.trim().is_empty() {
                id.to_string()
            } else {
                o.display_name.trim().to_owned()
            };
            options.push(RedemptionOption {
                id,
                display_name,
                provider,
            });
        }
    }
    match (id, face_value, expire_time) {
        (Some(id), Some(face_value), Some(expire_time)) if v.is_empty() => {
            let display_name = if c.display_name.trim().is_empty() {
                id.to_string()
            } else {
                c.display_name.trim().to_owned()
            };
            Ok(CampaignSpec {
                id,
                display_name,
                owner: c.owner.trim().to_owned(),
                face_value,
                expire_time,
                options,
                // The caller's tenant, set by CreateCampaign.
                tenant: giftx_core::model::TenantId::default_tenant(),
                hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
            })
        }
        _ => Err(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_malformed_names_are_refused() {
        assert_eq!(
            parse_campaign_name("name", "campaigns/leak-2014")
                .unwrap()
                .as_str(),
            "leak-2014"
        );
        let (c, b) = parse_batch_name("name", "campaigns/leak-2014/batches/0001").unwrap();
        assert_eq!((c.as_str(), b.as_str()), ("leak-2014", "0001"));
        for bad in [
            "",
            "leak",
            "campaigns/",
            "campaigns/Leak",
            "campaign/x",
            "campaigns/a/b",
        ] {
            assert_eq!(parse_campaign_name("name", bad).unwrap_err().field, "name");
        }
        for bad in [
            "campaigns/a",
            "campaigns/a/batches/",
            "campaigns/a/batches/B",
            "x/batches/1",
        ] {
            assert!(parse_batch_name("name", bad).is_err(), "{bad}");
        }
        // The forms both ledgers give out.
        assert!(parse_exchange_name("name", "exchanges/03e8abababababababababababab0003").is_ok());
        assert!(parse_exchange_name("name", "exchanges/m3e80000000002a").is_ok());
        for bad in [
            "exchanges/a/b",
            "exchanges/hello",
            "exchanges/",
            "hello",
            "exchanges/03E8ABABABABABABABABABABAB000300",
            "exchanges/m3e8",
            "exchanges/03e8abababababababababababab00031",
        ] {
            assert!(parse_exchange_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_forgeries_are_refused() {
        let h = KeyRing::single(Hasher::random().unwrap());
        let t = encode_page_token(&h, "17");
        assert_eq!(
            decode_page_token(&h, "page_token", &t).unwrap().as_deref(),
            Some("17")
        );
        assert_eq!(decode_page_token(&h, "page_token", "").unwrap(), None);
        let forged = encode_page_token(&KeyRing::single(Hasher::random().unwrap()), "17");
        for bad in [
            "!!",
            "abc",
            &URL_SAFE_NO_PAD.encode("0123456789abcdef"),
            &"A".repeat(2000),
            &forged,
        ] {
            assert!(decode_page_token(&h, "page_token", bad).is_err(), "{bad}");
        }
        // A token handed out before a rotation still pages on after it.
        let rotated = KeyRing::new(vec![
            ("k2".into(), giftx_core::Secret::new(vec![2; 32])),
            ("k1".into(), giftx_core::Secret::new(vec![1; 32])),
        ])
        .unwrap();
        let before =
            KeyRing::new(vec![("k1".into(), giftx_core::Secret::new(vec![1; 32]))]).unwrap();
        let old = encode_page_token(&before, "42");
        assert_eq!(
            decode_page_token(&rotated, "page_token", &old)
                .unwrap()
                .as_deref(),
            Some("42")
        );
        assert_eq!(page_size("page_size", 0, 50, 1000).unwrap(), 50);
        assert_eq!(page_size("page_size", 5000, 50, 1000).unwrap(), 1000);
        assert!(page_size("page_size", -1, 50, 1000).is_err());
    }

    #[test]
    fn timestamps_out_of_range_are_refused() {
        let t = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(timestamp_from_proto("t", &t).is_err());
        let t = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(timestamp_from_proto("t", &t).is_err());
        let t = timestamp_to_proto(Timestamp(1_417_000_000_123));
        assert_eq!(
            timestamp_from_proto("t", &t).unwrap(),
            Timestamp(1_417_000_000_123)
        );
    }

    #[test]
    fn emails_request_ids_and_credentials() {
        assert!(check_email("e", "a@b.jp").unwrap().is_some());
        assert!(check_email("e", "").unwrap().is_none());
        for bad in ["a", "a@b", "@b.jp", "a@.jp", "a b@c.jp"] {
            assert!(check_email("e", bad).is_err(), "{bad}");
        }
        assert!(check_request_id("r", "", false).is_ok());
        assert!(check_request_id("r", "", true).is_err());
        assert!(check_request_id("r", "a b", true).is_err());
        assert!(check_request_id("r", &"x".repeat(129), true).is_err());
        assert_eq!(parse_code("code", "").unwrap_err().field, "code");
        assert!(parse_code("code", &"A".repeat(100)).is_err());
        assert!(parse_login_key("login_key", "????").is_err());
    }
}
