//! [`SchemaRegistry`]: the registered schemas and upcasters, validation of commits, and
//! upcasting of events.
//!
//! # Invariants
//! - A registered schema never changes: registering the same schema again is a no-op, a
//!   different one for the version is refused. Version n exists only if n − 1 does and n is
//!   backward compatible with it ([`crate::compat`]).
//! - A change is persisted (synced) before it is visible: readers see the catalog that was in
//!   force when they took it, as one immutable value (`Arc<Catalog>`), never a half-applied
//!   change.
//! - Several servers may share one storage (PostgreSQL): a change is decided against the
//!   catalog, and the storage refuses it ([`SchemaError::Stale`]) when another server appended
//!   since this registry last read; the registry then applies what is new
//!   ([`SchemaRegistry::refresh`]) and decides again. So the shared records are one history
//!   every server agrees on.
//! - Stored events never change; upcasting builds new `Event` values on the way out.
//! - An event type with no schema is not validated (schemas are opt-in, per type); a type with
//!   schemas requires a registered schema for the event's `event_version`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use factstore_core::{Event, Limits, PreparedCommit, SchemaViolation, StoreError, Timestamp};
use jsonschema::{Draft, Validator};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compat::check_compatible;
use crate::error::SchemaError;
use crate::storage::{Record, SchemaStorage};
use crate::upcast::{UpcastOp, UpcasterDef};

/// The `$schema` of draft 2020-12, the only draft accepted.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
/// A violation message is cut to this many bytes: a schema error may quote a large value.
const MESSAGE_BYTES_MAX: usize = 300;
/// How many times a change is decided again after the storage found the catalog stale (other
/// servers registering at the same moment); each retry follows a refresh.
const STALE_ATTEMPTS: usize = 5;

/// One registered version of an event type's schema.
#[derive(Debug)]
struct Registered {
    schema: Value,
    validator: Validator,
    registered_at: Timestamp,
}

#[derive(Debug)]
struct Upcaster {
    def: UpcasterDef,
    registered_at: Timestamp,
}

#[derive(Debug, Default, Clone)]
struct TypeEntry {
    versions: BTreeMap<u32, Arc<Registered>>,
    /// By the version they upcast from.
    upcasters: BTreeMap<u32, Arc<Upcaster>>,
}

/// Everything registered, as one immutable value.
#[derive(Debug, Default, Clone)]
struct Catalog {
    types: HashMap<String, TypeEntry>,
    /// Whether any schema is registered: commits skip validation entirely when none is.
    any_schema: bool,
    /// Whether any upcaster is registered: reads skip upcasting entirely when none is.
    any_upcaster: bool,
}

/// One version of a schema, as `GET /v1/schemas/{event_type}` shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaVersionView {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2147483647))]
    pub version: u32,
    /// The JSON Schema (draft 2020-12) of `event_data` at this version.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub schema: Value,
    pub registered_at: Timestamp,
}

/// An upcaster, as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpcasterView {
    pub event_type: String,
    pub from_version: u32,
    pub to_version: u32,
    pub ops: Vec<UpcastOp>,
    pub registered_at: Timestamp,
}

/// An event type's schemas: `GET /v1/schemas/{event_type}`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventTypeSchemas {
    pub event_type: String,
    pub latest_version: u32,
    pub versions: Vec<SchemaVersionView>,
}

/// An event type in `GET /v1/schemas`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventTypeSummary {
    pub event_type: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
}

/// The schema registry. Cheap to read from many threads; changes are serialized.
#[derive(Debug)]
pub struct SchemaRegistry {
    catalog: RwLock<Arc<Catalog>>,
    storage: Box<dyn SchemaStorage>,
    /// Held through check, persist and publish, so that two changes never decide against the
    /// same old catalog.
    changes: Mutex<()>,
}

impl SchemaRegistry {
    /// A registry over `storage`, with what it holds.
    pub fn open(storage: Box<dyn SchemaStorage>) -> Result<SchemaRegistry, SchemaError> {
        let mut catalog = Catalog::default();
        for record in storage.load()? {
            apply(&mut catalog, record).map_err(|e| {
                SchemaError::Unavailable(format!("a stored schema record cannot be applied: {e}"))
            })?;
        }
        Ok(SchemaRegistry {
            catalog: RwLock::new(Arc::new(catalog)),
            storage,
            changes: Mutex::new(()),
        })
    }

    /// An empty registry kept in memory only.
    pub fn in_memory() -> SchemaRegistry {
        SchemaRegistry::open(Box::new(crate::storage::MemoryStorage::default()))
            .expect("an empty memory storage has no records to fail on")
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// Registers `schema` as version `version` of `event_type`. `Ok(true)` when it is new,
    /// `Ok(false)` when the same schema was registered already. Blocking: it syncs to disk.
    pub fn put_schema(
        &self,
        event_type: &str,
        version: u32,
        schema: Value,
        limits: &Limits,
    ) -> Result<bool, SchemaError> {
        check_event_type(event_type, limits)?;
        check_version("version", version)?;
        compile(&schema)?;
        let _change = self.changes.lock();
        self.retry_stale(|| self.decide_schema(event_type, version, &schema))
    }

    /// `put_schema` against the current catalog, under the `changes` lock.
    fn decide_schema(&self, event_type: &str, version: u32, schema: &Value) -> Result<bool, SchemaError> {
        let catalog = self.catalog();
        let entry = catalog.types.get(event_type);
        if let Some(existing) = entry.and_then(|e| e.versions.get(&version)) {
            return if existing.schema == *schema {
                Ok(false)
            } else {
                Err(SchemaError::SchemaExists {
                    event_type: event_type.to_owned(),
                    version,
                })
            };
        }
        if version > 1 {
            let Some(previous) = entry.and_then(|e| e.versions.get(&(version - 1))) else {
                return Err(SchemaError::PreviousVersionMissing {
                    event_type: event_type.to_owned(),
                    version,
                });
            };
            check_compatible(&previous.schema, schema).map_err(|reason| SchemaError::Incompatible {
                event_type: event_type.to_owned(),
                version,
                reason,
            })?;
        }
        self.persist_and_publish(
            &catalog,
            Record::Schema {
                event_type: event_type.to_owned(),
                version,
                schema: schema.clone(),
                registered_at: Timestamp::now(),
            },
        )?;
        Ok(true)
    }

    /// Registers (or replaces) the upcaster of `event_type` from `from_version`. `Ok(true)`
    /// when there was none. Blocking: it syncs to disk.
    pub fn put_upcaster(
        &self,
        event_type: &str,
        from_version: u32,
        def: UpcasterDef,
        limits: &Limits,
    ) -> Result<bool, SchemaError> {
        check_event_type(event_type, limits)?;
        check_version("from_version", from_version)?;
        def.validate(from_version).map_err(SchemaError::InvalidRequest)?;
        let _change = self.changes.lock();
        self.retry_stale(|| self.decide_upcaster(event_type, from_version, &def))
    }

    /// `put_upcaster` against the current catalog, under the `changes` lock.
    fn decide_upcaster(
        &self,
        event_type: &str,
        from_version: u32,
        def: &UpcasterDef,
    ) -> Result<bool, SchemaError> {
        let catalog = self.catalog();
        let existing = catalog
            .types
            .get(event_type)
            .and_then(|e| e.upcasters.get(&from_version));
        if existing.is_some_and(|u| u.def == *def) {
            return Ok(false);
        }
        let created = existing.is_none();
        self.persist_and_publish(
            &catalog,
            Record::Upcaster {
                event_type: event_type.to_owned(),
                from_version,
                to_version: def.to_version,
                ops: def.ops.clone(),
                registered_at: Timestamp::now(),
            },
        )?;
        Ok(created)
    }

    /// Runs `decide` (under the `changes` lock); when the storage found the catalog stale,
    /// reads what other servers registered and decides again, a few times at most.
    fn retry_stale<T>(&self, mut decide: impl FnMut() -> Result<T, SchemaError>) -> Result<T, SchemaError> {
        for _ in 1..STALE_ATTEMPTS {
            match decide() {
                Err(SchemaError::Stale) => {
                    self.refresh_locked()?;
                }
                other => return other,
            }
        }
        decide()
    }

    /// The registry's file as a backup takes it (`factstore_engine::backup`); `None` when it
    /// is not a file of the data folder.
    pub fn durable_log(&self) -> Option<factstore_engine::backup::DurableFile> {
        self.storage.durable()
    }

    /// Applies the records other servers appended to the shared storage since this registry
    /// last read it, as one new catalog; returns how many. Blocking (it reads the storage).
    pub fn refresh(&self) -> Result<usize, SchemaError> {
        let _change = self.changes.lock();
        self.refresh_locked()
    }

    fn refresh_locked(&self) -> Result<usize, SchemaError> {
        let records = self.storage.load_new()?;
        if records.is_empty() {
            return Ok(0);
        }
        let count = records.len();
        let mut next = (*self.catalog()).clone();
        for record in records {
            apply(&mut next, record).map_err(|e| {
                SchemaError::Unavailable(format!("a stored schema record cannot be applied: {e}"))
            })?;
        }
        *self.catalog.write() = Arc::new(next);
        Ok(count)
    }

    fn persist_and_publish(&self, catalog: &Catalog, record: Record) -> Result<(), SchemaError> {
        let mut next = catalog.clone();
        apply(&mut next, record.clone()).map_err(SchemaError::InvalidRequest)?;
        self.storage.append(&record)?;
        *self.catalog.write() = Arc::new(next);
        Ok(())
    }

    /// The schemas of one event type.
    pub fn get(&self, event_type: &str) -> Result<EventTypeSchemas, SchemaError> {
        let catalog = self.catalog();
        let entry = catalog
            .types
            .get(event_type)
            .filter(|e| !e.versions.is_empty())
            .ok_or_else(|| SchemaError::SchemaNotFound {
                event_type: event_type.to_owned(),
            })?;
        Ok(EventTypeSchemas {
            event_type: event_type.to_owned(),
            latest_version: entry.versions.keys().last().copied().unwrap_or(0),
            versions: entry
                .versions
                .iter()
                .map(|(version, r)| SchemaVersionView {
                    version: *version,
                    schema: r.schema.clone(),
                    registered_at: r.registered_at,
                })
                .collect(),
        })
    }

    /// Every event type with a schema, by name.
    pub fn list(&self) -> Vec<EventTypeSummary> {
        let catalog = self.catalog();
        let mut out: Vec<EventTypeSummary> = catalog
            .types
            .iter()
            .filter(|(_, e)| !e.versions.is_empty())
            .map(|(name, e)| EventTypeSummary {
                event_type: name.clone(),
                latest_version: e.versions.keys().last().copied().unwrap_or(0),
                versions: e.versions.keys().copied().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        out
    }

    /// Every upcaster, by event type then version; of one type when `event_type` is given.
    pub fn upcasters(&self, event_type: Option<&str>) -> Vec<UpcasterView> {
        let catalog = self.catalog();
        let mut out: Vec<UpcasterView> = catalog
            .types
            .iter()
            .filter(|(name, _)| event_type.is_none_or(|t| t == name.as_str()))
            .flat_map(|(name, e)| {
                e.upcasters.iter().map(move |(from, u)| UpcasterView {
                    event_type: name.clone(),
                    from_version: *from,
                    to_version: u.def.to_version,
                    ops: u.def.ops.clone(),
                    registered_at: u.registered_at,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.event_type, a.from_version).cmp(&(&b.event_type, b.from_version)));
        out
    }

    /// Checks every event of a commit against the schema of its type and version; the error
    /// lists every failing field of every event.
    pub fn validate(&self, commit: &PreparedCommit) -> Result<(), StoreError> {
        let catalog = self.catalog();
        if !catalog.any_schema {
            return Ok(());
        }
        let mut violations = Vec::new();
        let events = commit
            .appends
            .iter()
            .flat_map(|a| a.events.iter().map(move |e| (a.aggregate_id.as_str(), e)));
        for (event_index, (aggregate_id, event)) in events.enumerate() {
            let Some(entry) = catalog
                .types
                .get(&event.event_type)
                .filter(|e| !e.versions.is_empty())
            else {
                continue;
            };
            let violation = |path: String, message: String| SchemaViolation {
                event_index,
                aggregate_id: aggregate_id.to_owned(),
                event_type: event.event_type.clone(),
                event_version: event.event_version,
                path,
                message,
            };
            let Some(registered) = entry.versions.get(&event.event_version) else {
                let known: Vec<String> = entry.versions.keys().map(u32::to_string).collect();
                violations.push(violation(
                    String::new(),
                    format!(
                        "no schema is registered for event_version {} of this event type (registered: {})",
                        event.event_version,
                        known.join(", ")
                    ),
                ));
                continue;
            };
            let data: Value = serde_json::from_str(&event.event_data)
                .map_err(|e| StoreError::Internal(format!("prepared event_data is not JSON: {e}")))?;
            for error in registered.validator.iter_errors(&data) {
                violations.push(violation(
                    error.instance_path().to_string(),
                    cut(error.to_string()),
                ));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(StoreError::SchemaViolation { violations })
        }
    }

    /// Whether any upcaster is registered (reads skip all work when none is).
    pub fn upcasts(&self) -> bool {
        self.catalog.read().any_upcaster
    }

    /// Whether an upcaster applies to `event` (its type and version have one).
    pub fn needs_upcast(&self, event: &Event) -> bool {
        let catalog = self.catalog.read();
        catalog.any_upcaster
            && catalog
                .types
                .get(event.event_type())
                .is_some_and(|e| e.upcasters.contains_key(&event.event_version()))
    }

    /// Brings each event to the newest version its upcasters reach. Events of a type and
    /// version without an upcaster are returned as they are, at the cost of one lookup; so
    /// are events an upcaster fails on ([`SchemaRegistry::upcast`]).
    pub fn upcast_all(&self, events: &mut [Event]) {
        let catalog = self.catalog();
        if !catalog.any_upcaster {
            return;
        }
        for event in events.iter_mut() {
            if let Some(upcast) = upcast_or_report(&catalog, event) {
                *event = upcast;
            }
        }
    }

    /// One event, upcast.
    ///
    /// An event its upcasters cannot bring up (an upcaster registered later that does not fit
    /// it, or a payload that does not parse, which only a store written before payloads were
    /// checked strictly can hold) is returned as stored, with its stored `event_version`, and
    /// the failure is logged and counted (`factstore_upcast_failures_total`). Failing the read
    /// instead would fail every page, stream and subscription that reaches the event, for
    /// good, since events never change; this way only the one event is not upcast, and its
    /// version says so.
    pub fn upcast(&self, event: Event) -> Event {
        let catalog = self.catalog();
        upcast_or_report(&catalog, &event).unwrap_or(event)
    }
}

/// The metric counting events returned as stored because their upcasters failed on them.
pub const UPCAST_FAILURES: &str = "factstore_upcast_failures_total";

/// [`upcast_one`], with a failure logged and counted and `None` returned for it.
fn upcast_or_report(catalog: &Catalog, event: &Event) -> Option<Event> {
    match upcast_one(catalog, event) {
        Ok(upcast) => upcast,
        Err(reason) => {
            tracing::warn!(
                position = event.position(),
                event_id = %event.event_id(),
                event_type = event.event_type(),
                event_version = event.event_version(),
                %reason,
                "an event could not be upcast; it is read as stored"
            );
            metrics::counter!(UPCAST_FAILURES).increment(1);
            None
        }
    }
}

/// The upcast form of `event`, `None` when no upcaster applies to it, or why it failed.
fn upcast_one(catalog: &Catalog, event: &Event) -> Result<Option<Event>, String> {
    let Some(entry) = catalog.types.get(event.event_type()) else {
        return Ok(None);
    };
    let mut version = event.event_version();
    if !entry.upcasters.contains_key(&version) {
        return Ok(None);
    }
    let mut data: Value =
        serde_json::from_str(event.event_data()).map_err(|e| format!("its event_data is not JSON: {e}"))?;
    // Each step raises the version, so the chain ends.
    while let Some(upcaster) = entry.upcasters.get(&version) {
        upcaster
            .def
            .apply(&mut data)
            .map_err(|e| format!("the upcaster from version {version}: {e}"))?;
        version = upcaster.def.to_version;
    }
    let text = serde_json::to_string(&data).map_err(|e| e.to_string())?;
    let mut fields = event.fields();
    fields.event_data = &text;
    fields.event_version = version;
    Ok(Some(Event::from_fields(&fields)))
}

fn cut(mut message: String) -> String {
    if message.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

fn check_event_type(event_type: &str, limits: &Limits) -> Result<(), SchemaError> {
    factstore_core::append::validate_identifier("event_type", event_type, limits.event_type_bytes_max)
        .map_err(|e| SchemaError::InvalidRequest(e.to_string()))
}

fn check_version(field: &str, version: u32) -> Result<(), SchemaError> {
    if version == 0 || version > i32::MAX as u32 {
        return Err(SchemaError::InvalidRequest(format!(
            "{field} must be from 1 to {}, got {version}",
            i32::MAX
        )));
    }
    Ok(())
}

/// Compiles a schema as draft 2020-12; the error says why it is not a usable schema.
fn compile(schema: &Value) -> Result<Validator, SchemaError> {
    let Some(object) = schema.as_object() else {
        return Err(SchemaError::InvalidRequest(
            "the body must be a JSON Schema object".to_owned(),
        ));
    };
    if let Some(declared) = object.get("$schema")
        && declared.as_str().map(|s| s.trim_end_matches('#')) != Some(DRAFT_2020_12)
    {
        return Err(SchemaError::InvalidRequest(format!(
            "$schema must be {DRAFT_2020_12} (draft 2020-12), got {declared}"
        )));
    }
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(schema)
        .map_err(|e| SchemaError::InvalidRequest(format!("not a valid JSON Schema: {e}")))
}

/// Applies a record to a catalog (at open, and for each change before it is persisted).
fn apply(catalog: &mut Catalog, record: Record) -> Result<(), String> {
    match record {
        Record::Schema {
            event_type,
            version,
            schema,
            registered_at,
        } => {
            let validator = compile(&schema).map_err(|e| e.to_string())?;
            catalog.types.entry(event_type).or_default().versions.insert(
                version,
                Arc::new(Registered {
                    schema,
                    validator,
                    registered_at,
                }),
            );
            catalog.any_schema = true;
        }
        Record::Upcaster {
            event_type,
            from_version,
            to_version,
            ops,
            registered_at,
        } => {
            let def = UpcasterDef { to_version, ops };
            def.validate(from_version)?;
            catalog
                .types
                .entry(event_type)
                .or_default()
                .upcasters
                .insert(from_version, Arc::new(Upcaster { def, registered_at }));
            catalog.any_upcaster = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    /// Records shared by several storages, refusing appends on a stale view, as a database
    /// shared by several servers does.
    #[derive(Debug)]
    struct Shared {
        records: Arc<Mutex<Vec<Record>>>,
        seen: Mutex<usize>,
    }

    impl SchemaStorage for Shared {
        fn load(&self) -> Result<Vec<Record>, SchemaError> {
            let records = self.records.lock().clone();
            *self.seen.lock() = records.len();
            Ok(records)
        }

        fn append(&self, record: &Record) -> Result<(), SchemaError> {
            let mut records = self.records.lock();
            let mut seen = self.seen.lock();
            if records.len() != *seen {
                return Err(SchemaError::Stale);
            }
            records.push(record.clone());
            *seen += 1;
            Ok(())
        }

        fn load_new(&self) -> Result<Vec<Record>, SchemaError> {
            let records = self.records.lock();
            let mut seen = self.seen.lock();
            let new = records[*seen..].to_vec();
            *seen = records.len();
            Ok(new)
        }
    }

    fn server(records: &Arc<Mutex<Vec<Record>>>) -> SchemaRegistry {
        SchemaRegistry::open(Box::new(Shared {
            records: records.clone(),
            seen: Mutex::new(0),
        }))
        .unwrap()
    }

    #[test]
    fn a_change_on_a_stale_view_is_decided_again_after_a_refresh() {
        let records = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (server(&records), server(&records));
        let limits = Limits::default();
        let v1 = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let v2 = json!({"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}});
        let other =
            json!({"type": "object", "properties": {"n": {"type": "integer"}, "t": {"type": "string"}}});
        assert_eq!(a.put_schema("T", 1, v1.clone(), &limits), Ok(true));
        // B has not read A's version 1: its own identical put is nothing new.
        assert_eq!(b.put_schema("T", 1, v1, &limits), Ok(false));
        assert_eq!(b.put_schema("T", 2, v2, &limits), Ok(true));
        assert!(matches!(
            a.put_schema("T", 2, other, &limits),
            Err(SchemaError::SchemaExists { version: 2, .. })
        ));
        assert_eq!(a.get("T").unwrap().latest_version, 2);
        let upcaster = UpcasterDef {
            to_version: 2,
            ops: Vec::new(),
        };
        assert_eq!(b.put_upcaster("T", 1, upcaster.clone(), &limits), Ok(true));
        assert_eq!(a.put_upcaster("T", 1, upcaster, &limits), Ok(false));
        assert_eq!(records.lock().len(), 3);
        assert_eq!(b.refresh(), Ok(0));
    }
}
