//! Money in minor units, and the ISO 4217 currencies giftx accepts.

use std::fmt;

/// An ISO 4217 currency giftx knows, with its minor-unit exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// ISO 4217 active currencies and their minor-unit exponents.
#[rustfmt::skip]
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2),
    ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2), ("BHD", 3),
    ("BIF", 0), ("BMD", 2), ("BND", 2), ("BOB", 2), ("BRL", 2), ("BSD", 2), ("BTN", 2),
    ("BWP", 2), ("BYN", 2), ("BZD", 2), ("CAD", 2), ("CDF", 2), ("CHF", 2), ("CLP", 0),
    ("CNY", 2), ("COP", 2), ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0),
    ("DKK", 2), ("DOP", 2), ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2), ("EUR", 2),
    ("FJD", 2), ("FKP", 2), ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2), ("GMD", 2),
    ("GNF", 0), ("GTQ", 2), ("GYD", 2), ("HKD", 2), ("HNL", 2), ("HTG", 2), ("HUF", 2),
    ("IDR", 2), ("ILS", 2), ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0), ("JMD", 2),
    ("JOD", 3), ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0), ("KPW", 2),
    ("KRW", 0), ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2), ("LKR", 2),
    ("LRD", 2), ("LSL", 2), ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2),
    ("MMK", 2), ("MNT", 2), ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2),
    ("MXN", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2), ("NIO", 2), ("NOK", 2),
    ("NPR", 2), ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2), ("PHP", 2),
    ("PKR", 2), ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2), ("RUB", 2),
    ("RWF", 0), ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2),
    ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2), ("SVC", 2),
    ("SYP", 2), ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3), ("TOP", 2),
    ("TRY", 2), ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0), ("USD", 2),
    ("UYU", 2), ("UZS", 2), ("VES", 2), ("VND", 0), ("VUV", 0), ("WST", 2), ("XAF", 0),
    ("XCD", 2), ("XOF", 0), ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWL", 2),
];

impl Currency {
    /// Looks up an ISO 4217 alphabetic code (upper case, as the standard
    /// writes it).
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, exponent)| Currency { code, exponent })
    }

    /// The alphabetic code, e.g. `"JPY"`.
    pub fn code(self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point (0 for JPY, 2 for USD).
    pub fn exponent(self) -> u8 {
        self.exponent
    }
}

/// An amount in one currency, in its minor unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    /// The currency.
    pub currency: Currency,
    /// Amount in minor units.
    pub minor_units: i64,
}

impl Money {
    /// `minor_units` of `currency`.
    pub fn new(currency: Currency, minor_units: i64) -> Self {
        Money {
            currency,
            minor_units,
        }
    }

    /// This amount times `n` (saturating), e.g. face value × count.
    pub fn times(self, n: i64) -> Money {
        Money {
            currency: self.currency,
            minor_units: self.minor_units.saturating_mul(n),
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = u32::from(self.currency.exponent);
        if e == 0 {
            return write!(f, "{} {}", self.minor_units, self.currency.code);
        }
        let div = 10i64.pow(e);
        let sign = if self.minor_units < 0 { "-" } else { "" };
        let abs = self.minor_units.unsigned_abs();
        let div_u = div.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / div_u,
            abs % div_u,
            self.currency.code,
            width = e as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_currencies_have_their_exponents_and_unknown_are_refused() {
        assert_eq!(Currency::from_code("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::from_code("USD").unwrap().exponent(), 2);
        assert_eq!(Currency::from_code("KWD").unwrap().exponent(), 3);
        assert!(Currency::from_code("XXX").is_none());
        assert!(Currency::from_code("jpy").is_none());
    }

    #[test]
    fn money_displays_in_major_units() {
        let jpy = Currency::from_code("JPY").unwrap();
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(Money::new(jpy, 500).to_string(), "500 JPY");
        assert_eq!(Money::new(usd, 1205).to_string(), "12.05 USD");
        assert_eq!(Money::new(jpy, 500).times(3).minor_units, 1500);
    }
}
