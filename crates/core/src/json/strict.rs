//! Strict JSON: what every reader parses back the same way.
//!
//! serde_json accepts a raw value (`RawValue`) after checking its syntax only, so three things
//! pass that no reader can parse back, or that readers parse differently:
//! - a `\u` escape of a lone surrogate (`"\ud800"`): no Unicode string holds one; serde_json,
//!   and so every upcaster, schema and projection, refuses the text;
//! - a number beyond the range of a double (`1e400`): serde_json refuses it, JavaScript reads
//!   `Infinity`;
//! - a name twice in one object: which value wins differs between parsers.
//!
//! The rule is [`reference`]: serde_json parses the text as it would for a reader, building
//! nothing but the names of one object at a time. It costs about as much as the `RawValue`
//! parse before it, on every event of every append, so [`strict_problem`] first runs
//! [`surely_strict`], a scan of the already parsed text that answers "strict" only when it is
//! sure, and leaves every other text (and the error message) to the reference. The scan is
//! tested against the reference on random text: it may send a strict text to the reference,
//! never pass one the reference refuses.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Why `raw` is not strict JSON, or `None` when it is. `raw` must nest at most
/// [`JSON_DEPTH_MAX`](super::JSON_DEPTH_MAX) deep (serde_json stops deeper, and says so).
pub fn strict_problem(raw: &RawValue) -> Option<String> {
    if surely_strict(raw.get().as_bytes()) {
        return None;
    }
    reference(raw.get())
}

/// The rule: why serde_json, parsing `text` for a reader, refuses it, or finds a name twice in
/// one object.
fn reference(text: &str) -> Option<String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let checked = Strict
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    checked.err().map(|e| e.to_string())
}

/// Whether `json`, text serde_json has parsed (a `RawValue`: its syntax is valid), is surely
/// strict. `false` means "ask [`reference`]": a `\u` escape in the surrogate range, a number
/// that is not finite as a double, a name with an escape in it, or a name twice in an object.
///
/// One pass, byte by byte between strings (punctuation and numbers are short) and with a
/// vectorised search inside long strings.
fn surely_strict(json: &[u8]) -> bool {
    // The names of the objects open at this point, innermost last, as (start, end) offsets
    // into `json`; `opened` holds where each open object's names start in `names`, and
    // `usize::MAX` for an open array. Sized for a typical payload: one allocation each.
    let mut names: Vec<(usize, usize)> = Vec::with_capacity(32);
    let mut opened: Vec<usize> = Vec::with_capacity(16);
    let mut expect_name = false;
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        at += 1;
        match byte {
            b'"' => {
                let start = at;
                let Some((end, escaped)) = string_end(json, start) else {
                    return false;
                };
                if expect_name {
                    if escaped {
                        return false;
                    }
                    names.push((start, end));
                    expect_name = false;
                }
                at = end + 1;
            }
            b'{' => {
                opened.push(names.len());
                expect_name = true;
            }
            b'[' => opened.push(usize::MAX),
            b'}' => {
                let first = opened.pop().unwrap_or(usize::MAX);
                if first == usize::MAX || has_repeated_name(json, names.get_mut(first..).unwrap_or_default())
                {
                    return false;
                }
                names.truncate(first);
            }
            b']' => {
                opened.pop();
            }
            b',' => expect_name = opened.last().is_some_and(|&first| first != usize::MAX),
            b'-' | b'0'..=b'9' => {
                let start = at - 1;
                let mut exponent = false;
                while let Some(&b) = json.get(at) {
                    match b {
                        b'0'..=b'9' | b'.' | b'+' | b'-' => {}
                        b'e' | b'E' => exponent = true,
                        _ => break,
                    }
                    at += 1;
                }
                // Only an exponent or hundreds of digits can leave a double's range.
                if (exponent || at - start > 300) && !finite_number(json.get(start..at).unwrap_or_default()) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Where the string whose text starts at `at` (just after its opening quote) ends (the offset
/// of its closing quote), and whether it holds an escape. `None` when it holds a `\u` escape
/// in the surrogate range (D800–DFFF: a pair is strict, but telling a pair from a lone half
/// is the reference's job), or does not end.
fn string_end(json: &[u8], mut at: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        // Eight bytes at a time up to the next quote or backslash (most strings have neither
        // inside); the last few bytes of the text one by one.
        while let Some(word) = json.get(at..at + 8) {
            let word = u64::from_le_bytes(word.try_into().ok()?);
            let found = has_byte(word, b'"') | has_byte(word, b'\\');
            if found != 0 {
                at += (found.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        match *json.get(at)? {
            b'"' => return Some((at, escaped)),
            b'\\' => {
                escaped = true;
                if json.get(at + 1) == Some(&b'u')
                    && json.get(at + 2).is_some_and(|b| b.eq_ignore_ascii_case(&b'd'))
                    && json
                        .get(at + 3)
                        .is_some_and(|b| matches!(b, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'))
                {
                    return None;
                }
                at += 2;
            }
            _ => at += 1,
        }
    }
}

/// The bytes of `word` equal to `byte`, each marked by its high bit; the lowest marked byte is
/// the first match (bits above it may be false marks, which only the first match makes).
fn has_byte(word: u64, byte: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zeroed = word ^ (ONES * u64::from(byte));
    zeroed.wrapping_sub(ONES) & !zeroed & HIGHS
}

/// Whether the number token `text` (valid JSON syntax) is finite as a double.
fn finite_number(text: &[u8]) -> bool {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// Whether two of one object's names (escape-free, so equal text is equal names) are equal.
/// Reorders `names`, which the caller drops next.
fn has_repeated_name(json: &[u8], names: &mut [(usize, usize)]) -> bool {
    let text = |&(start, end): &(usize, usize)| json.get(start..end).unwrap_or_default();
    if names.len() <= 8 {
        return names
            .iter()
            .enumerate()
            .any(|(i, a)| names.iter().skip(i + 1).any(|b| text(a) == text(b)));
    }
    names.sort_unstable_by(|a, b| text(a).cmp(text(b)));
    names.windows(2).any(|pair| match pair {
        [a, b] => text(a) == text(b),
        _ => false,
    })
}

/// Checks one JSON value and everything in it (see [`reference`]).
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // serde_json has decoded each string (refusing lone surrogates) and parsed each number
    // (refusing those out of a double's range) before it calls these.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        if n.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        while let Some(name) = map.next_key_seed(Name)? {
            map.next_value_seed(Strict)?;
            names.push(name);
        }
        if names.len() > 1 {
            names.sort_unstable();
            if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(de::Error::custom(format_args!(
                    "the name \"{}\" appears twice in one object",
                    pair[0].escape_debug()
                )));
            }
        }
        Ok(())
    }
}

/// An object member's name: borrowed from the text unless it holds escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(name))
    }
    fn visit_str<E>(self, name: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(text: &str) -> Option<String> {
        strict_problem(&RawValue::from_string(text.to_owned()).expect("JSON syntax"))
    }

    #[test]
    fn strict_json_refuses_what_readers_cannot_parse_back() {
        for text in [
            r#"{"s": "\ud800"}"#,
            r#"{"s": "a\udc00b"}"#,
            r#"{"s": "\ud800\u0041"}"#,
            r#"{"n": 1e400}"#,
            r#"{"n": -1e400}"#,
            &format!(r#"{{"n": 1{}}}"#, "0".repeat(400)),
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1, "\u0061": 2}"#,
            r#"{"x": [{"b": {}, "c": 0, "b": null}]}"#,
        ] {
            assert!(problem(text).is_some(), "{text} passed");
        }
        for text in [
            r#"{"s": "\ud83d\ude00 \u00e9 \"\\"}"#,
            r#"{"n": [0, -0, 1.5e300, 1e-400, 18446744073709551615, -9223372036854775808, 123456789012345678901234567890]}"#,
            r#"{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}], "A": null}"#,
            r#"{}"#,
            r#"{"e": "", "": ""}"#,
        ] {
            assert_eq!(problem(text), None, "{text}");
        }
    }

    #[test]
    fn the_scan_is_sure_of_common_payloads() {
        for text in [
            r#"{"account":"ACC-1","amount":12345,"memo":"a \"quoted\" memo","tags":["a","b"],"n":{"x":1.5,"y":-2}}"#,
            r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":"\u00e9\n"}"#,
            r#"{"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10}"#,
        ] {
            assert!(surely_strict(text.as_bytes()), "{text}");
        }
        for text in [
            r#"{"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k1":10}"#,
            r#"{"a":[{"b":1,"b":2}]}"#,
            r#"{"n":1e400}"#,
            r#"{"s":"\uD800"}"#,
            r#"{"long":"a string longer than the bytes looked at one by one \ud800"}"#,
            r#"{"long":"a string longer than the bytes looked at one by one \" \\","n":1e999}"#,
        ] {
            assert!(!surely_strict(text.as_bytes()), "{text}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The scan never passes what the rule refuses.
        #[test]
        fn the_scan_passes_only_what_the_reference_passes(text in json_ish()) {
            if let Ok(raw) = RawValue::from_string(text.clone())
                && surely_strict(raw.get().as_bytes())
            {
                prop_assert_eq!(reference(&text), None, "{}", text);
            }
        }
    }

    /// JSON text (and some that is not), from the pieces that break parsers.
    fn json_ish() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![r#""a""#, r#""b""#, r#""\u0061""#, r#""\ud800""#, r#""""#]);
        let leaf = prop::sample::select(vec![
            "null",
            "0",
            "-0",
            "1.5",
            "1e400",
            "-1e400",
            "1e-400",
            "1E308",
            "1.8e308",
            "18446744073709551616",
            r#""x""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00""#,
            r#""\\ud800""#,
            r#""a\"b""#,
            r#""seventeen bytes..\"\\\ud800""#,
            r#""seventeen bytes..\"\\\\ud800""#,
        ])
        .prop_map(str::to_owned);
        leaf.prop_recursive(4, 32, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((name.clone(), inner), 0..12).prop_map(|members| {
                    let members: Vec<String> = members.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", members.join(" , "))
                }),
            ]
        })
    }
}
