//! Random and derived reference strings (receipt numbers, order
//! references, simulated codes), in Crockford base32 without look-alikes.

use giftx_core::code::ALPHABET;
use giftx_core::model::ProviderId;
use giftx_provider::ProviderError;
use sha2::{Digest as _, Sha256};

/// `n` random symbols of Crockford base32.
pub fn random_symbols(n: usize) -> Result<String, ProviderError> {
    let mut buf = vec![0u8; n];
    giftx_core::random::fill(&mut buf)
        .map_err(|e| ProviderError::retryable(format!("RNG_UNAVAILABLE: {e}")))?;
    // 256 is a multiple of 32: masking keeps the symbols uniform.
    Ok(buf
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 0x1f)]))
        .collect())
}

/// `n` random decimal digits.
pub fn random_digits(n: usize) -> Result<String, ProviderError> {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut buf = [0u8; 16];
        giftx_core::random::fill(&mut buf)
            .map_err(|e| ProviderError::retryable(format!("RNG_UNAVAILABLE: {e}")))?;
        // Rejection sampling: 250 is the largest multiple of 10 ≤ 256.
        for b in buf.iter().filter(|&&b| b < 250) {
            if out.len() == n {
                break;
            }
            out.push(char::from(b'0' + b % 10));
        }
    }
    Ok(out)
}

/// A reference derived from a provider id and an idempotency key: the
/// same inputs give the same reference, so a reference can name a record
/// without an index. `prefix-` + 16 symbols (80 bits of SHA-256).
pub fn derived(prefix: &str, provider: &ProviderId, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"giftx/provider-reference/v1");
    for part in [provider.as_str().as_bytes(), key.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let sym: String = d
        .iter()
        .take(16)
        .map(|b| char::from(ALPHABET[usize::from(b & 0x1f)]))
        .collect();
    format!("{prefix}-{sym}")
}

/// Groups `s` with hyphens into chunks of the given sizes (the rest, if
/// any, forms a last group).
pub fn grouped(s: &str, sizes: &[usize]) -> String {
    let mut out = String::with_capacity(s.len() + sizes.len());
    let mut rest = s;
    for &n in sizes {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(n.min(rest.len()));
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(head);
        rest = tail;
    }
    if !rest.is_empty() {
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(rest);
    }
    out
}

/// Checks a configured reference prefix: 1-8 of `A-Z0-9`.
pub fn valid_prefix(p: &str) -> bool {
    (1..=8).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_references_have_the_asked_shape() {
        let s = random_symbols(10).unwrap();
        assert_eq!(s.len(), 10);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        let d = random_digits(8).unwrap();
        assert_eq!(d.len(), 8);
        assert!(d.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(random_symbols(16).unwrap(), random_symbols(16).unwrap());
    }

    #[test]
    fn derived_references_are_stable_and_scoped_to_the_provider() {
        let a = ProviderId::parse("p", "books").unwrap();
        let b = ProviderId::parse("p", "cards").unwrap();
        assert_eq!(derived("SHP", &a, "k"), derived("SHP", &a, "k"));
        assert_ne!(derived("SHP", &a, "k"), derived("SHP", &b, "k"));
        assert_ne!(derived("SHP", &a, "k"), derived("SHP", &a, "k2"));
        assert!(derived("SHP", &a, "k").starts_with("SHP-"));
        assert_eq!(derived("SHP", &a, "k").len(), 20);
    }

    #[test]
    fn grouping_and_prefixes() {
        assert_eq!(grouped("ABCDEFGHIJKLMN", &[4, 6, 4]), "ABCD-EFGHIJ-KLMN");
        assert_eq!(grouped("ABCDEF", &[4]), "ABCD-EF");
        assert!(valid_prefix("SHP"));
        assert!(!valid_prefix("shp"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("TOOLONGXX"));
    }
}
