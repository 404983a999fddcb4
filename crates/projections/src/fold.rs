//! The fold: one event's key, and its operations applied to a JSON state.
//!
//! Pure functions of (state, event): the runtime, `source=event_store` reads and time travel
//! all fold through [`apply`], so they agree by construction. `event_data` and `metadata` are
//! parsed at most once per event, and only when an operation or the key reads them.
//!
//! # Rules (beyond the API contract's)
//! - A missing or `null` value in the state counts as 0 for `add`, `sub` and `inc`, as an empty
//!   array for `append`, and as "no value yet" for `min` and `max` (which then take the
//!   operand: 0 would make the minimum of positive amounts 0 forever).
//! - Integers stay integers while they fit in an `i64`; otherwise (or with a fraction) the
//!   arithmetic is `f64`. A result that is not finite fails the operation.
//! - `min`/`max` compare two numbers, or two strings (RFC 3339 times in the same format compare
//!   as strings); anything else fails.
//! - Missing objects along a `path` are created; going through a number, a string or an array
//!   index that does not exist fails.
//! - A key from a JSON Pointer is the string there, or a number's or boolean's JSON text;
//!   nothing (or `null`, an object, an array) there makes the event unkeyed.
//! - An `event_data` or `metadata` that does not parse has no values: a pointer into it finds
//!   nothing, as a pointer into a payload that is not JSON does. Only a store written before
//!   payloads were checked strictly can hold one (`factstore_core::json::stored_object`); the
//!   event is then keyed and folded like any event missing those values, and an operation that
//!   needs one fails naming why, rather than the parse failing every operation of the event.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Ordering;

use factstore_core::Event;
use serde_json::{Map, Number, Value};

use crate::definition::{Compiled, EventField, EventPointer, KEY_BYTES_MAX, KeySpec, Op, OpKind, Operand};

/// Why an event could not be folded. The runtime adds the event's position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FoldError(pub String);

/// An event being folded, with its JSON parts parsed on first use.
#[derive(Debug)]
pub struct EventView<'e> {
    event: &'e Event,
    data: OnceCell<Parsed>,
    metadata: OnceCell<Parsed>,
    whole: OnceCell<Parsed>,
}

/// A JSON part of the event, parsed; or why it does not parse.
type Parsed = Result<Value, String>;

impl<'e> EventView<'e> {
    pub fn new(event: &'e Event) -> EventView<'e> {
        EventView {
            event,
            data: OnceCell::new(),
            metadata: OnceCell::new(),
            whole: OnceCell::new(),
        }
    }

    pub fn event(&self) -> &'e Event {
        self.event
    }

    fn parsed<'s>(cell: &'s OnceCell<Parsed>, bytes: &[u8]) -> &'s Parsed {
        cell.get_or_init(|| serde_json::from_slice(bytes).map_err(|e| e.to_string()))
    }

    /// Why a pointer found nothing because the part it points into does not parse; `None`
    /// when that part parsed (or was never read).
    pub fn unreadable(&self, pointer: &EventPointer) -> Option<String> {
        let (cell, what) = match pointer.field {
            None => (&self.whole, "the event"),
            Some(EventField::EventData) => (&self.data, "event_data"),
            Some(EventField::Metadata) => (&self.metadata, "metadata"),
            Some(_) => return None,
        };
        match cell.get() {
            Some(Err(e)) => Some(format!("{what} does not parse as JSON: {e}")),
            _ => None,
        }
    }

    /// The value a pointer finds in the event, `None` when there is nothing there.
    pub fn resolve(&self, pointer: &EventPointer) -> Result<Option<Cow<'_, Value>>, FoldError> {
        let event = self.event;
        let (root, rest): (&Value, &[String]) = match pointer.field {
            None => match Self::parsed(&self.whole, event.to_json().as_bytes()) {
                Ok(whole) => (whole, &pointer.rest),
                Err(_) => return Ok(None),
            },
            Some(EventField::EventData) => match Self::parsed(&self.data, event.event_data_bytes()) {
                Ok(data) => (data, &pointer.rest),
                Err(_) => return Ok(None),
            },
            Some(EventField::Metadata) => {
                match event.metadata_bytes().map(|b| Self::parsed(&self.metadata, b)) {
                    Some(Ok(metadata)) => (metadata, &pointer.rest),
                    None | Some(Err(_)) => return Ok(None),
                }
            }
            Some(field) => {
                let value = match field {
                    EventField::EventId => Value::from(event.event_id().to_string()),
                    EventField::Position => Value::from(event.position()),
                    EventField::AggregateId => Value::from(event.aggregate_id()),
                    EventField::AggregateType => Value::from(event.aggregate_type()),
                    EventField::Version => Value::from(event.version()),
                    EventField::EventType => Value::from(event.event_type()),
                    EventField::EventVersion => Value::from(event.event_version()),
                    EventField::CreatedAt => Value::from(event.created_at().to_string()),
                    EventField::RecordedAt => Value::from(event.recorded_at().to_string()),
                    EventField::CreatedBy => match event.created_by() {
                        Some(by) => Value::from(by),
                        None => return Ok(None),
                    },
                    EventField::EventData | EventField::Metadata => {
                        return Err(FoldError(
                            "unreachable: object fields are handled above".to_owned(),
                        ));
                    }
                };
                return Ok(Some(Cow::Owned(value)));
            }
        };
        let mut at = root;
        for token in rest {
            at = match at {
                Value::Object(map) => match map.get(token) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
        }
        Ok(Some(Cow::Borrowed(at)))
    }
}

/// The key of an event's state; `None` when the event is unkeyed.
pub fn key_of(compiled: &Compiled, view: &EventView<'_>) -> Result<Option<String>, FoldError> {
    let event = view.event();
    let key = match &compiled.key {
        KeySpec::AggregateId => event.aggregate_id().to_owned(),
        KeySpec::Day => event.created_at().date_string(),
        KeySpec::All => "all".to_owned(),
        KeySpec::Pointer(pointer) => match view.resolve(pointer)?.as_deref() {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => return Ok(None),
        },
    };
    if key.len() > KEY_BYTES_MAX {
        return Err(FoldError(format!(
            "key: the value at {} is {} bytes; a key may be at most {KEY_BYTES_MAX}",
            compiled.definition.key,
            key.len()
        )));
    }
    Ok(Some(key))
}

/// Applies the operations for `view`'s event type, then the `"*"` ones, to `state`.
///
/// On an error `state` may be partly changed: the caller discards it (the runtime refolds up
/// to the event before).
pub fn apply(compiled: &Compiled, state: &mut Value, view: &EventView<'_>) -> Result<(), FoldError> {
    if let Some(ops) = compiled.typed.get(view.event().event_type()) {
        for op in ops {
            apply_op(op, state, view)?;
        }
    }
    for op in &compiled.star {
        apply_op(op, state, view)?;
    }
    Ok(())
}

fn apply_op(op: &Op, state: &mut Value, view: &EventView<'_>) -> Result<(), FoldError> {
    let fail = |problem: String| FoldError(format!("{}: {problem}", op.label));
    let operand: Option<Cow<'_, Value>> = match &op.operand {
        Operand::None => None,
        Operand::Literal(value) => Some(Cow::Borrowed(value)),
        Operand::From { pointer, optional } => match view.resolve(pointer).map_err(|e| fail(e.0))? {
            Some(value) => Some(value),
            None if *optional => return Ok(()),
            None => {
                return Err(fail(match view.unreadable(pointer) {
                    Some(why) => format!("the event has no value at {}: its {why}", pointer.text),
                    None => format!("the event has no value at {}", pointer.text),
                }));
            }
        },
    };
    if op.kind == OpKind::Unset {
        unset(state, &op.path).map_err(fail)?;
        return Ok(());
    }
    let operand = operand.ok_or_else(|| fail("no operand".to_owned()))?;
    let slot = slot(state, &op.path).map_err(fail)?;
    let from = || match &op.operand {
        Operand::From { pointer, .. } => format!("the value at {}", pointer.text),
        _ => "the value".to_owned(),
    };
    match op.kind {
        OpKind::Set => *slot = operand.into_owned(),
        OpKind::Add | OpKind::Inc | OpKind::Sub => {
            let Value::Number(right) = operand.as_ref() else {
                return Err(fail(format!("{} is {}, not a number", from(), kind_of(&operand))));
            };
            let left = match slot {
                Value::Null => Number::from(0),
                Value::Number(n) => n.clone(),
                other => {
                    return Err(fail(format!(
                        "the state holds {} there, not a number",
                        kind_of(other)
                    )));
                }
            };
            *slot = Value::Number(arithmetic(&left, right, op.kind == OpKind::Sub).map_err(fail)?);
        }
        OpKind::Min | OpKind::Max => {
            let ordering = match (&*slot, operand.as_ref()) {
                (Value::Null, _) if operand.is_number() || operand.is_string() => Ordering::Greater,
                (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
                (Value::String(a), Value::String(b)) => a.as_str().cmp(b.as_str()),
                (current, new) => {
                    return Err(fail(format!(
                        "cannot compare {} in the state with {} ({}); min and max compare two numbers or two strings",
                        kind_of(current),
                        kind_of(new),
                        from()
                    )));
                }
            };
            let replace = if op.kind == OpKind::Min {
                ordering == Ordering::Greater || slot.is_null()
            } else {
                ordering == Ordering::Less || slot.is_null()
            };
            if replace {
                *slot = operand.into_owned();
            }
        }
        OpKind::Append => match slot {
            Value::Null => *slot = Value::Array(vec![operand.into_owned()]),
            Value::Array(items) => items.push(operand.into_owned()),
            other => {
                return Err(fail(format!(
                    "the state holds {} there, not an array",
                    kind_of(other)
                )));
            }
        },
        OpKind::Unset => {}
    }
    Ok(())
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

fn arithmetic(left: &Number, right: &Number, subtract: bool) -> Result<Number, String> {
    if let (Some(a), Some(b)) = (left.as_i64(), right.as_i64()) {
        let exact = if subtract {
            a.checked_sub(b)
        } else {
            a.checked_add(b)
        };
        if let Some(result) = exact {
            return Ok(Number::from(result));
        }
    }
    let (a, b) = (
        left.as_f64().unwrap_or(f64::NAN),
        right.as_f64().unwrap_or(f64::NAN),
    );
    let result = if subtract { a - b } else { a + b };
    Number::from_f64(result)
        .ok_or_else(|| format!("{left} and {right} give {result}, which is not a JSON number"))
}

fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let (x, y) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

/// The value at `path`, created (as `null`) when missing, with missing objects on the way.
fn slot<'s>(state: &'s mut Value, path: &[String]) -> Result<&'s mut Value, String> {
    let mut at = state;
    for (depth, token) in path.iter().enumerate() {
        if at.is_null() {
            *at = Value::Object(Map::new());
        }
        at = match at {
            Value::Object(map) => map.entry(token.clone()).or_insert(Value::Null),
            Value::Array(items) => {
                let len = items.len();
                match token.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => {
                        return Err(format!(
                            "{} is an array of {len} items and has no index '{token}'",
                            shown(&path[..depth])
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "{} holds {}, which has no '{token}'",
                    shown(&path[..depth]),
                    kind_of(other)
                ));
            }
        };
    }
    Ok(at)
}

/// Removes the value at `path`; nothing when it is not there.
fn unset(state: &mut Value, path: &[String]) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("unset needs a path".to_owned());
    };
    let mut at = state;
    for token in parents {
        at = match at {
            Value::Object(map) => match map.get_mut(token) {
                Some(v) => v,
                None => return Ok(()),
            },
            Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(v) => v,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
    }
    match at {
        Value::Object(map) => {
            map.remove(last);
        }
        Value::Array(items) => {
            if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < items.len()) {
                items.remove(i);
            }
        }
        _ => {}
    }
    Ok(())
}

/// A path prefix written back as a pointer, for messages.
fn shown(tokens: &[String]) -> String {
    if tokens.is_empty() {
        return "the state".to_owned();
    }
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::ProjectionDefinition;
    use factstore_core::{EventFields, Limits, Timestamp};
    use serde_json::json;
    use uuid::Uuid;

    fn compiled(definition: Value) -> Compiled {
        let definition: ProjectionDefinition = serde_json::from_value(definition).expect("shape");
        definition.compile(&Limits::default()).expect("valid")
    }

    fn event(position: u64, event_type: &str, data: &str) -> Event {
        Event::from_fields(&EventFields {
            position,
            version: position,
            event_id: Uuid::from_u128(position as u128),
            created_at: Timestamp::from_micros(1_700_000_000_000_000 + position as i64 * 1_000_000),
            recorded_at: Timestamp::from_micros(1_700_000_000_000_000 + position as i64 * 1_000_000),
            event_version: 1,
            aggregate_id: "account:1",
            aggregate_type: "Account",
            event_type,
            created_by: None,
            correlation_id: None,
            causation_id: None,
            event_data: data,
            metadata: None,
        })
    }

    fn fold(compiled: &Compiled, events: &[Event]) -> Result<Value, FoldError> {
        let mut state = compiled.initial().clone();
        for e in events {
            apply(compiled, &mut state, &EventView::new(e))?;
        }
        Ok(state)
    }

    fn bank() -> Compiled {
        compiled(json!({
            "key": "aggregate_id",
            "initial": {"balance": 0, "transactions": 0},
            "on": {
                "AccountCreated": [{"op": "set", "path": "/balance", "from": "/event_data/initial"}],
                "MoneyDeposited": [{"op": "add", "path": "/balance", "from": "/event_data/amount"},
                                   {"op": "inc", "path": "/transactions"}],
                "MoneyWithdrawn": [{"op": "sub", "path": "/balance", "from": "/event_data/amount"},
                                   {"op": "inc", "path": "/transactions"}],
                "*": [{"op": "set", "path": "/last_event", "from": "/event_type"}]
            }
        }))
    }

    #[test]
    fn the_bank_account_folds() {
        let events = [
            event(1, "AccountCreated", r#"{"initial":100}"#),
            event(2, "MoneyDeposited", r#"{"amount":50}"#),
            event(3, "MoneyWithdrawn", r#"{"amount":30}"#),
        ];
        assert_eq!(
            fold(&bank(), &events).expect("folds"),
            json!({"balance": 120, "transactions": 2, "last_event": "MoneyWithdrawn"})
        );
    }

    #[test]
    fn a_missing_from_fails_unless_optional() {
        let error = fold(&bank(), &[event(1, "MoneyDeposited", r#"{"amt":5}"#)]).expect_err("fails");
        assert_eq!(
            error.0,
            "on.MoneyDeposited[0] (add /balance): the event has no value at /event_data/amount"
        );
        let optional = compiled(json!({"key": "all", "on": {"*": [
            {"op": "add", "path": "/n", "from": "/event_data/amount", "optional": true}]}}));
        assert_eq!(fold(&optional, &[event(1, "X", "{}")]).expect("folds"), json!({}));
    }

    /// Payloads only an older, less strict store can hold: they have no values, and the rest
    /// of the event still folds.
    #[test]
    fn an_event_data_that_does_not_parse_has_no_values() {
        for data in [r#"{"s":"\ud800","amount":5}"#, r#"{"amount":1e400}"#] {
            let counting = compiled(json!({"key": "aggregate_id", "on": {"*": [
                {"op": "inc", "path": "/n"},
                {"op": "add", "path": "/amount", "from": "/event_data/amount", "optional": true},
                {"op": "set", "path": "/type", "from": "/event_type"}]}}));
            let folded = fold(
                &counting,
                &[event(1, "X", data), event(2, "X", r#"{"amount":2}"#)],
            );
            assert_eq!(folded.expect("folds"), json!({"n": 2, "amount": 2, "type": "X"}));
            let error = fold(&bank(), &[event(1, "MoneyDeposited", data)]).expect_err("fails");
            assert!(
                error.0.starts_with(
                    "on.MoneyDeposited[0] (add /balance): the event has no value at /event_data/amount: \
                     its event_data does not parse as JSON: "
                ),
                "{}",
                error.0
            );
        }
    }

    #[test]
    fn adding_a_string_fails_and_names_it() {
        let error = fold(&bank(), &[event(1, "MoneyDeposited", r#"{"amount":"5"}"#)]).expect_err("fails");
        assert!(
            error
                .0
                .contains("the value at /event_data/amount is a string, not a number"),
            "{error}"
        );
    }

    #[test]
    fn every_operation() {
        let c = compiled(json!({"key": "all", "on": {"*": [
            {"op": "add", "path": "/sum", "from": "/event_data/n"},
            {"op": "min", "path": "/min", "from": "/event_data/n"},
            {"op": "max", "path": "/max", "from": "/event_data/n"},
            {"op": "max", "path": "/last_at", "from": "/created_at"},
            {"op": "append", "path": "/ns", "from": "/event_data/n"},
            {"op": "inc", "path": "/deep/count", "value": 2},
            {"op": "set", "path": "/tmp", "value": true},
            {"op": "unset", "path": "/tmp"},
            {"op": "set", "path": "/pos", "from": "/position"}
        ]}}));
        let events = [
            event(1, "X", r#"{"n":5}"#),
            event(2, "X", r#"{"n":-2.5}"#),
            event(3, "X", r#"{"n":7}"#),
        ];
        assert_eq!(
            fold(&c, &events).expect("folds"),
            json!({"sum": 9.5, "min": -2.5, "max": 7, "last_at": "2023-11-14T22:13:23.000000Z",
                   "ns": [5, -2.5, 7], "deep": {"count": 6}, "pos": 3})
        );
    }

    #[test]
    fn integer_overflow_goes_to_floating_point() {
        let c = compiled(
            json!({"key": "all", "initial": {"n": i64::MAX}, "on": {"*": [{"op": "inc", "path": "/n"}]}}),
        );
        assert_eq!(
            fold(&c, &[event(1, "X", "{}")]).expect("folds")["n"],
            json!(i64::MAX as f64 + 1.0)
        );
    }

    #[test]
    fn paths_through_scalars_fail() {
        let c = compiled(
            json!({"key": "all", "initial": {"a": 1}, "on": {"*": [{"op": "set", "path": "/a/b", "value": 1}]}}),
        );
        let error = fold(&c, &[event(1, "X", "{}")]).expect_err("fails");
        assert!(error.0.contains("/a holds a number, which has no 'b'"), "{error}");
    }

    #[test]
    fn keys() {
        let by_sku = compiled(json!({"key": "/event_data/sku", "on": {}}));
        let key = |c: &Compiled, e: &Event| key_of(c, &EventView::new(e)).expect("no error");
        assert_eq!(
            key(&by_sku, &event(1, "X", r#"{"sku":"A-1"}"#)),
            Some("A-1".to_owned())
        );
        assert_eq!(
            key(&by_sku, &event(1, "X", r#"{"sku":12}"#)),
            Some("12".to_owned())
        );
        assert_eq!(key(&by_sku, &event(1, "X", r#"{"other":1}"#)), None);
        assert_eq!(key(&by_sku, &event(1, "X", r#"{"sku":null}"#)), None);
        let by_day = compiled(json!({"key": "day", "on": {}}));
        assert_eq!(key(&by_day, &event(1, "X", "{}")), Some("2023-11-14".to_owned()));
        assert_eq!(key(&bank(), &event(1, "X", "{}")), Some("account:1".to_owned()));
    }

    proptest::proptest! {
        /// Folding a sequence in two parts, the state handed from the first to the second,
        /// equals folding it whole: what the runtime relies on across batches and restarts.
        #[test]
        fn a_split_fold_equals_the_whole(amounts in proptest::collection::vec(-1000i64..1000, 0..40), split in 0usize..40) {
            let c = bank();
            let events: Vec<Event> = amounts.iter().enumerate().map(|(i, a)| {
                let kind = if *a >= 0 { "MoneyDeposited" } else { "MoneyWithdrawn" };
                event(i as u64 + 1, kind, &format!("{{\"amount\":{}}}", a.abs()))
            }).collect();
            let split = split.min(events.len());
            let whole = fold(&c, &events).expect("folds");
            let mut state = fold(&c, &events[..split]).expect("folds");
            for e in &events[split..] {
                apply(&c, &mut state, &EventView::new(e)).expect("folds");
            }
            proptest::prop_assert_eq!(&state, &whole);
            let balance: i64 = amounts.iter().sum();
            proptest::prop_assert_eq!(&whole["balance"], &json!(balance));
        }

        /// min and max agree with the minimum and maximum of the operands.
        #[test]
        fn min_and_max_agree_with_the_model(ns in proptest::collection::vec(-1_000_000i64..1_000_000, 1..30)) {
            let c = compiled(json!({"key": "all", "on": {"*": [
                {"op": "min", "path": "/min", "from": "/event_data/n"},
                {"op": "max", "path": "/max", "from": "/event_data/n"}]}}));
            let events: Vec<Event> = ns.iter().enumerate().map(|(i, n)| event(i as u64 + 1, "X", &format!("{{\"n\":{n}}}"))).collect();
            let state = fold(&c, &events).expect("folds");
            proptest::prop_assert_eq!(&state["min"], &json!(ns.iter().min()));
            proptest::prop_assert_eq!(&state["max"], &json!(ns.iter().max()));
        }
    }
}
