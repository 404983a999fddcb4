//! The schema registry: JSON Schemas per event type and version, and the upcasters that bring
//! old versions of `event_data` to new ones on every read.
//!
//! A schema violation on append is [`Error::Api`](crate::Error::Api) with status 422 and code
//! `schema_violation`; its details hold `violations`, every failing field of every event.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::client::{Client, decode, to_body};
use crate::error::{Context, Result};
use crate::query::Params;

/// The answer to `PUT /v1/schemas/{event_type}/versions/{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaPut {
    pub event_type: String,
    /// The version registered.
    pub version: u32,
    /// The newest registered version of the event type.
    pub latest_version: u32,
    /// Whether it was new (201), not the same schema registered again (200).
    #[serde(skip_deserializing, default)]
    pub created: bool,
}

/// One registered version of an event type's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: u32,
    /// The JSON Schema (draft 2020-12) of `event_data` at this version.
    pub schema: Value,
    #[serde(with = "crate::time::required")]
    pub registered_at: OffsetDateTime,
}

/// `GET /v1/schemas/{event_type}`: every registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTypeSchemas {
    pub event_type: String,
    pub latest_version: u32,
    pub versions: Vec<SchemaVersion>,
}

/// An event type in `GET /v1/schemas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeSummary {
    pub event_type: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
}

/// The body of `PUT /v1/upcasters/{event_type}/{from_version}`: the version the data has after
/// the operations, and the operations (`{"op": "default"|"set"|"rename"|"unset", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpcasterDefinition {
    pub to_version: u32,
    pub ops: Vec<Value>,
}

/// A registered upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upcaster {
    pub event_type: String,
    pub from_version: u32,
    pub to_version: u32,
    pub ops: Vec<Value>,
    #[serde(with = "crate::time::required")]
    pub registered_at: OffsetDateTime,
    /// Whether it was new (201), not a replacement (200). Only set by
    /// [`Client::put_upcaster`].
    #[serde(skip_deserializing, default)]
    pub created: bool,
}

#[derive(Deserialize)]
struct SchemaList {
    schemas: Vec<EventTypeSummary>,
}

#[derive(Deserialize)]
struct UpcasterList {
    upcasters: Vec<Upcaster>,
}

impl Client {
    /// `PUT /v1/schemas/{event_type}/versions/{version}`: registers `schema` (a JSON Schema,
    /// draft 2020-12) for `event_data` of that version. A schema that breaks the evolution
    /// rules is 409 `incompatible_schema`; another schema for a registered version 409
    /// `schema_exists`.
    pub async fn put_schema(&self, event_type: &str, version: u32, schema: &Value) -> Result<SchemaPut> {
        let url = self.endpoint(
            &["v1", "schemas", event_type, "versions", &version.to_string()],
            &Params::default(),
        )?;
        let (status, body) = self
            .send_about(Method::PUT, url, Some(to_body(schema)?), &Context::default())
            .await?;
        let mut put: SchemaPut = decode(&body, "the schema registration")?;
        put.created = status == StatusCode::CREATED;
        Ok(put)
    }

    /// `GET /v1/schemas`: every event type with a schema.
    pub async fn schemas(&self) -> Result<Vec<EventTypeSummary>> {
        let url = self.endpoint(&["v1", "schemas"], &Params::default())?;
        let list: SchemaList = self.get_json(url).await?;
        Ok(list.schemas)
    }

    /// `GET /v1/schemas/{event_type}`: every registered version of one event type (404
    /// `schema_not_found` when it has none).
    pub async fn schema(&self, event_type: &str) -> Result<EventTypeSchemas> {
        let url = self.endpoint(&["v1", "schemas", event_type], &Params::default())?;
        self.get_json(url).await
    }

    /// `PUT /v1/upcasters/{event_type}/{from_version}`: registers (or replaces) the upcaster
    /// of `event_type` from `from_version`.
    pub async fn put_upcaster(
        &self,
        event_type: &str,
        from_version: u32,
        definition: &UpcasterDefinition,
    ) -> Result<Upcaster> {
        let url = self.endpoint(
            &["v1", "upcasters", event_type, &from_version.to_string()],
            &Params::default(),
        )?;
        let (status, body) = self
            .send_about(Method::PUT, url, Some(to_body(definition)?), &Context::default())
            .await?;
        let mut upcaster: Upcaster = decode(&body, "the upcaster registration")?;
        upcaster.created = status == StatusCode::CREATED;
        Ok(upcaster)
    }

    /// `GET /v1/upcasters` (or `/v1/upcasters/{event_type}` when given): the upcasters, by
    /// event type and then by the version they upcast from.
    pub async fn upcasters(&self, event_type: Option<&str>) -> Result<Vec<Upcaster>> {
        let url = match event_type {
            Some(event_type) => self.endpoint(&["v1", "upcasters", event_type], &Params::default())?,
            None => self.endpoint(&["v1", "upcasters"], &Params::default())?,
        };
        let list: UpcasterList = self.get_json(url).await?;
        Ok(list.upcasters)
    }
}
