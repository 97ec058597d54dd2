//! RFC 3339 timestamps and short durations (`60s`, `1h30m`) for the command
//! line, and the zone giftctl shows times in.
//!
//! Times are shown in the operator's local zone (`TZ`, else the system's
//! zone), or in the offset of a time typed in the same command
//! (`--deadline 2027-12-15T00:00:00+09:00` is shown back as `+09:00`), or
//! in UTC under `--utc`. Files written for vendors (CSV) always use UTC.

use std::sync::OnceLock;
use std::time::Duration;

use prost_types::Timestamp;

/// Days from 1970-01-01 to the given proleptic Gregorian date
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A time typed on the command line and the UTC offset it was typed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedTime {
    /// The instant.
    pub timestamp: Timestamp,
    /// The offset it was written with, in seconds east of UTC (0 for `Z`).
    pub offset_seconds: i32,
}

/// Parses an RFC 3339 timestamp and keeps the offset it was typed in.
///
/// # Errors
/// A message saying what is wrong, for the command line.
pub fn parse_typed_rfc3339(s: &str) -> Result<TypedTime, String> {
    parse_with_offset(s).map(|(timestamp, offset)| TypedTime {
        timestamp,
        // |offset| < 24 h by construction.
        offset_seconds: offset as i32,
    })
}

/// Parses an RFC 3339 timestamp such as `2026-12-15T00:00:00Z` or
/// `2026-12-15T09:00:00.250+09:00` (`t`/`z` and a space separator too).
///
/// # Errors
/// A message saying what is wrong, for the command line.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    parse_with_offset(s).map(|(t, _)| t)
}

fn parse_with_offset(s: &str) -> Result<(Timestamp, i64), String> {
    let bad = || {
        format!(
            "'{s}' is not an RFC 3339 timestamp (e.g. 2026-12-15T00:00:00Z or 2026-12-15T09:00:00+09:00)"
        )
    };
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    // A leap second is read as the last second of its minute.
    let second = second.min(59);
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return Err(bad());
        }
        for (k, c) in digits.bytes().take(9).enumerate() {
            nanos += i64::from(c - b'0') * 10_i64.pow(8 - k as u32);
        }
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Ok((
        Timestamp {
            seconds,
            // Below 10^9 by construction.
            nanos: nanos as i32,
        },
        offset_secs,
    ))
}

/// Formats a timestamp as RFC 3339 in UTC, with milliseconds only when they
/// are not zero: `2026-12-15T00:00:00Z`.
pub fn format_rfc3339(t: &Timestamp) -> String {
    format_with_offset(t, 0)
}

/// Formats a timestamp as RFC 3339 at `offset` seconds east of UTC
/// (`2026-12-15T09:00:00+09:00`; `Z` for offset 0).
pub fn format_with_offset(t: &Timestamp, offset: i32) -> String {
    let local = t.seconds.saturating_add(i64::from(offset));
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let ms = t.nanos.clamp(0, 999_999_999) / 1_000_000;
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if ms != 0 {
        out.push_str(&format!(".{ms:03}"));
    }
    if offset == 0 {
        out.push('Z');
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let a = offset.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60));
    }
    out
}

/// The zone giftctl shows times in.
#[derive(Clone, Debug)]
pub enum DisplayZone {
    /// `--utc`.
    Utc,
    /// The offset of a time the operator typed in this command.
    Fixed(i32),
    /// The operator's zone: `TZ`, else the system's.
    Local(jiff::tz::TimeZone),
}

impl DisplayZone {
    /// The operator's local zone (`TZ`, else the system's, else UTC).
    pub fn local() -> DisplayZone {
        DisplayZone::Local(jiff::tz::TimeZone::system())
    }

    /// Seconds east of UTC at instant `t`.
    pub fn offset_at(&self, t: &Timestamp) -> i32 {
        match self {
            DisplayZone::Utc => 0,
            DisplayZone::Fixed(o) => *o,
            DisplayZone::Local(tz) => {
                jiff::Timestamp::from_second(t.seconds).map_or(0, |ts| tz.to_offset(ts).seconds())
            }
        }
    }

    /// `t` as RFC 3339 in this zone.
    pub fn format(&self, t: &Timestamp) -> String {
        format_with_offset(t, self.offset_at(t))
    }
}

static DISPLAY_ZONE: OnceLock<DisplayZone> = OnceLock::new();

/// Sets the zone of every time shown from now on (once per process; later
/// calls are ignored).
pub fn set_display_zone(zone: DisplayZone) {
    let _ = DISPLAY_ZONE.set(zone);
}

/// A timestamp as RFC 3339 in the display zone (UTC until one is set).
pub fn format_display(t: &Timestamp) -> String {
    match DISPLAY_ZONE.get() {
        Some(z) => z.format(t),
        None => format_rfc3339(t),
    }
}

/// Parses a duration such as `60s`, `90m`, `1h30m`, `250ms` or `2d`; a bare
/// number is seconds.
///
/// # Errors
/// A message saying what is wrong, for the command line.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (e.g. 60s, 15m, 1h30m, 2d)");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(unit);
    }
    Ok(total)
}

/// A time on the command line given as an RFC 3339 instant or as a
/// duration from now (`30d`, `12h`): `--expires`, `--since`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeOrDuration {
    /// An RFC 3339 instant, as typed.
    At(TypedTime),
    /// A duration, counted from now (forward or back, as the flag says).
    Relative(Duration),
}

impl TimeOrDuration {
    /// The instant `now + d` for a duration (an instant as it is).
    pub fn after(&self, now: &Timestamp) -> Timestamp {
        self.resolve(now, 1)
    }

    /// The instant `now - d` for a duration (an instant as it is).
    pub fn before(&self, now: &Timestamp) -> Timestamp {
        self.resolve(now, -1)
    }

    fn resolve(&self, now: &Timestamp, sign: i64) -> Timestamp {
        match self {
            TimeOrDuration::At(t) => t.timestamp,
            TimeOrDuration::Relative(d) => {
                let total = i128::from(now.seconds) * 1_000_000_000
                    + i128::from(now.nanos)
                    + i128::from(sign) * i128::try_from(d.as_nanos()).unwrap_or(i128::MAX / 4);
                Timestamp {
                    seconds: i64::try_from(total.div_euclid(1_000_000_000))
                        .unwrap_or(if total < 0 { i64::MIN } else { i64::MAX }),
                    // Below 10^9 by construction.
                    nanos: total.rem_euclid(1_000_000_000) as i32,
                }
            }
        }
    }

    /// The offset an instant was typed in (none for a duration).
    pub fn typed_offset(&self) -> Option<i32> {
        match self {
            TimeOrDuration::At(t) => Some(t.offset_seconds),
            TimeOrDuration::Relative(_) => None,
        }
    }
}

/// Parses an RFC 3339 instant (`2027-01-01T00:00:00Z`) or a duration
/// (`30d`, `12h`, `1h30m`).
///
/// # Errors
/// A message saying what is wrong, for the command line.
pub fn parse_time_or_duration(s: &str) -> Result<TimeOrDuration, String> {
    if let Ok(d) = parse_duration(s) {
        return Ok(TimeOrDuration::Relative(d));
    }
    parse_typed_rfc3339(s.trim())
        .map(TimeOrDuration::At)
        .map_err(|_| {
            format!(
                "'{s}' is neither an RFC 3339 time (e.g. 2027-01-01T00:00:00Z) nor a \
                 duration (e.g. 30d, 12h, 90m)"
            )
        })
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // subsec_nanos() < 10^9.
        nanos: d.subsec_nanos() as i32,
    }
}

/// Whether `a` is strictly later than `b`.
pub fn is_after(a: &Timestamp, b: &Timestamp) -> bool {
    (a.seconds, a.nanos) > (b.seconds, b.nanos)
}

/// A [`Duration`] as protobuf's.
pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // subsec_nanos() < 10^9.
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offset_timestamps_to_the_same_instant() {
        let z = parse_rfc3339("2026-12-15T00:00:00Z").unwrap();
        assert_eq!(z.seconds, 1_797_292_800);
        assert_eq!(z.nanos, 0);
        let jst = parse_rfc3339("2026-12-15T09:00:00+09:00").unwrap();
        assert_eq!(jst, z);
        let frac = parse_rfc3339("2014-12-14T23:59:59.5-00:30").unwrap();
        assert_eq!(
            frac.seconds,
            parse_rfc3339("2014-12-15T00:29:59Z").unwrap().seconds
        );
        assert_eq!(frac.nanos, 500_000_000);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap().seconds, 0);
        assert_eq!(
            parse_rfc3339("2024-02-29 12:00:00z").unwrap().seconds,
            1_709_208_000
        );
    }

    #[test]
    fn rejects_malformed_timestamps_with_a_hint() {
        for bad in [
            "2026-12-15",
            "2026-12-15T00:00:00",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-12-15T24:00:00Z",
            "2026-12-15T00:00:00+0900",
            "2026-12-15T00:00:00.Z",
            "tomorrow",
            "2026-12-15T00:00:00Zjunk",
        ] {
            let err = parse_rfc3339(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_and_parses_back() {
        for s in [
            "2026-12-15T00:00:00Z",
            "1969-07-20T20:17:40Z",
            "2000-02-29T23:59:59.123Z",
        ] {
            assert_eq!(format_rfc3339(&parse_rfc3339(s).unwrap()), s);
        }
    }

    #[test]
    fn formats_in_the_typed_offset_and_a_named_zone() {
        let typed = parse_typed_rfc3339("2027-12-15T00:00:00+09:00").unwrap();
        assert_eq!(typed.offset_seconds, 9 * 3600);
        assert_eq!(
            format_rfc3339(&typed.timestamp),
            "2027-12-14T15:00:00Z",
            "the same instant in UTC"
        );
        assert_eq!(
            DisplayZone::Fixed(typed.offset_seconds).format(&typed.timestamp),
            "2027-12-15T00:00:00+09:00"
        );
        let west = parse_typed_rfc3339("2014-07-01T23:30:00.250-05:30").unwrap();
        assert_eq!(
            DisplayZone::Fixed(west.offset_seconds).format(&west.timestamp),
            "2014-07-01T23:30:00.250-05:30"
        );
        assert_eq!(
            DisplayZone::Utc.format(&typed.timestamp),
            "2027-12-14T15:00:00Z"
        );
        let tokyo = jiff::tz::TimeZone::posix("JST-9").unwrap();
        assert_eq!(
            DisplayZone::Local(tokyo).format(&typed.timestamp),
            "2027-12-15T00:00:00+09:00"
        );
    }

    #[test]
    fn parses_times_or_durations_and_resolves_them() {
        let now = parse_rfc3339("2026-01-10T00:00:00Z").unwrap();
        let d = parse_time_or_duration("30d").unwrap();
        assert_eq!(
            d,
            TimeOrDuration::Relative(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(format_rfc3339(&d.after(&now)), "2026-02-09T00:00:00Z");
        assert_eq!(format_rfc3339(&d.before(&now)), "2025-12-11T00:00:00Z");
        assert_eq!(d.typed_offset(), None);
        let half = parse_time_or_duration("500ms").unwrap();
        assert_eq!(
            format_rfc3339(&half.before(&now)),
            "2026-01-09T23:59:59.500Z"
        );
        let at = parse_time_or_duration("2027-01-01T09:00:00+09:00").unwrap();
        assert_eq!(format_rfc3339(&at.after(&now)), "2027-01-01T00:00:00Z");
        assert_eq!(at.before(&now), at.after(&now));
        assert_eq!(at.typed_offset(), Some(9 * 3600));
        for bad in ["", "tomorrow", "2027-01-01", "-3d"] {
            let err = parse_time_or_duration(bad).unwrap_err();
            assert!(
                err.contains("RFC 3339") && err.contains("duration"),
                "{bad}: {err}"
            );
        }
        assert!(is_after(&d.after(&now), &now));
        assert!(!is_after(&now, &now));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "s", "10x", "-5s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
