//! What the portal carries between steps without URLs, cookies or a
//! session store: the holder's code, login key and choices sealed
//! (XChaCha20-Poly1305 under a key made at start, so a restart makes old
//! forms start over) into one hidden form field, bound to the browser's
//! CSRF nonce; and the CSRF token itself (HMAC-SHA256 of that nonce).
//!
//! The CSRF cookie holds only a random nonce. A form is accepted when its
//! hidden `csrf` field is the token of the nonce in the cookie (which
//! `SameSite=Strict` keeps off cross-site requests), and a sealed state
//! opens only with the nonce it was sealed under.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// How long a sealed state stays good.
pub const MAX_AGE_MS: i64 = 60 * 60 * 1000;

/// The holder's input carried from step to step. No `Debug`: it holds a
/// bearer code.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Carried {
    /// The code as typed.
    pub code: String,
    /// The login key as typed.
    pub login_key: String,
    /// `select` for the select gift's own journey.
    pub flow: String,
    /// When it was sealed (ms since the epoch).
    pub sealed_ms: i64,
    /// The choice, once made (confirm page onwards).
    pub choice: Option<Choice>,
}

/// What the holder chose, and the request id of the confirmed form.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Choice {
    /// The option.
    pub option_id: String,
    /// Postal address (mailed options only), else empty.
    pub shipping_address: String,
    /// Contact email, or empty.
    pub contact_email: String,
    /// Delete my data.
    pub delete_personal_data: bool,
    /// No more mail.
    pub stop_mail: bool,
    /// Made when the confirm page was rendered; every submission of that
    /// page sends it again.
    pub request_id: String,
}

/// Why something could not be opened or made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Tampered, sealed by another process or for another browser, or
    /// expired.
    #[error("the form's state does not open")]
    Open,
    /// The CSPRNG failed.
    #[error("random bytes: {0}")]
    Random(String),
}

/// The process's keys.
pub struct Keys {
    aead: XChaCha20Poly1305,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// `n` random bytes.
///
/// # Errors
/// When the CSPRNG fails.
pub fn random(n: usize) -> Result<Vec<u8>, SealError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh nonce for the CSRF cookie (22 URL-safe characters).
///
/// # Errors
/// When the CSPRNG fails.
pub fn new_nonce() -> Result<String, SealError> {
    Ok(B64.encode(random(16)?))
}

/// A fresh request id for a confirm page.
///
/// # Errors
/// When the CSPRNG fails.
pub fn new_request_id() -> Result<String, SealError> {
    Ok(format!("portal-{}", hex::encode(random(16)?)))
}

/// Is `s` shaped like a nonce [`new_nonce`] makes?
pub fn nonce_ok(s: &str) -> bool {
    s.len() == 22
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Keys {
    /// Fresh random keys.
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn random() -> Result<Keys, SealError> {
        let k = random(32)?;
        let m = random(32)?;
        let aead = XChaCha20Poly1305::new_from_slice(&k).map_err(|_| SealError::Open)?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&m).map_err(|_| SealError::Open)?;
        Ok(Keys { aead, mac })
    }

    /// The CSRF token of `nonce`.
    pub fn csrf_token(&self, nonce: &str) -> String {
        let mut m = self.mac.clone();
        m.update(b"giftx-portal/csrf/v1\0");
        m.update(nonce.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// Does `token` belong to `nonce`?
    pub fn csrf_ok(&self, nonce: &str, token: &str) -> bool {
        let want = self.csrf_token(nonce);
        want.len() == token.len() && bool::from(want.as_bytes().ct_eq(token.as_bytes()))
    }

    /// Seals `c` for the browser holding `nonce`.
    ///
    /// # Errors
    /// When the CSPRNG fails.
    pub fn seal(&self, nonce: &str, c: &Carried) -> Result<String, SealError> {
        let plain = serde_json::to_vec(c).map_err(|_| SealError::Open)?;
        let n = random(24)?;
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&n),
                Payload {
                    msg: &plain,
                    aad: &aad(nonce),
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut out = n;
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    /// Opens what [`Keys::seal`] sealed for `nonce`, if younger than
    /// [`MAX_AGE_MS`] at `now_ms`.
    ///
    /// # Errors
    /// [`SealError::Open`].
    pub fn open(&self, nonce: &str, sealed: &str, now_ms: i64) -> Result<Carried, SealError> {
        let raw = B64.decode(sealed.trim()).map_err(|_| SealError::Open)?;
        if raw.len() < 24 + 16 {
            return Err(SealError::Open);
        }
        let (n, ct) = raw.split_at(24);
        let plain = self
            .aead
            .decrypt(
                XNonce::from_slice(n),
                Payload {
                    msg: ct,
                    aad: &aad(nonce),
                },
            )
            .map_err(|_| SealError::Open)?;
        let c: Carried = serde_json::from_slice(&plain).map_err(|_| SealError::Open)?;
        if now_ms.saturating_sub(c.sealed_ms) > MAX_AGE_MS || c.sealed_ms > now_ms + 60_000 {
            return Err(SealError::Open);
        }
        Ok(c)
    }
}

fn aad(nonce: &str) -> Vec<u8> {
    let mut a = b"giftx-portal/state/v1\0".to_vec();
    a.extend_from_slice(nonce.as_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(now: i64) -> Carried {
        Carried {
            code: "AB12-CD34-EF56-GH78".into(),
            login_key: "JK90-MN12".into(),
            flow: String::new(),
            sealed_ms: now,
            choice: None,
        }
    }

    #[test]
    fn states_open_only_for_their_browser_unchanged_and_in_time() {
        let k = Keys::random().unwrap();
        let n = new_nonce().unwrap();
        assert!(nonce_ok(&n));
        let s = k.seal(&n, &carried(1_000)).unwrap();
        assert!(!s.contains("AB12"));
        assert!(k.open(&n, &s, 2_000).unwrap() == carried(1_000));
        let other = new_nonce().unwrap();
        assert_eq!(k.open(&other, &s, 2_000).err(), Some(SealError::Open));
        let mut t = s.clone().into_bytes();
        t[30] = if t[30] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        assert_eq!(k.open(&n, &t, 2_000).err(), Some(SealError::Open));
        assert_eq!(
            k.open(&n, &s, 1_000 + MAX_AGE_MS + 1).err(),
            Some(SealError::Open)
        );
        let k2 = Keys::random().unwrap();
        assert_eq!(k2.open(&n, &s, 2_000).err(), Some(SealError::Open));
    }

    #[test]
    fn csrf_tokens_belong_to_one_nonce() {
        let k = Keys::random().unwrap();
        let n = new_nonce().unwrap();
        let t = k.csrf_token(&n);
        assert!(k.csrf_ok(&n, &t));
        assert!(!k.csrf_ok(&new_nonce().unwrap(), &t));
        assert!(!k.csrf_ok(&n, ""));
        assert!(!Keys::random().unwrap().csrf_ok(&n, &t));
    }
}
