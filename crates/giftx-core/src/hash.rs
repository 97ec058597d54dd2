//! Keyed hashing: the only form in which codes, login keys and emails are
//! ever stored. The key lives in giftxd's memory (read from a file), never
//! in the ledger.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::code::{Code, LoginKey};

type HmacSha256 = Hmac<Sha256>;

/// Bytes that must never be printed: `Debug` and `Display` show a
/// placeholder. Used for HMAC and AEAD keys.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps key material.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The key material, for the one place that needs it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A 32-byte keyed hash. Compared in constant time.
#[derive(Clone, Copy, Eq)]
pub struct Digest(pub [u8; 32]);

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl Digest {
    /// The first `N` bytes, for compact storage.
    pub fn prefix<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[..N]);
        out
    }
}

/// Compares two byte strings in constant time (for their common length;
/// different lengths are unequal).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Computes giftx's keyed hashes. Each input kind has its own domain
/// label, so a code can never hash to the same value as an email.
#[derive(Clone)]
pub struct Hasher {
    /// HMAC-SHA256 state right after keying (the key's inner and outer
    /// pad blocks already compressed), cloned for every hash: keying once
    /// saves two of the four SHA-256 compressions of a short message.
    keyed: HmacSha256,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher([redacted])")
    }
}

/// Shortest HMAC key giftx accepts, in bytes.
pub const MIN_KEY_LEN: usize = 32;

impl Hasher {
    /// A hasher with `key` (at least [`MIN_KEY_LEN`] bytes).
    ///
    /// # Errors
    /// [`KeyTooShort`] when the key is shorter.
    pub fn new(key: Secret) -> Result<Self, KeyTooShort> {
        if key.expose().len() < MIN_KEY_LEN {
            return Err(KeyTooShort(key.expose().len()));
        }
        Ok(Hasher::keyed(&key))
    }

    fn keyed(key: &Secret) -> Hasher {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(keyed) = HmacSha256::new_from_slice(key.expose()) else {
            unreachable!("HMAC takes keys of any length")
        };
        Hasher { keyed }
    }

    /// A hasher with a fresh random key: for the embedded ledger, whose
    /// data dies with the process anyway.
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k)?;
        Ok(Hasher::keyed(&Secret(k)))
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> Digest {
        let mut m = self.keyed.clone();
        m.update(label);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        Digest(m.finalize().into_bytes().into())
    }

    /// The hash a code is stored and looked up under.
    pub fn code(&self, code: &Code) -> Digest {
        self.mac(b"giftx/code/v1", &[code.canonical().as_bytes()])
    }

    /// The hash of a login key, bound to its code (so equal login keys on
    /// two codes hash differently).
    pub fn login_key(&self, code: &Code, key: &LoginKey) -> Digest {
        self.mac(
            b"giftx/login-key/v1",
            &[code.canonical().as_bytes(), key.canonical().as_bytes()],
        )
    }

    /// The hash of a contact email (trimmed, lower-cased).
    pub fn email(&self, email: &str) -> Digest {
        let e = email.trim().to_lowercase();
        self.mac(b"giftx/email/v1", &[e.as_bytes()])
    }

    /// The hash of a caller's request id, scoped to one code.
    pub fn request_id(&self, code: &Code, request_id: &str) -> Digest {
        self.mac(
            b"giftx/request-id/v1",
            &[code.canonical().as_bytes(), request_id.as_bytes()],
        )
    }

    /// The hash an API token's secret is stored and checked under.
    pub fn api_token(&self, secret: &[u8]) -> Digest {
        self.mac(b"giftx/api-token/v1", &[secret])
    }

    /// A code as it is looked up for a caller of another tenant than the
    /// code's: a hash no stored code has (another label), so the ledger
    /// answers exactly as for a code that does not exist, and counts the
    /// caller's wrong tries apart from the owner's.
    pub fn foreign_code(&self, code: &Code, tenant: &str) -> Digest {
        self.mac(
            b"giftx/foreign-code/v1",
            &[code.canonical().as_bytes(), tenant.as_bytes()],
        )
    }

    /// The hash an end user's identity (`x-giftx-end-user`) is counted
    /// under, scoped to a tenant.
    pub fn end_user(&self, tenant: &str, who: &str) -> Digest {
        self.mac(b"giftx/end-user/v1", &[tenant.as_bytes(), who.as_bytes()])
    }

    /// A fingerprint of the key itself (a keyed hash of a constant): tells
    /// two keys apart without revealing either.
    pub fn key_check(&self) -> [u8; 16] {
        self.mac(b"giftx/key-check/v1", &[]).prefix::<16>()
    }

    /// A hash of arbitrary labelled parts, for fingerprints of requests.
    pub fn fingerprint(&self, parts: &[&[u8]]) -> Digest {
        self.mac(b"giftx/fingerprint/v1", parts)
    }
}

/// The id of the key in a [`KeyRing`] that a single key file provides, and
/// that every campaign created before key rings existed was hashed with.
pub const DEFAULT_KEY_ID: &str = "default";

/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 32;

/// Why a key ring could not be built or used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    /// A ring needs at least one key.
    #[error("the HMAC key ring holds no key")]
    Empty,
    /// A key id is not 1–32 of `a-z 0-9 . _ -`, starting with a letter or
    /// digit.
    #[error(
        "HMAC key id {0:?} is not 1-32 of a-z, 0-9, '.', '_', '-' starting with a letter or digit"
    )]
    BadId(String),
    /// Two keys have the same id.
    #[error("HMAC key id {0:?} appears twice")]
    DuplicateId(String),
    /// A key is too short.
    #[error("HMAC key {id:?}: {source}")]
    Short {
        /// The key's id.
        id: String,
        /// Its length.
        source: KeyTooShort,
    },
    /// A line of a ring file is not `<id> <hex key>`.
    #[error("line {line}: expected `<key id> <key as hex, at least 64 hex characters>`")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
}

/// Whether `id` may name a key: 1–32 of `a-z 0-9 . _ -`, starting with a
/// letter or digit.
pub fn valid_key_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KEY_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Every HMAC key giftxd knows, each under an id. The first is current:
/// new campaigns (and new API keys) are hashed with it and record its id;
/// the others keep hashing what was created under them, so old campaigns
/// keep working after a rotation. The last (oldest) key is the anchor:
/// it keys what must never change across rotations (the select gift's
/// code derivation, stock de-duplication).
#[derive(Clone)]
pub struct KeyRing {
    keys: std::sync::Arc<[(String, Hasher)]>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// A ring of `keys`, current first, oldest last.
    ///
    /// # Errors
    /// [`KeyRingError`] for no key, a bad or repeated id, a short key.
    pub fn new(keys: Vec<(String, Secret)>) -> Result<KeyRing, KeyRingError> {
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, secret) in keys {
            if !valid_key_id(&id) {
                return Err(KeyRingError::BadId(id));
            }
            if ring.iter().any(|(k, _): &(String, Hasher)| *k == id) {
                return Err(KeyRingError::DuplicateId(id));
            }
            let h = Hasher::new(secret).map_err(|source| KeyRingError::Short {
                id: id.clone(),
                source,
            })?;
            ring.push((id, h));
        }
        Ok(KeyRing { keys: ring.into() })
    }

    /// A ring of one key, [`DEFAULT_KEY_ID`].
    pub fn single(hasher: Hasher) -> KeyRing {
        KeyRing {
            keys: vec![(DEFAULT_KEY_ID.to_owned(), hasher)].into(),
        }
    }

    /// Parses a ring file: one key per line, `<id> <key as hex>`, current
    /// first; blank lines and `#` comments ignored. A line of an id alone
    /// (`default`) names a key given elsewhere (the single key file) and
    /// comes back without key material, at its place in the ring.
    ///
    /// # Errors
    /// [`KeyRingError::BadLine`] for a line that is not an id and hex.
    pub fn parse(text: &str) -> Result<Vec<(String, Option<Secret>)>, KeyRingError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = KeyRingError::BadLine { line: i + 1 };
            let mut parts = line.split_whitespace();
            let (Some(id), hex_key, None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad);
            };
            let key = match hex_key {
                Some(h) => Some(Secret::new(hex::decode(h).map_err(|_| bad)?)),
                None => None,
            };
            keys.push((id.to_owned(), key));
        }
        Ok(keys)
    }

    /// The key new things are hashed with.
    pub fn current(&self) -> &Hasher {
        &self.keys[0].1
    }

    /// The current key's id.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// The oldest key: for what must hash the same across rotations.
    pub fn anchor(&self) -> &Hasher {
        &self.keys[self.keys.len() - 1].1
    }

    /// The key with this id, if the ring has it.
    pub fn get(&self, id: &str) -> Option<&Hasher> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, h)| h)
    }

    /// Every key id, current first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// Every key, current first.
    pub fn hashers(&self) -> impl Iterator<Item = &Hasher> {
        self.keys.iter().map(|(_, h)| h)
    }
}

/// The HMAC key given was too short; the value is its length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("HMAC key is {0} bytes; at least 32 are required")]
pub struct KeyTooShort(pub usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::Series;

    fn hasher(b: u8) -> Hasher {
        Hasher::new(Secret::new(vec![b; 32])).unwrap()
    }

    #[test]
    fn hashes_depend_on_the_key_and_the_domain_label() {
        let code = Code::generate(Series::from_index(1).unwrap()).unwrap();
        let key = LoginKey::generate().unwrap();
        let (h1, h2) = (hasher(1), hasher(2));
        assert_eq!(h1.code(&code), h1.code(&code));
        assert_ne!(h1.code(&code), h2.code(&code));
        assert_ne!(h1.code(&code), h1.login_key(&code, &key));
        assert_ne!(h1.email("A@x.org "), h1.code(&code));
        assert_eq!(h1.email(" a@X.org"), h1.email("A@x.org "));
    }

    /// The cached keyed state gives exactly the HMAC of a fresh keying
    /// (outputs are stored: they must never change).
    #[test]
    fn hashes_equal_a_freshly_keyed_hmac() {
        let key = vec![7u8; 40];
        let h = Hasher::new(Secret::new(key.clone())).unwrap();
        let code = Code::parse(
            &Code::generate(Series::from_index(9).unwrap())
                .unwrap()
                .printed(),
        )
        .unwrap();
        let login = LoginKey::generate().unwrap();
        let fresh = |label: &[u8], parts: &[&[u8]]| {
            let mut m = HmacSha256::new_from_slice(&key).unwrap();
            m.update(label);
            for p in parts {
                m.update(&(p.len() as u64).to_be_bytes());
                m.update(p);
            }
            Digest(m.finalize().into_bytes().into())
        };
        let c = code.canonical().as_bytes();
        for _ in 0..2 {
            assert_eq!(h.code(&code), fresh(b"giftx/code/v1", &[c]));
            assert_eq!(
                h.login_key(&code, &login),
                fresh(b"giftx/login-key/v1", &[c, login.canonical().as_bytes()])
            );
            assert_eq!(
                h.request_id(&code, "r-1"),
                fresh(b"giftx/request-id/v1", &[c, b"r-1"])
            );
        }
    }

    #[test]
    fn short_keys_are_refused_and_secrets_never_print() {
        assert_eq!(
            Hasher::new(Secret::new(vec![0; 31])).unwrap_err(),
            KeyTooShort(31)
        );
        let s = Secret::new(b"super-secret-material-0123456789".to_vec());
        assert!(!format!("{s:?}{s}").contains("super"));
        assert!(!format!("{:?}", Hasher::new(s).unwrap()).contains("super"));
    }

    #[test]
    fn a_ring_hashes_with_its_current_key_and_keeps_the_old_ones() {
        let text = format!(
            "# newest first\n\nk2 {}\n  k1 {}  \n",
            "22".repeat(32),
            "11".repeat(32)
        );
        let lines = KeyRing::parse(&text).unwrap();
        let ring =
            KeyRing::new(lines.into_iter().map(|(id, k)| (id, k.unwrap())).collect()).unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert_eq!(ring.current_id(), "k2");
        let code = Code::generate(Series::from_index(3).unwrap()).unwrap();
        assert_eq!(ring.current().code(&code), hasher(0x22).code(&code));
        assert_eq!(ring.anchor().code(&code), hasher(0x11).code(&code));
        assert_eq!(
            ring.get("k1").unwrap().code(&code),
            hasher(0x11).code(&code)
        );
        assert!(ring.get("k3").is_none());
        assert!(!format!("{ring:?}").contains("2222"));
        let single = KeyRing::single(hasher(5));
        assert_eq!(single.current_id(), DEFAULT_KEY_ID);
        assert_eq!(single.anchor().code(&code), hasher(5).code(&code));
    }

    #[test]
    fn bad_rings_are_refused_with_the_reason() {
        let k = |id: &str, b: u8, n: usize| (id.to_owned(), Secret::new(vec![b; n]));
        assert_eq!(KeyRing::new(vec![]).unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::new(vec![k("a", 1, 32), k("a", 2, 32)]).unwrap_err(),
            KeyRingError::DuplicateId("a".into())
        );
        for bad in ["", "-a", "A", "a b", &"x".repeat(33)] {
            assert_eq!(
                KeyRing::new(vec![k(bad, 1, 32)]).unwrap_err(),
                KeyRingError::BadId(bad.into())
            );
        }
        assert!(matches!(
            KeyRing::new(vec![k("short", 1, 31)]).unwrap_err(),
            KeyRingError::Short { id, .. } if id == "short"
        ));
        let named = KeyRing::parse("default\n").unwrap();
        assert_eq!(named.len(), 1);
        assert!(named[0].0 == "default" && named[0].1.is_none());
        for (text, line) in [("# c\nk1 zz\n", 2), ("k1 00 11\n", 1)] {
            assert_eq!(
                KeyRing::parse(text).unwrap_err(),
                KeyRingError::BadLine { line }
            );
        }
    }

    #[test]
    fn constant_time_comparison_handles_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
