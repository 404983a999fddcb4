//! Declarative upcasters: how `event_data` of one version of an event type becomes the next.
//!
//! An upcaster is a list of operations on the data, each on a JSON Pointer whose segments are
//! object keys (`/amount`, `/account/id`):
//! - `default` puts `value` at `path` when nothing is there;
//! - `set` puts `value` at `path` whatever is there;
//! - `rename` moves what is at `from` to `path`; nothing at `from` is nothing to move (an
//!   optional field the event did not carry), but something already at `path` is an error, as
//!   overwriting it would lose data;
//! - `unset` removes what is at `path`, if anything.
//!
//! `default`, `set` and `rename` create missing objects on the way to `path`. A step through a
//! value that is not an object is an error naming the pointer: the event cannot be upcast, and
//! the read that met it fails rather than skip it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One operation of an upcaster. (Its OpenAPI schema is written in `openapi.rs`: the derive
/// leaves the variants open to unknown fields, which serde refuses.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpcastOp {
    /// Puts `value` at `path` when nothing is there.
    Default { path: String, value: Value },
    /// Puts `value` at `path`, replacing what is there.
    Set { path: String, value: Value },
    /// Moves what is at `from` to `path` (nothing at `from`: nothing to do; something at
    /// `path` already: an error).
    Rename { from: String, path: String },
    /// Removes what is at `path`, if anything.
    Unset { path: String },
}

/// The body of `PUT /v1/upcasters/{event_type}/{from_version}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpcasterDef {
    /// The version the data has after the operations; greater than the version it comes from.
    #[cfg_attr(feature = "openapi", schema(minimum = 2, maximum = 2147483647))]
    pub to_version: u32,
    pub ops: Vec<UpcastOp>,
}

impl UpcasterDef {
    /// Checks the definition as an upcaster from `from_version`; the error names the field.
    pub fn validate(&self, from_version: u32) -> Result<(), String> {
        if self.to_version <= from_version || self.to_version > i32::MAX as u32 {
            return Err(format!(
                "to_version must be greater than the version upcast from ({from_version}) and at most {}, got {}",
                i32::MAX,
                self.to_version
            ));
        }
        for (i, op) in self.ops.iter().enumerate() {
            let pointers: &[(&str, &String)] = match op {
                UpcastOp::Default { path, .. } | UpcastOp::Set { path, .. } | UpcastOp::Unset { path } => {
                    &[("path", path)]
                }
                UpcastOp::Rename { from, path } => &[("from", from), ("path", path)],
            };
            for (field, pointer) in pointers {
                segments(pointer).map_err(|problem| format!("ops[{i}].{field}: {problem}"))?;
            }
        }
        Ok(())
    }

    /// Applies the operations to `data` (an event's `event_data`) in order.
    pub fn apply(&self, data: &mut Value) -> Result<(), String> {
        for (i, op) in self.ops.iter().enumerate() {
            apply_op(op, data).map_err(|problem| format!("ops[{i}] ({}): {problem}", op_name(op)))?;
        }
        Ok(())
    }
}

fn op_name(op: &UpcastOp) -> &'static str {
    match op {
        UpcastOp::Default { .. } => "default",
        UpcastOp::Set { .. } => "set",
        UpcastOp::Rename { .. } => "rename",
        UpcastOp::Unset { .. } => "unset",
    }
}

/// The object keys of a pointer; the empty pointer (the whole document) is refused, since an
/// operation must name a field.
fn segments(pointer: &str) -> Result<Vec<String>, String> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "'{pointer}' is not a JSON Pointer to a field (it must start with '/')"
        ));
    };
    rest.split('/')
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut chars = segment.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("'{pointer}' has a '~' not followed by 0 or 1")),
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

/// The object holding the last segment of `path`, creating missing objects when `create`.
/// `Ok(None)`: a step is missing and `create` is false.
fn parent<'a>(
    data: &'a mut Value,
    path: &str,
    keys: &[String],
    create: bool,
) -> Result<Option<&'a mut Map<String, Value>>, String> {
    let mut at = data;
    let mut walked = String::new();
    for key in &keys[..keys.len() - 1] {
        let object = as_object(at, &walked, path)?;
        walked.push('/');
        walked.push_str(key);
        if !object.contains_key(key) {
            if !create {
                return Ok(None);
            }
            object.insert(key.clone(), Value::Object(Map::new()));
        }
        at = object.get_mut(key).expect("present: checked or inserted above");
    }
    as_object(at, &walked, path).map(Some)
}

fn as_object<'a>(
    value: &'a mut Value,
    walked: &str,
    path: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let kind = kind_of(value);
    value.as_object_mut().ok_or_else(|| {
        let at = if walked.is_empty() { "event_data" } else { walked };
        format!("cannot reach {path}: {at} is {kind}, not an object")
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn last(keys: &[String]) -> &str {
    keys.last().map_or("", String::as_str)
}

fn apply_op(op: &UpcastOp, data: &mut Value) -> Result<(), String> {
    match op {
        UpcastOp::Default { path, value } => {
            let keys = segments(path)?;
            let object = parent(data, path, &keys, true)?.expect("created");
            object.entry(last(&keys)).or_insert_with(|| value.clone());
        }
        UpcastOp::Set { path, value } => {
            let keys = segments(path)?;
            let object = parent(data, path, &keys, true)?.expect("created");
            object.insert(last(&keys).to_owned(), value.clone());
        }
        UpcastOp::Unset { path } => {
            let keys = segments(path)?;
            if let Some(object) = parent(data, path, &keys, false)? {
                object.remove(last(&keys));
            }
        }
        UpcastOp::Rename { from, path } => {
            let from_keys = segments(from)?;
            let Some(moved) = parent(data, from, &from_keys, false)?.and_then(|o| o.remove(last(&from_keys)))
            else {
                return Ok(());
            };
            let keys = segments(path)?;
            let object = parent(data, path, &keys, true)?.expect("created");
            if object.contains_key(last(&keys)) {
                return Err(format!("cannot rename {from} to {path}: {path} already exists"));
            }
            object.insert(last(&keys).to_owned(), moved);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn def(ops: Value) -> UpcasterDef {
        serde_json::from_value(json!({"to_version": 2, "ops": ops})).expect("definition")
    }

    #[test]
    fn the_operations_of_the_contract_apply_in_order() {
        let upcaster = def(json!([
            {"op": "default", "path": "/currency", "value": "USD"},
            {"op": "rename", "from": "/amt", "path": "/amount"},
            {"op": "set", "path": "/meta/source", "value": "v1"},
            {"op": "unset", "path": "/legacy"}
        ]));
        upcaster.validate(1).expect("valid");
        let mut data = json!({"amt": 500, "legacy": true});
        upcaster.apply(&mut data).expect("applies");
        assert_eq!(
            data,
            json!({"amount": 500, "currency": "USD", "meta": {"source": "v1"}})
        );
        // `default` keeps a value that is there.
        let mut data = json!({"amount": 1, "currency": "EUR"});
        upcaster.apply(&mut data).expect("applies");
        assert_eq!(data["currency"], "EUR");
    }

    #[test]
    fn renaming_a_missing_field_does_nothing_but_overwriting_is_an_error() {
        let upcaster = def(json!([{"op": "rename", "from": "/amt", "path": "/amount"}]));
        let mut data = json!({"amount": 3});
        upcaster.apply(&mut data).expect("nothing to move");
        assert_eq!(data, json!({"amount": 3}));
        let mut data = json!({"amt": 1, "amount": 3});
        let error = upcaster.apply(&mut data).expect_err("would overwrite");
        assert!(error.contains("/amount already exists"), "{error}");
    }

    #[test]
    fn a_step_through_a_non_object_names_the_pointer() {
        let upcaster = def(json!([{"op": "set", "path": "/amount/value", "value": 1}]));
        let error = upcaster.apply(&mut json!({"amount": 5})).expect_err("number");
        assert_eq!(
            error,
            "ops[0] (set): cannot reach /amount/value: /amount is a number, not an object"
        );
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_field() {
        assert!(
            def(json!([]))
                .validate(2)
                .expect_err("version")
                .contains("to_version")
        );
        let error = def(json!([{"op": "unset", "path": "amount"}]))
            .validate(1)
            .expect_err("pointer");
        assert!(error.starts_with("ops[0].path:"), "{error}");
        let error = def(json!([{"op": "set", "path": "/a~2", "value": 1}]))
            .validate(1)
            .expect_err("escape");
        assert!(error.contains("'~'"), "{error}");
        assert!(
            serde_json::from_value::<UpcasterDef>(
                json!({"to_version": 2, "ops": [{"op": "copy", "path": "/a"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn escaped_pointer_segments_name_keys_with_slashes_and_tildes() {
        let upcaster = def(json!([{"op": "set", "path": "/a~1b/c~0d", "value": 1}]));
        let mut data = json!({});
        upcaster.apply(&mut data).expect("applies");
        assert_eq!(data, json!({"a/b": {"c~d": 1}}));
    }
}
