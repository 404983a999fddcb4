//! The evolution rules: version n of an event type must read every event written under
//! version n − 1.
//!
//! A new version may only add optional properties. Against the previous version's schema the
//! check walks `properties` (through nested objects and array `items`) and refuses, naming the
//! property:
//! - a property that was removed;
//! - a property whose `type` changed (including gaining a `type` it did not have);
//! - a property that is newly `required` (an added one, or one that was optional);
//! - `additionalProperties: false` where the previous version allowed others (events written
//!   with extra fields would no longer match);
//! - a change of the `type` of the whole document.
//!
//! Other keywords (`enum`, `format`, bounds, `$ref`s) are not compared: the rule the design
//! document gives is about the shape of the data, and a check that claims more than it can
//! prove would be worse than one that says what it checks.

use std::collections::BTreeSet;

use serde_json::Value;

/// `Ok` when `new` may follow `old`; otherwise the first problem, naming the property.
pub fn check_compatible(old: &Value, new: &Value) -> Result<(), String> {
    compare(old, new, "")
}

fn types(schema: &Value) -> Option<BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(BTreeSet::from([t.clone()])),
        Value::Array(ts) => Some(ts.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()),
        _ => None,
    }
}

fn describe(types: &Option<BTreeSet<String>>) -> String {
    match types {
        None => "any".to_owned(),
        Some(set) => set.iter().cloned().collect::<Vec<_>>().join("|"),
    }
}

fn required(schema: &Value) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn where_(path: &str) -> String {
    if path.is_empty() {
        "the document".to_owned()
    } else {
        format!("property {path}")
    }
}

fn compare(old: &Value, new: &Value, path: &str) -> Result<(), String> {
    let (old_types, new_types) = (types(old), types(new));
    if old_types != new_types {
        return Err(format!(
            "{} changed type from {} to {}",
            where_(path),
            describe(&old_types),
            describe(&new_types)
        ));
    }
    let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
    if closed(new) && !closed(old) {
        return Err(format!("{} no longer allows additional properties", where_(path)));
    }
    let empty = serde_json::Map::new();
    let old_props = old.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let new_props = new.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for (name, old_schema) in old_props {
        let child = format!("{path}/{name}");
        let Some(new_schema) = new_props.get(name) else {
            return Err(format!("property {child} was removed"));
        };
        compare(old_schema, new_schema, &child)?;
    }
    let old_required = required(old);
    if let Some(name) = required(new).difference(&old_required).next() {
        let child = format!("{path}/{name}");
        return Err(if old_props.contains_key(*name) {
            format!("property {child} was optional and is now required")
        } else {
            format!("property {child} is added as required (only optional properties may be added)")
        });
    }
    if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
        compare(old_items, new_items, &format!("{path}/items"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v1() -> Value {
        json!({
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "account": {"type": "object", "properties": {"id": {"type": "string"}}},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["amount"]
        })
    }

    /// `schema` with `value` at `pointer` (its parent must exist).
    fn with(mut schema: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        let object = schema
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent");
        object.insert(key.to_owned(), value);
        schema
    }

    #[test]
    fn adding_an_optional_property_is_compatible() {
        let v2 = with(v1(), "/properties/currency", json!({"type": "string"}));
        assert_eq!(check_compatible(&v1(), &v2), Ok(()));
        let nested = with(
            v1(),
            "/properties/account/properties/branch",
            json!({"type": "string"}),
        );
        assert_eq!(check_compatible(&v1(), &nested), Ok(()));
        // Loosening: a required property that becomes optional still reads old events.
        let looser = with(v1(), "/required", json!([]));
        assert_eq!(check_compatible(&v1(), &looser), Ok(()));
    }

    #[test]
    fn removing_a_property_is_refused_with_its_path() {
        let mut v2 = v1();
        v2["properties"]["account"]["properties"]
            .as_object_mut()
            .expect("object")
            .remove("id");
        let error = check_compatible(&v1(), &v2).expect_err("removed");
        assert_eq!(error, "property /account/id was removed");
    }

    #[test]
    fn retyping_a_property_is_refused() {
        let v2 = with(v1(), "/properties/amount/type", json!("string"));
        assert_eq!(
            check_compatible(&v1(), &v2),
            Err("property /amount changed type from number to string".to_owned())
        );
        let items = with(v1(), "/properties/tags/items/type", json!("integer"));
        assert!(
            check_compatible(&v1(), &items)
                .expect_err("items")
                .contains("/tags/items")
        );
    }

    #[test]
    fn adding_a_required_property_is_refused() {
        let mut v2 = with(v1(), "/properties/currency", json!({"type": "string"}));
        v2["required"] = json!(["amount", "currency"]);
        let error = check_compatible(&v1(), &v2).expect_err("required");
        assert!(error.contains("/currency is added as required"), "{error}");
        let mut tightened = v1();
        tightened["properties"]["account"]["required"] = json!(["id"]);
        let error = check_compatible(&v1(), &tightened).expect_err("tightened");
        assert!(
            error.contains("/account/id was optional and is now required"),
            "{error}"
        );
    }

    #[test]
    fn closing_the_object_is_refused() {
        let v2 = with(v1(), "/additionalProperties", json!(false));
        assert!(check_compatible(&v1(), &v2).is_err());
        // Already closed before: still closed is fine.
        assert_eq!(check_compatible(&v2, &v2), Ok(()));
    }
}
