//! How adapters keep deliverables in the provider store: a small JSON
//! record (the host seals it at rest).

use giftx_core::model::{Deliverable, DeliverableKind};
use giftx_core::{Currency, Money, Timestamp};
use giftx_provider::ProviderError;
use serde::{Deserialize, Serialize};

/// The deliverable kinds, as written in configuration and records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// [`DeliverableKind::GiftCode`].
    GiftCode,
    /// [`DeliverableKind::GiftId`].
    GiftId,
    /// [`DeliverableKind::Shipment`].
    Shipment,
    /// [`DeliverableKind::DonationReceipt`].
    DonationReceipt,
}

impl From<Kind> for DeliverableKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::GiftCode => DeliverableKind::GiftCode,
            Kind::GiftId => DeliverableKind::GiftId,
            Kind::Shipment => DeliverableKind::Shipment,
            Kind::DonationReceipt => DeliverableKind::DonationReceipt,
        }
    }
}

impl From<DeliverableKind> for Kind {
    fn from(k: DeliverableKind) -> Self {
        match k {
            DeliverableKind::GiftCode => Kind::GiftCode,
            DeliverableKind::GiftId => Kind::GiftId,
            DeliverableKind::Shipment => Kind::Shipment,
            DeliverableKind::DonationReceipt => Kind::DonationReceipt,
        }
    }
}

/// Money as stored: ISO code + minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyRecord {
    pub currency: String,
    pub minor_units: i64,
}

impl From<Money> for MoneyRecord {
    fn from(m: Money) -> Self {
        MoneyRecord {
            currency: m.currency.code().to_owned(),
            minor_units: m.minor_units,
        }
    }
}

impl MoneyRecord {
    pub fn to_money(&self) -> Result<Money, ProviderError> {
        let c = Currency::from_code(&self.currency)
            .ok_or_else(|| corrupt(format!("unknown currency {:?}", self.currency)))?;
        Ok(Money::new(c, self.minor_units))
    }
}

/// A [`Deliverable`] as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverableRecord {
    pub kind: Kind,
    pub code: String,
    pub pin: String,
    pub value: Option<MoneyRecord>,
    pub expire_time_ms: Option<i64>,
    pub redeem_url: String,
    pub reference: String,
}

impl From<&Deliverable> for DeliverableRecord {
    fn from(d: &Deliverable) -> Self {
        DeliverableRecord {
            kind: d.kind.into(),
            code: d.code.clone(),
            pin: d.pin.clone(),
            value: d.value.map(MoneyRecord::from),
            expire_time_ms: d.expire_time.map(Timestamp::millis),
            redeem_url: d.redeem_url.clone(),
            reference: d.reference.clone(),
        }
    }
}

impl DeliverableRecord {
    pub fn to_deliverable(&self) -> Result<Deliverable, ProviderError> {
        Ok(Deliverable {
            kind: self.kind.into(),
            code: self.code.clone(),
            pin: self.pin.clone(),
            value: self.value.as_ref().map(MoneyRecord::to_money).transpose()?,
            expire_time: self.expire_time_ms.map(Timestamp),
            redeem_url: self.redeem_url.clone(),
            reference: self.reference.clone(),
        })
    }
}

/// Serializes a record for the store.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(record).map_err(|e| corrupt(format!("encoding a record: {e}")))
}

/// Reads a record from the store.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(format!("decoding a record: {e}")))
}

/// A stored record giftx cannot read: the outcome is unknown to giftx, so
/// the exchange stays PENDING for an operator rather than failing (which
/// could hand out a second deliverable).
fn corrupt(why: String) -> ProviderError {
    ProviderError::unknown(format!("corrupt provider record: {why}"))
}
