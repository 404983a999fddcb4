//! OpenAPI schemas of the types whose JSON form serde's derive does not describe: times are
//! strings, and an expected version is a number or a word. Only with the `openapi` feature;
//! the server builds its API document from these.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::append::ExpectedVersion;
use crate::time::Timestamp;

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "An RFC 3339 time. Responses write UTC with microseconds \
                 (2024-01-15T14:00:00.000000Z); requests may give any fraction and any offset, \
                 normalised to UTC (a finer fraction than a microsecond is truncated).",
            ))
            .examples(["2024-01-15T14:00:00.000000Z"])
            .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

/// The pattern of a string without control characters (Unicode category Cc, which is what
/// `char::is_control` finds): identifiers refuse them.
pub const NO_CONTROL_CHARACTERS: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// An identifier in a filter (an event type, an aggregate type or id, a prefix): not empty, no
/// control characters. Its limit in bytes is the store's for the field, which JSON Schema
/// cannot state (`maxLength` counts characters), so the descriptions say it.
pub struct Identifier;

impl PartialSchema for Identifier {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some(NO_CONTROL_CHARACTERS))
            .into()
    }
}

impl ToSchema for Identifier {}

/// An event's `metadata`: any JSON object, whose `correlation_id` and `causation_id`, when
/// present, are strings without control characters (at most 255 bytes by default, which JSON
/// Schema cannot state).
pub struct EventMetadata;

impl PartialSchema for EventMetadata {
    fn schema() -> RefOr<Schema> {
        let link = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_CONTROL_CHARACTERS))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("correlation_id", link())
            .property("causation_id", link())
            .into()
    }
}

impl ToSchema for EventMetadata {}

impl PartialSchema for ExpectedVersion {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .maximum(Some(crate::query::POSITION_MAX))
                    .description(Some(
                        "The aggregate must be at exactly this version; 0: it must not exist yet.",
                    )),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["any", "exists"]))
                    .description(Some(
                        "`any`: no check. `exists`: the aggregate must have at least one event.",
                    )),
            )
            .description(Some(
                "The version the aggregate must be at for the append to happen; otherwise \
                 409 `wrong_expected_version`. Default `any`.",
            ))
            .default(Some("any".into()))
            .into()
    }
}

impl ToSchema for ExpectedVersion {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExpectedVersion")
    }
}
