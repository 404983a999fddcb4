//! A group's definition (what `PUT /v1/subscriptions/{group}` sends) and its validation.

use std::fmt;

use factstore_core::{EventFilter, Limits};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SubscriptionError;

/// Longest group name, in bytes. Group names become file names (hex-encoded, so twice this).
pub const GROUP_NAME_BYTES_MAX: usize = 100;
/// Default lease of a delivered event before it is delivered again.
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Shortest and longest lease.
pub const ACK_TIMEOUT_MS_MIN: u64 = 100;
pub const ACK_TIMEOUT_MS_MAX: u64 = 24 * 3600 * 1000;
/// Default number of deliveries of one event before it is parked.
pub const MAX_DELIVERIES_DEFAULT: u32 = 5;
/// Most deliveries `max_deliveries` may allow.
pub const MAX_DELIVERIES_MAX: u32 = 1000;

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Every matching event in the store.
    #[default]
    Beginning,
    /// Only events appended after the group is created.
    End,
    /// The events after this position.
    After(u64),
}

impl Serialize for Start {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Start::Beginning => serializer.serialize_str("beginning"),
            Start::End => serializer.serialize_str("end"),
            Start::After(p) => serializer.serialize_u64(*p),
        }
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StartVisitor;
        impl Visitor<'_> for StartVisitor {
            type Value = Start;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"beginning\", \"end\" or a position (0 or more)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Start, E> {
                Ok(Start::After(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Start, E> {
                u64::try_from(v)
                    .map(Start::After)
                    .map_err(|_| E::custom(format!("start must not be negative, got {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Start, E> {
                factstore_core::append::whole_number(v)
                    .map(Start::After)
                    .ok_or_else(|| E::custom(format!("start must be a whole number of 0 or more, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Start, E> {
                match v {
                    "beginning" => Ok(Start::Beginning),
                    "end" => Ok(Start::End),
                    other => Err(E::custom(format!(
                        "start must be \"beginning\", \"end\" or a position, not \"{other}\""
                    ))),
                }
            }
        }
        deserializer.deserialize_any(StartVisitor)
    }
}

/// The order in which a group hands out events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Any event may be in flight with any other; lower positions are handed out first.
    #[default]
    None,
    /// At most one event of an aggregate is in flight at once, and an aggregate's events are
    /// handed out in version order (also across redeliveries and replays).
    PerAggregate,
}

/// A group's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupDefinition {
    /// Which events the group receives (every event when empty).
    #[serde(default)]
    pub filter: EventFilter,
    /// Where a new group starts: `"beginning"` (the default), `"end"` (only what is appended
    /// after the group exists) or a position P (the events after P). Used when the group is
    /// created; a replaced definition keeps the group's progress.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::StartSchema))]
    pub start: Start,
    /// How long a consumer holds a delivered event before it is delivered again.
    #[serde(default = "ack_timeout_default")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 100, maximum = 86400000, default = 30000)
    )]
    pub ack_timeout_ms: u64,
    /// Deliveries of one event before it is parked (dead-lettered).
    #[serde(default = "max_deliveries_default")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000, default = 5))]
    pub max_deliveries: u32,
    /// `none` (the default) or `per_aggregate`.
    #[serde(default)]
    pub ordering: Ordering,
}

fn ack_timeout_default() -> u64 {
    ACK_TIMEOUT_MS_DEFAULT
}

fn max_deliveries_default() -> u32 {
    MAX_DELIVERIES_DEFAULT
}

impl Default for GroupDefinition {
    fn default() -> GroupDefinition {
        GroupDefinition {
            filter: EventFilter::default(),
            start: Start::Beginning,
            ack_timeout_ms: ACK_TIMEOUT_MS_DEFAULT,
            max_deliveries: MAX_DELIVERIES_DEFAULT,
            ordering: Ordering::None,
        }
    }
}

impl GroupDefinition {
    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self, limits: &Limits) -> Result<(), SubscriptionError> {
        self.filter.validate(limits)?;
        if let Start::After(position) = self.start {
            factstore_core::validate_position("start", position)?;
        }
        if !(ACK_TIMEOUT_MS_MIN..=ACK_TIMEOUT_MS_MAX).contains(&self.ack_timeout_ms) {
            return Err(SubscriptionError::invalid(format!(
                "ack_timeout_ms must be between {ACK_TIMEOUT_MS_MIN} and {ACK_TIMEOUT_MS_MAX}, not {}",
                self.ack_timeout_ms
            )));
        }
        if !(1..=MAX_DELIVERIES_MAX).contains(&self.max_deliveries) {
            return Err(SubscriptionError::invalid(format!(
                "max_deliveries must be between 1 and {MAX_DELIVERIES_MAX}, not {}",
                self.max_deliveries
            )));
        }
        Ok(())
    }
}

/// Checks a group name: 1 to [`GROUP_NAME_BYTES_MAX`] bytes of ASCII letters, digits and
/// `-`, `_`, `.`, `:` (so that it reads the same in a path, a log line and a file name).
pub fn validate_group_name(name: &str) -> Result<(), SubscriptionError> {
    if name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX {
        return Err(SubscriptionError::invalid(format!(
            "a group name must be 1 to {GROUP_NAME_BYTES_MAX} bytes long, not {}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(SubscriptionError::invalid(format!(
            "a group name may hold only ASCII letters, digits, '-', '_', '.' and ':', not {bad:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_parse_with_defaults_and_refuse_unknown_keys() {
        let def: GroupDefinition = serde_json::from_str(r#"{"start": 42}"#).expect("parses");
        assert_eq!(def.start, Start::After(42));
        assert_eq!(def.ack_timeout_ms, ACK_TIMEOUT_MS_DEFAULT);
        assert_eq!(def.ordering, Ordering::None);
        let def: GroupDefinition =
            serde_json::from_str(r#"{"start": "end", "ordering": "per_aggregate"}"#).expect("parses");
        assert_eq!((def.start, def.ordering), (Start::End, Ordering::PerAggregate));
        for bad in [
            r#"{"start": "middle"}"#,
            r#"{"start": -1}"#,
            r#"{"filter": {"event_type": ["x"]}}"#,
            r#"{"colour": 1}"#,
        ] {
            assert!(serde_json::from_str::<GroupDefinition>(bad).is_err(), "{bad}");
        }
        let back = serde_json::to_string(&def).expect("serialises");
        assert_eq!(
            serde_json::from_str::<GroupDefinition>(&back).expect("parses"),
            def
        );
    }

    #[test]
    fn validation_names_the_field() {
        let limits = Limits::default();
        let def = GroupDefinition {
            max_deliveries: 0,
            ..GroupDefinition::default()
        };
        assert!(
            def.validate(&limits)
                .expect_err("invalid")
                .to_string()
                .contains("max_deliveries")
        );
        let def = GroupDefinition {
            ack_timeout_ms: 5,
            ..GroupDefinition::default()
        };
        assert!(
            def.validate(&limits)
                .expect_err("invalid")
                .to_string()
                .contains("ack_timeout_ms")
        );
        assert!(validate_group_name("orders-v2.billing:eu").is_ok());
        assert!(validate_group_name("").is_err());
        assert!(validate_group_name("a/b").is_err());
        assert!(validate_group_name(&"x".repeat(101)).is_err());
    }
}
