//! [`RawJson`]: a JSON value kept as the text the server sent.
//!
//! `event_data` and `metadata` are the application's JSON. Parsing them into a
//! `serde_json::Value` would reorder object keys (serde_json sorts them) and round large or
//! precise numbers through `f64`, so an event read and written back would not be the event
//! that was stored. Keeping the text avoids both and costs nothing for events that are only
//! passed along; [`RawJson::parse`] turns it into the application's own types.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value as text. Equality compares the text (`{"a":1}` and `{"a": 1}` differ); compare
/// [`RawJson::to_value`] for equality by value.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The JSON of `value` (compact).
    pub fn from_value(value: &serde_json::Value) -> RawJson {
        // A Value always serialises; the fallback only satisfies the type.
        serde_json::value::to_raw_value(value)
            .map(RawJson)
            .unwrap_or_else(|_| RawJson::empty_object())
    }

    /// The JSON of any serialisable value (compact).
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<RawJson, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// Checks that `text` is one JSON value and keeps it as it is.
    pub fn from_string(text: String) -> Result<RawJson, serde_json::Error> {
        RawValue::from_string(text).map(RawJson)
    }

    /// `{}`.
    pub fn empty_object() -> RawJson {
        // "{}" is valid JSON; the expect can never fire.
        RawJson(RawValue::from_string("{}".to_owned()).expect("'{}' is JSON"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Deserialises the JSON into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON as a `serde_json::Value` (object keys sorted).
    pub fn to_value(&self) -> serde_json::Value {
        // The text is valid JSON by construction; Null never shows up in practice.
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the value is a JSON object.
    pub fn is_object(&self) -> bool {
        self.0.get().trim_start().starts_with('{')
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<serde_json::Value> for RawJson {
    fn from(value: serde_json::Value) -> RawJson {
        RawJson::from_value(&value)
    }
}

impl From<&serde_json::Value> for RawJson {
    fn from(value: &serde_json::Value) -> RawJson {
        RawJson::from_value(value)
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> RawJson {
        RawJson(raw)
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Needs a deserializer that can hand out raw JSON (`serde_json::from_str`/`from_slice`, not
/// `serde_json::from_value`).
impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawJson, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_is_kept_exactly() {
        let text = r#"{"z":1,"a":12345678901234567890123,"f":1.10}"#;
        let raw: RawJson = serde_json::from_str(text).unwrap();
        assert_eq!(raw.as_str(), text);
        assert_eq!(serde_json::to_string(&raw).unwrap(), text);
        assert!(raw.is_object());
        assert_eq!(raw.to_value()["z"], 1);
    }
}
