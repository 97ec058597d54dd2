//! Printed credentials: the code and its login key.
//!
//! Both are Crockford base32 (`0-9A-Z` without `I L O U`) followed by one
//! check character. A code is `SS` (its campaign's series) + 13 random
//! symbols + check, printed `SSRR-RRRR-RRRR-RRRC`; a login key is 7 random
//! symbols + check, printed `RRRR-RRRC`. A printed pair carries
//! 13 × 5 + 7 × 5 = 100 bits from the CSPRNG.
//!
//! # The check character
//!
//! Symbols are read as elements of GF(32) (polynomial basis, modulus
//! x⁵ + x² + 1). The check symbol `c` makes
//! `c + Σᵢ αⁱ⁺¹·dᵢ = 0`, α a primitive element, so every position carries a
//! distinct non-zero weight αʲ (j < 31). A substitution changes the sum by
//! e·αʲ ≠ 0 (e ≠ 0), and swapping unequal neighbours by
//! (a − b)·αʲ·(1 + α) ≠ 0, because α ≠ 1: both are always caught, with a
//! check symbol from the same 32-symbol alphabet. The proof is also a test
//! (`every_single_substitution_and_adjacent_swap_is_caught`).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::CodeFormatError;
use crate::hash::Secret;

/// Crockford's base32 alphabet, value order.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Random symbols in a code (after its two series symbols).
pub const CODE_RANDOM_LEN: usize = 13;
/// Symbols of a code before its check character: series + random.
pub const CODE_DATA_LEN: usize = 2 + CODE_RANDOM_LEN;
/// Random symbols in a login key.
pub const LOGIN_KEY_DATA_LEN: usize = 7;

/// Multiplies two GF(32) elements (modulus x⁵ + x² + 1).
const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0x20 != 0 {
            a ^= 0x25;
        }
    }
    p
}

/// α = x, a primitive element of GF(32) under x⁵ + x² + 1.
const ALPHA: u8 = 0b10;

/// `GF_MUL[a][b]` = a·b in GF(32).
const GF_MUL: [[u8; 32]; 32] = {
    let mut t = [[0u8; 32]; 32];
    let mut a = 0;
    while a < 32 {
        let mut b = 0;
        while b < 32 {
            t[a][b] = gf_mul(a as u8, b as u8);
            b += 1;
        }
        a += 1;
    }
    t
};

/// `ALPHA_POW[k]` = αᵏ (α has order 31).
const ALPHA_POW: [u8; 31] = {
    let mut t = [0u8; 31];
    let mut w = 1u8;
    let mut k = 0;
    while k < 31 {
        t[k] = w;
        w = gf_mul(w, ALPHA);
        k += 1;
    }
    t
};

/// The weight of data symbol `i` (0-based): αⁱ⁺¹.
fn weight(i: usize) -> u8 {
    ALPHA_POW[(i + 1) % 31]
}

/// The check symbol value for data symbol values `data`.
fn check_value(data: &[u8]) -> u8 {
    let mut sum = 0u8;
    for (i, &d) in data.iter().enumerate() {
        sum ^= GF_MUL[usize::from(weight(i))][usize::from(d & 0x1f)];
    }
    // In characteristic 2, −sum = sum.
    sum
}

/// Not a symbol, in [`SYMBOL_OF`].
const NO_SYMBOL: u8 = 0xff;

/// The symbol value of every ASCII character as typed (either case, with
/// the usual misreadings `I`/`L` → 1 and `O` → 0), else [`NO_SYMBOL`].
const SYMBOL_OF: [u8; 128] = {
    let mut t = [NO_SYMBOL; 128];
    let mut i = 0;
    while i < 32 {
        let c = ALPHABET[i];
        t[c as usize] = i as u8;
        t[c.to_ascii_lowercase() as usize] = i as u8;
        i += 1;
    }
    t[b'I' as usize] = 1;
    t[b'i' as usize] = 1;
    t[b'L' as usize] = 1;
    t[b'l' as usize] = 1;
    t[b'O' as usize] = 0;
    t[b'o' as usize] = 0;
    t
};

/// Reads one typed character as a symbol value, forgiving the usual
/// misreadings (`I`/`L` → 1, `O` → 0, lower case).
fn symbol_value(c: char) -> Option<u8> {
    let v = *SYMBOL_OF.get(usize::try_from(u32::from(c)).ok()?)?;
    (v != NO_SYMBOL).then_some(v)
}

fn encode(values: &[u8]) -> String {
    let mut s = String::with_capacity(values.len());
    for &v in values {
        s.push(char::from(ALPHABET[usize::from(v & 0x1f)]));
    }
    s
}

/// Parses typed text into symbol values: drops spaces and hyphens, maps
/// misreadings, checks length and the check character.
fn parse_symbols(input: &str, data_len: usize) -> Result<Vec<u8>, CodeFormatError> {
    let mut values = Vec::with_capacity(data_len + 1);
    for c in input.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        match symbol_value(c) {
            Some(v) => values.push(v),
            None => return Err(CodeFormatError::InvalidCharacter(c)),
        }
        if values.len() > data_len + 1 {
            return Err(CodeFormatError::WrongLength {
                expected: data_len + 1,
            });
        }
    }
    if values.len() != data_len + 1 {
        return Err(CodeFormatError::WrongLength {
            expected: data_len + 1,
        });
    }
    let (data, check) = values.split_at(data_len);
    if check_value(data) != check[0] {
        return Err(CodeFormatError::BadCheckCharacter);
    }
    values.truncate(data_len);
    Ok(values)
}

/// `N` uniformly random symbol values, from the operating system's CSPRNG
/// through the per-thread pool of [`crate::random`] (one system call per
/// 4 KiB, about 200 credentials, instead of one per credential).
fn random_symbols<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut out = [0u8; N];
    crate::random::fill(&mut out)?;
    // 256 is a multiple of 32, so masking keeps the distribution uniform.
    for b in &mut out {
        *b &= 0x1f;
    }
    Ok(out)
}

/// `n` symbol values derived from `secret` and `input` under a domain
/// `label`: HMAC-SHA256, one output byte per symbol (n ≤ 32).
fn derived_symbols(label: &[u8], secret: &Secret, input: &[u8], n: usize) -> Vec<u8> {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.expose()) else {
        unreachable!("HMAC takes keys of any length")
    };
    m.update(label);
    m.update(&(input.len() as u64).to_be_bytes());
    m.update(input);
    let out = m.finalize().into_bytes();
    // As in `random_symbols`: masking a uniform byte keeps it uniform.
    out.iter().take(n).map(|b| b & 0x1f).collect()
}

/// A campaign's code series: the two symbols every code of the campaign
/// starts with (1024 values). Tells the ledger where the code lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series(u16);

impl Series {
    /// Number of distinct series.
    pub const COUNT: u16 = 1024;

    /// The series with index `n` (`n < 1024`).
    pub fn from_index(n: u16) -> Option<Series> {
        (n < Self::COUNT).then_some(Series(n))
    }

    /// 0..1024.
    pub fn index(self) -> u16 {
        self.0
    }

    /// Parses the two-symbol form (`"7K"`).
    pub fn parse(s: &str) -> Option<Series> {
        let mut it = s.chars();
        let a = symbol_value(it.next()?)?;
        let b = symbol_value(it.next()?)?;
        if it.next().is_some() {
            return None;
        }
        Some(Series(u16::from(a) << 5 | u16::from(b)))
    }

    fn symbols(self) -> [u8; 2] {
        [(self.0 >> 5) as u8, (self.0 & 0x1f) as u8]
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(&self.symbols()))
    }
}

/// A printed code: a bearer credential. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Code {
    /// The 15 data symbols in canonical form (no check character).
    canonical: String,
}

impl Code {
    /// A fresh random code of `series`.
    ///
    /// # Errors
    /// When the operating system's CSPRNG fails.
    pub fn generate(series: Series) -> Result<Code, getrandom::Error> {
        let mut values = [0u8; CODE_DATA_LEN];
        values[..2].copy_from_slice(&series.symbols());
        values[2..].copy_from_slice(&random_symbols::<CODE_RANDOM_LEN>()?);
        Ok(Code {
            canonical: encode(&values),
        })
    }

    /// The code of `series` derived deterministically from `secret` and
    /// `input` (HMAC-SHA256): the same inputs give the same code, forever.
    /// For providers that must re-create a code from an idempotency key
    /// instead of storing it (the `select` gift). Without `secret` the
    /// code cannot be predicted; its 13 symbols carry 65 bits.
    pub fn derive(series: Series, secret: &Secret, input: &[u8]) -> Code {
        let mut values = series.symbols().to_vec();
        let label = b"giftx/derive/code/v1";
        values.extend(derived_symbols(label, secret, input, CODE_RANDOM_LEN));
        Code {
            canonical: encode(&values),
        }
    }

    /// Parses what a person typed.
    ///
    /// # Errors
    /// [`CodeFormatError`] saying what is wrong: a character outside the
    /// alphabet, the wrong length, or a check character that does not match
    /// (a typo).
    pub fn parse(input: &str) -> Result<Code, CodeFormatError> {
        let values = parse_symbols(input, CODE_DATA_LEN)?;
        Ok(Code {
            canonical: encode(&values),
        })
    }

    /// The campaign series the code belongs to.
    pub fn series(&self) -> Series {
        let b = self.canonical.as_bytes();
        // Canonical symbols are always in the alphabet.
        let a = symbol_value(char::from(b[0])).unwrap_or(0);
        let c = symbol_value(char::from(b[1])).unwrap_or(0);
        Series(u16::from(a) << 5 | u16::from(c))
    }

    /// The canonical data symbols, the input to keyed hashing.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The printed form: groups of four, check character last.
    pub fn printed(&self) -> String {
        printed_with_check(&self.canonical)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({}…)", &self.canonical[..2])
    }
}

/// A printed login key, the second half of the pair. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LoginKey {
    canonical: String,
}

impl LoginKey {
    /// A fresh random login key.
    ///
    /// # Errors
    /// When the operating system's CSPRNG fails.
    pub fn generate() -> Result<LoginKey, getrandom::Error> {
        Ok(LoginKey {
            canonical: encode(&random_symbols::<LOGIN_KEY_DATA_LEN>()?),
        })
    }

    /// The login key derived deterministically from `secret` and `input`,
    /// as [`Code::derive`] (under its own domain label, so it is
    /// independent of the code derived from the same input).
    pub fn derive(secret: &Secret, input: &[u8]) -> LoginKey {
        let label = b"giftx/derive/login-key/v1";
        LoginKey {
            canonical: encode(&derived_symbols(label, secret, input, LOGIN_KEY_DATA_LEN)),
        }
    }

    /// Parses what a person typed.
    ///
    /// # Errors
    /// As for [`Code::parse`].
    pub fn parse(input: &str) -> Result<LoginKey, CodeFormatError> {
        let values = parse_symbols(input, LOGIN_KEY_DATA_LEN)?;
        Ok(LoginKey {
            canonical: encode(&values),
        })
    }

    /// The canonical data symbols, the input to keyed hashing.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The printed form: groups of four, check character last.
    pub fn printed(&self) -> String {
        printed_with_check(&self.canonical)
    }
}

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginKey(…)")
    }
}

fn printed_with_check(canonical: &str) -> String {
    let b = canonical.as_bytes();
    let mut sum = 0u8;
    for (i, &c) in b.iter().enumerate() {
        let v = SYMBOL_OF.get(usize::from(c)).copied().unwrap_or(0);
        let v = if v == NO_SYMBOL { 0 } else { v };
        sum ^= GF_MUL[usize::from(weight(i))][usize::from(v)];
    }
    let total = b.len() + 1;
    let mut out = String::with_capacity(total + total / 4);
    let check = ALPHABET[usize::from(sum & 0x1f)];
    for (i, &c) in b.iter().chain(std::iter::once(&check)).enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn alpha_is_primitive_so_all_31_weights_differ() {
        let mut seen = std::collections::HashSet::new();
        let mut w = 1u8;
        for _ in 0..31 {
            assert!(seen.insert(w), "weight repeats");
            w = gf_mul(w, ALPHA);
        }
        assert_eq!(w, 1);
    }

    /// Exhaustive over a sample of 300 codes and 300 login keys: every
    /// substitution of every position by every other symbol, and every swap
    /// of unequal neighbours (check character included), is rejected.
    #[test]
    fn every_single_substitution_and_adjacent_swap_is_caught() {
        let mut checked = 0u64;
        for i in 0..600 {
            let printed = if i % 2 == 0 {
                Code::generate(Series::from_index(i % 1024).unwrap())
                    .unwrap()
                    .printed()
            } else {
                LoginKey::generate().unwrap().printed()
            };
            let data_len = if i % 2 == 0 {
                CODE_DATA_LEN
            } else {
                LOGIN_KEY_DATA_LEN
            };
            let syms: Vec<u8> = printed.bytes().filter(|&b| b != b'-').collect();
            assert_eq!(syms.len(), data_len + 1);
            let parse = |s: &[u8]| parse_symbols(std::str::from_utf8(s).unwrap(), data_len);
            assert!(parse(&syms).is_ok());
            for pos in 0..syms.len() {
                for &a in ALPHABET {
                    if a == syms[pos] {
                        continue;
                    }
                    let mut t = syms.clone();
                    t[pos] = a;
                    assert_eq!(parse(&t), Err(CodeFormatError::BadCheckCharacter));
                    checked += 1;
                }
                if pos + 1 < syms.len() && syms[pos] != syms[pos + 1] {
                    let mut t = syms.clone();
                    t.swap(pos, pos + 1);
                    assert_eq!(parse(&t), Err(CodeFormatError::BadCheckCharacter));
                    checked += 1;
                }
            }
        }
        // 300 × 16 × 31 + 300 × 8 × 31 substitutions, plus the swaps.
        assert!(checked > 223_200);
    }

    #[test]
    fn parsing_forgives_case_spaces_hyphens_and_misreadings() {
        let code = Code::generate(Series::from_index(77).unwrap()).unwrap();
        let printed = code.printed();
        let sloppy: String = printed
            .to_lowercase()
            .replace('-', " ")
            .replace('1', "l")
            .replace('0', "O");
        assert_eq!(Code::parse(&sloppy).unwrap(), code);
        assert_eq!(Code::parse(&printed.replace('-', "")).unwrap(), code);
        assert_eq!(code.series().index(), 77);
    }

    #[test]
    fn parsing_names_what_is_wrong() {
        assert_eq!(
            Code::parse("ABCD"),
            Err(CodeFormatError::WrongLength { expected: 16 })
        );
        assert_eq!(
            Code::parse(""),
            Err(CodeFormatError::WrongLength { expected: 16 })
        );
        assert_eq!(
            Code::parse("ABCU-0000-0000-0000"),
            Err(CodeFormatError::InvalidCharacter('U'))
        );
        assert_eq!(
            LoginKey::parse("AAAA-AAA*"),
            Err(CodeFormatError::InvalidCharacter('*'))
        );
    }

    /// The check as first written: weights by repeated multiplication.
    fn reference_check(data: &[u8]) -> u8 {
        let mut weight = 1u8;
        let mut sum = 0u8;
        for &d in data {
            weight = gf_mul(weight, ALPHA);
            sum ^= gf_mul(weight, d);
        }
        sum
    }

    #[test]
    fn table_driven_check_and_printing_match_the_definition() {
        for i in 0..2000u32 {
            let data: Vec<u8> = (0..(i % 40) as usize)
                .map(|j| ((i * 7 + j as u32 * 13) % 32) as u8)
                .collect();
            assert_eq!(check_value(&data), reference_check(&data));
        }
        for i in 0..200u16 {
            let c = Code::generate(Series::from_index(i).unwrap()).unwrap();
            let values: Vec<u8> = c
                .canonical()
                .chars()
                .map(|ch| symbol_value(ch).unwrap())
                .collect();
            let mut want = c.canonical().to_owned();
            want.push(char::from(ALPHABET[usize::from(reference_check(&values))]));
            let want: String = want
                .chars()
                .enumerate()
                .flat_map(|(j, ch)| (j > 0 && j % 4 == 0).then_some('-').into_iter().chain([ch]))
                .collect();
            assert_eq!(c.printed(), want);
        }
        for c in (0u32..0x300).filter_map(char::from_u32) {
            let want = ALPHABET
                .iter()
                .position(|&a| {
                    char::from(a)
                        == match c.to_ascii_uppercase() {
                            'I' | 'L' => '1',
                            'O' => '0',
                            c => c,
                        }
                })
                .map(|p| p as u8);
            assert_eq!(symbol_value(c), want, "{c:?}");
        }
    }

    #[test]
    fn random_credentials_differ_across_many_pool_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5_000 {
            let c = Code::generate(Series::from_index(3).unwrap()).unwrap();
            let k = LoginKey::generate().unwrap();
            assert!(seen.insert((c.canonical().to_owned(), k.canonical().to_owned())));
        }
    }

    #[test]
    fn printed_forms_are_grouped_in_fours() {
        let c = Code::generate(Series::from_index(0).unwrap())
            .unwrap()
            .printed();
        assert_eq!(c.len(), 19);
        assert_eq!(c.matches('-').count(), 3);
        let k = LoginKey::generate().unwrap().printed();
        assert_eq!(k.len(), 9);
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let k = LoginKey::generate().unwrap();
        assert!(!format!("{k:?}").contains(k.canonical()));
        let c = Code::generate(Series::from_index(5).unwrap()).unwrap();
        assert!(!format!("{c:?}").contains(&c.canonical()[2..]));
    }

    #[test]
    fn derived_credentials_are_stable_parse_back_and_depend_on_every_input() {
        let s1 = Secret::new(vec![1; 32]);
        let s2 = Secret::new(vec![2; 32]);
        let series = Series::from_index(300).unwrap();
        let c = Code::derive(series, &s1, b"giftx-ex-1");
        assert_eq!(c, Code::derive(series, &s1, b"giftx-ex-1"));
        assert_eq!(c.series(), series);
        assert_eq!(Code::parse(&c.printed()).unwrap(), c);
        assert_ne!(c, Code::derive(series, &s2, b"giftx-ex-1"));
        assert_ne!(c, Code::derive(series, &s1, b"giftx-ex-2"));
        let k = LoginKey::derive(&s1, b"giftx-ex-1");
        assert_eq!(k, LoginKey::derive(&s1, b"giftx-ex-1"));
        assert_eq!(LoginKey::parse(&k.printed()).unwrap(), k);
        assert_ne!(k, LoginKey::derive(&s2, b"giftx-ex-1"));
        assert_ne!(k, LoginKey::derive(&s1, b"giftx-ex-2"));
        // Independent labels: the login key is not the code's next symbols.
        assert_ne!(&c.canonical()[2..9], k.canonical());
    }

    proptest! {
        #[test]
        fn any_input_parses_or_errs_without_panicking(s in "\\PC{0,40}") {
            let _ = Code::parse(&s);
            let _ = LoginKey::parse(&s);
            let _ = Series::parse(&s);
        }

        #[test]
        fn series_round_trip(n in 0u16..1024) {
            let s = Series::from_index(n).unwrap();
            prop_assert_eq!(Series::parse(&s.to_string()), Some(s));
        }
    }
}
