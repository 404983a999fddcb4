//! Timestamps: microseconds since the Unix epoch, UTC.
//!
//! Every time the store keeps (`created_at`, `recorded_at`) has microsecond precision, so it is
//! held as an `i64` of microseconds: cheap to compare, to store on disk and to index. Inputs
//! accept any RFC 3339 time (any fraction, `Z` or an offset) and are normalised to UTC; a finer
//! fraction than a microsecond is truncated. Output is always
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

/// A point in time with microsecond precision, in UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// Which end of a range a date-only query parameter stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `YYYY-MM-DD` means the first microsecond of that day.
    Lower,
    /// `YYYY-MM-DD` means the last microsecond of that day.
    Upper,
}

/// The text could not be read as a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an RFC 3339 time (e.g. 2024-01-15T14:00:00Z)")]
pub struct TimestampParseError(pub String);

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl Timestamp {
    /// The earliest time the store accepts: 0001-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(-62_135_596_800_000_000);
    /// The latest time the store accepts: 9999-12-31T23:59:59.999999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999_999);

    pub const fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let now = OffsetDateTime::now_utc();
        Timestamp((now.unix_timestamp_nanos() / 1_000) as i64)
    }

    /// Whether this value lies in the range that can be written as RFC 3339.
    pub fn is_representable(self) -> bool {
        (Self::MIN.0..=Self::MAX.0).contains(&self.0)
    }

    /// Parses an RFC 3339 time with any fraction and any offset.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampParseError> {
        let parsed =
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| TimestampParseError(text.to_owned()))?;
        let micros = parsed
            .to_offset(UtcOffset::UTC)
            .unix_timestamp_nanos()
            .div_euclid(1_000);
        let ts = Timestamp(i64::try_from(micros).map_err(|_| TimestampParseError(text.to_owned()))?);
        if ts.is_representable() {
            Ok(ts)
        } else {
            Err(TimestampParseError(text.to_owned()))
        }
    }

    /// Parses a query parameter: an RFC 3339 time, or a date `YYYY-MM-DD` that stands for the
    /// start (lower bound) or the end (upper bound) of that day.
    pub fn parse_bound(text: &str, bound: Bound) -> Result<Timestamp, TimestampParseError> {
        if text.len() == 10 {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let date = Date::parse(text, &format).map_err(|_| TimestampParseError(text.to_owned()))?;
            let start = date.midnight().assume_utc().unix_timestamp() * 1_000_000;
            return Ok(match bound {
                Bound::Lower => Timestamp(start),
                Bound::Upper => Timestamp(start + MICROS_PER_DAY - 1),
            });
        }
        Self::parse_rfc3339(text)
    }

    /// Appends `YYYY-MM-DDTHH:MM:SS.ffffffZ` to `out`.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let in_day = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let secs = in_day / 1_000_000;
        let micros = in_day % 1_000_000;
        let mut buf = [0u8; 27];
        write_digits(&mut buf[0..4], year.clamp(0, 9999) as u64);
        buf[4] = b'-';
        write_digits(&mut buf[5..7], month as u64);
        buf[7] = b'-';
        write_digits(&mut buf[8..10], day as u64);
        buf[10] = b'T';
        write_digits(&mut buf[11..13], (secs / 3600) as u64);
        buf[13] = b':';
        write_digits(&mut buf[14..16], ((secs / 60) % 60) as u64);
        buf[16] = b':';
        write_digits(&mut buf[17..19], (secs % 60) as u64);
        buf[19] = b'.';
        write_digits(&mut buf[20..26], micros as u64);
        buf[26] = b'Z';
        out.extend_from_slice(&buf);
    }

    /// The UTC date of this time, `YYYY-MM-DD`.
    pub fn date_string(self) -> String {
        let mut out = Vec::with_capacity(27);
        self.write_rfc3339(&mut out);
        String::from_utf8_lossy(&out[..10]).into_owned()
    }
}

fn write_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (the well-known algorithm by Howard Hinnant, public domain).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(27);
        self.write_rfc3339(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_microseconds_in_utc() {
        let ts = Timestamp::parse_rfc3339("2024-01-15T16:00:00.5+02:00").expect("valid");
        assert_eq!(ts.to_string(), "2024-01-15T14:00:00.500000Z");
        assert_eq!(
            Timestamp::from_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::from_micros(-1).to_string(),
            "1969-12-31T23:59:59.999999Z"
        );
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(Timestamp::MIN.to_string(), "0001-01-01T00:00:00.000000Z");
    }

    #[test]
    fn nanoseconds_are_truncated_not_rounded() {
        let ts = Timestamp::parse_rfc3339("2024-01-15T14:00:00.123456999Z").expect("valid");
        assert_eq!(ts.to_string(), "2024-01-15T14:00:00.123456Z");
    }

    #[test]
    fn date_bounds_cover_the_whole_day() {
        let lo = Timestamp::parse_bound("2024-01-31", Bound::Lower).expect("valid");
        let hi = Timestamp::parse_bound("2024-01-31", Bound::Upper).expect("valid");
        assert_eq!(lo.to_string(), "2024-01-31T00:00:00.000000Z");
        assert_eq!(hi.to_string(), "2024-01-31T23:59:59.999999Z");
        assert!(Timestamp::parse_bound("2024-13-01", Bound::Lower).is_err());
        assert!(Timestamp::parse_bound("yesterday", Bound::Lower).is_err());
    }

    proptest::proptest! {
        #[test]
        fn rendering_round_trips(micros in Timestamp::MIN.0..=Timestamp::MAX.0) {
            let ts = Timestamp::from_micros(micros);
            let text = ts.to_string();
            proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&text), Ok(ts));
        }
    }
}
