//! JSON helpers that keep stored event data small.

use std::borrow::Cow;

/// Removes the white space between the tokens of valid JSON text; strings are kept as they are.
/// Returns the input unchanged (borrowed) when there is nothing to remove.
pub fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let first_space = bytes.iter().position(|&b| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            false
        } else if b == b'"' {
            in_string = true;
            false
        } else {
            matches!(b, b' ' | b'\n' | b'\r' | b'\t')
        }
    });
    let Some(first_space) = first_space else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first_space]);
    let mut in_string = false;
    let mut escaped = false;
    for ch in text[first_space..].chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !matches!(ch, ' ' | '\n' | '\r' | '\t') {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spaces_inside_strings() {
        let text = "{ \"a b\" : [ 1 , \"c \\\" d\" ] }";
        assert_eq!(compact_json(text), "{\"a b\":[1,\"c \\\" d\"]}");
        assert!(matches!(compact_json("{\"a\":1}"), Cow::Borrowed(_)));
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
