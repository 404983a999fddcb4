//! The schema registry as users rely on it: the evolution rules, validation of commits naming
//! every failing field, upcasting on every read with the stored bytes unchanged, and changes
//! that survive restarts and crashes and are never visible unless durable.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use factstore_core::{
    AggregateAppend, AggregateQuery, Commit, EventQuery, EventStore, ExpectedVersion, Limits, NewEvent,
    StoreError,
};
use factstore_engine::io::FileSystem;
use factstore_schemas::{JournalStorage, SchemaError, SchemaRegistry, SchemaStore, UpcasterDef};
use factstore_testkit::faultfs::{CrashMode, FaultFs, Repeat};
use factstore_testkit::model::ModelStore;
use serde_json::{Value, json};

fn limits() -> Limits {
    Limits::default()
}

fn deposited_v1() -> Value {
    json!({
        "type": "object",
        "properties": {"amount": {"type": "number", "exclusiveMinimum": 0}, "note": {"type": "string"}},
        "required": ["amount"]
    })
}

fn deposited_v2() -> Value {
    let mut schema = deposited_v1();
    schema["properties"]["currency"] = json!({"type": "string", "minLength": 3});
    schema
}

fn store_with(registry: Arc<SchemaRegistry>) -> (SchemaStore, Arc<dyn EventStore>) {
    let inner: Arc<dyn EventStore> = Arc::new(ModelStore::new());
    (SchemaStore::new(inner.clone(), registry), inner)
}

fn event(event_type: &str, version: i64, data: Value) -> NewEvent {
    NewEvent::new("Account", event_type, data).with_event_version(version)
}

#[test]
fn versions_evolve_only_by_adding_optional_properties() {
    let registry = SchemaRegistry::in_memory();
    assert_eq!(
        registry.put_schema("MoneyDeposited", 1, deposited_v1(), &limits()),
        Ok(true)
    );
    // The same schema again is a no-op; another one for a registered version is refused.
    assert_eq!(
        registry.put_schema("MoneyDeposited", 1, deposited_v1(), &limits()),
        Ok(false)
    );
    assert!(matches!(
        registry.put_schema("MoneyDeposited", 1, deposited_v2(), &limits()),
        Err(SchemaError::SchemaExists { version: 1, .. })
    ));
    // A gap in the versions is refused, saying which version is missing.
    let gap = registry.put_schema("MoneyDeposited", 3, deposited_v2(), &limits());
    assert_eq!(
        gap,
        Err(SchemaError::PreviousVersionMissing {
            event_type: "MoneyDeposited".into(),
            version: 3
        })
    );
    assert_eq!(
        gap.unwrap_err().to_string(),
        "version 3 of event type 'MoneyDeposited' needs version 2 registered first"
    );
    // Removing, retyping, and adding a required property are refused with the reason.
    let mut removed = deposited_v1();
    removed["properties"].as_object_mut().unwrap().remove("note");
    let mut retyped = deposited_v1();
    retyped["properties"]["amount"]["type"] = json!("string");
    let mut required = deposited_v2();
    required["required"] = json!(["amount", "currency"]);
    for (schema, expected) in [
        (removed, "property /note was removed"),
        (retyped, "property /amount changed type from number to string"),
        (required, "property /currency is added as required"),
    ] {
        match registry.put_schema("MoneyDeposited", 2, schema, &limits()) {
            Err(SchemaError::Incompatible { reason, .. }) => {
                assert!(reason.starts_with(expected), "{reason}")
            }
            other => panic!("expected incompatible_schema ({expected}), got {other:?}"),
        }
    }
    assert_eq!(
        registry.put_schema("MoneyDeposited", 2, deposited_v2(), &limits()),
        Ok(true)
    );
    let view = registry.get("MoneyDeposited").unwrap();
    assert_eq!(view.latest_version, 2);
    assert_eq!(view.versions.len(), 2);
    assert_eq!(view.versions[1].schema, deposited_v2());
    assert_eq!(registry.list()[0].versions, vec![1, 2]);
    assert!(matches!(
        registry.get("Nope"),
        Err(SchemaError::SchemaNotFound { .. })
    ));
}

#[test]
fn bad_schemas_and_names_are_refused_naming_the_problem() {
    let registry = SchemaRegistry::in_memory();
    let cases = [
        ("T", 1, json!([1, 2]), "JSON Schema object"),
        ("T", 1, json!({"type": "no-such-type"}), "not a valid JSON Schema"),
        (
            "T",
            1,
            json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
            "draft 2020-12",
        ),
        ("T", 0, json!({}), "version must be from 1"),
        ("", 1, json!({}), "event_type must not be empty"),
    ];
    for (event_type, version, schema, expected) in cases {
        match registry.put_schema(event_type, version, schema, &limits()) {
            Err(SchemaError::InvalidRequest(message)) => assert!(message.contains(expected), "{message}"),
            other => panic!("expected invalid_request ({expected}), got {other:?}"),
        }
    }
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn a_commit_is_refused_naming_every_failing_field_and_nothing_is_written() {
    let registry = Arc::new(SchemaRegistry::in_memory());
    registry
        .put_schema("MoneyDeposited", 1, deposited_v1(), &limits())
        .unwrap();
    registry
        .put_schema("MoneyDeposited", 2, deposited_v2(), &limits())
        .unwrap();
    let (store, inner) = store_with(registry);
    let commit = Commit {
        appends: vec![
            AggregateAppend {
                aggregate_id: "account:1".into(),
                expected_version: ExpectedVersion::Any,
                events: vec![
                    event("MoneyDeposited", 1, json!({"amount": -5, "note": 7})),
                    // No schema for this type: not validated.
                    event("AccountOpened", 1, json!({"anything": true})),
                ],
            },
            AggregateAppend {
                aggregate_id: "account:2".into(),
                expected_version: ExpectedVersion::Any,
                events: vec![
                    event("MoneyDeposited", 2, json!({"amount": 5, "currency": "E"})),
                    event("MoneyDeposited", 9, json!({"amount": 5})),
                ],
            },
        ],
        condition: None,
    };
    let Err(StoreError::SchemaViolation { violations }) = store.commit(commit).await else {
        panic!("expected a schema violation");
    };
    let found: Vec<(usize, &str, &str, u32)> = violations
        .iter()
        .map(|v| {
            (
                v.event_index,
                v.aggregate_id.as_str(),
                v.path.as_str(),
                v.event_version,
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (0, "account:1", "/amount", 1),
            (0, "account:1", "/note", 1),
            (2, "account:2", "/currency", 2),
            (3, "account:2", "", 9),
        ]
    );
    assert!(
        violations[3].message.contains("registered: 1, 2"),
        "{}",
        violations[3].message
    );
    assert_eq!(inner.head().await.unwrap().position, 0, "nothing written");
    // A valid commit goes through.
    let ok = Commit::single(
        "account:1",
        ExpectedVersion::Any,
        vec![event(
            "MoneyDeposited",
            2,
            json!({"amount": 5, "currency": "EUR"}),
        )],
    );
    assert_eq!(store.commit(ok).await.unwrap().position, 1);
}

#[tokio::test]
async fn reads_see_events_upcast_through_the_chain_and_the_stored_bytes_never_change() {
    let registry = Arc::new(SchemaRegistry::in_memory());
    let (store, inner) = store_with(registry.clone());
    let commit = Commit::single(
        "account:1",
        ExpectedVersion::Any,
        vec![
            event("MoneyDeposited", 1, json!({"amt": 500})),
            event("MoneyDeposited", 2, json!({"amount": 7, "currency": "EUR"})),
            event("AccountClosed", 1, json!({})),
        ],
    );
    let outcome = store.commit(commit).await.unwrap();
    let up = |value: Value| serde_json::from_value::<UpcasterDef>(value).unwrap();
    registry
        .put_upcaster(
            "MoneyDeposited",
            1,
            up(json!({"to_version": 2, "ops": [
                {"op": "rename", "from": "/amt", "path": "/amount"},
                {"op": "default", "path": "/currency", "value": "USD"}
            ]})),
            &limits(),
        )
        .unwrap();
    registry
        .put_upcaster(
            "MoneyDeposited",
            2,
            up(json!({"to_version": 3, "ops": [{"op": "set", "path": "/source", "value": "import"}]})),
            &limits(),
        )
        .unwrap();
    let page = store.read_events(EventQuery::all(0, 100)).await.unwrap();
    let data: Vec<(u32, Value)> = page
        .events
        .iter()
        .map(|e| (e.event_version(), serde_json::from_str(e.event_data()).unwrap()))
        .collect();
    assert_eq!(
        data,
        [
            (3, json!({"amount": 500, "currency": "USD", "source": "import"})),
            (3, json!({"amount": 7, "currency": "EUR", "source": "import"})),
            (1, json!({})),
        ]
    );
    // Everything else about the event is as stored.
    let raw = inner.read_events(EventQuery::all(0, 100)).await.unwrap();
    assert_eq!(raw.events[0].event_data(), r#"{"amt":500}"#);
    assert_eq!(raw.events[0].event_version(), 1);
    assert_eq!(page.events[0].event_id(), raw.events[0].event_id());
    assert_eq!(page.events[0].position(), raw.events[0].position());
    assert_eq!(page.events[0].recorded_at(), raw.events[0].recorded_at());
    // Every read path upcasts.
    let aggregate = store
        .read_aggregate(AggregateQuery::forward("account:1", 100))
        .await
        .unwrap();
    assert_eq!(aggregate.events[0].event_version(), 3);
    let id = outcome.appends[0].events[0].event_id;
    assert_eq!(store.get_event(id).await.unwrap().event_version(), 3);
}

#[tokio::test]
async fn an_event_an_upcaster_cannot_apply_to_is_read_as_stored() {
    let registry = Arc::new(SchemaRegistry::in_memory());
    let (store, _) = store_with(registry.clone());
    store
        .commit(Commit::single(
            "account:1",
            ExpectedVersion::Any,
            vec![event("MoneyDeposited", 1, json!({"amount": 5}))],
        ))
        .await
        .unwrap();
    let def = serde_json::from_value(
        json!({"to_version": 2, "ops": [{"op": "set", "path": "/amount/value", "value": 1}]}),
    )
    .unwrap();
    registry
        .put_upcaster("MoneyDeposited", 1, def, &limits())
        .unwrap();
    // The read goes on; the event it fails on is read as stored.
    let page = store.read_events(EventQuery::all(0, 100)).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].event_version(), 1);
    assert_eq!(page.events[0].event_data(), r#"{"amount":5}"#);
}

fn open_registry(fs: &FaultFs) -> Result<SchemaRegistry, SchemaError> {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    let storage = JournalStorage::open(fs, Path::new("/db/schemas"))?;
    SchemaRegistry::open(Box::new(storage))
}

#[test]
fn registered_schemas_and_upcasters_survive_a_crash() {
    let fs = FaultFs::new();
    let registry = open_registry(&fs).unwrap();
    registry
        .put_schema("MoneyDeposited", 1, deposited_v1(), &limits())
        .unwrap();
    registry
        .put_schema("MoneyDeposited", 2, deposited_v2(), &limits())
        .unwrap();
    let def: UpcasterDef = serde_json::from_value(json!({"to_version": 2, "ops": []})).unwrap();
    registry
        .put_upcaster("MoneyDeposited", 1, def.clone(), &limits())
        .unwrap();
    drop(registry);
    fs.crash_with(CrashMode::DropUnsynced);
    let registry = open_registry(&fs).unwrap();
    assert_eq!(registry.get("MoneyDeposited").unwrap().latest_version, 2);
    let upcasters = registry.upcasters(None);
    assert_eq!(upcasters.len(), 1);
    assert_eq!(upcasters[0].to_version, 2);
    // The rules still hold against what was restored.
    assert!(matches!(
        registry.put_schema("MoneyDeposited", 2, deposited_v1(), &limits()),
        Err(SchemaError::SchemaExists { .. })
    ));
}

#[test]
fn a_change_that_could_not_be_synced_is_refused_and_never_visible() {
    let fs = FaultFs::new();
    let registry = open_registry(&fs).unwrap();
    registry
        .put_schema("A", 1, json!({"type": "object"}), &limits())
        .unwrap();
    fs.fail_sync_after(0, Repeat::Forever);
    assert!(matches!(
        registry.put_schema("B", 1, json!({"type": "object"}), &limits()),
        Err(SchemaError::Unavailable(_))
    ));
    assert!(matches!(
        registry.get("B"),
        Err(SchemaError::SchemaNotFound { .. })
    ));
    fs.clear_faults();
    // The journal is poisoned until reopened, even once the disk works again.
    assert!(registry.put_schema("C", 1, json!({}), &limits()).is_err());
    drop(registry);
    fs.crash_with(CrashMode::DropUnsynced);
    let registry = open_registry(&fs).unwrap();
    assert_eq!(registry.list().len(), 1);
    registry
        .put_schema("B", 1, json!({"type": "object"}), &limits())
        .unwrap();
}
