//! Reading script replies and stored records into domain types.

use std::collections::HashMap;

use giftx_core::hash::DEFAULT_KEY_ID;
use giftx_core::model::{
    CampaignId, CampaignSpec, ExchangeState, OptionId, ProviderId, RedemptionOption, TenantId,
};
use giftx_core::{Currency, Digest, Money, Series, Timestamp};
use redis::Value;
use serde::{Deserialize, Serialize};

use crate::{ExchangeId, ExchangeRecord, LedgerError, Preferences};

pub(crate) fn internal(what: impl std::fmt::Display) -> LedgerError {
    LedgerError::Internal(what.to_string())
}

pub(crate) fn int(v: &Value) -> Result<i64, LedgerError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| internal("expected an integer reply")),
        Value::SimpleString(s) => s.parse().map_err(|_| internal("expected an integer reply")),
        _ => Err(internal(format!("expected an integer reply, got {v:?}"))),
    }
}

pub(crate) fn bytes(v: &Value) -> Result<Vec<u8>, LedgerError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.as_bytes().to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil => Ok(Vec::new()),
        _ => Err(internal("expected a string reply")),
    }
}

pub(crate) fn text(v: &Value) -> Result<String, LedgerError> {
    String::from_utf8(bytes(v)?).map_err(|_| internal("expected UTF-8"))
}

fn digest(b: &[u8]) -> Result<Digest, LedgerError> {
    let arr: [u8; 32] = b.try_into().map_err(|_| internal("bad digest length"))?;
    Ok(Digest(arr))
}

/// Values every exchange record reply has (18 in all: records stored
/// before the batch ordinal and serial, values 17 and 18, end at 16 and
/// read them as 0).
pub(crate) const RECORD_MIN_LEN: usize = 16;

/// An exchange record from the values the scripts return (see
/// `claim_code-7.lua`).
pub(crate) fn exchange(
    v: &[Value],
    id: ExchangeId,
    series: Series,
) -> Result<ExchangeRecord, LedgerError> {
    if v.len() < RECORD_MIN_LEN {
        return Err(internal("short exchange record"));
    }
    let tail = |i: usize| -> Result<u32, LedgerError> {
        match v.get(i) {
            None | Some(Value::Nil) => Ok(0),
            Some(x) => u32::try_from(int(x)?).map_err(internal),
        }
    };
    let state = match bytes(&v[0])?.as_slice() {
        b"P" => ExchangeState::Pending,
        b"S" => ExchangeState::Succeeded,
        b"F" => ExchangeState::Failed,
        _ => return Err(internal("bad exchange state")),
    };
    let option = OptionId::parse("option", &text(&v[1])?).map_err(|e| internal(e.description))?;
    let contact = bytes(&v[11])?;
    let prefs = int(&v[12])?;
    Ok(ExchangeRecord {
        id,
        series,
        option,
        state,
        sealed_deliverable: (int(&v[14])? == 1).then(|| bytes(&v[15])).transpose()?,
        failure_reason: text(&v[13])?,
        create_time: Timestamp(int(&v[4])?),
        update_time: Timestamp(int(&v[5])?),
        attempts: u32::try_from(int(&v[6])?).map_err(internal)?,
        parked: int(&v[7])? == 1,
        next_attempt_time: Timestamp(int(&v[8])?),
        contact: if contact.is_empty() {
            None
        } else {
            Some(digest(&contact)?)
        },
        preferences: Preferences {
            delete_personal_data: prefs & 1 != 0,
            stop_mail: prefs & 2 != 0,
        },
        batch_ordinal: tail(16)?,
        serial: tail(17)?,
    })
}

pub(crate) fn prefs_bits(p: Preferences) -> u8 {
    u8::from(p.delete_personal_data) | (u8::from(p.stop_mail) << 1)
}

#[derive(Serialize, Deserialize)]
struct OptionDto {
    id: String,
    display_name: String,
    provider: String,
}

/// A campaign's spec as stored (the deadline is kept apart: it moves).
#[derive(Serialize, Deserialize)]
struct SpecDto {
    display_name: String,
    owner: String,
    currency: String,
    minor_units: i64,
    options: Vec<OptionDto>,
    /// Absent for the default tenant, so the specs of campaigns stored
    /// before tenants existed compare equal to what a retried create
    /// writes now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// The HMAC key id; absent for the default key, for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hk: Option<String>,
}

pub(crate) fn spec_json(spec: &CampaignSpec) -> Result<String, LedgerError> {
    let dto = SpecDto {
        display_name: spec.display_name.clone(),
        owner: spec.owner.clone(),
        currency: spec.face_value.currency.code().to_owned(),
        minor_units: spec.face_value.minor_units,
        options: spec
            .options
            .iter()
            .map(|o| OptionDto {
                id: o.id.as_str().to_owned(),
                display_name: o.display_name.clone(),
                provider: o.provider.as_str().to_owned(),
            })
            .collect(),
        tenant: (spec.tenant.as_str() != TenantId::DEFAULT).then(|| spec.tenant.to_string()),
        hk: (spec.hmac_key != DEFAULT_KEY_ID).then(|| spec.hmac_key.clone()),
    };
    serde_json::to_string(&dto).map_err(internal)
}

/// A campaign as the ledger keeps it: the record and its push state.
#[derive(Clone, Debug)]
pub(crate) struct CampaignInfo {
    pub(crate) campaign: giftx_core::model::Campaign,
    /// Voided batch ordinals, `,1,4,`.
    pub(crate) voided: String,
    /// A deadline push not known to be finished.
    pub(crate) push: Option<u64>,
    /// Marked purged by `purge_campaign`: when, and at which version.
    pub(crate) purged: Option<(Timestamp, u64)>,
}

pub(crate) fn campaign(h: &HashMap<String, Vec<u8>>) -> Result<CampaignInfo, LedgerError> {
    let s = |k: &str| -> Result<String, LedgerError> {
        let v = h
            .get(k)
            .ok_or_else(|| internal(format!("campaign field {k} missing")))?;
        String::from_utf8(v.clone()).map_err(internal)
    };
    let n = |k: &str| -> Result<i64, LedgerError> { s(k)?.parse().map_err(internal) };
    let dto: SpecDto = serde_json::from_str(&s("spec")?).map_err(internal)?;
    let currency = Currency::from_code(&dto.currency).ok_or_else(|| internal("bad currency"))?;
    let mut options = Vec::with_capacity(dto.options.len());
    for o in dto.options {
        options.push(RedemptionOption {
            id: OptionId::parse("option", &o.id).map_err(|e| internal(e.description))?,
            display_name: o.display_name,
            provider: ProviderId::parse("provider", &o.provider)
                .map_err(|e| internal(e.description))?,
        });
    }
    let series = u16::try_from(n("ser")?)
        .ok()
        .and_then(Series::from_index)
        .ok_or_else(|| internal("bad series"))?;
    let campaign = giftx_core::model::Campaign {
        spec: CampaignSpec {
            id: CampaignId::parse("campaign", &s("id")?).map_err(|e| internal(e.description))?,
            display_name: dto.display_name,
            owner: dto.owner,
            face_value: Money::new(currency, dto.minor_units),
            expire_time: Timestamp(n("dl")?),
            options,
            tenant: match dto.tenant {
                Some(t) => TenantId::parse("tenant", &t).map_err(|e| internal(e.description))?,
                None => TenantId::default_tenant(),
            },
            hmac_key: dto.hk.unwrap_or_else(|| DEFAULT_KEY_ID.to_owned()),
        },
        series,
        create_time: Timestamp(n("ct")?),
        update_time: Timestamp(n("ut")?),
        version: u64::try_from(n("ver")?).map_err(internal)?,
    };
    Ok(CampaignInfo {
        campaign,
        voided: s("vo").unwrap_or_else(|_| ",".into()),
        push: h
            .get("push")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
        purged: match (h.get("pg"), h.get("pv")) {
            (Some(_), Some(_)) => Some((
                Timestamp(n("pg")?),
                u64::try_from(n("pv")?).map_err(internal)?,
            )),
            _ => None,
        },
    })
}
