//! JSON helpers: the rule for JSON the store keeps, and compaction that keeps it small.
//!
//! Every JSON text the store keeps (an event's `event_data` and `metadata`, a snapshot's
//! state) must be read back by every reader: the server's upcasters, schemas and projections
//! (serde_json), and clients in every language. [`stored_object`] is the one gate: strict
//! JSON (RFC 8259 as I-JSON, RFC 7493, narrows it), an object, nested at most
//! [`JSON_DEPTH_MAX`] deep, compacted.

mod strict;

use std::borrow::Cow;

use serde_json::value::RawValue;

pub use strict::strict_problem;

use crate::error::StoreError;

/// Whether any byte is at most `limit`. Folds whole chunks without an early exit, which the
/// compiler turns into vector instructions; `any` with its early exit stays one byte at a time.
pub fn any_byte_at_most(bytes: &[u8], limit: u8) -> bool {
    bytes
        .chunks(64)
        .any(|chunk| chunk.iter().fold(false, |found, &b| found | (b <= limit)))
}

/// serde_json's recursion limit: the deepest nesting of arrays and objects one document may have
/// for serde_json, which parses requests here and answers in the Rust client (and the common
/// limit of JSON parsers elsewhere).
pub const PARSER_DEPTH_MAX: usize = 128;

/// The deepest nesting of arrays and objects a stored payload (`event_data`, `metadata`, a
/// snapshot's state) may have. They are kept as raw text, which serde_json does not limit, and
/// answers embed them deeper still (`event_data` of a page of events sits 3 levels down; a
/// projection's state puts it under its own path): at [`PARSER_DEPTH_MAX`] a stored event
/// would make every page holding it unreadable to a serde_json client. Half the parser's limit
/// leaves the answers room.
pub const JSON_DEPTH_MAX: usize = 64;

/// Whether arrays and objects in `bytes` (JSON text) nest deeper than `max`.
pub fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    // Fewer opening brackets than the limit cannot nest deeper: one vectorisable count settles
    // nearly every payload; only the others are walked, minding strings.
    if bytes.iter().filter(|&&b| b == b'[' || b == b'{').count() <= max {
        return false;
    }
    // Strings are most of the bytes: jump over each with a vectorised search for its
    // closing quote, stepping over escaped characters.
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        at += 1;
        match b {
            b'"' => loop {
                match memchr::memchr2(b'"', b'\\', bytes.get(at..).unwrap_or_default()) {
                    Some(i) if bytes.get(at + i) == Some(&b'\\') => at += i + 2,
                    Some(i) => {
                        at += i + 1;
                        break;
                    }
                    None => return false,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The stored form of a JSON object a client sent as `field`: checked by [`strict_problem`]
/// and for depth, an object, compacted. Refusals are `InvalidRequest` naming `field`.
///
/// Size limits are the caller's: they differ per field and count the compacted text.
pub fn stored_object(field: &str, raw: Box<RawValue>) -> Result<String, StoreError> {
    if nests_deeper_than(raw.get().as_bytes(), JSON_DEPTH_MAX) {
        return Err(StoreError::invalid(format!(
            "{field} nests arrays and objects more than {JSON_DEPTH_MAX} levels deep"
        )));
    }
    if let Some(problem) = strict_problem(&raw) {
        return Err(StoreError::invalid(format!(
            "{field} is not strict JSON (no escaped lone surrogate, numbers within a double's \
             range, no name twice in one object): {problem}"
        )));
    }
    let compact = compact_json_owned(raw.into());
    if !compact.starts_with('{') {
        return Err(StoreError::invalid(format!("{field} must be a JSON object")));
    }
    Ok(compact)
}

/// Owned form of [`compact_json`]: reuses the allocation when there is nothing to remove.
pub fn compact_json_owned(text: Box<str>) -> String {
    match compact_json(&text) {
        Cow::Borrowed(_) => String::from(text),
        Cow::Owned(compact) => compact,
    }
}

/// Removes the white space between the tokens of valid JSON text; strings are kept as they are.
/// Returns the input unchanged (borrowed) when there is nothing to remove.
pub fn compact_json(text: &str) -> Cow<'_, str> {
    // JSON white space and quotes are ASCII, and every byte of a multi-byte UTF-8 character is
    // 0x80 or above, so scanning bytes is exact and keeps the text valid UTF-8.
    let bytes = text.as_bytes();
    // Most clients send compact JSON: one vectorisable scan settles that case. JSON white space
    // is all at or below b' ', and no other byte that low may appear in valid JSON text.
    if !any_byte_at_most(bytes, b' ') {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        // Between strings: copy up to the next white space or quote. These runs are short
        // (punctuation, numbers, literals).
        let run = bytes[at..]
            .iter()
            .position(|&b| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b'"'))
            .unwrap_or(bytes.len() - at);
        out.extend_from_slice(&bytes[at..at + run]);
        at += run;
        match bytes.get(at) {
            None => break,
            Some(b'"') => {
                // A string, copied whole: jump from quote or backslash to the next with a
                // vectorised search, stepping over each escaped character.
                let start = at;
                at += 1;
                loop {
                    // `get`: text that ends inside a string after a backslash is not valid JSON,
                    // but must not panic either.
                    let rest = bytes.get(at..).unwrap_or_default();
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(i) if bytes[at + i] == b'\\' => at += i + 2,
                        Some(i) => {
                            at += i + 1;
                            break;
                        }
                        None => {
                            at = bytes.len();
                            break;
                        }
                    }
                }
                let end = at.min(bytes.len());
                out.extend_from_slice(&bytes[start..end]);
                at = end;
            }
            Some(_) => at += 1,
        }
    }
    if out.len() == bytes.len() {
        return Cow::Borrowed(text);
    }
    // Only ASCII white space was removed from valid UTF-8, so this cannot fail.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_depth_counts_brackets_outside_strings() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(!nests_deeper_than(nested(128).as_bytes(), 128));
        assert!(nests_deeper_than(nested(129).as_bytes(), 128));
        let in_strings = format!(r#"{{"a": "{}", "b": "\"{}"}}"#, "[".repeat(300), "{".repeat(300));
        assert!(!nests_deeper_than(in_strings.as_bytes(), 128));
        let siblings = "[[]]".repeat(200);
        assert!(!nests_deeper_than(siblings.as_bytes(), 128));
        // A string ending in an escaped backslash ends there; the brackets after it count.
        let after_escapes = format!(r#"["x\\", "\"", {}{}]"#, "[".repeat(200), "]".repeat(200));
        assert!(nests_deeper_than(after_escapes.as_bytes(), 128));
    }

    #[test]
    fn stored_objects_name_the_field_and_are_compacted() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).expect("JSON");
        let ok = stored_object("state", raw(r#"{ "a" : [1, 2] }"#));
        // 64 levels, the object included, are kept; a page of events that holds them nests
        // 67, within every serde_json reader's 128.
        let deepest = format!(r#"{{"a":{}{}}}"#, "[".repeat(63), "]".repeat(63));
        assert_eq!(stored_object("state", raw(&deepest)).ok(), Some(deepest));
        assert_eq!(ok.ok().as_deref(), Some(r#"{"a":[1,2]}"#));
        for (text, says) in [
            (r#"{"s": "\ud800"}"#, "hex escape at line 1 column 14"),
            (r#"{"n": 1e400}"#, "out of range"),
            (r#"{"a": 1, "a": 1}"#, "appears twice"),
            ("[1]", "must be a JSON object"),
            (
                &format!(r#"{{"a": {}{}}}"#, "[".repeat(64), "]".repeat(64)),
                "more than 64 levels",
            ),
        ] {
            match stored_object("events[3].event_data", raw(text)) {
                Err(StoreError::InvalidRequest(message)) => {
                    assert!(message.starts_with("events[3].event_data "), "{message}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn keeps_spaces_inside_strings() {
        let text = "{ \"a b\" : [ 1 , \"c \\\" d\" ] }";
        assert_eq!(compact_json(text), "{\"a b\":[1,\"c \\\" d\"]}");
        assert!(matches!(compact_json("{\"a\":1}"), Cow::Borrowed(_)));
        assert_eq!(compact_json("[\"a\\\\\", 1 ]"), "[\"a\\\\\",1]");
        // Not JSON, but no panic either.
        assert_eq!(compact_json(" \"a\\"), "\"a\\");
    }

    proptest::proptest! {
        #[test]
        fn compacting_keeps_the_value(value in proptest_json()) {
            let pretty = serde_json::to_string_pretty(&value).expect("serialises");
            let compact = compact_json(&pretty);
            let back: serde_json::Value = serde_json::from_str(&compact).expect("still JSON");
            proptest::prop_assert_eq!(back, value);
        }
    }

    fn proptest_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ a-z\"\\\\\t\n]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z ]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
