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

    /// A hash of arbitrary labelled parts, for fingerprints of requests.
    pub fn fingerprint(&self, parts: &[&[u8]]) -> Digest {
        self.mac(b"giftx/fingerprint/v1", parts)
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
    fn constant_time_comparison_handles_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
