//! How giftx's messages are shown: text for humans, JSON for scripts.
//!
//! JSON field names follow the proto (snake_case); enums are their names,
//! times RFC 3339, money `{currency_code, minor_units, display}`.

use std::io::{self, Write};

use giftx_core::{Currency, Money as CoreMoney};
use giftx_proto::v1::{
    ApiKey, AuditEvent, Batch, BatchState, Campaign, CampaignStats, CodeState, CodeStatus,
    Deliverable, DeliverableKind, Exchange, ExchangeState, Money, RedemptionOption, Role,
    SweepReport,
};
use serde_json::{Value, json};

use crate::time::format_display;

/// An enum field's name, or its number when this giftctl does not know it.
fn enum_name<E>(value: i32, name: impl Fn(&E) -> &'static str) -> String
where
    E: TryFrom<i32>,
{
    E::try_from(value).map_or_else(|_| value.to_string(), |e| name(&e).to_owned())
}

/// `CODE_STATE_ACTIVE` → `ACTIVE`, for humans.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

/// Name of a code state.
pub fn code_state(v: i32) -> String {
    enum_name(v, CodeState::as_str_name)
}

/// Name of an exchange state.
pub fn exchange_state(v: i32) -> String {
    enum_name(v, ExchangeState::as_str_name)
}

fn batch_state(v: i32) -> String {
    enum_name(v, BatchState::as_str_name)
}

fn deliverable_kind(v: i32) -> String {
    enum_name(v, DeliverableKind::as_str_name)
}

/// Money for humans: `500 JPY`, `12.05 USD`.
pub fn money(m: Option<&Money>) -> String {
    match m {
        None => "-".to_owned(),
        Some(m) => match Currency::from_code(&m.currency_code) {
            Some(c) => CoreMoney::new(c, m.minor_units).to_string(),
            None => format!("{} {} (minor units)", m.minor_units, m.currency_code),
        },
    }
}

fn money_json(m: Option<&Money>) -> Value {
    match m {
        None => Value::Null,
        Some(v) => json!({
            "currency_code": v.currency_code,
            "minor_units": v.minor_units,
            "display": money(m),
        }),
    }
}

/// A timestamp for humans and JSON alike (`-` / null when unset).
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), format_display)
}

fn time_json(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(format_display(t)))
}

/// The id at the end of a resource name (`campaigns/x` → `x`).
pub fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn option_json(o: &RedemptionOption) -> Value {
    json!({"option_id": o.option_id, "display_name": o.display_name, "provider": o.provider})
}

/// A campaign as JSON.
pub fn campaign_json(c: &Campaign) -> Value {
    json!({
        "name": c.name,
        "display_name": c.display_name,
        "owner": c.owner,
        "face_value": money_json(c.face_value.as_ref()),
        "expire_time": time_json(c.expire_time.as_ref()),
        "options": c.options.iter().map(option_json).collect::<Vec<_>>(),
        "create_time": time_json(c.create_time.as_ref()),
        "update_time": time_json(c.update_time.as_ref()),
        "code_series": c.code_series,
        "tenant": c.tenant,
        "hmac_key_id": c.hmac_key_id,
    })
}

/// A campaign for humans.
pub fn campaign_text(w: &mut dyn Write, c: &Campaign) -> io::Result<()> {
    writeln!(w, "campaign      {}", c.name)?;
    writeln!(w, "display name  {}", c.display_name)?;
    if !c.owner.is_empty() {
        writeln!(w, "owner         {}", c.owner)?;
    }
    writeln!(w, "face value    {}", money(c.face_value.as_ref()))?;
    writeln!(w, "deadline      {}", time(c.expire_time.as_ref()))?;
    if !c.code_series.is_empty() {
        writeln!(w, "code series   {}", c.code_series)?;
    }
    if !c.tenant.is_empty() {
        writeln!(w, "tenant        {}", c.tenant)?;
    }
    if !c.hmac_key_id.is_empty() {
        writeln!(w, "hmac key      {}", c.hmac_key_id)?;
    }
    writeln!(w, "created       {}", time(c.create_time.as_ref()))?;
    writeln!(w, "updated       {}", time(c.update_time.as_ref()))?;
    writeln!(w, "options")?;
    options_text(w, &c.options)
}

fn options_text(w: &mut dyn Write, options: &[RedemptionOption]) -> io::Result<()> {
    for o in options {
        writeln!(
            w,
            "  {:<20} {:<20} {}",
            o.option_id, o.provider, o.display_name
        )?;
    }
    Ok(())
}

/// Columns, each as wide as its widest cell (header included), two spaces
/// apart; `right[i]` right-aligns column `i`; the last column is not
/// padded.
fn table(
    w: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    right: &[bool],
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let last = i + 1 == row.len();
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// A list of campaigns for humans, one per line.
pub fn campaigns_text(w: &mut dyn Write, list: &[Campaign]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                last_segment(&c.name).to_owned(),
                money(c.face_value.as_ref()),
                time(c.expire_time.as_ref()),
                c.options.len().to_string(),
                c.display_name.clone(),
            ]
        })
        .collect();
    table(
        w,
        &["ID", "FACE VALUE", "DEADLINE", "OPTIONS", "DISPLAY NAME"],
        &rows,
        &[false, false, false, true, false],
    )?;
    writeln!(w, "{} campaign(s)", list.len())
}

/// A batch as JSON.
pub fn batch_json(b: &Batch) -> Value {
    json!({
        "name": b.name,
        "requested_count": b.requested_count,
        "issued_count": b.issued_count,
        "state": batch_state(b.state),
        "create_time": time_json(b.create_time.as_ref()),
        "update_time": time_json(b.update_time.as_ref()),
    })
}

/// A batch for humans.
pub fn batch_text(w: &mut dyn Write, b: &Batch) -> io::Result<()> {
    writeln!(w, "batch      {}", b.name)?;
    writeln!(
        w,
        "state      {}",
        short(&batch_state(b.state), "BATCH_STATE_")
    )?;
    writeln!(w, "requested  {}", b.requested_count)?;
    writeln!(w, "issued     {}", b.issued_count)?;
    writeln!(w, "created    {}", time(b.create_time.as_ref()))?;
    writeln!(w, "updated    {}", time(b.update_time.as_ref()))
}

/// Campaign stats as JSON.
pub fn stats_json(s: &CampaignStats) -> Value {
    json!({
        "campaign": s.campaign,
        "issued_count": s.issued_count,
        "by_state": s.by_state.iter().map(|st| json!({
            "state": code_state(st.state),
            "count": st.count,
            "value": money_json(st.value.as_ref()),
        })).collect::<Vec<_>>(),
        "by_option": s.by_option.iter().map(|o| json!({
            "option_id": o.option_id,
            "redeemed_count": o.redeemed_count,
            "redeemed_value": money_json(o.redeemed_value.as_ref()),
            "pending_count": o.pending_count,
        })).collect::<Vec<_>>(),
        "breakage": money_json(s.breakage.as_ref()),
        "read_time": time_json(s.read_time.as_ref()),
    })
}

/// Campaign stats for humans.
pub fn stats_text(w: &mut dyn Write, s: &CampaignStats) -> io::Result<()> {
    writeln!(w, "campaign  {}", s.campaign)?;
    writeln!(w, "issued    {}", s.issued_count)?;
    writeln!(w, "read at   {}", time(s.read_time.as_ref()))?;
    writeln!(w)?;
    writeln!(w, "{:<12} {:>12} {:>20}", "STATE", "CODES", "VALUE")?;
    for st in &s.by_state {
        writeln!(
            w,
            "{:<12} {:>12} {:>20}",
            short(&code_state(st.state), "CODE_STATE_"),
            st.count,
            money(st.value.as_ref())
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "{:<24} {:>12} {:>20} {:>10}",
        "OPTION", "REDEEMED", "VALUE", "PENDING"
    )?;
    for o in &s.by_option {
        writeln!(
            w,
            "{:<24} {:>12} {:>20} {:>10}",
            o.option_id,
            o.redeemed_count,
            money(o.redeemed_value.as_ref()),
            o.pending_count
        )?;
    }
    writeln!(w)?;
    writeln!(w, "breakage  {}", money(s.breakage.as_ref()))
}

fn deliverable_json(d: &Deliverable) -> Value {
    json!({
        "kind": deliverable_kind(d.kind),
        "code": d.code,
        "pin": d.pin,
        "value": money_json(d.value.as_ref()),
        "expire_time": time_json(d.expire_time.as_ref()),
        "redeem_url": d.redeem_url,
        "reference": d.reference,
    })
}

/// An exchange as JSON.
pub fn exchange_json(e: &Exchange) -> Value {
    json!({
        "name": e.name,
        "campaign": e.campaign,
        "state": exchange_state(e.state),
        "option_id": e.option_id,
        "deliverable": e.deliverable.as_ref().map_or(Value::Null, deliverable_json),
        "failure_reason": e.failure_reason,
        "attempts": e.attempts,
        "parked": e.parked,
        "create_time": time_json(e.create_time.as_ref()),
        "update_time": time_json(e.update_time.as_ref()),
    })
}

/// An exchange for humans, each line indented by `indent`.
pub fn exchange_text(w: &mut dyn Write, e: &Exchange, indent: &str) -> io::Result<()> {
    writeln!(w, "{indent}exchange   {}", e.name)?;
    writeln!(
        w,
        "{indent}state      {}",
        short(&exchange_state(e.state), "EXCHANGE_STATE_")
    )?;
    writeln!(w, "{indent}option     {}", e.option_id)?;
    if !e.campaign.is_empty() {
        writeln!(w, "{indent}campaign   {}", e.campaign)?;
    }
    if !e.failure_reason.is_empty() {
        writeln!(w, "{indent}failure    {}", e.failure_reason)?;
    }
    if e.attempts > 0 {
        writeln!(w, "{indent}attempts   {}", e.attempts)?;
    }
    if e.parked {
        writeln!(
            w,
            "{indent}parked     yes (waiting for an operator: giftctl pending reconcile {})",
            e.name
        )?;
    }
    writeln!(w, "{indent}created    {}", time(e.create_time.as_ref()))?;
    writeln!(w, "{indent}updated    {}", time(e.update_time.as_ref()))?;
    if let Some(d) = &e.deliverable {
        writeln!(
            w,
            "{indent}deliverable {}",
            short(&deliverable_kind(d.kind), "DELIVERABLE_KIND_")
        )?;
        let gift_id = d.kind == DeliverableKind::GiftId as i32;
        let (code_label, pin_label) = if gift_id {
            ("gift ID          ", "management number")
        } else {
            ("code             ", "pin              ")
        };
        if !d.code.is_empty() {
            writeln!(w, "{indent}  {code_label} {}", d.code)?;
        }
        if !d.pin.is_empty() {
            writeln!(w, "{indent}  {pin_label} {}", d.pin)?;
        }
        if d.value.is_some() {
            writeln!(w, "{indent}  value             {}", money(d.value.as_ref()))?;
        }
        if d.expire_time.is_some() {
            writeln!(
                w,
                "{indent}  expires           {}",
                time(d.expire_time.as_ref())
            )?;
        }
        if !d.redeem_url.is_empty() {
            writeln!(w, "{indent}  redeem at         {}", d.redeem_url)?;
        }
        if !d.reference.is_empty() {
            writeln!(w, "{indent}  reference         {}", d.reference)?;
        }
    }
    Ok(())
}

/// A code's status as JSON.
pub fn code_status_json(s: &CodeStatus) -> Value {
    json!({
        "campaign": s.campaign,
        "state": code_state(s.state),
        "face_value": money_json(s.face_value.as_ref()),
        "expire_time": time_json(s.expire_time.as_ref()),
        "options": s.options.iter().map(option_json).collect::<Vec<_>>(),
        "exchange": s.exchange.as_ref().map_or(Value::Null, exchange_json),
    })
}

/// A code's status for humans, each line indented by `indent`.
pub fn code_status_text(w: &mut dyn Write, s: &CodeStatus, indent: &str) -> io::Result<()> {
    writeln!(w, "{indent}campaign   {}", s.campaign)?;
    writeln!(
        w,
        "{indent}state      {}",
        short(&code_state(s.state), "CODE_STATE_")
    )?;
    writeln!(w, "{indent}value      {}", money(s.face_value.as_ref()))?;
    writeln!(w, "{indent}deadline   {}", time(s.expire_time.as_ref()))?;
    writeln!(w, "{indent}options")?;
    for o in &s.options {
        writeln!(w, "{indent}  {:<20} {}", o.option_id, o.display_name)?;
    }
    if let Some(e) = &s.exchange {
        writeln!(w, "{indent}latest exchange")?;
        exchange_text(w, e, &format!("{indent}  "))?;
    }
    Ok(())
}

/// A sweep report as JSON.
pub fn sweep_json(r: &SweepReport) -> Value {
    json!({
        "campaign": r.campaign,
        "expired_count": r.expired_count,
        "expired_value": money_json(r.expired_value.as_ref()),
        "buckets_swept": r.buckets_swept,
        "sweep_time": time_json(r.sweep_time.as_ref()),
    })
}

/// A sweep report for humans.
pub fn sweep_text(w: &mut dyn Write, r: &SweepReport) -> io::Result<()> {
    writeln!(
        w,
        "{}: {} code(s) expired, value {} ({} bucket(s) swept at {})",
        r.campaign,
        r.expired_count,
        money(r.expired_value.as_ref()),
        r.buckets_swept,
        time(r.sweep_time.as_ref())
    )
}

/// Pending exchanges for humans, one per line.
pub fn pending_text(w: &mut dyn Write, list: &[Exchange]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                last_segment(&e.campaign).to_owned(),
                e.option_id.clone(),
                e.attempts.to_string(),
                if e.parked { "yes" } else { "no" }.to_owned(),
                time(e.create_time.as_ref()),
            ]
        })
        .collect();
    table(
        w,
        &[
            "EXCHANGE", "CAMPAIGN", "OPTION", "ATTEMPTS", "PARKED", "CREATED",
        ],
        &rows,
        &[false, false, false, true, false, false],
    )?;
    writeln!(w, "{} pending exchange(s)", list.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpy(n: i64) -> Option<Money> {
        Some(Money {
            currency_code: "JPY".into(),
            minor_units: n,
        })
    }

    #[test]
    fn money_and_enums_read_well() {
        assert_eq!(money(jpy(500).as_ref()), "500 JPY");
        assert_eq!(
            money(Some(&Money {
                currency_code: "USD".into(),
                minor_units: 1205
            })),
            "12.05 USD"
        );
        assert_eq!(money(None), "-");
        assert_eq!(code_state(CodeState::Active as i32), "CODE_STATE_ACTIVE");
        assert_eq!(code_state(99), "99");
        assert_eq!(last_segment("campaigns/demo-2014"), "demo-2014");
    }

    /// The byte offset of each column's start in a line, taken from where
    /// the header's words begin.
    fn column_starts(header: &str) -> Vec<usize> {
        let b = header.as_bytes();
        (0..b.len())
            .filter(|&i| b[i] != b' ' && (i == 0 || (b[i - 1] == b' ' && b[i - 2] == b' ')))
            .collect()
    }

    #[test]
    fn pending_columns_align_for_every_id_length() {
        let list: Vec<Exchange> = [
            "exchanges/x",
            "exchanges/0123456789abcdef0123456789abcdef0123456789abcdef",
            "exchanges/a-much-longer-exchange-identifier-than-forty-characters-in-all",
        ]
        .iter()
        .enumerate()
        .map(|(i, name)| Exchange {
            name: (*name).to_owned(),
            campaign: format!("campaigns/{}", "c".repeat(3 + 20 * i)),
            option_id: "o".repeat(1 + 17 * i),
            attempts: 10_i32.pow(i as u32 * 2),
            parked: i == 1,
            ..Default::default()
        })
        .collect();
        let mut out = Vec::new();
        pending_text(&mut out, &list).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let starts = column_starts(lines[0]);
        assert_eq!(starts.len(), 6, "{text}");
        for (row, e) in lines[1..4].iter().zip(&list) {
            // Every left-aligned cell begins where its header does.
            assert_eq!(&row[starts[0]..starts[0] + e.name.len()], e.name, "{text}");
            let campaign = last_segment(&e.campaign);
            assert_eq!(
                &row[starts[1]..starts[1] + campaign.len()],
                campaign,
                "{text}"
            );
            assert_eq!(
                &row[starts[2]..starts[2] + e.option_id.len()],
                e.option_id,
                "{text}"
            );
            // ATTEMPTS is right-aligned: it ends where its header ends.
            let end = starts[3] + "ATTEMPTS".len();
            let attempts = e.attempts.to_string();
            assert_eq!(&row[end - attempts.len()..end], attempts, "{text}");
            assert_eq!(row.as_bytes()[end - attempts.len() - 1], b' ', "{text}");
            assert!(
                row[starts[4]..].starts_with(if e.parked { "yes" } else { "no" }),
                "{text}"
            );
            assert!(row[starts[5]..].starts_with('-'), "{text}");
        }
        assert_eq!(lines[4], "3 pending exchange(s)");
    }

    #[test]
    fn select_gift_deliverable_shows_gift_id_and_management_number() {
        let e = Exchange {
            name: "exchanges/x1".into(),
            state: ExchangeState::Succeeded as i32,
            option_id: "select-gift".into(),
            deliverable: Some(Deliverable {
                kind: DeliverableKind::GiftId as i32,
                code: "AB12-CD34".into(),
                pin: "K8M9".into(),
                value: jpy(500),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut out = Vec::new();
        exchange_text(&mut out, &e, "").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("state      SUCCEEDED"), "{text}");
        assert!(text.contains("gift ID           AB12-CD34"), "{text}");
        assert!(text.contains("management number K8M9"), "{text}");
        let j = exchange_json(&e);
        assert_eq!(j["state"], "EXCHANGE_STATE_SUCCEEDED");
        assert_eq!(j["deliverable"]["kind"], "DELIVERABLE_KIND_GIFT_ID");
        assert_eq!(j["deliverable"]["value"]["minor_units"], 500);
        assert_eq!(j["create_time"], Value::Null);
    }
}

/// A role's name for people and JSON: `portal`, `operator`, `admin`
/// (None when unspecified; its number when unknown).
pub fn role(v: i32) -> Option<String> {
    match Role::try_from(v) {
        Ok(Role::Unspecified) => None,
        Ok(r) => Some(short(r.as_str_name(), "ROLE_").to_ascii_lowercase()),
        Err(_) => Some(v.to_string()),
    }
}

/// A key's state at `now`: `revoked`, `expired` or `active`.
pub fn api_key_state(k: &ApiKey, now: &prost_types::Timestamp) -> &'static str {
    if k.revoke_time.is_some() {
        "revoked"
    } else if k
        .expire_time
        .as_ref()
        .is_some_and(|t| !crate::time::is_after(t, now))
    {
        "expired"
    } else {
        "active"
    }
}

/// An API key as JSON (never a token: keys do not hold one).
pub fn api_key_json(k: &ApiKey, now: &prost_types::Timestamp) -> Value {
    json!({
        "name": k.name,
        "tenant": k.tenant,
        "role": role(k.role),
        "state": api_key_state(k, now),
        "create_time": time_json(k.create_time.as_ref()),
        "expire_time": time_json(k.expire_time.as_ref()),
        "revoke_time": time_json(k.revoke_time.as_ref()),
        "description": k.description,
    })
}

/// An API key for humans.
pub fn api_key_text(w: &mut dyn Write, k: &ApiKey, now: &prost_types::Timestamp) -> io::Result<()> {
    writeln!(w, "API key       {}", k.name)?;
    writeln!(w, "tenant        {}", k.tenant)?;
    writeln!(
        w,
        "role          {}",
        role(k.role).as_deref().unwrap_or("-")
    )?;
    writeln!(w, "state         {}", api_key_state(k, now))?;
    writeln!(w, "created       {}", time(k.create_time.as_ref()))?;
    match &k.expire_time {
        Some(t) => writeln!(w, "expires       {}", format_display(t))?,
        None => writeln!(w, "expires       never")?,
    }
    if let Some(t) = &k.revoke_time {
        writeln!(w, "revoked       {}", format_display(t))?;
    }
    if !k.description.is_empty() {
        writeln!(w, "description   {}", k.description)?;
    }
    Ok(())
}

/// API keys for humans, one per line.
pub fn api_keys_text(
    w: &mut dyn Write,
    list: &[ApiKey],
    now: &prost_types::Timestamp,
) -> io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                k.tenant.clone(),
                role(k.role).unwrap_or_else(|| "-".to_owned()),
                api_key_state(k, now).to_owned(),
                time(k.create_time.as_ref()),
                k.expire_time
                    .as_ref()
                    .map_or_else(|| "never".to_owned(), format_display),
                if k.description.is_empty() {
                    "-".to_owned()
                } else {
                    k.description.clone()
                },
            ]
        })
        .collect();
    table(
        w,
        &[
            "NAME",
            "TENANT",
            "ROLE",
            "STATE",
            "CREATED",
            "EXPIRES",
            "DESCRIPTION",
        ],
        &rows,
        &[],
    )?;
    writeln!(w, "{} key(s)", list.len())
}

/// An audit event as JSON.
pub fn audit_event_json(e: &AuditEvent) -> Value {
    json!({
        "id": e.id,
        "time": time_json(e.time.as_ref()),
        "principal": e.principal,
        "tenant": e.tenant,
        "role": role(e.role),
        "method": e.method,
        "resource": e.resource,
        "outcome": e.outcome,
        "trace_id": e.trace_id,
    })
}

/// `/giftx.v1.IssuanceService/VoidBatch` → `IssuanceService/VoidBatch`.
fn short_method(method: &str) -> &str {
    method
        .strip_prefix("/giftx.v1.")
        .unwrap_or_else(|| method.strip_prefix('/').unwrap_or(method))
}

/// The columns of an audit event for humans.
fn audit_row(e: &AuditEvent) -> Vec<String> {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    vec![
        time(e.time.as_ref()),
        or_dash(&e.principal),
        or_dash(&e.tenant),
        role(e.role).unwrap_or_else(|| "-".to_owned()),
        short_method(&e.method).to_owned(),
        or_dash(&e.resource),
        or_dash(&e.outcome),
        or_dash(&e.trace_id),
    ]
}

const AUDIT_HEADER: [&str; 8] = [
    "TIME",
    "PRINCIPAL",
    "TENANT",
    "ROLE",
    "METHOD",
    "RESOURCE",
    "OUTCOME",
    "TRACE ID",
];

/// Audit events for humans, one per line, oldest first.
pub fn audit_events_text(w: &mut dyn Write, list: &[AuditEvent]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = list.iter().map(audit_row).collect();
    table(w, &AUDIT_HEADER, &rows, &[])?;
    writeln!(w, "{} event(s)", list.len())
}

/// Column widths of `audit list --follow`, whose lines come one at a time
/// (longer cells push the rest of their line right).
const AUDIT_FOLLOW_WIDTHS: [usize; 7] = [24, 24, 12, 8, 36, 32, 17];

fn follow_line(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        line.push_str(cell);
        if let Some(width) = AUDIT_FOLLOW_WIDTHS.get(i) {
            line.push_str(&" ".repeat(width.saturating_sub(cell.chars().count())));
        }
    }
    line
}

/// The header of `audit list --follow`.
pub fn audit_follow_header(w: &mut dyn Write) -> io::Result<()> {
    let cells: Vec<String> = AUDIT_HEADER.iter().map(|h| (*h).to_owned()).collect();
    writeln!(w, "{}", follow_line(&cells))
}

/// One audit event as a line of `audit list --follow`.
pub fn audit_follow_line(w: &mut dyn Write, e: &AuditEvent) -> io::Result<()> {
    writeln!(w, "{}", follow_line(&audit_row(e)))
}

/// Where a command's result goes: stdout, as text or as one JSON document.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// `--json`.
    pub json: bool,
}

impl Output {
    /// Prints `json` (one line) under `--json`, else what `text` writes.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when stdout cannot be written.
    pub fn emit(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> crate::Result<()> {
        let stdout = io::stdout();
        let mut w = stdout.lock();
        let res = if self.json {
            serde_json::to_writer(&mut w, &json())
                .map_err(io::Error::from)
                .and_then(|()| writeln!(w))
        } else {
            text(&mut w)
        };
        res.and_then(|()| w.flush())
            .map_err(crate::Error::io("cannot write to stdout"))
    }
}
