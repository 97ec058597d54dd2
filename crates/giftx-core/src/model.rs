//! Campaigns, options, batches and exchanges, and their validated ids.

use std::fmt;

use crate::clock::Timestamp;
use crate::code::Series;
use crate::error::FieldViolation;
use crate::money::Money;

/// Checks an AIP-122 style resource id: 1-63 of `[a-z0-9-]`, starting with
/// a letter (or a digit when `digit_first`), not ending with a hyphen.
fn check_id(field: &str, s: &str, digit_first: bool) -> Result<(), FieldViolation> {
    let bad = |why: &str| Err(FieldViolation::new(field, why));
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > 63 {
        return bad("must be at most 63 characters");
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_lowercase() || (digit_first && first.is_ascii_digit())) {
        return bad(if digit_first {
            "must start with a lower-case letter or digit"
        } else {
            "must start with a lower-case letter"
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("may contain only lower-case letters, digits and hyphens");
    }
    if s.ends_with('-') {
        return bad("must not end with a hyphen");
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, digit_first = $d:expr) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s`, naming `field` in the violation.
            ///
            /// # Errors
            /// A [`FieldViolation`] saying what is wrong.
            pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
                check_id(field, s, $d)?;
                Ok($name(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A campaign's id (`campaigns/{id}`).
    CampaignId, digit_first = false
);
id_type!(
    /// An option's id within its campaign.
    OptionId, digit_first = false
);
id_type!(
    /// A batch's id within its campaign.
    BatchId, digit_first = true
);
id_type!(
    /// A configured provider's id (`[providers.<id>]`).
    ProviderId, digit_first = false
);
id_type!(
    /// A tenant: the company whose campaigns, keys and audit events these
    /// are. Every campaign belongs to one.
    TenantId, digit_first = false
);

impl TenantId {
    /// The tenant of everything created without authentication (and of
    /// campaigns stored before tenants existed).
    pub const DEFAULT: &'static str = "default";

    /// [`TenantId::DEFAULT`].
    pub fn default_tenant() -> TenantId {
        TenantId(Self::DEFAULT.to_owned())
    }
}

/// What a code may become, bound to a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedemptionOption {
    /// The option's id.
    pub id: OptionId,
    /// Name shown to holders.
    pub display_name: String,
    /// The provider that fulfils it.
    pub provider: ProviderId,
}

/// What an operator asks for when creating a campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignSpec {
    /// The campaign's id.
    pub id: CampaignId,
    /// Human-readable name.
    pub display_name: String,
    /// Who it is run for.
    pub owner: String,
    /// What each code is worth.
    pub face_value: Money,
    /// The deadline.
    pub expire_time: Timestamp,
    /// What codes may become.
    pub options: Vec<RedemptionOption>,
    /// Whose campaign it is: only principals of this tenant (and admins)
    /// reach it.
    pub tenant: TenantId,
    /// The id of the HMAC key its codes, login keys and request ids are
    /// hashed with ([`crate::KeyRing`]): the ring's current key when it was
    /// created, [`crate::hash::DEFAULT_KEY_ID`] for campaigns created
    /// before key rings. Set by giftxd, never by a caller.
    pub hmac_key: String,
}

/// A campaign as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    /// What was asked for (with the current deadline).
    pub spec: CampaignSpec,
    /// The series its codes start with.
    pub series: Series,
    /// When it was created.
    pub create_time: Timestamp,
    /// When it last changed.
    pub update_time: Timestamp,
    /// Bumped by every change of the deadline.
    pub version: u64,
}

impl Campaign {
    /// The option with this id, if the campaign has it.
    pub fn option(&self, id: &str) -> Option<&RedemptionOption> {
        self.spec.options.iter().find(|o| o.id.as_str() == id)
    }
}

/// The state of a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeState {
    /// Exchangeable.
    Active,
    /// An exchange is in flight.
    Pending,
    /// Exchanged.
    Redeemed,
    /// Past the deadline, unexchanged.
    Expired,
    /// Its batch was voided.
    Void,
}

/// The state of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeState {
    /// Provider outcome not known yet.
    Pending,
    /// Deliverable issued.
    Succeeded,
    /// Provider refused; nothing issued.
    Failed,
}

/// The state of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchState {
    /// IssueCodes is streaming it.
    Issuing,
    /// Fully issued.
    Complete,
    /// The stream broke; `issued` codes exist.
    Incomplete,
    /// Voided.
    Void,
}

/// Most codes one batch (one IssueCodes call) may hold; giftxd refuses
/// more and giftctl names this bound.
pub const MAX_ISSUE_COUNT: i64 = 10_000_000;

/// A batch of issued codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Its campaign.
    pub campaign: CampaignId,
    /// Its id.
    pub id: BatchId,
    /// Per-campaign ordinal (1, 2, …), stored in each code's record.
    pub ordinal: u32,
    /// Codes asked for.
    pub requested: u64,
    /// Codes stored.
    pub issued: u64,
    /// Where it stands.
    pub state: BatchState,
    /// When issuing began.
    pub create_time: Timestamp,
    /// When it last changed.
    pub update_time: Timestamp,
}

/// What kind of deliverable a provider issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliverableKind {
    /// A claim code.
    GiftCode,
    /// Gift ID + management number.
    GiftId,
    /// A shipping order.
    Shipment,
    /// A donation receipt.
    DonationReceipt,
}

/// What a provider issued for an exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Deliverable {
    /// What it is.
    pub kind: DeliverableKind,
    /// Claim code or gift ID.
    pub code: String,
    /// PIN or management number.
    pub pin: String,
    /// Value carried, if the provider says.
    pub value: Option<Money>,
    /// When it stops being usable, if it does.
    pub expire_time: Option<Timestamp>,
    /// Where to redeem it.
    pub redeem_url: String,
    /// Provider's order, receipt or shipment reference.
    pub reference: String,
}

impl fmt::Debug for Deliverable {
    // A deliverable is a bearer secret: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverable")
            .field("kind", &self.kind)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// A holder's postal address for mailed goods: personal data, so its
/// `Debug` never shows it. 4-400 characters (trimmed), at most 8 lines, no
/// control characters other than line breaks.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PostalAddress(String);

impl PostalAddress {
    /// Fewest characters of an address.
    pub const MIN_CHARS: usize = 4;
    /// Most characters of an address.
    pub const MAX_CHARS: usize = 400;
    /// Most lines of an address.
    pub const MAX_LINES: usize = 8;

    /// Checks `s` as an address; line breaks are normalised to `\n` and
    /// blank space at either end is trimmed.
    ///
    /// # Errors
    /// A violation of `field` saying what is wrong (never quoting it).
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let norm = s.replace("\r\n", "\n").replace('\r', "\n");
        let t = norm.trim();
        let n = t.chars().count();
        if n < Self::MIN_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if n > Self::MAX_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if t.lines().count() > Self::MAX_LINES {
            return Err(FieldViolation::new(
                field,
                format!("must be at most {} lines", Self::MAX_LINES),
            ));
        }
        if t.chars().any(|c| c.is_control() && c != '\n') {
            return Err(FieldViolation::new(
                field,
                "must not contain control characters other than line breaks",
            ));
        }
        Ok(PostalAddress(t.to_owned()))
    }

    /// The address text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostalAddress {
    // Personal data: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PostalAddress(<redacted>)")
    }
}

/// Counts of a campaign's codes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CampaignCounts {
    /// Codes stored, whatever their state.
    pub issued: i64,
    /// ACTIVE codes.
    pub active: i64,
    /// PENDING codes.
    pub pending: i64,
    /// REDEEMED codes.
    pub redeemed: i64,
    /// EXPIRED codes.
    pub expired: i64,
    /// VOID codes.
    pub void: i64,
    /// Per option: (redeemed, pending), in the campaign's option order.
    pub by_option: Vec<(OptionId, i64, i64)>,
    /// Set once the campaign was purged (past deadline + retention): its
    /// codes and exchanges are deleted, and the counts above are history,
    /// what it held when purged; no code of it can be read any more.
    pub purge_time: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_aip_122() {
        assert!(CampaignId::parse("campaign", "leak-2014").is_ok());
        assert!(CampaignId::parse("campaign", "2014").is_err());
        assert!(BatchId::parse("batch_id", "2014-a").is_ok());
        for bad in ["", "A", "a_b", "a-", &"a".repeat(64)] {
            let e = CampaignId::parse("campaign_id", bad).unwrap_err();
            assert_eq!(e.field, "campaign_id");
        }
    }

    #[test]
    fn postal_addresses_are_bounded_and_never_debug_printed() {
        let a = PostalAddress::parse("a", "  〒100-0001\r\n東京都千代田区1-1\n山田 太郎 ").unwrap();
        assert_eq!(a.as_str(), "〒100-0001\n東京都千代田区1-1\n山田 太郎");
        assert!(!format!("{a:?}").contains("東京"));
        assert_eq!(PostalAddress::parse("a", " ab ").unwrap_err().field, "a");
        assert!(PostalAddress::parse("a", &"あ".repeat(400)).is_ok());
        assert!(PostalAddress::parse("a", &"あ".repeat(401)).is_err());
        assert!(PostalAddress::parse("a", &"line\n".repeat(9)).is_err());
        assert!(PostalAddress::parse("a", "Tokyo\u{7}1-1").is_err());
    }
}
