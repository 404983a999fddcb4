//! Times on the wire: RFC 3339 in UTC with microseconds, and the bounds that query parameters
//! accept (a time, or a whole day).
//!
//! The server writes every time as `2024-01-15T14:00:00.000000Z`; this module writes them the
//! same way, so an event read and written back (an export) is byte for byte what the server
//! sent. Any RFC 3339 time is accepted when reading.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// Formats `at` as the server does: UTC, six digits of fraction, `Z`.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(UtcOffset::UTC);
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    // Formatting fails only for years outside 0..=9999, which the server never sends; fall
    // back to the well-known format rather than panic.
    utc.format(&format)
        .or_else(|_| utc.format(&Rfc3339))
        .unwrap_or_default()
}

/// Parses any RFC 3339 time.
pub fn parse_timestamp(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339)
}

/// serde for a required timestamp field.
pub(crate) mod required {
    use super::*;

    pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_timestamp(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OffsetDateTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse_timestamp(&text)
            .map_err(|e| serde::de::Error::custom(format!("'{text}' is not an RFC 3339 time: {e}")))
    }
}

/// serde for an optional timestamp field (`null` or absent is `None`).
pub(crate) mod optional {
    use super::*;

    pub fn serialize<S: Serializer>(at: &Option<OffsetDateTime>, serializer: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serializer.serialize_str(&format_timestamp(*at)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
        text.map(|text| {
            parse_timestamp(&text)
                .map_err(|e| serde::de::Error::custom(format!("'{text}' is not an RFC 3339 time: {e}")))
        })
        .transpose()
    }
}

/// A time bound of a query (`from`, `to`, `as_of`): an exact time, or a whole day.
///
/// As a lower bound a day means its first microsecond, as an upper bound its last, so
/// `from = 2024-01-01, to = 2024-01-31` is the whole of January. The server resolves days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// An exact time.
    At(OffsetDateTime),
    /// A UTC calendar day.
    Day(Date),
}

impl TimeBound {
    /// The query parameter value: RFC 3339 or `YYYY-MM-DD`.
    pub fn to_param(&self) -> String {
        match self {
            TimeBound::At(at) => format_timestamp(*at),
            TimeBound::Day(day) => {
                let format = format_description!("[year]-[month]-[day]");
                day.format(&format).unwrap_or_default()
            }
        }
    }
}

impl From<OffsetDateTime> for TimeBound {
    fn from(at: OffsetDateTime) -> TimeBound {
        TimeBound::At(at)
    }
}

impl From<Date> for TimeBound {
    fn from(day: Date) -> TimeBound {
        TimeBound::Day(day)
    }
}

impl fmt::Display for TimeBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_param())
    }
}

/// The error of parsing a [`TimeBound`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is neither an RFC 3339 time (2024-01-15T14:00:00Z) nor a date (2024-01-15)")]
pub struct TimeBoundParseError(String);

impl FromStr for TimeBound {
    type Err = TimeBoundParseError;

    fn from_str(text: &str) -> Result<TimeBound, TimeBoundParseError> {
        let format = format_description!("[year]-[month]-[day]");
        if let Ok(day) = Date::parse(text, &format) {
            return Ok(TimeBound::Day(day));
        }
        parse_timestamp(text)
            .map(TimeBound::At)
            .map_err(|_| TimeBoundParseError(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps_are_written_as_the_server_writes_them() {
        let at = parse_timestamp("2024-01-15T15:00:00.5+01:00").unwrap();
        assert_eq!(format_timestamp(at), "2024-01-15T14:00:00.500000Z");
        let at = parse_timestamp("2024-01-15T14:00:00.000000Z").unwrap();
        assert_eq!(format_timestamp(at), "2024-01-15T14:00:00.000000Z");
    }

    #[test]
    fn bounds_parse_days_and_times() {
        assert_eq!(
            "2024-01-31".parse::<TimeBound>().unwrap().to_param(),
            "2024-01-31"
        );
        assert_eq!(
            "2024-01-31T10:00:00+02:00"
                .parse::<TimeBound>()
                .unwrap()
                .to_param(),
            "2024-01-31T08:00:00.000000Z"
        );
        assert!("yesterday".parse::<TimeBound>().is_err());
    }
}
