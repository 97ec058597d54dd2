//! Key names and where a code or exchange lives. Every key carries a hash
//! tag: `{g}` for the global registry, `{b<n>}` for bucket `n`.

use giftx_core::model::{BatchId, CampaignId};
use giftx_core::{Digest, Series};

use crate::ExchangeId;

/// Ledger buckets: codes spread over this many hash tags.
pub(crate) const BUCKETS: u16 = 4096;

/// The global registry's keys (`{g}`).
pub(crate) mod global {
    use super::*;

    pub(crate) fn campaign(id: &CampaignId) -> String {
        format!("{{g}}:c:{id}")
    }
    pub(crate) const SERIES: &str = "{g}:s";
    pub(crate) const CAMPAIGN_LIST: &str = "{g}:cl";
    pub(crate) const CREATE_REQUESTS: &str = "{g}:cr";
    pub(crate) const EVENTS: &str = "{g}:e";
    /// Set (with a short PX) while some giftxd runs foreground scripts:
    /// issuance's bulk stores in every process yield while it exists.
    pub(crate) const FOREGROUND: &str = "{g}:fg";
    pub(crate) fn batch(c: &CampaignId, b: &BatchId) -> String {
        format!("{{g}}:b:{c}:{b}")
    }
    /// Batch ids of a campaign by ordinal (written by `begin_batch`).
    pub(crate) fn batch_ordinals(c: &CampaignId) -> String {
        format!("{{g}}:bo:{c}")
    }
    pub(crate) fn lease(name: &str) -> String {
        format!("{{g}}:lease:{name}")
    }
}

/// Where a code lives: its bucket and its field in the bucket's hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) bucket: u16,
    pub(crate) field: [u8; 10],
}

impl Slot {
    pub(crate) fn of(d: &Digest) -> Slot {
        let bucket = u16::from_be_bytes([d.0[0], d.0[1]]) % BUCKETS;
        let mut field = [0u8; 10];
        field.copy_from_slice(&d.0[2..12]);
        Slot { bucket, field }
    }
}

/// One bucket's keys for one campaign series.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketKeys {
    pub(crate) bucket: u16,
    pub(crate) series: u16,
}

impl BucketKeys {
    pub(crate) fn new(bucket: u16, series: Series) -> BucketKeys {
        BucketKeys {
            bucket,
            series: series.index(),
        }
    }
    pub(crate) fn codes(&self) -> String {
        format!("{{b{}}}:c:{}", self.bucket, self.series)
    }
    pub(crate) fn exchanges(&self) -> String {
        format!("{{b{}}}:x:{}", self.bucket, self.series)
    }
    pub(crate) fn meta(&self) -> String {
        format!("{{b{}}}:m:{}", self.bucket, self.series)
    }
    /// Exchanges given with a holder preference (ZSET exchange id, score
    /// create time; per code its latest such exchange). Written by
    /// `claim_code` only when preferences are set, with the codes' TTL.
    pub(crate) fn preferences(&self) -> String {
        preferences(self.bucket, self.series)
    }
    pub(crate) fn pending(&self) -> String {
        pending(self.bucket)
    }
    pub(crate) fn events(&self) -> String {
        events(self.bucket)
    }
}

/// A code's lockout entry (a string `fails:until:expires` with a PX
/// ending at `expires`; see `claim_code`), one key per series and code
/// field, so entries of codes that do not exist expire on their own.
pub(crate) fn lockout(bucket: u16, series: Series, field: &[u8]) -> String {
    format!("{{b{bucket}}}:l:{}:{}", series.index(), hex::encode(field))
}
pub(crate) fn pending(bucket: u16) -> String {
    format!("{{b{bucket}}}:p")
}
pub(crate) fn events(bucket: u16) -> String {
    format!("{{b{bucket}}}:e")
}
pub(crate) fn preferences(bucket: u16, series: u16) -> String {
    format!("{{b{bucket}}}:f:{series}")
}

/// Where an exchange lives, decoded from its id:
/// hex(series u16 ‖ code digest[0..12] ‖ seq u16), 32 lower-case hex digits.
/// The encoding is part of `ExchangeId::provider_key`, so it never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExchangeLoc {
    pub(crate) series: Series,
    pub(crate) prefix: [u8; 12],
    pub(crate) seq: u16,
}

impl ExchangeLoc {
    pub(crate) fn id_prefix(series: Series, d: &Digest) -> String {
        let mut s = hex::encode(series.index().to_be_bytes());
        s.push_str(&hex::encode(&d.0[..12]));
        s
    }

    pub(crate) fn parse(id: &ExchangeId) -> Option<ExchangeLoc> {
        let s = id.0.as_str();
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let raw = hex::decode(s).ok()?;
        let series = Series::from_index(u16::from_be_bytes([raw[0], raw[1]]))?;
        let mut prefix = [0u8; 12];
        prefix.copy_from_slice(&raw[2..14]);
        let seq = u16::from_be_bytes([raw[14], raw[15]]);
        Some(ExchangeLoc {
            series,
            prefix,
            seq,
        })
    }

    pub(crate) fn id(series: Series, d: &Digest, seq: u16) -> ExchangeId {
        ExchangeId(format!("{}{seq:04x}", Self::id_prefix(series, d)))
    }

    pub(crate) fn bucket(&self) -> u16 {
        u16::from_be_bytes([self.prefix[0], self.prefix[1]]) % BUCKETS
    }

    pub(crate) fn keys(&self) -> BucketKeys {
        BucketKeys::new(self.bucket(), self.series)
    }

    /// The exchange's field in the bucket's exchange hash.
    pub(crate) fn field(&self) -> Vec<u8> {
        let mut f = self.prefix[2..12].to_vec();
        f.extend_from_slice(&self.seq.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_ids_round_trip() {
        let mut d = Digest([7u8; 32]);
        d.0[0] = 0xab;
        let s = Series::from_index(1000).unwrap();
        let id = ExchangeLoc::id(s, &d, 3);
        assert_eq!(id.0.len(), 32);
        let loc = ExchangeLoc::parse(&id).unwrap();
        assert_eq!(loc.series, s);
        assert_eq!(loc.seq, 3);
        assert_eq!(loc.bucket(), Slot::of(&d).bucket);
        assert_eq!(&loc.field()[..10], &Slot::of(&d).field);
        assert!(ExchangeLoc::parse(&ExchangeId("zz".into())).is_none());
    }
}
