//! What a client sends to `PUT /v1/projections/{name}`, and its validation into a [`Compiled`]
//! projection that the fold runs.
//!
//! The body is read in two steps. Serde checks the shape (unknown keys, wrong JSON types): a
//! failure there is a malformed request (400). [`ProjectionDefinition::compile`] then checks
//! that the definition can work (a known key, known operations, JSON Pointers that parse and
//! point into the event, operands of the right type): a failure there is
//! [`ProjectionError::Invalid`] (422) naming the field, e.g.
//! `on.MoneyDeposited[1].from: ...`. Nothing is looked up or stored before both pass.

use std::collections::{BTreeMap, HashMap};

use factstore_core::{EventFilter, Limits};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::ProjectionError;

/// Longest projection name, in bytes.
pub const NAME_BYTES_MAX: usize = 100;
/// Most operations in one definition: a bound on the work per event.
pub const OPS_MAX: usize = 1000;
/// Longest key (from a JSON Pointer key), in bytes: keys are kept in memory and in every
/// checkpoint record that changes them.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest serialised definition, in bytes.
pub const DEFINITION_BYTES_MAX: usize = 1 << 20;

/// The body of `PUT /v1/projections/{name}`, as the client wrote it. Stored as it is, so a
/// restart compiles exactly what was accepted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionDefinition {
    /// Which events the projection folds (the filter object of `GET /v1/events`).
    #[serde(default)]
    pub filter: EventFilter,
    /// `"aggregate_id"`, `"day"`, `"all"`, or a JSON Pointer into the event.
    pub key: String,
    /// The state of a key before its first event. Default `{}`.
    #[serde(default = "empty_object")]
    pub initial: Value,
    /// Operations per event type, and `"*"` for every event the filter passes.
    pub on: BTreeMap<String, Vec<OpSpec>>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// One operation as written: `{"op": "add", "path": "/balance", "from": "/event_data/amount"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpSpec {
    /// `set`, `add`, `sub`, `inc`, `min`, `max`, `append` or `unset`.
    pub op: String,
    /// A JSON Pointer into the state.
    pub path: String,
    /// A JSON Pointer into the event, where the operand comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A literal operand (`null` included, hence the custom deserializer).
    #[serde(
        default,
        deserialize_with = "present_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    /// With `from`: when the pointer finds nothing in the event, do nothing instead of failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `"value": null` is a literal null, not an absent value.
fn present_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// What a state is keyed by.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySpec {
    AggregateId,
    /// The UTC date of `created_at`, `YYYY-MM-DD`.
    Day,
    /// One state under the key `all`.
    All,
    /// A JSON Pointer into the event; an event without a value there is unkeyed.
    Pointer(EventPointer),
}

/// The top-level fields of an event's JSON, as `from` pointers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventField {
    EventId,
    Position,
    AggregateId,
    AggregateType,
    Version,
    EventType,
    EventVersion,
    EventData,
    CreatedAt,
    RecordedAt,
    CreatedBy,
    Metadata,
}

impl EventField {
    const ALL: [(&'static str, EventField); 12] = [
        ("event_id", EventField::EventId),
        ("position", EventField::Position),
        ("aggregate_id", EventField::AggregateId),
        ("aggregate_type", EventField::AggregateType),
        ("version", EventField::Version),
        ("event_type", EventField::EventType),
        ("event_version", EventField::EventVersion),
        ("event_data", EventField::EventData),
        ("created_at", EventField::CreatedAt),
        ("recorded_at", EventField::RecordedAt),
        ("created_by", EventField::CreatedBy),
        ("metadata", EventField::Metadata),
    ];

    fn named(name: &str) -> Option<EventField> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// Whether the field holds JSON a pointer may go into.
    fn is_object(self) -> bool {
        matches!(self, EventField::EventData | EventField::Metadata)
    }
}

/// A JSON Pointer into an event: a field, and inside `event_data` or `metadata` a path.
/// `None` as the field is the pointer `""`, the whole event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPointer {
    pub field: Option<EventField>,
    pub rest: Vec<String>,
    /// As written, for messages.
    pub text: String,
}

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Set,
    Add,
    Sub,
    Inc,
    Min,
    Max,
    Append,
    Unset,
}

impl OpKind {
    fn named(name: &str) -> Option<OpKind> {
        Some(match name {
            "set" => OpKind::Set,
            "add" => OpKind::Add,
            "sub" => OpKind::Sub,
            "inc" => OpKind::Inc,
            "min" => OpKind::Min,
            "max" => OpKind::Max,
            "append" => OpKind::Append,
            "unset" => OpKind::Unset,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Set => "set",
            OpKind::Add => "add",
            OpKind::Sub => "sub",
            OpKind::Inc => "inc",
            OpKind::Min => "min",
            OpKind::Max => "max",
            OpKind::Append => "append",
            OpKind::Unset => "unset",
        }
    }
}

/// Where an operation's operand comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `unset` has none.
    None,
    Literal(Value),
    From {
        pointer: EventPointer,
        optional: bool,
    },
}

/// A validated operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    /// The tokens of `path`, unescaped; empty for the whole state.
    pub path: Vec<String>,
    pub operand: Operand,
    /// `on.MoneyDeposited[0] (add /balance)`, for error messages.
    pub label: String,
}

/// A definition checked and made ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// What was accepted, stored as it is.
    pub definition: ProjectionDefinition,
    pub key: KeySpec,
    /// The operations of each event type (without the `"*"` ones).
    pub typed: HashMap<String, Vec<Op>>,
    /// The operations of `"*"`, run after the typed ones.
    pub star: Vec<Op>,
}

impl Compiled {
    pub fn filter(&self) -> &EventFilter {
        &self.definition.filter
    }

    pub fn initial(&self) -> &Value {
        &self.definition.initial
    }
}

/// Checks a projection name: 1 to [`NAME_BYTES_MAX`] bytes of UTF-8 without control
/// characters (it names a folder once encoded, and appears in URLs).
pub fn validate_name(name: &str) -> Result<(), ProjectionError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(ProjectionError::InvalidRequest(format!(
            "a projection name must be 1 to {NAME_BYTES_MAX} bytes, got {}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ProjectionError::InvalidRequest(
            "a projection name must not contain control characters".to_owned(),
        ));
    }
    Ok(())
}

/// Parses a JSON Pointer (RFC 6901) into its unescaped tokens.
pub fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "'{text}' is not a JSON Pointer (it must be empty or start with '/')"
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("'{text}' has a '~' not followed by 0 or 1")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// Parses a pointer into an event: its first token names a field of the event's JSON.
fn parse_event_pointer(text: &str) -> Result<EventPointer, String> {
    let mut tokens = parse_pointer(text)?;
    if tokens.is_empty() {
        return Ok(EventPointer {
            field: None,
            rest: Vec::new(),
            text: text.to_owned(),
        });
    }
    let first = tokens.remove(0);
    let Some(field) = EventField::named(&first) else {
        let names: Vec<&str> = EventField::ALL.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "'{text}' does not point into the event: it has no field '{first}' (fields: {})",
            names.join(", ")
        ));
    };
    if !tokens.is_empty() && !field.is_object() {
        return Err(format!(
            "'{text}' points inside '{first}', which is not an object"
        ));
    }
    Ok(EventPointer {
        field: Some(field),
        rest: tokens,
        text: text.to_owned(),
    })
}

impl ProjectionDefinition {
    /// Checks everything and builds the runnable form. Every error names the field.
    pub fn compile(&self, limits: &Limits) -> Result<Compiled, ProjectionError> {
        let invalid = |field: &str, problem: String| ProjectionError::invalid(format!("{field}: {problem}"));
        self.filter
            .validate(limits)
            .map_err(|e| invalid("filter", e.to_string()))?;
        let key = match self.key.as_str() {
            "aggregate_id" => KeySpec::AggregateId,
            "day" => KeySpec::Day,
            "all" => KeySpec::All,
            pointer if pointer.starts_with('/') => {
                KeySpec::Pointer(parse_event_pointer(pointer).map_err(|p| invalid("key", p))?)
            }
            other => {
                return Err(invalid(
                    "key",
                    format!(
                        "'{other}' is not a key: use \"aggregate_id\", \"day\", \"all\" or a JSON Pointer into the event such as \"/event_data/sku\""
                    ),
                ));
            }
        };
        let size = serde_json::to_vec(self).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > DEFINITION_BYTES_MAX {
            return Err(invalid(
                "definition",
                format!("it is {size} bytes; at most {DEFINITION_BYTES_MAX} are allowed"),
            ));
        }
        let count: usize = self.on.values().map(Vec::len).sum();
        if count > OPS_MAX {
            return Err(invalid(
                "on",
                format!("{count} operations; at most {OPS_MAX} are allowed"),
            ));
        }
        let mut typed = HashMap::new();
        let mut star = Vec::new();
        for (event_type, specs) in &self.on {
            let field = format!("on.{event_type}");
            if event_type != "*" {
                factstore_core::append::validate_identifier(
                    "event_type",
                    event_type,
                    limits.event_type_bytes_max,
                )
                .map_err(|e| invalid(&field, e.to_string()))?;
                if !self.filter.event_types.is_empty() && !self.filter.event_types.contains(event_type) {
                    return Err(invalid(
                        &field,
                        format!(
                            "'{event_type}' is not among filter.event_types, so these operations would never run"
                        ),
                    ));
                }
            }
            let mut ops = Vec::with_capacity(specs.len());
            for (i, spec) in specs.iter().enumerate() {
                ops.push(compile_op(spec, &format!("{field}[{i}]"))?);
            }
            if event_type == "*" {
                star = ops;
            } else {
                typed.insert(event_type.clone(), ops);
            }
        }
        Ok(Compiled {
            definition: self.clone(),
            key,
            typed,
            star,
        })
    }
}

fn compile_op(spec: &OpSpec, field: &str) -> Result<Op, ProjectionError> {
    let invalid = |sub: &str, problem: String| ProjectionError::invalid(format!("{field}.{sub}: {problem}"));
    let Some(kind) = OpKind::named(&spec.op) else {
        return Err(invalid(
            "op",
            format!(
                "unknown operation '{}' (operations: set, add, sub, inc, min, max, append, unset)",
                spec.op
            ),
        ));
    };
    let path = parse_pointer(&spec.path).map_err(|p| invalid("path", p))?;
    if kind == OpKind::Unset && path.is_empty() {
        return Err(invalid(
            "path",
            "unset needs a path inside the state, not the whole state".to_owned(),
        ));
    }
    let name = kind.name();
    let operand = match (&spec.from, &spec.value) {
        (Some(_), Some(_)) => {
            return Err(invalid("from", "give either from or value, not both".to_owned()));
        }
        (Some(from), None) => {
            if kind == OpKind::Unset {
                return Err(invalid("from", "unset takes no operand".to_owned()));
            }
            Operand::From {
                pointer: parse_event_pointer(from).map_err(|p| invalid("from", p))?,
                optional: spec.optional.unwrap_or(false),
            }
        }
        (None, Some(value)) => {
            if kind == OpKind::Unset {
                return Err(invalid("value", "unset takes no operand".to_owned()));
            }
            match kind {
                OpKind::Add | OpKind::Sub | OpKind::Inc if !value.is_number() => {
                    return Err(invalid("value", format!("{name} needs a number, got {value}")));
                }
                OpKind::Min | OpKind::Max if !(value.is_number() || value.is_string()) => {
                    return Err(invalid(
                        "value",
                        format!("{name} needs a number or a string, got {value}"),
                    ));
                }
                _ => {}
            }
            Operand::Literal(value.clone())
        }
        (None, None) => match kind {
            OpKind::Unset => Operand::None,
            OpKind::Inc => Operand::Literal(Value::from(1)),
            _ => {
                return Err(invalid(
                    "from",
                    format!("{name} needs an operand: give from or value"),
                ));
            }
        },
    };
    if spec.optional.is_some() && !matches!(operand, Operand::From { .. }) {
        return Err(invalid(
            "optional",
            "optional applies only to an operand given by from".to_owned(),
        ));
    }
    Ok(Op {
        kind,
        path,
        operand,
        label: format!(
            "{field} ({name} {})",
            if spec.path.is_empty() { "\"\"" } else { &spec.path }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(value: Value) -> Result<Compiled, String> {
        let definition: ProjectionDefinition =
            serde_json::from_value(value).map_err(|e| format!("serde: {e}"))?;
        definition.compile(&Limits::default()).map_err(|e| e.to_string())
    }

    fn error_of(value: Value) -> String {
        match compile(value) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_api_example_compiles() {
        let compiled = compile(json!({
            "filter": {"event_types": ["AccountCreated", "MoneyDeposited", "MoneyWithdrawn"], "aggregate_type": "Account"},
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
        .expect("valid");
        assert_eq!(compiled.key, KeySpec::AggregateId);
        assert_eq!(compiled.typed["MoneyDeposited"].len(), 2);
        assert_eq!(
            compiled.typed["MoneyDeposited"][1].operand,
            Operand::Literal(json!(1))
        );
        assert_eq!(compiled.star.len(), 1);
    }

    #[test]
    fn keys_are_known_words_or_pointers() {
        let base = |key: &str| json!({"key": key, "on": {}});
        assert_eq!(compile(base("day")).expect("valid").key, KeySpec::Day);
        assert_eq!(compile(base("all")).expect("valid").key, KeySpec::All);
        let KeySpec::Pointer(p) = compile(base("/event_data/sku")).expect("valid").key else {
            panic!("a pointer key");
        };
        assert_eq!(
            (p.field, p.rest),
            (Some(EventField::EventData), vec!["sku".to_owned()])
        );
        assert!(error_of(base("aggregate")).starts_with("invalid projection: key: 'aggregate' is not a key"));
        assert!(error_of(base("/nope/x")).contains("key: '/nope/x' does not point into the event"));
        assert!(error_of(base("/position/x")).contains("points inside 'position'"));
    }

    #[test]
    fn every_problem_names_its_field() {
        let cases = [
            (
                json!({"key": "all", "on": {"A": [{"op": "mul", "path": "/a"}]}}),
                "on.A[0].op: unknown operation 'mul'",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "set", "path": "a"}]}}),
                "on.A[0].path: 'a' is not a JSON Pointer",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "set", "path": "/a"}]}}),
                "on.A[0].from: set needs an operand",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "set", "path": "/a", "from": "/x", "value": 1}]}}),
                "on.A[0].from: give either",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "add", "path": "/a", "value": "1"}]}}),
                "on.A[0].value: add needs a number",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "max", "path": "/a", "value": [1]}]}}),
                "on.A[0].value: max needs a number or a string",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "unset", "path": ""}]}}),
                "on.A[0].path: unset needs a path",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "unset", "path": "/a", "value": 1}]}}),
                "on.A[0].value: unset takes no operand",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "set", "path": "/a", "value": 1, "optional": true}]}}),
                "on.A[0].optional",
            ),
            (
                json!({"key": "all", "on": {"A": [{"op": "set", "path": "/a", "from": "/event_data/~2"}]}}),
                "on.A[0].from: '/event_data/~2' has a '~'",
            ),
            (
                json!({"key": "all", "filter": {"event_types": ["B"]}, "on": {"A": []}}),
                "on.A: 'A' is not among filter.event_types",
            ),
            (
                json!({"key": "all", "filter": {"aggregate_type": ""}, "on": {}}),
                "filter: ",
            ),
        ];
        for (definition, expected) in cases {
            let error = error_of(definition.clone());
            assert!(
                error.contains(expected),
                "{definition}: got '{error}', expected '{expected}'"
            );
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_shape_errors() {
        assert!(error_of(json!({"key": "all", "on": {}, "extra": 1})).starts_with("serde:"));
        assert!(
            error_of(json!({"key": "all", "on": {"A": [{"op": "set", "path": "/a", "value": 1, "x": 2}]}}))
                .starts_with("serde:")
        );
        assert!(
            error_of(json!({"key": "all", "filter": {"event_type": ["A"]}, "on": {}})).starts_with("serde:")
        );
        assert!(error_of(json!({"on": {}})).starts_with("serde:"));
    }

    #[test]
    fn a_literal_null_is_a_value() {
        let compiled =
            compile(json!({"key": "all", "on": {"A": [{"op": "set", "path": "/a", "value": null}]}}))
                .expect("valid");
        assert_eq!(compiled.typed["A"][0].operand, Operand::Literal(Value::Null));
    }

    #[test]
    fn pointers_unescape() {
        assert_eq!(
            parse_pointer("/a~1b/c~0d/").expect("valid"),
            vec!["a/b", "c~d", ""]
        );
        assert_eq!(parse_pointer("").expect("valid"), Vec::<String>::new());
    }

    #[test]
    fn names_are_bounded() {
        assert!(validate_name("balances").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(NAME_BYTES_MAX + 1)).is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
