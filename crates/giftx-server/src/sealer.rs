//! Deliverables at rest: sealed with XChaCha20-Poly1305 under a rotatable
//! key ring, bound to their exchange id (as associated data), so a sealed
//! deliverable copied onto another exchange does not open.
//!
//! Wire format: `version (1) | key id (1) | nonce (24) | ciphertext+tag`.
//! The first key of the ring seals; every key opens (rotation: put the new
//! key first, keep the old ones until their deliverables have expired).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use giftx_core::Money;
use giftx_core::Timestamp;
use giftx_core::model::{Deliverable, DeliverableKind};
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why a key ring or a sealed deliverable could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A key is not 32 bytes.
    #[error(
        "deliverable key {index} (counting from 0, blank and # lines skipped) must be 64 hex \
         characters (32 bytes) on a line of its own, e.g. from `openssl rand -hex 32`"
    )]
    BadKey {
        /// Position in the ring.
        index: usize,
    },
    /// No key at all.
    #[error("the deliverable key ring is empty")]
    Empty,
    /// More than 255 keys.
    #[error("at most 255 deliverable keys")]
    TooManyKeys,
    /// The sealed bytes do not open with any key (tampered, wrong exchange,
    /// or the key was removed from the ring).
    #[error("sealed deliverable does not open")]
    Open,
    /// The CSPRNG failed.
    #[error("random nonce: {0}")]
    Random(String),
}

/// The ring of deliverable keys. `Debug` never shows them.
pub struct Sealer {
    /// (key id, cipher); the first seals.
    keys: Vec<(u8, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

impl Sealer {
    /// A ring from raw 32-byte keys, newest first. Key ids are positions
    /// counted from the oldest, so adding a new key in front keeps old ids.
    ///
    /// # Errors
    /// [`SealError`] for an empty ring, too many keys, or a key of the wrong length.
    pub fn new(keys: &[Vec<u8>]) -> Result<Sealer, SealError> {
        if keys.is_empty() {
            return Err(SealError::Empty);
        }
        if keys.len() > 255 {
            return Err(SealError::TooManyKeys);
        }
        let n = keys.len();
        let mut ring = Vec::with_capacity(n);
        for (i, k) in keys.iter().enumerate() {
            let cipher =
                XChaCha20Poly1305::new_from_slice(k).map_err(|_| SealError::BadKey { index: i })?;
            // n ≤ 255 was checked above.
            ring.push(((n - 1 - i) as u8, cipher));
        }
        Ok(Sealer { keys: ring })
    }

    /// A ring with one fresh random key (embedded mode: data dies with the
    /// process anyway).
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn random() -> Result<Sealer, SealError> {
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k).map_err(|e| SealError::Random(e.to_string()))?;
        Sealer::new(&[k])
    }

    /// Parses a key file: one key per line, 64 hex characters, newest
    /// first; blank lines and `#` comments ignored.
    ///
    /// # Errors
    /// [`SealError::BadKey`] for a malformed line, [`SealError::Empty`].
    pub fn from_key_file(text: &str) -> Result<Sealer, SealError> {
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let k = hex::decode(line).map_err(|_| SealError::BadKey { index: keys.len() })?;
            keys.push(k);
        }
        Sealer::new(&keys)
    }

    /// Seals `d` for the exchange `exchange_id`.
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn seal(&self, exchange_id: &str, d: &Deliverable) -> Result<Vec<u8>, SealError> {
        let plain = serde_json::to_vec(&StoredDeliverable::from(d)).map_err(|_| SealError::Open)?;
        self.seal_bytes(exchange_id.as_bytes(), &plain)
    }

    /// Seals arbitrary bytes, bound to `context` (associated data).
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn seal_bytes(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        giftx_core::random::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut out = Vec::with_capacity(2 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.push(*id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] sealed for the same exchange.
    ///
    /// # Errors
    /// [`SealError::Open`] when it does not open.
    pub fn open(&self, exchange_id: &str, sealed: &[u8]) -> Result<Deliverable, SealError> {
        let plain = self.open_bytes(exchange_id.as_bytes(), sealed)?;
        let s: StoredDeliverable = serde_json::from_slice(&plain).map_err(|_| SealError::Open)?;
        s.into_deliverable().ok_or(SealError::Open)
    }

    /// Opens what [`Sealer::seal_bytes`] sealed with the same `context`.
    ///
    /// # Errors
    /// [`SealError::Open`] when it does not open.
    pub fn open_bytes(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 2 + NONCE_LEN || sealed[0] != VERSION {
            return Err(SealError::Open);
        }
        let key_id = sealed[1];
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .ok_or(SealError::Open)?;
        let nonce = XNonce::from_slice(&sealed[2..2 + NONCE_LEN]);
        cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[2 + NONCE_LEN..],
                    aad: context,
                },
            )
            .map_err(|_| SealError::Open)
    }
}

/// The plaintext layout inside the seal; private to this module.
#[derive(Serialize, Deserialize)]
struct StoredDeliverable {
    k: u8,
    c: String,
    p: String,
    v: Option<(String, i64)>,
    e: Option<i64>,
    u: String,
    r: String,
}

impl From<&Deliverable> for StoredDeliverable {
    fn from(d: &Deliverable) -> Self {
        StoredDeliverable {
            k: match d.kind {
                DeliverableKind::GiftCode => 1,
                DeliverableKind::GiftId => 2,
                DeliverableKind::Shipment => 3,
                DeliverableKind::DonationReceipt => 4,
            },
            c: d.code.clone(),
            p: d.pin.clone(),
            v: d.value
                .map(|m| (m.currency.code().to_owned(), m.minor_units)),
            e: d.expire_time.map(|t| t.0),
            u: d.redeem_url.clone(),
            r: d.reference.clone(),
        }
    }
}

impl StoredDeliverable {
    fn into_deliverable(self) -> Option<Deliverable> {
        let kind = match self.k {
            1 => DeliverableKind::GiftCode,
            2 => DeliverableKind::GiftId,
            3 => DeliverableKind::Shipment,
            4 => DeliverableKind::DonationReceipt,
            _ => return None,
        };
        let value = match self.v {
            Some((c, n)) => Some(Money::new(giftx_core::Currency::from_code(&c)?, n)),
            None => None,
        };
        Some(Deliverable {
            kind,
            code: self.c,
            pin: self.p,
            value,
            expire_time: self.e.map(Timestamp),
            redeem_url: self.u,
            reference: self.r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Deliverable {
        Deliverable {
            kind: DeliverableKind::GiftCode,
            code: "AQ7X-PLAINTEXT-CODE".into(),
            pin: "1234".into(),
            value: Some(Money::new(
                giftx_core::Currency::from_code("JPY").unwrap(),
                500,
            )),
            expire_time: Some(Timestamp(1_800_000_000_000)),
            redeem_url: "https://shop.example/r".into(),
            reference: "ord-1".into(),
        }
    }

    #[test]
    fn sealed_deliverables_open_only_for_their_exchange_and_hide_the_code() {
        let s = Sealer::random().unwrap();
        let sealed = s.seal("ex1", &sample()).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"PLAINTEXT"));
        assert_eq!(s.open("ex1", &sealed).unwrap(), sample());
        assert_eq!(s.open("ex2", &sealed), Err(SealError::Open));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(s.open("ex1", &tampered), Err(SealError::Open));
    }

    #[test]
    fn rotation_keeps_old_deliverables_readable() {
        let old = vec![7u8; 32];
        let new = vec![9u8; 32];
        let before = Sealer::new(std::slice::from_ref(&old)).unwrap();
        let sealed_old = before.seal("ex", &sample()).unwrap();
        let after = Sealer::new(&[new, old]).unwrap();
        assert_eq!(after.open("ex", &sealed_old).unwrap(), sample());
        let sealed_new = after.seal("ex", &sample()).unwrap();
        assert_eq!(before.open("ex", &sealed_new), Err(SealError::Open));
    }

    #[test]
    fn key_files_are_hex_lines_and_bad_keys_are_named() {
        let text = format!(
            "# newest first\n{}\n\n{}\n",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        assert!(Sealer::from_key_file(&text).is_ok());
        assert_eq!(
            Sealer::from_key_file("abcd").unwrap_err(),
            SealError::BadKey { index: 0 }
        );
        assert_eq!(
            Sealer::from_key_file("# none").unwrap_err(),
            SealError::Empty
        );
    }
}
