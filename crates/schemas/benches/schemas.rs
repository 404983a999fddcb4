//! Criterion benchmarks of the schema layer, in-process and without I/O: what validation adds
//! to a commit and what upcasting adds to a read.
//!
//! `cargo bench -p factstore-schemas --bench schemas`; figures in `docs/benchmarks.md`.
//!
//! - `validate/none_registered` and `validate/schema`: one 1000-event commit (~200-byte
//!   `event_data`) checked with no schema registered, and against a schema of its type.
//! - `upcast/none_registered`, `upcast/other_type` and `upcast/chain_1_to_3`: 10,000 events
//!   read through `upcast_all` with no upcaster, with upcasters of another type only, and with
//!   two upcasters applying to every event.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use factstore_core::{Commit, Event, EventFields, ExpectedVersion, Limits, NewEvent, Timestamp};
use factstore_schemas::{SchemaRegistry, UpcasterDef};
use serde_json::json;
use uuid::Uuid;

fn payload(i: usize) -> serde_json::Value {
    json!({"amount": i, "currency": "USD", "account": format!("ACC-{:06}", i % 1000),
           "description": "x".repeat(140)})
}

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "amount": {"type": "integer", "minimum": 0},
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "account": {"type": "string"},
            "description": {"type": "string"}
        },
        "required": ["amount", "currency", "account"]
    })
}

fn validate(c: &mut Criterion) {
    let limits = Limits::default();
    let events = (0..1000)
        .map(|i| NewEvent::new("Account", "MoneyDeposited", payload(i)))
        .collect();
    let prepared = Commit::single("account:1", ExpectedVersion::Any, events)
        .prepare(&limits)
        .expect("valid commit");
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1000));
    let none = SchemaRegistry::in_memory();
    group.bench_function("none_registered", |b| {
        b.iter(|| none.validate(black_box(&prepared)).expect("valid"))
    });
    let with = SchemaRegistry::in_memory();
    with.put_schema("MoneyDeposited", 1, schema(), &limits)
        .expect("schema");
    group.bench_function("schema", |b| {
        b.iter(|| with.validate(black_box(&prepared)).expect("valid"))
    });
    group.finish();
}

fn stored(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let data = payload(i).to_string();
            Event::from_fields(&EventFields {
                position: i as u64 + 1,
                version: i as u64 + 1,
                event_id: Uuid::now_v7(),
                created_at: Timestamp::now(),
                recorded_at: Timestamp::now(),
                event_version: 1,
                aggregate_id: "account:1",
                aggregate_type: "Account",
                event_type: "MoneyDeposited",
                created_by: None,
                correlation_id: None,
                causation_id: None,
                event_data: &data,
                metadata: None,
            })
        })
        .collect()
}

fn upcast(c: &mut Criterion) {
    let limits = Limits::default();
    let events = stored(10_000);
    let def = |to: u32, ops: serde_json::Value| -> UpcasterDef {
        serde_json::from_value(json!({"to_version": to, "ops": ops})).expect("upcaster")
    };
    let mut group = c.benchmark_group("upcast");
    group.throughput(Throughput::Elements(events.len() as u64));
    let cases = [
        ("none_registered", vec![]),
        ("other_type", vec![("MoneyWithdrawn", 1, def(2, json!([])))]),
        (
            "chain_1_to_3",
            vec![
                (
                    "MoneyDeposited",
                    1,
                    def(2, json!([{"op": "rename", "from": "/amount", "path": "/value"}])),
                ),
                (
                    "MoneyDeposited",
                    2,
                    def(3, json!([{"op": "default", "path": "/source", "value": "v1"}])),
                ),
            ],
        ),
    ];
    for (name, upcasters) in cases {
        let registry = SchemaRegistry::in_memory();
        for (event_type, from, def) in upcasters {
            registry
                .put_upcaster(event_type, from, def, &limits)
                .expect("upcaster");
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut page = events.clone();
                registry.upcast_all(&mut page);
                black_box(page)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validate, upcast);
criterion_main!(benches);
